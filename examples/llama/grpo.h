/*
 * grpo.h -- the pieces of `llama-train --task grpo` (doc/llama.md, "GRPO"):
 * the task and its reward, sampling completions from the policy, and the
 * GRPO loss of the output layer computed two ways.
 *
 * Rows.  A batch is B = prompts × group sequences; sequence b is a prompt
 * of P tokens followed by a completion of at most C tokens.  The model
 * reads the first P + C − 1 tokens; hidden row (b, P − 1 + t) predicts
 * completion token t.  The loss works on the N = B·C completion rows in
 * row-major order (row b·C + t), as the "grpo" transform expects:
 *   X [N, D]  those hidden rows (final-norm output) of the policy,
 *   Xr [N, D] the same rows of the frozen reference policy (when β ≠ 0),
 *   labels [N] the sampled tokens, mask [N] (1 up to and including the end
 *   token, 0 after it), adv [N] the sequence's advantage on each of its
 *   rows, old [N] the log-probabilities recorded at sampling time.
 *
 * grpo_naive_* materialises the fp32 logits, their gradient and the
 * reference logits (3·N·V floats) and writes the loss and its gradient out
 * by hand; it is an independent reference for grpo_mel_*, which calls
 * libmel's built-in "grpo" transform (policy = head 0, reference = head 1,
 * ref_source = 1) with the weights of mel_grpo_weights.
 */
#ifndef LLAMA_GRPO_H
#define LLAMA_GRPO_H
#include <stdint.h>
#include "mel.h"
#include "model.h"

/* ---- the task: continue the sequence ----
 * Prompt: GRPO_PROMPT_LEN = 3 consecutive digits counting up modulo 10
 * from a random start s ("789").  Answer: the next three digits, then the
 * end token ("012\n").
 * Reward of a completion c (grpo_reward), in [0, 1]: 1/4 for each of
 * c[0], c[1], c[2] equal to the next digit, counting stops at the first
 * end token; and 1/4 more when all three are right and c[3] is the end
 * token.  A uniformly random policy over 512 tokens scores about 0.0015;
 * the reward has no part a policy can earn without reading the prompt. */
#define GRPO_PROMPT_LEN 3
#define GRPO_END_TOKEN '\n'

/* Draw a prompt: tokens [GRPO_PROMPT_LEN]. */
void grpo_task_prompt(llama_rng *r, int32_t *tokens);
/* Reward of completion c [C] for prompt [GRPO_PROMPT_LEN]. */
double grpo_reward(const int32_t *prompt, const int32_t *c, int C);

/* ---- sampling ----
 * Sample one completion per sequence from the policy p, autoregressively:
 * at step t the model runs on the whole [B, P + C − 1] input (positions
 * after P − 1 + t hold the pad token and, by causality, do not matter) and
 * completion token t is drawn from softmax(z / temperature) of hidden row
 * P − 1 + t.  `inputs` [B, P + C − 1] holds the prompts in its first P
 * columns on entry; on return the completion tokens are in comp [B·C]
 * (and in inputs), mask [B·C] is 1 up to and including the first end token
 * and 0 after it (those tokens are set to the end token), and old [B·C] is
 * log softmax(z / temperature)[token] of each sampled token (0 where the
 * mask is 0).  a must be sized [B, P + C − 1]; zbuf holds B·V floats,
 * xbuf B·D. */
void grpo_sample(const llama_config *c, const llama_layout *lo,
                 const float *p, llama_acts *a, int P, int C,
                 double temperature, llama_rng *rng, int32_t *inputs,
                 int32_t *comp, double *mask, double *old, float *zbuf,
                 float *xbuf);

/* Copy the completion rows of a->hn [B, P + C − 1, D] into X [B·C, D]. */
void grpo_gather_rows(const llama_acts *a, int D, int P, int C, float *X);
/* Scatter dX [B·C, D] into a->dhn, zero on the prompt rows. */
void grpo_scatter_rows(llama_acts *a, int D, int P, int C, const float *dX);

/* ---- the loss ---- */
typedef struct grpo_cfg {
    int loss_type;         /* mel_grpo_loss_type                          */
    int seq_level;         /* 0 token, 1 sequence (GSPO)                  */
    double beta;           /* KL coefficient; > 0 reads the reference     */
    double eps_low, eps_high, delta; /* delta 0 = off                     */
    double temperature;
    int B, C;              /* sequences; rows per sequence (= max length) */
} grpo_cfg;

/* What a head reports besides the loss (masked means over the batch). */
typedef struct grpo_stats {
    double loss;       /* Σ w·ℓ                                          */
    double abs_loss;   /* Σ w·|ℓ| (naive head only; 0 from libmel)       */
    double kl;         /* Σ m·kl / Σ m (0 when β = 0)                    */
    double clip;       /* Σ m·is_clipped / Σ m                           */
    double ratio;      /* Σ m·r / Σ m                                    */
    int64_t clipped;   /* number of clipped tokens                        */
} grpo_stats;

typedef struct grpo_naive {
    int64_t N, V;
    float *logits;     /* [N, V]  z = X·Wᵀ                                */
    float *dlogits;    /* [N, V]  dL/dz                                   */
    float *ref_logits; /* [N, V]  Xr·Wrᵀ (NULL when β = 0)                */
    double *logp, *ref_logp, *w, *dlogp; /* [N] each                      */
} grpo_naive;
/* 0, or -1 when an allocation fails. */
int grpo_naive_init(grpo_naive *h, int64_t N, int64_t V, int with_ref);
void grpo_naive_free(grpo_naive *h);
/* Bytes of the N×V tensors: 2 or 3 (with the reference) × N·V·4. */
int64_t grpo_naive_bytes(const grpo_naive *h);
/* Per-sequence advantages, written plainly (same formula as
 * mel_group_advantages): rewards [n] in groups of `group`. */
void grpo_naive_advantages(const double *rewards, int64_t n, int64_t group,
                           int scale, double *adv);
/* Loss of cfg on the rows described above; dX [N, D] and dW [V, D]
 * overwritten. */
void grpo_naive_run(grpo_naive *h, const grpo_cfg *cfg, const float *X,
                    const float *W, const float *Xr, const float *Wr, int64_t D,
                    const int32_t *labels, const double *mask,
                    const double *adv, const double *old, float *dX, float *dW,
                    grpo_stats *st);

typedef struct grpo_mel {
    mel_ctx *ctx;
    mel_transform *t;
    mel_params *params;               /* the transform's, for the loss-type weights */
    mel_args *args;
    double *w, *kl, *clipped, *ratio; /* [N] each                         */
    int64_t N;
    mel_stats last;
    int64_t peak_workspace;           /* max over calls                    */
    char err[512];
} grpo_mel;
/* threads / chunk_rows / workspace_bytes: 0 = libmel's default.
 * 0, or -1 with h->err set. */
int grpo_mel_init(grpo_mel *h, const grpo_cfg *cfg, int threads,
                  int64_t chunk_rows, int64_t workspace_bytes);
void grpo_mel_free(grpo_mel *h);
/* Same contract as grpo_naive_run; 0, or -1 with h->err set. */
int grpo_mel_run(grpo_mel *h, const grpo_cfg *cfg, const float *X,
                 const float *W, const float *Xr, const float *Wr, int64_t D,
                 int64_t V, const int32_t *labels, const double *mask,
                 const double *adv, const double *old, float *dX, float *dW,
                 grpo_stats *st);

#endif
