/* Spectral-shift training (see trainer.h): set-up, the micro-batch step, AdamW with the LR
 * schedule, and the run loop with its outputs. Checkpoint files live in checkpoint.c. */
#include "train/trainer.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/dist.h"
#include "base/error.h"
#include "base/progress.h"
#include "base/runtime.h"
#include "io/image.h"
#include "ops/ops.h"
#include "io/outputs.h"
#include "shifts/shifts.h"
#include "train/checkpoint.h"
#include "train/cutmix.h"
#include "train/train_mode.h"

#define STEP_SALT 0x3c6ef372fe94f82bull     /* the per-step stream */
#define CLASS_SALT 0xa54ff53a5f1d36f1ull    /* class-image seeds */
#define EMA_BETA 0.98

long trainer_peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return 0;
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb * 1024;
}

/* ---------------------------------------------------------------------------------------------
 * Model
 * ------------------------------------------------------------------------------------------- */

int trainer_load_model(trainer_t *t, const train_config_t *cfg) {
    memset(t, 0, sizeof *t);
    t->cfg = *cfg;
    const model_open_options_t mo = {.tokenizer_dir = cfg->tokenizer, .prediction_type = cfg->prediction_type,
                                     .scheduler_config = cfg->scheduler_config};
    int rc = pipeline_open_model(&t->p, cfg->model, &mo);
    if (rc) return rc;
    t->opened = 1;
    t->T = t->prompts.T = t->p.n_ctx;
    if (!t->cfg.resolution) t->cfg.resolution = pipeline_native_size(&t->p);   /* 0: the model's own */
    const int f = t->p.scale_factor * (1 << (t->p.unet.cfg.n_levels - 1)), res = t->cfg.resolution;
    if (res < f || res % f)
        return sd_error(SD_ERR_ARG, "--resolution %d: this model needs a positive multiple of %d", res, f);
    t->h = t->w = res / t->p.scale_factor;
    t->latent_n = train_latent_floats(&t->p, res);
    t->mode = train_mode_ops(t->cfg.mode);
    t->xl = t->p.has_te2 && t->p.pooled_dim > 0;   /* SDXL: two encoders, added conditioning */
    return SD_OK;
}

const train_mode_ops_t *train_mode_ops(train_mode_t mode) {
    return mode == TRAIN_MODE_FULL ? &TRAIN_MODE_FULL_OPS : mode == TRAIN_MODE_LORA ? &TRAIN_MODE_LORA_OPS : &TRAIN_MODE_SHIFTS_OPS;
}

/* What a mode may see of the trainer (train_mode.h). */
static train_model_t mode_view(trainer_t *t) {
    return (train_model_t){&t->cfg, &t->p, &t->ug, &t->cg, t->model_hash, &t->mode_state, &t->cg2};
}

typedef struct {
    trainer_t *t;
    int count_only;
} collect_ctx_t;

/* Whether `name` contains one of the comma-separated substrings of `list` (NULL or "": all). */
int shift_layer_selected(const char *list, const char *name) {
    if (!list || !*list) return 1;
    for (const char *s = list; *s;) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len) {
            char pat[256];
            if (len >= sizeof pat) len = sizeof pat - 1;
            memcpy(pat, s, len), pat[len] = '\0';
            if (strstr(name, pat)) return 1;
        }
        if (!e) break;
        s = e + 1;
    }
    return 0;
}

/* The mode's arrays into t->params, named by the one rule of weights/shift_name.h: a shift by
 * shift_key (SHIFT_KEY_TRAINER, its group from its kind), any other array "unet/" or "te/" + name
 * + suffix (train_param_name). */
static void collect(void *ctx, const train_param_spec_t *s) {
    collect_ctx_t *cc = ctx;
    trainer_t *t = cc->t;
    if (!cc->count_only) {
        train_param_t *p = &t->params[t->n_params];
        if (s->shift) {
            const size_t len = strlen(s->shift->path) + 16;
            p->name = sd_xmalloc(len);
            SD_CHECK(shift_key(p->name, len, s->shift, SHIFT_KEY_TRAINER) == SD_OK, "%s", sd_last_error());
        } else {
            char stem[512];
            snprintf(stem, sizeof stem, "%s%s", s->name, s->suffix);
            const size_t len = strlen(stem) + 8;
            p->name = sd_xmalloc(len);
            SD_CHECK(train_param_name(p->name, len, (shift_component_t)s->component, stem) == SD_OK, "%s", stem);
        }
        p->value = s->value, p->grad = s->grad, p->n = s->n, p->component = s->component;
        p->group = s->shift ? (s->shift->kind == SHIFT_NORM) : s->group;
        p->frozen = t->mode->spectral_options && !shift_layer_selected(t->cfg.shift_layers, p->name);
        SD_CHECK(s->grad, "no gradient for %s", p->name);
    }
    t->n_params++;
    t->n_values += (size_t)s->n;
}

static void visit_all(trainer_t *t, int count_only) {
    collect_ctx_t cc = {t, count_only};
    const train_model_t m = mode_view(t);
    t->mode->visit(&m, collect, &cc);
}

