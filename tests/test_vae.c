/* AutoencoderKL (models/vae.h): config parsing and errors, the tensor names against the
 * fixtures' diffusers files, image <-> tensor conversion (bit-exact against numpy/torch),
 * encode / sample / decode against float64 PyTorch (tests/fixtures/vae/, written by
 * tests/reference/gen_vae_golden.py) with F32 and F16 weights and a config without quant
 * convs or attention but with a shift factor, row bands of every size, legacy attention names
 * and LDM-shaped attention weights, and the decoder's peak activation memory. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "models/vae.h"

#define TOL 1e-4
#define GOLDEN "vae/golden.safetensors"
#define B_GOLD 2
#define H_GOLD 16
#define W_GOLD 24

/* ---- fixtures ---- */

static const st_tensor_t *get_st(void *ctx, const char *name) { return st_find(ctx, name); }

static cJSON *read_json(const char *rel) {
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
    return j;
}

/* A vae/ folder of the fixtures: its config and its opened weights. */
typedef struct {
    vae_config_t cfg;
    st_file_t f;
} folder_t;

static void folder_open(folder_t *fo, const char *folder) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/fixtures/vae/%s/config.json", folder);
    cJSON *j = read_json(rel);
    int rc = vae_config_from_json(&fo->cfg, j, rel);
    cJSON_Delete(j);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    snprintf(rel, sizeof rel, "vae/%s/diffusion_pytorch_model.safetensors", folder);
    golden_open(&fo->f, rel);
}

static void build_ok(vae_t *m, const vae_config_t *cfg, vae_get_fn get, void *ctx) {
    int rc = build_vae(m, cfg, get, ctx);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
}

/* Compares [B, C, h*w] tensors channel by channel: logvar channels near 20 and latents with
 * std e^10 would otherwise hide every error elsewhere in one max-relative measure. */
static void assert_close_channels(const char *name, const float *got, const float *want, int B, int C, size_t hw) {
    char label[128];
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            snprintf(label, sizeof label, "%s[b=%d, c=%d]", name, b, c);
            const size_t off = ((size_t)b * C + c) * hw;
            assert_close(label, got + off, want + off, hw, TOL);
        }
}

/* Encodes the golden images with `m` and checks mean, logvar and the sampled latents
 * against "<prefix>.mean/logvar/latents" (noise "<noise>"). */
static void check_encode(const vae_t *m, const st_file_t *g, const char *prefix, const char *noise_key) {
    const int f = vae_scale_factor(&m->cfg), L = m->cfg.latent_channels;
    const int h = H_GOLD / f, w = W_GOLD / f;
    const size_t n = (size_t)B_GOLD * L * h * w;
    char key[64];
    float *img = golden_get(g, "img.tensor", (int64_t)B_GOLD * 3 * H_GOLD * W_GOLD);
    float *noise = golden_get(g, noise_key, (int64_t)n);
    float *mean = malloc(sizeof(float) * n), *logvar = malloc(sizeof(float) * n), *lat = malloc(sizeof(float) * n);
    int rc = vae_encode(m, mean, logvar, img, B_GOLD, H_GOLD, W_GOLD);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    vae_sample_latents(lat, mean, logvar, noise, n, &m->cfg);
    const char *names[3] = {"mean", "logvar", "latents"};
    float *got[3] = {mean, logvar, lat};
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "%s.%s", prefix, names[i]);
        float *want = golden_get(g, key, (int64_t)n);
        assert_close_channels(key, got[i], want, B_GOLD, L, (size_t)h * w);
        free(want);
    }
    free(img), free(noise), free(mean), free(logvar), free(lat);
}

