/* `svdiff generate`: text to image with a model folder or single-file checkpoint, as a client of the
 * public API (svdiff.h): parses the flags, opens the model and applies its adapters, runs
 * svdiff_generate batch by batch with a progress bar, and writes each PNG with its generation
 * parameters from the image callback, a grid for several images, and optionally the final latents. */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "svdiff.h"

#include "base/dist.h"        /* MPI ranks: the CLI splits batches over processes */
#include "base/error.h"       /* messages of the CLI's own checks (sd_error, sd_error_wrap) */
#include "base/progress.h"    /* the progress bar the CLI draws from the progress callback */
#include "cli/args.h"
#include "cli/commands.h"
#include "pipeline/prompts.h" /* --prompts files: the CLI's input format */

static const unsigned common = CLI_ALL_COMMON;   /* cli/args.h */

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff generate --model PATH --prompt TEXT [options] -o OUT.png\n"
            "       svdiff generate --model PATH --prompts FILE [options] -o OUT.png\n\n"
            "Generates images from a text prompt, or from many prompts with the model loaded once.\n\n");
    cli_common_help(f, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, NULL);
    fprintf(f,
            "  --prompt TEXT              what to draw\n"
            "  --prompts FILE             many prompts, one a line (see 'Prompts files' below); the other flags\n"
            "                             are the defaults of every line\n"
            "  --negative-prompt TEXT     what to steer away from (the unconditional branch of guidance)\n"
            "  --steps N                  denoising steps (default 20)\n"
            "  --cfg G                    classifier-free guidance scale (default 7.5, SDXL 5; <= 1 turns guidance off)\n"
            "  --sampler NAME             ddim, euler, euler_a or dpmpp_2m (default ddim; SDXL: the sampler of the\n"
            "                             model's scheduler config, euler for SDXL base)\n"
            "  --clip-skip N              skip the text encoder's last N layers (diffusers' clip_skip; default 0;\n"
            "                             SDXL: both encoders, counted from their penultimate layer). As in\n"
            "                             diffusers only the prompt is encoded so, not the negative prompt\n"
            "  --original-size H,W        SDXL micro-conditioning, pixels: the size the model is told the training\n"
            "                             image had before it was resized (default: the output's height,width);\n"
            "                             smaller values give the look of upscaled small images\n"
            "  --crops-coords-top-left TOP,LEFT\n"
            "                             SDXL: where the crop that made the image started in it (default 0,0:\n"
            "                             uncropped, centred subjects; larger values give cut-off compositions)\n"
            "  --target-size H,W          SDXL: the size the image is meant to have (default: height,width)\n"
            "  --negative-original-size H,W, --negative-crops-coords-top-left TOP,LEFT,\n"
            "  --negative-target-size H,W the same for the negative (unconditional) branch of guidance (default:\n"
            "                             the values above). These six need a model with SDXL's text_time\n"
            "                             embedding; other models refuse them\n"
            "  --eta E                    DDIM noise (0 = deterministic; default 0)\n"
            "  --seed S                   seed (default 42); image k uses seed + k for its initial noise\n"
            "  --width W, --height H      size in pixels (default: the model's sample_size x its VAE factor)\n"
            "  --num-images N             images to make (default 1)\n"
            "  --batch-size B             images denoised together (default 1; uses more memory)\n"
            "  --init-latents FILE        start from these latents (safetensors, tensor 'latents' [N or 1, C, h, w],\n"
            "                             unscaled unit noise as a diffusers pipeline's latents=) instead of seeded noise\n"
            "  --save-latents FILE        write the final latents before decoding (safetensors, tensor 'latents')\n"
            "  --shifts PATH[:SCALE]      apply spectral shifts: a shift file, or a training output folder\n"
            "                             (spectral_shifts.safetensors [+ spectral_shifts_te.safetensors]), times\n"
            "                             SCALE (default 1); repeat to combine several. Baked into the weights once,\n"
            "                             so sampling costs what the base model costs\n"
            "  --delta PATH[:SCALE]       add a weight delta dW = W_finetuned - W_base (weight_delta(_te).safetensors of\n"
            "                             `svdiff train --mode full --save-delta`, or its output folder) times SCALE\n"
            "                             (default 1), on top of the shifts: W = (shifted W) + SCALE * dW; repeatable\n"
            "  --lora PATH[:SCALE]        merge a LoRA (pytorch_lora_weights.safetensors of `svdiff train --mode lora`\n"
            "                             or its folder; diffusers or kohya key naming): W += SCALE * alpha/r * B A;\n"
            "                             repeatable, combines with --shifts and --delta\n"
            "  --force                    apply shift, delta or LoRA files made for another base model (their\n"
            "                             base_model_hash differs), and a folder's two shift or delta files that\n"
            "                             were not written together (their pair_id differs)\n"
            "  --svd-cache DIR            cache of the base model's SVD factors (default: $SVDIFF_CACHE_DIR, else\n"
            "                             $XDG_CACHE_HOME/svdiff or ~/.cache/svdiff; none: no cache)\n"
            "  -o, --output OUT.png       output (also --output-dir); with several images OUT-1.png ... OUT-N.png\n"
            "                             (each written as soon as it is made; Ctrl-C keeps those) and the grid\n"
            "                             OUT.png. A target that is not a regular file (a device, a fifo, a folder)\n"
            "                             or is one of the run's inputs is refused\n");
    cli_common_help(f, CLI_THREADS | CLI_COMPUTE | CLI_QUIET, NULL);
    fprintf(f,
            "  -h, --help                 this help\n\n"
            "Each PNG stores its prompt, negative prompt, steps, sampler, guidance, seed, size, (SDXL) micro-\n"
            "conditioning, clip skip (A1111's count: --clip-skip N is 'Clip skip: N+1'), model and shift files\n"
            "with their scales in a 'parameters' text chunk. Progress goes to stderr.\n\n"
            "Prompts files (--prompts FILE): blank lines and lines starting with '#' are skipped; a line\n"
            "starting with '{' is a JSON object with \"prompt\" and any of \"negative_prompt\", \"seed\", \"steps\",\n"
            "\"cfg\", \"eta\", \"width\", \"height\", \"sampler\", \"num_images\" (what it leaves out comes from\n"
            "the flags); any other line is a plain prompt. For example:\n"
            "    # two subjects\n"
            "    a photo of sks dog on the beach\n"
            "    {\"prompt\": \"a painting of sks dog\", \"negative_prompt\": \"blurry\", \"seed\": 7, \"steps\": 30}\n"
            "The whole file is checked before the model loads; an error names FILE:LINE. Seeds: a line with a\n"
            "\"seed\" (a number up to 2^53, or a string of digits for any 64-bit seed) makes its images with\n"
            "seed, seed + 1, ...; the others take --seed + the index (from 0) of the image in the run. So each\n"
            "image is the one `svdiff generate --prompt ... --seed S` makes with that line's settings\n"
            "(--batch-size groups the images of one line, as it does in a single run). Outputs: -o OUT.png\n"
            "writes OUT-<line>-<k>.png (<line>: the file's line number, 4 digits at least; <k>: 1 to the\n"
            "line's num_images), -o DIR/ writes DIR/<line>-<k>.png (DIR is made if missing); each as soon as\n"
            "it is made, and no grid. --init-latents and --save-latents are for one prompt.\n");
}

