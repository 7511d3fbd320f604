/* CLIP text encoder (models/clip.h): config parsing and build errors; forward and backward
 * against float64 PyTorch (tests/fixtures/clip/, written by tests/reference/gen_clip_golden.py)
 * for the SD1-like (quick_gelu) and SD2-like (gelu, 3 layers) tiny models, F16 weights,
 * spectral weights from stored factors, clip_skip; finite-difference checks of shift, dense
 * weight, bias and LayerNorm gradients through the whole encoder. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "models/clip.h"

#define TOL 1e-4
#define GOLDEN "clip/golden.safetensors"
#define B_GOLD 2
#define T_GOLD 77

/* ---- fixtures ---- */

static const st_tensor_t *get_st(void *ctx, const char *name) { return st_find(ctx, name); }

/* A text_encoder folder of the fixtures: its config and its opened weights. */
typedef struct {
    clip_config_t cfg;
    st_file_t f;
} te_t;

static void te_open(te_t *te, const char *folder) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/clip/%s/config.json", folder);
    FILE *fp = fopen(source_path(rel), "rb");
    if (!fp) {
        print_error("cannot open %s (regenerate with tests/reference/regenerate.sh)\n", source_path(rel));
        fail();
    }
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    int rc = clip_config_from_json(&te->cfg, j, rel);
    cJSON_Delete(j);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    snprintf(rel, sizeof rel, "clip/%s/model.safetensors", folder);
    golden_open(&te->f, rel);
}

static void build_ok(clip_t *m, const clip_config_t *cfg, clip_get_fn get, void *ctx) {
    int rc = build_clip(m, cfg, get, ctx);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

/* Golden ids as int [B_GOLD * T_GOLD]. */
static int *golden_ids(const st_file_t *g, const char *key) {
    const st_tensor_t *t = st_find(g, key);
    assert_non_null(t);
    assert_int_equal(t->numel, B_GOLD * T_GOLD);
    int64_t tmp[B_GOLD * T_GOLD];
    assert_int_equal(st_read_i64(tmp, t), 0);
    int *ids = malloc(sizeof(int) * B_GOLD * T_GOLD);
    for (int i = 0; i < B_GOLD * T_GOLD; i++) ids[i] = (int)tmp[i];
    return ids;
}

/* dout of the golden cases: the tests' generator, as gen_clip_golden.py re-implements it. */
static float *golden_dout(uint64_t seed, size_t n) {
    trng_t r;
    trng_seed(&r, seed);
    float *d = malloc(n * sizeof(float));
    fill_uniform(&r, d, n, -1.0f, 1.0f);
    return d;
}

static void check(const char *label, const float *got, const st_file_t *g, const char *key, size_t n) {
    float *want = golden_get(g, key, (int64_t)n);
    const char *v = getenv("SVDIFF_GOLDEN_VERBOSE");
    if (v && *v && *v != '0') printf("  %-28s rel err %.3g\n", label, rel_error(got, want, n));
    assert_close(label, got, want, n, TOL);
    free(want);
}

/* Writable fp32 copies of every tensor of a file (F16 converted), so that tests can build a
 * model they perturb, or an F32 model holding exactly the values of an F16 file. */
typedef struct {
    int n;
    st_tensor_t *t;
} tcopy_t;

static void tcopy_make(tcopy_t *c, const st_file_t *f) {
    c->n = f->n_tensors;
    c->t = calloc(c->n, sizeof *c->t);
    for (int i = 0; i < c->n; i++) {
        c->t[i] = f->tensors[i];
        if (f->tensors[i].dtype != ST_F32 && f->tensors[i].dtype != ST_F16) continue;  /* position_ids */
        float *d = malloc(sizeof(float) * f->tensors[i].numel);
        assert_int_equal(st_read_f32(d, &f->tensors[i]), 0);
        c->t[i].dtype = ST_F32;
        c->t[i].nbytes = sizeof(float) * f->tensors[i].numel;
        c->t[i].data = d;
    }
}

static const st_tensor_t *get_copy(void *ctx, const char *name) {
    tcopy_t *c = ctx;
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->t[i].name, name) == 0) return &c->t[i];
    return NULL;
}

static float *copy_data(tcopy_t *c, const char *name) { return (float *)get_copy(c, name)->data; }

static void tcopy_free(tcopy_t *c) {
    for (int i = 0; i < c->n; i++)
        if (c->t[i].dtype == ST_F32) free((void *)c->t[i].data);
    free(c->t);
}

/* Makes w spectral with the given factors and delta (W kept as the residual base). */
static void set_factors(weight_t *w, const float *U, const float *S, const float *Vt, const float *delta) {
    const int rank = w->rows < w->cols ? w->rows : w->cols;
    spectral_t *sp = calloc(1, sizeof *sp);
    spectral_init_factors(sp, U, S, Vt, w->rows, w->cols, rank);
    memcpy(sp->delta, delta, sizeof(float) * rank);
    w->kind = WEIGHT_SPECTRAL;
    w->sp = sp;
}

/* ---- config and build errors ---- */

static void test_config(void **state) {
    (void)state;
    te_t a, b;
    te_open(&a, "sd1_text_encoder");
    te_open(&b, "sd2_text_encoder");
    assert_int_equal(a.cfg.hidden_size, 32);
    assert_int_equal(a.cfg.num_heads, 4);
    assert_int_equal(a.cfg.num_layers, 2);
    assert_int_equal(a.cfg.intermediate_size, 64);
    assert_int_equal(a.cfg.vocab_size, 192);
    assert_int_equal(a.cfg.max_positions, 77);
    assert_int_equal(a.cfg.act, CLIP_ACT_QUICK_GELU);
    assert_int_equal(b.cfg.act, CLIP_ACT_GELU);
    assert_int_equal(b.cfg.num_layers, 3);
    assert_true(b.cfg.layer_norm_eps == 1e-5f);   /* absent key: the default */
    st_close(&a.f);
    st_close(&b.f);

    clip_config_t c;
    cJSON *j = cJSON_Parse("{}");
    assert_int_equal(clip_config_from_json(&c, j, "x"), 0);   /* transformers' defaults */
    assert_int_equal(c.hidden_size, 512);
    assert_int_equal(c.vocab_size, 49408);
    assert_int_equal(c.num_layers, 12);
    cJSON_Delete(j);
    const char *bad[][2] = {
        {"{\"hidden_act\": \"gelu_new\"}", "gelu_new"},
        {"{\"hidden_size\": 30, \"num_attention_heads\": 4}", "multiple"},
        {"{\"num_hidden_layers\": \"two\"}", "num_hidden_layers"},
        {"{\"vocab_size\": 10.5}", "vocab_size"},
        {"{\"layer_norm_eps\": -1}", "layer_norm_eps"},
        {"[1]", "object"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = cJSON_Parse(bad[i][0]);
        assert_int_equal(clip_config_from_json(&c, j, "te/config.json"), SD_ERR_FORMAT);
        assert_non_null(strstr(sd_last_error(), bad[i][1]));
        assert_non_null(strstr(sd_last_error(), "te/config.json"));
        cJSON_Delete(j);
    }
}

/* A getter that hides one tensor. */
typedef struct { st_file_t *f; const char *hide; } hide_t;
static const st_tensor_t *get_hiding(void *ctx, const char *name) {
    hide_t *h = ctx;
    return strcmp(name, h->hide) == 0 ? NULL : st_find(h->f, name);
}

static void test_build_errors(void **state) {
    (void)state;
    te_t te;
    te_open(&te, "sd1_text_encoder");
    clip_t m;
    hide_t h = {&te.f, "text_model.encoder.layers.1.mlp.fc2.bias"};
    assert_int_equal(build_clip(&m, &te.cfg, get_hiding, &h), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "layers.1.mlp.fc2.bias"));
    assert_null(m.layers);   /* left empty */
    free_clip(&m);           /* harmless on an empty model */
    h.hide = "text_model.final_layer_norm.weight";
    assert_int_equal(build_clip(&m, &te.cfg, get_hiding, &h), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "final_layer_norm.weight"));
    clip_config_t c = te.cfg;
    c.vocab_size = 200;
    assert_int_equal(build_clip(&m, &c, get_st, &te.f), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "token_embedding.weight"));
    assert_non_null(strstr(sd_last_error(), "[192, 32]"));
    c = te.cfg;
    c.intermediate_size = 48;
    assert_int_equal(build_clip(&m, &c, get_st, &te.f), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "layers.0.mlp.fc1.weight"));
    c = te.cfg;
    c.num_layers = 3;
    assert_int_equal(build_clip(&m, &c, get_st, &te.f), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "layers.2."));
    /* more tokens than positions */
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &te.cfg, 1, 78), SD_ERR_ARG);
    st_close(&te.f);
}

