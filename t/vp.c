/* Vocabulary parallelism against one process (run by t/vocab_parallel.t
 * under mpirun with 1, 2 and 3 processes).
 *
 * Every process builds the same problem (fixed seed), computes it once on
 * its own with the whole W (the one-process result: libmel's single-process
 * path, itself checked against fp64 references, finite differences and
 * PyTorch by the other tests), and once vocabulary-parallel on its shard.
 * y, aux outputs and dX must match the one-process values on every
 * process, dW and db the one-process rows of the shard; f64 within 1e-12,
 * f32 within 1e-5 (max |difference| / max |one-process value|).  y must
 * also be bitwise identical on every process.  Shards are uneven; with 3
 * processes the middle one holds a single column that no label of the
 * batch uses.  Process 0 prints TAP; every check is decided over all
 * processes (the worst error of any process). */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"
#include "npy.h"
#include "tap.h"

enum { N = 12, D = 5, V = 13, T = 4 };

static int rank, size;
static int64_t v_off, v_rows; /* this process's shard */

/* uneven shards: K = 2: [0, 8) [8, 13); K = 3: [0, 6) [6, 7) [7, 13) */
static void shard(int K, int k, int64_t *off, int64_t *rows)
{
    static const int64_t b2[] = {0, 8, V}, b3[] = {0, 6, 7, V};
    const int64_t *b = K == 2 ? b2 : b3;
    if (K == 1) {
        *off = 0, *rows = V;
        return;
    }
    *off = b[k];
    *rows = b[k + 1] - b[k];
}

/* the problem, f64 master copies */
static double X[2][N * D], W[2][V * D], B[2][V], dyv[N], adv[N], oldlp[N], mask[N], reflp[N];
static int64_t labels[N];

static void make_problem(uint64_t seed, int ignored)
{
    tap_rng r;
    rng_seed(&r, seed);
    for (int h = 0; h < 2; h++) {
        for (int i = 0; i < N * D; i++) X[h][i] = rng_normal(&r);
        for (int i = 0; i < V * D; i++) W[h][i] = 0.7 * rng_normal(&r);
        for (int i = 0; i < V; i++) B[h][i] = 0.3 * rng_normal(&r);
    }
    for (int i = 0; i < N; i++) {
        int64_t l;
        do l = rng_int(&r, V - 2); /* never the padded columns (vocab_valid = V - 2) */
        while (l == 6);            /* column 6 (the 3-process middle shard) unused */
        labels[i] = l;
        dyv[i] = rng_normal(&r);
        adv[i] = rng_normal(&r);
        oldlp[i] = -2 + 0.5 * rng_normal(&r);
        reflp[i] = -2 + 0.5 * rng_normal(&r);
        mask[i] = rng_uniform(&r) < 0.8;
    }
    if (ignored) { /* ignored rows, one at a chunk edge of 5 rows */
        labels[0] = labels[4] = labels[5] = labels[11] = -100;
        mask[4] = mask[5] = 0;
    }
}

typedef struct kase {
    const char *name;       /* for messages */
    const char *builtin;    /* NULL: the user transform */
    const char *params;     /* "name=value,..." */
    int heads;              /* 1, or 2 with a teacher / reference head */
    int bias;
    mel_reduction red;
    int grpo;               /* binds mask, advantages, old_logp, ref_logp */
    int grpo_loss;          /* -1: mean; else weights of that loss type */
    const char *aux[4];
} kase;

static mel_status build(mel_ctx *ctx, const kase *k, mel_transform **t)
{
    if (k->builtin) {
        mel_params *p = mel_params_new();
        char buf[256];
        snprintf(buf, sizeof buf, "%s", k->params ? k->params : "");
        for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
            char *eq = strchr(tok, '=');
            *eq = 0;
            mel_params_set(p, tok, atof(eq + 1));
        }
        mel_status s = mel_transform_builtin(ctx, k->builtin, p, t);
        mel_params_free(p);
        return s;
    }
    /* a user transform reaching every reduction over the vocabulary:
     * rmax (and the argmax of its gradient), mean, sum, logsumexp, gather,
     * iota and V, and a softmax-weighted column index */
    mel_graph *g = mel_graph_new();
    mel_val z = mel_g_logits(g, 0, 1), lab = mel_g_index(g, "labels", -100);
    mel_val col = mel_g_div(g, mel_g_iota(g), mel_g_vocab(g));
    mel_val p = mel_g_softmax(g, z);
    mel_val y = mel_g_sub(g, mel_g_logsumexp(g, z), mel_g_gather(g, z, lab));
    y = mel_g_add(g, y, mel_g_scale(g, mel_g_rmax(g, mel_g_mul(g, z, col)), 0.5));
    y = mel_g_add(g, y, mel_g_sum(g, mel_g_mul(g, p, col)));
    y = mel_g_add(g, y, mel_g_scale(g, mel_g_mean(g, mel_g_square(g, z)), 0.1));
    mel_g_add_aux(g, "focus", mel_g_rmax(g, p));
    mel_val valid = mel_g_valid(g, lab);
    mel_g_set_count(g, valid);
    mel_g_set_output(g, mel_g_where(g, valid, y, mel_g_const(g, 0)));
    mel_status s = mel_graph_compile(ctx, g, "user", t);
    mel_graph_free(g);
    return s;
}

