/* Euler steps in sigma space: deterministic (diffusers scheduling_euler_discrete.py, s_churn 0)
 * and ancestral (scheduling_euler_ancestral_discrete.py). The sample lives at scale
 * sqrt(sigma^2 + 1); the model saw it divided by that (sampler_input_scale). */
#include "diffusion/diffusion.h"

#include <math.h>

/* x0 = x - sigma m (eps), m (-sigma/sqrt(sigma^2+1)) + x/(sigma^2+1) (v), or m (sample):
 * written as x0 = cx x + cm m. */
static void x0_coeffs(prediction_type_t pred, double sigma, float *cx, float *cm) {
    switch (pred) {
    case PRED_EPSILON: *cx = 1.0f; *cm = (float)-sigma; break;
    case PRED_V:
        *cx = (float)(1.0 / (sigma * sigma + 1.0));
        *cm = (float)(-sigma / sqrt(sigma * sigma + 1.0));
        break;
    default: *cx = 0.0f; *cm = 1.0f; break;   /* PRED_SAMPLE */
    }
}

/* x + (x - x0) / sigma * dt [+ sigma_up z] */
static void euler_update(sampler_t *s, float *x, const float *model_out, double sigma, double dt,
                         const float *noise, float sigma_up) {
    float cx, cm;
    x0_coeffs(s->pred, sigma, &cx, &cm);
    float ratio = (float)(dt / sigma);
    #pragma omp parallel for schedule(static) if (s->n >= 65536)
    for (size_t j = 0; j < s->n; j++) {
        float x0 = cx * x[j] + cm * model_out[j];
        float v = x[j] + (x[j] - x0) * ratio;
        if (noise) v += noise[j] * sigma_up;
        x[j] = v;
    }
}

void euler_step(sampler_t *s, int i, float *x, const float *model_out) {
    double sigma = s->sigmas[i], next = s->sigmas[i + 1];
    euler_update(s, x, model_out, sigma, next - sigma, NULL, 0.0f);
}

void euler_ancestral_step(sampler_t *s, int i, float *x, const float *model_out, const float *noise) {
    double from = s->sigmas[i], to = s->sigmas[i + 1];
    double up = sqrt(to * to * (from * from - to * to) / (from * from));
    double down = sqrt(fmax(to * to - up * up, 0.0));
    euler_update(s, x, model_out, from, down - from, noise, (float)up);
}
