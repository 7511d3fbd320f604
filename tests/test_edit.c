/* Single-image editing (src/pipeline/edit.h, `svdiff edit`): the chain image -> clean latents ->
 * DDIM inversion (every step) -> reconstruction (guidance 1) and an edit (guidance 3) against
 * float64 PyTorch (tests/fixtures/edit/, tests/reference/gen_edit_golden.py) on the tiny latent
 * model and on a pixel-space model; reconstruction quality on the pixel model (inversion followed
 * by sampling reproduces the input, better with more steps, far better than sampling from noise,
 * also after a short fine-tune of the shifts on the image); slerp and PSNR. */
#define _GNU_SOURCE   /* mkdtemp, symlink */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "io/image.h"
#include "pipeline/edit.h"
#include "pipeline/pipeline.h"
#include "train/trainer.h"

/* Relative errors measured (C float32 vs PyTorch float64, max |a-b| / max |b|), Release:
 *   tiny   x0 3.3e-7, inversion steps 3.3e-7 6.2e-7 1.1e-6 3.8e-6 3.4e-6, reconstruction 2.0e-5, edit 2.6e-5
 *   pixel  x0 0, inversion steps 2.6e-7 2.6e-7 1.9e-7 1.9e-7, reconstruction 1.1e-6, edit 1.7e-6
 * The tiny model's larger figures after sampling back are the normalisation: its random VAE gives
 * latents of ~0.03, so the final latents are small next to the inverted ones (~2) whose float32
 * error they inherit. 1e-4 still catches a wrong timestep pairing (the inverse step's source
 * level), guidance applied to the inversion, or a posterior sample instead of the mode. */
#define TOL 1e-4
#define GOLDEN "edit/golden.safetensors"
#define TINY "tests/fixtures/tiny-sd/diffusers"
#define PROMPT "an emoji of grinning face"
#define EDIT "an emoji of grinning face with heart eyes"
#define EDIT_CFG 3.0f

/* gen_edit_golden.py's RUNS table: name, pixel model?, resolution, steps. */
typedef struct {
    const char *name;
    int pixel, res, steps;
} run_t;

static const run_t RUNS[] = {
    {"tiny", 0, 16, 5},
    {"pixel", 1, 8, 4},
};

/* ---- the pixel-space model: a temporary folder of links to the fixtures' parts ---- */

typedef struct {
    char dir[256];
    char links[5][320];
} pixel_model_t;

