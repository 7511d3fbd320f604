/* Diffusion processes of svdiff: the DDPM noise schedule (from a diffusers scheduler_config),
 * training noising and targets, the samplers (DDIM, DDIM inversion, Euler, Euler ancestral,
 * DPM-Solver++ 2M) with diffusers' step semantics, classifier-free guidance, and the driver that
 * runs a whole sampling loop around a model callback (the seeded RNG is base/rng.h).
 *
 * Precision, as diffusers (which builds every scheduler on the CPU in float32):
 *  - betas: torch.linspace(..., dtype=float32) [** 2 for scaled_linear], reproduced bit for
 *    bit (schedule.c emulates PyTorch's CPU AVX2 linspace kernel); squaredcos_cap_v2 in double
 *    rounded to float32; alphas_cumprod = cumprod(1 - betas) with the running product in
 *    double (torch's CPU cumprod accumulates float in double), each entry rounded to float.
 *  - timesteps and Euler / DPM sigma tables: numpy's arithmetic (float64 linspace / arange /
 *    interp, round half to even) rounded to float32 where diffusers does; they equal diffusers'
 *    values exactly (tests/test_diffusion.c checks them bit for bit).
 *  - step arithmetic: per-step scalar coefficients in double from the float32 schedule values,
 *    element updates in float32; diffusers does both in float32, so a step agrees with it to
 *    ~1e-6 relative, not bit for bit.
 */
#ifndef SVDIFF_DIFFUSION_H
#define SVDIFF_DIFFUSION_H

#include <stddef.h>
#include <stdint.h>

#include <cJSON.h>

#include "base/rng.h"   /* rng_t: the seeded noise of sampling and training */

/* ------------------------------------------------------------------------------------------
 * Noise schedule (schedule.c): the fields of a diffusers scheduler_config.json. */
typedef enum { BETA_LINEAR = 0, BETA_SCALED_LINEAR, BETA_SQUAREDCOS_CAP_V2 } beta_schedule_t;
typedef enum { PRED_EPSILON = 0, PRED_V, PRED_SAMPLE } prediction_type_t;
/* SPACING_DEFAULT: the key was absent; each sampler then uses its diffusers class default
 * (DDIM and DDIM inverse: leading; Euler, Euler ancestral, DPM-Solver++: linspace), which is
 * what diffusers' from_config does with an SD 1.x config (that has no such key). */
typedef enum { SPACING_DEFAULT = 0, SPACING_LEADING, SPACING_TRAILING, SPACING_LINSPACE } timestep_spacing_t;

typedef struct {
    int num_train_timesteps;        /* 1000 */
    double beta_start, beta_end;    /* 0.0001, 0.02 (Python floats: double until linspace) */
    beta_schedule_t beta_schedule;  /* linear */
    prediction_type_t prediction_type; /* epsilon */
    int steps_offset;               /* 0 */
    timestep_spacing_t timestep_spacing; /* default: per sampler */
    int set_alpha_to_one;           /* 1 (DDIM: final alpha_cumprod 1, else alphas_cumprod[0]) */
    int clip_sample;                /* 1 (DDIM: clamp predicted x0 to +-clip_sample_range) */
    double clip_sample_range;       /* 1.0 */
    int lower_order_final;          /* 1 (DPM-Solver++; read for completeness: with the final
                                       sigma zero diffusers steps the last step at first order
                                       either way, and order 2 has no "lower order second") */
} sched_config_t;

/* diffusers' defaults (DDIMScheduler's values for the keys all five classes share). */
void sched_config_default(sched_config_t *c);
/* Fills c from a scheduler_config.json object (NULL: defaults). Keys as diffusers; absent
 * keys (and JSON null) keep the defaults; "_class_name", "skip_prk_steps" and other keys
 * that do not change these samplers are ignored. Settings that would change the numbers but
 * are not implemented (trained_betas, rescale_betas_zero_snr, thresholding,
 * use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas, interpolation_type other than
 * linear, timestep_type continuous) give SD_ERR_FORMAT naming the key, as do wrong types and
 * unknown enum strings. */