/* Decodes "<lat_key>" and checks the image against "<img_key>". */
static void check_decode(const vae_t *m, const st_file_t *g, const char *lat_key, const char *img_key) {
    const int f = vae_scale_factor(&m->cfg), L = m->cfg.latent_channels;
    const int h = H_GOLD / f, w = W_GOLD / f;
    const size_t n_img = (size_t)B_GOLD * 3 * H_GOLD * W_GOLD;
    float *lat = golden_get(g, lat_key, (int64_t)B_GOLD * L * h * w);
    float *want = golden_get(g, img_key, (int64_t)n_img);
    float *img = malloc(sizeof(float) * n_img);
    int rc = vae_decode(m, img, lat, B_GOLD, h, w);
    if (rc) print_error("%s\n", sd_last_error());
    assert_int_equal(rc, 0);
    assert_close_channels(img_key, img, want, B_GOLD, 3, (size_t)H_GOLD * W_GOLD);
    free(lat), free(want), free(img);
}

/* ---- config ---- */

static int parse(const char *text, vae_config_t *cfg) {
    cJSON *j = cJSON_Parse(text);
    assert_non_null(j);
    int rc = vae_config_from_json(cfg, j, "test config");
    cJSON_Delete(j);
    return rc;
}

static void test_vae_config(void **state) {
    (void)state;
    folder_t fo;
    folder_open(&fo, "vae");
    const vae_config_t *c = &fo.cfg;
    assert_int_equal(c->n_blocks, 2);
    assert_int_equal(c->block_out_channels[0], 8);
    assert_int_equal(c->block_out_channels[1], 16);
    assert_int_equal(c->layers_per_block, 1);
    assert_int_equal(c->norm_num_groups, 4);
    assert_int_equal(c->latent_channels, 4);
    assert_int_equal(c->in_channels, 3);
    assert_int_equal(c->out_channels, 3);
    assert_true(c->scaling_factor == 0.18215f);
    assert_true(c->shift_factor == 0.0f);   /* "shift_factor": null */
    assert_int_equal(c->sample_size, 32);
    assert_true(c->use_quant_conv && c->use_post_quant_conv && c->mid_block_add_attention);
    assert_int_equal(vae_scale_factor(c), 2);
    st_close(&fo.f);

    folder_open(&fo, "vae_plain");
    c = &fo.cfg;
    assert_int_equal(c->layers_per_block, 2);
    assert_true(c->shift_factor == 0.1f && c->scaling_factor == 0.5f);
    assert_true(!c->use_quant_conv && !c->use_post_quant_conv && !c->mid_block_add_attention);
    st_close(&fo.f);

    /* defaults of AutoencoderKL for absent keys */
    vae_config_t d;
    assert_int_equal(parse("{}", &d), 0);
    assert_int_equal(d.n_blocks, 1);
    assert_int_equal(d.block_out_channels[0], 64);
    assert_int_equal(d.layers_per_block, 1);
    assert_int_equal(d.norm_num_groups, 32);
    assert_true(d.scaling_factor == 0.18215f && d.shift_factor == 0.0f);
    /* SD-size config with a sample_size list */
    assert_int_equal(parse("{\"block_out_channels\": [128, 256, 512, 512], \"layers_per_block\": 2,"
                           " \"sample_size\": [512, 512], \"shift_factor\": 0.0609, \"scaling_factor\": 1.5305}", &d), 0);
    assert_int_equal(d.n_blocks, 4);
    assert_int_equal(vae_scale_factor(&d), 8);
    assert_int_equal(d.sample_size, 512);

    const char *bad[] = {
        "{\"act_fn\": \"gelu\"}",
        "{\"block_out_channels\": [8, 12], \"norm_num_groups\": 8}",
        "{\"block_out_channels\": [8, 16], \"down_block_types\": [\"DownEncoderBlock2D\"]}",
        "{\"block_out_channels\": [8, 16], \"up_block_types\": [\"UpDecoderBlock2D\", \"AttnUpDecoderBlock2D\"]}",
        "{\"layers_per_block\": 1.5}",
        "{\"layers_per_block\": 0}",
        "{\"block_out_channels\": []}",
        "{\"use_quant_conv\": 1}",
        "{\"scaling_factor\": \"0.18\"}",
        "{\"scaling_factor\": 0}",
        "{\"norm_type\": \"spatial\"}",
        "[1, 2]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sd_clear_error();
        int rc = parse(bad[i], &d);
        if (rc != SD_ERR_FORMAT) print_error("accepted bad config %s\n", bad[i]);
        assert_int_equal(rc, SD_ERR_FORMAT);
        assert_non_null(strstr(sd_last_error(), "test config"));
    }
}

