/* Built-in transforms.  Each is only a graph builder: no derivative code.
 * The maths of each one is in doc/transforms.md. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mel_internal.h"

/* -------------------------------------------------- shared pieces */

/* Vocabulary padding: with vocab_valid = Vv > 0 only columns j < Vv are
 * real; the others behave as −∞: their logit is replaced by −1e30, whose
 * probability is exactly 0 in f32 and f64 and, unlike −∞, keeps every
 * difference and product finite (0·(−∞) would be NaN, and a NaN on a path
 * with zero gradient still poisons the gradient).  No gradient reaches the
 * padded columns. */
#define PAD_LOGIT (-1e30)
static mel_val col_mask(mel_graph *g, const double *p)
{
    return p[MEL_P_VVALID] > 0 ? mel_g_lt(g, mel_g_iota(g), mel_g_const(g, p[MEL_P_VVALID])) : -1;
}

/* v where the column is real, else `fill` (v unchanged without padding) */
static mel_val on_cols(mel_graph *g, mel_val mask, mel_val v, double fill)
{
    return mask < 0 ? v : mel_g_where(g, mask, v, mel_g_const(g, fill));
}

/* z ← z·logit_scale, then cap·tanh(z/cap), then z/T; padded columns −∞. */
mel_val mel_bt_prep_logits(mel_graph *g, int head, int diff, const double *p)
{
    mel_val z = mel_g_logits(g, head, diff);
    if (p[MEL_P_SCALE] != 1) z = mel_g_scale(g, z, p[MEL_P_SCALE]);
    if (p[MEL_P_SOFTCAP] > 0) z = mel_g_softcap(g, z, p[MEL_P_SOFTCAP]);
    if (p[MEL_P_TEMP] != 1) z = mel_g_scale(g, z, 1.0 / p[MEL_P_TEMP]);
    return on_cols(g, col_mask(g, p), z, PAD_LOGIT);
}

/* y = valid ? v : 0 with count = valid; where() keeps NaN/inf of ignored
 * rows out of both the value and the gradient. */
static mel_status finish_masked(mel_graph *g, mel_val lab, mel_val v)
{
    mel_val valid = mel_g_valid(g, lab);
    mel_g_set_count(g, valid);
    return mel_g_set_output(g, mel_g_where(g, valid, v, mel_g_const(g, 0)));
}

/* ------------------------------------------------------ transforms */

enum { CE_LS = MEL_P_COMMON, CE_Z };
static mel_status build_ce(mel_graph *g, const double *p)
{
    mel_val z = mel_bt_prep_logits(g, 0, 1, p);
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[MEL_P_IGNORE]);
    mel_val lse = mel_g_logsumexp(g, z);
    mel_val loss = mel_g_sub(g, lse, mel_g_gather(g, z, lab));
    if (p[CE_LS] > 0) {
        /* mean of z over the real columns */
        mel_val mz = p[MEL_P_VVALID] > 0
                         ? mel_g_div(g, mel_g_sum(g, on_cols(g, col_mask(g, p), z, 0)),
                                     mel_g_min(g, mel_g_const(g, p[MEL_P_VVALID]), mel_g_vocab(g)))
                         : mel_g_mean(g, z);
        mel_val smooth = mel_g_sub(g, lse, mz);
        loss = mel_g_add(g, mel_g_scale(g, loss, 1 - p[CE_LS]), mel_g_scale(g, smooth, p[CE_LS]));
    }
    if (p[CE_Z] > 0) loss = mel_g_add(g, loss, mel_g_scale(g, mel_g_square(g, lse), p[CE_Z]));
    return finish_masked(g, lab, loss);
}

static mel_status build_logprob(mel_graph *g, const double *p)
{
    mel_val z = mel_bt_prep_logits(g, 0, 1, p);
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[MEL_P_IGNORE]);
    mel_val lp = mel_g_sub(g, mel_g_gather(g, z, lab), mel_g_logsumexp(g, z));
    return finish_masked(g, lab, lp);
}