int sched_config_from_json(sched_config_t *c, const cJSON *json);

const char *beta_schedule_name(beta_schedule_t b);
const char *prediction_type_name(prediction_type_t p);
const char *timestep_spacing_name(timestep_spacing_t s);

typedef struct {
    sched_config_t cfg;
    int T;                   /* num_train_timesteps */
    float *betas;            /* [T] */
    float *alphas_cumprod;   /* [T] */
    float *sigmas;           /* [T] sqrt((1 - a) / a) in float32, as diffusers' Euler table */
} noise_schedule_t;

/* Returns 0 or SD_ERR_ARG (T < 1, beta range not in (0, 1), ...). */
int noise_schedule_init(noise_schedule_t *s, const sched_config_t *cfg);
void noise_schedule_free(noise_schedule_t *s);

/* Training (DDPM forward process, diffusers add_noise / get_velocity), per sample b of B,
 * each of n elements, integer timestep t[b] in [0, T):
 *   x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
 *   v   = sqrt(a_t) eps - sqrt(1 - a_t) x0
 * ddpm_target writes the regression target of the config's prediction_type: eps, v or x0. */
void ddpm_add_noise(float *xt, const float *x0, const float *eps, const int *t, int B, size_t n,
                    const noise_schedule_t *s);
void ddpm_velocity(float *v, const float *x0, const float *eps, const int *t, int B, size_t n,
                   const noise_schedule_t *s);
void ddpm_target(float *target, const float *x0, const float *eps, const int *t, int B, size_t n,
                 const noise_schedule_t *s);

/* ------------------------------------------------------------------------------------------
 * Samplers (sampler.c, ddim.c, euler.c, dpmpp.c). One sampler_t runs one loop of num_steps
 * steps over a sample of n floats (the whole batch). Step i uses the model output at
 * timesteps[i] (diffusers: step(model_output, timesteps[i], sample) with step_index i).
 * Steps must be taken in order 0, 1, ..., num_steps - 1 (DPM-Solver++ keeps history).
 *
 *  DDIM (scheduling_ddim.py): timesteps per spacing; prev_t = t - T / num_steps (integer
 *    division, for every spacing, as diffusers); a_prev = prev_t >= 0 ? alphas_cumprod[prev_t]
 *    : final (1 or alphas_cumprod[0] by set_alpha_to_one). x0 and eps from the model output by
 *    prediction type, x0 clamped if clip_sample; sigma = eta sqrt((1-a_prev)/(1-a_t)
 *    (1 - a_t/a_prev)); x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z.
 *    z (only when eta > 0) is drawn every step.
 *  DDIM inverse (scheduling_ddim_inverse.py): timesteps ascending (leading: i*(T/N) +
 *    steps_offset; trailing: the DDIM trailing list reversed; linspace is refused as diffusers
 *    does). Step i goes FROM level src = min(t - T/N, T-1) TO level t = timesteps[i], with the
 *    model evaluated at t on the sample at level src (diffusers' convention: the model sees
 *    the target timestep); a_src = src >= 0 ? alphas_cumprod[src] : initial (1 or
 *    alphas_cumprod[0] by set_alpha_to_one), a_dst = alphas_cumprod[t];
 *    x_next = sqrt(a_dst) x0 + sqrt(1 - a_dst) eps (x0 clamped if clip_sample, no noise).
 *    So DDIM sampling with the same steps walks the same levels back: inversion of a clean
 *    latent followed by sampling reconstructs it up to the model's change across a step.
 *  Euler (scheduling_euler_discrete.py, s_churn 0): sigmas = interp(timesteps, sigma table)
 *    + [0]; model input x / sqrt(sigma^2 + 1); x0 by prediction type; x += (x - x0)/sigma *
 *    (sigma_next - sigma). init_noise_sigma = sigma_max (linspace, trailing) or
 *    sqrt(sigma_max^2 + 1) (leading).
 *  Euler ancestral (scheduling_euler_ancestral_discrete.py): as Euler, then sigma_up =
 *    sqrt(s_next^2 (s^2 - s_next^2) / s^2), sigma_down = sqrt(s_next^2 - sigma_up^2),
 *    x += (x - x0)/s * (sigma_down - s) + sigma_up z; z drawn every step (also the last, where
 *    sigma_up = 0), as diffusers. prediction_type sample is refused (as diffusers).
 *  DPM-Solver++ 2M (scheduling_dpmsolver_multistep.py: algorithm_type dpmsolver++,
 *    solver_order 2, solver_type midpoint, final_sigmas_type zero, lower_order_final): model
 *    output -> x0 with alpha = 1/sqrt(sigma^2+1), sigma_t = sigma alpha, lambda = log alpha -
 *    log sigma_t; first step and last step first order, the others second order (midpoint).
 *    Timesteps: linspace round(linspace(0, T-1, N+1))[::-1][:-1]; leading: i*(T/(N+1)) +
 *    offset; trailing: as DDIM.
 *  Trailing spacing: numpy's arange(T, 0, -T/N) yields N+1 values for some N (61, 103, ...);
 *  diffusers then runs an extra step at timestep -1; here the list is cut at N values. */
