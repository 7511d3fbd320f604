/* svdiff_model_*: an opened pipeline plus the list of adapters applied to it. The model keeps its
 * base weights in the opened files (model_t's tensors), so removing or changing adapters rebuilds
 * the UNet and the text encoder from them (no file is read again) and re-applies the list in the
 * order `svdiff generate` applies --shifts, --delta, --lora: the bytes are those of the CLI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "base/runtime.h"
#include "ops/gemm.h"
#include "pipeline/adapters.h"

SVDIFF_API svdiff_model_params_t svdiff_model_default_params(void) {
    svdiff_model_params_t p = {0};
    return p;
}

static char *dup_or_null(const char *s) {
    if (!s) return NULL;
    char *d = strdup(s);
    SD_CHECK(d, "out of memory");
    return d;
}

SVDIFF_API int svdiff_model_open(const char *path, const svdiff_model_params_t *params, svdiff_model_t **out) {
    int rc = API_NEED(out, "svdiff_model_open");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(path, "svdiff_model_open"))) return rc;
    const svdiff_model_params_t def = svdiff_model_default_params();
    if (!params) params = &def;
    if (params->compute < SVDIFF_COMPUTE_DEFAULT || params->compute > SVDIFF_COMPUTE_BF16)
        return sd_error(SD_ERR_ARG, "svdiff_model_open: compute must be SVDIFF_COMPUTE_DEFAULT, _FP32 or _BF16, got %d",
                        (int)params->compute);
    if (params->threads > 0) sd_set_threads(params->threads);
    if (params->compute != SVDIFF_COMPUTE_DEFAULT)
        sd_set_compute_dtype(params->compute == SVDIFF_COMPUTE_BF16 ? SD_COMPUTE_BF16 : SD_COMPUTE_FP32);
    svdiff_model_t *m = calloc(1, sizeof *m);
    if (!m) return sd_nomem("svdiff_model_t", sizeof *m);
    const model_open_options_t mo = {.tokenizer_dir = params->tokenizer_dir,
                                     .prediction_type = params->prediction_type,
                                     .scheduler_config = params->scheduler_config};
    if ((rc = pipeline_open_model(&m->p, path, &mo))) {
        free(m);
        return rc;
    }
    m->path = dup_or_null(path);
    if (!params->svd_cache_dir) {
        char buf[4096];
        svd_cache_default_dir(buf, sizeof buf);
        m->svd_cache_dir = dup_or_null(buf);
    } else if (params->svd_cache_dir[0]) {
        m->svd_cache_dir = dup_or_null(params->svd_cache_dir);
    }
    m->force = params->force;
    m->adapters_text = dup_or_null("");
    *out = m;
    return SD_OK;
}

static void adapter_free(api_adapter_t *a) {
    free(a->path);
    svdiff_shifts_free(a->set);
}

SVDIFF_API void svdiff_model_close(svdiff_model_t *m) {
    if (!m) return;
    pipeline_close(&m->p);
    for (int i = 0; i < m->n_adapters; i++) adapter_free(&m->adapters[i]);
    free(m->adapters), free(m->adapters_text), free(m->path), free(m->svd_cache_dir);
    free(m);
}

static const char *family_of(const svdiff_model_t *m) {
    const pipeline_t *p = &m->p;
    if (!p->has_vae) return "pixel";
    if (p->has_te2 && p->pooled_dim) return "sdxl";
    if (p->model.layout == MODEL_LAYOUT_LDM_SD1) return "sd1";
    if (p->model.layout == MODEL_LAYOUT_LDM_SD2) return "sd2";
    if (p->ctx_dim == 768 && p->latent_channels == 4) return "sd1";
    if (p->ctx_dim == 1024 && p->latent_channels == 4) return "sd2";
    return "custom";
}

static int64_t component_params(const model_component_t *c) {
    int64_t n = 0;
    for (int i = 0; i < c->n_tensors; i++) n += c->tensors[i].numel;
    return n;
}

SVDIFF_API int svdiff_model_info(const svdiff_model_t *m, svdiff_model_info_t *info) {
    int rc = API_NEED(m, "svdiff_model_info");
    if (!rc) rc = API_NEED(info, "svdiff_model_info");
    if (rc) return rc;
    const pipeline_t *p = &m->p;
    memset(info, 0, sizeof *info);
    snprintf(info->family, sizeof info->family, "%s", family_of(m));
    snprintf(info->prediction_type, sizeof info->prediction_type, "%s",
             prediction_type_name(p->sched.cfg.prediction_type));
    if ((rc = model_weights_hash(&p->model, info->weights_hash))) return rc;
    info->native_width = info->native_height = pipeline_native_size(p);
    info->latent_channels = p->latent_channels;
    info->scale_factor = p->scale_factor;
    info->unet_levels = p->unet.cfg.n_levels;
    info->context_dim = p->ctx_dim;
    info->context_tokens = p->n_ctx;
    info->has_vae = p->has_vae;
    info->unet_params = component_params(&p->model.unet);
    info->text_encoder_params = component_params(&p->model.text_encoder) + component_params(&p->model.text_encoder_2);
    info->vae_params = component_params(&p->model.vae);
    info->train_timesteps = p->sched.T;
    return SD_OK;
}

SVDIFF_API int svdiff_model_latent_shape(const svdiff_model_t *m, int width, int height, int *channels, int *lh,
                                         int *lw) {
    int rc = API_NEED(m, "svdiff_model_latent_shape");
    if (rc) return rc;
    if (!width) width = pipeline_native_size(&m->p);
    if (!height) height = pipeline_native_size(&m->p);
    if ((rc = pipeline_check_size(&m->p, width, height))) return rc;
    int c, h, w;
    pipeline_latent_shape(&m->p, width, height, &c, &h, &w);
    if (channels) *channels = c;
    if (lh) *lh = h;
    if (lw) *lw = w;
    return SD_OK;
}

/* ---- adapters ---- */