/* ---- with text_projection (CLIPTextModelWithProjection, SDXL's text_encoder_2) ---- */

/* projection_dim comes from a CLIPTextModelWithProjection config only; the registry lists
 * text_projection last, without bias; build_clip requires it with its shape. */
static void test_projection_config(void **state) {
    (void)state;
    clip_config_t c;
    cJSON *j = cJSON_Parse("{\"architectures\": [\"CLIPTextModelWithProjection\"], \"hidden_size\": 1280, "
                           "\"num_attention_heads\": 20, \"num_hidden_layers\": 32, \"hidden_act\": \"gelu\", "
                           "\"projection_dim\": 1280}");
    assert_int_equal(clip_config_from_json(&c, j, "text_encoder_2/config.json"), 0);
    assert_int_equal(c.projection_dim, 1280);
    assert_int_equal(c.act, CLIP_ACT_GELU);
    cJSON_Delete(j);
    j = cJSON_Parse("{\"architectures\": [\"CLIPTextModelWithProjection\"]}");
    assert_int_equal(clip_config_from_json(&c, j, "x"), 0);
    assert_int_equal(c.projection_dim, 512);   /* transformers' default */
    cJSON_Delete(j);
    j = cJSON_Parse("{\"architectures\": [\"CLIPTextModel\"], \"projection_dim\": 768}");
    assert_int_equal(clip_config_from_json(&c, j, "x"), 0);
    assert_int_equal(c.projection_dim, 0);     /* CLIPTextModel: the key is unused */
    cJSON_Delete(j);
    const char *bad[][2] = {
        {"{\"architectures\": [\"CLIPTextModelWithProjection\"], \"projection_dim\": 0}", "projection_dim"},
        {"{\"architectures\": \"CLIPTextModelWithProjection\"}", "architectures"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        j = cJSON_Parse(bad[i][0]);
        assert_int_equal(clip_config_from_json(&c, j, "te2/config.json"), SD_ERR_FORMAT);
        assert_non_null(strstr(sd_last_error(), bad[i][1]));
        assert_non_null(strstr(sd_last_error(), "te2/config.json"));
        cJSON_Delete(j);
    }

    te_t te;
    te_open(&te, "sdxl2_text_encoder");   /* gen_clip_golden.py: hidden 16, projection_dim 12 */
    assert_int_equal(te.cfg.projection_dim, 12);
    layer_registry_t r = {0}, r0 = {0};
    clip_registry(&te.cfg, &r);
    clip_config_t c0 = te.cfg;
    c0.projection_dim = 0;
    clip_registry(&c0, &r0);
    assert_int_equal(r.n, r0.n + 1);
    assert_string_equal(r0.v[r0.n - 1].name, "text_model.final_layer_norm");
    const layer_spec_t *s = &r.v[r.n - 1];
    assert_string_equal(s->name, "text_projection");
    assert_int_equal(s->kind, LAYER_LINEAR);
    assert_int_equal(s->out, 12);
    assert_int_equal(s->in, 16);
    assert_int_equal(s->bias, 0);
    assert_true(fabs(s->init_std - 0.25) < 1e-12);   /* hidden_size^-0.5 */
    layer_registry_free(&r);
    layer_registry_free(&r0);

    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    assert_int_equal(m.text_projection.out, 12);
    assert_int_equal(m.text_projection.in, 16);
    assert_null(m.text_projection.bias);
    assert_ptr_equal(m.text_projection.w.data, st_find(&te.f, "text_projection.weight")->data);   /* a view */
    clip_module_t mod;
    assert_int_equal(clip_find_module(&m, "text_projection", &mod), 1);
    assert_int_equal(mod.kind, CLIP_MODULE_LINEAR);
    assert_ptr_equal(mod.w, &m.text_projection.w);
    assert_null(mod.bias);
    free_clip(&m);
    /* a model without projection has no such module (the file's extra tensor is ignored) */
    build_ok(&m, &c0, get_st, &te.f);
    assert_int_equal(clip_find_module(&m, "text_projection", &mod), 0);
    free_clip(&m);
    /* missing or misshapen */
    hide_t h = {&te.f, "text_projection.weight"};
    assert_int_equal(build_clip(&m, &te.cfg, get_hiding, &h), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "text_projection.weight is missing"));
    c0.projection_dim = 16;
    assert_int_equal(build_clip(&m, &c0, get_st, &te.f), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "text_projection.weight has shape [12, 16], expected [16, 16]"));
    st_close(&te.f);
}

/* ---- golden ---- */

/* Forward + backward of the golden batch with dout from `seed`: hidden and dembed (malloc'ed). */
static void run_golden(clip_t *m, const int *ids, uint64_t seed, float **hidden, float **dembed,
                       clip_grads_t *g) {
    const size_t n = (size_t)B_GOLD * T_GOLD * m->cfg.hidden_size;
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m->cfg, B_GOLD, T_GOLD), 0);
    const float *h = clip_forward(m, &a, ids, B_GOLD, T_GOLD);
    *hidden = malloc(n * sizeof(float));
    memcpy(*hidden, h, n * sizeof(float));
    float *dout = golden_dout(seed, n);
    if (dembed) *dembed = alloc_zeros(n);
    clip_backward(m, &a, dout, NULL, g, dembed ? *dembed : NULL);
    free(dout);
    clip_acts_free(&a);
}

static void test_golden_sd1(void **state) {
    (void)state;
    te_t te;
    st_file_t g;
    te_open(&te, "sd1_text_encoder");
    golden_open(&g, GOLDEN);
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    assert_int_equal(m.token_embedding.kind, WEIGHT_DENSE);
    int *ids = golden_ids(&g, "sd1.ids");
    float *hidden, *dembed;
    /* dense gradients asked for too: they must not disturb the rest */
    clip_grads_t gr;
    assert_int_equal(clip_grads_alloc(&gr, &m, CLIP_GRAD_DENSE | CLIP_GRAD_SHIFTS), 0);
    run_golden(&m, ids, 501, &hidden, &dembed, &gr);
    const size_t n = (size_t)B_GOLD * T_GOLD * 32;
    check("sd1 hidden", hidden, &g, "sd1.hidden", n);
    check("sd1 dembed", dembed, &g, "sd1.dembed", n);
    assert_non_null(gr.dtoken);
    assert_non_null(gr.layers[1].fc2.dw);
    assert_non_null(gr.final_ln.dgamma);

    /* a smaller batch in the same activations: the second sequence alone, 20 tokens
     * (causal: its first 20 hidden states do not depend on the rest) */
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &te.cfg, B_GOLD, T_GOLD), 0);
    const float *h1 = clip_forward(&m, &a, ids + T_GOLD, 1, 20);
    assert_close("sd1 hidden, 1 x 20 tokens", h1, hidden + (size_t)T_GOLD * 32, 20 * 32, 1e-5);
    clip_acts_free(&a);

    free(hidden), free(dembed), free(ids);
    clip_grads_free(&gr);
    free_clip(&m);
    st_close(&te.f);
    st_close(&g);
    scratch_free_all();
}

