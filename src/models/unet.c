/* UNet2DConditionModel (unet.h): config.json parsing, construction of the parameter registry
 * and of the stage program (with its skip list) from the config, tensor loading, spectral
 * set-up, activation layouts, and unet_forward / unet_backward: time embedding, conv_in, the down / mid / up
 * blocks (unet_2d_blocks.c), conv_norm_out / SiLU / conv_out.
 * Architecture facts follow diffusers: unets/unet_2d_condition.py (construction, forward),
 * unets/unet_2d_blocks.py (CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn,
 * UpBlock2D, CrossAttnUpBlock2D), resnet.py, embeddings.py (timesteps). */
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/bump.h"
#include "base/error.h"
#include "base/json.h"
#include "base/scratch.h"
#include "base/str.h"
#include "models/unet.h"
#include "models/unet_internal.h"
#include "ops/ops.h"

/* Transformer2DModel's GroupNorm and BasicTransformerBlock's LayerNorms: fixed in diffusers. */
#define UNET_TRANSFORMER_GN_EPS 1e-6f
#define UNET_LN_EPS 1e-5f

/* ---------------------------------------------------------------------------------------------
 * config.json
 * ------------------------------------------------------------------------------------------- */

#define UNET_MAX_SAMPLE_SIZE 65536   /* latent pixels; anything larger is a broken config */
#define UNET_MAX_CHANNELS 65536      /* widest layer */
#define UNET_MAX_KERNEL 15           /* conv_in / conv_out */

/* Block types; diffusers' get_down_block / get_up_block drop a leading "UNetRes". */
static int block_type(const char *s, const char *plain, const char *attn) {
    if (strncmp(s, "UNetRes", 7) == 0) s += 7;
    if (strcmp(s, plain) == 0) return 0;
    if (strcmp(s, attn) == 0) return 1;
    return -1;
}

static int jblock_types(const cJSON *j, const char *key, const char *plain, const char *attn, int *out,
                        int *n, const char *what) {
    const cJSON *v = json_item(j, key);
    if (!v) { /* diffusers' default: 3 cross-attention blocks and a plain one (down), mirrored (up) */
        *n = 4;
        for (int i = 0; i < 4; i++) out[i] = (strcmp(plain, "DownBlock2D") == 0) ? (i < 3) : (i > 0);
        return SD_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) < 1 || cJSON_GetArraySize(v) > UNET_MAX_LEVELS)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be a list of 1 to %d block types", what, key,
                        UNET_MAX_LEVELS);
    *n = cJSON_GetArraySize(v);
    for (int i = 0; i < *n; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        int t = cJSON_IsString(e) ? block_type(e->valuestring, plain, attn) : -1;
        if (t < 0)
            return sd_error(SD_ERR_FORMAT, "%s: \"%s\"[%d] must be \"%s\" or \"%s\"", what, key, i, plain, attn);
        out[i] = t;
    }
    return SD_OK;
}

