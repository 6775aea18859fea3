/* The tiled executor (mel_set_tile_cols, issue 19): chunks of R rows ×
 * tiles of vocabulary columns, the row program's reductions merged across
 * tiles in column order.
 *
 * Every built-in and a user transform (focal), fused / recompute / forward,
 * f64 and f32, tile widths from 1 column to more than V (V = 263, odd: the
 * last tile is narrower), several rows per chunk, ignored rows (skipped),
 * a bias, a teacher head, grpo at token and sequence level (segment sums),
 * against:
 *   - the row executor (whole rows) on the same inputs: f64 relative error
 *     ≤ 1e-12 (the bound), f32 ≤ 2e-5;
 *   - the independent fp64 references of t/ref.c (ce with bias and label
 *     smoothing, kl / reverse_kl / jsd): ≤ 1e-12;
 *   - finite differences (mel_gradcheck) with tiles of 7 columns.
 * Then the planner (mel_plan_call) against the call's own figures, the
 * automatic choice under a 64 KiB budget at V = 50261, and the refusals. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 36, D = 11, V = 263, IGN = -100, SEG = 4 };

static double X[N * D], W[V * D], XT[N * D], WT[V * D], B[V], ADV[N], MASK[N], OLD[N];
static int64_t LAB[N];

typedef struct result {
    double y[N], dx[N * D], dw[V * D], db[V], aux[N];
    mel_status s;
    int64_t tiles;
} result;

static int is_teacher(const char *n) { return !strcmp(n, "kl") || !strcmp(n, "reverse_kl") || !strcmp(n, "jsd"); }
static int has_labels(const char *n) { return strcmp(n, "entropy") && strcmp(n, "z_loss"); }
static int is_grpo(const char *n) { return !strncmp(n, "grpo", 4); }

/* mode: 0 fused, 1 recompute (dL/dy given per row), 2 forward */
static void call(mel_ctx *ctx, const char *name, const mel_transform *t, mel_dtype dt, int mode, int64_t cols,
                 int64_t rows, result *r)
{
    memset(r, 0, sizeof *r);
    const int f32 = dt == MEL_F32;
    float x32[N * D], w32[V * D], xt32[N * D], wt32[V * D], b32[V], y32[N], dx32[N * D], dw32[V * D], db32[V];
    for (int i = 0; i < N * D; i++) x32[i] = (float)X[i], xt32[i] = (float)XT[i];
    for (int i = 0; i < V * D; i++) w32[i] = (float)W[i], wt32[i] = (float)WT[i];
    for (int i = 0; i < V; i++) b32[i] = (float)B[i];
    const int bias = !strcmp(name, "ce");
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(f32 ? (void *)x32 : X, dt, N, D, 0), mel_mat(f32 ? (void *)w32 : W, dt, V, D, 0),
                  bias ? (f32 ? (void *)b32 : B) : NULL);
    if (is_teacher(name))
        mel_args_head(a, 1, mel_mat(f32 ? (void *)xt32 : XT, dt, N, D, 0), mel_mat(f32 ? (void *)wt32 : WT, dt, V, D, 0),
                      NULL);
    if (has_labels(name)) mel_args_index(a, "labels", LAB, MEL_I64, N);
    if (is_grpo(name)) {
        mel_args_input(a, "mask", MASK, MEL_F64, N);
        mel_args_input(a, "advantages", ADV, MEL_F64, N);
        mel_args_input(a, "old_logp", OLD, MEL_F64, N);
    }
    double dy[N];
    for (int i = 0; i < N; i++) dy[i] = 0.5 + 0.01 * i;
    mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
    float aux32[N];
    if (is_grpo(name)) mel_args_aux(a, "logp", f32 ? (void *)aux32 : r->aux, dt);
    if (mode != 1) mel_args_output(a, f32 ? (void *)y32 : r->y, dt);
    if (mode != 2) {
        mel_args_grad_output(a, dy, MEL_F64);
        mel_args_grad_head(a, 0, mel_mat(f32 ? (void *)dx32 : r->dx, dt, N, D, 0),
                           mel_mat(f32 ? (void *)dw32 : r->dw, dt, V, D, 0), bias ? (f32 ? (void *)db32 : r->db) : NULL,
                           MEL_OVERWRITE_DW);
    }
    mel_set_tile_cols(ctx, cols);
    mel_set_chunk_rows(ctx, rows);
    r->s = mode == 0 ? mel_forward_backward(ctx, t, a) : mode == 1 ? mel_backward(ctx, t, a) : mel_forward(ctx, t, a);
    if (r->s) diag("%s: %s", name, mel_last_error(ctx));
    r->tiles = mel_get_tile_cols(ctx);
    if (f32) {
        for (int i = 0; i < N; i++) r->y[i] = y32[i], r->aux[i] = is_grpo(name) ? aux32[i] : 0;
        for (int i = 0; i < N * D; i++) r->dx[i] = dx32[i];
        for (int i = 0; i < V * D; i++) r->dw[i] = dw32[i];
        for (int i = 0; i < V; i++) r->db[i] = bias ? db32[i] : 0;
    }
    mel_args_free(a);
    mel_set_tile_cols(ctx, 0);
    mel_set_chunk_rows(ctx, 0);
}

