/* Model initialisation (svdiff init) and BPE learning (svdiff tokenizer-train): the initial
 * value distributions per tensor kind, the SD 1.5 / CLIP-L parameter counts of the tensor list,
 * the default model's size, a written folder that model_open and the pipeline accept, same
 * seed -> same bytes; learned tokenizers that tokenizer_load reads, round trips, the reserved
 * "sks" as one token, deterministic (caption order too), tie-breaking, TSV captions, speed. */
#define _GNU_SOURCE   /* nftw */
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/error.h"
#include "io/model.h"
#include "models/bpe_learn.h"
#include "models/init.h"
#include "models/tokenizer.h"
#include "models/utf8class.h"
#include "pipeline/pipeline.h"
#include "train/dataset.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static char *temp_dir(void) {
    char tmpl[] = "/tmp/svdiff-test-init-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return strdup(d);
}

/* 1 when the two files exist and hold the same bytes. */
static int same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char *x = read_file(a, &na), *y = read_file(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static char *path2(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static void stats_of(const float *x, int64_t n, double *mean, double *std, double *maxabs) {
    double s = 0, s2 = 0, m = 0;
    for (int64_t i = 0; i < n; i++) {
        s += x[i], s2 += (double)x[i] * x[i];
        if (fabs(x[i]) > m) m = fabs(x[i]);
    }
    *mean = s / n;
    *std = sqrt(s2 / n - *mean * *mean);
    *maxabs = m;
}

/* ------------------------------------------------------------------ init: value distributions */

static cJSON *parse(const char *s) {
    cJSON *j = cJSON_Parse(s);
    assert_non_null(j);
    return j;
}

/* A registry entry built by hand (the layers of the UNet / VAE tests below). */
static layer_spec_t spec_of(layer_kind_t kind, int out, int in, int k) {
    layer_spec_t s = {.kind = kind, .out = out, .in = in, .k = k, .bias = 1};
    snprintf(s.name, sizeof s.name, "layer");
    return s;
}

/* The registry entry of a module of the text encoder `te` (its init_std comes from there). */
static layer_spec_t clip_spec(const cJSON *te, const char *module) {
    model_component_t c = {.name = "text_encoder", .config = (cJSON *)te};
    layer_registry_t r = {0};
    if (component_registry(&c, &r)) fail_msg("%s", sd_last_error());
    const layer_spec_t *s = layer_registry_find(&r, module);
    if (!s) fail_msg("no layer %s in the text encoder's registry", module);
    layer_spec_t out = *s;
    layer_registry_free(&r);
    return out;
}

static void test_init_distributions(void **state) {
    (void)state;
    cJSON *te = parse("{\"hidden_size\": 64, \"num_hidden_layers\": 3, \"initializer_factor\": 1.0, "
                      "\"intermediate_size\": 128, \"num_attention_heads\": 4, \"vocab_size\": 256, "
                      "\"max_position_embeddings\": 77}");
    double mean, std, mx;
    /* conv 64x64x3x3: U(-1/sqrt(576), 1/sqrt(576)) -> std bound/sqrt(3) */
    int64_t cs[4] = {64, 64, 3, 3};
    int64_t n = 64 * 64 * 9;
    float *x = malloc((size_t)n * sizeof *x);
    const layer_spec_t conv = spec_of(LAYER_CONV, 64, 64, 3), gn = spec_of(LAYER_NORM, 4096, 4096, 1);
    assert_int_equal(model_init_tensor(x, "unet", &conv, 0, "down_blocks.0.resnets.0.conv1.weight", 4, cs, 7), 0);
    stats_of(x, n, &mean, &std, &mx);
    double b = 1.0 / sqrt(576.0);
    assert_true(mx <= b && mx > 0.99 * b);
    assert_true(fabs(std - b / sqrt(3.0)) < 0.02 * b / sqrt(3.0));
    assert_true(fabs(mean) < 0.02 * b);
    /* the same bias: U(+-1/sqrt(fan_in of its weight)) */
    int64_t bs[1] = {4096};
    assert_int_equal(model_init_tensor(x, "unet", &conv, 1, "down_blocks.0.resnets.0.conv1.bias", 1, bs, 7), 0);
    stats_of(x, 4096, &mean, &std, &mx);
    assert_true(mx <= b && mx > 0.99 * b);
    /* GroupNorm: 1 / 0 */
    assert_int_equal(model_init_tensor(x, "unet", &gn, 0, "down_blocks.0.resnets.0.norm1.weight", 1, bs, 7), 0);
    for (int i = 0; i < 4096; i++) assert_true(x[i] == 1.0f);
    assert_int_equal(model_init_tensor(x, "unet", &gn, 1, "down_blocks.0.resnets.0.norm1.bias", 1, bs, 7), 0);
    for (int i = 0; i < 4096; i++) assert_true(x[i] == 0.0f);
    /* linear 256 x 128: bound 1/sqrt(128) */
    int64_t ls[2] = {256, 128};
    const layer_spec_t lin = spec_of(LAYER_LINEAR, 256, 128, 1);
    assert_int_equal(model_init_tensor(x, "unet", &lin, 0, "time_embedding.linear_1.weight", 2, ls, 7), 0);
    stats_of(x, 256 * 128, &mean, &std, &mx);
    assert_true(mx <= 1 / sqrt(128.0) && mx > 0.99 / sqrt(128.0));

    /* text encoder (transformers' CLIP init): d = 64, L = 3; the std is the registry's */
    struct { const char *name; double std; } rules[] = {
        {"text_model.embeddings.token_embedding", 0.02},
        {"text_model.embeddings.position_embedding", 0.02},
        {"text_model.encoder.layers.1.self_attn.q_proj", pow(64, -0.5) * pow(6, -0.5)},
        {"text_model.encoder.layers.1.self_attn.k_proj", pow(64, -0.5) * pow(6, -0.5)},
        {"text_model.encoder.layers.1.self_attn.v_proj", pow(64, -0.5) * pow(6, -0.5)},
        {"text_model.encoder.layers.1.self_attn.out_proj", pow(64, -0.5)},
        {"text_model.encoder.layers.1.mlp.fc1", pow(128, -0.5)},
        {"text_model.encoder.layers.1.mlp.fc2", pow(64, -0.5) * pow(6, -0.5)},
    };
    int64_t ts[2] = {256, 64};
    for (size_t r = 0; r < sizeof rules / sizeof *rules; r++) {
        const layer_spec_t sp = clip_spec(te, rules[r].name);
        char key[256];
        snprintf(key, sizeof key, "%s.weight", rules[r].name);
        assert_int_equal(model_init_tensor(x, "text_encoder", &sp, 0, key, 2, ts, 7), 0);
        stats_of(x, 256 * 64, &mean, &std, &mx);
        if (fabs(std - rules[r].std) > 0.03 * rules[r].std || fabs(mean) > 0.05 * rules[r].std)
            fail_msg("%s: std %g (want %g), mean %g", rules[r].name, std, rules[r].std, mean);
    }
    const layer_spec_t fc1 = clip_spec(te, "text_model.encoder.layers.0.mlp.fc1");
    assert_int_equal(model_init_tensor(x, "text_encoder", &fc1, 1, "text_model.encoder.layers.0.mlp.fc1.bias", 1, bs, 7), 0);
    for (int i = 0; i < 4096; i++) assert_true(x[i] == 0.0f);   /* transformers zeroes linear biases */
    const layer_spec_t lnf = clip_spec(te, "text_model.final_layer_norm");
    assert_int_equal(model_init_tensor(x, "text_encoder", &lnf, 0, "text_model.final_layer_norm.weight", 1, bs, 7), 0);
    for (int i = 0; i < 4096; i++) assert_true(x[i] == 1.0f);
    /* streams: another seed or another name gives other values, the same gives the same */
    float *y = malloc((size_t)n * sizeof *y);
    assert_int_equal(model_init_tensor(x, "unet", &conv, 0, "conv_in.weight", 4, cs, 7), 0);
    assert_int_equal(model_init_tensor(y, "unet", &conv, 0, "conv_in.weight", 4, cs, 7), 0);
    assert_memory_equal(x, y, (size_t)n * sizeof *x);
    assert_int_equal(model_init_tensor(y, "unet", &conv, 0, "conv_in.weight", 4, cs, 8), 0);
    assert_true(memcmp(x, y, (size_t)n * sizeof *x) != 0);
    assert_int_equal(model_init_tensor(y, "unet", &conv, 0, "conv_out.weight", 4, cs, 7), 0);
    assert_true(memcmp(x, y, (size_t)n * sizeof *x) != 0);
    /* a layer with no rule (an embedding without the registry's std) is an error, not a silent default */
    const layer_spec_t emb = spec_of(LAYER_EMBEDDING, 256, 64, 1);
    assert_int_equal(model_init_tensor(x, "text_encoder", &emb, 0, "text_model.something.weight", 2, ts, 7), SD_ERR_ARG);
    free(x);
    free(y);
    cJSON_Delete(te);
}

/* ------------------------------------------------------------------ init: statistics */

/* SD 1.5's UNet and CLIP ViT-L/14's text model: the published parameter counts. */
static void test_init_stats_sd15(void **state) {
    (void)state;
    cJSON *c = parse(
        "{\"unet\": {\"block_out_channels\": [320, 640, 1280, 1280], \"layers_per_block\": 2, \"in_channels\": 4,"
        " \"out_channels\": 4, \"cross_attention_dim\": 768, \"attention_head_dim\": 8, \"sample_size\": 64,"
        " \"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
        " \"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"]},"
        " \"text_encoder\": {\"hidden_size\": 768, \"intermediate_size\": 3072, \"num_hidden_layers\": 12,"
        " \"num_attention_heads\": 12, \"vocab_size\": 49408, \"max_position_embeddings\": 77},"
        " \"scheduler\": {}}");
    model_init_stats_t st;
    assert_int_equal(model_init_stats(c, 0, 1, &st), 0);
    assert_int_equal(st.params[0], 859520964);
    assert_int_equal(st.params[1], 123060480);
    assert_int_equal(st.n_tensors[0], 686);
    assert_int_equal(st.n_tensors[1], 196);
    assert_int_equal(st.bytes, 2 * (859520964 + 123060480));
    /* ~0.8 TFLOP per 64x64 UNet forward (the usual "~400 GMACs per step" of SD at 512 px) */
    assert_true(st.flops[0] > 7.5e11 && st.flops[0] < 8.5e11);
    cJSON_Delete(c);
}

