/* AdamW and gradient clipping against a double-precision transcription of
 * torch.optim.AdamW's update and torch.nn.utils.clip_grad_norm_. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

#include "train/optim.h"

static void test_adamw_matches_reference(void **state) {
    (void)state;
    trng_t r;
    trng_seed(&r, 61);
    const int n = 37, steps = 25;
    adamw_config_t cfg = adamw_defaults();
    cfg.lr = 3e-2f;
    float *p = alloc_normal(&r, n, 1), *m = alloc_zeros(n), *v = alloc_zeros(n), *g = alloc_zeros(n);
    double pd[37], md[37] = {0}, vd[37] = {0};
    for (int i = 0; i < n; i++) pd[i] = p[i];
    for (int t = 1; t <= steps; t++) {
        fill_normal(&r, g, n, 0.5f);
        adamw_step(p, g, m, v, n, t, &cfg);
        for (int i = 0; i < n; i++) {
            pd[i] *= 1.0 - (double)cfg.lr * cfg.weight_decay;
            md[i] = cfg.beta1 * md[i] + (1 - (double)cfg.beta1) * g[i];
            vd[i] = cfg.beta2 * vd[i] + (1 - (double)cfg.beta2) * (double)g[i] * g[i];
            double mh = md[i] / (1 - pow(cfg.beta1, t)), vh = vd[i] / (1 - pow(cfg.beta2, t));
            pd[i] -= cfg.lr * mh / (sqrt(vh) + cfg.eps);
        }
    }
    for (int i = 0; i < n; i++) assert_true(fabs(p[i] - pd[i]) < 1e-5 * (1 + fabs(pd[i])));
    free(p), free(m), free(v), free(g);
}

static void test_adamw_first_step_is_sign(void **state) {
    (void)state; /* step 1 without decay: m_hat/sqrt(v_hat) = sign(g), so p moves by lr */
    adamw_config_t cfg = adamw_defaults();
    cfg.weight_decay = 0;
    float p[3] = {1, 1, 1}, g[3] = {0.3f, -2.0f, 1e-3f}, m[3] = {0}, v[3] = {0};
    adamw_step(p, g, m, v, 3, 1, &cfg);
    assert_true(fabsf(p[0] - (1 - 1e-3f)) < 1e-6f);
    assert_true(fabsf(p[1] - (1 + 1e-3f)) < 1e-6f);
    assert_true(fabsf(p[2] - (1 - 1e-3f)) < 1e-5f);
}

/* Decoupled weight decay in closed form (a second check beside the reference transcription):
 * with a zero gradient the moments stay 0 and each step only decays, so after k steps
 * p = p0 (1 - lr wd)^k, whatever p0's sign and size. L2 regularisation folded into the gradient
 * (Adam, not AdamW) would instead move every p by about lr per step. */
static void test_adamw_decay_closed_form(void **state) {
    (void)state;
    adamw_config_t cfg = adamw_defaults();
    cfg.lr = 0.05f, cfg.weight_decay = 0.3f;
    float p[4] = {2.0f, -0.5f, 1e-3f, 40.0f}, g[4] = {0}, m[4] = {0}, v[4] = {0};
    const float p0[4] = {2.0f, -0.5f, 1e-3f, 40.0f};
    for (int t = 1; t <= 5; t++) {
        adamw_step(p, g, m, v, 4, t, &cfg);
        const double f = pow(1.0 - (double)cfg.lr * cfg.weight_decay, t);
        for (int i = 0; i < 4; i++) {
            if (!(fabs(p[i] - p0[i] * f) <= 1e-6 * fabs(p0[i]))) {
                print_error("step %d: p[%d] = %.9g, want %.9g * (1 - lr wd)^%d = %.9g\n", t, i, p[i], p0[i], t, p0[i] * f);
                fail();
            }
            assert_true(m[i] == 0 && v[i] == 0);
        }
    }
}

static void test_clip_grad_norm(void **state) {
    (void)state;
    float a[2] = {3, 0}, b[1] = {4};
    float *gs[2] = {a, b};
    size_t sizes[2] = {2, 1};
    double norm = clip_grad_norm(gs, sizes, 2, 1.0);
    assert_true(fabs(norm - 5.0) < 1e-9);
    assert_true(fabsf(a[0] - 0.6f) < 1e-5f && fabsf(b[0] - 0.8f) < 1e-5f);
    norm = clip_grad_norm(gs, sizes, 2, 10.0);   /* under the limit: untouched */
    assert_true(fabs(norm - 1.0) < 1e-5 && fabsf(a[0] - 0.6f) < 1e-5f);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adamw_matches_reference),
        cmocka_unit_test(test_adamw_first_step_is_sign),
        cmocka_unit_test(test_adamw_decay_closed_form),
        cmocka_unit_test(test_clip_grad_norm),
    };
    return RUN_TESTS(argc, argv, "optim", tests, NULL, NULL);
}
