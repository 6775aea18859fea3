/* The backend interface is `struct mel_backend_ops` in lib/mel_internal.h:
 * memory (host_memory, alloc/free, copy, zero2d), the three GEMMs of a
 * chunk on storage dtypes (logits, grad_x, grad_w, with conv_bytes of
 * conversion scratch), bias add and column sums, the row-program executor
 * (run_rows), the thread count (rows at once on a device), and the
 * optional sync / set_stream / device_budget.  backends/cpu and
 * backends/cuda each implement one instance. */
#include "mel_internal.h"
