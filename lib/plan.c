/* Planning: which nodes of a transform run, in which order and phase,
 * and in which scratch vector slot (see mel_plan in mel_internal.h). */
#include <stdlib.h>
#include <string.h>

#include "mel_internal.h"

void mel_plan_free(mel_plan *p)
{
    free(p->order);
    free(p->pslot);
    free(p->phase_start);
    free(p->phase_of);
    free(p->red);
    free(p->red_start);
    memset(p, 0, sizeof *p);
}

/* Mark, for phase q, the vector nodes of earlier phases that nodes of
 * phase q read (recursively through vector operands): they are recomputed
 * in phase q because vectors do not survive a phase barrier. */
/* vsplit: an argmaxmask in a later phase is rebuilt from its combined
 * index and reads no operand there. */
static int rebuilt(const mel_transform *t, int v, int vsplit) { return vsplit && t->nodes[v].op == OP_ARGMAXMASK; }

static void mark_recompute(const mel_transform *t, const int32_t *phase, int v, int q, char *in, int vsplit)
{
    if (rebuilt(t, v, vsplit) && phase[v] != q) return;
    const mel_node *nd = &t->nodes[v];
    int ops[3] = {nd->a, nd->b, nd->c};
    for (int k = 0; k < 3; k++) {
        int o = ops[k];
        if (o < 0 || in[o]) continue;
        const mel_node *on = &t->nodes[o];
        if (on->kind != K_VEC || phase[o] == q) continue;
        in[o] = 1;
        mark_recompute(t, phase, o, q, in, vsplit);
    }
}

/* vsplit: a reduction over the vocabulary (or an argmaxmask) is combined
 * across processes before anything reads it. */
static int combined(const mel_transform *t, int i, int vsplit)
{
    return vsplit && (mel_is_vocab_reduction(t->nodes, i) || t->nodes[i].op == OP_ARGMAXMASK);
}