static void test_init_default_config_size(void **state) {
    (void)state;
    cJSON *c;
    assert_int_equal(model_init_read_config(source_path("configs/default-model.json"), &c), 0);
    model_init_stats_t st;
    assert_int_equal(model_init_stats(c, 0, 1, &st), SD_ERR_FORMAT);   /* vocab_size comes from a tokenizer */
    for (int vocab = 4096; vocab <= 8192; vocab *= 2) {
        assert_int_equal(model_init_stats(c, vocab, 1, &st), 0);
        print_message("default model, %d ids: unet %lld + text %lld parameters = %.2f MB fp16, %.3f GFLOP per "
                      "32x32 forward\n", vocab, (long long)st.params[0], (long long)st.params[1], st.bytes / 1e6,
                      (st.flops[0] + st.flops[1]) / 1e9);
        assert_true(st.bytes <= 20000000 - 500000);   /* 20 MB in all, tokenizer and configs included */
        assert_int_equal(st.sample_size, 32);
    }
    cJSON_Delete(c);
}


/* SDXL base 1.0's published configs (configs/sdxl-base.json): the parameter counts diffusers /
 * transformers report, text_encoder_2 in slot 3, and bytes over all four components. */
static void test_init_stats_sdxl(void **state) {
    (void)state;
    cJSON *c;
    assert_int_equal(model_init_read_config(source_path("configs/sdxl-base.json"), &c), 0);
    model_init_stats_t st;
    assert_int_equal(model_init_stats(c, 0, 1, &st), 0);
    assert_int_equal(st.params[0], 2567463684);
    assert_int_equal(st.params[1], 123060480);
    assert_int_equal(st.params[2], 83653863);
    assert_int_equal(st.params[3], 694659840);
    assert_int_equal(st.n_tensors[3], 517);   /* 2 + 32 x 16 + 2 + text_projection */
    assert_int_equal(st.bytes, 2 * (2567463684LL + 123060480 + 83653863 + 694659840));
    assert_int_equal(st.sample_size, 128);
    /* ~6.8 TFLOP per 128x128 UNet forward (1024 px), 8x SD 1.5's at 512 px */
    assert_true(st.flops[0] > 6.0e12 && st.flops[0] < 7.5e12);
    assert_true(st.flops[3] > st.flops[1]);   /* bigG is the larger encoder */
    cJSON_Delete(c);
}

