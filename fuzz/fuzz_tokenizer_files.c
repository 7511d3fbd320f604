/* libFuzzer harness: a tokenizer folder through tokenizer_load, then encoding a fixed prompt with
 * what it accepted. Input: vocab.json, then optionally the separator line "--merges.txt--" and
 * merges.txt, then optionally "--special_tokens_map.json--" and that file. */
#include "fuzz_util.h"

#include "models/tokenizer.h"

static const char SEP_MERGES[] = "\n--merges.txt--\n";
static const char SEP_SPECIAL[] = "\n--special_tokens_map.json--\n";

/* Splits [p, p+n) at the first `sep`: returns the length before it, *rest after it (NULL if absent). */
static size_t split(const uint8_t *p, size_t n, const char *sep, const uint8_t **rest, size_t *rest_n) {
    const size_t k = strlen(sep);
    const uint8_t *hit = n >= k ? memmem(p, n, sep, k) : NULL;
    if (!hit) {
        *rest = NULL, *rest_n = 0;
        return n;
    }
    *rest = hit + k, *rest_n = n - (size_t)(hit - p) - k;
    return (size_t)(hit - p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) fuzz_mkdir("tok"), ready = 1;
    const uint8_t *merges, *special;
    size_t n_merges, n_special;
    const size_t n_vocab = split(data, size, SEP_MERGES, &merges, &n_merges);
    if (merges) n_merges = split(merges, n_merges, SEP_SPECIAL, &special, &n_special);
    else special = NULL, n_special = 0;
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, "tok/vocab.json"), data, n_vocab);
    fuzz_write(fuzz_path(path, sizeof path, "tok/merges.txt"), merges ? merges : data, merges ? n_merges : 0);
    fuzz_path(path, sizeof path, "tok/special_tokens_map.json");
    if (special) fuzz_write(path, special, n_special);
    else unlink(path);
    clip_tokenizer_t *tok = NULL;
    if (fuzz_rc(tokenizer_load(&tok, fuzz_path(path, sizeof path, "tok")), "tokenizer_load") == 0) {
        int ids[TOKENIZER_MAX_LENGTH], n0 = 0;
        tokenizer_encode(tok, "a photo of sks dog, <|endoftext|> caf\xc3\xa9 \xff 123!!!! don't", ids,
                         TOKENIZER_MAX_LENGTH, 1, &n0);
        const int nv = tokenizer_vocab_size(tok);
        for (int id = 0; id < nv && id < 4096; id++) tokenizer_token(tok, id);
        tokenizer_bos_id(tok), tokenizer_eos_id(tok), tokenizer_pad_id(tok), tokenizer_n_merges(tok);
        tokenizer_free(tok);
    }
    return 0;
}
