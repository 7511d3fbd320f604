/* The cross-attention leakage measure of `svdiff attention-leakage` (eval_leakage.h): the Unmix
 * sites (models/unmix.h) in measuring mode, on sampled images or on Cut-Mix compositions. */
#include "train/eval_leakage.h"

#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "diffusion/diffusion.h"
#include "io/image_compose.h"
#include "models/unmix.h"
#include "train/dataset.h"

static int mark_text(unmix_t *u, int r, int s, const clip_tokenizer_t *tok, const int *ids, const char *phrase) {
    int ph[TOKENIZER_MAX_LENGTH];
    int n = tokenizer_encode(tok, phrase, ph, TOKENIZER_MAX_LENGTH, 0, NULL);
    if (n < 0) return n;
    const int got = n > 2 ? unmix_mark_phrase(u, r, s, ids, ph + 1, n - 2) : 0;
    if (!got) return sd_error(SD_ERR_ARG, "\"%s\" does not occur in the prompt's tokens", phrase);
    return got;
}

int attention_leakage(pipeline_t *p, const txt2img_opts_t *o, const char *phrase_a, const char *phrase_b,
                      int vertical, const char *layers, int n_seeds, double share[2], int n_tokens[2],
                      double token_mass[2]) {
    int C, h, w;
    pipeline_latent_shape(p, o->width, o->height, &C, &h, &w);
    const int guided = o->cfg > 1.0f, rows = guided ? 2 : 1;
    unmix_t u;
    int rc = unmix_attach(&u, &p->unet, layers, rows, h, w, p->n_ctx);
    if (rc) return rc;
    int ids[TOKENIZER_MAX_LENGTH];
    rc = tokenizer_encode(p->tok, o->prompt, ids, p->n_ctx, 1, NULL);
    const int r = rows - 1;   /* the conditional row: [uncond; cond] with guidance */
    if (rc >= 0) rc = n_tokens[0] = mark_text(&u, r, 0, p->tok, ids, phrase_a);
    if (rc >= 0) rc = n_tokens[1] = mark_text(&u, r, 1, p->tok, ids, phrase_b);
    if (rc < 0) {
        unmix_detach(&u);
        return rc;
    }
    unmix_set_halves(&u, r, vertical);
    u.measure = 1;
    float *lat = sd_xmalloc(sizeof(float) * (size_t)C * h * w);
    rc = SD_OK;
    for (int k = 0; k < n_seeds && !rc; k++) {
        txt2img_opts_t ok = *o;
        ok.seed = o->seed + (uint64_t)k, ok.batch = 1;
        rc = pipeline_txt2img(p, &ok, NULL, lat);
    }
    free(lat);
    if (!rc)
        for (int s = 0; s < 2; s++) share[s] = unmix_leakage(&u, s), token_mass[s] = unmix_token_mass(&u, s);
    unmix_detach(&u);
    return rc;
}

int attention_leakage_images(pipeline_t *p, const char *prompt, const char *phrase_a, const char *phrase_b,
                             const image_t *imgs_a, int na, const image_t *imgs_b, int nb, int res, int vertical,
                             int fit, const char *layers, const int *timesteps, int n_t, uint64_t seed,
                             double share[2], int n_tokens[2], double token_mass[2]) {
    if (na < 1 || nb < 1 || n_t < 1) return sd_error(SD_ERR_ARG, "leakage: needs images of both subjects and a timestep");
    for (int j = 0; j < n_t; j++)
        if (timesteps[j] < 0 || timesteps[j] >= p->sched.T)
            return sd_error(SD_ERR_ARG, "leakage: timestep %d is outside [0, %d)", timesteps[j], p->sched.T);
    int C, h, w;
    pipeline_latent_shape(p, res, res, &C, &h, &w);
    const int div = 1 << (p->unet.cfg.n_levels - 1);
    if (h % div || w % div)
        return sd_error(SD_ERR_ARG, "leakage: --resolution %d is not a multiple of %d for this model", res,
                        p->scale_factor * div);
    const int T = p->n_ctx;
    unmix_t u;
    int rc = unmix_attach(&u, &p->unet, layers, 1, h, w, T);
    if (rc) return rc;
    int ids[TOKENIZER_MAX_LENGTH];
    rc = tokenizer_encode(p->tok, prompt, ids, T, 1, NULL);
    if (rc >= 0) rc = n_tokens[0] = mark_text(&u, 0, 0, p->tok, ids, phrase_a);
    if (rc >= 0) rc = n_tokens[1] = mark_text(&u, 0, 1, p->tok, ids, phrase_b);
    if (rc < 0) {
        unmix_detach(&u);
        return rc;
    }
    unmix_set_halves(&u, 0, vertical);
    u.measure = 1;
    const size_t L = train_latent_floats(p, res);
    float *ctx = sd_xmalloc(sizeof(float) * T * p->ctx_dim), *dist = sd_xmalloc(sizeof(float) * 2 * L);
    float *x0 = sd_xmalloc(sizeof(float) * L), *eps = sd_xmalloc(sizeof(float) * L), *xt = sd_xmalloc(sizeof(float) * L);
    float *pred = sd_xmalloc(sizeof(float) * L), *zero = calloc(L, sizeof(float));
    /* SDXL: the pooled embedding, and the composite's micro-conditioning (a res x res image) */
    float *pooled = p->pooled_dim ? sd_xmalloc(sizeof(float) * (size_t)p->pooled_dim) : NULL, tids[6];
    train_composite_time_ids(tids, res);
    const unet_added_cond_t added = {pooled, tids};
    unet_acts_t acts;
    rc = pipeline_encode_prompts_cond(p, &prompt, 1, ctx, pooled);
    if (!rc) rc = unet_acts_build(&acts, &p->unet, 1, h, w, T, 0, UNET_CKPT_NONE);
    else memset(&acts, 0, sizeof acts);
    for (int i = 0; i < na && !rc; i++)
        for (int k = 0; k < nb && !rc; k++) {
            image_t img = {0};
            rc = image_compose_halves(&img, &imgs_a[i], &imgs_b[k], res, vertical, fit);
            if (!rc) rc = train_image_posterior(p, &img, res, dist);
            image_free(&img);
            if (rc) break;
            train_sample_latent(p, x0, dist, zero, L);   /* the posterior mean (scaled) */
            for (int j = 0; j < n_t && !rc; j++) {
                rng_t r;   /* one stream per (pair, timestep), independent of the model */
                rng_init(&r, seed ^ (((uint64_t)(i * nb + k) << 20) | (uint64_t)j));
                rng_fill_normal(&r, eps, L);
                const int t = timesteps[j];
                const float tf = (float)t;
                ddpm_add_noise(xt, x0, eps, &t, 1, L, &p->sched);
                rc = unet_forward(pred, &p->unet, &acts, xt, &tf, ctx, pooled ? &added : NULL, 1, h, w, T);
            }
        }
    if (!rc)
        for (int s = 0; s < 2; s++) share[s] = unmix_leakage(&u, s), token_mass[s] = unmix_token_mass(&u, s);
    unet_acts_free(&acts);
    unmix_detach(&u);
    free(ctx), free(dist), free(x0), free(eps), free(xt), free(pred), free(zero), free(pooled);
    return rc;
}
