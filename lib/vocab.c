/* Vocabulary parallelism: W split by vocabulary rows across processes
 * (mel_set_vocab_parallel in mel.h; doc/distributed.md).
 *
 * Each process runs the row program on its own columns.  Elementwise work
 * is local; every vector -> scalar reduction ends a phase of the
 * vocabulary-parallel plan (lib/plan.c, vsplit), and the barrier that opens
 * the next phase combines the chunk's reductions of that phase across the
 * processes in one allgather (mel_vp_combine).  Combining in rank order on
 * every process gives every process the same values, and the same values on
 * every run with the same process count.  The autodiff's adjoint program is
 * a row program like any other, so its reductions are combined the same
 * way: no transform has a rule of its own.
 *
 * Partial values per reduction (this process's columns [v_off, v_off + V)):
 *   sum, mean    Σ_j a_j (mean: Σ_j a_j / v_total)      combined by Σ
 *   gather       a[idx − v_off] when idx is here, else 0 combined by Σ
 *   max          max_j a_j                               combined by max
 *   logsumexp    l_k = logsumexp_j a_j                    combined as
 *                M + log Σ_k exp(l_k − M), M = max_k l_k (exact, no overflow)
 *   argmaxmask   (value, column) of the shard's first maximum; the first
 *                process with a strictly larger value wins (the scan order
 *                of one process)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "comm.h"

struct mel_vp {
    mel_comm *comm;
    int64_t v_off, v_total;
    unsigned flags;
};


static double wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

mel_status mel_set_vocab_parallel(mel_ctx *ctx, const void *comm, int64_t v_offset, int64_t v_total,
                                  unsigned flags)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    if (!comm) {
        if (v_offset || v_total || flags)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "mel_set_vocab_parallel: comm is NULL (switching vocabulary parallelism off) but "
                            "v_offset = %lld, v_total = %lld, flags = %u were given (pass 0)",
                            (long long)v_offset, (long long)v_total, flags);
        mel_vp_destroy(ctx);
        return MEL_OK;
    }
    if (!ctx->ops->host_memory)
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED,
                        "mel_set_vocab_parallel: the %s backend has no communicator yet (vocabulary "
                        "parallelism runs on the CPU backend; a device backend needs a NCCL communicator)",
                        ctx->ops->name);
    if (v_total < 1)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_set_vocab_parallel: v_total = %lld (must be >= 1)",
                        (long long)v_total);
    if (v_offset < 0 || v_offset >= v_total)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_set_vocab_parallel: v_offset = %lld is outside [0, v_total = %lld)",
                        (long long)v_offset, (long long)v_total);
    if (flags & ~MEL_VP_PARTIAL_DX)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_set_vocab_parallel: flags = %#x has bits other than MEL_VP_PARTIAL_DX", flags);
    mel_vp *vp = calloc(1, sizeof *vp);
    if (!vp) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_set_vocab_parallel: out of memory");
    mel_status s = mel_comm_mpi_create(ctx, comm, &vp->comm);
    if (s) {
        free(vp);
        return s;
    }
    mel_vp_destroy(ctx);
    vp->v_off = v_offset;
    vp->v_total = v_total;
    vp->flags = flags;
    ctx->vp = vp;
    return MEL_OK;
}

int mel_get_vocab_parallel(const mel_ctx *ctx, int *rank, int *size, int64_t *v_offset, int64_t *v_total)
{
    const mel_vp *vp = ctx ? ctx->vp : NULL;
    if (rank) *rank = vp ? vp->comm->rank : 0;
    if (size) *size = vp ? vp->comm->size : 1;
    if (v_offset) *v_offset = vp ? vp->v_off : 0;
    if (v_total) *v_total = vp ? vp->v_total : 0;
    return vp != NULL;
}

void mel_get_comm_stats(const mel_ctx *ctx, int64_t *bytes, double *seconds)
{
    if (bytes) *bytes = ctx ? ctx->comm_bytes : 0;
    if (seconds) *seconds = ctx ? ctx->comm_seconds : 0;
}

void mel_vp_destroy(mel_ctx *ctx)
{
    if (!ctx->vp) return;
    ctx->vp->comm->ops->destroy(ctx->vp->comm);
    free(ctx->vp);
    ctx->vp = NULL;
}

int64_t mel_vp_offset(const mel_ctx *ctx) { return ctx->vp ? ctx->vp->v_off : 0; }
int64_t mel_vp_total(const mel_ctx *ctx) { return ctx->vp ? ctx->vp->v_total : 0; }
int mel_vp_partial_dx(const mel_ctx *ctx) { return ctx->vp && (ctx->vp->flags & MEL_VP_PARTIAL_DX); }

/* The allgather, timed and counted (bytes received from the others). */
static mel_status allgather(mel_ctx *ctx, const void *send, void *recv, size_t bytes)
{
    mel_comm *c = ctx->vp->comm;
    double t0 = wall();
    mel_status s = c->ops->allgather(ctx, c, send, recv, bytes);
    ctx->comm_seconds += wall() - t0;
    ctx->comm_bytes += (int64_t)bytes * (c->size - 1);
    return s;
}

