/* libFuzzer harness: arbitrary bytes as a prompt (html entities, invalid UTF-8, special-token
 * text, very long input) through the pre-tokenizer and BPE of the fixed tiny tokenizer
 * (tests/fixtures/tokenizer/tiny), with and without truncation. */
#include "fuzz_util.h"

#include "base/error.h"
#include "models/tokenizer.h"

static int count_piece(void *ctx, const char *piece, size_t n, int special) {
    (void)piece, (void)special;
    *(size_t *)ctx += n;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static clip_tokenizer_t *tok;
    if (!tok) {
        char dir[512];
        if (tokenizer_load(&tok, fuzz_fixture(dir, sizeof dir, "tests/fixtures/tokenizer/tiny"))) {
            fprintf(stderr, "fuzz_tokenize: %s\n", sd_last_error());
            abort();
        }
    }
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    int ids[512], n = 0;
    int r = tokenizer_encode(tok, text, ids, TOKENIZER_MAX_LENGTH, 1, &n);
    if (r != TOKENIZER_MAX_LENGTH || n < 2) abort();
    r = tokenizer_encode(tok, text, ids, 512, 0, &n);
    if (r < 2 || r > 512 || (n <= 512 && r != n)) abort();
    for (int i = 0; i < r; i++)
        if (ids[i] < 0 || ids[i] >= tokenizer_vocab_size(tok)) abort();
    tokenizer_encode(tok, text, ids, 2, 0, NULL);
    size_t bytes = 0;
    tokenizer_split(text, count_piece, &bytes);
    free(text);
    return 0;
}
