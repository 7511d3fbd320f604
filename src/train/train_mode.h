/* Training modes (trainer.h, `svdiff train --mode shifts|full|lora`, `svdiff pretrain`): the one
 * interface through which the trainer's loop (trainer.c) works on what it trains. The loop, the
 * loss, AdamW, clipping, accumulation, checkpoints and sample grids are the same for every mode; a
 * mode is the table of what differs:
 *   prepare    : turns the opened model into its training form and says which gradients it needs
 *                (shifts: spectral factors without the base plus norm-gain shifts, mode_shifts.c;
 *                full: owned fp32 master copies of every weight, full.c; LoRA: adapters, lora_train.c)
 *   visit      : lists the trained arrays (component, name, value, gradient, size, optimizer group)
 *                in a fixed order: the order of the optimizer, the gradient norm, the checkpoint
 *   after_step : runs after every optimizer step (full mode: the EMA of the weights), or NULL
 *   save       : writes the mode's output files into OUT_DIR; summary prints their lines of the
 *                run's summary
 *   close      : frees what prepare allocated (the mode's state)
 * A mode sees the model and the run through train_model_t and train_save_t, never the trainer. */
#ifndef SVDIFF_TRAIN_TRAIN_MODE_H
#define SVDIFF_TRAIN_TRAIN_MODE_H

#include "shifts/shifts.h"
#include "train/trainer.h"
#include "weights/shift_name.h"

/* What a mode works on: pieces of the trainer (trainer.c builds it for each call). */
typedef struct {
    const train_config_t *cfg;
    pipeline_t *p;            /* the model: in its training form after prepare */
    unet_grads_t *ug;         /* gradients: allocated after prepare, filled by every micro-batch */
    clip_grads_t *cg;         /* allocated with cfg->train_text_encoder */
    const char *model_hash;   /* 16 hex digits of the base model's weights ("" where not computed) */
    void **state;             /* the mode's own memory (full mode: the master weights); prepare sets it */
    clip_grads_t *cg2;        /* SDXL's text_encoder_2, allocated with cfg->train_text_encoder */
} train_model_t;

/* One trained array as a mode lists it. The trainer names it by weights/shift_name.h's rule: a
 * shift (`shift` set) by shift_key(SHIFT_KEY_TRAINER), with the group its kind gives; any other
 * array "unet/" (component 0) or "te/" (component 1) + name + suffix. The trainer owns nothing
 * of it: value and grad point into the model. */
typedef struct {
    int component;
    const char *name, *suffix;
    float *value, *grad;
    int n;
    int group;                  /* 0: cfg.lr; 1: cfg.lr_1d (norm-gain shifts); unused with `shift` */
    const shift_name_t *shift;  /* shift mode: the shift's name; NULL for weights and adapters */
} train_param_spec_t;
typedef void (*train_param_fn)(void *ctx, const train_param_spec_t *s);

/* What save writes from and reports back. */
typedef struct {
    const char *dir;                      /* OUT_DIR */
    int step;                             /* optimizer steps done */
    const train_param_t *params;          /* the visited arrays, in visit order, with their EMA */
    int n_params;
    const char *config_json;              /* the run's settings (train_config_json): full mode's delta pair id */
    void (*put_meta)(void *ctx, shift_set_t *s);   /* shift mode: the run's metadata of a shift file */
    void *meta_ctx;
    long bytes[3];                        /* out: sizes of the UNet (or only) file, the text encoder's and
                                             SDXL's text_encoder_2's; -1: none */
} train_save_t;

typedef struct train_mode_ops {
    const char *name;          /* "shifts", "full", "lora" */
    const char *result_file;   /* in OUT_DIR: its presence means a finished run (-o checks) */
    int spectral_options;      /* --rank and --shift-layers apply to its arrays (spectral shifts) */
    int ema;                   /* its arrays may have an EMA (--ema-decay) */
    int refuse_restart;        /* -o holding a checkpoint needs --resume or --force (long pretraining runs) */
    unsigned unet_grads;       /* unet_grads_alloc's `what` (UNET_GRAD_SHIFTS / UNET_GRAD_DENSE) */
    unsigned clip_grads;       /* clip_grads_alloc's, with cfg.train_text_encoder */
    int (*prepare)(const train_model_t *m);
    void (*visit)(const train_model_t *m, train_param_fn fn, void *ctx);
    void (*after_step)(const train_model_t *m, train_param_t *params, int n_params, int step);
    int (*save)(const train_model_t *m, train_save_t *s);
    void (*summary)(const train_model_t *m, const train_save_t *s);
    void (*close)(void *state);
} train_mode_ops_t;

extern const train_mode_ops_t TRAIN_MODE_SHIFTS_OPS, TRAIN_MODE_FULL_OPS, TRAIN_MODE_LORA_OPS;
/* The table of cfg.mode. */
const train_mode_ops_t *train_mode_ops(train_mode_t mode);

/* Full mode's output: a diffusers model folder at `dir` (model_index.json, unet/, text_encoder/,
 * vae/, scheduler/, tokenizer/) with the trained arrays of `o` (their EMA when use_ema and there is
 * one) in `dtype` (ST_F32 / ST_F16 / ST_BF16); untrained tensors are copied from the base model.
 * With delta_dir, also delta_dir/weight_delta.safetensors (UNet) and weight_delta_te.safetensors
 * (text encoder, when trained): F32 W_saved - W_base of every trained tensor, keyed by its
 * diffusers name in its original shape. */
int full_save_model(const train_model_t *m, const train_save_t *o, const char *dir, st_dtype_t dtype, int use_ema,
                    const char *delta_dir);

#endif