/* results of one call sequence */
typedef struct res {
    double y[N], aux[4][N], dx[2][N * D], dw[2][V * D], db[2][V];
} res;

static void to(void *dst, mel_dtype dt, const double *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        if (dt == MEL_F32) ((float *)dst)[i] = (float)src[i];
        else ((double *)dst)[i] = src[i];
    }
}

static void from(double *dst, const void *src, mel_dtype dt, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = dt == MEL_F32 ? (double)((const float *)src)[i] : ((const double *)src)[i];
}

/* Run case k on ctx over vocabulary rows [o, o + rows): mode 0 fused
 * (mel_forward_backward), 1 recompute (mel_forward, then mel_backward). */
static mel_status run(mel_ctx *ctx, const mel_transform *t, const kase *k, mel_dtype dt, int mode, int64_t o,
                      int64_t rows, unsigned dxflags, res *out)
{
    const size_t es = dt == MEL_F32 ? 4 : 8;
    const int ny = k->red == MEL_REDUCE_NONE ? N : 1;
    void *x[2], *w[2], *b[2], *dx[2], *dw[2], *db[2], *y = calloc(N, 8), *aux[4];
    double wts[N];
    mel_args *a = mel_args_new();
    for (int h = 0; h < k->heads; h++) {
        x[h] = malloc(N * D * es), w[h] = malloc(rows * D * es), b[h] = malloc(rows * es);
        dx[h] = calloc(N * D, es), dw[h] = calloc(rows * D, es), db[h] = calloc(rows, es);
        to(x[h], dt, X[h], N * D);
        to(w[h], dt, W[h] + o * D, rows * D);
        to(b[h], dt, B[h] + o, rows);
        if (dxflags & MEL_ACCUMULATE_DX) to(dx[h], dt, X[h], N * D); /* something to add to */
        mel_args_head(a, h, mel_mat(x[h], dt, N, D, D), mel_mat(w[h], dt, rows, D, D), k->bias ? b[h] : NULL);
        if (mel_transform_head(t, h) == 2)
            mel_args_grad_head(a, h, mel_mat(dx[h], dt, N, D, D), mel_mat(dw[h], dt, rows, D, D),
                               k->bias ? db[h] : NULL, dxflags);
    }
    int n_in = mel_transform_num_inputs(t);
    for (int i = 0; i < n_in; i++) {
        const char *nm = mel_transform_input(t, i, NULL, NULL);
        if (!strcmp(nm, "labels")) mel_args_index(a, nm, labels, MEL_I64, N);
        else if (!strcmp(nm, "mask")) mel_args_input(a, nm, mask, MEL_F64, N);
        else if (!strcmp(nm, "advantages")) mel_args_input(a, nm, adv, MEL_F64, N);
        else if (!strcmp(nm, "old_logp")) mel_args_input(a, nm, oldlp, MEL_F64, N);
        else if (!strcmp(nm, "ref_logp")) mel_args_input(a, nm, reflp, MEL_F64, N);
    }
    if (k->grpo_loss >= 0) {
        mel_grpo_weights(ctx, (mel_grpo_loss_type)k->grpo_loss, N / T, T, mask, T, 0, 1, wts);
        mel_args_reduction(a, MEL_REDUCE_WEIGHTED, wts);
    } else {
        mel_args_reduction(a, k->red, NULL);
    }
    mel_args_output(a, y, MEL_F64);
    if (k->red == MEL_REDUCE_NONE) mel_args_grad_output(a, dyv, MEL_F64);
    for (int j = 0; j < 4 && k->aux[j]; j++) {
        aux[j] = calloc(N, 8);
        mel_args_aux(a, k->aux[j], aux[j], MEL_F64);
    }
    mel_status s;
    if (mode == 0) s = mel_forward_backward(ctx, t, a);
    else if ((s = mel_forward(ctx, t, a)) == MEL_OK) s = mel_backward(ctx, t, a);
    memset(out, 0, sizeof *out);
    from(out->y, y, MEL_F64, ny);
    for (int j = 0; j < 4 && k->aux[j]; j++) from(out->aux[j], aux[j], MEL_F64, N), free(aux[j]);
    for (int h = 0; h < k->heads; h++) {
        from(out->dx[h], dx[h], dt, N * D);
        from(out->dw[h] + o * D, dw[h], dt, rows * D);
        from(out->db[h] + o, db[h], dt, rows);
        free(x[h]), free(w[h]), free(b[h]), free(dx[h]), free(dw[h]), free(db[h]);
    }
    free(y);
    mel_args_free(a);
    return s;
}

