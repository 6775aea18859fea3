/* The sequence layout of a call (doc/design.md, "Sequences and groups"):
 * every row's sequence, the cuts -- the row boundaries that no group
 * straddles, where chunks may end -- and, per chunk, the lists of the rows
 * of each sequence and group that the backends' merge_segments sum over
 * and the per-row flags of OP_SEQINFO. */
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static int cmp_pair(const void *x, const void *y)
{
    const int64_t *p = x, *q = y;
    return p[0] < q[0] ? -1 : p[0] > q[0] ? 1 : p[1] < q[1] ? -1 : p[1] > q[1];
}

void eng_free_layout(call *c)
{
    free(c->skey);
    free(c->cuts);
    c->skey = c->cuts = NULL;
}

mel_status eng_check_layout(mel_ctx *ctx, const mel_transform *t, call *c)
{
    c->min_rows = 1;
    if (!mel_has_layout(t) || c->N == 0) return MEL_OK;
    const int64_t N = c->N, G = t->group;
    const mel_bound *b = t->seq_ids >= 0 ? c->idx[t->seq_ids] : NULL;
    if (t->seq_ids >= 0 && !b)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                        "transform '%s': the sequence ids '%s' must be bound to plan its chunks (each chunk "
                        "holds whole groups)", t->name, t->inputs[t->seq_ids].name);
    c->skey = malloc((size_t)N * sizeof *c->skey);
    c->cuts = malloc((size_t)(N + 1) * sizeof *c->cuts);
    int64_t *pairs = malloc((size_t)N * 2 * sizeof *pairs);
    int32_t *open = calloc((size_t)N + 2, sizeof *open);
    mel_status s = MEL_OK;
    if (!c->skey || !c->cuts || !pairs || !open)
        s = mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory reading the sequence layout of %lld rows",
                     (long long)N);
    const void *hv = NULL;
    void *tmp = NULL;
    if (s == MEL_OK && b) s = eng_host_view(ctx, b->data, (size_t)N * mel_dtype_size(b->dtype), &hv, &tmp);
    int64_t np = 0;
    for (int64_t i = 0; i < N && s == MEL_OK; i++) {
        int64_t v = t->seg_len > 0 ? i / t->seg_len
                    : b->dtype == MEL_I32 ? ((const int32_t *)hv)[i] : ((const int64_t *)hv)[i];
        if (v < -1)
            s = mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                         "%s[%lld] = %lld: a sequence id is >= 0, or -1 for a row in no sequence",
                         t->inputs[t->seq_ids].name, (long long)i, (long long)v);
        c->skey[i] = v;
        if (v >= 0) pairs[2 * np] = v / G, pairs[2 * np + 1] = i, np++;
    }
    free(tmp);
    if (s == MEL_OK) {
        /* a group whose rows span [lo, hi] forbids the cuts lo+1 .. hi */
        qsort(pairs, (size_t)np, 2 * sizeof *pairs, cmp_pair);
        for (int64_t k = 0; k < np;) {
            int64_t e = k;
            while (e + 1 < np && pairs[2 * (e + 1)] == pairs[2 * k]) e++;
            open[pairs[2 * k + 1] + 1]++;
            open[pairs[2 * e + 1] + 1]--;
            k = e + 1;
        }
        int64_t depth = 0, last = 0;
        c->n_cuts = 0;
        c->cuts[c->n_cuts++] = 0;
        for (int64_t r = 1; r <= N; r++) {
            depth += open[r];
            if (depth == 0 || r == N) {
                if (r - last > c->min_rows) c->min_rows = r - last;
                c->cuts[c->n_cuts++] = r;
                last = r;
            }
        }
    }
    free(pairs);
    free(open);
    if (s) eng_free_layout(c);
    return s;
}

int64_t eng_chunk_end(const call *c, int64_t r0, int64_t Rmax)
{
    int64_t want = r0 + Rmax < c->N ? r0 + Rmax : c->N;
    if (!c->cuts) return want;
    int64_t lo = 0, hi = c->n_cuts - 1; /* the largest cut <= want */
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2;
        if (c->cuts[mid] <= want) lo = mid;
        else hi = mid - 1;
    }
    if (c->cuts[lo] > r0) return c->cuts[lo];
    return lo + 1 < c->n_cuts ? c->cuts[lo + 1] : c->N;
}

void eng_chunk_layout_free(chunk_layout_buf *L)
{
    for (int l = 0; l < MEL_LEVELS; l++) free(L->off[l]), free(L->row[l]);
    free(L->pairs);
    free(L->info);
    memset(L, 0, sizeof *L);
}

mel_status eng_chunk_layout_alloc(mel_ctx *ctx, const call *c, int64_t R, chunk_layout_buf *L)
{
    memset(L, 0, sizeof *L);
    if (!c->skey) return MEL_OK;
    int bad = 0;
    for (int l = 0; l < MEL_LEVELS; l++) {
        L->off[l] = malloc((size_t)(R + 1) * sizeof(int64_t));
        L->row[l] = malloc((size_t)R * sizeof(int64_t) + 1);
        bad |= !L->off[l] || !L->row[l];
    }
    L->pairs = malloc((size_t)R * 2 * sizeof(int64_t) + 1);
    L->info = malloc((size_t)R * MEL_SEQINFO_N + 1);
    if (bad || !L->pairs || !L->info) {
        eng_chunk_layout_free(L);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "out of memory for the layout of a chunk of %lld rows",
                        (long long)R);
    }
    return MEL_OK;
}

void eng_chunk_layout(const mel_transform *t, const call *c, const chunk_layout_buf *L, mel_chunk *ch)
{
    if (!c->skey || !L->info) return;
    const int64_t R = ch->R, G = t->group;
    const int64_t *key = c->skey + ch->r0;
    memset(L->info, 0, (size_t)R * MEL_SEQINFO_N);
    for (int64_t r = 0; r < R; r++)
        L->info[r * MEL_SEQINFO_N + MEL_SEQINFO_RANK] = key[r] < 0 ? -1 : (int8_t)(key[r] % G);
    for (int l = 0; l < MEL_LEVELS; l++) {
        int64_t np = 0;
        for (int64_t r = 0; r < R; r++)
            if (key[r] >= 0) L->pairs[2 * np] = l ? key[r] / G : key[r], L->pairs[2 * np + 1] = r, np++;
        qsort(L->pairs, (size_t)np, 2 * sizeof(int64_t), cmp_pair);
        int64_t n = 0;
        for (int64_t k = 0; k < np; k++) {
            if (k == 0 || L->pairs[2 * k] != L->pairs[2 * (k - 1)]) {
                L->off[l][n++] = k;
                L->info[L->pairs[2 * k + 1] * MEL_SEQINFO_N + (l ? MEL_SEQINFO_GFIRST : MEL_SEQINFO_FIRST)] = 1;
            }
            L->row[l][k] = L->pairs[2 * k + 1];
        }
        L->off[l][n] = np;
        ch->seg_off[l] = L->off[l];
        ch->seg_row[l] = L->row[l];
        ch->n_seg[l] = n;
    }
    ch->seq_info = L->info;
}
