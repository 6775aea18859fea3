/* skip.t -- row skipping (mel_set_row_skipping) and call planning
 * (mel_plan_call).
 *
 *  - Every built-in with labels or a mask (ce, logprob, kl, reverse_kl, jsd,
 *    grpo token level) and a user-built transform masked by a product with
 *    a per-row input: the results with skipping equal those without it
 *    (f64 within 1e-12, f32 within 1e-5, relative to the largest entry) for
 *    mel_forward, mel_backward and mel_forward_backward, ignored fractions
 *    0, 0.5, 0.99 and 1, automatic chunks and fixed chunks whose edges fall
 *    on ignored rows, reductions mean / sum / none (with an upstream
 *    gradient on every row, ignored ones included), MEL_ACCUMULATE_DX.
 *    The skipped rows' dX must be exactly 0 (or the caller's values when
 *    accumulating), their y, aux outputs and input gradients 0; all rows
 *    ignored: mean 0, every gradient 0; the GEMMs ran on the active rows
 *    only (mel_get_active_rows, gemm_flops).
 *  - Transforms that must not skip: segment sums (grpo sequence level), an
 *    unmasked aux output bound (grpo's logp), a mask that is
 *    differentiable, a mask that depends on the logits.
 *  - CE in f64 with ignored rows against the independent fp64 reference
 *    (t/ref.c), with skipping on.
 *  - bf16 storage with MEL_ACCUMULATE_DX: skipping vs not.
 *  - mel_plan_call's chunk rows, chunks, active rows and peak workspace
 *    equal the call's mel_stats (skipping on and off, budgets, fixed
 *    chunks, MEAN's count pass, bf16, shapes only).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 61, D = 7, V = 37 };
#define IGN (-100)

static double X[N * D], W[V * D], Xt[N * D], Wt[V * D], B[V];
static double MASK[N], ADV[N], REF[N], SC[N], DY[N];
static int64_t LAB[N];

typedef enum { T_CE, T_LOGPROB, T_KL, T_RKL, T_JSD, T_GRPO, T_USER, T__N } tkind;
static const char *tname[] = {"ce", "logprob", "kl", "reverse_kl", "jsd", "grpo", "user"};

/* the user transform: y = m·(lse(z) − z[label])·s, m a per-row mask
 * (not differentiable), s a differentiable per-row scale */
static mel_transform *build_user(mel_ctx *ctx, int mask_diff, int mask_from_logits)
{
    mel_graph *g = mel_graph_new();
    mel_val z = mel_g_logits(g, 0, 1);
    mel_val lab = mel_g_index(g, "labels", IGN);
    mel_val lse = mel_g_logsumexp(g, z);
    mel_val v = mel_g_mul(g, mel_g_sub(g, lse, mel_g_gather(g, z, lab)), mel_g_input(g, "scale", 1));
    mel_val m = mask_from_logits ? mel_g_lt(g, mel_g_const(g, 1e30), lse) : mel_g_input(g, "mask", mask_diff);
    mel_g_set_output(g, mel_g_mul(g, m, v));
    mel_g_set_count(g, mel_g_valid(g, lab));
    mel_transform *t = NULL;
    if (mel_graph_compile(ctx, g, "user", &t)) ok(0, "compile user: %s", mel_last_error(ctx));
    mel_graph_free(g);
    return t;
}

static mel_transform *build(mel_ctx *ctx, tkind k)
{
    if (k == T_USER) return build_user(ctx, 0, 0);
    mel_params *p = mel_params_new();
    if (k == T_CE) mel_params_set(p, "label_smoothing", 0.1), mel_params_set(p, "z_loss", 1e-3);
    if (k >= T_KL && k <= T_JSD) mel_params_set(p, "temperature", 1.5);
    if (k == T_GRPO) mel_params_set(p, "beta", 0.04);
    mel_transform *t = NULL;
    if (mel_transform_builtin(ctx, tname[k], p, &t)) ok(0, "build %s: %s", tname[k], mel_last_error(ctx));
    mel_params_free(p);
    return t;
}

/* Which rows are ignored: fraction f of them at random, or the rows at the
 * edges of chunks of `edge` rows (f < 0). */
