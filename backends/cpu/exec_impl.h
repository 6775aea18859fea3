/* The CPU row-program executor, instantiated for one real type.
 * Include with T (float or double) and FN(name) defined. */

/* FEXP / FTANH: the vectorisable float versions for float, libm for the
 * fp64 reference path. */
#undef FEXP
#undef FTANH
#define FEXP(x) (sizeof(T) == 4 ? (T)mel_expf((float)(x)) : (T)exp((double)(x)))
#define FTANH(x) (sizeof(T) == 4 ? (T)mel_tanhf((float)(x)) : (T)tanh((double)(x)))

/* Run positions [p0, p1) (phase q) of plan p for row r of the chunk.
 * Vectors live in `scr` (n_slots × V) or, for logits, in the chunk's Z
 * rows; s / iv are the row's scalar and index registers (persisting across
 * phases), vp the thread's vector pointers.  The chunk holds columns
 * [v_off, v_off + V) of v_total: index inputs and iota are global column
 * ids, reductions cover the chunk's columns (combined across processes at
 * the barriers of a vsplit plan, lib/vocab.c). */
MEL_CLONES static void FN(run_row)(const mel_transform *t, const mel_plan *p, int q, int p0, int p1,
                        const mel_chunk *ch, int64_t r, T *scr, T *s, int64_t *iv, T **vp)
{
    const int64_t V = ch->V, off = ch->v_off;
    const int64_t row = ch->r0 + r;
    for (int pos = p0; pos < p1; pos++) {
        const int i = p->order[pos];
        const mel_node *nd = &t->nodes[i];
        const int a = nd->a, b = nd->b, c = nd->c;
        const int vec = nd->kind == K_VEC;
        T *o = NULL;
        if (vec && nd->op != OP_LOGITS) o = scr + (int64_t)p->pslot[pos] * V;
        const T *A = a >= 0 && t->nodes[a].kind == K_VEC ? vp[a] : NULL;
        const T *B = b >= 0 && t->nodes[b].kind == K_VEC ? vp[b] : NULL;
        switch ((mel_op)nd->op) {
        case OP_LOGITS:
            vp[i] = (T *)ch->Z[nd->head] + r * V;
            continue;
        case OP_INDEX: {
            const void *d = ch->idx[nd->slot];
            iv[i] = ch->idx_dtype[nd->slot] == MEL_I32 ? ((const int32_t *)d)[row]
                                                       : ((const int64_t *)d)[row];
            continue;
        }
        case OP_INPUT: {
            const void *d = ch->inp[nd->slot];
            s[i] = ch->inp_dtype[nd->slot] == MEL_F32 ? (T)((const float *)d)[row]
                                                      : (T)((const double *)d)[row];
            continue;
        }
        case OP_CONST: s[i] = (T)nd->cval; continue;
        case OP_VOCAB: s[i] = (T)ch->v_total; continue;
        case OP_IOTA:
            for (int64_t j = 0; j < V; j++) o[j] = (T)(off + j);
            break;
        case OP_SEED: s[i] = (T)ch->seed[r]; continue;

#define UNARY(X, EXPR)                                                       \
    if (vec) {                                                               \
        _Pragma("omp simd") for (int64_t j = 0; j < V; j++) {                \
            const T X = A[j];                                                \
            o[j] = (EXPR);                                                   \
        }                                                                    \
    } else {                                                                 \
        const T X = s[a];                                                    \
        s[i] = (EXPR);                                                       \
    }                                                                        \
    break;
        case OP_NEG: UNARY(x, -x)
        case OP_EXP: UNARY(x, FEXP(x))
        case OP_LOG: UNARY(x, log(x))
        case OP_TANH: UNARY(x, FTANH(x))
        case OP_SIGMOID: UNARY(x, (T)1 / ((T)1 + FEXP(-x)))
        case OP_SQUARE: UNARY(x, x * x)
        case OP_SQRT: UNARY(x, sqrt(x))
        case OP_LOG1P: UNARY(x, log1p(x))
        case OP_ABS: UNARY(x, fabs(x))
        case OP_SIGN: UNARY(x, (T)((x > 0) - (x < 0)))
#undef UNARY

#define BINARY(EXPR)                                                         \
    if (!vec) {                                                              \
        const T x = s[a], y = s[b];                                          \
        s[i] = (EXPR);                                                       \
    } else if (A && B) {                                                     \
        _Pragma("omp simd") for (int64_t j = 0; j < V; j++) {                \
            const T x = A[j], y = B[j];                                      \
            o[j] = (EXPR);                                                   \
        }                                                                    \
    } else if (A) {                                                          \
        const T y = s[b];                                                    \
        _Pragma("omp simd") for (int64_t j = 0; j < V; j++) {                \
            const T x = A[j];                                                \
            o[j] = (EXPR);                                                   \
        }                                                                    \
    } else {                                                                 \
        const T x = s[a];                                                    \
        _Pragma("omp simd") for (int64_t j = 0; j < V; j++) {                \
            const T y = B[j];                                                \
            o[j] = (EXPR);                                                   \
        }                                                                    \
    }                                                                        \
    break;
        case OP_ADD: BINARY(x + y)
        case OP_SUB: BINARY(x - y)
        case OP_MUL: BINARY(x * y)
        case OP_DIV: BINARY(x / y)
        /* min/max propagate NaN like the naive computation would */
        case OP_MIN: BINARY((x != x || y != y) ? x + y : (x <= y ? x : y))
        case OP_MAX: BINARY((x != x || y != y) ? x + y : (x >= y ? x : y))
        case OP_LT: BINARY((T)(x < y))
        case OP_LE: BINARY((T)(x <= y))
        case OP_EQ: BINARY((T)(x == y))
#undef BINARY

        case OP_WHERE: {
            const T *Cv = c >= 0 && t->nodes[c].kind == K_VEC ? vp[c] : NULL;
            if (!vec) {
                s[i] = s[a] != 0 ? s[b] : s[c];
            } else {
                const T sa = A ? 0 : s[a], sb = B ? 0 : s[b], sc = Cv ? 0 : s[c];
                for (int64_t j = 0; j < V; j++) {
                    const T cond = A ? A[j] : sa;
                    o[j] = cond != 0 ? (B ? B[j] : sb) : (Cv ? Cv[j] : sc);
                }
            }
            break;
        }
        case OP_SUM:
        case OP_MEAN: {
            double acc = 0;
            _Pragma("omp simd reduction(+:acc)") for (int64_t j = 0; j < V; j++) acc += A[j];
            s[i] = (T)(nd->op == OP_MEAN ? acc / (double)ch->v_total : acc);
            break;
        }
        case OP_RMAX: {
            T m = A[0];
            for (int64_t j = 1; j < V; j++)
                if (A[j] > m || A[j] != A[j]) m = A[j];
            s[i] = m;
            break;
        }
        case OP_LSE: {
            T m = A[0];
            int has_nan = 0;
            for (int64_t j = 0; j < V; j++) {
                if (A[j] > m) m = A[j];
                has_nan |= A[j] != A[j];
            }
            if (has_nan) {
                s[i] = (T)NAN;
            } else if (isinf(m)) {
                s[i] = m; /* +inf, or -inf when every entry is -inf */
            } else {
                double acc = 0;
                _Pragma("omp simd reduction(+:acc)") for (int64_t j = 0; j < V; j++)
                    acc += FEXP(A[j] - m);
                s[i] = (T)(m + log(acc));
            }
            break;
        }
        case OP_GATHER: {
            const int64_t k = iv[b];
            const int64_t ig = t->inputs[t->nodes[b].slot].ignore_index;
            s[i] = k == ig || k < off || k >= off + V ? (T)0 : A[k - off];
            break;
        }
        case OP_VALID:
            s[i] = iv[a] != t->inputs[t->nodes[a].slot].ignore_index ? (T)1 : (T)0;
            break;
        case OP_ONEHOT: {
            const int64_t k = iv[a];
            memset(o, 0, (size_t)V * sizeof(T));
            if (k != t->inputs[t->nodes[a].slot].ignore_index && k >= off && k < off + V) o[k - off] = 1;
            break;
        }
        case OP_ARGMAXMASK: {
            if (p->vsplit && q == p->phase_of[i]) {
                /* this shard's part: the first maximum of the non-NaN
                 * entries (value in s, global column in iv; -1: none), or
                 * -2 when global column 0 is here and NaN (the scan below
                 * then stays at 0) */
                int64_t k = -1;
                for (int64_t j = 0; j < V; j++)
                    if (A[j] == A[j] && (k < 0 || A[j] > A[k])) k = j;
                s[i] = k >= 0 ? A[k] : (T)0;
                iv[i] = off == 0 && A[0] != A[0] ? -2 : k >= 0 ? off + k : -1;
                continue;
            }
            if (p->vsplit) { /* rebuilt from the combined column */
                memset(o, 0, (size_t)V * sizeof(T));
                if (iv[i] >= off && iv[i] < off + V) o[iv[i] - off] = 1;
                break;
            }
            int64_t k = 0;
            for (int64_t j = 1; j < V; j++)
                if (A[j] > A[k]) k = j;
            memset(o, 0, (size_t)V * sizeof(T));
            o[k] = 1;
            break;
        }
        case OP_BCAST: {
            const T x = s[a];
            for (int64_t j = 0; j < V; j++) o[j] = x;
            break;
        }
        case OP_STOPGRAD:
            if (vec) memcpy(o, A, (size_t)V * sizeof(T));
            else s[i] = s[a];
            break;
        case OP_SEQINFO: /* the layout's flags of this row (engine) */
            s[i] = ch->seq_info ? (T)ch->seq_info[r * MEL_SEQINFO_N + nd->slot] : (T)0;
            continue;
        case OP_SEGSUM: /* computed at the phase barrier */
        case OP__COUNT:
            break;
        }
        if (vec) vp[i] = o;
    }
}

