/* The backends libmel knows, in mel_backend order.  A backend is added by
 * implementing mel_backend_ops (backends/backend.h) and listing it here;
 * lib/ names none of them. */
#include "backend.h"

#ifdef HAVE_CUDA
#define CUDA_OPS mel_cuda_backend
#else
#define CUDA_OPS NULL
#endif

static const mel_backend_entry registry[] = {
    {MEL_BACKEND_CPU, "CPU", "MEL_BACKEND_CPU", "", mel_cpu_backend},
    {MEL_BACKEND_CUDA, "CUDA", "MEL_BACKEND_CUDA", "configure --with-cuda", CUDA_OPS},
};
#define N_ENTRIES ((int)(sizeof registry / sizeof registry[0]))

int mel_backend_entries(void) { return N_ENTRIES; }

const mel_backend_entry *mel_backend_entry_at(int i)
{
    return i >= 0 && i < N_ENTRIES ? &registry[i] : NULL;
}

const mel_backend_entry *mel_backend_find(mel_backend kind)
{
    for (int i = 0; i < N_ENTRIES; i++)
        if (registry[i].kind == kind) return &registry[i];
    return NULL;
}
