/* The public C API (include/svdiff.h) on the tiny fixture model: each entry point gives the bytes of
 * the library layer it wraps (pipeline, trainer, toolbox) or of the CLI, adapters come off exactly,
 * the cancel callback stops sampling and training cleanly (training resumably), and bad input comes
 * back as a code with a message. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "svdiff.h"
#include "testutil.h"

#include "base/error.h"
#include "base/runtime.h"
#include "base/rng.h"
#include "io/image.h"
#include "pipeline/adapters.h"
#include "pipeline/edit.h"
#include "pipeline/pipeline.h"
#include "shifts/toolbox.h"
#include "train/settings.h"
#include "train/trainer.h"

static char g_model[4096];

static const char *model_dir(void) {
    snprintf(g_model, sizeof g_model, "%s", source_path("tests/fixtures/tiny-sd/diffusers"));
    return g_model;
}

static void make_tmp(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/svdiff-api-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static svdiff_model_t *open_tiny(void) {
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.svd_cache_dir = "";   /* no cache outside the test's folders */
    svdiff_model_t *m = NULL;
    const int rc = svdiff_model_open(model_dir(), &mp, &m);
    if (rc) print_error("open: %s\n", svdiff_last_error());
    assert_int_equal(rc, SVDIFF_OK);
    assert_non_null(m);
    return m;
}

static svdiff_generate_params_t small_gen(void) {
    svdiff_generate_params_t g = svdiff_generate_default_params();
    g.prompt = "a photo of a cat";
    g.negative_prompt = "blurry";
    g.steps = 3, g.cfg = 5.0f, g.sampler = SVDIFF_SAMPLER_DPMPP_2M, g.seed = 31;
    return g;
}

/* One image through the API, malloc'ed RGB (w * h * 3 bytes). */
static uint8_t *gen_one(svdiff_model_t *m, const svdiff_generate_params_t *g, size_t *bytes) {
    svdiff_image_t *imgs = NULL;
    const int rc = svdiff_generate(m, g, &imgs);
    if (rc) print_error("generate: %s\n", svdiff_last_error());
    assert_int_equal(rc, SVDIFF_OK);
    *bytes = (size_t)imgs[0].width * imgs[0].height * 3;
    uint8_t *rgb = malloc(*bytes);
    memcpy(rgb, imgs[0].rgb, *bytes);
    svdiff_images_free(imgs, g->num_images);
    return rgb;
}

/* The same image through the pipeline directly (shifts applied when `shifts` is not NULL). */
static uint8_t *pipeline_one(const svdiff_generate_params_t *g, uint64_t seed, const char *shifts) {
    pipeline_t p;
    assert_int_equal(pipeline_open(&p, model_dir(), NULL), 0);
    if (shifts) {
        const pipeline_shift_t sh = {.path = shifts, .scale = 1.0f};
        assert_int_equal(pipeline_apply_shifts(&p, &sh, 1, 0, NULL), 0);
    }
    const int W = pipeline_native_size(&p);
    int C, h, w;
    pipeline_latent_shape(&p, W, W, &C, &h, &w);
    float *lat = malloc(sizeof(float) * C * h * w);
    txt2img_opts_t o = {.prompt = g->prompt, .negative_prompt = g->negative_prompt, .width = W, .height = W,
                        .steps = g->steps, .cfg = g->cfg, .eta = g->eta, .sampler = (sampler_kind_t)g->sampler,
                        .seed = seed, .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), 0);
    uint8_t *rgb = NULL;
    assert_int_equal(pipeline_decode(&p, lat, 1, h, w, &rgb), 0);
    free(lat);
    pipeline_close(&p);
    return rgb;
}

/* ---- version, errors ---- */

static void test_version_and_errors(void **state) {
    (void)state;
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", SVDIFF_VERSION_MAJOR, SVDIFF_VERSION_MINOR, SVDIFF_VERSION_PATCH);
    assert_string_equal(svdiff_version(), want);
    assert_string_equal(svdiff_error_name(SVDIFF_ERR_CANCELLED), "SVDIFF_ERR_CANCELLED");
    assert_string_equal(svdiff_error_name(SVDIFF_OK), "SVDIFF_OK");
    assert_string_equal(svdiff_error_name(-99), "SVDIFF_ERR_UNKNOWN");

    svdiff_model_t *m = (svdiff_model_t *)1;
    assert_int_equal(svdiff_model_open("/nonexistent/model", NULL, &m), SVDIFF_ERR_IO);
    assert_null(m);
    assert_non_null(strstr(svdiff_last_error(), "/nonexistent/model"));
    assert_int_equal(svdiff_model_open(NULL, NULL, &m), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "path is NULL"));
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.compute = (svdiff_compute_t)7;
    assert_int_equal(svdiff_model_open(model_dir(), &mp, &m), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "compute"));
    svdiff_sampler_t s;
    assert_int_equal(svdiff_sampler_parse("euler_a", &s), SVDIFF_OK);
    assert_int_equal(s, SVDIFF_SAMPLER_EULER_A);
    assert_string_equal(svdiff_sampler_name(s), "euler_a");
    assert_int_equal(svdiff_sampler_parse("ddim_inverse", &s), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "ddim_inverse"));
    svdiff_model_close(NULL);   /* no-ops */
    svdiff_shifts_free(NULL);
    svdiff_images_free(NULL, 3);
}

static void test_model_info(void **state) {
    (void)state;
    svdiff_model_t *m = open_tiny();
    svdiff_model_info_t info;
    assert_int_equal(svdiff_model_info(m, &info), SVDIFF_OK);
    pipeline_t p;
    assert_int_equal(pipeline_open(&p, model_dir(), NULL), 0);
    char hash[17];
    assert_int_equal(model_weights_hash(&p.model, hash), 0);
    assert_string_equal(info.weights_hash, hash);
    assert_int_equal(info.native_width, pipeline_native_size(&p));
    assert_int_equal(info.native_height, pipeline_native_size(&p));
    assert_int_equal(info.latent_channels, p.latent_channels);
    assert_int_equal(info.context_dim, p.ctx_dim);
    assert_int_equal(info.unet_levels, p.unet.cfg.n_levels);
    assert_int_equal(info.has_vae, 1);
    assert_string_equal(info.prediction_type, "epsilon");
    assert_true(info.unet_params > 0 && info.text_encoder_params > 0 && info.vae_params > 0);
    int c, lh, lw;
    assert_int_equal(svdiff_model_latent_shape(m, 0, 0, &c, &lh, &lw), SVDIFF_OK);
    assert_int_equal(c, p.latent_channels);
    assert_int_equal(lh * p.scale_factor, info.native_height);
    assert_int_equal(svdiff_model_latent_shape(m, 10, 16, &c, &lh, &lw), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "multiples"));
    pipeline_close(&p);
    svdiff_model_close(m);
}

/* ---- generation ---- */

typedef struct {
    int progress, images, cancel_polls, cancel_at;
    int last_step, total;
    uint8_t *rgb[4];
    uint64_t seeds[4];
} cb_state_t;

static void on_progress(svdiff_stage_t stage, int step, int total, double sec, void *ud) {
    cb_state_t *s = ud;
    (void)stage;
    assert_true(sec >= 0);
    s->progress++, s->last_step = step, s->total = total;
}

static int on_cancel(void *ud) {
    cb_state_t *s = ud;
    return ++s->cancel_polls >= s->cancel_at && s->cancel_at > 0;
}

static void on_image(const uint8_t *rgb, int w, int h, int index, uint64_t seed, void *ud) {
    cb_state_t *s = ud;
    assert_true(index >= 0 && index < 4);
    s->rgb[index] = malloc((size_t)w * h * 3);
    memcpy(s->rgb[index], rgb, (size_t)w * h * 3);
    s->seeds[index] = seed;
    s->images++;
}

static void test_generate_matches_pipeline(void **state) {
    (void)state;
    svdiff_model_t *m = open_tiny();
    svdiff_generate_params_t g = small_gen();
    g.num_images = 3, g.batch = 2;   /* a batch of 2 (seeds 31, 32), then one (33) */
    cb_state_t cs = {0};
    g.callbacks = (svdiff_callbacks_t){.progress = on_progress, .image = on_image, .user_data = &cs};
    svdiff_model_info_t info;
    assert_int_equal(svdiff_model_info(m, &info), 0);
    const size_t bytes = (size_t)info.native_width * info.native_height * 3;
    uint8_t *buf = malloc(bytes * 3);
    g.out_rgb = buf;
    svdiff_image_t *imgs = NULL;
    assert_int_equal(svdiff_generate(m, &g, &imgs), SVDIFF_OK);
    assert_int_equal(cs.images, 3);
    assert_int_equal(cs.progress, 6);   /* steps of the two batches */
    assert_int_equal(cs.last_step, 6);
    assert_int_equal(cs.total, 6);
    for (int k = 0; k < 3; k++) {
        uint8_t *want = pipeline_one(&g, 31 + k, NULL);
        assert_int_equal(imgs[k].width, info.native_width);
        assert_int_equal(imgs[k].seed, 31 + k);
        assert_int_equal(cs.seeds[k], 31 + k);
        assert_memory_equal(imgs[k].rgb, want, bytes);
        assert_memory_equal(cs.rgb[k], want, bytes);
        assert_memory_equal(buf + k * bytes, want, bytes);
        free(want), free(cs.rgb[k]);
    }
    svdiff_images_free(imgs, 3);
    free(buf);
    svdiff_model_close(m);
}