mel_status mel_plan_build(const mel_transform *t, mel_plan_kind kind, const int *targets, int nt, int vsplit,
                          mel_plan *p)
{
    int n = t->n;
    memset(p, 0, sizeof *p);
    p->kind = kind;
    char *need = calloc((size_t)n + 1, 1), *in = calloc((size_t)n + 1, 1), *own = NULL;
    int32_t *phase = malloc(((size_t)n + 1) * sizeof *phase);
    int32_t *last = malloc(((size_t)n + 1) * sizeof *last);
    int32_t *stack = malloc(((size_t)n + 1) * sizeof *stack);
    int32_t *slot = malloc(((size_t)n + 1) * sizeof *slot);
    int cap = 4 * n + 4;
    p->order = malloc((size_t)cap * sizeof *p->order);
    p->pslot = malloc((size_t)cap * sizeof *p->pslot);
    mel_status st = MEL_OK;
    if (!need || !in || !phase || !last || !stack || !slot || !p->order || !p->pslot) {
        st = MEL_ERR_OUT_OF_MEMORY;
        goto out;
    }
    int sp = 0;
    for (int k = 0; k < nt; k++)
        if (targets[k] >= 0 && !need[targets[k]]) need[targets[k]] = 1, stack[sp++] = targets[k];
    while (sp) {
        int v = stack[--sp];
        const mel_node *nd = &t->nodes[v];
        int ops[3] = {nd->a, nd->b, nd->c};
        for (int k = 0; k < 3; k++)
            if (ops[k] >= 0 && !need[ops[k]]) need[ops[k]] = 1, stack[sp++] = ops[k];
    }
    /* phases: a segment sum starts a new phase; in a vsplit plan, so does
     * reading a reduction over the vocabulary (combined at the barrier) */
    int n_phases = 1;
    for (int i = 0; i < n; i++) {
        if (!need[i]) continue;
        const mel_node *nd = &t->nodes[i];
        int ph = 0;
        int ops[3] = {nd->a, nd->b, nd->c};
        for (int k = 0; k < 3; k++) {
            if (ops[k] < 0) continue;
            int ready = phase[ops[k]] + combined(t, ops[k], vsplit);
            if (ready > ph) ph = ready;
        }
        phase[i] = ph + (nd->op == OP_SEGSUM);
        int end = phase[i] + combined(t, i, vsplit);
        if (end + 1 > n_phases) n_phases = end + 1;
    }
    p->n_phases = n_phases;
    p->phase_start = malloc((size_t)(n_phases + 1) * sizeof *p->phase_start);
    if (!p->phase_start) {
        st = MEL_ERR_OUT_OF_MEMORY;
        goto out;
    }
    /* A vector is computed in its own phase only when something of that
     * phase reads it (or it is a target and that phase is the last);
     * readers in later phases recompute it there. */
    own = calloc((size_t)n + 1, 1);
    if (!own) {
        st = MEL_ERR_OUT_OF_MEMORY;
        goto out;
    }
    for (int k = 0; k < nt; k++)
        if (targets[k] >= 0 && (t->nodes[targets[k]].kind != K_VEC || phase[targets[k]] == n_phases - 1))
            own[targets[k]] = 1;
    for (int i = n - 1; i >= 0; i--) {
        if (!need[i]) continue;
        const mel_node *nd = &t->nodes[i];
        if (nd->kind != K_VEC || combined(t, i, vsplit)) own[i] = 1;
        if (!own[i]) continue;
        int ops[3] = {nd->a, nd->b, nd->c};
        for (int k = 0; k < 3; k++)
            if (ops[k] >= 0 && phase[ops[k]] == phase[i]) own[ops[k]] = 1;
    }
    int n_slots = 0;
    p->n = 0;
    for (int q = 0; q < n_phases; q++) {
        memset(in, 0, (size_t)n);
        for (int i = 0; i < n; i++)
            if (need[i] && own[i] && phase[i] == q) in[i] = 1;
        for (int i = 0; i < n; i++)
            if (in[i] && phase[i] == q) mark_recompute(t, phase, i, q, in, vsplit);
        /* vector targets must be live at the end of the last phase */
        if (q == n_phases - 1)
            for (int k = 0; k < nt; k++) {
                int v = targets[k];
                if (v >= 0 && t->nodes[v].kind == K_VEC && !in[v]) {
                    in[v] = 1;
                    mark_recompute(t, phase, v, q, in, vsplit);
                }
            }
        int start = p->n;
        p->phase_start[q] = start;
        for (int i = 0; i < n; i++)
            if (in[i]) {
                if (p->n == cap) { /* more phases, more recomputed vectors */
                    int32_t *o2 = realloc(p->order, (size_t)cap * 2 * sizeof *o2);
                    if (o2) p->order = o2;
                    int32_t *s2 = realloc(p->pslot, (size_t)cap * 2 * sizeof *s2);
                    if (s2) p->pslot = s2;
                    if (!o2 || !s2) {
                        st = MEL_ERR_OUT_OF_MEMORY;
                        goto out;
                    }
                    cap *= 2;
                }
                p->order[p->n++] = i;
            }
        /* liveness inside the phase */
        for (int i = 0; i < n; i++) last[i] = -1;
        for (int pos = start; pos < p->n; pos++) {
            const mel_node *nd = &t->nodes[p->order[pos]];
            int ops[3] = {nd->a, nd->b, nd->c};
            for (int k = 0; k < 3; k++)
                if (ops[k] >= 0) last[ops[k]] = pos;
        }
        if (q == n_phases - 1)
            for (int k = 0; k < nt; k++)
                if (targets[k] >= 0) last[targets[k]] = p->n;
        /* vector slots: greedy reuse.  Every vector op is elementwise (or
         * reads its operand fully before writing), so an operand's slot can
         * be the result's slot. */
        int32_t *free_list = stack;
        int n_free = 0, used = 0;
        for (int i = 0; i < n; i++) slot[i] = -1;
        for (int pos = start; pos < p->n; pos++) {
            int v = p->order[pos];
            const mel_node *nd = &t->nodes[v];
            int ops[3] = {nd->a, nd->b, nd->c};
            for (int k = 0; k < 3; k++) {
                int o = ops[k];
                if (o < 0 || slot[o] < 0 || last[o] != pos) continue;
                int dup = 0;
                for (int q2 = 0; q2 < k; q2++) dup |= ops[q2] == o;
                if (!dup) free_list[n_free++] = slot[o];
            }
            if (nd->kind == K_VEC && nd->op != OP_LOGITS)
                slot[v] = n_free ? free_list[--n_free] : used++;
            p->pslot[pos] = slot[v];
            if (slot[v] >= 0 && last[v] < 0) free_list[n_free++] = slot[v];
        }
        if (used > n_slots) n_slots = used;
    }
    p->phase_start[n_phases] = p->n;
    p->n_slots = n_slots;
    if (vsplit) {
        /* what each barrier combines: the reductions of the phase before */
        p->vsplit = 1;
        p->phase_of = malloc(((size_t)n + 1) * sizeof *p->phase_of);
        p->red = malloc(((size_t)n + 1) * sizeof *p->red);
        p->red_start = malloc(((size_t)n_phases + 1) * sizeof *p->red_start);
        if (!p->phase_of || !p->red || !p->red_start) {
            st = MEL_ERR_OUT_OF_MEMORY;
            goto out;
        }
        for (int i = 0; i < n; i++) p->phase_of[i] = need[i] ? phase[i] : -1;
        /* red_start[q] .. red_start[q + 1]: the barrier opening phase q
         * combines the reductions that ran in phase q - 1 */
        int m = 0;
        p->red_start[0] = 0;
        for (int q = 1; q < n_phases; q++) {
            p->red_start[q] = m;
            for (int i = 0; i < n; i++)
                if (need[i] && combined(t, i, 1) && phase[i] == q - 1) p->red[m++] = i;
        }
        p->red_start[n_phases] = m;
    }
out:
    free(own);
    free(need), free(in), free(phase), free(last), free(stack), free(slot);
    if (st != MEL_OK) mel_plan_free(p);
    return st;
}

