/* Tests of the shift toolbox (src/shifts/toolbox.c): the round trips of issue 10 (combine (1, 0)
 * is A bit for bit, scale 1 is identity, fp32 -> fp16 -> fp32 within fp16 precision, limit-rank
 * R >= rank is identity), refusals naming the difference, layer selection for style mixing on
 * the tiny model's shift names and on SD 1.x names, and the norm-shift form conversion. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "io/model.h"
#include "models/unet.h"
#include "shifts/toolbox.h"
#include "testutil.h"

/* the tiny model's shift names and lengths (zero fixture) with random values */
static void load_random(shift_set_t *s, const char *rel, uint64_t seed) {
    assert_int_equal(shiftset_load(s, source_path(rel)), 0);
    trng_t r;
    trng_seed(&r, seed);
    for (int i = 0; i < s->n; i++) fill_normal(&r, s->entries[i].values, s->entries[i].n, 0.1f);
    shiftset_set_meta(s, "base_model_hash", "00112233445566aa");
}

#define UNET_FIX "tests/fixtures/shifts/zero/spectral_shifts.safetensors"
#define TE_FIX "tests/fixtures/shifts/zero/spectral_shifts_te.safetensors"

static int bits_equal(const shift_set_t *a, const shift_set_t *b) {
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->entries[i].path, b->entries[i].path) || a->entries[i].n != b->entries[i].n ||
            memcmp(a->entries[i].values, b->entries[i].values, sizeof(float) * a->entries[i].n))
            return 0;
    return 1;
}

static void test_combine_roundtrip(void **state) {
    (void)state;
    shift_set_t a, b, out;
    load_random(&a, UNET_FIX, 1);
    load_random(&b, UNET_FIX, 2);
    a.entries[0].values[0] = -0.0f;   /* a signed zero must survive: -0 + 0*b would give +0 */
    b.entries[0].values[0] = 3.0f;
    const shift_set_t *in[2] = {&a, &b};
    const float w10[2] = {1, 0};
    assert_int_equal(toolbox_combine(&out, in, w10, 2, 0), 0);
    assert_true(bits_equal(&out, &a));
    assert_true(signbit(out.entries[0].values[0]));
    assert_string_equal(shiftset_meta(&out, "base_model_hash"), "00112233445566aa");
    shiftset_free(&out);
    /* (0, 1) gives B; default weights give the sum; (0.25, 0.75) interpolates */
    const float w01[2] = {0, 1};
    assert_int_equal(toolbox_combine(&out, in, w01, 2, 0), 0);
    assert_true(bits_equal(&out, &b));
    shiftset_free(&out);
    assert_int_equal(toolbox_combine(&out, in, NULL, 2, 0), 0);
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < a.entries[i].n; j++)
            assert_true(out.entries[i].values[j] == a.entries[i].values[j] + b.entries[i].values[j]);
    shiftset_free(&out);
    const float wi[2] = {0.25f, 0.75f};
    assert_int_equal(toolbox_combine(&out, in, wi, 2, 0), 0);
    const shift_entry_t *e = &out.entries[5];
    assert_float_equal(e->values[1], 0.25f * a.entries[5].values[1] + 0.75f * b.entries[5].values[1], 1e-7);
    shiftset_free(&out);
    shiftset_free(&a), shiftset_free(&b);
}

/* Weight order on distinguishable inputs (a second check beside the round trips): three sets
 * that are constant 1, 10 and 100 with asymmetric weights (0.5, 2, -1) give 0.5 + 20 - 100 =
 * -79.5 everywhere; any other pairing of weights and inputs gives something else (reversed:
 * 69; each weight on the next input: 42), and an input weighted 0 leaves the others' sum. */
