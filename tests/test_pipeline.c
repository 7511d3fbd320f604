/* The text-to-image pipeline (pipeline/pipeline.h) end to end against float64 PyTorch
 * (tests/fixtures/pipeline/, written by tests/reference/gen_pipeline_golden.py): prompt ->
 * text-encoder context, 4-step DDIM / DPM-Solver++ 2M / Euler runs with classifier-free
 * guidance (cfg 5, a negative prompt) from stored or seeded noise, every step's latents (via the
 * progress callback), the final latents and the VAE-decoded image, on the tiny model
 * tests/fixtures/tiny-sd/diffusers; and a pixel-space model (no VAE) assembled at test time. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "pipeline/pipeline.h"

/* Per-step relative errors measured (C float32 vs PyTorch float64, max |a - b| / max |b|; the
 * test prints them), Release build (-O3 -march=native) / Debug+ASan build:
 *   ddim (B 2)   6.7e-7 6.7e-7 7.3e-7 7.3e-7, image 1.2e-6  /  1.4e-6 1.2e-6 1.3e-6 1.3e-6
 *   dpmpp_2m     8.8e-7 8.5e-7 6.9e-7 7.5e-7, image 7.4e-7  /  1.2e-6 1.2e-6 1.1e-6 1.2e-6
 *   euler        9.7e-7 9.8e-7 9.5e-7 9.5e-7, image 6.6e-7  /  9.9e-7 8.6e-7 7.8e-7 7.8e-7
 *   pixel_ddim   1.7e-7 4.8e-7 6.8e-7 7.2e-7, image 7.2e-7  /  1.9e-7 6.5e-7 1.1e-6 1.2e-6
 * No visible compounding over 4 steps: the first step already carries the float32 error of
 * the text encoder + UNet (~1e-6 of the guided output, after cfg 5 amplifies cond - uncond),
 * and each later step adds a similar amount while |latents| grows. So 1e-4 has ~100x margin;
 * it still catches real mistakes: a guidance scale off by 1e-3 relative already fails
 * (step 1: 3.8e-4), anything coarser (swapped uncond/cond rows, a wrong timestep or schedule
 * value, a skipped step) by far more. */
#define TOL 1e-4
#define GOLDEN "pipeline/golden.safetensors"
#define TINY "tests/fixtures/tiny-sd/diffusers"
#define PROMPT "a photo of a cat sitting on a red chair, highly detailed"
#define NEGATIVE "blurry, dark"

/* The runs of gen_pipeline_golden.py's RUNS table. */
typedef struct {
    const char *name;
    int pixel;   /* 0: the tiny latent model, 1: the pixel-space model */
    sampler_kind_t sampler;
    int batch;
    uint64_t seed;
    int steps;
    float cfg;
    int width, height;
} run_t;

static const run_t RUNS[] = {
    {"ddim", 0, SAMPLER_DDIM, 2, 1234, 4, 5.0f, 16, 16},
    {"dpmpp_2m", 0, SAMPLER_DPMPP_2M, 1, 99, 4, 5.0f, 16, 16},
    {"euler", 0, SAMPLER_EULER, 1, 5, 4, 5.0f, 16, 16},
    {"pixel_ddim", 1, SAMPLER_DDIM, 1, 77, 4, 5.0f, 8, 8},
};

static void open_or_fail(pipeline_t *p, const char *path) {
    int rc = pipeline_open(p, path, NULL);
    if (rc) print_error("pipeline_open(%s): %s\n", path, sd_last_error());
    assert_int_equal(rc, 0);
}

/* ---- the pixel-space model: a temporary folder of links to the fixtures' parts ---- */

typedef struct {
    char dir[256];
    char links[5][320];
} pixel_model_t;

