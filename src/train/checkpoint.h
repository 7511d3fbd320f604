/* Training checkpoints (`--checkpoint-every N`, `--resume`): one safetensors file,
 * OUT_DIR/checkpoint.safetensors, written atomically, holding everything the rest of the run
 * depends on, so that a resumed run ends with the same bytes as an uninterrupted one:
 *   tensors   param/<name>, adam_m/<name>, adam_v/<name> (F32, every trained array),
 *             ema/<name> (full mode with --ema-decay: the EMA; param/ holds the raw weights),
 *             order/perm (I32, the current epoch's order)
 *   metadata  format, step, the Philox counters of the step and epoch-order streams, the
 *             epoch position, the loss average and the elapsed time (doubles as hex floats, so
 *             they round-trip exactly), the thread count, and "config": the JSON of every
 *             setting that changes the trajectory (train_config_json). */
#ifndef SVDIFF_TRAIN_CHECKPOINT_H
#define SVDIFF_TRAIN_CHECKPOINT_H

#include "train/trainer.h"

#define CHECKPOINT_FORMAT "svdiff-train-checkpoint-1"

/* The settings that change what training computes (prompts, data counts, optimisation, seed,
 * base-model hash), as compact JSON (malloc'ed). Paths and output options are not in it. */
char *train_config_json(const trainer_t *t);

/* What a checkpoint holds besides the settings, and what it is checked against: the trainer's
 * pieces (trainer.c, trainer_checkpoint_*, fills it and copies a loaded position back). */
typedef struct {
    train_param_t *params;   /* the trained arrays with their AdamW moments (restored in place) */
    int n_params;
    int has_ema;             /* every params[i].ema is set: ema/<name> tensors */
    data_order_t *order;     /* the epoch order (restored in place) */
    int step;                /* optimizer steps done; checkpoint_load sets it and the next three */
    uint64_t rng_counter;    /* the Philox counter of the step stream */
    double loss_ema, elapsed;
    const char *config;      /* train_config_json of the run */
    int threads;             /* the run's thread count (never 0) */
    int max_step;            /* cfg.steps: a saved step beyond it is refused */
    int force;               /* --force: other settings are a warning */
} checkpoint_state_t;

int checkpoint_save(const checkpoint_state_t *s, const char *path);
/* Before anything is written: opens `path`, checks its format and that it was started with the
 * same settings (unless s->force; a different thread count is only a warning: the run
 * continues, but not bit-identically). Errors name the file and the first differing setting. */
int checkpoint_check(const char *path, const checkpoint_state_t *s);
/* Restores into a prepared trainer's state; every tensor is checked before anything is copied. */
int checkpoint_load(checkpoint_state_t *s, const char *path);

#endif
