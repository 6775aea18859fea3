/* The backend interface: what the engine (lib/engine.h, lib/gemm.c) asks of
 * a backend, and the registry of the backends this build knows.
 *
 * A backend provides primitives only: memory, dense GEMMs in the compute
 * type, 16-bit widening and rounding, bias add and column sums, and the
 * row-program executor.  Everything built from them -- the chunk loop, the
 * three GEMMs of a chunk on any storage dtype (with the 16-bit
 * widen / GEMM / round loop), staging per-row results -- is written once
 * in lib/.  backends/cpu and backends/cuda each implement one
 * mel_backend_ops; backends/registry.c lists them (and loads the CUDA
 * one, a module of its own, when first asked for).
 */
#ifndef MEL_BACKEND_H
#define MEL_BACKEND_H

#include "mel_internal.h"

/* What the row executor needs for one chunk of rows [r0, r0 + R). */
struct mel_chunk {
    int64_t r0, R, V;
    /* the columns [v_off, v_off + V) of a vocabulary of v_total (V and 0
     * unless vocabulary-parallel) */
    int64_t v_off, v_total;
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
    /* The sequence layout (transforms with mel_has_layout; host memory,
     * NULL otherwise): per level (MEL_LEVEL_SEQ, MEL_LEVEL_GROUP) the
     * chunk-local rows of each of its n_seg[L] sequences / groups,
     * seg_row[L][seg_off[L][k] .. seg_off[L][k + 1]), ascending; and per
     * row the MEL_SEQINFO_N fields of OP_SEQINFO, seq_info[r·3 + field]. */
    const int64_t *seg_off[MEL_LEVELS], *seg_row[MEL_LEVELS];
    int64_t n_seg[MEL_LEVELS];
    const int8_t *seq_info;
    void *regs;                 /* per-row scalar registers [R, n] (T)     */
    int64_t *iregs;             /* per-row index registers [R, n]          */
    int threads;
};

/* The per-thread scratch of a row program (every backend and the engine's
 * sizing read it from here): n_slots vectors of V values of es bytes, then
 * the table of n vector pointers, each part 64-byte aligned.  On a device
 * "thread" is a row running at once. */
static inline int64_t mel_scratch_vp_offset(int n_slots, int64_t V, size_t es)
{
    return ((int64_t)n_slots * V * (int64_t)es + 63) / 64 * 64;
}
static inline int64_t mel_scratch_bytes(int n_slots, int n, int64_t V, size_t es)
{
    return mel_scratch_vp_offset(n_slots, V, es) + ((int64_t)n * (int64_t)sizeof(void *) + 63) / 64 * 64;
}

struct mel_backend_ops {
    const char *name;
    /* 1 when the caller's buffers and the workspace are host memory (CPU):
     * the engine then reads and writes them directly.  0 (a device):
     * every transfer goes through copy(), and zero2d clears memory. */
    int host_memory;
    /* 16-bit storage: bytes of f32 W rows widened at once by the engine's
     * dX loop (lib/gemm.c); at least 64 rows. */
    int64_t conv_block_bytes;
    /* The dW GEMM (dW += dZᵀ·X) in blocks of dW rows whose dZ columns take
     * at most this many bytes (0: one GEMM).  OpenBLAS packs the whole
     * transposed dZ it is given into a buffer of its own: one GEMM over all
     * V rows grew the process by V·R·4 bytes, as much as the chunk's logits
     * again (49 MiB at V = 32768, R = 384). */
    int64_t dw_block_bytes;

    /* ---- lifecycle */
    mel_status (*init)(mel_ctx *ctx);
    void (*fini)(mel_ctx *ctx);
    int (*threads)(mel_ctx *ctx); /* effective thread count (device: rows at once) */

    /* ---- memory */
    void *(*alloc)(mel_ctx *ctx, size_t bytes);
    void (*free)(mel_ctx *ctx, void *p);
    /* dst ← src, bytes; to_device: host → device, else device → host.
     * Synchronous: when it returns, dst holds the data. */
    mel_status (*copy)(mel_ctx *ctx, void *dst, const void *src, size_t bytes, int to_device);
    /* rows × row_bytes at p with a stride of ld_bytes set to zero */
    mel_status (*zero2d)(mel_ctx *ctx, void *p, int64_t rows, size_t row_bytes, size_t ld_bytes);

