/* data.c -- corpus loading and batch sampling (data.h). */
#include "data.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Append the whole file `path` to c; 0, or -1 with a message. */
static int append_file(llama_corpus *c, const char *path, char *err,
                       size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    unsigned char buf[65536];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        unsigned char *nb = realloc(c->bytes, (size_t)c->n + got);
        if (!nb) {
            fclose(f);
            snprintf(err, errlen, "%s: out of memory", path);
            return -1;
        }
        c->bytes = nb;
        memcpy(c->bytes + c->n, buf, got);
        c->n += (int64_t)got;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "%s: read error", path);
        return -1;
    }
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Deterministic filler text: sentences from a small vocabulary with a
 * simple grammar, so that a model has something learnable. */
static int generate_text(llama_corpus *c, int64_t n)
{
    static const char *subj[] = {"the model", "a token", "the head",
                                 "every row", "the gradient", "this chunk"};
    static const char *verb[] = {"computes", "keeps", "drops", "reads",
                                 "writes", "learns"};
    static const char *obj[] = {"the logits", "one chunk", "the loss",
                                "a small buffer", "the weights", "the text"};
    c->bytes = malloc((size_t)n + 64);
    if (!c->bytes) return -1;
    llama_rng r;
    llama_rng_seed(&r, 12345);
    int64_t k = 0;
    while (k < n) {
        k += sprintf((char *)c->bytes + k, "%s %s %s. ",
                     subj[llama_rng_u64(&r) % 6], verb[llama_rng_u64(&r) % 6],
                     obj[llama_rng_u64(&r) % 6]);
    }
    c->n = n;
    return 0;
}

int llama_corpus_load(const char *path, llama_corpus *c, char *err,
                      size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (path) {
        if (append_file(c, path, err, errlen) != 0) {
            llama_corpus_free(c);
            return -1;
        }
        snprintf(c->source, sizeof c->source, "%s", path);
    } else {
        DIR *d = opendir(LLAMA_DEFAULT_CORPUS_DIR);
        char **names = NULL;
        size_t nn = 0;
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)) != NULL) {
                if (e->d_name[0] == '.') continue;
                char full[4096];
                snprintf(full, sizeof full, "%s/%s", LLAMA_DEFAULT_CORPUS_DIR,
                         e->d_name);
                struct stat st;
                if (stat(full, &st) != 0 || !S_ISREG(st.st_mode)) continue;
                char **nn2 = realloc(names, (nn + 1) * sizeof *names);
                char *dup = strdup(full);
                if (!nn2 || !dup) {
                    free(dup);
                    if (nn2) names = nn2;
                    for (size_t i = 0; i < nn; i++) free(names[i]);
                    free(names);
                    closedir(d);
                    snprintf(err, errlen, "corpus: out of memory");
                    return -1;
                }
                names = nn2;
                names[nn++] = dup;
            }
            closedir(d);
        }
        if (nn > 0) qsort(names, nn, sizeof *names, cmp_str);
        int rc = 0;
        for (size_t i = 0; i < nn; i++) {
            if (rc == 0 && append_file(c, names[i], err, errlen) != 0) rc = -1;
            free(names[i]);
        }
        free(names);
        if (rc != 0) {
            llama_corpus_free(c);
            return -1;
        }
        if (c->n > 0) {
            snprintf(c->source, sizeof c->source, "%s/* (%zu files)",
                     LLAMA_DEFAULT_CORPUS_DIR, nn);
        } else {
            if (generate_text(c, 1 << 18) != 0) {
                snprintf(err, errlen, "corpus: out of memory");
                return -1;
            }
            snprintf(c->source, sizeof c->source,
                     "generated text (%s not found)", LLAMA_DEFAULT_CORPUS_DIR);
        }
    }
    if (c->n < 2) {
        snprintf(err, errlen, "%s: corpus has %lld bytes; need at least 2",
                 c->source, (long long)c->n);
        llama_corpus_free(c);
        return -1;
    }
    return 0;
}

void llama_corpus_free(llama_corpus *c)
{
    free(c->bytes);
    c->bytes = NULL;
    c->n = 0;
}

void llama_corpus_batch(const llama_corpus *c, llama_rng *r, int B, int T,
                        int32_t *inputs, int32_t *targets)
{
    for (int b = 0; b < B; b++) {
        /* Windows longer than the corpus wrap around. */
        int64_t span = c->n > (int64_t)T + 1 ? c->n - T - 1 : c->n;
        int64_t o = (int64_t)(llama_rng_u64(r) % (uint64_t)span);
        for (int t = 0; t < T; t++) {
            inputs[(int64_t)b * T + t] = c->bytes[(o + t) % c->n];
            targets[(int64_t)b * T + t] = c->bytes[(o + t + 1) % c->n];
        }
    }
}
