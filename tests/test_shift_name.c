/* The naming of a shift (weights/shift_name.h): every key of every kind of shift, built and parsed
 * back, against the literal keys svdiff's files have always held; malformed keys refused; and on
 * the tiny SD fixture, every shift the models visit names a tensor of the model file and its keys
 * round-trip. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "base/error.h"
#include "models/clip.h"
#include "models/unet.h"
#include "weights/shift_name.h"

#define TINY "tests/fixtures/tiny-sd/diffusers"

static const shift_key_t ALL_KEYS[] = {SHIFT_KEY_TRAINER, SHIFT_KEY_CHECKPOINT, SHIFT_KEY_FILE,   SHIFT_KEY_CACHE_U,
                                       SHIFT_KEY_CACHE_S, SHIFT_KEY_CACHE_VT,   SHIFT_KEY_WEIGHT};
#define N_KEYS (int)(sizeof ALL_KEYS / sizeof *ALL_KEYS)

static int is_cache(shift_key_t k) { return k == SHIFT_KEY_CACHE_U || k == SHIFT_KEY_CACHE_S || k == SHIFT_KEY_CACHE_VT; }

/* Builds key k of n, checks it is `want` (NULL: the build must be refused), parses it back. */
static void check_key(const shift_name_t *n, shift_key_t k, const char *want) {
    char key[512], path[512];
    const int rc = shift_key(key, sizeof key, n, k);
    if (!want) {
        assert_int_equal(rc, SD_ERR_ARG);
        assert_non_null(strstr(sd_last_error(), n->path));
        return;
    }
    if (rc) fail_msg("shift_key(%s, %d): %s", n->path, (int)k, sd_last_error());
    assert_string_equal(key, want);
    shift_name_t back;
    if (shift_key_parse(&back, path, sizeof path, key, k)) fail_msg("parse %s: %s", key, sd_last_error());
    assert_int_equal(back.component, n->component);
    assert_string_equal(back.path, n->path);
    assert_ptr_equal(back.path, path);
    /* only the cache keys carry the kind: the models' visits give it for the others */
    assert_int_equal(back.kind, is_cache(k) ? SHIFT_SPECTRAL : SHIFT_KIND_UNKNOWN);
}

