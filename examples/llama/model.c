/* model.c -- Llama forward/backward, optimizers and checkpoints (model.h). */
#include "model.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------------ config */

int llama_config_preset(const char *name, llama_config *c)
{
    if (strcmp(name, "tiny") == 0) {
        /* ~124k parameters: a few hundred steps take about a minute. */
        *c = (llama_config){.dim = 64, .n_layers = 2, .n_heads = 4,
                            .n_kv_heads = 2, .ffn = 172, .vocab = 512,
                            .tied = 1, .rope_theta = 10000.0,
                            .rms_eps = 1e-5};
        return 0;
    }
    if (strcmp(name, "llama-3.2-1b") == 0) {
        /* The shape of meta-llama/Llama-3.2-1B (1.236e9 parameters). */
        *c = (llama_config){.dim = 2048, .n_layers = 16, .n_heads = 32,
                            .n_kv_heads = 8, .ffn = 8192, .vocab = 128256,
                            .tied = 1, .rope_theta = 500000.0,
                            .rms_eps = 1e-5};
        return 0;
    }
    return -1;
}

int llama_config_check(const llama_config *c, char *err, size_t errlen)
{
    if (c->dim < 2 || c->n_layers < 1 || c->n_heads < 1 || c->n_kv_heads < 1 ||
        c->ffn < 1 || c->vocab < 1) {
        snprintf(err, errlen, "every dimension must be >= 1 (dim >= 2)");
        return -1;
    }
    if (c->dim % c->n_heads != 0) {
        snprintf(err, errlen, "dim %d is not a multiple of heads %d", c->dim,
                 c->n_heads);
        return -1;
    }
    if ((c->dim / c->n_heads) % 2 != 0) {
        snprintf(err, errlen, "head size dim/heads = %d must be even for RoPE",
                 c->dim / c->n_heads);
        return -1;
    }
    if (c->n_heads % c->n_kv_heads != 0) {
        snprintf(err, errlen, "heads %d is not a multiple of kv-heads %d",
                 c->n_heads, c->n_kv_heads);
        return -1;
    }
    if (!(c->rope_theta > 1.0) || !isfinite(c->rope_theta)) {
        snprintf(err, errlen, "rope-theta %g must be > 1", c->rope_theta);
        return -1;
    }
    if (!(c->rms_eps > 0.0)) {
        snprintf(err, errlen, "rms eps %g must be > 0", c->rms_eps);
        return -1;
    }
    if (c->tied != 0 && c->tied != 1) {
        snprintf(err, errlen, "tied must be 0 or 1");
        return -1;
    }
    return 0;
}

void llama_layout_init(const llama_config *c, llama_layout *lo)
{
    const int64_t D = c->dim, E = c->dim / c->n_heads, H = c->n_heads,
                  G = c->n_kv_heads, F = c->ffn, V = c->vocab;
    int64_t o = 0;
    lo->attn_norm = o; o += D;
    lo->wq = o;        o += H * E * D;
    lo->wk = o;        o += G * E * D;
    lo->wv = o;        o += G * E * D;
    lo->wo = o;        o += D * H * E;
    lo->mlp_norm = o;  o += D;
    lo->wg = o;        o += F * D;
    lo->wu = o;        o += F * D;
    lo->wd = o;        o += D * F;
    lo->layer_stride = o;
    lo->tok_emb = 0;
    lo->layer0 = V * D;
    lo->final_norm = lo->layer0 + (int64_t)c->n_layers * lo->layer_stride;
    lo->total = lo->final_norm + D;
    if (c->tied) {
        lo->lm_head = lo->tok_emb;
    } else {
        lo->lm_head = lo->total;
        lo->total += V * D;
    }
}

