/* Context, status, errors, workspace accounting, parameters and call args. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "backend.h"

int mel_version(void) { return MEL_VERSION_NUMBER; }
const char *mel_version_string(void) { return PACKAGE_VERSION; }

const char *mel_status_str(mel_status s)
{
    switch (s) {
    case MEL_OK: return "MEL_OK: success";
    case MEL_ERR_INVALID_ARGUMENT: return "MEL_ERR_INVALID_ARGUMENT: an argument has an invalid value";
    case MEL_ERR_SHAPE: return "MEL_ERR_SHAPE: argument shapes do not agree";
    case MEL_ERR_OUT_OF_MEMORY: return "MEL_ERR_OUT_OF_MEMORY: allocation failed";
    case MEL_ERR_UNSUPPORTED: return "MEL_ERR_UNSUPPORTED: not supported by this build or backend";
    case MEL_ERR_GRAPH: return "MEL_ERR_GRAPH: malformed row program";
    case MEL_ERR_BUDGET: return "MEL_ERR_BUDGET: workspace budget too small for one row";
    case MEL_ERR_NONFINITE: return "MEL_ERR_NONFINITE: non-finite input";
    case MEL_ERR_OVERFLOW: return "MEL_ERR_OVERFLOW: a size product overflows";
    case MEL_ERR_BACKEND: return "MEL_ERR_BACKEND: the backend reported an error";
    case MEL_ERR_INTERNAL: return "MEL_ERR_INTERNAL: internal error (a bug in libmel)";
    }
    return "unknown mel_status";
}

const char *mel_dtype_name(mel_dtype t)
{
    switch (t) {
    case MEL_F64: return "f64";
    case MEL_F32: return "f32";
    case MEL_BF16: return "bf16";
    case MEL_F16: return "f16";
    case MEL_I32: return "i32";
    case MEL_I64: return "i64";
    }
    return "?";
}

size_t mel_dtype_size(mel_dtype t)
{
    switch (t) {
    case MEL_F64: case MEL_I64: return 8;
    case MEL_F32: case MEL_I32: return 4;
    case MEL_BF16: case MEL_F16: return 2;
    }
    return 0;
}

mel_matrix mel_mat(void *data, mel_dtype dtype, int64_t rows, int64_t cols,
                   int64_t ld)
{
    mel_matrix m = {data, dtype, rows, cols, ld ? ld : cols};
    return m;
}

/* ------------------------------------------------------------- errors */

static _Thread_local char create_err[512];

const char *mel_ctx_create_error(void) { return create_err; }

mel_status mel_fail(mel_ctx *ctx, mel_status s, const char *fmt, ...)
{
    char *buf = ctx ? ctx->err : create_err;
    size_t len = ctx ? sizeof ctx->err : sizeof create_err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
    return s;
}

void mel_clear_error(mel_ctx *ctx)
{
    if (ctx) ctx->err[0] = 0;
}

const char *mel_last_error(const mel_ctx *ctx)
{
    return ctx ? ctx->err : "ctx is NULL";
}

/* ------------------------------------------------------------ context */

/* The backend's entry and exit around a public call (CUDA: the context's
 * device current; a caller's pending CUDA error refused, not cleared). */
static mel_status enter(mel_ctx *ctx) { return ctx->ops->enter ? ctx->ops->enter(ctx) : MEL_OK; }
static void leave(mel_ctx *ctx)
{
    if (ctx->ops->leave) ctx->ops->leave(ctx);
}

mel_status mel_ctx_create(mel_backend backend, mel_ctx **out)
{
    if (!out) return mel_fail(NULL, MEL_ERR_INVALID_ARGUMENT, "mel_ctx_create: out is NULL");
    *out = NULL;
    const mel_backend_entry *be = mel_backend_find(backend);
    if (!be)
        return mel_fail(NULL, MEL_ERR_INVALID_ARGUMENT,
                        "mel_ctx_create: backend = %d is not a mel_backend", (int)backend);
    const mel_backend_ops *ops = be->ops ? be->ops() : NULL;
    if (!ops)
        return mel_fail(NULL, MEL_ERR_UNSUPPORTED,
                        "mel_ctx_create: backend = %s, but this libmel was built without %s (%s)",
                        be->enum_name, be->label, be->build_hint);
    mel_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return mel_fail(NULL, MEL_ERR_OUT_OF_MEMORY, "mel_ctx_create: out of memory");
    ctx->ops = ops;
    ctx->workspace_limit = 0; /* automatic (see mel_set_workspace_limit) */
    ctx->row_skipping = 1;
    mel_status s = ops->init ? ops->init(ctx) : MEL_OK;
    if (s != MEL_OK) {
        mel_fail(NULL, s, "mel_ctx_create: %s backend: %s", ops->name, ctx->err);
        free(ctx);
        return s;
    }
    *out = ctx;
    return MEL_OK;
}

