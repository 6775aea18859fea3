/* mel_set_precision on the CPU backend (the CUDA backend implements the
 * same policy with tensor-core GEMMs; t/cuda.c compares the two).
 *
 * Against independent fp64 models written here (full logits, closed-form
 * CE gradient from t/ref.c, plain loops):
 *   EXACT   dZ = s·G in full precision: the bf16 / f16 tolerances of t/lowp.c.
 *   FAST16  dZ = round16(f32(s·G)) (round to nearest even to the storage
 *           dtype), then dX = dZ·W, dW = dZᵀ·X, db = Σ dZ in fp64 on those
 *           rounded values: the library must agree with this model to fp32
 *           accuracy (y 3e-5; dW, db normalised squared error 1e-9; dX one
 *           rounding to the storage dtype), and must NOT agree with the
 *           exact model that closely for dW (nse 100 times larger: the
 *           rounding really happens).
 *   The error of FAST16 against the exact fp64 gradients is measured
 *   (printed) and bounded: bf16 dW, db <= 2^-8 (one bf16 rounding of dZ, at
 *   most, relative to the largest entry), f16 likewise <= 2^-8 with dZ
 *   scaled to stay in f16's normal range (see doc/api.md "Precision").
 * Also: FAST16 and TF32 leave f32 storage bit-identical to EXACT on the
 * CPU; the flags are validated; the budget still holds with dZ16 counted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

typedef struct errs {
    double y, dx, dw, db;   /* max |error| / max |reference|          */
    double nx, nw, nb;      /* Σ error² / Σ reference² (nse)          */
} errs;

static double nse(const double *g, const double *r, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) num += (g[i] - r[i]) * (g[i] - r[i]), den += r[i] * r[i];
    return num == 0 ? 0 : num / fmax(den, 1e-300);
}

/* One CE forward-backward, reduction SUM scaled by `scale` per row
 * (WEIGHTED with equal weights), with 16-bit storage dt in precision
 * `prec`; errors against the exact and the FAST16 fp64 models. */
static void run(mel_ctx *ctx, mel_transform *ce, mel_dtype dt, unsigned prec, int64_t N, int64_t D, int64_t V,
                int64_t chunk, int bias, int acc, double scale, tap_rng *rng, errs *vs_exact, errs *vs_fast,
                mel_status *st)
{
    uint16_t *x = malloc(N * D * 2), *w = malloc(V * D * 2), *b = malloc(V * 2), *dx = malloc(N * D * 2);
    double *X = malloc(N * D * 8), *W = malloc(V * D * 8), *B = malloc(V * 8), *wt = malloc(N * 8);
    float *dw = malloc(V * D * 4), *db = malloc(V * 4), y;
    int64_t *lab = malloc(N * 8);
    double *DX0 = malloc(N * D * 8);
    for (int64_t i = 0; i < N * D; i++) x[i] = ref_to16(rng_normal(rng) / sqrt((double)D) * 2, dt), X[i] = ref_from16(x[i], dt);
    for (int64_t i = 0; i < V * D; i++) w[i] = ref_to16(rng_normal(rng), dt), W[i] = ref_from16(w[i], dt);
    for (int64_t i = 0; i < V; i++) b[i] = ref_to16(rng_normal(rng) * 0.3, dt), B[i] = ref_from16(b[i], dt);
    for (int64_t i = 0; i < N; i++) lab[i] = i % 5 == 4 ? -100 : rng_int(rng, V), wt[i] = 1.0;
    for (int64_t i = 0; i < N * D; i++) { /* pre-filled dX for MEL_ACCUMULATE_DX */
        dx[i] = acc ? ref_to16(rng_normal(rng) * 1e-3, dt) : 0;
        DX0[i] = ref_from16(dx[i], dt);
    }
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(x, dt, N, D, 0), mel_mat(w, dt, V, D, 0), bias ? b : NULL);
    mel_args_index(a, "labels", lab, MEL_I64, N);
    mel_args_reduction(a, MEL_REDUCE_WEIGHTED, wt);
    mel_args_output(a, &y, MEL_F32);
    mel_args_grad_output(a, &scale, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(dx, dt, N, D, 0), mel_mat(dw, MEL_F32, V, D, 0), bias ? db : NULL,
                       MEL_OVERWRITE_DW | (acc ? MEL_ACCUMULATE_DX : 0));
    mel_set_chunk_rows(ctx, chunk);
    mel_set_precision(ctx, prec);
    *st = mel_forward_backward(ctx, ce, a);
    if (*st) diag("%s", mel_last_error(ctx));
    mel_set_precision(ctx, MEL_PRECISION_EXACT);

    /* the models */
    double *Z = malloc(N * V * 8), *G = malloc(N * V * 8), *yr = malloc(N * 8), *s = malloc(N * 8);
    double *Gr = malloc(N * V * 8), *one = malloc(N * 8);
    double *edx = malloc(N * D * 8), *edw = malloc(V * D * 8), *edb = malloc(V * 8);
    double *fdx = malloc(N * D * 8), *fdw = malloc(V * D * 8), *fdb = malloc(V * 8);
    ref_ce_opts o;
    ref_ce_defaults(&o);
    ref_logits(N, D, V, X, W, bias ? B : NULL, Z);
    ref_ce(N, V, Z, lab, &o, yr, G);
    double want = 0;
    for (int64_t i = 0; i < N; i++) want += yr[i], s[i] = scale, one[i] = 1.0;
    ref_backprop(N, D, V, X, W, G, s, edx, edw, edb);
    /* FAST16: dZ = round16(f32(s·G)), then the same products on it */
    for (int64_t k = 0; k < N * V; k++) Gr[k] = ref_from16(ref_to16((double)(float)(scale * G[k]), dt), dt);
    ref_backprop(N, D, V, X, W, Gr, one, fdx, fdw, fdb);
    for (int64_t i = 0; i < N * D; i++) edx[i] += DX0[i], fdx[i] += DX0[i];

    double *gdx = malloc(N * D * 8), *gdw = malloc(V * D * 8), *gdb = malloc(V * 8);
    for (int64_t i = 0; i < N * D; i++) gdx[i] = ref_from16(dx[i], dt);
    for (int64_t i = 0; i < V * D; i++) gdw[i] = dw[i];
    for (int64_t i = 0; i < V; i++) gdb[i] = db[i];
    vs_exact->y = vs_fast->y = fabs(y - want) / fmax(fabs(want), 1.0);
    vs_exact->dx = ref_relerr(gdx, edx, N * D, 1e-300);
    vs_exact->dw = ref_relerr(gdw, edw, V * D, 1e-300);
    vs_exact->db = bias ? ref_relerr(gdb, edb, V, 1e-300) : 0;
    vs_fast->dx = ref_relerr(gdx, fdx, N * D, 1e-300);
    vs_fast->dw = ref_relerr(gdw, fdw, V * D, 1e-300);
    vs_fast->db = bias ? ref_relerr(gdb, fdb, V, 1e-300) : 0;
    vs_exact->nx = nse(gdx, edx, N * D), vs_fast->nx = nse(gdx, fdx, N * D);
    vs_exact->nw = nse(gdw, edw, V * D), vs_fast->nw = nse(gdw, fdw, V * D);
    vs_exact->nb = bias ? nse(gdb, edb, V) : 0, vs_fast->nb = bias ? nse(gdb, fdb, V) : 0;
    mel_args_free(a);
    free(x), free(w), free(b), free(dx), free(X), free(W), free(B), free(wt), free(dw), free(db), free(lab), free(DX0);
    free(Z), free(G), free(yr), free(s), free(Gr), free(one), free(edx), free(edw), free(edb), free(fdx), free(fdw);
    free(fdb), free(gdx), free(gdw), free(gdb);
}

