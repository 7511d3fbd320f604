/* `svdiff train` (DreamBooth-style personalisation by spectral shifts, or with --mode full by
 * every weight) and `svdiff pretrain` (full-weight training on a captioned data set, pretrain.c):
 * parses the flags, checks them, and hands them to svdiff_train / svdiff_pretrain. The training
 * settings and their flags (named after the diffusers training scripts, whose spellings are kept as
 * aliases) are the table of train/settings.h; the shared options are cli/args.h's. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svdiff.h"

#include "base/error.h"       /* SD_CHECK */
#include "cli/args.h"
#include "cli/commands.h"
#include "train/cutmix.h"     /* CUTMIX_MAX_SUBJECTS: the most --subject */
#include "train/settings.h"   /* the settings table: the flags, their help and parsing */
#include "train/trainer.h"    /* train_config_t, the table's struct, and its defaults */

#define MAX_SAMPLE_PROMPTS 64

static const char *verb = "train";   /* "pretrain" in pretrain mode: the name in messages */

static const unsigned common = CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS | CLI_THREADS | CLI_QUIET | CLI_FORCE |
                               CLI_OUTPUT | CLI_COMPUTE;   /* --seed is a training setting (checkpointed) */

/* The help: the verb's prose, then the shared options and the settings table by section. */
static void usage(FILE *f, int pretrain) {
    const int v = pretrain ? TS_PRETRAIN : TS_TRAIN;
    if (pretrain)
        fprintf(f,
                "usage: svdiff pretrain --model INIT_DIR --data CAPTIONS.tsv [--image-root DIR] -o OUT_DIR [options]\n\n"
                "Trains every weight of a model (e.g. one made by `svdiff init`) on a captioned data set; OUT_DIR\n"
                "becomes a diffusers model folder (the EMA weights with --ema-decay), with OUT_DIR/loss.csv,\n"
                "OUT_DIR/checkpoint.safetensors (--checkpoint-every) and OUT_DIR/samples/step-N.png (--sample-every).\n"
                "Images are resized and centre-cropped, never flipped. The order of the data: a Fisher-Yates\n"
                "permutation of the rows per epoch (Philox stream of --seed), consumed --batch-size rows per\n"
                "micro-batch; noise and timesteps come from a second stream.\n\n"
                "data:\n");
    else
        fprintf(f,
                "usage: svdiff train --model PATH --instance-dir DIR --instance-prompt TEXT -o OUT_DIR [options]\n\n"
                "Trains spectral shifts (offsets of the singular values of every UNet conv / linear weight, SVDiff)\n"
                "on a few images of a subject; writes OUT_DIR/spectral_shifts.safetensors (+ _te with\n"
                "--train-text-encoder), OUT_DIR/loss.csv and, with --sample-every, OUT_DIR/samples/step-N.png.\n\n"
                "data:\n");
    cli_common_help(f, CLI_MODEL | CLI_TOKENIZER | CLI_MODEL_OPTS, NULL);
    train_settings_help(f, TS_DATA, v);
    if (!pretrain) {
        fprintf(f,
                "several subjects (Cut-Mix-Unmix; instead of --instance-dir / --class-dir):\n"
                "  --subject \"PHRASE=DIR\"     a subject: its identifier phrase and image folder, repeatable,\n"
                "                             e.g. --subject \"sks cat=cats/\" --subject \"hta monkey=monkeys/\"\n"
                "  --subject-class \"PHRASE=DIR\"  prior preservation: class phrase and folder of the subject\n"
                "                             given in the same position (e.g. \"a cat=cat-class/\"); one for\n"
                "                             every --subject or none; missing images are generated\n");
        train_settings_help(f, TS_SUBJECTS, v);
    }
    fprintf(f, "optimisation:\n");
    train_settings_help(f, TS_OPTIM, v);
    cli_common_help(f, CLI_THREADS | CLI_COMPUTE, NULL);
    fprintf(f, "output:\n");
    cli_common_help(f, CLI_OUTPUT, NULL);
    train_settings_help(f, TS_OUTPUT, v);
    fprintf(f,
            "  --sample-prompt P          a prompt of the sample grids, repeatable (also --validation-prompt)\n"
            "  --force                    overwrite existing outputs; resume with changed settings\n"
            "  --quiet                    no progress bar\n"
            "  -h, --help                 this help\n\n"
            "The loss log has columns step, loss, instance_loss, prior_loss, lr, grad_norm, seconds.\n"
            "Test-only: SVDIFF_TEST_ABORT_AT_STEP=k in the environment ends the process (exit 137, as after\n"
            "kill -9) right after step k; the tests use it to check --resume.\n");
}

