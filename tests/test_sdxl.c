/* SDXL against float64 PyTorch (tests/fixtures/sdxl/golden.safetensors, written by
 * tests/reference/gen_sdxl_golden.py) on the tiny SDXL-shaped model tests/fixtures/tiny-sdxl, in
 * both file layouts (the diffusers folder and the sgm single file hold the same float16-exact
 * values and describe the same model, so both must give the same numbers): the UNet with the
 * text_time added conditioning (first level without attention, transformer_layers_per_block
 * [1, 2, 3]), with spectral shifts on add_embedding and multi-layer transformers and its gradients
 * (sample, context, pooled text embedding, deltas); both text encoders' penultimate, clip_skip 1
 * and last hidden states and text_encoder_2's pooled projection; the pipeline's prompt encoding
 * and two whole 2-step CFG Euler runs with micro-conditioning; one training step (loss and every
 * shift gradient). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/runtime.h"
#include "io/model.h"
#include "models/clip.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/pipeline.h"
#include "train/trainer.h"

/* Relative errors measured (C float32 vs PyTorch float64, max |a - b| / max |b|; the test prints
 * them with SVDIFF_GOLDEN_VERBOSE=1), Release / ASan (-O1) build, the same in both layouts:
 *   UNet out 6.0e-7 / 5.0e-7; with shifts 9.8e-7 / 1.1e-6, d sample 5.2e-6 / 4.2e-6, d ctx 3.1e-6 /
 *   3.3e-6, d text_embeds 7.7e-6 / 5.1e-6, d delta <= 1.1e-5 / 1.3e-5
 *   text encoders <= 8.2e-7 / 4.4e-7, pooled 2.8e-7 / 1.8e-7; prompt context 2.9e-7 / 1.9e-7
 *   sampling: per step <= 9.0e-7 / 1.0e-6, decoded image <= 1.2e-6 / 1.5e-6
 *   training step: loss 1.4853008 (PyTorch 1.4853013), gradients <= 1.5e-4 of their largest entry
 * so TOL = 1e-4, the tolerance of the other golden tests, has a margin of 7x or more (the
 * training gradients are held to 1e-3, as in test_train). */
#define TOL 1e-4
#define GOLDEN "sdxl/golden.safetensors"
#define FOLDER "tests/fixtures/tiny-sdxl/diffusers"
#define SINGLE "tests/fixtures/tiny-sdxl/sdxl.safetensors"
/* The shapes of gen_sdxl_golden.py. */
#define UB 2
#define UH 8
#define UW 12
#define NTOK 77
#define CTX_DIM 24      /* 8 (text_encoder) + 16 (text_encoder_2) */
#define POOLED_DIM 12   /* text_encoder_2's projection_dim */
#define PROMPT "a photo of a cat sitting on a red chair, highly detailed"
#define NEGATIVE "blurry, dark"

static int verbose(void) {
    const char *v = getenv("SVDIFF_GOLDEN_VERBOSE");
    return v && *v && *v != '0';
}

static void check(const char *label, const float *got, const st_file_t *g, const char *key, size_t n) {
    float *want = golden_get(g, key, (int64_t)n);
    if (verbose()) printf("  %-64s rel err %.3g\n", label, rel_error(got, want, n));
    assert_close(label, got, want, n, TOL);
    free(want);
}

