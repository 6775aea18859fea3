/* mel_tool.h -- what the commands of the `mel` tool share (tools/mel/).
 *
 *   common.c    resources (own/release/die), library errors, the context and
 *               device staging, timing and --stats
 *   args.c      option scanner, numbers, byte counts, dtypes, --param
 *   inputs.c    .npy inputs and outputs: loading with shape and dtype checks,
 *               dtype conversion
 *   problem.c   random problems for gradcheck and bench
 *   run.c, gradcheck.c, bench.c, list.c, plan.c   one command each
 *   mel.c       main: dispatch, --version, --help
 *
 * Only the public API of mel.h is used (plus lib/half.h's conversions).
 * Exit status: 0 success, 1 a failed check or a runtime failure (out of
 * memory, backend error), 2 bad usage or bad input, with one line "mel: ..."
 * on stderr naming the flag, file or value at fault.  Every resource is
 * registered with own() and released on every exit path (die() included),
 * so sanitizer builds stay quiet.
 */
#ifndef MEL_TOOL_H
#define MEL_TOOL_H

#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mel.h"
#include "npy.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define EXIT_FAILED 1 /* a check failed, or the run failed at run time */
#define EXIT_USAGE 2  /* bad usage or bad input                       */

/* ------------------------------------------------------------ common.c */

/* One line on stderr ("mel: " + message, newlines folded), release
 * everything, exit. */
_Noreturn void die(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Register p (non-NULL) to be released by fn; returns p (NULL stays NULL). */
void *own(void *p, void (*fn)(void *));
/* The number of registered resources (a mark for release_to). */
size_t own_mark(void);
/* Release everything registered after the first `mark` entries. */
void release_to(size_t mark);
/* Release p now (it must have been registered; NULL is accepted). */
void release(void *p);
void release_all(void);

void free_any(void *p);
void free_ctx(void *p);
void free_transform(void *p);
void free_args(void *p);
void free_params(void *p);
void close_file(void *p);

/* count elements of size bytes, zeroed, owned; dies on overflow or OOM. */
void *xcalloc(int64_t count, size_t size, const char *what);
/* a·b, dying on overflow (what names the sizes). */
int64_t mul64(int64_t a, int64_t b, const char *what);

/* The exit status for a library status. */
int exit_of(mel_status s);
/* Die with the context's message (prefixed by what) when s != MEL_OK. */
void check(mel_ctx *ctx, mel_status s, const char *what);

/* A context on backend "cpu" (NULL) or "cuda", with `threads` (< 0: the
 * default); owned.  On CUDA, g_dev_ctx is set and to_dev / from_dev stage
 * host buffers through device memory. */
mel_ctx *make_ctx(const char *backend, int threads);
extern mel_ctx *g_dev_ctx;
/* The buffer the library should see for host data h of `bytes` bytes: h
 * itself on the CPU backend, else a device copy (owned).  NULL stays NULL. */
void *to_dev(const void *h, size_t bytes, const char *what);
/* Copy the library's buffer d (from to_dev) back into host buffer h. */
void from_dev(void *h, const void *d, size_t bytes, const char *what);

double now_s(void);

/* Statistics summed over the calls of one mode (recompute = 2 calls). */
typedef struct callstats {
    int ncalls;
    const char *names[2];
    mel_stats s[2];
    int64_t comm_bytes[2]; /* mel_get_comm_stats of each call */
    double comm_seconds[2];
    mel_stats total; /* chunk_rows max, chunks sum, peak max, rest summed */
    int64_t active[2], total_active; /* mel_get_active_rows; total: the max */
    int64_t tiles[2], total_tiles;   /* mel_get_tile_cols; total: the max */
} callstats;
void stats_add(callstats *cs, mel_ctx *ctx, const char *name);
void json_stats(FILE *f, const mel_stats *s, int64_t active_rows, int64_t tile_cols);
/* "\"libmel\": {KEY: VALUE, ...}": every mel_info key (the BLAS, its kernel and
 * threads, ...), for --stats */
void json_info(FILE *f);
/* "OpenBLAS 0.3.21, kernel Zen, openmp (FILE)" into buf[n] */
void blas_desc(char *buf, size_t n);

/* -------------------------------------------------------------- args.c */

int64_t parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi);
/* An integer with an optional K, M, G, T suffix (powers of 1024). */
int64_t parse_bytes(const char *flag, const char *s);
double parse_f64(const char *flag, const char *s);
/* f64|float64, f32|float32, bf16|bfloat16, f16|float16; dies otherwise. */
mel_dtype parse_dtype(const char *flag, const char *s);
/* none|sum|mean; dies otherwise. */
mel_reduction parse_reduction(const char *flag, const char *s);

/* Option scanner.  Accepts "--name value" and "--name=value"; positional
 * arguments come back as "". */
#define OPT_FLAG 0   /* --name                                   */
#define OPT_VALUE 1  /* --name VALUE, at most once               */
#define OPT_REPEAT 2 /* --name VALUE, repeatable (--param, --input) */
typedef struct optspec {
    const char *name;
    int kind; /* OPT_FLAG, OPT_VALUE, OPT_REPEAT */
} optspec;

typedef struct optscan {
    int argc, i;
    char **argv;
    const char *cmd;
    const optspec *specs; /* at most 64 */
    uint64_t seen;        /* bit k: specs[k] was given */
} optscan;

/* Next option: its name (without value), *val set; NULL at the end.  An
 * option other than OPT_REPEAT given twice is an error naming it. */
const char *next_opt(optscan *o, const char **val);

/* --param NAME=VALUE: parsed (numbers, or the symbolic words of loss_type
 * and importance_sampling_level) and set on *p (created and owned on
 * first use); a NAME given twice is an error. */