int unet_config_from_json(unet_config_t *cfg, const cJSON *json, const char *what) {
    memset(cfg, 0, sizeof *cfg);
    if (!what) what = "unet config";
    if (!cJSON_IsObject(json)) return sd_error(SD_ERR_FORMAT, "%s: not a JSON object", what);
    const cJSON *j = json;
    int rc, n_down, n_up;
#define TRY(x) do { if ((rc = (x)) != 0) return rc; } while (0)
    TRY(json_int(j, "in_channels", 4, &cfg->in_channels, what));
    TRY(json_int(j, "out_channels", 4, &cfg->out_channels, what));
    TRY(json_bool(j, "center_input_sample", 0, &cfg->center_input_sample, what));
    TRY(json_bool(j, "flip_sin_to_cos", 1, &cfg->flip_sin_to_cos, what));
    TRY(json_float(j, "freq_shift", 0.0f, &cfg->freq_shift, what));
    TRY(jblock_types(j, "down_block_types", "DownBlock2D", "CrossAttnDownBlock2D", cfg->down_attn, &n_down, what));
    TRY(jblock_types(j, "up_block_types", "UpBlock2D", "CrossAttnUpBlock2D", cfg->up_attn, &n_up, what));
    const cJSON *boc = json_item(j, "block_out_channels");
    if (!boc) {
        const int d[4] = {320, 640, 1280, 1280};
        cfg->n_levels = 4;
        memcpy(cfg->block_out_channels, d, sizeof d);
    } else {
        if (!cJSON_IsArray(boc) || cJSON_GetArraySize(boc) < 1 || cJSON_GetArraySize(boc) > UNET_MAX_LEVELS)
            return sd_error(SD_ERR_FORMAT, "%s: \"block_out_channels\" must be a list of 1 to %d integers", what,
                            UNET_MAX_LEVELS);
        cfg->n_levels = cJSON_GetArraySize(boc);
        TRY(json_int_list(j, "block_out_channels", 0, cfg->block_out_channels, cfg->n_levels, what));
    }
    const int n = cfg->n_levels;
    if (n_down != n || n_up != n)
        return sd_error(SD_ERR_FORMAT, "%s: %d down_block_types and %d up_block_types for %d block_out_channels",
                        what, n_down, n_up, n);
    for (int i = 0; i < n; i++)
        if (cfg->block_out_channels[i] < 1)
            return sd_error(SD_ERR_FORMAT, "%s: \"block_out_channels\"[%d] must be positive", what, i);
    const char *mid = NULL;
    TRY(json_str(j, "mid_block_type", "UNetMidBlock2DCrossAttn", &mid, what));
    /* an explicit null means no mid block */
    const cJSON *midv = cJSON_GetObjectItemCaseSensitive(j, "mid_block_type");
    if (midv && cJSON_IsNull(midv)) mid = NULL;
    if (mid && strcmp(mid, "UNetMidBlock2DCrossAttn") != 0)
        return sd_error(SD_ERR_FORMAT, "%s: \"mid_block_type\" = \"%s\" is not supported", what, mid);
    cfg->mid_block = mid != NULL;
    TRY(json_int_list(j, "layers_per_block", 2, cfg->layers_per_block, n, what));
    TRY(json_int(j, "downsample_padding", 1, &cfg->downsample_padding, what));
    TRY(json_float(j, "mid_block_scale_factor", 1.0f, &cfg->mid_block_scale_factor, what));
    TRY(json_require_str(j, "act_fn", "silu", what));
    if (!json_item(j, "norm_num_groups") && cJSON_GetObjectItemCaseSensitive(j, "norm_num_groups"))
        return sd_error(SD_ERR_FORMAT, "%s: \"norm_num_groups\" null is not supported", what);
    TRY(json_int(j, "norm_num_groups", 32, &cfg->norm_num_groups, what));
    TRY(json_float(j, "norm_eps", 1e-5f, &cfg->norm_eps, what));
    int cad[UNET_MAX_LEVELS];
    TRY(json_int_list(j, "cross_attention_dim", 1280, cad, n, what));
    for (int i = 1; i < n; i++)
        if (cad[i] != cad[0])
            return sd_error(SD_ERR_FORMAT, "%s: per-block \"cross_attention_dim\" values must be equal", what);
    cfg->cross_attention_dim = cad[0];
    TRY(json_int_list(j, "transformer_layers_per_block", 1, cfg->transformer_layers, n, what));
    TRY(json_require_unset(j, "reverse_transformer_layers_per_block", what));
    /* heads: num_attention_heads or (diffusers' historical naming) attention_head_dim */
    if (json_item(j, "num_attention_heads"))
        TRY(json_int_list(j, "num_attention_heads", 8, cfg->num_heads, n, what));
    else
        TRY(json_int_list(j, "attention_head_dim", 8, cfg->num_heads, n, what));
    TRY(json_require_false(j, "dual_cross_attention", what));
    TRY(json_require_false(j, "only_cross_attention", what));
    TRY(json_require_false(j, "mid_block_only_cross_attention", what));
    TRY(json_bool(j, "use_linear_projection", 0, &cfg->use_linear_projection, what));
    TRY(json_require_unset(j, "class_embed_type", what));
    /* SDXL's added conditioning; addition_embed_type_num_heads only matters to the "text" kinds */
    const char *add_type = NULL;
    TRY(json_str(j, "addition_embed_type", NULL, &add_type, what));
    if (add_type && strcmp(add_type, "text_time") != 0)
        return sd_error(SD_ERR_FORMAT, "%s: \"addition_embed_type\" = \"%s\" is not supported (only null or \"text_time\")",
                        what, add_type);
    cfg->addition_text_time = add_type != NULL;
    if (cfg->addition_text_time) {
        TRY(json_int_req(j, "addition_time_embed_dim", &cfg->addition_time_embed_dim, what));
        TRY(json_int_req(j, "projection_class_embeddings_input_dim", &cfg->addition_embed_in, what));
        if (cfg->addition_time_embed_dim < 2 || cfg->addition_time_embed_dim % 2 ||
            cfg->addition_time_embed_dim > UNET_MAX_CHANNELS)
            return sd_error(SD_ERR_FORMAT, "%s: \"addition_time_embed_dim\" is %d; it must be even, from 2 to %d", what,
                            cfg->addition_time_embed_dim, UNET_MAX_CHANNELS);
        cfg->addition_text_embeds_dim = cfg->addition_embed_in - UNET_N_TIME_IDS * cfg->addition_time_embed_dim;
        if (cfg->addition_text_embeds_dim < 1 || cfg->addition_embed_in > UNET_MAX_CHANNELS)
            return sd_error(SD_ERR_FORMAT,
                            "%s: \"projection_class_embeddings_input_dim\" is %d; with \"addition_time_embed_dim\" %d "
                            "it must be more than %d (%d time ids) and at most %d",
                            what, cfg->addition_embed_in, cfg->addition_time_embed_dim,
                            UNET_N_TIME_IDS * cfg->addition_time_embed_dim, UNET_N_TIME_IDS, UNET_MAX_CHANNELS);
    }
    TRY(json_require_unset(j, "num_class_embeds", what));
    TRY(json_require_unset(j, "encoder_hid_dim", what));
    TRY(json_require_unset(j, "encoder_hid_dim_type", what));
    TRY(json_require_unset(j, "time_cond_proj_dim", what));
    TRY(json_require_unset(j, "time_embedding_act_fn", what));
    TRY(json_require_unset(j, "timestep_post_act", what));
    TRY(json_require_unset(j, "cross_attention_norm", what));
    TRY(json_require_false(j, "class_embeddings_concat", what));
    TRY(json_require_false(j, "resnet_skip_time_act", what));
    TRY(json_require_str(j, "resnet_time_scale_shift", "default", what));
    TRY(json_require_str(j, "time_embedding_type", "positional", what));
    TRY(json_require_str(j, "attention_type", "default", what));
    TRY(json_int(j, "time_embedding_dim", 4 * cfg->block_out_channels[0], &cfg->time_embed_dim, what));
    TRY(json_int(j, "conv_in_kernel", 3, &cfg->conv_in_kernel, what));
    TRY(json_int(j, "conv_out_kernel", 3, &cfg->conv_out_kernel, what));
    const cJSON *ss = json_item(j, "sample_size");
    if (ss && cJSON_IsArray(ss)) ss = cJSON_GetArrayItem(ss, 0);
    cfg->sample_size = 0;
    if (ss && cJSON_IsNumber(ss)) {   /* range-checked as a double: (int)1e12 is undefined */
        const double v = ss->valuedouble;
        if (!(v >= 1 && v <= UNET_MAX_SAMPLE_SIZE && v == floor(v)))
            return sd_error(SD_ERR_FORMAT, "%s: \"sample_size\" is %.15g; it must be an integer from 1 to %d", what, v,
                            UNET_MAX_SAMPLE_SIZE);
        cfg->sample_size = (int)v;
    }
#undef TRY
    /* consistency */
    if (cfg->in_channels < 1 || cfg->out_channels < 1 || cfg->cross_attention_dim < 1 || cfg->time_embed_dim < 1)
        return sd_error(SD_ERR_FORMAT, "%s: channel counts must be positive", what);
    /* sizes beyond any UNet: a config alone builds the layer registry (validation), so a broken
     * one must not overflow a size or allocate without bound */
    int widest = cfg->in_channels > cfg->out_channels ? cfg->in_channels : cfg->out_channels;
    if (cfg->cross_attention_dim > widest) widest = cfg->cross_attention_dim;
    if (cfg->time_embed_dim > widest) widest = cfg->time_embed_dim;
    for (int i = 0; i < n; i++)
        if (cfg->block_out_channels[i] > widest) widest = cfg->block_out_channels[i];
    if (widest > UNET_MAX_CHANNELS)
        return sd_error(SD_ERR_FORMAT, "%s: %d channels (block_out_channels, in/out_channels, cross_attention_dim or "
                        "time_embedding_dim) is more than the %d supported", what, widest, UNET_MAX_CHANNELS);
    if (cfg->conv_in_kernel < 1 || cfg->conv_in_kernel % 2 == 0 || cfg->conv_out_kernel < 1 || cfg->conv_out_kernel % 2 == 0)
        return sd_error(SD_ERR_FORMAT, "%s: conv_in_kernel / conv_out_kernel must be odd", what);
    if (cfg->conv_in_kernel > UNET_MAX_KERNEL || cfg->conv_out_kernel > UNET_MAX_KERNEL)
        return sd_error(SD_ERR_FORMAT, "%s: conv_in_kernel / conv_out_kernel must be at most %d", what, UNET_MAX_KERNEL);
    if (cfg->downsample_padding != 0 && cfg->downsample_padding != 1)
        return sd_error(SD_ERR_FORMAT, "%s: \"downsample_padding\" must be 0 or 1", what);
    if (cfg->block_out_channels[0] % 2)
        return sd_error(SD_ERR_FORMAT, "%s: block_out_channels[0] must be even (timestep features)", what);
    const int G = cfg->norm_num_groups;
    for (int i = 0; i < n; i++) {
        const int C = cfg->block_out_channels[i];
        if (G < 1 || C % G)
            return sd_error(SD_ERR_FORMAT, "%s: norm_num_groups %d does not divide block_out_channels[%d] = %d", what,
                            G, i, C);
        if (cfg->layers_per_block[i] < 1)
            return sd_error(SD_ERR_FORMAT, "%s: \"layers_per_block\"[%d] must be positive", what, i);
        if (cfg->layers_per_block[i] > UNET_MAX_LAYERS_PER_BLOCK)
            return sd_error(SD_ERR_FORMAT, "%s: \"layers_per_block\"[%d] is %d, more than the %d supported", what, i,
                            cfg->layers_per_block[i], UNET_MAX_LAYERS_PER_BLOCK);
        const int attn_here = cfg->down_attn[i] || cfg->up_attn[n - 1 - i] || (i == n - 1 && cfg->mid_block);
        if (attn_here) {
            if (cfg->num_heads[i] < 1 || C % cfg->num_heads[i])
                return sd_error(SD_ERR_FORMAT, "%s: %d attention heads (%s) do not divide %d channels (level %d)",
                                what, cfg->num_heads[i],
                                json_item(j, "num_attention_heads") ? "num_attention_heads" : "attention_head_dim", C, i);
            if (cfg->transformer_layers[i] < 1 || cfg->transformer_layers[i] > UNET_MAX_TBLOCKS)
                return sd_error(SD_ERR_FORMAT, "%s: \"transformer_layers_per_block\"[%d] must be in 1..%d", what, i,
                                UNET_MAX_TBLOCKS);
        }
    }
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Construction: modules, registry (names), stages
 * ------------------------------------------------------------------------------------------- */

static char *xstrdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xstrdup_printf(const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    size_t n = strlen(buf) + 1;
    char *s = sd_xmalloc(n);
    memcpy(s, buf, n);
    return s;
}

static void reg_layer(unet_t *m, layer_t *l, char *name, int in, int out, int k, int conv, int stride,
                      int pad, int has_bias) {
    memset(l, 0, sizeof *l);
    l->name = name;
    l->in = in, l->out = out, l->k = k, l->conv = conv, l->stride = stride, l->pad = pad;
    l->bias = has_bias ? (float *)l : NULL; /* marker until the fp32 block is assigned */
    l->w.rows = out, l->w.cols = in * k * k;
    l->id = m->n_layers;
    /* proj_in / proj_out load either way; a file holds the form use_linear_projection says */
    const int as_conv = conv < 0 ? !m->cfg.use_linear_projection : conv;
    layer_registry_add(&m->reg, as_conv ? LAYER_CONV : LAYER_LINEAR, out, in, k, has_bias, "%s", name);
    m->layers = realloc(m->layers, sizeof *m->layers * (m->n_layers + 1));
    SD_CHECK(m->layers, "out of memory");
    m->layers[m->n_layers++] = l;
}

static void reg_norm(unet_t *m, norm_layer_t *nm, char *name, int C, int groups, float eps) {
    memset(nm, 0, sizeof *nm);
    nm->name = name;
    nm->C = C, nm->groups = groups, nm->eps = eps;
    nm->mode = NORMSHIFT_ELEMENT, nm->scale = 1.0f;
    nm->id = m->n_norms;
    layer_registry_add(&m->reg, LAYER_NORM, C, C, 1, 1, "%s", name);
    m->norms = realloc(m->norms, sizeof *m->norms * (m->n_norms + 1));
    SD_CHECK(m->norms, "out of memory");
    m->norms[m->n_norms++] = nm;
}

static void setup_resnet(unet_t *m, unet_resnet_t *r, const char *p, int in, int out, float scale) {
    const unet_config_t *c = &m->cfg;
    r->in = in, r->out = out, r->output_scale = scale;
    reg_norm(m, &r->norm1, xstrdup_printf("%s.norm1", p), in, c->norm_num_groups, c->norm_eps);
    reg_layer(m, &r->conv1, xstrdup_printf("%s.conv1", p), in, out, 3, 1, 1, 1, 1);
    reg_layer(m, &r->time_emb_proj, xstrdup_printf("%s.time_emb_proj", p), c->time_embed_dim, out, 1, 0, 1, 0, 1);
    reg_norm(m, &r->norm2, xstrdup_printf("%s.norm2", p), out, c->norm_num_groups, c->norm_eps);
    reg_layer(m, &r->conv2, xstrdup_printf("%s.conv2", p), out, out, 3, 1, 1, 1, 1);
    r->has_shortcut = in != out;
    if (r->has_shortcut)
        reg_layer(m, &r->conv_shortcut, xstrdup_printf("%s.conv_shortcut", p), in, out, 1, 1, 1, 0, 1);
}

static void setup_transformer(unet_t *m, unet_transformer_t *t, const char *p, int C, int heads, int n_blocks) {
    const unet_config_t *c = &m->cfg;
    t->C = C, t->D = C, t->heads = heads, t->head_dim = C / heads;
    t->ctx_dim = c->cross_attention_dim, t->n_blocks = n_blocks;
    const int D = t->D, Cc = t->ctx_dim;
    reg_norm(m, &t->norm, xstrdup_printf("%s.norm", p), C, c->norm_num_groups, UNET_TRANSFORMER_GN_EPS);
    reg_layer(m, &t->proj_in, xstrdup_printf("%s.proj_in", p), C, D, 1, -1, 1, 0, 1);
    t->blocks = sd_xcalloc((size_t)n_blocks, sizeof *t->blocks);
    for (int l = 0; l < n_blocks; l++) {
        unet_tblock_t *b = &t->blocks[l];
        char q[160];
        snprintf(q, sizeof q, "%s.transformer_blocks.%d", p, l);
        reg_norm(m, &b->norm1, xstrdup_printf("%s.norm1", q), D, 0, UNET_LN_EPS);
        reg_layer(m, &b->attn1.to_q, xstrdup_printf("%s.attn1.to_q", q), D, D, 1, 0, 1, 0, 0);
        reg_layer(m, &b->attn1.to_k, xstrdup_printf("%s.attn1.to_k", q), D, D, 1, 0, 1, 0, 0);
        reg_layer(m, &b->attn1.to_v, xstrdup_printf("%s.attn1.to_v", q), D, D, 1, 0, 1, 0, 0);
        reg_layer(m, &b->attn1.to_out, xstrdup_printf("%s.attn1.to_out.0", q), D, D, 1, 0, 1, 0, 1);
        reg_norm(m, &b->norm2, xstrdup_printf("%s.norm2", q), D, 0, UNET_LN_EPS);
        reg_layer(m, &b->attn2.to_q, xstrdup_printf("%s.attn2.to_q", q), D, D, 1, 0, 1, 0, 0);
        reg_layer(m, &b->attn2.to_k, xstrdup_printf("%s.attn2.to_k", q), Cc, D, 1, 0, 1, 0, 0);
        reg_layer(m, &b->attn2.to_v, xstrdup_printf("%s.attn2.to_v", q), Cc, D, 1, 0, 1, 0, 0);
        reg_layer(m, &b->attn2.to_out, xstrdup_printf("%s.attn2.to_out.0", q), D, D, 1, 0, 1, 0, 1);
        reg_norm(m, &b->norm3, xstrdup_printf("%s.norm3", q), D, 0, UNET_LN_EPS);
        reg_layer(m, &b->ff1, xstrdup_printf("%s.ff.net.0.proj", q), D, 8 * D, 1, 0, 1, 0, 1);
        reg_layer(m, &b->ff2, xstrdup_printf("%s.ff.net.2", q), 4 * D, D, 1, 0, 1, 0, 1);
    }
    reg_layer(m, &t->proj_out, xstrdup_printf("%s.proj_out", p), D, C, 1, -1, 1, 0, 1);
}

static void add_stage(unet_t *m, unet_stage_kind_t kind, int index, int level, int out_level, int c_in,
                      int c_out, int pop, int push) {
    unet_stage_t *s = &m->stages[m->n_stages++];
    s->kind = kind, s->index = index, s->level = level, s->out_level = out_level;
    s->c_in = c_in, s->c_out = c_out, s->pop = pop, s->push = push;
}

static int push_skip(unet_t *m, int channels, int level) {
    m->skip_channels[m->n_skips] = channels;
    m->skip_level[m->n_skips] = level;
    return m->n_skips++;
}

/* Builds modules, names and stages from m->cfg, in diffusers' construction order (which is
 * also the forward order). Returns 0 or SD_ERR_FORMAT (skips that do not line up). */
static int setup(unet_t *m) {
    const unet_config_t *c = &m->cfg;
    const int n = c->n_levels;
    const int *C = c->block_out_channels;
    /* counts */
    int n_res = 0, n_tr = 0, n_skips = 1;
    for (int i = 0; i < n; i++) {
        const int L = n - 1 - i; /* level of up block i */
        n_res += c->layers_per_block[i] + c->layers_per_block[L] + 1;
        n_tr += c->down_attn[i] * c->layers_per_block[i] + c->up_attn[i] * (c->layers_per_block[L] + 1);
        n_skips += c->layers_per_block[i] + (i < n - 1);
    }
    if (c->mid_block) n_res += 2, n_tr += 1;
    const int n_samp = 2 * (n - 1);
    m->resnets = sd_xcalloc((size_t)n_res, sizeof *m->resnets);
    m->transformers = sd_xcalloc((size_t)(n_tr ? n_tr : 1), sizeof *m->transformers);
    m->samplers = sd_xcalloc((size_t)(n_samp ? n_samp : 1), sizeof *m->samplers);
    m->stages = sd_xcalloc((size_t)(2 + n_res + n_tr + n_samp), sizeof *m->stages);
    m->skip_channels = sd_xcalloc((size_t)n_skips, sizeof(int));
    m->skip_level = sd_xcalloc((size_t)n_skips, sizeof(int));
    int stack[1 + UNET_MAX_LEVELS * (UNET_MAX_LAYERS_PER_BLOCK + 1)], top = 0;   /* n_skips at most */

    /* input and time embedding */
    reg_layer(m, &m->conv_in, xstrdup_printf("conv_in"), c->in_channels, C[0], c->conv_in_kernel, 1, 1,
              c->conv_in_kernel / 2, 1);
    reg_layer(m, &m->time_linear_1, xstrdup_printf("time_embedding.linear_1"), C[0], c->time_embed_dim, 1, 0, 1, 0, 1);
    reg_layer(m, &m->time_linear_2, xstrdup_printf("time_embedding.linear_2"), c->time_embed_dim, c->time_embed_dim,
              1, 0, 1, 0, 1);
    if (c->addition_text_time) {   /* add_embedding: a TimestepEmbedding from the added conditioning */
        reg_layer(m, &m->add_linear_1, xstrdup_printf("add_embedding.linear_1"), c->addition_embed_in,
                  c->time_embed_dim, 1, 0, 1, 0, 1);
        reg_layer(m, &m->add_linear_2, xstrdup_printf("add_embedding.linear_2"), c->time_embed_dim, c->time_embed_dim,
                  1, 0, 1, 0, 1);
    }
    stack[top++] = push_skip(m, C[0], 0);
    add_stage(m, UNET_STAGE_CONV_IN, 0, 0, 0, c->in_channels, C[0], -1, stack[top - 1]);

    /* down blocks: every resnet (or resnet + transformer) output and every downsampler output
     * is pushed (CrossAttnDownBlock2D / DownBlock2D output_states) */
    int ch = C[0];
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < c->layers_per_block[i]; j++) {
            char p[96];
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            unet_resnet_t *r = &m->resnets[m->n_resnets];
            setup_resnet(m, r, p, ch, C[i], 1.0f);
            int push = c->down_attn[i] ? -1 : (stack[top++] = push_skip(m, C[i], i));
            add_stage(m, UNET_STAGE_RESNET, m->n_resnets++, i, i, ch, C[i], -1, push);
            ch = C[i];
            if (c->down_attn[i]) {
                snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
                setup_transformer(m, &m->transformers[m->n_transformers], p, ch, c->num_heads[i],
                                  c->transformer_layers[i]);
                stack[top++] = push_skip(m, ch, i);
                add_stage(m, UNET_STAGE_TRANSFORMER, m->n_transformers++, i, i, ch, ch, -1, stack[top - 1]);
            }
        }
        if (i < n - 1) {
            layer_t *d = &m->samplers[m->n_samplers];
            reg_layer(m, d, xstrdup_printf("down_blocks.%d.downsamplers.0.conv", i), ch, ch, 3, 1, 2,
                      c->downsample_padding ? 1 : -1, 1);
            stack[top++] = push_skip(m, ch, i + 1);
            add_stage(m, UNET_STAGE_DOWNSAMPLE, m->n_samplers++, i, i + 1, ch, ch, -1, stack[top - 1]);
        }
    }

    /* mid block: resnet, (transformer, resnet) */
    if (c->mid_block) {
        const int L = n - 1;
        setup_resnet(m, &m->resnets[m->n_resnets], "mid_block.resnets.0", ch, ch, c->mid_block_scale_factor);
        add_stage(m, UNET_STAGE_RESNET, m->n_resnets++, L, L, ch, ch, -1, -1);
        setup_transformer(m, &m->transformers[m->n_transformers], "mid_block.attentions.0", ch, c->num_heads[L],
                          c->transformer_layers[L]);
        add_stage(m, UNET_STAGE_TRANSFORMER, m->n_transformers++, L, L, ch, ch, -1, -1);
        setup_resnet(m, &m->resnets[m->n_resnets], "mid_block.resnets.1", ch, ch, c->mid_block_scale_factor);
        add_stage(m, UNET_STAGE_RESNET, m->n_resnets++, L, L, ch, ch, -1, -1);
    }

    /* up blocks: resnet j of up block i reads cat(hidden, last pushed skip); diffusers' channel
     * bookkeeping (prev_output_channel, res_skip_channels) is checked against the skip list */
    for (int i = 0; i < n; i++) {
        const int L = n - 1 - i;
        const int out_ch = C[L], in_ch = C[L > 0 ? L - 1 : 0];
        const int nl = c->layers_per_block[L] + 1;
        for (int j = 0; j < nl; j++) {
            const int skip_ch = (j == nl - 1) ? in_ch : out_ch;
            if (top == 0) return sd_error(SD_ERR_FORMAT, "unet config: up_blocks.%d runs out of skip tensors", i);
            const int k = stack[--top];
            if (m->skip_channels[k] != skip_ch || m->skip_level[k] != L)
                return sd_error(SD_ERR_FORMAT,
                                "unet config: up_blocks.%d.resnets.%d expects a %d-channel skip at level %d, the "
                                "down path gives %d channels at level %d",
                                i, j, skip_ch, L, m->skip_channels[k], m->skip_level[k]);
            char p[96];
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            setup_resnet(m, &m->resnets[m->n_resnets], p, ch + skip_ch, out_ch, 1.0f);
            add_stage(m, UNET_STAGE_RESNET, m->n_resnets++, L, L, ch + skip_ch, out_ch, k, -1);
            ch = out_ch;
            if (c->up_attn[i]) {
                snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
                setup_transformer(m, &m->transformers[m->n_transformers], p, ch, c->num_heads[L],
                                  c->transformer_layers[L]);
                add_stage(m, UNET_STAGE_TRANSFORMER, m->n_transformers++, L, L, ch, ch, -1, -1);
            }
        }
        if (i < n - 1) {
            layer_t *u = &m->samplers[m->n_samplers];
            reg_layer(m, u, xstrdup_printf("up_blocks.%d.upsamplers.0.conv", i), ch, ch, 3, 1, 1, 1, 1);
            add_stage(m, UNET_STAGE_UPSAMPLE, m->n_samplers++, L, L - 1, ch, ch, -1, -1);
        }
    }
    if (top != 0) return sd_error(SD_ERR_FORMAT, "unet config: %d skip tensors left unused", top);

    /* output */
    reg_norm(m, &m->conv_norm_out, xstrdup_printf("conv_norm_out"), C[0], c->norm_num_groups, c->norm_eps);
    reg_layer(m, &m->conv_out, xstrdup_printf("conv_out"), C[0], c->out_channels, c->conv_out_kernel, 1, 1,
              c->conv_out_kernel / 2, 1);
    add_stage(m, UNET_STAGE_OUT, 0, 0, 0, C[0], c->out_channels, -1, -1);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------------------------- */

