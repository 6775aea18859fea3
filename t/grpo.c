/* GRPO on the memory-efficient path:
 *  - loss value for each loss type, token and sequence level, with and
 *    without old_logp, β = 0 / β ≠ 0 with ref_logp or a reference head, δ,
 *    asymmetric ε, padding: against an fp64 reference written here;
 *  - gradients by finite differences (old_logp given: the loss is then an
 *    ordinary function of X and W);
 *  - old_logp absent (stop-gradient): the gradient equals the gradient with
 *    old_logp given as the current log-probs (value 1, gradient ∇logp);
 *  - invariance over chunk sizes, including segments across chunks;
 *  - mel_grpo_weights and mel_group_advantages against the formulas. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { B = 3, T = 5, N = B * T, D = 6, V = 17 };
static const char *lt_name[] = {"grpo", "bnpo", "dr_grpo", "dapo"};

typedef struct cfg {
    int loss_type, seq, use_old, ref_source; /* ref_source: -1 none (β = 0), 0 input, 1 head */
    double beta, el, eh, delta;
} cfg;

static double X[N * D], W[V * D], X2[N * D], W2[V * D], MASK[N], ADV[N], OLD[N], REF[N], ZL[N];
static int64_t LAB[N];
enum { MAXLEN = 8 };

/* fp64 reference of the reduced loss (independent of the library) */
static double ref_loss(const cfg *c, const double *old)
{
    double Z[N * V], Zr[N * V], lp[N], rp[N], w[N];
    ref_logits(N, D, V, X, W, NULL, Z);
    ref_logits(N, D, V, X2, W2, NULL, Zr);
    for (int i = 0; i < N; i++) {
        double m = -INFINITY, s = 0, mr = -INFINITY, sr = 0;
        for (int j = 0; j < V; j++) m = fmax(m, Z[i * V + j]), mr = fmax(mr, Zr[i * V + j]);
        for (int j = 0; j < V; j++) s += exp(Z[i * V + j] - m), sr += exp(Zr[i * V + j] - mr);
        lp[i] = Z[i * V + LAB[i]] - m - log(s);
        rp[i] = Zr[i * V + LAB[i]] - mr - log(sr);
    }
    double tot = 0, msum = 0;
    for (int i = 0; i < N; i++) msum += MASK[i];
    for (int b = 0; b < B; b++) {
        double sm = 0;
        for (int t = 0; t < T; t++) sm += MASK[b * T + t];
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            switch (c->loss_type) {
            case 0: w[i] = MASK[i] / fmax(sm, 1) / B; break;
            case 1: w[i] = MASK[i] / fmax(msum, 1); break;
            case 2: w[i] = MASK[i] / (B * (double)MAXLEN); break;
            default: w[i] = MASK[i] / fmax(msum, 1); break;
            }
        }
    }
    for (int b = 0; b < B; b++) {
        double sb = 0, sm = 0;
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            double o = old ? old[i] : lp[i];
            sb += MASK[i] * (lp[i] - o), sm += MASK[i];
        }
        sb /= fmax(sm, 1);
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            double o = old ? old[i] : lp[i];
            double r = exp(c->seq ? sb : lp[i] - o);
            double c1 = c->delta > 0 ? fmin(r, c->delta) : r;
            double c2 = fmin(fmax(r, 1 - c->el), 1 + c->eh);
            double l = -fmin(c1 * ADV[i], c2 * ADV[i]);
            if (c->beta != 0) {
                double ref = c->ref_source == 1 ? rp[i] : REF[i];
                double d = ref - lp[i];
                l += c->beta * (exp(d) - d - 1);
            }
            if (MASK[i] != 0) tot += w[i] * l;
        }
    }
    return tot;
}

static mel_transform *build(mel_ctx *ctx, const cfg *c)
{
    mel_params *p = mel_params_new();
    mel_params_set(p, "beta", c->beta);
    mel_params_set(p, "epsilon_low", c->el);
    mel_params_set(p, "epsilon_high", c->eh);
    mel_params_set(p, "delta", c->delta);
    mel_params_set(p, "use_old_logp", c->use_old);
    if (c->ref_source >= 0) mel_params_set(p, "ref_source", c->ref_source);
    mel_params_set(p, "importance_sampling_level", c->seq);
    mel_params_set(p, "seq_len", T);
    mel_transform *t = NULL;
    if (mel_transform_builtin(ctx, "grpo", p, &t)) diag("grpo: %s", mel_last_error(ctx));
    mel_params_free(p);
    return t;
}

