/* The spectral-shift mode (train_mode.h; `svdiff train`, docs/method.md section 3): every UNet
 * conv / linear (and the text encoder's, when trained) factored as U diag(ReLU(sigma + delta)) V^T
 * without the dense base, the norm-gain shifts, the deltas as trained arrays, and the shift files
 * OUT_DIR/spectral_shifts.safetensors (+ _te, and on SDXL _te2 for text_encoder_2). */
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
    const int te2 = c->train_text_encoder && p->has_te2;   /* SDXL: both encoders train */
    if (!rc && c->train_text_encoder)
        rc = clip_make_spectral_cached(&p->clip, cache, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 0);
    if (!rc && te2)
        rc = clip_make_spectral_cached_as(&p->clip2, SHIFT_TE2, cache, CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS, 0);
    if (cache) svd_cache_close(cache);
    if (rc) return rc;
    if (c->svd_bf16) {
        for (int i = 0; i < p->unet.n_layers; i++) round_factors(&p->unet.layers[i]->w);
        if (c->train_text_encoder) clip_visit_modules(&p->clip, NULL, round_clip_module, NULL);
        if (te2) clip_visit_modules(&p->clip2, NULL, round_clip_module, NULL);
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

/* text_encoder_2's shifts: clip_visit_shifts names them SHIFT_TE, they are SHIFT_TE2 ("te2/" names) */
static void visit_shift_te2(void *ctx, const shift_name_t *name, float *shift, float *grad, int n) {
    const shift_name_t as = {SHIFT_TE2, name->kind, name->path};
    visit_shift(ctx, &as, shift, grad, n);
}

static void shifts_visit(const train_model_t *m, train_param_fn fn, void *ctx) {
    visit_ctx_t v = {fn, ctx};
    unet_visit_shifts(&m->p->unet, m->ug, visit_shift, &v);
    if (m->cfg->train_text_encoder) clip_visit_shifts(&m->p->clip, m->cg, visit_shift, &v);
    if (m->cfg->train_text_encoder && m->p->has_te2) clip_visit_shifts(&m->p->clip2, m->cg2, visit_shift_te2, &v);
}

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long)st.st_size;
}

/* OUT_DIR/spectral_shifts.safetensors (+ _te, + _te2 on SDXL: the files of a run carry one pair id,
 * shiftset_save_group) with the run's metadata. */
static int shifts_save(const train_model_t *m, train_save_t *o) {
    const train_config_t *c = m->cfg;
    const int n = !c->train_text_encoder ? 1 : m->p->has_te2 ? 3 : 2;
    char path[SHIFT_N_COMPONENTS][PATH_MAX];
    const char *files[SHIFT_N_COMPONENTS];
    st_dtype_t dt[SHIFT_N_COMPONENTS];
    shift_set_t s[SHIFT_N_COMPONENTS];
    const shift_set_t *sets[SHIFT_N_COMPONENTS];
    for (int k = 0; k < n; k++) {
        shiftset_init(&s[k]);
        if (k == SHIFT_UNET) shiftset_from_unet(&s[k], &m->p->unet);
        else shiftset_from_clip_as(&s[k], k == SHIFT_TE ? &m->p->clip : &m->p->clip2, (shift_component_t)k);
        o->put_meta(o->meta_ctx, &s[k]);
        snprintf(path[k], sizeof path[k], "%s/%s", o->dir, shift_part_file((shift_component_t)k));
        files[k] = path[k], dt[k] = c->save_fp16 ? ST_F16 : ST_F32, sets[k] = &s[k];
    }
    const int rc = shiftset_save_group(sets, files, dt, n);   /* n = 1: a lone file, no pair id */
    for (int k = 0; k < SHIFT_N_COMPONENTS; k++) o->bytes[k] = rc || k >= n ? -1 : file_size(path[k]);
    for (int k = 0; k < n; k++) shiftset_free(&s[k]);
    return rc;
}

static void shifts_summary(const train_model_t *m, const train_save_t *o) {
    (void)m;
    fprintf(stderr, "  output         %s/spectral_shifts.safetensors (%ld bytes)\n", o->dir, o->bytes[0]);
    if (o->bytes[1] >= 0) fprintf(stderr, "                 %s/spectral_shifts_te.safetensors (%ld bytes)\n", o->dir, o->bytes[1]);
    if (o->bytes[2] >= 0) fprintf(stderr, "                 %s/spectral_shifts_te2.safetensors (%ld bytes)\n", o->dir, o->bytes[2]);
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