static int shape_is(const st_tensor_t *t, int ndim, const int64_t *shape) {
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != shape[i]) return 0;
    return 1;
}

static int is_float(st_dtype_t d) { return d == ST_F32 || d == ST_F16 || d == ST_BF16; }

static int need(const st_tensor_t **out, unet_get_fn get, void *ctx, const char *name) {
    *out = get(ctx, name);
    if (!*out) return sd_error(SD_ERR_FORMAT, "unet: missing tensor %s", name);
    if (!is_float((*out)->dtype))
        return sd_error(SD_ERR_FORMAT, "unet: tensor %s has dtype %s (F32, F16 or BF16 expected)", name,
                        st_dtype_name((*out)->dtype));
    return SD_OK;
}

static int load_vector(float *dst, int n, unet_get_fn get, void *ctx, const char *path, const char *suffix) {
    char key[256];
    snprintf(key, sizeof key, "%s.%s", path, suffix);
    const st_tensor_t *t;
    int rc = need(&t, get, ctx, key);
    if (rc) return rc;
    if (t->ndim != 1 || t->shape[0] != n) {
        char s[96];
        shape_str(s, sizeof s, t->ndim, t->shape);
        return sd_error(SD_ERR_SHAPE, "unet: %s has shape %s, expected [%d]", key, s, n);
    }
    return st_read_f32(dst, t);
}

