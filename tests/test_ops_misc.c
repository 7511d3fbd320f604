/* Tests of the small operators: GroupNorm, LayerNorm, SiLU/GELU/QuickGELU, GEGLU, nearest
 * upsampling, channel concat, timestep embedding and MSE. Each forward is compared with a
 * double-precision reference written here; each gradient with finite differences; plus
 * accumulation (+=), NULL gradients and bit-for-bit determinism across thread counts. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/fastmath.h"
#include "ops/ops.h"
#include "testutil.h"

#define FD_H 1e-2f
#define FD_TOL 1e-2
#define FD_PROBES 64

static float *dup(const float *x, size_t n) {
    float *y = sd_xmalloc(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

static void add_const(float *x, size_t n, float c) {
    for (size_t i = 0; i < n; i++) x[i] += c;
}

/* Asserts g2 == 2 * g1 (a backward called twice on zeroed gradients). x + x is exact. */
static void assert_doubled(const char *name, const float *g2, const float *g1, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (g2[i] != 2.0f * g1[i]) {
            print_error("%s: not accumulated at %zu: %g after two calls, %g after one\n",
                        name, i, g2[i], g1[i]);
            fail();
        }
    }
}

static void assert_same_bytes(const char *name, const float *a, const float *b, size_t n) {
    if (memcmp(a, b, n * sizeof(float)) != 0) {
        print_error("%s: results differ between runs\n", name);
        fail();
    }
}

/* ------------------------------------------------------------------ GroupNorm */

/* Double reference: out, mean, rstd (as floats) of group_norm with biased variance. */
static void ref_groupnorm(float *out, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int B, int C, int S, int G, double eps) {
    int cpg = C / G;
    for (int b = 0; b < B; b++)
        for (int g = 0; g < G; g++) {
            double s = 0, ss = 0;
            size_t n = (size_t)cpg * S;
            const float *xg = x + ((size_t)b * C + (size_t)g * cpg) * S;
            for (size_t i = 0; i < n; i++) s += xg[i];
            double m = s / n;
            for (size_t i = 0; i < n; i++) ss += (xg[i] - m) * (xg[i] - m);
            double r = 1.0 / sqrt(ss / n + eps);
            mean[b * G + g] = (float)m;
            rstd[b * G + g] = (float)r;
            for (int cc = 0; cc < cpg; cc++) {
                int c = g * cpg + cc;
                for (int i = 0; i < S; i++) {
                    size_t k = ((size_t)b * C + c) * S + i;
                    double y = (x[k] - m) * r;
                    y = y * (gamma ? gamma[c] : 1.0) + (beta ? beta[c] : 0.0);
                    out[k] = (float)y;
                }
            }
        }
}

typedef struct {
    float *inp, *gamma, *beta, *w, *out, *mean, *rstd;
    int B, C, S, G;
    float eps;
} gn_ctx;

static double gn_loss(void *p) {
    gn_ctx *c = p;
    groupnorm_forward(c->out, c->mean, c->rstd, c->inp, c->gamma, c->beta, c->B, c->C, c->S, c->G, c->eps);
    return dot_loss(c->out, c->w, (size_t)c->B * c->C * c->S);
}

static void gn_setup(gn_ctx *c, trng_t *r, int B, int C, int S, int G, float offset) {
    size_t n = (size_t)B * C * S;
    c->B = B; c->C = C; c->S = S; c->G = G; c->eps = 1e-5f;
    c->inp = alloc_normal(r, n, 1.0f);
    add_const(c->inp, n, offset);
    c->gamma = alloc_normal(r, C, 1.0f);
    add_const(c->gamma, C, 1.0f);
    c->beta = alloc_normal(r, C, 1.0f);
    c->w = alloc_normal(r, n, 1.0f);
    c->out = alloc_zeros(n);
    c->mean = alloc_zeros((size_t)B * G);
    c->rstd = alloc_zeros((size_t)B * G);
}

static void gn_free(gn_ctx *c) {
    free(c->inp); free(c->gamma); free(c->beta); free(c->w);
    free(c->out); free(c->mean); free(c->rstd);
}

static void check_groupnorm_forward(int B, int C, int S, int G, float offset, int affine) {
    trng_t r;
    trng_seed(&r, 11 + C + S);
    gn_ctx c;
    gn_setup(&c, &r, B, C, S, G, offset);
    const float *ga = affine ? c.gamma : NULL, *be = affine ? c.beta : NULL;
    size_t n = (size_t)B * C * S;
    float *want = alloc_zeros(n), *wm = alloc_zeros((size_t)B * G), *wr = alloc_zeros((size_t)B * G);
    ref_groupnorm(want, wm, wr, c.inp, ga, be, B, C, S, G, c.eps);
    groupnorm_forward(c.out, c.mean, c.rstd, c.inp, ga, be, B, C, S, G, c.eps);
    assert_close("groupnorm out", c.out, want, n, 1e-5);
    assert_close("groupnorm mean", c.mean, wm, (size_t)B * G, 1e-6);
    assert_close("groupnorm rstd", c.rstd, wr, (size_t)B * G, 1e-6);
    /* mean/rstd are optional when no backward follows. */
    memset(c.out, 0, n * sizeof(float));
    groupnorm_forward(c.out, NULL, NULL, c.inp, ga, be, B, C, S, G, c.eps);
    assert_close("groupnorm out (no stats)", c.out, want, n, 1e-5);
    free(want); free(wm); free(wr);
    gn_free(&c);
}

