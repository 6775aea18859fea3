/* common.c -- resources, library errors, the context, device staging,
 * timing and statistics shared by the mel commands (mel_tool.h). */
#include "mel_tool.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ============================================================ resources */

typedef struct owned {
    void *p;
    void (*fn)(void *);
} owned;
static owned *g_owned;
static size_t g_nowned, g_capowned;

void release_all(void)
{
    while (g_nowned > 0) {
        owned o = g_owned[--g_nowned];
        o.fn(o.p);
    }
    free(g_owned);
    g_owned = NULL;
    g_capowned = 0;
}

_Noreturn void die(int status, const char *fmt, ...)
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

void *own(void *p, void (*fn)(void *))
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

size_t own_mark(void) { return g_nowned; }

void release_to(size_t mark)
{
    while (g_nowned > mark) {
        owned o = g_owned[--g_nowned];
        o.fn(o.p);
    }
}

void release(void *p)
{
    if (!p) return;
    for (size_t i = g_nowned; i-- > 0;)
        if (g_owned[i].p == p) {
            owned o = g_owned[i];
            memmove(g_owned + i, g_owned + i + 1, (g_nowned - i - 1) * sizeof *g_owned);
            g_nowned--;
            o.fn(o.p);
            return;
        }
}

void free_any(void *p) { free(p); }
void free_ctx(void *p) { mel_ctx_destroy(p); }
void free_transform(void *p) { mel_transform_free(p); }
void free_args(void *p) { mel_args_free(p); }
void free_params(void *p) { mel_params_free(p); }
void close_file(void *p) { fclose(p); }

void *xcalloc(int64_t count, size_t size, const char *what)
{
    if (count < 0 || (size && (uint64_t)count > SIZE_MAX / size))
        die(EXIT_USAGE, "%s: size %" PRId64 " x %zu bytes overflows", what, count, size);
    size_t n = (size_t)count * size;
    void *p = calloc(n ? n : 1, 1);
    if (!p) die(EXIT_FAILED, "%s: out of memory (%zu bytes)", what, n);
    return own(p, free_any);
}

int64_t mul64(int64_t a, int64_t b, const char *what)
{
    if (a < 0 || b < 0 || (a > 0 && b > INT64_MAX / a))
        die(EXIT_USAGE, "%s: size %" PRId64 " x %" PRId64 " overflows", what, a, b);
    return a * b;
}

/* ============================================================ library errors */

int exit_of(mel_status s)
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

void check(mel_ctx *ctx, mel_status s, const char *what)
{
    if (s == MEL_OK) return;
    const char *m = ctx ? mel_last_error(ctx) : "";
    if (!m || !*m) m = mel_status_str(s);
    die(exit_of(s), "%s: %s", what, m);
}

/* ============================================================ context, device */

mel_ctx *g_dev_ctx;

static void free_dev(void *p) { mel_free(g_dev_ctx, p); }

void *to_dev(const void *h, size_t bytes, const char *what)
{
    if (!g_dev_ctx || !h) return (void *)h;
    void *d = NULL;
    check(g_dev_ctx, mel_alloc(g_dev_ctx, bytes, &d), what);
    own(d, free_dev);
    check(g_dev_ctx, mel_to_device(g_dev_ctx, d, h, bytes), what);
    return d;
}

void from_dev(void *h, const void *d, size_t bytes, const char *what)
{
    if (!g_dev_ctx || !h || h == d) return;
    check(g_dev_ctx, mel_to_host(g_dev_ctx, h, d, bytes), what);
}

mel_ctx *make_ctx(const char *backend, int threads)
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

/* ============================================================ timing, stats */

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void stats_add(callstats *cs, mel_ctx *ctx, const char *name)
{
    mel_stats s;
    mel_get_stats(ctx, &s);
    const int64_t act = mel_get_active_rows(ctx), tiles = mel_get_tile_cols(ctx);
    if (cs->ncalls < 2) {
        cs->names[cs->ncalls] = name;
        cs->s[cs->ncalls] = s;
        cs->active[cs->ncalls] = act;
        cs->tiles[cs->ncalls] = tiles;
        mel_get_comm_stats(ctx, &cs->comm_bytes[cs->ncalls], &cs->comm_seconds[cs->ncalls]);
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
    if (act > cs->total_active) cs->total_active = act;
    if (tiles > cs->total_tiles) cs->total_tiles = tiles;
}

void json_stats(FILE *f, const mel_stats *s, int64_t active_rows, int64_t tile_cols)
{
    fprintf(f,
            "\"chunk_rows\": %" PRId64 ", \"chunks\": %" PRId64
            ", \"peak_workspace_bytes\": %" PRId64 ", \"seconds\": %.9g"
            ", \"gemm_seconds\": %.9g, \"gemm_flops\": %" PRId64 ", \"active_rows\": %" PRId64
            ", \"tile_cols\": %" PRId64,
            s->chunk_rows, s->chunks, s->peak_workspace_bytes, s->seconds, s->gemm_seconds,
            s->gemm_flops, active_rows, tile_cols);
}