/* The three plans of a compiled transform: fwd (y and aux), fb (y, aux
 * and every adjoint the engine reads), cnt (the count alone). */
mel_status mel_plan_transform(mel_transform *t)
{
    int targets[2 + MEL_MAX_AUX + MEL_MAX_HEADS + MEL_MAX_INPUTS], nt = 0;
    targets[nt++] = t->out;
    for (int k = 0; k < t->n_aux; k++) targets[nt++] = t->aux[k];
    int n_fwd_targets = nt;
    for (int h = 0; h < MEL_MAX_HEADS; h++)
        if (t->adj_head[h] >= 0) targets[nt++] = t->adj_head[h];
    for (int k = 0; k < MEL_MAX_INPUTS; k++)
        if (t->adj_input[k] >= 0) targets[nt++] = t->adj_input[k];

    mel_status s = mel_plan_build(t, MEL_PLAN_FWD, targets, n_fwd_targets, 0, &t->fwd);
    if (s == MEL_OK) s = mel_plan_build(t, MEL_PLAN_FB, targets, nt, 0, &t->fb);
    int ct[1] = {t->count};
    if (s == MEL_OK) s = mel_plan_build(t, MEL_PLAN_CNT, ct, t->count >= 0 ? 1 : 0, 0, &t->cnt);
    /* the vocabulary-parallel plans (lib/vocab.c) */
    if (s == MEL_OK) s = mel_plan_build(t, MEL_PLAN_FWD, targets, n_fwd_targets, 1, &t->vfwd);
    if (s == MEL_OK) s = mel_plan_build(t, MEL_PLAN_FB, targets, nt, 1, &t->vfb);
    if (s == MEL_OK) s = mel_plan_build(t, MEL_PLAN_CNT, ct, t->count >= 0 ? 1 : 0, 1, &t->vcnt);
    for (int k = 0; k < t->n_pred && s == MEL_OK; k++) {
        int pt[1] = {t->pred[k]};
        s = mel_plan_build(t, MEL_PLAN_PRED, pt, 1, 0, &t->pplan[k]);
    }
    return s;
}
