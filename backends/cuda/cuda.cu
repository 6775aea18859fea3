/* The CUDA backend: cuBLAS GEMMs and a generic row-program executor.
 *
 * Everything mirrors the CPU backend (backends/cpu/cpu.c, exec_impl.h):
 * the same operations with the same semantics (NaN handling of min/max,
 * rmax and logsumexp, first-index argmax, ignore_index, segment sums at
 * the phase barriers, dZ written over the logits row at the end of the
 * last phase).  Only the order of floating-point sums differs.
 *
 * Memory: caller pointers (X, W, bias, labels, inputs, outputs, gradients)
 * and the workspace are device memory; the engine stages per-row transfers
 * through copy() (host_memory = 0).  The context works on the device that
 * is current when it is created, on a stream of its own created with
 * cudaStreamCreate: a blocking stream, so work the caller queues on the
 * legacy default stream (cudaMemcpy, kernels on stream 0) is ordered after
 * libmel's.  mel_set_cuda_stream (set_stream) moves everything -- kernels,
 * the cuBLAS handle (cublasSetStream), copies, memsets -- to the caller's
 * stream; the previous stream's work is ordered before it by an event.
 * Kernels and GEMMs are queued asynchronously; the stream is synchronised
 * only by copy() (staged per-row transfers, mel_to_device / mel_to_host),
 * sync() at the end of every call, and free() (the memory may still be in
 * use by queued work).
 *
 * device_budget: the automatic workspace budget's upper bound is half of
 * the free device memory (cudaMemGetInfo) plus half of the arena the
 * context holds (a call reuses or replaces it).
 *
 * Row executor: one thread block of MEL_CU_BS threads per row.  Vector
 * operations are loops over V strided by the threads; reductions (sum,
 * mean, rmax, logsumexp, argmax) go through shared memory in a fixed tree
 * order, so results are deterministic and do not depend on the chunk size
 * or on how many rows run at once.  Scalars are computed by thread 0 in the
 * per-row registers (ch->regs / ch->iregs, device memory).
 *
 * Concurrent rows: the engine sizes the vector scratch as
 * threads() × scratch_per_thread.  This backend's threads() is the number
 * of rows run at once (one scratch region each): mel_set_threads(ctx, n)
 * when n > 0, else the multiprocessor count times the k_phase blocks one
 * multiprocessor holds at once (cudaOccupancyMaxActiveBlocksPerMultiprocessor,
 * at most MEL_CU_MAX_BLOCKS_PER_SM = 4), so the elementwise phases have
 * enough warps in flight to use the memory bandwidth.  A phase is one
 * kernel launch of min(threads, R) blocks; block b runs rows b, b + grid,
 * b + 2·grid, ... with scratch region b.
 *
 * The transform (nodes, plans) is uploaded to the device once and cached
 * in the backend state (validated against the host copy on every use, so a
 * freed transform whose address is reused is never mistaken for another).
 *
 * Calls: enter() (every public call) makes the context's device current
 * (cudaSetDevice; the caller's device is restored by leave()) and refuses
 * to start while a CUDA error is pending, since that error is the
 * caller's: libmel takes (cudaGetLastError) only the errors of its own
 * launches and leaves the caller's in place.  An asynchronous failure is
 * found at the next synchronisation; its message names the last kernel or
 * GEMM queued, and with the environment variable MEL_CUDA_DEBUG_SYNC=1
 * every kernel and GEMM is followed by a stream synchronisation so the
 * message names the one that failed (slow: for debugging).  sync() (which
 * the engine calls at the end of every call, failed or not) waits for the
 * stream before it reports anything, so no queued work touches the
 * caller's buffers after a call returns.  A sticky error (a kernel that
 * faulted: the device context is unusable, every later runtime call
 * fails) is said to be so where libmel sees it, and later calls are
 * refused naming it, rather than blaming an error "already pending".
 * `pending` tracks work queued since the last completed synchronisation:
 * free() and fini() touch the stream only then, since a caller's stream
 * may be destroyed after the call that used it returned.
 * mel_set_cuda_stream refuses a stream of another device.  For the tests,
 * MEL_CUDA_FAULT=alloc:K (the K-th allocation of a context fails) or
 * free:K (the K-th free leaves a deferred error), read when the context
 * is created, reach the out-of-memory and deferred-error paths.
 *
 * Timing: gemm_mark records a CUDA event before and after each group of
 * chunk GEMMs; mel_stats.gemm_seconds is the sum of the device time
 * between the pairs (host timers around asynchronous launches would
 * measure only the queuing).
 *
 * Precision (mel_set_precision): the logits GEMM is full fp32 (cuBLAS
 * default math, no TF32); with MEL_PRECISION_TF32 the f32 gradient GEMMs
 * (called with grad = 1 by lib/gemm.c) use CUBLAS_COMPUTE_32F_FAST_TF32;
 * FAST16 needs nothing here: lib/gemm.c then calls gemm16 with 16-bit dZ.
 *
 * Primitives for the engine's chunk GEMMs (lib/gemm.c): gemm (f32 / f64,
 * cublasSgemm / cublasDgemm), gemm16 (bf16 / f16 inputs, f32 output and
 * compute, cublasGemmEx: the engine uses it for 16-bit logits), widen and
 * store16 (16-bit <-> f32 kernels for dX and dW), add_bias, colsum.
 */
#include <float.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
/* kernel launches */
#define MEL_LAUNCH(k, grid, block, stream, ...) k<<<(grid), (block), 0, (stream)>>>(__VA_ARGS__)

extern "C" {
#include "backend.h"
}

/* This file is the module libmel-cuda.so (backends/registry.c loads it):
 * the library functions it calls come from the library that loaded it. */
static const mel_backend_host *mel_host;
#define mel_fail (mel_host->fail)
#define mel_op_name (mel_host->op_name)
#define mel_dtype_name (mel_host->dtype_name)

#ifndef MEL_CU_BS
#define MEL_CU_BS 256       /* threads per block of the row executor (a power of 2) */
#endif
/* the block reductions halve the width down to one thread, and a block
 * holds at most 1024 threads */
static_assert(MEL_CU_BS >= 1 && MEL_CU_BS <= 1024 && (MEL_CU_BS & (MEL_CU_BS - 1)) == 0,
              "MEL_CU_BS (threads per block of the row executor) must be a power of two, at most 1024");
#define MEL_CU_CACHE 8      /* transforms kept on the device               */
#ifndef MEL_CU_MAX_BLOCKS_PER_SM
#define MEL_CU_MAX_BLOCKS_PER_SM 4 /* row-executor blocks per SM at most (each holds a row's scratch) */
#endif

/* ------------------------------------------------------------- state */

typedef struct cu_cached {
    const mel_transform *t; /* key (validated against `host`)             */
    char *host;             /* nodes, then order / pslot of fwd, fb, cnt   */
    char *dev;              /* the same bytes on the device               */
    size_t bytes;
    size_t off_order[3], off_pslot[3];
    int n, pn[3];
} cu_cached;

typedef struct cu_state {
    int device, sms;
    int blocks_per_sm;       /* k_phase blocks resident per SM (occupancy API, capped) */
    int depth, prev_device;  /* enter/leave nesting; the caller's device to restore */
    int debug_sync;          /* MEL_CUDA_DEBUG_SYNC: synchronise after every kernel / GEMM */
    const char *last_queued; /* what was queued last (for errors found at a sync) */
    cudaEvent_t *ev;         /* GEMM timing: event pairs (begin, end) of this call */
    int n_ev, cap_ev, ev_failed;
    char what[200];          /* the name of the last row-program phase queued */
    cudaStream_t stream;     /* where work is queued: own or the caller's  */
    cudaStream_t own;        /* created with the context                   */
    cublasHandle_t blas;
    cu_cached cache[MEL_CU_CACHE];
    int next_evict;
    cudaError_t deferred; /* an asynchronous error seen where none could be returned */
    int pending;          /* work queued since the last completed stream synchronisation */
    cudaError_t sticky;   /* a sticky error seen by libmel: the device context is unusable */
    char sticky_where[200]; /* where libmel saw it                        */
    /* fault injection for the tests (MEL_CUDA_FAULT, read at creation):
     * the fault_alloc-th alloc() fails as out of memory, the fault_free-th
     * free() leaves a deferred error (0: none) */
    int fault_alloc, fault_free, n_alloc, n_free;
} cu_state;

