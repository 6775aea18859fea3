/*
 * mel.h -- libmel: memory-efficient f(X·Wᵀ) for LLM output layers.
 *
 * libmel computes y = f(X·Wᵀ + b) row by row and its gradients without
 * holding the N×V logits.  Rows are processed in chunks of R rows; each
 * chunk's logits are computed in fp32 (fp64 for fp64 inputs), the transform
 * f is applied by a small "row program", and in the backward pass the
 * upstream gradient is pushed through f by reverse-mode autodiff of that
 * program.  Then dX_c = dZ·W and dW += dZᵀ·X_c.
 *
 * Conventions used throughout this header
 *   N  rows (tokens)         D  hidden size
 *   V  vocabulary (rows of W) R  rows per chunk
 *   Shapes are written [rows, cols]; matrices are row-major views with an
 *   explicit leading dimension (row stride, in elements) ld >= cols.
 *   Sizes are int64_t.  Every function that takes a context and fails
 *   leaves a human-readable message in it (mel_last_error), naming the
 *   argument and the value at fault; functions without a context (the
 *   mel_args_* and mel_params_* setters) only return a status, and the
 *   call that uses their bindings reports what is wrong with them.  No function aborts the
 *   process on caller input.  Nothing the caller passed is modified except
 *   the output buffers named in mel_args.
 *
 * Thread safety: a mel_ctx is used by one thread at a time.  A compiled
 * mel_transform is immutable and may be shared by any number of contexts
 * and threads.  mel_args and mel_graph are plain single-thread objects.
 */
#ifndef MEL_H
#define MEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MEL_VERSION_MAJOR 0
#define MEL_VERSION_MINOR 6
#define MEL_VERSION_PATCH 0
#define MEL_VERSION_NUMBER \
    (MEL_VERSION_MAJOR * 10000 + MEL_VERSION_MINOR * 100 + MEL_VERSION_PATCH)

#if defined(__GNUC__)
#define MEL_API __attribute__((visibility("default")))
#else
#define MEL_API
#endif

/* Runtime version: MEL_VERSION_NUMBER of the library actually linked.
 * Compare with the macro to detect header/library mismatches. */
MEL_API int mel_version(void);
/* "0.6.0" */
MEL_API const char *mel_version_string(void);
/* Facts about this build and the process it runs in, as strings (since
 * 0.6): the value of `key`, or NULL for a key that is not one of these.
 * mel_info_key(i) is the i-th key, NULL past the last (for listing them).
 *   "version"        mel_version_string()
 *   "blas"           the BLAS the CPU backend calls: "OpenBLAS 0.3.21", or
 *                    "CBLAS" when it is not OpenBLAS
 *   "blas_file"      the shared library that holds cblas_sgemm ("" unknown)
 *   "blas_config"    OpenBLAS's build configuration (openblas_get_config)
 *   "blas_kernel"    the kernel OpenBLAS chose for this CPU
 *                    (openblas_get_corename, e.g. "Haswell", "SkylakeX";
 *                    the environment variable OPENBLAS_CORETYPE overrides
 *                    its choice in a DYNAMIC_ARCH build); "" unknown
 *   "blas_threads"   the BLAS's thread count now (a CPU context sets it to
 *                    its own before each GEMM); "" unknown
 *   "blas_parallel"  "openmp", "pthreads", "sequential" or ""
 *   "cuda"           "module" in a --with-cuda build (the module
 *                    libmel-cuda.so, loaded on the first CUDA context), else
 *                    "no"
 * The strings stay valid until the next call on the same thread. */
MEL_API const char *mel_info(const char *key);
MEL_API const char *mel_info_key(int i);

/* ------------------------------------------------------------------ status */

/* Status codes.  Values are pinned: they are never renumbered. */
typedef enum mel_status {
    MEL_OK = 0,
    MEL_ERR_INVALID_ARGUMENT = 1, /* a caller-supplied value is wrong        */
    MEL_ERR_SHAPE = 2,            /* sizes of arguments do not agree         */
    MEL_ERR_OUT_OF_MEMORY = 3,    /* an allocation failed                    */
    MEL_ERR_UNSUPPORTED = 4,      /* valid request this build cannot serve   */
    MEL_ERR_GRAPH = 5,            /* malformed row program                   */
    MEL_ERR_BUDGET = 6,           /* workspace budget below one row          */
    MEL_ERR_NONFINITE = 7,        /* non-finite input (mel_set_check_finite) */
    MEL_ERR_OVERFLOW = 8,         /* a size product overflows                */
    MEL_ERR_BACKEND = 9,          /* CUDA / cuBLAS reported an error         */
    MEL_ERR_INTERNAL = 10         /* a bug in libmel: please report          */
} mel_status;

/* Static string naming a status ("MEL_ERR_SHAPE: ..."); never NULL. */
MEL_API const char *mel_status_str(mel_status s);

/* ------------------------------------------------------------------ dtypes */

/* Values are pinned. */
typedef enum mel_dtype {
    MEL_F64 = 0,  /* double                                        */
    MEL_F32 = 1,  /* float                                         */
    MEL_BF16 = 2, /* bfloat16 storage (uint16_t bits)                */
    MEL_F16 = 3,  /* IEEE binary16 storage (uint16_t bits)           */
    MEL_I32 = 4,  /* int32_t (labels)                              */
    MEL_I64 = 5   /* int64_t (labels)                              */
} mel_dtype;

/* "f64", "f32", "bf16", "f16", "i32", "i64"; "?" for anything else. */
MEL_API const char *mel_dtype_name(mel_dtype t);
/* Bytes per element, 0 for an unknown dtype. */
MEL_API size_t mel_dtype_size(mel_dtype t);

/* A matrix view: element (i, j) is at data + (i*ld + j)*sizeof(dtype).
 * A view never owns its memory. */
typedef struct mel_matrix {
    void *data;
    mel_dtype dtype;
    int64_t rows, cols, ld;
} mel_matrix;

/* Convenience constructor; ld = cols when ld == 0. */
MEL_API mel_matrix mel_mat(void *data, mel_dtype dtype, int64_t rows,
                           int64_t cols, int64_t ld);

/* ----------------------------------------------------------------- context */

