/* `svdiff eval`: the denoising loss of a folder of images under a prompt, at fixed timesteps and
 * fixed noise, for a model with optional spectral shifts. The measure behind "personalisation
 * lowered the loss on held-out images of the subject" (and "left other images alone"). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/runtime.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "pipeline/adapters.h"
#include "pipeline/pipeline.h"
#include "shifts/shifts.h"
#include "train/eval_loss.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff eval --model PATH --images DIR --prompt TEXT [options]\n\n"
            "Prints the mean denoising loss (MSE of the model's prediction against the scheduler's target)\n"
            "of the images in DIR, each noised at fixed timesteps with fixed noise: the same options give\n"
            "the same noisy inputs for any model, so two runs compare models, e.g. a base model and the\n"
            "same model with shifts trained on other images of the subject.\n\n");
    cli_common_help(f, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, NULL);
    fprintf(f,
            "  --images DIR               images (PNG or JPEG); NAME.txt next to NAME.png replaces --prompt for it\n"
            "  --prompt TEXT              the prompt the images are conditioned on\n"
            "  --shifts PATH[:SCALE]      apply spectral shifts (file or training folder; repeatable, they add up)\n"
            "  --delta PATH[:SCALE]       add a weight delta (`train --mode full --save-delta`; repeatable)\n"
            "  --lora PATH[:SCALE]        merge a LoRA (`train --mode lora`; repeatable)\n"
            "  --force                    accept shift, delta or LoRA files made for another base model, and a\n"
            "                             folder's two shift or delta files that were not written together\n"
            "  --svd-cache DIR            cache of the base model's SVD factors (default as `svdiff generate`)\n"
            "  --timesteps LIST           comma-separated timesteps (default: --num-timesteps evenly spread)\n"
            "  --num-timesteps N          timesteps (j + 0.5) T / N for j < N (default 10)\n"
            "  --noise-draws K            noise draws per image and timestep (default 4)\n"
            "  --seed S                   seed of the noise (default 0)\n"
            "  --resolution N             pixels; images are resized and centre-cropped (default: the model's size)\n"
            "  --json                     print {\"loss\": mean, \"per_timestep\": {...}} instead of text\n");
    cli_common_help(f, CLI_THREADS | CLI_COMPUTE, NULL);
    fprintf(f, "  -h, --help                 this text\n");
}

enum { MAX_T = 1000, MAX_SHIFTS = 32 };

int cmd_eval(int argc, char **argv) {
    const char *dir = NULL, *prompt = NULL, *ts_list = NULL, *svd_cache = NULL;
    int n_t = 10, draws = 4, res = 0, json = 0, n_shifts = 0;
    pipeline_shift_t shifts[MAX_SHIFTS], deltas[MAX_SHIFTS], loras[MAX_SHIFTS];
    static char shift_paths[MAX_SHIFTS][4096], delta_paths[MAX_SHIFTS][4096], lora_paths[MAX_SHIFTS][4096];
    int n_deltas = 0, n_loras = 0;
    static const struct option opts[] = {
        {"images", required_argument, 0, 'i'},    {"prompt", required_argument, 0, 'p'},
        {"shifts", required_argument, 0, 'x'},
        {"delta", required_argument, 0, 'D'},     {"lora", required_argument, 0, 'L'},
        {"svd-cache", required_argument, 0, 'C'}, {"timesteps", required_argument, 0, 't'},
        {"num-timesteps", required_argument, 0, 'n'}, {"noise-draws", required_argument, 0, 'k'},
        {"resolution", required_argument, 0, 'r'},
        {"json", no_argument, 0, 'J'},
        {0, 0, 0, 0}};
    cli_common_t cm = {.seed = 0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "eval", opts, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS | CLI_SEED | CLI_THREADS | CLI_FORCE |
                    CLI_COMPUTE, &cm);
    int o;
    while ((o = cli_getopt(&ps, argc, argv)) != -1) {
        int bad = 0;
        switch (o) {
        case 'i': dir = optarg; break;
        case 'p': prompt = optarg; break;
        case 'x': bad = cli_add_file_spec("eval", "--shifts", optarg, shifts, shift_paths, MAX_SHIFTS, &n_shifts); break;
        case 'D': bad = cli_add_file_spec("eval", "--delta", optarg, deltas, delta_paths, MAX_SHIFTS, &n_deltas); break;
        case 'L': bad = cli_add_file_spec("eval", "--lora", optarg, loras, lora_paths, MAX_SHIFTS, &n_loras); break;
        case 'C': svd_cache = optarg; break;
        case 't': ts_list = optarg; break;
        case 'n': bad = cli_parse_int("eval", "--num-timesteps", optarg, 1, MAX_T, &n_t); break;
        case 'k': bad = cli_parse_int("eval", "--noise-draws", optarg, 1, 64, &draws); break;
        case 'r': bad = cli_parse_int("eval", "--resolution", optarg, 8, 8192, &res); break;
        case 'J': json = 1; break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    const char *model = cm.model;
    const int threads = cm.threads, force = cm.force;
    const unsigned long long seed = cm.seed;
    model_open_options_t mo = cm.mo;
    if (!model || !dir || !prompt) {
        fprintf(stderr, "svdiff eval: --model, --images and --prompt are required (see --help)\n");
        return 2;
    }
    sd_set_threads(threads);
    pipeline_t p;
    if (pipeline_open_model(&p, model, &mo)) {
        fprintf(stderr, "svdiff eval: %s\n", sd_last_error());
        return 1;
    }
    static int timesteps[MAX_T];
    int rc = 0;
    if (ts_list) {   /* "100,300,500" */
        n_t = 0;
        for (const char *s = ts_list; *s && !rc;) {
            char *end;
            long v = strtol(s, &end, 10);
            if (end == s || (*end && *end != ',') || v < 0 || v >= p.sched.T || n_t == MAX_T)
                rc = sd_error(SD_ERR_ARG, "--timesteps '%s': comma-separated integers in [0, %d)", ts_list, p.sched.T);
            else timesteps[n_t++] = (int)v, s = *end ? end + 1 : end;
        }
    } else {
        for (int j = 0; j < n_t; j++) timesteps[j] = (int)((j + 0.5) * p.sched.T / n_t);
    }
    char cache_buf[4096];
    const char *cache_dir = cli_svd_cache_dir(svd_cache, cache_buf, sizeof cache_buf);
    if (!rc && n_shifts) rc = pipeline_apply_shifts(&p, shifts, n_shifts, force, cache_dir);
    if (!rc) rc = pipeline_apply_deltas(&p, deltas, n_deltas, force);
    if (!rc) rc = pipeline_apply_loras(&p, loras, n_loras, force);
    prompt_table_t pt = {.T = p.n_ctx};
    image_set_t set = {0};
    if (!rc) rc = image_set_scan(&set, dir, "--images", 0, 0, prompt, &pt, p.tok);
    if (!rc && !res) res = p.unet.cfg.sample_size * p.scale_factor;
    double per_t[MAX_T], mean = 0;
    eval_opts_t eo = {.timesteps = timesteps, .n_timesteps = n_t, .n_noise = draws, .seed = seed, .resolution = res};
    if (!rc) rc = eval_denoising_loss(&p, &set, &pt, &eo, per_t, &mean);
    if (rc) {
        fprintf(stderr, "svdiff eval: %s\n", sd_last_error());
    } else if (json) {
        printf("{\"loss\": %.8g, \"images\": %d, \"noise_draws\": %d, \"seed\": %llu, \"per_timestep\": {", mean, set.n,
               draws, seed);
        for (int j = 0; j < n_t; j++) printf("%s\"%d\": %.8g", j ? ", " : "", timesteps[j], per_t[j]);
        printf("}}\n");
    } else {
        printf("denoising loss %.6f (%d images x %d timesteps x %d noise draws, seed %llu)\n", mean, set.n, n_t, draws,
               seed);
        for (int j = 0; j < n_t; j++) printf("  t=%4d  %.6f\n", timesteps[j], per_t[j]);
    }
    image_set_free(&set);
    prompt_table_free(&pt);
    pipeline_close(&p);
    return rc ? 1 : 0;
}
