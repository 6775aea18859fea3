/*
 * data.h -- training text for llama-train, byte-level tokens.
 *
 * Tokens are bytes (ids 0..255) whatever the configured vocabulary: the
 * head still has V rows (128256 for llama-3.2-1b), so its memory and work
 * are those of the real model; ids >= 256 simply never occur as labels.
 *
 * Default corpus (no download): every regular file directly under
 * /usr/share/common-licenses (present on every Debian system: GPL, Apache,
 * BSD, ... about 260 kB), read in name order and concatenated.  If that
 * directory is missing or empty, a deterministic generated text is used
 * instead (the source string says which).
 */
#ifndef LLAMA_DATA_H
#define LLAMA_DATA_H
#include <stddef.h>
#include <stdint.h>
#include "model.h"

#define LLAMA_DEFAULT_CORPUS_DIR "/usr/share/common-licenses"

typedef struct llama_corpus {
    unsigned char *bytes;
    int64_t n;
    char source[256]; /* where the text came from, for the log */
} llama_corpus;

/* path == NULL: the default corpus.  0, or -1 with a message. */
int llama_corpus_load(const char *path, llama_corpus *c, char *err,
                      size_t errlen);
void llama_corpus_free(llama_corpus *c);

/* B windows of T+1 consecutive bytes at offsets drawn from r:
 * inputs [B·T] = window[0..T-1], targets [B·T] = window[1..T]. */
void llama_corpus_batch(const llama_corpus *c, llama_rng *r, int B, int T,
                        int32_t *inputs, int32_t *targets);
#endif