static int load_layer(layer_t *l, unet_get_fn get, void *ctx) {
    char key[256];
    snprintf(key, sizeof key, "%s.weight", l->name);
    const st_tensor_t *t;
    int rc = need(&t, get, ctx, key);
    if (rc) return rc;
    const int64_t s4[4] = {l->out, l->in, l->k, l->k}, s2[2] = {l->out, l->in};
    const int ok = (l->conv != 0 && shape_is(t, 4, s4)) || (l->conv != 1 && shape_is(t, 2, s2));
    if (!ok) {
        char s[96];
        shape_str(s, sizeof s, t->ndim, t->shape);
        if (l->conv == 1)
            return sd_error(SD_ERR_SHAPE, "unet: %s has shape %s, expected [%d, %d, %d, %d]", key, s, l->out, l->in,
                            l->k, l->k);
        return sd_error(SD_ERR_SHAPE, "unet: %s has shape %s, expected [%d, %d]%s", key, s, l->out, l->in,
                        l->conv < 0 ? " or [out, in, 1, 1]" : "");
    }
    l->w = weight_dense(t->data, t->dtype, l->out, l->in * l->k * l->k);
    if (l->bias) return load_vector(l->bias, l->out, get, ctx, l->name, "bias");
    return SD_OK;
}

void free_unet(unet_t *m) {
    for (int i = 0; i < m->n_layers; i++) {
        weight_free(&m->layers[i]->w);
        free(m->layers[i]->name);
    }
    for (int i = 0; i < m->n_norms; i++) {
        free(m->norms[i]->shift);
        free(m->norms[i]->name);
    }
    for (int i = 0; i < m->n_transformers; i++) free(m->transformers[i].blocks);
    free(m->layers), free(m->norms);
    layer_registry_free(&m->reg);
    free(m->resnets), free(m->transformers), free(m->samplers), free(m->stages);
    free(m->skip_channels), free(m->skip_level);
    free(m->small);
    memset(m, 0, sizeof *m);
}