static void test_combine_weight_order(void **state) {
    (void)state;
    shift_set_t a, b, c, out;
    load_random(&a, UNET_FIX, 1);
    load_random(&b, UNET_FIX, 2);
    load_random(&c, UNET_FIX, 3);
    shift_set_t *sets[3] = {&a, &b, &c};
    const float level[3] = {1.0f, 10.0f, 100.0f};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < sets[k]->n; i++)
            for (int j = 0; j < sets[k]->entries[i].n; j++) sets[k]->entries[i].values[j] = level[k];
    const shift_set_t *in[3] = {&a, &b, &c};
    const float w[3] = {0.5f, 2.0f, -1.0f}, w0[3] = {0.0f, -3.0f, 0.25f};
    const float want[2] = {0.5f * 1 + 2.0f * 10 - 100, -3.0f * 10 + 0.25f * 100};
    for (int r = 0; r < 2; r++) {
        assert_int_equal(toolbox_combine(&out, in, r ? w0 : w, 3, 0), 0);
        assert_int_equal(out.n, a.n);
        for (int i = 0; i < out.n; i++)
            for (int j = 0; j < out.entries[i].n; j++) {
                if (out.entries[i].values[j] != want[r]) {
                    print_error("weights %s: %s[%d] = %g, want %g\n", r ? "(0, -3, 0.25)" : "(0.5, 2, -1)",
                                out.entries[i].path, j, out.entries[i].values[j], want[r]);
                    fail();
                }
            }
        shiftset_free(&out);
    }
    shiftset_free(&a), shiftset_free(&b), shiftset_free(&c);
}

static void test_combine_refusals(void **state) {
    (void)state;
    shift_set_t a, b, out;
    load_random(&a, UNET_FIX, 1);
    load_random(&b, UNET_FIX, 2);
    const shift_set_t *in[2] = {&a, &b};
    /* another base model */
    shiftset_set_meta(&b, "base_model_hash", "ffffffffffffffff");
    assert_int_equal(toolbox_combine(&out, in, NULL, 2, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "ffffffffffffffff"));
    assert_non_null(strstr(sd_last_error(), "different base models"));
    shiftset_free(&out);
    assert_int_equal(toolbox_combine(&out, in, NULL, 2, 1), 0);   /* ignore_hash */
    shiftset_free(&out);
    shiftset_set_meta(&b, "base_model_hash", "00112233445566aa");
    /* a layer missing in A: named */
    float v[4] = {1, 2, 3, 4};
    shiftset_put(&b, "down_blocks.0.zzz_extra", v, 4);
    assert_int_equal(toolbox_combine(&out, in, NULL, 2, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "down_blocks.0.zzz_extra"));
    assert_non_null(strstr(sd_last_error(), "layer sets differ"));
    shiftset_free(&out);
    shiftset_free(&b);
    /* a different length: named with both lengths */
    load_random(&b, UNET_FIX, 2);
    shiftset_put(&b, "conv_out", v, 3);
    assert_int_equal(toolbox_combine(&out, in, NULL, 2, 0), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "conv_out: input 1 has 4 values but input 2 has 3"));
    shiftset_free(&out);
    shiftset_free(&a), shiftset_free(&b);
}

static void test_scale_and_fp16(void **state) {
    (void)state;
    shift_set_t a, out, back;
    load_random(&a, TE_FIX, 3);
    toolbox_scale(&out, &a, 1.0f);
    assert_true(bits_equal(&out, &a));
    shiftset_free(&out);
    toolbox_scale(&out, &a, -1.5f);
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < a.entries[i].n; j++) assert_true(out.entries[i].values[j] == -1.5f * a.entries[i].values[j]);
    shiftset_free(&out);
    /* fp32 -> fp16 -> fp32: within fp16's half ulp (2^-11 relative), F32 save/load exact */
    char f16[256], f32[256];
    snprintf(f16, sizeof f16, "/tmp/svdiff-test-toolbox-%d-fp16.safetensors", (int)getpid());
    snprintf(f32, sizeof f32, "/tmp/svdiff-test-toolbox-%d-fp32.safetensors", (int)getpid());
    assert_int_equal(shiftset_save(&a, f16, ST_F16), 0);
    assert_int_equal(shiftset_load(&back, f16), 0);
    assert_int_equal(shiftset_save(&back, f32, ST_F32), 0);
    shiftset_free(&back);
    assert_int_equal(shiftset_load(&back, f32), 0);
    assert_int_equal(back.n, a.n);
    double worst = 0;
    for (int i = 0; i < a.n; i++)
        for (int j = 0; j < a.entries[i].n; j++) {
            const double x = a.entries[i].values[j], y = back.entries[i].values[j];
            const double err = fabs(x - y) / fmax(fabs(x), 6.1e-5);   /* fp16 normal range */
            if (err > worst) worst = err;
        }
    printf("fp32->fp16->fp32 worst relative error %.3g (fp16 half ulp 4.9e-4)\n", worst);
    assert_true(worst <= 1.0 / 2048 + 1e-7);
    assert_true(worst > 0);   /* the values really went through fp16 */
    shiftset_free(&back);
    remove(f16), remove(f32);
    shiftset_free(&a);
}

