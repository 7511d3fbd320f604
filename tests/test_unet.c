/* UNet2DConditionModel (src/models/unet.h): golden comparisons with the PyTorch
 * re-implementation (tests/reference/gen_unet_golden.py) for SD1-like, SD2-like and pixel-space
 * tiny configs (output, d(sample), d(ctx), d(delta) of spectral layers, d(shift) of norm
 * gains), finite-difference checks through the whole network, inference vs training and
 * checkpointing on vs off equality, config parsing, the SD 1.5 / 2.1 structure (skip count,
 * parameter and shift counts, activation memory in exact floats), the grouping into diffusers'
 * blocks, and the Attention pair against a direct evaluation and finite differences. */
#include "testutil.h"

#include <cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "models/unet.h"

static int verbose(void) { return getenv("SVDIFF_GOLDEN_VERBOSE") != NULL; }

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        print_error("cannot open %s\nregenerate with: tests/reference/regenerate.sh\n", path);
        fail();
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = 0;
    fclose(f);
    return s;
}

static const st_tensor_t *get_st(void *ctx, const char *name) { return st_find(ctx, name); }

static void parse_config(unet_config_t *cfg, const char *json_text) {
    cJSON *j = cJSON_Parse(json_text);
    assert_non_null(j);
    int rc = unet_config_from_json(cfg, j, "test config");
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    cJSON_Delete(j);
}

/* ---- a fixture: tests/fixtures/unet/<name>/{unet/, golden.safetensors} ---- */

typedef struct {
    char name[32];
    st_file_t weights, golden;
    unet_config_t cfg;
    unet_t m;
    int B, H, W, T;
    float *sample, *timesteps, *ctx, *dout;
    size_t n_sample, n_ctx, n_out;
} fx_t;

static int meta_int(const st_file_t *f, const char *key) {
    const char *v = st_meta(f, key);
    assert_non_null(v);
    return atoi(v);
}

/* Spectral factors of the golden file on layer `path` (residual form: the base stays). */
static void set_spectral(fx_t *f, const char *path, float s) {
    layer_t *l = unet_find_layer(&f->m, path);
    if (!l) print_error("no layer %s\n", path);
    assert_non_null(l);
    char key[256];
    const int rows = l->w.rows, cols = l->w.cols, rank = rows < cols ? rows : cols;
    snprintf(key, sizeof key, "%s.U", path);
    float *U = golden_get(&f->golden, key, (int64_t)rows * rank);
    snprintf(key, sizeof key, "%s.S", path);
    float *S = golden_get(&f->golden, key, rank);
    snprintf(key, sizeof key, "%s.Vh", path);
    float *Vh = golden_get(&f->golden, key, (int64_t)rank * cols);
    snprintf(key, sizeof key, "%s.delta", path);
    float *delta = golden_get(&f->golden, key, rank);
    spectral_t *sp = calloc(1, sizeof *sp);
    spectral_init_factors(sp, U, S, Vh, rows, cols, rank);
    memcpy(sp->delta, delta, sizeof(float) * rank);
    sp->scale = s;
    weight_free(&l->w);
    l->w.kind = WEIGHT_SPECTRAL;
    l->w.sp = sp;
    free(U), free(S), free(Vh), free(delta);
}

static void set_norm_shift(fx_t *f, const char *path, const char *mode, float s) {
    norm_layer_t *n = unet_find_norm(&f->m, path);
    if (!n) print_error("no norm %s\n", path);
    assert_non_null(n);
    char key[256];
    snprintf(key, sizeof key, "%s.shift", path);
    n->mode = strcmp(mode, "scalar") == 0 ? NORMSHIFT_SCALAR : NORMSHIFT_ELEMENT;
    n->shift = golden_get(&f->golden, key, n->mode == NORMSHIFT_SCALAR ? 1 : n->C);
    n->scale = s;
}

/* Applies every spectral layer and norm shift the golden file lists. */
static void fx_shifts(fx_t *f) {
    float *sc = golden_get(&f->golden, "scale", 1);
    char list[2048];
    snprintf(list, sizeof list, "%s", st_meta(&f->golden, "spectral"));
    for (char *p = strtok(list, ","); p; p = strtok(NULL, ",")) set_spectral(f, p, sc[0]);
    snprintf(list, sizeof list, "%s", st_meta(&f->golden, "norm_shifts"));
    for (char *p = strtok(list, ","); p; p = strtok(NULL, ",")) {
        char *colon = strchr(p, ':');
        assert_non_null(colon);
        *colon = 0;
        set_norm_shift(f, p, colon + 1, sc[0]);
    }
    free(sc);
}

static void fx_open(fx_t *f, const char *name, int with_shifts) {
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/unet/%s/unet/config.json", name);
    char *text = read_text(source_path(rel));
    parse_config(&f->cfg, text);
    free(text);
    snprintf(rel, sizeof rel, "tests/fixtures/unet/%s/unet/diffusion_pytorch_model.safetensors", name);
    if (st_open(&f->weights, source_path(rel)) != 0) {
        print_error("%s\nregenerate with: tests/reference/regenerate.sh\n", sd_last_error());
        fail();
    }
    int rc = build_unet(&f->m, &f->cfg, get_st, &f->weights);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    snprintf(rel, sizeof rel, "unet/%s/golden.safetensors", name);
    golden_open(&f->golden, rel);
    f->B = meta_int(&f->golden, "B"), f->H = meta_int(&f->golden, "H");
    f->W = meta_int(&f->golden, "W"), f->T = meta_int(&f->golden, "T");
    assert_int_equal(f->m.n_skips, meta_int(&f->golden, "n_skips"));
    f->n_sample = (size_t)f->B * f->cfg.in_channels * f->H * f->W;
    f->n_ctx = (size_t)f->B * f->T * f->cfg.cross_attention_dim;
    f->n_out = (size_t)f->B * f->cfg.out_channels * f->H * f->W;
    f->sample = golden_get(&f->golden, "sample", (int64_t)f->n_sample);
    f->timesteps = golden_get(&f->golden, "timesteps", f->B);
    f->ctx = golden_get(&f->golden, "ctx", (int64_t)f->n_ctx);
    f->dout = golden_get(&f->golden, "dout", (int64_t)f->n_out);
    if (with_shifts) fx_shifts(f);
}

static void fx_close(fx_t *f) {
    free_unet(&f->m);
    st_close(&f->weights);
    st_close(&f->golden);
    free(f->sample), free(f->timesteps), free(f->ctx), free(f->dout);
}