int unet_build_structure(unet_t *m, const unet_config_t *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    int rc = setup(m);
    if (!rc) rc = unet_group_blocks(m);
    if (rc) {
        free_unet(m);
        return rc;
    }
    /* one fp32 block for every bias, gamma and beta */
    size_t n_small = 0;
    for (int i = 0; i < m->n_layers; i++) n_small += m->layers[i]->bias ? (size_t)m->layers[i]->out : 0;
    for (int i = 0; i < m->n_norms; i++) n_small += 2 * (size_t)m->norms[i]->C;
    m->small = sd_xmalloc(sizeof(float) * (n_small ? n_small : 1));
    float *p = m->small;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i]->bias) m->layers[i]->bias = p, p += m->layers[i]->out;
    memset(m->small, 0, sizeof(float) * n_small);
    for (int i = 0; i < m->n_norms; i++) {
        norm_layer_t *nm = m->norms[i];
        nm->gamma = p, p += nm->C;
        nm->beta = p, p += nm->C;
        for (int c = 0; c < nm->C; c++) nm->gamma[c] = 1.0f;
    }
    return SD_OK;
}

int unet_registry(const unet_config_t *cfg, layer_registry_t *r) {
    unet_t m;
    memset(&m, 0, sizeof m);
    m.cfg = *cfg;
    int rc = setup(&m);   /* modules and names only: no parameter block */
    for (int i = 0; i < m.reg.n && !rc; i++) layer_registry_append(r, &m.reg.v[i]);
    free_unet(&m);
    return rc;
}

