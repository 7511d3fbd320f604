/* Text-to-image pipeline steps shared by the CLI verbs (see pipeline.h). */
#include "pipeline/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "ops/ops.h"
#include "shifts/shifts.h"

int pipeline_open(pipeline_t *p, const char *model_path, const char *tokenizer_dir) {
    model_open_options_t opt = {.tokenizer_dir = tokenizer_dir};
    return pipeline_open_model(p, model_path, &opt);
}

int pipeline_native_size(const pipeline_t *p) { return p->unet.cfg.sample_size * p->scale_factor; }

int pipeline_open_model(pipeline_t *p, const char *model_path, const model_open_options_t *opt) {
    memset(p, 0, sizeof *p);
    int rc = model_open(&p->model, model_path, opt);
    if (rc) return rc;
    model_t *m = &p->model;
    if (!m->unet.n_tensors) rc = sd_error(SD_ERR_FORMAT, "%s: the model has no UNet", model_path);
    else if (!m->text_encoder.n_tensors) rc = sd_error(SD_ERR_FORMAT, "%s: the model has no text encoder", model_path);
    else if (!m->tokenizer_dir)
        rc = sd_error(SD_ERR_ARG, "%s: the model carries no tokenizer (single-file checkpoint?): pass --tokenizer DIR",
                      model_path);
    if (!rc) rc = tokenizer_load(&p->tok, m->tokenizer_dir);
    if (!rc) rc = build_clip_from_component(&p->clip, &m->text_encoder);
    if (!rc) rc = build_unet_from_component(&p->unet, &m->unet);
    if (!rc && m->vae.n_tensors) {
        rc = build_vae_from_component(&p->vae, &m->vae);
        p->has_vae = rc == 0;
    }
    if (!rc) {
        sched_config_t sc;
        rc = sched_config_from_json(&sc, m->scheduler_config);
        if (!rc) rc = noise_schedule_init(&p->sched, &sc);
    }
    if (rc) {
        pipeline_close(p);
        return rc;
    }
    p->latent_channels = p->unet.cfg.in_channels;
    p->scale_factor = p->has_vae ? vae_scale_factor(&p->vae.cfg) : 1;
    p->ctx_dim = p->clip.cfg.hidden_size;
    p->n_ctx = p->clip.cfg.max_positions < TOKENIZER_MAX_LENGTH ? p->clip.cfg.max_positions : TOKENIZER_MAX_LENGTH;
    if (p->ctx_dim != p->unet.cfg.cross_attention_dim) {
        rc = sd_error(SD_ERR_SHAPE, "%s: text encoder hidden size %d != UNet cross_attention_dim %d", model_path,
                      p->ctx_dim, p->unet.cfg.cross_attention_dim);
        pipeline_close(p);
        return rc;
    }
    if (p->has_vae && p->vae.cfg.latent_channels != p->latent_channels) {
        rc = sd_error(SD_ERR_SHAPE, "%s: VAE latent_channels %d != UNet in_channels %d", model_path,
                      p->vae.cfg.latent_channels, p->latent_channels);
        pipeline_close(p);
        return rc;
    }
    return SD_OK;
}

void pipeline_close(pipeline_t *p) {
    if (p->tok) tokenizer_free(p->tok);
    free_clip(&p->clip);
    free_unet(&p->unet);
    if (p->has_vae) free_vae(&p->vae);
    noise_schedule_free(&p->sched);
    model_close(&p->model);
    memset(p, 0, sizeof *p);
}

/* Applies one loaded file: its UNet and text-encoder entries go to their models. */
static int apply_shift_set(pipeline_t *p, const shift_set_t *s, float scale, svd_cache_t *cache) {
    return shiftset_apply_models(&p->unet, &p->clip, NULL, s, scale, cache);
}

/* Applies one loaded set after checking its base_model_hash against the model's `hash` (refused
 * unless `force`; a set without one is accepted with a warning); `label` names it in messages. */
