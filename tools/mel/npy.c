/* npy.c -- reading and writing NumPy .npy files (see npy.h).
 *
 * Format (numpy/lib/format.py, NEP 1):
 *   "\x93NUMPY" major minor              8 bytes
 *   header_len                           uint16 LE (1.0) or uint32 LE (2.0, 3.0)
 *   header                               ASCII (1.0, 2.0) / UTF-8 (3.0) Python
 *                                        dict literal, space padded, ends in '\n'
 *   data                                 count * itemsize bytes
 *
 * What is accepted (and what is not), on reading:
 *   - versions 1.0, 2.0, 3.0 (any other is rejected);
 *   - a header of at most NPY_MAX_HEADER bytes holding a dict with exactly
 *     the keys 'descr', 'fortran_order' and 'shape' in any order, single or
 *     double quoted, an optional trailing comma, any whitespace; after the
 *     closing brace only whitespace (the padding and the '\n') may follow;
 *     the 64-byte alignment numpy writes is not required;
 *   - descr '<f8' '<f4' '<i4' '<i8' ('=' accepted as '<' on little-endian
 *     hosts, '|' never: it only applies to 1-byte types); big-endian,
 *     structured, half, bool, unsigned and every other dtype is rejected;
 *   - fortran_order True only when it does not change the layout (at most
 *     one dimension longer than 1); otherwise rejected;
 *   - shape a tuple of 0..NPY_MAX_DIMS non-negative integers whose product
 *     times the item size fits in int64 and size_t;
 *   - the data must be complete (a short file is "truncated");
 *   - bytes after the data are ignored, as np.load ignores them (several
 *     arrays may be written one after another to one stream).
 * Writing produces version 1.0 with the header padded to 64 bytes.
 */
#include "npy.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* internal flag: called as npy_load_ex (report unsupported dtypes as NPY_EDTYPE) */
#define NPY_LOAD_EX 0x100u

/* Headers numpy writes are < 100 bytes here; 1 MiB leaves room for hand
 * written files while refusing absurd header_len values. */
#define NPY_MAX_HEADER (1u << 20)

static const unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int host_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

static void swap_bytes(void *data, int64_t count, size_t size)
{
    unsigned char *p = data;
    for (int64_t i = 0; i < count; i++, p += size)
        for (size_t a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

static const char *descr_of(mel_dtype t)
{
    switch (t) {
    case MEL_F64: return "<f8";
    case MEL_F32: return "<f4";
    case MEL_I32: return "<i4";
    case MEL_I64: return "<i8";
    default: return NULL;
    }
}

static size_t itemsize_of(mel_dtype t)
{
    switch (t) {
    case MEL_F64: case MEL_I64: return 8;
    case MEL_F32: case MEL_I32: return 4;
    case MEL_F16: return 2;
    default: return t == NPY_BOOL ? 1 : 0;
    }
}

size_t npy_itemsize(mel_dtype t) { return itemsize_of(t); }

/* count = product of shape, and count * size must fit int64 and size_t.
 * Returns 0, or -1 when it overflows. */
static int shape_count(int ndim, const int64_t *shape, size_t size,
                       int64_t *count)
{
    int64_t c = 1;
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] == 0) zero = 1;
    }
    if (zero) { *count = 0; return 0; }
    for (int i = 0; i < ndim; i++) {
        if (c > INT64_MAX / shape[i]) return -1;
        c *= shape[i];
    }
    if (size && c > INT64_MAX / (int64_t)size) return -1;
    if ((uint64_t)c * size > (uint64_t)SIZE_MAX) return -1;
    *count = c;
    return 0;
}

/* ---------------------------------------------------- header dict parser */

typedef struct hparse {
    const char *s, *end;
} hparse;

static void skip_ws(hparse *p)
{
    while (p->s < p->end && (*p->s == ' ' || *p->s == '\t' || *p->s == '\n' ||
                             *p->s == '\r'))
        p->s++;
}

/* A quoted string into buf (no escapes are needed by any valid key or
 * descr; a backslash is rejected).  0 or -1. */
static int parse_str(hparse *p, char *buf, size_t buflen)
{
    skip_ws(p);
    if (p->s >= p->end || (*p->s != '\'' && *p->s != '"')) return -1;
    char q = *p->s++;
    size_t n = 0;
    while (p->s < p->end && *p->s != q) {
        if (*p->s == '\\' || *p->s == '\n') return -1;
        if (n + 1 >= buflen) return -1;
        buf[n++] = *p->s++;
    }
    if (p->s >= p->end) return -1;
    p->s++;
    buf[n] = '\0';
    return 0;
}

