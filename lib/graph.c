/* The row-program builder: primitives, their kinds, and compositions. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel_internal.h"

static const char *const op_names[OP__COUNT] = {
    [OP_LOGITS] = "logits", [OP_INDEX] = "index", [OP_INPUT] = "input",
    [OP_CONST] = "const", [OP_VOCAB] = "vocab", [OP_SEED] = "seed",
    [OP_NEG] = "neg", [OP_EXP] = "exp", [OP_LOG] = "log", [OP_TANH] = "tanh",
    [OP_SIGMOID] = "sigmoid", [OP_SQUARE] = "square", [OP_SQRT] = "sqrt",
    [OP_LOG1P] = "log1p", [OP_ABS] = "abs", [OP_SIGN] = "sign",
    [OP_ADD] = "add", [OP_SUB] = "sub", [OP_MUL] = "mul", [OP_DIV] = "div",
    [OP_MIN] = "min", [OP_MAX] = "max", [OP_LT] = "lt", [OP_LE] = "le",
    [OP_EQ] = "eq", [OP_WHERE] = "where", [OP_SUM] = "sum", [OP_MEAN] = "mean",
    [OP_RMAX] = "rmax", [OP_LSE] = "logsumexp", [OP_GATHER] = "gather",
    [OP_VALID] = "valid", [OP_ONEHOT] = "onehot", [OP_ARGMAXMASK] = "argmaxmask",
    [OP_BCAST] = "broadcast", [OP_STOPGRAD] = "stop_gradient", [OP_SEGSUM] = "segment_sum",
    [OP_IOTA] = "iota", [OP_SEQINFO] = "seqinfo",
};

const char *mel_op_name(int op)
{
    return op >= 0 && op < OP__COUNT && op_names[op] ? op_names[op] : "?";
}


mel_graph *mel_graph_new(void)
{
    mel_graph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    for (int h = 0; h < MEL_MAX_HEADS; h++) g->logits_node[h] = -1;
    g->out = g->count = -1;
    g->seq_ids = -1;
    g->group = 1;
    return g;
}

void mel_graph_free(mel_graph *g)
{
    if (!g) return;
    free(g->nodes);
    free(g);
}

static mel_val gfail(mel_graph *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static mel_val gfail(mel_graph *g, const char *fmt, ...)
{
    if (g && !g->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(g->err, sizeof g->err, fmt, ap);
        va_end(ap);
        g->failed = 1;
    }
    return -1;
}

int mel_graph_add_node(mel_graph *g, mel_node nd)
{
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 64;
        mel_node *p = realloc(g->nodes, (size_t)cap * sizeof *p);
        if (!p) return gfail(g, "out of memory growing the graph to %d nodes", cap);
        g->nodes = p;
        g->cap = cap;
    }
    g->nodes[g->n] = nd;
    return g->n++;
}

static int valid_val(mel_graph *g, mel_val v, const char *fn)
{
    if (!g) return 0;
    if (g->failed) return 0;
    if (v < 0 || v >= g->n) {
        gfail(g, "%s: value %d is not a node of this graph (it has %d)", fn, (int)v, g->n);
        return 0;
    }
    return 1;
}

static mel_node mk(int op, int kind)
{
    mel_node n;
    memset(&n, 0, sizeof n);
    n.op = (int16_t)op;
    n.kind = (int8_t)kind;
    n.a = n.b = n.c = -1;
    return n;
}

/* ------------------------------------------------------------- leaves */

mel_val mel_g_logits(mel_graph *g, int head, int differentiable)
{
    if (!g || g->failed) return -1;
    if (head < 0 || head >= MEL_MAX_HEADS)
        return gfail(g, "mel_g_logits: head = %d is outside [0, %d)", head, MEL_MAX_HEADS);
    if (differentiable) g->head_diff[head] = 1;
    if (g->logits_node[head] >= 0) {
        g->nodes[g->logits_node[head]].grad |= differentiable ? 1 : 0;
        return g->logits_node[head];
    }
    mel_node n = mk(OP_LOGITS, K_VEC);
    n.head = head;
    n.grad = differentiable ? 1 : 0;
    int id = mel_graph_add_node(g, n);
    if (id >= 0) g->logits_node[head] = id;
    return id;
}

int mel_find_input(const mel_input_decl *in, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(in[i].name, name)) return i;
    return -1;
}

