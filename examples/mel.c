/* mel.c -- the `mel` command-line tool (contract: the CLI section of README.md and doc/api.md).
 *
 *   mel run TRANSFORM [options]        compute a transform and its gradients
 *   mel gradcheck TRANSFORM [options]  finite differences on random inputs
 *   mel bench [options]                naive vs recompute vs fused
 *   mel list                           built-in transforms
 *   mel --version
 *
 * Only the public API of mel.h is used.  Exit status: 0 success, 1 a failed
 * check or a runtime failure (out of memory, backend error), 2 bad usage or
 * bad input, with one line "mel: ..." on stderr naming the flag, file or
 * value at fault.  Every resource is registered with own() and released on
 * every exit path (die() included), so sanitizer builds stay quiet.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mel.h"
#include "npy.h"
#include "half.h"

#include <errno.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define EXIT_FAILED 1 /* a check failed, or the run failed at run time */
#define EXIT_USAGE 2  /* bad usage or bad input                       */

/* ============================================================ resources */

typedef struct owned {
    void *p;
    void (*fn)(void *);
} owned;
static owned *g_owned;
static size_t g_nowned, g_capowned;

static void release_all(void)
{
    while (g_nowned > 0) {
        owned o = g_owned[--g_nowned];
        o.fn(o.p);
    }
    free(g_owned);
    g_owned = NULL;
    g_capowned = 0;
}

/* One line on stderr ("mel: " + message, newlines folded), release
 * everything, exit. */
static _Noreturn void die(int status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static _Noreturn void die(int status, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    for (char *c = msg; *c; c++)
        if (*c == '\n' || *c == '\r') *c = ' ';
    fflush(stdout);
    fprintf(stderr, "mel: %s\n", msg);
    release_all();
    exit(status);
}

/* Register p (non-NULL) to be released by fn; returns p. */
static void *own(void *p, void (*fn)(void *))
{
    if (!p) return NULL;
    if (g_nowned == g_capowned) {
        size_t cap = g_capowned ? 2 * g_capowned : 64;
        owned *n = realloc(g_owned, cap * sizeof *n);
        if (!n) {
            fn(p);
            die(EXIT_FAILED, "out of memory");
        }
        g_owned = n;
        g_capowned = cap;
    }
    g_owned[g_nowned].p = p;
    g_owned[g_nowned].fn = fn;
    g_nowned++;
    return p;
}

/* Release everything registered after the first `mark` entries. */
static void release_to(size_t mark)
{
    while (g_nowned > mark) {
        owned o = g_owned[--g_nowned];
        o.fn(o.p);
    }
}

/* Release p now (it must have been registered). */
static void release(void *p)
{
    if (!p) return;
    for (size_t i = g_nowned; i-- > 0;)
        if (g_owned[i].p == p) {
            owned o = g_owned[i];
            memmove(g_owned + i, g_owned + i + 1,
                    (g_nowned - i - 1) * sizeof *g_owned);
            g_nowned--;
            o.fn(o.p);
            return;
        }
}

static void free_any(void *p) { free(p); }
static void free_ctx(void *p) { mel_ctx_destroy(p); }
static void free_transform(void *p) { mel_transform_free(p); }
static void free_args(void *p) { mel_args_free(p); }
static void free_params(void *p) { mel_params_free(p); }
static void close_file(void *p) { fclose(p); }

/* count elements of size bytes, zeroed; dies on overflow or OOM. */
static void *xcalloc(int64_t count, size_t size, const char *what)
{
    if (count < 0 || (size && (uint64_t)count > SIZE_MAX / size))
        die(EXIT_USAGE, "%s: size %" PRId64 " x %zu bytes overflows", what,
            count, size);
    size_t n = (size_t)count * size;
    void *p = calloc(n ? n : 1, 1);
    if (!p) die(EXIT_FAILED, "%s: out of memory (%zu bytes)", what, n);
    return own(p, free_any);
}

static int64_t mul64(int64_t a, int64_t b, const char *what)
{
    if (a < 0 || b < 0 || (a > 0 && b > INT64_MAX / a))
        die(EXIT_USAGE, "%s: size %" PRId64 " x %" PRId64 " overflows", what, a,
            b);
    return a * b;
}

/* ============================================================ library errors */

static int exit_of(mel_status s)
{
    switch (s) {
    case MEL_ERR_INVALID_ARGUMENT:
    case MEL_ERR_SHAPE:
    case MEL_ERR_UNSUPPORTED:
    case MEL_ERR_BUDGET:
    case MEL_ERR_NONFINITE:
    case MEL_ERR_OVERFLOW:
        return EXIT_USAGE;
    default:
        return EXIT_FAILED;
    }
}

/* Die with the context's message when s != MEL_OK. */
static void check(mel_ctx *ctx, mel_status s, const char *what)
{
    if (s == MEL_OK) return;
    const char *m = ctx ? mel_last_error(ctx) : "";
    if (!m || !*m) m = mel_status_str(s);
    die(exit_of(s), "%s: %s", what, m);
}

/* ============================================================ parsing */

static int64_t parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (end == s || *end || errno == ERANGE)
        die(EXIT_USAGE, "%s: '%s' is not an integer", flag, s);
    if (v < lo || v > hi)
        die(EXIT_USAGE, "%s: %lld is outside [%" PRId64 ", %" PRId64 "]", flag, v,
            lo, hi);
    return (int64_t)v;
}

/* An integer with an optional K, M, G, T suffix (powers of 1024), "B"
 * and "iB" tolerated: 256M, 1GiB, 1048576. */
static int64_t parse_bytes(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || errno == ERANGE || v < 0)
        die(EXIT_USAGE, "%s: '%s' is not a byte count", flag, s);
    int shift = 0;
    switch (*end) {
    case 'k': case 'K': shift = 10; end++; break;
    case 'm': case 'M': shift = 20; end++; break;
    case 'g': case 'G': shift = 30; end++; break;
    case 't': case 'T': shift = 40; end++; break;
    default: break;
    }
    if (shift && *end == 'i') end++;
    if (*end == 'B') end++;
    if (*end) die(EXIT_USAGE, "%s: '%s' is not a byte count", flag, s);
    if (v > (INT64_MAX >> shift))
        die(EXIT_USAGE, "%s: '%s' is too large", flag, s);
    return (int64_t)v << shift;
}

static double parse_f64(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || (errno == ERANGE && fabs(v) == HUGE_VAL))
        die(EXIT_USAGE, "%s: '%s' is not a number", flag, s);
    return v;
}

/* Symbolic parameter values: the one table of word -> numeric code. */
static const struct {
    const char *param, *word;
    double value;
} param_words[] = {
    {"loss_type", "grpo", 0},
    {"loss_type", "bnpo", 1},
    {"loss_type", "dr_grpo", 2},
    {"loss_type", "dapo", 3},
    {"importance_sampling_level", "token", 0},
    {"importance_sampling_level", "sequence", 1},
};
#define N_PARAM_WORDS (sizeof param_words / sizeof param_words[0])

/* The parameters given with --param, kept so that gradcheck and bench can
 * read ignore_index and seq_len. */
typedef struct param_list {
    mel_params *p;
    int n;
    char names[64][64];
    double values[64];
} param_list;

static void param_add(param_list *pl, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        die(EXIT_USAGE, "--param: '%s' is not NAME=VALUE", spec);
    size_t nlen = (size_t)(eq - spec);
    if (nlen >= sizeof pl->names[0])
        die(EXIT_USAGE, "--param: name '%.*s' is too long", (int)nlen, spec);
    char name[64];
    memcpy(name, spec, nlen);
    name[nlen] = '\0';
    const char *val = eq + 1;

    double v;
    char *end;
    errno = 0;
    v = strtod(val, &end);
    if (end == val || *end) {
        int known_param = 0, found = 0;
        for (size_t i = 0; i < N_PARAM_WORDS; i++) {
            if (strcmp(param_words[i].param, name) != 0) continue;
            known_param = 1;
            if (strcmp(param_words[i].word, val) == 0) {
                v = param_words[i].value;
                found = 1;
            }
        }
        if (!known_param)
            die(EXIT_USAGE, "--param %s: '%s' is not a number", name, val);
        if (!found) {
            char list[256] = "";
            for (size_t i = 0; i < N_PARAM_WORDS; i++)
                if (strcmp(param_words[i].param, name) == 0) {
                    if (*list) strncat(list, ", ", sizeof list - strlen(list) - 1);
                    strncat(list, param_words[i].word, sizeof list - strlen(list) - 1);
                }
            die(EXIT_USAGE, "--param %s: unknown value '%s' (want %s or a number)",
                name, val, list);
        }
    }
    if (!pl->p) {
        pl->p = own(mel_params_new(), free_params);
        if (!pl->p) die(EXIT_FAILED, "--param: out of memory");
    }
    mel_status s = mel_params_set(pl->p, name, v);
    if (s != MEL_OK)
        die(exit_of(s), "--param %s=%s: %s", name, val, mel_status_str(s));
    for (int i = 0; i < pl->n; i++)
        if (strcmp(pl->names[i], name) == 0) {
            pl->values[i] = v;
            return;
        }
    if (pl->n >= 64) die(EXIT_USAGE, "--param: more than 64 parameters");
    strcpy(pl->names[pl->n], name);
    pl->values[pl->n++] = v;
}

