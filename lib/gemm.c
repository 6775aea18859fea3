/* The three GEMMs of a chunk on any storage dtype, written once for every
 * backend from its primitives (backends/backend.h):
 *
 *   logits   Z[R, V]  = X[r0:r0+R]·Wᵀ (+ bias)
 *   grad_x   dX[r0:r0+R] (+)= dZ·W
 *   grad_w   dW[V, D] += dZᵀ·X[r0:r0+R]          (dW in the compute type)
 *
 * f32 / f64 storage: one GEMM in the storage dtype.  bf16 / f16 storage
 * computes in f32 from widened copies in the conversion scratch `conv`
 * (mel_gemm_conv_bytes), laid out as
 *   [ X chunk f32 R·D | dX chunk f32 R·D | W block f32 Vb·D | bias f32 V ]
 * with Vb = mel_gemm_wblock() rows of W at a time; dX is rounded once into
 * the 16-bit dX.  A backend with a 16-bit GEMM (gemm16) computes the
 * logits from the 16-bit X and W directly; one with gemm_w16 (the CPU)
 * runs the W-block loops of the logits and dX in one call, with the same
 * products and sums, using the W block of `conv` as its threads' scratch.
 *
 * Precision (mel_set_precision).  EXACT: dZ enters the gradient GEMMs in
 * f32 as above.  FAST16 with 16-bit storage: mel_gemm_round_dz first
 * rounds dZ to the storage dtype into a 16-bit copy dZ16 (after the bias
 * region of `conv`, 256-byte aligned: R·V·2 more bytes) and widens it back
 * over dZ, so every later use (dX, dW, the bias column sum) sees the same
 * rounded values; with gemm16 the dX and dW GEMMs then read dZ16, W and X
 * in 16 bits (fp32 accumulation, no widened W blocks), otherwise they run
 * the f32 GEMMs above on the rounded dZ (numerically the same products).
 * TF32 with f32 storage: the gradient GEMMs are called with grad = 1; a
 * backend with TF32 units (CUDA) may use them there.  The logits GEMM is
 * never affected.
 */
#include "backend.h"

static int is16(mel_dtype t) { return t == MEL_BF16 || t == MEL_F16; }

int64_t mel_gemm_wblock(const mel_backend_ops *ops, int64_t V, int64_t D)
{
    int64_t b = ops->conv_block_bytes / (4 * (D > 0 ? D : 1));
    if (b < 64) b = 64;
    return b < V ? b : V;
}

static int fast16(const mel_ctx *ctx, mel_dtype st) { return is16(st) && (ctx->precision & MEL_PRECISION_FAST16); }

/* bytes of the f32 part of conv: [ X | dX | W block | bias ] */
static int64_t conv_f32_bytes(const mel_backend_ops *ops, int64_t R, int64_t D, int64_t V)
{
    return 4 * (2 * R * D + mel_gemm_wblock(ops, V, D) * D + V);
}

int64_t mel_gemm_conv_bytes(const mel_ctx *ctx, mel_dtype st, int64_t R, int64_t D, int64_t V)
{
    if (!is16(st)) return 0;
    int64_t b = conv_f32_bytes(ctx->ops, R, D, V);
    /* dZ16 after a 256-byte alignment gap (linear in R, as the engine's
     * sizing assumes) */
    if (fast16(ctx, st)) b += 256 + 2 * R * V;
    return b;
}

/* dZ16 in conv (FAST16): [R, V] of the storage dtype */
static void *dz16_of(const mel_ctx *ctx, void *conv, int64_t R, int64_t D, int64_t V)
{
    int64_t off = (conv_f32_bytes(ctx->ops, R, D, V) + 255) / 256 * 256;
    return (char *)conv + off;
}

/* byte address of row r of m */
static const void *row_of(const mel_matrix *m, int64_t r)
{
    return (const char *)m->data + (size_t)(r * m->ld) * mel_dtype_size(m->dtype);
}

