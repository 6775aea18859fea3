/* The engine's contract: bad input gets a status and a message naming the
 * argument and value; inputs are never modified; the workspace budget is
 * respected; results do not depend on the chunk size beyond round-off and
 * are bitwise reproducible; accumulation flags; degenerate cases. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

static int has(const char *msg, const char *needle) { return msg && strstr(msg, needle) != NULL; }

#define EXPECT(call, status, needle)                                                            \
    do {                                                                                       \
        mel_status s_ = (call);                                                                \
        ok(s_ == (status) && has(mel_last_error(ctx), needle), "%s -> %s, message has \"%s\"", \
           #call, #status, needle);                                                            \
        if (s_ != (status) || !has(mel_last_error(ctx), needle))                               \
            diag("got %d: %s", (int)s_, mel_last_error(ctx));                                 \
    } while (0)

enum { N = 13, D = 5, V = 11 };
static double X[N * D], W[V * D], Y[N + 1], DX[N * D], DW[V * D], DB[V];
static int64_t LAB[N];

static mel_args *base_args(void)
{
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    mel_args_output(a, Y, MEL_F64);
    return a;
}

static uint64_t checksum(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static void test_errors(mel_ctx *ctx, mel_transform *ce)
{
    mel_args *a = base_args();
    /* NULLs */
    ok(mel_forward(NULL, ce, a) == MEL_ERR_INVALID_ARGUMENT, "NULL ctx -> MEL_ERR_INVALID_ARGUMENT");
    EXPECT(mel_forward(ctx, NULL, a), MEL_ERR_INVALID_ARGUMENT, "transform is NULL");
    EXPECT(mel_forward(ctx, ce, NULL), MEL_ERR_INVALID_ARGUMENT, "args is NULL");
    /* labels out of range: names the element, the value and the range */
    LAB[7] = 130000;
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "labels[7] = 130000 is outside [0, 11)");
    LAB[7] = -5;
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "labels[7] = -5 is outside [0, 11)");
    LAB[7] = 3;
    /* shapes */
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D - 1, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_SHAPE, "D differs");
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, D - 1), mel_mat(W, MEL_F64, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_SHAPE, "ld = 4 is smaller than cols = 5");
    mel_args_head(a, 0, mel_mat(NULL, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "x of head 0: data is NULL");
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F32, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "x is f64 but w is f32");
    mel_args_head(a, 0, mel_mat(X, MEL_BF16, N, D, 0), mel_mat(W, MEL_F16, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "x is bf16 but w is f16");
    mel_args_head(a, 0, mel_mat(X, MEL_I32, N, D, 0), mel_mat(W, MEL_I32, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "is not a float dtype");
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_head(a, 1, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "head 1 is bound but transform 'ce' reads no head 1");
    mel_args_free(a);
    a = base_args();
    /* inputs */
    mel_args_index(a, "labels", LAB, MEL_I64, N - 1);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_SHAPE, "input 'labels' has 12 values but x has 13 rows");
    mel_args_index(a, "labels", LAB, MEL_F32, N);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "index 'labels': dtype f32 is not i32 or i64");
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    mel_args_index(a, "label", LAB, MEL_I64, N);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "index 'label' is bound but is not an index input");
    mel_args_free(a);
    a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "input 'labels' of transform 'ce' is not bound");
    mel_args_free(a);
    a = base_args();
    mel_args_input(a, "advantages", LAB, MEL_F64, N);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "input 'advantages' is bound but is not a scalar input");
    mel_args_free(a);
    a = base_args();
    /* reductions, outputs */
    mel_args_reduction(a, MEL_REDUCE_WEIGHTED, NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "needs weights");
    mel_args_reduction(a, (mel_reduction)9, NULL);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "reduction = 9 is not a mel_reduction");
    mel_args_reduction(a, MEL_REDUCE_MEAN, NULL);
    mel_args_output(a, Y, MEL_I32);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "output y: dtype i32 is not f32 or f64");
    mel_args_output(a, Y, MEL_F64);
    mel_args_aux(a, "kl", Y, MEL_F64);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "aux output 'kl' is not an output of transform 'ce'");
    mel_args_free(a);
    a = base_args();
    /* gradients */
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D + 1, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL, 0);
    EXPECT(mel_forward_backward(ctx, ce, a), MEL_ERR_SHAPE, "dx of head 0 is [13, 6] (ld 6); want [13, 5]");
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F32, V, D, 0), NULL, 0);
    EXPECT(mel_forward_backward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "dw of head 0 is f32; want f64");
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F64, V, D, 0), DB, 0);
    EXPECT(mel_forward_backward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "db of head 0 requested but head 0 has no bias");
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL, 0);
    mel_args_grad_head(a, 1, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL, 0);
    EXPECT(mel_forward_backward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "head 1 is not a differentiable head");
    mel_args_free(a);
    a = base_args();
    mel_args_grad_input(a, "labels", DB, MEL_F64);
    EXPECT(mel_forward_backward(ctx, ce, a), MEL_ERR_INVALID_ARGUMENT, "gradient of input 'labels' requested");
    mel_args_free(a);
    /* context settings */
    EXPECT(mel_set_chunk_rows(ctx, -3), MEL_ERR_INVALID_ARGUMENT, "chunk_rows = -3 is negative");
    EXPECT(mel_set_threads(ctx, -1), MEL_ERR_INVALID_ARGUMENT, "n = -1 is outside [0, 4096]");
    EXPECT(mel_set_workspace_limit(ctx, -1), MEL_ERR_INVALID_ARGUMENT, "bytes = -1 is negative");
    a = base_args();
    mel_set_workspace_limit(ctx, 100);
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_BUDGET, "workspace limit 100 bytes is below 1 row");
    mel_set_workspace_limit(ctx, 0);
    mel_args_free(a);
    /* built-ins */
    mel_transform *t = NULL;
    mel_params *p = mel_params_new();
    EXPECT(mel_transform_builtin(ctx, "cross_entropy", NULL, &t), MEL_ERR_INVALID_ARGUMENT,
           "unknown transform 'cross_entropy' (built-ins: ce,");
    mel_params_set(p, "label_smothing", 0.1);
    EXPECT(mel_transform_builtin(ctx, "ce", p, &t), MEL_ERR_INVALID_ARGUMENT,
           "transform 'ce' has no parameter 'label_smothing'");
    mel_params_free(p);
    p = mel_params_new();
    mel_params_set(p, "label_smoothing", 1.5);
    EXPECT(mel_transform_builtin(ctx, "ce", p, &t), MEL_ERR_INVALID_ARGUMENT,
           "parameter label_smoothing = 1.5 is outside [0, 1]");
    mel_params_set(p, "label_smoothing", NAN);
    EXPECT(mel_transform_builtin(ctx, "ce", p, &t), MEL_ERR_INVALID_ARGUMENT, "parameter label_smoothing = nan");
    mel_params_free(p);
    p = mel_params_new();
    mel_params_set(p, "ignore_index", 0.5);
    EXPECT(mel_transform_builtin(ctx, "ce", p, &t), MEL_ERR_INVALID_ARGUMENT, "or not an integer");
    mel_params_free(p);
    p = mel_params_new();
    mel_params_set(p, "ignore_index", -1);
    EXPECT(mel_transform_builtin(ctx, "entropy", p, &t), MEL_ERR_INVALID_ARGUMENT,
           "transform 'entropy' reads no labels: parameter ignore_index does not apply");
    mel_params_free(p);
    ok(t == NULL, "failed builds leave *out NULL");
    /* graphs */
    mel_graph *g = mel_graph_new();
    mel_val z = mel_g_logits(g, 0, 1);
    ok(mel_g_set_output(g, z) == MEL_ERR_GRAPH, "a vector output is rejected");
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "the per-row output must be a scalar");
    mel_graph_free(g);
    g = mel_graph_new();
    mel_g_logits(g, 0, 1);
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "no output");
    mel_graph_free(g);
    g = mel_graph_new();
    z = mel_g_logits(g, 0, 1);
    mel_val l = mel_g_index(g, "labels", -100);
    mel_g_set_output(g, mel_g_add(g, mel_g_sum(g, z), l));
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "an operand is an index");
    mel_graph_free(g);
    g = mel_graph_new();
    z = mel_g_logits(g, 0, 1);
    mel_g_set_output(g, mel_g_sum(g, z));
    mel_g_set_count(g, mel_g_rmax(g, z));
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "the count (node");
    mel_graph_free(g);
    g = mel_graph_new();
    mel_g_set_output(g, mel_g_sum(g, 12345));
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "value 12345 is not a node");
    mel_graph_free(g);
    g = mel_graph_new();
    mel_g_set_output(g, mel_g_const(g, 1));
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "reads no logits");
    mel_graph_free(g);
    g = mel_graph_new();
    mel_g_logits(g, 7, 1);
    EXPECT(mel_graph_compile(ctx, g, "bad", &t), MEL_ERR_GRAPH, "head = 7 is outside [0, 4)");
    mel_graph_free(g);
    ok(t == NULL, "failed compiles leave *out NULL");
    /* backends */
    mel_ctx *c2 = NULL;
    mel_status s = mel_ctx_create(MEL_BACKEND_CUDA, &c2);