static int param_get(const param_list *pl, const char *name, double *v)
{
    for (int i = 0; i < pl->n; i++)
        if (strcmp(pl->names[i], name) == 0) {
            *v = pl->values[i];
            return 1;
        }
    return 0;
}

/* Option scanner.  Accepts "--name value" and "--name=value"; one
 * positional argument (the transform) where allowed. */
typedef struct optspec {
    const char *name;
    int has_value;
} optspec;

typedef struct optscan {
    int argc, i;
    char **argv;
    const char *cmd;
    const optspec *specs;
    char buf[128];
} optscan;

/* Next option: returns its name (without value) and sets *val; returns
 * NULL at the end.  A positional argument comes back as "" with *val. */
static const char *next_opt(optscan *o, const char **val)
{
    *val = NULL;
    if (o->i >= o->argc) return NULL;
    const char *a = o->argv[o->i++];
    if (strncmp(a, "--", 2) != 0 || !a[2]) {
        if (a[0] == '-' && a[1] && strcmp(a, "-h") != 0)
            die(EXIT_USAGE, "%s: unknown option '%s' (see mel %s --help)", o->cmd,
                a, o->cmd);
        if (strcmp(a, "-h") == 0) return "--help";
        *val = a;
        return "";
    }
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
    for (const optspec *s = o->specs; s->name; s++) {
        if (strlen(s->name) != nlen || strncmp(s->name, a, nlen) != 0) continue;
        if (s->has_value) {
            if (eq) *val = eq + 1;
            else if (o->i < o->argc) *val = o->argv[o->i++];
            else die(EXIT_USAGE, "%s: missing value", s->name);
        } else if (eq) {
            die(EXIT_USAGE, "%s: takes no value", s->name);
        }
        return s->name;
    }
    die(EXIT_USAGE, "%s: unknown option '%.*s' (see mel %s --help)", o->cmd,
        (int)nlen, a, o->cmd);
}

/* The built-in named `name`, or die listing the known ones. */
static void check_builtin_name(const char *cmd, const char *name)
{
    int n = mel_builtin_count();
    char list[512] = "";
    for (int i = 0; i < n; i++) {
        const char *b = mel_builtin_name(i);
        if (b && strcmp(b, name) == 0) return;
        if (b) {
            if (*list) strncat(list, ", ", sizeof list - strlen(list) - 1);
            strncat(list, b, sizeof list - strlen(list) - 1);
        }
    }
    die(EXIT_USAGE, "%s: unknown transform '%s' (known: %s)", cmd, name, list);
}

static mel_transform *build_transform(mel_ctx *ctx, const char *cmd,
                                      const char *name, const param_list *pl)
{
    check_builtin_name(cmd, name);
    mel_transform *t = NULL;
    mel_status s = mel_transform_builtin(ctx, name, pl->p, &t);
    if (s != MEL_OK) {
        const char *m = mel_last_error(ctx);
        if (!m || !*m) m = mel_status_str(s);
        /* The name is a known built-in, so an invalid argument here is a
         * parameter: name the flag. */
        if (s == MEL_ERR_INVALID_ARGUMENT && pl->n > 0)
            die(EXIT_USAGE, "--param: %s", m);
        die(exit_of(s), "%s %s: %s", cmd, name, m);
    }
    return own(t, free_transform);
}

/* The CUDA context when the tool runs on one (caller buffers are then
 * device memory), else NULL. */
static mel_ctx *g_dev_ctx;

static void free_dev(void *p) { mel_free(g_dev_ctx, p); }

/* The buffer the library should see for host data h of `bytes` bytes: h
 * itself on the CPU backend, else a device copy (mel_alloc + mel_to_device,
 * registered with own()).  NULL stays NULL. */
static void *to_dev(const void *h, size_t bytes, const char *what)
{
    if (!g_dev_ctx || !h) return (void *)h;
    void *d = NULL;
    check(g_dev_ctx, mel_alloc(g_dev_ctx, bytes, &d), what);
    own(d, free_dev);
    check(g_dev_ctx, mel_to_device(g_dev_ctx, d, h, bytes), what);
    return d;
}

/* Copy the library's buffer d (from to_dev) back into host buffer h. */
static void from_dev(void *h, const void *d, size_t bytes, const char *what)
{
    if (!g_dev_ctx || !h || h == d) return;
    check(g_dev_ctx, mel_to_host(g_dev_ctx, h, d, bytes), what);
}

static mel_ctx *make_ctx(const char *backend, int threads)
{
    mel_backend b;
    if (!backend || strcmp(backend, "cpu") == 0) b = MEL_BACKEND_CPU;
    else if (strcmp(backend, "cuda") == 0) b = MEL_BACKEND_CUDA;
    else die(EXIT_USAGE, "--backend: unknown backend '%s' (want cpu or cuda)", backend);
    mel_ctx *ctx = NULL;
    mel_status s = mel_ctx_create(b, &ctx);
    if (s != MEL_OK) {
        const char *m = mel_ctx_create_error();
        die(exit_of(s), "--backend %s: %s", backend ? backend : "cpu",
            m && *m ? m : mel_status_str(s));
    }
    own(ctx, free_ctx);
    /* a CUDA context takes device pointers: to_dev / from_dev stage the
     * tool's host buffers through mel_alloc and mel_to_device / mel_to_host */
    if (b == MEL_BACKEND_CUDA) g_dev_ctx = ctx;
    if (threads >= 0) check(ctx, mel_set_threads(ctx, threads), "--threads");
    return ctx;
}

/* ============================================================ dtypes */

static int parse_dtype(const char *flag, const char *s, mel_dtype *out)
{
    if (strcmp(s, "f64") == 0 || strcmp(s, "float64") == 0) *out = MEL_F64;
    else if (strcmp(s, "f32") == 0 || strcmp(s, "float32") == 0) *out = MEL_F32;
    else if (strcmp(s, "bf16") == 0 || strcmp(s, "bfloat16") == 0) *out = MEL_BF16;
    else if (strcmp(s, "f16") == 0 || strcmp(s, "float16") == 0) *out = MEL_F16;
    else die(EXIT_USAGE, "%s: unknown dtype '%s' (want f64, f32, bf16 or f16)", flag, s);
    return 0;
}

/* bf16 / f16 conversions: the library's own (lib/half.h), round to nearest even */
#define f32_to_bf16 mel_f32_to_bf16
#define bf16_to_f32 mel_bf16_to_f32
#define f32_to_f16 mel_f32_to_f16
#define f16_to_f32 mel_f16_to_f32

static double get_elem(const void *p, mel_dtype t, int64_t i)
{
    switch (t) {
    case MEL_F64: return ((const double *)p)[i];
    case MEL_F32: return ((const float *)p)[i];
    case MEL_I32: return ((const int32_t *)p)[i];
    case MEL_I64: return (double)((const int64_t *)p)[i];
    case MEL_BF16: return bf16_to_f32(((const uint16_t *)p)[i]);
    case MEL_F16: return f16_to_f32(((const uint16_t *)p)[i]);
    }
    return NAN;
}

static void set_elem(void *p, mel_dtype t, int64_t i, double v)
{
    switch (t) {
    case MEL_F64: ((double *)p)[i] = v; break;
    case MEL_F32: ((float *)p)[i] = (float)v; break;
    case MEL_BF16: ((uint16_t *)p)[i] = f32_to_bf16((float)v); break;
    case MEL_F16: ((uint16_t *)p)[i] = f32_to_f16((float)v); break;
    case MEL_I32: ((int32_t *)p)[i] = (int32_t)v; break;
    case MEL_I64: ((int64_t *)p)[i] = (int64_t)v; break;
    }
}

/* A new owned buffer: count elements of src (dtype from) in dtype to.
 * bf16/f16 are rounded from f32 (f64 -> f32 -> 16 bit). */
static void *convert(const void *src, mel_dtype from, int64_t count, mel_dtype to,
                     const char *what)
{
    void *dst = xcalloc(count, mel_dtype_size(to), what);
    if (from == to) {
        if (count) memcpy(dst, src, (size_t)count * mel_dtype_size(to));
        return dst;
    }
    for (int64_t i = 0; i < count; i++) set_elem(dst, to, i, get_elem(src, from, i));
    return dst;
}

static int is_float(mel_dtype t) { return t == MEL_F64 || t == MEL_F32; }

/* The NumPy name of a dtype a .npy file can hold. */
static const char *np_name(mel_dtype t)
{
    switch (t) {
    case MEL_F64: return "float64";
    case MEL_F32: return "float32";
    case MEL_I32: return "int32";
    case MEL_I64: return "int64";
    default: return mel_dtype_name(t);
    }
}

/* ============================================================ .npy inputs */

typedef struct input {
    const char *flag, *path; /* for messages */
    npy_array a;             /* a.data is owned */
} input;

static void shape_str(const npy_array *a, char *buf, size_t len)
{
    size_t n = (size_t)snprintf(buf, len, "(");
    for (int i = 0; i < a->ndim && n < len; i++)
        n += (size_t)snprintf(buf + n, len - n, "%s%" PRId64, i ? ", " : "",
                              a->shape[i]);
    if (n < len) snprintf(buf + n, len - n, a->ndim == 1 ? ",)" : ")");
}