    /* ---- dense primitives (row-major) */
    /* C[M,N] = alpha·op(A)·op(B) + beta·C; all matrices of dtype ct (f32, f64).
     * grad: 1 for a gradient GEMM (dX, dW), where a backend with TF32 units
     * may use them under MEL_PRECISION_TF32; 0 for the logits. */
    mel_status (*gemm)(mel_ctx *ctx, mel_dtype ct, int transA, int transB,
                       int64_t M, int64_t N, int64_t K, double alpha,
                       const void *A, int64_t lda, const void *B, int64_t ldb,
                       double beta, void *C, int64_t ldc, int grad);
    /* Optional (NULL: the engine widens to f32 first).  A and B of 16-bit
     * dtype st16, C f32: C = op(A)·op(B) + beta·C, f32 accumulation. */
    mel_status (*gemm16)(mel_ctx *ctx, mel_dtype st16, int transA, int transB,
                         int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                         const void *B, int64_t ldb, float beta, float *C, int64_t ldc);
    /* Optional (NULL: lib/gemm.c widens W one block of mel_gemm_wblock rows
     * at a time into wbuf and calls gemm on it).  The same products and f32
     * block sums as that loop, in one call; W is 16-bit [V, D] (w->rows = V,
     * w->cols = D), wbuf holds wbuf_bytes (the W block of the conversion
     * scratch, mel_gemm_wblock(V, D)·D floats):
     *   which 0 (logits): C[R, V] = A[R, D] · f32(W)ᵀ, ldc = V
     *   which 1 (dX):     C[R, D] = A[R, V] · f32(W), lda = V, summed over
     *                     W blocks of mel_gemm_wblock rows in order.
     * The CPU runs the blocks (logits) or column tiles (dX) on its threads
     * at once, each widening its own part and calling a one-thread GEMM,
     * instead of one multi-threaded GEMM per block. */
    mel_status (*gemm_w16)(mel_ctx *ctx, int which, int64_t R, const float *A, int64_t lda,
                           const mel_matrix *w, float *C, int64_t ldc, float *wbuf, int64_t wbuf_bytes);
    /* out[r, j] = f32(m[r0 + r, j]) for r < R, j < m->cols (m bf16 or f16),
     * packed [R, cols]. */
    mel_status (*widen)(mel_ctx *ctx, const mel_matrix *m, int64_t r0, int64_t R, float *out);
    /* m[r0 + r, j] = round(g[r, j] (+ m[r0 + r, j] when accumulate)) to m's
     * 16-bit dtype, round to nearest even; g packed [R, m->cols]. */
    mel_status (*store16)(mel_ctx *ctx, const mel_matrix *m, int64_t r0, int64_t R,
                          const float *g, int accumulate);
    /* Z[r, :] += bias for r < R; Z and bias of dtype ct */
    mel_status (*add_bias)(mel_ctx *ctx, mel_dtype ct, void *Z, int64_t R,
                           int64_t V, const void *bias);
    /* db[:] += Σ_r Z[r, :] (rows in order, deterministic) */
    mel_status (*colsum)(mel_ctx *ctx, mel_dtype ct, const void *Z, int64_t R,
                         int64_t V, void *db);

    /* ---- row programs.  A backend runs one phase of a plan at a time, with
     * no barrier inside; the barriers between phases are lib's
     * (lib/program.c): segment sums through merge_segments below, and under
     * vocabulary parallelism the reductions combined across processes
     * (lib/vocab.c, by the merge rules of lib/merge.c). */
    /* 1 when run_phase executes operation op (an mel_op below OP__COUNT).
     * The engine refuses a transform with an unsupported operation. */
    int (*supports_op)(int op);
    /* Run phase q of plan p (what it computes: p->kind) over every row of
     * the chunk: positions [p->phase_start[q], p->phase_start[q + 1]).
     * Registers persist across phases.  The last phase writes the chunk's
     * y, count and aux rows, and for a MEL_PLAN_FB plan the input
     * gradients and dZ over each differentiable head's Z (entries below
     * the smallest normal number of the compute type stored as 0). */
    mel_status (*run_phase)(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q,
                            mel_chunk *ch);
    /* The merge across rows that opens phase q: each OP_SEGSUM node of the
     * phase gets, in every row, the sum of its operand over the row's
     * sequence (slot 0) or group (slot 1): the chunk's lists seg_off /
     * seg_row of that level, in their (ascending row) order; 0 for a row
     * in none.  A backend that cannot use the lists (CUDA: fixed
     * t->seg_len segments) refuses transforms with sequence ids or groups. */
    mel_status (*merge_segments)(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q,
                                 mel_chunk *ch);