static void set_ignored(tap_rng *rng, double f, int edge, int *ign)
{
    for (int i = 0; i < N; i++) ign[i] = 0;
    if (f < 0) {
        for (int i = 0; i < N; i++) ign[i] = i % edge == 0 || i % edge == edge - 1 || i == N - 1;
        return;
    }
    int want = (int)lround(f * N);
    if (f == 0.99) want = N - 1; /* 0.99 of 61 rows: one row left */
    for (int c = 0; c < want;) {
        int i = (int)rng_int(rng, N);
        if (!ign[i]) ign[i] = 1, c++;
    }
}

/* Labels and the grpo mask from the ignored rows: grpo ignores half of its
 * rows by label and half by mask; the user transform by mask. */
static void set_inputs(tkind k, tap_rng *rng, const int *ign)
{
    for (int i = 0; i < N; i++) {
        LAB[i] = rng_int(rng, V);
        MASK[i] = 1;
        if (!ign[i]) continue;
        if ((k == T_GRPO && i % 2) || k == T_USER) MASK[i] = 0;
        else LAB[i] = IGN;
    }
}

static int reads(const mel_transform *t, const char *name)
{
    for (int i = 0; i < mel_transform_num_inputs(t); i++)
        if (!strcmp(mel_transform_input(t, i, NULL, NULL), name)) return 1;
    return 0;
}

typedef struct res {
    double y[N], dx[N * D], dw[V * D], db[V], aux[3][N], gs[N];
    mel_stats st;
    int64_t active;
    mel_status s;
} res;

typedef enum { M_FWD, M_BWD, M_FB } mode;
static const char *mname[] = {"forward", "backward", "forward_backward"};

/* One call; outputs converted to double.  dx starts as dx0 (accumulate). */
static void run(mel_ctx *ctx, mel_transform *t, tkind k, mel_dtype dt, mode m, mel_reduction red, int acc,
                int skip, int64_t chunk, res *r)
{
    static float xf[N * D], wf[V * D], xtf[N * D], wtf[V * D], bf[V], dxf[N * D], dwf[V * D], dbf[V];
    memset(r, 0, sizeof *r);
    const int f32 = dt == MEL_F32;
    for (int i = 0; i < N * D; i++) xf[i] = (float)X[i], xtf[i] = (float)Xt[i];
    for (int i = 0; i < V * D; i++) wf[i] = (float)W[i], wtf[i] = (float)Wt[i];
    for (int i = 0; i < V; i++) bf[i] = (float)B[i];
    for (int i = 0; i < N * D; i++) r->dx[i] = acc ? 0.25 * sin(i) : NAN, dxf[i] = (float)r->dx[i];
    for (int i = 0; i < V * D; i++) r->dw[i] = 0, dwf[i] = 0;
    for (int i = 0; i < V; i++) r->db[i] = 0, dbf[i] = 0;
    for (int i = 0; i < N; i++) r->y[i] = NAN, r->gs[i] = NAN;
    for (int a = 0; a < 3; a++)
        for (int i = 0; i < N; i++) r->aux[a][i] = NAN;
    mel_set_row_skipping(ctx, skip);
    mel_set_chunk_rows(ctx, chunk);
    mel_args *a = mel_args_new();
    const int bias = k == T_CE;
    mel_args_head(a, 0, mel_mat(f32 ? (void *)xf : X, dt, N, D, 0), mel_mat(f32 ? (void *)wf : W, dt, V, D, 0),
                  bias ? (f32 ? (void *)bf : (void *)B) : NULL);
    if (k >= T_KL && k <= T_JSD)
        mel_args_head(a, 1, mel_mat(f32 ? (void *)xtf : Xt, dt, N, D, 0),
                      mel_mat(f32 ? (void *)wtf : Wt, dt, V, D, 0), NULL);
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    if (k == T_GRPO) {
        mel_args_input(a, "mask", MASK, MEL_F64, N);
        mel_args_input(a, "advantages", ADV, MEL_F64, N);
        mel_args_input(a, "ref_logp", REF, MEL_F64, N);
        mel_args_aux(a, "kl", r->aux[0], MEL_F64);
        mel_args_aux(a, "is_clipped", r->aux[1], MEL_F64);
        mel_args_aux(a, "ratio", r->aux[2], MEL_F64);
    }
    if (k == T_USER) {
        if (reads(t, "mask")) mel_args_input(a, "mask", MASK, MEL_F64, N);
        mel_args_input(a, "scale", SC, MEL_F64, N);
        if (m != M_FWD) mel_args_grad_input(a, "scale", r->gs, MEL_F64);
    }
    mel_args_reduction(a, red, NULL);
    mel_args_output(a, r->y, MEL_F64);
    double dy1 = 0.7;
    if (red == MEL_REDUCE_NONE) mel_args_grad_output(a, DY, MEL_F64);
    else mel_args_grad_output(a, &dy1, MEL_F64);
    if (m != M_FWD)
        mel_args_grad_head(a, 0, mel_mat(f32 ? (void *)dxf : r->dx, dt, N, D, 0),
                           mel_mat(f32 ? (void *)dwf : r->dw, dt, V, D, 0),
                           bias ? (f32 ? (void *)dbf : (void *)r->db) : NULL, acc ? MEL_ACCUMULATE_DX : 0);
    r->s = m == M_FWD ? mel_forward(ctx, t, a) : m == M_BWD ? mel_backward(ctx, t, a) : mel_forward_backward(ctx, t, a);
    if (r->s) diag("%s %s: %s", tname[k], mname[m], mel_last_error(ctx));
    mel_get_stats(ctx, &r->st);
    r->active = mel_get_active_rows(ctx);
    mel_args_free(a);
    if (f32) {
        for (int i = 0; i < N * D; i++) r->dx[i] = dxf[i];
        for (int i = 0; i < V * D; i++) r->dw[i] = dwf[i];
        for (int i = 0; i < V; i++) r->db[i] = dbf[i];
    }
}