static void pixel_model_make(pixel_model_t *m) {
    const char *tmp = getenv("TMPDIR");
    snprintf(m->dir, sizeof m->dir, "%s/svdiff-pixel-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(m->dir));
    static const char *parts[5][2] = {
        {"model_index.json", "tests/fixtures/pipeline/pixel/model_index.json"},
        {"scheduler", "tests/fixtures/pipeline/pixel/scheduler"},
        {"text_encoder", "tests/fixtures/pipeline/pixel/text_encoder"},
        {"unet", "tests/fixtures/unet/pixel/unet"},
        {"tokenizer", TINY "/tokenizer"},
    };
    for (int i = 0; i < 5; i++) {
        char target[4096], cwd[2048] = "";
        const char *src = source_path(parts[i][1]);
        if (src[0] != '/') assert_non_null(getcwd(cwd, sizeof cwd));   /* links need absolute targets */
        snprintf(target, sizeof target, "%s%s%s", cwd, cwd[0] ? "/" : "", src);
        snprintf(m->links[i], sizeof m->links[i], "%s/%s", m->dir, parts[i][0]);
        assert_int_equal(symlink(target, m->links[i]), 0);
    }
}

static void pixel_model_remove(pixel_model_t *m) {
    for (int i = 0; i < 5; i++) unlink(m->links[i]);
    rmdir(m->dir);
}

/* ---- recording the progress callback ---- */

typedef struct {
    float *traj;      /* [steps, n] */
    float *t;         /* [steps] */
    size_t n;
    int calls, bad;
} recorder_t;

static void record(void *vctx, int step, int num_steps, float t, const float *latents) {
    recorder_t *r = vctx;
    if (step != r->calls + 1 || step > num_steps) r->bad = 1;
    else {
        memcpy(r->traj + (size_t)(step - 1) * r->n, latents, sizeof(float) * r->n);
        r->t[step - 1] = t;
    }
    r->calls++;
}

/* Runs one golden run (from the stored noise, or from the seed when init is NULL) and checks
 * every step, the final latents, the decoded image and the uint8 image. */
static void check_run(pipeline_t *p, const st_file_t *g, const run_t *run, int from_seed) {
    int C, h, w;
    pipeline_latent_shape(p, run->width, run->height, &C, &h, &w);
    const int B = run->batch, S = run->steps;
    const size_t n = (size_t)B * C * h * w;
    const int H = h * p->scale_factor, W = w * p->scale_factor;
    char key[128];
#define GET(field, numel) (snprintf(key, sizeof key, "%s.%s", run->name, field), golden_get(g, key, numel))
    float *init = GET("init", (int64_t)n), *t_want = GET("t", S), *traj_want = GET("traj", (int64_t)S * n);
    float *lat_want = GET("latents", (int64_t)n), *img_want = GET("image", (int64_t)B * 3 * H * W);
    float *u8_want = GET("u8", (int64_t)B * H * W * 3);
#undef GET
    recorder_t rec = {.traj = malloc(sizeof(float) * S * n), .t = malloc(sizeof(float) * S), .n = n};
    txt2img_opts_t o = {.prompt = PROMPT, .negative_prompt = NEGATIVE, .width = run->width, .height = run->height,
                        .steps = S, .cfg = run->cfg, .sampler = run->sampler, .seed = run->seed, .batch = B,
                        .progress = record, .progress_ctx = &rec};
    float *latents = malloc(sizeof(float) * n);
    int rc = pipeline_txt2img(p, &o, from_seed ? NULL : init, latents);
    if (rc) print_error("%s: %s\n", run->name, sd_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(rec.calls, S);
    assert_false(rec.bad);
    for (int i = 0; i < S; i++) assert_true(rec.t[i] == t_want[i]);

    char line[512];
    int k = snprintf(line, sizeof line, "%-10s %s, per-step rel errors:", run->name, from_seed ? "seeded" : "init  ");
    for (int i = 0; i < S; i++) {
        const double e = rel_error(rec.traj + (size_t)i * n, traj_want + (size_t)i * n, n);
        k += snprintf(line + k, sizeof line - k, " %.2e", e);
        snprintf(key, sizeof key, "%s step %d", run->name, i + 1);
        assert_close(key, rec.traj + (size_t)i * n, traj_want + (size_t)i * n, n, TOL);
    }
    assert_close("final latents", latents, lat_want, n, TOL);
    /* the callback saw the final latents as the last step */
    assert_memory_equal(latents, rec.traj + (size_t)(S - 1) * n, sizeof(float) * n);

    /* decode: the float image (VAE, or the latents of a pixel model) and the uint8 PNG pixels */
    float *img = malloc(sizeof(float) * (size_t)B * 3 * H * W);
    if (p->has_vae) assert_int_equal(vae_decode(&p->vae, img, latents, B, h, w), 0);
    else memcpy(img, latents, sizeof(float) * n);
    const double eimg = rel_error(img, img_want, (size_t)B * 3 * H * W);
    snprintf(line + k, sizeof line - k, "; image %.2e", eimg);
    print_message("%s\n", line);
    assert_close("decoded image", img, img_want, (size_t)B * 3 * H * W, TOL);
    uint8_t **rgb = calloc((size_t)B, sizeof *rgb);
    assert_int_equal(pipeline_decode(p, latents, B, h, w, rgb), 0);
    int off_by_one = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < H * W * 3; i++) {
            const int d = abs((int)rgb[b][i] - (int)u8_want[(size_t)b * H * W * 3 + i]);
            assert_true(d <= 1);   /* a float32 rounding can only move a value across one .5 boundary */
            off_by_one += d;
        }
    assert_true(off_by_one <= B * H * W * 3 / 100);
    for (int b = 0; b < B; b++) free(rgb[b]);
    free(rgb), free(img), free(latents), free(rec.traj), free(rec.t);
    free(init), free(t_want), free(traj_want), free(lat_want), free(img_want), free(u8_want);
}

/* ---- tests ---- */

static void test_pipeline_prompt_context(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, GOLDEN);
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    const int T = TOKENIZER_MAX_LENGTH, C = p.ctx_dim;
    float *ids_want = golden_get(&g, "ctx.ids", 2 * T), *hid_want = golden_get(&g, "ctx.hidden", 2 * T * C);
    const char *pair[2] = {NEGATIVE, PROMPT};
    for (int r = 0; r < 2; r++) {
        int ids[TOKENIZER_MAX_LENGTH];
        assert_int_equal(tokenizer_encode(p.tok, pair[r], ids, T, 1, NULL), T);
        for (int i = 0; i < T; i++) assert_int_equal(ids[i], (int)ids_want[r * T + i]);
    }
    float *ctx = malloc(sizeof(float) * 2 * T * C);
    assert_int_equal(pipeline_encode_prompts(&p, pair, 2, ctx), 0);
    assert_close("context [negative, prompt]", ctx, hid_want, (size_t)2 * T * C, TOL);
    free(ctx), free(ids_want), free(hid_want);
    pipeline_close(&p);
    st_close(&g);
}