/* The svdiff binary beside this test binary (both in the build folder), or "" when it was not built. */
static void cli_path(char *cli, size_t cap) {
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    assert_true(n > 0);
    exe[n] = 0;
    *strrchr(exe, '/') = 0;
    snprintf(cli, cap, "%s/svdiff", exe);
    if (access(cli, X_OK)) cli[0] = 0;
}

/* The PNG the API writes is the PNG `svdiff generate` writes, byte for byte. */
static void test_png_matches_cli(void **state) {
    (void)state;
    char cli[4200];
    cli_path(cli, sizeof cli);
    if (!cli[0]) skip();   /* only the test binary was built */
    char tmp[64], a[128], b[128], cmd[16384];
    make_tmp(tmp, sizeof tmp);
    snprintf(a, sizeof a, "%s/cli.png", tmp);
    snprintf(b, sizeof b, "%s/api.png", tmp);
    snprintf(cmd, sizeof cmd,
             "'%s' generate --model '%s' --prompt 'a photo of a cat' --negative-prompt blurry --steps 3 --cfg 5 "
             "--sampler dpmpp_2m --seed 31 --quiet -o '%s' 2>/dev/null",
             cli, model_dir(), a);
    assert_int_equal(system(cmd), 0);
    svdiff_model_t *m = open_tiny();
    svdiff_generate_params_t g = small_gen();
    svdiff_image_t *imgs = NULL;
    assert_int_equal(svdiff_generate(m, &g, &imgs), SVDIFF_OK);
    char *text = svdiff_png_parameters(m, &g, imgs[0].seed, model_dir());
    assert_non_null(text);
    assert_non_null(strstr(text, "Seed: 31, Size: 16x16"));
    assert_int_equal(svdiff_png_write(b, imgs[0].rgb, imgs[0].width, imgs[0].height, text), SVDIFF_OK);
    assert_same_file(a, b);
    assert_int_equal(svdiff_png_write(tmp, imgs[0].rgb, imgs[0].width, imgs[0].height, text), SVDIFF_ERR_IO);
    svdiff_free(text);
    svdiff_images_free(imgs, 1);
    svdiff_model_close(m);
    rm_tree(tmp);
}

static void test_generate_cancel(void **state) {
    (void)state;
    svdiff_model_t *m = open_tiny();
    svdiff_generate_params_t g = small_gen();
    g.num_images = 2, g.steps = 4;
    cb_state_t cs = {.cancel_at = 3};   /* polled before the batch and after every step: stop after the second */
    g.callbacks = (svdiff_callbacks_t){.progress = on_progress, .cancel = on_cancel, .image = on_image, .user_data = &cs};
    svdiff_image_t *imgs = (svdiff_image_t *)1;
    assert_int_equal(svdiff_generate(m, &g, &imgs), SVDIFF_ERR_CANCELLED);
    assert_null(imgs);
    assert_int_equal(cs.progress, 2);   /* no UNet call after the cancel */
    assert_int_equal(cs.images, 0);
    assert_non_null(strstr(svdiff_last_error(), "cancelled"));
    /* bad parameters: a code and a message naming the value */
    g = small_gen();
    g.steps = 0;
    assert_int_equal(svdiff_generate(m, &g, NULL), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "steps"));
    g = small_gen();
    g.width = 10;
    assert_int_equal(svdiff_generate(m, &g, NULL), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "10x16"));
    g = small_gen();
    g.prompt = NULL;
    assert_int_equal(svdiff_generate(m, &g, NULL), SVDIFF_ERR_ARG);
    svdiff_model_close(m);
}

/* ---- training ---- */

typedef struct {
    char tmp[64], inst[96], cls[96];
} data_t;

/* tmp/inst: the two fixture dog images without captions; tmp/cls: one of them as a class image */
static void make_data(data_t *d, svdiff_image_t **imgs) {
    make_tmp(d->tmp, sizeof d->tmp);
    snprintf(d->inst, sizeof d->inst, "%s/inst", d->tmp);
    snprintf(d->cls, sizeof d->cls, "%s/cls", d->tmp);
    mkdir(d->inst, 0777), mkdir(d->cls, 0777);
    const char *names[2] = {"dog1.png", "dog2.png"};
    for (int i = 0; i < 2; i++) {
        char src[256], dst[256];
        snprintf(src, sizeof src, "tests/fixtures/train/images/%s", names[i]);
        assert_int_equal(svdiff_image_read(source_path(src), &imgs[i]), SVDIFF_OK);
        snprintf(dst, sizeof dst, "%s/%c.png", d->inst, 'a' + i);
        assert_int_equal(svdiff_png_write(dst, imgs[i]->rgb, imgs[i]->width, imgs[i]->height, NULL), 0);
    }
    char dst[256];
    snprintf(dst, sizeof dst, "%s/x.png", d->cls);
    assert_int_equal(svdiff_png_write(dst, imgs[1]->rgb, imgs[1]->width, imgs[1]->height, NULL), 0);
}

static const char *const SETTINGS[] = {"lr-schedule=cosine", "warmup=1", "flip", "caption_dropout=0"};

static svdiff_train_params_t api_config(const data_t *d, const char *out) {
    svdiff_train_params_t p = svdiff_train_default_params();
    p.model = model_dir();
    p.instance_dir = d->inst, p.instance_prompt = "a photo of sks dog";
    p.class_dir = d->cls, p.class_prompt = "a photo of a dog", p.num_class_images = 1;
    p.resolution = 16, p.steps = 4, p.batch_size = 1, p.grad_accum = 2, p.lr = 1e-2f;
    p.train_text_encoder = 1;
    p.svd_cache_dir = "";
    p.out_dir = out;
    p.settings = SETTINGS, p.n_settings = 4;
    p.callbacks.progress = on_progress;   /* no bar on stderr */
    return p;
}

/* The same run written directly against the trainer. */
static void trainer_config(train_config_t *c, const data_t *d, const char *out) {
    train_config_default(c);
    c->model = model_dir();
    c->instance_dir = d->inst, c->instance_prompt = "a photo of sks dog";
    c->class_dir = d->cls, c->class_prompt = "a photo of a dog", c->num_class_images = 1;
    c->resolution = 16, c->steps = 4, c->batch_size = 1, c->grad_accum = 2, c->lr = 1e-2f;
    c->lr_schedule = LR_COSINE, c->warmup = 1, c->flip = 1;
    c->train_text_encoder = 1;
    c->svd_cache_dir = "";
    c->out_dir = out;
    c->quiet = 1;
}

static void same_outputs(const char *a, const char *b) {
    const char *files[2] = {"spectral_shifts.safetensors", "spectral_shifts_te.safetensors"};
    for (int i = 0; i < 2; i++) {
        char fa[512], fb[512];
        snprintf(fa, sizeof fa, "%s/%s", a, files[i]);
        snprintf(fb, sizeof fb, "%s/%s", b, files[i]);
        assert_same_file(fa, fb);
    }
}

