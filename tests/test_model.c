/* Tests for src/io/model.c, names.c and model_config.c: the tiny SD model of
 * tests/fixtures/tiny-sd (tests/reference/gen_tiny_models.py) opened as a diffusers folder, an
 * SD1 and an SD2 single file must give identical tensors under diffusers names (bit for bit as
 * floats), zero-copy views (fused in_proj slices, squeezed 1x1 kernels), derived configs equal
 * to the folder's on every key the weights determine, the SD 1.5 parameter counts from the
 * configs alone, and one clear error per malformed variant (built in a temp dir). SDXL: the tiny
 * folder of configs/tiny-sdxl.json and an sgm single file the test writes from it (its own
 * inverse of the name table) must agree the same way; the SDXL base 1.0 counts from its configs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <math.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "io/model.h"
#include "models/init.h"
#include "models/unet.h"
#include "testutil.h"

static char g_dir[256];   /* per-test temp dir */

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/svdiff_model_XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    return rm_tree(g_dir);
}

static const char *tpath(const char *rel) {
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 512, "%s/%s", g_dir, rel);
    return b;
}

static const char *fixture(const char *rel) {
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ & 3];
    char r[256];
    snprintf(r, sizeof r, "tests/fixtures/tiny-sd/%s", rel);
    snprintf(b, 512, "%s", source_path(r));
    return b;
}

static void open_ok(model_t *m, const char *path, const char *tokenizer) {
    model_open_options_t opt = {.tokenizer_dir = tokenizer};
    if (model_open(m, path, &opt) != 0) {
        print_error("model_open(%s): %s\n(regenerate fixtures with tests/reference/regenerate.sh)\n", path,
                    sd_last_error());
        fail();
    }
}

/* model_open must fail, leave *m closed, and say what is wrong: each `want` must appear. */
static void open_fails(const char *path, const char *tokenizer, const char *want1, const char *want2) {
    model_t m;
    model_open_options_t opt = {.tokenizer_dir = tokenizer};
    int rc = model_open(&m, path, &opt);
    const char *msg = sd_last_error();
    if (rc == 0) {
        model_close(&m);
        print_error("model_open(%s) succeeded, expected an error naming '%s'\n", path, want1);
        fail();
    }
    printf("    expected error: %s\n", msg);
    assert_true(rc < 0);
    assert_null(m.path);
    assert_int_equal(m.n_sets, 0);
    assert_int_equal(m.unet.n_tensors, 0);
    if (want1 && !strstr(msg, want1)) fail_msg("error '%s' does not mention '%s'", msg, want1);
    if (want2 && !strstr(msg, want2)) fail_msg("error '%s' does not mention '%s'", msg, want2);
}

/* ---- file helpers for the malformed variants ----------------------------------------------- */

static void copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0) assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static void copy_tree(const char *src, const char *dst) {
    assert_int_equal(mkdir(dst, 0755), 0);
    DIR *d = opendir(src);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char s[1024], t[1024];
        snprintf(s, sizeof s, "%s/%s", src, e->d_name);
        snprintf(t, sizeof t, "%s/%s", dst, e->d_name);
        struct stat sb;
        assert_int_equal(stat(s, &sb), 0);
        if (S_ISDIR(sb.st_mode)) copy_tree(s, t);
        else copy_file(s, t);
    }
    closedir(d);
}

/* A private copy of the diffusers fixture folder; returns its path. */
static const char *copy_folder(void) {
    const char *dst = tpath("model");
    copy_tree(fixture("diffusers"), dst);
    return dst;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static cJSON *read_json_file(const char *path) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = calloc(1, 1 << 20);
    size_t n = fread(buf, 1, (1 << 20) - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    assert_non_null(j);
    return j;
}

static void write_json_file(const char *path, const cJSON *j) {
    char *s = cJSON_Print(j);
    write_text(path, s);
    free(s);
}

/* Edits while copying a safetensors file. */
typedef struct {
    const char *drop;                    /* leave this tensor out */
    const char *reshape;                 /* give this tensor new_shape (same element count) */
    int new_ndim;
    int64_t new_shape[4];
    const char *from_prefix, *to_prefix; /* rename every tensor starting with from_prefix */
    const char *dup_from, *dup_to;       /* add a second copy of dup_from named dup_to */
    int to_f32;                          /* store F16 tensors as F32 */
} edit_t;

static void rewrite(const char *src, const char *dst, const edit_t *e) {
    st_file_t f;
    if (st_open(&f, src)) fail_msg("%s", sd_last_error());
    st_writer_t *w = st_writer_new();
    float **bufs = calloc((size_t)f.n_tensors + 1, sizeof(float *));
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *t = &f.tensors[i];
        if (e->drop && !strcmp(t->name, e->drop)) continue;
        char name[512];
        snprintf(name, sizeof name, "%s", t->name);
        if (e->from_prefix && !strncmp(t->name, e->from_prefix, strlen(e->from_prefix)))
            snprintf(name, sizeof name, "%s%s", e->to_prefix, t->name + strlen(e->from_prefix));
        int ndim = t->ndim;
        const int64_t *shape = t->shape;
        if (e->reshape && !strcmp(t->name, e->reshape)) ndim = e->new_ndim, shape = e->new_shape;
        st_dtype_t dt = t->dtype;
        const void *data = t->data;
        if (e->to_f32 && dt == ST_F16) {
            bufs[i] = malloc((size_t)t->numel * sizeof(float) + 1);
            assert_int_equal(st_read_f32(bufs[i], t), 0);
            dt = ST_F32, data = bufs[i];
        }
        assert_int_equal(st_writer_add(w, name, dt, ndim, shape, data), 0);
        if (e->dup_from && !strcmp(t->name, e->dup_from))
            assert_int_equal(st_writer_add(w, e->dup_to, dt, ndim, shape, data), 0);
    }
    if (st_writer_save(w, dst)) fail_msg("%s", sd_last_error());
    st_writer_free(w);
    for (int i = 0; i < f.n_tensors; i++) free(bufs[i]);
    free(bufs);
    st_close(&f);
}

/* ---- comparisons ---------------------------------------------------------------------------- */

static float *as_f32(const st_tensor_t *t) {
    float *x = malloc((size_t)t->numel * sizeof(float) + 1);
    if (st_read_f32(x, t)) fail_msg("%s", sd_last_error());
    return x;
}

static int is_proj_weight(const char *name) {
    size_t n = strlen(name);
    return (n > 15 && !strcmp(name + n - 15, ".proj_in.weight")) ||
           (n > 16 && !strcmp(name + n - 16, ".proj_out.weight"));
}

/* Every tensor of a (the folder) must be in b with the same values, bit for bit after conversion
 * to float, and the same shape; with linear_proj, b's proj_in/proj_out are [C, C] where a has
 * [C, C, 1, 1]. The counts must agree too, so b has nothing else. */
static void compare_components(const model_component_t *a, const model_component_t *b, int linear_proj) {
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->n_tensors, b->n_tensors);
    for (int i = 0; i < a->n_tensors; i++) {
        const st_tensor_t *ta = &a->tensors[i], *tb = component_find(b, ta->name);
        if (!tb) fail_msg("%s: '%s' missing in the single-file model", a->name, ta->name);
        assert_int_equal(ta->numel, tb->numel);
        if (linear_proj && is_proj_weight(ta->name)) {
            assert_int_equal(ta->ndim, 4);
            assert_int_equal(tb->ndim, 2);
            assert_true(ta->shape[0] == tb->shape[0] && ta->shape[1] == tb->shape[1]);
        } else {
            assert_int_equal(ta->ndim, tb->ndim);
            for (int d = 0; d < ta->ndim; d++)
                if (ta->shape[d] != tb->shape[d]) fail_msg("%s: shape of '%s' differs", a->name, ta->name);
        }
        float *xa = as_f32(ta), *xb = as_f32(tb);
        if (memcmp(xa, xb, (size_t)ta->numel * sizeof(float)))
            fail_msg("%s: values of '%s' differ between layouts", a->name, ta->name);
        free(xa);
        free(xb);
    }
}

