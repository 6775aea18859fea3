/* Internal definitions shared by the core (lib/) and the backends: the IR,
 * transforms and plans, the context, call arguments, and the declaration
 * of every internal function of lib/ (the backend interface is
 * backends/backend.h). */
#ifndef MEL_INTERNAL_H
#define MEL_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "mel.h"

#define MEL_NAME_MAX 32
#define MEL_MAX_INPUTS 16 /* named index + scalar inputs of one program */
#define MEL_MAX_AUX 8

/* ------------------------------------------------------------- the IR */

typedef enum { K_VEC = 0, K_SCAL = 1, K_IDX = 2 } mel_kind;

/* Operations.  The VJP table in autodiff.c has one rule per entry. */
typedef enum {
    OP_LOGITS, /* leaf: logits of head `head`                          */
    OP_INDEX,  /* leaf: index input `slot`                              */
    OP_INPUT,  /* leaf: scalar input `slot`                             */
    OP_CONST,  /* leaf: cval                                            */
    OP_VOCAB,  /* leaf: V                                               */
    OP_SEED,   /* leaf: dL/dy of this row (adjoint programs only)       */
    /* unary elementwise */
    OP_NEG, OP_EXP, OP_LOG, OP_TANH, OP_SIGMOID, OP_SQUARE, OP_SQRT,
    OP_LOG1P, OP_ABS,
    OP_SIGN,   /* sign(a); not differentiable (used by the VJP of abs)  */
    /* binary elementwise with broadcast */
    OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_MIN, OP_MAX,
    OP_LT, OP_LE, OP_EQ, /* comparisons, not differentiable            */
    OP_WHERE,  /* a ? b : c                                             */
    /* reductions vector -> scalar */
    OP_SUM, OP_MEAN, OP_RMAX, OP_LSE,
    /* index access */
    OP_GATHER, /* a[idx] (0 when ignored)                               */
    OP_VALID,  /* idx != ignore_index                                   */
    OP_ONEHOT, /* vector: 1 at idx, 0 elsewhere (all 0 when ignored)    */
    OP_ARGMAXMASK, /* vector: 1 at the first argmax of a, else 0        */
    OP_BCAST,  /* scalar -> vector                                      */
    OP_STOPGRAD,
    OP_SEGSUM, /* scalar: Σ of a over the rows of this row's sequence
                * (slot 0) or group (slot 1): MEL_LEVEL_*                */
    OP_IOTA,   /* leaf vector: the column index j (0 .. V-1)            */
    OP_SEQINFO, /* leaf scalar from the layout, slot: MEL_SEQINFO_*     */
    OP__COUNT
} mel_op;

/* OP_SEGSUM levels and OP_SEQINFO fields (the node's slot) */
enum { MEL_LEVEL_SEQ = 0, MEL_LEVEL_GROUP = 1, MEL_LEVELS = 2 };
enum { MEL_SEQINFO_RANK = 0, MEL_SEQINFO_FIRST = 1, MEL_SEQINFO_GFIRST = 2, MEL_SEQINFO_N = 3 };

typedef struct mel_node {
    int16_t op;
    int8_t kind;
    int8_t grad;  /* 1 when the value depends on a differentiable leaf */
    int32_t a, b, c;
    double cval;  /* OP_CONST value                                    */
    int head;     /* OP_LOGITS                                         */
    int slot;     /* OP_INDEX / OP_INPUT: input number; OP_SEGSUM: level;
                   * OP_SEQINFO: field                                  */
} mel_node;

typedef struct mel_input_decl {
    char name[MEL_NAME_MAX];
    int is_index;
    int differentiable; /* scalar inputs only                           */
    int64_t ignore_index; /* index inputs only                          */
    int64_t limit;        /* index inputs: valid values are < min(limit, V); 0 = V */
    int layout;           /* index input holding the sequence ids (no V range) */
} mel_input_decl;

struct mel_graph {
    mel_node *nodes;
    int n, cap;
    mel_input_decl inputs[MEL_MAX_INPUTS];
    int n_inputs;
    int logits_node[MEL_MAX_HEADS]; /* -1 when unused                  */
    int head_diff[MEL_MAX_HEADS];
    int out, count;
    char aux_name[MEL_MAX_AUX][MEL_NAME_MAX];
    int aux[MEL_MAX_AUX];
    int n_aux;
    int64_t seg_len; /* rows per segment for OP_SEGSUM; 0 = none      */
    int seq_ids;     /* input slot of the sequence ids, -1 = none      */
    int64_t group;   /* sequences per group (>= 1)                     */
    int failed;
    char err[256];
};

