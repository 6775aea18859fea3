/* The engine's internal interface: the files of lib/ that run a call
 * (mel_forward / mel_backward / mel_forward_backward / mel_plan_call), one
 * job each, in the order a call meets them:
 *
 *   engine.c     the entry points: validate, prepare, hand the call to an
 *                executor, finish (the reduced y, the statistics)
 *   validate.c   the caller's bindings resolved into a `call`, every error
 *                named
 *   upstream.c   dL/dy and the reduction's weights, the count pass of MEAN,
 *                MEL_OVERWRITE_DW
 *   activity.c   row activity: which rows run, gather and scatter
 *   workspace.c  the budget, R*, rows per chunk, the workspace of a pass
 *   stage.c      caller memory <-> workspace: per-row values in and out,
 *                chunk binding
 *   layout.c     the sequence layout: rows' sequences, the cuts chunks end
 *                at, each chunk's lists of sequence and group rows
 *   exec_rows.c  the row executor: chunks of whole rows, 3 GEMMs per chunk
 *
 * An executor (mel_executor) plans a shape for the call's budget and runs
 * it; the engine picks one.  Only engine files include this header. */
#ifndef MEL_ENGINE_H
#define MEL_ENGINE_H

#include "backend.h"

/* Everything a call needs, resolved and validated. */
typedef struct call {
    int64_t N, V, D[MEL_MAX_HEADS];
    mel_dtype st; /* storage dtype of X and W                   */
    mel_dtype ct; /* compute dtype: f64 for f64 storage, else f32 */
    size_t es;    /* bytes of the compute dtype                  */
    int used[MEL_MAX_HEADS];   /* head read by the program            */
    int want_dz[MEL_MAX_HEADS]; /* head whose dZ must be produced      */
    const mel_bound *idx[MEL_MAX_INPUTS]; /* per transform input slot */
    const mel_bound *inp[MEL_MAX_INPUTS];
    const mel_bound *ginp[MEL_MAX_INPUTS];
    const mel_bound *aux[MEL_MAX_AUX];
    int64_t n_eff; /* rows the chunks cover: N, or the active rows when skipping */
    int64_t dx_tmp_cols; /* vocabulary parallelism: D of the widest head whose
                          * accumulated f32/f64 dX is summed over processes via
                          * a separate chunk buffer (0: none) */
    int dry;       /* mel_plan_call: shapes only, no data read but per-row inputs */
    /* the sequence layout (lib/layout.c), host malloc, NULL without one:
     * skey[i] the sequence of row i (-1: none); cuts[0 .. n_cuts) the row
     * boundaries no group straddles, ascending from 0 to N; min_rows the
     * widest gap between two cuts (1 without a layout) */
    int64_t *skey, *cuts;
    int64_t n_cuts, min_rows;
} call;

/* A chunk's layout lists (mel_chunk.seg_off / seg_row / seq_info), host
 * malloc for chunks of up to R rows (eng_chunk_layout_alloc). */
typedef struct chunk_layout_buf {
    int64_t *off[MEL_LEVELS], *row[MEL_LEVELS], *pairs;
    int8_t *info;
} chunk_layout_buf;

/* The per-row doubles of a chunk of R rows, in one buffer:
 *   y [R] | count [R] | seed [R] | aux [n_aux][R] | ginp [n_inputs][R] */
typedef struct row_bufs {
    double *y, *count, *seed;
    double *aux[MEL_MAX_AUX];
    double *ginp[MEL_MAX_INPUTS];
} row_bufs;

/* Bytes of workspace for chunks of R rows: fixed + R·per_row. */
typedef struct sizing {
    int64_t per_row, fixed, scratch_per_thread;
    int64_t conv_fixed, conv_per_row; /* dtype-conversion scratch (bf16/f16) */
    int64_t gather_per_row; /* skipping: gathered X (and dX) rows, per-row inputs */
    int64_t merge_per_row;  /* tiles: merge states of the plan's reductions */
    int threads, heads;
} sizing;

/* The workspace of one pass: its buffers and their byte sizes (eng_layout
 * sizes them, eng_acquire carves them, eng_release frees them). */
typedef struct run {
    int64_t R;
    void *Z[MEL_MAX_HEADS];
    void *scratch;
    double *rowbuf; /* the row buffer (eng_row_layout), workspace            */
    double *hrow;   /* its host mirror: rowbuf itself on a host backend  */
    void *regs;     /* [R, n] scalar registers (compute type)  */
    int64_t *iregs; /* [R, n] index registers                   */
    void *conv;     /* dtype conversion scratch, or NULL        */
    void *gather;   /* skipping: gathered rows (eng_size_gather), or NULL */
    double *comm;   /* vocabulary parallelism: the combines' buffer, or NULL */
    void *dxtmp;    /* vocabulary parallelism: a chunk's dX contribution, or NULL */
    double *merge;  /* tiles: [R, reductions, MEL_MERGE_STATE] merge states, or NULL */
    size_t bytes_Z, bytes_scratch, bytes_rows, bytes_regs, bytes_iregs, bytes_conv, bytes_gather;
    size_t bytes_comm, bytes_dxtmp, bytes_merge;
    int n_Z;        /* heads with a Z buffer                    */
    chunk_layout_buf lay; /* the chunk's sequence lists (host), with a layout */
} run;

