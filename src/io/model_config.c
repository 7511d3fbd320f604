/* Component configs: typed access with errors naming component and key, the tensors a config
 * implies (the registry of layers that the model's own builder describes: UNet2DConditionModel,
 * AutoencoderKL, CLIPTextModel) with the validation built on it, and the derivation of configs
 * from tensor shapes for single-file checkpoints. */
#include "io/model_config.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/json.h"
#include "io/names.h"
#include "models/clip.h"
#include "models/unet.h"
#include "models/vae.h"

#define MAX_LEVELS 8

/* ---------------------------------------------------------------------------------------- */
/* Typed config access                                                                      */

/* The config getters of model.h: io/json.h's on c->config, errors naming "<component> config". */
#define WHAT(c) char what[96]; snprintf(what, sizeof what, "%s config", (c)->name ? (c)->name : "?")

int config_int(const model_component_t *c, const char *key, int *out) {
    WHAT(c);
    return json_int_req(c->config, key, out, what);
}

int config_int_or(const model_component_t *c, const char *key, int dflt, int *out) {
    WHAT(c);
    return json_int(c->config, key, dflt, out, what);
}

int config_float(const model_component_t *c, const char *key, float *out) {
    WHAT(c);
    return json_float_req(c->config, key, out, what);
}

int config_float_or(const model_component_t *c, const char *key, float dflt, float *out) {
    WHAT(c);
    return json_float(c->config, key, dflt, out, what);
}

int config_bool(const model_component_t *c, const char *key, int *out) {
    WHAT(c);
    return json_bool_req(c->config, key, out, what);
}

int config_string(const model_component_t *c, const char *key, const char **out) {
    WHAT(c);
    return json_str_req(c->config, key, out, what);
}

int config_string_or(const model_component_t *c, const char *key, const char *dflt, const char **out) {
    WHAT(c);
    return json_str(c->config, key, dflt, out, what);
}

int config_int_array(const model_component_t *c, const char *key, int *out, int max, int *n) {
    WHAT(c);
    return json_int_array(c->config, key, out, max, n, what);
}

/* ---------------------------------------------------------------------------------------- */
/* The tensors a config implies: the model builders' registries                             */

/* Keys a component's config file must state: without them the model is a guess (the builders'
 * readers would take diffusers' / transformers' defaults, which describe SD 1.5 sized models). */
static int require_keys(const model_component_t *c, const char *const *keys, int n) {
    WHAT(c);
    for (int i = 0; i < n; i++)
        if (!json_item(c->config, keys[i])) return sd_error(SD_ERR_FORMAT, "%s: missing key \"%s\"", what, keys[i]);
    return 0;
}

int component_registry(const model_component_t *c, layer_registry_t *r) {
    static const char *const unet_keys[] = {"block_out_channels", "in_channels", "out_channels", "layers_per_block",
                                            "cross_attention_dim", "down_block_types", "up_block_types"};
    static const char *const vae_keys[] = {"block_out_channels", "in_channels", "out_channels", "latent_channels",
                                           "layers_per_block"};
    static const char *const text_keys[] = {"hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "vocab_size", "max_position_embeddings"};
#define N_KEYS(a) ((int)(sizeof a / sizeof *a))
    int rc;
    if (!c->name) return sd_error(SD_ERR_ARG, "component without a name");
    if (!strcmp(c->name, "unet")) {
        unet_config_t cfg;
        if ((rc = require_keys(c, unet_keys, N_KEYS(unet_keys)))) return rc;
        if (!json_item(c->config, "attention_head_dim") && !json_item(c->config, "num_attention_heads"))
            return require_keys(c, (const char *const[]){"attention_head_dim"}, 1);
        if ((rc = unet_config_from_component(&cfg, c))) return rc;
        return unet_registry(&cfg, r);
    }
    if (!strcmp(c->name, "vae")) {
        vae_config_t cfg;
        if ((rc = require_keys(c, vae_keys, N_KEYS(vae_keys))) || (rc = vae_config_from_component(&cfg, c)))
            return rc;
        vae_registry(&cfg, r);
        return 0;
    }
    if (!strcmp(c->name, "text_encoder") || !strcmp(c->name, "text_encoder_2")) {
        clip_config_t cfg;
        if ((rc = require_keys(c, text_keys, N_KEYS(text_keys))) || (rc = clip_config_from_component(&cfg, c)))
            return rc;
        clip_registry(&cfg, r);
        return 0;
    }
#undef N_KEYS
    return sd_error(SD_ERR_ARG, "no layer registry for a component named '%s'", c->name);
}

typedef struct {
    model_tensor_fn fn;
    void *ctx;
} tensor_fwd_t;

static int forward_tensor(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim,
                          const int64_t *shape) {
    const tensor_fwd_t *f = ctx;
    (void)spec, (void)part;
    return f->fn(f->ctx, name, ndim, shape);
}

int component_expected_tensors(const model_component_t *c, model_tensor_fn fn, void *ctx) {
    layer_registry_t r = {0};
    int rc = component_registry(c, &r);
    tensor_fwd_t f = {fn, ctx};
    if (!rc) rc = layer_registry_tensors(&r, forward_tensor, &f);
    layer_registry_free(&r);
    return rc;
}

typedef struct {
    const model_component_t *c;
    unsigned char *used;
} validate_t;

static int validate_one(void *ctx, const char *name, int ndim, const int64_t *shape) {
    validate_t *v = ctx;
    const st_tensor_t *t;
    int rc = component_require(v->c, name, ndim, shape, &t);
    if (rc) return rc;
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected F32, F16 or BF16",
                        v->c->name, name, st_dtype_name(t->dtype));
    v->used[t - v->c->tensors] = 1;
    return 0;
}

