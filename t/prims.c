/* Every primitive (and composition) of the row-program builder:
 *  - its value against a closed form computed here from full fp64 logits;
 *  - its VJP rule by finite differences (mel_gradcheck, f64, random
 *    projection of the per-row outputs), vector and scalar variants and
 *    scalar<->vector broadcasts, with a chunk size that splits the rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 9, D = 4, V = 13 };

/* Per-row helpers of the reference: z is one row of logits, u one row of
 * the second head (used as a smooth positive weight), a the scalar input. */
typedef struct row { const double *z, *u; int64_t lab; double a; } row;
typedef struct pcase {
    const char *name;
    mel_val (*build)(mel_graph *g, mel_val z, mel_val u, mel_val lab, mel_val a);
    double (*ref)(const row *r);
} pcase;

/* u' = sigmoid(u) in (0, 1): a positive weight vector so that sums of
 * vectors are not constant in z */
static double sg(double x) { return 1 / (1 + exp(-x)); }
#define SUMV(expr)                                    \
    double acc = 0;                                   \
    for (int j = 0; j < V; j++) {                     \
        const double z = r->z[j], w = sg(r->u[j]);    \
        (void)z; (void)w;                             \
        acc += (expr);                                \
    }                                                 \
    return acc;

static mel_val wsum(mel_graph *g, mel_val v, mel_val u)
{
    return mel_g_sum(g, mel_g_mul(g, v, mel_g_sigmoid(g, u)));
}

/* vector unary */
#define VUN(NAME, BUILD, EXPR)                                                        \
    static mel_val b_##NAME(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a) \
    { return wsum(g, BUILD, u); }                                                     \
    static double r_##NAME(const row *r) { SUMV(EXPR) }
VUN(neg, mel_g_neg(g, z), -z * w)
VUN(exp, mel_g_exp(g, z), exp(z) * w)
VUN(log, mel_g_log(g, mel_g_add(g, mel_g_exp(g, z), mel_g_const(g, 0.5))), log(exp(z) + 0.5) * w)
VUN(tanh, mel_g_tanh(g, z), tanh(z) * w)
VUN(sigmoid, mel_g_sigmoid(g, z), sg(z) * w)
VUN(square, mel_g_square(g, z), z * z * w)
VUN(sqrt, mel_g_sqrt(g, mel_g_add(g, mel_g_square(g, z), mel_g_const(g, 1))), sqrt(z * z + 1) * w)
VUN(log1p, mel_g_log1p(g, mel_g_exp(g, z)), log1p(exp(z)) * w)
/* abs away from its kink: |z + 10| with |z| < 10 */
VUN(abs, mel_g_abs(g, mel_g_sub(g, z, mel_g_const(g, 10))), fabs(z - 10) * w)
VUN(add_vv, mel_g_add(g, z, mel_g_square(g, u)), (z + r->u[j] * r->u[j]) * w)
VUN(sub_vv, mel_g_sub(g, mel_g_square(g, u), z), (r->u[j] * r->u[j] - z) * w)
VUN(mul_vv, mel_g_mul(g, z, z), z * z * w)
VUN(div_vv, mel_g_div(g, z, mel_g_add(g, mel_g_square(g, z), mel_g_const(g, 2))), z / (z * z + 2) * w)
VUN(min_vv, mel_g_min(g, z, mel_g_scale(g, u, 0.5)), fmin(z, 0.5 * r->u[j]) * w)
VUN(max_vv, mel_g_max(g, z, mel_g_scale(g, u, 0.5)), fmax(z, 0.5 * r->u[j]) * w)
/* broadcasts with a differentiable scalar input a */
VUN(add_vs, mel_g_add(g, z, a), (z + r->a) * w)
VUN(sub_sv, mel_g_sub(g, a, z), (r->a - z) * w)
VUN(mul_vs, mel_g_mul(g, z, a), z * r->a * w)
VUN(div_sv, mel_g_div(g, a, mel_g_add(g, mel_g_exp(g, z), mel_g_const(g, 1))), r->a / (exp(z) + 1) * w)
VUN(min_vs, mel_g_min(g, z, a), fmin(z, r->a) * w)
VUN(max_sv, mel_g_max(g, a, z), fmax(r->a, z) * w)
VUN(where_v, mel_g_where(g, mel_g_lt(g, z, mel_g_const(g, 0)), mel_g_square(g, z), mel_g_scale(g, z, 3)),
    (z < 0 ? z * z : 3 * z) * w)
VUN(where_le_eq, mel_g_where(g, mel_g_le(g, z, a), z, mel_g_mul(g, mel_g_eq(g, z, z), a)),
    (z <= r->a ? z : r->a) * w)
