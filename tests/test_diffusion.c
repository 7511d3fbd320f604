/* Tests of src/diffusion (the RNG's are in test_base.c): the schedule tables, timesteps and
 * sigmas against diffusers (bit for bit, from tests/fixtures/sampler/golden.safetensors written by tests/reference/gen_sampler_golden.py,
 * and hard-coded SD 1.5 lists), the scheduler-config glue, DDPM noising, whole sampling
 * trajectories of every sampler (each step to 1e-4 relative), DDIM inversion + reconstruction,
 * exact-denoiser convergence, classifier-free guidance and argument errors.
 * SVDIFF_GOLDEN_VERBOSE=1 prints every trajectory error measured. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#include "base/error.h"
#include "diffusion/diffusion.h"

#define FIXTURE "sampler/golden.safetensors"
#define TRAJ_TOL 1e-4

static int verbose(void) {
    const char *v = getenv("SVDIFF_GOLDEN_VERBOSE");
    return v && *v && *v != '0';
}

/* The SD 1.x scheduler config (as in its scheduler_config.json) with a prediction type. */
static void sd_config(sched_config_t *c, prediction_type_t pred) {
    sched_config_default(c);
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
    c->beta_schedule = BETA_SCALED_LINEAR;
    c->steps_offset = 1;
    c->set_alpha_to_one = 0;
    c->clip_sample = 0;
    c->prediction_type = pred;
}