/* The signal that asked generate to stop (SIGINT, SIGTERM), 0 while none came. */
static volatile sig_atomic_t g_stop;

static void on_stop_signal(int sig) { g_stop = sig; }

/* What the callbacks of one svdiff_generate call (one batch) share with the run. */
typedef struct {
    svdiff_model_t *model;
    const char *model_label;                /* --model as given: the PNG text's "Model:" */
    const svdiff_generate_params_t *params; /* of the batch being made */
    char **paths;                           /* [n_img] the PNG of each image of the run */
    int first;                              /* the batch's first image in the run */
    int keep;                               /* keep the pixels (the grid needs them) */
    uint8_t **rgb;                          /* [n_img] kept pixels */
    int written, rc;                        /* PNGs written; the first write error */
    progress_t bar;
    int step_base;                          /* steps of the batches before */
} gen_ctx_t;

static void on_progress(svdiff_stage_t stage, int step, int total, double seconds_per_step, void *vctx) {
    (void)stage, (void)total, (void)seconds_per_step;
    gen_ctx_t *g = vctx;
    progress_update(&g->bar, g->step_base + step, NULL);
}

static int on_cancel(void *vctx) { return g_stop || ((gen_ctx_t *)vctx)->rc; }

/* Each image as soon as it is decoded: its PNG, with the generation parameters in its text. */
static void on_image(const uint8_t *rgb, int width, int height, int index, uint64_t seed, void *vctx) {
    gen_ctx_t *g = vctx;
    const int k = g->first + index;
    if (g->rc) return;
    char *params = svdiff_png_parameters(g->model, g->params, seed, g->model_label);
    g->rc = params ? svdiff_png_write(g->paths[k], rgb, width, height, params) : SVDIFF_ERR_NOMEM;
    svdiff_free(params);
    if (!g->rc) fprintf(stderr, "%swrote %s\n", g->bar.tty ? "\r\033[K" : "", g->paths[k]), g->written++;
    if (g->keep) {   /* only the grid needs the pixels again */
        const size_t bytes = (size_t)width * height * 3;
        g->rgb[k] = sd_xmalloc(bytes);
        memcpy(g->rgb[k], rgb, bytes);
    }
}

