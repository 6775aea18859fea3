/* The CPU backend: OpenBLAS GEMMs and an OpenMP row-program executor. */
#include "config.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include <cblas.h>

#include "backend.h"
#include "vmath.h"
#include "half.h"

/* The row executor is compiled for AVX-512 and AVX2 as well as the
 * baseline; the loader picks the best the CPU has (GCC ifunc). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define MEL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MEL_CLONES
#endif

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int);
#endif

static int cpu_threads(mel_ctx *ctx)
{
    return ctx->threads > 0 ? ctx->threads : omp_get_max_threads();
}

static mel_status cpu_init(mel_ctx *ctx) { return MEL_OK; }

static mel_status cpu_copy(mel_ctx *ctx, void *dst, const void *src, size_t bytes, int to_device)
{
    memcpy(dst, src, bytes);
    return MEL_OK;
}

static mel_status cpu_zero2d(mel_ctx *ctx, void *p, int64_t rows, size_t row_bytes, size_t ld_bytes)
{
    for (int64_t r = 0; r < rows; r++) memset((char *)p + (size_t)r * ld_bytes, 0, row_bytes);
    return MEL_OK;
}
static void cpu_fini(mel_ctx *ctx) {}

static void *cpu_alloc(mel_ctx *ctx, size_t bytes)
{
    void *p = NULL;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, rounded)) return NULL;
    return p;
}

static void cpu_free(mel_ctx *ctx, void *p) { free(p); }

static int fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

static mel_status cpu_gemm(mel_ctx *ctx, mel_dtype ct, int transA, int transB,
                           int64_t M, int64_t N, int64_t K, double alpha,
                           const void *A, int64_t lda, const void *B, int64_t ldb,
                           double beta, void *C, int64_t ldc, int grad)
{
    (void)grad; /* no TF32 units */
    if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(lda) ||
        !fits_int(ldb) || !fits_int(ldc))
        return mel_fail(ctx, MEL_ERR_OVERFLOW,
                        "cpu gemm: a dimension (M=%lld N=%lld K=%lld lda=%lld ldb=%lld ldc=%lld) "
                        "exceeds the 32-bit BLAS index range",
                        (long long)M, (long long)N, (long long)K, (long long)lda,
                        (long long)ldb, (long long)ldc);
    if (M == 0 || N == 0) return MEL_OK;
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(cpu_threads(ctx));
#endif
    enum CBLAS_TRANSPOSE ta = transA ? CblasTrans : CblasNoTrans;
    enum CBLAS_TRANSPOSE tb = transB ? CblasTrans : CblasNoTrans;
    if (ct == MEL_F32)
        cblas_sgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, (float)alpha, A, (int)lda,
                    B, (int)ldb, (float)beta, C, (int)ldc);
    else if (ct == MEL_F64)
        cblas_dgemm(CblasRowMajor, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B,
                    (int)ldb, beta, C, (int)ldc);
    else
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "cpu gemm: compute dtype %s",
                        mel_dtype_name(ct));
    return MEL_OK;
}

/* ------------------------------------------------ bf16 / f16 storage */

/* One bf16 row to f32: the bits shifted into the high half, exactly
 * mel_bf16_to_f32, in a loop the compiler vectorises (16 lanes with
 * AVX-512).  W is widened twice per chunk (lib/gemm.c): the scalar loop
 * took 3 % of the CPU time at D = 4096, V = 128000 and 384 rows (perf). */
static MEL_CLONES void widen_bf16_row(const uint16_t *restrict s, uint32_t *restrict o, int64_t n)
{
#pragma omp simd
    for (int64_t j = 0; j < n; j++) o[j] = (uint32_t)s[j] << 16;
}

/* rows [r0, r0+R) of a 16-bit matrix view into a packed f32 block */
static mel_status cpu_widen(mel_ctx *ctx, const mel_matrix *m, int64_t r0, int64_t R, float *out)
{
    const uint16_t *src = m->data;
    const int64_t C = m->cols, ld = m->ld;
    const int bf = m->dtype == MEL_BF16;
    const int nt = cpu_threads(ctx);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *s = src + (r0 + r) * ld;
        float *o = out + r * C;
        if (bf)
            widen_bf16_row(s, (uint32_t *)(void *)o, C);
        else
            for (int64_t j = 0; j < C; j++) o[j] = mel_f16_to_f32(s[j]);
    }
    return MEL_OK;
}

/* f32(m[r0 + r, c0 + j]) for r < R, j < nc, packed [R, nc], on the
 * calling thread */
static void widen_tile(const mel_matrix *m, int64_t r0, int64_t R, int64_t c0, int64_t nc, float *out)
{
    const uint16_t *src = m->data;
    const int bf = m->dtype == MEL_BF16;
    for (int64_t r = 0; r < R; r++) {
        const uint16_t *s = src + (r0 + r) * m->ld + c0;
        float *o = out + r * nc;
        if (bf)
            widen_bf16_row(s, (uint32_t *)(void *)o, nc);
        else
            for (int64_t j = 0; j < nc; j++) o[j] = mel_f16_to_f32(s[j]);
    }
}

