/* plan.c -- `mel plan`: what a call would use (rows per chunk, chunks,
 * active rows, peak workspace) without running it (mel_plan_call). */
#include "mel_tool.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const optspec plan_opts[] = {
    {"--rows", 1}, {"--dim", 1}, {"--vocab", 1}, {"--dtype", 1}, {"--mode", 1},
    {"--reduction", 1}, {"--labels", 1}, {"--input", OPT_REPEAT}, {"--param", OPT_REPEAT},
    {"--chunk-rows", 1}, {"--workspace-bytes", 1}, {"--tile-cols", 1}, {"--threads", 1}, {"--backend", 1},
    {"--no-skip", 0}, {"--json", 0}, {"--help", 0}, {NULL, 0}};

static void usage_plan(FILE *f)
{
    fprintf(f,
"usage: mel plan TRANSFORM --rows N --dim D --vocab V [options]\n"
"  Plans the call mel run would make (same defaults) without computing anything:\n"
"  rows per chunk, chunks, active rows and libmel's peak workspace in bytes, the\n"
"  figures mel run --stats then reports.\n"
"  --dtype f64|f32|bf16|f16 (f32)   storage of X and W\n"
"  --mode fused|recompute|forward|naive (fused)   recompute plans its two calls\n"
"  --reduction none|sum|mean (mean)\n"
"  --labels FILE, --input NAME=FILE   per-row inputs (.npy): with them the rows the\n"
"                           transform masks are counted and skipped; without, every\n"
"                           row counts as active\n"
"  --chunk-rows R | --workspace-bytes B   as for mel run\n"
"  --tile-cols C            as for mel run\n"
"  --threads K (CPU threads: the per-thread scratch depends on it)  --backend cpu|cuda\n"
"  --no-skip                plan with row skipping off\n"
"  --param NAME=VALUE       transform parameter (repeatable)\n"
"  --json                   one JSON object instead of the table\n");
}

