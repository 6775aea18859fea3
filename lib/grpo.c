/* GRPO helpers outside the row program: loss-type weights and
 * group-normalised advantages (formulas in doc/transforms.md). */
#include <math.h>
#include <stdlib.h>

#include "mel_internal.h"

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
    if ((unsigned)type > MEL_GRPO_DAPO)
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
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_grpo_weights: mask[%lld] = %g is not finite",
                            (long long)i, mask[i]);
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
            case MEL_GRPO_DAPO: v = m / fmax(num_items_in_batch > 0 ? num_items_in_batch : total, 1.0); break;
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
