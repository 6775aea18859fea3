/* inputs.c -- the mel tool's .npy inputs and outputs: loading with shape
 * and dtype checks that name the flag and the file, dtype conversion. */
#include "mel_tool.h"
#include "half.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>


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
    if (t == NPY_BOOL) return ((const uint8_t *)p)[i] != 0;
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

/* "float32, float64 or float16" for a TAKES_ set */
static void takes_list(unsigned takes, char *buf, size_t len)
{
    const char *names[6];
    int n = 0;
    if (takes & TAKES_FLOAT) names[n++] = "float32", names[n++] = "float64";
    if (takes & TAKES_F16) names[n++] = "float16";
    if (takes & TAKES_INT) names[n++] = "int32", names[n++] = "int64";
    if (takes & TAKES_BOOL) names[n++] = "bool";
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, len - l, "%s%s", i == 0 ? "" : i == n - 1 ? " or " : ", ", names[i]);
    }
}

static int takes_dtype(unsigned takes, mel_dtype t)
{
    if (t == NPY_BOOL) return (takes & TAKES_BOOL) != 0;
    switch (t) {
    case MEL_F32: case MEL_F64: return (takes & TAKES_FLOAT) != 0;
    case MEL_F16: return (takes & TAKES_F16) != 0;
    case MEL_I32: case MEL_I64: return (takes & TAKES_INT) != 0;
    default: return 0;
    }
}

static const char *hint_of(unsigned takes)
{
    if (takes & TAKES_F16)
        return "; for bfloat16 data save float32 (or float16) and pass --dtype bf16 to compute with "
               "bf16 storage";
    if (takes == TAKES_FLOAT) return "; convert it with .astype(np.float32)";
    return "";
}

input load(const char *flag, const char *path, unsigned takes) { return load_rows(flag, path, takes, 0, -1); }

input load_rows(const char *flag, const char *path, unsigned takes, int64_t r0, int64_t nrows)
{
    input in;
    char err[512], list[96];
    memset(&in, 0, sizeof in);
    in.flag = flag;
    in.path = path;
    takes_list(takes, list, sizeof list);
    unsigned allow = (takes & TAKES_F16 ? NPY_ALLOW_F16 : 0) | (takes & TAKES_BOOL ? NPY_ALLOW_BOOL : 0);
    int rc = nrows < 0 ? npy_load_ex(path, &in.a, allow, err, sizeof err)
                       : npy_load_rows(path, &in.a, allow, r0, nrows, err, sizeof err);
    if (rc == NPY_EDTYPE)
        die(EXIT_USAGE, "%s: %s is not supported (%s takes %s%s)", flag, err, flag, list, hint_of(takes));
    if (rc < 0) die(EXIT_USAGE, "%s: %s", flag, err);
    own(in.a.data, free_any);
    hold((int64_t)in.a.count * (int64_t)npy_itemsize(in.a.dtype));
    if (!takes_dtype(takes, in.a.dtype)) {
        const char *nm = in.a.dtype == NPY_BOOL ? "bool" : in.a.dtype == MEL_F16 ? "float16"
                                                                                  : np_name(in.a.dtype);
        die(EXIT_USAGE, "%s: %s: dtype %s is not supported (%s takes %s%s)", flag, path, nm, flag, list,
            hint_of(takes));
    }
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
    hold(-(int64_t)in->a.count * (int64_t)npy_itemsize(in->a.dtype));
    release(in->a.data);
    in->a.data = NULL;
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