/* max |a − b| / max(max |b|, 1e-300) over n values */
static double relerr(const double *a, const double *b, int64_t n)
{
    double m = 0, s = 1e-300;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN wins */
        if (fabs(b[i]) > s) s = fabs(b[i]);
    }
    return m / s;
}

/* one TAP check decided over all processes: the worst error */
/* The worst relative errors of a vocabulary-parallel result against the
 * one-process one: e[0] y and aux, e[1] dX, e[2] dW and db rows of the
 * shard (NaN propagates). */
static void errors(const kase *k, const res *got, const res *ref, double e[3])
{
    const int ny = k->red == MEL_REDUCE_NONE ? N : 1;
    e[0] = relerr(got->y, ref->y, ny), e[1] = 0, e[2] = 0;
    for (int j = 0; j < 4 && k->aux[j]; j++) {
        double ea = relerr(got->aux[j], ref->aux[j], N);
        if (!(ea <= e[0])) e[0] = ea;
    }
    for (int h = 0; h < k->heads; h++) {
        double a1 = relerr(got->dx[h], ref->dx[h], N * D);
        double a2 = relerr(got->dw[h] + v_off * D, ref->dw[h] + v_off * D, v_rows * D);
        double a3 = k->bias ? relerr(got->db[h] + v_off, ref->db[h] + v_off, v_rows) : 0;
        if (!(a1 <= e[1])) e[1] = a1;
        if (!(a2 <= e[2])) e[2] = a2;
        if (!(a3 <= e[2])) e[2] = a3;
    }
}

