/* Preference losses (dpo and its loss types, cpo, simpo, orpo, kto) on the
 * memory-efficient path, against the fp64 reference of t/ref.c (full
 * logits, closed-form gradients written there):
 *  - two layouts: TRL's concatenated batch [chosen_0..chosen_{P-1},
 *    rejected_0..rejected_{P-1}] padded to T with prompt and padding
 *    tokens ignored, and packed pairs of different lengths with rows in no
 *    sequence between them;
 *  - loss (reduction mean: the mean over pairs), dX and dW, and the mean
 *    chosen reward, for every chunk size (chunks hold whole pairs), and with
 *    the tiled executor (vocabulary tiles of 4 columns);
 *  - gradients against central finite differences (mel_gradcheck);
 *  - f32 storage against the fp64 reference of the f32-rounded data;
 *  - the checks would fail: pairing off by one pair, padding counted, or
 *    chosen and rejected swapped give losses far from the reference;
 *  - refusals: unknown loss-type words, parameters with no effect,
 *    contradicting options, a budget below one pair. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { D = 6, V = 13, P = 3, T = 7, NMAX = 2 * P * T + 16, IGN = -100 };

typedef struct layout {
    const char *name;
    int64_t N;
    int64_t seq[NMAX], lab[NMAX];
} layout;

static double X[NMAX * D], W[V * D], X2[NMAX * D], W2[V * D], REF[NMAX], DES[NMAX], KL0[NMAX], CMP[NMAX];

/* TRL's concatenated, padded batch: each sequence T rows, a prompt of 1-2
 * ignored tokens, a completion of 1..T-2 tokens, ignored padding */
static void trl_layout(layout *L, tap_rng *r)
{
    L->name = "concatenated";
    L->N = 2 * P * T;
    for (int half = 0; half < 2; half++)
        for (int b = 0; b < P; b++) {
            int prompt = 1 + rng_int(r, 2), comp = 1 + rng_int(r, T - 1 - prompt);
            for (int t = 0; t < T; t++) {
                int64_t i = (int64_t)(half * P + b) * T + t;
                L->seq[i] = 2 * b + half;
                L->lab[i] = t >= prompt && t < prompt + comp ? rng_int(r, V) : IGN;
            }
        }
}

/* packed pairs (chosen b, then rejected b) of 1..6 tokens each, every token
 * counted, with a row in no sequence (-1) after some of them */
static void packed_layout(layout *L, tap_rng *r)
{
    L->name = "packed";
    int64_t i = 0;
    for (int b = 0; b < P; b++)
        for (int k = 0; k < 2; k++) {
            int len = 1 + rng_int(r, 6);
            for (int t = 0; t < len; t++, i++) L->seq[i] = 2 * b + k, L->lab[i] = rng_int(r, V);
            if (rng_int(r, 2)) L->seq[i] = -1, L->lab[i] = rng_int(r, V), i++;
        }
    L->N = i;
}

/* orpo's completion mask for layout L: every third row with a label that
 * is not the first of its sequence is prompt (its NLL covers it, its
 * log-prob means do not) */
static void completion_for(const layout *L)
{
    for (int64_t i = 0; i < L->N; i++) {
        int first = 1;
        for (int64_t j = 0; j < i; j++) first &= !(L->seq[j] == L->seq[i] && L->lab[j] != IGN);
        CMP[i] = L->lab[i] != IGN && !first && i % 3 == 0 ? 0 : 1;
    }
}

typedef struct cfg {
    const char *tname, *word; /* transform, loss_type word (NULL: none) */
    ref_pref_opts o;
    int ref_source; /* -1 reference free, 0 input, 1 head 1 */
} cfg;

/* the reference's per-token log-probs of head 1 (the reference model) */
static void head1_logp(const layout *L, double *out)
{
    double *Z = malloc((size_t)L->N * V * sizeof *Z);
    ref_logits(L->N, D, V, X2, W2, NULL, Z);
    for (int64_t i = 0; i < L->N; i++) {
        double m = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) m = fmax(m, Z[i * V + j]);
        for (int j = 0; j < V; j++) s += exp(Z[i * V + j] - m);
        out[i] = L->lab[i] == IGN ? 0 : Z[i * V + L->lab[i]] - m - log(s);
    }
    free(Z);
}

