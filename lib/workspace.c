/* The workspace of a pass: the byte budget (the caller's, or automatic),
 * the GEMM floor R*, rows per chunk, and the buffers of one chunk (sized
 * by eng_layout, carved by eng_acquire from the context's allocator, which
 * records the peak). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"


static int64_t row_doubles(const mel_transform *t) { return 3 + t->n_aux + t->n_inputs; }

row_bufs eng_row_layout(const mel_transform *t, double *base, int64_t R)
{
    row_bufs b;
    memset(&b, 0, sizeof b);
    b.y = base;
    b.count = base + R;
    b.seed = base + 2 * R;
    for (int k = 0; k < t->n_aux; k++) b.aux[k] = base + (3 + k) * R;
    for (int k = 0; k < t->n_inputs; k++) b.ginp[k] = base + (3 + t->n_aux + k) * R;
    return b;
}

/* Bytes per row besides the logits: scalar and index registers and the
 * row buffer. */
static int64_t row_bytes(const mel_transform *t, size_t es)
{
    return (int64_t)t->n * ((int64_t)es + 8) + 8 * row_doubles(t);
}

void eng_size_call(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                      sizing *sz)
{
    sz->threads = ctx->ops->threads(ctx);
    sz->heads = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++) sz->heads += c->used[h];
    /* slots, then the vector pointers (backends/backend.h) */
    sz->scratch_per_thread = mel_scratch_bytes(p->n_slots, t->n, c->V, c->es);
    sz->fixed = sz->scratch_per_thread * sz->threads;
    /* per row: Z of each head, scalar and index registers, and doubles for
     * y, count, seed, aux, input grads */
    sz->per_row = (int64_t)sz->heads * c->V * (int64_t)c->es + row_bytes(t, c->es);
    sz->conv_fixed = sz->conv_per_row = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        if (!c->used[h]) continue;
        int64_t f0 = mel_gemm_conv_bytes(ctx, c->st, 0, c->D[h], c->V);
        int64_t f1 = mel_gemm_conv_bytes(ctx, c->st, 1, c->D[h], c->V) - f0;
        if (f0 > sz->conv_fixed) sz->conv_fixed = f0;
        if (f1 > sz->conv_per_row) sz->conv_per_row = f1;
    }
    sz->fixed += sz->conv_fixed;
    sz->per_row += sz->conv_per_row;
    sz->gather_per_row = 0;
    sz->merge_per_row = 0;
}

/* Skipping inactive rows on a host backend: each chunk's active rows are
 * gathered (X of every head, dX of heads whose dX is accumulated or
 * written, the per-row inputs) into buffers of R rows. */
void eng_size_gather(const mel_transform *t, const call *c, int fb, const mel_args *a, sizing *sz)
{
    const int64_t ses = (int64_t)mel_dtype_size(c->st);
    int64_t g = 8 * (int64_t)t->n_inputs;
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        if (!c->used[h]) continue;
        g += c->D[h] * ses;
        if (fb && c->want_dz[h] && a->head[h].dx.data) g += c->D[h] * ses;
    }
    sz->gather_per_row = g;
    sz->per_row += g;
}


void eng_release(mel_ctx *ctx, run *w)
{
    for (int h = 0; h < MEL_MAX_HEADS; h++) mel_ws_free(ctx, w->Z[h], w->bytes_Z);
    mel_ws_free(ctx, w->scratch, w->bytes_scratch);
    mel_ws_free(ctx, w->rowbuf, w->bytes_rows);
    mel_ws_free(ctx, w->regs, w->bytes_regs);
    mel_ws_free(ctx, w->iregs, w->bytes_iregs);
    mel_ws_free(ctx, w->conv, w->bytes_conv);
    mel_ws_free(ctx, w->gather, w->bytes_gather);
    mel_ws_free(ctx, w->merge, w->bytes_merge);
    mel_ws_free(ctx, w->comm, w->bytes_comm);
    mel_ws_free(ctx, w->dxtmp, w->bytes_dxtmp);
    if (w->hrow != w->rowbuf) free(w->hrow);
    eng_chunk_layout_free(&w->lay);
    memset(w, 0, sizeof *w);
}

/* The upper bound of the automatic budget: the backend's (CUDA: half the
 * free device memory), else MEL_DEFAULT_WORKSPACE. */
static int64_t budget_upper(mel_ctx *ctx)
{
    int64_t upper = ctx->ops->device_budget ? ctx->ops->device_budget(ctx) : 0;
    return upper > 0 ? upper : MEL_DEFAULT_WORKSPACE;
}