static void run_tiny(const char *name, int from_seed) {
    st_file_t g;
    golden_open(&g, GOLDEN);
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    assert_true(p.has_vae);
    for (size_t i = 0; i < sizeof RUNS / sizeof RUNS[0]; i++)
        if (!strcmp(RUNS[i].name, name)) check_run(&p, &g, &RUNS[i], from_seed);
    pipeline_close(&p);
    st_close(&g);
}

static void test_pipeline_ddim(void **state) { (void)state; run_tiny("ddim", 0); }
static void test_pipeline_dpmpp_2m(void **state) { (void)state; run_tiny("dpmpp_2m", 0); }
static void test_pipeline_euler(void **state) { (void)state; run_tiny("euler", 0); }

/* Without init the noise of image k comes from the Philox stream seeded with seed + k: the
 * stored noise is exactly that (the Python side draws it with its own Philox), so the run from
 * the seed is the same run. DDIM has a batch of 2 (two seeds); Euler scales the noise by
 * init_noise_sigma. */
static void test_pipeline_seeded_noise(void **state) {
    (void)state;
    run_tiny("ddim", 1);
    run_tiny("euler", 1);
}

/* A batch is images denoised side by side: image 1 of the DDIM batch of 2 (seed 1235) alone
 * must give the same latents (batched CFG rows [uncond x B; cond x B] must not mix images). */
