/* Finite-difference gradient checker (public API: mel_gradcheck). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "half.h"

static uint64_t mix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double unif(uint64_t *s) { return (double)(mix(s) >> 11) * 0x1.0p-53; }

/* Copy a [rows, cols] view of any float dtype into a packed f64 array. */
static double *to_f64(const void *data, mel_dtype dt, int64_t rows, int64_t cols, int64_t ld)
{
    double *o = malloc((size_t)(rows * cols > 0 ? rows * cols : 1) * sizeof *o);
    if (!o) return NULL;
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < cols; j++) o[i * cols + j] = mel_float_at(data, dt, i * ld + j);
    return o;
}

typedef struct gc {
    mel_ctx *ctx;
    const mel_transform *t;
    mel_args *b;       /* f64 copies bound            */
    double *y;         /* [N] or [1]                  */
    const double *u;   /* projection                  */
    int64_t ny;
} gc;

static mel_status loss(gc *c, double *L)
{
    mel_status s = mel_forward(c->ctx, c->t, c->b);
    if (s) return s;
    double acc = 0;
    for (int64_t i = 0; i < c->ny; i++) acc += c->u[i] * c->y[i];
    *L = acc;
    return MEL_OK;
}

/* Compare the analytic gradient g[k] of tensor `theta` with central
 * differences at `samples` random entries. */
static mel_status check_tensor(gc *c, const char *what, double *theta, const double *grad, int64_t n,
                               const mel_gradcheck_opts *o, uint64_t *rng, mel_gradcheck_report *rep)
{
    for (int k = 0; k < o->samples && n > 0; k++) {
        int64_t i = (int64_t)(mix(rng) % (uint64_t)n);
        double keep = theta[i];
        double h = o->step * fmax(1.0, fabs(keep));
        double Lp, Lm;
        mel_status s;
        theta[i] = keep + h;
        s = loss(c, &Lp);
        theta[i] = keep - h;
        if (s == MEL_OK) s = loss(c, &Lm);
        theta[i] = keep;
        if (s) return s;
        double fd = (Lp - Lm) / (2 * h), g = grad[i];
        double err = fabs(g - fd);
        double den = fmax(fmax(fabs(g), fabs(fd)), 1e-300);
        int bad = !(err <= o->atol + o->rtol * fmax(fabs(g), fabs(fd)));
        rep->checked++;
        rep->failed += bad;
        if (err > rep->max_abs_err || (bad && rep->failed == 1) || isnan(err)) {
            if (!isnan(err) && err > rep->max_abs_err) rep->max_abs_err = err;
            snprintf(rep->worst, sizeof rep->worst, "%s[%lld]: analytic %.12g, finite difference %.12g",
                     what, (long long)i, g, fd);
        }
        if (isnan(err)) rep->max_abs_err = NAN;
        if (err / den > rep->max_rel_err) rep->max_rel_err = err / den;
    }
    return MEL_OK;
}

mel_status mel_gradcheck(mel_ctx *ctx, const mel_transform *t, const mel_args *a,
                         const mel_gradcheck_opts *opts, mel_gradcheck_report *rep)
{
    if (!ctx) return MEL_ERR_INVALID_ARGUMENT;
    if (!t || !a || !rep)
        return mel_fail(ctx, MEL_ERR_INVALID_ARGUMENT, "mel_gradcheck: %s is NULL",
                        !t ? "transform" : !a ? "args" : "report");
    memset(rep, 0, sizeof *rep);
    if (!ctx->ops->host_memory)
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "mel_gradcheck: runs on the CPU backend (host memory, "
                        "fp64); this context's backend is %s", ctx->ops->name);
    if (ctx->vp)
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "mel_gradcheck: runs on one process, and this context is "
                        "vocabulary-parallel (each process would perturb its own entries at once); check on a "
                        "context without mel_set_vocab_parallel");
    mel_gradcheck_opts o = {0};
    if (opts) o = *opts;
    if (o.samples <= 0) o.samples = 24;
    if (o.step <= 0) o.step = 1e-6;
    if (o.atol <= 0) o.atol = 1e-7;
    if (o.rtol <= 0) o.rtol = 1e-5;
    uint64_t rng = o.seed;

    /* validate the caller's binding once, through the engine, on a copy
     * whose outputs are unbound (the caller's buffers are not written) */
    mel_args *probe = mel_args_new();
    if (!probe) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_gradcheck: out of memory");
    *probe = *a;
    probe->y = NULL;
    probe->n_aux = 0;
    probe->n_grad_input = 0;
    for (int h = 0; h < MEL_MAX_HEADS; h++) probe->head[h].grad_set = 0;
    mel_status s = mel_forward(ctx, t, probe);
    mel_args_free(probe);
    if (s) return s;

    mel_status st = MEL_OK;
    gc c = {ctx, t, mel_args_new(), NULL, NULL, 0};
    double *X[MEL_MAX_HEADS] = {0}, *W[MEL_MAX_HEADS] = {0}, *Bv[MEL_MAX_HEADS] = {0};
    double *dX[MEL_MAX_HEADS] = {0}, *dW[MEL_MAX_HEADS] = {0}, *dB[MEL_MAX_HEADS] = {0};
    double *inp[MEL_MAX_INPUTS] = {0}, *ginp[MEL_MAX_INPUTS] = {0};
    double *u = NULL;
    int64_t N = 0, V = 0;
    if (!c.b) return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_gradcheck: out of memory");