/* The workspace budget in bytes: the caller's (mel_set_workspace_limit), or
 * automatic: 1/10 of the one-chunk workspace, clamped. */
static int64_t budget(mel_ctx *ctx, const mel_transform *t, const call *c, const sizing *sz, int64_t per_row)
{
    int64_t limit = ctx->workspace_limit;
    if (limit > 0) return limit;
    double naive = (double)sz->fixed + (double)per_row * (double)c->N;
    limit = (int64_t)(naive / 10);
    if (limit < MEL_DEFAULT_WORKSPACE_MIN) limit = MEL_DEFAULT_WORKSPACE_MIN;
    const int64_t upper = budget_upper(ctx);
    if (limit > upper) limit = upper;
    /* and never so small that it cannot hold the fixed part and 32 rows
     * (e.g. a device running hundreds of rows at once) */
    int64_t rows = c->n_eff < 32 ? (c->n_eff > 0 ? c->n_eff : 1) : 32;
    if (c->min_rows > rows) rows = c->min_rows; /* one group */
    int64_t floor_bytes = sz->fixed + rows * per_row;
    if (limit < floor_bytes) limit = floor_bytes;
    return limit;
}

/* Streaming W and dW against the logits a chunk saves.
 *
 * Whatever its rows R, a chunk's GEMMs stream all of W (V·D: read by the
 * logits GEMM and again by the dX GEMM) and dW (V·D: read and written by
 * the dW GEMM): s·V·D bytes per chunk, s = 2·(storage bytes) + 2·(compute
 * bytes), 16 in f32; with 16-bit storage each W GEMM also writes and
 * reads back the f32 copy of W it widens (lib/gemm.c), 2·(compute bytes)
 * more each, s = 28.  They do 2·g·R·V·D flops (g = 3 GEMMs; a forward
 * pass: 1 GEMM over W once, s = 4 in f32, 10 in bf16), and their logits
 * take R·V·es bytes -- the memory a smaller chunk saves.  Below
 *
 *     R* = balance · s / (2·g)          (balance: flops per byte of memory)
 *
 * rows the GEMMs of a chunk are bound by the pass over W and dW, not by
 * arithmetic: each further chunk then costs about as much as its whole
 * computation, for logits of R·V, a fraction R/D of W's V·D.  R* depends
 * on neither V nor D.  On the CPU machine of doc/benchmarks.md a chunk's
 * pass over W and dW (4·V·D·4 bytes in f32) took 0.25 s at V = 128256,
 * D = 2048 (16.8 GB/s) against 6.2 ms of GEMMs per row (254 GFLOP/s):
 * 15 flops per byte, R* = 40 rows.  MEL_GEMM_BALANCE rounds that to 16,
 * also the f32 rate of current GPUs over their memory bandwidth (H200:
 * 67 TFLOP/s over 4.8 TB/s = 14).  f64 GEMMs run at half the f32 rate,
 * so their balance is halved.  R*: f32 / f64 training 43 rows, bf16 /
 * f16 storage 75 (2 chunks of 32 rows took 1.35× one chunk of 64 there),
 * a forward pass 32 (f32) or 80 (16-bit). */
#define MEL_GEMM_BALANCE 16.0

int64_t eng_gemm_bound_rows(const mel_plan *p, const call *c)
{
    const double st = (double)mel_dtype_size(c->st), ct = (double)c->es;
    const double wide = st == 2 ? 2 * ct : 0; /* 16-bit: the widened copy of W, per W GEMM */
    const int fb = p->kind == MEL_PLAN_FB;
    const double s = fb ? 2 * (st + wide) + 2 * ct : st + wide, g = fb ? 3 : 1;
    return (int64_t)ceil(MEL_GEMM_BALANCE * (4 / ct) * s / (2 * g));
}

/* The balance the executor choice prices chunks with: twice the R*
 * balance.  Measured (CE f32, N = 4096, D = 1024, V = 32768, 2 threads, the
 * AMD EPYC of doc/benchmarks.md, quiet, 3 runs each): whole rows of 59
 * rows (8 MiB) took 6.88 s against 6.48 s for tiles of 1888 × 1024, and
 * 96 rows (16 MiB) 5.42 s against 5.99 s for tiles of 1952 × 2048, so
 * the crossover lies between 59 and 96 rows, i.e. a balance of 30–48
 * flops per byte in this model (rows cost 3/min(B, 0.375·R) against 4/B),
 * where 16 would put it at 43. */
#define MEL_EXECUTOR_BALANCE (2 * MEL_GEMM_BALANCE)