static void test_pipeline_batch_independence(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, GOLDEN);
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    const run_t *run = &RUNS[0];
    int C, h, w;
    pipeline_latent_shape(&p, run->width, run->height, &C, &h, &w);
    const size_t per = (size_t)C * h * w;
    float *want = golden_get(&g, "ddim.latents", 2 * (int64_t)per);
    float *got = malloc(sizeof(float) * per);
    txt2img_opts_t o = {.prompt = PROMPT, .negative_prompt = NEGATIVE, .width = run->width, .height = run->height,
                        .steps = run->steps, .cfg = run->cfg, .sampler = run->sampler, .seed = run->seed + 1,
                        .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, got), 0);
    assert_close("image 1 of the batch, alone", got, want + per, per, TOL);
    free(got), free(want);
    pipeline_close(&p);
    st_close(&g);
}

static void test_pipeline_pixel(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, GOLDEN);
    pixel_model_t m;
    pixel_model_make(&m);
    pipeline_t p;
    int rc = pipeline_open(&p, m.dir, NULL);
    if (rc) print_error("pipeline_open(pixel): %s\n", sd_last_error());
    if (!rc) {
        assert_false(p.has_vae);
        assert_int_equal(p.scale_factor, 1);
        check_run(&p, &g, &RUNS[3], 0);
        pipeline_close(&p);
    }
    pixel_model_remove(&m);
    st_close(&g);
    assert_int_equal(rc, 0);
}

/* Sizes the model cannot take (the tiny model: VAE factor 2 times UNet factor 2) are refused
 * with a message, not computed. */
static void test_pipeline_bad_size(void **state) {
    (void)state;
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    float *lat = malloc(sizeof(float) * 4 * 9 * 8);
    txt2img_opts_t o = {.prompt = PROMPT, .width = 18, .height = 16, .steps = 1, .cfg = 5.0f,
                        .sampler = SAMPLER_DDIM, .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), SD_ERR_ARG);
    if (!strstr(sd_last_error(), "multiples of 4")) print_error("message: %s\n", sd_last_error());
    assert_non_null(strstr(sd_last_error(), "multiples of 4"));
    o.width = 0;
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), SD_ERR_ARG);
    free(lat);
    pipeline_close(&p);
}

/* A decode whose image cannot be allocated (latents of 2^22 x 2^22: 844 TB of pixels, beyond
 * any address space) is SD_ERR_NOMEM with a message, as base/error.h's policy asks for
 * allocations the input sizes; it used to abort in sd_xmalloc ("pipeline.c:246: out of memory
 * allocating ... bytes"). Nothing is read from the latents before the allocation. */
static void test_pipeline_decode_out_of_memory(void **state) {
    (void)state;
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    uint8_t *rgb[1] = {NULL};
    sd_clear_error();
    assert_int_equal(pipeline_decode(&p, NULL, 1, 1 << 22, 1 << 22, rgb), SD_ERR_NOMEM);
    assert_non_null(strstr(sd_last_error(), "decoded image: out of memory"));
    assert_null(rgb[0]);
    pipeline_close(&p);
}

/* DDIM inversion (guidance 1, the same prompt) followed by DDIM sampling returns to the start.
 * The start is a realistic latent: the tiny model's own 30-step sample. The error falls with
 * the step count (the inversion assumes eps(x_t) ~ eps(x_{t-1})); measured here with the tiny
 * model: 7.2e-2 at 25 steps, 3.6e-2 at 50, 8.9e-3 at 200; asserted: < 5% at 50 steps, and at
 * least 2x smaller at 200 steps than at 25. */
static double inversion_error(pipeline_t *p, const float *x0, int steps) {
    const size_t n = 4 * 8 * 8;
    float *z = malloc(sizeof(float) * n), *back = malloc(sizeof(float) * n);
    txt2img_opts_t inv = {.prompt = PROMPT, .width = 16, .height = 16, .steps = steps, .cfg = 1.0f,
                          .sampler = SAMPLER_DDIM_INVERSE, .batch = 1};
    assert_int_equal(pipeline_txt2img(p, &inv, x0, z), 0);
    txt2img_opts_t gen = inv;
    gen.sampler = SAMPLER_DDIM;
    assert_int_equal(pipeline_txt2img(p, &gen, z, back), 0);
    double err = rel_error(back, x0, n);
    free(z), free(back);
    return err;
}