int llama_tensor_list(const llama_config *c, const llama_layout *lo, int max,
                      int64_t *off, int64_t *len, char (*name)[32],
                      int *is_matrix)
{
    const int64_t D = c->dim, E = c->dim / c->n_heads, H = c->n_heads,
                  G = c->n_kv_heads, F = c->ffn, V = c->vocab;
    int n = 0;
#define ADD(o, l, nm, mat)                                                     \
    do {                                                                       \
        if (n < max) {                                                         \
            if (off) off[n] = (o);                                             \
            if (len) len[n] = (l);                                             \
            if (name) snprintf(name[n], 32, "%s", (nm));                       \
            if (is_matrix) is_matrix[n] = (mat);                               \
        }                                                                      \
        n++;                                                                   \
    } while (0)
    char buf[32];
    ADD(lo->tok_emb, V * D, "tok_emb", 1);
    for (int l = 0; l < c->n_layers; l++) {
        int64_t b = lo->layer0 + l * lo->layer_stride;
        static const char *nm[9] = {"attn_norm", "wq", "wk", "wv", "wo",
                                    "mlp_norm", "wg", "wu", "wd"};
        int64_t o[9] = {lo->attn_norm, lo->wq, lo->wk, lo->wv, lo->wo,
                        lo->mlp_norm, lo->wg, lo->wu, lo->wd};
        int64_t s[9] = {D, H * E * D, G * E * D, G * E * D, D * H * E,
                        D, F * D, F * D, D * F};
        for (int i = 0; i < 9; i++) {
            snprintf(buf, sizeof buf, "layers.%d.%s", l, nm[i]);
            ADD(b + o[i], s[i], buf, i != 0 && i != 5);
        }
    }
    ADD(lo->final_norm, D, "final_norm", 0);
    if (!c->tied) ADD(lo->lm_head, V * D, "lm_head", 1);
#undef ADD
    return n;
}

/* --------------------------------------------------------------------- rng */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void llama_rng_seed(llama_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t llama_rng_u64(llama_rng *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
    return res;
}

double llama_rng_uniform(llama_rng *r)
{
    return (double)(llama_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

double llama_rng_normal(llama_rng *r)
{
    /* Box–Muller; the second value is dropped to keep the stream simple. */
    double u1 = llama_rng_uniform(r), u2 = llama_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

void llama_init_params(const llama_config *c, const llama_layout *lo,
                       float *p, uint64_t seed)
{
    enum { MAXT = 4096 };
    int64_t off[MAXT], len[MAXT];
    int mat[MAXT];
    int nt = llama_tensor_list(c, lo, MAXT, off, len, NULL, mat);
    if (nt > MAXT) nt = MAXT; /* 9·L + 3 tensors: L <= 454 */
    for (int i = 0; i < nt; i++) {
        if (!mat[i]) {
            for (int64_t j = 0; j < len[i]; j++) p[off[i] + j] = 1.0f;
            continue;
        }
        /* Blocks of 64k values, each with its own stream derived from
         * (seed, tensor, block): the result does not depend on threads. */
        const int64_t BLK = 65536, nb = (len[i] + BLK - 1) / BLK;
#pragma omp parallel for schedule(static)
        for (int64_t b = 0; b < nb; b++) {
            llama_rng r;
            llama_rng_seed(&r, seed ^ ((uint64_t)(i + 1) * 0xD1B54A32D192ED03ull) ^
                                   ((uint64_t)(b + 1) * 0x9E3779B97F4A7C15ull));
            int64_t lo_ = b * BLK, hi = lo_ + BLK < len[i] ? lo_ + BLK : len[i];
            for (int64_t j = lo_; j < hi; j++)
                p[off[i] + j] = (float)(0.02 * llama_rng_normal(&r));
        }
    }
}

/* ------------------------------------------------------------- activations */

static int threads_max(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int llama_acts_alloc(const llama_config *c, int B, int T, llama_acts *a)
{
    memset(a, 0, sizeof *a);
    const int64_t L = c->n_layers, D = c->dim, H = c->n_heads,
                  G = c->n_kv_heads, E = D / H, F = c->ffn, N = (int64_t)B * T;
    a->B = B; a->T = T; a->N = N;
    int64_t nthr = threads_max();
    struct { float **p; int64_t n; } want[] = {
        {&a->rope_cos, (int64_t)T * (E / 2)}, {&a->rope_sin, (int64_t)T * (E / 2)},
        {&a->x_in, L * N * D}, {&a->rstd1, L * N}, {&a->xn1, L * N * D},
        {&a->q, L * N * H * E}, {&a->k, L * N * G * E}, {&a->v, L * N * G * E},
        {&a->prob, L * B * H * (int64_t)T * T}, {&a->ao, L * N * H * E},
        {&a->h_mid, L * N * D}, {&a->rstd2, L * N}, {&a->xn2, L * N * D},
        {&a->g, L * N * F}, {&a->u, L * N * F}, {&a->a, L * N * F},
        {&a->h_out, N * D}, {&a->rstdf, N}, {&a->hn, N * D}, {&a->dhn, N * D},
        {&a->dh, N * D}, {&a->dxn, N * D}, {&a->dao, N * H * E},
        {&a->dq, N * H * E}, {&a->dk, N * G * E}, {&a->dv, N * G * E},
        {&a->dg, N * F}, {&a->du, N * F}, {&a->da, N * F},
        {&a->dprob, nthr * (int64_t)T},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        *want[i].p = malloc((size_t)want[i].n * sizeof(float));
        if (!*want[i].p) {
            llama_acts_free(a);
            return -1;
        }
        a->bytes += want[i].n * (int64_t)sizeof(float);
    }
    /* RoPE tables as in HF transformers: inv_freq_i = 1/θ^(2i/E) rounded to
     * fp32, angle = t·inv_freq_i, pairs (i, i + E/2) ("rotate half"). */
    for (int t = 0; t < T; t++)
        for (int64_t i = 0; i < E / 2; i++) {
            float inv = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / (double)E));
            double ang = (double)t * (double)inv;
            a->rope_cos[t * (E / 2) + i] = (float)cos(ang);
            a->rope_sin[t * (E / 2) + i] = (float)sin(ang);
        }
    return 0;
}

void llama_acts_free(llama_acts *a)
{
    float **all[] = {&a->rope_cos, &a->rope_sin, &a->x_in, &a->rstd1, &a->xn1,
                     &a->q, &a->k, &a->v, &a->prob, &a->ao, &a->h_mid,
                     &a->rstd2, &a->xn2, &a->g, &a->u, &a->a, &a->h_out,
                     &a->rstdf, &a->hn, &a->dhn, &a->dh, &a->dxn, &a->dao,
                     &a->dq, &a->dk, &a->dv, &a->dg, &a->du, &a->da,
                     &a->dprob};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        free(*all[i]);
        *all[i] = NULL;
    }
}

/* ------------------------------------------------------------------ layers */

/* Y [N, out] = X [N, in] · W [out, in]ᵀ */
static void linear_fwd(const float *X, const float *W, float *Y, int64_t N,
                       int64_t in, int64_t out)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)out,
                (int)in, 1.0f, X, (int)in, W, (int)in, 0.0f, Y, (int)out);
}

