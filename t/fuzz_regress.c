/* t/fuzz_regress.c -- replays every file of the fuzzing corpora
 * (fuzz/corpus/<harness>/, seeds and the inputs of past findings) through
 * the harnesses' own code, compiled here without libFuzzer, and checks the
 * library fixes of the findings directly.
 *
 * Each input runs in a child process, so a crash, a sanitizer report (with
 * ./configure --enable-sanitizers) or a hang is one failing test line that
 * names the file, not the end of the run.  The parent never calls libmel
 * (OpenMP in a forked child of an OpenMP parent is not safe). */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mel.h"
#include "tap.h"

#define LLVMFuzzerTestOneInput fuzz_graph_one
#include "../fuzz/fuzz_graph.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_args_one
#include "../fuzz/fuzz_args.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput fuzz_npy_one
#include "../fuzz/fuzz_npy.c"
#undef LLVMFuzzerTestOneInput

typedef int (*harness_fn)(const uint8_t *, size_t);

/* Runs fn(arg) in a child; returns a description of how it ended ("" = exit 0). */
static const char *in_child(void (*fn)(void *), void *arg, char *buf, size_t n)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return "fork failed";
    if (pid == 0) {
        alarm(120);
        fn(arg);
        fflush(NULL);
        _exit(0);
    }
    int st = 0;
    if (waitpid(pid, &st, 0) < 0) return "waitpid failed";
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return "";
    if (WIFSIGNALED(st)) snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, n, "exit status %d (a sanitizer report or a failed check: see the log)", WEXITSTATUS(st));
    return buf;
}

typedef struct replay {
    harness_fn fn;
    const char *path;
} replay;

static void replay_file(void *arg)
{
    const replay *r = arg;
    FILE *f = fopen(r->path, "rb");
    if (!f) _exit(3);
    uint8_t *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, 1 << 20, f) : 0;
    fclose(f);
    r->fn(buf, n);
    free(buf);
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void replay_dir(const char *top, const char *name, harness_fn fn)
{
    char dir[1024], path[2048], why[160];
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/%s", top, name);
    DIR *d = opendir(dir);
    if (!d) {
        ok(0, "%s: cannot open %s", name, dir);
        return;
    }
    char *files[4096];
    int nf = 0;
    struct dirent *e;
    while ((e = readdir(d)) && nf < 4096)
        if (e->d_name[0] != '.') files[nf++] = strdup(e->d_name);
    closedir(d);
    qsort(files, (size_t)nf, sizeof *files, cmp);
    ok(nf > 0, "%s: %d corpus files", name, nf);
    for (int i = 0; i < nf; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        replay r = {fn, path};
        const char *how = in_child(replay_file, &r, why, sizeof why);
        ok(!*how, "%s: %s replays cleanly%s%s", name, files[i], *how ? ": " : "", how);
        free(files[i]);
    }
}

/* ---- the fixes of the findings, checked directly (each in a child) */

/* finding: an empty batch with a segment transform sized its workspace for a
 * whole segment (MEL_ERR_BUDGET with automatic chunks, seq_len × V bytes
 * with explicit chunk rows) */
static void empty_batch_segment(void *arg)
{
    mel_ctx *ctx = NULL;
    mel_transform *t = NULL;
    mel_params *p = mel_params_new();
    mel_params_set(p, "importance_sampling_level", 1);
    mel_params_set(p, "seq_len", 1e8);
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) || mel_transform_builtin(ctx, "grpo", p, &t)) _exit(4);
    float x[4], w[12], y = 1;
    int64_t lab[1];
    double m[1], adv[1];
    mel_args *a = mel_args_new();
    mel_args_head(a, 0, mel_mat(x, MEL_F32, 0, 4, 0), mel_mat(w, MEL_F32, 3, 4, 0), NULL);
    mel_args_index(a, "labels", lab, MEL_I64, 0);
    mel_args_input(a, "mask", m, MEL_F64, 0);
    mel_args_input(a, "advantages", adv, MEL_F64, 0);
    mel_args_output(a, &y, MEL_F32);
    for (int64_t chunk = 0; chunk <= 4; chunk += 4) {
        mel_set_chunk_rows(ctx, chunk);
        mel_status s = mel_forward(ctx, t, a);
        mel_stats st;
        mel_get_stats(ctx, &st);
        if (s != MEL_OK || y != 0 || st.peak_workspace_bytes > (1 << 20)) {
            fprintf(stderr, "chunk_rows %lld: status %d (%s), y = %g, peak workspace %lld\n", (long long)chunk,
                    (int)s, mel_last_error(ctx), y, (long long)st.peak_workspace_bytes);
            _exit(1);
        }
    }
    mel_args_free(a);
    mel_params_free(p);
    mel_transform_free(t);
    mel_ctx_destroy(ctx);
}

/* finding: sizes whose byte counts overflow were used (B·T overflowed in
 * int64; n doubles beyond INT64_MAX bytes were read) */
static void grpo_helper_overflow(void *arg)
{
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx)) _exit(4);
    double mask[2] = {1, 1}, w[2], r[2] = {1, 2}, adv[2];
    int64_t big = ((int64_t)1 << 32) + 1;
    mel_status s1 = mel_grpo_weights(ctx, MEL_GRPO_GRPO, big, big, mask, 4, 0, 1, w);
    mel_status s2 = mel_group_advantages(ctx, r, INT64_MAX, 1, 0, adv);
    if (s1 != MEL_ERR_OVERFLOW || s2 != MEL_ERR_OVERFLOW) {
        fprintf(stderr, "grpo_weights B = T = 2^32+1: %d; group_advantages n = INT64_MAX: %d\n", (int)s1, (int)s2);
        _exit(1);
    }
    mel_ctx_destroy(ctx);
}

int main(void)
{
    const char *top = getenv("MEL_TOP_SRCDIR");
    if (!top) top = ".";
    char why[160];
    const char *how = in_child(empty_batch_segment, NULL, why, sizeof why);
    ok(!*how, "finding 1: N = 0 with a segment transform (seq_len 1e8) succeeds without a segment's workspace%s%s",
       *how ? ": " : "", how);
    how = in_child(grpo_helper_overflow, NULL, why, sizeof why);
    ok(!*how, "finding 2: mel_grpo_weights B·T and mel_group_advantages n overflowing -> MEL_ERR_OVERFLOW%s%s",
       *how ? ": " : "", how);
    replay_dir(top, "fuzz_graph", fuzz_graph_one);
    replay_dir(top, "fuzz_args", fuzz_args_one);
    replay_dir(top, "fuzz_npy", fuzz_npy_one);
    return done_testing();
}
