#include "ref.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

void ref_logits(int64_t N, int64_t D, int64_t V, const double *X, const double *W,
                const double *b, double *Z)
{
    for (int64_t i = 0; i < N; i++)
        for (int64_t v = 0; v < V; v++) {
            double acc = b ? b[v] : 0.0;
            for (int64_t d = 0; d < D; d++) acc += X[i * D + d] * W[v * D + d];
            Z[i * V + v] = acc;
        }
}

void ref_ce_defaults(ref_ce_opts *o)
{
    o->ignore_index = -100;
    o->label_smoothing = 0;
    o->z_loss = 0;
    o->softcap = 0;
    o->logit_scale = 1;
    o->temperature = 1;
}

int64_t ref_ce(int64_t N, int64_t V, const double *Z, const int64_t *labels,
               const ref_ce_opts *o, double *y, double *G)
{
    double *q = malloc((size_t)V * sizeof *q), *dq = malloc((size_t)V * sizeof *dq);
    int64_t valid = 0;
    for (int64_t i = 0; i < N; i++) {
        const double *z = Z + i * V;
        /* q = cap·tanh(s·z/cap)/T; dq/dz per entry */
        for (int64_t v = 0; v < V; v++) {
            double u = z[v] * o->logit_scale, du = o->logit_scale;
            if (o->softcap > 0) {
                double th = tanh(u / o->softcap);
                du *= 1 - th * th;
                u = o->softcap * th;
            }
            q[v] = u / o->temperature;
            dq[v] = du / o->temperature;
        }
        if (labels[i] == o->ignore_index) {
            y[i] = 0;
            if (G)
                for (int64_t v = 0; v < V; v++) G[i * V + v] = 0;
            continue;
        }
        valid++;
        double m = -INFINITY;
        for (int64_t v = 0; v < V; v++) m = q[v] > m ? q[v] : m;
        double se = 0, sq = 0;
        for (int64_t v = 0; v < V; v++) se += exp(q[v] - m), sq += q[v];
        double lse = m + log(se);
        double eps = o->label_smoothing;
        double nll = lse - q[labels[i]];
        double smooth = lse - sq / (double)V;
        y[i] = (1 - eps) * nll + eps * smooth + o->z_loss * lse * lse;
        if (!G) continue;
        for (int64_t v = 0; v < V; v++) {
            double p = exp(q[v] - lse);
            double g = p - (1 - eps) * (v == labels[i]) - eps / (double)V + 2 * o->z_loss * lse * p;
            G[i * V + v] = g * dq[v];
        }
    }
    free(q);
    free(dq);
    return valid;
}

void ref_backprop(int64_t N, int64_t D, int64_t V, const double *X, const double *W,
                  const double *G, const double *s, double *dX, double *dW, double *db)
{
    for (int64_t i = 0; i < N * D; i++) dX[i] = 0;
    for (int64_t i = 0; i < V * D; i++) dW[i] = 0;
    if (db)
        for (int64_t v = 0; v < V; v++) db[v] = 0;
    for (int64_t i = 0; i < N; i++)
        for (int64_t v = 0; v < V; v++) {
            double g = s[i] * G[i * V + v];
            if (g == 0) continue;
            for (int64_t d = 0; d < D; d++) {
                dX[i * D + d] += g * W[v * D + d];
                dW[v * D + d] += g * X[i * D + d];
            }
            if (db) db[v] += g;
        }
}

static double maxabs(const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) m = fabs(b[i]) > m ? fabs(b[i]) : m;
    return m;
}

double ref_relerr(const double *a, const double *b, int64_t n, double floor)
{
    double den = maxabs(b, n), e = 0;
    if (den < floor) den = floor;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (isnan(d)) return NAN;
        e = d > e ? d : e;
    }
    return e / den;
}

double ref_relerr_f32(const float *a, const double *b, int64_t n, double floor)
{
    double den = maxabs(b, n), e = 0;
    if (den < floor) den = floor;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (isnan(d)) return NAN;
        e = d > e ? d : e;
    }
    return e / den;
}

/* log-softmax of z/T into out */
static void ref_log_softmax(int64_t V, const double *z, double T, double *out)
{
    double mx = -INFINITY, acc = 0;
    for (int64_t v = 0; v < V; v++) mx = fmax(mx, z[v] / T);
    for (int64_t v = 0; v < V; v++) acc += exp(z[v] / T - mx);
    for (int64_t v = 0; v < V; v++) out[v] = z[v] / T - mx - log(acc);
}

int64_t ref_kd(int64_t N, int64_t V, const double *Zs, const double *Zt, const int64_t *labels,
               int64_t ignore_index, int kind, double beta, double T, int t2, double *y, double *G)
{
    double *ls = malloc((size_t)V * sizeof *ls), *lt = malloc((size_t)V * sizeof *lt);
    double *g = malloc((size_t)V * sizeof *g);
    const double scale = t2 ? T * T : 1.0;
    int64_t counted = 0;
    for (int64_t i = 0; i < N; i++) {
        double *gi = G + i * V;
        if (labels && labels[i] == ignore_index) {
            y[i] = 0;
            for (int64_t v = 0; v < V; v++) gi[v] = 0;
            continue;
        }
        counted++;
        ref_log_softmax(V, Zs + i * V, T, ls);
        ref_log_softmax(V, Zt + i * V, T, lt);
        /* d = the divergence; g = ∂d/∂p_s (up to a constant per row, which
         * the softmax Jacobian removes) */
        double d = 0;
        for (int64_t v = 0; v < V; v++) {
            const double ps = exp(ls[v]), pt = exp(lt[v]);
            if (kind == 0) {
                d += pt * (lt[v] - ls[v]);
                g[v] = -pt / ps;
            } else if (kind == 1) {
                d += ps * (ls[v] - lt[v]);
                g[v] = ls[v] - lt[v] + 1;
            } else {
                const double m = beta * pt + (1 - beta) * ps, lm = log(m);
                d += beta * pt * (lt[v] - lm) + (1 - beta) * ps * (ls[v] - lm);
                g[v] = (1 - beta) * (ls[v] - lm);
            }
        }
        /* ∂d/∂z_k = (1/T)·p_s,k·(g_k − Σ_j p_s,j g_j) */
        double pg = 0;
        for (int64_t v = 0; v < V; v++) pg += exp(ls[v]) * g[v];
        for (int64_t v = 0; v < V; v++) gi[v] = scale * exp(ls[v]) * (g[v] - pg) / T;
        y[i] = scale * d;
    }
    free(ls), free(lt), free(g);
    return counted;
}

uint16_t ref_to16(double v, mel_dtype dt)
{
    float f = (float)v;
    uint16_t h;
    if (dt == MEL_F16) {
        _Float16 x = (_Float16)f;
        memcpy(&h, &x, 2);
        return h;
    }
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

double ref_from16(uint16_t h, mel_dtype dt)
{
    if (dt == MEL_F16) {
        _Float16 x;
        memcpy(&x, &h, 2);
        return (double)x;
    }
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