void mel_ctx_destroy(mel_ctx *ctx)
{
    if (!ctx) return;
    mel_vp_destroy(ctx);
    const int e = enter(ctx) == MEL_OK;
    if (ctx->arena) ctx->ops->free(ctx, ctx->arena);
    if (e) leave(ctx);
    if (ctx->ops->fini) ctx->ops->fini(ctx); /* fini makes the device current itself */
    free(ctx);
}

mel_status mel_set_threads(mel_ctx *ctx, int n)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (n < 0 || n > 4096)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_set_threads: n = %d is outside [0, 4096]", n);
    ctx->threads = n;
    return MEL_OK;
}

int mel_get_threads(const mel_ctx *ctx)
{
    if (!ctx) return 0;
    return ctx->ops->threads ? ctx->ops->threads((mel_ctx *)ctx) : 1;
}

mel_status mel_set_check_finite(mel_ctx *ctx, int check)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    ctx->check_finite = check != 0;
    return MEL_OK;
}

mel_status mel_set_chunk_rows(mel_ctx *ctx, int64_t chunk_rows)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (chunk_rows < 0)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_set_chunk_rows: chunk_rows = %lld is negative",
                        (long long)chunk_rows);
    ctx->chunk_rows = chunk_rows;
    return MEL_OK;
}

mel_status mel_set_tile_cols(mel_ctx *ctx, int64_t cols)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (cols < 0)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_set_tile_cols: cols = %lld is negative", (long long)cols);
    ctx->tile_cols = cols;
    return MEL_OK;
}

int64_t mel_get_tile_cols(const mel_ctx *ctx) { return ctx ? ctx->tile_cols_used : 0; }

mel_status mel_set_row_skipping(mel_ctx *ctx, int on)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (on != 0 && on != 1)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_set_row_skipping: on = %d is not 0 or 1", on);
    ctx->row_skipping = on;
    return MEL_OK;
}

int mel_get_row_skipping(const mel_ctx *ctx) { return ctx ? ctx->row_skipping : 0; }

mel_status mel_set_workspace_limit(mel_ctx *ctx, int64_t bytes)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (bytes < 0)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_set_workspace_limit: bytes = %lld is negative",
                        (long long)bytes);
    ctx->workspace_limit = bytes;
    return MEL_OK;
}

mel_status mel_set_precision(mel_ctx *ctx, unsigned flags)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    const unsigned known = MEL_PRECISION_FAST16 | MEL_PRECISION_TF32;
    if (flags & ~known)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_set_precision: flags = 0x%x has unknown bits 0x%x (known: MEL_PRECISION_FAST16 = 1, "
                        "MEL_PRECISION_TF32 = 2)", flags, flags & ~known);
    ctx->precision = flags;
    return MEL_OK;
}

unsigned mel_get_precision(const mel_ctx *ctx) { return ctx ? ctx->precision : 0; }

mel_status mel_set_cuda_stream(mel_ctx *ctx, void *stream)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    if (!ctx->ops->set_stream)
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED,
                        "mel_set_cuda_stream: the %s backend has no CUDA streams (only a "
                        "MEL_BACKEND_CUDA context takes one)", ctx->ops->name);
    mel_status s = enter(ctx);
    if (s) return s;
    s = ctx->ops->set_stream(ctx, stream);
    leave(ctx);
    return s;
}

/* ------------------------------------------------ caller memory helpers */

mel_status mel_alloc(mel_ctx *ctx, size_t bytes, void **out)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    if (!out) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_alloc: out is NULL");
    *out = NULL;
    mel_status s = enter(ctx);
    if (s) return s;
    void *p = ctx->ops->alloc(ctx, bytes ? bytes : 1);
    leave(ctx);
    if (!p)
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_alloc: out of %s memory allocating %zu bytes",
                        ctx->ops->host_memory ? "host" : "device", bytes);
    *out = p;
    return MEL_OK;
}

void mel_free(mel_ctx *ctx, void *p)
{
    if (!ctx || !p) return;
    const int e = enter(ctx) == MEL_OK; /* a pending error of the caller's: free anyway */
    ctx->ops->free(ctx, p);
    if (e) leave(ctx);
}

