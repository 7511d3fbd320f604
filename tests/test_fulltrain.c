/* Full-weight training (`svdiff train --mode full`, `svdiff pretrain`; src/train/full.c and the
 * full mode of the trainer) on the tiny SD model with PNGs and a captions TSV written here: a
 * finite-difference check of dense weight gradients through one step's loss, a short run lowering
 * the loss on fixed noise, byte-identical reruns, kill + --resume (with EMA) reproducing an
 * uninterrupted run, the EMA arithmetic, the output folder opening with model_open and
 * generating, and the weight delta applied to the base giving the finetuned weights. */
#define _GNU_SOURCE   /* nftw, mkdtemp, setenv */
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "base/error.h"
#include "base/runtime.h"
#include "io/image.h"
#include "io/model.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

static char g_model[4096];

static const char *model_dir(void) {
    snprintf(g_model, sizeof g_model, "%s", source_path("tests/fixtures/tiny-sd/diffusers"));
    return g_model;
}

/* ---- files ---- */

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* loss.csv without its seconds column. */
static char *csv_without_seconds(const char *path) {
    size_t n = 0;
    char *s = read_file(path, &n);
    assert_non_null(s);
    char *out = malloc(n + 1), *o = out;
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        char *last = strrchr(line, ',');
        if (last) *last = 0;
        o += sprintf(o, "%s\n", line);
    }
    free(s);
    return out;
}

/* A 16x16 PNG of a coloured disc on white (content varies with seed). */
static void write_png(const char *path, uint64_t seed) {
    image_t img;
    assert_int_equal(image_alloc(&img, 16, 16), 0);
    trng_t r;
    trng_seed(&r, seed);
    const float cx = 4 + 8 * trng_uniform(&r), cy = 4 + 8 * trng_uniform(&r), rad = 3 + 3 * trng_uniform(&r);
    uint8_t col[3];
    for (int k = 0; k < 3; k++) col[k] = (uint8_t)(255 * trng_uniform(&r));
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 16; x++)
            for (int k = 0; k < 3; k++) {
                const int in = (x - cx) * (x - cx) + (y - cy) * (y - cy) < rad * rad;
                img.rgb[((size_t)y * 16 + x) * 3 + k] = in ? col[k] : 255;
            }
    assert_int_equal(image_save_png(&img, path, NULL, NULL, 0), 0);
    image_free(&img);
}

typedef struct {
    char tmp[64], tsv[128];
} data_t;

/* tmp/img/e0..e4.png and tmp/captions.tsv: a header, four training rows (one without a split),
 * one held-out row (split test) and a comment. */
static void make_data(data_t *d) {
    snprintf(d->tmp, sizeof d->tmp, "/tmp/svdiff-fulltrain-XXXXXX");
    assert_non_null(mkdtemp(d->tmp));
    char p[256];
    snprintf(p, sizeof p, "%s/img", d->tmp);
    mkdir(p, 0777);
    static const char *const names[5] = {"red circle", "blue circle", "green dot", "cat face", "small yellow dot"};
    char tsv[2048];
    int len = snprintf(tsv, sizeof tsv, "path\tcaption\tsplit\n# comment\n");
    for (int i = 0; i < 5; i++) {
        snprintf(p, sizeof p, "%s/img/e%d.png", d->tmp, i);
        write_png(p, 100 + i);
        len += snprintf(tsv + len, sizeof tsv - len, "img/e%d.png\tan emoji of %s%s\n", i, names[i],
                        i == 3 ? "\ttest" : i == 4 ? "" : "\ttrain");
    }
    snprintf(d->tsv, sizeof d->tsv, "%s/captions.tsv", d->tmp);
    write_text(d->tsv, tsv);
}

