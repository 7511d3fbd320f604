/* Spectral-shift weights: SVD set-up, exactness at delta = 0, factored vs baked forms, and
 * finite-difference checks of d(delta) and d(input) for linear and conv layers, with some
 * singular values clipped by the ReLU; and the 1-D norm-gain shifts. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/runtime.h"
#include "base/scratch.h"
#include "weights/spectral.h"
#include "weights/weight.h"

static void test_svd_reconstructs(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 11);
    const int shapes[][2] = {{7, 5}, {5, 7}, {16, 16}, {1, 9}, {12, 108}};
    for (int k = 0; k < 5; k++) {
        int rows = shapes[k][0], cols = shapes[k][1];
        float *W = alloc_normal(&r, (size_t)rows * cols, 1), *Wb = alloc_zeros((size_t)rows * cols);
        spectral_t sp;
        assert_int_equal(spectral_init(&sp, W, rows, cols), 0);
        assert_int_equal(sp.rank, rows < cols ? rows : cols);
        for (int i = 1; i < sp.rank; i++) assert_true(sp.S[i] <= sp.S[i - 1]);
        /* factored-only bake = U diag(S) Vt ~ W */
        spectral_bake(Wb, NULL, &sp);
        assert_close("svd reconstruction", Wb, W, (size_t)rows * cols, 1e-5);
        /* with W and delta = 0, the bake is W bit for bit */
        spectral_bake(Wb, W, &sp);
        assert_memory_equal(Wb, W, sizeof(float) * rows * cols);
        /* U has orthonormal columns */
        for (int a = 0; a < sp.rank; a++)
            for (int b = 0; b < sp.rank; b++) {
                double d = 0;
                for (int i = 0; i < rows; i++) d += (double)sp.U[i * sp.rank + a] * sp.U[i * sp.rank + b];
                assert_true(fabs(d - (a == b)) < 1e-5);
            }
        /* and V^T orthonormal rows (wide matrices take LAPACK's transposed path) */
        for (int a = 0; a < sp.rank; a++)
            for (int b = 0; b < sp.rank; b++) {
                double d = 0;
                for (int j = 0; j < cols; j++) d += (double)sp.Vt[a * cols + j] * sp.Vt[b * cols + j];
                assert_true(fabs(d - (a == b)) < 1e-5);
            }
        spectral_free(&sp);
        free(W), free(Wb);
    }
}

/* weight_make_spectral_many (the trainer's SVD: matrices in parallel, one single-threaded SVD
 * each), tall, wide, square and fp16-stored: the same bytes on 1 and 2 threads, the singular values
 * of the plain spectral_init within float rounding, the factors reconstruct W and are orthonormal;
 * a NaN (refused by LAPACKE) fails with the plain message, the others still made spectral. */
