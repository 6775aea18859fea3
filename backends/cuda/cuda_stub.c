/* Built when configure did not enable CUDA: there is no CUDA backend, and
 * mel_ctx_create(MEL_BACKEND_CUDA) reports MEL_ERR_UNSUPPORTED. */
#include "mel_internal.h"

const mel_backend_ops *mel_cuda_backend_ptr(void) { return NULL; }
