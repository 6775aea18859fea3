/* The CUDA backend against the CPU backend, on the same inputs.
 *
 * Skips ("1..0 # SKIP no CUDA device (...)") when a CUDA context cannot be
 * created: libmel built without CUDA, or no device.
 *
 * What is compared, per output (y, aux outputs, dX, dW, db, input
 * gradients): the normalised squared error
 *       nse = Σ (gpu − cpu)² / Σ cpu²
 * over the finite entries; an infinity must be the same infinity on both
 * backends; a NaN on either side fails.
 *
 *   storage   reference            tolerance
 *   f32       CPU backend, f32     nse <= 1e-10  (relative RMS 1e-5)
 *   f64       CPU backend, f64     nse <= 1e-20  (relative RMS 1e-10)
 *   bf16/f16  CPU backend, f64 on  as t/lowp.c, max |err| / max |ref|:
 *             the widened inputs     y, dW, db 3e-5; dX 2^-8 + 3e-5 (bf16),
 *                                     2^-11 + 3e-5 (f16)
 *
 * Cases: every built-in transform (ce with options, logprob, entropy,
 * z_loss, kl, reverse_kl, jsd, grpo at token and sequence level) and one
 * small graph per primitive (unary, binary with broadcasts, comparisons,
 * where, reductions, index operations with a negative and a real-column
 * ignore_index, iota, stop_gradient, segment sums, the scalar versions of
 * every operation, two differentiable heads, argmax ties), each for f32 and
 * f64: forward (reduction NONE), forward-backward (NONE with a per-row
 * upstream gradient, MEAN, WEIGHTED) and backward (MEL_ACCUMULATE_DX into a
 * pre-filled dX, MEL_OVERWRITE_DW over a pre-filled dW), at GPU chunk sizes
 * auto, 1, 7 and N, on shapes with V below, around and above the
 * executor's block of 256 threads.  Also: special values (infinities and
 * NaN of rmax, logsumexp, min, max: NaN where the CPU gives NaN, with the
 * finite gradient of rmax over NaN entries), few or many concurrent rows
 * (mel_set_threads), run-to-run determinism, bf16/f16 against the fp64
 * reference (also accumulating into dX), guard bytes before and after
 * every buffer (checked after every call), and one shape with
 * N·V > 2^31 in a single chunk (skipped with a message when the device has
 * too little free memory).
 *
 * Also: mel_set_cuda_stream (a caller's stream gives bit-identical results;
 * a non-blocking one too, also with X still being uploaded on it when the
 * call is made; a stream destroyed after its call is not touched by
 * mel_ctx_trim / mel_ctx_destroy; a stream of another device is refused)
 * and the mel_alloc / mel_to_device / mel_to_host round trip.
 * group:coverage: FAST16 and TF32 on five transforms and two shapes,
 * V = 40000, mel_set_check_finite on device data, the SUM reduction, f32
 * y / aux / input gradients / grad_output, dW and db accumulated, dX-only
 * and dW-only bindings, heads 2 and 3, mel_plan_call against the call,
 * mel_ctx_trim, segment sums over 300 segments in one chunk (k_segsum over
 * more than one block).  group:errors: a pending error of the caller's,
 * MEL_CUDA_DEBUG_SYNC, and by fault injection (MEL_CUDA_FAULT) a failed
 * device allocation and a deferred error.  group:big: N·V > 2^31 in one
 * chunk (row skipping off: every 5th label is ignored) with and without a
 * bias, and automatic chunks with skipping on (no chunk per short run).
 *
 * After a failed call on an unusable device (a sticky CUDA error) the test
 * stops ("Bail out!") instead of failing every later case for the same
 * reason.  After each group a "# counts:" line gives its GPU calls,
 * chunks, bytes moved by the test and seconds (tools/gpu/run.sh copies
 * them to its summary).
 *
 * MEL_CUDA_TEST_ONLY=text runs only the cases, and the groups
 * group:threads, group:stream, group:lowp, group:ld, group:wide16,
 * group:tf32, group:coverage, group:devices, group:errors and group:big,
 * whose name contains text.  MEL_CUDA_TEST_STANDIN=cpu runs it without a
 * GPU, a second CPU context in the GPU's place (host buffers; the stream,
 * devices, errors and big groups left out): the CPU against itself, for
 * the comparison code and the counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

#ifdef HAVE_CUDA
#include <cuda_runtime.h>

/* ------------------------------------------------------------ buffers */

enum { GUARD = 256 };
#define GUARD_BYTE 0xA5

/* A buffer with GUARD bytes of GUARD_BYTE before and after its data, in
 * device memory (dev) or host memory. */
typedef struct buf {
    int dev;
    unsigned char *base;
    size_t bytes;
} buf;

/* What the GPU part of a group costs (printed as "# counts: ..." after
 * each group; tools/gpu/run.sh puts them in its summary, to size its
 * step limits): libmel calls on the GPU, their chunks, and the bytes the
 * test itself moves between host and device. */
static struct {
    long long calls, chunks;
    double bytes;
} g_count;

static void *bdata(const buf *b) { return b->base ? b->base + GUARD : NULL; }

static void *bnew(buf *b, int dev, size_t bytes)
{
    b->dev = dev;
    b->bytes = bytes;
    b->base = NULL;
    size_t all = bytes + 2 * GUARD;
    if (dev) {
        if (cudaMalloc((void **)&b->base, all) != cudaSuccess) {
            b->base = NULL;
            return NULL;
        }
        cudaMemset(b->base, GUARD_BYTE, all);
        cudaMemset(b->base + GUARD, 0, bytes);
    } else {
        b->base = malloc(all);
        if (!b->base) return NULL;
        memset(b->base, GUARD_BYTE, all);
        memset(b->base + GUARD, 0, bytes);
    }
    return bdata(b);
}

static void bput(buf *b, const void *src, size_t bytes)
{
    if (b->dev) g_count.bytes += (double)bytes;
    if (b->dev) cudaMemcpy(b->base + GUARD, src, bytes, cudaMemcpyHostToDevice);
    else memcpy(b->base + GUARD, src, bytes);
}

static void bget(const buf *b, void *dst, size_t bytes)
{
    if (b->dev) g_count.bytes += (double)bytes;
    if (b->dev) cudaMemcpy(dst, b->base + GUARD, bytes, cudaMemcpyDeviceToHost);
    else memcpy(dst, b->base + GUARD, bytes);
}

static int bguard_ok(const buf *b)
{
    if (!b->base) return 1;
    unsigned char g[2 * GUARD];
    if (b->dev) {
        cudaMemcpy(g, b->base, GUARD, cudaMemcpyDeviceToHost);
        cudaMemcpy(g + GUARD, b->base + GUARD + b->bytes, GUARD, cudaMemcpyDeviceToHost);
    } else {
        memcpy(g, b->base, GUARD);
        memcpy(g + GUARD, b->base + GUARD + b->bytes, GUARD);
    }
    for (int i = 0; i < 2 * GUARD; i++)
        if (g[i] != GUARD_BYTE) return 0;
    return 1;
}

static void bfree(buf *b)
{
    if (!b->base) return;
    if (b->dev) cudaFree(b->base);
    else free(b->base);
    b->base = NULL;
}

/* ------------------------------------------------------------ dtypes */

static uint16_t to_bf16(double v)
{
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static double from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t to_f16(double v)
{
    _Float16 x = (_Float16)(float)v;
    uint16_t h;
    memcpy(&h, &x, 2);
    return h;
}

static double from_f16(uint16_t h)
{
    _Float16 x;
    memcpy(&x, &h, 2);
    return (double)x;
}

/* n doubles as dtype dt into out (mel_dtype_size(dt)·n bytes) */
static void encode(const double *v, int64_t n, mel_dtype dt, void *out)
{
    for (int64_t i = 0; i < n; i++) switch (dt) {
        case MEL_F64: ((double *)out)[i] = v[i]; break;
        case MEL_F32: ((float *)out)[i] = (float)v[i]; break;
        case MEL_BF16: ((uint16_t *)out)[i] = to_bf16(v[i]); break;
        case MEL_F16: ((uint16_t *)out)[i] = to_f16(v[i]); break;
        default: break;
        }
}

static void decode(const void *in, int64_t n, mel_dtype dt, double *v)
{
    for (int64_t i = 0; i < n; i++) switch (dt) {
        case MEL_F64: v[i] = ((const double *)in)[i]; break;
        case MEL_F32: v[i] = ((const float *)in)[i]; break;
        case MEL_BF16: v[i] = from_bf16(((const uint16_t *)in)[i]); break;
        case MEL_F16: v[i] = from_f16(((const uint16_t *)in)[i]); break;
        default: break;
        }
}

/* v rounded through dtype dt (the values a 16-bit run really sees) */
static void round_through(double *v, int64_t n, mel_dtype dt)
{
    void *tmp = malloc((size_t)n * 8 + 8);
    encode(v, n, dt, tmp);
    decode(tmp, n, dt, v);
    free(tmp);
}

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(99);
    }
    return p;
}

/* ------------------------------------------------------------ problems */

enum { MAXI = 4, MAXA = 6, MAXH = 2 };

/* What a transform reads and what is asked of it. */
typedef struct spec {
    char name[64];
    mel_transform *t;
    int heads;              /* heads bound: 1 or 2                      */
    int diff[MAXH];         /* gradients bound for this head            */
    int bias;               /* bias on every head                       */
    int labels;             /* binds "labels"                           */
    int64_t ignore;         /* ignore_index of the labels               */
    const char *inp[MAXI];  /* scalar inputs bound                      */
    int n_inp;
    const char *gin[MAXI];  /* input gradients asked                    */
    int n_gin;
    const char *aux[MAXA];  /* aux outputs bound                        */
    int n_aux;
    int64_t seg;            /* N must be a multiple (0: none)           */
    int64_t lab_max;        /* labels drawn below it (0: V)             */
    int prim;               /* add_prim's k, or -1 for a built-in       */
    int head0;              /* index of its first head (heads head0, head0 + 1) */
} spec;

typedef struct prob {
    int64_t N, D, V;
    double *X[MAXH], *W[MAXH], *B[MAXH];
    int64_t *lab;
    double *inp[MAXI]; /* values of spec inputs, by position            */
    double *dy;        /* [N] upstream gradient (reduction NONE)        */
    double *wts;       /* [N] weights (reduction WEIGHTED)              */
} prob;

/* M_FB_SUM comes after M__N: compare_all does not loop over it */
typedef enum { M_FWD, M_FB_NONE, M_FB_MEAN, M_FB_W, M_BWD, M__N, M_FB_SUM = M__N } mode;
static const char *mode_name[] = {"forward", "fwd-bwd NONE", "fwd-bwd MEAN", "fwd-bwd WEIGHTED",
                                  "backward NONE (accumulate dX, overwrite dW)", "fwd-bwd SUM"};

/* Outputs of one call, widened to double. */
typedef struct result {
    mel_status s;
    char err[300];
    int guards_ok;
    int64_t ny;
    double *y, *aux[MAXA], *dX[MAXH], *dW[MAXH], *db[MAXH], *gin[MAXI];
    mel_status plan_s;  /* g_plan: mel_plan_call before the call         */
    mel_call_plan plan;
    mel_stats st;       /* mel_get_stats after the call                  */
} result;

static void result_free(result *r)
{
    free(r->y);
    for (int k = 0; k < MAXA; k++) free(r->aux[k]);
    for (int h = 0; h < MAXH; h++) free(r->dX[h]), free(r->dW[h]), free(r->db[h]);
    for (int k = 0; k < MAXI; k++) free(r->gin[k]);
    memset(r, 0, sizeof *r);
}

static int64_t label_of(const spec *sp, tap_rng *rng, int64_t i, int64_t V)
{
    return i % 5 == 3 ? sp->ignore : rng_int(rng, sp->lab_max > 0 && sp->lab_max < V ? sp->lab_max : V);
}

/* When set, run() pre-fills dX with X and passes MEL_ACCUMULATE_DX, and
 * pre-fills dW and db with W and b (MEL_OVERWRITE_DW must clear them);
 * otherwise dX, dW and db start as 777 (they must be overwritten). */
static int g_acc;
/* When set, X, W, dX and dW have leading dimensions of D + 3, 5, 7, 9
 * columns: the inputs' padding holds NaN (read, it would poison the
 * results), the outputs' a sentinel that must survive the call. */
static int g_pad;
/* mel_set_precision flags for run()'s call (both backends). */
static unsigned g_prec;
/* >= 0: the device made current just around run()'s call on the GPU (the
 * context and the buffers are on the device current before); g_dev_back is
 * then 1 when libmel left that device current after the call. */
static int g_other_dev = -1, g_dev_back;
/* y, aux outputs, input gradients and grad_output in f32 (else f64). */
static int g_f32_io;
/* dW and db pre-filled with W and b and accumulated into (no
 * MEL_OVERWRITE_DW). */
static int g_dw_acc;
/* 0: dX, dW (and db) bound; 1: dX only; 2: dW and db only. */
static int g_bind;
/* mel_plan_call with the call's arguments before the call (res->plan). */
static int g_plan;
/* A caller's stream with work queued on it before the call: X of head 0
 * is replaced on the device by NaN, then uploaded again on this stream
 * behind a long device copy, with no host wait; the context works on
 * this stream (the caller sets it), so the call must see the upload. */
static cudaStream_t g_race;
/* MEL_CUDA_TEST_STANDIN=cpu: a second CPU context plays the GPU and every
 * buffer is host memory; the groups that need CUDA itself (stream,
 * devices, errors, big) are left out.  Without a GPU this runs the
 * comparison code (the CPU against itself: it must pass) and prints the
 * counts of calls and chunks a GPU run makes. */
static int g_standin;

#define PAD_OUT 1234.5

/* rows × cols of v into a new buffer with leading dimension ld, the
 * padding set to padv (tmp: scratch of rows·ld·8 bytes) */
