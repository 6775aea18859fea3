/* Shared helpers of the libFuzzer harnesses (fuzz/fuzz_*.c): a reader that
 * turns the fuzzer's bytes into choices.  Reading past the end yields zeros,
 * so every input, even the empty one, is a complete program. */
#ifndef MEL_FUZZ_COMMON_H
#define MEL_FUZZ_COMMON_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct fz {
    const uint8_t *p;
    size_t n, i;
} fz;

static inline void fz_init(fz *f, const uint8_t *p, size_t n)
{
    f->p = p;
    f->n = n;
    f->i = 0;
}
static inline int fz_more(const fz *f) { return f->i < f->n; }
static inline unsigned fz_u8(fz *f) { return f->i < f->n ? f->p[f->i++] : 0u; }
static inline unsigned fz_u16(fz *f) { return fz_u8(f) | fz_u8(f) << 8; }
static inline uint64_t fz_u64(fz *f)
{
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) v |= (uint64_t)fz_u8(f) << (8 * k);
    return v;
}
/* An integer in [lo, hi] (inclusive). */
static inline int64_t fz_range(fz *f, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(fz_u16(f) % span);
}
/* A double: mostly ordinary values, sometimes the awkward ones. */
static inline double fz_double(fz *f)
{
    static const double special[16] = {0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-300, -1e-300,
                                       1e300, -1e300, 88.0, -88.0, 1e30, 3.0, NAN, INFINITY};
    unsigned k = fz_u8(f);
    if (k < 128) return special[k % 16] * ((k & 16) ? -1 : 1);
    if (k < 240) return ((double)(int)fz_u16(f) - 32768.0) / 1024.0;
    uint64_t bits = fz_u64(f);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}
/* A size: mostly small and valid, sometimes zero, negative or huge. */
static inline int64_t fz_size(fz *f, int64_t max)
{
    unsigned k = fz_u8(f);
    if (k < 200) return (int64_t)(k % (unsigned)(max + 1));
    switch (k % 8) {
    case 0: return -1;
    case 1: return -(int64_t)fz_u16(f);
    case 2: return INT64_MAX;
    case 3: return INT64_MIN;
    case 4: return (int64_t)1 << 31;
    case 5: return ((int64_t)1 << 32) + 1;
    case 6: return (int64_t)fz_u64(f);
    default: return max + 1;
    }
}
#endif
