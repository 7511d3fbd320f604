/* The spectral-shift mode (train_mode.h; `svdiff train`, docs/method.md section 3): every UNet
 * conv / linear (and the text encoder's, when trained) factored as U diag(ReLU(sigma + delta)) V^T
 * without the dense base, the norm-gain shifts, the deltas as trained arrays, and the shift files
 * OUT_DIR/spectral_shifts.safetensors (+ _te). */
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>

#include "base/error.h"
#include "ops/gemm.h"
#include "shifts/shifts.h"
#include "train/train_mode.h"

/* Rounds to the nearest bf16 value (kept as float: the engine has no bf16 factor path). */
static void round_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = st_bf16_to_f32(st_f32_to_bf16(x[i]));
}

static void round_factors(weight_t *w) {
    if (w->kind != WEIGHT_SPECTRAL || w->sp->Uh) return;   /* bf16-stored: rounded already */
    round_bf16(w->sp->U, (size_t)w->sp->rows * w->sp->rank);
    round_bf16(w->sp->Vt, (size_t)w->sp->rank * w->sp->cols);
}

static int round_clip_module(void *ctx, const clip_module_t *mod) {
    (void)ctx;
    if (mod->w) round_factors(mod->w);
    return 0;
}

/* Every UNet conv / linear (and the text encoder's, when trained) in the factored training form
 * without the base; factors from the SVD cache when there is one; then the norm shifts. */
static int shifts_prepare(const train_model_t *m) {
    const train_config_t *c = m->cfg;
    pipeline_t *p = m->p;
    svd_cache_t *cache = NULL;
    char dir[PATH_MAX];
    if (!c->svd_cache_dir) svd_cache_default_dir(dir, sizeof dir);
    else snprintf(dir, sizeof dir, "%s", c->svd_cache_dir);
    if (dir[0] && m->model_hash[0] && svd_cache_open(&cache, dir, m->model_hash)) {
        fprintf(stderr, "warning: SVD cache in %s unusable (%s): computing the SVD without it\n", dir, sd_last_error());
        cache = NULL;
    }
    /* bf16 compute: the UNet's factors are stored in bf16, those read from the cache as they are
     * read, those computed here after the cache has saved them (half the memory; the bf16 GEMM
     * packs them without converting). The text encoder keeps fp32 factors (its embeddings read
     * U rows directly). */
    int rc = unet_make_spectral_stored(&p->unet, cache, sd_compute_dtype() == SD_COMPUTE_BF16);
    if (!rc && c->train_text_encoder)
        rc = clip_make_spectral_cached(&p->clip, cache, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 0);
    if (cache) svd_cache_close(cache);
    if (rc) return rc;
    if (c->svd_bf16) {
        for (int i = 0; i < p->unet.n_layers; i++) round_factors(&p->unet.layers[i]->w);
        if (c->train_text_encoder) clip_visit_modules(&p->clip, NULL, round_clip_module, NULL);
    }
    unet_add_norm_shifts(&p->unet, c->norm_shift);
    return SD_OK;
}

typedef struct {
    train_param_fn fn;
    void *ctx;
} visit_ctx_t;

/* A shift of either model as a trained array: its name (and so its group) from the visit. */
static void visit_shift(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    visit_ctx_t *v = ctx;
    const train_param_spec_t s = {(int)name->component, name->path, "", shift, grad, n, name->kind == SHIFT_NORM, name};
    v->fn(v->ctx, &s);
}

static void shifts_visit(const train_model_t *m, train_param_fn fn, void *ctx) {
    visit_ctx_t v = {fn, ctx};
    unet_visit_shifts(&m->p->unet, m->ug, visit_shift, &v);
    if (m->cfg->train_text_encoder) clip_visit_shifts(&m->p->clip, m->cg, visit_shift, &v);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

/* OUT_DIR/spectral_shifts.safetensors (+ _te, the two files carrying one pair id) with the run's metadata. */
static int shifts_save(const train_model_t *m, train_save_t *o) {
    const train_config_t *c = m->cfg;
    char path[PATH_MAX], te_path[PATH_MAX];
    const st_dtype_t dt = c->save_fp16 ? ST_F16 : ST_F32;
    shift_set_t s, te;
    shiftset_init(&s);
    shiftset_from_unet(&s, &m->p->unet);
    o->put_meta(o->meta_ctx, &s);
    snprintf(path, sizeof path, "%s/spectral_shifts.safetensors", o->dir);
    snprintf(te_path, sizeof te_path, "%s/spectral_shifts_te.safetensors", o->dir);
    int rc;
    if (c->train_text_encoder) {   /* the two files carry one pair id (shiftset_save_pair) */
        shiftset_init(&te);
        shiftset_from_clip(&te, &m->p->clip);
        o->put_meta(o->meta_ctx, &te);
        rc = shiftset_save_pair(&s, path, dt, &te, te_path, dt);
        shiftset_free(&te);
    } else {
        rc = shiftset_save(&s, path, dt);
    }
    shiftset_free(&s);
    o->bytes[0] = rc ? -1 : file_size(path);
    o->bytes[1] = rc || !c->train_text_encoder ? -1 : file_size(te_path);
    return rc;
}

static void shifts_summary(const train_model_t *m, const train_save_t *o) {
    (void)m;
    fprintf(stderr, "  output         %s/spectral_shifts.safetensors (%ld bytes)\n", o->dir, o->bytes[0]);
    if (o->bytes[1] >= 0) fprintf(stderr, "                 %s/spectral_shifts_te.safetensors (%ld bytes)\n", o->dir, o->bytes[1]);
    fprintf(stderr, "                 %s/loss.csv\n", o->dir);
}

const train_mode_ops_t TRAIN_MODE_SHIFTS_OPS = {
    .name = "shifts",
    .result_file = "spectral_shifts.safetensors",
    .spectral_options = 1,
    .unet_grads = UNET_GRAD_SHIFTS,   /* never dW of a frozen weight */
    .clip_grads = CLIP_GRAD_SHIFTS,
    .prepare = shifts_prepare,
    .visit = shifts_visit,
    .save = shifts_save,
    .summary = shifts_summary,
};
