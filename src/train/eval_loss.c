/* Held-out denoising loss: fixed timesteps, fixed noise, one UNet batch of noise draws per image
 * and timestep. See eval_loss.h. */
#include "train/eval_loss.h"

#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "diffusion/diffusion.h"

int eval_denoising_loss(pipeline_t *p, image_set_t *images, const prompt_table_t *pt, const eval_opts_t *o,
                        double *per_t, double *mean) {
    if (images->n < 1 || o->n_timesteps < 1 || o->n_noise < 1 || o->resolution < 1)
        return sd_error(SD_ERR_ARG, "eval: needs at least one image, timestep and noise draw");
    for (int j = 0; j < o->n_timesteps; j++)
        if (o->timesteps[j] < 0 || o->timesteps[j] >= p->sched.T)
            return sd_error(SD_ERR_ARG, "eval: timestep %d is outside [0, %d)", o->timesteps[j], p->sched.T);
    int C, h, w;
    pipeline_latent_shape(p, o->resolution, o->resolution, &C, &h, &w);
    const int levels_div = 1 << (p->unet.cfg.n_levels - 1);
    if (h % levels_div || w % levels_div)
        return sd_error(SD_ERR_ARG, "eval: --resolution %d is not a multiple of %d for this model", o->resolution,
                        p->scale_factor * levels_div);
    const int B = o->n_noise, T = p->n_ctx;
    const size_t L = train_latent_floats(p, o->resolution), CT = (size_t)T * p->ctx_dim;
    float *ctx = malloc(sizeof(float) * CT * B), *x0 = malloc(sizeof(float) * L * B);
    float *eps = malloc(sizeof(float) * L * B), *xt = malloc(sizeof(float) * L * B);
    float *target = malloc(sizeof(float) * L * B), *pred = malloc(sizeof(float) * L * B);
    float *zero = calloc(L, sizeof(float)), *tf = malloc(sizeof(float) * B);
    int *ts = malloc(sizeof(int) * B);
    /* SDXL: the pooled embedding and each image's micro-conditioning (centre crop, as evaluated) */
    const int P = p->pooled_dim;
    float *pooled = P ? sd_xmalloc(sizeof(float) * (size_t)P * B) : NULL, *tids = P ? sd_xmalloc(sizeof(float) * 6 * B) : NULL;
    unet_acts_t acts = {0};
    int rc = ctx && x0 && eps && xt && target && pred && zero && tf && ts
                 ? unet_acts_build(&acts, &p->unet, B, h, w, T, 0, UNET_CKPT_NONE)
                 : sd_nomem("eval: batch buffers", sizeof(float) * (CT * B + 5 * L * B + L + 2 * (size_t)B));
    for (int j = 0; j < o->n_timesteps; j++) per_t[j] = 0;
    for (int i = 0; i < images->n && !rc; i++) {
        train_image_t *im = &images->img[i];
        const float *dist;
        rc = train_image_dist(p, im, 0, o->resolution, 1, &dist);
        const char *prompt = pt->text[im->prompt];
        if (!rc) rc = pipeline_encode_prompts_cond(p, &prompt, 1, ctx, pooled);
        if (rc) break;
        train_sample_latent(p, x0, dist, zero, L);   /* the posterior mean (scaled) */
        for (int k = 1; k < B; k++) memcpy(x0 + k * L, x0, sizeof(float) * L), memcpy(ctx + k * CT, ctx, sizeof(float) * CT);
        for (int k = 0; k < B && P; k++) {
            if (k) memcpy(pooled + (size_t)k * P, pooled, sizeof(float) * P);
            train_image_time_ids(tids + 6 * k, im, 0, o->resolution, 1);
        }
        const unet_added_cond_t added = {pooled, tids};
        for (int j = 0; j < o->n_timesteps && !rc; j++) {
            for (int k = 0; k < B; k++) {
                rng_t r;   /* one stream per (image, timestep, draw), independent of the model */
                rng_init(&r, o->seed ^ (((uint64_t)i << 40) | ((uint64_t)j << 20) | (uint64_t)k));
                rng_fill_normal(&r, eps + k * L, L);
                ts[k] = o->timesteps[j], tf[k] = (float)o->timesteps[j];
            }
            ddpm_add_noise(xt, x0, eps, ts, B, L, &p->sched);
            ddpm_target(target, x0, eps, ts, B, L, &p->sched);
            rc = unet_forward(pred, &p->unet, &acts, xt, tf, ctx, P ? &added : NULL, B, h, w, T);
            double s = 0;
            for (size_t q = 0; q < (size_t)B * L; q++) {
                const double d = (double)pred[q] - target[q];
                s += d * d;
            }
            per_t[j] += s / ((double)B * L) / images->n;
        }
    }
    *mean = 0;
    for (int j = 0; j < o->n_timesteps; j++) *mean += per_t[j] / o->n_timesteps;
    unet_acts_free(&acts);
    free(ctx), free(x0), free(eps), free(xt), free(target), free(pred), free(zero), free(tf), free(ts);
    free(pooled), free(tids);
    return rc;
}
