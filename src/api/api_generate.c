/* svdiff_generate and the image helpers around it: text-to-image as `svdiff generate` runs a single
 * prompt (image k seeded seed + k, batches of consecutive images, each decoded as soon as it is
 * sampled), the PNG text and file it writes, and reading images. The cancel callback is polled after
 * every denoising step through the pipeline's stop flag, so sampling stops before its next UNet call. */
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_internal.h"
#include "base/runtime.h"
#include "io/image.h"
#include "io/outputs.h"
#include "ops/ops.h"

_Static_assert((int)SVDIFF_SAMPLER_DDIM == (int)SAMPLER_DDIM && (int)SVDIFF_SAMPLER_EULER == (int)SAMPLER_EULER &&
                   (int)SVDIFF_SAMPLER_EULER_A == (int)SAMPLER_EULER_ANCESTRAL &&
                   (int)SVDIFF_SAMPLER_DPMPP_2M == (int)SAMPLER_DPMPP_2M,
               "public sampler values are the engine's");

SVDIFF_API const char *svdiff_sampler_name(svdiff_sampler_t s) {
    return (unsigned)s <= SVDIFF_SAMPLER_DPMPP_2M ? sampler_kind_name((sampler_kind_t)s) : NULL;
}

SVDIFF_API int svdiff_sampler_parse(const char *name, svdiff_sampler_t *out) {
    sampler_kind_t k;
    int rc = API_NEED(name, "svdiff_sampler_parse");
    if (!rc) rc = API_NEED(out, "svdiff_sampler_parse");
    if (rc) return rc;
    if (sampler_kind_parse(name, &k) || k == SAMPLER_DDIM_INVERSE)
        return sd_error(SD_ERR_ARG, "unknown sampler '%s' (ddim, euler, euler_a, dpmpp_2m)", name);
    *out = (svdiff_sampler_t)k;
    return SD_OK;
}

SVDIFF_API svdiff_generate_params_t svdiff_generate_default_params(void) {
    svdiff_generate_params_t p = {0};
    p.steps = 20, p.cfg = 7.5f, p.eta = 0.0f, p.sampler = SVDIFF_SAMPLER_DDIM, p.seed = 42;
    p.num_images = 1, p.batch = 1;
    return p;
}

typedef struct {
    const svdiff_callbacks_t *cb;
    svdiff_stage_t stage;
    long base, total;             /* steps of earlier batches; of the whole call */
    double t0;
    volatile sig_atomic_t stop;   /* the pipeline's stop flag: set once cancel says so */
} gen_ctx_t;

/* After each denoising step: progress, then the cancel poll (the next UNet call sees the flag). */
static void on_step(void *vctx, int step, int num_steps, float t, const float *latents) {
    (void)num_steps, (void)t, (void)latents;
    gen_ctx_t *g = vctx;
    const long done = g->base + step;
    if (g->cb->progress) g->cb->progress(g->stage, (int)done, (int)g->total, (sd_now_s() - g->t0) / (double)done, g->cb->user_data);
    if (g->cb->cancel && g->cb->cancel(g->cb->user_data)) g->stop = 1;
}

SVDIFF_API svdiff_generate_params_t svdiff_generate_model_params(const svdiff_model_t *m) {
    svdiff_generate_params_t p = svdiff_generate_default_params();
    if (!m || !m->p.pooled_dim) return p;   /* SD 1.x / 2.x: svdiff's defaults, as always */
    /* SDXL: StableDiffusionXLPipeline's guidance, and the sampler its scheduler config names */
    static const struct {
        const char *cls;
        svdiff_sampler_t s;
    } CLASSES[] = {{"EulerDiscreteScheduler", SVDIFF_SAMPLER_EULER},
                   {"EulerAncestralDiscreteScheduler", SVDIFF_SAMPLER_EULER_A},
                   {"DPMSolverMultistepScheduler", SVDIFF_SAMPLER_DPMPP_2M},
                   {"DDIMScheduler", SVDIFF_SAMPLER_DDIM}};
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(m->p.model.scheduler_config, "_class_name");
    for (size_t i = 0; cJSON_IsString(cls) && i < sizeof CLASSES / sizeof *CLASSES; i++)
        if (!strcmp(cls->valuestring, CLASSES[i].cls)) p.sampler = CLASSES[i].s;
    p.cfg = 5.0f;
    return p;
}

