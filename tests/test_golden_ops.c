/* Golden tests: every operator of ops/ops.h and the spectral linear / conv / norm shift of
 * weights/spectral.h against float64 PyTorch autograd (tests/fixtures/ops_golden.safetensors,
 * written by tests/reference/gen_ops_golden.py). Forward outputs and ALL gradients must agree
 * to a relative error (max|a-b| / max|b|) of 1e-4. Shapes live here; the fixture's element
 * counts are checked against them. SVDIFF_GOLDEN_VERBOSE=1 prints every error measured. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "base/error.h"
#include "base/scratch.h"
#include "ops/ops.h"
#include "weights/spectral.h"

#define TOL 1e-4
#define FIXTURE "ops_golden.safetensors"

/* ---- per-test fixture access: every buffer is freed by gdone ---- */

typedef struct {
    st_file_t f;
    const char *name;   /* the case: tensor keys are "<name>.<tensor>" */
    void *ptrs[64];
    int n;
} gcase_t;

static void *gkeep(gcase_t *g, void *p) {
    SD_CHECK(g->n < 64, "too many buffers in case %s", g->name);
    g->ptrs[g->n++] = p;
    return p;
}

static void gbegin(gcase_t *g, const char *name) {
    memset(g, 0, sizeof *g);
    g->name = name;
    golden_open(&g->f, FIXTURE);
}

static void gdone(gcase_t *g) {
    for (int i = 0; i < g->n; i++) free(g->ptrs[i]);
    g->n = 0;
    st_close(&g->f);
    scratch_free_all();
}

/* The stored tensor "<case>.<t>", which must hold exactly n values. */
static float *gget(gcase_t *g, const char *t, size_t n) {
    char key[160];
    snprintf(key, sizeof key, "%s.%s", g->name, t);
    return gkeep(g, golden_get(&g->f, key, (int64_t)n));
}

static float *gzeros(gcase_t *g, size_t n) { return gkeep(g, alloc_zeros(n)); }

/* Compares got[n] with the stored "<case>.<t>"; `how` tags the code path in messages. */
static void gcheck(gcase_t *g, const char *t, const char *how, const float *got, size_t n) {
    const float *want = gget(g, t, n);
    char label[200];
    snprintf(label, sizeof label, "%s.%s%s%s%s", g->name, t, how ? " [" : "", how ? how : "",
             how ? "]" : "");
    const char *v = getenv("SVDIFF_GOLDEN_VERBOSE");
    if (v && *v && *v != '0') printf("  %-44s rel err %.3g\n", label, rel_error(got, want, n));
    assert_close(label, got, want, n, TOL);
}

/* ---- linear ---- */

typedef struct { const char *name; int N, IC, OC, has_bias; } linear_case_t;

static void run_linear(const linear_case_t *c) {
    gcase_t g;
    gbegin(&g, c->name);
    const size_t ni = (size_t)c->N * c->IC, nw = (size_t)c->OC * c->IC, no = (size_t)c->N * c->OC;
    float *inp = gget(&g, "inp", ni), *w = gget(&g, "weight", nw);
    float *bias = c->has_bias ? gget(&g, "bias", c->OC) : NULL;
    float *out = gzeros(&g, no);
    linear_forward(out, inp, w, bias, c->N, c->IC, c->OC);
    gcheck(&g, "out", NULL, out, no);
    float *dinp = gzeros(&g, ni), *dw = gzeros(&g, nw), *db = c->has_bias ? gzeros(&g, c->OC) : NULL;
    linear_backward(dinp, dw, db, gget(&g, "dout", no), inp, w, c->N, c->IC, c->OC);
    gcheck(&g, "dinp", NULL, dinp, ni);
    gcheck(&g, "dweight", NULL, dw, nw);
    if (c->has_bias) gcheck(&g, "dbias", NULL, db, c->OC);
    gdone(&g);
}

static const linear_case_t k_linear_bias = {"linear_bias", 6, 10, 7, 1};
static const linear_case_t k_linear_nobias = {"linear_nobias", 6, 10, 7, 0};

/* ---- conv2d ---- */

typedef struct { const char *name; conv2d_shape_t s; } conv_case_t;

