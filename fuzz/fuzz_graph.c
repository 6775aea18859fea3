/* fuzz/fuzz_graph.c -- libFuzzer harness over the row-program builder.
 *
 * The input bytes are read as a sequence of builder calls (every mel_g_*
 * function, operands chosen among the values made so far, with -1 and
 * out-of-range handles now and then; constants, heads 0..5, names,
 * ignore_index values, segment lengths, outputs, counts and aux outputs
 * from the bytes).  When the graph compiles, the transform is dumped and
 * run with mel_forward, mel_backward and mel_forward_backward on tiny
 * inputs (N <= 6, D <= 3, V <= 7, f32 or f64, labels from the bytes and
 * sometimes out of range, reductions, upstream gradients, chunk rows) and
 * now and then checked with mel_gradcheck.
 *
 * Only the absence of crashes, sanitizer reports and leaks is asserted:
 * NaN results and error statuses are fine.  Built by `make fuzz` and
 * replayed over fuzz/corpus/fuzz_graph by t/fuzz_regress.t. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "fuzz_common.h"

enum { FG_MAXOPS = 64 };
static const char *const fg_index_names[] = {"labels", "idx"};
static const char *const fg_input_names[] = {"a", "b", "labels"};
static const char *const fg_aux_names[] = {"x0", "x1", "x2", "x0"};

typedef struct fg_decl {
    int heads, diff_heads;              /* bit h: mel_g_logits(h) succeeded */
    int index_used[2], input_used[3], input_diff[3];
    int aux_used[3];
    int64_t seg;
} fg_decl;

static mel_val fg_operand(fz *f, int nv)
{
    unsigned k = fz_u8(f);
    if (k == 255) return -1;
    if (k == 254) return 12345;
    return nv > 0 ? (mel_val)(k % (unsigned)nv) : 0;
}

static int64_t fg_ignore(fz *f)
{
    static const int64_t v[8] = {-100, -1, 0, 3, 6, INT64_MIN, INT64_MAX, -100};
    return v[fz_u8(f) % 8];
}

