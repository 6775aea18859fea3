/* Wide logits (issue 20): no stored dZ value is subnormal, for every
 * built-in and a user transform, fused and recompute, f32 and bf16 storage.
 *
 * The trick that makes dZ visible through the public API: W is the identity
 * (V = D), so Z = X and dX = dZ·W = dZ exactly (each entry is one product by
 * 1 plus zeros).  X holds the wide logits: N(0, 1)·40, so most softmax
 * entries of a row lie far below float's smallest normal number, and their
 * products with the upstream gradient land in the subnormal range unless
 * the engine flushes them.  Each call's dX is then
 *   - scanned for subnormal entries (f32: fpclassify; bf16: zero exponent
 *     with a non-zero mantissa): there must be none;
 *   - compared with an independent fp64 closed form of ∂y/∂z written here
 *     (t/ref.c's ref_ce and ref_kd for ce and the distillation losses), to
 *     the tolerances of t/ce.c and t/lowp.c.
 * A sanity check per case counts the entries of the fp64 reference that lie
 * in float's subnormal range, so the case does reach it (before the flush,
 * the libmel of commit 432b498 failed every f32 case here). */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 29, V = 263, IGN = -100 };

static double X[N * V], XT[N * V], ADV[N], MASK[N];
static int64_t LAB[N];

/* ∂y_i/∂z for the transforms without a helper in t/ref.c (closed forms) */
static void softmax(const double *z, double *p, double *lse)
{
    double m = z[0], s = 0;
    for (int j = 1; j < V; j++) m = fmax(m, z[j]);
    for (int j = 0; j < V; j++) s += exp(z[j] - m);
    *lse = m + log(s);
    for (int j = 0; j < V; j++) p[j] = exp(z[j] - *lse);
}

static void ref_grad(const char *name, double *G)
{
    double p[V], lse;
    memset(G, 0, sizeof(double) * N * V);
    if (!strcmp(name, "ce") || !strcmp(name, "kl") || !strcmp(name, "reverse_kl") || !strcmp(name, "jsd")) {
        double y[N];
        if (!strcmp(name, "ce")) {
            ref_ce_opts o;
            ref_ce_defaults(&o);
            ref_ce(N, V, X, LAB, &o, y, G);
        } else {
            int kind = !strcmp(name, "kl") ? 0 : !strcmp(name, "reverse_kl") ? 1 : 2;
            ref_kd(N, V, X, XT, LAB, IGN, kind, 0.5, 1.0, 1, y, G);
        }
        return;
    }
    for (int i = 0; i < N; i++) {
        const double *z = X + (int64_t)i * V;
        double *g = G + (int64_t)i * V;
        softmax(z, p, &lse);
        if (!strcmp(name, "logprob") || !strcmp(name, "grpo") || !strcmp(name, "focal")) {
            if (LAB[i] == IGN) continue;
            /* d logp/dz = onehot − p, times dy/dlogp */
            double s = 1;
            if (!strcmp(name, "grpo")) s = -ADV[i] * MASK[i]; /* ratio 1: −A·logp's gradient */
            if (!strcmp(name, "focal")) {
                double pt = p[LAB[i]];
                s = -(1 - pt) * (1 - pt) + 2 * (1 - pt) * pt * log(pt);
            }
            for (int j = 0; j < V; j++) g[j] = s * ((j == LAB[i]) - p[j]);
        } else if (!strcmp(name, "entropy")) {
            double H = 0;
            for (int j = 0; j < V; j++) H -= p[j] > 0 ? p[j] * log(p[j]) : 0;
            for (int j = 0; j < V; j++) g[j] = p[j] > 0 ? -p[j] * (log(p[j]) + H) : 0;
        } else if (!strcmp(name, "z_loss")) {
            for (int j = 0; j < V; j++) g[j] = 2 * lse * p[j];
        }
    }
}

static mel_status build_focal(mel_ctx *ctx, mel_transform **out)
{
    mel_graph *g = mel_graph_new();
    mel_val z = mel_g_logits(g, 0, 1);
    mel_val lab = mel_g_index(g, "labels", IGN);
    mel_val logpt = mel_g_gather(g, mel_g_log_softmax(g, z), lab);
    mel_val w = mel_g_square(g, mel_g_sub(g, mel_g_const(g, 1), mel_g_exp(g, logpt)));
    mel_g_set_output(g, mel_g_where(g, mel_g_valid(g, lab), mel_g_neg(g, mel_g_mul(g, w, logpt)),
                                    mel_g_const(g, 0)));
    mel_status s = mel_graph_compile(ctx, g, "focal", out);
    mel_graph_free(g);
    return s;
}

static int is_sub16(uint16_t h) { return (h & 0x7f80) == 0 && (h & 0x007f) != 0; }