static void pixel_model_make(pixel_model_t *m) {
    const char *tmp = getenv("TMPDIR");
    snprintf(m->dir, sizeof m->dir, "%s/svdiff-edit-pixel-XXXXXX", tmp && *tmp ? tmp : "/tmp");
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

static void open_or_fail(pipeline_t *p, const char *path) {
    int rc = pipeline_open(p, path, NULL);
    if (rc) print_error("pipeline_open(%s): %s\n", path, sd_last_error());
    assert_int_equal(rc, 0);
}

/* ---- golden chain ---- */

static void check_run(const run_t *run) {
    pixel_model_t pm;
    pipeline_t p;
    if (run->pixel) {
        pixel_model_make(&pm);
        open_or_fail(&p, pm.dir);
    } else {
        open_or_fail(&p, source_path(TINY));
    }
    st_file_t g;
    golden_open(&g, GOLDEN);
    int C, h, w;
    pipeline_latent_shape(&p, run->res, run->res, &C, &h, &w);
    const size_t n = (size_t)C * h * w, npix = (size_t)run->res * run->res * 3;
    const int S = run->steps;
    char key[128];
#define GET(field, numel) (snprintf(key, sizeof key, "%s.%s", run->name, field), golden_get(&g, key, numel))
    float *u8 = GET("image", (int64_t)npix), *x0_want = GET("x0", (int64_t)n), *t_want = GET("t", S);
    float *traj_want = GET("traj", (int64_t)S * n), *recon_want = GET("recon", (int64_t)n);
    float *edit_want = GET("edit", (int64_t)n);
#undef GET
    image_t img, shown;
    assert_int_equal(image_alloc(&img, run->res, run->res), 0);
    for (size_t i = 0; i < npix; i++) img.rgb[i] = (uint8_t)u8[i];

    float *x0 = malloc(sizeof(float) * n), *xT = malloc(sizeof(float) * n), *traj = malloc(sizeof(float) * S * n);
    float *out = malloc(sizeof(float) * n);
    int rc = edit_image_latents(&p, &img, run->res, x0, &shown);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    assert_memory_equal(shown.rgb, img.rgb, npix);   /* already res x res: the crop is the image */
    char line[512];
    int k = snprintf(line, sizeof line, "%-5s x0 %.2e, inversion steps:", run->name, rel_error(x0, x0_want, n));
    assert_close("clean latents", x0, x0_want, n, TOL);

    float *ts = malloc(sizeof(float) * S);
    assert_int_equal(sampler_timesteps(ts, SAMPLER_DDIM_INVERSE, &p.sched, S), 0);
    for (int i = 0; i < S; i++) assert_true(ts[i] == t_want[i]);
    assert_int_equal(edit_invert(&p, x0, PROMPT, run->res, S, xT, traj, NULL, NULL), 0);
    for (int i = 0; i < S; i++) {
        k += snprintf(line + k, sizeof line - k, " %.2e", rel_error(traj + i * n, traj_want + i * n, n));
        snprintf(key, sizeof key, "%s inversion step %d", run->name, i + 1);
        assert_close(key, traj + i * n, traj_want + i * n, n, TOL);
    }
    assert_memory_equal(xT, traj + (size_t)(S - 1) * n, sizeof(float) * n);

    assert_int_equal(edit_sample(&p, xT, PROMPT, run->res, S, 1.0f, 0.0f, 7, out, NULL, NULL), 0);
    k += snprintf(line + k, sizeof line - k, "; reconstruction %.2e", rel_error(out, recon_want, n));
    assert_close("reconstruction (guidance 1)", out, recon_want, n, TOL);
    assert_int_equal(edit_sample(&p, xT, EDIT, run->res, S, EDIT_CFG, 0.0f, 7, out, NULL, NULL), 0);
    snprintf(line + k, sizeof line - k, ", edit %.2e", rel_error(out, edit_want, n));
    print_message("%s\n", line);
    assert_close("edit (guidance 3)", out, edit_want, n, TOL);

    image_free(&img), image_free(&shown);
    free(x0), free(xT), free(traj), free(out), free(ts);
    free(u8), free(x0_want), free(t_want), free(traj_want), free(recon_want), free(edit_want);
    st_close(&g);
    pipeline_close(&p);
    if (run->pixel) pixel_model_remove(&pm);
}

static void test_edit_golden_tiny(void **state) {
    (void)state;
    check_run(&RUNS[0]);
}

static void test_edit_golden_pixel(void **state) {
    (void)state;
    check_run(&RUNS[1]);
}

/* ---- reconstruction on the pixel model (image space is latent space: PSNR is meaningful; the
 * tiny latent model's random VAE does not reproduce images at all) ---- */

#define RES 8
#define IMAGE "tests/fixtures/train/images/dog1.png"
#define SOURCE "a photo of a dog"

/* PSNR of the source prompt sampled (eta 0, guidance 1) from the inversion of the input
 * (invert 1) or from seeded noise (invert 0), against the input at RES px. */
static double reconstruction_psnr(pipeline_t *p, int steps, int invert) {
    image_t src, shown;
    assert_int_equal(image_load(&src, source_path(IMAGE)), 0);
    int C, h, w;
    pipeline_latent_shape(p, RES, RES, &C, &h, &w);
    const size_t n = (size_t)C * h * w;
    float *x0 = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * n);
    assert_int_equal(edit_image_latents(p, &src, RES, x0, &shown), 0);
    if (invert) {
        assert_int_equal(edit_invert(p, x0, SOURCE, RES, steps, z, NULL, NULL, NULL), 0);
    } else {
        rng_t r;
        rng_init(&r, 42);
        rng_fill_normal(&r, z, n);
    }
    assert_int_equal(edit_sample(p, z, SOURCE, RES, steps, 1.0f, 0.0f, 42, out, NULL, NULL), 0);
    uint8_t *rgb = NULL;
    assert_int_equal(pipeline_decode(p, out, 1, h, w, &rgb), 0);
    const double psnr = edit_psnr(rgb, shown.rgb, (size_t)RES * RES * 3);
    free(rgb), free(x0), free(z), free(out);
    image_free(&src), image_free(&shown);
    return psnr;
}

/* Measured (Release): 10 steps 20.8 dB, 50 steps 33.8 dB, from noise 6.1 dB. */
static void test_edit_reconstruction_base(void **state) {
    (void)state;
    pixel_model_t pm;
    pixel_model_make(&pm);
    pipeline_t p;
    open_or_fail(&p, pm.dir);
    const double p10 = reconstruction_psnr(&p, 10, 1), p50 = reconstruction_psnr(&p, 50, 1);
    const double pn = reconstruction_psnr(&p, 50, 0);
    print_message("base model: reconstruction PSNR %.2f dB (10 steps), %.2f dB (50 steps); from noise %.2f dB\n", p10,
                  p50, pn);
    assert_true(p50 > 30.0);        /* eta 0, guidance 1: the inversion is (nearly) undone */
    assert_true(p50 > p10 + 5.0);   /* finer steps: a smaller change of the model across a step */
    assert_true(pn < 15.0);         /* and the image is not something any start would give */
    pipeline_close(&p);
    pixel_model_remove(&pm);
}

/* The CoSINE setting: shifts fine-tuned on the one image-prompt pair (text encoder too), then
 * the reconstruction from the inversion against the one from noise. */
