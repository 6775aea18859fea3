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

/* ------------------------------------------------ preference losses */

static double sg(double x) { return 1 / (1 + exp(-x)); }
static double lsg(double x) { return x < 0 ? x - log1p(exp(x)) : -log1p(exp(-x)); }

/* Loss of one pair and its partial derivatives dc, dr with respect to the
 * chosen and rejected quantities c, r (log ratios, or for ipo / cpo's
 * averaged types the token means).  nc, nr: token counts. */
static double pair_loss(const ref_pref_opts *o, double c, double r, double *dc, double *dr)
{
    const double b = o->beta, e = o->eps;
    const double x = b * (c - r);
    double L = 0, dx = 0; /* dL/dx, x = β(c − r) */
    *dc = *dr = 0;
    if (o->kind == 0) {
        switch (o->loss_type) {
        case 0: L = -(1 - e) * lsg(x) - e * lsg(-x); dx = -(1 - e) * sg(-x) + e * sg(x); break;
        case 5:
            L = (e * lsg(-x) - (1 - e) * lsg(x)) / (1 - 2 * e);
            dx = (-e * sg(x) - (1 - e) * sg(-x)) / (1 - 2 * e);
            break;
        case 1: L = x < 1 ? 1 - x : 0; dx = x < 1 ? -1 : 0; break;
        case 14: L = -lsg(x); dx = -sg(-x); break; /* sigmoid_norm: c, r token means */
        case 2: { /* c, r are token means here */
            double d = c - r - 1 / (2 * b);
            L = d * d;
            *dc = 2 * d, *dr = -2 * d;
            return L;
        }
        case 3:
            L = sg(x) * (lsg(x) - log1p(-e)) + sg(-x) * (lsg(-x) - log(e));
            dx = sg(x) * sg(-x) * (x - log((1 - e) / e));
            break;
        case 4: {
            double a = b * c, q = b * r;
            L = -lsg(a) - 0.5 * lsg(-a) - 0.5 * lsg(-q);
            *dc = b * (-sg(-a) + 0.5 * sg(a));
            *dr = b * 0.5 * sg(q);
            return L;
        }
        case 6: {
            double a = b * c - o->bco_delta, q = b * r - o->bco_delta;
            L = -lsg(a) - lsg(-q);
            *dc = -b * sg(-a);
            *dr = b * sg(q);
            return L;
        }
        case 7: {
            double u = c - 0.5 / b, v = r + 0.5 / b;
            L = u * u + v * v;
            *dc = 2 * u, *dr = 2 * v;
            return L;
        }
        case 10: {
            double a = b * c, q = b * r;
            L = 1 - sg(a) + sg(q);
            *dc = -b * sg(a) * sg(-a);
            *dr = b * sg(q) * sg(-q);
            return L;
        }
        case 11: {
            double a = b * c;
            L = sg(a) + 1 - sg(x);
            *dc = b * (sg(a) * sg(-a) - sg(x) * sg(-x));
            *dr = b * sg(x) * sg(-x);
            return L;
        }
        case 12: {
            double t = o->tau, mod = sg(x / t), dmod = sg(x / t) * sg(-x / t) / t;
            L = -lsg(x) * (1 - mod) + exp(-x) * mod;
            dx = -sg(-x) * (1 - mod) + lsg(x) * dmod - exp(-x) * mod + exp(-x) * dmod;
            break;
        }
        case 13: return 0;
        default: return NAN;
        }
    } else if (o->kind == 1) {
        double l = c - r - (o->loss_type == 3 ? o->gamma / b : 0);
        double y = b * l;
        switch (o->loss_type) {
        case 0:
        case 3: L = -(1 - e) * lsg(y) - e * lsg(-y); dx = -(1 - e) * sg(-y) + e * sg(y); break;
        case 1: L = y < 1 ? 1 - y : 0; dx = y < 1 ? -1 : 0; break;
        case 2: {
            double d = l - 1 / (2 * b);
            L = d * d;
            *dc = 2 * d, *dr = -2 * d;
            return L;
        }
        default: return NAN;
        }
    } else if (o->kind == 2) {
        /* u = log odds(c) − log odds(r), log odds(p) = p − log(1 − e^p) */
        double u = (c - log1p(-exp(c))) - (r - log1p(-exp(r)));
        L = -b * lsg(u);
        double du = -b * sg(-u);
        *dc = du / (1 - exp(c));
        *dr = -du / (1 - exp(r));
        return L;
    }
    *dc = b * dx, *dr = -b * dx;
    return L;
}

