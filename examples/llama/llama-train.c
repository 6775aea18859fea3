/*
 * llama-train -- train a Llama decoder in C with the output layer's loss
 * computed by libmel (--head mel) or by a full-logits fp32 head written
 * here (--head naive), or both side by side (--compare).
 *
 * --compare keeps two copies of the parameters (and of the optimizer
 * state) that start from the same initialisation and see the same batches;
 * the gradient buffer and the activations are shared, since the two models
 * run one after the other within a step.  So memory is
 *   3 × params (SGD) or 7 × params (AdamW) + activations + the heads,
 * about 15 GB for llama-3.2-1b with SGD.
 *
 * --task grpo trains the policy online with GRPO instead (grpo.h; the
 * "GRPO" section of doc/llama.md): libmel's "grpo" transform, or a naive
 * full-logits GRPO head, or both (--compare: two trained copies;
 * --compare --lockstep: one policy, both heads on it every step).
 *
 * Exit status: 0 ok; 1 runtime failure (I/O, memory, libmel error,
 * non-finite loss); 2 bad command line; 3 --compare found a step whose
 * relative loss difference exceeds --tol.
 *
 * See doc/llama.md for the flags, the checkpoint format and results.
 */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "data.h"
#include "grpo.h"
#include "head.h"
#include "mel.h"
#include "model.h"

/* ------------------------------------------------------------------ flags */

typedef struct options {
    const char *config_name;
    llama_config cfg;
    int set_dim, set_layers, set_heads, set_kv, set_ffn, set_vocab, set_theta,
        set_tied, set_eps;
    int steps, batch, seq;
    double lr;
    int lr_set;
    double weight_decay;
    int cosine;     /* 1: cosine decay to 0.1·lr over the run */
    int warmup;     /* linear warm-up steps                    */
    double clip;    /* global gradient-norm clip, 0 = off      */
    llama_opt_kind optim;
    uint64_t seed;
    int threads;
    const char *data;
    int head_mel; /* 1 mel, 0 naive (when not comparing) */
    int compare;
    double tol;
    int64_t chunk_rows, workspace_bytes;
    const char *save, *load, *log_csv, *plot;
    /* --task grpo (doc/llama.md, "GRPO") */
    int task_grpo;
    const char *ce_flag;   /* a flag given that only --task ce reads   */
    const char *grpo_flag; /* a flag given that only --task grpo reads */
    int prompts, group, max_completion, num_iterations, loss_type,
        seq_level, scale_rewards, head_only, lockstep;
    double temperature, beta, eps_low, eps_high, delta;
} options;

static const char *prog = "llama-train";

static void usage(FILE *f)
{
    fprintf(f,
"usage: %s [flags]\n"
"  --config tiny|llama-3.2-1b   preset (default tiny)\n"
"  --dim N --layers N --heads N --kv-heads N --ffn N --vocab N\n"
"  --rope-theta X --rms-eps X --tied 0|1        override the preset\n"
"  --steps N (100) --batch N (8) --seq N (64)\n"
"  --optim adamw|sgd (adamw) --lr X (adamw 1e-3, sgd 0.05)\n"
"  --lr-schedule cosine|constant (cosine: to 0.1·lr at the last step)\n"
"  --warmup N (0)               linear warm-up steps\n"
"  --clip X (0 = off)           clip the global gradient norm to X\n"
"  --weight-decay X (0)         decoupled, matrices only\n"
"  --seed N (1234)              init and batch order\n"
"  --threads N (0 = default)    OpenMP, OpenBLAS and libmel threads\n"
"  --data FILE                  training text (default: %s/*)\n"
"  --head mel|naive (mel)       output layer + CE implementation\n"
"  --compare                    train both heads side by side\n"
"  --tol X (1e-5)               --compare: max allowed relative difference\n"
"  --chunk-rows N (0 = auto)    libmel rows per chunk\n"
"  --workspace-bytes N[k|M|G]   libmel workspace budget (0 = default)\n"
"  --load FILE --save FILE      checkpoint (format in doc/llama.md)\n"
"  --log-csv FILE --plot FILE.png\n"
"  --task ce|grpo (ce)          ce: language modelling on --data;\n"
"                               grpo: online GRPO, continue 3 digits\n"
"GRPO (--task grpo only; doc/llama.md):\n"
"  --prompts N (16) --group G (8)   prompts per batch, completions per prompt\n"
"  --max-completion C (4)       completion length limit (end token '\\n')\n"
"  --temperature X (1)          sampling and loss temperature\n"
"  --num-iterations K (2)       optimizer steps per sampled batch\n"
"  --loss-type grpo|bnpo|dr_grpo|dapo (dapo)\n"
"  --importance-sampling token|sequence (token; sequence = GSPO)\n"
"  --beta X (0.04)              KL to the initial policy (0 = none)\n"
"  --epsilon-low X (0.2) --epsilon-high X (0.28) --delta X (0 = off)\n"
"  --scale-rewards group|none (group)\n"
"  --lockstep                   with --compare: one policy, both heads on\n"
"                               it every step, updated by the mel head\n"
"  --head-only                  one call of each head on random hidden\n"
"                               states of the configured shape (memory)\n",
            prog, LLAMA_DEFAULT_CORPUS_DIR);
}

static void die_flag(const char *flag, const char *val, const char *why)
{
    fprintf(stderr, "%s: bad value for %s: '%s'%s%s\n", prog, flag,
            val ? val : "(missing)", why ? ": " : "", why ? why : "");
    exit(2);
}

static long long parse_int(const char *flag, const char *v, long long lo,
                           long long hi)
{
    if (!v) die_flag(flag, v, "missing value");
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end) die_flag(flag, v, "not an integer");
    if (x < lo || x > hi) {
        char why[96];
        snprintf(why, sizeof why, "must be in [%lld, %lld]", lo, hi);
        die_flag(flag, v, why);
    }
    return x;
}

static int64_t parse_bytes(const char *flag, const char *v)
{
    if (!v) die_flag(flag, v, "missing value");
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || x < 0) die_flag(flag, v, "not a byte count");
    int64_t mul = 1;
    if (*end == 'k' || *end == 'K') mul = 1024, end++;
    else if (*end == 'm' || *end == 'M') mul = 1024 * 1024, end++;
    else if (*end == 'g' || *end == 'G') mul = 1024LL * 1024 * 1024, end++;
    if (*end) die_flag(flag, v, "expected N, Nk, NM or NG");
    if (x > INT64_MAX / mul) die_flag(flag, v, "too large");
    return x * mul;
}

static double parse_double(const char *flag, const char *v, double lo,
                           double hi)
{
    if (!v) die_flag(flag, v, "missing value");
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || end == v || *end || !isfinite(x))
        die_flag(flag, v, "not a number");
    if (x < lo || x > hi) {
        char why[96];
        snprintf(why, sizeof why, "must be in [%g, %g]", lo, hi);
        die_flag(flag, v, why);
    }
    return x;
}

