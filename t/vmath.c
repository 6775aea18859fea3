/* The CPU executor's vectorisable expf / tanhf against double precision
 * libm over the whole float range, and their special values. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "tap.h"
#include "cpu/vmath.h"

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
    return done_testing();
}
