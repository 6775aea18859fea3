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
 * logits from the 16-bit X and W directly.
 */
#include "backend.h"

static int is16(mel_dtype t) { return t == MEL_BF16 || t == MEL_F16; }

int64_t mel_gemm_wblock(const mel_backend_ops *ops, int64_t V, int64_t D)
{
    int64_t b = ops->conv_block_bytes / (4 * (D > 0 ? D : 1));
    if (b < 64) b = 64;
    return b < V ? b : V;
}

int64_t mel_gemm_conv_bytes(const mel_backend_ops *ops, mel_dtype st, int64_t R, int64_t D, int64_t V)
{
    if (!is16(st)) return 0;
    return 4 * (2 * R * D + mel_gemm_wblock(ops, V, D) * D + V);
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
        s = o->gemm(ctx, x->dtype, 0, 1, R, V, D, 1.0, row_of(x, r0), x->ld, w->data, w->ld, 0.0, Z, V);
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
        for (int64_t v0 = 0; v0 < V; v0 += vb) {
            int64_t n = V - v0 < vb ? V - v0 : vb;
            if ((s = o->widen(ctx, w, v0, n, wf))) return s;
            /* Z[:, v0:v0+n] = Xf · Wfᵀ */
            if ((s = o->gemm(ctx, MEL_F32, 0, 1, R, n, D, 1.0, xf, D, wf, D, 0.0, (float *)Z + v0, V)))
                return s;
        }
    }
    if (!bias) return MEL_OK;
    mel_matrix bm = {(void *)bias, w->dtype, 1, V, V};
    if ((s = o->widen(ctx, &bm, 0, 1, bf))) return s;
    return o->add_bias(ctx, MEL_F32, Z, R, V, bf);
}

mel_status mel_gemm_grad_x(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *w,
                           const mel_matrix *dx, int64_t r0, int accumulate, void *conv)
{
    const mel_backend_ops *o = ctx->ops;
    const int64_t V = w->rows, D = w->cols;
    mel_status s;
    if (!is16(w->dtype))
        return o->gemm(ctx, w->dtype, 0, 0, R, D, V, 1.0, dZ, V, w->data, w->ld, accumulate ? 1.0 : 0.0,
                       (void *)row_of(dx, r0), dx->ld);
    float *dxf = (float *)conv + R * D, *wf = (float *)conv + 2 * R * D;
    const int64_t vb = mel_gemm_wblock(o, V, D);
    for (int64_t v0 = 0; v0 < V; v0 += vb) {
        int64_t n = V - v0 < vb ? V - v0 : vb;
        if ((s = o->widen(ctx, w, v0, n, wf))) return s;
        /* dXf (+)= dZ[:, v0:v0+n] · Wf */
        if ((s = o->gemm(ctx, MEL_F32, 0, 0, R, D, n, 1.0, (const float *)dZ + v0, V, wf, D, v0 ? 1.0 : 0.0,
                         dxf, D)))
            return s;
    }
    return o->store16(ctx, dx, r0, R, dxf, accumulate);
}

mel_status mel_gemm_grad_w(mel_ctx *ctx, const void *dZ, int64_t R, const mel_matrix *x, int64_t r0,
                           const mel_matrix *dw, void *conv)
{
    const mel_backend_ops *o = ctx->ops;
    const int64_t V = dw->rows, D = dw->cols;
    if (!is16(x->dtype))
        return o->gemm(ctx, x->dtype, 1, 0, V, D, R, 1.0, dZ, V, row_of(x, r0), x->ld, 1.0, dw->data, dw->ld);
    float *xf = conv;
    mel_status s = o->widen(ctx, x, r0, R, xf);
    if (s) return s;
    return o->gemm(ctx, MEL_F32, 1, 0, V, D, R, 1.0, dZ, V, xf, D, 1.0, dw->data, dw->ld);
}