#define NOMEM(p)                                                                          \
    if (!(p)) {                                                                           \
        st = mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_gradcheck: out of memory");        \
        goto done;                                                                        \
    }
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        const mel_head_args *ha = &a->head[h];
        if (!ha->set) continue;
        N = ha->x.rows, V = ha->w.rows;
        int64_t D = ha->x.cols;
        NOMEM(X[h] = to_f64(ha->x.data, ha->x.dtype, N, D, ha->x.ld));
        NOMEM(W[h] = to_f64(ha->w.data, ha->w.dtype, V, D, ha->w.ld));
        if (ha->bias) NOMEM(Bv[h] = to_f64(ha->bias, ha->w.dtype, 1, V, V));
        mel_args_head(c.b, h, mel_mat(X[h], MEL_F64, N, D, D), mel_mat(W[h], MEL_F64, V, D, D), Bv[h]);
        if (t->head_diff[h]) {
            NOMEM(dX[h] = calloc((size_t)(N * D > 0 ? N * D : 1), sizeof(double)));
            NOMEM(dW[h] = calloc((size_t)(V * D), sizeof(double)));
            if (Bv[h]) NOMEM(dB[h] = calloc((size_t)V, sizeof(double)));
            mel_args_grad_head(c.b, h, mel_mat(dX[h], MEL_F64, N, D, D), mel_mat(dW[h], MEL_F64, V, D, D),
                               dB[h], MEL_OVERWRITE_DW);
        }
    }
    for (int i = 0; i < a->n_index; i++)
        mel_args_index(c.b, a->index[i].name, a->index[i].data, a->index[i].dtype, a->index[i].n);
    for (int i = 0; i < a->n_input; i++) {
        const mel_bound *bd = &a->input[i];
        int k = mel_find_input(t->inputs, t->n_inputs, bd->name);
        NOMEM(inp[k] = to_f64(bd->data, bd->dtype, 1, bd->n, bd->n));
        mel_args_input(c.b, bd->name, inp[k], MEL_F64, bd->n);
        if (t->inputs[k].differentiable) {
            NOMEM(ginp[k] = calloc((size_t)(bd->n > 0 ? bd->n : 1), sizeof(double)));
            mel_args_grad_input(c.b, bd->name, ginp[k], MEL_F64);
        }
    }
    mel_args_reduction(c.b, a->reduction, a->weights);
    c.ny = a->reduction == MEL_REDUCE_NONE ? N : 1;
    NOMEM(u = malloc((size_t)(c.ny > 0 ? c.ny : 1) * sizeof *u));
    NOMEM(c.y = calloc((size_t)(c.ny > 0 ? c.ny : 1), sizeof *c.y));
    for (int64_t i = 0; i < c.ny; i++) u[i] = 2 * unif(&rng) - 1 + (unif(&rng) < 0.5 ? 0.5 : -0.5);
    c.u = u;
    mel_args_output(c.b, c.y, MEL_F64);
    mel_args_grad_output(c.b, u, MEL_F64);
    if ((st = mel_forward_backward(ctx, t, c.b))) goto done;

    for (int h = 0; h < MEL_MAX_HEADS && st == MEL_OK; h++) {
        if (!dX[h]) continue;
        const mel_head_args *ha = &a->head[h];
        char name[32];
        snprintf(name, sizeof name, "x%d", h);
        st = check_tensor(&c, name, X[h], dX[h], N * ha->x.cols, &o, &rng, rep);
        snprintf(name, sizeof name, "w%d", h);
        if (!st) st = check_tensor(&c, name, W[h], dW[h], V * ha->x.cols, &o, &rng, rep);
        snprintf(name, sizeof name, "bias%d", h);
        if (!st && dB[h]) st = check_tensor(&c, name, Bv[h], dB[h], V, &o, &rng, rep);
    }
    for (int k = 0; k < MEL_MAX_INPUTS && st == MEL_OK; k++)
        if (ginp[k]) st = check_tensor(&c, t->inputs[k].name, inp[k], ginp[k], N, &o, &rng, rep);
done:
    for (int h = 0; h < MEL_MAX_HEADS; h++) {
        free(X[h]), free(W[h]), free(Bv[h]), free(dX[h]), free(dW[h]), free(dB[h]);
    }
    for (int k = 0; k < MEL_MAX_INPUTS; k++) free(inp[k]), free(ginp[k]);
    free(u);
    free(c.y);
    mel_args_free(c.b);
    return st;
#undef NOMEM
}
