/* Held-out denoising loss (`svdiff eval`): how well a model (with whatever shifts, deltas or
 * adapters were applied to the pipeline) predicts the noise on given images at fixed timesteps
 * and fixed noise. The noise depends only on the seed, the image's index and the draw, so two
 * models evaluated with the same options see exactly the same noisy inputs. */
#ifndef SVDIFF_TRAIN_EVAL_LOSS_H
#define SVDIFF_TRAIN_EVAL_LOSS_H

#include <stdint.h>

#include "pipeline/pipeline.h"
#include "train/dataset.h"

typedef struct {
    const int *timesteps;   /* [n_timesteps], each in [0, T) */
    int n_timesteps;
    int n_noise;            /* noise draws per image and timestep (one UNet batch) */
    uint64_t seed;
    int resolution;         /* pixels; images are resized and centre-cropped */
} eval_opts_t;

/* per_t[n_timesteps] = mean over images and draws of mean((UNet(x_t, t, ctx) - target)^2), the
 * target being the scheduler's prediction type (eps, v or x0); *mean = their mean. Images are
 * conditioned on their own prompt (pt->text[img.prompt]); latent models use the posterior mean. */
int eval_denoising_loss(pipeline_t *p, image_set_t *images, const prompt_table_t *pt, const eval_opts_t *o,
                        double *per_t, double *mean);

#endif