/* A micro-conditioning pair: {0, 0} (the default) or a value in range; sizes both positive. */
static int check_pair(const int v[2], const char *name, int is_size) {
    if (!v[0] && !v[1]) return SD_OK;
    if (v[0] < 0 || v[1] < 0 || v[0] > SVDIFF_MICRO_COND_MAX || v[1] > SVDIFF_MICRO_COND_MAX || (is_size && (!v[0] || !v[1])))
        return sd_error(SD_ERR_ARG, "svdiff_generate: %s must be %s in [%d, %d] (or 0,0: the default), got %d,%d", name,
                        is_size ? "two sizes" : "two offsets", is_size, SVDIFF_MICRO_COND_MAX, v[0], v[1]);
    return SD_OK;
}

/* The checks of `svdiff generate`'s flags, on the struct. */
static int check_params(const svdiff_generate_params_t *g) {
    if (!g->prompt) return sd_error(SD_ERR_ARG, "svdiff_generate: prompt is NULL");
    if (g->steps < 1 || g->steps > 1000) return sd_error(SD_ERR_ARG, "svdiff_generate: steps must be in [1, 1000], got %d", g->steps);
    if (!isfinite(g->cfg)) return sd_error(SD_ERR_ARG, "svdiff_generate: cfg must be a finite number");
    if (!(g->eta >= 0 && g->eta <= 1)) return sd_error(SD_ERR_ARG, "svdiff_generate: eta must be in [0, 1], got %g", (double)g->eta);
    if ((unsigned)g->sampler > SVDIFF_SAMPLER_DPMPP_2M)
        return sd_error(SD_ERR_ARG, "svdiff_generate: unknown sampler %d", (int)g->sampler);
    if (g->num_images < 1 || g->num_images > 10000)
        return sd_error(SD_ERR_ARG, "svdiff_generate: num_images must be in [1, 10000], got %d", g->num_images);
    if (g->batch < 1 || g->batch > 64) return sd_error(SD_ERR_ARG, "svdiff_generate: batch must be in [1, 64], got %d", g->batch);
    if (g->width < 0 || g->height < 0 || g->width > 8192 || g->height > 8192)
        return sd_error(SD_ERR_ARG, "svdiff_generate: width and height must be in [0, 8192] (0: native), got %dx%d",
                        g->width, g->height);
    if (g->init_latents && g->n_init_latents != 1 && g->n_init_latents != g->num_images)
        return sd_error(SD_ERR_ARG, "svdiff_generate: n_init_latents must be 1 or num_images (%d), got %d", g->num_images,
                        g->n_init_latents);
    int rc = check_pair(g->original_size, "original_size", 1);
    if (!rc) rc = check_pair(g->crops_coords_top_left, "crops_coords_top_left", 0);
    if (!rc) rc = check_pair(g->target_size, "target_size", 1);
    if (!rc) rc = check_pair(g->negative_original_size, "negative_original_size", 1);
    if (!rc) rc = check_pair(g->negative_crops_coords_top_left, "negative_crops_coords_top_left", 0);
    if (!rc) rc = check_pair(g->negative_target_size, "negative_target_size", 1);
    if (!rc && (g->clip_skip < 0 || g->clip_skip > 64))
        rc = sd_error(SD_ERR_ARG, "svdiff_generate: clip_skip must be in [0, 64], got %d", g->clip_skip);
    return rc;
}

/* The run's options for images [first, first + bn) of the call (the pipeline checks what needs the
 * model: micro-conditioning without text_time, clip_skip beyond the encoders' layers). */
static txt2img_opts_t opts_of(const svdiff_generate_params_t *g, int W, int H, int first, int bn) {
    txt2img_opts_t o = {.prompt = g->prompt, .negative_prompt = g->negative_prompt, .width = W, .height = H,
                        .steps = g->steps, .cfg = g->cfg, .eta = g->eta, .sampler = (sampler_kind_t)g->sampler,
                        .seed = g->seed + (uint64_t)first, .batch = bn, .clip_skip = g->clip_skip};
    for (int i = 0; i < 2; i++) {
        o.original_size[i] = g->original_size[i], o.crops_coords_top_left[i] = g->crops_coords_top_left[i];
        o.target_size[i] = g->target_size[i], o.negative_original_size[i] = g->negative_original_size[i];
        o.negative_crops_coords_top_left[i] = g->negative_crops_coords_top_left[i];
        o.negative_target_size[i] = g->negative_target_size[i];
    }
    return o;
}

