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

static int add_prompt(const multi_data_t *d, const char *fill, const char *where) {
    char text[1024];
    prompt_fill(text, sizeof text, d->cfg->prompt_template, fill);
    return prompt_table_add(d->prompts, d->p->tok, text, where);
}

int multi_scan(multisubject_t **out, const multi_data_t *d, int *prior) {
    const train_config_t *c = d->cfg;
    if (c->n_subjects > CUTMIX_MAX_SUBJECTS)
        return sd_error(SD_ERR_ARG, "--subject: at most %d subjects", CUTMIX_MAX_SUBJECTS);
    if (c->instance_dir || c->class_dir || c->data_tsv)
        return sd_error(SD_ERR_ARG, "--subject replaces --instance-dir / --class-dir / --data: give one or the other");
    if (c->mode != TRAIN_MODE_SHIFTS) return sd_error(SD_ERR_ARG, "--subject needs --mode shifts");
    multisubject_t *ms = *out = sd_xcalloc(1, sizeof *ms);
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
        if ((rc = phrase_tokens(ms, i, d->p->tok))) return rc;
        if ((rc = ms->single_prompt[i] = add_prompt(d, phrase, "--subject")) < 0) return rc;
        image_set_t s = {0};
        rc = image_set_scan(&s, dir, "--subject", 0, 0, d->prompts->text[ms->single_prompt[i]], d->prompts, d->p->tok);
        if (rc) {
            image_set_free(&s);
            return rc;
        }
        append_set(d->inst, &s, &ms->first[i], &ms->count[i]);
        if (!ms->prior) continue;
        if (!c->subject_classes[i])
            return sd_error(SD_ERR_ARG, "--subject-class: give one for every --subject (in the same order) or none");
        if ((rc = subject_spec_parse(c->subject_classes[i], "--subject-class", phrase, sizeof phrase, dir, sizeof dir)))
            return rc;
        ms->class_phrase[i] = dupstr(phrase), ms->class_dir[i] = dupstr(dir);
        if ((rc = ms->class_prompt[i] = add_prompt(d, phrase, "--subject-class")) < 0) return rc;
        rc = image_set_scan(&s, dir, "--subject-class", 1, 1, d->prompts->text[ms->class_prompt[i]], d->prompts, d->p->tok);
        if (rc) {
            image_set_free(&s);
            return rc;
        }
        if (s.n == 0 && c->num_class_images < 1)
            return sd_error(SD_ERR_ARG, "--subject-class %s holds no images and --num-class-images is 0", dir);
        append_set(d->cls, &s, &ms->cfirst[i], &ms->ccount[i]);
    }
    /* every composite prompt, so that a frozen text encoder encodes them once */
    for (int i = 0; i < ms->n && ms->cutmix_prob > 0; i++)
        for (int j = 0; j < ms->n; j++) {
            if (i == j) continue;
            for (int pos = 0; pos < 2; pos++) {
                char fill[1100];
                cutmix_phrase(fill, sizeof fill, ms->phrase[i], ms->phrase[j], pos, c->cutmix_vertical);
                int rc = ms->pair_prompt[i][j][pos] = add_prompt(d, fill, "--subject (composite prompt)");
                if (rc < 0) return rc;
                if (!ms->prior) continue;
                cutmix_phrase(fill, sizeof fill, ms->class_phrase[i], ms->class_phrase[j], pos, c->cutmix_vertical);
                rc = ms->pair_class_prompt[i][j][pos] = add_prompt(d, fill, "--subject-class (composite prompt)");
                if (rc < 0) return rc;
            }
        }
    *prior = ms->prior;
    return SD_OK;
}

int multi_classes(multisubject_t *ms, const multi_data_t *d) {
    const train_config_t *c = d->cfg;
    if (!ms->prior) return SD_OK;
    int need = 0;
    for (int i = 0; i < ms->n; i++) need |= ms->ccount[i] < c->num_class_images;
    if (!need) return SD_OK;
    image_set_free(d->cls);
    memset(d->cls, 0, sizeof *d->cls);
    for (int i = 0; i < ms->n; i++) {
        const char *prompt = d->prompts->text[ms->class_prompt[i]];
        int rc = SD_OK;
        if (ms->ccount[i] < c->num_class_images)
            rc = class_images_generate(d->p, ms->class_dir[i], prompt, ms->ccount[i], c->num_class_images,
                                       c->resolution,
                                       &(class_gen_t){(sampler_kind_t)c->class_sampler, c->class_steps, c->class_cfg, c->class_batch},
                                       c->seed ^ (0xa54ff53a5f1d36f1ull + i));
        image_set_t s = {0};
        if (!rc) rc = image_set_scan(&s, ms->class_dir[i], "--subject-class", 0, 0, prompt, d->prompts, d->p->tok);
        rc = dist_agree(rc);   /* the MPI ranks stop together (class_images_generate is collective) */
        if (rc) {
            image_set_free(&s);
            return rc;
        }
        append_set(d->cls, &s, &ms->cfirst[i], &ms->ccount[i]);
    }
    return SD_OK;   /* trainer_open draws the crop positions next */
}