static void check_all(double err, double tol, const char *fmt, const char *what)
{
    double worst;
    MPI_Allreduce(&err, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (err != err) worst = NAN;
    int nan = err != err, anynan;
    MPI_Allreduce(&nan, &anynan, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (anynan) worst = NAN;
    if (rank == 0) ok(worst <= tol, "%s: %s, max rel err %.2e (tol %.0e)", fmt, what, worst, tol);
}

static void check_status(int good, const char *label)
{
    int all;
    MPI_Allreduce(&good, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0) ok(all, "%s", label);
}

/* case ci's transform (built on ctx) and a fresh problem */
static mel_transform *setup(mel_ctx *ctx, const kase *k, uint64_t seed, int ignored)
{
    mel_transform *t = NULL;
    if (build(ctx, k, &t) != MEL_OK) {
        fprintf(stderr, "t/vp: %s: %s\n", k->name, mel_last_error(ctx));
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    make_problem(seed, ignored);
    return t;
}

/* bf16 bits of the f64 values (through f32, truncated: the test only needs
 * the same bf16 inputs for both runs) */
static void to_bf16(uint16_t *dst, const double *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float f = (float)src[i];
        uint32_t u;
        memcpy(&u, &f, 4);
        dst[i] = (uint16_t)(u >> 16);
    }
}

static const kase cases[] = {
    {"ce", "ce", "", 1, 0, MEL_REDUCE_MEAN, 0, -1, {0}},
    {"ce every option", "ce", "label_smoothing=0.1,z_loss=0.001,logit_scale=0.7,softcap=3,temperature=1.3,vocab_valid=11",
     1, 1, MEL_REDUCE_NONE, 0, -1, {0}},
    {"ce sum", "ce", "ignore_index=-100,label_smoothing=0.05", 1, 1, MEL_REDUCE_SUM, 0, -1, {0}},
    {"logprob", "logprob", "temperature=0.8", 1, 0, MEL_REDUCE_NONE, 0, -1, {0}},
    {"entropy", "entropy", "softcap=4", 1, 1, MEL_REDUCE_MEAN, 0, -1, {0}},
    {"z_loss", "z_loss", "", 1, 0, MEL_REDUCE_NONE, 0, -1, {0}},
    {"kl", "kl", "temperature=2,t2_scale=1", 2, 1, MEL_REDUCE_MEAN, 0, -1, {0}},
    {"reverse_kl no labels", "reverse_kl", "use_labels=0", 2, 0, MEL_REDUCE_NONE, 0, -1, {0}},
    {"jsd", "jsd", "beta=0.3,vocab_valid=11", 2, 0, MEL_REDUCE_MEAN, 0, -1, {0}},
    {"grpo token ref head dapo", "grpo", "beta=0.04,ref_source=1,use_old_logp=1,epsilon_high=0.28", 2, 0,
     MEL_REDUCE_WEIGHTED, 1, 3, {"kl", "is_clipped", "ratio", "logp"}},
    {"grpo token grpo", "grpo", "beta=0.04,use_old_logp=1", 1, 0, MEL_REDUCE_WEIGHTED, 1, 0, {"kl", "ratio", 0}},
    {"grpo token bnpo", "grpo", "use_old_logp=1,delta=1.5", 1, 0, MEL_REDUCE_WEIGHTED, 1, 1, {"is_clipped", 0}},
    {"grpo token dr_grpo", "grpo", "beta=0.1,ref_source=1", 2, 0, MEL_REDUCE_WEIGHTED, 1, 2, {"kl", 0}},
    {"grpo sequence (GSPO)", "grpo", "use_old_logp=1,importance_sampling_level=1,seq_len=4,beta=0.04", 1, 0,
     MEL_REDUCE_WEIGHTED, 1, 3, {"ratio", "kl", 0}},
    {"user transform (rmax, mean, sum, lse, gather, iota)", NULL, NULL, 1, 1, MEL_REDUCE_NONE, 0, -1, {"focus", 0}},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* t/vp --write-npy DIR: a problem for the mel tool (f64 .npy files);
 * t/vp --compare A B TOL: max |A − B| / max |B| of two .npy files <= TOL */
static int tool_helpers(int argc, char **argv)
{
    char err[512], path[1024];
    if (argc == 3 && !strcmp(argv[1], "--write-npy")) {
        make_problem(4242, 1);
        struct {
            const char *name;
            void *data;
            mel_dtype dt;
            int ndim;
            int64_t s0, s1;
        } f[] = {{"x", X[0], MEL_F64, 2, N, D}, {"w", W[0], MEL_F64, 2, V, D}, {"b", B[0], MEL_F64, 1, V, 0},
                 {"tx", X[1], MEL_F64, 2, N, D}, {"tw", W[1], MEL_F64, 2, V, D}, {"labels", labels, MEL_I64, 1, N, 0},
                 {"dy", dyv, MEL_F64, 1, N, 0}};
        for (size_t k = 0; k < sizeof f / sizeof f[0]; k++) {
            npy_array a;
            memset(&a, 0, sizeof a);
            a.dtype = f[k].dt, a.ndim = f[k].ndim, a.shape[0] = f[k].s0, a.shape[1] = f[k].s1;
            a.count = f[k].s0 * (f[k].ndim == 2 ? f[k].s1 : 1);
            a.data = f[k].data;
            snprintf(path, sizeof path, "%s/%s.npy", argv[2], f[k].name);
            if (npy_save(path, &a, err, sizeof err)) {
                fprintf(stderr, "%s\n", err);
                return 2;
            }
        }
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "--compare")) {
        npy_array a, b;
        if (npy_load(argv[2], &a, err, sizeof err) || npy_load(argv[3], &b, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 2;
        }
        if (a.count != b.count || a.dtype != b.dtype) {
            fprintf(stderr, "%s and %s differ in shape or dtype\n", argv[2], argv[3]);
            return 1;
        }
        double *da = malloc(sizeof(double) * (size_t)(a.count + 1)), *db = malloc(sizeof(double) * (size_t)(a.count + 1));
        from(da, a.data, a.dtype, a.count);
        from(db, b.data, b.dtype, b.count);
        double e = relerr(da, db, a.count);
        printf("%.3g\n", e);
        return e <= atof(argv[4]) ? 0 : 1;
    }
    return -1;
}

int main(int argc, char **argv)
{
    int th = tool_helpers(argc, argv);
    if (th >= 0) return th;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size > 3) {
        if (rank == 0) skip_all("t/vp runs with 1 to 3 processes");
        MPI_Finalize();
        return 0;
    }
    shard(size, rank, &v_off, &v_rows);
    if (rank == 0) diag("%d process(es); this process holds [%lld, %lld)", size, (long long)v_off,
                        (long long)(v_off + v_rows));

    mel_ctx *one = NULL, *vp = NULL;
    mel_ctx_create(MEL_BACKEND_CPU, &one);
    mel_ctx_create(MEL_BACKEND_CPU, &vp);
    mel_set_threads(one, 1);
    mel_set_threads(vp, 1);
    MPI_Comm world = MPI_COMM_WORLD;
    mel_status s = mel_set_vocab_parallel(vp, &world, v_off, V, 0);
    check_status(s == MEL_OK, "mel_set_vocab_parallel");
    int r_, k_;
    int64_t o_, t_;
    check_status(mel_get_vocab_parallel(vp, &r_, &k_, &o_, &t_) == 1 && r_ == rank && k_ == size && o_ == v_off &&
                     t_ == V,
                 "mel_get_vocab_parallel reads back rank, size, offset and total");

    static const mel_dtype dts[] = {MEL_F64, MEL_F32};
    static const int64_t chunk_rows[] = {1, 5, 0}; /* 0: automatic */
    res *ref = malloc(sizeof *ref), *got = malloc(sizeof *got);
    for (int ci = 0; ci < N_CASES; ci++) {
        const kase *k = &cases[ci];
        mel_transform *t = NULL;
        if (build(one, k, &t) != MEL_OK) {
            check_status(0, mel_last_error(one));
            continue;
        }
        for (int di = 0; di < 2; di++)
            for (int mode = 0; mode < 2; mode++)
                for (int cr = 0; cr < 3; cr++)
                    for (int ign = 0; ign < 2; ign++) {
                        /* the full grid for f64; f32 on the automatic chunk only */
                        if (di == 1 && cr != 2) continue;
                        const mel_dtype dt = dts[di];
                        const double tol = dt == MEL_F64 ? 1e-12 : 1e-5;
                        make_problem(1000 + ci, ign);
                        mel_set_chunk_rows(one, chunk_rows[cr]);
                        mel_set_chunk_rows(vp, chunk_rows[cr]);
                        mel_status s1 = run(one, t, k, dt, mode, 0, V, 0, ref);
                        mel_status s2 = run(vp, t, k, dt, mode, v_off, v_rows, 0, got);
                        char lab[200];
                        snprintf(lab, sizeof lab, "%s %s %s chunk_rows=%lld%s K=%d", k->name, mel_dtype_name(dt),
                                 mode ? "recompute" : "fused", (long long)chunk_rows[cr],
                                 ign ? " ignored rows" : "", size);
                        if (s1 || s2) {
                            if (s2) diag("rank %d: %s", rank, mel_last_error(vp));
                            if (s1) diag("rank %d (one process): %s", rank, mel_last_error(one));
                            check_status(0, lab);
                            continue;
                        }
                        const int ny = k->red == MEL_REDUCE_NONE ? N : 1;
                        double e[3];
                        errors(k, got, ref, e);
                        check_all(e[0], tol, lab, "y and aux");
                        check_all(e[1], tol, lab, "dX");
                        check_all(e[2], tol, lab, "dW and db rows of the shard");
                        /* y bitwise identical on every process */
                        double *all = malloc(sizeof(double) * N * size);
                        MPI_Allgather(got->y, N, MPI_DOUBLE, all, N, MPI_DOUBLE, MPI_COMM_WORLD);
                        int same = 1;
                        for (int p = 1; p < size; p++) same &= !memcmp(all, all + p * N, sizeof(double) * ny);
                        free(all);
                        check_status(same, "y bitwise identical on every process");
                        /* and dX (the MPI all-reduce's order is the same on every process) */
                        double *dxs = malloc(sizeof(double) * N * D * size);
                        MPI_Allgather(got->dx[0], N * D, MPI_DOUBLE, dxs, N * D, MPI_DOUBLE, MPI_COMM_WORLD);
                        same = 1;
                        for (int p = 1; p < size; p++) same &= !memcmp(dxs, dxs + (size_t)p * N * D, sizeof(double) * N * D);
                        free(dxs);
                        check_status(same, "dX bitwise identical on every process");
                    }
        mel_transform_free(t);
    }

    /* vocabulary tiles inside each shard (mel_set_tile_cols): every case,
     * f64 and f32, fused and recompute, tiles of 2 and 5 columns (the 1-column
     * shard of 3 processes: one narrower tile), against the one process
     * with whole rows; then dX accumulated with tiles */
    {
        static const int64_t tcols[] = {2, 5};
        for (int ci = 0; ci < N_CASES; ci++) {
            const kase *k = &cases[ci];
            mel_transform *t = NULL;
            if (build(one, k, &t) != MEL_OK) continue;
            for (int di = 0; di < 2; di++)
                for (int mode = 0; mode < 2; mode++)
                    for (int tci = 0; tci < 2; tci++) {
                        const mel_dtype dt = dts[di];
                        const double tol = dt == MEL_F64 ? 1e-12 : 1e-5;
                        make_problem(2000 + ci, ci & 1);
                        mel_set_chunk_rows(one, 0);
                        mel_set_chunk_rows(vp, tci ? 0 : 5);
                        mel_set_tile_cols(vp, tcols[tci]);
                        mel_status s1 = run(one, t, k, dt, mode, 0, V, 0, ref);
                        mel_status s2 = run(vp, t, k, dt, mode, v_off, v_rows, 0, got);
                        const int64_t used = mel_get_tile_cols(vp);
                        char lab[200];
                        snprintf(lab, sizeof lab, "%s %s %s tiles %s (%lld columns here) K=%d", k->name,
                                 mel_dtype_name(dt), mode ? "recompute" : "fused",
                                 tci ? "of 5 columns, automatic rows" : "of 2 columns, chunks of 5 rows", (long long)used,
                                 size);
                        if (s1 || s2) {
                            if (s2) diag("rank %d: %s", rank, mel_last_error(vp));
                            check_status(0, lab);
                            continue;
                        }
                        check_status(used > 0, lab);
                        double e[3];
                        errors(k, got, ref, e);
                        check_all(fmax(e[0], fmax(e[1], e[2])), tol, lab, "y, aux, dX, dW and db");
                    }
            mel_transform_free(t);
        }
        const kase *k = &cases[1];
        mel_transform *t = setup(one, k, 78, 1);
        mel_set_tile_cols(vp, 3);
        mel_set_chunk_rows(vp, 5);
        mel_set_workspace_limit(vp, 0);
        run(one, t, k, MEL_F64, 0, 0, V, MEL_ACCUMULATE_DX, ref);
        s = run(vp, t, k, MEL_F64, 0, v_off, v_rows, MEL_ACCUMULATE_DX, got);
        check_status(s == MEL_OK, "tiles: MEL_ACCUMULATE_DX runs");
        check_all(relerr(got->dx[0], ref->dx[0], N * D), 1e-12, "ce f64 tiles of 3, MEL_ACCUMULATE_DX",
                  "dX (X + Σ_processes)");
        mel_set_tile_cols(vp, 0);
        mel_set_chunk_rows(vp, 0);
        mel_transform_free(t);
    }

    /* dX accumulated, and dX left partial (summed here) */
    {
        const kase *k = &cases[1];
        mel_transform *t = setup(one, k, 77, 1);
        mel_set_chunk_rows(one, 5);
        mel_set_chunk_rows(vp, 5);
        run(one, t, k, MEL_F64, 0, 0, V, MEL_ACCUMULATE_DX, ref);
        s = run(vp, t, k, MEL_F64, 0, v_off, v_rows, MEL_ACCUMULATE_DX, got);
        check_status(s == MEL_OK, "MEL_ACCUMULATE_DX runs");
        check_all(relerr(got->dx[0], ref->dx[0], N * D), 1e-12, "ce f64 MEL_ACCUMULATE_DX", "dX (X + Σ_processes)");
        mel_set_vocab_parallel(vp, NULL, 0, 0, 0);
        s = mel_set_vocab_parallel(vp, &world, v_off, V, MEL_VP_PARTIAL_DX);
        run(one, t, k, MEL_F64, 0, 0, V, 0, ref);
        s = run(vp, t, k, MEL_F64, 0, v_off, v_rows, 0, got);
        double sum[N * D];
        MPI_Allreduce(got->dx[0], sum, N * D, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
        check_all(relerr(sum, ref->dx[0], N * D), 1e-12, "ce f64 MEL_VP_PARTIAL_DX", "Σ_processes of the partial dX");
        if (size > 1)
            check_all(relerr(got->dx[0], ref->dx[0], N * D) > 1e-3 ? 0 : 1, 0.5, "ce f64 MEL_VP_PARTIAL_DX",
                      "one process's dX is partial (differs from the sum)");
        mel_set_vocab_parallel(vp, NULL, 0, 0, 0);
        mel_set_vocab_parallel(vp, &world, v_off, V, 0);
        mel_transform_free(t);
    }

    /* mel_plan_call is collective and gives the call's figures; comm stats */
    {
        mel_transform *t = setup(one, &cases[0], 80, 1);
        mel_set_chunk_rows(vp, 0);
        mel_set_workspace_limit(vp, 0);
        mel_args *a = mel_args_new();
        double y[N];
        mel_args_head(a, 0, mel_mat(X[0], MEL_F64, N, D, D), mel_mat(W[0] + v_off * D, MEL_F64, v_rows, D, D), NULL);
        mel_args_index(a, "labels", labels, MEL_I64, N);
        mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
        mel_args_output(a, y, MEL_F64);
        mel_call_plan pl;
        mel_stats st;
        s = mel_plan_call(vp, t, a, MEL_MODE_FORWARD, &pl);
        mel_status s2 = mel_forward(vp, t, a);
        mel_get_stats(vp, &st);
        check_status(s == MEL_OK && s2 == MEL_OK && pl.chunk_rows == st.chunk_rows && pl.chunks == st.chunks &&
                         pl.peak_workspace_bytes == st.peak_workspace_bytes && pl.active_rows == N - 4,
                     "mel_plan_call under vocabulary parallelism: chunk rows, chunks, workspace and active "
                     "rows equal the call's");
        int64_t bytes = -1;
        double sec = -1;
        mel_get_comm_stats(vp, &bytes, &sec);
        /* one barrier of 2 values per active row from each other process, and the agreements */
        const int64_t rowb = (int64_t)(size - 1) * (N - 4) * 2 * 8;
        check_status(size == 1 ? bytes == 0 : bytes > rowb && bytes < rowb + (size - 1) * 400 && sec >= 0,
                     "mel_get_comm_stats: the row values of a forward ce call, (K - 1)·rows·16 bytes, plus the "
                     "agreements");
        if (rank == 0) diag("comm bytes %lld (row values %lld)", (long long)bytes, (long long)rowb);
        mel_get_comm_stats(one, &bytes, &sec);
        check_status(bytes == 0 && sec == 0, "mel_get_comm_stats: 0 without vocabulary parallelism");
        mel_args_free(a);
        mel_transform_free(t);
    }

    /* bf16 storage: one rounding of the summed dX, like one process */
    {
        mel_transform *t = setup(one, &cases[0], 78, 0);
        mel_set_chunk_rows(one, 0);
        mel_set_chunk_rows(vp, 0);
        /* the same bf16 inputs for both runs */
        uint16_t xb[N * D], wb[V * D], dxb1[N * D], dxb2[N * D];
        float dw1[V * D], dw2[V * D];
        double y1, y2;
        to_bf16(xb, X[0], N * D);
        to_bf16(wb, W[0], V * D);
        mel_ctx *cs[2] = {one, vp};
        for (int c = 0; c < 2; c++) {
            const int64_t o = c ? v_off : 0, rows = c ? v_rows : V;
            mel_args *a = mel_args_new();
            memset(c ? dw2 : dw1, 0, sizeof dw1);
            mel_args_head(a, 0, mel_mat(xb, MEL_BF16, N, D, D), mel_mat(wb + o * D, MEL_BF16, rows, D, D), NULL);
            mel_args_grad_head(a, 0, mel_mat(c ? dxb2 : dxb1, MEL_BF16, N, D, D),
                               mel_mat((c ? dw2 : dw1) + o * D, MEL_F32, rows, D, D), NULL, 0);
            mel_args_index(a, "labels", labels, MEL_I64, N);
            mel_args_output(a, c ? &y2 : &y1, MEL_F64);
            s = mel_forward_backward(cs[c], t, a);
            if (s) diag("rank %d: %s", rank, mel_last_error(cs[c]));
            mel_args_free(a);
        }
        int same_dx = !memcmp(dxb1, dxb2, sizeof dxb1);
        double e = fabs(y1 - y2) / fabs(y1), ew = 0;
        for (int i = v_off * D; i < (v_off + v_rows) * D; i++) {
            double d = fabs(dw1[i] - dw2[i]);
            if (d > ew) ew = d;
        }
        check_all(e, 1e-5, "ce bf16", "y");
        check_all(ew, 1e-5, "ce bf16", "dW rows of the shard (abs)");
        int bad = 0;
        for (int i = 0; i < N * D; i++) {
            /* a bf16 dX may differ from one process's by one rounding step only */
            float f1, f2;
            uint32_t u1 = (uint32_t)dxb1[i] << 16, u2 = (uint32_t)dxb2[i] << 16;
            memcpy(&f1, &u1, 4), memcpy(&f2, &u2, 4);
            if (fabsf(f1 - f2) > fabsf(f1) * (1.0f / 128) + 1e-30f) bad++;
        }
        check_status(bad == 0, "ce bf16: dX within one bf16 rounding of one process's on every process");
        if (rank == 0) diag("bf16 dX bitwise equal to one process's on rank 0: %s", same_dx ? "yes" : "no");
        mel_transform_free(t);
    }

    /* errors: every process fails together */
    {
        const kase *k = &cases[0];
        mel_transform *t = setup(one, k, 79, 0);
        mel_set_chunk_rows(vp, 0);
        /* one process with a label out of range */
        if (rank == size - 1) labels[3] = V + 5;
        s = run(vp, t, k, MEL_F64, 0, v_off, v_rows, 0, got);
        int good = s == MEL_ERR_INVALID_ARGUMENT &&
                   (rank == size - 1 ? strstr(mel_last_error(vp), "labels[3] = 18") != NULL
                                     : strstr(mel_last_error(vp), "failed this call") != NULL);
        if (!good) diag("rank %d: status %d: %s", rank, (int)s, mel_last_error(vp));
        if (size > 1) check_status(good, "a bad label on the last process: it names the label, the others name the process");
        else check_status(good, "a bad label: named");
        make_problem(79, 0);
        /* shards that do not tile the vocabulary */
        if (size > 1) {
            mel_set_vocab_parallel(vp, NULL, 0, 0, 0);
            mel_set_vocab_parallel(vp, &world, v_off, V + 1, 0);
            s = run(vp, t, k, MEL_F64, 0, v_off, v_rows, 0, got);
            good = s == MEL_ERR_SHAPE && strstr(mel_last_error(vp), "cover [0, 13) but v_total = 14") != NULL;
            if (!good) diag("rank %d: status %d: %s", rank, (int)s, mel_last_error(vp));
            check_status(good, "shards covering [0, V) with v_total = V + 1: MEL_ERR_SHAPE on every process");
            mel_set_vocab_parallel(vp, NULL, 0, 0, 0);
            mel_set_vocab_parallel(vp, &world, v_off, V, 0);
        }
        mel_transform_free(t);
        /* argument checks */
        good = mel_set_vocab_parallel(vp, &world, V, V, 0) == MEL_ERR_INVALID_ARGUMENT &&
               strstr(mel_last_error(vp), "v_offset = 13 is outside [0, v_total = 13)") != NULL;
        good &= mel_set_vocab_parallel(vp, &world, 0, 0, 0) == MEL_ERR_INVALID_ARGUMENT &&
                strstr(mel_last_error(vp), "v_total = 0") != NULL;
        good &= mel_set_vocab_parallel(vp, &world, 0, V, 4) == MEL_ERR_INVALID_ARGUMENT &&
                strstr(mel_last_error(vp), "flags") != NULL;
        good &= mel_set_vocab_parallel(vp, NULL, 3, 0, 0) == MEL_ERR_INVALID_ARGUMENT &&
                strstr(mel_last_error(vp), "comm is NULL") != NULL;
        check_status(good, "mel_set_vocab_parallel refuses bad offsets, totals, flags and leftovers, naming them");
        {
            mel_transform *ce = NULL;
            mel_transform_builtin(vp, "ce", NULL, &ce);
            mel_args *a = mel_args_new();
            mel_gradcheck_report rep;
            mel_args_head(a, 0, mel_mat(X[0], MEL_F64, N, D, D), mel_mat(W[0] + v_off * D, MEL_F64, v_rows, D, D), NULL);
            mel_args_index(a, "labels", labels, MEL_I64, N);
            s = mel_gradcheck(vp, ce, a, NULL, &rep);
            check_status(s == MEL_ERR_UNSUPPORTED && strstr(mel_last_error(vp), "one process"),
                         "mel_gradcheck on a vocabulary-parallel context: MEL_ERR_UNSUPPORTED, saying why");
            mel_args_free(a);
            mel_transform_free(ce);
        }
        mel_ctx *cu = NULL;
        if (mel_ctx_create(MEL_BACKEND_CUDA, &cu) == MEL_OK) {
            s = mel_set_vocab_parallel(cu, &world, v_off, V, 0);
            check_status(s == MEL_ERR_UNSUPPORTED && strstr(mel_last_error(cu), "NCCL"), "CUDA context: MEL_ERR_UNSUPPORTED");
            mel_ctx_destroy(cu);
        }
    }

    free(ref), free(got);
    mel_ctx_destroy(one);
    mel_ctx_destroy(vp);
    int rc = rank == 0 ? done_testing() : 0;
    MPI_Finalize();
    return rc;
}
