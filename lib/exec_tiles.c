/* The tiled executor: chunks of R rows × tiles of Vt vocabulary columns.
 *
 * A row program needs whole rows only at its vocabulary reductions (sum,
 * mean, max, logsumexp, gather, argmax).  The vocabulary-split plan of a
 * transform (lib/plan.c, vsplit: every such reduction ends a phase) runs
 * each phase on a tile of columns [v0, v0 + Vt) exactly as a process runs
 * it on its shard; the partial reductions of the tiles are merged in
 * column order (lib/merge.c, the same rules as across processes), and the
 * next phase recomputes its tile's logits.  So per chunk:
 *
 *   for each phase q:
 *     the merged reductions of phase q - 1 into the registers, then the
 *     segment sums that open q (backend merge_segments)
 *     for each tile: Z = X·W[v0:v0+Vt]ᵀ (+ b)          GEMM
 *                    phase q over the tile (backend run_phase)
 *                    merge the tile's partial reductions
 *                    last phase (fb): dX (+)= dZ·W_tile, dW_tile += dZᵀ·X,
 *                    db_tile += Σ dZ                    2 GEMMs
 *
 * Fused cross-entropy has 2 phases: 4 GEMMs per chunk instead of 3, for a
 * workspace of R·Vt logits instead of R·V: square tiles keep the GEMMs
 * compute-bound at a few MiB where whole rows of a large V cannot.
 *
 * 16-bit storage: dX is summed over the tiles in f32 (the chunk buffer
 * dxtmp, one [R, D] block per head with dX) and rounded once per chunk, as
 * the row executor rounds it.
 *
 * Vocabulary parallelism: the tiles cover this process's shard; at each
 * barrier the tiles' merged states are this process's part, combined
 * across processes as the row executor's (mel_vp_combine), and dX is summed
 * over the processes once per chunk, after its last tile (before the one
 * rounding of a 16-bit dX).  The tile width candidates follow the global
 * vocabulary, so every process makes the same collective calls.
 *
 * Not yet: the CUDA backend (it runs the whole-row plans only). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

const char *eng_tiles_unsupported(const eng_job *j)
{
    if (!j->ctx->ops->host_memory) return "a device backend";
    return NULL;
}

static int is16(mel_dtype t) { return t == MEL_BF16 || t == MEL_F16; }

/* dX summed over the processes (vocabulary parallelism, not partial) */
static int vp_sum(const mel_ctx *ctx) { return ctx->vp && !mel_vp_partial_dx(ctx); }

/* head h's dX summed over the tiles in dxtmp rather than in place */
static int dx_in_tmp(const eng_job *j, int h)
{
    return is16(j->c->st) || (vp_sum(j->ctx) && (j->a->head[h].flags & MEL_ACCUMULATE_DX));
}

/* The plan the tiles run: the vocabulary-split plan of the same kind. */
static const mel_plan *tile_plan(const eng_job *j) { return j->fb ? &j->t->vfb : &j->t->vfwd; }

static int n_red(const mel_plan *p) { return p->red_start[p->n_phases]; }

/* The sizing of a chunk of tiles of Vt columns: the call's with V = Vt,
 * plus the merge states. */
static void size_tiles(const eng_job *j, int64_t Vt, call *tc, sizing *sz)
{
    *tc = *j->c;
    tc->V = Vt;
    const mel_plan *p = tile_plan(j);
    eng_size_call(j->ctx, j->t, p, tc, sz);
    if (j->A->on && j->A->gather) eng_size_gather(j->t, tc, j->fb, j->a, sz);
    sz->merge_per_row = (int64_t)n_red(p) * MEL_MERGE_STATE * (int64_t)sizeof(double);
    sz->per_row += sz->merge_per_row;
    /* the dX sums over the tiles in dxtmp: 16-bit storage (f32 sums,
     * rounded once), and a dX accumulated into under vocabulary
     * parallelism (this call's part summed over the processes alone) */
    tc->dx_tmp_cols = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++)
        if (j->fb && tc->want_dz[h] && j->a->head[h].dx.data && dx_in_tmp(j, h)) tc->dx_tmp_cols += tc->D[h];
    sz->per_row += tc->dx_tmp_cols * (int64_t)tc->es;
}

/* Rows per chunk for tiles of Vt columns (eng_layout: the budget, a fixed
 * chunk_rows, whole segments); MEL_ERR_BUDGET when not even one row fits. */