#ifndef HAVE_CUDA
    ok(s == MEL_ERR_UNSUPPORTED && c2 == NULL && has(mel_ctx_create_error(), "built without CUDA"),
       "CUDA context without CUDA -> MEL_ERR_UNSUPPORTED: %s", mel_ctx_create_error());
#endif
    mel_ctx_destroy(c2);
    s = mel_ctx_create((mel_backend)5, &c2);
    ok(s == MEL_ERR_INVALID_ARGUMENT && has(mel_ctx_create_error(), "backend = 5"), "unknown backend: %s",
       mel_ctx_create_error());
    /* streams and caller-memory helpers on the CPU backend */
    EXPECT(mel_set_cuda_stream(ctx, NULL), MEL_ERR_UNSUPPORTED, "cpu backend has no CUDA streams");
    {
        unsigned char src[100], back[100];
        for (int i = 0; i < 100; i++) src[i] = (unsigned char)(i * 7 + 3);
        memset(back, 0, sizeof back);
        void *buf = NULL;
        const int64_t held0 = mel_ctx_held_bytes(ctx);
        s = mel_alloc(ctx, sizeof src, &buf);
        ok(s == MEL_OK && buf, "mel_alloc on the cpu backend");
        s = mel_to_device(ctx, buf, src, sizeof src);
        mel_status s2 = mel_to_host(ctx, back, buf, sizeof back);
        ok(s == MEL_OK && s2 == MEL_OK && !memcmp(src, back, sizeof src),
           "mel_to_device / mel_to_host round trip is exact");
        EXPECT(mel_alloc(ctx, 8, NULL), MEL_ERR_INVALID_ARGUMENT, "mel_alloc: out is NULL");
        EXPECT(mel_to_device(ctx, NULL, src, 8), MEL_ERR_INVALID_ARGUMENT, "mel_to_device: dst is NULL");
        EXPECT(mel_to_device(ctx, buf, NULL, 8), MEL_ERR_INVALID_ARGUMENT, "mel_to_device: src is NULL");
        EXPECT(mel_to_host(ctx, NULL, buf, 8), MEL_ERR_INVALID_ARGUMENT, "mel_to_host: dst is NULL");
        EXPECT(mel_to_host(ctx, back, NULL, 8), MEL_ERR_INVALID_ARGUMENT, "mel_to_host: src is NULL");
        ok(mel_to_host(ctx, NULL, NULL, 0) == MEL_OK, "a copy of 0 bytes accepts NULL");
        ok(mel_ctx_held_bytes(ctx) == held0, "mel_alloc is not counted as workspace");
        mel_free(ctx, buf);
        mel_free(ctx, NULL);
        ok(mel_alloc(NULL, 8, &buf) == MEL_ERR_INVALID_ARGUMENT && mel_to_device(NULL, back, src, 8) ==
           MEL_ERR_INVALID_ARGUMENT, "a NULL context is MEL_ERR_INVALID_ARGUMENT");
    }
    mel_ctx_destroy(NULL);
    mel_transform_free(NULL);
    mel_args_free(NULL);
    mel_graph_free(NULL);
    mel_params_free(NULL);
    ok(1, "destroy functions accept NULL");
    ok(mel_version() == MEL_VERSION_NUMBER, "mel_version() %d matches the header %d", mel_version(),
       MEL_VERSION_NUMBER);
    ok(strstr(mel_status_str(MEL_ERR_SHAPE), "MEL_ERR_SHAPE") && mel_status_str((mel_status)99),
       "mel_status_str names the status and handles unknown values");
}