static int apply_checked(pipeline_t *p, const shift_set_t *s, const char *label, float scale, int force,
                         const char *hash, svd_cache_t *cache) {
    int rc = SD_OK;
    const char *base = shiftset_meta(s, "base_model_hash");
    if (!base) {
        fprintf(stderr, "warning: %s has no base_model_hash (an svdiff-pytorch file?): cannot check that it "
                "was trained on this model (%s)\n", label, hash);
    } else if (strcmp(base, hash) != 0) {
        if (!force)
            rc = sd_error(SD_ERR_ARG, "%s was trained on base model %s, but this model hashes to %s (--force "
                          "applies it anyway)", label, base, hash);
        else
            fprintf(stderr, "warning: %s was trained on base model %s, not this one (%s): applied anyway "
                    "(--force)\n", label, base, hash);
    }
    if (!rc && (rc = apply_shift_set(p, s, scale, cache))) rc = sd_error_wrap(rc, "%s", label);
    return rc;
}

static svd_cache_t *open_cache(const char *svd_cache_dir, const char *hash) {
    svd_cache_t *cache = NULL;
    if (svd_cache_dir && svd_cache_open(&cache, svd_cache_dir, hash)) {
        fprintf(stderr, "warning: %s; going on without an SVD cache\n", sd_last_error());
        cache = NULL;
    }
    return cache;
}

static int close_cache(pipeline_t *p, svd_cache_t *cache, int rc) {
    if (!rc && cache && svd_cache_save(cache))
        fprintf(stderr, "warning: %s (the SVD factors will be recomputed next time)\n", sd_last_error());
    svd_cache_close(cache);
    if (!rc) {
        unet_bake(&p->unet);
        clip_bake_spectral(&p->clip);
    }
    return rc;
}

int pipeline_apply_shifts(pipeline_t *p, const pipeline_shift_t *shifts, int n, int force,
                          const char *svd_cache_dir) {
    char hash[17];
    int rc = model_weights_hash(&p->model, hash);
    svd_cache_t *cache = rc ? NULL : open_cache(svd_cache_dir, hash);
    for (int i = 0; i < n && !rc; i++) {
        char files[SHIFT_N_COMPONENTS][SHIFT_PATH_CAP];
        rc = shift_files_resolve(shifts[i].path, files);
        if (!rc) rc = shift_files_check_group(files, force);   /* a folder's files: one result? */
        for (int f = 0; f < SHIFT_N_COMPONENTS && !rc; f++) {
            if (!files[f][0]) continue;
            shift_set_t s;
            if ((rc = shiftset_load(&s, files[f]))) break;
            rc = apply_checked(p, &s, files[f], shifts[i].scale, force, hash, cache);
            shiftset_free(&s);
        }
    }
    return close_cache(p, cache, rc);
}

int pipeline_apply_shift_set(pipeline_t *p, const shift_set_t *s, const char *label, float scale, int force,
                             const char *svd_cache_dir) {
    char hash[17];
    int rc = model_weights_hash(&p->model, hash);
    svd_cache_t *cache = rc ? NULL : open_cache(svd_cache_dir, hash);
    if (!rc) rc = apply_checked(p, s, label, scale, force, hash, cache);
    return close_cache(p, cache, rc);
}

