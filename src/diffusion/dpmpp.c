/* DPM-Solver++ 2M (diffusers scheduling_dpmsolver_multistep.py with algorithm_type dpmsolver++,
 * solver_order 2, solver_type midpoint, final_sigmas_type zero): a multistep solver in
 * log-SNR time on data (x0) predictions, first order on the first and the last step. */
#include "diffusion/diffusion.h"

#include <math.h>
#include <string.h>

/* alpha_t = 1/sqrt(sigma^2+1), sigma_t = sigma alpha_t, lambda = log alpha_t - log sigma_t. */
static void alpha_sigma(double sigma, double *alpha_t, double *sigma_t) {
    *alpha_t = 1.0 / sqrt(sigma * sigma + 1.0);
    *sigma_t = sigma * *alpha_t;
}

void dpmpp_2m_step(sampler_t *s, int i, float *x, const float *model_out) {
    int N = s->num_steps;
    double a_s0, s_s0, a_t, s_t;
    alpha_sigma(s->sigmas[i], &a_s0, &s_s0);
    alpha_sigma(s->sigmas[i + 1], &a_t, &s_t);
    /* diffusers: lower_order_final holds on the last step whenever the final sigma is zero
     * (or, with lower_order_final, fewer than 15 steps); the first step has no history. */
    int first_order = s->lower_order_nums < 1 || i == N - 1;
    /* convert_model_output: the data prediction x0 at sigma_i. */
    float cx, cm;
    switch (s->pred) {
    case PRED_EPSILON: cx = (float)(1.0 / a_s0); cm = (float)(-s_s0 / a_s0); break;
    case PRED_V:       cx = (float)a_s0; cm = (float)-s_s0; break;
    default:           cx = 0.0f; cm = 1.0f; break;
    }
    /* x_t = (sigma_t / sigma_s0) x - alpha_t (e^-h - 1) (D0 [+ D1 / 2]); with sigma_t = 0
     * (the final step) h is infinite and x_t = x0 exactly. */
    double c_x, c_d;
    if (s_t == 0.0) {
        c_x = 0.0;
        c_d = 1.0;
    } else {
        double h = (log(a_t) - log(s_t)) - (log(a_s0) - log(s_s0));
        c_x = s_t / s_s0;
        c_d = -a_t * expm1(-h);
    }
    float fx = (float)c_x, fd = (float)c_d;
    float *prev = s->prev_x0;
    if (first_order) {
        #pragma omp parallel for schedule(static) if (s->n >= 65536)
        for (size_t j = 0; j < s->n; j++) {
            float x0 = cx * x[j] + cm * model_out[j];
            x[j] = fx * x[j] + fd * x0;
            prev[j] = x0;
        }
    } else {
        double a_s1, s_s1;
        alpha_sigma(s->sigmas[i - 1], &a_s1, &s_s1);
        double h = (log(a_t) - log(s_t)) - (log(a_s0) - log(s_s0));
        double h0 = (log(a_s0) - log(s_s0)) - (log(a_s1) - log(s_s1));
        /* D1 = (m0 - m1) / r0 with r0 = h0 / h; midpoint: x_t = c_x x + c_d (m0 + D1 / 2). */
        float half_inv_r0 = (float)(0.5 * h / h0);
        #pragma omp parallel for schedule(static) if (s->n >= 65536)
        for (size_t j = 0; j < s->n; j++) {
            float m0 = cx * x[j] + cm * model_out[j];
            float d = m0 + half_inv_r0 * (m0 - prev[j]);
            x[j] = fx * x[j] + fd * d;
            prev[j] = m0;
        }
    }
    if (s->lower_order_nums < 2) s->lower_order_nums++;
}