static cu_state *st_of(mel_ctx *ctx) { return (cu_state *)ctx->be; }

/* Whether the device context is unusable after error e: a sticky error
 * (a kernel that faulted, ...) is returned by every later runtime call,
 * while a non-sticky one (an allocation that failed) is cleared once
 * taken.  Takes e off the thread's last-error slot. */
static int sticky_now(cu_state *st, cudaError_t e)
{
    if (e == cudaSuccess) return 0;
    cudaGetLastError();
    cudaError_t q = cudaStreamQuery(st ? st->own : 0);
    if (q == cudaSuccess || q == cudaErrorNotReady) return 0;
    cudaGetLastError();
    return 1;
}

/* e seen by libmel where `what` failed: when it is sticky, remember it, so
 * that later calls say what happened instead of blaming the caller. */
static int note_sticky(cu_state *st, cudaError_t e, const char *what)
{
    if (!st || !sticky_now(st, e)) return 0;
    if (st->sticky == cudaSuccess) {
        st->sticky = e;
        snprintf(st->sticky_where, sizeof st->sticky_where, "%s", what ? what : "(unknown)");
    }
    return 1;
}

#define STICKY_NOTE " -- a sticky error: this device context is now unusable, every later call on it fails; " \
                    "the process must end (cudaDeviceReset does not recover it)"

static mel_status cu_err(mel_ctx *ctx, cudaError_t e, const char *what)
{
    /* e came from libmel's own runtime call: take it off the thread's
     * last-error slot, so the next call does not see it as the caller's */
    const int sticky = note_sticky(st_of(ctx), e, what);
    return mel_fail(ctx, MEL_ERR_BACKEND, "cuda: %s: %s (%s)%s", what, cudaGetErrorName(e),
                    cudaGetErrorString(e), sticky ? STICKY_NOTE : "");
}

static mel_status blas_err(mel_ctx *ctx, cublasStatus_t e, const char *what)
{
    return mel_fail(ctx, MEL_ERR_BACKEND, "cuda: %s: cuBLAS status %d", what, (int)e);
}

/* An error left by an earlier asynchronous operation (reported once). */
static mel_status take_deferred(mel_ctx *ctx)
{
    cu_state *st = st_of(ctx);
    if (st->deferred == cudaSuccess) return MEL_OK;
    cudaError_t e = st->deferred;
    st->deferred = cudaSuccess;
    return cu_err(ctx, e, "an earlier asynchronous operation failed");
}

/* After queuing `what` (a kernel launch or a cuBLAS call): the launch
 * error, if any (enter() made sure no error of the caller's was pending, so
 * it is ours).  With MEL_CUDA_DEBUG_SYNC set, also wait for it and report
 * an execution error under its name. */
static mel_status queued(mel_ctx *ctx, const char *what)
{
    cu_state *st = st_of(ctx);
    st->last_queued = what;
    st->pending = 1;
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cu_err(ctx, e, what);
    if (st->debug_sync) {
        if ((e = cudaStreamSynchronize(st->stream)) != cudaSuccess) {
            const int sticky = note_sticky(st, e, what);
            return mel_fail(ctx, MEL_ERR_BACKEND, "cuda: %s failed while running (MEL_CUDA_DEBUG_SYNC): %s (%s)%s",
                            what, cudaGetErrorName(e), cudaGetErrorString(e), sticky ? STICKY_NOTE : "");
        }
        st->pending = 0;
    }
    return MEL_OK;
}

static mel_status launched(mel_ctx *ctx, const char *what) { return queued(ctx, what); }

/* a cuBLAS status, then queued() */
static mel_status blas_done(mel_ctx *ctx, cublasStatus_t b, const char *what)
{
    if (b != CUBLAS_STATUS_SUCCESS) return blas_err(ctx, b, what);
    return queued(ctx, what);
}

static int fits_int(int64_t v) { return v >= 0 && v <= 2147483647; }

/* blocks for a grid-stride loop over n elements */
static unsigned grid_for(int64_t n, int bs)
{
    int64_t b = (n + bs - 1) / bs;
    if (b < 1) b = 1;
    if (b > 65535 * 16) b = 65535 * 16;
    return (unsigned)b;
}

/* ------------------------------------------------------ init / memory */

static void cache_drop(cu_cached *e)
{
    if (e->dev) cudaFree(e->dev);
    free(e->host);
    memset(e, 0, sizeof *e);
}

static void cu_fini(mel_ctx *ctx)
{
    cu_state *st = st_of(ctx);
    if (!st) return;
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    if (prev != st->device) cudaSetDevice(st->device);
    /* the caller's stream only when libmel still has work queued on it:
     * after a call (which ends synchronised) the caller may have
     * destroyed it already */
    int failed = 0; /* a runtime error of ours to take off the last-error slot (see cu_err) */
    if (st->stream && st->stream != st->own && st->pending) failed |= cudaStreamSynchronize(st->stream) != cudaSuccess;
    if (st->own) failed |= cudaStreamSynchronize(st->own) != cudaSuccess;
    for (int k = 0; k < st->n_ev || k < st->cap_ev; k++)
        if (st->ev && st->ev[k]) failed |= cudaEventDestroy(st->ev[k]) != cudaSuccess;
    free(st->ev);
    for (int k = 0; k < MEL_CU_CACHE; k++) cache_drop(&st->cache[k]);
    if (st->blas) {
        cublasSetStream(st->blas, st->own); /* off the caller's stream before the handle goes */
        cublasDestroy(st->blas);
    }
    if (st->own) failed |= cudaStreamDestroy(st->own) != cudaSuccess;
    if (failed) cudaGetLastError();
    if (prev >= 0 && prev != st->device) cudaSetDevice(prev);
    free(st);
    ctx->be = NULL;
}

static int phase_blocks_per_sm(void);

static mel_status cu_init(mel_ctx *ctx)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        int drv = 0, rt = 0;
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        if (drv == 0)
            return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "no NVIDIA driver: the CUDA driver library (libcuda.so.1) "
                            "could not be loaded (%s)", cudaGetErrorName(e));
        if (drv < rt)
            return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "the NVIDIA driver supports CUDA %d.%d, older than the "
                            "CUDA runtime %d.%d this module uses (%s)", drv / 1000, drv % 1000 / 10, rt / 1000,
                            rt % 1000 / 10, cudaGetErrorName(e));
        if (e != cudaSuccess)
            return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "no CUDA device (%s: %s)", cudaGetErrorName(e),
                            cudaGetErrorString(e));
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "no CUDA device");
    }
    cu_state *st = (cu_state *)calloc(1, sizeof *st);
    if (!st) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "cuda: out of memory");
    ctx->be = st;
    if ((e = cudaGetDevice(&st->device)) != cudaSuccess ||
        (e = cudaDeviceGetAttribute(&st->sms, cudaDevAttrMultiProcessorCount, st->device)) != cudaSuccess ||
        (e = cudaStreamCreate(&st->own)) != cudaSuccess) {
        mel_status s = cu_err(ctx, e, "initialising the device");
        cu_fini(ctx);
        return s;
    }
    if (st->sms < 1) st->sms = 1;
    st->blocks_per_sm = phase_blocks_per_sm();
    {
        const char *d = getenv("MEL_CUDA_DEBUG_SYNC");
        st->debug_sync = d && *d && strcmp(d, "0") != 0;
        /* MEL_CUDA_FAULT=alloc:K or free:K (t/cuda.c: the out-of-memory
         * and deferred-error paths, which a healthy device never takes) */
        const char *f = getenv("MEL_CUDA_FAULT");
        int k = 0;
        if (f && sscanf(f, "alloc:%d", &k) == 1) st->fault_alloc = k;
        else if (f && sscanf(f, "free:%d", &k) == 1) st->fault_free = k;
    }
    st->stream = st->own;
    cublasStatus_t b = cublasCreate(&st->blas);
    if (b == CUBLAS_STATUS_SUCCESS) b = cublasSetStream(st->blas, st->stream);
    /* full fp32 GEMMs (no TF32): results comparable with the CPU backend */
    if (b == CUBLAS_STATUS_SUCCESS) b = cublasSetMathMode(st->blas, CUBLAS_DEFAULT_MATH);
    if (b != CUBLAS_STATUS_SUCCESS) {
        mel_status s = blas_err(ctx, b, "creating the cuBLAS handle");
        cu_fini(ctx);
        return s;
    }
    return MEL_OK;
}

