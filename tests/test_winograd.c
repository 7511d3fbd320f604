/* Winograd F(2x2, 3x3) conv (ops/conv2d_winograd.c) against the im2col path: forward and input
 * gradient on odd and even image sizes (partial edge tiles, 1x1 images, several tile blocks),
 * fp32 (rounding-level differences) and bf16 (within the bf16 bound of test_bf16), finite
 * differences of the input gradient, same bytes twice, and the spectral factored conv. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "weights/spectral.h"

/* fp32: Winograd's transforms add up to 16 terms per value before and after the GEMM; measured
 * 1e-7 to 4e-7 here (im2col against a double loop: 1e-7). */
#define FP32_TOL 2e-6
#define BF16_TOL 1e-2

/* B, IC, H, W, OC, padding: 1x1 and 1-wide images, odd sizes (partial edge tiles), channel
 * counts off 16, one (2 x 17 x 17 tiles of 128 channels) spanning several blocks across the
 * images, paddings other than 1 (the VAE's bands of rows pad 0 at their inner edges; the input
 * gradient then pads 2), and last one with a transformed kernel over 32 MB in fp32 (made and
 * used in row chunks) */
static const int pads[][4] = {{1, 1, 1, 1}, {0, 0, 1, 1}, {1, 0, 1, 1}, {0, 1, 0, 1}, {2, 0, 1, 2}};
static const int shapes[][6] = {{1, 3, 1, 1, 5, 0},     {2, 5, 3, 5, 7, 0},      {1, 17, 8, 8, 19, 0},
                                {2, 20, 7, 9, 33, 0},   {1, 24, 6, 1, 18, 0},    {2, 128, 33, 33, 40, 0},
                                {2, 40, 12, 10, 128, 0}, {2, 20, 7, 9, 33, 1},   {1, 17, 8, 8, 19, 2},
                                {1, 24, 9, 6, 18, 3},   {2, 40, 6, 10, 32, 4},   {1, 5, 3, 3, 7, 1},
                                {1, 1024, 5, 3, 600, 0}};
#define NSHAPES (int)(sizeof shapes / sizeof shapes[0])

static conv2d_shape_t shape_of(int i) {
    const int *p = pads[shapes[i][5]];
    return (conv2d_shape_t){.B = shapes[i][0], .IC = shapes[i][1], .H = shapes[i][2], .W = shapes[i][3],
                            .OC = shapes[i][4], .KH = 3, .KW = 3, .stride = 1, .pad = {p[0], p[1], p[2], p[3]}};
}

static int have_bf16(void) {
    if (!strcmp(sd_bf16_kernel(), "none")) {
        print_message("no avx512_bf16 on this CPU: bf16 Winograd tests skipped\n");
        return 0;
    }
    return 1;
}

typedef struct {
    conv2d_shape_t s;
    size_t nin, nout, nw;
    float *x, *w, *b, *dy, *dx0;
} wcase_t;

static void case_make(wcase_t *c, int i, trng_t *r) {
    c->s = shape_of(i);
    c->nin = (size_t)c->s.B * c->s.IC * c->s.H * c->s.W;
    c->nout = (size_t)c->s.B * c->s.OC * conv2d_out_h(&c->s) * conv2d_out_w(&c->s);
    c->nw = (size_t)c->s.OC * c->s.IC * 9;
    c->x = alloc_normal(r, c->nin, 1);
    c->w = alloc_normal(r, c->nw, 1.0f / sqrtf((float)c->s.IC * 9));
    c->b = (i % 2) ? alloc_normal(r, c->s.OC, 1) : NULL;
    c->dy = alloc_normal(r, c->nout, 1);
    c->dx0 = alloc_normal(r, c->nin, 1);   /* the input gradient accumulates onto this */
}

static void case_free(wcase_t *c) { free(c->x), free(c->w), free(c->b), free(c->dy), free(c->dx0); }

/* forward and input gradient through conv2d_forward / conv2d_backward with the given path */
static void run_paths(const wcase_t *c, conv_winograd_mode_t mode, float *y, float *dx) {
    conv2d_set_winograd(mode);
    conv2d_forward(y, c->x, c->w, c->b, &c->s);
    memcpy(dx, c->dx0, sizeof(float) * c->nin);
    conv2d_backward(dx, NULL, NULL, c->dy, c->x, c->w, &c->s);
    conv2d_set_winograd(CONV_WINOGRAD_AUTO);
}