int trainer_prepare(trainer_t *t, int prior) {
    const train_config_t *c = &t->cfg;
    t->prior = prior;
    t->rows = c->batch_size * (prior ? 2 : 1);
    const train_model_t m = mode_view(t);
    int rc = t->mode->prepare(&m);   /* the training form of the model (train_mode.h) */
    if (rc) return rc;
    t->prepared = 1;   /* from here trainer_close frees gradients and activations (zeroed: safe) */
    rc = unet_grads_alloc(&t->ug, &t->p.unet, t->mode->unet_grads);
    if (!rc) rc = unet_acts_build(&t->ua, &t->p.unet, t->rows, t->h, t->w, t->T, 1,
                                  c->grad_checkpointing ? UNET_CKPT_TRANSFORMERS : UNET_CKPT_NONE);
    if (!rc && c->train_text_encoder) rc = clip_acts_build(&t->ca, &t->p.clip.cfg, t->rows, t->T);
    if (!rc && c->train_text_encoder) rc = clip_grads_alloc(&t->cg, &t->p.clip, t->mode->clip_grads);
    if (!rc && c->train_text_encoder && t->xl) rc = clip_acts_build(&t->ca2, &t->p.clip2.cfg, t->rows, t->T);
    if (!rc && c->train_text_encoder && t->xl) rc = clip_grads_alloc(&t->cg2, &t->p.clip2, t->mode->clip_grads);
    if (rc) return rc;

    visit_all(t, 1);
    const int n = t->n_params;
    t->params = calloc((size_t)(n ? n : 1), sizeof *t->params);
    t->adam_memory = calloc(2 * t->n_values + 1, sizeof(float));
    if (!t->params || !t->adam_memory) return sd_error(SD_ERR_NOMEM, "out of memory for the optimizer state");
    t->n_params = 0, t->n_values = 0;
    visit_all(t, 0);
    int n_trained = 0;
    for (int i = 0; i < t->n_params; i++) n_trained += !t->params[i].frozen;
    if (t->n_params && !n_trained)
        return sd_error(SD_ERR_ARG, "--shift-layers '%s' matches none of the %d shift arrays (names look like "
                        "unet/down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k, te/...q_proj.weight%s)",
                        c->shift_layers, t->n_params, t->xl ? ", te2/...q_proj.weight" : "");
    float *mem = t->adam_memory;
    for (int i = 0; i < t->n_params; i++) {
        t->params[i].m = mem, mem += t->params[i].n;
        t->params[i].v = mem, mem += t->params[i].n;
    }
    if (t->mode->ema && c->ema_decay > 0) {   /* the EMA starts at the initial weights */
        t->ema_memory = malloc(sizeof(float) * (t->n_values + 1));
        if (!t->ema_memory) return sd_error(SD_ERR_NOMEM, "out of memory for the EMA weights");
        mem = t->ema_memory;
        for (int i = 0; i < t->n_params; i++) {
            t->params[i].ema = mem, mem += t->params[i].n;
            memcpy(t->params[i].ema, t->params[i].value, sizeof(float) * (size_t)t->params[i].n);
        }
    }

    const size_t R = (size_t)t->rows, L = t->latent_n, CT = (size_t)t->T * t->p.ctx_dim;
    t->x0 = calloc(R * L, sizeof(float));
    t->eps = calloc(R * L, sizeof(float));
    t->xt = calloc(R * L, sizeof(float));
    t->target = calloc(R * L, sizeof(float));
    t->pred = calloc(R * L, sizeof(float));
    t->dpred = calloc(R * L, sizeof(float));
    t->lat_noise = calloc(L, sizeof(float));
    t->tf = calloc(R, sizeof(float));
    t->ts = calloc(R, sizeof(int));
    t->ids = calloc(R * (size_t)t->T, sizeof(int));
    t->ctx = calloc(R * CT, sizeof(float));
    t->dctx = calloc(R * CT, sizeof(float));
    if (!t->x0 || !t->eps || !t->xt || !t->target || !t->pred || !t->dpred || !t->lat_noise || !t->tf || !t->ts ||
        !t->ids || !t->ctx || !t->dctx)   /* trainer_close frees what was allocated */
        return sd_nomem("training batch buffers", (6 * R * L + L + 2 * R + R * t->T + 2 * R * CT) * sizeof(float));
    if (t->xl) {   /* SDXL's second encoder's ids, the added conditioning and the split gradients */
        const size_t P = (size_t)t->p.pooled_dim, T = (size_t)t->T;
        t->ids2 = calloc(R * T, sizeof(int));
        t->pooled = calloc(R * P, sizeof(float));
        t->dpooled = calloc(R * P, sizeof(float));
        t->time_ids = calloc(R * 6, sizeof(float));
        t->dh1 = calloc(R * T * (size_t)t->p.clip.cfg.hidden_size, sizeof(float));
        t->dh2 = calloc(R * T * (size_t)t->p.clip2.cfg.hidden_size, sizeof(float));
        if (!t->ids2 || !t->pooled || !t->dpooled || !t->time_ids || !t->dh1 || !t->dh2)
            return sd_nomem("SDXL conditioning buffers", (R * T + 2 * R * P + 6 * R + R * CT) * sizeof(float));
    }
    rng_init(&t->rng, c->seed ^ STEP_SALT);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * One step
 * ------------------------------------------------------------------------------------------- */

/* SDXL's conditioning of the rows, both encoders on ids and t->ids2 (acts built on first use: a
 * frozen encoder without ctx): their penultimate states side by side in t->ctx, TE2's pooled
 * embedding in t->pooled. */
static int encode_xl(trainer_t *t, const int *ids, int rows) {
    pipeline_t *p = &t->p;
    const int T = t->T, C1 = p->clip.cfg.hidden_size, C2 = p->clip2.cfg.hidden_size, C = p->ctx_dim;
    int rc = SD_OK;
    if (!t->ca.memory) rc = clip_acts_build(&t->ca, &p->clip.cfg, t->rows, T);
    if (!rc && !t->ca2.memory) rc = clip_acts_build(&t->ca2, &p->clip2.cfg, t->rows, T);
    if (rc) return rc;
    p->clip.hidden_mode = p->clip2.hidden_mode = CLIP_HIDDEN_PENULTIMATE;
    p->clip.want_pooled = 0, p->clip2.want_pooled = 1;
    const float *h1 = clip_forward(&p->clip, &t->ca, ids, rows, T);
    const float *h2 = h1 ? clip_forward(&p->clip2, &t->ca2, t->ids2, rows, T) : NULL;
    p->clip2.want_pooled = 0;
    if (!h2) return SD_ERR_ARG;
    if ((rc = clip_pooled(t->pooled, &p->clip2, &t->ca2))) return rc;
    for (size_t r = 0; r < (size_t)rows * T; r++) {
        memcpy(t->ctx + r * C, h1 + r * C1, sizeof(float) * C1);
        memcpy(t->ctx + r * C + C1, h2 + r * C2, sizeof(float) * C2);
    }
    return SD_OK;
}

int trainer_micro_step(trainer_t *t, const float *x0, const float *eps, const int *ts, const int *ids,
                       const float *ctx, int n_inst, int n_class, float grad_scale, train_losses_t *out) {
    const int rows = n_inst + n_class;
    SD_CHECK(t->prepared && rows <= t->rows && n_inst >= 1, "micro step of %d + %d rows", n_inst, n_class);
    const size_t L = t->latent_n, CT = (size_t)t->T * t->p.ctx_dim;
    const noise_schedule_t *s = &t->p.sched;
    const int te = t->cfg.train_text_encoder;
    for (int r = 0; r < rows; r++) {
        if (ts[r] < 0 || ts[r] >= s->T) return sd_error(SD_ERR_ARG, "timestep %d outside [0, %d)", ts[r], s->T);
        t->tf[r] = (float)ts[r];
    }
    ddpm_add_noise(t->xt, x0, eps, ts, rows, L, s);
    ddpm_target(t->target, x0, eps, ts, rows, L, s);
    int rc = SD_OK;
    unet_added_cond_t added = {t->pooled, t->time_ids};   /* SDXL; the pooled rows of a frozen encoder */
    if (t->xl) {
        if ((te || !ctx) && (rc = encode_xl(t, ids, rows))) return rc;
        if (te || !ctx) ctx = t->ctx;
    } else {
        if (!ctx && !t->ca.memory) rc = clip_acts_build(&t->ca, &t->p.clip.cfg, t->rows, t->T);   /* frozen encoder, no ctx */
        if (rc) return rc;
        if ((te || !ctx) && !(ctx = clip_forward(&t->p.clip, &t->ca, ids, rows, t->T))) return SD_ERR_ARG;
    }
    unmix_t *um = t->ms && t->ms->unmix_on ? &t->ms->unmix : NULL;   /* Cut-Mix-Unmix (cutmix.h) */
    if (um) um->gscale = grad_scale;
    rc = unet_forward(t->pred, &t->p.unet, &t->ua, t->xt, t->tf, ctx, t->xl ? &added : NULL, rows, t->h, t->w, t->T);
    if (rc) return rc;
    const double lu = unmix_loss(um);
    const size_t ni = (size_t)n_inst * L, nc = (size_t)n_class * L;
    const float w = t->cfg.prior_loss_weight;
    const double li = mse_forward(t->pred, t->target, ni);
    const double lc = n_class ? mse_forward(t->pred + ni, t->target + ni, nc) : 0.0;
    memset(t->dpred, 0, sizeof(float) * (ni + nc));
    mse_backward(t->dpred, t->pred, t->target, ni, grad_scale);
    if (n_class) mse_backward(t->dpred + ni, t->pred + ni, t->target + ni, nc, grad_scale * w);
    if (te) memset(t->dctx, 0, sizeof(float) * rows * CT);
    const int te2 = te && t->xl;   /* SDXL: d text_embeds reaches TE2 through the pooled embedding */
    if (te2) memset(t->dpooled, 0, sizeof(float) * (size_t)rows * t->p.pooled_dim);
    unet_backward(NULL, te ? t->dctx : NULL, te2 ? t->dpooled : NULL, &t->ug, t->dpred, &t->p.unet, &t->ua);
    if (te2) {
        const int C1 = t->p.clip.cfg.hidden_size, C2 = t->p.clip2.cfg.hidden_size, C = t->p.ctx_dim;
        for (size_t r = 0; r < (size_t)rows * t->T; r++) {   /* d ctx = [d hidden1 | d hidden2] per token */
            memcpy(t->dh1 + r * C1, t->dctx + r * C, sizeof(float) * C1);
            memcpy(t->dh2 + r * C2, t->dctx + r * C + C1, sizeof(float) * C2);
        }
        clip_backward(&t->p.clip, &t->ca, t->dh1, NULL, &t->cg, NULL);
        clip_backward(&t->p.clip2, &t->ca2, t->dh2, t->dpooled, &t->cg2, NULL);
    } else if (te) {
        clip_backward(&t->p.clip, &t->ca, t->dctx, NULL, &t->cg, NULL);
    }
    if (out) out->instance = li, out->prior = lc, out->unmix = lu, out->loss = li + (double)w * lc + lu;
    return SD_OK;
}

double trainer_lr_factor(const train_config_t *c, int step) {
    const int W = c->warmup, N = c->steps;
    if (step < W) return (double)step / (double)(W > 1 ? W : 1);
    switch (c->lr_schedule) {
    case LR_LINEAR: {
        double f = (double)(N - step) / (double)(N - W > 1 ? N - W : 1);
        return f > 0 ? f : 0;
    }
    case LR_COSINE: {
        double progress = (double)(step - W) / (double)(N - W > 1 ? N - W : 1);
        double f = 0.5 * (1.0 + cos(M_PI * progress));
        return f > 0 ? f : 0;
    }
    default: return 1.0;
    }
}

double trainer_optimizer_step(trainer_t *t, double *lr_out) {
    const train_config_t *c = &t->cfg;
    float **grads = sd_xmalloc(sizeof(float *) * (t->n_params + 1));
    size_t *sizes = sd_xmalloc(sizeof(size_t) * (t->n_params + 1));
    for (int i = 0; i < t->n_params; i++) grads[i] = t->params[i].grad, sizes[i] = (size_t)t->params[i].n;
    if (c->rank > 0 && t->mode->spectral_options)
        /* --rank R: shifts of singular values beyond the R largest (entries R.. of a delta,
         * which follows the descending singular values) get no gradient; their delta, m and v
         * stay 0, so AdamW leaves them at 0. Norm-gain shifts (group 1) are not ranked. */
        for (int i = 0; i < t->n_params; i++)
            if (t->params[i].group == 0 && t->params[i].n > c->rank)
                memset(t->params[i].grad + c->rank, 0, sizeof(float) * (size_t)(t->params[i].n - c->rank));
    for (int i = 0; i < t->n_params; i++)   /* --shift-layers: the left-out arrays stay at 0 (as --rank) */
        if (t->params[i].frozen) memset(t->params[i].grad, 0, sizeof(float) * (size_t)t->params[i].n);
    const double norm = clip_grad_norm(grads, sizes, t->n_params, c->max_grad_norm > 0 ? c->max_grad_norm : INFINITY);
    free(grads), free(sizes);
    const double f = trainer_lr_factor(c, t->step);
    adamw_config_t a = {0, c->beta1, c->beta2, c->adam_eps, c->weight_decay};
    for (int i = 0; i < t->n_params; i++) {
        train_param_t *p = &t->params[i];
        a.lr = (float)((p->group ? c->lr_1d : c->lr) * f);
        adamw_step(p->value, p->grad, p->m, p->v, (size_t)p->n, t->step + 1, &a);
    }
    t->step++;
    unet_grads_zero(&t->ug);
    if (c->train_text_encoder) clip_grads_zero(&t->cg);
    if (c->train_text_encoder && t->xl) clip_grads_zero(&t->cg2);
    if (lr_out) *lr_out = c->lr * f;
    return norm;
}

/* The rows of one single-subject micro-batch: items from the epoch order (instance k % n_inst,
 * class k % n_class), then with --flip one uniform per row. */
static void draw_rows(trainer_t *t, train_row_t *row) {
    const int B = t->cfg.batch_size;
    for (int b = 0; b < B; b++) {
        const int k = data_order_next(&t->order);
        row[b] = (train_row_t){.img = &t->inst.img[k % t->inst.n]};
        if (t->prior) row[B + b] = (train_row_t){.img = &t->cls.img[k % t->cls.n]};
    }
    for (int r = 0; r < t->rows; r++) row[r].prompt = row[r].img->prompt;
    if (t->cfg.flip)
        for (int r = 0; r < t->rows; r++) row[r].flip = rng_uniform(&t->rng) < 0.5;
}

/* Draws one micro-batch (see trainer.h and cutmix.h for the order of draws) into the work buffers:
 * the rows from their source, then per row the latent sample, the timesteps, the noise, the
 * prompts with caption dropout. */
int trainer_next_batch(trainer_t *t) {
    const train_config_t *c = &t->cfg;
    const int B = c->batch_size, rows = t->rows;
    const size_t L = t->latent_n, CT = (size_t)t->T * t->p.ctx_dim;
    train_row_t row[CUTMIX_MAX_ROWS];
    SD_CHECK(rows <= CUTMIX_MAX_ROWS, "batch too large");
    if (t->ms) multi_draw_rows(t->ms, &t->rng, &t->inst, &t->cls, B, t->prior, c->flip, row);   /* cutmix.c */
    else draw_rows(t, row);
    for (int r = 0; r < rows; r++) {   /* draw_only: another rank's rows (trainer.h) */
        const float *dist = NULL;
        if (!t->draw_only) {
            int rc = row[r].img2 ? multi_composite_dist(t->ms, &t->p, row[r].img, row[r].img2, c->resolution,
                                                        c->cutmix_vertical, c->cutmix_fit, &dist)
                                 : train_image_dist(&t->p, row[r].img, row[r].flip, c->resolution, c->center_crop, &dist);
            if (rc) return rc;
        }
        rng_fill_normal(&t->rng, t->lat_noise, L);
        if (!t->draw_only) train_sample_latent(&t->p, t->x0 + r * L, dist, t->lat_noise, L);
    }
    for (int r = 0; r < rows && t->xl; r++) {   /* SDXL: each row's micro-conditioning (no draw) */
        float *ti = t->time_ids + (size_t)r * 6;
        if (row[r].img2) train_composite_time_ids(ti, c->resolution);
        else train_image_time_ids(ti, row[r].img, row[r].flip, c->resolution, c->center_crop);
    }
    for (int r = 0; r < rows; r++) t->ts[r] = rng_randint(&t->rng, t->p.sched.T);
    rng_fill_normal(&t->rng, t->eps, (size_t)rows * L);
    for (int r = 0; r < rows; r++) {
        int pi = row[r].prompt;
        /* drawn only when on, so runs without it keep their streams (and their bytes) */
        if (c->caption_dropout > 0 && rng_uniform(&t->rng) < c->caption_dropout) pi = t->empty_prompt;
        memcpy(t->ids + (size_t)r * t->T, t->prompts.ids + (size_t)pi * t->T, sizeof(int) * t->T);
        if (t->prompt_ctx) memcpy(t->ctx + r * CT, t->prompt_ctx + pi * CT, sizeof(float) * CT);
        if (t->xl) memcpy(t->ids2 + (size_t)r * t->T, t->prompt_ids2 + (size_t)pi * t->T, sizeof(int) * t->T);
        if (t->prompt_pooled) {
            const size_t P = (size_t)t->p.pooled_dim;
            memcpy(t->pooled + r * P, t->prompt_pooled + pi * P, sizeof(float) * P);
        }
    }
    if (t->ms) multi_mark_rows(t->ms, t->ids, t->T, B, c->cutmix_vertical);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Outputs
 * ------------------------------------------------------------------------------------------- */

/* The run's metadata of a shift file (train_save_t.put_meta). */
static void put_meta_common(void *ctx, shift_set_t *s) {
    const trainer_t *t = ctx;
    const train_config_t *c = &t->cfg;
    char buf[64];
    shiftset_set_meta(s, "base_model_hash", t->model_hash);
    shiftset_set_meta(s, "instance_prompt", c->instance_prompt ? c->instance_prompt : "");
    if (t->prior && c->class_prompt) shiftset_set_meta(s, "class_prompt", c->class_prompt);
    if (t->ms) multi_put_meta(t->ms, c, s);   /* subjects, Cut-Mix-Unmix settings */
    snprintf(buf, sizeof buf, "%d", t->step);
    shiftset_set_meta(s, "steps", buf);
    snprintf(buf, sizeof buf, "%d", c->resolution);
    shiftset_set_meta(s, "resolution", buf);
    snprintf(buf, sizeof buf, "%g", c->lr);
    shiftset_set_meta(s, "lr", buf);
    snprintf(buf, sizeof buf, "%g", c->lr_1d);
    shiftset_set_meta(s, "lr_1d", buf);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)c->seed);
    shiftset_set_meta(s, "seed", buf);
    snprintf(buf, sizeof buf, "%d", c->batch_size * c->grad_accum * dist_size());
    shiftset_set_meta(s, "batch_size", buf);
    shiftset_set_meta(s, "norm_shift", c->norm_shift == NORMSHIFT_SCALAR ? "scalar" : "element");
    if (c->rank > 0) {
        char r[32];
        snprintf(r, sizeof r, "%d", c->rank);
        shiftset_set_meta(s, "rank", r);
    }
    if (c->shift_layers) shiftset_set_meta(s, "shift_layers", c->shift_layers);
    shiftset_set_meta(s, "train_text_encoder", c->train_text_encoder ? "true" : "false");
    shiftset_set_meta(s, "svd_dtype", c->svd_bf16 ? "bf16" : "fp32");
    shiftset_set_meta(s, "svdiff_version", SVDIFF_VERSION);
}

