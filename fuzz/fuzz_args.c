/* fuzz/fuzz_args.c -- libFuzzer harness over the engine's argument space.
 *
 * The input bytes choose a built-in transform (or a wrong name) with random
 * parameters, then random bindings: heads 0..3 with random shapes, strides,
 * dtypes and NULL data; index and scalar inputs with random names, counts,
 * dtypes and values (labels out of range included); outputs, aux outputs,
 * upstream gradients, gradient buffers, reductions, flags, chunk rows and
 * workspace limits; then mel_forward, mel_backward or mel_forward_backward.
 * Also mel_grpo_weights and mel_group_advantages with random arguments.
 *
 * Every buffer is allocated with exactly the size its declared shape and
 * dtype imply (so AddressSanitizer sees any access outside it), which leaves
 * the library's validation as the only judge.  Two exceptions, both stated:
 * a declared size whose byte count overflows int64 gets a 16-byte buffer
 * (the library must reject the call: such a buffer cannot exist), and a
 * valid size too large for the fuzzer (> 1 MiB) skips the call.
 *
 * The harness asserts nothing but the absence of crashes, sanitizer reports
 * and leaks; any status is acceptable.  Built by `make fuzz` (fuzz/fuzz.mk)
 * and replayed over fuzz/corpus/fuzz_args by t/fuzz_regress.t. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "fuzz_common.h"

#define FA_CAP ((int64_t)1 << 20)

typedef struct fa_state {
    void *bufs[64];
    int nbufs;
    int skip;   /* a valid size too large to allocate: do not call */
} fa_state;

/* Bytes for `count` elements of `es` bytes; -1 when it overflows. */
static int64_t fa_bytes(int64_t count, size_t es)
{
    if (count < 0) return 0;
    if (es && count > INT64_MAX / (int64_t)es) return -1;
    return count * (int64_t)es;
}

static void *fa_alloc(fa_state *st, int64_t bytes)
{
    if (st->nbufs == 64) return NULL;
    size_t n;
    if (bytes < 0) n = 16;               /* overflowing declaration */
    else if (bytes > FA_CAP) {
        st->skip = 1;
        n = 16;
    } else n = (size_t)bytes;
    void *p = malloc(n ? n : 1);
    if (p) memset(p, 0, n ? n : 1);
    st->bufs[st->nbufs++] = p;
    return p;
}

/* Elements spanned by a [rows, cols] view with row stride ld; -1 on overflow. */
static int64_t fa_span(int64_t rows, int64_t cols, int64_t ld)
{
    if (rows <= 0 || cols <= 0 || ld < 0) return 0;
    int64_t a;
    if (__builtin_mul_overflow(rows - 1, ld, &a) || __builtin_add_overflow(a, cols, &a)) return -1;
    return a;
}

static mel_dtype fa_dtype(fz *f, mel_dtype usual)
{
    unsigned k = fz_u8(f);
    if (k < 160) return usual;
    if (k < 250) return (mel_dtype)(k % 6);
    return (k & 1) ? (mel_dtype)(6 + (int)(k - 250)) : (mel_dtype)-1; /* unknown values */
}

static int64_t fa_ld(fz *f, int64_t cols)
{
    unsigned k = fz_u8(f);
    if (k < 150 || cols < -8 || cols > 8) return 0; /* mel_mat: ld = cols */
    if (k < 200) return cols + (k % 4);
    if (k < 230) return cols - 1 - (k % 3);
    return fz_size(f, 8);
}

/* A matrix view of `rows` × `cols` with a buffer sized for it. */
static mel_matrix fa_matrix(fz *f, fa_state *st, int64_t rows, int64_t cols, mel_dtype usual,
                            int fill)
{
    mel_dtype dt = fa_dtype(f, usual);
    int64_t ld = fa_ld(f, cols);
    int64_t eld = ld == 0 ? cols : ld;
    int64_t span = fa_span(rows, cols, eld);
    int64_t bytes = span < 0 ? -1 : fa_bytes(span, mel_dtype_size(dt));
    void *p = fz_u8(f) < 245 ? fa_alloc(st, bytes) : NULL;
    if (p && fill && bytes > 0 && bytes <= FA_CAP) {
        size_t es = mel_dtype_size(dt);
        for (int64_t i = 0; es && i < bytes / (int64_t)es; i++) {
            double v = fz_u8(f) < 250 ? ((double)(int)fz_u8(f) - 128.0) / 32.0 : fz_double(f);
            if (dt == MEL_F32) ((float *)p)[i] = (float)v;
            else if (dt == MEL_F64) ((double *)p)[i] = v;
        }
    }
    return mel_mat(p, dt, rows, cols, ld);
}