static void test_train_matches_trainer(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    make_data(&d, imgs);
    char direct[160], api[160], mem[160];
    snprintf(direct, sizeof direct, "%s/direct", d.tmp);
    snprintf(api, sizeof api, "%s/api", d.tmp);
    snprintf(mem, sizeof mem, "%s/mem", d.tmp);
    train_config_t c;
    trainer_config(&c, &d, direct);
    trainer_t t;
    int rc = trainer_open(&t, &c);
    if (!rc) rc = trainer_run(&t);
    trainer_close(&t);
    assert_int_equal(rc, 0);

    cb_state_t cs = {0};
    svdiff_train_params_t p = api_config(&d, api);
    p.callbacks.user_data = &cs;
    rc = svdiff_train(&p);
    if (rc) print_error("train: %s\n", svdiff_last_error());
    assert_int_equal(rc, SVDIFF_OK);
    assert_int_equal(cs.progress, 4);
    assert_int_equal(cs.total, 4);
    same_outputs(direct, api);

    /* the same images from memory: the same bytes */
    const svdiff_image_t inst[2] = {*imgs[0], *imgs[1]}, cls[1] = {*imgs[1]};
    p = api_config(&d, mem);
    p.callbacks.user_data = &cs;
    p.instance_dir = NULL, p.instance_images = inst, p.n_instance_images = 2;
    p.class_dir = NULL, p.class_images = cls, p.n_class_images = 1;
    rc = svdiff_train(&p);
    if (rc) print_error("train: %s\n", svdiff_last_error());
    assert_int_equal(rc, SVDIFF_OK);
    same_outputs(direct, mem);

    /* errors: a code and a message */
    p = api_config(&d, mem);
    const char *bad[1] = {"no-such-setting=1"};
    p.settings = bad, p.n_settings = 1;
    assert_int_equal(svdiff_train(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "no-such-setting"));
    p = api_config(&d, mem);
    p.steps = -3;
    assert_int_equal(svdiff_train(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "-3"));
    p = api_config(&d, mem);
    p.model = NULL;
    assert_int_equal(svdiff_train(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "required"));
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* svdiff_pretrain = the trainer on pretrain's defaults with the data set (same model files), its
 * progress callback counts the steps, and it refuses what is not pretraining. */
static void test_pretrain_matches_trainer(void **state) {
    (void)state;
    char tmp[64], tsv[128], direct[128], api[128];
    make_tmp(tmp, sizeof tmp);
    snprintf(tsv, sizeof tsv, "%s/captions.tsv", tmp);
    snprintf(direct, sizeof direct, "%s/direct", tmp);
    snprintf(api, sizeof api, "%s/api", tmp);
    FILE *f = fopen(tsv, "w");
    assert_non_null(f);
    fprintf(f, "path\tcaption\n%s\tan emoji of a dog\n", source_path("tests/fixtures/train/images/dog1.png"));
    fprintf(f, "%s\tan emoji of a dog face\n", source_path("tests/fixtures/train/images/dog2.png"));
    fclose(f);
    train_config_t c;
    pretrain_config_default(&c);
    c.model = model_dir(), c.data_tsv = tsv, c.out_dir = direct;
    c.resolution = 16, c.steps = 3, c.lr = 1e-3f, c.ema_decay = 0.5f, c.quiet = 1;
    trainer_t t;
    int rc = trainer_open(&t, &c);
    if (!rc) rc = trainer_run(&t);
    trainer_close(&t);
    assert_int_equal(rc, 0);

    svdiff_train_params_t p = svdiff_pretrain_default_params();
    assert_int_equal(p.mode, SVDIFF_TRAIN_FULL);
    p.model = model_dir(), p.out_dir = api, p.resolution = 16, p.steps = 3, p.lr = 1e-3f;
    const char *settings[2];
    char data[200];
    snprintf(data, sizeof data, "data=%s", tsv);
    settings[0] = data, settings[1] = "ema-decay=0.5";
    p.settings = settings, p.n_settings = 2;
    cb_state_t cs = {0};
    p.callbacks.progress = on_progress, p.callbacks.user_data = &cs;
    rc = svdiff_pretrain(&p);
    if (rc) print_error("pretrain: %s\n", svdiff_last_error());
    assert_int_equal(rc, SVDIFF_OK);
    assert_int_equal(cs.progress, 3);
    const char *files[2] = {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"};
    for (int i = 0; i < 2; i++) {
        char fa[256], fb[256];
        snprintf(fa, sizeof fa, "%s/%s", direct, files[i]);
        snprintf(fb, sizeof fb, "%s/%s", api, files[i]);
        assert_same_file(fa, fb);
    }
    /* what is not pretraining */
    p.n_settings = 1;
    p.force = 1;
    settings[1] = "class-prompt=a dog";
    p.n_settings = 2;
    assert_int_equal(svdiff_pretrain(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "unknown setting 'class-prompt'"));
    p.n_settings = 0;
    assert_int_equal(svdiff_pretrain(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "data=CAPTIONS.tsv"));
    p.n_settings = 1, p.instance_dir = tmp;
    assert_int_equal(svdiff_pretrain(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "instance and class images"));
    rm_tree(tmp);
}

/* Cancelled before step 4 of 6: SVDIFF_ERR_CANCELLED after 3 finished steps, a checkpoint of step 3,
 * no result; resuming gives the bytes of an uninterrupted run. */
static void test_train_cancel_resumes(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    make_data(&d, imgs);
    char straight[160], cut[160], path[256];
    snprintf(straight, sizeof straight, "%s/straight", d.tmp);
    snprintf(cut, sizeof cut, "%s/cut", d.tmp);
    cb_state_t cs = {0};
    svdiff_train_params_t p = api_config(&d, straight);
    p.steps = 6, p.checkpoint_every = 2;
    p.callbacks.user_data = &cs;
    assert_int_equal(svdiff_train(&p), SVDIFF_OK);

    cb_state_t cc = {.cancel_at = 4};   /* polled before each step: the 4th poll is before step 4 */
    p.out_dir = cut;
    p.callbacks.cancel = on_cancel, p.callbacks.user_data = &cc;
    assert_int_equal(svdiff_train(&p), SVDIFF_ERR_CANCELLED);
    assert_non_null(strstr(svdiff_last_error(), "cancelled after step 3 of 6"));
    assert_int_equal(cc.progress, 3);   /* stopped within one step */
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", cut);
    assert_true(path_exists(path));
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", cut);
    assert_false(path_exists(path));

    p.callbacks.cancel = NULL;
    p.resume = 1;
    cb_state_t cr = {0};
    p.callbacks.user_data = &cr;
    assert_int_equal(svdiff_train(&p), SVDIFF_OK);
    assert_int_equal(cr.progress, 3);   /* steps 4..6 */
    same_outputs(straight, cut);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* ---- adapters ---- */

/* Trains 3 steps with a large LR into tmp/shifts (both parts) and returns the folder. */
static void train_shifts(data_t *d, svdiff_image_t **imgs, char *out, size_t cap) {
    make_data(d, imgs);
    snprintf(out, cap, "%s/shifts", d->tmp);
    svdiff_train_params_t p = api_config(d, out);
    p.steps = 3, p.lr = 5e-2f, p.lr_1d = 1e-2f;
    p.class_dir = NULL, p.class_prompt = NULL;
    cb_state_t cs = {0};
    p.callbacks.user_data = &cs;
    assert_int_equal(svdiff_train(&p), SVDIFF_OK);
}

static void test_adapters_apply_and_clear(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    char shifts[256];
    train_shifts(&d, imgs, shifts, sizeof shifts);
    svdiff_model_t *m = open_tiny();
    const svdiff_generate_params_t g = small_gen();
    size_t n;
    uint8_t *base = gen_one(m, &g, &n);

    assert_int_equal(svdiff_model_apply_shifts(m, shifts, 1.0f), SVDIFF_OK);
    uint8_t *shifted = gen_one(m, &g, &n);
    uint8_t *want = pipeline_one(&g, g.seed, shifts);
    assert_memory_equal(shifted, want, n);   /* as generate --shifts */
    assert_memory_not_equal(shifted, base, n);
    char text[512];
    snprintf(text, sizeof text, "%s (1)", shifts);
    assert_string_equal(svdiff_model_adapters_text(m), text);

    /* a failing apply leaves the model as it was */
    assert_int_equal(svdiff_model_apply_lora(m, "/nonexistent/lora.safetensors", 1.0f), SVDIFF_ERR_IO);
    assert_non_null(strstr(svdiff_last_error(), "/nonexistent/lora.safetensors"));
    assert_string_equal(svdiff_model_adapters_text(m), text);
    uint8_t *again = gen_one(m, &g, &n);
    assert_memory_equal(again, shifted, n);
    free(again);

    /* removal restores the base exactly */
    assert_int_equal(svdiff_model_clear_adapters(m), SVDIFF_OK);
    assert_string_equal(svdiff_model_adapters_text(m), "");
    again = gen_one(m, &g, &n);
    assert_memory_equal(again, base, n);
    free(again);

    /* the same shifts from memory */
    svdiff_shifts_t *s = NULL;
    assert_int_equal(svdiff_shifts_load(shifts, &s), SVDIFF_OK);
    assert_int_equal(svdiff_model_apply_shift_set(m, s, 1.0f), SVDIFF_OK);
    again = gen_one(m, &g, &n);
    assert_memory_equal(again, shifted, n);
    free(again);
    /* scale 0: the base weights' image again after clearing? no: scale 0 of the spectral form
     * rounds differently; clearing is what restores */
    assert_int_equal(svdiff_model_clear_adapters(m), SVDIFF_OK);
    again = gen_one(m, &g, &n);
    assert_memory_equal(again, base, n);
    free(again);
    assert_int_equal(svdiff_model_apply_shifts(m, shifts, NAN), SVDIFF_ERR_ARG);
    assert_int_equal(svdiff_model_apply_delta(m, shifts, 1.0f), SVDIFF_ERR_IO);   /* a folder without delta files */
    again = gen_one(m, &g, &n);
    assert_memory_equal(again, base, n);
    free(again);

    svdiff_shifts_free(s);
    free(base), free(shifted), free(want);
    svdiff_model_close(m);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* Full-weight training with --save-delta through the API, its delta applied and removed: the image
 * of `generate --delta` (the pipeline's), then the base image again. */
static void test_full_mode_delta(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    make_data(&d, imgs);
    char out[256], delta[300];
    snprintf(out, sizeof out, "%s/full", d.tmp);
    svdiff_train_params_t p = api_config(&d, out);
    p.mode = SVDIFF_TRAIN_FULL;
    p.steps = 2, p.lr = 1e-3f;   /* not the default: used as given */
    p.class_dir = NULL, p.class_prompt = NULL;
    const char *more[2] = {"save-delta", "lr-schedule=constant"};
    p.settings = more, p.n_settings = 2;
    cb_state_t cs = {0};
    p.callbacks.user_data = &cs;
    int rc = svdiff_train(&p);
    if (rc) print_error("train: %s\n", svdiff_last_error());
    assert_int_equal(rc, SVDIFF_OK);
    snprintf(delta, sizeof delta, "%s/weight_delta.safetensors", out);
    assert_true(path_exists(delta));
    p.rank = 4;   /* rank limits spectral shifts only */
    assert_int_equal(svdiff_train(&p), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "rank"));

    svdiff_model_t *m = open_tiny();
    const svdiff_generate_params_t g = small_gen();
    size_t n;
    uint8_t *base = gen_one(m, &g, &n);
    assert_int_equal(svdiff_model_apply_delta(m, out, 1.0f), SVDIFF_OK);
    uint8_t *got = gen_one(m, &g, &n);
    assert_memory_not_equal(got, base, n);
    pipeline_t pl;
    assert_int_equal(pipeline_open(&pl, model_dir(), NULL), 0);
    const pipeline_shift_t ds = {.path = out, .scale = 1.0f};
    assert_int_equal(pipeline_apply_deltas(&pl, &ds, 1, 0), 0);
    int C, h, w;
    pipeline_latent_shape(&pl, 16, 16, &C, &h, &w);
    float *lat = malloc(sizeof(float) * C * h * w);
    txt2img_opts_t o = {.prompt = g.prompt, .negative_prompt = g.negative_prompt, .width = 16, .height = 16,
                        .steps = g.steps, .cfg = g.cfg, .sampler = (sampler_kind_t)g.sampler, .seed = g.seed, .batch = 1};
    assert_int_equal(pipeline_txt2img(&pl, &o, NULL, lat), 0);
    uint8_t *want = NULL;
    assert_int_equal(pipeline_decode(&pl, lat, 1, h, w, &want), 0);
    assert_memory_equal(got, want, n);
    char text[512];
    snprintf(text, sizeof text, "delta %s (1)", out);
    assert_string_equal(svdiff_model_adapters_text(m), text);
    assert_int_equal(svdiff_model_clear_adapters(m), SVDIFF_OK);
    uint8_t *again = gen_one(m, &g, &n);
    assert_memory_equal(again, base, n);
    free(again), free(want), free(lat), free(got), free(base);
    pipeline_close(&pl);
    svdiff_model_close(m);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* ---- the toolbox ---- */

static void test_shifts_toolbox(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    char shifts[256], out[256], fa[300], fb[300];
    train_shifts(&d, imgs, shifts, sizeof shifts);
    svdiff_shifts_t *s = NULL, *r = NULL, *z = NULL;
    assert_int_equal(svdiff_shifts_load(shifts, &s), SVDIFF_OK);
    const int count = svdiff_shifts_count(s);
    assert_true(count > 10);
    assert_non_null(svdiff_shifts_meta(s, "base_model_hash"));
    const char *name;
    const float *v;
    int len, te = 0;
    for (int i = 0; i < count; i++) {
        assert_int_equal(svdiff_shifts_entry(s, i, &name, &v, &len), SVDIFF_OK);
        te += !strncmp(name, "text_model.", 11);
    }
    assert_true(te > 0 && te < count);
    assert_int_equal(svdiff_shifts_entry(s, count, &name, &v, &len), SVDIFF_ERR_ARG);

    /* saved back unchanged: the trainer's bytes (one pair id, the same dtypes) */
    snprintf(out, sizeof out, "%s/copy", d.tmp);
    assert_int_equal(svdiff_shifts_save(s, out, -1), SVDIFF_OK);
    same_outputs(shifts, out);

    /* scale 1 copies; combine with weights (1, 0) returns the first bit for bit; scale 0 is zero */
    assert_int_equal(svdiff_shifts_scale(s, 0.0f, &z), SVDIFF_OK);
    assert_int_equal(svdiff_shifts_entry(z, 0, &name, &v, &len), SVDIFF_OK);
    for (int j = 0; j < len; j++) assert_true(v[j] == 0.0f);
    const svdiff_shifts_t *pair[2] = {s, z};
    const float w[2] = {1.0f, 0.0f};
    assert_int_equal(svdiff_shifts_combine(pair, w, 2, 0, &r), SVDIFF_OK);
    snprintf(out, sizeof out, "%s/combined", d.tmp);
    assert_int_equal(svdiff_shifts_save(r, out, -1), SVDIFF_OK);
    same_outputs(shifts, out);
    svdiff_shifts_free(r);

    /* limit_rank 0 zeroes every matrix shift and keeps the norms */
    long kept = -1;
    assert_int_equal(svdiff_shifts_limit_rank(s, 0, &r, &kept), SVDIFF_OK);
    assert_true(kept > 0);   /* the norm shifts */
    assert_int_equal(svdiff_shifts_count(r), count);
    svdiff_shifts_free(r);

    /* mix: the mid block from z, the rest from s */
    const char *sel[1] = {"mid_block"};
    int n_from = 0;
    assert_int_equal(svdiff_shifts_mix(z, s, sel, 1, 2, 2, 0, &r, &n_from), SVDIFF_OK);
    assert_true(n_from > 0);
    for (int i = 0; i < count; i++) {
        assert_int_equal(svdiff_shifts_entry(r, i, &name, &v, &len), SVDIFF_OK);
        if (!strncmp(name, "mid_block", 9))
            for (int j = 0; j < len; j++) assert_true(v[j] == 0.0f);
    }
    svdiff_shifts_free(r);
    const char *typo[1] = {"mid_blok"};
    assert_int_equal(svdiff_shifts_mix(z, s, typo, 1, 2, 2, 0, &r, NULL), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "mid_blok"));
    assert_null(r);

    /* history and metadata */
    assert_int_equal(svdiff_shifts_add_history(z, "scale 0"), SVDIFF_OK);
    assert_string_equal(svdiff_shifts_meta(z, "history"), "scale 0");
    assert_int_equal(svdiff_shifts_set_meta(z, "note", "x"), SVDIFF_OK);
    assert_string_equal(svdiff_shifts_meta(z, "note"), "x");

    /* another base model's file cannot be combined with ours; a missing path is an IO error */
    svdiff_shifts_t *other = NULL;
    assert_int_equal(svdiff_shifts_load(source_path("tests/fixtures/shifts/otherbase.safetensors"), &other), SVDIFF_OK);
    const svdiff_shifts_t *mixed[2] = {s, other};
    assert_int_equal(svdiff_shifts_combine(mixed, NULL, 2, 0, &r), SVDIFF_ERR_ARG);
    assert_null(r);
    assert_int_equal(svdiff_shifts_load("/nonexistent/shifts", &r), SVDIFF_ERR_IO);
    assert_null(r);
    snprintf(fa, sizeof fa, "%s/spectral_shifts.safetensors", shifts);
    snprintf(fb, sizeof fb, "%s/single.safetensors", d.tmp);
    svdiff_shifts_t *one = NULL;
    assert_int_equal(svdiff_shifts_load(fa, &one), SVDIFF_OK);
    assert_int_equal(svdiff_shifts_save(one, fb, -1), SVDIFF_OK);
    svdiff_shifts_free(one);
    assert_int_equal(svdiff_shifts_load(fb, &one), SVDIFF_OK);   /* a single file: rewritten without pair id */
    assert_null(svdiff_shifts_meta(one, "pair_id"));
    svdiff_shifts_free(one);
    svdiff_shifts_free(other), svdiff_shifts_free(z), svdiff_shifts_free(s);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* The per-part view: each part's file, counts and dtype are the internal set's (what `svdiff shifts`
 * printed from its own loader), limit_rank's and mix's per-part counts add up to their totals and
 * are toolbox_limit_rank's, the metadata lists every key in order; bad parts and indices are errors. */
static void test_shifts_parts(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    char shifts[256], fa[300];
    train_shifts(&d, imgs, shifts, sizeof shifts);
    svdiff_shifts_t *s = NULL, *r = NULL, *z = NULL;
    assert_int_equal(svdiff_shifts_load(shifts, &s), SVDIFF_OK);
    static const char *const FILES[2] = {"spectral_shifts.safetensors", "spectral_shifts_te.safetensors"};
    int entries = 0;
    for (int p = 0; p < 2; p++) {
        svdiff_shifts_part_t pi;
        assert_int_equal(svdiff_shifts_part(s, p, &pi), SVDIFF_OK);
        assert_true(pi.present && pi.folder);
        snprintf(fa, sizeof fa, "%s/%s", shifts, FILES[p]);
        assert_string_equal(pi.file, fa);
        shift_set_t ref;
        shiftset_init(&ref);
        assert_int_equal(shiftset_load(&ref, fa), 0);
        long values = 0;
        int norms = 0;
        for (int i = 0; i < ref.n; i++) values += ref.entries[i].n, norms += toolbox_is_norm_path(ref.entries[i].path);
        assert_int_equal(pi.entries, ref.n);
        assert_int_equal(pi.values, values);
        assert_int_equal(pi.norms, norms);
        assert_int_equal(pi.matrices, ref.n - norms);
        assert_true(pi.matrices > 0);
        assert_string_equal(pi.dtype, "F32");
        assert_int_equal(pi.dtype_bytes, 4);
        assert_int_equal(pi.kept, -1);
        assert_int_equal(pi.taken, -1);
        assert_int_equal(pi.n_meta, ref.n_meta);
        for (int i = 0; i < pi.n_meta; i++) {   /* the metadata in file order */
            const char *k, *v;
            assert_int_equal(svdiff_shifts_meta_at(s, p, i, &k, &v), SVDIFF_OK);
            assert_string_equal(k, ref.meta_keys[i]);
            assert_string_equal(v, ref.meta_values[i]);
        }
        assert_int_equal(svdiff_shifts_meta_at(s, p, pi.n_meta, NULL, NULL), SVDIFF_ERR_ARG);
        assert_non_null(strstr(svdiff_last_error(), "out of range"));

        /* limit-rank 1: the part's kept values are toolbox_limit_rank's */
        shift_set_t lim;
        shiftset_init(&lim);
        const long want = toolbox_limit_rank(&lim, &ref, 1);
        if (!r) {
            long total = 0;
            assert_int_equal(svdiff_shifts_limit_rank(s, 1, &r, &total), SVDIFF_OK);
            svdiff_shifts_part_t a, b;
            svdiff_shifts_part(r, 0, &a), svdiff_shifts_part(r, 1, &b);
            assert_int_equal(a.kept + b.kept, total);
            assert_null(a.file);   /* a result, not a file */
        }
        svdiff_shifts_part_t rp;
        assert_int_equal(svdiff_shifts_part(r, p, &rp), SVDIFF_OK);
        assert_int_equal(rp.kept, want);
        assert_true(rp.kept < pi.values);
        shiftset_free(&lim), shiftset_free(&ref);
        entries += pi.entries;
    }
    assert_int_equal(entries, svdiff_shifts_count(s));
    svdiff_shifts_free(r);

    /* mix: per-part entries taken from `from` add up to n_from */
    assert_int_equal(svdiff_shifts_scale(s, 0.0f, &z), SVDIFF_OK);
    const char *sel[2] = {"mid_block", "*self_attn*"};
    int n_from = 0;
    assert_int_equal(svdiff_shifts_mix(z, s, sel, 2, 2, 2, 0, &r, &n_from), SVDIFF_OK);
    svdiff_shifts_part_t m0, m1;
    assert_int_equal(svdiff_shifts_part(r, 0, &m0), SVDIFF_OK);
    assert_int_equal(svdiff_shifts_part(r, 1, &m1), SVDIFF_OK);
    assert_true(m0.taken > 0 && m1.taken > 0);
    assert_int_equal(m0.taken + m1.taken, n_from);
    assert_int_equal(m0.kept, -1);
    svdiff_shifts_free(r), svdiff_shifts_free(z);

    /* a single file: one part, not a folder; bad arguments */
    svdiff_shifts_t *one = NULL;
    snprintf(fa, sizeof fa, "%s/%s", shifts, FILES[1]);
    assert_int_equal(svdiff_shifts_load(fa, &one), SVDIFF_OK);
    svdiff_shifts_part_t p0, p1;
    assert_int_equal(svdiff_shifts_part(one, 0, &p0), SVDIFF_OK);
    assert_int_equal(svdiff_shifts_part(one, 1, &p1), SVDIFF_OK);
    assert_true(p0.present && !p0.folder && !p1.present);
    assert_int_equal(p1.entries, 0);
    assert_int_equal(svdiff_shifts_part(one, 2, &p1), SVDIFF_OK);   /* SDXL's text_encoder_2 part: absent here */
    assert_true(!p1.present && p1.entries == 0);
    assert_int_equal(svdiff_shifts_part(one, SVDIFF_SHIFTS_PARTS, &p0), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "part must be 0, 1 or 2"));
    assert_int_equal(svdiff_shifts_part(NULL, 0, &p0), SVDIFF_ERR_ARG);
    assert_int_equal(svdiff_shifts_part(one, 0, NULL), SVDIFF_ERR_ARG);
    assert_int_equal(svdiff_shifts_meta_at(one, 1, 0, NULL, NULL), SVDIFF_ERR_ARG);
    svdiff_shifts_free(one), svdiff_shifts_free(s);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* svdiff_shifts_describe: the JSON of `svdiff shifts info --json` (the CLI prints it with a newline),
 * its counts those of the per-part view, the largest shifts sorted and top_k long; errors. */
static void test_shifts_describe(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    char shifts[256], a[300], cmd[16384];
    train_shifts(&d, imgs, shifts, sizeof shifts);
    char *json = NULL;
    assert_int_equal(svdiff_shifts_describe(shifts, 0, NULL, NULL, 5, &json), SVDIFF_OK);
    char cli[4200];
    cli_path(cli, sizeof cli);
    if (cli[0]) {   /* what the CLI prints */
        snprintf(a, sizeof a, "%s/info.json", d.tmp);
        snprintf(cmd, sizeof cmd, "'%s' shifts info '%s' --json --top 5 > '%s'", cli, shifts, a);
        assert_int_equal(system(cmd), 0);
        FILE *f = fopen(a, "rb");
        assert_non_null(f);
        char *buf = calloc(1, 1 << 20);
        const size_t n = fread(buf, 1, (1 << 20) - 1, f);
        fclose(f);
        assert_int_equal(n, strlen(json) + 1);
        assert_memory_equal(buf, json, strlen(json));
        free(buf);
    }
    svdiff_shifts_t *s = NULL;
    assert_int_equal(svdiff_shifts_load(shifts, &s), SVDIFF_OK);
    cJSON *root = cJSON_Parse(json), *o;
    assert_non_null(root);
    int p = 0;
    cJSON_ArrayForEach(o, cJSON_GetObjectItem(root, "files")) {
        svdiff_shifts_part_t pi;
        assert_int_equal(svdiff_shifts_part(s, p, &pi), SVDIFF_OK);
        assert_string_equal(cJSON_GetObjectItem(o, "file")->valuestring, pi.file);
        assert_int_equal(cJSON_GetObjectItem(o, "layers")->valueint, pi.entries);
        assert_int_equal(cJSON_GetObjectItem(o, "matrices")->valueint, pi.matrices);
        assert_int_equal(cJSON_GetObjectItem(o, "norms")->valueint, pi.norms);
        assert_int_equal((long)cJSON_GetObjectItem(o, "shifts")->valuedouble, pi.values);
        assert_string_equal(cJSON_GetObjectItem(o, "base_model_hash")->valuestring, svdiff_shifts_meta(s, "base_model_hash"));
        cJSON *top = cJSON_GetObjectItem(o, "largest_shifts"), *x;
        assert_int_equal(cJSON_GetArraySize(top), 5);
        double prev = INFINITY;
        cJSON_ArrayForEach(x, top) {
            const double v = fabs(cJSON_GetObjectItem(x, "delta")->valuedouble);
            assert_true(v <= prev && v > 0);
            prev = v;
        }
        assert_true(cJSON_GetArraySize(cJSON_GetObjectItem(o, "block_l2")) > 0);
        assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(o, "metadata")), pi.n_meta);
        p++;
    }
    assert_int_equal(p, 2);
    cJSON_Delete(root);
    svdiff_free(json);
    /* errors: a cache folder without a model, top_k, a missing path */
    assert_int_equal(svdiff_shifts_describe(shifts, 0, d.tmp, NULL, 5, &json), SVDIFF_ERR_ARG);
    assert_null(json);
    assert_non_null(strstr(svdiff_last_error(), "is a folder"));
    assert_int_equal(svdiff_shifts_describe(shifts, 0, d.tmp, model_dir(), 5, &json), SVDIFF_ERR_IO);
    assert_non_null(strstr(svdiff_last_error(), "no SVD cache for model"));
    assert_int_equal(svdiff_shifts_describe(shifts, 0, NULL, NULL, 0, &json), SVDIFF_ERR_ARG);
    assert_int_equal(svdiff_shifts_describe("/nonexistent/shifts", 0, NULL, NULL, 5, &json), SVDIFF_ERR_IO);
    svdiff_shifts_free(s);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

typedef struct {
    int starts, fits;
} fit_count_t;

static void count_fit(int part, const char *path, double lost, double max_gain_err, void *user_data) {
    fit_count_t *c = user_data;
    assert_true(part == 0 || part == 1);
    if (!path) c->starts++;
    else assert_true(lost >= 0 && max_gain_err >= 0), c->fits++;
}

/* svdiff_shifts_convert: a dtype change copies the values; svdiff-pytorch's scalar form needs the
 * model, reports each fitted norm, refuses a lossy fit without force (stats filled, nothing
 * returned) and, forced, gives [1] norms that "native" turns back into per-element ones; to_lora
 * writes a LoRA file whose stats hold, and refuses bad parameters. */
static void test_shifts_convert_and_to_lora(void **state) {
    (void)state;
    data_t d;
    svdiff_image_t *imgs[2];
    char shifts[256], lora[300];
    train_shifts(&d, imgs, shifts, sizeof shifts);
    svdiff_shifts_t *s = NULL, *r = NULL, *back = NULL;
    assert_int_equal(svdiff_shifts_load(shifts, &s), SVDIFF_OK);
    const int count = svdiff_shifts_count(s);
    svdiff_convert_params_t cp = svdiff_convert_default_params();
    assert_int_equal(cp.fp16, 0);
    assert_null(cp.format);
    cp.fp16 = 1;
    svdiff_convert_stats_t st;
    assert_int_equal(svdiff_shifts_convert(s, &cp, &r, &st), SVDIFF_OK);
    assert_int_equal(st.lossy, 0);
    svdiff_shifts_part_t pi;
    assert_int_equal(svdiff_shifts_part(r, 1, &pi), SVDIFF_OK);
    assert_string_equal(pi.dtype, "F16");
    for (int i = 0; i < count; i++) {
        const char *na, *nb;
        const float *va, *vb;
        int la, lb;
        svdiff_shifts_entry(s, i, &na, &va, &la), svdiff_shifts_entry(r, i, &nb, &vb, &lb);
        assert_string_equal(na, nb);
        assert_int_equal(la, lb);
        assert_memory_equal(va, vb, sizeof(float) * la);
    }
    svdiff_shifts_free(r);

    cp.fp16 = 0, cp.format = "svdiff-pytorch";
    assert_int_equal(svdiff_shifts_convert(s, &cp, &r, &st), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "add --model M"));
    fit_count_t fc = {0};
    cp.model = model_dir(), cp.fit = count_fit, cp.user_data = &fc;
    assert_int_equal(svdiff_shifts_convert(s, &cp, &r, &st), SVDIFF_ERR_ARG);   /* lossy, not forced */
    assert_null(r);
    assert_non_null(strstr(svdiff_last_error(), "nothing written"));
    assert_int_equal(st.lossy, 1);
    assert_true(st.lost > 1e-4 && st.n_fitted > 0 && st.worst_path[0]);
    assert_int_equal(fc.fits, st.n_fitted);
    assert_int_equal(fc.starts, 2);   /* both parts */
    cp.force = 1;
    assert_int_equal(svdiff_shifts_convert(s, &cp, &r, &st), SVDIFF_OK);
    int scalars = 0;
    for (int i = 0; i < count; i++) {
        const char *n;
        int len;
        svdiff_shifts_entry(r, i, &n, NULL, &len);
        scalars += len == 1;
    }
    assert_int_equal(scalars, st.n_fitted);
    cp.format = "native", cp.force = 0;
    assert_int_equal(svdiff_shifts_convert(r, &cp, &back, &st), SVDIFF_OK);   /* exact: no fit */
    assert_int_equal(st.lossy, 0);
    for (int i = 0; i < count; i++) {
        int la, lb;
        const char *n;
        svdiff_shifts_entry(s, i, &n, NULL, &la), svdiff_shifts_entry(back, i, &n, NULL, &lb);
        assert_int_equal(la, lb);
    }
    svdiff_shifts_free(back), svdiff_shifts_free(r);
    cp.format = "pytorch";
    assert_int_equal(svdiff_shifts_convert(s, &cp, &r, &st), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "'pytorch'"));

    /* to-lora */
    svdiff_lora_params_t lp = svdiff_lora_default_params();
    assert_true(lp.energy == 0.99 && lp.dtype == SVDIFF_DTYPE_F16 && lp.format == SVDIFF_LORA_KOHYA);
    lp.max_rank = 2, lp.energy = 1.0, lp.check = 1, lp.svd_cache_dir = "";
    snprintf(lora, sizeof lora, "%s/lora.safetensors", d.tmp);
    svdiff_lora_stats_t ls[2];
    assert_int_equal(svdiff_shifts_to_lora(s, model_dir(), &lp, lora, ls), SVDIFF_OK);
    assert_true(path_exists(lora));
    for (int p = 0; p < 2; p++) {
        assert_true(ls[p].layers > 0);
        assert_true(ls[p].rank_max <= 2 && ls[p].rank_min >= 1);
        assert_true(ls[p].energy_kept <= ls[p].energy_total * (1 + 1e-9));
        assert_true(ls[p].ref2 > 0 && ls[p].bytes > 0);
    }
    lp.energy = 0;
    assert_int_equal(svdiff_shifts_to_lora(s, model_dir(), &lp, lora, NULL), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "energy"));
    lp.energy = 1;
    assert_int_equal(svdiff_shifts_to_lora(s, NULL, &lp, lora, NULL), SVDIFF_ERR_ARG);
    svdiff_shifts_t *other = NULL;
    assert_int_equal(svdiff_shifts_load(source_path("tests/fixtures/shifts/otherbase.safetensors"), &other), SVDIFF_OK);
    assert_int_equal(svdiff_shifts_to_lora(other, model_dir(), &lp, lora, NULL), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "trained on base model 0123456789abcdef"));
    svdiff_shifts_free(other), svdiff_shifts_free(s);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

/* svdiff_model_describe: the JSON of `svdiff info --json` less its timing, its counts those of
 * svdiff_model_info, the layouts of a folder and a single file, the prediction type's source;
 * errors. */
static void test_model_describe(void **state) {
    (void)state;
    char *json = NULL;
    assert_int_equal(svdiff_model_describe(model_dir(), NULL, &json), SVDIFF_OK);
    cJSON *d = cJSON_Parse(json);
    assert_non_null(d);
    assert_string_equal(cJSON_GetObjectItem(d, "layout")->valuestring, "diffusers");
    svdiff_model_t *m = open_tiny();
    svdiff_model_info_t mi;
    assert_int_equal(svdiff_model_info(m, &mi), SVDIFF_OK);
    cJSON *cs = cJSON_GetObjectItem(d, "components");
    assert_int_equal((int64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "unet"), "parameters")->valuedouble,
                     mi.unet_params);
    assert_int_equal((int64_t)cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "text_encoder"), "parameters")->valuedouble,
                     mi.text_encoder_params);
    assert_int_equal(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(cs, "vae"), "present")), mi.has_vae);
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(d, "prediction_type"), "value")->valuestring,
                        mi.prediction_type);
    svdiff_model_close(m);
    char cli[4200];
    cli_path(cli, sizeof cli);
    if (cli[0]) {   /* the CLI's --json is this object plus open_ms and peak_rss_kb */
        char tmp[64], out[128], cmd[8500];
        make_tmp(tmp, sizeof tmp);
        snprintf(out, sizeof out, "%s/info.json", tmp);
        snprintf(cmd, sizeof cmd, "'%s' info --model '%s' --json > '%s'", cli, model_dir(), out);
        assert_int_equal(system(cmd), 0);
        FILE *f = fopen(out, "rb");
        assert_non_null(f);
        char *buf = calloc(1, 1 << 20);
        assert_true(fread(buf, 1, (1 << 20) - 1, f) > 0);
        fclose(f);
        cJSON *c = cJSON_Parse(buf);
        assert_non_null(c);
        assert_non_null(cJSON_GetObjectItem(c, "open_ms"));
        cJSON_DeleteItemFromObject(c, "open_ms");
        cJSON_DeleteItemFromObject(c, "peak_rss_kb");
        char *a = cJSON_Print(c);
        assert_string_equal(a, json);
        free(a), free(buf);
        cJSON_Delete(c);
        rm_tree(tmp);
    }
    cJSON_Delete(d);
    svdiff_free(json);
    /* a single file; the prediction type given */
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.prediction_type = "v_prediction";
    assert_int_equal(svdiff_model_describe(source_path("tests/fixtures/tiny-sd/sd1.safetensors"), &mp, &json), SVDIFF_OK);
    d = cJSON_Parse(json);
    assert_string_equal(cJSON_GetObjectItem(d, "layout")->valuestring, "LDM SD1");
    cJSON *pt = cJSON_GetObjectItem(d, "prediction_type");
    assert_string_equal(cJSON_GetObjectItem(pt, "value")->valuestring, "v_prediction");
    assert_false(cJSON_IsTrue(cJSON_GetObjectItem(pt, "guessed")));
    assert_int_equal(cJSON_GetObjectItem(d, "files")->valueint, 1);
    cJSON_Delete(d);
    svdiff_free(json);
    /* errors */
    assert_int_equal(svdiff_model_describe("/nonexistent/model", NULL, &json), SVDIFF_ERR_IO);
    assert_null(json);
    assert_non_null(strstr(svdiff_last_error(), "/nonexistent/model"));
    mp.prediction_type = "bogus";
    assert_int_equal(svdiff_model_describe(model_dir(), &mp, &json), SVDIFF_ERR_ARG);
    assert_int_equal(svdiff_model_describe(model_dir(), NULL, NULL), SVDIFF_ERR_ARG);
}

