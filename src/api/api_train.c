/* svdiff_train: `svdiff train` as a call. The named fields of svdiff_train_params_t are the common
 * settings, their defaults read from the training settings table (train/settings.c); every other
 * entry of that table is reached by "name=value" strings parsed by the table's own parser, so no
 * default or range is listed twice. Images given in memory are written losslessly (PNG) into a
 * temporary folder the trainer reads like any instance or class folder (same pixels, same order),
 * removed afterwards. The cancel and progress callbacks are the trainer's hooks (trainer.h). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "api/api_internal.h"
#include "base/runtime.h"
#include "io/image.h"
#include "io/model.h"
#include "ops/gemm.h"
#include "train/cutmix.h"
#include "train/settings.h"
#include "train/trainer.h"

#define MAX_SAMPLE_PROMPTS 64

_Static_assert((int)SVDIFF_TRAIN_SHIFTS == (int)TRAIN_MODE_SHIFTS && (int)SVDIFF_TRAIN_FULL == (int)TRAIN_MODE_FULL &&
                   (int)SVDIFF_TRAIN_LORA == (int)TRAIN_MODE_LORA,
               "public training modes are the trainer's");

/* The named fields from a config of defaults (train's or pretrain's). */
static svdiff_train_params_t params_of(const train_config_t *cp) {
    const train_config_t c = *cp;
    svdiff_train_params_t p = {0};
    p.num_class_images = c.num_class_images;
    p.mode = (svdiff_train_mode_t)c.mode;
    p.resolution = c.resolution;
    p.steps = c.steps, p.batch_size = c.batch_size, p.grad_accum = c.grad_accum;
    p.lr = c.lr, p.lr_1d = c.lr_1d;
    p.seed = c.seed;
    p.train_text_encoder = c.train_text_encoder;
    p.rank = c.rank;
    p.checkpoint_every = c.checkpoint_every;
    p.save_fp16 = c.save_fp16;
    p.svd_cache_dir = c.svd_cache_dir;
    return p;
}

SVDIFF_API svdiff_train_params_t svdiff_train_default_params(void) {
    train_config_t c;
    train_config_default(&c);
    return params_of(&c);
}

SVDIFF_API svdiff_train_params_t svdiff_pretrain_default_params(void) {
    train_config_t c;
    pretrain_config_default(&c);
    return params_of(&c);
}

/* The table entry named `name` (its checkpoint key "lr_schedule", its flag "lr-schedule" or an alias). */
static const train_setting_t *find_setting(const char *name, size_t len) {
    for (int i = 0; i < n_train_settings; i++) {
        const setting_t *s = &train_settings[i].s;
        if (train_settings[i].fact) continue;
        if ((strlen(s->name) == len && !strncmp(s->name, name, len)) ||
            (s->flag && strlen(s->flag) == len && !strncmp(s->flag, name, len)))
            return &train_settings[i];
        for (const char *a = s->aliases; a && *a;) {   /* space-separated */
            const size_t n = strcspn(a, " ");
            if (n == len && !strncmp(a, name, len)) return &train_settings[i];
            a += n + (a[n] == ' ');
        }
    }
    return NULL;
}

typedef struct {
    const char *subjects[CUTMIX_MAX_SUBJECTS], *subject_classes[CUTMIX_MAX_SUBJECTS];
    const char *samples[MAX_SAMPLE_PROMPTS];
    int n_subjects, n_subject_classes, n_samples;
    int lr_given;
} extra_t;

/* One "name=value" (or "name" for a switch) into the config; the verb-only options of `svdiff train`
 * that are no table entry (subject, subject-class, sample-prompt) into x. */