static void open_model(model_t *m, const char *rel) {
    int rc = model_open(m, source_path(rel), NULL);
    if (rc) print_error("model_open(%s): %s\n", rel, sd_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(model_family(m), MODEL_FAMILY_SDXL);
    assert_string_equal(model_family_name(model_family(m)), "sdxl");
    assert_int_equal(m->layout, strstr(rel, ".safetensors") ? MODEL_LAYOUT_LDM_SDXL : MODEL_LAYOUT_DIFFUSERS);
}

/* ---- the UNet ---- */

typedef struct {
    float *sample, *timesteps, *ctx, *text_embeds, *time_ids;
} unet_inputs_t;

static void unet_inputs(unet_inputs_t *in, const st_file_t *g) {
    in->sample = golden_get(g, "unet.sample", UB * 4 * UH * UW);
    in->timesteps = golden_get(g, "unet.timesteps", UB);
    in->ctx = golden_get(g, "unet.ctx", UB * NTOK * CTX_DIM);
    in->text_embeds = golden_get(g, "unet.text_embeds", UB * POOLED_DIM);
    in->time_ids = golden_get(g, "unet.time_ids", UB * UNET_N_TIME_IDS);
}

static void unet_inputs_free(unet_inputs_t *in) {
    free(in->sample), free(in->timesteps), free(in->ctx), free(in->text_embeds), free(in->time_ids);
}

static void unet_build_ok(unet_t *u, const model_t *m) {
    int rc = build_unet_from_component(u, &m->unet);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    /* the tiny config: projection_class_embeddings_input_dim 60 = 12 + 6 * 8 */
    assert_int_equal(u->cfg.addition_text_time, 1);
    assert_int_equal(u->cfg.addition_time_embed_dim, 8);
    assert_int_equal(u->cfg.addition_embed_in, 60);
    assert_int_equal(u->cfg.addition_text_embeds_dim, POOLED_DIM);
    assert_int_equal(u->cfg.cross_attention_dim, CTX_DIM);
}

static void unet_forward_ok(float *out, const unet_t *u, unet_acts_t *a, const unet_inputs_t *in) {
    const unet_added_cond_t added = {.text_embeds = in->text_embeds, .time_ids = in->time_ids};
    int rc = unet_forward(out, u, a, in->sample, in->timesteps, in->ctx, &added, UB, UH, UW, NTOK);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

/* The plain UNet (stored weights) of a layout against unet.out_base. */
static void check_unet(const char *rel) {
    st_file_t g;
    golden_open(&g, GOLDEN);
    model_t m;
    open_model(&m, rel);
    unet_t u;
    unet_build_ok(&u, &m);
    unet_inputs_t in;
    unet_inputs(&in, &g);
    unet_acts_t a;
    assert_int_equal(unet_acts_build(&a, &u, UB, UH, UW, NTOK, 0, UNET_CKPT_NONE), 0);
    const size_t n_out = (size_t)UB * 4 * UH * UW;
    float *out = alloc_zeros(n_out);
    unet_forward_ok(out, &u, &a, &in);
    char label[128];
    snprintf(label, sizeof label, "unet out (%s)", rel);
    check(label, out, &g, "unet.out_base", n_out);

    /* the added conditioning is not decoration: other time ids give another output */
    float *out2 = alloc_zeros(n_out);
    in.time_ids[0] += 64.0f;
    unet_forward_ok(out2, &u, &a, &in);
    assert_true(rel_error(out2, out, n_out / UB) > 1e-3);   /* row 0 moved */
    assert_true(rel_error(out2 + n_out / UB, out + n_out / UB, n_out / UB) == 0.0);   /* row 1 did not */
    free(out), free(out2);
    unet_acts_free(&a);
    unet_inputs_free(&in);
    free_unet(&u);
    model_close(&m);
    st_close(&g);
}

static void test_sdxl_unet_folder(void **state) {
    (void)state;
    check_unet(FOLDER);
}

static void test_sdxl_unet_single_file(void **state) {
    (void)state;
    check_unet(SINGLE);
}

/* Makes layer `path` spectral with the golden factors, the stored W kept as the base. */
static void set_spectral(unet_t *u, const st_file_t *g, const char *path) {
    layer_t *l = unet_find_layer(u, path);
    if (!l) print_error("no layer %s\n", path);
    assert_non_null(l);
    const int rows = l->w.rows, cols = l->w.cols, rank = rows < cols ? rows : cols;
    char key[256];
#define GET(suffix, numel) (snprintf(key, sizeof key, "unet.%s.%s", path, suffix), golden_get(g, key, numel))
    float *U = GET("U", (int64_t)rows * rank), *S = GET("S", rank), *Vh = GET("Vh", (int64_t)rank * cols);
    float *delta = GET("delta", rank);
#undef GET
    spectral_t *sp = calloc(1, sizeof *sp);
    spectral_init_factors(sp, U, S, Vh, rows, cols, rank);
    memcpy(sp->delta, delta, sizeof(float) * rank);
    sp->scale = 1.0f;
    weight_free(&l->w);
    l->w.kind = WEIGHT_SPECTRAL;
    l->w.sp = sp;
    free(U), free(S), free(Vh), free(delta);
}

/* Spectral shifts on add_embedding's two linears and on layers of the 2- and 3-layer
 * transformers (the golden's "unet_spectral" list): output, d sample, d ctx, d text_embeds (what
 * lets text_encoder_2's shifts train through the pooled embedding) and every d delta. */
static void test_sdxl_unet_shifts_backward(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, GOLDEN);
    model_t m;
    open_model(&m, FOLDER);
    unet_t u;
    unet_build_ok(&u, &m);
    char list[1024];
    snprintf(list, sizeof list, "%s", st_meta(&g, "unet_spectral"));
    int n_spectral = 0;
    for (char *p = strtok(list, ","); p; p = strtok(NULL, ",")) set_spectral(&u, &g, p), n_spectral++;
    assert_int_equal(n_spectral, 6);
    unet_inputs_t in;
    unet_inputs(&in, &g);
    unet_acts_t a;
    assert_int_equal(unet_acts_build(&a, &u, UB, UH, UW, NTOK, 1, UNET_CKPT_NONE), 0);
    const size_t n_out = (size_t)UB * 4 * UH * UW, n_ctx = (size_t)UB * NTOK * CTX_DIM;
    float *out = alloc_zeros(n_out), *dsample = alloc_zeros(n_out), *dctx = alloc_zeros(n_ctx);
    float *dtext = alloc_zeros(UB * POOLED_DIM);
    float *dout = golden_get(&g, "unet.dout", (int64_t)n_out);
    unet_forward_ok(out, &u, &a, &in);
    check("unet out with shifts", out, &g, "unet.out", n_out);
    unet_grads_t gr;
    assert_int_equal(unet_grads_alloc(&gr, &u, UNET_GRAD_SHIFTS), 0);
    unet_backward(dsample, dctx, dtext, &gr, dout, &u, &a);
    check("unet d sample", dsample, &g, "unet.dsample", n_out);
    check("unet d ctx", dctx, &g, "unet.dctx", n_ctx);
    check("unet d text_embeds", dtext, &g, "unet.dtext_embeds", UB * POOLED_DIM);
    int n_checked = 0;
    for (int i = 0; i < u.n_layers; i++) {
        const layer_t *l = u.layers[i];
        if (l->w.kind != WEIGHT_SPECTRAL) continue;
        char key[256];
        snprintf(key, sizeof key, "unet.%s.ddelta", l->name);
        assert_non_null(gr.layers[l->id].dw);
        float *want = golden_get(&g, key, l->w.sp->rank);
        if (verbose()) printf("  %-64s rel err %.3g\n", key, rel_error(gr.layers[l->id].dw, want, l->w.sp->rank));
        assert_close(key, gr.layers[l->id].dw, want, (size_t)l->w.sp->rank, TOL);
        free(want);
        n_checked++;
    }
    assert_int_equal(n_checked, 6);
    unet_grads_free(&gr);
    free(out), free(dsample), free(dctx), free(dtext), free(dout);
    unet_acts_free(&a);
    unet_inputs_free(&in);
    free_unet(&u);
    model_close(&m);
    st_close(&g);
}

/* ---- the text encoders ---- */

static int *golden_ids(const st_file_t *g, const char *key) {
    float *f = golden_get(g, key, 2 * NTOK);
    int *ids = malloc(sizeof(int) * 2 * NTOK);
    for (int i = 0; i < 2 * NTOK; i++) ids[i] = (int)f[i];
    free(f);
    return ids;
}

/* One encoder ("te" or "te2") of a layout: hidden_states[-2] and [-3] (no final LayerNorm), the
 * last hidden state (final LayerNorm), and for te2 the pooled projection in every mode. */
static void check_encoder(const model_component_t *c, const st_file_t *g, const char *tag, const char *layout) {
    clip_t m;
    int rc = build_clip_from_component(&m, c);
    if (rc) print_error("%s: %s\n", tag, sd_last_error());
    assert_int_equal(rc, 0);
    const int C = m.cfg.hidden_size, proj = strcmp(tag, "te2") == 0;
    assert_int_equal(C, proj ? 16 : 8);
    assert_int_equal(m.cfg.num_layers, 3);
    assert_int_equal(m.cfg.act, proj ? CLIP_ACT_GELU : CLIP_ACT_QUICK_GELU);
    assert_int_equal(m.cfg.projection_dim, proj ? POOLED_DIM : 0);
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m.cfg, 2, NTOK), 0);
    char key[64], label[160];
    snprintf(key, sizeof key, "%s.ids", tag);
    int *ids = golden_ids(g, key);
    const size_t n = (size_t)2 * NTOK * C;
    float pooled[2 * POOLED_DIM];
    static const struct {
        clip_hidden_t mode;
        int skip;
        const char *key;
    } cases[] = {
        {CLIP_HIDDEN_PENULTIMATE, 0, "penult"},
        {CLIP_HIDDEN_PENULTIMATE, 1, "skip1"},
        {CLIP_HIDDEN_FINAL_LN, 0, "last"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        m.hidden_mode = cases[k].mode;
        m.clip_skip = cases[k].skip;
        m.want_pooled = proj;
        const float *h = clip_forward(&m, &a, ids, 2, NTOK);
        if (!h) print_error("%s: %s\n", tag, sd_last_error());
        assert_non_null(h);
        snprintf(key, sizeof key, "%s.%s", tag, cases[k].key);
        snprintf(label, sizeof label, "%s %s (%s)", tag, cases[k].key, layout);
        check(label, h, g, key, n);
        if (proj) {   /* the pooled embedding is the last layer's, whatever the hidden state */
            assert_int_equal(clip_pooled(pooled, &m, &a), 0);
            snprintf(label, sizeof label, "te2 pooled, %s (%s)", cases[k].key, layout);
            check(label, pooled, g, "te2.pooled", 2 * POOLED_DIM);
        } else {
            assert_int_equal(clip_pooled(pooled, &m, &a), SD_ERR_ARG);   /* no projection */
        }
    }
    free(ids);
    clip_acts_free(&a);
    free_clip(&m);
}

