/* The CPU backend: OpenBLAS GEMMs and an OpenMP row-program executor. */
#include "config.h"

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
                           double beta, void *C, int64_t ldc)
{
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
            for (int64_t j = 0; j < C; j++) o[j] = mel_bf16_to_f32(s[j]);
        else
            for (int64_t j = 0; j < C; j++) o[j] = mel_f16_to_f32(s[j]);
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

static mel_status cpu_run_rows(mel_ctx *ctx, const mel_transform *t, const mel_plan *p,
                               mel_chunk *ch)
{
    int fb = p == &t->fb || p == &t->vfb;
    if (ch->v_total == 0) ch->v_total = ch->V; /* not vocabulary-parallel */
    if (ch->ct == MEL_F32) return run_rows_f32(ctx, t, p, ch, fb);
    return run_rows_f64(ctx, t, p, ch, fb);
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
    .store16 = cpu_store16,
    .add_bias = cpu_add_bias,
    .colsum = cpu_colsum,
    .supports_op = cpu_supports_op,
    .run_rows = cpu_run_rows,
};

const mel_backend_ops *mel_cpu_backend(void) { return &cpu_ops; }
