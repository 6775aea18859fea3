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
    memset(p, 0, sizeof *p);
}

/* Mark, for phase q, the vector nodes of earlier phases that nodes of
 * phase q read (recursively through vector operands): they are recomputed
 * in phase q because vectors do not survive a phase barrier. */
static void mark_recompute(const mel_transform *t, const int32_t *phase, int v, int q, char *in)
{
    const mel_node *nd = &t->nodes[v];
    int ops[3] = {nd->a, nd->b, nd->c};
    for (int k = 0; k < 3; k++) {
        int o = ops[k];
        if (o < 0 || in[o]) continue;
        const mel_node *on = &t->nodes[o];
        if (on->kind != K_VEC || phase[o] == q) continue;
        in[o] = 1;
        mark_recompute(t, phase, o, q, in);
    }
}

mel_status mel_plan_build(const mel_transform *t, const int *targets, int nt, mel_plan *p)
{
    int n = t->n;
    memset(p, 0, sizeof *p);
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
    /* phases: a segment sum starts a new phase */
    int n_phases = 1;
    for (int i = 0; i < n; i++) {
        if (!need[i]) continue;
        const mel_node *nd = &t->nodes[i];
        int ph = 0;
        int ops[3] = {nd->a, nd->b, nd->c};
        for (int k = 0; k < 3; k++)
            if (ops[k] >= 0 && phase[ops[k]] > ph) ph = phase[ops[k]];
        phase[i] = ph + (nd->op == OP_SEGSUM);
        if (phase[i] + 1 > n_phases) n_phases = phase[i] + 1;
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
        if (nd->kind != K_VEC) own[i] = 1;
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
            if (in[i] && phase[i] == q) mark_recompute(t, phase, i, q, in);
        /* vector targets must be live at the end of the last phase */
        if (q == n_phases - 1)
            for (int k = 0; k < nt; k++) {
                int v = targets[k];
                if (v >= 0 && t->nodes[v].kind == K_VEC && !in[v]) {
                    in[v] = 1;
                    mark_recompute(t, phase, v, q, in);
                }
            }
        int start = p->n;
        p->phase_start[q] = start;
        for (int i = 0; i < n; i++)
            if (in[i]) {
                if (p->n == cap) {
                    st = MEL_ERR_INTERNAL;
                    goto out;
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

    mel_status s = mel_plan_build(t, targets, n_fwd_targets, &t->fwd);
    if (s == MEL_OK) s = mel_plan_build(t, targets, nt, &t->fb);
    int ct[1] = {t->count};
    if (s == MEL_OK) s = mel_plan_build(t, ct, t->count >= 0 ? 1 : 0, &t->cnt);
    for (int k = 0; k < t->n_pred && s == MEL_OK; k++) {
        int pt[1] = {t->pred[k]};
        s = mel_plan_build(t, pt, 1, &t->pplan[k]);
    }
    return s;
}