/* The statuses of all processes: MEL_OK when all are; else this process's
 * own failure, or the first failing process's status with a message. */
static mel_status agree_status(mel_ctx *ctx, mel_status s, const int64_t *all, int stride)
{
    const int K = ctx->vp->comm->size;
    if (s) return s;
    for (int k = 0; k < K; k++)
        if (all[(int64_t)k * stride] != MEL_OK)
            return mel_fail(ctx, (mel_status)all[(int64_t)k * stride],
                            "vocabulary parallelism: process %d of %d failed this call (%s); every process "
                            "returns its status (its own message says why)",
                            k, K, mel_status_str((mel_status)all[(int64_t)k * stride]));
    return MEL_OK;
}

#define AGREE_MAX 32

mel_status mel_vp_agree(mel_ctx *ctx, mel_status s, int64_t v_rows, const int64_t *shape, int n)
{
    mel_vp *vp = ctx->vp;
    const int K = vp->comm->size, stride = 4 + AGREE_MAX;
    int64_t mine[4 + AGREE_MAX] = {s, vp->v_off, v_rows, vp->v_total};
    if (n > AGREE_MAX) n = AGREE_MAX;
    for (int k = 0; k < n; k++) mine[4 + k] = shape[k];
    int64_t *all = malloc((size_t)K * sizeof mine);
    if (!all) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "vocabulary parallelism: out of memory");
    char msg[sizeof ctx->err];
    if (s) snprintf(msg, sizeof msg, "%s", ctx->err); /* the allgather must not lose it */
    mel_status st = allgather(ctx, mine, all, sizeof mine);
    if (st == MEL_OK) {
        if (s) snprintf(ctx->err, sizeof ctx->err, "%s", msg);
        st = agree_status(ctx, s, all, stride);
    }
    for (int k = 1; k < K && st == MEL_OK; k++)
        for (int j = 0; j < n; j++)
            if (all[(int64_t)k * stride + 4 + j] != all[4 + j]) {
                st = mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                              "vocabulary parallelism: the processes disagree on the call: process %d has "
                              "shape item %d = %lld but process 0 has %lld (N, D, dtypes, reduction, outputs "
                              "and gradients requested must be the same on every process)",
                              k, j, (long long)all[(int64_t)k * stride + 4 + j], (long long)all[4 + j]);
                break;
            }
    for (int k = 0; k < K && st == MEL_OK; k++)
        if (all[(int64_t)k * stride + 3] != vp->v_total)
            st = mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                          "vocabulary parallelism: process %d has v_total = %lld but this process (%d) has %lld",
                          k, (long long)all[(int64_t)k * stride + 3], vp->comm->rank, (long long)vp->v_total);
    if (st == MEL_OK) {
        /* the shards, by offset, must tile [0, v_total) */
        int64_t end = 0;
        for (int done = 0; done < K && st == MEL_OK; done++) {
            int at = -1;
            for (int k = 0; k < K; k++)
                if (all[(int64_t)k * stride + 1] == end) at = k;
            if (at < 0) {
                int64_t next = vp->v_total;
                int who = -1;
                for (int k = 0; k < K; k++)
                    if (all[(int64_t)k * stride + 1] >= end && all[(int64_t)k * stride + 1] <= next &&
                        (who < 0 || all[(int64_t)k * stride + 1] < next))
                        next = all[(int64_t)k * stride + 1], who = k;
                st = mel_fail(ctx, MEL_ERR_SHAPE,
                              "vocabulary parallelism: the shards do not tile [0, %lld): no process starts at "
                              "column %lld%s (each process holds [v_offset, v_offset + rows of w))",
                              (long long)vp->v_total, (long long)end,
                              who >= 0 ? " (a gap or an overlap before the next shard)" : "");
                break;
            }
            end += all[(int64_t)at * stride + 2];
        }
        if (st == MEL_OK && end != vp->v_total)
            st = mel_fail(ctx, MEL_ERR_SHAPE,
                          "vocabulary parallelism: the shards cover [0, %lld) but v_total = %lld",
                          (long long)end, (long long)vp->v_total);
    }
    free(all);
    return st;
}

