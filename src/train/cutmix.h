/* Multi-subject training with Cut-Mix-Unmix (docs/method.md section 4; `svdiff train --subject ...`):
 * owns the --subject / --subject-class syntax, the prompt template, the composite prompts, the
 * multi-subject micro-batch (drawn from the trainer's step stream, so --resume continues it; its
 * composites from io/image_compose.h) and the Unmix specification of each row. The leakage measure
 * of `svdiff attention-leakage` is in eval_leakage.h.
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

#endif