/* dX [N, in] = beta·dX + dY [N, out] · W [out, in] */
static void linear_bwd_x(const float *dY, const float *W, float *dX,
                         int64_t N, int64_t in, int64_t out, float beta)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)in,
                (int)out, 1.0f, dY, (int)out, W, (int)in, beta, dX, (int)in);
}

/* dW [out, in] = dY [N, out]ᵀ · X [N, in]  (overwrites) */
static void linear_bwd_w(const float *dY, const float *X, float *dW,
                         int64_t N, int64_t in, int64_t out)
{
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in,
                (int)N, 1.0f, dY, (int)out, X, (int)in, 0.0f, dW, (int)in);
}

/* y [N, D] = w [D] ⊙ x / rms(x);  rstd [N] = 1/sqrt(mean(x²) + eps) */
static void rmsnorm_fwd(const float *x, const float *w, float *y, float *rstd,
                        int64_t N, int64_t D, double eps)
{
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * D;
        double ss = 0;
        for (int64_t j = 0; j < D; j++) ss += (double)xr[j] * xr[j];
        float r = (float)(1.0 / sqrt(ss / (double)D + eps));
        rstd[n] = r;
        for (int64_t j = 0; j < D; j++) y[n * D + j] = w[j] * (xr[j] * r);
    }
}

/* Given dy [N, D]: dx [N, D] += r·(w⊙dy) − x·r³·Σ_j(w_j dy_j x_j)/D,
 * dw [D] = Σ_n dy ⊙ x·r (overwritten). */
static void rmsnorm_bwd(const float *x, const float *w, const float *rstd,
                        const float *dy, float *dx, float *dw, int64_t N,
                        int64_t D)
{
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * D, *dyr = dy + n * D;
        const double r = rstd[n];
        double dot = 0;
        for (int64_t j = 0; j < D; j++) dot += (double)w[j] * dyr[j] * xr[j];
        const double c = dot * r * r * r / (double)D;
        for (int64_t j = 0; j < D; j++)
            dx[n * D + j] += (float)(r * w[j] * dyr[j] - c * xr[j]);
    }
