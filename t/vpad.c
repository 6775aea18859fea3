/* Vocabulary padding (vocab_valid = Vv): every built-in on W [V, D] whose
 * rows >= Vv are padding (filled with huge finite values) must give
 * the same y and dX as on W[:Vv], the same dW for the real rows, and an
 * exactly zero gradient for the padded rows. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "ref.h"
#include "tap.h"

enum { N = 12, D = 5, VV = 23, V = 32, T = 4 };

int main(void)
{
    tap_rng rng;
    rng_seed(&rng, test_seed(99));
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) return ok(0, "ctx"), done_testing();
    mel_set_chunk_rows(ctx, 5);
    static double X[N * D], X2[N * D], W[V * D], W2[V * D], mask[N], adv[N], old[N], ref[N];
    int64_t lab[N];
    for (int i = 0; i < N * D; i++) X[i] = rng_normal(&rng), X2[i] = rng_normal(&rng);
    for (int i = 0; i < V * D; i++) W[i] = rng_normal(&rng) * 0.5, W2[i] = rng_normal(&rng) * 0.5;
    for (int v = VV; v < V; v++) /* padding rows: finite garbage the padded path must ignore (NaN
                                    there would still reach dX through dZ·W, as 0·NaN = NaN) */
        for (int d = 0; d < D; d++) W[v * D + d] = d == 0 ? 1e6 : -3e5, W2[v * D + d] = d == 1 ? 7e5 : -1e6;
    for (int i = 0; i < N; i++) {
        lab[i] = i % 4 == 3 ? -100 : rng_int(&rng, VV);
        mask[i] = i % 5 != 4, adv[i] = rng_normal(&rng), old[i] = -3 + rng_normal(&rng) * 0.3;
        ref[i] = -3 + rng_normal(&rng) * 0.3;
    }
    const char *names[] = {"ce", "ce", "logprob", "entropy", "z_loss", "kl", "reverse_kl", "jsd", "grpo"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        const char *nm = names[k];
        int teacher = !strcmp(nm, "kl") || !strcmp(nm, "reverse_kl") || !strcmp(nm, "jsd");
        int grpo = !strcmp(nm, "grpo");
        int labels = strcmp(nm, "entropy") && strcmp(nm, "z_loss");
        mel_transform *tp = NULL, *tu = NULL;
        mel_params *p = mel_params_new();
        if (k == 1) mel_params_set(p, "label_smoothing", 0.2), mel_params_set(p, "z_loss", 1e-2);
        if (teacher) mel_params_set(p, "temperature", 1.5);
        if (grpo) mel_params_set(p, "use_old_logp", 1), mel_params_set(p, "beta", 0.1);
        mel_status s1 = mel_transform_builtin(ctx, nm, p, &tu);
        mel_params_set(p, "vocab_valid", VV);
        mel_status s2 = mel_transform_builtin(ctx, nm, p, &tp);
        mel_params_free(p);
        if (!ok(s1 == MEL_OK && s2 == MEL_OK, "%s%s: builds with vocab_valid", nm, k == 1 ? " (ls, z-loss)" : ""))
            continue;
        double y[2][N], dx[2][N * D], dw[2][V * D];
        for (int pass = 0; pass < 2; pass++) {
            int64_t vv = pass ? V : VV;
            mel_args *a = mel_args_new();
            mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W, MEL_F64, vv, D, 0), NULL);
            if (teacher) mel_args_head(a, 1, mel_mat(X2, MEL_F64, N, D, 0), mel_mat(W2, MEL_F64, vv, D, 0), NULL);
            if (labels) mel_args_index(a, "labels", lab, MEL_I64, N);
            if (grpo) {
                mel_args_input(a, "mask", mask, MEL_F64, N);
                mel_args_input(a, "advantages", adv, MEL_F64, N);
                mel_args_input(a, "old_logp", old, MEL_F64, N);
                mel_args_input(a, "ref_logp", ref, MEL_F64, N);
            }
            mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
            mel_args_output(a, y[pass], MEL_F64);
            memset(dw[pass], 0, sizeof dw[pass]);
            mel_args_grad_head(a, 0, mel_mat(dx[pass], MEL_F64, N, D, 0), mel_mat(dw[pass], MEL_F64, vv, D, 0),
                               NULL, MEL_OVERWRITE_DW);
            mel_status s = mel_forward_backward(ctx, pass ? tp : tu, a);
            if (s) diag("%s: %s", nm, mel_last_error(ctx));
            mel_args_free(a);
        }
        double ey = ref_relerr(y[1], y[0], N, 1e-300), ex = ref_relerr(dx[1], dx[0], N * D, 1e-300);
        double ew = ref_relerr(dw[1], dw[0], VV * D, 1e-300), pad = 0;
        for (int i = VV * D; i < V * D; i++) pad = fmax(pad, fabs(dw[1][i]) + (isnan(dw[1][i]) ? 1 : 0));
        ok(ey < 1e-12 && ex < 1e-12 && ew < 1e-12 && pad == 0,
           "%s: padded V=%d (Vv=%d) = unpadded: rel err y %.1e dX %.1e dW %.1e, padded dW max %g", nm, V, VV,
           ey, ex, ew, pad);
        mel_transform_free(tp);
        mel_transform_free(tu);
    }
    (void)T;
    /* a label in a padded column is an error; vocab_valid > V is the same as no padding */
    {
        mel_params *p = mel_params_new();
        mel_params_set(p, "vocab_valid", VV);
        mel_params_set(p, "label_smoothing", 0.1);
        mel_transform *t = NULL, *t2 = NULL, *t0 = NULL;
        mel_transform_builtin(ctx, "ce", p, &t);
        mel_params_set(p, "vocab_valid", V + 10);
        mel_transform_builtin(ctx, "ce", p, &t2);
        mel_params_set(p, "vocab_valid", 0);
        mel_transform_builtin(ctx, "ce", p, &t0);
        mel_params_free(p);
        double y0, y2;
        int64_t l2[N];
        memcpy(l2, lab, sizeof l2);
        l2[2] = VV + 1;
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(X, MEL_F64, N, D, 0), mel_mat(W2, MEL_F64, V, D, 0), NULL);
        mel_args_index(a, "labels", l2, MEL_I64, N);
        mel_args_output(a, &y0, MEL_F64);
        mel_status s = mel_forward(ctx, t, a);
        ok(s == MEL_ERR_INVALID_ARGUMENT && strstr(mel_last_error(ctx), "labels[2] = 24 is outside [0, 23) (the real vocabulary"),
           "a label in a padded column is rejected: %s", mel_last_error(ctx));
        mel_args_index(a, "labels", lab, MEL_I64, N);
        for (int i = 0; i < V * D; i++) W2[i] = rng_normal(&rng) * 0.5; /* finite everywhere */
        mel_args_output(a, &y0, MEL_F64);
        mel_status s0 = mel_forward(ctx, t0, a);
        mel_args_output(a, &y2, MEL_F64);
        mel_status s2 = mel_forward(ctx, t2, a);
        ok(s0 == MEL_OK && s2 == MEL_OK && fabs(y0 - y2) <= 1e-14 * fabs(y0),
           "vocab_valid > V behaves as no padding (label smoothing mean over V): %.15g vs %.15g", y2, y0);
        mel_args_free(a);
        mel_transform_free(t), mel_transform_free(t2), mel_transform_free(t0);
    }
    mel_ctx_destroy(ctx);
    return done_testing();
}