static void put_mat(buf *b, int dev, const double *v, int64_t rows, int64_t cols, int64_t ld, mel_dtype dt,
                    double padv, void *tmp)
{
    const size_t es = mel_dtype_size(dt);
    double *row = xmalloc((size_t)ld * 8);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < ld; j++) row[j] = j < cols ? v[r * cols + j] : padv;
        encode(row, ld, dt, (char *)tmp + (size_t)(r * ld) * es);
    }
    free(row);
    bnew(b, dev, (size_t)(rows * ld) * es);
    bput(b, tmp, (size_t)(rows * ld) * es);
}

/* the rows × cols of a buffer with leading dimension ld into out; returns
 * 1 when every padding entry still holds PAD_OUT (as stored in dt) */
static int get_mat(const buf *b, int64_t rows, int64_t cols, int64_t ld, mel_dtype dt, double *out, void *tmp)
{
    const size_t es = mel_dtype_size(dt);
    double pv = PAD_OUT, pad_stored;
    unsigned char enc[8];
    encode(&pv, 1, dt, enc);
    decode(enc, 1, dt, &pad_stored);
    bget(b, tmp, (size_t)(rows * ld) * es);
    double *row = xmalloc((size_t)ld * 8);
    int pads = 1;
    for (int64_t r = 0; r < rows; r++) {
        decode((char *)tmp + (size_t)(r * ld) * es, ld, dt, row);
        memcpy(out + r * cols, row, (size_t)cols * 8);
        for (int64_t j = cols; j < ld; j++) pads &= row[j] == pad_stored;
    }
    free(row);
    return pads;
}

/* After a failed GPU call: when the device context is unusable (a sticky
 * error: a second synchronisation fails too), every later case would fail
 * for the same reason -- stop here with one clear line instead (TAP "Bail
 * out!").  A call refused for an error of the caller's left pending (the
 * errors group) is not looked into: the test takes that error itself. */
static void bail_if_device_lost(const char *name, const char *err)
{
    if (strstr(err, "already pending")) return;
    cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) return;
    cudaGetLastError();
    cudaError_t e2 = cudaDeviceSynchronize();
    if (e2 == cudaSuccess) return;
    printf("Bail out! the CUDA device is unusable after case '%s' (%s: %s; libmel said: %s); no later case "
           "can run\n", name, cudaGetErrorName(e2), cudaGetErrorString(e2), err);
    fflush(stdout);
    exit(1);
}

/* Run spec sp on problem p with storage dtype dt on ctx (device memory
 * when dev). chunk: chunk_rows (0 = automatic). */
static void run(mel_ctx *ctx, int dev, const spec *sp, const prob *p, mel_dtype dt, mode m, int64_t chunk,
                result *res)
{
    memset(res, 0, sizeof *res);
    const int gpu_side = dev; /* the call counted in g_count */
    if (g_standin) dev = 0;   /* the CPU plays the GPU: host buffers */
    const int64_t N = p->N, D = p->D, V = p->V;
    const mel_dtype gt = dt == MEL_F64 ? MEL_F64 : MEL_F32; /* dW, db dtype */
    const size_t es = mel_dtype_size(dt), gs = mel_dtype_size(gt);
    const int grads = m != M_FWD;
    const mel_reduction red = m == M_FB_MEAN ? MEL_REDUCE_MEAN
                              : m == M_FB_W  ? MEL_REDUCE_WEIGHTED
                              : m == M_FB_SUM ? MEL_REDUCE_SUM
                                              : MEL_REDUCE_NONE;
    buf bx[MAXH], bw[MAXH], bb[MAXH], bdx[MAXH], bdw[MAXH], bdb[MAXH], blab, binp[MAXI], bgin[MAXI], baux[MAXA],
        by, bdy, bwts;
    memset(bx, 0, sizeof bx), memset(bw, 0, sizeof bw), memset(bb, 0, sizeof bb), memset(bdx, 0, sizeof bdx);
    memset(bdw, 0, sizeof bdw), memset(bdb, 0, sizeof bdb), memset(&blab, 0, sizeof blab);
    memset(binp, 0, sizeof binp), memset(bgin, 0, sizeof bgin), memset(baux, 0, sizeof baux);
    memset(&by, 0, sizeof by), memset(&bdy, 0, sizeof bdy), memset(&bwts, 0, sizeof bwts);

    mel_args *a = mel_args_new();
    const int64_t ldx = D + (g_pad ? 3 : 0), ldw = D + (g_pad ? 5 : 0), lddx = D + (g_pad ? 7 : 0),
                  lddw = D + (g_pad ? 9 : 0);
    void *tmp = xmalloc((size_t)(N > V ? N : V) * (size_t)(D + 9) * 8 + 64);
    double *fill = xmalloc((size_t)(N > V ? N : V) * (size_t)(D > 1 ? D : 1) * 8);
    for (int64_t i = 0; i < (N > V ? N : V) * D; i++) fill[i] = 777.0;
    for (int h = 0; h < sp->heads; h++) {
        const int hh = h + sp->head0; /* the head index the transform reads */
        put_mat(&bx[h], dev, p->X[h], N, D, ldx, dt, NAN, tmp);
        put_mat(&bw[h], dev, p->W[h], V, D, ldw, dt, NAN, tmp);
        if (sp->bias) {
            encode(p->B[h], V, dt, tmp);
            bnew(&bb[h], dev, (size_t)V * es);
            bput(&bb[h], tmp, (size_t)V * es);
        }
        mel_args_head(a, hh, mel_mat(bdata(&bx[h]), dt, N, D, ldx), mel_mat(bdata(&bw[h]), dt, V, D, ldw),
                      sp->bias ? bdata(&bb[h]) : NULL);
        if (grads && sp->diff[h]) {
            const int bx_ = g_bind != 2, bw_ = g_bind != 1; /* dX bound, dW (and db) bound */
            if (bx_) put_mat(&bdx[h], dev, g_acc ? p->X[h] : fill, N, D, lddx, dt, PAD_OUT, tmp);
            if (bw_) put_mat(&bdw[h], dev, g_acc || g_dw_acc ? p->W[h] : fill, V, D, lddw, gt, PAD_OUT, tmp);
            if (sp->bias && bw_) {
                encode(g_acc || g_dw_acc ? p->B[h] : fill, V, gt, tmp);
                bnew(&bdb[h], dev, (size_t)V * gs);
                bput(&bdb[h], tmp, (size_t)V * gs);
            }
            mel_args_grad_head(a, hh, bx_ ? mel_mat(bdata(&bdx[h]), dt, N, D, lddx) : mel_mat(NULL, dt, 0, 0, 0),
                               bw_ ? mel_mat(bdata(&bdw[h]), gt, V, D, lddw) : mel_mat(NULL, gt, 0, 0, 0),
                               sp->bias && bw_ ? bdata(&bdb[h]) : NULL,
                               (g_dw_acc ? 0 : MEL_OVERWRITE_DW) | (g_acc ? MEL_ACCUMULATE_DX : 0));
        }
    }
    /* labels as i64 for f64 runs, i32 for the others: both index paths */
    const mel_dtype lt = dt == MEL_F64 ? MEL_I64 : MEL_I32;
    if (sp->labels) {
        bnew(&blab, dev, (size_t)N * 8);
        if (lt == MEL_I64) {
            bput(&blab, p->lab, (size_t)N * 8);
        } else {
            int32_t *l32 = tmp;
            for (int64_t i = 0; i < N; i++) l32[i] = (int32_t)p->lab[i];
            bput(&blab, l32, (size_t)N * 4);
        }
        mel_args_index(a, "labels", bdata(&blab), lt, N);
    }
    /* scalar inputs in f32 for f32 runs, else f64 */
    const mel_dtype it = dt == MEL_F32 ? MEL_F32 : MEL_F64;
    for (int k = 0; k < sp->n_inp; k++) {
        encode(p->inp[k], N, it, tmp);
        bnew(&binp[k], dev, (size_t)N * mel_dtype_size(it));
        bput(&binp[k], tmp, (size_t)N * mel_dtype_size(it));
        mel_args_input(a, sp->inp[k], bdata(&binp[k]), it, N);
    }
    /* y, aux outputs, input gradients and grad_output: f64, or f32 (g_f32_io) */
    const mel_dtype ot = g_f32_io ? MEL_F32 : MEL_F64;
    const size_t os = mel_dtype_size(ot);
    for (int k = 0; k < sp->n_gin && grads; k++) {
        bnew(&bgin[k], dev, (size_t)N * os);
        mel_args_grad_input(a, sp->gin[k], bdata(&bgin[k]), ot);
    }
    for (int k = 0; k < sp->n_aux; k++) {
        bnew(&baux[k], dev, (size_t)N * os);
        mel_args_aux(a, sp->aux[k], bdata(&baux[k]), ot);
    }
    res->ny = red == MEL_REDUCE_NONE ? N : 1;
    bnew(&by, dev, (size_t)res->ny * os);
    mel_args_output(a, bdata(&by), ot);
    if (red == MEL_REDUCE_WEIGHTED) {
        bnew(&bwts, dev, (size_t)N * 8);
        bput(&bwts, p->wts, (size_t)N * 8);
    }
    mel_args_reduction(a, red, red == MEL_REDUCE_WEIGHTED ? bdata(&bwts) : NULL);
    if (grads) {
        double dy1 = 1.7;
        encode(red == MEL_REDUCE_NONE ? p->dy : &dy1, res->ny, ot, tmp);
        bnew(&bdy, dev, (size_t)res->ny * os);
        bput(&bdy, tmp, (size_t)res->ny * os);
        mel_args_grad_output(a, bdata(&bdy), ot);
    }

    mel_set_chunk_rows(ctx, chunk);
    mel_set_precision(ctx, g_prec);
    /* the buffers were prepared on the legacy default stream (cudaMemset,
     * cudaMemcpy): finished before libmel queues work on a stream that may
     * not be ordered with it (a caller's non-blocking stream) */
    if (dev) cudaDeviceSynchronize();
    if (g_plan)
        res->plan_s = mel_plan_call(ctx, sp->t, a,
                                    m == M_FWD ? MEL_MODE_FORWARD : m == M_BWD ? MEL_MODE_BACKWARD
                                                                               : MEL_MODE_FORWARD_BACKWARD,
                                    &res->plan);
    void *pinned = NULL, *s1 = NULL, *s2 = NULL;
    if (dev && g_race && sp->heads > 0) {
        /* X of head 0 to pinned host memory, NaN on the device, then on the
         * caller's stream a long device copy and the upload, no host wait
         * (s1, s2 are freed after the call: cudaFree would wait) */
        const size_t xb = bx[0].bytes, big = (size_t)256 << 20;
        if (cudaMallocHost(&pinned, xb) == cudaSuccess && cudaMalloc(&s1, big) == cudaSuccess &&
            cudaMalloc(&s2, big) == cudaSuccess) {
            cudaMemcpy(pinned, bdata(&bx[0]), xb, cudaMemcpyDeviceToHost);
            cudaMemset(bdata(&bx[0]), 0xFF, xb); /* NaN in every dtype */
            cudaDeviceSynchronize();
            cudaMemcpyAsync(s2, s1, big, cudaMemcpyDeviceToDevice, g_race);
            cudaMemcpyAsync(bdata(&bx[0]), pinned, xb, cudaMemcpyHostToDevice, g_race);
        } else {
            cudaGetLastError();
            diag("the ordering case could not allocate its buffers: the call runs without the queued upload");
        }
    }
    int home = -1;
    if (dev && g_other_dev >= 0) cudaGetDevice(&home), cudaSetDevice(g_other_dev);
    if (m == M_FWD) res->s = mel_forward(ctx, sp->t, a);
    else if (m == M_BWD) res->s = mel_backward(ctx, sp->t, a);
    else res->s = mel_forward_backward(ctx, sp->t, a);
    snprintf(res->err, sizeof res->err, "%s", res->s ? mel_last_error(ctx) : "");
    mel_get_stats(ctx, &res->st);
    if (gpu_side) {
        g_count.calls++;
        if (!res->s) g_count.chunks += res->st.chunks;
    }
    if (s1) cudaFree(s1);
    if (s2) cudaFree(s2);
    if (pinned) cudaFreeHost(pinned);
    if (dev && res->s) bail_if_device_lost(sp->name, res->err);
    if (dev && g_other_dev >= 0) {
        int cur = -1;
        cudaGetDevice(&cur);
        g_dev_back = cur == g_other_dev;
        cudaSetDevice(home);
    }
    mel_set_precision(ctx, 0);

    /* results */
    res->guards_ok = 1;
    buf *all[] = {&bx[0], &bx[1], &bw[0], &bw[1], &bb[0], &bb[1], &bdx[0], &bdx[1], &bdw[0], &bdw[1],
                  &bdb[0], &bdb[1], &blab, &binp[0], &binp[1], &binp[2], &binp[3], &bgin[0], &bgin[1],
                  &bgin[2], &bgin[3], &baux[0], &baux[1], &baux[2], &baux[3], &baux[4], &baux[5], &by,
                  &bdy, &bwts};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) res->guards_ok &= bguard_ok(all[k]);
    res->y = xmalloc((size_t)res->ny * 8);
    if (m != M_BWD) bget(&by, tmp, (size_t)res->ny * os), decode(tmp, res->ny, ot, res->y);
    for (int k = 0; k < sp->n_aux; k++) {
        res->aux[k] = xmalloc((size_t)N * 8);
        if (m != M_BWD) bget(&baux[k], tmp, (size_t)N * os), decode(tmp, N, ot, res->aux[k]);
    }
    for (int k = 0; k < sp->n_gin && grads; k++) {
        res->gin[k] = xmalloc((size_t)N * 8);
        bget(&bgin[k], tmp, (size_t)N * os);
        decode(tmp, N, ot, res->gin[k]);
    }
    for (int h = 0; h < sp->heads && grads; h++) {
        if (!sp->diff[h]) continue;
        if (g_bind != 2) {
            res->dX[h] = xmalloc((size_t)(N * D) * 8);
            res->guards_ok &= get_mat(&bdx[h], N, D, lddx, dt, res->dX[h], tmp);
        }
        if (g_bind == 1) continue;
        res->dW[h] = xmalloc((size_t)(V * D) * 8);
        res->guards_ok &= get_mat(&bdw[h], V, D, lddw, gt, res->dW[h], tmp);
        if (sp->bias) {
            res->db[h] = xmalloc((size_t)V * 8);
            bget(&bdb[h], tmp, (size_t)V * gs);
            decode(tmp, V, gt, res->db[h]);
        }
    }
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++) bfree(all[k]);
    free(tmp);
    free(fill);
    mel_args_free(a);
}