static void run_conv2d(const conv_case_t *c) {
    const conv2d_shape_t *s = &c->s;
    gcase_t g;
    gbegin(&g, c->name);
    const int OH = conv2d_out_h(s), OW = conv2d_out_w(s);
    const size_t ni = (size_t)s->B * s->IC * s->H * s->W, nw = (size_t)s->OC * s->IC * s->KH * s->KW;
    const size_t no = (size_t)s->B * s->OC * OH * OW;
    float *inp = gget(&g, "inp", ni), *w = gget(&g, "weight", nw), *bias = gget(&g, "bias", s->OC);
    float *out = gzeros(&g, no);
    conv2d_forward(out, inp, w, bias, s);
    gcheck(&g, "out", NULL, out, no);
    float *dinp = gzeros(&g, ni), *dw = gzeros(&g, nw), *db = gzeros(&g, s->OC);
    conv2d_backward(dinp, dw, db, gget(&g, "dout", no), inp, w, s);
    gcheck(&g, "dinp", NULL, dinp, ni);
    gcheck(&g, "dweight", NULL, dw, nw);
    gcheck(&g, "dbias", NULL, db, s->OC);
    gdone(&g);
}

/* {B, IC, H, W}, {OC, KH, KW}, stride, {top, bottom, left, right} */
static const conv_case_t k_conv3x3_s1 = {"conv3x3_s1", {2, 3, 6, 5, 4, 3, 3, 1, {1, 1, 1, 1}}};
static const conv_case_t k_conv3x3_s2 = {"conv3x3_s2", {2, 3, 7, 6, 4, 3, 3, 2, {1, 1, 1, 1}}};
static const conv_case_t k_conv1x1 = {"conv1x1", {2, 5, 4, 3, 3, 1, 1, 1, {0, 0, 0, 0}}};
static const conv_case_t k_conv3x3_s2_vae = {"conv3x3_s2_vae", {2, 3, 8, 6, 4, 3, 3, 2, {0, 1, 0, 1}}};

/* ---- normalisation ---- */

static void test_groupnorm(void **state) {
    (void)state;
    const int B = 2, C = 8, S = 12, G = 4;
    const size_t n = (size_t)B * C * S;
    gcase_t g;
    gbegin(&g, "groupnorm");
    float *inp = gget(&g, "inp", n), *gamma = gget(&g, "gamma", C), *beta = gget(&g, "beta", C);
    float *out = gzeros(&g, n), *mean = gzeros(&g, (size_t)B * G), *rstd = gzeros(&g, (size_t)B * G);
    groupnorm_forward(out, mean, rstd, inp, gamma, beta, B, C, S, G, 1e-5f);
    gcheck(&g, "out", NULL, out, n);
    gcheck(&g, "mean", NULL, mean, (size_t)B * G);
    gcheck(&g, "rstd", NULL, rstd, (size_t)B * G);
    float *dinp = gzeros(&g, n), *dgamma = gzeros(&g, C), *dbeta = gzeros(&g, C);
    groupnorm_backward(dinp, dgamma, dbeta, gget(&g, "dout", n), inp, gamma, mean, rstd, B, C, S, G);
    gcheck(&g, "dinp", NULL, dinp, n);
    gcheck(&g, "dgamma", NULL, dgamma, C);
    gcheck(&g, "dbeta", NULL, dbeta, C);
    gdone(&g);
}

static void test_layernorm(void **state) {
    (void)state;
    const int N = 5, C = 12;
    const size_t n = (size_t)N * C;
    gcase_t g;
    gbegin(&g, "layernorm");
    float *inp = gget(&g, "inp", n), *gamma = gget(&g, "gamma", C), *beta = gget(&g, "beta", C);
    float *out = gzeros(&g, n), *mean = gzeros(&g, N), *rstd = gzeros(&g, N);
    layernorm_forward(out, mean, rstd, inp, gamma, beta, N, C, 1e-5f);
    gcheck(&g, "out", NULL, out, n);
    gcheck(&g, "mean", NULL, mean, N);
    gcheck(&g, "rstd", NULL, rstd, N);
    float *dinp = gzeros(&g, n), *dgamma = gzeros(&g, C), *dbeta = gzeros(&g, C);
    layernorm_backward(dinp, dgamma, dbeta, gget(&g, "dout", n), inp, gamma, mean, rstd, N, C);
    gcheck(&g, "dinp", NULL, dinp, n);
    gcheck(&g, "dgamma", NULL, dgamma, C);
    gcheck(&g, "dbeta", NULL, dbeta, C);
    gdone(&g);
}

