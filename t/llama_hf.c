/*
 * llama_hf.t -- the C Llama of examples/llama against HF transformers.
 *
 * The fixture (t/fixtures/llama/, written by examples/llama/gen_hf_fixture.py)
 * holds the weights of the `tiny` config, one batch, and the loss, some
 * logits and every parameter gradient of transformers' LlamaForCausalLM in
 * fp64 ("truth"), plus the error of HF's own fp32 run against that truth.
 *
 * Three-way check, per quantity q (loss, logits, each gradient tensor):
 *   err(C fp32) <= K · err(HF fp32) + FLOOR
 * with err the relative L2 error (max error for logits), K = 8 and
 * FLOOR = 2e-6 (≈ 17 fp32 ulps).  K allows a different but equally
 * legitimate fp32 summation order (BLAS blocking, our double-accumulated
 * RMSNorm and softmax sums vs torch's); FLOOR covers quantities whose HF
 * fp32 error happens to be tiny.  A wrong derivative gives errors of order
 * 1, a wrong RoPE pairing or GQA mapping of order 1e-1.
 *
 * Both heads are checked: the naive full-logits head and libmel's "ce".
 * Also: an untied model whose lm_head equals the embedding must give the
 * tied model's loss and d(tok_emb) = d(tok_emb)_untied + d(lm_head).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../examples/llama/head.h"
#include "../examples/llama/model.h"
#include "tap.h"

#define K_FP32 8.0
#define FLOOR 2e-6

static char fixdir[4096];

static void *read_all(const char *name, long *size)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", fixdir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *size = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc((size_t)*size + 1);
    if (!p || fread(p, 1, (size_t)*size, f) != (size_t)*size) {
        free(p);
        p = NULL;
    }
    fclose(f);
    return p;
}

typedef struct fixture_batch {
    int B, T, npos, ntens;
    int32_t *tokens; /* [B, T+1] */
    double loss64, loss32, logit_err32;
    int32_t *pos;    /* [npos] rows n = b*T + t */
    float *logits;   /* [npos, V] */
    double *rel_l2_32, *rel_max_32; /* [ntens] */
    void *raw;       /* the file's bytes: every field above points into it */
} fixture_batch;

static int load_batch(fixture_batch *fb, int V)
{
    long sz;
    unsigned char *p = read_all("tiny-batch.bin", &sz), *q;
    if (!p) return -1;
    uint32_t h[6];
    if (sz < 32 || memcmp(p, "MELLBAT1", 8) != 0) goto bad;
    memcpy(h, p + 8, sizeof h);
    if (h[0] != 1) goto bad;
    fb->B = (int)h[1], fb->T = (int)h[2], fb->npos = (int)h[3],
    fb->ntens = (int)h[4];
    long need = 32 + 4L * fb->B * (fb->T + 1) + 16 + 4L * fb->npos +
                4L * fb->npos * V + 8 + 16L * fb->ntens;
    if (sz != need) goto bad;
    q = p + 32;
    fb->tokens = (int32_t *)q;             q += 4L * fb->B * (fb->T + 1);
    memcpy(&fb->loss64, q, 8);             q += 8;
    memcpy(&fb->loss32, q, 8);             q += 8;
    fb->pos = (int32_t *)q;                q += 4L * fb->npos;
    fb->logits = (float *)q;               q += 4L * fb->npos * V;
    memcpy(&fb->logit_err32, q, 8);        q += 8;
    fb->rel_l2_32 = (double *)q;           q += 8L * fb->ntens;
    fb->rel_max_32 = (double *)q;
    fb->raw = p; /* kept: the fields point into it; freed by main */
    return 0;
bad:
    free(p);
    return -1;
}

/* Relative L2 error of got against want (n values). */
static double rel_l2(const float *got, const float *want, int64_t n)
{
    double e = 0, w = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)got[i] - want[i];
        e += d * d;
        w += (double)want[i] * want[i];
    }
    return w > 0 ? sqrt(e / w) : sqrt(e);
}