/* Rows run at once: mel_set_threads, else enough blocks to fill the
 * device (resident k_phase blocks per SM × SMs). */
static int cu_threads(mel_ctx *ctx)
{
    if (ctx->threads > 0) return ctx->threads;
    cu_state *st = st_of(ctx);
    return st ? st->sms * st->blocks_per_sm : 1;
}

/* enter / leave: the context's device current for the call, the caller's
 * restored after it; a CUDA error pending before the call is the caller's
 * (libmel clears its own): refuse, and leave it in place for the caller. */
static mel_status cu_enter(mel_ctx *ctx)
{
    cu_state *st = st_of(ctx);
    if (st->depth++ > 0) return MEL_OK;
    if (st->sticky != cudaSuccess) {
        /* libmel saw the device fail for good in an earlier call (and said
         * so there): refuse at once, saying what happened (before any
         * runtime call, which would only return that error again) */
        st->depth--;
        return mel_fail(ctx, MEL_ERR_BACKEND,
                        "cuda: this context's device is unusable since an earlier call failed with %s (%s) in the "
                        "%s; that error is sticky (every CUDA call in this process now fails), so no call on "
                        "the context can run: end the process (set MEL_CUDA_DEBUG_SYNC=1 to find the failing "
                        "kernel)", cudaGetErrorName(st->sticky), cudaGetErrorString(st->sticky), st->sticky_where);
    }
    int cur = -1;
    cudaError_t e = cudaGetDevice(&cur);
    if (e == cudaSuccess && cur != st->device) e = cudaSetDevice(st->device);
    st->prev_device = cur;
    if (e != cudaSuccess) {
        st->depth--;
        return cu_err(ctx, e, "making the context's device current (cudaSetDevice)");
    }
    e = cudaPeekAtLastError();
    if (e != cudaSuccess) {
        if (cur >= 0 && cur != st->device) cudaSetDevice(cur);
        st->depth--;
        /* sticky: no longer the caller's to handle (cudaStreamQuery on the
         * context's own stream fails too), and cudaGetLastError cannot
         * clear it */
        cudaError_t q = cudaStreamQuery(st->own);
        if (q != cudaSuccess && q != cudaErrorNotReady)
            return mel_fail(ctx, MEL_ERR_BACKEND,
                            "cuda: the device context is unusable: a sticky CUDA error %s (%s) happened before this "
                            "call (outside libmel: libmel reports its own where they happen); every CUDA call "
                            "in this process now fails", cudaGetErrorName(e), cudaGetErrorString(e));
        return mel_fail(ctx, MEL_ERR_BACKEND,
                        "cuda: a CUDA error was already pending when libmel was called: %s (%s); it is not "
                        "libmel's (libmel clears its own errors) and is left for the caller to handle "
                        "(cudaGetLastError)", cudaGetErrorName(e), cudaGetErrorString(e));
    }
    st->n_ev = 0;
    st->ev_failed = 0;
    return MEL_OK;
}

static void cu_leave(mel_ctx *ctx)
{
    cu_state *st = st_of(ctx);
    if (--st->depth > 0) return;
    if (st->prev_device >= 0 && st->prev_device != st->device) cudaSetDevice(st->prev_device);
}

/* Device timing of the engine's GEMM steps: an event before and after each */
static void cu_gemm_mark(mel_ctx *ctx, int end)
{
    cu_state *st = st_of(ctx);
    if (st->ev_failed) return;
    if ((st->n_ev & 1) != (end ? 1 : 0)) { /* unpaired marks: give up timing this call */
        st->ev_failed = 1;
        return;
    }
    if (st->n_ev == st->cap_ev) {
        int cap = st->cap_ev ? 2 * st->cap_ev : 64;
        cudaEvent_t *ev = (cudaEvent_t *)realloc(st->ev, (size_t)cap * sizeof *ev);
        if (!ev) {
            st->ev_failed = 1;
            return;
        }
        memset(ev + st->cap_ev, 0, (size_t)(cap - st->cap_ev) * sizeof *ev);
        st->ev = ev;
        st->cap_ev = cap;
    }
    cudaEvent_t *e = &st->ev[st->n_ev];
    st->pending = 1;
    if ((!*e && cudaEventCreate(e) != cudaSuccess) || cudaEventRecord(*e, st->stream) != cudaSuccess) {
        cudaGetLastError(); /* ours: the call goes on untimed */
        st->ev_failed = 1;
        return;
    }
    st->n_ev++;
}

static double cu_gemm_seconds(mel_ctx *ctx)
{
    cu_state *st = st_of(ctx);
    if (st->ev_failed || (st->n_ev & 1)) return -1;
    double ms = 0;
    for (int k = 0; k + 1 < st->n_ev; k += 2) {
        float t = 0;
        if (cudaEventElapsedTime(&t, st->ev[k], st->ev[k + 1]) != cudaSuccess) {
            cudaGetLastError();
            return -1;
        }
        ms += t;
    }
    return ms * 1e-3;
}

static void *cu_alloc(mel_ctx *ctx, size_t bytes)
{
    cu_state *st = st_of(ctx);
    if (st && ++st->n_alloc == st->fault_alloc) return NULL; /* MEL_CUDA_FAULT=alloc:K */
    void *p = NULL;
    if (cudaMalloc(&p, bytes) != cudaSuccess) {
        cudaGetLastError(); /* clear the (non-sticky) allocation error */
        return NULL;
    }
    return p;
}

static void cu_free(mel_ctx *ctx, void *p)
{
    cu_state *st = st_of(ctx);
    /* wait for the work queued on this memory (the workspace arena is freed
     * when it is regrown, trimmed or the context destroyed), and keep an
     * error for the next operation that can report it.  Nothing queued
     * since the last synchronisation (a call ends synchronised): the
     * stream is not touched, so a caller's stream destroyed since is not
     * used.  cudaFree itself waits for the device. */
    cudaError_t e = cudaSuccess;
    if (st->pending) {
        e = cudaStreamSynchronize(st->stream);
        if (e == cudaSuccess) st->pending = 0;
        else {
            note_sticky(st, e, st->last_queued ? st->last_queued : "work queued before a free");
            if (st->deferred == cudaSuccess) st->deferred = e;
        }
    }
    const cudaError_t f = cudaFree(p);
    if (f != cudaSuccess || e != cudaSuccess) cudaGetLastError(); /* ours (see cu_err) */
    if (++st->n_free == st->fault_free && st->deferred == cudaSuccess)
        st->deferred = cudaErrorUnknown; /* MEL_CUDA_FAULT=free:K */
}

/* End of a call: wait for the queued kernels and GEMMs and report their errors. */
/* End of a call (also of one that failed: the engine calls it on every
 * exit so that no queued kernel touches the caller's buffers after the
 * return): wait for the queued kernels and GEMMs first, then report an
 * error left by an earlier asynchronous operation (the first one seen),
 * else one of this call's work. */
static mel_status cu_sync(mel_ctx *ctx)
{
    cu_state *st = st_of(ctx);
    cudaError_t e = cudaStreamSynchronize(st->stream);
    int sticky = 0;
    if (e != cudaSuccess) sticky = note_sticky(st, e, st->last_queued ? st->last_queued : "(none)");
    else st->pending = 0;
    mel_status s = take_deferred(ctx);
    if (s) return s;
    if (e != cudaSuccess)
        return mel_fail(ctx, MEL_ERR_BACKEND,
                        "cuda: a kernel or GEMM of this call failed while running: %s (%s); the last one queued "
                        "was the %s (set MEL_CUDA_DEBUG_SYNC=1 to synchronise after each and name the one that "
                        "failed)%s", cudaGetErrorName(e), cudaGetErrorString(e),
                        st->last_queued ? st->last_queued : "(none)", sticky ? STICKY_NOTE : "");
    return MEL_OK;
}

/* Move the context to stream `stream` (NULL: its own).  Work already queued
 * on the old stream (e.g. by a call that failed before its final sync) is
 * ordered before the new stream's next work by an event; the host does not
 * wait. */