double ref_pref(int64_t N, int64_t V, const double *Z, const int64_t *labels, const int64_t *seq,
                const double *ref_lp, const double *desirable, const double *kl0, const ref_pref_opts *o,
                double *G, double *aux)
{
    int64_t S = 0;
    for (int64_t i = 0; i < N; i++)
        if (seq[i] + 1 > S) S = seq[i] + 1;
    if (o->kind != 3 && S % 2) S++;
    double *lp = calloc((size_t)N, sizeof *lp), *pi = calloc((size_t)S + 1, sizeof *pi);
    double *rf = calloc((size_t)S + 1, sizeof *rf), *n = calloc((size_t)S + 1, sizeof *n);
    double *dpi = calloc((size_t)S + 1, sizeof *dpi);
    int64_t *first = malloc(((size_t)S + 1) * sizeof *first);
    for (int64_t s = 0; s < S; s++) first[s] = -1;
    for (int64_t i = 0; i < N; i++) {
        const double *z = Z + i * V;
        double m = -INFINITY, t = 0;
        for (int64_t j = 0; j < V; j++) m = fmax(m, z[j]);
        for (int64_t j = 0; j < V; j++) t += exp(z[j] - m);
        int ok = labels[i] != o->ignore_index;
        lp[i] = ok ? z[labels[i]] - m - log(t) : 0;
        int64_t s = seq[i];
        if (s < 0) continue;
        if (first[s] < 0) first[s] = i;
        if (!ok || (o->completion && o->completion[i] == 0)) continue;
        pi[s] += lp[i];
        rf[s] += ref_lp ? ref_lp[i] : 0;
        n[s] += 1;
    }
    /* NLL over the batch's chosen tokens */
    double nll = 0, nc = 0;
    for (int64_t i = 0; i < N; i++)
        if (seq[i] >= 0 && seq[i] % 2 == 0 && labels[i] != o->ignore_index) nll -= lp[i], nc += 1;
    double loss = 0, cr_sum = 0;
    int64_t units = 0;
    if (o->kind == 3) {
        for (int64_t s = 0; s < S; s++) {
            if (first[s] < 0) continue;
            units++;
            double l = pi[s] - rf[s], z0 = kl0[first[s]], L, dl;
            if (desirable[first[s]] > 0.5) {
                double q = sg(o->beta * (l - z0));
                L = o->wd * (1 - q), dl = -o->wd * o->beta * q * (1 - q);
                cr_sum += o->beta * l;
            } else {
                double q = sg(o->beta * (z0 - l));
                L = o->wu * (1 - q), dl = o->wu * o->beta * q * (1 - q);
            }
            loss += L;
            dpi[s] = dl;
        }
    } else {
        for (int64_t b = 0; 2 * b + 1 < S; b++) {
            int64_t c = 2 * b, r = 2 * b + 1;
            if (first[c] < 0 && first[r] < 0) continue;
            units++;
            double lc = pi[c] - rf[c], lr = pi[r] - rf[r];
            int avg = (o->kind == 0 && (o->loss_type == 2 || o->loss_type == 14)) || (o->kind == 1 && o->loss_type >= 2) || o->kind == 2;
            double nc_ = fmax(n[c], 1), nr_ = fmax(n[r], 1);
            double dc, dr;
            loss += avg ? pair_loss(o, lc / nc_, lr / nr_, &dc, &dr) : pair_loss(o, lc, lr, &dc, &dr);
            if (avg) dc /= nc_, dr /= nr_;
            dpi[c] = dc, dpi[r] = dr;
            cr_sum += o->beta * (o->kind == 0 ? lc : avg ? lc / nc_ : lc);
        }
    }
    const double P = units > 0 ? (double)units : 1;
    loss /= P;
    if (aux) *aux = cr_sum / P;
    /* per-sequence NLL: Σ_pairs (NLL of chosen b / its tokens) / pairs */
    double *nt = calloc((size_t)S + 1, sizeof *nt), *ns = calloc((size_t)S + 1, sizeof *ns);
    for (int64_t i = 0; i < N; i++)
        if (seq[i] >= 0 && seq[i] % 2 == 0 && labels[i] != o->ignore_index) nt[seq[i]] += 1, ns[seq[i]] -= lp[i];
    if (o->alpha > 0 && !o->nll_per_sequence) loss += o->alpha * nll / fmax(nc, 1);
    if (o->alpha > 0 && o->nll_per_sequence)
        for (int64_t s = 0; s < S; s += 2) loss += o->alpha * ns[s] / fmax(nt[s], 1) / P;
    for (int64_t i = 0; i < N; i++) {
        double *g = G + i * V;
        const double *z = Z + i * V;
        int ok = labels[i] != o->ignore_index && seq[i] >= 0;
        int in_sum = ok && (!o->completion || o->completion[i] != 0);
        double gi = in_sum ? dpi[seq[i]] / P : 0;
        if (ok && o->alpha > 0 && seq[i] % 2 == 0 && o->kind != 3)
            gi -= o->nll_per_sequence ? o->alpha / fmax(nt[seq[i]], 1) / P : o->alpha / fmax(nc, 1);
        double m = -INFINITY, t = 0;
        for (int64_t j = 0; j < V; j++) m = fmax(m, z[j]);
        for (int64_t j = 0; j < V; j++) t += exp(z[j] - m);
        for (int64_t j = 0; j < V; j++) g[j] = gi * (((ok && j == labels[i]) ? 1.0 : 0.0) - exp(z[j] - m) / t);
    }
    free(lp), free(pi), free(rf), free(n), free(dpi), free(first), free(nt), free(ns);
    return loss;
}
