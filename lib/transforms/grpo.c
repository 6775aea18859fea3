/* GRPO together: the "grpo" built-in (the per-token policy loss as a row
 * program) and the helpers outside the row program, the loss-type weights
 * (mel_grpo_weights) and group-normalised advantages
 * (mel_group_advantages).  Formulas in doc/transforms.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel_internal.h"

/* GRPO per token (doc/transforms.md): ratio r = exp(logp − old) (token) or
 * exp(s_b), s_b = Σ_t m·(logp − old) / max(Σ_t m, 1) (sequence), then
 * ℓ = −min(min(r, δ)·A, clamp(r, 1−ε_low, 1+ε_high)·A) + β·k3(ref, logp). */
enum { G_BETA = MEL_P_COMMON, G_EPS_LOW, G_EPS_HIGH, G_DELTA, G_OLD, G_REF, G_LEVEL, G_SEQ, G_LOSS,
       G_MAXLEN, G_ITEMS, G_SAPO_POS, G_SAPO_NEG, G_IS_MODE, G_IS_MIN, G_IS_MAX };
/* loss types (mel_grpo_loss_type) and importance-sampling correction modes */
enum { LT_GRPO, LT_BNPO, LT_DR_GRPO, LT_DAPO, LT_CISPO, LT_SAPO };
enum { IS_NONE, IS_TOKEN_TRUNCATE, IS_TOKEN_MASK, IS_SEQUENCE_TRUNCATE, IS_SEQUENCE_MASK };
static mel_status build_grpo(mel_graph *g, const double *p)
{
    const double el = p[G_EPS_LOW], eh = p[G_EPS_HIGH] == -1 ? p[G_EPS_LOW] : p[G_EPS_HIGH];
    const int seq = p[G_LEVEL] == 1, lt = (int)p[G_LOSS], ism = (int)p[G_IS_MODE];
    if ((seq || ism >= IS_SEQUENCE_TRUNCATE) && p[G_SEQ] < 1) {
        mel_g_set_output(g, -1);
        return MEL_ERR_INVALID_ARGUMENT;
    }
    mel_val lab = mel_g_index(g, "labels", (int64_t)p[MEL_P_IGNORE]);
    mel_val z = mel_bt_prep_logits(g, 0, 1, p);
    mel_val logp = mel_g_sub(g, mel_g_gather(g, z, lab), mel_g_logsumexp(g, z));
    mel_val mask = mel_g_input(g, "mask", 0);
    /* a token counts when mask != 0 and its label is not ignore_index: the
     * effective mask m is used for the value, the count and the sequence
     * means alike */
    mel_val on = mel_g_mul(g, mel_g_lt(g, mel_g_const(g, 0), mel_g_abs(g, mask)), mel_g_valid(g, lab));
    mask = mel_g_where(g, on, mask, mel_g_const(g, 0));
    mel_val adv = mel_g_input(g, "advantages", 0);
    mel_val old = p[G_OLD] ? mel_g_input(g, "old_logp", 0) : mel_g_stop_gradient(g, logp);
    mel_val zero = mel_g_const(g, 0);
    mel_val logr = mel_g_sub(g, logp, old);
    if (seq || ism >= IS_SEQUENCE_TRUNCATE) mel_g_set_segment(g, (int64_t)p[G_SEQ]);
    if (seq) {
        mel_val num = mel_g_segment_sum(g, mel_g_where(g, on, mel_g_mul(g, mask, logr), zero));
        mel_val den = mel_g_max(g, mel_g_segment_sum(g, mask), mel_g_const(g, 1));
        logr = mel_g_div(g, num, den);
    }
    mel_val r = mel_g_exp(g, logr);
    mel_val c1 = p[G_DELTA] > 0 ? mel_g_min(g, r, mel_g_const(g, p[G_DELTA])) : r;
    mel_val c2 = mel_g_clamp(g, r, 1 - el, 1 + eh);
    mel_val loss;
    if (lt == LT_CISPO) {
        /* CISPO: −stop_gradient(min(r, ε_high))·A·logp */
        loss = mel_g_neg(g, mel_g_mul(g, mel_g_mul(g, mel_g_stop_gradient(g, mel_g_min(g, r, mel_g_const(g, eh))),
                                                   adv), logp));
    } else if (lt == LT_SAPO) {
        /* SAPO: −σ(τ(r − 1))·4/τ·A, τ = τ_pos when A > 0, else τ_neg */
        mel_val tau = mel_g_where(g, mel_g_lt(g, zero, adv), mel_g_const(g, p[G_SAPO_POS]),
                                  mel_g_const(g, p[G_SAPO_NEG]));
        mel_val soft = mel_g_div(g, mel_g_scale(g, mel_g_sigmoid(g, mel_g_mul(g, tau, mel_g_sub(g, r, mel_g_const(g, 1)))),
                                                4), tau);
        loss = mel_g_neg(g, mel_g_mul(g, soft, adv));
    } else {
        loss = mel_g_neg(g, mel_g_min(g, mel_g_mul(g, c1, adv), mel_g_mul(g, c2, adv)));
    }
    if (ism != IS_NONE) {
        /* the sampler's importance weight (TRL's vllm_importance_sampling_correction):
         * d = (old − sampling_logp)·m (NaN → 0), summed over the sequence in the
         * sequence modes; w = exp(d) truncated to [clip_min, clip_max] or set to 0
         * outside it; no gradient */
        mel_val d = mel_g_where(g, on, mel_g_mul(g, mask, mel_g_sub(g, mel_g_stop_gradient(g, old),
                                                                     mel_g_input(g, "sampling_logp", 0))), zero);
        d = mel_g_where(g, mel_g_eq(g, d, d), d, zero);
        if (ism >= IS_SEQUENCE_TRUNCATE) d = mel_g_segment_sum(g, d);
        mel_val w = mel_g_exp(g, d);
        const double lo = p[G_IS_MIN], hi = p[G_IS_MAX] > 0 ? p[G_IS_MAX] : INFINITY;
        if (ism == IS_TOKEN_TRUNCATE || ism == IS_SEQUENCE_TRUNCATE) {
            w = mel_g_max(g, w, mel_g_const(g, lo));
            if (isfinite(hi)) w = mel_g_min(g, w, mel_g_const(g, hi));
        } else {
            mel_val inside = mel_g_mul(g, mel_g_le(g, mel_g_const(g, lo), w),
                                       isfinite(hi) ? mel_g_le(g, w, mel_g_const(g, hi)) : mel_g_const(g, 1));
            w = mel_g_where(g, inside, w, zero);
        }
        w = mel_g_stop_gradient(g, w);
        loss = mel_g_mul(g, loss, w);
        mel_g_add_aux(g, "is_ratio", mel_g_where(g, on, w, zero));
    }
    if (p[G_BETA] != 0) {
        mel_val ref;
        if (p[G_REF] == 1) {
            mel_val zr = mel_bt_prep_logits(g, 1, 0, p);
            ref = mel_g_sub(g, mel_g_gather(g, zr, lab), mel_g_logsumexp(g, zr));
        } else {
            ref = mel_g_input(g, "ref_logp", 0);
        }
        mel_val d = mel_g_sub(g, ref, logp);
        mel_val kl = mel_g_sub(g, mel_g_sub(g, mel_g_exp(g, d), d), mel_g_const(g, 1));
        loss = mel_g_add(g, loss, mel_g_scale(g, kl, p[G_BETA]));
        mel_g_add_aux(g, "kl", mel_g_where(g, on, kl, zero));
    }
    /* TRL's clip statistics: ratio below 1−ε_low with A < 0, or above 1+ε_high with A > 0;
     * cispo: above ε_high with A > 0; sapo clips nothing (no is_clipped) */
    if (lt == LT_CISPO) {
        mel_val high = mel_g_mul(g, mel_g_lt(g, mel_g_const(g, eh), r), mel_g_lt(g, zero, adv));
        mel_g_add_aux(g, "is_clipped", mel_g_where(g, on, high, zero));
    } else if (lt != LT_SAPO) {
        mel_val low = mel_g_mul(g, mel_g_lt(g, c1, mel_g_const(g, 1 - el)), mel_g_lt(g, adv, zero));
        mel_val high = mel_g_mul(g, mel_g_lt(g, mel_g_const(g, 1 + eh), c1), mel_g_lt(g, zero, adv));
        mel_g_add_aux(g, "is_clipped", mel_g_where(g, on, mel_g_max(g, low, high), zero));
        /* TRL's clip_ratio/low_* and clip_ratio/high_* come from these two */
        mel_g_add_aux(g, "is_low_clipped", mel_g_where(g, on, low, zero));
        mel_g_add_aux(g, "is_high_clipped", mel_g_where(g, on, high, zero));
    }
    mel_g_add_aux(g, "ratio", mel_g_where(g, on, r, zero));
    mel_g_add_aux(g, "logp", logp);
    mel_g_set_count(g, mask);
    return mel_g_set_output(g, mel_g_where(g, on, loss, zero));
}