#pragma omp parallel for schedule(static)
    for (int64_t j = 0; j < D; j++) {
        double s = 0;
        for (int64_t n = 0; n < N; n++)
            s += (double)dy[n * D + j] * x[n * D + j] * rstd[n];
        dw[j] = (float)s;
    }
}

/* In place on x [N, nh·E]: for i < E/2,
 *   (x_i, x_{i+E/2}) ← (x_i c − x_{i+E/2} s, x_{i+E/2} c + x_i s)
 * with c, s of position t = n mod T.  inverse != 0 applies the transpose
 * (the backward pass). */
static void rope_apply(float *x, int64_t N, int T, int64_t nh, int64_t E,
                       const float *cos_t, const float *sin_t, int inverse)
{
    const int64_t h2 = E / 2;
    const float sgn = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const float *cs = cos_t + (n % T) * h2, *sn = sin_t + (n % T) * h2;
        for (int64_t h = 0; h < nh; h++) {
            float *xh = x + (n * nh + h) * E;
            for (int64_t i = 0; i < h2; i++) {
                float a = xh[i], b = xh[i + h2], c = cs[i], s = sgn * sn[i];
                xh[i] = a * c - b * s;
                xh[i + h2] = b * c + a * s;
            }
        }
    }
}

/* Causal attention.  q [N, H·E], k, v [N, G·E] → out [N, H·E];
 * prob [B, H, T, T] (row t holds softmax over j <= t, zeros after). */
static void attention_fwd(const float *q, const float *k, const float *v,
                          float *prob, float *out, int B, int T, int64_t H,
                          int64_t G, int64_t E)
{
    const int64_t rep = H / G;
    const float scale = (float)(1.0 / sqrt((double)E));
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / rep;
            for (int t = 0; t < T; t++) {
                const float *qr = q + ((int64_t)b * T + t) * H * E + h * E;
                float *pr = prob + (((int64_t)b * H + h) * T + t) * T;
                float mx = -INFINITY;
                for (int j = 0; j <= t; j++) {
                    const float *kr = k + ((int64_t)b * T + j) * G * E + g * E;
                    float s = 0;
                    for (int64_t e = 0; e < E; e++) s += qr[e] * kr[e];
                    s *= scale;
                    pr[j] = s;
                    if (s > mx) mx = s;
                }
                double sum = 0;
                for (int j = 0; j <= t; j++) {
                    pr[j] = expf(pr[j] - mx);
                    sum += pr[j];
                }
                const float inv = (float)(1.0 / sum);
                for (int j = 0; j <= t; j++) pr[j] *= inv;
                for (int j = t + 1; j < T; j++) pr[j] = 0.0f;
                float *orow = out + ((int64_t)b * T + t) * H * E + h * E;
                for (int64_t e = 0; e < E; e++) orow[e] = 0.0f;
                for (int j = 0; j <= t; j++) {
                    const float *vr = v + ((int64_t)b * T + j) * G * E + g * E;
                    const float pj = pr[j];
                    for (int64_t e = 0; e < E; e++) orow[e] += pj * vr[e];
                }
            }
        }
}

/* Backward of attention_fwd: dout [N, H·E] → dq [N, H·E] (overwritten),
 * dk, dv [N, G·E] (overwritten).  Parallel over (b, KV head) so that the
 * query heads sharing a KV head accumulate into dk/dv in one thread. */
