/* DreamBooth-style spectral-shift training (`svdiff train`, docs/method.md section 3): the model in its
 * training form (every UNet conv / linear factored as U diag(ReLU(sigma + delta)) V^T without the
 * dense base, per-element or scalar norm-gain shifts, optionally the text encoder's linear and
 * embedding shifts), the loss with prior preservation, AdamW with two parameter groups, the LR
 * schedule, gradient clipping and accumulation, and the run loop with its outputs (shift files,
 * loss CSV, sample grids, checkpoints, summary).
 *
 * One micro-batch, in the order the RNG is consumed (one Philox stream, `rng`):
 *   items   : batch_size indices from the epoch order (its own stream); instance k % n_inst and,
 *             with prior preservation, class k % n_class
 *   flips   : with --flip, one uniform per row (< 0.5: mirrored), instance rows then class rows
 *   latents : per row, latent-size normals for the posterior sample (diffusers' latent_dist.sample())
 *   t       : per row, rng_randint(num_train_timesteps)
 *   eps     : rows x latent-size normals
 * then x_t = ddpm_add_noise, target = ddpm_target (by prediction_type), UNet on [instance rows;
 * class rows], loss = MSE(instance) + prior_loss_weight * MSE(class), backward into the shifts
 * (and through the text encoder when it is trained).
 *
 * SDXL (a second text encoder and a "text_time" UNet): the context is both encoders' penultimate
 * hidden states side by side, the UNet's added conditioning TE2's pooled embedding and per row the
 * micro-conditioning of its image (train_image_time_ids: original size, crop in the resized image,
 * target (res, res); a Cut-Mix composite is a res x res image of its own). --train-text-encoder
 * trains both encoders: the UNet's d ctx splits into the two encoders' d hidden, and its d text_embeds
 * flows into TE2 through the pooled embedding. No draw is added: the streams are those of SD 1.x. The same seed and thread count give the same
 * bytes; a resumed run continues the same streams (checkpoint.h).
 *
 * Full mode (cfg.mode = TRAIN_MODE_FULL; `svdiff train --mode full`, `svdiff pretrain`, full.c):
 * the same loop over every weight instead of the shifts: fp32 master copies owned by the trainer
 * behind dense weight views, UNET_GRAD_DENSE / CLIP_GRAD_DENSE gradients, one AdamW group at lr,
 * optionally an EMA of the weights (updated after every optimizer step, used for the sample grids
 * and saved as the model). The data are an instance folder or (cfg.data_tsv) a captioned TSV data
 * set: its training rows, in file order, are the items of the epoch order, batch_size rows per
 * micro-batch, each with its own caption. The output is OUT_DIR as a diffusers model folder.
 *
 * The modes (shifts, full, LoRA) are tables of train_mode.h (prepare, visit, after_step, save)
 * that the loop calls: mode_shifts.c, full.c, lora_train.c.
 *
 * Over MPI (`mpirun -np N svdiff train|pretrain`, base/dist.h): N ranks with --batch-size B and
 * --gradient-accumulation-steps A run the steps of one process with batch B and accumulation
 * N x A, bit for bit where the step's gradients fit the exact path (trainer.c, "Data
 * parallelism"): every rank draws all N x A micro-batches of a step from the shared streams and
 * trains its A; the micro-batch gradients are added in order on every rank; AdamW runs on every
 * rank. Rank 0 alone locks and writes the output folder (loss.csv, samples, checkpoints,
 * results); checkpoints record N x A, so they resume with any N that keeps the product. */
#ifndef SVDIFF_TRAIN_TRAINER_H
#define SVDIFF_TRAIN_TRAINER_H

#include <stdint.h>
#include <stdio.h>

#include "io/runlock.h"
#include "pipeline/pipeline.h"
#include "train/dataset.h"
#include "train/optim.h"

typedef enum { LR_CONSTANT = 0, LR_LINEAR = 1, LR_COSINE = 2 } lr_schedule_t;

/* What is trained: spectral shifts (SVDiff), or every weight (DreamBooth baseline, pretraining:
 * fp32 master copies owned by the trainer, dense gradients, a full model folder as output). */
