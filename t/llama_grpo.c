/* llama-train --task grpo, step by step (examples/llama/grpo.h):
 * a short deterministic GRPO run of the tiny Llama policy where, at every
 * step, libmel's grpo head and the naive full-logits head see the same
 * hidden states, and
 *   - their losses agree to 1e-5 (relative to Σ w·|ℓ|, see doc/llama.md)
 *     and their gradients dX, dW to 1e-4 (relative L2);
 *   - loss, mean KL and the number of clipped tokens of both heads equal an
 *     fp64 computation written here from the naive head's logits (the
 *     formulas of the GRPO reference, not grpo.c's code);
 *   - the naive head's dL/dlogits equals central differences of that fp64
 *     loss, so the naive head is an independent reference for libmel;
 *   - mel_group_advantages equals the plain formula.
 * The policy is trained by the libmel head's gradients (lr 1e-2, two
 * iterations per batch).  Rewards are random (the untrained policy earns
 * none), completion lengths are cut at random positions with the end token
 * (a random policy almost never emits it), and old_logp is the sampled
 * log-probability plus N(0, 0.3²) noise, so advantages are non-zero, masks
 * have zeros and the clip is active in both directions at every step.
 * Four configurations cover the four loss types, token and sequence
 * level, β = 0 and β > 0 (reference = head 1), δ, and temperature ≠ 1. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/llama/grpo.h"
#include "../examples/llama/model.h"
#include "mel.h"
#include "tap.h"

typedef struct tcase {
    const char *name;
    int loss_type, seq;
    double beta, eps_low, eps_high, delta, tau;
    int64_t chunk_rows;
} tcase;

enum { PROMPTS = 4, GROUP = 4, B = PROMPTS * GROUP, C = 5, P = GRPO_PROMPT_LEN,
       TM = P + C - 1, N = B * C, BATCHES = 3, ITERS = 2 };

/* fp64 GRPO loss from logits Z [N, V] (and Zr when β ≠ 0), written from the
 * reference formulas: per-token clipped surrogate + β·k3, reduced with the
 * loss type's normaliser.  Returns L; *kl_mean = Σ m·kl / Σ m; *nclip =
 * tokens with (r < 1 − ε_low, A < 0) or (r > 1 + ε_high, A > 0), r after
 * the δ clamp. */
static double indep_loss(const tcase *tc, int64_t V, const double *Z, const double *Zr,
                         const int32_t *lab, const double *mask, const double *adv,
                         const double *old, double *kl_mean, int64_t *nclip)
{
    static double lp[N], lr[N];
    for (int i = 0; i < N; i++) {
        double m = -INFINITY, s = 0, mr = -INFINITY, sr = 0;
        for (int64_t j = 0; j < V; j++) {
            m = fmax(m, Z[i * V + j] / tc->tau);
            if (Zr) mr = fmax(mr, Zr[i * V + j] / tc->tau);
        }
        for (int64_t j = 0; j < V; j++) {
            s += exp(Z[i * V + j] / tc->tau - m);
            if (Zr) sr += exp(Zr[i * V + j] / tc->tau - mr);
        }
        lp[i] = Z[i * V + lab[i]] / tc->tau - m - log(s);
        lr[i] = Zr ? Zr[i * V + lab[i]] / tc->tau - mr - log(sr) : 0;
    }
    double total_m = 0;
    for (int i = 0; i < N; i++) total_m += mask[i];
    double L = 0, kls = 0;
    *nclip = 0;
    for (int b = 0; b < B; b++) {
        double seq_m = 0, seq_lr = 0, seq_sum = 0;
        for (int t = 0; t < C; t++) {
            const int i = b * C + t;
            seq_m += mask[i];
            if (mask[i] != 0) seq_lr += mask[i] * (lp[i] - old[i]);
        }
        for (int t = 0; t < C; t++) {
            const int i = b * C + t;
            if (mask[i] == 0) continue;
            const double r = exp(tc->seq ? seq_lr / fmax(seq_m, 1) : lp[i] - old[i]);
            const double c1 = tc->delta > 0 ? fmin(r, tc->delta) : r;
            const double c2 = fmin(fmax(r, 1 - tc->eps_low), 1 + tc->eps_high);
            double l = -fmin(c1 * adv[i], c2 * adv[i]);
            if (tc->beta != 0) {
                const double kl = exp(lr[i] - lp[i]) - (lr[i] - lp[i]) - 1;
                l += tc->beta * kl;
                kls += mask[i] * kl;
            }
            *nclip += (c1 < 1 - tc->eps_low && adv[i] < 0) || (c1 > 1 + tc->eps_high && adv[i] > 0);
            seq_sum += mask[i] * l;
        }
        switch (tc->loss_type) {
        case MEL_GRPO_GRPO: L += seq_sum / fmax(seq_m, 1) / B; break;
        case MEL_GRPO_BNPO: L += seq_sum / fmax(total_m, 1); break;
        case MEL_GRPO_DR_GRPO: L += seq_sum / ((double)B * C); break;
        default: L += seq_sum / fmax(total_m, 1); break;
        }
    }
    *kl_mean = kls / fmax(total_m, 1);
    return L;
}