/* The upstream gradient and the reduction's weights, host-readable, and
 * the seed scale (dL/dy of the reduced y, over the mean's count). */
typedef struct upstream {
    const void *dy;    /* [N] (NONE) or [1], or NULL               */
    const double *wv;  /* [N] weights (WEIGHTED) or NULL           */
    void *dy_tmp, *w_tmp;
    double dy0, count, scale;
} upstream;

/* Row activity (lib/activity.c).  A transform whose y (and every bound aux output) is masked by a
 * predicate of per-row inputs alone (t->pred, lib/transform.c) lets the
 * engine skip the rows where the predicate is 0: their y, aux outputs and
 * input gradients are 0 and no gradient reaches dX, dW or db.  The
 * predicate is evaluated on the host by the CPU row executor before any
 * GEMM; the chunks then hold R active rows each.  On a host backend a
 * chunk's active rows are gathered (X, dX, per-row inputs); a device
 * backend walks runs of consecutive active rows instead, when they pay
 * (eng_skip_if_runs_pay). */
typedef struct activity {
    int on;           /* inactive rows are skipped in this call            */
    int gather;       /* gather scattered active rows (host memory)        */
    int64_t n_act;    /* active rows                                       */
    int64_t *rows;    /* [n_act] active rows, ascending (host, malloc)     */
    unsigned char *active; /* [N] 1 for an active row                      */
} activity;

/* A chunk's rows gathered into the workspace (host memory): X of every
 * head, dX of heads whose dX is computed (the caller's rows when it is
 * accumulated), and the per-row inputs; views over them. */
typedef struct gathered {
    mel_matrix x[MEL_MAX_HEADS], dx[MEL_MAX_HEADS];
    const void *in[MEL_MAX_INPUTS];
} gathered;

/* ------------------------------------------------------------ executors */

/* A call as an executor gets it: validated, its upstream gradient and row
 * activity known, nothing allocated yet. */
typedef struct eng_job {
    mel_ctx *ctx;
    const mel_transform *t;
    const mel_args *a;
    call *c;
    const mel_plan *xplan; /* the row program's plan (forward or fb)      */
    int want_y, fb;        /* y wanted; gradients computed (fb plan)      */
    const upstream *u;     /* NULL when only planning                     */
    const activity *A;
} eng_job;

/* The shape an executor chose (plan) or ran (run). */
typedef struct eng_shape {
    int64_t chunk_rows;    /* rows per chunk                               */
    int64_t tile_cols;     /* vocabulary columns per tile (0: whole rows)  */
    int64_t cost_cols;     /* the width the choice was made by: tile_cols,
                            * or under vocabulary parallelism the width in
                            * the global vocabulary (the same everywhere)  */
    int64_t chunks;
    int64_t bytes;         /* workspace held at once                       */
    /* after run only: */
    double total;          /* Σ y (weighted) for a reduced y               */
    int64_t flops;         /* GEMM flops                                   */
    double gemm_seconds;   /* host time around the GEMMs                   */
} eng_shape;

typedef struct mel_executor {
    const char *name;
    /* The shape for the call's budget; nothing allocated, nothing run. */
    mel_status (*plan)(const eng_job *j, eng_shape *out);
    /* Run the call; out as plan's, plus the run's figures. */
    mel_status (*run)(const eng_job *j, eng_shape *out);
} mel_executor;

extern const mel_executor mel_exec_rows;  /* lib/exec_rows.c */
extern const mel_executor mel_exec_tiles; /* lib/exec_tiles.c */
/* Why the tiled executor cannot run this call (a phrase for a message), or
 * NULL when it can. */
const char *eng_tiles_unsupported(const eng_job *j);
/* GEMMs per chunk of the tiled executor: one logits GEMM per phase, and
 * dX and dW in the last when fb. */
int eng_tile_gemms(const eng_job *j);

/* One chunk of an executor's pass (eng_open_chunk, lib/stage.c). */
typedef struct eng_open {
    int64_t r0, R;         /* the caller's first row (gathered: its first active row), rows */
    int64_t gr0;           /* the first row in xs / dxs: r0, or 0 for gathered rows */
    const int64_t *rows;   /* the gathered rows, or NULL for consecutive rows */
    const mel_matrix *xs[MEL_MAX_HEADS], *dxs[MEL_MAX_HEADS]; /* X and dX to read and write */
    gathered g;
    mel_chunk ch;          /* rows, inputs, registers, scratch, row outputs, seeds (fb) */
} eng_open;

/* ------------------------------------------------------------ validate.c */
mel_status eng_validate(mel_ctx *ctx, const mel_transform *t, const mel_args *a, int grads, int dry, call *c);

/* ------------------------------------------------------------ upstream.c */
mel_status eng_get_upstream(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                            upstream *u);
void eng_free_upstream(upstream *u);
mel_status eng_zero_overwritten(mel_ctx *ctx, const mel_args *a, const call *c);
mel_status eng_count_pass_bytes(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                                int64_t *out);