static double chosen_tokens_per_pair(const layout *L)
{
    double nc = 0;
    for (int64_t i = 0; i < L->N; i++) nc += L->seq[i] >= 0 && L->seq[i] % 2 == 0 && L->lab[i] != IGN;
    return nc / P;
}

static mel_transform *build(mel_ctx *ctx, const cfg *c, const layout *L)
{
    mel_params *pp = mel_params_new();
    mel_params_set(pp, "beta", c->o.beta);
    if (c->word) {
        double v;
        if (mel_builtin_param_word(ctx, c->tname, "loss_type", c->word, &v) != MEL_OK) {
            mel_params_free(pp);
            return NULL;
        }
        if (strcmp(c->tname, "simpo")) mel_params_set(pp, "loss_type", v);
    }
    int t = !strcmp(c->tname, "dpo") ? 0 : !strcmp(c->tname, "kto") ? 3 : !strcmp(c->tname, "orpo") ? 2 : 1;
    if (c->o.eps > 0) mel_params_set(pp, "label_smoothing", c->o.eps);
    if (t == 0 && c->o.alpha > 0 && c->o.loss_type != 13) mel_params_set(pp, "rpo_alpha", c->o.alpha);
    if (t == 1) mel_params_set(pp, "cpo_alpha", c->o.alpha);
    if ((t <= 2 && c->o.alpha > 0 && !c->o.nll_per_sequence))
        mel_params_set(pp, "chosen_tokens_per_pair", chosen_tokens_per_pair(L));
    if (t == 1 && c->o.loss_type == 3) mel_params_set(pp, "simpo_gamma", c->o.gamma);
    if (t == 0 && c->o.loss_type == 12) mel_params_set(pp, "discopop_tau", c->o.tau);
    if (t == 0 && c->o.loss_type == 6) mel_params_set(pp, "bco_delta", c->o.bco_delta);
    if (t == 0 && c->ref_source < 0) mel_params_set(pp, "reference_free", 1);
    if ((t == 0 || t == 3) && c->ref_source == 1) mel_params_set(pp, "ref_source", 1);
    if (t == 3) mel_params_set(pp, "desirable_weight", c->o.wd), mel_params_set(pp, "undesirable_weight", c->o.wu);
    mel_transform *tr = NULL;
    mel_status s = mel_transform_builtin(ctx, c->tname, pp, &tr);
    mel_params_free(pp);
    return s == MEL_OK ? tr : NULL;
}

static mel_args *bind(const cfg *c, const layout *L, const mel_transform *tr)
{
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, L->N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    if (mel_transform_num_heads(tr) > 1)
        mel_args_head(a, 1, mel_mat(X2, MEL_F64, L->N, D, 0), mel_mat(W2, MEL_F64, V, D, 0), NULL);
    mel_args_index(a, "labels", L->lab, MEL_I64, L->N);
    mel_args_index(a, "seq_ids", L->seq, MEL_I64, L->N);
    for (int k = 0; k < mel_transform_num_inputs(tr); k++) {
        const char *nm = mel_transform_input(tr, k, NULL, NULL);
        if (!strcmp(nm, "ref_logp")) mel_args_input(a, nm, REF, MEL_F64, L->N);
        if (!strcmp(nm, "desirable")) mel_args_input(a, nm, DES, MEL_F64, L->N);
        if (!strcmp(nm, "kl_ref")) mel_args_input(a, nm, KL0, MEL_F64, L->N);
        if (!strcmp(nm, "completion_mask")) mel_args_input(a, nm, CMP, MEL_F64, L->N);
    }
    (void)c;
    return a;
}

