/* Row activity.  A transform whose y (and every bound aux output) is masked
 * by a predicate of per-row inputs alone (t->pred, lib/transform.c) lets
 * the engine skip the rows where the predicate is 0: their y, aux outputs
 * and input gradients are 0 and no gradient reaches dX, dW or db.  The
 * predicate is evaluated on the host by the CPU row executor before any
 * GEMM; the chunks then hold R active rows each.  On a host backend a
 * chunk's active rows are gathered (X, dX, per-row inputs); a device
 * backend walks runs of consecutive active rows instead. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

void eng_free_activity(activity *A)
{
    free(A->rows);
    free(A->active);
    memset(A, 0, sizeof *A);
}

/* Under vocabulary parallelism a predicate must be a function of the row's
 * inputs alone on every process: no vector (of this process's columns) and
 * no V. */
static int pred_local(const mel_transform *t, int k)
{
    const mel_plan *p = &t->pplan[k];
    for (int pos = 0; pos < p->n; pos++) {
        const mel_node *nd = &t->nodes[p->order[pos]];
        if (nd->kind == K_VEC || nd->op == OP_VOCAB) return 0;
    }
    return 1;
}

/* Whether this call may skip rows: skipping on, a masked y, every bound
 * aux output masked, no segments (a segment sum mixes rows; conservative),
 * every per-row input readable, and under vocabulary parallelism
 * predicates local to the row. */
static int may_skip(mel_ctx *ctx, const mel_transform *t, const call *c, int want_y)
{
    if (!ctx->row_skipping || t->y_pred < 0 || mel_has_layout(t) || c->N == 0) return 0;
    for (int k = 0; k < t->n_pred; k++)
        if (ctx->vp && !pred_local(t, k)) return 0;
    for (int k = 0; k < t->n_aux; k++)
        if (want_y && c->aux[k] && t->aux_pred[k] < 0) return 0;
    for (int k = 0; k < t->n_inputs; k++)
        if (!c->idx[k] && !c->inp[k]) return 0;
    return 1;
}

mel_status eng_eval_activity(mel_ctx *ctx, const mel_transform *t, const call *c, int want_y,
                                activity *A)
{
    memset(A, 0, sizeof *A);
    if (!may_skip(ctx, t, c, want_y)) return MEL_OK;
    char need[1 + MEL_MAX_AUX] = {0};
    need[t->y_pred] = 1;
    for (int k = 0; k < t->n_aux; k++)
        if (want_y && c->aux[k]) need[t->aux_pred[k]] = 1;
    const int64_t N = c->N, B = 1024, n = t->n;
    const void *hidx[MEL_MAX_INPUTS] = {0}, *hinp[MEL_MAX_INPUTS] = {0};
    void *tmp[MEL_MAX_INPUTS] = {0};
    mel_status s = MEL_OK;
    for (int k = 0; k < t->n_inputs && s == MEL_OK; k++) {
        const mel_bound *b = c->idx[k] ? c->idx[k] : c->inp[k];
        s = eng_host_view(ctx, b->data, (size_t)N * mel_dtype_size(b->dtype), c->idx[k] ? &hidx[k] : &hinp[k],
                      &tmp[k]);
    }
    int slots = 0; /* predicates read per-row inputs only: no vectors, so far */
    for (int q = 0; q < t->n_pred; q++)
        if (t->pplan[q].n_slots > slots) slots = t->pplan[q].n_slots;
    const size_t spt = (size_t)mel_scratch_bytes(slots, (int)n, c->V, c->es);
    void *regs = malloc((size_t)(B * n) * c->es + 1), *scratch = NULL;
    int64_t *iregs = malloc((size_t)(B * n) * 8 + 1);
    double *cnt = malloc((size_t)B * sizeof(double));
    A->active = calloc((size_t)N, 1);
    A->rows = malloc((size_t)N * sizeof(int64_t));
    if (posix_memalign(&scratch, 64, spt)) scratch = NULL;
    if (s == MEL_OK && (!regs || !iregs || !cnt || !A->active || !A->rows || !scratch))
        s = mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory evaluating the row activity of %lld rows",
                     (long long)N);
    /* the predicate alone, through the CPU executor: a copy of the
     * transform whose count is the predicate, run with its plan */
    mel_transform sh = *t;
    const mel_backend_ops *cpu = mel_cpu_backend();
    for (int q = 0; q < t->n_pred && s == MEL_OK; q++) {
        if (!need[q]) continue;
        sh.count = t->pred[q];
        for (int64_t r0 = 0; r0 < N && s == MEL_OK; r0 += B) {
            mel_chunk ch;
            memset(&ch, 0, sizeof ch);
            ch.r0 = r0;
            ch.R = N - r0 < B ? N - r0 : B;
            ch.V = c->V;
            ch.ct = c->ct;
            for (int k = 0; k < t->n_inputs; k++) {
                if (c->idx[k]) ch.idx[k] = hidx[k], ch.idx_dtype[k] = c->idx[k]->dtype;
                if (c->inp[k]) ch.inp[k] = hinp[k], ch.inp_dtype[k] = c->inp[k]->dtype;
            }
            ch.count = cnt;
            ch.regs = regs;
            ch.iregs = iregs;
            ch.scratch = scratch;
            ch.scratch_per_thread = (int64_t)spt;
            ch.threads = 1;
            s = mel_run_program(ctx, cpu, &sh, &t->pplan[q], &ch, NULL);
            /* NaN counts as active, as where() and products treat it */
            for (int64_t r = 0; r < ch.R && s == MEL_OK; r++) A->active[r0 + r] |= !(cnt[r] == 0);
        }
    }
    free(regs), free(iregs), free(cnt), free(scratch);
    for (int k = 0; k < MEL_MAX_INPUTS; k++) free(tmp[k]);
    if (s) {
        eng_free_activity(A);
        return s;
    }
    for (int64_t i = 0; i < N; i++)
        if (A->active[i]) A->rows[A->n_act++] = i;
    if (A->n_act == N) { /* nothing to skip: the plain path */
        eng_free_activity(A);
        return MEL_OK;
    }
    A->on = 1;
    A->gather = ctx->ops->host_memory;
    return MEL_OK;
}

