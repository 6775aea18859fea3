/* kd.t -- kl, reverse_kl and jsd with and without labels, against the
 * independent fp64 reference ref_kd (t/ref.c: closed-form values and
 * gradients written from the formulas, no libmel code).
 *
 * Labels only mask rows in these transforms.  use_labels = 1 (default):
 * labels must be bound, rows with ignore_index do not count.
 * use_labels = 0: no labels are read and every row counts; binding labels
 * then is an error, and so is ignore_index.  Both are checked here with an
 * awkward shape (N = 13, D = 6, V = 11), temperature 1.7, t2_scale 1,
 * several chunk sizes, reductions mean / sum / none, f64 and f32.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 13, D = 6, V = 11 };
#define TEMP 1.7
#define IGN (-100)

static double X[N * D], W[V * D], Xt[N * D], Wt[V * D];
static int64_t labels[N];

static int has(const char *s, const char *sub) { return s && strstr(s, sub) != NULL; }

static mel_transform *build(mel_ctx *ctx, const char *name, double beta, int use_labels)
{
    mel_params *p = mel_params_new();
    mel_params_set(p, "temperature", TEMP);
    mel_params_set(p, "t2_scale", 1);
    if (!strcmp(name, "jsd")) mel_params_set(p, "beta", beta);
    if (use_labels >= 0) mel_params_set(p, "use_labels", use_labels);
    mel_transform *t = NULL;
    mel_status s = mel_transform_builtin(ctx, name, p, &t);
    mel_params_free(p);
    if (s != MEL_OK) ok(0, "build %s: %s", name, mel_last_error(ctx));
    return t;
}

/* One call in f64 or f32 with reduction red and chunk rows; compares y,
 * dX and dW with the reference. */
static void check(mel_ctx *ctx, const char *name, int kind, double beta, int with_labels, mel_reduction red,
                  int64_t chunk, mel_dtype dt)
{
    mel_transform *t = build(ctx, name, beta, with_labels);
    if (!t) return;
    /* reference */
    double Zs[N * V], Zt[N * V], yr[N], G[N * V], s[N], dXr[N * D], dWr[V * D];
    ref_logits(N, D, V, X, W, NULL, Zs);
    ref_logits(N, D, V, Xt, Wt, NULL, Zt);
    int64_t cnt = ref_kd(N, V, Zs, Zt, with_labels ? labels : NULL, IGN, kind, beta, TEMP, 1, yr, G);
    double ysum = 0;
    for (int i = 0; i < N; i++) ysum += yr[i];
    for (int i = 0; i < N; i++) s[i] = red == MEL_REDUCE_MEAN ? 1.0 / (double)cnt : 1.0;
    ref_backprop(N, D, V, X, W, G, s, dXr, dWr, NULL);
    /* libmel */
    const int f32 = dt == MEL_F32;
    float xf[N * D], wf[V * D], xtf[N * D], wtf[V * D], dxf[N * D], dwf[V * D], yf[N];
    double dx[N * D], dw[V * D], y[N];
    for (int i = 0; i < N * D; i++) xf[i] = (float)X[i], xtf[i] = (float)Xt[i];
    for (int i = 0; i < V * D; i++) wf[i] = (float)W[i], wtf[i] = (float)Wt[i];
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(f32 ? (void *)xf : X, dt, N, D, 0), mel_mat(f32 ? (void *)wf : W, dt, V, D, 0), NULL);
    mel_args_head(a, 1, mel_mat(f32 ? (void *)xtf : Xt, dt, N, D, 0), mel_mat(f32 ? (void *)wtf : Wt, dt, V, D, 0),
                  NULL);
    if (with_labels) mel_args_index(a, "labels", labels, MEL_I64, N);
    mel_args_reduction(a, red, NULL);
    mel_args_output(a, f32 ? (void *)yf : y, dt);
    mel_args_grad_head(a, 0, mel_mat(f32 ? (void *)dxf : dx, dt, N, D, 0), mel_mat(f32 ? (void *)dwf : dw, dt, V, D, 0),
                       NULL, MEL_OVERWRITE_DW);
    mel_set_chunk_rows(ctx, chunk);
    mel_status st = mel_forward_backward(ctx, t, a);
    mel_args_free(a);
    mel_transform_free(t);
    if (f32) {
        for (int i = 0; i < N * D; i++) dx[i] = dxf[i];
        for (int i = 0; i < V * D; i++) dw[i] = dwf[i];
        for (int i = 0; i < N; i++) y[i] = yf[i];
    }
    double ey;
    if (red == MEL_REDUCE_NONE) {
        ey = ref_relerr(y, yr, N, 1e-300);
    } else {
        double want = red == MEL_REDUCE_MEAN ? ysum / (double)cnt : ysum;
        ey = fabs(y[0] - want) / fmax(fabs(want), 1e-300);
    }
    double ex = ref_relerr(dx, dXr, N * D, 1e-300), ew = ref_relerr(dw, dWr, V * D, 1e-300);
    const double tol = f32 ? 2e-5 : 1e-11;
    const char *rn = red == MEL_REDUCE_MEAN ? "mean" : red == MEL_REDUCE_SUM ? "sum" : "none";
    ok(st == MEL_OK && ey <= tol && ex <= tol && ew <= tol,
       "%s%s %s %s reduction=%s chunk=%lld (%lld rows count): rel err y %.1e dX %.1e dW %.1e %s", name,
       kind == 2 ? (beta == 0.5 ? "(0.5)" : "(0.3)") : "", with_labels ? "with labels" : "use_labels=0",
       f32 ? "f32" : "f64", rn, (long long)chunk, (long long)cnt, ey, ex, ew, st ? mel_last_error(ctx) : "");
}