mel_status mel_gemm_logits(mel_ctx *ctx, const mel_matrix *x, int64_t r0, int64_t R,
                           const mel_matrix *w, const void *bias, void *Z, void *conv)
{
    const mel_backend_ops *o = ctx->ops;
    const int64_t V = w->rows, D = w->cols;
    mel_status s;
    if (!is16(x->dtype)) {
        s = o->gemm(ctx, x->dtype, 0, 1, R, V, D, 1.0, row_of(x, r0), x->ld, w->data, w->ld, 0.0, Z, V, 0);
        if (s == MEL_OK && bias) s = o->add_bias(ctx, x->dtype, Z, R, V, bias);
        return s;
    }
    const int64_t vb = mel_gemm_wblock(o, V, D);
    float *xf = conv, *wf = xf + 2 * R * D, *bf = wf + vb * D;
    if (o->gemm16) {
        s = o->gemm16(ctx, x->dtype, 0, 1, R, V, D, row_of(x, r0), x->ld, w->data, w->ld, 0.0f,
                      (float *)Z, V);
        if (s) return s;
    } else {
        if ((s = o->widen(ctx, x, r0, R, xf))) return s;
        if (o->gemm_w16) {
            if ((s = o->gemm_w16(ctx, 0, R, xf, D, w, (float *)Z, V, wf, 4 * vb * D))) return s;
        } else for (int64_t v0 = 0; v0 < V; v0 += vb) {
            int64_t n = V - v0 < vb ? V - v0 : vb;
            if ((s = o->widen(ctx, w, v0, n, wf))) return s;
            /* Z[:, v0:v0+n] = Xf · Wfᵀ */
            if ((s = o->gemm(ctx, MEL_F32, 0, 1, R, n, D, 1.0, xf, D, wf, D, 0.0, (float *)Z + v0, V, 0)))
                return s;
        }
    }
    if (!bias) return MEL_OK;
    mel_matrix bm = {(void *)bias, w->dtype, 1, V, V};
    if ((s = o->widen(ctx, &bm, 0, 1, bf))) return s;
    return o->add_bias(ctx, MEL_F32, Z, R, V, bf);
}

mel_status mel_gemm_round_dz(mel_ctx *ctx, void *dZ, int64_t R, mel_dtype st, int64_t D, int64_t V, void *conv)
{
    if (!fast16(ctx, st) || R <= 0) return MEL_OK;
    const mel_backend_ops *o = ctx->ops;
    mel_matrix z16 = {dz16_of(ctx, conv, R, D, V), st, R, V, V};
    mel_status s = o->store16(ctx, &z16, 0, R, (const float *)dZ, 0);
    if (s == MEL_OK) s = o->widen(ctx, &z16, 0, R, (float *)dZ);
    return s;
}

/* The f32 dX chunk into the 16-bit dX, rounded once; under vocabulary
 * parallelism summed over the processes first (vp_sum). */
static mel_status store_dx16(mel_ctx *ctx, const mel_matrix *dx, int64_t r0, int64_t R, float *dxf, int accumulate,
                             int vp_sum)
{
    mel_status s;
    if (vp_sum && (s = mel_vp_sum(ctx, dxf, MEL_F32, R, dx->cols, dx->cols))) return s;
    return ctx->ops->store16(ctx, dx, r0, R, dxf, accumulate);
}

