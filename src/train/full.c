/* The full-weight mode (train_mode.h, TRAIN_MODE_FULL: `svdiff train --mode full`, `svdiff pretrain`):
 * owned fp32 master copies of every UNet (and text encoder) weight matrix behind dense weight_t
 * views, the parameter list over them with their dense gradients, the EMA of the weights, and the
 * outputs: a diffusers model folder and the weight delta W - W_base. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"
#include "base/hash64.h"
#include "io/outputs.h"
#include "train/train_mode.h"

static size_t wsize(const weight_t *w) { return (size_t)w->rows * (size_t)w->cols; }

/* Points a dense weight at its fp32 master copy at *cursor (count_only: only counts). */
static int own_weight(weight_t *w, float **cursor, size_t *total, int count_only, const char *name) {
    if (w->kind != WEIGHT_DENSE || !w->data)
        return sd_error(SD_ERR_ARG, "full training: %s is not a dense weight", name);
    const size_t n = wsize(w);
    *total += n;
    if (count_only) return SD_OK;
    st_to_f32(*cursor, w->data, w->dtype, n);
    *w = weight_dense(*cursor, ST_F32, w->rows, w->cols);
    *cursor += n;
    return SD_OK;
}

typedef struct {
    float **cursor;
    size_t *total;
    int count_only;
} masters_t;

/* The text encoder's matrices: the embeddings and the linears (clip_visit_modules). */
static int own_clip_weight(void *ctx, const clip_module_t *mod) {
    masters_t *ms = ctx;
    return mod->w ? own_weight(mod->w, ms->cursor, ms->total, ms->count_only, mod->path) : SD_OK;
}

static int masters_pass(const train_model_t *m, float **cursor, size_t *total, int count_only) {
    unet_t *u = &m->p->unet;
    int rc = SD_OK;
    for (int i = 0; i < u->n_layers && !rc; i++) rc = own_weight(&u->layers[i]->w, cursor, total, count_only, u->layers[i]->name);
    if (rc || !m->cfg->train_text_encoder) return rc;
    masters_t ms = {cursor, total, count_only};
    return clip_visit_modules(&m->p->clip, NULL, own_clip_weight, &ms);
}

/* Replaces every trained dense weight's view by an owned fp32 copy (the mode's state: one block). */
static int full_prepare(const train_model_t *m) {
    size_t total = 0;
    float *cursor = NULL;
    int rc = masters_pass(m, &cursor, &total, 1);
    if (rc) return rc;
    float *master = malloc(sizeof(float) * (total ? total : 1));
    if (!master) return sd_error(SD_ERR_NOMEM, "out of memory for %zu fp32 master weights", total);
    *m->state = master;
    cursor = master;
    total = 0;
    return masters_pass(m, &cursor, &total, 0);
}

static void add_param(train_param_fn fn, void *ctx, int component, const char *name, const char *suffix, float *value,
                      float *grad, int n) {
    SD_CHECK(value && grad, "no value or gradient for %s%s", name, suffix);
    const train_param_spec_t s = {component, name, suffix, value, grad, n, 0, NULL};
    fn(ctx, &s);
}

typedef struct {
    train_param_fn fn;
    void *ctx;
    int C;   /* hidden size: a LayerNorm's width */
} full_visit_t;

/* A text-encoder module's parameters: its matrix, then its bias; a LayerNorm's gain, then its offset. */
static int add_clip_module(void *ctx, const clip_module_t *mod) {
    full_visit_t *v = ctx;
    if (mod->kind == CLIP_MODULE_NORM) {
        add_param(v->fn, v->ctx, 1, mod->path, ".weight", mod->ln->gamma, mod->dln->dgamma, v->C);
        add_param(v->fn, v->ctx, 1, mod->path, ".bias", mod->ln->beta, mod->dln->dbeta, v->C);
        return 0;
    }
    add_param(v->fn, v->ctx, 1, mod->path, ".weight", (float *)mod->w->data, mod->dw, (int)wsize(mod->w));
    if (mod->kind == CLIP_MODULE_LINEAR) add_param(v->fn, v->ctx, 1, mod->path, ".bias", mod->bias, mod->dbias, mod->w->rows);
    return 0;
}