static void test_groupnorm_forward(void **state) {
    (void)state;
    check_groupnorm_forward(2, 8, 5, 4, 0.0f, 1);
    check_groupnorm_forward(2, 8, 5, 4, 0.0f, 0);
    check_groupnorm_forward(1, 6, 7, 1, 0.0f, 1);     /* one group: LayerNorm over C*S */
    check_groupnorm_forward(2, 6, 3, 6, 0.0f, 1);     /* one channel per group (InstanceNorm) */
    /* accuracy with a mean offset (latents-like): a float one-pass variance fails this */
    check_groupnorm_forward(2, 32, 64, 8, 3.0f, 1);
    check_groupnorm_forward(1, 64, 256, 32, 3.0f, 0);  /* large enough to run in parallel */
    check_groupnorm_forward(1, 20, 4096, 2, 3.0f, 1);  /* 40960-element groups, as SD's VAE */
}

static void gn_backward(gn_ctx *c, float *dinp, float *dgamma, float *dbeta) {
    groupnorm_backward(dinp, dgamma, dbeta, c->w, c->inp, c->gamma, c->mean, c->rstd,
                       c->B, c->C, c->S, c->G);
}

static void check_groupnorm_backward(int B, int C, int S, int G, int affine) {
    trng_t r;
    trng_seed(&r, 5 + C);
    gn_ctx c;
    gn_setup(&c, &r, B, C, S, G, 0.5f);
    if (!affine) {
        free(c.gamma); free(c.beta);
        c.gamma = c.beta = NULL;
    }
    size_t n = (size_t)B * C * S;
    float *dinp = alloc_zeros(n), *dgamma = alloc_zeros(C), *dbeta = alloc_zeros(C);
    gn_loss(&c);
    gn_backward(&c, dinp, dgamma, dbeta);
    fd_check("groupnorm dinp", c.inp, dinp, n, FD_PROBES, gn_loss, &c, FD_H, FD_TOL);
    if (affine) {
        fd_check("groupnorm dgamma", c.gamma, dgamma, C, FD_PROBES, gn_loss, &c, FD_H, FD_TOL);
        fd_check("groupnorm dbeta", c.beta, dbeta, C, FD_PROBES, gn_loss, &c, FD_H, FD_TOL);
    }
    free(dinp); free(dgamma); free(dbeta);
    gn_free(&c);
}

static void test_groupnorm_backward(void **state) {
    (void)state;
    check_groupnorm_backward(2, 8, 5, 4, 1);
    check_groupnorm_backward(2, 8, 5, 4, 0);
    check_groupnorm_backward(1, 6, 4, 3, 1);
}

/* Twice -> doubled; each gradient alone (others NULL) equals the full call's; all NULL ok. */
static void test_groupnorm_accumulate_and_null(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 99);
    gn_ctx c;
    int B = 2, C = 8, S = 5, G = 4;
    gn_setup(&c, &r, B, C, S, G, 0.0f);
    size_t n = (size_t)B * C * S;
    gn_loss(&c);
    float *d1 = alloc_zeros(n), *g1 = alloc_zeros(C), *b1 = alloc_zeros(C);
    float *d2 = alloc_zeros(n), *g2 = alloc_zeros(C), *b2 = alloc_zeros(C);
    gn_backward(&c, d1, g1, b1);
    gn_backward(&c, d2, g2, b2);
    gn_backward(&c, d2, g2, b2);
    assert_doubled("groupnorm dinp", d2, d1, n);
    assert_doubled("groupnorm dgamma", g2, g1, C);
    assert_doubled("groupnorm dbeta", b2, b1, C);
    memset(d2, 0, n * sizeof(float)); memset(g2, 0, C * sizeof(float)); memset(b2, 0, C * sizeof(float));
    gn_backward(&c, d2, NULL, NULL);
    gn_backward(&c, NULL, g2, NULL);
    gn_backward(&c, NULL, NULL, b2);
    gn_backward(&c, NULL, NULL, NULL);
    assert_same_bytes("groupnorm dinp alone", d2, d1, n);
    assert_same_bytes("groupnorm dgamma alone", g2, g1, C);
    assert_same_bytes("groupnorm dbeta alone", b2, b1, C);
    free(d1); free(g1); free(b1); free(d2); free(g2); free(b2);
    gn_free(&c);
}

/* ------------------------------------------------------------------ LayerNorm */