static void check_text_encoders(const char *rel) {
    st_file_t g;
    golden_open(&g, GOLDEN);
    model_t m;
    open_model(&m, rel);
    assert_true(m.text_encoder.n_tensors > 0 && m.text_encoder_2.n_tensors > 0);
    check_encoder(&m.text_encoder, &g, "te", rel);
    check_encoder(&m.text_encoder_2, &g, "te2", rel);
    model_close(&m);
    st_close(&g);
}

static void test_sdxl_text_encoders_folder(void **state) {
    (void)state;
    check_text_encoders(FOLDER);
}

static void test_sdxl_text_encoders_single_file(void **state) {
    (void)state;
    check_text_encoders(SINGLE);
}

/* ---- the pipeline: prompt encoding and whole sampling runs ---- */

static void pipe_open_ok(pipeline_t *p, const char *rel) {
    /* a single file carries no tokenizer: the folder's (tokenizer_2 then pads with "!") */
    const char *tok = strstr(rel, ".safetensors") ? source_path(FOLDER "/tokenizer") : NULL;
    char tokbuf[4096];
    if (tok) snprintf(tokbuf, sizeof tokbuf, "%s", tok), tok = tokbuf;
    int rc = pipeline_open(p, source_path(rel), tok);
    if (rc) print_error("pipeline_open(%s): %s\n", rel, sd_last_error());
    assert_int_equal(rc, 0);
    assert_true(p->has_te2);
    assert_int_equal(p->ctx_dim, CTX_DIM);
    assert_int_equal(p->pooled_dim, POOLED_DIM);
    assert_int_equal(p->n_ctx, NTOK);
    assert_int_equal(p->force_zeros_empty, 1);
}

