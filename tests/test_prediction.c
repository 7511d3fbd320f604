/* Tests for the prediction type of single-file checkpoints (src/io/model_predict.c): the tiny SD
 * 2.x file (tests/fixtures/tiny-sd/sd2.safetensors) copied into a temp dir with an LDM config
 * beside it, with metadata, or with its last norm bias widened; the flag and --scheduler-config
 * over all of it; and sampling: the decided type changes the latents, and the single file gives
 * the same bytes as a diffusers folder of the same weights with the same scheduler config. */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"
#include "io/model.h"
#include "io/safetensors.h"
#include "pipeline/pipeline.h"
#include "testutil.h"

static char g_dir[256];

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/svdiff_pred_XXXXXX");
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

static char g_sd2[1024], g_sd1[1024], g_tok[1024];

static int group_setup(void **state) {
    (void)state;
    snprintf(g_sd2, sizeof g_sd2, "%s", source_path("tests/fixtures/tiny-sd/sd2.safetensors"));
    snprintf(g_sd1, sizeof g_sd1, "%s", source_path("tests/fixtures/tiny-sd/sd1.safetensors"));
    snprintf(g_tok, sizeof g_tok, "%s", source_path("tests/fixtures/tiny-sd/diffusers/tokenizer"));
    return 0;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* The checkpoint in the temp dir as NAME.safetensors (a link: only its name matters here). */
static const char *link_sd(const char *src, const char *name) {
    const char *p = tpath(name);
    char abs[2048] = "";
    if (src[0] != '/') assert_non_null(getcwd(abs, sizeof abs - 1)), strcat(abs, "/");
    strncat(abs, src, sizeof abs - strlen(abs) - 1);
    assert_int_equal(symlink(abs, p), 0);
    return p;
}

/* A copy of sd2.safetensors with metadata key=value (NULL: none) and, when bias_std > 0, the last
 * up block's transformer norm1 bias replaced by a zero-mean spread of that population std. */
static const char *rewrite_sd2(const char *name, const char *key, const char *value, double bias_std) {
    st_file_t f;
    assert_int_equal(st_open(&f, g_sd2), 0);
    st_writer_t *w = st_writer_new();
    float *bias = NULL;
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor_t *t = &f.tensors[i];
        if (bias_std > 0 && !strcmp(t->name, "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.norm1.bias")) {
            /* +-s alternating (an even length): population std exactly s */
            assert_true(t->numel % 2 == 0);
            bias = malloc(sizeof(float) * (size_t)t->numel);
            for (int64_t j = 0; j < t->numel; j++) bias[j] = (float)(j % 2 ? bias_std : -bias_std);
            assert_int_equal(st_writer_add(w, t->name, ST_F32, t->ndim, t->shape, bias), 0);
            continue;
        }
        assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    assert_true(bias_std <= 0 || bias);   /* the tensor was there */
    if (key) assert_int_equal(st_writer_meta(w, key, value), 0);
    const char *out = tpath(name);
    assert_int_equal(st_writer_save(w, out), 0);
    st_writer_free(w);
    st_close(&f);
    free(bias);
    return out;
}

static const char *prediction(const model_t *m) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "prediction_type");
    assert_true(cJSON_IsString(p));
    return p->valuestring;
}

static void open_ok(model_t *m, const char *path, const model_open_options_t *o) {
    if (model_open(m, path, o)) {
        print_error("model_open(%s): %s\n", path, sd_last_error());
        fail();
    }
}

/* opens path and checks the decision: its value, a substring of the reason, guessed or not */
static void expect(const char *path, const model_open_options_t *o, const char *want, const char *why, int guessed) {
    model_t m;
    open_ok(&m, path, o);
    assert_string_equal(prediction(&m), want);
    if (!strstr(m.prediction_why, why)) {
        print_error("reason '%s' lacks '%s'\n", m.prediction_why, why);
        fail();
    }
    assert_int_equal(m.prediction_guessed, guessed);
    model_close(&m);
}

