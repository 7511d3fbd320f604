/* Tests of attention.c: forward and probabilities against a naive double-precision reference
 * with materialised scores, finite-difference checks of dq/dk/dv, accumulation, NULL
 * gradients, determinism, and the memory bound at 4096 tokens (B=1, H=8, D=40). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

#include "base/error.h"
#include "base/scratch.h"
#include "ops/ops.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

typedef struct {
    int B, Tq, Tk, H, D, causal;
    float scale;
} shape_t;

static size_t q_numel(const shape_t *s) { return (size_t)s->B * s->Tq * s->H * s->D; }
static size_t k_numel(const shape_t *s) { return (size_t)s->B * s->Tk * s->H * s->D; }
static size_t lse_numel(const shape_t *s) { return (size_t)s->B * s->H * s->Tq; }

/* Naive reference in double: materialises every score row. probs (optional) is
 * [B, H, Tq, Tk]; out [B, Tq, H*D]; lse [B, H, Tq]. */
static void ref_attention(double *out, double *lse, double *probs, const float *q, const float *k,
                          const float *v, const shape_t *s) {
    const int HD = s->H * s->D;
    double *row = malloc((size_t)s->Tk * sizeof(double));
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->Tq; i++) {
                const float *qi = q + ((size_t)b * s->Tq + i) * HD + h * s->D;
                double mx = -INFINITY;
                for (int j = 0; j < s->Tk; j++) {
                    if (s->causal && j > i) { row[j] = -INFINITY; continue; }
                    const float *kj = k + ((size_t)b * s->Tk + j) * HD + h * s->D;
                    double dot = 0;
                    for (int d = 0; d < s->D; d++) dot += (double)qi[d] * kj[d];
                    row[j] = dot * s->scale;
                    if (row[j] > mx) mx = row[j];
                }
                double sum = 0;
                for (int j = 0; j < s->Tk; j++) sum += exp(row[j] - mx);
                for (int j = 0; j < s->Tk; j++) row[j] = exp(row[j] - mx) / sum;
                if (lse) lse[((size_t)b * s->H + h) * s->Tq + i] = mx + log(sum);
                if (probs)
                    memcpy(probs + (((size_t)b * s->H + h) * s->Tq + i) * s->Tk, row,
                           (size_t)s->Tk * sizeof(double));
                for (int d = 0; d < s->D; d++) {
                    double acc = 0;
                    for (int j = 0; j < s->Tk; j++)
                        acc += row[j] * v[((size_t)b * s->Tk + j) * HD + h * s->D + d];
                    out[((size_t)b * s->Tq + i) * HD + h * s->D + d] = acc;
                }
            }
    free(row);
}

static float *to_float(const double *x, size_t n) {
    float *y = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
    return y;
}

