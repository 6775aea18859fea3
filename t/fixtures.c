/* fixtures.t -- compare libmel with outside references (PyTorch, TRL).
 *
 * Reads the case directories listed in t/fixtures/CASES (written, with the
 * fixtures, by t/fixtures/gen_fixtures.py; see t/fixtures/README.md).  For
 * each case: builds the built-in transform named in case.txt with its
 * param.* values, binds the .npy inputs, runs mel_forward_backward in f64
 * with chunk rows {1, 3, N, N+5} and in f32 with chunk rows 7, and compares
 * y, dX, dW (and db) with the reference.  The error measured is
 *     max_i |got_i − ref_i| / max_i |ref_i|      (denominator 1 when ref ≡ 0)
 * and must be <= 1e-10 in f64, <= 2e-5 in f32.  Each comparison is one TAP
 * line, with the measured error as a '#' diagnostic.
 *
 * Cases with per-token values (y_rows.npy, kl.npy, is_clipped.npy: GRPO)
 * also get an f64 mel_forward with reduction NONE, chunk rows 3, comparing
 * y and the aux outputs `kl` and `is_clipped` on the rows where mask != 0.
 *
 * A transform that this build does not have yet (not among the built-ins, or
 * MEL_ERR_UNSUPPORTED) is a failure: every fixture transform must exist.
 *
 * Fixture root: argv[1], else $MEL_TOP_SRCDIR/t/fixtures, else t/fixtures.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mel.h"
#include "npy.h"
#include "tap.h"

#define TOL_F64 1e-10
#define TOL_F32 2e-5
#define MAX_KV 64

typedef struct {
    char key[64];
    char val[512];
} kv_t;

#define N_INPUTS 8 /* per-row inputs (INPUT_NAMES) */
typedef struct {
    const char *name;
    char dir[1024];
    kv_t kv[MAX_KV];
    int nkv;
    /* inputs */
    npy_array X, W, bias, labels, seq_ids, Xt, Wt, grad_output, weights;
    npy_array in[N_INPUTS];         /* per-row inputs, names below        */
    /* references */
    npy_array y, dX, dW, db, y_rows, kl, is_clipped;
    int64_t N, D, V, Dt;
    mel_reduction red;
} fixture;

static const char *const INPUT_NAMES[N_INPUTS] = {"mask", "advantages", "old_logp",
                                                  "ref_logp", "completion_mask", "desirable",
                                                  "kl_ref", "sampling_logp"};

static const char *kv_get(const fixture *f, const char *key)
{
    for (int i = 0; i < f->nkv; i++)
        if (strcmp(f->kv[i].key, key) == 0) return f->kv[i].val;
    return NULL;
}

static int read_case_txt(fixture *f)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/case.txt", f->dir);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        diag("cannot open %s", path);
        return -1;
    }
    char line[1024];
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\r\n")] = 0;
        char *eq = strchr(line, '=');
        if (!eq || line[0] == '#') continue;
        *eq = 0;
        if (f->nkv == MAX_KV) {
            diag("%s: more than %d keys", path, MAX_KV);
            fclose(fp);
            return -1;
        }
        if (strlen(line) >= sizeof f->kv[0].key ||
            strlen(eq + 1) >= sizeof f->kv[0].val) {
            diag("%s: key or value too long: %s", path, line);
            fclose(fp);
            return -1;
        }
        memcpy(f->kv[f->nkv].key, line, strlen(line) + 1);
        memcpy(f->kv[f->nkv].val, eq + 1, strlen(eq + 1) + 1);
        f->nkv++;
    }
    fclose(fp);
    return 0;
}