static void test_unet_spectral_keys(void **state) {
    (void)state;
    const shift_name_t n = {SHIFT_UNET, SHIFT_SPECTRAL, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"};
    check_key(&n, SHIFT_KEY_TRAINER, "unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
    check_key(&n, SHIFT_KEY_CHECKPOINT, "param/unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k");
    check_key(&n, SHIFT_KEY_FILE, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.delta");
    check_key(&n, SHIFT_KEY_CACHE_U, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.U");
    check_key(&n, SHIFT_KEY_CACHE_S, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.S");
    check_key(&n, SHIFT_KEY_CACHE_VT, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.Vt");
    check_key(&n, SHIFT_KEY_WEIGHT, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight");
}

static void test_unet_norm_keys(void **state) {
    (void)state;
    const shift_name_t n = {SHIFT_UNET, SHIFT_NORM, "mid_block.resnets.0.norm1"};
    check_key(&n, SHIFT_KEY_TRAINER, "unet/mid_block.resnets.0.norm1");
    check_key(&n, SHIFT_KEY_CHECKPOINT, "param/unet/mid_block.resnets.0.norm1");
    check_key(&n, SHIFT_KEY_FILE, "mid_block.resnets.0.norm1.delta");
    check_key(&n, SHIFT_KEY_WEIGHT, "mid_block.resnets.0.norm1.weight");
    /* a norm's gain is not factored: it has no cache entry */
    check_key(&n, SHIFT_KEY_CACHE_U, NULL);
    check_key(&n, SHIFT_KEY_CACHE_S, NULL);
    check_key(&n, SHIFT_KEY_CACHE_VT, NULL);
}

static void test_te_spectral_keys(void **state) {
    (void)state;
    const shift_name_t n = {SHIFT_TE, SHIFT_SPECTRAL, "text_model.encoder.layers.0.self_attn.q_proj"};
    check_key(&n, SHIFT_KEY_TRAINER, "te/text_model.encoder.layers.0.self_attn.q_proj.weight");
    check_key(&n, SHIFT_KEY_CHECKPOINT, "param/te/text_model.encoder.layers.0.self_attn.q_proj.weight");
    check_key(&n, SHIFT_KEY_FILE, "text_model.encoder.layers.0.self_attn.q_proj.delta");
    check_key(&n, SHIFT_KEY_CACHE_U, "te:text_model.encoder.layers.0.self_attn.q_proj.U");
    check_key(&n, SHIFT_KEY_CACHE_S, "te:text_model.encoder.layers.0.self_attn.q_proj.S");
    check_key(&n, SHIFT_KEY_CACHE_VT, "te:text_model.encoder.layers.0.self_attn.q_proj.Vt");
    check_key(&n, SHIFT_KEY_WEIGHT, "text_model.encoder.layers.0.self_attn.q_proj.weight");
    const shift_name_t e = {SHIFT_TE, SHIFT_SPECTRAL, "text_model.embeddings.token_embedding"};
    check_key(&e, SHIFT_KEY_TRAINER, "te/text_model.embeddings.token_embedding.weight");
    check_key(&e, SHIFT_KEY_CACHE_U, "te:text_model.embeddings.token_embedding.U");
}

static void test_te_norm_keys(void **state) {
    (void)state;
    const shift_name_t n = {SHIFT_TE, SHIFT_NORM, "text_model.final_layer_norm"};
    check_key(&n, SHIFT_KEY_TRAINER, "te/text_model.final_layer_norm.weight");
    check_key(&n, SHIFT_KEY_CHECKPOINT, "param/te/text_model.final_layer_norm.weight");
    check_key(&n, SHIFT_KEY_FILE, "text_model.final_layer_norm.delta");
    check_key(&n, SHIFT_KEY_WEIGHT, "text_model.final_layer_norm.weight");
    check_key(&n, SHIFT_KEY_CACHE_U, NULL);
}

/* SDXL's second text encoder: the module paths of the first, its own prefixes; the file key and
 * the shift set entry carry "text_encoder_2." so that they route without metadata. */
static void test_te2_keys(void **state) {
    (void)state;
    const shift_name_t n = {SHIFT_TE2, SHIFT_SPECTRAL, "text_model.encoder.layers.0.self_attn.q_proj"};
    check_key(&n, SHIFT_KEY_TRAINER, "te2/text_model.encoder.layers.0.self_attn.q_proj.weight");
    check_key(&n, SHIFT_KEY_CHECKPOINT, "param/te2/text_model.encoder.layers.0.self_attn.q_proj.weight");
    check_key(&n, SHIFT_KEY_FILE, "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj.delta");
    check_key(&n, SHIFT_KEY_SET, "text_encoder_2.text_model.encoder.layers.0.self_attn.q_proj");
    check_key(&n, SHIFT_KEY_CACHE_U, "te2:text_model.encoder.layers.0.self_attn.q_proj.U");
    check_key(&n, SHIFT_KEY_CACHE_S, "te2:text_model.encoder.layers.0.self_attn.q_proj.S");
    check_key(&n, SHIFT_KEY_CACHE_VT, "te2:text_model.encoder.layers.0.self_attn.q_proj.Vt");
    /* the model tensor key is that of the first encoder: its component is the one it is looked up in */
    char key[256], path[256];
    assert_int_equal(shift_key(key, sizeof key, &n, SHIFT_KEY_WEIGHT), SD_OK);
    assert_string_equal(key, "text_model.encoder.layers.0.self_attn.q_proj.weight");
    /* the projection of CLIPTextModelWithProjection */
    const shift_name_t p = {SHIFT_TE2, SHIFT_SPECTRAL, "text_projection"};
    check_key(&p, SHIFT_KEY_TRAINER, "te2/text_projection.weight");
    check_key(&p, SHIFT_KEY_FILE, "text_encoder_2.text_projection.delta");
    check_key(&p, SHIFT_KEY_CACHE_S, "te2:text_projection.S");
    const shift_name_t ln = {SHIFT_TE2, SHIFT_NORM, "text_model.final_layer_norm"};
    check_key(&ln, SHIFT_KEY_FILE, "text_encoder_2.text_model.final_layer_norm.delta");
    check_key(&ln, SHIFT_KEY_CACHE_U, NULL);
    char buf[128];
    assert_int_equal(train_param_name(buf, sizeof buf, SHIFT_TE2, "text_model.encoder.layers.1.mlp.fc2.lora_down"), SD_OK);
    assert_string_equal(buf, "te2/text_model.encoder.layers.1.mlp.fc2.lora_down");
    /* routing of set entries */
    assert_int_equal(shift_component_of_path("text_encoder_2.text_model.final_layer_norm"), SHIFT_TE2);
    assert_int_equal(shift_component_of_path("text_projection"), SHIFT_TE);
    const shift_name_t e = shift_name_of_entry("text_encoder_2.text_projection");
    assert_int_equal(e.component, SHIFT_TE2);
    assert_string_equal(e.path, "text_projection");
    const shift_name_t u = shift_name_of_entry("add_embedding.linear_1");
    assert_int_equal(u.component, SHIFT_UNET);
    assert_string_equal(u.path, "add_embedding.linear_1");
    assert_string_equal(shift_component_name(SHIFT_TE2), "text_encoder_2");
    /* a UNet path under te2, a te2 key with a UNet path, te2 keys without their prefix */
    const shift_name_t bad = {SHIFT_TE2, SHIFT_SPECTRAL, "add_embedding.linear_1"};
    assert_int_equal(shift_key(key, sizeof key, &bad, SHIFT_KEY_FILE), SD_ERR_ARG);
    const shift_name_t bad2 = {SHIFT_UNET, SHIFT_SPECTRAL, "text_encoder_2.text_projection"};
    assert_int_equal(shift_key(key, sizeof key, &bad2, SHIFT_KEY_FILE), SD_ERR_ARG);
    shift_name_t back;
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "text_encoder_2.conv_in.delta", SHIFT_KEY_FILE), SD_ERR_FORMAT);
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "te2/conv_in.weight", SHIFT_KEY_TRAINER), SD_ERR_FORMAT);
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "te2:conv_in.U", SHIFT_KEY_CACHE_U), SD_ERR_FORMAT);
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "te2/text_projection", SHIFT_KEY_TRAINER), SD_ERR_FORMAT);
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "text_encoder_2..delta", SHIFT_KEY_FILE), SD_ERR_FORMAT);
    /* the first encoder's keys keep parsing as its own */
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "te:text_projection.U", SHIFT_KEY_CACHE_U), SD_OK);
    assert_int_equal(back.component, SHIFT_TE);
    assert_int_equal(shift_key_parse(&back, path, sizeof path, "text_projection.delta", SHIFT_KEY_FILE), SD_OK);
    assert_int_equal(back.component, SHIFT_TE);
}

