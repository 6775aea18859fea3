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

#define MAXP 16
typedef struct builtin {
    const char *name;
    const char *help;
    pdef params[MAXP];
    mel_status (*build)(mel_graph *g, const double *p);
} builtin;

/* -------------------------------------------------- shared pieces */

/* Common parameter indices: every built-in lists these first, in this order. */
enum { P_IGNORE, P_SCALE, P_SOFTCAP, P_TEMP, P_COMMON };
#define COMMON_PARAMS                                                  \
    {"ignore_index", -100, -1e18, 1e18, 1},                            \
    {"logit_scale", 1, -1e300, 1e300, 0},                              \
    {"softcap", 0, 0, 1e300, 0},                                       \
    {"temperature", 1, 1e-300, 1e300, 0}

/* z ← z·logit_scale, then cap·tanh(z/cap), then z/T. */
static mel_val prep_logits(mel_graph *g, int head, int diff, const double *p)
{
    mel_val z = mel_g_logits(g, head, diff);
    if (p[P_SCALE] != 1) z = mel_g_scale(g, z, p[P_SCALE]);
    if (p[P_SOFTCAP] > 0) z = mel_g_softcap(g, z, p[P_SOFTCAP]);
    if (p[P_TEMP] != 1) z = mel_g_scale(g, z, 1.0 / p[P_TEMP]);
    return z;
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
        mel_val smooth = mel_g_sub(g, lse, mel_g_mean(g, z));
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
    return mel_g_set_output(g, mel_g_sub(g, lse, mel_g_sum(g, mel_g_mul(g, prob, z))));
}

static mel_status build_z_loss(mel_graph *g, const double *p)
{
    mel_val z = prep_logits(g, 0, 1, p);
    return mel_g_set_output(g, mel_g_square(g, mel_g_logsumexp(g, z)));
}

/* Distillation: student = head 0 (differentiable), teacher = head 1. */
enum { KD_T2 = P_COMMON, KD_BETA };
typedef enum { KD_FORWARD, KD_REVERSE, KD_JSD } kd_kind;

/* Σ p_a·(log p_a − log p_b) over the vocabulary, from log-probs. */
static mel_val kl_of(mel_graph *g, mel_val la, mel_val lb)
{
    return mel_g_sum(g, mel_g_mul(g, mel_g_exp(g, la), mel_g_sub(g, la, lb)));
}

static mel_status build_kd(mel_graph *g, const double *p, kd_kind kind)
{
    mel_val ls = mel_g_log_softmax(g, prep_logits(g, 0, 1, p));
    mel_val lt = mel_g_log_softmax(g, prep_logits(g, 1, 0, p));
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[P_IGNORE]);
    double beta = p[KD_BETA];
    if (kind == KD_FORWARD) kind = KD_JSD, beta = 0;
    else if (kind == KD_REVERSE) kind = KD_JSD, beta = 1;
    mel_val d;
    if (beta == 0) {
        d = kl_of(g, lt, ls); /* KL(p_t ‖ p_s) */
    } else if (beta == 1) {
        d = kl_of(g, ls, lt); /* KL(p_s ‖ p_t) */
    } else {
        /* log m = log(β·p_t + (1−β)·p_s), shifted by max(lt, ls) so the sum
         * inside the log is at least min(β, 1−β) */
        mel_val mx = mel_g_max(g, lt, ls);
        mel_val in = mel_g_add(g, mel_g_scale(g, mel_g_exp(g, mel_g_sub(g, lt, mx)), beta),
                               mel_g_scale(g, mel_g_exp(g, mel_g_sub(g, ls, mx)), 1 - beta));
        mel_val lm = mel_g_add(g, mx, mel_g_log(g, in));
        d = mel_g_add(g, mel_g_scale(g, kl_of(g, lt, lm), beta),
                      mel_g_scale(g, kl_of(g, ls, lm), 1 - beta));
    }
    if (p[KD_T2] != 0) d = mel_g_scale(g, d, p[P_TEMP] * p[P_TEMP]);
    return finish_masked(g, lab, d);
}

static mel_status build_kl(mel_graph *g, const double *p) { return build_kd(g, p, KD_FORWARD); }
static mel_status build_rkl(mel_graph *g, const double *p) { return build_kd(g, p, KD_REVERSE); }
static mel_status build_jsd(mel_graph *g, const double *p) { return build_kd(g, p, KD_JSD); }

/* ------------------------------------------------------------ table */

static const builtin builtins[] = {
    {"ce",
     "cross-entropy  inputs: head 0, labels  params: ignore_index, label_smoothing, z_loss, "
     "logit_scale, softcap, temperature",
     {COMMON_PARAMS, {"label_smoothing", 0, 0, 1, 0}, {"z_loss", 0, 0, 1e300, 0}},
     build_ce},
    {"logprob",
     "token log-probability z[label] - logsumexp(z)  inputs: head 0, labels  params: "
     "ignore_index, logit_scale, softcap, temperature",
     {COMMON_PARAMS},
     build_logprob},
    {"entropy",
     "entropy -sum p log p  inputs: head 0  params: logit_scale, softcap, temperature",
     {COMMON_PARAMS},
     build_entropy},
    {"z_loss",
     "logsumexp(z)^2  inputs: head 0  params: logit_scale, softcap, temperature",
     {COMMON_PARAMS},
     build_z_loss},
    {"kl",
     "forward KL(teacher || student)  inputs: head 0 (student), head 1 (teacher), labels  "
     "params: ignore_index, temperature, t2_scale, logit_scale, softcap",
     {COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}},
     build_kl},
    {"reverse_kl",
     "reverse KL(student || teacher)  inputs: head 0 (student), head 1 (teacher), labels  "
     "params: ignore_index, temperature, t2_scale, logit_scale, softcap",
     {COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}},
     build_rkl},
    {"jsd",
     "generalised JSD beta*KL(t||m) + (1-beta)*KL(s||m), m = beta*p_t + (1-beta)*p_s  inputs: "
     "head 0 (student), head 1 (teacher), labels  params: beta (default 0.5), ignore_index, "
     "temperature, t2_scale, logit_scale, softcap",
     {COMMON_PARAMS, {"t2_scale", 0, 0, 1, 1}, {"beta", 0.5, 0, 1, 0}},
     build_jsd},
};
#define N_BUILTINS ((int)(sizeof builtins / sizeof builtins[0]))

int mel_builtin_count(void) { return N_BUILTINS; }
const char *mel_builtin_name(int i) { return i >= 0 && i < N_BUILTINS ? builtins[i].name : NULL; }
const char *mel_builtin_help(int i) { return i >= 0 && i < N_BUILTINS ? builtins[i].help : NULL; }

mel_status mel_transform_builtin(mel_ctx *ctx, const char *name, const mel_params *params,
                                 mel_transform **out)
{
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
        const pdef *d = &b->params[k];
        if (!isfinite(v) || v < d->lo || v > d->hi || (d->integer && v != floor(v)))
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "transform '%s': parameter %s = %g is outside [%g, %g]%s", name, pn, v,
                            d->lo, d->hi, d->integer ? " or not an integer" : "");
        p[k] = v;
    }
    mel_graph *g = mel_graph_new();
    if (!g) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_transform_builtin: out of memory");
    mel_status s = b->build(g, p);
    if (s == MEL_OK || g->failed) s = mel_graph_compile(ctx, g, name, out);
    else mel_fail(ctx, s, "transform '%s': %s", name, g->err);
    mel_graph_free(g);
    return s;
}
