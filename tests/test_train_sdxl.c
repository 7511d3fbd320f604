/* `svdiff train` on SDXL (src/train/, the tiny SDXL fixture tests/fixtures/tiny-sdxl): one training
 * step against PyTorch (the gradient of every shift of the UNet, text_encoder and text_encoder_2,
 * add_embedding and text_projection included: tests/reference/gen_sdxl_golden.py's train.*), a
 * finite-difference check of the step through add_embedding, text_projection and a TE2 layer, the
 * rows' micro-conditioning, a run with prior preservation (class images sampled through the
 * pipeline) that kill + --resume reproduces byte for byte (three shift files with one pair id and
 * the right keys), a Cut-Mix-Unmix run with sample grids, the held-out loss falling after training,
 * and the modes SDXL refuses. */
#define _GNU_SOURCE   /* mkdtemp, setenv */
#include "testutil.h"

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
#include "shifts/shifts.h"
#include "train/dataset.h"
#include "train/eval_loss.h"
#include "train/trainer.h"

static char g_model[4096];

static const char *model_dir(void) {
    snprintf(g_model, sizeof g_model, "%s", source_path("tests/fixtures/tiny-sdxl/diffusers"));
    return g_model;
}

/* ---- files ---- */

typedef struct {
    char tmp[64], inst[128], cls[128], held[128], b[128], out[128];
} paths_t;

/* tmp/inst: three images of different sizes; tmp/held: one held-out image; tmp/b: a second subject. */
static void make_data(paths_t *p) {
    snprintf(p->tmp, sizeof p->tmp, "/tmp/svdiff-trainxl-XXXXXX");
    assert_non_null(mkdtemp(p->tmp));
    char f[300];
    snprintf(p->inst, sizeof p->inst, "%s/inst", p->tmp);
    snprintf(p->cls, sizeof p->cls, "%s/cls", p->tmp);
    snprintf(p->held, sizeof p->held, "%s/held", p->tmp);
    snprintf(p->b, sizeof p->b, "%s/b", p->tmp);
    mkdir(p->inst, 0777), mkdir(p->held, 0777), mkdir(p->b, 0777);
    snprintf(f, sizeof f, "%s/a.png", p->inst), write_test_png(f, 20, 24, 1);
    snprintf(f, sizeof f, "%s/b.png", p->inst), write_test_png(f, 16, 16, 2);
    snprintf(f, sizeof f, "%s/c.png", p->inst), write_test_png(f, 33, 18, 3);
    snprintf(f, sizeof f, "%s/h.png", p->held), write_test_png(f, 24, 20, 4);
    snprintf(f, sizeof f, "%s/1.png", p->b), write_test_png(f, 16, 16, 5);
}

static void xl_config(train_config_t *c, paths_t *p, const char *out) {
    train_config_default(c);
    snprintf(p->out, sizeof p->out, "%s/%s", p->tmp, out);
    c->model = model_dir();
    c->instance_dir = p->inst, c->instance_prompt = "a photo of sks dog";
    c->resolution = 16, c->flip = 1;
    c->batch_size = 1, c->steps = 4;
    c->train_text_encoder = 1;
    c->svd_cache_dir = "";
    c->out_dir = p->out;
    c->quiet = 1;
}

/* ---- golden: one step against PyTorch ---- */

typedef struct {
    trainer_t t;
    st_file_t f;
    float *x0, *eps;
    int ts[2], ids[2 * 77];
} golden_t;

static void read_ids(const st_file_t *f, const char *name, int *out, int n) {
    float *v = golden_get(f, name, n);
    for (int i = 0; i < n; i++) out[i] = (int)v[i];
    free(v);
}

static void golden_setup(golden_t *g) {
    sd_set_threads(1);
    golden_open(&g->f, "sdxl/golden.safetensors");
    const int res = atoi(st_meta(&g->f, "train_res"));
    train_config_t c;
    train_config_default(&c);
    c.model = model_dir();
    c.resolution = res, c.batch_size = 2, c.train_text_encoder = 1;
    c.svd_cache_dir = "";
    c.quiet = 1;
    assert_int_equal(trainer_load_model(&g->t, &c), 0);
    assert_true(g->t.xl);
    assert_int_equal(trainer_prepare(&g->t, 0), 0);
    assert_int_equal(g->t.n_params, atoi(st_meta(&g->f, "train_shifts")));
    const size_t L = g->t.latent_n;
    g->x0 = golden_get(&g->f, "train.x0", 2 * (int64_t)L);
    g->eps = golden_get(&g->f, "train.eps", 2 * (int64_t)L);
    read_ids(&g->f, "train.timesteps", g->ts, 2);
    read_ids(&g->f, "train.ids1", g->ids, 2 * 77);
    read_ids(&g->f, "train.ids2", g->t.ids2, 2 * 77);
    float *tids = golden_get(&g->f, "train.time_ids", 12);
    memcpy(g->t.time_ids, tids, sizeof(float) * 12);
    free(tids);
}

