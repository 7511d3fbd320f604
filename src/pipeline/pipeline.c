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

/* SDXL's second text encoder: its tokenizer and model, checked against the UNet's text_time
 * embedding (whose pooled input is TE2's projection). */
static int open_te2(pipeline_t *p, const char *model_path) {
    model_t *m = &p->model;
    const unet_config_t *u = &p->unet.cfg;
    if (!m->text_encoder_2.n_tensors) {
        if (u->addition_text_time)
            return sd_error(SD_ERR_FORMAT, "%s: the UNet takes a pooled text embedding (addition_embed_type "
                            "text_time) but the model has no text_encoder_2", model_path);
        return SD_OK;
    }
    if (!m->tokenizer_2_dir)
        return sd_error(SD_ERR_ARG, "%s: the model carries no tokenizer_2 (single-file checkpoint?): pass --tokenizer DIR",
                        model_path);
    int rc = tokenizer_load(&p->tok2, m->tokenizer_2_dir);
    if (!rc) rc = build_clip_from_component(&p->clip2, &m->text_encoder_2);
    if (rc) return rc;
    p->has_te2 = 1;
    /* a single file's tokenizer_2 is the --tokenizer folder, often padding with EOS: pad as SDXL's
     * tokenizer_2 does, with "!" */
    if (m->layout != MODEL_LAYOUT_DIFFUSERS) {
        const int bang = tokenizer_token_id(p->tok2, "!");
        if (bang < 0)
            return sd_error(SD_ERR_FORMAT, "%s: the tokenizer has no \"!\" token to pad text_encoder_2's prompts with",
                            m->tokenizer_2_dir);
        tokenizer_set_pad_id(p->tok2, bang);
    }
    if (!u->addition_text_time)
        return sd_error(SD_ERR_FORMAT, "%s: the model has a text_encoder_2 but its UNet has no text_time embedding "
                        "(addition_embed_type) to take the pooled embedding", model_path);
    if (p->clip2.cfg.projection_dim != u->addition_text_embeds_dim)
        return sd_error(SD_ERR_SHAPE, "%s: text_encoder_2 projection_dim %d != the UNet's pooled text embedding width "
                        "%d (projection_class_embeddings_input_dim - 6 x addition_time_embed_dim)", model_path,
                        p->clip2.cfg.projection_dim, u->addition_text_embeds_dim);
    p->pooled_dim = u->addition_text_embeds_dim;
    p->force_zeros_empty = m->force_zeros_for_empty_prompt;
    return SD_OK;
}

static int min_int(int a, int b) { return a < b ? a : b; }

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
    if (!rc) rc = open_te2(p, model_path);
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
    p->ctx_dim = p->clip.cfg.hidden_size + (p->has_te2 ? p->clip2.cfg.hidden_size : 0);
    p->n_ctx = min_int(p->clip.cfg.max_positions, TOKENIZER_MAX_LENGTH);
    if (p->has_te2) p->n_ctx = min_int(p->n_ctx, p->clip2.cfg.max_positions);
    if (p->ctx_dim != p->unet.cfg.cross_attention_dim) {
        rc = sd_error(SD_ERR_SHAPE, "%s: text encoder hidden size %d%s != UNet cross_attention_dim %d", model_path,
                      p->ctx_dim, p->has_te2 ? " (both encoders)" : "", p->unet.cfg.cross_attention_dim);
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
    if (p->tok2) tokenizer_free(p->tok2);
    free_clip(&p->clip);
    free_clip(&p->clip2);
    free_unet(&p->unet);
    if (p->has_vae) free_vae(&p->vae);
    noise_schedule_free(&p->sched);
    model_close(&p->model);
    memset(p, 0, sizeof *p);
}

/* Applies one loaded file: its UNet and text-encoder entries go to their models ("text_encoder_2."
 * entries to SDXL's second encoder). */
