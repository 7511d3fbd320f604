/* Component configs: typed access with errors naming component and key, the walk over every
 * tensor a config implies (UNet2DConditionModel, AutoencoderKL, CLIPTextModel, as diffusers and
 * transformers build them) with the validation built on it, and the derivation of configs from
 * tensor shapes for single-file checkpoints. */
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

static int config_bool_or(const model_component_t *c, const char *key, int dflt, int *out) {
    WHAT(c);
    return json_bool(c->config, key, dflt, out, what);
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

/* A string array (block types); entries point into the config. */
static int config_string_array(const model_component_t *c, const char *key, const char **out, int max, int *n) {
    WHAT(c);
    return json_str_array(c->config, key, out, max, n, what);
}

/* Keys that would add modules this code base does not build: they must be absent or null. */
static int require_absent(const model_component_t *c, const char *const *keys, int n) {
    WHAT(c);
    int rc = SD_OK;
    for (int i = 0; i < n && !rc; i++) rc = json_require_unset(c->config, keys[i], what);
    return rc;
}

static int require_string(const model_component_t *c, const char *key, const char *dflt, const char *want) {
    WHAT(c);
    (void)dflt;   /* every caller's default is `want` */
    return json_require_str(c->config, key, want, what);
}

/* ---------------------------------------------------------------------------------------- */
/* The tensors a config implies                                                             */

typedef struct {
    model_tensor_fn fn;
    void *ctx;
    int rc;
} walk_t;

static void one(walk_t *w, const char *prefix, const char *leaf, int ndim, int64_t d0, int64_t d1,
                int64_t d2, int64_t d3) {
    if (w->rc) return;
    char name[NAMES_MAX];
    snprintf(name, sizeof name, "%s.%s", prefix, leaf);
    const int64_t shape[4] = {d0, d1, d2, d3};
    w->rc = w->fn(w->ctx, name, ndim, shape);
}

static void norm(walk_t *w, const char *p, int ch) {
    one(w, p, "weight", 1, ch, 0, 0, 0);
    one(w, p, "bias", 1, ch, 0, 0, 0);
}

static void lin(walk_t *w, const char *p, int out, int in, int bias) {
    one(w, p, "weight", 2, out, in, 0, 0);
    if (bias) one(w, p, "bias", 1, out, 0, 0, 0);
}

static void conv(walk_t *w, const char *p, int out, int in, int k) {
    one(w, p, "weight", 4, out, in, k, k);
    one(w, p, "bias", 1, out, 0, 0, 0);
}

static const char *cat(char *buf, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *cat(char *buf, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, NAMES_MAX, fmt, ap);
    va_end(ap);
    return buf;
}

/* diffusers ResnetBlock2D; temb 0: the VAE's, without time_emb_proj. */
static void resnet(walk_t *w, const char *p, int cin, int cout, int temb) {
    char b[NAMES_MAX];
    norm(w, cat(b, "%s.norm1", p), cin);
    conv(w, cat(b, "%s.conv1", p), cout, cin, 3);
    if (temb) lin(w, cat(b, "%s.time_emb_proj", p), cout, temb, 1);
    norm(w, cat(b, "%s.norm2", p), cout);
    conv(w, cat(b, "%s.conv2", p), cout, cout, 3);
    if (cin != cout) conv(w, cat(b, "%s.conv_shortcut", p), cout, cin, 1);
}

/* Transformer2DModel with one BasicTransformerBlock: self-attention, cross-attention, GEGLU. */
static void transformer(walk_t *w, const char *p, int ch, int cross, int linear) {
    char b[NAMES_MAX];
    norm(w, cat(b, "%s.norm", p), ch);
    if (linear) lin(w, cat(b, "%s.proj_in", p), ch, ch, 1);
    else conv(w, cat(b, "%s.proj_in", p), ch, ch, 1);
    const char *q[3] = {"to_q", "to_k", "to_v"};
    norm(w, cat(b, "%s.transformer_blocks.0.norm1", p), ch);
    for (int i = 0; i < 3; i++) lin(w, cat(b, "%s.transformer_blocks.0.attn1.%s", p, q[i]), ch, ch, 0);
    lin(w, cat(b, "%s.transformer_blocks.0.attn1.to_out.0", p), ch, ch, 1);
    norm(w, cat(b, "%s.transformer_blocks.0.norm2", p), ch);
    for (int i = 0; i < 3; i++)
        lin(w, cat(b, "%s.transformer_blocks.0.attn2.%s", p, q[i]), ch, i == 0 ? ch : cross, 0);
    lin(w, cat(b, "%s.transformer_blocks.0.attn2.to_out.0", p), ch, ch, 1);
    norm(w, cat(b, "%s.transformer_blocks.0.norm3", p), ch);
    lin(w, cat(b, "%s.transformer_blocks.0.ff.net.0.proj", p), 8 * ch, ch, 1);
    lin(w, cat(b, "%s.transformer_blocks.0.ff.net.2", p), ch, 4 * ch, 1);
    if (linear) lin(w, cat(b, "%s.proj_out", p), ch, ch, 1);
    else conv(w, cat(b, "%s.proj_out", p), ch, ch, 1);
}

static int check_positive(const model_component_t *c, const char *key, const int *v, int n) {
    for (int i = 0; i < n; i++)
        if (v[i] < 1) return sd_error(SD_ERR_FORMAT, "%s config: %s must be positive", c->name, key);
    return 0;
}

/* norm_num_groups must divide every block width (concatenated skip inputs are sums of them). */
static int check_groups(const model_component_t *c, int groups, const int *ch, int n) {
    if (groups < 1) return sd_error(SD_ERR_FORMAT, "%s config: norm_num_groups must be positive", c->name);
    for (int i = 0; i < n; i++)
        if (ch[i] % groups)
            return sd_error(SD_ERR_FORMAT, "%s config: norm_num_groups %d does not divide block_out_channels "
                            "entry %d", c->name, groups, ch[i]);
    return 0;
}

static int unet_walk(const model_component_t *c, walk_t *w) {
    static const char *const unsupported[] = {
        "class_embed_type", "addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim",
        "num_class_embeds", "time_embedding_dim", "only_cross_attention", "dual_cross_attention",
        "projection_class_embeddings_input_dim"};
    int ch[MAX_LEVELS], heads[MAX_LEVELS], n = 0, nh = 0, nd = 0, nu = 0, in = 0, out = 0, lpb = 0;
    int cross = 0, linear = 0, groups = 0, tl = 0, k = 0;
    const char *down[MAX_LEVELS], *up[MAX_LEVELS];
    int rc;
    if ((rc = config_int_array(c, "block_out_channels", ch, MAX_LEVELS, &n)) ||
        (rc = check_positive(c, "block_out_channels", ch, n)) ||
        (rc = config_int(c, "in_channels", &in)) || (rc = config_int(c, "out_channels", &out)) ||
        (rc = config_int(c, "layers_per_block", &lpb)) ||
        (rc = config_int(c, "cross_attention_dim", &cross)) ||
        (rc = config_int_array(c, "attention_head_dim", heads, MAX_LEVELS, &nh)) ||
        (rc = config_string_array(c, "down_block_types", down, MAX_LEVELS, &nd)) ||
        (rc = config_string_array(c, "up_block_types", up, MAX_LEVELS, &nu)) ||
        (rc = config_bool_or(c, "use_linear_projection", 0, &linear)) ||
        (rc = config_int_or(c, "norm_num_groups", 32, &groups)) ||
        (rc = config_int_or(c, "transformer_layers_per_block", 1, &tl)) ||
        (rc = require_absent(c, unsupported, (int)(sizeof unsupported / sizeof *unsupported))) ||
        (rc = require_string(c, "mid_block_type", "UNetMidBlock2DCrossAttn", "UNetMidBlock2DCrossAttn")) ||
        (rc = require_string(c, "resnet_time_scale_shift", "default", "default")) ||
        (rc = require_string(c, "time_embedding_type", "positional", "positional")) ||
        (rc = config_int_or(c, "conv_in_kernel", 3, &k)) || (k != 3 && (rc = sd_error(SD_ERR_FORMAT,
            "%s config: conv_in_kernel %d is not supported (only 3)", c->name, k))) ||
        (rc = config_int_or(c, "conv_out_kernel", 3, &k)) || (k != 3 && (rc = sd_error(SD_ERR_FORMAT,
            "%s config: conv_out_kernel %d is not supported (only 3)", c->name, k))) ||
        (rc = check_groups(c, groups, ch, n)))
        return rc;
    if (n < 1 || nd != n || nu != n)
        return sd_error(SD_ERR_FORMAT, "%s config: %d block_out_channels but %d down_block_types and %d "
                        "up_block_types", c->name, n, nd, nu);
    if (nh != 1 && nh != n)
        return sd_error(SD_ERR_FORMAT, "%s config: attention_head_dim has %d entries for %d blocks",
                        c->name, nh, n);
    if (in < 1 || out < 1 || lpb < 1 || cross < 1 || tl != 1)
        return sd_error(SD_ERR_FORMAT, "%s config: in_channels, out_channels, layers_per_block and "
                        "cross_attention_dim must be positive, transformer_layers_per_block 1", c->name);
    int attn_down[MAX_LEVELS], attn_up[MAX_LEVELS];
    for (int i = 0; i < n; i++) {
        attn_down[i] = !strcmp(down[i], "CrossAttnDownBlock2D");
        attn_up[i] = !strcmp(up[i], "CrossAttnUpBlock2D");
        if (!attn_down[i] && strcmp(down[i], "DownBlock2D"))
            return sd_error(SD_ERR_FORMAT, "%s config: down block type '%s' is not supported", c->name, down[i]);
        if (!attn_up[i] && strcmp(up[i], "UpBlock2D"))
            return sd_error(SD_ERR_FORMAT, "%s config: up block type '%s' is not supported", c->name, up[i]);
        /* diffusers: num_attention_heads = attention_head_dim, head size = channels / heads;
         * the up path uses the list reversed, so level by level the check is the same */
        int h = heads[nh == 1 ? 0 : i];
        if (h < 1 || ch[i] % h)
            return sd_error(SD_ERR_FORMAT, "%s config: attention_head_dim %d does not divide %d channels",
                            c->name, h, ch[i]);
    }

    int temb = 4 * ch[0];
    char p[NAMES_MAX];
    conv(w, "conv_in", ch[0], in, 3);
    lin(w, "time_embedding.linear_1", temb, ch[0], 1);
    lin(w, "time_embedding.linear_2", temb, temb, 1);
    int cout = ch[0];
    for (int i = 0; i < n; i++) {
        int cin = cout;
        cout = ch[i];
        for (int j = 0; j < lpb; j++) {
            resnet(w, cat(p, "down_blocks.%d.resnets.%d", i, j), j == 0 ? cin : cout, cout, temb);
            if (attn_down[i]) transformer(w, cat(p, "down_blocks.%d.attentions.%d", i, j), cout, cross, linear);
        }
        if (i < n - 1) conv(w, cat(p, "down_blocks.%d.downsamplers.0.conv", i), cout, cout, 3);
    }
    int last = ch[n - 1];
    resnet(w, "mid_block.resnets.0", last, last, temb);
    transformer(w, "mid_block.attentions.0", last, cross, linear);
    resnet(w, "mid_block.resnets.1", last, last, temb);
    cout = last;
    for (int i = 0; i < n; i++) {
        int prev = cout;
        cout = ch[n - 1 - i];
        int cin = ch[n - 1 - (i + 1 < n ? i + 1 : n - 1)];
        for (int j = 0; j <= lpb; j++) {   /* one more resnet than down: it takes the level's input skip */
            int skip = j == lpb ? cin : cout;
            resnet(w, cat(p, "up_blocks.%d.resnets.%d", i, j), (j == 0 ? prev : cout) + skip, cout, temb);
            if (attn_up[i]) transformer(w, cat(p, "up_blocks.%d.attentions.%d", i, j), cout, cross, linear);
        }
        if (i < n - 1) conv(w, cat(p, "up_blocks.%d.upsamplers.0.conv", i), cout, cout, 3);
    }
    norm(w, "conv_norm_out", ch[0]);
    conv(w, "conv_out", out, ch[0], 3);
    return w->rc;
}

/* UNetMidBlock2D of the autoencoder: resnet, single-head attention with biases, resnet. */
static void vae_mid(walk_t *w, const char *side, int ch) {
    char p[NAMES_MAX];
    resnet(w, cat(p, "%s.mid_block.resnets.0", side), ch, ch, 0);
    norm(w, cat(p, "%s.mid_block.attentions.0.group_norm", side), ch);
    const char *q[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int i = 0; i < 4; i++) lin(w, cat(p, "%s.mid_block.attentions.0.%s", side, q[i]), ch, ch, 1);
    resnet(w, cat(p, "%s.mid_block.resnets.1", side), ch, ch, 0);
}

static int vae_walk(const model_component_t *c, walk_t *w) {
    int ch[MAX_LEVELS], n = 0, in = 0, out = 0, lat = 0, lpb = 0, groups = 0, b = 0;
    const char *types[MAX_LEVELS];
    int nt = 0, rc;
    if ((rc = config_int_array(c, "block_out_channels", ch, MAX_LEVELS, &n)) ||
        (rc = check_positive(c, "block_out_channels", ch, n)) ||
        (rc = config_int(c, "in_channels", &in)) || (rc = config_int(c, "out_channels", &out)) ||
        (rc = config_int(c, "latent_channels", &lat)) ||
        (rc = config_int(c, "layers_per_block", &lpb)) ||
        (rc = config_int_or(c, "norm_num_groups", 32, &groups)) ||
        (rc = check_groups(c, groups, ch, n)))
        return rc;
    if (n < 1 || in < 1 || out < 1 || lat < 1 || lpb < 1)
        return sd_error(SD_ERR_FORMAT, "%s config: channels and layers_per_block must be positive", c->name);
    static const char *const keys[2] = {"down_block_types", "up_block_types"};
    static const char *const want[2] = {"DownEncoderBlock2D", "UpDecoderBlock2D"};
    for (int k = 0; k < 2; k++) {
        if (!json_item(c->config, keys[k])) continue;
        if ((rc = config_string_array(c, keys[k], types, MAX_LEVELS, &nt))) return rc;
        if (nt != n)
            return sd_error(SD_ERR_FORMAT, "%s config: %d %s for %d block_out_channels", c->name, nt, keys[k], n);
        for (int i = 0; i < n; i++)
            if (strcmp(types[i], want[k]))
                return sd_error(SD_ERR_FORMAT, "%s config: block type '%s' is not supported (only %s)",
                                c->name, types[i], want[k]);
    }
    static const char *const flags[3] = {"mid_block_add_attention", "use_quant_conv", "use_post_quant_conv"};
    for (int k = 0; k < 3; k++) {
        if ((rc = config_bool_or(c, flags[k], 1, &b))) return rc;
        if (!b) return sd_error(SD_ERR_FORMAT, "%s config: %s false is not supported", c->name, flags[k]);
    }

    char p[NAMES_MAX];
    conv(w, "encoder.conv_in", ch[0], in, 3);
    int cout = ch[0];
    for (int i = 0; i < n; i++) {
        int cin = cout;
        cout = ch[i];
        for (int j = 0; j < lpb; j++)
            resnet(w, cat(p, "encoder.down_blocks.%d.resnets.%d", i, j), j == 0 ? cin : cout, cout, 0);
        if (i < n - 1) conv(w, cat(p, "encoder.down_blocks.%d.downsamplers.0.conv", i), cout, cout, 3);
    }
    vae_mid(w, "encoder", ch[n - 1]);
    norm(w, "encoder.conv_norm_out", ch[n - 1]);
    conv(w, "encoder.conv_out", 2 * lat, ch[n - 1], 3);   /* mean and log-variance */
    conv(w, "quant_conv", 2 * lat, 2 * lat, 1);
    conv(w, "post_quant_conv", lat, lat, 1);
    conv(w, "decoder.conv_in", ch[n - 1], lat, 3);
    vae_mid(w, "decoder", ch[n - 1]);
    cout = ch[n - 1];
    for (int i = 0; i < n; i++) {
        int prev = cout;
        cout = ch[n - 1 - i];
        for (int j = 0; j <= lpb; j++)
            resnet(w, cat(p, "decoder.up_blocks.%d.resnets.%d", i, j), j == 0 ? prev : cout, cout, 0);
        if (i < n - 1) conv(w, cat(p, "decoder.up_blocks.%d.upsamplers.0.conv", i), cout, cout, 3);
    }
    norm(w, "decoder.conv_norm_out", ch[0]);
    conv(w, "decoder.conv_out", out, ch[0], 3);
    return w->rc;
}

static int text_walk(const model_component_t *c, walk_t *w) {
    int hid = 0, inter = 0, layers = 0, heads = 0, vocab = 0, pos = 0, rc;
    const char *act = NULL;
    if ((rc = config_int(c, "hidden_size", &hid)) || (rc = config_int(c, "intermediate_size", &inter)) ||
        (rc = config_int(c, "num_hidden_layers", &layers)) ||
        (rc = config_int(c, "num_attention_heads", &heads)) || (rc = config_int(c, "vocab_size", &vocab)) ||
        (rc = config_int(c, "max_position_embeddings", &pos)) ||
        (rc = config_string_or(c, "hidden_act", "quick_gelu", &act)))
        return rc;
    if (hid < 1 || inter < 1 || layers < 1 || heads < 1 || vocab < 1 || pos < 1 || hid % heads)
        return sd_error(SD_ERR_FORMAT, "%s config: sizes must be positive and num_attention_heads (%d) must "
                        "divide hidden_size (%d)", c->name, heads, hid);
    if (strcmp(act, "quick_gelu") && strcmp(act, "gelu"))
        return sd_error(SD_ERR_FORMAT, "%s config: hidden_act '%s' is not supported (quick_gelu, gelu)",
                        c->name, act);
    char p[NAMES_MAX];
    one(w, "text_model.embeddings.token_embedding", "weight", 2, vocab, hid, 0, 0);
    one(w, "text_model.embeddings.position_embedding", "weight", 2, pos, hid, 0, 0);
    const char *q[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int i = 0; i < layers; i++) {
        norm(w, cat(p, "text_model.encoder.layers.%d.layer_norm1", i), hid);
        for (int k = 0; k < 4; k++) lin(w, cat(p, "text_model.encoder.layers.%d.self_attn.%s", i, q[k]), hid, hid, 1);
        norm(w, cat(p, "text_model.encoder.layers.%d.layer_norm2", i), hid);
        lin(w, cat(p, "text_model.encoder.layers.%d.mlp.fc1", i), inter, hid, 1);
        lin(w, cat(p, "text_model.encoder.layers.%d.mlp.fc2", i), hid, inter, 1);
    }
    norm(w, "text_model.final_layer_norm", hid);
    return w->rc;
}

int component_expected_tensors(const model_component_t *c, model_tensor_fn fn, void *ctx) {
    walk_t w = {fn, ctx, 0};
    if (!c->name) return sd_error(SD_ERR_ARG, "component without a name");
    if (!strcmp(c->name, "unet")) return unet_walk(c, &w);
    if (!strcmp(c->name, "vae")) return vae_walk(c, &w);
    if (!strcmp(c->name, "text_encoder")) return text_walk(c, &w);
    return sd_error(SD_ERR_ARG, "no tensor list for a component named '%s'", c->name);
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

int model_derive_unet_config(model_component_t *c, model_layout_t layout) {
    const st_tensor_t *t;
    char p[NAMES_MAX];
    int rc, in, out, ch[MAX_LEVELS], heads[MAX_LEVELS], cross, linear;
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
    /* Heads are not stored either. LDM v1 configs say num_heads 8; v2 configs say
     * num_head_channels 64, i.e. heads = width / 64 per level (diffusers' [5, 10, 20, 20], which
     * it calls attention_head_dim). Widths neither rule divides (test models): the largest head
     * count up to 8 that divides every width (SD1), one head per level (SD2). */
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "_class_name", "UNet2DConditionModel");
    cJSON_AddStringToObject(cfg, "act_fn", "silu");
    if (layout == MODEL_LAYOUT_LDM_SD2) {
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
    cJSON_AddNumberToObject(cfg, "sample_size", 64);   /* 512 px; SD 2.x 768-v models use 96 */
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
    (void)layout;
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
    cJSON_AddNumberToObject(cfg, "sample_size", 512);
    cJSON_AddNumberToObject(cfg, "scaling_factor", 0.18215);
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
    int sd2 = layout == MODEL_LAYOUT_LDM_SD2;
    cJSON *cfg = cJSON_CreateObject();
    const char *arch = "CLIPTextModel";
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
    cJSON_AddNumberToObject(cfg, "projection_dim", sd2 ? 512 : hid);
    cJSON_AddNumberToObject(cfg, "vocab_size", vocab);
    set_config(c, cfg);
    return 0;
}

cJSON *model_default_scheduler_config(void) {
    cJSON *cfg = cJSON_CreateObject();
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