/* ------------------------------------------------------------ activity.c */
mel_status eng_eval_activity(mel_ctx *ctx, const mel_transform *t, const call *c, int want_y, activity *A);
void eng_free_activity(activity *A);
void eng_next_chunk(const activity *A, const call *c, int64_t Rmax, int64_t k0, int64_t *r0, int64_t *R,
                    const int64_t **rows);
/* The chunks of the walk at Rmax rows per chunk (a plan's count). */
int64_t eng_count_chunks(const activity *A, const call *c, int64_t Rmax);
mel_status eng_zero_inactive(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                             const activity *A, int want_y, int fb);
void eng_gather_rows(const mel_transform *t, const mel_args *a, const call *c, const run *w, int fb,
                     const int64_t *rows, int64_t R, gathered *g);
void eng_scatter_dx(const mel_args *a, const call *c, const gathered *g, const int64_t *rows, int64_t R);
/* No gather (device backends): skipping off for the call unless the runs
 * of active rows pay for their chunks (lib/activity.c). */
void eng_skip_if_runs_pay(const mel_plan *p, const call *c, activity *A);

/* ------------------------------------------------------------ workspace.c */
row_bufs eng_row_layout(const mel_transform *t, double *base, int64_t R);
/* R*: the rows below which a chunk's GEMMs are bound by reading W */
int64_t eng_gemm_bound_rows(const mel_plan *p, const call *c);
void eng_size_call(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c, sizing *sz);
void eng_size_gather(const mel_transform *t, const call *c, int fb, const mel_args *a, sizing *sz);
mel_status eng_layout(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                      const sizing *sz, int need_Z, run *w);
int64_t eng_run_bytes(const run *w);
/* The relative time per logit of a chunk of R rows × cols columns whose
 * `gemms` GEMMs (of compute type es) each cost 2·R·cols·D flops:
 * gemms / min(the machine balance, their arithmetic intensity)
 * (MEL_GEMM_BALANCE, lib/workspace.c). */
double eng_gemm_cost(int64_t R, int64_t cols, size_t es, int gemms);
/* R*: the rows below which a chunk's GEMMs are bound by streaming W, dW. */
int64_t eng_gemm_bound_rows(const mel_plan *p, const call *c);
mel_status eng_acquire(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const call *c,
                       const sizing *sz, int need_Z, run *w);
void eng_release(mel_ctx *ctx, run *w);

/* ------------------------------------------------------------ layout.c */
/* Read the layout of a transform with one (mel_has_layout): the sequence
 * ids through a host view (each >= -1), every row's sequence, the cuts and
 * min_rows into c; nothing without a layout (min_rows 1). */
mel_status eng_check_layout(mel_ctx *ctx, const mel_transform *t, call *c);
void eng_free_layout(call *c);
/* The end of the chunk that starts at row r0 with at most Rmax rows: the
 * farthest cut within reach (r0 + Rmax, at most N, without a layout). */
int64_t eng_chunk_end(const call *c, int64_t r0, int64_t Rmax);
mel_status eng_chunk_layout_alloc(mel_ctx *ctx, const call *c, int64_t R, chunk_layout_buf *L);
void eng_chunk_layout_free(chunk_layout_buf *L);
/* Fill the chunk's lists and flags for its rows [ch->r0, ch->r0 + ch->R). */
void eng_chunk_layout(const mel_transform *t, const call *c, const chunk_layout_buf *L, mel_chunk *ch);

/* ------------------------------------------------------------ stage.c */
double eng_now(void);
double eng_gemm_begin(mel_ctx *ctx);
double eng_gemm_end(mel_ctx *ctx, double t0);
double eng_read_real(const void *p, mel_dtype dt, int64_t i);
void eng_write_real(void *p, mel_dtype dt, int64_t i, double v);
mel_status eng_host_view(mel_ctx *ctx, const void *p, size_t bytes, const void **out, void **tmp);
mel_status eng_put_reals(mel_ctx *ctx, void *dst, mel_dtype dt, int64_t off, const double *v, int64_t n);
void eng_bind_chunk(const mel_ctx *ctx, const mel_transform *t, const call *c, const run *w,
                    const sizing *sz, int64_t r0, int64_t R, mel_chunk *ch);
mel_status eng_seed_rows(mel_ctx *ctx, const mel_args *a, const upstream *u, const run *w,
                         const row_bufs *dev, const row_bufs *host, const int64_t *rows, int64_t r0, int64_t R);
/* The next chunk of the walk from active row *k0 (advanced past it): its
 * rows, gathered when skipping scatters them, the chunk bound with cb's
 * sizes (the call's, or a tile's), its row outputs and for fb its seeds. */
mel_status eng_open_chunk(const eng_job *j, const call *cb, const run *w, const sizing *sz, int64_t *k0,
                          eng_open *o);
mel_status eng_collect_rows(mel_ctx *ctx, const mel_transform *t, const mel_args *a, const call *c,
                            const upstream *u, const run *w, const row_bufs *host, int want_y, int fb,
                            const int64_t *rows, int64_t r0, int64_t R, double *total);
#endif
