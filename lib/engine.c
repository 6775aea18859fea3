/* The chunk engine.  A call (mel_forward / mel_backward /
 * mel_forward_backward) runs, top to bottom:
 *
 *   1. validate   check_heads, check_inputs, check_finite_data,
 *                 check_outputs, check_gradients, check_ops: the caller's
 *                 bindings resolved into a `call`, every error named;
 *   2. prepare    zero_overwritten (MEL_OVERWRITE_DW), get_upstream (dL/dy,
 *                 weights, the count pass of MEAN: total_count);
 *      size       size_call, pick_rows, acquire: the workspace of one
 *                 chunk of R rows within the budget (a `run`);
 *   3. the chunk loop, per chunk of rows [r0, r0 + R) (bind_chunk):
 *                 chunk_logits  Z = X·Wᵀ (+ b) for each head (lib/gemm.c)
 *                 seed_rows     dL/dy of each row
 *                 run_rows      the row program (backend), dZ over Z
 *                 collect_rows  y, aux and input gradients to the caller
 *                 chunk_backprop  dX, dW, db from dZ (lib/gemm.c)
 *   4. finish     the reduced y, the call's statistics.
 *
 * The per-row doubles of a chunk (y, count, seed, aux, input gradients)
 * live in one buffer whose layout is row_layout() alone.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "half.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The GEMMs of a step: host time, and the backend's device marks */
static double gemm_begin(mel_ctx *ctx)
{
    if (ctx->ops->gemm_mark) ctx->ops->gemm_mark(ctx, 0);
    return now();
}

static double gemm_end(mel_ctx *ctx, double t0)
{
    if (ctx->ops->gemm_mark) ctx->ops->gemm_mark(ctx, 1);
    return now() - t0;
}

static double read_real(const void *p, mel_dtype dt, int64_t i)
{
    return dt == MEL_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

static void write_real(void *p, mel_dtype dt, int64_t i, double v)
{
    if (dt == MEL_F32) ((float *)p)[i] = (float)v;
    else ((double *)p)[i] = v;
}

/* A host-readable view of caller memory: the pointer itself on a host
 * backend, else a malloc'ed copy (*tmp, freed by the caller). */
static mel_status host_view(mel_ctx *ctx, const void *p, size_t bytes, const void **out, void **tmp)
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
static mel_status put_reals(mel_ctx *ctx, void *dst, mel_dtype dt, int64_t off, const double *v, int64_t n)
{
    if (ctx->ops->host_memory) {
        for (int64_t i = 0; i < n; i++) write_real(dst, dt, off + i, v[i]);
        return MEL_OK;
    }
    size_t es = mel_dtype_size(dt);
    void *tmp = malloc((size_t)n * es + 1);
    if (!tmp) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory staging %lld outputs", (long long)n);
    for (int64_t i = 0; i < n; i++) write_real(tmp, dt, i, v[i]);
    mel_status s = ctx->ops->copy(ctx, (char *)dst + (size_t)off * es, tmp, (size_t)n * es, 1);
    free(tmp);
    return s;
}

/* ------------------------------------------------------ 1. validation */

/* Everything a call needs, resolved and validated. */
typedef struct call {
    int64_t N, V, D[MEL_MAX_HEADS];
    mel_dtype st; /* storage dtype of X and W                   */
    mel_dtype ct; /* compute dtype: f64 for f64 storage, else f32 */
    size_t es;    /* bytes of the compute dtype                  */
    int used[MEL_MAX_HEADS];   /* head read by the program            */
    int want_dz[MEL_MAX_HEADS]; /* head whose dZ must be produced      */
    const mel_bound *idx[MEL_MAX_INPUTS]; /* per transform input slot */
    const mel_bound *inp[MEL_MAX_INPUTS];
    const mel_bound *ginp[MEL_MAX_INPUTS];
    const mel_bound *aux[MEL_MAX_AUX];
    int64_t n_eff; /* rows the chunks cover: N, or the active rows when skipping */
    int64_t dx_tmp_cols; /* vocabulary parallelism: D of the widest head whose
                          * accumulated f32/f64 dX is summed over processes via
                          * a separate chunk buffer (0: none) */
    int dry;       /* mel_plan_call: shapes only, no data read but per-row inputs */
    /* the sequence layout (check_layout), host malloc, NULL without one:
     * skey[i] the sequence of row i (-1: none); cuts[0 .. n_cuts) the row
     * boundaries no group straddles, ascending from 0 to N; min_rows the
     * widest gap between two cuts (1 without a layout) */
    int64_t *skey, *cuts;
    int64_t n_cuts, min_rows;
} call;

static const char *head_label(int h) { return h == 0 ? "head 0" : h == 1 ? "head 1 (teacher/reference)" : "head"; }

static mel_status check_matrix(mel_ctx *ctx, const char *what, int h, const mel_matrix *m, int dry)
{
    if (!m->data && !dry)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "%s of head %d: data is NULL", what, h);
    if (m->rows < 0 || m->cols < 1)
        return mel_fail(ctx, MEL_ERR_SHAPE, "%s of head %d: shape [%lld, %lld] is invalid (rows >= 0, cols >= 1)",
                        what, h, (long long)m->rows, (long long)m->cols);
    if (m->ld < m->cols)
        return mel_fail(ctx, MEL_ERR_SHAPE, "%s of head %d: ld = %lld is smaller than cols = %lld",
                        what, h, (long long)m->ld, (long long)m->cols);
    int64_t tmp;
    if (!mel_mul_ok(m->rows, m->ld, &tmp) || !mel_mul_ok(tmp, 8, &tmp))
        return mel_fail(ctx, MEL_ERR_OVERFLOW, "%s of head %d: rows·ld overflows int64", what, h);
    return MEL_OK;
}

/* MEL_ERR_NONFINITE naming the first NaN/Inf of a [rows, cols] view */
static mel_status check_finite(mel_ctx *ctx, const char *what, int h, const void *data, mel_dtype dt,
                               int64_t rows, int64_t cols, int64_t ld)
{
    const void *hv;
    void *tmp;
    size_t bytes = (size_t)((rows > 0 ? (rows - 1) * ld : 0) + cols) * mel_dtype_size(dt);
    mel_status s = host_view(ctx, data, rows > 0 ? bytes : 0, &hv, &tmp);
    if (s) return s;
    for (int64_t i = 0; i < rows && s == MEL_OK; i++)
        for (int64_t j = 0; j < cols; j++) {
            double v = mel_float_at(hv, dt, i * ld + j);
            if (!isfinite(v)) {
                if (rows == 1 && h < 0)
                    s = mel_fail(ctx, MEL_ERR_NONFINITE, "%s[%lld] = %g", what, (long long)j, v);
                else
                    s = mel_fail(ctx, MEL_ERR_NONFINITE, "%s of head %d: [%lld, %lld] = %g", what, h,
                                 (long long)i, (long long)j, v);
                break;
            }
        }
    free(tmp);
    return s;
}

static const mel_bound *find_bound(const mel_bound *arr, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(arr[i].name, name)) return &arr[i];
    return NULL;
}

/* The heads the transform reads: bound, shapes and dtypes agreeing; sets
 * N, V, D, the storage and compute dtypes. */
