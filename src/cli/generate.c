/* `svdiff generate`: text to image with a model folder or single-file checkpoint. Parses the
 * flags, runs the shared pipeline (pipeline.h) in batches with a progress bar, and writes
 * PNGs carrying their generation parameters, a grid for several images, and optionally the
 * final latents. */
#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/error.h"
#include "base/progress.h"
#include "base/runtime.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/image.h"
#include "io/outputs.h"
#include "io/safetensors.h"
#include "ops/ops.h"
#include "pipeline/adapters.h"
#include "pipeline/pipeline.h"
#include "shifts/shifts.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff generate --model PATH --prompt TEXT [options] -o OUT.png\n\n"
            "Generates images from a text prompt.\n\n"
            "  --model PATH            diffusers model folder or single-file .safetensors or .ckpt checkpoint\n"
            "  --tokenizer DIR         CLIP tokenizer folder (vocab.json, merges.txt); needed for single files\n"
            "  --prompt TEXT           what to draw\n"
            "  --negative-prompt TEXT  what to steer away from (the unconditional branch of guidance)\n"
            "  --steps N               denoising steps (default 20)\n"
            "  --cfg G                 classifier-free guidance scale (default 7.5; <= 1 turns guidance off)\n"
            "  --sampler NAME          ddim, euler, euler_a or dpmpp_2m (default ddim)\n"
            "  --eta E                 DDIM noise (0 = deterministic; default 0)\n"
            "  --seed S                seed (default 42); image k uses seed + k for its initial noise\n"
            "  --width W, --height H   size in pixels (default: the model's sample_size x its VAE factor)\n"
            "  --num-images N          images to make (default 1)\n"
            "  --batch-size B          images denoised together (default 1; uses more memory)\n"
            "  --init-latents FILE     start from these latents (safetensors, tensor 'latents' [N or 1, C, h, w],\n"
            "                          unscaled unit noise as a diffusers pipeline's latents=) instead of seeded noise\n"
            "  --save-latents FILE     write the final latents before decoding (safetensors, tensor 'latents')\n"
            "  --shifts PATH[:SCALE]   apply spectral shifts: a shift file, or a training output folder\n"
            "                          (spectral_shifts.safetensors [+ spectral_shifts_te.safetensors]), times\n"
            "                          SCALE (default 1); repeat to combine several. Baked into the weights once,\n"
            "                          so sampling costs what the base model costs\n"
            "  --delta PATH[:SCALE]    add a weight delta dW = W_finetuned - W_base (weight_delta(_te).safetensors of\n"
            "                          `svdiff train --mode full --save-delta`, or its output folder) times SCALE\n"
            "                          (default 1), on top of the shifts: W = (shifted W) + SCALE * dW; repeatable\n"
            "  --lora PATH[:SCALE]     merge a LoRA (pytorch_lora_weights.safetensors of `svdiff train --mode lora`\n"
            "                          or its folder; diffusers or kohya key naming): W += SCALE * alpha/r * B A;\n"
            "                          repeatable, combines with --shifts and --delta\n"
            "  --force                 apply shift, delta or LoRA files made for another base model (their\n"
            "                          base_model_hash differs), and a folder's two shift or delta files that\n"
            "                          were not written together (their pair_id differs)\n"
            "  --svd-cache DIR         cache of the base model's SVD factors (default: $SVDIFF_CACHE_DIR, else\n"
            "                          $XDG_CACHE_HOME/svdiff or ~/.cache/svdiff)\n"
            "  --threads N             CPU threads (default: all cores)\n"
            "  --compute-dtype fp32|bf16  precision of the large matrix products: fp32 (default, exact) or bf16\n"
            "                          (bfloat16 inputs, fp32 accumulation, on AMX / avx512_bf16 CPUs: faster, about\n"
            "                          1e-2 relative error per product; other CPUs stay fp32). Env SVDIFF_COMPUTE\n"
            "  -o, --output OUT.png    output; with several images OUT-1.png ... OUT-N.png (each written as soon\n"
            "                          as it is made; Ctrl-C keeps those) and the grid OUT.png. A target that is\n"
            "                          not a regular file (a device, a fifo, a folder) or is one of the run's\n"
            "                          inputs is refused\n"
            "  -h, --help              this help\n\n"
            "Each PNG stores its prompt, negative prompt, steps, sampler, guidance, seed, size, model and shift\n"
            "files with their scales in a "
            "'parameters' text chunk. Progress goes to stderr.\n");
}

