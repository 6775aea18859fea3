/* The backend interface is declared in lib/mel_internal.h (struct
 * mel_backend_ops): allocation, GEMM, bias add, column sums and the row
 * program executor.  Each backend folder implements one instance. */
#include "mel_internal.h"