static double rel_l2(const float *a, const float *b, int64_t n)
{
    double e = 0, s = 0;
    for (int64_t i = 0; i < n; i++) e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), s += (double)b[i] * b[i];
    return sqrt(e / fmax(s, 1e-300));
}

static void run_case(const tcase *tc, uint64_t seed)
{
    llama_config c;
    llama_config_preset("tiny", &c);
    llama_layout lo;
    llama_layout_init(&c, &lo);
    const int64_t D = c.dim, V = c.vocab;
    float *p = malloc((size_t)lo.total * sizeof(float)), *ref = malloc((size_t)lo.total * sizeof(float));
    float *g = malloc((size_t)lo.total * sizeof(float));
    float *X = malloc((size_t)N * D * sizeof(float)), *Xr = malloc((size_t)N * D * sizeof(float));
    float *dX = malloc((size_t)N * D * sizeof(float)), *dX2 = malloc((size_t)N * D * sizeof(float));
    float *dW2 = malloc((size_t)V * D * sizeof(float));
    float *zbuf = malloc((size_t)B * V * sizeof(float)), *xbuf = malloc((size_t)B * D * sizeof(float));
    double *Zd = malloc((size_t)N * V * sizeof(double)), *Zrd = malloc((size_t)N * V * sizeof(double));
    int32_t inputs[B * TM], comp[N];
    double mask[N], old[N], rewards[B], advm[B], advn[B], adv[N];
    llama_acts acts;
    llama_optim opt;
    grpo_mel hm;
    grpo_naive hn;
    grpo_cfg gc = {.loss_type = tc->loss_type, .seq_level = tc->seq, .beta = tc->beta,
                   .eps_low = tc->eps_low, .eps_high = tc->eps_high, .delta = tc->delta,
                   .temperature = tc->tau, .B = B, .C = C};
    if (!p || !ref || !g || !X || !Xr || !dX || !dX2 || !dW2 || !zbuf || !xbuf || !Zd || !Zrd ||
        llama_acts_alloc(&c, B, TM, &acts) || llama_optim_init(&opt, OPT_ADAMW, 1e-2, 0, &lo) ||
        grpo_naive_init(&hn, N, V, tc->beta != 0)) {
        ok(0, "%s: allocations", tc->name);
        return;
    }
    if (!ok(grpo_mel_init(&hm, &gc, 0, tc->chunk_rows, 0) == 0, "%s: libmel grpo head builds", tc->name)) {
        diag("%s", hm.err);
        return;
    }
    llama_init_params(&c, &lo, p, seed);
    memcpy(ref, p, (size_t)lo.total * sizeof(float));
    llama_rng task, samp, noise;
    llama_rng_seed(&task, seed + 1);
    llama_rng_seed(&samp, seed + 2);
    llama_rng_seed(&noise, seed + 3);
    int64_t clipped_total = 0, masked_total = 0;
    int step = 0;
    for (int bt = 0; bt < BATCHES; bt++) {
        for (int q = 0; q < PROMPTS; q++) {
            int32_t pt[P];
            grpo_task_prompt(&task, pt);
            for (int k = 0; k < GROUP; k++) memcpy(inputs + (q * GROUP + k) * TM, pt, sizeof pt);
        }
        grpo_sample(&c, &lo, p, &acts, P, C, tc->tau, &samp, inputs, comp, mask, old, zbuf, xbuf);
        /* cut completion b after a random length with the end token */
        for (int b = 0; b < B; b++) {
            int len = 1 + (int)(llama_rng_u64(&noise) % C);
            for (int t = len - 1; t < C; t++) {
                comp[b * C + t] = GRPO_END_TOKEN;
                mask[b * C + t] = t == len - 1;
                if (t < C - 1) inputs[b * TM + P + t] = GRPO_END_TOKEN;
            }
            rewards[b] = llama_rng_uniform(&noise);
        }
        for (int i = 0; i < N; i++) {
            old[i] += 0.3 * llama_rng_normal(&noise);
            masked_total += mask[i] == 0;
        }
        mel_status s = mel_group_advantages(hm.ctx, rewards, B, GROUP, 1, advm);
        grpo_naive_advantages(rewards, B, GROUP, 1, advn);
        double ea = 0;
        for (int b = 0; b < B; b++) ea = fmax(ea, fabs(advm[b] - advn[b]));
        ok(s == MEL_OK && ea < 1e-12, "%s: batch %d: mel_group_advantages = plain formula (max diff %.1e)",
           tc->name, bt + 1, ea);
        for (int i = 0; i < N; i++) adv[i] = advm[i / C];
        if (tc->beta != 0) {
            llama_forward(&c, &lo, ref, inputs, &acts);
            grpo_gather_rows(&acts, (int)D, P, C, Xr);
        }
        for (int it = 0; it < ITERS; it++) {
            step++;
            llama_forward(&c, &lo, p, inputs, &acts);
            grpo_gather_rows(&acts, (int)D, P, C, X);
            const float *W = p + lo.lm_head, *Wr = ref + lo.lm_head;
            float *dW = g + lo.lm_head;
            grpo_stats sm, sn;
            if (grpo_mel_run(&hm, &gc, X, W, Xr, Wr, D, V, comp, mask, adv, old, dX, dW, &sm) != 0) {
                ok(0, "%s: step %d: libmel head: %s", tc->name, step, hm.err);
                return;
            }
            grpo_naive_run(&hn, &gc, X, W, Xr, Wr, D, comp, mask, adv, old, dX2, dW2, &sn);

            double scale = fmax(fabs(sn.loss), sn.abs_loss);
            double rel = fabs(sm.loss - sn.loss) / scale;
            double ex = rel_l2(dX, dX2, N * D), ew = rel_l2(dW, dW2, V * D);
            ok(rel <= 1e-5 && ex <= 1e-4 && ew <= 1e-4,
               "%s: step %d: mel loss %.9f, naive %.9f (reldiff %.1e); gradients dX %.1e, dW %.1e", tc->name,
               step, sm.loss, sn.loss, rel, ex, ew);

            for (int64_t i = 0; i < N * V; i++) {
                Zd[i] = hn.logits[i];
                if (tc->beta != 0) Zrd[i] = hn.ref_logits[i];
            }
            double kl;
            int64_t nclip;
            double L = indep_loss(tc, V, Zd, tc->beta != 0 ? Zrd : NULL, comp, mask, adv, old, &kl, &nclip);
            ok(fabs(sn.loss - L) <= 1e-12 * scale && fabs(sm.loss - L) <= 1e-5 * scale &&
                   fabs(sn.kl - kl) <= 1e-12 * fmax(kl, 1e-3) && fabs(sm.kl - kl) <= 1e-5 * kl + 1e-9 &&
                   sm.clipped == nclip && sn.clipped == nclip && (tc->beta != 0 || kl == 0) &&
                   (tc->beta == 0 || step == 1 || kl > 0),
               "%s: step %d: fp64 from the naive logits: loss %.9f, kl %.6g, %lld clipped; mel %.9f / %.6g / "
               "%lld, naive %.9f / %.6g / %lld",
               tc->name, step, L, kl, (long long)nclip, sm.loss, sm.kl, (long long)sm.clipped, sn.loss, sn.kl,
               (long long)sn.clipped);
            clipped_total += nclip;

            /* the naive head's dL/dz against central differences of L(z) */
            double worst = 0;
            int bad = 0;
            for (int k = 0; k < 8; k++) {
                int i;
                do i = (int)(llama_rng_u64(&noise) % N);
                while (mask[i] == 0);
                int64_t j = k % 2 ? comp[i] : (int64_t)(llama_rng_u64(&noise) % (uint64_t)V), e = i * V + j;
                const double h = 1e-4, z0 = Zd[e];
                double kk;
                int64_t cc;
                Zd[e] = z0 + h;
                double Lp = indep_loss(tc, V, Zd, tc->beta != 0 ? Zrd : NULL, comp, mask, adv, old, &kk, &cc);
                Zd[e] = z0 - h;
                double Lm = indep_loss(tc, V, Zd, tc->beta != 0 ? Zrd : NULL, comp, mask, adv, old, &kk, &cc);
                Zd[e] = z0;
                double fd = (Lp - Lm) / (2 * h), an = hn.dlogits[e];
                double err = fabs(an - fd) / fmax(fmax(fabs(an), fabs(fd)), 1e-6);
                worst = fmax(worst, err);
                bad += !(fabs(an - fd) <= 1e-9 + 1e-4 * fmax(fabs(an), fabs(fd)));
            }
            ok(bad == 0, "%s: step %d: naive dL/dlogits vs central differences, 8 entries (worst rel %.1e)",
               tc->name, step, worst);

            grpo_scatter_rows(&acts, (int)D, P, C, dX);
            llama_backward(&c, &lo, p, inputs, &acts, g);
            llama_optim_step(&opt, &c, &lo, p, g);
        }
    }
    ok(clipped_total > 0 && masked_total > 0, "%s: the clip was active (%lld tokens) and masks had zeros (%lld)",
       tc->name, (long long)clipped_total, (long long)masked_total);
    grpo_mel_free(&hm);
    grpo_naive_free(&hn);
    llama_acts_free(&acts);
    llama_optim_free(&opt);
    free(p); free(ref); free(g); free(X); free(Xr); free(dX); free(dX2); free(dW2);
    free(zbuf); free(xbuf); free(Zd); free(Zrd);
}

int main(void)
{
    uint64_t seed = test_seed(11);
    const tcase cases[] = {
        /* name, loss type, seq, beta, eps low/high, delta, temperature, chunk rows */
        {"dapo token beta=0.04", MEL_GRPO_DAPO, 0, 0.04, 0.2, 0.28, 0, 1.0, 24},
        {"grpo sequence beta=0.04 delta=1.5", MEL_GRPO_GRPO, 1, 0.04, 0.2, 0.2, 1.5, 1.0, 7},
        {"bnpo token beta=0 T=0.7", MEL_GRPO_BNPO, 0, 0, 0.1, 0.3, 0, 0.7, 0},
        {"dr_grpo sequence beta=0.1 T=1.3", MEL_GRPO_DR_GRPO, 1, 0.1, 0.2, 0.28, 0, 1.3, 13},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) run_case(&cases[k], seed + 100 * k);
    return done_testing();
}