/* The mode's output files in OUT_DIR (train_mode.h), from the trained arrays (their EMA where there is one). */
static int trainer_save(trainer_t *t, train_save_t *o) {
    char *config = train_config_json(t);
    *o = (train_save_t){.dir = t->cfg.out_dir, .step = t->step, .params = t->params, .n_params = t->n_params,
                        .config_json = config, .put_meta = put_meta_common, .meta_ctx = t, .bytes = {-1, -1, -1}};
    const train_model_t m = mode_view(t);
    const int rc = t->mode->save(&m, o);
    free(config);
    o->config_json = NULL;
    return rc;
}

/* A grid of one sample per --sample-prompt with the current shifts (the factored weights are used
 * as they are: no baked copy, so sampling costs no extra memory), seeded with --seed each time so
 * grids of different steps compare. */
static int write_samples(trainer_t *t) {
    const train_config_t *c = &t->cfg;
    const int n = c->n_sample_prompts, res = c->resolution;
    char dir[PATH_MAX], path[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/samples", c->out_dir);
    if (mkdir(dir, 0777) && errno != EEXIST)
        return sd_error(SD_ERR_IO, "%s: cannot create the folder: %s", dir, strerror(errno));
    int C, h, w;
    pipeline_latent_shape(&t->p, res, res, &C, &h, &w);
    float *lat = sd_xmalloc(sizeof(float) * (size_t)n * C * h * w);
    int rc = SD_OK;
    for (int k = 0; k < n && !rc; k++) {
        txt2img_opts_t o = {.prompt = c->sample_prompts[k], .width = res, .height = res, .steps = c->sample_steps,
                            .cfg = c->sample_cfg, .sampler = SAMPLER_DDIM, .seed = c->seed, .batch = 1};
        rc = pipeline_txt2img(&t->p, &o, NULL, lat + (size_t)k * C * h * w);
    }
    uint8_t **rgb = calloc((size_t)n, sizeof *rgb);
    if (!rc) rc = pipeline_decode(&t->p, lat, n, h, w, rgb);
    image_t *imgs = calloc((size_t)n, sizeof *imgs);
    for (int k = 0; k < n; k++) imgs[k].w = imgs[k].h = res, imgs[k].rgb = rgb[k];
    image_t grid = {0};
    if (!rc) rc = image_grid(&grid, imgs, n, 0, 2);
    if (!rc) {
        char params[4096];
        int len = snprintf(params, sizeof params, "step %d, %d DDIM steps, CFG scale %g, seed %llu; prompts:", t->step,
                           c->sample_steps, c->sample_cfg, (unsigned long long)c->seed);
        for (int k = 0; k < n && len < (int)sizeof params; k++)
            len += snprintf(params + len, sizeof params - len, "\n%s", c->sample_prompts[k]);
        const char *keys[2] = {"parameters", "Software"}, *vals[2] = {params, "svdiff " SVDIFF_VERSION};
        snprintf(path, sizeof path, "%s/step-%06d.png", dir, t->step);
        rc = image_save_png(&grid, path, keys, vals, 2);
    }
    image_free(&grid);
    for (int k = 0; k < n; k++) free(rgb[k]);
    free(rgb), free(imgs), free(lat);
    return rc;
}

/* Exchanges the raw and the EMA weights (exact, and its own inverse). */
static void swap_ema(trainer_t *t) {
    if (!t->ema_memory) return;
    for (int i = 0; i < t->n_params; i++) {
        float *a = t->params[i].value, *b = t->params[i].ema;
        for (int k = 0; k < t->params[i].n; k++) {
            const float x = a[k];
            a[k] = b[k], b[k] = x;
        }
    }
}

/* The trainer's pieces that a checkpoint holds (checkpoint.h); config: train_config_json(t). */
static checkpoint_state_t checkpoint_state(trainer_t *t, const char *config) {
    return (checkpoint_state_t){.params = t->params, .n_params = t->n_params, .has_ema = t->ema_memory != NULL,
                                .order = &t->order, .step = t->step, .rng_counter = t->rng.counter,
                                .loss_ema = t->loss_ema, .elapsed = t->elapsed, .config = config,
                                .threads = t->cfg.threads > 0 ? t->cfg.threads : omp_get_max_threads(),
                                .max_step = t->cfg.steps, .force = t->cfg.force};
}

int trainer_checkpoint_save(trainer_t *t, const char *path) {
    char *config = train_config_json(t);
    const checkpoint_state_t cs = checkpoint_state(t, config);
    const int rc = checkpoint_save(&cs, path);
    free(config);
    return rc;
}

int trainer_checkpoint_check(trainer_t *t, const char *path) {
    char *config = train_config_json(t);
    const checkpoint_state_t cs = checkpoint_state(t, config);
    const int rc = checkpoint_check(path, &cs);
    free(config);
    return rc;
}

int trainer_checkpoint_load(trainer_t *t, const char *path) {
    char *config = train_config_json(t);
    checkpoint_state_t cs = checkpoint_state(t, config);
    const int rc = checkpoint_load(&cs, path);
    free(config);
    if (rc) return rc;
    t->step = cs.step, t->rng.counter = cs.rng_counter, t->loss_ema = cs.loss_ema, t->elapsed = cs.elapsed;
    return SD_OK;
}

/* loss.csv: kept to the rows of steps <= keep_step (a resumed run rewrites what came after its
 * checkpoint), a header when new. */
static int open_csv(trainer_t *t, int keep_step) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/loss.csv", t->cfg.out_dir);
    char *kept = NULL;
    size_t nk = 0;
    if (keep_step > 0) {
        FILE *old = fopen(path, "r");
        char line[512];
        while (old && fgets(line, sizeof line, old)) {
            size_t len = strlen(line);
            if (!len || line[len - 1] != '\n') break;   /* a torn last line */
            char *end;
            long s = strtol(line, &end, 10);
            if (end != line && *end == ',' && s > keep_step) break;
            kept = realloc(kept, nk + len);
            SD_CHECK(kept, "out of memory");
            memcpy(kept + nk, line, len), nk += len;
        }
        if (old) fclose(old);
    }
    int rc = outputs_check(path);   /* not a device or fifo, not one of the inputs */
    if (rc) {
        free(kept);
        return rc;
    }
    t->csv = fopen(path, "w");
    if (!t->csv) {
        free(kept);
        return sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    }
    int bad = nk ? fwrite(kept, 1, nk, t->csv) != nk
                 : fprintf(t->csv, "step,loss,instance_loss,prior_loss,lr,grad_norm,seconds\n") < 0;
    free(kept);
    if (bad || fflush(t->csv) != 0) return sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Set-up and run
 * ------------------------------------------------------------------------------------------- */

static int check_out_dir(const train_config_t *c) {
    char path[PATH_MAX];
    struct stat st;
    if (!stat(c->out_dir, &st) && !S_ISDIR(st.st_mode))
        return sd_error(SD_ERR_ARG, "-o %s: exists and is not a folder", c->out_dir);
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
    if (c->resume && stat(path, &st))
        return sd_error(SD_ERR_ARG, "--resume: %s does not exist", path);
    const train_mode_ops_t *mode = train_mode_ops(c->mode);
    const char *result = mode->result_file;
    snprintf(path, sizeof path, "%s/%s", c->out_dir, result);
    if (!c->resume && !c->force && !stat(path, &st))
        return sd_error(SD_ERR_ARG, "-o %s: already holds %s (use --force to overwrite, --resume to continue)",
                        c->out_dir, result);
    /* full mode (long pretraining runs): rerunning the command without --resume must not
     * silently start over and overwrite the checkpoint of an interrupted run */
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
    if (mode->refuse_restart && !c->resume && !c->force && !stat(path, &st))
        return sd_error(SD_ERR_ARG, "-o %s: holds checkpoint.safetensors of an interrupted run (use --resume to "
                        "continue it, --force to start over)", c->out_dir);
    return SD_OK;
}

/* Before anything is written: does --shift-layers name any weight ("unet/" or "te/" + tensor name)?
 * (trainer_prepare checks the exact shift arrays again.) */
static int shift_layers_match_model(const trainer_t *t) {
    const model_component_t *comp[3] = {&t->p.model.unet, &t->p.model.text_encoder, &t->p.model.text_encoder_2};
    const shift_component_t which[3] = {SHIFT_UNET, SHIFT_TE, SHIFT_TE2};
    for (int k = 0; k < (t->cfg.train_text_encoder ? (t->xl ? 3 : 2) : 1); k++)
        for (int i = 0; i < comp[k]->n_tensors; i++) {
            char name[512];
            if (train_param_name(name, sizeof name, which[k], comp[k]->tensors[i].name)) continue;
            if (shift_layer_selected(t->cfg.shift_layers, name)) return 1;
        }
    return 0;
}

/* The temp files "<name>.tmp.<pid>" of writes that a killed run left in the output folder (its
 * checkpoint, results, sample grids, a full model's components); those of live processes stay. */
static void remove_stale_temps(const char *out_dir) {
    static const char *const sub[] = {"", "/samples", "/unet", "/text_encoder", "/vae"};
    for (size_t i = 0; i < sizeof sub / sizeof *sub; i++) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s%s", out_dir, sub[i]);
        outputs_remove_stale_temps(dir);
    }
}