/* Bitwise float comparison (so -0 / NaN mismatches show). */
static void assert_bits(const char *what, const float *got, const float *want, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) {
            print_error("%s[%zu]: got %.9g want %.9g\n", what, i, got[i], want[i]);
            fail();
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Schedule tables, timesteps, sigmas */

static void test_schedule_tables(void **state) {
    (void)state;
    st_file_t f;
    golden_open(&f, FIXTURE);
    const char *names[3] = {"sd", "linear", "cos"};
    for (int k = 0; k < 3; k++) {
        sched_config_t c;
        if (k == 0) sd_config(&c, PRED_EPSILON);
        else sched_config_default(&c);
        if (k == 2) c.beta_schedule = BETA_SQUAREDCOS_CAP_V2;
        noise_schedule_t s;
        assert_int_equal(noise_schedule_init(&s, &c), 0);
        char key[96];
        const char *what[3] = {"betas", "alphas_cumprod", "sigmas"};
        const float *got[3] = {s.betas, s.alphas_cumprod, s.sigmas};
        for (int j = 0; j < 3; j++) {
            snprintf(key, sizeof key, "sched.%s.%s", names[k], what[j]);
            float *want = golden_get(&f, key, 1000);
            assert_bits(key, got[j], want, 1000);
            free(want);
        }
        noise_schedule_free(&s);
    }
    st_close(&f);
}

static const int NLIST[] = {1, 2, 3, 4, 5, 7, 10, 13, 20, 25, 30, 50, 61, 100, 999, 1000};
#define NN (int)(sizeof NLIST / sizeof *NLIST)

static void test_timesteps_golden(void **state) {
    (void)state;
    st_file_t f;
    golden_open(&f, FIXTURE);
    sched_config_t c;
    sd_config(&c, PRED_EPSILON);
    noise_schedule_t s;
    assert_int_equal(noise_schedule_init(&s, &c), 0);
    size_t total = 0;
    for (int k = 0; k < NN; k++) total += NLIST[k];
    const sampler_kind_t kinds[4] = {SAMPLER_DDIM, SAMPLER_DDIM_INVERSE, SAMPLER_EULER, SAMPLER_DPMPP_2M};
    const timestep_spacing_t spacings[3] = {SPACING_LEADING, SPACING_TRAILING, SPACING_LINSPACE};
    for (int ki = 0; ki < 4; ki++) {
        for (int si = 0; si < 3; si++) {
            sampler_kind_t kind = kinds[ki];
            c.timestep_spacing = spacings[si];
            s.cfg = c;
            char key[96];
            if (kind == SAMPLER_DDIM_INVERSE && spacings[si] == SPACING_LINSPACE) {
                float t[4];
                assert_int_equal(sampler_timesteps(t, kind, &s, 4), SD_ERR_ARG);
                continue;
            }
            snprintf(key, sizeof key, "ts.%s.%s", sampler_kind_name(kind), timestep_spacing_name(spacings[si]));
            float *want = golden_get(&f, key, (int64_t)total);
            snprintf(key, sizeof key, "sig.%s.%s", sampler_kind_name(kind), timestep_spacing_name(spacings[si]));
            float *want_sig = golden_get_opt(&f, key);
            size_t at = 0, at_sig = 0;
            for (int k = 0; k < NN; k++) {
                int N = NLIST[k];
                sampler_t sm;
                assert_int_equal(sampler_init(&sm, kind, &s, N, 4, 0.0f), 0);
                char what[128];
                snprintf(what, sizeof what, "%s %s N=%d timesteps", sampler_kind_name(kind),
                         timestep_spacing_name(spacings[si]), N);
                assert_bits(what, sm.timesteps, want + at, (size_t)N);
                if (want_sig) {
                    snprintf(what, sizeof what, "%s %s N=%d sigmas", sampler_kind_name(kind),
                             timestep_spacing_name(spacings[si]), N);
                    assert_bits(what, sm.sigmas, want_sig + at_sig, (size_t)N + 1);
                    at_sig += (size_t)N + 1;
                }
                at += (size_t)N;
                sampler_free(&sm);
            }
            free(want);
            free(want_sig);
        }
    }
    noise_schedule_free(&s);
    st_close(&f);
}

/* diffusers' outputs for the SD 1.5 scheduler config (scaled_linear 0.00085..0.012,
 * steps_offset 1), as printed by scheduler.timesteps / scheduler.sigmas. */
static void test_timesteps_sd15_known(void **state) {
    (void)state;
    sched_config_t c;
    sd_config(&c, PRED_EPSILON);
    noise_schedule_t s;
    assert_int_equal(noise_schedule_init(&s, &c), 0);
    float t[1000];

    /* DDIMScheduler (leading): 50 steps -> 981, 961, ..., 21, 1; 20 steps -> 951, ..., 1. */
    assert_int_equal(sampler_timesteps(t, SAMPLER_DDIM, &s, 50), 0);
    for (int i = 0; i < 50; i++) assert_true(t[i] == 981 - 20 * i);
    assert_int_equal(sampler_timesteps(t, SAMPLER_DDIM, &s, 20), 0);
    for (int i = 0; i < 20; i++) assert_true(t[i] == 951 - 50 * i);
    /* trailing: 999, 949, ..., 49 (20) and 999, 979, ..., 19 (50); linspace 20. */
    s.cfg.timestep_spacing = SPACING_TRAILING;
    assert_int_equal(sampler_timesteps(t, SAMPLER_DDIM, &s, 20), 0);
    for (int i = 0; i < 20; i++) assert_true(t[i] == 999 - 50 * i);
    assert_int_equal(sampler_timesteps(t, SAMPLER_DDIM, &s, 50), 0);
    for (int i = 0; i < 50; i++) assert_true(t[i] == 999 - 20 * i);
    s.cfg.timestep_spacing = SPACING_LINSPACE;
    static const float lin20[20] = {999, 946, 894, 841, 789, 736, 684, 631, 578, 526,
                                    473, 421, 368, 315, 263, 210, 158, 105, 53, 0};
    assert_int_equal(sampler_timesteps(t, SAMPLER_DDIM, &s, 20), 0);
    assert_memory_equal(t, lin20, sizeof lin20);
    s.cfg.timestep_spacing = SPACING_DEFAULT;

    /* DDIMInverseScheduler (leading): ascending 1, 21, ..., 981. */
    assert_int_equal(sampler_timesteps(t, SAMPLER_DDIM_INVERSE, &s, 50), 0);
    for (int i = 0; i < 50; i++) assert_true(t[i] == 1 + 20 * i);

    /* DPMSolverMultistepScheduler (linspace): 20 -> 999, 949, ..., 549, 500, 450, ..., 50. */
    static const float dpm20[20] = {999, 949, 899, 849, 799, 749, 699, 649, 599, 549,
                                     500, 450, 400, 350, 300, 250, 200, 150, 100, 50};
    assert_int_equal(sampler_timesteps(t, SAMPLER_DPMPP_2M, &s, 20), 0);
    assert_memory_equal(t, dpm20, sizeof dpm20);

    /* EulerDiscreteScheduler (linspace): timesteps 999, 946.4211, ..., 0 and sigmas
     * 14.6146, 10.7468, 8.0815, ..., 0.2322, 0.0292, 0; init_noise_sigma 14.6146. */
    sampler_t sm;
    assert_int_equal(sampler_init(&sm, SAMPLER_EULER, &s, 20, 1, 0.0f), 0);
    assert_true(sm.timesteps[0] == 999.0f && sm.timesteps[19] == 0.0f);
    assert_true(fabsf(sm.timesteps[1] - 946.4211f) < 1e-4f);
    assert_true(fabsf(sm.timesteps[10] - 473.21054f) < 1e-4f);
    static const float sig[4] = {14.6146f, 10.7468f, 8.0815f, 0.2322f};
    assert_true(fabsf(sm.sigmas[0] - sig[0]) < 1e-4f);
    assert_true(fabsf(sm.sigmas[1] - sig[1]) < 1e-4f);
    assert_true(fabsf(sm.sigmas[2] - sig[2]) < 1e-4f);
    assert_true(fabsf(sm.sigmas[18] - sig[3]) < 1e-4f);
    assert_true(fabsf(sm.sigmas[19] - 0.0292f) < 1e-4f);
    assert_true(sm.sigmas[20] == 0.0f);
    assert_true(fabsf(sm.init_noise_sigma - 14.6146f) < 1e-4f);
    assert_true(sampler_input_scale(&sm, 0) == (float)(1.0 / sqrt(14.614645004272461 * 14.614645004272461 + 1)));
    sampler_free(&sm);
    /* With leading spacing init_noise_sigma is sqrt(sigma_max^2 + 1) (sigma at t = 981). */
    s.cfg.timestep_spacing = SPACING_LEADING;
    assert_int_equal(sampler_init(&sm, SAMPLER_EULER_ANCESTRAL, &s, 50, 1, 0.0f), 0);
    assert_true(sm.timesteps[0] == 981.0f);
    assert_true(sm.sigmas[0] == s.sigmas[981]);
    assert_true(fabsf(sm.init_noise_sigma - 13.158468f) < 1e-5f);
    sampler_free(&sm);
    /* DDIM and DPM start from unit noise. */
    assert_int_equal(sampler_init(&sm, SAMPLER_DPMPP_2M, &s, 20, 1, 0.0f), 0);
    assert_true(sm.init_noise_sigma == 1.0f && sampler_input_scale(&sm, 3) == 1.0f);
    sampler_free(&sm);
    noise_schedule_free(&s);
}

/* ------------------------------------------------------------------------------------------
 * Config glue */

static void test_config_json(void **state) {
    (void)state;
    sched_config_t c;
    /* SD 1.5's scheduler/scheduler_config.json (a PNDM config; DDIM etc. are built from it). */
    cJSON *j = cJSON_Parse("{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.6.0\","
                           "\"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085,"
                           "\"num_train_timesteps\": 1000, \"set_alpha_to_one\": false,"
                           "\"skip_prk_steps\": true, \"steps_offset\": 1, \"trained_betas\": null,"
                           "\"clip_sample\": false}");
    assert_non_null(j);
    assert_int_equal(sched_config_from_json(&c, j), 0);
    assert_true(c.num_train_timesteps == 1000 && c.beta_start == 0.00085 && c.beta_end == 0.012);
    assert_true(c.beta_schedule == BETA_SCALED_LINEAR && c.prediction_type == PRED_EPSILON);
    assert_true(c.steps_offset == 1 && c.set_alpha_to_one == 0 && c.clip_sample == 0);
    assert_true(c.timestep_spacing == SPACING_DEFAULT);
    assert_true(sampler_spacing(SAMPLER_DDIM, &c) == SPACING_LEADING);
    assert_true(sampler_spacing(SAMPLER_EULER, &c) == SPACING_LINSPACE);
    assert_true(sampler_spacing(SAMPLER_DPMPP_2M, &c) == SPACING_LINSPACE);
    cJSON_Delete(j);
    /* SD 2.1 (768, v-prediction) with an explicit spacing. */
    j = cJSON_Parse("{\"_class_name\": \"DDIMScheduler\", \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\","
                    "\"beta_start\": 0.00085, \"clip_sample\": false, \"num_train_timesteps\": 1000,"
                    "\"prediction_type\": \"v_prediction\", \"set_alpha_to_one\": false, \"steps_offset\": 1,"
                    "\"timestep_spacing\": \"trailing\", \"use_karras_sigmas\": false,"
                    "\"interpolation_type\": \"linear\"}");
    assert_int_equal(sched_config_from_json(&c, j), 0);
    assert_true(c.prediction_type == PRED_V && c.timestep_spacing == SPACING_TRAILING);
    assert_true(sampler_spacing(SAMPLER_EULER, &c) == SPACING_TRAILING);
    cJSON_Delete(j);
    /* No config: diffusers' constructor defaults. */
    assert_int_equal(sched_config_from_json(&c, NULL), 0);
    assert_true(c.beta_start == 0.0001 && c.beta_end == 0.02 && c.beta_schedule == BETA_LINEAR);
    assert_true(c.set_alpha_to_one == 1 && c.clip_sample == 1 && c.steps_offset == 0);
    /* Errors name the key. */
    static const char *bad[][2] = {
        {"{\"beta_schedule\": \"sigmoid\"}", "beta_schedule"},
        {"{\"prediction_type\": 3}", "prediction_type"},
        {"{\"steps_offset\": 1.5}", "steps_offset"},
        {"{\"set_alpha_to_one\": 0}", "set_alpha_to_one"},
        {"{\"use_karras_sigmas\": true}", "use_karras_sigmas"},
        {"{\"trained_betas\": [0.1, 0.2]}", "trained_betas"},
        {"{\"rescale_betas_zero_snr\": true}", "rescale_betas_zero_snr"},
        {"{\"timestep_spacing\": \"default\"}", "timestep_spacing"},
        {"{\"interpolation_type\": \"log_linear\"}", "interpolation_type"},
        {"[1, 2]", "object"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        j = cJSON_Parse(bad[k][0]);
        assert_non_null(j);
        assert_int_equal(sched_config_from_json(&c, j), SD_ERR_FORMAT);
        if (!strstr(sd_last_error(), bad[k][1])) {
            print_error("error for %s does not name %s: %s\n", bad[k][0], bad[k][1], sd_last_error());
            fail();
        }
        cJSON_Delete(j);
    }
    /* Schedule argument checks. */
    noise_schedule_t s;
    sched_config_default(&c);
    c.num_train_timesteps = 0;
    assert_int_equal(noise_schedule_init(&s, &c), SD_ERR_ARG);
    sched_config_default(&c);
    c.beta_end = 1.5;
    assert_int_equal(noise_schedule_init(&s, &c), SD_ERR_ARG);
    sampler_kind_t k;
    assert_int_equal(sampler_kind_parse("euler_a", &k), 0);
    assert_true(k == SAMPLER_EULER_ANCESTRAL);
    assert_int_equal(sampler_kind_parse("dpm++", &k), SD_ERR_ARG);
    for (int i = 0; i < SAMPLER_KIND_COUNT; i++) {
        assert_int_equal(sampler_kind_parse(sampler_kind_name((sampler_kind_t)i), &k), 0);
        assert_int_equal(k, i);
    }
}

/* ------------------------------------------------------------------------------------------
 * Training noising */

static void test_ddpm_noising(void **state) {
    (void)state;
    st_file_t f;
    golden_open(&f, FIXTURE);
    size_t n = 12;   /* [3, 2, 2, 3]: B = 3 samples of 12 */
    float *x0 = golden_get(&f, "ddpm.x0", 36), *eps = golden_get(&f, "ddpm.eps", 36);
    float *tf = golden_get(&f, "ddpm.t", 3);
    float *want_xt = golden_get(&f, "ddpm.xt", 36), *want_v = golden_get(&f, "ddpm.v", 36);
    int t[3] = {(int)tf[0], (int)tf[1], (int)tf[2]};
    sched_config_t c;
    noise_schedule_t s;
    float xt[36], v[36], target[36];
    for (int p = 0; p < 3; p++) {
        sd_config(&c, (prediction_type_t)p);
        assert_int_equal(noise_schedule_init(&s, &c), 0);
        ddpm_add_noise(xt, x0, eps, t, 3, n, &s);
        assert_close("ddpm xt", xt, want_xt, 36, 1e-6);
        ddpm_velocity(v, x0, eps, t, 3, n, &s);
        assert_close("ddpm v", v, want_v, 36, 1e-6);
        ddpm_target(target, x0, eps, t, 3, n, &s);
        const float *want = p == PRED_EPSILON ? eps : (p == PRED_V ? want_v : x0);
        assert_close("ddpm target", target, want, 36, 1e-6);
        noise_schedule_free(&s);
    }
    /* Identity behind the v target: x0 = sqrt(a) x_t - sqrt(1-a) v. */
    sd_config(&c, PRED_V);
    assert_int_equal(noise_schedule_init(&s, &c), 0);
    for (int b = 0; b < 3; b++) {
        double a = s.alphas_cumprod[t[b]];
        for (size_t i = 0; i < n; i++) {
            double rec = sqrt(a) * xt[b * n + i] - sqrt(1 - a) * v[b * n + i];
            assert_true(fabs(rec - x0[b * n + i]) < 1e-5);
        }
    }
    noise_schedule_free(&s);
    free(x0), free(eps), free(tf), free(want_xt), free(want_v);
    st_close(&f);
}

/* ------------------------------------------------------------------------------------------
 * Trajectories. The analytic model of gen_sampler_golden.py: tanh(0.5 x + sin(t/100)), and
 * + 0.3 inside the tanh for the conditional rows of a guidance batch. */

enum { TB = 2, TC = 4, TH = 3, TW = 3, TN1 = TC * TH * TW, TN = TB * TN1 };

typedef struct {
    int expect_batch;       /* the batch the driver must use */
    int calls;
    float *traj;            /* captured latents after each step, [steps, TN] */
    int captured;
} tmodel_t;

static int analytic_model(void *ctx, float *out, const float *in, float t, int batch) {
    tmodel_t *m = ctx;
    assert_int_equal(batch, m->expect_batch);
    m->calls++;
    float s = (float)sin((double)t / 100.0);
    for (int b = 0; b < batch; b++) {
        float off = (batch == 2 * TB && b >= TB) ? 0.3f : 0.0f;
        /* Guidance batches carry the same latents in both halves. */
        if (batch == 2 * TB && b >= TB)
            assert_memory_equal(in + (size_t)b * TN1, in + (size_t)(b - TB) * TN1, TN1 * sizeof(float));
        for (int i = 0; i < TN1; i++) {
            size_t j = (size_t)b * TN1 + i;
            out[j] = tanhf(0.5f * in[j] + (s + off));
        }
    }
    return 0;
}

static void capture(void *ctx, int step, int num_steps, float t, const float *latents) {
    tmodel_t *m = ctx;
    assert_int_equal(step, m->captured + 1);
    memcpy(m->traj + (size_t)m->captured * TN, latents, TN * sizeof(float));
    m->captured++;
}

/* Latents of an impossible size (2^54 floats, 64 PiB: beyond any address space, so no
 * overcommit setting lets it succeed): the sampler's input-sized allocations are returned
 * errors (SD_ERR_NOMEM naming what), not aborts. They used to abort in sd_xcalloc /
 * sd_xmalloc ("sampler.c:151: out of memory allocating ... x 4 bytes"). */
static void test_sampler_out_of_memory(void **state) {
    (void)state;
    sched_config_t c;
    sd_config(&c, PRED_EPSILON);
    noise_schedule_t s;
    assert_int_equal(noise_schedule_init(&s, &c), 0);
    const size_t huge = (size_t)1 << 54;
    sampler_t sm;
    sd_clear_error();
    assert_int_equal(sampler_init(&sm, SAMPLER_DPMPP_2M, &s, 20, huge, 0.0f), SD_ERR_NOMEM);
    assert_non_null(strstr(sd_last_error(), "dpmpp_2m: previous x0: out of memory"));
    assert_null(sm.timesteps);   /* freed on the way out */
    /* step noise drawn from the generator: n floats at every step */
    assert_int_equal(sampler_init(&sm, SAMPLER_EULER_ANCESTRAL, &s, 20, huge, 0.0f), 0);
    rng_t r;
    rng_init(&r, 1);
    assert_int_equal(sampler_step(&sm, 0, NULL, NULL, NULL, &r), SD_ERR_NOMEM);
    assert_non_null(strstr(sd_last_error(), "sampler step noise: out of memory"));
    assert_int_equal(r.counter, 0);   /* nothing drawn */
    sampler_free(&sm);
    noise_schedule_free(&s);
}

typedef struct {
    const char *name;
    sampler_kind_t kind;
    prediction_type_t pred;
    int steps;
    float eta, guidance;
    timestep_spacing_t spacing;
} run_t;

#define RUN_SEED0 7000   /* run r of the table uses seed RUN_SEED0 + r (as the Python) */

static int build_runs(run_t *runs) {
    int n = 0;
    static const char *const P[2] = {"eps", "v"};
    static char names[64][48];
    for (int p = 0; p < 2; p++) {
        for (int si = 0; si < 2; si++) {
            int steps = si ? 10 : 4;
            static const struct { const char *fmt; sampler_kind_t kind; float eta; } K[6] = {
                {"ddim_eta0_%s_%d", SAMPLER_DDIM, 0.0f},   {"ddim_eta05_%s_%d", SAMPLER_DDIM, 0.5f},
                {"euler_%s_%d", SAMPLER_EULER, 0.0f},      {"euler_a_%s_%d", SAMPLER_EULER_ANCESTRAL, 0.0f},
                {"dpmpp_2m_%s_%d", SAMPLER_DPMPP_2M, 0.0f}, {"ddim_inverse_%s_%d", SAMPLER_DDIM_INVERSE, 0.0f}};
            for (int k = 0; k < 6; k++) {
                snprintf(names[n], sizeof names[n], K[k].fmt, P[p], steps);
                runs[n] = (run_t){names[n], K[k].kind, p ? PRED_V : PRED_EPSILON, steps, K[k].eta, 1.0f,
                                  SPACING_DEFAULT};
                n++;
            }
        }
    }
    static const run_t extra[] = {
        {"euler_leading_eps_10", SAMPLER_EULER, PRED_EPSILON, 10, 0, 1, SPACING_LEADING},
        {"euler_a_trailing_v_10", SAMPLER_EULER_ANCESTRAL, PRED_V, 10, 0, 1, SPACING_TRAILING},
        {"ddim_trailing_v_10", SAMPLER_DDIM, PRED_V, 10, 0, 1, SPACING_TRAILING},
        {"ddim_linspace_eps_10", SAMPLER_DDIM, PRED_EPSILON, 10, 0, 1, SPACING_LINSPACE},
        {"dpmpp_2m_leading_eps_10", SAMPLER_DPMPP_2M, PRED_EPSILON, 10, 0, 1, SPACING_LEADING},
        {"dpmpp_2m_cfg_eps_10", SAMPLER_DPMPP_2M, PRED_EPSILON, 10, 0, 7.5f, SPACING_DEFAULT},
        {"ddim_cfg_v_4", SAMPLER_DDIM, PRED_V, 4, 0, 5.0f, SPACING_DEFAULT},
        {"ddim_inverse_trailing_eps_10", SAMPLER_DDIM_INVERSE, PRED_EPSILON, 10, 0, 1, SPACING_TRAILING},
    };
    for (size_t k = 0; k < sizeof extra / sizeof *extra; k++) runs[n++] = extra[k];
    return n;
}

static void test_trajectories(void **state) {
    (void)state;
    st_file_t f;
    golden_open(&f, FIXTURE);
    run_t runs[64];
    int nruns = build_runs(runs);
    float *inv_x0 = golden_get(&f, "inv.x0", TN);
    double worst = 0;
    for (int r = 0; r < nruns; r++) {
        const run_t *R = &runs[r];
        char key[128];
        snprintf(key, sizeof key, "run.%s.traj", R->name);
        float *want = golden_get(&f, key, (int64_t)(R->steps + 1) * TN);
        snprintf(key, sizeof key, "run.%s.t", R->name);
        float *want_t = golden_get(&f, key, R->steps);

        sched_config_t c;
        sd_config(&c, R->pred);
        c.timestep_spacing = R->spacing;
        noise_schedule_t s;
        assert_int_equal(noise_schedule_init(&s, &c), 0);
        sampler_t sm;
        assert_int_equal(sampler_init(&sm, R->kind, &s, R->steps, TN, R->eta), 0);
        assert_bits(R->name, sm.timesteps, want_t, (size_t)R->steps);

        int inverse = R->kind == SAMPLER_DDIM_INVERSE;
        rng_t rng;
        rng_init(&rng, RUN_SEED0 + (uint64_t)r);
        /* The initial latents: seeded noise (or the clean latents) times init_noise_sigma. */
        float x_init[TN];
        if (inverse) memcpy(x_init, inv_x0, sizeof x_init);
        else {
            rng_t peek;
            rng_init(&peek, RUN_SEED0 + (uint64_t)r);
            rng_fill_normal(&peek, x_init, TN);
        }
        for (int i = 0; i < TN; i++) x_init[i] *= sm.init_noise_sigma;
        assert_close(R->name, x_init, want, TN, 1e-6);
        sampler_free(&sm);

        tmodel_t m = {R->guidance > 1 ? 2 * TB : TB, 0, sd_xmalloc((size_t)R->steps * TN * sizeof(float)), 0};
        sample_opts_t o = {R->kind, R->steps, R->eta, R->guidance, &rng, analytic_model, &m, capture, &m};
        float lat[TN];
        assert_int_equal(diffusion_sample(lat, inverse ? inv_x0 : NULL, TB, TC, TH, TW, &s, &o), 0);
        assert_int_equal(m.calls, R->steps);
        assert_int_equal(m.captured, R->steps);
        assert_memory_equal(lat, m.traj + (size_t)(R->steps - 1) * TN, sizeof lat);
        for (int i = 0; i < R->steps; i++) {
            const float *w = want + (size_t)(i + 1) * TN;
            double e = rel_error(m.traj + (size_t)i * TN, w, TN);
            if (e > worst) worst = e;
            if (verbose()) fprintf(stderr, "%-30s step %2d  rel err %.3g\n", R->name, i + 1, e);
            if (!(e <= TRAJ_TOL)) {
                print_error("%s step %d: relative error %.3g > %.3g\n", R->name, i + 1, e, TRAJ_TOL);
                fail();
            }
        }
        free(m.traj);
        free(want);
        free(want_t);
        noise_schedule_free(&s);
    }
    if (verbose()) fprintf(stderr, "trajectories: %d runs, worst step error %.3g\n", nruns, worst);
    free(inv_x0);
    st_close(&f);
}

/* Inversion followed by DDIM sampling with the same steps and model returns to the start, up
 * to the model's change across one step (inversion evaluates the model at the target level on
 * the source sample): a first-order error, measured (C and the Python reference agree) as
 * 0.051 (eps) / 0.061 (v) at 50 steps and 0.0146 / 0.0159 at 200 steps for this model. */
static void test_inversion_reconstructs(void **state) {
    (void)state;
    st_file_t f;
    golden_open(&f, FIXTURE);
    float *x0 = golden_get(&f, "inv.x0", TN);
    st_close(&f);
    for (int p = 0; p < 2; p++) {
        sched_config_t c;
        sd_config(&c, p ? PRED_V : PRED_EPSILON);
        noise_schedule_t s;
        assert_int_equal(noise_schedule_init(&s, &c), 0);
        double err[2];
        const int steps[2] = {50, 200};
        for (int k = 0; k < 2; k++) {
            tmodel_t m = {TB, 0, sd_xmalloc((size_t)steps[k] * TN * sizeof(float)), 0};
            sample_opts_t o = {SAMPLER_DDIM_INVERSE, steps[k], 0, 1, NULL, analytic_model, &m, NULL, NULL};
            float lat[TN], rec[TN];
            assert_int_equal(diffusion_sample(lat, x0, TB, TC, TH, TW, &s, &o), 0);
            o.kind = SAMPLER_DDIM;
            assert_int_equal(diffusion_sample(rec, lat, TB, TC, TH, TW, &s, &o), 0);
            err[k] = rel_error(rec, x0, TN);
            if (verbose()) fprintf(stderr, "inversion %s %d steps: reconstruction rel err %.4g\n",
                                   p ? "v" : "eps", steps[k], err[k]);
            free(m.traj);
        }
        assert_true(err[0] < 0.07);
        assert_true(err[1] < 0.02);
        assert_true(err[1] < err[0] / 3);   /* first-order convergence in the step count */
        noise_schedule_free(&s);
    }
    free(x0);
}

/* ------------------------------------------------------------------------------------------
 * Exact denoiser: for data that is a single point x*, the ideal model is
 * eps = (x_t - sqrt(a) x*) / sqrt(1 - a) (v = sqrt(a) eps - sqrt(1-a) x*), and every sampler
 * must land on x*: DDIM (final alpha 1), Euler, Euler ancestral and DPM++ end on the last
 * step's x0 prediction. a is read from the model input's level: the timestep's sigma. */

typedef struct {
    const noise_schedule_t *s;
    const float *xstar;
    prediction_type_t pred;
} exact_t;

static double sigma_at(const noise_schedule_t *s, double t) {   /* linear interpolation */
    int j = (int)floor(t);
    if (j >= s->T - 1) return s->sigmas[s->T - 1];
    return s->sigmas[j] + (t - j) * ((double)s->sigmas[j + 1] - s->sigmas[j]);
}

static int exact_model(void *ctx, float *out, const float *in, float t, int batch) {
    exact_t *e = ctx;
    double sg = sigma_at(e->s, t), a = 1.0 / (1.0 + sg * sg);
    if (t == floorf(t)) a = e->s->alphas_cumprod[(int)t];
    for (int i = 0; i < batch * TN1; i++) {
        double xs = e->xstar[i % TN];
        double eps = (in[i] - sqrt(a) * xs) / sqrt(1 - a);
        out[i] = (float)(e->pred == PRED_EPSILON ? eps : sqrt(a) * eps - sqrt(1 - a) * xs);
    }
    return 0;
}

static void test_exact_denoiser(void **state) {
    (void)state;
    trng_t tr;
    trng_seed(&tr, 3);
    float xstar[TN];
    fill_normal(&tr, xstar, TN, 0.8f);
    const sampler_kind_t kinds[4] = {SAMPLER_DDIM, SAMPLER_EULER, SAMPLER_EULER_ANCESTRAL, SAMPLER_DPMPP_2M};
    for (int p = 0; p < 2; p++) {
        for (int k = 0; k < 4; k++) {
            for (int eta = 0; eta < 2; eta++) {
                if (eta && kinds[k] != SAMPLER_DDIM) continue;
                sched_config_t c;
                sd_config(&c, p ? PRED_V : PRED_EPSILON);
                c.set_alpha_to_one = 1;
                noise_schedule_t s;
                assert_int_equal(noise_schedule_init(&s, &c), 0);
                exact_t e = {&s, xstar, c.prediction_type};
                rng_t rng;
                rng_init(&rng, 11);
                sample_opts_t o = {kinds[k], 12, eta ? 1.0f : 0.0f, 1, &rng, exact_model, &e, NULL, NULL};
                float lat[TN];
                assert_int_equal(diffusion_sample(lat, NULL, TB, TC, TH, TW, &s, &o), 0);
                double err = rel_error(lat, xstar, TN);
                if (verbose()) fprintf(stderr, "exact denoiser %s %s eta %d: rel err %.3g\n",
                                       sampler_kind_name(kinds[k]), p ? "v" : "eps", eta, err);
                if (!(err < 1e-4)) {
                    print_error("exact denoiser %s %s: rel err %.3g\n", sampler_kind_name(kinds[k]),
                                p ? "v" : "eps", err);
                    fail();
                }
                noise_schedule_free(&s);
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Noisy steps against the forward marginal: a second check of DDIM with eta > 0 and of Euler
 * ancestral, beside the golden trajectories. With an exact denoiser, a sample on the marginal
 * x_t = sqrt(a_t) x* + sqrt(1 - a_t) e must land on the marginal of the next level:
 * x_prev = sqrt(a_prev) x* + c_e e + c_z z with c_e^2 + c_z^2 = 1 - a_prev, where c_z, the
 * coefficient of the step's noise z, is eta times the square root of the posterior variance
 * (1 - a_prev) / (1 - a_t) (1 - a_t / a_prev) (eta 0: the noise is ignored: deterministic DDIM).
 * Euler ancestral works in sigma space, x = x* + s e: c_e^2 + c_z^2 = s_next^2, c_z > 0 but
 * on the last step (s_next = 0, where the step lands on x*). The coefficients are measured from
 * two steps that differ only in z. */

#define MN 64

/* c with y = c * u (least squares), failing if y is not a multiple of u. */
static double coef(const char *what, const float *y, const float *u) {
    double num = 0, den = 0, scale = 0;
    for (int j = 0; j < MN; j++) num += (double)y[j] * u[j], den += (double)u[j] * u[j], scale = fmax(scale, fabs(y[j]));
    const double c = num / den;
    for (int j = 0; j < MN; j++) {
        if (fabs(y[j] - c * u[j]) > 1e-5 * scale + 1e-7) {
            print_error("%s: not a multiple of its direction at %d (%g vs %g x %g)\n", what, j, y[j], c, u[j]);
            fail();
        }
    }
    return c;
}

static void check_near(const char *what, int step, double got, double want, double tol) {
    if (!(fabs(got - want) <= tol)) {
        print_error("%s, step %d: %.9g, want %.9g\n", what, step, got, want);
        fail();
    }
}

static void test_noise_steps_marginal(void **state) {
    (void)state;
    trng_t tr;
    trng_seed(&tr, 23);
    float xs[MN], e[MN], z[MN], zero[MN] = {0}, x[MN], xz[MN], mo[MN], y[MN];
    fill_normal(&tr, xs, MN, 0.8f);
    fill_normal(&tr, e, MN, 1.0f);
    fill_normal(&tr, z, MN, 1.0f);
    const float etas[3] = {0.0f, 0.3f, 1.0f};
    for (int p = 0; p < 2; p++) {
        sched_config_t c;
        sd_config(&c, p ? PRED_V : PRED_EPSILON);
        noise_schedule_t s;
        assert_int_equal(noise_schedule_init(&s, &c), 0);
        for (int k = 0; k < 3; k++) {
            sampler_t sm;
            assert_int_equal(sampler_init(&sm, SAMPLER_DDIM, &s, 10, MN, etas[k]), 0);
            assert_int_equal(sampler_needs_noise(&sm), etas[k] > 0);
            for (int i = 0; i < 10; i++) {
                const int t = (int)sm.timesteps[i], prev = t - sm.step_ratio;
                const double a = s.alphas_cumprod[t], ap = prev >= 0 ? s.alphas_cumprod[prev] : s.alphas_cumprod[0];
                for (int j = 0; j < MN; j++) {
                    x[j] = (float)(sqrt(a) * xs[j] + sqrt(1 - a) * e[j]);
                    mo[j] = p ? (float)(sqrt(a) * e[j] - sqrt(1 - a) * xs[j]) : e[j];
                }
                memcpy(xz, x, sizeof x);
                sm.next_step = i;
                assert_int_equal(sampler_step(&sm, i, xz, mo, z, NULL), 0);
                sm.next_step = i;
                assert_int_equal(sampler_step(&sm, i, x, mo, zero, NULL), 0);
                for (int j = 0; j < MN; j++) y[j] = xz[j] - x[j];
                const double cz = etas[k] > 0 ? coef("DDIM noise term", y, z) : 0;
                if (etas[k] == 0) assert_memory_equal(xz, x, sizeof x);
                for (int j = 0; j < MN; j++) y[j] = (float)(x[j] - sqrt(ap) * xs[j]);
                const double ce = coef("DDIM eps term", y, e);
                const double sigma = etas[k] * sqrt((1 - ap) / (1 - a) * (1 - a / ap));
                check_near("DDIM noise coefficient", i, cz, sigma, 1e-4 * sqrt(1 - ap));
                check_near("DDIM c_e^2 + c_z^2 (the marginal's 1 - a_prev)", i, ce * ce + cz * cz, 1 - ap, 1e-3 * (1 - ap));
            }
            sampler_free(&sm);
        }
        if (p == 0) {   /* Euler ancestral (eps prediction) */
            sampler_t sm;
            assert_int_equal(sampler_init(&sm, SAMPLER_EULER_ANCESTRAL, &s, 10, MN, 0.0f), 0);
            assert_true(sampler_needs_noise(&sm));
            for (int i = 0; i < 10; i++) {
                const double sg = sm.sigmas[i], sn = sm.sigmas[i + 1];
                for (int j = 0; j < MN; j++) x[j] = (float)(xs[j] + sg * e[j]);
                memcpy(xz, x, sizeof x);
                sm.next_step = i;
                assert_int_equal(sampler_step(&sm, i, xz, e, z, NULL), 0);
                sm.next_step = i;
                assert_int_equal(sampler_step(&sm, i, x, e, zero, NULL), 0);
                for (int j = 0; j < MN; j++) y[j] = xz[j] - x[j];
                const double cz = sn > 0 ? coef("Euler a noise term", y, z) : 0;
                if (sn == 0) assert_memory_equal(xz, x, sizeof x);
                for (int j = 0; j < MN; j++) y[j] = x[j] - xs[j];
                const double ce = coef("Euler a eps term", y, e);
                if (sn > 0) assert_true(cz > 0.01 * sn);
                check_near("Euler a c_e^2 + c_z^2 (the marginal's s_next^2)", i, ce * ce + cz * cz, sn * sn,
                           1e-3 * sn * sn + 1e-6 * sg * sg);
            }
            sampler_free(&sm);
        }
        noise_schedule_free(&s);
    }
}

/* ------------------------------------------------------------------------------------------
 * Guidance and errors */

static void test_cfg_combine(void **state) {
    (void)state;
    float mo[2 * 2 * 3] = {1, 2, 3, 4, 5, 6, /* uncond rows */ 2, 2, 1, 4, 7, 6 /* cond rows */};
    float out[6];
    cfg_combine_batched(out, mo, 2, 3, 7.5f);
    const float want[6] = {1 + 7.5f * 1, 2, 3 + 7.5f * -2, 4, 5 + 7.5f * 2, 6};
    assert_close("cfg", out, want, 6, 1e-7);
    cfg_combine_batched(mo, mo, 2, 3, 7.5f);   /* in place into the uncond half */
    assert_close("cfg in place", mo, want, 6, 1e-7);
    cfg_combine(out, want, want, 3.0f, 6);     /* cond == uncond: no change */
    assert_close("cfg equal", out, want, 6, 0);
    float u[3] = {1, -1, 0.5f}, cnd[3] = {0, 2, 0.5f};
    cfg_combine(out, u, cnd, 1.0f, 3);          /* scale 1: the conditional output */
    assert_close("cfg g=1", out, cnd, 3, 0);
}

static int failing_model(void *ctx, float *out, const float *in, float t, int batch) {
    int *calls = ctx;
    if (++*calls == 3) return sd_error(SD_ERR_NUMERIC, "model failed at t=%g", t);
    memset(out, 0, (size_t)batch * TN1 * sizeof(float));
    return 0;
}

static void test_errors(void **state) {
    (void)state;
    sched_config_t c;
    sd_config(&c, PRED_SAMPLE);
    noise_schedule_t s;
    assert_int_equal(noise_schedule_init(&s, &c), 0);
    sampler_t sm;
    assert_int_equal(sampler_init(&sm, SAMPLER_EULER_ANCESTRAL, &s, 10, 4, 0), SD_ERR_ARG);
    assert_int_equal(sampler_init(&sm, SAMPLER_DDIM, &s, 0, 4, 0), SD_ERR_ARG);
    assert_int_equal(sampler_init(&sm, SAMPLER_DDIM, &s, 1001, 4, 0), SD_ERR_ARG);
    assert_int_equal(sampler_init(&sm, SAMPLER_DDIM, &s, 10, 4, -0.5f), SD_ERR_ARG);
    s.cfg.timestep_spacing = SPACING_LINSPACE;
    assert_int_equal(sampler_init(&sm, SAMPLER_DDIM_INVERSE, &s, 10, 4, 0), SD_ERR_ARG);
    s.cfg.timestep_spacing = SPACING_DEFAULT;
    /* Steps out of order; step noise without a source. */
    float x[4] = {0}, mo[4] = {0};
    assert_int_equal(sampler_init(&sm, SAMPLER_DDIM, &s, 10, 4, 0.5f), 0);
    assert_int_equal(sampler_step(&sm, 1, x, mo, NULL, NULL), SD_ERR_ARG);
    assert_int_equal(sampler_step(&sm, 0, x, mo, NULL, NULL), SD_ERR_ARG);
    rng_t rng;
    rng_init(&rng, 1);
    assert_int_equal(sampler_step(&sm, 0, x, mo, NULL, &rng), 0);
    assert_true(rng.counter == 4);
    assert_int_equal(sampler_step(&sm, 0, x, mo, NULL, &rng), SD_ERR_ARG);
    sampler_free(&sm);
    /* The driver: no generator for initial noise; a model error stops the loop. */
    int calls = 0;
    sample_opts_t o = {SAMPLER_DDIM, 10, 0, 1, NULL, failing_model, &calls, NULL, NULL};
    float lat[TN];
    assert_int_equal(diffusion_sample(lat, NULL, TB, TC, TH, TW, &s, &o), SD_ERR_ARG);
    o.rng = &rng;
    assert_int_equal(diffusion_sample(lat, NULL, TB, TC, TH, TW, &s, &o), SD_ERR_NUMERIC);
    assert_int_equal(calls, 3);
    assert_non_null(strstr(sd_last_error(), "model failed"));
    noise_schedule_free(&s);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_schedule_tables),
        cmocka_unit_test(test_timesteps_golden),
        cmocka_unit_test(test_timesteps_sd15_known),
        cmocka_unit_test(test_sampler_out_of_memory),
        cmocka_unit_test(test_config_json),
        cmocka_unit_test(test_ddpm_noising),
        cmocka_unit_test(test_trajectories),
        cmocka_unit_test(test_inversion_reconstructs),
        cmocka_unit_test(test_exact_denoiser),
        cmocka_unit_test(test_noise_steps_marginal),
        cmocka_unit_test(test_cfg_combine),
        cmocka_unit_test(test_errors),
    };
    return RUN_TESTS(argc, argv, "diffusion", tests, NULL, NULL);
}
