/* Built-in transforms.  Each is only a graph builder: no derivative code.
 * The maths of each one is in doc/transforms.md. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mel_internal.h"

int mel_params_count(const mel_params *p);
const char *mel_params_name(const mel_params *p, int i);
double mel_params_value(const mel_params *p, int i);

/* A parameter a built-in accepts: name, default, inclusive bounds, and
 * whether it must be an integer. */
typedef struct pdef {
    const char *name;
    double dflt, lo, hi;
    int integer;
} pdef;

#define MAXP 24
typedef struct builtin {
    const char *name;
    const char *help;
    pdef params[MAXP];
    mel_status (*build)(mel_graph *g, const double *p);
} builtin;

/* -------------------------------------------------- shared pieces */

/* Common parameter indices: every built-in lists these first, in this order. */
enum { P_IGNORE, P_SCALE, P_SOFTCAP, P_TEMP, P_VVALID, P_COMMON };
#define COMMON_PARAMS                                                  \
    {"ignore_index", -100, -1e18, 1e18, 1},                            \
    {"logit_scale", 1, -1e300, 1e300, 0},                              \
    {"softcap", 0, 0, 1e300, 0},                                       \
    {"temperature", 1, 1e-300, 1e300, 0},                              \
    {"vocab_valid", 0, 0, 1e15, 1}

/* Vocabulary padding: with vocab_valid = Vv > 0 only columns j < Vv are
 * real; the others behave as −∞: their logit is replaced by −1e30, whose
 * probability is exactly 0 in f32 and f64 and, unlike −∞, keeps every
 * difference and product finite (0·(−∞) would be NaN, and a NaN on a path
 * with zero gradient still poisons the gradient).  No gradient reaches the
 * padded columns. */
#define PAD_LOGIT (-1e30)
static mel_val col_mask(mel_graph *g, const double *p)
{
    return p[P_VVALID] > 0 ? mel_g_lt(g, mel_g_iota(g), mel_g_const(g, p[P_VVALID])) : -1;
}

/* v where the column is real, else `fill` (v unchanged without padding) */
static mel_val on_cols(mel_graph *g, mel_val mask, mel_val v, double fill)
{
    return mask < 0 ? v : mel_g_where(g, mask, v, mel_g_const(g, fill));
}

/* z ← z·logit_scale, then cap·tanh(z/cap), then z/T; padded columns −∞. */
static mel_val prep_logits(mel_graph *g, int head, int diff, const double *p)
{
    mel_val z = mel_g_logits(g, head, diff);
    if (p[P_SCALE] != 1) z = mel_g_scale(g, z, p[P_SCALE]);
    if (p[P_SOFTCAP] > 0) z = mel_g_softcap(g, z, p[P_SOFTCAP]);
    if (p[P_TEMP] != 1) z = mel_g_scale(g, z, 1.0 / p[P_TEMP]);
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

enum { CE_LS = P_COMMON, CE_Z };
static mel_status build_ce(mel_graph *g, const double *p)
{
    mel_val z = prep_logits(g, 0, 1, p);
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[P_IGNORE]);
    mel_val lse = mel_g_logsumexp(g, z);
    mel_val loss = mel_g_sub(g, lse, mel_g_gather(g, z, lab));
    if (p[CE_LS] > 0) {
        /* mean of z over the real columns */
        mel_val mz = p[P_VVALID] > 0
                         ? mel_g_div(g, mel_g_sum(g, on_cols(g, col_mask(g, p), z, 0)),
                                     mel_g_min(g, mel_g_const(g, p[P_VVALID]), mel_g_vocab(g)))
                         : mel_g_mean(g, z);
        mel_val smooth = mel_g_sub(g, lse, mz);
        loss = mel_g_add(g, mel_g_scale(g, loss, 1 - p[CE_LS]), mel_g_scale(g, smooth, p[CE_LS]));
    }
    if (p[CE_Z] > 0) loss = mel_g_add(g, loss, mel_g_scale(g, mel_g_square(g, lse), p[CE_Z]));
    return finish_masked(g, lab, loss);
}

static mel_status build_logprob(mel_graph *g, const double *p)
{
    mel_val z = prep_logits(g, 0, 1, p);
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[P_IGNORE]);
    mel_val lp = mel_g_sub(g, mel_g_gather(g, z, lab), mel_g_logsumexp(g, z));
    return finish_masked(g, lab, lp);
}

