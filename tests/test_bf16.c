/* The bf16 compute mode (ops/gemm.h): the bf16 GEMM against a double-precision product of the
 * same rounded inputs, bf16-mode linear / conv / spectral outputs and gradients against fp32
 * mode (relative error bound BF16_TOL), same bytes twice and across thread counts,
 * fp32 mode identical to plain cblas_sgemm, flag and environment parsing. Tests that need the
 * kernels are skipped on CPUs without avx512_bf16. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/gemm.h"
#include "ops/ops.h"
#include "weights/spectral.h"

/* bf16 keeps 8 significant bits (relative rounding 2^-9 = 2e-3 per input); a dot product of
 * n terms with random signs has relative error ~2e-3 * sqrt(2) / ... of its magnitude, so
 * max |bf16 - fp32| / max |fp32| stays well under 1e-2 for the shapes here (measured 2e-3 to
 * 5e-3). This is the documented accuracy of --compute-dtype bf16 per operator. */
#define BF16_TOL 1e-2

static int have_bf16(void) {
    if (!strcmp(sd_bf16_kernel(), "none")) {
        print_message("no avx512_bf16 on this CPU: bf16 kernel tests skipped\n");
        return 0;
    }
    return 1;
}

/* double-precision product of the bf16-rounded inputs: what the kernel computes, up to the
 * order of its fp32 accumulation */
static void ref_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                     const float *B, int ldb, float beta, float *C, int ldc) {
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                const float a = sd_bf16_to_f32(sd_f32_to_bf16(ta ? A[(size_t)k * lda + m] : A[(size_t)m * lda + k]));
                const float b = sd_bf16_to_f32(sd_f32_to_bf16(tb ? B[(size_t)n * ldb + k] : B[(size_t)k * ldb + n]));
                s += (double)a * b;
            }
            C[(size_t)m * ldc + n] = (float)(alpha * s + beta * C[(size_t)m * ldc + n]);
        }
}

static void test_bf16_rounding(void **state) {
    (void)state;
    /* round to nearest even at the 16-bit boundary, subnormals to signed zero, NaN kept */
    assert_int_equal(sd_f32_to_bf16(1.0f), 0x3f80);
    union { uint32_t u; float f; } v;
    v.u = 0x3f808000u; assert_int_equal(sd_f32_to_bf16(v.f), 0x3f80);   /* tie, even stays */
    v.u = 0x3f818000u; assert_int_equal(sd_f32_to_bf16(v.f), 0x3f82);   /* tie, odd rounds up */
    v.u = 0x3f808001u; assert_int_equal(sd_f32_to_bf16(v.f), 0x3f81);
    v.u = 0x00400000u; assert_int_equal(sd_f32_to_bf16(v.f), 0x0000);   /* subnormal */
    v.u = 0x80400000u; assert_int_equal(sd_f32_to_bf16(v.f), 0x8000);
    v.u = 0x7fc00001u; assert_true((sd_f32_to_bf16(v.f) & 0x7f80) == 0x7f80 && (sd_f32_to_bf16(v.f) & 0x7f));
    assert_true(sd_bf16_to_f32(sd_f32_to_bf16(-2.5f)) == -2.5f);
}

/* All four transposes, shapes off every tile size (16 / 32), alpha and beta; the kernel's
 * packing paths (full tiles vectorised, edges scalar) must round alike. */
static void test_gemm_bf16_exactness(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 7);
    /* the last two span two panels of 1024 (streamed B columns, streamed A rows) */
    const int shapes[][3] = {{37, 45, 70}, {64, 64, 64}, {100, 33, 129}, {130, 200, 1100}, {16, 16, 1},
                             {40, 1100, 70}, {1100, 40, 70}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5, ldc = N + 2;  /* strided */
                float *A = alloc_normal(&r, (size_t)(ta ? K : M) * lda, 1);
                float *B = alloc_normal(&r, (size_t)(tb ? N : K) * ldb, 1);
                float *C = alloc_normal(&r, (size_t)M * ldc, 1), *R = malloc(sizeof(float) * M * ldc);
                memcpy(R, C, sizeof(float) * M * ldc);
                gemm_bf16(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 0.7f, A, lda, B,
                          ldb, 0.5f, C, ldc);
                ref_gemm(ta, tb, M, N, K, 0.7f, A, lda, B, ldb, 0.5f, R, ldc);
                char name[64];
                snprintf(name, sizeof name, "gemm_bf16 %dx%dx%d ta%d tb%d", M, N, K, ta, tb);
                assert_close(name, C, R, (size_t)M * ldc, 1e-5);  /* padding columns untouched too */
                /* beta 0: C is write-only (NaN there must not leak in) */
                for (size_t i = 0; i < (size_t)M * ldc; i++) C[i] = NAN;
                gemm_bf16(ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda, B,
                          ldb, 0.0f, C, ldc);
                for (int m = 0; m < M; m++)
                    for (int n = 0; n < N; n++) assert_false(isnan(C[(size_t)m * ldc + n]));
                free(A), free(B), free(C), free(R);
            }
    scratch_free_all();
}