/* "out.png" -> "out-3.png"; with line > 0 (a prompts file): "out.png" -> "out-0012-3.png", and
 * a folder "dir/" -> "dir/0012-3.png" */
static void numbered_path(char *dst, size_t n, const char *path, int line, int k) {
    const size_t len = strlen(path);
    if (line > 0 && len && path[len - 1] == '/') {
        snprintf(dst, n, "%s%04d-%d.png", path, line, k);
        return;
    }
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) dot = path + len;
    if (line > 0) snprintf(dst, n, "%.*s-%04d-%d%s", (int)(dot - path), path, line, k, dot);
    else snprintf(dst, n, "%.*s-%d%s", (int)(dot - path), path, k, dot);
}

/* "H,W" (or "TOP,LEFT"): two integers in [lo, SVDIFF_MICRO_COND_MAX] separated by a comma. */
static int parse_pair(const char *flag, const char *arg, int lo, int out[2]) {
    const char *comma = strchr(arg, ',');
    char first[32];
    if (!comma || (size_t)(comma - arg) >= sizeof first || strchr(comma + 1, ',')) {
        fprintf(stderr, "svdiff generate: %s needs two integers A,B, got '%s'\n", flag, arg);
        return -1;
    }
    snprintf(first, sizeof first, "%.*s", (int)(comma - arg), arg);
    if (cli_parse_int("generate", flag, first, lo, SVDIFF_MICRO_COND_MAX, &out[0]) ||
        cli_parse_int("generate", flag, comma + 1, lo, SVDIFF_MICRO_COND_MAX, &out[1]))
        return -1;
    return 0;
}

/* The micro-conditioning flags, in the order of their option values 0x100.. */
static const char *const MICRO_FLAGS[6] = {"--original-size", "--crops-coords-top-left", "--target-size",
                                           "--negative-original-size", "--negative-crops-coords-top-left",
                                           "--negative-target-size"};

/* How many images from plan->images[i] are denoised together: images of one job with
 * consecutive seeds, at most `batch` (a job's images go in batches from its first, as a single
 * run's do, so the batches and thus the bytes are those of a single run). */
static int batch_len(const prompt_plan_t *plan, int i, int batch) {
    int n = 1;
    while (n < batch && i + n < plan->n_images && plan->images[i + n].job == plan->images[i].job &&
           plan->images[i + n].seed == plan->images[i].seed + (uint64_t)n)
        n++;
    return n;
}

