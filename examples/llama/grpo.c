/* grpo.c -- task, sampling and the two GRPO heads of llama-train (grpo.h). */
#include "grpo.h"
#include "head.h" /* llama_mel_context */

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------- task */

void grpo_task_prompt(llama_rng *r, int32_t *tokens)
{
    const int s = (int)(llama_rng_u64(r) % 10);
    for (int i = 0; i < GRPO_PROMPT_LEN; i++) tokens[i] = '0' + (s + i) % 10;
}

double grpo_reward(const int32_t *prompt, const int32_t *c, int C)
{
    const int P = GRPO_PROMPT_LEN;
    int right = 0;
    for (int t = 0; t < P && t < C; t++) {
        if (c[t] == GRPO_END_TOKEN) break; /* stopped early */
        right += c[t] == '0' + (prompt[0] - '0' + P + t) % 10;
    }
    const int ends = right == P && C > P && c[P] == GRPO_END_TOKEN;
    return (right + ends) / (double)(P + 1);
}

/* --------------------------------------------------------------- sampling */

void grpo_gather_rows(const llama_acts *a, int D, int P, int C, float *X)
{
    const int T = a->T;
    for (int b = 0; b < a->B; b++)
        memcpy(X + (int64_t)b * C * D, a->hn + ((int64_t)b * T + P - 1) * D,
               (size_t)C * D * sizeof(float));
}

void grpo_scatter_rows(llama_acts *a, int D, int P, int C, const float *dX)
{
    const int T = a->T;
    memset(a->dhn, 0, (size_t)a->N * D * sizeof(float));
    for (int b = 0; b < a->B; b++)
        memcpy(a->dhn + ((int64_t)b * T + P - 1) * D, dX + (int64_t)b * C * D,
               (size_t)C * D * sizeof(float));
}

void grpo_sample(const llama_config *c, const llama_layout *lo,
                 const float *p, llama_acts *a, int P, int C,
                 double temperature, llama_rng *rng, int32_t *inputs,
                 int32_t *comp, double *mask, double *old, float *zbuf,
                 float *xbuf)
{
    const int B = a->B, T = a->T, D = c->dim, V = c->vocab;
    const float *W = p + lo->lm_head;
    for (int b = 0; b < B; b++)
        for (int t = P; t < T; t++) inputs[b * T + t] = GRPO_END_TOKEN;
    for (int t = 0; t < C; t++) {
        llama_forward(c, lo, p, inputs, a);
        for (int b = 0; b < B; b++)
            memcpy(xbuf + (int64_t)b * D, a->hn + ((int64_t)b * T + P - 1 + t) * D,
                   (size_t)D * sizeof(float));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, V, D, 1.0f, xbuf,
                    D, W, D, 0.0f, zbuf, V);
        for (int b = 0; b < B; b++) {
            const int64_t i = (int64_t)b * C + t;
            if (t > 0 && (mask[i - 1] == 0 || comp[i - 1] == GRPO_END_TOKEN)) {
                comp[i] = GRPO_END_TOKEN; /* after the end: padding */
                mask[i] = 0;
                old[i] = 0;
                continue;
            }
            const float *z = zbuf + (int64_t)b * V;
            double mx = -INFINITY, s = 0;
            for (int j = 0; j < V; j++) mx = fmax(mx, z[j] / temperature);
            for (int j = 0; j < V; j++) s += exp(z[j] / temperature - mx);
            const double u = llama_rng_uniform(rng) * s;
            double cum = 0;
            int k = V - 1;
            for (int j = 0; j < V; j++) {
                cum += exp(z[j] / temperature - mx);
                if (cum > u) {
                    k = j;
                    break;
                }
            }
            comp[i] = k;
            mask[i] = 1;
            old[i] = z[k] / temperature - mx - log(s);
        }
        if (t + 1 < C)
            for (int b = 0; b < B; b++)
                inputs[b * T + P + t] = comp[(int64_t)b * C + t];
    }
}

/* ------------------------------------------------------------------ naive */

int grpo_naive_init(grpo_naive *h, int64_t N, int64_t V, int with_ref)
{
    memset(h, 0, sizeof *h);
    h->N = N;
    h->V = V;
    h->logits = malloc((size_t)(N * V) * sizeof(float));
    h->dlogits = malloc((size_t)(N * V) * sizeof(float));
    if (with_ref) h->ref_logits = malloc((size_t)(N * V) * sizeof(float));
    h->logp = malloc((size_t)N * sizeof(double));
    h->ref_logp = calloc((size_t)N, sizeof(double));
    h->w = malloc((size_t)N * sizeof(double));
    h->dlogp = malloc((size_t)N * sizeof(double));
    if (!h->logits || !h->dlogits || (with_ref && !h->ref_logits) || !h->logp ||
        !h->ref_logp || !h->w || !h->dlogp) {
        grpo_naive_free(h);
        return -1;
    }
    return 0;
}