/* trainer_open in parts, each ending where the MPI ranks agree (dist_agree) that they all got
 * there: a rank that fails in one never leaves the others waiting in the next. Rank 0 alone takes
 * the folder lock and creates, cleans and writes the output folder; the others only read. */
static int open_inputs(trainer_t *t, const train_config_t *cfg, int *prior);
static int open_classes(trainer_t *t, int prior);
static int open_training(trainer_t *t, int prior);

int trainer_open(trainer_t *t, const train_config_t *cfg) {
    int prior = 0;
    int rc = dist_agree(open_inputs(t, cfg, &prior));
    if (!rc) rc = open_classes(t, prior);   /* collective: agrees inside */
    if (rc) return rc;
    /* rank 0 first: it computes the SVD and writes the cache that the other ranks then load (one
     * SVD per job instead of one per rank, where the ranks share the cache folder) */
    const int lead = dist_rank() == 0;
    if (lead) rc = open_training(t, prior);
    if ((rc = dist_agree(rc))) return rc;
    if (!lead) rc = open_training(t, prior);
    return dist_agree(rc);
}

static int open_inputs(trainer_t *t, const train_config_t *cfg, int *prior_out) {
    const int lead = dist_rank() == 0;
    int rc = check_out_dir(cfg);
    /* an existing folder is locked before the model loads, so that a second run fails at once */
    run_lock_t lock = {0};
    struct stat st;
    if (!rc && lead && !stat(cfg->out_dir, &st)) rc = run_lock_take(&lock, cfg->out_dir);
    if (rc) {
        memset(t, 0, sizeof *t);
        return rc;
    }
    rc = trainer_load_model(t, cfg);
    t->lock = lock;   /* trainer_close releases it */
    if (rc) return rc;
    const train_config_t *c = &t->cfg;
    int prior = c->class_dir != NULL;
    if (!c->instance_dir && !c->data_tsv && !c->n_subjects) return sd_error(SD_ERR_ARG, "--instance-dir is required");
    if (!t->mode->ema && c->ema_decay > 0) return sd_error(SD_ERR_ARG, "--ema-decay needs --mode full");
    if (t->xl && c->mode != TRAIN_MODE_SHIFTS)
        return sd_error(SD_ERR_ARG, "--mode %s: SDXL models train spectral shifts only (--mode shifts); full and LoRA "
                        "training of SDXL are not supported", t->mode->name);
    if (c->mode == TRAIN_MODE_LORA && c->lora_rank < 1)
        return sd_error(SD_ERR_ARG, "--lora-rank %d: must be at least 1", c->lora_rank);
    if (c->ema_decay < 0 || c->ema_decay >= 1) return sd_error(SD_ERR_ARG, "--ema-decay %g: must be in [0, 1)", c->ema_decay);
    if ((c->class_dir != NULL) != (c->class_prompt != NULL))
        return sd_error(SD_ERR_ARG, "prior preservation needs both --class-dir and --class-prompt");
    /* prompts first: a prompt over T tokens is an error in training, never a silent cut */
    if (c->instance_prompt && (rc = prompt_table_add(&t->prompts, t->p.tok, c->instance_prompt, "--instance-prompt")) < 0)
        return rc;
    if (prior && (rc = prompt_table_add(&t->prompts, t->p.tok, c->class_prompt, "--class-prompt")) < 0) return rc;
    if (c->caption_dropout < 0 || c->caption_dropout > 1)
        return sd_error(SD_ERR_ARG, "--caption-dropout %g: must be in [0, 1]", c->caption_dropout);
    t->empty_prompt = -1;
    if (c->caption_dropout > 0 && (rc = t->empty_prompt = prompt_table_add(&t->prompts, t->p.tok, "", "--caption-dropout")) < 0)
        return rc;
    const multi_data_t md = {c, &t->p, &t->prompts, &t->inst, &t->cls};
    if (c->n_subjects) rc = multi_scan(&t->ms, &md, &prior);   /* several subjects: cutmix.c */
    else if (c->data_tsv) rc = image_set_from_tsv(&t->inst, c->data_tsv, c->image_root, &t->prompts, t->p.tok);
    else rc = image_set_scan(&t->inst, c->instance_dir, "--instance-dir", 0, 0, c->instance_prompt, &t->prompts, t->p.tok);
    if (!rc && prior && !t->ms)
        rc = image_set_scan(&t->cls, c->class_dir, "--class-dir", 1, 1, c->class_prompt, &t->prompts, t->p.tok);
    if (rc) return rc;
    if (prior && !t->ms && t->cls.n == 0 && c->num_class_images < 1)
        return sd_error(SD_ERR_ARG, "--class-dir %s holds no images and --num-class-images is 0", c->class_dir);
    rc = model_weights_hash(&t->p.model, t->model_hash);
    if (rc) return rc;
    if (c->resume) {   /* before anything is written: a bad checkpoint leaves the folder as it was */
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
        rc = trainer_checkpoint_check(t, path);
        if (rc) return rc;
    }
    if (c->shift_layers && t->mode->spectral_options && !shift_layers_match_model(t))
        return sd_error(SD_ERR_ARG, "--shift-layers '%s' matches no weight of the model (names look like "
                        "unet/down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k, te/...q_proj.weight)",
                        c->shift_layers);
    *prior_out = prior;
    if (!lead) return SD_OK;
    if (mkdir(c->out_dir, 0777) && errno != EEXIST)
        return sd_error(SD_ERR_IO, "-o %s: cannot create the folder: %s", c->out_dir, strerror(errno));
    if ((rc = run_lock_take(&t->lock, c->out_dir))) return rc;   /* a new folder: locked now */
    remove_stale_temps(c->out_dir);
    return SD_OK;
}

