/* The shared layer types (weights/layer.h): the registry's tensor list (names, shapes, weight
 * before bias, norms with gain and offset), lookups, and the state of a layer's weight (dense,
 * spectral, LoRA, delta). The registries of the real models are checked in test_model.c
 * (parameter counts, validation) and test_init.c (init rules). */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "weights/layer.h"

typedef struct {
    char names[8][LAYER_NAME_MAX + 8];
    int ndim[8], part[8];
    int64_t shape[8][4];
    int n, stop_at;
} seen_t;

static int see(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim, const int64_t *shape) {
    seen_t *s = ctx;
    (void)spec;
    if (s->n == s->stop_at) return 42;
    snprintf(s->names[s->n], sizeof s->names[0], "%s", name);
    s->ndim[s->n] = ndim, s->part[s->n] = part;
    memcpy(s->shape[s->n], shape, sizeof(int64_t) * (size_t)ndim);
    s->n++;
    return 0;
}

static void test_registry_tensors(void **state) {
    (void)state;
    layer_registry_t r = {0};
    layer_registry_add(&r, LAYER_CONV, 8, 4, 3, 1, "down_blocks.%d.resnets.%d.conv1", 0, 1);
    layer_registry_add(&r, LAYER_LINEAR, 16, 12, 1, 0, "attn2.to_k");
    layer_registry_add(&r, LAYER_NORM, 8, 8, 1, 0, "norm1")->init_std = 0;   /* a norm always has an offset */
    layer_registry_add(&r, LAYER_EMBEDDING, 100, 16, 1, 0, "token_embedding")->init_std = 0.02;
    assert_int_equal(r.n, 4);
    seen_t s = {.stop_at = -1};
    assert_int_equal(layer_registry_tensors(&r, see, &s), 0);
    assert_int_equal(s.n, 6);
    static const char *const names[6] = {"down_blocks.0.resnets.1.conv1.weight", "down_blocks.0.resnets.1.conv1.bias",
                                         "attn2.to_k.weight", "norm1.weight", "norm1.bias", "token_embedding.weight"};
    static const int ndim[6] = {4, 1, 2, 1, 1, 2}, part[6] = {0, 1, 0, 0, 1, 0};
    static const int64_t shape0[6] = {8, 8, 16, 8, 8, 100};
    for (int i = 0; i < 6; i++) {
        assert_string_equal(s.names[i], names[i]);
        assert_int_equal(s.ndim[i], ndim[i]);
        assert_int_equal(s.part[i], part[i]);
        assert_int_equal(s.shape[i][0], shape0[i]);
    }
    assert_int_equal(s.shape[0][1], 4), assert_int_equal(s.shape[0][2], 3), assert_int_equal(s.shape[0][3], 3);
    assert_int_equal(s.shape[2][1], 12);
    assert_int_equal(s.shape[5][1], 16);
    /* a callback's non-zero return stops the walk and is returned */
    seen_t t = {.stop_at = 2};
    assert_int_equal(layer_registry_tensors(&r, see, &t), 42);
    assert_int_equal(t.n, 2);
    /* lookups, fan_in, copies */
    const layer_spec_t *c = layer_registry_find(&r, "down_blocks.0.resnets.1.conv1");
    assert_non_null(c);
    assert_int_equal(layer_spec_fan_in(c), 4 * 3 * 3);
    assert_null(layer_registry_find(&r, "down_blocks.0.resnets.1"));
    layer_registry_t r2 = {0};
    for (int i = 0; i < r.n; i++) layer_registry_append(&r2, &r.v[i]);
    assert_int_equal(r2.n, 4);
    assert_true(layer_registry_find(&r2, "token_embedding")->init_std == 0.02);
    layer_registry_free(&r2);
    layer_registry_free(&r);
    assert_int_equal(r.n, 0);
    assert_null(r.v);
}

static void test_layer_state(void **state) {
    (void)state;
    float W[6 * 4];
    for (int i = 0; i < 24; i++) W[i] = (float)((i * 7) % 11) - 5.0f;
    weight_t w = weight_dense(W, ST_F32, 6, 4);
    assert_int_equal(layer_state(&w), LAYER_STATE_DENSE);
    /* a merged delta / LoRA file lives in the dense weight's baked matrix (pipeline/adapters.c) */
    weight_bake(&w);
    assert_non_null(w.baked);
    assert_int_equal(layer_state(&w), LAYER_STATE_DELTA);
    assert_string_equal(layer_state_name(layer_state(&w)), "delta");
    weight_free(&w);
    w = weight_dense(W, ST_F32, 6, 4);
    assert_int_equal(weight_make_spectral(&w, 1), 0);
    assert_int_equal(layer_state(&w), LAYER_STATE_SPECTRAL);
    weight_bake(&w);   /* the inference cache of a spectral weight keeps it spectral */
    assert_int_equal(layer_state(&w), LAYER_STATE_SPECTRAL);
    weight_free(&w);
    /* a LoRA adapter in training form (train/lora_train.c attach) */
    w = weight_dense(W, ST_F32, 6, 4);
    w.lora = calloc(1, sizeof *w.lora);
    lora_alloc(w.lora, 6, 4, 2, 2.0f);
    w.kind = WEIGHT_LORA;
    assert_int_equal(layer_state(&w), LAYER_STATE_LORA);
    assert_string_equal(layer_state_name(LAYER_STATE_SPECTRAL), "spectral");
    assert_string_equal(layer_state_name(LAYER_STATE_LORA), "lora");
    assert_string_equal(layer_state_name(LAYER_STATE_DENSE), "dense");
    weight_free(&w);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry_tensors),
        cmocka_unit_test(test_layer_state),
    };
    return RUN_TESTS(argc, argv, "layer", tests, NULL, teardown);
}
