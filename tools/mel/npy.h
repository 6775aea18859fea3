/* Reading and writing NumPy .npy files (format versions 1.0, 2.0 and 3.0),
 * C order, little-endian, dtypes <f8 <f4 <i4 <i8; anything else is rejected
 * with a clear message.  Used by the mel tool and the tests. */
#ifndef MEL_NPY_H
#define MEL_NPY_H
#include <stddef.h>
#include <stdint.h>
#include "mel.h"

#define NPY_MAX_DIMS 8

typedef struct npy_array {
    mel_dtype dtype;            /* MEL_F64, MEL_F32, MEL_I32 or MEL_I64
                                   (npy_load_ex: also MEL_F16, NPY_BOOL) */
    int ndim;                   /* 0 for a scalar                          */
    int64_t shape[NPY_MAX_DIMS];
    int64_t count;              /* product of shape (1 for ndim == 0)      */
    void *data;                 /* malloc'ed, count elements               */
    int64_t file_rows;          /* npy_load_rows: rows of the file's array  */
} npy_array;

/* Load `path`.  Returns 0 on success; otherwise -1 with a one-line message
 * in err naming the file and what is wrong (missing, truncated, bad magic,
 * Fortran order, unsupported dtype, ...). */
int npy_load(const char *path, npy_array *out, char *err, size_t errlen);

/* npy_load with more dtypes on request (flags, ORed):
 *   NPY_ALLOW_F16   '<f2' loads as MEL_F16 (IEEE binary16 bits);
 *   NPY_ALLOW_BOOL  '|b1' loads as NPY_BOOL (one byte per element, 0 or 1;
 *                   any non-zero byte reads as 1).
 * Returns 0 on success, NPY_EDTYPE when the dtype is one it does not load
 * (err: "PATH: dtype 'DESCR' (NAME)", without a list of accepted dtypes:
 * the caller knows what it accepts), -1 for any other failure. */
#define NPY_ALLOW_F16 1u
#define NPY_ALLOW_BOOL 2u
#define NPY_EDTYPE (-2)
#define NPY_BOOL ((mel_dtype)64) /* npy-only dtype code: |b1 */
int npy_load_ex(const char *path, npy_array *out, unsigned flags, char *err, size_t errlen);
/* npy_load_ex of rows [r0, r0 + nrows) of the first axis only (the rest of
 * the file is not read); an error when the array has fewer rows. */
int npy_load_rows(const char *path, npy_array *out, unsigned flags, int64_t r0, int64_t nrows, char *err,
                  size_t errlen);
/* Bytes per element of a dtype npy_load_ex can return (0 for any other). */
size_t npy_itemsize(mel_dtype t);
/* Write `a` to `path` (format 1.0).  0 on success, -1 with message. */
int npy_save(const char *path, const npy_array *a, char *err, size_t errlen);
/* Free the data of an array loaded or filled by the caller; NULL-safe. */
void npy_free(npy_array *a);
/* Convenience: fill a header-only struct for saving a buffer. */
npy_array npy_view(mel_dtype dtype, void *data, int ndim, const int64_t *shape);
#endif