/* ----------------------------------------------------------- comparing */

typedef struct cmp {
    double worst;     /* largest nse                      */
    char what[64];    /* output with the largest nse      */
    int bad;          /* NaN, or infinities that differ   */
    char bad_what[64];
} cmp;

static void cmp_init(cmp *c)
{
    memset(c, 0, sizeof *c);
}

/* nse of g against c over n entries (see the header) */
static void cmp_add(cmp *c, const char *what, const double *g, const double *ref, int64_t n)
{
    if (!g || !ref) return;
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(g[i]) || isnan(ref[i]) || ((isinf(g[i]) || isinf(ref[i])) && g[i] != ref[i])) {
            if (!c->bad) snprintf(c->bad_what, sizeof c->bad_what, "%s[%lld] gpu %g cpu %g", what, (long long)i,
                                  g[i], ref[i]);
            c->bad = 1;
            continue;
        }
        if (isinf(ref[i])) continue;
        num += (g[i] - ref[i]) * (g[i] - ref[i]);
        den += ref[i] * ref[i];
    }
    double e = num == 0 ? 0 : num / fmax(den, 1e-300);
    if (e > c->worst || !c->what[0]) {
        c->worst = e > c->worst ? e : c->worst;
        snprintf(c->what, sizeof c->what, "%s", what);
    }
}

static void cmp_results(cmp *c, const spec *sp, const prob *p, mode m, const result *g, const result *r)
{
    if (m != M_BWD) cmp_add(c, "y", g->y, r->y, g->ny);
    for (int k = 0; k < sp->n_aux && m != M_BWD; k++) cmp_add(c, sp->aux[k], g->aux[k], r->aux[k], p->N);
    for (int k = 0; k < sp->n_gin; k++) cmp_add(c, sp->gin[k], g->gin[k], r->gin[k], p->N);
    for (int h = 0; h < sp->heads; h++) {
        char w[32];
        snprintf(w, sizeof w, "dX%d", h);
        cmp_add(c, w, g->dX[h], r->dX[h], p->N * p->D);
        snprintf(w, sizeof w, "dW%d", h);
        cmp_add(c, w, g->dW[h], r->dW[h], p->V * p->D);
        snprintf(w, sizeof w, "db%d", h);
        cmp_add(c, w, g->db[h], r->db[h], p->V);
    }
}

/* ------------------------------------------------------------ problems */

/* Problem of shape N×D×V for spec sp: inputs drawn from rng. */
static void keep_off_thresholds(prob *p, const spec *sp, tap_rng *rng);

static void prob_make(prob *p, const spec *sp, int64_t N, int64_t D, int64_t V, tap_rng *rng, mel_ctx *cpu)
{
    memset(p, 0, sizeof *p);
    p->N = N, p->D = D, p->V = V;
    for (int h = 0; h < MAXH; h++) {
        p->X[h] = xmalloc((size_t)(N * D) * 8);
        p->W[h] = xmalloc((size_t)(V * D) * 8);
        p->B[h] = xmalloc((size_t)V * 8);
        for (int64_t i = 0; i < N * D; i++) p->X[h][i] = rng_normal(rng) * 2 / sqrt((double)D);
        for (int64_t i = 0; i < V * D; i++) p->W[h][i] = rng_normal(rng);
        for (int64_t i = 0; i < V; i++) p->B[h][i] = rng_normal(rng) * 0.3;
    }
    p->lab = xmalloc((size_t)N * 8);
    for (int64_t i = 0; i < N; i++) p->lab[i] = label_of(sp, rng, i, V);
    p->dy = xmalloc((size_t)N * 8);
    p->wts = xmalloc((size_t)N * 8);
    for (int64_t i = 0; i < N; i++) p->dy[i] = 0.5 + rng_uniform(rng), p->wts[i] = rng_uniform(rng) / (double)N;
    /* log-probabilities of head 0 (fp64 CPU), for old_logp / ref_logp */
    double *lp = xmalloc((size_t)N * 8);
    int need_lp = 0;
    for (int k = 0; k < sp->n_inp; k++) need_lp |= !strcmp(sp->inp[k], "old_logp") || !strcmp(sp->inp[k], "ref_logp");
    if (need_lp) {
        mel_transform *t = NULL;
        mel_params *pp = mel_params_new();
        mel_params_set(pp, "ignore_index", (double)sp->ignore);
        mel_transform_builtin(cpu, "logprob", pp, &t);
        mel_params_free(pp);
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(p->X[0], MEL_F64, N, D, 0), mel_mat(p->W[0], MEL_F64, V, D, 0),
                      sp->bias ? p->B[0] : NULL);
        mel_args_index(a, "labels", p->lab, MEL_I64, N);
        mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
        mel_args_output(a, lp, MEL_F64);
        mel_set_chunk_rows(cpu, 0);
        if (!t || mel_forward(cpu, t, a)) diag("logprob for the GRPO inputs failed: %s", mel_last_error(cpu));
        mel_args_free(a);
        mel_transform_free(t);
    }
    /* ratio offsets per segment (or per row), far from the clip edges
     * 1 ± 0.2 / 1 + 0.28: e^±0.05 inside, e^±0.5 outside */
    static const double delta[] = {0.05, -0.5, -0.05, 0.5};
    for (int k = 0; k < sp->n_inp; k++) {
        double *v = p->inp[k] = xmalloc((size_t)N * 8);
        for (int64_t i = 0; i < N; i++) {
            const char *nm = sp->inp[k];
            int64_t grp = sp->seg > 0 ? i / sp->seg : i;
            if (!strcmp(nm, "a")) v[i] = 0.3 + rng_uniform(rng);
            else if (!strcmp(nm, "mask")) v[i] = i % 7 == 5 ? 0.0 : 1.0;
            else if (!strcmp(nm, "advantages")) v[i] = rng_normal(rng);
            else if (!strcmp(nm, "old_logp")) v[i] = lp[i] - delta[grp % 4];
            else if (!strcmp(nm, "ref_logp")) v[i] = lp[i] + 0.1 * rng_normal(rng);
            else v[i] = rng_normal(rng);
        }
    }
    free(lp);
    keep_off_thresholds(p, sp, rng);
}

/* Distance of row i's logits from the thresholds of primitive spec k
 * (where, abs, min / max, the argmax of rmax): 0 < margin means the branch
 * taken cannot differ between the CPU's and the GPU's logits, whose sums
 * are in a different order.  z, u: the fp64 logits of heads 0 and 1. */
static double row_margin(int k, const double *z, const double *u, double a, int64_t V)
{
    double m = INFINITY, s = 0, top[2] = {-INFINITY, -INFINITY}, tu[2] = {-INFINITY, -INFINITY};
    for (int64_t j = 0; j < V; j++) {
        double d = INFINITY;
        switch (k) {
        case 8: case 13: case 14: d = fabs(z[j] - 0.5 * u[j]); break; /* abs / min / max (z, u/2) */
        case 19: case 20: case 22: d = fabs(z[j] - a); break;        /* min / max / where le (z, a) */
        case 21: d = fabs(z[j]); break;                              /* where z < 0 */
        case 39: d = fabs(z[j] - 0.3); break;                        /* where z < 0.3 */
        }
        if (d < m) m = d;
        s += z[j];
        if (z[j] > top[0]) top[1] = top[0], top[0] = z[j];
        else if (z[j] > top[1]) top[1] = z[j];
        if (u[j] > tu[0]) tu[1] = tu[0], tu[0] = u[j];
        else if (u[j] > tu[1]) tu[1] = u[j];
    }
    if (k == 27 && V > 1) m = fmin(m, top[0] - top[1]); /* rmax: the argmax */
    if (k == 32) {                                       /* scalar ops on s = mean(z) */
        s /= (double)V;
        m = fmin(m, fmin(fabs(s - 5), fmin(fabs(s - a), fabs(s + a))));
        if (V > 1) m = fmin(m, tu[0] - tu[1]);
    }
    return m;
}

/* Redraw the rows of X whose logits lie within 1e-4 of a threshold of the
 * spec (see row_margin), so a GEMM rounding difference cannot flip a
 * branch and make the gradients jump. */
static void keep_off_thresholds(prob *p, const spec *sp, tap_rng *rng)
{
    static const int thr[] = {8, 13, 14, 19, 20, 21, 22, 27, 32, 39};
    int any = 0;
    for (size_t q = 0; q < sizeof thr / sizeof thr[0]; q++) any |= sp->prim == thr[q];
    if (!any) return;
    const int64_t D = p->D, V = p->V;
    double *z = xmalloc((size_t)V * 8), *u = xmalloc((size_t)V * 8);
    int64_t redrawn = 0;
    for (int64_t i = 0; i < p->N; i++) {
        for (int tries = 0; tries < 200; tries++) {
            for (int h = 0; h < 2; h++) {
                double *o = h ? u : z;
                for (int64_t j = 0; j < V; j++) {
                    double acc = sp->bias ? p->B[h][j] : 0;
                    for (int64_t c = 0; c < D; c++) acc += p->X[h][i * D + c] * p->W[h][j * D + c];
                    o[j] = acc;
                }
            }
            const double a = p->inp[0] ? p->inp[0][i] : 0;
            if (row_margin(sp->prim, z, u, a, V) > 1e-4) break;
            redrawn++;
            for (int h = 0; h < 2; h++)
                for (int64_t c = 0; c < D; c++) p->X[h][i * D + c] = rng_normal(rng) * 2 / sqrt((double)D);
        }
    }
    free(z), free(u);
    (void)redrawn;
}

static void prob_free(prob *p)
{
    for (int h = 0; h < MAXH; h++) free(p->X[h]), free(p->W[h]), free(p->B[h]);
    for (int k = 0; k < MAXI; k++) free(p->inp[k]);
    free(p->lab), free(p->dy), free(p->wts);
    memset(p, 0, sizeof *p);
}

/* ------------------------------------------------------------ the specs */

static int n_specs;
static spec specs[80];

static spec *add_builtin(mel_ctx *cpu, const char *label, const char *name, const char *params)
{
    spec *sp = &specs[n_specs];
    memset(sp, 0, sizeof *sp);
    sp->prim = -1;
    snprintf(sp->name, sizeof sp->name, "%s", label);
    mel_params *pp = mel_params_new();
    char buf_[256];
    snprintf(buf_, sizeof buf_, "%s", params ? params : "");
    sp->ignore = -100;
    for (char *tok = strtok(buf_, " "); tok; tok = strtok(NULL, " ")) {
        char *eq = strchr(tok, '=');
        if (!eq) continue;
        *eq = 0;
        mel_params_set(pp, tok, atof(eq + 1));
        if (!strcmp(tok, "ignore_index")) sp->ignore = (int64_t)atof(eq + 1);
        if (!strcmp(tok, "seq_len")) sp->seg = (int64_t)atof(eq + 1);
        if (!strcmp(tok, "vocab_valid")) sp->lab_max = (int64_t)atof(eq + 1);
    }
    mel_status s = mel_transform_builtin(cpu, name, pp, &sp->t);
    mel_params_free(pp);
    if (!ok(s == MEL_OK, "builtin %s (%s) builds", name, params ? params : "defaults")) {
        diag("%s", mel_last_error(cpu));
        return NULL;
    }
    sp->heads = mel_transform_num_heads(sp->t);
    sp->diff[0] = 1;
    sp->labels = strcmp(name, "entropy") && strcmp(name, "z_loss");
    n_specs++;
    return sp;
}

/* Per-primitive graphs: z = head 0 (differentiable), u = head 1, lab =
 * labels (ignore -1), a = differentiable scalar input in (0.3, 1.3). */
static mel_val wsum(mel_graph *g, mel_val v, mel_val u) { return mel_g_sum(g, mel_g_mul(g, v, mel_g_sigmoid(g, u))); }
static mel_val C(mel_graph *g, double c) { return mel_g_const(g, c); }

enum { P_SEG = 33, P_TWOHEADS = 36, P_AUX = 37, P_SPECIAL = 38, P_IGN0 = 40, P__N = 41 };
static const char *prim_name[P__N] = {
    "neg", "exp", "log", "tanh", "sigmoid", "square", "sqrt", "log1p", "abs (sign)",
    "add vv", "sub vv", "mul vv", "div vv", "min vv", "max vv",
    "add vs", "sub sv", "mul vs", "div sv", "min vs", "max sv",
    "where vector cond", "where le/eq, scalar branch", "stop_gradient", "vocab", "sum", "mean",
    "rmax (argmaxmask)", "logsumexp", "gather/valid (onehot)", "log_softmax", "softmax",
    "scalar ops", "segment_sum", "where scalar cond", "iota", "two differentiable heads",
    "aux outputs and count", "special values", "rmax ties (first index)",
    "gather/valid/onehot, ignore_index 0 (a real column)"};