static mel_status build_entropy(mel_graph *g, const double *p)
{
    mel_val z = prep_logits(g, 0, 1, p);
    mel_val lse = mel_g_logsumexp(g, z);
    mel_val prob = mel_g_exp(g, mel_g_sub(g, z, lse));
    /* p·z is 0·(−∞) on padded columns: take 0 there */
    mel_val pz = on_cols(g, col_mask(g, p), mel_g_mul(g, prob, z), 0);
    return mel_g_set_output(g, mel_g_sub(g, lse, mel_g_sum(g, pz)));
}

static mel_status build_z_loss(mel_graph *g, const double *p)
{
    mel_val z = prep_logits(g, 0, 1, p);
    return mel_g_set_output(g, mel_g_square(g, mel_g_logsumexp(g, z)));
}

/* Distillation: student = head 0 (differentiable), teacher = head 1. */
enum { KD_T2 = P_COMMON, KD_BETA };
typedef enum { KD_FORWARD, KD_REVERSE, KD_JSD } kd_kind;

/* Σ p_a·(log p_a − log p_b) over the real columns, from log-probs
 * (padded columns are −∞ − (−∞): excluded by the mask) */
static mel_val kl_of(mel_graph *g, mel_val la, mel_val lb, mel_val mask)
{
    return mel_g_sum(g, on_cols(g, mask, mel_g_mul(g, mel_g_exp(g, la), mel_g_sub(g, la, lb)), 0));
}

static mel_status build_kd(mel_graph *g, const double *p, kd_kind kind)
{
    mel_val ls = mel_g_log_softmax(g, prep_logits(g, 0, 1, p));
    mel_val lt = mel_g_log_softmax(g, prep_logits(g, 1, 0, p));
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[P_IGNORE]);
    double beta = p[KD_BETA];
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
    if (p[KD_T2] != 0) d = mel_g_scale(g, d, p[P_TEMP] * p[P_TEMP]);
    return finish_masked(g, lab, d);
}

static mel_status build_kl(mel_graph *g, const double *p) { return build_kd(g, p, KD_FORWARD); }
static mel_status build_rkl(mel_graph *g, const double *p) { return build_kd(g, p, KD_REVERSE); }
static mel_status build_jsd(mel_graph *g, const double *p) { return build_kd(g, p, KD_JSD); }

/* GRPO per token (doc/transforms.md): ratio r = exp(logp − old) (token) or
 * exp(s_b), s_b = Σ_t m·(logp − old) / max(Σ_t m, 1) (sequence), then
 * ℓ = −min(min(r, δ)·A, clamp(r, 1−ε_low, 1+ε_high)·A) + β·k3(ref, logp). */
enum { G_BETA = P_COMMON, G_EPS_LOW, G_EPS_HIGH, G_DELTA, G_OLD, G_REF, G_LEVEL, G_SEQ, G_LOSS,
       G_MAXLEN, G_ITEMS };
