/* t/huge.c -- shapes past the 32-bit index range, on the CPU, in f32 with
 * the default workspace budget (issue 6, item 3).
 *
 * A. N·V > 2³¹ with D = 2: N = 20000 rows, V = 110000 (N·V = 2.2e9).
 *    The logits are never held (chunks of a few hundred rows), so what is
 *    tested is the chunk loop, the per-row reductions and the dW
 *    accumulation over ~40 chunks at this size.  W[v] = (v·2⁻¹³, 1/4), so
 *    z_iv = x_i0·v·2⁻¹³ + x_i1/4 and logsumexp_v z_iv is a geometric sum
 *    with a closed form (every W entry is exact in f32).  Loss against the
 *    closed form over all rows; dX rows and dW rows sampled (first, last,
 *    random), each recomputed here in double by a plain loop over V or N.
 *
 * B. V·D > 2³¹ with D = 4096: V = 532480 (V·D = 2181038080 elements, 8.7 GB
 *    of f32 per matrix).  W and dW are virtual: each is a chain of mappings
 *    of one 67 MB memfd block of P = 4099 rows, so W[v] = B[v mod P] costs
 *    67 MB of memory, and dW[v] aliases dW[v mod P].  P is odd, so a row
 *    offset wrapped at 2³¹ or 2³² elements or bytes lands on a different
 *    row of B and shows.  W is mapped read-only (a write would fault).
 *    With one thread (so that aliased dW rows are summed one after the
 *    other), the aliased dW is Σ_{v ≡ r mod P} dW[v]; the test compares it
 *    in full, and dX in full, with references in double that use the
 *    periodicity (count of each residue), plus the loss.
 *
 * Tolerances: errors of an f32 GEMM over K terms are bounded by
 * c·u·√K·Σ|a||b| in practice (u = 2⁻²⁴); each check states the scale it is
 * relative to.  Memory: A ~ 0.3 GB, B ~ 0.4 GB resident plus 17.4 GB of
 * address space.  If a mapping fails, that part is skipped with the bytes
 * it needs. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mel.h"
#include "tap.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static const double U32 = 1.0 / 16777216.0; /* f32 unit round-off */

/* ------------------------------------------------------------------ A */

/* log Σ_{v=0}^{V-1} exp(a·v), stably */
static double log_geom(double a, int64_t V)
{
    if (a == 0) return log((double)V);
    if (a > 0) return a * (double)(V - 1) + log(-expm1(-a * (double)V)) - log(-expm1(-a));
    return log(-expm1(a * (double)V)) - log(-expm1(a));
}

