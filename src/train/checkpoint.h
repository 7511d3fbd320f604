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

int checkpoint_save(const trainer_t *t, const char *path);
/* Before anything is written: opens `path`, checks its format and that it was started with the
 * same settings (unless t->cfg.force; a different thread count is only a warning: the run
 * continues, but not bit-identically). Errors name the file and the first differing setting. */
int checkpoint_check(const char *path, const trainer_t *t);
/* Restores a prepared trainer; every tensor is checked before anything is copied. */
int checkpoint_load(trainer_t *t, const char *path);

#endif