mel_status mel_gemm_grad_x(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *w,
                           const mel_matrix *dx, int64_t r0, int accumulate, void *conv, int vp_sum16)
{
    const mel_backend_ops *o = ctx->ops;
    const int64_t V = w->rows, D = w->cols;
    mel_status s;
    if (!is16(w->dtype)) {
        return o->gemm(ctx, w->dtype, 0, 0, R, D, V, 1.0, dZ, V, w->data, w->ld, accumulate ? 1.0 : 0.0,
                       (void *)row_of(dx, r0), dx->ld, 1);
    }
    float *dxf = (float *)conv + R * D, *wf = (float *)conv + 2 * R * D;
    if (fast16(ctx, w->dtype) && o->gemm16) {
        /* dXf = dZ16 · W16, fp32 accumulation */
        if ((s = o->gemm16(ctx, w->dtype, 0, 0, R, D, V, dz16_of(ctx, conv, R, D, V), V, w->data, w->ld, 0.0f,
                           dxf, D)))
            return s;
        return store_dx16(ctx, dx, r0, R, dxf, accumulate, vp_sum16);
    }
    const int64_t vb = mel_gemm_wblock(o, V, D);
    if (o->gemm_w16) {
        if ((s = o->gemm_w16(ctx, 1, R, (const float *)dZ, V, w, dxf, D, wf, 4 * vb * D))) return s;
        return store_dx16(ctx, dx, r0, R, dxf, accumulate, vp_sum16);
    }
    for (int64_t v0 = 0; v0 < V; v0 += vb) {
        int64_t n = V - v0 < vb ? V - v0 : vb;
        if ((s = o->widen(ctx, w, v0, n, wf))) return s;
        /* dXf (+)= dZ[:, v0:v0+n] · Wf */
        if ((s = o->gemm(ctx, MEL_F32, 0, 0, R, D, n, 1.0, (const float *)dZ + v0, V, wf, D, v0 ? 1.0 : 0.0,
                         dxf, D, 0)))
            return s;
    }
    return store_dx16(ctx, dx, r0, R, dxf, accumulate, vp_sum16);
}

/* dW[V, D] += dZ[R, V]ᵀ · X[R, D] (compute dtype ct), in blocks of dW rows
 * when the backend asks (dw_block_bytes: the packed dZᵀ of one block). */
static mel_status grad_w_gemm(mel_ctx *ctx, mel_dtype ct, int64_t R, const void *dZ, int64_t V,
                              const void *X, int64_t ldx, const mel_matrix *dw, int grad_gemm)
{
    const mel_backend_ops *o = ctx->ops;
    const int64_t D = dw->cols, es = (int64_t)mel_dtype_size(ct);
    int64_t vb = V;
    if (o->dw_block_bytes > 0 && R > 0) {
        vb = o->dw_block_bytes / (R * es);
        if (vb < 256) vb = 256; /* keep the GEMMs large */
    }
    mel_status s = MEL_OK;
    for (int64_t v0 = 0; v0 < V && s == MEL_OK; v0 += vb) {
        const int64_t n = V - v0 < vb ? V - v0 : vb;
        s = o->gemm(ctx, ct, 1, 0, n, D, R, 1.0, (const char *)dZ + v0 * es, V, X, ldx, 1.0,
                    (char *)dw->data + v0 * dw->ld * es, dw->ld, grad_gemm);
    }
    return s;
}

mel_status mel_gemm_grad_w(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *x, int64_t r0,
                           const mel_matrix *dw, void *conv)
{
    const mel_backend_ops *o = ctx->ops;
    const int64_t V = dw->rows, D = dw->cols;
    mel_status s;
    if (!is16(x->dtype)) return grad_w_gemm(ctx, x->dtype, R, dZ, V, row_of(x, r0), x->ld, dw, 1);
    if (fast16(ctx, x->dtype) && o->gemm16) /* dW += dZ16ᵀ · X16, fp32 accumulation in dW */
        return o->gemm16(ctx, x->dtype, 1, 0, V, D, R, dz16_of(ctx, conv, R, D, V), V, row_of(x, r0), x->ld,
                         1.0f, (float *)dw->data, dw->ld);
    float *xf = conv;
    s = o->widen(ctx, x, r0, R, xf);
    if (s) return s;
    return grad_w_gemm(ctx, MEL_F32, R, dZ, V, xf, D, dw, 0);
}