static mel_status cu_set_stream(mel_ctx *ctx, void *stream)
{
    cu_state *st = st_of(ctx);
    cudaStream_t ns = stream ? (cudaStream_t)stream : st->own;
    mel_status s = take_deferred(ctx);
    if (s || ns == st->stream) return s;
#if CUDART_VERSION >= 12080
    if (stream) {
        /* a stream of another device cannot order this context's work */
        int sd = -1;
        cudaError_t de = cudaStreamGetDevice(ns, &sd);
        if (de != cudaSuccess) return cu_err(ctx, de, "mel_set_cuda_stream: the stream's device (cudaStreamGetDevice)");
        if (sd != st->device)
            return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT,
                            "mel_set_cuda_stream: stream %p belongs to device %d, the context works on device %d",
                            stream, sd, st->device);
    }
#endif
    /* nothing queued since the last synchronisation: nothing to order (and
     * the old stream, a caller's, may be gone) */
    cudaError_t e = cudaSuccess;
    if (st->pending) {
        cudaEvent_t ev;
        e = cudaEventCreateWithFlags(&ev, cudaEventDisableTiming);
        if (e == cudaSuccess) {
            e = cudaEventRecord(ev, st->stream);
            if (e == cudaSuccess) e = cudaStreamWaitEvent(ns, ev, 0);
            cudaEventDestroy(ev); /* released once it has completed */
        }
    }
    if (e != cudaSuccess) return cu_err(ctx, e, "mel_set_cuda_stream: ordering the new stream after the old one");
    cublasStatus_t b = cublasSetStream(st->blas, ns);
    if (b != CUBLAS_STATUS_SUCCESS) return blas_err(ctx, b, "mel_set_cuda_stream: cublasSetStream");
    st->stream = ns;
    return MEL_OK;
}

/* Upper bound of the automatic workspace budget: half of what is free. */
static int64_t cu_device_budget(mel_ctx *ctx)
{
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
        cudaGetLastError();
        return 0; /* no opinion */
    }
    const double avail = (double)fr + (double)ctx->arena_size;
    return (int64_t)(avail / 2);
}

static mel_status cu_copy(mel_ctx *ctx, void *dst, const void *src, size_t bytes, int to_device)
{
    cu_state *st = st_of(ctx);
    mel_status s = take_deferred(ctx);
    if (s || bytes == 0) return s;
    st->pending = 1;
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, st->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st->stream);
    if (e == cudaSuccess) st->pending = 0;
    return e == cudaSuccess ? MEL_OK : cu_err(ctx, e, to_device ? "copy to the device" : "copy to the host");
}

static mel_status cu_zero2d(mel_ctx *ctx, void *p, int64_t rows, size_t row_bytes, size_t ld_bytes)
{
    cu_state *st = st_of(ctx);
    mel_status s = take_deferred(ctx);
    if (s || rows <= 0 || row_bytes == 0) return s;
    st->pending = 1;
    cudaError_t e = cudaMemset2DAsync(p, ld_bytes, 0, row_bytes, (size_t)rows, st->stream);
    return e == cudaSuccess ? MEL_OK : cu_err(ctx, e, "cudaMemset2DAsync");
}

/* ---------------------------------------------------------------- GEMMs */

/* Row-major C[M,N] = alpha·op(A)·op(B) + beta·C is column-major
 * Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands and the dimensions M and N. */
static mel_status cu_gemm(mel_ctx *ctx, mel_dtype ct, int transA, int transB, int64_t M, int64_t N,
                          int64_t K, double alpha, const void *A, int64_t lda, const void *B,
                          int64_t ldb, double beta, void *C, int64_t ldc, int grad)
{
    if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(lda) || !fits_int(ldb) || !fits_int(ldc))
        return mel_fail(ctx, MEL_ERR_OVERFLOW,
                        "cuda gemm: a dimension (M=%lld N=%lld K=%lld lda=%lld ldb=%lld ldc=%lld) "
                        "exceeds the 32-bit cuBLAS index range",
                        (long long)M, (long long)N, (long long)K, (long long)lda, (long long)ldb,
                        (long long)ldc);
    mel_status s = take_deferred(ctx);
    if (s || M == 0 || N == 0) return s;
    cu_state *st = st_of(ctx);
    cublasOperation_t ta = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t tb = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t b;
    if (ct == MEL_F32 && grad && (ctx->precision & MEL_PRECISION_TF32)) {
        /* a gradient GEMM with TF32 allowed (mel_set_precision) */
        float al = (float)alpha, be = (float)beta;
        b = cublasGemmEx(st->blas, ta, tb, (int)N, (int)M, (int)K, &al, B, CUDA_R_32F, (int)ldb, A, CUDA_R_32F,
                         (int)lda, &be, C, CUDA_R_32F, (int)ldc, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT);
    } else if (ct == MEL_F32) {
        float al = (float)alpha, be = (float)beta;
        b = cublasSgemm(st->blas, ta, tb, (int)N, (int)M, (int)K, &al, (const float *)B, (int)ldb,
                        (const float *)A, (int)lda, &be, (float *)C, (int)ldc);
    } else if (ct == MEL_F64) {
        b = cublasDgemm(st->blas, ta, tb, (int)N, (int)M, (int)K, &alpha, (const double *)B, (int)ldb,
                        (const double *)A, (int)lda, &beta, (double *)C, (int)ldc);
    } else {
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "cuda gemm: compute dtype %s", mel_dtype_name(ct));
    }
    return blas_done(ctx, b, ct == MEL_F32 ? "cuBLAS f32 GEMM" : "cuBLAS f64 GEMM");
}

/* 16-bit inputs (same dtype), f32 output and f32 compute. */
static mel_status cu_gemm16(mel_ctx *ctx, mel_dtype st16, int transA, int transB, int64_t M, int64_t N,
                            int64_t K, const void *A, int64_t lda, const void *B, int64_t ldb,
                            float beta, float *C, int64_t ldc)
{
    if (!fits_int(M) || !fits_int(N) || !fits_int(K) || !fits_int(lda) || !fits_int(ldb) || !fits_int(ldc))
        return mel_fail(ctx, MEL_ERR_OVERFLOW,
                        "cuda gemm: a dimension (M=%lld N=%lld K=%lld) exceeds the 32-bit cuBLAS index range",
                        (long long)M, (long long)N, (long long)K);
    mel_status s = take_deferred(ctx);
    if (s || M == 0 || N == 0) return s;
    cu_state *st = st_of(ctx);
    cudaDataType_t dt = st16 == MEL_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    float one = 1.0f;
    cublasStatus_t b = cublasGemmEx(st->blas, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    transA ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, dt,
                                    (int)ldb, A, dt, (int)lda, &beta, C, CUDA_R_32F, (int)ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    return blas_done(ctx, b, "cublasGemmEx (16-bit inputs, f32 accumulation)");
}

/* ------------------------------------------------- conversion kernels */

__device__ __forceinline__ float bf16_to_f32(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

__device__ __forceinline__ uint16_t f32_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ uint16_t f32_to_f16(float f) { return __half_as_ushort(__float2half_rn(f)); }

__device__ __forceinline__ float load16(uint16_t h, int bf) { return bf ? bf16_to_f32(h) : f16_to_f32(h); }

/* out[r, j] = in[(r0 + r)·ld + j] widened to f32, packed [R, C] */
__global__ void k_widen16(const uint16_t *in, int64_t ld, int64_t r0, int64_t R, int64_t C, int bf, float *out)
{
    const int64_t n = R * C;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = k / C, j = k - r * C;
        out[k] = load16(in[(r0 + r) * ld + j], bf);
    }
}

/* dX[r0 + r, j] = round16(g[r, j] (+ dX[r0 + r, j])) */
__global__ void k_store16(uint16_t *dx, int64_t ld, int64_t r0, int64_t R, int64_t C, const float *g,
                          int accumulate, int bf)
{
    const int64_t n = R * C;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = k / C, j = k - r * C;
        uint16_t *o = dx + (r0 + r) * ld + j;
        float v = g[k];
        if (accumulate) v += load16(*o, bf);
        *o = bf ? f32_to_bf16(v) : f32_to_f16(v);
    }
}

/* Z[r, j] += bias[j] */
template <typename T>
__global__ void k_add_bias(T *Z, int64_t R, int64_t V, const T *bias)
{
    const int64_t n = R * V;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < n; k += (int64_t)gridDim.x * blockDim.x)
        Z[k] += bias[k % V];
}

/* db[j] += Σ_r Z[r, j]: one thread per column, rows in order, in double
 * (the CPU backend's order: bit-identical sums for the same Z) */