static void pre_config(train_config_t *c, const data_t *d, char *out, size_t cap, const char *name) {
    train_config_default(c);
    snprintf(out, cap, "%s/%s", d->tmp, name);
    c->model = model_dir();
    c->mode = TRAIN_MODE_FULL;
    c->data_tsv = d->tsv;
    c->train_text_encoder = 1;
    c->resolution = 16, c->center_crop = 1;
    c->batch_size = 2, c->grad_accum = 2, c->steps = 4;
    c->lr = 1e-3f, c->lr_schedule = LR_COSINE, c->warmup = 1;
    c->svd_cache_dir = "";
    c->threads = 1;
    c->out_dir = out;
    c->quiet = 1;
}

static train_param_t *find(trainer_t *t, const char *name) {
    for (int i = 0; i < t->n_params; i++)
        if (!strcmp(t->params[i].name, name)) return &t->params[i];
    print_error("no trained array %s\n", name);
    fail();
    return NULL;
}

/* A fixed micro-batch: x0, eps from a seed, spread timesteps, the prompts' ids. */
typedef struct {
    trainer_t *t;
    float *x0, *eps;
    int ts[8], *ids;
    int rows;
} batch_t;

static void batch_make(batch_t *b, trainer_t *t, uint64_t seed) {
    b->t = t;
    b->rows = t->rows;
    const size_t L = t->latent_n;
    trng_t r;
    trng_seed(&r, seed);
    b->x0 = alloc_normal(&r, b->rows * L, 0.5f);
    b->eps = alloc_normal(&r, b->rows * L, 1.0f);
    b->ids = malloc(sizeof(int) * b->rows * t->T);
    for (int i = 0; i < b->rows; i++) {
        b->ts[i] = (int)((i * 397 + 101) % t->p.sched.T);
        memcpy(b->ids + (size_t)i * t->T, t->prompts.ids + (size_t)(i % t->prompts.n) * t->T, sizeof(int) * t->T);
    }
}

static void batch_free(batch_t *b) { free(b->x0), free(b->eps), free(b->ids); }

static double batch_loss(void *vb) {
    batch_t *b = vb;
    train_losses_t l;
    assert_int_equal(trainer_micro_step(b->t, b->x0, b->eps, b->ts, b->ids, NULL, b->rows, 0, 1.0f, &l), 0);
    unet_grads_zero(&b->t->ug);
    clip_grads_zero(&b->t->cg);
    return l.loss;
}

/* ---- tests ---- */

static void test_tsv(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    train_config_t c;
    char out[256];
    pre_config(&c, &d, out, sizeof out, "tsv");
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_int_equal(t.inst.n, 4);   /* the test row is held out */
    assert_int_equal(t.prompts.n, 4);
    assert_string_equal(t.prompts.text[t.inst.img[3].prompt], "an emoji of small yellow dot");
    assert_true(t.n_params > 100);
    for (int i = 0; i < t.n_params; i++) assert_int_equal(t.params[i].group, 0);
    trainer_close(&t);
    /* a malformed row names the file and line; a missing image names the image */
    char p[256];
    snprintf(p, sizeof p, "%s/bad.tsv", d.tmp);
    write_text(p, "img/e0.png\tok\nimg/e1.png\n");
    c.data_tsv = p;
    snprintf(out, sizeof out, "%s/tsv-bad", d.tmp);
    assert_int_not_equal(trainer_open(&t, &c), 0);
    assert_non_null(strstr(sd_last_error(), "bad.tsv:2"));
    trainer_close(&t);
    write_text(p, "img/nothere.png\tcaption\n");
    assert_int_not_equal(trainer_open(&t, &c), 0);
    assert_non_null(strstr(sd_last_error(), "nothere.png"));
    trainer_close(&t);
    assert_false(path_exists(out));   /* nothing written on errors */
    rm_tree(d.tmp);
}