/* The names build_vae reads are exactly the fixture files' tensors (which the Python side
 * derives from diffusers' module tree on its own), with the same shapes. */
static void test_vae_param_names(void **state) {
    (void)state;
    const char *folders[] = {"vae", "vae_plain"};
    for (int k = 0; k < 2; k++) {
        folder_t fo;
        folder_open(&fo, folders[k]);
        const int n = vae_param_specs(&fo.cfg, NULL, 0);
        assert_int_equal(n, fo.f.n_tensors);
        vae_param_spec_t *specs = malloc(sizeof *specs * n);
        assert_int_equal(vae_param_specs(&fo.cfg, specs, n), n);
        for (int i = 0; i < n; i++) {
            const st_tensor_t *t = st_find(&fo.f, specs[i].name);
            if (!t) print_error("%s: no tensor %s in the fixture\n", folders[k], specs[i].name);
            assert_non_null(t);
            assert_int_equal(t->ndim, specs[i].ndim);
            for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], specs[i].shape[d]);
        }
        /* a few names spelled out, as diffusers' state_dict has them */
        const char *must[] = {"encoder.conv_in.weight", "encoder.down_blocks.0.resnets.0.norm1.weight",
                              "decoder.conv_out.bias", "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
                              "encoder.mid_block.resnets.1.conv2.weight", "decoder.conv_norm_out.weight"};
        for (size_t i = 0; i < sizeof must / sizeof *must; i++) {
            int found = 0;
            for (int j = 0; j < n; j++) found |= !strcmp(specs[j].name, must[i]);
            assert_true(found);
        }
        free(specs);
        st_close(&fo.f);
    }
    /* SD 1.x: 248 tensors (83.65 M parameters) */
    vae_config_t sd;
    assert_int_equal(parse("{\"block_out_channels\": [128, 256, 512, 512], \"layers_per_block\": 2}", &sd), 0);
    const int n = vae_param_specs(&sd, NULL, 0);
    vae_param_spec_t *specs = malloc(sizeof *specs * n);
    vae_param_specs(&sd, specs, n);
    int64_t params = 0;
    int has[4] = {0};
    const char *sd_names[4] = {"encoder.down_blocks.0.downsamplers.0.conv.weight", "encoder.mid_block.attentions.0.to_q.weight",
                               "quant_conv.weight", "decoder.up_blocks.0.upsamplers.0.conv.weight"};
    for (int i = 0; i < n; i++) {
        int64_t e = 1;
        for (int d = 0; d < specs[i].ndim; d++) e *= specs[i].shape[d];
        params += e;
        for (int k = 0; k < 4; k++) has[k] |= !strcmp(specs[i].name, sd_names[k]);
    }
    assert_int_equal(n, 248);
    assert_int_equal(params, 83653863);
    for (int k = 0; k < 4; k++) assert_true(has[k]);
    free(specs);
}

/* ---- image <-> tensor ---- */

