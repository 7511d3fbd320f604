/* `svdiff attention-leakage`: how much of each identifier phrase's cross-attention mass falls in
 * the other subject's half while a composite prompt is generated (train/eval_leakage.h
 * attention_leakage), for before / after comparisons of multi-subject training (Cut-Mix-Unmix). */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/runtime.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "pipeline/pipeline.h"
#include "shifts/shifts.h"
#include "train/dataset.h"
#include "train/eval_leakage.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff attention-leakage --model PATH --prompt TEXT --token-a PHRASE --token-b PHRASE [options]\n\n"
            "Generates images of a composite prompt and reports, for each identifier phrase, the share of its\n"
            "cross-attention probability mass (conditional branch, every chosen layer, head, denoising step and\n"
            "seed) that falls in the OTHER subject's half: PHRASE A belongs to the left (top) half, B to the\n"
            "right (bottom). 0.5 is no spatial preference; lower means less leakage between the subjects.\n"
            "Also prints each phrase's token mass (its mean attention probability per position and head): a\n"
            "regulariser that merely lowers it everywhere leaves the leakage share where it was.\n\n");
    cli_common_help(f, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, NULL);
    fprintf(f,
            "  --shifts PATH[:SCALE]      spectral shifts to apply (repeatable), as in `svdiff generate`\n"
            "  --prompt TEXT              e.g. \"a photo of sks cat on the left and hta monkey on the right\"\n"
            "  --negative-prompt TEXT     the unconditional branch's prompt (default empty)\n"
            "  --token-a PHRASE           the first subject's identifier phrase, as it appears in the prompt\n"
            "  --token-b PHRASE           the second subject's\n"
            "  --vertical                 A owns the top half, B the bottom\n"
            "  --layers L                 cross-attention layers: all (default), latent resolutions (\"16,8\") or\n"
            "                             module path patterns (\"up_blocks.*\"), as train --unmix-layers\n"
            "  --seeds N                  images to average over, seeds SEED .. SEED+N-1 (default 4)\n"
            "  --seed S                   first seed (default 42)\n"
            "  --steps N                  sampler steps (default 20); --cfg G guidance (default 7.5)\n"
            "  --sampler NAME             ddim (default), euler, euler_a, dpmpp_2m\n"
            "  --width W, --height H      pixels (default: the model's sample size)\n"
            "  --svd-cache DIR|none       SVD cache for --shifts; --force applies shifts of another base model\n"
            "  --json                     print one JSON object instead of text\n"
            "known layouts instead of samples (teacher forcing; --steps, --cfg, --sampler, --seeds unused):\n"
            "  --images-a DIR             images of subject A; with --images-b, every pair is composed as Cut-Mix\n"
            "  --images-b DIR             does (A in the left / top half), noised to each --timesteps value with\n"
            "                             fixed noise (--seed) and denoised once with --prompt: the halves are where\n"
            "                             the subjects really are, so the share measures localisation alone\n"
            "  --timesteps LIST           comma-separated (default 100,300,500,700,900)\n"
            "  --resolution N             composite size in pixels (default: the model's sample size)\n"
            "  --cutmix-crop              scale each image to cover its half and crop (default: fit, as train)\n");
    cli_common_help(f, CLI_THREADS | CLI_COMPUTE, NULL);
    fprintf(f, "  -h, --help                 this help\n");
}

/* Loads every image of dir_a and dir_b and runs attention_leakage_images on all their pairs. */
static int leakage_on_images(pipeline_t *p, const char *prompt, const char *ta, const char *tb, const char *dir_a,
                             const char *dir_b, int res, int vertical, int fit, const char *layers, const int *ts,
                             int n_ts, unsigned long long seed, double share[2], int ntok[2], double mass[2]) {
    prompt_table_t pt = {.T = p->n_ctx};
    image_set_t sa = {0}, sb = {0};
    int rc = image_set_scan(&sa, dir_a, "--images-a", 0, 0, prompt, &pt, p->tok);
    if (!rc) rc = image_set_scan(&sb, dir_b, "--images-b", 0, 0, prompt, &pt, p->tok);
    image_t *ia = calloc((size_t)sa.n + 1, sizeof *ia), *ib = calloc((size_t)sb.n + 1, sizeof *ib);
    for (int i = 0; i < sa.n && !rc; i++) rc = image_load(&ia[i], sa.img[i].path);
    for (int i = 0; i < sb.n && !rc; i++) rc = image_load(&ib[i], sb.img[i].path);
    if (!rc)
        rc = attention_leakage_images(p, prompt, ta, tb, ia, sa.n, ib, sb.n, res, vertical, fit, layers, ts, n_ts,
                                      (uint64_t)seed, share, ntok, mass);
    for (int i = 0; i < sa.n; i++) image_free(&ia[i]);
    for (int i = 0; i < sb.n; i++) image_free(&ib[i]);
    free(ia), free(ib);
    image_set_free(&sa), image_set_free(&sb);
    prompt_table_free(&pt);
    return rc;
}