typedef enum mel_backend {
    MEL_BACKEND_CPU = 0, /* OpenBLAS + OpenMP; host pointers              */
    MEL_BACKEND_CUDA = 1 /* cuBLAS; device pointers (when built with it)  */
} mel_backend;

typedef struct mel_ctx mel_ctx;

/* Create a context on a backend.  *out is set to NULL on failure.
 * MEL_ERR_UNSUPPORTED when the backend is not compiled in (the message
 * says so; mel_ctx_create_error() returns it, as no context exists). */
MEL_API mel_status mel_ctx_create(mel_backend backend, mel_ctx **out);
/* Message of the last failed mel_ctx_create in this thread. */
MEL_API const char *mel_ctx_create_error(void);
/* Destroy; NULL is accepted. */
MEL_API void mel_ctx_destroy(mel_ctx *ctx);

/* Workspace caching.  A context keeps the workspace of its largest call
 * so far between calls (no allocation or page faults in a training loop);
 * mel_ctx_held_bytes says how much it holds, mel_ctx_trim releases it
 * (mel_ctx_destroy does too).  mel_stats.peak_workspace_bytes is what one
 * call used. */
MEL_API int64_t mel_ctx_held_bytes(const mel_ctx *ctx);
MEL_API void mel_ctx_trim(mel_ctx *ctx);

/* The message of this context's last failed call ("" after a call that
 * succeeded). */
MEL_API const char *mel_last_error(const mel_ctx *ctx);

/* Which argument the last failed call refused (since 0.6), for a caller
 * that names arguments its own way (a flag, a Python parameter) without
 * reading the message.  Pinned values. */
typedef enum mel_arg_kind {
    MEL_ARG_NONE = 0,        /* not about one argument (or no error)       */
    MEL_ARG_X = 1,           /* x of `head` (mel_args_head)                */
    MEL_ARG_W = 2,           /* w of `head`                                */
    MEL_ARG_BIAS = 3,        /* bias of `head`                             */
    MEL_ARG_HEAD = 4,        /* head `head` as a whole (bound or not, x and w together) */
    MEL_ARG_INDEX = 5,       /* index input `name` (e.g. "labels")         */
    MEL_ARG_INPUT = 6,       /* per-row scalar input `name`                */
    MEL_ARG_REDUCTION = 7,   /* the reduction, or its weights              */
    MEL_ARG_OUTPUT = 8,      /* y                                          */
    MEL_ARG_AUX = 9,         /* aux output `name`                          */
    MEL_ARG_GRAD_OUTPUT = 10, /* dL/dy                                     */
    MEL_ARG_GRAD_X = 11,     /* dx of `head`                               */
    MEL_ARG_GRAD_W = 12,     /* dw of `head`                               */
    MEL_ARG_GRAD_BIAS = 13,  /* db of `head`                               */
    MEL_ARG_GRAD_INPUT = 14, /* the gradient of input `name`               */
    MEL_ARG_PARAM = 15       /* parameter `name` (mel_params)              */
} mel_arg_kind;
/* The status of the context's last failed call (MEL_OK after a success)
 * and, through the pointers that are not NULL: the argument's kind, its
 * head (-1 when it has none), its name (NULL when it has none; valid until
 * the next call on ctx) and the element refused (*row, *col: -1 when the
 * error is not about one element; col -1 for a vector).  E.g. after
 * "labels[17] = 130000 is outside [0, 128256)": MEL_ARG_INDEX, -1,
 * "labels", 17, -1; after "x of head 1: [3, 7] = nan": MEL_ARG_X, 1, NULL,
 * 3, 7. */
MEL_API mel_status mel_last_error_detail(const mel_ctx *ctx, mel_arg_kind *kind, int *head, const char **name,
                                         int64_t *row, int64_t *col);

/* Threads used by the backend (CPU: OpenMP and BLAS threads; CUDA: rows
 * run at once, default the number of multiprocessors).  0 restores the
 * default (CPU: the OpenMP default).  Bounds: 0 <= n <= 4096.  OpenBLAS's
 * thread count is process-wide: contexts used at the same time from
 * several threads should use the same thread count. */
MEL_API mel_status mel_set_threads(mel_ctx *ctx, int n);
MEL_API int mel_get_threads(const mel_ctx *ctx);

/* Chunk policy.  chunk_rows > 0: that many rows per chunk (the last chunk
 * may be short; rows > N means one chunk; for a transform with segments,
 * rounded down to whole segments, at least one).  chunk_rows == 0:
 * automatic, the largest R whose workspace fits the byte budget (see
 * mel_set_workspace_limit).  Default: automatic. */
MEL_API mel_status mel_set_chunk_rows(mel_ctx *ctx, int64_t chunk_rows);
/* Workspace byte budget for automatic chunking: with chunk_rows == 0 every
 * call's peak workspace (mel_stats.peak_workspace_bytes) stays within it.
 * A fixed chunk_rows takes precedence: the call then uses what R rows need,
 * whatever the budget.  With automatic chunking, a call whose workspace
 * for one row (one segment) exceeds the budget fails with MEL_ERR_BUDGET
 * and says how many bytes are fixed and how many one row needs.
 *
 * bytes == 0 (the default) is the automatic budget: 1/10 of what the call
 * would need with all N rows in one chunk (the naive workspace: ~N·V·4
 * bytes per head in f32), clamped to [MEL_DEFAULT_WORKSPACE_MIN,
 * MEL_DEFAULT_WORKSPACE], and raised if needed to hold the fixed part
 * (per-thread vectors) plus 32 rows: at most 10% of the naive memory once
 * N·V is large, while chunks stay large enough for efficient GEMMs.
 * Automatic chunks of 64 rows or more are a multiple of 32 rows (GEMM
 * blocking), unless the transform has segments.  And no automatic chunk
 * with logits has fewer than R* rows (43 for f32/f64 training, 75 with
 * bf16/f16 storage, 32 or 80 for a forward pass): every chunk streams all
 * of W and dW, and below R* rows that costs more than the chunk's GEMMs;
 * a call of fewer than 2·R* rows runs in one chunk (doc/design.md, "The
 * GEMM floor").
 * On a CUDA context the upper bound is instead half the device memory that
 * is free when the call starts (cudaMemGetInfo; the workspace the context
 * already holds counts as free, since a call reuses or replaces it), so
 * large batches get large chunks on a large device and a nearly full
 * device gets small ones; the lower bound, the fixed + 32 rows floor and
 * the R* rows floor are the same.  An explicit limit (bytes > 0) is always
 * respected as is, on every backend. */