static mel_val prim_build(mel_graph *g, int k, mel_val z, mel_val u, mel_val l, mel_val a)
{
    switch (k) {
    case 0: return wsum(g, mel_g_neg(g, z), u);
    case 1: return wsum(g, mel_g_exp(g, z), u);
    case 2: return wsum(g, mel_g_log(g, mel_g_add(g, mel_g_exp(g, z), C(g, 0.5))), u);
    case 3: return wsum(g, mel_g_tanh(g, z), u);
    case 4: return wsum(g, mel_g_sigmoid(g, z), u);
    case 5: return wsum(g, mel_g_square(g, z), u);
    case 6: return wsum(g, mel_g_sqrt(g, mel_g_add(g, mel_g_square(g, z), C(g, 1))), u);
    case 7: return wsum(g, mel_g_log1p(g, mel_g_exp(g, z)), u);
    case 8: return wsum(g, mel_g_abs(g, mel_g_sub(g, z, mel_g_scale(g, u, 0.5))), u);
    case 9: return wsum(g, mel_g_add(g, z, mel_g_square(g, u)), u);
    case 10: return wsum(g, mel_g_sub(g, mel_g_square(g, u), z), u);
    case 11: return wsum(g, mel_g_mul(g, z, z), u);
    case 12: return wsum(g, mel_g_div(g, z, mel_g_add(g, mel_g_square(g, z), C(g, 2))), u);
    case 13: return wsum(g, mel_g_min(g, z, mel_g_scale(g, u, 0.5)), u);
    case 14: return wsum(g, mel_g_max(g, z, mel_g_scale(g, u, 0.5)), u);
    case 15: return wsum(g, mel_g_add(g, z, a), u);
    case 16: return wsum(g, mel_g_sub(g, a, z), u);
    case 17: return wsum(g, mel_g_mul(g, z, a), u);
    case 18: return wsum(g, mel_g_div(g, a, mel_g_add(g, mel_g_exp(g, z), C(g, 1))), u);
    case 19: return wsum(g, mel_g_min(g, z, a), u);
    case 20: return wsum(g, mel_g_max(g, a, z), u);
    case 21: return wsum(g, mel_g_where(g, mel_g_lt(g, z, C(g, 0)), mel_g_square(g, z), mel_g_scale(g, z, 3)), u);
    case 22: return wsum(g, mel_g_where(g, mel_g_le(g, z, a), z, mel_g_mul(g, mel_g_eq(g, z, z), a)), u);
    case 23: return wsum(g, mel_g_mul(g, z, mel_g_stop_gradient(g, z)), u);
    case 24: return wsum(g, mel_g_mul(g, z, mel_g_add(g, a, mel_g_vocab(g))), u);
    case 25: return mel_g_sum(g, mel_g_mul(g, z, mel_g_sigmoid(g, u)));
    case 26: return mel_g_square(g, mel_g_mean(g, mel_g_mul(g, z, mel_g_sigmoid(g, u))));
    case 27: return mel_g_mul(g, mel_g_rmax(g, z), mel_g_sum(g, mel_g_sigmoid(g, u)));
    case 28: return mel_g_logsumexp(g, mel_g_mul(g, z, mel_g_sigmoid(g, u)));
    case 29: return mel_g_mul(g, mel_g_gather(g, z, l), mel_g_add(g, mel_g_valid(g, l), a));
    case 30: return wsum(g, mel_g_log_softmax(g, z), u);
    case 31: return wsum(g, mel_g_softmax(g, z), u);
    case 32: {
        mel_val s = mel_g_mean(g, z);
        mel_val t = mel_g_add(g, mel_g_tanh(g, s), mel_g_sigmoid(g, s));
        t = mel_g_add(g, t, mel_g_log(g, mel_g_add(g, mel_g_exp(g, s), a)));
        t = mel_g_add(g, t, mel_g_sqrt(g, mel_g_add(g, mel_g_square(g, s), C(g, 1))));
        t = mel_g_add(g, t, mel_g_log1p(g, mel_g_abs(g, mel_g_sub(g, s, C(g, 5)))));
        t = mel_g_sub(g, t, mel_g_div(g, mel_g_neg(g, s), mel_g_add(g, a, C(g, 1))));
        t = mel_g_add(g, t, mel_g_mul(g, mel_g_min(g, s, a), mel_g_max(g, s, mel_g_neg(g, a))));
        t = mel_g_add(g, t, mel_g_where(g, mel_g_lt(g, s, a), mel_g_stop_gradient(g, s), mel_g_le(g, a, s)));
        t = mel_g_add(g, t, mel_g_mul(g, mel_g_eq(g, a, a), mel_g_rmax(g, u)));
        return t;
    }
    case 33: { /* segments of 4 rows: phases around the segment sums */
        mel_g_set_segment(g, 4);
        mel_val s1 = mel_g_segment_sum(g, mel_g_logsumexp(g, z));
        mel_val s2 = mel_g_segment_sum(g, mel_g_mul(g, a, mel_g_gather(g, z, l)));
        mel_val t = mel_g_add(g, mel_g_mul(g, s1, mel_g_mean(g, z)), s2);
        /* a second barrier: a segment sum of something using the first */
        mel_val s3 = mel_g_segment_sum(g, mel_g_mul(g, t, wsum(g, z, u)));
        return mel_g_add(g, t, mel_g_scale(g, s3, 0.01));
    }
    case 34: return wsum(g, mel_g_where(g, mel_g_lt(g, a, C(g, 0.8)), z, mel_g_square(g, z)), u);
    case 35: {
        mel_val io = mel_g_iota(g);
        mel_val m = mel_g_lt(g, io, C(g, 7));
        return wsum(g, mel_g_mul(g, mel_g_where(g, m, z, mel_g_neg(g, z)), mel_g_scale(g, io, 0.001)), u);
    }
    case 36: return mel_g_sum(g, mel_g_mul(g, mel_g_softmax(g, z), mel_g_log_softmax(g, u)));
    case 37: {
        mel_g_add_aux(g, "m", mel_g_rmax(g, z));
        mel_g_add_aux(g, "l", mel_g_logsumexp(g, u));
        mel_g_add_aux(g, "g", mel_g_gather(g, u, l));
        mel_g_set_count(g, mel_g_add(g, mel_g_valid(g, l), a));
        return mel_g_sub(g, mel_g_logsumexp(g, z), mel_g_gather(g, z, l));
    }
    case 38: { /* forward only: infinities and NaN */
        mel_val ninf = mel_g_log(g, mel_g_mul(g, mel_g_min(g, z, C(g, 0)), C(g, 0))); /* log(±0) = -inf */
        mel_g_add_aux(g, "lse_all_-inf", mel_g_logsumexp(g, ninf));
        mel_g_add_aux(g, "rmax_all_-inf", mel_g_rmax(g, ninf));
        mel_g_add_aux(g, "lse_+inf", mel_g_logsumexp(g, mel_g_neg(g, ninf)));
        mel_g_add_aux(g, "lse_nan", mel_g_logsumexp(g, mel_g_log(g, z)));
        mel_g_add_aux(g, "rmax_nan", mel_g_rmax(g, mel_g_log(g, z)));
        mel_g_add_aux(g, "minmax_nan", mel_g_sum(g, mel_g_add(g, mel_g_min(g, mel_g_log(g, z), u),
                                                            mel_g_max(g, u, mel_g_log(g, z)))));
        mel_g_add_aux(g, "sum_-inf", mel_g_sum(g, mel_g_log(g, mel_g_max(g, z, C(g, 0))))); /* -inf where some z <= 0 */
        /* y = rmax(log z) is NaN on rows with a z < 0, but its gradient is
         * finite: onehot(argmax)/z, the argmax taken over the non-NaN entries
         * (index 0 when log z[0] is NaN) */
        return mel_g_rmax(g, mel_g_log(g, z));
    }
    case 39: { /* entries with z >= 0.3 tie exactly at 2 (z − z = 0) and depend on z: the
                * gradient goes to the first of them only (argmaxmask's first index) */
        mel_val tie = mel_g_add(g, mel_g_sub(g, z, mel_g_stop_gradient(g, z)), C(g, 2));
        mel_val v = mel_g_where(g, mel_g_lt(g, z, C(g, 0.3)), z, tie);
        return mel_g_mul(g, mel_g_rmax(g, v), mel_g_sum(g, mel_g_sigmoid(g, u)));
    }
    case 40: /* labels equal to 0 are ignored: gather gives 0 there, onehot (its VJP) all 0 */
        return mel_g_add(g, mel_g_mul(g, mel_g_gather(g, z, l), mel_g_add(g, mel_g_valid(g, l), a)),
                         mel_g_gather(g, u, l));
    }
    return -1;
}

static spec *add_prim(mel_ctx *cpu, int k)
{
    spec *sp = &specs[n_specs];
    memset(sp, 0, sizeof *sp);
    snprintf(sp->name, sizeof sp->name, "prim %s", prim_name[k]);
    mel_graph *g = mel_graph_new();
    mel_val z = mel_g_logits(g, 0, 1);
    mel_val u = mel_g_logits(g, 1, k == P_TWOHEADS);
    mel_val l = mel_g_index(g, "labels", k == P_IGN0 ? 0 : -1);
    mel_val a = mel_g_input(g, "a", 1);
    mel_g_set_output(g, prim_build(g, k, z, u, l, a));
    mel_status s = mel_graph_compile(cpu, g, sp->name, &sp->t);
    mel_graph_free(g);
    if (!ok(s == MEL_OK, "%s compiles", sp->name)) {
        diag("%s", mel_last_error(cpu));
        return NULL;
    }
    sp->heads = 2;
    sp->prim = k;
    sp->diff[0] = 1;
    sp->diff[1] = k == P_TWOHEADS;
    sp->labels = 1;
    sp->ignore = k == P_IGN0 ? 0 : -1;
    sp->inp[sp->n_inp++] = "a";
    sp->gin[sp->n_gin++] = "a";
    if (k == P_SEG) sp->seg = 4;
    if (k == P_AUX) sp->aux[0] = "m", sp->aux[1] = "l", sp->aux[2] = "g", sp->n_aux = 3;
    if (k == P_SPECIAL) {
        static const char *sa[] = {"lse_all_-inf", "rmax_all_-inf", "lse_+inf", "lse_nan", "rmax_nan", "minmax_nan"};
        for (int q = 0; q < 6; q++) sp->aux[q] = sa[q];
        sp->n_aux = 6; /* (MAXA) "sum_-inf" stays unbound */
    }
    n_specs++;
    return sp;
}

static void make_specs(mel_ctx *cpu)
{
    spec *sp;
    add_builtin(cpu, "ce", "ce", NULL);
    if ((sp = add_builtin(cpu, "ce bias+smoothing+z_loss", "ce", "label_smoothing=0.1 z_loss=0.001"))) sp->bias = 1;
    add_builtin(cpu, "ce softcap+scale+temperature", "ce", "softcap=5 logit_scale=1.3 temperature=0.7 ignore_index=-1");
    add_builtin(cpu, "ce ignore_index=0 (a real column)", "ce", "ignore_index=0");
    add_builtin(cpu, "ce vocab_valid", "ce", "vocab_valid=11 label_smoothing=0.05");
    add_builtin(cpu, "logprob", "logprob", "temperature=1.5");
    add_builtin(cpu, "entropy", "entropy", NULL);
    add_builtin(cpu, "z_loss", "z_loss", "softcap=3");
    add_builtin(cpu, "kl", "kl", "temperature=2 t2_scale=1");
    add_builtin(cpu, "reverse_kl", "reverse_kl", NULL);
    add_builtin(cpu, "jsd", "jsd", "beta=0.3");
    if ((sp = add_builtin(cpu, "grpo token, old_logp, ref_logp", "grpo",
                          "beta=0.04 use_old_logp=1 epsilon_high=0.28"))) {
        const char *in[] = {"mask", "advantages", "old_logp", "ref_logp"};
        for (int k = 0; k < 4; k++) sp->inp[sp->n_inp++] = in[k];
        sp->aux[0] = "kl", sp->aux[1] = "is_clipped", sp->aux[2] = "ratio", sp->aux[3] = "logp", sp->n_aux = 4;
    }
    if ((sp = add_builtin(cpu, "grpo token, stop-gradient, ref head, delta", "grpo",
                          "beta=0.1 ref_source=1 delta=1.5"))) {
        sp->inp[sp->n_inp++] = "mask", sp->inp[sp->n_inp++] = "advantages";
        sp->aux[0] = "kl", sp->aux[1] = "ratio", sp->n_aux = 2;
    }
    if ((sp = add_builtin(cpu, "grpo sequence", "grpo", "importance_sampling_level=1 seq_len=4 use_old_logp=1"))) {
        const char *in[] = {"mask", "advantages", "old_logp"};
        for (int k = 0; k < 3; k++) sp->inp[sp->n_inp++] = in[k];
        sp->aux[0] = "is_clipped", sp->aux[1] = "ratio", sp->n_aux = 2;
    }
    for (int k = 0; k < P__N; k++) add_prim(cpu, k);
}

/* ----------------------------------------------------------------- tests */

/* MEL_CUDA_TEST_ONLY=text: only the cases and groups whose name contains text */
static int group_on(const char *name)
{
    const char *only = getenv("MEL_CUDA_TEST_ONLY");
    return !only || !*only || strstr(name, only) != NULL;
}

static const int64_t shapes[][3] = {{12, 4, 13}, {36, 24, 301}, {64, 40, 4099}};

/* MEL_CUDA_TEST_SMOKE=1: spec "ce" on the two smaller shapes and the
 * stream group; =tiny: spec "ce" on the smallest shape in f32 (for
 * compute-sanitizer).  0: everything. */
static int g_smoke;