static mel_status build_entropy(mel_graph *g, const double *p)
{
    mel_val z = mel_bt_prep_logits(g, 0, 1, p);
    /* H = −Σ p·log p with log p = u − lse(u), u = z − max z: for a
     * confident row log p of the top entries is small and exact in f32,
     * where the form lse(z) − Σ p·z cancels two numbers near max z (the
     * rounding of lse, half an ulp of the largest logit, was half of H at
     * logits near 240).  H does not depend on the shift, so the max enters
     * as a constant (stop-gradient: its true derivative is 0). */
    mel_val u = mel_g_sub(g, z, mel_g_stop_gradient(g, mel_g_rmax(g, z)));
    mel_val logp = mel_g_sub(g, u, mel_g_logsumexp(g, u));
    /* p·log p is 0·(−∞) on padded columns: take 0 there */
    mel_val plogp = on_cols(g, col_mask(g, p), mel_g_mul(g, mel_g_exp(g, logp), logp), 0);
    return mel_g_set_output(g, mel_g_neg(g, mel_g_sum(g, plogp)));
}

static mel_status build_z_loss(mel_graph *g, const double *p)
{
    mel_val z = mel_bt_prep_logits(g, 0, 1, p);
    return mel_g_set_output(g, mel_g_square(g, mel_g_logsumexp(g, z)));
}

/* Distillation: student = head 0 (differentiable), teacher = head 1.
 * Labels only mask rows: with use_labels = 0 the transform reads none and
 * every row counts (parameter indices: use_labels is the last one). */
enum { KD_T2 = MEL_P_COMMON, KD_BETA = MEL_P_COMMON + 1 };
enum { KD_LABELS_KL = MEL_P_COMMON + 1, KD_LABELS_JSD = MEL_P_COMMON + 2 };
typedef enum { KD_FORWARD, KD_REVERSE, KD_JSD } kd_kind;

/* Σ p_a·(log p_a − log p_b) over the real columns, from log-probs
 * (padded columns are −∞ − (−∞): excluded by the mask) */
static mel_val kl_of(mel_graph *g, mel_val la, mel_val lb, mel_val mask)
{
    return mel_g_sum(g, on_cols(g, mask, mel_g_mul(g, mel_g_exp(g, la), mel_g_sub(g, la, lb)), 0));
}

static int kd_labels_index(kd_kind kind) { return kind == KD_JSD ? KD_LABELS_JSD : KD_LABELS_KL; }

static mel_status build_kd(mel_graph *g, const double *p, kd_kind kind)
{
    const int use_labels = p[kd_labels_index(kind)] != 0;
    mel_val ls = mel_g_log_softmax(g, mel_bt_prep_logits(g, 0, 1, p));
    mel_val lt = mel_g_log_softmax(g, mel_bt_prep_logits(g, 1, 0, p));
    mel_val lab = use_labels ? mel_g_index(g, "labels", (int64_t)p[MEL_P_IGNORE]) : -1;
    double beta = kind == KD_JSD ? p[KD_BETA] : 0;
    if (kind == KD_FORWARD) kind = KD_JSD, beta = 0;
    else if (kind == KD_REVERSE) kind = KD_JSD, beta = 1;
    mel_val d, cm = col_mask(g, p);
    if (beta == 0) {
        d = kl_of(g, lt, ls, cm); /* KL(p_t ‖ p_s) */
    } else if (beta == 1) {
        d = kl_of(g, ls, lt, cm); /* KL(p_s ‖ p_t) */
    } else {
        /* log m = log(β·p_t + (1−β)·p_s), shifted by max(lt, ls) so the sum
         * inside the log is at least min(β, 1−β) */
        mel_val mx = mel_g_max(g, lt, ls);
        mel_val in = mel_g_add(g, mel_g_scale(g, mel_g_exp(g, mel_g_sub(g, lt, mx)), beta),
                               mel_g_scale(g, mel_g_exp(g, mel_g_sub(g, ls, mx)), 1 - beta));
        mel_val lm = mel_g_add(g, mx, mel_g_log(g, in));
        d = mel_g_add(g, mel_g_scale(g, kl_of(g, lt, lm, cm), beta),
                      mel_g_scale(g, kl_of(g, ls, lm, cm), 1 - beta));
    }
    if (p[KD_T2] != 0) d = mel_g_scale(g, d, p[MEL_P_TEMP] * p[MEL_P_TEMP]);
    return use_labels ? finish_masked(g, lab, d) : mel_g_set_output(g, d);
}