static input load(const char *flag, const char *path)
{
    input in;
    char err[512];
    memset(&in, 0, sizeof in);
    in.flag = flag;
    in.path = path;
    if (npy_load(path, &in.a, err, sizeof err) < 0) die(EXIT_USAGE, "%s: %s", flag, err);
    own(in.a.data, free_any);
    return in;
}

static void want_float(const input *in)
{
    if (!is_float(in->a.dtype))
        die(EXIT_USAGE, "%s: %s: dtype %s is not supported (want float32 or float64)",
            in->flag, in->path, np_name(in->a.dtype));
}

/* Die unless `in` has ndim dimensions. */
static void want_ndim(const input *in, int ndim, const char *what)
{
    if (in->a.ndim != ndim) {
        char s[160];
        shape_str(&in->a, s, sizeof s);
        die(EXIT_USAGE, "%s: %s: shape %s is not %s", in->flag, in->path, s, what);
    }
}

/* Die unless 1-d of length n. */
static void want_vec(const input *in, int64_t n, const char *what)
{
    if (in->a.ndim != 1 || in->a.shape[0] != n) {
        char s[160];
        shape_str(&in->a, s, sizeof s);
        die(EXIT_USAGE, "%s: %s: shape %s, want (%" PRId64 ",) (%s)", in->flag,
            in->path, s, n, what);
    }
}

static void save(const char *flag, const char *path, mel_dtype t, void *data,
                 int ndim, const int64_t *shape)
{
    char err[512];
    npy_array a = npy_view(t, data, ndim, shape);
    if (npy_save(path, &a, err, sizeof err) < 0) die(EXIT_USAGE, "%s: %s", flag, err);
}

/* ============================================================ timing, stats */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Statistics summed over the calls of one mode (recompute = 2 calls). */
typedef struct callstats {
    int ncalls;
    const char *names[2];
    mel_stats s[2];
    mel_stats total; /* chunk_rows max, chunks sum, peak max, rest summed */
} callstats;

static void stats_add(callstats *cs, mel_ctx *ctx, const char *name)
{
    mel_stats s;
    mel_get_stats(ctx, &s);
    if (cs->ncalls < 2) {
        cs->names[cs->ncalls] = name;
        cs->s[cs->ncalls] = s;
    }
    cs->ncalls++;
    mel_stats *t = &cs->total;
    if (s.chunk_rows > t->chunk_rows) t->chunk_rows = s.chunk_rows;
    if (s.peak_workspace_bytes > t->peak_workspace_bytes)
        t->peak_workspace_bytes = s.peak_workspace_bytes;
    t->chunks += s.chunks;
    t->gemm_flops += s.gemm_flops;
    t->seconds += s.seconds;
    t->gemm_seconds += s.gemm_seconds;
}

static void json_stats(FILE *f, const mel_stats *s)
{
    fprintf(f,
            "\"chunk_rows\": %" PRId64 ", \"chunks\": %" PRId64
            ", \"peak_workspace_bytes\": %" PRId64 ", \"seconds\": %.9g"
            ", \"gemm_seconds\": %.9g, \"gemm_flops\": %" PRId64,
            s->chunk_rows, s->chunks, s->peak_workspace_bytes, s->seconds,
            s->gemm_seconds, s->gemm_flops);
}

/* ============================================================ random inputs */

typedef struct rng {
    uint64_t s;
} rng;

