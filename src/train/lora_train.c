/* The LoRA mode (lora_train.h, train_mode.h): attaching the adapters to the training model, listing
 * them as trained arrays, and writing the diffusers-style LoRA file. */
#include "train/lora_train.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "base/error.h"
#include "train/train_mode.h"

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

static int lora_prepare(const train_model_t *m) {
    const train_config_t *c = m->cfg;
    if (c->lora_rank < 1) return sd_error(SD_ERR_ARG, "--lora-rank %d: must be at least 1", c->lora_rank);
    if (c->lora_alpha < 0) return sd_error(SD_ERR_ARG, "--lora-alpha %g: must be positive", c->lora_alpha);
    unet_t *u = &m->p->unet;
    int rc = SD_OK;
    for (int i = 0; i < u->n_layers && !rc; i++) rc = attach(&u->layers[i]->w, c, (uint64_t)i, u->layers[i]->name);
    if (rc || !c->train_text_encoder) return rc;
    te_attach_t a = {c, (uint64_t)(1u << 20)};
    return clip_visit_modules(&m->p->clip, NULL, te_attach, &a);
}

static void add(train_param_fn fn, void *ctx, int component, const char *module, weight_t *w, float *grad) {
    SD_CHECK(grad, "no gradient for %s%s", component ? "te/" : "unet/", module);
    const train_param_spec_t s = {component, module, "", w->lora->AB, grad, (int)lora_numel(w->lora), 0, NULL};
    fn(ctx, &s);
}

typedef struct {
    train_param_fn fn;
    void *ctx;
} te_visit_t;

static int te_add(void *ctx, const clip_module_t *mod) {
    te_visit_t *v = ctx;
    if (mod->kind == CLIP_MODULE_LINEAR && mod->w->kind == WEIGHT_LORA) add(v->fn, v->ctx, 1, mod->path, mod->w, mod->dw);
    return 0;
}

/* One array [A; B] per adapter, "unet/<module>" / "te/<module>", group 0. */
static void lora_visit(const train_model_t *m, train_param_fn fn, void *ctx) {
    unet_t *u = &m->p->unet;
    for (int i = 0; i < u->n_layers; i++) {
        layer_t *l = u->layers[i];
        if (l->w.kind == WEIGHT_LORA) add(fn, ctx, 0, l->name, &l->w, m->ug->layers[l->id].dw);
    }
    if (!m->cfg->train_text_encoder) return;
    te_visit_t v = {fn, ctx};
    clip_visit_modules(&m->p->clip, m->cg, te_add, &v);
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

int lora_train_save(const train_model_t *m, const char *path, long *bytes) {
    const train_config_t *c = m->cfg;
    writer_ctx_t x = {.w = st_writer_new(), .fp16 = c->save_fp16};
    unet_t *u = &m->p->unet;
    int rc = SD_OK;
    for (int i = 0; i < u->n_layers && !rc; i++)
        if (u->layers[i]->w.kind == WEIGHT_LORA)
            rc = put_adapter(&x, "unet", u->layers[i]->name, &u->layers[i]->w, &m->p->model.unet);
    te_save_t ts = {&x, &m->p->model.text_encoder};
    if (!rc && c->train_text_encoder) rc = clip_visit_modules(&m->p->clip, NULL, te_save, &ts);
    char num[32];
    st_writer_meta(x.w, "format", "pt");
    snprintf(num, sizeof num, "%d", c->lora_rank);
    st_writer_meta(x.w, "lora_rank", num);
    snprintf(num, sizeof num, "%.9g", alpha_of(c));
    st_writer_meta(x.w, "lora_alpha", num);
    st_writer_meta(x.w, "base_model_hash", m->model_hash);
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

static int lora_save(const train_model_t *m, train_save_t *o) {
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", o->dir, LORA_FILE_NAME);
    o->bytes[1] = -1;
    return lora_train_save(m, path, &o->bytes[0]);
}

static void lora_summary(const train_model_t *m, const train_save_t *o) {
    fprintf(stderr, "  output         %s/%s (%ld bytes, rank %d)\n", o->dir, LORA_FILE_NAME, o->bytes[0], m->cfg->lora_rank);
    fprintf(stderr, "                 %s/loss.csv\n", o->dir);
}

const train_mode_ops_t TRAIN_MODE_LORA_OPS = {
    .name = "lora",
    .result_file = LORA_FILE_NAME,
    .unet_grads = UNET_GRAD_SHIFTS,   /* as for shifts: [dA; dB] */
    .clip_grads = CLIP_GRAD_SHIFTS,
    .prepare = lora_prepare,
    .visit = lora_visit,
    .save = lora_save,
    .summary = lora_summary,
};