static mel_status transfer(mel_ctx *ctx, const char *fn, void *dst, const void *src, size_t bytes,
                           int to_device)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    if (bytes == 0) return MEL_OK;
    if (!dst) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "%s: dst is NULL (bytes = %zu)", fn, bytes);
    if (!src) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "%s: src is NULL (bytes = %zu)", fn, bytes);
    mel_status s = enter(ctx);
    if (s == MEL_OK) {
        s = ctx->ops->copy(ctx, dst, src, bytes, to_device);
        leave(ctx);
    }
    if (s != MEL_OK && ctx->err[0]) {
        char m[sizeof ctx->err];
        snprintf(m, sizeof m, "%s", ctx->err);
        mel_fail(ctx, s, "%s: %s", fn, m);
    }
    return s;
}

mel_status mel_to_device(mel_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    return transfer(ctx, "mel_to_device", dst, src, bytes, 1);
}

mel_status mel_to_host(mel_ctx *ctx, void *dst, const void *src, size_t bytes)
{
    return transfer(ctx, "mel_to_host", dst, src, bytes, 0);
}

int64_t mel_get_active_rows(const mel_ctx *ctx) { return ctx ? ctx->active_rows : 0; }

void mel_get_stats(const mel_ctx *ctx, mel_stats *out)
{
    if (!out) return;
    if (!ctx) {
        memset(out, 0, sizeof *out);
        return;
    }
    *out = ctx->stats;
}

size_t mel_ws_round(size_t bytes) { return (bytes + 63) / 64 * 64; }

mel_status mel_ws_reserve(mel_ctx *ctx, size_t bytes)
{
    if (ctx->arena_used) return mel_fail(ctx, MEL_ERR_INTERNAL, "workspace reserved while in use");
    if (ctx->arena && ctx->arena_size >= bytes) return MEL_OK;
    if (ctx->arena) ctx->ops->free(ctx, ctx->arena);
    ctx->arena = NULL;
    ctx->arena_size = 0;
    ctx->arena = ctx->ops->alloc(ctx, bytes ? bytes : 64);
    if (!ctx->arena)
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory: workspace of %zu bytes", bytes);
    ctx->arena_size = bytes ? bytes : 64;
    return MEL_OK;
}

void *mel_ws_alloc(mel_ctx *ctx, size_t bytes)
{
    size_t r = mel_ws_round(bytes ? bytes : 1);
    if (!ctx->arena || ctx->arena_used + r > ctx->arena_size) return NULL;
    void *p = (char *)ctx->arena + ctx->arena_used;
    ctx->arena_used += r;
    ctx->ws_cur += (int64_t)bytes;
    if (ctx->ws_cur > ctx->ws_peak) ctx->ws_peak = ctx->ws_cur;
    return p;
}

void mel_ws_free(mel_ctx *ctx, void *p, size_t bytes)
{
    if (!p) return;
    ctx->ws_cur -= (int64_t)bytes;
    if (ctx->ws_cur <= 0) ctx->ws_cur = 0, ctx->arena_used = 0;
}

void mel_ctx_trim(mel_ctx *ctx)
{
    if (!ctx || ctx->arena_used) return;
    const int e = enter(ctx) == MEL_OK;
    if (ctx->arena) ctx->ops->free(ctx, ctx->arena);
    if (e) leave(ctx);
    ctx->arena = NULL;
    ctx->arena_size = 0;
}

int64_t mel_ctx_held_bytes(const mel_ctx *ctx) { return ctx ? (int64_t)ctx->arena_size : 0; }

/* ------------------------------------------------------------- params */

#define MEL_MAX_PARAMS 32
struct mel_params {
    char name[MEL_MAX_PARAMS][MEL_NAME_MAX];
    double val[MEL_MAX_PARAMS];
    int n;
};

mel_params *mel_params_new(void) { return calloc(1, sizeof(mel_params)); }
void mel_params_free(mel_params *p) { free(p); }

mel_status mel_params_set(mel_params *p, const char *name, double v)
{
    if (!p || !name) return MEL_ERR_INVALID_ARGUMENT;
    if (strlen(name) >= MEL_NAME_MAX) return MEL_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->name[i], name)) {
            p->val[i] = v;
            return MEL_OK;
        }
    if (p->n == MEL_MAX_PARAMS) return MEL_ERR_INVALID_ARGUMENT;
    strcpy(p->name[p->n], name);
    p->val[p->n++] = v;
    return MEL_OK;
}