/* TRAIN_MODE_LORA: the LoRA baseline (lora_train.h): low-rank adapters on the layers the shifts train. */
typedef enum { TRAIN_MODE_SHIFTS = 0, TRAIN_MODE_FULL = 1, TRAIN_MODE_LORA = 2 } train_mode_t;

typedef struct {
    const char *model, *tokenizer;
    const char *prediction_type, *scheduler_config;   /* model_open_options_t: NULL, the model's */
    const char *instance_dir, *instance_prompt;
    const char *class_dir, *class_prompt;     /* both or neither: prior preservation */
    int num_class_images;                     /* generate class images up to this count */
    int class_sampler;                        /* their sampler: a sampler_kind_t (dpmpp_2m) */
    int class_steps;                          /* their sampler steps (25) */
    float class_cfg;                          /* their guidance (7.5) */
    int class_batch;                          /* images denoised together (4) */
    float prior_loss_weight;                  /* 1 */
    int resolution;                           /* 0: the model's native size (trainer_load_model) */
    int center_crop, flip;
    float caption_dropout;                    /* share of rows trained on the empty prompt (the
                                                 unconditional branch that CFG samples need) */
    int batch_size, grad_accum, steps;        /* 1, 1, 500 */
    float lr, lr_1d;                          /* 1e-3 (spectral deltas), 1e-6 (norm-gain shifts) */
    lr_schedule_t lr_schedule;
    int warmup;                               /* optimizer steps */
    float beta1, beta2, adam_eps, weight_decay;   /* 0.9, 0.999, 1e-8, 1e-2 */
    float max_grad_norm;                      /* 1; <= 0: no clipping */
    int train_text_encoder;
    normshift_mode_t norm_shift;              /* element */
    int rank;                                 /* > 0: train only the shifts of the top-`rank`
                                                 singular values of every matrix (0: all) */
    const char *shift_layers;                 /* comma-separated substrings of module paths: only
                                                 shifts whose name contains one are trained (the
                                                 rest stay 0); NULL: all */
    int svd_bf16;                             /* round U, V to bf16 precision */
    int grad_checkpointing;                   /* recompute transformer insides in backward */
    uint64_t seed;
    int threads;                              /* 0: default */
    const char *out_dir;
    int save_fp16;
    int checkpoint_every, resume, force;
    int sample_every, n_sample_prompts, sample_steps;   /* sample_steps 25 */
    float sample_cfg;                         /* 7.5 */
    const char *const *sample_prompts;
    const char *svd_cache_dir;                /* NULL: the default folder; "" : no cache */
    int quiet;                                /* no progress bar (tests) */
    /* full-weight training (mode TRAIN_MODE_FULL) */
    train_mode_t mode;
    float ema_decay;                          /* > 0: EMA of the weights, saved as the output model */
    int save_delta;                           /* also write weight_delta(_te).safetensors = W - W_base */
    const char *data_tsv, *image_root;        /* pretraining: captioned data set instead of instance_dir */
    int lora_rank;                            /* mode TRAIN_MODE_LORA: adapter rank r (4) */
    float lora_alpha;                         /* its alpha (scale alpha / r); <= 0: alpha = r */
    /* several subjects with Cut-Mix-Unmix (train/cutmix.h) instead of instance_dir / class_dir */
    int n_subjects;
    const char *const *subjects;              /* [n_subjects] "PHRASE=DIR" */
    const char *const *subject_classes;       /* NULL, or [n_subjects] "CLASS PHRASE=DIR" */
    const char *prompt_template;              /* NULL: "a photo of {}" */
    float cutmix_prob;                        /* < 0: 0.6 with >= 2 subjects */
    int cutmix_vertical, cutmix_fit;          /* top / bottom halves; fit (1) or crop (0) into halves */
    float unmix_weight;                       /* Unmix loss weight (0: off) */
    const char *unmix_layers;                 /* NULL / "all", resolutions "16,8", module path patterns */
    int unmix_share;                          /* --unmix-loss share (1) instead of mse (0): models/unmix.h */
} train_config_t;

/* The defaults of every setting: the table of train/settings.c. */
void train_config_default(train_config_t *c);

/* Whether a trained array's name ("unet/<module path>", "te/<tensor name>") contains one of the
 * comma-separated substrings of `list` (--shift-layers; NULL or "": every array). */
