/* Independent fp64 naive references for the tests: full logits, closed-form
 * maths written separately from the library (no libmel code is used). */
#ifndef MEL_TEST_REF_H
#define MEL_TEST_REF_H
#include <stdint.h>

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

/* Given per-row weights s[i] (the upstream gradient of each row) and G:
 * dX = (s∘G)·W, dW = (s∘G)ᵀ·X, db = Σ_i s_i G[i,:]. */
void ref_backprop(int64_t N, int64_t D, int64_t V, const double *X, const double *W,
                  const double *G, const double *s, double *dX, double *dW, double *db);

/* max |a − b| / max(max |b|, floor) over n entries; NaN if any NaN. */
double ref_relerr(const double *a, const double *b, int64_t n, double floor);
double ref_relerr_f32(const float *a, const double *b, int64_t n, double floor);
#endif
