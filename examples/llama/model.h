/*
 * model.h -- a Llama decoder in C, fp32, CPU (OpenBLAS + OpenMP).
 *
 * Token embedding, L × [RMSNorm → grouped-query causal attention with
 * rotary embeddings → residual → RMSNorm → SwiGLU MLP → residual], final
 * RMSNorm.  The output head (logits and loss) is NOT part of this file: the
 * model stops at the normalised hidden states hn [N, D], and the caller's
 * head (libmel or the naive full-logits head, see head.h) turns hn into a
 * loss, dL/dhn and dL/dW_head.  llama_backward then takes dL/dhn back to
 * every parameter.  The layers' backward passes are written by hand; the
 * rule "no hand-written derivatives" concerns libmel's transforms only.
 *
 * Conventions: N = B·T rows (row n = b·T + t), D model width, H query heads,
 * G key/value heads (H % G == 0; query head h reads KV head h / (H/G), the
 * layout of HF transformers' repeat_kv), E = D / H head size, F MLP width,
 * V vocabulary.  Matrices are row-major; a weight W [out, in] maps
 * x [in] to W·x as in torch.nn.Linear.  Sizes are int64_t.
 */
#ifndef LLAMA_MODEL_H
#define LLAMA_MODEL_H
#include <stddef.h>
#include <stdint.h>

typedef struct llama_config {
    int dim;        /* D                                   */
    int n_layers;   /* L                                   */
    int n_heads;    /* H                                   */
    int n_kv_heads; /* G                                   */
    int ffn;        /* F                                   */
    int vocab;      /* V                                   */
    int tied;       /* 1: the head's W is the embedding    */
    double rope_theta;
    double rms_eps;
} llama_config;

/* Fill *c with preset `name` ("tiny" or "llama-3.2-1b"); -1 if unknown. */
int llama_config_preset(const char *name, llama_config *c);
/* 0 when the configuration is usable, else -1 and a one-line message. */
int llama_config_check(const llama_config *c, char *err, size_t errlen);

/* Offsets (in floats) of every tensor inside one flat parameter buffer.
 * The same layout is used for parameters, gradients and optimizer state,
 * and it is the order of the checkpoint format (doc/llama.md):
 *   tok_emb [V, D]
 *   for l in 0..L-1:  attn_norm [D], wq [H·E, D], wk [G·E, D], wv [G·E, D],
 *                     wo [D, H·E], mlp_norm [D], wg [F, D], wu [F, D],
 *                     wd [D, F]
 *   final_norm [D]
 *   lm_head [V, D]    (absent when tied; then lm_head == tok_emb)      */
typedef struct llama_layout {
    int64_t tok_emb, final_norm, lm_head;
    int64_t layer0, layer_stride; /* start of layer 0, floats per layer */
    /* offsets relative to the start of a layer */
    int64_t attn_norm, wq, wk, wv, wo, mlp_norm, wg, wu, wd;
    int64_t total; /* floats in the whole buffer */
} llama_layout;

void llama_layout_init(const llama_config *c, llama_layout *lo);

/* Names of the parameter tensors in layout order, for messages and tests.
 * Returns the number of tensors; fills up to `max` entries of off/len/name
 * (name as "layers.3.wq").  names must hold max × 32 bytes. */
int llama_tensor_list(const llama_config *c, const llama_layout *lo,
                      int max, int64_t *off, int64_t *len, char (*name)[32],
                      int *is_matrix);

/* Random initialisation, deterministic for a seed whatever the thread
 * count: matrices N(0, 0.02²), norm weights 1. */
void llama_init_params(const llama_config *c, const llama_layout *lo,
                       float *p, uint64_t seed);

/* Activations kept by the forward pass for the backward pass, plus the
 * backward's scratch.  Sized for B sequences of T tokens.  One llama_acts
 * may be shared by several models with the same config (used one after
 * the other). */