static void attention_bwd(const float *q, const float *k, const float *v,
                          const float *prob, const float *dout, float *dq,
                          float *dk, float *dv, float *scratch, int B, int T,
                          int64_t H, int64_t G, int64_t E)
{
    const int64_t rep = H / G;
    const float scale = (float)(1.0 / sqrt((double)E));
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int64_t g = 0; g < G; g++) {
            float *dp = scratch + (int64_t)thread_id() * T; /* [T] */
            for (int t = 0; t < T; t++) {
                float *dkr = dk + ((int64_t)b * T + t) * G * E + g * E;
                float *dvr = dv + ((int64_t)b * T + t) * G * E + g * E;
                for (int64_t e = 0; e < E; e++) dkr[e] = dvr[e] = 0.0f;
            }
            for (int64_t h = g * rep; h < (g + 1) * rep; h++)
                for (int t = 0; t < T; t++) {
                    const int64_t rq = ((int64_t)b * T + t) * H * E + h * E;
                    const float *qr = q + rq, *dor = dout + rq;
                    const float *pr = prob + (((int64_t)b * H + h) * T + t) * T;
                    float *dqr = dq + rq;
                    double c = 0;
                    for (int j = 0; j <= t; j++) {
                        const int64_t rk = ((int64_t)b * T + j) * G * E + g * E;
                        const float *vr = v + rk;
                        float *dvr = dv + rk;
                        float s = 0;
                        for (int64_t e = 0; e < E; e++) {
                            s += dor[e] * vr[e];
                            dvr[e] += pr[j] * dor[e];
                        }
                        dp[j] = s;
                        c += (double)pr[j] * s;
                    }
                    for (int64_t e = 0; e < E; e++) dqr[e] = 0.0f;
                    for (int j = 0; j <= t; j++) {
                        const int64_t rk = ((int64_t)b * T + j) * G * E + g * E;
                        const float ds = pr[j] * (dp[j] - (float)c) * scale;
                        const float *kr = k + rk;
                        float *dkr = dk + rk;
                        for (int64_t e = 0; e < E; e++) {
                            dqr[e] += ds * kr[e];
                            dkr[e] += ds * qr[e];
                        }
                    }
                }
        }
}

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

/* ---------------------------------------------------------------- forward */

#define LAYER(p, lo, l) ((p) + (lo)->layer0 + (int64_t)(l) * (lo)->layer_stride)

void llama_forward(const llama_config *c, const llama_layout *lo,
                   const float *p, const int32_t *tokens, llama_acts *a)
{
    const int64_t N = a->N, D = c->dim, H = c->n_heads, G = c->n_kv_heads,
                  E = D / H, F = c->ffn;
    const int B = a->B, T = a->T;

    /* x_in[0] [N, D] = tok_emb[tokens] */
    const float *emb = p + lo->tok_emb;
    for (int64_t n = 0; n < N; n++)
        memcpy(a->x_in + n * D, emb + (int64_t)tokens[n] * D, D * sizeof(float));

    for (int l = 0; l < c->n_layers; l++) {
        const float *P = LAYER(p, lo, l);
        float *x = a->x_in + l * N * D, *xn1 = a->xn1 + l * N * D;
        float *q = a->q + l * N * H * E, *k = a->k + l * N * G * E,
              *v = a->v + l * N * G * E, *ao = a->ao + l * N * H * E;
        float *hm = a->h_mid + l * N * D, *xn2 = a->xn2 + l * N * D;
        float *gg = a->g + l * N * F, *uu = a->u + l * N * F,
              *aa = a->a + l * N * F;
        float *next = l + 1 < c->n_layers ? a->x_in + (l + 1) * N * D : a->h_out;

        /* attention block */
        rmsnorm_fwd(x, P + lo->attn_norm, xn1, a->rstd1 + l * N, N, D, c->rms_eps);
        linear_fwd(xn1, P + lo->wq, q, N, D, H * E); /* q [N, H·E] */
        linear_fwd(xn1, P + lo->wk, k, N, D, G * E); /* k [N, G·E] */
        linear_fwd(xn1, P + lo->wv, v, N, D, G * E); /* v [N, G·E] */
        rope_apply(q, N, T, H, E, a->rope_cos, a->rope_sin, 0);
        rope_apply(k, N, T, G, E, a->rope_cos, a->rope_sin, 0);
        attention_fwd(q, k, v, a->prob + (int64_t)l * B * H * T * T, ao, B, T,
                      H, G, E);
        linear_fwd(ao, P + lo->wo, hm, N, H * E, D); /* hm [N, D] = ao·woᵀ */
        for (int64_t i = 0; i < N * D; i++) hm[i] += x[i];

        /* MLP block */
        rmsnorm_fwd(hm, P + lo->mlp_norm, xn2, a->rstd2 + l * N, N, D, c->rms_eps);
        linear_fwd(xn2, P + lo->wg, gg, N, D, F); /* g [N, F] */
        linear_fwd(xn2, P + lo->wu, uu, N, D, F); /* u [N, F] */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * F; i++) aa[i] = silu(gg[i]) * uu[i];
        linear_fwd(aa, P + lo->wd, next, N, F, D); /* next [N, D] = a·wdᵀ */
        for (int64_t i = 0; i < N * D; i++) next[i] += hm[i];
    }
    rmsnorm_fwd(a->h_out, p + lo->final_norm, a->hn, a->rstdf, N, D, c->rms_eps);
}

