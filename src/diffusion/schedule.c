/* The DDPM noise schedule: scheduler config (defaults and cJSON glue, diffusers' keys), the
 * beta / alphas_cumprod / sigma tables reproduced bit for bit from diffusers' float32
 * construction, and the training forward process (add_noise, velocity, targets). */
#include "diffusion/diffusion.h"

#include <math.h>
#include <string.h>

#include "base/error.h"
#include "base/json.h"

void sched_config_default(sched_config_t *c) {
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->beta_schedule = BETA_LINEAR;
    c->prediction_type = PRED_EPSILON;
    c->steps_offset = 0;
    c->timestep_spacing = SPACING_DEFAULT;
    c->set_alpha_to_one = 1;
    c->clip_sample = 1;
    c->clip_sample_range = 1.0;
    c->lower_order_final = 1;
}

static const char *const BETA_NAMES[] = {"linear", "scaled_linear", "squaredcos_cap_v2"};
static const char *const PRED_NAMES[] = {"epsilon", "v_prediction", "sample"};
static const char *const SPACING_NAMES[] = {"default", "leading", "trailing", "linspace"};

const char *beta_schedule_name(beta_schedule_t b) { return BETA_NAMES[b]; }
const char *prediction_type_name(prediction_type_t p) { return PRED_NAMES[p]; }
const char *timestep_spacing_name(timestep_spacing_t s) { return SPACING_NAMES[s]; }

/* ---- cJSON glue ---- */

#define WHAT "scheduler config"

/* Enum from a string among names[first..count): index, or the old value when absent. */
static int get_enum(const cJSON *j, const char *key, const char *const *names, int first, int count,
                    int *out) {
    const char *v = NULL;
    int rc = json_str(j, key, NULL, &v, WHAT);
    if (rc || !v) return rc;
    for (int i = first; i < count; i++)
        if (strcmp(v, names[i]) == 0) {
            *out = i;
            return 0;
        }
    return sd_error(SD_ERR_FORMAT, "scheduler config: unsupported %s \"%s\"", key, v);
}

int sched_config_from_json(sched_config_t *c, const cJSON *j) {
    sched_config_default(c);
    if (!j) return 0;
    if (!cJSON_IsObject(j)) return sd_error(SD_ERR_FORMAT, "scheduler config: not a JSON object");
    int rc, e;
    if ((rc = json_int(j, "num_train_timesteps", c->num_train_timesteps, &c->num_train_timesteps, WHAT))) return rc;
    if ((rc = json_double(j, "beta_start", c->beta_start, &c->beta_start, WHAT))) return rc;
    if ((rc = json_double(j, "beta_end", c->beta_end, &c->beta_end, WHAT))) return rc;
    e = c->beta_schedule;
    if ((rc = get_enum(j, "beta_schedule", BETA_NAMES, 0, 3, &e))) return rc;
    c->beta_schedule = (beta_schedule_t)e;
    e = c->prediction_type;
    if ((rc = get_enum(j, "prediction_type", PRED_NAMES, 0, 3, &e))) return rc;
    c->prediction_type = (prediction_type_t)e;
    if ((rc = json_int(j, "steps_offset", c->steps_offset, &c->steps_offset, WHAT))) return rc;
    e = c->timestep_spacing;
    if ((rc = get_enum(j, "timestep_spacing", SPACING_NAMES, 1, 4, &e))) return rc;
    c->timestep_spacing = (timestep_spacing_t)e;
    if ((rc = json_bool(j, "set_alpha_to_one", c->set_alpha_to_one, &c->set_alpha_to_one, WHAT))) return rc;
    if ((rc = json_bool(j, "clip_sample", c->clip_sample, &c->clip_sample, WHAT))) return rc;
    if ((rc = json_double(j, "clip_sample_range", c->clip_sample_range, &c->clip_sample_range, WHAT))) return rc;
    if ((rc = json_bool(j, "lower_order_final", c->lower_order_final, &c->lower_order_final, WHAT))) return rc;
    static const char *const refused[] = {"trained_betas", "rescale_betas_zero_snr", "thresholding",
                                          "use_karras_sigmas", "use_exponential_sigmas",
                                          "use_beta_sigmas"};
    for (size_t k = 0; k < sizeof refused / sizeof *refused; k++)
        if ((rc = json_require_unset(j, refused[k], WHAT))) return rc;
    if ((rc = json_require_str(j, "interpolation_type", "linear", WHAT))) return rc;
    if ((rc = json_require_str(j, "timestep_type", "discrete", WHAT))) return rc;
    return 0;
}

/* ---- tables ---- */

/* torch.linspace(start, end, steps, dtype=float32) on the CPU as PyTorch's AVX2 kernel
 * computes it (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp, built with FMA contraction):
 * step = (end - start) / (steps - 1) in float; the first half counts up from start, the
 * second half down from end; elements come in 8-lane vectors, two per loop iteration, the
 * remainder one at a time. A vector starting at i0 has base = fma(step, i0, start) (or
 * fma(-step, steps-1-i0, end) when i0 >= steps/2) and lanes base + fl(k*step); a scalar
 * element is the fused expression itself. Checked against torch 1.13 by the golden test
 * (tests/reference/gen_sampler_golden.py emulates it in Python and compares with torch). */