static void compare_shapes(sd_compute_t dt, double tol) {
    trng_t r;
    trng_seed(&r, 19 + dt);
    for (int i = 0; i < NSHAPES; i++) {
        wcase_t c;
        case_make(&c, i, &r);
        float *y0 = alloc_zeros(c.nout), *y1 = alloc_zeros(c.nout);
        float *dx0 = alloc_zeros(c.nin), *dx1 = alloc_zeros(c.nin);
        sd_set_compute_dtype(SD_COMPUTE_FP32);
        run_paths(&c, CONV_WINOGRAD_OFF, y0, dx0);   /* the fp32 im2col path */
        sd_set_compute_dtype(dt);
        run_paths(&c, CONV_WINOGRAD_ALWAYS, y1, dx1);
        sd_set_compute_dtype(SD_COMPUTE_FP32);
        /* the gradient without the accumulated start value */
        for (size_t k = 0; k < c.nin; k++) dx0[k] -= c.dx0[k], dx1[k] -= c.dx0[k];
        char name[96];
        snprintf(name, sizeof name, "%s forward %dx%dx%dx%d -> %d pad %d%d%d%d", dt ? "bf16" : "fp32", c.s.B, c.s.IC,
                 c.s.H, c.s.W, c.s.OC, c.s.pad[0], c.s.pad[1], c.s.pad[2], c.s.pad[3]);
        print_message("%s: rel error %.2e\n", name, rel_error(y1, y0, c.nout));
        assert_close(name, y1, y0, c.nout, tol);
        snprintf(name, sizeof name, "%s input grad %dx%dx%dx%d -> %d pad %d%d%d%d", dt ? "bf16" : "fp32", c.s.B,
                 c.s.IC, c.s.H, c.s.W, c.s.OC, c.s.pad[0], c.s.pad[1], c.s.pad[2], c.s.pad[3]);
        print_message("%s: rel error %.2e\n", name, rel_error(dx1, dx0, c.nin));
        assert_close(name, dx1, dx0, c.nin, tol);
        free(y0), free(y1), free(dx0), free(dx1);
        case_free(&c);
    }
    scratch_free_all();
}

static void test_winograd_fp32(void **state) {
    (void)state;
    compare_shapes(SD_COMPUTE_FP32, FP32_TOL);
}

static void test_winograd_bf16(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    compare_shapes(SD_COMPUTE_BF16, BF16_TOL);
}

/* bf16-stored kernels (spectral factors): conv2d_winograd_* with weight_h against the fp32
 * im2col path on the fp32 weights */
static void test_winograd_bf16_weights(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 23);
    for (int i = 0; i < NSHAPES; i++) {
        wcase_t c;
        case_make(&c, i, &r);
        uint16_t *wh = malloc(sizeof(uint16_t) * c.nw);
        for (size_t k = 0; k < c.nw; k++) wh[k] = sd_f32_to_bf16(c.w[k]);
        float *y0 = alloc_zeros(c.nout), *y1 = alloc_normal(&r, c.nout, 1);   /* forward only writes */
        float *dx0 = alloc_zeros(c.nin), *dx1 = alloc_zeros(c.nin);
        run_paths(&c, CONV_WINOGRAD_OFF, y0, dx0);
        for (size_t k = 0; k < c.nin; k++) dx0[k] -= c.dx0[k];
        conv2d_winograd_forward(y1, c.x, NULL, wh, c.b, &c.s);
        conv2d_winograd_backward_input(dx1, c.dy, NULL, wh, &c.s);
        assert_close("bf16 weights forward", y1, y0, c.nout, BF16_TOL);
        assert_close("bf16 weights input grad", dx1, dx0, c.nin, BF16_TOL);
        free(wh), free(y0), free(y1), free(dx0), free(dx1);
        case_free(&c);
    }
    scratch_free_all();
}

/* ---- finite differences of the input gradient, Winograd both ways ---- */
typedef struct {
    wcase_t c;
    float *y;
} fd_ctx_t;

static double fd_loss(void *p) {
    fd_ctx_t *f = p;
    conv2d_forward(f->y, f->c.x, f->c.w, f->c.b, &f->c.s);
    return dot_loss(f->y, f->c.dy, f->c.nout);
}

static void test_winograd_fd(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 29);
    conv2d_set_winograd(CONV_WINOGRAD_ALWAYS);
    for (int i = 1; i < 10; i += 2) {   /* odd sizes and other paddings, with bias */
        if (i == 5) continue;   /* the big one: slow in finite differences */
        fd_ctx_t f;
        case_make(&f.c, i, &r);
        f.y = alloc_zeros(f.c.nout);
        float *dx = alloc_zeros(f.c.nin);
        conv2d_backward(dx, NULL, NULL, f.c.dy, f.c.x, f.c.w, &f.c.s);
        fd_check("winograd dinp", f.c.x, dx, f.c.nin, 40, fd_loss, &f, 1e-2f, 1e-3);
        free(f.y), free(dx);
        case_free(&f.c);
    }
    conv2d_set_winograd(CONV_WINOGRAD_AUTO);
    scratch_free_all();
}

