/* The CUDA backend as a module loaded at run time (backends/registry.c,
 * issue 22): a process that uses only the CPU maps no CUDA library (in
 * every build), the module is loaded on the first CUDA mel_ctx_create and
 * not before, and a CUDA context that cannot be had fails with a message
 * naming what is missing (the module, or the library it needs, or the
 * driver).  Each MEL_CUDA_MODULE case runs in a child process of its own:
 * the registry loads the module once per process. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mel.h"
#include "tap.h"

/* The first line of /proc/self/maps naming `needle` (into line[n]); 0 when
 * none. */
static int maps_has(const char *needle, char *line, size_t n)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char buf[4096];
    int found = 0;
    while (!found && fgets(buf, sizeof buf, f))
        if (strstr(buf, needle)) {
            snprintf(line, n, "%s", buf);
            found = 1;
        }
    fclose(f);
    return found;
}

/* The first line of /proc/self/maps naming a CUDA library or the module
 * (into line[n]); 0 when none. */
static int maps_cuda(char *line, size_t n)
{
    return maps_has("libcuda", line, n) || maps_has("libcublas", line, n) || maps_has("libmel-cuda", line, n);
}

#ifdef HAVE_CUDA
/* mel_ctx_create(MEL_BACKEND_CUDA) in a child with MEL_CUDA_MODULE = module
 * (NULL: unset); its status and message into *s, msg[n]. */
static int child_create(const char *module, mel_status *s, char *msg, size_t n)
{
    int fd[2];
    if (pipe(fd)) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        close(fd[0]);
        if (module) setenv("MEL_CUDA_MODULE", module, 1);
        else unsetenv("MEL_CUDA_MODULE");
        mel_ctx *c = NULL;
        mel_status st = mel_ctx_create(MEL_BACKEND_CUDA, &c);
        char out[2048];
        int len = snprintf(out, sizeof out, "%d %s", (int)st, st ? mel_ctx_create_error() : "");
        if (write(fd[1], out, (size_t)len) != len) _exit(2);
        mel_ctx_destroy(c);
        _exit(0);
    }
    close(fd[1]);
    char in[2048];
    ssize_t got = 0, r;
    while (got < (ssize_t)sizeof in - 1 && (r = read(fd[0], in + got, sizeof in - 1 - (size_t)got)) > 0) got += r;
    in[got] = 0;
    close(fd[0]);
    int wst = 0;
    waitpid(pid, &wst, 0);
    int code = 0, off = 0;
    if (sscanf(in, "%d %n", &code, &off) < 1) return -1;
    *s = (mel_status)code;
    snprintf(msg, n, "%s", in + off);
    return 0;
}
#endif

static int has(const char *s, const char *needle) { return strstr(s, needle) != NULL; }