/* max |a − b| / max |b| (floor 1e-300); NaN never passes */
static double rel(const double *a, const double *b, int n)
{
    double m = 0, s = 1e-300;
    for (int i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (isnan(a[i]) != isnan(b[i])) return INFINITY;
        if (!isnan(d) && d > m) m = d;
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return m / s;
}

static int n_checked;

/* skipping vs not for one configuration */
static void compare(mel_ctx *ctx, mel_transform *t, tkind k, mel_dtype dt, mode m, mel_reduction red, int acc,
                    int64_t chunk, const int *ign, const char *what)
{
    static res on, off;
    run(ctx, t, k, dt, m, red, acc, 1, chunk, &on);
    run(ctx, t, k, dt, m, red, acc, 0, chunk, &off);
    const double tol = dt == MEL_F64 ? 1e-12 : 1e-5;
    int n_ign = 0;
    for (int i = 0; i < N; i++) n_ign += ign[i];
    const int ny = red == MEL_REDUCE_NONE ? N : 1;
    double e = 0;
    if (m != M_BWD) e = fmax(e, rel(on.y, off.y, ny));
    if (m != M_FWD) e = fmax(e, fmax(rel(on.dx, off.dx, N * D), fmax(rel(on.dw, off.dw, V * D), rel(on.db, off.db, V))));
    if (k == T_GRPO && m != M_BWD)
        for (int a = 0; a < 3; a++) e = fmax(e, rel(on.aux[a], off.aux[a], N));
    if (k == T_USER && m != M_FWD) e = fmax(e, rel(on.gs, off.gs, N));
    /* the skipped rows: exactly zero (dX: the caller's values when accumulating) */
    int leak = 0;
    for (int i = 0; i < N; i++) {
        if (!ign[i]) continue;
        if (m != M_BWD && red == MEL_REDUCE_NONE && on.y[i] != 0) leak = 1;
        if (k == T_GRPO && m != M_BWD)
            for (int a = 0; a < 3; a++) leak |= on.aux[a][i] != 0;
        if (k == T_USER && m != M_FWD) leak |= on.gs[i] != 0;
        for (int j = 0; j < D && m != M_FWD; j++) {
            double want = acc ? (dt == MEL_F32 ? (double)(float)(0.25 * sin(i * D + j)) : 0.25 * sin(i * D + j)) : 0;
            leak |= on.dx[i * D + j] != want;
        }
    }
    int64_t gemms = m == M_FWD ? 1 : m == M_BWD ? 3 : 3;
    int64_t heads = k >= T_KL && k <= T_JSD ? 2 : 1;
    int64_t want_flops = 2 * (int64_t)(N - n_ign) * V * D * (gemms + (heads - 1) * 1);
    n_checked++;
    if (!ok(on.s == MEL_OK && off.s == MEL_OK && e <= tol && !leak && on.active == N - n_ign &&
                off.active == N && on.st.gemm_flops == want_flops,
            "%s %s %s %s%s chunk %lld, %s: skipping = not skipping (rel %.2e), skipped rows zero, "
            "%lld active rows",
            tname[k], mel_dtype_name(dt), mname[m],
            red == MEL_REDUCE_NONE ? "none" : red == MEL_REDUCE_SUM ? "sum" : "mean", acc ? " accumulate" : "",
            (long long)chunk, what, e, (long long)on.active))
        diag("rel %.3e leak %d active %lld/%lld flops %lld want %lld", e, leak, (long long)on.active,
             (long long)off.active, (long long)on.st.gemm_flops, (long long)want_flops);
    if (n_ign == N && red == MEL_REDUCE_MEAN && m != M_BWD)
        ok(on.y[0] == 0, "%s %s %s: all rows ignored: mean 0", tname[k], mel_dtype_name(dt), mname[m]);
    if (n_ign == N && m != M_FWD) {
        double mx = 0;
        for (int i = 0; i < V * D; i++) mx = fmax(mx, fabs(on.dw[i]));
        for (int i = 0; i < V; i++) mx = fmax(mx, fabs(on.db[i]));
        for (int i = 0; i < N * D && !acc; i++) mx = fmax(mx, fabs(on.dx[i]));
        ok(mx == 0 && on.st.chunks == 0, "%s %s %s: all rows ignored: every gradient 0, no chunk", tname[k],
           mel_dtype_name(dt), mname[m]);
    }
}

static void test_equal(mel_ctx *ctx, tap_rng *rng)
{
    const double fr[] = {0, 0.5, 0.99, 1};
    int ign[N];
    for (int k = 0; k < T__N; k++) {
        mel_transform *t = build(ctx, (tkind)k);
        if (!t) continue;
        for (int fi = 0; fi < 5; fi++) {
            const double f = fi < 4 ? fr[fi] : -1;
            set_ignored(rng, f, 8, ign);
            set_inputs((tkind)k, rng, ign);
            char what[64];
            if (f >= 0) snprintf(what, sizeof what, "%.0f%% ignored", f * 100);
            else snprintf(what, sizeof what, "ignored rows at the chunk edges");
            const int64_t chunk = f < 0 ? 8 : fi == 1 ? 5 : 0;
            for (int dti = 0; dti < 2; dti++) {
                mel_dtype dt = dti ? MEL_F32 : MEL_F64;
                for (int m = 0; m < 3; m++) {
                    compare(ctx, t, (tkind)k, dt, (mode)m, MEL_REDUCE_MEAN, 0, chunk, ign, what);
                    if (m != M_FWD) compare(ctx, t, (tkind)k, dt, (mode)m, MEL_REDUCE_NONE, 1, chunk, ign, what);
                }
                compare(ctx, t, (tkind)k, dt, M_FB, MEL_REDUCE_NONE, 0, chunk, ign, what);
                compare(ctx, t, (tkind)k, dt, M_FB, MEL_REDUCE_SUM, 0, chunk, ign, what);
            }
        }
        mel_transform_free(t);
    }
}

/* Transforms that must run every row. */
static void test_no_skip(mel_ctx *ctx, tap_rng *rng)
{
    int ign[N];
    set_ignored(rng, 0.5, 8, ign);
    set_inputs(T_GRPO, rng, ign);
    mel_params *p = mel_params_new();
    mel_params_set(p, "importance_sampling_level", 1);
    mel_params_set(p, "seq_len", N);
    mel_params_set(p, "beta", 0.04);
    mel_transform *seq = NULL;
    mel_transform_builtin(ctx, "grpo", p, &seq);
    mel_params_free(p);
    res r;
    run(ctx, seq, T_GRPO, MEL_F64, M_FB, MEL_REDUCE_MEAN, 0, 1, 0, &r);
    ok(r.s == MEL_OK && r.active == N, "grpo sequence level (segment sums): every row runs (%lld)",
       (long long)r.active);
    mel_transform_free(seq);

    mel_transform *g = build(ctx, T_GRPO);
    double logp[N];
    mel_set_row_skipping(ctx, 1);
    mel_set_chunk_rows(ctx, 0);
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    mel_args_input(a, "mask", MASK, MEL_F64, N);
    mel_args_input(a, "advantages", ADV, MEL_F64, N);
    mel_args_input(a, "ref_logp", REF, MEL_F64, N);
    mel_args_output(a, r.y, MEL_F64);
    mel_args_aux(a, "logp", logp, MEL_F64);
    ok(mel_forward(ctx, g, a) == MEL_OK && mel_get_active_rows(ctx) == N,
       "grpo with the unmasked aux output logp bound: every row runs");
    int finite = 1;
    for (int i = 0; i < N; i++) finite &= isfinite(logp[i]) && logp[i] < 0;
    ok(finite, "grpo: logp written for every row, masked ones included");
    mel_args_free(a);
    mel_transform_free(g);

    set_ignored(rng, 0.5, 8, ign);
    set_inputs(T_USER, rng, ign);
    for (int v = 0; v < 2; v++) {
        mel_transform *u = build_user(ctx, v == 0, v == 1);
        run(ctx, u, T_USER, MEL_F64, M_FB, MEL_REDUCE_MEAN, 0, 1, 0, &r);
        ok(r.s == MEL_OK && r.active == N, "user transform, mask %s: every row runs",
           v == 0 ? "differentiable (its gradient is not 0 on masked rows)" : "computed from the logits");
        mel_transform_free(u);
    }
}

/* CE f64 with skipping against the independent fp64 reference */
static void test_reference(mel_ctx *ctx, tap_rng *rng)
{
    int ign[N];
    set_ignored(rng, 0.5, 8, ign);
    set_inputs(T_CE, rng, ign);
    static double Z[N * V], yr[N], G[N * V], s[N], dXr[N * D], dWr[V * D], dbr[V];
    ref_ce_opts o;
    ref_ce_defaults(&o);
    o.ignore_index = IGN;
    ref_logits(N, D, V, X, W, B, Z);
    int64_t cnt = ref_ce(N, V, Z, LAB, &o, yr, G);
    mel_transform *t = NULL;
    mel_transform_builtin(ctx, "ce", NULL, &t);
    for (int red = 0; red < 3; red += 2) { /* none (upstream DY), mean */
        double ysum = 0;
        for (int i = 0; i < N; i++) ysum += yr[i], s[i] = red == MEL_REDUCE_NONE ? DY[i] : 0.7 / (double)cnt;
        ref_backprop(N, D, V, X, W, G, s, dXr, dWr, dbr);
        res r;
        run(ctx, t, T_CE, MEL_F64, M_FB, (mel_reduction)red, 0, 1, 0, &r);
        double ey = red == MEL_REDUCE_NONE ? rel(r.y, yr, N) : fabs(r.y[0] - ysum / (double)cnt) / fabs(ysum / cnt);
        double e = fmax(ey, fmax(rel(r.dx, dXr, N * D), fmax(rel(r.dw, dWr, V * D), rel(r.db, dbr, V))));
        ok(r.s == MEL_OK && e < 1e-12 && r.active == cnt,
           "ce f64 %s, half the rows ignored, skipping: y, dX, dW, db equal the fp64 reference (rel %.2e), %lld "
           "active rows", red == MEL_REDUCE_NONE ? "none (upstream gradient on every row)" : "mean", e,
           (long long)r.active);
    }
    mel_transform_free(t);
}

/* mel_plan_call's figures equal the call's */
static void plan_one(mel_ctx *ctx, mel_transform *t, mel_dtype dt, mode m, mel_reduction red, int skip,
                     int64_t chunk, int64_t limit, int shapes_only, const char *what)
{
    static uint16_t x16[N * D], w16[V * D], dx16[N * D];
    static float dwf[V * D];
    static double dx[N * D], dw[V * D], y[N];
    mel_set_row_skipping(ctx, skip);
    mel_set_chunk_rows(ctx, chunk);
    mel_set_workspace_limit(ctx, limit);
    mel_args *a = mel_args_new();
    void *xp = dt == MEL_BF16 ? (void *)x16 : (void *)X, *wp = dt == MEL_BF16 ? (void *)w16 : (void *)W;
    if (dt == MEL_BF16) {
        for (int i = 0; i < N * D; i++) x16[i] = 0x3f80; /* 1.0 */
        for (int i = 0; i < V * D; i++) w16[i] = 0x3c00;
    }
    mel_args_head(a, 0, mel_mat(shapes_only ? NULL : xp, dt, N, D, 0), mel_mat(shapes_only ? NULL : wp, dt, V, D, 0),
                  NULL);
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    mel_args_reduction(a, red, NULL);
    mel_args_output(a, y, MEL_F64);
    if (m != M_FWD)
        mel_args_grad_head(a, 0, mel_mat(dt == MEL_BF16 ? (void *)dx16 : dx, dt, N, D, 0),
                           mel_mat(dt == MEL_BF16 ? (void *)dwf : dw, dt == MEL_BF16 ? MEL_F32 : dt, V, D, 0), NULL,
                           MEL_OVERWRITE_DW);
    mel_call_plan pl;
    mel_status ps = mel_plan_call(ctx, t, a, (mel_mode)m, &pl);
    if (ps) diag("plan: %s", mel_last_error(ctx));
    if (shapes_only) mel_args_head(a, 0, mel_mat(xp, dt, N, D, 0), mel_mat(wp, dt, V, D, 0), NULL);
    mel_status s = m == M_FWD ? mel_forward(ctx, t, a) : m == M_BWD ? mel_backward(ctx, t, a) : mel_forward_backward(ctx, t, a);
    mel_stats st;
    mel_get_stats(ctx, &st);
    if (!ok(ps == MEL_OK && s == MEL_OK && pl.chunk_rows == st.chunk_rows && pl.chunks == st.chunks &&
                pl.peak_workspace_bytes == st.peak_workspace_bytes && pl.active_rows == mel_get_active_rows(ctx) &&
                pl.rows == N && pl.row_skipping == (mel_get_active_rows(ctx) < N),
            "plan = call: %s %s %s: %lld rows/chunk, %lld chunks, %lld B, %lld active", what, mel_dtype_name(dt),
            mname[m], (long long)pl.chunk_rows, (long long)pl.chunks, (long long)pl.peak_workspace_bytes,
            (long long)pl.active_rows))
        diag("call: %lld rows/chunk, %lld chunks, %lld B, %lld active", (long long)st.chunk_rows,
             (long long)st.chunks, (long long)st.peak_workspace_bytes, (long long)mel_get_active_rows(ctx));
    mel_args_free(a);
}

static void test_plan(mel_ctx *ctx, tap_rng *rng)
{
    int ign[N];
    mel_transform *t = NULL;
    mel_transform_builtin(ctx, "ce", NULL, &t);
    const double fr[] = {0, 0.5, 1};
    for (int fi = 0; fi < 3; fi++) {
        set_ignored(rng, fr[fi], 8, ign);
        set_inputs(T_CE, rng, ign);
        char what[64];
        snprintf(what, sizeof what, "%.0f%% ignored", fr[fi] * 100);
        for (int m = 0; m < 3; m++)
            for (int skip = 0; skip < 2; skip++) {
                plan_one(ctx, t, MEL_F64, (mode)m, MEL_REDUCE_MEAN, skip, 0, 0, 0, what);
                plan_one(ctx, t, MEL_F64, (mode)m, MEL_REDUCE_SUM, skip, 7, 0, 0, what);
                plan_one(ctx, t, MEL_F64, (mode)m, MEL_REDUCE_MEAN, skip, 0, 24 << 10, 0, what);
                plan_one(ctx, t, MEL_BF16, (mode)m, MEL_REDUCE_MEAN, skip, 0, 40 << 10, 0, what);
                plan_one(ctx, t, MEL_F64, (mode)m, MEL_REDUCE_NONE, skip, 0, 30 << 10, 1, what);
            }
    }
    /* bad arguments */
    mel_call_plan pl;
    mel_args *a = mel_args_new();
    ok(mel_plan_call(ctx, t, a, (mel_mode)5, &pl) == MEL_ERR_INVALID_ARGUMENT &&
           strstr(mel_last_error(ctx), "mode = 5"), "mel_plan_call: a bad mode is refused, named");
    ok(mel_plan_call(ctx, t, a, MEL_MODE_FORWARD, NULL) == MEL_ERR_INVALID_ARGUMENT, "mel_plan_call: out NULL refused");
    ok(mel_plan_call(ctx, t, a, MEL_MODE_FORWARD, &pl) == MEL_ERR_INVALID_ARGUMENT &&
           strstr(mel_last_error(ctx), "head 0 is not bound"), "mel_plan_call: an unbound head is named (%s)",
       mel_last_error(ctx));
    mel_args_free(a);
    ok(mel_set_row_skipping(ctx, 2) == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "on = 2"),
       "mel_set_row_skipping(ctx, 2) refused, named");
    ok(mel_get_row_skipping(ctx) == 1, "mel_get_row_skipping: the last valid value set stays");
    mel_transform_free(t);
}

