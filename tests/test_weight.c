/* Weight kinds: half-precision dense weights used per call without a whole-model fp32 copy,
 * spectral weights through the generic linear/conv/embedding entry points (both the
 * factored and the baked path), and finite-difference checks of the embedding shifts. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/scratch.h"
#include "weights/weight.h"

static void test_dense_half_precision(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 51);
    const int rows = 6, cols = 10, N = 4;
    float *Wf = alloc_normal(&r, rows * cols, 1), *x = alloc_normal(&r, N * cols, 1);
    uint16_t h16[60], hb16[60];
    for (int i = 0; i < rows * cols; i++) {
        h16[i] = st_f32_to_f16(Wf[i]);
        hb16[i] = st_f32_to_bf16(Wf[i]);
    }
    st_dtype_t dts[2] = {ST_F16, ST_BF16};
    const uint16_t *datas[2] = {h16, hb16};
    for (int k = 0; k < 2; k++) {
        float Wr[60], want[24], got[24];
        for (int i = 0; i < 60; i++) Wr[i] = k == 0 ? st_f16_to_f32(h16[i]) : st_bf16_to_f32(hb16[i]);
        linear_forward(want, x, Wr, NULL, N, cols, rows);
        weight_t w = weight_dense(datas[k], dts[k], rows, cols);
        weight_linear_forward(got, x, &w, NULL, N);
        assert_memory_equal(got, want, sizeof want);
        /* embedding rows convert exactly */
        int ids[3] = {5, 0, 5};
        float emb[30];
        weight_embedding_forward(emb, ids, &w, 3);
        for (int n = 0; n < 3; n++) assert_memory_equal(emb + n * cols, Wr + ids[n] * cols, sizeof(float) * cols);
        weight_free(&w);
    }
    free(Wf), free(x);
}

static void test_spectral_dispatch(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 52);
    /* a linear applied to many tokens (baked path) and to few (factored path) */
    const int rows = 8, cols = 12;
    float *W = alloc_normal(&r, rows * cols, 1);
    weight_t w = weight_dense(W, ST_F32, rows, cols);
    assert_int_equal(weight_make_spectral(&w, 1), 0);
    assert_int_equal(weight_shift_count(&w), 8);
    fill_normal(&r, w.sp->delta, 8, 0.3f);
    const int Ns[2] = {2, 400};
    for (int k = 0; k < 2; k++) {
        int N = Ns[k];
        float *x = alloc_normal(&r, (size_t)N * cols, 1), *y = alloc_zeros((size_t)N * rows);
        float *y_ref = alloc_zeros((size_t)N * rows), *dy = alloc_normal(&r, (size_t)N * rows, 1);
        float *dx = alloc_zeros((size_t)N * cols), *dx_ref = alloc_zeros((size_t)N * cols);
        float dd[8] = {0}, dd_ref[8] = {0};
        spectral_linear_forward(y_ref, x, W, w.sp, NULL, NULL, N);
        weight_linear_forward(y, x, &w, NULL, N);
        assert_close("weight_linear_forward", y, y_ref, (size_t)N * rows, 1e-5);
        spectral_linear_backward(dx_ref, dd_ref, NULL, dy, x, W, w.sp, NULL, N);
        weight_linear_backward(dx, dd, NULL, dy, x, &w, N);
        assert_close("weight_linear_backward dx", dx, dx_ref, (size_t)N * cols, 1e-5);
        assert_close("weight_linear_backward ddelta", dd, dd_ref, 8, 1e-5);
        free(x), free(y), free(y_ref), free(dy), free(dx), free(dx_ref);
    }
    /* baking caches the effective matrix and gives the same outputs */
    float x[2 * 12], y1[16], y2[16];
    fill_normal(&r, x, 24, 1);
    weight_linear_forward(y1, x, &w, NULL, 2);
    weight_bake(&w);
    assert_non_null(w.baked);
    weight_linear_forward(y2, x, &w, NULL, 2);
    assert_close("baked vs factored", y2, y1, 16, 1e-5);
    weight_free(&w);
    free(W);
}

typedef struct {
    weight_t *w;
    int *ids, N;
    float *out, *probe;
} emb_case_t;

static double emb_loss(void *ctx) {
    emb_case_t *c = ctx;
    weight_embedding_forward(c->out, c->ids, c->w, c->N);
    return dot_loss(c->out, c->probe, (size_t)c->N * c->w->cols);
}