int pipeline_encode_prompts(pipeline_t *p, const char *const *prompts, int n, float *ctx) {
    const int T = p->n_ctx, C = p->ctx_dim;
    int *ids = malloc(sizeof(int) * (size_t)n * T);
    if (!ids) return sd_nomem("prompt token ids", sizeof(int) * (size_t)n * T);
    for (int i = 0; i < n; i++) {
        int before = 0;
        int got = tokenizer_encode(p->tok, prompts[i] ? prompts[i] : "", ids + (size_t)i * T, T, 1, &before);
        if (got < 0) {
            free(ids);
            return got;
        }
        if (before > T)
            fprintf(stderr, "warning: prompt truncated to %d tokens (%d dropped): \"%.60s...\"\n", T, before - T,
                    prompts[i]);
    }
    clip_acts_t acts;
    int rc = clip_acts_build(&acts, &p->clip.cfg, n, T);
    if (rc) {
        free(ids);
        return rc;
    }
    const float *hidden = clip_forward(&p->clip, &acts, ids, n, T);
    if (hidden) memcpy(ctx, hidden, sizeof(float) * (size_t)n * T * C);
    clip_acts_free(&acts);
    free(ids);
    if (!hidden) return SD_ERR_ARG;
    const size_t len = (size_t)n * T * C;
    if (first_nonfinite(ctx, len) < len) return sd_error(SD_ERR_NUMERIC, "the text encoder output is not finite");
    return SD_OK;
}

void pipeline_latent_shape(const pipeline_t *p, int width, int height, int *c, int *h, int *w) {
    *c = p->latent_channels;
    *h = height / p->scale_factor;
    *w = width / p->scale_factor;
}

typedef struct {
    pipeline_t *p;
    unet_acts_t acts;
    const float *ctx;     /* [2B or B, n_ctx, C]: uncond rows then cond rows */
    int B, guided, h, w;
    int calls;            /* model calls so far = the step being taken (one call per step) */
    float *timesteps;
    const volatile sig_atomic_t *stop;
} denoise_ctx_t;

static int unet_model_fn(void *vctx, float *out, const float *in, float t, int batch) {
    denoise_ctx_t *d = vctx;
    if (d->stop && *d->stop) return sd_error(SD_ERR_INTERRUPTED, "interrupted");
    for (int i = 0; i < batch; i++) d->timesteps[i] = t;
    /* unguided calls get only the conditional rows */
    const float *ctx = d->ctx + (batch == d->B && d->guided ? (size_t)d->B * d->p->n_ctx * d->p->ctx_dim : 0);
    int rc = unet_forward(out, &d->p->unet, &d->acts, in, d->timesteps, ctx, batch, d->h, d->w, d->p->n_ctx);
    d->calls++;
    const size_t n = (size_t)batch * d->p->latent_channels * d->h * d->w;
    if (!rc && first_nonfinite(out, n) < n)
        rc = sd_error(SD_ERR_NUMERIC, "the UNet output at step %d (timestep %g) is not finite", d->calls, (double)t);
    return rc;
}

int pipeline_check_size(const pipeline_t *p, int width, int height) {
    const int levels_div = 1 << (p->unet.cfg.n_levels - 1);
    if (width <= 0 || height <= 0 || width % (p->scale_factor * levels_div) || height % (p->scale_factor * levels_div))
        return sd_error(SD_ERR_ARG, "width and height must be positive multiples of %d for this model (got %dx%d)",
                        p->scale_factor * levels_div, width, height);
    return 0;
}