double eng_gemm_cost(int64_t R, int64_t cols, size_t es, int gemms)
{
    /* g GEMMs of 2·R·cols·D flops each move about (g + 1)·(R + cols)·D
     * values of es bytes: each reads its W side (cols·D: W, or dW read and
     * written) and its X side (R·D: X, or dX written).  For whole rows of a
     * large V that is the s·V·D of the R* comment above (s = 16 in f32). */
    const double g = gemms;
    const double q = 2 * g * (double)R * (double)cols / ((g + 1) * (double)(R + cols) * (double)es);
    const double balance = MEL_EXECUTOR_BALANCE * 4 / (double)es;
    return g / (q < balance ? q : balance);
}

/* The fewest rows of an automatic chunk with logits: no chunk below R*
 * rows (eng_gemm_bound_rows), i.e. at most n_eff / R* chunks of equal size,
 * and one chunk when fewer than 2·R* rows; within the budget's upper
 * bound (MEL_DEFAULT_WORKSPACE, CUDA: half the free device memory). */
static int64_t gemm_floor_rows(mel_ctx *ctx, const mel_plan *p, const call *c,
                               const sizing *sz, int64_t per_row)
{
    const int64_t n = c->n_eff, rmin = eng_gemm_bound_rows(p, c);
    int64_t rows = n;
    if (n >= rmin) {
        const int64_t k = n / rmin;
        rows = (n + k - 1) / k;
    }
    const int64_t fit = (budget_upper(ctx) - sz->fixed) / (per_row > 0 ? per_row : 1);
    return rows < fit ? rows : fit;
}

/* Rows per chunk: the caller's (mel_set_chunk_rows) or as many as the
 * budget holds; whole segments, at most N, at least 1.  The automatic
 * budget (no caller's limit) also keeps chunks with logits at R* rows or
 * more (gemm_floor_rows). */
static mel_status pick_rows(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                            const sizing *sz, int need_Z, int64_t *out)
{
    const int64_t per_row = need_Z ? sz->per_row : row_bytes(t, c->es);
    int64_t R = ctx->chunk_rows;
    if (R <= 0) {
        const int64_t limit = budget(ctx, t, c, sz, per_row);
        int64_t avail = limit - sz->fixed;
        /* the widest run of rows between two cuts: a chunk's fewest rows
         * (one group, lib/layout.c; 1 without a layout or rows) */
        int64_t min_rows = c->min_rows > 0 ? c->min_rows : 1, need;
        if (!mel_mul_ok(per_row, min_rows, &need) || avail < need)
            return mel_fail(ctx, MEL_ERR_BUDGET,
                            "workspace limit %lld bytes is below %lld row%s%s: %lld fixed (%d threads × "
                            "%d vectors of V = %lld) + %lld per row",
                            (long long)limit, (long long)min_rows, min_rows > 1 ? "s" : "",
                            min_rows > 1 ? " (the largest group of sequences)" : "", (long long)sz->fixed, sz->threads,
                            p->n_slots, (long long)c->V, (long long)per_row);
        R = avail / per_row;
        /* GEMM kernels work in blocks of rows: 252 rows ran 5% slower than
         * 224 or 256 (CE, D = 1024, V = 32768, OpenBLAS) */
        if (R >= 64 && !c->cuts && R < c->n_eff) R = R / 32 * 32;
        if (need_Z && ctx->workspace_limit <= 0) {
            const int64_t f = gemm_floor_rows(ctx, p, c, sz, per_row);
            if (R < f) R = f;
        }
    }
    /* automatic: at most the rows the chunks cover (the active rows when
     * skipping); a fixed chunk_rows keeps its meaning: R rows of workspace,
     * at most N */
    const int64_t cap = ctx->chunk_rows > 0 ? c->N : c->n_eff;
    if (R > cap) R = cap;
    /* chunks end at cuts (eng_chunk_end): whole groups, at least the largest */
    if (R < c->min_rows) R = c->min_rows;
    if (R < 1) R = 1;
    *out = R;
    return MEL_OK;
}

/* The rows per chunk and the byte size of every workspace buffer of a
 * pass (logits only when need_Z); nothing is allocated. */