static mel_status build_grpo(mel_graph *g, const double *p)
{
    const double el = p[G_EPS_LOW], eh = p[G_EPS_HIGH] == -1 ? p[G_EPS_LOW] : p[G_EPS_HIGH];
    const int seq = p[G_LEVEL] == 1;
    if (seq && p[G_SEQ] < 1) {
        mel_g_set_output(g, -1);
        return MEL_ERR_INVALID_ARGUMENT;
    }
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[P_IGNORE]);
    mel_val z = prep_logits(g, 0, 1, p);
    mel_val logp = mel_g_sub(g, mel_g_gather(g, z, lab), mel_g_logsumexp(g, z));
    mel_val mask = mel_g_input(g, "mask", 0);
    /* a token counts when mask != 0 and its label is not ignore_index: the
     * effective mask m is used for the value, the count and the sequence
     * means alike */
    mel_val on = mel_g_mul(g, mel_g_lt(g, mel_g_const(g, 0), mel_g_abs(g, mask)), mel_g_valid(g, lab));
    mask = mel_g_where(g, on, mask, mel_g_const(g, 0));
    mel_val adv = mel_g_input(g, "advantages", 0);
    mel_val old = p[G_OLD] ? mel_g_input(g, "old_logp", 0) : mel_g_stop_gradient(g, logp);
    mel_val zero = mel_g_const(g, 0);
    mel_val logr = mel_g_sub(g, logp, old);
    if (seq) {
        mel_g_set_segment(g, (int64_t)p[G_SEQ]);
        mel_val num = mel_g_segment_sum(g, mel_g_where(g, on, mel_g_mul(g, mask, logr), zero));
        mel_val den = mel_g_max(g, mel_g_segment_sum(g, mask), mel_g_const(g, 1));
        logr = mel_g_div(g, num, den);
    }
    mel_val r = mel_g_exp(g, logr);
    mel_val c1 = p[G_DELTA] > 0 ? mel_g_min(g, r, mel_g_const(g, p[G_DELTA])) : r;
    mel_val c2 = mel_g_clamp(g, r, 1 - el, 1 + eh);
    mel_val loss = mel_g_neg(g, mel_g_min(g, mel_g_mul(g, c1, adv), mel_g_mul(g, c2, adv)));
    if (p[G_BETA] != 0) {
        mel_val ref;
        if (p[G_REF] == 1) {
            mel_val zr = prep_logits(g, 1, 0, p);
            ref = mel_g_sub(g, mel_g_gather(g, zr, lab), mel_g_logsumexp(g, zr));
        } else {
            ref = mel_g_input(g, "ref_logp", 0);
        }
        mel_val d = mel_g_sub(g, ref, logp);
        mel_val kl = mel_g_sub(g, mel_g_sub(g, mel_g_exp(g, d), d), mel_g_const(g, 1));
        loss = mel_g_add(g, loss, mel_g_scale(g, kl, p[G_BETA]));
        mel_g_add_aux(g, "kl", mel_g_where(g, on, kl, zero));
    }
    /* TRL's clip statistics: ratio below 1−ε_low with A < 0, or above 1+ε_high with A > 0 */
    mel_val low = mel_g_mul(g, mel_g_lt(g, c1, mel_g_const(g, 1 - el)), mel_g_lt(g, adv, zero));
    mel_val high = mel_g_mul(g, mel_g_lt(g, mel_g_const(g, 1 + eh), c1), mel_g_lt(g, zero, adv));
    mel_g_add_aux(g, "is_clipped", mel_g_where(g, on, mel_g_max(g, low, high), zero));
    mel_g_add_aux(g, "ratio", mel_g_where(g, on, r, zero));
    mel_g_add_aux(g, "logp", logp);
    mel_g_set_count(g, mask);
    return mel_g_set_output(g, mel_g_where(g, on, loss, zero));
}

/* ------------------------------------------------------------ table */

static const builtin builtins[] = {
    {"ce",
     "cross-entropy  inputs: head 0, labels  params: ignore_index, label_smoothing, z_loss, "
     "logit_scale, softcap, temperature, vocab_valid",
     {COMMON_PARAMS, {"label_smoothing", 0, 0, 1, 0}, {"z_loss", 0, 0, 1e300, 0}},
     build_ce},
    {"logprob",
     "token log-probability z[label] - logsumexp(z)  inputs: head 0, labels  params: "
     "ignore_index, logit_scale, softcap, temperature, vocab_valid",
     {COMMON_PARAMS},
     build_logprob},
    {"entropy",
     "entropy -sum p log p  inputs: head 0 (no labels)  params: logit_scale, softcap, temperature, vocab_valid",
     {COMMON_PARAMS},
     build_entropy},
    {"z_loss",
     "logsumexp(z)^2  inputs: head 0 (no labels)  params: logit_scale, softcap, temperature, vocab_valid",
     {COMMON_PARAMS},
     build_z_loss},
    {"kl",
     "forward KL(teacher || student)  inputs: head 0 (student), head 1 (teacher), labels  "
     "params: ignore_index, temperature, t2_scale, logit_scale, softcap, vocab_valid",
     {COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}},
     build_kl},
    {"reverse_kl",
     "reverse KL(student || teacher)  inputs: head 0 (student), head 1 (teacher), labels  "
     "params: ignore_index, temperature, t2_scale, logit_scale, softcap, vocab_valid",
     {COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}},
     build_rkl},
    {"jsd",
     "generalised JSD beta*KL(t||m) + (1-beta)*KL(s||m), m = beta*p_t + (1-beta)*p_s  inputs: "
     "head 0 (student), head 1 (teacher), labels  params: beta (default 0.5), ignore_index, "
     "temperature, t2_scale, logit_scale, softcap, vocab_valid",
     {COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}, {"beta", 0.5, 0, 1, 0}},
     build_jsd},
    {"grpo",
     "GRPO/DAPO/Dr.GRPO/GSPO policy loss per token  inputs: head 0 (policy), labels, mask, "
     "advantages (per row), old_logp (when use_old_logp=1), ref_logp (when beta != 0 and "
     "ref_source=0) or head 1 (ref_source=1)  params: beta, epsilon_low, epsilon_high (default "
     "= epsilon_low), delta (0 = off), use_old_logp, ref_source, importance_sampling_level "
     "(0 token, 1 sequence), seq_len, temperature, vocab_valid, loss_type (0 grpo, 1 bnpo, 2 dr_grpo, 3 "
     "dapo), max_completion_length, num_items_in_batch (the last three: for mel_grpo_weights)  "
     "aux: kl, is_clipped, ratio, logp",
     {COMMON_PARAMS, {"beta", 0, 0, 1e300, 0}, {"epsilon_low", 0.2, 0, 1, 0},
      {"epsilon_high", -1, -1, 1e300, 0}, {"delta", 0, 0, 1e300, 0}, {"use_old_logp", 0, 0, 1, 1},
      {"ref_source", 0, 0, 1, 1}, {"importance_sampling_level", 0, 0, 1, 1},
      {"seq_len", 0, 0, 1e15, 1}, {"loss_type", 3, 0, 3, 1}, {"max_completion_length", 512, 1, 1e15, 1},
      {"num_items_in_batch", 0, 0, 1e300, 0}},
     build_grpo},
};
#define N_BUILTINS ((int)(sizeof builtins / sizeof builtins[0]))