/* Same bytes twice and with 1, 2 or 3 threads (work is split by rows or columns of C, never
 * along K): the streamed operand A (M > N) or B, K over more than one chunk of 1024, a third
 * thread's range not a multiple of the step. */
static void test_gemm_bf16_deterministic(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 8);
    const int shapes[][3] = {{300, 260, 1500}, {70, 1100, 2100}};
    const int nt = omp_get_max_threads();
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        float *A = alloc_normal(&r, (size_t)M * K, 1), *B = alloc_normal(&r, (size_t)K * N, 1);
        float *C1 = alloc_zeros((size_t)M * N), *C2 = alloc_zeros((size_t)M * N);
        omp_set_num_threads(2);
        gemm_bf16(CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C1, N);
        for (int threads = 1; threads <= 3; threads++) {
            omp_set_num_threads(threads);
            memset(C2, 0xff, sizeof(float) * M * N);
            gemm_bf16(CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C2, N);
            assert_memory_equal(C1, C2, sizeof(float) * M * N);
        }
        omp_set_num_threads(nt);
        free(A), free(B), free(C1), free(C2);
    }
    scratch_free_all();
}

/* The convolution product packed straight from the image gives the bytes of im2col + the bf16
 * GEMM: stride 1 rows of 16 (fast path, left / right borders), rows not a multiple of 16,
 * stride 2, the VAE's asymmetric padding, 1x1. */
static void test_gemm_bf16_im2col_matches(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 14);
    const conv2d_shape_t shapes[] = {
        {.B = 1, .IC = 24, .H = 16, .W = 32, .OC = 40, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}},
        {.B = 1, .IC = 9, .H = 12, .W = 20, .OC = 33, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}},
        {.B = 1, .IC = 16, .H = 17, .W = 34, .OC = 48, .KH = 3, .KW = 3, .stride = 2, .pad = {1, 1, 1, 1}},
        {.B = 1, .IC = 16, .H = 32, .W = 32, .OC = 32, .KH = 3, .KW = 3, .stride = 2, .pad = {0, 1, 0, 1}},
        {.B = 1, .IC = 40, .H = 16, .W = 16, .OC = 24, .KH = 1, .KW = 1, .stride = 1, .pad = {0, 0, 0, 0}},
        {.B = 1, .IC = 32, .H = 8, .W = 8, .OC = 20, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}},  /* 8 x 8: a tile spans 2 rows */
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        const conv2d_shape_t *s = &shapes[i];
        const int K = s->IC * s->KH * s->KW, P = conv2d_out_h(s) * conv2d_out_w(s), M = s->OC;
        float *img = alloc_normal(&r, (size_t)s->IC * s->H * s->W, 1), *A = alloc_normal(&r, (size_t)M * K, 1);
        float *col = alloc_zeros((size_t)K * P), *C1 = alloc_normal(&r, (size_t)M * P, 1);
        float *C2 = malloc(sizeof(float) * M * P);
        memcpy(C2, C1, sizeof(float) * M * P);
        im2col(col, img, s);
        gemm_bf16(CblasNoTrans, CblasNoTrans, M, P, K, 0.5f, A, K, col, P, 1.0f, C1, P);
        gemm_bf16_im2col(M, 0.5f, A, K, img, s, 1.0f, C2);
        assert_memory_equal(C1, C2, sizeof(float) * M * P);
        free(img), free(A), free(col), free(C1), free(C2);
    }
    scratch_free_all();
}