/* The next chunk from active row k0 on: R rows starting at r0 when they
 * are consecutive (rows = NULL), else the gathered rows rows[0..R). */
void eng_next_chunk(const activity *A, const call *c, int64_t Rmax, int64_t k0, int64_t *r0,
                       int64_t *R, const int64_t **rows)
{
    *rows = NULL;
    if (!A->on) {
        *r0 = k0;
        *R = eng_chunk_end(c, k0, Rmax) - k0; /* whole groups (lib/layout.c) */
        return;
    }
    int64_t n = A->n_act - k0 < Rmax ? A->n_act - k0 : Rmax;
    const int64_t *a = A->rows + k0, first = a[0];
    int64_t m = 1;
    while (m < n && a[m] == first + m) m++;
    *r0 = first;
    *R = n;
    if (m == n) return;
    if (!A->gather) *R = m; /* a run of consecutive rows */
    else *rows = a;
}

int64_t eng_count_chunks(const activity *A, const call *c, int64_t Rmax)
{
    int64_t n = 0;
    for (int64_t k0 = 0; k0 < c->n_eff; n++) {
        int64_t r0, R;
        const int64_t *rows;
        eng_next_chunk(A, c, Rmax, k0, &r0, &R, &rows);
        k0 += R;
    }
    return n;
}

/* A backend that cannot gather rows (device memory: A->gather = 0) runs
 * every run of consecutive active rows as chunks of its own, and every
 * chunk streams all of W (and dW): a chunk of m rows costs about as much
 * as one of max(m, R*) rows (R*: eng_gemm_bound_rows, where the GEMMs stop
 * being bound by reading W).  Skipping stays on only when the runs so
 * counted cost less than all N rows, Σ_runs max(m, R*) < N; otherwise
 * (scattered ignored rows: padding, prompts) it is turned off for the
 * call -- every row is computed, the inactive rows' results are 0 by
 * their mask as without skipping -- rather than run thousands of chunks
 * of a few rows (issue 25: 1,639 chunks of 9 rows for every 10th label
 * ignored at N = 16384). */
void eng_skip_if_runs_pay(const mel_plan *p, const call *c, activity *A)
{
    if (!A->on || A->gather) return;
    const int64_t rstar = eng_gemm_bound_rows(p, c);
    int64_t cost = 0;
    for (int64_t k = 0; k < A->n_act && cost < c->N;) {
        int64_t m = 1;
        while (k + m < A->n_act && A->rows[k + m] == A->rows[k] + m) m++;
        cost += m > rstar ? m : rstar;
        k += m;
    }
    if (cost >= c->N) eng_free_activity(A); /* A->on = 0: the plain path */
}