static void run(mel_ctx *ctx, const char *name, mel_transform *t, mel_dtype dt, int fused)
{
    const int teacher = !strcmp(name, "kl") || !strcmp(name, "reverse_kl") || !strcmp(name, "jsd");
    const int bf = dt == MEL_BF16;
    /* storage: X (and the teacher's) rounded once for bf16; W = I is exact */
    float *x = malloc(sizeof(float) * N * V), *xt = malloc(sizeof(float) * N * V);
    float *w = calloc((size_t)V * V, sizeof(float)), *dx = malloc(sizeof(float) * N * V);
    float *dw = malloc(sizeof(float) * V * V);
    uint16_t *x16 = malloc(2 * N * V), *xt16 = malloc(2 * N * V), *w16 = calloc((size_t)V * V, 2);
    uint16_t *dx16 = malloc(2 * N * V);
    double *Xs = malloc(sizeof(double) * N * V), *XTs = malloc(sizeof(double) * N * V);
    memcpy(Xs, X, sizeof X), memcpy(XTs, XT, sizeof XT);
    for (int64_t i = 0; i < (int64_t)N * V; i++) {
        if (bf) {
            x16[i] = ref_to16(X[i], dt), xt16[i] = ref_to16(XT[i], dt);
            X[i] = ref_from16(x16[i], dt), XT[i] = ref_from16(xt16[i], dt);
        }
        x[i] = (float)X[i], xt[i] = (float)XT[i];
        if (!bf) X[i] = x[i], XT[i] = xt[i]; /* the reference sees the stored values */
    }
    for (int j = 0; j < V; j++) w[(int64_t)j * V + j] = 1, w16[(int64_t)j * V + j] = ref_to16(1, dt);
    const void *xp = bf ? (void *)x16 : x, *xtp = bf ? (void *)xt16 : xt, *wp = bf ? (void *)w16 : w;
    void *dxp = bf ? (void *)dx16 : dx;

    mel_args *a = mel_args_new();
    double y = 0;
    mel_args_head(a, 0, mel_mat(xp, dt, N, V, 0), mel_mat(wp, dt, V, V, 0), NULL);
    if (teacher) mel_args_head(a, 1, mel_mat(xtp, dt, N, V, 0), mel_mat(wp, dt, V, V, 0), NULL);
    if (strcmp(name, "entropy") && strcmp(name, "z_loss")) mel_args_index(a, "labels", LAB, MEL_I64, N);
    if (!strcmp(name, "grpo")) {
        mel_args_input(a, "mask", MASK, MEL_F64, N);
        mel_args_input(a, "advantages", ADV, MEL_F64, N);
    }
    /* a sum with an upstream gradient of 2^-6 (as a mean over 64 rows would
     * give): the products p·g of the softmax tail fall below FLT_MIN */
    const double gout = 0x1p-6;
    mel_args_reduction(a, MEL_REDUCE_SUM, NULL);
    mel_args_grad_output(a, &gout, MEL_F64);
    if (fused) mel_args_output(a, &y, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(dxp, dt, N, V, 0), mel_mat(dw, MEL_F32, V, V, 0), NULL, MEL_OVERWRITE_DW);
    mel_set_chunk_rows(ctx, 7); /* several chunks, the last one short */
    mel_status s = fused ? mel_forward_backward(ctx, t, a) : mel_backward(ctx, t, a);

    double *G = malloc(sizeof(double) * N * V), *got = malloc(sizeof(double) * N * V);
    ref_grad(name, G);
    for (int64_t i = 0; i < (int64_t)N * V; i++) G[i] *= gout;
    int64_t nsub = 0, reach = 0;
    for (int64_t i = 0; i < (int64_t)N * V; i++) {
        got[i] = bf ? ref_from16(dx16[i], dt) : dx[i];
        nsub += bf ? is_sub16(dx16[i]) : fpclassify(dx[i]) == FP_SUBNORMAL;
        reach += G[i] != 0 && fabs(G[i]) < FLT_MIN;
    }
    double err = ref_relerr(got, G, (int64_t)N * V, 1e-300);
    /* the tolerances of t/ce.c and t/lowp.c, plus the rounding of a
     * logsumexp held in f32 at the magnitude of the largest logit (half an
     * ulp of ~160 here; log-probs formed as z − lse carry it: doc/design.md,
     * "f32 log-probs of large logits") */
    double zmax = 0;
    for (int64_t i = 0; i < (int64_t)N * V; i++) zmax = fmax(zmax, fmax(fabs(X[i]), fabs(XT[i])));
    double tol = (bf ? 0x1p-8 : 0) + 3e-5 + zmax * 0x1p-24;
    ok(s == MEL_OK && nsub == 0 && err < tol && reach > 0,
       "%s %s %s: %lld subnormal dZ entries stored (want 0); rel err %.1e (tol %.1e); "
       "%lld reference entries in float's subnormal range",
       name, mel_dtype_name(dt), fused ? "fused" : "recompute", (long long)nsub, err, tol, (long long)reach);
    if (s) diag("%s", mel_last_error(ctx));
    memcpy(X, Xs, sizeof X), memcpy(XT, XTs, sizeof XT);
    mel_args_free(a);
    free(x), free(xt), free(w), free(dx), free(dw), free(x16), free(xt16), free(w16), free(dx16);
    free(Xs), free(XTs), free(G), free(got);
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(20));
    for (int64_t i = 0; i < (int64_t)N * V; i++) X[i] = 40 * rng_normal(&rng), XT[i] = 40 * rng_normal(&rng);
    for (int i = 0; i < N; i++) {
        LAB[i] = i % 6 == 5 ? IGN : rng_int(&rng, V);
        ADV[i] = rng_normal(&rng);
        MASK[i] = i % 4 == 3 ? 0 : 1;
    }
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return ok(0, "context: %s", mel_ctx_create_error()), done_testing();
    const char *names[] = {"ce", "logprob", "entropy", "z_loss", "kl", "reverse_kl", "jsd", "grpo", "focal"};
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        mel_transform *t = NULL;
        mel_status s = !strcmp(names[k], "focal") ? build_focal(ctx, &t) : mel_transform_builtin(ctx, names[k], NULL, &t);
        if (!ok(s == MEL_OK, "%s: built", names[k])) {
            diag("%s", mel_last_error(ctx));
            continue;
        }
        for (int bf = 0; bf < 2; bf++)
            for (int fused = 1; fused >= 0; fused--) run(ctx, names[k], t, bf ? MEL_BF16 : MEL_F32, fused);
        mel_transform_free(t);
    }
    mel_ctx_destroy(ctx);
    return done_testing();
}
