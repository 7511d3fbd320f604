/* Full-weight training (trainer.h, TRAIN_MODE_FULL: `svdiff train --mode full`, `svdiff pretrain`):
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
#include "train/checkpoint.h"
#include "train/trainer.h"

#define CLIP_LINEAR_COUNT 6

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

static clip_linear_t *clip_linear(clip_layer_t *L, int j) {
    clip_linear_t *v[CLIP_LINEAR_COUNT] = {&L->q, &L->k, &L->v, &L->o, &L->fc1, &L->fc2};
    return v[j];
}
static clip_linear_grads_t *clip_linear_grad(clip_layer_grads_t *G, int j) {
    clip_linear_grads_t *v[CLIP_LINEAR_COUNT] = {&G->q, &G->k, &G->v, &G->o, &G->fc1, &G->fc2};
    return v[j];
}
static const char *const CLIP_LINEAR_NAMES[CLIP_LINEAR_COUNT] = {
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};

static int masters_pass(trainer_t *t, float **cursor, size_t *total, int count_only) {
    unet_t *u = &t->p.unet;
    int rc = SD_OK;
    for (int i = 0; i < u->n_layers && !rc; i++) rc = own_weight(&u->layers[i]->w, cursor, total, count_only, u->layers[i]->name);
    if (rc || !t->cfg.train_text_encoder) return rc;
    clip_t *c = &t->p.clip;
    rc = own_weight(&c->token_embedding, cursor, total, count_only, "token_embedding");
    if (!rc) rc = own_weight(&c->position_embedding, cursor, total, count_only, "position_embedding");
    for (int l = 0; l < c->cfg.num_layers && !rc; l++)
        for (int j = 0; j < CLIP_LINEAR_COUNT && !rc; j++)
            rc = own_weight(&clip_linear(&c->layers[l], j)->w, cursor, total, count_only, CLIP_LINEAR_NAMES[j]);
    return rc;
}

int trainer_full_masters(trainer_t *t) {
    size_t total = 0;
    float *cursor = NULL;
    int rc = masters_pass(t, &cursor, &total, 1);
    if (rc) return rc;
    t->master = malloc(sizeof(float) * (total ? total : 1));
    if (!t->master) return sd_error(SD_ERR_NOMEM, "out of memory for %zu fp32 master weights", total);
    cursor = t->master;
    total = 0;
    return masters_pass(t, &cursor, &total, 0);
}

static void add_param(trainer_t *t, int count_only, int component, const char *name, const char *suffix, float *value,
                      float *grad, int n) {
    if (!count_only) {
        train_param_t *p = &t->params[t->n_params];
        const char *prefix = component ? "te/" : "unet/";
        size_t len = strlen(prefix) + strlen(name) + strlen(suffix) + 1;
        p->name = sd_xmalloc(len);
        snprintf(p->name, len, "%s%s%s", prefix, name, suffix);
        SD_CHECK(value && grad, "no value or gradient for %s", p->name);
        p->value = value, p->grad = grad, p->n = n, p->group = 0, p->component = component;
    }
    t->n_params++;
    t->n_values += (size_t)n;
}

void trainer_full_visit(trainer_t *t, int count_only) {
    unet_t *u = &t->p.unet;
    for (int i = 0; i < u->n_layers; i++) {
        unet_layer_t *l = u->layers[i];
        const unet_layer_grads_t *g = &t->ug.layers[l->id];
        add_param(t, count_only, 0, l->name, ".weight", (float *)l->w.data, g->dw, (int)wsize(&l->w));
        if (l->bias) add_param(t, count_only, 0, l->name, ".bias", l->bias, g->dbias, l->out);
    }
    for (int i = 0; i < u->n_norms; i++) {
        unet_norm_t *n = u->norms[i];
        const unet_norm_grads_t *g = &t->ug.norms[n->id];
        add_param(t, count_only, 0, n->name, ".weight", n->gamma, g->dgamma, n->C);
        add_param(t, count_only, 0, n->name, ".bias", n->beta, g->dbeta, n->C);
    }
    if (!t->cfg.train_text_encoder) return;
    clip_t *c = &t->p.clip;
    clip_grads_t *cg = &t->cg;
    const int C = c->cfg.hidden_size;
    add_param(t, count_only, 1, "text_model.embeddings.token_embedding", ".weight", (float *)c->token_embedding.data,
              cg->dtoken, (int)wsize(&c->token_embedding));
    add_param(t, count_only, 1, "text_model.embeddings.position_embedding", ".weight",
              (float *)c->position_embedding.data, cg->dposition, (int)wsize(&c->position_embedding));
    char name[256];
    for (int l = 0; l < c->cfg.num_layers; l++) {
        clip_layer_t *L = &c->layers[l];
        clip_layer_grads_t *G = &cg->layers[l];
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm1", l);
        add_param(t, count_only, 1, name, ".weight", L->ln1.gamma, G->ln1.dgamma, C);
        add_param(t, count_only, 1, name, ".bias", L->ln1.beta, G->ln1.dbeta, C);
        for (int j = 0; j < CLIP_LINEAR_COUNT; j++) {
            clip_linear_t *lin = clip_linear(L, j);
            clip_linear_grads_t *lg = clip_linear_grad(G, j);
            snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", l, CLIP_LINEAR_NAMES[j]);
            add_param(t, count_only, 1, name, ".weight", (float *)lin->w.data, lg->dw, (int)wsize(&lin->w));
            add_param(t, count_only, 1, name, ".bias", lin->bias, lg->dbias, lin->w.rows);
        }
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.layer_norm2", l);
        add_param(t, count_only, 1, name, ".weight", L->ln2.gamma, G->ln2.dgamma, C);
        add_param(t, count_only, 1, name, ".bias", L->ln2.beta, G->ln2.dbeta, C);
    }
    add_param(t, count_only, 1, "text_model.final_layer_norm", ".weight", c->final_ln.gamma, cg->final_ln.dgamma, C);
    add_param(t, count_only, 1, "text_model.final_layer_norm", ".bias", c->final_ln.beta, cg->final_ln.dbeta, C);
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

void trainer_ema_update(trainer_t *t) {
    const float decay = ema_decay_at(t->cfg.ema_decay, t->step - 1);   /* t->step: updates done, this one included */
    for (int i = 0; i < t->n_params; i++)
        if (t->params[i].ema) ema_update(t->params[i].ema, t->params[i].value, (size_t)t->params[i].n, decay);
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
static int save_component(trainer_t *t, train_param_t **sorted, const model_component_t *c, const char *dir,
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
        const train_param_t *p = find_param(sorted, t->n_params, prefix, x->name);
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
        st_writer_meta(dw, "base_model_hash", t->model_hash);
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
static void delta_pair_id(const trainer_t *t, int use_ema, char id[17]) {
    char *config = train_config_json(t);
    uint64_t h = fold(hash_bytes(config, strlen(config), 1), (uint64_t)t->step);
    free(config);
    for (int i = 0; i < t->n_params; i++) {
        const train_param_t *p = &t->params[i];
        h = fold(h, hash_bytes(p->name, strlen(p->name), 2));
        h = fold(h, hash_bytes(use_ema && p->ema ? p->ema : p->value, sizeof(float) * (size_t)p->n, 3));
    }
    snprintf(id, 17, "%016llx", (unsigned long long)h);
}

int trainer_save_model(trainer_t *t, const char *dir, st_dtype_t dtype, int use_ema, const char *delta_dir) {
    model_t *m = &t->p.model;
    char path[PATH_MAX + 64], sub[PATH_MAX], dpath[PATH_MAX + 64];
    int rc = make_dir(dir);
    if (rc) return rc;
    train_param_t **sorted = sd_xmalloc(sizeof *sorted * (size_t)(t->n_params + 1));
    for (int i = 0; i < t->n_params; i++) sorted[i] = &t->params[i];
    qsort(sorted, (size_t)t->n_params, sizeof *sorted, cmp_param_name);

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
    const char *tdir = t->cfg.tokenizer ? t->cfg.tokenizer : m->tokenizer_dir;
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
    const int pair = delta_dir && t->cfg.train_text_encoder;   /* two delta files: one pair id */
    if (pair) delta_pair_id(t, use_ema, pair_id);
    snprintf(sub, sizeof sub, "%.*s/unet", PATH_MAX - 32, dir);
    snprintf(dpath, sizeof dpath, "%s/weight_delta.safetensors", delta_dir ? delta_dir : "");
    if (!rc)
        rc = save_component(t, sorted, &m->unet, sub, "diffusion_pytorch_model.safetensors", "unet/", dtype, use_ema,
                            delta_dir ? dpath : NULL, pair ? pair_id : NULL);
    snprintf(sub, sizeof sub, "%.*s/text_encoder", PATH_MAX - 32, dir);
    snprintf(dpath, sizeof dpath, "%s/weight_delta_te.safetensors", delta_dir ? delta_dir : "");
    if (!rc)
        rc = save_component(t, sorted, &m->text_encoder, sub, "model.safetensors", "te/", dtype, use_ema,
                            pair ? dpath : NULL, pair ? pair_id : NULL);
    snprintf(sub, sizeof sub, "%.*s/vae", PATH_MAX - 32, dir);
    if (!rc && m->vae.n_tensors)
        rc = save_component(t, sorted, &m->vae, sub, "diffusion_pytorch_model.safetensors", "vae/", dtype, 0, NULL, NULL);
    free(sorted);
    return rc;
}
