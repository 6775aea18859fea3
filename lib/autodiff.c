/* Compile: validate a row program, differentiate it in reverse mode, plan it.
 *
 * The VJP table (vjp() below) is the only place where derivatives exist in
 * libmel: one rule per primitive, each written with the same builder the
 * transforms use, so the adjoint is an ordinary row program run by the
 * same executor.  Transforms never contain derivative code.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel_internal.h"

/* builder internals from graph.c */
mel_val mel_g_unary(mel_graph *g, int op, mel_val a);
mel_val mel_g_binary(mel_graph *g, int op, mel_val a, mel_val b);
mel_val mel_g_reduce(mel_graph *g, int op, mel_val a);
mel_val mel_g_index_op(mel_graph *g, int op, mel_val idx);

typedef struct {
    mel_graph *g;
    int32_t *adj; /* adjoint node of each forward node, -1 when none */
    int n_fwd;
} ad_state;

static int kind(mel_graph *g, int v) { return g->nodes[v].kind; }

static mel_val bcast(mel_graph *g, mel_val s)
{
    mel_node n;
    memset(&n, 0, sizeof n);
    n.op = OP_BCAST;
    n.kind = K_VEC;
    n.a = s;
    n.b = n.c = -1;
    return mel_graph_add_node(g, n);
}

/* adj[x] += gx, reducing a vector gradient of a scalar operand (broadcast
 * in the forward) with a sum, and broadcasting a scalar gradient of a
 * vector operand. */
static void accum(ad_state *st, mel_val x, mel_val gx)
{
    mel_graph *g = st->g;
    if (x < 0 || gx < 0 || !g->nodes[x].grad) return;
    if (kind(g, x) == K_SCAL && kind(g, gx) == K_VEC) gx = mel_g_reduce(g, OP_SUM, gx);
    else if (kind(g, x) == K_VEC && kind(g, gx) == K_SCAL) gx = bcast(g, gx);
    if (gx < 0) return;
    st->adj[x] = st->adj[x] < 0 ? gx : mel_g_binary(g, OP_ADD, st->adj[x], gx);
}

/* The VJP table.  y = node i, gy = its adjoint.  Uses only the builder. */
static void vjp(ad_state *st, int i, mel_val gy)
{
    mel_graph *g = st->g;
    const mel_node nd = g->nodes[i]; /* copy: the array may grow */
    mel_val a = nd.a, b = nd.b, y = i;
#define C(v) mel_g_const(g, (v))
#define MUL(p, q) mel_g_binary(g, OP_MUL, (p), (q))
#define DIV(p, q) mel_g_binary(g, OP_DIV, (p), (q))
#define SUB(p, q) mel_g_binary(g, OP_SUB, (p), (q))
#define ADD(p, q) mel_g_binary(g, OP_ADD, (p), (q))
    switch ((mel_op)nd.op) {
    /* leaves and non-differentiable operations */
    case OP_LOGITS: case OP_INDEX: case OP_INPUT: case OP_CONST: case OP_VOCAB:
    case OP_SEED: case OP_IOTA: case OP_SIGN: case OP_LT: case OP_LE: case OP_EQ:
    case OP_VALID: case OP_ONEHOT: case OP_ARGMAXMASK: case OP_STOPGRAD:
    case OP__COUNT:
        break;
    /* unary: d/da */
    case OP_NEG: accum(st, a, mel_g_unary(g, OP_NEG, gy)); break;
    case OP_EXP: accum(st, a, MUL(gy, y)); break;
    case OP_LOG: accum(st, a, DIV(gy, a)); break;
    case OP_TANH: accum(st, a, MUL(gy, SUB(C(1), mel_g_unary(g, OP_SQUARE, y)))); break;
    case OP_SIGMOID: accum(st, a, MUL(gy, MUL(y, SUB(C(1), y)))); break;
    case OP_SQUARE: accum(st, a, MUL(gy, MUL(C(2), a))); break;
    case OP_SQRT: accum(st, a, DIV(MUL(gy, C(0.5)), y)); break;
    case OP_LOG1P: accum(st, a, DIV(gy, ADD(C(1), a))); break;
    case OP_ABS: accum(st, a, MUL(gy, mel_g_unary(g, OP_SIGN, a))); break;
    /* binary */
    case OP_ADD: accum(st, a, gy); accum(st, b, gy); break;
    case OP_SUB: accum(st, a, gy); accum(st, b, mel_g_unary(g, OP_NEG, gy)); break;
    case OP_MUL: accum(st, a, MUL(gy, b)); accum(st, b, MUL(gy, a)); break;
    case OP_DIV:
        accum(st, a, DIV(gy, b));
        accum(st, b, mel_g_unary(g, OP_NEG, MUL(gy, DIV(y, b))));
        break;
    case OP_MIN: /* ties go to a */
    case OP_MAX: {
        mel_val pick_a = nd.op == OP_MIN ? mel_g_binary(g, OP_LE, a, b)
                                         : mel_g_binary(g, OP_LE, b, a);
        accum(st, a, mel_g_where(g, pick_a, gy, C(0)));
        accum(st, b, mel_g_where(g, pick_a, C(0), gy));
        break;
    }
    case OP_WHERE:
        accum(st, nd.b, mel_g_where(g, nd.a, gy, C(0)));
        accum(st, nd.c, mel_g_where(g, nd.a, C(0), gy));
        break;
    /* reductions */
    case OP_SUM: accum(st, a, gy); break;
    case OP_MEAN: accum(st, a, DIV(gy, mel_g_vocab(g))); break;
    case OP_RMAX: accum(st, a, MUL(gy, mel_g_unary(g, OP_ARGMAXMASK, a))); break;
    case OP_LSE:
        accum(st, a, MUL(gy, mel_g_unary(g, OP_EXP, SUB(a, y))));
        break;
    case OP_GATHER: accum(st, a, MUL(gy, mel_g_index_op(g, OP_ONEHOT, b))); break;
    case OP_BCAST: accum(st, a, gy); break;
    /* y_t = Σ_{t' in seg} a_t'  =>  ā_t = Σ_{t' in seg} ȳ_t' */
    case OP_SEGSUM: accum(st, a, mel_g_unary(g, OP_SEGSUM, gy)); break;
    }
#undef C
#undef MUL
#undef DIV
#undef SUB
#undef ADD
}

