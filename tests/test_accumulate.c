/* The accumulation contract of every backward (src/ops/ops.h: "backward functions ACCUMULATE
 * (+=) into every gradient they write"; the same in weights/spectral.h, lora.h, weight.h):
 * each backward runs once into zeroed gradient buffers (fresh), once into buffers pre-filled
 * with known values p, and every element of every gradient output must then be p + fresh.
 * A backward that overwrites one of its outputs (e.g. a GEMM with beta = 0 for dweight)
 * leaves fresh there and fails. The finite-difference tests check the values themselves. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/ops.h"
#include "weights/lora.h"
#include "weights/spectral.h"
#include "weights/weight.h"

#define MAX_GRADS 3

/* One backward call: writes (+=) its gradients into g[0..ng). */
typedef void (*backward_fn)(void *ctx, float *const *g);

/* Runs `bwd` on zeroed and on pre-filled buffers of sizes n[0..ng); fails naming the op and
 * the gradient (names[k]) on the first element that is not prefill + fresh. */
static void check_accumulates(const char *op, backward_fn bwd, void *ctx, int ng, const size_t *n,
                              const char *const *names) {
    float *fresh[MAX_GRADS], *acc[MAX_GRADS], *pre[MAX_GRADS];
    trng_t r;
    trng_seed(&r, 1234);
    for (int k = 0; k < ng; k++) {
        fresh[k] = alloc_zeros(n[k]);
        pre[k] = alloc_normal(&r, n[k], 1.0f);
        for (size_t i = 0; i < n[k]; i++) pre[k][i] += pre[k][i] < 0 ? -0.5f : 0.5f;   /* |p| >= 0.5 */
        acc[k] = malloc(n[k] * sizeof(float));
        memcpy(acc[k], pre[k], n[k] * sizeof(float));
    }
    bwd(ctx, fresh);
    bwd(ctx, acc);
    for (int k = 0; k < ng; k++) {
        double maxf = 0;
        for (size_t i = 0; i < n[k]; i++) maxf = fmax(maxf, fabs(fresh[k][i]));
        assert_true(maxf > 0);   /* the check means nothing on an all-zero gradient */
        for (size_t i = 0; i < n[k]; i++) {
            const double want = (double)pre[k][i] + fresh[k][i];
            if (fabs(acc[k][i] - want) > 1e-5 * (1.0 + fabs(pre[k][i]) + maxf)) {
                print_error("%s: %s does not accumulate at %zu: %g, want prefill %g + fresh %g\n", op, names[k], i,
                            acc[k][i], pre[k][i], fresh[k][i]);
                fail();
            }
        }
        free(fresh[k]), free(acc[k]), free(pre[k]);
    }
}

/* ---------------------------------------------------------------- linear, conv */

typedef struct {
    int N, IC, OC;
    conv2d_shape_t s;
    float *inp, *w, *dout;
} lin_ctx;

static void lin_bwd(void *vc, float *const *g) {
    lin_ctx *c = vc;
    linear_backward(g[0], g[1], g[2], c->dout, c->inp, c->w, c->N, c->IC, c->OC);
}

static void conv_bwd(void *vc, float *const *g) {
    lin_ctx *c = vc;
    conv2d_backward(g[0], g[1], g[2], c->dout, c->inp, c->w, &c->s);
}

static void test_linear_conv(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 1);
    static const char *const names[3] = {"dinp", "dweight", "dbias"};
    lin_ctx c = {.N = 5, .IC = 7, .OC = 4};
    c.inp = alloc_normal(&r, 35, 1), c.w = alloc_normal(&r, 28, 1), c.dout = alloc_normal(&r, 20, 1);
    check_accumulates("linear_backward", lin_bwd, &c, 3, (size_t[]){35, 28, 4}, names);
    free(c.inp), free(c.w), free(c.dout);
    /* 3x3 (im2col path), stride 2 with the VAE's one-sided padding, and 1x1 (pointwise path) */
    const conv2d_shape_t shapes[3] = {
        {.B = 2, .IC = 3, .H = 6, .W = 5, .OC = 4, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}},
        {.B = 2, .IC = 3, .H = 6, .W = 6, .OC = 4, .KH = 3, .KW = 3, .stride = 2, .pad = {0, 1, 0, 1}},
        {.B = 2, .IC = 6, .H = 4, .W = 5, .OC = 3, .KH = 1, .KW = 1, .stride = 1, .pad = {0, 0, 0, 0}},
    };
    for (int k = 0; k < 3; k++) {
        c.s = shapes[k];
        const size_t nin = (size_t)c.s.B * c.s.IC * c.s.H * c.s.W, nw = (size_t)c.s.OC * c.s.IC * c.s.KH * c.s.KW;
        const size_t nout = (size_t)c.s.B * c.s.OC * conv2d_out_h(&c.s) * conv2d_out_w(&c.s);
        c.inp = alloc_normal(&r, nin, 1), c.w = alloc_normal(&r, nw, 1), c.dout = alloc_normal(&r, nout, 1);
        check_accumulates("conv2d_backward", conv_bwd, &c, 3, (size_t[]){nin, nw, (size_t)c.s.OC}, names);
        free(c.inp), free(c.w), free(c.dout);
    }
}