static void ref_layernorm(float *out, float *mean, float *rstd, const float *x, const float *gamma,
                          const float *beta, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        const float *xr = x + (size_t)n * C;
        double s = 0, ss = 0;
        for (int c = 0; c < C; c++) s += xr[c];
        double m = s / C;
        for (int c = 0; c < C; c++) ss += (xr[c] - m) * (xr[c] - m);
        double r = 1.0 / sqrt(ss / C + eps);
        mean[n] = (float)m;
        rstd[n] = (float)r;
        for (int c = 0; c < C; c++)
            out[(size_t)n * C + c] =
                (float)((xr[c] - m) * r * (gamma ? gamma[c] : 1.0) + (beta ? beta[c] : 0.0));
    }
}

typedef struct {
    float *inp, *gamma, *beta, *w, *out, *mean, *rstd;
    int N, C;
    float eps;
} ln_ctx;

static double ln_loss(void *p) {
    ln_ctx *c = p;
    layernorm_forward(c->out, c->mean, c->rstd, c->inp, c->gamma, c->beta, c->N, c->C, c->eps);
    return dot_loss(c->out, c->w, (size_t)c->N * c->C);
}

static void ln_setup(ln_ctx *c, trng_t *r, int N, int C, float offset) {
    size_t n = (size_t)N * C;
    c->N = N; c->C = C; c->eps = 1e-5f;
    c->inp = alloc_normal(r, n, 1.0f);
    add_const(c->inp, n, offset);
    c->gamma = alloc_normal(r, C, 1.0f);
    add_const(c->gamma, C, 1.0f);
    c->beta = alloc_normal(r, C, 1.0f);
    c->w = alloc_normal(r, n, 1.0f);
    c->out = alloc_zeros(n);
    c->mean = alloc_zeros(N);
    c->rstd = alloc_zeros(N);
}

static void ln_free(ln_ctx *c) {
    free(c->inp); free(c->gamma); free(c->beta); free(c->w);
    free(c->out); free(c->mean); free(c->rstd);
}

static void ln_backward(ln_ctx *c, float *dinp, float *dgamma, float *dbeta) {
    layernorm_backward(dinp, dgamma, dbeta, c->w, c->inp, c->gamma, c->mean, c->rstd, c->N, c->C);
}

static void check_layernorm_forward(int N, int C, float offset, int affine) {
    trng_t r;
    trng_seed(&r, 21 + N + C);
    ln_ctx c;
    ln_setup(&c, &r, N, C, offset);
    const float *ga = affine ? c.gamma : NULL, *be = affine ? c.beta : NULL;
    size_t n = (size_t)N * C;
    float *want = alloc_zeros(n), *wm = alloc_zeros(N), *wr = alloc_zeros(N);
    ref_layernorm(want, wm, wr, c.inp, ga, be, N, C, c.eps);
    layernorm_forward(c.out, c.mean, c.rstd, c.inp, ga, be, N, C, c.eps);
    assert_close("layernorm out", c.out, want, n, 1e-5);
    assert_close("layernorm mean", c.mean, wm, N, 1e-6);
    assert_close("layernorm rstd", c.rstd, wr, N, 1e-6);
    memset(c.out, 0, n * sizeof(float));
    layernorm_forward(c.out, NULL, NULL, c.inp, ga, be, N, C, c.eps);
    assert_close("layernorm out (no stats)", c.out, want, n, 1e-5);
    free(want); free(wm); free(wr);
    ln_free(&c);
}

static void test_layernorm_forward(void **state) {
    (void)state;
    check_layernorm_forward(3, 7, 0.0f, 1);
    check_layernorm_forward(3, 7, 0.0f, 0);
    check_layernorm_forward(16, 320, 3.0f, 1);
    check_layernorm_forward(300, 96, 3.0f, 1);   /* parallel path */
}

static void check_layernorm_backward(int N, int C, int affine) {
    trng_t r;
    trng_seed(&r, 31 + C);
    ln_ctx c;
    ln_setup(&c, &r, N, C, -0.5f);
    if (!affine) {
        free(c.gamma); free(c.beta);
        c.gamma = c.beta = NULL;
    }
    size_t n = (size_t)N * C;
    float *dinp = alloc_zeros(n), *dgamma = alloc_zeros(C), *dbeta = alloc_zeros(C);
    ln_loss(&c);
    ln_backward(&c, dinp, dgamma, dbeta);
    fd_check("layernorm dinp", c.inp, dinp, n, FD_PROBES, ln_loss, &c, FD_H, FD_TOL);
    if (affine) {
        fd_check("layernorm dgamma", c.gamma, dgamma, C, FD_PROBES, ln_loss, &c, FD_H, FD_TOL);
        fd_check("layernorm dbeta", c.beta, dbeta, C, FD_PROBES, ln_loss, &c, FD_H, FD_TOL);
    }
    free(dinp); free(dgamma); free(dbeta);
    ln_free(&c);
}

static void test_layernorm_backward(void **state) {
    (void)state;
    check_layernorm_backward(3, 7, 1);
    check_layernorm_backward(3, 7, 0);
    check_layernorm_backward(5, 70, 1);   /* C beyond one row block of the reduction */
}

