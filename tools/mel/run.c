/* run.c -- `mel run TRANSFORM`: compute a built-in transform, and on
 * request its gradients, on .npy inputs. */
#include "mel_tool.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#ifdef HAVE_MPI
#include <mpi.h>
#endif

static const optspec run_opts[] = {
    {"--hidden", 1}, {"--weight", 1}, {"--bias", 1}, {"--labels", 1},
    {"--input", OPT_REPEAT}, {"--teacher-hidden", 1}, {"--teacher-weight", 1},
    {"--param", OPT_REPEAT}, {"--reduction", 1}, {"--grad-output", 1}, {"--output", 1},
    {"--grad-hidden", 1}, {"--grad-weight", 1}, {"--grad-bias", 1},
    {"--chunk-rows", 1}, {"--workspace-bytes", 1}, {"--tile-cols", 1}, {"--mode", 1},
    {"--dtype", 1}, {"--backend", 1}, {"--threads", 1}, {"--stats", 1},
    {"--check-finite", 0}, {"--no-skip", 0}, {"--vocab-parallel", 0}, {"--help", 0}, {NULL, 0}};

static void usage_run(FILE *f)
{
    fprintf(f,
"usage: mel run TRANSFORM --hidden X.npy --weight W.npy [options]\n"
"  --hidden FILE            X [N, D], float32, float64 or float16, C order\n"
"  --weight FILE            W [V, D] (same dtypes)\n"
"  --bias FILE              bias [V] (same dtypes)\n"
"  --labels FILE            labels [N], int32 or int64\n"
"  --input NAME=FILE        per-row input [N] (mask, advantages, old_logp, ref_logp, ...):\n"
"                           float32, float64, int32, int64 or bool (e.g. a mask); an index\n"
"                           input (dpo's seq_ids: chosen of pair b 2b, rejected 2b + 1) int32/int64\n"
"  --teacher-hidden FILE, --teacher-weight FILE   head 1 (teacher / reference), no gradient\n"
"  --param NAME=VALUE       transform parameter (repeatable, each NAME once); words such as\n"
"                           loss_type=dapo (grpo) or loss_type=ipo (dpo) are mapped by the library\n"
"  --reduction none|sum|mean   default mean; grpo: default the loss_type's weights\n"
"                           (--param loss_type, seq_len, max_completion_length for dr_grpo,\n"
"                           num_items_in_batch for dapo), which --reduction replaces\n"
"  --grad-output FILE       dL/dy: 0-d or [1] when reduced, [N] for none (default 1)\n"
"  --output FILE            y: 0-d float64 when reduced, [N] float64 for none\n"
"                           (without --output, y is printed on stdout)\n"
"  --grad-hidden FILE, --grad-weight FILE, --grad-bias FILE   dX [N, D], dW [V, D], db [V];\n"
"                           float64 with --dtype f64, else float32\n"
"  --chunk-rows R | --workspace-bytes B   fixed rows per chunk / byte budget (e.g. 256M);\n"
"                           one or the other, neither with --mode naive\n"
"  --tile-cols C            vocabulary tiles of C columns (the tiled executor; default\n"
"                           automatic: tiles when a --workspace-bytes budget is too small\n"
"                           for whole rows to run efficiently); not with --mode naive\n"
"  --mode fused|recompute|naive   default fused when gradients are asked\n"
"  --dtype f64|f32|bf16|f16 storage precision of X, W (default: that of --hidden); the\n"
"                           files are converted once when their dtype differs (bfloat16:\n"
"                           save float32 and pass --dtype bf16)\n"
"  --backend cpu|cuda       default cpu\n"
"  --threads K              CPU threads (0: default)\n"
"  --no-skip                run the GEMMs on every row, also where the transform's\n"
"                           output is masked (row skipping off, for comparison;\n"
"                           --mode naive never skips: it is the full-logits reference)\n"
"  --check-finite           scan X, W, bias and the per-row float inputs for NaN/Inf first\n"
"                           and exit 2 naming the first (off by default: NaN/Inf propagate\n"
"                           into y and the gradients as in the naive computation, and the\n"
"                           scan reads every input once more)\n"
"  --vocab-parallel         under mpirun -np K: W (and --bias, --teacher-weight) split by\n"
"                           vocabulary rows across the K processes, each reading only its\n"
"                           rows of the files (doc/distributed.md); process 0 writes y, dX\n"
"                           and the assembled dW / db, equal to a one-process run's;\n"
"                           --stats adds processes, comm_bytes, comm_seconds (process 0's),\n"
"                           vocab_rows (process 0's) and the maxima over the processes of\n"
"                           wall_seconds and peak_workspace_bytes\n"
"  --stats FILE             JSON statistics; for recompute the totals add both calls\n"
"                           (chunk_rows and peak_workspace_bytes are maxima) and\n"
"                           \"calls\" lists each one; input_bytes_held: the input data\n"
"                           the tool held during the call (the .npy data, used in place\n"
"                           when its dtype is the compute dtype), input_bytes_converted:\n"
"                           copies made to change a dtype, max_rss_bytes: the process's peak\n");
}