/* ---------------------------------------------------------------- normalisation */

typedef struct {
    int B, C, S, G;
    float *inp, *gamma, *beta, *mean, *rstd, *dout;
} norm_ctx;

static void gn_bwd(void *vc, float *const *g) {
    norm_ctx *c = vc;
    groupnorm_backward(g[0], g[1], g[2], c->dout, c->inp, c->gamma, c->mean, c->rstd, c->B, c->C, c->S, c->G);
}

static void ln_bwd(void *vc, float *const *g) {
    norm_ctx *c = vc;
    layernorm_backward(g[0], g[1], g[2], c->dout, c->inp, c->gamma, c->mean, c->rstd, c->B, c->C);
}

static void test_norms(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 2);
    static const char *const names[3] = {"dinp", "dgamma", "dbeta"};
    norm_ctx c = {.B = 2, .C = 8, .S = 5, .G = 4};
    size_t n = (size_t)c.B * c.C * c.S;
    float *out = alloc_zeros(n);
    c.inp = alloc_normal(&r, n, 1), c.gamma = alloc_normal(&r, c.C, 1), c.beta = alloc_normal(&r, c.C, 1);
    c.dout = alloc_normal(&r, n, 1), c.mean = alloc_zeros(c.B * c.G), c.rstd = alloc_zeros(c.B * c.G);
    groupnorm_forward(out, c.mean, c.rstd, c.inp, c.gamma, c.beta, c.B, c.C, c.S, c.G, 1e-5f);
    check_accumulates("groupnorm_backward", gn_bwd, &c, 3, (size_t[]){n, (size_t)c.C, (size_t)c.C}, names);
    free(c.mean), free(c.rstd);
    /* layernorm: B rows of C */
    c.B = 10, c.C = 4;
    c.mean = alloc_zeros(c.B), c.rstd = alloc_zeros(c.B);
    layernorm_forward(out, c.mean, c.rstd, c.inp, c.gamma, c.beta, c.B, c.C, 1e-5f);
    check_accumulates("layernorm_backward", ln_bwd, &c, 3, (size_t[]){40, 4, 4}, names);
    free(out), free(c.inp), free(c.gamma), free(c.beta), free(c.dout), free(c.mean), free(c.rstd);
}

/* ---------------------------------------------------------------- elementwise and layout */

typedef struct {
    int which;
    size_t n;
    int B, C, H, W, Ca, Cb, dim;
    float *inp, *dout, *target;
} elem_ctx;

static void elem_bwd(void *vc, float *const *g) {
    elem_ctx *c = vc;
    switch (c->which) {
    case 0: silu_backward(g[0], c->dout, c->inp, c->n); break;
    case 1: gelu_backward(g[0], c->dout, c->inp, c->n); break;
    case 2: quick_gelu_backward(g[0], c->dout, c->inp, c->n); break;
    case 3: geglu_backward(g[0], c->dout, c->inp, c->B, c->C); break;
    case 4: upsample_nearest2x_backward(g[0], c->dout, c->B, c->C, c->H, c->W); break;
    case 5: concat_channels_backward(g[0], g[1], c->dout, c->B, c->Ca, c->Cb, c->H * c->W); break;
    case 6: timestep_embedding_backward(g[0], c->dout, c->inp, c->B, c->dim, 1, 0.0f, 10000.0f); break;
    case 7: mse_backward(g[0], c->inp, c->target, c->n, 0.75f); break;
    }
}

static void test_elementwise_and_layout(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 3);
    elem_ctx c = {.n = 60, .B = 2, .C = 3, .H = 4, .W = 5, .Ca = 2, .Cb = 3, .dim = 8};
    c.inp = alloc_normal(&r, 1000, 1), c.dout = alloc_normal(&r, 1000, 1), c.target = alloc_normal(&r, 1000, 1);
    for (int i = 0; i < 2; i++) c.inp[i] = 10.0f + 300.0f * trng_uniform(&r);   /* timesteps */
    static const char *const op[8] = {"silu_backward", "gelu_backward", "quick_gelu_backward", "geglu_backward",
                                      "upsample_nearest2x_backward", "concat_channels_backward",
                                      "timestep_embedding_backward", "mse_backward"};
    const size_t n1[8] = {60, 60, 60, 2 * 2 * 3, 2 * 3 * 4 * 5, 2 * 2 * 20, 2, 60};
    static const char *const names[2] = {"dinp", "db"};
    static const char *const concat_names[2] = {"da", "db"};
    for (c.which = 0; c.which < 8; c.which++) {
        const int two = c.which == 5;
        check_accumulates(op[c.which], elem_bwd, &c, two ? 2 : 1, (size_t[]){n1[c.which], 2 * 3 * 20},
                          two ? concat_names : names);
    }
    free(c.inp), free(c.dout), free(c.target);
}