/* dZ is read by the dX and dW GEMMs: entries whose magnitude is below the
 * smallest normal number of T are stored as zero.  x86 cores take a
 * microcode assist on every subnormal operand of a multiply, so a dZ full
 * of them (the softmax tail of wide logits times a small upstream
 * gradient) made those GEMMs 13x slower.  Flushing the values, not the
 * processor's FTZ/DAZ flags, leaves the caller's floating-point
 * environment and OpenBLAS's threads alone.  NaN and ±inf pass through. */
MEL_CLONES static void FN(store_dz)(T *dz, const T *g, int64_t V)
{
    const T tiny = sizeof(T) == 4 ? (T)FLT_MIN : (T)DBL_MIN;
    _Pragma("omp simd") for (int64_t j = 0; j < V; j++) {
        const T x = g[j];
        dz[j] = (x < tiny && x > -tiny) ? (T)0 : x;
    }
}

/* Phase q of plan p over every row of the chunk (no barrier inside: lib
 * crosses them, lib/program.c).  The last phase writes the chunk's
 * outputs; for a MEL_PLAN_FB plan also the input gradients and dZ over Z. */
static mel_status FN(run_phase)(const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch)
{
    const int64_t V = ch->V;
    const int64_t R = ch->R;
    const int n = t->n;
    const int nthreads = ch->threads;
    const int fb = p->kind == MEL_PLAN_FB;
    T *regs = (T *)ch->regs;
    int64_t *iregs = ch->iregs;
    const int p0 = p->phase_start[q], p1 = p->phase_start[q + 1];
    const int final = q == p->n_phases - 1;
#pragma omp parallel num_threads(nthreads)
    {
        int tid = omp_get_thread_num();
        char *base = (char *)ch->scratch + (int64_t)tid * ch->scratch_per_thread;
        T *scr = (T *)base;
        T **vp = (T **)(base + mel_scratch_vp_offset(p->n_slots, V, sizeof(T)));
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            T *s = regs + r * n;
            int64_t *iv = iregs + r * n;
            FN(run_row)(t, p, q, p0, p1, ch, r, scr, s, iv, vp);
            if (!final) continue;
            if (ch->y) ch->y[r] = (double)s[t->out];
            if (ch->count) ch->count[r] = t->count >= 0 ? (double)s[t->count] : 1.0;
            for (int k = 0; k < t->n_aux; k++)
                if (ch->aux[k]) ch->aux[k][r] = (double)s[t->aux[k]];
            if (!fb) continue;
            for (int k = 0; k < t->n_inputs; k++)
                if (ch->ginp[k])
                    ch->ginp[k][r] = t->adj_input[k] >= 0 ? (double)s[t->adj_input[k]] : 0.0;
            for (int h = 0; h < t->n_heads; h++) {
                if (!t->head_diff[h] || !ch->Z[h]) continue;
                T *dz = (T *)ch->Z[h] + r * V; /* dZ overwrites this row's logits */
                if (t->adj_head[h] >= 0) FN(store_dz)(dz, vp[t->adj_head[h]], V);
                else memset(dz, 0, (size_t)V * sizeof(T));
            }
        }
    }
    return MEL_OK;
}