/* Both tokenizers' ids (tokenizer pads with the end token, tokenizer_2 with "!"), the context
 * cat(TE1, TE2 penultimate) and the pooled embedding of [negative, prompt], also with clip_skip 1
 * (the pooled embedding stays the last layer's). */
static void check_prompt_encoding(const char *rel) {
    st_file_t g;
    golden_open(&g, GOLDEN);
    pipeline_t p;
    pipe_open_ok(&p, rel);
    const char *pair[2] = {NEGATIVE, PROMPT};
    int *want1 = golden_ids(&g, "te.ids"), *want2 = golden_ids(&g, "te2.ids");
    for (int r = 0; r < 2; r++) {
        int ids[NTOK];
        assert_int_equal(tokenizer_encode(p.tok, pair[r], ids, NTOK, 1, NULL), NTOK);
        assert_memory_equal(ids, want1 + r * NTOK, sizeof ids);
        assert_int_equal(tokenizer_encode(p.tok2, pair[r], ids, NTOK, 1, NULL), NTOK);
        assert_memory_equal(ids, want2 + r * NTOK, sizeof ids);   /* the pipeline made tokenizer_2 pad with "!" */
    }
    const size_t n_ctx = (size_t)2 * NTOK * CTX_DIM;
    float *ctx = malloc(sizeof(float) * n_ctx), pooled[2 * POOLED_DIM];
    int rc = pipeline_encode_prompts_cond(&p, pair, 2, ctx, pooled);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    char label[160];
    snprintf(label, sizeof label, "prompt ctx (%s)", rel);
    check(label, ctx, &g, "prompt.ctx", n_ctx);
    snprintf(label, sizeof label, "prompt pooled (%s)", rel);
    check(label, pooled, &g, "prompt.pooled", 2 * POOLED_DIM);
    p.clip.clip_skip = p.clip2.clip_skip = 1;
    assert_int_equal(pipeline_encode_prompts_cond(&p, pair, 2, ctx, pooled), 0);
    snprintf(label, sizeof label, "prompt ctx, clip_skip 1 (%s)", rel);
    check(label, ctx, &g, "prompt.ctx_skip1", n_ctx);
    snprintf(label, sizeof label, "prompt pooled, clip_skip 1 (%s)", rel);
    check(label, pooled, &g, "prompt.pooled", 2 * POOLED_DIM);
    free(ctx), free(want1), free(want2);
    pipeline_close(&p);
    st_close(&g);
}