static int apply_shift_set(pipeline_t *p, const shift_set_t *s, float scale, svd_cache_t *cache) {
    return shiftset_apply_models(&p->unet, &p->clip, p->has_te2 ? &p->clip2 : NULL, s, scale, cache);
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
        if (p->has_te2) clip_bake_spectral(&p->clip2);
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

/* Tokenizes n prompts into ids[n, T], padded with the tokenizer's pad token; *truncated (NULL: no
 * warning) counts the prompts cut, each warned about. */
static int tokenize(const clip_tokenizer_t *tok, const char *const *prompts, int n, int T, int *ids, int *truncated) {
    for (int i = 0; i < n; i++) {
        int before = 0;
        int got = tokenizer_encode(tok, prompts[i] ? prompts[i] : "", ids + (size_t)i * T, T, 1, &before);
        if (got < 0) return got;
        if (before > T && truncated) {
            fprintf(stderr, "warning: prompt truncated to %d tokens (%d dropped): \"%.60s...\"\n", T, before - T,
                    prompts[i]);
            ++*truncated;
        }
    }
    return SD_OK;
}

/* One encoder on ids[n, T]: hidden [n, T, C] into ctx at column `col` of rows `ctx_dim` wide,
 * and (pooled not NULL) its projected EOS embedding [n, P]. */
static int encode_one(clip_t *m, const int *ids, int n, int T, float *ctx, int ctx_dim, int col, float *pooled) {
    clip_acts_t acts;
    int rc = clip_acts_build(&acts, &m->cfg, n, T);
    if (rc) return rc;
    m->want_pooled = pooled != NULL;
    const float *hidden = clip_forward(m, &acts, ids, n, T);
    const int C = m->cfg.hidden_size;
    if (!hidden) rc = SD_ERR_ARG;
    else if (C == ctx_dim) memcpy(ctx, hidden, sizeof(float) * (size_t)n * T * C);
    else
        for (size_t r = 0; r < (size_t)n * T; r++) memcpy(ctx + r * ctx_dim + col, hidden + r * C, sizeof(float) * C);
    if (!rc && pooled) rc = clip_pooled(pooled, m, &acts);
    m->want_pooled = 0;
    clip_acts_free(&acts);
    return rc;
}

/* The context (and pooled embedding) of n prompts with `clip_skip` on every encoder. SD 1.x / 2.x:
 * the final LayerNorm of the last layer run; SDXL: the penultimate hidden states of both (what
 * StableDiffusionXLPipeline.encode_prompt takes, hidden_states[-(clip_skip + 2)]) side by side. */
static int encode_prompts(pipeline_t *p, const char *const *prompts, int n, float *ctx, float *pooled, int clip_skip) {
    const int T = p->n_ctx, C = p->ctx_dim;
    int *ids = malloc(sizeof(int) * (size_t)n * T);
    if (!ids) return sd_nomem("prompt token ids", sizeof(int) * (size_t)n * T);
    int truncated = 0;
    int rc = tokenize(p->tok, prompts, n, T, ids, &truncated);
    const int skip1 = p->clip.clip_skip, skip2 = p->clip2.clip_skip;   /* the models' own, back after */
    if (!rc) {
        p->clip.clip_skip = clip_skip;
        p->clip.hidden_mode = p->has_te2 ? CLIP_HIDDEN_PENULTIMATE : CLIP_HIDDEN_FINAL_LN;
        rc = encode_one(&p->clip, ids, n, T, ctx, C, 0, NULL);
    }
    if (!rc && p->has_te2) {   /* tokenizer_2 pads with "!" */
        rc = tokenize(p->tok2, prompts, n, T, ids, truncated ? NULL : &truncated);
        p->clip2.clip_skip = clip_skip;
        p->clip2.hidden_mode = CLIP_HIDDEN_PENULTIMATE;
        if (!rc) rc = encode_one(&p->clip2, ids, n, T, ctx, C, p->clip.cfg.hidden_size, pooled);
    }
    p->clip.clip_skip = skip1, p->clip2.clip_skip = skip2;
    free(ids);
    if (rc) return rc;
    const size_t len = (size_t)n * T * C;
    if (first_nonfinite(ctx, len) < len) return sd_error(SD_ERR_NUMERIC, "the text encoder output is not finite");
    if (pooled && p->pooled_dim && first_nonfinite(pooled, (size_t)n * p->pooled_dim) < (size_t)n * p->pooled_dim)
        return sd_error(SD_ERR_NUMERIC, "the pooled text embedding is not finite");
    return SD_OK;
}

int pipeline_encode_prompts_cond(pipeline_t *p, const char *const *prompts, int n, float *ctx, float *pooled) {
    return encode_prompts(p, prompts, n, ctx, pooled, p->clip.clip_skip);
}

int pipeline_encode_prompts(pipeline_t *p, const char *const *prompts, int n, float *ctx) {
    return pipeline_encode_prompts_cond(p, prompts, n, ctx, NULL);
}

void pipeline_time_ids(float out[6], const int original_size[2], const int crops_coords_top_left[2],
                       const int target_size[2]) {
    const int *parts[3] = {original_size, crops_coords_top_left, target_size};
    for (int i = 0; i < 3; i++) out[2 * i] = (float)parts[i][0], out[2 * i + 1] = (float)parts[i][1];
}

/* v unless it is {0, 0}, then dflt */
static const int *or_default(const int v[2], const int dflt[2]) { return v[0] || v[1] ? v : dflt; }

void pipeline_opts_time_ids(float out[6], const txt2img_opts_t *o, int negative) {
    const int size[2] = {o->height, o->width};
    const int *orig = or_default(o->original_size, size), *crop = o->crops_coords_top_left;
    const int *target = or_default(o->target_size, size);
    if (negative) {   /* each negative value defaults to the positive one */
        orig = or_default(o->negative_original_size, orig);
        crop = or_default(o->negative_crops_coords_top_left, crop);
        target = or_default(o->negative_target_size, target);
    }
    pipeline_time_ids(out, orig, crop, target);
}

void pipeline_latent_shape(const pipeline_t *p, int width, int height, int *c, int *h, int *w) {
    *c = p->latent_channels;
    *h = height / p->scale_factor;
    *w = width / p->scale_factor;
}

typedef struct {
    pipeline_t *p;
    unet_acts_t acts;
    const float *ctx;       /* [2B or B, n_ctx, C]: uncond rows then cond rows */
    const float *pooled;    /* [2B or B, pooled_dim] in the same order, or NULL (no text_time) */
    const float *time_ids;  /* [2B or B, 6] likewise */
    int B, guided, h, w;
    int calls;            /* model calls so far = the step being taken (one call per step) */
    float *timesteps;
    const volatile sig_atomic_t *stop;
} denoise_ctx_t;

static int unet_model_fn(void *vctx, float *out, const float *in, float t, int batch) {
    denoise_ctx_t *d = vctx;
    const pipeline_t *p = d->p;
    if (d->stop && *d->stop) return sd_error(SD_ERR_INTERRUPTED, "interrupted");
    for (int i = 0; i < batch; i++) d->timesteps[i] = t;
    /* unguided calls get only the conditional rows */
    const size_t row0 = batch == d->B && d->guided ? (size_t)d->B : 0;
    const float *ctx = d->ctx + row0 * p->n_ctx * p->ctx_dim;
    unet_added_cond_t added = {0};
    if (d->pooled) added.text_embeds = d->pooled + row0 * p->pooled_dim, added.time_ids = d->time_ids + row0 * 6;
    int rc = unet_forward(out, &p->unet, &d->acts, in, d->timesteps, ctx, d->pooled ? &added : NULL, batch, d->h, d->w,
                          p->n_ctx);
    d->calls++;
    const size_t n = (size_t)batch * p->latent_channels * d->h * d->w;
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

/* What the model cannot take: micro-conditioning without text_time, more clip skip than layers. */
static int check_conditioning(const pipeline_t *p, const txt2img_opts_t *o) {
    const int *micro[6] = {o->original_size, o->crops_coords_top_left, o->target_size, o->negative_original_size,
                           o->negative_crops_coords_top_left, o->negative_target_size};
    for (int i = 0; i < 6 && !p->pooled_dim; i++)
        if (micro[i][0] || micro[i][1])
            return sd_error(SD_ERR_ARG, "the micro-conditioning (original size, crop, target size) needs a UNet with "
                            "SDXL's text_time embedding (addition_embed_type); this model has none");
    /* at least one layer runs: SDXL's penultimate states count from layer L - 1 */
    const int max = p->has_te2 ? min_int(p->clip.cfg.num_layers, p->clip2.cfg.num_layers) - 2 : p->clip.cfg.num_layers - 1;
    if (o->clip_skip < 0 || o->clip_skip > (max > 0 ? max : 0))
        return sd_error(SD_ERR_ARG, "clip skip %d: the text encoder%s of this model allow%s at most %d", o->clip_skip,
                        p->has_te2 ? "s" : "", p->has_te2 ? "" : "s", max > 0 ? max : 0);
    return SD_OK;
}

/* two[2, n_ctx, C] and pooled2[2, P] (P = pooled_dim, NULL without it): row 0 the unconditional
 * embedding (the negative prompt, or zeros for SDXL's absent negative prompt when guided), row 1 the
 * prompt's with the clip skip, which diffusers applies to the prompt only. */
static int encode_pair(pipeline_t *p, const txt2img_opts_t *o, int guided, float *two, float *pooled2) {
    const size_t ctx_floats = (size_t)p->n_ctx * p->ctx_dim;
    const char *pair[2] = {o->negative_prompt ? o->negative_prompt : "", o->prompt};
    /* StableDiffusionXLPipeline: no negative prompt and force_zeros_for_empty_prompt -> zeros */
    if (guided && !o->negative_prompt && p->has_te2 && p->force_zeros_empty) {
        memset(two, 0, sizeof(float) * ctx_floats);
        if (pooled2) memset(pooled2, 0, sizeof(float) * p->pooled_dim);
        return encode_prompts(p, pair + 1, 1, two + ctx_floats, pooled2 ? pooled2 + p->pooled_dim : NULL, o->clip_skip);
    }
    if (!o->clip_skip) return encode_prompts(p, pair, 2, two, pooled2, 0);   /* one batch, as always */
    int rc = encode_prompts(p, pair, 1, two, pooled2, 0);
    if (!rc) rc = encode_prompts(p, pair + 1, 1, two + ctx_floats, pooled2 ? pooled2 + p->pooled_dim : NULL, o->clip_skip);
    return rc;
}

int pipeline_txt2img(pipeline_t *p, const txt2img_opts_t *o, const float *init, float *latents) {
    int C, h, w;
    pipeline_latent_shape(p, o->width, o->height, &C, &h, &w);
    int rc = pipeline_check_size(p, o->width, o->height);
    if (!rc) rc = check_conditioning(p, o);
    if (rc) return rc;
    const int B = o->batch, guided = o->cfg > 1.0f, rows = guided ? 2 * B : B, P = p->pooled_dim;
    const size_t per_image = (size_t)C * h * w, ctx_floats = (size_t)p->n_ctx * p->ctx_dim;
    denoise_ctx_t d = {.p = p, .B = B, .guided = guided, .h = h, .w = w, .stop = o->stop};
    float *ctx = malloc(sizeof(float) * (size_t)rows * ctx_floats);
    float *two = malloc(sizeof(float) * 2 * ctx_floats);
    /* SDXL's added conditioning: pooled embeddings and time ids, rows as the context's */
    float *pooled = P ? malloc(sizeof(float) * (size_t)(rows + 2) * P) : NULL, *time_ids = P ? malloc(sizeof(float) * rows * 6) : NULL;
    if (!ctx || !two || (P && (!pooled || !time_ids)))
        rc = sd_nomem("prompt embeddings", sizeof(float) * (size_t)(rows + 2) * (ctx_floats + P + 6));
    float *pooled2 = P ? pooled + (size_t)rows * P : NULL;   /* [2, P] after the rows */
    if (!rc) rc = encode_pair(p, o, guided, two, pooled2);
    if (!rc) {
        float ids[2][6];
        pipeline_opts_time_ids(ids[0], o, 1);
        pipeline_opts_time_ids(ids[1], o, 0);
        /* [uncond x B; cond x B], or [cond x B] without guidance */
        for (int r = 0; r < rows; r++) {
            const int cond = !guided || r >= B;
            memcpy(ctx + (size_t)r * ctx_floats, two + cond * ctx_floats, sizeof(float) * ctx_floats);
            if (P) {
                memcpy(pooled + (size_t)r * P, pooled2 + (size_t)cond * P, sizeof(float) * P);
                memcpy(time_ids + (size_t)r * 6, ids[cond], sizeof ids[cond]);
            }
        }
        d.ctx = ctx, d.pooled = pooled, d.time_ids = time_ids;
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
    free(noise), free(ctx), free(two), free(pooled), free(time_ids), free(d.timesteps);
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