static uint64_t rng_next(rng *r)
{
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rng_unit(rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

static double rng_gauss(rng *r)
{
    double u1 = rng_unit(r), u2 = rng_unit(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* What a built-in needs besides head 0 (until the API can say). */
enum { NEED_LABELS = 1, NEED_TEACHER = 2, NEED_GRPO = 4, NEED_OLD = 8, NEED_REF = 16 };
static const struct {
    const char *name;
    unsigned needs;
} builtin_needs[] = {
    {"ce", NEED_LABELS},
    {"logprob", NEED_LABELS},
    {"entropy", 0},
    {"z_loss", 0},
    {"kl", NEED_LABELS | NEED_TEACHER},
    {"reverse_kl", NEED_LABELS | NEED_TEACHER},
    {"jsd", NEED_LABELS | NEED_TEACHER},
    {"grpo", NEED_LABELS | NEED_GRPO},
};

static unsigned needs_of(const char *name)
{
    for (size_t i = 0; i < sizeof builtin_needs / sizeof builtin_needs[0]; i++)
        if (strcmp(builtin_needs[i].name, name) == 0) return builtin_needs[i].needs;
    return NEED_LABELS;
}

/* Random problem in f64: X [N, D], W [V, D], bias [V] (optional), labels
 * [N] (about 1 in 5 = ignore_index, never all), teacher head, and the GRPO
 * per-row inputs. */
typedef struct problem {
    int64_t n, d, v;
    unsigned needs;
    double *x, *w, *bias; /* f64 */
    double *tx, *tw;      /* teacher head [N, D], [V, D] */
    int64_t *labels;
    double *mask, *adv, *old_logp, *ref_logp;
} problem;

/* log p(label) of row i under (x, w, bias), f64; O(V·D). */
static double row_logp(const problem *p, int64_t i, int64_t label)
{
    double m = -INFINITY, zl = 0, s = 0;
    double *z = xcalloc(p->v, sizeof(double), "logp");
    for (int64_t j = 0; j < p->v; j++) {
        double acc = p->bias ? p->bias[j] : 0;
        for (int64_t k = 0; k < p->d; k++) acc += p->x[i * p->d + k] * p->w[j * p->d + k];
        z[j] = acc;
        if (acc > m) m = acc;
    }
    for (int64_t j = 0; j < p->v; j++) s += exp(z[j] - m);
    zl = z[label];
    release(z);
    return zl - m - log(s);
}

static void make_problem(problem *p, int64_t n, int64_t d, int64_t v,
                         unsigned needs, int with_bias, int64_t ignore_index,
                         int exact_logp, uint64_t seed)
{
    rng r = {seed * 0x9E3779B97F4A7C15ull + 12345};
    memset(p, 0, sizeof *p);
    p->n = n;
    p->d = d;
    p->v = v;
    p->needs = needs;
    int64_t nd = mul64(n, d, "--rows x --dim"), vd = mul64(v, d, "--vocab x --dim");
    double ws = 1.0 / sqrt((double)(d > 0 ? d : 1));
    p->x = xcalloc(nd, sizeof(double), "X");
    p->w = xcalloc(vd, sizeof(double), "W");
    for (int64_t i = 0; i < nd; i++) p->x[i] = rng_gauss(&r);
    for (int64_t i = 0; i < vd; i++) p->w[i] = 2.0 * ws * rng_gauss(&r);
    if (with_bias) {
        p->bias = xcalloc(v, sizeof(double), "bias");
        for (int64_t i = 0; i < v; i++) p->bias[i] = 0.5 * rng_gauss(&r);
    }
    p->labels = xcalloc(n, sizeof(int64_t), "labels");
    int64_t valid = 0;
    for (int64_t i = 0; i < n; i++) {
        p->labels[i] = (int64_t)(rng_next(&r) % (uint64_t)(v > 0 ? v : 1));
        if (n > 1 && rng_unit(&r) < 0.2) p->labels[i] = ignore_index;
        else valid++;
    }
    if (n > 0 && valid == 0) p->labels[0] = 0;
    if (needs & NEED_TEACHER) {
        p->tx = xcalloc(nd, sizeof(double), "teacher X");
        p->tw = xcalloc(vd, sizeof(double), "teacher W");
        for (int64_t i = 0; i < nd; i++) p->tx[i] = rng_gauss(&r);
        for (int64_t i = 0; i < vd; i++) p->tw[i] = 2.0 * ws * rng_gauss(&r);
    }
    if (needs & NEED_GRPO) {
        p->mask = xcalloc(n, sizeof(double), "mask");
        p->adv = xcalloc(n, sizeof(double), "advantages");
        p->old_logp = xcalloc(n, sizeof(double), "old_logp");
        p->ref_logp = xcalloc(n, sizeof(double), "ref_logp");
        for (int64_t i = 0; i < n; i++) {
            int ignored = p->labels[i] == ignore_index;
            p->mask[i] = ignored ? 0.0 : (rng_unit(&r) < 0.9 ? 1.0 : 0.0);
            p->adv[i] = rng_gauss(&r);
            /* Near the current log-probability so that the importance
             * ratios straddle the clipping range. */
            double lp = ignored ? -log((double)(v > 0 ? v : 1))
                        : exact_logp ? row_logp(p, i, p->labels[i])
                                     : -log((double)v);
            p->old_logp[i] = lp + 0.15 * rng_gauss(&r);
            p->ref_logp[i] = lp + 0.15 * rng_gauss(&r);
        }
    }
}

/* Bind a problem to args, X/W/bias/teacher stored as dtype t (converted
 * copies are returned through *xs, *ws so gradients can be bound). */
static void bind_problem(mel_args *a, const problem *p, mel_dtype t, void **xs,
                         void **ws)
{
    int64_t nd = p->n * p->d, vd = p->v * p->d;
    size_t es = mel_dtype_size(t);
    *xs = to_dev(convert(p->x, MEL_F64, nd, t, "X"), (size_t)nd * es, "X");
    *ws = to_dev(convert(p->w, MEL_F64, vd, t, "W"), (size_t)vd * es, "W");
    void *b = p->bias ? to_dev(convert(p->bias, MEL_F64, p->v, t, "bias"), (size_t)p->v * es, "bias")
                      : NULL;
    mel_status s = mel_args_head(a, 0, mel_mat(*xs, t, p->n, p->d, 0),
                                 mel_mat(*ws, t, p->v, p->d, 0), b);
    if (s != MEL_OK) die(exit_of(s), "binding head 0: %s", mel_status_str(s));
    if (p->needs & NEED_LABELS) {
        s = mel_args_index(a, "labels", to_dev(p->labels, (size_t)p->n * 8, "labels"), MEL_I64,
                           p->n);
        if (s != MEL_OK) die(exit_of(s), "binding labels: %s", mel_status_str(s));
    }
    if (p->needs & NEED_TEACHER) {
        void *tx = to_dev(convert(p->tx, MEL_F64, nd, t, "teacher X"), (size_t)nd * es, "teacher X");
        void *tw = to_dev(convert(p->tw, MEL_F64, vd, t, "teacher W"), (size_t)vd * es, "teacher W");
        s = mel_args_head(a, 1, mel_mat(tx, t, p->n, p->d, 0),
                          mel_mat(tw, t, p->v, p->d, 0), NULL);
        if (s != MEL_OK) die(exit_of(s), "binding head 1: %s", mel_status_str(s));
    }
    if (p->needs & NEED_GRPO) {
        const char *names[4] = {"mask", "advantages", "old_logp", "ref_logp"};
        const double *vals[4] = {p->mask, p->adv, p->old_logp, p->ref_logp};
        for (int i = 0; i < 4; i++) {
            if (i == 2 && !(p->needs & NEED_OLD)) continue;
            if (i == 3 && !(p->needs & NEED_REF)) continue;
            s = mel_args_input(a, names[i], to_dev(vals[i], (size_t)p->n * 8, names[i]), MEL_F64,
                               p->n);
            if (s != MEL_OK)
                die(exit_of(s), "binding %s: %s", names[i], mel_status_str(s));
        }
    }
}

/* ============================================================ mel run */

static const optspec run_opts[] = {
    {"--hidden", 1}, {"--weight", 1}, {"--bias", 1}, {"--labels", 1},
    {"--input", 1}, {"--teacher-hidden", 1}, {"--teacher-weight", 1},
    {"--param", 1}, {"--reduction", 1}, {"--grad-output", 1}, {"--output", 1},
    {"--grad-hidden", 1}, {"--grad-weight", 1}, {"--grad-bias", 1},
    {"--chunk-rows", 1}, {"--workspace-bytes", 1}, {"--mode", 1},
    {"--dtype", 1}, {"--backend", 1}, {"--threads", 1}, {"--stats", 1},
    {"--help", 0}, {NULL, 0}};

static void usage_run(FILE *f)
{
    fprintf(f,
"usage: mel run TRANSFORM --hidden X.npy --weight W.npy [options]\n"
"  --hidden FILE            X [N, D], float32 or float64, C order\n"
"  --weight FILE            W [V, D]\n"
"  --bias FILE              bias [V]\n"
"  --labels FILE            labels [N], int32 or int64\n"
"  --input NAME=FILE        per-row input [N] (mask, advantages, old_logp, ref_logp, ...)\n"
"  --teacher-hidden FILE, --teacher-weight FILE   head 1 (teacher / reference), no gradient\n"
"  --param NAME=VALUE       transform parameter (repeatable); loss_type=grpo|bnpo|dr_grpo|dapo,\n"
"                           importance_sampling_level=token|sequence are mapped to 0,1,2,3 / 0,1\n"
"  --reduction none|sum|mean   default mean\n"
"  --grad-output FILE       dL/dy: 0-d or [1] when reduced, [N] for none (default 1)\n"
"  --output FILE            y: 0-d float64 when reduced, [N] float64 for none\n"
"                           (without --output, y is printed on stdout)\n"
"  --grad-hidden FILE, --grad-weight FILE, --grad-bias FILE   dX [N, D], dW [V, D], db [V];\n"
"                           float64 with --dtype f64, else float32\n"
"  --chunk-rows R | --workspace-bytes B   fixed rows per chunk / byte budget (e.g. 256M)\n"
"  --mode fused|recompute|naive   default fused when gradients are asked\n"
"  --dtype f64|f32|bf16|f16 storage precision of X, W (default: that of --hidden)\n"
"  --backend cpu|cuda       default cpu\n"
"  --threads K              CPU threads (0: default)\n"
"  --stats FILE             JSON statistics; for recompute the totals add both calls\n"
"                           (chunk_rows and peak_workspace_bytes are maxima) and\n"
"                           \"calls\" lists each one\n");
}

#define MAX_INPUTS 16

static int cmd_run(int argc, char **argv)
{
    const char *tname = NULL, *f_hidden = NULL, *f_weight = NULL, *f_bias = NULL,
               *f_labels = NULL, *f_thidden = NULL, *f_tweight = NULL,
               *f_gout = NULL, *f_out = NULL, *f_gx = NULL, *f_gw = NULL,
               *f_gb = NULL, *f_stats = NULL, *s_mode = NULL, *s_dtype = NULL,
               *s_backend = NULL;
    const char *in_names[MAX_INPUTS], *in_files[MAX_INPUTS];
    int n_in = 0, threads = -1;
    int64_t chunk_rows = -1, ws_bytes = -1;
    mel_reduction red = MEL_REDUCE_MEAN;
    int red_given = 0;
    param_list *pl = xcalloc(1, sizeof *pl, "params");

    optscan o = {argc, 0, argv, "run", run_opts, {0}};
    const char *name, *val;
    while ((name = next_opt(&o, &val))) {
        if (!*name) {
            if (tname) die(EXIT_USAGE, "run: unexpected argument '%s'", val);
            tname = val;
        } else if (!strcmp(name, "--help")) {
            usage_run(stdout);
            release_all();
            return 0;
        } else if (!strcmp(name, "--hidden")) f_hidden = val;
        else if (!strcmp(name, "--weight")) f_weight = val;
        else if (!strcmp(name, "--bias")) f_bias = val;
        else if (!strcmp(name, "--labels")) f_labels = val;
        else if (!strcmp(name, "--teacher-hidden")) f_thidden = val;
        else if (!strcmp(name, "--teacher-weight")) f_tweight = val;
        else if (!strcmp(name, "--grad-output")) f_gout = val;
        else if (!strcmp(name, "--output")) f_out = val;
        else if (!strcmp(name, "--grad-hidden")) f_gx = val;
        else if (!strcmp(name, "--grad-weight")) f_gw = val;
        else if (!strcmp(name, "--grad-bias")) f_gb = val;
        else if (!strcmp(name, "--stats")) f_stats = val;
        else if (!strcmp(name, "--mode")) s_mode = val;
        else if (!strcmp(name, "--dtype")) s_dtype = val;
        else if (!strcmp(name, "--backend")) s_backend = val;
        else if (!strcmp(name, "--param")) param_add(pl, val);
        else if (!strcmp(name, "--threads")) threads = (int)parse_i64(name, val, 0, 4096);
        else if (!strcmp(name, "--chunk-rows"))
            chunk_rows = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--workspace-bytes")) ws_bytes = parse_bytes(name, val);
        else if (!strcmp(name, "--reduction")) {
            red_given = 1;
            if (!strcmp(val, "none")) red = MEL_REDUCE_NONE;
            else if (!strcmp(val, "sum")) red = MEL_REDUCE_SUM;
            else if (!strcmp(val, "mean")) red = MEL_REDUCE_MEAN;
            else die(EXIT_USAGE, "--reduction: unknown reduction '%s' (want none, sum or mean)", val);
        } else if (!strcmp(name, "--input")) {
            const char *eq = strchr(val, '=');
            if (!eq || eq == val || !eq[1])
                die(EXIT_USAGE, "--input: '%s' is not NAME=FILE", val);
            if (n_in >= MAX_INPUTS) die(EXIT_USAGE, "--input: more than %d inputs", MAX_INPUTS);
            char *nm = xcalloc(eq - val + 1, 1, "--input");
            memcpy(nm, val, (size_t)(eq - val));
            for (int i = 0; i < n_in; i++)
                if (!strcmp(in_names[i], nm)) die(EXIT_USAGE, "--input: '%s' given twice", nm);
            in_names[n_in] = nm;
            in_files[n_in++] = eq + 1;
        }
    }
    if (!tname) die(EXIT_USAGE, "run: missing TRANSFORM (see mel list)");
    check_builtin_name("run", tname);
    if (!f_hidden) die(EXIT_USAGE, "run: --hidden is required");
    if (!f_weight) die(EXIT_USAGE, "run: --weight is required");
    if (!f_thidden != !f_tweight)
        die(EXIT_USAGE, "%s: needs %s too", f_thidden ? "--teacher-hidden" : "--teacher-weight",
            f_thidden ? "--teacher-weight" : "--teacher-hidden");
    if (f_gb && !f_bias) die(EXIT_USAGE, "--grad-bias: needs --bias");
    int want_grad = f_gx || f_gw || f_gb;
    enum { FUSED, RECOMPUTE, NAIVE } mode = FUSED;
    if (s_mode) {
        if (!strcmp(s_mode, "fused")) mode = FUSED;
        else if (!strcmp(s_mode, "recompute")) mode = RECOMPUTE;
        else if (!strcmp(s_mode, "naive")) mode = NAIVE;
        else die(EXIT_USAGE, "--mode: unknown mode '%s' (want fused, recompute or naive)", s_mode);
    }
    if (mode == NAIVE && chunk_rows > 0)
        die(EXIT_USAGE, "--chunk-rows: cannot be combined with --mode naive (one chunk of N rows)");
    if (f_gout && !want_grad)
        die(EXIT_USAGE, "--grad-output: no gradient was asked for (--grad-hidden, --grad-weight, --grad-bias)");

    /* ---- load and check shapes */
    input X = load("--hidden", f_hidden);
    want_float(&X);
    want_ndim(&X, 2, "2-d [N, D]");
    int64_t N = X.a.shape[0], D = X.a.shape[1];
    input W = load("--weight", f_weight);
    want_float(&W);
    want_ndim(&W, 2, "2-d [V, D]");
    int64_t V = W.a.shape[0];
    if (W.a.shape[1] != D)
        die(EXIT_USAGE, "--weight: %s: shape (%" PRId64 ", %" PRId64 ") does not match "
            "D = %" PRId64 " of --hidden %s", f_weight, V, W.a.shape[1], D, f_hidden);
    mel_dtype dt = X.a.dtype;
    if (s_dtype) parse_dtype("--dtype", s_dtype, &dt);
    mel_dtype gdt = dt == MEL_F64 ? MEL_F64 : MEL_F32; /* dW, db, saved dX */

    /* grpo: the inputs given choose the variant unless a --param says so */
    int is_grpo = !strcmp(tname, "grpo");
    double dummy;
    if (is_grpo) {
        for (int i = 0; i < n_in; i++)
            if (!strcmp(in_names[i], "old_logp") && !param_get(pl, "use_old_logp", &dummy))
                param_add(pl, "use_old_logp=1");
        if (f_thidden && !param_get(pl, "ref_source", &dummy)) param_add(pl, "ref_source=1");
    }
    mel_ctx *ctx = make_ctx(s_backend, threads);
    mel_transform *t = build_transform(ctx, "run", tname, pl);
    mel_args *a = own(mel_args_new(), free_args);
    if (!a) die(EXIT_FAILED, "out of memory");

    /* on --backend cuda every buffer the library sees is a device copy
     * (to_dev); outputs come back with from_dev */
    const size_t es = mel_dtype_size(dt), ges = mel_dtype_size(gdt);
    void *x = to_dev(convert(X.a.data, X.a.dtype, X.a.count, dt, "--hidden"),
                     (size_t)X.a.count * es, "--hidden");
    void *w = to_dev(convert(W.a.data, W.a.dtype, W.a.count, dt, "--weight"),
                     (size_t)W.a.count * es, "--weight");
    void *b = NULL;
    if (f_bias) {
        input B = load("--bias", f_bias);
        want_float(&B);
        want_vec(&B, V, "V rows of --weight");
        b = to_dev(convert(B.a.data, B.a.dtype, V, dt, "--bias"), (size_t)V * es, "--bias");
    }
    check(ctx, mel_args_head(a, 0, mel_mat(x, dt, N, D, 0), mel_mat(w, dt, V, D, 0), b),
          "--hidden/--weight");
    if (f_labels) {
        input L = load("--labels", f_labels);
        if (L.a.dtype != MEL_I32 && L.a.dtype != MEL_I64)
            die(EXIT_USAGE, "--labels: %s: dtype %s is not supported (want int32 or int64)",
                f_labels, np_name(L.a.dtype));
        want_vec(&L, N, "N rows of --hidden");
        check(ctx, mel_args_index(a, "labels",
                                  to_dev(L.a.data, (size_t)N * mel_dtype_size(L.a.dtype), "--labels"),
                                  L.a.dtype, N),
              "--labels");
    }
    const double *mask = NULL;
    for (int i = 0; i < n_in; i++) {
        char flag[96];
        snprintf(flag, sizeof flag, "--input %s", in_names[i]);
        input I = load("--input", in_files[i]);
        I.flag = flag;
        want_vec(&I, N, "N rows of --hidden");
        /* float or integer (a 0/1 mask) -> f64 */
        double *v = convert(I.a.data, I.a.dtype, N, MEL_F64, flag);
        check(ctx, mel_args_input(a, in_names[i], to_dev(v, (size_t)N * 8, flag), MEL_F64, N), flag);
        if (!strcmp(in_names[i], "mask")) mask = v;
    }
    /* grpo without --reduction: the loss type's global per-row weights */
    double *gw = NULL;
    if (is_grpo && !red_given) {
        double lt = 3, T = 0, maxlen = 512, items = 0;
        param_get(pl, "loss_type", &lt);
        param_get(pl, "max_completion_length", &maxlen);
        param_get(pl, "num_items_in_batch", &items);
        if (!param_get(pl, "seq_len", &T) || T < 1)
            die(EXIT_USAGE, "--param seq_len: grpo's loss_type reduction needs the completion length T "
                "(rows are B·T tokens), or pass --reduction none|sum|mean");
        if (!mask) die(EXIT_USAGE, "--input mask: grpo needs the completion mask");
        if (N % (int64_t)T)
            die(EXIT_USAGE, "--param seq_len=%g: N = %" PRId64 " rows is not a multiple of it", T, N);
        gw = xcalloc(N > 0 ? N : 1, sizeof(double), "weights");
        check(ctx, mel_grpo_weights(ctx, (mel_grpo_loss_type)lt, N / (int64_t)T, (int64_t)T, mask,
                                    (int64_t)maxlen, items, 1, gw), "--param loss_type");
        red = MEL_REDUCE_WEIGHTED;
    }
    if (f_thidden) {
        input TX = load("--teacher-hidden", f_thidden);
        want_float(&TX);
        want_ndim(&TX, 2, "2-d [N, D]");
        input TW = load("--teacher-weight", f_tweight);
        want_float(&TW);
        want_ndim(&TW, 2, "2-d [V, D]");
        int64_t TD = TX.a.shape[1];
        if (TX.a.shape[0] != N)
            die(EXIT_USAGE, "--teacher-hidden: %s: %" PRId64 " rows, --hidden has %" PRId64,
                f_thidden, TX.a.shape[0], N);
        if (TW.a.shape[0] != V || TW.a.shape[1] != TD)
            die(EXIT_USAGE, "--teacher-weight: %s: shape (%" PRId64 ", %" PRId64 "), want (%"
                PRId64 ", %" PRId64 ") (V of --weight, D of --teacher-hidden)",
                f_tweight, TW.a.shape[0], TW.a.shape[1], V, TD);
        void *tx = to_dev(convert(TX.a.data, TX.a.dtype, TX.a.count, dt, "--teacher-hidden"),
                          (size_t)TX.a.count * es, "--teacher-hidden");
        void *tw = to_dev(convert(TW.a.data, TW.a.dtype, TW.a.count, dt, "--teacher-weight"),
                          (size_t)TW.a.count * es, "--teacher-weight");
        check(ctx, mel_args_head(a, 1, mel_mat(tx, dt, N, TD, 0), mel_mat(tw, dt, V, TD, 0),
                                 NULL),
              "--teacher-hidden/--teacher-weight");
    }
    check(ctx, mel_args_reduction(a, red, to_dev(gw, (size_t)N * 8, "--param loss_type")),
          "--reduction");
    int64_t ny = red == MEL_REDUCE_NONE ? N : 1;
    double *y = xcalloc(ny, sizeof(double), "--output");
    void *y_d = to_dev(y, (size_t)ny * 8, "--output");
    check(ctx, mel_args_output(a, y_d, MEL_F64), "--output");
    if (f_gout) {
        input G = load("--grad-output", f_gout);
        want_float(&G);
        if (red == MEL_REDUCE_NONE) want_vec(&G, N, "--reduction none: one per row");
        else if (G.a.count != 1 || G.a.ndim > 1) {
            char s[160];
            shape_str(&G.a, s, sizeof s);
            die(EXIT_USAGE, "--grad-output: %s: shape %s, want () or (1,) for a reduced y",
                f_gout, s);
        }
        double *g = convert(G.a.data, G.a.dtype, ny, MEL_F64, "--grad-output");
        check(ctx, mel_args_grad_output(a, to_dev(g, (size_t)ny * 8, "--grad-output"), MEL_F64),
              "--grad-output");
    }
    void *dx = NULL, *dw = NULL, *db = NULL, *dx_d = NULL, *dw_d = NULL, *db_d = NULL;
    if (want_grad) {
        if (f_gx) dx = xcalloc(mul64(N, D, "--grad-hidden"), es, "--grad-hidden");
        if (f_gw) dw = xcalloc(mul64(V, D, "--grad-weight"), ges, "--grad-weight");
        if (f_gb) db = xcalloc(V, ges, "--grad-bias");
        dx_d = to_dev(dx, (size_t)(N * D) * es, "--grad-hidden");
        dw_d = to_dev(dw, (size_t)(V * D) * ges, "--grad-weight");
        db_d = to_dev(db, (size_t)V * ges, "--grad-bias");
        check(ctx, mel_args_grad_head(a, 0, mel_mat(dx_d, dt, N, D, 0), mel_mat(dw_d, gdt, V, D, 0),
                                      db_d, MEL_OVERWRITE_DW),
              "--grad-hidden/--grad-weight/--grad-bias");
    }

    /* ---- chunking */
    if (mode == NAIVE) {
        check(ctx, mel_set_chunk_rows(ctx, N > 0 ? N : 1), "--mode naive");
        /* one chunk of N rows needs O(N·V) bytes: lift the default budget */
        check(ctx, mel_set_workspace_limit(ctx, ws_bytes > 0 ? ws_bytes : (int64_t)1 << 46),
              "--mode naive");
    } else {
        if (chunk_rows > 0) check(ctx, mel_set_chunk_rows(ctx, chunk_rows), "--chunk-rows");
        if (ws_bytes >= 0) check(ctx, mel_set_workspace_limit(ctx, ws_bytes), "--workspace-bytes");
    }

    /* ---- compute */
    char what[64];
    snprintf(what, sizeof what, "run %s", tname);
    callstats cs;
    memset(&cs, 0, sizeof cs);
    double t0 = now_s();
    if (!want_grad) {
        check(ctx, mel_forward(ctx, t, a), what);
        stats_add(&cs, ctx, "forward");
    } else if (mode == RECOMPUTE) {
        check(ctx, mel_forward(ctx, t, a), what);
        stats_add(&cs, ctx, "forward");
        check(ctx, mel_backward(ctx, t, a), what);
        stats_add(&cs, ctx, "backward");
    } else {
        check(ctx, mel_forward_backward(ctx, t, a), what);
        stats_add(&cs, ctx, "forward_backward");
    }
    double wall = now_s() - t0;

    /* ---- outputs (back from the device on --backend cuda) */
    from_dev(y, y_d, (size_t)ny * 8, "--output");
    from_dev(dx, dx_d, (size_t)(N * D) * es, "--grad-hidden");
    from_dev(dw, dw_d, (size_t)(V * D) * ges, "--grad-weight");
    from_dev(db, db_d, (size_t)V * ges, "--grad-bias");
    if (f_out) {
        int64_t shp[1] = {N};
        save("--output", f_out, MEL_F64, y, red == MEL_REDUCE_NONE ? 1 : 0, shp);
    } else {
        for (int64_t i = 0; i < ny; i++) printf("%.17g\n", y[i]);
    }
    if (f_gx) {
        int64_t shp[2] = {N, D};
        void *sx = dt == gdt ? dx : convert(dx, dt, N * D, gdt, "--grad-hidden");
        save("--grad-hidden", f_gx, gdt, sx, 2, shp);
    }
    if (f_gw) {
        int64_t shp[2] = {V, D};
        save("--grad-weight", f_gw, gdt, dw, 2, shp);
    }
    if (f_gb) {
        int64_t shp[1] = {V};
        save("--grad-bias", f_gb, gdt, db, 1, shp);
    }
    if (f_stats) {
        FILE *f = fopen(f_stats, "w");
        if (!f) die(EXIT_USAGE, "--stats: %s: %s", f_stats, strerror(errno));
        fprintf(f, "{\"transform\": \"%s\", \"mode\": \"%s\", \"dtype\": \"%s\", "
                "\"rows\": %" PRId64 ", \"dim\": %" PRId64 ", \"vocab\": %" PRId64
                ", \"threads\": %d, \"wall_seconds\": %.9g,\n ",
                tname, !want_grad ? "forward" : mode == FUSED ? "fused"
                       : mode == RECOMPUTE ? "recompute" : "naive",
                mel_dtype_name(dt), N, D, V, mel_get_threads(ctx), wall);
        json_stats(f, &cs.total);
        fprintf(f, ",\n \"calls\": [");
        for (int i = 0; i < cs.ncalls && i < 2; i++) {
            fprintf(f, "%s{\"call\": \"%s\", ", i ? ", " : "", cs.names[i]);
            json_stats(f, &cs.s[i]);
            fprintf(f, "}");
        }
        fprintf(f, "]}\n");
        if (ferror(f) | (fclose(f) != 0))
            die(EXIT_USAGE, "--stats: %s: write failed", f_stats);
    }
    release_all();
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "mel: stdout: write failed\n");
        return EXIT_FAILED;
    }
    return 0;
}

/* ============================================================ mel gradcheck */

static const optspec gc_opts[] = {
    {"--rows", 1}, {"--dim", 1}, {"--vocab", 1}, {"--seed", 1}, {"--param", 1},
    {"--samples", 1}, {"--reduction", 1}, {"--chunk-rows", 1}, {"--step", 1},
    {"--atol", 1}, {"--rtol", 1}, {"--threads", 1}, {"--no-bias", 0},
    {"--help", 0}, {NULL, 0}};

static void usage_gradcheck(FILE *f)
{
    fprintf(f,
"usage: mel gradcheck TRANSFORM [options]\n"
"  Draws random f64 inputs (X, W, bias, labels with about 1 in 5 = ignore_index,\n"
"  a teacher head or the GRPO per-row inputs where the transform needs them) and\n"
"  compares the gradients with central finite differences (mel_gradcheck).\n"
"  Exit 0 on pass, 1 when an entry fails, 2 on bad usage.\n"
"  --rows N (8)  --dim D (6)  --vocab V (11)  --seed S (1)  --samples K (library default)\n"
"  --param NAME=VALUE  --reduction none|sum|mean (mean)  --chunk-rows R (3)\n"
"  --step H  --atol A  --rtol R (library defaults)  --threads K  --no-bias\n");
}

static int cmd_gradcheck(int argc, char **argv)
{
    const char *tname = NULL;
    int64_t n = 8, d = 6, v = 11, chunk = 3;
    uint64_t seed = 1;
    int threads = -1, with_bias = 1;
    mel_reduction red = MEL_REDUCE_MEAN;
    mel_gradcheck_opts go;
    memset(&go, 0, sizeof go);
    param_list *pl = xcalloc(1, sizeof *pl, "params");

    optscan o = {argc, 0, argv, "gradcheck", gc_opts, {0}};
    const char *name, *val;
    while ((name = next_opt(&o, &val))) {
        if (!*name) {
            if (tname) die(EXIT_USAGE, "gradcheck: unexpected argument '%s'", val);
            tname = val;
        } else if (!strcmp(name, "--help")) {
            usage_gradcheck(stdout);
            release_all();
            return 0;
        } else if (!strcmp(name, "--rows")) n = parse_i64(name, val, 1, 1 << 20);
        else if (!strcmp(name, "--dim")) d = parse_i64(name, val, 1, 1 << 16);
        else if (!strcmp(name, "--vocab")) v = parse_i64(name, val, 1, 1 << 20);
        else if (!strcmp(name, "--seed")) seed = (uint64_t)parse_i64(name, val, 0, INT64_MAX);
        else if (!strcmp(name, "--samples")) go.samples = (int)parse_i64(name, val, 1, 1 << 20);
        else if (!strcmp(name, "--chunk-rows")) chunk = parse_i64(name, val, 0, INT64_MAX);
        else if (!strcmp(name, "--threads")) threads = (int)parse_i64(name, val, 0, 4096);
        else if (!strcmp(name, "--step")) go.step = parse_f64(name, val);
        else if (!strcmp(name, "--atol")) go.atol = parse_f64(name, val);
        else if (!strcmp(name, "--rtol")) go.rtol = parse_f64(name, val);
        else if (!strcmp(name, "--no-bias")) with_bias = 0;
        else if (!strcmp(name, "--param")) param_add(pl, val);
        else if (!strcmp(name, "--reduction")) {
            if (!strcmp(val, "none")) red = MEL_REDUCE_NONE;
            else if (!strcmp(val, "sum")) red = MEL_REDUCE_SUM;
            else if (!strcmp(val, "mean")) red = MEL_REDUCE_MEAN;
            else die(EXIT_USAGE, "--reduction: unknown reduction '%s' (want none, sum or mean)", val);
        }
    }
    if (!tname) die(EXIT_USAGE, "gradcheck: missing TRANSFORM (see mel list)");
    if (mul64(n, v, "--rows x --vocab") > (int64_t)1 << 28 ||
        mul64(v, d, "--vocab x --dim") > (int64_t)1 << 28)
        die(EXIT_USAGE, "gradcheck: --rows/--dim/--vocab too large for a finite-difference check");
    go.seed = seed;

    unsigned needs = needs_of(tname);
    double beta = 0, ref_source = 0, use_old = 0;
    if (needs & NEED_GRPO) {
        /* with the stop-gradient default the ratio is 1 for every
         * perturbation, so finite differences need old_logp as data */
        if (!param_get(pl, "use_old_logp", &use_old)) {
            param_add(pl, "use_old_logp=1");
            printf("# grpo: checking with use_old_logp=1 (with old_logp absent, the stop-gradient makes "
                   "the ratio constant under finite differences)\n");
        }
        param_get(pl, "beta", &beta);
        param_get(pl, "ref_source", &ref_source);
        if (beta != 0 && ref_source == 1) needs |= NEED_TEACHER;
        if (beta != 0 && ref_source == 0) needs |= NEED_REF;
        param_get(pl, "use_old_logp", &use_old);
        if (use_old != 0) needs |= NEED_OLD;
    }
    mel_ctx *ctx = make_ctx("cpu", threads);
    mel_transform *t = build_transform(ctx, "gradcheck", tname, pl);
    double ii = -100;
    param_get(pl, "ignore_index", &ii);
    problem p;
    make_problem(&p, n, d, v, needs, with_bias, (int64_t)ii, 1, seed);

    mel_args *a = own(mel_args_new(), free_args);
    if (!a) die(EXIT_FAILED, "out of memory");
    void *xs, *ws;
    bind_problem(a, &p, MEL_F64, &xs, &ws);
    check(ctx, mel_args_reduction(a, red, NULL), "--reduction");
    if (chunk > 0) check(ctx, mel_set_chunk_rows(ctx, chunk), "--chunk-rows");

    mel_gradcheck_report rep;
    memset(&rep, 0, sizeof rep);
    check(ctx, mel_gradcheck(ctx, t, a, &go, &rep), "gradcheck");
    static const char *rn[] = {"none", "sum", "mean", "weighted"};
    printf("gradcheck %s: rows %" PRId64 ", dim %" PRId64 ", vocab %" PRId64
           ", seed %" PRIu64 ", reduction %s, chunk_rows %" PRId64 "%s%s%s\n",
           tname, n, d, v, seed, rn[red], chunk, with_bias ? ", bias" : "",
           needs & NEED_TEACHER ? ", teacher head" : "",
           needs & NEED_GRPO ? ", mask/advantages/old_logp/ref_logp" : "");
    printf("checked %d, failed %d, max_abs_err %.3g, max_rel_err %.3g\n", rep.checked,
           rep.failed, rep.max_abs_err, rep.max_rel_err);
    if (rep.worst[0]) printf("worst: %.*s\n", (int)sizeof rep.worst, rep.worst);
    int pass = rep.failed == 0 && rep.checked > 0;
    if (rep.checked == 0) printf("nothing was checked\n");
    printf("%s\n", pass ? "PASS" : "FAIL");
    release_all();
    fflush(stdout);
    return pass ? 0 : EXIT_FAILED;
}

/* ============================================================ mel bench */

static const optspec bench_opts[] = {
    {"--rows", 1}, {"--dim", 1}, {"--vocab", 1}, {"--transform", 1},
    {"--dtype", 1}, {"--modes", 1}, {"--repeat", 1}, {"--warmup", 1},
    {"--threads", 1}, {"--csv", 1}, {"--seed", 1}, {"--param", 1},
    {"--chunk-rows", 1}, {"--workspace-bytes", 1}, {"--backend", 1}, {"--help", 0},
    {NULL, 0}};

static void usage_bench(FILE *f)
{
    fprintf(f,
"usage: mel bench [options]\n"
"  Times a training-style call (y = mean loss, dX, dW) per rows setting and mode.\n"
"  --rows N[,N...] (4096)  --dim D (1024)  --vocab V (32768)  --transform T (ce)\n"
"  --dtype f32|f64|bf16|f16 (f32)  --modes naive,recompute,fused (all three)\n"
"  --repeat K (3)  --warmup K (1)  --threads K (default)  --seed S (1)\n"
"  --chunk-rows R / --workspace-bytes B (recompute, fused; default automatic)\n"
"  --param NAME=VALUE  --csv FILE (units in the column names)\n"
"  --backend cpu|cuda (cpu): cuda runs on device buffers (times include the\n"
"  end-of-call synchronisation; threads = rows run at once)\n"
"  naive = one chunk of N rows (the full logits); recompute = forward then\n"
"  backward; fused = forward_backward.  max_rss is the process-wide maximum so far.\n");
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_dbl);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Peak resident memory: VmHWM from /proc/self/status (which
 * reset_peak_rss() can reset), else getrusage's lifetime maximum. */
static int64_t max_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        long long kb = -1;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
        fclose(f);
        if (kb >= 0) return (int64_t)kb * 1024;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return -1;
    return (int64_t)ru.ru_maxrss * 1024; /* KiB on Linux */
}

/* Start a new peak-RSS measurement at the current RSS (Linux: writing 5 to
 * /proc/self/clear_refs resets VmHWM), so that the bench's own set-up (the
 * f64 inputs it generates, then converts) is not counted.  Returns 0 when
 * the reset worked. */
static int reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f) return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void git_commit(char *buf, size_t len)
{
    snprintf(buf, len, "unknown");
    FILE *p = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (!p) return;
    char line[64];
    if (fgets(line, sizeof line, p)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (*line) snprintf(buf, len, "%s", line);
    }
    pclose(p);
}