static void test_sdxl_prompt_encoding_folder(void **state) {
    (void)state;
    check_prompt_encoding(FOLDER);
}

static void test_sdxl_prompt_encoding_single_file(void **state) {
    (void)state;
    check_prompt_encoding(SINGLE);
}

/* The runs of gen_sdxl_golden.py's RUNS table: Euler (the scheduler config: leading spacing,
 * steps_offset 1), classifier-free guidance, height x width pixels. */
typedef struct {
    const char *name;
    uint64_t seed;
    int steps;
    float cfg;
    int height, width;
    const char *negative;   /* NULL: force_zeros_for_empty_prompt gives zeros */
    int clip_skip;
    int original[2], crop[2], target[2];
} sdxl_run_t;

static const sdxl_run_t RUNS[] = {
    {"euler", 7, 2, 5.0f, 16, 24, NULL, 0, {0, 0}, {0, 0}, {0, 0}},
    {"euler_cond", 11, 2, 4.0f, 16, 24, NEGATIVE, 1, {64, 48}, {4, 2}, {32, 40}},
};

typedef struct {
    float *traj, *t;
    size_t n;
    int calls;
} recorder_t;

static void record(void *vctx, int step, int num_steps, float t, const float *latents) {
    recorder_t *r = vctx;
    if (step >= 1 && step <= num_steps && step == r->calls + 1) {
        memcpy(r->traj + (size_t)(step - 1) * r->n, latents, sizeof(float) * r->n);
        r->t[step - 1] = t;
    }
    r->calls++;
}

/* One run from the stored noise (or the seed): the time ids of both row kinds, every step's
 * latents, the final latents and the decoded image. */
