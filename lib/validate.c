/* Validation and binding: the caller's mel_args resolved against the
 * transform into a `call` (shapes, dtypes, the bound inputs of every slot,
 * the heads read and those whose dZ is wanted), every error named with the
 * argument and its value.  Nothing here reads X or W except the optional
 * NaN/Inf scan (mel_set_check_finite). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "half.h"

static const char *head_label(int h) { return h == 0 ? "head 0" : h == 1 ? "head 1 (teacher/reference)" : "head"; }

/* the argument kind of "x", "w", "bias" (mel_last_error_detail) */
static mel_arg_kind kind_of(const char *what)
{
    return !strcmp(what, "x") ? MEL_ARG_X : !strcmp(what, "w") ? MEL_ARG_W : MEL_ARG_BIAS;
}

static mel_status check_matrix(mel_ctx *ctx, const char *what, int h, const mel_matrix *m, int dry)
{
    const mel_arg_kind k = kind_of(what);
    if (!m->data && !dry)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, k, h, NULL, -1, -1, "%s of head %d: data is NULL", what, h);
    if (m->rows < 0 || m->cols < 1)
        return mel_fail_arg(ctx, MEL_ERR_SHAPE, k, h, NULL, -1, -1,
                            "%s of head %d: shape [%lld, %lld] is invalid (rows >= 0, cols >= 1)", what, h,
                            (long long)m->rows, (long long)m->cols);
    if (m->ld < m->cols)
        return mel_fail_arg(ctx, MEL_ERR_SHAPE, k, h, NULL, -1, -1, "%s of head %d: ld = %lld is smaller than cols = %lld",
                            what, h, (long long)m->ld, (long long)m->cols);
    int64_t tmp;
    if (!mel_mul_ok(m->rows, m->ld, &tmp) || !mel_mul_ok(tmp, 8, &tmp))
        return mel_fail_arg(ctx, MEL_ERR_OVERFLOW, k, h, NULL, -1, -1, "%s of head %d: rows·ld overflows int64", what, h);
    return MEL_OK;
}

/* MEL_ERR_NONFINITE naming the first NaN/Inf of a [rows, cols] view */
static mel_status check_finite(mel_ctx *ctx, const char *what, int h, const void *data, mel_dtype dt,
                               int64_t rows, int64_t cols, int64_t ld)
{
    const void *hv;
    void *tmp;
    size_t bytes = (size_t)((rows > 0 ? (rows - 1) * ld : 0) + cols) * mel_dtype_size(dt);
    mel_status s = eng_host_view(ctx, data, rows > 0 ? bytes : 0, &hv, &tmp);
    if (s) return s;
    for (int64_t i = 0; i < rows && s == MEL_OK; i++)
        for (int64_t j = 0; j < cols; j++) {
            double v = mel_float_at(hv, dt, i * ld + j);
            if (!isfinite(v)) {
                if (rows == 1 && h < 0) /* a per-row input */
                    s = mel_fail_arg(ctx, MEL_ERR_NONFINITE, MEL_ARG_INPUT, -1, what, j, -1, "%s[%lld] = %g", what,
                                     (long long)j, v);
                else if (rows == 1 && !strcmp(what, "bias")) /* a vector: its element j */
                    s = mel_fail_arg(ctx, MEL_ERR_NONFINITE, MEL_ARG_BIAS, h, NULL, j, -1,
                                     "%s of head %d: [%lld] = %g", what, h, (long long)j, v);
                else
                    s = mel_fail_arg(ctx, MEL_ERR_NONFINITE, kind_of(what), h, NULL, i, j,
                                     "%s of head %d: [%lld, %lld] = %g", what, h, (long long)i, (long long)j, v);
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
                return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_HEAD, h, NULL, -1, -1,
                                    "head %d is bound but transform '%s' reads no head %d", h, t->name, h);
            continue;
        }
        const mel_head_args *ha = &a->head[h];
        if (!ha->set)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_HEAD, h, NULL, -1, -1,
                                "%s is not bound: transform '%s' reads its logits (mel_args_head(a, %d, ...))",
                                head_label(h), t->name, h);
        mel_status s;
        if ((s = check_matrix(ctx, "x", h, &ha->x, c->dry)) || (s = check_matrix(ctx, "w", h, &ha->w, c->dry)))
            return s;
        if (ha->x.dtype != ha->w.dtype)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_W, h, NULL, -1, -1,
                                "head %d: x is %s but w is %s (they must match)",
                            h, mel_dtype_name(ha->x.dtype), mel_dtype_name(ha->w.dtype));
        if (ha->x.dtype != MEL_F32 && ha->x.dtype != MEL_F64 && ha->x.dtype != MEL_BF16 &&
            ha->x.dtype != MEL_F16)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_X, h, NULL, -1, -1,
                                "head %d: x dtype %s (%d) is not a float dtype",
                            h, mel_dtype_name(ha->x.dtype), (int)ha->x.dtype);
        if (ha->x.cols != ha->w.cols)
            return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_W, h, NULL, -1, -1,
                                "head %d: x is [%lld, %lld] but w is [%lld, %lld]: D differs",
                            h, (long long)ha->x.rows, (long long)ha->x.cols, (long long)ha->w.rows,
                            (long long)ha->w.cols);
        if (ha->w.rows < 1)
            return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_W, h, NULL, -1, -1, "head %d: w has %lld rows; V must be >= 1", h,
                            (long long)ha->w.rows);
        if (first < 0) {
            first = h;
            c->N = ha->x.rows;
            c->V = ha->w.rows;
            c->st = ha->x.dtype;
            c->ct = ha->x.dtype == MEL_F64 ? MEL_F64 : MEL_F32;
        } else {
            if (ha->x.rows != c->N)
                return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_X, h, NULL, -1, -1,
                                    "head %d: x has %lld rows but head %d has %lld",
                                h, (long long)ha->x.rows, first, (long long)c->N);
            if (ha->w.rows != c->V)
                return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_W, h, NULL, -1, -1,
                                    "head %d: w has %lld rows (V) but head %d has %lld",
                                h, (long long)ha->w.rows, first, (long long)c->V);
            if (ha->x.dtype != c->st)
                return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_HEAD, h, NULL, -1, -1,
                                    "head %d is %s but head %d is %s",
                                h, mel_dtype_name(ha->x.dtype), first, mel_dtype_name(c->st));
        }
        c->used[h] = 1;
        c->D[h] = ha->x.cols;
    }
    c->es = mel_dtype_size(c->ct);
    if (t->seg_len > 0 && c->N % t->seg_len != 0)
        return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_X, first, NULL, -1, -1,
                            "x has N = %lld rows, not a multiple of the segment length %lld "
                        "(seq_len) of transform '%s'", (long long)c->N, (long long)t->seg_len, t->name);

    return MEL_OK;
}

