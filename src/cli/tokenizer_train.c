/* `svdiff tokenizer-train`: learns a CLIP-format byte-level BPE tokenizer (vocab.json,
 * merges.txt, special_tokens_map.json, tokenizer_config.json) from a captions file, with a
 * reserved rare identifier ("sks") that is one token; see src/models/bpe_learn.h. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "models/bpe_learn.h"
#include "models/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff tokenizer-train --captions FILE -o DIR [options]\n\n"
            "Learns a byte-level BPE vocabulary in CLIP's file format from captions (one per line,\n"
            "or a tab-separated column): CLIP's text cleaning and split, the 512 byte symbols,\n"
            "greedy merges of the most frequent pair (ties: the lowest pair in byte order), then\n"
            "<|startoftext|> and <|endoftext|>. Deterministic. The reserved identifier is one token\n"
            "(its merges come first) and must not occur in the captions.\n\n"
            "options:\n"
            "  --captions FILE     the captions\n"
            "  --column N          use the N-th tab-separated field of each line (1-based; default:\n"
            "                      the whole line)\n"
            "  -o, --output DIR    the tokenizer folder to write (created if missing; also --output-dir)\n"
            "  --vocab-size N      ids in all: 512 bytes + merges + 2 special tokens (default 4096)\n"
            "  --min-frequency F   never merge a pair seen fewer than F times (default 2)\n"
            "  --reserve WORD      the rare identifier to keep as one token (default sks; \"\" for none)\n"
            "  -h, --help          show this help\n");
}

int cmd_tokenizer_train(int argc, char **argv) {
    const char *captions = NULL, *out = NULL;
    int column = 0;
    bpe_learn_options_t opt = {.vocab_size = 4096, .min_frequency = 2, .reserved = "sks"};
    static const struct option opts[] = {{"captions", required_argument, 0, 'c'},
                                         {"column", required_argument, 0, 'k'},
                                         {"vocab-size", required_argument, 0, 'v'},
                                         {"min-frequency", required_argument, 0, 'm'},
                                         {"reserve", required_argument, 0, 'r'},
                                         {0, 0, 0, 0}};
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "tokenizer-train", opts, CLI_OUTPUT, &cm);
    ps.operands = 1;   /* refused below with its own message */
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (c) {
        case 'c': captions = optarg; break;
        case 'k': if (cli_parse_int("tokenizer-train", "--column", optarg, 1, 1 << 24, &column)) return 2; break;
        case 'v': if (cli_parse_int("tokenizer-train", "--vocab-size", optarg, 514, 1 << 24, &opt.vocab_size)) return 2; break;
        case 'm': if (cli_parse_int("tokenizer-train", "--min-frequency", optarg, 1, 1 << 24, &opt.min_frequency)) return 2; break;
        case 'r': opt.reserved = optarg; break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
    }
    out = cm.output;
    if (optind < argc) {
        fprintf(stderr, "svdiff tokenizer-train: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!captions || !out) {
        fprintf(stderr, "svdiff tokenizer-train: --captions and -o are required (see --help)\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char **caps = NULL;
    int n = 0;
    bpe_learn_stats_t st;
    int rc = bpe_read_captions(captions, column, &caps, &n);
    if (!rc) rc = bpe_learn((const char *const *)caps, n, &opt, out, &st);
    bpe_free_captions(caps, n);
    /* check what was written: it loads, and the reserved word is one token */
    clip_tokenizer_t *tok = NULL;
    if (!rc) rc = tokenizer_load(&tok, out);
    if (!rc && opt.reserved && opt.reserved[0]) {
        int ids[TOKENIZER_MAX_LENGTH];
        int k = tokenizer_encode(tok, opt.reserved, ids, TOKENIZER_MAX_LENGTH, 0, NULL);
        if (k != 3) rc = sd_error(SD_ERR_NUMERIC, "the reserved identifier \"%s\" encodes to %d tokens, not 1",
                                  opt.reserved, k - 2);
    }
    tokenizer_free(tok);
    if (rc) {
        fprintf(stderr, "svdiff tokenizer-train: %s\n", sd_last_error());
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%d captions, %d words (%d distinct) -> %d merges, %d ids in %.2f s\n", st.n_captions, st.n_words,
           st.n_unique_words, st.n_merges, st.vocab_size,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    if (st.vocab_size < opt.vocab_size)
        printf("(fewer ids than --vocab-size %d: no pair is seen %d times or more)\n", opt.vocab_size,
               opt.min_frequency);
    printf("wrote %s/{vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json}\n", out);
    return 0;
}