static void check_run(pipeline_t *p, const st_file_t *g, const sdxl_run_t *run, int from_seed, const char *layout) {
    int C, h, w;
    pipeline_latent_shape(p, run->width, run->height, &C, &h, &w);
    assert_int_equal(C, 4), assert_int_equal(h, run->height / 2), assert_int_equal(w, run->width / 2);
    const size_t n = (size_t)C * h * w;
    const int S = run->steps;
    char key[128], label[192];
#define GET(field, numel) (snprintf(key, sizeof key, "%s.%s", run->name, field), golden_get(g, key, numel))
    float *init = GET("init", (int64_t)n), *t_want = GET("t", S), *traj_want = GET("traj", (int64_t)S * n);
    float *tids = GET("time_ids", 2 * UNET_N_TIME_IDS), *img_want = GET("image", (int64_t)3 * run->height * run->width);
#undef GET
    txt2img_opts_t o = {.prompt = PROMPT, .negative_prompt = run->negative, .width = run->width,
                        .height = run->height, .steps = S, .cfg = run->cfg, .sampler = SAMPLER_EULER,
                        .seed = run->seed, .batch = 1, .clip_skip = run->clip_skip};
    memcpy(o.original_size, run->original, sizeof o.original_size);
    memcpy(o.crops_coords_top_left, run->crop, sizeof o.crops_coords_top_left);
    memcpy(o.target_size, run->target, sizeof o.target_size);
    float row[UNET_N_TIME_IDS];
    for (int neg = 0; neg < 2; neg++) {   /* golden rows: [negative; prompt] */
        pipeline_opts_time_ids(row, &o, !neg);
        assert_memory_equal(row, tids + neg * UNET_N_TIME_IDS, sizeof row);
    }
    recorder_t rec = {.traj = malloc(sizeof(float) * S * n), .t = malloc(sizeof(float) * S), .n = n};
    o.progress = record, o.progress_ctx = &rec;
    float *latents = malloc(sizeof(float) * n);
    int rc = pipeline_txt2img(p, &o, from_seed ? NULL : init, latents);
    if (rc) print_error("%s: %s\n", run->name, sd_last_error());
    assert_int_equal(rc, 0);
    assert_int_equal(rec.calls, S);
    for (int i = 0; i < S; i++) {
        assert_true(rec.t[i] == t_want[i]);
        snprintf(label, sizeof label, "%s step %d (%s, %s)", run->name, i + 1, layout, from_seed ? "seeded" : "init");
        if (verbose()) printf("  %-64s rel err %.3g\n", label, rel_error(rec.traj + i * n, traj_want + i * n, n));
        assert_close(label, rec.traj + i * n, traj_want + i * n, n, TOL);
    }
    snprintf(label, sizeof label, "%s latents (%s)", run->name, layout);
    check(label, latents, g, (snprintf(key, sizeof key, "%s.latents", run->name), key), n);
    float *img = malloc(sizeof(float) * 3 * run->height * run->width);
    assert_int_equal(vae_decode(&p->vae, img, latents, 1, h, w), 0);
    snprintf(label, sizeof label, "%s image (%s)", run->name, layout);
    if (verbose()) printf("  %-64s rel err %.3g\n", label, rel_error(img, img_want, (size_t)3 * run->height * run->width));
    assert_close(label, img, img_want, (size_t)3 * run->height * run->width, TOL);
    free(img), free(latents), free(rec.traj), free(rec.t);
    free(init), free(t_want), free(traj_want), free(tids), free(img_want);
}

static void check_runs(const char *rel, int from_seed) {
    st_file_t g;
    golden_open(&g, GOLDEN);
    pipeline_t p;
    pipe_open_ok(&p, rel);
    for (size_t i = 0; i < sizeof RUNS / sizeof RUNS[0]; i++) check_run(&p, &g, &RUNS[i], from_seed, rel);
    pipeline_close(&p);
    st_close(&g);
}

static void test_sdxl_txt2img_folder(void **state) {
    (void)state;
    check_runs(FOLDER, 0);
}

static void test_sdxl_txt2img_single_file(void **state) {
    (void)state;
    check_runs(SINGLE, 1);
}

/* ---- one training step ---- */

/* The trainer's step on SDXL (trainer_micro_step on the golden's fixed inputs: x0, eps, integer
 * timesteps, both tokenizers' ids, each row's time ids), every UNet conv / linear (add_embedding
 * included) and norm gain shifted, both text encoders trained (--train-text-encoder): the loss and
 * the gradient of every shift array at zero shifts, each to 1e-3 of its own largest entry as
 * test_train's golden step. Those gradients do not depend on which factors the SVD gave (the sign
 * of a singular pair cancels), so the trainer makes its own. text_encoder_2's last layer reaches
 * the loss only through the pooled embedding (the context is its penultimate layer), so its
 * gradients check the path UNet d text_embeds -> clip_pooled's backward. The 6 arrays of
 * text_encoder's last layer, which the context skips, are zero (metadata train_zero_grads). */