static mel_val leaf_input(mel_graph *g, const char *name, int is_index,
                          int differentiable, int64_t ignore_index, const char *fn)
{
    if (!g || g->failed) return -1;
    if (!name || !*name) return gfail(g, "%s: name is NULL or empty", fn);
    if (strlen(name) >= MEL_NAME_MAX)
        return gfail(g, "%s: name '%s' is longer than %d characters", fn, name, MEL_NAME_MAX - 1);
    int slot = mel_find_input(g->inputs, g->n_inputs, name);
    if (slot >= 0) {
        if (g->inputs[slot].is_index != is_index)
            return gfail(g, "%s: input '%s' was already declared as %s", fn, name,
                         g->inputs[slot].is_index ? "an index" : "a scalar");
        if (is_index && g->inputs[slot].ignore_index != ignore_index)
            return gfail(g, "%s: index '%s' declared again with ignore_index %lld (was %lld)",
                         fn, name, (long long)ignore_index,
                         (long long)g->inputs[slot].ignore_index);
        for (int i = 0; i < g->n; i++)
            if ((g->nodes[i].op == OP_INDEX || g->nodes[i].op == OP_INPUT) &&
                g->nodes[i].slot == slot) {
                if (differentiable) {
                    g->inputs[slot].differentiable = 1;
                    g->nodes[i].grad = 1;
                }
                return i;
            }
    }
    if (slot < 0) {
        if (g->n_inputs == MEL_MAX_INPUTS)
            return gfail(g, "%s: more than %d inputs", fn, MEL_MAX_INPUTS);
        slot = g->n_inputs++;
        mel_input_decl *d = &g->inputs[slot];
        memset(d, 0, sizeof *d);
        strcpy(d->name, name);
        d->is_index = is_index;
        d->differentiable = differentiable ? 1 : 0;
        d->ignore_index = ignore_index;
    }
    mel_node n = mk(is_index ? OP_INDEX : OP_INPUT, is_index ? K_IDX : K_SCAL);
    n.slot = slot;
    n.grad = (!is_index && differentiable) ? 1 : 0;
    return mel_graph_add_node(g, n);
}

mel_val mel_g_index(mel_graph *g, const char *name, int64_t ignore_index)
{
    return leaf_input(g, name, 1, 0, ignore_index, "mel_g_index");
}

mel_val mel_g_input(mel_graph *g, const char *name, int differentiable)
{
    return leaf_input(g, name, 0, differentiable, 0, "mel_g_input");
}

mel_val mel_g_const(mel_graph *g, double c)
{
    if (!g || g->failed) return -1;
    mel_node n = mk(OP_CONST, K_SCAL);
    n.cval = c;
    return mel_graph_add_node(g, n);
}

mel_val mel_g_iota(mel_graph *g)
{
    if (!g || g->failed) return -1;
    return mel_graph_add_node(g, mk(OP_IOTA, K_VEC));
}

mel_val mel_g_vocab(mel_graph *g)
{
    if (!g || g->failed) return -1;
    return mel_graph_add_node(g, mk(OP_VOCAB, K_SCAL));
}

/* --------------------------------------------------------- operations */

static int grad_of(mel_graph *g, mel_val v) { return v >= 0 ? g->nodes[v].grad : 0; }
static int kind_of(mel_graph *g, mel_val v) { return g->nodes[v].kind; }

/* Internal node creation shared by the public builder and autodiff. */
mel_val mel_g_unary(mel_graph *g, int op, mel_val a)
{
    if (!valid_val(g, a, mel_op_name(op))) return -1;
    if (kind_of(g, a) == K_IDX)
        return gfail(g, "%s: operand %d is an index; only gather/valid take indices",
                     mel_op_name(op), (int)a);
    mel_node n = mk(op, kind_of(g, a));
    n.a = a;
    if (op == OP_SEGSUM && kind_of(g, a) != K_SCAL)
        return gfail(g, "segment_sum: operand %d is not a scalar", (int)a);
    n.grad = (op == OP_SIGN) ? 0 : (int8_t)grad_of(g, a);
    return mel_graph_add_node(g, n);
}