typedef struct llama_acts {
    int B, T;
    int64_t N;
    float *rope_cos, *rope_sin; /* [T, E/2]                                 */
    /* per layer l (arrays of L slabs) */
    float *x_in;   /* [L][N, D]   input of layer l (residual stream)        */
    float *rstd1;  /* [L][N]      1/rms of x_in                             */
    float *xn1;    /* [L][N, D]   attention-norm output                     */
    float *q;      /* [L][N, H·E] queries after RoPE                        */
    float *k;      /* [L][N, G·E] keys after RoPE                           */
    float *v;      /* [L][N, G·E] values                                    */
    float *prob;   /* [L][B, H, T, T] attention probabilities (causal)      */
    float *ao;     /* [L][N, H·E] attention output before wo                */
    float *h_mid;  /* [L][N, D]   x_in + attention                          */
    float *rstd2;  /* [L][N]                                                */
    float *xn2;    /* [L][N, D]   MLP-norm output                           */
    float *g;      /* [L][N, F]   gate pre-activation                       */
    float *u;      /* [L][N, F]   up projection                             */
    float *a;      /* [L][N, F]   silu(g)·u                                 */
    float *h_out;  /* [N, D]      output of the last layer                  */
    float *rstdf;  /* [N]                                                   */
    float *hn;     /* [N, D]      final-norm output: the head's input X     */
    float *dhn;    /* [N, D]      dL/dhn, written by the head               */
    /* backward scratch */
    float *dh, *dxn, *dao, *dq, *dk, *dv, *dg, *du, *da; /* like the above  */
    float *dprob;  /* [T] per thread × threads: see model.c                 */
    int64_t bytes; /* total bytes allocated                                 */
} llama_acts;

/* 0 on success, -1 when an allocation fails (nothing leaks). */
int llama_acts_alloc(const llama_config *c, int B, int T, llama_acts *a);
void llama_acts_free(llama_acts *a);

/* Forward: tokens [N] (ids in [0, V)) → a->hn [N, D]. */
void llama_forward(const llama_config *c, const llama_layout *lo,
                   const float *p, const int32_t *tokens, llama_acts *a);

/* Backward from a->dhn [N, D] to the gradient buffer g (layout lo).
 * Precondition: the head has already written dL/dW_head into g at
 * lo->lm_head (== lo->tok_emb when tied).  Every other gradient is
 * overwritten (no need to zero g); for a tied model the embedding
 * gradient is added onto the head's. */
void llama_backward(const llama_config *c, const llama_layout *lo,
                    const float *p, const int32_t *tokens, llama_acts *a,
                    float *g);

/* ---- optimizers */
typedef enum { OPT_SGD = 0, OPT_ADAMW = 1 } llama_opt_kind;
typedef struct llama_optim {
    llama_opt_kind kind;
    double lr, beta1, beta2, eps, weight_decay;
    int64_t t;          /* steps taken                                 */
    float *m, *v;       /* AdamW moments (layout lo), NULL for SGD      */
} llama_optim;
/* 0 on success, -1 on allocation failure. */
int llama_optim_init(llama_optim *o, llama_opt_kind kind, double lr,
                     double weight_decay, const llama_layout *lo);
void llama_optim_free(llama_optim *o);
/* One update of p from g.  Weight decay (decoupled, AdamW style, also
 * applied by SGD when non-zero) touches matrices only, not norm weights. */
void llama_optim_step(llama_optim *o, const llama_config *c,
                      const llama_layout *lo, float *p, const float *g);

/* ---- checkpoint (format in doc/llama.md) */
/* Save p (lo->total floats) with the configuration; 0 or -1 + message. */
int llama_ckpt_save(const char *path, const llama_config *c,
                    const llama_layout *lo, const float *p, int64_t step,
                    char *err, size_t errlen);
/* Read only the header: configuration and step. */
int llama_ckpt_peek(const char *path, llama_config *c, int64_t *step,
                    char *err, size_t errlen);
/* Load the parameters into p (lo->total floats) after checking that the
 * file's configuration equals *c. */
int llama_ckpt_load(const char *path, const llama_config *c,
                    const llama_layout *lo, float *p, char *err,
                    size_t errlen);

/* Deterministic RNG (splitmix64 seeding a xoshiro256**). */
typedef struct llama_rng { uint64_t s[4]; } llama_rng;
void llama_rng_seed(llama_rng *r, uint64_t seed);
uint64_t llama_rng_u64(llama_rng *r);
double llama_rng_uniform(llama_rng *r); /* [0, 1) */
double llama_rng_normal(llama_rng *r);  /* N(0, 1) */

#endif
