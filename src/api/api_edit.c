/* svdiff_edit: the inversion and sampling half of `svdiff edit` (CoSINE, pipeline/edit.h) on an opened
 * model, in the CLI's order (the reconstruction first, then each edit) so the bytes are the CLI's.
 * The fine-tuning half is svdiff_train; its shifts come in through svdiff_model_apply_shifts. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/api_internal.h"
#include "base/runtime.h"
#include "io/image.h"
#include "pipeline/edit.h"

SVDIFF_API svdiff_edit_params_t svdiff_edit_default_params(void) {
    svdiff_edit_params_t p = {0};
    p.steps = 50, p.cfg = 3.0f, p.eta = 0.1f, p.slerp = 0.0f, p.seed = 42;
    return p;
}

typedef struct {
    const svdiff_callbacks_t *cb;
    svdiff_stage_t stage;
    long base, total;
    double t0;
} edit_ctx_t;

static void on_step(void *vctx, int step, int num_steps, float t, const float *latents) {
    (void)num_steps, (void)t, (void)latents;
    edit_ctx_t *e = vctx;
    const long done = e->base + step;
    if (e->cb->progress) e->cb->progress(e->stage, (int)done, (int)e->total, (sd_now_s() - e->t0) / (double)done, e->cb->user_data);
}

static int check_params(const svdiff_edit_params_t *e) {
    if (!e->image_path && !e->image) return sd_error(SD_ERR_ARG, "svdiff_edit: give image_path or image");
    if (!e->prompt) return sd_error(SD_ERR_ARG, "svdiff_edit: prompt is NULL");
    if (e->n_edits < 1 || e->n_edits > 64 || !e->edits)
        return sd_error(SD_ERR_ARG, "svdiff_edit: give 1 to 64 edit prompts (n_edits %d)", e->n_edits);
    for (int k = 0; k < e->n_edits; k++)
        if (!e->edits[k]) return sd_error(SD_ERR_ARG, "svdiff_edit: edits[%d] is NULL", k);
    if (e->steps < 1 || e->steps > 1000) return sd_error(SD_ERR_ARG, "svdiff_edit: steps must be in [1, 1000], got %d", e->steps);
    if (!isfinite(e->cfg)) return sd_error(SD_ERR_ARG, "svdiff_edit: cfg must be a finite number");
    if (!(e->eta >= 0 && e->eta <= 1)) return sd_error(SD_ERR_ARG, "svdiff_edit: eta must be in [0, 1], got %g", (double)e->eta);
    if (!(e->slerp >= 0 && e->slerp <= 1)) return sd_error(SD_ERR_ARG, "svdiff_edit: slerp must be in [0, 1], got %g", (double)e->slerp);
    if (e->no_inversion && e->slerp > 0)
        return sd_error(SD_ERR_ARG, "svdiff_edit: slerp mixes the inverted latent with noise; it has no effect with no_inversion");
    if (e->resolution < 0) return sd_error(SD_ERR_ARG, "svdiff_edit: resolution must be >= 0 (0: native), got %d", e->resolution);
    return SD_OK;
}

static int cancelled(const svdiff_callbacks_t *cb, const char *what) {
    if (cb->cancel && cb->cancel(cb->user_data)) return sd_error(SD_ERR_INTERRUPTED, "svdiff_edit: cancelled before %s", what);
    return SD_OK;
}

SVDIFF_API int svdiff_edit(svdiff_model_t *m, const svdiff_edit_params_t *e, svdiff_image_t **out_images, double *psnr) {
    if (out_images) *out_images = NULL;
    int rc = API_NEED(m, "svdiff_edit");
    if (!rc) rc = API_NEED(e, "svdiff_edit");
    if (!rc) rc = check_params(e);
    if (rc) return rc;
    pipeline_t *p = &m->p;
    const int res = e->resolution ? e->resolution : pipeline_native_size(p);
    const int multiple = p->scale_factor * (1 << (p->unet.cfg.n_levels - 1));
    if (res % multiple) return sd_error(SD_ERR_ARG, "svdiff_edit: resolution %d must be a multiple of %d for this model", res, multiple);
    image_t input;
    if (e->image_path) {
        if ((rc = image_load(&input, e->image_path))) return rc;
    } else {
        if (!e->image->rgb || e->image->width < 1 || e->image->height < 1)
            return sd_error(SD_ERR_ARG, "svdiff_edit: the image has no pixels or a bad size (%dx%d)", e->image->width,
                            e->image->height);
        if ((rc = image_alloc(&input, e->image->width, e->image->height))) return rc;
        memcpy(input.rgb, e->image->rgb, (size_t)input.w * input.h * 3);
    }
    const int n_edits = e->n_edits, steps = e->steps;
    int C, h, w;
    pipeline_latent_shape(p, res, res, &C, &h, &w);
    const size_t n = (size_t)C * h * w, npix = (size_t)res * res * 3;
    float *x0 = malloc(sizeof(float) * n), *zsrc = malloc(sizeof(float) * n);
    float *noise = malloc(sizeof(float) * n), *z = malloc(sizeof(float) * n), *lat = malloc(sizeof(float) * n);
    image_t *imgs = calloc((size_t)n_edits + 2, sizeof *imgs);   /* input, reconstruction, edits */
    if (!x0 || !zsrc || !noise || !z || !lat || !imgs) rc = sd_nomem("edit latents", sizeof(float) * n * 5);
    if (!rc) rc = edit_image_latents(p, &input, res, x0, &imgs[0]);
    image_free(&input);
    if (!rc) {
        rng_t r;
        rng_init(&r, e->seed);
        rng_fill_normal(&r, noise, n);   /* the fresh noise: no_inversion, slerp */
    }
    const int invert_target = !e->invert_source;
    const int inv_runs = e->no_inversion ? 0 : 1 + (invert_target ? n_edits : 0);
    edit_ctx_t pc = {.cb = &e->callbacks, .total = (long)steps * (inv_runs + 1 + n_edits), .t0 = sd_now_s()};