/* A forward larger than its activations (more sequences or tokens than they were built for)
 * is an error the caller can report, not an abort: B and T come from the input (prompts,
 * batch size). It used to abort in an SD_CHECK ("check failed: B >= 1 && B <= a->B ..."). */
static void test_forward_over_capacity(void **state) {
    (void)state;
    te_t te;
    te_open(&te, "sd1_text_encoder");
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &te.cfg, 1, 8), 0);
    int ids[3 * 9] = {0};
    for (int i = 0; i < 3 * 9; i++) ids[i] = (i * 7) % te.cfg.vocab_size;
    const int bad[4][2] = {{1, 9}, {2, 8}, {0, 8}, {1, 0}};
    for (int k = 0; k < 4; k++) {
        sd_clear_error();
        assert_null(clip_forward(&m, &a, ids, bad[k][0], bad[k][1]));
        assert_non_null(strstr(sd_last_error(), "text encoder: forward of"));
        assert_non_null(strstr(sd_last_error(), "activations' 1 x 8"));
    }
    assert_non_null(clip_forward(&m, &a, ids, 1, 8));   /* the activations are still usable */
    clip_acts_free(&a);
    free_clip(&m);
    st_close(&te.f);
    scratch_free_all();
}

static void test_golden_sd1_f16(void **state) {
    (void)state;
    te_t te;
    st_file_t g;
    te_open(&te, "sd1_text_encoder_f16");
    golden_open(&g, GOLDEN);
    assert_int_equal(st_find(&te.f, "text_model.encoder.layers.0.self_attn.q_proj.weight")->dtype, ST_F16);
    clip_t m, m32;
    build_ok(&m, &te.cfg, get_st, &te.f);
    int *ids = golden_ids(&g, "sd1.ids");
    float *hidden, *dembed, *hidden32, *dembed32;
    run_golden(&m, ids, 501, &hidden, &dembed, NULL);
    const size_t n = (size_t)B_GOLD * T_GOLD * 32;
    check("sd1 f16 hidden", hidden, &g, "sd1_f16.hidden", n);
    /* the backward through F16 weights equals that of an F32 model of the same values */
    tcopy_t cp;
    tcopy_make(&cp, &te.f);
    build_ok(&m32, &te.cfg, get_copy, &cp);
    run_golden(&m32, ids, 501, &hidden32, &dembed32, NULL);
    assert_close("f16 vs f32 copy hidden", hidden, hidden32, n, 1e-6);
    assert_close("f16 vs f32 copy dembed", dembed, dembed32, n, 1e-6);
    /* and differs from the F32 golden by about the F16 rounding, not more */
    float *want = golden_get(&g, "sd1.hidden", (int64_t)n);
    double e = rel_error(hidden, want, n);
    assert_true(e > 1e-6 && e < 1e-2);
    free(want), free(hidden), free(dembed), free(hidden32), free(dembed32), free(ids);
    free_clip(&m), free_clip(&m32);
    tcopy_free(&cp);
    st_close(&te.f);
    st_close(&g);
    scratch_free_all();
}

static void test_golden_sd1_spectral(void **state) {
    (void)state;
    te_t te;
    st_file_t g;
    te_open(&te, "sd1_text_encoder");
    golden_open(&g, GOLDEN);
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    const char *shorts[3] = {"q", "fc1", "tok"};
    weight_t *ws[3] = {&m.layers[0].q.w, &m.layers[0].fc1.w, &m.token_embedding};
    for (int i = 0; i < 3; i++) {
        char key[64];
        const int rank = ws[i]->rows < ws[i]->cols ? ws[i]->rows : ws[i]->cols;
        float *f[4];
        const char *names[4] = {"U", "S", "Vh", "delta"};
        const int64_t counts[4] = {(int64_t)ws[i]->rows * rank, rank, (int64_t)rank * ws[i]->cols, rank};
        for (int k = 0; k < 4; k++) {
            snprintf(key, sizeof key, "sd1_spec.%s.%s", shorts[i], names[k]);
            f[k] = golden_get(&g, key, counts[k]);
        }
        set_factors(ws[i], f[0], f[1], f[2], f[3]);
        for (int k = 0; k < 4; k++) free(f[k]);
    }
    clip_grads_t gr;
    assert_int_equal(clip_grads_alloc(&gr, &m, CLIP_GRAD_SHIFTS), 0);
    assert_null(gr.layers[0].k.dw);   /* dense weights: no gradient asked for */
    int *ids = golden_ids(&g, "sd1.ids");
    float *hidden;
    run_golden(&m, ids, 501, &hidden, NULL, &gr);
    const size_t n = (size_t)B_GOLD * T_GOLD * 32;
    check("sd1 spectral hidden", hidden, &g, "sd1_spec.hidden", n);
    check("d delta q_proj", gr.layers[0].q.dw, &g, "sd1_spec.q.ddelta", 32);
    check("d delta fc1", gr.layers[0].fc1.dw, &g, "sd1_spec.fc1.ddelta", 32);
    check("d delta token_embedding", gr.dtoken, &g, "sd1_spec.tok.ddelta", 32);
    /* clipped singular values get no gradient (the fixture clips some) */
    int clipped = 0;
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < ws[i]->sp->rank; k++)
            if (ws[i]->sp->S[k] + ws[i]->sp->delta[k] <= 0) {
                float *dw = i == 0 ? gr.layers[0].q.dw : i == 1 ? gr.layers[0].fc1.dw : gr.dtoken;
                assert_true(dw[k] == 0.0f);
                clipped++;
            }
    assert_true(clipped >= 6);

    /* baked weights (inference form) give the same output and the same shift gradients */
    for (int i = 0; i < 3; i++) weight_bake(ws[i]);
    clip_grads_t gb;
    assert_int_equal(clip_grads_alloc(&gb, &m, CLIP_GRAD_SHIFTS), 0);
    float *hb;
    run_golden(&m, ids, 501, &hb, NULL, &gb);
    assert_close("baked hidden", hb, hidden, n, 1e-5);
    assert_close("baked d delta q", gb.layers[0].q.dw, gr.layers[0].q.dw, 32, 1e-5);
    assert_close("baked d delta tok", gb.dtoken, gr.dtoken, 32, 1e-5);
    free(hidden), free(hb), free(ids);
    clip_grads_free(&gr), clip_grads_free(&gb);
    free_clip(&m);
    st_close(&te.f);
    st_close(&g);
    scratch_free_all();
}