mel_status eng_layout(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                         const sizing *sz, int need_Z, run *w)
{
    memset(w, 0, sizeof *w);
    int64_t R = 0;
    mel_status s = pick_rows(ctx, t, p, c, sz, need_Z, &R);
    /* vocabulary parallelism: every process runs the same chunks (the
     * collectives pair up), so all take the smallest R */
    if (ctx->vp) s = mel_vp_agree_rows(ctx, s, c->n_eff, &R);
    if (s) return s;
    w->R = R;
    int64_t bz;
    if (!mel_mul_ok(R, c->V, &bz) || !mel_mul_ok(bz, (int64_t)c->es, &bz))
        return mel_fail(ctx, MEL_ERR_OVERFLOW, "chunk of %lld rows × V = %lld overflows", (long long)R,
                        (long long)c->V);
    w->bytes_Z = (size_t)bz;
    w->bytes_scratch = (size_t)(sz->scratch_per_thread * sz->threads);
    w->bytes_rows = (size_t)(8 * R * row_doubles(t));
    w->bytes_regs = (size_t)(R * t->n) * c->es;
    w->bytes_iregs = (size_t)(R * t->n) * 8;
    w->bytes_conv = need_Z ? (size_t)(sz->conv_fixed + R * sz->conv_per_row) : 0;
    w->bytes_gather = need_Z ? (size_t)(R * sz->gather_per_row) : 0;
    w->bytes_merge = (size_t)(R * sz->merge_per_row);
    w->bytes_comm = (size_t)mel_vp_buffer_bytes(ctx, p, R);
    w->bytes_dxtmp = need_Z ? (size_t)(R * c->dx_tmp_cols) * c->es : 0;
    for (int h = 0; h < MEL_MAX_HEADS && need_Z; h++) w->n_Z += c->used[h];
    return MEL_OK;
}

/* The bytes a pass holds at once: what mel_stats.peak_workspace_bytes
 * counts for it (the allocator counts requested, not rounded, bytes). */
int64_t eng_run_bytes(const run *w)
{
    return (int64_t)(w->n_Z * w->bytes_Z + w->bytes_scratch + w->bytes_rows + w->bytes_regs +
                     w->bytes_iregs + w->bytes_conv + w->bytes_gather + w->bytes_comm + w->bytes_dxtmp +
                     w->bytes_merge);
}

/* Size and carve the workspace of one chunk (logits only when need_Z). */
mel_status eng_acquire(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                          const sizing *sz, int need_Z, run *w)
{
    mel_status s = eng_layout(ctx, t, p, c, sz, need_Z, w);
    if (s) return s;
    const int64_t R = w->R;
    size_t total = mel_ws_round(w->bytes_scratch) + mel_ws_round(w->bytes_rows) +
                   mel_ws_round(w->bytes_regs) + mel_ws_round(w->bytes_iregs) +
                   (w->bytes_conv ? mel_ws_round(w->bytes_conv) : 0) +
                   (w->bytes_gather ? mel_ws_round(w->bytes_gather) : 0) +
                   (w->bytes_merge ? mel_ws_round(w->bytes_merge) : 0) +
                   (w->bytes_comm ? mel_ws_round(w->bytes_comm) : 0) +
                   (w->bytes_dxtmp ? mel_ws_round(w->bytes_dxtmp) : 0);
    for (int h = 0; h < MEL_MAX_HEADS && need_Z; h++)
        if (c->used[h]) total += mel_ws_round(w->bytes_Z);
    if ((s = mel_ws_reserve(ctx, total))) return s;
    for (int h = 0; h < MEL_MAX_HEADS && need_Z; h++)
        if (c->used[h] && !(w->Z[h] = mel_ws_alloc(ctx, w->bytes_Z))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && !(w->scratch = mel_ws_alloc(ctx, w->bytes_scratch))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && !(w->rowbuf = mel_ws_alloc(ctx, w->bytes_rows))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && !(w->regs = mel_ws_alloc(ctx, w->bytes_regs))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && !(w->iregs = mel_ws_alloc(ctx, w->bytes_iregs))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_conv && !(w->conv = mel_ws_alloc(ctx, w->bytes_conv))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_merge && !(w->merge = mel_ws_alloc(ctx, w->bytes_merge))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_gather && !(w->gather = mel_ws_alloc(ctx, w->bytes_gather)))
        s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_comm && !(w->comm = mel_ws_alloc(ctx, w->bytes_comm))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_dxtmp && !(w->dxtmp = mel_ws_alloc(ctx, w->bytes_dxtmp))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK) {
        w->hrow = ctx->ops->host_memory ? w->rowbuf : malloc(w->bytes_rows);
        if (!w->hrow) s = MEL_ERR_OUT_OF_MEMORY;
    }
    if (s == MEL_OK && c->skey && eng_chunk_layout_alloc(ctx, c, R, &w->lay)) s = MEL_ERR_OUT_OF_MEMORY;
    if (s != MEL_OK) {
        eng_release(ctx, w);
        return mel_fail(ctx, s, "out of memory allocating the workspace for %lld rows × V = %lld",
                        (long long)R, (long long)c->V);
    }
    return MEL_OK;
}