/* Missing class images, generated by the base model (before it becomes the training form), split
 * over the ranks (class_images_generate). */
static int open_classes(trainer_t *t, int prior) {
    const train_config_t *c = &t->cfg;
    const multi_data_t md = {c, &t->p, &t->prompts, &t->inst, &t->cls};
    if (t->ms) return multi_classes(t->ms, &md);   /* per subject (cutmix.c) */
    if (!prior || t->cls.n >= c->num_class_images) return SD_OK;
    int rc = class_images_generate(&t->p, c->class_dir, c->class_prompt, t->cls.n, c->num_class_images, c->resolution,
                                   &(class_gen_t){(sampler_kind_t)c->class_sampler, c->class_steps, c->class_cfg, c->class_batch},
                                   c->seed ^ CLASS_SALT);
    image_set_free(&t->cls);
    if (!rc) rc = image_set_scan(&t->cls, c->class_dir, "--class-dir", 0, 0, c->class_prompt, &t->prompts, t->p.tok);
    return dist_agree(rc);
}

static int open_training(trainer_t *t, int prior) {
    const train_config_t *c = &t->cfg;
    int rc = SD_OK;
    if (!c->center_crop) {
        image_set_draw_crops(&t->inst, c->seed);
        image_set_draw_crops(&t->cls, c->seed + 1);
    }
    data_order_init(&t->order, prior && t->cls.n > t->inst.n ? t->cls.n : t->inst.n, c->seed);

    /* SDXL: tokenizer_2's ids of every prompt (the second encoder reads them when it is trained) */
    if (t->xl) {
        t->prompt_ids2 = sd_xmalloc(sizeof(int) * (size_t)t->T * (t->prompts.n ? t->prompts.n : 1));
        if ((rc = prompt_table_ids2(&t->prompts, t->p.tok2, t->prompt_ids2))) return rc;
    }
    /* a frozen text encoder: every prompt encoded once, with the base weights (SDXL: and its pooled embedding) */
    if (!c->train_text_encoder) {
        const size_t CT = (size_t)t->T * t->p.ctx_dim, P = (size_t)t->p.pooled_dim;
        t->prompt_ctx = sd_xmalloc(sizeof(float) * CT * t->prompts.n);
        if (t->xl) t->prompt_pooled = sd_xmalloc(sizeof(float) * P * t->prompts.n);
        for (int i = 0; i < t->prompts.n && !rc; i += 8) { /* in chunks: the encoder's activations grow per row */
            const int n = t->prompts.n - i < 8 ? t->prompts.n - i : 8;
            rc = pipeline_encode_prompts_cond(&t->p, (const char *const *)t->prompts.text + i, n, t->prompt_ctx + i * CT,
                                              t->prompt_pooled ? t->prompt_pooled + i * P : NULL);
        }
        if (rc) return rc;
    }
    rc = trainer_prepare(t, prior);
    if (!rc && t->ms) {
        /* the epoch order is not used (draws come from the step stream), but checkpoints store it:
         * keep it a valid permutation */
        for (int i = 0; i < t->order.n; i++) t->order.perm[i] = i;
        rc = multi_prepare(t->ms, c, &t->p.unet, t->rows, t->h, t->w, t->T, t->latent_n);
    }
    if (rc) return rc;
    if (c->resume) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
        rc = trainer_checkpoint_load(t, path);
        if (rc) return rc;
        if (dist_rank() == 0) fprintf(stderr, "resuming at step %d of %d\n", t->step, c->steps);
    }
    return dist_rank() == 0 ? open_csv(t, t->step) : SD_OK;
}

