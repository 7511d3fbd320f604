/* Attention in the bf16 compute mode (attention_bf16.c) against the fp32 path (attention.c,
 * itself checked against a double reference and finite differences in test_attention.c):
 * out, lse and every gradient on SD-like shapes within the bf16 bound, the bf16 gradients
 * against finite differences of the fp32 loss, accumulation into the gradients, same bytes
 * twice and across thread counts, attention_probs consistent with the stored lse, small shapes
 * staying on the fp32 path. Skipped on CPUs without avx512_bf16. */
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/attention_bf16.h"
#include "ops/gemm.h"
#include "ops/ops.h"

/* the documented per-operator accuracy of --compute-dtype bf16 (as test_bf16.c) */
#define BF16_TOL 1e-2

static int have_bf16(void) {
    if (!strcmp(sd_bf16_kernel(), "none")) {
        print_message("no avx512_bf16 on this CPU: bf16 attention tests skipped\n");
        return 0;
    }
    return 1;
}

typedef struct {
    const char *name;
    int B, Tq, Tk, H, D, causal;
} shape_t;

/* Inputs, outputs and gradients of one problem; grads[m] for mode m (0 fp32, 1 bf16). */
typedef struct {
    shape_t s;
    size_t nq, nk, nl;
    float scale;
    float *q, *k, *v, *dout;
    float *out[2], *lse[2], *dq[2], *dk[2], *dv[2];
} problem_t;

static void problem_init(problem_t *p, shape_t s, uint64_t seed) {
    memset(p, 0, sizeof *p);
    p->s = s;
    p->nq = (size_t)s.B * s.Tq * s.H * s.D, p->nk = (size_t)s.B * s.Tk * s.H * s.D, p->nl = (size_t)s.B * s.H * s.Tq;
    p->scale = 1.0f / sqrtf((float)s.D);
    trng_t r;
    trng_seed(&r, seed);
    p->q = alloc_normal(&r, p->nq, 1.0f), p->k = alloc_normal(&r, p->nk, 1.0f);
    p->v = alloc_normal(&r, p->nk, 1.0f), p->dout = alloc_normal(&r, p->nq, 1.0f);
    for (int m = 0; m < 2; m++) {
        p->out[m] = alloc_zeros(p->nq), p->lse[m] = alloc_zeros(p->nl);
        p->dq[m] = alloc_zeros(p->nq), p->dk[m] = alloc_zeros(p->nk), p->dv[m] = alloc_zeros(p->nk);
    }
}

static void problem_free(problem_t *p) {
    free(p->q), free(p->k), free(p->v), free(p->dout);
    for (int m = 0; m < 2; m++) free(p->out[m]), free(p->lse[m]), free(p->dq[m]), free(p->dk[m]), free(p->dv[m]);
}

/* forward and backward in dtype dt into slot m (gradients accumulate into what it holds) */
static void problem_run_as(problem_t *p, int m, sd_compute_t dt) {
    const shape_t *s = &p->s;
    sd_set_compute_dtype(dt);
    attention_forward(p->out[m], p->lse[m], p->q, p->k, p->v, s->B, s->Tq, s->Tk, s->H, s->D, p->scale, s->causal);
    attention_backward(p->dq[m], p->dk[m], p->dv[m], p->dout, p->q, p->k, p->v, p->out[m], p->lse[m], s->B, s->Tq,
                       s->Tk, s->H, s->D, p->scale, s->causal);
    sd_set_compute_dtype(SD_COMPUTE_FP32);
}

/* slot 0: fp32 mode, slot 1: bf16 mode */
static void problem_run(problem_t *p, int m) { problem_run_as(p, m, m ? SD_COMPUTE_BF16 : SD_COMPUTE_FP32); }

