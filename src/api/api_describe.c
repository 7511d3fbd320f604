/* svdiff_model_describe: what `svdiff info` reports about a model, from the files' headers and
 * configs alone (the weights are mapped, never read): layout, family, each component's config,
 * tensor and parameter counts, dtypes and bytes, the scheduler, the prediction type and what
 * decided it, the tokenizer and the mapped files, and the memory generate and train need at a
 * resolution (from the models' own memory models: unet_acts_floats and the layer registries). */
#include <cjson/cJSON.h>
#include <string.h>

#include "api/api_internal.h"
#include "io/model.h"
#include "models/clip.h"
#include "models/unet.h"

static const char *layout_name(model_layout_t l) {
    switch (l) {
    case MODEL_LAYOUT_DIFFUSERS: return "diffusers";
    case MODEL_LAYOUT_LDM_SD1: return "LDM SD1";
    case MODEL_LAYOUT_LDM_SD2: return "LDM SD2";
    case MODEL_LAYOUT_LDM_SDXL: return "LDM SDXL";
    }
    return "?";
}

/* ---- the memory model ----
 * Bytes, each part from the code's own sizes:
 *   weights      the tensors as stored (mapped; resident once read)
 *   unet         unet_acts_floats: the UNet's activations at the latent size (generate: a batch of 2,
 *                the conditional and unconditional halves of classifier-free guidance; train: a batch
 *                of 1 with what backward keeps, without and with --gradient-checkpointing)
 *   text         the text encoders' activations on their context (the fields of clip_acts_t)
 *   vae          the VAE at full resolution: the widest level's input, output and normalised copy
 *                (3 x block_out_channels[0] x R^2 floats) and one im2col band (16 M floats)
 *   factors      train: U, S, V^T of every UNet conv and linear (rank min(out, in*k*k)), fp32, or bf16
 *                U and V^T with --compute-dtype bf16; the UNet's stored matrices are paged out after
 *                their SVD, so they are not counted twice
 *   optimizer    train: each shift (one per singular value, one per norm channel) with its gradient
 *                and two AdamW moments, fp32
 * Operator scratch (GEMM packing, a layer's dequantised weight), the process and the images are
 * not counted: a lower bound by some 100s of MB. */

static int64_t component_bytes(const model_component_t *c) {
    int64_t b = 0;
    for (int i = 0; i < c->n_tensors; i++) b += (int64_t)c->tensors[i].nbytes;
    return b;
}

/* clip_acts_t's floats for B sequences of T tokens: per layer 8 [B, T, C] tensors (ln1, q, k, v,
 * atty, residual2, ln2, residual3), 2 [B, T, I] (fch, fch_act), the statistics; then lnf. */
static double clip_act_bytes(const model_component_t *c, int B) {
    clip_config_t cfg;
    if (!c->n_tensors || clip_config_from_component(&cfg, c)) return 0;
    const double T = cfg.max_positions < 77 ? cfg.max_positions : 77, bt = B * T;
    const double per_layer = bt * (8.0 * cfg.hidden_size + 2.0 * cfg.intermediate_size + 4.0) + B * cfg.num_heads * T;
    return 4.0 * (cfg.num_layers * per_layer + bt * (2.0 * cfg.hidden_size + 2.0) + 2.0 * T);
}

typedef struct {
    double factors_f32, factors_bf16, shifts, unet_weights;
} factor_sizes_t;

static void factor_sizes(const model_component_t *c, factor_sizes_t *f) {
    memset(f, 0, sizeof *f);
    layer_registry_t r = {0};
    if (component_registry(c, &r)) {
        layer_registry_free(&r);
        return;
    }
    for (int i = 0; i < r.n; i++) {
        const layer_spec_t *s = &r.v[i];
        if (s->kind == LAYER_NORM) {
            f->shifts += s->out;
            continue;
        }
        if (s->kind != LAYER_LINEAR && s->kind != LAYER_CONV) continue;
        const double m = s->out, n = (double)s->in * s->k * s->k, rank = m < n ? m : n;
        f->factors_f32 += 4.0 * (m * rank + rank + rank * n);
        f->factors_bf16 += 2.0 * (m * rank + rank * n) + 4.0 * rank;
        f->shifts += rank;
    }
    layer_registry_free(&r);
    for (int i = 0; i < c->n_tensors; i++)
        if (c->tensors[i].ndim >= 2) f->unet_weights += (double)c->tensors[i].nbytes;
}