static mel_status check_heads(mel_ctx *ctx, const mel_transform *t, const mel_args *a, call *c)
{
    int first = -1;
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        if (t->logits_node[h] < 0) {
            if (a->head[h].set)
                return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                                "head %d is bound but transform '%s' reads no head %d", h, t->name, h);
            continue;
        }
        const mel_head_args *ha = &a->head[h];
        if (!ha->set)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "%s is not bound: transform '%s' reads its logits (mel_args_head(a, %d, ...))",
                            head_label(h), t->name, h);
        mel_status s;
        if ((s = check_matrix(ctx, "x", h, &ha->x, c->dry)) || (s = check_matrix(ctx, "w", h, &ha->w, c->dry)))
            return s;
        if (ha->x.dtype != ha->w.dtype)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "head %d: x is %s but w is %s (they must match)",
                            h, mel_dtype_name(ha->x.dtype), mel_dtype_name(ha->w.dtype));
        if (ha->x.dtype != MEL_F32 && ha->x.dtype != MEL_F64 && ha->x.dtype != MEL_BF16 &&
            ha->x.dtype != MEL_F16)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "head %d: x dtype %s (%d) is not a float dtype",
                            h, mel_dtype_name(ha->x.dtype), (int)ha->x.dtype);
        if (ha->x.cols != ha->w.cols)
            return mel_fail(ctx, MEL_ERR_SHAPE, "head %d: x is [%lld, %lld] but w is [%lld, %lld]: D differs",
                            h, (long long)ha->x.rows, (long long)ha->x.cols, (long long)ha->w.rows,
                            (long long)ha->w.cols);
        if (ha->w.rows < 1)
            return mel_fail(ctx, MEL_ERR_SHAPE, "head %d: w has %lld rows; V must be >= 1", h,
                            (long long)ha->w.rows);
        if (first < 0) {
            first = h;
            c->N = ha->x.rows;
            c->V = ha->w.rows;
            c->st = ha->x.dtype;
            c->ct = ha->x.dtype == MEL_F64 ? MEL_F64 : MEL_F32;
        } else {
            if (ha->x.rows != c->N)
                return mel_fail(ctx, MEL_ERR_SHAPE, "head %d: x has %lld rows but head %d has %lld",
                                h, (long long)ha->x.rows, first, (long long)c->N);
            if (ha->w.rows != c->V)
                return mel_fail(ctx, MEL_ERR_SHAPE, "head %d: w has %lld rows (V) but head %d has %lld",
                                h, (long long)ha->w.rows, first, (long long)c->V);
            if (ha->x.dtype != c->st)
                return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "head %d is %s but head %d is %s",
                                h, mel_dtype_name(ha->x.dtype), first, mel_dtype_name(c->st));
        }
        c->used[h] = 1;
        c->D[h] = ha->x.cols;
    }
    c->es = mel_dtype_size(c->ct);
    if (t->seg_len > 0 && c->N % t->seg_len != 0)
        return mel_fail(ctx, MEL_ERR_SHAPE, "x has N = %lld rows, not a multiple of the segment length %lld "
                        "(seq_len) of transform '%s'", (long long)c->N, (long long)t->seg_len, t->name);

    return MEL_OK;
}

/* Every named input of the transform bound (indices in range), nothing
 * unknown bound. */
static mel_status check_inputs(mel_ctx *ctx, const mel_transform *t, const mel_args *a, call *c)
{
    for (int k = 0; k < t->n_inputs; k++) {
        const mel_input_decl *d = &t->inputs[k];
        const mel_bound *b = find_bound(d->is_index ? a->index : a->input,
                                        d->is_index ? a->n_index : a->n_input, d->name);
        if ((!b || !b->data) && c->dry) continue; /* planning: rows counted as active */
        if (!b || !b->data)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "input '%s' of transform '%s' is not bound (mel_args_%s(a, \"%s\", ...))",
                            d->name, t->name, d->is_index ? "index" : "input", d->name);
        if (b->n != c->N)
            return mel_fail(ctx, MEL_ERR_SHAPE, "input '%s' has %lld values but x has %lld rows",
                            d->name, (long long)b->n, (long long)c->N);
        if (d->is_index) {
            if (b->dtype != MEL_I32 && b->dtype != MEL_I64)
                return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "index '%s': dtype %s is not i32 or i64",
                                d->name, mel_dtype_name(b->dtype));
            const void *hv;
            void *tmp;
            mel_status s = host_view(ctx, b->data, (size_t)b->n * mel_dtype_size(b->dtype), &hv, &tmp);
            if (s) return s;
            /* vocabulary padding: only the first `limit` columns are real;
             * labels are global column ids under vocabulary parallelism */
            const int64_t Vt = ctx->vp ? mel_vp_total(ctx) : c->V;
            int64_t hi = d->limit > 0 && d->limit < Vt ? d->limit : Vt;
            for (int64_t i = 0; i < b->n && !d->layout; i++) { /* sequence ids: check_layout */
                int64_t v = b->dtype == MEL_I32 ? ((const int32_t *)hv)[i] : ((const int64_t *)hv)[i];
                if ((v < 0 || v >= hi) && v != d->ignore_index) {
                    free(tmp);
                    return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                                    "%s[%lld] = %lld is outside [0, %lld)%s and is not ignore_index (%lld)",
                                    d->name, (long long)i, (long long)v, (long long)hi,
                                    hi < Vt ? " (the real vocabulary, vocab_valid)" : "",
                                    (long long)d->ignore_index);
                }
            }
            free(tmp);
            c->idx[k] = b;
        } else {
            if (b->dtype != MEL_F32 && b->dtype != MEL_F64)
                return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "input '%s': dtype %s is not f32 or f64",
                                d->name, mel_dtype_name(b->dtype));
            c->inp[k] = b;
        }
    }
    for (int i = 0; i < a->n_index; i++)
        if (mel_find_input(t->inputs, t->n_inputs, a->index[i].name) < 0 ||
            !t->inputs[mel_find_input(t->inputs, t->n_inputs, a->index[i].name)].is_index)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "index '%s' is bound but is not an index input of transform '%s'",
                            a->index[i].name, t->name);
    for (int i = 0; i < a->n_input; i++) {
        int k = mel_find_input(t->inputs, t->n_inputs, a->input[i].name);
        if (k < 0 || t->inputs[k].is_index)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "input '%s' is bound but is not a scalar input of transform '%s'",
                            a->input[i].name, t->name);
    }

    return MEL_OK;
}

/* mel_set_check_finite: no NaN / Inf in X, W, bias and scalar inputs. */
static mel_status check_finite_data(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c)
{
    if (ctx->check_finite && !c->dry) {
        for (int h = 0; h < MEL_MAX_HEADS; h++) {
            if (!c->used[h]) continue;
            const mel_head_args *ha = &a->head[h];
            mel_status s;
            if ((s = check_finite(ctx, "x", h, ha->x.data, ha->x.dtype, ha->x.rows, ha->x.cols, ha->x.ld)) ||
                (s = check_finite(ctx, "w", h, ha->w.data, ha->w.dtype, ha->w.rows, ha->w.cols, ha->w.ld)) ||
                (ha->bias && (s = check_finite(ctx, "bias", h, ha->bias, ha->w.dtype, 1, c->V, c->V))))
                return s;
        }
        for (int k = 0; k < t->n_inputs; k++) {
            mel_status s;
            if (c->inp[k] && (s = check_finite(ctx, c->inp[k]->name, -1, c->inp[k]->data, c->inp[k]->dtype, 1,
                                               c->N, c->N)))
                return s;
        }
    }
    return MEL_OK;
}