static void test_embedding(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 53);
    const int vocab = 9, dim = 6, N = 5;
    int ids[5] = {3, 0, 8, 3, 7};
    float *W = alloc_normal(&r, vocab * dim, 1);
    float *out = alloc_zeros(N * dim), *probe = alloc_normal(&r, N * dim, 1);
    /* dense: rows, and a scatter-add gradient (id 3 twice) */
    weight_t wd = weight_dense(W, ST_F32, vocab, dim);
    float *dW = alloc_zeros(vocab * dim);
    weight_embedding_backward(dW, probe, ids, &wd, N);
    for (int j = 0; j < dim; j++) assert_true(fabsf(dW[3 * dim + j] - probe[j] - probe[3 * dim + j]) < 1e-6f);
    for (int j = 0; j < dim; j++) assert_true(dW[1 * dim + j] == 0.0f);
    /* spectral, exact form and factored-only form */
    for (int keep = 1; keep >= 0; keep--) {
        weight_t w = weight_dense(W, ST_F32, vocab, dim);
        assert_int_equal(weight_make_spectral(&w, keep), 0);
        for (int i = 0; i < w.sp->rank; i++) w.sp->delta[i] = 0.4f * w.sp->S[i] * (i % 2 ? 1 : -0.5f);
        w.sp->delta[w.sp->rank - 1] = -2.0f * w.sp->S[w.sp->rank - 1];   /* clipped */
        float *Weff = alloc_zeros(vocab * dim);
        spectral_bake(Weff, keep ? W : NULL, w.sp);
        weight_embedding_forward(out, ids, &w, N);
        for (int n = 0; n < N; n++) assert_close("spectral embedding row", out + n * dim, Weff + ids[n] * dim, dim, 1e-5);
        float dd[6] = {0};
        weight_embedding_backward(dd, probe, ids, &w, N);
        assert_true(dd[w.sp->rank - 1] == 0.0f);
        emb_case_t c = {&w, ids, N, out, probe};
        fd_check("embedding ddelta", w.sp->delta, dd, w.sp->rank, 6, emb_loss, &c, 1e-2f, 1e-3);
        weight_free(&w);
        free(Weff);
    }
    free(W), free(out), free(probe), free(dW);
}

static void test_conv_dispatch(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 54);
    conv2d_shape_t s = {.B = 2, .IC = 3, .H = 5, .W = 5, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}};
    const int rows = 4, cols = 27, nx = 2 * 3 * 25, ny = 2 * 4 * 25;
    float *W = alloc_normal(&r, rows * cols, 0.3f), *x = alloc_normal(&r, nx, 1), *dy = alloc_normal(&r, ny, 1);
    uint16_t Wh[108];
    for (int i = 0; i < 108; i++) Wh[i] = st_f32_to_bf16(W[i]);
    weight_t w = weight_dense(Wh, ST_BF16, rows, cols);
    assert_int_equal(weight_make_spectral(&w, 1), 0);
    fill_normal(&r, w.sp->delta, w.sp->rank, 0.2f);
    float Wr[108];
    for (int i = 0; i < 108; i++) Wr[i] = st_bf16_to_f32(Wh[i]);
    float *y = alloc_zeros(ny), *y_ref = alloc_zeros(ny), *dx = alloc_zeros(nx), *dx_ref = alloc_zeros(nx);
    float dd[4] = {0}, dd_ref[4] = {0};
    spectral_conv2d_forward(y_ref, x, Wr, w.sp, NULL, NULL, &s);
    weight_conv2d_forward(y, x, &w, NULL, &s);
    assert_close("weight_conv2d_forward (bf16 base)", y, y_ref, ny, 1e-5);
    spectral_conv2d_backward(dx_ref, dd_ref, NULL, dy, x, Wr, w.sp, NULL, &s);
    weight_conv2d_backward(dx, dd, NULL, dy, x, &w, &s);
    assert_close("weight_conv2d_backward dx", dx, dx_ref, nx, 1e-5);
    assert_close("weight_conv2d_backward ddelta", dd, dd_ref, 4, 1e-5);
    weight_free(&w);
    free(W), free(x), free(dy), free(y), free(y_ref), free(dx), free(dx_ref);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dense_half_precision),
        cmocka_unit_test(test_spectral_dispatch),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_conv_dispatch),
    };
    return RUN_TESTS(argc, argv, "weight", tests, NULL, teardown);
}