static void compare_all(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const char *only = getenv("MEL_CUDA_TEST_ONLY"); /* a substring of the case names */
    for (int si = 0; si < n_specs; si++) {
        const spec *sp = &specs[si];
        if (only && *only && !strstr(sp->name, only)) continue;
        if (g_smoke && strcmp(sp->name, "ce")) continue;
        const int special = strstr(sp->name, "special") != NULL;
        const size_t nshapes = g_smoke == 2 ? 1 : g_smoke ? 2 : sizeof shapes / sizeof shapes[0];
        for (size_t shi = 0; shi < nshapes; shi++) {
            const int64_t N = shapes[shi][0], D = shapes[shi][1], V = shapes[shi][2];
            prob p;
            prob_make(&p, sp, N, D, V, rng, cpu);
            for (int di = 0; di < (g_smoke == 2 ? 1 : 2); di++) {
                const mel_dtype dt = di ? MEL_F64 : MEL_F32;
                const double tol = dt == MEL_F32 ? 1e-10 : 1e-20;
                for (int m = 0; m < M__N; m++) {
                    if (special && m == M_BWD) continue;
                    if (m == M_BWD && shi != 1) continue;
                    result ref;
                    mel_set_chunk_rows(cpu, 0);
                    g_acc = m == M_BWD;
                    run(cpu, 0, sp, &p, dt, (mode)m, 0, &ref);
                    if (ref.s) {
                        ok(0, "%s %s %s N=%lld V=%lld: CPU reference runs", sp->name, mel_dtype_name(dt),
                           mode_name[m], (long long)N, (long long)V);
                        diag("%s", ref.err);
                        result_free(&ref);
                        continue;
                    }
                    const int64_t chunks[] = {0, 1, 7, N};
                    cmp c;
                    cmp_init(&c);
                    int all_ok = 1, guards = ref.guards_ok;
                    char err[400] = "";
                    for (int ci = 0; ci < 4; ci++) {
                        result g;
                        run(gpu, 1, sp, &p, dt, (mode)m, chunks[ci], &g);
                        if (g.s) {
                            all_ok = 0;
                            snprintf(err, sizeof err, "chunk %lld: %s", (long long)chunks[ci], g.err);
                        } else if (special) {
                            /* y and aux: NaN must be NaN on both, infinities equal, the
                             * rest close; the gradients as usual */
                            for (int k = -1; k < sp->n_aux; k++) {
                                const double *gv = k < 0 ? g.y : g.aux[k], *rv = k < 0 ? ref.y : ref.aux[k];
                                const int64_t n = k < 0 ? g.ny : N;
                                int nans = 0, agree = 1;
                                double num = 0, den = 0;
                                for (int64_t i = 0; i < n; i++) {
                                    if (isnan(rv[i]) || isnan(gv[i])) {
                                        nans++;
                                        agree &= isnan(rv[i]) && isnan(gv[i]);
                                    } else if (isinf(rv[i]) || isinf(gv[i])) {
                                        agree &= rv[i] == gv[i];
                                    } else {
                                        num += (gv[i] - rv[i]) * (gv[i] - rv[i]), den += rv[i] * rv[i];
                                    }
                                }
                                if (!agree || num > tol * fmax(den, 1e-300)) {
                                    c.bad = 1;
                                    snprintf(c.bad_what, sizeof c.bad_what, "%s (chunk %lld)",
                                             k < 0 ? "y" : sp->aux[k], (long long)chunks[ci]);
                                }
                                if (k < 0 && m == M_FWD && !nans) {
                                    c.bad = 1; /* the case must produce NaN rows */
                                    snprintf(c.bad_what, sizeof c.bad_what, "y has no NaN rows");
                                }
                            }
                            if (m != M_FWD) {
                                spec grads_only = *sp;
                                grads_only.n_aux = 0;
                                cmp_results(&c, &grads_only, &p, M_BWD, &g, &ref);
                            }
                        } else {
                            cmp_results(&c, sp, &p, (mode)m, &g, &ref);
                        }
                        guards &= g.guards_ok;
                        result_free(&g);
                    }
                    g_acc = 0;
                    ok(all_ok && guards && !c.bad && c.worst <= tol,
                       "%s %s %s N=%lld D=%lld V=%lld, chunks auto/1/7/N: worst nse %.1e (%s)%s", sp->name,
                       mel_dtype_name(dt), mode_name[m], (long long)N, (long long)D, (long long)V, c.worst,
                       c.what[0] ? c.what : "-", guards ? "" : " GUARD BYTES OVERWRITTEN");
                    if (!all_ok) diag("%s", err);
                    if (c.bad) diag("NaN or infinity mismatch: %s", c.bad_what);
                    result_free(&ref);
                }
            }
            prob_free(&p);
        }
    }
}

/* Few rows at once (mel_set_threads), and run-to-run determinism. */
static void threads_and_determinism(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const spec *sp = &specs[1]; /* ce with bias and options */
    for (int k = 0; k < n_specs; k++)
        if (strstr(specs[k].name, "grpo sequence")) sp = &specs[k];
    prob p;
    prob_make(&p, sp, 36, 24, 301, rng, cpu);
    result ref;
    run(cpu, 0, sp, &p, MEL_F32, M_FB_NONE, 0, &ref);
    const int th[] = {1, 3, 1000};
    for (int k = 0; k < 3; k++) {
        mel_set_threads(gpu, th[k]);
        result g;
        run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g);
        cmp c;
        cmp_init(&c);
        if (!g.s) cmp_results(&c, sp, &p, M_FB_NONE, &g, &ref);
        ok(!g.s && g.guards_ok && !c.bad && c.worst <= 1e-10, "%s with %d rows at once: worst nse %.1e (%s)",
           sp->name, th[k], c.worst, c.what);
        if (g.s) diag("%s", g.err);
        result_free(&g);
    }
    mel_set_threads(gpu, 0);
    result g1, g2;
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g1);
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g2);
    int same = !g1.s && !g2.s && !memcmp(g1.y, g2.y, (size_t)p.N * 8) &&
               !memcmp(g1.dX[0], g2.dX[0], (size_t)(p.N * p.D) * 8) &&
               !memcmp(g1.dW[0], g2.dW[0], (size_t)(p.V * p.D) * 8);
    ok(same, "%s: two identical GPU calls give bit-identical y, dX, dW", sp->name);
    result_free(&g1), result_free(&g2), result_free(&ref);
    prob_free(&p);
}

/* mel_set_cuda_stream: the same call on a caller's stream (cudaStreamCreate)
 * gives bit-identical results to the context's own stream, and going back
 * (NULL) works; mel_alloc / mel_to_device / mel_to_host round trip. */
static void streams_and_memory(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const spec *sp = &specs[1]; /* ce with bias and options */
    prob p;
    prob_make(&p, sp, 36, 24, 301, rng, cpu);
    result g0, g1, g2;
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g0);
    cudaStream_t cs = NULL;
    cudaError_t ce = cudaStreamCreate(&cs);
    mel_status s1 = ce == cudaSuccess ? mel_set_cuda_stream(gpu, (void *)cs) : MEL_ERR_BACKEND;
    ok(s1 == MEL_OK, "mel_set_cuda_stream(a cudaStreamCreate stream): %s",
       ce != cudaSuccess ? cudaGetErrorString(ce) : mel_last_error(gpu));
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g1);
    mel_status s2 = mel_set_cuda_stream(gpu, NULL);
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 0, &g2);
    const size_t ny = (size_t)p.N * 8, nx = (size_t)(p.N * p.D) * 8, nw = (size_t)(p.V * p.D) * 8;
    ok(!g0.s && !g1.s && g1.guards_ok && !memcmp(g0.y, g1.y, ny) && !memcmp(g0.dX[0], g1.dX[0], nx) &&
           !memcmp(g0.dW[0], g1.dW[0], nw),
       "%s on a caller's stream: y, dX, dW bit-identical to the context's own stream", sp->name);
    if (g1.s) diag("%s", g1.err);
    cmp c;
    cmp_init(&c);
    if (!g2.s && !g0.s) cmp_results(&c, sp, &p, M_FB_NONE, &g2, &g0);
    ok(s2 == MEL_OK && !g2.s && g2.guards_ok && !c.bad && c.worst <= 1e-10,
       "back on the own stream (NULL), automatic chunks: worst nse %.1e vs chunk 7 (%s)", c.worst, c.what);
    if (g2.s) diag("%s", g2.err);
    if (cs) cudaStreamDestroy(cs);
    /* a caller's non-blocking stream: not ordered with the legacy default
     * stream the test's copies use, so libmel's own synchronisation at the
     * end of the call is all that makes the outputs ready */
    result g3;
    cudaStream_t nb = NULL;
    ce = cudaStreamCreateWithFlags(&nb, cudaStreamNonBlocking);
    mel_status s3 = ce == cudaSuccess ? mel_set_cuda_stream(gpu, (void *)nb) : MEL_ERR_BACKEND;
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g3);
    mel_set_cuda_stream(gpu, NULL);
    ok(s3 == MEL_OK && !g0.s && !g3.s && g3.guards_ok && !memcmp(g0.y, g3.y, ny) &&
           !memcmp(g0.dX[0], g3.dX[0], nx) && !memcmp(g0.dW[0], g3.dW[0], nw),
       "%s on a caller's non-blocking stream: y, dX, dW bit-identical to the context's own stream", sp->name);
    if (g3.s) diag("%s", g3.err);
    /* ordered after work already queued on the caller's stream: X is
     * uploaded on it behind a 256 MiB device copy, with no host wait */
    result g4;
    memset(&g4, 0, sizeof g4);
    g4.s = MEL_ERR_BACKEND;
    if (nb && mel_set_cuda_stream(gpu, (void *)nb) == MEL_OK) {
        g_race = nb;
        run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g4);
        g_race = NULL;
        mel_set_cuda_stream(gpu, NULL);
    }
    ok(!g0.s && !g4.s && g4.guards_ok && !memcmp(g0.y, g4.y, ny) && !memcmp(g0.dX[0], g4.dX[0], nx) &&
           !memcmp(g0.dW[0], g4.dW[0], nw),
       "%s on a caller's non-blocking stream with X still being uploaded on it: y, dX, dW bit-identical", sp->name);
    if (g4.s) diag("%s", g4.err);
    result_free(&g4);
    if (nb) cudaStreamDestroy(nb);
    result_free(&g3);
    result_free(&g0), result_free(&g1), result_free(&g2);
    prob_free(&p);

    /* a caller's stream destroyed after the call that used it (still set):
     * mel_ctx_trim and mel_ctx_destroy must not touch it */
    {
        mel_ctx *c2 = NULL;
        cudaStream_t gone = NULL;
        result g5;
        memset(&g5, 0, sizeof g5);
        g5.s = MEL_ERR_BACKEND;
        if (!mel_ctx_create(MEL_BACKEND_CUDA, &c2) && cudaStreamCreate(&gone) == cudaSuccess &&
            !mel_set_cuda_stream(c2, (void *)gone)) {
            run(c2, 1, sp, &p, MEL_F32, M_FB_NONE, 7, &g5);
            cudaStreamDestroy(gone);
            mel_ctx_trim(c2);
        }
        mel_ctx_destroy(c2);
        const cudaError_t le = cudaGetLastError();
        ok(!g5.s && le == cudaSuccess,
           "a caller's stream destroyed after its call: mel_ctx_trim and mel_ctx_destroy leave no CUDA error (%s)",
           g5.s ? g5.err : cudaGetErrorName(le));
        result_free(&g5);
    }

    unsigned char src[1000], back[1000];
    for (int i = 0; i < 1000; i++) src[i] = (unsigned char)(i * 13 + 1);
    memset(back, 0, sizeof back);
    void *d = NULL;
    const int64_t held = mel_ctx_held_bytes(gpu);
    mel_status a = mel_alloc(gpu, sizeof src, &d);
    mel_status b = a ? a : mel_to_device(gpu, d, src, sizeof src);
    mel_status c2 = b ? b : mel_to_host(gpu, back, d, sizeof back);
    ok(!c2 && !memcmp(src, back, sizeof src) && mel_ctx_held_bytes(gpu) == held,
       "mel_alloc / mel_to_device / mel_to_host round trip on the device (not workspace): %s",
       c2 ? mel_last_error(gpu) : "ok");
    mel_free(gpu, d);
}

/* bf16 / f16 storage against the fp64 CPU reference on the rounded inputs. */
static void lowp(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    static const int64_t sh[][4] = {{37, 24, 301, 5}, {64, 96, 5003, 0}, {50, 130, 8999, 17}};
    const char *which[] = {"ce", "ce bias+smoothing+z_loss", "kl", "grpo token, old_logp, ref_logp"};
    for (int w = 0; w < 4; w++) {
        const spec *sp = NULL;
        for (int k = 0; k < n_specs; k++)
            if (!strcmp(specs[k].name, which[w])) sp = &specs[k];
        if (!sp) continue;
        for (int s = 0; s < 3; s++) {
            for (int di = 0; di < 2; di++) {
                const mel_dtype dt = di ? MEL_F16 : MEL_BF16;
                prob p;
                prob_make(&p, sp, sh[s][0], sh[s][1], sh[s][2], rng, cpu);
                for (int h = 0; h < MAXH; h++) {
                    round_through(p.X[h], p.N * p.D, dt);
                    round_through(p.W[h], p.V * p.D, dt);
                    round_through(p.B[h], p.V, dt);
                }
                result ref, g;
                g_acc = s == 1; /* dX pre-filled with X (already rounded), MEL_ACCUMULATE_DX */
                run(cpu, 0, sp, &p, MEL_F64, M_FB_MEAN, 0, &ref);
                run(gpu, 1, sp, &p, dt, M_FB_MEAN, sh[s][3], &g);
                g_acc = 0;
                double ey = 1, ex = 1, ew = 1, eb = 0;
                if (!ref.s && !g.s) {
                    ey = fabs(g.y[0] - ref.y[0]) / fmax(fabs(ref.y[0]), 1.0);
                    ex = ref_relerr(g.dX[0], ref.dX[0], p.N * p.D, 1e-300);
                    ew = ref_relerr(g.dW[0], ref.dW[0], p.V * p.D, 1e-300);
                    if (sp->bias) eb = ref_relerr(g.db[0], ref.db[0], p.V, 1e-300);
                }
                const double tx = (dt == MEL_BF16 ? 0x1p-8 : 0x1p-11) + 3e-5;
                ok(!ref.s && !g.s && g.guards_ok && ey < 3e-5 && ex < tx && ew < 3e-5 && eb < 3e-5,
                   "%s %s N=%lld D=%lld V=%lld chunk %lld%s vs fp64: rel err y %.1e dX %.1e (tol %.1e) dW %.1e db %.1e",
                   sp->name, mel_dtype_name(dt), (long long)p.N, (long long)p.D, (long long)p.V,
                   (long long)sh[s][3], s == 1 ? " accumulate dX" : "", ey, ex, tx, ew, eb);
                if (ref.s) diag("cpu: %s", ref.err);
                if (g.s) diag("gpu: %s", g.err);
                result_free(&ref), result_free(&g);
                prob_free(&p);
            }
        }
    }
}