static void expect_fail(const char *path, const model_open_options_t *o, const char *w1, const char *w2) {
    model_t m;
    assert_int_not_equal(model_open(&m, path, o), 0);
    const char *e = sd_last_error();
    if (!strstr(e, w1) || (w2 && !strstr(e, w2))) {
        print_error("error '%s' lacks '%s' / '%s'\n", e, w1, w2 ? w2 : "");
        fail();
    }
}

/* The LDM config of the SD 2.x 768-v model has this shape (keys abridged). */
static const char *const V_YAML =
    "model:\n"
    "  base_learning_rate: 1.0e-4\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    parameterization: \"v\"\n"
    "    linear_start: 0.00085\n"
    "    linear_end: 0.0120\n"
    "    image_size: 96 # unused\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params:\n"
    "        attention_resolutions: [ 4, 2, 1 ]\n"
    "        channel_mult: [ 1, 2, 4, 4 ]\n";

static void test_yaml_beside(void **state) {
    (void)state;
    const model_open_options_t o = {0};
    const char *p = link_sd(g_sd2, "v768.safetensors");
    write_text(tpath("v768.yaml"), V_YAML);
    expect(p, &o, "v_prediction", "parameterization \"v\" in v768.yaml beside the file", 0);
    /* other spellings: single quotes, CRLF, comments, the key after siblings */
    write_text(tpath("v768.yaml"), "# LDM config\r\nmodel:\r\n  params:\r\n    timesteps: 1000\r\n"
                                   "    parameterization: 'v'   # v-prediction\r\n");
    expect(p, &o, "v_prediction", "v768.yaml", 0);
    write_text(tpath("v768.yaml"), "model:\n  params:\n    parameterization: eps\n");
    expect(p, &o, "epsilon", "parameterization \"eps\"", 0);
    /* no parameterization: LDM's default eps; the key at other paths does not count */
    write_text(tpath("v768.yaml"), "parameterization: v\nmodel:\n  parameterization: v\n  params:\n"
                                   "    unet_config:\n      params:\n        parameterization: v\n"
                                   "    notes: |\n      parameterization: v\n      \tparameterization: v\n\n    items:\n    - a: 1\n"
                                   "      parameterization: v\n  other:\n    parameterization: v\n");
    expect(p, &o, "epsilon", "names no model.params.parameterization", 0);
    /* the yaml decides over the weights' guess and over metadata */
    const char *meta = rewrite_sd2("meta.safetensors", "modelspec.prediction_type", "epsilon", 0);
    write_text(tpath("meta.yaml"), V_YAML);
    expect(meta, &o, "v_prediction", "meta.yaml", 0);
}

static void test_yaml_errors(void **state) {
    (void)state;
    const model_open_options_t o = {0};
    const char *p = link_sd(g_sd2, "m.safetensors");
    write_text(tpath("m.yaml"), "model:\n\tparams:\n");
    expect_fail(p, &o, "m.yaml:2:", "tab");
    write_text(tpath("m.yaml"), "model:\n  params:\n    parameterization: vv\n");
    expect_fail(p, &o, "m.yaml", "'vv', expected eps, v or x0");
    write_text(tpath("m.yaml"), "model:\n  params:\n    parameterization: \"v\n");
    expect_fail(p, &o, "m.yaml:3:", "unterminated quote");
    write_text(tpath("m.yaml"), "model:\n  params:\n    parameterization: v\n    parameterization: eps\n");
    expect_fail(p, &o, "m.yaml:4:", "given twice");
    write_text(tpath("m.yaml"), "model:\n  params:\n    parameterization: [v]\n");
    expect_fail(p, &o, "m.yaml:3:", "one word");
}

