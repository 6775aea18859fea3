/* bench_cuda: one CE training step on the GPU, naive vs recompute vs fused.
 *
 *   examples/bench_cuda [N D V DTYPE WORKSPACE_MIB REPEAT PRECISIONS]
 *   defaults: 16384 4096 128000 bf16 4096 3 exact (the seed configuration:
 *   bsz 4 × qlen 4096 rows, hidden 4096, vocabulary 128000); PRECISIONS is
 *   a comma-separated list of exact, fast16, tf32 (mel_set_precision), each
 *   run for the three modes
 *
 *   naive      one chunk of N rows (the full N×V logits), forward_backward
 *   recompute  automatic chunks within WORKSPACE_MIB: forward, then backward
 *   fused      automatic chunks within WORKSPACE_MIB: forward_backward
 *
 * X, W, labels, dX, dW and the loss live in device memory.  Time: CUDA
 * events on the legacy default stream around each call (libmel's stream
 * synchronises with it), median and minimum over REPEAT runs after one
 * warm-up; gemm_ms is mel_stats.gemm_seconds of the last run (CUDA events
 * around the chunk GEMMs).  Memory: libmel's peak workspace (mel_stats) and
 * the device's peak use above the baseline, sampled with cudaMemGetInfo by
 * a second thread every ~0.2 ms (a sampled lower bound of the true peak).
 * Before each mode the context's workspace is released (mel_ctx_trim) and
 * the baseline re-read, so a mode's peak is its own (the naive mode's
 * arena is not counted in the later modes).  The loss of every mode and
 * precision is printed with its difference from the first row's.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>

#include "mel.h"

#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "bench_cuda: %s: %s\n", #call, cudaGetErrorString(e_));           \
            exit(1);                                                                          \
        }                                                                                     \
    } while (0)

static void mk(mel_ctx *ctx, mel_status s, const char *what)
{
    if (s != MEL_OK) {
        fprintf(stderr, "bench_cuda: %s: %s: %s\n", what, mel_status_str(s), ctx ? mel_last_error(ctx) : "");
        exit(1);
    }
}

/* ------------------------------------------------ peak memory sampler */

static volatile int sampling;
static size_t min_free;
static int sample_dev;

static void *sampler(void *arg)
{
    (void)arg;
    cudaSetDevice(sample_dev);
    struct timespec ts = {0, 200000};
    while (sampling) {
        size_t fr, tot;
        if (cudaMemGetInfo(&fr, &tot) == cudaSuccess && fr < min_free) min_free = fr;
        nanosleep(&ts, NULL);
    }
    return NULL;
}

/* ------------------------------------------------ data */

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double unif(void) /* [-1, 1) */
{
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (double)(rs >> 11) * 0x1p-52 - 1.0;
}