static void golden_teardown(golden_t *g) {
    free(g->x0), free(g->eps);
    st_close(&g->f);
    trainer_close(&g->t);
}

static void test_golden_step(void **state) {
    (void)state;
    golden_t g;
    golden_setup(&g);
    trainer_t *t = &g.t;
    train_losses_t l;
    assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, NULL, 2, 0, 1.0f, &l), 0);
    float *want_loss = golden_get(&g.f, "train.loss", 1);
    const float got_loss = (float)l.loss;
    assert_close("loss", &got_loss, want_loss, 1, 1e-4);
    /* the gradient of every shift array, relative to its own largest entry */
    double worst = 0;
    const char *worst_name = "";
    int n_te = 0, n_te2 = 0, n_add = 0, n_zero = 0;
    for (int i = 0; i < t->n_params; i++) {
        const train_param_t *p = &t->params[i];
        char key[512];
        snprintf(key, sizeof key, "train.grad.%s", p->name);
        float *want = golden_get(&g.f, key, p->n);
        double mx = 0;
        for (int k = 0; k < p->n; k++) mx = fmax(mx, fabs(want[k]));
        if (mx == 0) {   /* off the path (TE1's last layer: SDXL reads its penultimate states) */
            for (int k = 0; k < p->n; k++) assert_true(p->grad[k] == 0.0f);
            n_zero++;
        } else {
            /* fp32 against fp64 through the whole UNet and both encoders (measured: 1.5e-4 at worst) */
            assert_close(key, p->grad, want, (size_t)p->n, 1e-3);
            const double e = rel_error(p->grad, want, (size_t)p->n);
            if (e > worst) worst = e, worst_name = p->name;
        }
        n_te += !strncmp(p->name, "te/", 3), n_te2 += !strncmp(p->name, "te2/", 4);
        n_add += !strncmp(p->name, "unet/add_embedding.", 19);
        free(want);
    }
    assert_int_equal(n_add, 2);
    assert_int_equal(n_te2, 2 + 6 * t->p.clip2.cfg.num_layers + 1);   /* embeddings, linears, text_projection */
    assert_true(n_te > 0 && n_zero > 0 && n_zero < n_te);
    print_message("SDXL golden step: %d shift arrays (%d te, %d te2, %d off the path), loss %.6f, worst gradient "
                  "error %.2e (%s)\n", t->n_params, n_te, n_te2, n_zero, got_loss, worst, worst_name);
    free(want_loss);
    golden_teardown(&g);
}

/* Finite differences of the trainer's own loss: add_embedding, text_projection, a TE2 layer. */
static double fd_loss(void *vctx) {
    golden_t *g = vctx;
    train_losses_t l;
    trainer_micro_step(&g->t, g->x0, g->eps, g->ts, g->ids, NULL, 2, 0, 1.0f, &l);
    unet_grads_zero(&g->t.ug);
    clip_grads_zero(&g->t.cg);
    clip_grads_zero(&g->t.cg2);
    return l.loss;
}

static void test_step_finite_differences(void **state) {
    (void)state;
    golden_t g;
    golden_setup(&g);
    trainer_t *t = &g.t;
    trng_t r;   /* away from zero, so that the check is not at a special point */
    trng_seed(&r, 78);
    for (int i = 0; i < t->n_params; i++)
        for (int k = 0; k < t->params[i].n; k++) t->params[i].value[k] = 0.02f * trng_normal(&r);
    assert_int_equal(trainer_micro_step(t, g.x0, g.eps, g.ts, g.ids, NULL, 2, 0, 1.0f, NULL), 0);
    const char *names[] = {"unet/add_embedding.linear_1", "unet/add_embedding.linear_2",
                           "te2/text_projection.weight", "te2/text_model.encoder.layers.1.self_attn.q_proj.weight",
                           "te2/text_model.encoder.layers.2.mlp.fc2.weight",
                           "te/text_model.encoder.layers.0.mlp.fc1.weight"};
    enum { N_CHECK = sizeof names / sizeof *names };
    train_param_t *ps[N_CHECK];
    float *grads[N_CHECK];
    for (int j = 0; j < N_CHECK; j++) {   /* the loss below zeroes the gradients: keep them first */
        ps[j] = NULL;
        for (int i = 0; i < t->n_params; i++)
            if (!strcmp(t->params[i].name, names[j])) ps[j] = &t->params[i];
        if (!ps[j]) fail_msg("no trained array %s", names[j]);
        grads[j] = malloc(sizeof(float) * ps[j]->n);
        memcpy(grads[j], ps[j]->grad, sizeof(float) * ps[j]->n);
        double mx = 0;
        for (int k = 0; k < ps[j]->n; k++) mx = fmax(mx, fabs(grads[j][k]));
        assert_true(mx > 0);   /* on the path: the check is not vacuous */
    }
    for (int j = 0; j < N_CHECK; j++) {
        fd_check(names[j], ps[j]->value, grads[j], (size_t)ps[j]->n, 6, fd_loss, &g, 1e-2f, 2e-2);
        free(grads[j]);
    }
    golden_teardown(&g);
}