/* The sequence and group sums that open phase q: each OP_SEGSUM node of
 * the phase (level: its slot) gets, in every row of a sequence or group of
 * the chunk, the sum of its operand over those rows, accumulated in double
 * in ascending row order (the chunk's lists, lib/layout.c: the same order
 * for every chunk size and thread count); a row in none gets 0.  Returns
 * the level whose lists the chunk lacks, or -1. */
static int FN(merge_segments)(const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch)
{
    const int n = t->n;
    const int64_t R = ch->R;
    T *regs = (T *)ch->regs;
    for (int pos = p->phase_start[q]; pos < p->phase_start[q + 1]; pos++) {
        const int i = p->order[pos];
        if (t->nodes[i].op != OP_SEGSUM) continue;
        const int a = t->nodes[i].a, L = t->nodes[i].slot;
        const int64_t *off = ch->seg_off[L], *rows = ch->seg_row[L];
        if (!off) return L;
        for (int64_t r = 0; r < R; r++) regs[r * n + i] = 0;
        for (int64_t k = 0; k < ch->n_seg[L]; k++) {
            double acc = 0;
            for (int64_t j = off[k]; j < off[k + 1]; j++) acc += (double)regs[rows[j] * n + a];
            for (int64_t j = off[k]; j < off[k + 1]; j++) regs[rows[j] * n + i] = (T)acc;
        }
    }
    return -1;
}
