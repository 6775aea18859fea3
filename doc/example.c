#include <stdio.h>
#include <mel.h>

/* mean cross-entropy of X·Wᵀ and its gradients, without the N×V logits */
int train_step(const float *X, const float *W, const int64_t *labels,
               int64_t N, int64_t D, int64_t V, float *dX, float *dW, double *loss)
{
    mel_ctx *ctx;
    mel_transform *ce;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return -1;
    if (mel_transform_builtin(ctx, "ce", NULL, &ce)) { mel_ctx_destroy(ctx); return -1; }
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat((void *)X, MEL_F32, N, D, 0), mel_mat((void *)W, MEL_F32, V, D, 0), NULL);
    mel_args_index(a, "labels", labels, MEL_I64, N);
    mel_args_output(a, loss, MEL_F64);                      /* reduction: mean */
    mel_args_grad_head(a, 0, mel_mat(dX, MEL_F32, N, D, 0), mel_mat(dW, MEL_F32, V, D, 0),
                       NULL, MEL_OVERWRITE_DW);
    mel_status s = mel_forward_backward(ctx, ce, a);    /* one fused pass */
    if (s) fprintf(stderr, "libmel: %s\n", mel_last_error(ctx)); /* names the bad value */
    mel_args_free(a); mel_transform_free(ce); mel_ctx_destroy(ctx);
    return s ? -1 : 0;
}

int main(void)
{
    /* N = 2 rows, D = 1, V = 2: logits [1, 0] and [2, 0], labels 0 and 1 */
    const float X[2] = {1, 2}, W[2] = {1, 0};
    const int64_t labels[2] = {0, 1};
    float dX[2], dW[2];
    double loss;
    if (train_step(X, W, labels, 2, 1, 2, dX, dW, &loss)) return 1;
    printf("loss %.6f\n", loss); /* (log(1 + e^-1) + log(1 + e^2)) / 2 = 1.220095 */
    return 0;
}