static void forward_ok(fx_t *f, unet_acts_t *a, float *out) {
    int rc = unet_forward(out, &f->m, a, f->sample, f->timesteps, f->ctx, NULL, f->B, f->H, f->W, f->T);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

static void acts_ok(fx_t *f, unet_acts_t *a, int training, unet_ckpt_t ckpt) {
    int rc = unet_acts_build(a, &f->m, f->B, f->H, f->W, f->T, training, ckpt);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

static void compare(const fx_t *f, const char *what, const float *got, const char *key, size_t n, double tol) {
    float *want = golden_get(&f->golden, key, (int64_t)n);
    if (verbose()) printf("  %s %-70s rel %.3g\n", f->name, what, rel_error(got, want, n));
    assert_close(what, got, want, n, tol);
    free(want);
}

/* One training forward + backward with every shift gradient and the input gradients. */
typedef struct {
    float *out, *dsample, *dctx;
    unet_grads_t g;
} run_t;

static void run_train(fx_t *f, run_t *r, unet_ckpt_t ckpt, unsigned what) {
    unet_acts_t a;
    acts_ok(f, &a, 1, ckpt);
    r->out = alloc_zeros(f->n_out);
    r->dsample = alloc_zeros(f->n_sample);
    r->dctx = alloc_zeros(f->n_ctx);
    forward_ok(f, &a, r->out);
    assert_int_equal(unet_grads_alloc(&r->g, &f->m, what), 0);
    unet_backward(r->dsample, r->dctx, NULL, &r->g, f->dout, &f->m, &a);
    unet_acts_free(&a);
}

static void run_free(run_t *r) {
    free(r->out), free(r->dsample), free(r->dctx);
    unet_grads_free(&r->g);
}

/* ---- golden ---- */

static void check_golden(const char *name) {
    fx_t f;
    fx_open(&f, name, 1);
    run_t r;
    run_train(&f, &r, UNET_CKPT_NONE, UNET_GRAD_SHIFTS);
    compare(&f, "out", r.out, "out", f.n_out, 1e-4);
    compare(&f, "dsample", r.dsample, "dsample", f.n_sample, 1e-4);
    compare(&f, "dctx", r.dctx, "dctx", f.n_ctx, 1e-4);
    int n_checked = 0;
    for (int i = 0; i < f.m.n_layers; i++) {
        const layer_t *l = f.m.layers[i];
        if (l->w.kind != WEIGHT_SPECTRAL) continue;
        char key[256];
        snprintf(key, sizeof key, "%s.ddelta", l->name);
        assert_non_null(r.g.layers[l->id].dw);
        compare(&f, key, r.g.layers[l->id].dw, key, (size_t)l->w.sp->rank, 1e-4);
        n_checked++;
    }
    assert_int_equal(n_checked, 5);
    for (int i = 0; i < f.m.n_norms; i++) {
        const norm_layer_t *n = f.m.norms[i];
        if (!n->shift) continue;
        char key[256];
        snprintf(key, sizeof key, "%s.dshift", n->name);
        assert_non_null(r.g.norms[n->id].dshift);
        compare(&f, key, r.g.norms[n->id].dshift, key, n->mode == NORMSHIFT_SCALAR ? 1 : (size_t)n->C, 1e-4);
    }
    /* inference mode, factored and baked spectral weights */
    unet_acts_t ai;
    acts_ok(&f, &ai, 0, UNET_CKPT_NONE);
    float *out = alloc_zeros(f.n_out);
    forward_ok(&f, &ai, out);
    compare(&f, "out (inference)", out, "out", f.n_out, 1e-4);
    unet_bake(&f.m);
    forward_ok(&f, &ai, out);
    compare(&f, "out (inference, baked)", out, "out", f.n_out, 1e-4);
    unet_unbake(&f.m);
    free(out);
    unet_acts_free(&ai);
    run_free(&r);
    fx_close(&f);
}

static void test_golden_sd1(void **state) { (void)state; check_golden("sd1"); }
static void test_golden_sd2(void **state) { (void)state; check_golden("sd2"); }
static void test_golden_pixel(void **state) { (void)state; check_golden("pixel"); }

/* A forward with B' < B (capacity) gives the golden output of those samples. */
static void test_partial_batch(void **state) {
    (void)state;
    fx_t f;
    fx_open(&f, "sd1", 1);
    assert_true(f.B == 2);
    unet_acts_t a;
    acts_ok(&f, &a, 1, UNET_CKPT_NONE);
    float *out = alloc_zeros(f.n_out), *ctx1 = malloc(sizeof(float) * f.n_ctx / 2);
    memcpy(ctx1, f.ctx + f.n_ctx / 2, sizeof(float) * f.n_ctx / 2);
    /* the second sample alone */
    assert_int_equal(unet_forward(out, &f.m, &a, f.sample + f.n_sample / 2, f.timesteps + 1, ctx1, NULL, 1, f.H, f.W, f.T), 0);
    float *want = golden_get(&f.golden, "out", (int64_t)f.n_out);
    assert_close("out[1] alone", out, want + f.n_out / 2, f.n_out / 2, 1e-4);
    /* over capacity / bad size */
    assert_int_equal(unet_forward(out, &f.m, &a, f.sample, f.timesteps, f.ctx, NULL, 3, f.H, f.W, f.T), SD_ERR_ARG);
    assert_int_equal(unet_forward(out, &f.m, &a, f.sample, f.timesteps, f.ctx, NULL, 1, f.H - 1, f.W, f.T), SD_ERR_ARG);
    unet_acts_t bad;
    assert_int_equal(unet_acts_build(&bad, &f.m, 1, 7, 8, 4, 1, UNET_CKPT_NONE), SD_ERR_ARG);
    assert_int_equal(unet_acts_build(&bad, &f.m, 0, 8, 8, 4, 1, UNET_CKPT_NONE), SD_ERR_ARG);
    free(out), free(ctx1), free(want);
    unet_acts_free(&a);
    fx_close(&f);
}

/* ---- equality of modes ---- */

/* The inference path (nothing kept, buffers reused, residuals in place) computes the same
 * numbers as the training path. */
static void test_inference_equals_training(void **state) {
    (void)state;
    const char *names[] = {"sd1", "sd2", "pixel"};
    for (int k = 0; k < 3; k++) {
        fx_t f;
        fx_open(&f, names[k], 1);
        unet_acts_t at, ai;
        acts_ok(&f, &at, 1, UNET_CKPT_NONE);
        acts_ok(&f, &ai, 0, UNET_CKPT_NONE);
        assert_true(ai.n_floats < at.n_floats / 4);
        float *o1 = alloc_zeros(f.n_out), *o2 = alloc_zeros(f.n_out);
        forward_ok(&f, &at, o1);
        forward_ok(&f, &ai, o2);
        forward_ok(&f, &ai, o2);   /* reused activations */
        assert_memory_equal(o1, o2, sizeof(float) * f.n_out);
        free(o1), free(o2);
        unet_acts_free(&at);
        unet_acts_free(&ai);
        fx_close(&f);
    }
}

static void grads_equal(const run_t *a, const run_t *b, const fx_t *f) {
    assert_memory_equal(a->out, b->out, sizeof(float) * f->n_out);
    assert_memory_equal(a->dsample, b->dsample, sizeof(float) * f->n_sample);
    assert_memory_equal(a->dctx, b->dctx, sizeof(float) * f->n_ctx);
    assert_int_equal(a->g.n_floats, b->g.n_floats);
    assert_memory_equal(a->g.memory, b->g.memory, sizeof(float) * a->g.n_floats);
}

/* Checkpointing (recompute in backward) gives the same gradients, bit for bit, as keeping
 * everything: shift gradients and every dense gradient. */
static void test_checkpointing_equal(void **state) {
    (void)state;
    const char *names[] = {"sd1", "sd2", "pixel"};
    for (int k = 0; k < 3; k++) {
        fx_t f;
        fx_open(&f, names[k], 1);
        run_t r0, r1, r2;
        const unsigned what = UNET_GRAD_SHIFTS | UNET_GRAD_DENSE;
        run_train(&f, &r0, UNET_CKPT_NONE, what);
        run_train(&f, &r1, UNET_CKPT_TRANSFORMERS, what);
        run_train(&f, &r2, UNET_CKPT_ALL, what);
        grads_equal(&r0, &r1, &f);
        grads_equal(&r0, &r2, &f);
        /* and the memory it saves */
        const size_t n0 = unet_acts_floats(&f.m, f.B, f.H, f.W, f.T, 1, UNET_CKPT_NONE);
        const size_t n1 = unet_acts_floats(&f.m, f.B, f.H, f.W, f.T, 1, UNET_CKPT_TRANSFORMERS);
        const size_t n2 = unet_acts_floats(&f.m, f.B, f.H, f.W, f.T, 1, UNET_CKPT_ALL);
        assert_true(n2 < n1 && n1 < n0);
        run_free(&r0), run_free(&r1), run_free(&r2);
        fx_close(&f);
    }
}

/* ---- finite differences through the whole network ---- */

/* Weights copied into writable memory so that the test can perturb a dense weight. */
typedef struct {
    const st_file_t *f;
    int n;
    st_tensor_t *t;
    void **data;
} copies_t;

static const st_tensor_t *get_copy(void *ctx, const char *name) {
    copies_t *c = ctx;
    const st_tensor_t *s = st_find(c->f, name);
    if (!s) return NULL;
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->t[i].name, name) == 0) return &c->t[i];
    c->t = realloc(c->t, sizeof *c->t * (c->n + 1));
    c->data = realloc(c->data, sizeof *c->data * (c->n + 1));
    c->data[c->n] = malloc(s->nbytes);
    memcpy(c->data[c->n], s->data, s->nbytes);
    c->t[c->n] = *s;
    c->t[c->n].data = c->data[c->n];
    return &c->t[c->n++];
}

typedef struct {
    fx_t *f;
    unet_acts_t *a;
    float *out;
} fd_ctx_t;

static double fd_loss(void *p) {
    fd_ctx_t *c = p;
    fx_t *f = c->f;
    assert_int_equal(unet_forward(c->out, &f->m, c->a, f->sample, f->timesteps, f->ctx, NULL, f->B, f->H, f->W, f->T), 0);
    return dot_loss(c->out, f->dout, f->n_out);
}

static void fd_report(const char *name, double worst) {
    if (verbose()) printf("  fd %-70s worst %.3g\n", name, worst);
}