static int accept(hparse *p, char c)
{
    skip_ws(p);
    if (p->s < p->end && *p->s == c) { p->s++; return 1; }
    return 0;
}

static int accept_word(hparse *p, const char *w)
{
    skip_ws(p);
    size_t n = strlen(w);
    if ((size_t)(p->end - p->s) >= n && memcmp(p->s, w, n) == 0) {
        p->s += n;
        return 1;
    }
    return 0;
}

/* A non-negative decimal integer (Python 2 'L' suffix tolerated).
 * 0, -1 syntax error, -2 too large. */
static int parse_dim(hparse *p, int64_t *v)
{
    skip_ws(p);
    if (p->s >= p->end || *p->s < '0' || *p->s > '9') return -1;
    int64_t x = 0;
    int big = 0;
    while (p->s < p->end && *p->s >= '0' && *p->s <= '9') {
        int d = *p->s++ - '0';
        if (x > (INT64_MAX - d) / 10) big = 1;
        else x = x * 10 + d;
    }
    if (p->s < p->end && (*p->s == 'L' || *p->s == 'l')) p->s++;
    if (big) return -2;
    *v = x;
    return 0;
}

/* Parse "(d0, d1, ...)" into shape.  0 or -1 with err set. */
static int parse_shape(hparse *p, npy_array *a, const char *path, char *err,
                       size_t errlen)
{
    if (!accept(p, '(')) {
        set_err(err, errlen, "%s: bad .npy header: 'shape' is not a tuple", path);
        return -1;
    }
    a->ndim = 0;
    if (accept(p, ')')) return 0;
    for (;;) {
        int64_t d;
        int r = parse_dim(p, &d);
        if (r == -2) {
            set_err(err, errlen, "%s: shape dimension %d is too large", path,
                    a->ndim);
            return -1;
        }
        if (r < 0) {
            set_err(err, errlen,
                    "%s: bad .npy header: 'shape' must hold non-negative integers",
                    path);
            return -1;
        }
        if (a->ndim >= NPY_MAX_DIMS) {
            set_err(err, errlen, "%s: more than %d dimensions are not supported",
                    path, NPY_MAX_DIMS);
            return -1;
        }
        a->shape[a->ndim++] = d;
        if (accept(p, ')')) return 0;
        if (!accept(p, ',')) break;
        if (accept(p, ')')) return 0;
    }
    set_err(err, errlen, "%s: bad .npy header: malformed 'shape' tuple", path);
    return -1;
}