static void test_gradient_fd(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    train_config_t c;
    char out[256];
    pre_config(&c, &d, out, sizeof out, "fd");
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    batch_t b;
    batch_make(&b, &t, 5);
    assert_int_equal(trainer_micro_step(&t, b.x0, b.eps, b.ts, b.ids, NULL, b.rows, 0, 1.0f, NULL), 0);
    const char *names[] = {"unet/conv_in.weight", "unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                           "unet/mid_block.resnets.0.conv1.bias", "unet/up_blocks.1.attentions.0.norm.weight",
                           "unet/conv_out.weight", "te/text_model.embeddings.token_embedding.weight",
                           "te/text_model.encoder.layers.1.mlp.fc1.weight", "te/text_model.final_layer_norm.bias"};
    enum { N_CHECK = sizeof names / sizeof *names };
    train_param_t *ps[N_CHECK];
    float *grads[N_CHECK];
    for (int j = 0; j < N_CHECK; j++) { /* the loss below zeroes the gradients: keep them first */
        ps[j] = find(&t, names[j]);
        grads[j] = malloc(sizeof(float) * ps[j]->n);
        memcpy(grads[j], ps[j]->grad, sizeof(float) * ps[j]->n);
        double g2 = 0;
        for (int k = 0; k < ps[j]->n; k++) g2 += (double)grads[j][k] * grads[j][k];
        assert_true(g2 > 0);   /* every checked array receives a gradient */
    }
    /* the trained values are the trainer's own fp32 copies, behind the model's weights */
    assert_ptr_equal(find(&t, "unet/conv_in.weight")->value, t.p.unet.conv_in.w.data);
    assert_int_equal(t.p.unet.conv_in.w.dtype, ST_F32);
    for (int j = 0; j < N_CHECK; j++) {
        /* the token embedding: only rows of the batch's tokens have gradients; probe those */
        size_t off = 0, n = (size_t)ps[j]->n;
        if (strstr(names[j], "token_embedding")) {
            const int C = t.p.clip.cfg.hidden_size;
            off = (size_t)b.ids[1] * C, n = (size_t)C;
        }
        const double worst = fd_check(names[j], ps[j]->value + off, grads[j] + off, n, 6, batch_loss, &b, 1e-2f, 2e-2);
        print_message("  fd %-72s worst rel. deviation %.2e\n", names[j], worst);
        free(grads[j]);
    }
    batch_free(&b);
    trainer_close(&t);
    rm_tree(d.tmp);
}