static void test_open_diffusers(void **state) {
    (void)state;
    model_t m;
    open_ok(&m, fixture("diffusers"), NULL);
    assert_int_equal(m.layout, MODEL_LAYOUT_DIFFUSERS);
    assert_int_equal(m.n_sets, 3);
    assert_int_equal(m.sets[2].n_files, 2);   /* the sharded text encoder */
    assert_int_equal(m.unet.n_tensors, 208);
    assert_int_equal(m.vae.n_tensors, 124);
    assert_int_equal(m.text_encoder.n_tensors, 36);   /* position_ids buffer left out */
    /* the embedding covers the tokenizer's vocabulary (prompts can run through this model) */
    char vp[1024];
    snprintf(vp, sizeof vp, "%s/vocab.json", m.tokenizer_dir);
    cJSON *vocab = read_json_file(vp);
    const int64_t emb[2] = {cJSON_GetArraySize(vocab), 16};
    cJSON_Delete(vocab);
    assert_int_equal(component_require(&m.text_encoder, "text_model.embeddings.token_embedding.weight", 2, emb, NULL), 0);
    assert_null(component_find(&m.text_encoder, "text_model.embeddings.position_ids"));
    for (int i = 1; i < m.unet.n_tensors; i++)   /* sorted, for component_find */
        assert_true(strcmp(m.unet.tensors[i - 1].name, m.unet.tensors[i].name) < 0);
    /* dtypes as stored: matrices and kernels F16, vectors F32; VAE from the fp16 variant file */
    assert_int_equal(component_find(&m.unet, "conv_in.weight")->dtype, ST_F16);
    assert_int_equal(component_find(&m.unet, "time_embedding.linear_1.weight")->dtype, ST_F16);
    assert_int_equal(component_find(&m.unet, "conv_in.bias")->dtype, ST_F32);
    assert_int_equal(component_find(&m.vae, "decoder.conv_out.bias")->dtype, ST_F16);
    assert_non_null(strstr(m.sets[1].files[0].path, "diffusion_pytorch_model.fp16.safetensors"));
    assert_non_null(m.tokenizer_dir);
    assert_non_null(strstr(m.tokenizer_dir, "tokenizer"));
    const char *cls;
    model_component_t sched = {.name = "scheduler", .config = m.scheduler_config};
    assert_int_equal(config_string(&sched, "_class_name", &cls), 0);
    assert_string_equal(cls, "PNDMScheduler");
    /* views point into the mappings: nothing was copied */
    const st_tensor_t *t = component_find(&m.unet, "conv_out.weight");
    const st_file_t *f = &m.sets[0].files[0];
    assert_true((const char *)t->data > (const char *)f->map &&
                (const char *)t->data + t->nbytes <= (const char *)f->map + f->map_size);
    model_close(&m);
}

static void test_sd1_matches_folder(void **state) {
    (void)state;
    model_t a, b;
    open_ok(&a, fixture("diffusers"), NULL);
    open_ok(&b, fixture("sd1.safetensors"), NULL);
    assert_int_equal(b.layout, MODEL_LAYOUT_LDM_SD1);
    assert_int_equal(b.n_sets, 1);
    assert_null(b.tokenizer_dir);
    compare_components(&a.unet, &b.unet, 0);
    compare_components(&a.vae, &b.vae, 0);
    compare_components(&a.text_encoder, &b.text_encoder, 0);
    model_close(&a);
    model_close(&b);
}

static void test_sd2_matches_folder(void **state) {
    (void)state;
    model_t a, b;
    open_ok(&a, fixture("diffusers"), NULL);
    open_ok(&b, fixture("sd2.safetensors"), NULL);
    assert_int_equal(b.layout, MODEL_LAYOUT_LDM_SD2);
    compare_components(&a.unet, &b.unet, 1);
    compare_components(&a.text_encoder, &b.text_encoder, 0);
    /* this file has no first_stage_model.*: the VAE is absent, not an error */
    assert_int_equal(b.vae.n_tensors, 0);
    assert_null(b.vae.config);
    assert_string_equal(b.vae.name, "vae");
    /* the file's last resblock (index 2) is dropped: SD2 runs the penultimate layer */
    st_set_t *s = &b.sets[0];
    assert_non_null(st_set_find(s, "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight"));
    assert_null(component_find(&b.text_encoder, "text_model.encoder.layers.2.mlp.fc1.weight"));
    model_close(&a);
    model_close(&b);
}

/* The fused [3C, C] in_proj becomes three [C, C] views at row offsets of the stored tensor. */
static void test_fused_in_proj_views(void **state) {
    (void)state;
    model_t m;
    open_ok(&m, fixture("sd2.safetensors"), NULL);
    const st_tensor_t *fused = st_set_find(&m.sets[0], "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight");
    const st_tensor_t *fb = st_set_find(&m.sets[0], "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_bias");
    assert_non_null(fused);
    assert_non_null(fb);
    const int64_t C = 16;
    assert_true(fused->shape[0] == 3 * C && fused->shape[1] == C);
    float *all = as_f32(fused), *allb = as_f32(fb);
    const char *qkv = "qkv";
    for (int q = 0; q < 3; q++) {
        char name[128];
        snprintf(name, sizeof name, "text_model.encoder.layers.1.self_attn.%c_proj.weight", qkv[q]);
        const int64_t want[2] = {C, C};
        const st_tensor_t *t;
        assert_int_equal(component_require(&m.text_encoder, name, 2, want, &t), 0);
        assert_ptr_equal(t->data, (const char *)fused->data + (size_t)q * C * C * st_dtype_size(fused->dtype));
        float *x = as_f32(t);
        assert_memory_equal(x, all + q * C * C, (size_t)(C * C) * sizeof(float));
        free(x);
        snprintf(name, sizeof name, "text_model.encoder.layers.1.self_attn.%c_proj.bias", qkv[q]);
        const int64_t wantb[1] = {C};
        assert_int_equal(component_require(&m.text_encoder, name, 1, wantb, &t), 0);
        assert_ptr_equal(t->data, (const char *)fb->data + (size_t)q * C * st_dtype_size(fb->dtype));
        x = as_f32(t);
        assert_memory_equal(x, allb + q * C, (size_t)C * sizeof(float));
        free(x);
    }
    free(all);
    free(allb);
    model_close(&m);
    /* the VAE's 1x1 attention kernels are [C, C] views of the [C, C, 1, 1] data */
    open_ok(&m, fixture("sd1.safetensors"), NULL);
    const st_tensor_t *k4 = st_set_find(&m.sets[0], "first_stage_model.decoder.mid.attn_1.proj_out.weight");
    const st_tensor_t *k2 = component_find(&m.vae, "decoder.mid_block.attentions.0.to_out.0.weight");
    assert_non_null(k4);
    assert_non_null(k2);
    assert_int_equal(k4->ndim, 4);
    assert_int_equal(k2->ndim, 2);
    assert_ptr_equal(k2->data, k4->data);
    model_close(&m);
}

/* Keys the weights determine must equal the folder's; the others follow the documented rules. */
static void same_key(const model_component_t *a, const model_component_t *b, const char *key) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(a->config, key);
    const cJSON *y = cJSON_GetObjectItemCaseSensitive(b->config, key);
    assert_non_null(x);
    if (!y || !cJSON_Compare(x, y, 1)) {
        char *sx = cJSON_PrintUnformatted(x), *sy = y ? cJSON_PrintUnformatted(y) : NULL;
        print_error("%s config key '%s': folder %s, derived %s\n", a->name, key, sx, sy ? sy : "(absent)");
        free(sx);
        free(sy);
        fail();
    }
}

static void check_json(const model_component_t *c, const char *key, const char *want) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(c->config, key);
    assert_non_null(x);
    char *s = cJSON_PrintUnformatted(x);
    if (strcmp(s, want)) fail_msg("%s config key '%s' is %s, expected %s", c->name, key, s, want);
    free(s);
}

static void test_derived_configs(void **state) {
    (void)state;
    static const char *const unet_keys[] = {"in_channels", "out_channels", "block_out_channels", "layers_per_block",
        "down_block_types", "up_block_types", "cross_attention_dim", "act_fn", "flip_sin_to_cos", "freq_shift",
        "downsample_padding", "norm_eps", "center_input_sample", "_class_name"};
    static const char *const vae_keys[] = {"in_channels", "out_channels", "latent_channels", "block_out_channels",
        "layers_per_block", "down_block_types", "up_block_types", "scaling_factor", "act_fn", "_class_name"};
    static const char *const text_keys[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
        "max_position_embeddings", "layer_norm_eps"};
    model_t a;
    open_ok(&a, fixture("diffusers"), NULL);
    for (int v = 0; v < 2; v++) {
        model_t b;
        open_ok(&b, fixture(v ? "sd2.safetensors" : "sd1.safetensors"), NULL);
        for (size_t i = 0; i < sizeof unet_keys / sizeof *unet_keys; i++) same_key(&a.unet, &b.unet, unet_keys[i]);
        for (size_t i = 0; v == 0 && i < sizeof vae_keys / sizeof *vae_keys; i++)
            same_key(&a.vae, &b.vae, vae_keys[i]);   /* (the SD2 file has no VAE) */
        for (size_t i = 0; i < sizeof text_keys / sizeof *text_keys; i++)
            same_key(&a.text_encoder, &b.text_encoder, text_keys[i]);
        /* from the weights, differing by design between the files */
        check_json(&b.unet, "use_linear_projection", v ? "true" : "false");
        check_json(&b.text_encoder, "hidden_act", v ? "\"gelu\"" : "\"quick_gelu\"");
        /* not in the weights: SD's values, reduced to what divides the tiny widths [4, 8]
         * (SD1: 8 heads -> 4; SD2: width / 64 heads -> 1 per level; 32 groups -> 4) */
        check_json(&b.unet, "attention_head_dim", v ? "[1,1]" : "4");
        check_json(&b.unet, "norm_num_groups", "4");
        if (v == 0) check_json(&b.vae, "norm_num_groups", "4");
        check_json(&b.text_encoder, "num_attention_heads", "1");
        model_component_t sched = {.name = "scheduler", .config = b.scheduler_config};
        const char *pred;
        assert_int_equal(config_string(&sched, "prediction_type", &pred), 0);
        assert_string_equal(pred, "epsilon");
        model_close(&b);
    }
    model_close(&a);
}