static void test_golden_sd2(void **state) {
    (void)state;
    te_t te;
    st_file_t g;
    te_open(&te, "sd2_text_encoder");
    golden_open(&g, GOLDEN);
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    int *ids = golden_ids(&g, "sd2.ids");
    assert_int_equal(ids[T_GOLD - 1], 0);   /* SD2 pads with 0 */
    float *hidden, *dembed;
    run_golden(&m, ids, 502, &hidden, &dembed, NULL);
    const size_t n = (size_t)B_GOLD * T_GOLD * 16;
    check("sd2 hidden", hidden, &g, "sd2.hidden", n);
    check("sd2 dembed", dembed, &g, "sd2.dembed", n);
    free(hidden), free(dembed), free(ids);
    free_clip(&m);
    st_close(&te.f);
    st_close(&g);
    scratch_free_all();
}

/* clip_skip = 1 against the reference, and against a model built with one layer less. */
static void test_clip_skip(void **state) {
    (void)state;
    te_t te;
    st_file_t g;
    te_open(&te, "sd2_text_encoder");
    golden_open(&g, GOLDEN);
    clip_t m, m2;
    build_ok(&m, &te.cfg, get_st, &te.f);
    clip_config_t c2 = te.cfg;
    c2.num_layers -= 1;
    build_ok(&m2, &c2, get_st, &te.f);
    int *ids = golden_ids(&g, "sd2.ids");
    const size_t n = (size_t)B_GOLD * T_GOLD * 16;
    float *full;
    run_golden(&m, ids, 502, &full, NULL, NULL);
    clip_make_spectral(&m, CLIP_SPECTRAL_LINEARS, 1);
    clip_make_spectral(&m2, CLIP_SPECTRAL_LINEARS, 1);
    m.clip_skip = 1;
    clip_grads_t gr, gr2;
    assert_int_equal(clip_grads_alloc(&gr, &m, CLIP_GRAD_SHIFTS), 0);
    assert_int_equal(clip_grads_alloc(&gr2, &m2, CLIP_GRAD_SHIFTS), 0);
    float *h, *d, *h2, *d2;
    run_golden(&m, ids, 502, &h, &d, &gr);
    run_golden(&m2, ids, 502, &h2, &d2, &gr2);
    check("sd2 clip_skip=1 hidden", h, &g, "sd2_skip1.hidden", n);
    assert_true(rel_error(h, full, n) > 1e-2);   /* really a different output */
    assert_close("skip vs shorter model hidden", h, h2, n, 1e-6);
    assert_close("skip vs shorter model dembed", d, d2, n, 1e-6);
    for (int l = 0; l < 2; l++)
        assert_close("skip vs shorter model d delta fc1", gr.layers[l].fc1.dw, gr2.layers[l].fc1.dw, 16, 1e-6);
    for (int i = 0; i < 16; i++) assert_true(gr.layers[2].q.dw[i] == 0.0f);   /* the skipped layer */
    free(full), free(h), free(d), free(h2), free(d2), free(ids);
    clip_grads_free(&gr), clip_grads_free(&gr2);
    free_clip(&m), free_clip(&m2);
    st_close(&te.f);
    st_close(&g);
    scratch_free_all();
}

/* ---- spectral conversion ---- */

typedef struct { int count, total; int names_ok; int n_norm; } visit_t;
static void count_shift(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    visit_t *v = ctx;
    v->count++;
    v->total += n;
    v->n_norm += name->kind == SHIFT_NORM;
    /* module paths (the trainer's name, "te/<path>.weight", is derived from them) */
    if (strncmp(name->path, "text_model.", 11) != 0 || strstr(name->path, ".weight") || name->component != SHIFT_TE ||
        (name->kind == SHIFT_NORM) != (strstr(name->path, "layer_norm") != NULL) || !shift || !grad)
        v->names_ok = 0;
}

static void test_make_spectral(void **state) {
    (void)state;
    te_t te;
    te_open(&te, "sd1_text_encoder");
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    const int B = 2, T = 9;
    int ids[18];
    trng_t r;
    trng_seed(&r, 5);
    for (int i = 0; i < B * T; i++) ids[i] = (int)(trng_uniform(&r) * 192);
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &te.cfg, B, T), 0);
    const size_t n = (size_t)B * T * 32;
    float *dense = malloc(n * sizeof(float));
    memcpy(dense, clip_forward(&m, &a, ids, B, T), n * sizeof(float));
    /* delta = 0 with the base kept: the dense model; factored-only: the dense model up to
     * the SVD's rounding */
    assert_int_equal(clip_make_spectral(&m, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 1), 0);
    assert_int_equal(m.layers[1].fc2.w.kind, WEIGHT_SPECTRAL);
    assert_int_equal(m.position_embedding.kind, WEIGHT_SPECTRAL);
    assert_close("spectral delta=0 vs dense", clip_forward(&m, &a, ids, B, T), dense, n, 1e-6);
    clip_t mf;
    build_ok(&mf, &te.cfg, get_st, &te.f);
    assert_int_equal(clip_make_spectral(&mf, CLIP_SPECTRAL_LINEARS, 0), 0);
    assert_null(mf.layers[0].v.w.data);
    assert_int_equal(mf.token_embedding.kind, WEIGHT_DENSE);
    assert_close("factored-only vs dense", clip_forward(&mf, &a, ids, B, T), dense, n, 1e-4);
    /* shifts: 2 embeddings + 12 linears of rank 32, and 5 norm shifts (element: 32 each) */
    clip_add_norm_shifts(&m, NORMSHIFT_ELEMENT);
    clip_grads_t g;
    assert_int_equal(clip_grads_alloc(&g, &m, CLIP_GRAD_SHIFTS), 0);
    assert_int_equal(g.n_floats, 14 * 32 + 5 * 32);
    visit_t v = {0, 0, 1, 0};
    clip_visit_shifts(&m, &g, count_shift, &v);
    assert_int_equal(v.count, 19);
    assert_int_equal(v.n_norm, 5);
    assert_int_equal(v.total, 19 * 32);
    assert_true(v.names_ok);
    /* a scale of 0 is the base model whatever the shifts */
    for (int i = 0; i < 32; i++) m.layers[0].o.w.sp->delta[i] = 0.3f, m.final_ln.shift[i] = 0.5f;
    assert_true(rel_error(clip_forward(&m, &a, ids, B, T), dense, n) > 1e-3);
    clip_set_shift_scale(&m, 0.0f);
    assert_close("scale 0", clip_forward(&m, &a, ids, B, T), dense, n, 1e-6);
    clip_grads_free(&g);
    clip_acts_free(&a);
    free(dense);
    free_clip(&m), free_clip(&mf);
    st_close(&te.f);
    scratch_free_all();
}

/* ---- finite differences through the whole encoder ---- */

typedef struct {
    clip_t *m;
    clip_acts_t *a;
    const int *ids;
    int B, T;
    const float *probe;    /* loss = <hidden, probe> (NULL: no such term) */
    const float *pprobe;   /* + <pooled, pprobe> (NULL: none; else the model has want_pooled) */
} fd_t;

static double fd_loss(void *ctx) {
    fd_t *f = ctx;
    const float *h = clip_forward(f->m, f->a, f->ids, f->B, f->T);
    double loss = f->probe ? dot_loss(h, f->probe, (size_t)f->B * f->T * f->m->cfg.hidden_size) : 0;
    if (f->pprobe) {
        const size_t np = (size_t)f->B * f->m->cfg.projection_dim;
        float *pooled = malloc(np * sizeof(float));
        assert_int_equal(clip_pooled(pooled, f->m, f->a), 0);
        loss += dot_loss(pooled, f->pprobe, np);
        free(pooled);
    }
    return loss;
}

