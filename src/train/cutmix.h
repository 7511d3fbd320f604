/* Multi-subject training with Cut-Mix-Unmix (docs/method.md section 4; `svdiff train --subject ...`):
 * owns the --subject / --subject-class syntax, the prompt template, the Cut-Mix compositor (two
 * images in the two halves of one), the composite prompts, the multi-subject micro-batch (drawn
 * from the trainer's step stream, so --resume continues it), the Unmix specification of each row,
 * and the cross-attention leakage measure of `svdiff attention-leakage`.
 *
 * One micro-batch, per row b of batch_size, in the order the RNG (trainer_t.rng) is consumed:
 *   u        : uniform; the row is a composite when there are >= 2 subjects and u < cutmix_prob
 *   composite: i = randint(n), j = randint(n - 1) (skipping i), image of i, image of j,
 *              positions = uniform < 0.5, then with prior preservation class images of i and j
 *   single   : i = randint(n), image of i, with prior preservation a class image of i, and with
 *              --flip one uniform (< 0.5: mirrored; composites are never mirrored)
 * then as the single-subject trainer: per row latent normals, timesteps, eps (and caption dropout).
 * Subject i of a composite is in the left (top with --cutmix-vertical) half, j in the other. The
 * prompt is the template filled with "A on the left and B on the right" ("A at the top and B at
 * the bottom"), or "A and B" without positions; class rows use the class phrases the same way. */
#ifndef SVDIFF_TRAIN_CUTMIX_H
#define SVDIFF_TRAIN_CUTMIX_H

#include "io/image.h"
#include "models/unmix.h"
#include "shifts/shifts.h"
#include "train/trainer.h"

#define CUTMIX_MAX_SUBJECTS 16

/* "PHRASE=DIR" (the phrase is everything before the first '='): copies into phrase / dir.
 * `flag` names the option in the message. Returns 0 or SD_ERR_ARG. */
int subject_spec_parse(const char *arg, const char *flag, char *phrase, size_t phrase_cap, char *dir, size_t dir_cap);
/* The template with every "{}" replaced by `fill` (a template without "{}" gets " fill" appended). */
void prompt_fill(char *out, size_t cap, const char *tmpl, const char *fill);
/* The composite phrase of a (first half) and b (second half): with positions "a on the left and b on
 * the right" (vertical: "a at the top and b at the bottom"), else "a and b". */
void cutmix_phrase(char *out, size_t cap, const char *a, const char *b, int positions, int vertical);

/* out (res x res) = image a fitted into the left (vertical: top) half, b into the other half
 * (res / 2 and res - res / 2 pixels). fit 0: each image is scaled to cover its half and centre-cropped;
 * fit 1: scaled to fit inside its half, centred, the rest filled with the mean colour of the image's
 * border (emoji and product shots on a plain background). Bilinear sampling. Returns 0 or SD_ERR_NOMEM. */
int cutmix_compose(image_t *out, const image_t *a, const image_t *b, int res, int vertical, int fit);

/* The multi-subject state of a trainer (trainer_t.ms). */
typedef struct multisubject {
    int n;
    char *phrase[CUTMIX_MAX_SUBJECTS], *class_phrase[CUTMIX_MAX_SUBJECTS];
    char *class_dir[CUTMIX_MAX_SUBJECTS];
    int first[CUTMIX_MAX_SUBJECTS], count[CUTMIX_MAX_SUBJECTS];           /* images in trainer_t.inst */
    int cfirst[CUTMIX_MAX_SUBJECTS], ccount[CUTMIX_MAX_SUBJECTS];         /* class images in trainer_t.cls */
    int single_prompt[CUTMIX_MAX_SUBJECTS], class_prompt[CUTMIX_MAX_SUBJECTS];
    /* [i][j][positions]: the prompt index of i in the first half, j in the second */
    int pair_prompt[CUTMIX_MAX_SUBJECTS][CUTMIX_MAX_SUBJECTS][2];
    int pair_class_prompt[CUTMIX_MAX_SUBJECTS][CUTMIX_MAX_SUBJECTS][2];
    int *phrase_ids[CUTMIX_MAX_SUBJECTS], n_phrase_ids[CUTMIX_MAX_SUBJECTS];
    float cutmix_prob;
    int prior;
    unmix_t unmix;       /* attached when unmix_weight > 0 */
    int unmix_on;
    float *dist;         /* [2 * latent] the posterior of a composite (encoded per use) */
    long n_composites, n_singles;   /* rows drawn (this run) */
} multisubject_t;

/* The pieces trainer.c calls (trainer_open / trainer_prepare / trainer_run / trainer_close): */
/* Parses cfg->subjects / subject_classes, scans every folder into t->inst / t->cls (subject by
 * subject), adds every single and composite prompt to t->prompts; *prior = prior preservation. */
int multi_scan(trainer_t *t, int *prior);
/* Generates missing class images per subject (after the output folder exists) and rescans. */
int multi_classes(trainer_t *t);
/* After trainer_prepare: attaches the Unmix hooks (when cfg.unmix_weight > 0). */
int multi_prepare(trainer_t *t);
/* Draws one micro-batch (order above) into the trainer's work buffers and the Unmix specification. */
int multi_next_batch(trainer_t *t);
void multi_free(trainer_t *t);
/* Shift-file metadata: subjects (phrases joined by "; "), cutmix_prob, unmix_weight, unmix_layers. */
void multi_put_meta(const trainer_t *t, shift_set_t *s);

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
 * Cut-Mix does (a in the left / top half, cutmix_compose's fit), encoded, noised to each of
 * timesteps[n_t] with fixed noise (Philox stream of seed, pair and timestep: the same for every
 * model), and one conditional UNet forward with `prompt`. Here the halves are where the subjects
 * really are, so the share measures the attention's localisation and not where a sample happened
 * to put each subject. */
int attention_leakage_images(pipeline_t *p, const char *prompt, const char *phrase_a, const char *phrase_b,
                             const image_t *imgs_a, int na, const image_t *imgs_b, int nb, int res, int vertical,
                             int fit, const char *layers, const int *timesteps, int n_t, uint64_t seed,
                             double share[2], int n_tokens[2], double token_mass[2]);

#endif