static void test_edit_reconstruction_finetuned(void **state) {
    (void)state;
    pixel_model_t pm;
    pixel_model_make(&pm);
    char out_dir[512], tsv[600], image_abs[4096], cwd[2048] = "";
    snprintf(out_dir, sizeof out_dir, "%s/train", pm.dir);
    snprintf(tsv, sizeof tsv, "%s/edit-train.tsv", pm.dir);
    const char *img = source_path(IMAGE);
    if (img[0] != '/') assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(image_abs, sizeof image_abs, "%s%s%s", cwd, cwd[0] ? "/" : "", img);
    FILE *f = fopen(tsv, "w");
    assert_non_null(f);
    fprintf(f, "%s\t%s\n", image_abs, SOURCE);
    fclose(f);

    train_config_t c;
    train_config_default(&c);
    c.model = pm.dir, c.data_tsv = tsv, c.resolution = RES, c.center_crop = 1, c.steps = 40;
    c.train_text_encoder = 1, c.svd_cache_dir = "", c.out_dir = out_dir, c.quiet = 1, c.threads = 1;
    trainer_t t;
    int rc = trainer_open(&t, &c);
    if (!rc) rc = trainer_run(&t);
    if (rc) print_error("train: %s\n", sd_last_error());
    trainer_close(&t);
    assert_int_equal(rc, 0);

    pipeline_t p;
    open_or_fail(&p, pm.dir);
    pipeline_shift_t sh = {.path = out_dir, .scale = 1.0f};
    rc = pipeline_apply_shifts(&p, &sh, 1, 0, NULL);
    if (rc) print_error("apply: %s\n", sd_last_error());
    assert_int_equal(rc, 0);
    const double pi = reconstruction_psnr(&p, 50, 1), pn = reconstruction_psnr(&p, 50, 0);
    print_message("fine-tuned (40 steps): reconstruction PSNR %.2f dB with inversion, %.2f dB from noise\n", pi, pn);
    assert_true(pi > 28.0);
    assert_true(pi > pn + 10.0);
    pipeline_close(&p);
    rm_tree(out_dir);
    unlink(tsv);
    pixel_model_remove(&pm);
}

/* ---- slerp and PSNR ---- */

static void test_edit_slerp(void **state) {
    (void)state;
    enum { N = 64 };
    float a[N], b[N], out[N];
    trng_t r;
    trng_seed(&r, 5);
    fill_normal(&r, a, N, 1.0f);
    fill_normal(&r, b, N, 1.0f);
    edit_slerp(out, a, b, N, 0.0f);
    assert_close("alpha 0", out, a, N, 1e-6);
    edit_slerp(out, a, b, N, 1.0f);
    assert_close("alpha 1", out, b, N, 1e-5);
    /* orthogonal unit vectors: the midpoint lies on the circle, at 45 degrees */
    float e1[2] = {1, 0}, e2[2] = {0, 1}, mid[2];
    edit_slerp(mid, e1, e2, 2, 0.5f);
    assert_true(fabsf(mid[0] - sqrtf(0.5f)) < 1e-6f && fabsf(mid[1] - sqrtf(0.5f)) < 1e-6f);
    edit_slerp(mid, e1, e2, 2, 1.0f / 3.0f);   /* 30 degrees */
    assert_true(fabsf(mid[0] - sqrtf(3.0f) / 2) < 1e-6f && fabsf(mid[1] - 0.5f) < 1e-6f);
    /* parallel vectors: the linear mix, no NaN */
    float c2[2] = {2, 0};
    edit_slerp(mid, e1, c2, 2, 0.25f);
    assert_true(fabsf(mid[0] - 1.25f) < 1e-6f && mid[1] == 0.0f);
    /* in place */
    memcpy(out, a, sizeof a);
    edit_slerp(out, out, b, N, 0.0f);
    assert_close("alpha 0 in place", out, a, N, 1e-6);
}

static void test_edit_psnr(void **state) {
    (void)state;
    uint8_t a[4] = {0, 10, 200, 255}, b[4] = {0, 10, 200, 255};
    assert_true(isinf(edit_psnr(a, b, 4)));
    b[3] = 0;   /* MSE 255^2 / 4: 10 log10(4) */
    assert_true(fabs(edit_psnr(a, b, 4) - 10.0 * log10(4.0)) < 1e-9);
    b[3] = 255, b[0] = 1;   /* MSE 1/4 */
    assert_true(fabs(edit_psnr(a, b, 4) - 10.0 * log10(255.0 * 255.0 * 4.0)) < 1e-9);
}

/* Bad inputs of the library: a resolution the VAE factor does not divide. */
static void test_edit_bad_resolution(void **state) {
    (void)state;
    pipeline_t p;
    open_or_fail(&p, source_path(TINY));
    image_t img;
    assert_int_equal(image_alloc(&img, 9, 9), 0);
    float x0[4 * 8 * 8];
    assert_int_equal(edit_image_latents(&p, &img, 9, x0, NULL), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "--resolution 9"));
    image_free(&img);
    pipeline_close(&p);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edit_golden_tiny),
        cmocka_unit_test(test_edit_golden_pixel),
        cmocka_unit_test(test_edit_reconstruction_base),
        cmocka_unit_test(test_edit_reconstruction_finetuned),
        cmocka_unit_test(test_edit_slerp),
        cmocka_unit_test(test_edit_psnr),
        cmocka_unit_test(test_edit_bad_resolution),
    };
    return RUN_TESTS(argc, argv, "edit", tests, NULL, NULL);
}