static mel_status layout_tiles(const eng_job *j, int64_t Vt, run *w)
{
    call tc;
    sizing sz;
    size_tiles(j, Vt, &tc, &sz);
    return eng_layout(j->ctx, j->t, tile_plan(j), &tc, &sz, 1, w);
}

/* The tile width: ctx->tile_cols when set, else, among V and the powers
 * of two below it, the one whose chunks (as many rows R as the budget
 * holds) have the highest arithmetic intensity R·Vt / (R + Vt): a call
 * moves W and dW once per chunk and X and dX once per tile, (N/R + N/Vt)
 * times V·D values in all, least for square tiles (the wider on a tie). */
static mel_status choose_cols(const eng_job *j, int64_t *Vt_out, run *w_out, int64_t *Vc_out)
{
    const int64_t V = j->c->V;
    mel_ctx *ctx = j->ctx;
    if (ctx->tile_cols > 0) {
        *Vt_out = ctx->tile_cols < V ? ctx->tile_cols : V;
        *Vc_out = ctx->tile_cols;
        return layout_tiles(j, *Vt_out, w_out);
    }
    /* candidates from the global vocabulary: the same on every process */
    const int64_t Vg = ctx->vp ? mel_vp_total(ctx) : V;
    double best = -1;
    mel_status last = MEL_OK;
    char msg[512] = "";
    int64_t Vc = Vg;
    while (Vc >= 1) {
        const int64_t Vt = Vc < V ? Vc : V > 0 ? V : 1;
        run w;
        mel_status s = layout_tiles(j, Vt, &w);
        if (s) {
            last = s;
            snprintf(msg, sizeof msg, "%s", mel_last_error(ctx));
        } else {
            /* by the candidate (global) width: every process decides alike */
            const double q = (double)w.R * (double)Vc / (double)(w.R + Vc);
            if (q > best) best = q, *Vt_out = Vt, *w_out = w, *Vc_out = Vc;
        }
        /* next: the largest power of two below Vc */
        int64_t next = 1;
        while (next * 2 < Vc) next *= 2;
        Vc = Vc == 1 ? 0 : next;
    }
    if (best < 0) return mel_fail(ctx, last ? last : MEL_ERR_BUDGET, "%s", msg);
    mel_clear_error(ctx);
    return MEL_OK;
}

int eng_tile_gemms(const eng_job *j)
{
    const mel_plan *p = tile_plan(j);
    return p->n_phases + (j->fb ? 2 : 0);
}

static mel_status tiles_plan(const eng_job *j, eng_shape *out)
{
    memset(out, 0, sizeof *out);
    if (j->c->n_eff <= 0) return MEL_OK;
    run w;
    int64_t Vt = 0;
    mel_status s = choose_cols(j, &Vt, &w, &out->cost_cols);
    if (s) return s;
    out->chunks = eng_count_chunks(j->A, j->c, w.R);
    out->chunk_rows = w.R;
    out->tile_cols = Vt;
    out->bytes = eng_run_bytes(&w);
    return MEL_OK;
}

/* register access in the compute type (host memory: CPU backends only) */
static double reg(const mel_chunk *ch, int64_t at)
{
    return ch->ct == MEL_F32 ? (double)((const float *)ch->regs)[at] : ((const double *)ch->regs)[at];
}

static void set_reg(mel_chunk *ch, int64_t at, double v)
{
    if (ch->ct == MEL_F32) ((float *)ch->regs)[at] = (float)v;
    else ((double *)ch->regs)[at] = v;
}

/* The partial reductions that phase q computed on a tile, merged into the
 * states (the reductions the barrier opening phase q + 1 combines). */
static void merge_tile(const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch, double *st, int first)
{
    const int n = t->n, m = n_red(p);
    for (int k = p->red_start[q + 1]; k < p->red_start[q + 2]; k++) {
        const int i = p->red[k], op = t->nodes[i].op;
        for (int64_t r = 0; r < ch->R; r++) {
            double *s = st + (r * m + k) * MEL_MERGE_STATE;
            if (first) mel_merge_init(op, s);
            mel_merge_step(op, s, reg(ch, r * n + i), op == OP_ARGMAXMASK ? ch->iregs[r * n + i] : 0);
        }
    }
}

/* The merged reductions into the registers, before phase q runs: final
 * values, or under vocabulary parallelism this process's parts (combined
 * across processes next, mel_vp_combine). */