static void case_a(mel_ctx *ctx, mel_transform *ce, tap_rng *rng)
{
    enum { D = 2 };
    const int64_t N = 20000, V = 110000;
    const double delta = 1.0 / 8192, w1 = 0.25;
    diag("A: N = %lld, V = %lld, D = %d: N·V = %lld (2^31 = %lld)", (long long)N, (long long)V, D,
         (long long)(N * V), 1LL << 31);
    float *X = malloc(sizeof(float) * N * D), *W = malloc(sizeof(float) * V * D);
    float *dX = malloc(sizeof(float) * N * D), *dW = malloc(sizeof(float) * V * D);
    int64_t *lab = malloc(sizeof(int64_t) * N);
    double *lse = malloc(sizeof(double) * N);
    if (!X || !W || !dX || !dW || !lab || !lse) {
        skip("A: N·V > 2^31: cannot allocate %lld bytes", (long long)(N * (D * 8 + 16) + V * D * 8));
        free(X), free(W), free(dX), free(dW), free(lab), free(lse);
        return;
    }
    /* X: [N, 2] f32, x_i0 ∈ (−1.5, 1.5) so |z| <= 20; W: [V, 2] exact in f32 */
    for (int64_t i = 0; i < N; i++) {
        X[i * D] = (float)(3 * rng_uniform(rng) - 1.5);
        X[i * D + 1] = (float)(4 * rng_normal(rng));
        lab[i] = i % 97 == 5 ? -100 : rng_int(rng, V);
    }
    lab[N - 1] = V - 1, lab[N - 2] = 0;
    for (int64_t v = 0; v < V; v++) W[v * D] = (float)((double)v * delta), W[v * D + 1] = (float)w1;
    mel_args *a = mel_args_new();
    float y = 0;
    mel_args_head(a, 0, mel_mat(X, MEL_F32, N, D, 0), mel_mat(W, MEL_F32, V, D, 0), NULL);
    mel_args_index(a, "labels", lab, MEL_I64, N);
    mel_args_output(a, &y, MEL_F32);
    mel_args_grad_head(a, 0, mel_mat(dX, MEL_F32, N, D, 0), mel_mat(dW, MEL_F32, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    double t0 = now();
    mel_status s = mel_forward_backward(ctx, ce, a);
    double secs = now() - t0;
    mel_stats st;
    mel_get_stats(ctx, &st);
    ok(s == MEL_OK, "A: forward_backward, f32, default budget: %s (%.1f s, %lld chunks of %lld rows, "
       "peak workspace %.0f MB)", s ? mel_last_error(ctx) : "ok", secs, (long long)st.chunks,
       (long long)st.chunk_rows, st.peak_workspace_bytes / 1e6);
    ok(st.chunks > 1 && st.peak_workspace_bytes <= MEL_DEFAULT_WORKSPACE, "A: chunked within the default budget");
    /* loss: mean over valid rows of lse_i − z_i,label, closed form in double */
    double tot = 0;
    int64_t M = 0;
    for (int64_t i = 0; i < N; i++) {
        double x0 = X[i * D], x1 = X[i * D + 1];
        lse[i] = x1 * w1 + log_geom(x0 * delta, V);
        if (lab[i] == -100) continue;
        tot += lse[i] - (x0 * (double)W[lab[i] * D] + x1 * w1);
        M++;
    }
    double want = tot / (double)M;
    /* each row's loss has error ~ u·max|z|; the mean inherits it */
    ok(fabs(y - want) <= 64 * U32 * (fabs(want) + 20), "A: mean loss %.9g vs closed form %.9g (diff %.2e)",
       (double)y, want, fabs(y - want));
    /* the closed form itself against a plain sum for a few rows */
    double worst = 0;
    for (int k = 0; k < 4; k++) {
        int64_t i = k == 0 ? N - 1 : rng_int(rng, N);
        double m = -INFINITY, sum = 0;
        for (int64_t v = 0; v < V; v++) m = fmax(m, (double)X[i * D] * W[v * D] + (double)X[i * D + 1] * w1);
        for (int64_t v = 0; v < V; v++) sum += exp((double)X[i * D] * W[v * D] + (double)X[i * D + 1] * w1 - m);
        worst = fmax(worst, fabs(m + log(sum) - lse[i]));
    }
    ok(worst < 1e-9, "A: the reference's closed form matches a plain sum over V (diff %.1e)", worst);
    /* dX rows: (1/M)(Σ_v p_iv W_v − W_label), by a loop over V in double */
    double ex = 0;
    int rows[10] = {0, 1, (int)N - 1, (int)N - 2};
    for (int k = 4; k < 10; k++) rows[k] = (int)rng_int(rng, N);
    for (int k = 0; k < 10; k++) {
        int64_t i = rows[k];
        double g[D] = {0, 0}, scale = 0;
        for (int64_t v = 0; v < V; v++) {
            double z = (double)X[i * D] * W[v * D] + (double)X[i * D + 1] * w1;
            double p = exp(z - lse[i]) - (v == lab[i]);
            if (lab[i] == -100) p = 0;
            g[0] += p * W[v * D], g[1] += p * w1;
            scale += fabs(p) * (fabs(W[v * D]) + w1);
        }
        for (int j = 0; j < D; j++) {
            double e = fabs(dX[i * D + j] - g[j] / M) / ((scale + 1) / M);
            ex = fmax(ex, e);
        }
    }
    ok(ex < 16 * U32 * sqrt((double)V) + 64 * U32 * 20, "A: dX of 10 rows (first, last, random) vs "
       "double, error / Σ|dZ||W| = %.2e", ex);
    /* dW rows: (1/M) Σ_i (p_iv − [label_i = v]) X_i, by a loop over N */
    double ew = 0;
    int64_t vs[12] = {0, 1, V - 1, V - 2};
    for (int k = 4; k < 12; k++) vs[k] = rng_int(rng, V);
    for (int k = 0; k < 12; k++) {
        int64_t v = vs[k];
        double g[D] = {0, 0}, scale = 0;
        for (int64_t i = 0; i < N; i++) {
            if (lab[i] == -100) continue;
            double z = (double)X[i * D] * W[v * D] + (double)X[i * D + 1] * w1;
            double p = exp(z - lse[i]) - (v == lab[i]);
            g[0] += p * X[i * D], g[1] += p * X[i * D + 1];
            scale += fabs(p) * (fabs(X[i * D]) + fabs(X[i * D + 1]));
        }
        for (int j = 0; j < D; j++) ew = fmax(ew, fabs(dW[v * D + j] - g[j] / M) / ((scale + 1e-3) / M));
    }
    ok(ew < 16 * U32 * sqrt((double)N) + 64 * U32 * 20, "A: dW of 12 rows (first, last, random) vs double, "
       "error / Σ|dZ||X| = %.2e", ew);
    mel_args_free(a);
    free(X), free(W), free(dX), free(dW), free(lab), free(lse);
}

/* ------------------------------------------------------------------ B */

/* A virtual [rows, D] f32 matrix made of repeated mappings of one block of
 * P rows; NULL when the system refuses. */
static float *periodic(int fd, int64_t rows, int64_t P, int64_t D, int prot, size_t *len)
{
    size_t blk = (size_t)P * D * sizeof(float), total = (size_t)rows * D * sizeof(float);
    char *base = mmap(NULL, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return NULL;
    for (size_t off = 0; off < total; off += blk) {
        size_t n = total - off < blk ? total - off : blk;
        if (mmap(base + off, n, prot, MAP_SHARED | MAP_FIXED, fd, 0) == MAP_FAILED) {
            munmap(base, total);
            return NULL;
        }
    }
    *len = total;
    return (float *)base;
}

static void case_b(mel_ctx *ctx, mel_transform *ce, tap_rng *rng)
{
    const int64_t N = 5, D = 4096, V = 532480, P = 4099;
    const size_t blk = (size_t)P * D * sizeof(float);
    diag("B: N = %lld, V = %lld, D = %lld: V·D = %lld (2^31 = %lld); W, dW periodic with P = %lld rows",
         (long long)N, (long long)V, (long long)D, (long long)(V * D), 1LL << 31, (long long)P);
    int fw = memfd_create("mel-huge-w", 0), fg = memfd_create("mel-huge-dw", 0);
    float *Wv = NULL, *dWv = NULL, *Bm = NULL, *dWb = NULL;
    size_t lw = 0, lg = 0;
    if (fw >= 0 && fg >= 0 && ftruncate(fw, (off_t)blk) == 0 && ftruncate(fg, (off_t)blk) == 0) {
        Bm = mmap(NULL, blk, PROT_READ | PROT_WRITE, MAP_SHARED, fw, 0);
        dWb = mmap(NULL, blk, PROT_READ | PROT_WRITE, MAP_SHARED, fg, 0);
        if (Bm == MAP_FAILED) Bm = NULL;
        if (dWb == MAP_FAILED) dWb = NULL;
        if (Bm && dWb) {
            Wv = periodic(fw, V, P, D, PROT_READ, &lw);
            dWv = periodic(fg, V, P, D, PROT_READ | PROT_WRITE, &lg);
        }
    }
    if (!Wv || !dWv) {
        skip("B: V·D > 2^31: needs memfd and %.1f GB of address space (%.0f MB resident)",
             2.0 * V * D * 4 / 1e9, 2.0 * blk / 1e6);
        goto out;
    }
    float *X = malloc(sizeof(float) * N * D), *dX = malloc(sizeof(float) * N * D);
    int64_t lab[5] = {V - 1, 530001, -100, 12, 524288 + 7};
    for (int64_t k = 0; k < P * D; k++) Bm[k] = (float)(0.02 * rng_normal(rng));
    for (int64_t k = 0; k < N * D; k++) X[k] = (float)rng_normal(rng);
    memset(dWb, 0, blk);
    mel_set_threads(ctx, 1);
    mel_set_chunk_rows(ctx, 3); /* two chunks */
    mel_args *a = mel_args_new();
    float y = 0;
    mel_args_head(a, 0, mel_mat(X, MEL_F32, N, D, 0), mel_mat(Wv, MEL_F32, V, D, 0), NULL);
    mel_args_index(a, "labels", lab, MEL_I64, N);
    mel_args_output(a, &y, MEL_F32);
    mel_args_grad_head(a, 0, mel_mat(dX, MEL_F32, N, D, 0), mel_mat(dWv, MEL_F32, V, D, 0), NULL, 0);
    double t0 = now();
    mel_status s = mel_forward_backward(ctx, ce, a);
    double secs = now() - t0;
    ok(s == MEL_OK, "B: forward_backward, f32, 1 thread, 2 chunks: %s (%.1f s)",
       s ? mel_last_error(ctx) : "ok", secs);
    mel_set_threads(ctx, 0);
    mel_set_chunk_rows(ctx, 0);
    /* reference in double: Zb = X·Bᵀ [N, P]; residue r occurs cnt_r times in [0, V) */
    double *Zb = malloc(sizeof(double) * N * P), *lse = malloc(sizeof(double) * N);
    double *dxr = calloc((size_t)(N * D), sizeof(double)), *sc = calloc((size_t)N, sizeof(double));
    for (int64_t i = 0; i < N; i++)
        for (int64_t r = 0; r < P; r++) {
            double z = 0;
            for (int64_t j = 0; j < D; j++) z += (double)X[i * D + j] * Bm[r * D + j];
            Zb[i * P + r] = z;
        }
    int64_t q = V / P, rem = V % P, M = 0;
    double tot = 0;
    for (int64_t i = 0; i < N; i++) {
        double m = -INFINITY, sum = 0;
        for (int64_t r = 0; r < P; r++) m = fmax(m, Zb[i * P + r]);
        for (int64_t r = 0; r < P; r++) sum += (double)(q + (r < rem)) * exp(Zb[i * P + r] - m);
        lse[i] = m + log(sum);
        if (lab[i] == -100) continue;
        tot += lse[i] - Zb[i * P + lab[i] % P];
        M++;
    }
    double want = tot / M;
    ok(fabs(y - want) <= 64 * U32 * sqrt((double)D) * (fabs(want) + 1), "B: mean loss %.9g vs %.9g (diff %.2e)",
       (double)y, want, fabs(y - want));
    /* dX_i = (1/M)(Σ_r cnt_r p_ir B_r − B_{label mod P}) */
    for (int64_t i = 0; i < N; i++) {
        if (lab[i] == -100) continue;
        for (int64_t r = 0; r < P; r++) {
            double p = (double)(q + (r < rem)) * exp(Zb[i * P + r] - lse[i]);
            p -= (r == lab[i] % P);
            sc[i] += fabs(p) * 0.02 * 4;
            for (int64_t j = 0; j < D; j++) dxr[i * D + j] += p * Bm[r * D + j];
        }
    }
    double ex = 0;
    for (int64_t i = 0; i < N; i++)
        for (int64_t j = 0; j < D; j++)
            ex = fmax(ex, fabs(dX[i * D + j] - dxr[i * D + j] / M) / ((sc[i] + 1e-30) / M + 1e-30));
    ok(ex < 16 * U32 * sqrt((double)V), "B: dX [5, 4096] in full vs double, error / Σ|dZ||W| = %.2e", ex);
    /* aliased dW_r = (1/M) Σ_i (cnt_r p_ir − [label_i ≡ r]) X_i, checked at every r and j,
     * and the last true row (v = V − 1 ≡ (V − 1) mod P) read through the far end of the view */
    double ew = 0;
    for (int64_t r = 0; r < P; r++) {
        double p[5], s1 = 0;
        for (int64_t i = 0; i < N; i++) {
            p[i] = lab[i] == -100 ? 0
                                  : (double)(q + (r < rem)) * exp(Zb[i * P + r] - lse[i]) - (lab[i] % P == r);
            s1 += fabs(p[i]);
        }
        for (int64_t j = 0; j < D; j++) {
            double g = 0;
            for (int64_t i = 0; i < N; i++) g += p[i] * X[i * D + j];
            ew = fmax(ew, fabs(dWb[r * D + j] - g / M) / ((s1 * 4 + 1e-30) / M));
        }
    }
    int far_same = memcmp(dWv + (V - 1) * D, dWb + ((V - 1) % P) * D, (size_t)D * sizeof(float)) == 0;
    ok(ew < 16 * U32 * sqrt((double)N * q) + 64 * U32 && far_same,
       "B: aliased dW [%lld, 4096] in full vs double, error / Σ|dZ||X| = %.2e", (long long)P, ew);
    mel_args_free(a);
    free(X), free(dX), free(Zb), free(lse), free(dxr), free(sc);
out:
    if (Wv) munmap(Wv, lw);
    if (dWv) munmap(dWv, lg);
    if (Bm) munmap(Bm, blk);
    if (dWb) munmap(dWb, blk);
    if (fw >= 0) close(fw);
    if (fg >= 0) close(fg);
}

int main(void)
{
    const char *e = getenv("MEL_TEST_HUGE");
    if (!e || strcmp(e, "1") != 0)
        skip_all("slow (about 1 minute on 2 cores): set MEL_TEST_HUGE=1 to run");
    tap_rng rng;
    rng_seed(&rng, test_seed(6));
    mel_ctx *ctx = NULL;
    mel_transform *ce = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) || mel_transform_builtin(ctx, "ce", NULL, &ce))
        return ok(0, "context and ce"), done_testing();
    case_a(ctx, ce, &rng);
    case_b(ctx, ce, &rng);
    mel_transform_free(ce);
    mel_ctx_destroy(ctx);
    return done_testing();
}