/* --------------------------------------------------------------- backward */

void llama_backward(const llama_config *c, const llama_layout *lo,
                    const float *p, const int32_t *tokens, llama_acts *a,
                    float *gr)
{
    const int64_t N = a->N, D = c->dim, H = c->n_heads, G = c->n_kv_heads,
                  E = D / H, F = c->ffn;
    const int B = a->B, T = a->T;
    float *dh = a->dh; /* dL/d(residual stream) [N, D] */

    memset(dh, 0, (size_t)(N * D) * sizeof(float));
    rmsnorm_bwd(a->h_out, p + lo->final_norm, a->rstdf, a->dhn, dh,
                gr + lo->final_norm, N, D);

    for (int l = c->n_layers - 1; l >= 0; l--) {
        const float *P = LAYER(p, lo, l);
        float *Gl = LAYER(gr, lo, l);
        const float *x = a->x_in + l * N * D, *xn1 = a->xn1 + l * N * D;
        const float *q = a->q + l * N * H * E, *k = a->k + l * N * G * E,
                    *v = a->v + l * N * G * E, *ao = a->ao + l * N * H * E;
        const float *hm = a->h_mid + l * N * D, *xn2 = a->xn2 + l * N * D;
        const float *gg = a->g + l * N * F, *uu = a->u + l * N * F,
                    *aa = a->a + l * N * F;

        /* MLP: next = hm + wd·(silu(g)⊙u); dh is dL/dnext, also dL/dhm. */
        linear_bwd_w(dh, aa, Gl + lo->wd, N, F, D);     /* dwd [D, F]  */
        linear_bwd_x(dh, P + lo->wd, a->da, N, F, D, 0); /* da [N, F]   */
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < N * F; i++) {
            float g = gg[i], s = 1.0f / (1.0f + expf(-g));
            a->du[i] = a->da[i] * g * s;
            a->dg[i] = a->da[i] * uu[i] * s * (1.0f + g * (1.0f - s));
        }
        linear_bwd_w(a->dg, xn2, Gl + lo->wg, N, D, F);        /* dwg [F, D] */
        linear_bwd_w(a->du, xn2, Gl + lo->wu, N, D, F);        /* dwu [F, D] */
        linear_bwd_x(a->dg, P + lo->wg, a->dxn, N, D, F, 0);   /* dxn2       */
        linear_bwd_x(a->du, P + lo->wu, a->dxn, N, D, F, 1);
        rmsnorm_bwd(hm, P + lo->mlp_norm, a->rstd2 + l * N, a->dxn, dh,
                    Gl + lo->mlp_norm, N, D);                  /* dh += ...  */

        /* attention: hm = x + wo·attn(rope(wq·xn1), rope(wk·xn1), wv·xn1) */
        linear_bwd_w(dh, ao, Gl + lo->wo, N, H * E, D);        /* dwo        */
        linear_bwd_x(dh, P + lo->wo, a->dao, N, H * E, D, 0);  /* dao        */
        attention_bwd(q, k, v, a->prob + (int64_t)l * B * H * T * T, a->dao,
                      a->dq, a->dk, a->dv, a->dprob, B, T, H, G, E);
        rope_apply(a->dq, N, T, H, E, a->rope_cos, a->rope_sin, 1);
        rope_apply(a->dk, N, T, G, E, a->rope_cos, a->rope_sin, 1);
        linear_bwd_w(a->dq, xn1, Gl + lo->wq, N, D, H * E);
        linear_bwd_w(a->dk, xn1, Gl + lo->wk, N, D, G * E);
        linear_bwd_w(a->dv, xn1, Gl + lo->wv, N, D, G * E);
        linear_bwd_x(a->dq, P + lo->wq, a->dxn, N, D, H * E, 0);
        linear_bwd_x(a->dk, P + lo->wk, a->dxn, N, D, G * E, 1);
        linear_bwd_x(a->dv, P + lo->wv, a->dxn, N, D, G * E, 1);
        rmsnorm_bwd(x, P + lo->attn_norm, a->rstd1 + l * N, a->dxn, dh,
                    Gl + lo->attn_norm, N, D);
    }

    /* Embedding: scatter-add dh rows.  Tied: onto the head's dW already in
     * place; untied: the embedding gradient starts from zero. */
    float *dE = gr + lo->tok_emb;
    if (!c->tied) memset(dE, 0, (size_t)c->vocab * D * sizeof(float));
    for (int64_t n = 0; n < N; n++) {
        float *row = dE + (int64_t)tokens[n] * D;
        for (int64_t j = 0; j < D; j++) row[j] += dh[n * D + j];
    }
}