static void test_param_and_checkpoint_names(void **state) {
    (void)state;
    char buf[128];
    assert_int_equal(train_param_name(buf, sizeof buf, SHIFT_UNET, "conv_in.bias"), SD_OK);
    assert_string_equal(buf, "unet/conv_in.bias");
    assert_int_equal(train_param_name(buf, sizeof buf, SHIFT_TE, "text_model.encoder.layers.1.mlp.fc2"), SD_OK);
    assert_string_equal(buf, "te/text_model.encoder.layers.1.mlp.fc2");
    const char *slot[4] = {"param/", "adam_m/", "adam_v/", "ema/"};
    const ckpt_slot_t slots[4] = {CKPT_PARAM, CKPT_ADAM_M, CKPT_ADAM_V, CKPT_EMA};
    for (int i = 0; i < 4; i++) {
        char want[128];
        snprintf(want, sizeof want, "%sunet/conv_in", slot[i]);
        assert_int_equal(ckpt_param_key(buf, sizeof buf, slots[i], "unet/conv_in"), SD_OK);
        assert_string_equal(buf, want);
    }
    /* too long for the buffer: refused, never cut */
    char small[8];
    assert_int_equal(ckpt_param_key(small, sizeof small, CKPT_ADAM_M, "unet/conv_in"), SD_ERR_ARG);
    assert_int_equal(train_param_name(small, sizeof small, SHIFT_UNET, "conv_in"), SD_ERR_ARG);
    const shift_name_t n = {SHIFT_UNET, SHIFT_SPECTRAL, "conv_in"};
    assert_int_equal(shift_key(small, sizeof small, &n, SHIFT_KEY_FILE), SD_ERR_ARG);
    assert_int_equal(shift_key(small, sizeof small, &n, SHIFT_KEY_CHECKPOINT), SD_ERR_ARG);
    assert_int_equal(shift_component_of_path("text_model.final_layer_norm"), SHIFT_TE);
    assert_int_equal(shift_component_of_path("conv_in"), SHIFT_UNET);
}

static void refused(const char *key, shift_key_t k) {
    char path[256];
    shift_name_t n;
    const int rc = shift_key_parse(&n, path, sizeof path, key, k);
    if (rc != SD_ERR_FORMAT) fail_msg("'%s' (key kind %d) was taken: path '%s'", key, (int)k, path);
    assert_non_null(strstr(sd_last_error(), key));
    assert_string_equal(path, "");
}