static void torch_linspace_f32(float *out, float start, float end, int steps) {
    if (steps == 1) {
        out[0] = start;
        return;
    }
    const int V = 8;
    float step = (end - start) / (float)(steps - 1);
    int half = steps / 2, i = 0;
    while (i + 2 * V <= steps) {
        for (int rep = 0; rep < 2; rep++, i += V) {
            float base = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
            /* k*step is exact in double, rounded once to float: the unfused lane product
             * (written so the compiler cannot contract it into an FMA with the add). */
            for (int k = 0; k < V; k++) out[i + k] = base + (float)((double)k * (double)step);
        }
    }
    for (; i < steps; i++)
        out[i] = i < half ? fmaf(step, (float)i, start) : fmaf(-step, (float)(steps - i - 1), end);
}

/* diffusers' betas_for_alpha_bar (cosine): Python doubles, rounded to float32 at the end.
 * Same operations in the same order as the Python (x ** 2 is C pow(x, 2.0) in CPython). */
static double alpha_bar_cos(double t) {
    return pow(cos((t + 0.008) / 1.008 * 3.141592653589793 / 2), 2.0);
}

int noise_schedule_init(noise_schedule_t *s, const sched_config_t *cfg) {
    memset(s, 0, sizeof *s);
    int T = cfg->num_train_timesteps;
    if (T < 1 || T > 100000)
        return sd_error(SD_ERR_ARG, "scheduler: num_train_timesteps %d out of range", T);
    if (cfg->beta_schedule != BETA_SQUAREDCOS_CAP_V2 &&
        !(cfg->beta_start > 0 && cfg->beta_start < 1 && cfg->beta_end > 0 && cfg->beta_end < 1))
        return sd_error(SD_ERR_ARG, "scheduler: beta_start %g / beta_end %g not in (0, 1)",
                        cfg->beta_start, cfg->beta_end);
    s->cfg = *cfg;
    s->T = T;
    s->betas = sd_xmalloc((size_t)T * sizeof(float));
    s->alphas_cumprod = sd_xmalloc((size_t)T * sizeof(float));
    s->sigmas = sd_xmalloc((size_t)T * sizeof(float));
    switch (cfg->beta_schedule) {
    case BETA_LINEAR:
        torch_linspace_f32(s->betas, (float)cfg->beta_start, (float)cfg->beta_end, T);
        break;
    case BETA_SCALED_LINEAR:
        /* beta_start**0.5 is a Python double; linspace then squares in float32. */
        torch_linspace_f32(s->betas, (float)pow(cfg->beta_start, 0.5), (float)pow(cfg->beta_end, 0.5), T);
        for (int i = 0; i < T; i++) s->betas[i] = s->betas[i] * s->betas[i];
        break;
    case BETA_SQUAREDCOS_CAP_V2:
        for (int i = 0; i < T; i++) {
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            double b = 1 - alpha_bar_cos(t2) / alpha_bar_cos(t1);
            s->betas[i] = (float)(b < 0.999 ? b : 0.999);
        }
        break;
    }
    /* torch.cumprod on a float CPU tensor keeps the running product in double. */
    double prod = 1.0;
    for (int i = 0; i < T; i++) {
        float alpha = 1.0f - s->betas[i];
        prod *= (double)alpha;
        s->alphas_cumprod[i] = (float)prod;
        float a = s->alphas_cumprod[i];
        s->sigmas[i] = sqrtf((1.0f - a) / a);
    }
    return 0;
}

void noise_schedule_free(noise_schedule_t *s) {
    free(s->betas);
    free(s->alphas_cumprod);
    free(s->sigmas);
    memset(s, 0, sizeof *s);
}

/* ---- training forward process ---- */

static void coeffs(const noise_schedule_t *s, int t, float *sa, float *sb) {
    SD_CHECK(t >= 0 && t < s->T, "timestep %d not in [0, %d)", t, s->T);
    float a = s->alphas_cumprod[t];
    *sa = sqrtf(a);
    *sb = sqrtf(1.0f - a);
}

void ddpm_add_noise(float *xt, const float *x0, const float *eps, const int *t, int B, size_t n,
                    const noise_schedule_t *s) {
    for (int b = 0; b < B; b++) {
        float sa, sb;
        coeffs(s, t[b], &sa, &sb);
        const float *x = x0 + (size_t)b * n, *e = eps + (size_t)b * n;
        float *o = xt + (size_t)b * n;
        for (size_t i = 0; i < n; i++) o[i] = sa * x[i] + sb * e[i];
    }
}

void ddpm_velocity(float *v, const float *x0, const float *eps, const int *t, int B, size_t n,
                   const noise_schedule_t *s) {
    for (int b = 0; b < B; b++) {
        float sa, sb;
        coeffs(s, t[b], &sa, &sb);
        const float *x = x0 + (size_t)b * n, *e = eps + (size_t)b * n;
        float *o = v + (size_t)b * n;
        for (size_t i = 0; i < n; i++) o[i] = sa * e[i] - sb * x[i];
    }
}

void ddpm_target(float *target, const float *x0, const float *eps, const int *t, int B, size_t n,
                 const noise_schedule_t *s) {
    switch (s->cfg.prediction_type) {
    case PRED_EPSILON: memcpy(target, eps, (size_t)B * n * sizeof(float)); break;
    case PRED_SAMPLE: memcpy(target, x0, (size_t)B * n * sizeof(float)); break;
    case PRED_V: ddpm_velocity(target, x0, eps, t, B, n, s); break;
    }
}
