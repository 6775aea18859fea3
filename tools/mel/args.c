/* args.c -- command-line parsing shared by the mel commands: the option
 * scanner, numbers, byte counts, dtypes, reductions and --param. */
#include "mel_tool.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t parse_i64(const char *flag, const char *s, int64_t lo, int64_t hi)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 0);
    if (end == s || *end || errno == ERANGE)
        die(EXIT_USAGE, "%s: '%s' is not an integer", flag, s);
    if (v < lo || v > hi)
        die(EXIT_USAGE, "%s: %lld is outside [%" PRId64 ", %" PRId64 "]", flag, v, lo, hi);
    return (int64_t)v;
}

/* "B" and "iB" tolerated after the suffix: 256M, 1GiB, 1048576. */
int64_t parse_bytes(const char *flag, const char *s)
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
    if (v > (INT64_MAX >> shift)) die(EXIT_USAGE, "%s: '%s' is too large", flag, s);
    return (int64_t)v << shift;
}

double parse_f64(const char *flag, const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || (errno == ERANGE && fabs(v) == HUGE_VAL))
        die(EXIT_USAGE, "%s: '%s' is not a number", flag, s);
    return v;
}

mel_dtype parse_dtype(const char *flag, const char *s)
{
    if (strcmp(s, "f64") == 0 || strcmp(s, "float64") == 0) return MEL_F64;
    if (strcmp(s, "f32") == 0 || strcmp(s, "float32") == 0) return MEL_F32;
    if (strcmp(s, "bf16") == 0 || strcmp(s, "bfloat16") == 0) return MEL_BF16;
    if (strcmp(s, "f16") == 0 || strcmp(s, "float16") == 0) return MEL_F16;
    die(EXIT_USAGE, "%s: unknown dtype '%s' (want f64, f32, bf16 or f16)", flag, s);
}

mel_reduction parse_reduction(const char *flag, const char *s)
{
    if (!strcmp(s, "none")) return MEL_REDUCE_NONE;
    if (!strcmp(s, "sum")) return MEL_REDUCE_SUM;
    if (!strcmp(s, "mean")) return MEL_REDUCE_MEAN;
    die(EXIT_USAGE, "%s: unknown reduction '%s' (want none, sum or mean)", flag, s);
}

/* ============================================================ options */

const char *next_opt(optscan *o, const char **val)
{
    *val = NULL;
    if (o->i >= o->argc) return NULL;
    const char *a = o->argv[o->i++];
    if (strncmp(a, "--", 2) != 0 || !a[2]) {
        if (a[0] == '-' && a[1] && strcmp(a, "-h") != 0)
            die(EXIT_USAGE, "%s: unknown option '%s' (see mel %s --help)", o->cmd, a, o->cmd);
        if (strcmp(a, "-h") == 0) return "--help";
        *val = a;
        return "";
    }
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
    for (const optspec *s = o->specs; s->name; s++) {
        if (strlen(s->name) != nlen || strncmp(s->name, a, nlen) != 0) continue;
        uint64_t bit = (uint64_t)1 << ((s - o->specs) & 63);
        if (s->kind != OPT_REPEAT && (o->seen & bit))
            die(EXIT_USAGE, "%s: given twice (%s takes one)", s->name, s->name);
        o->seen |= bit;
        if (s->kind != OPT_FLAG) {
            if (eq) *val = eq + 1;
            else if (o->i < o->argc) *val = o->argv[o->i++];
            else die(EXIT_USAGE, "%s: missing value", s->name);
        } else if (eq) {
            die(EXIT_USAGE, "%s: takes no value", s->name);
        }
        return s->name;
    }
    die(EXIT_USAGE, "%s: unknown option '%.*s' (see mel %s --help)", o->cmd, (int)nlen, a,
        o->cmd);
}

/* ============================================================ --param */

/* Symbolic parameter values ("loss_type=ipo") wait here until the
 * transform is known (resolve_param_words): the library maps them
 * (mel_builtin_param_word), per transform. */
#define MAX_PARAM_WORDS 16
static struct {
    char name[64], word[64];
} pending[MAX_PARAM_WORDS];
static int n_pending;

void param_add(mel_params **pp, const char *spec)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1]) die(EXIT_USAGE, "--param: '%s' is not NAME=VALUE", spec);
    size_t nlen = (size_t)(eq - spec);
    char name[64];
    if (nlen >= sizeof name) die(EXIT_USAGE, "--param: name '%.*s' is too long", (int)nlen, spec);
    memcpy(name, spec, nlen);
    name[nlen] = '\0';
    const char *val = eq + 1;

    double v;
    char *end;
    errno = 0;
    v = strtod(val, &end);
    if (end == val || *end) {
        for (int i = 0; i < n_pending; i++)
            if (!strcmp(pending[i].name, name)) die(EXIT_USAGE, "--param %s: given twice", name);
        if (n_pending == MAX_PARAM_WORDS || strlen(val) >= sizeof pending[0].word)
            die(EXIT_USAGE, "--param %s=%s: too many or too long symbolic values", name, val);
        strcpy(pending[n_pending].name, name);
        strcpy(pending[n_pending].word, val);
        n_pending++;
        return;
    }
    if (mel_params_get(*pp, name, NULL)) die(EXIT_USAGE, "--param %s: given twice", name);
    if (!*pp) {
        *pp = own(mel_params_new(), free_params);
        if (!*pp) die(EXIT_FAILED, "--param: out of memory");
    }
    mel_status s = mel_params_set(*pp, name, v);
    if (s != MEL_OK) die(exit_of(s), "--param %s=%s: %s", name, val, mel_status_str(s));
}