/* ---- files around generation ---- */

/* svdiff_latents_write gives the bytes of `svdiff generate --save-latents`; svdiff_latents_read reads
 * them back (one row repeated for several images) and refuses wrong shapes, NaN and a missing tensor;
 * svdiff_output_check refuses a folder and a device, accepts a new file. */
static void test_latents_and_output_check(void **state) {
    (void)state;
    char tmp[64], a[128], b[128], c[128], cmd[16384];
    make_tmp(tmp, sizeof tmp);
    snprintf(a, sizeof a, "%s/cli.safetensors", tmp);
    snprintf(b, sizeof b, "%s/api.safetensors", tmp);
    snprintf(c, sizeof c, "%s/x.png", tmp);
    svdiff_model_t *m = open_tiny();
    svdiff_generate_params_t g = small_gen();
    g.num_images = 2;
    int C, h, w;
    assert_int_equal(svdiff_model_latent_shape(m, 16, 16, &C, &h, &w), SVDIFF_OK);
    const size_t per = (size_t)C * h * w;
    float *lat = calloc(2 * per, sizeof(float)), *back = calloc(3 * per, sizeof(float));
    g.out_latents = lat;
    assert_int_equal(svdiff_generate(m, &g, NULL), SVDIFF_OK);
    const char *meta[6] = {"prompt", g.prompt, "seed", "31", "sampler", "dpmpp_2m"};
    assert_int_equal(svdiff_latents_write(b, lat, 2, C, h, w, meta, 3), SVDIFF_OK);
    char cli[4200];
    cli_path(cli, sizeof cli);
    if (cli[0]) {   /* the CLI's file, byte for byte */
        snprintf(cmd, sizeof cmd,
                 "'%s' generate --model '%s' --prompt 'a photo of a cat' --negative-prompt blurry --steps 3 --cfg 5 "
                 "--sampler dpmpp_2m --seed 31 --num-images 2 --quiet -o '%s' --save-latents '%s' 2>/dev/null",
                 cli, model_dir(), c, a);
        assert_int_equal(system(cmd), 0);
        assert_same_file(a, b);
    }
    assert_int_equal(svdiff_latents_read(b, 2, C, h, w, back), SVDIFF_OK);
    assert_memory_equal(back, lat, sizeof(float) * 2 * per);
    /* one row for three images: repeated */
    assert_int_equal(svdiff_latents_write(b, lat + per, 1, C, h, w, NULL, 0), SVDIFF_OK);
    assert_int_equal(svdiff_latents_read(b, 3, C, h, w, back), SVDIFF_OK);
    for (int k = 0; k < 3; k++) assert_memory_equal(back + k * per, lat + per, sizeof(float) * per);
    /* wrong shape, wrong count */
    assert_int_equal(svdiff_latents_read(b, 3, C, h + 1, w, back), SVDIFF_ERR_SHAPE);
    assert_non_null(strstr(svdiff_last_error(), "must be [3 or 1,"));
    assert_int_equal(svdiff_latents_write(b, lat, 2, C, h, w, NULL, 0), SVDIFF_OK);
    assert_int_equal(svdiff_latents_read(b, 3, C, h, w, back), SVDIFF_ERR_SHAPE);
    /* a NaN: refused with its index */
    lat[per + 5] = NAN;
    assert_int_equal(svdiff_latents_write(b, lat, 2, C, h, w, NULL, 0), SVDIFF_OK);
    assert_int_equal(svdiff_latents_read(b, 2, C, h, w, back), SVDIFF_ERR_FORMAT);
    char want[64];
    snprintf(want, sizeof want, "at flat index %zu", per + 5);
    assert_non_null(strstr(svdiff_last_error(), want));
    /* not a latents file; bad arguments */
    const char *weights = source_path("tests/fixtures/tiny-sd/diffusers/unet/diffusion_pytorch_model.safetensors");
    assert_int_equal(svdiff_latents_read(weights, 1, C, h, w, back), SVDIFF_ERR_FORMAT);
    assert_non_null(strstr(svdiff_last_error(), "no tensor named 'latents'"));
    assert_int_equal(svdiff_latents_read("/nonexistent/l.safetensors", 1, C, h, w, back), SVDIFF_ERR_IO);
    assert_int_equal(svdiff_latents_write(b, lat, 0, C, h, w, NULL, 0), SVDIFF_ERR_ARG);
    assert_int_equal(svdiff_latents_write(b, lat, 1, C, h, w, NULL, 1), SVDIFF_ERR_ARG);
    /* output targets */
    assert_int_equal(svdiff_output_check(c), SVDIFF_OK);
    snprintf(c, sizeof c, "%s/new.png", tmp);
    assert_int_equal(svdiff_output_check(c), SVDIFF_OK);
    assert_int_equal(svdiff_output_check(tmp), SVDIFF_ERR_IO);
    assert_non_null(strstr(svdiff_last_error(), tmp));
    assert_int_equal(svdiff_output_check("/dev/null"), SVDIFF_ERR_IO);
    assert_int_equal(svdiff_output_check(NULL), SVDIFF_ERR_ARG);
    free(lat), free(back);
    svdiff_model_close(m);
    rm_tree(tmp);
}