/* Reduction, y, dL/dy and aux outputs. */
static mel_status check_outputs(mel_ctx *ctx, const mel_transform *t, const mel_args *a, call *c)
{
    if ((unsigned)a->reduction > MEL_REDUCE_WEIGHTED)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "reduction = %d is not a mel_reduction", (int)a->reduction);
    if (a->reduction == MEL_REDUCE_WEIGHTED && !a->weights)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "reduction MEL_REDUCE_WEIGHTED needs weights (got NULL)");
    if (a->y && a->y_dtype != MEL_F32 && a->y_dtype != MEL_F64)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "output y: dtype %s is not f32 or f64", mel_dtype_name(a->y_dtype));
    if (a->dy && a->dy_dtype != MEL_F32 && a->dy_dtype != MEL_F64)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "grad_output: dtype %s is not f32 or f64", mel_dtype_name(a->dy_dtype));
    for (int i = 0; i < a->n_aux; i++) {
        int k;
        for (k = 0; k < t->n_aux; k++)
            if (!strcmp(t->aux_name[k], a->aux[i].name)) break;
        if (k == t->n_aux)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "aux output '%s' is not an output of transform '%s'",
                            a->aux[i].name, t->name);
        if (a->aux[i].out && a->aux[i].dtype != MEL_F32 && a->aux[i].dtype != MEL_F64)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "aux output '%s': dtype %s is not f32 or f64",
                            a->aux[i].name, mel_dtype_name(a->aux[i].dtype));
        c->aux[k] = a->aux[i].out ? &a->aux[i] : NULL;
    }
    return MEL_OK;
}

/* Gradient buffers of heads and inputs (bound only when `grads`). */
static mel_status check_gradients(mel_ctx *ctx, const mel_transform *t, const mel_args *a, int grads, call *c)
{
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        const mel_head_args *ha = &a->head[h];
        if (!ha->grad_set) continue;
        if (!c->used[h] || !t->head_diff[h])
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "gradients of head %d requested, but head %d is not a differentiable head of '%s'",
                            h, h, t->name);
        if (!grads) continue;
        if (ha->dx.data) {
            if (ha->dx.rows != c->N || ha->dx.cols != c->D[h] || ha->dx.ld < ha->dx.cols)
                return mel_fail(ctx, MEL_ERR_SHAPE, "dx of head %d is [%lld, %lld] (ld %lld); want [%lld, %lld]",
                                h, (long long)ha->dx.rows, (long long)ha->dx.cols, (long long)ha->dx.ld,
                                (long long)c->N, (long long)c->D[h]);
            if (ha->dx.dtype != c->st)
                return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "dx of head %d is %s; want %s (x's dtype)",
                                h, mel_dtype_name(ha->dx.dtype), mel_dtype_name(c->st));
        }
        if (ha->dw.data) {
            if (ha->dw.rows != c->V || ha->dw.cols != c->D[h] || ha->dw.ld < ha->dw.cols)
                return mel_fail(ctx, MEL_ERR_SHAPE, "dw of head %d is [%lld, %lld] (ld %lld); want [%lld, %lld]",
                                h, (long long)ha->dw.rows, (long long)ha->dw.cols, (long long)ha->dw.ld,
                                (long long)c->V, (long long)c->D[h]);
            if (ha->dw.dtype != c->ct)
                return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "dw of head %d is %s; want %s (dW is "
                                "accumulated in %s)", h, mel_dtype_name(ha->dw.dtype),
                                mel_dtype_name(c->ct), mel_dtype_name(c->ct));
        }
        if (ha->db && !ha->bias)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "db of head %d requested but head %d has no bias", h, h);
        c->want_dz[h] = ha->dx.data || ha->dw.data || ha->db;
    }
    for (int i = 0; i < a->n_grad_input; i++) {
        int k = mel_find_input(t->inputs, t->n_inputs, a->grad_input[i].name);
        if (k < 0 || t->inputs[k].is_index || !t->inputs[k].differentiable)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "gradient of input '%s' requested, but it is not a differentiable input of '%s'",
                            a->grad_input[i].name, t->name);
        if (a->grad_input[i].out && a->grad_input[i].dtype != MEL_F32 && a->grad_input[i].dtype != MEL_F64)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "gradient of input '%s': dtype %s is not f32 or f64",
                            a->grad_input[i].name, mel_dtype_name(a->grad_input[i].dtype));
        if (grads && a->grad_input[i].out) c->ginp[k] = &a->grad_input[i];
    }
    return MEL_OK;
}

/* Every operation of the transform runs on this backend. */
static mel_status check_ops(mel_ctx *ctx, const mel_transform *t)
{
    for (int i = 0; i < t->n; i++)
        if (!ctx->ops->supports_op(t->nodes[i].op))
            return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "transform '%s': operation %s (node %d) is not supported "
                            "by the %s backend", t->name, mel_op_name(t->nodes[i].op), i, ctx->ops->name);
    return MEL_OK;
}

/* ------------------------------------------------ the sequence layout
 * (doc/design.md, "Sequences and groups"): every row's sequence, and the
 * cuts -- the row boundaries that no group straddles, where chunks may
 * end. */

static int cmp_pair(const void *x, const void *y)
{
    const int64_t *p = x, *q = y;
    return p[0] < q[0] ? -1 : p[0] > q[0] ? 1 : p[1] < q[1] ? -1 : p[1] > q[1];
}

static void free_layout(call *c)
{
    free(c->skey);
    free(c->cuts);
    c->skey = c->cuts = NULL;
}

static mel_status check_layout(mel_ctx *ctx, const mel_transform *t, call *c)
{
    c->min_rows = 1;
    if (!mel_has_layout(t) || c->N == 0) return MEL_OK;
    const int64_t N = c->N, G = t->group;
    const mel_bound *b = t->seq_ids >= 0 ? c->idx[t->seq_ids] : NULL;
    if (t->seq_ids >= 0 && !b)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform '%s': the sequence ids '%s' must be bound to plan its chunks (each chunk "
                        "holds whole groups)", t->name, t->inputs[t->seq_ids].name);
    c->skey = malloc((size_t)N * sizeof *c->skey);
    c->cuts = malloc((size_t)(N + 1) * sizeof *c->cuts);
    int64_t *pairs = malloc((size_t)N * 2 * sizeof *pairs);
    int32_t *open = calloc((size_t)N + 2, sizeof *open);
    mel_status s = MEL_OK;
    if (!c->skey || !c->cuts || !pairs || !open)
        s = mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory reading the sequence layout of %lld rows",
                     (long long)N);
    const void *hv = NULL;
    void *tmp = NULL;
    if (s == MEL_OK && b) s = host_view(ctx, b->data, (size_t)N * mel_dtype_size(b->dtype), &hv, &tmp);
    int64_t np = 0;
    for (int64_t i = 0; i < N && s == MEL_OK; i++) {
        int64_t v = t->seg_len > 0 ? i / t->seg_len
                    : b->dtype == MEL_I32 ? ((const int32_t *)hv)[i] : ((const int64_t *)hv)[i];
        if (v < -1)
            s = mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                         "%s[%lld] = %lld: a sequence id is >= 0, or -1 for a row in no sequence",
                         t->inputs[t->seq_ids].name, (long long)i, (long long)v);
        c->skey[i] = v;
        if (v >= 0) pairs[2 * np] = v / G, pairs[2 * np + 1] = i, np++;
    }
    free(tmp);
    if (s == MEL_OK) {
        /* a group whose rows span [lo, hi] forbids the cuts lo+1 .. hi */
        qsort(pairs, (size_t)np, 2 * sizeof *pairs, cmp_pair);
        for (int64_t k = 0; k < np;) {
            int64_t e = k;
            while (e + 1 < np && pairs[2 * (e + 1)] == pairs[2 * k]) e++;
            open[pairs[2 * k + 1] + 1]++;
            open[pairs[2 * e + 1] + 1]--;
            k = e + 1;
        }
        int64_t depth = 0, last = 0;
        c->n_cuts = 0;
        c->cuts[c->n_cuts++] = 0;
        for (int64_t r = 1; r <= N; r++) {
            depth += open[r];
            if (depth == 0 || r == N) {
                if (r - last > c->min_rows) c->min_rows = r - last;
                c->cuts[c->n_cuts++] = r;
                last = r;
            }
        }
    }
    free(pairs);
    free(open);
    if (s) free_layout(c);
    return s;
}

