/* backend_ops.t -- every operation on every backend of this build.
 *
 * For each backend in the registry (backends/registry.c) that this build
 * compiled:
 *   1. the interface is complete (every required primitive is set);
 *   2. supports_op(op) holds for every op in [0, OP__COUNT) and fails
 *      outside it, and every op has a name;
 *   3. one row program whose forward and adjoint nodes together use every
 *      op up to OP__COUNT (asserted on the compiled transform, so a new op
 *      must be added here) runs on the backend: its gradients agree with
 *      central finite differences (mel_gradcheck, CPU), and a device
 *      backend's y, dX and dW agree with the CPU backend's (skipped when
 *      the device cannot be opened).
 *   4. the layout operations (sequence ids, groups: group sums and
 *      seqinfo) in a second program, gradient-checked on the CPU; a device
 *      backend that lists them in cpu_only[] must refuse that program with
 *      MEL_ERR_UNSUPPORTED.
 *
 * Linked statically (-static) to reach the internal registry.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "mel.h"
#include "tap.h"

enum { N = 6, D = 5, V = 7, SEG = 2 };

/* A program reaching every operation (the adjoint adds seed, sign,
 * onehot, argmaxmask and broadcast). */
static mel_graph *every_op_graph(void)
{
    mel_graph *g = mel_graph_new();
    mel_val z = mel_g_logits(g, 0, 1);
    mel_val lab = mel_g_index(g, "labels", -100);
    mel_val sc = mel_g_input(g, "scale", 1);
    mel_val one = mel_g_const(g, 1);
    mel_val a = mel_g_tanh(g, z), b = mel_g_sigmoid(g, z);
    mel_val c = mel_g_square(g, z), d = mel_g_sqrt(g, mel_g_add(g, mel_g_square(g, z), one));
    mel_val e = mel_g_log1p(g, mel_g_abs(g, z)), f = mel_g_exp(g, mel_g_neg(g, z));
    mel_val w = mel_g_where(g, mel_g_lt(g, z, mel_g_const(g, 0)), mel_g_min(g, a, b), mel_g_max(g, c, d));
    mel_val col = mel_g_iota(g);
    w = mel_g_where(g, mel_g_le(g, col, mel_g_const(g, 2)), w, mel_g_div(g, e, d));
    mel_val last = mel_g_eq(g, col, mel_g_sub(g, mel_g_vocab(g), one));
    w = mel_g_add(g, w, mel_g_mul(g, last, f));
    mel_val s1 = mel_g_sum(g, w);
    mel_val s2 = mel_g_mean(g, mel_g_log(g, mel_g_add(g, mel_g_exp(g, z), one)));
    mel_val s3 = mel_g_rmax(g, z), s4 = mel_g_logsumexp(g, z);
    mel_val seg = mel_g_segment_sum(g, mel_g_mul(g, s1, sc));
    /* stop_gradient of a value without a gradient: finite differences
     * see no more than the adjoint does */
    mel_val sg = mel_g_stop_gradient(g, mel_g_scale(g, mel_g_rmax(g, col), 0.1));
    mel_val y = mel_g_add(g, mel_g_add(g, s1, s2), mel_g_add(g, mel_g_mul(g, sg, s4), s3));
    y = mel_g_sub(g, mel_g_add(g, y, mel_g_scale(g, seg, 0.25)), mel_g_gather(g, z, lab));
    mel_val valid = mel_g_valid(g, lab);
    mel_g_set_segment(g, SEG);
    mel_g_set_count(g, valid);
    mel_g_set_output(g, mel_g_where(g, valid, y, mel_g_const(g, 0)));
    return g;
}

/* The layout operations: sequences from ids (one row in none), groups of
 * two, group sums, the three seqinfo fields and a group read (a DPO-like
 * pairing). */
static const int64_t SEQ_IDS[N] = {1, 0, 0, 3, -1, 2};

