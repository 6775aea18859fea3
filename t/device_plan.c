/* device_plan.t -- the chunk plan of a backend that cannot gather rows (a
 * device backend: host_memory = 0, every transfer through copy()), run on
 * the CPU: the CPU backend's table with host_memory = 0, so the engine's
 * device path (runs of consecutive active rows, staged row results) runs
 * here without a GPU (issue 25, the device chunking cliff).
 *
 *  - Scattered ignored rows (every 10th label, runs of 9 active rows,
 *    shorter than the GEMM-bound row count R* of about 40): skipping is
 *    turned off for the call (mel_plan_call: row_skipping 0, every row
 *    active, the chunks of all N rows), the call runs those chunks
 *    (mel_stats), and its results match the fp64 reference (t/ref.c).
 *    On the CPU backend itself (it gathers) the same call skips.
 *  - Prompt-like masks (4 sequences, the first third of each ignored,
 *    runs of 100 active rows): skipping stays on, one chunk per run, the
 *    GEMMs on the active rows only; results match the reference.
 *  - Row results staged back per chunk: a forward call with reduction
 *    NONE copies to the host the labels once (validation) and y of each
 *    chunk's rows, not the whole row buffer per chunk.
 *  - Every 10th row ignored with a fixed chunk of 7 rows and a mean: the
 *    same values as the reference (chunk edges on gaps).
 *  - examples/bench_cuda's step planned (shapes only): skipping off, the
 *    chunks of all N rows (1,639 chunks of 9 rows before); on the CPU
 *    (gather) skipping stays on.
 *
 * Linked statically to reach the backend table (backends/backend.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 600, D = 9, V = 53 };
#define IGN (-100)

static mel_backend_ops devops;
static int64_t d2h_bytes, d2h_calls;

/* the CPU's copy, counted when it goes to the host */
static mel_status counting_copy(mel_ctx *ctx, void *dst, const void *src, size_t bytes, int to_device)
{
    if (!to_device) d2h_bytes += (int64_t)bytes, d2h_calls++;
    return mel_cpu_backend()->copy(ctx, dst, src, bytes, to_device);
}

/* A CPU context that the engine treats as a device without a row gather. */
static mel_ctx *device_like(void)
{
    mel_ctx *c = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &c)) return NULL;
    devops = *c->ops;
    devops.name = "cpu (as a device: no host access, no gather)";
    devops.host_memory = 0;
    devops.copy = counting_copy;
    c->ops = &devops;
    return c;
}

static double X[N * D], W[V * D], Z[N * V], G[N * V];
static int64_t LAB[N];

typedef struct out {
    double y[N], dx[N * D], dw[V * D];
    double ymean;
    mel_call_plan plan;
    mel_stats st;
    int64_t active;
    mel_status s, ps;
    char err[512];
} out;

