/* LoRA training (lora_train.h): attaching the adapters to the training model, listing them as
 * trainer parameters, and writing the diffusers-style LoRA file. */
#include "train/lora_train.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"

#define LORA_SALT 0x4C6F524164617074ull   /* the init streams: never one of the step streams */

static float alpha_of(const train_config_t *c) { return c->lora_alpha > 0 ? c->lora_alpha : (float)c->lora_rank; }

static int attach(weight_t *w, const train_config_t *c, uint64_t index, const char *name) {
    if (w->kind != WEIGHT_DENSE || !w->data)
        return sd_error(SD_ERR_ARG, "--mode lora: %s is not a dense weight", name);
    lora_t *l = sd_xcalloc(1, sizeof *l);
    lora_alloc(l, w->rows, w->cols, c->lora_rank, alpha_of(c));
    lora_init_peft(l, (c->seed ^ LORA_SALT) * 0x9E3779B97F4A7C15ull + index);
    free(w->baked);
    w->baked = NULL;
    w->lora = l;
    w->kind = WEIGHT_LORA;
    return SD_OK;
}

/* The text encoder's adapters sit on its linears (clip_visit_modules), numbered from 2^20 on. */
typedef struct {
    const train_config_t *c;
    uint64_t index;
} te_attach_t;

static int te_attach(void *ctx, const clip_module_t *mod) {
    te_attach_t *a = ctx;
    return mod->kind == CLIP_MODULE_LINEAR ? attach(mod->w, a->c, a->index++, mod->path) : SD_OK;
}

int lora_train_attach(trainer_t *t) {
    const train_config_t *c = &t->cfg;
    if (c->lora_rank < 1) return sd_error(SD_ERR_ARG, "--lora-rank %d: must be at least 1", c->lora_rank);
    if (c->lora_alpha < 0) return sd_error(SD_ERR_ARG, "--lora-alpha %g: must be positive", c->lora_alpha);
    unet_t *u = &t->p.unet;
    int rc = SD_OK;
    for (int i = 0; i < u->n_layers && !rc; i++) rc = attach(&u->layers[i]->w, c, (uint64_t)i, u->layers[i]->name);
    if (rc || !c->train_text_encoder) return rc;
    te_attach_t a = {c, (uint64_t)(1u << 20)};
    return clip_visit_modules(&t->p.clip, NULL, te_attach, &a);
}

static void add(trainer_t *t, int count_only, int component, const char *module, weight_t *w, float *grad) {
    const int n = (int)lora_numel(w->lora);
    if (!count_only) {
        train_param_t *p = &t->params[t->n_params];
        const size_t len = strlen(module) + 8;
        p->name = sd_xmalloc(len);
        SD_CHECK(train_param_name(p->name, len, component ? SHIFT_TE : SHIFT_UNET, module) == SD_OK, "%s", module);
        SD_CHECK(grad, "no gradient for %s", p->name);
        p->value = w->lora->AB, p->grad = grad, p->n = n, p->group = 0, p->component = component;
    }
    t->n_params++;
    t->n_values += (size_t)n;
}

typedef struct {
    trainer_t *t;
    int count_only;
} te_visit_t;

static int te_add(void *ctx, const clip_module_t *mod) {
    te_visit_t *v = ctx;
    if (mod->kind == CLIP_MODULE_LINEAR && mod->w->kind == WEIGHT_LORA) add(v->t, v->count_only, 1, mod->path, mod->w, mod->dw);
    return 0;
}

void lora_train_visit(trainer_t *t, int count_only) {
    unet_t *u = &t->p.unet;
    for (int i = 0; i < u->n_layers; i++) {
        unet_layer_t *l = u->layers[i];
        if (l->w.kind == WEIGHT_LORA) add(t, count_only, 0, l->name, &l->w, t->ug.layers[l->id].dw);
    }
    if (!t->cfg.train_text_encoder) return;
    te_visit_t v = {t, count_only};
    clip_visit_modules(&t->p.clip, &t->cg, te_add, &v);
}

/* ---- the file ---- */