mel_status mel_vp_agree_rows(mel_ctx *ctx, mel_status s, int64_t rows, int64_t *R)
{
    const int K = ctx->vp->comm->size;
    int64_t mine[3] = {s, *R, rows};
    int64_t *all = malloc((size_t)K * sizeof mine);
    if (!all) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "vocabulary parallelism: out of memory");
    char msg[sizeof ctx->err];
    if (s) snprintf(msg, sizeof msg, "%s", ctx->err);
    mel_status st = allgather(ctx, mine, all, sizeof mine);
    if (st == MEL_OK) {
        if (s) snprintf(ctx->err, sizeof ctx->err, "%s", msg);
        st = agree_status(ctx, s, all, 3);
    }
    for (int k = 0; k < K && st == MEL_OK; k++) {
        if (all[3 * k + 2] != rows) {
            st = mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                          "vocabulary parallelism: process %d runs %lld rows but this process (%d) runs %lld "
                          "(the labels, masks and per-row inputs must be the same on every process)",
                          k, (long long)all[3 * k + 2], ctx->vp->comm->rank, (long long)rows);
            break;
        }
        if (all[3 * k + 1] < *R) *R = all[3 * k + 1];
    }
    free(all);
    return st;
}

static int width(const mel_transform *t, int i) { return t->nodes[i].op == OP_ARGMAXMASK ? 2 : 1; }

int64_t mel_vp_buffer_bytes(const mel_ctx *ctx, const mel_plan *p, int64_t R)
{
    if (!ctx->vp || !p->vsplit) return 0;
    const int64_t K = ctx->vp->comm->size;
    int64_t m = 0;
    for (int q = 1; q < p->n_phases; q++) {
        int64_t w = 0;
        w += 2 * (int64_t)(p->red_start[q + 1] - p->red_start[q]); /* ≥ Σ width() */
        if (w > m) m = w;
    }
    /* the combine's send block and the K received ones (≤ 2 doubles per
     * reduction and row) */
    return (K + 1) * R * m * 8;
}

static double reg(const mel_chunk *ch, int64_t at)
{
    return ch->ct == MEL_F32 ? (double)((const float *)ch->regs)[at] : ((const double *)ch->regs)[at];
}

static void set_reg(mel_chunk *ch, int64_t at, double v)
{
    if (ch->ct == MEL_F32) ((float *)ch->regs)[at] = (float)v;
    else ((double *)ch->regs)[at] = v;
}

mel_status mel_vp_combine(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch,
                          double *buf)
{
    const int K = ctx->vp->comm->size, n = t->n;
    const int32_t *list = p->red + p->red_start[q];
    const int nl = p->red_start[q + 1] - p->red_start[q];
    const int64_t R = ch->R;
    int64_t m = 0;
    for (int k = 0; k < nl; k++) m += width(t, list[k]);
    double *send = buf, *recv = send + R * m;
    /* pack: row by row, the reductions of the list */
    for (int64_t r = 0; r < R; r++) {
        double *o = send + r * m;
        for (int k = 0; k < nl; k++) {
            const int i = list[k];
            *o++ = reg(ch, r * n + i);
            if (width(t, i) == 2) *o++ = (double)ch->iregs[r * n + i];
        }
    }
    mel_status s = allgather(ctx, send, recv, (size_t)(R * m) * sizeof(double));
    if (s) return s;
    /* merge, processes in rank order (lib/merge.c) */
    const int64_t blk = R * m;
    for (int64_t r = 0; r < R; r++) {
        int64_t col = r * m;
        for (int k = 0; k < nl; k++) {
            const int i = list[k];
            int64_t c = 0;
            const double v = mel_merge_partials(t->nodes[i].op, recv + col, blk, K, &c);
            if (t->nodes[i].op == OP_ARGMAXMASK) ch->iregs[r * n + i] = c;
            else set_reg(ch, r * n + i, v);
            col += width(t, i);
        }
    }
    return MEL_OK;
}

mel_status mel_vp_sum(mel_ctx *ctx, void *data, mel_dtype dt, int64_t rows, int64_t cols, int64_t ld)
{
    mel_comm *cm = ctx->vp->comm;
    double t0 = wall();
    mel_status s = cm->ops->allreduce_sum(ctx, cm, data, dt, rows, cols, ld);
    ctx->comm_seconds += wall() - t0;
    /* what a ring all-reduce moves into each process */
    ctx->comm_bytes += 2 * (cm->size - 1) * rows * cols * (int64_t)mel_dtype_size(dt) / cm->size;
    return s;
}