typedef enum {
    SAMPLER_DDIM = 0,
    SAMPLER_EULER,
    SAMPLER_EULER_ANCESTRAL,
    SAMPLER_DPMPP_2M,
    SAMPLER_DDIM_INVERSE,
    SAMPLER_KIND_COUNT
} sampler_kind_t;

/* "ddim", "euler", "euler_a", "dpmpp_2m", "ddim_inverse". */
const char *sampler_kind_name(sampler_kind_t k);
int sampler_kind_parse(const char *name, sampler_kind_t *out);   /* 0 or SD_ERR_ARG */

/* The spacing a sampler uses under a config (resolves SPACING_DEFAULT). */
timestep_spacing_t sampler_spacing(sampler_kind_t kind, const sched_config_t *cfg);
/* The timesteps diffusers' set_timesteps(num_steps) gives for this sampler kind, as floats
 * (integers except Euler / Euler ancestral with linspace spacing). out[num_steps]. Returns
 * 0 or SD_ERR_ARG (num_steps not in [1, T], inverse with linspace). */
int sampler_timesteps(float *out, sampler_kind_t kind, const noise_schedule_t *s, int num_steps);

typedef struct {
    sampler_kind_t kind;
    const noise_schedule_t *sched;   /* borrowed: must outlive the sampler */
    prediction_type_t pred;
    int num_steps;
    int step_ratio;          /* T / num_steps (DDIM, DDIM inverse) */
    float *timesteps;        /* [num_steps]: t for the model at step i */
    float *sigmas;           /* [num_steps + 1] (Euler, Euler a, DPM); NULL otherwise */
    float init_noise_sigma;  /* initial-noise multiplier (diffusers' init_noise_sigma) */
    float eta;               /* DDIM */
    size_t n;                /* floats per sample (whole batch) */
    int next_step;           /* the step sampler_step expects */
    float *prev_x0;          /* DPM-Solver++: the previous step's x0 prediction [n] */
    int lower_order_nums;    /* DPM-Solver++: steps taken so far, capped at 2 */
} sampler_t;

/* Returns 0, or SD_ERR_ARG with a message for a bad combination (steps out of range,
 * Euler ancestral with prediction_type sample, inverse with linspace, eta < 0). */
int sampler_init(sampler_t *s, sampler_kind_t kind, const noise_schedule_t *sched, int num_steps,
                 size_t n, float eta);