template <typename T>
__global__ void k_colsum(const T *Z, int64_t R, int64_t V, T *db)
{
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < V; j += (int64_t)gridDim.x * blockDim.x) {
        double acc = 0;
        for (int64_t r = 0; r < R; r++) acc += (double)Z[r * V + j];
        db[j] += (T)acc;
    }
}

static mel_status cu_add_bias(mel_ctx *ctx, mel_dtype ct, void *Z, int64_t R, int64_t V, const void *bias)
{
    if (R <= 0) return MEL_OK;
    cu_state *st = st_of(ctx);
    unsigned g = grid_for(R * V, 256);
    if (ct == MEL_F32) MEL_LAUNCH(k_add_bias<float>, g, 256, st->stream, (float *)Z, R, V, (const float *)bias);
    else MEL_LAUNCH(k_add_bias<double>, g, 256, st->stream, (double *)Z, R, V, (const double *)bias);
    return launched(ctx, "bias kernel");
}

static mel_status cu_colsum(mel_ctx *ctx, mel_dtype ct, const void *Z, int64_t R, int64_t V, void *db)
{
    cu_state *st = st_of(ctx);
    unsigned g = grid_for(V, 256);
    if (ct == MEL_F32) MEL_LAUNCH(k_colsum<float>, g, 256, st->stream, (const float *)Z, R, V, (float *)db);
    else MEL_LAUNCH(k_colsum<double>, g, 256, st->stream, (const double *)Z, R, V, (double *)db);
    return launched(ctx, "column-sum kernel");
}

static mel_status cu_widen(mel_ctx *ctx, const mel_matrix *m, int64_t r0, int64_t R, float *out)
{
    mel_status s = take_deferred(ctx);
    if (s || R <= 0) return s;
    cu_state *st = st_of(ctx);
    const unsigned g = grid_for(R * m->cols, 256);
    MEL_LAUNCH(k_widen16, g, 256, st->stream, (const uint16_t *)m->data, m->ld, r0, R, m->cols, m->dtype == MEL_BF16,
               out);
    return launched(ctx, "16-bit widening kernel");
}

static mel_status cu_store16(mel_ctx *ctx, const mel_matrix *m, int64_t r0, int64_t R, const float *g,
                             int accumulate)
{
    mel_status s = take_deferred(ctx);
    if (s || R <= 0) return s;
    cu_state *st = st_of(ctx);
    const unsigned grid = grid_for(R * m->cols, 256);
    MEL_LAUNCH(k_store16, grid, 256, st->stream, (uint16_t *)m->data, m->ld, r0, R, m->cols, g, accumulate,
               m->dtype == MEL_BF16);
    return launched(ctx, "16-bit rounding kernel (dX or dZ)");
}

/* ------------------------------------------------------ the row executor */

/* The transform as the kernels see it (passed by value). */
typedef struct cu_prog {
    const mel_node *nodes;
    const int32_t *order, *pslot;
    int n, n_slots, out, count, n_aux, n_inputs, n_heads;
    int64_t seg_len;
    int aux[MEL_MAX_AUX];
    int adj_input[MEL_MAX_INPUTS];
    int adj_head[MEL_MAX_HEADS];
    int head_diff[MEL_MAX_HEADS];
    int64_t ignore[MEL_MAX_INPUTS];
} cu_prog;

/* The chunk (device pointers), passed by value. */
typedef struct cu_chunk {
    int64_t r0, R, V;
    void *Z[MEL_MAX_HEADS];
    const void *idx[MEL_MAX_INPUTS];
    const void *inp[MEL_MAX_INPUTS];
    int idx32[MEL_MAX_INPUTS]; /* index dtype is i32 (else i64)   */
    int inpf32[MEL_MAX_INPUTS]; /* scalar input dtype is f32 (else f64) */
    const double *seed;
    double *y, *count;
    double *aux[MEL_MAX_AUX];
    double *ginp[MEL_MAX_INPUTS];
    char *scratch;
    int64_t spt, vp_off; /* bytes per scratch region; offset of the vector pointers in it */
    void *regs;
    int64_t *iregs;
} cu_chunk;