/* The PNG text's adapter list, as cli/generate.c writes it: shifts "path (scale)", then deltas and
 * LoRAs "delta path (scale)" / "lora path (scale)", separated by ", ". */
static void update_text(svdiff_model_t *m) {
    char text[2048] = "";
    int k = 0;
    for (int pass = 0; pass < 3; pass++)
        for (int i = 0; i < m->n_adapters && k < (int)sizeof text; i++) {
            const api_adapter_t *a = &m->adapters[i];
            if ((int)a->kind != pass) continue;
            const char *path = a->path ? a->path : "(shifts in memory)";
            if (pass == API_AD_SHIFTS) k += snprintf(text + k, sizeof text - k, "%s%s (%g)", k ? ", " : "", path, a->scale);
            else
                k += snprintf(text + k, sizeof text - k, "%s%s %s (%g)", k ? ", " : "",
                              pass == API_AD_DELTA ? "delta" : "lora", path, a->scale);
        }
    free(m->adapters_text);
    m->adapters_text = dup_or_null(text);
}

/* Base weights again: the UNet and the text encoder rebuilt from the opened files. */
static int restore_base(svdiff_model_t *m) {
    if (!m->modified) return SD_OK;
    pipeline_t *p = &m->p;
    free_unet(&p->unet);
    free_clip(&p->clip);
    free_clip(&p->clip2);
    int rc = build_clip_from_component(&p->clip, &p->model.text_encoder);
    if (!rc && p->has_te2) rc = build_clip_from_component(&p->clip2, &p->model.text_encoder_2);
    if (!rc) rc = build_unet_from_component(&p->unet, &p->model.unet);
    if (rc) return sd_error_wrap(rc, "%s: rebuilding the base weights", m->path);
    m->modified = 0;
    return SD_OK;
}

/* Base weights, then every adapter of the list: shifts (files given one after another in one call,
 * as the CLI does), then deltas, then LoRAs. */