static const char *const fa_inputs[] = {"labels", "mask", "advantages", "old_logp", "ref_logp", "bogus"};
static const char *const fa_aux[] = {"kl", "is_clipped", "ratio", "logp", "bogus"};
static const char *const fa_params[] = {
    "ignore_index", "logit_scale", "softcap", "temperature", "label_smoothing", "z_loss",
    "t2_scale", "beta", "epsilon_low", "epsilon_high", "delta", "use_old_logp", "ref_source",
    "importance_sampling_level", "seq_len", "loss_type", "max_completion_length",
    "num_items_in_batch", "bogus", "a_parameter_name_that_is_far_too_long_for_libmel"};

static void fa_per_row(fz *f, fa_state *st, mel_args *a, int64_t N, int64_t V)
{
    const char *name = fa_inputs[fz_u8(f) % 6];
    int is_index = fz_u8(f) & 1;
    int64_t n = fz_u8(f) < 230 ? N : fz_size(f, 8);
    mel_dtype dt = fa_dtype(f, is_index ? MEL_I64 : MEL_F64);
    int64_t bytes = fa_bytes(n, mel_dtype_size(dt));
    void *p = fz_u8(f) < 245 ? fa_alloc(st, bytes) : NULL;
    if (p && bytes > 0 && bytes <= FA_CAP) {
        for (int64_t i = 0; i < n; i++) {
            unsigned k = fz_u8(f);
            int64_t iv = k < 200 ? (V > 0 ? (int64_t)k % V : 0)
                         : k < 220 ? -100 : k < 240 ? (V < 8 ? V + (k & 3) : V) : (int64_t)fz_u64(f);
            double dv = k < 230 ? ((double)(int)(k % 64) - 32.0) / 16.0 : fz_double(f);
            switch (dt) {
            case MEL_I32: ((int32_t *)p)[i] = (int32_t)iv; break;
            case MEL_I64: ((int64_t *)p)[i] = iv; break;
            case MEL_F32: ((float *)p)[i] = (float)dv; break;
            case MEL_F64: ((double *)p)[i] = dv; break;
            default: break;
            }
        }
    }
    if (is_index) mel_args_index(a, name, p, dt, n);
    else mel_args_input(a, name, p, dt, n);
}