    /* ---- optional (NULL: not needed / no opinion) */
    /* Wait until all queued work of the call is done and report deferred
     * errors (NULL: the backend is synchronous). */
    mel_status (*sync)(mel_ctx *ctx);
    /* Queue all further work on `stream` (a cudaStream_t; NULL: the
     * backend's own stream).  NULL: the backend has no streams. */
    mel_status (*set_stream)(mel_ctx *ctx, void *stream);
    /* The upper bound of the automatic workspace budget in bytes (CUDA:
     * half the free device memory); 0 = no opinion, then
     * MEL_DEFAULT_WORKSPACE is used. */
    int64_t (*device_budget)(mel_ctx *ctx);
    /* Entry to and exit from every public call on the context (lib/core.c,
     * lib/engine.c); calls nest.  CUDA: make the context's device current
     * (and restore the caller's on exit), and refuse to start while a CUDA
     * error of the caller's is pending (it is left for the caller). */
    mel_status (*enter)(mel_ctx *ctx);
    void (*leave)(mel_ctx *ctx);
    /* Device timing of the chunk GEMMs: gemm_mark(ctx, 0) before and
     * gemm_mark(ctx, 1) after each group of GEMMs queued; gemm_seconds(ctx),
     * after sync, the device time between the marks of this call (or < 0
     * when it could not be measured).  NULL: host timers around the calls. */
    void (*gemm_mark)(mel_ctx *ctx, int end);
    double (*gemm_seconds)(mel_ctx *ctx);
};

/* ------------------------------------------------------------ registry */

/* One backend libmel knows (backends/registry.c).  ops is NULL when this
 * build does not include it; build_hint then says how to build it.
 * ops(why, n) returns the backend's instance, or NULL with the reason in
 * why[n] when it cannot be had in this process (a module that does not
 * load: what is missing). */
typedef struct mel_backend_entry {
    mel_backend kind;
    const char *label;      /* for messages, e.g. "CUDA"                 */
    const char *enum_name;  /* e.g. "MEL_BACKEND_CUDA"                   */
    const char *build_hint; /* e.g. "configure --with-cuda"              */
    const mel_backend_ops *(*ops)(char *why, size_t n);
} mel_backend_entry;

/* The entry of `kind`, NULL when kind is not a mel_backend. */
const mel_backend_entry *mel_backend_find(mel_backend kind);
/* Entries in registry order: i in [0, mel_backend_entries()). */
int mel_backend_entries(void);
const mel_backend_entry *mel_backend_entry_at(int i);

/* The CPU backend's instance (backends/cpu/cpu.c). */
const mel_backend_ops *mel_cpu_backend(void);
/* The BLAS it calls (backends/cpu/blas_info.c): mel_info's "blas*" keys
 * (include/mel.h) into out[n]; 0 when key is not one of them. */
int mel_cpu_blas_info(const char *key, char *out, size_t n);

/* ------------------------------------------------- backend modules */

/* A backend built as a shared module of its own (the CUDA backend,
 * MEL_CUDA_MODULE_FILE, is loaded by backends/registry.c on the first
 * context that asks for it).  The module links nothing of libmel: the
 * library hands it the functions it calls, and the sizes of the structures
 * both sides read, so a module built for another libmel is refused. */
typedef struct mel_backend_host {
    const char *version; /* PACKAGE_VERSION of the library */
    size_t size_ctx, size_ops, size_chunk, size_transform;
    mel_status (*fail)(mel_ctx *ctx, mel_status s, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    const char *(*op_name)(int op);
    const char *(*dtype_name)(mel_dtype t);
} mel_backend_host;

/* The module's one exported symbol, MEL_BACKEND_MODULE_ENTRY: its backend,
 * or NULL with the reason in why[n] (built for another libmel). */
typedef const mel_backend_ops *(*mel_backend_module_fn)(const mel_backend_host *host, char *why, size_t n);
#define MEL_BACKEND_MODULE_ENTRY "mel_backend_module"
#define MEL_CUDA_MODULE_FILE "libmel-cuda.so"

#endif