static double worst(const result *g, const result *w, int mode)
{
    double e = 0;
    if (mode != 1) e = fmax(e, ref_relerr(g->y, w->y, N, 1e-300)), e = fmax(e, ref_relerr(g->aux, w->aux, N, 1e-300));
    if (mode != 2) {
        e = fmax(e, ref_relerr(g->dx, w->dx, N * D, 1e-300));
        e = fmax(e, ref_relerr(g->dw, w->dw, V * D, 1e-300));
        e = fmax(e, ref_relerr(g->db, w->db, V, 1e-300));
    }
    return e;
}

static mel_status build(mel_ctx *ctx, const char *name, mel_transform **t)
{
    if (!strcmp(name, "focal")) {
        mel_graph *g = mel_graph_new();
        mel_val z = mel_g_logits(g, 0, 1);
        mel_val lab = mel_g_index(g, "labels", IGN);
        mel_val logpt = mel_g_gather(g, mel_g_log_softmax(g, z), lab);
        mel_val w = mel_g_square(g, mel_g_sub(g, mel_g_const(g, 1), mel_g_exp(g, logpt)));
        /* minus 0.1·max softmax: rmax, and argmaxmask in its adjoint, merged
         * across tiles */
        mel_val top = mel_g_rmax(g, mel_g_softmax(g, z));
        mel_g_set_output(g, mel_g_where(g, mel_g_valid(g, lab),
                                        mel_g_sub(g, mel_g_neg(g, mel_g_mul(g, w, logpt)), mel_g_scale(g, top, 0.1)),
                                        mel_g_const(g, 0)));
        mel_status s = mel_graph_compile(ctx, g, "focal", t);
        mel_graph_free(g);
        return s;
    }
    mel_params *p = mel_params_new();
    if (!strcmp(name, "ce")) mel_params_set(p, "label_smoothing", 0.1);
    if (!strcmp(name, "grpo_seq")) mel_params_set(p, "importance_sampling_level", 1), mel_params_set(p, "seq_len", SEG);
    /* old log-probs bound: the ratio is not identically 1, so finite
     * differences see the policy gradient */
    if (is_grpo(name)) mel_params_set(p, "use_old_logp", 1);
    mel_status s = mel_transform_builtin(ctx, is_grpo(name) ? "grpo" : name, p, t);
    mel_params_free(p);
    return s;
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(19));
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng), XT[i] = rng_normal(&rng);
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(&rng) * 0.7, WT[i] = rng_normal(&rng) * 0.7;
    for (int i = 0; i < V; i++) B[i] = 0.3 * rng_normal(&rng);
    for (int i = 0; i < N; i++) {
        LAB[i] = i % 7 == 3 ? IGN : rng_int(&rng, V);
        ADV[i] = rng_normal(&rng);
        MASK[i] = i % 5 == 4 ? 0 : 1;
    }
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return ok(0, "context: %s", mel_ctx_create_error()), done_testing();
    { /* old_logp: the policy's own log-probs, perturbed (ratios near 1, some clipped) */
        mel_transform *lp = NULL;
        mel_transform_builtin(ctx, "logprob", NULL, &lp);
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
        mel_args_index(a, "labels", LAB, MEL_I64, N);
        mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
        mel_args_output(a, OLD, MEL_F64);
        ok(mel_forward(ctx, lp, a) == MEL_OK, "old_logp from logprob");
        for (int i = 0; i < N; i++) OLD[i] += 0.15 * rng_normal(&rng);
        mel_args_free(a);
        mel_transform_free(lp);
    }
    const char *names[] = {"ce", "logprob", "entropy", "z_loss", "kl", "reverse_kl", "jsd", "grpo", "grpo_seq", "focal"};
    const int64_t widths[] = {1, 7, 64, 262, 263, 1000};
    static result ref, got;
    for (size_t k = 0; k < sizeof names / sizeof *names; k++) {
        const char *name = names[k];
        mel_transform *t = NULL;
        if (!ok(build(ctx, name, &t) == MEL_OK, "%s: built", name)) {
            diag("%s", mel_last_error(ctx));
            continue;
        }
        for (int f32 = 0; f32 < 2; f32++) {
            const mel_dtype dt = f32 ? MEL_F32 : MEL_F64;
            const double tol = f32 ? 2e-5 : 1e-12;
            for (int mode = 0; mode < 3; mode++) {
                call(ctx, name, t, dt, mode, 0, 0, &ref);
                double e = 0;
                int bad = ref.s != MEL_OK || ref.tiles != 0;
                for (size_t wi = 0; wi < sizeof widths / sizeof *widths; wi++)
                    for (int64_t rows = 0; rows <= 8; rows += 8) { /* automatic, and chunks of 8 rows */
                        call(ctx, name, t, dt, mode, widths[wi], rows, &got);
                        const int64_t want = widths[wi] < V ? widths[wi] : V;
                        bad |= got.s != MEL_OK || got.tiles != want;
                        e = fmax(e, worst(&got, &ref, mode));
                    }
                ok(!bad && e <= tol, "%s %s %s: tiles of 1..1000 columns, chunks auto and 8 rows, vs whole rows: "
                   "rel err %.2e (tol %.0e)", name, f32 ? "f32" : "f64", mode == 0 ? "fused" : mode == 1 ? "recompute" : "forward",
                   e, tol);
            }
        }
        /* finite differences through the tiled executor */
        {
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), !strcmp(name, "ce") ? B : NULL);
            if (is_teacher(name)) mel_args_head(a, 1, mel_mat(XT, MEL_F64, N, D, 0), mel_mat(WT, MEL_F64, V, D, 0), NULL);
            if (has_labels(name)) mel_args_index(a, "labels", LAB, MEL_I64, N);
            if (is_grpo(name)) {
                mel_args_input(a, "mask", MASK, MEL_F64, N);
                mel_args_input(a, "advantages", ADV, MEL_F64, N);
                mel_args_input(a, "old_logp", OLD, MEL_F64, N);
            }
            double y;
            mel_args_output(a, &y, MEL_F64);
            mel_set_tile_cols(ctx, 7);
            mel_gradcheck_opts o = {.seed = 3, .samples = 12};
            mel_gradcheck_report r;
            mel_status s = mel_gradcheck(ctx, t, a, &o, &r);
            ok(s == MEL_OK && r.failed == 0 && mel_get_tile_cols(ctx) == 7,
               "%s: tiles of 7 columns vs finite differences: %d entries, max rel err %.1e %s", name, r.checked,
               r.max_rel_err, r.failed ? r.worst : "");
            if (s) diag("%s", mel_last_error(ctx));
            mel_set_tile_cols(ctx, 0);
            mel_args_free(a);
        }
        mel_transform_free(t);
    }

    /* independent fp64 references: ce (bias, label smoothing), kl, reverse_kl, jsd */
    {
        static double Z[N * V], ZT[N * V], G[N * V], yr[N], rdx[N * D], rdw[V * D], rdb[V], s[N];
        for (int i = 0; i < N; i++) s[i] = 0.5 + 0.01 * i;
        for (int k = 0; k < 4; k++) {
            const char *name = k == 0 ? "ce" : k == 1 ? "kl" : k == 2 ? "reverse_kl" : "jsd";
            mel_transform *t = NULL;
            build(ctx, name, &t);
            ref_logits(N, D, V, X, W, k == 0 ? B : NULL, Z);
            if (k == 0) {
                ref_ce_opts o;
                ref_ce_defaults(&o);
                o.label_smoothing = 0.1;
                ref_ce(N, V, Z, LAB, &o, yr, G);
            } else {
                ref_logits(N, D, V, XT, WT, NULL, ZT);
                ref_kd(N, V, Z, ZT, LAB, IGN, k - 1, 0.5, 1.0, 1, yr, G);
            }
            ref_backprop(N, D, V, X, W, G, s, rdx, rdw, rdb);
            call(ctx, name, t, MEL_F64, 0, 5, 8, &got);
            double e = fmax(ref_relerr(got.y, yr, N, 1e-300), ref_relerr(got.dx, rdx, N * D, 1e-300));
            e = fmax(e, ref_relerr(got.dw, rdw, V * D, 1e-300));
            if (k == 0) e = fmax(e, ref_relerr(got.db, rdb, V, 1e-300));
            ok(got.s == MEL_OK && e <= 1e-12, "%s f64, tiles of 5 columns, chunks of 8 rows vs the fp64 reference: "
               "rel err %.2e", name, e);
            mel_transform_free(t);
        }
    }

    /* the planner's figures are the call's */
    {
        mel_transform *t = NULL;
        build(ctx, "ce", &t);
        const int64_t limits[] = {20000, 64 << 10, 300000};
        for (int k = 0; k < 3; k++) {
            mel_set_workspace_limit(ctx, limits[k]);
            mel_set_tile_cols(ctx, k == 2 ? 50 : 0);
            double y, dx[N * D], dw[V * D];
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
            mel_args_index(a, "labels", LAB, MEL_I64, N);
            mel_args_output(a, &y, MEL_F64);
            mel_args_grad_head(a, 0, mel_mat(dx, MEL_F64, N, D, 0), mel_mat(dw, MEL_F64, V, D, 0), NULL, MEL_OVERWRITE_DW);
            mel_call_plan pl;
            mel_status s1 = mel_plan_call(ctx, t, a, MEL_MODE_FORWARD_BACKWARD, &pl);
            const int64_t pt = mel_get_tile_cols(ctx);
            mel_status s2 = mel_forward_backward(ctx, t, a);
            mel_stats st;
            mel_get_stats(ctx, &st);
            ok(s1 == MEL_OK && s2 == MEL_OK && pl.chunk_rows == st.chunk_rows && pl.chunks == st.chunks &&
                   pl.peak_workspace_bytes == st.peak_workspace_bytes && pt == mel_get_tile_cols(ctx) &&
                   st.peak_workspace_bytes <= limits[k],
               "limit %lld%s: plan = call: %lld rows × %lld columns, %lld chunks, %lld bytes (call: %lld rows, %lld "
               "chunks, %lld bytes, %lld columns)", (long long)limits[k], k == 2 ? ", tile_cols 50" : "",
               (long long)pl.chunk_rows, (long long)pt, (long long)pl.chunks, (long long)pl.peak_workspace_bytes,
               (long long)st.chunk_rows, (long long)st.chunks, (long long)st.peak_workspace_bytes,
               (long long)mel_get_tile_cols(ctx));
            if (s1 || s2) diag("%s", mel_last_error(ctx));
            mel_args_free(a);
        }
        mel_set_workspace_limit(ctx, 0);
        mel_set_tile_cols(ctx, 0);
        mel_transform_free(t);
    }

    /* 64 KiB at V = 50261: tiles chosen by themselves; y and gradients
     * equal the whole-row call's (no limit) */
    {
        enum { n = 16, d = 64, v = 50261 };
        float *x = malloc(4 * n * d), *w = malloc(4 * (size_t)v * d), *dx[2], *dw[2], y[2];
        int64_t lab[n];
        for (int i = 0; i < n * d; i++) x[i] = (float)rng_normal(&rng);
        for (int64_t i = 0; i < (int64_t)v * d; i++) w[i] = (float)(rng_normal(&rng) * 0.125);
        for (int i = 0; i < n; i++) lab[i] = i % 5 == 2 ? IGN : rng_int(&rng, v);
        mel_transform *t = NULL;
        mel_transform_builtin(ctx, "ce", NULL, &t);
        mel_status s[2];
        mel_stats st[2];
        int64_t cols[2];
        for (int k = 0; k < 2; k++) {
            dx[k] = malloc(4 * n * d), dw[k] = malloc(4 * (size_t)v * d);
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(x, MEL_F32, n, d, 0), mel_mat(w, MEL_F32, v, d, 0), NULL);
            mel_args_index(a, "labels", lab, MEL_I64, n);
            mel_args_output(a, &y[k], MEL_F32);
            mel_args_grad_head(a, 0, mel_mat(dx[k], MEL_F32, n, d, 0), mel_mat(dw[k], MEL_F32, v, d, 0), NULL,
                               MEL_OVERWRITE_DW);
            mel_set_workspace_limit(ctx, k ? 64 << 10 : 0);
            s[k] = mel_forward_backward(ctx, t, a);
            if (s[k]) diag("%s", mel_last_error(ctx));
            mel_get_stats(ctx, &st[k]);
            cols[k] = mel_get_tile_cols(ctx);
            mel_args_free(a);
        }
        double ey = fabs(y[1] - y[0]) / fabs(y[0]), ex = 0, ew = 0, mx = 0, mw = 0;
        for (int i = 0; i < n * d; i++) ex = fmax(ex, fabs(dx[1][i] - dx[0][i])), mx = fmax(mx, fabs(dx[0][i]));
        for (int64_t i = 0; i < (int64_t)v * d; i++) ew = fmax(ew, fabs(dw[1][i] - dw[0][i])), mw = fmax(mw, fabs(dw[0][i]));
        ok(s[0] == MEL_OK && s[1] == MEL_OK && cols[0] == 0 && cols[1] > 0 && st[1].peak_workspace_bytes <= 64 << 10 &&
               ey < 1e-5 && ex / mx < 2e-5 && ew / mw < 2e-5,
           "V = %d at a 64 KiB budget: tiles of %lld columns × %lld rows, %lld bytes; vs whole rows: y %.1e dX %.1e "
           "dW %.1e", v, (long long)cols[1], (long long)st[1].chunk_rows, (long long)st[1].peak_workspace_bytes, ey,
           ex / mx, ew / mw);
        mel_set_workspace_limit(ctx, 0);
        for (int k = 0; k < 2; k++) free(dx[k]), free(dw[k]);
        free(x), free(w);
        mel_transform_free(t);
    }

    /* refusals */
    {
        mel_transform *t = NULL;
        mel_transform_builtin(ctx, "ce", NULL, &t);
        uint16_t x16[N * D] = {0}, w16[V * D] = {0};
        float y;
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(x16, MEL_BF16, N, D, 0), mel_mat(w16, MEL_BF16, V, D, 0), NULL);
        mel_args_index(a, "labels", LAB, MEL_I64, N);
        mel_args_output(a, &y, MEL_F32);
        mel_set_tile_cols(ctx, 16);
        mel_status s = mel_forward(ctx, t, a);
        ok(s == MEL_ERR_UNSUPPORTED && strstr(mel_last_error(ctx), "tile_cols = 16") &&
               strstr(mel_last_error(ctx), "16-bit"),
           "bf16 with tile_cols refused: %s", mel_last_error(ctx));
        ok(mel_set_tile_cols(ctx, -1) == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "-1"),
           "tile_cols -1 refused: %s", mel_last_error(ctx));
        mel_set_tile_cols(ctx, 0);
        mel_args_free(a);
        mel_transform_free(t);
    }
    mel_ctx_destroy(ctx);
    return done_testing();
}