enum { O_SUBJECT = 1000, O_SUBJECT_CLASS, O_SAMPLE_PROMPT };

int cmd_train(int argc, char **argv) { return train_cli(argc, argv, 0); }

static void no_progress(svdiff_stage_t stage, int step, int total, double seconds_per_step, void *user_data) {
    (void)stage, (void)step, (void)total, (void)seconds_per_step, (void)user_data;
}

/* A setting's value in c as the "name=value" svdiff_train parses back to the same value. */
static void setting_text(const setting_t *s, const train_config_t *c, char *buf, size_t cap) {
    const void *f = (const char *)c + s->offset;
    char choice[64];
    switch (s->type) {
    case SETTING_INT: snprintf(buf, cap, "%s=%d", s->name, *(const int *)f); break;
    case SETTING_FLOAT: snprintf(buf, cap, "%s=%.9g", s->name, (double)*(const float *)f); break;
    case SETTING_BOOL: snprintf(buf, cap, "%s=%d", s->name, *(const int *)f ? 1 : 0); break;
    case SETTING_U64: snprintf(buf, cap, "%s=%llu", s->name, (unsigned long long)*(const uint64_t *)f); break;
    case SETTING_ENUM:
        setting_choice(s, *(const int *)f, choice, sizeof choice);
        snprintf(buf, cap, "%s=%s", s->name, choice);
        break;
    case SETTING_STR: {
        const char *v = *(const char *const *)f;
        snprintf(buf, cap, "%s=%s", s->name, !v ? "" : !v[0] && (s->flags & SETTING_NONE_EMPTY) ? "none" : v);
        break;
    }
    }
}

/* Whether the flag of the setting `name` was given. */
static int given(const unsigned char *g, const char *name) {
    for (int i = 0; i < n_train_settings; i++)
        if (!strcmp(train_settings[i].s.name, name)) return g[i];
    return 0;
}