/* ---- edit ---- */

static void test_edit(void **state) {
    (void)state;
    svdiff_model_t *m = open_tiny();
    svdiff_edit_params_t e = svdiff_edit_default_params();
    const char *edits[2] = {"a photo of a cat", "a photo of a red dog"};
    char image[4096];
    snprintf(image, sizeof image, "%s", source_path("tests/fixtures/train/images/dog1.png"));
    e.image_path = image;
    e.prompt = "a photo of a dog";
    e.edits = edits, e.n_edits = 2, e.steps = 3;
    cb_state_t cs = {0};
    e.callbacks = (svdiff_callbacks_t){.progress = on_progress, .image = on_image, .user_data = &cs};
    svdiff_image_t *a = NULL, *b = NULL;
    double psnr = 0;
    assert_int_equal(svdiff_edit(m, &e, &a, &psnr), SVDIFF_OK);
    assert_int_equal(cs.images, 4);   /* input, reconstruction, two edits */
    assert_int_equal(cs.total, 3 * (3 + 1 + 2));   /* inversions (source + 2 targets), reconstruction, edits */
    assert_int_equal(cs.last_step, cs.total);
    assert_true(psnr > 0 && psnr < 200);
    const size_t n = (size_t)a[0].width * a[0].height * 3;
    assert_int_equal(a[0].width, 16);
    for (int k = 0; k < 4; k++) assert_memory_equal(cs.rgb[k], a[k].rgb, n), free(cs.rgb[k]);
    assert_memory_not_equal(a[2].rgb, a[3].rgb, n);
    /* the image from memory: the same results */
    svdiff_image_t *img = NULL;
    assert_int_equal(svdiff_image_read(e.image_path, &img), SVDIFF_OK);
    e.image_path = NULL, e.image = img;
    e.callbacks = (svdiff_callbacks_t){0};
    assert_int_equal(svdiff_edit(m, &e, &b, NULL), SVDIFF_OK);
    for (int k = 0; k < 4; k++) assert_memory_equal(a[k].rgb, b[k].rgb, n);
    svdiff_images_free(b, 4);
    /* cancel before the first run; bad values */
    cb_state_t cc = {.cancel_at = 1};
    e.callbacks = (svdiff_callbacks_t){.cancel = on_cancel, .user_data = &cc};
    assert_int_equal(svdiff_edit(m, &e, &b, NULL), SVDIFF_ERR_CANCELLED);
    assert_null(b);
    e.callbacks = (svdiff_callbacks_t){0};
    e.slerp = 2;
    assert_int_equal(svdiff_edit(m, &e, NULL, NULL), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "slerp"));
    svdiff_images_free(img, 1);
    svdiff_images_free(a, 4);
    svdiff_model_close(m);
}

