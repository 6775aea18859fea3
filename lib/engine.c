/* The chunk engine's entry points: mel_forward, mel_backward,
 * mel_forward_backward and mel_plan_call.  A call runs, top to bottom:
 *
 *   1. validate   the caller's bindings resolved into a `call`
 *                 (lib/validate.c); under vocabulary parallelism every
 *                 process agrees on the call's shape
 *   2. prepare    MEL_OVERWRITE_DW, dL/dy and the count pass of MEAN
 *                 (lib/upstream.c), row activity (lib/activity.c)
 *   3. execute    an executor plans a shape for the budget and runs it
 *                 (lib/exec_rows.c: chunks of whole rows; lib/workspace.c
 *                 sizes them, lib/stage.c moves per-row values)
 *   4. finish     the reduced y, the call's statistics.
 *
 * lib/engine.h lists the files and their interface. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* The executor of a call (include/mel.h, mel_set_tile_cols): the tiled
 * one when tile columns are set; automatic: the row executor, unless an
 * explicit budget leaves its chunks below R* rows (or without one row) and
 * the tiled executor's chunks cost less per flop (eng_gemm_cost, its extra
 * logits GEMMs counted). */
static mel_status pick_executor(const eng_job *j, const mel_executor **ex)
{
    mel_ctx *ctx = j->ctx;
    const char *why = eng_tiles_unsupported(j);
    *ex = &mel_exec_rows;
    if (ctx->tile_cols > 0) {
        if (why)
            return mel_fail(ctx, MEL_ERR_UNSUPPORTED,
                            "tile_cols = %lld: the tiled executor does not run %s yet (tile_cols = 0 runs whole rows)",
                            (long long)ctx->tile_cols, why);
        *ex = &mel_exec_tiles;
        return MEL_OK;
    }
    if (why || ctx->workspace_limit <= 0 || ctx->chunk_rows > 0 || j->c->n_eff <= 0) return MEL_OK;
    eng_shape rows, tiles;
    mel_status s = mel_exec_rows.plan(j, &rows);
    /* 2·R*: where whole rows beat tiles by the executor balance (eng_gemm_cost) */
    if (s == MEL_OK &&
        (rows.chunk_rows >= 2 * eng_gemm_bound_rows(j->xplan, j->c) || rows.chunk_rows >= j->c->n_eff))
        return MEL_OK;
    if (s != MEL_OK && s != MEL_ERR_BUDGET) return s;
    char rows_msg[512];
    snprintf(rows_msg, sizeof rows_msg, "%s", s ? mel_last_error(ctx) : "");
    mel_status st = mel_exec_tiles.plan(j, &tiles);
    if (st) { /* neither fits: the row executor's message, with the tiles' */
        char tiles_msg[512];
        snprintf(tiles_msg, sizeof tiles_msg, "%s", mel_last_error(ctx));
        if (s) return mel_fail(ctx, MEL_ERR_BUDGET, "%s; in tiles: %s", rows_msg, tiles_msg);
        mel_clear_error(ctx);
        return MEL_OK;
    }
    mel_clear_error(ctx);
    /* by global widths under vocabulary parallelism: every process decides alike */
    const int g_rows = j->fb ? 3 : 1;
    const int64_t V = ctx->vp ? mel_vp_total(ctx) : j->c->V;
    if (s == MEL_OK && eng_gemm_cost(rows.chunk_rows, V, j->c->es, g_rows) <=
                           eng_gemm_cost(tiles.chunk_rows, tiles.cost_cols, j->c->es, eng_tile_gemms(j)))
        return MEL_OK;
    *ex = &mel_exec_tiles;
    return MEL_OK;
}

/* A call, or with plan != NULL its plan only (mel_plan_call): the same
 * validation, activity and sizing, no GEMM and no workspace. */
