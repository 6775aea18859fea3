/*
 * head.h -- the output layer + mean cross-entropy of llama-train, two ways.
 *
 * Both heads take X = hn [N, D] (final-norm output), W [V, D] (lm_head or
 * the tied embedding) and labels [N] (ids in [0, V), or -100 to ignore a
 * row), and produce
 *   loss = Σ_valid (logsumexp(z_n) − z_n[label_n]) / #valid,  z = X·Wᵀ,
 *   dX [N, D] = dL/dX (overwritten), dW [V, D] = dL/dW (overwritten).
 *
 * head_naive materialises z [N, V] and dz [N, V] in fp32 (what a plain
 * framework does); it is written here without libmel.  head_mel calls
 * libmel's built-in "ce" transform with mel_forward_backward, which never
 * holds more than a chunk of rows of z.
 */
#ifndef LLAMA_HEAD_H
#define LLAMA_HEAD_H
#include <stdint.h>
#include "mel.h"

#define HEAD_IGNORE_INDEX (-100)

typedef struct head_naive {
    int64_t N, V;
    float *logits;  /* [N, V] */
    float *dlogits; /* [N, V] */
} head_naive;

/* 0, or -1 when the two N×V buffers cannot be allocated. */
int head_naive_init(head_naive *h, int64_t N, int64_t V);
void head_naive_free(head_naive *h);
/* Bytes of full-size tensors this head holds: 2·N·V·4. */
int64_t head_naive_bytes(const head_naive *h);
void head_naive_run(head_naive *h, const float *X, const float *W,
                    int64_t D, const int32_t *labels, float *dX, float *dW,
                    double *loss);

typedef struct head_mel {
    mel_ctx *ctx;
    mel_transform *ce;
    mel_args *args;
    mel_stats last;           /* stats of the last call                 */
    int64_t peak_workspace;   /* max over calls of peak_workspace_bytes */
    char err[512];
} head_mel;

/* threads: 0 = default.  chunk_rows / workspace_bytes: 0 = libmel's
 * default.  0, or -1 with h->err set. */
/* A CPU context with the trainer's thread count (0: default) and chunk policy
 * (chunk_rows / workspace_bytes as mel_set_*): 0, or -1 with a message in err
 * (and *ctx NULL or a context the caller destroys). Shared by both libmel heads. */
int llama_mel_context(mel_ctx **ctx, char *err, size_t errlen, int threads, int64_t chunk_rows,
                      int64_t workspace_bytes);
int head_mel_init(head_mel *h, int threads, int64_t chunk_rows,
                  int64_t workspace_bytes);
void head_mel_free(head_mel *h);
/* 0, or -1 with h->err set (libmel's message). */
int head_mel_run(head_mel *h, const float *X, const float *W, int64_t N,
                 int64_t D, int64_t V, const int32_t *labels, float *dX,
                 float *dW, double *loss);
#endif