int train_cli(int argc, char **argv, int pretrain) {
    verb = pretrain ? "pretrain" : "train";
    train_config_t c;
    if (pretrain) pretrain_config_default(&c);
    else train_config_default(&c);
    const char *samples[MAX_SAMPLE_PROMPTS];
    int n_samples = 0;
    const char *subjects[CUTMIX_MAX_SUBJECTS], *subject_classes[CUTMIX_MAX_SUBJECTS];   /* --subject (cutmix.h) */
    int n_subjects = 0, n_subject_classes = 0;
    static const struct option opts[] = {   /* pretrain: from the third on */
        {"subject", required_argument, 0, O_SUBJECT},
        {"subject-class", required_argument, 0, O_SUBJECT_CLASS},
        {"sample-prompt", required_argument, 0, O_SAMPLE_PROMPT},
        {"validation-prompt", required_argument, 0, O_SAMPLE_PROMPT},
        {0, 0, 0, 0}};
    cli_common_t cm = {0};
    unsigned char set[256] = {0}, use[256];   /* flags given; entries of this verb */
    SD_CHECK(n_train_settings <= (int)sizeof set, "settings table longer than %zu", sizeof set);
    for (int i = 0; i < n_train_settings; i++) use[i] = !!(train_settings[i].verbs & (pretrain ? TS_PRETRAIN : TS_TRAIN));
    static cli_parser_t ps;
    cli_parser_init(&ps, verb, pretrain ? opts + 2 : opts, common, &cm);
    cli_parser_settings(&ps, &train_settings[0].s, sizeof train_settings[0], n_train_settings, &c, use, set);
    for (int o; (o = cli_getopt(&ps, argc, argv)) != -1;) {
        switch (o) {
        case O_SUBJECT:
        case O_SUBJECT_CLASS: {
            int *n = o == O_SUBJECT ? &n_subjects : &n_subject_classes;
            if (*n == CUTMIX_MAX_SUBJECTS) {
                fprintf(stderr, "svdiff %s: at most %d --subject / --subject-class\n", verb, CUTMIX_MAX_SUBJECTS);
                return 2;
            }
            (o == O_SUBJECT ? subjects : subject_classes)[(*n)++] = optarg;
            break;
        }
        case O_SAMPLE_PROMPT:
            if (n_samples == MAX_SAMPLE_PROMPTS) {
                fprintf(stderr, "svdiff %s: at most %d --sample-prompt\n", verb, MAX_SAMPLE_PROMPTS);
                return 2;
            }
            samples[n_samples++] = optarg;
            break;
        case 'h': usage(stdout, pretrain); return 0;
        case CLI_BAD: return 2;
        default: usage(stderr, pretrain); return 2;
        }
    }
    c.model = cm.model, c.tokenizer = cm.tokenizer, c.out_dir = cm.output;
    c.prediction_type = cm.mo.prediction_type, c.scheduler_config = cm.mo.scheduler_config;
    c.threads = cm.threads, c.quiet = cm.quiet, c.force = cm.force;
    const int lr_given = given(set, "lr"), lora_flag = given(set, "lora_rank") || given(set, "lora_alpha");
    const int unmix_loss_given = given(set, "unmix_share");
    if (pretrain && (!c.model || !c.data_tsv || !c.out_dir)) {
        fprintf(stderr, "svdiff pretrain: --model, --data and -o are required (see --help)\n");
        return 2;
    }
    if (!pretrain && (!c.model || (!c.instance_dir && !n_subjects) || !c.out_dir)) {
        fprintf(stderr, "svdiff train: --model, --instance-dir (or --subject) and -o are required (see --help)\n");
        return 2;
    }
    if (n_subject_classes && n_subject_classes != n_subjects) {
        fprintf(stderr, "svdiff %s: %d --subject-class for %d --subject: give one per subject, in the same order, or none\n",
                verb, n_subject_classes, n_subjects);
        return 2;
    }
    if (!n_subjects && (c.cutmix_prob >= 0 || c.cutmix_vertical || !c.cutmix_fit || c.prompt_template || c.unmix_layers ||
                        unmix_loss_given)) {
        fprintf(stderr, "svdiff %s: --prompt-template, --cutmix-* and --unmix-layers and --unmix-loss need --subject\n", verb);
        return 2;
    }
    c.n_subjects = n_subjects, c.subjects = subjects;
    c.subject_classes = n_subject_classes ? subject_classes : NULL;
    if (c.mode != TRAIN_MODE_FULL && (c.save_delta || c.ema_decay > 0)) {
        fprintf(stderr, "svdiff train: --save-delta and --ema-decay need --mode full\n");
        return 2;
    }
    if (c.shift_layers && c.mode != TRAIN_MODE_SHIFTS) {
        fprintf(stderr, "svdiff %s: --shift-layers selects spectral shifts; it needs --mode shifts\n", verb);
        return 2;
    }
    if (c.rank > 0 && c.mode == TRAIN_MODE_FULL) {
        fprintf(stderr, "svdiff %s: --rank limits spectral shifts; it does not apply to full-weight training\n", verb);
        return 2;
    }
    if (!pretrain && c.mode == TRAIN_MODE_FULL && !lr_given) c.lr = 5e-6f;   /* diffusers' DreamBooth default */
    if (lora_flag && c.mode != TRAIN_MODE_LORA) {
        fprintf(stderr, "svdiff %s: --lora-rank and --lora-alpha need --mode lora\n", verb);
        return 2;
    }
    if (c.mode == TRAIN_MODE_LORA && c.rank > 0) {
        fprintf(stderr, "svdiff %s: --rank limits spectral shifts; with --mode lora use --lora-rank\n", verb);
        return 2;
    }
    if (c.mode == TRAIN_MODE_LORA && !lr_given) c.lr = 1e-4f;   /* peft / diffusers LoRA DreamBooth */
    if (c.sample_every > 0 && !n_samples) {
        fprintf(stderr, "svdiff %s: --sample-every needs at least one --sample-prompt\n", verb);
        return 2;
    }
    if (c.warmup > c.steps) {
        fprintf(stderr, "svdiff %s: --warmup %d is longer than --steps %d\n", verb, c.warmup, c.steps);
        return 2;
    }
    /* the common settings as fields, every other flag given as a "name=value" setting */
    svdiff_train_params_t tp = pretrain ? svdiff_pretrain_default_params() : svdiff_train_default_params();
    tp.model = c.model, tp.tokenizer_dir = c.tokenizer;
    tp.prediction_type = c.prediction_type, tp.scheduler_config = c.scheduler_config;
    tp.out_dir = c.out_dir;
    tp.instance_dir = c.instance_dir, tp.instance_prompt = c.instance_prompt;
    tp.class_dir = c.class_dir, tp.class_prompt = c.class_prompt, tp.num_class_images = c.num_class_images;
    tp.mode = (svdiff_train_mode_t)c.mode;
    tp.resolution = c.resolution, tp.steps = c.steps, tp.batch_size = c.batch_size, tp.grad_accum = c.grad_accum;
    tp.lr = c.lr, tp.lr_1d = c.lr_1d, tp.seed = c.seed;
    tp.train_text_encoder = c.train_text_encoder, tp.rank = c.rank;
    tp.checkpoint_every = c.checkpoint_every, tp.resume = c.resume, tp.force = c.force, tp.save_fp16 = c.save_fp16;
    tp.svd_cache_dir = c.svd_cache_dir, tp.threads = c.threads;
    enum { MAX_SETTINGS = 256 + 2 * CUTMIX_MAX_SUBJECTS + MAX_SAMPLE_PROMPTS };
    static char texts[256][4200];
    static const char *settings[MAX_SETTINGS];
    int n = 0;
    for (int i = 0; i < n_train_settings; i++)
        if (set[i]) settings[n] = texts[n], setting_text(&train_settings[i].s, &c, texts[n], sizeof texts[0]), n++;
    static char lists[2 * CUTMIX_MAX_SUBJECTS + MAX_SAMPLE_PROMPTS][4200];
    int k = 0;
    for (int i = 0; i < n_subjects; i++, k++) snprintf(lists[k], sizeof lists[k], "subject=%s", subjects[i]), settings[n++] = lists[k];
    for (int i = 0; i < n_subject_classes; i++, k++)
        snprintf(lists[k], sizeof lists[k], "subject-class=%s", subject_classes[i]), settings[n++] = lists[k];
    for (int i = 0; i < n_samples; i++, k++) snprintf(lists[k], sizeof lists[k], "sample-prompt=%s", samples[i]), settings[n++] = lists[k];
    tp.settings = settings, tp.n_settings = n;
    /* --quiet: a progress callback that draws nothing (the API then draws no bar of its own); else
     * the trainer's bar and summary on stderr, as before. Ctrl-C ends the process as before. */
    if (c.quiet) tp.callbacks.progress = no_progress;
    const int rc = pretrain ? svdiff_pretrain(&tp) : svdiff_train(&tp);
    if (rc) fprintf(stderr, "svdiff %s: %s\n", verb, svdiff_last_error());
    return rc ? 1 : 0;
}