/* Zero the results of the inactive rows: y (NONE), aux outputs, input
 * gradients, dX (unless accumulated), run by run. */
mel_status eng_zero_inactive(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                                const activity *A, int want_y, int fb)
{
    double *zeros = NULL;
    int64_t nz = 0;
    mel_status s = MEL_OK;
    for (int64_t i = 0; i < c->N && s == MEL_OK;) {
        if (A->active[i]) {
            i++;
            continue;
        }
        int64_t j = i;
        while (j < c->N && !A->active[j]) j++;
        const int64_t len = j - i;
        if (len > nz) {
            free(zeros);
            zeros = calloc((size_t)len, sizeof(double));
            nz = len;
            if (!zeros) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory zeroing %lld rows", (long long)len);
        }
        if (want_y && a->y && a->reduction == MEL_REDUCE_NONE) s = eng_put_reals(ctx, a->y, a->y_dtype, i, zeros, len);
        for (int k = 0; k < t->n_aux && s == MEL_OK; k++)
            if (want_y && c->aux[k]) s = eng_put_reals(ctx, c->aux[k]->out, c->aux[k]->dtype, i, zeros, len);
        for (int k = 0; k < t->n_inputs && s == MEL_OK; k++)
            if (fb && c->ginp[k]) s = eng_put_reals(ctx, c->ginp[k]->out, c->ginp[k]->dtype, i, zeros, len);
        for (int h = 0; h < MEL_MAX_HEADS && s == MEL_OK && fb; h++) {
            const mel_head_args *ha = &a->head[h];
            if (!c->want_dz[h] || !ha->dx.data || (ha->flags & MEL_ACCUMULATE_DX)) continue;
            const size_t es = mel_dtype_size(ha->dx.dtype);
            s = ctx->ops->zero2d(ctx, (char *)ha->dx.data + (size_t)(i * ha->dx.ld) * es, len,
                                 (size_t)c->D[h] * es, (size_t)ha->dx.ld * es);
        }
        i = j;
    }
    free(zeros);
    return s;
}


void eng_gather_rows(const mel_transform *t, const mel_args *a, const call *c, const run *w, int fb,
                        const int64_t *rows, int64_t R, gathered *g)
{
    const size_t ses = mel_dtype_size(c->st);
    char *p = w->gather; /* 64-byte aligned: the 8-byte inputs first, then the rows */
    memset(g, 0, sizeof *g);
    for (int k = 0; k < t->n_inputs; k++) {
        const mel_bound *b = c->idx[k] ? c->idx[k] : c->inp[k];
        const size_t es = mel_dtype_size(b->dtype);
        for (int64_t r = 0; r < R; r++) memcpy(p + (size_t)r * es, (const char *)b->data + (size_t)rows[r] * es, es);
        g->in[k] = p;
        p += (size_t)R * 8;
    }
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        if (!c->used[h]) continue;
        const mel_head_args *ha = &a->head[h];
        const size_t rb = (size_t)c->D[h] * ses;
        g->x[h] = mel_mat(p, c->st, R, c->D[h], c->D[h]);
        for (int64_t r = 0; r < R; r++)
            memcpy(p + (size_t)r * rb, (const char *)ha->x.data + (size_t)(rows[r] * ha->x.ld) * ses, rb);
        p += (size_t)R * rb;
        if (fb && c->want_dz[h] && ha->dx.data) {
            g->dx[h] = mel_mat(p, c->st, R, c->D[h], c->D[h]);
            if (ha->flags & MEL_ACCUMULATE_DX)
                for (int64_t r = 0; r < R; r++)
                    memcpy(p + (size_t)r * rb, (const char *)ha->dx.data + (size_t)(rows[r] * ha->dx.ld) * ses, rb);
            p += (size_t)R * rb;
        }
    }
}

/* dX rows computed in the gathered buffer back to the caller's rows */
void eng_scatter_dx(const mel_args *a, const call *c, const gathered *g, const int64_t *rows, int64_t R)
{
    const size_t ses = mel_dtype_size(c->st);
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        if (!g->dx[h].data) continue;
        const mel_head_args *ha = &a->head[h];
        const size_t rb = (size_t)c->D[h] * ses;
        for (int64_t r = 0; r < R; r++)
            memcpy((char *)ha->dx.data + (size_t)(rows[r] * ha->dx.ld) * ses, (const char *)g->dx[h].data + (size_t)r * rb, rb);
    }
}

