/* LoRA adapters and weight deltas (issue 10): finite-difference checks of the LoRA linear and conv
 * backward, PyTorch goldens (tests/reference/gen_lora_golden.py), `svdiff train --mode lora` saved
 * and merged back by `generate --lora` (diffusers and kohya naming), --resume bit-identical, full
 * fine-tune deltas applied with `--delta` (scale 1 = the fine-tuned model, 0 = the base, with
 * --shifts), and the refusals (rank 0, files of another model, bad shapes or names). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "pipeline/adapters.h"
#include "train/lora_train.h"
#include "train/trainer.h"
#include "weights/lora.h"
#include "testutil.h"

/* ------------------------------------------------------------------------------------------
 * The adapter operators
 * ---------------------------------------------------------------------------------------- */

typedef struct {
    int conv;
    lora_t l;
    float *W, *bias, *x, *probe, *out;
    int N;               /* linear rows */
    conv2d_shape_t s;
    size_t n_in, n_out;
} op_ctx_t;

static void op_forward(op_ctx_t *c) {
    if (c->conv) lora_conv2d_forward(c->out, c->x, c->W, &c->l, c->bias, &c->s);
    else lora_linear_forward(c->out, c->x, c->W, &c->l, c->bias, c->N);
}

static double op_loss(void *vctx) {
    op_ctx_t *c = vctx;
    op_forward(c);
    return dot_loss(c->out, c->probe, c->n_out);
}

static void op_setup(op_ctx_t *c, trng_t *r, int conv, int stride) {
    memset(c, 0, sizeof *c);
    c->conv = conv;
    int rows, cols;
    if (conv) {
        c->s = (conv2d_shape_t){.B = 2, .IC = 3, .H = 6, .W = 5, .OC = 4, .KH = 3, .KW = 3, .stride = stride,
                                .pad = {1, 1, 1, 1}};
        rows = 4, cols = 3 * 9;
        c->n_in = (size_t)2 * 3 * 6 * 5;
        c->n_out = (size_t)2 * 4 * conv2d_out_h(&c->s) * conv2d_out_w(&c->s);
    } else {
        c->N = 5, rows = 4, cols = 7;
        c->n_in = (size_t)5 * 7, c->n_out = (size_t)5 * 4;
    }
    lora_alloc(&c->l, rows, cols, 3, 1.5f);
    fill_normal(r, c->l.AB, lora_numel(&c->l), 0.5f);   /* B != 0: both factors get gradients */
    c->W = alloc_normal(r, (size_t)rows * cols, 0.5f);
    c->bias = alloc_normal(r, rows, 0.5f);
    c->x = alloc_normal(r, c->n_in, 1.0f);
    c->probe = alloc_normal(r, c->n_out, 1.0f);
    c->out = alloc_zeros(c->n_out);
}

static void op_free(op_ctx_t *c) {
    lora_free(&c->l);
    free(c->W), free(c->bias), free(c->x), free(c->probe), free(c->out);
}

static void check_op_fd(int conv, int stride) {
    trng_t r;
    trng_seed(&r, 11 + conv + stride);
    op_ctx_t c;
    op_setup(&c, &r, conv, stride);
    float *dAB = alloc_zeros(lora_numel(&c.l)), *dx = alloc_zeros(c.n_in), *db = alloc_zeros(c.l.rows);
    op_forward(&c);
    if (conv) lora_conv2d_backward(dx, dAB, db, c.probe, c.x, c.W, &c.l, &c.s);
    else lora_linear_backward(dx, dAB, db, c.probe, c.x, c.W, &c.l, c.N);
    fd_check(conv ? "conv dA,dB" : "linear dA,dB", c.l.AB, dAB, lora_numel(&c.l), 64, op_loss, &c, 1e-2f, 1e-3);
    fd_check(conv ? "conv dx" : "linear dx", c.x, dx, c.n_in, 48, op_loss, &c, 1e-2f, 1e-3);
    fd_check(conv ? "conv dbias" : "linear dbias", c.bias, db, c.l.rows, 8, op_loss, &c, 1e-2f, 1e-3);
    /* the base is frozen and the adapter adds: no base gives the adapter's own gradient */
    float *dAB2 = alloc_zeros(lora_numel(&c.l));
    if (conv) lora_conv2d_backward(NULL, dAB2, NULL, c.probe, c.x, NULL, &c.l, &c.s);
    else lora_linear_backward(NULL, dAB2, NULL, c.probe, c.x, NULL, &c.l, c.N);
    assert_close("dAB without base", dAB2, dAB, lora_numel(&c.l), 1e-6);
    free(dAB), free(dAB2), free(dx), free(db);
    op_free(&c);
}