/* Parse the dict; fills dtype, ndim, shape, *fortran.  0 or -1. */
static int parse_header(const char *h, size_t len, const char *path, unsigned flags,
                        npy_array *a, int *fortran, char *err, size_t errlen)
{
    hparse p = {h, h + len};
    int have_descr = 0, have_fortran = 0, have_shape = 0;
    char key[32], descr[32];

    if (!accept(&p, '{')) {
        set_err(err, errlen, "%s: bad .npy header: not a dict", path);
        return -1;
    }
    while (!accept(&p, '}')) {
        if (parse_str(&p, key, sizeof key) < 0 || !accept(&p, ':')) {
            set_err(err, errlen, "%s: bad .npy header: expected 'key': value",
                    path);
            return -1;
        }
        if (strcmp(key, "descr") == 0 && !have_descr) {
            have_descr = 1;
            skip_ws(&p);
            if (p.s < p.end && *p.s == '[') {
                set_err(err, errlen,
                        "%s: structured dtype is not supported (want <f8, <f4, "
                        "<i4 or <i8)", path);
                return -1;
            }
            if (parse_str(&p, descr, sizeof descr) < 0) {
                set_err(err, errlen, "%s: bad .npy header: 'descr' is not a string",
                        path);
                return -1;
            }
        } else if (strcmp(key, "fortran_order") == 0 && !have_fortran) {
            have_fortran = 1;
            if (accept_word(&p, "True")) *fortran = 1;
            else if (accept_word(&p, "False")) *fortran = 0;
            else {
                set_err(err, errlen,
                        "%s: bad .npy header: 'fortran_order' is not True or False",
                        path);
                return -1;
            }
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            have_shape = 1;
            if (parse_shape(&p, a, path, err, errlen) < 0) return -1;
        } else {
            set_err(err, errlen, "%s: bad .npy header: %s key '%s'", path,
                    (strcmp(key, "descr") == 0 || strcmp(key, "shape") == 0 ||
                     strcmp(key, "fortran_order") == 0) ? "repeated" : "unexpected",
                    key);
            return -1;
        }
        if (accept(&p, '}')) break;
        if (!accept(&p, ',')) {
            set_err(err, errlen, "%s: bad .npy header: expected ',' or '}'", path);
            return -1;
        }
    }
    skip_ws(&p);
    if (p.s != p.end) {
        set_err(err, errlen, "%s: bad .npy header: garbage after the dict", path);
        return -1;
    }
    if (!have_descr || !have_fortran || !have_shape) {
        set_err(err, errlen, "%s: bad .npy header: missing key '%s'", path,
                !have_descr ? "descr" : !have_fortran ? "fortran_order" : "shape");
        return -1;
    }

    /* dtype */
    char order = descr[0];
    const char *code = descr + 1;
    if (order == '=' && host_little_endian()) order = '<';
    if (order == '<' && strcmp(code, "f8") == 0) a->dtype = MEL_F64;
    else if (order == '<' && strcmp(code, "f4") == 0) a->dtype = MEL_F32;
    else if (order == '<' && strcmp(code, "i4") == 0) a->dtype = MEL_I32;
    else if (order == '<' && strcmp(code, "i8") == 0) a->dtype = MEL_I64;
    else if ((flags & NPY_ALLOW_F16) && order == '<' && strcmp(code, "f2") == 0) a->dtype = MEL_F16;
    else if ((flags & NPY_ALLOW_BOOL) && (order == '|' || order == '<' || order == '=') &&
             strcmp(code, "b1") == 0)
        a->dtype = NPY_BOOL;
    else if (flags & NPY_LOAD_EX) {
        static const struct {
            const char *code, *name;
        } known[] = {{"f2", "float16"}, {"b1", "bool"}, {"u1", "uint8"}, {"u2", "uint16"},
                     {"u4", "uint32"}, {"u8", "uint64"}, {"i1", "int8"}, {"i2", "int16"},
                     {"f8", "float64"}, {"f4", "float32"}, {"i4", "int32"}, {"i8", "int64"},
                     {"V2", "2-byte void, e.g. bfloat16 from ml_dtypes"}};
        const char *nm = NULL;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++)
            if (!strcmp(code, known[k].code)) nm = known[k].name;
        set_err(err, errlen, "%s: dtype '%s'%s%s%s%s", path, descr, nm ? " (" : "", nm ? nm : "",
                nm ? ")" : "", order == '>' ? ", big-endian" : "");
        return NPY_EDTYPE;
    } else {
        set_err(err, errlen,
                "%s: dtype '%s' is not supported (want <f8, <f4, <i4 or <i8%s)",
                path, descr,
                order == '>' ? "; big-endian data must be converted first" : "");
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------- reading */

static int read_exact(FILE *f, void *buf, size_t n)
{
    return fread(buf, 1, n, f) == n ? 0 : -1;
}

static int load_impl(const char *path, npy_array *out, unsigned flags, int64_t r0, int64_t nrows, char *err,
                     size_t errlen);

int npy_load(const char *path, npy_array *out, char *err, size_t errlen)
{
    return load_impl(path, out, 0, 0, -1, err, errlen);
}

int npy_load_ex(const char *path, npy_array *out, unsigned flags, char *err, size_t errlen)
{
    return load_impl(path, out, (flags & (NPY_ALLOW_F16 | NPY_ALLOW_BOOL)) | NPY_LOAD_EX, 0, -1, err, errlen);
}

int npy_load_rows(const char *path, npy_array *out, unsigned flags, int64_t r0, int64_t nrows, char *err,
                  size_t errlen)
{
    return load_impl(path, out, (flags & (NPY_ALLOW_F16 | NPY_ALLOW_BOOL)) | NPY_LOAD_EX, r0, nrows < 0 ? 0 : nrows,
                     err, errlen);
}

/* nrows < 0: the whole array; else rows [r0, r0 + nrows) of the first axis */
static int load_impl(const char *path, npy_array *out, unsigned flags, int64_t r0, int64_t nrows, char *err,
                     size_t errlen)
{
    int rc = -1;
    FILE *f = NULL;
    char *hdr = NULL;
    void *data = NULL;
    npy_array a;
    memset(&a, 0, sizeof a);
    if (out) memset(out, 0, sizeof *out);
    if (!path || !out) {
        set_err(err, errlen, "npy_load: NULL argument");
        return -1;
    }

    f = fopen(path, "rb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    int64_t fsize = -1; /* known only for regular files */
    if (fstat(fileno(f), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            set_err(err, errlen, "%s: is a directory", path);
            goto fail;
        }
        if (S_ISREG(st.st_mode)) fsize = (int64_t)st.st_size;
    }

    unsigned char pre[12];
    size_t got = fread(pre, 1, 8, f);
    if (got < 6 || memcmp(pre, npy_magic, 6) != 0) {
        if (got == 0)
            set_err(err, errlen, "%s: empty file, not a .npy file", path);
        else
            set_err(err, errlen, "%s: not a .npy file (bad magic)", path);
        goto fail;
    }
    if (got < 8) {
        set_err(err, errlen, "%s: truncated .npy header", path);
        goto fail;
    }
    int major = pre[6], minor = pre[7];
    if ((major != 1 && major != 2 && major != 3) || minor != 0) {
        set_err(err, errlen,
                "%s: .npy format version %d.%d is not supported (want 1.0, 2.0 "
                "or 3.0)", path, major, minor);
        goto fail;
    }
    size_t lenbytes = major == 1 ? 2 : 4;
    if (read_exact(f, pre + 8, lenbytes) < 0) {
        set_err(err, errlen, "%s: truncated .npy header", path);
        goto fail;
    }
    uint32_t hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
    if (major != 1)
        hlen |= (uint32_t)pre[10] << 16 | (uint32_t)pre[11] << 24;
    if (hlen > NPY_MAX_HEADER) {
        set_err(err, errlen, "%s: .npy header length %lu exceeds %u bytes", path,
                (unsigned long)hlen, NPY_MAX_HEADER);
        goto fail;
    }
    int64_t data_off = 8 + (int64_t)lenbytes + hlen;
    if (fsize >= 0 && fsize < data_off) {
        set_err(err, errlen, "%s: truncated .npy header (%lld of %lld bytes)",
                path, (long long)fsize, (long long)data_off);
        goto fail;
    }
    hdr = malloc(hlen + 1);
    if (!hdr) {
        set_err(err, errlen, "%s: out of memory reading the header", path);
        goto fail;
    }
    if (read_exact(f, hdr, hlen) < 0) {
        set_err(err, errlen, "%s: truncated .npy header", path);
        goto fail;
    }
    hdr[hlen] = '\0';
    for (uint32_t i = 0; i < hlen; i++)
        if (hdr[i] == '\0') {
            set_err(err, errlen, "%s: bad .npy header: NUL byte at %lu", path,
                    (unsigned long)i);
            goto fail;
        }

    int fortran = 0;
    int hs = parse_header(hdr, hlen, path, flags, &a, &fortran, err, errlen);
    if (hs < 0) {
        rc = hs;
        goto fail;
    }

    size_t isz = itemsize_of(a.dtype);
    if (shape_count(a.ndim, a.shape, isz, &a.count) < 0) {
        set_err(err, errlen, "%s: shape is too large (element count times %zu "
                "bytes overflows)", path, isz);
        goto fail;
    }
    if (fortran) {
        int long_dims = 0;
        for (int i = 0; i < a.ndim; i++) long_dims += a.shape[i] > 1;
        if (long_dims > 1 && a.count > 0) {
            set_err(err, errlen, "%s: Fortran-order arrays are not supported "
                    "(save with np.ascontiguousarray)", path);
            goto fail;
        }
    }

    int64_t nbytes = a.count * (int64_t)isz;
    int64_t skip = 0;
    if (nrows >= 0) { /* a range of rows: read only those */
        if (a.ndim < 1 || r0 < 0 || r0 + nrows > a.shape[0]) {
            set_err(err, errlen, "%s: rows [%lld, %lld) asked of an array with %lld rows", path, (long long)r0,
                    (long long)(r0 + nrows), (long long)(a.ndim < 1 ? 0 : a.shape[0]));
            goto fail;
        }
        const int64_t row_count = a.shape[0] > 0 ? a.count / a.shape[0] : 0;
        a.file_rows = a.shape[0];
        if (fsize >= 0 && fsize - data_off < nbytes) {
            set_err(err, errlen,
                    "%s: truncated: the header promises %lld data bytes, the file "
                    "holds %lld", path, (long long)nbytes, (long long)(fsize - data_off));
            goto fail;
        }
        skip = r0 * row_count * (int64_t)isz;
        a.shape[0] = nrows;
        a.count = nrows * row_count;
        nbytes = a.count * (int64_t)isz;
        if (skip && fseeko(f, (off_t)skip, SEEK_CUR) != 0) {
            set_err(err, errlen, "%s: cannot seek to row %lld: %s", path, (long long)r0, strerror(errno));
            goto fail;
        }
    }
    if (fsize >= 0 && fsize - data_off - skip < nbytes) {
        set_err(err, errlen,
                "%s: truncated: the header promises %lld data bytes, the file "
                "holds %lld", path, (long long)nbytes, (long long)(fsize - data_off));
        goto fail;
    }
    data = malloc(nbytes > 0 ? (size_t)nbytes : 1);
    if (!data) {
        set_err(err, errlen, "%s: out of memory (%lld bytes)", path,
                (long long)nbytes);
        goto fail;
    }
    if (nbytes > 0 && read_exact(f, data, (size_t)nbytes) < 0) {
        set_err(err, errlen, "%s: truncated: fewer than the %lld data bytes the "
                "header promises", path, (long long)nbytes);
        goto fail;
    }
    if (!host_little_endian()) swap_bytes(data, a.count, isz);
    fclose(f);
    free(hdr);
    a.data = data;
    *out = a;
    return 0;

fail:
    if (f) fclose(f);
    free(hdr);
    free(data);
    return rc;
}

/* ------------------------------------------------------------- writing */

int npy_save(const char *path, const npy_array *a, char *err, size_t errlen)
{
    if (!path || !a) {
        set_err(err, errlen, "npy_save: NULL argument");
        return -1;
    }
    const char *descr = descr_of(a->dtype);
    size_t isz = itemsize_of(a->dtype);
    if (!descr) {
        set_err(err, errlen, "%s: dtype %s cannot be written to .npy", path,
                mel_dtype_name(a->dtype));
        return -1;
    }
    if (a->ndim < 0 || a->ndim > NPY_MAX_DIMS) {
        set_err(err, errlen, "%s: ndim %d is outside [0, %d]", path, a->ndim,
                NPY_MAX_DIMS);
        return -1;
    }
    int64_t count;
    if (shape_count(a->ndim, a->shape, isz, &count) < 0) {
        set_err(err, errlen, "%s: shape is negative or too large", path);
        return -1;
    }
    if (count > 0 && !a->data) {
        set_err(err, errlen, "%s: no data to write", path);
        return -1;
    }

    /* header: magic(6) ver(2) len(2) dict, padded so the total % 64 == 0 */
    char dict[64 + 24 * NPY_MAX_DIMS];
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < a->ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%lld%s",
                      (long long)a->shape[i],
                      a->ndim == 1 ? "," : i + 1 < a->ndim ? ", " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t hlen = padded - 10;
    unsigned char pre[10];
    memcpy(pre, npy_magic, 6);
    pre[6] = 1;
    pre[7] = 0;
    pre[8] = (unsigned char)(hlen & 0xff);
    pre[9] = (unsigned char)(hlen >> 8);

    FILE *f = fopen(path, "wb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    int bad = fwrite(pre, 1, 10, f) != 10 ||
              fwrite(dict, 1, (size_t)n, f) != (size_t)n;
    for (size_t i = 10 + (size_t)n; !bad && i + 1 < padded; i++)
        bad = fputc(' ', f) == EOF;
    if (!bad) bad = fputc('\n', f) == EOF;
    if (!bad && count > 0) {
        if (host_little_endian()) {
            bad = fwrite(a->data, isz, (size_t)count, f) != (size_t)count;
        } else {
            unsigned char tmp[8];
            const unsigned char *src = a->data;
            for (int64_t i = 0; !bad && i < count; i++) {
                memcpy(tmp, src + (size_t)i * isz, isz);
                swap_bytes(tmp, 1, isz);
                bad = fwrite(tmp, 1, isz, f) != isz;
            }
        }
    }
    int saved_errno = errno;
    if (fclose(f) != 0 && !bad) { bad = 1; saved_errno = errno; }
    if (bad) {
        set_err(err, errlen, "%s: write failed: %s", path, strerror(saved_errno));
        remove(path);
        return -1;
    }
    return 0;
}

void npy_free(npy_array *a)
{
    if (!a) return;
    free(a->data);
    a->data = NULL;
}

npy_array npy_view(mel_dtype dtype, void *data, int ndim, const int64_t *shape)
{
    npy_array a;
    memset(&a, 0, sizeof a);
    a.dtype = dtype;
    a.data = data;
    if (ndim < 0) ndim = 0;
    if (ndim > NPY_MAX_DIMS) ndim = NPY_MAX_DIMS;
    a.ndim = ndim;
    for (int i = 0; i < ndim; i++) a.shape[i] = shape ? shape[i] : 0;
    /* count -1 marks a negative or overflowing shape; npy_save rejects it */
    if (shape_count(ndim, a.shape, itemsize_of(dtype), &a.count) < 0)
        a.count = -1;
    return a;
}