static int apply_setting(train_config_t *c, extra_t *x, const char *arg, int pretrain) {
    const char *eq = strchr(arg, '=');
    const size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    const char *val = eq ? eq + 1 : NULL;
    const char *lists[3] = {"subject", "subject-class", "sample-prompt"};
    for (int k = pretrain ? 2 : 0; k < 3; k++)   /* pretrain: sample-prompt only */
        if (strlen(lists[k]) == len && !strncmp(arg, lists[k], len)) {
            if (!val) return sd_error(SD_ERR_ARG, "svdiff_train: setting '%s' needs a value (%s=...)", arg, lists[k]);
            int *n = k == 0 ? &x->n_subjects : k == 1 ? &x->n_subject_classes : &x->n_samples;
            const int cap = k < 2 ? CUTMIX_MAX_SUBJECTS : MAX_SAMPLE_PROMPTS;
            if (*n == cap) return sd_error(SD_ERR_ARG, "svdiff_train: at most %d %s settings", cap, lists[k]);
            (k == 0 ? x->subjects : k == 1 ? x->subject_classes : x->samples)[(*n)++] = val;
            return SD_OK;
        }
    const train_setting_t *e = find_setting(arg, len);
    if (!e || (pretrain && !(e->verbs & TS_PRETRAIN)))
        return sd_error(SD_ERR_ARG, "%s: unknown setting '%.*s' (the flags of `svdiff %s --help`)",
                        pretrain ? "svdiff_pretrain" : "svdiff_train", (int)len, arg, pretrain ? "pretrain" : "train");
    if (!strcmp(e->s.name, "lr")) x->lr_given = 1;
    if (e->s.type == SETTING_BOOL) {
        if (!val || !strcmp(val, "1") || !strcmp(val, "true")) return setting_parse(&e->s, c, NULL, 0);
        if (!strcmp(val, "0") || !strcmp(val, "false")) return setting_parse(&e->s, c, NULL, 1);
        return sd_error(SD_ERR_ARG, "svdiff_train: setting '%s' is a switch: give %.*s, %.*s=1 or %.*s=0", arg, (int)len,
                        arg, (int)len, arg, (int)len, arg);
    }
    if (!val) return sd_error(SD_ERR_ARG, "svdiff_train: setting '%s' needs a value (%s=...)", arg, arg);
    return setting_parse(&e->s, c, val, 0);
}

/* Writes n images as DIR/000000.png ... into a new temporary folder (*dir). */
static int images_to_dir(const svdiff_image_t *imgs, int n, const char *what, char *dir, size_t cap) {
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, cap, "%s/svdiff-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", what);
    if (!mkdtemp(dir)) return sd_error(SD_ERR_IO, "%s: cannot make a temporary folder for the %s images: %s", dir, what, strerror(errno));
    int rc = SD_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (!imgs[i].rgb || imgs[i].width < 1 || imgs[i].height < 1 ||
            (long)imgs[i].width * imgs[i].height > IMAGE_MAX_PIXELS) {
            rc = sd_error(SD_ERR_ARG, "svdiff_train: %s image %d has no pixels or a bad size (%dx%d)", what, i, imgs[i].width,
                          imgs[i].height);
            break;
        }
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%06d.png", dir, i);
        const image_t img = {.w = imgs[i].width, .h = imgs[i].height, .rgb = imgs[i].rgb};
        rc = image_save_png(&img, path, NULL, NULL, 0);
    }
    return rc;
}