/* Parameter combinations the bounds cannot express. */
static mel_status check_grpo(mel_ctx *ctx, const mel_builtin *b, const double *p, const char *given)
{
    if (p[G_EPS_HIGH] < 0 && p[G_EPS_HIGH] != -1)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "epsilon_high", -1, -1,
                        "transform 'grpo': epsilon_high = %g must be >= 0 (or -1: same as epsilon_low)",
                        p[G_EPS_HIGH]);
    if (p[G_LEVEL] == 1 && p[G_SEQ] < 1)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "seq_len", -1, -1,
                        "transform 'grpo': importance_sampling_level = 1 (sequence) needs seq_len >= 1 "
                        "(the completion length T; rows are B·T tokens in row-major order)");
    if (p[G_IS_MODE] >= IS_SEQUENCE_TRUNCATE && p[G_SEQ] < 1)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'grpo': vllm_importance_sampling_mode = %g (a sequence mode) needs seq_len >= 1 "
                        "(the completion length T)", p[G_IS_MODE]);
    const int lt = (int)p[G_LOSS];
    if (((given[G_SAPO_POS] && p[G_SAPO_POS] != 1.0) || (given[G_SAPO_NEG] && p[G_SAPO_NEG] != 1.05)) &&
        lt != LT_SAPO)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'grpo': %s = %g has no effect with loss_type = %g (sapo reads it)",
                        p[G_SAPO_POS] != 1.0 ? "sapo_temperature_pos" : "sapo_temperature_neg",
                        p[G_SAPO_POS] != 1.0 ? p[G_SAPO_POS] : p[G_SAPO_NEG], p[G_LOSS]);
    if (p[G_DELTA] > 0 && (lt == LT_CISPO || lt == LT_SAPO))
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'grpo': delta = %g has no effect with loss_type = %s", p[G_DELTA],
                        lt == LT_CISPO ? "cispo" : "sapo");
    if (((given[G_IS_MIN] && p[G_IS_MIN] != 0) || (given[G_IS_MAX] && p[G_IS_MAX] != 3.0)) &&
        p[G_IS_MODE] == IS_NONE)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform 'grpo': %s = %g has no effect with vllm_importance_sampling_mode = 0 (none)",
                        p[G_IS_MIN] != 0 ? "vllm_importance_sampling_min" : "vllm_importance_sampling_cap",
                        p[G_IS_MIN] != 0 ? p[G_IS_MIN] : p[G_IS_MAX]);
    return MEL_OK;
}

