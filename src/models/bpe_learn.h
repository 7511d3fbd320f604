/* Learning a CLIP-format byte-level BPE vocabulary from captions: the same cleaning and split
 * as the tokenizer (tokenizer_split), the 512 byte symbols of CLIP (ids 0-255 the
 * bytes_to_unicode characters in CLIP's order, 256-511 the same + "</w>"), greedy merges of
 * the most frequent adjacent pair, then <|startoftext|> and <|endoftext|> as the last ids.
 * Writes vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json (SD 1.x style:
 * pad = eos = <|endoftext|>), which tokenizer_load reads. */
#ifndef SVDIFF_MODELS_BPE_LEARN_H
#define SVDIFF_MODELS_BPE_LEARN_H

#include <stddef.h>

typedef struct {
    int vocab_size;        /* ids wanted in all (512 bytes + merges + 2 specials); >= 514 */
    int min_frequency;     /* a pair seen fewer times (weighted by word counts) is never merged */
    /* A rare identifier ("sks") that must be one token although no caption contains it: its
     * merge chain (s+k, sk+s</w>) gets ranks 0.. ahead of the learned merges, which are
     * learned on words already segmented by it, so encoding the word always ends in one
     * token. A caption that contains it as a word is an error. NULL or "": none. */
    const char *reserved;
} bpe_learn_options_t;

/* Statistics of one run. */
typedef struct {
    int n_captions, n_words, n_unique_words;
    int n_merges;          /* lines written to merges.txt */
    int vocab_size;        /* ids in vocab.json (fewer than asked when pairs run out) */
} bpe_learn_stats_t;

/* Learns from captions[0..n) and writes the four files into out_dir (created if missing).
 * Deterministic: ties between pairs of equal frequency go to the lowest (first, second) pair
 * in the byte order of their vocab.json strings. Errors: SD_ERR_ARG (bad options, a caption
 * containing the reserved word, naming the caption), SD_ERR_IO. */
int bpe_learn(const char *const *captions, int n, const bpe_learn_options_t *opt, const char *out_dir,
              bpe_learn_stats_t *stats);

/* Reads captions from a text file: one per line, or with column >= 1 the column-th
 * tab-separated field of each line (a line without it is an error naming the line). Empty
 * lines are skipped, a trailing '\r' removed; a file without any caption is an error. *out is
 * an array of *n malloc'ed strings; free with bpe_free_captions. */
int bpe_read_captions(const char *path, int column, char ***out, int *n);
void bpe_free_captions(char **captions, int n);

#endif