static uint16_t to16(float f, mel_dtype dt)
{
    if (dt == MEL_F16) {
        _Float16 h = (_Float16)f;
        uint16_t u;
        memcpy(&u, &h, 2);
        return u;
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* n values uniform in [-scale·√3, scale·√3) (variance scale²), as dt, in
 * device memory at d; generated on the host in blocks */
static void fill(void *d, int64_t n, mel_dtype dt, double scale)
{
    const int64_t blk = (int64_t)1 << 22;
    size_t es = mel_dtype_size(dt);
    char *h = malloc((size_t)blk * es);
    if (!h) exit(1);
    for (int64_t i0 = 0; i0 < n; i0 += blk) {
        int64_t m = n - i0 < blk ? n - i0 : blk;
        for (int64_t i = 0; i < m; i++) {
            double v = unif() * scale * 1.7320508075688772;
            if (dt == MEL_F64) ((double *)h)[i] = v;
            else if (dt == MEL_F32) ((float *)h)[i] = (float)v;
            else ((uint16_t *)h)[i] = to16((float)v, dt);
        }
        CK(cudaMemcpy((char *)d + (size_t)i0 * es, h, (size_t)m * es, cudaMemcpyHostToDevice));
    }
    free(h);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int64_t N = argc > 1 ? atoll(argv[1]) : 16384, D = argc > 2 ? atoll(argv[2]) : 4096,
            V = argc > 3 ? atoll(argv[3]) : 128000;
    const char *dts = argc > 4 ? argv[4] : "bf16";
    int64_t ws_mib = argc > 5 ? atoll(argv[5]) : 4096;
    int repeat = argc > 6 ? atoi(argv[6]) : 3;
    const char *precs = argc > 7 ? argv[7] : "exact";
    unsigned plist[3];
    const char *pname[3];
    int np = 0;
    {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "%s", precs);
        for (char *t = strtok(tmp, ","); t; t = strtok(NULL, ",")) {
            unsigned f = !strcmp(t, "exact") ? MEL_PRECISION_EXACT : !strcmp(t, "fast16") ? MEL_PRECISION_FAST16
                       : !strcmp(t, "tf32") ? MEL_PRECISION_TF32 : 99u;
            if (f == 99u || np == 3) {
                fprintf(stderr, "bench_cuda: PRECISIONS = '%s': expected up to 3 of exact, fast16, tf32\n", precs);
                return 2;
            }
            pname[np] = f == MEL_PRECISION_EXACT ? "exact" : f == MEL_PRECISION_FAST16 ? "fast16" : "tf32";
            plist[np++] = f;
        }
        if (np == 0) {
            fprintf(stderr, "bench_cuda: PRECISIONS is empty\n");
            return 2;
        }
    }
    mel_dtype dt = !strcmp(dts, "f32") ? MEL_F32 : !strcmp(dts, "f64") ? MEL_F64 : !strcmp(dts, "f16") ? MEL_F16 : MEL_BF16;
    if (N < 1 || D < 1 || V < 2 || ws_mib < 1 || repeat < 1 || repeat > 100) {
        fprintf(stderr, "usage: bench_cuda [N D V bf16|f16|f32|f64 WORKSPACE_MIB REPEAT [exact,fast16,tf32]]\n");
        return 2;
    }
    mel_dtype gt = dt == MEL_F64 ? MEL_F64 : MEL_F32;
    size_t es = mel_dtype_size(dt), gs = mel_dtype_size(gt);

    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CUDA, &ctx) != MEL_OK) {
        fprintf(stderr, "bench_cuda: %s\n", mel_ctx_create_error());
        return 1;
    }
    CK(cudaGetDevice(&sample_dev));
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, sample_dev));

    void *x, *w, *dx, *dw, *lab;
    double *y;
    CK(cudaMalloc(&x, (size_t)(N * D) * es));
    CK(cudaMalloc(&w, (size_t)(V * D) * es));
    CK(cudaMalloc(&dx, (size_t)(N * D) * es));
    CK(cudaMalloc(&dw, (size_t)(V * D) * gs));
    CK(cudaMalloc(&lab, (size_t)N * 8));
    CK(cudaMalloc((void **)&y, 8));
    fill(x, N * D, dt, 1.0 / sqrt((double)D));
    fill(w, V * D, dt, 1.0);
    {
        int64_t *hl = malloc((size_t)N * 8);
        if (!hl) return 1;
        for (int64_t i = 0; i < N; i++) hl[i] = i % 10 == 9 ? -100 : (int64_t)((unif() + 1) / 2 * (double)V) % V;
        CK(cudaMemcpy(lab, hl, (size_t)N * 8, cudaMemcpyHostToDevice));
        free(hl);
    }

    mel_transform *ce = NULL;
    mk(ctx, mel_transform_builtin(ctx, "ce", NULL, &ce), "ce");
    mel_args *a = mel_args_new();
    mk(ctx, mel_args_head(a, 0, mel_mat(x, dt, N, D, 0), mel_mat(w, dt, V, D, 0), NULL), "head");
    mk(ctx, mel_args_index(a, "labels", lab, MEL_I64, N), "labels");
    mk(ctx, mel_args_reduction(a, MEL_REDUCE_MEAN, NULL), "reduction");
    mk(ctx, mel_args_output(a, y, MEL_F64), "output");
    mk(ctx, mel_args_grad_head(a, 0, mel_mat(dx, dt, N, D, 0), mel_mat(dw, gt, V, D, 0), NULL, MEL_OVERWRITE_DW),
       "grad head");

    size_t base_free, tot;
    CK(cudaDeviceSynchronize());
    CK(cudaMemGetInfo(&base_free, &tot));
    printf("# %s (sm_%d%d, %d SMs, %.1f GiB); libmel %s\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, tot / 1073741824.0, mel_version_string());
    printf("# CE step: N = %lld, D = %lld, V = %lld, %s; caller buffers (X, W, dX, dW) %.1f MiB; "
           "naive logits %.1f MiB; workspace budget %lld MiB; %d rows at once\n",
           (long long)N, (long long)D, (long long)V, mel_dtype_name(dt),
           ((double)(2 * N * D) * es + (double)(V * D) * (es + gs)) / 1048576.0,
           (double)N * (double)V * 4 / 1048576.0, (long long)ws_mib, mel_get_threads(ctx));
    printf("%-10s %-7s %10s %7s %8s %10s %10s %9s %8s %12s %16s %12s %10s\n", "mode", "prec", "chunk_rows", "chunks",
           "active", "median_ms", "min_ms", "gemm_ms", "TFLOP/s", "peak_ws_MiB", "peak_device_MiB", "loss", "dloss");
    double loss0 = NAN;

    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    static const char *names[3] = {"naive", "recompute", "fused"};
    for (int pm = 0; pm < np * 3; pm++) {
        const int m = pm % 3, pi = pm / 3;
        mk(ctx, mel_set_precision(ctx, plist[pi]), "precision");
        /* this mode's memory only: release the previous mode's arena */
        mel_ctx_trim(ctx);
        CK(cudaDeviceSynchronize());
        CK(cudaMemGetInfo(&base_free, &tot));
        if (m == 0) {
            mk(ctx, mel_set_chunk_rows(ctx, N), "chunk rows");
            mk(ctx, mel_set_workspace_limit(ctx, (int64_t)1 << 46), "workspace");
        } else {
            mk(ctx, mel_set_chunk_rows(ctx, 0), "chunk rows");
            mk(ctx, mel_set_workspace_limit(ctx, ws_mib << 20), "workspace");
        }
        double *ms = calloc((size_t)repeat, sizeof *ms);
        int64_t peak_ws = 0, chunk_rows = 0, chunks = 0, active = 0;
        double gemm_ms = 0;
        size_t lowest = base_free;
        double loss = NAN;
        for (int it = -1; it < repeat; it++) {
            mel_stats st;
            double fwd_gemm_s = 0;
            min_free = base_free;
            sampling = 1;
            pthread_t th;
            int have_th = pthread_create(&th, NULL, sampler, NULL) == 0;
            CK(cudaEventRecord(e0, 0));
            if (m == 1) {
                mk(ctx, mel_forward(ctx, ce, a), "forward");
                mel_get_stats(ctx, &st);
                fwd_gemm_s = st.gemm_seconds;
                if (st.peak_workspace_bytes > peak_ws) peak_ws = st.peak_workspace_bytes;
                mk(ctx, mel_backward(ctx, ce, a), "backward");
            } else {
                mk(ctx, mel_forward_backward(ctx, ce, a), "forward_backward");
            }
            CK(cudaEventRecord(e1, 0));
            CK(cudaEventSynchronize(e1));
            sampling = 0;
            if (have_th) pthread_join(th, NULL);
            mel_get_stats(ctx, &st);
            if (st.peak_workspace_bytes > peak_ws) peak_ws = st.peak_workspace_bytes;
            chunk_rows = st.chunk_rows, chunks = st.chunks, active = mel_get_active_rows(ctx);
            gemm_ms = st.gemm_seconds * 1e3 + (m == 1 ? fwd_gemm_s * 1e3 : 0);
            if (min_free < lowest) lowest = min_free;
            float t = 0;
            CK(cudaEventElapsedTime(&t, e0, e1));
            if (it >= 0) ms[it] = t;
        }
        CK(cudaMemcpy(&loss, y, 8, cudaMemcpyDeviceToHost));
        qsort(ms, (size_t)repeat, sizeof *ms, cmp_d);
        double med = repeat % 2 ? ms[repeat / 2] : (ms[repeat / 2 - 1] + ms[repeat / 2]) / 2;
        double flop = 3.0 * 2.0 * (double)N * (double)D * (double)V * (m == 1 ? 4.0 / 3.0 : 1.0);
        if (pm == 0) loss0 = loss;
        printf("%-10s %-7s %10lld %7lld %8lld %10.2f %10.2f %9.2f %8.1f %12.1f %16.1f %12.6f %10.2e\n", names[m],
               pname[pi], (long long)chunk_rows, (long long)chunks, (long long)active, med, ms[0], gemm_ms, flop / (med * 1e-3) * 1e-12,
               (double)peak_ws / 1048576.0, (double)(base_free - lowest) / 1048576.0, loss, loss - loss0);
        fflush(stdout);
        free(ms);
    }
    printf("# loss: mean CE over non-ignored rows (about log V = %.4f for these random inputs)\n", log((double)V));
    printf("# active: the rows the GEMMs ran on (mel_get_active_rows); every 10th label is ignored, runs of 9 "
           "active rows, too short for row skipping on a device (N when it is off)\n");
    printf("# TFLOP/s: the GEMM flops (3 per chunk, 4 for recompute, whose backward recomputes the logits) over the "
           "median time; gemm_ms: device time of the GEMMs (mel_stats.gemm_seconds, CUDA events), last run\n");
    printf("# peak_device_MiB: above the free memory after mel_ctx_trim before each mode (the caller's buffers "
           "excluded)\n");
    mel_args_free(a);
    mel_transform_free(ce);
    mel_ctx_destroy(ctx);
    cudaFree(x), cudaFree(w), cudaFree(dx), cudaFree(dw), cudaFree(lab), cudaFree(y);
    return 0;
}