static void test_vae_image_tensor(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, GOLDEN);
    const size_t n = (size_t)B_GOLD * 3 * H_GOLD * W_GOLD, per = n / B_GOLD;
    float *u8f = golden_get(&g, "img.u8", (int64_t)n), *want = golden_get(&g, "img.tensor", (int64_t)n);
    uint8_t *u8 = malloc(n);
    for (size_t i = 0; i < n; i++) u8[i] = (uint8_t)u8f[i];
    float *t = malloc(sizeof(float) * n);
    for (int b = 0; b < B_GOLD; b++) vae_image_to_tensor(t + b * per, u8 + b * per, H_GOLD, W_GOLD, 3);
    assert_memory_equal(t, want, sizeof(float) * n);   /* bit for bit */

    /* postprocess, ties included (numpy rounds half to even) */
    float *x = golden_get(&g, "post.x", 3 * 64), *pu = golden_get(&g, "post.u8", 64 * 3);
    uint8_t out[64 * 3];
    vae_tensor_to_image(out, x, 8, 8, 3);
    for (int i = 0; i < 64 * 3; i++) {
        if (out[i] != (uint8_t)pu[i]) print_error("post.u8[%d]: got %d want %d\n", i, out[i], (int)pu[i]);
        assert_int_equal(out[i], (uint8_t)pu[i]);
    }
    /* round trip of every value, and the ends */
    uint8_t all[256], back[256];
    float ft[256];
    for (int i = 0; i < 256; i++) all[i] = (uint8_t)i;
    vae_image_to_tensor(ft, all, 1, 256, 1);
    assert_true(ft[0] == -1.0f && ft[255] == 1.0f);
    vae_tensor_to_image(back, ft, 1, 256, 1);
    assert_memory_equal(all, back, 256);
    const float odd[4] = {NAN, INFINITY, -INFINITY, 5.0f};
    uint8_t ob[4];
    vae_tensor_to_image(ob, odd, 1, 4, 1);
    assert_int_equal(ob[0], 0);
    assert_int_equal(ob[1], 255);
    assert_int_equal(ob[2], 0);
    assert_int_equal(ob[3], 255);
    free(u8f), free(want), free(u8), free(t), free(x), free(pu);
    st_close(&g);
}

/* ---- forward against the golden model ---- */

static void test_vae_encode(void **state) {
    (void)state;
    folder_t fo;
    folder_open(&fo, "vae");
    st_file_t g;
    golden_open(&g, GOLDEN);
    vae_t m;
    build_ok(&m, &fo.cfg, get_st, &fo.f);
    check_encode(&m, &g, "enc", "enc.noise");
    /* the clamp: logvar channel 1 is partly exactly 20, channel 2 partly exactly -30 */
    m.band_floats = 1;   /* every 3x3 conv in bands of one output row */
    check_encode(&m, &g, "enc", "enc.noise");
    m.band_floats = 3000;   /* bands of a few rows, the last one shorter */
    check_encode(&m, &g, "enc", "enc.noise");
    free_vae(&m);
    st_close(&g);
    st_close(&fo.f);
    scratch_free_all();
}

static void test_vae_decode(void **state) {
    (void)state;
    folder_t fo;
    folder_open(&fo, "vae");
    st_file_t g;
    golden_open(&g, GOLDEN);
    vae_t m;
    build_ok(&m, &fo.cfg, get_st, &fo.f);
    vae_reset_peak();
    check_decode(&m, &g, "dec.latents", "dec.image");
    /* Peak activations: the first resnet of the last up block holds its 16-channel input
     * (written over in place) and its 8-channel conv1 output at 16x24; nothing else is alive
     * (latents, mid block, the upsampler's input and output are smaller or already freed). */
    const size_t peak = vae_peak_activation_bytes();
    const size_t expect = sizeof(float) * (16 + 8) * H_GOLD * W_GOLD;
    if (peak != expect) print_error("decode peak activations %zu bytes, expected %zu\n", peak, expect);
    assert_int_equal(peak, expect);
    for (size_t bf = 1; bf <= 20000; bf *= 7) {
        m.band_floats = bf;
        check_decode(&m, &g, "dec.latents", "dec.image");
    }
    free_vae(&m);
    st_close(&g);
    st_close(&fo.f);
    scratch_free_all();
}

static void test_vae_f16(void **state) {
    (void)state;
    folder_t fo;
    folder_open(&fo, "vae_f16");
    st_file_t g;
    golden_open(&g, GOLDEN);
    assert_int_equal(st_find(&fo.f, "decoder.conv_in.weight")->dtype, ST_F16);
    vae_t m;
    build_ok(&m, &fo.cfg, get_st, &fo.f);
    assert_int_equal(m.decoder.conv_in.w.dtype, ST_F16);   /* a view, not converted */
    check_encode(&m, &g, "enc16", "enc.noise");
    check_decode(&m, &g, "dec.latents", "dec16.image");
    free_vae(&m);
    st_close(&g);
    st_close(&fo.f);
    scratch_free_all();
}

