/* Internal definitions shared by the core (lib/) and the backends. */
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
    OP_SEGSUM, /* scalar: Σ of a over the rows of this row's segment    */
    OP_IOTA,   /* leaf vector: the column index j (0 .. V-1)            */
    OP__COUNT
} mel_op;

typedef struct mel_node {
    int16_t op;
    int8_t kind;
    int8_t grad;  /* 1 when the value depends on a differentiable leaf */
    int32_t a, b, c;
    double cval;  /* OP_CONST value                                    */
    int head;     /* OP_LOGITS                                         */
    int slot;     /* OP_INDEX / OP_INPUT: input number                 */
} mel_node;

typedef struct mel_input_decl {
    char name[MEL_NAME_MAX];
    int is_index;
    int differentiable; /* scalar inputs only                           */
    int64_t ignore_index; /* index inputs only                          */
    int64_t limit;        /* index inputs: valid values are < min(limit, V); 0 = V */
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
    int failed;
    char err[256];
};

/* One execution plan: which nodes run, in order, and where vectors live.
 * A plan has phases separated by segment sums (OP_SEGSUM): every row runs
 * phase q before any row runs phase q+1.  Scalars persist per row across
 * phases; vectors do not, so a vector needed in a later phase is
 * recomputed there (it appears again in that phase's order). */
typedef struct mel_plan {
    int32_t *order; /* node ids in execution order (all phases)      */
    int32_t *pslot; /* per position: scratch vector slot, -1 if none */
    int n;
    int n_slots;    /* scratch vectors per row                        */
    int n_phases;
    int32_t *phase_start; /* [n_phases + 1] positions               */
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
    int64_t seg_len; /* rows per segment (OP_SEGSUM), 0 when unused    */
};

/* ----------------------------------------------------------- the context */

typedef struct mel_backend_ops mel_backend_ops;

struct mel_ctx {
    mel_backend kind;
    const mel_backend_ops *ops;
    void *be; /* backend state */
    int threads;
    int check_finite;
    int64_t chunk_rows;
    int64_t workspace_limit;
    /* workspace: one arena kept between calls (grown when a call needs
     * more, released by mel_ctx_trim / mel_ctx_destroy); a call carves its
     * buffers from it.  ws_cur / ws_peak count the bytes a call uses. */
    void *arena;
    size_t arena_size, arena_used;
    int64_t ws_cur, ws_peak;
    mel_stats stats;
    char err[512];
};

/* Set the context's error message; returns s.  ctx may be NULL (then the
 * thread-local creation error is set). */
