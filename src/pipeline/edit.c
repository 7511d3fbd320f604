/* Single-image editing pieces (edit.h): image -> clean latents, DDIM inversion, sampling an edit
 * from an inverted latent, slerp with fresh noise, PSNR. The loops themselves are the shared
 * pipeline's (pipeline_txt2img), so inversion and sampling walk exactly the same timesteps. */
#include "pipeline/edit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "ops/ops.h"

int edit_image_latents(pipeline_t *p, const image_t *img, int res, float *x0, image_t *shown) {
    const int f = p->scale_factor;
    if (res <= 0 || res % f) return sd_error(SD_ERR_ARG, "--resolution %d: must be a positive multiple of %d", res, f);
    image_t crop;
    int rc = image_resize_crop(&crop, img, res, 1, 0.5f, 0.5f);
    if (rc) return rc;
    float *x = malloc(sizeof(float) * 3 * res * res);
    if (!x) {
        image_free(&crop);
        return sd_nomem("edit: image tensor", sizeof(float) * 3 * res * res);
    }
    vae_image_to_tensor(x, crop.rgb, res, res, 3);
    if (p->has_vae) {
        const size_t n = (size_t)p->latent_channels * (res / f) * (res / f);
        float *dist = malloc(sizeof(float) * 2 * n);
        rc = dist ? vae_encode(&p->vae, dist, dist + n, x, 1, res, res) : sd_nomem("edit: latent distribution", sizeof(float) * 2 * n);
        /* the posterior's mode: an edit of one image should not depend on a posterior sample */
        if (!rc) vae_sample_latents(x0, dist, dist + n, NULL, n, &p->vae.cfg);
        if (!rc && first_nonfinite(x0, n) < n) rc = sd_error(SD_ERR_NUMERIC, "the VAE encode of the image is not finite");
        free(dist);
    } else if (p->latent_channels == 3) {
        memcpy(x0, x, sizeof(float) * 3 * res * res);
    } else {
        rc = sd_error(SD_ERR_FORMAT, "a model without a VAE must work on 3 channels, not %d", p->latent_channels);
    }
    free(x);
    if (!rc && shown) *shown = crop;
    else image_free(&crop);
    return rc;
}

/* Records the latent after every step (for the golden trajectory) and forwards to the caller's
 * progress callback. */
typedef struct {
    float *traj;
    size_t n;
    progress_fn_t progress;
    void *progress_ctx;
} invert_rec_t;

static void invert_step(void *vctx, int step, int num_steps, float t, const float *latents) {
    invert_rec_t *r = vctx;
    if (r->traj && step >= 1 && step <= num_steps) memcpy(r->traj + (size_t)(step - 1) * r->n, latents, sizeof(float) * r->n);
    if (r->progress) r->progress(r->progress_ctx, step, num_steps, t, latents);
}

int edit_invert(pipeline_t *p, const float *x0, const char *prompt, int res, int steps, float *xT, float *traj,
                progress_fn_t progress, void *progress_ctx) {
    int C, h, w;
    pipeline_latent_shape(p, res, res, &C, &h, &w);
    invert_rec_t rec = {.traj = traj, .n = (size_t)C * h * w, .progress = progress, .progress_ctx = progress_ctx};
    /* guidance 1: the inversion is the deterministic ODE of the conditional model alone */
    txt2img_opts_t o = {.prompt = prompt, .width = res, .height = res, .steps = steps, .cfg = 1.0f, .eta = 0.0f,
                        .sampler = SAMPLER_DDIM_INVERSE, .seed = 0, .batch = 1, .progress = invert_step,
                        .progress_ctx = &rec};
    return pipeline_txt2img(p, &o, x0, xT);
}

int edit_sample(pipeline_t *p, const float *z, const char *prompt, int res, int steps, float cfg, float eta,
                uint64_t seed, float *out, progress_fn_t progress, void *progress_ctx) {
    txt2img_opts_t o = {.prompt = prompt, .negative_prompt = NULL, .width = res, .height = res, .steps = steps,
                        .cfg = cfg, .eta = eta, .sampler = SAMPLER_DDIM, .seed = seed, .batch = 1,
                        .progress = progress, .progress_ctx = progress_ctx};
    return pipeline_txt2img(p, &o, z, out);
}

void edit_slerp(float *out, const float *a, const float *b, size_t n, float alpha) {
    double aa = 0, bb = 0, ab = 0;
    for (size_t i = 0; i < n; i++) aa += (double)a[i] * a[i], bb += (double)b[i] * b[i], ab += (double)a[i] * b[i];
    const double cosphi = aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 1.0;
    double wa = 1.0 - alpha, wb = alpha;
    /* nearly parallel: sin(phi) -> 0 and the weights tend to the linear ones */
    if (fabs(cosphi) < 0.9995) {
        const double phi = acos(cosphi), s = sin(phi);
        wa = sin((1.0 - alpha) * phi) / s;
        wb = sin(alpha * phi) / s;
    }
    for (size_t i = 0; i < n; i++) out[i] = (float)(wa * a[i] + wb * b[i]);
}

double edit_psnr(const uint8_t *a, const uint8_t *b, size_t n) {
    double se = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a[i] - (double)b[i];
        se += d * d;
    }
    if (se == 0 || n == 0) return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (se / (double)n));
}