static void test_limit_rank(void **state) {
    (void)state;
    shift_set_t a, out;
    load_random(&a, UNET_FIX, 4);
    long total = 0;
    int maxrank = 0;
    for (int i = 0; i < a.n; i++) {
        total += a.entries[i].n;
        if (!toolbox_is_norm_path(a.entries[i].path) && a.entries[i].n > maxrank) maxrank = a.entries[i].n;
    }
    assert_int_equal(toolbox_limit_rank(&out, &a, maxrank), total);
    assert_true(bits_equal(&out, &a));
    shiftset_free(&out);
    assert_int_equal(toolbox_limit_rank(&out, &a, 1000), total);
    assert_true(bits_equal(&out, &a));
    shiftset_free(&out);
    const int R = 2;
    long want = 0;
    for (int i = 0; i < a.n; i++) {
        const int norm = toolbox_is_norm_path(a.entries[i].path);
        want += norm ? a.entries[i].n : (a.entries[i].n < R ? a.entries[i].n : R);
    }
    assert_int_equal(toolbox_limit_rank(&out, &a, R), want);
    assert_true(want < total);
    assert_int_equal(out.n, a.n);
    for (int i = 0; i < a.n; i++) {
        const shift_entry_t *e = &out.entries[i], *o = &a.entries[i];
        assert_int_equal(e->n, o->n);
        const int norm = toolbox_is_norm_path(e->path);
        for (int j = 0; j < e->n; j++) {
            if (norm || j < R) assert_true(e->values[j] == o->values[j]);
            else assert_true(e->values[j] == 0.0f);
        }
    }
    /* a known case: conv_in [4] (a matrix), conv_norm_out [4] (a norm) */
    assert_false(toolbox_is_norm_path("conv_in"));
    assert_true(toolbox_is_norm_path("conv_norm_out"));
    assert_true(shiftset_find(&out, "conv_in")->values[3] == 0.0f);
    assert_true(shiftset_find(&out, "conv_norm_out")->values[3] == shiftset_find(&a, "conv_norm_out")->values[3]);
    shiftset_free(&out);
    shiftset_free(&a);
}

static void test_norm_paths_and_blocks(void **state) {
    (void)state;
    shift_set_t u, t;
    assert_int_equal(shiftset_load(&u, source_path(UNET_FIX)), 0);
    assert_int_equal(shiftset_load(&t, source_path(TE_FIX)), 0);
    /* the fixture's norm / matrix split: 33 norms in the UNet, 5 in the text encoder */
    int nu = 0, nt = 0;
    for (int i = 0; i < u.n; i++) nu += toolbox_is_norm_path(u.entries[i].path);
    for (int i = 0; i < t.n; i++) nt += toolbox_is_norm_path(t.entries[i].path);
    assert_int_equal(nu, 33);
    assert_int_equal(nt, 5);
    /* every scalar [1] shift of the text encoder is a norm */
    for (int i = 0; i < t.n; i++)
        if (t.entries[i].n == 1) assert_true(toolbox_is_norm_path(t.entries[i].path));
    char b[128];
    toolbox_block_of("down_blocks.1.resnets.0.conv1", b, sizeof b), assert_string_equal(b, "down_blocks.1");
    toolbox_block_of("up_blocks.12.attentions.0.proj_in", b, sizeof b), assert_string_equal(b, "up_blocks.12");
    toolbox_block_of("mid_block.attentions.0.norm", b, sizeof b), assert_string_equal(b, "mid_block");
    toolbox_block_of("text_model.encoder.layers.3.mlp.fc1", b, sizeof b);
    assert_string_equal(b, "text_model.encoder.layers.3");
    toolbox_block_of("time_embedding.linear_1", b, sizeof b), assert_string_equal(b, "other");
    toolbox_block_of("down_blocks_x.1", b, sizeof b), assert_string_equal(b, "other");
    shiftset_free(&u), shiftset_free(&t);
}