static mel_graph *layout_graph(void)
{
    mel_graph *g = mel_graph_new();
    mel_g_set_sequence_ids(g, "seq");
    mel_g_set_group(g, 2);
    mel_val z = mel_g_logits(g, 0, 1);
    mel_val lab = mel_g_index(g, "labels", -100);
    mel_val lp = mel_g_sub(g, mel_g_gather(g, z, lab), mel_g_logsumexp(g, z));
    mel_val pi = mel_g_segment_sum(g, lp);
    mel_val h = mel_g_sub(g, mel_g_group_read(g, pi, 0), mel_g_group_read(g, pi, 1));
    mel_val tot = mel_g_group_sum(g, mel_g_mul(g, lp, mel_g_sequence_rank(g)));
    mel_val y = mel_g_add(g, mel_g_where(g, mel_g_group_first(g), mel_g_sigmoid(g, h), mel_g_const(g, 0)),
                          mel_g_mul(g, mel_g_sequence_first(g), mel_g_scale(g, tot, 0.3)));
    mel_g_set_output(g, y);
    return g;
}

/* Ops a device backend may lack, refusing the program that uses them. */
static int cpu_only(int op) { return op == OP_SEQINFO; }

typedef struct data {
    double x[N * D], w[V * D], scale[N];
    int64_t labels[N];
} data;

static void fill(data *dt)
{
    tap_rng r;
    rng_seed(&r, 20261130);
    for (int i = 0; i < N * D; i++) dt->x[i] = rng_normal(&r);
    for (int i = 0; i < V * D; i++) dt->w[i] = 0.7 * rng_normal(&r);
    for (int i = 0; i < N; i++) dt->scale[i] = 0.5 + rng_uniform(&r);
    for (int i = 0; i < N; i++) dt->labels[i] = rng_int(&r, V);
    dt->labels[3] = -100; /* one ignored row */
}

/* y, dX, dW of the program on ctx; the buffers are host memory (copied
 * to and from the device when the backend is not on the host). */
static mel_status run(mel_ctx *ctx, const mel_transform *t, const data *dt, double *y, double *dx, double *dw)
{
    const int host = ctx->ops->host_memory;
    const size_t bx = sizeof dt->x, bw = sizeof dt->w, bs = sizeof dt->scale, bl = sizeof dt->labels;
    void *X = (void *)dt->x, *W = (void *)dt->w, *S = (void *)dt->scale, *L = (void *)dt->labels;
    void *DX = dx, *DW = dw, *Y = y;
    mel_status s = MEL_OK;
    if (!host) {
        if ((s = mel_alloc(ctx, bx, &X)) || (s = mel_alloc(ctx, bw, &W)) || (s = mel_alloc(ctx, bs, &S)) ||
            (s = mel_alloc(ctx, bl, &L)) || (s = mel_alloc(ctx, bx, &DX)) || (s = mel_alloc(ctx, bw, &DW)) ||
            (s = mel_alloc(ctx, sizeof(double), &Y)))
            return s;
        mel_to_device(ctx, X, dt->x, bx);
        mel_to_device(ctx, W, dt->w, bw);
        mel_to_device(ctx, S, dt->scale, bs);
        mel_to_device(ctx, L, dt->labels, bl);
    }
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_index(a, "labels", L, MEL_I64, N);
    mel_args_input(a, "scale", S, MEL_F64, N);
    mel_args_output(a, Y, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(DX, MEL_F64, N, D, 0), mel_mat(DW, MEL_F64, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    s = mel_forward_backward(ctx, t, a);
    mel_args_free(a);
    if (!host) {
        if (s == MEL_OK) {
            mel_to_host(ctx, y, Y, sizeof(double));
            mel_to_host(ctx, dx, DX, bx);
            mel_to_host(ctx, dw, DW, bw);
        }
        mel_free(ctx, X), mel_free(ctx, W), mel_free(ctx, S), mel_free(ctx, L);
        mel_free(ctx, DX), mel_free(ctx, DW), mel_free(ctx, Y);
    }
    return s;
}

int main(void)
{
    mel_ctx *cpu = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &cpu) != MEL_OK) {
        ok(0, "cpu context: %s", mel_ctx_create_error());
        return done_testing();
    }
    mel_graph *g = every_op_graph();
    mel_transform *t = NULL;
    mel_status s = mel_graph_compile(cpu, g, "every_op", &t);
    mel_graph_free(g);
    if (!ok(s == MEL_OK, "the every-op program compiles: %s", mel_last_error(cpu))) return done_testing();

    /* the program covers every operation up to the op count */
    int used[OP__COUNT] = {0};
    for (int i = 0; i < t->n; i++)
        if (t->nodes[i].op >= 0 && t->nodes[i].op < OP__COUNT) used[t->nodes[i].op] = 1;
    g = layout_graph();
    mel_transform *tl = NULL;
    s = mel_graph_compile(cpu, g, "every_layout_op", &tl);
    mel_graph_free(g);
    if (!ok(s == MEL_OK, "the layout program compiles: %s", mel_last_error(cpu))) return done_testing();
    for (int i = 0; i < tl->n; i++)
        if (tl->nodes[i].op >= 0 && tl->nodes[i].op < OP__COUNT) used[tl->nodes[i].op] = 1;
    for (int op = 0; op < OP__COUNT; op++)
        ok(used[op], "op %d (%s) is in the every-op or the layout program (forward or adjoint)", op,
           mel_op_name(op));

    data dt;
    fill(&dt);
    double y_cpu, dx_cpu[N * D], dw_cpu[V * D];
    s = run(cpu, t, &dt, &y_cpu, dx_cpu, dw_cpu);
    ok(s == MEL_OK && isfinite(y_cpu), "every-op program on the cpu: y = %.6f (%s)", y_cpu, mel_last_error(cpu));
    {
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(dt.x, MEL_F64, N, D, 0), mel_mat(dt.w, MEL_F64, V, D, 0), NULL);
        mel_args_index(a, "labels", dt.labels, MEL_I64, N);
        mel_args_input(a, "scale", dt.scale, MEL_F64, N);
        mel_gradcheck_opts o = {.seed = 7, .samples = 30};
        mel_gradcheck_report rep;
        s = mel_gradcheck(cpu, t, a, &o, &rep);
        ok(s == MEL_OK && rep.checked > 0 && rep.failed == 0,
           "every-op program: gradients agree with finite differences (%d entries, max rel err %.2e, %s)",
           rep.checked, rep.max_rel_err, rep.worst);
        mel_args_free(a);
    }