void param_add(mel_params **p, const char *spec);
/* --input NAME=FILE (repeatable): appends to names/files (capacity max), exit 2
 * on a malformed value, a name given twice or too many inputs. */
void input_add(const char *val, const char **names, const char **files, int *n, int max);
/* The value built-in `tname` will use for parameter `name`: the one set on
 * p, else the built-in's default (mel_builtin_param), else `fallback`. */
double param_value(const char *tname, const mel_params *p, const char *name, double fallback);
/* 1 when built-in `tname` has a parameter called `name`. */
int builtin_has_param(const char *tname, const char *name);
/* Die when one of grpo's loss-type parameters (loss_type,
 * max_completion_length, num_items_in_batch: they only feed
 * mel_grpo_weights) was given to a command that does not use them. */
void refuse_loss_type_params(const char *cmd, const char *tname, const mel_params *p, const char *why);
/* The symbolic --param values (loss_type=ipo), mapped for transform tname
 * by the library (mel_builtin_param_word); exits naming a bad one. */
void resolve_param_words(const char *cmd, const char *tname, mel_params **pp);

/* Die unless `name` is a built-in, listing the known ones. */
void check_builtin_name(const char *cmd, const char *name);
/* Build built-in `name` with p (owned); dies naming --param on a bad one. */
mel_transform *build_transform(mel_ctx *ctx, const char *cmd, const char *name,
                               const mel_params *p);

/* ------------------------------------------------------------ inputs.c */

/* The NumPy name of a dtype ("float32", "int64", ...). */
const char *np_name(mel_dtype t);
double get_elem(const void *p, mel_dtype t, int64_t i);
void set_elem(void *p, mel_dtype t, int64_t i, double v);
/* A new owned buffer: count elements of src (dtype from) in dtype to.
 * bf16/f16 are rounded from f32 (f64 -> f32 -> 16 bit). */
void *convert(const void *src, mel_dtype from, int64_t count, mel_dtype to, const char *what);

typedef struct input {
    const char *flag, *path; /* for messages */
    npy_array a;             /* a.data is owned */
} input;

void shape_str(const npy_array *a, char *buf, size_t len);
/* The dtypes a flag takes (ORed). */
#define TAKES_FLOAT 1u /* float32, float64 */
#define TAKES_F16 2u   /* float16 (storage of X, W, bias)        */
#define TAKES_INT 4u   /* int32, int64                            */
#define TAKES_BOOL 8u  /* bool (a 0/1 mask), read as 0.0 / 1.0    */
/* Load `path` for `flag`; dies with a message naming both on failure,
 * and listing the dtypes the flag takes when the file has another. */
input load(const char *flag, const char *path, unsigned takes);
/* rows [r0, r0 + nrows) of the file's first axis only (in.a.file_rows: all
 * of them); nrows = 0 reads the header alone */
input load_rows(const char *flag, const char *path, unsigned takes, int64_t r0, int64_t nrows);
/* The data of `in` as dtype `to`: the loaded data itself when it already
 * has that dtype (no copy), else a converted copy that replaces it (the
 * loaded data is released at once).  No input is ever copied otherwise. */
void *input_as(input *in, mel_dtype to);
/* Release the data of `in` (NULL afterwards). */
void input_drop(input *in);
/* Bytes of input data the tool holds (loaded or converted): now, at most,
 * and converted in all (reported by mel run --stats). */
typedef struct input_mem {
    int64_t live, peak, converted;
} input_mem;
extern input_mem g_input_mem;
/* Die unless `in` has ndim dimensions (what describes them). */
void want_ndim(const input *in, int ndim, const char *what);
/* Die unless 1-d of length n. */
void want_vec(const input *in, int64_t n, const char *what);
void save(const char *flag, const char *path, mel_dtype t, void *data, int ndim,
          const int64_t *shape);

/* ----------------------------------------------------------- problem.c */

/* Random problem in f64 for a transform: X [N, D], W [V, D], bias [V]
 * (optional), and whatever the transform reads (mel_transform_input,
 * mel_transform_head): an index input (about 1 in 5 rows = ignore_index,
 * never all), head 1, and per-row scalar inputs ("mask" 0/1, "old_logp"
 * and "ref_logp" near the current log-probability, "desirable" 0/1 and
 * "kl_ref" one value per sequence, anything else standard normal); with
 * sequence ids, whole groups of sequences of 1-4 rows (ranks in order),
 * a row in no sequence (-1) after some groups and at the end. */
#define PROBLEM_MAX_INPUTS 16
typedef struct problem {
    int64_t n, d, v;
    double *x, *w, *bias; /* f64 */
    double *tx, *tw;      /* head 1 [N, D], [V, D] when the transform reads it */
    int64_t *labels;      /* the index input's values */
    const char *index_name;
    int64_t *seq;         /* the sequence ids (mel_transform_layout), or NULL */
    const char *seq_name;
    int n_scalar;
    const char *scalar_name[PROBLEM_MAX_INPUTS];
    double *scalar[PROBLEM_MAX_INPUTS];
} problem;

void make_problem(problem *p, const mel_transform *t, int64_t n, int64_t d, int64_t v,
                  int with_bias, int64_t ignore_index, int exact_logp, uint64_t seed);
/* Bind a problem to args, X/W/bias/head 1 stored as dtype t (converted
 * copies are returned through *xs, *ws so gradients can be bound). */
void bind_problem(mel_args *a, const problem *p, mel_dtype t, void **xs, void **ws);

/* ------------------------------------------------------------ commands */

int cmd_run(int argc, char **argv);
int cmd_gradcheck(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_list(int argc, char **argv);
int cmd_plan(int argc, char **argv);

#endif