#define MAX_INPUTS 16

/* The flags and files behind the library's arguments, for error messages. */
typedef struct flag_names {
    const char *hidden, *weight, *bias, *thidden, *tweight, *labels;
    const char **in_names, **in_files;
    int n_in;
} flag_names;

/* check() naming the flag (and file) of the argument the library refused,
 * from mel_last_error_detail: the library checks, the tool names. */
static void call_check(mel_ctx *ctx, mel_status s, const char *what, const flag_names *f)
{
    if (s == MEL_OK) return;
    mel_arg_kind k;
    int h;
    const char *name;
    mel_last_error_detail(ctx, &k, &h, &name, NULL, NULL);
    char flag[160] = "";
    const char *file = NULL;
    switch (k) {
    case MEL_ARG_X: snprintf(flag, sizeof flag, h ? "--teacher-hidden" : "--hidden"), file = h ? f->thidden : f->hidden; break;
    case MEL_ARG_W: snprintf(flag, sizeof flag, h ? "--teacher-weight" : "--weight"), file = h ? f->tweight : f->weight; break;
    case MEL_ARG_BIAS: snprintf(flag, sizeof flag, "--bias"), file = f->bias; break;
    case MEL_ARG_HEAD: snprintf(flag, sizeof flag, h ? "--teacher-hidden/--teacher-weight" : "--hidden/--weight"); break;
    case MEL_ARG_INDEX:
        if (name && !strcmp(name, "labels")) snprintf(flag, sizeof flag, "--labels"), file = f->labels;
        break;
    case MEL_ARG_INPUT:
        snprintf(flag, sizeof flag, "--input %s", name ? name : "?");
        for (int i = 0; name && i < f->n_in; i++)
            if (!strcmp(f->in_names[i], name)) file = f->in_files[i];
        break;
    case MEL_ARG_PARAM: snprintf(flag, sizeof flag, "--param %s", name ? name : "?"); break;
    case MEL_ARG_REDUCTION: snprintf(flag, sizeof flag, "--reduction"); break;
    case MEL_ARG_GRAD_OUTPUT: snprintf(flag, sizeof flag, "--grad-output"); break;
    case MEL_ARG_GRAD_X: snprintf(flag, sizeof flag, "--grad-hidden"); break;
    case MEL_ARG_GRAD_W: snprintf(flag, sizeof flag, "--grad-weight"); break;
    case MEL_ARG_GRAD_BIAS: snprintf(flag, sizeof flag, "--grad-bias"); break;
    default: break;
    }
    if (!flag[0]) check(ctx, s, what);
    die(exit_of(s), "%s%s%s%s: %s", s == MEL_ERR_NONFINITE ? "--check-finite: " : "", flag, file ? " " : "",
        file ? file : "", mel_last_error(ctx));
}

/* The buffer the library reads for input `in` as dtype t: the loaded data
 * itself when it has that dtype, else one converted copy (input_as); on
 * --backend cuda a device copy, and the host data is released at once. */
static void *on_dev(input *in, mel_dtype t)
{
    void *h = input_as(in, t);
    if (!g_dev_ctx) return h;
    void *d = to_dev(h, (size_t)in->a.count * mel_dtype_size(t), in->flag);
    input_drop(in);
    return d;
}

