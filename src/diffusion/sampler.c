/* Sampler set-up (diffusers' set_timesteps for each scheduler class, sigma tables,
 * init_noise_sigma), step dispatch, and the sampling driver that runs the loop around a model
 * callback with batched classifier-free guidance. */
#include "diffusion/diffusion.h"

#include <math.h>
#include <string.h>

#include "base/error.h"

static const char *const KIND_NAMES[SAMPLER_KIND_COUNT] = {"ddim", "euler", "euler_a", "dpmpp_2m",
                                                           "ddim_inverse"};

const char *sampler_kind_name(sampler_kind_t k) {
    return (unsigned)k < SAMPLER_KIND_COUNT ? KIND_NAMES[k] : "?";
}

int sampler_kind_parse(const char *name, sampler_kind_t *out) {
    for (int k = 0; k < SAMPLER_KIND_COUNT; k++)
        if (strcmp(name, KIND_NAMES[k]) == 0) {
            *out = (sampler_kind_t)k;
            return 0;
        }
    return sd_error(SD_ERR_ARG, "unknown sampler \"%s\" (ddim, euler, euler_a, dpmpp_2m, ddim_inverse)", name);
}

timestep_spacing_t sampler_spacing(sampler_kind_t kind, const sched_config_t *cfg) {
    if (cfg->timestep_spacing != SPACING_DEFAULT) return cfg->timestep_spacing;
    return (kind == SAMPLER_DDIM || kind == SAMPLER_DDIM_INVERSE) ? SPACING_LEADING : SPACING_LINSPACE;
}

/* ---- numpy arithmetic, operation for operation (numpy is built without FMA: a product
 * feeding an add must be rounded on its own, which `volatile` forces here) ---- */

static double mul_unfused(double a, double b) {
    volatile double p = a * b;
    return p;
}

/* np.linspace(0, stop, num)[i] (float64): i * (stop / (num - 1)), the last exactly stop. */
static double np_linspace0(double stop, int num, int i) {
    if (num == 1) return 0.0;
    if (i == num - 1) return stop;
    return (double)i * (stop / (double)(num - 1));
}

/* np.arange(start, 0, -step)[k] for k < its length: numpy fills [start, start - step] and then
 * start + k * ((start - step) - start). */
static double np_arange_down(double start, double step, int k) {
    if (k == 0) return start;
    double second = start + (-step);
    if (k == 1) return second;
    return start + mul_unfused((double)k, second - start);
}

/* The trailing list shared by DDIM, Euler and DPM: round(arange(T, 0, -T/N)) - 1, first N. */
static double trailing_t(int T, int N, int k) { return rint(np_arange_down((double)T, (double)T / N, k)) - 1.0; }

int sampler_timesteps(float *out, sampler_kind_t kind, const noise_schedule_t *s, int N) {
    int T = s->T, off = s->cfg.steps_offset;
    if (N < 1 || N > T)
        return sd_error(SD_ERR_ARG, "%s: %d inference steps not in [1, %d]", sampler_kind_name(kind), N, T);
    timestep_spacing_t sp = sampler_spacing(kind, &s->cfg);
    switch (kind) {
    case SAMPLER_DDIM:
        for (int k = 0; k < N; k++) {
            int i = N - 1 - k;   /* descending */
            if (sp == SPACING_LINSPACE) out[k] = (float)rint(np_linspace0(T - 1, N, i));
            else if (sp == SPACING_LEADING) out[k] = (float)(i * (T / N) + off);
            else out[k] = (float)trailing_t(T, N, k);
        }
        return 0;
    case SAMPLER_DDIM_INVERSE:
        if (sp == SPACING_LINSPACE)
            return sd_error(SD_ERR_ARG, "ddim_inverse: timestep_spacing linspace is not supported (diffusers: leading or trailing)");
        for (int k = 0; k < N; k++)   /* ascending */
            out[k] = sp == SPACING_LEADING ? (float)(k * (T / N) + off) : (float)trailing_t(T, N, N - 1 - k);
        return 0;
    case SAMPLER_EULER:
    case SAMPLER_EULER_ANCESTRAL:
        for (int k = 0; k < N; k++) {
            int i = N - 1 - k;
            if (sp == SPACING_LINSPACE) out[k] = (float)np_linspace0(T - 1, N, i);  /* float32 */
            else if (sp == SPACING_LEADING) out[k] = (float)(i * (T / N)) + (float)off;
            else out[k] = (float)trailing_t(T, N, k);
        }
        return 0;
    case SAMPLER_DPMPP_2M:
        /* last_timestep = T (lambda_min_clipped = -inf clips nothing). */
        for (int k = 0; k < N; k++) {
            int i = N - k;   /* N+1 points reversed, the final 0 dropped */
            if (sp == SPACING_LINSPACE) out[k] = (float)rint(np_linspace0(T - 1, N + 1, i));
            else if (sp == SPACING_LEADING) out[k] = (float)(i * (T / (N + 1)) + off);
            else out[k] = (float)trailing_t(T, N, k);
        }
        return 0;
    default:
        return sd_error(SD_ERR_ARG, "unknown sampler kind %d", (int)kind);
    }
}