/* The parameter gradients are reduced over row blocks: check them against a plain double
 * sum at a size with several blocks (N = 600 > 256), where fd would be slow. */
static void test_layernorm_param_grads_many_rows(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 41);
    ln_ctx c;
    int N = 600, C = 33;
    ln_setup(&c, &r, N, C, 1.0f);
    ln_loss(&c);
    float *dgamma = alloc_zeros(C), *dbeta = alloc_zeros(C), *wg = alloc_zeros(C), *wb = alloc_zeros(C);
    ln_backward(&c, NULL, dgamma, dbeta);
    for (int j = 0; j < C; j++) {
        double sg = 0, sb = 0;
        for (int n = 0; n < N; n++) {
            double xh = (c.inp[(size_t)n * C + j] - (double)c.mean[n]) * c.rstd[n];
            sg += c.w[(size_t)n * C + j] * xh;
            sb += c.w[(size_t)n * C + j];
        }
        wg[j] = (float)sg;
        wb[j] = (float)sb;
    }
    assert_close("layernorm dgamma (600 rows)", dgamma, wg, C, 1e-5);
    assert_close("layernorm dbeta (600 rows)", dbeta, wb, C, 1e-5);
    free(dgamma); free(dbeta); free(wg); free(wb);
    ln_free(&c);
}

static void test_layernorm_accumulate_and_null(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 7);
    ln_ctx c;
    int N = 3, C = 7;
    ln_setup(&c, &r, N, C, 0.0f);
    size_t n = (size_t)N * C;
    ln_loss(&c);
    float *d1 = alloc_zeros(n), *g1 = alloc_zeros(C), *b1 = alloc_zeros(C);
    float *d2 = alloc_zeros(n), *g2 = alloc_zeros(C), *b2 = alloc_zeros(C);
    ln_backward(&c, d1, g1, b1);
    ln_backward(&c, d2, g2, b2);
    ln_backward(&c, d2, g2, b2);
    assert_doubled("layernorm dinp", d2, d1, n);
    assert_doubled("layernorm dgamma", g2, g1, C);
    assert_doubled("layernorm dbeta", b2, b1, C);
    memset(d2, 0, n * sizeof(float)); memset(g2, 0, C * sizeof(float)); memset(b2, 0, C * sizeof(float));
    ln_backward(&c, d2, NULL, NULL);
    ln_backward(&c, NULL, g2, NULL);
    ln_backward(&c, NULL, NULL, b2);
    ln_backward(&c, NULL, NULL, NULL);
    assert_same_bytes("layernorm dinp alone", d2, d1, n);
    assert_same_bytes("layernorm dgamma alone", g2, g1, C);
    assert_same_bytes("layernorm dbeta alone", b2, b1, C);
    free(d1); free(g1); free(b1); free(d2); free(g2); free(b2);
    ln_free(&c);
}