void grpo_naive_free(grpo_naive *h)
{
    free(h->logits);
    free(h->dlogits);
    free(h->ref_logits);
    free(h->logp);
    free(h->ref_logp);
    free(h->w);
    free(h->dlogp);
    memset(h, 0, sizeof *h);
}

int64_t grpo_naive_bytes(const grpo_naive *h)
{
    return (h->ref_logits ? 3 : 2) * h->N * h->V * (int64_t)sizeof(float);
}

void grpo_naive_advantages(const double *rewards, int64_t n, int64_t group,
                           int scale, double *adv)
{
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        double mean = 0, var = 0;
        for (int64_t k = 0; k < group; k++) mean += rewards[g0 + k];
        mean /= (double)group;
        for (int64_t k = 0; k < group; k++)
            var += (rewards[g0 + k] - mean) * (rewards[g0 + k] - mean);
        const double sd = group > 1 ? sqrt(var / (double)(group - 1)) : 0;
        for (int64_t k = 0; k < group; k++)
            adv[g0 + k] = scale ? (rewards[g0 + k] - mean) / (sd + 1e-4)
                                : rewards[g0 + k] - mean;
    }
}

/* log softmax(z / tau)[y] of one row, in double; *lse_out = logsumexp(z/tau) */
static double row_logp(const float *z, int64_t V, int32_t y, double tau,
                       double *lse_out)
{
    double mx = -INFINITY, s = 0;
    for (int64_t j = 0; j < V; j++) mx = fmax(mx, z[j] / tau);
    for (int64_t j = 0; j < V; j++) s += exp(z[j] / tau - mx);
    const double lse = mx + log(s);
    if (lse_out) *lse_out = lse;
    return z[y] / tau - lse;
}