/* `svdiff init` of configs/tiny-sdxl.json: an SDXL folder model_open reads as one. */
static void test_init_sdxl_folder(void **state) {
    (void)state;
    cJSON *cfg;
    assert_int_equal(model_init_read_config(source_path("configs/tiny-sdxl.json"), &cfg), 0);
    char *d = temp_dir(), *d2 = temp_dir();
    const char *tok = source_path("tests/fixtures/tokenizer/tiny");
    model_init_options_t opt = {.seed = 5, .fp16 = 1, .tokenizer_dir = tok};
    model_init_stats_t st;
    assert_int_equal(model_init(cfg, d, &opt, &st), 0);
    print_message("tiny SDXL: unet %lld, text_encoder %lld, text_encoder_2 %lld, vae %lld parameters, %.1f KB fp16\n",
                  (long long)st.params[0], (long long)st.params[1], (long long)st.params[3], (long long)st.params[2],
                  st.bytes / 1e3);
    assert_true(st.bytes < 600000);   /* a few hundred KB */
    model_t m;
    assert_int_equal(model_open(&m, d, NULL), 0);
    assert_int_equal(model_family(&m), MODEL_FAMILY_SDXL);
    assert_int_equal(m.text_encoder_2.n_tensors, st.n_tensors[3]);
    assert_int_equal(m.force_zeros_for_empty_prompt, 1);
    assert_non_null(m.tokenizer_2_dir);
    int vocab;
    assert_int_equal(config_int(&m.text_encoder_2, "vocab_size", &vocab), 0);
    assert_int_equal(vocab, 814);
    /* text_projection: transformers' N(0, hidden^-0.5), no bias */
    const st_tensor_t *t = component_find(&m.text_encoder_2, "text_projection.weight");
    assert_non_null(t);
    assert_null(component_find(&m.text_encoder_2, "text_projection.bias"));
    float x[16 * 24];
    assert_int_equal(t->numel, 16 * 24);
    assert_int_equal(st_read_f32(x, t), 0);
    double mean, sd, mx;
    stats_of(x, t->numel, &mean, &sd, &mx);
    assert_true(sd > 0.5 / sqrt(24.0) && sd < 1.5 / sqrt(24.0));
    /* tokenizer_2: the same vocabulary, padding with "!" */
    clip_tokenizer_t *t1, *t2;
    assert_int_equal(tokenizer_load(&t1, m.tokenizer_dir), 0);
    assert_int_equal(tokenizer_load(&t2, m.tokenizer_2_dir), 0);
    assert_int_equal(tokenizer_vocab_size(t1), tokenizer_vocab_size(t2));
    assert_string_equal(tokenizer_token(t2, tokenizer_pad_id(t2)), "!");
    assert_true(tokenizer_pad_id(t1) != tokenizer_pad_id(t2));
    tokenizer_free(t1);
    tokenizer_free(t2);
    model_close(&m);
    char *ip = path2(d, "model_index.json");
    cJSON *index;
    assert_int_equal(model_init_read_config(ip, &index), 0);
    assert_string_equal(cJSON_GetObjectItem(index, "_class_name")->valuestring, "StableDiffusionXLPipeline");
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(index, "force_zeros_for_empty_prompt")));
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(index, "text_encoder_2"), 1)->valuestring,
                        "CLIPTextModelWithProjection");
    assert_non_null(cJSON_GetObjectItem(index, "tokenizer_2"));
    cJSON_Delete(index);
    free(ip);
    /* without a tokenizer: no tokenizer_2/ either; the vocabulary must then be in the config */
    opt.tokenizer_dir = NULL;
    assert_int_equal(model_init(cfg, d2, &opt, NULL), SD_ERR_FORMAT);
    cJSON_AddNumberToObject(cJSON_GetObjectItem(cfg, "text_encoder"), "vocab_size", 100);
    assert_int_equal(model_init(cfg, d2, &opt, NULL), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "text_encoder_2 config: no vocab_size"));
    cJSON_AddNumberToObject(cJSON_GetObjectItem(cfg, "text_encoder_2"), "vocab_size", 100);
    assert_int_equal(model_init(cfg, d2, &opt, NULL), 0);
    assert_int_equal(model_open(&m, d2, NULL), 0);
    assert_null(m.tokenizer_2_dir);
    assert_int_equal(model_family(&m), MODEL_FAMILY_SDXL);
    model_close(&m);
    cJSON_Delete(cfg);
    rm_tree(d);
    rm_tree(d2);
    free(d);
    free(d2);
}