/* ------------------------------------------------------------------ activations */

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }
static double ref_gelu(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double ref_quick_gelu(double x) { return x / (1.0 + exp(-1.702 * x)); }

typedef void (*act_fwd_fn)(float *, const float *, size_t);
typedef void (*act_bwd_fn)(float *, const float *, const float *, size_t);

typedef struct {
    const char *name;
    act_fwd_fn fwd;
    act_bwd_fn bwd;
    double (*ref)(double);
} act_t;

static const act_t ACTS[] = {
    {"silu", silu_forward, silu_backward, ref_silu},
    {"gelu", gelu_forward, gelu_backward, ref_gelu},
    {"quick_gelu", quick_gelu_forward, quick_gelu_backward, ref_quick_gelu},
};

typedef struct {
    const act_t *act;
    float *inp, *w, *out;
    size_t n;
} act_ctx;

static double act_loss(void *p) {
    act_ctx *c = p;
    c->act->fwd(c->out, c->inp, c->n);
    return dot_loss(c->out, c->w, c->n);
}

/* ops/fastmath.h against double precision on dense grids: exp to a relative 2e-7 over its
 * whole clamped range, erf to an absolute 3e-7 (the figure its comment promises), sigmoid
 * to an absolute 2e-7, and erf odd and saturating at +-1. */
static void test_fastmath_accuracy(void **state) {
    (void)state;
    double worst_exp = 0, worst_erf = 0, worst_sig = 0;
    for (int i = 0; i <= 1000000; i++) {
        const float x = -87.0f + 175.0f * (float)i / 1000000.0f;
        const double e = exp((double)x);
        const double rel = fabs((double)exp_approx(x) - e) / e;
        if (rel > worst_exp) worst_exp = rel;
        const double ds = fabs((double)sigmoid_approx(x) - 1.0 / (1.0 + exp(-(double)x)));
        if (ds > worst_sig) worst_sig = ds;
        const float z = -10.0f + 20.0f * (float)i / 1000000.0f;
        const double de = fabs((double)erf_approx(z) - erf((double)z));
        if (de > worst_erf) worst_erf = de;
        assert_true(erf_approx(-z) == -erf_approx(z));
    }
    if (worst_exp > 2e-7 || worst_erf > 3e-7 || worst_sig > 2e-7)
        fail_msg("fastmath: worst exp rel %.3g, erf abs %.3g, sigmoid abs %.3g", worst_exp, worst_erf, worst_sig);
    assert_true(erf_approx(30.0f) == 1.0f && erf_approx(-30.0f) == -1.0f);
    assert_true(erf_approx(0.0f) == 0.0f || fabsf(erf_approx(0.0f)) < 3e-7f);
}

static void test_activations(void **state) {
    (void)state;
    for (size_t a = 0; a < sizeof ACTS / sizeof ACTS[0]; a++) {
        const act_t *act = &ACTS[a];
        trng_t r;
        trng_seed(&r, 50 + a);
        size_t n = 200;
        act_ctx c = {act, alloc_normal(&r, n, 3.0f), alloc_normal(&r, n, 1.0f), alloc_zeros(n), n};
        c.inp[0] = 0.0f; c.inp[1] = -30.0f; c.inp[2] = 30.0f; c.inp[3] = -100.0f;  /* tails */
        float *want = alloc_zeros(n);
        for (size_t i = 0; i < n; i++) want[i] = (float)act->ref(c.inp[i]);
        act->fwd(c.out, c.inp, n);
        char name[64];
        snprintf(name, sizeof name, "%s forward", act->name);
        assert_close(name, c.out, want, n, 2e-7);
        /* in place (out aliases inp) */
        float *inplace = dup(c.inp, n);
        act->fwd(inplace, inplace, n);
        assert_same_bytes(name, inplace, c.out, n);
        free(inplace);

        /* gradient: fd away from the saturated tails */
        for (int i = 0; i < 4; i++) c.inp[i] = 0.1f * (float)i - 0.2f;
        float *g1 = alloc_zeros(n), *g2 = alloc_zeros(n);
        act->bwd(g1, c.w, c.inp, n);
        snprintf(name, sizeof name, "%s dinp", act->name);
        fd_check(name, c.inp, g1, n, FD_PROBES, act_loss, &c, FD_H, FD_TOL);
        act->bwd(g2, c.w, c.inp, n);
        act->bwd(g2, c.w, c.inp, n);
        assert_doubled(name, g2, g1, n);
        act->bwd(NULL, c.w, c.inp, n);
        free(g1); free(g2); free(want);
        free(c.inp); free(c.w); free(c.out);
    }
}

/* The analytic derivatives against double-precision derivatives of the references at
 * many points (a tighter check than fd). */
static void test_activation_derivatives(void **state) {
    (void)state;
    size_t n = 401;
    float *x = alloc_zeros(n), *ones = alloc_zeros(n), *want = alloc_zeros(n);
    for (size_t i = 0; i < n; i++) {
        x[i] = -10.0f + 0.05f * (float)i;
        ones[i] = 1.0f;
    }
    for (size_t a = 0; a < sizeof ACTS / sizeof ACTS[0]; a++) {
        const act_t *act = &ACTS[a];
        float *g = alloc_zeros(n);
        act->bwd(g, ones, x, n);
        for (size_t i = 0; i < n; i++) {
            double xd = x[i], h = 1e-4;
            want[i] = (float)((act->ref(xd + h) - act->ref(xd - h)) / (2 * h));
        }
        assert_close(act->name, g, want, n, 1e-6);
        free(g);
    }
    free(x); free(ones); free(want);
}

/* ------------------------------------------------------------------ GEGLU */

typedef struct {
    float *inp, *w, *out;
    int N, C;
} geglu_ctx;

static double geglu_loss(void *p) {
    geglu_ctx *c = p;
    geglu_forward(c->out, c->inp, c->N, c->C);
    return dot_loss(c->out, c->w, (size_t)c->N * c->C);
}

static void test_geglu(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 61);
    int N = 3, C = 5;
    size_t nin = (size_t)N * 2 * C, nout = (size_t)N * C;
    geglu_ctx c = {alloc_normal(&r, nin, 1.5f), alloc_normal(&r, nout, 1.0f), alloc_zeros(nout), N, C};
    float *want = alloc_zeros(nout);
    /* diffusers: hidden, gate = proj(x).chunk(2, dim=-1); hidden * gelu(gate) */
    for (int n = 0; n < N; n++)
        for (int j = 0; j < C; j++)
            want[n * C + j] = (float)(c.inp[n * 2 * C + j] * ref_gelu(c.inp[n * 2 * C + C + j]));
    geglu_forward(c.out, c.inp, N, C);
    assert_close("geglu forward", c.out, want, nout, 1e-6);

    float *g1 = alloc_zeros(nin), *g2 = alloc_zeros(nin);
    geglu_backward(g1, c.w, c.inp, N, C);
    fd_check("geglu dinp", c.inp, g1, nin, FD_PROBES, geglu_loss, &c, FD_H, FD_TOL);
    geglu_backward(g2, c.w, c.inp, N, C);
    geglu_backward(g2, c.w, c.inp, N, C);
    assert_doubled("geglu dinp", g2, g1, nin);
    geglu_backward(NULL, c.w, c.inp, N, C);
    free(g1); free(g2); free(want);
    free(c.inp); free(c.w); free(c.out);
}