void grpo_naive_run(grpo_naive *h, const grpo_cfg *cfg, const float *X,
                    const float *W, const float *Xr, const float *Wr, int64_t D,
                    const int32_t *labels, const double *mask,
                    const double *adv, const double *old, float *dX, float *dW,
                    grpo_stats *st)
{
    const int64_t N = h->N, V = h->V, B = cfg->B, C = cfg->C;
    const double tau = cfg->temperature, beta = cfg->beta;
    const double lo = 1 - cfg->eps_low, hi = 1 + cfg->eps_high;
    const int use_ref = beta != 0;
    float *Z = h->logits, *dZ = h->dlogits, *Zr = h->ref_logits;

    /* Z [N, V] = X·Wᵀ, and the reference's Zr = Xr·Wrᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)V, (int)D,
                1.0f, X, (int)D, W, (int)D, 0.0f, Z, (int)V);
    if (use_ref)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)V,
                    (int)D, 1.0f, Xr, (int)D, Wr, (int)D, 0.0f, Zr, (int)V);

    /* log-probabilities of the sampled tokens */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        h->logp[i] = row_logp(Z + i * V, V, labels[i], tau, NULL);
        if (use_ref) h->ref_logp[i] = row_logp(Zr + i * V, V, labels[i], tau, NULL);
    }

    /* weights of the loss type: L = Σ_i w_i·ℓ_i */
    double msum = 0;
    for (int64_t i = 0; i < N; i++) msum += mask[i];
    for (int64_t b = 0; b < B; b++) {
        double sm = 0;
        for (int64_t t = 0; t < C; t++) sm += mask[b * C + t];
        for (int64_t t = 0; t < C; t++) {
            const int64_t i = b * C + t;
            switch (cfg->loss_type) {
            case MEL_GRPO_GRPO: h->w[i] = mask[i] / fmax(sm, 1) / (double)B; break;
            case MEL_GRPO_BNPO: h->w[i] = mask[i] / fmax(msum, 1); break;
            case MEL_GRPO_DR_GRPO: h->w[i] = mask[i] / ((double)B * (double)C); break;
            default: h->w[i] = mask[i] / fmax(msum, 1); break; /* dapo */
            }
        }
    }

    /* per token: ℓ = −min(c1·A, c2·A) + β·kl, and dL/dlogp */
    memset(st, 0, sizeof *st);
    double kls = 0, clips = 0, rs = 0;
    for (int64_t b = 0; b < B; b++) {
        double sb = 0, sm = 0, gseq = 0;
        for (int64_t t = 0; t < C; t++) {
            const int64_t i = b * C + t;
            if (mask[i] != 0) sb += mask[i] * (h->logp[i] - old[i]);
            sm += mask[i];
        }
        sb /= fmax(sm, 1);
        for (int64_t t = 0; t < C; t++) {
            const int64_t i = b * C + t;
            h->dlogp[i] = 0;
            if (mask[i] == 0) continue;
            const double A = adv[i];
            const double r = exp(cfg->seq_level ? sb : h->logp[i] - old[i]);
            /* c1 = min(r, δ) (δ > 0), c2 = clamp(r, lo, hi); d·/dr of each
             * (on ties the gradient goes to r, as with torch.clamp) */
            const double c1 = cfg->delta > 0 && r > cfg->delta ? cfg->delta : r;
            const double dc1 = cfg->delta > 0 && r > cfg->delta ? 0 : 1;
            const double c2 = r < lo ? lo : r > hi ? hi : r;
            const double dc2 = r < lo || r > hi ? 0 : 1;
            double l, dl_dr;
            if (c1 * A <= c2 * A) l = -c1 * A, dl_dr = -dc1 * A;
            else l = -c2 * A, dl_dr = -dc2 * A;
            double dl_dlogp = 0;
            if (use_ref) {
                const double d = h->ref_logp[i] - h->logp[i];
                const double kl = exp(d) - d - 1;
                l += beta * kl;
                dl_dlogp += beta * (1 - exp(d)); /* d kl / d logp */
                kls += mask[i] * kl;
            }
            const int clipped = (c1 < lo && A < 0) || (c1 > hi && A > 0);
            clips += mask[i] * clipped;
            st->clipped += clipped;
            rs += mask[i] * r;
            st->loss += h->w[i] * l;
            st->abs_loss += h->w[i] * fabs(l);
            /* the ratio's part: token level, dr/dlogp_i = r; sequence level,
             * dr/dlogp_t = r·m_t / max(Σ_t m, 1) for every t of sequence b */
            if (cfg->seq_level) gseq += h->w[i] * dl_dr * r;
            else dl_dlogp += dl_dr * r;
            h->dlogp[i] = h->w[i] * dl_dlogp;
        }
        if (cfg->seq_level)
            for (int64_t t = 0; t < C; t++) {
                const int64_t i = b * C + t;
                if (mask[i] != 0) h->dlogp[i] += gseq * mask[i] / fmax(sm, 1);
            }
    }
    st->kl = kls / fmax(msum, 1);
    st->clip = clips / fmax(msum, 1);
    st->ratio = rs / fmax(msum, 1);

    /* dL/dz_ij = dL/dlogp_i · (1[j = y_i] − softmax(z_i/τ)_j) / τ */
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N; i++) {
        const float *z = Z + i * V;
        float *dz = dZ + i * V;
        const double g = h->dlogp[i];
        if (g == 0) {
            memset(dz, 0, (size_t)V * sizeof(float));
            continue;
        }
        double lse;
        row_logp(z, V, labels[i], tau, &lse);
        for (int64_t j = 0; j < V; j++) dz[j] = (float)(-g * exp(z[j] / tau - lse) / tau);
        dz[labels[i]] += (float)(g / tau);
    }

    /* dX = dZ·W, dW = dZᵀ·X */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)D, (int)V,
                1.0f, dZ, (int)V, W, (int)D, 0.0f, dX, (int)D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)V, (int)D, (int)N,
                1.0f, dZ, (int)V, X, (int)D, 0.0f, dW, (int)D);
}

/* -------------------------------------------------------------------- mel */

static int mel_fail(grpo_mel *h, const char *what, mel_status s)
{
    snprintf(h->err, sizeof h->err, "%s: %s (%s)", what, mel_status_str(s),
             h->ctx ? mel_last_error(h->ctx) : mel_ctx_create_error());
    return -1;
}

int grpo_mel_init(grpo_mel *h, const grpo_cfg *cfg, int threads,
                  int64_t chunk_rows, int64_t workspace_bytes)
{
    memset(h, 0, sizeof *h);
    if (llama_mel_context(&h->ctx, h->err, sizeof h->err, threads, chunk_rows, workspace_bytes))
        return -1;
    mel_status s;
    mel_params *prm = mel_params_new();
    if (!prm) {
        snprintf(h->err, sizeof h->err, "mel_params_new: out of memory");
        return -1;
    }
    struct { const char *name; double v; } set[] = {
        {"beta", cfg->beta},
        {"epsilon_low", cfg->eps_low},
        {"epsilon_high", cfg->eps_high},
        {"delta", cfg->delta},
        {"use_old_logp", 1},
        {"ref_source", 1},
        {"importance_sampling_level", cfg->seq_level},
        {"seq_len", cfg->C},
        {"temperature", cfg->temperature},
        {"loss_type", cfg->loss_type},
    };
    s = MEL_OK;
    for (size_t i = 0; i < sizeof set / sizeof set[0] && s == MEL_OK; i++)
        s = mel_params_set(prm, set[i].name, set[i].v);
    /* only dr_grpo divides by it (mel_grpo_loss_weights refuses it otherwise) */
    if (s == MEL_OK && cfg->loss_type == MEL_GRPO_DR_GRPO) s = mel_params_set(prm, "max_completion_length", cfg->C);
    if (s == MEL_OK) s = mel_transform_builtin(h->ctx, "grpo", prm, &h->t);
    h->params = prm;
    if (s != MEL_OK) return mel_fail(h, "mel_transform_builtin(\"grpo\")", s);
    h->N = (int64_t)cfg->B * cfg->C;
    h->args = mel_args_new();
    h->w = malloc((size_t)h->N * sizeof(double));
    h->kl = calloc((size_t)h->N, sizeof(double));
    h->clipped = malloc((size_t)h->N * sizeof(double));
    h->ratio = malloc((size_t)h->N * sizeof(double));
    if (!h->args || !h->w || !h->kl || !h->clipped || !h->ratio) {
        snprintf(h->err, sizeof h->err, "out of memory");
        return -1;
    }
    return 0;
}