/* ---------------------------------------------------------- planning */

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

/* ----------------------------------------------------------- compile */

static int depends_on_vectors(const mel_graph *g, int v, char *seen)
{
    if (v < 0 || seen[v]) return 0;
    seen[v] = 1;
    const mel_node *nd = &g->nodes[v];
    if (nd->kind == K_VEC) return 1;
    return depends_on_vectors(g, nd->a, seen) || depends_on_vectors(g, nd->b, seen) ||
           depends_on_vectors(g, nd->c, seen);
}

void mel_transform_free(mel_transform *t)
{
    if (!t) return;
    free(t->nodes);
    mel_plan_free(&t->fwd);
    mel_plan_free(&t->fb);
    mel_plan_free(&t->cnt);
    free(t);
}

mel_status mel_graph_compile(mel_ctx *ctx, const mel_graph *src, const char *name,
                             mel_transform **out)
{
    mel_clear_error(ctx);
    if (!out) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_graph_compile: out is NULL");
    *out = NULL;
    if (!src) return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_graph_compile: graph is NULL");
    if (src->failed)
        return mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: %s", src->err);
    if (src->out < 0)
        return mel_fail(ctx, MEL_ERR_GRAPH,
                        "mel_graph_compile: no output: call mel_g_set_output first");
    int any_logits = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++) any_logits |= src->logits_node[h] >= 0;
    if (!any_logits)
        return mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: the program reads no logits "
                                            "(use mel_g_logits)");
    for (int i = 0; i < src->n; i++)
        if (src->nodes[i].op == OP_SEGSUM && src->seg_len <= 0)
            return mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: node %d is a segment sum but no "
                                                "segment length was set (mel_g_set_segment)", i);
    if (src->count >= 0) {
        char *seen = calloc((size_t)src->n, 1);
        if (!seen) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_graph_compile: out of memory");
        int bad = depends_on_vectors(src, src->count, seen);
        free(seen);
        if (bad)
            return mel_fail(ctx, MEL_ERR_GRAPH,
                            "mel_graph_compile: the count (node %d) depends on a vector; it "
                            "must be computable from per-row inputs alone", src->count);
    }

    /* work on a copy so the caller's graph is unchanged */
    mel_graph g = *src;
    g.nodes = malloc((size_t)(src->cap ? src->cap : 1) * sizeof *g.nodes);
    if (!g.nodes) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_graph_compile: out of memory");
    memcpy(g.nodes, src->nodes, (size_t)src->n * sizeof *g.nodes);

    ad_state st = {&g, NULL, src->n};
    st.adj = malloc((size_t)src->n * sizeof *st.adj);
    if (!st.adj) {
        free(g.nodes);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_graph_compile: out of memory");
    }
    for (int i = 0; i < src->n; i++) st.adj[i] = -1;

    /* reverse sweep from the seed dL/dy */
    mel_node seed;
    memset(&seed, 0, sizeof seed);
    seed.op = OP_SEED;
    seed.kind = K_SCAL;
    seed.a = seed.b = seed.c = -1;
    mel_val sv = mel_graph_add_node(&g, seed);
    if (sv >= 0 && g.nodes[src->out].grad) st.adj[src->out] = sv;
    for (int i = src->out; i >= 0 && !g.failed; i--)
        if (st.adj[i] >= 0 && g.nodes[i].grad) vjp(&st, i, st.adj[i]);
    if (g.failed) {
        mel_status s = mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: autodiff: %s", g.err);
        free(g.nodes), free(st.adj);
        return s;
    }

    mel_transform *t = calloc(1, sizeof *t);
    if (!t) {
        free(g.nodes), free(st.adj);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_graph_compile: out of memory");
    }
    snprintf(t->name, sizeof t->name, "%s", name ? name : "custom");
    t->nodes = g.nodes;
    t->n = g.n;
    t->n_fwd = src->n;
    memcpy(t->inputs, src->inputs, sizeof t->inputs);
    t->n_inputs = src->n_inputs;
    t->out = src->out;
    t->count = src->count;
    t->seg_len = src->seg_len;
    t->n_aux = src->n_aux;
    memcpy(t->aux, src->aux, sizeof t->aux);
    memcpy(t->aux_name, src->aux_name, sizeof t->aux_name);
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        t->logits_node[h] = src->logits_node[h];
        t->head_diff[h] = src->logits_node[h] >= 0 && src->head_diff[h];
        t->adj_head[h] = t->head_diff[h] ? st.adj[src->logits_node[h]] : -1;
        if (src->logits_node[h] >= 0) t->n_heads = h + 1;
    }
    for (int k = 0; k < MEL_MAX_INPUTS; k++) t->adj_input[k] = -1;
    for (int i = 0; i < src->n; i++)
        if (g.nodes[i].op == OP_INPUT && t->inputs[g.nodes[i].slot].differentiable)
            t->adj_input[g.nodes[i].slot] = st.adj[i];
    free(st.adj);

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
    if (s != MEL_OK) {
        mel_transform_free(t);
        return mel_fail(ctx, s, "mel_graph_compile: out of memory while planning");
    }
    *out = t;
    return MEL_OK;
}