int component_validate(const model_component_t *c) {
    validate_t v = {c, sd_xcalloc((size_t)c->n_tensors + 1, 1)};
    int rc = component_expected_tensors(c, validate_one, &v);
    if (rc == 0) {
        int unused = 0, first = -1;
        for (int i = 0; i < c->n_tensors; i++)
            if (!v.used[i]) {
                if (first < 0) first = i;
                unused++;
            }
        if (unused)
            rc = sd_error(SD_ERR_FORMAT, "%s: unexpected tensor '%s' (%d tensor%s not part of the model "
                          "its config describes)", c->name, c->tensors[first].name, unused,
                          unused == 1 ? " is" : "s are");
    }
    free(v.used);
    return rc;
}

static const char *cat(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *cat(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, NAMES_MAX, fmt, ap);
    va_end(ap);
    return buf;
}

/* ---------------------------------------------------------------------------------------- */
/* Configs derived from tensor shapes (single-file checkpoints)                              */

/* Number of k in "<prefix><k>." among the names (max k + 1). */
static int count_index(const model_component_t *c, const char *prefix) {
    size_t n = strlen(prefix);
    int best = -1;
    for (int i = 0; i < c->n_tensors; i++) {
        const char *s = c->tensors[i].name;
        if (strncmp(s, prefix, n) != 0) continue;
        char *end;
        long k = strtol(s + n, &end, 10);
        if (end != s + n && *end == '.' && k > best && k < 1000) best = (int)k;
    }
    return best + 1;
}

/* A tensor the derivation reads, with its rank checked; the message names it. */
static int need(const model_component_t *c, const char *name, int ndim, const st_tensor_t **t) {
    static const int64_t any[4] = {-1, -1, -1, -1};
    return component_require(c, name, ndim, any, t);
}

static int gcd(int a, int b) { return b ? gcd(b, a % b) : a; }

/* GroupNorm groups are not stored: SD uses 32. Where 32 does not divide the widths (small test
 * models) the largest count up to 32 that does. */
static int groups_for(const int *ch, int n) {
    int g = ch[0];
    for (int i = 1; i < n; i++) g = gcd(g, ch[i]);
    for (int k = 32; k > 1; k--)
        if (g % k == 0) return k;
    return 1;
}

static void set_config(model_component_t *c, cJSON *cfg) {
    cJSON_Delete(c->config);
    c->config = cfg;
}