/* ---- parameter counts of the real models from their configs -------------------------------- */

typedef struct {
    int64_t params;
    int count;
} count_t;

static int count_one(void *ctx, const char *name, int ndim, const int64_t *shape) {
    count_t *c = ctx;
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    c->params += n;
    c->count++;
    (void)name;
    return 0;
}

static count_t count_config(const char *name, const char *json) {
    model_component_t c = {.name = (char *)name, .config = cJSON_Parse(json)};
    assert_non_null(c.config);
    count_t n = {0, 0};
    if (component_expected_tensors(&c, count_one, &n)) fail_msg("%s", sd_last_error());
    cJSON_Delete(c.config);
    return n;
}

/* The published SD 1.5 / 2.1 configs (runwayml / stabilityai, diffusers layout) and the
 * parameter counts PyTorch reports for those models. */
static void test_sd_parameter_counts(void **state) {
    (void)state;
    count_t u = count_config("unet", "{\"act_fn\":\"silu\",\"attention_head_dim\":8,"
        "\"block_out_channels\":[320,640,1280,1280],\"center_input_sample\":false,\"cross_attention_dim\":768,"
        "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
        "\"downsample_padding\":1,\"flip_sin_to_cos\":true,\"freq_shift\":0,\"in_channels\":4,\"layers_per_block\":2,"
        "\"mid_block_scale_factor\":1,\"norm_eps\":1e-05,\"norm_num_groups\":32,\"out_channels\":4,\"sample_size\":64,"
        "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}");
    assert_int_equal(u.params, 859520964);
    assert_int_equal(u.count, 686);
    count_t u2 = count_config("unet", "{\"attention_head_dim\":[5,10,20,20],"
        "\"block_out_channels\":[320,640,1280,1280],\"cross_attention_dim\":1024,"
        "\"down_block_types\":[\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"CrossAttnDownBlock2D\",\"DownBlock2D\"],"
        "\"in_channels\":4,\"layers_per_block\":2,\"out_channels\":4,\"use_linear_projection\":true,"
        "\"upcast_attention\":true,\"class_embed_type\":null,\"num_class_embeds\":null,"
        "\"up_block_types\":[\"UpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\",\"CrossAttnUpBlock2D\"]}");
    assert_int_equal(u2.params, 865910724);
    count_t v = count_config("vae", "{\"block_out_channels\":[128,256,512,512],\"in_channels\":3,"
        "\"latent_channels\":4,\"layers_per_block\":2,\"norm_num_groups\":32,\"out_channels\":3,"
        "\"down_block_types\":[\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\",\"DownEncoderBlock2D\"],"
        "\"up_block_types\":[\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\",\"UpDecoderBlock2D\"]}");
    assert_int_equal(v.params, 83653863);
    count_t t = count_config("text_encoder", "{\"hidden_act\":\"quick_gelu\",\"hidden_size\":768,"
        "\"intermediate_size\":3072,\"max_position_embeddings\":77,\"num_attention_heads\":12,"
        "\"num_hidden_layers\":12,\"vocab_size\":49408}");
    assert_int_equal(t.params, 123060480);
    assert_int_equal(t.count, 196);
}

/* ---- config accessors ------------------------------------------------------------------------ */

static void test_config_access(void **state) {
    (void)state;
    model_component_t c = {.name = "unet", .config = cJSON_Parse(
        "{\"a\":3,\"f\":0.5,\"b\":true,\"s\":\"x\",\"arr\":[1,2,3],\"one\":7,\"nul\":null,\"half\":2.5}")};
    int i, n, arr[4];
    float f;
    const char *s;
    assert_int_equal(config_int(&c, "a", &i), 0);
    assert_int_equal(i, 3);
    assert_int_equal(config_float(&c, "f", &f), 0);
    assert_true(f == 0.5f);
    assert_int_equal(config_float(&c, "a", &f), 0);   /* an integer is a number */
    assert_int_equal(config_bool(&c, "b", &i), 0);
    assert_int_equal(i, 1);
    assert_int_equal(config_string(&c, "s", &s), 0);
    assert_string_equal(s, "x");
    assert_int_equal(config_int_array(&c, "arr", arr, 4, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(arr[2], 3);
    assert_int_equal(config_int_array(&c, "one", arr, 4, &n), 0);   /* a single int is an array of one */
    assert_int_equal(n, 1);
    assert_int_equal(arr[0], 7);
    assert_int_equal(config_int_array(&c, "arr", arr, 2, &n), SD_ERR_FORMAT);   /* too long */
    assert_int_equal(config_int(&c, "missing", &i), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "unet"));
    assert_non_null(strstr(sd_last_error(), "missing"));
    assert_int_equal(config_int(&c, "half", &i), SD_ERR_FORMAT);   /* 2.5 is no integer */
    assert_non_null(strstr(sd_last_error(), "half"));
    assert_int_equal(config_int(&c, "s", &i), SD_ERR_FORMAT);
    assert_int_equal(config_bool(&c, "a", &i), SD_ERR_FORMAT);
    assert_int_equal(config_string(&c, "a", &s), SD_ERR_FORMAT);
    assert_int_equal(config_int(&c, "nul", &i), SD_ERR_FORMAT);   /* null: absent */
    assert_int_equal(config_int_or(&c, "nul", 9, &i), 0);
    assert_int_equal(i, 9);
    assert_int_equal(config_int_or(&c, "missing", 5, &i), 0);
    assert_int_equal(i, 5);
    assert_int_equal(config_int_or(&c, "s", 5, &i), SD_ERR_FORMAT);   /* present with a wrong type */
    assert_int_equal(config_float_or(&c, "missing", 1.5f, &f), 0);
    assert_true(f == 1.5f);
    assert_int_equal(config_string_or(&c, "missing", "dflt", &s), 0);
    assert_string_equal(s, "dflt");
    assert_int_equal(config_string_or(&c, "a", "dflt", &s), SD_ERR_FORMAT);
    cJSON_Delete(c.config);
}

static void test_component_require(void **state) {
    (void)state;
    model_t m;
    open_ok(&m, fixture("diffusers"), NULL);
    const st_tensor_t *t;
    const int64_t ok[4] = {4, 4, 3, 3}, any[4] = {-1, 4, -1, 3}, bad[4] = {4, 5, 3, 3};
    assert_int_equal(component_require(&m.unet, "conv_in.weight", 4, ok, &t), 0);
    assert_non_null(t);
    assert_int_equal(component_require(&m.unet, "conv_in.weight", 4, any, &t), 0);
    assert_int_equal(component_require(&m.unet, "conv_in.weight", 4, bad, &t), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "conv_in.weight"));
    assert_non_null(strstr(sd_last_error(), "[4, 4, 3, 3]"));
    assert_non_null(strstr(sd_last_error(), "[4, 5, 3, 3]"));
    assert_int_equal(component_require(&m.unet, "conv_in.weight", 2, ok, &t), SD_ERR_SHAPE);
    assert_int_equal(component_require(&m.unet, "no.such.weight", 1, ok, &t), SD_ERR_FORMAT);
    assert_null(t);
    assert_non_null(strstr(sd_last_error(), "no.such.weight"));
    assert_null(component_find(&m.unet, "conv_in"));
    model_close(&m);
}

/* ---- variants that must open ----------------------------------------------------------------- */

