/* Staging between caller memory and the workspace: per-row values in
 * (dL/dy of each row) and out (y, aux outputs, input gradients), reads and
 * writes of caller memory on host or device backends, the fields of a
 * chunk every plan needs, and the timers around the GEMMs. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"

#include "half.h"

double eng_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The GEMMs of a step: host time, and the backend's device marks */
double eng_gemm_begin(mel_ctx *ctx)
{
    if (ctx->ops->gemm_mark) ctx->ops->gemm_mark(ctx, 0);
    return eng_now();
}

double eng_gemm_end(mel_ctx *ctx, double t0)
{
    if (ctx->ops->gemm_mark) ctx->ops->gemm_mark(ctx, 1);
    return eng_now() - t0;
}

double eng_read_real(const void *p, mel_dtype dt, int64_t i)
{
    return dt == MEL_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

void eng_write_real(void *p, mel_dtype dt, int64_t i, double v)
{
    if (dt == MEL_F32) ((float *)p)[i] = (float)v;
    else ((double *)p)[i] = v;
}

/* A host-readable view of caller memory: the pointer itself on a host
 * backend, else a malloc'ed copy (*tmp, freed by the caller). */
mel_status eng_host_view(mel_ctx *ctx, const void *p, size_t bytes, const void **out, void **tmp)
{
    *tmp = NULL;
    *out = p;
    if (ctx->ops->host_memory || !p || !bytes) return MEL_OK;
    *tmp = malloc(bytes);
    if (!*tmp) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory copying %zu bytes to the host", bytes);
    mel_status s = ctx->ops->copy(ctx, *tmp, p, bytes, 0);
    if (s) {
        free(*tmp);
        *tmp = NULL;
        return s;
    }
    *out = *tmp;
    return MEL_OK;
}

/* Write n doubles, converted to dtype dt, to caller memory at element
 * offset off (device memory through copy()). */
mel_status eng_put_reals(mel_ctx *ctx, void *dst, mel_dtype dt, int64_t off, const double *v, int64_t n)
{
    if (ctx->ops->host_memory) {
        for (int64_t i = 0; i < n; i++) eng_write_real(dst, dt, off + i, v[i]);
        return MEL_OK;
    }
    size_t es = mel_dtype_size(dt);
    void *tmp = malloc((size_t)n * es + 1);
    if (!tmp) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory staging %lld outputs", (long long)n);
    for (int64_t i = 0; i < n; i++) eng_write_real(tmp, dt, i, v[i]);
    mel_status s = ctx->ops->copy(ctx, (char *)dst + (size_t)off * es, tmp, (size_t)n * es, 1);
    free(tmp);
    return s;
}

/* The chunk fields every plan needs: rows, inputs, registers, scratch.
 * Outputs (y, count, aux, seed, input gradients, Z) are set by the caller. */
void eng_bind_chunk(const mel_ctx *ctx, const mel_transform *t, const call *c, const run *w,
                       const sizing *sz, int64_t r0, int64_t R, mel_chunk *ch)
{
    memset(ch, 0, sizeof *ch);
    ch->r0 = r0;
    ch->R = R;
    ch->V = c->V;
    ch->v_off = mel_vp_offset(ctx);
    ch->v_total = ctx->vp ? mel_vp_total(ctx) : c->V;
    ch->ct = c->ct;
    for (int k = 0; k < t->n_inputs; k++) {
        if (c->idx[k]) ch->idx[k] = c->idx[k]->data, ch->idx_dtype[k] = c->idx[k]->dtype;
        if (c->inp[k]) ch->inp[k] = c->inp[k]->data, ch->inp_dtype[k] = c->inp[k]->dtype;
    }
    ch->regs = w->regs;
    ch->iregs = w->iregs;
    ch->scratch = w->scratch;
    ch->scratch_per_thread = sz->scratch_per_thread;
    ch->threads = sz->threads;
    eng_chunk_layout(t, c, &w->lay, ch); /* the chunk's sequence lists, with a layout */
}


/* the caller's row of chunk row r */
static int64_t row_at(const int64_t *rows, int64_t r0, int64_t r) { return rows ? rows[r] : r0 + r; }

/* seed_r = dL/dy_r: the upstream gradient times the reduction's weight,
 * written to the host row buffer and copied to the device's. */
mel_status eng_seed_rows(mel_ctx *ctx, const mel_args *a, const upstream *u, const run *w,
                            const row_bufs *dev, const row_bufs *host, const int64_t *rows, int64_t r0,
                            int64_t R)
{
    for (int64_t r = 0; r < R; r++) {
        double sd = u->scale;
        const int64_t i = row_at(rows, r0, r);
        if (a->reduction == MEL_REDUCE_NONE && u->dy) sd = eng_read_real(u->dy, a->dy_dtype, i);
        else if (a->reduction == MEL_REDUCE_WEIGHTED) sd = u->dy0 * u->wv[i];
        host->seed[r] = sd;
    }
    if (w->hrow == w->rowbuf) return MEL_OK;
    return ctx->ops->copy(ctx, dev->seed, host->seed, (size_t)R * sizeof(double), 1);
}

mel_status eng_open_chunk(const eng_job *j, const call *cb, const run *w, const sizing *sz, int64_t *k0,
                          eng_open *o)
{
    const mel_transform *t = j->t;
    const mel_args *a = j->a;
    const call *c = j->c;
    memset(o, 0, sizeof *o);
    eng_next_chunk(j->A, c, w->R, *k0, &o->r0, &o->R, &o->rows);
    *k0 += o->R;
    mel_chunk *ch = &o->ch;
    eng_bind_chunk(j->ctx, t, cb, w, sz, o->r0, o->R, ch);
    for (int h = 0; h < MEL_MAX_HEADS; h++) o->xs[h] = &a->head[h].x, o->dxs[h] = &a->head[h].dx;
    o->gr0 = o->r0;
    if (o->rows) {
        eng_gather_rows(t, a, c, w, j->fb, o->rows, o->R, &o->g);
        for (int h = 0; h < MEL_MAX_HEADS; h++) o->xs[h] = &o->g.x[h], o->dxs[h] = &o->g.dx[h];
        for (int k = 0; k < t->n_inputs; k++) {
            if (c->idx[k]) ch->idx[k] = o->g.in[k];
            if (c->inp[k]) ch->inp[k] = o->g.in[k];
        }
        ch->r0 = o->gr0 = 0;
    }
    const row_bufs dev = eng_row_layout(t, w->rowbuf, w->R), host = eng_row_layout(t, w->hrow, w->R);
    ch->y = dev.y;
    for (int k = 0; k < t->n_aux; k++)
        if (c->aux[k]) ch->aux[k] = dev.aux[k];
    if (!j->fb) return MEL_OK;
    for (int k = 0; k < t->n_inputs; k++)
        if (c->ginp[k]) ch->ginp[k] = dev.ginp[k];
    ch->seed = dev.seed;
    return eng_seed_rows(j->ctx, a, j->u, w, &dev, &host, o->rows, o->r0, o->R);
}

/* The per-row results of a chunk of R rows from a device's row buffer to
 * its host mirror: only the arrays the call returns (y, bound aux
 * outputs, input gradients), R entries each -- not the whole buffer,
 * which holds w->R rows of every array. */
static mel_status fetch_rows(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                             const run *w, const row_bufs *host, int want_y, int fb, int64_t R)
{
    if (w->hrow == w->rowbuf) return MEL_OK;
    const row_bufs dev = eng_row_layout(t, w->rowbuf, w->R);
    const size_t n = (size_t)R * sizeof(double);
    mel_status s = MEL_OK;
    if (want_y && a->y) s = ctx->ops->copy(ctx, host->y, dev.y, n, 0);
    for (int k = 0; k < t->n_aux && s == MEL_OK; k++)
        if (want_y && c->aux[k]) s = ctx->ops->copy(ctx, host->aux[k], dev.aux[k], n, 0);
    for (int k = 0; k < t->n_inputs && s == MEL_OK; k++)
        if (fb && c->ginp[k]) s = ctx->ops->copy(ctx, host->ginp[k], dev.ginp[k], n, 0);
    return s;
}

/* Per-row results of a chunk to the caller: y (reduction NONE) or its
 * running total, aux outputs, input gradients.  Gathered rows (rows !=
 * NULL) are only ever host memory. */
mel_status eng_collect_rows(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                               const upstream *u, const run *w, const row_bufs *host, int want_y, int fb,
                               const int64_t *rows, int64_t r0, int64_t R, double *total)
{
    mel_status s;
    if ((s = fetch_rows(ctx, t, a, c, w, host, want_y, fb, R))) return s;
    if (rows) {
        for (int64_t r = 0; r < R; r++) {
            const int64_t i = rows[r];
            if (a->reduction == MEL_REDUCE_NONE) {
                if (want_y && a->y) eng_write_real(a->y, a->y_dtype, i, host->y[r]);
            } else {
                *total += a->reduction == MEL_REDUCE_WEIGHTED ? u->wv[i] * host->y[r] : host->y[r];
            }
            for (int k = 0; k < t->n_aux; k++)
                if (c->aux[k] && want_y) eng_write_real(c->aux[k]->out, c->aux[k]->dtype, i, host->aux[k][r]);
            for (int k = 0; k < t->n_inputs; k++)
                if (fb && c->ginp[k]) eng_write_real(c->ginp[k]->out, c->ginp[k]->dtype, i, host->ginp[k][r]);
        }
        return MEL_OK;
    }
    if (a->reduction == MEL_REDUCE_NONE) {
        if (want_y && a->y && (s = eng_put_reals(ctx, a->y, a->y_dtype, r0, host->y, R))) return s;
    } else {
        for (int64_t r = 0; r < R; r++)
            *total += a->reduction == MEL_REDUCE_WEIGHTED ? u->wv[r0 + r] * host->y[r] : host->y[r];
    }
    for (int k = 0; k < t->n_aux; k++)
        if (c->aux[k] && want_y && (s = eng_put_reals(ctx, c->aux[k]->out, c->aux[k]->dtype, r0, host->aux[k], R)))
            return s;
    for (int k = 0; k < t->n_inputs; k++)
        if (fb && c->ginp[k] && (s = eng_put_reals(ctx, c->ginp[k]->out, c->ginp[k]->dtype, r0, host->ginp[k], R)))
            return s;
    return MEL_OK;
}