static void test_fd_whole_unet(void **state) {
    (void)state;
    fx_t f;
    fx_open(&f, "sd1", 0);
    /* rebuild over writable copies of the weights */
    free_unet(&f.m);
    copies_t cp = {.f = &f.weights};
    assert_int_equal(build_unet(&f.m, &f.cfg, get_copy, &cp), 0);
    fx_shifts(&f);
    layer_t *conv = unet_find_layer(&f.m, "up_blocks.0.resnets.0.conv1");
    layer_t *o1 = unet_find_layer(&f.m, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0");
    layer_t *sp_in = unet_find_layer(&f.m, "conv_in");
    layer_t *sp_k = unet_find_layer(&f.m, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
    norm_layer_t *gn = unet_find_norm(&f.m, "down_blocks.1.resnets.0.norm2");
    norm_layer_t *ln = unet_find_norm(&f.m, "mid_block.attentions.0.transformer_blocks.0.norm3");
    assert_true(conv && o1 && sp_in && sp_k && gn && ln);
    assert_int_equal(conv->w.kind, WEIGHT_DENSE);
    assert_int_equal(sp_k->w.kind, WEIGHT_SPECTRAL);
    assert_non_null(gn->shift);

    run_t r;
    run_train(&f, &r, UNET_CKPT_NONE, UNET_GRAD_SHIFTS | UNET_GRAD_DENSE);
    unet_acts_t ai;
    acts_ok(&f, &ai, 0, UNET_CKPT_NONE);
    fd_ctx_t c = {&f, &ai, alloc_zeros(f.n_out)};
    const double tol = 1e-2;
    fd_report("d sample", fd_check("d sample", f.sample, r.dsample, f.n_sample, 12, fd_loss, &c, 1e-2f, tol));
    fd_report("d ctx", fd_check("d ctx", f.ctx, r.dctx, f.n_ctx, 10, fd_loss, &c, 1e-2f, tol));
    fd_report("conv_in d delta", fd_check("conv_in d delta", sp_in->w.sp->delta, r.g.layers[sp_in->id].dw,
                                          (size_t)sp_in->w.sp->rank, 8, fd_loss, &c, 1e-3f, tol));
    fd_report("attn2.to_k d delta", fd_check("attn2.to_k d delta", sp_k->w.sp->delta, r.g.layers[sp_k->id].dw,
                                             (size_t)sp_k->w.sp->rank, 8, fd_loss, &c, 1e-3f, tol));
    fd_report("GroupNorm d shift", fd_check("GroupNorm d shift", gn->shift, r.g.norms[gn->id].dshift, (size_t)gn->C, 6,
                                            fd_loss, &c, 1e-2f, tol));
    fd_report("GroupNorm d gain", fd_check("GroupNorm d gain", gn->gamma, r.g.norms[gn->id].dgamma, (size_t)gn->C, 4,
                                           fd_loss, &c, 1e-2f, tol));
    fd_report("LayerNorm d gamma", fd_check("LayerNorm d gamma", ln->gamma, r.g.norms[ln->id].dgamma, (size_t)ln->C,
                                            6, fd_loss, &c, 1e-2f, tol));
    fd_report("LayerNorm d beta", fd_check("LayerNorm d beta", ln->beta, r.g.norms[ln->id].dbeta, (size_t)ln->C, 6,
                                           fd_loss, &c, 1e-2f, tol));
    fd_report("dense conv dW", fd_check("dense conv dW", (float *)conv->w.data, r.g.layers[conv->id].dw,
                                        (size_t)conv->w.rows * conv->w.cols, 10, fd_loss, &c, 1e-2f, tol));
    fd_report("to_out.0 d bias", fd_check("to_out.0 d bias", o1->bias, r.g.layers[o1->id].dbias, (size_t)o1->out, 6,
                                          fd_loss, &c, 1e-2f, tol));
    /* the time embedding MLP only gets gradients through every resnet's time_emb_proj */
    layer_t *t2 = unet_find_layer(&f.m, "time_embedding.linear_2");
    fd_report("time linear_2 d bias", fd_check("time linear_2 d bias", t2->bias, r.g.layers[t2->id].dbias,
                                               (size_t)t2->out, 6, fd_loss, &c, 1e-2f, tol));
    free(c.out);
    unet_acts_free(&ai);
    run_free(&r);
    fx_close(&f);
    for (int i = 0; i < cp.n; i++) free(cp.data[i]);
    free(cp.t), free(cp.data);
}

/* unet_backward accumulates into every gradient of g and into dsample / dctx (unet.h): with all of
 * them pre-filled with known values p, a backward leaves p + the gradient of a zeroed run. Spectral
 * layers, norm shifts and dense weights together, without and with checkpointing. */
static void test_backward_accumulates(void **state) {
    (void)state;
    for (int ckpt = UNET_CKPT_NONE; ckpt <= UNET_CKPT_ALL; ckpt += UNET_CKPT_ALL) {
        fx_t f;
        fx_open(&f, "sd1", 1);
        unet_acts_t a;
        acts_ok(&f, &a, 1, (unet_ckpt_t)ckpt);
        float *out = alloc_zeros(f.n_out);
        float *fs = alloc_zeros(f.n_sample), *fc = alloc_zeros(f.n_ctx);
        unet_grads_t g;
        assert_int_equal(unet_grads_alloc(&g, &f.m, UNET_GRAD_SHIFTS | UNET_GRAD_DENSE), 0);
        forward_ok(&f, &a, out);
        unet_backward(fs, fc, NULL, &g, f.dout, &f.m, &a);
        trng_t r;
        trng_seed(&r, 5);
        float *fresh = malloc(g.n_floats * sizeof(float)), *pre = alloc_normal(&r, g.n_floats, 1);
        float *ps = alloc_normal(&r, f.n_sample, 1), *pc = alloc_normal(&r, f.n_ctx, 1);
        float *ds = malloc(f.n_sample * sizeof(float)), *dc = malloc(f.n_ctx * sizeof(float));
        memcpy(fresh, g.memory, g.n_floats * sizeof(float));
        memcpy(g.memory, pre, g.n_floats * sizeof(float));
        memcpy(ds, ps, f.n_sample * sizeof(float)), memcpy(dc, pc, f.n_ctx * sizeof(float));
        forward_ok(&f, &a, out);
        unet_backward(ds, dc, NULL, &g, f.dout, &f.m, &a);
        double scale = 0;
        for (size_t i = 0; i < g.n_floats; i++) scale = fmax(scale, fabs(fresh[i]));
        for (size_t i = 0; i < g.n_floats; i++) {
            if (fabs(g.memory[i] - ((double)pre[i] + fresh[i])) > 1e-5 * (1 + fabs(pre[i]) + scale)) {
                print_error("checkpointing %d: gradient float %zu of %zu does not accumulate: %g, want %g + %g\n", ckpt, i,
                            g.n_floats, g.memory[i], pre[i], fresh[i]);
                fail();
            }
        }
        for (size_t i = 0; i < f.n_sample; i++) ps[i] += fs[i];
        for (size_t i = 0; i < f.n_ctx; i++) pc[i] += fc[i];
        assert_close("dsample accumulated", ds, ps, f.n_sample, 1e-5);
        assert_close("dctx accumulated", dc, pc, f.n_ctx, 1e-5);
        free(out), free(fs), free(fc), free(fresh), free(pre), free(ps), free(pc), free(ds), free(dc);
        unet_grads_free(&g);
        unet_acts_free(&a);
        fx_close(&f);
    }
}

/* ---- spectral set-up and the shift registry ---- */

typedef struct {
    int n_layers, n_norms;
    long total;
    int saw_to_k;
} visit_t;

static void visit(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    visit_t *v = ctx;
    const char *path = name->path;
    assert_non_null(shift);
    assert_non_null(grad);
    assert_true(strstr(path, ".weight") == NULL);
    assert_int_equal(name->component, SHIFT_UNET);
    assert_int_equal(name->kind, strstr(path, "norm") ? SHIFT_NORM : SHIFT_SPECTRAL);
    if (strstr(path, "norm")) v->n_norms++;
    else v->n_layers++;
    if (strcmp(path, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k") == 0) v->saw_to_k = n == 8;
    v->total += n;
}

static void test_make_spectral(void **state) {
    (void)state;
    fx_t f;
    fx_open(&f, "sd1", 0);
    unet_acts_t a;
    acts_ok(&f, &a, 0, UNET_CKPT_NONE);
    float *ref = alloc_zeros(f.n_out), *out = alloc_zeros(f.n_out);
    forward_ok(&f, &a, ref);
    /* delta = 0: exact with the base kept, SVD-exact without it */
    assert_int_equal(unet_make_spectral(&f.m, 1, NULL, NULL), 0);
    forward_ok(&f, &a, out);
    assert_close("spectral (keep base), delta 0", out, ref, f.n_out, 1e-5);
    unet_add_norm_shifts(&f.m, NORMSHIFT_ELEMENT);
    forward_ok(&f, &a, out);
    assert_close("+ zero norm shifts", out, ref, f.n_out, 1e-5);
    unet_grads_t g;
    assert_int_equal(unet_grads_alloc(&g, &f.m, UNET_GRAD_SHIFTS), 0);
    visit_t v = {0};
    unet_visit_shifts(&f.m, &g, visit, &v);
    assert_int_equal(v.n_layers, f.m.n_layers);
    assert_int_equal(v.n_norms, f.m.n_norms);
    assert_true(v.saw_to_k);
    assert_int_equal((size_t)v.total, g.n_floats);
    /* a non-zero shift changes the output; scale 0 undoes it */
    layer_t *l = unet_find_layer(&f.m, "mid_block.resnets.0.conv2");
    for (int i = 0; i < l->w.sp->rank; i++) l->w.sp->delta[i] = 0.1f * l->w.sp->S[i];
    forward_ok(&f, &a, out);
    assert_true(rel_error(out, ref, f.n_out) > 1e-3);
    unet_set_shift_scale(&f.m, 0.0f);
    forward_ok(&f, &a, out);
    assert_close("scale 0", out, ref, f.n_out, 1e-5);
    unet_grads_free(&g);
    unet_acts_free(&a);
    fx_close(&f);
    /* factored-only weights */
    fx_open(&f, "sd1", 0);
    assert_int_equal(unet_make_spectral(&f.m, 0, NULL, NULL), 0);
    for (int i = 0; i < f.m.n_layers; i++) assert_null(f.m.layers[i]->w.data);
    acts_ok(&f, &a, 0, UNET_CKPT_NONE);
    forward_ok(&f, &a, out);
    assert_close("spectral (factored only), delta 0", out, ref, f.n_out, 1e-4);
    unet_acts_free(&a);
    fx_close(&f);
    free(ref), free(out);
}

/* ---- loading errors ---- */

typedef struct {
    const st_file_t *f;
    const char *hide, *swap_from, *swap_to;
} hide_t;

static const st_tensor_t *get_hiding(void *ctx, const char *name) {
    hide_t *h = ctx;
    if (h->hide && strcmp(name, h->hide) == 0) return NULL;
    if (h->swap_from && strcmp(name, h->swap_from) == 0) return st_find(h->f, h->swap_to);
    return st_find(h->f, name);
}

static void test_build_errors(void **state) {
    (void)state;
    fx_t f;
    fx_open(&f, "sd1", 0);
    unet_t m;
    hide_t h = {&f.weights, "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_v.weight", NULL, NULL};
    assert_int_equal(build_unet(&m, &f.cfg, get_hiding, &h), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "attn2.to_v.weight"));
    hide_t h2 = {&f.weights, NULL, "conv_in.weight", "conv_out.weight"};
    assert_int_equal(build_unet(&m, &f.cfg, get_hiding, &h2), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "conv_in.weight"));
    hide_t h3 = {&f.weights, NULL, "mid_block.resnets.1.norm2.bias", "mid_block.resnets.1.norm2.weight"};
    assert_int_equal(build_unet(&m, &f.cfg, get_hiding, &h3), 0);   /* same shape: fine */
    free_unet(&m);
    /* a config whose channels do not match the weights */
    unet_config_t bad = f.cfg;
    bad.block_out_channels[1] = 12;
    assert_int_equal(build_unet(&m, &bad, get_st, &f.weights), SD_ERR_SHAPE);
    fx_close(&f);
}

/* ---- config.json ---- */

static const char *SD15 =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.6.0\", \"act_fn\": \"silu\","
    " \"attention_head_dim\": 8, \"block_out_channels\": [320, 640, 1280, 1280], \"center_input_sample\": false,"
    " \"cross_attention_dim\": 768, \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1, \"flip_sin_to_cos\": true,"
    " \"freq_shift\": 0, \"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_scale_factor\": 1,"
    " \"norm_eps\": 1e-05, \"norm_num_groups\": 32, \"out_channels\": 4, \"sample_size\": 64,"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]}";

static const char *SD21 =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.10.0.dev0\", \"act_fn\": \"silu\","
    " \"attention_head_dim\": [5, 10, 20, 20], \"block_out_channels\": [320, 640, 1280, 1280],"
    " \"center_input_sample\": false, \"cross_attention_dim\": 1024, \"down_block_types\": [\"CrossAttnDownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"downsample_padding\": 1,"
    " \"dual_cross_attention\": false, \"flip_sin_to_cos\": true, \"freq_shift\": 0, \"in_channels\": 4,"
    " \"layers_per_block\": 2, \"mid_block_scale_factor\": 1, \"norm_eps\": 1e-05, \"norm_num_groups\": 32,"
    " \"num_class_embeds\": null, \"only_cross_attention\": false, \"out_channels\": 4, \"sample_size\": 96,"
    " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"],"
    " \"upcast_attention\": true, \"use_linear_projection\": true}";

/* stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, every key as diffusers writes it */
static const char *SDXL =
    "{\"_class_name\": \"UNet2DConditionModel\", \"_diffusers_version\": \"0.19.0.dev0\", \"act_fn\": \"silu\","
    " \"addition_embed_type\": \"text_time\", \"addition_embed_type_num_heads\": 64, \"addition_time_embed_dim\": 256,"
    " \"attention_head_dim\": [5, 10, 20], \"block_out_channels\": [320, 640, 1280], \"center_input_sample\": false,"
    " \"class_embed_type\": null, \"class_embeddings_concat\": false, \"conv_in_kernel\": 3, \"conv_out_kernel\": 3,"
    " \"cross_attention_dim\": 2048, \"cross_attention_norm\": null, \"down_block_types\": [\"DownBlock2D\","
    " \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"], \"downsample_padding\": 1, \"dual_cross_attention\": false,"
    " \"encoder_hid_dim\": null, \"encoder_hid_dim_type\": null, \"flip_sin_to_cos\": true, \"freq_shift\": 0,"
    " \"in_channels\": 4, \"layers_per_block\": 2, \"mid_block_only_cross_attention\": null,"
    " \"mid_block_scale_factor\": 1, \"mid_block_type\": \"UNetMidBlock2DCrossAttn\", \"norm_eps\": 1e-05,"
    " \"norm_num_groups\": 32, \"num_attention_heads\": null, \"num_class_embeds\": null,"
    " \"only_cross_attention\": false, \"out_channels\": 4, \"projection_class_embeddings_input_dim\": 2816,"
    " \"resnet_out_scale_factor\": 1.0, \"resnet_skip_time_act\": false, \"resnet_time_scale_shift\": \"default\","
    " \"sample_size\": 128, \"time_cond_proj_dim\": null, \"time_embedding_act_fn\": null,"
    " \"time_embedding_dim\": null, \"time_embedding_type\": \"positional\", \"timestep_post_act\": null,"
    " \"transformer_layers_per_block\": [1, 2, 10], \"up_block_types\": [\"CrossAttnUpBlock2D\","
    " \"CrossAttnUpBlock2D\", \"UpBlock2D\"], \"upcast_attention\": null, \"use_linear_projection\": true}";

