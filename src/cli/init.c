/* `svdiff init`: writes a randomly initialised diffusers model folder from a config of its
 * components (see src/models/init.h for the initialisation rules), printing its size and
 * the FLOPs of one forward; the starting point of `svdiff pretrain`. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "models/init.h"
#include "models/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff init --config CONFIG.json -o MODEL_DIR [options]\n\n"
            "Writes a diffusers model folder with randomly initialised weights (the starting point\n"
            "of pretraining): model_index.json, unet/, text_encoder/, scheduler/, vae/ when the\n"
            "config has one (without, the UNet works on RGB pixels), tokenizer/ with --tokenizer.\n"
            "CONFIG holds the component configs in diffusers/transformers form:\n"
            "  {\"unet\": {...}, \"text_encoder\": {...}, \"scheduler\": {...}, \"vae\": {...}}\n"
            "(configs/default-model.json is the default model's). With \"text_encoder_2\" too the\n"
            "folder is an SDXL one: text_encoder_2/, and tokenizer_2/ with --tokenizer\n"
            "(configs/sdxl-base.json: SDXL base 1.0; configs/tiny-sdxl.json). Weights are initialised as\n"
            "PyTorch/diffusers/transformers do by default, from the Philox RNG: the same seed\n"
            "gives the same bytes. The folder is opened with the model loader as a check.\n\n"
            "options:\n"
            "  --config FILE     the component configs (JSON)\n"
            "  -o, --output DIR  the model folder to write (created; must be empty unless --force)\n"
            "                    (also --output-dir)\n"
            "  --tokenizer DIR   a tokenizer folder (vocab.json, merges.txt, e.g. from\n"
            "                    `svdiff tokenizer-train`) to copy into the model; its vocabulary\n"
            "                    size fills text_encoder.vocab_size when the config leaves it out\n"
            "  --seed S          random seed (default 0)\n"
            "  --dtype T         fp16 (default) or fp32\n"
            "  --dry-run         print the sizes and FLOPs only, write nothing\n"
            "  --force           write into an existing, non-empty folder\n"
            "  -h, --help        show this help\n");
}

static void print_stats(const model_init_stats_t *st, int fp16) {
    static const char *const names[MODEL_INIT_COMPONENTS] = {"unet", "text_encoder", "vae", "text_encoder_2"};
    static const int order[MODEL_INIT_COMPONENTS] = {0, 1, 3, 2};   /* the encoders together */
    printf("%-15s %8s %14s %10s %14s\n", "component", "tensors", "parameters", fp16 ? "MB (fp16)" : "MB (fp32)",
           "GFLOP/forward");
    int64_t total = 0;
    for (int k = 0; k < MODEL_INIT_COMPONENTS; k++) {
        const int i = order[k];
        if (!st->n_tensors[i]) continue;
        total += st->params[i];
        char fl[32];
        if (i == 2) snprintf(fl, sizeof fl, "-");
        else snprintf(fl, sizeof fl, "%.3f", st->flops[i] / 1e9);
        printf("%-15s %8d %14lld %10.2f %14s\n", names[i], st->n_tensors[i], (long long)st->params[i],
               (double)st->params[i] * (fp16 ? 2 : 4) / 1e6, fl);
    }
    printf("%-15s %8s %14lld %10.2f %14.3f\n", "total", "", (long long)total, (double)st->bytes / 1e6,
           (st->flops[0] + st->flops[1] + st->flops[3]) / 1e9);
    printf("(UNet FLOPs for one %dx%d sample with a %d-token context; text encoder%s on %d tokens)\n",
           st->sample_size, st->sample_size, st->tokens, st->n_tensors[3] ? "s" : "", st->tokens);
}

int cmd_init(int argc, char **argv) {
    const char *config_path = NULL, *out = NULL;
    model_init_options_t opt = {.fp16 = 1};
    int dry = 0;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"dry-run", no_argument, 0, 'n'},
                                         {0, 0, 0, 0}};
    cli_common_t cm = {.seed = 0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "init", opts, CLI_TOKENIZER | CLI_SEED | CLI_FORCE | CLI_OUTPUT, &cm);
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (c) {
        case 'c': config_path = optarg; break;
        case 'd':
            if (!strcmp(optarg, "fp16")) opt.fp16 = 1;
            else if (!strcmp(optarg, "fp32")) opt.fp16 = 0;
            else {
                fprintf(stderr, "svdiff init: --dtype '%s' is not fp16 or fp32\n", optarg);
                return 2;
            }
            break;
        case 'n': dry = 1; break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
    }
    out = cm.output;
    opt.tokenizer_dir = cm.tokenizer, opt.seed = cm.seed, opt.force = cm.force;
    if (!config_path || (!out && !dry)) {
        fprintf(stderr, "svdiff init: --config and -o are required (see svdiff init --help)\n");
        return 2;
    }
    cJSON *cfg;
    int rc = model_init_read_config(config_path, &cfg);
    model_init_stats_t st;
    if (!rc && dry) {
        int vocab = 0;
        clip_tokenizer_t *tok = NULL;
        if (opt.tokenizer_dir && !(rc = tokenizer_load(&tok, opt.tokenizer_dir))) {   /* for its size */
            vocab = tokenizer_vocab_size(tok);
            tokenizer_free(tok);
        }
        if (!rc) rc = model_init_stats(cfg, vocab, opt.fp16, &st);
    } else if (!rc) {
        rc = model_init(cfg, out, &opt, &st);
    }
    cJSON_Delete(cfg);
    if (rc) {
        fprintf(stderr, "svdiff init: %s\n", sd_last_error());
        return 1;
    }
    print_stats(&st, opt.fp16);
    if (!dry) printf("wrote %s (seed %llu, %s)\n", out, (unsigned long long)opt.seed, opt.fp16 ? "fp16" : "fp32");
    return 0;
}