const mel_builtin mel_builtin_grpo = {
    "grpo",
    "GRPO/DAPO/Dr.GRPO/GSPO policy loss per token  inputs: head 0 (policy), labels, mask, "
    "advantages (per row), old_logp (when use_old_logp=1), ref_logp (when beta != 0 and "
    "ref_source=0) or head 1 (ref_source=1)  params: beta, epsilon_low, epsilon_high (default "
    "= epsilon_low), delta (0 = off), use_old_logp, ref_source, importance_sampling_level "
    "(0 token, 1 sequence), seq_len, temperature, vocab_valid, loss_type (0 grpo, 1 bnpo, 2 dr_grpo, 3 "
    "dapo, 4 cispo, 5 sapo: their per-token loss; all: mel_grpo_weights), max_completion_length, "
    "num_items_in_batch (these two: for mel_grpo_weights), sapo_temperature_pos, sapo_temperature_neg, "
    "vllm_importance_sampling_mode (0 none, 1 token_truncate, 2 token_mask, 3 sequence_truncate, "
    "4 sequence_mask; reads sampling_logp), vllm_importance_sampling_min, "
    "vllm_importance_sampling_cap (0: none)  aux: kl, is_clipped (not sapo), is_low_clipped, is_high_clipped "
    "(loss types 0-3), ratio, logp, is_ratio",
    {MEL_COMMON_PARAMS, {"beta", 0, 0, 1e300, 0}, {"epsilon_low", 0.2, 0, 1, 0},
     {"epsilon_high", -1, -1, 1e300, 0}, {"delta", 0, 0, 1e300, 0}, {"use_old_logp", 0, 0, 1, 1},
     {"ref_source", 0, 0, 1, 1}, {"importance_sampling_level", 0, 0, 1, 1},
     {"seq_len", 0, 0, 1e15, 1}, {"loss_type", 3, 0, 5, 1}, {"max_completion_length", 512, 1, 1e15, 1},
     {"num_items_in_batch", 0, 0, 1e300, 0}, {"sapo_temperature_pos", 1.0, 1e-300, 1e300, 0},
     {"sapo_temperature_neg", 1.05, 1e-300, 1e300, 0}, {"vllm_importance_sampling_mode", 0, 0, 4, 1},
     {"vllm_importance_sampling_min", 0, 0, 1e300, 0}, {"vllm_importance_sampling_cap", 3.0, 0, 1e300, 0}},
    0,
    check_grpo,
    build_grpo,
};