/* Run forward + head + backward; loss out, gradients into g. */
static int run(const llama_config *c, const llama_layout *lo, const float *p,
               const int32_t *in, const int32_t *tg, llama_acts *a, float *g,
               head_mel *hm, head_naive *hn, int use_mel, double *loss)
{
    llama_forward(c, lo, p, in, a);
    if (use_mel) {
        if (head_mel_run(hm, a->hn, p + lo->lm_head, a->N, c->dim, c->vocab, tg,
                         a->dhn, g + lo->lm_head, loss) != 0) {
            diag("libmel: %s", hm->err);
            return -1;
        }
    } else {
        head_naive_run(hn, a->hn, p + lo->lm_head, c->dim, tg, a->dhn,
                       g + lo->lm_head, loss);
    }
    llama_backward(c, lo, p, in, a, g);
    return 0;
}

int main(void)
{
    const char *top = getenv("MEL_TOP_SRCDIR");
    snprintf(fixdir, sizeof fixdir, "%s/t/fixtures/llama", top ? top : ".");
    diag("fixture %s; tolerance err(C) <= %g * err(HF fp32) + %g", fixdir,
         K_FP32, FLOOR);

    llama_config c, cp;
    char err[512], path[4200];
    snprintf(path, sizeof path, "%s/tiny-weights.ckpt", fixdir);
    if (!ok(llama_ckpt_peek(path, &c, NULL, err, sizeof err) == 0,
            "read the fixture's checkpoint header")) {
        diag("%s", err);
        return done_testing();
    }
    llama_config_preset("tiny", &cp);
    ok(memcmp(&c, &cp, sizeof c) == 0,
       "the fixture's config is llama-train's tiny preset");

    llama_layout lo;
    llama_layout_init(&c, &lo);
    float *w = malloc((size_t)lo.total * sizeof(float));
    float *gref = malloc((size_t)lo.total * sizeof(float));
    float *g = malloc((size_t)lo.total * sizeof(float));
    fixture_batch fb;
    memset(&fb, 0, sizeof fb);
    if (!w || !gref || !g) {
        ok(0, "allocate");
        return done_testing();
    }
    snprintf(path, sizeof path, "%s/tiny-weights.ckpt", fixdir);
    int r1 = llama_ckpt_load(path, &c, &lo, w, err, sizeof err);
    snprintf(path, sizeof path, "%s/tiny-grads.ckpt", fixdir);
    int r2 = r1 == 0 ? llama_ckpt_load(path, &c, &lo, gref, err, sizeof err) : -1;
    if (!ok(r1 == 0 && r2 == 0, "load weights and reference gradients")) {
        diag("%s", err);
        return done_testing();
    }
    if (!ok(load_batch(&fb, c.vocab) == 0, "load tiny-batch.bin")) return done_testing();

    enum { MAXT = 512 };
    int64_t off[MAXT], len[MAXT];
    char names[MAXT][32];
    int nt = llama_tensor_list(&c, &lo, MAXT, off, len, names, NULL);
    is_int(nt, fb.ntens, "tensor count matches the fixture");

    const int B = fb.B, T = fb.T;
    const int64_t N = (int64_t)B * T;
    int32_t *in = malloc((size_t)N * sizeof(int32_t)),
            *tg = malloc((size_t)N * sizeof(int32_t));
    llama_acts a;
    head_naive hn;
    head_mel hm;
    if (!in || !tg || llama_acts_alloc(&c, B, T, &a) != 0 ||
        head_naive_init(&hn, N, c.vocab) != 0) {
        ok(0, "allocate");
        return done_testing();
    }
    int have_mel = head_mel_init(&hm, 0, 5 /* chunk rows: N=32 → 7 chunks */, 0) == 0;
    if (!have_mel) diag("libmel head unavailable: %s", hm.err);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            in[b * T + t] = fb.tokens[b * (T + 1) + t];
            tg[b * T + t] = fb.tokens[b * (T + 1) + t + 1];
        }

    for (int use_mel = 0; use_mel <= 1; use_mel++) {
        const char *hname = use_mel ? "mel" : "naive";
        if (use_mel && !have_mel) {
            ok(0, "libmel head could be created");
            continue;
        }
        double loss;
        if (!ok(run(&c, &lo, w, in, tg, &a, g, &hm, &hn, use_mel, &loss) == 0,
                "%s head: forward/backward ran", hname))
            continue;
        double e_hf = fabs(fb.loss32 - fb.loss64) / fabs(fb.loss64);
        double e_c = fabs(loss - fb.loss64) / fabs(fb.loss64);
        ok(e_c <= K_FP32 * e_hf + FLOOR,
           "%s head: loss %.9f vs HF fp64 %.9f: rel err %.2e (HF fp32 %.2e)",
           hname, loss, fb.loss64, e_c, e_hf);
        if (!use_mel) {
            /* logits z[n] = hn[n] · Wᵀ at the stored rows */
            double emax = 0, wmax = 0;
            for (int i = 0; i < fb.npos; i++) {
                const float *x = a.hn + (int64_t)fb.pos[i] * c.dim;
                for (int v = 0; v < c.vocab; v++) {
                    const float *wr = w + lo.lm_head + (int64_t)v * c.dim;
                    double z = 0;
                    for (int d = 0; d < c.dim; d++) z += (double)x[d] * wr[d];
                    double ref = fb.logits[(int64_t)i * c.vocab + v];
                    emax = fmax(emax, fabs(z - ref));
                    wmax = fmax(wmax, fabs(ref));
                }
            }
            ok(emax / wmax <= K_FP32 * fb.logit_err32 + FLOOR,
               "logits at %d positions: max rel err %.2e (HF fp32 %.2e)",
               fb.npos, emax / wmax, fb.logit_err32);
        }
        for (int i = 0; i < nt; i++) {
            double e = rel_l2(g + off[i], gref + off[i], len[i]);
            ok(e <= K_FP32 * fb.rel_l2_32[i] + FLOOR,
               "%s head: d %-18s rel L2 err %.2e (HF fp32 %.2e)", hname,
               names[i], e, fb.rel_l2_32[i]);
        }
        if (use_mel) {
            mel_stats st = hm.last;
            ok(st.chunks == (N + 4) / 5, "libmel used %lld chunks of %lld rows",
               (long long)st.chunks, (long long)st.chunk_rows);
        }
    }

    /* Untied model with lm_head := tok_emb reproduces the tied one. */
    {
        llama_config cu = c;
        cu.tied = 0;
        llama_layout lu;
        llama_layout_init(&cu, &lu);
        float *wu = malloc((size_t)lu.total * sizeof(float));
        float *gu = malloc((size_t)lu.total * sizeof(float));
        if (!wu || !gu) {
            ok(0, "allocate untied");
            return done_testing();
        }
        memcpy(wu, w, (size_t)lo.total * sizeof(float));
        memcpy(wu + lu.lm_head, w + lo.tok_emb,
               (size_t)c.vocab * c.dim * sizeof(float));
        double lt, lu_;
        run(&c, &lo, w, in, tg, &a, g, &hm, &hn, 0, &lt);
        run(&cu, &lu, wu, in, tg, &a, gu, &hm, &hn, 0, &lu_);
        ok(lt == lu_, "untied copy: same loss (%.9f, %.9f)", lt, lu_);
        int64_t VD = (int64_t)c.vocab * c.dim;
        for (int64_t i = 0; i < VD; i++) gu[lu.tok_emb + i] += gu[lu.lm_head + i];
        double e = rel_l2(gu, g, lo.total);
        ok(e <= 1e-7, "untied: d(tok_emb) + d(lm_head) == tied d(tok_emb), "
                      "other gradients equal (rel err %.2e)", e);
        free(wu);
        free(gu);
    }

    if (have_mel) head_mel_free(&hm);
    head_naive_free(&hn);
    llama_acts_free(&a);
    free(in);
    free(tg);
    free(w);
    free(g);
    free(gref);
    free(fb.raw);
    return done_testing();
}