static void test_metadata(void **state) {
    (void)state;
    const model_open_options_t o = {0};
    expect(rewrite_sd2("a.safetensors", "modelspec.prediction_type", "v", 0), &o, "v_prediction",
           "metadata modelspec.prediction_type \"v\"", 0);
    expect(rewrite_sd2("b.safetensors", "modelspec.prediction_type", "epsilon", 0), &o, "epsilon",
           "modelspec.prediction_type", 0);
    expect(rewrite_sd2("c.safetensors", "ss_v_parameterization", "True", 0), &o, "v_prediction",
           "ss_v_parameterization", 0);
    expect(rewrite_sd2("d.safetensors", "modelspec.architecture", "stable-diffusion-v2-768-v", 0), &o, "v_prediction",
           "stable-diffusion-v2-768-v", 0);
    expect(rewrite_sd2("e.safetensors", "modelspec.architecture", "stable-diffusion-v2-512", 0), &o, "epsilon",
           "stable-diffusion-v2-512", 0);
    expect_fail(rewrite_sd2("f.safetensors", "modelspec.prediction_type", "flow", 0), &o, "'flow'",
                "--prediction-type");
}

static void test_guess(void **state) {
    (void)state;
    const model_open_options_t o = {0};
    /* the fixture's norm biases are narrow (std 0.04): epsilon, as ComfyUI reads it */
    expect(g_sd2, &o, "epsilon", "not above 0.09", 1);
    expect(rewrite_sd2("wide.safetensors", NULL, NULL, 0.125), &o, "v_prediction",
           "std of up_blocks.1.attentions.1.transformer_blocks.0.norm1.bias is 0.125, above 0.09", 1);
    expect(g_sd1, &o, "epsilon", "SD 1.x single file without sd1.yaml or metadata", 0);
    const char *folder = source_path("tests/fixtures/tiny-sd/diffusers");
    expect(folder, &o, "epsilon", "scheduler_config.json", 0);
}

static void test_overrides(void **state) {
    (void)state;
    const char *p = link_sd(g_sd2, "v768.safetensors");
    write_text(tpath("v768.yaml"), V_YAML);
    const model_open_options_t flag = {.prediction_type = "epsilon"};
    expect(p, &flag, "epsilon", "--prediction-type", 0);
    write_text(tpath("sched.json"), "{\"_class_name\": \"DDIMScheduler\", \"prediction_type\": \"epsilon\", "
                                    "\"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"beta_end\": 0.012}");
    const model_open_options_t sc = {.scheduler_config = tpath("sched.json")};
    expect(p, &sc, "epsilon", "prediction_type in --scheduler-config", 0);
    const model_open_options_t both = {.scheduler_config = tpath("sched.json"), .prediction_type = "v_prediction"};
    expect(p, &both, "v_prediction", "--prediction-type", 0);
    /* a scheduler config without prediction_type: the file's own decision stands */
    write_text(tpath("noptype.json"), "{\"_class_name\": \"DDIMScheduler\"}");
    const model_open_options_t sc2 = {.scheduler_config = tpath("noptype.json")};
    model_t m;
    open_ok(&m, p, &sc2);
    assert_string_equal(prediction(&m), "v_prediction");
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(m.scheduler_config, "_class_name");
    assert_string_equal(cls->valuestring, "DDIMScheduler");
    model_close(&m);
    const model_open_options_t bad = {.prediction_type = "v"};
    expect_fail(p, &bad, "--prediction-type must be epsilon or v_prediction", "'v'");
    const model_open_options_t missing = {.scheduler_config = tpath("nope.json")};
    expect_fail(p, &missing, "--scheduler-config", "nope.json");
}

/* ---- sampling ---- */