mel_val mel_g_binary(mel_graph *g, int op, mel_val a, mel_val b)
{
    if (!valid_val(g, a, mel_op_name(op)) || !valid_val(g, b, mel_op_name(op))) return -1;
    if (kind_of(g, a) == K_IDX || kind_of(g, b) == K_IDX)
        return gfail(g, "%s: an operand is an index; only gather/valid take indices",
                     mel_op_name(op));
    int kind = (kind_of(g, a) == K_VEC || kind_of(g, b) == K_VEC) ? K_VEC : K_SCAL;
    mel_node n = mk(op, kind);
    n.a = a;
    n.b = b;
    n.grad = (op == OP_LT || op == OP_LE || op == OP_EQ) ? 0
                                                          : (int8_t)(grad_of(g, a) | grad_of(g, b));
    return mel_graph_add_node(g, n);
}

mel_val mel_g_neg(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_NEG, a); }
mel_val mel_g_exp(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_EXP, a); }
mel_val mel_g_log(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_LOG, a); }
mel_val mel_g_tanh(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_TANH, a); }
mel_val mel_g_sigmoid(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_SIGMOID, a); }
mel_val mel_g_square(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_SQUARE, a); }
mel_val mel_g_sqrt(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_SQRT, a); }
mel_val mel_g_log1p(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_LOG1P, a); }
mel_val mel_g_abs(mel_graph *g, mel_val a) { return mel_g_unary(g, OP_ABS, a); }

mel_val mel_g_add(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_ADD, a, b); }
mel_val mel_g_sub(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_SUB, a, b); }
mel_val mel_g_mul(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_MUL, a, b); }
mel_val mel_g_div(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_DIV, a, b); }
mel_val mel_g_min(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_MIN, a, b); }
mel_val mel_g_max(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_MAX, a, b); }
mel_val mel_g_lt(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_LT, a, b); }
mel_val mel_g_le(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_LE, a, b); }
mel_val mel_g_eq(mel_graph *g, mel_val a, mel_val b) { return mel_g_binary(g, OP_EQ, a, b); }

mel_val mel_g_where(mel_graph *g, mel_val cond, mel_val a, mel_val b)
{
    if (!valid_val(g, cond, "where") || !valid_val(g, a, "where") || !valid_val(g, b, "where"))
        return -1;
    if (kind_of(g, cond) == K_IDX || kind_of(g, a) == K_IDX || kind_of(g, b) == K_IDX)
        return gfail(g, "where: an operand is an index");
    int kind = (kind_of(g, cond) == K_VEC || kind_of(g, a) == K_VEC || kind_of(g, b) == K_VEC)
                   ? K_VEC : K_SCAL;
    mel_node n = mk(OP_WHERE, kind);
    n.a = cond;
    n.b = a;
    n.c = b;
    n.grad = (int8_t)(grad_of(g, a) | grad_of(g, b));
    return mel_graph_add_node(g, n);
}

mel_val mel_g_reduce(mel_graph *g, int op, mel_val a)
{
    if (!valid_val(g, a, mel_op_name(op))) return -1;
    if (kind_of(g, a) != K_VEC)
        return gfail(g, "%s: operand %d is not a vector (reductions take vectors)",
                     mel_op_name(op), (int)a);
    mel_node n = mk(op, K_SCAL);
    n.a = a;
    n.grad = (int8_t)grad_of(g, a);
    return mel_graph_add_node(g, n);
}

mel_val mel_g_sum(mel_graph *g, mel_val a) { return mel_g_reduce(g, OP_SUM, a); }
mel_val mel_g_mean(mel_graph *g, mel_val a) { return mel_g_reduce(g, OP_MEAN, a); }
mel_val mel_g_rmax(mel_graph *g, mel_val a) { return mel_g_reduce(g, OP_RMAX, a); }
mel_val mel_g_logsumexp(mel_graph *g, mel_val a) { return mel_g_reduce(g, OP_LSE, a); }

mel_val mel_g_gather(mel_graph *g, mel_val a, mel_val idx)
{
    if (!valid_val(g, a, "gather") || !valid_val(g, idx, "gather")) return -1;
    if (kind_of(g, a) != K_VEC) return gfail(g, "gather: operand %d is not a vector", (int)a);
    if (kind_of(g, idx) != K_IDX) return gfail(g, "gather: index %d is not an index input", (int)idx);
    mel_node n = mk(OP_GATHER, K_SCAL);
    n.a = a;
    n.b = idx;
    n.grad = (int8_t)grad_of(g, a);
    return mel_graph_add_node(g, n);
}