static void test_config(void **state) {
    (void)state;
    unet_config_t c;
    parse_config(&c, SD15);
    assert_int_equal(c.n_levels, 4);
    assert_int_equal(c.time_embed_dim, 1280);
    assert_int_equal(c.cross_attention_dim, 768);
    for (int i = 0; i < 4; i++) assert_int_equal(c.num_heads[i], 8);
    assert_int_equal(c.down_attn[3], 0);
    assert_int_equal(c.up_attn[0], 0);
    assert_int_equal(c.up_attn[3], 1);
    assert_int_equal(c.mid_block, 1);
    parse_config(&c, SD21);
    const int heads[4] = {5, 10, 20, 20};
    for (int i = 0; i < 4; i++) assert_int_equal(c.num_heads[i], heads[i]);
    assert_int_equal(c.use_linear_projection, 1);
    /* num_attention_heads overrides attention_head_dim; an empty object takes the defaults */
    parse_config(&c, "{\"block_out_channels\": [32, 64], \"down_block_types\": [\"CrossAttnDownBlock2D\","
                     " \"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\"],"
                     " \"attention_head_dim\": 99, \"num_attention_heads\": [2, 4], \"norm_num_groups\": 8}");
    assert_int_equal(c.num_heads[0], 2);
    assert_int_equal(c.num_heads[1], 4);
    assert_int_equal(c.addition_text_time, 0);
    /* SDXL base 1.0: heads per level, three levels, text_time */
    parse_config(&c, SDXL);
    assert_int_equal(c.n_levels, 3);
    assert_int_equal(c.down_attn[0], 0);
    assert_int_equal(c.down_attn[1], 1);
    assert_int_equal(c.up_attn[2], 0);
    const int xl_heads[3] = {5, 10, 20}, xl_tl[3] = {1, 2, 10};
    for (int i = 0; i < 3; i++) assert_int_equal(c.num_heads[i], xl_heads[i]);
    for (int i = 0; i < 3; i++) assert_int_equal(c.transformer_layers[i], xl_tl[i]);
    assert_int_equal(c.cross_attention_dim, 2048);
    assert_int_equal(c.use_linear_projection, 1);
    assert_int_equal(c.time_embed_dim, 1280);
    assert_int_equal(c.addition_text_time, 1);
    assert_int_equal(c.addition_time_embed_dim, 256);
    assert_int_equal(c.addition_embed_in, 2816);
    assert_int_equal(c.addition_text_embeds_dim, 1280);
    parse_config(&c, "{}");
    assert_int_equal(c.n_levels, 4);
    assert_int_equal(c.cross_attention_dim, 1280);
    assert_int_equal(c.layers_per_block[2], 2);
    /* refused */
    const char *bad[] = {
        "{\"class_embed_type\": \"timestep\"}",
        "{\"only_cross_attention\": true}",
        "{\"act_fn\": \"gelu\"}",
        "{\"resnet_time_scale_shift\": \"scale_shift\"}",
        "{\"addition_embed_type\": \"text_time\"}",   /* without its dims */
        "{\"addition_embed_type\": \"text\"}",
        "{\"addition_embed_type\": \"image\", \"addition_time_embed_dim\": 256,"
        " \"projection_class_embeddings_input_dim\": 2816}",
        "{\"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 256,"
        " \"projection_class_embeddings_input_dim\": 1536}",   /* no room for the text embeds */
        "{\"addition_embed_type\": \"text_time\", \"addition_time_embed_dim\": 255,"
        " \"projection_class_embeddings_input_dim\": 2816}",
        "{\"transformer_layers_per_block\": [[1], [2], [3], [4]]}",
        "{\"reverse_transformer_layers_per_block\": [[1], [2], [3], [4]]}",
        "{\"attention_head_dim\": 7}",
        "{\"block_out_channels\": [320, 640]}",
        "{\"layers_per_block\": [2, 2]}",
        "{\"cross_attention_dim\": [768, 768, 1024, 1024]}",
        "{\"down_block_types\": [\"AttnDownBlock2D\", \"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\"]}",
        "{\"mid_block_type\": \"UNetMidBlock2DSimpleCrossAttn\"}",
        "{\"norm_num_groups\": 48}",
        "{\"in_channels\": 4.5}",
        "[1, 2]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cJSON *j = cJSON_Parse(bad[i]);
        assert_non_null(j);
        int rc = unet_config_from_json(&c, j, "bad config");
        if (rc != SD_ERR_FORMAT) print_error("accepted: %s\n", bad[i]);
        assert_int_equal(rc, SD_ERR_FORMAT);
        assert_non_null(strstr(sd_last_error(), "bad config"));
        cJSON_Delete(j);
    }
}

/* ---- SD 1.5 / 2.1 structure from the config alone ---- */

typedef struct {
    long long params, shifts, norm_elems;
} counts_t;

static counts_t count(const unet_t *m) {
    counts_t c = {0, 0, 0};
    for (int i = 0; i < m->n_layers; i++) {
        const layer_t *l = m->layers[i];
        c.params += (long long)l->w.rows * l->w.cols + (l->bias ? l->out : 0);
        c.shifts += l->w.rows < l->w.cols ? l->w.rows : l->w.cols;
    }
    for (int i = 0; i < m->n_norms; i++) {
        c.params += 2LL * m->norms[i]->C;
        c.norm_elems += m->norms[i]->C;
    }
    return c;
}

static void test_sd_structure(void **state) {
    (void)state;
    unet_config_t cfg;
    unet_t m;
    parse_config(&cfg, SD15);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_int_equal(m.n_skips, 12);
    counts_t c = count(&m);
    /* the shifted parameters of docs/method.md section 2 */
    assert_int_equal(c.params, 859520964LL);
    assert_int_equal(c.shifts, 222696LL);
    assert_int_equal(c.norm_elems, 100160LL);
    assert_int_equal(m.n_transformers, 16);
    assert_int_equal(m.n_resnets, 22);
    for (int i = 0; i < m.n_transformers; i++) assert_int_equal(m.transformers[i].heads, 8);
    assert_non_null(unet_find_layer(&m, "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2"));
    assert_non_null(unet_find_layer(&m, "up_blocks.2.upsamplers.0.conv"));
    assert_null(unet_find_layer(&m, "up_blocks.3.upsamplers.0.conv"));
    assert_non_null(unet_find_layer(&m, "down_blocks.1.resnets.0.conv_shortcut"));
    assert_non_null(unet_find_norm(&m, "mid_block.attentions.0.norm"));
    /* activation memory at 512 px (64x64 latents), 77 context tokens */
    const double MB = 1e6 / 4;   /* floats per MB */
    const double inf2 = unet_acts_floats(&m, 2, 64, 64, 77, 0, UNET_CKPT_NONE) / MB;
    const double tr1 = unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_NONE) / MB;
    const double tr1t = unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_TRANSFORMERS) / MB;
    const double tr1a = unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_ALL) / MB;
    if (verbose())
        printf("  SD 1.5 64x64: inference B=2 %.1f MB; training B=1 %.1f MB, ckpt transformers %.1f MB, ckpt all %.1f MB\n",
               inf2, tr1, tr1t, tr1a);
    assert_true(inf2 < 100.0);
    assert_true(tr1a < tr1t && tr1t < tr1);
    free_unet(&m);

    parse_config(&cfg, SD21);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_int_equal(m.n_skips, 12);
    for (int i = 0; i < m.n_transformers; i++) assert_int_equal(m.transformers[i].head_dim, 64);
    c = count(&m);
    if (verbose()) printf("  SD 2.1 parameters %lld, shifts %lld\n", c.params, c.shifts);
    assert_int_equal(c.params, 865910724LL);
    free_unet(&m);
}

static void check_blocks(const unet_t *m);

/* Elements of every tensor the registry asks a file for (what validation and init walk). */
static int sum_tensor(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim,
                      const int64_t *shape) {
    (void)spec, (void)part, (void)name;
    long long n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    *(long long *)ctx += n;
    return 0;
}

/* SDXL base 1.0 from its config alone: diffusers' UNet2DConditionModel.num_parameters() is
 * 2,567,463,684 (what diffusers-based trainers log for it, and the sum over the module shapes
 * written out by hand: conv_in, time_embedding, add_embedding 2816 -> 1280 -> 1280, 17 resnets,
 * 11 Transformer2DModels of 2 / 10 blocks at 640 / 1280 channels with a 2048-wide
 * context, 3 samplers, conv_norm_out, conv_out); the registry (validation, init) and the built
 * model agree on it; add_embedding comes right after time_embedding as in the state dict; the
 * structural features SDXL needs. */
static void test_sdxl_structure(void **state) {
    (void)state;
    unet_config_t cfg;
    unet_t m;
    parse_config(&cfg, SDXL);
    layer_registry_t reg = {0};
    assert_int_equal(unet_registry(&cfg, &reg), 0);
    long long n_reg = 0;
    assert_int_equal(layer_registry_tensors(&reg, sum_tensor, &n_reg), 0);
    assert_int_equal(n_reg, 2567463684LL);
    assert_string_equal(reg.v[3].name, "add_embedding.linear_1");
    assert_int_equal(reg.v[3].in, 2816);
    assert_int_equal(reg.v[3].out, 1280);
    assert_true(reg.v[3].bias);
    assert_string_equal(reg.v[4].name, "add_embedding.linear_2");
    assert_int_equal(reg.v[4].in, 1280);
    layer_registry_free(&reg);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    counts_t c = count(&m);
    assert_int_equal(c.params, 2567463684LL);
    if (verbose()) printf("  SDXL parameters %lld, shifts %lld, norm elements %lld\n", c.params, c.shifts, c.norm_elems);
    check_blocks(&m);
    assert_int_equal(m.n_skips, 9);
    assert_int_equal(m.n_resnets, 2 * 3 + 3 * 3 + 2);
    assert_int_equal(m.n_transformers, 2 + 2 + 1 + 3 + 3);   /* down 1, 2; mid; up 0, 1 */
    assert_int_equal(m.down_blocks[0].kind, UNET_DOWN_BLOCK_2D);
    assert_int_equal(m.up_blocks[2].kind, UNET_UP_BLOCK_2D);
    assert_int_equal(m.down_blocks[1].attentions[0].n_blocks, 2);
    assert_int_equal(m.down_blocks[2].attentions[1].n_blocks, 10);
    assert_int_equal(m.mid_block.attentions[0].n_blocks, 10);
    assert_int_equal(m.up_blocks[0].attentions[2].n_blocks, 10);   /* reversed list */
    assert_int_equal(m.up_blocks[1].attentions[0].n_blocks, 2);
    for (int i = 0; i < m.n_transformers; i++) assert_int_equal(m.transformers[i].head_dim, 64);
    assert_int_equal(m.mid_block.attentions[0].heads, 20);
    assert_int_equal(m.up_blocks[1].attentions[0].heads, 10);
    assert_string_equal(m.add_linear_1.name, "add_embedding.linear_1");
    assert_ptr_equal(unet_find_layer(&m, "add_embedding.linear_2"), &m.add_linear_2);
    assert_non_null(unet_find_layer(&m, "mid_block.attentions.0.transformer_blocks.9.attn2.to_k"));
    assert_null(unet_find_layer(&m, "mid_block.attentions.0.transformer_blocks.10.attn2.to_k"));
    assert_null(unet_find_layer(&m, "down_blocks.0.attentions.0.proj_in"));
    assert_int_equal(unet_find_layer(&m, "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k")->in, 2048);
    free_unet(&m);
    /* SD 1.5 has no add_embedding */
    parse_config(&cfg, SD15);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_null(unet_find_layer(&m, "add_embedding.linear_1"));
    free_unet(&m);
}