#ifdef HAVE_CUDA
    {
        /* linked statically: the CUDA module is not beside the program but
         * in the build tree's lib/.libs (MEL_CUDA_MODULE, backends/registry.c) */
        const char *top = getenv("MEL_TOP_BUILDDIR");
        char path[4096];
        snprintf(path, sizeof path, "%s/lib/.libs/libmel-cuda.so", top ? top : ".");
        if (!getenv("MEL_CUDA_MODULE")) setenv("MEL_CUDA_MODULE", path, 1);
    }
#endif
    /* the layout program: finite differences, and the same values for
     * every chunk size (chunk_rows 1 is raised to the 3 rows of a group) */
    {
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(dt.x, MEL_F64, N, D, 0), mel_mat(dt.w, MEL_F64, V, D, 0), NULL);
        mel_args_index(a, "labels", dt.labels, MEL_I64, N);
        mel_args_index(a, "seq", SEQ_IDS, MEL_I64, N);
        mel_gradcheck_opts o = {.seed = 11, .samples = 30};
        mel_gradcheck_report rep;
        s = mel_gradcheck(cpu, tl, a, &o, &rep);
        ok(s == MEL_OK && rep.checked > 0 && rep.failed == 0,
           "layout program: gradients agree with finite differences (%d entries, max rel err %.2e, %s) %s",
           rep.checked, rep.max_rel_err, rep.worst, mel_last_error(cpu));
        double y[2], dx[2][N * D];
        for (int k = 0; k < 2; k++) {
            mel_set_chunk_rows(cpu, k ? 1 : 0);
            mel_args_output(a, &y[k], MEL_F64);
            mel_args_grad_head(a, 0, mel_mat(dx[k], MEL_F64, N, D, 0), mel_mat(dw_cpu, MEL_F64, V, D, 0), NULL,
                               MEL_OVERWRITE_DW);
            s = mel_forward_backward(cpu, tl, a);
            mel_stats st;
            mel_get_stats(cpu, &st);
            if (k) ok(s == MEL_OK && st.chunks == 2, "layout program, chunk_rows 1: 2 chunks of whole groups "
                      "(%lld) %s", (long long)st.chunks, mel_last_error(cpu));
        }
        mel_set_chunk_rows(cpu, 0);
        double e = fabs(y[0] - y[1]);
        for (int k = 0; k < N * D; k++) e = fmax(e, fabs(dx[0][k] - dx[1][k]));
        ok(e <= 1e-14, "layout program: one chunk and chunks of one group agree (max diff %.1e)", e);
        mel_args_free(a);
    }

    for (int i = 0; i < mel_backend_entries(); i++) {
        const mel_backend_entry *e = mel_backend_entry_at(i);
        char why[1024] = "";
        const mel_backend_ops *o = e->ops ? e->ops(why, sizeof why) : NULL;
        if (!e->ops) {
            skip("%s backend not in this build (%s)", e->label, e->build_hint);
            continue;
        }
        if (!o) {
            skip("%s backend not available in this process (%s)", e->label, why);
            continue;
        }
        ok(o->name && o->threads && o->alloc && o->free && o->copy && o->zero2d && o->gemm && o->widen &&
               o->store16 && o->add_bias && o->colsum && o->supports_op && o->run_phase && o->merge_segments &&
               o->conv_block_bytes > 0,
           "%s: every required primitive is set", e->label);
        int missing = 0, first = -1;
        for (int op = 0; op < OP__COUNT; op++)
            if ((!o->supports_op(op) && !(e->kind != MEL_BACKEND_CPU && cpu_only(op))) ||
                !strcmp(mel_op_name(op), "?")) {
                missing++;
                if (first < 0) first = op;
            }
        ok(missing == 0, "%s: supports all %d ops up to OP__COUNT but cpu_only() (%d missing, first %d %s)", e->label,
           (int)OP__COUNT, missing, first, first >= 0 ? mel_op_name(first) : "-");
        ok(!o->supports_op(OP__COUNT) && !o->supports_op(-1), "%s: supports_op refuses op numbers outside "
           "[0, OP__COUNT)", e->label);
        if (e->kind == MEL_BACKEND_CPU) continue;
        mel_ctx *dev = NULL;
        if (mel_ctx_create(e->kind, &dev) != MEL_OK) {
            skip("%s backend: no context (%s)", e->label, mel_ctx_create_error());
            continue;
        }
        double y, dx[N * D], dw[V * D];
        s = run(dev, t, &dt, &y, dx, dw);
        double ex = 0, ew = 0;
        for (int k = 0; k < N * D; k++) ex = fmax(ex, fabs(dx[k] - dx_cpu[k]));
        for (int k = 0; k < V * D; k++) ew = fmax(ew, fabs(dw[k] - dw_cpu[k]));
        ok(s == MEL_OK && fabs(y - y_cpu) <= 1e-10 * fmax(1, fabs(y_cpu)) && ex <= 1e-10 && ew <= 1e-10,
           "%s: every-op program agrees with the cpu (|dy| %.1e, max |ddX| %.1e, max |ddW| %.1e) %s", e->label,
           fabs(y - y_cpu), ex, ew, mel_last_error(dev));
        {
            /* host data: the call must be refused before reading any */
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(dt.x, MEL_F64, N, D, 0), mel_mat(dt.w, MEL_F64, V, D, 0), NULL);
            mel_args_index(a, "labels", dt.labels, MEL_I64, N);
            mel_args_index(a, "seq", SEQ_IDS, MEL_I64, N);
            mel_args_output(a, &y, MEL_F64);
            int sup = 1;
            for (int op = 0; op < OP__COUNT; op++) sup &= !cpu_only(op) || o->supports_op(op);
            s = mel_forward(dev, tl, a);
            ok(sup || (s == MEL_ERR_UNSUPPORTED && strstr(mel_last_error(dev), "every_layout_op")),
               "%s: the layout program is refused by name, or supported (%s)", e->label, mel_last_error(dev));
            mel_args_free(a);
        }
        mel_ctx_destroy(dev);
    }
    mel_transform_free(t);
    mel_transform_free(tl);
    mel_ctx_destroy(cpu);
    return done_testing();
}