/* 1 loaded, 0 absent (and not required), -1 error (diagnosed). */
static int load(const fixture *f, const char *file, npy_array *a, int required)
{
    char path[1200], err[512];
    memset(a, 0, sizeof *a);
    snprintf(path, sizeof path, "%s/%s", f->dir, file);
    if (access(path, F_OK) != 0) {
        if (required) diag("%s: missing %s", f->name, file);
        return required ? -1 : 0;
    }
    if (npy_load(path, a, err, sizeof err) != 0) {
        diag("%s", err);
        return -1;
    }
    return 1;
}

static void fixture_free(fixture *f)
{
    npy_array *all[] = {&f->X, &f->W, &f->bias, &f->labels, &f->seq_ids, &f->Xt, &f->Wt,
                        &f->grad_output, &f->weights, &f->in[0], &f->in[1],
                        &f->in[2], &f->in[3], &f->in[4], &f->in[5], &f->in[6], &f->in[7], &f->y, &f->dX, &f->dW, &f->db,
                        &f->y_rows, &f->kl, &f->is_clipped};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) npy_free(all[i]);
}

static int check_f64(const fixture *f, const npy_array *a, const char *what,
                     int64_t count)
{
    if (!a->data) return 0;
    if (a->dtype != MEL_F64 || a->count != count) {
        diag("%s: %s has dtype %s and %lld elements, want f64 and %lld",
             f->name, what, mel_dtype_name(a->dtype), (long long)a->count,
             (long long)count);
        return -1;
    }
    return 0;
}

static int fixture_load(fixture *f)
{
    int bad = 0;
    if (read_case_txt(f)) return -1;
    bad |= load(f, "X.npy", &f->X, 1) < 0;
    bad |= load(f, "W.npy", &f->W, 1) < 0;
    bad |= load(f, "y.npy", &f->y, 1) < 0;
    bad |= load(f, "dX.npy", &f->dX, 1) < 0;
    bad |= load(f, "dW.npy", &f->dW, 1) < 0;
    bad |= load(f, "bias.npy", &f->bias, 0) < 0;
    bad |= load(f, "db.npy", &f->db, 0) < 0;
    bad |= load(f, "labels.npy", &f->labels, 0) < 0;
    bad |= load(f, "seq_ids.npy", &f->seq_ids, 0) < 0;
    bad |= load(f, "Xt.npy", &f->Xt, 0) < 0;
    bad |= load(f, "Wt.npy", &f->Wt, 0) < 0;
    bad |= load(f, "grad_output.npy", &f->grad_output, 0) < 0;
    bad |= load(f, "y_rows.npy", &f->y_rows, 0) < 0;
    bad |= load(f, "kl.npy", &f->kl, 0) < 0;
    bad |= load(f, "is_clipped.npy", &f->is_clipped, 0) < 0;
    for (int i = 0; i < N_INPUTS; i++) {
        char file[64];
        snprintf(file, sizeof file, "%s.npy", INPUT_NAMES[i]);
        bad |= load(f, file, &f->in[i], 0) < 0;
    }
    if (bad) return -1;
    if (f->X.ndim != 2 || f->W.ndim != 2 || f->X.shape[1] != f->W.shape[1]) {
        diag("%s: X and W must be [N, D] and [V, D]", f->name);
        return -1;
    }
    f->N = f->X.shape[0];
    f->D = f->X.shape[1];
    f->V = f->W.shape[0];

    const char *r = kv_get(f, "reduction");
    if (!r) r = "mean";
    if (!strcmp(r, "none")) f->red = MEL_REDUCE_NONE;
    else if (!strcmp(r, "sum")) f->red = MEL_REDUCE_SUM;
    else if (!strcmp(r, "mean")) f->red = MEL_REDUCE_MEAN;
    else if (!strcmp(r, "weighted")) f->red = MEL_REDUCE_WEIGHTED;
    else {
        diag("%s: unknown reduction '%s'", f->name, r);
        return -1;
    }
    if (f->red == MEL_REDUCE_WEIGHTED) {
        const char *wf = kv_get(f, "weights");
        if (!wf || load(f, wf, &f->weights, 1) < 0) {
            diag("%s: reduction weighted needs weights=FILE", f->name);
            return -1;
        }
    }
    int64_t ny = f->red == MEL_REDUCE_NONE ? f->N : 1;
    bad |= check_f64(f, &f->X, "X", f->N * f->D);
    bad |= check_f64(f, &f->W, "W", f->V * f->D);
    bad |= check_f64(f, &f->bias, "bias", f->V);
    bad |= check_f64(f, &f->y, "y", ny);
    bad |= check_f64(f, &f->dX, "dX", f->N * f->D);
    bad |= check_f64(f, &f->dW, "dW", f->V * f->D);
    bad |= check_f64(f, &f->db, "db", f->V);
    bad |= check_f64(f, &f->grad_output, "grad_output", ny);
    bad |= check_f64(f, &f->weights, "weights", f->N);
    bad |= check_f64(f, &f->y_rows, "y_rows", f->N);
    bad |= check_f64(f, &f->kl, "kl", f->N);
    bad |= check_f64(f, &f->is_clipped, "is_clipped", f->N);
    for (int i = 0; i < N_INPUTS; i++) bad |= check_f64(f, &f->in[i], INPUT_NAMES[i], f->N);
    if (f->seq_ids.data && (f->seq_ids.dtype != MEL_I64 || f->seq_ids.count != f->N)) {
        diag("%s: seq_ids must be int64 [N]", f->name);
        bad = 1;
    }
    if (f->labels.data &&
        (f->labels.dtype != MEL_I64 || f->labels.count != f->N)) {
        diag("%s: labels must be int64 [N]", f->name);
        bad = 1;
    }
    if (f->Xt.data) {
        if (!f->Wt.data || f->Xt.ndim != 2 || f->Wt.ndim != 2 ||
            f->Xt.shape[0] != f->N || f->Wt.shape[0] != f->V ||
            f->Xt.shape[1] != f->Wt.shape[1]) {
            diag("%s: teacher Xt [N, Dt], Wt [V, Dt] do not fit", f->name);
            bad = 1;
        } else {
            f->Dt = f->Xt.shape[1];
            bad |= check_f64(f, &f->Xt, "Xt", f->N * f->Dt);
            bad |= check_f64(f, &f->Wt, "Wt", f->V * f->Dt);
        }
    }
    return bad ? -1 : 0;
}