static void test_malformed_keys_refused(void **state) {
    (void)state;
    refused("", SHIFT_KEY_TRAINER);
    refused("unet/", SHIFT_KEY_TRAINER);                                   /* no path */
    refused("down_blocks.0.resnets.0.conv1", SHIFT_KEY_TRAINER);           /* no component */
    refused("te/text_model.encoder.layers.0.mlp.fc1", SHIFT_KEY_TRAINER);  /* a text-encoder name ends in .weight */
    refused("te/.weight", SHIFT_KEY_TRAINER);
    refused("te/conv_in.weight", SHIFT_KEY_TRAINER);                       /* te/ with a UNet path */
    refused("unet/text_model.final_layer_norm", SHIFT_KEY_TRAINER);        /* unet/ with a text-encoder path */
    refused("unet/conv_in", SHIFT_KEY_CHECKPOINT);                         /* no slot */
    refused("adam_m/unet/conv_in", SHIFT_KEY_CHECKPOINT);                  /* a moment, not the value */
    refused("param/", SHIFT_KEY_CHECKPOINT);
    refused("conv_in", SHIFT_KEY_FILE);
    refused(".delta", SHIFT_KEY_FILE);
    refused("conv_in.delta.weight", SHIFT_KEY_FILE);
    refused("conv_in.V", SHIFT_KEY_CACHE_VT);
    refused("conv_in.U", SHIFT_KEY_CACHE_S);
    refused("te:conv_in.U", SHIFT_KEY_CACHE_U);                            /* te: with a UNet path */
    refused("text_model.final_layer_norm.S", SHIFT_KEY_CACHE_S);           /* a text-encoder path needs te: */
    refused("te:.S", SHIFT_KEY_CACHE_S);
    refused("conv_in.bias", SHIFT_KEY_WEIGHT);
    /* and names that break the rule cannot be built */
    const shift_name_t bad[3] = {{SHIFT_TE, SHIFT_SPECTRAL, "conv_in"},
                                 {SHIFT_UNET, SHIFT_SPECTRAL, "text_model.encoder.layers.0.mlp.fc1"},
                                 {SHIFT_UNET, SHIFT_NORM, ""}};
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < N_KEYS; k++) {
            char key[256];
            assert_int_equal(shift_key(key, sizeof key, &bad[i], ALL_KEYS[k]), SD_ERR_ARG);
        }
}

/* ---- the models' own shifts ---- */

typedef struct {
    const model_component_t *comp;
    shift_component_t component;
    int n, n_norm;
} model_ctx_t;

static void check_model_shift(void *vctx, const shift_name_t *n, float *shift, float *grad, int len) {
    (void)shift, (void)grad, (void)len;
    model_ctx_t *c = vctx;
    c->n++;
    c->n_norm += n->kind == SHIFT_NORM;
    assert_int_equal(n->component, c->component);
    assert_true(n->kind == SHIFT_SPECTRAL || n->kind == SHIFT_NORM);
    /* the shift moves a tensor of the model file */
    char key[512], path[512];
    assert_int_equal(shift_key(key, sizeof key, n, SHIFT_KEY_WEIGHT), SD_OK);
    if (!component_find(c->comp, key)) fail_msg("%s: no tensor %s in the model", n->path, key);
    for (int k = 0; k < N_KEYS; k++) {
        const int rc = shift_key(key, sizeof key, n, ALL_KEYS[k]);
        if (n->kind == SHIFT_NORM && is_cache(ALL_KEYS[k])) {
            assert_int_equal(rc, SD_ERR_ARG);
            continue;
        }
        assert_int_equal(rc, SD_OK);
        shift_name_t back;
        assert_int_equal(shift_key_parse(&back, path, sizeof path, key, ALL_KEYS[k]), SD_OK);
        assert_int_equal(back.component, n->component);
        assert_string_equal(back.path, n->path);
    }
}