SVDIFF_API int svdiff_generate(svdiff_model_t *m, const svdiff_generate_params_t *params, svdiff_image_t **out_images) {
    if (out_images) *out_images = NULL;
    int rc = API_NEED(m, "svdiff_generate");
    if (!rc) rc = API_NEED(params, "svdiff_generate");
    if (!rc) rc = check_params(params);
    if (rc) return rc;
    pipeline_t *p = &m->p;
    const int W = params->width ? params->width : pipeline_native_size(p);
    const int H = params->height ? params->height : pipeline_native_size(p);
    if ((rc = pipeline_check_size(p, W, H))) return rc;
    int C, h, w;
    pipeline_latent_shape(p, W, H, &C, &h, &w);
    const int n = params->num_images;
    const size_t per = (size_t)C * h * w, img_bytes = (size_t)W * H * 3;
    float *init = NULL;
    if (params->init_latents) {   /* one row shared by every image, or one per image */
        if (!(init = malloc(sizeof(float) * per * n))) return sd_nomem("init latents", sizeof(float) * per * n);
        for (int k = 0; k < n; k++)
            memcpy(init + k * per, params->init_latents + (params->n_init_latents == 1 ? 0 : k * per), sizeof(float) * per);
        if (first_nonfinite(init, per * n) < per * n) {
            free(init);
            return sd_error(SD_ERR_ARG, "svdiff_generate: init_latents hold a non-finite value (NaN or Inf)");
        }
    }
    svdiff_image_t *imgs = NULL;
    if (out_images && !(imgs = calloc((size_t)n, sizeof *imgs))) {
        free(init);
        return sd_nomem("image list", sizeof *imgs * n);
    }
    gen_ctx_t g = {.cb = &params->callbacks, .stage = SVDIFF_STAGE_SAMPLE, .total = (long)((n + params->batch - 1) / params->batch) * params->steps, .t0 = sd_now_s()};
    for (int i = 0, bn; !rc && i < n; i += bn) {
        bn = n - i < params->batch ? n - i : params->batch;
        if (g.cb->cancel && g.cb->cancel(g.cb->user_data)) g.stop = 1;
        if (g.stop) {
            rc = sd_error(SD_ERR_INTERRUPTED, "svdiff_generate: cancelled before image %d of %d", i + 1, n);
            break;
        }
        float *lat = params->out_latents ? params->out_latents + (size_t)i * per : malloc(sizeof(float) * per * bn);
        if (!lat) {
            rc = sd_nomem("latents", sizeof(float) * per * bn);
            break;
        }
        txt2img_opts_t o = opts_of(params, W, H, i, bn);
        o.progress = on_step, o.progress_ctx = &g, o.stop = &g.stop;
        rc = pipeline_txt2img(p, &o, init ? init + (size_t)i * per : NULL, lat);
        if (rc == SD_ERR_INTERRUPTED)
            rc = sd_error(SD_ERR_INTERRUPTED, "svdiff_generate: cancelled while sampling image %d of %d", i + 1, n);
        g.base += params->steps;
        uint8_t **rgb = sd_xcalloc((size_t)bn, sizeof *rgb);
        if (!rc) rc = pipeline_decode(p, lat, bn, h, w, rgb);
        if (!params->out_latents) free(lat);
        for (int k = 0; k < bn; k++) {
            const uint64_t seed = params->seed + (uint64_t)(i + k);
            if (!rc && params->out_rgb) memcpy(params->out_rgb + (size_t)(i + k) * img_bytes, rgb[k], img_bytes);
            if (!rc && g.cb->image) g.cb->image(rgb[k], W, H, i + k, seed, g.cb->user_data);
            if (!rc && imgs) {
                imgs[i + k] = (svdiff_image_t){.rgb = rgb[k], .width = W, .height = H, .seed = seed};
                rgb[k] = NULL;
            }
            free(rgb[k]);
        }
        free(rgb);
    }
    free(init);
    if (rc) {
        svdiff_images_free(imgs, n);
        return rc;
    }
    if (out_images) *out_images = imgs;
    return SD_OK;
}

/* The micro-conditioning part of the PNG text (models with text_time): the values in the form the
 * flags take, quoted as A1111's format quotes a value with commas; the negative ones when set. */
static void micro_cond_text(char *buf, size_t n, const svdiff_generate_params_t *g, int W, int H) {
    txt2img_opts_t o = opts_of(g, W, H, 0, 1);
    float pos[6], neg[6];
    pipeline_opts_time_ids(pos, &o, 0);
    pipeline_opts_time_ids(neg, &o, 1);
    int k = snprintf(buf, n, ", Original size: \"%g,%g\", Crops coords top left: \"%g,%g\", Target size: \"%g,%g\"",
                     pos[0], pos[1], pos[2], pos[3], pos[4], pos[5]);
    if (memcmp(pos, neg, sizeof pos) && k < (int)n)
        snprintf(buf + k, n - k, ", Negative original size: \"%g,%g\", Negative crops coords top left: \"%g,%g\", "
                 "Negative target size: \"%g,%g\"", neg[0], neg[1], neg[2], neg[3], neg[4], neg[5]);
}