/* ---- activation memory (unet_acts_floats: the memory model training and generate plan with) ----
 * Exact float counts, so that a change of the activation plan is seen: SD 1.5 / 2.1 at 64x64
 * latents with 77 context tokens (inference batch 2; training batch 1 without and with each
 * checkpointing mode), a non-square size, SDXL base at 128x128 and 64x64, and the pixel fixture. */
static void test_acts_floats_pinned(void **state) {
    (void)state;
    unet_config_t cfg;
    unet_t m;
    parse_config(&cfg, SD15);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_int_equal(unet_acts_floats(&m, 2, 64, 64, 77, 0, UNET_CKPT_NONE), 23767680);
    assert_int_equal(unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_NONE), 343879568);
    assert_int_equal(unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_TRANSFORMERS), 87248016);
    assert_int_equal(unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_ALL), 43008400);
    assert_int_equal(unet_acts_floats(&m, 2, 64, 64, 77, 1, UNET_CKPT_NONE), 687759120);
    assert_int_equal(unet_acts_floats(&m, 1, 32, 48, 7, 0, UNET_CKPT_NONE), 4459840);
    assert_int_equal(unet_acts_floats(&m, 1, 32, 48, 7, 1, UNET_CKPT_NONE), 128398736);
    free_unet(&m);
    parse_config(&cfg, SD21);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_int_equal(unet_acts_floats(&m, 2, 64, 64, 77, 0, UNET_CKPT_NONE), 23767680);
    assert_int_equal(unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_NONE), 343829136);
    assert_int_equal(unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_TRANSFORMERS), 87267728);
    assert_int_equal(unet_acts_floats(&m, 1, 64, 64, 77, 1, UNET_CKPT_ALL), 43028112);
    free_unet(&m);
    /* SDXL base at 1024 px (128x128 latents): 372 MB inference (B = 2); training B = 1: 9.9 GB,
     * 1.29 GB with checkpointed transformers, 0.58 GB with everything checkpointed */
    parse_config(&cfg, SDXL);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_int_equal(unet_acts_floats(&m, 2, 128, 128, 77, 0, UNET_CKPT_NONE), 93085312);
    assert_int_equal(unet_acts_floats(&m, 1, 128, 128, 77, 1, UNET_CKPT_NONE), 2477165008);
    assert_int_equal(unet_acts_floats(&m, 1, 128, 128, 77, 1, UNET_CKPT_TRANSFORMERS), 321365264);
    assert_int_equal(unet_acts_floats(&m, 1, 128, 128, 77, 1, UNET_CKPT_ALL), 144415888);
    assert_int_equal(unet_acts_floats(&m, 2, 64, 64, 77, 0, UNET_CKPT_NONE), 23289472);
    free_unet(&m);
    char *text = read_text(source_path("tests/fixtures/unet/pixel/unet/config.json"));
    parse_config(&cfg, text);
    free(text);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    assert_int_equal(unet_acts_floats(&m, 3, 16, 16, 5, 0, UNET_CKPT_NONE), 25552);
    assert_int_equal(unet_acts_floats(&m, 3, 16, 16, 5, 1, UNET_CKPT_NONE), 386992);
    assert_int_equal(unet_acts_floats(&m, 3, 16, 16, 5, 1, UNET_CKPT_TRANSFORMERS), 170992);
    assert_int_equal(unet_acts_floats(&m, 3, 16, 16, 5, 1, UNET_CKPT_ALL), 76528);
    free_unet(&m);
}

/* ---- the blocks of unet_2d_blocks.py (unet_t.down_blocks / mid_block / up_blocks) ---- */

static void assert_name(const char *got, const char *fmt, int i, int j) {
    char want[128];
    snprintf(want, sizeof want, fmt, i, j);
    if (strcmp(got, want) != 0) print_error("module %s where %s was expected\n", got, want);
    assert_string_equal(got, want);
}

/* Every block holds the modules diffusers names under it, and the blocks cover the stage
 * program between conv_in and the output stage, in order, each stage once. */
static void check_blocks(const unet_t *m) {
    const unet_config_t *c = &m->cfg;
    const int n = c->n_levels;
    int s = 1;
    for (int i = 0; i < n; i++) {
        const unet_block_t *b = &m->down_blocks[i];
        assert_int_equal(b->kind, c->down_attn[i] ? UNET_CROSS_ATTN_DOWN_BLOCK_2D : UNET_DOWN_BLOCK_2D);
        assert_int_equal(b->first_stage, s);
        assert_int_equal(b->n_resnets, c->layers_per_block[i]);
        assert_int_equal(b->n_attentions, c->down_attn[i] ? b->n_resnets : 0);
        for (int j = 0; j < b->n_resnets; j++) assert_name(b->resnets[j].conv1.name, "down_blocks.%d.resnets.%d.conv1", i, j);
        for (int j = 0; j < b->n_attentions; j++)
            assert_name(b->attentions[j].proj_in.name, "down_blocks.%d.attentions.%d.proj_in", i, j);
        if (i < n - 1) assert_name(b->sampler->name, "down_blocks.%d.downsamplers.%d.conv", i, 0);
        else assert_null(b->sampler);
        assert_int_equal(b->n_stages, b->n_resnets + b->n_attentions + (b->sampler != NULL));
        s += b->n_stages;
    }
    if (c->mid_block) {
        const unet_block_t *b = &m->mid_block;
        assert_int_equal(b->kind, UNET_MID_BLOCK_2D_CROSS_ATTN);
        assert_int_equal(b->first_stage, s);
        assert_int_equal(b->n_resnets, 2);
        assert_int_equal(b->n_attentions, 1);
        assert_name(b->resnets[0].conv1.name, "mid_block.resnets.%d.conv1", 0, 0);
        assert_name(b->resnets[1].conv1.name, "mid_block.resnets.%d.conv1", 1, 0);
        assert_name(b->attentions[0].proj_in.name, "mid_block.attentions.%d.proj_in", 0, 0);
        assert_null(b->sampler);
        assert_int_equal(b->n_stages, 3);
        s += b->n_stages;
    }
    for (int i = 0; i < n; i++) {
        const unet_block_t *b = &m->up_blocks[i];
        assert_int_equal(b->kind, c->up_attn[i] ? UNET_CROSS_ATTN_UP_BLOCK_2D : UNET_UP_BLOCK_2D);
        assert_int_equal(b->first_stage, s);
        assert_int_equal(b->n_resnets, c->layers_per_block[n - 1 - i] + 1);
        assert_int_equal(b->n_attentions, c->up_attn[i] ? b->n_resnets : 0);
        for (int j = 0; j < b->n_resnets; j++) {
            assert_name(b->resnets[j].conv1.name, "up_blocks.%d.resnets.%d.conv1", i, j);
            assert_true(m->stages[b->first_stage + j * (1 + (b->n_attentions > 0))].pop >= 0);   /* reads a skip */
        }
        for (int j = 0; j < b->n_attentions; j++)
            assert_name(b->attentions[j].proj_in.name, "up_blocks.%d.attentions.%d.proj_in", i, j);
        if (i < n - 1) assert_name(b->sampler->name, "up_blocks.%d.upsamplers.%d.conv", i, 0);
        else assert_null(b->sampler);
        assert_int_equal(b->n_stages, b->n_resnets + b->n_attentions + (b->sampler != NULL));
        s += b->n_stages;
    }
    assert_int_equal(s, m->n_stages - 1);   /* then the output stage */
}

static void test_blocks(void **state) {
    (void)state;
    unet_config_t cfg;
    unet_t m;
    parse_config(&cfg, SD15);
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    check_blocks(&m);
    assert_int_equal(m.down_blocks[0].kind, UNET_CROSS_ATTN_DOWN_BLOCK_2D);
    assert_int_equal(m.down_blocks[3].kind, UNET_DOWN_BLOCK_2D);
    assert_int_equal(m.up_blocks[0].kind, UNET_UP_BLOCK_2D);
    assert_int_equal(m.up_blocks[3].kind, UNET_CROSS_ATTN_UP_BLOCK_2D);
    assert_string_equal(m.up_blocks[3].attentions[2].blocks[0].attn2.to_k.name,
                        "up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k");
    assert_int_equal(m.up_blocks[3].attentions[2].blocks[0].attn2.to_k.in, 768);
    free_unet(&m);
    /* no mid block, mixed block types, per-block layer counts, two transformer layers */
    parse_config(&cfg, "{\"block_out_channels\": [32, 64, 64], \"down_block_types\": [\"DownBlock2D\","
                       " \"CrossAttnDownBlock2D\", \"DownBlock2D\"], \"up_block_types\": [\"CrossAttnUpBlock2D\","
                       " \"UpBlock2D\", \"CrossAttnUpBlock2D\"], \"layers_per_block\": [1, 2, 1],"
                       " \"mid_block_type\": null, \"transformer_layers_per_block\": 2, \"attention_head_dim\": 4,"
                       " \"norm_num_groups\": 8, \"cross_attention_dim\": 16}");
    assert_int_equal(unet_build_structure(&m, &cfg), 0);
    check_blocks(&m);
    assert_int_equal(m.up_blocks[0].attentions[1].n_blocks, 2);
    free_unet(&m);
    /* and the tiny fixtures that the golden tests run */
    const char *names[] = {"sd1", "sd2", "pixel"};
    for (int k = 0; k < 3; k++) {
        char rel[128];
        snprintf(rel, sizeof rel, "tests/fixtures/unet/%s/unet/config.json", names[k]);
        char *text = read_text(source_path(rel));
        parse_config(&cfg, text);
        free(text);
        assert_int_equal(unet_build_structure(&m, &cfg), 0);
        check_blocks(&m);
        free_unet(&m);
    }
}

/* ---- a tiny SDXL-shaped UNet with random weights ----
 * Every structural feature of SDXL base: 3 levels, the first without attention, linear
 * projection, text_time added conditioning, transformer_layers_per_block [1, 2, 3] (the mid
 * block takes the last entry, the up blocks the reversed list: up_blocks.0 has 3-block
 * transformers, up_blocks.1 2-block ones), heads per level. */