/* ---- the rows' micro-conditioning ---- */

static void test_time_ids(void **state) {
    (void)state;
    float ti[6];
    train_image_t im = {.orig_w = 20, .orig_h = 24, .crop_x = 0.5f, .crop_y = 0.5f};
    /* shorter side 20 -> 16: resized 16 x 19 (w x h), centre crop top (19 - 16) / 2 = 1 */
    train_image_time_ids(ti, &im, 0, 16, 1);
    const float a[6] = {24, 20, 1, 0, 16, 16};
    assert_memory_equal(ti, a, sizeof a);
    /* a random crop at the bottom of the slack */
    im.crop_y = 1.0f;
    train_image_time_ids(ti, &im, 0, 16, 0);
    const float b[6] = {24, 20, 3, 0, 16, 16};
    assert_memory_equal(ti, b, sizeof b);
    /* 33 x 18 -> 29 x 16: centre crop left 6; mirrored, the crop is read in the mirrored image */
    train_image_t wide = {.orig_w = 33, .orig_h = 18, .crop_x = 0.5f, .crop_y = 0.5f};
    train_image_time_ids(ti, &wide, 0, 16, 1);
    const float c[6] = {18, 33, 0, 6, 16, 16};
    assert_memory_equal(ti, c, sizeof c);
    train_image_time_ids(ti, &wide, 1, 16, 1);
    const float d[6] = {18, 33, 0, 7, 16, 16};
    assert_memory_equal(ti, d, sizeof d);
    wide.crop_x = 0.0f;   /* the left edge, mirrored: the right edge of the mirrored image */
    train_image_time_ids(ti, &wide, 1, 16, 0);
    assert_true(ti[3] == 13.0f);
    train_composite_time_ids(ti, 16);
    const float e[6] = {16, 16, 0, 0, 16, 16};
    assert_memory_equal(ti, e, sizeof e);
    /* the crop the time ids report is the crop the image gets */
    int rw, rh, x0, y0;
    image_crop_box(33, 18, 16, 1, 0.5f, 0.5f, &rw, &rh, &x0, &y0);
    assert_true(rw == 29 && rh == 16 && x0 == 6 && y0 == 0);
}

/* The batch's time ids come from each row's image, and a composite's are those of a res image. */
static void test_batch_time_ids(void **state) {
    (void)state;
    sd_set_threads(1);
    paths_t p;
    make_data(&p);
    train_config_t c;
    xl_config(&c, &p, "batch");
    c.flip = 0, c.center_crop = 1, c.batch_size = 3;
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_int_equal(trainer_next_batch(&t), 0);
    for (int r = 0; r < 3; r++) {
        const float *ti = t.time_ids + 6 * r;
        const int k = t.order.perm[r];   /* the epoch order's image of row r */
        float want[6];
        train_image_time_ids(want, &t.inst.img[k], 0, 16, 1);
        assert_memory_equal(ti, want, sizeof want);
        assert_true(ti[4] == 16 && ti[5] == 16);
        assert_true(ti[0] == t.inst.img[k].orig_h && ti[1] == t.inst.img[k].orig_w);
    }
    /* the pooled rows are the frozen TE2's embedding of the prompt */
    const int P = t.p.pooled_dim;
    float *want = malloc(sizeof(float) * (size_t)P), *ctx = malloc(sizeof(float) * (size_t)t.T * t.p.ctx_dim);
    const char *prompt = "a photo of sks dog";
    trainer_close(&t);
    c.train_text_encoder = 0;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_int_equal(trainer_next_batch(&t), 0);
    assert_int_equal(pipeline_encode_prompts_cond(&t.p, &prompt, 1, ctx, want), 0);
    for (int r = 0; r < 3; r++) assert_memory_equal(t.pooled + (size_t)r * P, want, sizeof(float) * P);
    free(want), free(ctx);
    trainer_close(&t);
    rm_tree(p.tmp);
}

