/* Vocabulary-parallel training steps with libmel (doc/distributed.md).
 *
 *   mpirun -np 2 examples/vocab_parallel [steps]
 *
 * A linear output layer with cross-entropy, trained by plain SGD on a fixed
 * batch: the hidden states X [N, D] and the vocabulary matrix W [V, D] are
 * both parameters.  Each process holds only its rows of W (uneven shards
 * when K does not divide V) and updates them with its dW; dX comes back
 * summed over the processes, so every process applies the same update to
 * X.  Alongside, every process also trains a one-process copy with the
 * whole W, and the example prints both losses step by step and the largest
 * relative difference (it exits 1 when that exceeds 1e-5, the f32
 * tolerance of t/vocab_parallel.t).
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mel.h"

enum { N = 192, D = 128, V = 1001 }; /* N·D spans several pieces of the dX sum */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double gauss(void)
{
    double u = 0;
    for (int k = 0; k < 12; k++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        u += (double)(rng >> 11) * 0x1.0p-53;
    }
    return u - 6;
}

static void die(mel_ctx *ctx, mel_status s, const char *what)
{
    fprintf(stderr, "vocab_parallel: %s: %s (%s)\n", what, mel_status_str(s), mel_last_error(ctx));
    MPI_Abort(MPI_COMM_WORLD, 2);
}

/* one SGD step of rate lr on X and the rows of W held; returns the loss */
static double step(mel_ctx *ctx, mel_transform *ce, float *X, float *W, int64_t rows, const int64_t *labels,
                   float lr)
{
    float *dX = calloc(N * D, sizeof *dX), *dW = calloc((size_t)rows * D, sizeof *dW);
    double loss = 0;
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(X, MEL_F32, N, D, D), mel_mat(W, MEL_F32, rows, D, D), NULL);
    mel_args_index(a, "labels", labels, MEL_I64, N);
    mel_args_output(a, &loss, MEL_F64);
    mel_args_grad_head(a, 0, mel_mat(dX, MEL_F32, N, D, D), mel_mat(dW, MEL_F32, rows, D, D), NULL,
                       MEL_OVERWRITE_DW);
    mel_status s = mel_forward_backward(ctx, ce, a);
    if (s) die(ctx, s, "mel_forward_backward");
    for (int64_t i = 0; i < N * D; i++) X[i] -= lr * dX[i];
    for (int64_t i = 0; i < rows * D; i++) W[i] -= lr * dW[i];
    mel_args_free(a);
    free(dX), free(dW);
    return loss;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, K;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &K);
    const int steps = argc > 1 ? atoi(argv[1]) : 20;

    /* the same data on every process */
    float *X = malloc(sizeof(float) * N * D), *W = malloc(sizeof(float) * V * D);
    int64_t labels[N];
    for (int i = 0; i < N * D; i++) X[i] = (float)gauss();
    for (int i = 0; i < V * D; i++) W[i] = (float)(0.1 * gauss());
    for (int i = 0; i < N; i++) labels[i] = (int64_t)((rng >> 20) % V), rng = rng * 6364136223846793005ull + 1;
    for (int i = 0; i < N; i += 7) labels[i] = -100; /* some ignored rows */

    /* this process's shard: the first V mod K processes hold one row more */
    const int64_t rows = V / K + (rank < V % K);
    const int64_t off = (int64_t)rank * (V / K) + (rank < V % K ? rank : V % K);
    float *Xp = malloc(sizeof(float) * N * D), *Wp = malloc(sizeof(float) * rows * D);
    memcpy(Xp, X, sizeof(float) * N * D);
    memcpy(Wp, W + off * D, sizeof(float) * rows * D);

    mel_ctx *par, *one;
    mel_status s;
    if ((s = mel_ctx_create(MEL_BACKEND_CPU, &par)) || (s = mel_ctx_create(MEL_BACKEND_CPU, &one)))
        die(NULL, s, "mel_ctx_create");
    MPI_Comm world = MPI_COMM_WORLD;
    if ((s = mel_set_vocab_parallel(par, &world, off, V, 0))) die(par, s, "mel_set_vocab_parallel");
    mel_transform *ce;
    if ((s = mel_transform_builtin(par, "ce", NULL, &ce))) die(par, s, "ce");

    if (rank == 0) printf("%d processes; process 0 holds W rows [%lld, %lld) of %d\n", K, (long long)off,
                          (long long)(off + rows), V);
    double worst = 0;
    for (int k = 0; k < steps; k++) {
        double lp = step(par, ce, Xp, Wp, rows, labels, 0.5f);
        double l1 = step(one, ce, X, W, V, labels, 0.5f);
        double rel = fabs(lp - l1) / fabs(l1);
        if (rel > worst) worst = rel;
        if (rank == 0 && (k < 3 || k % 5 == 4 || k == steps - 1))
            printf("step %3d  loss %.7f  (one process %.7f, rel diff %.1e)\n", k + 1, lp, l1, rel);
    }
    int64_t bytes;
    double sec;
    mel_get_comm_stats(par, &bytes, &sec);
    double all;
    MPI_Allreduce(&worst, &all, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0)
        printf("max rel diff of the loss over %d steps and %d processes: %.2e; last step: %lld bytes received "
               "in %.3f ms of collectives\n", steps, K, all, (long long)bytes, 1e3 * sec);
    mel_transform_free(ce);
    mel_ctx_destroy(par);
    mel_ctx_destroy(one);
    free(X), free(W), free(Xp), free(Wp);
    MPI_Finalize();
    return all <= 1e-5 ? 0 : 1;
}
