/* svdiff_model_describe: what `svdiff info` reports about a model, from the files' headers and
 * configs alone (the weights are mapped, never read): layout, each component's config, tensor and
 * parameter counts, dtypes and bytes, the scheduler, the prediction type and what decided it, the
 * tokenizer and the mapped files. */
#include <cjson/cJSON.h>
#include <string.h>

#include "api/api_internal.h"
#include "io/model.h"

static const char *layout_name(model_layout_t l) {
    switch (l) {
    case MODEL_LAYOUT_DIFFUSERS: return "diffusers";
    case MODEL_LAYOUT_LDM_SD1: return "LDM SD1";
    case MODEL_LAYOUT_LDM_SD2: return "LDM SD2";
    }
    return "?";
}

static cJSON *describe(const model_t *m) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", m->path);
    cJSON_AddStringToObject(o, "layout", layout_name(m->layout));
    cJSON *cs = cJSON_AddObjectToObject(o, "components");
    const model_component_t *comps[3] = {&m->unet, &m->vae, &m->text_encoder};
    int64_t params = 0, bytes = 0;
    for (int k = 0; k < 3; k++) {
        const model_component_t *c = comps[k];
        cJSON *j = cJSON_AddObjectToObject(cs, c->name);
        cJSON_AddBoolToObject(j, "present", c->n_tensors > 0);
        if (!c->n_tensors) continue;
        int64_t cp = 0, cb = 0;
        int by_dtype[ST_DTYPE_COUNT] = {0};
        for (int i = 0; i < c->n_tensors; i++) {
            cp += c->tensors[i].numel;
            cb += (int64_t)c->tensors[i].nbytes;
            by_dtype[c->tensors[i].dtype]++;
        }
        params += cp, bytes += cb;
        cJSON_AddNumberToObject(j, "tensors", c->n_tensors);
        cJSON_AddNumberToObject(j, "parameters", (double)cp);
        cJSON_AddNumberToObject(j, "bytes", (double)cb);
        cJSON *d = cJSON_AddObjectToObject(j, "dtypes");
        for (int t = 0; t < ST_DTYPE_COUNT; t++)
            if (by_dtype[t]) cJSON_AddNumberToObject(d, st_dtype_name((st_dtype_t)t), by_dtype[t]);
        cJSON_AddItemToObject(j, "config", cJSON_Duplicate(c->config, 1));
    }
    cJSON_AddItemToObject(o, "scheduler", cJSON_Duplicate(m->scheduler_config, 1));
    cJSON *pj = cJSON_AddObjectToObject(o, "prediction_type");
    const cJSON *pt = cJSON_GetObjectItemCaseSensitive(m->scheduler_config, "prediction_type");
    cJSON_AddStringToObject(pj, "value", cJSON_IsString(pt) ? pt->valuestring : "epsilon");
    cJSON_AddStringToObject(pj, "source", m->prediction_why);
    cJSON_AddBoolToObject(pj, "guessed", m->prediction_guessed);
    if (m->tokenizer_dir) cJSON_AddStringToObject(o, "tokenizer", m->tokenizer_dir);
    else cJSON_AddNullToObject(o, "tokenizer");
    int nfiles = 0;
    double mapped = 0;
    for (int i = 0; i < m->n_sets; i++)
        for (int f = 0; f < m->sets[i].n_files; f++, nfiles++) mapped += (double)m->sets[i].files[f].map_size;
    cJSON_AddNumberToObject(o, "files", nfiles);
    cJSON_AddNumberToObject(o, "mapped_bytes", mapped);
    cJSON_AddNumberToObject(o, "total_parameters", (double)params);
    cJSON_AddNumberToObject(o, "total_bytes", (double)bytes);
    return o;
}

SVDIFF_API int svdiff_model_describe(const char *path, const svdiff_model_params_t *params, char **json) {
    int rc = API_NEED(json, "svdiff_model_describe");
    if (rc) return rc;
    *json = NULL;
    if ((rc = API_NEED(path, "svdiff_model_describe"))) return rc;
    const svdiff_model_params_t def = svdiff_model_default_params();
    if (!params) params = &def;
    const model_open_options_t mo = {.tokenizer_dir = params->tokenizer_dir, .prediction_type = params->prediction_type,
                                     .scheduler_config = params->scheduler_config};
    model_t m;
    if ((rc = model_open(&m, path, &mo))) return rc;
    cJSON *o = describe(&m);
    model_close(&m);
    *json = cJSON_Print(o);
    cJSON_Delete(o);
    SD_CHECK(*json, "out of memory");
    return SD_OK;
}