/* ---- runs ---- */

/* The keys of a shift file: every one must satisfy `ok`, and `must` must be among them. */
static void check_keys(const char *file, const char *prefix, int want_prefix, const char *must) {
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    int found = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const int has = !strncmp(f.tensors[i].name, prefix, strlen(prefix));
        if (has != want_prefix) fail_msg("%s: key %s", file, f.tensors[i].name);
        found |= !strcmp(f.tensors[i].name, must);
    }
    if (!found) fail_msg("%s has no %s", file, must);
    st_close(&f);
}

static void test_resume_and_files(void **state) {
    (void)state;
    sd_set_threads(1);   /* a forked child cannot run an OpenMP team its parent used */
    paths_t p;
    make_data(&p);
    paths_t pa = p, pb = p;
    train_config_t ca, cb;
    xl_config(&ca, &pa, "straight");
    xl_config(&cb, &pb, "killed");
    /* prior preservation: two class images sampled through the SDXL pipeline */
    ca.class_dir = cb.class_dir = p.cls, ca.class_prompt = cb.class_prompt = "a photo of a dog";
    ca.num_class_images = cb.num_class_images = 2, ca.class_steps = cb.class_steps = 2;
    ca.steps = cb.steps = 6, ca.threads = cb.threads = 1, ca.grad_accum = cb.grad_accum = 2;
    cb.checkpoint_every = 2;
    assert_int_equal(train_once(&ca), 0);
    char f[300];
    snprintf(f, sizeof f, "%s/class-00001.png", p.cls);
    assert_true(path_exists(f));
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        setenv("SVDIFF_TEST_ABORT_AT_STEP", "3", 1);
        train_once(&cb);
        _exit(1);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 137);
    cb.resume = 1;
    assert_int_equal(train_once(&cb), 0);
    static const char *const files[3] = {"spectral_shifts.safetensors", "spectral_shifts_te.safetensors",
                                         "spectral_shifts_te2.safetensors"};
    char fa[3][300], fb[300];
    for (int k = 0; k < 3; k++) {
        snprintf(fa[k], sizeof fa[k], "%s/%s", pa.out, files[k]);
        snprintf(fb, sizeof fb, "%s/%s", pb.out, files[k]);
        assert_same_file(fa[k], fb);
    }
    /* the keys: UNet module paths (add_embedding included), the first encoder's paths, and the
     * second's behind text_encoder_2. (text_projection included) */
    check_keys(fa[0], "text_", 0, "add_embedding.linear_1.delta");
    check_keys(fa[1], "text_model.", 1, "text_model.encoder.layers.0.self_attn.q_proj.delta");
    check_keys(fa[2], "text_encoder_2.text_", 1, "text_encoder_2.text_projection.delta");
    /* one group id over the three files */
    st_file_t s0, s2;
    assert_int_equal(st_open(&s0, fa[0]), 0);
    assert_int_equal(st_open(&s2, fa[2]), 0);
    assert_non_null(st_meta(&s0, ST_PAIR_ID_KEY));
    assert_string_equal(st_meta(&s0, ST_PAIR_ID_KEY), st_meta(&s2, ST_PAIR_ID_KEY));
    st_close(&s0), st_close(&s2);
    char files3[SHIFT_N_COMPONENTS][SHIFT_PATH_CAP];
    assert_int_equal(shift_files_resolve(pa.out, files3), 0);
    assert_int_equal(shift_files_check_group(files3, 0), 0);
    /* the files load and apply to the SDXL pipeline (every entry routed to its model) */
    pipeline_t pl;
    assert_int_equal(pipeline_open(&pl, model_dir(), NULL), 0);
    const pipeline_shift_t sh = {pa.out, 1.0f};
    assert_int_equal(pipeline_apply_shifts(&pl, &sh, 1, 0, NULL), 0);
    assert_true(pl.clip2.text_projection.w.kind == WEIGHT_SPECTRAL);
    assert_true(pl.clip.layers[0].q.w.kind == WEIGHT_SPECTRAL);
    pipeline_close(&pl);
    /* SD 1.x refuses the text_encoder_2 entries by name */
    assert_int_equal(pipeline_open(&pl, source_path("tests/fixtures/tiny-sd/diffusers"), NULL), 0);
    const pipeline_shift_t one = {fa[2], 1.0f};
    assert_int_not_equal(pipeline_apply_shifts(&pl, &one, 1, 1, NULL), 0);
    assert_non_null(strstr(sd_last_error(), "text_encoder_2"));
    pipeline_close(&pl);
    rm_tree(p.tmp);
}