/* Deltas away from the ReLU kink, every third one clipped. */
static void random_deltas(clip_t *m, trng_t *r) {
    weight_t *ws[2] = {&m->token_embedding, &m->position_embedding};
    for (int i = 0; i < 2 + 6 * m->cfg.num_layers; i++) {
        weight_t *w;
        if (i < 2) w = ws[i];
        else {
            clip_layer_t *ly = &m->layers[(i - 2) / 6];
            layer_t *lins[6] = {&ly->q, &ly->k, &ly->v, &ly->o, &ly->fc1, &ly->fc2};
            w = &lins[(i - 2) % 6]->w;
        }
        if (w->kind != WEIGHT_SPECTRAL) continue;
        spectral_t *sp = w->sp;
        for (int k = 0; k < sp->rank; k++) {
            float d = 0.3f * sp->S[k] * trng_normal(r);
            if (k % 3 == 2) d = -1.5f * sp->S[k] / sp->scale;
            if (fabsf(sp->S[k] + sp->scale * d) < 0.05f) d += 0.2f;
            sp->delta[k] = d;
        }
    }
}

static void random_norm_shifts(clip_t *m, trng_t *r) {
    const int n = m->norm_shift_mode == NORMSHIFT_SCALAR ? 1 : m->cfg.hidden_size;
    norm_layer_t *lns[16];
    int k = 0;
    for (int l = 0; l < m->cfg.num_layers; l++) lns[k++] = &m->layers[l].ln1, lns[k++] = &m->layers[l].ln2;
    lns[k++] = &m->final_ln;
    for (int i = 0; i < k; i++) fill_normal(r, lns[i]->shift, n, n == 1 ? 0.5f : 0.1f);
}

/* Runs forward + backward once, then fd-checks each named array against its gradient. */
typedef struct { const char *name; float *x, *grad; size_t n; } fd_item_t;

static void run_fd(fd_t *f, fd_item_t *items, int n_items, float h, double tol) {
    for (int i = 0; i < n_items; i++) {
        assert_non_null(items[i].x);
        assert_non_null(items[i].grad);
        double scale = 0;
        for (size_t k = 0; k < items[i].n; k++) scale = fmax(scale, fabs(items[i].grad[k]));
        assert_true(scale > 1e-6);   /* a gradient that is all zero proves nothing */
        double worst = fd_check(items[i].name, items[i].x, items[i].grad, items[i].n, 8, fd_loss, f, h, tol);
        const char *v = getenv("SVDIFF_GOLDEN_VERBOSE");
        if (v && *v && *v != '0') printf("  fd %-28s worst %.3g\n", items[i].name, worst);
    }
}

/* Shift gradients: SD1 model, all weights spectral with the base kept, element norm shifts;
 * SD2 model (gelu), factored-only weights, scalar norm shifts, scale 0.7. */
static void fd_shifts_case(const char *folder, int keep_base, normshift_mode_t mode, float scale, uint64_t seed) {
    te_t te;
    te_open(&te, folder);
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    assert_int_equal(clip_make_spectral(&m, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, keep_base), 0);
    clip_add_norm_shifts(&m, mode);
    clip_set_shift_scale(&m, scale);
    trng_t r;
    trng_seed(&r, seed);
    random_deltas(&m, &r);
    random_norm_shifts(&m, &r);
    const int B = 2, T = 7, C = m.cfg.hidden_size, L = m.cfg.num_layers;
    int ids[14];
    for (int i = 0; i < B * T; i++) ids[i] = (int)(trng_uniform(&r) * m.cfg.vocab_size);
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m.cfg, B, T + 3), 0);   /* capacity > use */
    float *probe = alloc_normal(&r, (size_t)B * T * C, 1);
    clip_grads_t g;
    assert_int_equal(clip_grads_alloc(&g, &m, CLIP_GRAD_SHIFTS), 0);
    clip_forward(&m, &a, ids, B, T);
    clip_backward(&m, &a, probe, NULL, &g, NULL);
    fd_t f = {&m, &a, ids, B, T, probe, NULL};
    const int ns = mode == NORMSHIFT_SCALAR ? 1 : C;
    clip_layer_t *l0 = &m.layers[0], *ll = &m.layers[L - 1];
    fd_item_t items[] = {
        {"d delta token_embedding", m.token_embedding.sp->delta, g.dtoken, m.token_embedding.sp->rank},
        {"d delta position_embedding", m.position_embedding.sp->delta, g.dposition, m.position_embedding.sp->rank},
        {"d delta layer0 k_proj", l0->k.w.sp->delta, g.layers[0].k.dw, l0->k.w.sp->rank},
        {"d delta layer0 v_proj", l0->v.w.sp->delta, g.layers[0].v.dw, l0->v.w.sp->rank},
        {"d delta layer0 fc2", l0->fc2.w.sp->delta, g.layers[0].fc2.dw, l0->fc2.w.sp->rank},
        {"d delta last q_proj", ll->q.w.sp->delta, g.layers[L - 1].q.dw, ll->q.w.sp->rank},
        {"d delta last out_proj", ll->o.w.sp->delta, g.layers[L - 1].o.dw, ll->o.w.sp->rank},
        {"d delta last fc1", ll->fc1.w.sp->delta, g.layers[L - 1].fc1.dw, ll->fc1.w.sp->rank},
        {"d shift layer0 ln1", l0->ln1.shift, g.layers[0].ln1.dshift, ns},
        {"d shift last ln2", ll->ln2.shift, g.layers[L - 1].ln2.dshift, ns},
        {"d shift final ln", m.final_ln.shift, g.final_ln.dshift, ns},
    };
    /* h = 2e-2: the float32 forward's rounding dominates the stencil's error below that;
     * deltas stay >= 0.05 from the ReLU kink, beyond the 2h * scale the stencil reaches */
    run_fd(&f, items, sizeof items / sizeof items[0], 2e-2f, 2e-3);
    free(probe);
    clip_grads_free(&g);
    clip_acts_free(&a);
    free_clip(&m);
    st_close(&te.f);
    scratch_free_all();
}

static void test_fd_shifts_sd1(void **state) {
    (void)state;
    fd_shifts_case("sd1_text_encoder", 1, NORMSHIFT_ELEMENT, 1.0f, 61);
}

static void test_fd_shifts_sd2(void **state) {
    (void)state;
    fd_shifts_case("sd2_text_encoder", 0, NORMSHIFT_SCALAR, 0.7f, 62);
}