static void merged_into_regs(const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch, const double *st,
                             int part)
{
    const int n = t->n, m = n_red(p);
    for (int k = p->red_start[q]; k < p->red_start[q + 1]; k++) {
        const int i = p->red[k], op = t->nodes[i].op;
        for (int64_t r = 0; r < ch->R; r++) {
            int64_t col = 0;
            const double *s = st + (r * m + k) * MEL_MERGE_STATE;
            const double v = part ? mel_merge_part(op, s, &col) : mel_merge_final(op, s, &col);
            set_reg(ch, r * n + i, v); /* argmaxmask: the maximum, which a process merge compares */
            if (op == OP_ARGMAXMASK) ch->iregs[r * n + i] = col;
        }
    }
}

/* Rows [v0, v0 + n) of a [V, cols] matrix view */
static mel_matrix rows_of(const mel_matrix *m, int64_t v0, int64_t n)
{
    mel_matrix s = *m;
    s.data = (char *)m->data + (size_t)(v0 * m->ld) * mel_dtype_size(m->dtype);
    s.rows = n;
    return s;
}

static mel_status tiles_run(const eng_job *j, eng_shape *out)
{
    mel_ctx *ctx = j->ctx;
    const mel_transform *t = j->t;
    const mel_args *a = j->a;
    const call *c = j->c;
    const int fb = j->fb;
    const mel_plan *p = tile_plan(j);
    memset(out, 0, sizeof *out);
    if (c->n_eff <= 0) return MEL_OK;
    run w;
    int64_t Vt = 0;
    mel_status s = choose_cols(j, &Vt, &w, &out->cost_cols);
    if (s) return s;
    call tc;
    sizing sz;
    size_tiles(j, Vt, &tc, &sz);
    if ((s = eng_acquire(ctx, t, p, &tc, &sz, 1, &w))) return s;
    out->chunk_rows = w.R;
    out->tile_cols = Vt;
    out->bytes = eng_run_bytes(&w);
    const int64_t V = c->V;
    const row_bufs host = eng_row_layout(t, w.hrow, w.R);
    for (int64_t k0 = 0; k0 < c->n_eff && s == MEL_OK; out->chunks++) {
        eng_open o;
        if ((s = eng_open_chunk(j, &tc, &w, &sz, &k0, &o))) break;
        mel_chunk ch = o.ch;
        const int64_t r0 = o.r0, R = o.R, gr0 = o.gr0, *rows = o.rows;
        const mel_matrix *const *xs = o.xs, *const *dxs = o.dxs;
        const int64_t v_base = ch.v_off; /* this process's first column */
        ch.v_total = ctx->vp ? mel_vp_total(ctx) : V;
        for (int q = 0; q < p->n_phases && s == MEL_OK; q++) {
            const int last = q == p->n_phases - 1;
            if (q > 0) {
                merged_into_regs(t, p, q, &ch, w.merge, ctx->vp != NULL);
                if (ctx->vp && (s = mel_vp_combine(ctx, t, p, q, &ch, w.comm))) break;
                int seg = 0;
                for (int pos = p->phase_start[q]; pos < p->phase_start[q + 1]; pos++)
                    seg |= t->nodes[p->order[pos]].op == OP_SEGSUM;
                if (seg && (s = ctx->ops->merge_segments(ctx, t, p, q, &ch))) break;
            }
            for (int64_t v0 = 0; v0 < V && s == MEL_OK; v0 += Vt) {
                const int64_t vt = V - v0 < Vt ? V - v0 : Vt;
                const size_t es = c->es;
                double g0 = eng_gemm_begin(ctx);
                for (int h = 0; h < MEL_MAX_HEADS && s == MEL_OK; h++) {
                    ch.Z[h] = NULL;
                    if (!c->used[h]) continue;
                    const mel_head_args *ha = &a->head[h];
                    const mel_matrix wt = rows_of(&ha->w, v0, vt);
                    const void *bt = ha->bias ? (const char *)ha->bias + (size_t)v0 * es : NULL;
                    /* Z: [R, vt] of the tile's columns */
                    s = mel_gemm_logits(ctx, xs[h], gr0, R, &wt, bt, w.Z[h], w.conv);
                    out->flops += 2 * R * vt * c->D[h];
                    ch.Z[h] = w.Z[h];
                }
                out->gemm_seconds += eng_gemm_end(ctx, g0);
                if (s) break;
                ch.V = vt;
                ch.v_off = v_base + v0;
                if ((s = ctx->ops->run_phase(ctx, t, p, q, &ch))) break;
                if (!last) {
                    merge_tile(t, p, q, &ch, w.merge, v0 == 0);
                    continue;
                }
                if (!fb) continue;
                g0 = eng_gemm_begin(ctx);
                int64_t acc_off = 0; /* 16-bit: this head's f32 dX sum in dxtmp */
                for (int h = 0; h < MEL_MAX_HEADS && s == MEL_OK; h++) {
                    if (!c->want_dz[h]) continue;
                    const mel_head_args *ha = &a->head[h];
                    const mel_matrix wt = rows_of(&ha->w, v0, vt);
                    /* FAST16: dZ rounded to the storage dtype (a no-op otherwise) */
                    if ((s = mel_gemm_round_dz(ctx, w.Z[h], R, c->st, c->D[h], vt, w.conv))) break;
                    const int last_tile = v0 + vt == V, D = (int)c->D[h];
                    const int caller_acc = (ha->flags & MEL_ACCUMULATE_DX) != 0;
                    if (ha->dx.data && dx_in_tmp(j, h)) {
                        /* summed over the tiles in dxtmp [R, D] */
                        char *acc = (char *)w.dxtmp + (size_t)(acc_off * R) * c->es;
                        acc_off += D;
                        const mel_matrix am = mel_mat(acc, c->ct, R, D, D);
                        if (is16(c->st)) s = mel_gemm_grad_x_acc(ctx, w.Z[h], R, &wt, (float *)acc, v0 > 0, w.conv);
                        else s = mel_gemm_grad_x(ctx, w.Z[h], R, &wt, &am, 0, v0 > 0, w.conv, 0);
                        out->flops += 2 * R * vt * D;
                        if (s == MEL_OK && last_tile && vp_sum(ctx)) s = mel_vp_sum(ctx, acc, c->ct, R, D, D);
                        /* after the last tile: into the caller's dX (16-bit: rounded once) */
                        if (s == MEL_OK && last_tile && is16(c->st))
                            s = ctx->ops->store16(ctx, dxs[h], gr0, R, (const float *)acc, caller_acc);
                        else if (s == MEL_OK && last_tile)
                            for (int64_t r = 0; r < R; r++) {
                                char *row = (char *)dxs[h]->data + (size_t)((gr0 + r) * dxs[h]->ld) * c->es;
                                for (int64_t k = 0; k < D; k++) {
                                    if (c->ct == MEL_F32) ((float *)row)[k] += ((const float *)acc)[r * D + k];
                                    else ((double *)row)[k] += ((const double *)acc)[r * D + k];
                                }
                            }
                    } else if (ha->dx.data) {
                        /* dX over the tiles in column order in place: the
                         * caller's accumulate flag on the first, then += */
                        const int acc = v0 > 0 || caller_acc;
                        s = mel_gemm_grad_x(ctx, w.Z[h], R, &wt, dxs[h], gr0, acc, w.conv, 0);
                        out->flops += 2 * R * vt * D;
                        if (s == MEL_OK && last_tile && vp_sum(ctx))
                            s = mel_vp_sum(ctx, (char *)dxs[h]->data + (size_t)(gr0 * dxs[h]->ld) * c->es, c->ct, R, D,
                                           dxs[h]->ld);
                    }
                    if (s == MEL_OK && ha->dw.data) {
                        const mel_matrix dwt = rows_of(&ha->dw, v0, vt);
                        s = mel_gemm_grad_w(ctx, w.Z[h], R, xs[h], gr0, &dwt, w.conv);
                        out->flops += 2 * R * vt * c->D[h];
                    }
                    if (s == MEL_OK && ha->db)
                        s = ctx->ops->colsum(ctx, c->ct, w.Z[h], R, vt, (char *)ha->db + (size_t)v0 * es);
                }
                out->gemm_seconds += eng_gemm_end(ctx, g0);
            }
        }
        if (s) break;
        if ((s = eng_collect_rows(ctx, t, a, c, j->u, &w, &host, j->want_y, fb, rows, r0, R, &out->total)))
            break;
        if (fb && rows) eng_scatter_dx(a, c, &o.g, rows, R);
    }
    eng_release(ctx, &w);
    return s;
}

const mel_executor mel_exec_tiles = {"tiles", tiles_plan, tiles_run};
