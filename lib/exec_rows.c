/* The row executor: chunks of whole rows.  Each chunk of R rows holds
 * every column of its logits, so the row program crosses each of its
 * barriers (vocabulary reductions, segment sums) in memory:
 *
 *   per chunk of rows [r0, r0 + R) (the active rows when skipping):
 *     chunk_logits    Z = X·Wᵀ (+ b) for each head read (lib/gemm.c)
 *     eng_seed_rows   dL/dy of each row
 *     mel_run_program the row program, phase by phase (lib/program.c), dZ over Z
 *     eng_collect_rows  y, aux and input gradients to the caller
 *     chunk_backprop  dX, dW, db from dZ (lib/gemm.c): 3 GEMMs in all
 *
 * The budget fixes R (lib/workspace.c); a budget below one row of logits
 * is refused. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Z_h = X_h[r0:r0+R] · W_hᵀ (+ b_h) for every head read.   Z: [R, V]
 * xs[h]: X of head h (the caller's, or the gathered rows with r0 = 0). */
static mel_status chunk_logits(mel_ctx *ctx, const mel_args *a, const call *c, const run *w,
                               const mel_matrix *const *xs, int64_t r0, int64_t R, int64_t *flops)
{
    mel_status s = MEL_OK;
    for (int h = 0; h < MEL_MAX_HEADS && s == MEL_OK; h++) {
        if (!c->used[h]) continue;
        const mel_head_args *ha = &a->head[h];
        s = mel_gemm_logits(ctx, xs[h], r0, R, &ha->w, ha->bias, w->Z[h], w->conv);
        *flops += 2 * R * c->V * c->D[h];
    }
    return s;
}


/* dX[r0:r0+R] (+)= dZ·W of head h; under vocabulary parallelism summed
 * over the processes (unless MEL_VP_PARTIAL_DX): in place when dX is
 * overwritten, through the chunk buffer dxtmp when an f32/f64 dX is
 * accumulated, before the one rounding of a 16-bit dX (lib/gemm.c). */
static mel_status chunk_grad_x(mel_ctx *ctx, const call *c, const run *w, int h, const mel_matrix *wm,
                               const mel_matrix *dx, int64_t r0, int64_t R, int accumulate)
{
    const int sum = ctx->vp && !mel_vp_partial_dx(ctx);
    mel_status s;
    if (!sum) return mel_gemm_grad_x(ctx, w->Z[h], R, wm, dx, r0, accumulate, w->conv, 0);
    if (c->st == MEL_BF16 || c->st == MEL_F16) /* summed in f32 before the rounding */
        return mel_gemm_grad_x(ctx, w->Z[h], R, wm, dx, r0, accumulate, w->conv, 1);
    const int64_t D = c->D[h];
    if (!accumulate) {
        if ((s = mel_gemm_grad_x(ctx, w->Z[h], R, wm, dx, r0, 0, w->conv, 0))) return s;
        return mel_vp_sum(ctx, (char *)dx->data + (size_t)(r0 * dx->ld) * c->es, c->ct, R, D, dx->ld);
    }
    mel_matrix tmp = mel_mat(w->dxtmp, c->ct, R, D, D);
    if ((s = mel_gemm_grad_x(ctx, w->Z[h], R, wm, &tmp, 0, 0, w->conv, 0)) ||
        (s = mel_vp_sum(ctx, w->dxtmp, c->ct, R, D, D)))
        return s;
    for (int64_t r = 0; r < R; r++) {
        char *row = (char *)dx->data + (size_t)((r0 + r) * dx->ld) * c->es;
        for (int64_t j = 0; j < D; j++) {
            if (c->ct == MEL_F32) ((float *)row)[j] += ((const float *)w->dxtmp)[r * D + j];
            else ((double *)row)[j] += ((const double *)w->dxtmp)[r * D + j];
        }
    }
    return MEL_OK;
}

/* dX_c = dZ·W, dW += dZᵀ·X_c, db += Σ_rows dZ for every head with a
 * gradient.  xs / dxs: the caller's X and dX at r0, or gathered rows
 * (r0 = 0, dX then accumulated into the gathered copy when the caller
 * accumulates). */