static void parse_args(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->config_name = "tiny";
    o->steps = 100;
    o->batch = 8;
    o->seq = 64;
    o->optim = OPT_ADAMW;
    o->seed = 1234;
    o->head_mel = 1;
    o->tol = 1e-5;
    o->cosine = 1;
    o->prompts = 16;
    o->group = 8;
    o->max_completion = 4;
    o->num_iterations = 2;
    o->loss_type = MEL_GRPO_DAPO;
    o->scale_rewards = 1;
    o->temperature = 1.0;
    o->beta = 0.04;
    o->eps_low = 0.2;
    o->eps_high = 0.28;
    llama_config over = {0};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        const char *eq = strchr(f, '=');
        char name[64];
        const char *v;
        if (strncmp(f, "--", 2) != 0) die_flag("argument", f, "flags start with --");
        if (eq && (size_t)(eq - f) < sizeof name) {
            memcpy(name, f, (size_t)(eq - f));
            name[eq - f] = 0;
            v = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", f);
            v = NULL;
        }
#define VAL() (v ? v : (i + 1 < argc ? argv[++i] : NULL))
        if (!strcmp(name, "--help") || !strcmp(name, "-h")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(name, "--compare")) {
            if (v) die_flag(name, v, "takes no value");
            o->compare = 1;
        } else if (!strcmp(name, "--config")) {
            o->config_name = VAL();
            llama_config tmp;
            if (!o->config_name || llama_config_preset(o->config_name, &tmp) != 0)
                die_flag(name, o->config_name, "expected tiny or llama-3.2-1b");
        } else if (!strcmp(name, "--dim")) {
            over.dim = (int)parse_int(name, VAL(), 2, 1 << 16); o->set_dim = 1;
        } else if (!strcmp(name, "--layers")) {
            over.n_layers = (int)parse_int(name, VAL(), 1, 400); o->set_layers = 1;
        } else if (!strcmp(name, "--heads")) {
            over.n_heads = (int)parse_int(name, VAL(), 1, 4096); o->set_heads = 1;
        } else if (!strcmp(name, "--kv-heads")) {
            over.n_kv_heads = (int)parse_int(name, VAL(), 1, 4096); o->set_kv = 1;
        } else if (!strcmp(name, "--ffn")) {
            over.ffn = (int)parse_int(name, VAL(), 1, 1 << 20); o->set_ffn = 1;
        } else if (!strcmp(name, "--vocab")) {
            over.vocab = (int)parse_int(name, VAL(), 256, 1 << 24); o->set_vocab = 1;
        } else if (!strcmp(name, "--rope-theta")) {
            over.rope_theta = parse_double(name, VAL(), 1.0000001, 1e12); o->set_theta = 1;
        } else if (!strcmp(name, "--rms-eps")) {
            over.rms_eps = parse_double(name, VAL(), 1e-12, 1.0); o->set_eps = 1;
        } else if (!strcmp(name, "--tied")) {
            over.tied = (int)parse_int(name, VAL(), 0, 1); o->set_tied = 1;
        } else if (!strcmp(name, "--steps")) {
            o->steps = (int)parse_int(name, VAL(), 1, 100000000);
        } else if (!strcmp(name, "--batch")) {
            o->batch = (int)parse_int(name, VAL(), 1, 1 << 20);
            o->ce_flag = "--batch";
        } else if (!strcmp(name, "--seq")) {
            o->seq = (int)parse_int(name, VAL(), 1, 1 << 16);
            o->ce_flag = "--seq";
        } else if (!strcmp(name, "--lr")) {
            o->lr = parse_double(name, VAL(), 0.0, 1e3); o->lr_set = 1;
        } else if (!strcmp(name, "--lr-schedule")) {
            const char *x = VAL();
            if (x && !strcmp(x, "cosine")) o->cosine = 1;
            else if (x && !strcmp(x, "constant")) o->cosine = 0;
            else die_flag(name, x, "expected cosine or constant");
        } else if (!strcmp(name, "--warmup")) {
            o->warmup = (int)parse_int(name, VAL(), 0, 100000000);
        } else if (!strcmp(name, "--clip")) {
            o->clip = parse_double(name, VAL(), 0.0, 1e30);
        } else if (!strcmp(name, "--weight-decay")) {
            o->weight_decay = parse_double(name, VAL(), 0.0, 1e3);
        } else if (!strcmp(name, "--optim")) {
            const char *x = VAL();
            if (x && !strcmp(x, "adamw")) o->optim = OPT_ADAMW;
            else if (x && !strcmp(x, "sgd")) o->optim = OPT_SGD;
            else die_flag(name, x, "expected adamw or sgd");
        } else if (!strcmp(name, "--seed")) {
            o->seed = (uint64_t)parse_int(name, VAL(), 0, INT64_MAX);
        } else if (!strcmp(name, "--threads")) {
            o->threads = (int)parse_int(name, VAL(), 0, 4096);
        } else if (!strcmp(name, "--data")) {
            o->data = VAL();
            if (!o->data || !*o->data) die_flag(name, o->data, "expected a file");
            o->ce_flag = "--data";
        } else if (!strcmp(name, "--head")) {
            const char *x = VAL();
            if (x && !strcmp(x, "mel")) o->head_mel = 1;
            else if (x && !strcmp(x, "naive")) o->head_mel = 0;
            else die_flag(name, x, "expected mel or naive");
        } else if (!strcmp(name, "--tol")) {
            o->tol = parse_double(name, VAL(), 0.0, 1.0);
        } else if (!strcmp(name, "--chunk-rows")) {
            o->chunk_rows = parse_int(name, VAL(), 0, INT64_MAX);
        } else if (!strcmp(name, "--workspace-bytes")) {
            o->workspace_bytes = parse_bytes(name, VAL());
        } else if (!strcmp(name, "--save")) {
            if (!(o->save = VAL())) die_flag(name, NULL, "expected a file");
        } else if (!strcmp(name, "--load")) {
            if (!(o->load = VAL())) die_flag(name, NULL, "expected a file");
        } else if (!strcmp(name, "--log-csv")) {
            if (!(o->log_csv = VAL())) die_flag(name, NULL, "expected a file");
        } else if (!strcmp(name, "--plot")) {
            if (!(o->plot = VAL())) die_flag(name, NULL, "expected a file");
        } else if (!strcmp(name, "--task")) {
            const char *x = VAL();
            if (x && !strcmp(x, "ce")) o->task_grpo = 0;
            else if (x && !strcmp(x, "grpo")) o->task_grpo = 1;
            else die_flag(name, x, "expected ce or grpo");
        } else if (!strcmp(name, "--prompts")) {
            o->prompts = (int)parse_int(name, VAL(), 1, 1 << 20);
            o->grpo_flag = "--prompts";
        } else if (!strcmp(name, "--group")) {
            o->group = (int)parse_int(name, VAL(), 1, 1 << 20);
            o->grpo_flag = "--group";
        } else if (!strcmp(name, "--max-completion")) {
            o->max_completion = (int)parse_int(name, VAL(), 1, 1 << 16);
            o->grpo_flag = "--max-completion";
        } else if (!strcmp(name, "--temperature")) {
            o->temperature = parse_double(name, VAL(), 1e-3, 1e3);
            o->grpo_flag = "--temperature";
        } else if (!strcmp(name, "--num-iterations")) {
            o->num_iterations = (int)parse_int(name, VAL(), 1, 1000);
            o->grpo_flag = "--num-iterations";
        } else if (!strcmp(name, "--loss-type")) {
            const char *x = VAL();
            static const char *lt[] = {"grpo", "bnpo", "dr_grpo", "dapo"};
            int k = -1;
            for (int j = 0; j < 4 && x; j++)
                if (!strcmp(x, lt[j])) k = j;
            if (k < 0) die_flag(name, x, "expected grpo, bnpo, dr_grpo or dapo");
            o->loss_type = k;
            o->grpo_flag = "--loss-type";
        } else if (!strcmp(name, "--importance-sampling")) {
            const char *x = VAL();
            if (x && !strcmp(x, "token")) o->seq_level = 0;
            else if (x && !strcmp(x, "sequence")) o->seq_level = 1;
            else die_flag(name, x, "expected token or sequence");
            o->grpo_flag = "--importance-sampling";
        } else if (!strcmp(name, "--beta")) {
            o->beta = parse_double(name, VAL(), 0.0, 1e3);
            o->grpo_flag = "--beta";
        } else if (!strcmp(name, "--epsilon-low")) {
            o->eps_low = parse_double(name, VAL(), 0.0, 1.0);
            o->grpo_flag = "--epsilon-low";
        } else if (!strcmp(name, "--epsilon-high")) {
            o->eps_high = parse_double(name, VAL(), 0.0, 1e3);
            o->grpo_flag = "--epsilon-high";
        } else if (!strcmp(name, "--delta")) {
            o->delta = parse_double(name, VAL(), 0.0, 1e3);
            if (o->delta > 0 && o->delta <= 1)
                die_flag(name, v ? v : argv[i], "must be 0 (off) or > 1");
            o->grpo_flag = "--delta";
        } else if (!strcmp(name, "--scale-rewards")) {
            const char *x = VAL();
            if (x && !strcmp(x, "group")) o->scale_rewards = 1;
            else if (x && !strcmp(x, "none")) o->scale_rewards = 0;
            else die_flag(name, x, "expected group or none");
            o->grpo_flag = "--scale-rewards";
        } else if (!strcmp(name, "--lockstep")) {
            if (v) die_flag(name, v, "takes no value");
            o->lockstep = 1;
            o->grpo_flag = "--lockstep";
        } else if (!strcmp(name, "--head-only")) {
            if (v) die_flag(name, v, "takes no value");
            o->head_only = 1;
            o->grpo_flag = "--head-only";
        } else {
            fprintf(stderr, "%s: unknown flag '%s' (see --help)\n", prog, f);
            exit(2);
        }
#undef VAL
    }

    /* The configuration: the checkpoint's when loading, else the preset;
     * then the overrides (which must agree with a checkpoint). */
    char err[512];
    if (o->load) {
        if (llama_ckpt_peek(o->load, &o->cfg, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "%s: --load: %s\n", prog, err);
            exit(1);
        }
        struct { int set; const char *flag; double want, have; } chk[] = {
            {o->set_dim, "--dim", over.dim, o->cfg.dim},
            {o->set_layers, "--layers", over.n_layers, o->cfg.n_layers},
            {o->set_heads, "--heads", over.n_heads, o->cfg.n_heads},
            {o->set_kv, "--kv-heads", over.n_kv_heads, o->cfg.n_kv_heads},
            {o->set_ffn, "--ffn", over.ffn, o->cfg.ffn},
            {o->set_vocab, "--vocab", over.vocab, o->cfg.vocab},
            {o->set_tied, "--tied", over.tied, o->cfg.tied},
            {o->set_theta, "--rope-theta", over.rope_theta, o->cfg.rope_theta},
            {o->set_eps, "--rms-eps", over.rms_eps, o->cfg.rms_eps},
        };
        for (size_t i = 0; i < sizeof chk / sizeof chk[0]; i++)
            if (chk[i].set && chk[i].want != chk[i].have) {
                fprintf(stderr, "%s: bad value for %s: '%g': checkpoint %s has %g\n",
                        prog, chk[i].flag, chk[i].want, o->load, chk[i].have);
                exit(2);
            }
    } else {
        llama_config_preset(o->config_name, &o->cfg);
        if (o->set_dim) o->cfg.dim = over.dim;
        if (o->set_layers) o->cfg.n_layers = over.n_layers;
        if (o->set_heads) o->cfg.n_heads = over.n_heads;
        if (o->set_kv) o->cfg.n_kv_heads = over.n_kv_heads;
        if (o->set_ffn) o->cfg.ffn = over.ffn;
        if (o->set_vocab) o->cfg.vocab = over.vocab;
        if (o->set_theta) o->cfg.rope_theta = over.rope_theta;
        if (o->set_eps) o->cfg.rms_eps = over.rms_eps;
        if (o->set_tied) o->cfg.tied = over.tied;
    }
    if (llama_config_check(&o->cfg, err, sizeof err) != 0) {
        fprintf(stderr, "%s: bad configuration: %s\n", prog, err);
        exit(2);
    }
    if (o->cfg.vocab < 256) {
        fprintf(stderr, "%s: bad value for --vocab: '%d': byte tokens need >= 256\n",
                prog, o->cfg.vocab);
        exit(2);
    }
    if (o->task_grpo && o->ce_flag) {
        fprintf(stderr, "%s: %s does not apply to --task grpo (its batch is "
                        "--prompts x --group completions of the sequence task)\n",
                prog, o->ce_flag);
        exit(2);
    }
    if (!o->task_grpo && o->grpo_flag) {
        fprintf(stderr, "%s: %s needs --task grpo (the task is ce)\n", prog,
                o->grpo_flag);
        exit(2);
    }
    if (o->task_grpo && o->scale_rewards && o->group < 2) {
        fprintf(stderr, "%s: bad value for --group: '%d': --scale-rewards group "
                        "needs at least 2 completions per prompt\n",
                prog, o->group);
        exit(2);
    }
    if (o->lockstep && !o->compare) {
        fprintf(stderr, "%s: --lockstep needs --compare (it runs the naive head "
                        "beside the mel head)\n", prog);
        exit(2);
    }
    if (o->task_grpo && o->head_only && (o->load || o->save)) {
        fprintf(stderr, "%s: --head-only and %s contradict: --head-only "
                        "builds no model\n", prog, o->load ? "--load" : "--save");
        exit(2);
    }
    if (!o->lr_set)
        o->lr = o->optim == OPT_ADAMW ? (o->task_grpo ? 3e-3 : 1e-3) : 0.05;
    if (o->task_grpo && (int64_t)o->prompts * o->group *
                                (GRPO_PROMPT_LEN + o->max_completion) > INT32_MAX / 2) {
        fprintf(stderr, "%s: bad value for --prompts: '%d': prompts·group·"
                        "(max-completion + %d) too large\n",
                prog, o->prompts, GRPO_PROMPT_LEN);
        exit(2);
    }
    if ((int64_t)o->batch * o->seq > INT32_MAX / 2) {
        fprintf(stderr, "%s: bad value for --batch: '%d': batch·seq too large\n",
                prog, o->batch);
        exit(2);
    }
}

