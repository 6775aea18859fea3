/* head.c -- naive full-logits CE head and the libmel head (head.h). */
#include "head.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ naive */

int head_naive_init(head_naive *h, int64_t N, int64_t V)
{
    h->N = N;
    h->V = V;
    h->logits = malloc((size_t)(N * V) * sizeof(float));
    h->dlogits = malloc((size_t)(N * V) * sizeof(float));
    if (!h->logits || !h->dlogits) {
        head_naive_free(h);
        return -1;
    }
    return 0;
}

void head_naive_free(head_naive *h)
{
    free(h->logits);
    free(h->dlogits);
    h->logits = h->dlogits = NULL;
}

int64_t head_naive_bytes(const head_naive *h)
{
    return 2 * h->N * h->V * (int64_t)sizeof(float);
}

void head_naive_run(head_naive *h, const float *X, const float *W,
                    int64_t D, const int32_t *labels, float *dX, float *dW,
                    double *loss)
{
    const int64_t N = h->N, V = h->V;
    float *Z = h->logits, *dZ = h->dlogits;

    /* Z [N, V] = X [N, D] · W [V, D]ᵀ */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)V,
                (int)D, 1.0f, X, (int)D, W, (int)D, 0.0f, Z, (int)V);

    int64_t valid = 0;
    for (int64_t n = 0; n < N; n++) valid += labels[n] != HEAD_IGNORE_INDEX;
    const double inv_valid = valid > 0 ? 1.0 / (double)valid : 0.0;

    /* Per row: lse = max + log Σ exp(z − max) (sum in double);
     * loss_n = lse − z[y];  dZ = (softmax − onehot(y)) / #valid. */
    double total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
    for (int64_t n = 0; n < N; n++) {
        const float *z = Z + n * V;
        float *dz = dZ + n * V;
        const int32_t y = labels[n];
        if (y == HEAD_IGNORE_INDEX) {
            memset(dz, 0, (size_t)V * sizeof(float));
            continue;
        }
        float mx = z[0];
        for (int64_t j = 1; j < V; j++)
            if (z[j] > mx) mx = z[j];
        double s = 0;
        for (int64_t j = 0; j < V; j++) s += exp((double)z[j] - mx);
        const double lse = mx + log(s);
        total += lse - (double)z[y];
        for (int64_t j = 0; j < V; j++)
            dz[j] = (float)(exp((double)z[j] - lse) * inv_valid);
        dz[y] -= (float)inv_valid;
    }
    *loss = total * inv_valid;

    /* dX [N, D] = dZ [N, V] · W [V, D];  dW [V, D] = dZᵀ · X */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)D,
                (int)V, 1.0f, dZ, (int)V, W, (int)D, 0.0f, dX, (int)D);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)V, (int)D,
                (int)N, 1.0f, dZ, (int)V, X, (int)D, 0.0f, dW, (int)D);
}

/* -------------------------------------------------------------------- mel */

static int mel_fail(head_mel *h, const char *what, mel_status s)
{
    snprintf(h->err, sizeof h->err, "%s: %s (%s)", what, mel_status_str(s),
             h->ctx ? mel_last_error(h->ctx) : mel_ctx_create_error());
    return -1;
}

int llama_mel_context(mel_ctx **ctx, char *err, size_t errlen, int threads, int64_t chunk_rows,
                      int64_t workspace_bytes)
{
    const char *what = "mel_ctx_create";
    mel_status s = mel_ctx_create(MEL_BACKEND_CPU, ctx);
    if (s == MEL_OK && threads > 0 && (s = mel_set_threads(*ctx, threads)) != MEL_OK)
        what = "mel_set_threads";
    else if (s == MEL_OK && (s = mel_set_chunk_rows(*ctx, chunk_rows)) != MEL_OK)
        what = "mel_set_chunk_rows";
    else if (s == MEL_OK && (s = mel_set_workspace_limit(*ctx, workspace_bytes)) != MEL_OK)
        what = "mel_set_workspace_limit";
    if (s == MEL_OK) return 0;
    snprintf(err, errlen, "%s: %s (%s)", what, mel_status_str(s),
             *ctx ? mel_last_error(*ctx) : mel_ctx_create_error());
    return -1;
}

int head_mel_init(head_mel *h, int threads, int64_t chunk_rows,
                  int64_t workspace_bytes)
{
    memset(h, 0, sizeof *h);
    if (llama_mel_context(&h->ctx, h->err, sizeof h->err, threads, chunk_rows, workspace_bytes))
        return -1;
    mel_status s;
    mel_params *prm = mel_params_new();
    if (!prm) {
        snprintf(h->err, sizeof h->err, "mel_params_new: out of memory");
        return -1;
    }
    s = mel_params_set(prm, "ignore_index", HEAD_IGNORE_INDEX);
    if (s == MEL_OK) s = mel_transform_builtin(h->ctx, "ce", prm, &h->ce);
    mel_params_free(prm);
    if (s != MEL_OK) return mel_fail(h, "mel_transform_builtin(\"ce\")", s);
    h->args = mel_args_new();
    if (!h->args) {
        snprintf(h->err, sizeof h->err, "mel_args_new: out of memory");
        return -1;
    }
    return 0;
}

void head_mel_free(head_mel *h)
{
    mel_args_free(h->args);
    mel_transform_free(h->ce);
    mel_ctx_destroy(h->ctx);
    h->args = NULL;
    h->ce = NULL;
    h->ctx = NULL;
}

int head_mel_run(head_mel *h, const float *X, const float *W, int64_t N,
                 int64_t D, int64_t V, const int32_t *labels, float *dX,
                 float *dW, double *loss)
{
    mel_args *a = h->args;
    mel_status s;
    mel_args_clear(a);
    /* X [N, D], W [V, D] fp32; labels int32 [N]; mean CE; dX overwritten,
     * dW overwritten (MEL_OVERWRITE_DW). libmel never writes X or W. */
    if ((s = mel_args_head(a, 0, mel_mat((void *)X, MEL_F32, N, D, 0),
                           mel_mat((void *)W, MEL_F32, V, D, 0), NULL)) != MEL_OK)
        return mel_fail(h, "mel_args_head", s);
    if ((s = mel_args_index(a, "labels", labels, MEL_I32, N)) != MEL_OK)
        return mel_fail(h, "mel_args_index", s);
    if ((s = mel_args_reduction(a, MEL_REDUCE_MEAN, NULL)) != MEL_OK)
        return mel_fail(h, "mel_args_reduction", s);
    if ((s = mel_args_output(a, loss, MEL_F64)) != MEL_OK)
        return mel_fail(h, "mel_args_output", s);
    if ((s = mel_args_grad_head(a, 0, mel_mat(dX, MEL_F32, N, D, 0),
                                mel_mat(dW, MEL_F32, V, D, 0), NULL,
                                MEL_OVERWRITE_DW)) != MEL_OK)
        return mel_fail(h, "mel_args_grad_head", s);
    if ((s = mel_forward_backward(h->ctx, h->ce, a)) != MEL_OK)
        return mel_fail(h, "mel_forward_backward", s);
    mel_get_stats(h->ctx, &h->last);
    if (h->last.peak_workspace_bytes > h->peak_workspace)
        h->peak_workspace = h->last.peak_workspace_bytes;
    return 0;
}