static int cmd_bench(int argc, char **argv)
{
    const char *rows_s = "4096", *modes_s = "naive,recompute,fused", *tname = "ce",
               *csv = NULL, *backend = "cpu";
    int64_t d = 1024, v = 32768, chunk = 0, ws_bytes = -1;
    int repeat = 3, warmup = 1, threads = -1, rss_reset_ok = 0;
    uint64_t seed = 1;
    mel_dtype dt = MEL_F32;
    param_list *pl = xcalloc(1, sizeof *pl, "params");

    optscan o = {argc, 0, argv, "bench", bench_opts, {0}};
    const char *name, *val;
    while ((name = next_opt(&o, &val))) {
        if (!*name) die(EXIT_USAGE, "bench: unexpected argument '%s'", val);
        else if (!strcmp(name, "--help")) {
            usage_bench(stdout);
            release_all();
            return 0;
        } else if (!strcmp(name, "--rows")) rows_s = val;
        else if (!strcmp(name, "--dim")) d = parse_i64(name, val, 1, INT32_MAX);
        else if (!strcmp(name, "--vocab")) v = parse_i64(name, val, 1, INT32_MAX);
        else if (!strcmp(name, "--transform")) tname = val;
        else if (!strcmp(name, "--dtype")) parse_dtype(name, val, &dt);
        else if (!strcmp(name, "--modes")) modes_s = val;
        else if (!strcmp(name, "--repeat")) repeat = (int)parse_i64(name, val, 1, 10000);
        else if (!strcmp(name, "--warmup")) warmup = (int)parse_i64(name, val, 0, 10000);
        else if (!strcmp(name, "--threads")) threads = (int)parse_i64(name, val, 0, 4096);
        else if (!strcmp(name, "--csv")) csv = val;
        else if (!strcmp(name, "--seed")) seed = (uint64_t)parse_i64(name, val, 0, INT64_MAX);
        else if (!strcmp(name, "--param")) param_add(pl, val);
        else if (!strcmp(name, "--chunk-rows")) chunk = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--workspace-bytes")) ws_bytes = parse_bytes(name, val);
        else if (!strcmp(name, "--backend")) backend = val;
    }

    /* --rows list */
    int64_t rows[32];
    int nrows = 0;
    {
        char *copy = xcalloc((int64_t)strlen(rows_s) + 1, 1, "--rows");
        strcpy(copy, rows_s);
        for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
            if (nrows >= 32) die(EXIT_USAGE, "--rows: more than 32 values");
            rows[nrows++] = parse_i64("--rows", tok, 1, INT32_MAX);
        }
        if (!nrows) die(EXIT_USAGE, "--rows: no value in '%s'", rows_s);
    }
    /* --modes list: 0 naive, 1 recompute, 2 fused */
    static const char *mode_names[3] = {"naive", "recompute", "fused"};
    int modes[8], nmodes = 0;
    {
        char *copy = xcalloc((int64_t)strlen(modes_s) + 1, 1, "--modes");
        strcpy(copy, modes_s);
        for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
            int m = -1;
            for (int i = 0; i < 3; i++)
                if (!strcmp(tok, mode_names[i])) m = i;
            if (m < 0)
                die(EXIT_USAGE, "--modes: unknown mode '%s' (want naive, recompute, fused)", tok);
            if (nmodes >= 8) die(EXIT_USAGE, "--modes: more than 8 values");
            modes[nmodes++] = m;
        }
        if (!nmodes) die(EXIT_USAGE, "--modes: no value in '%s'", modes_s);
    }

    mel_ctx *ctx = make_ctx(backend, threads);
    mel_transform *t = build_transform(ctx, "bench", tname, pl);
    double ii = -100;
    param_get(pl, "ignore_index", &ii);
    unsigned needs = needs_of(tname);
    size_t lsz = dt == MEL_F64 ? 8 : 4; /* logits element size */

    /* machine line */
    struct utsname un;
    char machine[300] = "unknown", commit[64];
    if (uname(&un) == 0)
        snprintf(machine, sizeof machine, "%s %s %s %s", un.sysname, un.nodename,
                 un.release, un.machine);
    long nproc = sysconf(_SC_NPROCESSORS_ONLN);
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    git_commit(commit, sizeof commit);
    char header[800];
    snprintf(header, sizeof header,
             "# machine: %s; nproc %ld; backend %s; threads %d; OPENBLAS_CORETYPE=%s; commit %s; "
             "libmel %s; transform %s; dtype %s; dim %" PRId64 "; vocab %" PRId64
             "; repeat %d; warmup %d",
             machine, nproc, backend, mel_get_threads(ctx), coretype && *coretype ? coretype : "unset",
             commit, mel_version_string(), tname, mel_dtype_name(dt), d, v, repeat, warmup);

    FILE *cf = NULL;
    if (csv) {
        cf = fopen(csv, "w");
        if (!cf) die(EXIT_USAGE, "--csv: %s: %s", csv, strerror(errno));
        own(cf, close_file);
        fprintf(cf, "%s\n", header);
        fprintf(cf, "rows,dim,vocab,transform,dtype,mode,threads,chunk_rows,chunks,"
                    "time_median_s,time_min_s,time_max_s,gemm_time_median_s,gemm_flops,"
                    "gemm_gflop_per_s,peak_workspace_bytes,naive_logits_bytes,"
                    "max_rss_bytes,loss\n");
    }
    printf("%s\n", header);
    printf("%8s %-9s %9s %9s %9s %10s %10s %7s %14s %14s %12s %12s\n", "rows", "mode",
           "median_s", "min_s", "max_s", "gemm_GF/s", "chunk_rows", "chunks",
           "peak_ws_MiB", "naive_lgt_MiB", "max_rss_MiB", "loss");
    fflush(stdout);

    double *times = xcalloc(repeat, sizeof(double), "--repeat");
    double *gtimes = xcalloc(repeat, sizeof(double), "--repeat");
    for (int ri = 0; ri < nrows; ri++) {
        int64_t n = rows[ri];
        mul64(n, v, "--rows x --vocab");
        const size_t mark = g_nowned; /* this rows setting's buffers */
        problem p;
        make_problem(&p, n, d, v, needs, 0, (int64_t)ii, 0, seed + (uint64_t)ri);
        mel_args *a = own(mel_args_new(), free_args);
        if (!a) die(EXIT_FAILED, "out of memory");
        void *xs, *ws;
        bind_problem(a, &p, dt, &xs, &ws);
        /* f64 copies no longer needed */
        release(p.x);
        release(p.w);
        release(p.tx);
        release(p.tw);
        mel_dtype gdt = dt == MEL_F64 ? MEL_F64 : MEL_F32;
        const size_t dxb = (size_t)(n * d) * mel_dtype_size(dt), dwb = (size_t)(v * d) * mel_dtype_size(gdt);
        void *dx = to_dev(xcalloc(n * d, mel_dtype_size(dt), "dX"), dxb, "dX");
        void *dw = to_dev(xcalloc(v * d, mel_dtype_size(gdt), "dW"), dwb, "dW");
        /* peak RSS from here: inputs, outputs, workspace and the process */
        rss_reset_ok = reset_peak_rss() == 0;
        double y = 0;
        void *y_d = to_dev(&y, sizeof y, "y");
        check(ctx, mel_args_reduction(a, MEL_REDUCE_MEAN, NULL), "bench");
        check(ctx, mel_args_output(a, y_d, MEL_F64), "bench");
        check(ctx, mel_args_grad_head(a, 0, mel_mat(dx, dt, n, d, 0), mel_mat(dw, gdt, v, d, 0),
                                      NULL, MEL_OVERWRITE_DW),
              "bench");
        for (int mi = 0; mi < nmodes; mi++) {
            int m = modes[mi];
            if (m == 0) {
                check(ctx, mel_set_chunk_rows(ctx, n), "bench naive");
                check(ctx, mel_set_workspace_limit(ctx, ws_bytes > 0 ? ws_bytes : (int64_t)1 << 46),
                      "bench naive");
            } else {
                check(ctx, mel_set_chunk_rows(ctx, chunk), "--chunk-rows");
                check(ctx, mel_set_workspace_limit(ctx, ws_bytes > 0 ? ws_bytes : 0),
                      "--workspace-bytes");
            }
            char what[96];
            snprintf(what, sizeof what, "bench %s rows %" PRId64 " %s", tname, n, mode_names[m]);
            callstats cs;
            for (int it = -warmup; it < repeat; it++) {
                memset(&cs, 0, sizeof cs);
                double t0 = now_s();
                if (m == 1) {
                    check(ctx, mel_forward(ctx, t, a), what);
                    stats_add(&cs, ctx, "forward");
                    check(ctx, mel_backward(ctx, t, a), what);
                    stats_add(&cs, ctx, "backward");
                } else {
                    check(ctx, mel_forward_backward(ctx, t, a), what);
                    stats_add(&cs, ctx, "forward_backward");
                }
                double el = now_s() - t0;
                if (it >= 0) {
                    times[it] = el;
                    gtimes[it] = cs.total.gemm_seconds;
                }
            }
            double mn = times[0], mx = times[0];
            for (int i = 1; i < repeat; i++) {
                if (times[i] < mn) mn = times[i];
                if (times[i] > mx) mx = times[i];
            }
            from_dev(&y, y_d, sizeof y, "y");
            double med = median(times, repeat), gmed = median(gtimes, repeat);
            double gfs = gmed > 0 ? (double)cs.total.gemm_flops / gmed * 1e-9 : 0;
            int64_t naive_bytes = n * v * (int64_t)lsz;
            int64_t rss = max_rss_bytes();
            printf("%8" PRId64 " %-9s %9.4f %9.4f %9.4f %10.1f %10" PRId64 " %7" PRId64
                   " %14.1f %14.1f %12.1f %12.6g\n",
                   n, mode_names[m], med, mn, mx, gfs, cs.total.chunk_rows, cs.total.chunks,
                   (double)cs.total.peak_workspace_bytes / 1048576.0,
                   (double)naive_bytes / 1048576.0, (double)rss / 1048576.0, y);
            fflush(stdout);
            if (cf)
                fprintf(cf, "%" PRId64 ",%" PRId64 ",%" PRId64 ",%s,%s,%s,%d,%" PRId64 ",%" PRId64
                        ",%.6g,%.6g,%.6g,%.6g,%" PRId64 ",%.6g,%" PRId64 ",%" PRId64 ",%" PRId64
                        ",%.17g\n",
                        n, d, v, tname, mel_dtype_name(dt), mode_names[m], mel_get_threads(ctx),
                        cs.total.chunk_rows, cs.total.chunks, med, mn, mx, gmed,
                        cs.total.gemm_flops, gfs, cs.total.peak_workspace_bytes, naive_bytes,
                        rss, y);
        }
        release_to(mark); /* args, inputs, gradients (host and device) */
    }
    if (rss_reset_ok)
        printf("# max_rss is the peak RSS (VmHWM) since the inputs were ready: inputs, outputs, "
               "workspace and the process itself, not the bench's f64 set-up; run one mode per "
               "process for a clean figure (examples/bench/run.sh); peak_ws is libmel's own count\n");
    else
        printf("# max_rss is getrusage(RUSAGE_SELF).ru_maxrss: a process-wide maximum that "
               "includes the bench's set-up and never goes down; peak_ws is libmel's own count\n");
    int bad = 0;
    if (cf) {
        bad = ferror(cf) != 0;
        release(cf); /* fclose */
        if (bad) die(EXIT_USAGE, "--csv: %s: write failed", csv);
    }
    release_all();
    fflush(stdout);
    return 0;
}