/* Weights, biases, norm gains and offsets under their diffusers names, with their dense gradients. */
static void full_visit(const train_model_t *m, train_param_fn fn, void *ctx) {
    unet_t *u = &m->p->unet;
    for (int i = 0; i < u->n_layers; i++) {
        layer_t *l = u->layers[i];
        const unet_layer_grads_t *g = &m->ug->layers[l->id];
        add_param(fn, ctx, 0, l->name, ".weight", (float *)l->w.data, g->dw, (int)wsize(&l->w));
        if (l->bias) add_param(fn, ctx, 0, l->name, ".bias", l->bias, g->dbias, l->out);
    }
    for (int i = 0; i < u->n_norms; i++) {
        norm_layer_t *n = u->norms[i];
        const unet_norm_grads_t *g = &m->ug->norms[n->id];
        add_param(fn, ctx, 0, n->name, ".weight", n->gamma, g->dgamma, n->C);
        add_param(fn, ctx, 0, n->name, ".bias", n->beta, g->dbeta, n->C);
    }
    if (!m->cfg->train_text_encoder) return;
    full_visit_t v = {fn, ctx, m->p->clip.cfg.hidden_size};
    clip_visit_modules(&m->p->clip, m->cg, add_clip_module, &v);
}

void ema_update(float *ema, const float *x, size_t n, float decay) {
    const float a = 1.0f - decay;
#pragma omp parallel for if (n > 65536) schedule(static)
    for (size_t i = 0; i < n; i++) ema[i] = decay * ema[i] + a * x[i];
}

float ema_decay_at(float decay, int update) {
    const float warm = (1.0f + update) / (10.0f + update);
    return warm < decay ? warm : decay;
}

/* The EMA update after an optimizer step (trainer.h, ema_decay_at). */
static void full_after_step(const train_model_t *m, train_param_t *params, int n_params, int step) {
    const float decay = ema_decay_at(m->cfg->ema_decay, step - 1);   /* step: updates done, this one included */
    for (int i = 0; i < n_params; i++)
        if (params[i].ema) ema_update(params[i].ema, params[i].value, (size_t)params[i].n, decay);
}

/* ---------------------------------------------------------------------------------------------
 * Output: the model folder and the delta
 * ------------------------------------------------------------------------------------------- */

static int cmp_param_name(const void *a, const void *b) {
    return strcmp((*(train_param_t *const *)a)->name, (*(train_param_t *const *)b)->name);
}

static const train_param_t *find_param(train_param_t **sorted, int n, const char *prefix, const char *name) {
    char key[512];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    train_param_t probe = {.name = key}, *pp = &probe;
    train_param_t **hit = bsearch(&pp, sorted, (size_t)n, sizeof *sorted, cmp_param_name);
    return hit ? *hit : NULL;
}

static int make_dir(const char *path) {
    if (mkdir(path, 0777) && errno != EEXIST) return sd_error(SD_ERR_IO, "%s: cannot create the folder: %s", path, strerror(errno));
    return SD_OK;
}

static int write_json(const char *path, const cJSON *j) {
    int rc = outputs_check(path);   /* not a device, folder or input (a model folder as -o) */
    if (rc) return rc;
    char *s = cJSON_Print(j);
    SD_CHECK(s, "out of memory");
    FILE *f = fopen(path, "w");
    if (!f || fputs(s, f) < 0 || fputc('\n', f) < 0) rc = sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    if (f && fclose(f) && !rc) rc = sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    free(s);
    return rc;
}

static int copy_file(const char *from, const char *to) {
    int rc = outputs_check(to);
    if (rc) return rc;
    FILE *in = fopen(from, "rb");
    if (!in) return sd_error(SD_ERR_IO, "%s: cannot read: %s", from, strerror(errno));
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return sd_error(SD_ERR_IO, "%s: cannot write: %s", to, strerror(errno));
    }
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) rc = sd_error(SD_ERR_IO, "%s: cannot write: %s", to, strerror(errno));
    fclose(in);
    if (fclose(out) && !rc) rc = sd_error(SD_ERR_IO, "%s: cannot write: %s", to, strerror(errno));
    return rc;
}