/* svdiff_edit_report: the figures `svdiff edit --report` computed on the pipeline before (seeded
 * noise sampled back, the VAE round trip), one more run of progress; svdiff_psnr; a wrong image. */
static void test_edit_report(void **state) {
    (void)state;
    svdiff_model_t *m = open_tiny();
    svdiff_edit_params_t e = svdiff_edit_default_params();
    const char *edits[1] = {"a photo of a cat"};
    char image[4096];
    snprintf(image, sizeof image, "%s", source_path("tests/fixtures/train/images/dog1.png"));
    e.image_path = image, e.prompt = "a photo of a dog", e.edits = edits, e.n_edits = 1, e.steps = 3, e.seed = 5;
    svdiff_image_t *a = NULL;
    double psnr = 0;
    assert_int_equal(svdiff_edit(m, &e, &a, &psnr), SVDIFF_OK);
    cb_state_t cs = {0};
    e.callbacks = (svdiff_callbacks_t){.progress = on_progress, .user_data = &cs};
    svdiff_edit_report_t r;
    assert_int_equal(svdiff_edit_report(m, &e, a, &r), SVDIFF_OK);
    assert_int_equal(cs.progress, 3);
    assert_int_equal(cs.total, 3);
    /* the same on the pipeline, as the CLI computed it before */
    pipeline_t p;
    assert_int_equal(pipeline_open(&p, model_dir(), NULL), 0);
    const int res = a[0].width;
    int C, h, w;
    pipeline_latent_shape(&p, res, res, &C, &h, &w);
    const size_t n = (size_t)C * h * w, npix = (size_t)res * res * 3;
    float *x0 = malloc(sizeof(float) * n), *noise = malloc(sizeof(float) * n), *lat = malloc(sizeof(float) * n);
    image_t in;
    assert_int_equal(image_load(&in, image), 0);
    assert_int_equal(edit_image_latents(&p, &in, res, x0, NULL), 0);
    image_free(&in);
    rng_t g;
    rng_init(&g, 5);
    rng_fill_normal(&g, noise, n);
    assert_int_equal(edit_sample(&p, noise, e.prompt, res, 3, 1.0f, 0.0f, 5, lat, NULL, NULL), 0);
    uint8_t *rn = NULL, *rt = NULL;
    assert_int_equal(pipeline_decode(&p, lat, 1, h, w, &rn), 0);
    assert_true(r.noise_reconstruction_psnr == edit_psnr(rn, a[0].rgb, npix));
    assert_true(p.has_vae);
    assert_int_equal(pipeline_decode(&p, x0, 1, h, w, &rt), 0);
    assert_true(r.vae_roundtrip_psnr == edit_psnr(rt, a[0].rgb, npix));
    assert_true(r.reconstruction_vs_vae_psnr == edit_psnr(a[1].rgb, rt, npix));
    assert_true(svdiff_psnr(a[1].rgb, a[0].rgb, npix) == psnr);
    assert_true(isinf(svdiff_psnr(a[0].rgb, a[0].rgb, npix)));
    assert_true(isnan(svdiff_psnr(NULL, a[0].rgb, npix)));
    free(rn), free(rt), free(x0), free(noise), free(lat);
    pipeline_close(&p);
    /* images of another size; cancel */
    svdiff_image_t bad[2] = {a[0], a[1]};
    bad[1].width = 8;
    assert_int_equal(svdiff_edit_report(m, &e, bad, &r), SVDIFF_ERR_ARG);
    assert_non_null(strstr(svdiff_last_error(), "images[1]"));
    cb_state_t cc = {.cancel_at = 1};
    e.callbacks = (svdiff_callbacks_t){.cancel = on_cancel, .user_data = &cc};
    assert_int_equal(svdiff_edit_report(m, &e, a, &r), SVDIFF_ERR_CANCELLED);
    svdiff_images_free(a, 3);
    svdiff_model_close(m);
}