/* ---------------------------------------------------------------- attention */

typedef struct {
    int B, Tq, Tk, H, D, causal;
    float *q, *k, *v, *out, *lse, *dout;
} attn_ctx;

static void attn_bwd(void *vc, float *const *g) {
    attn_ctx *c = vc;
    attention_backward(g[0], g[1], g[2], c->dout, c->q, c->k, c->v, c->out, c->lse, c->B, c->Tq, c->Tk, c->H, c->D,
                       0.5f, c->causal);
}

static void test_attention(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 4);
    static const char *const names[3] = {"dq", "dk", "dv"};
    for (int causal = 0; causal < 2; causal++) {
        attn_ctx c = {.B = 2, .Tq = 70, .Tk = causal ? 70 : 9, .H = 2, .D = 4, .causal = causal};
        const size_t nq = (size_t)c.B * c.Tq * c.H * c.D, nk = (size_t)c.B * c.Tk * c.H * c.D;
        c.q = alloc_normal(&r, nq, 1), c.k = alloc_normal(&r, nk, 1), c.v = alloc_normal(&r, nk, 1);
        c.out = alloc_zeros(nq), c.lse = alloc_zeros((size_t)c.B * c.H * c.Tq), c.dout = alloc_normal(&r, nq, 1);
        attention_forward(c.out, c.lse, c.q, c.k, c.v, c.B, c.Tq, c.Tk, c.H, c.D, 0.5f, causal);
        check_accumulates("attention_backward", attn_bwd, &c, 3, (size_t[]){nq, nk, nk}, names);
        free(c.q), free(c.k), free(c.v), free(c.out), free(c.lse), free(c.dout);
    }
}

/* ---------------------------------------------------------------- spectral, LoRA, weight_t */

typedef struct {
    int N, form;           /* spectral form: 0 factored, 1 factored + exact residual W, 2 baked Weff */
    conv2d_shape_t s;
    float *W, *Weff, *inp, *dout, *gamma, *delta;
    spectral_t sp;
    lora_t l;
    weight_t w;
    int *ids;
    normshift_mode_t mode;
} wctx;

static void splin_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    spectral_linear_backward(g[0], g[1], g[2], c->dout, c->inp, c->form == 1 ? c->W : NULL, &c->sp,
                             c->form == 2 ? c->Weff : NULL, c->N);
}

static void spconv_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    spectral_conv2d_backward(g[0], g[1], g[2], c->dout, c->inp, c->form == 1 ? c->W : NULL, &c->sp,
                             c->form == 2 ? c->Weff : NULL, &c->s);
}

static void normshift_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    normshift_backward(g[0], c->dout, c->gamma, c->delta, 0.8f, c->N, c->mode);
}

static void lora_lin_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    lora_linear_backward(g[0], g[1], g[2], c->dout, c->inp, c->W, &c->l, c->N);
}

static void lora_conv_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    lora_conv2d_backward(g[0], g[1], g[2], c->dout, c->inp, c->W, &c->l, &c->s);
}

static void weight_lin_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    weight_linear_backward(g[0], g[1], g[2], c->dout, c->inp, &c->w, c->N);
}

static void weight_conv_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    weight_conv2d_backward(g[0], g[1], g[2], c->dout, c->inp, &c->w, &c->s);
}

static void weight_emb_bwd(void *vc, float *const *g) {
    wctx *c = vc;
    weight_embedding_backward(g[0], c->dout, c->ids, &c->w, c->N);
}