/* ------------------------------------------------------------------ BPE learning */

static char **fixture_captions(int *n) {
    char **caps;
    assert_int_equal(bpe_read_captions(source_path("tests/fixtures/init/captions.txt"), 0, &caps, n), 0);
    assert_int_equal(*n, 100);
    return caps;
}

/* The byte-level string a piece becomes when each of its bytes is a symbol, plus </w>. */
typedef struct {
    char *buf;
    size_t n, cap;
} sbuf_t;

static void sbuf_add(sbuf_t *s, const char *p, size_t n) {
    if (s->n + n + 1 > s->cap) {
        s->cap = 2 * (s->n + n + 1);
        s->buf = realloc(s->buf, s->cap);
    }
    memcpy(s->buf + s->n, p, n);
    s->n += n;
    s->buf[s->n] = '\0';
}

static int expect_piece(void *ctx, const char *bytes, size_t n, int special) {
    sbuf_t *s = ctx;
    assert_int_equal(special, 0);
    for (size_t i = 0; i < n; i++) {
        char u[8];
        int l = utf8_encode(u, tokenizer_byte_to_unicode((unsigned char)bytes[i]));
        sbuf_add(s, u, (size_t)l);
    }
    sbuf_add(s, "</w>", 4);
    return 0;
}

/* Every caption encodes to tokens whose strings concatenate to its pieces (the round trip);
 * returns the largest token count of one word seen (1 when every word is one token). */
static void check_roundtrip(const clip_tokenizer_t *tok, char **caps, int n, int *max_tokens_per_caption_word) {
    int ids[512];
    *max_tokens_per_caption_word = 0;
    for (int c = 0; c < n; c++) {
        int k = tokenizer_encode(tok, caps[c], ids, 512, 0, NULL);
        assert_true(k >= 2);
        sbuf_t want = {0}, got = {0};
        assert_int_equal(tokenizer_split(caps[c], expect_piece, &want), 0);
        int words = 0, tokens = k - 2;
        for (int i = 1; i + 1 < k; i++) {
            const char *s = tokenizer_token(tok, ids[i]);
            assert_non_null(s);
            sbuf_add(&got, s, strlen(s));
            size_t l = strlen(s);
            words += l >= 4 && !strcmp(s + l - 4, "</w>");
        }
        if (strcmp(want.buf, got.buf)) fail_msg("caption %d: round trip\n  want %s\n  got  %s", c, want.buf, got.buf);
        if (tokens - words + 1 > *max_tokens_per_caption_word) *max_tokens_per_caption_word = tokens - words + 1;
        free(want.buf);
        free(got.buf);
    }
}