static void fa_engine(fz *f, mel_ctx *ctx)
{
    fa_state st;
    memset(&st, 0, sizeof st);
    /* the transform */
    mel_transform *t = NULL;
    mel_params *p = fz_u8(f) < 240 ? mel_params_new() : NULL;
    int np = (int)(fz_u8(f) % 6);
    for (int k = 0; k < np && p; k++) {
        unsigned c = fz_u8(f);
        mel_params_set(p, fa_params[c % 20], fz_double(f));
    }
    unsigned which = fz_u8(f);
    const char *name = which < 240 ? mel_builtin_name((int)(which % (unsigned)mel_builtin_count()))
                       : which < 250 ? "no_such_transform" : which < 253 ? "" : NULL;
    mel_status s = mel_transform_builtin(ctx, name, p, fz_u8(f) < 250 ? &t : NULL);
    mel_params_free(p);
    if (s != MEL_OK || !t) {
        mel_transform_free(t);
        return;
    }
    (void)mel_transform_name(t);
    (void)mel_transform_vector_slots(t);
    (void)mel_transform_num_heads(t);

    /* the bindings */
    mel_args *a = mel_args_new();
    int64_t N = fz_size(f, 6), V = fz_size(f, 7);
    int64_t D[MEL_MAX_HEADS];
    /* outputs [N] and db [V] are sized for the largest row count bound: the
     * library's N and V are those of the first head the transform reads */
    int64_t NY = 0, NV = 0; /* max over the heads actually bound */
    struct {
        mel_matrix dx, dw;
        size_t es;
        int head, want_db;
        unsigned flags;
    } pg[MEL_MAX_HEADS];
    int npg = 0;
    unsigned heads = fz_u8(f);
    if (heads < 128) heads = (unsigned)((1 << mel_transform_num_heads(t)) - 1);
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        D[h] = fz_size(f, 3);
        if (!(heads >> h & 1)) continue;
        int64_t xr = fz_u8(f) < 240 ? N : fz_size(f, 6);
        int64_t wr = fz_u8(f) < 240 ? V : fz_size(f, 7);
        int64_t wc = fz_u8(f) < 240 ? D[h] : fz_size(f, 3);
        mel_matrix x = fa_matrix(f, &st, xr, D[h], MEL_F32, 1);
        mel_matrix w = fa_matrix(f, &st, wr, wc, x.dtype, 1);
        const void *bias = NULL;
        if (fz_u8(f) < 64) {
            int64_t bb = fa_bytes(wr, mel_dtype_size(x.dtype));
            bias = fa_alloc(&st, bb);
        }
        if (mel_args_head(a, fz_u8(f) < 250 ? h : (int)fz_size(f, 9), x, w, bias) == MEL_OK) {
            if (xr > NY) NY = xr; /* only heads actually bound count */
            if (wr > NV) NV = wr;
        }
        if (fz_u8(f) < 128) {
            mel_matrix dx = fa_matrix(f, &st, fz_u8(f) < 240 ? xr : fz_size(f, 6), D[h], x.dtype, 0);
            if (fz_u8(f) < 40) dx.data = NULL;
            /* dw and db: f32, or f64 for f64 heads (also for bf16/f16 heads, mel.h) */
            mel_dtype gt = x.dtype == MEL_F64 ? MEL_F64 : MEL_F32;
            mel_matrix dw = fa_matrix(f, &st, fz_u8(f) < 240 ? wr : fz_size(f, 7), wc, gt, 0);
            if (fz_u8(f) < 40) dw.data = NULL;
            /* db [V] in dw's dtype; V is the library's (any bound head's w
             * rows), so db is bound after the loop */
            pg[npg].want_db = fz_u8(f) < 64;
            pg[npg].es = mel_dtype_size(gt);
            pg[npg].flags = fz_u8(f) % 8;
            pg[npg].head = fz_u8(f) < 250 ? h : (int)fz_size(f, 9);
            pg[npg].dx = dx, pg[npg].dw = dw;
            npg++;
        }
    }
    for (int k = 0; k < npg; k++) {
        void *db = pg[k].want_db ? fa_alloc(&st, fa_bytes(NV, pg[k].es)) : NULL;
        mel_args_grad_head(a, pg[k].head, pg[k].dx, pg[k].dw, db, pg[k].flags);
    }
    int nin = (int)(fz_u8(f) % 8);
    for (int k = 0; k < nin; k++) fa_per_row(f, &st, a, N, V);
    mel_reduction red = (mel_reduction)(fz_u8(f) % 5);
    double *wts = NULL;
    if (red == MEL_REDUCE_WEIGHTED && fz_u8(f) < 230) wts = fa_alloc(&st, fa_bytes(NY, 8));
    if (wts && NY > 0 && NY <= FA_CAP / 8)
        for (int64_t i = 0; i < NY; i++) wts[i] = fz_double(f);
    mel_args_reduction(a, red, wts);
    int64_t ny = red == MEL_REDUCE_NONE ? NY : 1;
    if (fz_u8(f) < 220) {
        mel_dtype dt = fa_dtype(f, MEL_F64);
        mel_args_output(a, fa_alloc(&st, fa_bytes(ny, mel_dtype_size(dt))), dt);
    }
    if (fz_u8(f) < 80) {
        mel_dtype dt = fa_dtype(f, MEL_F64);
        void *dy = fa_alloc(&st, fa_bytes(ny, mel_dtype_size(dt)));
        if (dy && ny > 0 && ny <= FA_CAP / 8 && mel_dtype_size(dt))
            for (int64_t i = 0; i < ny; i++)
                if (dt == MEL_F64) ((double *)dy)[i] = fz_double(f);
        mel_args_grad_output(a, dy, dt);
    }
    int naux = (int)(fz_u8(f) % 4);
    for (int k = 0; k < naux; k++) {
        mel_dtype dt = fa_dtype(f, MEL_F32);
        mel_args_aux(a, fa_aux[fz_u8(f) % 5], fa_alloc(&st, fa_bytes(NY, mel_dtype_size(dt))), dt);
    }
    int ng = (int)(fz_u8(f) % 3);
    for (int k = 0; k < ng; k++) {
        mel_dtype dt = fa_dtype(f, MEL_F64);
        mel_args_grad_input(a, fa_inputs[fz_u8(f) % 6], fa_alloc(&st, fa_bytes(NY, mel_dtype_size(dt))),
                            dt);
    }
    /* the context */
    mel_set_chunk_rows(ctx, fz_u8(f) < 200 ? (int64_t)(fz_u8(f) % 8) : fz_size(f, 8));
    unsigned wl = fz_u8(f);
    mel_set_workspace_limit(ctx, wl < 200 ? 0 : wl < 250 ? (int64_t)(wl - 200) * 64 : fz_size(f, 1 << 16));
    /* the call */
    if (!st.skip) {
        switch (fz_u8(f) % 3) {
        case 0: s = mel_forward(ctx, t, fz_u8(f) < 250 ? a : NULL); break;
        case 1: s = mel_backward(ctx, t, fz_u8(f) < 250 ? a : NULL); break;
        default: s = mel_forward_backward(ctx, t, fz_u8(f) < 250 ? a : NULL); break;
        }
        (void)mel_status_str(s);
        mel_stats stats;
        mel_get_stats(ctx, &stats);
    }
    mel_args_free(a);
    mel_transform_free(t);
    for (int k = 0; k < st.nbufs; k++) free(st.bufs[k]);
}