static void test_folder_variants(void **state) {
    (void)state;
    const char *dir = copy_folder();
    char p[1024], q[1024];
    model_t m;
    /* the plain name wins over the fp16 variant when both exist */
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.fp16.safetensors", dir);
    snprintf(q, sizeof q, "%s/vae/diffusion_pytorch_model.safetensors", dir);
    rewrite(p, q, &(edit_t){.to_f32 = 1});
    open_ok(&m, dir, NULL);
    assert_int_equal(component_find(&m.vae, "decoder.conv_out.bias")->dtype, ST_F32);
    model_close(&m);
    /* --tokenizer replaces the folder's; a folder without merges.txt is refused */
    open_ok(&m, fixture("sd1.safetensors"), fixture("diffusers/tokenizer"));
    assert_non_null(m.tokenizer_dir);
    model_close(&m);
    open_fails(fixture("sd1.safetensors"), fixture("diffusers/unet"), "tokenizer", "vocab.json");
    /* a pixel-space model: no vae in model_index.json and no vae/ folder */
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    cJSON *idx = read_json_file(p);
    cJSON_DeleteItemFromObject(idx, "vae");
    write_json_file(p, idx);
    cJSON_Delete(idx);
    snprintf(q, sizeof q, "%s/vae", dir);
    assert_int_equal(rm_tree(q), 0);
    open_ok(&m, dir, NULL);
    assert_int_equal(m.vae.n_tensors, 0);
    assert_null(m.vae.config);
    assert_string_equal(m.vae.name, "vae");
    assert_int_equal(m.unet.n_tensors, 208);
    model_close(&m);
    /* no scheduler entry: the default schedule */
    idx = read_json_file(p);
    cJSON_DeleteItemFromObject(idx, "scheduler");
    write_json_file(p, idx);
    cJSON_Delete(idx);
    open_ok(&m, dir, NULL);
    assert_non_null(m.scheduler_config);
    model_close(&m);
}

/* ---- malformed variants ------------------------------------------------------------------------ */

static void test_missing_model_index(void **state) {
    (void)state;
    const char *dir = copy_folder();
    char p[1024];
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    assert_int_equal(unlink(p), 0);
    open_fails(dir, NULL, "model_index.json", NULL);
    open_fails(tpath("nonexistent"), NULL, "nonexistent", NULL);
}

static void test_bad_config_json(void **state) {
    (void)state;
    const char *dir = copy_folder();
    char p[1024];
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    write_text(p, "{\"in_channels\": 4, \"block_out_channels\": [4, 8");
    open_fails(dir, NULL, "unet/config.json", "JSON");
    write_text(p, "[1, 2]");
    open_fails(dir, NULL, "unet/config.json", "object");
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    write_text(p, "not json");
    open_fails(dir, NULL, "model_index.json", "JSON");
}

static void test_missing_config_key(void **state) {
    (void)state;
    static const char *const cases[][2] = {
        {"unet", "block_out_channels"}, {"unet", "cross_attention_dim"}, {"vae", "latent_channels"},
        {"text_encoder", "num_hidden_layers"}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        const char *dir = copy_folder();
        char p[1024];
        snprintf(p, sizeof p, "%s/%s/config.json", dir, cases[k][0]);
        cJSON *j = read_json_file(p);
        cJSON_DeleteItemFromObject(j, cases[k][1]);
        write_json_file(p, j);
        cJSON_Delete(j);
        open_fails(dir, NULL, cases[k][0], cases[k][1]);
        assert_int_equal(rm_tree(dir), 0);
    }
}

static void test_config_mismatch(void **state) {
    (void)state;
    const char *dir = copy_folder();
    char p[1024];
    snprintf(p, sizeof p, "%s/unet/config.json", dir);
    cJSON *j = read_json_file(p);
    /* a config describing a wider model than the weights: the first tensor off is named */
    cJSON_ReplaceItemInObject(j, "block_out_channels", cJSON_Parse("[4, 12]"));
    write_json_file(p, j);
    open_fails(dir, NULL, "unet", "down_blocks.1.resnets.0");
    /* an unsupported variant, and heads that do not divide the width */
    cJSON_ReplaceItemInObject(j, "block_out_channels", cJSON_Parse("[4, 8]"));
    cJSON_AddItemToObject(j, "class_embed_type", cJSON_CreateString("timestep"));
    write_json_file(p, j);
    open_fails(dir, NULL, "unet", "class_embed_type");
    cJSON_DeleteItemFromObject(j, "class_embed_type");
    cJSON_ReplaceItemInObject(j, "attention_head_dim", cJSON_CreateNumber(3));
    write_json_file(p, j);
    open_fails(dir, NULL, "attention_head_dim", NULL);
    cJSON_Delete(j);
}

static void test_missing_files(void **state) {
    (void)state;
    const char *dir = copy_folder();
    char p[1024], q[1024];
    snprintf(p, sizeof p, "%s/vae/config.json", dir);
    assert_int_equal(unlink(p), 0);
    open_fails(dir, NULL, "vae/config.json", NULL);
    assert_int_equal(rm_tree(dir), 0);
    dir = copy_folder();
    snprintf(p, sizeof p, "%s/text_encoder/model.safetensors.index.json", dir);
    snprintf(q, sizeof q, "%s/text_encoder/index.json.bak", dir);
    assert_int_equal(rename(p, q), 0);
    open_fails(dir, NULL, "text_encoder", "no weights");
    assert_int_equal(rename(q, p), 0);
    snprintf(p, sizeof p, "%s/text_encoder/model-00002-of-00002.safetensors", dir);
    assert_int_equal(unlink(p), 0);
    open_fails(dir, NULL, "model-00002-of-00002.safetensors", NULL);
    assert_int_equal(rm_tree(dir), 0);
    dir = copy_folder();
    snprintf(p, sizeof p, "%s/scheduler/scheduler_config.json", dir);   /* listed but gone */
    assert_int_equal(unlink(p), 0);
    open_fails(dir, NULL, "scheduler_config.json", NULL);
    snprintf(p, sizeof p, "%s/vae", dir);
    assert_int_equal(rm_tree(p), 0);
    open_fails(dir, NULL, "vae", "missing");
}

static void test_dropped_and_reshaped_tensor(void **state) {
    (void)state;
    const char *dir = copy_folder();
    char p[1024], q[1024];
    snprintf(p, sizeof p, "%s/vae/diffusion_pytorch_model.fp16.safetensors", dir);
    snprintf(q, sizeof q, "%s/vae.orig", g_dir);
    copy_file(p, q);
    rewrite(q, p, &(edit_t){.drop = "decoder.conv_in.bias"});
    open_fails(dir, NULL, "missing tensor", "decoder.conv_in.bias");
    rewrite(q, p, &(edit_t){.reshape = "encoder.conv_out.weight", .new_ndim = 4, .new_shape = {4, 16, 3, 3}});
    open_fails(dir, NULL, "encoder.conv_out.weight", "[4, 16, 3, 3]");
    rewrite(q, p, &(edit_t){.dup_from = "quant_conv.bias", .dup_to = "quant_conv.extra"});
    open_fails(dir, NULL, "unexpected tensor", "quant_conv.extra");
    /* single files: a dropped UNet tensor is named by its diffusers name, a reshaped one too */
    rewrite(fixture("sd1.safetensors"), tpath("drop.safetensors"), &(edit_t){.drop = "model.diffusion_model.out.2.weight"});
    open_fails(tpath("drop.safetensors"), NULL, "conv_out.weight", "missing");
    rewrite(fixture("sd1.safetensors"), tpath("shape.safetensors"),
            &(edit_t){.reshape = "model.diffusion_model.time_embed.0.weight", .new_ndim = 2, .new_shape = {4, 16}});
    open_fails(tpath("shape.safetensors"), NULL, "time_embedding.linear_1.weight", "[4, 16]");
    rewrite(fixture("sd2.safetensors"), tpath("qkv.safetensors"),
            &(edit_t){.reshape = "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_bias", .new_ndim = 2,
                      .new_shape = {6, 8}});
    open_fails(tpath("qkv.safetensors"), NULL, "self_attn.q_proj.bias", NULL);
}

/* What the builders support, a file reaches: a model using transformer_layers_per_block [1, 2],
 * time_embedding_dim, 1x1 conv_in / conv_out and a VAE without quant_conv (refused by the old
 * separate tensor walk) is written by model_init, opens and validates; its files hold exactly the
 * layers of the registry; a dropped or reshaped tensor of those layers is still named. */