static const char *TINY_XL =
    "{\"addition_embed_type\": \"text_time\", \"addition_embed_type_num_heads\": 64, \"addition_time_embed_dim\": 8,"
    " \"attention_head_dim\": [1, 2, 2], \"block_out_channels\": [16, 32, 32], \"cross_attention_dim\": 24,"
    " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"UpBlock2D\"], \"layers_per_block\": 2,"
    " \"norm_num_groups\": 8, \"projection_class_embeddings_input_dim\": 60, \"transformer_layers_per_block\": [1, 2, 3],"
    " \"use_linear_projection\": true, \"upcast_attention\": null, \"resnet_out_scale_factor\": 1.0}";

typedef struct {
    unet_config_t cfg;
    unet_t m;
    int n;                 /* random tensors, owned */
    st_tensor_t *t;
    trng_t r;
    int B, H, W, T;
    float *sample, *timesteps, *ctx, *text, *time_ids, *dout;
    size_t n_sample, n_ctx, n_text, n_out;
    unet_added_cond_t added;
} xl_t;

/* One random tensor per registry entry: weights N(0, 1/fan_in), biases N(0, 0.1^2), norm gains
 * 1 + N(0, 0.1^2), offsets N(0, 0.1^2). */
static int xl_tensor(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim, const int64_t *shape) {
    xl_t *x = ctx;
    x->t = realloc(x->t, sizeof *x->t * (x->n + 1));
    st_tensor_t *t = &x->t[x->n++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->dtype = ST_F32;
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i], t->numel *= shape[i];
    t->nbytes = (size_t)t->numel * sizeof(float);
    float std = part ? 0.1f : spec->kind == LAYER_NORM ? 0.1f : 1.0f / sqrtf((float)layer_spec_fan_in(spec));
    float *d = alloc_normal(&x->r, (size_t)t->numel, std);
    if (spec->kind == LAYER_NORM && part == 0)
        for (int64_t i = 0; i < t->numel; i++) d[i] += 1.0f;
    t->data = d;
    return 0;
}

static const st_tensor_t *xl_get(void *ctx, const char *name) {
    xl_t *x = ctx;
    for (int i = 0; i < x->n; i++)
        if (strcmp(x->t[i].name, name) == 0) return &x->t[i];
    return NULL;
}

static void xl_open(xl_t *x) {
    memset(x, 0, sizeof *x);
    trng_seed(&x->r, 22);
    parse_config(&x->cfg, TINY_XL);
    layer_registry_t reg = {0};
    assert_int_equal(unet_registry(&x->cfg, &reg), 0);
    assert_int_equal(layer_registry_tensors(&reg, xl_tensor, x), 0);
    layer_registry_free(&reg);
    int rc = build_unet(&x->m, &x->cfg, xl_get, x);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    x->B = 2, x->H = 8, x->W = 8, x->T = 5;
    x->n_sample = (size_t)x->B * x->cfg.in_channels * x->H * x->W;
    x->n_ctx = (size_t)x->B * x->T * x->cfg.cross_attention_dim;
    x->n_text = (size_t)x->B * x->cfg.addition_text_embeds_dim;
    x->n_out = (size_t)x->B * x->cfg.out_channels * x->H * x->W;
    x->sample = alloc_normal(&x->r, x->n_sample, 1);
    x->ctx = alloc_normal(&x->r, x->n_ctx, 1);
    x->text = alloc_normal(&x->r, x->n_text, 1);
    x->dout = alloc_normal(&x->r, x->n_out, 1);
    x->timesteps = malloc(2 * sizeof(float));
    x->timesteps[0] = 999, x->timesteps[1] = 37;
    /* original (h, w), crop (top, left), target (h, w): what SDXL pipelines pass */
    const float ids[12] = {1024, 768, 0, 16, 1024, 1024, 512, 512, 64, 0, 1024, 1024};
    x->time_ids = malloc(sizeof ids);
    memcpy(x->time_ids, ids, sizeof ids);
    x->added.text_embeds = x->text, x->added.time_ids = x->time_ids;
}

static void xl_close(xl_t *x) {
    free_unet(&x->m);
    for (int i = 0; i < x->n; i++) free(x->t[i].name), free((void *)x->t[i].data);
    free(x->t);
    free(x->sample), free(x->ctx), free(x->text), free(x->dout), free(x->timesteps), free(x->time_ids);
}

static int xl_want(void *ctx, const char *path) {
    (void)ctx;
    static const char *const pick[] = {
        "add_embedding.linear_1",
        "down_blocks.0.resnets.1.conv2",
        "down_blocks.1.attentions.0.proj_in",
        "down_blocks.1.attentions.1.transformer_blocks.1.attn1.to_q",
        "mid_block.attentions.0.transformer_blocks.2.attn2.to_k",
        "up_blocks.0.attentions.1.transformer_blocks.2.ff.net.2",
        "up_blocks.1.attentions.2.transformer_blocks.1.attn2.to_v",
        "up_blocks.2.resnets.2.conv1",
    };
    for (size_t i = 0; i < sizeof pick / sizeof *pick; i++)
        if (strcmp(path, pick[i]) == 0) return 1;
    return 0;
}

/* Spectral shifts (residual form, non-zero deltas) on the xl_want layers, random shifts on every
 * norm gain. */
static void xl_shifts(xl_t *x) {
    assert_int_equal(unet_make_spectral(&x->m, 1, xl_want, NULL), 0);
    int n_sp = 0;
    for (int i = 0; i < x->m.n_layers; i++) {
        spectral_t *sp = x->m.layers[i]->w.sp;
        if (x->m.layers[i]->w.kind != WEIGHT_SPECTRAL) continue;
        for (int k = 0; k < sp->rank; k++) sp->delta[k] = 0.2f * sp->S[k] * trng_normal(&x->r) + 0.1f;
        n_sp++;
    }
    assert_int_equal(n_sp, 8);
    unet_add_norm_shifts(&x->m, NORMSHIFT_ELEMENT);
    for (int i = 0; i < x->m.n_norms; i++) fill_normal(&x->r, x->m.norms[i]->shift, (size_t)x->m.norms[i]->C, 0.1f);
}