int cmd_generate(int argc, char **argv) {
    const char *prompt = NULL, *negative = NULL;
    const char *init_path = NULL, *save_path = NULL, *sampler_name = NULL, *prompts_path = NULL;
    int steps = 20, width = 0, height = 0, num_images = 1, batch = 1, clip_skip = 0;
    float cfg = NAN, eta = 0.0f;   /* cfg NAN, sampler NULL: the model's defaults (known once it is open) */
    /* the micro-conditioning flags: original, crop, target, then the negative ones ({0, 0}: default) */
    int micro[6][2] = {{0}};
    int n_shifts = 0;
    const char *svd_cache_dir = NULL;
    enum { MAX_SHIFTS = 32 };
    pipeline_shift_t shifts[MAX_SHIFTS];
    static char shift_paths[MAX_SHIFTS][4096];
    int n_deltas = 0, n_loras = 0;
    pipeline_shift_t deltas[MAX_SHIFTS], loras[MAX_SHIFTS];
    static char delta_paths[MAX_SHIFTS][4096], lora_paths[MAX_SHIFTS][4096];
    static const struct option opts[] = {
        {"prompt", required_argument, 0, 'p'},      {"negative-prompt", required_argument, 0, 'n'},
        {"steps", required_argument, 0, 's'},       {"cfg", required_argument, 0, 'g'},
        {"sampler", required_argument, 0, 'S'},     {"eta", required_argument, 0, 'e'},
        {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},      {"num-images", required_argument, 0, 'N'},
        {"batch-size", required_argument, 0, 'b'},  {"init-latents", required_argument, 0, 'i'},
        {"save-latents", required_argument, 0, 'l'},
        {"shifts", required_argument, 0, 'x'},
        {"svd-cache", required_argument, 0, 'C'},
        {"delta", required_argument, 0, 'D'},       {"lora", required_argument, 0, 'L'},
        {"prompts", required_argument, 0, 'P'},
        {"clip-skip", required_argument, 0, 'K'},
        {"original-size", required_argument, 0, 0x100},
        {"crops-coords-top-left", required_argument, 0, 0x101},
        {"target-size", required_argument, 0, 0x102},
        {"negative-original-size", required_argument, 0, 0x103},
        {"negative-crops-coords-top-left", required_argument, 0, 0x104},
        {"negative-target-size", required_argument, 0, 0x105},
        {0, 0, 0, 0}};
    cli_common_t cm = {.seed = 42};
    static cli_parser_t ps;
    cli_parser_init(&ps, "generate", opts, common, &cm);
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        int bad = 0;
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'P': prompts_path = optarg; break;
        case 'n': negative = optarg; break;
        case 's': bad = cli_parse_int("generate", "--steps", optarg, 1, 1000, &steps); break;
        case 'g': bad = cli_parse_float("generate", "--cfg", optarg, -FLT_MAX, FLT_MAX, &cfg); break;
        case 'S': sampler_name = optarg; break;
        case 'e': bad = cli_parse_float("generate", "--eta", optarg, -FLT_MAX, FLT_MAX, &eta); break;
        case 'W': bad = cli_parse_int("generate", "--width", optarg, 8, 8192, &width); break;
        case 'H': bad = cli_parse_int("generate", "--height", optarg, 8, 8192, &height); break;
        case 'N': bad = cli_parse_int("generate", "--num-images", optarg, 1, 10000, &num_images); break;
        case 'b': bad = cli_parse_int("generate", "--batch-size", optarg, 1, 64, &batch); break;
        case 'i': init_path = optarg; break;
        case 'l': save_path = optarg; break;
        case 'x': bad = cli_add_file_spec("generate", "--shifts", optarg, shifts, shift_paths, MAX_SHIFTS, &n_shifts); break;
        case 'D': bad = cli_add_file_spec("generate", "--delta", optarg, deltas, delta_paths, MAX_SHIFTS, &n_deltas); break;
        case 'L': bad = cli_add_file_spec("generate", "--lora", optarg, loras, lora_paths, MAX_SHIFTS, &n_loras); break;
        case 'C': svd_cache_dir = optarg; break;
        case 'K': bad = cli_parse_int("generate", "--clip-skip", optarg, 0, 64, &clip_skip); break;
        case 0x100: case 0x101: case 0x102: case 0x103: case 0x104: case 0x105:
            /* sizes are positive, crop offsets may be 0 */
            bad = parse_pair(MICRO_FLAGS[c - 0x100], optarg, (c - 0x100) % 3 == 1 ? 0 : 1, micro[c - 0x100]);
            break;
        case 'h': usage(stdout); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    const char *model = cm.model, *out = cm.output;
    const int threads = cm.threads, force = cm.force;
    const unsigned long long seed = cm.seed;
    model_open_options_t mo = cm.mo;
    if (prompt && prompts_path) {
        fprintf(stderr, "svdiff generate: --prompt and --prompts exclude each other (a prompts file line is a prompt)\n");
        return 2;
    }
    if (!model || !(prompt || prompts_path) || !out) {
        fprintf(stderr, "svdiff generate: --model, --prompt (or --prompts) and -o are required (see --help)\n");
        return 2;
    }
    if (prompts_path && (init_path || save_path)) {
        fprintf(stderr, "svdiff generate: --init-latents and --save-latents hold one prompt's images: use --prompt\n");
        return 2;
    }
    svdiff_sampler_t sampler = SVDIFF_SAMPLER_DDIM;
    if (sampler_name && svdiff_sampler_parse(sampler_name, &sampler)) {
        fprintf(stderr, "svdiff generate: unknown --sampler '%s' (ddim, euler, euler_a, dpmpp_2m)\n", sampler_name);
        return 2;
    }
    if (eta < 0 || eta > 1) { fprintf(stderr, "svdiff generate: --eta must be in [0, 1]\n"); return 2; }
    /* the images to make, each with its settings and seed, all checked before the model loads; a
     * job's sampler SAMPLER_KIND_COUNT and cfg NAN stand for the model's defaults until it is open */
    const prompt_job_t defaults = {.prompt = (char *)prompt, .negative_prompt = (char *)negative, .width = width,
                                   .height = height, .steps = steps, .num_images = num_images, .cfg = cfg,
                                   .eta = eta, .sampler = sampler_name ? (sampler_kind_t)sampler : SAMPLER_KIND_COUNT,
                                   .seed = seed};
    prompt_plan_t plan;
    int rc = prompts_path ? prompt_plan_read(&plan, prompts_path, &defaults, seed) : prompt_plan_single(&plan, &defaults);
    if (rc) {
        fprintf(stderr, "svdiff generate: %s\n", svdiff_last_error());
        return rc == SVDIFF_ERR_IO ? 1 : 2;
    }
    svdiff_set_threads(threads);

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char cache_buf[4096];
    const char *cache_dir = cli_svd_cache_dir(svd_cache_dir, cache_buf, sizeof cache_buf);
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.tokenizer_dir = mo.tokenizer_dir, mp.prediction_type = mo.prediction_type;
    mp.scheduler_config = mo.scheduler_config;
    mp.svd_cache_dir = cache_dir ? cache_dir : "";   /* the API's "" is --svd-cache none */
    mp.force = force;
    svdiff_model_t *m = NULL;
    if (svdiff_model_open(model, &mp, &m)) {
        fprintf(stderr, "svdiff generate: %s\n", svdiff_last_error());
        prompt_plan_free(&plan);
        return 1;
    }
    /* shifts, then weight deltas and LoRAs on top of the (baked) shifted weights: the API keeps
     * that order whatever the order of the calls */
    for (int i = 0; !rc && i < n_shifts; i++) rc = svdiff_model_apply_shifts(m, shifts[i].path, shifts[i].scale);
    for (int i = 0; !rc && i < n_deltas; i++) rc = svdiff_model_apply_delta(m, deltas[i].path, deltas[i].scale);
    for (int i = 0; !rc && i < n_loras; i++) rc = svdiff_model_apply_lora(m, loras[i].path, loras[i].scale);
    if (rc) {
        fprintf(stderr, "svdiff generate: %s\n", svdiff_last_error());
        svdiff_model_close(m);
        prompt_plan_free(&plan);
        return 1;
    }
    /* sizes, sampler and guidance: the model's defaults where a job gives none; a size the UNet
     * cannot take fails now */
    svdiff_model_info_t mi;
    rc = svdiff_model_info(m, &mi);
    const svdiff_generate_params_t model_defaults = svdiff_generate_model_params(m);
    for (int j = 0; !rc && j < plan.n_jobs; j++) {
        prompt_job_t *job = &plan.jobs[j];
        if (!job->width) job->width = mi.native_width;
        if (!job->height) job->height = mi.native_height;
        if (job->sampler == SAMPLER_KIND_COUNT) job->sampler = (sampler_kind_t)model_defaults.sampler;
        if (isnan(job->cfg)) job->cfg = model_defaults.cfg;
        int jc, jh, jw;
        rc = svdiff_model_latent_shape(m, job->width, job->height, &jc, &jh, &jw);
        if (rc && job->line) rc = sd_error_wrap(rc, "%s:%d", prompts_path, job->line);
    }
    const int single = !prompts_path, n_img = plan.n_images;
    int C = 0, h = 0, w = 0;
    if (!rc) rc = svdiff_model_latent_shape(m, plan.jobs[0].width, plan.jobs[0].height, &C, &h, &w);
    const size_t per = (size_t)C * h * w;   /* one size for all images of a single prompt */
    float *all_latents = save_path ? sd_xmalloc(sizeof(float) * per * n_img) : NULL;
    float *init = NULL;
    if (!rc && init_path) {
        init = sd_xmalloc(sizeof(float) * per * n_img);
        rc = svdiff_latents_read(init_path, n_img, C, h, w, init);
    }
    /* every target is checked before the (long) sampling: a device, a folder or one of the run's
     * inputs (the model's weights, a shift file, the prompts file) is refused now, not after
     * minutes of work (svdiff_png_write checks its target only when it writes) */
    char **paths = sd_xcalloc((size_t)n_img, sizeof *paths);
    char path[PATH_MAX];
    for (int i = 0; i < n_img; i++) {
        const prompt_image_t *im = &plan.images[i];
        if (single && n_img == 1) snprintf(path, sizeof path, "%s", out);
        else numbered_path(path, sizeof path, out, plan.jobs[im->job].line, im->k + 1);
        paths[i] = strdup(path);
        SD_CHECK(paths[i], "out of memory");
        if (!rc) rc = svdiff_output_check(paths[i]);
    }
    const int grid = single && n_img > 1;
    if (!rc && grid) rc = svdiff_output_check(out);
    if (!rc && save_path) rc = svdiff_output_check(save_path);
    if (!rc && !single && out[0] && out[strlen(out) - 1] == '/' && mkdir(out, 0777) && errno != EEXIST)
        rc = sd_error(SD_ERR_IO, "%s: cannot make the output folder: %s", out, strerror(errno));
    /* Ctrl-C / SIGTERM: the images written so far stay; the batch being sampled is dropped, and the
     * run ends at once with a message (a second signal kills as usual: SA_RESETHAND) */
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    /* Over MPI ranks (mpirun -np N), batch j of the run goes to rank j % N: the batches, their
     * seeds and so every file are those of one process; each rank writes its own images, rank 0
     * the grid and the latents file once the others' images have reached it. */
    const int me = dist_rank(), nranks = dist_size();
    gen_ctx_t g = {.model = m, .model_label = model, .paths = paths, .keep = grid};
    long total_steps = 0;
    for (int i = 0, bn, j = 0; i < n_img; i += bn, j++) {
        bn = batch_len(&plan, i, batch);
        if (j % nranks == me) total_steps += plan.jobs[plan.images[i].job].steps;
    }
    if (!rc) progress_start(&g.bar, "generate", total_steps, "step");
    g.bar.silent |= cm.quiet;   /* --quiet: no progress bar */
    g.rgb = sd_xcalloc((size_t)n_img, sizeof *g.rgb);
    svdiff_image_t *imgs = sd_xcalloc((size_t)n_img, sizeof *imgs);
    /* each batch is one svdiff_generate call; its images reach on_image (which writes the PNGs)
     * as soon as they are decoded */
    for (int i = 0, bn, j = 0; !rc && i < n_img; i += bn, j++) {
        bn = batch_len(&plan, i, batch);
        if (j % nranks != me) continue;   /* another rank's batch */
        const prompt_image_t *im = &plan.images[i];
        const prompt_job_t *job = &plan.jobs[im->job];
        svdiff_generate_params_t gp = svdiff_generate_default_params();
        gp.prompt = job->prompt, gp.negative_prompt = job->negative_prompt;
        gp.width = job->width, gp.height = job->height, gp.steps = job->steps;
        gp.cfg = job->cfg, gp.eta = job->eta, gp.sampler = (svdiff_sampler_t)job->sampler;
        gp.seed = im->seed, gp.num_images = bn, gp.batch = bn, gp.clip_skip = clip_skip;
        for (int k = 0; k < 2; k++) {
            gp.original_size[k] = micro[0][k], gp.crops_coords_top_left[k] = micro[1][k];
            gp.target_size[k] = micro[2][k], gp.negative_original_size[k] = micro[3][k];
            gp.negative_crops_coords_top_left[k] = micro[4][k], gp.negative_target_size[k] = micro[5][k];
        }
        gp.init_latents = init ? init + (size_t)i * per : NULL, gp.n_init_latents = bn;
        gp.out_latents = all_latents ? all_latents + (size_t)i * per : NULL;
        gp.callbacks = (svdiff_callbacks_t){.progress = on_progress, .cancel = on_cancel, .image = on_image,
                                            .user_data = &g};
        g.params = &gp, g.first = i;
        rc = svdiff_generate(m, &gp, NULL);
        if (g.rc) rc = g.rc;   /* a PNG that could not be written */
        g.step_base += job->steps;
        for (int k = i; k < i + bn; k++) imgs[k].width = job->width, imgs[k].height = job->height, imgs[k].rgb = g.rgb[k];
        if (rc && rc != SVDIFF_ERR_CANCELLED && job->line)
            rc = sd_error_wrap(rc, "%s:%d (image %d of the run)", prompts_path, job->line, i + 1);
        if (!rc && g_stop) rc = SVDIFF_ERR_CANCELLED;
    }
    if (!rc) progress_finish(&g.bar);
    rc = dist_agree(rc);   /* a rank that failed stops them all here, with its message */
    const int all_sampled = !rc;   /* the same on every rank */
    for (int i = 0, bn, j = 0; !rc && nranks > 1 && (grid || save_path) && i < n_img; i += bn, j++) {
        bn = batch_len(&plan, i, batch);   /* one prompt: one size */
        const prompt_job_t *job = &plan.jobs[plan.images[i].job];
        const size_t bytes = (size_t)job->width * job->height * 3;
        for (int k = i; k < i + bn && !rc; k++) {
            if (!g.rgb[k]) g.rgb[k] = sd_xmalloc(bytes);
            imgs[k].width = job->width, imgs[k].height = job->height, imgs[k].rgb = g.rgb[k];
            rc = dist_bcast(g.rgb[k], bytes, j % nranks);
        }
        if (!rc && save_path) rc = dist_bcast(all_latents + (size_t)i * per, sizeof(float) * per * bn, j % nranks);
    }
    if (!rc && save_path && me == 0) {   /* rank 0 writes the files of all the images */
        char seedbuf[32];
        snprintf(seedbuf, sizeof seedbuf, "%llu", seed);
        const char *meta[6] = {"prompt", prompt, "seed", seedbuf, "sampler",
                               svdiff_sampler_name((svdiff_sampler_t)plan.jobs[0].sampler)};
        rc = svdiff_latents_write(save_path, all_latents, n_img, C, h, w, meta, 3);
    }
    if (!rc && grid && me == 0) {
        svdiff_image_t *gi = NULL;
        rc = svdiff_image_grid(imgs, n_img, 0, 2, &gi);
        if (!rc) rc = svdiff_png_write(out, gi->rgb, gi->width, gi->height, NULL);
        if (!rc) fprintf(stderr, "wrote %s (grid of %d)\n", out, n_img);
        svdiff_images_free(gi, 1);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const int stopped = rc == SVDIFF_ERR_CANCELLED ? (int)g_stop : 0;
    if (all_sampled) rc = dist_agree(rc);   /* rank 0's grid or latents file failed: every rank fails */
    if (!rc && !single && me == 0) fprintf(stderr, "%d images of %d prompts (%s)\n", n_img, plan.n_jobs, prompts_path);
    if (!rc) {
        if (me == 0) fprintf(stderr, "done in %.2f s\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    } else if (stopped)
        fprintf(stderr, "%ssvdiff generate: interrupted by %s: %d of %d images written%s\n",
                g.bar.tty ? "\n" : "", stopped == SIGINT ? "SIGINT" : "SIGTERM", g.written, n_img,
                grid || save_path ? " (no grid or latents file)" : "");
    else fprintf(stderr, "svdiff generate: %s\n", svdiff_last_error());
    for (int k = 0; k < n_img; k++) free(g.rgb[k]), free(paths[k]);
    free(g.rgb), free(imgs), free(paths), free(all_latents), free(init);
    svdiff_model_close(m);
    prompt_plan_free(&plan);
    return stopped ? 128 + stopped : rc ? 1 : 0;
}
