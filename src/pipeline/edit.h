/* Single-image editing (CoSINE, docs/method.md section 5; `svdiff edit`): an image -> the model's clean
 * latents (VAE posterior mode, or [-1, 1] pixels for a pixel-space model), DDIM inversion of them
 * (guidance 1, conditioned on one prompt) to the noise level of the first sampling step, spherical
 * mixing of the inverted latent with fresh noise, sampling an edit prompt from it, and PSNR. */
#ifndef SVDIFF_PIPELINE_EDIT_H
#define SVDIFF_PIPELINE_EDIT_H

#include <stddef.h>
#include <stdint.h>

#include "io/image.h"
#include "pipeline/pipeline.h"

/* x0[C, res/f, res/f] <- the clean latents of img: resized (shorter side to res) and centre-
 * cropped to res x res (*shown, may be NULL, receives that crop: what the edits are compared
 * with), mapped to [-1, 1], then VAE-encoded to the posterior's mode (mean, scaled; the edit is
 * deterministic) or taken as pixels when the model has no VAE. */
int edit_image_latents(pipeline_t *p, const image_t *img, int res, float *x0, image_t *shown);

/* DDIM inversion (SAMPLER_DDIM_INVERSE, leading/trailing timesteps of the model's scheduler) of
 * x0[C, h, w] in `steps` steps, guidance 1, conditioned on `prompt`: xT receives the latent at
 * the last inverse timestep, the level DDIM sampling with the same `steps` starts from;
 * traj[steps, C, h, w] (may be NULL) the latent after every inversion step. */
int edit_invert(pipeline_t *p, const float *x0, const char *prompt, int res, int steps, float *xT, float *traj,
                progress_fn_t progress, void *progress_ctx);

/* Samples `prompt` with DDIM from the latent z[C, h, w] (unscaled: DDIM's init_noise_sigma is 1):
 * guidance cfg against the empty prompt (<= 1: none), DDIM eta (per-step noise from the stream
 * seed ^ PIPELINE_STEP_NOISE_SALT); out[C, h, w] the final clean latents. */
int edit_sample(pipeline_t *p, const float *z, const char *prompt, int res, int steps, float cfg, float eta,
                uint64_t seed, float *out, progress_fn_t progress, void *progress_ctx);

/* Spherical interpolation (docs/method.md section 5) of the inverted latent a with noise b:
 * out = sin((1-alpha) phi)/sin(phi) a + sin(alpha phi)/sin(phi) b, phi the angle between them;
 * alpha 0 gives a, 1 gives b; nearly parallel vectors fall back to linear interpolation. out may
 * alias a or b. */
void edit_slerp(float *out, const float *a, const float *b, size_t n, float alpha);

/* Peak signal-to-noise ratio of two 8-bit images of n values: 10 log10(255^2 / MSE) in dB
 * (INFINITY when they are equal). */
double edit_psnr(const uint8_t *a, const uint8_t *b, size_t n);

#endif