static void test_loss_decreases_and_outputs(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    train_config_t c;
    char out[256], p[512];
    pre_config(&c, &d, out, sizeof out, "run");
    c.steps = 30, c.lr = 2e-3f, c.grad_accum = 1, c.save_delta = 1;
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    batch_t b;
    batch_make(&b, &t, 9);
    /* x0 of the fixed batch: the first data images' tensors (pixels: the tiny model has a VAE, so
     * its posterior means), so that training on the data set helps on this batch */
    for (int r = 0; r < b.rows; r++) {
        const float *dist;
        assert_int_equal(train_image_dist(&t.p, &t.inst.img[r], 0, 16, 1, &dist), 0);
        train_sample_latent(&t.p, b.x0 + r * t.latent_n, dist, b.eps + r * t.latent_n, t.latent_n);
        memcpy(b.ids + (size_t)r * t.T, t.prompts.ids + (size_t)t.inst.img[r].prompt * t.T, sizeof(int) * t.T);
    }
    double before = 0, after = 0;
    for (int k = 0; k < 4; k++) {
        for (int r = 0; r < b.rows; r++) b.ts[r] = 50 + 250 * k + r;
        before += batch_loss(&b) / 4;
    }
    assert_int_equal(trainer_run(&t), 0);
    for (int k = 0; k < 4; k++) {
        for (int r = 0; r < b.rows; r++) b.ts[r] = 50 + 250 * k + r;
        after += batch_loss(&b) / 4;
    }
    print_message("fixed-batch loss %.5f -> %.5f after %d steps\n", before, after, c.steps);
    assert_true(after < 0.9 * before);

    /* the folder opens and matches the trained weights (fp32, no EMA) */
    model_t m;
    assert_int_equal(model_open(&m, out, NULL), 0);
    const st_tensor_t *x = component_find(&m.unet, "conv_in.weight");
    assert_non_null(x);
    train_param_t *pw = find(&t, "unet/conv_in.weight");
    float *v = malloc(sizeof(float) * pw->n);
    assert_int_equal(st_read_f32(v, x), 0);
    assert_memory_equal(v, pw->value, sizeof(float) * pw->n);
    free(v);
    x = component_find(&m.text_encoder, "text_model.final_layer_norm.weight");
    pw = find(&t, "te/text_model.final_layer_norm.weight");
    v = malloc(sizeof(float) * pw->n);
    assert_int_equal(st_read_f32(v, x), 0);
    assert_memory_equal(v, pw->value, sizeof(float) * pw->n);
    free(v);

    /* the delta: base + delta = finetuned for every trained tensor, and it covers the UNet */
    model_t base;
    assert_int_equal(model_open(&base, model_dir(), NULL), 0);
    static const char *const files[2] = {"weight_delta.safetensors", "weight_delta_te.safetensors"};
    for (int f = 0; f < 2; f++) {
        const model_component_t *bc = f ? &base.text_encoder : &base.unet, *fc = f ? &m.text_encoder : &m.unet;
        st_file_t df;
        snprintf(p, sizeof p, "%s/%s", out, files[f]);
        assert_int_equal(st_open(&df, p), 0);
        assert_int_equal(df.n_tensors, bc->n_tensors);   /* every tensor of the component is trained */
        double moved = 0;
        for (int i = 0; i < df.n_tensors; i++) {
            const st_tensor_t *dt = &df.tensors[i], *bt = component_find(bc, dt->name), *ft = component_find(fc, dt->name);
            assert_non_null(bt), assert_non_null(ft);
            assert_int_equal(dt->numel, bt->numel);
            assert_int_equal(dt->ndim, bt->ndim);
            float *dv = malloc(sizeof(float) * dt->numel), *bv = malloc(sizeof(float) * dt->numel),
                  *fv = malloc(sizeof(float) * dt->numel);
            st_read_f32(dv, dt), st_read_f32(bv, bt), st_read_f32(fv, ft);
            for (int64_t k = 0; k < dt->numel; k++) {
                const float y = bv[k] + dv[k];
                if (fabsf(y - fv[k]) > 1e-6f * fmaxf(1.0f, fabsf(fv[k]))) {
                    print_error("%s[%lld]: base + delta %g, finetuned %g\n", dt->name, (long long)k, y, fv[k]);
                    fail();
                }
                moved += fabs(dv[k]);
            }
            free(dv), free(bv), free(fv);
        }
        assert_true(moved > 0);
        st_close(&df);
    }
    model_close(&base);
    model_close(&m);
    batch_free(&b);
    trainer_close(&t);

    /* and it generates: finite pixels from the trained model */
    pipeline_t pl;
    assert_int_equal(pipeline_open(&pl, out, NULL), 0);
    int C, h, w;
    pipeline_latent_shape(&pl, 16, 16, &C, &h, &w);
    float *lat = malloc(sizeof(float) * C * h * w);
    txt2img_opts_t o = {.prompt = "an emoji of red circle", .width = 16, .height = 16, .steps = 3, .cfg = 3.0f,
                        .sampler = SAMPLER_DDIM, .seed = 1, .batch = 1};
    assert_int_equal(pipeline_txt2img(&pl, &o, NULL, lat), 0);
    for (int i = 0; i < C * h * w; i++) assert_true(isfinite(lat[i]));
    uint8_t *rgb[1] = {NULL};
    assert_int_equal(pipeline_decode(&pl, lat, 1, h, w, rgb), 0);
    assert_non_null(rgb[0]);
    free(rgb[0]), free(lat);
    pipeline_close(&pl);
    rm_tree(d.tmp);
}