#define RUN(stage_, what, call)                                     \
    do {                                                            \
        if (!rc) rc = cancelled(&e->callbacks, what);               \
        pc.stage = (stage_);                                        \
        if (!rc) rc = (call);                                       \
        pc.base += steps;                                           \
    } while (0)
    /* the reconstruction: the source prompt back from its own inversion, eta 0, guidance 1 */
    if (e->no_inversion) memcpy(zsrc, noise, sizeof(float) * n);
    else RUN(SVDIFF_STAGE_INVERT, "the inversion", edit_invert(p, x0, e->prompt, res, steps, zsrc, NULL, on_step, &pc));
    RUN(SVDIFF_STAGE_EDIT, "the reconstruction", edit_sample(p, zsrc, e->prompt, res, steps, 1.0f, 0.0f, e->seed, lat, on_step, &pc));
    uint8_t *rgb = NULL;
    if (!rc && !(rc = pipeline_decode(p, lat, 1, h, w, &rgb))) imgs[1].w = imgs[1].h = res, imgs[1].rgb = rgb;
    for (int k = 0; k < n_edits && !rc; k++) {
        if (e->no_inversion) memcpy(z, noise, sizeof(float) * n);
        else if (invert_target) RUN(SVDIFF_STAGE_INVERT, "an inversion", edit_invert(p, x0, e->edits[k], res, steps, z, NULL, on_step, &pc));
        else memcpy(z, zsrc, sizeof(float) * n);
        if (!rc && e->slerp > 0) edit_slerp(z, z, noise, n, e->slerp);
        RUN(SVDIFF_STAGE_EDIT, "an edit", edit_sample(p, z, e->edits[k], res, steps, e->cfg, e->eta, e->seed, lat, on_step, &pc));
        rgb = NULL;
        if (!rc && !(rc = pipeline_decode(p, lat, 1, h, w, &rgb))) imgs[2 + k].w = imgs[2 + k].h = res, imgs[2 + k].rgb = rgb;
    }