/* svdiff_folder_lock: a second process cannot take a held folder (the message names the holder),
 * can once it is released; stale temp files go, live ones stay; a missing folder is an error. */
static void test_folder_lock(void **state) {
    (void)state;
    char tmp[64], stale[128], live[128];
    make_tmp(tmp, sizeof tmp);
    snprintf(stale, sizeof stale, "%s/a.png.tmp.999999999", tmp);
    snprintf(live, sizeof live, "%s/b.png.tmp.%ld", tmp, (long)getpid());
    FILE *f = fopen(stale, "w");
    fclose(f);
    f = fopen(live, "w");
    fclose(f);
    svdiff_folder_lock_t *l = NULL;
    assert_int_equal(svdiff_folder_lock(tmp, &l), SVDIFF_OK);
    assert_non_null(l);
    assert_false(path_exists(stale));
    assert_true(path_exists(live));
    svdiff_folder_lock_t *again = NULL;   /* re-entrant in one process */
    assert_int_equal(svdiff_folder_lock(tmp, &again), SVDIFF_OK);
    svdiff_folder_unlock(again);
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {   /* another process: refused while held */
        svdiff_folder_lock_t *c = NULL;
        const int rc = svdiff_folder_lock(tmp, &c);
        _exit(rc == SVDIFF_ERR_IO && strstr(svdiff_last_error(), "another svdiff run") ? 0 : 1);
    }
    int st = -1;
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    svdiff_folder_unlock(l);
    pid = fork();
    if (pid == 0) {   /* released: taken */
        svdiff_folder_lock_t *c = NULL;
        _exit(svdiff_folder_lock(tmp, &c) == SVDIFF_OK ? 0 : 1);
    }
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    assert_int_equal(svdiff_folder_lock("/nonexistent/folder", &l), SVDIFF_ERR_IO);
    assert_null(l);
    svdiff_folder_unlock(NULL);
    rm_tree(tmp);
}