static void test_bpe_learn_roundtrip_sks(void **state) {
    (void)state;
    int n;
    char **caps = fixture_captions(&n);
    char *dir = temp_dir();
    bpe_learn_options_t opt = {.vocab_size = 700, .min_frequency = 2, .reserved = "sks"};
    bpe_learn_stats_t st;
    assert_int_equal(bpe_learn((const char *const *)caps, n, &opt, dir, &st), 0);
    assert_int_equal(st.vocab_size, 700);
    assert_int_equal(st.n_captions, 100);
    clip_tokenizer_t *tok;
    assert_int_equal(tokenizer_load(&tok, dir), 0);
    assert_int_equal(tokenizer_vocab_size(tok), 700);
    assert_int_equal(tokenizer_n_merges(tok), st.n_merges);
    /* the CLIP layout: bytes first ('!' is id 0 as in CLIP), their </w> forms at 256.., specials last */
    assert_string_equal(tokenizer_token(tok, 0), "!");
    assert_string_equal(tokenizer_token(tok, 256), "!</w>");
    assert_string_equal(tokenizer_token(tok, 698), "<|startoftext|>");
    assert_string_equal(tokenizer_token(tok, 699), "<|endoftext|>");
    assert_int_equal(tokenizer_bos_id(tok), 698);
    assert_int_equal(tokenizer_eos_id(tok), 699);
    assert_int_equal(tokenizer_pad_id(tok), 699);
    int worst;
    check_roundtrip(tok, caps, n, &worst);
    /* the reserved word: one token, also inside a prompt and in upper case */
    int ids[TOKENIZER_MAX_LENGTH];
    assert_int_equal(tokenizer_encode(tok, "sks", ids, TOKENIZER_MAX_LENGTH, 0, NULL), 3);
    assert_string_equal(tokenizer_token(tok, ids[1]), "sks</w>");
    int sks = ids[1];
    int k = tokenizer_encode(tok, "an emoji of SKS cat, google style", ids, TOKENIZER_MAX_LENGTH, 0, NULL);
    assert_int_equal(ids[4], sks);
    assert_true(k > 6);
    /* frequent caption words became single tokens */
    assert_int_equal(tokenizer_encode(tok, "emoji google twitter style", ids, TOKENIZER_MAX_LENGTH, 0, NULL), 6);
    tokenizer_free(tok);
    rm_tree(dir);
    free(dir);

    /* with every pair allowed and room to spare, every caption word ends as one token and
     * the learner stops early, when no pair is left */
    dir = temp_dir();
    opt = (bpe_learn_options_t){.vocab_size = 5000, .min_frequency = 1, .reserved = "sks"};
    assert_int_equal(bpe_learn((const char *const *)caps, n, &opt, dir, &st), 0);
    assert_true(st.vocab_size < 5000);
    assert_int_equal(tokenizer_load(&tok, dir), 0);
    check_roundtrip(tok, caps, n, &worst);
    assert_int_equal(worst, 1);
    tokenizer_free(tok);
    rm_tree(dir);
    free(dir);
    bpe_free_captions(caps, n);
}

static void test_bpe_deterministic(void **state) {
    (void)state;
    int n;
    char **caps = fixture_captions(&n);
    char *d1 = temp_dir(), *d2 = temp_dir();
    bpe_learn_options_t opt = {.vocab_size = 650, .min_frequency = 2, .reserved = "sks"};
    assert_int_equal(bpe_learn((const char *const *)caps, n, &opt, d1, NULL), 0);
    /* reversed caption order: the counts, hence the merges, are the same */
    for (int i = 0; i < n / 2; i++) {
        char *t = caps[i];
        caps[i] = caps[n - 1 - i];
        caps[n - 1 - i] = t;
    }
    assert_int_equal(bpe_learn((const char *const *)caps, n, &opt, d2, NULL), 0);
    static const char *const files[4] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
    for (int i = 0; i < 4; i++) {
        char *a = path2(d1, files[i]), *b = path2(d2, files[i]);
        if (!same_file(a, b)) fail_msg("%s differs between runs", files[i]);
        free(a);
        free(b);
    }
    rm_tree(d1);
    rm_tree(d2);
    free(d1);
    free(d2);
    bpe_free_captions(caps, n);
}

/* Equal counts: the lowest (first, second) pair in byte order wins. */
static void test_bpe_ties(void **state) {
    (void)state;
    const char *caps[3] = {"cd", "ab", "xy zw"};
    char *dir = temp_dir();
    bpe_learn_options_t opt = {.vocab_size = 512 + 2 + 2, .min_frequency = 1, .reserved = ""};
    assert_int_equal(bpe_learn(caps, 3, &opt, dir, NULL), 0);
    char *p = path2(dir, "merges.txt");
    size_t len;
    char *text = read_file(p, &len);
    assert_string_equal(text, "#version: 0.2\na b</w>\nc d</w>\n");
    free(text);
    free(p);
    rm_tree(dir);
    free(dir);
}