static void test_pipeline_inversion_roundtrip(void **state) {
    (void)state;
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    const size_t n = 4 * 8 * 8;
    float *x0 = malloc(sizeof(float) * n);
    txt2img_opts_t o = {.prompt = PROMPT, .width = 16, .height = 16, .steps = 30, .cfg = 5.0f,
                        .sampler = SAMPLER_DDIM, .seed = 7, .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, x0), 0);
    const double e25 = inversion_error(&p, x0, 25), e50 = inversion_error(&p, x0, 50),
                 e200 = inversion_error(&p, x0, 200);
    print_message("DDIM inversion + sampling, relative error: %.2e (25 steps), %.2e (50), %.2e (200)\n",
                  e25, e50, e200);
    assert_true(e50 < 0.05);
    assert_true(e200 * 2 < e25);
    free(x0);
    pipeline_close(&p);
}

/* ---- SDXL (tests/fixtures/tiny-sdxl, tests/fixtures/sdxl/golden.safetensors written by
 * tests/reference/gen_sdxl_golden.py: its RUNS table repeated here) ---- */

#define XL_GOLDEN "sdxl/golden.safetensors"
#define XL_TINY "tests/fixtures/tiny-sdxl/diffusers"

typedef struct {
    const char *name;
    uint64_t seed;
    int steps;
    float cfg;
    int height, width;
    const char *negative;   /* NULL: no negative prompt (force_zeros_for_empty_prompt) */
    int clip_skip;
    int original[2], crop[2], target[2];
} xl_run_t;

static const xl_run_t XL_RUNS[] = {
    {"euler", 7, 2, 5.0f, 16, 24, NULL, 0, {0, 0}, {0, 0}, {0, 0}},
    {"euler_cond", 11, 2, 4.0f, 16, 24, NEGATIVE, 1, {64, 48}, {4, 2}, {32, 40}},
};

/* add_time_ids rows: the defaults follow the image size; each negative value defaults to the positive
 * one (the conditional rows' ids are the unconditional ones' unless set). */
static void test_pipeline_sdxl_time_ids(void **state) {
    (void)state;
    txt2img_opts_t o = {.width = 24, .height = 16};
    float ids[6];
    pipeline_opts_time_ids(ids, &o, 0);
    const float def[6] = {16, 24, 0, 0, 16, 24};
    assert_memory_equal(ids, def, sizeof def);
    pipeline_opts_time_ids(ids, &o, 1);
    assert_memory_equal(ids, def, sizeof def);
    o.original_size[0] = 64, o.original_size[1] = 48, o.crops_coords_top_left[0] = 4, o.crops_coords_top_left[1] = 2;
    o.negative_target_size[0] = 8, o.negative_target_size[1] = 8;
    pipeline_opts_time_ids(ids, &o, 0);
    const float pos[6] = {64, 48, 4, 2, 16, 24};
    assert_memory_equal(ids, pos, sizeof pos);
    pipeline_opts_time_ids(ids, &o, 1);
    const float neg[6] = {64, 48, 4, 2, 8, 8};
    assert_memory_equal(ids, neg, sizeof neg);
    const int a[2] = {1024, 768}, b[2] = {0, 3}, c[2] = {1024, 1024};
    pipeline_time_ids(ids, a, b, c);
    const float abc[6] = {1024, 768, 0, 3, 1024, 1024};
    assert_memory_equal(ids, abc, sizeof abc);
}

/* The context is TE1's and TE2's penultimate states side by side, the pooled embedding TE2's
 * projection, for [negative; prompt]; clip skip 1 moves both encoders one layer down. */