static void test_builder_variants(void **state) {
    (void)state;
    cJSON *cfg;
    assert_int_equal(model_init_read_config(source_path("tests/fixtures/init/variant-config.json"), &cfg), 0);
    const char *dir = tpath("variant");
    model_init_options_t opt = {.seed = 5, .tokenizer_dir = source_path("tests/fixtures/tokenizer/tiny")};
    if (model_init(cfg, dir, &opt, NULL)) fail_msg("%s", sd_last_error());
    /* and one without a mid block, with per-level layers_per_block, and a VAE mid block without
     * attention; its UNet runs a forward */
    cJSON *u = cJSON_GetObjectItem(cfg, "unet");
    cJSON_AddItemToObject(u, "mid_block_type", cJSON_CreateNull());
    cJSON_ReplaceItemInObject(u, "layers_per_block", cJSON_Parse("[1, 2]"));
    cJSON_AddBoolToObject(cJSON_GetObjectItem(cfg, "vae"), "mid_block_add_attention", 0);
    const char *dir2 = tpath("variant2");
    if (model_init(cfg, dir2, &opt, NULL)) fail_msg("%s", sd_last_error());
    cJSON_Delete(cfg);
    model_t m;
    open_ok(&m, dir2, NULL);
    assert_null(component_find(&m.unet, "mid_block.resnets.0.conv1.weight"));
    assert_non_null(component_find(&m.unet, "down_blocks.1.resnets.1.conv1.weight"));
    assert_non_null(component_find(&m.unet, "up_blocks.0.resnets.2.conv1.weight"));
    assert_null(component_find(&m.unet, "up_blocks.1.resnets.2.conv1.weight"));
    assert_null(component_find(&m.vae, "decoder.mid_block.attentions.0.to_q.weight"));
    unet_t net;
    if (build_unet_from_component(&net, &m.unet)) fail_msg("%s", sd_last_error());
    unet_acts_t acts;
    assert_int_equal(unet_acts_build(&acts, &net, 1, 4, 4, 3, 0, UNET_CKPT_NONE), 0);
    float x[4 * 16], y[4 * 16], ctx[3 * 16], ts = 500.0f;
    for (int i = 0; i < 64; i++) x[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;
    for (int i = 0; i < 48; i++) ctx[i] = (float)((i * 11) % 13) / 6.0f - 1.0f;
    assert_int_equal(unet_forward(y, &net, &acts, x, &ts, ctx, NULL, 1, 4, 4, 3), 0);
    double sum = 0;
    for (int i = 0; i < 64; i++) {
        assert_true(isfinite(y[i]));
        sum += fabs(y[i]);
    }
    assert_true(sum > 0);
    unet_acts_free(&acts);
    free_unet(&net);
    model_close(&m);
    open_ok(&m, dir, NULL);
    /* the registry's layers, with the shapes the config asks for */
    layer_registry_t r = {0};
    assert_int_equal(component_registry(&m.unet, &r), 0);
    const layer_spec_t *s = layer_registry_find(&r, "conv_in");
    assert_non_null(s);
    assert_int_equal(s->kind, LAYER_CONV);
    assert_int_equal(s->k, 1);
    s = layer_registry_find(&r, "mid_block.attentions.0.transformer_blocks.1.attn2.to_k");
    assert_non_null(s);
    assert_int_equal(s->kind, LAYER_LINEAR);
    assert_int_equal(s->bias, 0);
    assert_null(layer_registry_find(&r, "down_blocks.0.attentions.0.transformer_blocks.1.norm1"));
    layer_registry_free(&r);
    static const struct { const char *name; int ndim; int64_t shape[4]; } want[] = {
        {"conv_in.weight", 4, {8, 4, 1, 1}},
        {"conv_out.weight", 4, {4, 8, 1, 1}},
        {"time_embedding.linear_1.weight", 2, {24, 8}},
        {"time_embedding.linear_2.weight", 2, {24, 24}},
        {"down_blocks.0.resnets.0.time_emb_proj.weight", 2, {8, 24}},
        {"down_blocks.1.attentions.0.transformer_blocks.1.ff.net.2.weight", 2, {16, 64}},
        {"up_blocks.0.attentions.1.transformer_blocks.1.norm3.bias", 1, {16}},
    };
    for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
        const st_tensor_t *t;
        if (component_require(&m.unet, want[i].name, want[i].ndim, want[i].shape, &t)) fail_msg("%s", sd_last_error());
    }
    assert_null(component_find(&m.unet, "up_blocks.1.attentions.0.transformer_blocks.1.norm1.weight"));
    assert_null(component_find(&m.vae, "quant_conv.weight"));
    assert_non_null(component_find(&m.vae, "post_quant_conv.weight"));
    model_close(&m);
    /* a missing tensor and a wrong shape are named */
    char p[1024], q[1024];
    snprintf(p, sizeof p, "%s/unet/diffusion_pytorch_model.safetensors", dir);
    snprintf(q, sizeof q, "%s/unet.orig", g_dir);
    copy_file(p, q);
    rewrite(q, p, &(edit_t){.drop = "mid_block.attentions.0.transformer_blocks.1.attn1.to_q.weight"});
    open_fails(dir, NULL, "missing", "mid_block.attentions.0.transformer_blocks.1.attn1.to_q.weight");
    rewrite(q, p, &(edit_t){.reshape = "time_embedding.linear_1.weight", .new_ndim = 2, .new_shape = {8, 24}});
    open_fails(dir, NULL, "time_embedding.linear_1.weight", "[24, 8]");
    rewrite(q, p, &(edit_t){.reshape = "conv_in.weight", .new_ndim = 2, .new_shape = {8, 4}});
    open_fails(dir, NULL, "conv_in.weight", "[8, 4, 1, 1]");
}

/* A config alone builds the layer registry (validation, init): sizes past any model are refused
 * with a message naming the key, before anything is allocated for them. */