static void test_svd_many(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 12);
    enum { N = 7 };
    const int rows[N] = {7, 5, 40, 300, 64, 1, 96}, cols[N] = {5, 7, 300, 40, 64, 9, 12};
    float *W[N];
    uint16_t *h = NULL;
    weight_t a[N], b[N], *pa[N], *pb[N];
    for (int k = 0; k < N; k++) {
        W[k] = alloc_normal(&r, (size_t)rows[k] * cols[k], 1);
        if (k == 4) {   /* an fp16 base: widened inside its own SVD */
            h = malloc(sizeof *h * (size_t)rows[k] * cols[k]);
            for (int i = 0; i < rows[k] * cols[k]; i++) h[i] = st_f32_to_f16(W[k][i]), W[k][i] = st_f16_to_f32(h[i]);
        }
        a[k] = k == 4 ? weight_dense(h, ST_F16, rows[k], cols[k]) : weight_dense(W[k], ST_F32, rows[k], cols[k]);
        b[k] = a[k];
        pa[k] = &a[k], pb[k] = &b[k];
    }
    const int threads = omp_get_max_threads();
    sd_set_threads(1);
    assert_int_equal(weight_make_spectral_many(pa, N, 1), SD_OK);
    sd_set_threads(2);
    assert_int_equal(weight_make_spectral_many(pb, N, 0), SD_OK);
    sd_set_threads(threads);
    for (int k = 0; k < N; k++) {
        const int m = rows[k], n = cols[k], rank = m < n ? m : n;
        assert_int_equal(a[k].kind, WEIGHT_SPECTRAL);
        assert_non_null(a[k].data);   /* keep_base */
        assert_null(b[k].data);
        const spectral_t *sa = a[k].sp, *sb = b[k].sp;
        assert_int_equal(sb->rank, rank);
        assert_memory_equal(sa->S, sb->S, sizeof(float) * rank);
        assert_memory_equal(sa->U, sb->U, sizeof(float) * m * rank);
        assert_memory_equal(sa->Vt, sb->Vt, sizeof(float) * rank * n);
        spectral_t plain;
        assert_int_equal(spectral_init(&plain, W[k], m, n), 0);
        for (int i = 0; i < rank; i++) {
            if (i) assert_true(sb->S[i] <= sb->S[i - 1]);
            assert_true(fabsf(sb->S[i] - plain.S[i]) <= 1e-5f * plain.S[0]);
        }
        spectral_free(&plain);
        float *Wb = alloc_zeros((size_t)m * n);
        spectral_bake(Wb, NULL, sb);
        assert_close("parallel svd reconstruction", Wb, W[k], (size_t)m * n, 1e-4);
        free(Wb);
        for (int x = 0; x < rank; x++)
            for (int y = 0; y < rank; y++) {
                double du = 0, dv = 0;
                for (int i = 0; i < m; i++) du += (double)sb->U[i * rank + x] * sb->U[i * rank + y];
                for (int j = 0; j < n; j++) dv += (double)sb->Vt[x * n + j] * sb->Vt[y * n + j];
                assert_true(fabs(du - (x == y)) < 1e-5 && fabs(dv - (x == y)) < 1e-5);
            }
        weight_free(&a[k]), weight_free(&b[k]);
    }
    W[3][123] = NAN;
    for (int k = 0; k < N; k++) b[k] = k == 4 ? weight_dense(h, ST_F16, rows[k], cols[k]) : weight_dense(W[k], ST_F32, rows[k], cols[k]);
    assert_int_equal(weight_make_spectral_many(pb, N, 1), SD_ERR_NUMERIC);
    assert_non_null(strstr(sd_last_error(), "SVD of a 300 x 40 matrix failed"));
    sd_clear_error();
    for (int k = 0; k < N; k++) {
        assert_int_equal(b[k].kind, k == 3 ? WEIGHT_DENSE : WEIGHT_SPECTRAL);
        weight_free(&b[k]);
        free(W[k]);
    }
    free(h);
}

/* delta with some shifted values pushed below zero (clipped), all away from the kink. */
static void set_delta(spectral_t *sp, trng_t *r) {
    for (int i = 0; i < sp->rank; i++) {
        float d = 0.4f * sp->S[i] * trng_normal(r);
        if (i % 3 == 2) d = -1.5f * sp->S[i] / sp->scale;   /* clipped by the ReLU */
        if (fabsf(sp->S[i] + sp->scale * d) < 0.05f) d += 0.2f;
        sp->delta[i] = d;
    }
}

typedef struct {
    spectral_t sp;
    const float *W;  /* NULL: factored-only weight */
    int N;
    conv2d_shape_t cs;
    int is_conv;
    float *inp, *bias, *out, *probe;
    size_t nout;
} spec_case_t;

static double spec_loss(void *ctx) {
    spec_case_t *c = ctx;
    if (c->is_conv)
        spectral_conv2d_forward(c->out, c->inp, c->W, &c->sp, NULL, c->bias, &c->cs);
    else
        spectral_linear_forward(c->out, c->inp, c->W, &c->sp, NULL, c->bias, c->N);
    return dot_loss(c->out, c->probe, c->nout);
}

