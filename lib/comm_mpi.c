/* The MPI communicator (lib/comm.h). */
#include <limits.h>
#include <stdlib.h>

#include "comm.h"

#ifdef HAVE_MPI
#include <mpi.h>

static mel_status mpi_fail(mel_ctx *ctx, int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) len = 0;
    msg[len] = 0;
    return mel_fail(ctx, MEL_ERR_INTERNAL, "vocabulary parallelism: %s failed: %s", what, msg);
}

static mel_status mpi_allgather(mel_ctx *ctx, mel_comm *c, const void *send, void *recv, size_t bytes)
{
    MPI_Comm *comm = c->impl;
    /* MPI counts are int: large blocks go in pieces of at most 1 GiB */
    const size_t piece = (size_t)1 << 30;
    if (bytes <= piece) {
        int rc = MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, *comm);
        return rc == MPI_SUCCESS ? MEL_OK : mpi_fail(ctx, rc, "MPI_Allgather");
    }
    return mel_fail(ctx, MEL_ERR_OVERFLOW, "vocabulary parallelism: one allgather block of %zu bytes "
                    "exceeds 1 GiB", bytes);
}

static mel_status mpi_allreduce_sum(mel_ctx *ctx, mel_comm *c, void *data, mel_dtype dt, int64_t rows,
                                    int64_t cols, int64_t ld)
{
    MPI_Comm *comm = c->impl;
    MPI_Datatype one = dt == MEL_F64 ? MPI_DOUBLE : MPI_FLOAT;
    if (rows <= 0 || cols <= 0) return MEL_OK;
    if (rows > INT_MAX || cols > INT_MAX || ld > INT_MAX)
        return mel_fail(ctx, MEL_ERR_OVERFLOW, "vocabulary parallelism: a dX block of %lld × %lld (ld %lld) "
                        "exceeds MPI's int counts", (long long)rows, (long long)cols, (long long)ld);
    int rc;
    if (ld == cols && rows * cols <= INT_MAX) {
        rc = MPI_Allreduce(MPI_IN_PLACE, data, (int)(rows * cols), one, MPI_SUM, *comm);
    } else { /* strided rows: one vector datatype, still one collective */
        MPI_Datatype v;
        if ((rc = MPI_Type_vector((int)rows, (int)cols, (int)ld, one, &v)) == MPI_SUCCESS &&
            (rc = MPI_Type_commit(&v)) == MPI_SUCCESS) {
            rc = MPI_Allreduce(MPI_IN_PLACE, data, 1, v, MPI_SUM, *comm);
            MPI_Type_free(&v);
        }
    }
    return rc == MPI_SUCCESS ? MEL_OK : mpi_fail(ctx, rc, "MPI_Allreduce");
}

static void mpi_destroy(mel_comm *c)
{
    MPI_Comm *comm = c->impl;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Comm_free(comm);
    free(comm);
    free(c);
}

static const mel_comm_ops mpi_ops = {"MPI", mpi_allgather, mpi_allreduce_sum, mpi_destroy};

mel_status mel_comm_mpi_create(mel_ctx *ctx, const void *mpi_comm, mel_comm **out)
{
    *out = NULL;
    int init = 0, fin = 0;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin)
        return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "mel_set_vocab_parallel: MPI is %s (call MPI_Init first)",
                        fin ? "already finalized" : "not initialized");
    mel_comm *c = calloc(1, sizeof *c);
    MPI_Comm *dup = malloc(sizeof *dup);
    if (!c || !dup) {
        free(c), free(dup);
        return mel_fail(ctx, MEL_ERR_OUT_OF_MEMORY, "mel_set_vocab_parallel: out of memory");
    }
    int rc = MPI_Comm_dup(*(const MPI_Comm *)mpi_comm, dup);
    if (rc != MPI_SUCCESS) {
        free(c), free(dup);
        return mpi_fail(ctx, rc, "MPI_Comm_dup");
    }
    MPI_Comm_rank(*dup, &c->rank);
    MPI_Comm_size(*dup, &c->size);
    c->ops = &mpi_ops;
    c->impl = dup;
    *out = c;
    return MEL_OK;
}

#else

mel_status mel_comm_mpi_create(mel_ctx *ctx, const void *mpi_comm, mel_comm **out)
{
    *out = NULL;
    return mel_fail(ctx, MEL_ERR_UNSUPPORTED, "mel_set_vocab_parallel: this libmel was built without MPI "
                    "(install an MPI, e.g. Debian's libopenmpi-dev, and run configure --with-mpi)");
}

#endif