/* The library's loss, dX, dW and mean chosen reward with chunk_rows cr. */
static mel_status lib_run(mel_ctx *ctx, const cfg *c, const layout *L, const mel_transform *tr, int64_t cr,
                          double *y, double *dx, double *dw, double *reward, int64_t *chunks)
{
    mel_args *a = bind(c, L, tr);
    double rw[NMAX];
    mel_args_reduction(a, MEL_REDUCE_MEAN, NULL);
    mel_args_output(a, y, MEL_F64);
    mel_args_aux(a, "chosen_rewards", rw, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(dx, MEL_F64, L->N, D, 0), mel_mat(dw, MEL_F64, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    mel_set_chunk_rows(ctx, cr);
    mel_status s = mel_forward_backward(ctx, tr, a);
    mel_set_chunk_rows(ctx, 0);
    mel_stats st;
    mel_get_stats(ctx, &st);
    *chunks = st.chunks;
    double tot = 0;
    for (int64_t i = 0; i < L->N; i++) tot += rw[i];
    *reward = tot / (!strcmp(c->tname, "kto") ? 2 * P : P); /* pairs, or kto's sequences */
    mel_args_free(a);
    return s;
}

static void check_cfg(mel_ctx *ctx, const cfg *c, const layout *L, int gradcheck)
{
    char label[160];
    snprintf(label, sizeof label, "%s%s%s%s%s%s (%s)", c->tname, c->word ? " " : "", c->word ? c->word : "",
             c->ref_source < 0 ? " reference-free" : c->ref_source == 1 ? " ref head" : "",
             c->o.eps > 0 ? " label_smoothing" : "",
             c->o.alpha > 0 ? (c->o.nll_per_sequence ? " +NLL per sequence" : " +NLL") : "", L->name);
    mel_transform *tr = build(ctx, c, L);
    if (!ok(tr != NULL, "%s: builds %s", label, mel_last_error(ctx))) return;
    completion_for(L);
    const int64_t N = L->N;
    double *Z = malloc((size_t)N * V * sizeof *Z), *G = malloc((size_t)N * V * sizeof *G);
    double rdx[NMAX * D], rdw[V * D], ones[NMAX], rl[NMAX];
    for (int64_t i = 0; i < N; i++) ones[i] = 1;
    ref_logits(N, D, V, X, W, NULL, Z);
    const double *ref = REF;
    if (c->ref_source == 1) head1_logp(L, rl), ref = rl;
    if (c->ref_source < 0) ref = NULL;
    double raux;
    double rloss = ref_pref(N, V, Z, L->lab, L->seq, ref, DES, KL0, &c->o, G, &raux);
    ref_backprop(N, D, V, X, W, G, ones, rdx, rdw, NULL);
    /* chunk rows 0 (automatic), 1 (raised to one pair), 5, 1000; then the tiled executor:
     * chunks of whole pairs x vocabulary tiles of 4 columns (-4) */
    const int64_t crs[] = {0, 1, 5, 1000, -4};
    for (int k = 0; k < 5; k++) {
        double y = NAN, dx[NMAX * D], dw[V * D], rw;
        int64_t chunks = 0;
        if (crs[k] < 0) mel_set_tile_cols(ctx, -crs[k]);
        mel_status s = lib_run(ctx, c, L, tr, crs[k] < 0 ? 0 : crs[k], &y, dx, dw, &rw, &chunks);
        const int tiles_ok = crs[k] >= 0 || mel_get_tile_cols(ctx) == -crs[k];
        if (crs[k] < 0) mel_set_tile_cols(ctx, 0);
        double ex = ref_relerr(dx, rdx, N * D, 1e-8), ew = ref_relerr(dw, rdw, V * D, 1e-8);
        double ey = fabs(y - rloss) / fmax(fabs(rloss), 1e-3), ea = fabs(rw - raux) / fmax(fabs(raux), 1e-3);
        ok(s == MEL_OK && tiles_ok && ey < 1e-12 && ex < 1e-10 && ew < 1e-10 && ea < 1e-12,
           "%s: chunk_rows %lld (%lld chunks; < 0: tiles of that many columns): loss %.12g vs reference %.12g (rel %.1e), dX rel %.1e, dW rel %.1e, "
           "chosen reward %.6g vs %.6g %s", label, (long long)crs[k], (long long)chunks, y, rloss, ey, ex, ew, rw,
           raux, mel_last_error(ctx));
    }
    if (gradcheck) {
        mel_args *a = bind(c, L, tr);
        mel_gradcheck_opts o = {.seed = 5, .samples = 24};
        mel_gradcheck_report rep;
        mel_status s = mel_gradcheck(ctx, tr, a, &o, &rep);
        ok(s == MEL_OK && rep.checked > 0 && rep.failed == 0,
           "%s: gradients vs finite differences (%d entries, max rel %.1e, %s) %s", label, rep.checked,
           rep.max_rel_err, rep.worst, mel_last_error(ctx));
        mel_args_free(a);
    }
    mel_transform_free(tr);
    free(Z), free(G);
}

/* f32 storage (f32 logits and row program) against the fp64 reference:
 * the loss, dX and dW within f32 round-off; returns the worst relative
 * difference. */
static double check_f32(mel_ctx *ctx, const cfg *c, const layout *L)
{
    const int64_t N = L->N;
    float xf[NMAX * D], wf[V * D], dxf[NMAX * D], dwf[V * D], rf[NMAX], yf = NAN;
    for (int64_t i = 0; i < N * D; i++) xf[i] = (float)X[i];
    for (int64_t i = 0; i < V * D; i++) wf[i] = (float)W[i];
    for (int64_t i = 0; i < N; i++) rf[i] = (float)REF[i];
    completion_for(L);
    /* the reference on the f32-rounded data */
    double Xr[NMAX * D], Wr[V * D], Z[NMAX * V], G[NMAX * V], rdx[NMAX * D], rdw[V * D], ones[NMAX], rr[NMAX];
    for (int64_t i = 0; i < N * D; i++) Xr[i] = xf[i];
    for (int64_t i = 0; i < V * D; i++) Wr[i] = wf[i];
    for (int64_t i = 0; i < N; i++) ones[i] = 1, rr[i] = rf[i];
    ref_logits(N, D, V, Xr, Wr, NULL, Z);
    double rloss = ref_pref(N, V, Z, L->lab, L->seq, c->ref_source < 0 ? NULL : rr, DES, KL0, &c->o, G, NULL);
    ref_backprop(N, D, V, Xr, Wr, G, ones, rdx, rdw, NULL);
    mel_transform *tr = build(ctx, c, L);
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(xf, MEL_F32, N, D, 0), mel_mat(wf, MEL_F32, V, D, 0), NULL);
    mel_args_index(a, "labels", L->lab, MEL_I64, N);
    mel_args_index(a, "seq_ids", L->seq, MEL_I64, N);
    if (c->ref_source == 0) mel_args_input(a, "ref_logp", rf, MEL_F32, N);
    if (!strcmp(c->tname, "kto")) {
        mel_args_input(a, "desirable", DES, MEL_F64, N);
        mel_args_input(a, "kl_ref", KL0, MEL_F64, N);
    }
    if (!strcmp(c->tname, "orpo")) mel_args_input(a, "completion_mask", CMP, MEL_F64, N);
    mel_args_reduction(a, MEL_REDUCE_MEAN, NULL);
    mel_args_output(a, &yf, MEL_F32);
    mel_args_grad_head(a, 0, mel_mat(dxf, MEL_F32, N, D, 0), mel_mat(dwf, MEL_F32, V, D, 0), NULL,
                       MEL_OVERWRITE_DW);
    mel_status s = tr ? mel_forward_backward(ctx, tr, a) : MEL_ERR_INTERNAL;
    double ey = fabs(yf - rloss) / fmax(fabs(rloss), 1e-3);
    double ex = ref_relerr_f32(dxf, rdx, N * D, 1e-6), ew = ref_relerr_f32(dwf, rdw, V * D, 1e-6);
    double worst = fmax(ey, fmax(ex, ew));
    ok(s == MEL_OK && worst < 2e-5, "%s %s (%s), f32: loss %.8g vs fp64 reference %.8g (rel %.1e), dX rel %.1e, "
       "dW rel %.1e %s", c->tname, c->word ? c->word : "", L->name, yf, rloss, ey, ex, ew, mel_last_error(ctx));
    mel_args_free(a);
    mel_transform_free(tr);
    return worst;
}

/* The library's loss with layout M against the reference on layout L:
 * must differ (the mutation the test guards against). */
static void mutation(mel_ctx *ctx, const cfg *c, const layout *L, const layout *M, const char *what)
{
    mel_transform *tr = build(ctx, c, L);
    double *Z = malloc((size_t)L->N * V * sizeof *Z), *G = malloc((size_t)L->N * V * sizeof *G);
    ref_logits(L->N, D, V, X, W, NULL, Z);
    double rloss = ref_pref(L->N, V, Z, L->lab, L->seq, REF, DES, KL0, &c->o, G, NULL);
    double y = NAN, dx[NMAX * D], dw[V * D], rw;
    int64_t chunks;
    mel_status s = tr ? lib_run(ctx, c, M, tr, 0, &y, dx, dw, &rw, &chunks) : MEL_ERR_INTERNAL;
    ok(s == MEL_OK && fabs(y - rloss) > 1e-3, "%s %s: %s moves the loss far from the reference (%.6g vs %.6g)",
       c->tname, c->word ? c->word : "", what, y, rloss);
    mel_transform_free(tr);
    free(Z), free(G);
}

static void refusals(mel_ctx *ctx)
{
    double v;
    mel_status s = mel_builtin_param_word(ctx, "dpo", "loss_type", "sigmoidd", &v);
    ok(s == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "'sigmoidd'") &&
           strstr(mel_last_error(ctx), "discopop"),
       "an unknown dpo loss_type word is refused by name: %s", mel_last_error(ctx));
    s = mel_builtin_param_word(ctx, "dpo", "beta", "big", &v);
    ok(s == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "beta"), "beta takes no words: %s",
       mel_last_error(ctx));
    s = mel_builtin_param_word(ctx, "dpo", "loss_type", "robust", &v);
    ok(s == MEL_OK && v == 5, "robust is dpo loss_type 5 (%g)", v);
    struct {
        const char *t, *p1;
        double v1;
        const char *p2;
        double v2;
        const char *needle;
    } bad[] = {
        {"dpo", "loss_type", 1, "label_smoothing", 0.1, "label_smoothing"},
        {"dpo", "loss_type", 5, "label_smoothing", 0.5, "0.5"},
        {"dpo", "loss_type", 3, NULL, 0, "exo_pair"},
        {"dpo", "loss_type", 8, NULL, 0, "aot"},
        {"dpo", "chosen_tokens_per_pair", 4, NULL, 0, "rpo_alpha"},
        {"dpo", "reference_free", 1, "ref_source", 1, "contradict"},
        {"dpo", "discopop_tau", 0.1, NULL, 0, "discopop_tau"},
        {"dpo", "bco_delta", 0.1, NULL, 0, "bco_delta"},
        {"cpo", "cpo_alpha", 0, "chosen_tokens_per_pair", 3, "no effect"},
        {"cpo", "simpo_gamma", 1, "chosen_tokens_per_pair", 1, "simpo_gamma"},
        {"simpo", "loss_type", 2, NULL, 0, "outside"},
        {"grpo", "loss_type", 3, "sapo_temperature_pos", 2, "sapo_temperature_pos"},
        {"grpo", "loss_type", 4, "delta", 1.5, "cispo"},
        {"grpo", "vllm_importance_sampling_cap", 2, NULL, 0, "vllm_importance_sampling_cap"},
        {"grpo", "vllm_importance_sampling_mode", 3, NULL, 0, "seq_len"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        mel_params *pp = mel_params_new();
        mel_params_set(pp, bad[k].p1, bad[k].v1);
        if (bad[k].p2) mel_params_set(pp, bad[k].p2, bad[k].v2);
        mel_transform *tr = NULL;
        s = mel_transform_builtin(ctx, bad[k].t, pp, &tr);
        ok(s == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), bad[k].needle),
           "%s with %s = %g%s%s refused: %s", bad[k].t, bad[k].p1, bad[k].v1, bad[k].p2 ? " and " : "",
           bad[k].p2 ? bad[k].p2 : "", mel_last_error(ctx));
        mel_transform_free(tr);
        mel_params_free(pp);
    }
}