/* Dense gradients (weights, biases, gains) and dembed, on writable copies of the SD2 model. */
static void test_fd_dense(void **state) {
    (void)state;
    te_t te;
    te_open(&te, "sd2_text_encoder");
    tcopy_t cp;
    tcopy_make(&cp, &te.f);
    clip_t m;
    build_ok(&m, &te.cfg, get_copy, &cp);
    const int B = 2, T = 6, C = m.cfg.hidden_size, I = m.cfg.intermediate_size, V = m.cfg.vocab_size;
    trng_t r;
    trng_seed(&r, 71);
    int ids[12];
    for (int i = 0; i < B * T; i++) ids[i] = i % 3 == 0 ? 5 : (int)(trng_uniform(&r) * V);   /* repeats */
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m.cfg, B, T), 0);
    float *probe = alloc_normal(&r, (size_t)B * T * C, 1);
    clip_grads_t g;
    assert_int_equal(clip_grads_alloc(&g, &m, CLIP_GRAD_DENSE), 0);
    assert_null(g.final_ln.dshift);
    float *dembed = alloc_zeros((size_t)B * T * C);
    clip_forward(&m, &a, ids, B, T);
    clip_backward(&m, &a, probe, NULL, &g, dembed);
    fd_t f = {&m, &a, ids, B, T, probe, NULL};
    /* weights: probe the rows that are used (token rows of ids, positions < T) */
    float *tok = copy_data(&cp, "text_model.embeddings.token_embedding.weight");
    float *dtok_used = alloc_zeros(C), *tok_used = tok + (size_t)5 * C;
    memcpy(dtok_used, g.dtoken + (size_t)5 * C, C * sizeof(float));
    fd_item_t items[] = {
        {"dW token_embedding row 5", tok_used, dtok_used, C},
        {"dW position_embedding", copy_data(&cp, "text_model.embeddings.position_embedding.weight"), g.dposition,
         (size_t)T * C},
        {"dW layer0 q_proj", copy_data(&cp, "text_model.encoder.layers.0.self_attn.q_proj.weight"),
         g.layers[0].q.dw, (size_t)C * C},
        {"dW layer1 fc1", copy_data(&cp, "text_model.encoder.layers.1.mlp.fc1.weight"), g.layers[1].fc1.dw,
         (size_t)I * C},
        {"dW layer2 fc2", copy_data(&cp, "text_model.encoder.layers.2.mlp.fc2.weight"), g.layers[2].fc2.dw,
         (size_t)C * I},
        {"d bias layer0 q_proj", m.layers[0].q.bias, g.layers[0].q.dbias, C},
        {"d bias layer1 v_proj", m.layers[1].v.bias, g.layers[1].v.dbias, C},
        {"d bias layer2 fc1", m.layers[2].fc1.bias, g.layers[2].fc1.dbias, I},
        {"d gamma layer0 ln2", m.layers[0].ln2.gamma, g.layers[0].ln2.dgamma, C},
        {"d beta layer1 ln1", m.layers[1].ln1.beta, g.layers[1].ln1.dbeta, C},
        {"d gamma final", m.final_ln.gamma, g.final_ln.dgamma, C},
        {"d beta final", m.final_ln.beta, g.final_ln.dbeta, C},
    };
    run_fd(&f, items, sizeof items / sizeof items[0], 1e-2f, 2e-3);
    /* a key bias moves every score of a query row equally: softmax ignores it */
    double kb = 0, qb = 0;
    for (int c = 0; c < C; c++) kb = fmax(kb, fabs(g.layers[0].k.dbias[c])), qb = fmax(qb, fabs(g.layers[0].q.dbias[c]));
    assert_true(kb < 1e-5 * qb);
    /* unused token rows get nothing */
    int used[128] = {0};
    for (int i = 0; i < B * T; i++) used[ids[i]] = 1;
    for (int v = 0; v < V; v++)
        if (!used[v])
            for (int c = 0; c < C; c++) assert_true(g.dtoken[(size_t)v * C + c] == 0.0f);
    /* dembed: the token embedding gradient is dembed summed over each id's occurrences */
    float *sum5 = alloc_zeros(C);
    for (int i = 0; i < B * T; i++)
        if (ids[i] == 5)
            for (int c = 0; c < C; c++) sum5[c] += dembed[(size_t)i * C + c];
    assert_close("dembed vs d token row", sum5, dtok_used, C, 1e-5);
    free(sum5), free(dembed), free(probe), free(dtok_used);
    clip_grads_free(&g);
    clip_acts_free(&a);
    free_clip(&m);
    tcopy_free(&cp);
    st_close(&te.f);
    scratch_free_all();
}

/* clip_backward accumulates into every gradient it is given and into dembed (clip.h): with every
 * gradient pre-filled with known values p, a backward leaves p + the gradient of a zeroed run.
 * Dense weights (dW, biases, gamma, beta) and spectral weights with norm shifts (d delta, d shift). */
static void test_backward_accumulates(void **state) {
    (void)state;
    for (int spectral = 0; spectral < 2; spectral++) {
        te_t te;
        te_open(&te, "sd2_text_encoder");
        tcopy_t cp;
        tcopy_make(&cp, &te.f);
        clip_t m;
        build_ok(&m, &te.cfg, get_copy, &cp);
        if (spectral) {
            assert_int_equal(clip_make_spectral(&m, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 1), 0);
            clip_add_norm_shifts(&m, NORMSHIFT_ELEMENT);
        }
        const int B = 2, T = 6, C = m.cfg.hidden_size, V = m.cfg.vocab_size;
        trng_t r;
        trng_seed(&r, 72);
        int ids[12];
        for (int i = 0; i < B * T; i++) ids[i] = (int)(trng_uniform(&r) * V);
        clip_acts_t a;
        assert_int_equal(clip_acts_build(&a, &m.cfg, B, T), 0);
        const size_t ne = (size_t)B * T * C;
        float *probe = alloc_normal(&r, ne, 1), *fresh_e = alloc_zeros(ne), *dembed = alloc_zeros(ne);
        clip_grads_t g;
        assert_int_equal(clip_grads_alloc(&g, &m, spectral ? CLIP_GRAD_SHIFTS | CLIP_GRAD_DENSE : CLIP_GRAD_DENSE), 0);
        clip_forward(&m, &a, ids, B, T);
        clip_backward(&m, &a, probe, NULL, &g, fresh_e);
        float *fresh = malloc(g.n_floats * sizeof(float)), *pre = alloc_normal(&r, g.n_floats, 1), *pe = alloc_normal(&r, ne, 1);
        memcpy(fresh, g.memory, g.n_floats * sizeof(float));
        memcpy(g.memory, pre, g.n_floats * sizeof(float));
        memcpy(dembed, pe, ne * sizeof(float));
        clip_forward(&m, &a, ids, B, T);
        clip_backward(&m, &a, probe, NULL, &g, dembed);
        double scale = 0;
        for (size_t i = 0; i < g.n_floats; i++) scale = fmax(scale, fabs(fresh[i]));
        for (size_t i = 0; i < g.n_floats; i++) {
            if (fabs(g.memory[i] - ((double)pre[i] + fresh[i])) > 1e-5 * (1 + fabs(pre[i]) + scale)) {
                print_error("%s gradients: float %zu of %zu does not accumulate: %g, want %g + %g\n",
                            spectral ? "spectral" : "dense", i, g.n_floats, g.memory[i], pre[i], fresh[i]);
                fail();
            }
        }
        for (size_t i = 0; i < ne; i++) pe[i] += fresh_e[i];
        assert_close("dembed accumulated", dembed, pe, ne, 1e-5);
        free(probe), free(fresh_e), free(dembed), free(fresh), free(pre), free(pe);
        clip_grads_free(&g);
        clip_acts_free(&a);
        free_clip(&m);
        tcopy_free(&cp);
        st_close(&te.f);
        scratch_free_all();
    }
}


/* ---- SDXL's text_encoder_2: penultimate hidden states, pooled embedding ---- */

/* Against float64 PyTorch (gen_clip_golden.py, sdxl2.*): hidden_states[-2] and the pooled
 * embedding; with clip_skip = 1, hidden_states[-3] and the gradients of
 * <hidden, dout> + <pooled, dpool> (dembed, text_projection, final LN gain, last layer's fc2). */