/* fp32 mode is the exact path: sd_gemm gives cblas_sgemm's bytes, even for big products. */
static void test_fp32_mode_is_sgemm(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 9);
    assert_int_equal(sd_set_compute_dtype(SD_COMPUTE_FP32), SD_COMPUTE_FP32);
    const int M = 200, N = 150, K = 300;
    float *A = alloc_normal(&r, (size_t)M * K, 1), *B = alloc_normal(&r, (size_t)N * K, 1);
    float *C1 = alloc_zeros((size_t)M * N), *C2 = alloc_zeros((size_t)M * N);
    sd_gemm(CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C1, N);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, K, B, K, 0.0f, C2, N);
    assert_memory_equal(C1, C2, sizeof(float) * M * N);
    free(A), free(B), free(C1), free(C2);
}

static void test_parse_and_env(void **state) {
    (void)state;
    sd_compute_t dt = SD_COMPUTE_FP32;
    assert_int_equal(sd_parse_compute_dtype("bf16", &dt), 0);
    assert_int_equal(dt, SD_COMPUTE_BF16);
    assert_int_equal(sd_parse_compute_dtype("fp32", &dt), 0);
    assert_int_equal(dt, SD_COMPUTE_FP32);
    assert_int_equal(sd_parse_compute_dtype("fp16", &dt), -1);
    assert_int_equal(sd_parse_compute_dtype(NULL, &dt), -1);
    assert_string_equal(sd_compute_dtype_name(SD_COMPUTE_BF16), "bf16");
    /* the switch reports what is in effect: bf16 only where a kernel exists */
    const sd_compute_t got = sd_set_compute_dtype(SD_COMPUTE_BF16);
    assert_int_equal(got, have_bf16() ? SD_COMPUTE_BF16 : SD_COMPUTE_FP32);
    assert_int_equal(sd_compute_dtype(), got);
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    assert_int_equal(sd_compute_dtype(), SD_COMPUTE_FP32);
}

/* ---- operators in bf16 mode against fp32 mode ---- */

/* Runs fn in fp32 then bf16 mode into two buffers of n floats each (zeroed first); checks
 * the bound, that bf16 really differs (the bf16 path ran), and that a second bf16 run gives
 * the same bytes. */
typedef void (*op_fn)(float *out, void *ctx);
static void compare_modes(const char *name, op_fn fn, void *ctx, size_t n) {
    float *f32 = alloc_zeros(n), *b16 = alloc_zeros(n), *again = alloc_zeros(n);
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    fn(f32, ctx);
    sd_set_compute_dtype(SD_COMPUTE_BF16);
    fn(b16, ctx);
    fn(again, ctx);
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    const double err = rel_error(b16, f32, n);
    print_message("%-34s bf16 vs fp32 relative error %.2e\n", name, err);
    assert_close(name, b16, f32, n, BF16_TOL);
    assert_true(err > 1e-6);   /* rounded inputs: if nothing differs the bf16 path did not run */
    assert_memory_equal(b16, again, sizeof(float) * n);
    free(f32), free(b16), free(again);
}

typedef struct {
    int N, IC, OC;
    float *inp, *w, *b, *dout;
} lin_t;
static void lin_fwd(float *out, void *ctx) {
    lin_t *c = ctx;
    linear_forward(out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
}
static void lin_dinp(float *dinp, void *ctx) {
    lin_t *c = ctx;
    linear_backward(dinp, NULL, NULL, c->dout, c->inp, c->w, c->N, c->IC, c->OC);
}
static void lin_dw(float *dw, void *ctx) {
    lin_t *c = ctx;
    linear_backward(NULL, dw, NULL, c->dout, c->inp, c->w, c->N, c->IC, c->OC);
}

static void test_linear_bf16(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 10);
    lin_t c = {.N = 96, .IC = 120, .OC = 72};
    c.inp = alloc_normal(&r, (size_t)c.N * c.IC, 1), c.w = alloc_normal(&r, (size_t)c.OC * c.IC, 0.1f);
    c.b = alloc_normal(&r, c.OC, 1), c.dout = alloc_normal(&r, (size_t)c.N * c.OC, 1);
    compare_modes("linear forward", lin_fwd, &c, (size_t)c.N * c.OC);
    compare_modes("linear dinp", lin_dinp, &c, (size_t)c.N * c.IC);
    compare_modes("linear dweight", lin_dw, &c, (size_t)c.OC * c.IC);
    free(c.inp), free(c.w), free(c.b), free(c.dout);
    scratch_free_all();
}