/* ------------------------------------------- helpers outside the program */

mel_status mel_grpo_weights(mel_ctx *ctx, mel_grpo_loss_type type, int64_t B, int64_t T,
                            const double *mask, int64_t max_completion_length,
                            double num_items_in_batch, int64_t grad_accum, double *w)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (!mask || !w)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_grpo_weights: %s is NULL", !mask ? "mask" : "w");
    if (B < 1 || T < 1)
        return mel_fail(ctx, MEL_ERR_SHAPE, "mel_grpo_weights: B = %lld, T = %lld must be >= 1",
                        (long long)B, (long long)T);
    int64_t BT;
    if (!mel_mul_ok(B, T, &BT) || !mel_mul_ok(BT, (int64_t)sizeof(double), &BT))
        return mel_fail(ctx, MEL_ERR_OVERFLOW, "mel_grpo_weights: B·T = %lld·%lld overflows",
                        (long long)B, (long long)T);
    if (grad_accum < 1)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_grpo_weights: grad_accum = %lld must be >= 1",
                        (long long)grad_accum);
    if ((unsigned)type > MEL_GRPO_SAPO)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_grpo_weights: loss type %d is not a mel_grpo_loss_type",
                        (int)type);
    if (type == MEL_GRPO_DR_GRPO && max_completion_length < 1)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_grpo_weights: max_completion_length = %lld must be >= 1 for dr_grpo",
                        (long long)max_completion_length);
    if (!(num_items_in_batch >= 0) || !isfinite(num_items_in_batch))
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_grpo_weights: num_items_in_batch = %g is invalid",
                        num_items_in_batch);
    double total = 0;
    for (int64_t i = 0; i < B * T; i++) {
        if (!isfinite(mask[i]))
            return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_INPUT, -1, "mask", i, -1,
                                "mel_grpo_weights: mask[%lld] = %g is not finite", (long long)i, mask[i]);
        total += mask[i];
    }
    for (int64_t b = 0; b < B; b++) {
        double seq = 0;
        for (int64_t t = 0; t < T; t++) seq += mask[b * T + t];
        for (int64_t t = 0; t < T; t++) {
            double m = mask[b * T + t], v = 0;
            switch (type) {
            case MEL_GRPO_GRPO: v = m / fmax(seq, 1.0) / (double)B / (double)grad_accum; break;
            case MEL_GRPO_BNPO: v = m / fmax(total, 1.0) / (double)grad_accum; break;
            case MEL_GRPO_DR_GRPO: v = m / ((double)B * (double)max_completion_length) / (double)grad_accum; break;
            case MEL_GRPO_DAPO:
            case MEL_GRPO_CISPO: v = m / fmax(num_items_in_batch > 0 ? num_items_in_batch : total, 1.0); break;
            case MEL_GRPO_SAPO: v = m / fmax(seq, 1.0) / (double)B / (double)grad_accum; break;
            }
            w[b * T + t] = v;
        }
    }
    return MEL_OK;
}