/* ---- activations ---- */

typedef struct {
    const char *name;
    void (*fwd)(float *, const float *, size_t);
    void (*bwd)(float *, const float *, const float *, size_t);
} act_case_t;

static void run_activation(const act_case_t *c) {
    const size_t n = 64;
    gcase_t g;
    gbegin(&g, c->name);
    float *inp = gget(&g, "inp", n), *out = gzeros(&g, n);
    c->fwd(out, inp, n);
    gcheck(&g, "out", NULL, out, n);
    float *inplace = gzeros(&g, n);   /* forward may run in place */
    memcpy(inplace, inp, n * sizeof(float));
    c->fwd(inplace, inplace, n);
    gcheck(&g, "out", "in place", inplace, n);
    float *dinp = gzeros(&g, n);
    c->bwd(dinp, gget(&g, "dout", n), inp, n);
    gcheck(&g, "dinp", NULL, dinp, n);
    gdone(&g);
}

static const act_case_t k_silu = {"silu", silu_forward, silu_backward};
static const act_case_t k_gelu = {"gelu", gelu_forward, gelu_backward};
static const act_case_t k_quick_gelu = {"quick_gelu", quick_gelu_forward, quick_gelu_backward};

static void test_geglu(void **state) {
    (void)state;
    const int N = 4, C = 6;
    gcase_t g;
    gbegin(&g, "geglu");
    float *inp = gget(&g, "inp", (size_t)N * 2 * C), *out = gzeros(&g, (size_t)N * C);
    geglu_forward(out, inp, N, C);
    gcheck(&g, "out", NULL, out, (size_t)N * C);
    float *dinp = gzeros(&g, (size_t)N * 2 * C);
    geglu_backward(dinp, gget(&g, "dout", (size_t)N * C), inp, N, C);
    gcheck(&g, "dinp", NULL, dinp, (size_t)N * 2 * C);
    gdone(&g);
}

/* ---- attention ---- */

typedef struct { const char *name; int B, Tq, Tk, H, D, causal; } attn_case_t;

static void run_attention(const attn_case_t *c) {
    gcase_t g;
    gbegin(&g, c->name);
    const int C = c->H * c->D;
    const size_t nq = (size_t)c->B * c->Tq * C, nk = (size_t)c->B * c->Tk * C;
    const size_t nl = (size_t)c->B * c->H * c->Tq;
    const float scale = (float)(1.0 / sqrt((double)c->D));
    float *q = gget(&g, "q", nq), *k = gget(&g, "k", nk), *v = gget(&g, "v", nk);
    float *out = gzeros(&g, nq), *lse = gzeros(&g, nl);
    attention_forward(out, lse, q, k, v, c->B, c->Tq, c->Tk, c->H, c->D, scale, c->causal);
    gcheck(&g, "out", NULL, out, nq);
    gcheck(&g, "lse", NULL, lse, nl);
    float *dq = gzeros(&g, nq), *dk = gzeros(&g, nk), *dv = gzeros(&g, nk);
    attention_backward(dq, dk, dv, gget(&g, "dout", nq), q, k, v, out, lse, c->B, c->Tq, c->Tk,
                       c->H, c->D, scale, c->causal);
    gcheck(&g, "dq", NULL, dq, nq);
    gcheck(&g, "dk", NULL, dk, nk);
    gcheck(&g, "dv", NULL, dv, nk);
    gdone(&g);
}

static const attn_case_t k_attn_self = {"attn_self", 2, 40, 40, 2, 8, 0};
static const attn_case_t k_attn_cross = {"attn_cross", 2, 9, 7, 2, 8, 0};
static const attn_case_t k_attn_causal = {"attn_causal", 2, 33, 33, 2, 4, 1};

/* ---- resampling, layout ---- */

static void test_upsample(void **state) {
    (void)state;
    const int B = 2, C = 3, H = 3, W = 4;
    const size_t ni = (size_t)B * C * H * W, no = 4 * ni;
    gcase_t g;
    gbegin(&g, "upsample");
    float *inp = gget(&g, "inp", ni), *out = gzeros(&g, no);
    upsample_nearest2x_forward(out, inp, B, C, H, W);
    gcheck(&g, "out", NULL, out, no);
    float *dinp = gzeros(&g, ni);
    upsample_nearest2x_backward(dinp, gget(&g, "dout", no), B, C, H, W);
    gcheck(&g, "dinp", NULL, dinp, ni);
    gdone(&g);
}