/* ============================================================ list, main */

static int cmd_list(void)
{
    int n = mel_builtin_count();
    for (int i = 0; i < n; i++) {
        const char *nm = mel_builtin_name(i), *h = mel_builtin_help(i);
        printf("%-12s %s\n", nm ? nm : "?", h ? h : "");
    }
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f,
"usage: mel run TRANSFORM [options]        compute a transform and, on request, its gradients\n"
"       mel gradcheck TRANSFORM [options]  finite differences on random inputs\n"
"       mel bench [options]                time and memory of naive vs recompute vs fused\n"
"       mel list                           built-in transforms\n"
"       mel --version\n"
"'mel COMMAND --help' describes each command's options.\n");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "gradcheck")) return cmd_gradcheck(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench")) return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "list")) {
        if (argc > 2) die(EXIT_USAGE, "list: unexpected argument '%s'", argv[2]);
        return cmd_list();
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
#ifdef PACKAGE_VERSION
        printf("mel %s (libmel %s)\n", PACKAGE_VERSION, mel_version_string());
#else
        printf("mel %d.%d.%d (libmel %s)\n", MEL_VERSION_MAJOR, MEL_VERSION_MINOR,
               MEL_VERSION_PATCH, mel_version_string());
#endif
        if (mel_version() != MEL_VERSION_NUMBER)
            printf("warning: built with mel.h %d.%d.%d but running libmel %s\n",
                   MEL_VERSION_MAJOR, MEL_VERSION_MINOR, MEL_VERSION_PATCH,
                   mel_version_string());
        return 0;
    }
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    die(EXIT_USAGE, "unknown command '%s' (want run, gradcheck, bench, list or --version)", cmd);
}