mel_status mel_fail(mel_ctx *ctx, mel_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
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

/* ---------------------------------------------------------- the backend */

/* What the executor needs for one chunk of rows [r0, r0 + R). */
typedef struct mel_chunk {
    int64_t r0, R, V;
    mel_dtype ct;               /* compute type: MEL_F32 or MEL_F64       */
    void *Z[MEL_MAX_HEADS];     /* [R, V] logits; dZ written in place     */
    const void *idx[MEL_MAX_INPUTS];   /* per input: index data (full N) */
    mel_dtype idx_dtype[MEL_MAX_INPUTS];
    const void *inp[MEL_MAX_INPUTS];   /* per input: scalar data (full N) */
    mel_dtype inp_dtype[MEL_MAX_INPUTS];
    const double *seed;         /* [R] dL/dy per row (fb plan)            */
    double *y;                  /* [R] per-row y, or NULL                 */
    double *count;              /* [R] per-row count, or NULL             */
    double *aux[MEL_MAX_AUX];   /* [R] per aux, or NULL                   */
    double *ginp[MEL_MAX_INPUTS]; /* [R] gradient of scalar inputs, or NULL */
    void *scratch;              /* per-thread scratch vectors              */
    int64_t scratch_per_thread; /* bytes                                   */
    void *regs;                 /* per-row scalar registers [R, n] (T)     */
    int64_t *iregs;             /* per-row index registers [R, n]          */
    int threads;
} mel_chunk;

struct mel_backend_ops {
    const char *name;
    /* 1 when the caller's buffers and the workspace are host memory (CPU):
     * the engine then reads and writes them directly.  0 (a device):
     * every transfer goes through copy(), and zero2d clears memory. */
    int host_memory;
    /* dst ← src, bytes; to_device: host → device, else device → host.
     * Synchronous: when it returns, dst holds the data. */
    mel_status (*copy)(mel_ctx *ctx, void *dst, const void *src, size_t bytes, int to_device);
    /* rows × row_bytes at p with a stride of ld_bytes set to zero */
    mel_status (*zero2d)(mel_ctx *ctx, void *p, int64_t rows, size_t row_bytes, size_t ld_bytes);
    mel_status (*init)(mel_ctx *ctx);
    void (*fini)(mel_ctx *ctx);
    void *(*alloc)(mel_ctx *ctx, size_t bytes);
    void (*free)(mel_ctx *ctx, void *p);
    /* C[M,N] = alpha·op(A)·op(B) + beta·C; all matrices of dtype ct. */
    mel_status (*gemm)(mel_ctx *ctx, mel_dtype ct, int transA, int transB,
                       int64_t M, int64_t N, int64_t K, double alpha,
                       const void *A, int64_t lda, const void *B, int64_t ldb,
                       double beta, void *C, int64_t ldc);
    /* Z[r, :] += bias for r < R */
    mel_status (*add_bias)(mel_ctx *ctx, mel_dtype ct, void *Z, int64_t R,
                           int64_t V, const void *bias);
    /* db[:] += Σ_r Z[r, :] */
    mel_status (*colsum)(mel_ctx *ctx, mel_dtype ct, const void *Z, int64_t R,
                         int64_t V, void *db);
    /* The three GEMMs of a chunk on storage dtypes (f64, f32, bf16, f16);
     * compute type is f64 for f64 storage, else f32.  conv is scratch of
     * conv_bytes(...) bytes for dtype conversion (NULL when 0).
     *   logits:  Z[R, V] = X[r0:r0+R]·Wᵀ (+ bias)
     *   grad_x:  dX[r0:r0+R] (+)= dZ·W
     *   grad_w:  dW[V, D] += dZᵀ·X[r0:r0+R]      (dW in the compute type) */
    mel_status (*logits)(mel_ctx *ctx, const mel_matrix *x, int64_t r0, int64_t R,
                         const mel_matrix *w, const void *bias, void *Z, void *conv);
    mel_status (*grad_x)(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *w,
                         const mel_matrix *dx, int64_t r0, int accumulate, void *conv);
    mel_status (*grad_w)(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *x,
                         int64_t r0, const mel_matrix *dw, void *conv);
    int64_t (*conv_bytes)(mel_ctx *ctx, mel_dtype storage, int64_t R, int64_t D, int64_t V);
    /* Run plan p of transform t over the chunk. */
    mel_status (*run_rows)(mel_ctx *ctx, const mel_transform *t,
                           const mel_plan *p, mel_chunk *ch);
    int (*threads)(mel_ctx *ctx); /* effective thread count (device: rows at once) */
    /* Wait until all queued work of the call is done and report deferred
     * errors (NULL: the backend is synchronous). */
    mel_status (*sync)(mel_ctx *ctx);
    /* Optional (NULL: the backend has no streams).  Queue all further work
     * on `stream` (a cudaStream_t; NULL: the backend's own stream). */
    mel_status (*set_stream)(mel_ctx *ctx, void *stream);
    /* Optional: the upper bound of the automatic workspace budget in bytes
     * (CUDA: half the free device memory); 0 = no opinion, then
     * MEL_DEFAULT_WORKSPACE is used.  NULL: no opinion. */
    int64_t (*device_budget)(mel_ctx *ctx);
};

extern const mel_backend_ops mel_cpu_backend;
/* NULL when the CUDA backend is not compiled in. */
extern const mel_backend_ops *mel_cuda_backend_ptr(void);

/* ------------------------------------------------------------- helpers */

int mel_op_is_unary(int op);
int mel_op_is_binary(int op);
const char *mel_op_name(int op);
/* Build a plan reaching `targets` (n of them); assigns vector slots. */
mel_status mel_plan_build(const mel_transform *t, const int *targets, int n,
                          mel_plan *p);
void mel_plan_free(mel_plan *p);
int mel_graph_add_node(mel_graph *g, mel_node nd);
int mel_find_input(const mel_input_decl *in, int n, const char *name);

/* Multiply with overflow check; returns 0 on overflow. */
static inline int mel_mul_ok(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}

#endif