/* Forward against the reference: out and lse. */
static void check_forward(shape_t s, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    const size_t nq = q_numel(&s), nk = k_numel(&s), nl = lse_numel(&s);
    float *q = alloc_normal(&r, nq, 1.0f), *k = alloc_normal(&r, nk, 1.0f);
    float *v = alloc_normal(&r, nk, 1.0f);
    float *out = alloc_zeros(nq), *lse = alloc_zeros(nl);
    double *rout = malloc(nq * sizeof(double)), *rlse = malloc(nl * sizeof(double));
    attention_forward(out, lse, q, k, v, s.B, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
    ref_attention(rout, rlse, NULL, q, k, v, &s);
    float *fout = to_float(rout, nq), *flse = to_float(rlse, nl);
    assert_close("attention out", out, fout, nq, 1e-5);
    assert_close("attention lse", lse, flse, nl, 1e-5);
    free(q); free(k); free(v); free(out); free(lse); free(rout); free(rlse); free(fout); free(flse);
}

static void test_forward_self(void **state) {
    shape_t s = {.B = 2, .Tq = 9, .Tk = 9, .H = 3, .D = 4, .causal = 0, .scale = 0.5f};
    check_forward(s, 1);
}

static void test_forward_cross(void **state) {
    shape_t s = {.B = 2, .Tq = 7, .Tk = 5, .H = 3, .D = 4, .causal = 0, .scale = 0.5f};
    check_forward(s, 2);
}

static void test_forward_causal(void **state) {
    shape_t s = {.B = 2, .Tq = 9, .Tk = 9, .H = 3, .D = 4, .causal = 1, .scale = 0.5f};
    check_forward(s, 3);
}

/* 300 query rows: several blocks of 128 and a partial one (also with the causal mask, whose
 * key range grows block by block). */
static void test_forward_many_blocks(void **state) {
    shape_t s = {.B = 2, .Tq = 300, .Tk = 37, .H = 2, .D = 8, .causal = 0, .scale = 0.35f};
    check_forward(s, 4);
    shape_t c = {.B = 1, .Tq = 300, .Tk = 300, .H = 2, .D = 8, .causal = 1, .scale = 0.35f};
    check_forward(c, 5);
}

/* ---- gradients ---- */

typedef struct {
    shape_t s;
    float *q, *k, *v, *out, *lse, *w;
} fd_ctx_t;

static double fd_loss(void *p) {
    fd_ctx_t *c = p;
    attention_forward(c->out, c->lse, c->q, c->k, c->v, c->s.B, c->s.Tq, c->s.Tk, c->s.H, c->s.D,
                      c->s.scale, c->s.causal);
    return dot_loss(c->out, c->w, q_numel(&c->s));
}

static void check_gradients(shape_t s, uint64_t seed, size_t probes) {
    trng_t r;
    trng_seed(&r, seed);
    const size_t nq = q_numel(&s), nk = k_numel(&s);
    fd_ctx_t c = {.s = s};
    c.q = alloc_normal(&r, nq, 1.0f);
    c.k = alloc_normal(&r, nk, 1.0f);
    c.v = alloc_normal(&r, nk, 1.0f);
    c.w = alloc_normal(&r, nq, 1.0f);
    c.out = alloc_zeros(nq);
    c.lse = alloc_zeros(lse_numel(&s));
    float *dq = alloc_zeros(nq), *dk = alloc_zeros(nk), *dv = alloc_zeros(nk);
    fd_loss(&c);
    /* d loss / d out = w */
    attention_backward(dq, dk, dv, c.w, c.q, c.k, c.v, c.out, c.lse, s.B, s.Tq, s.Tk, s.H, s.D,
                       s.scale, s.causal);
    double eq = fd_check("dq", c.q, dq, nq, probes, fd_loss, &c, 1e-2f, 1e-3);
    double ek = fd_check("dk", c.k, dk, nk, probes, fd_loss, &c, 1e-2f, 1e-3);
    double ev = fd_check("dv", c.v, dv, nk, probes, fd_loss, &c, 1e-2f, 1e-3);
    print_message("  B=%d Tq=%d Tk=%d H=%d D=%d causal=%d: fd worst dq %.2e dk %.2e dv %.2e\n",
                  s.B, s.Tq, s.Tk, s.H, s.D, s.causal, eq, ek, ev);
    free(c.q); free(c.k); free(c.v); free(c.w); free(c.out); free(c.lse);
    free(dq); free(dk); free(dv);
}

static void test_backward_self(void **state) {
    shape_t s = {.B = 2, .Tq = 9, .Tk = 9, .H = 3, .D = 4, .causal = 0, .scale = 0.5f};
    check_gradients(s, 11, 1000);
}

static void test_backward_cross(void **state) {
    shape_t s = {.B = 2, .Tq = 7, .Tk = 5, .H = 3, .D = 4, .causal = 0, .scale = 0.5f};
    check_gradients(s, 12, 1000);
}

static void test_backward_causal(void **state) {
    shape_t s = {.B = 2, .Tq = 9, .Tk = 9, .H = 3, .D = 4, .causal = 1, .scale = 0.5f};
    check_gradients(s, 13, 1000);
}

/* Several query blocks accumulating into the same dK/dV rows (causal, so the blocks also see
 * different key ranges). */
static void test_backward_many_blocks(void **state) {
    shape_t s = {.B = 1, .Tq = 300, .Tk = 300, .H = 2, .D = 4, .causal = 1, .scale = 0.5f};
    check_gradients(s, 14, 24);
}

/* ---- probabilities ---- */

static void check_probs(shape_t s, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    const size_t nq = q_numel(&s), nk = k_numel(&s), nl = lse_numel(&s);
    float *q = alloc_normal(&r, nq, 1.0f), *k = alloc_normal(&r, nk, 1.0f);
    float *v = alloc_normal(&r, nk, 1.0f);
    float *out = alloc_zeros(nq), *lse = alloc_zeros(nl);
    double *rout = malloc(nq * sizeof(double));
    double *rp = malloc((size_t)s.B * s.H * s.Tq * s.Tk * sizeof(double));
    attention_forward(out, lse, q, k, v, s.B, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
    ref_attention(rout, NULL, rp, q, k, v, &s);
    /* rows [q0, q0 + n) of every (b, h): a window that starts off zero */
    const int q0 = s.Tq / 3, n = s.Tq - q0 - 1;
    float *p = malloc((size_t)n * s.Tk * sizeof(float));
    for (int b = 0; b < s.B; b++)
        for (int h = 0; h < s.H; h++) {
            attention_probs(p, q, k, lse, b, h, q0, n, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
            float *want = to_float(rp + (((size_t)b * s.H + h) * s.Tq + q0) * s.Tk, (size_t)n * s.Tk);
            assert_close("attention_probs", p, want, (size_t)n * s.Tk, 1e-5);
            for (int i = 0; i < n; i++) {
                double sum = 0;
                for (int j = 0; j < s.Tk; j++) {
                    sum += p[(size_t)i * s.Tk + j];
                    if (s.causal && j > q0 + i) assert_true(p[(size_t)i * s.Tk + j] == 0.0f);
                }
                if (fabs(sum - 1.0) > 1e-5) {
                    print_error("probs row %d of (b=%d, h=%d) sums to %.8f\n", q0 + i, b, h, sum);
                    fail();
                }
            }
            free(want);
        }
    free(q); free(k); free(v); free(out); free(lse); free(rout); free(rp); free(p);
}

static void test_probs(void **state) {
    shape_t s = {.B = 2, .Tq = 7, .Tk = 5, .H = 3, .D = 4, .causal = 0, .scale = 0.7f};
    check_probs(s, 21);
    shape_t c = {.B = 2, .Tq = 9, .Tk = 9, .H = 3, .D = 4, .causal = 1, .scale = 0.7f};
    check_probs(c, 22);
}

/* ---- accumulation, NULL gradients, determinism ---- */

typedef struct {
    shape_t s;
    size_t nq, nk;
    float *q, *k, *v, *out, *lse, *dout;
} problem_t;

static void problem_init(problem_t *p, shape_t s, uint64_t seed) {
    trng_t r;
    trng_seed(&r, seed);
    p->s = s;
    p->nq = q_numel(&s);
    p->nk = k_numel(&s);
    p->q = alloc_normal(&r, p->nq, 1.0f);
    p->k = alloc_normal(&r, p->nk, 1.0f);
    p->v = alloc_normal(&r, p->nk, 1.0f);
    p->dout = alloc_normal(&r, p->nq, 1.0f);
    p->out = alloc_zeros(p->nq);
    p->lse = alloc_zeros(lse_numel(&s));
    attention_forward(p->out, p->lse, p->q, p->k, p->v, s.B, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
}

static void problem_backward(const problem_t *p, float *dq, float *dk, float *dv) {
    const shape_t *s = &p->s;
    attention_backward(dq, dk, dv, p->dout, p->q, p->k, p->v, p->out, p->lse, s->B, s->Tq, s->Tk,
                       s->H, s->D, s->scale, s->causal);
}

static void problem_free(problem_t *p) {
    free(p->q); free(p->k); free(p->v); free(p->dout); free(p->out); free(p->lse);
}

static void test_accumulate_and_null(void **state) {
    /* 200 rows: two query blocks, so dK/dV accumulate across blocks too */
    shape_t s = {.B = 2, .Tq = 200, .Tk = 200, .H = 2, .D = 8, .causal = 1, .scale = 0.35f};
    problem_t p;
    problem_init(&p, s, 31);
    float *dq = alloc_zeros(p.nq), *dk = alloc_zeros(p.nk), *dv = alloc_zeros(p.nk);
    problem_backward(&p, dq, dk, dv);

    /* += : start from random values g0, expect g0 + grad */
    trng_t r;
    trng_seed(&r, 32);
    float *aq = alloc_normal(&r, p.nq, 1.0f), *ak = alloc_normal(&r, p.nk, 1.0f);
    float *av = alloc_normal(&r, p.nk, 1.0f);
    float *wq = malloc(p.nq * sizeof(float)), *wk = malloc(p.nk * sizeof(float));
    float *wv = malloc(p.nk * sizeof(float));
    for (size_t i = 0; i < p.nq; i++) wq[i] = aq[i] + dq[i];
    for (size_t i = 0; i < p.nk; i++) wk[i] = ak[i] + dk[i];
    for (size_t i = 0; i < p.nk; i++) wv[i] = av[i] + dv[i];
    problem_backward(&p, aq, ak, av);
    assert_close("dq accumulated", aq, wq, p.nq, 1e-5);
    assert_close("dk accumulated", ak, wk, p.nk, 1e-5);
    assert_close("dv accumulated", av, wv, p.nk, 1e-5);

    /* NULL pointers: each gradient alone equals the one computed with all three */
    float *oq = alloc_zeros(p.nq), *ok = alloc_zeros(p.nk), *ov = alloc_zeros(p.nk);
    problem_backward(&p, oq, NULL, NULL);
    problem_backward(&p, NULL, ok, NULL);
    problem_backward(&p, NULL, NULL, ov);
    assert_close("dq alone", oq, dq, p.nq, 1e-6);
    assert_close("dk alone", ok, dk, p.nk, 1e-6);
    assert_close("dv alone", ov, dv, p.nk, 1e-6);
    problem_backward(&p, NULL, NULL, NULL);  /* nothing wanted: must not touch anything */

    free(dq); free(dk); free(dv); free(aq); free(ak); free(av); free(wq); free(wk); free(wv);
    free(oq); free(ok); free(ov);
    problem_free(&p);
}

static void test_deterministic(void **state) {
    shape_t s = {.B = 2, .Tq = 150, .Tk = 150, .H = 3, .D = 8, .causal = 0, .scale = 0.35f};
    problem_t p;
    problem_init(&p, s, 41);
    float *out2 = alloc_zeros(p.nq), *lse2 = alloc_zeros(lse_numel(&s));
    attention_forward(out2, lse2, p.q, p.k, p.v, s.B, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
    assert_memory_equal(out2, p.out, p.nq * sizeof(float));
    assert_memory_equal(lse2, p.lse, lse_numel(&s) * sizeof(float));
    float *g[2][3];
    for (int t = 0; t < 2; t++) {
        g[t][0] = alloc_zeros(p.nq);
        g[t][1] = alloc_zeros(p.nk);
        g[t][2] = alloc_zeros(p.nk);
        problem_backward(&p, g[t][0], g[t][1], g[t][2]);
    }
    assert_memory_equal(g[0][0], g[1][0], p.nq * sizeof(float));
    assert_memory_equal(g[0][1], g[1][1], p.nk * sizeof(float));
    assert_memory_equal(g[0][2], g[1][2], p.nk * sizeof(float));
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < 3; i++) free(g[t][i]);
    free(out2); free(lse2);
    problem_free(&p);
}

/* ---- memory bound at SD 1.5's largest self-attention (64x64 latent) ---- */

/* A "VmHWM:" / "VmRSS:" line of /proc/self/status in bytes, or -1. */
static long proc_status_bytes(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kb = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0) {
            kb = strtol(line + n, NULL, 10);
            break;
        }
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void test_memory_4096(void **state) {
    /* Full size in the ASan build too: BLAS is not instrumented, so it stays ~10 s there. */
    const int T = 4096;
    shape_t s = {.B = 1, .Tq = T, .Tk = T, .H = 8, .D = 40, .causal = 0, .scale = 1.0f / sqrtf(40.0f)};
    const size_t nq = q_numel(&s), nl = lse_numel(&s);
    trng_t r;
    trng_seed(&r, 51);
    /* everything the caller owns is allocated and touched before the baseline */
    float *q = alloc_normal(&r, nq, 1.0f), *k = alloc_normal(&r, nq, 1.0f);
    float *v = alloc_normal(&r, nq, 1.0f), *dout = alloc_normal(&r, nq, 1.0f);
    float *out = alloc_zeros(nq), *lse = alloc_zeros(nl);
    float *dq = alloc_zeros(nq), *dk = alloc_zeros(nq), *dv = alloc_zeros(nq);
    memset(out, 0, nq * sizeof(float)); memset(lse, 0, nl * sizeof(float));
    memset(dq, 0, nq * sizeof(float)); memset(dk, 0, nq * sizeof(float));
    memset(dv, 0, nq * sizeof(float));

    /* Reset the peak RSS to the current RSS (Linux >= 4.0) so that earlier tests' peaks do
     * not hide this one's; if that is not possible the baseline is the old peak, which only
     * makes the measured growth smaller if earlier tests peaked higher (they do not). */
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    if (cr) { fputs("5", cr); fclose(cr); }
    const long hwm0 = proc_status_bytes("VmHWM:");
    scratch_reset_peak();
    const size_t scratch0 = scratch_peak_bytes();

    double t0 = now_s();
    attention_forward(out, lse, q, k, v, s.B, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
    double t1 = now_s();
    attention_backward(dq, dk, dv, dout, q, k, v, out, lse, s.B, s.Tq, s.Tk, s.H, s.D, s.scale, s.causal);
    double t2 = now_s();

    const long hwm1 = proc_status_bytes("VmHWM:");
    const size_t scratch_extra = scratch_peak_bytes() - scratch0;
    const double MB = 1024.0 * 1024.0;
    print_message("  T=%d H=8 D=40: forward %.3f s, backward %.3f s\n", T, t1 - t0, t2 - t1);
    print_message("  scratch peak on calling thread: %.2f MB\n", scratch_extra / MB);
    assert_true(scratch_extra < (size_t)64 << 20);
    if (UNDER_ASAN) {
        print_message("  VmHWM growth not checked: ASan shadow memory distorts RSS\n");
    } else if (hwm0 < 0 || hwm1 < 0) {
        print_message("  VmHWM growth not checked: /proc/self/status unreadable\n");
    } else {
        print_message("  VmHWM growth across forward+backward: %.2f MB\n", (hwm1 - hwm0) / MB);
        assert_true(hwm1 - hwm0 < 64L << 20);
    }

    /* Cheap checks that the big case computed something right:
     * - a few output rows against the double reference, every head;
     * - sum_j dV_j = sum_i dO_i (probability rows sum to 1);
     * - sum_j dK_j = 0 (each row of dS sums to 0). */
    const int HD = s.H * s.D;
    const int rows[3] = {0, T / 2 + 3, T - 1};
    for (int ri = 0; ri < 3; ri++)
        for (int h = 0; h < s.H; h++) {
            const int i = rows[ri];
            double *sc = malloc((size_t)T * sizeof(double));
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++) {
                double dot = 0;
                for (int d = 0; d < s.D; d++) dot += (double)q[(size_t)i * HD + h * s.D + d] * k[(size_t)j * HD + h * s.D + d];
                sc[j] = dot * s.scale;
                if (sc[j] > mx) mx = sc[j];
            }
            for (int j = 0; j < T; j++) sum += (sc[j] = exp(sc[j] - mx));
            float want[40], got[40];
            for (int d = 0; d < s.D; d++) {
                double acc = 0;
                for (int j = 0; j < T; j++) acc += sc[j] * v[(size_t)j * HD + h * s.D + d];
                want[d] = (float)(acc / sum);
                got[d] = out[(size_t)i * HD + h * s.D + d];
            }
            assert_close("out row (4096 case)", got, want, (size_t)s.D, 1e-4);
            assert_float_equal(lse[(size_t)h * T + i], (float)(mx + log(sum)), 1e-4);
            free(sc);
        }
    double worst_v = 0, worst_k = 0, mag_do = 0;
    for (int c = 0; c < HD; c++) {
        double sv = 0, sk = 0, so = 0;
        for (int j = 0; j < T; j++) {
            sv += dv[(size_t)j * HD + c];
            sk += dk[(size_t)j * HD + c];
            so += dout[(size_t)j * HD + c];
        }
        worst_v = fmax(worst_v, fabs(sv - so));
        worst_k = fmax(worst_k, fabs(sk));
        mag_do = fmax(mag_do, fabs(so));
    }
    print_message("  invariants: |sum dV - sum dO| %.2e (sum dO up to %.1f), |sum dK| %.2e\n",
                  worst_v, mag_do, worst_k);
    assert_true(worst_v < 1e-3 * fmax(mag_do, 1.0));
    assert_true(worst_k < 1e-2);

    free(q); free(k); free(v); free(dout); free(out); free(lse); free(dq); free(dk); free(dv);
}

static int teardown_scratch(void **state) {
    scratch_free_all();
    return 0;
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forward_self),
        cmocka_unit_test(test_forward_cross),
        cmocka_unit_test(test_forward_causal),
        cmocka_unit_test(test_forward_many_blocks),
        cmocka_unit_test(test_backward_self),
        cmocka_unit_test(test_backward_cross),
        cmocka_unit_test(test_backward_causal),
        cmocka_unit_test(test_backward_many_blocks),
        cmocka_unit_test(test_probs),
        cmocka_unit_test(test_accumulate_and_null),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_memory_4096),
    };
    return RUN_TESTS(argc, argv, "attention", tests, NULL, teardown_scratch);
}