#ifdef HAVE_OPENBLAS_GET_PARALLEL
int openblas_get_parallel(void);
#endif

/* Threads that may each run a one-thread GEMM at once: OpenBLAS's OpenMP
 * build runs a cblas call made inside a parallel region on the calling
 * thread alone; another BLAS may start threads of its own, so 1 there. */
static int nested_gemm_threads(mel_ctx *ctx)
{
#ifdef HAVE_OPENBLAS_GET_PARALLEL
    if (openblas_get_parallel() == 2) return cpu_threads(ctx);
#endif
    return 1;
}

/* The 16-bit W loops of lib/gemm.c (backend.h, gemm_w16).  That loop runs
 * one multi-threaded GEMM per W block of vb rows (4 MiB of f32): at
 * D = 4096, V = 128000 and 384 rows a chunk made 1000 GEMM calls of a few
 * milliseconds, each with its thread start and end, and about a third of
 * the CPU time went to threads spinning or yielding while they waited for
 * one another (perf, 2 threads, doc/benchmarks.md).  Here each thread
 * takes whole tasks instead -- logits: a block of vb / threads rows of W,
 * widened into its own slice
 * of wbuf, then Z[:, block] = A · Wfᵀ by a one-thread GEMM; dX: a tile of
 * columns, walking all W blocks of vb rows in order with dX[:, tile] +=
 * A[:, block] · Wf[block, tile] -- the same products as the loop, the W
 * blocks summed in the same order, and the threads meet once per call. */
static mel_status cpu_gemm_w16(mel_ctx *ctx, int which, int64_t R, const float *A, int64_t lda,
                               const mel_matrix *w, float *C, int64_t ldc, float *wbuf, int64_t wbuf_bytes)
{
    const int64_t V = w->rows, D = w->cols, vb = mel_gemm_wblock(ctx->ops, V, D);
    if (!fits_int(R) || !fits_int(V) || !fits_int(D) || !fits_int(lda) || !fits_int(ldc) || !fits_int(w->ld))
        return mel_fail(ctx, MEL_ERR_OVERFLOW,
                        "cpu gemm: a dimension (R=%lld V=%lld D=%lld) exceeds the 32-bit BLAS index range",
                        (long long)R, (long long)V, (long long)D);
    if (R == 0 || V == 0 || D == 0) return MEL_OK;
    int nt = nested_gemm_threads(ctx);
    const int64_t floats = wbuf_bytes / 4;
    /* logits: W rows per task; dX: columns per tile (a multiple of 16, two
     * tiles per thread when they stay at 256 columns or more) */
    int64_t bt = vb / (nt > 0 ? nt : 1), tc = 0;
    if (which == 1 && nt > 1) {
        const int64_t cap = floats / ((int64_t)nt * vb);
        const int64_t tiles = D / (2 * nt) >= 256 ? 2 * nt : nt;
        tc = ((D + tiles - 1) / tiles + 15) / 16 * 16;
        if (tc > cap) tc = cap / 16 * 16;
        if (tc < 16) nt = 1;
    }
    if (which == 0 && bt < 32) nt = 1;
    if (nt <= 1) { /* the loop of lib/gemm.c: one multi-threaded GEMM per block */
        mel_status s = MEL_OK;
        for (int64_t v0 = 0; v0 < V && s == MEL_OK; v0 += vb) {
            const int64_t n = V - v0 < vb ? V - v0 : vb;
            if ((s = cpu_widen(ctx, w, v0, n, wbuf))) break;
            if (which == 0)
                s = cpu_gemm(ctx, MEL_F32, 0, 1, R, n, D, 1.0, A, lda, wbuf, D, 0.0, C + v0, ldc, 0);
            else
                s = cpu_gemm(ctx, MEL_F32, 0, 0, R, D, n, 1.0, A + v0, lda, wbuf, D, v0 ? 1.0 : 0.0, C, ldc, 0);
        }
        return s;
    }
    if (which == 0) {
        const int64_t tasks = (V + bt - 1) / bt;
#pragma omp parallel num_threads(nt)
        {
            float *wt = wbuf + (int64_t)omp_get_thread_num() * bt * D;
#pragma omp for schedule(dynamic)
            for (int64_t k = 0; k < tasks; k++) {
                const int64_t v0 = k * bt, n = V - v0 < bt ? V - v0 : bt;
                widen_tile(w, v0, n, 0, D, wt);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)R, (int)n, (int)D, 1.0f, A, (int)lda,
                            wt, (int)D, 0.0f, C + v0, (int)ldc);
            }
        }
        return MEL_OK;
    }
    const int64_t tiles = (D + tc - 1) / tc;