/* The end of the chunk that starts at row r0 and holds at most Rmax rows:
 * the farthest cut within reach (the next cut when none is: Rmax is at
 * least min_rows, so only a caller's walk could ask). */
static int64_t chunk_end(const call *c, int64_t r0, int64_t Rmax)
{
    int64_t want = r0 + Rmax < c->N ? r0 + Rmax : c->N;
    if (!c->cuts) return want;
    int64_t lo = 0, hi = c->n_cuts - 1; /* largest cut <= want */
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (c->cuts[mid] <= want) lo = mid;
        else hi = mid - 1;
    }
    if (c->cuts[lo] > r0) return c->cuts[lo];
    return lo + 1 < c->n_cuts ? c->cuts[lo + 1] : c->N;
}

/* The chunk's layout lists (mel_chunk.seg_off / seg_row / seq_info) for
 * rows [r0, r0 + R), in buffers of capacity R (chunk_layout_alloc). */
typedef struct chunk_layout_buf {
    int64_t *off[MEL_LEVELS], *row[MEL_LEVELS], *pairs;
    int8_t *info;
} chunk_layout_buf;

static void chunk_layout_free(chunk_layout_buf *L)
{
    for (int l = 0; l < MEL_LEVELS; l++) free(L->off[l]), free(L->row[l]);
    free(L->pairs);
    free(L->info);
    memset(L, 0, sizeof *L);
}

static mel_status chunk_layout_alloc(mel_ctx *ctx, const call *c, int64_t R, chunk_layout_buf *L)
{
    memset(L, 0, sizeof *L);
    if (!c->skey) return MEL_OK;
    int bad = 0;
    for (int l = 0; l < MEL_LEVELS; l++) {
        L->off[l] = malloc((size_t)(R + 1) * sizeof(int64_t));
        L->row[l] = malloc((size_t)R * sizeof(int64_t) + 1);
        bad |= !L->off[l] || !L->row[l];
    }
    L->pairs = malloc((size_t)R * 2 * sizeof(int64_t) + 1);
    L->info = malloc((size_t)R * MEL_SEQINFO_N + 1);
    if (bad || !L->pairs || !L->info) {
        chunk_layout_free(L);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory for the layout of a chunk of %lld rows",
                        (long long)R);
    }
    return MEL_OK;
}

static void chunk_layout(const mel_transform *t, const call *c, chunk_layout_buf *L, mel_chunk *ch)
{
    if (!c->skey) return;
    const int64_t R = ch->R, G = t->group;
    const int64_t *key = c->skey + ch->r0;
    memset(L->info, 0, (size_t)R * MEL_SEQINFO_N);
    for (int64_t r = 0; r < R; r++) L->info[r * MEL_SEQINFO_N + MEL_SEQINFO_RANK] = key[r] < 0 ? -1 : (int8_t)(key[r] % G);
    for (int l = 0; l < MEL_LEVELS; l++) {
        int64_t np = 0;
        for (int64_t r = 0; r < R; r++)
            if (key[r] >= 0) L->pairs[2 * np] = l ? key[r] / G : key[r], L->pairs[2 * np + 1] = r, np++;
        qsort(L->pairs, (size_t)np, 2 * sizeof(int64_t), cmp_pair);
        int64_t n = 0;
        for (int64_t k = 0; k < np; k++) {
            if (k == 0 || L->pairs[2 * k] != L->pairs[2 * (k - 1)]) {
                L->off[l][n++] = k;
                L->info[L->pairs[2 * k + 1] * MEL_SEQINFO_N + (l ? MEL_SEQINFO_GFIRST : MEL_SEQINFO_FIRST)] = 1;
            }
            L->row[l][k] = L->pairs[2 * k + 1];
        }
        L->off[l][n] = np;
        ch->seg_off[l] = L->off[l];
        ch->seg_row[l] = L->row[l];
        ch->n_seg[l] = n;
    }
    ch->seq_info = L->info;
}

static mel_status validate(mel_ctx *ctx, const mel_transform *t, const mel_args *a,
                           int grads, int dry, call *c)
{
    memset(c, 0, sizeof *c);
    c->dry = dry;
    if (!t) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "transform is NULL");
    if (!a) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "args is NULL");
    mel_status s;
    if ((s = check_heads(ctx, t, a, c)) || (s = check_inputs(ctx, t, a, c)) ||
        (s = check_finite_data(ctx, t, a, c)) || (s = check_outputs(ctx, t, a, c)) ||
        (s = check_gradients(ctx, t, a, grads, c)) || (s = check_ops(ctx, t)) ||
        (s = check_layout(ctx, t, c)))
        return s;
    c->n_eff = c->N;
    return MEL_OK;
}

/* -------------------------------------------------------- 2. workspace */

/* The per-row doubles of a chunk of R rows, in one buffer:
 *   y [R] | count [R] | seed [R] | aux [n_aux][R] | ginp [n_inputs][R] */
typedef struct row_bufs {
    double *y, *count, *seed;
    double *aux[MEL_MAX_AUX];
    double *ginp[MEL_MAX_INPUTS];
} row_bufs;

static int64_t row_doubles(const mel_transform *t) { return 3 + t->n_aux + t->n_inputs; }

static row_bufs row_layout(const mel_transform *t, double *base, int64_t R)
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

/* Bytes of workspace for chunks of R rows: fixed + R·per_row. */
typedef struct sizing {
    int64_t per_row, fixed, scratch_per_thread;
    int64_t conv_fixed, conv_per_row; /* dtype-conversion scratch (bf16/f16) */
    int64_t gather_per_row; /* skipping: gathered X (and dX) rows, per-row inputs */
    int threads, heads;
} sizing;

static void size_call(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                      sizing *sz)
{
    sz->threads = ctx->ops->threads(ctx);
    sz->heads = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++) sz->heads += c->used[h];
    int64_t ptrs = (int64_t)t->n * (int64_t)sizeof(void *);
    /* slots (rounded to 64 bytes), then the vector pointers (see exec_impl.h) */
    sz->scratch_per_thread = ((int64_t)p->n_slots * c->V * (int64_t)c->es + 63) / 64 * 64 + (ptrs + 63) / 64 * 64;
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
}

/* Skipping inactive rows on a host backend: each chunk's active rows are
 * gathered (X of every head, dX of heads whose dX is accumulated or
 * written, the per-row inputs) into buffers of R rows. */
static void size_gather(const mel_transform *t, const call *c, int fb, const mel_args *a, sizing *sz)
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

