/* bench.c -- `mel bench`: time and memory of naive vs recompute vs fused
 * on a training-style call. */
#include "mel_tool.h"

#include <errno.h>
#include <math.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

static const optspec bench_opts[] = {
    {"--rows", 1}, {"--dim", 1}, {"--vocab", 1}, {"--transform", 1},
    {"--dtype", 1}, {"--modes", 1}, {"--repeat", 1}, {"--warmup", 1},
    {"--threads", 1}, {"--csv", 1}, {"--seed", 1}, {"--param", OPT_REPEAT},
    {"--chunk-rows", 1}, {"--workspace-bytes", 1}, {"--tile-cols", 1}, {"--backend", 1}, {"--help", 0},
    {"--no-skip", 0}, {"--ignore", 1}, {"--ignore-pattern", 1}, {"--seq-len", 1},
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
"  --tile-cols C: vocabulary tiles of C columns (recompute, fused; default automatic)\n"
"  --param NAME=VALUE  --csv FILE (units in the column names)\n"
"  --backend cpu|cuda (cpu): cuda runs on device buffers (times include the\n"
"  end-of-call synchronisation; threads = rows run at once)\n"
"  --ignore F (0 <= F <= 1): that fraction of the labels set to ignore_index (default:\n"
"  about 1 in 5 at random); --ignore-pattern random|prefix (random): prefix ignores the\n"
"  first F of each sequence of --seq-len T rows (default 512), like a prompt\n"
"  --no-skip: run the GEMMs on every row (row skipping off, for comparison)\n"
"  naive = one chunk of N rows (the full logits, never skipping); recompute = forward then\n"
"  backward; fused = forward_backward.  max_rss is the process-wide maximum so far.\n");
}

/* ---- the GEMM rate against what the CPU's instructions allow
 *
 * On one of the project's machines OpenBLAS's own choice of kernel ran the
 * same call 4x slower (14.5 s against 3.6 s with OPENBLAS_CORETYPE=SkylakeX)
 * and nothing said so.  The floor below is what ONE FMA unit of the widest
 * vector instructions the CPU has gives per cycle per thread (fp32: AVX-512
 * 32 flops, AVX2 + FMA 16, AVX 8, SSE2 4; fp64 half); a good kernel reaches
 * one to two times that, the slow kernel of that machine about a quarter of
 * it.  mel bench warns below GEMM_RATE_WARN of the floor. */
#define GEMM_RATE_WARN 0.25
#define GEMM_RATE_MIN_SECONDS 0.05 /* measure only GEMM time long enough to mean something */

static double isa_flops_per_cycle(const char **isa, const char **coretype)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return *isa = "AVX-512", *coretype = "SkylakeX", 32;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return *isa = "AVX2+FMA", *coretype = "Haswell", 16;
    if (__builtin_cpu_supports("avx")) return *isa = "AVX", *coretype = "Sandybridge", 8;
    return *isa = "SSE2", *coretype = "", 4;
#else
    *isa = "unknown", *coretype = "";
    return 0;
#endif
}

/* The clock in GHz: the highest "cpu MHz" of /proc/cpuinfo (0 unknown). */
static double cpu_ghz(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return 0;
    char line[256];
    double mhz = 0, v;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "cpu MHz : %lf", &v) == 1 && v > mhz) mhz = v;
    fclose(f);
    return mhz / 1000;
}

/* Warn (once) when the GEMMs ran far below the floor: name the rate, the
 * kernel and the remedy. */