/* N·V > 2^31 in one chunk on the GPU (its logits indices pass 2^31). */
static void big(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const int64_t N = 65536, D = 8, V = 32771; /* N·V = 2147680256 > 2^31 */
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    const double need = (double)N * (double)V * 4 + (1u << 30);
    if ((double)fr < need) {
        skip("N·V > 2^31: the device has %.1f GiB free, %.1f GiB needed", fr / 1073741824.0, need / 1073741824.0);
        return;
    }
    const spec *sp = &specs[0]; /* ce */
    prob p;
    prob_make(&p, sp, N, D, V, rng, cpu);
    result ref, g1, g0;
    run(cpu, 0, sp, &p, MEL_F32, M_FB_NONE, 0, &ref);
    mel_set_workspace_limit(gpu, (int64_t)1 << 30);
    /* one chunk of all N rows: R·V > 2^31.  label_of ignores every 5th
     * row, so with row skipping on the chunks would be the runs of 4
     * active rows between them (or the rows the skipping policy keeps):
     * skipping off, so the one chunk really holds N rows */
    mel_set_row_skipping(gpu, 0);
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, N, &g1);
    mel_stats st;
    mel_get_stats(gpu, &st);
    mel_set_row_skipping(gpu, 1);
    /* automatic chunks, skipping on (the default): whatever the engine
     * decides for runs of 4 active rows, no chunk may be a lone short run
     * (the device chunking cliff: more chunks than the rows need) */
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 0, &g0);
    mel_stats st0;
    mel_get_stats(gpu, &st0);
    mel_set_workspace_limit(gpu, 0);
    cmp c1, c0;
    cmp_init(&c1), cmp_init(&c0);
    if (!ref.s && !g1.s) cmp_results(&c1, sp, &p, M_FB_NONE, &g1, &ref);
    if (!ref.s && !g0.s) cmp_results(&c0, sp, &p, M_FB_NONE, &g0, &ref);
    ok(!ref.s && !g1.s && g1.guards_ok && !c1.bad && c1.worst <= 1e-10 && st.chunks == 1 && st.chunk_rows == N,
       "ce f32 N=%lld V=%lld (N·V > 2^31), skipping off, in %lld chunk(s) of %lld rows (1 of %lld wanted): "
       "worst nse %.1e (%s)", (long long)N, (long long)V, (long long)st.chunks, (long long)st.chunk_rows,
       (long long)N, c1.worst, c1.what);
    if (g1.s) diag("%s", g1.err);
    const int64_t plain = st0.chunk_rows > 0 ? (N + st0.chunk_rows - 1) / st0.chunk_rows : -1;
    ok(!ref.s && !g0.s && g0.guards_ok && !c0.bad && c0.worst <= 1e-10 && st0.chunks <= plain,
       "ce f32 N=%lld V=%lld automatic chunks (1 GiB budget), skipping on: %lld chunks of %lld rows (at most "
       "%lld, the chunks of all N rows): worst nse %.1e (%s)", (long long)N, (long long)V, (long long)st0.chunks,
       (long long)st0.chunk_rows, (long long)plain, c0.worst, c0.what);
    if (g0.s) diag("%s", g0.err);
    result_free(&ref), result_free(&g1), result_free(&g0);
    prob_free(&p);

    /* the same with a bias: its add and column-sum kernels over R·V > 2^31 */
    const spec *sb = &specs[1]; /* ce bias+smoothing+z_loss */
    if (!sb->bias) return;
    cudaMemGetInfo(&fr, &tot);
    if ((double)fr < need) {
        skip("bias with R·V > 2^31: the device has %.1f GiB free, %.1f GiB needed", fr / 1073741824.0,
             need / 1073741824.0);
        return;
    }
    prob_make(&p, sb, N, D, V, rng, cpu);
    run(cpu, 0, sb, &p, MEL_F32, M_FB_NONE, 0, &ref);
    mel_set_workspace_limit(gpu, (int64_t)1 << 30);
    mel_set_row_skipping(gpu, 0); /* one chunk of N rows (see above) */
    run(gpu, 1, sb, &p, MEL_F32, M_FB_NONE, N, &g1);
    mel_get_stats(gpu, &st);
    mel_set_row_skipping(gpu, 1);
    mel_set_workspace_limit(gpu, 0);
    cmp_init(&c1);
    if (!ref.s && !g1.s) cmp_results(&c1, sb, &p, M_FB_NONE, &g1, &ref);
    ok(!ref.s && !g1.s && g1.guards_ok && !c1.bad && c1.worst <= 1e-10 && st.chunks == 1,
       "%s f32 N=%lld V=%lld with bias in %lld chunk(s) (R·V > 2^31): worst nse %.1e (%s)", sb->name, (long long)N,
       (long long)V, (long long)st.chunks, c1.worst, c1.what);
    if (g1.s) diag("%s", g1.err);
    result_free(&ref), result_free(&g1);
    prob_free(&p);
}

static double nse_of(const double *g, const double *r, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) num += (g[i] - r[i]) * (g[i] - r[i]), den += r[i] * r[i];
    return num == 0 ? 0 : num / fmax(den, 1e-300);
}

/* The spec called `name` (NULL when absent). */
static const spec *spec_named(const char *name)
{
    for (int k = 0; k < n_specs; k++)
        if (!strcmp(specs[k].name, name)) return &specs[k];
    return NULL;
}

/* Round every input of p to dt (the fp64 reference then sees what the
 * 16-bit run sees). */
static void round_prob(prob *p, mel_dtype dt)
{
    for (int h = 0; h < MAXH; h++) {
        round_through(p->X[h], p->N * p->D, dt);
        round_through(p->W[h], p->V * p->D, dt);
        round_through(p->B[h], p->V, dt);
    }
}

/* Leading dimensions larger than the columns for X, W, dX and dW (f32
 * against the CPU's f32 with the same layout; bf16 / f16, i.e. the
 * widening and rounding kernels with ld, against the CPU's fp64 on
 * packed inputs), chunked and accumulating. */
static void leading_dims(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const char *which[] = {"ce", "ce bias+smoothing+z_loss"};
    for (int w = 0; w < 2; w++) {
        const spec *sp = spec_named(which[w]);
        if (!sp) continue;
        prob p;
        prob_make(&p, sp, 37, 24, 301, rng, cpu);
        for (int m = M_FB_MEAN; m <= M_BWD; m += M_BWD - M_FB_MEAN) {
            result ref, g;
            g_acc = m == M_BWD;
            g_pad = 1;
            run(cpu, 0, sp, &p, MEL_F32, (mode)m, 0, &ref);
            run(gpu, 1, sp, &p, MEL_F32, (mode)m, 7, &g);
            g_pad = 0;
            cmp c;
            cmp_init(&c);
            if (!ref.s && !g.s) cmp_results(&c, sp, &p, (mode)m, &g, &ref);
            ok(!ref.s && !g.s && g.guards_ok && ref.guards_ok && !c.bad && c.worst <= 1e-10,
               "%s f32 %s, ld of X, W, dX, dW = D + 3, 5, 7, 9 (padding NaN in, sentinel out): worst nse %.1e (%s)%s",
               sp->name, mode_name[m], c.worst, c.what, g.guards_ok ? "" : " PADDING OR GUARDS OVERWRITTEN");
            if (g.s) diag("gpu: %s", g.err);
            if (ref.s) diag("cpu: %s", ref.err);
            g_acc = 0;
            result_free(&ref), result_free(&g);
        }
        for (int di = 0; di < 2; di++) {
            const mel_dtype dt = di ? MEL_F16 : MEL_BF16;
            prob q;
            prob_make(&q, sp, 37, 24, 301, rng, cpu);
            round_prob(&q, dt);
            result ref, g;
            g_acc = 1;
            run(cpu, 0, sp, &q, MEL_F64, M_FB_MEAN, 0, &ref);
            g_pad = 1;
            run(gpu, 1, sp, &q, dt, M_FB_MEAN, 5, &g);
            g_pad = 0, g_acc = 0;
            double ey = 1, ex = 1, ew = 1, eb = 0;
            if (!ref.s && !g.s) {
                ey = fabs(g.y[0] - ref.y[0]) / fmax(fabs(ref.y[0]), 1.0);
                ex = ref_relerr(g.dX[0], ref.dX[0], q.N * q.D, 1e-300);
                ew = ref_relerr(g.dW[0], ref.dW[0], q.V * q.D, 1e-300);
                if (sp->bias) eb = ref_relerr(g.db[0], ref.db[0], q.V, 1e-300);
            }
            const double tx = (dt == MEL_BF16 ? 0x1p-8 : 0x1p-11) + 3e-5;
            ok(!ref.s && !g.s && g.guards_ok && ey < 3e-5 && ex < tx && ew < 3e-5 && eb < 3e-5,
               "%s %s with ld > cols (widening / rounding with ld), accumulate dX, vs fp64: y %.1e dX %.1e dW %.1e "
               "db %.1e%s", sp->name, mel_dtype_name(dt), ey, ex, ew, eb,
               g.guards_ok ? "" : " PADDING OR GUARDS OVERWRITTEN");
            if (g.s) diag("gpu: %s", g.err);
            result_free(&ref), result_free(&g);
            prob_free(&q);
        }
        prob_free(&p);
    }
}

/* 16-bit storage with D = 2048 and V over one W block of the dX loop
 * (16 MiB of f32 W rows: 2048 rows at D = 2048), so blocks v0 > 0
 * accumulate; EXACT against fp64 and FAST16 (tensor-core GEMMs on 16-bit
 * dZ) against the CPU's FAST16 and within its documented bound of fp64. */
static void wide_16bit(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const spec *sp = spec_named("ce bias+smoothing+z_loss");
    if (!sp) return;
    const int64_t N = 40, D = 2048, V = 5000; /* 3 W blocks */
    for (int di = 0; di < 2; di++) {
        const mel_dtype dt = di ? MEL_F16 : MEL_BF16;
        const double tx = (dt == MEL_BF16 ? 0x1p-8 : 0x1p-11) + 3e-5;
        prob p;
        prob_make(&p, sp, N, D, V, rng, cpu);
        round_prob(&p, dt);
        result ref, ge, gf, cf;
        g_acc = 1;
        run(cpu, 0, sp, &p, MEL_F64, M_FB_MEAN, 0, &ref);
        run(gpu, 1, sp, &p, dt, M_FB_MEAN, 13, &ge);
        g_prec = MEL_PRECISION_FAST16;
        run(cpu, 0, sp, &p, dt, M_FB_MEAN, 13, &cf);
        run(gpu, 1, sp, &p, dt, M_FB_MEAN, 0, &gf);
        g_prec = 0, g_acc = 0;
        double e[3][4];
        const result *rs[3][2] = {{&ge, &ref}, {&gf, &cf}, {&gf, &ref}};
        for (int k = 0; k < 3; k++) {
            const result *a = rs[k][0], *b = rs[k][1];
            if (a->s || b->s) {
                e[k][0] = e[k][1] = e[k][2] = e[k][3] = 1;
                continue;
            }
            e[k][0] = fabs(a->y[0] - b->y[0]) / fmax(fabs(b->y[0]), 1.0);
            e[k][1] = ref_relerr(a->dX[0], b->dX[0], N * D, 1e-300);
            /* FAST16 against FAST16: nse, since the two backends' fp32 dZ can
             * round to different 16-bit neighbours next to a midpoint (a
             * rare one-ulp flip that max-error would magnify) */
            e[k][2] = k == 1 ? nse_of(a->dW[0], b->dW[0], V * D) : ref_relerr(a->dW[0], b->dW[0], V * D, 1e-300);
            e[k][3] = k == 1 ? nse_of(a->db[0], b->db[0], V) : ref_relerr(a->db[0], b->db[0], V, 1e-300);
        }
        ok(!ge.s && ge.guards_ok && e[0][0] < 3e-5 && e[0][1] < tx && e[0][2] < 3e-5 && e[0][3] < 3e-5,
           "%s N=%lld D=%lld V=%lld (3 W blocks) EXACT, chunk 13, accumulate dX, vs fp64: y %.1e dX %.1e dW %.1e db %.1e",
           mel_dtype_name(dt), (long long)N, (long long)D, (long long)V, e[0][0], e[0][1], e[0][2], e[0][3]);
        ok(!gf.s && !cf.s && gf.guards_ok && e[1][0] < 3e-5 && e[1][1] < tx && e[1][2] < 1e-9 && e[1][3] < 1e-9,
           "%s FAST16 (GPU tensor cores) vs the CPU's FAST16: y %.1e dX %.1e, nse dW %.1e db %.1e", mel_dtype_name(dt),
           e[1][0], e[1][1], e[1][2], e[1][3]);
        ok(!gf.s && e[2][0] < 3e-5 && e[2][1] < tx + 0x1p-8 && e[2][2] < 0x1p-8 && e[2][3] < 0x1p-8,
           "%s FAST16 vs fp64 within the documented bound (dW, db 2^-8): y %.1e dX %.1e dW %.1e db %.1e",
           mel_dtype_name(dt), e[2][0], e[2][1], e[2][2], e[2][3]);
        if (ge.s) diag("gpu exact: %s", ge.err);
        if (gf.s) diag("gpu fast16: %s", gf.err);
        if (cf.s) diag("cpu fast16: %s", cf.err);
        result_free(&ref), result_free(&ge), result_free(&gf), result_free(&cf);
        prob_free(&p);
    }
}