typedef struct run {
    int64_t R;
    void *Z[MEL_MAX_HEADS];
    void *scratch;
    double *rowbuf; /* the row buffer (row_layout), workspace            */
    double *hrow;   /* its host mirror: rowbuf itself on a host backend  */
    void *regs;     /* [R, n] scalar registers (compute type)  */
    int64_t *iregs; /* [R, n] index registers                   */
    void *conv;     /* dtype conversion scratch, or NULL        */
    void *gather;   /* skipping: gathered rows (size_gather), or NULL */
    void *comm;     /* vocabulary parallelism: collective buffers, or NULL */
    void *dxtmp;    /* vocabulary parallelism: a chunk's dX contribution, or NULL */
    size_t bytes_Z, bytes_scratch, bytes_rows, bytes_regs, bytes_iregs, bytes_conv, bytes_gather;
    size_t bytes_comm, bytes_dxtmp;
    int n_Z;        /* heads with a Z buffer                    */
} run;

static void release(mel_ctx *ctx, run *w)
{
    for (int h = 0; h < MEL_MAX_HEADS; h++) mel_ws_free(ctx, w->Z[h], w->bytes_Z);
    mel_ws_free(ctx, w->scratch, w->bytes_scratch);
    mel_ws_free(ctx, w->rowbuf, w->bytes_rows);
    mel_ws_free(ctx, w->regs, w->bytes_regs);
    mel_ws_free(ctx, w->iregs, w->bytes_iregs);
    mel_ws_free(ctx, w->conv, w->bytes_conv);
    mel_ws_free(ctx, w->gather, w->bytes_gather);
    mel_ws_free(ctx, w->comm, w->bytes_comm);
    mel_ws_free(ctx, w->dxtmp, w->bytes_dxtmp);
    if (ctx->vp_buf == w->comm) ctx->vp_buf = NULL;
    if (w->hrow != w->rowbuf) free(w->hrow);
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

static int64_t gemm_bound_rows(const mel_transform *t, const mel_plan *p, const call *c)
{
    const double st = (double)mel_dtype_size(c->st), ct = (double)c->es;
    const double wide = st == 2 ? 2 * ct : 0; /* 16-bit: the widened copy of W, per W GEMM */
    const double s = p == &t->fb ? 2 * (st + wide) + 2 * ct : st + wide, g = p == &t->fb ? 3 : 1;
    return (int64_t)ceil(MEL_GEMM_BALANCE * (4 / ct) * s / (2 * g));
}

/* The fewest rows of an automatic chunk with logits: no chunk below R*
 * rows (gemm_bound_rows), i.e. at most n_eff / R* chunks of equal size,
 * and one chunk when fewer than 2·R* rows; within the budget's upper
 * bound (MEL_DEFAULT_WORKSPACE, CUDA: half the free device memory). */
static int64_t gemm_floor_rows(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                               const sizing *sz, int64_t per_row)
{
    const int64_t n = c->n_eff, rmin = gemm_bound_rows(t, p, c);
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
        /* the widest run of rows between two cuts: one chunk's fewest rows
         * (one group; an empty batch needs none) */
        int64_t min_rows = c->min_rows, need;
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
            const int64_t f = gemm_floor_rows(ctx, t, p, c, sz, per_row);
            if (R < f) R = f;
        }
    }
    /* automatic: at most the rows the chunks cover (the active rows when
     * skipping); a fixed chunk_rows keeps its meaning: R rows of workspace,
     * at most N */
    const int64_t cap = ctx->chunk_rows > 0 ? c->N : c->n_eff;
    if (R > cap) R = cap;
    /* chunks end at cuts (chunk_end): whole groups, at least the largest */
    if (R < c->min_rows) R = c->min_rows;
    if (R < 1) R = 1;
    *out = R;
    return MEL_OK;
}

/* The rows per chunk and the byte size of every workspace buffer of a
 * pass (logits only when need_Z); nothing is allocated. */
static mel_status layout(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
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
    w->bytes_comm = (size_t)mel_vp_buffer_bytes(ctx, p, R);
    w->bytes_dxtmp = need_Z ? (size_t)(R * c->dx_tmp_cols) * c->es : 0;
    for (int h = 0; h < MEL_MAX_HEADS && need_Z; h++) w->n_Z += c->used[h];
    return MEL_OK;
}

/* The bytes a pass holds at once: what mel_stats.peak_workspace_bytes
 * counts for it (the allocator counts requested, not rounded, bytes). */
static int64_t run_bytes(const run *w)
{
    return (int64_t)(w->n_Z * w->bytes_Z + w->bytes_scratch + w->bytes_rows + w->bytes_regs +
                     w->bytes_iregs + w->bytes_conv + w->bytes_gather + w->bytes_comm + w->bytes_dxtmp);
}

/* Size and carve the workspace of one chunk (logits only when need_Z). */
static mel_status acquire(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                          const sizing *sz, int need_Z, run *w)
{
    mel_status s = layout(ctx, t, p, c, sz, need_Z, w);
    if (s) return s;
    const int64_t R = w->R;
    size_t total = mel_ws_round(w->bytes_scratch) + mel_ws_round(w->bytes_rows) +
                   mel_ws_round(w->bytes_regs) + mel_ws_round(w->bytes_iregs) +
                   (w->bytes_conv ? mel_ws_round(w->bytes_conv) : 0) +
                   (w->bytes_gather ? mel_ws_round(w->bytes_gather) : 0) +
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
    if (s == MEL_OK && w->bytes_gather && !(w->gather = mel_ws_alloc(ctx, w->bytes_gather)))
        s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_comm && !(w->comm = mel_ws_alloc(ctx, w->bytes_comm))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->bytes_dxtmp && !(w->dxtmp = mel_ws_alloc(ctx, w->bytes_dxtmp))) s = MEL_ERR_OUT_OF_MEMORY;
    if (s == MEL_OK && w->comm) ctx->vp_buf = w->comm;
    if (s == MEL_OK) {
        w->hrow = ctx->ops->host_memory ? w->rowbuf : malloc(w->bytes_rows);
        if (!w->hrow) s = MEL_ERR_OUT_OF_MEMORY;
    }
    if (s != MEL_OK) {
        release(ctx, w);
        return mel_fail(ctx, s, "out of memory allocating the workspace for %lld rows × V = %lld",
                        (long long)R, (long long)c->V);
    }
    return MEL_OK;
}

/* ------------------------------------------------------ 3. the chunk loop */

/* The chunk fields every plan needs: rows, inputs, registers, scratch.
 * Outputs (y, count, aux, seed, input gradients, Z) are set by the caller. */
static void bind_chunk(const mel_ctx *ctx, const mel_transform *t, const call *c, const run *w,
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
}

/* Σ count over all rows (reduction MEAN), without any GEMM. */
static mel_status total_count(mel_ctx *ctx, const mel_transform *t, const call *c, double *out)
{
    *out = (double)c->N;
    if (t->count < 0 || c->N == 0) return MEL_OK;
    int64_t ch_rows = 0;
    const mel_plan *cp = ctx->vp ? &t->vcnt : &t->cnt;
    sizing sz;
    size_call(ctx, t, cp, c, &sz);
    run w;
    mel_status s = acquire(ctx, t, cp, c, &sz, 0, &w);
    if (s) return s;
    const row_bufs dev = row_layout(t, w.rowbuf, w.R), host = row_layout(t, w.hrow, w.R);
    double acc = 0;
    chunk_layout_buf L;
    if ((s = chunk_layout_alloc(ctx, c, w.R, &L))) {
        release(ctx, &w);
        return s;
    }
    for (int64_t r0 = 0; r0 < c->N && s == MEL_OK; r0 += ch_rows) {
        mel_chunk ch;
        bind_chunk(ctx, t, c, &w, &sz, r0, chunk_end(c, r0, w.R) - r0, &ch);
        chunk_layout(t, c, &L, &ch);
        ch_rows = ch.R;
        ch.count = dev.count;
        s = ctx->ops->run_rows(ctx, t, cp, &ch);
        if (s == MEL_OK && w.hrow != w.rowbuf)
            s = ctx->ops->copy(ctx, host.count, dev.count, (size_t)ch.R * sizeof(double), 0);
        for (int64_t r = 0; r < ch.R && s == MEL_OK; r++) acc += host.count[r];
    }
    chunk_layout_free(&L);
    release(ctx, &w);
    *out = acc;
    return s;
}