mel_status mel_group_advantages(mel_ctx *ctx, const double *rewards, int64_t n, int64_t group,
                                int scale, double *adv)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (!rewards || !adv)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_group_advantages: %s is NULL",
                        !rewards ? "rewards" : "adv");
    if (group < 1 || n < 0 || n % group)
        return mel_fail(ctx, MEL_ERR_SHAPE, "mel_group_advantages: n = %lld is not a positive multiple of group = %lld",
                        (long long)n, (long long)group);
    if (n > INT64_MAX / (int64_t)sizeof(double))
        return mel_fail(ctx, MEL_ERR_OVERFLOW, "mel_group_advantages: n = %lld doubles overflow int64 bytes",
                        (long long)n);
    if (scale && group < 2)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "mel_group_advantages: group = %lld has no standard deviation; use group >= 2 "
                        "or scale = 0", (long long)group);
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        double mean = 0, var = 0;
        for (int64_t i = g0; i < g0 + group; i++) mean += rewards[i];
        mean /= (double)group;
        for (int64_t i = g0; i < g0 + group; i++) var += (rewards[i] - mean) * (rewards[i] - mean);
        double sd = group > 1 ? sqrt(var / (double)(group - 1)) : NAN; /* Bessel, as torch.std */
        for (int64_t i = g0; i < g0 + group; i++)
            adv[i] = scale ? (rewards[i] - mean) / (sd + 1e-4) : rewards[i] - mean;
    }
    return MEL_OK;
}

/* ------------------------------------------------- words, the loss-type policy */

/* The one table of parameter words (mel_param_word). */
static const struct {
    const char *param, *word;
    double value;
} param_words[] = {
    {"loss_type", "grpo", MEL_GRPO_GRPO},
    {"loss_type", "bnpo", MEL_GRPO_BNPO},
    {"loss_type", "dr_grpo", MEL_GRPO_DR_GRPO},
    {"loss_type", "dapo", MEL_GRPO_DAPO},
    {"loss_type", "cispo", MEL_GRPO_CISPO},
    {"loss_type", "sapo", MEL_GRPO_SAPO},
    {"importance_sampling_level", "token", 0},
    {"importance_sampling_level", "sequence", 1},
};

const char *mel_param_word(const char *param, int i, double *value)
{
    if (!param || i < 0) return NULL;
    for (size_t k = 0; k < sizeof param_words / sizeof param_words[0]; k++)
        if (!strcmp(param_words[k].param, param) && i-- == 0) {
            if (value) *value = param_words[k].value;
            return param_words[k].word;
        }
    return NULL;
}