int mel_params_get(const mel_params *p, const char *name, double *v)
{
    if (!p || !name) return 0;
    for (int i = 0; i < p->n; i++)
        if (!strcmp(p->name[i], name)) {
            if (v) *v = p->val[i];
            return 1;
        }
    return 0;
}

/* Used by builtins.c */
int mel_params_count(const mel_params *p) { return p ? p->n : 0; }
const char *mel_params_name(const mel_params *p, int i) { return p->name[i]; }
double mel_params_value(const mel_params *p, int i) { return p->val[i]; }

/* --------------------------------------------------------------- args */

mel_args *mel_args_new(void)
{
    mel_args *a = calloc(1, sizeof *a);
    if (a) a->reduction = MEL_REDUCE_MEAN;
    return a;
}

void mel_args_free(mel_args *a) { free(a); }

void mel_args_clear(mel_args *a)
{
    if (!a) return;
    memset(a, 0, sizeof *a);
    a->reduction = MEL_REDUCE_MEAN;
}

mel_status mel_args_head(mel_args *a, int head, mel_matrix x, mel_matrix w,
                         const void *bias)
{
    if (!a || head < 0 || head >= MEL_MAX_HEADS) return MEL_ERR_INVALID_ARGUMENT;
    a->head[head].set = 1;
    a->head[head].x = x;
    a->head[head].w = w;
    a->head[head].bias = bias;
    return MEL_OK;
}

static mel_status bind(mel_bound *arr, int *n, const char *name,
                       const void *data, void *out, mel_dtype dt, int64_t len)
{
    if (!name || strlen(name) >= MEL_NAME_MAX) return MEL_ERR_INVALID_ARGUMENT;
    int i;
    for (i = 0; i < *n; i++)
        if (!strcmp(arr[i].name, name)) break;
    if (i == *n) {
        if (*n == MEL_MAX_INPUTS) return MEL_ERR_INVALID_ARGUMENT;
        (*n)++;
    }
    strcpy(arr[i].name, name);
    arr[i].data = data;
    arr[i].out = out;
    arr[i].dtype = dt;
    arr[i].n = len;
    return MEL_OK;
}

mel_status mel_args_index(mel_args *a, const char *name, const void *idx,
                          mel_dtype dtype, int64_t n)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    return bind(a->index, &a->n_index, name, idx, NULL, dtype, n);
}

mel_status mel_args_input(mel_args *a, const char *name, const void *v,
                          mel_dtype dtype, int64_t n)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    return bind(a->input, &a->n_input, name, v, NULL, dtype, n);
}

mel_status mel_args_reduction(mel_args *a, mel_reduction r, const double *weights)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    a->reduction = r;
    a->weights = weights;
    return MEL_OK;
}

mel_status mel_args_output(mel_args *a, void *y, mel_dtype dtype)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    a->y = y;
    a->y_dtype = dtype;
    return MEL_OK;
}

mel_status mel_args_aux(mel_args *a, const char *name, void *v, mel_dtype dtype)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    if (a->n_aux == MEL_MAX_AUX) {
        int found = 0;
        for (int i = 0; i < a->n_aux; i++) found |= name && !strcmp(a->aux[i].name, name);
        if (!found) return MEL_ERR_INVALID_ARGUMENT;
    }
    return bind(a->aux, &a->n_aux, name, NULL, v, dtype, 0);
}

mel_status mel_args_grad_output(mel_args *a, const void *dy, mel_dtype dtype)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    a->dy = dy;
    a->dy_dtype = dtype;
    return MEL_OK;
}

mel_status mel_args_grad_head(mel_args *a, int head, mel_matrix dx,
                              mel_matrix dw, void *db, unsigned flags)
{
    if (!a || head < 0 || head >= MEL_MAX_HEADS) return MEL_ERR_INVALID_ARGUMENT;
    a->head[head].grad_set = 1;
    a->head[head].dx = dx;
    a->head[head].dw = dw;
    a->head[head].db = db;
    a->head[head].flags = flags;
    return MEL_OK;
}

mel_status mel_args_grad_input(mel_args *a, const char *name, void *g,
                               mel_dtype dtype)
{
    if (!a) return MEL_ERR_INVALID_ARGUMENT;
    return bind(a->grad_input, &a->n_grad_input, name, NULL, g, dtype, 0);
}