void grpo_mel_free(grpo_mel *h)
{
    mel_args_free(h->args);
    mel_transform_free(h->t);
    mel_params_free(h->params);
    mel_ctx_destroy(h->ctx);
    free(h->w);
    free(h->kl);
    free(h->clipped);
    free(h->ratio);
    memset(h, 0, sizeof *h);
}

int grpo_mel_run(grpo_mel *h, const grpo_cfg *cfg, const float *X,
                 const float *W, const float *Xr, const float *Wr, int64_t D,
                 int64_t V, const int32_t *labels, const double *mask,
                 const double *adv, const double *old, float *dX, float *dW,
                 grpo_stats *st)
{
    const int64_t N = h->N;
    mel_args *a = h->args;
    mel_status s;
    /* the loss type's weights over the whole batch, from the transform's
     * parameters (GA = 1; dapo with num_items_in_batch = 0, i.e. Σ mask) */
    if ((s = mel_grpo_loss_weights(h->ctx, h->params, N, mask, labels, MEL_I32, 1, h->w)) != MEL_OK)
        return mel_fail(h, "mel_grpo_loss_weights", s);
    mel_args_clear(a);
    memset(st, 0, sizeof *st);
    s = mel_args_head(a, 0, mel_mat((void *)X, MEL_F32, N, D, 0),
                      mel_mat((void *)W, MEL_F32, V, D, 0), NULL);
    if (s == MEL_OK && cfg->beta != 0)
        s = mel_args_head(a, 1, mel_mat((void *)Xr, MEL_F32, N, D, 0),
                          mel_mat((void *)Wr, MEL_F32, V, D, 0), NULL);
    if (s == MEL_OK) s = mel_args_index(a, "labels", labels, MEL_I32, N);
    if (s == MEL_OK) s = mel_args_input(a, "mask", mask, MEL_F64, N);
    if (s == MEL_OK) s = mel_args_input(a, "advantages", adv, MEL_F64, N);
    if (s == MEL_OK) s = mel_args_input(a, "old_logp", old, MEL_F64, N);
    if (s == MEL_OK) s = mel_args_reduction(a, MEL_REDUCE_WEIGHTED, h->w);
    if (s == MEL_OK) s = mel_args_output(a, &st->loss, MEL_F64);
    if (s == MEL_OK && cfg->beta != 0) s = mel_args_aux(a, "kl", h->kl, MEL_F64);
    if (s == MEL_OK) s = mel_args_aux(a, "is_clipped", h->clipped, MEL_F64);
    if (s == MEL_OK) s = mel_args_aux(a, "ratio", h->ratio, MEL_F64);
    if (s == MEL_OK)
        s = mel_args_grad_head(a, 0, mel_mat(dX, MEL_F32, N, D, 0),
                               mel_mat(dW, MEL_F32, V, D, 0), NULL, MEL_OVERWRITE_DW);
    if (s != MEL_OK) return mel_fail(h, "mel_args_*", s);
    if ((s = mel_forward_backward(h->ctx, h->t, a)) != MEL_OK)
        return mel_fail(h, "mel_forward_backward", s);
    mel_get_stats(h->ctx, &h->last);
    if (h->last.peak_workspace_bytes > h->peak_workspace)
        h->peak_workspace = h->last.peak_workspace_bytes;
    /* masked means of the aux outputs (they are 0 on masked rows) */
    double msum = 0, kls = 0, clips = 0, rs = 0;
    for (int64_t i = 0; i < N; i++) {
        msum += mask[i];
        kls += mask[i] * h->kl[i];
        clips += mask[i] * h->clipped[i];
        rs += mask[i] * h->ratio[i];
        st->clipped += h->clipped[i] != 0;
    }
    st->kl = kls / fmax(msum, 1);
    st->clip = clips / fmax(msum, 1);
    st->ratio = rs / fmax(msum, 1);
    return 0;
}