static void test_pipeline_sdxl_prompt_context(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, XL_GOLDEN);
    pipeline_t p;
    open_or_fail(&p, source_path(XL_TINY));
    assert_true(p.has_te2);
    assert_int_equal(p.pooled_dim, 12);
    assert_int_equal(p.ctx_dim, 24);
    assert_true(p.force_zeros_empty);
    const int T = p.n_ctx, C = p.ctx_dim, P = p.pooled_dim;
    const char *pair[2] = {NEGATIVE, PROMPT};
    float *ctx = malloc(sizeof(float) * 2 * T * C), *pooled = malloc(sizeof(float) * 2 * P);
    float *ctx_want = golden_get(&g, "prompt.ctx", 2 * T * C), *pooled_want = golden_get(&g, "prompt.pooled", 2 * P);
    float *skip_want = golden_get(&g, "prompt.ctx_skip1", 2 * T * C);
    assert_int_equal(pipeline_encode_prompts_cond(&p, pair, 2, ctx, pooled), 0);
    assert_close("SDXL context [negative, prompt]", ctx, ctx_want, (size_t)2 * T * C, TOL);
    assert_close("SDXL pooled", pooled, pooled_want, (size_t)2 * P, TOL);
    /* the old entry point: the same context, no pooled embedding */
    float *ctx2 = malloc(sizeof(float) * 2 * T * C);
    assert_int_equal(pipeline_encode_prompts(&p, pair, 2, ctx2), 0);
    assert_memory_equal(ctx, ctx2, sizeof(float) * 2 * T * C);
    p.clip.clip_skip = 1;
    assert_int_equal(pipeline_encode_prompts_cond(&p, pair, 2, ctx, pooled), 0);
    assert_int_equal(p.clip.clip_skip, 1);   /* the caller's setting stays */
    assert_close("SDXL context, clip skip 1", ctx, skip_want, (size_t)2 * T * C, TOL);
    assert_close("SDXL pooled, clip skip 1 (unchanged)", pooled, pooled_want, (size_t)2 * P, TOL);
    free(ctx), free(ctx2), free(pooled), free(ctx_want), free(pooled_want), free(skip_want);
    pipeline_close(&p);
    st_close(&g);
}

/* Whole 2-step Euler runs with guidance (StableDiffusionXLPipeline.__call__): the zero negative
 * prompt, add_time_ids with their defaults and given values, clip skip on the prompt only, Euler's
 * leading spacing with steps_offset 1, every step, the final latents and the decoded image. */
static void test_pipeline_sdxl_runs(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, XL_GOLDEN);
    pipeline_t p;
    open_or_fail(&p, source_path(XL_TINY));
    for (size_t r = 0; r < sizeof XL_RUNS / sizeof *XL_RUNS; r++) {
        const xl_run_t *run = &XL_RUNS[r];
        int C, h, w;
        pipeline_latent_shape(&p, run->width, run->height, &C, &h, &w);
        const size_t n = (size_t)C * h * w;
        const int S = run->steps, H = run->height, W = run->width;
        char key[128];
#define GET(field, numel) (snprintf(key, sizeof key, "%s.%s", run->name, field), golden_get(&g, key, numel))
        float *init = GET("init", (int64_t)n), *t_want = GET("t", S), *traj_want = GET("traj", (int64_t)S * n);
        float *lat_want = GET("latents", (int64_t)n), *img_want = GET("image", (int64_t)3 * H * W);
#undef GET
        recorder_t rec = {.traj = malloc(sizeof(float) * S * n), .t = malloc(sizeof(float) * S), .n = n};
        txt2img_opts_t o = {.prompt = PROMPT, .negative_prompt = run->negative, .width = W, .height = H, .steps = S,
                            .cfg = run->cfg, .sampler = SAMPLER_EULER, .seed = run->seed, .batch = 1,
                            .progress = record, .progress_ctx = &rec, .clip_skip = run->clip_skip};
        memcpy(o.original_size, run->original, sizeof run->original);
        memcpy(o.crops_coords_top_left, run->crop, sizeof run->crop);
        memcpy(o.target_size, run->target, sizeof run->target);
        float *latents = malloc(sizeof(float) * n);
        int rc = pipeline_txt2img(&p, &o, init, latents);
        if (rc) print_error("%s: %s\n", run->name, sd_last_error());
        assert_int_equal(rc, 0);
        assert_int_equal(rec.calls, S);
        for (int i = 0; i < S; i++) assert_true(rec.t[i] == t_want[i]);
        for (int i = 0; i < S; i++) {
            snprintf(key, sizeof key, "%s step %d", run->name, i + 1);
            assert_close(key, rec.traj + (size_t)i * n, traj_want + (size_t)i * n, n, TOL);
        }
        assert_close("SDXL final latents", latents, lat_want, n, TOL);
        float *img = malloc(sizeof(float) * 3 * H * W);
        assert_int_equal(vae_decode(&p.vae, img, latents, 1, h, w), 0);
        print_message("%-10s latents %.2e, image %.2e\n", run->name, rel_error(latents, lat_want, n),
                      rel_error(img, img_want, (size_t)3 * H * W));
        assert_close("SDXL decoded image", img, img_want, (size_t)3 * H * W, TOL);
        free(img), free(latents), free(rec.traj), free(rec.t);
        free(init), free(t_want), free(traj_want), free(lat_want), free(img_want);
    }
    pipeline_close(&p);
    st_close(&g);
}

