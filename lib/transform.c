/* Compiling a row program into a transform (check the graph,
 * differentiate it with lib/autodiff.c, plan it with lib/plan.c) and the
 * transform's queries. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel_internal.h"

static int depends_on_vectors(const mel_graph *g, int v, char *seen)
{
    if (v < 0 || seen[v]) return 0;
    seen[v] = 1;
    const mel_node *nd = &g->nodes[v];
    if (nd->kind == K_VEC) return 1;
    return depends_on_vectors(g, nd->a, seen) || depends_on_vectors(g, nd->b, seen) ||
           depends_on_vectors(g, nd->c, seen);
}

/* ------------------------------------------------------ row activity
 *
 * A row is inactive when a predicate computed from its per-row inputs
 * alone is 0 and that makes y (and every bound aux output) exactly 0 with
 * no gradient to the logits or any input: the engine then runs no GEMM for
 * it.  The predicate is read off the forward program, for any transform:
 *
 *   where(c, v, 0)   masked by c when c is row-only (where's VJP sends no
 *                    gradient to v where c is 0, and none ever to c);
 *   c·v, v·c         masked by c when c is row-only and not differentiable
 *                    (the adjoint of v is c·seed = 0; c receives none);
 *   −v, stop_gradient(v), and add / sub / min / max / where of operands
 *                    masked by the same predicate: masked by it.
 *
 * Row-only: a scalar that depends on no vector (so on no logits), on no
 * segment sum, and is not the adjoint seed. */

#define ACT_ZERO (-2) /* the node is the constant 0 */

static int row_only(const mel_transform *t, int v, signed char *memo)
{
    if (v < 0) return 1;
    if (memo[v]) return memo[v] > 0;
    const mel_node *nd = &t->nodes[v];
    int ok = nd->kind != K_VEC && nd->op != OP_SEGSUM && nd->op != OP_SEQINFO && nd->op != OP_SEED &&
             nd->op != OP_LOGITS && row_only(t, nd->a, memo) && row_only(t, nd->b, memo) &&
             row_only(t, nd->c, memo);
    memo[v] = ok ? 1 : -1;
    return ok;
}

/* The predicate node masking node v (ACT_ZERO for the constant 0), or -1. */
static int mask_of(const mel_transform *t, int v, signed char *memo, int depth)
{
    if (v < 0 || depth > 64) return -1;
    const mel_node *nd = &t->nodes[v];
    if (nd->kind != K_SCAL) return -1;
    switch ((mel_op)nd->op) {
    case OP_CONST:
        return nd->cval == 0 ? ACT_ZERO : -1;
    case OP_WHERE: {
        int mb = mask_of(t, nd->c, memo, depth + 1);
        if (mb == ACT_ZERO && t->nodes[nd->a].kind == K_SCAL && row_only(t, nd->a, memo)) return nd->a;
        int ma = mask_of(t, nd->b, memo, depth + 1);
        if (ma == mb) return ma;
        if (ma == ACT_ZERO) return mb;
        return -1;
    }
    case OP_MUL: {
        for (int k = 0; k < 2; k++) {
            int c = k ? nd->b : nd->a;
            if (t->nodes[c].kind == K_SCAL && !t->nodes[c].grad && row_only(t, c, memo) &&
                t->nodes[c].op != OP_CONST)
                return c;
        }
        int ma = mask_of(t, nd->a, memo, depth + 1);
        if (ma >= 0 || ma == ACT_ZERO) return ma;
        return mask_of(t, nd->b, memo, depth + 1);
    }
    case OP_NEG:
    case OP_STOPGRAD:
        return mask_of(t, nd->a, memo, depth + 1);
    case OP_ADD:
    case OP_SUB:
    case OP_MIN:
    case OP_MAX: {
        int ma = mask_of(t, nd->a, memo, depth + 1), mb = mask_of(t, nd->b, memo, depth + 1);
        if (ma == ACT_ZERO) return mb;
        if (mb == ACT_ZERO) return ma;
        return ma == mb ? ma : -1;
    }
    default:
        return -1;
    }
}

static int pred_slot(mel_transform *t, int node)
{
    if (node < 0) return -1;
    for (int k = 0; k < t->n_pred; k++)
        if (t->pred[k] == node) return k;
    t->pred[t->n_pred] = node;
    return t->n_pred++;
}