VUN(stop_gradient, mel_g_mul(g, z, mel_g_stop_gradient(g, z)), z * z * w)
VUN(clamp, mel_g_clamp(g, z, -0.7, 0.9), fmin(fmax(z, -0.7), 0.9) * w)
VUN(softcap, mel_g_softcap(g, z, 2.5), 2.5 * tanh(z / 2.5) * w)
VUN(scale, mel_g_scale(g, z, -1.7), -1.7 * z * w)
VUN(vocab_bcast, mel_g_mul(g, z, mel_g_add(g, a, mel_g_vocab(g))), z * (r->a + V) * w)

/* reductions and index ops */
static mel_val b_sum(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return mel_g_sum(g, mel_g_mul(g, z, mel_g_sigmoid(g, u))); }
static double r_sum(const row *r) { SUMV(z * w) }
static mel_val b_mean(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return mel_g_square(g, mel_g_mean(g, mel_g_mul(g, z, mel_g_sigmoid(g, u)))); }
static double r_mean(const row *r) { double m = 0; for (int j = 0; j < V; j++) m += r->z[j] * sg(r->u[j]); m /= V; return m * m; }
static mel_val b_rmax(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return mel_g_mul(g, mel_g_rmax(g, z), mel_g_sum(g, mel_g_sigmoid(g, u))); }
static double r_rmax(const row *r) { double m = -INFINITY, s = 0; for (int j = 0; j < V; j++) m = fmax(m, r->z[j]), s += sg(r->u[j]); return m * s; }
static mel_val b_lse(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return mel_g_logsumexp(g, mel_g_mul(g, z, mel_g_sigmoid(g, u))); }
static double r_lse(const row *r) { double s = 0; for (int j = 0; j < V; j++) s += exp(r->z[j] * sg(r->u[j])); return log(s); }
static mel_val b_gather(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return mel_g_mul(g, mel_g_gather(g, z, l), mel_g_add(g, mel_g_valid(g, l), a)); }
static double r_gather(const row *r) { return r->lab < 0 ? 0 : r->z[r->lab] * (1 + r->a); }
static mel_val b_log_softmax(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return wsum(g, mel_g_log_softmax(g, z), u); }
static double r_log_softmax(const row *r) { double s = 0; for (int j = 0; j < V; j++) s += exp(r->z[j]); double lse = log(s); SUMV((z - lse) * w) }
static mel_val b_softmax(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{ return wsum(g, mel_g_softmax(g, z), u); }
static double r_softmax(const row *r) { double s = 0; for (int j = 0; j < V; j++) s += exp(r->z[j]); SUMV(exp(z) / s * w) }
/* scalar unary chain: every unary op applied to a scalar */
static mel_val b_scalar_chain(mel_graph *g, mel_val z, mel_val u, mel_val l, mel_val a)
{
    mel_val s = mel_g_mean(g, z); /* in roughly (-1, 1) */
    mel_val t = mel_g_add(g, mel_g_tanh(g, s), mel_g_sigmoid(g, s));
    t = mel_g_add(g, t, mel_g_log(g, mel_g_add(g, mel_g_exp(g, s), a)));
    t = mel_g_add(g, t, mel_g_sqrt(g, mel_g_add(g, mel_g_square(g, s), mel_g_const(g, 1))));
    t = mel_g_add(g, t, mel_g_log1p(g, mel_g_abs(g, mel_g_sub(g, s, mel_g_const(g, 5)))));
    t = mel_g_sub(g, t, mel_g_div(g, mel_g_neg(g, s), mel_g_add(g, a, mel_g_const(g, 1))));
    t = mel_g_add(g, t, mel_g_mul(g, mel_g_min(g, s, a), mel_g_max(g, s, mel_g_neg(g, a))));
    return t;
}
static double r_scalar_chain(const row *r)
{
    double s = 0;
    for (int j = 0; j < V; j++) s += r->z[j];
    s /= V;
    double a = r->a;
    double t = tanh(s) + sg(s) + log(exp(s) + a) + sqrt(s * s + 1) + log1p(fabs(s - 5));
    t -= -s / (a + 1);
    t += fmin(s, a) * fmax(s, -a);
    return t;
}

#define C(n) {#n, b_##n, r_##n}
static const pcase cases[] = {
    C(neg), C(exp), C(log), C(tanh), C(sigmoid), C(square), C(sqrt), C(log1p), C(abs),
    C(add_vv), C(sub_vv), C(mul_vv), C(div_vv), C(min_vv), C(max_vv),
    C(add_vs), C(sub_sv), C(mul_vs), C(div_sv), C(min_vs), C(max_sv),
    C(where_v), C(where_le_eq), C(stop_gradient), C(clamp), C(softcap), C(scale), C(vocab_bcast),
    C(sum), C(mean), C(rmax), C(lse), C(gather), C(log_softmax), C(softmax), C(scalar_chain),
};

int main(void)
{
    tap_rng rng;
    uint64_t seed = test_seed(7);
    rng_seed(&rng, seed);
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return ok(0, "ctx"), done_testing();
    mel_set_chunk_rows(ctx, 4); /* 9 rows: chunks of 4, 4, 1 */

    double X[N * D], W[V * D], X2[N * D], W2[V * D], Z[N * V], U[N * V], a[N], y[N];
    int64_t lab[N];
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng) * 0.5, X2[i] = rng_normal(&rng) * 0.5;
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(&rng), W2[i] = rng_normal(&rng);
    for (int i = 0; i < N; i++) {
        a[i] = 0.3 + rng_uniform(&rng); /* positive: log(exp(s) + a) */
        lab[i] = i == 2 ? -1 : rng_int(&rng, V);
    }
    ref_logits(N, D, V, X, W, NULL, Z);
    ref_logits(N, D, V, X2, W2, NULL, U);
    /* keep min/max/abs/where away from their kinks: finite differences
     * across a kink are meaningless */
    int n_cases = (int)(sizeof cases / sizeof cases[0]);
    for (int c = 0; c < n_cases; c++) {
        mel_graph *g = mel_graph_new();
        mel_val z = mel_g_logits(g, 0, 1);
        mel_val u = mel_g_logits(g, 1, 0);
        mel_val l = mel_g_index(g, "labels", -1);
        mel_val av = mel_g_input(g, "a", 1);
        mel_val out = cases[c].build(g, z, u, l, av);
        mel_g_set_output(g, out);
        mel_transform *t = NULL;
        mel_status s = mel_graph_compile(ctx, g, cases[c].name, &t);
        mel_graph_free(g);
        if (!ok(s == MEL_OK, "%s: compiles", cases[c].name)) {
            diag("%s", mel_last_error(ctx));
            continue;
        }
        mel_args *ar = mel_args_new();
        mel_args_head(ar, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
        mel_args_head(ar, 1, mel_mat(X2, MEL_F64, N, D, 0), mel_mat(W2, MEL_F64, V, D, 0), NULL);
        mel_args_index(ar, "labels", lab, MEL_I64, N);
        mel_args_input(ar, "a", a, MEL_F64, N);
        mel_args_reduction(ar, MEL_REDUCE_NONE, NULL);
        mel_args_output(ar, y, MEL_F64);
        s = mel_forward(ctx, t, ar);
        double err = 0;
        for (int i = 0; i < N && s == MEL_OK; i++) {
            row r = {Z + i * V, U + i * V, lab[i], a[i]};
            double want = cases[c].ref(&r);
            err = fmax(err, fabs(y[i] - want) / fmax(1.0, fabs(want)));
        }
        ok(s == MEL_OK && err < 1e-12, "%s: value vs closed form, max rel err %.2e", cases[c].name, err);
        if (!strcmp(cases[c].name, "stop_gradient")) {
            /* finite differences see d(z·z)/dz = 2z; the program must give
             * z·w only (the stopped factor is a constant): closed form */
            double dX[N * D], dW[V * D], G[N * V], one[N], rdX[N * D], rdW[V * D], dy[N];
            for (int i = 0; i < N; i++) dy[i] = 1 + i, one[i] = 1 + i;
            for (int i = 0; i < N * V; i++) G[i] = Z[i] * sg(U[i]);
            mel_args_grad_output(ar, dy, MEL_F64);
            mel_args_grad_head(ar, 0, mel_mat(dX, MEL_F64, N, D, 0), mel_mat(dW, MEL_F64, V, D, 0), NULL,
                               MEL_OVERWRITE_DW);
            s = mel_forward_backward(ctx, t, ar);
            ref_backprop(N, D, V, X, W, G, one, rdX, rdW, NULL);
            double e1 = ref_relerr(dX, rdX, N * D, 1e-300), e2 = ref_relerr(dW, rdW, V * D, 1e-300);
            ok(s == MEL_OK && e1 < 1e-12 && e2 < 1e-12,
               "stop_gradient: gradient vs closed form (stopped factor constant), rel err dX %.2e dW %.2e", e1, e2);
            mel_args_free(ar);
            mel_transform_free(t);
            continue;
        }
        mel_gradcheck_opts o = {.seed = seed + (uint64_t)c, .samples = 16};
        mel_gradcheck_report rep;
        s = mel_gradcheck(ctx, t, ar, &o, &rep);
        ok(s == MEL_OK && rep.failed == 0 && rep.checked > 0,
           "%s: VJP vs finite differences, %d entries, max abs err %.2e, max rel err %.2e",
           cases[c].name, rep.checked, rep.max_abs_err, rep.max_rel_err);
        if (s) diag("%s", mel_last_error(ctx));
        else if (rep.failed) diag("worst: %s", rep.worst);
        mel_args_free(ar);
        mel_transform_free(t);
    }
    mel_ctx_destroy(ctx);
    return done_testing();
}