static void xl_forward(xl_t *x, unet_acts_t *a, float *out) {
    int rc = unet_forward(out, &x->m, a, x->sample, x->timesteps, x->ctx, &x->added, x->B, x->H, x->W, x->T);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

typedef struct {
    float *out, *dsample, *dctx, *dtext;
    unet_grads_t g;
} xl_run_t;

static void xl_train(xl_t *x, xl_run_t *r, unet_ckpt_t ckpt) {
    unet_acts_t a;
    assert_int_equal(unet_acts_build(&a, &x->m, x->B, x->H, x->W, x->T, 1, ckpt), 0);
    r->out = alloc_zeros(x->n_out);
    r->dsample = alloc_zeros(x->n_sample);
    r->dctx = alloc_zeros(x->n_ctx);
    r->dtext = alloc_zeros(x->n_text);
    xl_forward(x, &a, r->out);
    assert_int_equal(unet_grads_alloc(&r->g, &x->m, UNET_GRAD_SHIFTS | UNET_GRAD_DENSE), 0);
    unet_backward(r->dsample, r->dctx, r->dtext, &r->g, x->dout, &x->m, &a);
    unet_acts_free(&a);
}

static void xl_run_free(xl_run_t *r) {
    free(r->out), free(r->dsample), free(r->dctx), free(r->dtext);
    unet_grads_free(&r->g);
}

/* add_embedding on its own: add_in against cat(text_embeds, the sinusoids of the time ids) and
 * the output against linear_2(SiLU(linear_1(.))), both evaluated in double; d text_embeds,
 * d linear_1 (dense, then a spectral delta) and d linear_2 by finite differences; backward
 * accumulates into dtext_embeds. */
typedef struct {
    xl_t *x;
    float *emb, *add_in, *h, *act, *w;
} addfx_t;

static double add_loss(void *p) {
    addfx_t *c = p;
    unet_add_embedding_forward(c->emb, c->add_in, c->h, c->act, &c->x->added, &c->x->m, c->x->B);
    return dot_loss(c->emb, c->w, (size_t)c->x->B * c->x->cfg.time_embed_dim);
}

static void test_sdxl_add_embedding(void **state) {
    (void)state;
    xl_t x;
    xl_open(&x);
    const unet_config_t *c = &x.cfg;
    const int B = x.B, Dt = c->addition_text_embeds_dim, Din = c->addition_embed_in, Td = c->time_embed_dim;
    const int dim = c->addition_time_embed_dim, half = dim / 2;
    assert_int_equal(Dt, 12);
    assert_int_equal(Din, 60);
    addfx_t f = {&x, alloc_zeros((size_t)B * Td), alloc_zeros((size_t)B * Din), alloc_zeros((size_t)B * Td),
                 alloc_zeros((size_t)B * Td), alloc_normal(&x.r, (size_t)B * Td, 1)};
    add_loss(&f);
    /* the reference in double: flip_sin_to_cos (cos first), freq_shift 0 */
    const layer_t *l1 = &x.m.add_linear_1, *l2 = &x.m.add_linear_2;
    const float *W1 = l1->w.data, *W2 = l2->w.data;
    float *want_in = malloc(sizeof(float) * B * Din), *want = malloc(sizeof(float) * B * Td);
    for (int b = 0; b < B; b++) {
        double in[64], hh[64];
        for (int i = 0; i < Dt; i++) in[i] = x.text[b * Dt + i];
        for (int k = 0; k < UNET_N_TIME_IDS; k++)
            for (int i = 0; i < half; i++) {
                const double arg = x.time_ids[b * UNET_N_TIME_IDS + k] * exp(-log(10000.0) * i / half);
                in[Dt + k * dim + i] = cos(arg);
                in[Dt + k * dim + half + i] = sin(arg);
            }
        for (int i = 0; i < Din; i++) want_in[b * Din + i] = (float)in[i];
        for (int o = 0; o < Td; o++) {
            double s = l1->bias[o];
            for (int i = 0; i < Din; i++) s += (double)W1[o * Din + i] * in[i];
            hh[o] = s / (1 + exp(-s));
        }
        for (int o = 0; o < Td; o++) {
            double s = l2->bias[o];
            for (int i = 0; i < Td; i++) s += (double)W2[o * Td + i] * hh[i];
            want[b * Td + o] = (float)s;
        }
    }
    /* float32 sinusoids of ids up to 1024 carry an argument error of ~1024 * 2^-24 */
    assert_close("add_in", f.add_in, want_in, (size_t)B * Din, 1e-4);
    assert_close("add_embedding out", f.emb, want, (size_t)B * Td, 1e-4);
    /* gradients */
    unet_grads_t g;
    assert_int_equal(unet_grads_alloc(&g, &x.m, UNET_GRAD_SHIFTS | UNET_GRAD_DENSE), 0);
    float *dtext = alloc_zeros(x.n_text);
    unet_add_embedding_backward(dtext, &g, f.w, f.add_in, f.h, f.act, &x.m, B);
    const double tol = 1e-2;
    fd_check("add_embedding d text_embeds", x.text, dtext, x.n_text, 12, add_loss, &f, 1e-2f, tol);
    fd_check("add_embedding.linear_1 dW", (float *)W1, g.layers[l1->id].dw, (size_t)Td * Din, 12, add_loss, &f, 1e-2f,
             tol);
    fd_check("add_embedding.linear_1 d bias", l1->bias, g.layers[l1->id].dbias, (size_t)Td, 8, add_loss, &f, 1e-2f, tol);
    fd_check("add_embedding.linear_2 dW", (float *)W2, g.layers[l2->id].dw, (size_t)Td * Td, 12, add_loss, &f, 1e-2f,
             tol);
    /* accumulation, and NULL dtext_embeds (parameters only) */
    float *twice = malloc(sizeof(float) * x.n_text);
    for (size_t i = 0; i < x.n_text; i++) twice[i] = 2 * dtext[i];
    add_loss(&f);
    unet_add_embedding_backward(dtext, NULL, f.w, f.add_in, f.h, f.act, &x.m, B);
    assert_close("d text_embeds accumulated", dtext, twice, x.n_text, 1e-6);
    unet_add_embedding_backward(NULL, &g, f.w, f.add_in, f.h, f.act, &x.m, B);
    unet_grads_free(&g);
    /* linear_1 spectral: d delta */
    xl_shifts(&x);
    assert_int_equal(l1->w.kind, WEIGHT_SPECTRAL);
    assert_int_equal(unet_grads_alloc(&g, &x.m, UNET_GRAD_SHIFTS), 0);
    add_loss(&f);
    unet_add_embedding_backward(NULL, &g, f.w, f.add_in, f.h, f.act, &x.m, B);
    fd_check("add_embedding.linear_1 d delta", l1->w.sp->delta, g.layers[l1->id].dw, (size_t)l1->w.sp->rank, 8,
             add_loss, &f, 1e-3f, tol);
    unet_grads_free(&g);
    free(f.emb), free(f.add_in), free(f.h), free(f.act), free(f.w);
    free(want_in), free(want), free(dtext), free(twice);
    xl_close(&x);
}

typedef struct {
    xl_t *x;
    unet_acts_t *a;
    float *out;
} xl_fd_t;

static double xl_loss(void *p) {
    xl_fd_t *c = p;
    xl_forward(c->x, c->a, c->out);
    return dot_loss(c->out, c->x->dout, c->x->n_out);
}

/* The whole tiny SDXL UNet: d sample, d ctx, d text_embeds, d delta of spectral layers at the
 * structural features (add_embedding, a level without attention, a linear proj_in, the 2nd block of
 * a 2-block down transformer, the 3rd block of the mid and of an up transformer), d shift of norm
 * gains, dense gradients, all by finite differences. */
static void test_sdxl_fd_whole_unet(void **state) {
    (void)state;
    xl_t x;
    xl_open(&x);
    xl_shifts(&x);
    xl_run_t r;
    xl_train(&x, &r, UNET_CKPT_NONE);
    unet_acts_t ai;
    assert_int_equal(unet_acts_build(&ai, &x.m, x.B, x.H, x.W, x.T, 0, UNET_CKPT_NONE), 0);
    xl_fd_t c = {&x, &ai, alloc_zeros(x.n_out)};
    const double tol = 1e-2;
    fd_report("xl d sample", fd_check("xl d sample", x.sample, r.dsample, x.n_sample, 10, xl_loss, &c, 1e-2f, tol));
    fd_report("xl d ctx", fd_check("xl d ctx", x.ctx, r.dctx, x.n_ctx, 10, xl_loss, &c, 1e-2f, tol));
    fd_report("xl d text_embeds", fd_check("xl d text_embeds", x.text, r.dtext, x.n_text, 12, xl_loss, &c, 1e-2f, tol));
    int n_sp = 0;
    for (int i = 0; i < x.m.n_layers; i++) {
        layer_t *l = x.m.layers[i];
        if (l->w.kind != WEIGHT_SPECTRAL) continue;
        char name[256];
        snprintf(name, sizeof name, "xl %s d delta", l->name);
        fd_report(name, fd_check(name, l->w.sp->delta, r.g.layers[l->id].dw, (size_t)l->w.sp->rank, 4, xl_loss, &c,
                                 3e-2f, tol));
        n_sp++;
    }
    assert_int_equal(n_sp, 8);
    const char *norms[] = {"down_blocks.0.resnets.0.norm1", "mid_block.attentions.0.transformer_blocks.2.norm3",
                           "up_blocks.0.attentions.2.transformer_blocks.1.norm2", "up_blocks.1.attentions.0.norm"};
    for (int k = 0; k < 4; k++) {
        norm_layer_t *n = unet_find_norm(&x.m, norms[k]);
        assert_non_null(n);
        char name[256];
        snprintf(name, sizeof name, "xl %s d shift", norms[k]);
        fd_report(name, fd_check(name, n->shift, r.g.norms[n->id].dshift, (size_t)n->C, 4, xl_loss, &c, 1e-2f, tol));
    }
    layer_t *a2 = unet_find_layer(&x.m, "add_embedding.linear_2");
    layer_t *po = unet_find_layer(&x.m, "up_blocks.0.attentions.0.proj_out");
    fd_report("xl add_embedding.linear_2 d bias", fd_check("xl add_embedding.linear_2 d bias", a2->bias,
                                                           r.g.layers[a2->id].dbias, (size_t)a2->out, 6, xl_loss, &c,
                                                           1e-2f, tol));
    fd_report("xl proj_out dW", fd_check("xl proj_out dW", (float *)po->w.data, r.g.layers[po->id].dw,
                                         (size_t)po->w.rows * po->w.cols, 8, xl_loss, &c, 1e-2f, tol));
    free(c.out);
    unet_acts_free(&ai);
    xl_run_free(&r);
    xl_close(&x);
}

static void xl_equal(const xl_run_t *a, const xl_run_t *b, const xl_t *x) {
    assert_memory_equal(a->out, b->out, sizeof(float) * x->n_out);
    assert_memory_equal(a->dsample, b->dsample, sizeof(float) * x->n_sample);
    assert_memory_equal(a->dctx, b->dctx, sizeof(float) * x->n_ctx);
    assert_memory_equal(a->dtext, b->dtext, sizeof(float) * x->n_text);
    assert_int_equal(a->g.n_floats, b->g.n_floats);
    assert_memory_equal(a->g.memory, b->g.memory, sizeof(float) * a->g.n_floats);
}

/* Modes on the SDXL shape: inference (factored, then baked) = training, bit for bit / to
 * rounding; checkpointing changes no gradient bit; a forward with B' < B; the conditioning
 * matters (other time ids or text embeds change the output); the memory model counts the added
 * buffers exactly. */
static void test_sdxl_modes(void **state) {
    (void)state;
    xl_t x;
    xl_open(&x);
    xl_shifts(&x);
    xl_run_t r0, r1, r2;
    xl_train(&x, &r0, UNET_CKPT_NONE);
    xl_train(&x, &r1, UNET_CKPT_TRANSFORMERS);
    xl_train(&x, &r2, UNET_CKPT_ALL);
    xl_equal(&r0, &r1, &x);
    xl_equal(&r0, &r2, &x);
    unet_acts_t ai;
    assert_int_equal(unet_acts_build(&ai, &x.m, x.B, x.H, x.W, x.T, 0, UNET_CKPT_NONE), 0);
    float *out = alloc_zeros(x.n_out), *out2 = alloc_zeros(x.n_out);
    xl_forward(&x, &ai, out);
    assert_memory_equal(out, r0.out, sizeof(float) * x.n_out);
    unet_bake(&x.m);
    xl_forward(&x, &ai, out);
    assert_close("xl baked", out, r0.out, x.n_out, 1e-5);
    unet_unbake(&x.m);
    /* the second sample alone */
    const unet_added_cond_t one = {x.text + x.n_text / 2, x.time_ids + UNET_N_TIME_IDS};
    assert_int_equal(unet_forward(out, &x.m, &ai, x.sample + x.n_sample / 2, x.timesteps + 1, x.ctx + x.n_ctx / 2, &one,
                                  1, x.H, x.W, x.T), 0);
    assert_close("xl out[1] alone", out, r0.out + x.n_out / 2, x.n_out / 2, 1e-5);
    /* each part of the conditioning reaches the output */
    xl_forward(&x, &ai, out);
    x.time_ids[4] = 896;   /* target height of sample 0 */
    xl_forward(&x, &ai, out2);
    assert_true(rel_error(out2, out, x.n_out / 2) > 1e-4);
    assert_memory_equal(out2 + x.n_out / 2, out + x.n_out / 2, sizeof(float) * x.n_out / 2);
    x.time_ids[4] = 1024;
    x.text[x.n_text - 1] += 1.0f;
    xl_forward(&x, &ai, out2);
    assert_true(rel_error(out2 + x.n_out / 2, out + x.n_out / 2, x.n_out / 2) > 1e-4);
    x.text[x.n_text - 1] -= 1.0f;
    /* memory: exactly the added buffers over the same UNet without text_time */
    unet_config_t plain = x.cfg;
    plain.addition_text_time = 0;
    unet_t mp;
    assert_int_equal(unet_build_structure(&mp, &plain), 0);
    /* add_in, add_h, add_a, add_e, each rounded up to 16 floats as base/bump.h hands them out */
    const size_t up16_in = ((size_t)x.B * x.cfg.addition_embed_in + 15) & ~(size_t)15;
    const size_t up16_t = ((size_t)x.B * x.cfg.time_embed_dim + 15) & ~(size_t)15;
    const size_t extra = up16_in + 3 * up16_t;
    for (int training = 0; training <= 1; training++)
        for (int ck = UNET_CKPT_NONE; ck <= UNET_CKPT_ALL; ck++)
            assert_int_equal(unet_acts_floats(&x.m, x.B, x.H, x.W, x.T, training, (unet_ckpt_t)ck),
                             unet_acts_floats(&mp, x.B, x.H, x.W, x.T, training, (unet_ckpt_t)ck) + extra);
    free_unet(&mp);
    free(out), free(out2);
    unet_acts_free(&ai);
    xl_run_free(&r0), xl_run_free(&r1), xl_run_free(&r2);
    xl_close(&x);
}

/* A text_time UNet refuses a forward without its conditioning (or with half of it); a UNet
 * without text_time refuses conditioning; both name what is wrong and leave the output alone. */
static void test_sdxl_errors(void **state) {
    (void)state;
    xl_t x;
    xl_open(&x);
    unet_acts_t a;
    assert_int_equal(unet_acts_build(&a, &x.m, x.B, x.H, x.W, x.T, 0, UNET_CKPT_NONE), 0);
    float *out = alloc_zeros(x.n_out);
    assert_int_equal(unet_forward(out, &x.m, &a, x.sample, x.timesteps, x.ctx, NULL, x.B, x.H, x.W, x.T), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "text_time"));
    assert_non_null(strstr(sd_last_error(), "time ids"));
    const unet_added_cond_t half1 = {x.text, NULL}, half2 = {NULL, x.time_ids};
    assert_int_equal(unet_forward(out, &x.m, &a, x.sample, x.timesteps, x.ctx, &half1, x.B, x.H, x.W, x.T), SD_ERR_ARG);
    assert_int_equal(unet_forward(out, &x.m, &a, x.sample, x.timesteps, x.ctx, &half2, x.B, x.H, x.W, x.T), SD_ERR_ARG);
    for (size_t i = 0; i < x.n_out; i++) assert_true(out[i] == 0.0f);
    free(out);
    unet_acts_free(&a);
    /* SD 1.x fixture with conditioning */
    fx_t f;
    fx_open(&f, "sd1", 0);
    acts_ok(&f, &a, 0, UNET_CKPT_NONE);
    out = alloc_zeros(f.n_out);
    assert_int_equal(unet_forward(out, &f.m, &a, f.sample, f.timesteps, f.ctx, &x.added, f.B, f.H, f.W, f.T),
                     SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "without addition_embed_type"));
    free(out);
    unet_acts_free(&a);
    fx_close(&f);
    xl_close(&x);
}