/* Vocabulary tiles (since 0.6).  A chunk normally holds whole rows of
 * logits (R × V): the row executor, 3 GEMMs per chunk for a training
 * step.  The tiled executor holds R × cols logits: each phase of the row
 * program (a phase ends at every vocabulary reduction: sum, max,
 * logsumexp, gather, argmax) runs tile by tile, the tiles' partial
 * reductions merged in column order, and the next phase recomputes its
 * tile's logits (fused cross-entropy: 4 GEMMs per chunk).  Results equal
 * the row executor's within rounding.
 *   cols > 0: tiles of `cols` columns (the last may be narrower; cols >= V
 *   is one tile of the whole row, still through the tiled executor), rows
 *   per chunk from mel_set_chunk_rows or the budget as usual.
 *   cols == 0 (default): automatic.  With an explicit workspace limit whose
 *   whole-row chunks would have fewer than 2·R* rows (or not one row), the
 *   tiled executor runs when its chunks cost less per flop (a budget of
 *   64 KiB then runs V up to 2^20), with the tile width whose chunks have
 *   the highest GEMM arithmetic intensity; otherwise whole rows.
 * With bf16/f16 storage dX is summed over the tiles in f32 and rounded
 * once, as with whole rows.  Under vocabulary parallelism the tiles cover
 * each process's shard (every process must set the same tile_cols).  Not
 * yet tiled (MEL_ERR_UNSUPPORTED when cols > 0; whole rows when
 * automatic): the CUDA backend.
 * mel_get_tile_cols: the tile width of the last call or mel_plan_call
 * (0: whole rows, the row executor). */
MEL_API mel_status mel_set_tile_cols(mel_ctx *ctx, int64_t cols);
MEL_API int64_t mel_get_tile_cols(const mel_ctx *ctx);

#define MEL_DEFAULT_WORKSPACE ((int64_t)512 << 20)     /* the default's upper bound */
#define MEL_DEFAULT_WORKSPACE_MIN ((int64_t)16 << 20)  /* the default's lower bound */
MEL_API mel_status mel_set_workspace_limit(mel_ctx *ctx, int64_t bytes);

/* Non-finite inputs.  By default NaN and ±Inf in X, W, bias or per-row
 * inputs propagate as in the naive computation (a NaN logit makes that
 * row's loss and gradients NaN; +Inf logits give NaN like the naive
 * softmax).  With check != 0 every call first scans X, W, bias and the
 * per-row float inputs and fails with MEL_ERR_NONFINITE naming the first
 * bad element ("x of head 0: [3, 7] = nan").  The scan reads every input
 * once (about the cost of reading W).  Default: 0. */
MEL_API mel_status mel_set_check_finite(mel_ctx *ctx, int check);

/* GEMM precision of the gradients (dX = dZ·W, dW += dZᵀ·X), a set of flags;
 * the logits are computed and kept in fp32 (f64 storage: fp64) and dW is
 * accumulated in fp32 (f64) in every mode.
 *   MEL_PRECISION_EXACT (0, the default): dZ enters both gradient GEMMs in
 *     the compute type (f32, f64) as the row program produced it; 16-bit
 *     X and W are widened to f32 exactly.  The CPU and CUDA backends differ
 *     only in the order of the sums.
 *   MEL_PRECISION_FAST16: with bf16 / f16 storage, dZ is rounded to the
 *     storage dtype (round to nearest even) before the gradient GEMMs and
 *     the bias gradient; the GEMMs then read 16-bit dZ, W and X with fp32
 *     accumulation (cuBLAS tensor cores on CUDA; on the CPU the rounded dZ
 *     is widened and multiplied in fp32, the same rounding).  No effect on
 *     f32 / f64 storage.  Error: doc/api.md "Precision".
 *   MEL_PRECISION_TF32: with f32 storage on CUDA, the gradient GEMMs may
 *     use TF32 tensor cores (inputs rounded to 10 mantissa bits, fp32
 *     accumulation).  The CPU has no TF32 and computes in full fp32.
 * Unknown bits: MEL_ERR_INVALID_ARGUMENT. */
typedef enum mel_precision {
    MEL_PRECISION_EXACT = 0,
    MEL_PRECISION_FAST16 = 1,
    MEL_PRECISION_TF32 = 2
} mel_precision;
MEL_API mel_status mel_set_precision(mel_ctx *ctx, unsigned flags);
/* The flags set (0 for a NULL ctx). */
MEL_API unsigned mel_get_precision(const mel_ctx *ctx);

/* Row skipping (since 0.3).  When a transform's y, and every aux output
 * the call binds, is masked by a predicate of the per-row inputs alone --
 * y = where(c, v, 0) or c·v with c computed from labels (valid()), masks
 * or other per-row inputs, never from the logits -- a row where c is 0
 * has y = 0, aux outputs 0, and no gradient: the engine evaluates c for
 * every row before any GEMM and runs the GEMMs on the active rows only,
 * in chunks of R active rows (gathered on the CPU backend, runs of
 * consecutive rows on a device).  Skipped rows get y = 0 (reduction
 * NONE), aux outputs 0, input gradients 0, and dX rows 0 (left untouched
 * with MEL_ACCUMULATE_DX, as a zero gradient added); a MEAN still divides
 * by the count of all rows.  The predicate is found by the compiler in
 * any row program (see doc/design.md, "Row skipping"); a transform with
 * segment sums never skips.  Results equal those without skipping except
 * where the unskipped computation gives NaN from 0·∞ on a masked row.
 * on = 0 runs every row (for comparison).  Default: 1. */
MEL_API mel_status mel_set_row_skipping(mel_ctx *ctx, int on);
MEL_API int mel_get_row_skipping(const mel_ctx *ctx);