int main(void)
{
    tap_rng r;
    rng_seed(&r, test_seed(1130));
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&r), Xt[i] = rng_normal(&r);
    for (int i = 0; i < V * D; i++) W[i] = 0.8 * rng_normal(&r), Wt[i] = 0.8 * rng_normal(&r);
    for (int i = 0; i < N; i++) labels[i] = rng_int(&r, V);
    labels[0] = labels[5] = labels[12] = IGN; /* three rows masked, first and last among them */

    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) {
        ok(0, "cpu context: %s", mel_ctx_create_error());
        return done_testing();
    }
    static const struct { const char *name; int kind; double beta; } T[] = {
        {"kl", 0, 0}, {"reverse_kl", 1, 0}, {"jsd", 2, 0.5}, {"jsd", 2, 0.3},
    };
    const mel_reduction reds[] = {MEL_REDUCE_MEAN, MEL_REDUCE_SUM, MEL_REDUCE_NONE};
    const int64_t chunks[] = {1, 4, 0};
    for (int k = 0; k < 4; k++)
        for (int lab = 1; lab >= 0; lab--)
            for (int ri = 0; ri < 3; ri++)
                for (int ci = 0; ci < 3; ci++)
                    check(ctx, T[k].name, T[k].kind, T[k].beta, lab, reds[ri], chunks[ci], MEL_F64);
    for (int k = 0; k < 4; k++)
        for (int lab = 1; lab >= 0; lab--) check(ctx, T[k].name, T[k].kind, T[k].beta, lab, MEL_REDUCE_MEAN, 5, MEL_F32);
    mel_set_chunk_rows(ctx, 0);

    /* explicit, never a silent fallback */
    const char *names[] = {"kl", "reverse_kl", "jsd"};
    for (int k = 0; k < 3; k++) {
        double y;
        /* default use_labels = 1 and no labels bound: refused, naming them */
        mel_transform *t = build(ctx, names[k], 0.5, -1);
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
        mel_args_head(a, 1, mel_mat(Xt, MEL_F64, N, D, 0), mel_mat(Wt, MEL_F64, V, D, 0), NULL);
        mel_args_output(a, &y, MEL_F64);
        mel_status s = mel_forward(ctx, t, a);
        ok(s == MEL_ERR_INVALID_ARGUMENT && has(mel_last_error(ctx), "'labels'"),
           "%s (use_labels = 1 by default) without labels is refused: %s", names[k], mel_last_error(ctx));
        mel_transform_free(t);
        /* use_labels = 0 with labels bound: refused */
        t = build(ctx, names[k], 0.5, 0);
        mel_args_index(a, "labels", labels, MEL_I64, N);
        s = mel_forward(ctx, t, a);
        ok(s == MEL_ERR_INVALID_ARGUMENT && has(mel_last_error(ctx), "'labels'"),
           "%s with use_labels = 0 and labels bound is refused: %s", names[k], mel_last_error(ctx));
        mel_transform_free(t);
        mel_args_free(a);
        /* use_labels = 0 with ignore_index: refused */
        mel_params *p = mel_params_new();
        mel_params_set(p, "use_labels", 0);
        mel_params_set(p, "ignore_index", -1);
        t = NULL;
        s = mel_transform_builtin(ctx, names[k], p, &t);
        ok(s == MEL_ERR_INVALID_ARGUMENT && t == NULL && has(mel_last_error(ctx), "use_labels = 0") &&
               has(mel_last_error(ctx), "ignore_index"),
           "%s with use_labels = 0 and ignore_index is refused: %s", names[k], mel_last_error(ctx));
        /* use_labels out of range */
        mel_params_set(p, "ignore_index", -100);
        mel_params_set(p, "use_labels", 2);
        s = mel_transform_builtin(ctx, names[k], p, &t);
        ok(s == MEL_ERR_INVALID_ARGUMENT && has(mel_last_error(ctx), "use_labels = 2"),
           "%s: use_labels = 2 is refused: %s", names[k], mel_last_error(ctx));
        mel_params_free(p);
        /* the transform reports whether it reads labels */
        t = build(ctx, names[k], 0.5, 0);
        int nin = mel_transform_num_inputs(t);
        mel_transform_free(t);
        t = build(ctx, names[k], 0.5, 1);
        int nin1 = mel_transform_num_inputs(t);
        mel_transform_free(t);
        ok(nin == 0 && nin1 == 1, "%s: inputs %d with use_labels = 0, %d with use_labels = 1", names[k], nin, nin1);
    }
    mel_ctx_destroy(ctx);
    return done_testing();
}