static void test_linear_finite_differences(void **state) {
    (void)state;
    check_op_fd(0, 1);
}

static void test_conv_finite_differences(void **state) {
    (void)state;
    check_op_fd(1, 1);
    check_op_fd(1, 2);
}

static void golden_case(const st_file_t *f, const char *pre, int conv) {
    char k[64];
#define G(name, n) (snprintf(k, sizeof k, "%s.%s", pre, name), golden_get(f, k, n))
    const int rows = conv ? 5 : 4, cols = conv ? 27 : 6, R = conv ? 2 : 3;
    const float alpha = conv ? 1.0f : 6.0f;
    lora_t l;
    lora_alloc(&l, rows, cols, R, alpha);
    float *A = G("A", (int64_t)R * cols), *B = G("B", (int64_t)rows * R);
    memcpy(l.A, A, sizeof(float) * R * cols), memcpy(l.B, B, sizeof(float) * rows * R);
    float *W = G("W", (int64_t)rows * cols), *b = G("b", rows), *probe = G("probe", -1), *want = G("out", -1);
    float *dA = G("dA", (int64_t)R * cols), *dB = G("dB", (int64_t)rows * R), *merged = G("merged", (int64_t)rows * cols);
    snprintf(k, sizeof k, "%s.x", pre);
    const st_tensor_t *xt = st_find(f, k);
    float *x = G("x", -1), *dx_want = G("dx", xt->numel);
    snprintf(k, sizeof k, "%s.out", pre);
    const size_t n_out = (size_t)st_find(f, k)->numel, n_in = (size_t)xt->numel;
    float *out = alloc_zeros(n_out), *dx = alloc_zeros(n_in), *dAB = alloc_zeros(lora_numel(&l));
    conv2d_shape_t s = {.B = 2, .IC = 3, .H = 7, .W = 6, .OC = 5, .KH = 3, .KW = 3, .stride = 2, .pad = {1, 1, 1, 1}};
    if (conv) {
        lora_conv2d_forward(out, x, W, &l, b, &s);
        lora_conv2d_backward(dx, dAB, NULL, probe, x, W, &l, &s);
    } else {
        lora_linear_forward(out, x, W, &l, b, 5);
        lora_linear_backward(dx, dAB, NULL, probe, x, W, &l, 5);
    }
    assert_close(conv ? "conv out" : "linear out", out, want, n_out, 1e-4);
    assert_close(conv ? "conv dA" : "linear dA", dAB, dA, (size_t)R * cols, 1e-4);
    assert_close(conv ? "conv dB" : "linear dB", dAB + (size_t)R * cols, dB, (size_t)rows * R, 1e-4);
    assert_close(conv ? "conv dx" : "linear dx", dx, dx_want, n_in, 1e-4);
    lora_merge(W, &l, 1.0f);
    assert_close(conv ? "conv merged" : "linear merged", W, merged, (size_t)rows * cols, 1e-5);
#undef G
    free(A), free(B), free(W), free(b), free(probe), free(want), free(dA), free(dB), free(merged), free(x);
    free(dx_want), free(out), free(dx), free(dAB);
    lora_free(&l);
}

static void test_golden_pytorch(void **state) {
    (void)state;
    st_file_t f;
    golden_open(&f, "lora/golden.safetensors");
    golden_case(&f, "linear", 0);
    golden_case(&f, "conv", 1);
    /* peft's initialisation: A within kaiming_uniform(a = sqrt(5))'s bound and filling it, B = 0 */
    float *bound = golden_get(&f, "conv.kaiming_bound", 1);
    lora_t l;
    lora_alloc(&l, 5, 27, 16, 16.0f);
    lora_init_peft(&l, 3);
    float amax = 0;
    for (int i = 0; i < 16 * 27; i++) amax = fmaxf(amax, fabsf(l.A[i]));
    assert_true(amax <= bound[0] && amax > 0.9f * bound[0]);
    for (int i = 0; i < 5 * 16; i++) assert_true(l.B[i] == 0.0f);
    lora_free(&l);
    free(bound);
    st_close(&f);
}

/* ------------------------------------------------------------------------------------------
 * Training and generation on the tiny model
 * ---------------------------------------------------------------------------------------- */