int model_derive_unet_config(model_component_t *c, model_layout_t layout, int pooled_dim) {
    const st_tensor_t *t;
    char p[NAMES_MAX];
    int rc, in, out, ch[MAX_LEVELS], heads[MAX_LEVELS], depth[MAX_LEVELS], cross, linear, add_in = 0, add_time = 0;
    if ((rc = need(c, "conv_in.weight", 4, &t))) return rc;
    in = (int)t->shape[1];
    if ((rc = need(c, "conv_out.weight", 4, &t))) return rc;
    out = (int)t->shape[0];
    int n = count_index(c, "down_blocks."), lpb = count_index(c, "down_blocks.0.resnets.");
    if (n < 1 || n > MAX_LEVELS || count_index(c, "up_blocks.") != n || lpb < 1)
        return sd_error(SD_ERR_FORMAT, "unet: cannot tell the block structure: %d down blocks, %d up "
                        "blocks, %d resnets in the first (supported: 1 to %d levels)",
                        n, count_index(c, "up_blocks."), lpb, MAX_LEVELS);
    cJSON *down = cJSON_CreateArray(), *up = cJSON_CreateArray();
    for (int i = 0; i < n; i++) {
        if ((rc = need(c, cat(p, "down_blocks.%d.resnets.0.conv2.weight", i), 4, &t))) {
            cJSON_Delete(down);
            cJSON_Delete(up);
            return rc;
        }
        ch[i] = (int)t->shape[0];
        int a = component_find(c, cat(p, "down_blocks.%d.attentions.0.proj_in.weight", i)) != NULL;
        /* SDXL stacks several transformer blocks per attention (diffusers: 1 where there is none) */
        depth[i] = a ? count_index(c, cat(p, "down_blocks.%d.attentions.0.transformer_blocks.", i)) : 1;
        cJSON_AddItemToArray(down, cJSON_CreateString(a ? "CrossAttnDownBlock2D" : "DownBlock2D"));
        a = component_find(c, cat(p, "up_blocks.%d.attentions.0.proj_in.weight", i)) != NULL;
        cJSON_AddItemToArray(up, cJSON_CreateString(a ? "CrossAttnUpBlock2D" : "UpBlock2D"));
    }
    if ((rc = need(c, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, &t))) {
        cJSON_Delete(down);
        cJSON_Delete(up);
        return rc;
    }
    cross = (int)t->shape[1];
    t = component_find(c, "mid_block.attentions.0.proj_in.weight");
    linear = t && t->ndim == 2;
    /* SDXL's text_time embedding: its input is the pooled text embedding (the second text
     * encoder's projection width) and 6 sinusoidal embeddings of addition_time_embed_dim each */
    if ((t = component_find(c, "add_embedding.linear_1.weight"))) {
        add_in = t->ndim == 2 ? (int)t->shape[1] : 0;
        if (pooled_dim > 0 && add_in > pooled_dim && (add_in - pooled_dim) % 6 == 0) add_time = (add_in - pooled_dim) / 6;
        if (!add_time) {
            cJSON_Delete(down);
            cJSON_Delete(up);
            return sd_error(SD_ERR_SHAPE, "unet: tensor 'add_embedding.linear_1.weight' (label_emb.0.0) has %d inputs: not "
                            "the pooled text embedding (%d, the second text encoder's projection) plus 6 time "
                            "embeddings", add_in, pooled_dim);
        }
    }
    /* Heads are not stored either. LDM v1 configs say num_heads 8; v2 configs say
     * num_head_channels 64, i.e. heads = width / 64 per level (diffusers' [5, 10, 20, 20], which
     * it calls attention_head_dim). Widths neither rule divides (test models): the largest head
     * count up to 8 that divides every width (SD1), one head per level (SD2). */
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(cfg, "act_fn", "silu");
    if (add_time) {
        cJSON_AddStringToObject(cfg, "addition_embed_type", "text_time");
        cJSON_AddNumberToObject(cfg, "addition_time_embed_dim", add_time);
    }
    if (layout == MODEL_LAYOUT_LDM_SD2 || layout == MODEL_LAYOUT_LDM_SDXL) {   /* 64-wide heads */
        for (int i = 0; i < n; i++) heads[i] = ch[i] % 64 == 0 ? ch[i] / 64 : 1;
        cJSON_AddItemToObject(cfg, "attention_head_dim", cJSON_CreateIntArray(heads, n));
    } else {
        int g = ch[0];
        for (int i = 1; i < n; i++) g = gcd(g, ch[i]);
        int h = 8;
        while (g % h) h--;
        cJSON_AddNumberToObject(cfg, "attention_head_dim", h);
    }
    cJSON_AddItemToObject(cfg, "block_out_channels", cJSON_CreateIntArray(ch, n));
    cJSON_AddBoolToObject(cfg, "center_input_sample", 0);
    cJSON_AddNumberToObject(cfg, "cross_attention_dim", cross);
    cJSON_AddItemToObject(cfg, "down_block_types", down);
    cJSON_AddNumberToObject(cfg, "downsample_padding", 1);
    cJSON_AddBoolToObject(cfg, "flip_sin_to_cos", 1);
    cJSON_AddNumberToObject(cfg, "freq_shift", 0);
    cJSON_AddNumberToObject(cfg, "in_channels", in);
    cJSON_AddNumberToObject(cfg, "layers_per_block", lpb);
    cJSON_AddNumberToObject(cfg, "mid_block_scale_factor", 1);
    cJSON_AddStringToObject(cfg, "mid_block_type", "UNetMidBlock2DCrossAttn");
    cJSON_AddNumberToObject(cfg, "norm_eps", 1e-5);
    cJSON_AddNumberToObject(cfg, "norm_num_groups", groups_for(ch, n));
    cJSON_AddNumberToObject(cfg, "out_channels", out);
    if (add_time) cJSON_AddNumberToObject(cfg, "projection_class_embeddings_input_dim", add_in);
    /* 512 px; SD 2.x 768-v models use 96; SDXL 1024 px */
    cJSON_AddNumberToObject(cfg, "sample_size", layout == MODEL_LAYOUT_LDM_SDXL ? 128 : 64);
    if (layout == MODEL_LAYOUT_LDM_SDXL)
        cJSON_AddItemToObject(cfg, "transformer_layers_per_block", cJSON_CreateIntArray(depth, n));
    cJSON_AddItemToObject(cfg, "up_block_types", up);
    cJSON_AddBoolToObject(cfg, "upcast_attention", 0);
    cJSON_AddBoolToObject(cfg, "use_linear_projection", linear);
    set_config(c, cfg);
    return 0;
}