int build_unet(unet_t *m, const unet_config_t *cfg, unet_get_fn get, void *ctx) {
    int rc = unet_build_structure(m, cfg);
    if (rc) return rc;
    for (int i = 0; i < m->n_layers && !rc; i++) rc = load_layer(m->layers[i], get, ctx);
    for (int i = 0; i < m->n_norms && !rc; i++) {
        rc = load_vector(m->norms[i]->gamma, m->norms[i]->C, get, ctx, m->norms[i]->name, "weight");
        if (!rc) rc = load_vector(m->norms[i]->beta, m->norms[i]->C, get, ctx, m->norms[i]->name, "bias");
    }
    if (rc) free_unet(m);
    return rc;
}

layer_t *unet_find_layer(const unet_t *m, const char *path) {
    for (int i = 0; i < m->n_layers; i++)
        if (strcmp(m->layers[i]->name, path) == 0) return m->layers[i];
    return NULL;
}

norm_layer_t *unet_find_norm(const unet_t *m, const char *path) {
    for (int i = 0; i < m->n_norms; i++)
        if (strcmp(m->norms[i]->name, path) == 0) return m->norms[i];
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Spectral shifts
 * ------------------------------------------------------------------------------------------- */

int unet_make_spectral(unet_t *m, int keep_base, int (*want)(void *ctx, const char *path), void *ctx) {
    for (int i = 0; i < m->n_layers; i++) {
        layer_t *l = m->layers[i];
        if (l->w.kind != WEIGHT_DENSE || (want && !want(ctx, l->name))) continue;
        int rc = weight_make_spectral(&l->w, keep_base);
        if (rc) return sd_error_wrap(rc, "unet: SVD of %s failed", l->name);
    }
    return SD_OK;
}

static int shift_len(const norm_layer_t *n) { return n->mode == NORMSHIFT_ELEMENT ? n->C : 1; }

void unet_add_norm_shifts(unet_t *m, normshift_mode_t mode) {
    for (int i = 0; i < m->n_norms; i++) {
        norm_layer_t *n = m->norms[i];
        free(n->shift);
        n->mode = mode;
        n->shift = sd_xcalloc((size_t)shift_len(n), sizeof(float));
    }
}

void unet_set_shift_scale(unet_t *m, float s) {
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i]->w.kind == WEIGHT_SPECTRAL) m->layers[i]->w.sp->scale = s;
    for (int i = 0; i < m->n_norms; i++) m->norms[i]->scale = s;
}

void unet_bake(unet_t *m) {
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i]->w.kind == WEIGHT_SPECTRAL) weight_bake(&m->layers[i]->w);
}

void unet_unbake(unet_t *m) {
    for (int i = 0; i < m->n_layers; i++) {
        free(m->layers[i]->w.baked);
        m->layers[i]->w.baked = NULL;
    }
}

void unet_visit_shifts(unet_t *m, unet_grads_t *g, unet_shift_visit_fn fn, void *ctx) {
    for (int i = 0; i < m->n_layers; i++) {
        layer_t *l = m->layers[i];
        if (l->w.kind != WEIGHT_SPECTRAL) continue;
        const shift_name_t name = {SHIFT_UNET, SHIFT_SPECTRAL, l->name};
        fn(ctx, &name, l->w.sp->delta, g ? g->layers[l->id].dw : NULL, l->w.sp->rank);
    }
    for (int i = 0; i < m->n_norms; i++) {
        norm_layer_t *n = m->norms[i];
        if (!n->shift) continue;
        const shift_name_t name = {SHIFT_UNET, SHIFT_NORM, n->name};
        fn(ctx, &name, n->shift, g ? g->norms[n->id].dshift : NULL, shift_len(n));
    }
}

/* ---------------------------------------------------------------------------------------------
 * Gradients
 * ------------------------------------------------------------------------------------------- */

int unet_grads_alloc(unet_grads_t *g, const unet_t *m, unsigned what) {
    memset(g, 0, sizeof *g);
    const int shifts = (what & UNET_GRAD_SHIFTS) != 0, dense = (what & UNET_GRAD_DENSE) != 0;
    size_t n = 0;
    for (int pass = 0; pass < 2; pass++) {
        float *p = g->memory;
        for (int i = 0; i < m->n_layers; i++) {
            const layer_t *l = m->layers[i];
            size_t nw = 0, nb = 0;
            if (l->w.kind != WEIGHT_DENSE && shifts) nw = (size_t)weight_shift_count(&l->w);   /* delta or LoRA [A; B] */
            if (l->w.kind == WEIGHT_DENSE && dense) nw = (size_t)l->w.rows * l->w.cols;
            if (l->bias && dense) nb = (size_t)l->out;
            if (pass) {
                g->layers[i].dw = nw ? p : NULL, p += nw;
                g->layers[i].dbias = nb ? p : NULL, p += nb;
            } else {
                n += nw + nb;
            }
        }
        for (int i = 0; i < m->n_norms; i++) {
            const norm_layer_t *nm = m->norms[i];
            size_t ng = dense ? (size_t)nm->C : 0, ns = (nm->shift && shifts) ? (size_t)shift_len(nm) : 0;
            if (pass) {
                g->norms[i].dgamma = ng ? p : NULL, p += ng;
                g->norms[i].dbeta = ng ? p : NULL, p += ng;
                g->norms[i].dshift = ns ? p : NULL, p += ns;
            } else {
                n += 2 * ng + ns;
            }
        }
        if (!pass) {
            g->n_layers = m->n_layers, g->n_norms = m->n_norms;
            g->n_floats = n;
            g->memory = calloc(n ? n : 1, sizeof(float));
            g->layers = calloc((size_t)m->n_layers, sizeof *g->layers);
            g->norms = calloc((size_t)m->n_norms, sizeof *g->norms);
            if (!g->memory || !g->layers || !g->norms) {
                unet_grads_free(g);
                return sd_error(SD_ERR_NOMEM, "unet: cannot allocate %zu gradient floats", n);
            }
        }
    }
    return SD_OK;
}

void unet_grads_zero(unet_grads_t *g) {
    if (g->memory) memset(g->memory, 0, g->n_floats * sizeof(float));
}

void unet_grads_free(unet_grads_t *g) {
    free(g->memory), free(g->layers), free(g->norms);
    memset(g, 0, sizeof *g);
}

/* ---------------------------------------------------------------------------------------------
 * Activations
 * ------------------------------------------------------------------------------------------- */

