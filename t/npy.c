/* t/npy.c -- the .npy reader/writer of tools/mel/npy.c.
 *
 * Round trips every dtype and shape (0-d, 1-d, 2-d, 3-d, empty), reads files
 * built byte by byte here (so a symmetric bug in npy_save/npy_load cannot
 * hide), and checks that every malformed file is rejected with a message
 * that names the file and the fault. */
#include "npy.h"
#include "tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];
static char pathbuf[512];

static const char *tmp(const char *name)
{
    snprintf(pathbuf, sizeof pathbuf, "%s/%s", dir, name);
    return pathbuf;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        printf("Bail out! cannot write %s\n", path);
        exit(1);
    }
}

/* A .npy file: magic, version major.0, header_len field (2 or 4 bytes,
 * or `lenfield` when >= 0), the dict text as given (padding included by the
 * caller), then data. */
static size_t build(unsigned char *buf, int major, const char *dict,
                    long long lenfield, const void *data, size_t ndata)
{
    static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    size_t n = 0, hl = strlen(dict);
    unsigned long long lf = lenfield >= 0 ? (unsigned long long)lenfield : hl;
    memcpy(buf, magic, 6);
    n = 6;
    buf[n++] = (unsigned char)major;
    buf[n++] = 0;
    buf[n++] = lf & 0xff;
    buf[n++] = (lf >> 8) & 0xff;
    if (major != 1) {
        buf[n++] = (lf >> 16) & 0xff;
        buf[n++] = (lf >> 24) & 0xff;
    }
    memcpy(buf + n, dict, hl);
    n += hl;
    if (ndata) memcpy(buf + n, data, ndata);
    return n + ndata;
}

static unsigned char fbuf[1 << 16];

static void put(const char *name, int major, const char *dict, const void *data,
                size_t ndata)
{
    size_t n = build(fbuf, major, dict, -1, data, ndata);
    write_bytes(tmp(name), fbuf, n);
}

/* Expect npy_load(name) to fail with a message containing the file name
 * and `want`. */
static void rejects(const char *name, const char *want, const char *what)
{
    npy_array a;
    char err[512] = "";
    memset(&a, 0x5a, sizeof a);
    int r = npy_load(tmp(name), &a, err, sizeof err);
    int named = strstr(err, name) != NULL;
    int has = strstr(err, want) != NULL;
    ok(r == -1 && named && has && a.data == NULL && strchr(err, '\n') == NULL,
       "rejects %s: \"%s\"", what, err);
    if (!(named && has)) diag("  wanted the file name and '%s' in the message", want);
    npy_free(&a);
}