/* ---------------------------------------------------------------- helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Peak resident set size of this process in bytes (VmHWM), -1 if unknown. */
static int64_t peak_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int64_t kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lld kB", (long long *)&kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static const char *human(int64_t b, char *buf, size_t n)
{
    if (b < 0) snprintf(buf, n, "?");
    else if (b >= (1LL << 30)) snprintf(buf, n, "%.2f GiB", (double)b / (1LL << 30));
    else if (b >= (1LL << 20)) snprintf(buf, n, "%.2f MiB", (double)b / (1LL << 20));
    else if (b >= 1024) snprintf(buf, n, "%.1f KiB", (double)b / 1024);
    else snprintf(buf, n, "%lld B", (long long)b);
    return buf;
}

/* One model being trained: parameters, optimizer and which head it uses. */
typedef struct trainee {
    const char *name; /* "mel" or "naive" */
    int use_mel;
    float *params;
    llama_optim opt;
    double loss, step_s, head_s, total_s, grad_norm;
    double first_loss;
} trainee;

/* Clip the global gradient norm (when clip > 0; L2 accumulated in double), then one
 * optimizer step. */
static void clip_and_step(trainee *m, const llama_config *c,
                          const llama_layout *lo, float *g, double clip)
{
    if (clip > 0) {
        double ss = 0;
        const int64_t n = lo->total;
#pragma omp parallel for schedule(static) reduction(+ : ss)
        for (int64_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
        m->grad_norm = sqrt(ss);
        if (m->grad_norm > clip) {
            const float s = (float)(clip / m->grad_norm);
#pragma omp parallel for schedule(static)
            for (int64_t i = 0; i < n; i++) g[i] *= s;
        }
    }
    llama_optim_step(&m->opt, c, lo, m->params, g);
}

/* One training step of model m on (inputs, targets): forward, head,
 * backward into the shared gradient buffer g, optimizer update.
 * 0, or -1 with a message printed. */
static int train_step(trainee *m, const llama_config *c, const llama_layout *lo,
                      llama_acts *a, float *g, head_mel *hm, head_naive *hn,
                      const int32_t *inputs, const int32_t *targets,
                      double clip)
{
    double t0 = now_s();
    llama_forward(c, lo, m->params, inputs, a);
    double t1 = now_s();
    /* X = hn [N, D], W = lm_head [V, D] (the embedding when tied). */
    const float *W = m->params + lo->lm_head;
    float *dW = g + lo->lm_head;
    if (m->use_mel) {
        if (head_mel_run(hm, a->hn, W, a->N, c->dim, c->vocab, targets, a->dhn,
                         dW, &m->loss) != 0) {
            fprintf(stderr, "%s: libmel head failed: %s\n", prog, hm->err);
            return -1;
        }
    } else {
        head_naive_run(hn, a->hn, W, c->dim, targets, a->dhn, dW, &m->loss);
    }
    double t2 = now_s();
    llama_backward(c, lo, m->params, inputs, a, g);
    clip_and_step(m, c, lo, g, clip);
    double t3 = now_s();
    m->head_s = t2 - t1;
    m->step_s = t3 - t0;
    m->total_s += m->step_s;
    if (!isfinite(m->loss)) {
        fprintf(stderr, "%s: %s head: loss is %g\n", prog, m->name, m->loss);
        return -1;
    }
    return 0;
}

static int write_plot(const char *png, const char *csv, const char *title,
                      int compare)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        printf("plot: gnuplot not found; %s not written (data in %s)\n", png, csv);
        return 0;
    }
    char script[4096 + 256];
    FILE *f;
    char sp[4096];
    snprintf(sp, sizeof sp, "%s.gp", png);
    if (!(f = fopen(sp, "w"))) {
        fprintf(stderr, "%s: %s: %s\n", prog, sp, strerror(errno));
        return -1;
    }
    fprintf(f,
            "set datafile separator ','\n"
            "set terminal png size 900,700\n"
            "set output '%s'\n"
            "set key autotitle columnhead\n",
            png);
    if (compare) {
        fprintf(f,
                "set multiplot layout 2,1 title '%s'\n"
                "set ylabel 'training loss'\n"
                /* the two curves coincide to ~1e-7: a wide light line under a
                 * thin dark one with points keeps both visible */
                "plot '%s' using 1:2 with lines lw 7 lc rgb '#9ecae1' title 'mel head (wide, light)', "
                "'' using 1:3 with linespoints lw 1.5 lc rgb '#08306b' pt 7 ps 0.4 pi 10 "
                "title 'naive head (thin, dark; on top)'\n"
                "set logscale y\n"
                "set format y '%%.0e'\n"
                "set xlabel 'step'\n"
                "set ylabel '|mel - naive| / |naive|'\n"
                "plot '%s' using 1:($4 > 0 ? $4 : 1e-12) with points pt 7 ps 0.5 "
                "title 'relative loss difference'\n"
                "unset multiplot\n",
                title, csv, csv);
    } else {
        fprintf(f,
                "set title '%s'\nset xlabel 'step'\nset ylabel 'training loss'\n"
                "plot '%s' using 1:2 with lines lw 2 title 'loss'\n",
                title, csv);
    }
    fclose(f);
    snprintf(script, sizeof script, "gnuplot '%s'", sp);
    if (system(script) != 0) {
        fprintf(stderr, "%s: gnuplot failed on %s\n", prog, sp);
        return -1;
    }
    printf("plot: %s\n", png);
    return 0;
}