/* `svdiff edit --shifts DIR` and svdiff_apply_shifts + svdiff_edit: the same pixels in every image
 * of the grid (the CLI's PNGs are read back). */
static void test_edit_matches_cli(void **state) {
    (void)state;
    char cli[4200];
    cli_path(cli, sizeof cli);
    if (!cli[0]) skip();
    data_t d;
    svdiff_image_t *imgs[2];
    char shifts[256], out[256], cmd[16384];
    train_shifts(&d, imgs, shifts, sizeof shifts);
    snprintf(out, sizeof out, "%s/edit", d.tmp);
    char image[4096];   /* source_path's buffer is static: model_dir() reuses it */
    snprintf(image, sizeof image, "%s", source_path("tests/fixtures/train/images/dog1.png"));
    snprintf(cmd, sizeof cmd,
             "'%s' edit --model '%s' --image '%s' --prompt 'a photo of a dog' --edit 'a photo of a cat' "
             "--edit 'a red dog' --shifts '%s' --sample-steps 3 --slerp 0.3 --invert-prompt source --svd-cache none "
             "--quiet -o '%s' 2>/dev/null",
             cli, model_dir(), image, shifts, out);
    assert_int_equal(system(cmd), 0);
    svdiff_model_t *m = open_tiny();
    assert_int_equal(svdiff_model_apply_shifts(m, shifts, 1.0f), SVDIFF_OK);
    svdiff_edit_params_t e = svdiff_edit_default_params();
    const char *edits[2] = {"a photo of a cat", "a red dog"};
    e.image_path = image, e.prompt = "a photo of a dog";
    e.edits = edits, e.n_edits = 2, e.steps = 3, e.slerp = 0.3f, e.invert_source = 1;
    svdiff_image_t *got = NULL;
    assert_int_equal(svdiff_edit(m, &e, &got, NULL), SVDIFF_OK);
    const char *names[3] = {"reconstruction.png", "edit-1.png", "edit-2.png"};
    for (int k = 0; k < 3; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", out, names[k]);
        svdiff_image_t *want = NULL;
        assert_int_equal(svdiff_image_read(path, &want), SVDIFF_OK);
        assert_int_equal(want->width, got[1 + k].width);
        assert_memory_equal(want->rgb, got[1 + k].rgb, (size_t)want->width * want->height * 3);
        svdiff_images_free(want, 1);
    }
    svdiff_images_free(got, 4);
    svdiff_model_close(m);
    for (int i = 0; i < 2; i++) svdiff_images_free(imgs[i], 1);
    rm_tree(d.tmp);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_version_and_errors),
        cmocka_unit_test(test_model_info),
        cmocka_unit_test(test_model_describe),
        cmocka_unit_test(test_generate_matches_pipeline),
        cmocka_unit_test(test_png_matches_cli),
        cmocka_unit_test(test_generate_cancel),
        cmocka_unit_test(test_train_matches_trainer),
        cmocka_unit_test(test_pretrain_matches_trainer),
        cmocka_unit_test(test_train_cancel_resumes),
        cmocka_unit_test(test_adapters_apply_and_clear),
        cmocka_unit_test(test_full_mode_delta),
        cmocka_unit_test(test_shifts_toolbox),
        cmocka_unit_test(test_shifts_parts),
        cmocka_unit_test(test_shifts_describe),
        cmocka_unit_test(test_shifts_convert_and_to_lora),
        cmocka_unit_test(test_latents_and_output_check),
        cmocka_unit_test(test_edit),
        cmocka_unit_test(test_edit_report),
        cmocka_unit_test(test_folder_lock),
        cmocka_unit_test(test_edit_matches_cli),
    };
    return RUN_TESTS(argc, argv, "api", tests, NULL, NULL);
}