static void test_concat(void **state) {
    (void)state;
    const int B = 2, Ca = 3, Cb = 2, S = 5;
    const size_t na = (size_t)B * Ca * S, nb = (size_t)B * Cb * S, no = na + nb;
    gcase_t g;
    gbegin(&g, "concat");
    float *a = gget(&g, "a", na), *b = gget(&g, "b", nb), *out = gzeros(&g, no);
    concat_channels_forward(out, a, b, B, Ca, Cb, S);
    gcheck(&g, "out", NULL, out, no);
    float *da = gzeros(&g, na), *db = gzeros(&g, nb);
    concat_channels_backward(da, db, gget(&g, "dout", no), B, Ca, Cb, S);
    gcheck(&g, "da", NULL, da, na);
    gcheck(&g, "db", NULL, db, nb);
    gdone(&g);
}

/* ---- timestep embedding ---- */

typedef struct { const char *name; float freq_shift; } temb_case_t;

static void run_timestep_embedding(const temb_case_t *c) {
    const int B = 4, dim = 16;
    gcase_t g;
    gbegin(&g, c->name);
    float *t = gget(&g, "t", B), *out = gzeros(&g, (size_t)B * dim);
    timestep_embedding_forward(out, t, B, dim, 1, c->freq_shift, 10000.0f);
    gcheck(&g, "out", NULL, out, (size_t)B * dim);
    float *dt = gzeros(&g, B);
    timestep_embedding_backward(dt, gget(&g, "dout", (size_t)B * dim), t, B, dim, 1, c->freq_shift,
                                10000.0f);
    gcheck(&g, "dt", NULL, dt, B);
    gdone(&g);
}

static const temb_case_t k_temb_shift0 = {"temb_shift0", 0.0f};
static const temb_case_t k_temb_shift1 = {"temb_shift1", 1.0f};

/* ---- loss ---- */

static void test_mse(void **state) {
    (void)state;
    const size_t n = 50;
    gcase_t g;
    gbegin(&g, "mse");
    float *pred = gget(&g, "pred", n), *target = gget(&g, "target", n);
    float loss = mse_forward(pred, target, n);
    gcheck(&g, "loss", NULL, &loss, 1);
    float *dpred = gzeros(&g, n);
    mse_backward(dpred, pred, target, n, gget(&g, "dloss", 1)[0]);
    gcheck(&g, "dpred", NULL, dpred, n);
    gdone(&g);
}

/* ---- spectral linear / conv ----
 * Both code paths: factored (Weff = NULL) and baked (Weff = spectral_bake(...)). The factors
 * are the stored float32 SVD the reference used, never our own SVD. */

static void spectral_setup(gcase_t *g, spectral_t *sp, int rows, int cols, int rank) {
    float *U = gget(g, "U", (size_t)rows * rank), *S = gget(g, "S", rank);
    float *Vh = gget(g, "Vh", (size_t)rank * cols);
    spectral_init_factors(sp, U, S, Vh, rows, cols, rank);
    memcpy(sp->delta, gget(g, "delta", rank), (size_t)rank * sizeof(float));
    sp->scale = gget(g, "scale", 1)[0];
}

typedef struct { const char *name; int N, cols, rows, with_w; } splinear_case_t;

static void run_spectral_linear(const splinear_case_t *c) {
    const int rows = c->rows, cols = c->cols, rank = rows < cols ? rows : cols;
    gcase_t g;
    gbegin(&g, c->name);
    spectral_t sp;
    spectral_setup(&g, &sp, rows, cols, rank);
    const size_t ni = (size_t)c->N * cols, no = (size_t)c->N * rows;
    float *W = c->with_w ? gget(&g, "W", (size_t)rows * cols) : NULL;
    float *inp = gget(&g, "inp", ni), *bias = gget(&g, "bias", rows), *dout = gget(&g, "dout", no);
    for (int baked = 0; baked < 2; baked++) {
        const char *how = baked ? "baked" : "factored";
        float *Weff = NULL;
        if (baked) {
            Weff = gzeros(&g, (size_t)rows * cols);
            spectral_bake(Weff, W, &sp);
        }
        float *out = gzeros(&g, no);
        spectral_linear_forward(out, inp, W, &sp, Weff, bias, c->N);
        gcheck(&g, "out", how, out, no);
        float *dinp = gzeros(&g, ni), *ddelta = gzeros(&g, rank), *dbias = gzeros(&g, rows);
        spectral_linear_backward(dinp, ddelta, dbias, dout, inp, W, &sp, Weff, c->N);
        gcheck(&g, "dinp", how, dinp, ni);
        gcheck(&g, "ddelta", how, ddelta, rank);
        gcheck(&g, "dbias", how, dbias, rows);
    }
    spectral_free(&sp);
    gdone(&g);
}