static int builtin_index(const char *tname)
{
    for (int i = 0; i < mel_builtin_count(); i++) {
        const char *b = mel_builtin_name(i);
        if (b && !strcmp(b, tname)) return i;
    }
    return -1;
}

int builtin_has_param(const char *tname, const char *name)
{
    int bi = builtin_index(tname);
    const char *pn;
    for (int j = 0; bi >= 0 && (pn = mel_builtin_param(bi, j, NULL)); j++)
        if (!strcmp(pn, name)) return 1;
    return 0;
}

double param_value(const char *tname, const mel_params *p, const char *name, double fallback)
{
    double v = fallback;
    if (mel_params_get(p, name, &v)) return v;
    int bi = builtin_index(tname);
    const char *pn;
    for (int j = 0; bi >= 0 && (pn = mel_builtin_param(bi, j, &v)); j++)
        if (!strcmp(pn, name)) return v;
    return fallback;
}

void resolve_param_words(const char *cmd, const char *tname, mel_params **pp)
{
    if (!n_pending) return;
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) die(EXIT_FAILED, "%s: %s", cmd, mel_ctx_create_error());
    for (int i = 0; i < n_pending; i++) {
        double v;
        if (mel_builtin_param_word(ctx, tname, pending[i].name, pending[i].word, &v) != MEL_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mel_last_error(ctx));
            mel_ctx_destroy(ctx);
            die(EXIT_USAGE, "%s --param %s=%s: %s", cmd, pending[i].name, pending[i].word, msg);
        }
        if (mel_params_get(*pp, pending[i].name, NULL))
            die(EXIT_USAGE, "--param %s: given twice", pending[i].name);
        if (!*pp) {
            *pp = own(mel_params_new(), free_params);
            if (!*pp) die(EXIT_FAILED, "--param: out of memory");
        }
        mel_params_set(*pp, pending[i].name, v);
    }
    n_pending = 0;
    mel_ctx_destroy(ctx);
}

void refuse_loss_type_params(const char *cmd, const char *tname, const mel_params *p, const char *why)
{
    if (strcmp(tname, "grpo")) return; /* the other built-ins' loss_type is their loss */
    static const char *names[] = {"loss_type", "max_completion_length", "num_items_in_batch"};
    double lt = 0;
    for (int i = 0; i < 3; i++)
        /* cispo (4) and sapo (5) change the per-token loss too: not only weights */
        if (mel_params_get(p, names[i], &lt) && !(i == 0 && (lt == 4 || lt == 5)))
            die(EXIT_USAGE, "%s and --param %s: %s only sets grpo's loss-type weights "
                "(mel_grpo_weights), which %s", cmd, names[i], names[i], why);
}

/* ============================================================ built-ins */

void check_builtin_name(const char *cmd, const char *name)
{
    if (builtin_index(name) >= 0) return;
    int n = mel_builtin_count();
    char list[512] = "";
    for (int i = 0; i < n; i++) {
        const char *b = mel_builtin_name(i);
        if (b) {
            if (*list) strncat(list, ", ", sizeof list - strlen(list) - 1);
            strncat(list, b, sizeof list - strlen(list) - 1);
        }
    }
    die(EXIT_USAGE, "%s: unknown transform '%s' (known: %s)", cmd, name, list);
}

mel_transform *build_transform(mel_ctx *ctx, const char *cmd, const char *name,
                               const mel_params *p)
{
    check_builtin_name(cmd, name);
    mel_transform *t = NULL;
    mel_status s = mel_transform_builtin(ctx, name, p, &t);
    if (s != MEL_OK) {
        const char *m = mel_last_error(ctx);
        if (!m || !*m) m = mel_status_str(s);
        mel_arg_kind k;
        const char *pn;
        mel_last_error_detail(ctx, &k, NULL, &pn, NULL, NULL);
        if (k == MEL_ARG_PARAM && pn) die(exit_of(s), "--param %s: %s", pn, m);
        die(exit_of(s), "%s %s: %s", cmd, name, m);
    }
    return own(t, free_transform);
}

void input_add(const char *val, const char **names, const char **files, int *n, int max)
{
    const char *eq = strchr(val, '=');
    if (!eq || eq == val || !eq[1]) die(EXIT_USAGE, "--input: '%s' is not NAME=FILE", val);
    if (*n >= max) die(EXIT_USAGE, "--input: more than %d inputs", max);
    char *nm = xcalloc(eq - val + 1, 1, "--input");
    memcpy(nm, val, (size_t)(eq - val));
    for (int i = 0; i < *n; i++)
        if (!strcmp(names[i], nm)) die(EXIT_USAGE, "--input: '%s' given twice", nm);
    names[*n] = nm;
    files[(*n)++] = eq + 1;
}