static void check_gemm_rate(double gflops, double gemm_s, int threads, mel_dtype ct)
{
    static int warned;
    const char *isa, *coretype;
    double fpc = isa_flops_per_cycle(&isa, &coretype), ghz = cpu_ghz();
    if (warned || fpc <= 0 || ghz <= 0 || threads < 1 || gemm_s < GEMM_RATE_MIN_SECONDS) return;
    if (ct == MEL_F64) fpc /= 2;
    const double per = gflops / (threads * ghz); /* flops per cycle per thread */
    if (per >= GEMM_RATE_WARN * fpc) return;
    warned = 1;
    char kernel[128];
    snprintf(kernel, sizeof kernel, "%s", mel_info("blas_kernel"));
    const char *ct_env = getenv("OPENBLAS_CORETYPE");
    fprintf(stderr,
            "mel: warning: the GEMMs ran at %.1f GFLOP/s on %d threads at %.2f GHz: %.1f flops per cycle "
            "per thread, under %.0f %% of the %.0f that one %s FMA unit gives; OpenBLAS chose the kernel "
            "'%s' (OPENBLAS_CORETYPE %s)",
            gflops, threads, ghz, per, GEMM_RATE_WARN * 100, fpc, isa, kernel[0] ? kernel : "unknown",
            ct_env && *ct_env ? ct_env : "unset");
    if (coretype[0] && strcmp(kernel, coretype) != 0)
        fprintf(stderr, ": try OPENBLAS_CORETYPE=%s (a DYNAMIC_ARCH OpenBLAS then uses its %s kernel), ", coretype,
                isa);
    else
        fprintf(stderr, ": ");
    fprintf(stderr, "and check that the machine is not busy and --threads is not above its cores\n");
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

/* --ignore F: exactly round(F·n) labels ignored, at random positions, or
 * as the first round(F·T) rows of each sequence of T rows (prefix); the
 * other labels drawn anew in [0, V). */
static void set_ignored(problem *p, int64_t n, int64_t v, double f, const char *pattern, int64_t T,
                        int64_t ignore_index, uint64_t seed)
{
    uint64_t s = seed * 0x9E3779B97F4A7C15ull + 12345;
    for (int64_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p->labels[i] = (int64_t)((s >> 33) % (uint64_t)v);
    }
    if (!strcmp(pattern, "prefix")) {
        const int64_t k = (int64_t)llround(f * (double)T);
        for (int64_t i = 0; i < n; i++)
            if (i % T < k) p->labels[i] = ignore_index;
        return;
    }
    const int64_t want = (int64_t)llround(f * (double)n);
    int64_t *perm = xcalloc(n, sizeof(int64_t), "--ignore");
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    for (int64_t i = 0; i < want; i++) { /* partial Fisher-Yates */
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        int64_t j = i + (int64_t)((s >> 33) % (uint64_t)(n - i));
        int64_t tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
        p->labels[perm[i]] = ignore_index;
    }
    release(perm);
}

int cmd_bench(int argc, char **argv)
{
    const char *rows_s = "4096", *modes_s = "naive,recompute,fused", *tname = "ce",
               *csv = NULL, *backend = "cpu";
    int64_t d = 1024, v = 32768, chunk = 0, ws_bytes = -1, tile_cols = 0;
    int repeat = 3, warmup = 1, threads = -1, rss_reset_ok = 0;
    uint64_t seed = 1;
    mel_dtype dt = MEL_F32;
    mel_params *pl = NULL;
    int no_skip = 0;
    double ignore = -1;
    const char *pattern = NULL;
    int64_t seq_len = 0;

    optscan o = {argc, 0, argv, "bench", bench_opts, 0};
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
        else if (!strcmp(name, "--dtype")) dt = parse_dtype(name, val);
        else if (!strcmp(name, "--modes")) modes_s = val;
        else if (!strcmp(name, "--repeat")) repeat = (int)parse_i64(name, val, 1, 10000);
        else if (!strcmp(name, "--warmup")) warmup = (int)parse_i64(name, val, 0, 10000);
        else if (!strcmp(name, "--threads")) threads = (int)parse_i64(name, val, 0, 4096);
        else if (!strcmp(name, "--csv")) csv = val;
        else if (!strcmp(name, "--seed")) seed = (uint64_t)parse_i64(name, val, 0, INT64_MAX);
        else if (!strcmp(name, "--param")) param_add(&pl, val);
        else if (!strcmp(name, "--chunk-rows")) chunk = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--workspace-bytes")) ws_bytes = parse_bytes(name, val);
        else if (!strcmp(name, "--tile-cols")) tile_cols = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--backend")) backend = val;
        else if (!strcmp(name, "--no-skip")) no_skip = 1;
        else if (!strcmp(name, "--ignore")) {
            ignore = parse_f64(name, val);
            if (!(ignore >= 0 && ignore <= 1)) die(EXIT_USAGE, "--ignore: %s is outside [0, 1]", val);
        } else if (!strcmp(name, "--ignore-pattern")) {
            if (strcmp(val, "random") && strcmp(val, "prefix"))
                die(EXIT_USAGE, "--ignore-pattern: unknown pattern '%s' (want random or prefix)", val);
            pattern = val;
        } else if (!strcmp(name, "--seq-len")) seq_len = parse_i64(name, val, 1, INT32_MAX);
    }
    if ((pattern || seq_len) && ignore < 0)
        die(EXIT_USAGE, "%s: needs --ignore F (the fraction to ignore)", pattern ? "--ignore-pattern" : "--seq-len");
    if (seq_len && (!pattern || strcmp(pattern, "prefix")))
        die(EXIT_USAGE, "--seq-len: only applies to --ignore-pattern prefix");
    if (!pattern) pattern = "random";
    if (!seq_len) seq_len = 512;

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

    if (chunk > 0 && ws_bytes >= 0)
        die(EXIT_USAGE, "--chunk-rows and --workspace-bytes: give one or the other (a fixed chunk "
            "size takes what its rows need, whatever the budget)");
    check_builtin_name("bench", tname);
    resolve_param_words("bench", tname, &pl);
    refuse_loss_type_params("bench", tname, pl, "mel bench does not use (it times a mean-reduced step)");
    mel_ctx *ctx = make_ctx(backend, threads);
    mel_transform *t = build_transform(ctx, "bench", tname, pl);
    double ii = param_value(tname, pl, "ignore_index", -100);
    char ignore_desc[96] = "about 1 in 5 at random (the default problem)";
    if (ignore >= 0) {
        if (!strcmp(pattern, "prefix"))
            snprintf(ignore_desc, sizeof ignore_desc, "%g of each %" PRId64 "-row sequence, as a prefix", ignore,
                     seq_len);
        else snprintf(ignore_desc, sizeof ignore_desc, "%g at random", ignore);
    }
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
    char header[1200], blas[400];
    blas_desc(blas, sizeof blas);
    snprintf(header, sizeof header,
             "# machine: %s; nproc %ld; backend %s; threads %d; blas %s; OPENBLAS_CORETYPE=%s; commit %s; "
             "libmel %s; transform %s; dtype %s; dim %" PRId64 "; vocab %" PRId64
             "; repeat %d; warmup %d; row skipping %s; ignored %s",
             machine, nproc, backend, mel_get_threads(ctx), blas, coretype && *coretype ? coretype : "unset",
             commit, mel_version_string(), tname, mel_dtype_name(dt), d, v, repeat, warmup,
             no_skip ? "off" : "on", ignore_desc);

    FILE *cf = NULL;
    if (csv) {
        cf = fopen(csv, "w");
        if (!cf) die(EXIT_USAGE, "--csv: %s: %s", csv, strerror(errno));
        own(cf, close_file);
        fprintf(cf, "%s\n", header);
        fprintf(cf, "rows,dim,vocab,transform,dtype,mode,threads,chunk_rows,chunks,"
                    "time_median_s,time_min_s,time_max_s,gemm_time_median_s,gemm_flops,"
                    "gemm_gflop_per_s,peak_workspace_bytes,naive_logits_bytes,"
                    "max_rss_bytes,loss,tile_cols\n");
    }
    printf("%s\n", header);
    printf("%8s %-9s %9s %9s %9s %10s %10s %7s %8s %14s %14s %12s %12s\n", "rows", "mode",
           "median_s", "min_s", "max_s", "gemm_GF/s", "chunk_rows", "chunks", "active",
           "peak_ws_MiB", "naive_lgt_MiB", "max_rss_MiB", "loss");
    fflush(stdout);

    double *times = xcalloc(repeat, sizeof(double), "--repeat");
    double *gtimes = xcalloc(repeat, sizeof(double), "--repeat");
    for (int ri = 0; ri < nrows; ri++) {
        int64_t n = rows[ri];
        mul64(n, v, "--rows x --vocab");
        const size_t mark = own_mark(); /* this rows setting's buffers */
        problem p;
        make_problem(&p, t, n, d, v, 0, (int64_t)ii, 0, seed + (uint64_t)ri);
        if (ignore >= 0 && p.labels) set_ignored(&p, n, v, ignore, pattern, seq_len, (int64_t)ii, seed);
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
            check(ctx, mel_set_row_skipping(ctx, !no_skip && m != 0), "--no-skip");
            if (m == 0) {
                check(ctx, mel_set_chunk_rows(ctx, n), "bench naive");
                check(ctx, mel_set_tile_cols(ctx, 0), "bench naive");
                /* one chunk of N rows: the budget does not apply */
                check(ctx, mel_set_workspace_limit(ctx, (int64_t)1 << 46), "bench naive");
            } else {
                check(ctx, mel_set_chunk_rows(ctx, chunk), "--chunk-rows");
                check(ctx, mel_set_tile_cols(ctx, tile_cols), "--tile-cols");
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
            printf("%8" PRId64 " %-9s %9.4f %9.4f %9.4f %10.1f %10" PRId64 " %7" PRId64 " %8" PRId64
                   " %14.1f %14.1f %12.1f %12.6g\n",
                   n, mode_names[m], med, mn, mx, gfs, cs.total.chunk_rows, cs.total.chunks,
                   cs.total_active,
                   (double)cs.total.peak_workspace_bytes / 1048576.0,
                   (double)naive_bytes / 1048576.0, (double)rss / 1048576.0, y);
            fflush(stdout);
            if (!strcmp(backend, "cpu")) check_gemm_rate(gfs, gmed, mel_get_threads(ctx), dt);
            if (cf)
                fprintf(cf, "%" PRId64 ",%" PRId64 ",%" PRId64 ",%s,%s,%s,%d,%" PRId64 ",%" PRId64
                        ",%.6g,%.6g,%.6g,%.6g,%" PRId64 ",%.6g,%" PRId64 ",%" PRId64 ",%" PRId64
                        ",%.17g,%" PRId64 "\n",
                        n, d, v, tname, mel_dtype_name(dt), mode_names[m], mel_get_threads(ctx),
                        cs.total.chunk_rows, cs.total.chunks, med, mn, mx, gmed,
                        cs.total.gemm_flops, gfs, cs.total.peak_workspace_bytes, naive_bytes,
                        rss, y, cs.total_tiles);
        }
        release_to(mark); /* args, inputs, gradients (host and device) */
    }
    printf("# blas threads in the last call: %s (a CPU context sets them to its own threads before each "
           "GEMM)\n", mel_info("blas_threads"));
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

