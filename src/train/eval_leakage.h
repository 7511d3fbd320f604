/* The cross-attention leakage measure (`svdiff attention-leakage`, docs/method.md section 4): how much
 * of each identifier phrase's cross-attention mass falls in the other subject's half, on sampled
 * images or on known layouts (Cut-Mix compositions), through the Unmix sites in measuring mode. */
#ifndef SVDIFF_TRAIN_EVAL_LEAKAGE_H
#define SVDIFF_TRAIN_EVAL_LEAKAGE_H

#include <stdint.h>

#include "io/image.h"
#include "pipeline/pipeline.h"

/* The leakage measure: generates `n_seeds` images (seeds seed .. seed + n_seeds - 1) of `prompt`
 * (o: size, steps, guidance, sampler, negative prompt) and, at every denoising step, sums the
 * cross-attention probability mass of phrase_a's and phrase_b's tokens (conditional branch, layers
 * chosen as --unmix-layers does) over all positions and over the other phrase's half (a: left / top).
 * share[s] = mass in the other half / all mass, over every layer, head, step and seed (0.5 means
 * no preference; lower is less leakage). n_tokens[s] gets the phrase's token count. Returns 0 or
 * SD_ERR_ARG when a phrase does not occur in the prompt. token_mass[s]: the mean probability per query
 * (position, head) on the phrase's tokens (unmix_token_mass). */
int attention_leakage(pipeline_t *p, const txt2img_opts_t *o, const char *phrase_a, const char *phrase_b,
                      int vertical, const char *layers, int n_seeds, double share[2], int n_tokens[2],
                      double token_mass[2]);

/* The same sums on known layouts (teacher forcing): every pair (imgs_a[i], imgs_b[k]) composed as
 * Cut-Mix does (a in the left / top half, image_compose_halves' fit), encoded, noised to each of
 * timesteps[n_t] with fixed noise (Philox stream of seed, pair and timestep: the same for every
 * model), and one conditional UNet forward with `prompt`. Here the halves are where the subjects
 * really are, so the share measures the attention's localisation and not where a sample happened
 * to put each subject. */
int attention_leakage_images(pipeline_t *p, const char *prompt, const char *phrase_a, const char *phrase_b,
                             const image_t *imgs_a, int na, const image_t *imgs_b, int nb, int res, int vertical,
                             int fit, const char *layers, const int *timesteps, int n_t, uint64_t seed,
                             double share[2], int n_tokens[2], double token_mass[2]);

#endif