static void roundtrip(mel_dtype t, int ndim, const int64_t *shape)
{
    int64_t count = 1;
    for (int i = 0; i < ndim; i++) count *= shape[i];
    size_t isz = mel_dtype_size(t);
    unsigned char *data = malloc(count ? (size_t)count * isz : 1);
    if (!data) { printf("Bail out! out of memory\n"); exit(1); }
    for (int64_t i = 0; i < count; i++) {
        switch (t) {
        case MEL_F64: ((double *)data)[i] = 0.1 * (double)i - 3.25e-300 * (double)(i % 3); break;
        case MEL_F32: ((float *)data)[i] = -1.5f * (float)i + 0.3f; break;
        case MEL_I32: ((int32_t *)data)[i] = (int32_t)(i * 7919 - 100000); break;
        case MEL_I64: ((int64_t *)data)[i] = ((int64_t)1 << 40) * (i + 1) - i; break;
        default: break;
        }
    }
    char desc[96];
    int n = snprintf(desc, sizeof desc, "%s (", mel_dtype_name(t));
    for (int i = 0; i < ndim; i++)
        n += snprintf(desc + n, sizeof desc - (size_t)n, "%s%lld", i ? "," : "",
                      (long long)shape[i]);
    snprintf(desc + n, sizeof desc - (size_t)n, ")");

    char err[512] = "";
    npy_array w = npy_view(t, data, ndim, shape), r;
    int s = npy_save(tmp("rt.npy"), &w, err, sizeof err);
    ok(s == 0, "save %s %s", desc, err);
    s = npy_load(tmp("rt.npy"), &r, err, sizeof err);
    int same = s == 0 && r.dtype == t && r.ndim == ndim && r.count == count &&
               r.data != NULL;
    for (int i = 0; same && i < ndim; i++) same = r.shape[i] == shape[i];
    if (same && count) same = memcmp(r.data, data, (size_t)count * isz) == 0;
    ok(same, "round trip %s %s", desc, err);

    /* the file itself: magic, version 1.0, header aligned to 64, '\n' */
    FILE *f = fopen(tmp("rt.npy"), "rb");
    size_t got = f ? fread(fbuf, 1, sizeof fbuf, f) : 0;
    if (f) fclose(f);
    size_t hl = got >= 10 ? (size_t)(fbuf[8] | fbuf[9] << 8) : 0;
    ok(got >= 10 && memcmp(fbuf, "\x93NUMPY\x01\x00", 8) == 0 && (10 + hl) % 64 == 0 &&
           fbuf[10 + hl - 1] == '\n' && got == 10 + hl + (size_t)count * isz,
       "file layout %s (header %zu bytes, file %zu)", desc, hl, got);
    npy_free(&r);
    free(data);
}