typedef struct {
    conv2d_shape_t s;
    float *inp, *w, *b, *dout;
    spectral_t sp;
} conv_t;
static void conv_fwd(float *out, void *ctx) {
    conv_t *c = ctx;
    conv2d_forward(out, c->inp, c->w, c->b, &c->s);
}
static void conv_dinp(float *d, void *ctx) {
    conv_t *c = ctx;
    conv2d_backward(d, NULL, NULL, c->dout, c->inp, c->w, &c->s);
}
static void conv_dw(float *d, void *ctx) {
    conv_t *c = ctx;
    conv2d_backward(NULL, d, NULL, c->dout, c->inp, c->w, &c->s);
}
static void sconv_fwd(float *out, void *ctx) {
    conv_t *c = ctx;
    spectral_conv2d_forward(out, c->inp, NULL, &c->sp, NULL, c->b, &c->s);
}
static void sconv_dinp(float *d, void *ctx) {
    conv_t *c = ctx;
    spectral_conv2d_backward(d, NULL, NULL, c->dout, c->inp, NULL, &c->sp, NULL, &c->s);
}
static void sconv_ddelta(float *d, void *ctx) {
    conv_t *c = ctx;
    spectral_conv2d_backward(NULL, d, NULL, c->dout, c->inp, NULL, &c->sp, NULL, &c->s);
}

static void test_conv_bf16(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 11);
    conv_t c = {.s = {.B = 2, .IC = 24, .H = 16, .W = 16, .OC = 40, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}}};
    const size_t nin = (size_t)2 * 24 * 16 * 16, nout = (size_t)2 * 40 * 16 * 16, nw = (size_t)40 * 24 * 9;
    c.inp = alloc_normal(&r, nin, 1), c.w = alloc_normal(&r, nw, 0.1f), c.b = alloc_normal(&r, 40, 1);
    c.dout = alloc_normal(&r, nout, 1);
    compare_modes("conv3x3 forward", conv_fwd, &c, nout);
    compare_modes("conv3x3 dinp", conv_dinp, &c, nin);
    compare_modes("conv3x3 dweight", conv_dw, &c, nw);
    /* the spectral (factored) conv of training: U, V^T in bf16 */
    assert_int_equal(spectral_init(&c.sp, c.w, 40, 24 * 9), 0);
    for (int i = 0; i < c.sp.rank; i++) c.sp.delta[i] = 0.05f * trng_normal(&r);
    compare_modes("spectral conv forward", sconv_fwd, &c, nout);
    compare_modes("spectral conv dinp", sconv_dinp, &c, nin);
    compare_modes("spectral conv ddelta", sconv_ddelta, &c, (size_t)c.sp.rank);
    spectral_free(&c.sp);
    free(c.inp), free(c.w), free(c.b), free(c.dout);

    /* bf16 mode computes a stride-1 input gradient as a convolution with the flipped,
     * transposed kernel and padding K-1-pad: a non-square kernel with uneven padding checks
     * that arithmetic (output 12x10 again), and accumulation into a non-zero dinp */
    conv_t u = {.s = {.B = 2, .IC = 16, .H = 12, .W = 10, .OC = 24, .KH = 3, .KW = 2, .stride = 1, .pad = {2, 0, 1, 0}}};
    assert_int_equal(conv2d_out_h(&u.s), 12);
    assert_int_equal(conv2d_out_w(&u.s), 10);
    const size_t uin = (size_t)2 * 16 * 12 * 10, uout = (size_t)2 * 24 * 12 * 10, uw = (size_t)24 * 16 * 6;
    u.inp = alloc_normal(&r, uin, 1), u.w = alloc_normal(&r, uw, 0.1f), u.b = alloc_normal(&r, 24, 1);
    u.dout = alloc_normal(&r, uout, 1);
    compare_modes("conv3x2 uneven pad dinp", conv_dinp, &u, uin);
    float *once = alloc_zeros(uin), *twice = alloc_zeros(uin);
    sd_set_compute_dtype(SD_COMPUTE_BF16);
    conv_dinp(once, &u);
    conv_dinp(twice, &u);
    conv_dinp(twice, &u);
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    for (size_t i = 0; i < uin; i++) once[i] *= 2.0f;
    assert_close("conv3x2 dinp accumulates", twice, once, uin, 1e-6);
    free(once), free(twice);
    free(u.inp), free(u.w), free(u.b), free(u.dout);
    scratch_free_all();
}