const char *mel_transform_name(const mel_transform *t) { return t ? t->name : "(null)"; }
int mel_transform_num_heads(const mel_transform *t) { return t ? t->n_heads : 0; }

int mel_transform_head(const mel_transform *t, int h)
{
    if (!t || h < 0 || h >= MEL_MAX_HEADS || t->logits_node[h] < 0) return 0;
    return t->head_diff[h] ? 2 : 1;
}

int mel_transform_num_inputs(const mel_transform *t) { return t ? t->n_inputs : 0; }

const char *mel_transform_input(const mel_transform *t, int i, int *is_index, int *differentiable)
{
    if (!t || i < 0 || i >= t->n_inputs) return NULL;
    if (is_index) *is_index = t->inputs[i].is_index;
    if (differentiable) *differentiable = t->inputs[i].differentiable;
    return t->inputs[i].name;
}

int mel_transform_num_aux(const mel_transform *t) { return t ? t->n_aux : 0; }

const char *mel_transform_aux(const mel_transform *t, int i)
{
    return t && i >= 0 && i < t->n_aux ? t->aux_name[i] : NULL;
}
int mel_transform_vector_slots(const mel_transform *t)
{
    if (!t) return 0;
    return t->fb.n_slots > t->fwd.n_slots ? t->fb.n_slots : t->fwd.n_slots;
}

char *mel_transform_dump(const mel_transform *t)
{
    if (!t) return NULL;
    size_t cap = 256 + (size_t)t->n * 96, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    len += (size_t)snprintf(s + len, cap - len, "transform %s: %d forward nodes, %d adjoint nodes, "
                            "slots fwd %d fb %d\n", t->name, t->n_fwd, t->n - t->n_fwd,
                            t->fwd.n_slots, t->fb.n_slots);
    for (int i = 0; i < t->n; i++) {
        const mel_node *nd = &t->nodes[i];
        if (i == t->n_fwd) len += (size_t)snprintf(s + len, cap - len, "-- adjoint --\n");
        len += (size_t)snprintf(s + len, cap - len, "%%%d = %s%s %s", i,
                                nd->kind == K_VEC ? "vec " : nd->kind == K_SCAL ? "scal " : "idx ",
                                mel_op_name(nd->op), nd->grad ? " [grad]" : "");
        if (nd->op == OP_CONST) len += (size_t)snprintf(s + len, cap - len, " %g", nd->cval);
        else if (nd->op == OP_LOGITS) len += (size_t)snprintf(s + len, cap - len, " head %d", nd->head);
        else if (nd->op == OP_INDEX || nd->op == OP_INPUT)
            len += (size_t)snprintf(s + len, cap - len, " '%s'", t->inputs[nd->slot].name);
        int ops[3] = {nd->a, nd->b, nd->c};
        for (int k = 0; k < 3; k++)
            if (ops[k] >= 0) len += (size_t)snprintf(s + len, cap - len, " %%%d", ops[k]);
        len += (size_t)snprintf(s + len, cap - len, "\n");
        if (len + 96 > cap) break;
    }
    return s;
}