__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return log(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return log1p(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return fabs(x); }

template <typename T, int OP>
__device__ __forceinline__ T un(T x)
{
    if constexpr (OP == OP_NEG) return -x;
    else if constexpr (OP == OP_EXP) return m_exp(x);
    else if constexpr (OP == OP_LOG) return m_log(x);
    else if constexpr (OP == OP_TANH) return m_tanh(x);
    else if constexpr (OP == OP_SIGMOID) return (T)1 / ((T)1 + m_exp(-x));
    else if constexpr (OP == OP_SQUARE) return x * x;
    else if constexpr (OP == OP_SQRT) return m_sqrt(x);
    else if constexpr (OP == OP_LOG1P) return m_log1p(x);
    else if constexpr (OP == OP_ABS) return m_abs(x);
    else return (T)((x > 0) - (x < 0)); /* OP_SIGN */
}

template <typename T, int OP>
__device__ __forceinline__ T bin(T x, T y)
{
    if constexpr (OP == OP_ADD) return x + y;
    else if constexpr (OP == OP_SUB) return x - y;
    else if constexpr (OP == OP_MUL) return x * y;
    else if constexpr (OP == OP_DIV) return x / y;
    /* min/max propagate NaN like the naive computation would */
    else if constexpr (OP == OP_MIN) return (x != x || y != y) ? x + y : (x <= y ? x : y);
    else if constexpr (OP == OP_MAX) return (x != x || y != y) ? x + y : (x >= y ? x : y);
    else if constexpr (OP == OP_LT) return (T)(x < y);
    else if constexpr (OP == OP_LE) return (T)(x <= y);
    else return (T)(x == y); /* OP_EQ */
}

/* A unary op: o = f(A) for a vector, s[i] = f(s[a]) for a scalar. */
template <typename T, int OP>
__device__ __forceinline__ void do_un(int vec, T *o, const T *A, T *s, int i, int a, int64_t V)
{
    if (vec) {
        for (int64_t j = threadIdx.x; j < V; j += MEL_CU_BS) o[j] = un<T, OP>(A[j]);
    } else if (threadIdx.x == 0) {
        s[i] = un<T, OP>(s[a]);
    }
}

template <typename T, int OP>
__device__ __forceinline__ void do_bin(int vec, T *o, const T *A, const T *B, T *s, int i, int a, int b,
                                       int64_t V)
{
    if (!vec) {
        if (threadIdx.x == 0) s[i] = bin<T, OP>(s[a], s[b]);
    } else if (A && B) {
        for (int64_t j = threadIdx.x; j < V; j += MEL_CU_BS) o[j] = bin<T, OP>(A[j], B[j]);
    } else if (A) {
        const T y = s[b];
        for (int64_t j = threadIdx.x; j < V; j += MEL_CU_BS) o[j] = bin<T, OP>(A[j], y);
    } else {
        const T x = s[a];
        for (int64_t j = threadIdx.x; j < V; j += MEL_CU_BS) o[j] = bin<T, OP>(x, B[j]);
    }
}

/* Shared memory of the block reductions. */
typedef struct red_sh {
    double v[MEL_CU_BS];
    long long k[MEL_CU_BS];
    int nan[MEL_CU_BS];
} red_sh;

/* Σ of the threads' partial sums, in a fixed tree order; every thread
 * gets the result. */
__device__ double block_sum(double part, red_sh *sh)
{
    const int tid = threadIdx.x;
    sh->v[tid] = part;
    __syncthreads();
    for (int w = MEL_CU_BS / 2; w > 0; w >>= 1) {
        if (tid < w) sh->v[tid] += sh->v[tid + w];
        __syncthreads();
    }
    double r = sh->v[0];
    __syncthreads();
    return r;
}

/* First index of the largest non-NaN entry of A (the CPU's sequential
 * `if (A[j] > A[k]) k = j` among non-NaN entries; -1 when every entry is
 * NaN), whether any entry is NaN, and whether A[0] is NaN.  Every thread
 * gets the results.  A is read only before the first barrier, so the
 * caller may overwrite A afterwards (an output in A's slot). */
template <typename T>
__device__ void block_argmax(const T *A, int64_t V, red_sh *sh, int64_t *k_out, int *nan_out, int *nan0_out)
{
    const int tid = threadIdx.x;
    *nan0_out = A[0] != A[0];
    double bv = 0;
    long long bk = -1;
    int nan = 0;
    for (int64_t j = tid; j < V; j += MEL_CU_BS) {
        const T x = A[j];
        if (x != x) {
            nan = 1;
        } else if (bk < 0 || (double)x > bv) {
            bv = (double)x;
            bk = j;
        }
    }
    sh->v[tid] = bv;
    sh->k[tid] = bk;
    sh->nan[tid] = nan;
    __syncthreads();
    for (int w = MEL_CU_BS / 2; w > 0; w >>= 1) {
        if (tid < w) {
            const long long ka = sh->k[tid], kb = sh->k[tid + w];
            const double va = sh->v[tid], vb = sh->v[tid + w];
            int take_b;
            if (kb < 0) take_b = 0;
            else if (ka < 0) take_b = 1;
            else if (vb > va) take_b = 1;
            else if (va > vb) take_b = 0;
            else take_b = kb < ka; /* equal values: the first index */
            if (take_b) sh->v[tid] = vb, sh->k[tid] = kb;
            sh->nan[tid] |= sh->nan[tid + w];
        }
        __syncthreads();
    }
    *k_out = sh->k[0];
    *nan_out = sh->nan[0];
    __syncthreads();
}

#define OPS_ELEMENTWISE_UN(X) X(OP_NEG) X(OP_EXP) X(OP_LOG) X(OP_TANH) X(OP_SIGMOID) X(OP_SQUARE) \
    X(OP_SQRT) X(OP_LOG1P) X(OP_ABS) X(OP_SIGN)
#define OPS_ELEMENTWISE_BIN(X) X(OP_ADD) X(OP_SUB) X(OP_MUL) X(OP_DIV) X(OP_MIN) X(OP_MAX) \
    X(OP_LT) X(OP_LE) X(OP_EQ)

/* Positions [p0, p1) of the plan for the rows of the chunk.  Block b runs
 * rows b, b + gridDim.x, ... with scratch region b. */
template <typename T>
__global__ void __launch_bounds__(MEL_CU_BS) k_phase(cu_prog t, cu_chunk c, int p0, int p1, int final, int fb)
{
    __shared__ red_sh sh;
    const int tid = threadIdx.x;
    const int64_t V = c.V;
    char *base = c.scratch + (int64_t)blockIdx.x * c.spt;
    T *scr = (T *)base;
    T **vp = (T **)(base + c.vp_off);
    for (int64_t r = blockIdx.x; r < c.R; r += gridDim.x) {
        T *s = (T *)c.regs + r * t.n;
        int64_t *iv = c.iregs + r * t.n;
        const int64_t row = c.r0 + r;
        for (int pos = p0; pos < p1; pos++) {
            const int i = t.order[pos];
            const mel_node nd = t.nodes[i];
            const int a = nd.a, b = nd.b, cc = nd.c;
            const int vec = nd.kind == K_VEC;
            T *o = vec && nd.op != OP_LOGITS ? scr + (int64_t)t.pslot[pos] * V : NULL;
            const T *A = a >= 0 && t.nodes[a].kind == K_VEC ? vp[a] : NULL;
            const T *B = b >= 0 && t.nodes[b].kind == K_VEC ? vp[b] : NULL;
            switch (nd.op) {
            case OP_LOGITS:
                if (tid == 0) vp[i] = (T *)c.Z[nd.head] + r * V;
                break;
            case OP_INDEX:
                if (tid == 0)
                    iv[i] = c.idx32[nd.slot] ? (int64_t)((const int32_t *)c.idx[nd.slot])[row]
                                             : ((const int64_t *)c.idx[nd.slot])[row];
                break;
            case OP_INPUT:
                if (tid == 0)
                    s[i] = c.inpf32[nd.slot] ? (T)((const float *)c.inp[nd.slot])[row]
                                             : (T)((const double *)c.inp[nd.slot])[row];
                break;
            case OP_CONST:
                if (tid == 0) s[i] = (T)nd.cval;
                break;
            case OP_VOCAB:
                if (tid == 0) s[i] = (T)V;
                break;
            case OP_IOTA:
                for (int64_t j = tid; j < V; j += MEL_CU_BS) o[j] = (T)j;
                break;
            case OP_SEED:
                if (tid == 0) s[i] = (T)c.seed[r];
                break;
#define UN_CASE(OPC) \
    case OPC: do_un<T, OPC>(vec, o, A, s, i, a, V); break;
            OPS_ELEMENTWISE_UN(UN_CASE)
#undef UN_CASE
#define BIN_CASE(OPC) \
    case OPC: do_bin<T, OPC>(vec, o, A, B, s, i, a, b, V); break;
            OPS_ELEMENTWISE_BIN(BIN_CASE)
#undef BIN_CASE
            case OP_WHERE: {
                const T *Cv = cc >= 0 && t.nodes[cc].kind == K_VEC ? vp[cc] : NULL;
                if (!vec) {
                    if (tid == 0) s[i] = s[a] != 0 ? s[b] : s[cc];
                } else {
                    const T sa = A ? (T)0 : s[a], sb = B ? (T)0 : s[b], sc = Cv ? (T)0 : s[cc];
                    for (int64_t j = tid; j < V; j += MEL_CU_BS) {
                        const T cond = A ? A[j] : sa;
                        o[j] = cond != 0 ? (B ? B[j] : sb) : (Cv ? Cv[j] : sc);
                    }
                }
                break;
            }
            case OP_SUM:
            case OP_MEAN: {
                double part = 0;
                for (int64_t j = tid; j < V; j += MEL_CU_BS) part += (double)A[j];
                const double acc = block_sum(part, &sh);
                if (tid == 0) s[i] = (T)(nd.op == OP_MEAN ? acc / (double)V : acc);
                break;
            }
            case OP_RMAX: {
                int64_t k;
                int nan, nan0;
                block_argmax<T>(A, V, &sh, &k, &nan, &nan0);
                if (tid == 0) s[i] = nan ? (T)NAN : A[k];
                break;
            }
            case OP_LSE: {
                int64_t k;
                int nan, nan0;
                block_argmax<T>(A, V, &sh, &k, &nan, &nan0);
                if (nan) {
                    if (tid == 0) s[i] = (T)NAN;
                } else {
                    const T m = A[k];
                    if (isinf(m)) {
                        if (tid == 0) s[i] = m; /* +inf, or -inf when every entry is -inf */
                    } else {
                        double part = 0;
                        for (int64_t j = tid; j < V; j += MEL_CU_BS) part += (double)m_exp((T)(A[j] - m));
                        const double acc = block_sum(part, &sh);
                        if (tid == 0) s[i] = (T)((double)m + log(acc));
                    }
                }
                break;
            }
            case OP_GATHER:
                if (tid == 0) {
                    const int64_t k = iv[b];
                    s[i] = k == t.ignore[t.nodes[b].slot] ? (T)0 : A[k];
                }
                break;
            case OP_VALID:
                if (tid == 0) s[i] = iv[a] != t.ignore[t.nodes[a].slot] ? (T)1 : (T)0;
                break;
            case OP_ONEHOT: {
                const int64_t k = iv[a];
                const int on = k != t.ignore[t.nodes[a].slot];
                for (int64_t j = tid; j < V; j += MEL_CU_BS) o[j] = on && j == k ? (T)1 : (T)0;
                break;
            }
            case OP_ARGMAXMASK: {
                /* o may be A's slot: A is not read after block_argmax */
                int64_t k;
                int nan, nan0;
                block_argmax<T>(A, V, &sh, &k, &nan, &nan0);
                /* the CPU's scan stays at 0 when A[0] is NaN */
                if (k < 0 || nan0) k = 0;
                for (int64_t j = tid; j < V; j += MEL_CU_BS) o[j] = j == k ? (T)1 : (T)0;
                break;
            }
            case OP_BCAST: {
                const T x = s[a];
                for (int64_t j = tid; j < V; j += MEL_CU_BS) o[j] = x;
                break;
            }
            case OP_STOPGRAD:
                if (vec) {
                    for (int64_t j = tid; j < V; j += MEL_CU_BS) o[j] = A[j];
                } else if (tid == 0) {
                    s[i] = s[a];
                }
                break;
            default: /* OP_SEGSUM: computed at the phase barrier */
                break;
            }
            if (vec && nd.op != OP_LOGITS && tid == 0) vp[i] = o;
            __syncthreads();
        }
        if (final) {
            if (tid == 0) {
                if (c.y) c.y[r] = (double)s[t.out];
                if (c.count) c.count[r] = t.count >= 0 ? (double)s[t.count] : 1.0;
                for (int k = 0; k < t.n_aux; k++)
                    if (c.aux[k]) c.aux[k][r] = (double)s[t.aux[k]];
                if (fb)
                    for (int k = 0; k < t.n_inputs; k++)
                        if (c.ginp[k]) c.ginp[k][r] = t.adj_input[k] >= 0 ? (double)s[t.adj_input[k]] : 0.0;
            }
            if (fb)
                for (int h = 0; h < t.n_heads; h++) {
                    if (!t.head_diff[h] || !c.Z[h]) continue;
                    T *dz = (T *)c.Z[h] + r * V; /* dZ overwrites this row's logits */
                    const T *g = t.adj_head[h] >= 0 ? vp[t.adj_head[h]] : NULL;
                    /* entries below the smallest normal number stored as 0,
                     * as the CPU backend does (backends/cpu/exec_impl.h,
                     * store_dz): one dZ on every device */
                    const T tiny = sizeof(T) == 4 ? (T)FLT_MIN : (T)DBL_MIN;
                    for (int64_t j = tid; j < V; j += MEL_CU_BS) {
                        const T x = g ? g[j] : (T)0;
                        dz[j] = (x < tiny && x > -tiny) ? (T)0 : x;
                    }
                    __syncthreads();
                }
        }
        __syncthreads();
    }
}

/* Resident k_phase blocks per multiprocessor (the occupancy API, the lower
 * of the f32 and f64 kernels), capped at MEL_CU_MAX_BLOCKS_PER_SM: each
 * concurrent row holds its own scratch vectors in the workspace. */
static int phase_blocks_per_sm(void)
{
    int a = 0, b = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&a, k_phase<float>, MEL_CU_BS, 0) != cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, k_phase<double>, MEL_CU_BS, 0) != cudaSuccess) {
        cudaGetLastError(); /* ours */
        return 1;
    }
    int n = a < b ? a : b;
    if (n < 1) n = 1;
    return n < MEL_CU_MAX_BLOCKS_PER_SM ? n : MEL_CU_MAX_BLOCKS_PER_SM;
}