/* -------------------------------------------------------------- optimizer */

int llama_optim_init(llama_optim *o, llama_opt_kind kind, double lr,
                     double weight_decay, const llama_layout *lo)
{
    memset(o, 0, sizeof *o);
    o->kind = kind;
    o->lr = lr;
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->eps = 1e-8;
    o->weight_decay = weight_decay;
    if (kind == OPT_ADAMW) {
        o->m = calloc((size_t)lo->total, sizeof(float));
        o->v = calloc((size_t)lo->total, sizeof(float));
        if (!o->m || !o->v) {
            llama_optim_free(o);
            return -1;
        }
    }
    return 0;
}

void llama_optim_free(llama_optim *o)
{
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

void llama_optim_step(llama_optim *o, const llama_config *c,
                      const llama_layout *lo, float *p, const float *g)
{
    enum { MAXT = 4096 };
    int64_t off[MAXT], len[MAXT];
    int mat[MAXT];
    int nt = llama_tensor_list(c, lo, MAXT, off, len, NULL, mat);
    if (nt > MAXT) nt = MAXT;
    o->t++;
    const double lr = o->lr;
    const double bc1 = 1.0 - pow(o->beta1, (double)o->t),
                 bc2 = 1.0 - pow(o->beta2, (double)o->t);
    const float b1 = (float)o->beta1, b2 = (float)o->beta2;
    for (int i = 0; i < nt; i++) {
        float *pp = p + off[i];
        const float *gg = g + off[i];
        const int64_t n = len[i];
        const float decay = (float)(mat[i] ? 1.0 - lr * o->weight_decay : 1.0);
        if (o->kind == OPT_SGD) {
            const float flr = (float)lr;
#pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < n; j++) pp[j] = pp[j] * decay - flr * gg[j];
        } else {
            float *m = o->m + off[i], *v = o->v + off[i];
            const float a = (float)(lr / bc1), sb2 = (float)(1.0 / sqrt(bc2)),
                        eps = (float)o->eps;
#pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < n; j++) {
                m[j] = b1 * m[j] + (1.0f - b1) * gg[j];
                v[j] = b2 * v[j] + (1.0f - b2) * gg[j] * gg[j];
                pp[j] = pp[j] * decay - a * m[j] / (sqrtf(v[j]) * sb2 + eps);
            }
        }
    }
}

/* ------------------------------------------------------------- checkpoint */

#define CKPT_MAGIC "MELLAMA1"
#define CKPT_HEADER 128

static void put_u32(unsigned char *b, uint32_t v)
{
    for (int i = 0; i < 4; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *b)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)b[i] << (8 * i);
    return v;
}
static void put_u64(unsigned char *b, uint64_t v)
{
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_u64(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)b[i] << (8 * i);
    return v;
}
static void put_f64(unsigned char *b, double d)
{
    uint64_t v;
    memcpy(&v, &d, 8);
    put_u64(b, v);
}
static double get_f64(const unsigned char *b)
{
    uint64_t v = get_u64(b);
    double d;
    memcpy(&d, &v, 8);
    return d;
}