static void store(void *dst, const float *src, size_t n, st_dtype_t dtype) {
    if (dtype == ST_F32) memcpy(dst, src, n * sizeof(float));
    else if (dtype == ST_F16)
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = st_f32_to_f16(src[i]);
    else
        for (size_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = st_f32_to_bf16(src[i]);
}

/* One component: config.json and its weights (trained arrays from the parameters, the rest
 * converted from the base model), and its delta file when delta_path is set (carrying pair_id
 * when not NULL). */
static int save_component(const train_model_t *m, const train_save_t *o, train_param_t **sorted, const model_component_t *c, const char *dir,
                          const char *file, const char *prefix, st_dtype_t dtype, int use_ema, const char *delta_path,
                          const char *pair_id) {
    char path[PATH_MAX + 64];
    int rc = make_dir(dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!rc) rc = write_json(path, c->config);
    if (rc) return rc;
    const size_t esz = dtype == ST_F32 ? 4 : 2;
    st_writer_t *w = st_writer_new(), *dw = delta_path ? st_writer_new() : NULL;
    void **bufs = calloc((size_t)2 * c->n_tensors + 1, sizeof *bufs);
    int nb = 0, n_trained = 0;
    SD_CHECK(bufs, "out of memory");
    for (int i = 0; i < c->n_tensors && !rc; i++) {
        const st_tensor_t *x = &c->tensors[i];
        const size_t n = (size_t)x->numel;
        const train_param_t *p = find_param(sorted, o->n_params, prefix, x->name);
        float *f32 = sd_xmalloc(sizeof(float) * (n ? n : 1));
        if (p) {
            if ((size_t)p->n != n) {
                free(f32);
                rc = sd_error(SD_ERR_SHAPE, "%s: trained %d values, the base tensor has %zu", p->name, p->n, n);
                break;
            }
            memcpy(f32, use_ema && p->ema ? p->ema : p->value, n * sizeof(float));
            n_trained++;
        } else {
            rc = st_read_f32(f32, x);
        }
        void *out = sd_xmalloc(esz * (n ? n : 1));
        store(out, f32, n, dtype);
        bufs[nb++] = out;
        if (!rc) rc = st_writer_add(w, x->name, dtype, x->ndim, x->shape, out);
        if (!rc && p && dw) {   /* delta in fp32 of the saved (pre-cast) values against the base */
            float *base = sd_xmalloc(sizeof(float) * (n ? n : 1));
            rc = st_read_f32(base, x);
            for (size_t k = 0; k < n; k++) f32[k] -= base[k];
            free(base);
            bufs[nb++] = f32;
            f32 = NULL;
            if (!rc) rc = st_writer_add(dw, x->name, ST_F32, x->ndim, x->shape, bufs[nb - 1]);
        }
        free(f32);
    }
    st_writer_meta(w, "format", "pt");
    st_writer_meta(w, "svdiff_version", SVDIFF_VERSION);
    snprintf(path, sizeof path, "%s/%s", dir, file);
    if (!rc) rc = st_writer_save(w, path);
    if (!rc && dw) {
        st_writer_meta(dw, "base_model_hash", m->model_hash);
        if (pair_id) st_writer_meta(dw, ST_PAIR_ID_KEY, pair_id);
        st_writer_meta(dw, "svdiff_version", SVDIFF_VERSION);
        rc = st_writer_save(dw, delta_path);
    }
    for (int i = 0; i < nb; i++) free(bufs[i]);
    free(bufs);
    st_writer_free(w);
    if (dw) st_writer_free(dw);
    (void)n_trained;
    return rc;
}

static cJSON *pair(const char *lib, const char *cls) {
    cJSON *a = cJSON_CreateArray();
    cJSON_AddItemToArray(a, lib ? cJSON_CreateString(lib) : cJSON_CreateNull());
    cJSON_AddItemToArray(a, cls ? cJSON_CreateString(cls) : cJSON_CreateNull());
    return a;
}

/* The pair id of weight_delta.safetensors and weight_delta_te.safetensors (st_writer_save_pair's
 * role; the two files are written by two component saves): a hash of what decides both files'
 * contents, the settings (base model included), the step and every saved value, so a rerun
 * gives the same bytes and files of two runs or steps differ. */
static void delta_pair_id(const train_save_t *o, int use_ema, char id[17]) {
    const char *config = o->config_json;
    uint64_t h = fold(hash_bytes(config, strlen(config), 1), (uint64_t)o->step);
    for (int i = 0; i < o->n_params; i++) {
        const train_param_t *p = &o->params[i];
        h = fold(h, hash_bytes(p->name, strlen(p->name), 2));
        h = fold(h, hash_bytes(use_ema && p->ema ? p->ema : p->value, sizeof(float) * (size_t)p->n, 3));
    }
    snprintf(id, 17, "%016llx", (unsigned long long)h);
}

int full_save_model(const train_model_t *tm, const train_save_t *o, const char *dir, st_dtype_t dtype, int use_ema,
                    const char *delta_dir) {
    model_t *m = &tm->p->model;
    char path[PATH_MAX + 64], sub[PATH_MAX], dpath[PATH_MAX + 64];
    int rc = make_dir(dir);
    if (rc) return rc;
    train_param_t **sorted = sd_xmalloc(sizeof *sorted * (size_t)(o->n_params + 1));
    for (int i = 0; i < o->n_params; i++) sorted[i] = (train_param_t *)&o->params[i];
    qsort(sorted, (size_t)o->n_params, sizeof *sorted, cmp_param_name);

    /* model_index.json */
    const cJSON *scls = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "_class_name");
    cJSON *idx = cJSON_CreateObject();
    cJSON_AddStringToObject(idx, "_class_name", "StableDiffusionPipeline");
    cJSON_AddStringToObject(idx, "_diffusers_version", "0.21.0");
    cJSON_AddItemToObject(idx, "feature_extractor", pair(NULL, NULL));
    cJSON_AddBoolToObject(idx, "requires_safety_checker", 0);
    cJSON_AddItemToObject(idx, "safety_checker", pair(NULL, NULL));
    cJSON_AddItemToObject(idx, "scheduler", pair("diffusers", cJSON_IsString(scls) ? scls->valuestring : "DDIMScheduler"));
    cJSON_AddItemToObject(idx, "text_encoder", pair("transformers", "CLIPTextModel"));
    cJSON_AddItemToObject(idx, "tokenizer", pair("transformers", "CLIPTokenizer"));
    cJSON_AddItemToObject(idx, "unet", pair("diffusers", "UNet2DConditionModel"));
    cJSON_AddItemToObject(idx, "vae", m->vae.n_tensors ? pair("diffusers", "AutoencoderKL") : pair(NULL, NULL));
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    rc = write_json(path, idx);
    cJSON_Delete(idx);

    /* scheduler and tokenizer */
    snprintf(sub, sizeof sub, "%.*s/scheduler", PATH_MAX - 32, dir);
    if (!rc) rc = make_dir(sub);
    snprintf(path, sizeof path, "%s/scheduler_config.json", sub);
    if (!rc) rc = write_json(path, m->scheduler_config);
    const char *tdir = tm->cfg->tokenizer ? tm->cfg->tokenizer : m->tokenizer_dir;
    if (!rc && tdir) {
        static const char *const files[] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
        snprintf(sub, sizeof sub, "%.*s/tokenizer", PATH_MAX - 32, dir);
        rc = make_dir(sub);
        for (int i = 0; i < 4 && !rc; i++) {
            char from[PATH_MAX + 64];
            struct stat st;
            snprintf(from, sizeof from, "%s/%s", tdir, files[i]);
            snprintf(path, sizeof path, "%s/%s", sub, files[i]);
            if (i < 2 || !stat(from, &st)) rc = copy_file(from, path);
        }
    }

    /* the components */
    char pair_id[17];
    const int pair = delta_dir && tm->cfg->train_text_encoder;   /* two delta files: one pair id */
    if (pair) delta_pair_id(o, use_ema, pair_id);
    snprintf(sub, sizeof sub, "%.*s/unet", PATH_MAX - 32, dir);
    snprintf(dpath, sizeof dpath, "%s/weight_delta.safetensors", delta_dir ? delta_dir : "");
    if (!rc)
        rc = save_component(tm, o, sorted, &m->unet, sub, "diffusion_pytorch_model.safetensors", "unet/", dtype, use_ema,
                            delta_dir ? dpath : NULL, pair ? pair_id : NULL);
    snprintf(sub, sizeof sub, "%.*s/text_encoder", PATH_MAX - 32, dir);
    snprintf(dpath, sizeof dpath, "%s/weight_delta_te.safetensors", delta_dir ? delta_dir : "");
    if (!rc)
        rc = save_component(tm, o, sorted, &m->text_encoder, sub, "model.safetensors", "te/", dtype, use_ema,
                            pair ? dpath : NULL, pair ? pair_id : NULL);
    snprintf(sub, sizeof sub, "%.*s/vae", PATH_MAX - 32, dir);
    if (!rc && m->vae.n_tensors)
        rc = save_component(tm, o, sorted, &m->vae, sub, "diffusion_pytorch_model.safetensors", "vae/", dtype, 0, NULL, NULL);
    free(sorted);
    return rc;
}