/* No quant_conv / post_quant_conv / attention, layers_per_block 2, shift_factor 0.1. */
static void test_vae_plain(void **state) {
    (void)state;
    folder_t fo;
    folder_open(&fo, "vae_plain");
    st_file_t g;
    golden_open(&g, GOLDEN);
    vae_t m;
    build_ok(&m, &fo.cfg, get_st, &fo.f);
    check_encode(&m, &g, "plain", "plain.noise");
    check_decode(&m, &g, "plain.latents", "plain.image");
    free_vae(&m);
    st_close(&g);
    st_close(&fo.f);
    scratch_free_all();
}

/* ---- building from altered tensor sets ---- */

typedef struct {
    const st_file_t *f;
    const char *hide;       /* a name reported absent */
    const char *reshape;    /* a name returned with `shape` */
    int ndim;
    int64_t shape[4];
    st_dtype_t dtype;       /* for `reshape`: dtype to report */
    int legacy;             /* attention under the pre-0.14 names only */
    int ldm_1x1;            /* attention weights as [C, C, 1, 1] */
    st_tensor_t tmp;
} alter_t;

static const char *legacy_of(const char *name, char *buf, size_t n) {
    const char *newn[4] = {".to_q.", ".to_k.", ".to_v.", ".to_out.0."};
    const char *oldn[4] = {".query.", ".key.", ".value.", ".proj_attn."};
    for (int i = 0; i < 4; i++) {
        const char *at = strstr(name, oldn[i]);
        if (at) {
            snprintf(buf, n, "%.*s%s%s", (int)(at - name), name, newn[i], at + strlen(oldn[i]));
            return buf;
        }
    }
    return NULL;
}

static const st_tensor_t *get_altered(void *ctx, const char *name) {
    alter_t *a = ctx;
    if (a->hide && !strcmp(name, a->hide)) return NULL;
    char buf[VAE_NAME_MAX];
    if (a->legacy) {
        if (strstr(name, ".to_q.") || strstr(name, ".to_k.") || strstr(name, ".to_v.") || strstr(name, ".to_out.0."))
            return NULL;
        const char *mapped = legacy_of(name, buf, sizeof buf);
        if (mapped) name = mapped;
    }
    const st_tensor_t *t = st_find(a->f, name);
    if (!t) return NULL;
    if (a->reshape && !strcmp(name, a->reshape)) {
        a->tmp = *t;
        a->tmp.ndim = a->ndim;
        memcpy(a->tmp.shape, a->shape, sizeof a->shape);
        a->tmp.dtype = a->dtype;
        return &a->tmp;
    }
    if (a->ldm_1x1 && strstr(name, "attentions.0.to_") && strstr(name, ".weight")) {
        a->tmp = *t;
        a->tmp.ndim = 4;
        a->tmp.shape[2] = a->tmp.shape[3] = 1;
        return &a->tmp;
    }
    return t;
}

static void expect_build_error(alter_t *a, const vae_config_t *cfg, int code, const char *needle) {
    vae_t m;
    sd_clear_error();
    int rc = build_vae(&m, cfg, get_altered, a);
    if (rc != code) print_error("build_vae returned %d (%s), expected %d\n", rc, sd_last_error(), code);
    assert_int_equal(rc, code);
    if (!strstr(sd_last_error(), needle)) print_error("message \"%s\" lacks \"%s\"\n", sd_last_error(), needle);
    assert_non_null(strstr(sd_last_error(), needle));
    assert_null(m.small);
    free_vae(&m);   /* harmless on an empty model */
}