void sampler_free(sampler_t *s);
/* Does step i draw noise (DDIM with eta > 0, Euler ancestral)? */
int sampler_needs_noise(const sampler_t *s);
/* Multiplier of the model input at step i (diffusers' scale_model_input):
 * 1 / sqrt(sigma_i^2 + 1) for Euler and Euler ancestral, 1 otherwise. */
float sampler_input_scale(const sampler_t *s, int i);
/* x[n] <- the sample after step i, from the model output at timesteps[i] (after guidance).
 * noise[n]: the step's N(0,1) noise when sampler_needs_noise; NULL draws it from rng (C order,
 * n normals). Returns 0, or SD_ERR_ARG for a step out of order or missing noise source. */
int sampler_step(sampler_t *s, int i, float *x, const float *model_out, const float *noise,
                 rng_t *rng);

/* Step kernels (one per file; sampler_step dispatches). x updated in place. */
void ddim_step(sampler_t *s, int i, float *x, const float *model_out, const float *noise);
void ddim_inverse_step(sampler_t *s, int i, float *x, const float *model_out);
void euler_step(sampler_t *s, int i, float *x, const float *model_out);
void euler_ancestral_step(sampler_t *s, int i, float *x, const float *model_out, const float *noise);
void dpmpp_2m_step(sampler_t *s, int i, float *x, const float *model_out);

/* ------------------------------------------------------------------------------------------
 * Classifier-free guidance (guidance.c). out = uncond + g (cond - uncond), on whatever the
 * model predicts (eps or v: both are linear in the same way, as diffusers' pipelines do).
 * Batched layout: model_out[2B, n] = [uncond rows 0..B-1; cond rows B..2B-1]
 * -> out[B, n]. out may alias model_out (the uncond half). */
void cfg_combine(float *out, const float *uncond, const float *cond, float g, size_t n);
void cfg_combine_batched(float *out, const float *model_out, int B, size_t n, float g);

/* ------------------------------------------------------------------------------------------
 * Sampling driver (sampler.c). The model callback evaluates the denoiser on `batch` samples
 * model_in[batch, C, H, W] at timestep t (the same t for every row) into model_out[batch, ...];
 * returns 0 or a negative SD_ERR_* (the loop stops and returns it). With guidance_scale > 1
 * (diffusers: do_classifier_free_guidance) the driver calls it ONCE per step with
 * batch = 2B rows, [uncond x B; cond x B] (the same latents twice): the callback's context
 * must hold the conditioning in that layout (rows 0..B-1 negative / empty prompt,
 * rows B..2B-1 the prompt). Otherwise batch = B and the cond conditioning is used. */
typedef int (*model_fn_t)(void *ctx, float *model_out, const float *model_in, float t, int batch);
/* Called after each step: step = 1..num_steps, t the step's timestep, latents[B, C, H, W]. */
typedef void (*progress_fn_t)(void *ctx, int step, int num_steps, float t, const float *latents);

typedef struct {
    sampler_kind_t kind;
    int num_steps;
    float eta;              /* DDIM only (0: deterministic) */
    float guidance_scale;   /* > 1 enables classifier-free guidance */
    rng_t *rng;             /* initial noise (when none given) and per-step noise */
    model_fn_t model;
    void *model_ctx;
    progress_fn_t progress; /* may be NULL */
    void *progress_ctx;
} sample_opts_t;

/* Runs the loop: latents = init (or, when init is NULL, rng normals in C order) *
 * init_noise_sigma, as diffusers' prepare_latents; then per step: model input =
 * latents * sampler_input_scale, model (batched for guidance), guidance, sampler_step
 * (per-step noise from rng, after the initial noise in the stream). The result (x0 for
 * sampling, the noised latent for DDIM inverse) goes to latents[B, C, H, W]; init may alias
 * latents. Returns 0 or the first error. */
int diffusion_sample(float *latents, const float *init, int B, int C, int H, int W,
                     const noise_schedule_t *sched, const sample_opts_t *o);

#endif