/* ------------------------------------------------------------------ upsample, concat */

typedef struct {
    float *inp, *w, *out;
    int B, C, H, W;
} up_ctx;

static double up_loss(void *p) {
    up_ctx *c = p;
    upsample_nearest2x_forward(c->out, c->inp, c->B, c->C, c->H, c->W);
    return dot_loss(c->out, c->w, (size_t)c->B * c->C * 4 * c->H * c->W);
}

static void test_upsample(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 71);
    int B = 2, C = 3, H = 3, W = 4;
    size_t nin = (size_t)B * C * H * W, nout = 4 * nin;
    up_ctx c = {alloc_normal(&r, nin, 1.0f), alloc_normal(&r, nout, 1.0f), alloc_zeros(nout), B, C, H, W};
    float *want = alloc_zeros(nout);
    for (int p = 0; p < B * C; p++)
        for (int y = 0; y < 2 * H; y++)
            for (int x = 0; x < 2 * W; x++)
                want[((size_t)p * 2 * H + y) * 2 * W + x] = c.inp[((size_t)p * H + y / 2) * W + x / 2];
    upsample_nearest2x_forward(c.out, c.inp, B, C, H, W);
    assert_same_bytes("upsample forward", c.out, want, nout);

    float *g1 = alloc_zeros(nin), *g2 = alloc_zeros(nin);
    upsample_nearest2x_backward(g1, c.w, B, C, H, W);
    fd_check("upsample dinp", c.inp, g1, nin, FD_PROBES, up_loss, &c, FD_H, FD_TOL);
    upsample_nearest2x_backward(g2, c.w, B, C, H, W);
    upsample_nearest2x_backward(g2, c.w, B, C, H, W);
    assert_doubled("upsample dinp", g2, g1, nin);
    upsample_nearest2x_backward(NULL, c.w, B, C, H, W);
    free(g1); free(g2); free(want);
    free(c.inp); free(c.w); free(c.out);
}

typedef struct {
    float *a, *b, *w, *out;
    int B, Ca, Cb, S;
} cat_ctx;

static double cat_loss(void *p) {
    cat_ctx *c = p;
    concat_channels_forward(c->out, c->a, c->b, c->B, c->Ca, c->Cb, c->S);
    return dot_loss(c->out, c->w, (size_t)c->B * (c->Ca + c->Cb) * c->S);
}

static void test_concat(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 81);
    int B = 2, Ca = 3, Cb = 2, S = 5;
    size_t na = (size_t)B * Ca * S, nb = (size_t)B * Cb * S, nout = na + nb;
    cat_ctx c = {alloc_normal(&r, na, 1.0f), alloc_normal(&r, nb, 1.0f), alloc_normal(&r, nout, 1.0f),
                 alloc_zeros(nout), B, Ca, Cb, S};
    float *want = alloc_zeros(nout);
    for (int i = 0; i < B; i++)
        for (int ch = 0; ch < Ca + Cb; ch++)
            for (int s = 0; s < S; s++)
                want[((size_t)i * (Ca + Cb) + ch) * S + s] =
                    ch < Ca ? c.a[((size_t)i * Ca + ch) * S + s] : c.b[((size_t)i * Cb + ch - Ca) * S + s];
    concat_channels_forward(c.out, c.a, c.b, B, Ca, Cb, S);
    assert_same_bytes("concat forward", c.out, want, nout);

    float *da = alloc_zeros(na), *db = alloc_zeros(nb);
    concat_channels_backward(da, db, c.w, B, Ca, Cb, S);
    fd_check("concat da", c.a, da, na, FD_PROBES, cat_loss, &c, FD_H, FD_TOL);
    fd_check("concat db", c.b, db, nb, FD_PROBES, cat_loss, &c, FD_H, FD_TOL);
    float *da2 = alloc_zeros(na), *db2 = alloc_zeros(nb);
    concat_channels_backward(da2, NULL, c.w, B, Ca, Cb, S);
    concat_channels_backward(NULL, db2, c.w, B, Ca, Cb, S);
    assert_same_bytes("concat da alone", da2, da, na);
    assert_same_bytes("concat db alone", db2, db, nb);
    concat_channels_backward(da2, db2, c.w, B, Ca, Cb, S);
    assert_doubled("concat da", da2, da, na);
    assert_doubled("concat db", db2, db, nb);
    concat_channels_backward(NULL, NULL, c.w, B, Ca, Cb, S);
    free(da); free(db); free(da2); free(db2); free(want);
    free(c.a); free(c.b); free(c.w); free(c.out);
}

/* ------------------------------------------------------------------ timestep embedding */