/* One execution plan: which nodes run, in order, and where vectors live.
 * A plan has phases separated by segment sums (OP_SEGSUM): every row runs
 * phase q before any row runs phase q+1.  Scalars persist per row across
 * phases; vectors do not, so a vector needed in a later phase is
 * recomputed there (it appears again in that phase's order). */
/* What a plan computes; a backend reads this, never a plan's address. */
typedef enum mel_plan_kind {
    MEL_PLAN_FWD = 0,  /* y and aux outputs                               */
    MEL_PLAN_FB = 1,   /* y, aux, and the adjoint: dZ, input gradients    */
    MEL_PLAN_CNT = 2,  /* the count of reduction MEAN                     */
    MEL_PLAN_PRED = 3  /* a row-activity predicate (as the count)         */
} mel_plan_kind;

typedef struct mel_plan {
    mel_plan_kind kind;
    int32_t *order; /* node ids in execution order (all phases)      */
    int32_t *pslot; /* per position: scratch vector slot, -1 if none */
    int n;
    int n_slots;    /* scratch vectors per row                        */
    int n_phases;
    int32_t *phase_start; /* [n_phases + 1] positions               */
    /* Vocabulary-parallel plans (vsplit = 1, lib/vocab.c): every vector ->
     * scalar reduction (and argmaxmask) also ends a phase; it runs on the
     * process's shard in its phase, and the barrier that opens phase q
     * combines red[red_start[q] .. red_start[q + 1]) across processes.
     * phase_of[i]: the phase node i runs in (-1: not in the plan); an
     * argmaxmask runs its shard's part there and is rebuilt from the
     * combined index in later phases. */
    int vsplit;
    int32_t *phase_of; /* [n] (vsplit plans only)                      */
    int32_t *red, *red_start;
} mel_plan;

struct mel_transform {
    char name[64];
    mel_node *nodes; /* forward nodes [0, n_fwd), adjoint [n_fwd, n)  */
    int n, n_fwd;
    mel_input_decl inputs[MEL_MAX_INPUTS];
    int n_inputs;
    int logits_node[MEL_MAX_HEADS];
    int head_diff[MEL_MAX_HEADS];
    int n_heads;     /* 1 + highest head used                          */
    int out, count;
    char aux_name[MEL_MAX_AUX][MEL_NAME_MAX];
    int aux[MEL_MAX_AUX];
    int n_aux;
    int adj_head[MEL_MAX_HEADS];   /* adjoint node of each head's logits, -1 */
    int adj_input[MEL_MAX_INPUTS]; /* adjoint of each scalar input, -1      */
    /* plans */
    mel_plan fwd;    /* y and aux                                      */
    mel_plan fb;     /* y, aux and all adjoints                        */
    mel_plan cnt;    /* the count node only (no vectors)               */
    mel_plan vfwd, vfb, vcnt; /* the same, vocabulary-parallel (vsplit)  */
    int64_t seg_len; /* rows per segment (OP_SEGSUM), 0 when unused    */
    int seq_ids;     /* input slot of the sequence ids, -1: none       */
    int64_t group;   /* sequences per group (1: a group is a sequence) */
    /* Row activity (lib/transform.c, mark_activity): a predicate is a
     * scalar node computed from per-row inputs alone (no logits, no
     * segment sum) such that, on a row where it is 0, y (or an aux output)
     * is exactly 0 and no gradient reaches the logits or any input.
     * y_pred / aux_pred: index into pred[] (-1: not masked); pplan[k]
     * computes pred[k] alone. */
    int pred[1 + MEL_MAX_AUX];
    int n_pred;
    int y_pred, aux_pred[MEL_MAX_AUX];
    mel_plan pplan[1 + MEL_MAX_AUX];
};

/* ----------------------------------------------------------- the context */

typedef struct mel_backend_ops mel_backend_ops;
typedef struct mel_vp mel_vp;