void mel_mark_activity(mel_transform *t)
{
    t->n_pred = 0;
    t->y_pred = -1;
    for (int k = 0; k < MEL_MAX_AUX; k++) t->aux_pred[k] = -1;
    signed char *memo = calloc((size_t)t->n + 1, 1);
    if (!memo) return; /* no skipping: always correct */
    t->y_pred = pred_slot(t, mask_of(t, t->out, memo, 0));
    /* an aux output that is the constant 0 is masked by anything: y's */
    for (int k = 0; k < t->n_aux; k++) {
        int m = mask_of(t, t->aux[k], memo, 0);
        t->aux_pred[k] = m == ACT_ZERO ? t->y_pred : pred_slot(t, m);
    }
    free(memo);
}

void mel_transform_free(mel_transform *t)
{
    if (!t) return;
    free(t->nodes);
    mel_plan_free(&t->fwd);
    mel_plan_free(&t->fb);
    mel_plan_free(&t->cnt);
    mel_plan_free(&t->vfwd);
    mel_plan_free(&t->vfb);
    mel_plan_free(&t->vcnt);
    for (int k = 0; k < t->n_pred; k++) mel_plan_free(&t->pplan[k]);
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
    const int has_seq = src->seg_len > 0 || src->seq_ids >= 0;
    for (int i = 0; i < src->n; i++) {
        const mel_node *nd = &src->nodes[i];
        if ((nd->op == OP_SEGSUM || nd->op == OP_SEQINFO) && !has_seq)
            return mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: node %d is a %s but no sequences "
                                                "were set (mel_g_set_segment or mel_g_set_sequence_ids)",
                            i, mel_op_name(nd->op));
    }
    if (src->group > 1 && !has_seq)
        return mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: groups of %lld sequences but no sequences "
                                            "were set (mel_g_set_segment or mel_g_set_sequence_ids)",
                        (long long)src->group);
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

    int32_t *adj = malloc((size_t)src->n * sizeof *adj);
    if (!adj) {
        free(g.nodes);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_graph_compile: out of memory");
    }
    if (mel_differentiate(&g, src->out, adj) != MEL_OK) {
        mel_status s = mel_fail(ctx, MEL_ERR_GRAPH, "mel_graph_compile: autodiff: %s", g.err);
        free(g.nodes), free(adj);
        return s;
    }

    mel_transform *t = calloc(1, sizeof *t);
    if (!t) {
        free(g.nodes), free(adj);
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
    t->seq_ids = src->seq_ids;
    t->group = src->group;
    t->n_aux = src->n_aux;
    memcpy(t->aux, src->aux, sizeof t->aux);
    memcpy(t->aux_name, src->aux_name, sizeof t->aux_name);
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        t->logits_node[h] = src->logits_node[h];
        t->head_diff[h] = src->logits_node[h] >= 0 && src->head_diff[h];
        t->adj_head[h] = t->head_diff[h] ? adj[src->logits_node[h]] : -1;
        if (src->logits_node[h] >= 0) t->n_heads = h + 1;
    }
    for (int k = 0; k < MEL_MAX_INPUTS; k++) t->adj_input[k] = -1;
    for (int i = 0; i < src->n; i++)
        if (g.nodes[i].op == OP_INPUT && t->inputs[g.nodes[i].slot].differentiable)
            t->adj_input[g.nodes[i].slot] = adj[i];
    free(adj);

    mel_mark_activity(t);
    mel_status s = mel_plan_transform(t);
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

const char *mel_transform_layout(const mel_transform *t, int64_t *segment, int64_t *group)
{
    if (segment) *segment = t ? t->seg_len : 0;
    if (group) *group = t ? t->group : 1;
    return t && t->seq_ids >= 0 ? t->inputs[t->seq_ids].name : NULL;
}

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
        else if (nd->op == OP_SEGSUM)
            len += (size_t)snprintf(s + len, cap - len, " %s", nd->slot ? "group" : "sequence");
        else if (nd->op == OP_SEQINFO)
            len += (size_t)snprintf(s + len, cap - len, " %s",
                                    nd->slot == MEL_SEQINFO_RANK ? "rank" : nd->slot == MEL_SEQINFO_FIRST ? "first" : "group_first");
        int ops[3] = {nd->a, nd->b, nd->c};
        for (int k = 0; k < 3; k++)
            if (ops[k] >= 0) len += (size_t)snprintf(s + len, cap - len, " %%%d", ops[k]);
        len += (size_t)snprintf(s + len, cap - len, "\n");
        if (len + 96 > cap) break;
    }
    return s;
}
