/* Minimal TAP producer for libmel's tests (automake tap-driver.sh). */
#ifndef MEL_TAP_H
#define MEL_TAP_H
#include <stdint.h>

void plan(int n);                        /* "1..n" up front (optional)      */
void skip_all(const char *reason);       /* "1..0 # SKIP reason", exit(0)   */
int ok(int cond, const char *fmt, ...)   /* returns cond                   */
    __attribute__((format(printf, 2, 3)));
void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void skip(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* |got − want| <= atol + rtol·|want|; NaN never passes (unless both NaN
 * and want_nan_ok).  Prints both numbers on failure. */
int is_close(double got, double want, double atol, double rtol,
             const char *fmt, ...) __attribute__((format(printf, 5, 6)));
int is_int(long long got, long long want, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints the trailing plan when none was given; returns the exit status
 * (non-zero when any test failed). */
int done_testing(void);
int tap_failures(void);

/* Deterministic random numbers (splitmix64 / xoshiro-like), seeded. */
typedef struct { uint64_t s; } tap_rng;
void rng_seed(tap_rng *r, uint64_t seed);
uint64_t rng_u64(tap_rng *r);
double rng_uniform(tap_rng *r);          /* [0, 1)           */
double rng_normal(tap_rng *r);           /* N(0, 1)          */
int64_t rng_int(tap_rng *r, int64_t n);  /* [0, n)           */
/* Seed from $MEL_TEST_SEED or the default; printed as a TAP comment. */
uint64_t test_seed(uint64_t dflt);
#endif
