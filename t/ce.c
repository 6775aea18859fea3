/* Cross-entropy through libmel vs the independent fp64 reference (t/ref.c):
 * shapes (N = 1, V = 1, D = 1, V odd and > 50000), every option, every
 * reduction with upstream gradients != 1, chunk sizes 1 / odd / N / > N /
 * automatic, fused and recompute paths, f64 and f32 storage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

typedef struct shape { int64_t N, D, V; } shape;
typedef struct option {
    const char *name;
    double ls, zl, softcap, scale, temp, xscale;
    int bias, ignore;
} option;

static const shape shapes[] = {
    {1, 1, 1}, {1, 3, 5}, {7, 4, 11}, {33, 5, 97}, {16, 1, 50021}, {24, 16, 257},
};
static const option options[] = {
    {"plain", 0, 0, 0, 1, 1, 1, 0, 0},
    {"ignore_index", 0, 0, 0, 1, 1, 1, 0, 1},
    {"label_smoothing=0.1", 0.1, 0, 0, 1, 1, 1, 0, 1},
    {"z_loss=1e-3", 0, 1e-3, 0, 1, 1, 1, 0, 0},
    {"softcap=3 (large logits)", 0, 0, 3, 1, 1, 8, 0, 0},
    {"bias", 0, 0, 0, 1, 1, 1, 1, 1},
    {"all options", 0.05, 1e-2, 5, 0.9, 0.7, 2, 1, 1},
};
static const char *red_name[] = {"none", "sum", "mean", "weighted"};

static tap_rng rng;

static void fill(double *a, int64_t n, double scale)
{
    for (int64_t i = 0; i < n; i++) a[i] = scale * rng_normal(&rng);
}

static int run_case(const shape *sh, const option *op, mel_reduction red, int64_t chunk,
                    mel_dtype dt, int recompute, mel_ctx *ctx)
{
    const int64_t N = sh->N, D = sh->D, V = sh->V;
    double *X = malloc(N * D * 8), *W = malloc(V * D * 8), *b = malloc(V * 8);
    int64_t *lab = malloc(N * 8);
    double *wts = malloc(N * 8), *dyv = malloc(N * 8);
    fill(X, N * D, op->xscale / sqrt((double)D));
    fill(W, V * D, 1.0);
    fill(b, V, 0.5);
    for (int64_t i = 0; i < N; i++) {
        lab[i] = rng_int(&rng, V);
        if (op->ignore && rng_uniform(&rng) < 0.3) lab[i] = -100;
        wts[i] = rng_uniform(&rng);
        dyv[i] = rng_normal(&rng);
    }
    double dy0 = 0.7;

    /* reference */
    double *Z = malloc(N * V * 8), *G = malloc(N * V * 8), *yr = malloc(N * 8), *s = malloc(N * 8);
    double *rdX = malloc(N * D * 8), *rdW = malloc(V * D * 8), *rdb = malloc(V * 8);
    ref_logits(N, D, V, X, W, op->bias ? b : NULL, Z);
    ref_ce_opts ro;
    ref_ce_defaults(&ro);
    ro.label_smoothing = op->ls, ro.z_loss = op->zl, ro.softcap = op->softcap;
    ro.logit_scale = op->scale, ro.temperature = op->temp;
    int64_t cnt = ref_ce(N, V, Z, lab, &ro, yr, G);
    double ytot = 0;
    for (int64_t i = 0; i < N; i++) {
        switch (red) {
        case MEL_REDUCE_NONE: s[i] = dyv[i]; break;
        case MEL_REDUCE_SUM: s[i] = dy0, ytot += yr[i]; break;
        case MEL_REDUCE_MEAN: s[i] = cnt ? dy0 / (double)cnt : 0, ytot += yr[i]; break;
        case MEL_REDUCE_WEIGHTED: s[i] = dy0 * wts[i], ytot += wts[i] * yr[i]; break;
        }
    }
    if (red == MEL_REDUCE_MEAN) ytot = cnt ? ytot / (double)cnt : 0;
    ref_backprop(N, D, V, X, W, G, s, rdX, rdW, rdb);

    /* library */
    mel_params *p = mel_params_new();
    if (op->ls) mel_params_set(p, "label_smoothing", op->ls);
    if (op->zl) mel_params_set(p, "z_loss", op->zl);
    if (op->softcap) mel_params_set(p, "softcap", op->softcap);
    if (op->scale != 1) mel_params_set(p, "logit_scale", op->scale);
    if (op->temp != 1) mel_params_set(p, "temperature", op->temp);
    mel_transform *t = NULL;
    mel_status st = mel_transform_builtin(ctx, "ce", p, &t);
    mel_params_free(p);
    size_t es = dt == MEL_F64 ? 8 : 4;
    void *x = malloc(N * D * es), *w = malloc(V * D * es), *bb = malloc(V * es);
    void *dx = malloc(N * D * es), *dw = malloc(V * D * es), *db = malloc(V * es);
    void *y = malloc((N + 1) * es), *dy = malloc(N * es);
    for (int64_t i = 0; i < N * D; i++)
        dt == MEL_F64 ? (((double *)x)[i] = X[i]) : (((float *)x)[i] = (float)X[i]);
    for (int64_t i = 0; i < V * D; i++)
        dt == MEL_F64 ? (((double *)w)[i] = W[i]) : (((float *)w)[i] = (float)W[i]);
    for (int64_t i = 0; i < V; i++)
        dt == MEL_F64 ? (((double *)bb)[i] = b[i]) : (((float *)bb)[i] = (float)b[i]);
    for (int64_t i = 0; i < N; i++)
        dt == MEL_F64 ? (((double *)dy)[i] = red == MEL_REDUCE_NONE ? dyv[i] : dy0)
                      : (((float *)dy)[i] = (float)(red == MEL_REDUCE_NONE ? dyv[i] : dy0));
    /* the f32 path stores rounded inputs: compare against the reference
     * on the same rounded inputs */
    if (dt == MEL_F32) {
        for (int64_t i = 0; i < N * D; i++) X[i] = ((float *)x)[i];
        for (int64_t i = 0; i < V * D; i++) W[i] = ((float *)w)[i];
        for (int64_t i = 0; i < V; i++) b[i] = ((float *)bb)[i];
        ref_logits(N, D, V, X, W, op->bias ? b : NULL, Z);
        cnt = ref_ce(N, V, Z, lab, &ro, yr, G);
        ytot = 0;
        for (int64_t i = 0; i < N; i++)
            ytot += red == MEL_REDUCE_WEIGHTED ? wts[i] * yr[i] : red != MEL_REDUCE_NONE ? yr[i] : 0;
        if (red == MEL_REDUCE_MEAN) ytot = cnt ? ytot / (double)cnt : 0;
        ref_backprop(N, D, V, X, W, G, s, rdX, rdW, rdb);
    }
    memset(dw, 0x7f, V * D * es); /* garbage: MEL_OVERWRITE_DW must clear it */
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(x, dt, N, D, 0), mel_mat(w, dt, V, D, 0), op->bias ? bb : NULL);
    mel_args_index(a, "labels", lab, MEL_I64, N);
    mel_args_reduction(a, red, red == MEL_REDUCE_WEIGHTED ? wts : NULL);
    mel_args_output(a, y, dt);
    mel_args_grad_output(a, dy, dt);
    mel_args_grad_head(a, 0, mel_mat(dx, dt, N, D, 0), mel_mat(dw, dt, V, D, 0), op->bias ? db : NULL,
                       MEL_OVERWRITE_DW);
    mel_set_chunk_rows(ctx, chunk);
    if (st == MEL_OK) {
        if (recompute) {
            st = mel_forward(ctx, t, a);
            if (st == MEL_OK) st = mel_backward(ctx, t, a);
        } else {
            st = mel_forward_backward(ctx, t, a);
        }
    }
    int pass = 0;
    double ey = NAN, ex = NAN, ew = NAN, eb = 0;
    if (st == MEL_OK) {
        int64_t ny = red == MEL_REDUCE_NONE ? N : 1;
        double *yd = malloc(ny * 8), *dxd = malloc(N * D * 8), *dwd = malloc(V * D * 8), *dbd = malloc(V * 8);
        for (int64_t i = 0; i < ny; i++) yd[i] = dt == MEL_F64 ? ((double *)y)[i] : ((float *)y)[i];
        for (int64_t i = 0; i < N * D; i++) dxd[i] = dt == MEL_F64 ? ((double *)dx)[i] : ((float *)dx)[i];
        for (int64_t i = 0; i < V * D; i++) dwd[i] = dt == MEL_F64 ? ((double *)dw)[i] : ((float *)dw)[i];
        for (int64_t i = 0; i < V; i++) dbd[i] = dt == MEL_F64 ? ((double *)db)[i] : ((float *)db)[i];
        ey = red == MEL_REDUCE_NONE ? ref_relerr(yd, yr, N, 1e-300) : ref_relerr(yd, &ytot, 1, 1e-300);
        /* A gradient entry is a sum of terms of size |s_i|·|W| (dX), |s_i|·|X|
         * (dW), |s_i| (db) that may cancel (V = 1: p − onehot = 0), so
         * errors are measured relative to max(|ref|, that term scale). */
        double smax = 0, xmax = 0, wmax = 0;
        for (int64_t i = 0; i < N; i++) smax = fmax(smax, fabs(s[i]));
        for (int64_t i = 0; i < N * D; i++) xmax = fmax(xmax, fabs(X[i]));
        for (int64_t i = 0; i < V * D; i++) wmax = fmax(wmax, fabs(W[i]));
        double fl = smax > 0 ? smax : 1e-300;
        ex = ref_relerr(dxd, rdX, N * D, fl * wmax);
        ew = ref_relerr(dwd, rdW, V * D, fl * xmax);
        if (op->bias) eb = ref_relerr(dbd, rdb, V, fl);
        /* tolerances: relative to the largest reference entry of each output.
         * f64: round-off of sums of ≤ 5e4 terms; f32: fp32 GEMMs with fp32
         * logits (|z| up to ~30 here), accumulated in double where summed. */
        double tol = dt == MEL_F64 ? 1e-11 : 3e-5;
        pass = ey <= tol && ex <= tol && ew <= tol && eb <= tol;
        free(yd), free(dxd), free(dwd), free(dbd);
    }
    ok(pass, "ce N=%lld D=%lld V=%lld %s reduction=%s chunk=%lld %s %s: rel err y %.2e dX %.2e dW %.2e db %.2e",
       (long long)N, (long long)D, (long long)V, op->name, red_name[red], (long long)chunk,
       dt == MEL_F64 ? "f64" : "f32", recompute ? "recompute" : "fused", ey, ex, ew, eb);
    if (st != MEL_OK) diag("status %s: %s", mel_status_str(st), mel_last_error(ctx));
    mel_args_free(a);
    mel_transform_free(t);
    free(X), free(W), free(b), free(lab), free(wts), free(dyv), free(Z), free(G), free(yr), free(s);
    free(rdX), free(rdW), free(rdb), free(x), free(w), free(bb), free(dx), free(dw), free(db);
    free(y), free(dy);
    return pass;
}