typedef struct {
    progress_t bar;
    int step_base;
} gen_progress_t;

static void on_step(void *vctx, int step, int num_steps, float t, const float *latents) {
    (void)num_steps, (void)t, (void)latents;
    gen_progress_t *g = vctx;
    progress_update(&g->bar, g->step_base + step, NULL);
}

/* The signal that asked generate to stop (SIGINT, SIGTERM), 0 while none came. */
static volatile sig_atomic_t g_stop;

static void on_stop_signal(int sig) { g_stop = sig; }

/* "out.png" -> "out-3.png" */
static void numbered_path(char *dst, size_t n, const char *path, int k) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) dot = path + strlen(path);
    snprintf(dst, n, "%.*s-%d%s", (int)(dot - path), path, k, dot);
}

static int load_init_latents(const char *path, float *dst, int n, int C, int h, int w) {
    st_file_t f;
    int rc = st_open(&f, path);
    if (rc) return rc;
    const st_tensor_t *t = st_find(&f, "latents");
    if (!t && f.n_tensors == 1) t = &f.tensors[0];
    if (!t) {
        st_close(&f);
        return sd_error(SD_ERR_FORMAT, "%s: no tensor named 'latents'", path);
    }
    const size_t per = (size_t)C * h * w;
    const int64_t rows = t->ndim == 4 ? t->shape[0] : 0;
    if (t->ndim != 4 || (rows != 1 && rows != n) || t->shape[1] != C || t->shape[2] != h || t->shape[3] != w) {
        char rows_ok[32];
        snprintf(rows_ok, sizeof rows_ok, n == 1 ? "1" : "%d or 1", n);
        rc = sd_error(SD_ERR_SHAPE, "%s: tensor '%s' must be [%s, %d, %d, %d] for this model and size", path,
                      t->name, rows_ok, C, h, w);
        st_close(&f);
        return rc;
    }
    float *tmp = sd_xmalloc(sizeof(float) * (size_t)rows * per);
    rc = st_read_f32(tmp, t);
    const size_t bad = rc ? 0 : first_nonfinite(tmp, (size_t)rows * per);
    if (!rc && bad < (size_t)rows * per)
        rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (NaN or Inf) at flat index %zu", path,
                      t->name, bad);
    for (int k = 0; !rc && k < n; k++) memcpy(dst + k * per, tmp + (rows == 1 ? 0 : k * per), sizeof(float) * per);
    free(tmp);
    st_close(&f);
    return rc;
}