/* MEL_PRECISION_TF32 with f32 storage: the logits (hence y) stay full fp32
 * (the CPU's f32 to 1e-10 nse), the gradients within TF32 accuracy. */
static void tf32(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const spec *sp = spec_named("ce bias+smoothing+z_loss");
    if (!sp) return;
    prob p;
    prob_make(&p, sp, 64, 256, 4099, rng, cpu);
    result ref, g;
    run(cpu, 0, sp, &p, MEL_F32, M_FB_NONE, 0, &ref);
    g_prec = MEL_PRECISION_TF32;
    run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 0, &g);
    g_prec = 0;
    cmp cy;
    cmp_init(&cy);
    double ex = 1, ew = 1;
    if (!ref.s && !g.s) {
        cmp_add(&cy, "y", g.y, ref.y, g.ny);
        ex = ref_relerr(g.dX[0], ref.dX[0], p.N * p.D, 1e-300);
        ew = ref_relerr(g.dW[0], ref.dW[0], p.V * p.D, 1e-300);
    }
    ok(!g.s && g.guards_ok && !cy.bad && cy.worst <= 1e-10 && ex < 4e-3 && ew < 4e-3,
       "f32 TF32: y nse %.1e (logits full fp32), gradients within TF32 accuracy: dX %.1e dW %.1e (< 4e-3)",
       cy.worst, ex, ew);
    if (g.s) diag("%s", g.err);
    result_free(&ref), result_free(&g);
    prob_free(&p);
}

/* One GPU call against the CPU's with the same settings: nse <= tol over
 * every output; *out gets the GPU result when out is not NULL. */
static int same_as_cpu(mel_ctx *gpu, mel_ctx *cpu, const spec *sp, const prob *p, mel_dtype dt, mode m,
                       int64_t chunk, double tol, const char *label, result *out)
{
    result ref, g;
    run(cpu, 0, sp, p, dt, m, 0, &ref);
    run(gpu, 1, sp, p, dt, m, chunk, &g);
    cmp c;
    cmp_init(&c);
    if (!ref.s && !g.s) cmp_results(&c, sp, p, m, &g, &ref);
    const int good = !ref.s && !g.s && g.guards_ok && !c.bad && c.worst <= tol;
    ok(good, "%s: %s %s %s N=%lld D=%lld V=%lld chunk %lld: worst nse %.1e (%s, tolerance %.0e)", label, sp->name,
       mel_dtype_name(dt), mode_name[m], (long long)p->N, (long long)p->D, (long long)p->V, (long long)chunk,
       c.worst, c.what[0] ? c.what : "-", tol);
    if (ref.s) diag("cpu: %s", ref.err);
    if (g.s) diag("gpu: %s", g.err);
    if (c.bad) diag("NaN or infinity mismatch: %s", c.bad_what);
    result_free(&ref);
    if (out) *out = g;
    else result_free(&g);
    return good;
}

/* The cases the issue-25 review found missing: FAST16 and TF32 on more
 * transforms and shapes, V > 32771, mel_set_check_finite on device data,
 * the SUM reduction, f32 outputs / aux / grad_output, dW and db
 * accumulated (no MEL_OVERWRITE_DW), dX-only and dW-only bindings, heads
 * 2 and 3, mel_plan_call against the call, mel_ctx_trim, segment sums
 * over more than one block of k_segsum (128 segments). */
static void coverage(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    static const int64_t sh[][3] = {{37, 24, 301}, {64, 96, 5003}};
    const char *which[] = {"ce bias+smoothing+z_loss", "logprob", "kl", "grpo token, old_logp, ref_logp", "z_loss"};
    /* FAST16 (bf16, f16) and TF32 (f32) against the CPU in the same precision */
    for (int w = 0; w < 5; w++) {
        const spec *sp = spec_named(which[w]);
        if (!sp) continue;
        for (int k = 0; k < 2; k++) {
            prob p;
            prob_make(&p, sp, sh[k][0], sh[k][1], sh[k][2], rng, cpu);
            for (int di = 0; di < 2; di++) {
                const mel_dtype dt = di ? MEL_F16 : MEL_BF16;
                prob q = p;
                /* the 16-bit inputs both backends see */
                for (int h = 0; h < MAXH; h++) {
                    q.X[h] = xmalloc((size_t)(p.N * p.D) * 8), q.W[h] = xmalloc((size_t)(p.V * p.D) * 8);
                    q.B[h] = xmalloc((size_t)p.V * 8);
                    memcpy(q.X[h], p.X[h], (size_t)(p.N * p.D) * 8), memcpy(q.W[h], p.W[h], (size_t)(p.V * p.D) * 8);
                    memcpy(q.B[h], p.B[h], (size_t)p.V * 8);
                }
                round_prob(&q, dt);
                result ref, g;
                g_prec = MEL_PRECISION_FAST16;
                run(cpu, 0, sp, &q, dt, M_FB_MEAN, 0, &ref);
                run(gpu, 1, sp, &q, dt, M_FB_MEAN, 0, &g);
                g_prec = 0;
                double ey = 1, ex = 1, ew = 1;
                if (!ref.s && !g.s) {
                    ey = fabs(g.y[0] - ref.y[0]) / fmax(fabs(ref.y[0]), 1.0);
                    ex = ref_relerr(g.dX[0], ref.dX[0], q.N * q.D, 1e-300);
                    ew = nse_of(g.dW[0], ref.dW[0], q.V * q.D); /* one-ulp 16-bit dZ flips: nse (see wide_16bit) */
                }
                const double tx = (dt == MEL_BF16 ? 0x1p-8 : 0x1p-11) + 3e-5;
                ok(!ref.s && !g.s && g.guards_ok && ey < 3e-5 && ex < tx && ew < 1e-9,
                   "%s %s FAST16 N=%lld V=%lld vs the CPU's FAST16: y %.1e dX %.1e (< %.1e) nse dW %.1e", sp->name,
                   mel_dtype_name(dt), (long long)q.N, (long long)q.V, ey, ex, tx, ew);
                if (g.s) diag("gpu: %s", g.err);
                if (ref.s) diag("cpu: %s", ref.err);
                result_free(&ref), result_free(&g);
                for (int h = 0; h < MAXH; h++) free(q.X[h]), free(q.W[h]), free(q.B[h]);
            }
            result ref, g;
            run(cpu, 0, sp, &p, MEL_F32, M_FB_NONE, 0, &ref);
            g_prec = MEL_PRECISION_TF32;
            run(gpu, 1, sp, &p, MEL_F32, M_FB_NONE, 0, &g);
            g_prec = 0;
            cmp cy;
            cmp_init(&cy);
            double ex = 1, ew = 1;
            if (!ref.s && !g.s) {
                cmp_add(&cy, "y", g.y, ref.y, g.ny);
                ex = ref_relerr(g.dX[0], ref.dX[0], p.N * p.D, 1e-300);
                ew = ref_relerr(g.dW[0], ref.dW[0], p.V * p.D, 1e-300);
            }
            ok(!g.s && g.guards_ok && !cy.bad && cy.worst <= 1e-10 && ex < 4e-3 && ew < 4e-3,
               "%s f32 TF32 N=%lld V=%lld: y nse %.1e (logits full fp32), dX %.1e dW %.1e (< 4e-3)", sp->name,
               (long long)p.N, (long long)p.V, cy.worst, ex, ew);
            if (g.s) diag("gpu: %s", g.err);
            result_free(&ref), result_free(&g);
            prob_free(&p);
        }
    }

    const spec *ce = spec_named("ce"), *ceb = spec_named("ce bias+smoothing+z_loss");
    const spec *aux = NULL, *seg = NULL;
    for (int k = 0; k < n_specs; k++) {
        if (specs[k].prim == P_AUX) aux = &specs[k];
        if (specs[k].prim == P_SEG) seg = &specs[k];
    }
    /* V > 32771 (beyond the vocabularies above), f32 and f64 */
    if (ceb) {
        prob p;
        prob_make(&p, ceb, 24, 16, 40000, rng, cpu);
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F32, M_FB_MEAN, 0, 1e-10, "V = 40000", NULL);
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F64, M_FB_NONE, 7, 1e-20, "V = 40000", NULL);
        prob_free(&p);
    }
    if (ceb) {
        prob p;
        prob_make(&p, ceb, 36, 24, 301, rng, cpu);
        /* SUM reduction */
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F32, M_FB_SUM, 7, 1e-10, "SUM", NULL);
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F64, M_FB_SUM, 0, 1e-20, "SUM", NULL);
        /* dW and db accumulated into (no MEL_OVERWRITE_DW) */
        g_dw_acc = 1;
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F32, M_FB_MEAN, 7, 1e-10, "dW, db accumulated (no MEL_OVERWRITE_DW)", NULL);
        g_dw_acc = 0;
        /* dX only, dW (and db) only */
        g_bind = 1;
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F32, M_FB_MEAN, 7, 1e-10, "dX only bound", NULL);
        g_bind = 2;
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F32, M_FB_NONE, 0, 1e-10, "dW and db only bound", NULL);
        g_bind = 0;
        /* mel_plan_call against the call it plans, then mel_ctx_trim */
        g_plan = 1;
        result g;
        same_as_cpu(gpu, cpu, ceb, &p, MEL_F32, M_FB_MEAN, 0, 1e-10, "planned", &g);
        g_plan = 0;
        ok(!g.s && !g.plan_s && g.plan.chunks == g.st.chunks && g.plan.chunk_rows == g.st.chunk_rows &&
               g.plan.peak_workspace_bytes == g.st.peak_workspace_bytes,
           "mel_plan_call on the GPU: %lld chunks of %lld rows, peak %lld B; the call: %lld of %lld, %lld B",
           (long long)g.plan.chunks, (long long)g.plan.chunk_rows, (long long)g.plan.peak_workspace_bytes,
           (long long)g.st.chunks, (long long)g.st.chunk_rows, (long long)g.st.peak_workspace_bytes);
        const int64_t held = mel_ctx_held_bytes(gpu);
        mel_ctx_trim(gpu);
        const int64_t after = mel_ctx_held_bytes(gpu);
        result g2;
        run(gpu, 1, ceb, &p, MEL_F32, M_FB_MEAN, 0, &g2);
        const int same = !g.s && !g2.s && !memcmp(g.dX[0], g2.dX[0], (size_t)(p.N * p.D) * 8) &&
                         !memcmp(g.dW[0], g2.dW[0], (size_t)(p.V * p.D) * 8) && g.y[0] == g2.y[0];
        ok(held > 0 && after == 0 && same && mel_ctx_held_bytes(gpu) > 0,
           "mel_ctx_trim: %lld B held, %lld after; the next call allocates again (%lld B) with the same results",
           (long long)held, (long long)after, (long long)mel_ctx_held_bytes(gpu));
        if (g2.s) diag("gpu after trim: %s", g2.err);
        result_free(&g), result_free(&g2);
        /* mel_set_check_finite on device data: a NaN in X, an infinity in W */
        mel_set_check_finite(gpu, 1);
        result gf;
        run(gpu, 1, ceb, &p, MEL_F32, M_FB_MEAN, 0, &gf);
        ok(!gf.s, "check_finite on, finite device data: the call runs (%s)", gf.s ? gf.err : "ok");
        result_free(&gf);
        const double x32 = p.X[0][3 * p.D + 2], w41 = p.W[0][4 * p.D + 1];
        p.X[0][3 * p.D + 2] = NAN;
        run(gpu, 1, ceb, &p, MEL_F32, M_FB_MEAN, 0, &gf);
        ok(gf.s == MEL_ERR_NONFINITE && strstr(gf.err, "x of head 0: [3, 2] = nan"),
           "check_finite on device data: NaN in X refused: %s", gf.err);
        result_free(&gf);
        p.X[0][3 * p.D + 2] = x32, p.W[0][4 * p.D + 1] = -INFINITY;
        run(gpu, 1, ceb, &p, MEL_F64, M_FWD, 0, &gf);
        ok(gf.s == MEL_ERR_NONFINITE && strstr(gf.err, "w of head 0: [4, 1] = -inf"),
           "check_finite on device data: -inf in W (f64) refused: %s", gf.err);
        result_free(&gf);
        p.W[0][4 * p.D + 1] = w41;
        mel_set_check_finite(gpu, 0);
        prob_free(&p);
    }
    /* f32 y, aux outputs, input gradients and grad_output */
    if (aux) {
        prob p;
        prob_make(&p, aux, 36, 24, 301, rng, cpu);
        g_f32_io = 1;
        same_as_cpu(gpu, cpu, aux, &p, MEL_F32, M_FB_NONE, 7, 1e-10, "f32 y, aux, input gradients, grad_output", NULL);
        same_as_cpu(gpu, cpu, aux, &p, MEL_F64, M_FWD, 0, 1e-10, "f32 y and aux (f64 storage)", NULL);
        g_f32_io = 0;
        prob_free(&p);
    }
    /* heads 2 and 3 (both differentiable, with a bias) */
    {
        spec *sp = &specs[n_specs];
        memset(sp, 0, sizeof *sp);
        snprintf(sp->name, sizeof sp->name, "heads 2 and 3");
        mel_graph *g = mel_graph_new();
        mel_val z = mel_g_logits(g, 2, 1), u = mel_g_logits(g, 3, 1);
        mel_val l = mel_g_index(g, "labels", -1);
        mel_g_set_output(g, mel_g_add(g, mel_g_sum(g, mel_g_mul(g, mel_g_softmax(g, z), mel_g_log_softmax(g, u))),
                                      mel_g_gather(g, u, l)));
        mel_status s = mel_graph_compile(cpu, g, sp->name, &sp->t);
        mel_graph_free(g);
        if (ok(s == MEL_OK, "heads 2 and 3 compile: %s", s ? mel_last_error(cpu) : "ok")) {
            sp->heads = 2, sp->head0 = 2, sp->diff[0] = sp->diff[1] = 1, sp->bias = 1, sp->labels = 1;
            sp->ignore = -1, sp->prim = -1;
            n_specs++;
            prob p;
            prob_make(&p, sp, 36, 24, 301, rng, cpu);
            same_as_cpu(gpu, cpu, sp, &p, MEL_F32, M_FB_MEAN, 7, 1e-10, "heads 2-3", NULL);
            same_as_cpu(gpu, cpu, sp, &p, MEL_F64, M_FB_NONE, 0, 1e-20, "heads 2-3", NULL);
            prob_free(&p);
        }
    }
    /* segment sums over more than one block of k_segsum (128 threads: 300
     * segments of 4 rows in one chunk) */
    if (seg) {
        prob p;
        prob_make(&p, seg, 1200, 8, 13, rng, cpu);
        same_as_cpu(gpu, cpu, seg, &p, MEL_F32, M_FB_NONE, 1200, 1e-10, "300 segments in one chunk", NULL);
        same_as_cpu(gpu, cpu, seg, &p, MEL_F64, M_FB_MEAN, 0, 1e-20, "300 segments", NULL);
        prob_free(&p);
    }
    const spec *gs = spec_named("grpo sequence");
    if (gs) {
        prob p;
        prob_make(&p, gs, 1200, 8, 13, rng, cpu);
        same_as_cpu(gpu, cpu, gs, &p, MEL_F32, M_FB_MEAN, 1200, 1e-10, "300 sequences in one chunk", NULL);
        prob_free(&p);
    }
    (void)ce;
}