static void test_cutmix_and_modes(void **state) {
    (void)state;
    sd_set_threads(1);
    paths_t p;
    make_data(&p);
    train_config_t c;
    xl_config(&c, &p, "cutmix");
    char sa[200], sb[200];
    snprintf(sa, sizeof sa, "sks dog=%s", p.inst);
    snprintf(sb, sizeof sb, "hta cat=%s", p.b);
    const char *subj[2] = {sa, sb};
    c.instance_dir = NULL, c.instance_prompt = NULL;
    c.n_subjects = 2, c.subjects = subj;
    c.cutmix_prob = 1.0f, c.unmix_weight = 1.0f, c.batch_size = 2, c.steps = 2;
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), 0);
    assert_int_equal(trainer_next_batch(&t), 0);
    for (int r = 0; r < 2; r++) {   /* composites: a res x res image of their own */
        const float want[6] = {16, 16, 0, 0, 16, 16};
        assert_memory_equal(t.time_ids + 6 * r, want, sizeof want);
    }
    trainer_close(&t);
    /* with a sample grid of the current shifts (the SDXL pipeline on the training form) */
    const char *samples[1] = {"a photo of sks dog and hta cat"};
    c.sample_prompts = samples, c.n_sample_prompts = 1, c.sample_every = 1, c.sample_steps = 2;
    assert_int_equal(train_once(&c), 0);
    char f[300];
    snprintf(f, sizeof f, "%s/spectral_shifts_te2.safetensors", p.out);
    assert_true(path_exists(f));
    snprintf(f, sizeof f, "%s/samples/step-000001.png", p.out);
    assert_true(path_exists(f));
    snprintf(f, sizeof f, "%s/samples/step-000002.png", p.out);
    assert_true(path_exists(f));
    /* full and LoRA training are refused on SDXL, before anything is written */
    for (int mode = TRAIN_MODE_FULL; mode <= TRAIN_MODE_LORA; mode++) {
        xl_config(&c, &p, "refused");
        c.mode = (train_mode_t)mode;
        assert_int_equal(trainer_open(&t, &c), SD_ERR_ARG);
        assert_non_null(strstr(sd_last_error(), "SDXL models train spectral shifts only"));
        trainer_close(&t);
        assert_false(path_exists(p.out));
    }
    rm_tree(p.tmp);
}

/* Training on the subject lowers the held-out denoising loss (svdiff eval's measure). */
static void test_heldout_loss_falls(void **state) {
    (void)state;
    sd_set_threads(1);
    paths_t p;
    make_data(&p);
    train_config_t c;
    xl_config(&c, &p, "fit");
    c.steps = 40, c.lr = 1e-2f, c.train_text_encoder = 0, c.flip = 0;
    assert_int_equal(train_once(&c), 0);
    double loss[2], per_t[3];
    const int ts[3] = {100, 500, 900};
    const eval_opts_t o = {ts, 3, 2, 7, 16};
    for (int k = 0; k < 2; k++) {
        pipeline_t pl;
        assert_int_equal(pipeline_open(&pl, model_dir(), NULL), 0);
        const pipeline_shift_t sh = {p.out, 1.0f};
        if (k) assert_int_equal(pipeline_apply_shifts(&pl, &sh, 1, 0, NULL), 0);
        prompt_table_t pt = {0};
        image_set_t held;
        assert_int_equal(image_set_scan(&held, p.held, "--images", 0, 0, "a photo of sks dog", &pt, pl.tok), 0);
        assert_int_equal(eval_denoising_loss(&pl, &held, &pt, &o, per_t, &loss[k]), 0);
        image_set_free(&held), prompt_table_free(&pt);
        pipeline_close(&pl);
    }
    print_message("held-out loss: base %.6f, trained %.6f\n", loss[0], loss[1]);
    assert_true(loss[1] < 0.95 * loss[0]);
    rm_tree(p.tmp);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_step),
        cmocka_unit_test(test_step_finite_differences),
        cmocka_unit_test(test_time_ids),
        cmocka_unit_test(test_batch_time_ids),
        cmocka_unit_test(test_resume_and_files),
        cmocka_unit_test(test_cutmix_and_modes),
        cmocka_unit_test(test_heldout_loss_falls),
    };
    return RUN_TESTS(argc, argv, "train_sdxl", tests, NULL, NULL);
}
