/* The backends libmel knows, in mel_backend order.  A backend is added by
 * implementing mel_backend_ops (backends/backend.h) and listing it here;
 * lib/ names none of them.
 *
 * The CPU backend is linked in.  The CUDA backend (configure --with-cuda)
 * is a module of its own, libmel-cuda.so (MEL_CUDA_MODULE_FILE), loaded
 * with dlopen on the first mel_ctx_create(MEL_BACKEND_CUDA): libmel.so
 * links no CUDA library, so a process that never asks for CUDA maps none
 * (and libmel loads on a machine without the CUDA runtime).  The module is
 * looked for
 *   1. at $MEL_CUDA_MODULE when set (that file and nothing else);
 *   2. in the directory of the file that holds libmel (libmel.so, or the
 *      program when libmel is linked statically): where `make install`
 *      puts it beside the library, and lib/.libs of the build tree;
 *   3. by the dynamic loader's search (LD_LIBRARY_PATH, the program's
 *      run path, ld.so.cache).
 * A failure -- no module, a module that does not load (the CUDA runtime or
 * cuBLAS missing: the loader's message names the library), one built for
 * another libmel -- is remembered and reported by every CUDA
 * mel_ctx_create; everything else works. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend.h"

static const mel_backend_ops *cpu_ops(char *why, size_t n)
{
    (void)why, (void)n;
    return mel_cpu_backend();
}

#ifdef HAVE_CUDA
static const mel_backend_ops *cuda_ops(char *why, size_t n);
#define CUDA_OPS cuda_ops
#else
#define CUDA_OPS NULL
#endif

static const mel_backend_entry registry[] = {
    {MEL_BACKEND_CPU, "CPU", "MEL_BACKEND_CPU", "", cpu_ops},
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

/* ------------------------------------------------- module loading */
#ifdef HAVE_CUDA /* the one module so far */

/* What a module is handed: the few library functions it calls, and the
 * sizes of the structures it shares with this build. */
static const mel_backend_host host = {
    .version = PACKAGE_VERSION,
    .size_ctx = sizeof(mel_ctx),
    .size_ops = sizeof(mel_backend_ops),
    .size_chunk = sizeof(mel_chunk),
    .size_transform = sizeof(mel_transform),
    .fail = mel_fail,
    .op_name = mel_op_name,
    .dtype_name = mel_dtype_name,
};

static int is_file(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The directory of the file holding this code ("" when unknown), in dir. */
static void own_dir(char *dir, size_t n)
{
    Dl_info info;
    dir[0] = 0;
    if (!dladdr((void *)mel_backend_find, &info) || !info.dli_fname || !strchr(info.dli_fname, '/')) return;
    snprintf(dir, n, "%s", info.dli_fname);
    *strrchr(dir, '/') = 0;
}

/* Load module `file` and call its entry point `entry`.  On failure, NULL
 * and why (what is missing: the module, a library it needs, the entry) in
 * why[n]. */
static const mel_backend_ops *load_module(const char *file, const char *env, const char *entry, char *why,
                                          size_t n)
{
    char path[4096];
    const char *p = getenv(env);
    void *h = NULL;
    if (p && *p) {
        snprintf(path, sizeof path, "%s", p);
        if (!is_file(path)) {
            snprintf(why, n, "the backend module %s = %.700s is not a file", env, path);
            return NULL;
        }
    } else {
        char dir[4096];
        own_dir(dir, sizeof dir);
        path[0] = 0;
        if (dir[0]) {
            snprintf(path, sizeof path, "%s/%s", dir, file);
            if (!is_file(path)) path[0] = 0;
        }
        if (!path[0]) { /* the loader's search */
            dlerror();
            h = dlopen(file, RTLD_NOW | RTLD_LOCAL);
            if (!h) {
                const char *e = dlerror();
                /* the loader says "FILE: cannot open shared object file" both
                 * when FILE is missing and when a library it needs is */
                snprintf(why, n, "the backend module %s was not found (looked in %s, then the dynamic loader's "
                         "search path; set %s to its path): %s", file, dir[0] ? dir : "(libmel's directory unknown)",
                         env, e ? e : "?");
                return NULL;
            }
            snprintf(path, sizeof path, "%s (dynamic loader's search)", file);
        }
    }
    if (!h) {
        dlerror();
        h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char *e = dlerror();
            snprintf(why, n, "the backend module %s could not be loaded: %s", path, e ? e : "?");
            return NULL;
        }
    }
    mel_backend_module_fn fn;
    {
        void *sym = dlsym(h, entry);
        memcpy(&fn, &sym, sizeof fn); /* object pointer to function pointer (POSIX) */
    }
    if (!fn) {
        snprintf(why, n, "the backend module %s has no entry point %s (not a libmel module?)", path, entry);
        dlclose(h);
        return NULL;
    }
    char merr[512] = "";
    const mel_backend_ops *ops = fn(&host, merr, sizeof merr);
    if (!ops) {
        snprintf(why, n, "the backend module %s: %s", path, merr[0] ? merr : "refused to load");
        dlclose(h);
        return NULL;
    }
    return ops; /* the module stays loaded for the life of the process */
}

static pthread_once_t cuda_once = PTHREAD_ONCE_INIT;
static const mel_backend_ops *cuda_loaded;
static char cuda_why[1024];

static void cuda_load(void)
{
    cuda_loaded = load_module(MEL_CUDA_MODULE_FILE, "MEL_CUDA_MODULE", MEL_BACKEND_MODULE_ENTRY, cuda_why,
                              sizeof cuda_why);
}

static const mel_backend_ops *cuda_ops(char *why, size_t n)
{
    pthread_once(&cuda_once, cuda_load);
    if (!cuda_loaded && why && n) snprintf(why, n, "%s", cuda_why);
    return cuda_loaded;
}
#endif