static mel_status chunk_backprop(mel_ctx *ctx, const mel_args *a, const call *c, const run *w,
                                 const mel_matrix *const *xs, const mel_matrix *const *dxs, int64_t r0,
                                 int64_t R, int64_t *flops)
{
    mel_status s = MEL_OK;
    for (int h = 0; h < MEL_MAX_HEADS && s == MEL_OK; h++) {
        if (!c->want_dz[h]) continue;
        const mel_head_args *ha = &a->head[h];
        /* FAST16 precision: dZ rounded to the storage dtype (a no-op otherwise) */
        if ((s = mel_gemm_round_dz(ctx, w->Z[h], R, c->st, c->D[h], c->V, w->conv))) break;
        if (ha->dx.data) {
            s = chunk_grad_x(ctx, c, w, h, &ha->w, dxs[h], r0, R, (ha->flags & MEL_ACCUMULATE_DX) != 0);
            *flops += 2 * R * c->V * c->D[h];
        }
        if (s == MEL_OK && ha->dw.data) {
            s = mel_gemm_grad_w(ctx, w->Z[h], R, xs[h], r0, &ha->dw, w->conv);
            *flops += 2 * R * c->V * c->D[h];
        }
        if (s == MEL_OK && ha->db) s = ctx->ops->colsum(ctx, c->ct, w->Z[h], R, c->V, ha->db);
    }
    return s;
}


/* The sizing of the call's main pass, with the gathered rows of skipping. */
static void size_job(const eng_job *j, sizing *sz)
{
    eng_size_call(j->ctx, j->t, j->xplan, j->c, sz);
    if (j->A->on && j->A->gather) eng_size_gather(j->t, j->c, j->fb, j->a, sz);
}

/* The same layout and chunk walk as a run, nothing allocated or run. */
static mel_status rows_plan(const eng_job *j, eng_shape *out)
{
    memset(out, 0, sizeof *out);
    if (j->c->n_eff <= 0) return MEL_OK;
    sizing sz;
    size_job(j, &sz);
    run w;
    mel_status s = eng_layout(j->ctx, j->t, j->xplan, j->c, &sz, 1, &w);
    if (s) return s;
    out->chunks = eng_count_chunks(j->A, j->c, w.R);
    out->chunk_rows = w.R;
    out->bytes = eng_run_bytes(&w);
    return MEL_OK;
}

static mel_status rows_run(const eng_job *j, eng_shape *out)
{
    mel_ctx *ctx = j->ctx;
    const mel_transform *t = j->t;
    const mel_args *a = j->a;
    const call *c = j->c;
    const int fb = j->fb;
    memset(out, 0, sizeof *out);
    if (c->n_eff <= 0) return MEL_OK;
    sizing sz;
    size_job(j, &sz);
    run w;
    mel_status s = eng_acquire(ctx, t, j->xplan, c, &sz, 1, &w);
    if (s) return s;
    out->chunk_rows = w.R;
    out->bytes = eng_run_bytes(&w);
    const row_bufs host = eng_row_layout(t, w.hrow, w.R);
    for (int64_t k0 = 0; k0 < c->n_eff && s == MEL_OK; out->chunks++) {
        eng_open o;
        if ((s = eng_open_chunk(j, c, &w, &sz, &k0, &o))) break;
        mel_chunk ch = o.ch;
        const int64_t r0 = o.r0, R = o.R, gr0 = o.gr0, *rows = o.rows;
        const mel_matrix *const *xs = o.xs, *const *dxs = o.dxs;
        double g0 = eng_gemm_begin(ctx);
        s = chunk_logits(ctx, a, c, &w, xs, gr0, R, &out->flops);
        out->gemm_seconds += eng_gemm_end(ctx, g0);
        if (s) break;

        for (int h = 0; h < MEL_MAX_HEADS; h++) ch.Z[h] = c->used[h] ? w.Z[h] : NULL;
        if ((s = mel_run_program(ctx, ctx->ops, t, j->xplan, &ch, w.comm))) break;
        if ((s = eng_collect_rows(ctx, t, a, c, j->u, &w, &host, j->want_y, fb, rows, r0, R, &out->total)))
            break;

        if (!fb) continue;
        g0 = eng_gemm_begin(ctx);
        s = chunk_backprop(ctx, a, c, &w, xs, dxs, gr0, R, &out->flops);
        out->gemm_seconds += eng_gemm_end(ctx, g0);
        if (s == MEL_OK && rows) eng_scatter_dx(a, c, &o.g, rows, R);
    }
    eng_release(ctx, &w);
    return s;
}

const mel_executor mel_exec_rows = {"rows", rows_plan, rows_run};
