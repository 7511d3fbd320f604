/* linear and conv2d: forward against direct double-precision loops, finite-difference
 * checks of every gradient, accumulation and NULL-gradient conventions. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/ops.h"

/* ---- linear ---- */
typedef struct {
    int N, IC, OC;
    float *inp, *w, *b, *out, *probe;
} linear_case_t;

static double linear_loss(void *ctx) {
    linear_case_t *c = ctx;
    linear_forward(c->out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
    return dot_loss(c->out, c->probe, (size_t)c->N * c->OC);
}

static void test_linear(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 1);
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        linear_case_t c = {.N = 5, .IC = 7, .OC = 4};
        c.inp = alloc_normal(&r, 35, 1), c.w = alloc_normal(&r, 28, 0.5f);
        c.b = with_bias ? alloc_normal(&r, 4, 1) : NULL;
        c.out = alloc_zeros(20), c.probe = alloc_normal(&r, 20, 1);
        linear_forward(c.out, c.inp, c.w, c.b, c.N, c.IC, c.OC);
        for (int n = 0; n < c.N; n++)
            for (int o = 0; o < c.OC; o++) {
                double s = c.b ? c.b[o] : 0;
                for (int i = 0; i < c.IC; i++) s += (double)c.inp[n * 7 + i] * c.w[o * 7 + i];
                assert_true(fabs(s - c.out[n * 4 + o]) < 1e-5);
            }
        float *dinp = alloc_zeros(35), *dw = alloc_zeros(28), *db = alloc_zeros(4);
        linear_backward(dinp, dw, c.b ? db : NULL, c.probe, c.inp, c.w, c.N, c.IC, c.OC);
        fd_check("linear dinp", c.inp, dinp, 35, 35, linear_loss, &c, 1e-2f, 1e-3);
        fd_check("linear dweight", c.w, dw, 28, 28, linear_loss, &c, 1e-2f, 1e-3);
        if (c.b) fd_check("linear dbias", c.b, db, 4, 4, linear_loss, &c, 1e-2f, 1e-3);
        /* accumulation: a second call doubles; NULL gradients are skipped */
        float *dinp2 = alloc_zeros(35);
        memcpy(dinp2, dinp, sizeof(float) * 35);
        linear_backward(dinp2, NULL, NULL, c.probe, c.inp, c.w, c.N, c.IC, c.OC);
        for (int i = 0; i < 35; i++) assert_true(fabsf(dinp2[i] - 2 * dinp[i]) <= 1e-5f * (1 + fabsf(dinp[i])));
        free(c.inp), free(c.w), free(c.b), free(c.out), free(c.probe);
        free(dinp), free(dw), free(db), free(dinp2);
    }
}

/* ---- conv2d ---- */
typedef struct {
    conv2d_shape_t s;
    float *inp, *w, *b, *out, *probe;
    size_t nout;
} conv_case_t;

static double conv_loss(void *ctx) {
    conv_case_t *c = ctx;
    conv2d_forward(c->out, c->inp, c->w, c->b, &c->s);
    return dot_loss(c->out, c->probe, c->nout);
}

static void conv_reference(double *out, const conv_case_t *c) {
    const conv2d_shape_t *s = &c->s;
    int OH = conv2d_out_h(s), OW = conv2d_out_w(s);
    for (int b = 0; b < s->B; b++)
        for (int o = 0; o < s->OC; o++)
            for (int oy = 0; oy < OH; oy++)
                for (int ox = 0; ox < OW; ox++) {
                    double acc = c->b ? c->b[o] : 0;
                    for (int i = 0; i < s->IC; i++)
                        for (int ky = 0; ky < s->KH; ky++)
                            for (int kx = 0; kx < s->KW; kx++) {
                                int iy = oy * s->stride + ky - s->pad[0], ix = ox * s->stride + kx - s->pad[2];
                                if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) continue;
                                acc += (double)c->inp[((b * s->IC + i) * s->H + iy) * s->W + ix] *
                                       c->w[((o * s->IC + i) * s->KH + ky) * s->KW + kx];
                            }
                    out[((b * s->OC + o) * OH + oy) * OW + ox] = acc;
                }
}

