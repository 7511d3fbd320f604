/* DDIM steps: sampling with eta (diffusers scheduling_ddim.py) and inversion (diffusers
 * scheduling_ddim_inverse.py); the conventions are spelled out in diffusion.h. */
#include "diffusion/diffusion.h"

#include <math.h>

/* x0 and eps from the model output at level alpha (a): eps-, v- or x0-prediction. */
static inline void split_output(prediction_type_t pred, float sa, float sb, float x, float m,
                                float *x0, float *eps) {
    switch (pred) {
    case PRED_EPSILON: *x0 = (x - sb * m) / sa; *eps = m; break;
    case PRED_V:       *x0 = sa * x - sb * m; *eps = sa * m + sb * x; break;
    default:           *x0 = m; *eps = (x - sa * m) / sb; break;   /* PRED_SAMPLE */
    }
}

static inline float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

void ddim_step(sampler_t *s, int i, float *x, const float *model_out, const float *noise) {
    const noise_schedule_t *sc = s->sched;
    int t = (int)s->timesteps[i];
    int prev_t = t - s->step_ratio;
    double a = sc->alphas_cumprod[t];
    double a_prev = prev_t >= 0 ? sc->alphas_cumprod[prev_t]
                                : (sc->cfg.set_alpha_to_one ? 1.0 : sc->alphas_cumprod[0]);
    double variance = (1 - a_prev) / (1 - a) * (1 - a / a_prev);
    double std = s->eta * sqrt(variance);
    float sa = (float)sqrt(a), sb = (float)sqrt(1 - a);
    float c_x0 = (float)sqrt(a_prev);
    float c_eps = (float)sqrt(fmax(1 - a_prev - std * std, 0.0));
    float c_noise = (float)std;
    int clip = sc->cfg.clip_sample;
    float r = (float)sc->cfg.clip_sample_range;
    int with_noise = s->eta > 0;
    prediction_type_t pred = s->pred;
    #pragma omp parallel for schedule(static) if (s->n >= 65536)
    for (size_t j = 0; j < s->n; j++) {
        float x0, eps;
        split_output(pred, sa, sb, x[j], model_out[j], &x0, &eps);
        /* diffusers keeps the model's eps when clipping (use_clipped_model_output False). */
        if (clip) x0 = clampf(x0, -r, r);
        float v = c_x0 * x0 + c_eps * eps;
        if (with_noise) v += c_noise * noise[j];
        x[j] = v;
    }
}

void ddim_inverse_step(sampler_t *s, int i, float *x, const float *model_out) {
    const noise_schedule_t *sc = s->sched;
    int t = (int)s->timesteps[i];   /* the level reached, and the model's timestep */
    int src = t - s->step_ratio;
    if (src > sc->T - 1) src = sc->T - 1;
    double a_src = src >= 0 ? sc->alphas_cumprod[src] : (sc->cfg.set_alpha_to_one ? 1.0 : sc->alphas_cumprod[0]);
    double a_dst = sc->alphas_cumprod[t];
    float sa = (float)sqrt(a_src), sb = (float)sqrt(1 - a_src);
    float c_x0 = (float)sqrt(a_dst), c_eps = (float)sqrt(1 - a_dst);
    int clip = sc->cfg.clip_sample;
    float r = (float)sc->cfg.clip_sample_range;
    prediction_type_t pred = s->pred;
    #pragma omp parallel for schedule(static) if (s->n >= 65536)
    for (size_t j = 0; j < s->n; j++) {
        float x0, eps;
        split_output(pred, sa, sb, x[j], model_out[j], &x0, &eps);
        if (clip) x0 = clampf(x0, -r, r);
        x[j] = c_x0 * x0 + c_eps * eps;
    }
}