/* ce forward-backward (reduction NONE with dy = 1 per row, or MEAN), f64 */
static void call(mel_ctx *ctx, mel_transform *t, mel_reduction red, int64_t chunk, out *o)
{
    memset(o, 0, sizeof *o);
    mel_args *a = mel_args_new();
    static double dy[N];
    for (int i = 0; i < N; i++) dy[i] = 1;
    double one = 1;
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_grad_head(a, 0, mel_mat(o->dx, MEL_F64, N, D, 0), mel_mat(o->dw, MEL_F64, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    mel_args_reduction(a, red, NULL);
    mel_args_output(a, red == MEL_REDUCE_NONE ? o->y : &o->ymean, MEL_F64);
    mel_args_grad_output(a, red == MEL_REDUCE_NONE ? dy : &one, MEL_F64);
    mel_set_chunk_rows(ctx, chunk);
    o->ps = mel_plan_call(ctx, t, a, MEL_MODE_FORWARD_BACKWARD, &o->plan);
    o->s = mel_forward_backward(ctx, t, a);
    snprintf(o->err, sizeof o->err, "%s", o->s ? mel_last_error(ctx) : "");
    mel_get_stats(ctx, &o->st);
    o->active = mel_get_active_rows(ctx);
    mel_args_free(a);
}

/* the fp64 reference of ce: y per row, dX and dW for upstream s per row */
static void reference(double *y, double *dx, double *dw, int mean)
{
    ref_ce_opts opt;
    ref_ce_defaults(&opt);
    opt.ignore_index = IGN;
    static double s[N];
    ref_logits(N, D, V, X, W, NULL, Z);
    const int64_t n = ref_ce(N, V, Z, LAB, &opt, y, G);
    for (int i = 0; i < N; i++) s[i] = mean ? 1.0 / (double)n : 1.0;
    ref_backprop(N, D, V, X, W, G, s, dx, dw, NULL);
}

static int64_t count_runs(void)
{
    int64_t runs = 0;
    for (int i = 0; i < N; i++) runs += LAB[i] != IGN && (i == 0 || LAB[i - 1] == IGN);
    return runs;
}

static void check(const char *what, const out *o, int mean)
{
    static double y[N], dx[N * D], dw[V * D];
    reference(y, dx, dw, mean);
    double ey = 1;
    if (!o->s) {
        if (mean) {
            double sum = 0;
            int64_t n = 0;
            for (int i = 0; i < N; i++) sum += y[i], n += LAB[i] != IGN;
            ey = fabs(o->ymean - sum / (double)n) / fmax(fabs(sum / (double)n), 1e-300);
        } else {
            ey = ref_relerr(o->y, y, N, 1e-300);
        }
    }
    const double ex = o->s ? 1 : ref_relerr(o->dx, dx, N * D, 1e-300), ew = o->s ? 1 : ref_relerr(o->dw, dw, V * D, 1e-300);
    ok(!o->s && ey < 1e-12 && ex < 1e-12 && ew < 1e-12, "%s: y %.1e dX %.1e dW %.1e against the fp64 reference", what,
       ey, ex, ew);
    if (o->s) diag("%s", o->err);
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(25));
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng) / 3;
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(&rng) / 3;
    mel_ctx *dev = device_like(), *cpu = NULL;
    if (!dev || mel_ctx_create(MEL_BACKEND_CPU, &cpu)) return ok(0, "contexts"), done_testing();
    mel_transform *t = NULL;
    if (mel_transform_builtin(cpu, "ce", NULL, &t)) return ok(0, "ce: %s", mel_last_error(cpu)), done_testing();
    out o, p;

    /* 1. every 10th row ignored: runs of 9 */
    for (int i = 0; i < N; i++) LAB[i] = i % 10 == 9 ? IGN : rng_int(&rng, V);
    mel_set_row_skipping(dev, 0);
    call(dev, t, MEL_REDUCE_NONE, 0, &p); /* the plain plan: skipping off */
    mel_set_row_skipping(dev, 1);
    call(dev, t, MEL_REDUCE_NONE, 0, &o);
    ok(!o.ps && !o.s && o.plan.row_skipping == 0 && o.plan.active_rows == N && o.active == N &&
           o.plan.chunks == p.plan.chunks && o.st.chunks == o.plan.chunks && o.plan.chunk_rows == p.plan.chunk_rows,
       "no gather, runs of 9 active rows (%lld runs): skipping off for the call: plan row_skipping %d, active %lld "
       "of %d, %lld chunk(s) of %lld rows as with skipping off (%lld), the call ran %lld",
       (long long)count_runs(), o.plan.row_skipping, (long long)o.plan.active_rows, N, (long long)o.plan.chunks,
       (long long)o.plan.chunk_rows, (long long)p.plan.chunks, (long long)o.st.chunks);
    check("no gather, runs of 9, reduction NONE", &o, 0);
    call(cpu, t, MEL_REDUCE_NONE, 0, &o);
    ok(!o.s && o.plan.row_skipping == 1 && o.plan.active_rows == N - N / 10 && o.active == N - N / 10,
       "the CPU backend (it gathers) skips the same rows: row_skipping %d, active %lld", o.plan.row_skipping,
       (long long)o.active);
    /* fixed chunks of 7 rows (edges on gaps) and a mean */
    call(dev, t, MEL_REDUCE_MEAN, 7, &o);
    ok(!o.s && o.plan.row_skipping == 0 && o.st.chunks == (N + 6) / 7,
       "no gather, runs of 9, chunks of 7 rows: skipping off, %lld chunks (%d wanted)", (long long)o.st.chunks,
       (N + 6) / 7);
    check("no gather, runs of 9, chunks of 7, MEAN", &o, 1);

    /* 2. prompt-like: 4 sequences of 150 rows, the first 50 of each ignored */
    for (int i = 0; i < N; i++) LAB[i] = i % 150 < 50 ? IGN : rng_int(&rng, V);
    call(dev, t, MEL_REDUCE_NONE, 0, &o);
    ok(!o.ps && !o.s && o.plan.row_skipping == 1 && o.plan.active_rows == 400 && o.active == 400 &&
           o.plan.chunks == 4 && o.st.chunks == 4,
       "no gather, 4 runs of 100 active rows: skipping on, active %lld of %d, %lld chunk(s) (4 wanted), the call "
       "ran %lld", (long long)o.plan.active_rows, N, (long long)o.plan.chunks, (long long)o.st.chunks);
    check("no gather, runs of 100, reduction NONE", &o, 0);
    call(dev, t, MEL_REDUCE_MEAN, 0, &o);
    check("no gather, runs of 100, MEAN", &o, 1);

    /* 3. row results staged back: forward, NONE, skipping off, chunks of 64 */
    {
        static double y[N];
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
        mel_args_index(a, "labels", LAB, MEL_I64, N);
        mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
        mel_args_output(a, y, MEL_F64);
        mel_set_row_skipping(dev, 0);
        mel_set_chunk_rows(dev, 64);
        d2h_bytes = d2h_calls = 0;
        mel_status s = mel_forward(dev, t, a);
        mel_stats st;
        mel_get_stats(dev, &st);
        /* the labels once (validated on the host: N·8 bytes), then y of each
         * chunk; the whole row buffer (64 rows × 4 arrays) per chunk would
         * be 10 × 2048 bytes */
        ok(!s && d2h_bytes == 2 * (int64_t)N * 8 && d2h_calls == st.chunks + 1,
           "forward NONE in %lld chunks of 64 rows: %lld bytes in %lld copies to the host (%d: the labels once, "
           "then y, one copy per chunk)", (long long)st.chunks, (long long)d2h_bytes, (long long)d2h_calls, 2 * N * 8);
        if (s) diag("%s", mel_last_error(dev));
        mel_set_row_skipping(dev, 1);
        mel_args_free(a);
    }

    /* 4. examples/bench_cuda's step, planned (shapes only): N = 16384, D =
     * 4096, V = 128000, bf16, every 10th label ignored, 4096 MiB */
    {
        enum { BN = 16384 };
        static int64_t blab[BN];
        for (int i = 0; i < BN; i++) blab[i] = i % 10 == 9 ? IGN : i % 1000;
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(NULL, MEL_BF16, BN, 4096, 0), mel_mat(NULL, MEL_BF16, 128000, 4096, 0), NULL);
        mel_args_grad_head(a, 0, mel_mat(NULL, MEL_BF16, BN, 4096, 0), mel_mat(NULL, MEL_F32, 128000, 4096, 0), NULL,
                           MEL_OVERWRITE_DW);
        mel_args_index(a, "labels", blab, MEL_I64, BN);
        mel_args_reduction(a, MEL_REDUCE_MEAN, NULL);
        mel_call_plan pd, pc;
        mel_set_chunk_rows(dev, 0), mel_set_chunk_rows(cpu, 0);
        mel_set_workspace_limit(dev, (int64_t)4096 << 20), mel_set_workspace_limit(cpu, (int64_t)4096 << 20);
        mel_status s1 = mel_plan_call(dev, t, a, MEL_MODE_FORWARD_BACKWARD, &pd);
        if (s1) diag("device-like: %s", mel_last_error(dev));
        mel_status s2 = mel_plan_call(cpu, t, a, MEL_MODE_FORWARD_BACKWARD, &pc);
        if (s2) diag("cpu: %s", mel_last_error(cpu));
        ok(!s1 && !s2 && pd.row_skipping == 0 && pd.active_rows == BN &&
               pd.chunks == (BN + pd.chunk_rows - 1) / pd.chunk_rows && pc.row_skipping == 1 &&
               pc.active_rows == BN - BN / 10,
           "bench_cuda's step planned without the gather: %lld chunks of %lld rows, skipping off (runs of 9 rows "
           "would be %d chunks); the CPU, which gathers, skips: %lld active rows in %lld chunks",
           (long long)pd.chunks, (long long)pd.chunk_rows, (BN - BN / 10 + 8) / 9, (long long)pc.active_rows,
           (long long)pc.chunks);
        mel_set_workspace_limit(dev, 0), mel_set_workspace_limit(cpu, 0);
        mel_args_free(a);
    }

    mel_transform_free(t);
    mel_ctx_destroy(dev);
    mel_ctx_destroy(cpu);
    return done_testing();
}