static void test_bpe_errors(void **state) {
    (void)state;
    const char *caps[3] = {"a cat", "a photo of sks dog", "sks"};
    char *dir = temp_dir();
    bpe_learn_options_t opt = {.vocab_size = 600, .min_frequency = 1, .reserved = "sks"};
    assert_int_equal(bpe_learn(caps, 3, &opt, dir, NULL), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "caption 2 contains the reserved identifier \"sks\""));
    /* "asks" or "sksa" are other words: fine */
    const char *ok[2] = {"he asks", "sksa"};
    assert_int_equal(bpe_learn(ok, 2, &opt, dir, NULL), 0);
    opt.reserved = "two words";
    assert_int_equal(bpe_learn(ok, 2, &opt, dir, NULL), SD_ERR_ARG);
    opt.reserved = "SKS";   /* the tokenizer lowercases: it could never be matched */
    assert_int_equal(bpe_learn(ok, 2, &opt, dir, NULL), SD_ERR_ARG);
    opt.reserved = "sks";
    opt.vocab_size = 515;
    assert_int_equal(bpe_learn(ok, 2, &opt, dir, NULL), SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "too small"));
    rm_tree(dir);
    free(dir);
}

static void test_bpe_read_tsv(void **state) {
    (void)state;
    int n, m;
    char **lines = fixture_captions(&n), **col;
    assert_int_equal(bpe_read_captions(source_path("tests/fixtures/init/captions.tsv"), 2, &col, &m), 0);
    assert_int_equal(m, n);
    for (int i = 0; i < n; i++) assert_string_equal(col[i], lines[i]);
    bpe_free_captions(col, m);
    assert_int_equal(bpe_read_captions(source_path("tests/fixtures/init/captions.tsv"), 3, &col, &m), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "line 1 has no column 3"));
    assert_int_equal(bpe_read_captions("/nonexistent/captions.txt", 0, &col, &m), SD_ERR_IO);
    bpe_free_captions(lines, n);
}

/* Thousands of captions in well under 5 s (release build). */
static void test_bpe_speed(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 5);
    enum { N_WORDS = 3000, N_CAPS = 8000 };
    char **vocab = malloc(N_WORDS * sizeof *vocab);
    for (int i = 0; i < N_WORDS; i++) {
        int len = 3 + (int)(trng_uniform(&r) * 8);
        vocab[i] = malloc((size_t)len + 1);
        for (int k = 0; k < len; k++) vocab[i][k] = (char)('a' + (int)(trng_uniform(&r) * 20));   /* no 's' */
        vocab[i][len] = '\0';
    }
    char **caps = malloc(N_CAPS * sizeof *caps);
    for (int c = 0; c < N_CAPS; c++) {
        caps[c] = malloc(256);
        int k = snprintf(caps[c], 256, "an emoji of");
        for (int w = 0; w < 6; w++) {
            /* Zipf-like: squared uniform favours low indices */
            double u = trng_uniform(&r);
            k += snprintf(caps[c] + k, 256 - (size_t)k, " %s,", vocab[(int)(u * u * N_WORDS)]);
        }
        snprintf(caps[c] + k, 256 - (size_t)k, " %s style", c % 2 ? "google" : "twitter");
    }
    char *dir = temp_dir();
    bpe_learn_options_t opt = {.vocab_size = 4096, .min_frequency = 2, .reserved = "sks"};
    bpe_learn_stats_t st;
    double t0 = now_s();
    assert_int_equal(bpe_learn((const char *const *)caps, N_CAPS, &opt, dir, &st), 0);
    double dt = now_s() - t0;
    print_message("bpe_learn: %d captions, %d distinct words -> %d merges, %d ids in %.2f s\n", N_CAPS,
                  st.n_unique_words, st.n_merges, st.vocab_size, dt);
    assert_int_equal(st.vocab_size, 4096);
#if defined(__OPTIMIZE__) && !defined(__SANITIZE_ADDRESS__)
    assert_true(dt < 5.0);
#endif
    rm_tree(dir);
    free(dir);
    for (int i = 0; i < N_WORDS; i++) free(vocab[i]);
    for (int c = 0; c < N_CAPS; c++) free(caps[c]);
    free(vocab);
    free(caps);
}

/* ------------------------------------------------------------------ init: the written folder */

static const char *TINY_CONFIG =
    "{\"unet\": {\"block_out_channels\": [8, 16], \"layers_per_block\": 1, \"in_channels\": 3, \"out_channels\": 3,"
    " \"cross_attention_dim\": 16, \"attention_head_dim\": 2, \"norm_num_groups\": 4, \"sample_size\": 8,"
    " \"use_linear_projection\": true,"
    " \"down_block_types\": [\"DownBlock2D\", \"CrossAttnDownBlock2D\"],"
    " \"up_block_types\": [\"CrossAttnUpBlock2D\", \"UpBlock2D\"]},"
    " \"text_encoder\": {\"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"max_position_embeddings\": 77, \"hidden_act\": \"quick_gelu\"},"
    " \"scheduler\": {\"_class_name\": \"DDIMScheduler\", \"beta_start\": 0.0001, \"beta_end\": 0.02,"
    " \"beta_schedule\": \"squaredcos_cap_v2\", \"num_train_timesteps\": 1000, \"prediction_type\": \"epsilon\","
    " \"clip_sample\": true, \"set_alpha_to_one\": false, \"steps_offset\": 1, \"timestep_spacing\": \"trailing\"}}";