/* Removes a folder images_to_dir made (its files are all ours; class images generated into it too). */
static void remove_dir(const char *dir) {
    if (!dir[0]) return;
    DIR *d = opendir(dir);
    if (d) {
        for (struct dirent *e; (e = readdir(d));) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char path[PATH_MAX + 256];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

typedef struct {
    const svdiff_callbacks_t *cb;
} hook_t;

static int hook_cancel(void *ctx) {
    const hook_t *h = ctx;
    return h->cb->cancel(h->cb->user_data) != 0;
}

static void hook_step(void *ctx, int step, int total, double sec) {
    const hook_t *h = ctx;
    if (h->cb->progress) h->cb->progress(SVDIFF_STAGE_TRAIN, step, total, sec, h->cb->user_data);
}

/* The combination checks of `svdiff train`, and the mode-dependent learning-rate defaults. */
static int check_config(train_config_t *c, const extra_t *x, int pretrain) {
    if (pretrain && (!c->model || !c->data_tsv || !c->out_dir))
        return sd_error(SD_ERR_ARG, "svdiff_pretrain: model, a data setting (data=CAPTIONS.tsv) and out_dir are required");
    if (!pretrain && (!c->model || (!c->instance_dir && !x->n_subjects && !c->data_tsv) || !c->out_dir))
        return sd_error(SD_ERR_ARG, "svdiff_train: model, instance images (instance_dir, instance_images, subject "
                        "settings or a data setting) and out_dir are required");
    if (x->n_subject_classes && x->n_subject_classes != x->n_subjects)
        return sd_error(SD_ERR_ARG, "svdiff_train: %d subject-class for %d subject: give one per subject, in the same "
                        "order, or none", x->n_subject_classes, x->n_subjects);
    if (!x->n_subjects && (c->cutmix_prob >= 0 || c->cutmix_vertical || !c->cutmix_fit || c->prompt_template || c->unmix_layers))
        return sd_error(SD_ERR_ARG, "svdiff_train: prompt-template, cutmix-* and unmix-layers need subject settings");
    if (c->mode != TRAIN_MODE_FULL && (c->save_delta || c->ema_decay > 0))
        return sd_error(SD_ERR_ARG, "svdiff_train: save-delta and ema-decay need mode full");
    if (c->shift_layers && c->mode != TRAIN_MODE_SHIFTS)
        return sd_error(SD_ERR_ARG, "svdiff_train: shift-layers selects spectral shifts; it needs mode shifts");
    if (c->rank > 0 && c->mode != TRAIN_MODE_SHIFTS)
        return sd_error(SD_ERR_ARG, "svdiff_train: rank limits spectral shifts; it needs mode shifts (lora: lora-rank)");
    if (c->sample_every > 0 && !x->n_samples)
        return sd_error(SD_ERR_ARG, "svdiff_train: sample-every needs at least one sample-prompt setting");
    if (c->warmup > c->steps) return sd_error(SD_ERR_ARG, "svdiff_train: warmup %d is longer than steps %d", c->warmup, c->steps);
    if (!pretrain && !x->lr_given && c->mode == TRAIN_MODE_FULL) c->lr = 5e-6f;   /* diffusers' DreamBooth default */
    if (!x->lr_given && c->mode == TRAIN_MODE_LORA) c->lr = 1e-4f;   /* peft / diffusers LoRA DreamBooth */
    return SD_OK;
}

/* The named fields into the config, through the table's parser where a range applies, so a value
 * out of range fails with the message the CLI gives for its flag. */
static int set_named(train_config_t *c, const svdiff_train_params_t *p, extra_t *x) {
    const train_config_t def = *c;
    c->model = p->model, c->tokenizer = p->tokenizer_dir;
    c->prediction_type = p->prediction_type, c->scheduler_config = p->scheduler_config;
    c->out_dir = p->out_dir;
    c->instance_dir = p->instance_dir, c->instance_prompt = p->instance_prompt;
    c->class_dir = p->class_dir, c->class_prompt = p->class_prompt;
    c->svd_cache_dir = p->svd_cache_dir;
    c->threads = p->threads, c->force = p->force, c->resume = p->resume;
    c->train_text_encoder = p->train_text_encoder != 0, c->save_fp16 = p->save_fp16 != 0;
    if ((unsigned)p->mode > SVDIFF_TRAIN_LORA) return sd_error(SD_ERR_ARG, "svdiff_train: unknown mode %d", (int)p->mode);
    c->mode = (train_mode_t)p->mode;
    if (p->lr != def.lr) x->lr_given = 1;
    struct { const char *name; double v; } nums[] = {
        {"num_class_images", p->num_class_images}, {"resolution", p->resolution}, {"steps", p->steps},
        {"batch_size", p->batch_size}, {"grad_accum", p->grad_accum}, {"lr", p->lr}, {"lr_1d", p->lr_1d},
        {"rank", p->rank}, {"checkpoint_every", p->checkpoint_every}};
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        const train_setting_t *e = find_setting(nums[i].name, strlen(nums[i].name));
        SD_CHECK(e, "no setting %s", nums[i].name);
        char buf[64];
        snprintf(buf, sizeof buf, e->s.type == SETTING_FLOAT ? "%.9g" : "%.0f", nums[i].v);
        const void *field = (const char *)&def + e->s.offset;
        const double was = e->s.type == SETTING_FLOAT ? (double)*(const float *)field : (double)*(const int *)field;
        if (nums[i].v == was) continue;   /* the default (resolution 0 = native is no flag value) */
        int rc = setting_parse(&e->s, c, buf, 0);
        if (rc) return sd_error_wrap(rc, "svdiff_train: %s", nums[i].name);
    }
    c->seed = p->seed;
    return SD_OK;
}

/* ---- memory: refused up front when the estimate exceeds the machine ---- */

/* The machine's RAM in bytes (SVDIFF_TEST_RAM_BYTES replaces it in tests), 0 when unknown. */
static double machine_ram(void) {
    const char *env = getenv("SVDIFF_TEST_RAM_BYTES");
    if (env && *env) return strtod(env, NULL);
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (double)pages * (double)page : 0;
}

/* With --train-text-encoder the encoders' matrices are factored too (fp32: the embeddings read rows
 * of U) and their shifts trained: the bytes of U, S, V^T and the AdamW state of every 2-D tensor of
 * the text encoders, less the stored matrices that the factors replace (the estimate counts them
 * as weights). svdiff_model_describe's model counts the UNet's only. */
static double text_encoder_factor_bytes(const train_config_t *c) {
    model_t m;
    const model_open_options_t mo = {.tokenizer_dir = c->tokenizer, .prediction_type = c->prediction_type,
                                     .scheduler_config = c->scheduler_config};
    if (model_open(&m, c->model, &mo)) {
        sd_clear_error();
        return 0;
    }
    double b = 0;
    const model_component_t *comps[2] = {&m.text_encoder, &m.text_encoder_2};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < comps[k]->n_tensors; i++) {
            const st_tensor_t *t = &comps[k]->tensors[i];
            if (t->ndim != 2) continue;
            const double rows = (double)t->shape[0], cols = (double)t->shape[1], r = rows < cols ? rows : cols;
            b += 4.0 * (rows * r + r + r * cols) + 16.0 * r - (double)t->nbytes;
        }
    model_close(&m);
    return b;
}

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* The memory model of `svdiff info --resolution` (src/api/api_describe.c: a lower bound) for this
 * run: the weights the training form keeps, the SVD factors in the compute dtype's storage (bf16 U
 * and V^T with --compute-dtype bf16; the text encoders' in fp32 when they train), the optimizer, and
 * per UNet row (batch x (1 + prior)) the activations, checkpointed or not. A run whose estimate exceeds the machine's RAM would swap or
 * be killed hours in: it is refused before anything is loaded, with the estimate and the flags that
 * bring it within the RAM. Only shift mode has this model; other modes are not checked. */