/* ------------------------------------------------------------------- GRPO */

static const char *loss_type_name[] = {"grpo", "bnpo", "dr_grpo", "dapo"};

static int write_grpo_plot(const char *png, const char *csv, const char *title,
                           int compare)
{
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        printf("plot: gnuplot not found; %s not written (data in %s)\n", png, csv);
        return 0;
    }
    char sp[4096], script[4096 + 256];
    snprintf(sp, sizeof sp, "%s.gp", png);
    FILE *f = fopen(sp, "w");
    if (!f) {
        fprintf(stderr, "%s: %s: %s\n", prog, sp, strerror(errno));
        return -1;
    }
    fprintf(f,
            "set datafile separator ','\n"
            "set terminal png size 900,%d\n"
            "set output '%s'\n"
            "set multiplot layout %d,1 title '%s'\n"
            "set ylabel 'mean reward'\nset yrange [0:1]\n"
            "plot '%s' using 1:2 with lines lw 2 title 'reward (batch mean)'\n"
            "set autoscale y\nset ylabel 'GRPO loss'\n",
            compare ? 900 : 700, png, compare ? 3 : 2, title, csv);
    if (compare)
        fprintf(f,
                "plot '%s' using 1:3 with lines lw 2 title 'mel head', "
                "'' using 1:4 with lines dt 2 lw 2 title 'naive head'\n"
                "set logscale y\nset format y '%%.0e'\nset xlabel 'step'\n"
                "set ylabel 'reldiff'\n"
                "plot '%s' using 1:($5 > 0 ? $5 : 1e-12) with points pt 7 ps 0.5 "
                "title '|mel - naive| / max(|naive|, sum w|l|)'\n",
                csv, csv);
    else
        fprintf(f, "set xlabel 'step'\n"
                   "plot '%s' using 1:3 with lines lw 2 title 'loss'\n", csv);
    fprintf(f, "unset multiplot\n");
    fclose(f);
    snprintf(script, sizeof script, "gnuplot '%s'", sp);
    if (system(script) != 0) {
        fprintf(stderr, "%s: gnuplot failed on %s\n", prog, sp);
        return -1;
    }
    printf("plot: %s\n", png);
    return 0;
}

/* |a − b| relative to the loss's scale: max(|b|, Σ w·|ℓ|).  The GRPO loss
 * is a sum of terms that cancel by construction (advantages are centred per
 * group), so |b| alone can be ~0 while every term is O(1). */
static double grpo_reldiff(double a, const grpo_stats *nv)
{
    return fabs(a - nv->loss) / fmax(fmax(fabs(nv->loss), nv->abs_loss), 1e-30);
}

/* --head-only: one call of each head on random inputs of the configured
 * shape, for the memory figures (no model). */
static int grpo_head_only(const options *o, const grpo_cfg *gc, int use_mel,
                          int use_naive)
{
    const llama_config *c = &o->cfg;
    const int64_t N = (int64_t)gc->B * gc->C, D = c->dim, V = c->vocab;
    char b1[32], b2[32];
    int rc = 1;
    float *X = malloc((size_t)(N * D) * sizeof(float));
    float *Xr = malloc((size_t)(N * D) * sizeof(float));
    float *W = malloc((size_t)(V * D) * sizeof(float));
    float *Wr = malloc((size_t)(V * D) * sizeof(float));
    float *dX = malloc((size_t)(N * D) * sizeof(float));
    float *dW = malloc((size_t)(V * D) * sizeof(float));
    int32_t *lab = malloc((size_t)N * sizeof(int32_t));
    double *mask = malloc((size_t)N * sizeof(double));
    double *adv = malloc((size_t)N * sizeof(double));
    double *old = malloc((size_t)N * sizeof(double));
    grpo_mel hm;
    grpo_naive hn;
    memset(&hm, 0, sizeof hm);
    memset(&hn, 0, sizeof hn);
    if (!X || !Xr || !W || !Wr || !dX || !dW || !lab || !mask || !adv || !old) {
        fprintf(stderr, "%s: --head-only: out of memory for the inputs\n", prog);
        goto out;
    }
    /* hidden rows ~ N(0, 1) (RMS-normed), W ~ N(0, 0.02²), the reference a
     * perturbed copy; completions of random length, old_logp near the
     * current log-probabilities (−log V ± 0.1) */
    llama_rng r;
    llama_rng_seed(&r, o->seed);
    for (int64_t i = 0; i < N * D; i++) {
        X[i] = (float)llama_rng_normal(&r);
        Xr[i] = X[i] + 0.1f * (float)llama_rng_normal(&r);
    }
    for (int64_t i = 0; i < V * D; i++) {
        W[i] = 0.02f * (float)llama_rng_normal(&r);
        Wr[i] = W[i] + 0.002f * (float)llama_rng_normal(&r);
    }
    for (int b = 0; b < gc->B; b++) {
        int len = 1 + (int)(llama_rng_u64(&r) % (uint64_t)gc->C);
        double A = llama_rng_normal(&r);
        for (int t = 0; t < gc->C; t++) {
            int64_t i = (int64_t)b * gc->C + t;
            lab[i] = (int32_t)(llama_rng_u64(&r) % (uint64_t)V);
            mask[i] = t < len;
            adv[i] = A;
            old[i] = -log((double)V) + 0.1 * llama_rng_normal(&r);
        }
    }
    printf("head-only: N = %lld rows (%d x %d), D = %lld, V = %lld\n",
           (long long)N, gc->B, gc->C, (long long)D, (long long)V);
    grpo_stats sm, sn;
    if (use_mel) {
        if (grpo_mel_init(&hm, gc, o->threads, o->chunk_rows, o->workspace_bytes) != 0) {
            fprintf(stderr, "%s: libmel: %s\n", prog, hm.err);
            goto out;
        }
        double t0 = now_s();
        if (grpo_mel_run(&hm, gc, X, W, Xr, Wr, D, V, lab, mask, adv, old, dX, dW,
                         &sm) != 0) {
            fprintf(stderr, "%s: libmel head failed: %s\n", prog, hm.err);
            goto out;
        }
        printf("head-only: mel   loss %.9f in %.2f s; peak workspace %s "
               "(chunk rows %lld, %lld chunks); peak RSS so far %s\n",
               sm.loss, now_s() - t0, human(hm.peak_workspace, b1, sizeof b1),
               (long long)hm.last.chunk_rows, (long long)hm.last.chunks,
               human(peak_rss_bytes(), b2, sizeof b2));
    }
    if (use_naive) {
        if (grpo_naive_init(&hn, N, V, gc->beta != 0) != 0) {
            fprintf(stderr, "%s: out of memory for the naive head's logits (%s)\n",
                    prog, human(3 * N * V * 4, b1, sizeof b1));
            goto out;
        }
        double t0 = now_s();
        grpo_naive_run(&hn, gc, X, W, Xr, Wr, D, lab, mask, adv, old, dX, dW, &sn);
        printf("head-only: naive loss %.9f in %.2f s; logits + gradient + "
               "reference logits %s; peak RSS %s\n",
               sn.loss, now_s() - t0, human(grpo_naive_bytes(&hn), b1, sizeof b1),
               human(peak_rss_bytes(), b2, sizeof b2));
    }
    if (use_mel && use_naive)
        printf("head-only: reldiff %.3e\n", grpo_reldiff(sm.loss, &sn));
    printf("head-only: inputs X, Xr, W, Wr, dX, dW: %s (not counted above)\n",
           human((3 * N * D + 3 * V * D) * 4, b1, sizeof b1));
    rc = 0;
out:
    grpo_mel_free(&hm);
    grpo_naive_free(&hn);
    free(X); free(Xr); free(W); free(Wr); free(dX); free(dW);
    free(lab); free(mask); free(adv); free(old);
    return rc;
}