static void test_init_folder(void **state) {
    (void)state;
    int n;
    char **caps = fixture_captions(&n);
    char *tokdir = temp_dir();
    bpe_learn_options_t bo = {.vocab_size = 600, .min_frequency = 2, .reserved = "sks"};
    assert_int_equal(bpe_learn((const char *const *)caps, n, &bo, tokdir, NULL), 0);
    bpe_free_captions(caps, n);

    cJSON *cfg = parse(TINY_CONFIG);
    char *d1 = temp_dir(), *d2 = temp_dir(), *d3 = temp_dir();
    model_init_options_t opt = {.seed = 42, .fp16 = 1, .tokenizer_dir = tokdir};
    model_init_stats_t st;
    assert_int_equal(model_init(cfg, d1, &opt, &st), 0);
    /* a second time into the same (now full) folder: refused without force */
    assert_int_equal(model_init(cfg, d1, &opt, NULL), SD_ERR_ARG);
    assert_int_equal(model_init(cfg, d2, &opt, NULL), 0);
    opt.seed = 43;
    assert_int_equal(model_init(cfg, d3, &opt, NULL), 0);

    /* what the loader sees: every tensor (validated by model_open), F16, the tokenizer's size */
    model_t m;
    assert_int_equal(model_open(&m, d1, NULL), 0);
    assert_int_equal(m.unet.n_tensors, st.n_tensors[0]);
    assert_int_equal(m.text_encoder.n_tensors, st.n_tensors[1]);
    assert_int_equal(m.vae.n_tensors, 0);
    assert_non_null(m.tokenizer_dir);
    int vocab, eos;
    assert_int_equal(config_int(&m.text_encoder, "vocab_size", &vocab), 0);
    assert_int_equal(vocab, 600);
    assert_int_equal(config_int(&m.text_encoder, "eos_token_id", &eos), 0);
    assert_int_equal(eos, 599);
    const st_tensor_t *t = component_find(&m.unet, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, ST_F16);
    /* the stored values are model_init_tensor's, rounded to fp16 */
    float *want = malloc((size_t)t->numel * sizeof *want), *got = malloc((size_t)t->numel * sizeof *got);
    model_component_t uc = {.name = "unet", .config = cJSON_GetObjectItem(cfg, "unet")};
    layer_registry_t reg = {0};
    assert_int_equal(component_registry(&uc, &reg), 0);
    const layer_spec_t *sp = layer_registry_find(&reg, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k");
    assert_non_null(sp);
    assert_int_equal(sp->kind, LAYER_LINEAR);
    assert_int_equal(model_init_tensor(want, "unet", sp, 0, t->name, t->ndim, t->shape, 42), 0);
    layer_registry_free(&reg);
    assert_int_equal(st_read_f32(got, t), 0);
    for (int64_t i = 0; i < t->numel; i++) assert_true(got[i] == st_f16_to_f32(st_f32_to_f16(want[i])));
    free(want);
    free(got);
    t = component_find(&m.unet, "conv_in.bias");   /* a conv bias: U(+-1/sqrt(3*3*3)), not zero */
    float b[8];
    assert_int_equal(st_read_f32(b, t), 0);
    for (int i = 0; i < 8; i++) assert_true(b[i] != 0.0f && fabsf(b[i]) <= 1 / sqrtf(27.0f));
    model_close(&m);

    /* same seed -> same bytes; another seed -> other weights */
    static const char *const files[3] = {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                                         "model_index.json"};
    for (int i = 0; i < 3; i++) {
        char *a = path2(d1, files[i]), *b2 = path2(d2, files[i]), *c = path2(d3, files[i]);
        assert_true(same_file(a, b2));
        if (i < 2) assert_false(same_file(a, c));
        free(a), free(b2), free(c);
    }

    /* the pipeline opens it as a pixel-space model (the CLI test cli.init_generate runs it) */
    pipeline_t p;
    assert_int_equal(pipeline_open(&p, d1, NULL), 0);
    assert_int_equal(p.has_vae, 0);
    assert_int_equal(p.latent_channels, 3);
    pipeline_close(&p);

    /* fp32, no tokenizer: vocab_size must then be in the config */
    model_init_options_t o32 = {.seed = 1, .fp16 = 0};
    char *d4 = temp_dir();
    assert_int_equal(model_init(cfg, d4, &o32, NULL), SD_ERR_FORMAT);
    cJSON_AddNumberToObject(cJSON_GetObjectItem(cfg, "text_encoder"), "vocab_size", 300);
    assert_int_equal(model_init(cfg, d4, &o32, NULL), 0);
    assert_int_equal(model_open(&m, d4, NULL), 0);
    assert_int_equal(component_find(&m.unet, "conv_out.weight")->dtype, ST_F32);
    assert_null(m.tokenizer_dir);
    model_close(&m);
    /* a vocab_size below the tokenizer's is refused */
    assert_int_equal(model_init(cfg, d3, &(model_init_options_t){.tokenizer_dir = tokdir, .force = 1}, NULL),
                     SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "smaller than the tokenizer's 600"));
    /* unsupported configs fail with the loader's message, before anything is written */
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(cfg, "unet"), "norm_num_groups", cJSON_CreateNumber(3));
    char *d5 = temp_dir();
    assert_int_equal(model_init(cfg, d5, &o32, NULL), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "norm_num_groups"));
    char *idx = path2(d5, "model_index.json");
    assert_int_equal(access(idx, F_OK), -1);
    free(idx);

    cJSON_Delete(cfg);
    char *dirs[6] = {tokdir, d1, d2, d3, d4, d5};
    for (int i = 0; i < 6; i++) {
        rm_tree(dirs[i]);
        free(dirs[i]);
    }
}