static int check_memory(const train_config_t *c) {
    if (c->mode != TRAIN_MODE_SHIFTS || !c->model) return SD_OK;
    const double ram = machine_ram();
    if (ram <= 0) return SD_OK;
    svdiff_model_params_t mp = svdiff_model_default_params();
    mp.tokenizer_dir = c->tokenizer, mp.prediction_type = c->prediction_type, mp.scheduler_config = c->scheduler_config;
    char *json = NULL;
    if (svdiff_model_describe_at(c->model, &mp, c->resolution, &json)) {   /* the trainer reports what is wrong */
        sd_clear_error();
        return SD_OK;
    }
    cJSON *root = cJSON_Parse(json);
    svdiff_free(json);
    const cJSON *mem = cJSON_GetObjectItem(root, "memory"), *t = cJSON_GetObjectItem(mem, "train");
    int rc = SD_OK;
    if (t) {
        const int res = (int)num(mem, "resolution");
        const double rows = (double)c->batch_size * (c->class_dir || c->subject_classes ? 2 : 1);
        const double fixed = num(t, "weights") + num(t, "optimizer") + num(t, "vae_activations") +
                             (c->train_text_encoder ? text_encoder_factor_bytes(c) : 0);
        const double per_row_text = num(t, "text_activations");
        /* [bf16][checkpointed] */
        double est[2][2];
        for (int b = 0; b < 2; b++)
            for (int k = 0; k < 2; k++)
                est[b][k] = fixed + num(t, b ? "factors_bf16" : "factors_fp32") +
                            rows * (per_row_text + num(t, k ? "unet_activations_checkpointed" : "unet_activations"));
        const int bf16 = sd_compute_dtype() == SD_COMPUTE_BF16, ck = c->grad_checkpointing != 0;
        const double GB = 1e9;
        if (est[bf16][ck] > ram) {
            const char *flags = NULL;
            double fits = 0;
            if (!ck && est[bf16][1] <= ram) flags = "--gradient-checkpointing", fits = est[bf16][1];
            else if (!bf16 && est[1][ck] <= ram) flags = "--compute-dtype bf16", fits = est[1][ck];
            else if (est[1][1] <= ram) flags = "--compute-dtype bf16 --gradient-checkpointing", fits = est[1][1];
            if (flags)
                rc = sd_error(SD_ERR_NOMEM, "training at %d px needs about %.1f GB (%s SVD factors, %s; the estimate of "
                              "`svdiff info --resolution %d`), more than this machine's %.1f GB of RAM: add %s "
                              "(about %.1f GB)", res, est[bf16][ck] / GB, bf16 ? "bf16" : "fp32",
                              ck ? "checkpointed activations" : "no gradient checkpointing", res, ram / GB, flags,
                              fits / GB);
            else
                rc = sd_error(SD_ERR_NOMEM, "training at %d px needs about %.1f GB, more than this machine's %.1f GB of "
                              "RAM even with --compute-dtype bf16 --gradient-checkpointing (about %.1f GB): lower "
                              "--resolution or --batch-size", res, est[bf16][ck] / GB, ram / GB, est[1][1] / GB);
        }
    }
    cJSON_Delete(root);
    return rc;
}