/* Builds a graph from the bytes; returns it (never NULL unless OOM). */
static mel_graph *fg_build(fz *f, fg_decl *d)
{
    mel_graph *g = mel_graph_new();
    if (!g) return NULL;
    int nv = 0;
    int nops = 1 + (int)(fz_u8(f) % FG_MAXOPS);
    for (int k = 0; k < nops && fz_more(f); k++) {
        unsigned op = fz_u8(f) % 48;
        mel_val a = fg_operand(f, nv), b = fg_operand(f, nv), c = fg_operand(f, nv);
        mel_val r = -1;
        switch (op) {
        case 0: case 1: {
            int h = (int)(fz_u8(f) % 6), diff = (int)(fz_u8(f) & 1);
            r = mel_g_logits(g, h, diff);
            if (r >= 0 && h < MEL_MAX_HEADS) d->heads |= 1 << h, d->diff_heads |= diff << h;
            break;
        }
        case 2: {
            int i = (int)(fz_u8(f) % 2);
            r = mel_g_index(g, fg_index_names[i], fg_ignore(f));
            if (r >= 0) d->index_used[i] = 1;
            break;
        }
        case 3: {
            int i = (int)(fz_u8(f) % 3), diff = (int)(fz_u8(f) & 1);
            r = mel_g_input(g, fg_input_names[i], diff);
            if (r >= 0) d->input_used[i] = 1, d->input_diff[i] |= diff;
            break;
        }
        case 4: r = mel_g_const(g, fz_double(f)); break;
        case 5: r = mel_g_vocab(g); break;
        case 6: r = mel_g_neg(g, a); break;
        case 7: r = mel_g_exp(g, a); break;
        case 8: r = mel_g_log(g, a); break;
        case 9: r = mel_g_tanh(g, a); break;
        case 10: r = mel_g_sigmoid(g, a); break;
        case 11: r = mel_g_square(g, a); break;
        case 12: r = mel_g_sqrt(g, a); break;
        case 13: r = mel_g_log1p(g, a); break;
        case 14: r = mel_g_abs(g, a); break;
        case 15: r = mel_g_add(g, a, b); break;
        case 16: r = mel_g_sub(g, a, b); break;
        case 17: r = mel_g_mul(g, a, b); break;
        case 18: r = mel_g_div(g, a, b); break;
        case 19: r = mel_g_min(g, a, b); break;
        case 20: r = mel_g_max(g, a, b); break;
        case 21: r = mel_g_lt(g, a, b); break;
        case 22: r = mel_g_le(g, a, b); break;
        case 23: r = mel_g_eq(g, a, b); break;
        case 24: r = mel_g_where(g, a, b, c); break;
        case 25: r = mel_g_sum(g, a); break;
        case 26: r = mel_g_mean(g, a); break;
        case 27: r = mel_g_rmax(g, a); break;
        case 28: r = mel_g_logsumexp(g, a); break;
        case 29: r = mel_g_gather(g, a, b); break;
        case 30: r = mel_g_valid(g, a); break;
        case 31: {
            int64_t s = fz_u8(f) < 240 ? (int64_t)(fz_u8(f) % 4) : fz_size(f, 4);
            if (mel_g_set_segment(g, s) == MEL_OK) d->seg = s;
            break;
        }
        case 32: r = mel_g_segment_sum(g, a); break;
        case 33: r = mel_g_stop_gradient(g, a); break;
        case 34: r = mel_g_clamp(g, a, fz_double(f), fz_double(f)); break;
        case 35: r = mel_g_scale(g, a, fz_double(f)); break;
        case 36: r = mel_g_log_softmax(g, a); break;
        case 37: r = mel_g_softmax(g, a); break;
        case 38: r = mel_g_softcap(g, a, fz_double(f)); break;
        case 39: case 40: case 41: mel_g_set_output(g, a); break;
        case 42: mel_g_set_count(g, a); break;
        case 43: case 44: {
            int i = (int)(fz_u8(f) % 4);
            if (mel_g_add_aux(g, fg_aux_names[i], a) == MEL_OK) d->aux_used[i % 3] = 1;
            break;
        }
        default: /* a common pattern: log-softmax picked at an index */
            r = mel_g_sub(g, mel_g_gather(g, a, b), mel_g_logsumexp(g, a));
            break;
        }
        if (r >= nv) nv = r + 1;
    }
    return g;
}

static void fg_fill(fz *f, void *p, mel_dtype dt, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        unsigned k = fz_u8(f);
        double v = k < 250 ? ((double)(int)k - 125.0) / 40.0 : fz_double(f);
        if (dt == MEL_F32) ((float *)p)[i] = (float)v;
        else ((double *)p)[i] = v;
    }
}