/* ------------------------------------------------- vocabulary parallelism
 *
 * (since 0.5) W split by vocabulary rows across the processes of an MPI
 * communicator: this process holds rows [v_offset, v_offset + V_r) of the
 * vocabulary of v_total columns (V_r = the rows of the w it binds; bias and
 * a teacher / reference head sharded the same way).  Every vector -> scalar
 * reduction of the row program (sum, mean, max, logsumexp, gather, and those
 * the autodiff generates) is combined across the processes, one collective
 * per reduction phase per chunk, combined by libmel in rank order
 * (deterministic for a fixed process count); no process ever holds a full
 * row of logits.  y, aux outputs and input gradients come out identical on
 * every process; dW and db are this process's shard; dX is summed over the
 * processes by an MPI all-reduce, one per chunk (or left as this process's
 * partial sum with MEL_VP_PARTIAL_DX, for a caller that reduces it
 * itself).  Labels stay global column ids.  Every process must
 * make the same calls with the same X, labels, inputs and options; a call
 * is then collective (mel_plan_call too).  Shards must tile [0, v_total)
 * (checked at each call: all processes agree on the shapes first and fail
 * together, naming the process at fault).
 *
 * comm points at an MPI_Comm (pass &comm); libmel duplicates it (a
 * collective call), so its messages never mix with the caller's.  NULL
 * switches vocabulary parallelism off (v_offset, v_total and flags must
 * then be 0).  CPU backend only; MEL_ERR_UNSUPPORTED with a message when
 * libmel was built without MPI (configure --with-mpi), on a CUDA context,
 * or when MPI is not initialised. */
#define MEL_VP_PARTIAL_DX 1u /* leave dX as this process's partial sum */
MEL_API mel_status mel_set_vocab_parallel(mel_ctx *ctx, const void *comm, int64_t v_offset,
                                          int64_t v_total, unsigned flags);
/* 1 when vocabulary parallelism is on; then *rank, *size, *v_offset,
 * *v_total (any may be NULL) describe it.  0 otherwise. */
MEL_API int mel_get_vocab_parallel(const mel_ctx *ctx, int *rank, int *size, int64_t *v_offset,
                                   int64_t *v_total);
/* The last successful call's communication on this process: bytes
 * received from the other processes (the row reductions' allgathers
 * exactly; dX's all-reduce counted as a ring all-reduce moves it,
 * 2·(K−1)/K of the block) and the wall seconds spent in collectives,
 * waiting for the slowest process included.  0 without vocabulary
 * parallelism. */
MEL_API void mel_get_comm_stats(const mel_ctx *ctx, int64_t *bytes, double *seconds);

/* ------------------------------------------------- CUDA streams and memory
 *
 * On a MEL_BACKEND_CUDA context every buffer bound in mel_args (X, W, bias,
 * labels, per-row inputs, weights, y, aux outputs, dL/dy and all gradients)
 * is device memory on the device that was current when the context was
 * created; on MEL_BACKEND_CPU it is host memory.  The helpers below let a
 * caller allocate and fill such buffers through the context, without
 * linking the CUDA runtime, so the same code serves both backends.
 */

/* Queue all of this context's device work (kernels, cuBLAS GEMMs, copies)
 * on `stream`, a cudaStream_t passed as void *; NULL goes back to the
 * context's own stream (the default: a blocking stream created with the
 * context, ordered with the legacy default stream).  To use the legacy
 * default stream itself pass cudaStreamLegacy.  Work libmel queued on the
 * previous stream is ordered before anything queued on the new one (an
 * event, no host wait).  libmel synchronises the stream only where it must
 * return data to the host: the end of every mel_forward / mel_backward /
 * mel_forward_backward call (so outputs are complete when it returns),
 * mel_to_device / mel_to_host, and releasing memory (mel_free, workspace
 * regrowth, mel_ctx_trim, mel_ctx_destroy).  The stream must stay valid
 * until another one is set or the context is destroyed.
 * MEL_ERR_UNSUPPORTED (with a message) on a context that is not CUDA. */
MEL_API mel_status mel_set_cuda_stream(mel_ctx *ctx, void *stream);

/* Memory for the caller's buffers: device memory on a CUDA context
 * (cudaMalloc), host memory on the CPU backend (malloc).  Not counted as
 * workspace (mel_stats, mel_ctx_held_bytes) and not released by
 * mel_ctx_trim; free it with mel_free on the same context before
 * destroying the context.  bytes == 0 allocates a minimal block.
 * MEL_ERR_INVALID_ARGUMENT when out is NULL, MEL_ERR_OUT_OF_MEMORY when
 * the allocation fails (*out is then NULL). */
MEL_API mel_status mel_alloc(mel_ctx *ctx, size_t bytes, void **out);
/* Free memory from mel_alloc (waits for the work queued on the context's
 * stream first).  NULL is accepted. */
MEL_API void mel_free(mel_ctx *ctx, void *p);
/* Copy bytes from host memory src to memory dst of the context (device
 * memory on CUDA), and back.  Synchronous: ordered after the work queued on
 * the context's stream, and complete when the function returns.  On the
 * CPU backend both are memcpy.  bytes == 0 does nothing; otherwise a NULL
 * dst or src is MEL_ERR_INVALID_ARGUMENT; a CUDA failure is
 * MEL_ERR_BACKEND. */
MEL_API mel_status mel_to_device(mel_ctx *ctx, void *dst, const void *src, size_t bytes);
MEL_API mel_status mel_to_host(mel_ctx *ctx, void *dst, const void *src, size_t bytes);

/* Statistics of the last successful call on this context. */
typedef struct mel_stats {
    int64_t chunk_rows;           /* rows per chunk used                   */
    int64_t chunks;               /* number of chunks                      */
    int64_t peak_workspace_bytes; /* peak bytes held by the allocator      */
    int64_t gemm_flops;           /* 2·M·N·K summed over GEMMs             */
    double seconds;               /* wall time of the call                 */
    double gemm_seconds;          /* part of it spent in GEMMs             */
} mel_stats;
MEL_API void mel_get_stats(const mel_ctx *ctx, mel_stats *out);
/* Rows the GEMMs of the last successful call ran on (since 0.3): N, or
 * fewer when rows were skipped (mel_set_row_skipping).  A function rather
 * than a mel_stats field so that mel_stats keeps its 0.2 layout. */