/* the selected paths of the tiny model's UNet, joined with ',' */
static void selected_paths(char *buf, size_t cap, const shift_set_t *s, const char *sel, int levels) {
    buf[0] = '\0';
    for (int i = 0; i < s->n; i++)
        if (toolbox_selector_matches(sel, s->entries[i].path, levels, 64)) {
            const size_t u = strlen(buf);
            snprintf(buf + u, cap - u, "%s%s", u ? "," : "", s->entries[i].path);
        }
}

static void test_selectors(void **state) {
    (void)state;
    /* SD 1.x names in forward order around the geometry range */
    const char *sd1[] = {"down_blocks.2.resnets.1.conv1", "down_blocks.2.attentions.0.proj_in",
                         "down_blocks.2.attentions.1.proj_in", "down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k",
                         "down_blocks.2.downsamplers.0.conv", "down_blocks.3.resnets.0.conv1", "down_blocks.3.resnets.1.norm2",
                         "mid_block.resnets.0.conv2", "mid_block.attentions.0.proj_out", "mid_block.resnets.1.conv1",
                         "up_blocks.0.resnets.0.conv1", "up_blocks.1.attentions.0.proj_in", "conv_in",
                         "time_embedding.linear_1", "text_model.encoder.layers.0.mlp.fc1", "down_blocks.21.resnets.0.conv1"};
    const int geo[] = {0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0};
    const int r16[] = {1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0};
    const int r8[] = {0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
    const int r64[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
    for (size_t k = 0; k < sizeof sd1 / sizeof *sd1; k++) {
        assert_int_equal(toolbox_selector_matches("geometry", sd1[k], 4, 64), geo[k]);
        assert_int_equal(toolbox_selector_matches("res:16x16", sd1[k], 4, 64), r16[k]);
        assert_int_equal(toolbox_selector_matches("res:16", sd1[k], 4, 64), r16[k]);
        assert_int_equal(toolbox_selector_matches("res:8x8", sd1[k], 4, 64), r8[k]);
        assert_int_equal(toolbox_selector_matches("res:64x64", sd1[k], 4, 64), r64[k]);
    }
    assert_int_equal(toolbox_selector_matches("res:16x8", "down_blocks.2.resnets.1.conv1", 4, 64), 0);
    /* globs: a module selects its submodules but not a longer sibling name */
    assert_true(toolbox_selector_matches("up_blocks.1", "up_blocks.1.attentions.0.proj_in", 4, 64));
    assert_false(toolbox_selector_matches("up_blocks.1", "up_blocks.10.attentions.0.proj_in", 4, 64));
    assert_true(toolbox_selector_matches("*attn2*", "mid_block.attentions.0.transformer_blocks.0.attn2.to_v", 4, 64));
    assert_false(toolbox_selector_matches("*attn2*", "mid_block.attentions.0.transformer_blocks.0.attn1.to_v", 4, 64));

    /* the tiny model (2 levels): res:16 at a 32 latent = down_blocks.1 + up_blocks.0 + mid_block */
    shift_set_t u;
    assert_int_equal(shiftset_load(&u, source_path(UNET_FIX)), 0);
    char got[16384];
    int n_sel = 0;
    for (int i = 0; i < u.n; i++) n_sel += toolbox_selector_matches("res:16", u.entries[i].path, 2, 32);
    for (int i = 0; i < u.n; i++) {
        const char *p = u.entries[i].path;
        const int want = !strncmp(p, "down_blocks.1.", 14) || !strncmp(p, "up_blocks.0.", 12) || !strncmp(p, "mid_block.", 10);
        assert_int_equal(toolbox_selector_matches("res:16", p, 2, 32), want);
    }
    assert_int_equal(n_sel, 6 + 26 + 13);   /* counted from the fixture's names */
    selected_paths(got, sizeof got, &u, "down_blocks.0.resnets.0", 2);
    assert_string_equal(got, "down_blocks.0.resnets.0.conv1,down_blocks.0.resnets.0.conv2,down_blocks.0.resnets.0.norm1,"
                             "down_blocks.0.resnets.0.norm2,down_blocks.0.resnets.0.time_emb_proj");
    selected_paths(got, sizeof got, &u, "*.attn2.to_k", 2);
    assert_string_equal(got, "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k,"
                             "mid_block.attentions.0.transformer_blocks.0.attn2.to_k,"
                             "up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k,"
                             "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k");
    selected_paths(got, sizeof got, &u, "geometry", 2);
    assert_string_equal(got, "mid_block.attentions.0.norm,mid_block.attentions.0.proj_in,mid_block.attentions.0.proj_out,"
                             "mid_block.attentions.0.transformer_blocks.0.attn1.to_k,"
                             "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0,"
                             "mid_block.attentions.0.transformer_blocks.0.attn1.to_q,"
                             "mid_block.attentions.0.transformer_blocks.0.attn1.to_v,"
                             "mid_block.attentions.0.transformer_blocks.0.attn2.to_k,"
                             "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0,"
                             "mid_block.attentions.0.transformer_blocks.0.attn2.to_q,"
                             "mid_block.attentions.0.transformer_blocks.0.attn2.to_v,"
                             "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj,"
                             "mid_block.attentions.0.transformer_blocks.0.ff.net.2,"
                             "mid_block.attentions.0.transformer_blocks.0.norm1,"
                             "mid_block.attentions.0.transformer_blocks.0.norm2,"
                             "mid_block.attentions.0.transformer_blocks.0.norm3,"
                             "mid_block.resnets.0.conv1,mid_block.resnets.0.conv2,mid_block.resnets.0.norm1,"
                             "mid_block.resnets.0.norm2,mid_block.resnets.0.time_emb_proj");
    shiftset_free(&u);
}

/* SDXL (3 levels, the first without attention; transformers of 2 and 10 blocks): the geometry span
 * one level up, the content / style presets of the first up level, level:N, and the refusals. */
static void test_selectors_sdxl(void **state) {
    (void)state;
    const char *xl[] = {"down_blocks.0.resnets.1.conv1",                              /* level 0, 128 */
                        "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k", /* level 1, 64 */
                        "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q",
                        "down_blocks.1.downsamplers.0.conv",
                        "down_blocks.2.attentions.1.transformer_blocks.9.ff.net.2",   /* level 2, 32 */
                        "mid_block.resnets.0.conv1",
                        "mid_block.attentions.0.transformer_blocks.9.attn2.to_v",
                        "mid_block.resnets.1.conv2",
                        "up_blocks.0.attentions.0.transformer_blocks.3.attn1.to_k",  /* content */
                        "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_q",  /* style */
                        "up_blocks.0.attentions.2.proj_out",
                        "up_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k",
                        "up_blocks.2.resnets.2.conv2",
                        "add_embedding.linear_1",
                        "text_encoder_2.text_model.encoder.layers.0.mlp.fc1"};
    const int geo[] = {0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0};
    const int content[] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0};
    const int style[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
    const int lvl0[] = {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0};
    const int lvl2[] = {0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
    const int r32[] = {0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0};
    for (size_t k = 0; k < sizeof xl / sizeof *xl; k++) {
        assert_int_equal(toolbox_selector_matches("geometry", xl[k], 3, 128), geo[k]);
        assert_int_equal(toolbox_selector_matches("content", xl[k], 3, 128), content[k]);
        assert_int_equal(toolbox_selector_matches("style", xl[k], 3, 128), style[k]);
        assert_int_equal(toolbox_selector_matches("level:0", xl[k], 3, 128), lvl0[k]);
        assert_int_equal(toolbox_selector_matches("level:2", xl[k], 3, 128), lvl2[k]);
        assert_int_equal(toolbox_selector_matches("res:32", xl[k], 3, 128), r32[k]);
        /* the SDXL presets select nothing on a 4-level UNet */
        assert_false(toolbox_selector_matches("content", xl[k], 4, 64));
    }
    /* the SD 1.x geometry is unchanged by the SDXL one */
    assert_true(toolbox_selector_matches("geometry", "down_blocks.2.attentions.1.proj_in", 4, 64));
    assert_false(toolbox_selector_matches("geometry", "down_blocks.1.attentions.1.proj_in", 4, 64));
    assert_true(toolbox_selector_matches("geometry", "down_blocks.1.attentions.1.proj_in", 3, 128));
    assert_int_equal(toolbox_level_of("up_blocks.2.resnets.0.conv1", 3), 0);
    assert_int_equal(toolbox_level_of("conv_in", 3), -1);
    assert_int_equal(toolbox_selector_check("style", 4), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "SDXL preset"));
    assert_int_equal(toolbox_selector_check("level:3", 3), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "level:3"));
    assert_int_equal(toolbox_selector_check("level:x", 3), SD_ERR_ARG);
    assert_int_equal(toolbox_selector_check("res:1y", 3), SD_ERR_ARG);
    assert_int_equal(toolbox_selector_check("content", 3), SD_OK);
    assert_int_equal(toolbox_selector_check("level:2", 3), SD_OK);
    /* per-block summaries of the second text encoder */
    char b[128];
    toolbox_block_of("text_encoder_2.text_model.encoder.layers.31.mlp.fc1", b, sizeof b);
    assert_string_equal(b, "text_encoder_2.text_model.encoder.layers.31");
    toolbox_block_of("text_encoder_2.text_projection", b, sizeof b);
    assert_string_equal(b, "text_encoder_2.text_model (other)");
    toolbox_block_of("add_embedding.linear_2", b, sizeof b), assert_string_equal(b, "other");
}

static void test_mix(void **state) {
    (void)state;
    shift_set_t a, b, out;
    load_random(&a, UNET_FIX, 5);
    load_random(&b, UNET_FIX, 6);
    shiftset_set_meta(&b, "instance_prompt", "b's prompt");
    const char *sel[2] = {"mid_block", "up_blocks.1.attentions.1"};
    int nf = 0;
    assert_int_equal(toolbox_mix(&out, &a, &b, sel, 2, 2, 32, 0, &nf), 0);
    assert_int_equal(out.n, a.n);
    int count = 0;
    for (int i = 0; i < out.n; i++) {
        const char *p = out.entries[i].path;
        const int from_a = !strncmp(p, "mid_block.", 10) || !strncmp(p, "up_blocks.1.attentions.1.", 25);
        count += from_a;
        const shift_entry_t *src = shiftset_find(from_a ? &a : &b, p);
        assert_memory_equal(out.entries[i].values, src->values, sizeof(float) * src->n);
    }
    assert_int_equal(nf, count);
    assert_int_equal(count, 26 + 16);
    assert_string_equal(shiftset_meta(&out, "instance_prompt"), "b's prompt");
    shiftset_free(&out);
    /* a selector that selects nothing, a bad resolution selector, another base model */
    const char *none[1] = {"down_blocks.7"};
    assert_int_equal(toolbox_mix(&out, &a, &b, none, 1, 2, 32, 0, &nf), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "'down_blocks.7' selects no shift"));
    shiftset_free(&out);
    const char *bad[1] = {"res:abc"};
    assert_int_equal(toolbox_mix(&out, &a, &b, bad, 1, 2, 32, 0, &nf), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "res:HxW"));
    shiftset_free(&out);
    shiftset_set_meta(&b, "base_model_hash", "0000000000000001");
    assert_int_equal(toolbox_mix(&out, &a, &b, sel, 2, 2, 32, 0, &nf), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "different base models"));
    shiftset_free(&out);
    shiftset_free(&a), shiftset_free(&b);
}