/* The upstream gradient and the reduction's weights, host-readable, and
 * the seed scale (dL/dy of the reduced y, over the mean's count). */
typedef struct upstream {
    const void *dy;    /* [N] (NONE) or [1], or NULL               */
    const double *wv;  /* [N] weights (WEIGHTED) or NULL           */
    void *dy_tmp, *w_tmp;
    double dy0, count, scale;
} upstream;

static mel_status get_upstream(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                               upstream *u)
{
    memset(u, 0, sizeof *u);
    const void *wts = NULL;
    int64_t n_dy = a->reduction == MEL_REDUCE_NONE ? c->N : 1;
    mel_status s;
    if (a->dy && (s = host_view(ctx, a->dy, (size_t)n_dy * mel_dtype_size(a->dy_dtype), &u->dy, &u->dy_tmp)))
        return s;
    if (a->reduction == MEL_REDUCE_WEIGHTED &&
        (s = host_view(ctx, a->weights, (size_t)c->N * sizeof(double), &wts, &u->w_tmp)))
        return s;
    u->wv = wts;
    u->count = (double)c->N;
    if (a->reduction == MEL_REDUCE_MEAN && (s = total_count(ctx, t, c, &u->count))) return s;
    u->dy0 = 1.0;
    if (u->dy && a->reduction != MEL_REDUCE_NONE) u->dy0 = read_real(u->dy, a->dy_dtype, 0);
    u->scale = u->dy0;
    if (a->reduction == MEL_REDUCE_MEAN) u->scale = u->count > 0 ? u->dy0 / u->count : 0.0;
    return MEL_OK;
}

static void free_upstream(upstream *u)
{
    free(u->dy_tmp);
    free(u->w_tmp);
}

/* Before the first chunk: zero dW and db when the caller asked to
 * overwrite them (MEL_OVERWRITE_DW). */
static mel_status zero_overwritten(mel_ctx *ctx, const mel_args *a, const call *c)
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

/* ------------------------------------------------------ row activity
 *
 * A transform whose y (and every bound aux output) is masked by a
 * predicate of per-row inputs alone (t->pred, lib/transform.c) lets the
 * engine skip the rows where the predicate is 0: their y, aux outputs and
 * input gradients are 0 and no gradient reaches dX, dW or db.  The
 * predicate is evaluated on the host by the CPU row executor before any
 * GEMM; the chunks then hold R active rows each.  On a host backend a
 * chunk's active rows are gathered (X, dX, per-row inputs); a device
 * backend walks runs of consecutive active rows instead. */
typedef struct activity {
    int on;           /* inactive rows are skipped in this call            */
    int gather;       /* gather scattered active rows (host memory)        */
    int64_t n_act;    /* active rows                                       */
    int64_t *rows;    /* [n_act] active rows, ascending (host, malloc)     */
    unsigned char *active; /* [N] 1 for an active row                      */
} activity;

static void free_activity(activity *A)
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

static mel_status eval_activity(mel_ctx *ctx, const mel_transform *t, const call *c, int want_y,
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
        s = host_view(ctx, b->data, (size_t)N * mel_dtype_size(b->dtype), c->idx[k] ? &hidx[k] : &hinp[k],
                      &tmp[k]);
    }
    const size_t spt = ((size_t)n * sizeof(void *) + 63) / 64 * 64;
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
            s = cpu->run_rows(ctx, &sh, &t->pplan[q], &ch);
            /* NaN counts as active, as where() and products treat it */
            for (int64_t r = 0; r < ch.R && s == MEL_OK; r++) A->active[r0 + r] |= !(cnt[r] == 0);
        }
    }
    free(regs), free(iregs), free(cnt), free(scratch);
    for (int k = 0; k < MEL_MAX_INPUTS; k++) free(tmp[k]);
    if (s) {
        free_activity(A);
        return s;
    }
    for (int64_t i = 0; i < N; i++)
        if (A->active[i]) A->rows[A->n_act++] = i;
    if (A->n_act == N) { /* nothing to skip: the plain path */
        free_activity(A);
        return MEL_OK;
    }
    A->on = 1;
    A->gather = ctx->ops->host_memory;
    return MEL_OK;
}

/* The next chunk from active row k0 on: R rows starting at r0 when they
 * are consecutive (rows = NULL), else the gathered rows rows[0..R). */
