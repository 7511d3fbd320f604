/* The training settings of `svdiff train` and `svdiff pretrain`, one table entry each (base/setting.h:
 * name, type, field of train_config_t, default, flag(s), help) plus what this file adds: the --help
 * section, the verbs that document it, pretrain's default, and when the checkpoint's config records it.
 * The one entry drives train_config_default, the CLI's parsing and --help (cli/train.c; cli/edit.c
 * for the entries edit's fine-tuning shares), and the
 * checkpoint's "config" JSON (train_settings_json; checkpoint.c compares it on --resume and names
 * the first setting that differs). Adding a setting = adding its field to train_config_t and one entry.
 *
 * The checkpoint JSON keys are the entries' names, in table order; facts of the run that are no
 * flag (the base model's hash, the image and prompt counts) are entries with `fact` set, their field
 * in train_facts_t. Entries without a checkpoint rule (CK_NO) never enter it, so old checkpoints
 * keep resuming. */
#ifndef SVDIFF_TRAIN_SETTINGS_H
#define SVDIFF_TRAIN_SETTINGS_H

#include "base/setting.h"
#include "train/trainer.h"

enum { TS_DATA, TS_SUBJECTS, TS_OPTIM, TS_OUTPUT, TS_N_SECTIONS };   /* --help sections */
enum { TS_TRAIN = 1, TS_PRETRAIN = 2, TS_EDIT = 4 };                   /* verbs that take it */
typedef enum {
    CK_NO,        /* not recorded */
    CK_ALWAYS,
    CK_NONZERO,   /* recorded when not 0 (rank, mode): older checkpoints stay valid */
    CK_FULL,      /* only in full mode */
    CK_LORA,      /* only in LoRA mode */
} train_ck_t;

/* Facts of a run recorded beside the settings (they must match on --resume too). */
typedef struct {
    const char *base_model_hash;
    int instance_images, class_images, prompts;
} train_facts_t;

typedef struct {
    setting_t s;
    int section, verbs;
    const char *def_pretrain;   /* pretrain's default, NULL: s.def */
    train_ck_t ck;
    int fact;                   /* s.offset is in train_facts_t (no flag) */
    double (*ck_value)(const train_config_t *c);   /* the number recorded, when not the field */
} train_setting_t;

extern const train_setting_t train_settings[];
extern const int n_train_settings;

/* The defaults of `svdiff train` (train_config_default, trainer.h) and of `svdiff pretrain`. */
void pretrain_config_default(train_config_t *c);
/* The --help lines of one section for a verb (TS_TRAIN / TS_PRETRAIN / TS_EDIT). */
void train_settings_help(FILE *f, int section, int verb);
/* The checkpoint's "config": every recorded entry in table order (unformatted JSON, malloc'ed). */
char *train_settings_json(const train_config_t *c, const train_facts_t *facts);

#endif