static void print_summary(trainer_t *t, int steps_run, double seconds, const train_save_t *saved) {
    const train_config_t *c = &t->cfg;
    const double rss = (double)trainer_peak_rss() / (1024.0 * 1024.0);
    fprintf(stderr, "\nsummary:\n");
    fprintf(stderr, "  steps          %d (%d this run), batch %d x %d accumulation%s, %d images + %d class images\n",
            t->step, steps_run, c->batch_size, c->grad_accum, dist_size() > 1 ? " per MPI rank" : "", t->inst.n, t->cls.n);
    if (dist_size() > 1)
        fprintf(stderr, "  MPI ranks      %d (%d samples per step)\n", dist_size(), c->batch_size * c->grad_accum * dist_size());
    fprintf(stderr, "  trained values %zu in %d arrays, %d threads\n", t->n_values, t->n_params,
            c->threads > 0 ? c->threads : omp_get_max_threads());
    fprintf(stderr, "  time           %.2f s this run (%.3f s/step), %.2f s in all\n", seconds,
            steps_run ? seconds / steps_run : 0.0, t->elapsed);
    fprintf(stderr, "  peak RSS       %.1f MiB\n", rss);
    if (t->step) fprintf(stderr, "  final loss     %.6f (average of the last steps)\n", t->loss_ema / (1.0 - pow(EMA_BETA, t->step)));
    const train_model_t m = mode_view(t);
    t->mode->summary(&m, saved);
}