/* gamma [C] of a fake model: one norm "n.norm1" of 5 channels */
static float GAMMA[5] = {0.5f, -1.0f, 2.0f, 0.25f, 1.5f};
static const float *fake_gamma(void *ctx, const char *path, int *C) {
    (void)ctx;
    if (strcmp(path, "n.norm1")) return NULL;
    *C = 5;
    return GAMMA;
}

static void test_convert_norms(void **state) {
    (void)state;
    shift_set_t s, el, sc;
    shiftset_init(&s);
    const float delta = 0.7f, m[3] = {1, 2, 3};
    shiftset_put(&s, "n.norm1", &delta, 1);
    shiftset_put(&s, "n.to_q", m, 3);
    double err = -1;
    /* scalar -> element is exact: gamma + d == gamma * (sigma + delta) / sigma */
    assert_int_equal(toolbox_convert_norms(&el, &s, 0, fake_gamma, NULL, &err, NULL), 0);
    assert_true(err == 0);
    const shift_entry_t *e = shiftset_find(&el, "n.norm1");
    assert_int_equal(e->n, 5);
    double sig = 0;
    for (int c = 0; c < 5; c++) sig += GAMMA[c] * GAMMA[c];
    sig = sqrt(sig);
    for (int c = 0; c < 5; c++) assert_float_equal(GAMMA[c] + e->values[c], GAMMA[c] * (sig + delta) / sig, 1e-6);
    assert_memory_equal(shiftset_find(&el, "n.to_q")->values, m, sizeof m);
    assert_string_equal(shiftset_meta(&el, "norm_shift"), "element");
    /* and back: a d parallel to gamma fits exactly */
    toolbox_fit_t pfit = {0};
    assert_int_equal(toolbox_convert_norms(&sc, &el, 1, fake_gamma, NULL, &err, &pfit), 0);
    assert_true(pfit.n_fitted == 1 && toolbox_fit_lost(&pfit) < 1e-5);
    assert_int_equal(shiftset_find(&sc, "n.norm1")->n, 1);
    assert_float_equal(shiftset_find(&sc, "n.norm1")->values[0], delta, 1e-6);
    assert_true(err < 1e-6);
    assert_string_equal(shiftset_meta(&sc, "norm_shift"), "scalar");
    shiftset_free(&sc);
    /* a d not parallel to gamma: lossy, the error is reported */
    const float d[5] = {0.3f, 0, 0, 0, 0};
    shiftset_put(&el, "n.norm1", d, 5);
    toolbox_fit_t fit = {0};
    assert_int_equal(toolbox_convert_norms(&sc, &el, 1, fake_gamma, NULL, &err, &fit), 0);
    assert_true(err > 0.1);
    /* the share of d lost, from the fit's definition: t = (sigma + <gamma, d>/sigma) / sigma */
    double t = (sig + GAMMA[0] * 0.3 / sig) / sig, e2 = 0;
    for (int c = 0; c < 5; c++) e2 += pow(GAMMA[c] * t - GAMMA[c] - d[c], 2);
    assert_int_equal(fit.n_fitted, 1);
    assert_string_equal(fit.worst_path, "n.norm1");
    assert_float_equal(fit.worst_lost, sqrt(e2) / 0.3, 1e-5);
    assert_float_equal(toolbox_fit_lost(&fit), sqrt(e2) / 0.3, 1e-5);
    assert_true(fit.worst_lost > 0.5 && fit.worst_lost < 1);
    shiftset_free(&sc);
    /* a norm the model lacks */
    shiftset_put(&el, "x.norm2", d, 5);
    assert_int_equal(toolbox_convert_norms(&sc, &el, 1, fake_gamma, NULL, &err, NULL), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "x.norm2"));
    shiftset_free(&sc);
    shiftset_free(&el), shiftset_free(&s);
}