static void ref_timestep(float *out, const float *t, int B, int dim, int flip, double shift,
                         double max_period) {
    int half = dim / 2;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < half; i++) {
            double arg = t[b] * exp(-log(max_period) * i / (half - shift));
            out[(size_t)b * dim + (flip ? half : 0) + i] = (float)sin(arg);
            out[(size_t)b * dim + (flip ? 0 : half) + i] = (float)cos(arg);
        }
}

typedef struct {
    float *t, *w, *out;
    int B, dim, flip;
    float shift, max_period;
} ts_ctx;

static double ts_loss(void *p) {
    ts_ctx *c = p;
    timestep_embedding_forward(c->out, c->t, c->B, c->dim, c->flip, c->shift, c->max_period);
    return dot_loss(c->out, c->w, (size_t)c->B * c->dim);
}

static void test_timestep_embedding(void **state) {
    (void)state;
    /* {flip, shift, max_period}: SD UNet (True, 0), the diffusers default (False, 1). */
    const struct { int flip; float shift, max_period; } cfg[] = {
        {1, 0.0f, 10000.0f}, {0, 1.0f, 10000.0f}, {1, 1.0f, 100.0f}};
    for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
        trng_t r;
        trng_seed(&r, 91 + k);
        int B = 4, dim = 16;
        size_t n = (size_t)B * dim;
        float t_small[4], t_big[4] = {0.0f, 1.0f, 500.0f, 999.0f};
        fill_uniform(&r, t_small, 4, 0.0f, 5.0f);
        float *out = alloc_zeros(n), *want = alloc_zeros(n);
        ref_timestep(want, t_small, B, dim, cfg[k].flip, cfg[k].shift, cfg[k].max_period);
        timestep_embedding_forward(out, t_small, B, dim, cfg[k].flip, cfg[k].shift, cfg[k].max_period);
        assert_close("timestep embedding (small t)", out, want, n, 2e-6);
        /* Large t: float frequencies (as diffusers computes them) carry ~1e-7 relative
         * error, i.e. ~1e-4 absolute in the phase at t = 999. */
        ref_timestep(want, t_big, B, dim, cfg[k].flip, cfg[k].shift, cfg[k].max_period);
        timestep_embedding_forward(out, t_big, B, dim, cfg[k].flip, cfg[k].shift, cfg[k].max_period);
        assert_close("timestep embedding (large t)", out, want, n, 1e-3);
        /* t = 0: sin part 0, cos part 1 (pins down the halves' order). */
        int sin_off = cfg[k].flip ? dim / 2 : 0;
        for (int i = 0; i < dim / 2; i++) {
            assert_true(out[sin_off + i] == 0.0f);
            assert_true(out[(dim / 2 - sin_off) + i] == 1.0f);
        }

        ts_ctx c = {t_small, alloc_normal(&r, n, 1.0f), out, B, dim, cfg[k].flip, cfg[k].shift,
                    cfg[k].max_period};
        float dt[4] = {0}, dt2[4] = {0};
        timestep_embedding_backward(dt, c.w, t_small, B, dim, c.flip, c.shift, c.max_period);
        fd_check("timestep embedding dt", t_small, dt, B, FD_PROBES, ts_loss, &c, FD_H, FD_TOL);
        timestep_embedding_backward(dt2, c.w, t_small, B, dim, c.flip, c.shift, c.max_period);
        timestep_embedding_backward(dt2, c.w, t_small, B, dim, c.flip, c.shift, c.max_period);
        assert_doubled("timestep embedding dt", dt2, dt, B);
        timestep_embedding_backward(NULL, c.w, t_small, B, dim, c.flip, c.shift, c.max_period);
        free(c.w); free(out); free(want);
    }
}

/* ------------------------------------------------------------------ MSE */

typedef struct {
    float *pred, *target;
    size_t n;
    float dloss;
} mse_ctx;

static double mse_loss(void *p) {
    mse_ctx *c = p;
    return (double)c->dloss * mse_forward(c->pred, c->target, c->n);
}

static void test_mse(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 101);
    size_t sizes[] = {1, 37, 200000};   /* the last spans several partial-sum chunks */
    for (size_t k = 0; k < 3; k++) {
        size_t n = sizes[k];
        float *pred = alloc_normal(&r, n, 1.0f), *target = alloc_normal(&r, n, 1.0f);
        add_const(pred, n, 3.0f);
        double s = 0;
        for (size_t i = 0; i < n; i++) s += ((double)pred[i] - target[i]) * ((double)pred[i] - target[i]);
        float want = (float)(s / n), got = mse_forward(pred, target, n);
        assert_close("mse forward", &got, &want, 1, 1e-6);
        float *g1 = alloc_zeros(n), *g2 = alloc_zeros(n);
        mse_backward(g1, pred, target, n, 0.7f);
        mse_backward(g2, pred, target, n, 0.7f);
        mse_backward(g2, pred, target, n, 0.7f);
        assert_doubled("mse dpred", g2, g1, n);
        mse_backward(NULL, pred, target, n, 0.7f);
        if (n < 1000) {
            mse_ctx c = {pred, target, n, 0.7f};
            fd_check("mse dpred", pred, g1, n, FD_PROBES, mse_loss, &c, FD_H, FD_TOL);
        }
        free(pred); free(target); free(g1); free(g2);
    }
    assert_true(mse_forward(NULL, NULL, 0) == 0.0f);
}