struct mel_ctx {
    const mel_backend_ops *ops; /* backends/backend.h */
    void *be; /* backend state */
    int threads;
    int check_finite;
    int64_t chunk_rows;
    int64_t workspace_limit;
    int64_t tile_cols;      /* mel_set_tile_cols (0: automatic)            */
    int64_t tile_cols_used; /* of the last call or plan (0: whole rows)    */
    unsigned precision; /* mel_precision flags (mel_set_precision)      */
    int row_skipping; /* mel_set_row_skipping; default 1 */
    mel_vp *vp;         /* vocabulary parallelism (lib/vocab.c), or NULL */
    int64_t comm_bytes; /* of the last successful call (mel_get_comm_stats) */
    double comm_seconds;
    /* workspace: one arena kept between calls (grown when a call needs
     * more, released by mel_ctx_trim / mel_ctx_destroy); a call carves its
     * buffers from it.  ws_cur / ws_peak count the bytes a call uses. */
    void *arena;
    size_t arena_size, arena_used;
    int64_t ws_cur, ws_peak;
    mel_stats stats;
    int64_t active_rows; /* of the last successful call (mel_get_active_rows) */
    char err[512];
    /* mel_last_error_detail: the last failure's status and argument */
    mel_status err_status;
    mel_arg_kind err_kind;
    int err_head;
    char err_name[64];
    int64_t err_row, err_col;
};

/* ----------------------------------------------------------- the args */

typedef struct mel_bound {
    char name[MEL_NAME_MAX];
    const void *data;
    void *out;
    mel_dtype dtype;
    int64_t n;
} mel_bound;

typedef struct mel_head_args {
    int set;
    mel_matrix x, w;
    const void *bias;
    int grad_set;
    mel_matrix dx, dw;
    void *db;
    unsigned flags;
} mel_head_args;

struct mel_args {
    mel_head_args head[MEL_MAX_HEADS];
    mel_bound index[MEL_MAX_INPUTS];
    int n_index;
    mel_bound input[MEL_MAX_INPUTS];
    int n_input;
    mel_bound grad_input[MEL_MAX_INPUTS];
    int n_grad_input;
    mel_bound aux[MEL_MAX_AUX];
    int n_aux;
    mel_reduction reduction;
    const double *weights;
    void *y;
    mel_dtype y_dtype;
    const void *dy;
    mel_dtype dy_dtype;
};

/* ------------------------------------------- declarations, by file
 *
 * One declaration per internal function, here only.  The backend
 * interface (mel_backend_ops, mel_chunk, the registry) is in
 * backends/backend.h. */

/* lib/core.c: errors, workspace, parameters */
/* Set the context's error message; returns s.  ctx may be NULL (then the
 * thread-local creation error is set). */