#undef RUN
    if (!rc && psnr) *psnr = edit_psnr(imgs[1].rgb, imgs[0].rgb, npix);
    for (int k = 0; k < n_edits + 2 && !rc && e->callbacks.image; k++)
        e->callbacks.image(imgs[k].rgb, res, res, k, e->seed, e->callbacks.user_data);
    svdiff_image_t *out = NULL;
    if (!rc && out_images && !(out = calloc((size_t)n_edits + 2, sizeof *out))) rc = sd_nomem("edit images", sizeof *out * (n_edits + 2));
    for (int k = 0; k < n_edits + 2 && out && !rc; k++) {
        out[k] = (svdiff_image_t){.rgb = imgs[k].rgb, .width = res, .height = res, .seed = e->seed};
        imgs[k].rgb = NULL;
    }
    if (out_images && !rc) *out_images = out;
    for (int k = 0; imgs && k < n_edits + 2; k++) image_free(&imgs[k]);
    free(imgs), free(x0), free(zsrc), free(noise), free(z), free(lat);
    return rc;
}

SVDIFF_API double svdiff_psnr(const uint8_t *a, const uint8_t *b, size_t n) {
    return a && b && n ? edit_psnr(a, b, n) : NAN;
}

SVDIFF_API int svdiff_edit_report(svdiff_model_t *m, const svdiff_edit_params_t *e, const svdiff_image_t *images,
                                  svdiff_edit_report_t *out) {
    int rc = API_NEED(m, "svdiff_edit_report");
    if (!rc) rc = API_NEED(e, "svdiff_edit_report");
    if (!rc) rc = API_NEED(images, "svdiff_edit_report");
    if (!rc) rc = API_NEED(out, "svdiff_edit_report");
    if (!rc) rc = check_params(e);
    if (rc) return rc;
    pipeline_t *p = &m->p;
    const int res = e->resolution ? e->resolution : pipeline_native_size(p);
    for (int k = 0; k < 2; k++)
        if (!images[k].rgb || images[k].width != res || images[k].height != res)
            return sd_error(SD_ERR_ARG, "svdiff_edit_report: images[%d] is not a %dx%d image of svdiff_edit", k, res, res);
    image_t input;
    if (e->image_path) {
        if ((rc = image_load(&input, e->image_path))) return rc;
    } else {
        if (!e->image->rgb || e->image->width < 1 || e->image->height < 1)
            return sd_error(SD_ERR_ARG, "svdiff_edit_report: the image has no pixels or a bad size (%dx%d)",
                            e->image->width, e->image->height);
        if ((rc = image_alloc(&input, e->image->width, e->image->height))) return rc;
        memcpy(input.rgb, e->image->rgb, (size_t)input.w * input.h * 3);
    }
    int C, h, w;
    pipeline_latent_shape(p, res, res, &C, &h, &w);
    const size_t n = (size_t)C * h * w, npix = (size_t)res * res * 3;
    float *x0 = sd_xmalloc(sizeof(float) * n), *noise = sd_xmalloc(sizeof(float) * n), *lat = sd_xmalloc(sizeof(float) * n);
    rc = edit_image_latents(p, &input, res, x0, NULL);
    image_free(&input);
    rng_t r;
    rng_init(&r, e->seed);
    rng_fill_normal(&r, noise, n);
    out->noise_reconstruction_psnr = NAN, out->vae_roundtrip_psnr = INFINITY;
    out->reconstruction_vs_vae_psnr = edit_psnr(images[1].rgb, images[0].rgb, npix);
    edit_ctx_t pc = {.cb = &e->callbacks, .stage = SVDIFF_STAGE_EDIT, .total = e->steps, .t0 = sd_now_s()};
    if (!rc) rc = cancelled(&e->callbacks, "the noise reconstruction");
    if (!rc) rc = edit_sample(p, noise, e->prompt, res, e->steps, 1.0f, 0.0f, e->seed, lat, on_step, &pc);
    uint8_t *rn = NULL, *rt = NULL;
    if (!rc && !(rc = pipeline_decode(p, lat, 1, h, w, &rn))) out->noise_reconstruction_psnr = edit_psnr(rn, images[0].rgb, npix);
    /* a latent model cannot beat its VAE: decode(encode(input)) is the ceiling */
    if (!rc && p->has_vae && !pipeline_decode(p, x0, 1, h, w, &rt)) {
        out->vae_roundtrip_psnr = edit_psnr(rt, images[0].rgb, npix);
        out->reconstruction_vs_vae_psnr = edit_psnr(images[1].rgb, rt, npix);
    }
    free(rn), free(rt), free(x0), free(noise), free(lat);
    return rc;
}