/* use_labels = 0: no labels, so ignore_index has nothing to apply to */
static mel_status check_kd(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given, kd_kind kind)
{
    if (p[kd_labels_index(kind)] == 0 && given[MEL_P_IGNORE])
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "ignore_index", -1, -1,
                        "transform '%s' with use_labels = 0 reads no labels: parameter ignore_index does "
                        "not apply", b->name);
    return MEL_OK;
}
static mel_status check_kl(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    return check_kd(ctx, b, p, given, KD_FORWARD);
}
static mel_status check_jsd(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    return check_kd(ctx, b, p, given, KD_JSD);
}

static mel_status build_kl(mel_graph *g, const double *p) { return build_kd(g, p, KD_FORWARD); }
static mel_status build_rkl(mel_graph *g, const double *p) { return build_kd(g, p, KD_REVERSE); }
static mel_status build_jsd(mel_graph *g, const double *p) { return build_kd(g, p, KD_JSD); }

/* ------------------------------------------------------------ table */

#define KD_LABELS_PARAM {"use_labels", 1, 0, 1, 1}
static const mel_builtin builtin_ce = {
    "ce",
    "cross-entropy  inputs: head 0, labels  params: ignore_index, label_smoothing, z_loss, "
    "logit_scale, softcap, temperature, vocab_valid",
    {MEL_COMMON_PARAMS, {"label_smoothing", 0, 0, 1, 0}, {"z_loss", 0, 0, 1e300, 0}},
    0, NULL, build_ce,
};
static const mel_builtin builtin_logprob = {
    "logprob",
    "token log-probability z[label] - logsumexp(z)  inputs: head 0, labels  params: "
    "ignore_index, logit_scale, softcap, temperature, vocab_valid",
    {MEL_COMMON_PARAMS},
    0, NULL, build_logprob,
};
static const mel_builtin builtin_entropy = {
    "entropy",
    "entropy -sum p log p  inputs: head 0 (no labels)  params: logit_scale, softcap, temperature, vocab_valid",
    {MEL_COMMON_PARAMS},
    MEL_BUILTIN_NO_LABELS, NULL, build_entropy,
};
static const mel_builtin builtin_z_loss = {
    "z_loss",
    "logsumexp(z)^2  inputs: head 0 (no labels)  params: logit_scale, softcap, temperature, vocab_valid",
    {MEL_COMMON_PARAMS},
    MEL_BUILTIN_NO_LABELS, NULL, build_z_loss,
};
static const mel_builtin builtin_kl = {
    "kl",
    "forward KL(teacher || student)  inputs: head 0 (student), head 1 (teacher), labels (unless "
    "use_labels=0)  params: ignore_index, temperature, t2_scale, logit_scale, softcap, vocab_valid, "
    "use_labels (1: labels mask rows; 0: no labels, every row counts)",
    {MEL_COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}, KD_LABELS_PARAM},
    0, check_kl, build_kl,
};
static const mel_builtin builtin_reverse_kl = {
    "reverse_kl",
    "reverse KL(student || teacher)  inputs: head 0 (student), head 1 (teacher), labels (unless "
    "use_labels=0)  params: ignore_index, temperature, t2_scale, logit_scale, softcap, vocab_valid, "
    "use_labels (1: labels mask rows; 0: no labels, every row counts)",
    {MEL_COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}, KD_LABELS_PARAM},
    0, check_kl, build_rkl,
};
static const mel_builtin builtin_jsd = {
    "jsd",
    "generalised JSD beta*KL(t||m) + (1-beta)*KL(s||m), m = beta*p_t + (1-beta)*p_s  inputs: "
    "head 0 (student), head 1 (teacher), labels (unless use_labels=0)  params: beta (default 0.5), "
    "ignore_index, temperature, t2_scale, logit_scale, softcap, vocab_valid, use_labels (1: labels "
    "mask rows; 0: no labels, every row counts)",
    {MEL_COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}, {"beta", 0.5, 0, 1, 0}, KD_LABELS_PARAM},
    0, check_jsd, build_jsd,
};

