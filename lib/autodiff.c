/* Where derivatives live: the VJP table (vjp() below) is the only place
 * where derivatives exist in libmel: one rule per primitive, each written
 * with the same builder the transforms use, so the adjoint is an ordinary
 * row program run by the same executor.  Transforms never contain
 * derivative code.  mel_differentiate() runs the reverse sweep;
 * lib/transform.c compiles (checks, differentiates, plans). */
#include <string.h>

#include "mel_internal.h"

typedef struct {
    mel_graph *g;
    int32_t *adj; /* adjoint node of each forward node, -1 when none */
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
    case OP_VALID: case OP_ONEHOT: case OP_ARGMAXMASK: case OP_STOPGRAD: case OP_SEQINFO:
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
    /* y_t = Σ_{t' in S(t)} a_t' over the row's sequence or group S(t)
     *   =>  ā_t = Σ_{t' in S(t)} ȳ_t' (a sum over a set is its own adjoint;
     *   the same level) */
    case OP_SEGSUM: accum(st, a, mel_g_level_sum(g, nd.slot, gy)); break;
    }
#undef C
#undef MUL
#undef DIV
#undef SUB
#undef ADD
}

mel_status mel_differentiate(mel_graph *g, int out, int32_t *adj)
{
    ad_state st = {g, adj};
    for (int i = 0; i < g->n; i++) adj[i] = -1;
    /* reverse sweep from the seed dL/dy */
    mel_node seed;
    memset(&seed, 0, sizeof seed);
    seed.op = OP_SEED;
    seed.kind = K_SCAL;
    seed.a = seed.b = seed.c = -1;
    mel_val sv = mel_graph_add_node(g, seed);
    if (sv >= 0 && g->nodes[out].grad) adj[out] = sv;
    for (int i = out; i >= 0 && !g->failed; i--)
        if (adj[i] >= 0 && g->nodes[i].grad) vjp(&st, i, adj[i]);
    return g->failed ? MEL_ERR_GRAPH : MEL_OK;
}
