/* The communicator behind vocabulary parallelism (lib/vocab.c).
 *
 * The engine asks two things of it: an allgather and an all-to-all of host
 * bytes, blocks laid out in rank order.  libmel combines the blocks itself,
 * in rank order, so results are identical on every process and independent
 * of how the transport would order its sums.  MPI provides it today (lib/comm_mpi.c); a
 * NCCL communicator for device buffers would be another mel_comm_ops. */
#ifndef MEL_COMM_H
#define MEL_COMM_H

#include "mel_internal.h"

typedef struct mel_comm mel_comm;

typedef struct mel_comm_ops {
    const char *name;
    /* recv[k·bytes .. (k+1)·bytes) ← process k's send, for every k */
    mel_status (*allgather)(mel_ctx *ctx, mel_comm *c, const void *send, void *recv, size_t bytes);
    /* recv[k·bytes ..) ← process k's send[rank·bytes ..), for every k */
    mel_status (*alltoall)(mel_ctx *ctx, mel_comm *c, const void *send, void *recv, size_t bytes);
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