static void run_conv_case(conv2d_shape_t s, int with_bias, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    conv_case_t c = {.s = s};
    size_t nin = (size_t)s.B * s.IC * s.H * s.W, nw = (size_t)s.OC * s.IC * s.KH * s.KW;
    c.nout = (size_t)s.B * s.OC * conv2d_out_h(&s) * conv2d_out_w(&s);
    c.inp = alloc_normal(&r, nin, 1), c.w = alloc_normal(&r, nw, 0.3f);
    c.b = with_bias ? alloc_normal(&r, s.OC, 1) : NULL;
    c.out = alloc_zeros(c.nout), c.probe = alloc_normal(&r, c.nout, 1);
    double *ref = malloc(sizeof(double) * c.nout);
    conv2d_forward(c.out, c.inp, c.w, c.b, &c.s);
    conv_reference(ref, &c);
    double maxref = 0, maxdiff = 0;
    for (size_t i = 0; i < c.nout; i++) {
        maxref = fmax(maxref, fabs(ref[i]));
        maxdiff = fmax(maxdiff, fabs(ref[i] - c.out[i]));
    }
    assert_true(maxdiff <= 1e-5 * maxref);
    float *dinp = alloc_zeros(nin), *dw = alloc_zeros(nw), *db = alloc_zeros(s.OC);
    conv2d_backward(dinp, dw, c.b ? db : NULL, c.probe, c.inp, c.w, &c.s);
    fd_check("conv dinp", c.inp, dinp, nin, 60, conv_loss, &c, 1e-2f, 2e-3);
    fd_check("conv dweight", c.w, dw, nw, 60, conv_loss, &c, 1e-2f, 2e-3);
    if (c.b) fd_check("conv dbias", c.b, db, s.OC, s.OC, conv_loss, &c, 1e-2f, 2e-3);
    /* dinp only: must not need dweight, and must accumulate */
    float *dinp2 = alloc_zeros(nin);
    memcpy(dinp2, dinp, nin * sizeof(float));
    conv2d_backward(dinp2, NULL, NULL, c.probe, c.inp, c.w, &c.s);
    for (size_t i = 0; i < nin; i++) assert_true(fabsf(dinp2[i] - 2 * dinp[i]) <= 1e-5f * (1 + fabsf(dinp[i])));
    free(c.inp), free(c.w), free(c.b), free(c.out), free(c.probe), free(ref);
    free(dinp), free(dw), free(db), free(dinp2);
}

static void test_conv3x3_stride1(void **state) {
    (void)state;
    run_conv_case((conv2d_shape_t){.B = 2, .IC = 3, .H = 6, .W = 5, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}}, 1, 2);
}
static void test_conv3x3_stride2(void **state) {
    (void)state;
    run_conv_case((conv2d_shape_t){.B = 2, .IC = 3, .H = 7, .W = 6, .OC = 5, .KH = 3, .KW = 3, .stride = 2, .pad = {1, 1, 1, 1}}, 1, 3);
}
static void test_conv_vae_padding(void **state) {
    (void)state; /* the VAE downsampler: pad right/bottom only, stride 2 */
    run_conv_case((conv2d_shape_t){.B = 2, .IC = 3, .H = 6, .W = 6, .OC = 4, .KH = 3, .KW = 3, .stride = 2, .pad = {0, 1, 0, 1}}, 1, 4);
}
static void test_conv1x1(void **state) {
    (void)state;
    run_conv_case((conv2d_shape_t){.B = 2, .IC = 6, .H = 4, .W = 5, .OC = 3, .KH = 1, .KW = 1, .stride = 1, .pad = {0, 0, 0, 0}}, 0, 5);
    run_conv_case((conv2d_shape_t){.B = 1, .IC = 6, .H = 4, .W = 5, .OC = 3, .KH = 1, .KW = 1, .stride = 1, .pad = {0, 0, 0, 0}}, 1, 6);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_conv3x3_stride1),
        cmocka_unit_test(test_conv3x3_stride2),
        cmocka_unit_test(test_conv_vae_padding),
        cmocka_unit_test(test_conv1x1),
    };
    return RUN_TESTS(argc, argv, "linear_conv", tests, NULL, teardown);
}