static void run_spectral_case(spec_case_t *c, size_t nin, trng_t *r) {
    const int rows = c->sp.rows, cols = c->sp.cols;
    float *Weff = alloc_zeros((size_t)rows * cols), *out_baked = alloc_zeros(c->nout);
    /* delta = 0 with W: identical to the dense layer */
    if (c->W) {
        float *dense = alloc_zeros(c->nout);
        if (c->is_conv) {
            conv2d_forward(dense, c->inp, c->W, c->bias, &c->cs);
            spectral_conv2d_forward(c->out, c->inp, c->W, &c->sp, NULL, c->bias, &c->cs);
        } else {
            linear_forward(dense, c->inp, c->W, c->bias, c->N, cols, rows);
            spectral_linear_forward(c->out, c->inp, c->W, &c->sp, NULL, c->bias, c->N);
        }
        assert_close("delta=0 factored vs dense", c->out, dense, c->nout, 1e-6);
        free(dense);
    }
    set_delta(&c->sp, r);
    /* factored and baked agree */
    spectral_bake(Weff, c->W, &c->sp);
    spec_loss(c);
    if (c->is_conv)
        spectral_conv2d_forward(out_baked, c->inp, c->W, &c->sp, Weff, c->bias, &c->cs);
    else
        spectral_linear_forward(out_baked, c->inp, c->W, &c->sp, Weff, c->bias, c->N);
    assert_close("factored vs baked forward", c->out, out_baked, c->nout, 1e-5);
    /* gradients, both ways, against finite differences */
    float *ddelta = alloc_zeros(c->sp.rank), *dinp = alloc_zeros(nin), *dbias = alloc_zeros(rows);
    float *ddelta_b = alloc_zeros(c->sp.rank), *dinp_b = alloc_zeros(nin);
    if (c->is_conv) {
        spectral_conv2d_backward(dinp, ddelta, c->bias ? dbias : NULL, c->probe, c->inp, c->W, &c->sp, NULL, &c->cs);
        spectral_conv2d_backward(dinp_b, ddelta_b, NULL, c->probe, c->inp, c->W, &c->sp, Weff, &c->cs);
    } else {
        spectral_linear_backward(dinp, ddelta, c->bias ? dbias : NULL, c->probe, c->inp, c->W, &c->sp, NULL, c->N);
        spectral_linear_backward(dinp_b, ddelta_b, NULL, c->probe, c->inp, c->W, &c->sp, Weff, c->N);
    }
    assert_close("ddelta factored vs baked", ddelta_b, ddelta, c->sp.rank, 1e-6);
    assert_close("dinp factored vs baked", dinp_b, dinp, nin, 1e-5);
    for (int i = 0; i < c->sp.rank; i++)  /* clipped singular values get no gradient */
        if (c->sp.S[i] + c->sp.scale * c->sp.delta[i] <= 0) assert_true(ddelta[i] == 0.0f);
    fd_check("ddelta", c->sp.delta, ddelta, c->sp.rank, 64, spec_loss, c, 1e-2f, 2e-3);
    fd_check("dinp", c->inp, dinp, nin, 64, spec_loss, c, 1e-2f, 2e-3);
    if (c->bias) fd_check("dbias", c->bias, dbias, rows, 64, spec_loss, c, 1e-2f, 2e-3);
    free(Weff), free(out_baked), free(ddelta), free(dinp), free(dbias), free(ddelta_b), free(dinp_b);
}

static void linear_case(int rows, int cols, int N, int keep_W, float scale, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    spec_case_t c = {.N = N, .nout = (size_t)N * rows};
    float *W = alloc_normal(&r, (size_t)rows * cols, 0.5f);
    assert_int_equal(spectral_init(&c.sp, W, rows, cols), 0);
    c.sp.scale = scale;
    c.W = keep_W ? W : NULL;
    c.inp = alloc_normal(&r, (size_t)N * cols, 1);
    c.bias = alloc_normal(&r, rows, 1);
    c.out = alloc_zeros(c.nout);
    c.probe = alloc_normal(&r, c.nout, 1);
    run_spectral_case(&c, (size_t)N * cols, &r);
    spectral_free(&c.sp);
    free(W), free(c.inp), free(c.bias), free(c.out), free(c.probe);
}

static void conv_case(conv2d_shape_t cs, int keep_W, float scale, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    const int rows = cs.OC, cols = cs.IC * cs.KH * cs.KW;
    spec_case_t c = {.is_conv = 1, .cs = cs};
    c.nout = (size_t)cs.B * cs.OC * conv2d_out_h(&cs) * conv2d_out_w(&cs);
    size_t nin = (size_t)cs.B * cs.IC * cs.H * cs.W;
    float *W = alloc_normal(&r, (size_t)rows * cols, 0.3f);
    assert_int_equal(spectral_init(&c.sp, W, rows, cols), 0);
    c.sp.scale = scale;
    c.W = keep_W ? W : NULL;
    c.inp = alloc_normal(&r, nin, 1);
    c.bias = alloc_normal(&r, rows, 1);
    c.out = alloc_zeros(c.nout);
    c.probe = alloc_normal(&r, c.nout, 1);
    run_spectral_case(&c, nin, &r);
    spectral_free(&c.sp);
    free(W), free(c.inp), free(c.bias), free(c.out), free(c.probe);
}