static const splinear_case_t k_splinear_w = {"splinear_w", 6, 10, 7, 1};
static const splinear_case_t k_splinear_now = {"splinear_now", 5, 6, 9, 0};

/* big: inp / dout / W come from trng (seeds 1001 / 1002 / 1003, uniform [-1, 1), [-1, 1),
 * [-1/16, 1/16)), exactly as the reference script generated them; the stored head and tail
 * values prove it. */
typedef struct { const char *name; conv2d_shape_t s; int with_w, big; } spconv_case_t;

static float *trng_buffer(gcase_t *g, const char *check, uint64_t seed, size_t n, float lo, float hi) {
    float *x = gzeros(g, n);
    trng_t r;
    trng_seed(&r, seed);
    fill_uniform(&r, x, n, lo, hi);
    const float *want = gget(g, check, 8);
    for (int i = 0; i < 8; i++) {
        float got = i < 4 ? x[i] : x[n - 8 + i];
        if (got != want[i]) {
            print_error("%s.%s[%d]: C generator gave %.9g, the reference %.9g\n", g->name, check, i,
                        (double)got, (double)want[i]);
            fail();
        }
    }
    return x;
}

static void run_spectral_conv2d(const spconv_case_t *c) {
    const conv2d_shape_t *s = &c->s;
    const int rows = s->OC, cols = s->IC * s->KH * s->KW, rank = rows < cols ? rows : cols;
    const int OH = conv2d_out_h(s), OW = conv2d_out_w(s);
    const size_t ni = (size_t)s->B * s->IC * s->H * s->W, no = (size_t)s->B * s->OC * OH * OW;
    gcase_t g;
    gbegin(&g, c->name);
    spectral_t sp;
    spectral_setup(&g, &sp, rows, cols, rank);
    float *W, *inp, *dout;
    if (c->big) {
        inp = trng_buffer(&g, "inp_check", 1001, ni, -1.0f, 1.0f);
        dout = trng_buffer(&g, "dout_check", 1002, no, -1.0f, 1.0f);
        W = trng_buffer(&g, "W_check", 1003, (size_t)rows * cols, -1.0f / 16, 1.0f / 16);
        if (!c->with_w) W = NULL;
    } else {
        W = c->with_w ? gget(&g, "W", (size_t)rows * cols) : NULL;
        inp = gget(&g, "inp", ni);
        dout = gget(&g, "dout", no);
    }
    float *bias = gget(&g, "bias", rows);
    for (int baked = 0; baked < 2; baked++) {
        const char *how = baked ? "baked" : "factored";
        float *Weff = NULL;
        if (baked) {
            Weff = gzeros(&g, (size_t)rows * cols);
            spectral_bake(Weff, W, &sp);
        }
        float *out = gzeros(&g, no);
        spectral_conv2d_forward(out, inp, W, &sp, Weff, bias, s);
        gcheck(&g, "out", how, out, no);
        float *dinp = gzeros(&g, ni), *ddelta = gzeros(&g, rank), *dbias = gzeros(&g, rows);
        spectral_conv2d_backward(dinp, ddelta, dbias, dout, inp, W, &sp, Weff, s);
        gcheck(&g, "dinp", how, dinp, ni);
        gcheck(&g, "ddelta", how, ddelta, rank);
        gcheck(&g, "dbias", how, dbias, rows);
    }
    spectral_free(&sp);
    gdone(&g);
}

static const spconv_case_t k_spconv3x3_w = {"spconv3x3_w", {2, 3, 5, 6, 8, 3, 3, 1, {1, 1, 1, 1}}, 1, 0};
static const spconv_case_t k_spconv3x3_s2_vae_now = {
    "spconv3x3_s2_vae_now", {2, 2, 6, 5, 6, 3, 3, 2, {0, 1, 0, 1}}, 0, 0};
