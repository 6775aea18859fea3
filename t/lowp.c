/* bf16 and f16 storage of X and W (logits and row programs in fp32, dW
 * accumulated in fp32, dX rounded once to X's dtype) against the fp64
 * reference evaluated on the same rounded inputs.
 *
 * Tolerances (relative to the largest reference entry, see t/ce.c):
 *   y, dW, db: 3e-5   (fp32 logits and GEMMs, as the f32 path)
 *   dX: 2^-8 = 3.9e-3 for bf16, 2^-11 = 4.9e-4 for f16 (one rounding of
 *       each entry to the storage dtype) plus the fp32 term. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

static void run(mel_ctx *ctx, mel_transform *ce, mel_dtype dt, int64_t N, int64_t D, int64_t V,
                int64_t chunk, int bias, tap_rng *rng)
{
    uint16_t *x = malloc(N * D * 2), *w = malloc(V * D * 2), *b = malloc(V * 2), *dx = malloc(N * D * 2);
    double *X = malloc(N * D * 8), *W = malloc(V * D * 8), *B = malloc(V * 8);
    float *dw = malloc(V * D * 4), *db = malloc(V * 4), y;
    int64_t *lab = malloc(N * 8);
    for (int64_t i = 0; i < N * D; i++) x[i] = ref_to16(rng_normal(rng) / sqrt((double)D) * 2, dt), X[i] = ref_from16(x[i], dt);
    for (int64_t i = 0; i < V * D; i++) w[i] = ref_to16(rng_normal(rng), dt), W[i] = ref_from16(w[i], dt);
    for (int64_t i = 0; i < V; i++) b[i] = ref_to16(rng_normal(rng) * 0.3, dt), B[i] = ref_from16(b[i], dt);
    for (int64_t i = 0; i < N; i++) lab[i] = i % 5 == 4 ? -100 : rng_int(rng, V);
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(x, dt, N, D, 0), mel_mat(w, dt, V, D, 0), bias ? b : NULL);
    mel_args_index(a, "labels", lab, MEL_I64, N);
    mel_args_output(a, &y, MEL_F32);
    mel_args_grad_head(a, 0, mel_mat(dx, dt, N, D, 0), mel_mat(dw, MEL_F32, V, D, 0), bias ? db : NULL,
                       MEL_OVERWRITE_DW);
    mel_set_chunk_rows(ctx, chunk);
    mel_status s = mel_forward_backward(ctx, ce, a);

    double *Z = malloc(N * V * 8), *G = malloc(N * V * 8), *yr = malloc(N * 8), *sc = malloc(N * 8);
    double *rdx = malloc(N * D * 8), *rdw = malloc(V * D * 8), *rdb = malloc(V * 8);
    ref_ce_opts o;
    ref_ce_defaults(&o);
    ref_logits(N, D, V, X, W, bias ? B : NULL, Z);
    int64_t cnt = ref_ce(N, V, Z, lab, &o, yr, G);
    double want = 0;
    for (int64_t i = 0; i < N; i++) want += yr[i] / (double)cnt, sc[i] = 1.0 / (double)cnt;
    ref_backprop(N, D, V, X, W, G, sc, rdx, rdw, rdb);
    double *gdx = malloc(N * D * 8), *gdw = malloc(V * D * 8), *gdb = malloc(V * 8);
    for (int64_t i = 0; i < N * D; i++) gdx[i] = ref_from16(dx[i], dt);
    for (int64_t i = 0; i < V * D; i++) gdw[i] = dw[i];
    for (int64_t i = 0; i < V; i++) gdb[i] = db[i];
    double ey = fabs(y - want) / fmax(fabs(want), 1.0);
    double ex = ref_relerr(gdx, rdx, N * D, 1e-300), ew = ref_relerr(gdw, rdw, V * D, 1e-300);
    double eb = bias ? ref_relerr(gdb, rdb, V, 1e-300) : 0;
    double tx = (dt == MEL_BF16 ? 0x1p-8 : 0x1p-11) + 3e-5;
    ok(s == MEL_OK && ey < 3e-5 && ex < tx && ew < 3e-5 && eb < 3e-5,
       "%s N=%lld D=%lld V=%lld chunk=%lld%s: rel err y %.1e dX %.1e (tol %.1e) dW %.1e db %.1e",
       mel_dtype_name(dt), (long long)N, (long long)D, (long long)V, (long long)chunk, bias ? " bias" : "",
       ey, ex, tx, ew, eb);
    if (s) diag("%s", mel_last_error(ctx));
    mel_args_free(a);
    free(x), free(w), free(b), free(dx), free(X), free(W), free(B), free(dw), free(db), free(lab);
    free(Z), free(G), free(yr), free(sc), free(rdx), free(rdw), free(rdb), free(gdx), free(gdw), free(gdb);
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(16));
    mel_ctx *ctx = NULL;
    mel_transform *ce = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) || mel_transform_builtin(ctx, "ce", NULL, &ce))
        return ok(0, "setup"), done_testing();
    mel_dtype dts[] = {MEL_BF16, MEL_F16};
    for (int k = 0; k < 2; k++) {
        run(ctx, ce, dts[k], 1, 1, 1, 1, 0, &rng);
        run(ctx, ce, dts[k], 37, 24, 301, 5, 1, &rng);
        run(ctx, ce, dts[k], 64, 96, 5003, 0, 0, &rng);   /* several W conversion blocks */
        run(ctx, ce, dts[k], 50, 130, 8999, 17, 1, &rng);  /* odd sizes, bias, many chunks */
    }
    /* a tight budget still holds with the conversion scratch counted, and
     * with FAST16's 16-bit dZ copy too (mel_set_precision) */
    for (int fast = 0; fast < 2; fast++) {
        enum { N = 40, D = 32, V = 2001 };
        uint16_t *x = calloc(N * D, 2), *w = calloc(V * D, 2), *dx = calloc(N * D, 2);
        float *dw = calloc(V * D, 4), y;
        int64_t lab[N];
        for (int i = 0; i < N; i++) lab[i] = i;
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(x, MEL_BF16, N, D, 0), mel_mat(w, MEL_BF16, V, D, 0), NULL);
        mel_args_index(a, "labels", lab, MEL_I64, N);
        mel_args_output(a, &y, MEL_F32);
        mel_args_grad_head(a, 0, mel_mat(dx, MEL_BF16, N, D, 0), mel_mat(dw, MEL_F32, V, D, 0), NULL, 0);
        mel_set_chunk_rows(ctx, 0);
        mel_set_workspace_limit(ctx, 600 << 10);
        mel_set_precision(ctx, fast ? MEL_PRECISION_FAST16 : MEL_PRECISION_EXACT);
        mel_status s = mel_forward_backward(ctx, ce, a);
        mel_stats st;
        mel_get_stats(ctx, &st);
        ok(s == MEL_OK && st.peak_workspace_bytes <= (600 << 10) && fabs(y - log(V)) < 1e-5,
           "bf16%s with a 600 KiB budget: peak %lld B, %lld rows per chunk, loss %.6f = log V",
           fast ? " FAST16" : "", (long long)st.peak_workspace_bytes, (long long)st.chunk_rows, y);
        if (s) diag("%s", mel_last_error(ctx));
        mel_set_precision(ctx, MEL_PRECISION_EXACT);
        mel_set_workspace_limit(ctx, 0);
        mel_args_free(a);
        free(x), free(w), free(dx), free(dw);
    }
    mel_transform_free(ce);
    mel_ctx_destroy(ctx);
    return done_testing();
}