int main(void)
{
    char line[4096] = "";
    mel_status s;

#ifdef HAVE_CUDA
    {
        char msg[2048] = "";
        int ok_child;
        /* 1. MEL_CUDA_MODULE names a file that is not there */
        ok_child = child_create("/nonexistent/libmel-cuda.so", &s, msg, sizeof msg) == 0;
        ok(ok_child && s == MEL_ERR_UNSUPPORTED && has(msg, "MEL_CUDA_MODULE = /nonexistent/libmel-cuda.so") &&
               has(msg, "not a file"),
           "MEL_CUDA_MODULE not a file: the path named: %s", msg);
        /* 2. a file that is not a shared object */
        char tmp[] = "/tmp/mel-module-XXXXXX";
        int fd = mkstemp(tmp);
        if (fd >= 0) {
            if (write(fd, "not an ELF file\n", 16) != 16) diag("write %s failed", tmp);
            close(fd);
        }
        ok_child = child_create(tmp, &s, msg, sizeof msg) == 0;
        ok(ok_child && s == MEL_ERR_UNSUPPORTED && has(msg, tmp) && has(msg, "could not be loaded"),
           "a module that does not load: the path and the loader's reason named: %s", msg);
        unlink(tmp);
        /* 3. a shared object that is not a libmel module (the math library) */
        Dl_info info;
        if (dladdr((void *)cos, &info) && info.dli_fname && info.dli_fname[0] == '/') {
            ok_child = child_create(info.dli_fname, &s, msg, sizeof msg) == 0;
            ok(ok_child && s == MEL_ERR_UNSUPPORTED && has(msg, "no entry point mel_backend_module"),
               "a shared object without the entry point (%s): %s", info.dli_fname, msg);
        } else {
            skip("the math library's path is unknown (dladdr)");
        }
        /* 4. the module found beside libmel (this test links the build
         * tree's libmel.so, the module is built into the same directory):
         * a context, or a message naming the driver or the device */
        ok_child = child_create(NULL, &s, msg, sizeof msg) == 0;
        ok(ok_child && (s == MEL_OK || (s == MEL_ERR_UNSUPPORTED && has(msg, "cuda backend") &&
                                        (has(msg, "NVIDIA driver") || has(msg, "CUDA device")))),
           "the module beside libmel: %s", s == MEL_OK ? "a CUDA context" : msg);
    }
#endif

    /* 5. a CPU context and a call: no CUDA library is mapped */
    mel_ctx *cpu = NULL;
    s = mel_ctx_create(MEL_BACKEND_CPU, &cpu);
    ok(s == MEL_OK, "cpu context (%s)", s ? mel_ctx_create_error() : "");
    if (s) return done_testing();
    enum { N = 5, D = 3, V = 7 };
    float x[N * D], w[V * D], y[1];
    int32_t lab[N];
    for (int i = 0; i < N * D; i++) x[i] = (float)sin(1.3 * i);
    for (int i = 0; i < V * D; i++) w[i] = (float)cos(0.7 * i);
    for (int i = 0; i < N; i++) lab[i] = (i * 3) % V;
    mel_transform *ce = NULL;
    s = mel_transform_builtin(cpu, "ce", NULL, &ce);
    if (s == MEL_OK) {
        mel_args *a = mel_args_new();
        mel_args_head(a, 0, mel_mat(x, MEL_F32, N, D, 0), mel_mat(w, MEL_F32, V, D, 0), NULL);
        mel_args_index(a, "labels", lab, MEL_I32, N);
        mel_args_output(a, y, MEL_F32);
        s = mel_forward(cpu, ce, a);
        mel_args_free(a);
    }
    mel_transform_free(ce);
    ok(s == MEL_OK && isfinite(y[0]), "ce on the cpu: y = %g (%s)", y[0], mel_last_error(cpu));
    ok(!maps_cuda(line, sizeof line), "a CPU-only process maps no CUDA library%s%s", line[0] ? ": " : "",
       maps_cuda(line, sizeof line) ? line : "");
    mel_ctx_destroy(cpu);

    /* 6. the first CUDA context loads the module, in this process */
    mel_ctx *gpu = NULL;
    s = mel_ctx_create(MEL_BACKEND_CUDA, &gpu);
#ifdef HAVE_CUDA
    if (s == MEL_OK || has(mel_ctx_create_error(), "NVIDIA driver") || has(mel_ctx_create_error(), "CUDA device"))
        ok(maps_has("/libmel-cuda.so", line, sizeof line) > 0 && maps_has("/libcudart", line, sizeof line) > 0,
           "once a CUDA context was asked for, the module and the CUDA "
           "runtime are mapped (%s): %s", s == MEL_OK ? "a context" : mel_ctx_create_error(), line);
    else
        skip("the module did not load here: %s", mel_ctx_create_error());
#else
    ok(s == MEL_ERR_UNSUPPORTED && has(mel_ctx_create_error(), "built without CUDA (configure --with-cuda)") &&
           !maps_cuda(line, sizeof line),
       "a build without CUDA: MEL_ERR_UNSUPPORTED naming the configure option, nothing loaded: %s",
       mel_ctx_create_error());
#endif
    mel_ctx_destroy(gpu);
    return done_testing();
}
