/* What the CPU backend's BLAS is, for mel_info (include/mel.h): which
 * library, which of OpenBLAS's kernels it chose for this CPU, and its
 * threads.  On one of the project's machines OpenBLAS's own choice of
 * kernel made the same call 4x slower (14.5 s against 3.6 s with
 * OPENBLAS_CORETYPE=SkylakeX): the kernel is shown by `mel bench`, --stats
 * and libmel.config() (issue 22). */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <cblas.h>

#include "backend.h"

/* declared here: not every cblas.h declares OpenBLAS's extensions */
#ifdef HAVE_OPENBLAS_GET_CONFIG
char *openblas_get_config(void);
#endif
#ifdef HAVE_OPENBLAS_GET_CORENAME
char *openblas_get_corename(void);
#endif
#ifdef HAVE_OPENBLAS_GET_NUM_THREADS
int openblas_get_num_threads(void);
#endif
#ifdef HAVE_OPENBLAS_GET_PARALLEL
int openblas_get_parallel(void);
#endif

int mel_cpu_blas_info(const char *key, char *out, size_t n)
{
    out[0] = 0;
    if (!strcmp(key, "blas")) {
#ifdef HAVE_OPENBLAS_GET_CONFIG
        /* "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64": the first two words */
        const char *c = openblas_get_config();
        const char *sp = c ? strchr(c, ' ') : NULL;
        const char *end = sp ? strchr(sp + 1, ' ') : NULL;
        if (c) snprintf(out, n, "%.*s", end ? (int)(end - c) : (int)strlen(c), c);
        else snprintf(out, n, "OpenBLAS");
#else
        snprintf(out, n, "CBLAS");
#endif
    } else if (!strcmp(key, "blas_file")) {
        Dl_info info;
        if (dladdr((void *)cblas_sgemm, &info) && info.dli_fname) snprintf(out, n, "%s", info.dli_fname);
    } else if (!strcmp(key, "blas_config")) {
#ifdef HAVE_OPENBLAS_GET_CONFIG
        const char *c = openblas_get_config();
        snprintf(out, n, "%s", c ? c : "");
#endif
    } else if (!strcmp(key, "blas_kernel")) {
#ifdef HAVE_OPENBLAS_GET_CORENAME
        const char *c = openblas_get_corename();
        snprintf(out, n, "%s", c ? c : "");
#endif
    } else if (!strcmp(key, "blas_threads")) {
#ifdef HAVE_OPENBLAS_GET_NUM_THREADS
        snprintf(out, n, "%d", openblas_get_num_threads());
#endif
    } else if (!strcmp(key, "blas_parallel")) {
#ifdef HAVE_OPENBLAS_GET_PARALLEL
        const int p = openblas_get_parallel();
        snprintf(out, n, "%s", p == 0 ? "sequential" : p == 1 ? "pthreads" : p == 2 ? "openmp" : "");
#endif
    } else {
        return 0;
    }
    return 1;
}