static void test_golden_sdxl2(void **state) {
    (void)state;
    te_t te;
    st_file_t g;
    te_open(&te, "sdxl2_text_encoder");
    golden_open(&g, GOLDEN);
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    int *ids = golden_ids(&g, "sdxl2.ids");
    assert_int_equal(ids[T_GOLD - 1], 0);        /* row 0 padded with 0 */
    assert_int_equal(ids[2 * T_GOLD - 1], 127);  /* row 1 with the end token */
    const int C = 16, P = 12;
    const size_t n = (size_t)B_GOLD * T_GOLD * C, np = (size_t)B_GOLD * P;
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m.cfg, B_GOLD, T_GOLD), 0);
    float *pooled = malloc(np * sizeof(float));
    m.hidden_mode = CLIP_HIDDEN_PENULTIMATE;
    /* without want_pooled only the layers the hidden states need run */
    const float *h = clip_forward(&m, &a, ids, B_GOLD, T_GOLD);
    assert_int_equal(a.n_run, 2);
    check("sdxl2 hidden (no pooled)", h, &g, "sdxl2.hidden", n);
    m.want_pooled = 1;
    h = clip_forward(&m, &a, ids, B_GOLD, T_GOLD);
    assert_int_equal(a.n_run, 3);
    check("sdxl2 hidden", h, &g, "sdxl2.hidden", n);
    assert_int_equal(clip_pooled(pooled, &m, &a), 0);
    check("sdxl2 pooled", pooled, &g, "sdxl2.pooled", np);
    assert_int_equal(a.eos[1], 31);   /* the first of the end tokens */

    m.clip_skip = 1;
    clip_grads_t gr;
    assert_int_equal(clip_grads_alloc(&gr, &m, CLIP_GRAD_DENSE), 0);
    h = clip_forward(&m, &a, ids, B_GOLD, T_GOLD);
    check("sdxl2 clip_skip=1 hidden", h, &g, "sdxl2_skip1.hidden", n);
    assert_int_equal(clip_pooled(pooled, &m, &a), 0);
    check("sdxl2 clip_skip=1 pooled", pooled, &g, "sdxl2.pooled", np);   /* the last layer's, whatever the skip */
    float *dout = golden_dout(503, n), *dpool = golden_dout(504, np), *dembed = alloc_zeros(n);
    clip_backward(&m, &a, dout, dpool, &gr, dembed);
    check("sdxl2 clip_skip=1 dembed", dembed, &g, "sdxl2_skip1.dembed", n);
    check("sdxl2 d text_projection", gr.text_projection.dw, &g, "sdxl2_skip1.dproj", (size_t)P * C);
    check("sdxl2 d final LN gain", gr.final_ln.dgamma, &g, "sdxl2_skip1.dlnf", C);
    check("sdxl2 d last fc2", gr.layers[2].fc2.dw, &g, "sdxl2_skip1.dfc2_last", (size_t)C * 48);
    free(dout), free(dpool), free(dembed), free(pooled), free(ids);
    clip_grads_free(&gr);
    clip_acts_free(&a);
    free_clip(&m);
    st_close(&te.f);
    st_close(&g);
    scratch_free_all();
}

/* clip_pooled refuses a model without text_projection and a forward without want_pooled;
 * penultimate with clip_skip = L - 1 returns the embeddings, and its backward passes dhidden
 * straight to dembed. */
static void test_pooled_errors(void **state) {
    (void)state;
    te_t te2, tex;
    te_open(&te2, "sd2_text_encoder");
    te_open(&tex, "sdxl2_text_encoder");
    clip_t m2, mx;
    build_ok(&m2, &te2.cfg, get_st, &te2.f);
    build_ok(&mx, &tex.cfg, get_st, &tex.f);
    const int B = 2, T = 5, C = 16;
    int ids[10] = {126, 3, 9, 127, 0, 126, 127, 127, 4, 2};
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &te2.cfg, B, T), 0);
    float pooled[2 * 12];
    m2.want_pooled = 1;
    assert_non_null(clip_forward(&m2, &a, ids, B, T));
    assert_int_equal(clip_pooled(pooled, &m2, &a), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "no text_projection"));
    assert_non_null(clip_forward(&mx, &a, ids, B, T));   /* want_pooled not set */
    assert_int_equal(clip_pooled(pooled, &mx, &a), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "without want_pooled"));
    mx.want_pooled = 1;
    assert_non_null(clip_forward(&mx, &a, ids, B, T));
    assert_int_equal(clip_pooled(pooled, &mx, &a), 0);
    assert_int_equal(a.eos[0], 3);
    assert_int_equal(a.eos[1], 1);   /* the first of several largest ids */
    mx.want_pooled = 0;
    assert_non_null(clip_forward(&mx, &a, ids, B, T));
    assert_int_equal(clip_pooled(pooled, &mx, &a), SD_ERR_ARG);   /* the flag is per forward */

    mx.hidden_mode = CLIP_HIDDEN_PENULTIMATE;
    mx.clip_skip = 2;   /* hidden_states[-4] of 3 layers: the embeddings */
    const size_t n = (size_t)B * T * C;
    const float *h = clip_forward(&mx, &a, ids, B, T);
    assert_ptr_equal(h, a.encoded);
    assert_int_equal(a.n_run, 0);
    trng_t r;
    trng_seed(&r, 81);
    float *probe = alloc_normal(&r, n, 1), *dembed = alloc_zeros(n);
    clip_backward(&mx, &a, probe, NULL, NULL, dembed);
    assert_close("dembed = dhidden at level 0", dembed, probe, n, 0);
    free(probe), free(dembed);
    clip_acts_free(&a);
    free_clip(&m2), free_clip(&mx);
    st_close(&te2.f), st_close(&tex.f);
    scratch_free_all();
}

typedef struct { int found; const float *delta; int n; } proj_visit_t;
static void find_projection(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    proj_visit_t *v = ctx;
    if (strcmp(name->path, "text_projection")) return;
    v->found += name->kind == SHIFT_SPECTRAL && name->component == SHIFT_TE && shift == v->delta && grad;
    v->n = n;
}

/* Deltas of text_projection as random_deltas draws the others. */
static void random_projection_delta(clip_t *m, trng_t *r) {
    spectral_t *sp = m->text_projection.w.sp;
    for (int k = 0; k < sp->rank; k++) {
        float d = 0.3f * sp->S[k] * trng_normal(r);
        if (k % 3 == 2) d = -1.5f * sp->S[k] / sp->scale;
        if (fabsf(sp->S[k] + sp->scale * d) < 0.05f) d += 0.2f;
        sp->delta[k] = d;
    }
}

/* Shift gradients of the with-projection model, penultimate hidden states with clip_skip = 1
 * (layer 0's output) and the pooled embedding (every layer), for loss = <hidden, probe>,
 * <pooled, pprobe> and their sum: fd-checked where each term reaches, exactly zero where it
 * does not; the hidden-only gradients do not depend on want_pooled. */