static void test_vae_build_errors(void **state) {
    (void)state;
    folder_t fo;
    folder_open(&fo, "vae");
    alter_t a = {.f = &fo.f, .hide = "decoder.up_blocks.1.resnets.0.conv_shortcut.weight"};
    expect_build_error(&a, &fo.cfg, SD_ERR_FORMAT, "decoder.up_blocks.1.resnets.0.conv_shortcut.weight");
    a = (alter_t){.f = &fo.f, .hide = "encoder.conv_norm_out.bias"};
    expect_build_error(&a, &fo.cfg, SD_ERR_FORMAT, "encoder.conv_norm_out.bias");
    a = (alter_t){.f = &fo.f, .reshape = "encoder.mid_block.attentions.0.to_q.weight", .ndim = 2,
                  .shape = {16, 8}, .dtype = ST_F32};
    expect_build_error(&a, &fo.cfg, SD_ERR_SHAPE, "encoder.mid_block.attentions.0.to_q.weight");
    a = (alter_t){.f = &fo.f, .reshape = "encoder.down_blocks.0.downsamplers.0.conv.weight", .ndim = 4,
                  .shape = {8, 8, 1, 1}, .dtype = ST_F32};
    expect_build_error(&a, &fo.cfg, SD_ERR_SHAPE, "[8, 8, 3, 3]");
    a = (alter_t){.f = &fo.f, .reshape = "decoder.up_blocks.0.resnets.1.norm2.weight", .ndim = 1, .shape = {16},
                  .dtype = ST_I32};
    expect_build_error(&a, &fo.cfg, SD_ERR_FORMAT, "dtype");
    /* a config that does not fit the file: more layers per block */
    vae_config_t cfg2 = fo.cfg;
    cfg2.layers_per_block = 2;
    a = (alter_t){.f = &fo.f};
    expect_build_error(&a, &cfg2, SD_ERR_FORMAT, "encoder.down_blocks.0.resnets.1.norm1.weight");

    /* pre-0.14 attention names, and LDM [C, C, 1, 1] attention weights: same outputs */
    st_file_t g;
    golden_open(&g, GOLDEN);
    vae_t m;
    a = (alter_t){.f = &fo.f, .legacy = 1};
    build_ok(&m, &fo.cfg, get_altered, &a);
    check_decode(&m, &g, "dec.latents", "dec.image");
    free_vae(&m);
    a = (alter_t){.f = &fo.f, .ldm_1x1 = 1};
    build_ok(&m, &fo.cfg, get_altered, &a);
    check_decode(&m, &g, "dec.latents", "dec.image");

    /* image sides must be multiples of the scale factor */
    float img[3 * 15 * 24] = {0}, mean[64], logvar[64];
    sd_clear_error();
    assert_int_equal(vae_encode(&m, mean, logvar, img, 1, 15, 24), SD_ERR_SHAPE);
    assert_non_null(strstr(sd_last_error(), "15x24"));
    assert_int_equal(vae_decode(&m, img, mean, 1, 0, 4), SD_ERR_SHAPE);
    free_vae(&m);
    st_close(&g);
    st_close(&fo.f);
    scratch_free_all();
}

/* Sampling formula with a shift, and the mode when noise is NULL. */
static void test_vae_sample_latents(void **state) {
    (void)state;
    vae_config_t cfg;
    assert_int_equal(parse("{\"scaling_factor\": 1.5305, \"shift_factor\": 0.0609}", &cfg), 0);
    const float mean[3] = {0.5f, -1.0f, 2.0f}, logvar[3] = {0.0f, -2.0f, 1.0f}, noise[3] = {1.0f, 0.5f, -2.0f};
    float lat[3];
    vae_sample_latents(lat, mean, logvar, noise, 3, &cfg);
    for (int i = 0; i < 3; i++) {
        const double want = (mean[i] + exp(0.5 * logvar[i]) * noise[i] - 0.0609f) * 1.5305f;
        assert_true(fabs(lat[i] - want) <= 1e-6 * fabs(want) + 1e-7);
    }
    vae_sample_latents(lat, mean, logvar, NULL, 3, &cfg);
    for (int i = 0; i < 3; i++) assert_true(fabsf(lat[i] - (mean[i] - 0.0609f) * 1.5305f) <= 1e-6f);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vae_config),
        cmocka_unit_test(test_vae_param_names),
        cmocka_unit_test(test_vae_image_tensor),
        cmocka_unit_test(test_vae_encode),
        cmocka_unit_test(test_vae_decode),
        cmocka_unit_test(test_vae_f16),
        cmocka_unit_test(test_vae_plain),
        cmocka_unit_test(test_vae_build_errors),
        cmocka_unit_test(test_vae_sample_latents),
    };
    return RUN_TESTS(argc, argv, "vae", tests, NULL, NULL);
}