int cmd_run(int argc, char **argv)
{
    const char *tname = NULL, *f_hidden = NULL, *f_weight = NULL, *f_bias = NULL,
               *f_labels = NULL, *f_thidden = NULL, *f_tweight = NULL,
               *f_gout = NULL, *f_out = NULL, *f_gx = NULL, *f_gw = NULL,
               *f_gb = NULL, *f_stats = NULL, *s_mode = NULL, *s_dtype = NULL,
               *s_backend = NULL;
    const char *in_names[MAX_INPUTS], *in_files[MAX_INPUTS];
    int n_in = 0, threads = -1, check_fin = 0, no_skip = 0, vocab_par = 0;
    int64_t chunk_rows = -1, ws_bytes = -1, tile_cols = -1;
    mel_reduction red = MEL_REDUCE_MEAN;
    int red_given = 0;
    mel_params *pl = NULL;

    optscan o = {argc, 0, argv, "run", run_opts, 0};
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
        else if (!strcmp(name, "--no-skip")) no_skip = 1;
        else if (!strcmp(name, "--vocab-parallel")) vocab_par = 1;
        else if (!strcmp(name, "--check-finite")) check_fin = 1;
        else if (!strcmp(name, "--mode")) s_mode = val;
        else if (!strcmp(name, "--dtype")) s_dtype = val;
        else if (!strcmp(name, "--backend")) s_backend = val;
        else if (!strcmp(name, "--param")) param_add(&pl, val);
        else if (!strcmp(name, "--threads")) threads = (int)parse_i64(name, val, 0, 4096);
        else if (!strcmp(name, "--chunk-rows"))
            chunk_rows = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--workspace-bytes")) ws_bytes = parse_bytes(name, val);
        else if (!strcmp(name, "--tile-cols")) tile_cols = parse_i64(name, val, 1, INT64_MAX);
        else if (!strcmp(name, "--reduction")) {
            red_given = 1;
            red = parse_reduction(name, val);
        } else if (!strcmp(name, "--input")) {
            input_add(val, in_names, in_files, &n_in, MAX_INPUTS);
        }
    }
    if (!tname) die(EXIT_USAGE, "run: missing TRANSFORM (see mel list)");
    check_builtin_name("run", tname);
    resolve_param_words("run", tname, &pl);
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
    if (mode == NAIVE && ws_bytes >= 0)
        die(EXIT_USAGE, "--workspace-bytes: cannot be combined with --mode naive (one chunk of N rows "
            "needs what it needs; use --mode fused or recompute with a budget)");
    if (mode == NAIVE && tile_cols > 0)
        die(EXIT_USAGE, "--tile-cols: cannot be combined with --mode naive (whole rows in one chunk)");
    if (chunk_rows > 0 && ws_bytes >= 0)
        die(EXIT_USAGE, "--chunk-rows and --workspace-bytes: give one or the other (a fixed chunk "
            "size takes what its rows need, whatever the budget)");
    /* grpo's loss-type parameters only feed mel_grpo_weights, which the
     * loss_type reduction uses (include/mel.h, GRPO) */
    if (!strcmp(tname, "grpo") && red_given) {
        refuse_loss_type_params("--reduction", tname, pl, "--reduction replaces");
        if (mel_params_get(pl, "seq_len", NULL) && param_value(tname, pl, "importance_sampling_level", 0) == 0)
            die(EXIT_USAGE, "--reduction and --param seq_len: seq_len is read only by "
                "importance_sampling_level=sequence and by grpo's loss-type weights, which "
                "--reduction replaces");
    }
    if (f_gout && !want_grad)
        die(EXIT_USAGE, "--grad-output: no gradient was asked for (--grad-hidden, --grad-weight, --grad-bias)");

    /* the inputs given choose the variant (grpo's use_old_logp and
     * ref_source) unless a --param says so */
    for (int i = 0; i < n_in; i++)
        if (!strcmp(in_names[i], "old_logp") && builtin_has_param(tname, "use_old_logp") &&
            !mel_params_get(pl, "use_old_logp", NULL))
            param_add(&pl, "use_old_logp=1");
    if (f_thidden && builtin_has_param(tname, "ref_source") && !mel_params_get(pl, "ref_source", NULL))
        param_add(&pl, "ref_source=1");
    /* vocabulary parallelism: this process's rows of W */
    int vp_rank = 0, vp_size = 1;
    if (vocab_par) {
#ifdef HAVE_MPI
        int init = 0;
        MPI_Initialized(&init);
        if (!init) MPI_Init(NULL, NULL);
        MPI_Comm_rank(MPI_COMM_WORLD, &vp_rank);
        MPI_Comm_size(MPI_COMM_WORLD, &vp_size);
#else
        die(EXIT_USAGE, "--vocab-parallel: this mel was built without MPI (install libopenmpi-dev and run "
            "configure --with-mpi)");
#endif
    }
    mel_ctx *ctx = make_ctx(s_backend, threads);
    mel_transform *t = build_transform(ctx, "run", tname, pl);
    flag_names names = {f_hidden, f_weight, f_bias, f_thidden, f_tweight, f_labels, in_names, in_files, n_in};
    /* ---- load and check shapes */
    input X = load("--hidden", f_hidden, TAKES_FLOAT | TAKES_F16);
    want_ndim(&X, 2, "2-d [N, D]");
    int64_t N = X.a.shape[0], D = X.a.shape[1];
    /* V: the vocabulary; this process holds rows [v_off, v_off + Vl) of
     * it (all of them without --vocab-parallel) */
    int64_t V, v_off = 0, Vl;
    input W;
    if (!vocab_par) {
        W = load("--weight", f_weight, TAKES_FLOAT | TAKES_F16);
        want_ndim(&W, 2, "2-d [V, D]");
        V = Vl = W.a.shape[0];
    } else {
        input Wh = load_rows("--weight", f_weight, TAKES_FLOAT | TAKES_F16, 0, 0);
        want_ndim(&Wh, 2, "2-d [V, D]");
        V = Wh.a.file_rows;
        if (V < vp_size)
            die(EXIT_USAGE, "--vocab-parallel: --weight %s has V = %" PRId64 " rows, fewer than the %d "
                "processes", f_weight, V, vp_size);
        /* even shards: the first V mod K processes hold one row more */
        Vl = V / vp_size + (vp_rank < V % vp_size);
        v_off = (int64_t)vp_rank * (V / vp_size) + (vp_rank < V % vp_size ? vp_rank : V % vp_size);
        W = load_rows("--weight", f_weight, TAKES_FLOAT | TAKES_F16, v_off, Vl);
    }
    if (W.a.shape[1] != D)
        die(EXIT_USAGE, "--weight: %s: shape (%" PRId64 ", %" PRId64 ") does not match "
            "D = %" PRId64 " of --hidden %s", f_weight, V, W.a.shape[1], D, f_hidden);