SVDIFF_API char *svdiff_png_parameters(const svdiff_model_t *m, const svdiff_generate_params_t *g, uint64_t seed,
                                       const char *model_label) {
    if (API_NEED(m, "svdiff_png_parameters") || API_NEED(g, "svdiff_png_parameters") || check_params(g)) return NULL;
    const int W = g->width ? g->width : pipeline_native_size(&m->p);
    const int H = g->height ? g->height : pipeline_native_size(&m->p);
    const char *adapters = m->adapters_text ? m->adapters_text : "";
    /* SDXL's micro-conditioning and a clip skip (A1111's "Clip skip", which counts from 1 = none)
     * only where they apply, so the text of an SD 1.x run without them is what it always was */
    char extra[512] = "";
    if (m->p.pooled_dim) micro_cond_text(extra, sizeof extra, g, W, H);
    if (g->clip_skip)
        snprintf(extra + strlen(extra), sizeof extra - strlen(extra), ", Clip skip: %d", g->clip_skip + 1);
    /* the format of cli/generate.c's image_params (A1111's, which other tools read) */
    const char *fmt = "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s, CFG scale: %g, Eta: %g, Seed: %llu, Size: %dx%d%s, "
                      "Model: %s%s%s, Version: svdiff %s";
#define PNG_ARGS                                                                                                   \
    g->prompt, g->negative_prompt ? g->negative_prompt : "", g->steps, sampler_kind_name((sampler_kind_t)g->sampler), \
        g->cfg, g->eta, (unsigned long long)seed, W, H, extra, model_label ? model_label : m->path,                  \
        adapters[0] ? ", Shifts: " : "", adapters, SVDIFF_VERSION
    const int len = snprintf(NULL, 0, fmt, PNG_ARGS);
    char *buf = malloc((size_t)len + 1);
    if (!buf) {
        sd_nomem("PNG parameters", (size_t)len + 1);
        return NULL;
    }
    snprintf(buf, (size_t)len + 1, fmt, PNG_ARGS);
#undef PNG_ARGS
    return buf;
}

SVDIFF_API int svdiff_png_write(const char *path, const uint8_t *rgb, int width, int height, const char *parameters) {
    int rc = API_NEED(path, "svdiff_png_write");
    if (!rc) rc = API_NEED(rgb, "svdiff_png_write");
    if (rc) return rc;
    if (width < 1 || height < 1 || (long)width * height > IMAGE_MAX_PIXELS)
        return sd_error(SD_ERR_ARG, "svdiff_png_write: %s: bad size %dx%d", path, width, height);
    if ((rc = outputs_check(path))) return rc;
    const image_t img = {.w = width, .h = height, .rgb = (uint8_t *)rgb};
    const char *keys[2] = {"parameters", "Software"}, *vals[2] = {parameters, "svdiff " SVDIFF_VERSION};
    return parameters ? image_save_png(&img, path, keys, vals, 2) : image_save_png(&img, path, keys + 1, vals + 1, 1);
}

SVDIFF_API int svdiff_image_read(const char *path, svdiff_image_t **out) {
    int rc = API_NEED(out, "svdiff_image_read");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(path, "svdiff_image_read"))) return rc;
    image_t img;
    if ((rc = image_load(&img, path))) return rc;
    svdiff_image_t *r = malloc(sizeof *r);
    if (!r) {
        image_free(&img);
        return sd_nomem("svdiff_image_t", sizeof *r);
    }
    *r = (svdiff_image_t){.rgb = img.rgb, .width = img.w, .height = img.h};
    *out = r;
    return SD_OK;
}

SVDIFF_API int svdiff_image_grid(const svdiff_image_t *images, int n, int cols, int pad, svdiff_image_t **out) {
    int rc = API_NEED(out, "svdiff_image_grid");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(images, "svdiff_image_grid"))) return rc;
    if (n < 1) return sd_error(SD_ERR_ARG, "svdiff_image_grid: n must be >= 1, got %d", n);
    image_t *v = sd_xcalloc((size_t)n, sizeof *v);
    for (int i = 0; i < n; i++) {
        if (!images[i].rgb || images[i].width != images[0].width || images[i].height != images[0].height) {
            free(v);
            return sd_error(SD_ERR_ARG, "svdiff_image_grid: image %d is missing or not %dx%d like image 0", i,
                            images[0].width, images[0].height);
        }
        v[i] = (image_t){.w = images[i].width, .h = images[i].height, .rgb = images[i].rgb};
    }
    image_t g;
    rc = image_grid(&g, v, n, cols, pad);
    free(v);
    if (rc) return rc;
    svdiff_image_t *r = malloc(sizeof *r);
    if (!r) {
        image_free(&g);
        return sd_nomem("svdiff_image_t", sizeof *r);
    }
    *r = (svdiff_image_t){.rgb = g.rgb, .width = g.w, .height = g.h};
    *out = r;
    return SD_OK;
}