/* CE on a larger problem for the budget / invariance / determinism tests */
enum { BN = 300, BD = 24, BV = 1001 };

static void run_ce(mel_ctx *ctx, mel_transform *ce, const float *x, const float *w, const int64_t *lab,
                   float *y, float *dx, float *dw)
{
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat((void *)x, MEL_F32, BN, BD, 0), mel_mat((void *)w, MEL_F32, BV, BD, 0), NULL);
    mel_args_index(a, "labels", lab, MEL_I64, BN);
    mel_args_output(a, y, MEL_F32);
    mel_args_grad_head(a, 0, mel_mat(dx, MEL_F32, BN, BD, 0), mel_mat(dw, MEL_F32, BV, BD, 0), NULL,
                       MEL_OVERWRITE_DW);
    mel_status s = mel_forward_backward(ctx, ce, a);
    if (s) diag("run_ce: %s", mel_last_error(ctx));
    mel_args_free(a);
}

static double maxdiff(const float *a, const float *b, int64_t n)
{
    double m = 0, s = 0;
    for (int64_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i])), s = fmax(s, fabs((double)b[i]));
    return m / (s > 0 ? s : 1);
}

static void test_budget_invariance(mel_ctx *ctx, mel_transform *ce, tap_rng *rng)
{
    float *x = malloc(BN * BD * 4), *w = malloc(BV * BD * 4);
    int64_t *lab = malloc(BN * 8);
    for (int i = 0; i < BN * BD; i++) x[i] = (float)rng_normal(rng);
    for (int i = 0; i < BV * BD; i++) w[i] = (float)(rng_normal(rng) * 0.3);
    for (int i = 0; i < BN; i++) lab[i] = i % 7 == 0 ? -100 : rng_int(rng, BV);
    uint64_t hx = checksum(x, BN * BD * 4), hw = checksum(w, BV * BD * 4), hl = checksum(lab, BN * 8);
    float y0, dx0[BN * BD], *dw0 = malloc(BV * BD * 4);
    float y1, dx1[BN * BD], *dw1 = malloc(BV * BD * 4);
    /* every row through the GEMMs, so the workspace figures below are those
     * of N rows (row skipping has its own tests in t/skip.c) */
    mel_set_row_skipping(ctx, 0);
    mel_set_chunk_rows(ctx, BN); /* one chunk: the naive path */
    mel_set_workspace_limit(ctx, (int64_t)1 << 30);
    run_ce(ctx, ce, x, w, lab, &y0, dx0, dw0);
    ok(checksum(x, BN * BD * 4) == hx && checksum(w, BV * BD * 4) == hw && checksum(lab, BN * 8) == hl,
       "inputs are not modified");
    mel_set_chunk_rows(ctx, 0);
    int64_t budgets[] = {64 << 10, 200 << 10, 1 << 20, 3 << 20, (int64_t)1 << 30};
    for (int k = 0; k < 5; k++) {
        mel_set_workspace_limit(ctx, budgets[k]);
        run_ce(ctx, ce, x, w, lab, &y1, dx1, dw1);
        mel_stats st;
        mel_get_stats(ctx, &st);
        ok(st.peak_workspace_bytes <= budgets[k] && st.chunk_rows >= 1,
           "budget %lld B: peak workspace %lld B, %lld rows per chunk, %lld chunks", (long long)budgets[k],
           (long long)st.peak_workspace_bytes, (long long)st.chunk_rows, (long long)st.chunks);
        double e = fmax(fabs(y1 - y0) / fabs(y0), fmax(maxdiff(dx1, dx0, BN * BD), maxdiff(dw1, dw0, BV * BD)));
        ok(e < 2e-6, "budget %lld B: same result as one chunk within fp32 round-off (rel %.2e)",
           (long long)budgets[k], e);
    }
    ok(mel_ctx_held_bytes(ctx) >= (int64_t)1227696, "the context keeps its largest workspace (%lld B)",
       (long long)mel_ctx_held_bytes(ctx));
    mel_ctx_trim(ctx);
    ok(mel_ctx_held_bytes(ctx) == 0, "mel_ctx_trim releases it");
    mel_set_row_skipping(ctx, 1); /* the fixed chunk sizes below skip the ignored rows */
    mel_set_workspace_limit(ctx, 0);
    int64_t chunks[] = {1, 7, 64, 299, 301};
    for (int k = 0; k < 5; k++) {
        mel_set_chunk_rows(ctx, chunks[k]);
        run_ce(ctx, ce, x, w, lab, &y1, dx1, dw1);
        double e = fmax(fabs(y1 - y0) / fabs(y0), fmax(maxdiff(dx1, dx0, BN * BD), maxdiff(dw1, dw0, BV * BD)));
        ok(e < 2e-6, "chunk_rows %lld: same result as one chunk within fp32 round-off (rel %.2e)",
           (long long)chunks[k], e);
    }
    /* determinism: same inputs, threads and chunk size -> identical bits */
    mel_set_chunk_rows(ctx, 37);
    run_ce(ctx, ce, x, w, lab, &y0, dx0, dw0);
    int same = 1;
    for (int rep = 0; rep < 3; rep++) {
        run_ce(ctx, ce, x, w, lab, &y1, dx1, dw1);
        same &= memcmp(&y0, &y1, 4) == 0 && memcmp(dx0, dx1, sizeof dx0) == 0 &&
                memcmp(dw0, dw1, BV * BD * 4) == 0;
    }
    ok(same, "repeated calls are bitwise identical (chunk 37, %d threads)", mel_get_threads(ctx));
    mel_set_chunk_rows(ctx, 0);
    free(x), free(w), free(lab), free(dw0), free(dw1);
}