static int full_save(const train_model_t *m, train_save_t *o) {
    const train_config_t *c = m->cfg;
    return full_save_model(m, o, o->dir, c->save_fp16 ? ST_F16 : ST_F32, 1, c->save_delta ? o->dir : NULL);
}

static void full_summary(const train_model_t *m, const train_save_t *o) {
    const train_config_t *c = m->cfg;
    fprintf(stderr, "  output         %s (diffusers model folder, %s weights%s)\n", o->dir, c->save_fp16 ? "fp16" : "fp32",
            c->ema_decay > 0 ? ", the EMA" : "");
    if (c->save_delta) fprintf(stderr, "                 %s/weight_delta%s.safetensors\n", o->dir, c->train_text_encoder ? "(_te)" : "");
    fprintf(stderr, "                 %s/loss.csv\n", o->dir);
}

const train_mode_ops_t TRAIN_MODE_FULL_OPS = {
    .name = "full",
    .result_file = "model_index.json",
    .ema = 1,
    .refuse_restart = 1,
    .unet_grads = UNET_GRAD_DENSE,   /* every dW, bias, gain */
    .clip_grads = CLIP_GRAD_DENSE,
    .prepare = full_prepare,
    .visit = full_visit,
    .after_step = full_after_step,
    .save = full_save,
    .summary = full_summary,
    .close = free,
};