static void sample(const char *path, const model_open_options_t *o0, float *lat, size_t n) {
    model_open_options_t o = *o0;
    o.tokenizer_dir = g_tok;
    pipeline_t p;
    if (pipeline_open_model(&p, path, &o)) {
        print_error("pipeline_open_model(%s): %s\n", path, sd_last_error());
        fail();
    }
    int C, h, w;
    pipeline_latent_shape(&p, 8, 8, &C, &h, &w);
    assert_int_equal((size_t)C * h * w, n);
    txt2img_opts_t t = {.prompt = "a photo of a cat", .width = 8, .height = 8, .steps = 4, .cfg = 3,
                        .sampler = SAMPLER_DDIM, .seed = 7, .batch = 1};
    assert_int_equal(pipeline_txt2img(&p, &t, NULL, lat), 0);
    pipeline_close(&p);
}

static void write_json(const char *path, const cJSON *j) {
    char *s = cJSON_Print(j);
    write_text(path, s);
    free(s);
}

static void write_component(const model_component_t *c, const char *dir, const char *file) {
    char path[600];
    snprintf(path, sizeof path, "%s/%s", tpath(dir), "config.json");
    assert_int_equal(mkdir(tpath(dir), 0755), 0);
    write_json(path, c->config);
    st_writer_t *w = st_writer_new();
    for (int i = 0; i < c->n_tensors; i++) {
        const st_tensor_t *t = &c->tensors[i];
        assert_int_equal(st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data), 0);
    }
    snprintf(path, sizeof path, "%s/%s", tpath(dir), file);
    assert_int_equal(st_writer_save(w, path), 0);
    st_writer_free(w);
}

static void test_sampling(void **state) {
    (void)state;
    enum { N = 4 * 8 * 8 };
    float eps[N], v_flag[N], v_yaml[N], v_sched[N], v_folder[N];
    const model_open_options_t none = {0}, vflag = {.prediction_type = "v_prediction"};
    sample(g_sd2, &none, eps, N);   /* the guess: epsilon */
    sample(g_sd2, &vflag, v_flag, N);
    assert_true(rel_error(v_flag, eps, N) > 1e-2);   /* the prediction type reaches the sampler */
    const char *p = link_sd(g_sd2, "v768.safetensors");
    write_text(tpath("v768.yaml"), V_YAML);
    sample(p, &none, v_yaml, N);
    assert_memory_equal(v_yaml, v_flag, sizeof v_flag);

    /* a diffusers folder of the same tensors and derived configs, its scheduler v_prediction */
    model_t m;
    open_ok(&m, g_sd2, &vflag);
    assert_int_equal(mkdir(tpath("folder"), 0755), 0);
    write_component(&m.unet, "folder/unet", "diffusion_pytorch_model.safetensors");
    write_component(&m.text_encoder, "folder/text_encoder", "model.safetensors");
    assert_int_equal(mkdir(tpath("folder/scheduler"), 0755), 0);
    write_json(tpath("folder/scheduler/scheduler_config.json"), m.scheduler_config);
    write_json(tpath("v_sched.json"), m.scheduler_config);
    model_close(&m);
    write_text(tpath("folder/model_index.json"),
               "{\"_class_name\": \"StableDiffusionPipeline\", \"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
               " \"text_encoder\": [\"transformers\", \"CLIPTextModel\"], \"vae\": [null, null],"
               " \"scheduler\": [\"diffusers\", \"PNDMScheduler\"]}");
    sample(tpath("folder"), &none, v_folder, N);
    assert_memory_equal(v_folder, v_flag, sizeof v_flag);
    /* and the single file given that scheduler config */
    const model_open_options_t sc = {.scheduler_config = tpath("v_sched.json")};
    sample(g_sd2, &sc, v_sched, N);
    assert_memory_equal(v_sched, v_flag, sizeof v_flag);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_yaml_beside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_yaml_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metadata, setup, teardown),
        cmocka_unit_test_setup_teardown(test_guess, setup, teardown),
        cmocka_unit_test_setup_teardown(test_overrides, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sampling, setup, teardown),
    };
    return RUN_TESTS(argc, argv, "prediction", tests, group_setup, NULL);
}