int mel_builtin_count(void) { return N_BUILTINS; }
const char *mel_builtin_name(int i) { return i >= 0 && i < N_BUILTINS ? builtins[i].name : NULL; }
const char *mel_builtin_help(int i) { return i >= 0 && i < N_BUILTINS ? builtins[i].help : NULL; }

const char *mel_builtin_param(int i, int j, double *dflt)
{
    if (i < 0 || i >= N_BUILTINS || j < 0 || j >= MAXP || !builtins[i].params[j].name) return NULL;
    if (dflt) *dflt = builtins[i].params[j].dflt;
    return builtins[i].params[j].name;
}

mel_status mel_transform_builtin(mel_ctx *ctx, const char *name, const mel_params *params,
                                 mel_transform **out)
{
    mel_clear_error(ctx);
    if (!out) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_transform_builtin: out is NULL");
    *out = NULL;
    if (!name) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_transform_builtin: name is NULL");
    const builtin *b = NULL;
    for (int i = 0; i < N_BUILTINS; i++)
        if (!strcmp(builtins[i].name, name)) b = &builtins[i];
    if (!b) {
        char list[256] = "";
        for (int i = 0; i < N_BUILTINS; i++) {
            strncat(list, builtins[i].name, sizeof list - strlen(list) - 1);
            if (i + 1 < N_BUILTINS) strncat(list, ", ", sizeof list - strlen(list) - 1);
        }
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "unknown transform '%s' (built-ins: %s)", name, list);
    }
    double p[MAXP];
    int np = 0;
    for (; np < MAXP && b->params[np].name; np++) p[np] = b->params[np].dflt;
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
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "transform '%s' has no parameter '%s' (it has: %s)", name, pn, list);
        }
        if (k == P_IGNORE && (b->build == build_entropy || b->build == build_z_loss))
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "transform '%s' reads no labels: parameter ignore_index does not apply "
                            "(mask rows with a weighted reduction)", name);
        const pdef *d = &b->params[k];
        if (!isfinite(v) || v < d->lo || v > d->hi || (d->integer && v != floor(v)))
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "transform '%s': parameter %s = %g is outside [%g, %g]%s", name, pn, v,
                            d->lo, d->hi, d->integer ? " or not an integer" : "");
        p[k] = v;
    }
    mel_graph *g = mel_graph_new();
    if (!g) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_transform_builtin: out of memory");
    if (!strcmp(name, "grpo") && p[G_EPS_HIGH] < 0 && p[G_EPS_HIGH] != -1) {
        mel_graph_free(g);
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'grpo': epsilon_high = %g must be >= 0 (or -1: same as epsilon_low)",
                        p[G_EPS_HIGH]);
    }
    if (!strcmp(name, "grpo") && p[G_LEVEL] == 1 && p[G_SEQ] < 1) {
        mel_graph_free(g);
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'grpo': importance_sampling_level = 1 (sequence) needs seq_len >= 1 "
                        "(the completion length T; rows are B·T tokens in row-major order)");
    }
    mel_status s = b->build(g, p);
    /* with vocabulary padding, labels must name a real column */
    for (int k = 0; k < g->n_inputs && p[P_VVALID] > 0; k++)
        if (g->inputs[k].is_index) g->inputs[k].limit = (int64_t)p[P_VVALID];
    if (s == MEL_OK || g->failed) s = mel_graph_compile(ctx, g, name, out);
    else mel_fail(ctx, s, "transform '%s': %s", name, g->err);
    mel_graph_free(g);
    return s;
}
