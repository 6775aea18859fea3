/* The communicator behind vocabulary parallelism (lib/vocab.c).
 *
 * The engine asks two things of it.  An allgather of host bytes, blocks
 * laid out in rank order: the row reductions are combined by libmel itself
 * from it, in rank order, so they are identical on every process and
 * independent of the transport.  And an in-place all-reduce (sum) of a
 * matrix, for dX: one collective per chunk and no buffer of libmel's; its
 * order of summation is the transport's (MPI: fixed for a given process
 * count and message size).  MPI provides it today (lib/comm_mpi.c); a
 * NCCL communicator for device buffers would be another mel_comm_ops. */
#ifndef MEL_COMM_H
#define MEL_COMM_H

#include "mel_internal.h"

typedef struct mel_comm mel_comm;

typedef struct mel_comm_ops {
    const char *name;
    /* recv[k·bytes .. (k+1)·bytes) ← process k's send, for every k */
    mel_status (*allgather)(mel_ctx *ctx, mel_comm *c, const void *send, void *recv, size_t bytes);
    /* data [rows, cols] (leading dimension ld, f32 or f64) ← its sum over
     * the processes, in place, the same values on every process */
    mel_status (*allreduce_sum)(mel_ctx *ctx, mel_comm *c, void *data, mel_dtype dt, int64_t rows, int64_t cols,
                                int64_t ld);
    void (*destroy)(mel_comm *c);
} mel_comm_ops;

struct mel_comm {
    const mel_comm_ops *ops;
    int rank, size;
    void *impl;
};

/* A communicator over a duplicate of the MPI_Comm at mpi_comm (collective).
 * MEL_ERR_UNSUPPORTED when libmel was built without MPI or MPI is not
 * initialised. */
mel_status mel_comm_mpi_create(mel_ctx *ctx, const void *mpi_comm, mel_comm **out);

#endif