int main(void)
{
    rng_seed(&rng, test_seed(20261129));
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) {
        ok(0, "mel_ctx_create: %s", mel_ctx_create_error());
        return done_testing();
    }
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const shape *sh = &shapes[si];
        int64_t chunks[] = {1, 3, sh->N, sh->N + 5, 0};
        for (size_t oi = 0; oi < sizeof options / sizeof options[0]; oi++)
            for (int red = 0; red < 4; red++)
                for (size_t ci = 0; ci < 5; ci++) {
                    if (sh->V > 1000 && ci != 1 && ci != 4) continue; /* keep the big-V case quick */
                    run_case(sh, &options[oi], (mel_reduction)red, chunks[ci], MEL_F64, ci == 3, ctx);
                    if (ci == 1 || ci == 4)
                        run_case(sh, &options[oi], (mel_reduction)red, chunks[ci], MEL_F32, ci == 4, ctx);
                }
    }
    /* the dW GEMM in blocks of dW rows (the CPU's dw_block_bytes: at most 16 MiB of dZ
     * columns a call): one chunk of 600 rows × V = 8000 spans 3 blocks in f64, 2 in f32 */
    const shape big = {600, 3, 8000};
    run_case(&big, &options[0], MEL_REDUCE_MEAN, 600, MEL_F64, 0, ctx);
    run_case(&big, &options[0], MEL_REDUCE_MEAN, 600, MEL_F32, 0, ctx);
    mel_ctx_destroy(ctx);
    return done_testing();
}