/* ------------------------------------------------------------------ determinism */

/* Runs every op at sizes that take the OpenMP paths and returns all outputs and gradients
 * concatenated (malloc'ed, *n_out floats). */
static float *run_all(int threads, size_t *n_out) {
    omp_set_num_threads(threads);
    trng_t r;
    trng_seed(&r, 2024);
    int B = 2, C = 64, S = 256, G = 32, N = 700, LC = 96;
    size_t ngn = (size_t)B * C * S, nln = (size_t)N * LC, nact = 100000;
    size_t total = 2 * ngn + 2 * C + 2 * B * G + 2 * nln + 2 * LC + 2 * N + 3 * 2 * nact +
                   3 * nact / 2 + 4 * ngn + ngn + 1 + nact;
    float *res = alloc_zeros(total), *p = res;
    size_t nx = nact;   /* >= ngn, nln: x serves as every op's input or dout */
    assert_true(nx >= ngn && nx >= nln && 4 * ngn >= nact);
    float *x = alloc_normal(&r, nx, 1.0f), *w = alloc_normal(&r, 4 * ngn, 1.0f);
    float *gamma = alloc_normal(&r, C > LC ? C : LC, 1.0f), *beta = alloc_normal(&r, C > LC ? C : LC, 1.0f);
    add_const(x, nx, 3.0f);

    float *out = p, *mean = p + ngn, *rstd = mean + B * G; p = rstd + B * G;
    groupnorm_forward(out, mean, rstd, x, gamma, beta, B, C, S, G, 1e-5f);
    groupnorm_backward(p, p + ngn, p + ngn + C, w, x, gamma, mean, rstd, B, C, S, G);
    p += ngn + 2 * C;

    out = p; mean = p + nln; rstd = mean + N; p = rstd + N;
    layernorm_forward(out, mean, rstd, x, gamma, beta, N, LC, 1e-5f);
    layernorm_backward(p, p + nln, p + nln + LC, w, x, gamma, mean, rstd, N, LC);
    p += nln + 2 * LC;

    for (size_t a = 0; a < sizeof ACTS / sizeof ACTS[0]; a++) {
        ACTS[a].fwd(p, w, nact);
        ACTS[a].bwd(p + nact, x, w, nact);
        p += 2 * nact;
    }
    geglu_forward(p, w, (int)(nact / 2 / 100), 100);
    geglu_backward(p + nact / 2, x, w, (int)(nact / 2 / 100), 100);
    p += nact / 2 + nact;

    upsample_nearest2x_forward(p, x, B, C, 16, 16);
    p += 4 * ngn;
    upsample_nearest2x_backward(p, w, B, C, 16, 16);
    p += ngn;

    *p++ = mse_forward(x, w, nact);
    mse_backward(p, x, w, nact, 1.3f);
    p += nact;
    assert_true((size_t)(p - res) == total);

    free(x); free(w); free(gamma); free(beta);
    *n_out = total;
    return res;
}

static void test_determinism(void **state) {
    (void)state;
    int saved = omp_get_max_threads();
    size_t n1, n2, n3;
    float *a = run_all(2, &n1);
    float *b = run_all(2, &n2);
    float *c = run_all(1, &n3);
    omp_set_num_threads(saved);
    assert_int_equal(n1, n2);
    assert_int_equal(n1, n3);
    assert_same_bytes("same inputs, same threads", a, b, n1);
    /* The reductions use fixed chunks, so the thread count does not matter either. */
    assert_same_bytes("1 thread vs 2 threads", a, c, n1);
    free(a); free(b); free(c);
}

static int teardown(void **state) {
    (void)state;
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groupnorm_forward),
        cmocka_unit_test(test_groupnorm_backward),
        cmocka_unit_test(test_groupnorm_accumulate_and_null),
        cmocka_unit_test(test_layernorm_forward),
        cmocka_unit_test(test_layernorm_backward),
        cmocka_unit_test(test_layernorm_param_grads_many_rows),
        cmocka_unit_test(test_layernorm_accumulate_and_null),
        cmocka_unit_test(test_fastmath_accuracy),
        cmocka_unit_test(test_activations),
        cmocka_unit_test(test_activation_derivatives),
        cmocka_unit_test(test_geglu),
        cmocka_unit_test(test_upsample),
        cmocka_unit_test(test_concat),
        cmocka_unit_test(test_timestep_embedding),
        cmocka_unit_test(test_mse),
        cmocka_unit_test(test_determinism),
    };
    return RUN_TESTS(argc, argv, "ops_misc", tests, NULL, teardown);
}