static int stage_keeps(const unet_stage_t *s, unet_ckpt_t ckpt) {
    if (s->kind == UNET_STAGE_RESNET) return ckpt != UNET_CKPT_ALL;
    if (s->kind == UNET_STAGE_TRANSFORMER) return ckpt == UNET_CKPT_NONE;
    return s->kind == UNET_STAGE_OUT;
}

/* Lays out `a` (metadata arrays allocated) over base; base NULL only counts. */
static size_t acts_layout(unet_acts_t *a, float *base, const unet_t *m) {
    const unet_config_t *c = &m->cfg;
    const int B = a->B, H = a->H, W = a->W, T = a->T;
    const size_t S = (size_t)H * W;
    bump_t b = {base, 0};
    size_t stage_max = 0;
    for (int s = 0; s < m->n_stages; s++) {
        size_t n = stage_out_floats(&m->stages[s], B, H, W);
        if (m->stages[s].kind != UNET_STAGE_OUT && n > stage_max) stage_max = n;
    }
    a->stage_max = stage_max;
    a->t_sin = bump_take(&b, (size_t)B * c->block_out_channels[0]);
    a->t_h = bump_take(&b, (size_t)B * c->time_embed_dim);
    a->t_a = bump_take(&b, (size_t)B * c->time_embed_dim);
    a->t_e = bump_take(&b, (size_t)B * c->time_embed_dim);
    a->temb = bump_take(&b, (size_t)B * c->time_embed_dim);
    if (c->addition_text_time) {
        a->add_in = bump_take(&b, (size_t)B * c->addition_embed_in);
        a->add_h = bump_take(&b, (size_t)B * c->time_embed_dim);
        a->add_a = bump_take(&b, (size_t)B * c->time_embed_dim);
        a->add_e = bump_take(&b, (size_t)B * c->time_embed_dim);
    }
    if (!a->training) {
        /* skip tensors (alive from their push to their pop) and two buffers for the rest */
        for (int s = 0; s < m->n_stages; s++) {
            const unet_stage_t *st = &m->stages[s];
            a->out[s] = NULL;
            a->keep[s] = 0;
            if (st->push >= 0) a->skip[st->push] = a->out[s] = bump_take(&b, stage_out_floats(st, B, H, W));
        }
        a->ping[0] = bump_take(&b, stage_max);
        a->ping[1] = bump_take(&b, stage_max);
        return b.off;
    }
    a->sample = bump_take(&b, (size_t)B * c->in_channels * S);
    a->timesteps = bump_take(&b, (size_t)B);
    a->ctx = bump_take(&b, (size_t)B * T * c->cross_attention_dim);
    for (int s = 0; s < m->n_stages; s++) {
        const unet_stage_t *st = &m->stages[s];
        const size_t Sl = (size_t)(H >> st->level) * (W >> st->level);
        a->keep[s] = stage_keeps(st, a->ckpt);
        a->out[s] = st->kind == UNET_STAGE_OUT ? NULL : bump_take(&b, stage_out_floats(st, B, H, W));
        if (st->push >= 0) a->skip[st->push] = a->out[s];
        if (!a->keep[s]) continue;
        bump_t sub = {b.base ? b.base + b.off : NULL, 0};
        if (st->kind == UNET_STAGE_RESNET) {
            sub.off = unet_resnet_acts_layout(&a->res[s], sub.base, &m->resnets[st->index], B, (int)Sl);
        } else if (st->kind == UNET_STAGE_TRANSFORMER) {
            sub.off = unet_transformer_acts_layout(&a->tr[s], sub.base, &m->transformers[st->index], B, (int)Sl, T);
        } else { /* OUT: conv_norm_out output and stats */
            a->res[s].h1 = bump_take(&sub, (size_t)B * st->c_in * Sl);
            a->res[s].mean1 = bump_take(&sub, (size_t)B * c->norm_num_groups);
            a->res[s].rstd1 = bump_take(&sub, (size_t)B * c->norm_num_groups);
        }
        bump_take(&b, sub.off);
    }
    /* backward: gradient of the current hidden state (ping-pong) and of every skip tensor */
    a->dh[0] = bump_take(&b, stage_max);
    a->dh[1] = bump_take(&b, stage_max);
    size_t nskip = 0;
    for (int s = 0; s < m->n_stages; s++)
        if (m->stages[s].push >= 0) nskip += (stage_out_floats(&m->stages[s], B, H, W) + 15) & ~(size_t)15;
    a->dskip = bump_take(&b, nskip);
    size_t off = 0;
    for (int s = 0; s < m->n_stages; s++) {
        const unet_stage_t *st = &m->stages[s];
        if (st->push < 0) continue;
        a->dskip_at[st->push] = a->dskip ? a->dskip + off : NULL;
        off += (stage_out_floats(st, B, H, W) + 15) & ~(size_t)15;
    }
    a->dtemb = bump_take(&b, (size_t)B * c->time_embed_dim);
    return b.off;
}

static int check_hw(const unet_t *m, int H, int W) {
    const int f = 1 << (m->cfg.n_levels - 1);
    if (H % f || W % f)
        return sd_error(SD_ERR_ARG, "unet: sample size %dx%d is not a multiple of %d", H, W, f);
    return SD_OK;
}

static void acts_meta_free(unet_acts_t *a) {
    free(a->out), free(a->skip), free(a->keep), free(a->res), free(a->tr), free(a->dskip_at);
}

static int acts_meta_alloc(unet_acts_t *a, const unet_t *m) {
    a->out = calloc((size_t)m->n_stages, sizeof *a->out);
    a->skip = calloc((size_t)m->n_skips, sizeof *a->skip);
    a->keep = calloc((size_t)m->n_stages, sizeof *a->keep);
    a->res = calloc((size_t)m->n_stages, sizeof *a->res);
    a->tr = calloc((size_t)m->n_stages, sizeof *a->tr);
    a->dskip_at = calloc((size_t)m->n_skips, sizeof *a->dskip_at);
    if (a->out && a->skip && a->keep && a->res && a->tr && a->dskip_at) return SD_OK;
    acts_meta_free(a);
    return sd_error(SD_ERR_NOMEM, "unet: out of memory for activation tables");
}

size_t unet_acts_floats(const unet_t *m, int B, int H, int W, int T, int training, unet_ckpt_t ckpt) {
    unet_acts_t a = {.B = B, .H = H, .W = W, .T = T, .training = training, .ckpt = ckpt};
    if (acts_meta_alloc(&a, m)) return 0;
    size_t n = acts_layout(&a, NULL, m);
    acts_meta_free(&a);
    return n;
}

