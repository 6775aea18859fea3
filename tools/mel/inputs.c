/* inputs.c -- the mel tool's .npy inputs and outputs: loading with shape
 * and dtype checks that name the flag and the file, dtype conversion. */
#include "mel_tool.h"
#include "half.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int is_float(mel_dtype t) { return t == MEL_F64 || t == MEL_F32; }

const char *np_name(mel_dtype t)
{
    switch (t) {
    case MEL_F64: return "float64";
    case MEL_F32: return "float32";
    case MEL_I32: return "int32";
    case MEL_I64: return "int64";
    default: return mel_dtype_name(t);
    }
}

/* bf16 / f16: the library's own conversions (lib/half.h), round to nearest even */
double get_elem(const void *p, mel_dtype t, int64_t i)
{
    switch (t) {
    case MEL_F64: return ((const double *)p)[i];
    case MEL_F32: return ((const float *)p)[i];
    case MEL_I32: return ((const int32_t *)p)[i];
    case MEL_I64: return (double)((const int64_t *)p)[i];
    case MEL_BF16: return mel_bf16_to_f32(((const uint16_t *)p)[i]);
    case MEL_F16: return mel_f16_to_f32(((const uint16_t *)p)[i]);
    }
    return NAN;
}

void set_elem(void *p, mel_dtype t, int64_t i, double v)
{
    switch (t) {
    case MEL_F64: ((double *)p)[i] = v; break;
    case MEL_F32: ((float *)p)[i] = (float)v; break;
    case MEL_BF16: ((uint16_t *)p)[i] = mel_f32_to_bf16((float)v); break;
    case MEL_F16: ((uint16_t *)p)[i] = mel_f32_to_f16((float)v); break;
    case MEL_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case MEL_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    }
}

void *convert(const void *src, mel_dtype from, int64_t count, mel_dtype to, const char *what)
{
    void *dst = xcalloc(count, mel_dtype_size(to), what);
    if (from == to) {
        if (count) memcpy(dst, src, (size_t)count * mel_dtype_size(to));
        return dst;
    }
    for (int64_t i = 0; i < count; i++) set_elem(dst, to, i, get_elem(src, from, i));
    return dst;
}

input_mem g_input_mem;

static void hold(int64_t bytes)
{
    g_input_mem.live += bytes;
    if (g_input_mem.live > g_input_mem.peak) g_input_mem.peak = g_input_mem.live;
}

void shape_str(const npy_array *a, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < a->ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%" PRId64, i ? ", " : "", a->shape[i]);
    if (n < len) snprintf(buf + n, len - n, a->ndim == 1 ? ",)" : ")");
}

input load(const char *flag, const char *path)
{
    input in;
    char err[512];
    memset(&in, 0, sizeof in);
    in.flag = flag;
    in.path = path;
    if (npy_load(path, &in.a, err, sizeof err) < 0) die(EXIT_USAGE, "%s: %s", flag, err);
    own(in.a.data, free_any);
    hold((int64_t)in.a.count * (int64_t)mel_dtype_size(in.a.dtype));
    return in;
}

void *input_as(input *in, mel_dtype to)
{
    if (in->a.dtype == to) return in->a.data;
    int64_t bytes = in->a.count * (int64_t)mel_dtype_size(to);
    void *c = convert(in->a.data, in->a.dtype, in->a.count, to, in->flag);
    hold(bytes);
    g_input_mem.converted += bytes;
    input_drop(in);
    in->a.data = c;
    in->a.dtype = to;
    return c;
}

void input_drop(input *in)
{
    if (!in->a.data) return;
    hold(-(int64_t)in->a.count * (int64_t)mel_dtype_size(in->a.dtype));
    release(in->a.data);
    in->a.data = NULL;
}

void want_float(const input *in)
{
    if (!is_float(in->a.dtype))
        die(EXIT_USAGE, "%s: %s: dtype %s is not supported (want float32 or float64)", in->flag,
            in->path, np_name(in->a.dtype));
}

void want_ndim(const input *in, int ndim, const char *what)
{
    if (in->a.ndim != ndim) {
        char s[160];
        shape_str(&in->a, s, sizeof s);
        die(EXIT_USAGE, "%s: %s: shape %s is not %s", in->flag, in->path, s, what);
    }
}

void want_vec(const input *in, int64_t n, const char *what)
{
    if (in->a.ndim != 1 || in->a.shape[0] != n) {
        char s[160];
        shape_str(&in->a, s, sizeof s);
        die(EXIT_USAGE, "%s: %s: shape %s, want (%" PRId64 ",) (%s)", in->flag, in->path, s, n,
            what);
    }
}

void save(const char *flag, const char *path, mel_dtype t, void *data, int ndim,
          const int64_t *shape)
{
    char err[512];
    npy_array a = npy_view(t, data, ndim, shape);
    if (npy_save(path, &a, err, sizeof err) < 0) die(EXIT_USAGE, "%s: %s", flag, err);
}