/* A copy of a f64 array in dtype dt (f64 or f32); NULL for NULL. */
static void *conv(const npy_array *a, mel_dtype dt)
{
    if (!a->data) return NULL;
    size_t n = (size_t)(a->count ? a->count : 1);
    void *p = calloc(n, mel_dtype_size(dt));
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    const double *s = a->data;
    for (size_t i = 0; i < (size_t)a->count; i++) {
        if (dt == MEL_F64) ((double *)p)[i] = s[i];
        else ((float *)p)[i] = (float)s[i];
    }
    return p;
}

static double getv(const void *p, mel_dtype dt, int64_t i)
{
    return dt == MEL_F64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

/* max |got − ref| / max |ref| over entries whose row is selected (rowmask
 * NULL: all); rows have rowlen entries.  Inf when got has a NaN/Inf. */
static double rel_err(const void *got, mel_dtype dt, const double *ref,
                      int64_t n, const double *rowmask, int64_t rowlen)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        if (rowmask && rowmask[i / rowlen] == 0) continue;
        double g = getv(got, dt, i);
        if (!isfinite(g)) return INFINITY;
        double e = fabs(g - ref[i]);
        if (e > num) num = e;
        if (fabs(ref[i]) > den) den = fabs(ref[i]);
    }
    return num / (den > 0 ? den : 1.0);
}