/* ---- the Attention pair (attn1 / attn2) against a direct evaluation ---- */

typedef struct {
    int B, S, Tk, Ckv, heads, hd, self;
    unet_attention_t at;
    unet_attention_acts_t a;
    float *w[4], *bias, *xq, *xkv, *out, *dout;
} attn_fx_t;

static void attn_layer(layer_t *l, float *w, float *bias, int in, int out, int id) {
    memset(l, 0, sizeof *l);
    l->w = weight_dense(w, ST_F32, out, in);
    l->bias = bias;
    l->in = in, l->out = out, l->k = 1, l->stride = 1, l->id = id;
}

static void attn_fx(attn_fx_t *f, int self, trng_t *r) {
    memset(f, 0, sizeof *f);
    f->B = 2, f->S = 5, f->heads = 2, f->hd = 4, f->self = self;
    f->Tk = self ? f->S : 3;
    const int D = f->heads * f->hd, N = f->B * f->S;
    f->Ckv = self ? D : 6;
    const int in[4] = {D, f->Ckv, f->Ckv, D};
    for (int i = 0; i < 4; i++) f->w[i] = alloc_normal(r, (size_t)D * in[i], 0.4f);
    f->bias = alloc_normal(r, (size_t)D, 0.1f);
    attn_layer(&f->at.to_q, f->w[0], NULL, D, D, 0);
    attn_layer(&f->at.to_k, f->w[1], NULL, f->Ckv, D, 1);
    attn_layer(&f->at.to_v, f->w[2], NULL, f->Ckv, D, 2);
    attn_layer(&f->at.to_out, f->w[3], f->bias, D, D, 3);
    f->xq = alloc_normal(r, (size_t)N * D, 1);
    f->xkv = self ? f->xq : alloc_normal(r, (size_t)f->B * f->Tk * f->Ckv, 1);
    f->out = alloc_zeros((size_t)N * D);
    f->dout = alloc_normal(r, (size_t)N * D, 1);
    f->a.q = alloc_zeros((size_t)N * D);
    f->a.ao = alloc_zeros((size_t)N * D);
    f->a.k = alloc_zeros((size_t)f->B * f->Tk * D);
    f->a.v = alloc_zeros((size_t)f->B * f->Tk * D);
    f->a.lse = alloc_zeros((size_t)f->B * f->heads * f->S);
}

static void attn_fx_free(attn_fx_t *f) {
    for (int i = 0; i < 4; i++) free(f->w[i]);
    if (!f->self) free(f->xkv);
    free(f->bias), free(f->xq), free(f->out), free(f->dout);
    free(f->a.q), free(f->a.ao), free(f->a.k), free(f->a.v), free(f->a.lse);
}

static void attn_run(attn_fx_t *f) {
    unet_attention_forward(f->out, &f->a, f->xq, f->xkv, &f->at, NULL, f->B, f->S, f->Tk, f->heads, f->hd);
}

/* out = to_out(softmax(q k^T / sqrt(hd)) v) per batch and head, in double. */
static void attn_direct(double *out, const attn_fx_t *f) {
    const int D = f->heads * f->hd;
    for (int b = 0; b < f->B; b++)
        for (int s = 0; s < f->S; s++) {
            const float *x = f->xq + ((size_t)b * f->S + s) * D;
            double q[64], ao[64];
            for (int d = 0; d < D; d++) {
                q[d] = 0;
                for (int c = 0; c < D; c++) q[d] += (double)f->w[0][d * D + c] * x[c];
            }
            for (int h = 0; h < f->heads; h++) {
                double p[16], k[16][8], v[16][8], mx = -1e300, sum = 0;
                for (int t = 0; t < f->Tk; t++) {
                    const float *y = f->xkv + ((size_t)b * f->Tk + t) * f->Ckv;
                    p[t] = 0;
                    for (int e = 0; e < f->hd; e++) {
                        const int d = h * f->hd + e;
                        k[t][e] = v[t][e] = 0;
                        for (int c = 0; c < f->Ckv; c++) {
                            k[t][e] += (double)f->w[1][d * f->Ckv + c] * y[c];
                            v[t][e] += (double)f->w[2][d * f->Ckv + c] * y[c];
                        }
                        p[t] += q[d] * k[t][e] / sqrt((double)f->hd);
                    }
                    mx = fmax(mx, p[t]);
                }
                for (int t = 0; t < f->Tk; t++) sum += p[t] = exp(p[t] - mx);
                for (int e = 0; e < f->hd; e++) {
                    ao[h * f->hd + e] = 0;
                    for (int t = 0; t < f->Tk; t++) ao[h * f->hd + e] += p[t] / sum * v[t][e];
                }
            }
            for (int d = 0; d < D; d++) {
                double o = f->bias[d];
                for (int c = 0; c < D; c++) o += (double)f->w[3][d * D + c] * ao[c];
                out[((size_t)b * f->S + s) * D + d] = o;
            }
        }
}

static double attn_loss(void *p) {
    attn_fx_t *f = p;
    attn_run(f);
    return dot_loss(f->out, f->dout, (size_t)f->B * f->S * f->heads * f->hd);
}

/* Self-attention (xkv = xq: one input gradient, dxq == dxkv) and cross-attention (3 context
 * tokens of 6 channels): the output against attn_direct; d(inputs), dW and d(bias) by finite
 * differences; backward accumulates. */
static void test_attention_pair(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 18);
    for (int self = 1; self >= 0; self--) {
        attn_fx_t f;
        attn_fx(&f, self, &r);
        const int D = f.heads * f.hd;
        const size_t nq = (size_t)f.B * f.S * D, nkv = (size_t)f.B * f.Tk * f.Ckv;
        attn_run(&f);
        double *want = calloc(nq, sizeof(double));
        float *wantf = malloc(nq * sizeof(float));
        attn_direct(want, &f);
        for (size_t i = 0; i < nq; i++) wantf[i] = (float)want[i];
        assert_close(self ? "attn1 out" : "attn2 out", f.out, wantf, nq, 1e-5);
        /* gradients: parameters through a grads table indexed by layer id */
        unet_layer_grads_t lg[4];
        const int in[4] = {D, f.Ckv, f.Ckv, D};
        for (int i = 0; i < 4; i++) lg[i].dw = alloc_zeros((size_t)D * in[i]), lg[i].dbias = NULL;
        lg[3].dbias = alloc_zeros((size_t)D);
        unet_grads_t g = {.n_layers = 4, .layers = lg};
        float *dxq = alloc_zeros(nq), *dxkv = self ? dxq : alloc_zeros(nkv);
        unet_attention_backward(dxq, dxkv, &g, f.dout, f.xq, f.xkv, &f.a, &f.at, NULL, f.B, f.S, f.Tk, f.heads, f.hd);
        const double tol = 1e-2;
        fd_check("d xq", f.xq, dxq, nq, 12, attn_loss, &f, 1e-2f, tol);
        if (!self) fd_check("d xkv", f.xkv, dxkv, nkv, 12, attn_loss, &f, 1e-2f, tol);
        fd_check("to_q dW", f.w[0], lg[0].dw, (size_t)D * D, 8, attn_loss, &f, 1e-2f, tol);
        fd_check("to_k dW", f.w[1], lg[1].dw, (size_t)D * f.Ckv, 8, attn_loss, &f, 1e-2f, tol);
        fd_check("to_v dW", f.w[2], lg[2].dw, (size_t)D * f.Ckv, 8, attn_loss, &f, 1e-2f, tol);
        fd_check("to_out dW", f.w[3], lg[3].dw, (size_t)D * D, 8, attn_loss, &f, 1e-2f, tol);
        fd_check("to_out d bias", f.bias, lg[3].dbias, (size_t)D, 8, attn_loss, &f, 1e-2f, tol);
        /* a second backward adds the same again */
        attn_run(&f);
        float *once = malloc(nq * sizeof(float)), *twice = malloc(nq * sizeof(float));
        memcpy(once, dxq, nq * sizeof(float));
        unet_attention_backward(dxq, dxkv, NULL, f.dout, f.xq, f.xkv, &f.a, &f.at, NULL, f.B, f.S, f.Tk, f.heads,
                                f.hd);
        for (size_t i = 0; i < nq; i++) twice[i] = 2 * once[i];
        assert_close("d xq accumulated", dxq, twice, nq, 1e-6);
        free(once), free(twice), free(want), free(wantf), free(dxq);
        if (!self) free(dxkv);
        for (int i = 0; i < 4; i++) free(lg[i].dw);
        free(lg[3].dbias);
        attn_fx_free(&f);
    }
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_sd1),
        cmocka_unit_test(test_golden_sd2),
        cmocka_unit_test(test_golden_pixel),
        cmocka_unit_test(test_partial_batch),
        cmocka_unit_test(test_inference_equals_training),
        cmocka_unit_test(test_checkpointing_equal),
        cmocka_unit_test(test_fd_whole_unet),
        cmocka_unit_test(test_backward_accumulates),
        cmocka_unit_test(test_make_spectral),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_sd_structure),
        cmocka_unit_test(test_sdxl_structure),
        cmocka_unit_test(test_acts_floats_pinned),
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_attention_pair),
        cmocka_unit_test(test_sdxl_add_embedding),
        cmocka_unit_test(test_sdxl_fd_whole_unet),
        cmocka_unit_test(test_sdxl_modes),
        cmocka_unit_test(test_sdxl_errors),
    };
    int rc = RUN_TESTS(argc, argv, "unet", tests, NULL, NULL);
    scratch_free_all();
    return rc;
}