static void fa_grpo_helpers(fz *f, mel_ctx *ctx)
{
    fa_state st;
    memset(&st, 0, sizeof st);
    int64_t B = fz_size(f, 4), T = fz_size(f, 5), n = -1;
    if (!__builtin_mul_overflow(B, T, &n) && n < 0) n = 0;
    int64_t bytes = n < 0 ? -1 : fa_bytes(n, 8);
    double *mask = fz_u8(f) < 240 ? fa_alloc(&st, bytes) : NULL;
    double *w = fz_u8(f) < 240 ? fa_alloc(&st, bytes) : NULL;
    if (mask && bytes > 0 && bytes <= FA_CAP)
        for (int64_t i = 0; i < n; i++) mask[i] = fz_u8(f) < 200 ? (double)(fz_u8(f) & 1) : fz_double(f);
    int type = (int)fz_size(f, 3);
    int64_t maxlen = fz_size(f, 8), ga = fz_size(f, 3);
    double items = fz_double(f);
    if (!st.skip) mel_grpo_weights(ctx, (mel_grpo_loss_type)type, B, T, mask, maxlen, items, ga, w);
    int64_t cnt = fz_size(f, 12), group = fz_size(f, 4);
    bytes = fa_bytes(cnt, 8);
    double *r = fz_u8(f) < 240 ? fa_alloc(&st, bytes) : NULL;
    double *adv = fz_u8(f) < 240 ? fa_alloc(&st, bytes) : NULL;
    if (r && bytes > 0 && bytes <= FA_CAP)
        for (int64_t i = 0; i < cnt; i++) r[i] = fz_double(f);
    if (!st.skip) mel_group_advantages(ctx, r, cnt, group, (int)(fz_u8(f) % 3), adv);
    for (int k = 0; k < st.nbufs; k++) free(st.bufs[k]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f;
    fz_init(&f, data, size);
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) return 0;
    mel_set_threads(ctx, 1 + (int)(fz_u8(&f) & 1));
    if (fz_u8(&f) < 200) fa_engine(&f, ctx);
    else fa_grpo_helpers(&f, ctx);
    (void)mel_last_error(ctx);
    mel_ctx_destroy(ctx);
    return 0;
}