MEL_API int64_t mel_get_active_rows(const mel_ctx *ctx);

/* ------------------------------------------------------------ row programs
 *
 * A transform is a graph of row-wise primitives built with mel_graph_*.
 * Per row a value is a VECTOR (length V), a SCALAR, or an INDEX.  Builder
 * functions return a value handle (>= 0) or -1 on error; errors are sticky
 * (a later use of -1 propagates) and reported by mel_graph_compile.
 * Binary operations broadcast a scalar against a vector.
 *
 * No derivative is ever written by the user: mel_graph_compile runs
 * reverse-mode autodiff over the primitives (each has one VJP rule).
 */
typedef struct mel_graph mel_graph;
typedef struct mel_transform mel_transform;
typedef int32_t mel_val;

MEL_API mel_graph *mel_graph_new(void); /* NULL on out-of-memory */
MEL_API void mel_graph_free(mel_graph *g);

/* -- leaves -- */
/* The logits of head h (0 <= h < MEL_MAX_HEADS): z = x·Wᵀ (+ b), fp32 or
 * fp64.  differentiable != 0 asks for dX, dW (and db) of that head. */
#define MEL_MAX_HEADS 4
MEL_API mel_val mel_g_logits(mel_graph *g, int head, int differentiable);
/* A per-row index input (e.g. "labels"), int32 or int64 at call time.
 * Values must be in [0, V) or equal ignore_index. */
MEL_API mel_val mel_g_index(mel_graph *g, const char *name, int64_t ignore_index);
/* A per-row scalar input (e.g. "advantages"); differentiable != 0 lets
 * callers ask for its gradient. */
MEL_API mel_val mel_g_input(mel_graph *g, const char *name, int differentiable);
/* A constant scalar. */
MEL_API mel_val mel_g_const(mel_graph *g, double c);
/* V as a scalar (the vector length of this call). */
MEL_API mel_val mel_g_vocab(mel_graph *g);
/* The vector of column indices 0, 1, ..., V−1 (e.g. to mask padded
 * vocabulary columns: mel_g_lt(g, mel_g_iota(g), mel_g_const(g, V_valid))). */
MEL_API mel_val mel_g_iota(mel_graph *g);

