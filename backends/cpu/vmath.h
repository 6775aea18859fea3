/* Vectorisable float exp and tanh for the CPU executor's loops over V.
 * glibc's expf is a scalar call per element; these are branch-free
 * polynomials the compiler turns into SIMD code inside `omp simd` loops.
 * Accuracy (measured in t/vmath.t against double exp/tanh): relative
 * error below 4e-7 over the whole float range.  NaN propagates, exp of a
 * large argument is +inf, exp below -86.5 (< 2.7e-38) flushes to 0 (no denormals). */
#ifndef MEL_VMATH_H
#define MEL_VMATH_H
#include <stdint.h>
#include <string.h>

static inline float mel_expf(float x)
{
    const float lo = -86.5f, hi = 88.75f;
    /* clamp (NaN to 0: the integer conversion below must see a number) */
    float xc = x != x ? 0.0f : (x < lo ? lo : (x > hi ? hi : x));
    /* x = n·ln2 + r, |r| <= ln2/2; ln2 split in two for an exact n·ln2_hi */
    float n = __builtin_floorf(xc * 1.44269504089f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    /* e^r on [-0.35, 0.35]: Taylor to degree 7 (truncation < 2e-8) */
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n = 2^(n−1)·2 so that n = 128 (x just below the overflow
     * threshold) stays representable until the final product */
    uint32_t e = (uint32_t)((int32_t)n + 126) << 23; /* n + 126 in [1, 254] */
    float s;
    memcpy(&s, &e, sizeof s);
    float y = (p * s) * 2.0f;
    y = x < lo ? 0.0f : y;
    y = x > hi ? __builtin_inff() : y;
    return x != x ? x : y;
}

/* tanh through exp away from 0, an odd polynomial near 0 (where
 * 1 − 2/(e^{2x}+1) would cancel). */
static inline float mel_tanhf(float x)
{
    float ax = x < 0 ? -x : x;
    float e = mel_expf(2.0f * ax);
    float big = 1.0f - 2.0f / (e + 1.0f);
    float x2 = ax * ax;
    float small = ax * (1.0f + x2 * (-1.0f / 3 + x2 * (2.0f / 15 + x2 * (-17.0f / 315 +
                       x2 * (62.0f / 2835 + x2 * (-1382.0f / 155925))))));
    float y = ax < 0.25f ? small : big;
    y = x < 0 ? -y : y;
    return x != x ? x : y;
}
#endif
