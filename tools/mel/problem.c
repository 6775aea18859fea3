/* problem.c -- random problems for `mel gradcheck` and `mel bench`: what
 * to draw comes from the transform itself (mel_transform_input,
 * mel_transform_head). */
#include "mel_tool.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

static double rng_gauss(rng *r)
{
    double u1 = rng_unit(r), u2 = rng_unit(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* log p(label) of row i under (x, w, bias), f64; O(V·D). */
static double row_logp(const problem *p, int64_t i, int64_t label)
{
    double m = -INFINITY, zl = 0, s = 0;
    double *z = xcalloc(p->v, sizeof(double), "logp");
    for (int64_t j = 0; j < p->v; j++) {
        double acc = p->bias ? p->bias[j] : 0;
        for (int64_t k = 0; k < p->d; k++) acc += p->x[i * p->d + k] * p->w[j * p->d + k];
        z[j] = acc;
        if (acc > m) m = acc;
    }
    for (int64_t j = 0; j < p->v; j++) s += exp(z[j] - m);
    zl = z[label];
    release(z);
    return zl - m - log(s);
}

void make_problem(problem *p, const mel_transform *t, int64_t n, int64_t d, int64_t v,
                  int with_bias, int64_t ignore_index, int exact_logp, uint64_t seed)
{
    rng r = {seed * 0x9E3779B97F4A7C15ull + 12345};
    memset(p, 0, sizeof *p);
    p->n = n;
    p->d = d;
    p->v = v;
    int64_t nd = mul64(n, d, "--rows x --dim"), vd = mul64(v, d, "--vocab x --dim");
    double ws = 1.0 / sqrt((double)(d > 0 ? d : 1));
    p->x = xcalloc(nd, sizeof(double), "X");
    p->w = xcalloc(vd, sizeof(double), "W");
    for (int64_t i = 0; i < nd; i++) p->x[i] = rng_gauss(&r);
    for (int64_t i = 0; i < vd; i++) p->w[i] = 2.0 * ws * rng_gauss(&r);
    if (with_bias) {
        p->bias = xcalloc(v, sizeof(double), "bias");
        for (int64_t i = 0; i < v; i++) p->bias[i] = 0.5 * rng_gauss(&r);
    }
    /* the inputs the transform reads */
    for (int i = 0; i < mel_transform_num_inputs(t); i++) {
        int is_index = 0;
        const char *name = mel_transform_input(t, i, &is_index, NULL);
        if (!name) continue;
        if (is_index && mel_transform_layout(t, NULL, NULL) &&
            !strcmp(name, mel_transform_layout(t, NULL, NULL))) {
            p->seq_name = name;
        } else if (is_index) {
            if (p->index_name) die(EXIT_USAGE, "transform '%s' reads more than one index input",
                                   mel_transform_name(t));
            p->index_name = name;
        } else {
            if (p->n_scalar == PROBLEM_MAX_INPUTS)
                die(EXIT_USAGE, "transform '%s' reads more than %d per-row inputs",
                    mel_transform_name(t), PROBLEM_MAX_INPUTS);
            p->scalar_name[p->n_scalar++] = name;
        }
    }
    /* labels are drawn even when unread, so that the masks below can follow them */
    p->labels = xcalloc(n, sizeof(int64_t), "labels");
    int64_t valid = 0;
    for (int64_t i = 0; i < n; i++) {
        p->labels[i] = (int64_t)(rng_next(&r) % (uint64_t)(v > 0 ? v : 1));
        if (n > 1 && rng_unit(&r) < 0.2) p->labels[i] = ignore_index;
        else valid++;
    }
    if (n > 0 && valid == 0) p->labels[0] = 0;
    if (mel_transform_head(t, 1)) {
        p->tx = xcalloc(nd, sizeof(double), "teacher X");
        p->tw = xcalloc(vd, sizeof(double), "teacher W");
        for (int64_t i = 0; i < nd; i++) p->tx[i] = rng_gauss(&r);
        for (int64_t i = 0; i < vd; i++) p->tw[i] = 2.0 * ws * rng_gauss(&r);
    }
    /* sequence ids: whole groups of G sequences of 1-4 rows each */
    int64_t *first_row = NULL; /* the first row of each row's sequence (-1: none) */
    if (p->seq_name) {
        int64_t G = 1;
        mel_transform_layout(t, NULL, &G);
        p->seq = xcalloc(n, sizeof(int64_t), "sequence ids");
        first_row = xcalloc(n, sizeof(int64_t), "sequence ids");
        int64_t i = 0, s = 0;
        for (;;) {
            int64_t len[64], tot = 0;
            for (int64_t k = 0; k < G && k < 64; k++) tot += len[k] = 1 + (int64_t)(rng_next(&r) % 4);
            if (G > 64 || i + tot > n) break;
            for (int64_t k = 0; k < G; k++, s++)
                for (int64_t j = 0; j < len[k]; j++, i++) p->seq[i] = s, first_row[i] = i - j;
            if (i < n && rng_unit(&r) < 0.3) p->seq[i] = -1, first_row[i] = -1, i++;
        }
        for (; i < n; i++) p->seq[i] = -1, first_row[i] = -1;
        if (s == 0)
            die(EXIT_USAGE, "transform '%s': --rows %" PRId64 " is too few for one group of %" PRId64
                " sequences", mel_transform_name(t), n, G);
    }
    /* every sequence counts a token (orpo's log(1 - exp(mean logp)) is -inf
     * for an empty one) */
    for (int64_t i = 0; first_row && i < n; i++)
        if (first_row[i] == i) {
            int64_t j = i, any = 0;
            for (; j < n && p->seq[j] == p->seq[i]; j++) any |= p->labels[j] != ignore_index;
            if (!any) p->labels[i] = (int64_t)(rng_next(&r) % (uint64_t)(v > 0 ? v : 1));
        }
    for (int k = 0; k < p->n_scalar; k++) p->scalar[k] = xcalloc(n, sizeof(double), p->scalar_name[k]);
    for (int64_t i = 0; i < n; i++) {
        int ignored = p->labels[i] == ignore_index;
        /* near the current log-probability, so that importance ratios
         * straddle the clipping range */
        double lp = 0;
        int have_lp = 0;
        for (int k = 0; k < p->n_scalar; k++) {
            const char *nm = p->scalar_name[k];
            double val;
            if (!strcmp(nm, "mask")) {
                val = ignored ? 0.0 : (rng_unit(&r) < 0.9 ? 1.0 : 0.0);
            } else if (!strcmp(nm, "old_logp") || !strcmp(nm, "ref_logp") || !strcmp(nm, "sampling_logp")) {
                if (!have_lp) {
                    lp = ignored || !exact_logp ? -log((double)(v > 0 ? v : 1))
                                                : row_logp(p, i, p->labels[i]);
                    have_lp = 1;
                }
                val = lp + 0.15 * rng_gauss(&r);
            } else if ((!strcmp(nm, "desirable") || !strcmp(nm, "kl_ref")) && first_row &&
                       first_row[i] >= 0 && first_row[i] < i) {
                val = p->scalar[k][first_row[i]]; /* one value per sequence */
            } else if (!strcmp(nm, "completion_mask")) {
                val = 1.0; /* orpo: every token with a label is completion */
            } else if (!strcmp(nm, "desirable")) {
                val = rng_unit(&r) < 0.5 ? 1.0 : 0.0;
            } else if (!strcmp(nm, "kl_ref")) {
                val = 0.2 * rng_gauss(&r);
            } else {
                val = rng_gauss(&r);
            }
            p->scalar[k][i] = val;
        }
    }
    if (first_row) release(first_row);
}

void bind_problem(mel_args *a, const problem *p, mel_dtype t, void **xs, void **ws)
{
    int64_t nd = p->n * p->d, vd = p->v * p->d;
    size_t es = mel_dtype_size(t);
    *xs = to_dev(convert(p->x, MEL_F64, nd, t, "X"), (size_t)nd * es, "X");
    *ws = to_dev(convert(p->w, MEL_F64, vd, t, "W"), (size_t)vd * es, "W");
    void *b = p->bias ? to_dev(convert(p->bias, MEL_F64, p->v, t, "bias"), (size_t)p->v * es, "bias")
                      : NULL;
    mel_status s = mel_args_head(a, 0, mel_mat(*xs, t, p->n, p->d, 0),
                                 mel_mat(*ws, t, p->v, p->d, 0), b);
    if (s != MEL_OK) die(exit_of(s), "binding head 0: %s", mel_status_str(s));
    if (p->index_name) {
        s = mel_args_index(a, p->index_name, to_dev(p->labels, (size_t)p->n * 8, p->index_name),
                           MEL_I64, p->n);
        if (s != MEL_OK) die(exit_of(s), "binding %s: %s", p->index_name, mel_status_str(s));
    }
    if (p->seq) {
        s = mel_args_index(a, p->seq_name, to_dev(p->seq, (size_t)p->n * 8, p->seq_name), MEL_I64, p->n);
        if (s != MEL_OK) die(exit_of(s), "binding %s: %s", p->seq_name, mel_status_str(s));
    }
    if (p->tx) {
        void *tx = to_dev(convert(p->tx, MEL_F64, nd, t, "teacher X"), (size_t)nd * es, "teacher X");
        void *tw = to_dev(convert(p->tw, MEL_F64, vd, t, "teacher W"), (size_t)vd * es, "teacher W");
        s = mel_args_head(a, 1, mel_mat(tx, t, p->n, p->d, 0), mel_mat(tw, t, p->v, p->d, 0), NULL);
        if (s != MEL_OK) die(exit_of(s), "binding head 1: %s", mel_status_str(s));
    }
    for (int k = 0; k < p->n_scalar; k++) {
        s = mel_args_input(a, p->scalar_name[k],
                           to_dev(p->scalar[k], (size_t)p->n * 8, p->scalar_name[k]), MEL_F64, p->n);
        if (s != MEL_OK) die(exit_of(s), "binding %s: %s", p->scalar_name[k], mel_status_str(s));
    }
}