static mel_args *bind(const cfg *c, const double *old, double *w, double *y)
{
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, V, D, 0), NULL);
    if (c->beta != 0 && c->ref_source == 1)
        mel_args_head(a, 1, mel_mat(X2, MEL_F64, N, D, 0), mel_mat(W2, MEL_F64, V, D, 0), NULL);
    mel_args_index(a, "labels", LAB, MEL_I64, N);
    mel_args_input(a, "mask", MASK, MEL_F64, N);
    mel_args_input(a, "advantages", ADV, MEL_F64, N);
    if (c->use_old) mel_args_input(a, "old_logp", old, MEL_F64, N);
    if (c->beta != 0 && c->ref_source == 0) mel_args_input(a, "ref_logp", REF, MEL_F64, N);
    mel_args_reduction(a, MEL_REDUCE_WEIGHTED, w);
    mel_args_output(a, y, MEL_F64);
    return a;
}

int main(void)
{
    tap_rng rng;
    uint64_t seed = test_seed(2025);
    rng_seed(&rng, seed);
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return ok(0, "ctx"), done_testing();
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng) * 0.6, X2[i] = X[i] + 0.1 * rng_normal(&rng);
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(&rng) * 0.6, W2[i] = W[i] + 0.1 * rng_normal(&rng);
    for (int i = 0; i < N; i++) {
        LAB[i] = rng_int(&rng, V);
        MASK[i] = (i % T) < T - (i / T) ? 1 : 0; /* sequence b has b padded tokens at its end */
        ADV[i] = (double)((i / T) - 1) * 0.8 + 0.1;   /* one advantage per sequence */
    }
    /* the current log-probs (through the library's own aux output, then
     * checked against the reference) and old / ref near them so ratios
     * fall on both sides of the clip range */
    {
        cfg c0 = {3, 0, 0, -1, 0, 0.2, 0.2, 0};
        mel_transform *t = build(ctx, &c0);
        double w[N], y, lpv[N];
        for (int i = 0; i < N; i++) w[i] = 1;
        mel_args *a = bind(&c0, NULL, w, &y);
        mel_args_aux(a, "logp", lpv, MEL_F64);
        mel_status s = mel_forward(ctx, t, a);
        double Z[N * V], e = 0;
        ref_logits(N, D, V, X, W, NULL, Z);
        for (int i = 0; i < N; i++) {
            double m = -INFINITY, sm = 0;
            for (int j = 0; j < V; j++) m = fmax(m, Z[i * V + j]);
            for (int j = 0; j < V; j++) sm += exp(Z[i * V + j] - m);
            ZL[i] = Z[i * V + LAB[i]] - m - log(sm);
            e = fmax(e, fabs(lpv[i] - ZL[i]));
        }
        ok(s == MEL_OK && e < 1e-13, "aux logp equals the reference log-probs (max err %.1e)", e);
        mel_args_free(a);
        mel_transform_free(t);
    }
    for (int i = 0; i < N; i++) {
        OLD[i] = ZL[i] + 0.5 * rng_normal(&rng);
        REF[i] = ZL[i] + 0.3 * rng_normal(&rng);
    }

    cfg cases[] = {
        /* loss, seq, old, ref, beta, eps_low, eps_high, delta */
        {0, 0, 1, -1, 0, 0.2, 0.2, 0},   {1, 0, 1, -1, 0, 0.2, 0.2, 0},
        {2, 0, 1, -1, 0, 0.2, 0.2, 0},   {3, 0, 1, -1, 0, 0.2, 0.28, 0},
        {3, 0, 1, 0, 0.04, 0.2, 0.28, 1.5}, {0, 0, 1, 1, 0.04, 0.2, 0.2, 0},
        {1, 1, 1, -1, 0, 0.2, 0.2, 0},   {3, 1, 1, 0, 0.04, 0.2, 0.28, 1.2},
        {0, 1, 1, 1, 0.1, 0.1, 0.3, 0},  {3, 0, 0, -1, 0, 0.2, 0.28, 0},
        {2, 1, 0, 0, 0.04, 0.2, 0.2, 0}, {0, 0, 0, 1, 0.04, 0.2, 0.2, 1.5},
    };
    int nc = (int)(sizeof cases / sizeof cases[0]);
    for (int k = 0; k < nc; k++) {
        const cfg *c = &cases[k];
        char name[160];
        snprintf(name, sizeof name, "%s %s old=%s beta=%g%s eps=%g/%g delta=%g", lt_name[c->loss_type],
                 c->seq ? "sequence" : "token", c->use_old ? "given" : "absent", c->beta,
                 c->beta == 0 ? "" : c->ref_source == 1 ? " (ref head)" : " (ref_logp)", c->el, c->eh, c->delta);
        mel_transform *t = build(ctx, c);
        if (!ok(t != NULL, "%s: builds", name)) continue;
        double w[N], y = NAN, want = ref_loss(c, c->use_old ? OLD : NULL);
        mel_status s = mel_grpo_weights(ctx, (mel_grpo_loss_type)c->loss_type, B, T, MASK, MAXLEN, 0, 1, w);
        ok(s == MEL_OK, "%s: weights", name);
        /* value for several chunk sizes (sequence level: multiples of T) */
        int64_t chunks[] = {1, 7, T, 2 * T, N, 0};
        double dX0[N * D], dW0[V * D];
        for (int ci = 0; ci < 6; ci++) {
            mel_set_chunk_rows(ctx, chunks[ci]);
            double dX[N * D], dW[V * D];
            mel_args *a = bind(c, OLD, w, &y);
            mel_args_grad_head(a, 0, mel_mat(dX, MEL_F64, N, D, 0), mel_mat(dW, MEL_F64, V, D, 0), NULL,
                               MEL_OVERWRITE_DW);
            s = mel_forward_backward(ctx, t, a);
            mel_stats st;
            mel_get_stats(ctx, &st);
            double eg = 0;
            if (ci == 0) memcpy(dX0, dX, sizeof dX), memcpy(dW0, dW, sizeof dW);
            else eg = fmax(ref_relerr(dX, dX0, N * D, 1e-300), ref_relerr(dW, dW0, V * D, 1e-300));
            ok(s == MEL_OK && fabs(y - want) <= 1e-12 * fmax(1, fabs(want)) && eg < 1e-12,
               "%s: chunk_rows %lld (used %lld): loss %.15g vs reference %.15g; grads vs chunk 1: %.1e",
               name, (long long)chunks[ci], (long long)st.chunk_rows, y, want, eg);
            if (s) diag("%s", mel_last_error(ctx));
            mel_args_free(a);
        }
        mel_set_chunk_rows(ctx, 0);
        if (c->use_old) {
            mel_gradcheck_opts o = {.seed = seed + (uint64_t)k, .samples = 20};
            mel_gradcheck_report rep;
            mel_args *a = bind(c, OLD, w, &y);
            s = mel_gradcheck(ctx, t, a, &o, &rep);
            ok(s == MEL_OK && rep.failed == 0, "%s: gradients vs finite differences (%d entries, max rel %.1e)",
               name, rep.checked, rep.max_rel_err);
            if (s) diag("%s", mel_last_error(ctx));
            else if (rep.failed) diag("worst: %s", rep.worst);
            mel_args_free(a);
        } else {
            /* stop-gradient old: same gradient as old given = current logp */
            cfg c2 = *c;
            c2.use_old = 1;
            mel_transform *t2 = build(ctx, &c2);
            double dXa[N * D], dWa[V * D], dXb[N * D], dWb[V * D], ya, yb;
            mel_args *a = bind(c, NULL, w, &ya);
            mel_args_grad_head(a, 0, mel_mat(dXa, MEL_F64, N, D, 0), mel_mat(dWa, MEL_F64, V, D, 0), NULL,
                               MEL_OVERWRITE_DW);
            mel_status s1 = mel_forward_backward(ctx, t, a);
            mel_args *b2 = bind(&c2, ZL, w, &yb);
            mel_args_grad_head(b2, 0, mel_mat(dXb, MEL_F64, N, D, 0), mel_mat(dWb, MEL_F64, V, D, 0), NULL,
                               MEL_OVERWRITE_DW);
            mel_status s2 = mel_forward_backward(ctx, t2, b2);
            double e = fmax(ref_relerr(dXa, dXb, N * D, 1e-300), ref_relerr(dWa, dWb, V * D, 1e-300));
            double gmax = 0;
            for (int i = 0; i < N * D; i++) gmax = fmax(gmax, fabs(dXa[i]));
            ok(s1 == MEL_OK && s2 == MEL_OK && e < 1e-10 && gmax > 1e-3 && fabs(ya - yb) < 1e-12,
               "%s: stop-gradient old gives the gradient of old = current logp (rel %.1e, max |dX| %.2g)",
               name, e, gmax);
            mel_args_free(a);
            mel_args_free(b2);
            mel_transform_free(t2);
        }
        mel_transform_free(t);
    }

    /* a token with an ignored label does not count, even with mask 1: the
     * mean equals the mean with that token's mask set to 0 */
    {
        cfg c1 = {1, 1, 1, -1, 0, 0.2, 0.2, 0};
        mel_transform *t1 = build(ctx, &c1);
        double w1[N], ya, yb, keep_m = MASK[1];
        int64_t keep_l = LAB[1];
        for (int i = 0; i < N; i++) w1[i] = 1;
        mel_args *a = bind(&c1, OLD, w1, &ya);
        mel_args_reduction(a, MEL_REDUCE_MEAN, NULL);
        MASK[1] = 1, LAB[1] = -100;
        mel_status s1 = mel_forward(ctx, t1, a);
        MASK[1] = 0, LAB[1] = keep_l;
        mel_args_output(a, &yb, MEL_F64);
        mel_status s2 = mel_forward(ctx, t1, a);
        MASK[1] = keep_m;
        ok(s1 == MEL_OK && s2 == MEL_OK && fabs(ya - yb) <= 1e-14 * fabs(yb),
           "an ignored label with mask 1 counts as padding (sequence level, mean): %.15g vs %.15g", ya, yb);
        mel_args_free(a);
        mel_transform_free(t1);
    }
    /* introspection: what the grpo variants read */
    {
        cfg c1 = {3, 1, 1, 1, 0.04, 0.2, 0.2, 0};
        mel_transform *t1 = build(ctx, &c1);
        char names[160] = "";
        for (int i = 0; i < mel_transform_num_inputs(t1); i++) {
            int idx = -1, d = -1;
            const char *nm = mel_transform_input(t1, i, &idx, &d);
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s:%c", i ? "," : "", nm,
                     idx ? 'i' : 's');
        }
        ok(!strcmp(names, "labels:i,mask:s,advantages:s,old_logp:s") && mel_transform_head(t1, 0) == 2 &&
               mel_transform_head(t1, 1) == 1 && mel_transform_head(t1, 2) == 0 &&
               mel_transform_num_aux(t1) == 6 && !strcmp(mel_transform_aux(t1, 0), "kl") &&
               !strcmp(mel_transform_aux(t1, 3), "is_high_clipped") &&
               mel_transform_input(t1, 9, NULL, NULL) == NULL,
           "introspection: inputs %s, heads 0 (differentiable) and 1, aux kl/is_clipped/is_low_clipped/"
           "is_high_clipped/ratio/logp", names);
        mel_transform_free(t1);
    }
    /* helpers */
    double w[N], r[12] = {1, 0, 0, 1, 2, 2, 2, 2, 0.5, -1, 3, 0}, adv[12];
    ok(mel_grpo_weights(ctx, MEL_GRPO_GRPO, B, T, MASK, MAXLEN, 0, 2, w) == MEL_OK &&
           fabs(w[0] - 1.0 / 5 / 3 / 2) < 1e-15 && fabs(w[T] - 1.0 / 4 / 3 / 2) < 1e-15 && w[T + 4] == 0,
       "grpo weights: m / max(sum_t m, 1) / B / GA");
    ok(mel_grpo_weights(ctx, MEL_GRPO_DAPO, B, T, MASK, MAXLEN, 100, 1, w) == MEL_OK && w[0] == 0.01,
       "dapo weights with num_items_in_batch = 100: 1/100");
    ok(mel_grpo_weights(ctx, MEL_GRPO_DR_GRPO, B, T, MASK, MAXLEN, 0, 1, w) == MEL_OK &&
           fabs(w[0] - 1.0 / (3 * MAXLEN)) < 1e-15, "dr_grpo weights: m / (B max_completion_length)");
    ok(mel_grpo_weights(ctx, (mel_grpo_loss_type)7, B, T, MASK, MAXLEN, 0, 1, w) == MEL_ERR_INVALID_ARGUMENT,
       "unknown loss type rejected: %s", mel_last_error(ctx));
    {
        /* mel_grpo_loss_weights: the policy from the parameters; B = 2
         * sequences of T2 = 3 tokens, mask 1 1 0 / 1 1 1, labels of token 1
         * of sequence 1 = ignore_index (-100 by default): it counts nowhere,
         * so sequence 1 has 2 tokens.  grpo: m / n_b / B; dapo (default
         * loss_type, num_items_in_batch 0): m / total (4 tokens). */
        enum { T2 = 3, N2 = 6 };
        const double m2[N2] = {1, 1, 0, 1, 1, 1};
        const int64_t l2[N2] = {0, 1, 2, 3, -100, 4};
        double w2[N2];
        mel_params *q = mel_params_new();
        mel_params_set(q, "seq_len", T2);
        mel_params_set(q, "loss_type", MEL_GRPO_GRPO);
        mel_status s2 = mel_grpo_loss_weights(ctx, q, N2, m2, l2, MEL_I64, 1, w2);
        ok(s2 == MEL_OK && w2[0] == 0.25 && w2[1] == 0.25 && w2[2] == 0 && w2[3] == 0.25 && w2[4] == 0 &&
               w2[5] == 0.25,
           "mel_grpo_loss_weights grpo: the ignored token counts nowhere (%g %g %g %g %g %g) %s", w2[0], w2[1],
           w2[2], w2[3], w2[4], w2[5], mel_last_error(ctx));
        mel_params_free(q);
        q = mel_params_new();
        mel_params_set(q, "seq_len", T2);
        s2 = mel_grpo_loss_weights(ctx, q, N2, m2, l2, MEL_I64, 1, w2);
        ok(s2 == MEL_OK && w2[0] == 0.25 && w2[4] == 0 && w2[5] == 0.25,
           "mel_grpo_loss_weights: the default loss_type is dapo, 1 / 4 tokens (%g) %s", w2[0], mel_last_error(ctx));
        mel_params_set(q, "max_completion_length", 10);
        mel_arg_kind k;
        const char *pn;
        s2 = mel_grpo_loss_weights(ctx, q, N2, m2, l2, MEL_I64, 1, w2);
        mel_last_error_detail(ctx, &k, NULL, &pn, NULL, NULL);
        ok(s2 == MEL_ERR_INVALID_ARGUMENT && k == MEL_ARG_PARAM && pn && !strcmp(pn, "max_completion_length") &&
               strstr(mel_last_error(ctx), "loss_type = dapo"),
           "max_completion_length with loss_type dapo refused, naming both: %s", mel_last_error(ctx));
        mel_params_free(q);
        q = mel_params_new();
        s2 = mel_grpo_loss_weights(ctx, q, N2, m2, l2, MEL_I64, 1, w2);
        mel_last_error_detail(ctx, &k, NULL, &pn, NULL, NULL);
        ok(s2 == MEL_ERR_INVALID_ARGUMENT && k == MEL_ARG_PARAM && pn && !strcmp(pn, "seq_len"),
           "no seq_len: refused naming it: %s", mel_last_error(ctx));
        mel_params_set(q, "seq_len", 4);
        s2 = mel_grpo_loss_weights(ctx, q, N2, m2, l2, MEL_I64, 1, w2);
        ok(s2 == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "N = 6 rows is not a positive multiple"),
           "N not a multiple of seq_len: %s", mel_last_error(ctx));
        mel_params_set(q, "seq_len", T2);
        s2 = mel_grpo_loss_weights(ctx, q, N2, NULL, l2, MEL_I64, 1, w2);
        mel_last_error_detail(ctx, &k, NULL, &pn, NULL, NULL);
        ok(s2 == MEL_ERR_INVALID_ARGUMENT && k == MEL_ARG_INPUT && pn && !strcmp(pn, "mask"),
           "no mask: refused naming the input: %s", mel_last_error(ctx));
        mel_params_free(q);
        double v;
        const char *w0 = mel_param_word("loss_type", 2, &v), *w9 = mel_param_word("loss_type", 6, NULL);
        ok(w0 && !strcmp(w0, "dr_grpo") && v == MEL_GRPO_DR_GRPO && !w9 &&
               !strcmp(mel_param_word("loss_type", 5, &v), "sapo") && v == MEL_GRPO_SAPO &&
               !strcmp(mel_param_word("importance_sampling_level", 1, &v), "sequence") && v == 1 &&
               !mel_param_word("beta", 0, NULL),
           "mel_param_word: the library's words (loss_type 2 = %s)", w0 ? w0 : "NULL");
    }
    ok(mel_group_advantages(ctx, r, 12, 4, 1, adv) == MEL_OK, "group advantages");
    /* group 0: r = 1 0 0 1: mean 0.5, Bessel sd = sqrt(1/3) */
    is_close(adv[0], 0.5 / (sqrt(1.0 / 3) + 1e-4), 1e-14, 0, "advantage 0 = (r - mean) / (std + 1e-4)");
    is_close(adv[4], 0, 1e-14, 0, "constant group -> advantage 0");
    ok(mel_group_advantages(ctx, r, 10, 4, 1, adv) == MEL_ERR_SHAPE, "n not a multiple of the group: %s",
       mel_last_error(ctx));
    mel_params *p = mel_params_new();
    mel_params_set(p, "importance_sampling_level", 1);
    mel_transform *t = NULL;
    ok(mel_transform_builtin(ctx, "grpo", p, &t) == MEL_ERR_INVALID_ARGUMENT &&
           strstr(mel_last_error(ctx), "needs seq_len"), "sequence level without seq_len: %s",
       mel_last_error(ctx));
    mel_params_free(p);
    mel_ctx_destroy(ctx);
    return done_testing();
}