static void test_fd_sdxl2_shifts(void **state) {
    (void)state;
    te_t te;
    te_open(&te, "sdxl2_text_encoder");
    clip_t m;
    build_ok(&m, &te.cfg, get_st, &te.f);
    assert_int_equal(clip_make_spectral(&m, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 1), 0);
    assert_int_equal(m.text_projection.w.kind, WEIGHT_SPECTRAL);
    clip_add_norm_shifts(&m, NORMSHIFT_ELEMENT);
    clip_set_shift_scale(&m, 0.8f);
    trng_t r;
    trng_seed(&r, 83);
    random_deltas(&m, &r);
    random_projection_delta(&m, &r);
    random_norm_shifts(&m, &r);
    m.hidden_mode = CLIP_HIDDEN_PENULTIMATE;
    m.clip_skip = 1;
    const int B = 2, T = 7, C = 16, P = 12;
    int ids[14];
    for (int i = 0; i < B * T; i++) ids[i] = 1 + (int)(trng_uniform(&r) * 120);
    ids[4] = 127, ids[T + 2] = 127, ids[T + 5] = 127;   /* EOS at 4 and (first) at 2 */
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m.cfg, B, T + 2), 0);
    float *probe = alloc_normal(&r, (size_t)B * T * C, 1), *pprobe = alloc_normal(&r, (size_t)B * P, 1);
    clip_grads_t g;
    assert_int_equal(clip_grads_alloc(&g, &m, CLIP_GRAD_SHIFTS), 0);
    /* the visits: 2 embeddings, 18 linears, text_projection, 7 norm shifts */
    visit_t v = {0, 0, 1, 0};
    clip_visit_shifts(&m, &g, count_shift, &v);
    assert_int_equal(v.count, 2 + 18 + 1 + 7);
    assert_int_equal(v.n_norm, 7);
    proj_visit_t pv = {0, m.text_projection.w.sp->delta, 0};
    clip_visit_shifts(&m, &g, find_projection, &pv);
    assert_int_equal(pv.found, 1);
    assert_int_equal(pv.n, 12);   /* rank min(12, 16) */
    clip_layer_t *l0 = &m.layers[0], *l2 = &m.layers[2];
    spectral_t *spp = m.text_projection.w.sp;
    for (int term = 0; term < 3; term++) {   /* 0: hidden, 1: pooled, 2: both */
        const float *pr = term != 1 ? probe : NULL, *pp = term != 0 ? pprobe : NULL;
        m.want_pooled = 1;
        clip_grads_zero(&g);
        clip_forward(&m, &a, ids, B, T);
        clip_backward(&m, &a, pr, pp, &g, NULL);
        fd_t f = {&m, &a, ids, B, T, pr, pp};
        fd_item_t early[] = {
            {"d delta token_embedding", m.token_embedding.sp->delta, g.dtoken, m.token_embedding.sp->rank},
            {"d delta layer0 q_proj", l0->q.w.sp->delta, g.layers[0].q.dw, l0->q.w.sp->rank},
            {"d delta layer0 fc2", l0->fc2.w.sp->delta, g.layers[0].fc2.dw, l0->fc2.w.sp->rank},
            {"d shift layer0 ln1", l0->ln1.shift, g.layers[0].ln1.dshift, C},
        };
        fd_item_t late[] = {
            {"d delta layer2 fc1", l2->fc1.w.sp->delta, g.layers[2].fc1.dw, l2->fc1.w.sp->rank},
            {"d delta layer1 v_proj", m.layers[1].v.w.sp->delta, g.layers[1].v.dw, m.layers[1].v.w.sp->rank},
            {"d delta text_projection", spp->delta, g.text_projection.dw, spp->rank},
            {"d shift final ln", m.final_ln.shift, g.final_ln.dshift, C},
            {"d shift layer2 ln2", l2->ln2.shift, g.layers[2].ln2.dshift, C},
        };
        run_fd(&f, early, sizeof early / sizeof early[0], 2e-2f, 2e-3);
        if (term == 0) {
            /* layers 1, 2, the final LayerNorm and the projection are beyond the hidden states */
            for (size_t i = 0; i < sizeof late / sizeof late[0]; i++)
                for (size_t k = 0; k < late[i].n; k++) assert_true(late[i].grad[k] == 0.0f);
            float *with = malloc(g.n_floats * sizeof(float));
            memcpy(with, g.memory, g.n_floats * sizeof(float));
            m.want_pooled = 0;
            clip_grads_zero(&g);
            clip_forward(&m, &a, ids, B, T);
            assert_int_equal(a.n_run, 1);
            clip_backward(&m, &a, pr, NULL, &g, NULL);
            assert_close("hidden-only grads without want_pooled", g.memory, with, g.n_floats, 0);
            free(with);
        } else {
            run_fd(&f, late, sizeof late / sizeof late[0], 2e-2f, 2e-3);
        }
    }
    free(probe), free(pprobe);
    clip_grads_free(&g);
    clip_acts_free(&a);
    free_clip(&m);
    st_close(&te.f);
    scratch_free_all();
}

/* Dense gradients of the with-projection model in the SD 1.x mode (final LayerNorm of layer
 * L - 1 with clip_skip = 1) plus the pooled embedding: the final LayerNorm gets gradients from
 * both paths. */
static void test_fd_sdxl2_dense(void **state) {
    (void)state;
    te_t te;
    te_open(&te, "sdxl2_text_encoder");
    tcopy_t cp;
    tcopy_make(&cp, &te.f);
    clip_t m;
    build_ok(&m, &te.cfg, get_copy, &cp);
    m.clip_skip = 1;
    m.want_pooled = 1;
    const int B = 2, T = 6, C = 16, P = 12, I = 48;
    trng_t r;
    trng_seed(&r, 85);
    int ids[12];
    for (int i = 0; i < B * T; i++) ids[i] = 1 + (int)(trng_uniform(&r) * 120);
    ids[3] = 127, ids[T + 5] = 127;
    clip_acts_t a;
    assert_int_equal(clip_acts_build(&a, &m.cfg, B, T), 0);
    float *probe = alloc_normal(&r, (size_t)B * T * C, 1), *pprobe = alloc_normal(&r, (size_t)B * P, 1);
    clip_grads_t g;
    assert_int_equal(clip_grads_alloc(&g, &m, CLIP_GRAD_DENSE), 0);
    assert_null(g.text_projection.dbias);
    clip_forward(&m, &a, ids, B, T);
    clip_backward(&m, &a, probe, pprobe, &g, NULL);
    fd_t f = {&m, &a, ids, B, T, probe, pprobe};
    fd_item_t items[] = {
        {"dW text_projection", copy_data(&cp, "text_projection.weight"), g.text_projection.dw, (size_t)P * C},
        {"d gamma final", m.final_ln.gamma, g.final_ln.dgamma, C},
        {"d beta final", m.final_ln.beta, g.final_ln.dbeta, C},
        {"dW layer2 fc2", copy_data(&cp, "text_model.encoder.layers.2.mlp.fc2.weight"), g.layers[2].fc2.dw,
         (size_t)C * I},
        {"dW layer0 q_proj", copy_data(&cp, "text_model.encoder.layers.0.self_attn.q_proj.weight"),
         g.layers[0].q.dw, (size_t)C * C},
        {"d bias layer1 fc1", m.layers[1].fc1.bias, g.layers[1].fc1.dbias, I},
    };
    run_fd(&f, items, sizeof items / sizeof items[0], 1e-2f, 2e-3);
    free(probe), free(pprobe);
    clip_grads_free(&g);
    clip_acts_free(&a);
    free_clip(&m);
    tcopy_free(&cp);
    st_close(&te.f);
    scratch_free_all();
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_build_errors),
        cmocka_unit_test(test_projection_config),
        cmocka_unit_test(test_golden_sd1),
        cmocka_unit_test(test_forward_over_capacity),
        cmocka_unit_test(test_golden_sd1_f16),
        cmocka_unit_test(test_golden_sd1_spectral),
        cmocka_unit_test(test_golden_sd2),
        cmocka_unit_test(test_clip_skip),
        cmocka_unit_test(test_make_spectral),
        cmocka_unit_test(test_fd_shifts_sd1),
        cmocka_unit_test(test_fd_shifts_sd2),
        cmocka_unit_test(test_fd_dense),
        cmocka_unit_test(test_backward_accumulates),
        cmocka_unit_test(test_golden_sdxl2),
        cmocka_unit_test(test_pooled_errors),
        cmocka_unit_test(test_fd_sdxl2_shifts),
        cmocka_unit_test(test_fd_sdxl2_dense),
    };
    return RUN_TESTS(argc, argv, "clip", tests, NULL, NULL);
}