int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *tokenizer = NULL, *prompt = NULL, *negative = NULL, *out = NULL;
    const char *init_path = NULL, *save_path = NULL, *sampler_name = "ddim";
    int steps = 20, width = 0, height = 0, num_images = 1, batch = 1, threads = 0;
    float cfg = 7.5f, eta = 0.0f;
    unsigned long long seed = 42;
    int n_shifts = 0, force = 0;
    const char *svd_cache_dir = NULL;
    enum { MAX_SHIFTS = 32 };
    pipeline_shift_t shifts[MAX_SHIFTS];
    static char shift_paths[MAX_SHIFTS][4096];
    int n_deltas = 0, n_loras = 0;
    pipeline_shift_t deltas[MAX_SHIFTS], loras[MAX_SHIFTS];
    static char delta_paths[MAX_SHIFTS][4096], lora_paths[MAX_SHIFTS][4096];
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},       {"tokenizer", required_argument, 0, 'T'},
        {"prompt", required_argument, 0, 'p'},      {"negative-prompt", required_argument, 0, 'n'},
        {"steps", required_argument, 0, 's'},       {"cfg", required_argument, 0, 'g'},
        {"sampler", required_argument, 0, 'S'},     {"eta", required_argument, 0, 'e'},
        {"seed", required_argument, 0, 'r'},        {"width", required_argument, 0, 'W'},
        {"height", required_argument, 0, 'H'},      {"num-images", required_argument, 0, 'N'},
        {"batch-size", required_argument, 0, 'b'},  {"init-latents", required_argument, 0, 'i'},
        {"save-latents", required_argument, 0, 'l'}, {"threads", required_argument, 0, 't'},
        {"output", required_argument, 0, 'o'},      {"help", no_argument, 0, 'h'},
        {"shifts", required_argument, 0, 'x'},      {"force", no_argument, 0, 'F'},
        {"svd-cache", required_argument, 0, 'C'},
        {"delta", required_argument, 0, 'D'},       {"lora", required_argument, 0, 'L'},
        {"compute-dtype", required_argument, 0, 'Y'},
        {0, 0, 0, 0}};
    optind = 1;
    for (int c; (c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1;) {
        int bad = 0;
        switch (c) {
        case 'm': model = optarg; break;
        case 'T': tokenizer = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': negative = optarg; break;
        case 's': bad = cli_parse_int("generate", "--steps", optarg, 1, 1000, &steps); break;
        case 'g': bad = cli_parse_float("generate", "--cfg", optarg, -FLT_MAX, FLT_MAX, &cfg); break;
        case 'S': sampler_name = optarg; break;
        case 'e': bad = cli_parse_float("generate", "--eta", optarg, -FLT_MAX, FLT_MAX, &eta); break;
        case 'r': {
            char *end;
            errno = 0;
            seed = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-') {
                fprintf(stderr, "svdiff generate: --seed needs a non-negative integer, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        }
        case 'W': bad = cli_parse_int("generate", "--width", optarg, 8, 8192, &width); break;
        case 'H': bad = cli_parse_int("generate", "--height", optarg, 8, 8192, &height); break;
        case 'N': bad = cli_parse_int("generate", "--num-images", optarg, 1, 10000, &num_images); break;
        case 'b': bad = cli_parse_int("generate", "--batch-size", optarg, 1, 64, &batch); break;
        case 'i': init_path = optarg; break;
        case 'l': save_path = optarg; break;
        case 't': bad = cli_parse_int("generate", "--threads", optarg, 1, 1024, &threads); break;
        case 'Y': bad = cli_set_compute_dtype("generate", optarg); break;
        case 'o': out = optarg; break;
        case 'x': bad = cli_add_file_spec("generate", "--shifts", optarg, shifts, shift_paths, MAX_SHIFTS, &n_shifts); break;
        case 'D': bad = cli_add_file_spec("generate", "--delta", optarg, deltas, delta_paths, MAX_SHIFTS, &n_deltas); break;
        case 'L': bad = cli_add_file_spec("generate", "--lora", optarg, loras, lora_paths, MAX_SHIFTS, &n_loras); break;
        case 'F': force = 1; break;
        case 'C': svd_cache_dir = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (optind < argc) { fprintf(stderr, "svdiff generate: unexpected argument '%s'\n", argv[optind]); return 2; }
    if (!model || !prompt || !out) {
        fprintf(stderr, "svdiff generate: --model, --prompt and -o are required (see --help)\n");
        return 2;
    }
    sampler_kind_t sampler;
    if (sampler_kind_parse(sampler_name, &sampler) || sampler == SAMPLER_DDIM_INVERSE) {
        fprintf(stderr, "svdiff generate: unknown --sampler '%s' (ddim, euler, euler_a, dpmpp_2m)\n", sampler_name);
        return 2;
    }
    if (eta < 0 || eta > 1) { fprintf(stderr, "svdiff generate: --eta must be in [0, 1]\n"); return 2; }
    if (batch > num_images) batch = num_images;
    sd_set_threads(threads);

    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pipeline_t p;
    if (pipeline_open(&p, model, tokenizer)) {
        fprintf(stderr, "svdiff generate: %s\n", sd_last_error());
        return 1;
    }
    char cache_dir[4096];
    if (!svd_cache_dir) svd_cache_default_dir(cache_dir, sizeof cache_dir);
    else snprintf(cache_dir, sizeof cache_dir, "%s", svd_cache_dir);
    /* the shift list for the PNG text: "a.safetensors (1), dir (0.5)" */
    char shift_text[2048] = "";
    for (int i = 0, k = 0; i < n_shifts && k < (int)sizeof shift_text; i++)
        k += snprintf(shift_text + k, sizeof shift_text - k, "%s%s (%g)", i ? ", " : "", shifts[i].path,
                      shifts[i].scale);
    if (n_shifts && pipeline_apply_shifts(&p, shifts, n_shifts, force, cache_dir)) {
        fprintf(stderr, "svdiff generate: %s\n", sd_last_error());
        pipeline_close(&p);
        return 1;
    }
    /* weight deltas and LoRAs go on top of the (baked) shifted weights */
    if (pipeline_apply_deltas(&p, deltas, n_deltas, force) || pipeline_apply_loras(&p, loras, n_loras, force)) {
        fprintf(stderr, "svdiff generate: %s\n", sd_last_error());
        pipeline_close(&p);
        return 1;
    }
    for (int i = 0, k = (int)strlen(shift_text); i < n_deltas + n_loras && k < (int)sizeof shift_text; i++) {
        const pipeline_shift_t *a = i < n_deltas ? &deltas[i] : &loras[i - n_deltas];
        k += snprintf(shift_text + k, sizeof shift_text - k, "%s%s %s (%g)", k ? ", " : "",
                      i < n_deltas ? "delta" : "lora", a->path, a->scale);
    }
    if (!width) width = p.unet.cfg.sample_size * p.scale_factor;
    if (!height) height = p.unet.cfg.sample_size * p.scale_factor;
    int C, h, w;
    pipeline_latent_shape(&p, width, height, &C, &h, &w);
    const size_t per = (size_t)C * h * w;
    float *latents = sd_xmalloc(sizeof(float) * per * num_images);
    float *init = NULL;
    int rc = 0;
    if (init_path) {
        init = sd_xmalloc(sizeof(float) * per * num_images);
        rc = load_init_latents(init_path, init, num_images, C, h, w);
    }
    /* every target is checked before the (long) sampling: a device, a folder or one of the run's
     * inputs (the model's weights, a shift file) is refused now, not after minutes of work */
    char path[PATH_MAX];
    for (int k = 0; !rc && k <= (num_images > 1 ? num_images : 0); k++) {
        if (k == 0) snprintf(path, sizeof path, "%s", out);
        else numbered_path(path, sizeof path, out, k);
        rc = outputs_check(path);
    }
    if (!rc && save_path) rc = outputs_check(save_path);
    /* Ctrl-C / SIGTERM: the images written so far stay; the batch being sampled is dropped, and the
     * run ends at once with a message (a second signal kills as usual: SA_RESETHAND) */
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    g_stop = 0;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    gen_progress_t prog = {0};
    if (!rc) progress_start(&prog.bar, "generate", (long)steps * ((num_images + batch - 1) / batch), "step");
    uint8_t **rgb = calloc((size_t)num_images, sizeof *rgb);
    image_t *imgs = calloc((size_t)num_images, sizeof *imgs);
    int written = 0;
    /* each batch is decoded and its PNGs written as soon as it is sampled */
    for (int k0 = 0; !rc && k0 < num_images; k0 += batch) {
        const int bn = num_images - k0 < batch ? num_images - k0 : batch;
        txt2img_opts_t o = {.prompt = prompt, .negative_prompt = negative, .width = width, .height = height,
                            .steps = steps, .cfg = cfg, .eta = eta, .sampler = sampler,
                            .seed = (uint64_t)seed + (uint64_t)k0, .batch = bn, .progress = on_step,
                            .progress_ctx = &prog, .stop = &g_stop};
        prog.step_base = (k0 / batch) * steps;
        rc = pipeline_txt2img(&p, &o, init ? init + k0 * per : NULL, latents + k0 * per);
        if (!rc) rc = pipeline_decode(&p, latents + k0 * per, bn, h, w, rgb + k0);
        for (int k = k0; !rc && k < k0 + bn; k++) {
            char params[4096];
            snprintf(params, sizeof params,
                     "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %g, Eta: %g, Seed: %llu, Size: %dx%d, "
                     "Model: %s%s%s, Version: svdiff %s",
                     prompt, negative ? negative : "", steps, sampler_kind_name(sampler), cfg, eta,
                     seed + (unsigned long long)k, width, height, model, shift_text[0] ? ", Shifts: " : "", shift_text,
                     SVDIFF_VERSION);
            const char *keys[2] = {"parameters", "Software"}, *vals[2] = {params, "svdiff " SVDIFF_VERSION};
            imgs[k].w = width, imgs[k].h = height, imgs[k].rgb = rgb[k];
            if (num_images == 1) snprintf(path, sizeof path, "%s", out);
            else numbered_path(path, sizeof path, out, k + 1);
            rc = image_save_png(&imgs[k], path, keys, vals, 2);
            if (!rc) fprintf(stderr, "%swrote %s\n", prog.bar.tty ? "\r\033[K" : "", path), written++;
        }
        if (!rc && g_stop) rc = sd_error(SD_ERR_INTERRUPTED, "interrupted");
    }
    if (!rc) progress_finish(&prog.bar);
    if (!rc && save_path) {
        st_writer_t *sw = st_writer_new();
        int64_t shape[4] = {num_images, C, h, w};
        char seedbuf[32];
        snprintf(seedbuf, sizeof seedbuf, "%llu", seed);
        st_writer_add(sw, "latents", ST_F32, 4, shape, latents);
        st_writer_meta(sw, "prompt", prompt);
        st_writer_meta(sw, "seed", seedbuf);
        st_writer_meta(sw, "sampler", sampler_kind_name(sampler));
        st_writer_meta(sw, "svdiff_version", SVDIFF_VERSION);
        rc = st_writer_save(sw, save_path);
        st_writer_free(sw);
    }
    if (!rc && num_images > 1) {
        image_t grid;
        rc = image_grid(&grid, imgs, num_images, 0, 2);
        const char *keys[1] = {"Software"}, *vals[1] = {"svdiff " SVDIFF_VERSION};
        if (!rc) rc = image_save_png(&grid, out, keys, vals, 1);
        if (!rc) fprintf(stderr, "wrote %s (grid of %d)\n", out, num_images);
        image_free(&grid);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    const int stopped = rc == SD_ERR_INTERRUPTED ? (int)g_stop : 0;
    if (!rc) fprintf(stderr, "done in %.2f s\n", (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
    else if (stopped)
        fprintf(stderr, "%ssvdiff generate: interrupted by %s: %d of %d images written%s\n",
                prog.bar.tty ? "\n" : "", stopped == SIGINT ? "SIGINT" : "SIGTERM", written, num_images,
                num_images > 1 || save_path ? " (no grid or latents file)" : "");
    else fprintf(stderr, "svdiff generate: %s\n", sd_last_error());
    for (int k = 0; k < num_images; k++) free(rgb[k]);
    free(rgb), free(imgs), free(latents), free(init);
    pipeline_close(&p);
    return stopped ? 128 + stopped : rc ? 1 : 0;
}