/* -- elementwise unary (vector -> vector, scalar -> scalar) -- */
MEL_API mel_val mel_g_neg(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_exp(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_log(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_tanh(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_sigmoid(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_square(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_sqrt(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_log1p(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_abs(mel_graph *g, mel_val a);
/* -- binary with scalar<->vector broadcast -- */
MEL_API mel_val mel_g_add(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_sub(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_mul(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_div(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_min(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_max(mel_graph *g, mel_val a, mel_val b);
/* -- comparisons: 1.0 where true else 0.0; never differentiable -- */
MEL_API mel_val mel_g_lt(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_le(mel_graph *g, mel_val a, mel_val b);
MEL_API mel_val mel_g_eq(mel_graph *g, mel_val a, mel_val b);
/* -- selection: cond != 0 ? a : b (cond not differentiable) -- */
MEL_API mel_val mel_g_where(mel_graph *g, mel_val cond, mel_val a, mel_val b);
/* -- reductions vector -> scalar -- */
MEL_API mel_val mel_g_sum(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_mean(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_rmax(mel_graph *g, mel_val a);
MEL_API mel_val mel_g_logsumexp(mel_graph *g, mel_val a); /* max-shifted */
/* -- index access -- */
/* a[idx]; 0 for a row whose index equals ignore_index. */
MEL_API mel_val mel_g_gather(mel_graph *g, mel_val a, mel_val idx);
/* 1.0 for rows whose index is not ignore_index, else 0.0. */
MEL_API mel_val mel_g_valid(mel_graph *g, mel_val idx);
/* -- segments (several consecutive rows, e.g. the T tokens of a sequence) -- */
/* Every row is in a segment of `rows` consecutive rows (row i is in segment
 * i / rows); N must be a multiple of it, and chunks are aligned to it. */
MEL_API mel_status mel_g_set_segment(mel_graph *g, int64_t rows);
/* Scalar -> scalar: Σ of a over the rows of this row's segment (sequence;
 * 0 for a row in none).  The engine evaluates the program in phases around
 * each segment sum. */
MEL_API mel_val mel_g_segment_sum(mel_graph *g, mel_val a);
/* -- sequences of any length and groups of sequences (
 *    doc/design.md, "Sequences and groups") -- */
/* Row i is in sequence name[i], an index input (i32 / i64) bound like a
 * label but not range-checked against V: ids >= 0, -1 for a row in no
 * sequence.  A sequence's rows need not be consecutive.  Exclusive with
 * mel_g_set_segment (MEL_ERR_GRAPH naming both).  Every chunk holds whole
 * groups: it ends only where no group has rows on both sides. */
MEL_API mel_status mel_g_set_sequence_ids(mel_graph *g, const char *name);
/* Sequences s with the same s / sequences form a group; s % sequences is
 * the sequence's rank in it (default 1: a group is a sequence).  Needs
 * mel_g_set_segment or mel_g_set_sequence_ids. */
MEL_API mel_status mel_g_set_group(mel_graph *g, int64_t sequences);
/* Scalar -> scalar: Σ of a over the rows of this row's group. */
MEL_API mel_val mel_g_group_sum(mel_graph *g, mel_val a);
/* Layout leaves (not differentiable): the rank of the row's sequence in its
 * group (-1 in none); 1.0 on the first (lowest) row of each sequence / of
 * each group, else 0.0. */
MEL_API mel_val mel_g_sequence_rank(mel_graph *g);
MEL_API mel_val mel_g_sequence_first(mel_graph *g);
MEL_API mel_val mel_g_group_first(mel_graph *g);
/* A composition: the value of a (a per-sequence value, equal on every row
 * of its sequence, e.g. a segment sum) at the sequence of rank k of this
 * row's group, on every row of the group:
 * group_sum(where(sequence_first · (sequence_rank == k), a, 0)). */
MEL_API mel_val mel_g_group_read(mel_graph *g, mel_val a, int64_t k);
/* -- gradient control -- */
MEL_API mel_val mel_g_stop_gradient(mel_graph *g, mel_val a);

/* -- compositions (built from the primitives above) -- */
MEL_API mel_val mel_g_clamp(mel_graph *g, mel_val a, double lo, double hi);
MEL_API mel_val mel_g_scale(mel_graph *g, mel_val a, double c); /* a·c */
MEL_API mel_val mel_g_log_softmax(mel_graph *g, mel_val z);
MEL_API mel_val mel_g_softmax(mel_graph *g, mel_val z);
MEL_API mel_val mel_g_softcap(mel_graph *g, mel_val z, double cap); /* cap·tanh(z/cap) */

/* -- outputs -- */
/* The per-row result y (a scalar).  Required, set once. */
MEL_API mel_status mel_g_set_output(mel_graph *g, mel_val y);
/* The per-row count used by reduction MEAN (e.g. mel_g_valid(labels)).  It
 * must not depend on logits.  Default: every row counts 1. */
MEL_API mel_status mel_g_set_count(mel_graph *g, mel_val c);
/* An extra per-row scalar output (no gradient flows from it), written when
 * the caller binds a buffer of that name with mel_args_aux. */
MEL_API mel_status mel_g_add_aux(mel_graph *g, const char *name, mel_val v);

/* Validate, differentiate and compile.  On success *out owns an immutable
 * transform; the graph may then be freed or reused.  ctx receives the
 * error message (may be NULL; then mel_ctx_create_error() has it). */
MEL_API mel_status mel_graph_compile(mel_ctx *ctx, const mel_graph *g,
                                     const char *name, mel_transform **out);
MEL_API void mel_transform_free(mel_transform *t);
MEL_API const char *mel_transform_name(const mel_transform *t);
/* Human-readable listing of the forward and adjoint programs. */
MEL_API char *mel_transform_dump(const mel_transform *t); /* free() it */
/* Number of vector slots the program keeps live at once (for budgets). */
MEL_API int mel_transform_vector_slots(const mel_transform *t);
MEL_API int mel_transform_num_heads(const mel_transform *t);
/* 1 when head h is read by the transform, 2 when it is also differentiable. */
MEL_API int mel_transform_head(const mel_transform *t, int h);
/* The named per-row inputs the transform reads (all must be bound): their
 * number, and the i-th one's name (NULL when out of range), with
 * *is_index = 1 for an index input (mel_args_index), 0 for a scalar one
 * (mel_args_input), and *differentiable for a scalar input's gradient.
 * Either out pointer may be NULL. */
MEL_API int mel_transform_num_inputs(const mel_transform *t);
MEL_API const char *mel_transform_input(const mel_transform *t, int i, int *is_index,
                                        int *differentiable);
/* The aux outputs (mel_args_aux): number and names. */
MEL_API int mel_transform_num_aux(const mel_transform *t);
MEL_API const char *mel_transform_aux(const mel_transform *t, int i);
/* The sequence layout (doc/design.md, "Sequences and groups"): the name of
 * the sequence-ids index input (NULL when the transform has none; it is
 * also listed by mel_transform_input), with *segment the fixed segment
 * length (0: none) and *group the sequences per group (1: a group is one
 * sequence).  Either pointer may be NULL; t NULL gives NULL, 0, 1. */
MEL_API const char *mel_transform_layout(const mel_transform *t, int64_t *segment, int64_t *group);

/* --------------------------------------------------------------- built-ins
 *
 * Built-in transforms by name with named numeric parameters.  See
 * doc/transforms.md for each one's formula, inputs and parameters.
 */
typedef struct mel_params mel_params;
MEL_API mel_params *mel_params_new(void);
MEL_API void mel_params_free(mel_params *p);
/* Set a parameter; replaces an earlier value of the same name. */
MEL_API mel_status mel_params_set(mel_params *p, const char *name, double v);
/* Read back parameter `name` (since 0.2): 1 when it was set on p, with its
 * value in *v (when v != NULL); 0 when it was not set, or p or name is NULL
 * (*v is then left as it was). */
MEL_API int mel_params_get(const mel_params *p, const char *name, double *v);

/* Build built-in transform `name` with parameters p (NULL: defaults).
 * Unknown names, unknown parameters and out-of-range values fail with
 * MEL_ERR_INVALID_ARGUMENT and a message naming them.
 *
 * Labels of the distillation built-ins (kl, reverse_kl, jsd) only mask
 * rows, and the parameter use_labels decides at build time whether they
 * are read: 1 (default) the index input "labels" must be bound and rows
 * equal to ignore_index do not count; 0 the transform reads no labels and
 * every row counts (binding "labels", or setting ignore_index, is then an
 * error).  mel_transform_num_inputs / mel_transform_input tell which. */
MEL_API mel_status mel_transform_builtin(mel_ctx *ctx, const char *name,
                                         const mel_params *p,
                                         mel_transform **out);
/* Number of built-ins, and the i-th one's name and one-line description
 * of inputs and parameters (NULL when out of range). */
MEL_API int mel_builtin_count(void);
MEL_API const char *mel_builtin_name(int i);
MEL_API const char *mel_builtin_help(int i);
/* Parameter j (0, 1, ...) of built-in i (since 0.2): its name, with its
 * default value in *dflt (when dflt != NULL); NULL when i or j is out of
 * range.  These are exactly the names mel_transform_builtin accepts for
 * that built-in (some apply only to part of it, e.g. grpo's loss_type to
 * mel_grpo_weights; see doc/transforms.md). */
MEL_API const char *mel_builtin_param(int i, int j, double *dflt);
/* The words a parameter's values have (since 0.6): the i-th word of
 * parameter `param` with its value in *value (when value != NULL), NULL
 * past the last or for a parameter without words.  The one table that
 * tools and bindings read: grpo's loss_type grpo 0, bnpo 1, dr_grpo 2,
 * dapo 3, cispo 4, sapo 5; importance_sampling_level token 0, sequence 1
 * (every built-in's words, per transform: mel_builtin_param_word). */
MEL_API const char *mel_param_word(const char *param, int i, double *value);
/* The numeric value of a symbolic parameter value: dpo's loss_type
 * ("sigmoid" 0, "hinge" 1, "ipo" 2, "exo_pair" 3, "nca_pair" 4, "robust" 5,
 * "bco_pair" 6, "sppo_hard" 7, "aot" 8, "aot_pair" 9, "apo_zero" 10,
 * "apo_down" 11, "discopop" 12, "sft" 13, "sigmoid_norm" 14), cpo's and simpo's loss_type
 * ("sigmoid", "hinge", "ipo", "simpo"), grpo's loss_type ("grpo", "bnpo",
 * "dr_grpo", "dapo", "cispo", "sapo"), importance_sampling_level ("token",
 * "sequence") and vllm_importance_sampling_mode ("none", "token_truncate",
 * "token_mask", "sequence_truncate", "sequence_mask").
 * An unknown word fails with MEL_ERR_INVALID_ARGUMENT naming it and the
 * words the parameter takes; so does a parameter that takes no words. */
MEL_API mel_status mel_builtin_param_word(mel_ctx *ctx, const char *transform, const char *param,
                                          const char *word, double *value);

/* ------------------------------------------------------------------ GRPO
 *
 * The "grpo" built-in computes the per-token loss ℓ; TRL's loss types are
 * all Σ_i w_i·ℓ_i with per-row weights w (reduction MEL_REDUCE_WEIGHTED),
 * computed over the whole batch (never per chunk):
 *   grpo     w = m / max(Σ_t m, 1) / B / GA      (per-sequence mean, then mean)
 *   bnpo     w = m / max(Σ m, 1) / GA
 *   dr_grpo  w = m / (B · max_completion_length) / GA
 *   dapo     w = m / max(num_items_in_batch, 1)  (Σ m when num_items_in_batch = 0)
 *   cispo    as dapo;  sapo  as grpo  (their per-token ℓ differs: the built-in's
 *            loss_type 4 / 5)
 * mask [B·T] row-major (row b·T + t is token t of sequence b); w [B·T].
 */
typedef enum mel_grpo_loss_type {
    MEL_GRPO_GRPO = 0,
    MEL_GRPO_BNPO = 1,
    MEL_GRPO_DR_GRPO = 2,
    MEL_GRPO_DAPO = 3,
    MEL_GRPO_CISPO = 4, /* dapo's weights */
    MEL_GRPO_SAPO = 5   /* grpo's weights */
} mel_grpo_loss_type;
MEL_API mel_status mel_grpo_weights(mel_ctx *ctx, mel_grpo_loss_type type, int64_t B,
                                    int64_t T, const double *mask,
                                    int64_t max_completion_length,
                                    double num_items_in_batch, int64_t grad_accum,
                                    double *w);
/* Group-normalised advantages: rewards [n] in groups of `group` consecutive
 * completions; adv = (r − mean_group) / (std_group + 1e-4) with Bessel's
 * std (scale != 0; needs group >= 2), or r − mean_group (scale == 0). */
MEL_API mel_status mel_group_advantages(mel_ctx *ctx, const double *rewards, int64_t n,
                                        int64_t group, int scale, double *adv);
/* The loss-type policy in one place (since 0.6): the weights w [N] of the
 * reduction MEL_REDUCE_WEIGHTED for the "grpo" built-in's parameters p --
 * loss_type, seq_len (T: the N rows are B = N / T sequences of T tokens),
 * max_completion_length, num_items_in_batch, ignore_index, each the
 * built-in's default when not set -- from the completion mask [N] (host,
 * f64) and the labels [N] (host, i32 or i64; NULL: none): a token whose
 * label is ignore_index counts nowhere (the effective mask, as the
 * transform counts tokens), then mel_grpo_weights with grad_accum.
 * Refused (MEL_ERR_INVALID_ARGUMENT, mel_last_error_detail naming the
 * parameter or the input): seq_len not set or N not a multiple of it, no
 * mask, labels of another dtype, and parameters the loss type does not
 * read: max_completion_length unless loss_type is dr_grpo,
 * num_items_in_batch unless it is dapo (the message names both). */
MEL_API mel_status mel_grpo_loss_weights(mel_ctx *ctx, const mel_params *p, int64_t N, const double *mask,
                                         const void *labels, mel_dtype labels_dtype, int64_t grad_accum,
                                         double *w);

/* ------------------------------------------------------------- call args
 *
 * A mel_args binds the caller's buffers to a transform's inputs and
 * outputs.  Setters only record pointers; everything is validated by the
 * call that uses it (mel_forward / mel_backward / mel_forward_backward).
 */
typedef enum mel_reduction {
    MEL_REDUCE_NONE = 0,    /* y[i] per row                                  */
    MEL_REDUCE_SUM = 1,     /* Σ y_i                                         */
    MEL_REDUCE_MEAN = 2,    /* Σ y_i / Σ count_i (0 when Σ count_i == 0)     */
    MEL_REDUCE_WEIGHTED = 3 /* Σ w_i·y_i with caller weights w [N]           */
} mel_reduction;

typedef struct mel_args mel_args;
MEL_API mel_args *mel_args_new(void);
MEL_API void mel_args_free(mel_args *a);
/* Forget every binding. */
MEL_API void mel_args_clear(mel_args *a);

/* Head h: x [N, D], w [V, D] of the same float dtype, bias [V] of that
 * dtype or NULL.  All heads of a call share one dtype.  Storage f64 runs
 * in f64 (the reference path); f32, bf16 and f16 run logits and row
 * programs in f32: 16-bit values are widened to f32 for the GEMMs (on the
 * CPU in blocks of W rows, repeated per chunk; on CUDA inside cuBLAS), never
 * rounded on the way back except dX, once. */
MEL_API mel_status mel_args_head(mel_args *a, int head, mel_matrix x,
                                 mel_matrix w, const void *bias);
/* Index input `name`: n values of dtype MEL_I32 or MEL_I64. */
MEL_API mel_status mel_args_index(mel_args *a, const char *name,
                                  const void *idx, mel_dtype dtype, int64_t n);
/* Scalar per-row input `name`: n values of MEL_F32 or MEL_F64. */
MEL_API mel_status mel_args_input(mel_args *a, const char *name,
                                  const void *v, mel_dtype dtype, int64_t n);
/* Reduction (default MEAN); weights [N] (MEL_F64) for WEIGHTED, else NULL. */
MEL_API mel_status mel_args_reduction(mel_args *a, mel_reduction r,
                                      const double *weights);

/* Output y: [N] for NONE, [1] when reduced; dtype MEL_F32 or MEL_F64.
 * Reductions are accumulated in double. */
MEL_API mel_status mel_args_output(mel_args *a, void *y, mel_dtype dtype);
/* Extra per-row output `name` [N] (see mel_g_add_aux). */
MEL_API mel_status mel_args_aux(mel_args *a, const char *name, void *v,
                                mel_dtype dtype);

/* Upstream gradient dL/dy: [N] for NONE, [1] when reduced; NULL means 1. */
MEL_API mel_status mel_args_grad_output(mel_args *a, const void *dy,
                                        mel_dtype dtype);

/* Gradient buffers of head h (any may have data == NULL / be NULL to skip):
 *   dx [N, D] in x's dtype (for bf16/f16: computed in f32, rounded once);
 *   dw [V, D] in MEL_F32 (MEL_F64 for f64 heads), also for bf16/f16 heads:
 *   dW is accumulated in f32 and never rounded by libmel;
 *   db [V] in dw's dtype.
 * flags: MEL_ACCUMULATE_DX adds into dx instead of overwriting it.
 * dW and db are always accumulated (dw += ...), as gradients of a weight
 * shared across micro-batches usually are; zero them first for a fresh
 * gradient, or pass MEL_OVERWRITE_DW to have libmel zero them. */
#define MEL_ACCUMULATE_DX 1u
#define MEL_OVERWRITE_DW 2u
MEL_API mel_status mel_args_grad_head(mel_args *a, int head, mel_matrix dx,
                                      mel_matrix dw, void *db, unsigned flags);
/* Gradient of a differentiable per-row input `name`: [N], F32 or F64,
 * overwritten. */
MEL_API mel_status mel_args_grad_input(mel_args *a, const char *name,
                                       void *g, mel_dtype dtype);

/* --------------------------------------------------------------- engine */

/* y only.  1 GEMM per chunk per head; saves nothing of size N·V. */
MEL_API mel_status mel_forward(mel_ctx *ctx, const mel_transform *t,
                               const mel_args *a);
/* Gradients only, recomputing each chunk's logits (3 GEMMs per chunk
 * for a differentiable head); any upstream gradient.  At least one
 * gradient buffer must be bound (MEL_ERR_INVALID_ARGUMENT otherwise). */
MEL_API mel_status mel_backward(mel_ctx *ctx, const mel_transform *t,
                                const mel_args *a);
/* y and gradients in one pass (3 GEMMs per chunk): use when dL/dy is
 * known before the forward, as in a training step. */
MEL_API mel_status mel_forward_backward(mel_ctx *ctx, const mel_transform *t,
                                        const mel_args *a);

/* ------------------------------------------------------------- planning
 *
 * mel_plan_call (since 0.3): what a call would use, without running it:
 * the same validation, row activity and chunk sizing as the call on this
 * context (threads, chunk rows, workspace limit, row skipping), no GEMM
 * and no workspace.  The figures equal the mel_stats of the call made
 * with the same context settings and arguments.  The planner reads the
 * shapes, dtypes and flags of the bindings and the values of the per-row
 * inputs (to count active rows), never X, W, bias or any output or
 * gradient memory: x and w data may be NULL, and an output or gradient
 * buffer only needs a non-NULL pointer to be counted as requested.  A
 * per-row input left unbound counts every row as active. */
typedef enum mel_mode {
    MEL_MODE_FORWARD = 0,         /* mel_forward          */
    MEL_MODE_BACKWARD = 1,        /* mel_backward         */
    MEL_MODE_FORWARD_BACKWARD = 2 /* mel_forward_backward */
} mel_mode;

typedef struct mel_call_plan {
    int64_t rows;                 /* N                                      */
    int64_t active_rows;          /* rows the GEMMs run on (= mel_get_active_rows) */
    int row_skipping;             /* 1 when inactive rows are skipped       */
    int64_t chunk_rows;           /* = mel_stats.chunk_rows of the call     */
    int64_t chunks;               /* = mel_stats.chunks                     */
    int64_t peak_workspace_bytes; /* = mel_stats.peak_workspace_bytes       */
} mel_call_plan;

MEL_API mel_status mel_plan_call(mel_ctx *ctx, const mel_transform *t, const mel_args *a,
                                 mel_mode mode, mel_call_plan *out);

/* ------------------------------------------------------------- gradcheck
 *
 * Finite-difference check of a transform: with the inputs bound in `a`
 * (any float dtype; copied and promoted to f64, never modified), draws a
 * random projection u (seed), forms L = Σ_i u_i·y_i (reduction NONE) or
 * L = u·y (reduced), and compares dL/dθ from mel_forward_backward on the
 * f64 path with central differences (L(θ+h) − L(θ−h)) / 2h for `samples`
 * random entries of every X, W, bias and differentiable per-row input.
 * An entry passes when |g − fd| <= atol + rtol·max(|g|, |fd|).
 * The caller's output buffers are not written.  CPU backend, one process:
 * MEL_ERR_UNSUPPORTED on a vocabulary-parallel context.
 */
typedef struct mel_gradcheck_opts {
    uint64_t seed;    /* random projection and sampled entries        */
    int samples;      /* entries per tensor (default 24 when 0)       */
    double step;      /* h (default 1e-6 when 0)                      */
    double atol;      /* default 1e-7 when 0                          */
    double rtol;      /* default 1e-5 when 0                          */
} mel_gradcheck_opts;

typedef struct mel_gradcheck_report {
    int checked;        /* entries compared                             */
    int failed;         /* entries outside tolerance                    */
    double max_abs_err; /* max |g − fd|                                 */
    double max_rel_err; /* max |g − fd| / max(|g|, |fd|, 1e-300)        */
    char worst[160];    /* description of the worst entry               */
} mel_gradcheck_report;

/* MEL_OK when the check ran (inspect report->failed); an error status when
 * it could not run. */
MEL_API mel_status mel_gradcheck(mel_ctx *ctx, const mel_transform *t,
                                 const mel_args *a,
                                 const mel_gradcheck_opts *opts,
                                 mel_gradcheck_report *report);

#ifdef __cplusplus
}
#endif
#endif /* MEL_H */