/* The memory of generate and train at `res` pixels (0: the model's native size). */
static void describe_memory(cJSON *o, const model_t *m, int res) {
    unet_config_t ucfg;
    unet_t u;
    if (unet_config_from_component(&ucfg, &m->unet)) return;
    int vae_levels = 0, c0 = 0;
    if (m->vae.n_tensors) {
        int ch[16];
        if (config_int_array(&m->vae, "block_out_channels", ch, 16, &vae_levels) || vae_levels < 1) return;
        c0 = ch[0];
    }
    const int f = vae_levels ? 1 << (vae_levels - 1) : 1, down = 1 << (ucfg.n_levels - 1);
    int sample = 64;
    config_int_or(&m->unet, "sample_size", 64, &sample);
    if (res <= 0) res = sample * f;
    const int h = res / f;
    cJSON *mem = cJSON_AddObjectToObject(o, "memory");
    cJSON_AddNumberToObject(mem, "resolution", res);
    if (res % (f * down)) {
        cJSON_AddStringToObject(mem, "error", "the resolution is not a multiple of the VAE factor times the UNet's "
                                              "2^(levels - 1)");
        return;
    }
    if (unet_build_structure(&u, &ucfg)) return;
    int T = 77;
    config_int_or(&m->text_encoder, "max_position_embeddings", 77, &T);
    if (T > 77) T = 77;
    const double gen_unet = 4.0 * (double)unet_acts_floats(&u, 2, h, h, T, 0, UNET_CKPT_NONE);
    const double tr_unet = 4.0 * (double)unet_acts_floats(&u, 1, h, h, T, 1, UNET_CKPT_NONE);
    const double tr_unet_ck = 4.0 * (double)unet_acts_floats(&u, 1, h, h, T, 1, UNET_CKPT_TRANSFORMERS);
    free_unet(&u);
    double weights = 0;
    const model_component_t *comps[4] = {&m->unet, &m->vae, &m->text_encoder, &m->text_encoder_2};
    for (int k = 0; k < 4; k++) weights += (double)component_bytes(comps[k]);
    const double text2 = clip_act_bytes(&m->text_encoder, 2) + clip_act_bytes(&m->text_encoder_2, 2);
    const double text1 = clip_act_bytes(&m->text_encoder, 1) + clip_act_bytes(&m->text_encoder_2, 1);
    const double vae = c0 ? 4.0 * (3.0 * c0 * (double)res * res + 16.0 * 1024 * 1024) : 0;
    factor_sizes_t fs;
    factor_sizes(&m->unet, &fs);
    const double optim = 4.0 * 4.0 * fs.shifts, base = weights - fs.unet_weights;
    cJSON *g = cJSON_AddObjectToObject(mem, "generate");
    cJSON_AddNumberToObject(g, "weights", weights);
    cJSON_AddNumberToObject(g, "unet_activations", gen_unet);
    cJSON_AddNumberToObject(g, "text_activations", text2);
    cJSON_AddNumberToObject(g, "vae_activations", vae);
    cJSON_AddNumberToObject(g, "total", weights + gen_unet + text2 + vae);
    cJSON *t = cJSON_AddObjectToObject(mem, "train");
    cJSON_AddNumberToObject(t, "weights", base);
    cJSON_AddNumberToObject(t, "factors_fp32", fs.factors_f32);
    cJSON_AddNumberToObject(t, "factors_bf16", fs.factors_bf16);
    cJSON_AddNumberToObject(t, "optimizer", optim);
    cJSON_AddNumberToObject(t, "unet_activations", tr_unet);
    cJSON_AddNumberToObject(t, "unet_activations_checkpointed", tr_unet_ck);
    cJSON_AddNumberToObject(t, "text_activations", text1);
    cJSON_AddNumberToObject(t, "vae_activations", vae);
    const double rest = base + optim + text1 + vae;
    cJSON_AddNumberToObject(t, "total", rest + fs.factors_f32 + tr_unet);
    cJSON_AddNumberToObject(t, "total_bf16_checkpointed", rest + fs.factors_bf16 + tr_unet_ck);
}

static cJSON *describe(const model_t *m, int res) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", m->path);
    cJSON_AddStringToObject(o, "layout", layout_name(m->layout));
    /* a model without a VAE works on pixels: none of the SD families, as svdiff_model_info says */
    cJSON_AddStringToObject(o, "family", m->vae.n_tensors ? model_family_name(model_family(m)) : "pixel");
    cJSON *cs = cJSON_AddObjectToObject(o, "components");
    const model_component_t *comps[4] = {&m->unet, &m->vae, &m->text_encoder, &m->text_encoder_2};
    int64_t params = 0, bytes = 0;
    for (int k = 0; k < 4; k++) {
        const model_component_t *c = comps[k];
        if (k == 3 && !c->n_tensors) continue;   /* SDXL's only: not listed for SD 1.x / 2.x */
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
    if (m->text_encoder_2.n_tensors) {
        if (m->tokenizer_2_dir) cJSON_AddStringToObject(o, "tokenizer_2", m->tokenizer_2_dir);
        else cJSON_AddNullToObject(o, "tokenizer_2");
        cJSON_AddBoolToObject(o, "force_zeros_for_empty_prompt", m->force_zeros_for_empty_prompt);
    }
    int nfiles = 0;
    double mapped = 0;
    for (int i = 0; i < m->n_sets; i++)
        for (int f = 0; f < m->sets[i].n_files; f++, nfiles++) mapped += (double)m->sets[i].files[f].map_size;
    cJSON_AddNumberToObject(o, "files", nfiles);
    cJSON_AddNumberToObject(o, "mapped_bytes", mapped);
    cJSON_AddNumberToObject(o, "total_parameters", (double)params);
    cJSON_AddNumberToObject(o, "total_bytes", (double)bytes);
    describe_memory(o, m, res);
    return o;
}

SVDIFF_API int svdiff_model_describe(const char *path, const svdiff_model_params_t *params, char **json) {
    return svdiff_model_describe_at(path, params, 0, json);
}

SVDIFF_API int svdiff_model_describe_at(const char *path, const svdiff_model_params_t *params, int resolution,
                                        char **json) {
    int rc = API_NEED(json, "svdiff_model_describe");
    if (rc) return rc;
    *json = NULL;
    if ((rc = API_NEED(path, "svdiff_model_describe"))) return rc;
    if (resolution < 0 || resolution > 65536)
        return sd_error(SD_ERR_ARG, "svdiff_model_describe: resolution %d is not in 0..65536", resolution);
    const svdiff_model_params_t def = svdiff_model_default_params();
    if (!params) params = &def;
    const model_open_options_t mo = {.tokenizer_dir = params->tokenizer_dir, .prediction_type = params->prediction_type,
                                     .scheduler_config = params->scheduler_config};
    model_t m;
    if ((rc = model_open(&m, path, &mo))) return rc;
    cJSON *o = describe(&m, resolution);
    model_close(&m);
    *json = cJSON_Print(o);
    cJSON_Delete(o);
    SD_CHECK(*json, "out of memory");
    return SD_OK;
}