static void test_config_limits(void **state) {
    (void)state;
    static const char *const unet_base = "\"in_channels\": 4, \"out_channels\": 4, \"cross_attention_dim\": 8, "
        "\"attention_head_dim\": 2, \"norm_num_groups\": 4, \"down_block_types\": [\"DownBlock2D\"], "
        "\"up_block_types\": [\"UpBlock2D\"]";
    static const struct { const char *comp, *json, *want; } cases[] = {
        {"unet", "\"block_out_channels\": [8], \"layers_per_block\": 100000", "layers_per_block"},
        {"unet", "\"block_out_channels\": [8], \"layers_per_block\": 1, \"conv_in_kernel\": 1001", "conv_in_kernel"},
        {"unet", "\"block_out_channels\": [100000000], \"layers_per_block\": 1", "block_out_channels"},
        {"vae", "\"block_out_channels\": [8], \"in_channels\": 3, \"out_channels\": 3, \"latent_channels\": 4, "
                "\"norm_num_groups\": 4, \"layers_per_block\": 100000000", "layers_per_block"},
        {"text_encoder", "\"hidden_size\": 8, \"intermediate_size\": 16, \"num_attention_heads\": 2, "
                         "\"vocab_size\": 10, \"max_position_embeddings\": 8, \"num_hidden_layers\": 100000000",
         "num_hidden_layers"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char json[1024];
        snprintf(json, sizeof json, "{%s%s%s}", cases[k].json, strcmp(cases[k].comp, "unet") ? "" : ", ",
                 strcmp(cases[k].comp, "unet") ? "" : unet_base);
        model_component_t c = {.name = (char *)cases[k].comp, .config = cJSON_Parse(json)};
        assert_non_null(c.config);
        layer_registry_t r = {0};
        assert_int_equal(component_registry(&c, &r), SD_ERR_FORMAT);
        if (!strstr(sd_last_error(), cases[k].want))
            fail_msg("case %zu: error '%s' does not mention '%s'", k, sd_last_error(), cases[k].want);
        assert_int_equal(r.n, 0);
        layer_registry_free(&r);
        cJSON_Delete(c.config);
    }
    /* the same configs within the limits give their registries */
    model_component_t c = {.name = "unet", .config = cJSON_Parse(
        "{\"block_out_channels\": [8], \"layers_per_block\": 1024, \"conv_in_kernel\": 15, \"in_channels\": 4, "
        "\"out_channels\": 4, \"cross_attention_dim\": 8, \"attention_head_dim\": 2, \"norm_num_groups\": 4, "
        "\"down_block_types\": [\"DownBlock2D\"], \"up_block_types\": [\"UpBlock2D\"]}")};
    layer_registry_t r = {0};
    if (component_registry(&c, &r)) fail_msg("%s", sd_last_error());
    assert_non_null(layer_registry_find(&r, "down_blocks.0.resnets.1023.conv2"));
    assert_non_null(layer_registry_find(&r, "up_blocks.0.resnets.1024.conv2"));
    assert_int_equal(layer_registry_find(&r, "conv_in")->k, 15);
    layer_registry_free(&r);
    cJSON_Delete(c.config);
    /* 8 levels of 80 resnets: 647 skip tensors, past the fixed skip stack of 576 that setup() once
     * had (a segfault of `svdiff generate` on such a model; ASan names the overflow) */
    c.config = cJSON_Parse("{\"block_out_channels\": [8, 8, 8, 8, 8, 8, 8, 8], \"layers_per_block\": 80, "
        "\"in_channels\": 4, \"out_channels\": 4, \"cross_attention_dim\": 8, \"attention_head_dim\": 2, "
        "\"norm_num_groups\": 4, \"down_block_types\": [\"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\", "
        "\"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\", \"DownBlock2D\"], "
        "\"up_block_types\": [\"UpBlock2D\", \"UpBlock2D\", \"UpBlock2D\", \"UpBlock2D\", \"UpBlock2D\", "
        "\"UpBlock2D\", \"UpBlock2D\", \"UpBlock2D\"]}");
    if (component_registry(&c, &r)) fail_msg("%s", sd_last_error());
    assert_non_null(layer_registry_find(&r, "up_blocks.7.resnets.80.conv2"));
    layer_registry_free(&r);
    cJSON_Delete(c.config);
}

static void test_unknown_layout(void **state) {
    (void)state;
    /* SDXL names with only the first of its two text encoders */
    rewrite(fixture("sd1.safetensors"), tpath("xl.safetensors"),
            &(edit_t){.from_prefix = "cond_stage_model.transformer.", .to_prefix = "conditioner.embedders.0.transformer."});
    open_fails(tpath("xl.safetensors"), NULL, "SDXL checkpoint without its second text encoder", "conditioner.embedders.1.model.");
    /* a diffusers component file is not a single-file checkpoint */
    open_fails(fixture("diffusers/unet/diffusion_pytorch_model.safetensors"), NULL, "unknown checkpoint layout",
               "conv_in");
    /* an unexpected name inside a known prefix */
    rewrite(fixture("sd1.safetensors"), tpath("odd.safetensors"),
            &(edit_t){.dup_from = "model.diffusion_model.out.0.bias", .dup_to = "model.diffusion_model.label_emb.1.0.bias"});
    open_fails(tpath("odd.safetensors"), NULL, "unknown checkpoint layout", "label_emb.1.0.bias");
    /* SDXL's label_emb on an SD 1.x UNet without the rest of its text_time embedding */
    rewrite(fixture("sd1.safetensors"), tpath("odd2.safetensors"),
            &(edit_t){.dup_from = "model.diffusion_model.out.0.bias", .dup_to = "model.diffusion_model.label_emb.0.0.bias"});
    open_fails(tpath("odd2.safetensors"), NULL, "unexpected tensor", "add_embedding.linear_1.bias");
    /* no text encoder at all */
    rewrite(fixture("sd1.safetensors"), tpath("notext.safetensors"),
            &(edit_t){.from_prefix = "cond_stage_model.transformer.", .to_prefix = "model_ema.x"});
    open_fails(tpath("notext.safetensors"), NULL, "text encoder", NULL);
    open_fails(fixture("diffusers/model_index.json"), NULL, "not a .safetensors file", NULL);
}


/* ---- SDXL: the tiny SDXL folder of configs/tiny-sdxl.json and an sgm single file made from it ---- */

/* Writes the tiny SDXL folder (svdiff init, fp16) into the temp dir; returns its path. */
static const char *tiny_sdxl_folder(void) {
    const char *dir = tpath("xl");
    cJSON *cfg;
    assert_int_equal(model_init_read_config(source_path("configs/tiny-sdxl.json"), &cfg), 0);
    model_init_options_t o = {.seed = 3, .fp16 = 1, .tokenizer_dir = source_path("tests/fixtures/tokenizer/tiny")};
    if (model_init(cfg, dir, &o, NULL)) fail_msg("model_init: %s", sd_last_error());
    cJSON_Delete(cfg);
    return dir;
}

static const char *const RESNET_LDM[][2] = {
    {"norm1.", "in_layers.0."}, {"conv1.", "in_layers.2."}, {"time_emb_proj.", "emb_layers.1."},
    {"norm2.", "out_layers.0."}, {"conv2.", "out_layers.3."}, {"conv_shortcut.", "skip_connection."},
};

/* diffusers resnet tail "norm1.weight" -> LDM "in_layers.0.weight" */
static void resnet_ldm(char *out, size_t cap, const char *prefix, const char *tail) {
    for (size_t i = 0; i < sizeof RESNET_LDM / sizeof *RESNET_LDM; i++) {
        size_t n = strlen(RESNET_LDM[i][0]);
        if (!strncmp(tail, RESNET_LDM[i][0], n)) {
            snprintf(out, cap, "%s%s%s", prefix, RESNET_LDM[i][1], tail + n);
            return;
        }
    }
    fail_msg("no LDM name for resnet tensor '%s'", tail);
}

/* The sgm (Stability generative-models) name of a diffusers UNet tensor, as SDXL checkpoints
 * store it: written independently of src/io/names.c, from the block arithmetic of the LDM UNet
 * (input_blocks: conv_in, then per level L resnets (+ attention) and a downsampler; output_blocks:
 * per level L + 1 resnets (+ attention), the upsampler after the last). */
static void unet_ldm(char *out, size_t cap, const model_component_t *u, const char *d, int L) {
    int i, j, n;
    char tail[256], pre[128];
    static const char *const fixed[][2] = {
        {"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
        {"add_embedding.linear_1.", "label_emb.0.0."}, {"add_embedding.linear_2.", "label_emb.0.2."},
        {"conv_in.", "input_blocks.0.0."}, {"conv_norm_out.", "out.0."}, {"conv_out.", "out.2."}};
    for (size_t k = 0; k < sizeof fixed / sizeof *fixed; k++)
        if (!strncmp(d, fixed[k][0], strlen(fixed[k][0]))) {
            snprintf(out, cap, "model.diffusion_model.%s%s", fixed[k][1], d + strlen(fixed[k][0]));
            return;
        }
    if (sscanf(d, "down_blocks.%d.resnets.%d.%n", &i, &j, &n) == 2) {
        snprintf(pre, sizeof pre, "model.diffusion_model.input_blocks.%d.0.", 1 + i * (L + 1) + j);
        resnet_ldm(out, cap, pre, d + n);
    } else if (sscanf(d, "down_blocks.%d.attentions.%d.%255s", &i, &j, tail) == 3) {
        snprintf(out, cap, "model.diffusion_model.input_blocks.%d.1.%s", 1 + i * (L + 1) + j, tail);
    } else if (sscanf(d, "down_blocks.%d.downsamplers.0.conv.%255s", &i, tail) == 2) {
        snprintf(out, cap, "model.diffusion_model.input_blocks.%d.0.op.%s", (i + 1) * (L + 1), tail);
    } else if (sscanf(d, "mid_block.resnets.%d.%n", &i, &n) == 1) {
        snprintf(pre, sizeof pre, "model.diffusion_model.middle_block.%d.", 2 * i);
        resnet_ldm(out, cap, pre, d + n);
    } else if (sscanf(d, "mid_block.attentions.0.%255s", tail) == 1) {
        snprintf(out, cap, "model.diffusion_model.middle_block.1.%s", tail);
    } else if (sscanf(d, "up_blocks.%d.resnets.%d.%n", &i, &j, &n) == 2) {
        snprintf(pre, sizeof pre, "model.diffusion_model.output_blocks.%d.0.", i * (L + 1) + j);
        resnet_ldm(out, cap, pre, d + n);
    } else if (sscanf(d, "up_blocks.%d.attentions.%d.%255s", &i, &j, tail) == 3) {
        snprintf(out, cap, "model.diffusion_model.output_blocks.%d.1.%s", i * (L + 1) + j, tail);
    } else if (sscanf(d, "up_blocks.%d.upsamplers.0.conv.%255s", &i, tail) == 2) {
        char a[96];
        snprintf(a, sizeof a, "up_blocks.%d.attentions.0.proj_in.weight", i);
        snprintf(out, cap, "model.diffusion_model.output_blocks.%d.%d.conv.%s", i * (L + 1) + L,
                 component_find(u, a) ? 2 : 1, tail);
    } else {
        fail_msg("no LDM name for UNet tensor '%s'", d);
    }
}

/* OpenCLIP name (conditioner.embedders.1.model.*) of a diffusers text_encoder_2 tensor; NULL for
 * q/k/v and the projection, which the writer handles. */
static int openclip_ldm(char *out, size_t cap, const char *d) {
    static const char *const fixed[][2] = {
        {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
        {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
        {"text_model.final_layer_norm.weight", "ln_final.weight"},
        {"text_model.final_layer_norm.bias", "ln_final.bias"}};
    static const char *const part[][2] = {{"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."},
        {"self_attn.out_proj.", "attn.out_proj."}, {"mlp.fc1.", "mlp.c_fc."}, {"mlp.fc2.", "mlp.c_proj."}};
    for (size_t k = 0; k < sizeof fixed / sizeof *fixed; k++)
        if (!strcmp(d, fixed[k][0])) return snprintf(out, cap, "conditioner.embedders.1.model.%s", fixed[k][1]), 1;
    int l, n;
    if (sscanf(d, "text_model.encoder.layers.%d.%n", &l, &n) == 1)
        for (size_t k = 0; k < sizeof part / sizeof *part; k++)
            if (!strncmp(d + n, part[k][0], strlen(part[k][0]))) {
                snprintf(out, cap, "conditioner.embedders.1.model.transformer.resblocks.%d.%s%s", l, part[k][1],
                         d + n + strlen(part[k][0]));
                return 1;
            }
    return 0;
}

typedef struct {
    int drop_te2_fc2;        /* leave out one TE2 tensor */
    int projection_3d;       /* store text_projection with 3 dims */
} sgm_edit_t;

/* An SDXL checkpoint in the sgm layout from the folder's tensors: the UNet under
 * model.diffusion_model.*, text_encoder under conditioner.embedders.0.transformer.* (HF names,
 * with transformers' position_ids buffer), text_encoder_2 as OpenCLIP under
 * conditioner.embedders.1.model.* (q/k/v fused into attn.in_proj_weight / in_proj_bias,
 * text_projection stored transposed, logit_scale), and the VAE of tests/fixtures/tiny-sd/sd1
 * (first_stage_model.*, LDM names). */
static void write_sgm(const model_t *f, const char *path, const sgm_edit_t *e) {
    st_writer_t *w = st_writer_new();
    void *bufs[64];
    int nb = 0;
    char name[512];
    int L = 0;
    assert_int_equal(config_int(&f->unet, "layers_per_block", &L), 0);
    for (int i = 0; i < f->unet.n_tensors; i++) {
        const st_tensor_t *t = &f->unet.tensors[i];
        unet_ldm(name, sizeof name, &f->unet, t->name, L);
        assert_int_equal(st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    for (int i = 0; i < f->text_encoder.n_tensors; i++) {
        const st_tensor_t *t = &f->text_encoder.tensors[i];
        snprintf(name, sizeof name, "conditioner.embedders.0.transformer.%s", t->name);
        assert_int_equal(st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    static const int64_t pos_shape[2] = {1, 77};
    static int64_t pos_ids[77];
    for (int i = 0; i < 77; i++) pos_ids[i] = i;
    assert_int_equal(st_writer_add(w, "conditioner.embedders.0.transformer.text_model.embeddings.position_ids", ST_I64, 2,
                                   pos_shape, pos_ids), 0);
    const model_component_t *t2 = &f->text_encoder_2;
    int layers = 0;
    assert_int_equal(config_int(t2, "num_hidden_layers", &layers), 0);
    for (int i = 0; i < t2->n_tensors; i++) {
        const st_tensor_t *t = &t2->tensors[i];
        if (e && e->drop_te2_fc2 && strstr(t->name, "layers.1.mlp.fc2.weight")) continue;
        if (openclip_ldm(name, sizeof name, t->name))
            assert_int_equal(st_writer_add(w, name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    for (int l = 0; l < layers; l++)
        for (int b = 0; b < 2; b++) {   /* fused in_proj: rows q, then k, then v */
            const st_tensor_t *q[3];
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "text_model.encoder.layers.%d.self_attn.%c_proj.%s", l, "qkv"[k],
                         b ? "bias" : "weight");
                assert_non_null(q[k] = component_find(t2, name));
            }
            unsigned char *fused = malloc(3 * q[0]->nbytes);
            for (int k = 0; k < 3; k++) memcpy(fused + k * q[0]->nbytes, q[k]->data, q[0]->nbytes);
            int64_t shape[2] = {3 * q[0]->shape[0], q[0]->ndim == 2 ? q[0]->shape[1] : 0};
            snprintf(name, sizeof name, "conditioner.embedders.1.model.transformer.resblocks.%d.attn.in_proj_%s", l,
                     b ? "bias" : "weight");
            assert_int_equal(st_writer_add(w, name, q[0]->dtype, q[0]->ndim, shape, fused), 0);
            bufs[nb++] = fused;
        }
    const st_tensor_t *p = component_find(t2, "text_projection.weight");   /* [proj, hidden] -> [hidden, proj] */
    assert_non_null(p);
    const size_t es = st_dtype_size(p->dtype), R = (size_t)p->shape[0], C = (size_t)p->shape[1];
    unsigned char *pt = malloc(p->nbytes);
    for (size_t r = 0; r < R; r++)
        for (size_t c = 0; c < C; c++) memcpy(pt + (c * R + r) * es, (const unsigned char *)p->data + (r * C + c) * es, es);
    int64_t pshape[3] = {(int64_t)C, (int64_t)R, 1};
    assert_int_equal(st_writer_add(w, "conditioner.embedders.1.model.text_projection", p->dtype,
                                   e && e->projection_3d ? 3 : 2, pshape, pt), 0);
    bufs[nb++] = pt;
    static const float logit_scale = 4.6052f;
    assert_int_equal(st_writer_add(w, "conditioner.embedders.1.model.logit_scale", ST_F32, 0, NULL, &logit_scale), 0);
    st_file_t sd1;
    assert_int_equal(st_open(&sd1, fixture("sd1.safetensors")), 0);
    for (int i = 0; i < sd1.n_tensors; i++) {
        const st_tensor_t *t = &sd1.tensors[i];
        if (strncmp(t->name, "first_stage_model.", 18)) continue;
        assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    if (st_writer_save(w, path)) fail_msg("%s", sd_last_error());
    st_writer_free(w);
    st_close(&sd1);
    for (int i = 0; i < nb; i++) free(bufs[i]);
}

static void test_sdxl_folder(void **state) {
    (void)state;
    const char *dir = tiny_sdxl_folder();
    model_t m;
    open_ok(&m, dir, NULL);
    assert_int_equal(m.layout, MODEL_LAYOUT_DIFFUSERS);
    assert_int_equal(model_family(&m), MODEL_FAMILY_SDXL);
    assert_string_equal(model_family_name(model_family(&m)), "sdxl");
    assert_string_equal(m.text_encoder_2.name, "text_encoder_2");
    assert_int_equal(m.text_encoder_2.n_tensors, 53);   /* 2 embeddings, 3 x 16 layer tensors, final LN, projection */
    const int64_t proj[2] = {16, 24};
    assert_int_equal(component_require(&m.text_encoder_2, "text_projection.weight", 2, proj, NULL), 0);
    const int64_t add1[2] = {32, 40};   /* [time_embed_dim 4 x 8, pooled 16 + 6 x 4] */
    assert_int_equal(component_require(&m.unet, "add_embedding.linear_1.weight", 2, add1, NULL), 0);
    assert_non_null(m.tokenizer_2_dir);
    assert_non_null(strstr(m.tokenizer_2_dir, "tokenizer_2"));
    assert_int_equal(m.force_zeros_for_empty_prompt, 1);
    model_close(&m);
    /* an fp16 variant file, then sharded fp16 variant files (an index naming two shards), open the same */
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/text_encoder_2/model.safetensors", dir);
    snprintf(b, sizeof b, "%s/text_encoder_2/model.fp16.safetensors", dir);
    assert_int_equal(rename(a, b), 0);
    open_ok(&m, dir, NULL);
    assert_int_equal(m.text_encoder_2.n_tensors, 53);
    model_close(&m);
    st_file_t whole;
    assert_int_equal(st_open(&whole, b), 0);
    st_writer_t *w[2] = {st_writer_new(), st_writer_new()};
    cJSON *index = cJSON_CreateObject(), *map = cJSON_AddObjectToObject(index, "weight_map");
    static const char *const shard[2] = {"model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors"};
    for (int i = 0; i < whole.n_tensors; i++) {
        const st_tensor_t *t = &whole.tensors[i];
        assert_int_equal(st_writer_add(w[i & 1], t->name, t->dtype, t->ndim, t->shape, t->data), 0);
        cJSON_AddStringToObject(map, t->name, shard[i & 1]);
    }
    for (int k = 0; k < 2; k++) {
        snprintf(a, sizeof a, "%s/text_encoder_2/%s", dir, shard[k]);
        if (st_writer_save(w[k], a)) fail_msg("%s", sd_last_error());
        st_writer_free(w[k]);
    }
    st_close(&whole);
    assert_int_equal(unlink(b), 0);
    snprintf(a, sizeof a, "%s/text_encoder_2/model.safetensors.index.fp16.json", dir);
    write_json_file(a, index);
    cJSON_Delete(index);
    open_ok(&m, dir, NULL);
    assert_int_equal(m.text_encoder_2.n_tensors, 53);
    int shards = 0;
    for (int i = 0; i < m.n_sets; i++)
        if (strstr(m.sets[i].files[0].path, "text_encoder_2/model.fp16-0000")) shards += m.sets[i].n_files;
    assert_int_equal(shards, 2);   /* text_encoder_2's set: the two shard files */
    model_close(&m);
    /* an SD 1.x folder has no text_encoder_2: family sd1, component empty but named */
    open_ok(&m, fixture("diffusers"), NULL);
    assert_int_equal(model_family(&m), MODEL_FAMILY_SD1);
    assert_int_equal(m.text_encoder_2.n_tensors, 0);
    assert_string_equal(m.text_encoder_2.name, "text_encoder_2");
    assert_null(m.tokenizer_2_dir);
    assert_int_equal(m.force_zeros_for_empty_prompt, 0);
    model_close(&m);
    open_ok(&m, fixture("sd2.safetensors"), NULL);
    assert_int_equal(model_family(&m), MODEL_FAMILY_SD2);
    model_close(&m);
}

static void test_sdxl_single_file_matches_folder(void **state) {
    (void)state;
    model_t f, s, sd;
    open_ok(&f, tiny_sdxl_folder(), NULL);
    write_sgm(&f, tpath("xl.safetensors"), NULL);
    open_ok(&s, tpath("xl.safetensors"), source_path("tests/fixtures/tokenizer/tiny"));
    assert_int_equal(s.layout, MODEL_LAYOUT_LDM_SDXL);
    assert_int_equal(model_family(&s), MODEL_FAMILY_SDXL);
    compare_components(&f.unet, &s.unet, 0);
    compare_components(&f.text_encoder, &s.text_encoder, 0);
    compare_components(&f.text_encoder_2, &s.text_encoder_2, 0);   /* q/k/v sliced, projection transposed back */
    open_ok(&sd, fixture("diffusers"), NULL);
    compare_components(&sd.vae, &s.vae, 0);
    model_close(&sd);
    /* the projection is a copy the model owns (the file holds its transpose); q/k/v stay views */
    const st_tensor_t *p = component_find(&s.text_encoder_2, "text_projection.weight");
    const st_file_t *file = &s.sets[0].files[0];
    assert_true((const char *)p->data < (const char *)file->map ||
                (const char *)p->data >= (const char *)file->map + file->map_size);
    const st_tensor_t *q = component_find(&s.text_encoder_2, "text_model.encoder.layers.2.self_attn.k_proj.weight");
    assert_true((const char *)q->data > (const char *)file->map &&
                (const char *)q->data < (const char *)file->map + file->map_size);
    /* configs from the shapes: the folder's on every key the weights determine */
    static const char *const unet_keys[] = {"in_channels", "out_channels", "block_out_channels", "layers_per_block",
        "down_block_types", "up_block_types", "cross_attention_dim", "transformer_layers_per_block",
        "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
        "use_linear_projection", "attention_head_dim"};
    static const char *const text_keys[] = {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size",
        "max_position_embeddings", "hidden_act", "architectures"};
    for (size_t i = 0; i < sizeof unet_keys / sizeof *unet_keys; i++) {
        if (!strcmp(unet_keys[i], "attention_head_dim")) continue;   /* 64-wide heads: [1, 1] at these widths */
        same_key(&f.unet, &s.unet, unet_keys[i]);
    }
    check_json(&s.unet, "attention_head_dim", "[1,1]");
    check_json(&s.unet, "sample_size", "128");
    for (size_t i = 0; i < sizeof text_keys / sizeof *text_keys; i++) {
        same_key(&f.text_encoder, &s.text_encoder, text_keys[i]);
        same_key(&f.text_encoder_2, &s.text_encoder_2, text_keys[i]);
    }
    same_key(&f.text_encoder_2, &s.text_encoder_2, "projection_dim");
    check_json(&s.vae, "scaling_factor", "0.13025");
    model_component_t sched = {.name = "scheduler", .config = s.scheduler_config};
    const char *cls, *spacing;
    int offset;
    assert_int_equal(config_string(&sched, "_class_name", &cls), 0);
    assert_string_equal(cls, "EulerDiscreteScheduler");
    assert_int_equal(config_string(&sched, "timestep_spacing", &spacing), 0);
    assert_string_equal(spacing, "leading");
    assert_int_equal(config_int(&sched, "steps_offset", &offset), 0);
    assert_int_equal(offset, 1);
    assert_int_equal(s.force_zeros_for_empty_prompt, 1);
    assert_non_null(s.tokenizer_2_dir);   /* --tokenizer serves both encoders of a single file */
    assert_non_null(strstr(s.prediction_why, "SDXL"));
    model_close(&s);
    model_close(&f);
}

/* Truncated or mismatched SDXL files: one line naming the file and the tensor. */
static void test_sdxl_hostile(void **state) {
    (void)state;
    model_t f;
    open_ok(&f, tiny_sdxl_folder(), NULL);
    write_sgm(&f, tpath("ok.safetensors"), NULL);
    write_sgm(&f, tpath("drop.safetensors"), &(sgm_edit_t){.drop_te2_fc2 = 1});
    write_sgm(&f, tpath("proj3.safetensors"), &(sgm_edit_t){.projection_3d = 1});
    model_close(&f);
    open_fails(tpath("drop.safetensors"), NULL, "text_encoder_2: missing tensor", "layers.1.mlp.fc2.weight");
    open_fails(tpath("proj3.safetensors"), NULL, "conditioner.embedders.1.model.text_projection", "3 dims");
    /* the file cut short: the header promises more bytes than there are */
    FILE *in = fopen(tpath("ok.safetensors"), "rb");
    assert_non_null(in);
    fseek(in, 0, SEEK_END);
    long n = ftell(in);
    fclose(in);
    assert_int_equal(truncate(tpath("ok.safetensors"), n - 100), 0);
    open_fails(tpath("ok.safetensors"), NULL, "ok.safetensors", NULL);
    const char *msg = sd_last_error();
    assert_null(strchr(msg, '\n'));
    /* the UNet of SDXL without its text_time input split (label_emb.0.0 narrower than the pooled 16) */
    rewrite(tpath("drop.safetensors"), tpath("lab.safetensors"),
            &(edit_t){.reshape = "model.diffusion_model.label_emb.0.0.weight", .new_ndim = 2, .new_shape = {80, 16}});
    open_fails(tpath("lab.safetensors"), NULL, "add_embedding.linear_1.weight", "label_emb.0.0");
}

/* The published SDXL base 1.0 configs give the parameter counts diffusers / transformers report. */
static void test_sdxl_parameter_counts(void **state) {
    (void)state;
    cJSON *cfg;
    assert_int_equal(model_init_read_config(source_path("configs/sdxl-base.json"), &cfg), 0);
    static const char *const comp[4] = {"unet", "text_encoder", "text_encoder_2", "vae"};
    static const int64_t want[4] = {2567463684, 123060480, 694659840, 83653863};
    for (int k = 0; k < 4; k++) {
        model_component_t c = {.name = (char *)comp[k], .config = cJSON_GetObjectItemCaseSensitive(cfg, comp[k])};
        count_t n = {0, 0};
        if (component_expected_tensors(&c, count_one, &n)) fail_msg("%s", sd_last_error());
        if (n.params != want[k]) fail_msg("%s: %lld parameters, published %lld", comp[k], (long long)n.params,
                                          (long long)want[k]);
    }
    cJSON_Delete(cfg);
}

static void test_duplicate_mapping(void **state) {
    (void)state;
    /* CLIP names with and without the text_model level land on the same tensor */
    rewrite(fixture("sd1.safetensors"), tpath("dup.safetensors"),
            &(edit_t){.dup_from = "cond_stage_model.transformer.text_model.final_layer_norm.weight",
                      .dup_to = "cond_stage_model.transformer.final_layer_norm.weight"});
    open_fails(tpath("dup.safetensors"), NULL, "duplicate", "text_model.final_layer_norm.weight");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_diffusers),
        cmocka_unit_test(test_sd1_matches_folder),
        cmocka_unit_test(test_sd2_matches_folder),
        cmocka_unit_test(test_fused_in_proj_views),
        cmocka_unit_test(test_derived_configs),
        cmocka_unit_test(test_sd_parameter_counts),
        cmocka_unit_test(test_config_access),
        cmocka_unit_test(test_component_require),
        cmocka_unit_test_setup_teardown(test_folder_variants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_model_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_config_json, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_config_key, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dropped_and_reshaped_tensor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builder_variants, setup, teardown),
        cmocka_unit_test_setup_teardown(test_config_limits, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_layout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_mapping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sdxl_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sdxl_single_file_matches_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sdxl_hostile, setup, teardown),
        cmocka_unit_test(test_sdxl_parameter_counts),
    };
    return RUN_TESTS(argc, argv, "model", tests, NULL, NULL);
}