/* A text encoder with fewer positions than CLIP's 77 (the default model's short captions): init
 * writes a tokenizer that pads to that length, the statistics count that many tokens, the pipeline
 * encodes and samples with it, and training refuses a prompt that does not fit. */
static void test_init_short_context(void **state) {
    (void)state;
    int n;
    char **caps = fixture_captions(&n);
    char *tokdir = temp_dir(), *d = temp_dir();
    bpe_learn_options_t bo = {.vocab_size = 600, .min_frequency = 2};
    assert_int_equal(bpe_learn((const char *const *)caps, n, &bo, tokdir, NULL), 0);
    bpe_free_captions(caps, n);
    char *text = strdup(TINY_CONFIG), *at = strstr(text, "\"max_position_embeddings\": 77");
    assert_non_null(at);
    memcpy(at + strlen("\"max_position_embeddings\": "), "16", 2);
    cJSON *cfg = parse(text), *cfg77 = parse(TINY_CONFIG);
    model_init_stats_t st, st77;
    assert_int_equal(model_init(cfg, d, &(model_init_options_t){.seed = 1, .tokenizer_dir = tokdir}, &st), 0);
    assert_int_equal(model_init_stats(cfg77, 600, 0, &st77), 0);
    assert_int_equal(st.tokens, 16);
    assert_int_equal(st77.tokens, 77);
    assert_true(st.flops[1] < st77.flops[1] * 16.0 / 77.0 * 1.1);   /* linear in tokens, plus attention */
    assert_true(st.flops[0] < st77.flops[0]);                        /* cross-attention k/v and products */

    char *tc_path = path2(d, "tokenizer/tokenizer_config.json");
    cJSON *tc = NULL;
    assert_int_equal(model_init_read_config(tc_path, &tc), 0);
    assert_int_equal(cJSON_GetObjectItem(tc, "model_max_length")->valueint, 16);
    cJSON_Delete(tc);

    pipeline_t p;
    assert_int_equal(pipeline_open(&p, d, NULL), 0);
    assert_int_equal(p.n_ctx, 16);
    float lat[3 * 8 * 8];
    txt2img_opts_t o = {.prompt = "an emoji of a dog", .width = 8, .height = 8, .steps = 2, .cfg = 2, .seed = 5,
                        .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &o, NULL, lat), 0);
    for (int i = 0; i < 3 * 8 * 8; i++) assert_true(isfinite(lat[i]));
    /* the training prompt table pads to the model's length and refuses what would be cut */
    prompt_table_t pt = {.T = p.n_ctx};
    assert_int_equal(prompt_table_add(&pt, p.tok, "an emoji of a dog", "test"), 0);
    assert_int_equal(pt.ids[0], tokenizer_bos_id(p.tok));
    assert_int_equal(prompt_table_add(&pt, p.tok,
                                      "a dog a dog a dog a dog a dog a dog a dog a dog a dog a dog", "test"),
                     SD_ERR_ARG);
    assert_non_null(strstr(sd_last_error(), "more than the text encoder's 16"));
    prompt_table_free(&pt);
    pipeline_close(&p);

    cJSON_Delete(cfg);
    cJSON_Delete(cfg77);
    free(text);
    free(tc_path);
    rm_tree(tokdir), rm_tree(d);
    free(tokdir), free(d);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_distributions),
        cmocka_unit_test(test_init_stats_sd15),
        cmocka_unit_test(test_init_default_config_size),
        cmocka_unit_test(test_init_stats_sdxl),
        cmocka_unit_test(test_init_sdxl_folder),
        cmocka_unit_test(test_bpe_learn_roundtrip_sks),
        cmocka_unit_test(test_bpe_deterministic),
        cmocka_unit_test(test_bpe_ties),
        cmocka_unit_test(test_bpe_errors),
        cmocka_unit_test(test_bpe_read_tsv),
        cmocka_unit_test(test_bpe_speed),
        cmocka_unit_test(test_init_folder),
        cmocka_unit_test(test_init_short_context),
    };
    return RUN_TESTS(argc, argv, "init", tests, NULL, NULL);
}