/* The trained values (and their EMA) must be finite before anything is written: the loss check
 * of each step sees the parameters before the last update. */
static int check_params_finite(const trainer_t *t) {
    for (int i = 0; i < t->n_params; i++) {
        const train_param_t *p = &t->params[i];
        const size_t n = (size_t)p->n;
        if (first_nonfinite(p->value, n) < n || (p->ema && first_nonfinite(p->ema, n) < n))
            return sd_error(SD_ERR_NUMERIC, "after step %d the trained parameter '%s' is not finite: nothing written "
                            "(lower --lr)", t->step, p->name);
    }
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Data parallelism over MPI ranks (base/dist.h)
 *
 * With N ranks and --gradient-accumulation-steps A, one optimizer step is M = N x A micro-batches,
 * the micro-batches of one process run with accumulation M: every rank draws all M from the
 * shared streams in order (so the samples of a step do not depend on N), and trains the A of
 * them that are its own (micro-batch m belongs to rank m / A), skipping the image work of the
 * others (draw_only). Exact path: each rank keeps the gradient of each of its micro-batches
 * apart, all of them go to every rank (allgather: M x the trained floats, 1.3 MB per micro-batch
 * for SD 1.5's shifts), and every rank adds them in micro-batch order, g_0 + g_1 + ... + g_{M-1},
 * which is how one process accumulates them; so AdamW sees the same bits on every rank and in a
 * 1-process run with accumulation M. Larger gradients (full fine-tuning: 3.4 GB per micro-batch)
 * take the allreduce path instead: each rank accumulates its own micro-batches in place and
 * MPI_Allreduce sums the ranks: the same on every rank, equal to one process only up to rounding
 * (that process accumulates every micro-batch in place).
 * ------------------------------------------------------------------------------------------- */

#define DP_EXACT_MAX_BYTES ((size_t)1 << 30)   /* the gathered gradients of one step, per rank */

typedef struct {
    int active;               /* the steps go through dp_micro_batches (else: the one-process loop) */
    int exact;
    float *mine, *all;        /* exact path: [A][n_values] own gradients, [M][n_values] everyone's */
    double *losses, *all_losses;   /* [A][3], [M][3]: loss, instance, prior of each micro-batch */
} dp_state_t;

static void dp_free(dp_state_t *d) {
    if (d->all != d->mine) free(d->all);   /* one process: one buffer */
    free(d->mine), free(d->losses), free(d->all_losses);
    memset(d, 0, sizeof *d);
}

static void dp_init(dp_state_t *d, const trainer_t *t) {
    memset(d, 0, sizeof *d);
    const int N = dist_size(), A = t->cfg.grad_accum, M = N * A;
    /* One process with accumulation takes the exact path too, so that it adds the micro-batches
     * as N ranks do (in place, the backward would add each row's contribution into the running
     * sum: other roundings). A single micro-batch per step is the same either way. */
    d->exact = M > 1 && (size_t)M * t->n_values * sizeof(float) <= DP_EXACT_MAX_BYTES;
    d->active = N > 1 || d->exact;
    if (!d->active) return;
    if (d->exact && N == 1)   /* one process: a running sum, the same additions in the same order */
        d->mine = d->all = sd_xmalloc(sizeof(float) * (t->n_values + 1));
    else if (d->exact) {
        d->mine = sd_xmalloc(sizeof(float) * ((size_t)A * t->n_values + 1));
        d->all = sd_xmalloc(sizeof(float) * ((size_t)M * t->n_values + 1));
    }
    d->losses = sd_xcalloc((size_t)A * 3, sizeof(double));
    d->all_losses = sd_xcalloc((size_t)M * 3, sizeof(double));
}

/* The M micro-batches of one step over the ranks (see above); on return every rank holds the
 * step's gradient in the parameters' grad arrays and the losses in *sum. */
static int dp_micro_batches(trainer_t *t, dp_state_t *d, float gs, train_losses_t *sum) {
    const train_config_t *c = &t->cfg;
    const int N = dist_size(), me = dist_rank(), A = c->grad_accum, M = N * A;
    const size_t nv = t->n_values;
    int rc = SD_OK;
    for (int m = 0; m < M; m++) {
        const int mine = m / A == me, a = m - me * A;
        t->draw_only = !mine;
        if (!rc) rc = trainer_next_batch(t);
        t->draw_only = 0;
        if (rc || !mine) continue;
        train_losses_t l;
        rc = trainer_micro_step(t, t->x0, t->eps, t->ts, t->ids, t->prompt_ctx ? t->ctx : NULL, c->batch_size,
                                t->prior ? c->batch_size : 0, gs, &l);
        if (rc) continue;
        d->losses[3 * a] = l.loss, d->losses[3 * a + 1] = l.instance, d->losses[3 * a + 2] = l.prior;
        if (!d->exact) continue;   /* accumulated in place, summed over the ranks below */
        float *g = d->mine + (N > 1 ? (size_t)a * nv : 0);
        for (int i = 0; i < t->n_params; i++) {
            const train_param_t *p = &t->params[i];
            if (N > 1) memcpy(g, p->grad, sizeof(float) * (size_t)p->n);
            else if (a == 0) for (int k = 0; k < p->n; k++) g[k] = 0.0f + p->grad[k];
            else for (int k = 0; k < p->n; k++) g[k] += p->grad[k];
            memset(p->grad, 0, sizeof(float) * (size_t)p->n);
            g += p->n;
        }
    }
    if ((rc = dist_agree(rc))) return rc;   /* a rank that failed (its data, its memory) stops them all */
    rc = dist_allgather_f64(d->losses, (size_t)A * 3, d->all_losses);
    for (int m = 0; m < M && !rc; m++) {   /* as the one-process loop adds them */
        sum->loss += d->all_losses[3 * m] / M, sum->instance += d->all_losses[3 * m + 1] / M;
        sum->prior += d->all_losses[3 * m + 2] / M;
    }
    if (!rc && d->exact && N == 1) {
        const float *x = d->mine;
        for (int i = 0; i < t->n_params; i++) {
            memcpy(t->params[i].grad, x, sizeof(float) * (size_t)t->params[i].n);
            x += t->params[i].n;
        }
    } else if (!rc && d->exact) {
        rc = dist_allgather_f32(d->mine, (size_t)A * nv, d->all);
        size_t off = 0;
        for (int i = 0; i < t->n_params && !rc; i++) {
            float *g = t->params[i].grad;
            const size_t n = (size_t)t->params[i].n;
            for (size_t k = 0; k < n; k++) g[k] = 0.0f;
            for (int m = 0; m < M; m++) {
                const float *x = d->all + (size_t)m * nv + off;
                for (size_t k = 0; k < n; k++) g[k] += x[k];
            }
            off += n;
        }
    } else {
        for (int i = 0; i < t->n_params && !rc; i++) rc = dist_allreduce_sum_f32(t->params[i].grad, (size_t)t->params[i].n);
    }
    return rc;
}

/* The cancel hook said stop, before step t->step + 1: the checkpoint of the last finished step is
 * written unless the run has one of it already (checkpoints on, and a step of this run finished that
 * the periodic checkpoint did not cover), so --resume loses nothing. */
static int cancel_run(trainer_t *t, int first) {
    const train_config_t *c = &t->cfg;
    int rc = SD_OK;
    if (dist_rank() == 0 && c->checkpoint_every > 0 && t->step > first && t->step % c->checkpoint_every != 0) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
        rc = trainer_checkpoint_save(t, path);
    }
    if ((rc = dist_agree(rc))) return rc;
    return sd_error(SD_ERR_INTERRUPTED, "cancelled after step %d of %d%s", t->step, c->steps,
                    c->checkpoint_every > 0 && t->step > 0 ? " (resume continues from the checkpoint)" : "");
}

int trainer_run(trainer_t *t) {
    const train_config_t *c = &t->cfg;
    /* Test-only hook: SVDIFF_TEST_ABORT_AT_STEP=k ends the process with _exit(137) right after
     * step k (its checkpoint and CSV row written), as a kill -9 would; tests/test_train.c uses it
     * to check that --resume reproduces an uninterrupted run byte for byte. */
    const char *abort_env = getenv("SVDIFF_TEST_ABORT_AT_STEP");
    const int abort_at = abort_env ? atoi(abort_env) : -1;
    progress_t bar;
    const int first = t->step;
    if (!c->quiet && dist_rank() == 0) progress_start(&bar, "train", c->steps, "step");
    if (!c->quiet && dist_rank() == 0 && first) progress_resume(&bar, first);
    const double t0 = sd_now_s(), elapsed0 = t->elapsed;
    int rc = SD_OK;
    const int N = dist_size(), lead = dist_rank() == 0;   /* rank 0 alone writes (trainer.h) */
    const float gs = 1.0f / (float)(c->grad_accum * N);
    dp_state_t dp;
    dp_init(&dp, t);
    while (t->step < c->steps && !rc) {
        if (t->cancel && dist_agree(t->cancel(t->hook_ctx) ? SD_ERR_INTERRUPTED : SD_OK)) {
            rc = cancel_run(t, first);
            break;
        }
        train_losses_t sum = {0, 0, 0, 0};
        if (dp.active && (rc = dp_micro_batches(t, &dp, gs, &sum))) break;
        for (int a = 0; a < c->grad_accum && !rc && !dp.active; a++) {
            train_losses_t l;
            rc = trainer_next_batch(t);
            if (!rc)
                rc = trainer_micro_step(t, t->x0, t->eps, t->ts, t->ids, t->prompt_ctx ? t->ctx : NULL,
                                        c->batch_size, t->prior ? c->batch_size : 0, gs, &l);
            if (rc) break;
            sum.loss += l.loss / c->grad_accum, sum.instance += l.instance / c->grad_accum;
            sum.prior += l.prior / c->grad_accum;
        }
        if (rc) break;
        double lr;
        const double gnorm = trainer_optimizer_step(t, &lr);
        if (t->mode->after_step) {   /* full mode: the EMA of the weights */
            const train_model_t m = mode_view(t);
            t->mode->after_step(&m, t->params, t->n_params, t->step);
        }
        if (!isfinite(sum.loss) || !isfinite(gnorm)) {
            rc = sd_error(SD_ERR_NUMERIC, "step %d: the loss or gradient is not finite (loss %g, grad norm %g): "
                          "lower --lr", t->step, sum.loss, gnorm);
            break;
        }
        t->loss_ema = EMA_BETA * t->loss_ema + (1.0 - EMA_BETA) * sum.loss;
        t->elapsed = elapsed0 + (sd_now_s() - t0);
        /* a run that cannot log stops here, before this step's checkpoint: the last one stays resumable */
        if (lead && (fprintf(t->csv, "%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.3f\n", t->step, sum.loss, sum.instance, sum.prior,
                             lr, gnorm, t->elapsed) < 0 ||
                     fflush(t->csv) != 0)) {
            rc = sd_error(SD_ERR_IO, "%s/loss.csv: cannot log step %d: %s; stopped (--resume continues from the last "
                          "checkpoint)", c->out_dir, t->step, strerror(errno));
            if (N == 1) break;
        }
        if (!rc && !c->quiet && lead) {
            char extra[96];
            snprintf(extra, sizeof extra, "loss %.4f lr %.2g", t->loss_ema / (1.0 - pow(EMA_BETA, t->step)), lr);
            progress_update(&bar, t->step, extra);
        }
        if (!rc && lead && c->n_sample_prompts > 0 &&
            ((c->sample_every > 0 && t->step % c->sample_every == 0) || t->step == c->steps)) {
            swap_ema(t);   /* the grid shows the weights that will be saved */
            rc = write_samples(t);
            swap_ema(t);
        }
        if (!rc && lead && c->checkpoint_every > 0 && t->step % c->checkpoint_every == 0 && t->step < c->steps) {
            char path[PATH_MAX];
            snprintf(path, sizeof path, "%s/checkpoint.safetensors", c->out_dir);
            rc = trainer_checkpoint_save(t, path);
        }
        if (!rc && lead && t->on_step)
            t->on_step(t->hook_ctx, t->step, c->steps, (t->elapsed - elapsed0) / (double)(t->step - first));
        rc = dist_agree(rc);   /* rank 0's outputs failed: every rank stops at this step */
        if (!rc && t->step == abort_at) _exit(137);
    }
    dp_free(&dp);
    if (rc) return rc;
    if (!c->quiet && lead) progress_finish(&bar);
    if ((rc = check_params_finite(t))) return rc;
    if (!lead) return dist_agree(SD_OK);   /* rank 0 writes the results */
    FILE *csv = t->csv;
    t->csv = NULL;
    if (csv && fclose(csv) != 0)
        return dist_agree(sd_error(SD_ERR_IO, "%s/loss.csv: cannot write: %s", c->out_dir, strerror(errno)));
    train_save_t saved;
    rc = trainer_save(t, &saved);
    t->elapsed = elapsed0 + (sd_now_s() - t0);
    if (!rc) print_summary(t, t->step - first, sd_now_s() - t0, &saved);
    return dist_agree(rc);
}

void trainer_close(trainer_t *t) {
    if (t->csv) fclose(t->csv);   /* every row was flushed and checked when written */
    run_lock_release(&t->lock);
    for (int i = 0; i < t->n_params; i++) free(t->params[i].name);
    free(t->params), free(t->adam_memory), free(t->ema_memory);
    if (t->mode && t->mode->close) t->mode->close(t->mode_state);
    if (t->prepared) {
        unet_acts_free(&t->ua);
        unet_grads_free(&t->ug);
        clip_acts_free(&t->ca);
        if (t->cfg.train_text_encoder) clip_grads_free(&t->cg);
        if (t->cfg.train_text_encoder && t->xl) clip_grads_free(&t->cg2);
    }
    clip_acts_free(&t->ca2);   /* zeroed when never built */
    free(t->x0), free(t->eps), free(t->xt), free(t->target), free(t->pred), free(t->dpred);
    free(t->lat_noise), free(t->tf), free(t->ts), free(t->ids), free(t->ctx), free(t->dctx);
    free(t->ids2), free(t->pooled), free(t->dpooled), free(t->time_ids), free(t->dh1), free(t->dh2);
    free(t->prompt_ctx), free(t->prompt_pooled), free(t->prompt_ids2);
    prompt_table_free(&t->prompts);
    image_set_free(&t->inst);
    image_set_free(&t->cls);
    data_order_free(&t->order);
    multi_free(t->ms);   /* before the model: it unhooks the Unmix sites */
    if (t->opened) pipeline_close(&t->p);
    memset(t, 0, sizeof *t);
}