/* bf16 storage (widened X blocks, dX rounded once): skipping vs not, with
 * MEL_ACCUMULATE_DX, 50 % ignored and chunk edges */
static void test_bf16(mel_ctx *ctx, tap_rng *rng)
{
    static uint16_t x16[N * D], w16[V * D], dx16[2][N * D];
    static float dw[2][V * D];
    static double y[2];
    int ign[N];
    set_ignored(rng, 0.5, 8, ign);
    set_inputs(T_CE, rng, ign);
    for (int i = 0; i < N * D; i++) {
        float f = (float)X[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        x16[i] = (uint16_t)(u >> 16);
    }
    for (int i = 0; i < V * D; i++) {
        float f = (float)W[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        w16[i] = (uint16_t)(u >> 16);
    }
    mel_transform *t = NULL;
    mel_transform_builtin(ctx, "ce", NULL, &t);
    for (int chunk = 0; chunk < 2; chunk++) {
        int64_t active = -1;
        for (int skip = 0; skip < 2; skip++) {
            for (int i = 0; i < N * D; i++) dx16[skip][i] = 0x3f80; /* 1.0, accumulated into */
            mel_set_row_skipping(ctx, skip);
            mel_set_chunk_rows(ctx, chunk ? 8 : 0);
            mel_set_workspace_limit(ctx, 0);
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(x16, MEL_BF16, N, D, 0), mel_mat(w16, MEL_BF16, V, D, 0), NULL);
            mel_args_index(a, "labels", LAB, MEL_I64, N);
            mel_args_output(a, &y[skip], MEL_F64);
            mel_args_grad_head(a, 0, mel_mat(dx16[skip], MEL_BF16, N, D, 0), mel_mat(dw[skip], MEL_F32, V, D, 0), NULL,
                               MEL_ACCUMULATE_DX | MEL_OVERWRITE_DW);
            if (mel_forward_backward(ctx, t, a)) diag("bf16: %s", mel_last_error(ctx));
            if (skip) active = mel_get_active_rows(ctx);
            mel_args_free(a);
        }
        double ex = 0, ew = 0, sw = 1e-300;
        int kept = 1;
        for (int i = 0; i < N * D; i++) {
            float f0, f1;
            uint32_t u0 = (uint32_t)dx16[0][i] << 16, u1 = (uint32_t)dx16[1][i] << 16;
            memcpy(&f0, &u0, 4);
            memcpy(&f1, &u1, 4);
            ex = fmax(ex, fabs((double)f0 - f1));
            if (ign[i / D]) kept &= dx16[1][i] == 0x3f80;
        }
        for (int i = 0; i < V * D; i++) ew = fmax(ew, fabs((double)dw[0][i] - dw[1][i])), sw = fmax(sw, fabs(dw[0][i]));
        ok(fabs(y[0] - y[1]) <= 1e-5 * fabs(y[0]) && ex <= 1e-2 && ew / sw <= 1e-5 && kept && active < N,
           "ce bf16 accumulate, half ignored, chunk %s: skipping = not skipping (y %.2e, dX abs %.2e (bf16 "
           "rounding), dW rel %.2e), ignored dX rows keep the caller's 1.0",
           chunk ? "8" : "auto", fabs(y[0] - y[1]), ex, ew / sw);
    }
    mel_transform_free(t);
}

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(20261130));
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng), Xt[i] = rng_normal(&rng);
    for (int i = 0; i < V * D; i++) W[i] = 0.5 * rng_normal(&rng), Wt[i] = 0.5 * rng_normal(&rng);
    for (int i = 0; i < V; i++) B[i] = 0.1 * rng_normal(&rng);
    for (int i = 0; i < N; i++) {
        ADV[i] = rng_normal(&rng);
        REF[i] = -3 + 0.3 * rng_normal(&rng);
        SC[i] = 0.5 + rng_uniform(&rng);
        DY[i] = 0.3 + rng_uniform(&rng); /* nonzero on every row, ignored ones too */
    }
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return 1;
    mel_set_threads(ctx, 2);
    ok(mel_get_row_skipping(ctx) == 1, "row skipping is on by default");
    test_equal(ctx, &rng);
    diag("%d skipping-vs-not comparisons", n_checked);
    test_no_skip(ctx, &rng);
    test_reference(ctx, &rng);
    test_plan(ctx, &rng);
    test_bf16(ctx, &rng);
    mel_ctx_destroy(ctx);
    return done_testing();
}