/* valid / onehot: index -> mask */
mel_val mel_g_index_op(mel_graph *g, int op, mel_val idx)
{
    if (!valid_val(g, idx, mel_op_name(op))) return -1;
    if (kind_of(g, idx) != K_IDX)
        return gfail(g, "%s: operand %d is not an index input", mel_op_name(op), (int)idx);
    mel_node n = mk(op, op == OP_ONEHOT ? K_VEC : K_SCAL);
    n.a = idx;
    return mel_graph_add_node(g, n);
}

mel_val mel_g_valid(mel_graph *g, mel_val idx) { return mel_g_index_op(g, OP_VALID, idx); }

/* ------------------------------------------- sequences and groups
 * (doc/design.md, "Sequences and groups") */

/* A sum over the rows of the row's sequence (level 0) or group (level 1). */
mel_val mel_g_level_sum(mel_graph *g, int level, mel_val a)
{
    mel_val v = mel_g_unary(g, OP_SEGSUM, a);
    if (v >= 0) g->nodes[v].slot = level;
    return v;
}

mel_val mel_g_segment_sum(mel_graph *g, mel_val a) { return mel_g_level_sum(g, MEL_LEVEL_SEQ, a); }
mel_val mel_g_group_sum(mel_graph *g, mel_val a) { return mel_g_level_sum(g, MEL_LEVEL_GROUP, a); }

static mel_val seqinfo(mel_graph *g, int field)
{
    if (!g || g->failed) return -1;
    mel_node n = mk(OP_SEQINFO, K_SCAL);
    n.slot = field;
    return mel_graph_add_node(g, n);
}

mel_val mel_g_sequence_rank(mel_graph *g) { return seqinfo(g, MEL_SEQINFO_RANK); }
mel_val mel_g_sequence_first(mel_graph *g) { return seqinfo(g, MEL_SEQINFO_FIRST); }
mel_val mel_g_group_first(mel_graph *g) { return seqinfo(g, MEL_SEQINFO_GFIRST); }

/* The per-sequence value a at the sequence of rank k of this row's group:
 * Σ over the group of where(first row of its sequence and rank == k, a, 0). */
mel_val mel_g_group_read(mel_graph *g, mel_val a, int64_t k)
{
    if (g && !g->failed && (k < 0 || k >= g->group))
        return gfail(g, "mel_g_group_read: rank k = %lld is outside [0, %lld) (the group size, "
                     "mel_g_set_group)", (long long)k, (long long)g->group);
    mel_val pick = mel_g_mul(g, mel_g_sequence_first(g),
                             mel_g_eq(g, mel_g_sequence_rank(g), mel_g_const(g, (double)k)));
    return mel_g_group_sum(g, mel_g_where(g, pick, a, mel_g_const(g, 0)));
}

mel_status mel_g_set_segment(mel_graph *g, int64_t rows)
{
    if (!g) return MEL_ERR_INVALID_ARGUMENT;
    if (rows < 1) {
        gfail(g, "mel_g_set_segment: rows = %lld must be >= 1", (long long)rows);
        return MEL_ERR_GRAPH;
    }
    if (g->seq_ids >= 0) {
        gfail(g, "mel_g_set_segment: rows = %lld contradicts the sequence ids '%s' set before "
              "(mel_g_set_sequence_ids); a layout has one or the other", (long long)rows,
              g->inputs[g->seq_ids].name);
        return MEL_ERR_GRAPH;
    }
    g->seg_len = rows;
    return MEL_OK;
}

mel_status mel_g_set_sequence_ids(mel_graph *g, const char *name)
{
    if (!g) return MEL_ERR_INVALID_ARGUMENT;
    if (g->seg_len > 0) {
        gfail(g, "mel_g_set_sequence_ids: '%s' contradicts the segment length %lld set before "
              "(mel_g_set_segment); a layout has one or the other", name ? name : "(null)",
              (long long)g->seg_len);
        return MEL_ERR_GRAPH;
    }
    if (g->seq_ids >= 0) {
        gfail(g, "mel_g_set_sequence_ids: the sequence ids are already '%s'", g->inputs[g->seq_ids].name);
        return MEL_ERR_GRAPH;
    }
    mel_val v = leaf_input(g, name, 1, 0, -1, "mel_g_set_sequence_ids");
    if (v < 0) return MEL_ERR_GRAPH;
    g->seq_ids = g->nodes[v].slot;
    g->inputs[g->seq_ids].layout = 1;
    return MEL_OK;
}