typedef struct {
    st_writer_t *w;
    void **bufs;
    int nb, cap;
    int fp16;
} writer_ctx_t;

static int put(writer_ctx_t *x, const char *name, const float *v, int ndim, const int64_t *shape, size_t n) {
    const void *data = v;
    if (x->fp16) {
        uint16_t *h = sd_xmalloc(2 * (n ? n : 1));
        for (size_t i = 0; i < n; i++) h[i] = st_f32_to_f16(v[i]);
        if (x->nb == x->cap) {
            x->cap = x->cap ? 2 * x->cap : 64;
            x->bufs = realloc(x->bufs, sizeof *x->bufs * (size_t)x->cap);
            SD_CHECK(x->bufs, "out of memory");
        }
        x->bufs[x->nb++] = h;
        data = h;
    }
    return st_writer_add(x->w, name, x->fp16 ? ST_F16 : ST_F32, ndim, shape, data);
}

/* Both factors of one adapter; conv kernels (4-D base tensors) as 4-D factors. */
static int put_adapter(writer_ctx_t *x, const char *prefix, const char *module, const weight_t *w,
                       const model_component_t *comp) {
    char key[512], base[512];
    snprintf(base, sizeof base, "%s.weight", module);
    const st_tensor_t *b = component_find(comp, base);
    const lora_t *l = w->lora;
    const int conv = b && b->ndim == 4;
    int64_t sa[4] = {l->rank, conv ? b->shape[1] : l->cols, conv ? b->shape[2] : 1, conv ? b->shape[3] : 1};
    int64_t sb[4] = {l->rows, l->rank, 1, 1};
    snprintf(key, sizeof key, "%s.%s.lora_A.weight", prefix, module);
    int rc = put(x, key, l->A, conv ? 4 : 2, sa, (size_t)l->rank * l->cols);
    snprintf(key, sizeof key, "%s.%s.lora_B.weight", prefix, module);
    if (!rc) rc = put(x, key, l->B, conv ? 4 : 2, sb, (size_t)l->rows * l->rank);
    return rc;
}

typedef struct {
    writer_ctx_t *x;
    const model_component_t *comp;
} te_save_t;

static int te_save(void *ctx, const clip_module_t *mod) {
    te_save_t *s = ctx;
    if (mod->kind != CLIP_MODULE_LINEAR || mod->w->kind != WEIGHT_LORA) return SD_OK;
    return put_adapter(s->x, "text_encoder", mod->path, mod->w, s->comp);
}

int lora_train_save(trainer_t *t, const char *path, long *bytes) {
    const train_config_t *c = &t->cfg;
    writer_ctx_t x = {.w = st_writer_new(), .fp16 = c->save_fp16};
    unet_t *u = &t->p.unet;
    int rc = SD_OK;
    for (int i = 0; i < u->n_layers && !rc; i++)
        if (u->layers[i]->w.kind == WEIGHT_LORA)
            rc = put_adapter(&x, "unet", u->layers[i]->name, &u->layers[i]->w, &t->p.model.unet);
    te_save_t ts = {&x, &t->p.model.text_encoder};
    if (!rc && c->train_text_encoder) rc = clip_visit_modules(&t->p.clip, NULL, te_save, &ts);
    char num[32];
    st_writer_meta(x.w, "format", "pt");
    snprintf(num, sizeof num, "%d", c->lora_rank);
    st_writer_meta(x.w, "lora_rank", num);
    snprintf(num, sizeof num, "%.9g", alpha_of(c));
    st_writer_meta(x.w, "lora_alpha", num);
    st_writer_meta(x.w, "base_model_hash", t->model_hash);
    st_writer_meta(x.w, "training_mode", "lora");
    st_writer_meta(x.w, "svdiff_version", SVDIFF_VERSION);
    if (!rc) rc = st_writer_save(x.w, path);
    st_writer_free(x.w);
    for (int i = 0; i < x.nb; i++) free(x.bufs[i]);
    free(x.bufs);
    struct stat st;
    if (bytes) *bytes = !rc && !stat(path, &st) ? (long)st.st_size : -1;
    return rc;
}