/* The segment sums that open phase [p0, p1): one thread per segment, rows
 * in order, in double (the CPU's order). */
template <typename T>
__global__ void k_segsum(cu_prog t, T *regs, int64_t R, int p0, int p1)
{
    const int64_t sg = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t r0 = sg * t.seg_len;
    if (r0 >= R) return;
    const int64_t r1 = r0 + t.seg_len < R ? r0 + t.seg_len : R;
    for (int pos = p0; pos < p1; pos++) {
        const int i = t.order[pos];
        if (t.nodes[i].op != OP_SEGSUM) continue;
        const int a = t.nodes[i].a;
        double acc = 0;
        for (int64_t r = r0; r < r1; r++) acc += (double)regs[r * t.n + a];
        for (int64_t r = r0; r < r1; r++) regs[r * t.n + i] = (T)acc;
    }
}

/* ------------------------------------------- the transform on the device */

static int cu_supports_op(int op)
{
    switch (op) {
    case OP_LOGITS: case OP_INDEX: case OP_INPUT: case OP_CONST: case OP_VOCAB: case OP_SEED:
    case OP_IOTA:
    case OP_NEG: case OP_EXP: case OP_LOG: case OP_TANH: case OP_SIGMOID: case OP_SQUARE: case OP_SQRT:
    case OP_LOG1P: case OP_ABS: case OP_SIGN:
    case OP_ADD: case OP_SUB: case OP_MUL: case OP_DIV: case OP_MIN: case OP_MAX:
    case OP_LT: case OP_LE: case OP_EQ: case OP_WHERE:
    case OP_SUM: case OP_MEAN: case OP_RMAX: case OP_LSE:
    case OP_GATHER: case OP_VALID: case OP_ONEHOT: case OP_ARGMAXMASK: case OP_BCAST: case OP_STOPGRAD:
    case OP_SEGSUM:
        return 1;
    }
    return 0;
}

static size_t up8(size_t v) { return (v + 7) / 8 * 8; }

static const mel_plan *plan_k(const mel_transform *t, int k) { return k == 0 ? &t->fwd : k == 1 ? &t->fb : &t->cnt; }

static int cache_matches(const cu_cached *e, const mel_transform *t)
{
    if (e->t != t || e->n != t->n) return 0;
    if (memcmp(e->host, t->nodes, (size_t)t->n * sizeof(mel_node))) return 0;
    for (int k = 0; k < 3; k++) {
        const mel_plan *p = plan_k(t, k);
        if (e->pn[k] != p->n) return 0;
        if (p->n && (memcmp(e->host + e->off_order[k], p->order, (size_t)p->n * 4) ||
                     memcmp(e->host + e->off_pslot[k], p->pslot, (size_t)p->n * 4)))
            return 0;
    }
    return 1;
}

static mel_status cache_get(mel_ctx *ctx, const mel_transform *t, cu_cached **out)
{
    cu_state *st = st_of(ctx);
    for (int k = 0; k < MEL_CU_CACHE; k++)
        if (st->cache[k].t && cache_matches(&st->cache[k], t)) {
            *out = &st->cache[k];
            return MEL_OK;
        }
    for (int i = 0; i < t->n; i++)
        if (!cu_supports_op(t->nodes[i].op))
            return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "cuda backend: operation %s (%d) of transform '%s' "
                            "is not implemented on the GPU", mel_op_name(t->nodes[i].op), (int)t->nodes[i].op,
                            t->name);
    /* sequence ids and groups (OP_SEGSUM level 1, OP_SEQINFO): the CPU
     * executor's, not written here yet; fixed-length segments run below */
    if (t->seq_ids >= 0 || t->group > 1)
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "cuda backend: transform '%s' has %s, which the GPU "
                        "executor does not run yet (the CPU backend does)", t->name,
                        t->seq_ids >= 0 ? "sequence ids (mel_g_set_sequence_ids)" : "groups of sequences (mel_g_set_group)");
    cu_cached *e = &st->cache[st->next_evict];
    st->next_evict = (st->next_evict + 1) % MEL_CU_CACHE;
    cache_drop(e);
    size_t off = up8((size_t)t->n * sizeof(mel_node));
    for (int k = 0; k < 3; k++) {
        const mel_plan *p = plan_k(t, k);
        e->pn[k] = p->n;
        e->off_order[k] = off;
        off = up8(off + (size_t)p->n * 4);
        e->off_pslot[k] = off;
        off = up8(off + (size_t)p->n * 4);
    }
    e->bytes = off > 0 ? off : 8;
    e->host = (char *)calloc(1, e->bytes);
    if (!e->host) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "cuda: out of memory caching transform '%s'", t->name);
    memcpy(e->host, t->nodes, (size_t)t->n * sizeof(mel_node));
    for (int k = 0; k < 3; k++) {
        const mel_plan *p = plan_k(t, k);
        if (!p->n) continue;
        memcpy(e->host + e->off_order[k], p->order, (size_t)p->n * 4);
        memcpy(e->host + e->off_pslot[k], p->pslot, (size_t)p->n * 4);
    }
    e->n = t->n;
    cudaError_t ce = cudaMalloc((void **)&e->dev, e->bytes);
    if (ce != cudaSuccess) {
        cudaGetLastError();
        e->dev = NULL;
        cache_drop(e);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "cuda: out of device memory caching transform '%s'", t->name);
    }
    /* queued on the stream before the kernels that read it; no host wait
     * (e->host lives as long as the entry) */
    st->pending = 1;
    ce = cudaMemcpyAsync(e->dev, e->host, e->bytes, cudaMemcpyHostToDevice, st->stream);
    if (ce != cudaSuccess) {
        cache_drop(e);
        return cu_err(ctx, ce, "uploading the transform");
    }
    e->t = t;
    *out = e;
    return MEL_OK;
}

/* The device program of plan p (its cached arrays, plan_k) and the chunk's
 * device view, for run_phase and merge_segments. */