static void test_model_shifts_named(void **state) {
    (void)state;
    model_t mf;
    if (model_open(&mf, source_path(TINY), NULL)) fail_msg("model_open: %s", sd_last_error());
    unet_t u;
    clip_t c;
    assert_int_equal(build_unet_from_component(&u, &mf.unet), 0);
    assert_int_equal(build_clip_from_component(&c, &mf.text_encoder), 0);
    assert_int_equal(unet_make_spectral(&u, 0, NULL, NULL), 0);
    unet_add_norm_shifts(&u, NORMSHIFT_ELEMENT);
    assert_int_equal(clip_make_spectral(&c, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 0), 0);
    clip_add_norm_shifts(&c, NORMSHIFT_SCALAR);
    model_ctx_t cu = {&mf.unet, SHIFT_UNET, 0, 0}, ct = {&mf.text_encoder, SHIFT_TE, 0, 0};
    unet_visit_shifts(&u, NULL, check_model_shift, &cu);
    clip_visit_shifts(&c, NULL, check_model_shift, &ct);
    assert_int_equal(cu.n, u.n_layers + u.n_norms);
    assert_int_equal(cu.n_norm, u.n_norms);
    assert_int_equal(ct.n, 2 + 6 * c.cfg.num_layers + 2 * c.cfg.num_layers + 1);
    assert_int_equal(ct.n_norm, 2 * c.cfg.num_layers + 1);
    free_unet(&u);
    free_clip(&c);
    model_close(&mf);
}

/* The one table of the text encoder's modules, as every other file now walks it. */
typedef struct {
    int n, n_linear, n_norm, n_emb, n_bias;
    char first[160], last[160];
} walk_t;

static int walk_visit(void *ctx, const clip_module_t *mod) {
    walk_t *w = ctx;
    if (!w->n) snprintf(w->first, sizeof w->first, "%s", mod->path);
    snprintf(w->last, sizeof w->last, "%s", mod->path);
    w->n++;
    w->n_linear += mod->kind == CLIP_MODULE_LINEAR;
    w->n_norm += mod->kind == CLIP_MODULE_NORM;
    w->n_emb += mod->kind == CLIP_MODULE_EMBEDDING;
    w->n_bias += mod->bias != NULL;
    assert_true((mod->w != NULL) == (mod->kind != CLIP_MODULE_NORM));
    assert_true((mod->ln != NULL) == (mod->kind == CLIP_MODULE_NORM));
    assert_int_equal(shift_component_of_path(mod->path), SHIFT_TE);
    return 0;
}

static void test_clip_module_table(void **state) {
    (void)state;
    model_t mf;
    if (model_open(&mf, source_path(TINY), NULL)) fail_msg("model_open: %s", sd_last_error());
    clip_t c;
    assert_int_equal(build_clip_from_component(&c, &mf.text_encoder), 0);
    const int L = c.cfg.num_layers;
    walk_t w = {0};
    assert_int_equal(clip_visit_modules(&c, NULL, walk_visit, &w), 0);
    assert_int_equal(w.n, 2 + 8 * L + 1);
    assert_int_equal(w.n_emb, 2);
    assert_int_equal(w.n_linear, 6 * L);
    assert_int_equal(w.n_bias, 6 * L);
    assert_int_equal(w.n_norm, 2 * L + 1);
    assert_string_equal(w.first, "text_model.embeddings.token_embedding");
    assert_string_equal(w.last, "text_model.final_layer_norm");
    /* lookups by path: every linear of the last layer, its norms, and misses */
    clip_module_t m;
    char path[160];
    snprintf(path, sizeof path, "text_model.encoder.layers.%d.self_attn.out_proj", L - 1);
    assert_int_equal(clip_find_module(&c, path, &m), 1);
    assert_ptr_equal(m.w, &c.layers[L - 1].o.w);
    assert_ptr_equal(m.bias, c.layers[L - 1].o.bias);
    assert_ptr_equal(m.path, path);
    snprintf(path, sizeof path, "text_model.encoder.layers.%d.layer_norm2", L - 1);
    assert_int_equal(clip_find_module(&c, path, &m), 1);
    assert_ptr_equal(m.ln, &c.layers[L - 1].ln2);
    snprintf(path, sizeof path, "text_model.encoder.layers.%d.self_attn.out_proj", L);
    assert_int_equal(clip_find_module(&c, path, &m), 0);
    assert_null(m.w);
    assert_int_equal(clip_find_module(&c, "text_model.encoder.layers.0.self_attn.q_proj.weight", &m), 0);
    free_clip(&c);
    model_close(&mf);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unet_spectral_keys),
        cmocka_unit_test(test_unet_norm_keys),
        cmocka_unit_test(test_te_spectral_keys),
        cmocka_unit_test(test_te_norm_keys),
        cmocka_unit_test(test_te2_keys),
        cmocka_unit_test(test_param_and_checkpoint_names),
        cmocka_unit_test(test_malformed_keys_refused),
        cmocka_unit_test(test_model_shifts_named),
        cmocka_unit_test(test_clip_module_table),
    };
    return RUN_TESTS(argc, argv, "shift_name", tests, NULL, NULL);
}