static void compare(const fixture *f, const char *run, const char *what,
                    const void *got, mel_dtype dt, const double *ref,
                    int64_t n, double tol, const double *rowmask,
                    int64_t rowlen)
{
    double e = rel_err(got, dt, ref, n, rowmask, rowlen);
    ok(e <= tol, "%s %s %s", f->name, run, what);
    diag("  %s %s %s: max|err|/max|ref| = %.3e (tol %.0e)", f->name, run,
         what, e, tol);
}

static int transform_exists(const char *name)
{
    for (int i = 0; i < mel_builtin_count(); i++) {
        const char *b = mel_builtin_name(i);
        if (b && strcmp(b, name) == 0) return 1;
    }
    return 0;
}

typedef struct {
    void *X, *W, *bias, *Xt, *Wt, *go, *in[N_INPUTS];
} bufs;

static void bufs_make(const fixture *f, mel_dtype dt, bufs *b)
{
    b->X = conv(&f->X, dt);
    b->W = conv(&f->W, dt);
    b->bias = conv(&f->bias, dt);
    b->Xt = conv(&f->Xt, dt);
    b->Wt = conv(&f->Wt, dt);
    b->go = conv(&f->grad_output, dt);
    for (int i = 0; i < N_INPUTS; i++) b->in[i] = conv(&f->in[i], dt);
}

static void bufs_free(bufs *b)
{
    free(b->X); free(b->W); free(b->bias); free(b->Xt); free(b->Wt);
    free(b->go);
    for (int i = 0; i < N_INPUTS; i++) free(b->in[i]);
}

/* Bind the inputs common to every run; 0 or a status. */
static mel_status bind_inputs(const fixture *f, mel_args *a, const bufs *b,
                              mel_dtype dt)
{
    mel_status s;
    s = mel_args_head(a, 0, mel_mat(b->X, dt, f->N, f->D, 0),
                      mel_mat(b->W, dt, f->V, f->D, 0), b->bias);
    if (s) return s;
    if (b->Xt) {
        s = mel_args_head(a, 1, mel_mat(b->Xt, dt, f->N, f->Dt, 0),
                          mel_mat(b->Wt, dt, f->V, f->Dt, 0), NULL);
        if (s) return s;
    }
    if (f->labels.data) {
        s = mel_args_index(a, "labels", f->labels.data, MEL_I64, f->N);
        if (s) return s;
    }
    if (f->seq_ids.data) { /* the sequence layout (dpo: chosen 2b, rejected 2b + 1) */
        s = mel_args_index(a, "seq_ids", f->seq_ids.data, MEL_I64, f->N);
        if (s) return s;
    }
    for (int i = 0; i < N_INPUTS; i++)
        if (b->in[i]) {
            s = mel_args_input(a, INPUT_NAMES[i], b->in[i], dt, f->N);
            if (s) return s;
        }
    return MEL_OK;
}