/* np.interp(x, arange(T), table) in float64, as numpy's arr_interp computes it. */
static double np_interp_table(double x, const float *table, int T) {
    if (!(x > 0)) return table[0];          /* left clamp (and x == 0) */
    if (x >= T - 1) return table[T - 1];    /* right clamp and the last point */
    int j = (int)floor(x);
    if ((double)j == x) return table[j];
    double slope = ((double)table[j + 1] - (double)table[j]) / 1.0;
    return mul_unfused(slope, x - (double)j) + (double)table[j];
}

int sampler_init(sampler_t *s, sampler_kind_t kind, const noise_schedule_t *sched, int num_steps,
                 size_t n, float eta) {
    memset(s, 0, sizeof *s);
    if ((unsigned)kind >= SAMPLER_KIND_COUNT) return sd_error(SD_ERR_ARG, "unknown sampler kind %d", (int)kind);
    if (kind == SAMPLER_EULER_ANCESTRAL && sched->cfg.prediction_type == PRED_SAMPLE)
        return sd_error(SD_ERR_ARG, "euler_a: prediction_type sample is not supported (as in diffusers)");
    if (!(eta >= 0)) return sd_error(SD_ERR_ARG, "ddim: eta %g must be >= 0", eta);
    if (num_steps < 1 || num_steps > sched->T)
        return sd_error(SD_ERR_ARG, "%s: %d inference steps not in [1, %d]", sampler_kind_name(kind),
                        num_steps, sched->T);
    float *ts = sd_xmalloc((size_t)num_steps * sizeof(float));
    int rc = sampler_timesteps(ts, kind, sched, num_steps);
    if (rc) {
        free(ts);
        return rc;
    }
    s->kind = kind;
    s->sched = sched;
    s->pred = sched->cfg.prediction_type;
    s->num_steps = num_steps;
    s->step_ratio = sched->T / num_steps;
    s->timesteps = ts;
    s->eta = kind == SAMPLER_DDIM ? eta : 0.0f;
    s->n = n;
    s->init_noise_sigma = 1.0f;
    if (kind == SAMPLER_EULER || kind == SAMPLER_EULER_ANCESTRAL || kind == SAMPLER_DPMPP_2M) {
        s->sigmas = sd_xmalloc((size_t)(num_steps + 1) * sizeof(float));
        for (int i = 0; i < num_steps; i++)
            s->sigmas[i] = (float)np_interp_table((double)ts[i], sched->sigmas, sched->T);
        s->sigmas[num_steps] = 0.0f;   /* final_sigmas_type zero */
    }
    if (kind == SAMPLER_EULER || kind == SAMPLER_EULER_ANCESTRAL) {
        float m = 0.0f;
        for (int i = 0; i <= num_steps; i++) m = fmaxf(m, s->sigmas[i]);
        /* float32 like the torch scalar: fl(m*m) (exact product rounded once), + 1, sqrt. */
        s->init_noise_sigma = sampler_spacing(kind, &sched->cfg) == SPACING_LEADING
                                  ? sqrtf((float)((double)m * m) + 1.0f)
                                  : m;
    }
    if (kind == SAMPLER_DPMPP_2M && !(s->prev_x0 = calloc(n ? n : 1, sizeof(float)))) {
        sampler_free(s);
        return sd_nomem("dpmpp_2m: previous x0", n * sizeof(float));
    }
    return 0;
}

void sampler_free(sampler_t *s) {
    free(s->timesteps);
    free(s->sigmas);
    free(s->prev_x0);
    memset(s, 0, sizeof *s);
}

int sampler_needs_noise(const sampler_t *s) {
    return s->kind == SAMPLER_EULER_ANCESTRAL || (s->kind == SAMPLER_DDIM && s->eta > 0);
}