/* max |a - b| over entries (printed for lse, a log, next to its relative error) */
static double max_abs_diff(const float *a, const float *b, size_t n) {
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

static void check_shape(shape_t s, uint64_t seed) {
    problem_t p;
    problem_init(&p, s, seed);
    assert_true(s.Tq * (double)s.Tk * s.D >= (1 << 22));
    sd_set_compute_dtype(SD_COMPUTE_BF16);
    assert_true(attention_bf16_applies(s.Tq, s.Tk, s.D));   /* the bf16 path really runs */
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    problem_run(&p, 0);
    problem_run(&p, 1);
    const double eo = rel_error(p.out[1], p.out[0], p.nq), el = rel_error(p.lse[1], p.lse[0], p.nl);
    const double ela = max_abs_diff(p.lse[1], p.lse[0], p.nl);
    const double eq = rel_error(p.dq[1], p.dq[0], p.nq), ek = rel_error(p.dk[1], p.dk[0], p.nk);
    const double ev = rel_error(p.dv[1], p.dv[0], p.nk);
    print_message("%-31s bf16 vs fp32: out %.2e lse %.2e (abs %.2e) dq %.2e dk %.2e dv %.2e\n", s.name, eo, el, ela,
                  eq, ek, ev);
    assert_close("out", p.out[1], p.out[0], p.nq, BF16_TOL);
    assert_close("lse", p.lse[1], p.lse[0], p.nl, BF16_TOL);
    assert_close("dq", p.dq[1], p.dq[0], p.nq, BF16_TOL);
    assert_close("dk", p.dk[1], p.dk[0], p.nk, BF16_TOL);
    assert_close("dv", p.dv[1], p.dv[0], p.nk, BF16_TOL);
    assert_true(eo > 1e-6 && eq > 1e-6);   /* rounded inputs: equal bytes would mean fp32 ran */
    problem_free(&p);
    scratch_free_all();
}

static void test_sd_self_d40(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    check_shape((shape_t){"self T 1030 (odd blocks), 2 x 40", 2, 1030, 1030, 2, 40, 0}, 1);
}

static void test_sd_self_d80_odd_t(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    check_shape((shape_t){"self T 517 (odd), 2 x 80", 1, 517, 517, 2, 80, 0}, 2);
}

static void test_sdxl_self_d64(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    check_shape((shape_t){"self T 520, 3 x 64", 2, 520, 520, 3, 64, 0}, 3);
}

static void test_causal_d64(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    check_shape((shape_t){"causal T 611, 2 x 64", 1, 611, 611, 2, 64, 1}, 4);
}

static void test_cross_tk77(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    check_shape((shape_t){"cross Tq 2100 x Tk 77, 2 x 40", 2, 2100, 77, 2, 40, 0}, 5);
}

static void test_odd_head_dim(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    check_shape((shape_t){"self T 700, 1 x 45 (odd D)", 1, 700, 700, 1, 45, 0}, 6);
}

/* ---- bf16 gradients against finite differences of the fp32 loss ----
 * bf16 rounding makes the bf16 loss a step function of its inputs, so the differences are
 * taken in fp32 (loss = sum out * w) and compared with the bf16 analytic gradient, loosely. */
typedef struct {
    problem_t *p;
    float *w, *out, *lse;
} fd_ctx_t;

static double fd_loss(void *ctx) {
    fd_ctx_t *c = ctx;
    const shape_t *s = &c->p->s;
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    attention_forward(c->out, c->lse, c->p->q, c->p->k, c->p->v, s->B, s->Tq, s->Tk, s->H, s->D, c->p->scale,
                      s->causal);
    return dot_loss(c->out, c->w, c->p->nq);
}

static void test_fd_gradients(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    problem_t p;
    problem_init(&p, (shape_t){"fd", 1, 330, 330, 1, 40, 1}, 7);
    problem_run(&p, 1);   /* bf16 gradients of sum out * dout */
    fd_ctx_t c = {.p = &p, .w = p.dout, .out = alloc_zeros(p.nq), .lse = alloc_zeros(p.nl)};
    const double eq = fd_check("dq", p.q, p.dq[1], p.nq, 24, fd_loss, &c, 1e-2f, 3e-2);
    const double ek = fd_check("dk", p.k, p.dk[1], p.nk, 24, fd_loss, &c, 1e-2f, 3e-2);
    const double ev = fd_check("dv", p.v, p.dv[1], p.nk, 24, fd_loss, &c, 1e-2f, 3e-2);
    print_message("bf16 gradients vs fp32 finite differences: worst dq %.2e dk %.2e dv %.2e\n", eq, ek, ev);
    free(c.out), free(c.lse);
    problem_free(&p);
    scratch_free_all();
}

/* Gradients accumulate (+=) into what the buffers hold, and NULL gradients are skipped. */
static void test_accumulate_and_null(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    problem_t p;
    const shape_t s = {"acc", 1, 400, 400, 2, 40, 0};
    problem_init(&p, s, 8);
    problem_run(&p, 1);   /* from zero: the bf16 gradients */
    trng_t r;
    trng_seed(&r, 12);
    float *pre = alloc_normal(&r, p.nk, 1.0f);
    float *dk = malloc(sizeof(float) * p.nk);
    memcpy(dk, pre, sizeof(float) * p.nk);
    sd_set_compute_dtype(SD_COMPUTE_BF16);
    attention_backward(NULL, dk, NULL, p.dout, p.q, p.k, p.v, p.out[1], p.lse[1], s.B, s.Tq, s.Tk, s.H, s.D, p.scale,
                       s.causal);
    sd_set_compute_dtype(SD_COMPUTE_FP32);
    for (size_t i = 0; i < p.nk; i++) assert_float_equal(dk[i], pre[i] + p.dk[1][i], 1e-5f * (1 + fabsf(pre[i])));
    free(pre), free(dk);
    problem_free(&p);
    scratch_free_all();
}

/* Same bytes twice, and with 1 thread as with 2 (the work splits over (b, h) / query blocks and
 * each element's sums run in a fixed order). */
static void test_deterministic(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    const shape_t s = {"det", 2, 520, 520, 2, 40, 0};
    problem_t a, b;
    problem_init(&a, s, 9);
    problem_init(&b, s, 9);
    const int threads = omp_get_max_threads();
    problem_run_as(&a, 0, SD_COMPUTE_BF16);
    problem_run_as(&a, 1, SD_COMPUTE_BF16);
    omp_set_num_threads(1);
    problem_run_as(&b, 1, SD_COMPUTE_BF16);
    omp_set_num_threads(threads);
    print_message("threads: %d and 1\n", threads);
    const problem_t *other[2] = {&a, &b};
    const int slot[2] = {0, 1};
    for (int i = 0; i < 2; i++) {
        const problem_t *o = other[i];
        const int m = slot[i];
        assert_memory_equal(o->out[m], a.out[1], sizeof(float) * a.nq);
        assert_memory_equal(o->lse[m], a.lse[1], sizeof(float) * a.nl);
        assert_memory_equal(o->dq[m], a.dq[1], sizeof(float) * a.nq);
        assert_memory_equal(o->dk[m], a.dk[1], sizeof(float) * a.nk);
        assert_memory_equal(o->dv[m], a.dv[1], sizeof(float) * a.nk);
    }
    problem_free(&a), problem_free(&b);
    scratch_free_all();
}

/* attention_probs in bf16 mode recomputes the forward's bf16 scores, so each row of
 * probabilities sums to 1 with the lse the bf16 forward stored (to fp32 rounding), and the
 * probabilities stay within the bf16 bound of fp32 mode's. */
static void test_probs_consistent(void **state) {
    (void)state;
    if (!have_bf16()) { skip(); }
    problem_t p;
    const shape_t s = {"probs", 1, 2100, 77, 2, 40, 0};
    problem_init(&p, s, 10);
    problem_run(&p, 0);
    problem_run(&p, 1);
    const int q0 = 37, nq = 150;
    float *pr[2] = {alloc_zeros((size_t)nq * s.Tk), alloc_zeros((size_t)nq * s.Tk)};
    double worst = 0;
    for (int h = 0; h < s.H; h++) {
        for (int m = 0; m < 2; m++) {
            sd_set_compute_dtype(m ? SD_COMPUTE_BF16 : SD_COMPUTE_FP32);
            attention_probs(pr[m], p.q, p.k, p.lse[m], 0, h, q0, nq, s.Tq, s.Tk, s.H, s.D, p.scale, 0);
        }
        sd_set_compute_dtype(SD_COMPUTE_FP32);
        for (int r = 0; r < nq; r++) {
            double sum = 0;
            for (int j = 0; j < s.Tk; j++) sum += pr[1][(size_t)r * s.Tk + j];
            worst = fmax(worst, fabs(sum - 1));
        }
        assert_close("probs", pr[1], pr[0], (size_t)nq * s.Tk, BF16_TOL);
    }
    print_message("bf16 probabilities: worst |row sum - 1| %.2e\n", worst);
    assert_true(worst <= 1e-4);
    free(pr[0]), free(pr[1]);
    problem_free(&p);
    scratch_free_all();
}

/* Small products (CLIP's 77 causal tokens) stay on the fp32 path: same bytes in both modes. */
static void test_small_stays_fp32(void **state) {
    (void)state;
    problem_t p;
    problem_init(&p, (shape_t){"clip", 2, 77, 77, 12, 64, 1}, 11);
    problem_run(&p, 0);
    problem_run(&p, 1);
    assert_memory_equal(p.out[0], p.out[1], sizeof(float) * p.nq);
    assert_memory_equal(p.dq[0], p.dq[1], sizeof(float) * p.nq);
    assert_memory_equal(p.dk[0], p.dk[1], sizeof(float) * p.nk);
    assert_memory_equal(p.dv[0], p.dv[1], sizeof(float) * p.nk);
    problem_free(&p);
    scratch_free_all();
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sd_self_d40),
        cmocka_unit_test(test_sd_self_d80_odd_t),
        cmocka_unit_test(test_sdxl_self_d64),
        cmocka_unit_test(test_causal_d64),
        cmocka_unit_test(test_cross_tk77),
        cmocka_unit_test(test_odd_head_dim),
        cmocka_unit_test(test_fd_gradients),
        cmocka_unit_test(test_accumulate_and_null),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_probs_consistent),
        cmocka_unit_test(test_small_stays_fp32),
    };
    return RUN_TESTS(argc, argv, "attention_bf16", tests, NULL, NULL);
}