typedef struct {
    int N;
    float *inp, *dout, *b;
    spectral_t sp;
} slin_t;
static void slin_fwd(float *out, void *ctx) {
    slin_t *c = ctx;
    spectral_linear_forward(out, c->inp, NULL, &c->sp, NULL, c->b, c->N);
}
static void slin_dinp(float *d, void *ctx) {
    slin_t *c = ctx;
    spectral_linear_backward(d, NULL, NULL, c->dout, c->inp, NULL, &c->sp, NULL, c->N);
}
static void slin_ddelta(float *d, void *ctx) {
    slin_t *c = ctx;
    spectral_linear_backward(NULL, d, NULL, c->dout, c->inp, NULL, &c->sp, NULL, c->N);
}

static void test_spectral_linear_bf16(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 12);
    const int N = 128, rows = 96, cols = 160;
    slin_t c = {.N = N};
    float *W = alloc_normal(&r, (size_t)rows * cols, 0.1f);
    assert_int_equal(spectral_init(&c.sp, W, rows, cols), 0);
    for (int i = 0; i < c.sp.rank; i++) c.sp.delta[i] = 0.05f * trng_normal(&r);
    c.inp = alloc_normal(&r, (size_t)N * cols, 1), c.dout = alloc_normal(&r, (size_t)N * rows, 1);
    c.b = alloc_normal(&r, rows, 1);
    compare_modes("spectral linear forward", slin_fwd, &c, (size_t)N * rows);
    compare_modes("spectral linear dinp", slin_dinp, &c, (size_t)N * cols);
    compare_modes("spectral linear ddelta", slin_ddelta, &c, (size_t)c.sp.rank);
    spectral_free(&c.sp);
    free(W), free(c.inp), free(c.dout), free(c.b);
    scratch_free_all();
}

/* A copy of sp with its factors stored in bf16 (spectral_store_bf16), same S and delta. */
static void bf16_copy(spectral_t *d, const spectral_t *sp) {
    spectral_init_factors(d, sp->U, sp->S, sp->Vt, sp->rows, sp->cols, sp->rank);
    memcpy(d->delta, sp->delta, sizeof(float) * sp->rank);
    d->scale = sp->scale;
    spectral_store_bf16(d);
}

/* fn run three ways on the spectral weight *slot: fp32 mode with fp32 factors, bf16 mode with
 * fp32 factors (rounded by the GEMM on every call, as before bf16 storage), bf16 mode with the
 * factors stored in bf16 (on 1 and 2 threads). The stored form must be within BF16_TOL of fp32
 * and give the same bits as the per-call rounding: each product here is above sd_gemm's bf16
 * threshold, so both round the same factors to the same bf16 values and run the same kernel. */
static void compare_stored(const char *name, void (*fn)(float *, void *), void *ctx, spectral_t *slot, size_t n) {
    float *f32 = alloc_zeros(n), *percall = alloc_zeros(n), *stored = alloc_zeros(n), *one = alloc_zeros(n);
    fn(f32, ctx);
    sd_set_compute_dtype(SD_COMPUTE_BF16);
    fn(percall, ctx);
    spectral_t fp = *slot, h;
    bf16_copy(&h, &fp);
    *slot = h;
    fn(stored, ctx);
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    fn(one, ctx);
    omp_set_num_threads(threads);
    *slot = fp;
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    const double err = rel_error(stored, f32, n);
    print_message("%-34s bf16-stored vs fp32 relative error %.2e, vs per-call bf16: %s\n", name, err,
                  memcmp(stored, percall, sizeof(float) * n) ? "differs" : "identical bits");
    assert_close(name, stored, f32, n, BF16_TOL);
    assert_true(err > 1e-6);
    assert_memory_equal(stored, percall, sizeof(float) * n);
    assert_memory_equal(stored, one, sizeof(float) * n);
    spectral_free(&h);
    free(f32), free(percall), free(stored), free(one);
}

