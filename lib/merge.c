/* The merge rules of partial reductions: one row's reduction computed on
 * parts of the vocabulary (each process's shard under vocabulary
 * parallelism), merged in a fixed order so the result is deterministic.
 * Every rule lives here once; lib/vocab.c applies them across processes. */
#include <math.h>

#include "mel_internal.h"

double mel_merge_partials(int op, const double *v, int64_t stride, int K, int64_t *col)
{
    switch ((mel_op)op) {
    case OP_RMAX: { /* the maximum; NaN wins */
        double mx = v[0];
        for (int j = 1; j < K && mx == mx; j++) {
            const double x = v[(int64_t)j * stride];
            if (x > mx || x != x) mx = x;
        }
        return mx;
    }
    case OP_LSE: { /* log Σ_j exp(l_j), shifted by the largest part */
        double mx = -INFINITY;
        int nan = 0;
        for (int j = 0; j < K; j++) {
            const double x = v[(int64_t)j * stride];
            nan |= x != x;
            if (x > mx) mx = x;
        }
        if (nan) return NAN;
        if (!isfinite(mx)) return mx; /* +inf, or -inf when every part is -inf */
        double acc = 0;
        for (int j = 0; j < K; j++) acc += exp(v[(int64_t)j * stride] - mx);
        return mx + log(acc);
    }
    case OP_ARGMAXMASK: { /* the first maximum in column order; NaN at column 0 wins */
        int64_t best = -1;
        double bv = 0;
        int nan0 = 0;
        for (int j = 0; j < K; j++) {
            const double x = v[(int64_t)j * stride];
            const int64_t c = (int64_t)v[(int64_t)j * stride + 1];
            if (c == -2) nan0 = 1;
            if (c >= 0 && (best < 0 || x > bv)) best = c, bv = x;
        }
        if (col) *col = nan0 || best < 0 ? 0 : best;
        return bv;
    }
    default: { /* sum, mean, gather: Σ of the parts */
        double acc = 0;
        for (int j = 0; j < K; j++) acc += v[(int64_t)j * stride];
        return acc;
    }
    }
}