static int host_is_little_endian(void)
{
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

int llama_ckpt_save(const char *path, const llama_config *c,
                    const llama_layout *lo, const float *p, int64_t step,
                    char *err, size_t errlen)
{
    if (!host_is_little_endian()) {
        snprintf(err, errlen, "%s: checkpoints are little-endian; this host is not", path);
        return -1;
    }
    unsigned char h[CKPT_HEADER];
    memset(h, 0, sizeof h);
    memcpy(h, CKPT_MAGIC, 8);
    put_u32(h + 8, 1);           /* version       */
    put_u32(h + 12, CKPT_HEADER);
    put_u32(h + 16, (uint32_t)c->dim);
    put_u32(h + 20, (uint32_t)c->n_layers);
    put_u32(h + 24, (uint32_t)c->n_heads);
    put_u32(h + 28, (uint32_t)c->n_kv_heads);
    put_u32(h + 32, (uint32_t)c->ffn);
    put_u32(h + 36, (uint32_t)c->vocab);
    put_u32(h + 40, (uint32_t)c->tied);
    put_u32(h + 44, 0);          /* dtype 0 = f32 */
    put_f64(h + 48, c->rope_theta);
    put_f64(h + 56, c->rms_eps);
    put_u64(h + 64, (uint64_t)lo->total);
    put_u64(h + 72, (uint64_t)step);
    FILE *f = fopen(path, "wb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int bad = fwrite(h, 1, sizeof h, f) != sizeof h ||
              fwrite(p, sizeof(float), (size_t)lo->total, f) != (size_t)lo->total;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        snprintf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

static int read_header(FILE *f, const char *path, llama_config *c,
                       int64_t *n_params, int64_t *step, char *err,
                       size_t errlen)
{
    unsigned char h[CKPT_HEADER];
    if (fread(h, 1, sizeof h, f) != sizeof h) {
        snprintf(err, errlen, "%s: truncated header", path);
        return -1;
    }
    if (memcmp(h, CKPT_MAGIC, 8) != 0) {
        snprintf(err, errlen, "%s: not a llama-train checkpoint (bad magic)", path);
        return -1;
    }
    if (get_u32(h + 8) != 1 || get_u32(h + 12) != CKPT_HEADER) {
        snprintf(err, errlen, "%s: unsupported version %u", path, get_u32(h + 8));
        return -1;
    }
    if (get_u32(h + 44) != 0) {
        snprintf(err, errlen, "%s: unsupported dtype %u", path, get_u32(h + 44));
        return -1;
    }
    c->dim = (int)get_u32(h + 16);
    c->n_layers = (int)get_u32(h + 20);
    c->n_heads = (int)get_u32(h + 24);
    c->n_kv_heads = (int)get_u32(h + 28);
    c->ffn = (int)get_u32(h + 32);
    c->vocab = (int)get_u32(h + 36);
    c->tied = (int)get_u32(h + 40);
    c->rope_theta = get_f64(h + 48);
    c->rms_eps = get_f64(h + 56);
    *n_params = (int64_t)get_u64(h + 64);
    if (step) *step = (int64_t)get_u64(h + 72);
    char e2[160];
    if (llama_config_check(c, e2, sizeof e2) != 0) {
        snprintf(err, errlen, "%s: bad configuration: %s", path, e2);
        return -1;
    }
    return 0;
}

int llama_ckpt_peek(const char *path, llama_config *c, int64_t *step,
                    char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int64_t n;
    int rc = read_header(f, path, c, &n, step, err, errlen);
    fclose(f);
    return rc;
}

int llama_ckpt_load(const char *path, const llama_config *c,
                    const llama_layout *lo, float *p, char *err,
                    size_t errlen)
{
    if (!host_is_little_endian()) {
        snprintf(err, errlen, "%s: checkpoints are little-endian; this host is not", path);
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    llama_config fc;
    int64_t n;
    if (read_header(f, path, &fc, &n, NULL, err, errlen) != 0) {
        fclose(f);
        return -1;
    }
    if (fc.dim != c->dim || fc.n_layers != c->n_layers ||
        fc.n_heads != c->n_heads || fc.n_kv_heads != c->n_kv_heads ||
        fc.ffn != c->ffn || fc.vocab != c->vocab || fc.tied != c->tied ||
        n != lo->total) {
        snprintf(err, errlen, "%s: configuration differs from the model's", path);
        fclose(f);
        return -1;
    }
    if (fread(p, sizeof(float), (size_t)n, f) != (size_t)n) {
        snprintf(err, errlen, "%s: truncated (expected %lld floats)", path,
                 (long long)n);
        fclose(f);
        return -1;
    }
    fclose(f);
    return 0;
}
