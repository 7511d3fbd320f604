/* Multi-subject training with Cut-Mix-Unmix (see cutmix.h): subject specs, prompts, and the
 * multi-subject micro-batch with its Unmix specification. */
#include "train/cutmix.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/dist.h"
#include "base/error.h"
#include "io/image_compose.h"
#include "diffusion/diffusion.h"
#include "models/vae.h"

#define DEFAULT_TEMPLATE "a photo of {}"
#define DEFAULT_CUTMIX_PROB 0.6f

static char *dupstr(const char *s) {
    char *d = sd_xmalloc(strlen(s) + 1);
    strcpy(d, s);
    return d;
}

int subject_spec_parse(const char *arg, const char *flag, char *phrase, size_t phrase_cap, char *dir, size_t dir_cap) {
    const char *eq = arg ? strchr(arg, '=') : NULL;
    if (!eq)
        return sd_error(SD_ERR_ARG, "%s \"%s\": expected \"PHRASE=DIR\", e.g. %s \"sks cat=photos/cat/\"", flag,
                        arg ? arg : "", flag);
    const char *a = arg, *b = eq;
    while (a < b && (*a == ' ' || *a == '\t')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t')) b--;
    if (a == b) return sd_error(SD_ERR_ARG, "%s \"%s\": the phrase before '=' is empty", flag, arg);
    if (!eq[1]) return sd_error(SD_ERR_ARG, "%s \"%s\": the folder after '=' is empty", flag, arg);
    if ((size_t)(b - a) >= phrase_cap || strlen(eq + 1) >= dir_cap)
        return sd_error(SD_ERR_ARG, "%s \"%.40s...\": too long", flag, arg);
    memcpy(phrase, a, (size_t)(b - a)), phrase[b - a] = 0;
    snprintf(dir, dir_cap, "%s", eq + 1);
    return SD_OK;
}

void prompt_fill(char *out, size_t cap, const char *tmpl, const char *fill) {
    if (!tmpl) tmpl = DEFAULT_TEMPLATE;
    size_t k = 0;
    int filled = 0;
    for (const char *p = tmpl; *p && k + 1 < cap;) {
        if (p[0] == '{' && p[1] == '}') {
            k += (size_t)snprintf(out + k, cap - k, "%s", fill);
            if (k >= cap) k = cap - 1;
            p += 2, filled = 1;
        } else {
            out[k++] = *p++;
        }
    }
    out[k] = 0;
    if (!filled && k + 1 < cap) snprintf(out + k, cap - k, " %s", fill);
}

void cutmix_phrase(char *out, size_t cap, const char *a, const char *b, int positions, int vertical) {
    if (!positions) snprintf(out, cap, "%s and %s", a, b);
    else if (vertical) snprintf(out, cap, "%s at the top and %s at the bottom", a, b);
    else snprintf(out, cap, "%s on the left and %s on the right", a, b);
}

/* ---- set-up ---- */

/* The identifier phrase's token ids without bos / eos. */
static int phrase_tokens(multisubject_t *ms, int i, const clip_tokenizer_t *tok) {
    int ids[TOKENIZER_MAX_LENGTH];
    int n = tokenizer_encode(tok, ms->phrase[i], ids, TOKENIZER_MAX_LENGTH, 0, NULL);
    if (n < 0) return n;
    ms->n_phrase_ids[i] = n - 2 > 0 ? n - 2 : 0;
    ms->phrase_ids[i] = sd_xmalloc(sizeof(int) * (size_t)(n > 2 ? n - 2 : 1));
    memcpy(ms->phrase_ids[i], ids + 1, sizeof(int) * (size_t)ms->n_phrase_ids[i]);
    if (!ms->n_phrase_ids[i]) return sd_error(SD_ERR_ARG, "--subject \"%s\": the phrase has no tokens", ms->phrase[i]);
    return SD_OK;
}

/* Appends the images of `s` to `all` (ownership moves); the subject's range is [first, first+count). */
static void append_set(image_set_t *all, image_set_t *s, int *first, int *count) {
    *first = all->n, *count = s->n;
    all->img = realloc(all->img, sizeof *all->img * (size_t)(all->n + s->n + 1));
    SD_CHECK(all->img, "out of memory");
    if (s->n) memcpy(all->img + all->n, s->img, sizeof *s->img * (size_t)s->n);   /* an empty class folder: none */
    all->n += s->n;
    free(s->img), free(s->dir);
    memset(s, 0, sizeof *s);
}

static int add_prompt(trainer_t *t, const char *fill, const char *where) {
    char text[1024];
    prompt_fill(text, sizeof text, t->cfg.prompt_template, fill);
    return prompt_table_add(&t->prompts, t->p.tok, text, where);
}

int multi_scan(trainer_t *t, int *prior) {
    const train_config_t *c = &t->cfg;
    if (c->n_subjects > CUTMIX_MAX_SUBJECTS)
        return sd_error(SD_ERR_ARG, "--subject: at most %d subjects", CUTMIX_MAX_SUBJECTS);
    if (c->instance_dir || c->class_dir || c->data_tsv)
        return sd_error(SD_ERR_ARG, "--subject replaces --instance-dir / --class-dir / --data: give one or the other");
    if (c->mode != TRAIN_MODE_SHIFTS) return sd_error(SD_ERR_ARG, "--subject needs --mode shifts");
    multisubject_t *ms = t->ms = sd_xcalloc(1, sizeof *ms);
    ms->n = c->n_subjects;
    ms->cutmix_prob = c->cutmix_prob < 0 ? (ms->n >= 2 ? DEFAULT_CUTMIX_PROB : 0.0f) : c->cutmix_prob;
    if (ms->cutmix_prob > 1) return sd_error(SD_ERR_ARG, "--cutmix-prob %g: must be in [0, 1]", ms->cutmix_prob);
    if (ms->cutmix_prob > 0 && ms->n < 2)
        return sd_error(SD_ERR_ARG, "--cutmix-prob %g: Cut-Mix needs at least two --subject", ms->cutmix_prob);
    if (c->unmix_weight < 0) return sd_error(SD_ERR_ARG, "--unmix-weight %g: must be >= 0", c->unmix_weight);
    if (c->prompt_template && !strstr(c->prompt_template, "{}"))
        return sd_error(SD_ERR_ARG, "--prompt-template \"%s\": must contain {} (where the subject phrase goes)",
                        c->prompt_template);
    ms->prior = c->subject_classes != NULL;
    for (int i = 0; i < ms->n; i++) {
        char phrase[512], dir[4096];
        int rc = subject_spec_parse(c->subjects[i], "--subject", phrase, sizeof phrase, dir, sizeof dir);
        if (rc) return rc;
        ms->phrase[i] = dupstr(phrase);
        for (int j = 0; j < i; j++)
            if (!strcmp(ms->phrase[j], phrase)) return sd_error(SD_ERR_ARG, "--subject \"%s\": given twice", phrase);
        if ((rc = phrase_tokens(ms, i, t->p.tok))) return rc;
        if ((rc = ms->single_prompt[i] = add_prompt(t, phrase, "--subject")) < 0) return rc;
        image_set_t s = {0};
        rc = image_set_scan(&s, dir, "--subject", 0, 0, t->prompts.text[ms->single_prompt[i]], &t->prompts, t->p.tok);
        if (rc) {
            image_set_free(&s);
            return rc;
        }
        append_set(&t->inst, &s, &ms->first[i], &ms->count[i]);
        if (!ms->prior) continue;
        if (!c->subject_classes[i])
            return sd_error(SD_ERR_ARG, "--subject-class: give one for every --subject (in the same order) or none");
        if ((rc = subject_spec_parse(c->subject_classes[i], "--subject-class", phrase, sizeof phrase, dir, sizeof dir)))
            return rc;
        ms->class_phrase[i] = dupstr(phrase), ms->class_dir[i] = dupstr(dir);
        if ((rc = ms->class_prompt[i] = add_prompt(t, phrase, "--subject-class")) < 0) return rc;
        rc = image_set_scan(&s, dir, "--subject-class", 1, 1, t->prompts.text[ms->class_prompt[i]], &t->prompts, t->p.tok);
        if (rc) {
            image_set_free(&s);
            return rc;
        }
        if (s.n == 0 && c->num_class_images < 1)
            return sd_error(SD_ERR_ARG, "--subject-class %s holds no images and --num-class-images is 0", dir);
        append_set(&t->cls, &s, &ms->cfirst[i], &ms->ccount[i]);
    }
    /* every composite prompt, so that a frozen text encoder encodes them once */
    for (int i = 0; i < ms->n && ms->cutmix_prob > 0; i++)
        for (int j = 0; j < ms->n; j++) {
            if (i == j) continue;
            for (int pos = 0; pos < 2; pos++) {
                char fill[1100];
                cutmix_phrase(fill, sizeof fill, ms->phrase[i], ms->phrase[j], pos, c->cutmix_vertical);
                int rc = ms->pair_prompt[i][j][pos] = add_prompt(t, fill, "--subject (composite prompt)");
                if (rc < 0) return rc;
                if (!ms->prior) continue;
                cutmix_phrase(fill, sizeof fill, ms->class_phrase[i], ms->class_phrase[j], pos, c->cutmix_vertical);
                rc = ms->pair_class_prompt[i][j][pos] = add_prompt(t, fill, "--subject-class (composite prompt)");
                if (rc < 0) return rc;
            }
        }
    *prior = ms->prior;
    return SD_OK;
}

int multi_classes(trainer_t *t) {
    multisubject_t *ms = t->ms;
    const train_config_t *c = &t->cfg;
    if (!ms->prior) return SD_OK;
    int need = 0;
    for (int i = 0; i < ms->n; i++) need |= ms->ccount[i] < c->num_class_images;
    if (!need) return SD_OK;
    image_set_free(&t->cls);
    memset(&t->cls, 0, sizeof t->cls);
    for (int i = 0; i < ms->n; i++) {
        const char *prompt = t->prompts.text[ms->class_prompt[i]];
        int rc = SD_OK;
        if (ms->ccount[i] < c->num_class_images)
            rc = class_images_generate(&t->p, ms->class_dir[i], prompt, ms->ccount[i], c->num_class_images,
                                       c->resolution, c->class_steps, c->class_cfg, c->seed ^ (0xa54ff53a5f1d36f1ull + i));
        image_set_t s = {0};
        if (!rc) rc = image_set_scan(&s, ms->class_dir[i], "--subject-class", 0, 0, prompt, &t->prompts, t->p.tok);
        rc = dist_agree(rc);   /* the MPI ranks stop together (class_images_generate is collective) */
        if (rc) {
            image_set_free(&s);
            return rc;
        }
        append_set(&t->cls, &s, &ms->cfirst[i], &ms->ccount[i]);
    }
    return SD_OK;   /* trainer_open draws the crop positions next */
}

int multi_prepare(trainer_t *t) {
    multisubject_t *ms = t->ms;
    ms->dist = sd_xcalloc(2 * t->latent_n, sizeof(float));
    /* the epoch order is not used here (draws come from the step stream), but checkpoints store it:
     * keep it a valid permutation */
    for (int i = 0; i < t->order.n; i++) t->order.perm[i] = i;
    if (t->cfg.unmix_weight <= 0 || ms->cutmix_prob <= 0) return SD_OK;
    const int H = t->h, W = t->w;   /* the UNet's input size */
    int rc = unmix_attach(&ms->unmix, &t->p.unet, t->cfg.unmix_layers, t->rows, H, W, t->T);
    if (rc) return rc;
    ms->unmix.weight = t->cfg.unmix_weight;
    ms->unmix.mode = t->cfg.unmix_share ? UNMIX_SHARE : UNMIX_MSE;
    ms->unmix_on = 1;
    return SD_OK;
}

void multi_free(trainer_t *t) {
    multisubject_t *ms = t->ms;
    if (!ms) return;
    unmix_detach(&ms->unmix);
    for (int i = 0; i < CUTMIX_MAX_SUBJECTS; i++)
        free(ms->phrase[i]), free(ms->class_phrase[i]), free(ms->class_dir[i]), free(ms->phrase_ids[i]);
    free(ms->dist);
    free(ms);
    t->ms = NULL;
}

void multi_put_meta(const trainer_t *t, shift_set_t *s) {
    const multisubject_t *ms = t->ms;
    char buf[2048] = "";
    for (int i = 0, k = 0; i < ms->n && k < (int)sizeof buf; i++)
        k += snprintf(buf + k, sizeof buf - k, "%s%s", i ? "; " : "", ms->phrase[i]);
    shiftset_set_meta(s, "subjects", buf);
    snprintf(buf, sizeof buf, "%g", ms->cutmix_prob);
    shiftset_set_meta(s, "cutmix_prob", buf);
    snprintf(buf, sizeof buf, "%g", ms->unmix_on ? t->cfg.unmix_weight : 0.0f);
    shiftset_set_meta(s, "unmix_weight", buf);
    shiftset_set_meta(s, "unmix_layers", t->cfg.unmix_layers ? t->cfg.unmix_layers : "all");
    shiftset_set_meta(s, "unmix_loss", t->cfg.unmix_share ? "share" : "mse");
}

/* ---- the micro-batch ---- */

/* The posterior of a composite: both images loaded, composed at res, encoded (not cached: there are
 * n_a x n_b of them). */
static int composite_dist(trainer_t *t, const train_image_t *a, const train_image_t *b, const float **dist) {
    const int res = t->cfg.resolution;
    image_t ia = {0}, ib = {0}, img = {0};
    int rc = image_load(&ia, a->path);
    if (!rc) rc = image_load(&ib, b->path);
    if (!rc) rc = image_compose_halves(&img, &ia, &ib, res, t->cfg.cutmix_vertical, t->cfg.cutmix_fit);
    image_free(&ia), image_free(&ib);
    if (!rc) rc = train_image_posterior(&t->p, &img, res, t->ms->dist);
    image_free(&img);
    *dist = t->ms->dist;
    return rc;
}

int multi_next_batch(trainer_t *t) {
    const train_config_t *c = &t->cfg;
    multisubject_t *ms = t->ms;
    const int B = c->batch_size, rows = t->rows, n = ms->n;
    const size_t L = t->latent_n, CT = (size_t)t->T * t->p.ctx_dim;
    SD_CHECK(rows <= 128, "batch too large");
    int subj[128][2], pic[128][2], composite[128], pos[128], flip[128], prompt[128];
    memset(flip, 0, sizeof flip);
    for (int b = 0; b < B; b++) {
        composite[b] = n >= 2 && rng_uniform(&t->rng) < ms->cutmix_prob;
        const int i = rng_randint(&t->rng, n);
        subj[b][0] = i;
        pic[b][0] = ms->first[i] + rng_randint(&t->rng, ms->count[i]);
        if (composite[b]) {
            int j = rng_randint(&t->rng, n - 1);
            j += j >= i;
            subj[b][1] = j;
            pic[b][1] = ms->first[j] + rng_randint(&t->rng, ms->count[j]);
            pos[b] = rng_uniform(&t->rng) < 0.5;
            prompt[b] = ms->pair_prompt[i][j][pos[b]];
            if (t->prior) {
                subj[B + b][0] = i, subj[B + b][1] = j, composite[B + b] = 1, pos[B + b] = pos[b];
                pic[B + b][0] = ms->cfirst[i] + rng_randint(&t->rng, ms->ccount[i]);
                pic[B + b][1] = ms->cfirst[j] + rng_randint(&t->rng, ms->ccount[j]);
                prompt[B + b] = ms->pair_class_prompt[i][j][pos[b]];
            }
            ms->n_composites++;
        } else {
            subj[b][1] = -1;
            prompt[b] = t->inst.img[pic[b][0]].prompt;   /* its caption file, else the subject prompt */
            if (t->prior) {
                subj[B + b][0] = i, subj[B + b][1] = -1, composite[B + b] = 0;
                pic[B + b][0] = ms->cfirst[i] + rng_randint(&t->rng, ms->ccount[i]);
                prompt[B + b] = t->cls.img[pic[B + b][0]].prompt;
            }
            if (c->flip) {
                flip[b] = rng_uniform(&t->rng) < 0.5;
                if (t->prior) flip[B + b] = rng_uniform(&t->rng) < 0.5;
            }
            ms->n_singles++;
        }
    }
    for (int r = 0; r < rows && !t->draw_only; r++) {   /* draw_only: another rank's rows (trainer.h) */
        image_set_t *set = r < B ? &t->inst : &t->cls;
        const float *dist;
        int rc = composite[r] ? composite_dist(t, &set->img[pic[r][0]], &set->img[pic[r][1]], &dist)
                              : train_image_dist(&t->p, &set->img[pic[r][0]], flip[r], c->resolution, c->center_crop, &dist);
        if (rc) return rc;
        rng_fill_normal(&t->rng, t->lat_noise, L);
        train_sample_latent(&t->p, t->x0 + r * L, dist, t->lat_noise, L);
    }
    for (int r = 0; r < rows && t->draw_only; r++) rng_fill_normal(&t->rng, t->lat_noise, L);
    for (int r = 0; r < rows; r++) t->ts[r] = rng_randint(&t->rng, t->p.sched.T);
    rng_fill_normal(&t->rng, t->eps, (size_t)rows * L);
    if (ms->unmix_on) unmix_clear(&ms->unmix);
    for (int r = 0; r < rows; r++) {
        int pi = prompt[r];
        if (c->caption_dropout > 0 && rng_uniform(&t->rng) < c->caption_dropout) pi = t->empty_prompt;
        const int *ids = t->prompts.ids + (size_t)pi * t->T;
        memcpy(t->ids + (size_t)r * t->T, ids, sizeof(int) * t->T);
        if (t->prompt_ctx) memcpy(t->ctx + r * CT, t->prompt_ctx + pi * CT, sizeof(float) * CT);
        /* Unmix on the composite instance rows (class rows keep the base model's behaviour) */
        if (ms->unmix_on && r < B && composite[r]) {
            unmix_set_halves(&ms->unmix, r, c->cutmix_vertical);
            for (int s = 0; s < 2; s++) {
                const int k = subj[r][s];
                unmix_mark_phrase(&ms->unmix, r, s, ids, ms->phrase_ids[k], ms->n_phrase_ids[k]);
            }
        }
    }
    return SD_OK;
}