static void test_accumulate_and_degenerate(mel_ctx *ctx, mel_transform *ce, tap_rng *rng)
{
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(rng);
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(rng);
    for (int i = 0; i < N; i++) LAB[i] = rng_int(rng, V);
    double dx1[N * D], dw1[V * D], y;
    mel_args *a = base_args();
    mel_args_output(a, &y, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(dx1, MEL_F64, N, D, 0), mel_mat(dw1, MEL_F64, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    mel_forward_backward(ctx, ce, a);
    /* twice with accumulation = 2x once */
    for (int i = 0; i < N * D; i++) DX[i] = 0;
    for (int i = 0; i < V * D; i++) DW[i] = 0;
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL,
                       MEL_ACCUMULATE_DX);
    mel_forward_backward(ctx, ce, a);
    mel_forward_backward(ctx, ce, a);
    double e = 0;
    for (int i = 0; i < N * D; i++) e = fmax(e, fabs(DX[i] - 2 * dx1[i]));
    for (int i = 0; i < V * D; i++) e = fmax(e, fabs(DW[i] - 2 * dw1[i]));
    ok(e < 1e-14, "MEL_ACCUMULATE_DX and dW accumulation: two calls = 2 x one call (err %.1e)", e);
    /* every row ignored: mean is 0, not NaN, and the gradient is 0 */
    for (int i = 0; i < N; i++) LAB[i] = -100;
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    mel_status s = mel_forward_backward(ctx, ce, a);
    double m = 0;
    for (int i = 0; i < N * D; i++) m = fmax(m, fabs(DX[i]));
    for (int i = 0; i < V * D; i++) m = fmax(m, fabs(DW[i]));
    ok(s == MEL_OK && y == 0 && m == 0, "all rows ignored: mean = %g, max |grad| = %g", y, m);
    /* extreme logits (|z| ~ 1e4): finite loss and gradients, matching the reference */
    for (int i = 0; i < N; i++) LAB[i] = rng_int(rng, V);
    for (int i = 0; i < N * D; i++) X[i] *= 3000;
    s = mel_forward_backward(ctx, ce, a);
    double Z[N * V], yr[N], G[N * V], sc[N], rdx[N * D], rdw[V * D];
    ref_ce_opts o;
    ref_ce_defaults(&o);
    ref_logits(N, D, V, X, W, NULL, Z);
    ref_ce(N, V, Z, LAB, &o, yr, G);
    double want = 0, zmax = 0;
    for (int i = 0; i < N; i++) want += yr[i] / N, sc[i] = 1.0 / N;
    for (int i = 0; i < N * V; i++) zmax = fmax(zmax, fabs(Z[i]));
    ref_backprop(N, D, V, X, W, G, sc, rdx, rdw, NULL);
    int finite = isfinite(y);
    for (int i = 0; i < N * D; i++) finite &= isfinite(DX[i]);
    double ex = ref_relerr(DX, rdx, N * D, 1e-300);
    ok(s == MEL_OK && finite && fabs(y - want) <= 1e-12 * fabs(want) && ex < 1e-10,
       "extreme logits (max |z| = %.0f): loss %.6g vs %.6g, dX rel err %.1e, all finite", zmax, y, want, ex);
    /* N = 0: reductions give 0 */
    mel_args_head(a, 0, mel_mat(X, MEL_F64, 0, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_index(a, "labels", LAB, MEL_I64, 0);
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, 0, D, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    y = 99;
    s = mel_forward_backward(ctx, ce, a);
    ok(s == MEL_OK && y == 0, "N = 0: mean = %g, status %d", y, (int)s);
    mel_args_free(a);
}

/* NaN / Inf: propagate like the naive computation; or, with
 * mel_set_check_finite, fail naming the first bad element */
static void test_nonfinite(mel_ctx *ctx, mel_transform *ce, tap_rng *rng)
{
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(rng);
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(rng);
    for (int i = 0; i < N; i++) LAB[i] = rng_int(rng, V);
    double y[N], dx[N * D], dw[V * D];
    X[3 * D + 2] = NAN;
    mel_args *a = base_args();
    mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
    mel_args_output(a, y, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(dx, MEL_F64, N, D, 0), mel_mat(dw, MEL_F64, V, D, 0), NULL, MEL_OVERWRITE_DW);
    mel_status s = mel_forward_backward(ctx, ce, a);
    int others = 1;
    for (int i = 0; i < N; i++)
        if (i != 3) others &= isfinite(y[i]);
    int dxrow = 1;
    for (int i = 0; i < N * D; i++)
        if (i / D != 3) dxrow &= isfinite(dx[i]);
    ok(s == MEL_OK && isnan(y[3]) && others && dxrow && isnan(dx[3 * D]),
       "NaN in x row 3 propagates to y[3] and dX row 3 only (and into dW), as the naive path");
    mel_set_check_finite(ctx, 1);
    EXPECT(mel_forward_backward(ctx, ce, a), MEL_ERR_NONFINITE, "x of head 0: [3, 2] = nan");
    X[3 * D + 2] = 0.5;
    W[4 * D + 1] = -INFINITY;
    EXPECT(mel_forward(ctx, ce, a), MEL_ERR_NONFINITE, "w of head 0: [4, 1] = -inf");
    W[4 * D + 1] = 0.5;
    ok(mel_forward(ctx, ce, a) == MEL_OK, "finite inputs pass the check");
    mel_set_check_finite(ctx, 0);
    mel_args_free(a);
    /* a per-row input */
    mel_graph *g = mel_graph_new();
    mel_g_set_output(g, mel_g_mul(g, mel_g_logsumexp(g, mel_g_logits(g, 0, 1)), mel_g_input(g, "adv", 0)));
    mel_transform *t = NULL;
    mel_graph_compile(ctx, g, "lse_times_adv", &t);
    mel_graph_free(g);
    double adv[N];
    for (int i = 0; i < N; i++) adv[i] = 1;
    adv[5] = INFINITY;
    a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_input(a, "adv", adv, MEL_F64, N);
    mel_args_output(a, y, MEL_F64);
    mel_set_check_finite(ctx, 1);
    EXPECT(mel_forward(ctx, t, a), MEL_ERR_NONFINITE, "adv[5] = inf");
    mel_set_check_finite(ctx, 0);
    mel_args_free(a);
    mel_transform_free(t);
}

/* The automatic budget's GEMM floor (doc/design.md, "The GEMM floor"): no
 * automatic chunk below R* = ceil(16 · s / (2g)) rows -- 43 for f32
 * training (s = 16, g = 3), 75 for bf16 storage (s = 28), 32 for an f32
 * forward pass (s = 4, g = 1) -- at most n / R* chunks of equal size; a
 * caller's limit or chunk_rows used as is.  Shapes only (mel_plan_call),
 * V = 131072: one row of logits is 512 KiB, so the 16 MiB floor alone
 * holds fewer than 32 rows. */
static void test_gemm_floor(mel_ctx *ctx, mel_transform *ce)
{
    enum { FN = 200, FD = 8, FV = 131072 };
    static int64_t lab[FN];
    static double y[FN], dx[FN * FD], dw[FV * FD]; /* gradients: bound, so the plan is the training one */
    struct {
        int64_t n, ignored, limit, chunk;
        mel_dtype dt;
        mel_mode mode;
        int64_t rows, chunks; /* expected */
        const char *why;
    } cs[] = {
        {64, 0, 0, 0, MEL_F32, MEL_MODE_FORWARD_BACKWARD, 64, 1, "f32, 64 < 2·43 rows: one chunk"},
        {85, 0, 0, 0, MEL_F32, MEL_MODE_FORWARD_BACKWARD, 85, 1, "f32, 85 < 2·43 rows: one chunk"},
        {86, 0, 0, 0, MEL_F32, MEL_MODE_FORWARD_BACKWARD, 43, 2, "f32, 86 rows: 2 chunks of 43"},
        {200, 0, 0, 0, MEL_F32, MEL_MODE_FORWARD_BACKWARD, 50, 4, "f32, 200 rows: 4 chunks of 50"},
        {200, 150, 0, 0, MEL_F32, MEL_MODE_FORWARD_BACKWARD, 50, 1, "f32, 50 active rows of 200: one chunk"},
        {64, 0, 0, 0, MEL_F64, MEL_MODE_FORWARD_BACKWARD, 64, 1, "f64, 64 rows: one chunk"},
        {149, 0, 0, 0, MEL_BF16, MEL_MODE_FORWARD_BACKWARD, 149, 1, "bf16, 149 < 2·75 rows: one chunk"},
        {150, 0, 0, 0, MEL_BF16, MEL_MODE_FORWARD_BACKWARD, 75, 2, "bf16, 150 rows: 2 chunks of 75"},
        {64, 0, 0, 0, MEL_F32, MEL_MODE_FORWARD, 32, 2, "f32 forward, 64 rows: 2 chunks of 32"},
        {64, 0, 16 << 20, 0, MEL_F32, MEL_MODE_FORWARD_BACKWARD, -1, -1,
         "f32, a caller's 16 MiB limit: kept; whole rows would be below R*, so vocabulary tiles"},
        {64, 0, 0, 16, MEL_F32, MEL_MODE_FORWARD_BACKWARD, 16, 4, "f32, chunk_rows 16: kept"},
    };
    for (size_t k = 0; k < sizeof cs / sizeof cs[0]; k++) {
        const int64_t n = cs[k].n;
        for (int64_t i = 0; i < n; i++) lab[i] = i < cs[k].ignored ? -100 : i % FV;
        mel_set_row_skipping(ctx, 1);
        mel_set_workspace_limit(ctx, cs[k].limit);
        mel_set_chunk_rows(ctx, cs[k].chunk);
        const mel_dtype gt = cs[k].dt == MEL_BF16 ? MEL_F32 : cs[k].dt;
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(NULL, cs[k].dt, n, FD, 0), mel_mat(NULL, cs[k].dt, FV, FD, 0), NULL);
        mel_args_index(a, "labels", lab, MEL_I64, n);
        mel_args_output(a, y, MEL_F64);
        if (cs[k].mode != MEL_MODE_FORWARD)
            mel_args_grad_head(a, 0, mel_mat(dx, cs[k].dt, n, FD, 0), mel_mat(dw, gt, FV, FD, 0), NULL,
                               MEL_OVERWRITE_DW);
        mel_call_plan pl;
        mel_status s = mel_plan_call(ctx, ce, a, cs[k].mode, &pl);
        int good = s == MEL_OK;
        if (cs[k].rows > 0) good &= pl.chunks == cs[k].chunks && pl.chunk_rows == cs[k].rows;
        else good &= pl.chunks == 1 && pl.chunk_rows == n && mel_get_tile_cols(ctx) > 0 &&
                     pl.peak_workspace_bytes <= cs[k].limit;
        ok(good, "GEMM floor: %s (planned %lld rows × %lld chunks, %lld columns, %lld B)", cs[k].why,
           (long long)pl.chunk_rows, (long long)pl.chunks, (long long)mel_get_tile_cols(ctx),
           (long long)pl.peak_workspace_bytes);
        if (s) diag("plan: %s", mel_last_error(ctx));
        mel_args_free(a);
    }
    mel_set_workspace_limit(ctx, 0);
    mel_set_chunk_rows(ctx, 0);
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(42));
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return ok(0, "ctx"), done_testing();
    mel_transform *ce = NULL;
    if (mel_transform_builtin(ctx, "ce", NULL, &ce)) return ok(0, "ce: %s", mel_last_error(ctx)), done_testing();
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng);
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(&rng);
    for (int i = 0; i < N; i++) LAB[i] = rng_int(&rng, V);
    test_errors(ctx, ce);
    test_budget_invariance(ctx, ce, &rng);
    test_accumulate_and_degenerate(ctx, ce, &rng);
    test_nonfinite(ctx, ce, &rng);
    test_gemm_floor(ctx, ce);
    mel_transform_free(ce);
    mel_ctx_destroy(ctx);
    return done_testing();
}