static mel_status cu_prepare(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, const mel_chunk *ch,
                             cu_prog *dtp, cu_chunk *dcp, int *kp)
{
    mel_status s = take_deferred(ctx);
    if (s) return s;
    /* the cached plan of this kind (plan_k); vocabulary-parallel and
     * predicate plans do not run here */
    const int k = p->vsplit ? -1 : p->kind == MEL_PLAN_FWD ? 0 : p->kind == MEL_PLAN_FB ? 1 : p->kind == MEL_PLAN_CNT ? 2 : -1;
    if (k < 0) return mel_fail(ctx, MEL_ERR_INTERNAL, "cuda run_phase: the plan is not one of transform '%s'", t->name);
    if (ch->ct != MEL_F32 && ch->ct != MEL_F64)
        return mel_fail(ctx, MEL_ERR_INTERNAL, "cuda run_phase: compute dtype %s", mel_dtype_name(ch->ct));
    cu_cached *e = NULL;
    if ((s = cache_get(ctx, t, &e))) return s;

    const size_t es = ch->ct == MEL_F32 ? 4 : 8;
    cu_prog &dt = *dtp;
    memset(&dt, 0, sizeof dt);
    dt.nodes = (const mel_node *)e->dev;
    dt.order = (const int32_t *)(e->dev + e->off_order[k]);
    dt.pslot = (const int32_t *)(e->dev + e->off_pslot[k]);
    dt.n = t->n;
    dt.n_slots = p->n_slots;
    dt.out = t->out;
    dt.count = t->count;
    dt.n_aux = t->n_aux;
    dt.n_inputs = t->n_inputs;
    dt.n_heads = t->n_heads;
    dt.seg_len = t->seg_len;
    for (int q = 0; q < MEL_MAX_AUX; q++) dt.aux[q] = t->aux[q];
    for (int q = 0; q < MEL_MAX_INPUTS; q++) {
        dt.adj_input[q] = t->adj_input[q];
        dt.ignore[q] = t->inputs[q].ignore_index;
    }
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        dt.adj_head[h] = t->adj_head[h];
        dt.head_diff[h] = t->head_diff[h];
    }

    cu_chunk &dc = *dcp;
    memset(&dc, 0, sizeof dc);
    dc.r0 = ch->r0;
    dc.R = ch->R;
    dc.V = ch->V;
    for (int h = 0; h < MEL_MAX_HEADS; h++) dc.Z[h] = ch->Z[h];
    for (int q = 0; q < MEL_MAX_INPUTS; q++) {
        dc.idx[q] = ch->idx[q];
        dc.idx32[q] = ch->idx_dtype[q] == MEL_I32;
        dc.inp[q] = ch->inp[q];
        dc.inpf32[q] = ch->inp_dtype[q] == MEL_F32;
        dc.ginp[q] = ch->ginp[q];
    }
    for (int q = 0; q < MEL_MAX_AUX; q++) dc.aux[q] = ch->aux[q];
    dc.seed = ch->seed;
    dc.y = ch->y;
    dc.count = ch->count;
    dc.scratch = (char *)ch->scratch;
    dc.spt = ch->scratch_per_thread;
    /* vector pointers after the slots (backends/backend.h) */
    dc.vp_off = mel_scratch_vp_offset(p->n_slots, ch->V, es);
    dc.regs = ch->regs;
    dc.iregs = ch->iregs;
    if (dc.vp_off + (int64_t)t->n * (int64_t)sizeof(void *) > ch->scratch_per_thread || ch->threads < 1)
        return mel_fail(ctx, MEL_ERR_INTERNAL,
                        "cuda run_phase: scratch of %lld bytes per row (%d rows) is below %lld (%d slots × V = %lld)",
                        (long long)ch->scratch_per_thread, ch->threads,
                        (long long)(dc.vp_off + (int64_t)t->n * (int64_t)sizeof(void *)), p->n_slots,
                        (long long)ch->V);

    *kp = k;
    return MEL_OK;
}

static const char *plan_word(int k) { return k == 0 ? "forward" : k == 1 ? "forward-backward" : "count"; }

static mel_status cu_merge_segments(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch)
{
    cu_state *st = st_of(ctx);
    cu_prog dt;
    cu_chunk dc;
    int k = -1;
    mel_status s = cu_prepare(ctx, t, p, ch, &dt, &dc, &k);
    if (s || ch->R <= 0) return s;
    const int p0 = p->phase_start[q], p1 = p->phase_start[q + 1];
    const int64_t nseg = (ch->R + t->seg_len - 1) / t->seg_len;
    const unsigned g = grid_for(nseg, 128);
    if (ch->ct == MEL_F32) MEL_LAUNCH(k_segsum<float>, g, 128, st->stream, dt, (float *)ch->regs, ch->R, p0, p1);
    else MEL_LAUNCH(k_segsum<double>, g, 128, st->stream, dt, (double *)ch->regs, ch->R, p0, p1);
    snprintf(st->what, sizeof st->what, "segment-sum kernel before phase %d of %d of transform '%s' (%s plan)",
             q + 1, p->n_phases, t->name, plan_word(k));
    return launched(ctx, st->what);
}

static mel_status cu_run_phase(mel_ctx *ctx, const mel_transform *t, const mel_plan *p, int q, mel_chunk *ch)
{
    cu_state *st = st_of(ctx);
    cu_prog dt;
    cu_chunk dc;
    int k = -1;
    mel_status s = cu_prepare(ctx, t, p, ch, &dt, &dc, &k);
    if (s || ch->R <= 0) return s;
    const unsigned grid = (unsigned)(ch->R < ch->threads ? ch->R : ch->threads);
    const int fb = k == 1;
    const int p0 = p->phase_start[q], p1 = p->phase_start[q + 1];
    const int final = q == p->n_phases - 1;
    if (ch->ct == MEL_F32) MEL_LAUNCH(k_phase<float>, grid, MEL_CU_BS, st->stream, dt, dc, p0, p1, final, fb);
    else MEL_LAUNCH(k_phase<double>, grid, MEL_CU_BS, st->stream, dt, dc, p0, p1, final, fb);
    snprintf(st->what, sizeof st->what, "row-program kernel, phase %d of %d of transform '%s' (%s plan, rows %lld..%lld)",
             q + 1, p->n_phases, t->name, plan_word(k), (long long)ch->r0, (long long)(ch->r0 + ch->R - 1));
    return launched(ctx, st->what);
}

static mel_backend_ops make_ops(void)
{
    mel_backend_ops o;
    memset(&o, 0, sizeof o);
    o.name = "cuda";
    o.host_memory = 0;
    o.conv_block_bytes = (int64_t)16 << 20; /* 16 MiB of f32 W rows */
    o.copy = cu_copy;
    o.zero2d = cu_zero2d;
    o.init = cu_init;
    o.fini = cu_fini;
    o.alloc = cu_alloc;
    o.free = cu_free;
    o.gemm = cu_gemm;
    o.gemm16 = cu_gemm16;
    o.widen = cu_widen;
    o.store16 = cu_store16;
    o.add_bias = cu_add_bias;
    o.colsum = cu_colsum;
    o.supports_op = cu_supports_op;
    o.run_phase = cu_run_phase;
    o.merge_segments = cu_merge_segments;
    o.threads = cu_threads;
    o.sync = cu_sync;
    o.set_stream = cu_set_stream;
    o.device_budget = cu_device_budget;
    o.enter = cu_enter;
    o.leave = cu_leave;
    o.gemm_mark = cu_gemm_mark;
    o.gemm_seconds = cu_gemm_seconds;
    return o;
}

static const mel_backend_ops cuda_ops = make_ops();

/* The module's entry point (MEL_BACKEND_MODULE_ENTRY): refuses a library
 * whose shared structures differ from the ones this module was built with. */
extern "C" __attribute__((visibility("default"))) const mel_backend_ops *
mel_backend_module(const mel_backend_host *host, char *why, size_t n)
{
    if (strcmp(host->version, PACKAGE_VERSION) != 0 || host->size_ctx != sizeof(mel_ctx) ||
        host->size_ops != sizeof(mel_backend_ops) || host->size_chunk != sizeof(mel_chunk) ||
        host->size_transform != sizeof(mel_transform)) {
        snprintf(why, n, "built for libmel %s, loaded by libmel %s (a module must come from the same build)",
                 PACKAGE_VERSION, host->version);
        return NULL;
    }
    mel_host = host;
    return &cuda_ops;
}
