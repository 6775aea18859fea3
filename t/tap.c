#include "tap.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int n_run, n_fail, planned;

void plan(int n) { printf("1..%d\n", n); planned = 1; fflush(stdout); }

void skip_all(const char *reason)
{
    printf("1..0 # SKIP %s\n", reason);
    fflush(stdout);
    exit(0);
}

static int vok(int cond, const char *fmt, va_list ap)
{
    n_run++;
    if (!cond) n_fail++;
    printf("%s %d - ", cond ? "ok" : "not ok", n_run);
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    return cond;
}

int ok(int cond, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vok(cond, fmt, ap);
    va_end(ap);
    return cond;
}

void diag(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

void skip(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    n_run++;
    printf("ok %d # SKIP ", n_run);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

int is_close(double got, double want, double atol, double rtol,
             const char *fmt, ...)
{
    double err = fabs(got - want);
    int cond = !isnan(got) && !isnan(want) && err <= atol + rtol * fabs(want);
    if (isinf(want) && got == want) cond = 1;
    va_list ap;
    va_start(ap, fmt);
    vok(cond, fmt, ap);
    va_end(ap);
    if (!cond)
        diag("  got %.17g, want %.17g, |err| %.3g > %.3g", got, want, err,
             atol + rtol * fabs(want));
    return cond;
}

int is_int(long long got, long long want, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vok(got == want, fmt, ap);
    va_end(ap);
    if (got != want) diag("  got %lld, want %lld", got, want);
    return got == want;
}

int tap_failures(void) { return n_fail; }

int done_testing(void)
{
    if (!planned) printf("1..%d\n", n_run);
    if (n_fail) printf("# %d of %d tests failed\n", n_fail, n_run);
    fflush(stdout);
    return n_fail ? 1 : 0;
}

void rng_seed(tap_rng *r, uint64_t seed) { r->s = seed * 0x9E3779B97F4A7C15ull + 1; }

uint64_t rng_u64(tap_rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double rng_uniform(tap_rng *r) { return (rng_u64(r) >> 11) * 0x1.0p-53; }

double rng_normal(tap_rng *r)
{
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

int64_t rng_int(tap_rng *r, int64_t n) { return (int64_t)(rng_u64(r) % (uint64_t)n); }

uint64_t test_seed(uint64_t dflt)
{
    const char *e = getenv("MEL_TEST_SEED");
    uint64_t s = e && *e ? strtoull(e, NULL, 0) : dflt;
    printf("# seed %llu (set MEL_TEST_SEED to change)\n", (unsigned long long)s);
    return s;
}