static void test_determinism_and_dtype(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    train_config_t ca, cb;
    char oa[256], ob[256], fa[512], fb[512];
    pre_config(&ca, &d, oa, sizeof oa, "a");
    pre_config(&cb, &d, ob, sizeof ob, "b");
    ca.save_fp16 = cb.save_fp16 = 1;
    ca.ema_decay = cb.ema_decay = 0.5f;
    /* b also writes sample grids (from the EMA weights, swapped in and out): training is unchanged */
    static const char *const prompts[] = {"an emoji of red circle", "an emoji of a new thing"};
    cb.sample_prompts = prompts, cb.n_sample_prompts = 2, cb.sample_every = 2, cb.sample_steps = 2;
    assert_int_equal(train_once(&ca), 0);
    assert_int_equal(train_once(&cb), 0);
    static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                        "vae/diffusion_pytorch_model.safetensors", "model_index.json"};
    for (int i = 0; i < 4; i++) {
        snprintf(fa, sizeof fa, "%s/%s", oa, files[i]);
        snprintf(fb, sizeof fb, "%s/%s", ob, files[i]);
        assert_same_file(fa, fb);
    }
    snprintf(fa, sizeof fa, "%s/loss.csv", oa);
    snprintf(fb, sizeof fb, "%s/loss.csv", ob);
    char *x = csv_without_seconds(fa), *y = csv_without_seconds(fb);
    assert_string_equal(x, y);
    free(x), free(y);
    snprintf(fb, sizeof fb, "%s/samples/step-000004.png", ob);
    assert_true(path_exists(fb));
    model_t m;
    assert_int_equal(model_open(&m, oa, NULL), 0);
    assert_int_equal(component_find(&m.unet, "conv_in.weight")->dtype, ST_F16);
    model_close(&m);
    /* an existing model folder is not overwritten without --force */
    trainer_t t;
    assert_int_not_equal(trainer_open(&t, &ca), 0);
    assert_non_null(strstr(sd_last_error(), "model_index.json"));
    trainer_close(&t);
    rm_tree(d.tmp);
}

static void test_resume_after_kill(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    train_config_t ca, cb;
    char oa[256], ob[256], fa[512], fb[512];
    pre_config(&ca, &d, oa, sizeof oa, "straight");
    pre_config(&cb, &d, ob, sizeof ob, "killed");
    ca.steps = cb.steps = 6;
    ca.ema_decay = cb.ema_decay = 0.8f;
    cb.checkpoint_every = 2;
    assert_int_equal(train_once(&ca), 0);
    fflush(NULL);
    pid_t pid = fork();   /* one thread everywhere in this file: libgomp cannot run a team in a forked child */
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("SVDIFF_TEST_ABORT_AT_STEP", "3", 1);
        train_once(&cb);
        _exit(1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 137);
    snprintf(fb, sizeof fb, "%s/checkpoint.safetensors", ob);
    assert_true(path_exists(fb));
    st_file_t ck;   /* the checkpoint holds the raw weights and the EMA */
    assert_int_equal(st_open(&ck, fb), 0);
    assert_non_null(st_find(&ck, "param/unet/conv_in.weight"));
    assert_non_null(st_find(&ck, "ema/unet/conv_in.weight"));
    st_close(&ck);
    snprintf(fb, sizeof fb, "%s/model_index.json", ob);
    assert_false(path_exists(fb));
    trainer_t t0;   /* the same command without --resume does not start over silently */
    assert_int_not_equal(trainer_open(&t0, &cb), 0);
    assert_non_null(strstr(sd_last_error(), "--resume"));
    trainer_close(&t0);
    cb.resume = 1;
    assert_int_equal(train_once(&cb), 0);
    static const char *const files[] = {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(fa, sizeof fa, "%s/%s", oa, files[i]);
        snprintf(fb, sizeof fb, "%s/%s", ob, files[i]);
        assert_same_file(fa, fb);
    }
    snprintf(fa, sizeof fa, "%s/loss.csv", oa);
    snprintf(fb, sizeof fb, "%s/loss.csv", ob);
    char *x = csv_without_seconds(fa), *y = csv_without_seconds(fb);
    assert_string_equal(x, y);
    free(x), free(y);
    /* a resume with another EMA decay is refused, naming the setting */
    trainer_t t;
    cb.ema_decay = 0.9f;
    assert_int_not_equal(trainer_open(&t, &cb), 0);
    assert_non_null(strstr(sd_last_error(), "ema_decay"));
    trainer_close(&t);
    rm_tree(d.tmp);
}