/* Same inputs, same bytes: twice in fp32 and (where it runs) bf16 */
static void test_winograd_deterministic(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 31);
    wcase_t c;
    case_make(&c, 5, &r);   /* several blocks */
    for (int dt = 0; dt < 2; dt++) {
        if (dt && !have_bf16()) break;
        sd_set_compute_dtype(dt ? SD_COMPUTE_BF16 : SD_COMPUTE_FP32);
        float *y[2], *dx[2];
        for (int k = 0; k < 2; k++) {
            y[k] = alloc_zeros(c.nout), dx[k] = alloc_zeros(c.nin);
            run_paths(&c, CONV_WINOGRAD_ALWAYS, y[k], dx[k]);
        }
        assert_memory_equal(y[0], y[1], sizeof(float) * c.nout);
        assert_memory_equal(dx[0], dx[1], sizeof(float) * c.nin);
        for (int k = 0; k < 2; k++) free(y[k]), free(dx[k]);
    }
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    case_free(&c);
    scratch_free_all();
}

/* ---- the spectral factored conv (z = Vt (*) x, its ddelta and input gradient) ---- */
static void spectral_paths(const wcase_t *c, spectral_t *sp, conv_winograd_mode_t mode, float *y, float *dx,
                           float *dd) {
    conv2d_set_winograd(mode);
    spectral_conv2d_forward(y, c->x, c->w, sp, NULL, c->b, &c->s);
    memset(dx, 0, sizeof(float) * c->nin);
    memset(dd, 0, sizeof(float) * sp->rank);
    spectral_conv2d_backward(dx, dd, NULL, c->dy, c->x, c->w, sp, NULL, &c->s);
    conv2d_set_winograd(CONV_WINOGRAD_AUTO);
}

static void test_winograd_spectral(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 37);
    for (int i = 2; i < NSHAPES - 1; i++) {   /* not the SVD of the 600 x 9216 kernel: slow */
        wcase_t c;
        case_make(&c, i, &r);
        for (int bf = 0; bf < 2; bf++) {
            if (bf && !have_bf16()) break;
            spectral_t sp;
            assert_int_equal(spectral_init(&sp, c.w, c.s.OC, c.s.IC * 9), 0);
            for (int k = 0; k < sp.rank; k++) sp.delta[k] = 0.3f * trng_normal(&r) * sp.S[k];
            const int rank = sp.rank;
            float *y0 = alloc_zeros(c.nout), *y1 = alloc_zeros(c.nout);
            float *dx0 = alloc_zeros(c.nin), *dx1 = alloc_zeros(c.nin);
            float *dd0 = alloc_zeros(rank), *dd1 = alloc_zeros(rank);
            spectral_paths(&c, &sp, CONV_WINOGRAD_OFF, y0, dx0, dd0);   /* fp32 factors, im2col */
            if (bf) {   /* bf16-stored factors in bf16 compute, against that fp32 reference */
                sd_set_compute_dtype(SD_COMPUTE_BF16);
                spectral_store_bf16(&sp);
            }
            spectral_paths(&c, &sp, CONV_WINOGRAD_ALWAYS, y1, dx1, dd1);
            sd_set_compute_dtype(SD_COMPUTE_FP32);
            const double tol = bf ? BF16_TOL : FP32_TOL;
            char name[96];
            snprintf(name, sizeof name, "spectral %s %dx%dx%dx%d -> %d", bf ? "bf16" : "fp32", c.s.B, c.s.IC,
                     c.s.H, c.s.W, c.s.OC);
            print_message("%s: forward %.2e, input grad %.2e, ddelta %.2e\n", name, rel_error(y1, y0, c.nout),
                          rel_error(dx1, dx0, c.nin), rel_error(dd1, dd0, rank));
            assert_close("spectral forward", y1, y0, c.nout, tol);
            assert_close("spectral input grad", dx1, dx0, c.nin, tol);
            assert_close("spectral ddelta", dd1, dd0, rank, bf ? BF16_TOL : 1e-5);
            free(y0), free(y1), free(dx0), free(dx1), free(dd0), free(dd1);
            spectral_free(&sp);
        }
        case_free(&c);
    }
    scratch_free_all();
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_winograd_fp32),
        cmocka_unit_test(test_winograd_bf16),
        cmocka_unit_test(test_winograd_bf16_weights),
        cmocka_unit_test(test_winograd_fd),
        cmocka_unit_test(test_winograd_deterministic),
        cmocka_unit_test(test_winograd_spectral),
    };
    return RUN_TESTS(argc, argv, "winograd", tests, NULL, NULL);
}