static void next_chunk(const activity *A, const call *c, int64_t Rmax, int64_t k0, int64_t *r0,
                       int64_t *R, const int64_t **rows)
{
    *rows = NULL;
    if (!A->on) {
        *r0 = k0;
        *R = chunk_end(c, k0, Rmax) - k0;
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

/* Zero the results of the inactive rows: y (NONE), aux outputs, input
 * gradients, dX (unless accumulated), run by run. */
static mel_status zero_inactive(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
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
        if (want_y && a->y && a->reduction == MEL_REDUCE_NONE) s = put_reals(ctx, a->y, a->y_dtype, i, zeros, len);
        for (int k = 0; k < t->n_aux && s == MEL_OK; k++)
            if (want_y && c->aux[k]) s = put_reals(ctx, c->aux[k]->out, c->aux[k]->dtype, i, zeros, len);
        for (int k = 0; k < t->n_inputs && s == MEL_OK; k++)
            if (fb && c->ginp[k]) s = put_reals(ctx, c->ginp[k]->out, c->ginp[k]->dtype, i, zeros, len);
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

/* A chunk's rows gathered into the workspace (host memory): X of every
 * head, dX of heads whose dX is computed (the caller's rows when it is
 * accumulated), and the per-row inputs; views over them. */
typedef struct gathered {
    mel_matrix x[MEL_MAX_HEADS], dx[MEL_MAX_HEADS];
    const void *in[MEL_MAX_INPUTS];
} gathered;

static void gather_rows(const mel_transform *t, const mel_args *a, const call *c, const run *w, int fb,
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
static void scatter_dx(const mel_args *a, const call *c, const gathered *g, const int64_t *rows, int64_t R)
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

/* the caller's row of chunk row r */
static int64_t row_at(const int64_t *rows, int64_t r0, int64_t r) { return rows ? rows[r] : r0 + r; }

/* seed_r = dL/dy_r: the upstream gradient times the reduction's weight,
 * written to the host row buffer and copied to the device's. */
static mel_status seed_rows(mel_ctx *ctx, const mel_args *a, const upstream *u, const run *w,
                            const row_bufs *dev, const row_bufs *host, const int64_t *rows, int64_t r0,
                            int64_t R)
{
    for (int64_t r = 0; r < R; r++) {
        double sd = u->scale;
        const int64_t i = row_at(rows, r0, r);
        if (a->reduction == MEL_REDUCE_NONE && u->dy) sd = read_real(u->dy, a->dy_dtype, i);
        else if (a->reduction == MEL_REDUCE_WEIGHTED) sd = u->dy0 * u->wv[i];
        host->seed[r] = sd;
    }
    if (w->hrow == w->rowbuf) return MEL_OK;
    return ctx->ops->copy(ctx, dev->seed, host->seed, (size_t)R * sizeof(double), 1);
}

/* Per-row results of a chunk to the caller: y (reduction NONE) or its
 * running total, aux outputs, input gradients.  Gathered rows (rows !=
 * NULL) are only ever host memory. */
static mel_status collect_rows(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                               const upstream *u, const run *w, const row_bufs *host, int want_y, int fb,
                               const int64_t *rows, int64_t r0, int64_t R, double *total)
{
    mel_status s;
    if (w->hrow != w->rowbuf && (s = ctx->ops->copy(ctx, w->hrow, w->rowbuf, w->bytes_rows, 0))) return s;
    if (rows) {
        for (int64_t r = 0; r < R; r++) {
            const int64_t i = rows[r];
            if (a->reduction == MEL_REDUCE_NONE) {
                if (want_y && a->y) write_real(a->y, a->y_dtype, i, host->y[r]);
            } else {
                *total += a->reduction == MEL_REDUCE_WEIGHTED ? u->wv[i] * host->y[r] : host->y[r];
            }
            for (int k = 0; k < t->n_aux; k++)
                if (c->aux[k] && want_y) write_real(c->aux[k]->out, c->aux[k]->dtype, i, host->aux[k][r]);
            for (int k = 0; k < t->n_inputs; k++)
                if (fb && c->ginp[k]) write_real(c->ginp[k]->out, c->ginp[k]->dtype, i, host->ginp[k][r]);
        }
        return MEL_OK;
    }
    if (a->reduction == MEL_REDUCE_NONE) {
        if (want_y && a->y && (s = put_reals(ctx, a->y, a->y_dtype, r0, host->y, R))) return s;
    } else {
        for (int64_t r = 0; r < R; r++)
            *total += a->reduction == MEL_REDUCE_WEIGHTED ? u->wv[r0 + r] * host->y[r] : host->y[r];
    }
    for (int k = 0; k < t->n_aux; k++)
        if (c->aux[k] && want_y && (s = put_reals(ctx, c->aux[k]->out, c->aux[k]->dtype, r0, host->aux[k], R)))
            return s;
    for (int k = 0; k < t->n_inputs; k++)
        if (fb && c->ginp[k] && (s = put_reals(ctx, c->ginp[k]->out, c->ginp[k]->dtype, r0, host->ginp[k], R)))
            return s;
    return MEL_OK;
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
    if (!sum) return mel_gemm_grad_x(ctx, w->Z[h], R, wm, dx, r0, accumulate, w->conv);
    if (c->st == MEL_BF16 || c->st == MEL_F16) {
        ctx->vp_dx16 = 1;
        s = mel_gemm_grad_x(ctx, w->Z[h], R, wm, dx, r0, accumulate, w->conv);
        ctx->vp_dx16 = 0;
        return s;
    }
    const int64_t D = c->D[h];
    if (!accumulate) {
        if ((s = mel_gemm_grad_x(ctx, w->Z[h], R, wm, dx, r0, 0, w->conv))) return s;
        return mel_vp_sum(ctx, (char *)dx->data + (size_t)(r0 * dx->ld) * c->es, c->ct, R, D, dx->ld);
    }
    mel_matrix tmp = mel_mat(w->dxtmp, c->ct, R, D, D);
    if ((s = mel_gemm_grad_x(ctx, w->Z[h], R, wm, &tmp, 0, 0, w->conv)) ||
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

/* The workspace of the count pass of MEAN (total_count), without running it. */
static mel_status count_pass_bytes(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                                   int64_t *out)
{
    *out = 0;
    if (a->reduction != MEL_REDUCE_MEAN || t->count < 0 || c->N == 0) return MEL_OK;
    const mel_plan *cp = ctx->vp ? &t->vcnt : &t->cnt;
    sizing sz;
    size_call(ctx, t, cp, c, &sz);
    run w;
    mel_status s = layout(ctx, t, cp, c, &sz, 0, &w);
    if (s == MEL_OK) *out = run_bytes(&w);
    return s;
}

/* A call, or with plan != NULL its plan only (mel_plan_call): the same
 * validation, activity and sizing, no GEMM and no workspace. */
static mel_status execute(mel_ctx *ctx, const mel_transform *t, const mel_args *a, int want_y,
                          int want_grads, mel_call_plan *plan)
{
    double t0 = now(), gemm_s = 0;
    int64_t flops = 0;
    call c;
    mel_clear_error(ctx);
    mel_status s = validate(ctx, t, a, want_grads, plan != NULL, &c);
    ctx->ws_cur = 0;
    ctx->ws_peak = 0;
    ctx->comm_bytes = 0;
    ctx->comm_seconds = 0;

    /* forward only, or forward and backward (fb) */
    int any_dz = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++) any_dz |= c.want_dz[h];
    int any_ginp = 0;
    for (int k = 0; k < MEL_MAX_INPUTS; k++) any_ginp |= c.ginp[k] != NULL;
    const int fb = want_grads && (any_dz || any_ginp);
    if (s == MEL_OK && want_grads && !want_y && !fb)
        s = mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                     "mel_backward: no gradient buffer is bound (mel_args_grad_head / mel_args_grad_input)");
    if (ctx->vp) {
        /* every process validated, and they make the same call: the same
         * collectives follow on all of them */
        int dx_bound[MEL_MAX_HEADS] = {0};
        for (int h = 0; h < MEL_MAX_HEADS && s == MEL_OK; h++) {
            const mel_head_args *ha = &a->head[h];
            dx_bound[h] = c.want_dz[h] && ha->dx.data != NULL;
            if (dx_bound[h] && (ha->flags & MEL_ACCUMULATE_DX) && !mel_vp_partial_dx(ctx) &&
                c.st != MEL_BF16 && c.st != MEL_F16 && c.D[h] > c.dx_tmp_cols)
                c.dx_tmp_cols = c.D[h];
        }
        int64_t shape[2 + 3 * MEL_MAX_HEADS + 8];
        int ns = 0;
        shape[ns++] = c.N;
        shape[ns++] = c.st;
        for (int h = 0; h < MEL_MAX_HEADS; h++) {
            shape[ns++] = c.D[h];
            shape[ns++] = c.used[h];
            shape[ns++] = dx_bound[h];
        }
        shape[ns++] = want_y;
        shape[ns++] = want_grads;
        shape[ns++] = fb;
        shape[ns++] = a ? (int64_t)a->reduction : 0;
        shape[ns++] = plan != NULL;
        shape[ns++] = ctx->row_skipping;
        shape[ns++] = t ? t->n : 0;
        shape[ns++] = t ? t->n_fwd : 0;
        s = mel_vp_agree(ctx, s, c.V, shape, ns);
    }
    if (s) {
        free_layout(&c);
        return s;
    }
    const mel_plan *xplan = ctx->vp ? (fb ? &t->vfb : &t->vfwd) : fb ? &t->fb : &t->fwd;
    if (!plan && want_grads && (s = zero_overwritten(ctx, a, &c))) {
        free_layout(&c);
        return s;
    }

    upstream u;
    memset(&u, 0, sizeof u);
    activity A;
    memset(&A, 0, sizeof A);
    chunk_layout_buf L;
    memset(&L, 0, sizeof L);
    int64_t count_bytes = 0;
    if (plan) s = count_pass_bytes(ctx, t, a, &c, &count_bytes);
    else s = get_upstream(ctx, t, a, &c, &u);
    if (s) goto out;
    /* row activity before any GEMM: the chunks then hold active rows */
    if ((s = eval_activity(ctx, t, &c, want_y, &A))) goto out;
    if (A.on) c.n_eff = A.n_act;

    sizing sz;
    size_call(ctx, t, xplan, &c, &sz);
    if (A.on && A.gather) size_gather(t, &c, fb, a, &sz);
    run w;
    memset(&w, 0, sizeof w);
    if (plan) {
        /* the same layout and chunk walk as the call, nothing run */
        if (c.n_eff > 0 && (s = layout(ctx, t, xplan, &c, &sz, 1, &w))) goto out;
        int64_t chunks = 0;
        for (int64_t k0 = 0; k0 < c.n_eff; chunks++) {
            int64_t r0, R;
            const int64_t *rows;
            next_chunk(&A, &c, w.R, k0, &r0, &R, &rows);
            k0 += R;
        }
        int64_t main_bytes = c.n_eff > 0 ? run_bytes(&w) : 0;
        memset(plan, 0, sizeof *plan);
        plan->rows = c.N;
        plan->active_rows = A.on ? A.n_act : c.N;
        plan->row_skipping = A.on;
        plan->chunk_rows = w.R;
        plan->chunks = chunks;
        plan->peak_workspace_bytes = main_bytes > count_bytes ? main_bytes : count_bytes;
        goto out;
    }
    if (A.on && (s = zero_inactive(ctx, t, a, &c, &A, want_y, fb))) goto out;
    double total = 0;
    int64_t chunks = 0;
    if (c.n_eff > 0) {
        if ((s = acquire(ctx, t, xplan, &c, &sz, 1, &w))) goto out;
        if ((s = chunk_layout_alloc(ctx, &c, w.R, &L))) {
            release(ctx, &w);
            goto out;
        }
        const row_bufs dev = row_layout(t, w.rowbuf, w.R), host = row_layout(t, w.hrow, w.R);
        for (int64_t k0 = 0; k0 < c.n_eff && s == MEL_OK; chunks++) {
            int64_t r0, R;
            const int64_t *rows;
            next_chunk(&A, &c, w.R, k0, &r0, &R, &rows);
            k0 += R;
            mel_chunk ch;
            bind_chunk(ctx, t, &c, &w, &sz, r0, R, &ch);
            chunk_layout(t, &c, &L, &ch);
            const mel_matrix *xs[MEL_MAX_HEADS], *dxs[MEL_MAX_HEADS];
            gathered g;
            for (int h = 0; h < MEL_MAX_HEADS; h++) xs[h] = &a->head[h].x, dxs[h] = &a->head[h].dx;
            int64_t gr0 = r0;
            if (rows) {
                gather_rows(t, a, &c, &w, fb, rows, R, &g);
                for (int h = 0; h < MEL_MAX_HEADS; h++) xs[h] = &g.x[h], dxs[h] = &g.dx[h];
                for (int k = 0; k < t->n_inputs; k++) {
                    if (c.idx[k]) ch.idx[k] = g.in[k];
                    if (c.inp[k]) ch.inp[k] = g.in[k];
                }
                ch.r0 = gr0 = 0;
            }
            double g0 = gemm_begin(ctx);
            s = chunk_logits(ctx, a, &c, &w, xs, gr0, R, &flops);
            gemm_s += gemm_end(ctx, g0);
            if (s) break;

            for (int h = 0; h < MEL_MAX_HEADS; h++) ch.Z[h] = c.used[h] ? w.Z[h] : NULL;
            ch.y = dev.y;
            for (int k = 0; k < t->n_aux; k++)
                if (c.aux[k]) ch.aux[k] = dev.aux[k];
            if (fb) {
                for (int k = 0; k < t->n_inputs; k++)
                    if (c.ginp[k]) ch.ginp[k] = dev.ginp[k];
                if ((s = seed_rows(ctx, a, &u, &w, &dev, &host, rows, r0, R))) break;
                ch.seed = dev.seed;
            }
            if ((s = ctx->ops->run_rows(ctx, t, xplan, &ch))) break;
            if ((s = collect_rows(ctx, t, a, &c, &u, &w, &host, want_y, fb, rows, r0, R, &total))) break;

            if (!fb) continue;
            g0 = gemm_begin(ctx);
            s = chunk_backprop(ctx, a, &c, &w, xs, dxs, gr0, R, &flops);
            gemm_s += gemm_end(ctx, g0);
            if (s == MEL_OK && rows) scatter_dx(a, &c, &g, rows, R);
        }
    }
    const int64_t R = w.R;
    release(ctx, &w);
    if (s == MEL_OK && ctx->ops->sync) s = ctx->ops->sync(ctx); /* the last GEMMs may be queued */
    if (s) goto out;
    if (ctx->ops->gemm_seconds) { /* device time between the marks (CUDA events) */
        const double ds = ctx->ops->gemm_seconds(ctx);
        if (ds >= 0) gemm_s = ds;
    }

    /* 4. finish: the reduced y and the statistics */
    if (want_y && a->y && a->reduction != MEL_REDUCE_NONE) {
        double yv = total;
        if (a->reduction == MEL_REDUCE_MEAN) yv = u.count > 0 ? total / u.count : 0.0;
        if ((s = put_reals(ctx, a->y, a->y_dtype, 0, &yv, 1))) goto out;
    }
    ctx->stats.chunk_rows = R;
    ctx->stats.chunks = chunks;
    ctx->stats.peak_workspace_bytes = ctx->ws_peak;
    ctx->stats.gemm_flops = flops;
    ctx->stats.gemm_seconds = gemm_s;
    ctx->stats.seconds = now() - t0;
    ctx->active_rows = A.on ? A.n_act : c.N;
out:
    chunk_layout_free(&L);
    free_layout(&c);
    free_activity(&A);
    free_upstream(&u);
    return s;
}

/* execute between the backend's enter and leave (CUDA: the context's device) */
static mel_status call_execute(mel_ctx *ctx, const mel_transform *t, const mel_args *a, int want_y,
                               int want_grads, mel_call_plan *out)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    mel_status s = ctx->ops->enter ? ctx->ops->enter(ctx) : MEL_OK;
    if (s) return s;
    s = execute(ctx, t, a, want_y, want_grads, out);
    if (ctx->ops->leave) ctx->ops->leave(ctx);
    return s;
}

mel_status mel_forward(mel_ctx *ctx, const mel_transform *t, const mel_args *a)
{
    return call_execute(ctx, t, a, 1, 0, NULL);
}

mel_status mel_backward(mel_ctx *ctx, const mel_transform *t, const mel_args *a)
{
    return call_execute(ctx, t, a, 0, 1, NULL);
}

mel_status mel_forward_backward(mel_ctx *ctx, const mel_transform *t, const mel_args *a)
{
    return call_execute(ctx, t, a, 1, 1, NULL);
}

mel_status mel_plan_call(mel_ctx *ctx, const mel_transform *t, const mel_args *a, mel_mode mode,
                         mel_call_plan *out)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    if (!out) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_plan_call: out is NULL");
    if ((unsigned)mode > MEL_MODE_FORWARD_BACKWARD)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_plan_call: mode = %d is not a mel_mode", (int)mode);
    return call_execute(ctx, t, a, mode != MEL_MODE_BACKWARD, mode != MEL_MODE_FORWARD, out);
}
