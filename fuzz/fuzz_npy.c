/* fuzz/fuzz_npy.c -- libFuzzer harness over the .npy reader of the mel
 * tool (tools/mel/npy.c).  The input is written to an in-memory file
 * (memfd) and loaded with npy_load through /proc/self/fd; when it loads,
 * the array is checked for consistency (count = product of the shape),
 * saved with npy_save to a second memfd and loaded again, which must give
 * the same dtype, shape and bytes.  A failed load must leave a one-line
 * message and no data.  Violations abort (a finding); crashes, sanitizer
 * reports and leaks are findings too.  Replayed over fuzz/corpus/fuzz_npy
 * by t/fuzz_regress.t. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "npy.h"

static int fn_memfd(const uint8_t *data, size_t size, char *path, size_t plen)
{
    int fd = memfd_create("fuzz_npy", 0);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, plen, "/proc/self/fd/%d", fd);
    return fd;
}

static void fn_check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_npy: invariant violated: %s\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], path2[64], err[512];
    int fd = fn_memfd(data, size, path, sizeof path);
    if (fd < 0) return 0;
    npy_array a;
    memset(&a, 0, sizeof a);
    err[0] = 0;
    int r = npy_load(path, &a, err, sizeof err);
    if (r != 0) {
        fn_check(r == -1, "npy_load returns 0 or -1");
        fn_check(a.data == NULL, "a failed load leaves data NULL");
        fn_check(err[0] != 0 && strchr(err, '\n') == NULL, "a failed load leaves a one-line message");
    } else {
        int64_t count = 1;
        fn_check(a.ndim >= 0 && a.ndim <= NPY_MAX_DIMS, "ndim in range");
        for (int k = 0; k < a.ndim; k++) {
            fn_check(a.shape[k] >= 0, "shape >= 0");
            count *= a.shape[k];
        }
        fn_check(count == a.count, "count = product of the shape");
        size_t es = mel_dtype_size(a.dtype);
        fn_check(es > 0, "a known dtype");
        /* touch every byte: ASan checks the allocation is big enough */
        volatile uint8_t sum = 0;
        for (size_t i = 0; i < (size_t)a.count * es; i++) sum ^= ((uint8_t *)a.data)[i];
        (void)sum;
        int fd2 = fn_memfd(NULL, 0, path2, sizeof path2);
        if (fd2 >= 0) {
            if (npy_save(path2, &a, err, sizeof err) == 0) {
                npy_array b;
                memset(&b, 0, sizeof b);
                fn_check(npy_load(path2, &b, err, sizeof err) == 0, "a saved array loads again");
                fn_check(b.dtype == a.dtype && b.ndim == a.ndim && b.count == a.count,
                         "round trip keeps dtype and shape");
                for (int k = 0; k < a.ndim; k++) fn_check(a.shape[k] == b.shape[k], "round trip keeps the shape");
                fn_check(a.count == 0 || memcmp(a.data, b.data, (size_t)a.count * es) == 0,
                         "round trip keeps the bytes");
                npy_free(&b);
            }
            close(fd2);
        }
        npy_free(&a);
    }
    close(fd);
    return 0;
}