int main(void)
{
    const char *td = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/mel-npy-XXXXXX", td && *td ? td : "/tmp");
    if (!mkdtemp(dir)) { printf("Bail out! mkdtemp %s failed\n", dir); return 1; }
    diag("scratch directory %s", dir);

    /* ---- round trips */
    static const mel_dtype types[4] = {MEL_F64, MEL_F32, MEL_I32, MEL_I64};
    static const int64_t s0[1] = {0}, s1[1] = {5}, s1e[1] = {0}, s2[2] = {3, 4},
                         s2e[2] = {2, 0}, s3[3] = {2, 3, 4}, s2r[2] = {1, 7};
    for (int i = 0; i < 4; i++) {
        roundtrip(types[i], 0, s0);
        roundtrip(types[i], 1, s1);
        roundtrip(types[i], 1, s1e);
        roundtrip(types[i], 2, s2);
        roundtrip(types[i], 2, s2e);
        roundtrip(types[i], 2, s2r);
        roundtrip(types[i], 3, s3);
    }

    /* ---- the header text npy_save writes for a 1-d array keeps "(5,)" */
    {
        double v[5] = {0};
        char err[256];
        npy_array w = npy_view(MEL_F64, v, 1, s1);
        npy_save(tmp("one.npy"), &w, err, sizeof err);
        FILE *f = fopen(tmp("one.npy"), "rb");
        size_t got = f ? fread(fbuf, 1, sizeof fbuf - 1, f) : 0;
        if (f) fclose(f);
        fbuf[got] = 0;
        ok(strstr((char *)fbuf + 10,
                  "{'descr': '<f8', 'fortran_order': False, 'shape': (5,), }") != NULL,
           "npy_save writes numpy's dict for a 1-d float64 array");
    }

    /* ---- files built by hand */
    const double d2[2] = {1.5, -2.0};
    const unsigned char d2le[16] = {0, 0, 0, 0, 0, 0, 0xf8, 0x3f,
                                    0, 0, 0, 0, 0, 0, 0x00, 0xc0};
    struct {
        const char *name, *dict;
        int major;
        const char *what;
    } good[] = {
        {"v1.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }     \n", 1,
         "version 1.0"},
        {"v2.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n", 2,
         "version 2.0"},
        {"v3.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n", 3,
         "version 3.0"},
        {"order.npy", "{\"shape\":(2L,),\"fortran_order\":False,\"descr\":\"<f8\"}\n", 1,
         "keys in another order, double quotes, no trailing comma, 'L' suffix"},
        {"ftn1d.npy", "{'descr': '<f8', 'fortran_order': True, 'shape': (2,), }\n", 1,
         "fortran_order True on a 1-d array (same layout)"},
        {"noeol.npy", "{'descr': '=f8', 'fortran_order': False, 'shape': (1, 2)}", 1,
         "'=f8', no newline, shape (1, 2)"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        put(good[i].name, good[i].major, good[i].dict, d2le, sizeof d2le);
        npy_array a;
        char err[512] = "";
        int r = npy_load(tmp(good[i].name), &a, err, sizeof err);
        ok(r == 0 && a.dtype == MEL_F64 && a.count == 2 &&
               ((double *)a.data)[0] == d2[0] && ((double *)a.data)[1] == d2[1],
           "reads %s %s", good[i].what, err);
        if (r == 0) npy_free(&a);
    }
    {   /* trailing bytes after the data are ignored, as np.load does */
        unsigned char extra[24];
        memcpy(extra, d2le, 16);
        memcpy(extra + 16, "garbage!", 8);
        put("trail.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n",
            extra, sizeof extra);
        npy_array a;
        char err[512] = "";
        int r = npy_load(tmp("trail.npy"), &a, err, sizeof err);
        ok(r == 0 && a.count == 2 && ((double *)a.data)[1] == -2.0,
           "bytes after the data are ignored %s", err);
        if (r == 0) npy_free(&a);
    }
    {   /* int32 and int64 little-endian bytes */
        const unsigned char i4[8] = {0xff, 0xff, 0xff, 0xff, 7, 0, 0, 0};
        put("i4.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }\n", i4,
            sizeof i4);
        npy_array a;
        char err[512] = "";
        int r = npy_load(tmp("i4.npy"), &a, err, sizeof err);
        ok(r == 0 && a.dtype == MEL_I32 && ((int32_t *)a.data)[0] == -1 &&
               ((int32_t *)a.data)[1] == 7,
           "reads int32 bytes %s", err);
        if (r == 0) npy_free(&a);
    }

    /* ---- malformed files */
    {
        npy_array a;
        char err[512] = "";
        int r = npy_load(tmp("missing.npy"), &a, err, sizeof err);
        ok(r == -1 && strstr(err, "missing.npy") && strstr(err, "No such file"),
           "rejects a missing file: \"%s\"", err);
    }
    write_bytes(tmp("empty.npy"), "", 0);
    rejects("empty.npy", "empty", "an empty file");
    write_bytes(tmp("magic.npy"), "PK\x03\x04 this is a zip file", 22);
    rejects("magic.npy", "magic", "wrong magic");
    write_bytes(tmp("short.npy"), "\x93NUM", 4);
    rejects("short.npy", "magic", "a file cut inside the magic");
    write_bytes(tmp("short2.npy"), "\x93NUMPY\x01\x00\x46", 9);
    rejects("short2.npy", "truncated", "a file cut inside header_len");
    {
        size_t n = build(fbuf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n",
                         -1, NULL, 0);
        write_bytes(tmp("cuthdr.npy"), fbuf, n - 10);
        rejects("cuthdr.npy", "truncated", "a header shorter than header_len");
        n = build(fbuf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n", -1,
                  d2le, sizeof d2le);
        write_bytes(tmp("cutdata.npy"), fbuf, n - 1);
        rejects("cutdata.npy", "truncated", "data one byte short");
        n = build(fbuf, 2, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n",
                  0xffffffffLL, NULL, 0);
        write_bytes(tmp("hugehdr.npy"), fbuf, n);
        rejects("hugehdr.npy", "header length", "header_len 4 GiB");
    }
    put("ver4.npy", 4, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n", d2le, 16);
    rejects("ver4.npy", "version 4.0", "format version 4.0");
    {
        size_t n = build(fbuf, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }\n",
                         -1, d2le, 16);
        fbuf[7] = 1;
        write_bytes(tmp("ver11.npy"), fbuf, n);
        rejects("ver11.npy", "version 1.1", "format version 1.1");
    }
    const char *dict_ftn = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }\n";
    unsigned char zeros[64] = {0};
    put("ftn.npy", 1, dict_ftn, zeros, 48);
    rejects("ftn.npy", "Fortran", "Fortran order 2x3");
    put("f2.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }\n", zeros, 4);
    rejects("f2.npy", "'<f2'", "dtype <f2");
    put("bigend.npy", 1, "{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }\n", zeros,
        16);
    rejects("bigend.npy", "'>f8'", "dtype >f8 (big-endian)");
    put("u2.npy", 1, "{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }\n", zeros, 4);
    rejects("u2.npy", "'<u2'", "dtype <u2");
    put("bool.npy", 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }\n", zeros, 2);
    rejects("bool.npy", "'|b1'", "dtype |b1");
    put("struct.npy", 1,
        "{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (2,), }\n",
        zeros, 16);
    rejects("struct.npy", "structured", "a structured dtype");
    put("garbage.npy", 1, "hello, world\n", zeros, 16);
    rejects("garbage.npy", "not a dict", "a header that is not a dict");
    put("nokey.npy", 1, "{'descr': '<f8', 'shape': (2,), }\n", zeros, 16);
    rejects("nokey.npy", "fortran_order", "a missing key");
    put("extrakey.npy", 1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), 'x': 1}\n", zeros, 16);
    rejects("extrakey.npy", "'x'", "an unexpected key");
    put("dupkey.npy", 1,
        "{'descr': '<f8', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}\n", zeros, 16);
    rejects("dupkey.npy", "repeated", "a repeated key");
    put("after.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), } junk\n",
        zeros, 16);
    rejects("after.npy", "garbage", "garbage after the dict");
    put("unterminated.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,\n",
        zeros, 16);
    rejects("unterminated.npy", "shape", "an unterminated shape tuple");
    put("negdim.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (-1,), }\n",
        zeros, 16);
    rejects("negdim.npy", "shape", "a negative dimension");
    put("fltdim.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2.0,), }\n",
        zeros, 16);
    rejects("fltdim.npy", "shape", "a float dimension");
    put("bool_ftn.npy", 1, "{'descr': '<f8', 'fortran_order': 0, 'shape': (2,), }\n", zeros,
        16);
    rejects("bool_ftn.npy", "fortran_order", "fortran_order not True/False");
    put("overflow.npy", 1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }\n",
        zeros, 16);
    rejects("overflow.npy", "too large", "a shape whose product overflows");
    put("overflow8.npy", 1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1152921504606846976,), }\n", zeros,
        16);
    rejects("overflow8.npy", "too large", "a shape whose byte size overflows");
    put("bigint.npy", 1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }\n", zeros,
        16);
    rejects("bigint.npy", "too large", "a dimension beyond int64");
    put("huge.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776,), }\n",
        zeros, 16);
    rejects("huge.npy", "truncated", "a huge shape the file does not hold (no 8 TiB malloc)");
    put("dims9.npy", 1,
        "{'descr': '<f8', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }\n", zeros, 8);
    rejects("dims9.npy", "dimensions", "more than NPY_MAX_DIMS dimensions");
    {
        char err[512] = "";
        npy_array a;
        int r = npy_load(dir, &a, err, sizeof err);
        ok(r == -1 && strstr(err, "directory"), "rejects a directory: \"%s\"", err);
    }

    /* ---- npy_save errors */
    {
        char err[512] = "";
        uint16_t h[2] = {0, 0};
        int64_t shp[1] = {2};
        npy_array w = npy_view(MEL_BF16, h, 1, shp);
        ok(npy_save(tmp("bf16.npy"), &w, err, sizeof err) == -1 && strstr(err, "bf16"),
           "npy_save refuses bf16: \"%s\"", err);
        double v[1] = {1};
        w = npy_view(MEL_F64, v, 1, shp);
        ok(npy_save("/nonexistent-dir/x.npy", &w, err, sizeof err) == -1 &&
               strstr(err, "/nonexistent-dir/x.npy"),
           "npy_save reports an unwritable path: \"%s\"", err);
        int64_t bad[2] = {-1, 2};
        w = npy_view(MEL_F64, v, 2, bad);
        ok(npy_save(tmp("neg.npy"), &w, err, sizeof err) == -1,
           "npy_save refuses a negative shape: \"%s\"", err);
        ok(access(tmp("neg.npy"), F_OK) != 0, "and leaves no file behind");
    }

    /* npy_load_ex: float16 and bool on request, NPY_EDTYPE for the rest */
    {
        npy_array a;
        char err[512] = "";
        /* float16 1.0, -2.0, 0.5 = 0x3C00, 0xC000, 0x3800 */
        const unsigned char h16[6] = {0x00, 0x3c, 0x00, 0xc0, 0x00, 0x38};
        put("h16.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (3,), }\n", h16, 6);
        int r = npy_load_ex(tmp("h16.npy"), &a, NPY_ALLOW_F16, err, sizeof err);
        ok(r == 0 && a.dtype == MEL_F16 && a.count == 3 && ((uint16_t *)a.data)[0] == 0x3c00 &&
               ((uint16_t *)a.data)[1] == 0xc000 && ((uint16_t *)a.data)[2] == 0x3800,
           "npy_load_ex NPY_ALLOW_F16 loads <f2 as MEL_F16 bits (%s)", err);
        npy_free(&a);
        r = npy_load_ex(tmp("h16.npy"), &a, NPY_ALLOW_BOOL, err, sizeof err);
        ok(r == NPY_EDTYPE && strstr(err, "'<f2'") && strstr(err, "float16") && a.data == NULL,
           "without NPY_ALLOW_F16: NPY_EDTYPE, \"%s\"", err);
        const unsigned char b1[4] = {1, 0, 0, 2};
        put("b1.npy", 1, "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 2), }\n", b1, 4);
        r = npy_load_ex(tmp("b1.npy"), &a, NPY_ALLOW_BOOL, err, sizeof err);
        ok(r == 0 && a.dtype == NPY_BOOL && a.count == 4 && a.ndim == 2 && npy_itemsize(NPY_BOOL) == 1 &&
               !memcmp(a.data, b1, 4),
           "npy_load_ex NPY_ALLOW_BOOL loads |b1 (%s)", err);
        npy_free(&a);
        ok(npy_load(tmp("b1.npy"), &a, err, sizeof err) == -1 && npy_load(tmp("h16.npy"), &a, err, sizeof err) == -1,
           "npy_load still rejects both with -1");
        r = npy_load_ex(tmp("u2.npy"), &a, NPY_ALLOW_F16 | NPY_ALLOW_BOOL, err, sizeof err);
        ok(r == NPY_EDTYPE && strstr(err, "u2.npy") && strstr(err, "'<u2'") && strstr(err, "uint16"),
           "npy_load_ex on <u2: NPY_EDTYPE naming file and dtype, \"%s\"", err);
        r = npy_load_ex(tmp("nonexistent.npy"), &a, 0, err, sizeof err);
        ok(r == -1, "npy_load_ex on a missing file: -1");
        put("h16short.npy", 1, "{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }\n", h16, 6);
        r = npy_load_ex(tmp("h16short.npy"), &a, NPY_ALLOW_F16, err, sizeof err);
        ok(r == -1 && strstr(err, "truncated"), "float16 data of the wrong length: truncated, \"%s\"", err);
    }

    /* cleanup */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) diag("could not remove %s", dir);
    return done_testing();
}