static void test_ema(void **state) {
    (void)state;
    /* the arithmetic: decay 0 is the raw weights, 0.5 the midpoint, 0.9 one known step */
    float e[3] = {1, 2, -4}, x[3] = {3, 6, 4};
    ema_update(e, x, 3, 0.5f);
    assert_true(e[0] == 2 && e[1] == 4 && e[2] == 0);
    ema_update(e, x, 3, 0.0f);
    assert_memory_equal(e, x, sizeof x);
    float e2[1] = {10}, x2[1] = {0};
    ema_update(e2, x2, 1, 0.9f);
    ema_update(e2, x2, 1, 0.9f);
    assert_true(fabsf(e2[0] - 8.1f) < 1e-5f);

    /* the warm-up cap (1 + k) / (10 + k) of update k, under the configured decay */
    assert_true(fabsf(ema_decay_at(0.999f, 0) - 0.1f) < 1e-7f);
    assert_true(fabsf(ema_decay_at(0.999f, 90) - 0.91f) < 1e-6f);
    assert_true(ema_decay_at(0.999f, 100000) == 0.999f);
    assert_true(ema_decay_at(0.5f, 20) == 0.5f);

    /* in a run: the saved model is the EMA of the per-step weights; with a decay near 0 it is the
     * raw weights; with a decay near 1 the warm-up still moves it away from the initial weights
     * (update 0 keeps only 10% of them), about as far as the raw weights went */
    data_t d;
    make_data(&d);
    train_config_t c;
    char o1[256], o2[256], o3[256];
    for (int k = 0; k < 3; k++) {
        char *o = k == 0 ? o1 : k == 1 ? o2 : o3;
        pre_config(&c, &d, o, 256, k == 0 ? "raw" : k == 1 ? "ema0" : "ema1");
        c.ema_decay = k == 0 ? 0.0f : k == 1 ? 1e-12f : 0.9999999f;
        assert_int_equal(train_once(&c), 0);
    }
    model_t a, b, e1, base;
    assert_int_equal(model_open(&a, o1, NULL), 0);
    assert_int_equal(model_open(&b, o2, NULL), 0);
    assert_int_equal(model_open(&e1, o3, NULL), 0);
    assert_int_equal(model_open(&base, model_dir(), NULL), 0);
    const char *name = "mid_block.attentions.0.proj_in.weight";
    const st_tensor_t *ta = component_find(&a.unet, name), *tb = component_find(&b.unet, name),
                      *te = component_find(&e1.unet, name), *t0 = component_find(&base.unet, name);
    const size_t n = (size_t)ta->numel;
    float *va = malloc(4 * n), *vb = malloc(4 * n), *ve = malloc(4 * n), *v0 = malloc(4 * n);
    st_read_f32(va, ta), st_read_f32(vb, tb), st_read_f32(ve, te), st_read_f32(v0, t0);
    assert_close("EMA with decay ~0 = the raw weights", vb, va, n, 1e-6);
    double moved = 0, ema_moved = 0;
    for (size_t i = 0; i < n; i++) moved += fabs(va[i] - v0[i]), ema_moved += fabs(ve[i] - v0[i]);
    assert_true(moved > 1e-3);   /* the raw weights did move */
    assert_true(ema_moved > 0.5 * moved && ema_moved < 1.5 * moved);
    free(va), free(vb), free(ve), free(v0);
    model_close(&a), model_close(&b), model_close(&e1), model_close(&base);
    rm_tree(d.tmp);
}

/* `svdiff train --mode full` on an instance folder (the DreamBooth baseline): runs through the
 * same trainer, frozen text encoder, prior preservation off. */