#ifdef HAVE_MPI
    if (vocab_par) {
        MPI_Comm world = MPI_COMM_WORLD;
        check(ctx, mel_set_vocab_parallel(ctx, &world, v_off, V, 0), "--vocab-parallel");
    }
#endif
    mel_dtype dt = X.a.dtype;
    if (s_dtype) dt = parse_dtype("--dtype", s_dtype);
    mel_dtype gdt = dt == MEL_F64 ? MEL_F64 : MEL_F32; /* dW, db, saved dX */

    mel_args *a = own(mel_args_new(), free_args);
    if (!a) die(EXIT_FAILED, "out of memory");

    /* on --backend cuda every buffer the library sees is a device copy
     * (to_dev); outputs come back with from_dev */
    const size_t es = mel_dtype_size(dt), ges = mel_dtype_size(gdt);
    void *x = on_dev(&X, dt), *w = on_dev(&W, dt), *b = NULL;
    if (f_bias) {
        input B = vocab_par ? load_rows("--bias", f_bias, TAKES_FLOAT | TAKES_F16, v_off, Vl)
                            : load("--bias", f_bias, TAKES_FLOAT | TAKES_F16);
        if (vocab_par && B.a.file_rows != V)
            die(EXIT_USAGE, "--bias: %s: %" PRId64 " values, want %" PRId64 " (V rows of --weight)", f_bias,
                B.a.file_rows, V);
        want_vec(&B, Vl, "V rows of --weight");
        b = on_dev(&B, dt);
    }
    check(ctx, mel_args_head(a, 0, mel_mat(x, dt, N, D, 0), mel_mat(w, dt, Vl, D, 0), b),
          "--hidden/--weight");
    const void *lab_host = NULL; /* host labels, for grpo's effective mask below */
    mel_dtype lab_dt = MEL_I64;
    if (f_labels) {
        input L = load("--labels", f_labels, TAKES_INT);
        want_vec(&L, N, "N rows of --hidden");
        mel_dtype ldt = L.a.dtype;
        lab_host = L.a.data;
        lab_dt = ldt;
        check(ctx, mel_args_index(a, "labels", on_dev(&L, ldt), ldt, N), "--labels");
    }
    const double *mask = NULL;
    for (int i = 0; i < n_in; i++) {
        char flag[96];
        snprintf(flag, sizeof flag, "--input %s", in_names[i]);
        int in_index = 0; /* an index input other than labels (dpo's seq_ids) */
        for (int k = 0; k < mel_transform_num_inputs(t); k++) {
            int ix = 0;
            const char *in = mel_transform_input(t, k, &ix, NULL);
            if (in && !strcmp(in, in_names[i])) in_index = ix;
        }
        if (in_index) {
            input L = load(flag, in_files[i], TAKES_INT);
            want_vec(&L, N, "N rows of --hidden");
            check(ctx, mel_args_index(a, in_names[i], on_dev(&L, L.a.dtype), L.a.dtype, N), flag);
            continue;
        }
        input I = load(flag, in_files[i], TAKES_FLOAT | TAKES_INT | TAKES_BOOL);
        want_vec(&I, N, "N rows of --hidden");
        /* float32 or float64 as is; integers and bools (a 0/1 mask) -> f64.  grpo's
         * weights read the mask as f64 on the host: keep it there. */
        int is_mask = !strcmp(in_names[i], "mask");
        mel_dtype idt = I.a.dtype == MEL_F32 && !is_mask ? MEL_F32 : MEL_F64;
        if (is_mask) mask = input_as(&I, MEL_F64);
        check(ctx, mel_args_input(a, in_names[i], is_mask ? to_dev(mask, (size_t)N * 8, flag)
                                                          : on_dev(&I, idt), idt, N), flag);
    }
    /* grpo without --reduction: the loss type's global per-row weights */
    double *gw = NULL;
    if (!strcmp(tname, "grpo") && !red_given) {
        gw = xcalloc(N > 0 ? N : 1, sizeof(double), "weights");
        call_check(ctx, mel_grpo_loss_weights(ctx, pl, N, mask, lab_host, lab_dt, 1, gw), "--param loss_type",
                   &names);
        red = MEL_REDUCE_WEIGHTED;
    }
    if (f_thidden) {
        input TX = load("--teacher-hidden", f_thidden, TAKES_FLOAT | TAKES_F16);
        want_ndim(&TX, 2, "2-d [N, D]");
        input TW;
        if (vocab_par) {
            input TWh = load_rows("--teacher-weight", f_tweight, TAKES_FLOAT | TAKES_F16, 0, 0);
            want_ndim(&TWh, 2, "2-d [V, D]");
            if (TWh.a.file_rows != V)
                die(EXIT_USAGE, "--teacher-weight: %s: %" PRId64 " rows, want %" PRId64 " (V of --weight)",
                    f_tweight, TWh.a.file_rows, V);
            TW = load_rows("--teacher-weight", f_tweight, TAKES_FLOAT | TAKES_F16, v_off, Vl);
        } else {
            TW = load("--teacher-weight", f_tweight, TAKES_FLOAT | TAKES_F16);
        }
        want_ndim(&TW, 2, "2-d [V, D]");
        int64_t TD = TX.a.shape[1];
        if (TX.a.shape[0] != N)
            die(EXIT_USAGE, "--teacher-hidden: %s: %" PRId64 " rows, --hidden has %" PRId64,
                f_thidden, TX.a.shape[0], N);
        if (TW.a.shape[0] != Vl || TW.a.shape[1] != TD)
            die(EXIT_USAGE, "--teacher-weight: %s: shape (%" PRId64 ", %" PRId64 "), want (%"
                PRId64 ", %" PRId64 ") (V of --weight, D of --teacher-hidden)",
                f_tweight, vocab_par ? V : TW.a.shape[0], TW.a.shape[1], V, TD);
        void *tx = on_dev(&TX, dt), *tw = on_dev(&TW, dt);
        check(ctx, mel_args_head(a, 1, mel_mat(tx, dt, N, TD, 0), mel_mat(tw, dt, Vl, TD, 0),
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
        input G = load("--grad-output", f_gout, TAKES_FLOAT);
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
        if (f_gw) dw = xcalloc(mul64(Vl, D, "--grad-weight"), ges, "--grad-weight");
        if (f_gb) db = xcalloc(Vl, ges, "--grad-bias");
        dx_d = to_dev(dx, (size_t)(N * D) * es, "--grad-hidden");
        dw_d = to_dev(dw, (size_t)(Vl * D) * ges, "--grad-weight");
        db_d = to_dev(db, (size_t)Vl * ges, "--grad-bias");
        check(ctx, mel_args_grad_head(a, 0, mel_mat(dx_d, dt, N, D, 0), mel_mat(dw_d, gdt, Vl, D, 0),
                                      db_d, MEL_OVERWRITE_DW),
              "--grad-hidden/--grad-weight/--grad-bias");
    }

    /* ---- chunking */
    if (mode == NAIVE) {
        check(ctx, mel_set_chunk_rows(ctx, N > 0 ? N : 1), "--mode naive");
        /* one chunk of N rows needs O(N·V) bytes: lift the default budget */
        check(ctx, mel_set_workspace_limit(ctx, (int64_t)1 << 46), "--mode naive");
    } else {
        if (chunk_rows > 0) check(ctx, mel_set_chunk_rows(ctx, chunk_rows), "--chunk-rows");
        if (ws_bytes >= 0) check(ctx, mel_set_workspace_limit(ctx, ws_bytes), "--workspace-bytes");
        if (tile_cols > 0) check(ctx, mel_set_tile_cols(ctx, tile_cols), "--tile-cols");
    }

    if (check_fin) check(ctx, mel_set_check_finite(ctx, 1), "--check-finite");
    if (no_skip || mode == NAIVE) check(ctx, mel_set_row_skipping(ctx, 0), "--no-skip");

    /* ---- compute */
    char what[64];
    snprintf(what, sizeof what, "run %s", tname);
    callstats cs;
    memset(&cs, 0, sizeof cs);
    const int64_t held_at_call = g_input_mem.live;
    double t0 = now_s();
    if (!want_grad) {
        call_check(ctx, mel_forward(ctx, t, a), what, &names);
        stats_add(&cs, ctx, "forward");
    } else if (mode == RECOMPUTE) {
        call_check(ctx, mel_forward(ctx, t, a), what, &names);
        stats_add(&cs, ctx, "forward");
        call_check(ctx, mel_backward(ctx, t, a), what, &names);
        stats_add(&cs, ctx, "backward");
    } else {
        call_check(ctx, mel_forward_backward(ctx, t, a), what, &names);
        stats_add(&cs, ctx, "forward_backward");
    }
    double wall = now_s() - t0;

    /* ---- outputs (back from the device on --backend cuda) */
    from_dev(y, y_d, (size_t)ny * 8, "--output");
    from_dev(dx, dx_d, (size_t)(N * D) * es, "--grad-hidden");
    from_dev(dw, dw_d, (size_t)(Vl * D) * ges, "--grad-weight");
    from_dev(db, db_d, (size_t)Vl * ges, "--grad-bias");
    int64_t vp_peak_max = 0;
    double vp_wall_max = 0;
#ifdef HAVE_MPI
    if (vocab_par) {
        /* the slowest process's call and the largest workspace of any */
        MPI_Reduce(&wall, &vp_wall_max, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
        int64_t pk = cs.total.peak_workspace_bytes;
        MPI_Reduce(&pk, &vp_peak_max, 1, MPI_INT64_T, MPI_MAX, 0, MPI_COMM_WORLD);
        /* dW and db assembled on process 0; only it writes files and stdout */
        int *cnt = xcalloc(vp_size, sizeof(int), "--vocab-parallel"), *dsp = xcalloc(vp_size, sizeof(int), "--vocab-parallel");
        for (int k = 0; k < vp_size; k++) {
            cnt[k] = (int)(V / vp_size + (k < V % vp_size));
            dsp[k] = k ? dsp[k - 1] + cnt[k - 1] : 0;
        }
        MPI_Datatype row, one = gdt == MEL_F64 ? MPI_DOUBLE : MPI_FLOAT;
        MPI_Type_contiguous((int)D, one, &row);
        MPI_Type_commit(&row);
        if (f_gw) {
            void *full = vp_rank == 0 ? xcalloc(mul64(V, D, "--grad-weight"), ges, "--grad-weight") : NULL;
            MPI_Gatherv(dw, (int)Vl, row, full, cnt, dsp, row, 0, MPI_COMM_WORLD);
            dw = full;
        }
        if (f_gb) {
            void *full = vp_rank == 0 ? xcalloc(V, ges, "--grad-bias") : NULL;
            MPI_Gatherv(db, (int)Vl, one, full, cnt, dsp, one, 0, MPI_COMM_WORLD);
            db = full;
        }
        MPI_Type_free(&row);
        if (vp_rank != 0) f_out = f_gx = f_gw = f_gb = f_stats = NULL;
    }
#endif
    if (vocab_par && vp_rank != 0) {
        /* process 0 writes */
    } else if (f_out) {
        int64_t shp[1] = {N};
        save("--output", f_out, MEL_F64, y, red == MEL_REDUCE_NONE ? 1 : 0, shp);
    } else {
        for (int64_t i = 0; i < ny; i++) printf("%.17g\n", y[i]);
    }
    if (!check_fin) {
        int64_t bad = 0;
        for (int64_t i = 0; i < ny; i++) bad += !isfinite(y[i]);
        if (bad)
            fprintf(stderr, "mel: note: %" PRId64 " of %" PRId64 " values of y are NaN or Inf; "
                    "non-finite inputs propagate unless --check-finite is given (it names the "
                    "first one)\n", bad, ny);
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
        json_stats(f, &cs.total, cs.total_active, cs.total_tiles);
        struct rusage ru;
        int64_t rss = getrusage(RUSAGE_SELF, &ru) == 0 ? (int64_t)ru.ru_maxrss * 1024 : -1;
        if (vocab_par) {
            int64_t cb = 0;
            double csec = 0;
            for (int i = 0; i < cs.ncalls && i < 2; i++) cb += cs.comm_bytes[i], csec += cs.comm_seconds[i];
            fprintf(f, ",\n \"processes\": %d, \"comm_bytes\": %" PRId64 ", \"comm_seconds\": %.9g, "
                    "\"vocab_rows\": %" PRId64 ", \"wall_seconds_max_process\": %.9g, "
                    "\"peak_workspace_bytes_max_process\": %" PRId64, vp_size, cb, csec, Vl, vp_wall_max, vp_peak_max);
        }
        fprintf(f, ",\n \"input_bytes_held\": %" PRId64 ", \"input_bytes_peak\": %" PRId64
                ", \"input_bytes_converted\": %" PRId64 ", \"max_rss_bytes\": %" PRId64,
                held_at_call, g_input_mem.peak, g_input_mem.converted, rss);
        fprintf(f, ",\n ");
        json_info(f);
        fprintf(f, ",\n \"calls\": [");
        for (int i = 0; i < cs.ncalls && i < 2; i++) {
            fprintf(f, "%s{\"call\": \"%s\", ", i ? ", " : "", cs.names[i]);
            json_stats(f, &cs.s[i], cs.active[i], cs.tiles[i]);
            fprintf(f, "}");
        }
        fprintf(f, "]}\n");
        if (ferror(f) | (fclose(f) != 0))
            die(EXIT_USAGE, "--stats: %s: write failed", f_stats);
    }
    release_all();
#ifdef HAVE_MPI
    if (vocab_par) MPI_Finalize();
#endif
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "mel: stdout: write failed\n");
        return EXIT_FAILED;
    }
    return 0;
}