/* "dapo" for loss_type 3 (the number when it has no word) */
static const char *loss_word(double v, char *buf, size_t n)
{
    double x;
    for (int i = 0; mel_param_word("loss_type", i, &x); i++)
        if (x == v) return mel_param_word("loss_type", i, NULL);
    snprintf(buf, n, "%g", v);
    return buf;
}

/* parameter `name` of p, else the grpo built-in's default */
static double grpo_param(const mel_params *p, const char *name)
{
    double v;
    if (p && mel_params_get(p, name, &v)) return v;
    for (int k = 0; k < MEL_BUILTIN_MAXP && mel_builtin_grpo.params[k].name; k++)
        if (!strcmp(mel_builtin_grpo.params[k].name, name)) return mel_builtin_grpo.params[k].dflt;
    return 0;
}

mel_status mel_grpo_loss_weights(mel_ctx *ctx, const mel_params *p, int64_t N, const double *mask,
                                 const void *labels, mel_dtype labels_dtype, int64_t grad_accum, double *w)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    mel_clear_error(ctx);
    char lw[32];
    const double lt = grpo_param(p, "loss_type"), T = grpo_param(p, "seq_len");
    if (!(lt >= 0 && lt <= MEL_GRPO_SAPO && lt == floor(lt)))
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "loss_type", -1, -1,
                            "loss_type = %g is not a loss type (grpo 0, bnpo 1, dr_grpo 2, dapo 3, cispo 4, "
                            "sapo 5)", lt);
    const char *ltw = loss_word(lt, lw, sizeof lw);
    if (p && mel_params_get(p, "max_completion_length", NULL) && lt != MEL_GRPO_DR_GRPO)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "max_completion_length", -1, -1,
                            "max_completion_length and loss_type = %s: only loss_type dr_grpo divides by "
                            "max_completion_length", ltw);
    if (p && mel_params_get(p, "num_items_in_batch", NULL) && lt != MEL_GRPO_DAPO && lt != MEL_GRPO_CISPO)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "num_items_in_batch", -1, -1,
                            "num_items_in_batch and loss_type = %s: only loss_types dapo and cispo divide by "
                            "num_items_in_batch", ltw);
    if (!(T >= 1) || T != floor(T))
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "seq_len", -1, -1,
                            "seq_len = %g: the loss type's weights need the completion length T >= 1 (the "
                            "rows are B·T tokens, B sequences of T)", T);
    if (N < 1 || N % (int64_t)T)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_PARAM, -1, "seq_len", -1, -1,
                            "seq_len = %g: N = %lld rows is not a positive multiple of it", T, (long long)N);
    if (!mask)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_INPUT, -1, "mask", -1, -1,
                            "mask is NULL: the loss type's weights need the completion mask");
    if (labels && labels_dtype != MEL_I32 && labels_dtype != MEL_I64)
        return mel_fail_arg(ctx, MEL_ERR_INVALID_ARGUMENT, MEL_ARG_INDEX, -1, "labels", -1, -1,
                            "labels: dtype %s is not i32 or i64", mel_dtype_name(labels_dtype));
    if (!w) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_grpo_loss_weights: w is NULL");
    double *eff = malloc((size_t)N * sizeof *eff);
    if (!eff) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_grpo_loss_weights: out of memory");
    const double ign = grpo_param(p, "ignore_index");
    for (int64_t i = 0; i < N; i++) {
        const int64_t l = !labels ? 0 : labels_dtype == MEL_I32 ? ((const int32_t *)labels)[i]
                                                                : ((const int64_t *)labels)[i];
        eff[i] = labels && (double)l == ign ? 0.0 : mask[i];
    }
    mel_status s = mel_grpo_weights(ctx, (mel_grpo_loss_type)lt, N / (int64_t)T, (int64_t)T, eff,
                                    (int64_t)grpo_param(p, "max_completion_length"),
                                    grpo_param(p, "num_items_in_batch"), grad_accum, w);
    free(eff);
    return s;
}