int shift_layer_selected(const char *list, const char *name);

/* One trained array: a view of the model's shift and of its gradient, and the AdamW moments. */
typedef struct {
    char *name;     /* "unet/<module path>" or "te/<tensor name>" */
    float *value, *grad;
    float *m, *v;
    int n;
    int group;      /* 0: spectral deltas (lr), 1: norm-gain shifts (lr_1d) */
    float *ema;     /* full mode with ema_decay > 0: the EMA of value, else NULL */
    int component;  /* shift_component_t: 0 UNet ("unet/" + name), 1 text encoder ("te/"), 2 SDXL's text_encoder_2 ("te2/") */
    int frozen;     /* --shift-layers left it out: no gradient reaches it, it stays 0 */
} train_param_t;

typedef struct {
    double loss, instance, prior;
    double unmix;   /* the Unmix term (included in loss) */
} train_losses_t;

typedef struct {
    train_config_t cfg;

    /* the model */
    pipeline_t p;
    int opened;               /* p is open */
    char model_hash[17];      /* model_weights_hash of the base model */
    int h, w;                 /* latent size */
    size_t latent_n;          /* floats per latent */
    int T;                    /* context tokens (pipeline_t.n_ctx: 77 for SD) */

    /* its training form (trainer_prepare): the mode, gradients and activations */
    const struct train_mode_ops *mode;   /* of cfg.mode (train_mode.h): set by trainer_load_model */
    void *mode_state;         /* the mode's own memory (full mode: the fp32 master copies of every
                                 weight matrix behind the model's dense views); freed by its close */
    int prepared;             /* trainer_prepare ran */
    unet_acts_t ua;
    unet_grads_t ug;
    clip_acts_t ca;
    clip_grads_t cg;
    /* SDXL (xl): the second text encoder's activations and gradients (cg2 with a trained encoder) */
    int xl;
    clip_acts_t ca2;
    clip_grads_t cg2;

    /* the optimizer state: the arrays the mode's visit listed, AdamW's moments, the EMA */
    int n_params;
    train_param_t *params;
    float *adam_memory;
    size_t n_values;          /* trained floats */
    float *ema_memory;        /* full mode with EMA: one block behind every params[i].ema */

    /* the data */
    prompt_table_t prompts;
    int empty_prompt;         /* index of "" in prompts (--caption-dropout), else -1 */
    float *prompt_ctx;        /* [n_prompts, T, ctx_dim]: frozen text encoder's outputs */
    float *prompt_pooled;     /* SDXL, frozen encoders: [n_prompts, pooled_dim] */
    int *prompt_ids2;         /* SDXL: [n_prompts, T] tokenizer_2's ids */
    image_set_t inst, cls;
    int prior;                /* prior preservation on */
    data_order_t order;
    struct multisubject *ms;  /* several subjects (cfg.n_subjects > 0), train/cutmix.h */

    /* one micro-batch [rows, ...]: its inputs (trainer_next_batch) and the step's work buffers */
    int rows;                 /* UNet rows of a micro-batch */
    float *x0, *eps, *ctx, *lat_noise;
    int *ts, *ids;
    float *xt, *target, *pred, *dpred, *tf, *dctx;
    /* SDXL: the rows' tokenizer_2 ids, pooled embeddings, time ids, and the backward's d pooled and
     * the two encoders' d hidden */
    int *ids2;
    float *pooled, *time_ids, *dpooled, *dh1, *dh2;
    int draw_only;            /* next batch: consume the draws of a micro-batch another MPI rank
                                 trains, without loading, encoding or composing its images */

    /* where the run is (what a checkpoint restores besides the arrays) */
    rng_t rng;                /* the step stream */
    int step;                 /* optimizer steps done */
    double loss_ema;          /* exponential average of the loss (0.98), bias-corrected when shown */
    double elapsed;           /* seconds of training, over resumes */

    /* the run's outputs */
    FILE *csv;                /* OUT_DIR/loss.csv */
    run_lock_t lock;          /* of cfg.out_dir, held from trainer_open to trainer_close (runlock.h) */

    /* a library caller's hooks (the C API's callbacks), set between trainer_open and trainer_run;
     * NULL: none. cancel is polled before every optimizer step: non-zero stops the run with
     * SD_ERR_INTERRUPTED, after writing the checkpoint of the last finished step (when checkpoints
     * are on), so --resume continues from it. on_step follows every optimizer step. */
    int (*cancel)(void *ctx);
    void (*on_step)(void *ctx, int step, int total, double seconds_per_step);
    void *hook_ctx;
} trainer_t;