/* A context created on one device, called while another is current
 * (libmel makes its device current and restores the caller's). */
static void devices(mel_ctx *cpu, tap_rng *rng)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 2) {
        cudaGetLastError();
        skip("a context created while another device is current: %d device(s), 2 needed", n);
        return;
    }
    int home = 0;
    cudaGetDevice(&home);
    const int other = home == 0 ? 1 : 0;
    cudaSetDevice(other);
    mel_ctx *g2 = NULL;
    mel_status s = mel_ctx_create(MEL_BACKEND_CUDA, &g2);
    const spec *sp = &specs[1];
    prob p;
    prob_make(&p, sp, 36, 24, 301, rng, cpu);
    result ref, g;
    run(cpu, 0, sp, &p, MEL_F32, M_FB_MEAN, 0, &ref);
    memset(&g, 0, sizeof g);
    g.s = s;
    if (!s) {
        g_other_dev = home; /* buffers on `other` (current in run), `home` current during the call */
        run(g2, 1, sp, &p, MEL_F32, M_FB_MEAN, 7, &g);
        g_other_dev = -1;
    }
    cmp c;
    cmp_init(&c);
    if (!ref.s && !g.s) cmp_results(&c, sp, &p, M_FB_MEAN, &g, &ref);
    ok(!s && !g.s && g.guards_ok && g_dev_back && !c.bad && c.worst <= 1e-10,
       "context on device %d, called while device %d is current: worst nse %.1e (%s), the caller's device %s after",
       other, home, c.worst, c.what, g_dev_back ? "current" : "NOT current");
    if (g.s) diag("%s", s ? mel_ctx_create_error() : g.err);
    /* a stream of another device is refused */
    cudaStream_t hs = NULL;
    cudaSetDevice(home);
    const cudaError_t hce = cudaStreamCreate(&hs);
    const mel_status ss = !s && hce == cudaSuccess ? mel_set_cuda_stream(g2, (void *)hs) : MEL_ERR_BACKEND;
    ok(ss == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(g2), "belongs to device"),
       "mel_set_cuda_stream(a stream of device %d) on a context of device %d: refused: %s", home, other,
       s ? "no context" : mel_last_error(g2));
    if (hs) cudaStreamDestroy(hs);
    mel_ctx_destroy(g2);
    cudaSetDevice(home);
    result_free(&ref), result_free(&g);
    prob_free(&p);
}

/* Errors attributed correctly, MEL_CUDA_DEBUG_SYNC, event timing. */
static void errors_and_timing(mel_ctx *gpu, mel_ctx *cpu, tap_rng *rng)
{
    const spec *sp = &specs[0];
    prob p;
    prob_make(&p, sp, 36, 24, 301, rng, cpu);
    result g0, g1;
    /* a pending (non-sticky) error of the caller's: an allocation that fails */
    void *huge = NULL;
    cudaError_t ce = cudaMalloc(&huge, (size_t)1 << 62);
    run(gpu, 1, sp, &p, MEL_F32, M_FB_MEAN, 0, &g0);
    cudaError_t left = cudaGetLastError();
    ok(ce != cudaSuccess && g0.s == MEL_ERR_BACKEND && strstr(g0.err, "already pending") && left == ce,
       "a CUDA error of the caller's pending before the call: refused (%s), and left for the caller (%s)",
       g0.err, cudaGetErrorName(left));
    run(gpu, 1, sp, &p, MEL_F32, M_FB_MEAN, 0, &g1);
    mel_stats st;
    mel_get_stats(gpu, &st);
    ok(!g1.s, "the next call (the error taken by the caller) succeeds: %s", g1.s ? g1.err : "ok");
    ok(!g1.s && st.gemm_seconds > 0 && st.gemm_seconds <= st.seconds,
       "mel_stats.gemm_seconds by CUDA events: %.3g s of %.3g s", st.gemm_seconds, st.seconds);
    /* MEL_CUDA_DEBUG_SYNC: same results, each kernel synchronised */
    setenv("MEL_CUDA_DEBUG_SYNC", "1", 1);
    mel_ctx *dbg = NULL;
    mel_status s = mel_ctx_create(MEL_BACKEND_CUDA, &dbg);
    unsetenv("MEL_CUDA_DEBUG_SYNC");
    result g2;
    memset(&g2, 0, sizeof g2);
    g2.s = s;
    if (!s) run(dbg, 1, sp, &p, MEL_F32, M_FB_MEAN, 0, &g2);
    cmp c;
    cmp_init(&c);
    if (!g1.s && !g2.s) cmp_results(&c, sp, &p, M_FB_MEAN, &g2, &g1);
    ok(!g1.s && !g2.s && g2.guards_ok && !c.bad && c.worst <= 1e-10,
       "MEL_CUDA_DEBUG_SYNC=1: the call succeeds with the same results: worst nse %.1e (%s)", c.worst, c.what);
    if (g2.s) diag("%s", s ? mel_ctx_create_error() : g2.err);
    mel_ctx_destroy(dbg);

    /* out of memory (MEL_CUDA_FAULT=alloc:1: the first workspace
     * allocation fails), then the next call runs */
    setenv("MEL_CUDA_FAULT", "alloc:1", 1);
    mel_ctx *oom = NULL;
    s = mel_ctx_create(MEL_BACKEND_CUDA, &oom);
    unsetenv("MEL_CUDA_FAULT");
    result o1, o2;
    memset(&o1, 0, sizeof o1), memset(&o2, 0, sizeof o2);
    if (!s) run(oom, 1, sp, &p, MEL_F32, M_FB_MEAN, 0, &o1), run(oom, 1, sp, &p, MEL_F32, M_FB_MEAN, 0, &o2);
    cmp_init(&c);
    if (!g1.s && !s && !o2.s) cmp_results(&c, sp, &p, M_FB_MEAN, &o2, &g1);
    ok(!s && o1.s == MEL_ERR_OUT_OF_MEMORY && strstr(o1.err, "out of memory") && o1.guards_ok && !o2.s &&
           !c.bad && c.worst <= 1e-10,
       "a device allocation that fails (fault injected): %s (%s); the next call runs: worst nse %.1e",
       mel_status_str(o1.s), o1.err, c.worst);
    if (o2.s) diag("%s", o2.err);
    mel_ctx_destroy(oom);
    /* a deferred error (MEL_CUDA_FAULT=free:1: the first free, the arena
     * regrown by a larger call, leaves one): reported by that call, once;
     * the call after it runs */
    setenv("MEL_CUDA_FAULT", "free:1", 1);
    mel_ctx *dfr = NULL;
    s = mel_ctx_create(MEL_BACKEND_CUDA, &dfr);
    unsetenv("MEL_CUDA_FAULT");
    result d1, d2, d3;
    memset(&d1, 0, sizeof d1), memset(&d2, 0, sizeof d2), memset(&d3, 0, sizeof d3);
    if (!s) {
        run(dfr, 1, sp, &p, MEL_F32, M_FB_MEAN, 1, &d1);        /* a workspace of 1 row */
        run(dfr, 1, sp, &p, MEL_F32, M_FB_MEAN, p.N, &d2);      /* regrown: the old one freed */
        run(dfr, 1, sp, &p, MEL_F32, M_FB_MEAN, p.N, &d3);
    }
    cmp_init(&c);
    if (!g1.s && !s && !d3.s) cmp_results(&c, sp, &p, M_FB_MEAN, &d3, &g1);
    ok(!s && !d1.s && d2.s == MEL_ERR_BACKEND && strstr(d2.err, "earlier asynchronous operation failed") &&
           d2.guards_ok && !d3.s && !c.bad && c.worst <= 1e-10,
       "a deferred error (fault injected at a free): the call that frees reports it (%s), the next runs: worst nse "
       "%.1e", d2.err, c.worst);
    if (d1.s) diag("first call: %s", d1.err);
    if (d3.s) diag("third call: %s", d3.err);
    mel_ctx_destroy(dfr);
    result_free(&o1), result_free(&o2), result_free(&d1), result_free(&d2), result_free(&d3);
    result_free(&g0), result_free(&g1), result_free(&g2);
    prob_free(&p);
}
/* "# counts: ..." for a group, since t0; the counters start again */
static double g_t0;
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static void counts(const char *group)
{
    const double t = now_s();
    diag("counts: %s: %lld GPU calls, %lld chunks, %.1f MiB moved by the test, %.1f s", group, g_count.calls,
         g_count.chunks, g_count.bytes / 1048576.0, t - g_t0);
    memset(&g_count, 0, sizeof g_count);
    g_t0 = t;
}
#endif /* HAVE_CUDA */

int main(void)
{
    mel_ctx *gpu = NULL;
#ifdef HAVE_CUDA
    {
        const char *si = getenv("MEL_CUDA_TEST_STANDIN");
        g_standin = si && !strcmp(si, "cpu");
    }
    if (g_standin ? mel_ctx_create(MEL_BACKEND_CPU, &gpu) != MEL_OK
                  : mel_ctx_create(MEL_BACKEND_CUDA, &gpu) != MEL_OK) {
#else
    if (mel_ctx_create(MEL_BACKEND_CUDA, &gpu) != MEL_OK) {
#endif
        char why[600];
        snprintf(why, sizeof why, "no CUDA device (%s)", mel_ctx_create_error());
        skip_all(why);
    }
#ifndef HAVE_CUDA
    /* a CUDA context without the CUDA build cannot happen */
    ok(0, "mel_ctx_create(MEL_BACKEND_CUDA) succeeded in a build without CUDA");
    mel_ctx_destroy(gpu);
    return done_testing();
#else
    tap_rng rng;
    rng_seed(&rng, test_seed(77));
    mel_ctx *cpu = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &cpu)) return ok(0, "cpu context"), done_testing();
    if (g_standin) {
        diag("stand-in: a CPU context plays the GPU (host buffers; the stream, devices, errors and big groups "
             "are left out)");
    } else {
        int dev = -1;
        struct cudaDeviceProp prop;
        cudaGetDevice(&dev);
        if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
            diag("device %d: %s, sm_%d%d, %d SMs, %.1f GiB", dev, prop.name, prop.major, prop.minor,
                 prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0);
    }
    diag("rows at once (mel_get_threads): %d", mel_get_threads(gpu));
    {
        const char *sm = getenv("MEL_CUDA_TEST_SMOKE");
        g_smoke = !sm || !*sm || !strcmp(sm, "0") ? 0 : !strcmp(sm, "tiny") ? 2 : 1;
        if (g_smoke) diag("smoke subset (MEL_CUDA_TEST_SMOKE=%s)", sm);
    }
    const double t_all = now_s();
    g_t0 = t_all;
    make_specs(cpu);
    compare_all(gpu, cpu, &rng);
    counts("cases");
    if (g_smoke == 1 && group_on("group:stream") && !g_standin) streams_and_memory(gpu, cpu, &rng), counts("group:stream");
    if (!g_smoke) {
        if (group_on("group:threads")) threads_and_determinism(gpu, cpu, &rng), counts("group:threads");
        if (group_on("group:stream") && !g_standin) streams_and_memory(gpu, cpu, &rng), counts("group:stream");
        if (group_on("group:lowp")) lowp(gpu, cpu, &rng), counts("group:lowp");
        if (group_on("group:ld")) leading_dims(gpu, cpu, &rng), counts("group:ld");
        if (group_on("group:wide16")) wide_16bit(gpu, cpu, &rng), counts("group:wide16");
        if (group_on("group:tf32")) tf32(gpu, cpu, &rng), counts("group:tf32");
        if (group_on("group:coverage")) coverage(gpu, cpu, &rng), counts("group:coverage");
        if (group_on("group:devices") && !g_standin) devices(cpu, &rng), counts("group:devices");
        if (group_on("group:errors") && !g_standin) errors_and_timing(gpu, cpu, &rng), counts("group:errors");
        if (group_on("group:big") && !g_standin) big(gpu, cpu, &rng), counts("group:big");
    }
    diag("counts: the whole run: %.1f s", now_s() - t_all);
    for (int k = 0; k < n_specs; k++) mel_transform_free(specs[k].t);
    mel_ctx_destroy(cpu);
    mel_ctx_destroy(gpu);
    return done_testing();
#endif
}