mel_status mel_g_set_group(mel_graph *g, int64_t sequences)
{
    if (!g) return MEL_ERR_INVALID_ARGUMENT;
    if (sequences < 1) {
        gfail(g, "mel_g_set_group: sequences = %lld must be >= 1", (long long)sequences);
        return MEL_ERR_GRAPH;
    }
    g->group = sequences;
    return MEL_OK;
}

mel_val mel_g_stop_gradient(mel_graph *g, mel_val a)
{
    if (!valid_val(g, a, "stop_gradient")) return -1;
    if (kind_of(g, a) == K_IDX) return gfail(g, "stop_gradient: operand %d is an index", (int)a);
    mel_node n = mk(OP_STOPGRAD, kind_of(g, a));
    n.a = a;
    return mel_graph_add_node(g, n);
}

/* ------------------------------------------------------- compositions */

mel_val mel_g_scale(mel_graph *g, mel_val a, double c)
{
    return mel_g_mul(g, a, mel_g_const(g, c));
}

mel_val mel_g_clamp(mel_graph *g, mel_val a, double lo, double hi)
{
    if (g && !g->failed && !(lo <= hi))
        return gfail(g, "clamp: lo = %g is not <= hi = %g", lo, hi);
    return mel_g_max(g, mel_g_min(g, a, mel_g_const(g, hi)), mel_g_const(g, lo));
}

mel_val mel_g_log_softmax(mel_graph *g, mel_val z)
{
    return mel_g_sub(g, z, mel_g_logsumexp(g, z));
}

mel_val mel_g_softmax(mel_graph *g, mel_val z)
{
    return mel_g_exp(g, mel_g_log_softmax(g, z));
}

mel_val mel_g_softcap(mel_graph *g, mel_val z, double cap)
{
    if (g && !g->failed && !(cap > 0))
        return gfail(g, "softcap: cap = %g must be > 0", cap);
    return mel_g_scale(g, mel_g_tanh(g, mel_g_scale(g, z, 1.0 / cap)), cap);
}

/* ------------------------------------------------------------ outputs */

mel_status mel_g_set_output(mel_graph *g, mel_val y)
{
    if (!g) return MEL_ERR_INVALID_ARGUMENT;
    if (!valid_val(g, y, "mel_g_set_output")) return MEL_ERR_GRAPH;
    if (kind_of(g, y) != K_SCAL) {
        gfail(g, "mel_g_set_output: value %d is a %s; the per-row output must be a scalar",
              (int)y, kind_of(g, y) == K_VEC ? "vector" : "index");
        return MEL_ERR_GRAPH;
    }
    g->out = y;
    return MEL_OK;
}

mel_status mel_g_set_count(mel_graph *g, mel_val c)
{
    if (!g) return MEL_ERR_INVALID_ARGUMENT;
    if (!valid_val(g, c, "mel_g_set_count")) return MEL_ERR_GRAPH;
    if (kind_of(g, c) != K_SCAL) {
        gfail(g, "mel_g_set_count: value %d is not a scalar", (int)c);
        return MEL_ERR_GRAPH;
    }
    g->count = c;
    return MEL_OK;
}

mel_status mel_g_add_aux(mel_graph *g, const char *name, mel_val v)
{
    if (!g) return MEL_ERR_INVALID_ARGUMENT;
    if (!valid_val(g, v, "mel_g_add_aux")) return MEL_ERR_GRAPH;
    if (!name || !*name || strlen(name) >= MEL_NAME_MAX) {
        gfail(g, "mel_g_add_aux: name is NULL, empty or longer than %d characters", MEL_NAME_MAX - 1);
        return MEL_ERR_GRAPH;
    }
    if (kind_of(g, v) != K_SCAL) {
        gfail(g, "mel_g_add_aux: '%s' = value %d is not a scalar", name, (int)v);
        return MEL_ERR_GRAPH;
    }
    for (int i = 0; i < g->n_aux; i++)
        if (!strcmp(g->aux_name[i], name)) {
            gfail(g, "mel_g_add_aux: '%s' is already an output", name);
            return MEL_ERR_GRAPH;
        }
    if (g->n_aux == MEL_MAX_AUX) {
        gfail(g, "mel_g_add_aux: more than %d aux outputs", MEL_MAX_AUX);
        return MEL_ERR_GRAPH;
    }
    strcpy(g->aux_name[g->n_aux], name);
    g->aux[g->n_aux++] = v;
    return MEL_OK;
}