/* "it reads the index inputs labels, ..." (index) or "it reads the
 * per-row inputs mask, advantages" of transform t, for messages */
static const char *reads(const mel_transform *t, int index)
{
    static _Thread_local char buf[256];
    snprintf(buf, sizeof buf, "it reads %s", index ? "the index inputs" : "the per-row inputs");
    int any = 0;
    for (int k = 0; k < t->n_inputs; k++)
        if (t->inputs[k].is_index == index) {
            size_t l = strlen(buf);
            snprintf(buf + l, sizeof buf - l, "%s %s", any ? "," : "", t->inputs[k].name);
            any = 1;
        }
    if (!any) snprintf(buf, sizeof buf, "it reads no %s", index ? "index input" : "per-row input");
    return buf;
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
        const mel_arg_kind kind = d->is_index ? MEL_ARG_INDEX : MEL_ARG_INPUT;
        if (!b || !b->data)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, kind, -1, d->name, -1, -1,
                                "input '%s' of transform '%s' is not bound (it is required: mel_args_%s(a, \"%s\", ...))",
                                d->name, t->name, d->is_index ? "index" : "input", d->name);
        if (b->n != c->N)
            return mel_fail_arg(ctx, MEL_ERR_SHAPE, kind, -1, d->name, -1, -1,
                                "input '%s' has %lld values but x has %lld rows", d->name, (long long)b->n,
                                (long long)c->N);
        if (d->is_index) {
            if (b->dtype != MEL_I32 && b->dtype != MEL_I64)
                return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, kind, -1, d->name, -1, -1,
                                    "index '%s': dtype %s is not i32 or i64", d->name, mel_dtype_name(b->dtype));
            const void *hv;
            void *tmp;
            mel_status s = eng_host_view(ctx, b->data, (size_t)b->n * mel_dtype_size(b->dtype), &hv, &tmp);
            if (s) return s;
            /* vocabulary padding: only the first `limit` columns are real;
             * labels are global column ids under vocabulary parallelism */
            const int64_t Vt = ctx->vp ? mel_vp_total(ctx) : c->V;
            int64_t hi = d->limit > 0 && d->limit < Vt ? d->limit : Vt;
            for (int64_t i = 0; i < b->n && !d->layout; i++) { /* sequence ids: lib/layout.c */
                int64_t v = b->dtype == MEL_I32 ? ((const int32_t *)hv)[i] : ((const int64_t *)hv)[i];
                if ((v < 0 || v >= hi) && v != d->ignore_index) {
                    free(tmp);
                    return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, kind, -1, d->name, i, -1,
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
                return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, kind, -1, d->name, -1, -1,
                                    "input '%s': dtype %s is not f32 or f64", d->name, mel_dtype_name(b->dtype));
            c->inp[k] = b;
        }
    }
    for (int i = 0; i < a->n_index; i++)
        if (mel_find_input(t->inputs, t->n_inputs, a->index[i].name) < 0 ||
            !t->inputs[mel_find_input(t->inputs, t->n_inputs, a->index[i].name)].is_index)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_INDEX, -1, a->index[i].name, -1, -1,
                                "index '%s' is bound but is not an index input of transform '%s' (%s)",
                                a->index[i].name, t->name, reads(t, 1));
    for (int i = 0; i < a->n_input; i++) {
        int k = mel_find_input(t->inputs, t->n_inputs, a->input[i].name);
        if (k < 0 || t->inputs[k].is_index)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_INPUT, -1, a->input[i].name, -1, -1,
                                "input '%s' is bound but is not a scalar input of transform '%s' (%s)",
                                a->input[i].name, t->name, reads(t, 0));
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
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_REDUCTION, -1, NULL, -1, -1,
                            "reduction = %d is not a mel_reduction", (int)a->reduction);
    if (a->reduction == MEL_REDUCE_WEIGHTED && !a->weights)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_REDUCTION, -1, NULL, -1, -1,
                            "reduction MEL_REDUCE_WEIGHTED needs weights (got NULL)");
    if (a->y && a->y_dtype != MEL_F32 && a->y_dtype != MEL_F64)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_OUTPUT, -1, NULL, -1, -1,
                            "output y: dtype %s is not f32 or f64", mel_dtype_name(a->y_dtype));
    if (a->dy && a->dy_dtype != MEL_F32 && a->dy_dtype != MEL_F64)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_GRAD_OUTPUT, -1, NULL, -1, -1,
                            "grad_output: dtype %s is not f32 or f64", mel_dtype_name(a->dy_dtype));
    for (int i = 0; i < a->n_aux; i++) {
        int k;
        for (k = 0; k < t->n_aux; k++)
            if (!strcmp(t->aux_name[k], a->aux[i].name)) break;
        if (k == t->n_aux)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_AUX, -1, a->aux[i].name, -1, -1,
                                "aux output '%s' is not an output of transform '%s'", a->aux[i].name, t->name);
        if (a->aux[i].out && a->aux[i].dtype != MEL_F32 && a->aux[i].dtype != MEL_F64)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_AUX, -1, a->aux[i].name, -1, -1,
                                "aux output '%s': dtype %s is not f32 or f64",
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
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, ha->dx.data ? MEL_ARG_GRAD_X : ha->dw.data ? MEL_ARG_GRAD_W
                                : MEL_ARG_GRAD_BIAS, h, NULL, -1, -1,
                            "gradients of head %d requested, but head %d is not a differentiable head of '%s'",
                            h, h, t->name);
        if (!grads) continue;
        if (ha->dx.data) {
            if (ha->dx.rows != c->N || ha->dx.cols != c->D[h] || ha->dx.ld < ha->dx.cols)
                return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_GRAD_X, h, NULL, -1, -1,
                                "dx of head %d is [%lld, %lld] (ld %lld); want [%lld, %lld]",
                                h, (long long)ha->dx.rows, (long long)ha->dx.cols, (long long)ha->dx.ld,
                                (long long)c->N, (long long)c->D[h]);
            if (ha->dx.dtype != c->st)
                return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_GRAD_X, h, NULL, -1, -1,
                                "dx of head %d is %s; want %s (x's dtype)",
                                h, mel_dtype_name(ha->dx.dtype), mel_dtype_name(c->st));
        }
        if (ha->dw.data) {
            if (ha->dw.rows != c->V || ha->dw.cols != c->D[h] || ha->dw.ld < ha->dw.cols)
                return mel_fail_arg(ctx, MEL_ERR_SHAPE, MEL_ARG_GRAD_W, h, NULL, -1, -1,
                                "dw of head %d is [%lld, %lld] (ld %lld); want [%lld, %lld]",
                                h, (long long)ha->dw.rows, (long long)ha->dw.cols, (long long)ha->dw.ld,
                                (long long)c->V, (long long)c->D[h]);
            if (ha->dw.dtype != c->ct)
                return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_GRAD_W, h, NULL, -1, -1,
                                "dw of head %d is %s; want %s (dW is "
                                "accumulated in %s)", h, mel_dtype_name(ha->dw.dtype),
                                mel_dtype_name(c->ct), mel_dtype_name(c->ct));
        }
        if (ha->db && !ha->bias)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_GRAD_BIAS, h, NULL, -1, -1,
                                "db of head %d requested but head %d has no bias", h, h);
        c->want_dz[h] = ha->dx.data || ha->dw.data || ha->db;
    }
    for (int i = 0; i < a->n_grad_input; i++) {
        int k = mel_find_input(t->inputs, t->n_inputs, a->grad_input[i].name);
        if (k < 0 || t->inputs[k].is_index || !t->inputs[k].differentiable)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_GRAD_INPUT, -1, a->grad_input[i].name, -1, -1,
                            "gradient of input '%s' requested, but it is not a differentiable input of '%s'",
                            a->grad_input[i].name, t->name);
        if (a->grad_input[i].out && a->grad_input[i].dtype != MEL_F32 && a->grad_input[i].dtype != MEL_F64)
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_GRAD_INPUT, -1, a->grad_input[i].name, -1, -1,
                                "gradient of input '%s': dtype %s is not f32 or f64",
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

mel_status eng_validate(mel_ctx *ctx, const mel_transform *t, const mel_args *a,
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
        (s = eng_check_layout(ctx, t, c)))
        return s;
    c->n_eff = c->N;
    return MEL_OK;
}