int model_derive_vae_config(model_component_t *c, model_layout_t layout) {
    const st_tensor_t *t;
    char p[NAMES_MAX];
    int rc, in, out, lat, ch[MAX_LEVELS];
    if ((rc = need(c, "encoder.conv_in.weight", 4, &t))) return rc;
    in = (int)t->shape[1];
    if ((rc = need(c, "decoder.conv_out.weight", 4, &t))) return rc;
    out = (int)t->shape[0];
    if ((rc = need(c, "decoder.conv_in.weight", 4, &t))) return rc;
    lat = (int)t->shape[1];
    int n = count_index(c, "encoder.down_blocks."), lpb = count_index(c, "encoder.down_blocks.0.resnets.");
    if (n < 1 || n > MAX_LEVELS || lpb < 1)
        return sd_error(SD_ERR_FORMAT, "vae: cannot tell the block structure: %d encoder levels, %d resnets "
                        "in the first (supported: 1 to %d levels)", n, lpb, MAX_LEVELS);
    for (int i = 0; i < n; i++) {
        if ((rc = need(c, cat(p, "encoder.down_blocks.%d.resnets.0.conv1.weight", i), 4, &t))) return rc;
        ch[i] = (int)t->shape[0];
    }
    const char *down[MAX_LEVELS], *up[MAX_LEVELS];
    for (int i = 0; i < n; i++) down[i] = "DownEncoderBlock2D", up[i] = "UpDecoderBlock2D";
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "_class_name", "AutoencoderKL");
    cJSON_AddStringToObject(cfg, "act_fn", "silu");
    cJSON_AddItemToObject(cfg, "block_out_channels", cJSON_CreateIntArray(ch, n));
    cJSON_AddItemToObject(cfg, "down_block_types", cJSON_CreateStringArray(down, n));
    cJSON_AddNumberToObject(cfg, "in_channels", in);
    cJSON_AddNumberToObject(cfg, "latent_channels", lat);
    cJSON_AddNumberToObject(cfg, "layers_per_block", lpb);
    cJSON_AddNumberToObject(cfg, "norm_num_groups", groups_for(ch, n));
    cJSON_AddNumberToObject(cfg, "out_channels", out);
    /* SDXL's VAE is SD's architecture retrained, with its own latent scale */
    cJSON_AddNumberToObject(cfg, "sample_size", layout == MODEL_LAYOUT_LDM_SDXL ? 1024 : 512);
    cJSON_AddNumberToObject(cfg, "scaling_factor", layout == MODEL_LAYOUT_LDM_SDXL ? 0.13025 : 0.18215);
    cJSON_AddItemToObject(cfg, "up_block_types", cJSON_CreateStringArray(up, n));
    set_config(c, cfg);
    return 0;
}

