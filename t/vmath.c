/* The CPU executor's vectorisable expf / tanhf against double precision
 * libm over the whole float range, and their special values. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "cpu/vmath.h"
#include "half.h"

int main(void)
{
    double worst_e = 0, worst_t = 0;
    float at_e = 0, at_t = 0;
    /* every 97th float bit pattern between -88 and 88.7 (plus tanh on ±20) */
    for (uint32_t bits = 0; bits < 0x7f800000u; bits += 97) {
        float a;
        memcpy(&a, &bits, 4);
        for (int sgn = 0; sgn < 2; sgn++) {
            float x = sgn ? -a : a;
            if (x > -86.5f && x < 88.72f) {
                double want = exp((double)x), got = mel_expf(x);
                double e = fabs(got - want) / want;
                if (e > worst_e) worst_e = e, at_e = x;
            }
            if (fabs(x) < 20) {
                double want = tanh((double)x), got = mel_tanhf(x);
                double e = want != 0 ? fabs(got - want) / fabs(want) : fabs(got);
                if (e > worst_t) worst_t = e, at_t = x;
            }
        }
    }
    ok(worst_e < 4e-7, "mel_expf max relative error %.3g (at x = %.9g)", worst_e, at_e);
    ok(worst_t < 4e-7, "mel_tanhf max relative error %.3g (at x = %.9g)", worst_t, at_t);
    ok(isnan(mel_expf(NAN)) && isnan(mel_tanhf(NAN)), "NaN propagates");
    ok(mel_expf(INFINITY) == INFINITY && mel_expf(100.f) == INFINITY, "exp overflows to +inf");
    ok(mel_expf(-INFINITY) == 0 && mel_expf(-1000.f) == 0, "exp underflows to 0");
    ok(mel_expf(0) == 1.0f, "exp(0) = 1 exactly");
    ok(mel_tanhf(INFINITY) == 1 && mel_tanhf(-INFINITY) == -1 && mel_tanhf(0) == 0, "tanh(±inf) = ±1, tanh(0) = 0");
    /* 16-bit conversions: bf16 exact widening and rounding; f16 against the
     * compiler's _Float16 (an independent implementation) where it exists */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = mel_bf16_to_f32((uint16_t)h);
        uint32_t u;
        memcpy(&u, &f, 4);
        bad += u != h << 16;
        if (f == f) bad += mel_f32_to_bf16(f) != h;
    }
    ok(bad == 0, "bf16: every value widens exactly and narrows back (%d mismatches)", bad);
    ok(mel_f32_to_bf16(1.00390625f) == 0x3f80 && mel_f32_to_bf16(1.01171875f) == 0x3f82,
       "bf16 rounds to nearest even at ties");
#ifdef __FLT16_MAX__
    bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 x;
        uint16_t hh = (uint16_t)h;
        memcpy(&x, &hh, 2);
        float want = (float)x, got = mel_f16_to_f32(hh);
        if (!(want == got || (want != want && got != got))) bad++;
    }
    ok(bad == 0, "f16 -> f32: all 65536 values equal _Float16's (%d mismatches)", bad);
    bad = 0;
    tap_rng rng;
    rng_seed(&rng, 5);
    for (int k = 0; k < 2000000; k++) {
        uint32_t u = (uint32_t)rng_u64(&rng);
        if (k < 65536) u = ((uint32_t)k << 13) ^ (uint32_t)(rng_u64(&rng) & 0x1fffu); /* near every f16 */
        float f;
        memcpy(&f, &u, 4);
        _Float16 x = (_Float16)f;
        uint16_t want, got = mel_f32_to_f16(f);
        memcpy(&want, &x, 2);
        if (f != f) bad += (got & 0x7c00u) != 0x7c00u || !(got & 0x3ffu);
        else bad += want != got;
    }
    ok(bad == 0, "f32 -> f16: 2e6 values (every f16 neighbourhood, random bits) equal _Float16's rounding (%d mismatches)", bad);
#else
    skip("the compiler has no _Float16 to compare the f16 conversions with");
    skip("the compiler has no _Float16 to compare the f16 conversions with");
#endif
    return done_testing();
}