static int run_grpo(const options *o)
{
    const llama_config *c = &o->cfg;
    char err[512], b1[32], b2[32], b3[32];
    int rc = 1;
    const int P = GRPO_PROMPT_LEN, C = o->max_completion, G = o->group;
    const int B = o->prompts * G, Tm = P + C - 1;
    const int64_t N = (int64_t)B * C, D = c->dim, V = c->vocab;
    /* --compare: two trained copies (mel, naive); --lockstep: one copy
     * trained by the mel head, the naive head run beside it on the same
     * hidden states every step */
    const int ncopies = o->compare && !o->lockstep ? 2 : 1;
    const int nheads = o->compare ? 2 : 1;
    grpo_cfg gc = {.loss_type = o->loss_type, .seq_level = o->seq_level,
                   .beta = o->beta, .eps_low = o->eps_low, .eps_high = o->eps_high,
                   .delta = o->delta, .temperature = o->temperature, .B = B, .C = C};
    llama_layout lo;
    llama_layout_init(c, &lo);
    const int64_t pbytes = lo.total * (int64_t)sizeof(float);

    printf("llama-train: task grpo; config %s%s: dim %d layers %d heads %d "
           "kv-heads %d ffn %d vocab %d tied %d\n",
           o->load ? "from " : "", o->load ? o->load : o->config_name, c->dim,
           c->n_layers, c->n_heads, c->n_kv_heads, c->ffn, c->vocab, c->tied);
    printf("llama-train: %lld parameters (%s); seed %llu; %d prompts x %d "
           "completions of <= %d tokens (N = %lld loss rows); loss %s, %s-level "
           "importance sampling, beta %g, epsilon %g/%g, delta %g, temperature "
           "%g, %d iterations per batch, rewards scaled %s; optim %s lr %g (%s, "
           "warm-up %d) clip %g; steps %d; libmel %s\n",
           (long long)lo.total, human(pbytes, b1, sizeof b1),
           (unsigned long long)o->seed, o->prompts, G, C, (long long)N,
           loss_type_name[o->loss_type], o->seq_level ? "sequence" : "token",
           o->beta, o->eps_low, o->eps_high, o->delta, o->temperature,
           o->num_iterations, o->scale_rewards ? "by group" : "none",
           o->optim == OPT_ADAMW ? "adamw" : "sgd", o->lr,
           o->cosine ? "cosine" : "constant", o->warmup, o->clip, o->steps,
           mel_version_string());
    if (o->head_only)
        return grpo_head_only(o, &gc, o->compare || o->head_mel,
                              o->compare || !o->head_mel);

    trainee models[2];
    memset(models, 0, sizeof models);
    float *ref = NULL, *grads = NULL, *X = NULL, *Xr = NULL, *dX = NULL,
          *zbuf = NULL, *xbuf = NULL, *dX2 = NULL, *dW2 = NULL;
    int32_t *inputs = NULL, *comp = NULL;
    double *mask = NULL, *old = NULL, *rewards = NULL, *adv_seq = NULL,
           *adv[2] = {NULL, NULL}, *reward_hist = NULL, *acc_hist = NULL;
    llama_acts acts;
    memset(&acts, 0, sizeof acts);
    grpo_mel hmel;
    memset(&hmel, 0, sizeof hmel);
    grpo_naive hnaive;
    memset(&hnaive, 0, sizeof hnaive);
    FILE *csv = NULL;
    char csv_path[4096];

    for (int k = 0; k < ncopies; k++) {
        trainee *m = &models[k];
        m->use_mel = o->compare ? (k == 0) : o->head_mel;
        m->name = m->use_mel ? "mel" : "naive";
        m->params = malloc((size_t)pbytes);
        if (!m->params ||
            llama_optim_init(&m->opt, o->optim, o->lr, o->weight_decay, &lo) != 0) {
            fprintf(stderr, "%s: out of memory for the parameters of copy %d (%s)\n",
                    prog, k + 1, human(pbytes, b1, sizeof b1));
            goto out;
        }
    }
    for (int k = 0; k < nheads; k++)
        if (!(adv[k] = malloc((size_t)N * sizeof(double)))) goto oom;
    if (o->lockstep && (!(dX2 = malloc((size_t)(N * D) * sizeof(float))) ||
                        !(dW2 = malloc((size_t)(V * D) * sizeof(float)))))
        goto oom;
    if (o->beta != 0 && !(ref = malloc((size_t)pbytes))) goto oom;
    grads = malloc((size_t)pbytes);
    X = malloc((size_t)(N * D) * sizeof(float));
    Xr = malloc((size_t)(N * D) * sizeof(float));
    dX = malloc((size_t)(N * D) * sizeof(float));
    zbuf = malloc((size_t)B * V * sizeof(float));
    xbuf = malloc((size_t)B * D * sizeof(float));
    inputs = malloc((size_t)B * Tm * sizeof(int32_t));
    comp = malloc((size_t)N * sizeof(int32_t));
    mask = malloc((size_t)N * sizeof(double));
    old = malloc((size_t)N * sizeof(double));
    rewards = malloc((size_t)B * sizeof(double));
    adv_seq = malloc((size_t)B * sizeof(double));
    reward_hist = malloc((size_t)o->steps * sizeof(double));
    acc_hist = malloc((size_t)o->steps * sizeof(double));
    if (!grads || !X || !Xr || !dX || !zbuf || !xbuf || !inputs || !comp ||
        !mask || !old || !rewards || !adv_seq || !reward_hist || !acc_hist)
        goto oom;
    if (llama_acts_alloc(c, B, Tm, &acts) != 0) goto oom;
    /* head k of the batch: mel for k = 0 under --compare */
    int head_mel[2] = {o->compare ? 1 : o->head_mel, 0};
    int need_mel = 0, need_naive = 0;
    for (int k = 0; k < nheads; k++) {
        need_mel |= head_mel[k];
        need_naive |= !head_mel[k];
    }
    if (need_mel &&
        grpo_mel_init(&hmel, &gc, o->threads, o->chunk_rows, o->workspace_bytes) != 0) {
        fprintf(stderr, "%s: libmel: %s\n", prog, hmel.err);
        goto out;
    }
    if (need_naive && grpo_naive_init(&hnaive, N, V, o->beta != 0) != 0) {
        fprintf(stderr, "%s: out of memory for the naive head's logits (%s)\n",
                prog, human(3 * N * V * 4, b1, sizeof b1));
        goto out;
    }

    /* Same initialisation for every copy; the reference is a frozen copy. */
    if (o->load) {
        if (llama_ckpt_load(o->load, c, &lo, models[0].params, err, sizeof err) != 0) {
            fprintf(stderr, "%s: --load: %s\n", prog, err);
            goto out;
        }
    } else {
        llama_init_params(c, &lo, models[0].params, o->seed);
    }
    if (ncopies == 2) memcpy(models[1].params, models[0].params, (size_t)pbytes);
    if (ref) memcpy(ref, models[0].params, (size_t)pbytes);
    printf("llama-train: memory: parameters %s x %d cop%s%s + gradients, "
           "optimizer %s, activations %s\n",
           human(pbytes, b1, sizeof b1), ncopies, ncopies == 1 ? "y" : "ies",
           ref ? " + the frozen reference" : "",
           human(o->optim == OPT_ADAMW ? 2 * pbytes * ncopies : 0, b2, sizeof b2),
           human(acts.bytes, b3, sizeof b3));

    if (o->log_csv || o->plot) {
        if (o->log_csv) snprintf(csv_path, sizeof csv_path, "%s", o->log_csv);
        else snprintf(csv_path, sizeof csv_path, "%s.csv", o->plot);
        if (!(csv = fopen(csv_path, "w"))) {
            fprintf(stderr, "%s: %s: %s\n", prog, csv_path, strerror(errno));
            goto out;
        }
        if (o->compare)
            fprintf(csv, "step,reward,loss_mel,loss_naive,reldiff,reldiff_plain,"
                         "clip_mel,clip_naive,kl_mel,kl_naive,ratio_mel,"
                         "exact,completion_tokens,step_mel_s,step_naive_s,"
                         "head_mel_s,head_naive_s,grad_reldiff,"
                         "mel_workspace_bytes\n");
        else
            fprintf(csv, "step,reward,loss_%s,clip,kl,ratio,exact,completion_tokens,"
                         "step_s\n", models[0].name);
    }

    /* Prompts and sampling have their own streams, independent of the
     * initialisation. */
    llama_rng task_rng, sample_rng;
    llama_rng_seed(&task_rng, o->seed ^ 0x7A5C0FFEEull);
    llama_rng_seed(&sample_rng, o->seed ^ 0x5A3B1E5ull);
    double max_rel = 0, max_rel_plain = 0, max_kl_rel = 0;
    int worst_step = 1, bad_steps = 0, max_clip_diff = 0;
    double grad_rel = 0, max_grad_rel = 0, head_naive_s = 0;
    int64_t clipped_total = 0, tokens_total = 0;
    double t_start = now_s();
    int step = 1;
    while (step <= o->steps) {
        /* a batch: prompts, G completions each, rewards, advantages */
        for (int q = 0; q < o->prompts; q++) {
            int32_t pt[GRPO_PROMPT_LEN];
            grpo_task_prompt(&task_rng, pt);
            for (int g = 0; g < G; g++)
                memcpy(inputs + (int64_t)(q * G + g) * Tm, pt, sizeof pt);
        }
        grpo_sample(c, &lo, models[0].params, &acts, P, C, o->temperature,
                    &sample_rng, inputs, comp, mask, old, zbuf, xbuf);
        double rmean = 0, msum = 0, acc = 0;
        for (int b = 0; b < B; b++) {
            rewards[b] = grpo_reward(inputs + (int64_t)b * Tm, comp + (int64_t)b * C, C);
            rmean += rewards[b] / B;
            acc += (rewards[b] == 1.0) / (double)B;
        }
        for (int64_t i = 0; i < N; i++) msum += mask[i];
        for (int k = 0; k < nheads; k++) {
            if (head_mel[k]) {
                mel_status s = mel_group_advantages(hmel.ctx, rewards, B, G,
                                                    o->scale_rewards, adv_seq);
                if (s != MEL_OK) {
                    fprintf(stderr, "%s: mel_group_advantages: %s (%s)\n", prog,
                            mel_status_str(s), mel_last_error(hmel.ctx));
                    goto out;
                }
            } else {
                grpo_naive_advantages(rewards, B, G, o->scale_rewards, adv_seq);
            }
            for (int64_t i = 0; i < N; i++) adv[k][i] = adv_seq[i / C];
        }
        /* the reference's hidden rows, once per batch */
        if (ref) {
            llama_forward(c, &lo, ref, inputs, &acts);
            grpo_gather_rows(&acts, (int)D, P, C, Xr);
        }
        const float *Wr = ref ? ref + lo.lm_head : NULL;

        for (int it = 0; it < o->num_iterations && step <= o->steps; it++, step++) {
            double lr_t = o->lr;
            if (step <= o->warmup) {
                lr_t = o->lr * step / (o->warmup + 1.0);
            } else if (o->cosine && o->steps > o->warmup + 1) {
                double fr = (double)(step - o->warmup - 1) / (o->steps - o->warmup - 1);
                lr_t = o->lr * (0.1 + 0.9 * 0.5 * (1.0 + cos(3.141592653589793 * fr)));
            }
            grpo_stats st[2];
            for (int k = 0; k < ncopies; k++) {
                trainee *m = &models[k];
                m->opt.lr = lr_t;
                double t0 = now_s();
                llama_forward(c, &lo, m->params, inputs, &acts);
                grpo_gather_rows(&acts, (int)D, P, C, X);
                const float *W = m->params + lo.lm_head;
                float *dW = grads + lo.lm_head;
                if (m->use_mel) {
                    if (grpo_mel_run(&hmel, &gc, X, W, Xr, Wr, D, V, comp, mask,
                                     adv[k], old, dX, dW, &st[k]) != 0) {
                        fprintf(stderr, "%s: libmel head failed: %s\n", prog, hmel.err);
                        goto out;
                    }
                } else {
                    double tn = now_s();
                    grpo_naive_run(&hnaive, &gc, X, W, Xr, Wr, D, comp, mask,
                                   adv[k], old, dX, dW, &st[k]);
                    head_naive_s = now_s() - tn;
                }
                if (o->lockstep) {
                    /* the naive head on the same rows and weights, before
                     * the update; its gradients go to dX2, dW2 */
                    double tn = now_s();
                    grpo_naive_run(&hnaive, &gc, X, W, Xr, Wr, D, comp, mask,
                                   adv[1], old, dX2, dW2, &st[1]);
                    head_naive_s = now_s() - tn;
                    t0 += head_naive_s; /* not part of the mel step */
                    double ex = 0, nx = 0, ew = 0, nw = 0;
                    for (int64_t i = 0; i < N * D; i++)
                        ex += ((double)dX[i] - dX2[i]) * ((double)dX[i] - dX2[i]),
                        nx += (double)dX2[i] * dX2[i];
                    for (int64_t i = 0; i < V * D; i++)
                        ew += ((double)dW[i] - dW2[i]) * ((double)dW[i] - dW2[i]),
                        nw += (double)dW2[i] * dW2[i];
                    grad_rel = fmax(sqrt(ex / fmax(nx, 1e-300)), sqrt(ew / fmax(nw, 1e-300)));
                    if (!(grad_rel <= max_grad_rel)) max_grad_rel = grad_rel;
                }
                grpo_scatter_rows(&acts, (int)D, P, C, dX);
                llama_backward(c, &lo, m->params, inputs, &acts, grads);
                clip_and_step(m, c, &lo, grads, o->clip);
                m->loss = st[k].loss;
                m->step_s = now_s() - t0;
                m->total_s += m->step_s;
                if (!isfinite(m->loss)) {
                    fprintf(stderr, "%s: %s head: loss is %g at step %d\n", prog,
                            m->name, m->loss, step);
                    goto out;
                }
            }

            reward_hist[step - 1] = rmean;
            acc_hist[step - 1] = acc;
            clipped_total += st[0].clipped;
            tokens_total += (int64_t)msum;
            if (o->compare) {
                double lm = st[0].loss, ln = st[1].loss;
                double rel = grpo_reldiff(lm, &st[1]);
                double relp = fabs(lm - ln) / fmax(fabs(ln), 1e-30);
                if (!(rel <= max_rel)) max_rel = rel, worst_step = step;
                if (relp > max_rel_plain) max_rel_plain = relp;
                if (!(rel <= o->tol)) bad_steps++;
                int cd = (int)llabs(st[0].clipped - st[1].clipped);
                if (cd > max_clip_diff) max_clip_diff = cd;
                double klr = fabs(st[0].kl - st[1].kl) / fmax(fabs(st[1].kl), 1e-30);
                if (st[1].kl != 0 && klr > max_kl_rel) max_kl_rel = klr;
                printf("step %d reward %.4f loss_mel %.9f loss_naive %.9f reldiff "
                       "%.3e clip %.4f kl %.6f\n",
                       step, rmean, lm, ln, rel, st[0].clip, st[0].kl);
                if (csv)
                    fprintf(csv, "%d,%.6f,%.9f,%.9f,%.6e,%.6e,%.6f,%.6f,%.9f,%.9f,"
                                 "%.9f,%.6f,%d,%.6f,%.6f,%.6f,%.6f,%.6e,%lld\n",
                            step, rmean, lm, ln, rel, relp, st[0].clip, st[1].clip,
                            st[0].kl, st[1].kl, st[0].ratio, acc, (int)msum,
                            models[0].step_s,
                            o->lockstep ? head_naive_s : models[1].step_s,
                            hmel.last.seconds, head_naive_s,
                            o->lockstep ? grad_rel : NAN,
                            (long long)hmel.last.peak_workspace_bytes);
            } else {
                printf("step %d reward %.4f loss %.9f clip %.4f kl %.6f\n", step,
                       rmean, st[0].loss, st[0].clip, st[0].kl);
                if (csv)
                    fprintf(csv, "%d,%.6f,%.9f,%.6f,%.9f,%.9f,%.6f,%d,%.6f\n", step,
                            rmean, st[0].loss, st[0].clip, st[0].kl, st[0].ratio,
                            acc, (int)msum, models[0].step_s);
            }
            fflush(stdout);
            if (csv) fflush(csv);
        }
    }

    /* ---- summary */
    {
        const int n10 = o->steps < 10 ? o->steps : 10;
        double first = 0, last = 0, acc_first = 0, acc_last = 0;
        for (int i = 0; i < n10; i++) {
            first += reward_hist[i] / n10;
            last += reward_hist[o->steps - n10 + i] / n10;
            acc_first += acc_hist[i] / n10;
            acc_last += acc_hist[o->steps - n10 + i] / n10;
        }
        printf("summary: last batch, first completion of each prompt:");
        for (int q = 0; q < o->prompts && q < 16; q++) {
            int b = q * G;
            printf(" ");
            for (int t = 0; t < P; t++) putchar((int)inputs[(int64_t)b * Tm + t]);
            printf("->");
            for (int t = 0; t < C; t++) {
                int32_t tok = comp[(int64_t)b * C + t];
                if (tok == GRPO_END_TOKEN) { printf("\\n"); break; }
                if (tok >= 33 && tok < 127) putchar(tok);
                else printf("<%d>", tok);
            }
        }
        printf("\n");
        printf("summary: completions with reward 1 (the next %d digits and the end "
               "token): %.1f%% in the first %d "
               "steps, %.1f%% in the last %d\n", GRPO_PROMPT_LEN, 100 * acc_first, n10,
               100 * acc_last, n10);
        printf("summary: %d steps (%d sampled batches of %d completions) in %.1f s "
               "wall; %lld completion tokens trained on, %.2f%% of them clipped "
               "(first head)\n",
               o->steps, (o->steps + o->num_iterations - 1) / o->num_iterations, B,
               now_s() - t_start, (long long)tokens_total,
               100.0 * (double)clipped_total / (double)(tokens_total ? tokens_total : 1));
        for (int k = 0; k < ncopies; k++)
            printf("summary: %-5s model: %.3f s/step (model + head + update)\n",
                   models[k].name, models[k].total_s / o->steps);
        if (need_mel)
            printf("summary: mel   head memory: peak workspace %s (chunk rows %lld, "
                   "%lld chunks)\n",
                   human(hmel.peak_workspace, b1, sizeof b1),
                   (long long)hmel.last.chunk_rows, (long long)hmel.last.chunks);
        printf("summary: naive head memory: logits + their gradient%s %s "
               "(%d x N x V x 4 bytes, N = %lld, V = %lld)%s\n",
               o->beta != 0 ? " + reference logits" : "",
               human((o->beta != 0 ? 3 : 2) * N * V * 4, b1, sizeof b1),
               o->beta != 0 ? 3 : 2, (long long)N, (long long)V,
               need_naive ? "" : " [not run]");
        printf("summary: peak RSS %s\n", human(peak_rss_bytes(), b1, sizeof b1));
        if (o->compare)
            printf("summary: mel vs naive: max plain |a-b|/|b| %.3e; clipped-token "
                   "counts differ by at most %d; kl max reldiff %.3e\n",
                   max_rel_plain, max_clip_diff, max_kl_rel);
        if (o->lockstep)
            printf("summary: mel vs naive gradients (relative L2, worse of dX and "
                   "dW): max %.3e\n", max_grad_rel);
        if (o->save) {
            if (llama_ckpt_save(o->save, c, &lo, models[0].params, o->steps, err,
                                sizeof err) != 0) {
                fprintf(stderr, "%s: --save: %s\n", prog, err);
                goto out;
            }
            printf("summary: saved the %s-head policy to %s\n", models[0].name, o->save);
        }
        if (csv) {
            fclose(csv);
            csv = NULL;
            if (o->log_csv) printf("summary: per-step log in %s\n", o->log_csv);
        }
        if (o->plot) {
            char title[256];
            snprintf(title, sizeof title, "llama-train --task grpo (%s), %d x %d "
                     "completions, loss %s", o->load ? "checkpoint" : o->config_name,
                     o->prompts, G, loss_type_name[o->loss_type]);
            if (write_grpo_plot(o->plot, csv_path, title, o->compare) != 0) goto out;
        }
        rc = 0;
        if (o->compare) {
            printf("grpo: reward %.4f -> %.4f, max reldiff %.3e\n", first, last, max_rel);
            printf("compare: max reldiff %.3e at step %d (tol %.1e): %s\n", max_rel,
                   worst_step, o->tol, bad_steps ? "FAIL" : "PASS");
            if (bad_steps) {
                fprintf(stderr, "%s: %d of %d steps exceed --tol %g\n", prog,
                        bad_steps, o->steps, o->tol);
                rc = 3;
            }
        } else {
            printf("grpo: reward %.4f -> %.4f\n", first, last);
        }
    }
    goto out;
oom:
    fprintf(stderr, "%s: out of memory (batch of %d x %d, N = %lld)\n", prog,
            o->prompts, G, (long long)N);
out:
    if (csv) fclose(csv);
    for (int k = 0; k < 2; k++) {
        free(models[k].params);
        llama_optim_free(&models[k].opt);
        free(adv[k]);
    }
    free(ref); free(grads); free(X); free(Xr); free(dX); free(dX2); free(dW2); free(zbuf); free(xbuf);
    free(inputs); free(comp); free(mask); free(old);
    free(rewards); free(adv_seq); free(reward_hist); free(acc_hist);
    llama_acts_free(&acts);
    grpo_mel_free(&hmel);
    grpo_naive_free(&hnaive);
    return rc;
}

