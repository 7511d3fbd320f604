/* Multi-subject training with Cut-Mix-Unmix (docs/method.md section 4; `svdiff train --subject ...`):
 * owns the --subject / --subject-class syntax, the prompt template, the composite prompts, the
 * multi-subject micro-batch (drawn from the trainer's step stream, so --resume continues it; its
 * composites from io/image_compose.h) and the Unmix specification of each row. The leakage measure
 * of `svdiff attention-leakage` is in eval_leakage.h.
 *
 * One micro-batch, per row b of batch_size, in the order the RNG (the trainer's step stream) is consumed:
 *   u        : uniform; the row is a composite when there are >= 2 subjects and u < cutmix_prob
 *   composite: i = randint(n), j = randint(n - 1) (skipping i), image of i, image of j,
 *              positions = uniform < 0.5, then with prior preservation class images of i and j
 *   single   : i = randint(n), image of i, with prior preservation a class image of i, and with
 *              --flip one uniform (< 0.5: mirrored; composites are never mirrored)
 * (multi_draw_rows), then as the single-subject trainer: per row latent normals, timesteps, eps (and
 * caption dropout); then the Unmix specification of the rows (multi_mark_rows).
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
#define CUTMIX_MAX_ROWS 128   /* instance rows of a micro-batch (trainer.c's limit) */

/* "PHRASE=DIR" (the phrase is everything before the first '='): copies into phrase / dir.
 * `flag` names the option in the message. Returns 0 or SD_ERR_ARG. */
int subject_spec_parse(const char *arg, const char *flag, char *phrase, size_t phrase_cap, char *dir, size_t dir_cap);
/* The template with every "{}" replaced by `fill` (a template without "{}" gets " fill" appended). */
void prompt_fill(char *out, size_t cap, const char *tmpl, const char *fill);
/* The composite phrase of a (first half) and b (second half): with positions "a on the left and b on
 * the right" (vertical: "a at the top and b at the bottom"), else "a and b". */
void cutmix_phrase(char *out, size_t cap, const char *a, const char *b, int positions, int vertical);

/* The multi-subject state of a trainer (trainer_t.ms). */
typedef struct multisubject {
    int n;
    char *phrase[CUTMIX_MAX_SUBJECTS], *class_phrase[CUTMIX_MAX_SUBJECTS];
    char *class_dir[CUTMIX_MAX_SUBJECTS];
    int first[CUTMIX_MAX_SUBJECTS], count[CUTMIX_MAX_SUBJECTS];           /* images in multi_data_t.inst */
    int cfirst[CUTMIX_MAX_SUBJECTS], ccount[CUTMIX_MAX_SUBJECTS];         /* class images in multi_data_t.cls */
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
    int row_subject[CUTMIX_MAX_ROWS][2];   /* the last batch: subjects of each instance row (second -1: single) */
} multisubject_t;

/* What the set-up reads and fills: pieces of the trainer (trainer.c builds it). */
typedef struct {
    const train_config_t *cfg;
    pipeline_t *p;             /* the base model (tokenizer; class images) */
    prompt_table_t *prompts;   /* every single and composite prompt is added here */
    image_set_t *inst, *cls;   /* the subjects' (class) images are appended, subject by subject */
} multi_data_t;

/* The pieces trainer.c calls (trainer_open / trainer_prepare / the micro-batch / trainer_close): */
/* Parses cfg->subjects / subject_classes, scans every folder into d->inst / d->cls (subject by
 * subject), adds every single and composite prompt to d->prompts; *prior = prior preservation.
 * *ms is set first: multi_free it on error too. */
int multi_scan(multisubject_t **ms, const multi_data_t *d, int *prior);
/* Generates missing class images per subject (after the output folder exists) and rescans. */
int multi_classes(multisubject_t *ms, const multi_data_t *d);
/* After trainer_prepare: the composite buffer, and the Unmix hooks on `unet` (when cfg->unmix_weight
 * > 0) for `rows` rows of an H x W latent with T context tokens. */
int multi_prepare(multisubject_t *ms, const train_config_t *c, unet_t *unet, int rows, int H, int W, int T,
                  size_t latent_n);
/* Chooses the rows of one micro-batch (draws above, from `rng`): instance rows 0..B-1 from inst,
 * with prior preservation class rows B..2B-1 from cls; flip: --flip. */
void multi_draw_rows(multisubject_t *ms, rng_t *rng, image_set_t *inst, image_set_t *cls, int B, int prior, int flip,
                     train_row_t *row);
/* The posterior of a composite row: both images loaded, composed at res (io/image_compose.h),
 * encoded into the state's buffer (not cached: there are n_a x n_b of them). */
int multi_composite_dist(multisubject_t *ms, pipeline_t *p, const train_image_t *a, const train_image_t *b, int res,
                         int vertical, int fit, const float **dist);
/* The Unmix specification of the drawn rows, ids [rows, T] their token ids (after caption dropout). */
void multi_mark_rows(multisubject_t *ms, const int *ids, int T, int B, int vertical);
void multi_free(multisubject_t *ms);
/* Shift-file metadata: subjects (phrases joined by "; "), cutmix_prob, unmix_weight, unmix_layers. */
void multi_put_meta(const multisubject_t *ms, const train_config_t *c, shift_set_t *s);

#endif