static void test_spectral_linear(void **state) {
    (void)state;
    linear_case(6, 9, 5, 1, 1.0f, 21);   /* wide, exact form */
    linear_case(9, 6, 4, 0, 0.7f, 22);   /* tall, factored-only, scale != 1 */
    linear_case(8, 8, 3, 1, -0.5f, 23);  /* negative scale */
}

static void test_spectral_conv(void **state) {
    (void)state;
    conv_case((conv2d_shape_t){.B = 2, .IC = 3, .H = 5, .W = 6, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}}, 1, 1.0f, 31);
    conv_case((conv2d_shape_t){.B = 2, .IC = 2, .H = 6, .W = 6, .OC = 5, .KH = 3, .KW = 3, .stride = 2, .pad = {1, 1, 1, 1}}, 0, 0.8f, 32);
    conv_case((conv2d_shape_t){.B = 1, .IC = 3, .H = 6, .W = 6, .OC = 4, .KH = 3, .KW = 3, .stride = 2, .pad = {0, 1, 0, 1}}, 1, 1.0f, 33);
    conv_case((conv2d_shape_t){.B = 2, .IC = 6, .H = 3, .W = 4, .OC = 5, .KH = 1, .KW = 1, .stride = 1, .pad = {0, 0, 0, 0}}, 1, 1.0f, 34);
}

static void test_prefer_baked(void **state) {
    (void)state;
    spectral_t sp = {.rows = 320, .cols = 2880, .rank = 320};
    /* 64x64 pixels: rebuilding (295 M MACs) beats the factored extra (4 G MACs) */
    assert_true(spectral_prefer_baked(&sp, 4096, 1));
    /* a cross-attention key projection over 77 tokens: factored is cheaper */
    spectral_t kv = {.rows = 320, .cols = 768, .rank = 320};
    assert_false(spectral_prefer_baked(&kv, 77, 0));
}

typedef struct {
    const float *gamma;
    float *delta, *gain, *probe;
    float s;
    int C;
    normshift_mode_t mode;
} ns_case_t;

static double ns_loss(void *ctx) {
    ns_case_t *c = ctx;
    normshift_gain(c->gain, c->gamma, c->delta, c->s, c->C, c->mode);
    return dot_loss(c->gain, c->probe, c->C);
}

static void test_normshift(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 41);
    const int C = 12;
    float *gamma = alloc_normal(&r, C, 1), *gain = alloc_zeros(C), *probe = alloc_normal(&r, C, 1);
    for (int mode = 0; mode < 2; mode++) {
        int nd = mode == NORMSHIFT_ELEMENT ? C : 1;
        float *delta = alloc_zeros(nd), *ddelta = alloc_zeros(nd);
        ns_case_t c = {gamma, delta, gain, probe, 0.9f, C, (normshift_mode_t)mode};
        normshift_gain(gain, gamma, delta, c.s, C, c.mode);   /* delta = 0: gain = gamma */
        for (int i = 0; i < C; i++) assert_true(fabsf(gain[i] - gamma[i]) <= 1e-6f * (1 + fabsf(gamma[i])));
        fill_normal(&r, delta, nd, 0.5f);
        normshift_backward(ddelta, probe, gamma, delta, c.s, C, c.mode);
        fd_check(mode ? "normshift scalar" : "normshift element", delta, ddelta, nd, nd, ns_loss, &c, 1e-2f, 1e-3);
        free(delta), free(ddelta);
    }
    free(gamma), free(gain), free(probe);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_svd_reconstructs),
        cmocka_unit_test(test_svd_many),
        cmocka_unit_test(test_spectral_linear),
        cmocka_unit_test(test_spectral_conv),
        cmocka_unit_test(test_prefer_baked),
        cmocka_unit_test(test_normshift),
    };
    return RUN_TESTS(argc, argv, "spectral", tests, NULL, teardown);
}