static void test_history(void **state) {
    (void)state;
    shift_set_t s;
    shiftset_init(&s);
    toolbox_add_history(&s, "scale 2");
    toolbox_add_history(&s, "limit-rank 4");
    assert_string_equal(shiftset_meta(&s, "history"), "scale 2; limit-rank 4");
    shiftset_free(&s);
}

/* ---------------------------------------------------------------------------------------
 * golden: the tiny UNet with a combined and with a rank-limited set (gen_toolbox_golden.py) */

static float *tiny_unet_with(const shift_set_t *s, const st_file_t *g) {
    model_t m;
    unet_t u;
    if (model_open(&m, source_path("tests/fixtures/tiny-sd/diffusers"), NULL)) fail_msg("model_open: %s", sd_last_error());
    assert_int_equal(build_unet_from_component(&u, &m.unet), 0);
    if (shiftset_apply_unet(&u, s, 1.0f, NULL)) fail_msg("apply: %s", sd_last_error());
    unet_bake(&u);
    enum { B = 1, H = 8, W = 8, T = 5 };
    float *x = golden_get(g, "sample", (int64_t)B * u.cfg.in_channels * H * W);
    float *t = golden_get(g, "timesteps", B);
    float *ctx = golden_get(g, "ctx", (int64_t)B * T * u.cfg.cross_attention_dim);
    float *out = alloc_zeros((size_t)B * u.cfg.out_channels * H * W);
    unet_acts_t a;
    assert_int_equal(unet_acts_build(&a, &u, B, H, W, T, 0, UNET_CKPT_NONE), 0);
    assert_int_equal(unet_forward(out, &u, &a, x, t, ctx, NULL, B, H, W, T), 0);
    unet_acts_free(&a);
    free(x), free(t), free(ctx);
    free_unet(&u);
    model_close(&m);
    return out;
}