int main(void)
{
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) {
        ok(0, "context: %s", mel_ctx_create_error());
        return done_testing();
    }
    tap_rng r;
    rng_seed(&r, 20261208);
    diag("seed 20261208, D = %d, V = %d, %d pairs", D, V, P);
    for (int i = 0; i < NMAX * D; i++) X[i] = rng_normal(&r), X2[i] = X[i] + 0.3 * rng_normal(&r);
    for (int i = 0; i < V * D; i++) W[i] = 0.5 * rng_normal(&r), W2[i] = W[i] + 0.2 * rng_normal(&r);
    for (int i = 0; i < NMAX; i++) REF[i] = -0.5 - 2 * rng_uniform(&r);
    layout Lt, Lp;
    trl_layout(&Lt, &r);
    packed_layout(&Lp, &r);
    /* kto: sequences 0, 1, 3, 4 desirable (read on each sequence's first row), z0 = 0.3 */
    for (int i = 0; i < NMAX; i++) KL0[i] = 0.3, DES[i] = 1;
    for (int64_t i = 0; i < Lt.N; i++) DES[i] = Lt.seq[i] % 3 == 2 ? 0 : 1;

    const ref_pref_opts d0 = {.kind = 0, .beta = 0.1, .ignore_index = IGN, .tau = 0.05, .wd = 1, .wu = 1};
    static const struct {
        const char *w;
        int code;
        double eps, alpha;
    } dt[] = {
        {"sigmoid", 0, 0, 0},     {"sigmoid", 0, 0.1, 0}, {"hinge", 1, 0, 0},    {"ipo", 2, 0, 0},
        {"exo_pair", 3, 0.2, 0}, {"nca_pair", 4, 0, 0},  {"robust", 5, 0.2, 0}, {"bco_pair", 6, 0, 0},
        {"sppo_hard", 7, 0, 0},  {"apo_zero", 10, 0, 0}, {"apo_down", 11, 0, 0}, {"discopop", 12, 0, 0},
        {"sft", 13, 0, 1},        {"sigmoid", 0, 0, 0.7}, {"sigmoid_norm", 14, 0, 0}, {"sigmoid", 0, 0, -0.7},
    };
    for (size_t k = 0; k < sizeof dt / sizeof dt[0]; k++) {
        cfg c = {"dpo", dt[k].w, d0, 0};
        c.o.loss_type = dt[k].code;
        c.o.eps = dt[k].eps;
        c.o.alpha = fabs(dt[k].alpha);
        c.o.nll_per_sequence = dt[k].alpha < 0; /* no chosen_tokens_per_pair: per chosen sequence */
        c.o.beta = dt[k].code == 2 || dt[k].code == 7 ? 0.5 : 0.8;
        if (dt[k].code == 6) c.o.bco_delta = 0.05;
        check_cfg(ctx, &c, &Lt, 1);
        check_cfg(ctx, &c, &Lp, 0);
    }
    {
        cfg c = {"dpo", "sigmoid", d0, -1};
        c.o.beta = 0.8;
        check_cfg(ctx, &c, &Lp, 1);
        cfg h = {"dpo", "sigmoid", d0, 1};
        h.o.beta = 0.8;
        check_cfg(ctx, &h, &Lt, 1);
    }
    static const char *cw[] = {"sigmoid", "hinge", "ipo", "simpo"};
    for (int k = 0; k < 4; k++) {
        cfg c = {"cpo", cw[k], d0, -1};
        c.o.kind = 1, c.o.loss_type = k, c.o.beta = 0.8, c.o.alpha = 1, c.o.gamma = 0.3;
        check_cfg(ctx, &c, &Lt, 1);
        check_cfg(ctx, &c, &Lp, 0);
    }
    {
        cfg c = {"simpo", "simpo", d0, -1};
        c.o.kind = 1, c.o.loss_type = 3, c.o.beta = 2, c.o.gamma = 0.5;
        check_cfg(ctx, &c, &Lp, 1);
        cfg o = {"orpo", NULL, d0, -1};
        o.o.kind = 2, o.o.beta = 0.25, o.o.alpha = 1, o.o.completion = CMP;
        check_cfg(ctx, &o, &Lt, 1);
        check_cfg(ctx, &o, &Lp, 0);
        cfg kt = {"kto", NULL, d0, 0};
        kt.o.kind = 3, kt.o.beta = 0.6, kt.o.wd = 1.0, kt.o.wu = 1.5;
        check_cfg(ctx, &kt, &Lt, 1);
        kt.ref_source = 1;
        check_cfg(ctx, &kt, &Lt, 0);
    }

    /* f32 storage against the fp64 reference */
    {
        double worst = 0;
        cfg c = {"dpo", "sigmoid", d0, 0};
        c.o.beta = 0.8;
        worst = fmax(worst, check_f32(ctx, &c, &Lt));
        cfg ipo = {"dpo", "ipo", d0, 0};
        ipo.o.loss_type = 2, ipo.o.beta = 0.5;
        worst = fmax(worst, check_f32(ctx, &ipo, &Lp));
        cfg o = {"orpo", NULL, d0, -1};
        o.o.kind = 2, o.o.beta = 0.25, o.o.alpha = 1, o.o.completion = CMP;
        worst = fmax(worst, check_f32(ctx, &o, &Lt));
        cfg sp = {"simpo", "simpo", d0, -1};
        sp.o.kind = 1, sp.o.loss_type = 3, sp.o.beta = 2, sp.o.gamma = 0.5;
        worst = fmax(worst, check_f32(ctx, &sp, &Lp));
        cfg kt = {"kto", NULL, d0, 0};
        kt.o.kind = 3, kt.o.beta = 0.6, kt.o.wd = 1.0, kt.o.wu = 1.5;
        worst = fmax(worst, check_f32(ctx, &kt, &Lt));
        diag("f32 storage: worst relative difference from the fp64 reference %.2e", worst);
    }

    /* the mutations these checks catch */
    {
        cfg c = {"dpo", "sigmoid", d0, 0};
        c.o.beta = 0.8;
        layout M = Lt;
        for (int64_t i = 0; i < M.N; i++) /* rejected b paired with chosen b + 1 */
            if (M.seq[i] % 2) M.seq[i] = (M.seq[i] + 2) % (2 * P);
        mutation(ctx, &c, &Lt, &M, "pairing off by one pair");
        M = Lt;
        for (int64_t i = 0; i < M.N; i++) /* padding and prompt tokens counted */
            if (M.lab[i] == IGN) M.lab[i] = (int64_t)(i % V);
        mutation(ctx, &c, &Lt, &M, "counting padding and prompt tokens");
        M = Lt;
        for (int64_t i = 0; i < M.N; i++) M.seq[i] ^= 1; /* chosen and rejected swapped */
        mutation(ctx, &c, &Lt, &M, "swapping chosen and rejected (a sign flip)");
    }

    /* the budget: TRL's concatenated layout cannot be cut (one chunk), the
     * packed one cuts between pairs; a limit below one pair is refused */
    {
        cfg c = {"dpo", "sigmoid", d0, 0};
        c.o.beta = 0.8;
        mel_transform *tr = build(ctx, &c, &Lp);
        double y, dx[NMAX * D], dw[V * D], rw;
        int64_t ch1, ch2;
        lib_run(ctx, &c, &Lt, tr, 1, &y, dx, dw, &rw, &ch1);
        lib_run(ctx, &c, &Lp, tr, 1, &y, dx, dw, &rw, &ch2);
        ok(ch1 == 1 && ch2 == P, "chunks: concatenated layout %lld (1), packed %lld (one per pair, %d)",
           (long long)ch1, (long long)ch2, P);
        mel_set_workspace_limit(ctx, 2000);
        mel_args *a = bind(&c, &Lt, tr);
        mel_args_reduction(a, MEL_REDUCE_MEAN, NULL);
        mel_args_output(a, &y, MEL_F64);
        mel_status s = mel_forward(ctx, tr, a);
        ok(s == MEL_ERR_BUDGET && strstr(mel_last_error(ctx), "largest group"),
           "a budget below the largest group is refused naming it: %s", mel_last_error(ctx));
        mel_set_workspace_limit(ctx, 0);
        int64_t bad = Lt.seq[3];
        Lt.seq[3] = -7;
        s = mel_forward(ctx, tr, a);
        ok(s == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "seq_ids[3] = -7"),
           "a sequence id below -1 is refused naming it: %s", mel_last_error(ctx));
        Lt.seq[3] = bad;
        mel_args_free(a);
        mel_transform_free(tr);
    }
    refusals(ctx);
    mel_ctx_destroy(ctx);
    return done_testing();
}
