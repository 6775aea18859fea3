/* gradcheck.c -- `mel gradcheck TRANSFORM`: the library's finite-difference
 * check (mel_gradcheck) on a random problem. */
#include "mel_tool.h"

#include <inttypes.h>
#include <string.h>

static const optspec gc_opts[] = {
    {"--rows", 1}, {"--dim", 1}, {"--vocab", 1}, {"--seed", 1}, {"--param", OPT_REPEAT},
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

int cmd_gradcheck(int argc, char **argv)
{
    const char *tname = NULL;
    int64_t n = 8, d = 6, v = 11, chunk = 3;
    uint64_t seed = 1;
    int threads = -1, with_bias = 1;
    mel_reduction red = MEL_REDUCE_MEAN;
    mel_gradcheck_opts go;
    memset(&go, 0, sizeof go);
    mel_params *pl = NULL;

    optscan o = {argc, 0, argv, "gradcheck", gc_opts, 0};
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
        else if (!strcmp(name, "--param")) param_add(&pl, val);
        else if (!strcmp(name, "--reduction")) red = parse_reduction(name, val);
    }
    if (!tname) die(EXIT_USAGE, "gradcheck: missing TRANSFORM (see mel list)");
    if (mul64(n, v, "--rows x --vocab") > (int64_t)1 << 28 ||
        mul64(v, d, "--vocab x --dim") > (int64_t)1 << 28)
        die(EXIT_USAGE, "gradcheck: --rows/--dim/--vocab too large for a finite-difference check");
    go.seed = seed;

    check_builtin_name("gradcheck", tname);
    resolve_param_words("gradcheck", tname, &pl);
    refuse_loss_type_params("gradcheck", tname, pl, "mel gradcheck does not use (it checks --reduction "
                            "none, sum or mean)");
    /* with the stop-gradient default (grpo's use_old_logp = 0) the ratio is 1
     * for every perturbation, so finite differences need old_logp as data */
    double lt = 0;
    if (builtin_has_param(tname, "use_old_logp") && !mel_params_get(pl, "use_old_logp", NULL) &&
        mel_params_get(pl, "loss_type", &lt) && lt == 4) {
        /* cispo's weight min(r, ε_high) is detached: with old_logp given finite differences
         * see it move, the gradient by design does not; with the stop-gradient default it is
         * min(1, ε_high) for every perturbation */
        printf("# %s: checking cispo with use_old_logp=0 (its detached weight is then constant under "
               "finite differences)\n", tname);
    } else if (builtin_has_param(tname, "use_old_logp") && !mel_params_get(pl, "use_old_logp", NULL)) {
        param_add(&pl, "use_old_logp=1");
        printf("# %s: checking with use_old_logp=1 (with old_logp absent, the stop-gradient makes "
               "the ratio constant under finite differences)\n", tname);
    }
    mel_ctx *ctx = make_ctx("cpu", threads);
    /* the preference built-ins' NLL normaliser (the batch's chosen tokens
     * over its pairs) is a property of the batch: when the parameters
     * given need it (the transform builds only with it), it is set from
     * the drawn problem */
    int need_cpp = 0;
    if (builtin_has_param(tname, "chosen_tokens_per_pair") && !mel_params_get(pl, "chosen_tokens_per_pair", NULL)) {
        mel_transform *probe = NULL;
        need_cpp = mel_transform_builtin(ctx, tname, pl, &probe) != MEL_OK;
        mel_transform_free(probe);
        if (need_cpp) param_add(&pl, "chosen_tokens_per_pair=1");
    }
    mel_transform *t = build_transform(ctx, "gradcheck", tname, pl);
    double ii = param_value(tname, pl, "ignore_index", -100);
    problem p;
    make_problem(&p, t, n, d, v, with_bias, (int64_t)ii, 1, seed);
    if (need_cpp && p.seq) {
        double chosen = 0, pairs = 0;
        for (int64_t i = 0; i < n; i++) {
            chosen += p.seq[i] >= 0 && p.seq[i] % 2 == 0 && p.labels[i] != (int64_t)ii;
            pairs += p.seq[i] >= 0 && p.seq[i] % 2 == 0 && (i == 0 || p.seq[i - 1] != p.seq[i]);
        }
        double k = chosen > 0 && pairs > 0 ? chosen / pairs : 1;
        check(ctx, mel_params_set(pl, "chosen_tokens_per_pair", k), "chosen_tokens_per_pair");
        t = build_transform(ctx, "gradcheck", tname, pl); /* the first stays: p names its inputs */
        printf("# %s: checking with chosen_tokens_per_pair=%g (the drawn batch's chosen tokens per pair)\n",
               tname, k);
    }

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
           ", seed %" PRIu64 ", reduction %s, chunk_rows %" PRId64 "%s%s",
           tname, n, d, v, seed, rn[red], chunk, with_bias ? ", bias" : "",
           p.tx ? ", teacher head" : "");
    for (int k = 0; k < p.n_scalar; k++) printf("%s%s", k ? "/" : ", ", p.scalar_name[k]);
    printf("\n");
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