static void test_dreambooth_full(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    train_config_t c;
    char out[256], inst[256], p[512];
    snprintf(inst, sizeof inst, "%s/img", d.tmp);
    pre_config(&c, &d, out, sizeof out, "db");
    c.data_tsv = NULL;
    c.instance_dir = inst, c.instance_prompt = "an emoji of sks dot";
    c.train_text_encoder = 0, c.flip = 1, c.center_crop = 0;
    c.save_delta = 1;
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    for (int i = 0; i < t.n_params; i++) assert_non_null(strstr(t.params[i].name, "unet/"));
    assert_int_equal(trainer_run(&t), 0);
    trainer_close(&t);
    snprintf(p, sizeof p, "%s/weight_delta.safetensors", out);
    assert_true(path_exists(p));
    snprintf(p, sizeof p, "%s/weight_delta_te.safetensors", out);
    assert_false(path_exists(p));
    /* the frozen text encoder is copied unchanged */
    model_t m, base;
    assert_int_equal(model_open(&m, out, NULL), 0);
    assert_int_equal(model_open(&base, model_dir(), NULL), 0);
    const st_tensor_t *a = component_find(&m.text_encoder, "text_model.encoder.layers.0.mlp.fc1.weight"),
                      *b = component_find(&base.text_encoder, "text_model.encoder.layers.0.mlp.fc1.weight");
    float *va = malloc(4 * a->numel), *vb = malloc(4 * b->numel);
    st_read_f32(va, a), st_read_f32(vb, b);
    assert_memory_equal(va, vb, 4 * a->numel);
    free(va), free(vb);
    model_close(&m), model_close(&base);
    rm_tree(d.tmp);
}

/* --caption-dropout 1 trains on the empty prompt only, so the captions cannot matter; with 0 they
 * do. A second TSV gives the same images other captions. */
static int same_bytes(const char *a, const char *b) {
    size_t na, nb;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x), free(y);
    return same;
}

static void test_caption_dropout(void **state) {
    (void)state;
    data_t d;
    make_data(&d);
    char other[256], tsv[1024];
    snprintf(other, sizeof other, "%s/other.tsv", d.tmp);
    int len = snprintf(tsv, sizeof tsv, "path\tcaption\tsplit\n");
    for (int i = 0; i < 5; i++)
        len += snprintf(tsv + len, sizeof tsv - len, "img/e%d.png\ta drawing number %d\t%s\n", i, i, i == 3 ? "test" : "train");
    write_text(other, tsv);
    char out[4][256], fa[512], fb[512];
    const char *names[4] = {"drop-a", "drop-b", "keep-a", "keep-b"};
    for (int k = 0; k < 4; k++) {
        train_config_t c;
        pre_config(&c, &d, out[k], sizeof out[k], names[k]);
        if (k & 1) c.data_tsv = other;
        c.caption_dropout = k < 2 ? 1.0f : 0.0f;
        c.steps = 2;
        assert_int_equal(train_once(&c), 0);
    }
    static const char *const unet = "unet/diffusion_pytorch_model.safetensors";
    snprintf(fa, sizeof fa, "%s/%s", out[0], unet);
    snprintf(fb, sizeof fb, "%s/%s", out[1], unet);
    assert_true(same_bytes(fa, fb));
    snprintf(fa, sizeof fa, "%s/%s", out[2], unet);
    snprintf(fb, sizeof fb, "%s/%s", out[3], unet);
    assert_false(same_bytes(fa, fb));
    train_config_t c;
    char bad[256];
    pre_config(&c, &d, bad, sizeof bad, "bad");
    c.caption_dropout = 1.5f;
    trainer_t t;
    assert_int_not_equal(trainer_open(&t, &c), 0);
    assert_non_null(strstr(sd_last_error(), "--caption-dropout"));
    trainer_close(&t);
    rm_tree(d.tmp);
}

int main(int argc, char **argv) {
    sd_set_threads(1);   /* the kill test forks: libgomp cannot run a team in a forked child */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ema),
        cmocka_unit_test(test_tsv),
        cmocka_unit_test(test_gradient_fd),
        cmocka_unit_test(test_loss_decreases_and_outputs),
        cmocka_unit_test(test_determinism_and_dtype),
        cmocka_unit_test(test_resume_after_kill),
        cmocka_unit_test(test_dreambooth_full),
        cmocka_unit_test(test_caption_dropout),
    };
    return RUN_TESTS(argc, argv, "fulltrain", tests, NULL, NULL);
}