/* The acceptance case: 64 -> 128 channels, 3x3, batch 2, 16x16, with W. */
static const spconv_case_t k_spconv_big = {"spconv_big", {2, 64, 16, 16, 128, 3, 3, 1, {1, 1, 1, 1}}, 1, 1};

/* ---- norm-gain shifts ---- */

typedef struct { const char *name; normshift_mode_t mode; } normshift_case_t;

static void run_normshift(const normshift_case_t *c) {
    const int C = 8, nd = c->mode == NORMSHIFT_ELEMENT ? C : 1;
    gcase_t g;
    gbegin(&g, c->name);
    float *gamma = gget(&g, "gamma", C), *delta = gget(&g, "delta", nd);
    const float s = gget(&g, "scale", 1)[0];
    float *gain = gzeros(&g, C);
    normshift_gain(gain, gamma, delta, s, C, c->mode);
    gcheck(&g, "gain", NULL, gain, C);
    float *ddelta = gzeros(&g, nd);
    normshift_backward(ddelta, gget(&g, "dgain", C), gamma, delta, s, C, c->mode);
    gcheck(&g, "ddelta", NULL, ddelta, nd);
    gdone(&g);
}

static const normshift_case_t k_normshift_element = {"normshift_element", NORMSHIFT_ELEMENT};
static const normshift_case_t k_normshift_scalar = {"normshift_scalar", NORMSHIFT_SCALAR};
static const normshift_case_t k_normshift_scalar_clip = {"normshift_scalar_clip", NORMSHIFT_SCALAR};

/* One cmocka test per case, named after it (ctest runs each by name). */
#define GOLDEN_TEST(name, runner) \
    static void test_##name(void **state) { (void)state; run_##runner(&k_##name); }
GOLDEN_TEST(linear_bias, linear)
GOLDEN_TEST(linear_nobias, linear)
GOLDEN_TEST(conv3x3_s1, conv2d)
GOLDEN_TEST(conv3x3_s2, conv2d)
GOLDEN_TEST(conv1x1, conv2d)
GOLDEN_TEST(conv3x3_s2_vae, conv2d)
GOLDEN_TEST(silu, activation)
GOLDEN_TEST(gelu, activation)
GOLDEN_TEST(quick_gelu, activation)
GOLDEN_TEST(attn_self, attention)
GOLDEN_TEST(attn_cross, attention)
GOLDEN_TEST(attn_causal, attention)
GOLDEN_TEST(temb_shift0, timestep_embedding)
GOLDEN_TEST(temb_shift1, timestep_embedding)
GOLDEN_TEST(splinear_w, spectral_linear)
GOLDEN_TEST(splinear_now, spectral_linear)
GOLDEN_TEST(spconv3x3_w, spectral_conv2d)
GOLDEN_TEST(spconv3x3_s2_vae_now, spectral_conv2d)
GOLDEN_TEST(spconv_big, spectral_conv2d)
GOLDEN_TEST(normshift_element, normshift)
GOLDEN_TEST(normshift_scalar, normshift)
GOLDEN_TEST(normshift_scalar_clip, normshift)

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_bias),
        cmocka_unit_test(test_linear_nobias),
        cmocka_unit_test(test_conv3x3_s1),
        cmocka_unit_test(test_conv3x3_s2),
        cmocka_unit_test(test_conv1x1),
        cmocka_unit_test(test_conv3x3_s2_vae),
        cmocka_unit_test(test_groupnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_silu),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_quick_gelu),
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_attn_self),
        cmocka_unit_test(test_attn_cross),
        cmocka_unit_test(test_attn_causal),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_temb_shift0),
        cmocka_unit_test(test_temb_shift1),
        cmocka_unit_test(test_mse),
        cmocka_unit_test(test_splinear_w),
        cmocka_unit_test(test_splinear_now),
        cmocka_unit_test(test_spconv3x3_w),
        cmocka_unit_test(test_spconv3x3_s2_vae_now),
        cmocka_unit_test(test_spconv_big),
        cmocka_unit_test(test_normshift_element),
        cmocka_unit_test(test_normshift_scalar),
        cmocka_unit_test(test_normshift_scalar_clip),
    };
    return RUN_TESTS(argc, argv, "golden_ops", tests, NULL, NULL);
}