int cmd_attention_leakage(int argc, char **argv) {
    const char *prompt = NULL, *negative = NULL, *ta = NULL, *tb = NULL;
    const char *layers = NULL, *sampler_name = "ddim", *svd_cache_dir = NULL;
    int vertical = 0, seeds = 4, steps = 20, width = 0, height = 0, json = 0;
    const char *dir_a = NULL, *dir_b = NULL, *timesteps_arg = "100,300,500,700,900";
    int resolution = 0, fit = 1;
    float cfg = 7.5f;
    enum { MAX_SHIFTS = 16 };
    pipeline_shift_t shifts[MAX_SHIFTS];
    static char shift_paths[MAX_SHIFTS][4096];
    int n_shifts = 0;
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'},   {"negative-prompt", required_argument, 0, 'n'},
        {"token-a", required_argument, 0, 'a'},  {"token-b", required_argument, 0, 'b'},
        {"vertical", no_argument, 0, 'v'},       {"layers", required_argument, 0, 'L'},
        {"seeds", required_argument, 0, 'N'},
        {"steps", required_argument, 0, 's'},    {"cfg", required_argument, 0, 'g'},
        {"sampler", required_argument, 0, 'S'},  {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},   {"shifts", required_argument, 0, 'x'},
        {"svd-cache", required_argument, 0, 'C'},
        {"json", no_argument, 0, 'j'},
        {"images-a", required_argument, 0, 'A'}, {"images-b", required_argument, 0, 'B'},
        {"timesteps", required_argument, 0, 'P'}, {"resolution", required_argument, 0, 'R'},
        {"cutmix-crop", no_argument, 0, 'c'},
        {0, 0, 0, 0}};
    const char *verb = "attention-leakage";
    cli_common_t cm = {.seed = 42};
    static cli_parser_t ps;
    cli_parser_init(&ps, verb, opts, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS | CLI_SEED | CLI_THREADS | CLI_FORCE |
                    CLI_COMPUTE, &cm);
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        int bad = 0;
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'n': negative = optarg; break;
        case 'a': ta = optarg; break;
        case 'b': tb = optarg; break;
        case 'v': vertical = 1; break;
        case 'L': layers = optarg; break;
        case 'N': bad = cli_parse_int(verb, "--seeds", optarg, 1, 10000, &seeds); break;
        case 's': bad = cli_parse_int(verb, "--steps", optarg, 1, 1000, &steps); break;
        case 'g': bad = cli_parse_float(verb, "--cfg", optarg, -FLT_MAX, FLT_MAX, &cfg); break;
        case 'S': sampler_name = optarg; break;
        case 'W': bad = cli_parse_int(verb, "--width", optarg, 8, 8192, &width); break;
        case 'H': bad = cli_parse_int(verb, "--height", optarg, 8, 8192, &height); break;
        case 'x': bad = cli_add_file_spec(verb, "--shifts", optarg, shifts, shift_paths, MAX_SHIFTS, &n_shifts); break;
        case 'C': svd_cache_dir = optarg; break;
        case 'j': json = 1; break;
        case 'A': dir_a = optarg; break;
        case 'B': dir_b = optarg; break;
        case 'P': timesteps_arg = optarg; break;
        case 'R': bad = cli_parse_int(verb, "--resolution", optarg, 8, 8192, &resolution); break;
        case 'c': fit = 0; break;
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
    if (!model || !prompt || !ta || !tb) {
        fprintf(stderr, "svdiff %s: --model, --prompt, --token-a and --token-b are required (see --help)\n", verb);
        return 2;
    }
    if (!dir_a != !dir_b) {
        fprintf(stderr, "svdiff %s: --images-a and --images-b go together\n", verb);
        return 2;
    }
    int ts[64], n_ts = 0;
    for (const char *c = timesteps_arg; *c;) {
        char *end;
        errno = 0;
        const long v = strtol(c, &end, 10);
        if (errno || end == c || v < 0 || v > 100000 || (*end && *end != ',') || n_ts == 64) {
            fprintf(stderr, "svdiff %s: --timesteps needs up to 64 comma-separated non-negative integers, got '%s'\n",
                    verb, timesteps_arg);
            return 2;
        }
        ts[n_ts++] = (int)v;
        c = *end ? end + 1 : end;
    }
    sampler_kind_t sampler;
    if (sampler_kind_parse(sampler_name, &sampler) || sampler == SAMPLER_DDIM_INVERSE) {
        fprintf(stderr, "svdiff %s: unknown --sampler '%s' (ddim, euler, euler_a, dpmpp_2m)\n", verb, sampler_name);
        return 2;
    }
    sd_set_threads(threads);
    pipeline_t p;
    if (pipeline_open_model(&p, model, &mo)) {
        fprintf(stderr, "svdiff %s: %s\n", verb, sd_last_error());
        return 1;
    }
    int rc = SD_OK;
    if (n_shifts) {
        char cache_buf[4096];
        rc = pipeline_apply_shifts(&p, shifts, n_shifts, force, cli_svd_cache_dir(svd_cache_dir, cache_buf, sizeof cache_buf));
    }
    const int def = p.unet.cfg.sample_size * p.scale_factor;
    txt2img_opts_t o = {.prompt = prompt, .negative_prompt = negative, .width = width ? width : def,
                        .height = height ? height : def, .steps = steps, .cfg = cfg, .sampler = sampler,
                        .seed = seed, .batch = 1};
    double share[2] = {-1, -1};
    int ntok[2] = {0, 0};
    double mass[2] = {-1, -1};
    if (!rc && dir_a) {
        rc = leakage_on_images(&p, prompt, ta, tb, dir_a, dir_b, resolution ? resolution : def, vertical, fit, layers,
                               ts, n_ts, seed, share, ntok, mass);
    } else if (!rc) {
        rc = attention_leakage(&p, &o, ta, tb, vertical, layers, seeds, share, ntok, mass);
    }
    if (rc) {
        fprintf(stderr, "svdiff %s: %s\n", verb, sd_last_error());
        pipeline_close(&p);
        return 1;
    }
    if (json && dir_a)
        printf("{\"mode\": \"images\", \"timesteps\": %d, \"leakage_a\": %.6f, \"leakage_b\": %.6f, "
               "\"leakage_mean\": %.6f, \"token_mass_a\": %.6f, \"token_mass_b\": %.6f}\n", n_ts, share[0], share[1],
               0.5 * (share[0] + share[1]), mass[0], mass[1]);
    else if (json)
        printf("{\"mode\": \"samples\", \"seeds\": %d, \"steps\": %d, \"cfg\": %g, \"leakage_a\": %.6f, \"leakage_b\": %.6f, "
               "\"leakage_mean\": %.6f, \"token_mass_a\": %.6f, \"token_mass_b\": %.6f}\n", seeds, steps, cfg, share[0], share[1],
               0.5 * (share[0] + share[1]), mass[0], mass[1]);
    else {
        char averaged[160];
        if (dir_a) snprintf(averaged, sizeof averaged, "the composites of --images-a x --images-b x %d timesteps (teacher forcing)", n_ts);
        else snprintf(averaged, sizeof averaged, "%d seeds x %d steps (cfg %g)", seeds, steps, cfg);
        printf("prompt          %s\n"
               "averaged over   %s, layers %s, halves %s\n"
               "leakage A       %.4f  (\"%s\", %d tokens: share of its attention in B's half)\n"
               "leakage B       %.4f  (\"%s\", %d tokens: share of its attention in A's half)\n"
               "leakage mean    %.4f\n"
               "token mass      A %.4f, B %.4f  (mean attention probability per position and head on the phrase)\n",
               prompt, averaged, layers ? layers : "all", vertical ? "top / bottom" : "left / right", share[0],
               ta, ntok[0], share[1], tb, ntok[1], 0.5 * (share[0] + share[1]), mass[0], mass[1]);
    }
    pipeline_close(&p);
    return 0;
}
