/* `svdiff tokenize`: prints the CLIP token ids of a prompt (what the text encoder will see),
 * using a model folder's tokenizer/ or a tokenizer folder; warns when the prompt is cut. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "models/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff tokenize (--model DIR | --tokenizer DIR) [options] \"prompt\"\n\n"
            "Prints the token ids of a prompt as Stable Diffusion's CLIP tokenizer makes them:\n"
            "start token, the prompt's tokens, end token, padded to the context length.\n\n"
            "options:\n"
            "  --model DIR       a diffusers model folder; its tokenizer/ subfolder is used\n"
            "                    (also --pretrained-model-name-or-path)\n"
            "  --tokenizer DIR   a folder with vocab.json and merges.txt (and optionally\n"
            "                    special_tokens_map.json / tokenizer_config.json, which set the\n"
            "                    padding token: SD 1.x pads with <|endoftext|>, SD 2.x with \"!\")\n"
            "  --max-length N    the sequence length, start and end tokens included (default %d);\n"
            "                    longer prompts are truncated, keeping the end token last\n"
            "  --no-pad          stop after the end token instead of padding to --max-length\n"
            "  --tokens          print one line per token: id, then the vocabulary string\n"
            "                    (byte-level form, '</w>' marks a word end)\n"
            "  -h, --help        show this help\n\n"
            "The prompt is one argument (quote it; put -- before one that starts with '-'), or -\n"
            "to read it from standard input. Bytes that are not UTF-8 are read as U+FFFD. Text is\n"
            "cleaned as OpenAI's CLIP does (HTML entities, whitespace, lowercase) except for ftfy's\n"
            "mojibake repair. Ids go to standard output on one line; when the prompt is too long,\n"
            "a warning on standard error says how many tokens were dropped.\n",
            TOKENIZER_MAX_LENGTH);
}

static int has_vocab(const char *dir) {
    size_t n = strlen(dir) + sizeof "/vocab.json";
    char *path = malloc(n);
    if (!path) return 0;
    snprintf(path, n, "%s/vocab.json", dir);
    int ok = access(path, F_OK) == 0;
    free(path);
    return ok;
}

static char *read_stdin(void) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n - 1, stdin)) > 0;) {
        n += got;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    if (buf) buf[n] = '\0';
    return buf;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *tokdir = NULL;
    int max_len = TOKENIZER_MAX_LENGTH, pad = 1, show_tokens = 0;
    static const struct option opts[] = {{"max-length", required_argument, 0, 'L'},
                                         {"no-pad", no_argument, 0, 'P'},
                                         {"tokens", no_argument, 0, 'T'},
                                         {0, 0, 0, 0}};
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "tokenize", opts, CLI_MODEL | CLI_TOKENIZER, &cm);
    ps.operands = 1;
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (c) {
        case 'L': {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 2 || v > 1000000) {
                fprintf(stderr, "svdiff tokenize: --max-length wants an integer from 2 to 1000000, got '%s'\n", optarg);
                return 2;
            }
            max_len = (int)v;
            break;
        }
        case 'P': pad = 0; break;
        case 'T': show_tokens = 1; break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
    }
    model = cm.model, tokdir = cm.tokenizer;
    if (optind + 1 != argc) {
        fprintf(stderr, "svdiff tokenize: expected exactly one prompt argument (quote it), got %d\n", argc - optind);
        return 2;
    }
    if (!model && !tokdir) {
        fprintf(stderr, "svdiff tokenize: --model DIR or --tokenizer DIR is required (see svdiff tokenize --help)\n");
        return 2;
    }
    /* --tokenizer wins; a model folder's tokenizer/ (or the folder itself if it holds vocab.json) */
    char *sub = NULL;
    if (!tokdir) {
        size_t n = strlen(model) + sizeof "/tokenizer";
        sub = malloc(n);
        if (!sub) return 1;
        snprintf(sub, n, "%s/tokenizer", model);
        if (has_vocab(sub)) tokdir = sub;
        else if (has_vocab(model)) tokdir = model;
        else {
            fprintf(stderr, "svdiff tokenize: %s has no tokenizer/vocab.json (single-file checkpoints carry no "
                    "tokenizer: pass --tokenizer DIR)\n", model);
            free(sub);
            return 1;
        }
    }
    char *stdin_text = NULL;
    const char *prompt = argv[optind];
    if (!strcmp(prompt, "-")) {
        stdin_text = read_stdin();
        if (!stdin_text) {
            fprintf(stderr, "svdiff tokenize: cannot read the prompt from standard input\n");
            free(sub);
            return 1;
        }
        prompt = stdin_text;
    }
    clip_tokenizer_t *tok;
    int rc = tokenizer_load(&tok, tokdir);
    free(sub);  /* tokdir may point to it */
    if (rc) {
        fprintf(stderr, "svdiff tokenize: %s\n", sd_last_error());
        free(stdin_text);
        return 1;
    }
    int *ids = malloc((size_t)max_len * sizeof *ids), before = 0;
    int n = ids ? tokenizer_encode(tok, prompt, ids, max_len, pad, &before) : SD_ERR_NOMEM;
    if (n < 0) {
        fprintf(stderr, "svdiff tokenize: %s\n", ids ? sd_last_error() : "out of memory");
        free(ids), free(stdin_text);
        tokenizer_free(tok);
        return 1;
    }
    if (before > max_len)
        fprintf(stderr, "svdiff tokenize: warning: the prompt has %d tokens with start and end, more than "
                "--max-length %d: dropped %d of them\n", before, max_len, before - max_len);
    for (int i = 0; i < n; i++) {
        if (show_tokens) printf("%d\t%s\n", ids[i], tokenizer_token(tok, ids[i]));
        else printf(i ? " %d" : "%d", ids[i]);
    }
    if (!show_tokens) putchar('\n');
    free(ids), free(stdin_text);
    tokenizer_free(tok);
    return ferror(stdout) ? 1 : 0;
}