float sampler_input_scale(const sampler_t *s, int i) {
    if (s->kind != SAMPLER_EULER && s->kind != SAMPLER_EULER_ANCESTRAL) return 1.0f;
    double sg = s->sigmas[i];
    return (float)(1.0 / sqrt(sg * sg + 1.0));
}

int sampler_step(sampler_t *s, int i, float *x, const float *model_out, const float *noise, rng_t *rng) {
    if (i != s->next_step || i >= s->num_steps)
        return sd_error(SD_ERR_ARG, "%s: step %d out of order (expected %d of %d)", sampler_kind_name(s->kind),
                        i, s->next_step, s->num_steps);
    float *drawn = NULL;
    if (sampler_needs_noise(s) && !noise) {
        if (!rng) return sd_error(SD_ERR_ARG, "%s: step noise needs a generator", sampler_kind_name(s->kind));
        if (!(drawn = malloc(s->n * sizeof(float)))) return sd_nomem("sampler step noise", s->n * sizeof(float));
        rng_fill_normal(rng, drawn, s->n);
        noise = drawn;
    }
    switch (s->kind) {
    case SAMPLER_DDIM: ddim_step(s, i, x, model_out, noise); break;
    case SAMPLER_DDIM_INVERSE: ddim_inverse_step(s, i, x, model_out); break;
    case SAMPLER_EULER: euler_step(s, i, x, model_out); break;
    case SAMPLER_EULER_ANCESTRAL: euler_ancestral_step(s, i, x, model_out, noise); break;
    case SAMPLER_DPMPP_2M: dpmpp_2m_step(s, i, x, model_out); break;
    default: break;
    }
    free(drawn);
    s->next_step++;
    return 0;
}

/* ---- driver ---- */

int diffusion_sample(float *latents, const float *init, int B, int C, int H, int W,
                     const noise_schedule_t *sched, const sample_opts_t *o) {
    if (B < 1 || C < 1 || H < 1 || W < 1) return sd_error(SD_ERR_ARG, "sample: bad latent shape [%d, %d, %d, %d]", B, C, H, W);
    if (!o->model) return sd_error(SD_ERR_ARG, "sample: no model callback");
    size_t n1 = (size_t)C * H * W, n = (size_t)B * n1;
    sampler_t s;
    int rc = sampler_init(&s, o->kind, sched, o->num_steps, n, o->eta);
    if (rc) return rc;
    if ((!init || sampler_needs_noise(&s)) && !o->rng) {
        sampler_free(&s);
        return sd_error(SD_ERR_ARG, "sample: %s needs a generator", init ? "step noise" : "initial noise");
    }
    /* diffusers' prepare_latents: given or drawn, the latents are scaled by init_noise_sigma. */
    if (init) {
        for (size_t j = 0; j < n; j++) latents[j] = init[j] * s.init_noise_sigma;
    } else {
        rng_fill_normal(o->rng, latents, n);
        for (size_t j = 0; j < n; j++) latents[j] *= s.init_noise_sigma;
    }
    int cfg = o->guidance_scale > 1.0f;
    size_t rows = cfg ? 2 * (size_t)B : (size_t)B;
    float *model_in = malloc(rows * n1 * sizeof(float));
    float *model_out = malloc(rows * n1 * sizeof(float));
    float *noise = sampler_needs_noise(&s) ? malloc(n * sizeof(float)) : NULL;
    if (!model_in || !model_out || (sampler_needs_noise(&s) && !noise))
        rc = sd_nomem("sample: model inputs and outputs", (2 * rows * n1 + n) * sizeof(float));
    for (int i = 0; i < s.num_steps && rc == 0; i++) {
        float scale = sampler_input_scale(&s, i);
        for (size_t j = 0; j < n; j++) model_in[j] = latents[j] * scale;
        if (cfg) memcpy(model_in + n, model_in, n * sizeof(float));
        rc = o->model(o->model_ctx, model_out, model_in, s.timesteps[i], (int)rows);
        if (rc) {
            if (rc > 0) rc = sd_error(SD_ERR_ARG, "sample: model callback returned %d", rc);
            break;
        }
        if (cfg) cfg_combine_batched(model_out, model_out, B, n1, o->guidance_scale);
        if (noise) rng_fill_normal(o->rng, noise, n);
        rc = sampler_step(&s, i, latents, model_out, noise, NULL);
        if (rc == 0 && o->progress) o->progress(o->progress_ctx, i + 1, s.num_steps, s.timesteps[i], latents);
    }
    free(model_in);
    free(model_out);
    free(noise);
    sampler_free(&s);
    return rc;
}