static void test_spectral_stored_bf16(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 14);
    const int N = 128, rows = 96, cols = 160;
    slin_t c = {.N = N};
    float *W = alloc_normal(&r, (size_t)rows * cols, 0.1f);
    assert_int_equal(spectral_init(&c.sp, W, rows, cols), 0);
    for (int i = 0; i < c.sp.rank; i++) c.sp.delta[i] = 0.05f * trng_normal(&r);
    c.inp = alloc_normal(&r, (size_t)N * cols, 1), c.dout = alloc_normal(&r, (size_t)N * rows, 1);
    c.b = alloc_normal(&r, rows, 1);
    compare_stored("stored spectral linear forward", slin_fwd, &c, &c.sp, (size_t)N * rows);
    compare_stored("stored spectral linear dinp", slin_dinp, &c, &c.sp, (size_t)N * cols);
    compare_stored("stored spectral linear ddelta", slin_ddelta, &c, &c.sp, (size_t)c.sp.rank);

    /* memory: half the bytes, the fp32 arrays gone, the values those of the fp32 factors rounded */
    spectral_t h;
    bf16_copy(&h, &c.sp);
    const size_t nf = (size_t)rows * c.sp.rank + (size_t)c.sp.rank * cols;
    assert_int_equal(spectral_factor_bytes(&c.sp), nf * 4);
    assert_int_equal(spectral_factor_bytes(&h), nf * 2);
    assert_null(h.U);
    assert_null(h.Vt);
    float *u = alloc_zeros((size_t)rows * c.sp.rank), *vt = alloc_zeros((size_t)c.sp.rank * cols);
    spectral_factors_f32(&h, u, vt);
    for (size_t i = 0; i < (size_t)rows * c.sp.rank; i++) assert_true(u[i] == sd_bf16_to_f32(sd_f32_to_bf16(c.sp.U[i])));
    for (size_t i = 0; i < (size_t)c.sp.rank * cols; i++) assert_true(vt[i] == sd_bf16_to_f32(sd_f32_to_bf16(c.sp.Vt[i])));
    /* baking the stored form is the fp32 bake of the rounded values, bit for bit */
    spectral_t rounded;
    spectral_init_factors(&rounded, u, c.sp.S, vt, rows, cols, c.sp.rank);
    memcpy(rounded.delta, c.sp.delta, sizeof(float) * c.sp.rank);
    float *b1 = alloc_zeros((size_t)rows * cols), *b2 = alloc_zeros((size_t)rows * cols), *b32 = alloc_zeros((size_t)rows * cols);
    spectral_bake(b1, W, &h);
    spectral_bake(b2, W, &rounded);
    spectral_bake(b32, W, &c.sp);
    assert_memory_equal(b1, b2, sizeof(float) * rows * cols);
    print_message("%-34s bf16-stored vs fp32 relative error %.2e\n", "stored spectral bake", rel_error(b1, b32, (size_t)rows * cols));
    assert_close("stored spectral bake", b1, b32, (size_t)rows * cols, BF16_TOL);
    spectral_free(&h), spectral_free(&rounded), spectral_free(&c.sp);
    free(u), free(vt), free(b1), free(b2), free(b32);
    free(W), free(c.inp), free(c.dout), free(c.b);

    /* the conv, 3x3 (columns packed from the image) and 1x1 */
    for (int k = 0; k < 2; k++) {
        conv_t v = {.s = k == 0 ? (conv2d_shape_t){.B = 2, .IC = 24, .H = 16, .W = 16, .OC = 40, .KH = 3, .KW = 3,
                                                   .stride = 1, .pad = {1, 1, 1, 1}}
                                : (conv2d_shape_t){.B = 2, .IC = 64, .H = 16, .W = 16, .OC = 48, .KH = 1, .KW = 1,
                                                   .stride = 1}};
        const int K = v.s.IC * v.s.KH * v.s.KW;
        const size_t nin = (size_t)2 * v.s.IC * 256, nout = (size_t)2 * v.s.OC * 256;
        v.inp = alloc_normal(&r, nin, 1), v.w = alloc_normal(&r, (size_t)v.s.OC * K, 0.1f);
        v.b = alloc_normal(&r, v.s.OC, 1), v.dout = alloc_normal(&r, nout, 1);
        assert_int_equal(spectral_init(&v.sp, v.w, v.s.OC, K), 0);
        for (int i = 0; i < v.sp.rank; i++) v.sp.delta[i] = 0.05f * trng_normal(&r);
        compare_stored(k ? "stored spectral conv1x1 forward" : "stored spectral conv3x3 forward", sconv_fwd, &v, &v.sp, nout);
        compare_stored(k ? "stored spectral conv1x1 dinp" : "stored spectral conv3x3 dinp", sconv_dinp, &v, &v.sp, nin);
        compare_stored(k ? "stored spectral conv1x1 ddelta" : "stored spectral conv3x3 ddelta", sconv_ddelta, &v, &v.sp,
                       (size_t)v.sp.rank);
        spectral_free(&v.sp);
        free(v.inp), free(v.w), free(v.b), free(v.dout);
    }
    scratch_free_all();
}