mel_status mel_fail(mel_ctx *ctx, mel_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* mel_fail naming the argument refused (mel_last_error_detail): its kind,
 * head (-1 none), name (NULL none) and element (row, col; -1 none). */
mel_status mel_fail_arg(mel_ctx *ctx, mel_status s, mel_arg_kind kind, int head, const char *name, int64_t row,
                        int64_t col, const char *fmt, ...) __attribute__((format(printf, 8, 9)));
void mel_clear_error(mel_ctx *ctx);
/* Workspace through the context allocator (peak recorded).  mel_ws_reserve
 * makes the arena at least `bytes` (the sum of mel_ws_round of the buffers
 * about to be taken) while nothing is taken; mel_ws_alloc carves a buffer
 * (64-byte aligned), mel_ws_free gives it back (the arena is reused once
 * everything is given back). */
mel_status mel_ws_reserve(mel_ctx *ctx, size_t bytes);
size_t mel_ws_round(size_t bytes);
void *mel_ws_alloc(mel_ctx *ctx, size_t bytes);
void mel_ws_free(mel_ctx *ctx, void *p, size_t bytes);
/* The parameters set on a mel_params: count, i-th name and value. */
int mel_params_count(const mel_params *p);
const char *mel_params_name(const mel_params *p, int i);
double mel_params_value(const mel_params *p, int i);

/* lib/graph.c: the builder's generic node constructors */
const char *mel_op_name(int op);
int mel_graph_add_node(mel_graph *g, mel_node nd);
int mel_find_input(const mel_input_decl *in, int n, const char *name);
mel_val mel_g_unary(mel_graph *g, int op, mel_val a);
mel_val mel_g_binary(mel_graph *g, int op, mel_val a, mel_val b);
mel_val mel_g_reduce(mel_graph *g, int op, mel_val a);
mel_val mel_g_index_op(mel_graph *g, int op, mel_val idx);
/* OP_SEGSUM of level MEL_LEVEL_SEQ or MEL_LEVEL_GROUP */
mel_val mel_g_level_sum(mel_graph *g, int level, mel_val a);

/* lib/autodiff.c: where derivatives live.  Appends the adjoint program of
 * forward nodes [0, g->n) to g (reverse sweep from a new OP_SEED node);
 * adj[i] (g->n entries at the call) is the adjoint node of forward node i,
 * -1 when none.  MEL_ERR_GRAPH when the builder failed (g->err). */
mel_status mel_differentiate(mel_graph *g, int out, int32_t *adj);

/* lib/plan.c: execution plans */
/* Build a plan reaching `targets` (n of them); assigns vector slots. */
mel_status mel_plan_build(const mel_transform *t, mel_plan_kind kind, const int *targets, int n,
                          int vsplit, mel_plan *p);
void mel_plan_free(mel_plan *p);
/* t->fwd, t->fb and t->cnt of a differentiated transform, and
 * t->pplan[] of its activity predicates. */
mel_status mel_plan_transform(mel_transform *t);

/* A vector -> scalar reduction over the vocabulary (combined across
 * processes under vocabulary parallelism). */
static inline int mel_is_vocab_reduction(const mel_node *nodes, int i)
{
    const mel_node *nd = &nodes[i];
    return nd->kind == K_SCAL && nd->a >= 0 && nodes[nd->a].kind == K_VEC;
}

/* lib/transform.c: the activity predicates of a compiled transform
 * (t->pred, t->y_pred, t->aux_pred; see struct mel_transform). */
void mel_mark_activity(mel_transform *t);

/* lib/vocab.c: vocabulary parallelism (see mel_set_vocab_parallel) */
typedef struct mel_chunk mel_chunk;
/* Agree across processes before a call runs: every process passes its
 * status so far and the call's shape; all return the same status (the
 * first failing process's, named in the others' messages), MEL_OK only
 * when every process validated and the shapes agree and the shards tile
 * the vocabulary.  shape[]: n values that must be equal everywhere. */
mel_status mel_vp_agree(mel_ctx *ctx, mel_status s, int64_t v_rows, const int64_t *shape, int n);
/* Agree on the rows per chunk: the smallest of every process's *R (and a
 * status as above); `rows` (the rows the call runs) must be equal. */
mel_status mel_vp_agree_rows(mel_ctx *ctx, mel_status s, int64_t rows, int64_t *R);
/* The barrier that opens phase q of a vsplit plan: combine the chunk's
 * reductions listed for q across processes (one collective); buf: the
 * call's host buffer of mel_vp_buffer_bytes(ctx, p, ch->R) bytes. */
mel_status mel_vp_combine(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch,
                          double *buf);
/* Sum a [rows, cols] block (leading dimension ld, dtype f32 or f64, host
 * memory) over the processes, in place, in rank order. */
mel_status mel_vp_sum(mel_ctx *ctx, void *data, mel_dtype dt, int64_t rows, int64_t cols, int64_t ld);
/* Bytes of the host buffers the combines of a chunk of R rows need. */
int64_t mel_vp_buffer_bytes(const mel_ctx *ctx, const mel_plan *p, int64_t R);
int64_t mel_vp_offset(const mel_ctx *ctx);
int64_t mel_vp_total(const mel_ctx *ctx);
int mel_vp_partial_dx(const mel_ctx *ctx);
void mel_vp_destroy(mel_ctx *ctx);

/* lib/merge.c: the merge rules of partial reductions (the same rows over
 * parts of the vocabulary: tiles, processes), one place for every kind;
 * see the file's comment for the state.  mel_merge_partials merges K parts
 * v[j·stride] (argmaxmask: the column at v[j·stride + 1]) in order. */
#define MEL_MERGE_STATE 4
void mel_merge_init(int op, double *st);
void mel_merge_step(int op, double *st, double x, int64_t col);
double mel_merge_final(int op, const double *st, int64_t *col);
/* The merged state as one part of a further merge (argmaxmask: the column
 * encoded as a part's, -1 none, -2 NaN at column 0). */
double mel_merge_part(int op, const double *st, int64_t *col);
double mel_merge_partials(int op, const double *v, int64_t stride, int K, int64_t *col);

/* lib/program.c: a row program over a chunk.  The backend runs each phase
 * (ops->run_phase); the barriers between phases are crossed here: the
 * reductions of a vsplit plan combined across processes (comm: the call's
 * buffer, mel_vp_buffer_bytes), then the segment sums (ops->merge_segments). */
mel_status mel_run_program(mel_ctx *ctx, const mel_backend_ops *ops, const mel_transform *t, const mel_plan *p,
                           mel_chunk *ch, double *comm);

/* lib/gemm.c: the three GEMMs of a chunk on any storage dtype, from the
 * backend's primitives (see the file's comment).  conv: scratch of
 * mel_gemm_conv_bytes(ctx, storage dtype, R, D, V) bytes (NULL when 0). */
int64_t mel_gemm_wblock(const mel_backend_ops *ops, int64_t V, int64_t D);
int64_t mel_gemm_conv_bytes(const mel_ctx *ctx, mel_dtype st, int64_t R, int64_t D, int64_t V);
/* Z[R, V] = X[r0:r0+R]·Wᵀ (+ bias), Z in the compute type */
mel_status mel_gemm_logits(mel_ctx *ctx, const mel_matrix *x, int64_t r0, int64_t R,
                           const mel_matrix *w, const void *bias, void *Z, void *conv);
/* FAST16 precision with 16-bit storage st: dZ[R, V] (f32) rounded to st,
 * in place and into conv's 16-bit copy; a no-op otherwise.  Call once per
 * chunk and head before mel_gemm_grad_x / mel_gemm_grad_w and the bias sum. */
mel_status mel_gemm_round_dz(mel_ctx *ctx, void *dZ, int64_t R, mel_dtype st, int64_t D, int64_t V, void *conv);
/* dX[r0:r0+R] (+)= dZ·W; vp_sum16: a 16-bit dX is summed over the
 * processes (vocabulary parallelism) before its one rounding */
mel_status mel_gemm_grad_x(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *w,
                           const mel_matrix *dx, int64_t r0, int accumulate, void *conv, int vp_sum16);
/* 16-bit W [V, D]: acc[R, D] (+)= dZ[R, V]·f32(W), accumulated in f32 (W
 * widened block by block into conv as above); the tiled executor sums dX
 * over its tiles this way before the one rounding. */
mel_status mel_gemm_grad_x_acc(mel_ctx *ctx, const float *dZ, int64_t R, const mel_matrix *w, float *acc,
                               int accumulate, void *conv);
/* dW[V, D] += dZᵀ·X[r0:r0+R]   (dW in the compute type) */
mel_status mel_gemm_grad_w(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *x, int64_t r0,
                           const mel_matrix *dw, void *conv);

/* ------------------------------------ built-in transforms (lib/transforms/)
 *
 * A built-in is a table entry: name, help line, parameters (each with a
 * default, inclusive bounds and integrality), flags, an optional check of
 * parameter combinations, and a graph builder (no derivative code).
 * lib/transforms/builtins.c holds the table and the dispatcher
 * (mel_transform_builtin); each builder file defines its entries. */

/* Common parameter indices: every built-in lists these first, in this order. */
enum { MEL_P_IGNORE, MEL_P_SCALE, MEL_P_SOFTCAP, MEL_P_TEMP, MEL_P_VVALID, MEL_P_COMMON };
#define MEL_COMMON_PARAMS                                              \
    {"ignore_index", -100, -1e18, 1e18, 1},                            \
    {"logit_scale", 1, -1e300, 1e300, 0},                              \
    {"softcap", 0, 0, 1e300, 0},                                       \
    {"temperature", 1, 1e-300, 1e300, 0},                              \
    {"vocab_valid", 0, 0, 1e15, 1}

typedef struct mel_pdef {
    const char *name;
    double dflt, lo, hi;
    int integer;
} mel_pdef;

#define MEL_BUILTIN_MAXP 24
enum {
    /* the transform reads no labels: ignore_index is refused */
    MEL_BUILTIN_NO_LABELS = 1,
};
typedef struct mel_builtin {
    const char *name;
    const char *help;
    mel_pdef params[MEL_BUILTIN_MAXP];
    unsigned flags; /* MEL_BUILTIN_* */
    /* Optional: refuse parameter combinations (mel_fail on ctx naming the
     * transform and the parameters).  p: every parameter's value; given[k]:
     * 1 when the caller set parameter k. */
    mel_status (*check)(mel_ctx *ctx, const struct mel_builtin *b, const double *p, const char *given);
    mel_status (*build)(mel_graph *g, const double *p);
} mel_builtin;

/* lib/transforms/builtins.c: pieces shared by the builders */
/* z of head `head` after logit_scale, softcap, temperature; padded
 * columns (vocab_valid) −1e30. */
mel_val mel_bt_prep_logits(mel_graph *g, int head, int diff, const double *p);
/* lib/transforms/grpo.c */
extern const mel_builtin mel_builtin_grpo;
/* lib/transforms/pref.c */
extern const mel_builtin mel_builtin_dpo, mel_builtin_cpo, mel_builtin_simpo, mel_builtin_orpo, mel_builtin_kto;

/* The transform has a sequence layout (segments, sequence ids or groups):
 * its chunks hold whole groups (lib/engine.c, check_layout). */
static inline int mel_has_layout(const mel_transform *t)
{
    return t->seg_len > 0 || t->seq_ids >= 0 || t->group > 1;
}

/* Multiply with overflow check; returns 0 on overflow. */
static inline int mel_mul_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

#endif