/* -------------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    options o;
    parse_args(argc, argv, &o);
    const llama_config *c = &o.cfg;
    char err[512], b1[32], b2[32], b3[32];
    int rc = 1;

    if (o.threads > 0) {
#ifdef _OPENMP
        omp_set_num_threads(o.threads);
#endif
        openblas_set_num_threads(o.threads);
    }
    if (o.task_grpo) return run_grpo(&o);

    llama_layout lo;
    llama_layout_init(c, &lo);
    const int64_t N = (int64_t)o.batch * o.seq;
    const int ncopies = o.compare ? 2 : 1;
    const int64_t pbytes = lo.total * (int64_t)sizeof(float);

    printf("llama-train: config %s%s: dim %d layers %d heads %d kv-heads %d "
           "ffn %d vocab %d tied %d rope-theta %g rms-eps %g\n",
           o.load ? "from " : "", o.load ? o.load : o.config_name, c->dim,
           c->n_layers, c->n_heads, c->n_kv_heads, c->ffn, c->vocab, c->tied,
           c->rope_theta, c->rms_eps);
    printf("llama-train: %lld parameters (%s); seed %llu; batch %d seq %d "
           "(N = %lld rows); optim %s lr %g (%s, warm-up %d) wd %g clip %g; "
           "steps %d; threads %d; libmel %s\n",
           (long long)lo.total, human(pbytes, b1, sizeof b1),
           (unsigned long long)o.seed, o.batch, o.seq, (long long)N,
           o.optim == OPT_ADAMW ? "adamw" : "sgd", o.lr,
           o.cosine ? "cosine" : "constant", o.warmup, o.weight_decay, o.clip,
           o.steps,
#ifdef _OPENMP
           omp_get_max_threads(),
#else
           1,
#endif
           mel_version_string());

    llama_corpus corpus;
    if (llama_corpus_load(o.data, &corpus, err, sizeof err) != 0) {
        fprintf(stderr, "%s: %s\n", prog, err);
        return 1;
    }
    printf("llama-train: data %s: %lld bytes, byte-level tokens\n",
           corpus.source, (long long)corpus.n);

    trainee models[2];
    memset(models, 0, sizeof models);
    float *grads = NULL;
    int32_t *inputs = NULL, *targets = NULL;
    llama_acts acts;
    memset(&acts, 0, sizeof acts);
    head_mel hmel;
    memset(&hmel, 0, sizeof hmel);
    head_naive hnaive;
    memset(&hnaive, 0, sizeof hnaive);
    FILE *csv = NULL;
    char csv_path[4096];

    for (int k = 0; k < ncopies; k++) {
        trainee *m = &models[k];
        m->use_mel = o.compare ? (k == 0) : o.head_mel;
        m->name = m->use_mel ? "mel" : "naive";
        m->params = malloc((size_t)pbytes);
        if (!m->params ||
            llama_optim_init(&m->opt, o.optim, o.lr, o.weight_decay, &lo) != 0) {
            fprintf(stderr, "%s: out of memory for the parameters of copy %d (%s)\n",
                    prog, k + 1, human(pbytes, b1, sizeof b1));
            goto out;
        }
    }
    grads = malloc((size_t)pbytes);
    inputs = malloc((size_t)N * sizeof(int32_t));
    targets = malloc((size_t)N * sizeof(int32_t));
    if (!grads || !inputs || !targets ) {
        fprintf(stderr, "%s: out of memory (gradients, %s)\n", prog,
                human(pbytes, b1, sizeof b1));
        goto out;
    }
    if (llama_acts_alloc(c, o.batch, o.seq, &acts) != 0) {
        fprintf(stderr, "%s: out of memory for activations (batch %d seq %d)\n",
                prog, o.batch, o.seq);
        goto out;
    }
    int need_mel = 0, need_naive = 0;
    for (int k = 0; k < ncopies; k++) {
        need_mel |= models[k].use_mel;
        need_naive |= !models[k].use_mel;
    }
    if (need_mel &&
        head_mel_init(&hmel, o.threads, o.chunk_rows, o.workspace_bytes) != 0) {
        fprintf(stderr, "%s: libmel: %s\n", prog, hmel.err);
        goto out;
    }
    if (need_naive && head_naive_init(&hnaive, N, c->vocab) != 0) {
        fprintf(stderr, "%s: out of memory for the naive head's logits (%s)\n",
                prog, human(2 * N * c->vocab * 4, b1, sizeof b1));
        goto out;
    }

    /* Same initialisation for every copy. */
    double t_init = now_s();
    if (o.load) {
        if (llama_ckpt_load(o.load, c, &lo, models[0].params, err, sizeof err) != 0) {
            fprintf(stderr, "%s: --load: %s\n", prog, err);
            goto out;
        }
    } else {
        llama_init_params(c, &lo, models[0].params, o.seed);
    }
    if (ncopies == 2) memcpy(models[1].params, models[0].params, (size_t)pbytes);
    printf("llama-train: %s in %.1f s; memory: parameters %s × %d "
           "cop%s + one gradient buffer of the same size, optimizer %s, "
           "activations %s\n",
           o.load ? "loaded" : "initialised", now_s() - t_init,
           human(pbytes, b1, sizeof b1), ncopies, ncopies == 1 ? "y" : "ies",
           human(o.optim == OPT_ADAMW ? 2 * pbytes * ncopies : 0, b2, sizeof b2),
           human(acts.bytes, b3, sizeof b3));

    if (o.log_csv || o.plot) {
        if (o.log_csv) snprintf(csv_path, sizeof csv_path, "%s", o.log_csv);
        else snprintf(csv_path, sizeof csv_path, "%s.csv", o.plot);
        if (!(csv = fopen(csv_path, "w"))) {
            fprintf(stderr, "%s: %s: %s\n", prog, csv_path, strerror(errno));
            goto out;
        }
        if (o.compare)
            fprintf(csv, "step,loss_mel,loss_naive,reldiff,step_mel_s,"
                         "step_naive_s,head_mel_s,head_naive_s,"
                         "mel_workspace_bytes\n");
        else
            fprintf(csv, "step,loss_%s,step_s,head_s%s\n", models[0].name,
                    models[0].use_mel ? ",mel_workspace_bytes" : "");
    }

    /* Batches come from their own stream so that they do not depend on
     * how the parameters were initialised. */
    llama_rng data_rng;
    llama_rng_seed(&data_rng, o.seed ^ 0x5DEECE66Dull);
    double max_rel = 0;
    int worst_step = 0, bad_steps = 0;
    for (int step = 1; step <= o.steps; step++) {
        llama_corpus_batch(&corpus, &data_rng, o.batch, o.seq, inputs, targets);
        /* Learning rate of this step: linear warm-up, then cosine decay
         * from lr to 0.1·lr at the last step (or constant). */
        double lr_t = o.lr;
        if (step <= o.warmup) {
            lr_t = o.lr * step / (o.warmup + 1.0);
        } else if (o.cosine && o.steps > o.warmup + 1) {
            double fr = (double)(step - o.warmup - 1) / (o.steps - o.warmup - 1);
            lr_t = o.lr * (0.1 + 0.9 * 0.5 * (1.0 + cos(3.141592653589793 * fr)));
        }
        for (int k = 0; k < ncopies; k++) {
            models[k].opt.lr = lr_t;
            if (train_step(&models[k], c, &lo, &acts, grads, &hmel, &hnaive,
                           inputs, targets, o.clip) != 0)
                goto out;
            if (step == 1) models[k].first_loss = models[k].loss;
        }
        if (o.compare) {
            double lm = models[0].loss, ln = models[1].loss;
            double rel = fabs(lm - ln) / fmax(fabs(ln), 1e-30);
            if (!(rel <= max_rel)) { /* NaN counts as worst */
                max_rel = rel;
                worst_step = step;
            }
            if (!(rel <= o.tol)) bad_steps++;
            printf("step %d mel %.9f naive %.9f reldiff %.3e\n", step, lm, ln, rel);
            if (models[0].step_s + models[1].step_s > 2.0)
                fprintf(stderr, "  step %d time: mel %.2f s (head %.2f s), "
                                "naive %.2f s (head %.2f s), peak RSS %s\n",
                        step, models[0].step_s, models[0].head_s,
                        models[1].step_s, models[1].head_s,
                        human(peak_rss_bytes(), b1, sizeof b1));
            if (csv)
                fprintf(csv, "%d,%.9f,%.9f,%.6e,%.6f,%.6f,%.6f,%.6f,%lld\n", step,
                        lm, ln, rel, models[0].step_s, models[1].step_s,
                        models[0].head_s, models[1].head_s,
                        (long long)hmel.last.peak_workspace_bytes);
        } else {
            trainee *m = &models[0];
            printf("step %d loss %.9f time %.3f s tok/s %.0f\n", step, m->loss,
                   m->step_s, (double)N / m->step_s);
            if (csv) {
                fprintf(csv, "%d,%.9f,%.6f,%.6f", step, m->loss, m->step_s,
                        m->head_s);
                if (m->use_mel)
                    fprintf(csv, ",%lld", (long long)hmel.last.peak_workspace_bytes);
                fprintf(csv, "\n");
            }
        }
        fflush(stdout);
        if (csv) fflush(csv);
    }

    /* ---- summary */
    printf("summary: %d steps of %lld tokens\n", o.steps, (long long)N);
    for (int k = 0; k < ncopies; k++) {
        trainee *m = &models[k];
        printf("summary: %-5s head: loss first %.6f last %.6f; %.0f tokens/s "
               "(%.3f s/step)\n",
               m->name, m->first_loss, m->loss,
               (double)N * o.steps / m->total_s, m->total_s / o.steps);
    }
    if (need_mel)
        printf("summary: mel   head memory: peak workspace %s (chunk rows %lld, "
               "%lld chunks)\n",
               human(hmel.peak_workspace, b1, sizeof b1),
               (long long)hmel.last.chunk_rows, (long long)hmel.last.chunks);
    {
        int64_t nb = 2 * N * c->vocab * (int64_t)sizeof(float);
        printf("summary: naive head memory: logits + their gradient %s "
               "(2 x N x V x 4 bytes, N = %lld, V = %d)%s\n",
               human(nb, b1, sizeof b1), (long long)N, c->vocab,
               need_naive ? "" : " [not run]");
    }
    printf("summary: peak RSS %s\n", human(peak_rss_bytes(), b1, sizeof b1));

    if (o.save) {
        if (llama_ckpt_save(o.save, c, &lo, models[0].params, o.steps, err,
                            sizeof err) != 0) {
            fprintf(stderr, "%s: --save: %s\n", prog, err);
            goto out;
        }
        printf("summary: saved the %s-head model to %s\n", models[0].name, o.save);
    }
    if (csv) {
        fclose(csv);
        csv = NULL;
        if (o.log_csv) printf("summary: per-step log in %s\n", o.log_csv);
    }
    if (o.plot) {
        char title[256];
        snprintf(title, sizeof title, "llama-train %s, %d steps, batch %d x seq %d",
                 o.load ? "checkpoint" : o.config_name, o.steps, o.batch, o.seq);
        if (write_plot(o.plot, csv_path, title, o.compare) != 0) goto out;
    }
    rc = 0;
    if (o.compare) {
        printf("compare: max reldiff %.3e at step %d (tol %.1e): %s\n", max_rel,
               worst_step, o.tol, bad_steps ? "FAIL" : "PASS");
        if (bad_steps) {
            fprintf(stderr, "%s: %d of %d steps exceed --tol %g\n", prog,
                    bad_steps, o.steps, o.tol);
            rc = 3;
        }
    }

out:
    if (csv) fclose(csv);
    for (int k = 0; k < 2; k++) {
        free(models[k].params);
        llama_optim_free(&models[k].opt);
    }
    free(grads);
    free(inputs);
    free(targets);
    llama_acts_free(&acts);
    head_mel_free(&hmel);
    head_naive_free(&hnaive);
    llama_corpus_free(&corpus);
    return rc;
}