static char g_model[4096], g_images[4096];

static void base_config(train_config_t *c, const char *out, train_mode_t mode) {
    snprintf(g_model, sizeof g_model, "%s", source_path("tests/fixtures/tiny-sd/diffusers"));
    snprintf(g_images, sizeof g_images, "%s", source_path("tests/fixtures/train/images"));
    train_config_default(c);
    c->model = g_model;
    c->instance_dir = g_images, c->instance_prompt = "a photo of sks dog";
    c->resolution = 16, c->flip = 1;
    c->steps = 2;
    c->train_text_encoder = 1;
    c->svd_cache_dir = "";
    c->out_dir = out;
    c->quiet = 1, c->threads = 1;
    c->mode = mode;
    c->lora_rank = 2, c->lora_alpha = 4;
    c->lr = mode == TRAIN_MODE_FULL ? 1e-3f : 2e-2f;   /* large: the result must differ from the base */
}

static void make_tmp(char *dir, size_t cap) {
    snprintf(dir, cap, "/tmp/svdiff-lora-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

/* 16 x 16 latents of 2 DDIM steps, no guidance, seed 5. */
static void latents_of(pipeline_t *p, float *lat) {
    txt2img_opts_t o = {.prompt = "a photo of sks dog", .width = 16, .height = 16, .steps = 2, .cfg = 1.0f,
                        .sampler = SAMPLER_DDIM, .seed = 5, .batch = 1};
    assert_int_equal(pipeline_txt2img(p, &o, NULL, lat), 0);
}

static size_t latent_n(pipeline_t *p) {
    int C, h, w;
    pipeline_latent_shape(p, 16, 16, &C, &h, &w);
    return (size_t)C * h * w;
}

static void open_model(pipeline_t *p, const char *path) {
    if (pipeline_open(p, path, NULL)) fail_msg("open %s: %s", path, sd_last_error());
}

static void test_delta_equals_finetuned(void **state) {
    (void)state;
    sd_set_threads(1);
    char tmp[64], out[128];
    make_tmp(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/full", tmp);
    train_config_t c;
    base_config(&c, out, TRAIN_MODE_FULL);
    c.save_delta = 1;
    assert_int_equal(train_once(&c), 0);

    pipeline_t ft, base;
    open_model(&ft, out);
    const size_t n = latent_n(&ft);
    float *l_ft = alloc_zeros(n), *l_base = alloc_zeros(n), *l1 = alloc_zeros(n), *l0 = alloc_zeros(n);
    latents_of(&ft, l_ft);
    pipeline_close(&ft);
    open_model(&base, g_model);
    latents_of(&base, l_base);
    pipeline_close(&base);
    assert_true(rel_error(l_ft, l_base, n) > 1e-2);   /* the fine-tune changed the model */

    pipeline_shift_t d1 = {out, 1.0f}, d0 = {out, 0.0f};
    open_model(&base, g_model);
    assert_int_equal(pipeline_apply_deltas(&base, &d1, 1, 0), 0);
    latents_of(&base, l1);
    pipeline_close(&base);
    assert_close("base + delta = fine-tuned", l1, l_ft, n, 1e-4);

    open_model(&base, g_model);
    assert_int_equal(pipeline_apply_deltas(&base, &d0, 1, 0), 0);
    latents_of(&base, l0);
    pipeline_close(&base);
    assert_memory_equal(l0, l_base, n * sizeof(float));

    /* with spectral shifts: all-zero shifts + delta = delta alone */
    char zero[4096];
    snprintf(zero, sizeof zero, "%s", source_path("tests/fixtures/shifts/zero"));
    pipeline_shift_t sz = {zero, 1.0f};
    open_model(&base, g_model);
    assert_int_equal(pipeline_apply_shifts(&base, &sz, 1, 0, NULL), 0);
    assert_int_equal(pipeline_apply_deltas(&base, &d1, 1, 0), 0);
    latents_of(&base, l0);
    pipeline_close(&base);
    assert_close("zero shifts + delta", l0, l_ft, n, 1e-4);

    /* a delta of another model: a foreign name, a wrong shape, another base hash */
    char bad[256];
    snprintf(bad, sizeof bad, "%s/bad.safetensors", tmp);
    float zeros[64] = {0};
    int64_t shape[2] = {4, 4};
    st_writer_t *w = st_writer_new();
    st_writer_add(w, "conv_in.weight", ST_F32, 2, shape, zeros);
    assert_int_equal(st_writer_save(w, bad), 0);
    st_writer_free(w);
    pipeline_shift_t db = {bad, 1.0f};
    open_model(&base, g_model);
    assert_int_equal(pipeline_apply_deltas(&base, &db, 1, 0), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "'conv_in.weight' is [4, 4] but the model's is"));
    pipeline_close(&base);
    w = st_writer_new();
    st_writer_add(w, "down_blocks.9.conv.weight", ST_F32, 2, shape, zeros);
    assert_int_equal(st_writer_save(w, bad), 0);
    st_writer_free(w);
    open_model(&base, g_model);
    assert_int_equal(pipeline_apply_deltas(&base, &db, 1, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "'down_blocks.9.conv.weight' is not a parameter of this model's UNet"));
    pipeline_close(&base);
    w = st_writer_new();
    st_writer_add(w, "conv_in.weight", ST_F32, 2, shape, zeros);
    st_writer_meta(w, "base_model_hash", "0123456789abcdef");
    assert_int_equal(st_writer_save(w, bad), 0);
    st_writer_free(w);
    open_model(&base, g_model);
    assert_int_equal(pipeline_apply_deltas(&base, &db, 1, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "made for base model 0123456789abcdef"));
    pipeline_close(&base);

    free(l_ft), free(l_base), free(l1), free(l0);
    rm_tree(tmp);
}

/* Rewrites a diffusers-named LoRA file in kohya naming (lora_unet_<module with _>.lora_down /
 * lora_up / alpha). */
static void to_kohya(const char *from, const char *to, float alpha) {
    st_file_t f;
    assert_int_equal(st_open(&f, from), 0);
    st_writer_t *w = st_writer_new();
    char (*names)[400] = calloc((size_t)f.n_tensors * 2, sizeof *names);
    float *alpha_buf = alloc_zeros(1);
    alpha_buf[0] = alpha;
    int k = 0;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *x = &f.tensors[i];
        const int te = !strncmp(x->name, "text_encoder.", 13);
        const char *body = x->name + (te ? 13 : 5);
        const int is_a = strstr(body, ".lora_A.weight") != NULL;
        char mod[300];
        snprintf(mod, sizeof mod, "%.*s", (int)(strlen(body) - strlen(".lora_A.weight")), body);
        for (char *p = mod; *p; p++)
            if (*p == '.') *p = '_';
        snprintf(names[k], sizeof names[k], "lora_%s_%s.%s", te ? "te" : "unet", mod, is_a ? "lora_down.weight" : "lora_up.weight");
        assert_int_equal(st_writer_add(w, names[k], x->dtype, x->ndim, x->shape, x->data), 0);
        k++;
        if (is_a) {
            snprintf(names[k], sizeof names[k], "lora_%s_%s.alpha", te ? "te" : "unet", mod);
            assert_int_equal(st_writer_add(w, names[k], ST_F32, 0, NULL, alpha_buf), 0);
            k++;
        }
    }
    st_writer_meta(w, "base_model_hash", st_meta(&f, "base_model_hash"));
    assert_int_equal(st_writer_save(w, to), 0);
    st_writer_free(w);
    free(names), free(alpha_buf);
    st_close(&f);
}

/* Every UNet and text-encoder weight of two models compared (baked / effective fp32). */
static void compare_weights(pipeline_t *a, pipeline_t *b, double tol) {
    double worst = 0;
    for (int i = 0; i < a->unet.n_layers; i++) {
        weight_t *wa = &a->unet.layers[i]->w, *wb = &b->unet.layers[i]->w;
        if (!wa->baked) weight_bake(wa);
        if (!wb->baked) weight_bake(wb);
        double e = rel_error(wa->baked, wb->baked, (size_t)wa->rows * wa->cols);
        worst = e > worst ? e : worst;
    }
    for (int l = 0; l < a->clip.cfg.num_layers; l++) {
        weight_t *wa = &a->clip.layers[l].fc1.w, *wb = &b->clip.layers[l].fc1.w;
        if (!wa->baked) weight_bake(wa);
        if (!wb->baked) weight_bake(wb);
        double e = rel_error(wa->baked, wb->baked, (size_t)wa->rows * wa->cols);
        worst = e > worst ? e : worst;
    }
    if (worst > tol) fail_msg("merged weights differ: %g > %g", worst, tol);
}

static void test_lora_train_and_merge(void **state) {
    (void)state;
    sd_set_threads(1);
    char tmp[64], out[128], file[256], kohya[256];
    make_tmp(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/lora", tmp);
    train_config_t c;
    base_config(&c, out, TRAIN_MODE_LORA);
    trainer_t t;
    if (trainer_open(&t, &c) || trainer_run(&t)) fail_msg("train: %s", sd_last_error());
    /* the trainer's own forward through the factors */
    const size_t n = latent_n(&t.p);
    float *l_tr = alloc_zeros(n), *l_gen = alloc_zeros(n), *l_base = alloc_zeros(n), *l_k = alloc_zeros(n);
    latents_of(&t.p, l_tr);

    /* the file: diffusers keys, 4-D conv factors, metadata */
    snprintf(file, sizeof file, "%s/%s", out, LORA_FILE_NAME);
    st_file_t f;
    assert_int_equal(st_open(&f, file), 0);
    const st_tensor_t *a = st_find(&f, "unet.conv_in.lora_A.weight"), *b = st_find(&f, "unet.conv_in.lora_B.weight");
    assert_non_null(a), assert_non_null(b);
    assert_int_equal(a->ndim, 4), assert_int_equal(a->shape[0], 2), assert_int_equal(a->shape[2], 3);
    assert_int_equal(b->ndim, 4), assert_int_equal(b->shape[1], 2), assert_int_equal(b->shape[3], 1);
    assert_non_null(st_find(&f, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"));
    assert_string_equal(st_meta(&f, "lora_rank"), "2");
    assert_string_equal(st_meta(&f, "lora_alpha"), "4");
    assert_string_equal(st_meta(&f, "base_model_hash"), t.model_hash);
    st_close(&f);

    pipeline_t p;
    open_model(&p, g_model);
    latents_of(&p, l_base);
    pipeline_shift_t lo = {out, 1.0f};
    assert_int_equal(pipeline_apply_loras(&p, &lo, 1, 0), 0);
    latents_of(&p, l_gen);
    assert_true(rel_error(l_tr, l_base, n) > 1e-2);   /* the adapters changed the model */
    assert_close("generate --lora = trainer forward", l_gen, l_tr, n, 1e-4);
    compare_weights(&p, &t.p, 1e-6);   /* the trainer's W + s B A baked (t.p is not used after) */
    pipeline_close(&p);

    /* kohya naming of the same adapters (alpha per module) */
    snprintf(kohya, sizeof kohya, "%s/kohya.safetensors", tmp);
    to_kohya(file, kohya, 4.0f);
    pipeline_shift_t lk = {kohya, 1.0f};
    open_model(&p, g_model);
    assert_int_equal(pipeline_apply_loras(&p, &lk, 1, 0), 0);
    latents_of(&p, l_k);
    assert_memory_equal(l_k, l_gen, n * sizeof(float));
    pipeline_close(&p);
    trainer_close(&t);

    /* file sizes on the tiny model: LoRA rank 2 vs spectral shifts */
    struct stat st;
    assert_int_equal(stat(file, &st), 0);
    long lora_bytes = (long)st.st_size, shift_bytes = 0;
    char sh[4096];
    snprintf(sh, sizeof sh, "%s", source_path("tests/fixtures/shifts/zero/spectral_shifts.safetensors"));
    if (!stat(sh, &st)) shift_bytes += (long)st.st_size;
    snprintf(sh, sizeof sh, "%s", source_path("tests/fixtures/shifts/zero/spectral_shifts_te.safetensors"));
    if (!stat(sh, &st)) shift_bytes += (long)st.st_size;
    print_message("tiny model: LoRA rank 2 (UNet + text encoder) %ld bytes, spectral shifts %ld bytes\n", lora_bytes,
                  shift_bytes);

    /* a LoRA of another model: hash, then shapes, then names */
    open_model(&p, g_model);
    const char *other = "0123456789abcdef";
    snprintf(kohya, sizeof kohya, "%s/other.safetensors", tmp);
    float AB[64] = {0};
    int64_t sa[2] = {2, 5}, sb[2] = {3, 2};
    st_writer_t *w = st_writer_new();
    st_writer_add(w, "unet.conv_in.lora_A.weight", ST_F32, 2, sa, AB);
    st_writer_add(w, "unet.conv_in.lora_B.weight", ST_F32, 2, sb, AB);
    st_writer_meta(w, "base_model_hash", other);
    assert_int_equal(st_writer_save(w, kohya), 0);
    st_writer_free(w);
    pipeline_shift_t lx = {kohya, 1.0f};
    assert_int_equal(pipeline_apply_loras(&p, &lx, 1, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "made for base model 0123456789abcdef"));
    assert_int_equal(pipeline_apply_loras(&p, &lx, 1, 1), SD_ERR_SHAPE);   /* --force: then the shapes */
    assert_non_null(strstr(sd_last_error(), "LoRA of 'conv_in' has A [2, 5] and B [3, 2], which do not fit"));
    w = st_writer_new();
    st_writer_add(w, "unet.mid_block.attentions.7.proj_in.lora_A.weight", ST_F32, 2, sa, AB);
    st_writer_add(w, "unet.mid_block.attentions.7.proj_in.lora_B.weight", ST_F32, 2, sb, AB);
    assert_int_equal(st_writer_save(w, kohya), 0);
    st_writer_free(w);
    assert_int_equal(pipeline_apply_loras(&p, &lx, 1, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "'mid_block.attentions.7.proj_in' is not a layer of this model's UNet"));
    pipeline_close(&p);

    free(l_tr), free(l_gen), free(l_base), free(l_k);
    rm_tree(tmp);
}

static int copy(const char *from, const char *to) {
    size_t n = 0;
    char *s = read_file(from, &n);
    if (!s) return -1;
    FILE *f = fopen(to, "wb");
    int rc = !f || fwrite(s, 1, n, f) != n;
    if (f) fclose(f);
    free(s);
    return rc;
}

static void test_lora_resume(void **state) {
    (void)state;
    sd_set_threads(1);
    char tmp[64], a[128], b[128], r[128], x[256], y[256];
    make_tmp(tmp, sizeof tmp);
    snprintf(a, sizeof a, "%s/a", tmp), snprintf(b, sizeof b, "%s/b", tmp), snprintf(r, sizeof r, "%s/r", tmp);
    train_config_t ca, cb, cr;
    base_config(&ca, a, TRAIN_MODE_LORA);
    base_config(&cb, b, TRAIN_MODE_LORA);
    base_config(&cr, r, TRAIN_MODE_LORA);
    ca.steps = cb.steps = cr.steps = 4;
    cb.checkpoint_every = 2;   /* leaves the checkpoint of step 2 */
    assert_int_equal(train_once(&ca), 0);
    assert_int_equal(train_once(&cb), 0);
    /* a run resumed from b's step-2 checkpoint ends with the bytes of the uninterrupted run */
    assert_int_equal(mkdir(r, 0777), 0);
    snprintf(x, sizeof x, "%s/checkpoint.safetensors", b), snprintf(y, sizeof y, "%s/checkpoint.safetensors", r);
    assert_int_equal(copy(x, y), 0);
    snprintf(x, sizeof x, "%s/loss.csv", b), snprintf(y, sizeof y, "%s/loss.csv", r);
    assert_int_equal(copy(x, y), 0);
    cr.resume = 1;
    assert_int_equal(train_once(&cr), 0);
    snprintf(x, sizeof x, "%s/%s", a, LORA_FILE_NAME), snprintf(y, sizeof y, "%s/%s", r, LORA_FILE_NAME);
    assert_same_file(x, y);
    /* the checkpoint refuses another rank */
    trainer_t t;
    cr.lora_rank = 3;
    assert_int_not_equal(trainer_open(&t, &cr), 0);
    assert_non_null(strstr(sd_last_error(), "lora_rank"));
    trainer_close(&t);
    rm_tree(tmp);
}

static void test_lora_bad_rank(void **state) {
    (void)state;
    char tmp[64], out[128];
    make_tmp(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/x", tmp);
    train_config_t c;
    base_config(&c, out, TRAIN_MODE_LORA);
    c.lora_rank = 0;
    trainer_t t;
    assert_int_equal(trainer_open(&t, &c), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "--lora-rank 0: must be at least 1"));
    trainer_close(&t);
    rm_tree(tmp);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_finite_differences),
        cmocka_unit_test(test_conv_finite_differences),
        cmocka_unit_test(test_golden_pytorch),
        cmocka_unit_test(test_delta_equals_finetuned),
        cmocka_unit_test(test_lora_train_and_merge),
        cmocka_unit_test(test_lora_resume),
        cmocka_unit_test(test_lora_bad_rank),
    };
    int rc = RUN_TESTS(argc, argv, "lora", tests, NULL, NULL);
    scratch_free_all();
    return rc;
}