int pipeline_txt2img(pipeline_t *p, const txt2img_opts_t *o, const float *init, float *latents) {
    int C, h, w;
    pipeline_latent_shape(p, o->width, o->height, &C, &h, &w);
    int rc = pipeline_check_size(p, o->width, o->height);
    if (rc) return rc;
    const int B = o->batch, guided = o->cfg > 1.0f, rows = guided ? 2 * B : B;
    const size_t per_image = (size_t)C * h * w, ctx_floats = (size_t)p->n_ctx * p->ctx_dim;
    denoise_ctx_t d = {.p = p, .B = B, .guided = guided, .h = h, .w = w, .stop = o->stop};
    float *ctx = malloc(sizeof(float) * (size_t)(guided ? 2 * B : B) * ctx_floats);
    const char *pair[2] = {o->negative_prompt ? o->negative_prompt : "", o->prompt};
    float *two = malloc(sizeof(float) * 2 * ctx_floats);
    rc = ctx && two ? pipeline_encode_prompts(p, pair, 2, two)
                    : sd_nomem("prompt embeddings", sizeof(float) * (size_t)(guided ? 2 * B + 2 : B + 2) * ctx_floats);
    if (!rc) {
        /* [uncond x B; cond x B], or [cond x B] without guidance */
        for (int i = 0; i < B; i++) {
            if (guided) memcpy(ctx + (size_t)i * ctx_floats, two, sizeof(float) * ctx_floats);
            memcpy(ctx + (size_t)((guided ? B : 0) + i) * ctx_floats, two + ctx_floats, sizeof(float) * ctx_floats);
        }
        d.ctx = ctx;
        d.timesteps = malloc(sizeof(float) * rows);
        rc = d.timesteps ? unet_acts_build(&d.acts, &p->unet, rows, h, w, p->n_ctx, 0, UNET_CKPT_NONE)
                         : sd_nomem("timesteps", sizeof(float) * rows);
    }
    float *noise = NULL;
    if (!rc && !(noise = malloc(sizeof(float) * B * per_image))) {
        unet_acts_free(&d.acts);
        rc = sd_nomem("initial noise", sizeof(float) * B * per_image);
    }
    if (!rc) {
        if (init) {
            memcpy(noise, init, sizeof(float) * B * per_image);
        } else {
            for (int k = 0; k < B; k++) {
                rng_t r;
                rng_init(&r, o->seed + (uint64_t)k);
                rng_fill_normal(&r, noise + k * per_image, per_image);
            }
        }
        rng_t step_rng;   /* a stream of its own, so it never repeats image 0's initial noise */
        rng_init(&step_rng, o->seed ^ PIPELINE_STEP_NOISE_SALT);
        sample_opts_t so = {.kind = o->sampler, .num_steps = o->steps, .eta = o->eta, .guidance_scale = o->cfg,
                            .rng = &step_rng, .model = unet_model_fn, .model_ctx = &d, .progress = o->progress,
                            .progress_ctx = o->progress_ctx};
        rc = diffusion_sample(latents, noise, B, C, h, w, &p->sched, &so);
        if (!rc && first_nonfinite(latents, B * per_image) < B * per_image)
            rc = sd_error(SD_ERR_NUMERIC, "the sampler's final latents are not finite");
        unet_acts_free(&d.acts);
    }
    free(noise), free(ctx), free(two), free(d.timesteps);
    return rc;
}

int pipeline_decode(pipeline_t *p, const float *latents, int n, int h, int w, uint8_t **rgb) {
    const int H = h * p->scale_factor, W = w * p->scale_factor;
    float *img = malloc(sizeof(float) * 3 * H * W);
    if (!img) return sd_nomem("decoded image", sizeof(float) * 3 * H * W);
    int rc = SD_OK;
    for (int i = 0; i < n && !rc; i++) {
        const float *z = latents + (size_t)i * p->latent_channels * h * w;
        if (p->has_vae) rc = vae_decode(&p->vae, img, z, 1, h, w);
        else if (p->latent_channels == 3) memcpy(img, z, sizeof(float) * 3 * H * W);
        else rc = sd_error(SD_ERR_FORMAT, "a model without a VAE must produce 3 channels, not %d", p->latent_channels);
        if (rc) break;
        if (first_nonfinite(img, (size_t)3 * H * W) < (size_t)3 * H * W) {
            rc = sd_error(SD_ERR_NUMERIC, p->has_vae ? "the VAE decode of image %d is not finite"
                                                     : "the latents of image %d are not finite", i + 1);
            break;
        }
        if (!(rgb[i] = malloc((size_t)H * W * 3))) {
            rc = sd_nomem("image pixels", (size_t)H * W * 3);
            break;
        }
        vae_tensor_to_image(rgb[i], img, H, W, 3);
    }
    free(img);
    return rc;
}