static void fg_run(fz *f, mel_ctx *ctx, const mel_transform *t, const fg_decl *d)
{
    mel_dtype dt = (fz_u8(f) & 1) ? MEL_F64 : MEL_F32;
    size_t es = mel_dtype_size(dt);
    int64_t N = fz_u8(f) % 7, V = 1 + fz_u8(f) % 7;
    if (d->seg > 0 && d->seg <= 6 && fz_u8(f) < 200) N = d->seg * (N % 3); /* usually whole segments */
    if (N > 6) N = 6;
    /* every buffer is allocated at exactly its size */
    void *x[MEL_MAX_HEADS] = {0}, *w[MEL_MAX_HEADS] = {0}, *bias[MEL_MAX_HEADS] = {0};
    void *dx[MEL_MAX_HEADS] = {0}, *dw[MEL_MAX_HEADS] = {0}, *db[MEL_MAX_HEADS] = {0};
    int64_t *idx[2] = {0};
    void *inp[3] = {0}, *ginp[3] = {0}, *aux[3] = {0};
    double *wts = malloc((size_t)(N ? N : 1) * 8);
    void *y = malloc((size_t)(N ? N : 1) * es), *dy = malloc((size_t)(N ? N : 1) * es);
    mel_args *a = mel_args_new();
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        if (!(d->heads >> h & 1)) continue;
        int64_t D = 1 + fz_u8(f) % 3;
        x[h] = malloc((size_t)(N * D > 0 ? N * D : 1) * es);
        w[h] = malloc((size_t)(V * D) * es);
        fg_fill(f, x[h], dt, N * D);
        fg_fill(f, w[h], dt, V * D);
        if (fz_u8(f) < 64) {
            bias[h] = malloc((size_t)V * es);
            fg_fill(f, bias[h], dt, V);
        }
        mel_args_head(a, h, mel_mat(x[h], dt, N, D, 0), mel_mat(w[h], dt, V, D, 0), bias[h]);
        if (d->diff_heads >> h & 1) {
            dx[h] = malloc((size_t)(N * D > 0 ? N * D : 1) * es);
            dw[h] = calloc((size_t)(V * D), es);
            if (bias[h]) db[h] = calloc((size_t)V, es);
            mel_args_grad_head(a, h, mel_mat(dx[h], dt, N, D, 0), mel_mat(dw[h], dt, V, D, 0), db[h],
                               fz_u8(f) % 4);
        }
    }
    for (int i = 0; i < 2; i++) {
        if (!d->index_used[i]) continue;
        idx[i] = malloc((size_t)(N ? N : 1) * 8);
        for (int64_t r = 0; r < N; r++) {
            unsigned k = fz_u8(f);
            idx[i][r] = k < 220 ? (int64_t)(k % V) : k < 235 ? -100 : k < 245 ? V : -1;
        }
        mel_args_index(a, fg_index_names[i], idx[i], MEL_I64, N);
    }
    for (int i = 0; i < 3; i++) {
        if (!d->input_used[i]) continue;
        inp[i] = malloc((size_t)(N ? N : 1) * es);
        fg_fill(f, inp[i], dt, N);
        mel_args_input(a, fg_input_names[i], inp[i], dt, N);
        if (d->input_diff[i] && fz_u8(f) < 200) {
            ginp[i] = malloc((size_t)(N ? N : 1) * es);
            mel_args_grad_input(a, fg_input_names[i], ginp[i], dt);
        }
    }
    for (int i = 0; i < 3; i++) {
        if (!d->aux_used[i] || fz_u8(f) >= 200) continue;
        aux[i] = malloc((size_t)(N ? N : 1) * es);
        mel_args_aux(a, fg_aux_names[i], aux[i], dt);
    }
    mel_reduction red = (mel_reduction)(fz_u8(f) % 4);
    for (int64_t r = 0; r < N; r++) wts[r] = ((double)(int)fz_u8(f) - 100.0) / 50.0;
    mel_args_reduction(a, red, red == MEL_REDUCE_WEIGHTED ? wts : NULL);
    mel_args_output(a, y, dt);
    if (fz_u8(f) < 100) {
        fg_fill(f, dy, dt, red == MEL_REDUCE_NONE ? N : 1);
        mel_args_grad_output(a, dy, dt);
    }
    mel_set_chunk_rows(ctx, fz_u8(f) % 8);
    mel_forward(ctx, t, a);
    mel_forward_backward(ctx, t, a);
    if (fz_u8(f) < 64) mel_backward(ctx, t, a);
    if (fz_u8(f) < 16) {
        mel_gradcheck_opts o = {.seed = fz_u8(f), .samples = 2};
        mel_gradcheck_report rep;
        mel_gradcheck(ctx, t, a, &o, &rep);
    }
    mel_args_free(a);
    for (int h = 0; h < MEL_MAX_HEADS; h++)
        free(x[h]), free(w[h]), free(bias[h]), free(dx[h]), free(dw[h]), free(db[h]);
    for (int i = 0; i < 2; i++) free(idx[i]);
    for (int i = 0; i < 3; i++) free(inp[i]), free(ginp[i]), free(aux[i]);
    free(wts), free(y), free(dy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz f;
    fz_init(&f, data, size);
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) return 0;
    mel_set_threads(ctx, 1);
    fg_decl d;
    memset(&d, 0, sizeof d);
    mel_graph *g = fg_build(&f, &d);
    mel_transform *t = NULL;
    if (g && mel_graph_compile(fz_u8(&f) < 240 ? ctx : NULL, g, "fuzz", &t) == MEL_OK && t) {
        char *dump = mel_transform_dump(t);
        free(dump);
        (void)mel_transform_vector_slots(t);
        fg_run(&f, ctx, t, &d);
    }
    mel_transform_free(t);
    mel_graph_free(g);
    mel_ctx_destroy(ctx);
    return 0;
}