static const mel_builtin *const builtins[] = {
    &builtin_ce, &builtin_logprob, &builtin_entropy, &builtin_z_loss,
    &builtin_kl, &builtin_reverse_kl, &builtin_jsd, &mel_builtin_grpo,
    &mel_builtin_dpo, &mel_builtin_cpo, &mel_builtin_simpo, &mel_builtin_orpo, &mel_builtin_kto,
};
#define N_BUILTINS ((int)(sizeof builtins / sizeof builtins[0]))

int mel_builtin_count(void) { return N_BUILTINS; }
const char *mel_builtin_name(int i) { return i >= 0 && i < N_BUILTINS ? builtins[i]->name : NULL; }
const char *mel_builtin_help(int i) { return i >= 0 && i < N_BUILTINS ? builtins[i]->help : NULL; }

const char *mel_builtin_param(int i, int j, double *dflt)
{
    if (i < 0 || i >= N_BUILTINS || j < 0 || j >= MEL_BUILTIN_MAXP || !builtins[i]->params[j].name)
        return NULL;
    if (dflt) *dflt = builtins[i]->params[j].dflt;
    return builtins[i]->params[j].name;
}

mel_status mel_transform_builtin(mel_ctx *ctx, const char *name, const mel_params *params,
                                 mel_transform **out)
{
    mel_clear_error(ctx);
    if (!out) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_transform_builtin: out is NULL");
    *out = NULL;
    if (!name) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_transform_builtin: name is NULL");
    const mel_builtin *b = NULL;
    for (int i = 0; i < N_BUILTINS; i++)
        if (!strcmp(builtins[i]->name, name)) b = builtins[i];
    if (!b) {
        char list[256] = "";
        for (int i = 0; i < N_BUILTINS; i++) {
            strncat(list, builtins[i]->name, sizeof list - strlen(list) - 1);
            if (i + 1 < N_BUILTINS) strncat(list, ", ", sizeof list - strlen(list) - 1);
        }
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "unknown transform '%s' (built-ins: %s)", name, list);
    }
    double p[MEL_BUILTIN_MAXP];
    char given[MEL_BUILTIN_MAXP] = {0};
    int np = 0;
    for (; np < MEL_BUILTIN_MAXP && b->params[np].name; np++) p[np] = b->params[np].dflt;
    for (int i = 0; i < mel_params_count(params); i++) {
        const char *pn = mel_params_name(params, i);
        double v = mel_params_value(params, i);
        int k;
        for (k = 0; k < np; k++)
            if (!strcmp(b->params[k].name, pn)) break;
        if (k == np) {
            char list[256] = "";
            for (int j = 0; j < np; j++) {
                strncat(list, b->params[j].name, sizeof list - strlen(list) - 1);
                if (j + 1 < np) strncat(list, ", ", sizeof list - strlen(list) - 1);
            }
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, pn, -1, -1,
                                "transform '%s' has no parameter '%s' (it has: %s)", name, pn, list);
        }
        if (k == MEL_P_IGNORE && (b->flags & MEL_BUILTIN_NO_LABELS))
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, pn, -1, -1,
                            "transform '%s' reads no labels: parameter ignore_index does not apply "
                            "(mask rows with a weighted reduction)", name);
        const mel_pdef *d = &b->params[k];
        if (!isfinite(v) || v < d->lo || v > d->hi || (d->integer && v != floor(v)))
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, pn, -1, -1,
                            "transform '%s': parameter %s = %g is outside [%g, %g]%s", name, pn, v,
                            d->lo, d->hi, d->integer ? " or not an integer" : "");
        p[k] = v;
        given[k] = 1;
    }
    mel_status s;
    if (b->check && (s = b->check(ctx, b, p, given))) return s;
    mel_graph *g = mel_graph_new();
    if (!g) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_transform_builtin: out of memory");
    s = b->build(g, p);
    /* with vocabulary padding, labels must name a real column */
    for (int k = 0; k < g->n_inputs && p[MEL_P_VVALID] > 0; k++)
        if (g->inputs[k].is_index) g->inputs[k].limit = (int64_t)p[MEL_P_VVALID];
    if (s == MEL_OK || g->failed) s = mel_graph_compile(ctx, g, name, out);
    else mel_fail(ctx, s, "transform '%s': %s", name, g->err);
    mel_graph_free(g);
    return s;
}