static void test_sdxl_train_step(void **state) {
    (void)state;
    sd_set_threads(1);
    st_file_t g;
    golden_open(&g, GOLDEN);
    const int rows = 2, res = atoi(st_meta(&g, "train_res"));
    assert_int_equal(res, 16);
    char model[4096];
    snprintf(model, sizeof model, "%s", source_path(FOLDER));
    train_config_t c;
    train_config_default(&c);
    c.model = model;
    c.resolution = res, c.batch_size = rows, c.train_text_encoder = 1;
    c.svd_cache_dir = "";
    c.quiet = 1;
    trainer_t t;
    assert_int_equal(trainer_load_model(&t, &c), 0);
    assert_int_equal(trainer_prepare(&t, 0), 0);
    assert_true(t.xl);
    const size_t L = t.latent_n;
    assert_int_equal(L, 4 * (res / 2) * (res / 2));
    float *x0 = golden_get(&g, "train.x0", rows * (int64_t)L), *eps = golden_get(&g, "train.eps", rows * (int64_t)L);
    float *tsf = golden_get(&g, "train.timesteps", rows), *tids = golden_get(&g, "train.time_ids", rows * 6);
    float *loss_want = golden_get(&g, "train.loss", 1);
    int ts[2], *ids1 = golden_ids(&g, "train.ids1"), *ids2 = golden_ids(&g, "train.ids2");
    for (int r = 0; r < rows; r++) ts[r] = (int)tsf[r];
    memcpy(t.ids2, ids2, sizeof(int) * rows * NTOK);
    memcpy(t.time_ids, tids, sizeof(float) * rows * 6);
    train_losses_t l;
    assert_int_equal(trainer_micro_step(&t, x0, eps, ts, ids1, NULL, rows, 0, 1.0f, &l), 0);
    const float got_loss = (float)l.loss;
    if (verbose()) printf("  train loss %.7f (PyTorch %.7f)\n", got_loss, loss_want[0]);
    assert_close("train loss", &got_loss, loss_want, 1, TOL);
    double worst = 0;
    int n_comp[3] = {0, 0, 0}, n_add = 0, n_zero = 0;
    for (int i = 0; i < t.n_params; i++) {
        const train_param_t *p = &t.params[i];
        char key[512];
        snprintf(key, sizeof key, "train.grad.%s", p->name);
        float *want = golden_get(&g, key, p->n);
        float wmax = 0, gmax = 0;
        for (int k = 0; k < p->n; k++) wmax = fmaxf(wmax, fabsf(want[k])), gmax = fmaxf(gmax, fabsf(p->grad[k]));
        if (wmax == 0) {   /* off the path: no gradient may reach it */
            if (gmax != 0) print_error("%s: %g where the gradient is 0\n", key, gmax);
            assert_true(gmax == 0);
            n_zero++;
        } else {
            assert_close(key, p->grad, want, (size_t)p->n, 1e-3);
            worst = fmax(worst, rel_error(p->grad, want, (size_t)p->n));
        }
        assert_true(p->component >= 0 && p->component < 3);
        n_comp[p->component]++;
        n_add += strncmp(p->name, "unet/add_embedding.", 19) == 0;
        free(want);
    }
    /* every shift of the golden is trained here: 544 arrays */
    assert_int_equal(t.n_params, atoi(st_meta(&g, "train_shifts")));
    assert_int_equal(n_add, 2);
    assert_int_equal(n_zero, atoi(st_meta(&g, "train_zero_grads")));
    assert_true(n_comp[0] > 0 && n_comp[1] > 0 && n_comp[2] > 0);
    print_message("sdxl training step: loss %.7f (PyTorch %.7f), %d shift arrays (unet %d, te %d, te2 %d; %d zero), "
                  "worst gradient error %.2e\n", got_loss, loss_want[0], t.n_params, n_comp[0], n_comp[1], n_comp[2],
                  n_zero, worst);
    free(x0), free(eps), free(tsf), free(tids), free(loss_want), free(ids1), free(ids2);
    trainer_close(&t);
    st_close(&g);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sdxl_unet_folder),
        cmocka_unit_test(test_sdxl_unet_single_file),
        cmocka_unit_test(test_sdxl_unet_shifts_backward),
        cmocka_unit_test(test_sdxl_text_encoders_folder),
        cmocka_unit_test(test_sdxl_text_encoders_single_file),
        cmocka_unit_test(test_sdxl_prompt_encoding_folder),
        cmocka_unit_test(test_sdxl_prompt_encoding_single_file),
        cmocka_unit_test(test_sdxl_txt2img_folder),
        cmocka_unit_test(test_sdxl_txt2img_single_file),
        cmocka_unit_test(test_sdxl_train_step),
    };
    return RUN_TESTS(argc, argv, "sdxl", tests, NULL, NULL);
}