int model_derive_text_config(model_component_t *c, model_layout_t layout) {
    const st_tensor_t *t;
    int rc, vocab, hid, pos, inter;
    if ((rc = need(c, "text_model.embeddings.token_embedding.weight", 2, &t))) return rc;
    vocab = (int)t->shape[0];
    hid = (int)t->shape[1];
    if ((rc = need(c, "text_model.embeddings.position_embedding.weight", 2, &t))) return rc;
    pos = (int)t->shape[0];
    if ((rc = need(c, "text_model.encoder.layers.0.mlp.fc1.weight", 2, &t))) return rc;
    inter = (int)t->shape[0];
    int layers = count_index(c, "text_model.encoder.layers.");
    /* OpenCLIP: SD 2's encoder, SDXL's second (with its projection, [projection_dim, hidden]) */
    const int te2 = c->name && !strcmp(c->name, "text_encoder_2");
    int sd2 = layout == MODEL_LAYOUT_LDM_SD2 || te2, proj = sd2 ? 512 : hid;
    if (te2) {
        if ((rc = need(c, "text_projection.weight", 2, &t))) return rc;
        proj = (int)t->shape[0];
    }
    cJSON *cfg = cJSON_CreateObject();
    const char *arch = te2 ? "CLIPTextModelWithProjection" : "CLIPTextModel";
    cJSON_AddItemToObject(cfg, "architectures", cJSON_CreateStringArray(&arch, 1));
    cJSON_AddNumberToObject(cfg, "bos_token_id", 0);
    cJSON_AddNumberToObject(cfg, "eos_token_id", 2);
    /* CLIP-L (SD1) uses quick_gelu, OpenCLIP-H (SD2) the exact erf GELU */
    cJSON_AddStringToObject(cfg, "hidden_act", sd2 ? "gelu" : "quick_gelu");
    cJSON_AddNumberToObject(cfg, "hidden_size", hid);
    cJSON_AddNumberToObject(cfg, "intermediate_size", inter);
    cJSON_AddNumberToObject(cfg, "layer_norm_eps", 1e-5);
    cJSON_AddNumberToObject(cfg, "max_position_embeddings", pos);
    cJSON_AddStringToObject(cfg, "model_type", "clip_text_model");
    /* heads are not stored: both CLIPs use 64-wide heads (12 for 768, 16 for 1024) */
    cJSON_AddNumberToObject(cfg, "num_attention_heads", hid % 64 == 0 ? hid / 64 : 1);
    cJSON_AddNumberToObject(cfg, "num_hidden_layers", layers);
    cJSON_AddNumberToObject(cfg, "pad_token_id", 1);
    cJSON_AddNumberToObject(cfg, "projection_dim", proj);
    cJSON_AddNumberToObject(cfg, "vocab_size", vocab);
    set_config(c, cfg);
    return 0;
}

cJSON *model_default_scheduler_config(model_layout_t layout) {
    cJSON *cfg = cJSON_CreateObject();
    if (layout == MODEL_LAYOUT_LDM_SDXL) {   /* SDXL base 1.0's scheduler/scheduler_config.json */
        cJSON_AddStringToObject(cfg, "_class_name", "EulerDiscreteScheduler");
        cJSON_AddNumberToObject(cfg, "beta_end", 0.012);
        cJSON_AddStringToObject(cfg, "beta_schedule", "scaled_linear");
        cJSON_AddNumberToObject(cfg, "beta_start", 0.00085);
        cJSON_AddBoolToObject(cfg, "clip_sample", 0);
        cJSON_AddStringToObject(cfg, "interpolation_type", "linear");
        cJSON_AddNumberToObject(cfg, "num_train_timesteps", 1000);
        cJSON_AddStringToObject(cfg, "prediction_type", "epsilon");
        cJSON_AddNumberToObject(cfg, "sample_max_value", 1.0);
        cJSON_AddBoolToObject(cfg, "set_alpha_to_one", 0);
        cJSON_AddBoolToObject(cfg, "skip_prk_steps", 1);
        cJSON_AddNumberToObject(cfg, "steps_offset", 1);
        cJSON_AddStringToObject(cfg, "timestep_spacing", "leading");
        cJSON_AddBoolToObject(cfg, "use_karras_sigmas", 0);
        return cfg;
    }
    cJSON_AddStringToObject(cfg, "_class_name", "PNDMScheduler");
    cJSON_AddNumberToObject(cfg, "beta_end", 0.012);
    cJSON_AddStringToObject(cfg, "beta_schedule", "scaled_linear");
    cJSON_AddNumberToObject(cfg, "beta_start", 0.00085);
    cJSON_AddBoolToObject(cfg, "clip_sample", 0);
    cJSON_AddNumberToObject(cfg, "num_train_timesteps", 1000);
    cJSON_AddStringToObject(cfg, "prediction_type", "epsilon");
    cJSON_AddBoolToObject(cfg, "set_alpha_to_one", 0);
    cJSON_AddBoolToObject(cfg, "skip_prk_steps", 1);
    cJSON_AddNumberToObject(cfg, "steps_offset", 1);
    cJSON_AddStringToObject(cfg, "timestep_spacing", "leading");
    return cfg;
}
