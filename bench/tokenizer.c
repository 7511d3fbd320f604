/* CLIP tokenizer speed: load time (best of 3) and encode throughput on the prompts of
 * tests/fixtures/tokenizer/golden_clip.txt (hex-encoded prompt bytes, first column). Timing only,
 * no assertion (it used to be a unit test, where a loaded parallel ctest made any bound flaky).
 * Not part of the tests.
 * Usage: bench_tokenizer [TOKENIZER_DIR [PROMPTS]]   (run from the repository root; defaults:
 * ../shared/data/clip-vit-l-14-tokenizer and tests/fixtures/tokenizer/golden_clip.txt) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "models/tokenizer.h"
#include "lib/benchutil.h"

static int hexval(int c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* The prompts of a golden file: the bytes of each line's first (hex) field. */
static char **read_prompts(const char *path, int *n) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char **p = NULL;
    size_t cap = 1 << 16;
    char *line = malloc(cap);
    *n = 0;
    while (fgets(line, (int)cap, f)) {
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        size_t len = (size_t)(tab - line) / 2;
        char *s = malloc(len + 1);
        for (size_t i = 0; i < len; i++) s[i] = (char)(hexval(line[2 * i]) * 16 + hexval(line[2 * i + 1]));
        s[len] = 0;
        p = realloc(p, (*n + 1) * sizeof *p);
        p[(*n)++] = s;
    }
    free(line);
    fclose(f);
    return p;
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "../shared/data/clip-vit-l-14-tokenizer";
    const char *golden = argc > 2 ? argv[2] : "tests/fixtures/tokenizer/golden_clip.txt";
    double best = 1e9;
    clip_tokenizer_t *tok = NULL;
    for (int k = 0; k < 3; k++) {
        tokenizer_free(tok);
        tok = NULL;
        double t0 = bench_now();
        if (tokenizer_load(&tok, dir)) {
            fprintf(stderr, "bench_tokenizer: %s\n", sd_last_error());
            return 1;
        }
        double dt = bench_now() - t0;
        if (dt < best) best = dt;
    }
    int n = 0;
    char **prompts = read_prompts(golden, &n);
    if (!prompts || n == 0) {
        fprintf(stderr, "bench_tokenizer: no prompts in %s\n", golden);
        return 1;
    }
    int ids[77];
    long tokens = 0, bytes = 0, count = 0;
    double t0 = bench_now(), dt;
    do {
        for (int i = 0; i < n; i++) {
            int before;
            tokenizer_encode(tok, prompts[i], ids, 77, 1, &before);
            tokens += before;
            bytes += (long)strlen(prompts[i]);
            count++;
        }
        dt = bench_now() - t0;
    } while (dt < 0.3);
    printf("CLIP tokenizer: load %.1f ms (best of 3); encode %.0f prompts/s, %.2f M tokens/s, %.1f MB/s\n",
           1e3 * best, count / dt, tokens / dt * 1e-6, bytes / dt * 1e-6);
    for (int i = 0; i < n; i++) free(prompts[i]);
    free(prompts);
    tokenizer_free(tok);
    return 0;
}