/* force_zeros_for_empty_prompt: without a negative prompt the unconditional rows are zeros (not
 * the empty prompt's encoding, which an explicit "" gets); with the flag off, no negative prompt
 * is the empty prompt. */
static void test_pipeline_sdxl_empty_negative(void **state) {
    (void)state;
    pipeline_t p;
    open_or_fail(&p, source_path(XL_TINY));
    int C, h, w;
    pipeline_latent_shape(&p, 16, 16, &C, &h, &w);
    const size_t n = (size_t)C * h * w;
    float *none = malloc(sizeof(float) * n), *empty = malloc(sizeof(float) * n), *off = malloc(sizeof(float) * n);
    txt2img_opts_t o = {.prompt = PROMPT, .width = 16, .height = 16, .steps = 2, .cfg = 5.0f,
                        .sampler = SAMPLER_EULER, .seed = 5, .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, none), 0);
    o.negative_prompt = "";
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, empty), 0);
    assert_true(memcmp(none, empty, sizeof(float) * n) != 0);
    p.force_zeros_empty = 0;
    o.negative_prompt = NULL;
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, off), 0);
    assert_memory_equal(off, empty, sizeof(float) * n);
    free(none), free(empty), free(off);
    pipeline_close(&p);
}

/* What the model cannot take is refused before any work: micro-conditioning on a UNet without
 * text_time, a clip skip that leaves no layer. */
static void test_pipeline_sdxl_refusals(void **state) {
    (void)state;
    pipeline_t p;
    float lat[4 * 8 * 8];
    open_or_fail(&p, source_path(TINY));
    txt2img_opts_t o = {.prompt = PROMPT, .width = 16, .height = 16, .steps = 1, .cfg = 5.0f, .batch = 1};
    o.negative_crops_coords_top_left[1] = 1;
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "text_time"));
    o.negative_crops_coords_top_left[1] = 0;
    o.clip_skip = p.clip.cfg.num_layers;
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "clip skip"));
    pipeline_close(&p);
    open_or_fail(&p, source_path(XL_TINY));
    o.clip_skip = p.clip.cfg.num_layers - 1;   /* penultimate: one layer fewer is possible */
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "at most 1"));
    pipeline_close(&p);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pipeline_prompt_context),
        cmocka_unit_test(test_pipeline_ddim),
        cmocka_unit_test(test_pipeline_dpmpp_2m),
        cmocka_unit_test(test_pipeline_euler),
        cmocka_unit_test(test_pipeline_seeded_noise),
        cmocka_unit_test(test_pipeline_batch_independence),
        cmocka_unit_test(test_pipeline_pixel),
        cmocka_unit_test(test_pipeline_bad_size),
        cmocka_unit_test(test_pipeline_decode_out_of_memory),
        cmocka_unit_test(test_pipeline_inversion_roundtrip),
        cmocka_unit_test(test_pipeline_sdxl_time_ids),
        cmocka_unit_test(test_pipeline_sdxl_prompt_context),
        cmocka_unit_test(test_pipeline_sdxl_runs),
        cmocka_unit_test(test_pipeline_sdxl_empty_negative),
        cmocka_unit_test(test_pipeline_sdxl_refusals),
    };
    return RUN_TESTS(argc, argv, "pipeline", tests, NULL, NULL);
}