int cmd_plan(int argc, char **argv)
{
    const char *tname = NULL, *f_labels = NULL, *s_mode = "fused", *backend = NULL;
    const char *in_names[PROBLEM_MAX_INPUTS], *in_files[PROBLEM_MAX_INPUTS];
    int n_in = 0, threads = -1, no_skip = 0, json = 0;
    int64_t n = -1, d = -1, v = -1, chunk_rows = -1, ws_bytes = -1, tile_cols = -1;
    mel_dtype dt = MEL_F32;
    mel_reduction red = MEL_REDUCE_MEAN;
    mel_params *pl = NULL;

    optscan o = {argc, 0, argv, "plan", plan_opts, 0};
    const char *name, *val;
    while ((name = next_opt(&o, &val))) {
        if (!*name) {
            if (tname) die(EXIT_USAGE, "plan: unexpected argument '%s' (TRANSFORM is '%s')", val, tname);
            tname = val;
        } else if (!strcmp(name, "--help")) {
            usage_plan(stdout);
            release_all();
            return 0;
        } else if (!strcmp(name, "--rows")) n = parse_i64(name, val, 0, INT32_MAX);
        else if (!strcmp(name, "--dim")) d = parse_i64(name, val, 1, INT32_MAX);
        else if (!strcmp(name, "--vocab")) v = parse_i64(name, val, 1, INT32_MAX);
        else if (!strcmp(name, "--dtype")) dt = parse_dtype(name, val);
        else if (!strcmp(name, "--mode")) s_mode = val;
        else if (!strcmp(name, "--reduction")) red = parse_reduction(name, val);
        else if (!strcmp(name, "--labels")) f_labels = val;
        else if (!strcmp(name, "--param")) param_add(&pl, val);
        else if (!strcmp(name, "--chunk-rows")) chunk_rows = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--workspace-bytes")) ws_bytes = parse_bytes(name, val);
        else if (!strcmp(name, "--tile-cols")) tile_cols = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--threads")) threads = (int)parse_i64(name, val, 0, 4096);
        else if (!strcmp(name, "--backend")) backend = val;
        else if (!strcmp(name, "--no-skip")) no_skip = 1;
        else if (!strcmp(name, "--json")) json = 1;
        else if (!strcmp(name, "--input")) {
            input_add(val, in_names, in_files, &n_in, PROBLEM_MAX_INPUTS);
        }
    }
    if (!tname) die(EXIT_USAGE, "plan: missing TRANSFORM (see mel list)");
    check_builtin_name("plan", tname);
    resolve_param_words("plan", tname, &pl);
    if (n < 0) die(EXIT_USAGE, "plan: --rows is required");
    if (d < 0) die(EXIT_USAGE, "plan: --dim is required");
    if (v < 0) die(EXIT_USAGE, "plan: --vocab is required");
    enum { FUSED, RECOMPUTE, FORWARD, NAIVE } mode;
    if (!strcmp(s_mode, "fused")) mode = FUSED;
    else if (!strcmp(s_mode, "recompute")) mode = RECOMPUTE;
    else if (!strcmp(s_mode, "forward")) mode = FORWARD;
    else if (!strcmp(s_mode, "naive")) mode = NAIVE;
    else die(EXIT_USAGE, "--mode: unknown mode '%s' (want fused, recompute, forward or naive)", s_mode);
    if (mode == NAIVE && (chunk_rows > 0 || ws_bytes >= 0))
        die(EXIT_USAGE, "%s: cannot be combined with --mode naive (one chunk of N rows)",
            chunk_rows > 0 ? "--chunk-rows" : "--workspace-bytes");
    if (mode == NAIVE && tile_cols > 0)
        die(EXIT_USAGE, "--tile-cols: cannot be combined with --mode naive (whole rows in one chunk)");
    if (chunk_rows > 0 && ws_bytes >= 0)
        die(EXIT_USAGE, "--chunk-rows and --workspace-bytes: give one or the other (a fixed chunk "
            "size takes what its rows need, whatever the budget)");
    mul64(n, v, "--rows x --vocab");
    mul64(v, d, "--vocab x --dim");

    mel_ctx *ctx = make_ctx(backend, threads);
    mel_transform *t = build_transform(ctx, "plan", tname, pl);
    mel_args *a = own(mel_args_new(), free_args);
    if (!a) die(EXIT_FAILED, "out of memory");
    /* shapes only: X, W (and the gradients) are never read by the planner */
    for (int h = 0; h < mel_transform_num_heads(t); h++)
        if (mel_transform_head(t, h))
            check(ctx, mel_args_head(a, h, mel_mat(NULL, dt, n, d, d), mel_mat(NULL, dt, v, d, d), NULL), "plan");
    static char dummy[64];
    check(ctx, mel_args_reduction(a, red, NULL), "--reduction");
    if (red == MEL_REDUCE_WEIGHTED) die(EXIT_USAGE, "--reduction: weighted is not planned here");
    check(ctx, mel_args_output(a, dummy, MEL_F64), "plan");
    const int grads = mode != FORWARD;
    if (grads)
        check(ctx, mel_args_grad_head(a, 0, mel_mat(dummy, dt, n, d, d),
                                      mel_mat(dummy, dt == MEL_F64 ? MEL_F64 : MEL_F32, v, d, d), NULL,
                                      MEL_OVERWRITE_DW),
              "plan");
    /* per-row inputs, when given: the planner counts the active rows */
    if (f_labels) {
        input in = load("--labels", f_labels, TAKES_INT);
        want_vec(&in, n, "--labels");
        check(ctx, mel_args_index(a, "labels", input_as(&in, MEL_I64), MEL_I64, n), "--labels");
    }
    for (int k = 0; k < n_in; k++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--input %s", in_names[k]);
        input in = load("--input", in_files[k], TAKES_FLOAT | TAKES_BOOL | TAKES_INT);
        want_vec(&in, n, flag);
        int is_index = 0; /* an index input other than labels (dpo's seq_ids) */
        for (int i = 0; i < mel_transform_num_inputs(t); i++) {
            int ix = 0;
            const char *nm = mel_transform_input(t, i, &ix, NULL);
            if (nm && !strcmp(nm, in_names[k])) is_index = ix;
        }
        if (is_index) check(ctx, mel_args_index(a, in_names[k], input_as(&in, MEL_I64), MEL_I64, n), flag);
        else check(ctx, mel_args_input(a, in_names[k], input_as(&in, MEL_F64), MEL_F64, n), flag);
    }

    if (mode == NAIVE) {
        check(ctx, mel_set_chunk_rows(ctx, n > 0 ? n : 1), "--mode naive");
        check(ctx, mel_set_workspace_limit(ctx, (int64_t)1 << 46), "--mode naive");
    } else {
        if (chunk_rows > 0) check(ctx, mel_set_chunk_rows(ctx, chunk_rows), "--chunk-rows");
        if (ws_bytes >= 0) check(ctx, mel_set_workspace_limit(ctx, ws_bytes), "--workspace-bytes");
        if (tile_cols > 0) check(ctx, mel_set_tile_cols(ctx, tile_cols), "--tile-cols");
    }
    check(ctx, mel_set_row_skipping(ctx, !no_skip && mode != NAIVE), "--no-skip");

    mel_call_plan p[2];
    int64_t tiles[2] = {0, 0};
    const char *names[2];
    int np = 0;
    if (mode == RECOMPUTE) {
        check(ctx, mel_plan_call(ctx, t, a, MEL_MODE_FORWARD, &p[np]), "plan");
        tiles[np] = mel_get_tile_cols(ctx);
        names[np++] = "forward";
        check(ctx, mel_plan_call(ctx, t, a, MEL_MODE_BACKWARD, &p[np]), "plan");
        tiles[np] = mel_get_tile_cols(ctx);
        names[np++] = "backward";
    } else {
        check(ctx, mel_plan_call(ctx, t, a, mode == FORWARD ? MEL_MODE_FORWARD : MEL_MODE_FORWARD_BACKWARD,
                                 &p[np]),
              "plan");
        tiles[np] = mel_get_tile_cols(ctx);
        names[np++] = mode == FORWARD ? "forward" : "forward_backward";
    }
    int64_t peak = 0, chunks = 0, rows_max = 0;
    for (int i = 0; i < np; i++) {
        if (p[i].peak_workspace_bytes > peak) peak = p[i].peak_workspace_bytes;
        if (p[i].chunk_rows > rows_max) rows_max = p[i].chunk_rows;
        chunks += p[i].chunks;
    }
    const int64_t naive_logits = n * v * (int64_t)(dt == MEL_F64 ? 8 : 4);
    if (json) {
        printf("{\"transform\": \"%s\", \"rows\": %" PRId64 ", \"active_rows\": %" PRId64
               ", \"row_skipping\": %d, \"chunk_rows\": %" PRId64 ", \"chunks\": %" PRId64
               ", \"peak_workspace_bytes\": %" PRId64 ", \"naive_logits_bytes\": %" PRId64 ", \"calls\": [",
               tname, n, p[0].active_rows, p[0].row_skipping, rows_max, chunks, peak, naive_logits);
        for (int i = 0; i < np; i++)
            printf("%s{\"call\": \"%s\", \"chunk_rows\": %" PRId64 ", \"tile_cols\": %" PRId64
                   ", \"chunks\": %" PRId64 ", \"peak_workspace_bytes\": %" PRId64 "}",
                   i ? ", " : "", names[i], p[i].chunk_rows, tiles[i], p[i].chunks, p[i].peak_workspace_bytes);
        printf("]}\n");
    } else {
        printf("%-18s %10s %10s %8s %12s %10s %20s\n", "call", "rows", "active", "chunks", "chunk_rows",
               "tile_cols", "peak_workspace_B");
        for (int i = 0; i < np; i++)
            printf("%-18s %10" PRId64 " %10" PRId64 " %8" PRId64 " %12" PRId64 " %10" PRId64 " %20" PRId64 "\n",
                   names[i], p[i].rows, p[i].active_rows, p[i].chunks, p[i].chunk_rows, tiles[i],
                   p[i].peak_workspace_bytes);
        printf("# tile_cols 0: whole rows (the row executor); > 0: vocabulary tiles of that many columns\n");
        printf("# row skipping %s; naive logits %" PRId64 " B (N·V); peak workspace %.1f%% of it\n",
               p[0].row_skipping ? "on (masked rows are not computed)"
                                 : (no_skip || mode == NAIVE ? "off" : "on, nothing to skip"),
               naive_logits, naive_logits > 0 ? 100.0 * (double)peak / (double)naive_logits : 0.0);
    }
    release_all();
    return 0;
}