/* gemm_bf16h on bf16 operands gives gemm_bf16's bits on their fp32 values, for every operand
 * orientation, full and partial tiles (odd sizes), and any thread count. */
static void test_gemm_bf16h_matches(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    trng_t r;
    trng_seed(&r, 15);
    const int M = 45, N = 70, K = 83;
    float *A = alloc_normal(&r, (size_t)M * K, 1), *B = alloc_normal(&r, (size_t)K * N, 1);
    uint16_t *Ah = malloc(sizeof(uint16_t) * M * K), *Bh = malloc(sizeof(uint16_t) * K * N);
    for (int i = 0; i < M * K; i++) Ah[i] = sd_f32_to_bf16(A[i]), A[i] = sd_bf16_to_f32(Ah[i]);
    for (int i = 0; i < K * N; i++) Bh[i] = sd_f32_to_bf16(B[i]), B[i] = sd_bf16_to_f32(Bh[i]);
    float *want = alloc_zeros((size_t)M * N), *got = alloc_zeros((size_t)M * N);
    const int threads = omp_get_max_threads();
    for (int t = 0; t < 8; t++) {
        const int ta = t & 1, tb = (t >> 1) & 1, which = t >> 2;   /* which: 0 A bf16, 1 B bf16 (then both) */
        const CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
        const int lda = ta ? M : K, ldb = tb ? K : N;
        for (int i = 0; i < M * N; i++) want[i] = got[i] = 0.5f * (float)(i % 7);
        gemm_bf16(TA, TB, M, N, K, 0.75f, A, lda, B, ldb, 0.5f, want, N);
        omp_set_num_threads(1 + (t & 1));
        gemm_bf16h(TA, TB, M, N, K, 0.75f, which ? A : NULL, which ? NULL : Ah, lda, NULL, Bh, ldb, 0.5f, got, N);
        omp_set_num_threads(threads);
        assert_memory_equal(want, got, sizeof(float) * M * N);
        if (!which) {
            for (int i = 0; i < M * N; i++) got[i] = 0.5f * (float)(i % 7);
            gemm_bf16h(TA, TB, M, N, K, 0.75f, NULL, Ah, lda, B, NULL, ldb, 0.5f, got, N);
            assert_memory_equal(want, got, sizeof(float) * M * N);
        }
    }
    free(A), free(B), free(Ah), free(Bh), free(want), free(got);
    scratch_free_all();
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bf16_rounding),
        cmocka_unit_test(test_gemm_bf16_exactness),
        cmocka_unit_test(test_gemm_bf16_deterministic),
        cmocka_unit_test(test_gemm_bf16_im2col_matches),
        cmocka_unit_test(test_fp32_mode_is_sgemm),
        cmocka_unit_test(test_parse_and_env),
        cmocka_unit_test(test_linear_bf16),
        cmocka_unit_test(test_conv_bf16),
        cmocka_unit_test(test_spectral_linear_bf16),
        cmocka_unit_test(test_spectral_stored_bf16),
        cmocka_unit_test(test_gemm_bf16h_matches),
    };
    return RUN_TESTS(argc, argv, "bf16", tests, NULL, NULL);
}