static mel_status execute(mel_ctx *ctx, const mel_transform *t, const mel_args *a, int want_y,
                          int want_grads, mel_call_plan *plan)
{
    double t0 = eng_now();
    call c;
    mel_clear_error(ctx);
    mel_status s = eng_validate(ctx, t, a, want_grads, plan != NULL, &c);
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
        int64_t shape[2 + 3 * MEL_MAX_HEADS + 10];
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
        /* the executor choice makes collectives: the same settings everywhere */
        shape[ns++] = ctx->tile_cols;
        shape[ns++] = ctx->workspace_limit > 0;
        s = mel_vp_agree(ctx, s, c.V, shape, ns);
    }
    if (s) {
        eng_free_layout(&c);
        return s;
    }
    const mel_plan *xplan = ctx->vp ? (fb ? &t->vfb : &t->vfwd) : fb ? &t->fb : &t->fwd;
    if (!plan && want_grads && (s = eng_zero_overwritten(ctx, a, &c))) {
        eng_free_layout(&c);
        return s;
    }

    upstream u;
    memset(&u, 0, sizeof u);
    activity A;
    memset(&A, 0, sizeof A);
    int64_t count_bytes = 0;
    if (plan) s = eng_count_pass_bytes(ctx, t, a, &c, &count_bytes);
    else s = eng_get_upstream(ctx, t, a, &c, &u);
    if (s) goto out;
    /* row activity before any GEMM: the chunks then hold active rows */
    if ((s = eng_eval_activity(ctx, t, &c, want_y, &A))) goto out;
    eng_skip_if_runs_pay(xplan, &c, &A);
    if (A.on) c.n_eff = A.n_act;

    const eng_job job = {ctx, t, a, &c, xplan, want_y, fb, plan ? NULL : &u, &A};
    const mel_executor *ex = NULL;
    if ((s = pick_executor(&job, &ex))) goto out;
    eng_shape sh;
    if (plan) {
        if ((s = ex->plan(&job, &sh))) goto out;
        memset(plan, 0, sizeof *plan);
        plan->rows = c.N;
        plan->active_rows = A.on ? A.n_act : c.N;
        plan->row_skipping = A.on;
        plan->chunk_rows = sh.chunk_rows;
        plan->chunks = sh.chunks;
        plan->peak_workspace_bytes = sh.bytes > count_bytes ? sh.bytes : count_bytes;
        ctx->tile_cols_used = sh.tile_cols;
        goto out;
    }
    if (A.on && (s = eng_zero_inactive(ctx, t, a, &c, &A, want_y, fb))) goto out;
    s = ex->run(&job, &sh);
    if (s == MEL_OK && ctx->ops->sync) s = ctx->ops->sync(ctx); /* the last GEMMs may be queued */
    if (s) goto out;
    double gemm_s = sh.gemm_seconds;
    if (ctx->ops->gemm_seconds) { /* device time between the marks (CUDA events) */
        const double ds = ctx->ops->gemm_seconds(ctx);
        if (ds >= 0) gemm_s = ds;
    }

    /* finish: the reduced y and the statistics */
    if (want_y && a->y && a->reduction != MEL_REDUCE_NONE) {
        double yv = sh.total;
        if (a->reduction == MEL_REDUCE_MEAN) yv = u.count > 0 ? sh.total / u.count : 0.0;
        if ((s = eng_put_reals(ctx, a->y, a->y_dtype, 0, &yv, 1))) goto out;
    }
    ctx->stats.chunk_rows = sh.chunk_rows;
    ctx->tile_cols_used = sh.tile_cols;
    ctx->stats.chunks = sh.chunks;
    ctx->stats.peak_workspace_bytes = ctx->ws_peak;
    ctx->stats.gemm_flops = sh.flops;
    ctx->stats.gemm_seconds = gemm_s;
    ctx->stats.seconds = eng_now() - t0;
    ctx->active_rows = A.on ? A.n_act : c.N;
out:
    eng_free_layout(&c);
    eng_free_activity(&A);
    eng_free_upstream(&u);
    return s;
}

/* The end of every call, a failed one included: wait for the work the
 * backend still has queued (a device's kernels must not touch the
 * caller's buffers after the call returns).  The first error and its
 * message stay; an error found while waiting after it is appended. */
static mel_status sync_on_exit(mel_ctx *ctx, mel_status s)
{
    if (!ctx->ops->sync) return s;
    if (s == MEL_OK) return ctx->ops->sync(ctx);
    char first[sizeof ctx->err];
    snprintf(first, sizeof first, "%s", ctx->err);
    if (ctx->ops->sync(ctx) != MEL_OK) {
        char both[2 * sizeof ctx->err + 64];
        snprintf(both, sizeof both, "%s; then, waiting for the work queued before it: %s", first, ctx->err);
        snprintf(ctx->err, sizeof ctx->err, "%.*s", (int)sizeof ctx->err - 1, both);
    } else {
        snprintf(ctx->err, sizeof ctx->err, "%s", first);
    }
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
    s = sync_on_exit(ctx, execute(ctx, t, a, want_y, want_grads, out));
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