int unet_acts_build(unet_acts_t *a, const unet_t *m, int B, int H, int W, int T, int training, unet_ckpt_t ckpt) {
    memset(a, 0, sizeof *a);
    if (B < 1 || H < 1 || W < 1 || T < 1)
        return sd_error(SD_ERR_ARG, "unet: activation sizes B=%d H=%d W=%d T=%d must be positive", B, H, W, T);
    int rc = check_hw(m, H, W);
    if (rc) return rc;
    a->B = B, a->H = H, a->W = W, a->T = T, a->training = training, a->ckpt = ckpt;
    if ((rc = acts_meta_alloc(a, m))) return rc;
    a->n_floats = acts_layout(a, NULL, m);
    a->memory = malloc(a->n_floats * sizeof(float));
    if (!a->memory) {
        acts_meta_free(a);
        size_t nf = a->n_floats;
        memset(a, 0, sizeof *a);
        return sd_error(SD_ERR_NOMEM, "unet: cannot allocate %zu activation floats (%.1f MB)", nf, nf * 4e-6);
    }
    acts_layout(a, a->memory, m);
    return SD_OK;
}

void unet_acts_free(unet_acts_t *a) {
    acts_meta_free(a);
    free(a->memory);
    memset(a, 0, sizeof *a);
}


/* ---------------------------------------------------------------------------------------------
 * Forward / backward (UNet2DConditionModel.forward): time embedding, conv_in, down blocks, mid
 * block, up blocks, conv_norm_out / SiLU / conv_out
 * ------------------------------------------------------------------------------------------- */

int unet_forward(float *out, const unet_t *m, unet_acts_t *a, const float *sample, const float *timesteps,
                 const float *ctx, const unet_added_cond_t *added, int B, int H, int W, int T) {
    const unet_config_t *c = &m->cfg;
    if (c->addition_text_time && (!added || !added->text_embeds || !added->time_ids))
        return sd_error(SD_ERR_ARG, "unet: this UNet has addition_embed_type \"text_time\" (SDXL): its forward needs "
                        "the pooled text embedding and the %d time ids", UNET_N_TIME_IDS);
    if (!c->addition_text_time && added)
        return sd_error(SD_ERR_ARG, "unet: added conditioning (text_embeds, time_ids) given to a UNet without "
                        "addition_embed_type \"text_time\"");
    if (B < 1 || B > a->B || H < 1 || H > a->H || W < 1 || W > a->W || T < 1 || T > a->T)
        return sd_error(SD_ERR_ARG, "unet: forward B=%d H=%d W=%d T=%d exceeds the activations' %d, %d, %d, %d", B, H,
                        W, T, a->B, a->H, a->W, a->T);
    int rc = check_hw(m, H, W);
    if (rc) return rc;
    a->cur_B = B, a->cur_H = H, a->cur_W = W, a->cur_T = T;
    scratch_mark_t mark = scratch_mark();
    const size_t nsample = (size_t)B * c->in_channels * H * W;
    const float *x0 = sample;
    if (a->training) { /* inputs are copied: backward must not depend on the caller's buffers */
        memcpy(a->sample, sample, nsample * sizeof(float));
        memcpy(a->timesteps, timesteps, (size_t)B * sizeof(float));
        memcpy(a->ctx, ctx, (size_t)B * T * c->cross_attention_dim * sizeof(float));
        x0 = a->sample, timesteps = a->timesteps, ctx = a->ctx;
    }
    if (c->center_input_sample) {
        float *t = a->training ? a->sample : scratch_floats(nsample);
        for (size_t i = 0; i < nsample; i++) t[i] = 2.0f * sample[i] - 1.0f;
        x0 = t;
    }
    /* time_proj, time_embedding (+ add_embedding); then SiLU once for every resnet's time_emb_proj (ResnetBlock2D
     * applies its nonlinearity to temb) */
    unet_timesteps_forward(a->t_sin, timesteps, c, B);
    unet_timestep_embedding_forward(a->t_e, a->t_h, a->t_a, a->t_sin, &m->time_linear_1, &m->time_linear_2, B);
    if (c->addition_text_time) {   /* emb = time_embedding(t) + add_embedding(text_embeds, time ids) */
        unet_add_embedding_forward(a->add_e, a->add_in, a->add_h, a->add_a, added, m, B);
        add_into(a->t_e, a->add_e, (size_t)B * c->time_embed_dim);
    }
    silu_forward(a->temb, a->t_e, (size_t)B * c->time_embed_dim);

    unet_pass_t p = {.m = m, .a = a, .B = B, .H = H, .W = W, .T = T, .s = 0, .ctx = ctx, .prev = x0, .out = out};
    unet_pass_conv_in_forward(&p);
    for (int i = 0; i < c->n_levels; i++) unet_block_forward(&p, &m->down_blocks[i]);
    if (c->mid_block) unet_block_forward(&p, &m->mid_block);
    for (int i = 0; i < c->n_levels; i++) unet_block_forward(&p, &m->up_blocks[i]);
    unet_pass_out_forward(&p);
    scratch_release(mark);
    return SD_OK;
}

void unet_backward(float *dsample, float *dctx, float *dtext_embeds, unet_grads_t *g, const float *dout,
                   const unet_t *m, unet_acts_t *a) {
    SD_CHECK(a->training, "unet_backward needs activations built for training");
    SD_CHECK(a->cur_B > 0, "unet_backward before any forward");
    const unet_config_t *c = &m->cfg;
    SD_CHECK(!dtext_embeds || c->addition_text_time, "unet_backward: dtext_embeds for a UNet without text_time");
    const int B = a->cur_B, H = a->cur_H, W = a->cur_W, T = a->cur_T;
    scratch_mark_t mark = scratch_mark();
    for (int s = 0; s < m->n_stages; s++) {
        const unet_stage_t *st = &m->stages[s];
        if (st->push >= 0) memset(a->dskip_at[st->push], 0, stage_out_floats(st, B, H, W) * sizeof(float));
    }
    memset(a->dtemb, 0, (size_t)B * c->time_embed_dim * sizeof(float));

    unet_pass_t p = {.m = m, .a = a, .B = B, .H = H, .W = W, .T = T, .s = m->n_stages - 1, .g = g,
                     .dsample = dsample, .dctx = dctx, .dy = dout, .cur = -1};
    unet_pass_out_backward(&p);
    for (int i = c->n_levels - 1; i >= 0; i--) unet_block_backward(&p, &m->up_blocks[i]);
    if (c->mid_block) unet_block_backward(&p, &m->mid_block);
    for (int i = c->n_levels - 1; i >= 0; i--) unet_block_backward(&p, &m->down_blocks[i]);
    unet_pass_conv_in_backward(&p);

    /* time embedding: dtemb = dL/d SiLU(emb), back through SiLU, then TimestepEmbedding */
    const size_t nt = (size_t)B * c->time_embed_dim;
    float *de = zeros(nt);
    silu_backward(de, a->dtemb, a->t_e, nt);
    unet_timestep_embedding_backward(NULL, g, de, a->t_sin, a->t_h, a->t_a, &m->time_linear_1, &m->time_linear_2, B);
    /* the sum's other term: d add_embedding output = de as well */
    if (c->addition_text_time) unet_add_embedding_backward(dtext_embeds, g, de, a->add_in, a->add_h, a->add_a, m, B);
    scratch_release(mark);
}
