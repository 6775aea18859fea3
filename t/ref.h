/* Independent fp64 naive references for the tests: full logits, closed-form
 * maths written separately from the library (no libmel code is used). */
#ifndef MEL_TEST_REF_H
#define MEL_TEST_REF_H
#include <stdint.h>
#include "mel.h"

/* 16-bit storage written independently of lib/half.h: f16 through the
 * compiler's _Float16, bf16 by round-to-nearest-even on the f32 bits (a NaN
 * stays a quiet NaN).  dt is MEL_F16 or MEL_BF16. */
uint16_t ref_to16(double v, mel_dtype dt);
double ref_from16(uint16_t h, mel_dtype dt);

/* Z[N,V] = X[N,D]·W[V,D]ᵀ (+ b[V]), plain loops in double. */
void ref_logits(int64_t N, int64_t D, int64_t V, const double *X, const double *W,
                const double *b, double *Z);

typedef struct ref_ce_opts {
    int64_t ignore_index;
    double label_smoothing, z_loss, softcap, logit_scale, temperature;
} ref_ce_opts;
void ref_ce_defaults(ref_ce_opts *o);

/* Cross-entropy per row from raw logits Z: y[i] (0 for ignored rows) and
 * G[i,:] = ∂y_i/∂Z[i,:] (closed form: softmax − one-hot, chained through
 * scale, softcap and temperature).  Returns the number of non-ignored rows. */
int64_t ref_ce(int64_t N, int64_t V, const double *Z, const int64_t *labels,
               const ref_ce_opts *o, double *y, double *G);

/* Distillation per row from raw student logits Zs and teacher logits Zt
 * (both [N,V]), temperature T (p = softmax(z/T)):
 *   kind 0  KL(p_t ‖ p_s)        kind 1  KL(p_s ‖ p_t)
 *   kind 2  β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m),  m = β·p_t + (1−β)·p_s
 * times T² when t2.  labels NULL: every row counts; else rows whose label
 * is ignore_index get y = 0 and G = 0.  G[i,:] = ∂y_i/∂Zs[i,:] in closed
 * form.  Returns the number of rows that count. */
int64_t ref_kd(int64_t N, int64_t V, const double *Zs, const double *Zt, const int64_t *labels,
               int64_t ignore_index, int kind, double beta, double T, int t2, double *y, double *G);

/* Preference losses over sequences (closed form, written from the papers'
 * and TRL's formulas, independently of lib/transforms/pref.c).  Row i is in
 * sequence seq[i] (-1: none); pair b is sequences 2b (chosen) and 2b + 1
 * (rejected); kto's sequences stand alone.  A token counts when labels[i]
 * != ignore_index.  ref_lp: per-token reference log-probs (NULL: reference
 * free).  Returns the batch loss (mean over pairs / sequences, plus
 * alpha × the mean NLL over the batch's chosen tokens) and G[i,:] =
 * ∂loss/∂Z[i,:]; *aux (when not NULL): the mean chosen reward.
 *   kind 0 dpo  loss_type: TRL's code (0 sigmoid, 1 hinge, 2 ipo, 3 exo_pair,
 *               4 nca_pair, 5 robust, 6 bco_pair, 7 sppo_hard, 10 apo_zero,
 *               11 apo_down, 12 discopop, 13 sft, 14 sigmoid_norm)
 *   kind 1 cpo  loss_type 0 sigmoid, 1 hinge, 2 ipo, 3 simpo
 *   kind 2 orpo (alpha is 1; completion: the per-row completion mask of
 *               the sequence sums, NULL = every counted token; the NLL
 *               counts every token with a label)
 *   kind 3 kto  desirable[i] and kl0 on each sequence's first row */
typedef struct ref_pref_opts {
    int kind, loss_type;
    double beta, eps, alpha, gamma, tau, bco_delta, wd, wu;
    int64_t ignore_index;
    const double *completion;
    int nll_per_sequence; /* the NLL over each chosen sequence's own tokens, then the mean over pairs */
} ref_pref_opts;
double ref_pref(int64_t N, int64_t V, const double *Z, const int64_t *labels, const int64_t *seq,
                const double *ref_lp, const double *desirable, const double *kl0, const ref_pref_opts *o,
                double *G, double *aux);

/* Given per-row weights s[i] (the upstream gradient of each row) and G:
 * dX = (s∘G)·W, dW = (s∘G)ᵀ·X, db = Σ_i s_i G[i,:]. */
void ref_backprop(int64_t N, int64_t D, int64_t V, const double *X, const double *W,
                  const double *G, const double *s, double *dX, double *dW, double *db);

/* max |a − b| / max(max |b|, floor) over n entries; NaN if any NaN. */
double ref_relerr(const double *a, const double *b, int64_t n, double floor);
double ref_relerr_f32(const float *a, const double *b, int64_t n, double floor);
#endif