/* Returns 1 when the transform turned out to be unsupported (skip the rest). */
static int run_fb(const fixture *f, mel_ctx *ctx, const mel_transform *t,
                  const char *tname, mel_dtype dt, int64_t R)
{
    char run[64];
    snprintf(run, sizeof run, "%s R=%lld", mel_dtype_name(dt), (long long)R);
    double tol = dt == MEL_F64 ? TOL_F64 : TOL_F32;
    int64_t ny = f->red == MEL_REDUCE_NONE ? f->N : 1;
    size_t es = mel_dtype_size(dt);
    bufs b;
    bufs_make(f, dt, &b);
    void *y = calloc((size_t)ny, es);
    void *dx = calloc((size_t)(f->N * f->D), es);
    void *dw = calloc((size_t)(f->V * f->D), es);
    void *db = f->bias.data ? calloc((size_t)f->V, es) : NULL;
    mel_args *a = mel_args_new();
    int unsupported = 0;
    mel_status s = mel_set_chunk_rows(ctx, R);
    if (!s) s = bind_inputs(f, a, &b, dt);
    if (!s) s = mel_args_reduction(a, f->red, f->weights.data);
    if (!s) s = mel_args_output(a, y, dt);
    if (!s && b.go) s = mel_args_grad_output(a, b.go, dt);
    if (!s)
        s = mel_args_grad_head(a, 0, mel_mat(dx, dt, f->N, f->D, 0),
                               mel_mat(dw, dt, f->V, f->D, 0), db,
                               MEL_OVERWRITE_DW);
    if (!s) s = mel_forward_backward(ctx, t, a);
    if (s == MEL_ERR_UNSUPPORTED) {
        ok(0, "%s is missing from the library (%s %s: %s)", tname, f->name, run,
             mel_last_error(ctx));
        unsupported = 1;
    } else if (s) {
        ok(0, "%s %s mel_forward_backward", f->name, run);
        diag("  %s: %s", mel_status_str(s), mel_last_error(ctx));
    } else {
        compare(f, run, "y", y, dt, f->y.data, ny, tol, NULL, 1);
        compare(f, run, "dX", dx, dt, f->dX.data, f->N * f->D, tol, NULL, 1);
        compare(f, run, "dW", dw, dt, f->dW.data, f->V * f->D, tol, NULL, 1);
        if (db) compare(f, run, "db", db, dt, f->db.data, f->V, tol, NULL, 1);
    }
    mel_args_free(a);
    free(y); free(dx); free(dw); free(db);
    bufs_free(&b);
    return unsupported;
}

/* Per-row values and aux outputs (f64, reduction NONE, forward only),
 * compared where mask != 0 (all rows when there is no mask). */
static void run_rows(const fixture *f, mel_ctx *ctx, const mel_transform *t,
                     const char *tname)
{
    const char *run = "f64 R=3 none";
    bufs b;
    bufs_make(f, MEL_F64, &b);
    double *y = calloc((size_t)f->N, sizeof *y);
    double *kl = calloc((size_t)f->N, sizeof *kl);
    double *clip = calloc((size_t)f->N, sizeof *clip);
    const double *mask = f->in[0].data;
    mel_args *a = mel_args_new();
    mel_status s = mel_set_chunk_rows(ctx, 3);
    if (!s) s = bind_inputs(f, a, &b, MEL_F64);
    if (!s) s = mel_args_reduction(a, MEL_REDUCE_NONE, NULL);
    if (!s) s = mel_args_output(a, y, MEL_F64);
    if (!s && f->kl.data) s = mel_args_aux(a, "kl", kl, MEL_F64);
    if (!s && f->is_clipped.data)
        s = mel_args_aux(a, "is_clipped", clip, MEL_F64);
    if (!s) s = mel_forward(ctx, t, a);
    if (s == MEL_ERR_UNSUPPORTED) {
        ok(0, "%s is missing from the library (%s %s: %s)", tname, f->name, run,
             mel_last_error(ctx));
    } else if (s) {
        ok(0, "%s %s mel_forward with aux outputs", f->name, run);
        diag("  %s: %s", mel_status_str(s), mel_last_error(ctx));
    } else {
        compare(f, run, "y per row (mask rows)", y, MEL_F64, f->y_rows.data,
                f->N, TOL_F64, mask, 1);
        if (f->kl.data)
            compare(f, run, "aux kl (mask rows)", kl, MEL_F64, f->kl.data,
                    f->N, TOL_F64, mask, 1);
        if (f->is_clipped.data)
            compare(f, run, "aux is_clipped (mask rows)", clip, MEL_F64,
                    f->is_clipped.data, f->N, 0.0, mask, 1);
    }
    mel_args_free(a);
    free(y); free(kl); free(clip);
    bufs_free(&b);
}

