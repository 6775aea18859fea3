/* The merge rules of partial reductions: one row's reduction computed on
 * parts of the vocabulary (the tiles of the tiled executor, each process's
 * shard under vocabulary parallelism), merged part by part in a fixed
 * order (column order, rank order), so that results are deterministic.
 * Every rule lives here once.
 *
 * A merge state is MEL_MERGE_STATE doubles:
 *   sum, mean, gather  [0] Σ of the parts
 *   rmax               [0] the maximum; NaN wins
 *   logsumexp          [0] the largest finite part m, [1] Σ exp(part − m),
 *                      [2] 1 when a part was NaN, [3] 1 when a part was +inf
 *   argmaxmask         [0] the best value, [1] its global column (−1: none
 *                      yet), [2] 1 when global column 0 is NaN (it wins)
 * A part of argmaxmask comes with its column: −1 when the part has no
 * non-NaN entry, −2 when the part holds column 0 and it is NaN. */
#include <math.h>

#include "mel_internal.h"

void mel_merge_init(int op, double *st)
{
    st[0] = op == OP_RMAX || op == OP_LSE ? -INFINITY : 0;
    st[1] = op == OP_ARGMAXMASK ? -1 : 0;
    st[2] = st[3] = 0;
}

void mel_merge_step(int op, double *st, double x, int64_t col)
{
    switch ((mel_op)op) {
    case OP_RMAX:
        if (st[0] == st[0] && (x > st[0] || x != x)) st[0] = x;
        break;
    case OP_LSE:
        if (x != x) st[2] = 1;
        else if (x == INFINITY) st[3] = 1;
        else if (x == -INFINITY) break;
        else if (st[0] == -INFINITY) st[0] = x, st[1] = 1;
        else if (x > st[0]) st[1] = st[1] * exp(st[0] - x) + 1, st[0] = x;
        else st[1] += exp(x - st[0]);
        break;
    case OP_ARGMAXMASK:
        if (col == -2) st[2] = 1;
        if (col >= 0 && (st[1] < 0 || x > st[0])) st[0] = x, st[1] = (double)col;
        break;
    default: /* sum, mean, gather */
        st[0] += x;
        break;
    }
}

double mel_merge_final(int op, const double *st, int64_t *col)
{
    switch ((mel_op)op) {
    case OP_LSE:
        if (st[2]) return NAN;
        if (st[3]) return INFINITY;
        return st[0] == -INFINITY ? -INFINITY : st[0] + log(st[1]);
    case OP_ARGMAXMASK:
        if (col) *col = st[2] || st[1] < 0 ? 0 : (int64_t)st[1];
        return st[0];
    default:
        return st[0];
    }
}

double mel_merge_partials(int op, const double *v, int64_t stride, int K, int64_t *col)
{
    double st[MEL_MERGE_STATE];
    mel_merge_init(op, st);
    for (int j = 0; j < K; j++)
        mel_merge_step(op, st, v[(int64_t)j * stride], op == OP_ARGMAXMASK ? (int64_t)v[(int64_t)j * stride + 1] : 0);
    return mel_merge_final(op, st, col);
}