static void compare(mel_ctx *ctx, mel_transform *ce, mel_dtype dt, int64_t N, int64_t D, int64_t V, int64_t chunk,
                    int bias, int acc, double scale, tap_rng *rng)
{
    const double tx = (dt == MEL_BF16 ? 0x1p-8 : 0x1p-11) + 3e-5; /* one rounding of dX */
    tap_rng r2 = *rng;
    errs ee, ef, fe, ff;
    mel_status s1, s2;
    run(ctx, ce, dt, MEL_PRECISION_EXACT, N, D, V, chunk, bias, acc, scale, rng, &ee, &ef, &s1);
    run(ctx, ce, dt, MEL_PRECISION_FAST16, N, D, V, chunk, bias, acc, scale, &r2, &fe, &ff, &s2);
    char what[160];
    snprintf(what, sizeof what, "%s N=%lld D=%lld V=%lld chunk %lld%s%s, dL/dy %g", mel_dtype_name(dt), (long long)N,
             (long long)D, (long long)V, (long long)chunk, bias ? " bias" : "", acc ? " accumulate dX" : "", scale);
    ok(s1 == MEL_OK && ee.y < 3e-5 && ee.dx < tx && ee.dw < 3e-5 && ee.db < 3e-5,
       "EXACT %s vs the exact fp64 model: y %.1e dX %.1e dW %.1e db %.1e", what, ee.y, ee.dx, ee.dw, ee.db);
    /* against the model in nse: the library's fp32 dZ and the model's fp64
     * one can round to different neighbours where they lie next to a
     * rounding midpoint -- a rare one-ulp flip that a max-error test would
     * magnify, an nse test does not */
    ok(s2 == MEL_OK && ff.y < 3e-5 && ff.dx < tx && ff.nw < 1e-9 && ff.nb < 1e-9,
       "FAST16 %s vs the fp64 model of FAST16 (dZ rounded to %s): y %.1e dX %.1e, nse dW %.1e db %.1e", what,
       mel_dtype_name(dt), ff.y, ff.dx, ff.nw, ff.nb);
    /* the rounding is really applied: the exact model is much further away */
    ok(s2 == MEL_OK && fe.nw > 100 * ff.nw && fe.nw > 1e-9,
       "FAST16 %s is measurably not EXACT: dW nse vs the exact model %.1e > 100 × %.1e", what, fe.nw, ff.nw);
    /* the documented bound of FAST16 against exact fp64 gradients */
    ok(s2 == MEL_OK && fe.y < 3e-5 && fe.dx < tx + 0x1p-8 && fe.dw < 0x1p-8 && fe.db < 0x1p-8,
       "FAST16 %s vs the exact fp64 gradients, measured: dX %.1e dW %.1e db %.1e (bound: dW, db 2^-8; dX 2^-8 + %.1e)",
       what, fe.dx, fe.dw, fe.db, tx);
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(1414));
    mel_ctx *ctx = NULL;
    mel_transform *ce = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) || mel_transform_builtin(ctx, "ce", NULL, &ce))
        return ok(0, "setup"), done_testing();

    /* flags */
    ok(mel_get_precision(ctx) == MEL_PRECISION_EXACT, "the default precision is EXACT (0)");
    ok(mel_set_precision(ctx, MEL_PRECISION_FAST16 | MEL_PRECISION_TF32) == MEL_OK &&
           mel_get_precision(ctx) == (MEL_PRECISION_FAST16 | MEL_PRECISION_TF32),
       "FAST16 | TF32 is accepted and read back");
    mel_status s = mel_set_precision(ctx, 4);
    ok(s == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "flags = 0x4") &&
           mel_get_precision(ctx) == (MEL_PRECISION_FAST16 | MEL_PRECISION_TF32),
       "an unknown flag is refused with a message naming it, the setting unchanged: %s", mel_last_error(ctx));
    ok(mel_set_precision(NULL, 0) == MEL_ERR_INVALID_ARGUMENT && mel_get_precision(NULL) == 0, "NULL ctx");
    mel_set_precision(ctx, MEL_PRECISION_EXACT);

    const mel_dtype dts[] = {MEL_BF16, MEL_F16};
    for (int k = 0; k < 2; k++) {
        const mel_dtype dt = dts[k];
        /* f16: dZ = dL/dy · G stays in f16's normal range with dL/dy = 1 */
        compare(ctx, ce, dt, 37, 24, 301, 5, 1, 0, 1.0, &rng);
        compare(ctx, ce, dt, 64, 96, 5003, 0, 0, 1, 1.0, &rng);
        compare(ctx, ce, dt, 50, 130, 8999, 17, 1, 0, 0.5, &rng);
        /* D = 2048: several W blocks of the CPU's 4 MiB conversion block */
        compare(ctx, ce, dt, 24, 2048, 1500, 7, 1, 1, 1.0, &rng);
    }

    /* f32 storage: FAST16 and TF32 change nothing on the CPU (bit-identical) */
    {
        enum { N = 29, D = 33, V = 517 };
        float *x = malloc(N * D * 4), *w = malloc(V * D * 4), *dx[3], *dw[3], y[3];
        int64_t lab[N];
        for (int i = 0; i < N * D; i++) x[i] = (float)(rng_normal(&rng) * 0.3);
        for (int i = 0; i < V * D; i++) w[i] = (float)rng_normal(&rng);
        for (int i = 0; i < N; i++) lab[i] = rng_int(&rng, V);
        const unsigned pr[3] = {MEL_PRECISION_EXACT, MEL_PRECISION_FAST16, MEL_PRECISION_TF32};
        mel_status st[3];
        for (int m = 0; m < 3; m++) {
            dx[m] = calloc(N * D, 4), dw[m] = calloc(V * D, 4);
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(x, MEL_F32, N, D, 0), mel_mat(w, MEL_F32, V, D, 0), NULL);
            mel_args_index(a, "labels", lab, MEL_I64, N);
            mel_args_output(a, &y[m], MEL_F32);
            mel_args_grad_head(a, 0, mel_mat(dx[m], MEL_F32, N, D, 0), mel_mat(dw[m], MEL_F32, V, D, 0), NULL, 0);
            mel_set_chunk_rows(ctx, 8);
            mel_set_precision(ctx, pr[m]);
            st[m] = mel_forward_backward(ctx, ce, a);
            mel_args_free(a);
        }
        mel_set_precision(ctx, MEL_PRECISION_EXACT);
        for (int m = 1; m < 3; m++)
            ok(!st[0] && !st[m] && y[0] == y[m] && !memcmp(dx[0], dx[m], N * D * 4) && !memcmp(dw[0], dw[m], V * D * 4),
               "f32 storage, %s: y, dX, dW bit-identical to EXACT on the CPU", m == 1 ? "FAST16" : "TF32");
        for (int m = 0; m < 3; m++) free(dx[m]), free(dw[m]);
        free(x), free(w);
    }

    /* the budget with FAST16's 16-bit dZ copy counted: t/lowp.c */
    mel_transform_free(ce);
    mel_ctx_destroy(ctx);
    return done_testing();
}