static void run_case(mel_ctx *ctx, const char *root, const char *name)
{
    fixture f;
    memset(&f, 0, sizeof f);
    f.name = name;
    snprintf(f.dir, sizeof f.dir, "%s/%s", root, name);
    if (fixture_load(&f)) {
        ok(0, "%s: load fixture", name);
        fixture_free(&f);
        return;
    }
    const char *tname = kv_get(&f, "transform");
    const char *src = kv_get(&f, "source");
    diag("case %s: transform %s, N=%lld D=%lld V=%lld; reference: %s", name,
         tname ? tname : "?", (long long)f.N, (long long)f.D, (long long)f.V,
         src ? src : "?");
    if (!tname) {
        ok(0, "%s: case.txt names no transform", name);
        fixture_free(&f);
        return;
    }
    if (!transform_exists(tname)) {
        ok(0, "%s is missing from the library (case %s)", tname, name);
        fixture_free(&f);
        return;
    }
    mel_params *p = mel_params_new();
    int bad = 0;
    for (int i = 0; i < f.nkv; i++) {
        if (strncmp(f.kv[i].key, "param.", 6) != 0) continue;
        char *end;
        double v = strtod(f.kv[i].val, &end);
        if (end == f.kv[i].val || *end) {
            diag("%s: %s=%s is not a number", name, f.kv[i].key, f.kv[i].val);
            bad = 1;
        } else if (mel_params_set(p, f.kv[i].key + 6, v) != MEL_OK) {
            diag("%s: mel_params_set(%s) failed", name, f.kv[i].key + 6);
            bad = 1;
        }
    }
    mel_transform *t = NULL;
    mel_status s = bad ? MEL_ERR_INVALID_ARGUMENT
                       : mel_transform_builtin(ctx, tname, p, &t);
    mel_params_free(p);
    if (s == MEL_ERR_UNSUPPORTED) {
        ok(0, "%s is missing from the library (case %s: %s)", tname, name, mel_last_error(ctx));
        fixture_free(&f);
        return;
    }
    if (!ok(s == MEL_OK, "%s: mel_transform_builtin(%s)", name, tname)) {
        diag("  %s: %s", mel_status_str(s), bad ? "bad param" : mel_last_error(ctx));
        fixture_free(&f);
        return;
    }
    int64_t chunks[4] = {1, 3, f.N, f.N + 5};
    for (int i = 0; i < 4; i++) {
        int dup = 0;
        for (int j = 0; j < i; j++) dup |= chunks[j] == chunks[i];
        if (dup) continue;
        if (run_fb(&f, ctx, t, tname, MEL_F64, chunks[i])) goto out;
    }
    if (run_fb(&f, ctx, t, tname, MEL_F32, 7)) goto out;
    if (f.y_rows.data) run_rows(&f, ctx, t, tname);
out:
    mel_transform_free(t);
    fixture_free(&f);
}

int main(int argc, char **argv)
{
    char root[1024];
    const char *top = getenv("MEL_TOP_SRCDIR");
    if (argc > 1) snprintf(root, sizeof root, "%s", argv[1]);
    else snprintf(root, sizeof root, "%s/t/fixtures", top && *top ? top : ".");
    char cases_path[1100];
    snprintf(cases_path, sizeof cases_path, "%s/CASES", root);
    FILE *fp = fopen(cases_path, "r");
    if (!fp) {
        ok(0, "open %s", cases_path);
        return done_testing();
    }
    diag("fixtures from %s; tolerance max|err|/max|ref|: f64 %.0e, f32 %.0e",
         root, TOL_F64, TOL_F32);
    mel_ctx *ctx = NULL;
    if (mel_ctx_create(MEL_BACKEND_CPU, &ctx) != MEL_OK) {
        ok(0, "mel_ctx_create: %s", mel_ctx_create_error());
        fclose(fp);
        return done_testing();
    }
    char line[512];
    int ncases = 0;
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\r\n \t")] = 0;
        if (!line[0] || line[0] == '#') continue;
        run_case(ctx, root, line);
        ncases++;
    }
    fclose(fp);
    ok(ncases > 0, "%d fixture cases read from %s", ncases, cases_path);
    mel_ctx_destroy(ctx);
    return done_testing();
}