/* svdiff_train and svdiff_pretrain: the same run over train's or pretrain's defaults and checks */
static int run_training(const svdiff_train_params_t *p, int pretrain) {
    const char *fn = pretrain ? "svdiff_pretrain" : "svdiff_train";
    int rc = API_NEED(p, fn);
    if (rc) return rc;
    train_config_t c;
    if (pretrain) pretrain_config_default(&c);
    else train_config_default(&c);
    extra_t x = {0};
    rc = set_named(&c, p, &x);
    if (!rc && pretrain && (p->instance_dir || p->n_instance_images || p->class_dir || p->n_class_images))
        rc = sd_error(SD_ERR_ARG, "svdiff_pretrain: the data set is the data setting; instance and class images are "
                      "svdiff_train's");
    for (int i = 0; i < p->n_settings && !rc; i++)
        rc = p->settings && p->settings[i] ? apply_setting(&c, &x, p->settings[i], pretrain)
                                           : sd_error(SD_ERR_ARG, "%s: settings[%d] is NULL", fn, i);
    if (!rc && p->n_instance_images < 0) rc = sd_error(SD_ERR_ARG, "svdiff_train: n_instance_images < 0");
    if (!rc && p->n_instance_images > 0 && p->instance_dir)
        rc = sd_error(SD_ERR_ARG, "svdiff_train: give instance_dir or instance_images, not both");
    if (!rc && p->n_class_images > 0 && p->class_dir)
        rc = sd_error(SD_ERR_ARG, "svdiff_train: give class_dir or class_images, not both");
    if (!rc && ((p->n_instance_images > 0 && !p->instance_images) || (p->n_class_images > 0 && !p->class_images)))
        rc = sd_error(SD_ERR_ARG, "svdiff_train: instance_images or class_images is NULL with a count > 0");
    char inst_dir[PATH_MAX] = "", cls_dir[PATH_MAX] = "";
    if (!rc && p->n_instance_images > 0) {
        rc = images_to_dir(p->instance_images, p->n_instance_images, "instance", inst_dir, sizeof inst_dir);
        c.instance_dir = inst_dir;
    }
    if (!rc && p->n_class_images > 0) {
        rc = images_to_dir(p->class_images, p->n_class_images, "class", cls_dir, sizeof cls_dir);
        c.class_dir = cls_dir;
        if (c.num_class_images < p->n_class_images) c.num_class_images = p->n_class_images;
    }
    if (!rc) rc = check_config(&c, &x, pretrain);
    if (!rc) {
        c.n_subjects = x.n_subjects, c.subjects = x.subjects;
        c.subject_classes = x.n_subject_classes ? x.subject_classes : NULL;
        c.sample_prompts = x.samples, c.n_sample_prompts = x.n_samples;
        c.quiet = p->callbacks.progress != NULL;   /* the caller shows progress: no bar on stderr */
        if (c.threads > 0) sd_set_threads(c.threads);
        trainer_t t;
        rc = pretrain ? SD_OK : check_memory(&c);
        if (!rc) rc = trainer_open(&t, &c);
        else memset(&t, 0, sizeof t);
        hook_t h = {.cb = &p->callbacks};
        t.cancel = p->callbacks.cancel ? hook_cancel : NULL;
        t.on_step = hook_step;
        t.hook_ctx = &h;
        if (!rc) rc = trainer_run(&t);
        trainer_close(&t);
    }
    remove_dir(inst_dir);
    remove_dir(cls_dir);
    return rc;
}

SVDIFF_API int svdiff_train(const svdiff_train_params_t *p) { return run_training(p, 0); }

SVDIFF_API int svdiff_pretrain(const svdiff_train_params_t *p) { return run_training(p, 1); }