int multi_prepare(multisubject_t *ms, const train_config_t *c, unet_t *unet, int rows, int H, int W, int T,
                  size_t latent_n) {
    ms->dist = sd_xcalloc(2 * latent_n, sizeof(float));
    if (c->unmix_weight <= 0 || ms->cutmix_prob <= 0) return SD_OK;
    int rc = unmix_attach(&ms->unmix, unet, c->unmix_layers, rows, H, W, T);
    if (rc) return rc;
    ms->unmix.weight = c->unmix_weight;
    ms->unmix.mode = c->unmix_share ? UNMIX_SHARE : UNMIX_MSE;
    ms->unmix_on = 1;
    return SD_OK;
}

void multi_free(multisubject_t *ms) {
    if (!ms) return;
    unmix_detach(&ms->unmix);
    for (int i = 0; i < CUTMIX_MAX_SUBJECTS; i++)
        free(ms->phrase[i]), free(ms->class_phrase[i]), free(ms->class_dir[i]), free(ms->phrase_ids[i]);
    free(ms->dist);
    free(ms);
}

void multi_put_meta(const multisubject_t *ms, const train_config_t *c, shift_set_t *s) {
    char buf[2048] = "";
    for (int i = 0, k = 0; i < ms->n && k < (int)sizeof buf; i++)
        k += snprintf(buf + k, sizeof buf - k, "%s%s", i ? "; " : "", ms->phrase[i]);
    shiftset_set_meta(s, "subjects", buf);
    snprintf(buf, sizeof buf, "%g", ms->cutmix_prob);
    shiftset_set_meta(s, "cutmix_prob", buf);
    snprintf(buf, sizeof buf, "%g", ms->unmix_on ? c->unmix_weight : 0.0f);
    shiftset_set_meta(s, "unmix_weight", buf);
    shiftset_set_meta(s, "unmix_layers", c->unmix_layers ? c->unmix_layers : "all");
    shiftset_set_meta(s, "unmix_loss", c->unmix_share ? "share" : "mse");
}

/* ---- the micro-batch ---- */

int multi_composite_dist(multisubject_t *ms, pipeline_t *p, const train_image_t *a, const train_image_t *b, int res,
                         int vertical, int fit, const float **dist) {
    image_t ia = {0}, ib = {0}, img = {0};
    int rc = image_load(&ia, a->path);
    if (!rc) rc = image_load(&ib, b->path);
    if (!rc) rc = image_compose_halves(&img, &ia, &ib, res, vertical, fit);
    image_free(&ia), image_free(&ib);
    if (!rc) rc = train_image_posterior(p, &img, res, ms->dist);
    image_free(&img);
    *dist = ms->dist;
    return rc;
}

void multi_draw_rows(multisubject_t *ms, rng_t *rng, image_set_t *inst, image_set_t *cls, int B, int prior, int flip,
                     train_row_t *row) {
    const int n = ms->n;
    for (int b = 0; b < B; b++) {
        train_row_t *x = &row[b], *y = &row[B + b];
        int *subj = ms->row_subject[b];
        *x = (train_row_t){0};
        if (prior) *y = (train_row_t){0};
        const int composite = n >= 2 && rng_uniform(rng) < ms->cutmix_prob;
        const int i = rng_randint(rng, n);
        subj[0] = i;
        x->img = &inst->img[ms->first[i] + rng_randint(rng, ms->count[i])];
        if (composite) {
            int j = rng_randint(rng, n - 1);
            j += j >= i;
            subj[1] = j;
            x->img2 = &inst->img[ms->first[j] + rng_randint(rng, ms->count[j])];
            const int pos = rng_uniform(rng) < 0.5;
            x->prompt = ms->pair_prompt[i][j][pos];
            if (prior) {
                y->img = &cls->img[ms->cfirst[i] + rng_randint(rng, ms->ccount[i])];
                y->img2 = &cls->img[ms->cfirst[j] + rng_randint(rng, ms->ccount[j])];
                y->prompt = ms->pair_class_prompt[i][j][pos];
            }
            ms->n_composites++;
        } else {
            subj[1] = -1;
            x->prompt = x->img->prompt;   /* its caption file, else the subject prompt */
            if (prior) {
                y->img = &cls->img[ms->cfirst[i] + rng_randint(rng, ms->ccount[i])];
                y->prompt = y->img->prompt;
            }
            if (flip) {
                x->flip = rng_uniform(rng) < 0.5;
                if (prior) y->flip = rng_uniform(rng) < 0.5;
            }
            ms->n_singles++;
        }
    }
}

void multi_mark_rows(multisubject_t *ms, const int *ids, int T, int B, int vertical) {
    if (!ms->unmix_on) return;
    unmix_clear(&ms->unmix);
    /* Unmix on the composite instance rows (class rows keep the base model's behaviour) */
    for (int r = 0; r < B; r++) {
        if (ms->row_subject[r][1] < 0) continue;
        unmix_set_halves(&ms->unmix, r, vertical);
        for (int s = 0; s < 2; s++) {
            const int k = ms->row_subject[r][s];
            unmix_mark_phrase(&ms->unmix, r, s, ids + (size_t)r * T, ms->phrase_ids[k], ms->n_phrase_ids[k]);
        }
    }
}