static void test_spectral(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 5);
    static const char *const names[3] = {"dinp", "ddelta", "dbias"};
    const int rows = 6, cols = 9;
    wctx c = {.N = 7};
    c.W = alloc_normal(&r, rows * cols, 1), c.Weff = alloc_zeros(rows * cols);
    assert_int_equal(spectral_init(&c.sp, c.W, rows, cols), 0);
    fill_normal(&r, c.sp.delta, c.sp.rank, 0.3f);
    spectral_bake(c.Weff, NULL, &c.sp);
    c.inp = alloc_normal(&r, 400, 1), c.dout = alloc_normal(&r, 400, 1);
    const size_t nd = (size_t)c.sp.rank;
    for (c.form = 0; c.form < 3; c.form++)
        check_accumulates("spectral_linear_backward", splin_bwd, &c, 3, (size_t[]){(size_t)c.N * cols, nd, rows}, names);
    /* conv: kernel [OC = 6, IC * 3 * 3 = 9] with IC = 1 */
    c.s = (conv2d_shape_t){.B = 2, .IC = 1, .H = 5, .W = 4, .OC = rows, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}};
    for (c.form = 0; c.form < 3; c.form++)
        check_accumulates("spectral_conv2d_backward", spconv_bwd, &c, 3, (size_t[]){2 * 5 * 4, nd, rows}, names);
    /* norm shifts: per element (delta [C]) and scalar (delta [1]) */
    static const char *const dn[1] = {"ddelta"};
    c.N = 6;
    c.gamma = alloc_normal(&r, 6, 1), c.delta = alloc_normal(&r, 6, 0.2f);
    c.mode = NORMSHIFT_ELEMENT;
    check_accumulates("normshift_backward (element)", normshift_bwd, &c, 1, (size_t[]){6}, dn);
    c.mode = NORMSHIFT_SCALAR;
    check_accumulates("normshift_backward (scalar)", normshift_bwd, &c, 1, (size_t[]){1}, dn);
    spectral_free(&c.sp);
    free(c.W), free(c.Weff), free(c.inp), free(c.dout), free(c.gamma), free(c.delta);
}

static void test_lora(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 6);
    static const char *const names[3] = {"dinp", "dAB", "dbias"};
    const int rows = 5, cols = 9, rank = 2;
    wctx c = {.N = 4};
    lora_alloc(&c.l, rows, cols, rank, 3.0f);
    fill_normal(&r, c.l.AB, lora_numel(&c.l), 0.5f);   /* B != 0, so dA is not zero */
    c.W = alloc_normal(&r, rows * cols, 1), c.inp = alloc_normal(&r, 400, 1), c.dout = alloc_normal(&r, 400, 1);
    check_accumulates("lora_linear_backward", lora_lin_bwd, &c, 3,
                      (size_t[]){(size_t)c.N * cols, lora_numel(&c.l), rows}, names);
    c.s = (conv2d_shape_t){.B = 2, .IC = 1, .H = 4, .W = 4, .OC = rows, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}};
    check_accumulates("lora_conv2d_backward", lora_conv_bwd, &c, 3, (size_t[]){2 * 16, lora_numel(&c.l), rows}, names);
    lora_free(&c.l);
    free(c.W), free(c.inp), free(c.dout);
}

static void test_weight(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 7);
    static const char *const names[3] = {"dinp", "dparam", "dbias"};
    const int rows = 6, cols = 9;
    wctx c = {.N = 5};
    c.W = alloc_normal(&r, rows * cols, 1), c.inp = alloc_normal(&r, 400, 1), c.dout = alloc_normal(&r, 400, 1);
    c.s = (conv2d_shape_t){.B = 2, .IC = 1, .H = 4, .W = 3, .OC = rows, .KH = 3, .KW = 3, .stride = 1, .pad = {1, 1, 1, 1}};
    int ids[5] = {3, 0, 5, 3, 1};
    c.ids = ids;
    for (int kind = 0; kind < 2; kind++) {   /* dense: dparam = dW; spectral: dparam = d(delta) */
        c.w = weight_dense(c.W, ST_F32, rows, cols);
        if (kind) {
            assert_int_equal(weight_make_spectral(&c.w, 1), 0);
            fill_normal(&r, c.w.sp->delta, c.w.sp->rank, 0.3f);
        }
        const size_t np = kind ? (size_t)c.w.sp->rank : (size_t)rows * cols;
        check_accumulates("weight_linear_backward", weight_lin_bwd, &c, 3, (size_t[]){(size_t)c.N * cols, np, rows}, names);
        check_accumulates("weight_conv2d_backward", weight_conv_bwd, &c, 3, (size_t[]){2 * 12, np, rows}, names);
        check_accumulates("weight_embedding_backward", weight_emb_bwd, &c, 1, (size_t[]){np}, names + 1);
        weight_free(&c.w);
    }
    free(c.W), free(c.inp), free(c.dout);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_linear_conv),
        cmocka_unit_test(test_norms),
        cmocka_unit_test(test_elementwise_and_layout),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_spectral),
        cmocka_unit_test(test_lora),
        cmocka_unit_test(test_weight),
    };
    return RUN_TESTS(argc, argv, "accumulate", tests, NULL, teardown);
}