/* The whole set-up of `svdiff train`: checks every input (model, folders, images, prompts, output
 * folder, checkpoint) before writing anything, locks the output folder (a second run into it fails
 * at once) and removes the temp files that killed runs left there, generates missing class
 * images, builds the training model, and with cfg->resume restores the checkpoint. Returns 0 or SD_ERR_* (message
 * set); the trainer must be closed either way. */
int trainer_open(trainer_t *t, const train_config_t *cfg);
/* Trains from t->step to cfg.steps, then writes the shift files and prints the summary. */
int trainer_run(trainer_t *t);
void trainer_close(trainer_t *t);

/* ---- the pieces, exposed for tests ---- */

/* Opens the model (pipeline) and derives the latent shape from cfg->resolution. */
int trainer_load_model(trainer_t *t, const train_config_t *cfg);
/* Training form of the model: spectral UNet without the base (from the SVD cache when there is
 * one; layers already spectral are kept, so a test may install its own factors first), norm
 * shifts, text-encoder shifts when trained, gradients, activations, the parameter list and
 * AdamW state, work buffers for `prior` (rows = batch_size * (1 + prior)). */
int trainer_prepare(trainer_t *t, int prior);
/* Draws the next micro-batch (the order above; several subjects: cutmix.h) into the work buffers
 * x0, eps, ts, ids (and ctx with a frozen text encoder). */
int trainer_next_batch(trainer_t *t);
/* One micro-batch on given inputs (rows = n_inst + n_class): x0 [rows, latent], eps [rows,
 * latent], ts [rows] integer timesteps, ids [rows, T] token ids; ctx [rows, T, ctx_dim] the
 * frozen text encoder's output, or NULL to run the text encoder on ids (always done when it is
 * trained). SDXL also reads t->ids2 [rows, T], t->time_ids [rows, 6] and, with ctx given, the
 * pooled embeddings t->pooled [rows, pooled_dim] (trainer_next_batch fills them). Gradients are
 * ACCUMULATED, scaled by grad_scale (1 / grad_accum). */
int trainer_micro_step(trainer_t *t, const float *x0, const float *eps, const int *ts, const int *ids,
                       const float *ctx, int n_inst, int n_class, float grad_scale, train_losses_t *out);
/* Clips the gradient norm, updates every shift with AdamW at the scheduled LR, zeroes the
 * gradients and counts the step. Returns the gradient norm before clipping; *lr (may be NULL)
 * gets the LR of group 0. */
double trainer_optimizer_step(trainer_t *t, double *lr);
/* diffusers' get_scheduler multiplier at optimizer step `step` (0-based). */
double trainer_lr_factor(const train_config_t *c, int step);
/* Full mode's EMA (its after_step, full.c): after the k-th optimizer step (k from 0) every trained
 * array gets ema = d * ema + (1 - d) * value with d = ema_decay_at(cfg.ema_decay, k). The warm-up cap
 * (1 + k) / (10 + k) (diffusers' EMAModel) keeps the random initial weights out of the average:
 * with a constant 0.999 from step 0, 13% of the EMA would still be the initialisation after 2000 steps. */
float ema_decay_at(float decay, int update);
void ema_update(float *ema, const float *x, size_t n, float decay);
/* The run's checkpoint (checkpoint.h): written after a step, checked against the settings before
 * anything is written, restored into a prepared trainer (the arrays, the streams, the step). */
int trainer_checkpoint_save(trainer_t *t, const char *path);
int trainer_checkpoint_check(trainer_t *t, const char *path);
int trainer_checkpoint_load(trainer_t *t, const char *path);
/* Peak resident memory of the process (VmHWM) in bytes, 0 if unknown. */
long trainer_peak_rss(void);

#endif