static int rebuild(svdiff_model_t *m) {
    int rc = restore_base(m);
    pipeline_t *p = &m->p;
    const int n = m->n_adapters;
    pipeline_shift_t *list = sd_xcalloc((size_t)(n ? n : 1), sizeof *list);
    for (int i = 0; i < n && !rc;) {
        const api_adapter_t *a = &m->adapters[i];
        if (a->kind != API_AD_SHIFTS) {
            i++;
            continue;
        }
        m->modified = 1;
        if (a->set) {
            for (int part = 0; part < SVDIFF_SHIFTS_PARTS && !rc; part++)
                if (a->set->part[part].n)
                    rc = pipeline_apply_shift_set(p, &a->set->part[part], "shifts in memory", a->scale, m->force,
                                                  m->svd_cache_dir);
            i++;
            continue;
        }
        int k = 0;
        for (; i < n && m->adapters[i].kind == API_AD_SHIFTS && m->adapters[i].path; i++)
            list[k++] = (pipeline_shift_t){.path = m->adapters[i].path, .scale = m->adapters[i].scale};
        rc = pipeline_apply_shifts(p, list, k, m->force, m->svd_cache_dir);
    }
    for (int kind = API_AD_DELTA; kind <= API_AD_LORA && !rc; kind++) {
        int k = 0;
        for (int i = 0; i < n; i++)
            if ((int)m->adapters[i].kind == kind)
                list[k++] = (pipeline_shift_t){.path = m->adapters[i].path, .scale = m->adapters[i].scale};
        if (!k) continue;
        m->modified = 1;
        rc = kind == API_AD_DELTA ? pipeline_apply_deltas(p, list, k, m->force) : pipeline_apply_loras(p, list, k, m->force);
    }
    free(list);
    update_text(m);
    return rc;
}

/* Appends an adapter and rebuilds; a failure removes it again and restores the previous weights. */
static int add_adapter(svdiff_model_t *m, api_adapter_kind_t kind, const char *path, svdiff_shifts_t *set, float scale,
                       const char *fn) {
    int rc = API_NEED(m, fn);
    if (!rc && !set) rc = API_NEED(path, fn);
    if (rc) {
        svdiff_shifts_free(set);
        return rc;
    }
    if (!(scale == scale) || scale > 1e30f || scale < -1e30f) {
        svdiff_shifts_free(set);
        return sd_error(SD_ERR_ARG, "%s: the scale must be a finite number, got %g", fn, (double)scale);
    }
    m->adapters = realloc(m->adapters, sizeof *m->adapters * (size_t)(m->n_adapters + 1));
    SD_CHECK(m->adapters, "out of memory");
    m->adapters[m->n_adapters++] = (api_adapter_t){.kind = kind, .path = dup_or_null(path), .set = set, .scale = scale};
    if (!(rc = rebuild(m))) return SD_OK;
    /* keep the message of the failure, not of the restoring */
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", sd_last_error());
    adapter_free(&m->adapters[--m->n_adapters]);
    m->modified = 1;   /* whatever was half applied goes */
    if (rebuild(m)) fprintf(stderr, "warning: %s: restoring the weights after a failed apply: %s\n", fn, sd_last_error());
    return sd_error(rc, "%s", msg);
}

SVDIFF_API int svdiff_model_apply_shifts(svdiff_model_t *m, const char *path, float scale) {
    return add_adapter(m, API_AD_SHIFTS, path, NULL, scale, "svdiff_model_apply_shifts");
}

SVDIFF_API int svdiff_model_apply_lora(svdiff_model_t *m, const char *path, float scale) {
    return add_adapter(m, API_AD_LORA, path, NULL, scale, "svdiff_model_apply_lora");
}

SVDIFF_API int svdiff_model_apply_delta(svdiff_model_t *m, const char *path, float scale) {
    return add_adapter(m, API_AD_DELTA, path, NULL, scale, "svdiff_model_apply_delta");
}

SVDIFF_API int svdiff_model_apply_shift_set(svdiff_model_t *m, const svdiff_shifts_t *shifts, float scale) {
    int rc = API_NEED(shifts, "svdiff_model_apply_shift_set");
    if (rc) return rc;
    svdiff_shifts_t *copy = api_shifts_new();
    for (int part = 0; part < SVDIFF_SHIFTS_PARTS; part++) api_shiftset_copy(&copy->part[part], &shifts->part[part]);
    return add_adapter(m, API_AD_SHIFTS, NULL, copy, scale, "svdiff_model_apply_shift_set");
}

SVDIFF_API int svdiff_model_clear_adapters(svdiff_model_t *m) {
    int rc = API_NEED(m, "svdiff_model_clear_adapters");
    if (rc) return rc;
    for (int i = 0; i < m->n_adapters; i++) adapter_free(&m->adapters[i]);
    m->n_adapters = 0;
    rc = restore_base(m);
    update_text(m);
    return rc;
}

SVDIFF_API const char *svdiff_model_adapters_text(const svdiff_model_t *m) { return m ? m->adapters_text : ""; }