#pragma omp parallel num_threads(nt)
    {
        float *wt = wbuf + (int64_t)omp_get_thread_num() * vb * tc;
#pragma omp for schedule(dynamic)
        for (int64_t k = 0; k < tiles; k++) {
            const int64_t c0 = k * tc, nc = D - c0 < tc ? D - c0 : tc;
            for (int64_t v0 = 0; v0 < V; v0 += vb) {
                const int64_t n = V - v0 < vb ? V - v0 : vb;
                widen_tile(w, v0, n, c0, nc, wt);
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)nc, (int)n, 1.0f, A + v0,
                            (int)lda, wt, (int)nc, v0 ? 1.0f : 0.0f, C + c0, (int)ldc);
            }
        }
    }
    return MEL_OK;
}

/* m[r0 + r, :] = round16(g[r, :] (+ m[r0 + r, :])) */
static mel_status cpu_store16(mel_ctx *ctx, const mel_matrix *m, int64_t r0, int64_t R,
                              const float *g, int accumulate)
{
    uint16_t *out = m->data;
    const int64_t C = m->cols;
    const int bf = m->dtype == MEL_BF16;
    const int nt = cpu_threads(ctx);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t r = 0; r < R; r++) {
        uint16_t *o = out + (r0 + r) * m->ld;
        const float *gr = g + r * C;
        for (int64_t j = 0; j < C; j++) {
            float v = gr[j];
            if (accumulate) v += bf ? mel_bf16_to_f32(o[j]) : mel_f16_to_f32(o[j]);
            o[j] = bf ? mel_f32_to_bf16(v) : mel_f32_to_f16(v);
        }
    }
    return MEL_OK;
}

static mel_status cpu_add_bias(mel_ctx *ctx, mel_dtype ct, void *Z, int64_t R,
                               int64_t V, const void *bias)
{
    int nt = cpu_threads(ctx);
    if (ct == MEL_F32) {
        float *z = Z;
        const float *b = bias;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < R; r++)
#pragma omp simd
            for (int64_t j = 0; j < V; j++) z[r * V + j] += b[j];
    } else {
        double *z = Z;
        const double *b = bias;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t r = 0; r < R; r++)
#pragma omp simd
            for (int64_t j = 0; j < V; j++) z[r * V + j] += b[j];
    }
    return MEL_OK;
}

static mel_status cpu_colsum(mel_ctx *ctx, mel_dtype ct, const void *Z, int64_t R,
                             int64_t V, void *db)
{
    int nt = cpu_threads(ctx);
    /* columns in parallel, rows in a fixed order: deterministic */
    if (ct == MEL_F32) {
        const float *z = Z;
        float *d = db;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            for (int64_t r = 0; r < R; r++) acc += z[r * V + j];
            d[j] += (float)acc;
        }
    } else {
        const double *z = Z;
        double *d = db;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t j = 0; j < V; j++) {
            double acc = 0;
            for (int64_t r = 0; r < R; r++) acc += z[r * V + j];
            d[j] += acc;
        }
    }
    return MEL_OK;
}

#define T float
#define FN(name) name##_f32
#include "exec_impl.h"
#undef T
#undef FN
#define T double
#define FN(name) name##_f64
#include "exec_impl.h"
#undef T
#undef FN

static mel_status cpu_run_phase(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q,
                                mel_chunk *ch)
{
    (void)ctx;
    if (ch->v_total == 0) ch->v_total = ch->V; /* not vocabulary-parallel */
    if (ch->ct == MEL_F32) return run_phase_f32(t, p, q, ch);
    return run_phase_f64(t, p, q, ch);
}

static mel_status cpu_merge_segments(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q,
                                     mel_chunk *ch)
{
    int L = ch->ct == MEL_F32 ? merge_segments_f32(t, p, q, ch) : merge_segments_f64(t, p, q, ch);
    if (L >= 0)
        return mel_fail(ctx, MEL_ERR_INTERNAL, "merge_segments: transform '%s': a %s sum without the chunk's "
                        "layout lists", t->name, L ? "group" : "sequence");
    return MEL_OK;
}

/* The executor runs every operation. */
static int cpu_supports_op(int op) { return op >= 0 && op < OP__COUNT; }

static const mel_backend_ops cpu_ops = {
    .name = "cpu",
    .host_memory = 1,
    .conv_block_bytes = (int64_t)4 << 20, /* 4 MiB of f32 W rows */
    .dw_block_bytes = (int64_t)16 << 20,  /* OpenBLAS's packed dZᵀ: 16 MiB at most */
    .init = cpu_init,
    .fini = cpu_fini,
    .threads = cpu_threads,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .zero2d = cpu_zero2d,
    .gemm = cpu_gemm,
    .widen = cpu_widen,
    .gemm_w16 = cpu_gemm_w16,
    .store16 = cpu_store16,
    .add_bias = cpu_add_bias,
    .colsum = cpu_colsum,
    .supports_op = cpu_supports_op,
    .run_phase = cpu_run_phase,
    .merge_segments = cpu_merge_segments,
};

const mel_backend_ops *mel_cpu_backend(void) { return &cpu_ops; }
