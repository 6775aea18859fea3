/* What a call needs before its first chunk: the upstream gradient and the
 * reduction's weights (host-readable), the count pass of MEAN (Σ count over
 * all rows, without any GEMM), and dW / db zeroed for MEL_OVERWRITE_DW. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Σ count over all rows (reduction MEAN), without any GEMM. */
static mel_status total_count(mel_ctx *ctx, const mel_transform *t, const call *c, double *out)
{
    *out = (double)c->N;
    if (t->count < 0 || c->N == 0) return MEL_OK;
    const mel_plan *cp = ctx->vp ? &t->vcnt : &t->cnt;
    sizing sz;
    eng_size_call(ctx, t, cp, c, &sz);
    run w;
    mel_status s = eng_acquire(ctx, t, cp, c, &sz, 0, &w);
    if (s) return s;
    const row_bufs dev = eng_row_layout(t, w.rowbuf, w.R), host = eng_row_layout(t, w.hrow, w.R);
    double acc = 0;
    int64_t ch_rows = 0;
    for (int64_t r0 = 0; r0 < c->N && s == MEL_OK; r0 += ch_rows) {
        mel_chunk ch;
        eng_bind_chunk(ctx, t, c, &w, &sz, r0, eng_chunk_end(c, r0, w.R) - r0, &ch);
        ch_rows = ch.R;
        ch.count = dev.count;
        s = mel_run_program(ctx, ctx->ops, t, cp, &ch, w.comm);
        if (s == MEL_OK && w.hrow != w.rowbuf)
            s = ctx->ops->copy(ctx, host.count, dev.count, (size_t)ch.R * sizeof(double), 0);
        for (int64_t r = 0; r < ch.R && s == MEL_OK; r++) acc += host.count[r];
    }
    eng_release(ctx, &w);
    *out = acc;
    return s;
}


mel_status eng_get_upstream(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                               upstream *u)
{
    memset(u, 0, sizeof *u);
    const void *wts = NULL;
    int64_t n_dy = a->reduction == MEL_REDUCE_NONE ? c->N : 1;
    mel_status s;
    if (a->dy && (s = eng_host_view(ctx, a->dy, (size_t)n_dy * mel_dtype_size(a->dy_dtype), &u->dy, &u->dy_tmp)))
        return s;
    if (a->reduction == MEL_REDUCE_WEIGHTED &&
        (s = eng_host_view(ctx, a->weights, (size_t)c->N * sizeof(double), &wts, &u->w_tmp)))
        return s;
    u->wv = wts;
    u->count = (double)c->N;
    if (a->reduction == MEL_REDUCE_MEAN && (s = total_count(ctx, t, c, &u->count))) return s;
    u->dy0 = 1.0;
    if (u->dy && a->reduction != MEL_REDUCE_NONE) u->dy0 = eng_read_real(u->dy, a->dy_dtype, 0);
    u->scale = u->dy0;
    if (a->reduction == MEL_REDUCE_MEAN) u->scale = u->count > 0 ? u->dy0 / u->count : 0.0;
    return MEL_OK;
}

void eng_free_upstream(upstream *u)
{
    free(u->dy_tmp);
    free(u->w_tmp);
}

/* Before the first chunk: zero dW and db when the caller asked to
 * overwrite them (MEL_OVERWRITE_DW). */
mel_status eng_zero_overwritten(mel_ctx *ctx, const mel_args *a, const call *c)
{
    mel_status s;
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        const mel_head_args *ha = &a->head[h];
        if (!c->want_dz[h] || !(ha->flags & MEL_OVERWRITE_DW)) continue;
        if (ha->dw.data && (s = ctx->ops->zero2d(ctx, ha->dw.data, c->V, (size_t)c->D[h] * c->es,
                                                 (size_t)ha->dw.ld * c->es)))
            return s;
        if (ha->db && (s = ctx->ops->zero2d(ctx, ha->db, 1, (size_t)c->V * c->es, (size_t)c->V * c->es)))
            return s;
    }
    return MEL_OK;
}


/* The workspace of the count pass of MEAN (total_count), without running it. */
mel_status eng_count_pass_bytes(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                                   int64_t *out)
{
    *out = 0;
    if (a->reduction != MEL_REDUCE_MEAN || t->count < 0 || c->N == 0) return MEL_OK;
    const mel_plan *cp = ctx->vp ? &t->vcnt : &t->cnt;
    sizing sz;
    eng_size_call(ctx, t, cp, c, &sz);
    run w;
    mel_status s = eng_layout(ctx, t, cp, c, &sz, 0, &w);
    if (s == MEL_OK) *out = eng_run_bytes(&w);
    return s;
}