static void test_golden_combined_and_rank(void **state) {
    (void)state;
    st_file_t g;
    golden_open(&g, "toolbox/golden.safetensors");
    shift_set_t a, b, comb, rank;
    assert_int_equal(shiftset_load(&a, source_path("tests/fixtures/toolbox/a.safetensors")), 0);
    assert_int_equal(shiftset_load(&b, source_path("tests/fixtures/toolbox/b.safetensors")), 0);
    const shift_set_t *in[2] = {&a, &b};
    const float w[2] = {0.7f, 0.5f};
    assert_int_equal(toolbox_combine(&comb, in, w, 2, 0), 0);
    toolbox_limit_rank(&rank, &a, 2);
    const int64_t n = 4 * 8 * 8;
    float *want_c = golden_get(&g, "out_combined", n), *want_r = golden_get(&g, "out_rank2", n);
    float *want_0 = golden_get(&g, "out_base", n);
    float *got_c = tiny_unet_with(&comb, &g), *got_r = tiny_unet_with(&rank, &g);
    printf("combined: rel error %.3g (vs the base output %.3g); rank 2: %.3g (vs base %.3g)\n",
           rel_error(got_c, want_c, n), rel_error(want_0, want_c, n), rel_error(got_r, want_r, n),
           rel_error(want_0, want_r, n));
    assert_true(rel_error(want_0, want_c, n) > 0.05 && rel_error(want_0, want_r, n) > 0.05);   /* can fail */
    assert_close("combined 0.7 A + 0.5 B", got_c, want_c, (size_t)n, 1e-4);
    assert_close("A limited to rank 2", got_r, want_r, (size_t)n, 1e-4);
    free(want_c), free(want_r), free(want_0), free(got_c), free(got_r);
    shiftset_free(&a), shiftset_free(&b), shiftset_free(&comb), shiftset_free(&rank);
    st_close(&g);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_combine_roundtrip),
        cmocka_unit_test(test_combine_weight_order),
        cmocka_unit_test(test_combine_refusals),
        cmocka_unit_test(test_scale_and_fp16),
        cmocka_unit_test(test_limit_rank),
        cmocka_unit_test(test_norm_paths_and_blocks),
        cmocka_unit_test(test_selectors),
        cmocka_unit_test(test_selectors_sdxl),
        cmocka_unit_test(test_mix),
        cmocka_unit_test(test_convert_norms),
        cmocka_unit_test(test_history),
        cmocka_unit_test(test_golden_combined_and_rank),
    };
    return RUN_TESTS(argc, argv, "toolbox", tests, NULL, NULL);
}
