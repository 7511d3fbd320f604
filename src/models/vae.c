/* AutoencoderKL forward (see vae.h): config parsing, the parameter walk that lists / loads /
 * frees every tensor by its diffusers name, encoder, decoder, latent sampling, image <->
 * tensor conversion.
 *
 * Memory. At 512x512 the decoder's last block holds 128-channel 512x512 activations (128 MB
 * fp32 each) and its upsampler 256-channel ones, so:
 *  - images go through the network one at a time (GroupNorm and attention are per image);
 *  - every activation is its own allocation, freed the moment it is dead (glibc returns
 *    such large blocks to the system at once);
 *  - 3x3 convolutions run in bands of output rows: the band's input rows are gathered into
 *    a small buffer, with GroupNorm + SiLU or the nearest 2x upsample applied on the way,
 *    so neither the normalised tensor, nor the upsampled one, nor a whole-image im2col
 *    buffer (1.2 GB for 128 channels at 512x512) ever exists;
 *  - a resnet writes its output into its input's buffer: band k of the output only
 *    overwrites rows of band k of the input, which the shortcut has already read. A resnet
 *    so holds just its input and the conv1 output.
 * The mid-block attention over all pixels (4096 tokens at 512 px) uses attention_forward,
 * which never forms the [T, T] score matrix. */
#include "models/vae.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/json.h"
#include "base/scratch.h"
#include "base/str.h"
#include "ops/fastmath.h"
#include "ops/ops.h"

/* Floats of temporaries per band (64 MB). Smaller bands save little memory next to the
 * activations but multiply the parallel regions (and OpenBLAS's own thread syncs), and each
 * barrier can cost a scheduler tick when other processes share the cores: on 2 busy cores,
 * a 256 px decode took 17-20 s with 4M-float bands and 5-10 s with 16M-float ones. */
#define DEFAULT_BAND_FLOATS ((size_t)1 << 24)

static const int PAD1[4] = {1, 1, 1, 1};
static const int PAD0[4] = {0, 0, 0, 0};
static const int PAD_DOWN[4] = {0, 1, 0, 1};   /* Downsample2D with padding=0: F.pad (0,1,0,1) */

/* ---------------------------------------------------------------- config ---- */

/* Block types, when present: one entry per block, all of the one supported kind. */
static int json_block_types(const cJSON *j, const char *key, const char *kind, int n, const char *what) {
    const cJSON *v = json_item(j, key);
    if (!v) return SD_OK;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != n)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must list %d block types (one per block_out_channels entry)",
                        what, key, n);
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsString(e) || strcmp(e->valuestring, kind) != 0)
            return sd_error(SD_ERR_FORMAT, "%s: \"%s\" entry %s is not supported (only %s)", what, key,
                            cJSON_IsString(e) ? e->valuestring : "(not a string)", kind);
    }
    return SD_OK;
}

int vae_config_from_json(vae_config_t *cfg, const cJSON *json, const char *what) {
    memset(cfg, 0, sizeof *cfg);
    if (!what) what = "vae config";
    if (!cJSON_IsObject(json)) return sd_error(SD_ERR_FORMAT, "%s: not a JSON object", what);
    int rc;
    if ((rc = json_int(json, "in_channels", 3, &cfg->in_channels, what)) ||
        (rc = json_int(json, "out_channels", 3, &cfg->out_channels, what)) ||
        (rc = json_int(json, "latent_channels", 4, &cfg->latent_channels, what)) ||
        (rc = json_int(json, "layers_per_block", 1, &cfg->layers_per_block, what)) ||
        (rc = json_int(json, "norm_num_groups", 32, &cfg->norm_num_groups, what)) ||
        (rc = json_float(json, "scaling_factor", 0.18215f, &cfg->scaling_factor, what)) ||
        (rc = json_float(json, "shift_factor", 0.0f, &cfg->shift_factor, what)) ||
        (rc = json_bool(json, "use_quant_conv", 1, &cfg->use_quant_conv, what)) ||
        (rc = json_bool(json, "use_post_quant_conv", 1, &cfg->use_post_quant_conv, what)) ||
        (rc = json_bool(json, "mid_block_add_attention", 1, &cfg->mid_block_add_attention, what)))
        return rc;

    const cJSON *boc = cJSON_GetObjectItemCaseSensitive(json, "block_out_channels");
    if (!boc || cJSON_IsNull(boc)) {
        cfg->n_blocks = 1;
        cfg->block_out_channels[0] = 64;
    } else {
        if (!cJSON_IsArray(boc) || cJSON_GetArraySize(boc) < 1 || cJSON_GetArraySize(boc) > VAE_MAX_BLOCKS)
            return sd_error(SD_ERR_FORMAT, "%s: \"block_out_channels\" must be an array of 1 to %d integers",
                            what, VAE_MAX_BLOCKS);
        const cJSON *e;
        cJSON_ArrayForEach(e, boc) {
            if (!cJSON_IsNumber(e) || !(e->valuedouble >= 1 && e->valuedouble <= 1e9) || e->valuedouble != floor(e->valuedouble))
                return sd_error(SD_ERR_FORMAT, "%s: \"block_out_channels\" entries must be positive integers", what);
            cfg->block_out_channels[cfg->n_blocks++] = (int)e->valuedouble;
        }
    }

    const cJSON *ss = cJSON_GetObjectItemCaseSensitive(json, "sample_size");
    if (cJSON_IsArray(ss) && cJSON_GetArraySize(ss) > 0) ss = cJSON_GetArrayItem(ss, 0);
    if (!ss || cJSON_IsNull(ss)) cfg->sample_size = 32;
    else if (!cJSON_IsNumber(ss)) return sd_error(SD_ERR_FORMAT, "%s: \"sample_size\" must be an integer or a list of integers", what);
    else if (!(ss->valuedouble >= 1 && ss->valuedouble <= 65536 && ss->valuedouble == floor(ss->valuedouble)))
        return sd_error(SD_ERR_FORMAT, "%s: \"sample_size\" is %.15g; it must be an integer from 1 to %d", what,
                        ss->valuedouble, 65536);   /* checked as a double: (int)1e12 is undefined */
    else cfg->sample_size = (int)ss->valuedouble;

    if ((rc = json_require_str(json, "act_fn", "silu", what)) || (rc = json_require_str(json, "norm_type", "group", what)) ||
        (rc = json_block_types(json, "down_block_types", "DownEncoderBlock2D", cfg->n_blocks, what)) ||
        (rc = json_block_types(json, "up_block_types", "UpDecoderBlock2D", cfg->n_blocks, what)))
        return rc;

    if (cfg->in_channels < 1 || cfg->out_channels < 1 || cfg->latent_channels < 1)
        return sd_error(SD_ERR_FORMAT, "%s: in_channels, out_channels and latent_channels must be positive", what);
    if (cfg->layers_per_block < 1 || cfg->layers_per_block > VAE_MAX_LAYERS_PER_BLOCK)
        return sd_error(SD_ERR_FORMAT, "%s: \"layers_per_block\" must be from 1 to %d (got %d)", what,
                        VAE_MAX_LAYERS_PER_BLOCK, cfg->layers_per_block);
    if (cfg->norm_num_groups < 1)
        return sd_error(SD_ERR_FORMAT, "%s: \"norm_num_groups\" must be positive", what);
    for (int i = 0; i < cfg->n_blocks; i++)
        if (cfg->block_out_channels[i] % cfg->norm_num_groups)
            return sd_error(SD_ERR_FORMAT, "%s: norm_num_groups %d does not divide block_out_channels[%d] = %d",
                            what, cfg->norm_num_groups, i, cfg->block_out_channels[i]);
    if (!(cfg->scaling_factor != 0.0f) || !isfinite(cfg->scaling_factor) || !isfinite(cfg->shift_factor))
        return sd_error(SD_ERR_FORMAT, "%s: \"scaling_factor\" must be finite and non-zero", what);
    return SD_OK;
}

int vae_scale_factor(const vae_config_t *cfg) { return 1 << (cfg->n_blocks - 1); }

/* ---------------------------------------------------- the parameter walk ---- *
 * One walk over the module tree names every tensor as diffusers does; it runs to list the
 * tensors (vae_param_specs), to count the fp32 floats of the small parameters, to load, and
 * to free the weights. */

typedef struct {
    vae_get_fn get;                 /* NULL: do not load */
    void *ctx;
    layer_registry_t *reg;          /* listing: every layer appended here */
    float *small;                   /* loading: the block the small parameters go to */
    size_t n_small;                 /* floats of small parameters so far */
    int free_weights;               /* freeing: weight_free on every weight, nothing else */
    int groups;                     /* GroupNorm groups (the config's) */
    int rc;
} walker_t;

/* The tensor `name` (or, if absent, `alt`), checked to be a float type; NULL with wk->rc set
 * when missing. */
static const st_tensor_t *wk_find(walker_t *wk, const char *name, const char *alt) {
    const st_tensor_t *t = wk->get(wk->ctx, name);
    if (!t && alt) t = wk->get(wk->ctx, alt);
    if (!t) {
        wk->rc = sd_error(SD_ERR_FORMAT, "vae: missing tensor %s", name);
        return NULL;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        wk->rc = sd_error(SD_ERR_FORMAT, "vae: tensor %s has dtype %s, expected F32, F16 or BF16", t->name ? t->name : name,
                          st_dtype_name(t->dtype));
        return NULL;
    }
    return t;
}

static void wk_bad_shape(walker_t *wk, const char *name, const st_tensor_t *t, int ndim, const int64_t *want) {
    char got[128], exp[128];
    shape_str(got, sizeof got, t->ndim, t->shape);
    shape_str(exp, sizeof exp, ndim, want);
    wk->rc = sd_error(SD_ERR_SHAPE, "vae: tensor %s has shape %s, expected %s", name, got, exp);
}

/* A weight of shape want[ndim] viewed as [rows, cols]. `linear_1x1`: a [C, C] linear that may
 * also be stored as a [C, C, 1, 1] conv (LDM checkpoints). */
static void wk_weight(walker_t *wk, weight_t *w, const char *name, const char *alt, int ndim,
                      const int64_t *want, int linear_1x1) {
    if (wk->free_weights) {
        weight_free(w);
        return;
    }
    if (!wk->get || wk->rc) return;
    const st_tensor_t *t = wk_find(wk, name, alt);
    if (!t) return;
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == want[i];
    if (!ok && linear_1x1)
        ok = t->ndim == 4 && t->shape[0] == want[0] && t->shape[1] == want[1] && t->shape[2] == 1 && t->shape[3] == 1;
    if (!ok) {
        wk_bad_shape(wk, name, t, ndim, want);
        return;
    }
    int64_t cols = 1;
    for (int i = 1; i < ndim; i++) cols *= want[i];
    *w = weight_dense(t->data, t->dtype, (int)want[0], (int)cols);
}

/* A small fp32 parameter [n] (bias, GroupNorm gain / offset). */
static void wk_vec(walker_t *wk, float **dst, const char *name, const char *alt, int n) {
    if (wk->free_weights) return;
    const size_t off = wk->n_small;
    wk->n_small += (size_t)n;
    if (!wk->small) return;
    *dst = wk->small + off;
    if (!wk->get || wk->rc) return;
    const st_tensor_t *t = wk_find(wk, name, alt);
    if (!t) return;
    const int64_t want = n;
    if (t->numel != n || t->ndim != 1) {
        wk_bad_shape(wk, name, t, 1, &want);
        return;
    }
    int rc = st_read_f32(*dst, t);
    if (rc) wk->rc = rc;
}

static void wk_conv(walker_t *wk, layer_t *cv, const char *prefix, int ic, int oc, int k) {
    char name[VAE_NAME_MAX];
    cv->in = ic, cv->out = oc, cv->k = k, cv->conv = 1;
    if (wk->reg) layer_registry_add(wk->reg, LAYER_CONV, oc, ic, k, 1, "%s", prefix);
    const int64_t want[4] = {oc, ic, k, k};
    snprintf(name, sizeof name, "%s.weight", prefix);
    wk_weight(wk, &cv->w, name, NULL, 4, want, 0);
    snprintf(name, sizeof name, "%s.bias", prefix);
    wk_vec(wk, &cv->bias, name, NULL, oc);
}

static void wk_norm(walker_t *wk, norm_layer_t *nm, const char *prefix, int c) {
    char name[VAE_NAME_MAX];
    nm->C = c, nm->groups = wk->groups, nm->eps = VAE_NORM_EPS;
    if (wk->reg) layer_registry_add(wk->reg, LAYER_NORM, c, c, 1, 1, "%s", prefix);
    snprintf(name, sizeof name, "%s.weight", prefix);
    wk_vec(wk, &nm->gamma, name, NULL, c);
    snprintf(name, sizeof name, "%s.bias", prefix);
    wk_vec(wk, &nm->beta, name, NULL, c);
}

/* Attention linear `<attn>.<name>` [C, C], or its pre-0.14 name `<attn>.<old>`. */
static void wk_attn_linear(walker_t *wk, layer_t *l, const char *attn, const char *name, const char *old, int c) {
    char n1[VAE_NAME_MAX], n2[VAE_NAME_MAX];
    const int64_t want[2] = {c, c};
    l->in = c, l->out = c, l->k = 1, l->conv = 0;
    if (wk->reg) layer_registry_add(wk->reg, LAYER_LINEAR, c, c, 1, 1, "%s.%s", attn, name);
    snprintf(n1, sizeof n1, "%s.%s.weight", attn, name);
    snprintf(n2, sizeof n2, "%s.%s.weight", attn, old);
    wk_weight(wk, &l->w, n1, n2, 2, want, 1);
    snprintf(n1, sizeof n1, "%s.%s.bias", attn, name);
    snprintf(n2, sizeof n2, "%s.%s.bias", attn, old);
    wk_vec(wk, &l->bias, n1, n2, c);
}

static void wk_resnet(walker_t *wk, vae_resnet_t *r, const char *prefix, int ic, int oc) {
    char p[96];
    r->ic = ic, r->oc = oc, r->has_shortcut = ic != oc;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    wk_norm(wk, &r->norm1, p, ic);
    snprintf(p, sizeof p, "%s.conv1", prefix);
    wk_conv(wk, &r->conv1, p, ic, oc, 3);
    snprintf(p, sizeof p, "%s.norm2", prefix);
    wk_norm(wk, &r->norm2, p, oc);
    snprintf(p, sizeof p, "%s.conv2", prefix);
    wk_conv(wk, &r->conv2, p, oc, oc, 3);
    if (r->has_shortcut) {
        snprintf(p, sizeof p, "%s.conv_shortcut", prefix);
        wk_conv(wk, &r->conv_shortcut, p, ic, oc, 1);
    }
}

static void wk_mid(walker_t *wk, vae_mid_t *mid, const char *side, int c, int add_attention) {
    char p[96];
    snprintf(p, sizeof p, "%s.mid_block.resnets.0", side);
    wk_resnet(wk, &mid->resnets[0], p, c, c);
    mid->has_attn = add_attention;
    if (add_attention) {
        char a[64];
        snprintf(a, sizeof a, "%s.mid_block.attentions.0", side);
        snprintf(p, sizeof p, "%s.group_norm", a);
        wk_norm(wk, &mid->attn.group_norm, p, c);
        wk_attn_linear(wk, &mid->attn.to_q, a, "to_q", "query", c);
        wk_attn_linear(wk, &mid->attn.to_k, a, "to_k", "key", c);
        wk_attn_linear(wk, &mid->attn.to_v, a, "to_v", "value", c);
        wk_attn_linear(wk, &mid->attn.to_out, a, "to_out.0", "proj_attn", c);
    }
    snprintf(p, sizeof p, "%s.mid_block.resnets.1", side);
    wk_resnet(wk, &mid->resnets[1], p, c, c);
}

/* The whole model: encoder, quant_conv, post_quant_conv, decoder (the order svdiff init
 * writes; diffusers' state_dict has the quant convs last). */
static void wk_model(walker_t *wk, vae_t *m) {
    const vae_config_t *cfg = &m->cfg;
    wk->groups = cfg->norm_num_groups;
    const int n = cfg->n_blocks, *ch = cfg->block_out_channels, lat = cfg->latent_channels;
    char p[64];

    vae_coder_t *e = &m->encoder;
    wk_conv(wk, &e->conv_in, "encoder.conv_in", cfg->in_channels, ch[0], 3);
    int c = ch[0];
    for (int i = 0; i < n; i++) {
        vae_block_t *blk = &e->blocks[i];
        for (int j = 0; j < blk->n_resnets; j++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.resnets.%d", i, j);
            wk_resnet(wk, &blk->resnets[j], p, j == 0 ? c : ch[i], ch[i]);
        }
        c = ch[i];
        blk->has_sampler = i < n - 1;
        if (blk->has_sampler) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d.downsamplers.0.conv", i);
            wk_conv(wk, &blk->sampler, p, c, c, 3);
        }
    }
    wk_mid(wk, &e->mid, "encoder", ch[n - 1], cfg->mid_block_add_attention);
    wk_norm(wk, &e->norm_out, "encoder.conv_norm_out", ch[n - 1]);
    wk_conv(wk, &e->conv_out, "encoder.conv_out", ch[n - 1], 2 * lat, 3);   /* mean and log-variance */
    if (cfg->use_quant_conv) wk_conv(wk, &m->quant_conv, "quant_conv", 2 * lat, 2 * lat, 1);
    if (cfg->use_post_quant_conv) wk_conv(wk, &m->post_quant_conv, "post_quant_conv", lat, lat, 1);

    vae_coder_t *d = &m->decoder;
    wk_conv(wk, &d->conv_in, "decoder.conv_in", lat, ch[n - 1], 3);
    wk_mid(wk, &d->mid, "decoder", ch[n - 1], cfg->mid_block_add_attention);
    c = ch[n - 1];
    for (int i = 0; i < n; i++) {
        vae_block_t *blk = &d->blocks[i];
        const int oc = ch[n - 1 - i];
        for (int j = 0; j < blk->n_resnets; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            wk_resnet(wk, &blk->resnets[j], p, j == 0 ? c : oc, oc);
        }
        c = oc;
        blk->has_sampler = i < n - 1;
        if (blk->has_sampler) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            wk_conv(wk, &blk->sampler, p, c, c, 3);
        }
    }
    wk_norm(wk, &d->norm_out, "decoder.conv_norm_out", ch[0]);
    wk_conv(wk, &d->conv_out, "decoder.conv_out", ch[0], cfg->out_channels, 3);
}

static void alloc_structure(vae_t *m, const vae_config_t *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    const int n = cfg->n_blocks;
    m->encoder.blocks = sd_xcalloc((size_t)n, sizeof(vae_block_t));
    m->decoder.blocks = sd_xcalloc((size_t)n, sizeof(vae_block_t));
    for (int i = 0; i < n; i++) {
        m->encoder.blocks[i].n_resnets = cfg->layers_per_block;
        m->encoder.blocks[i].resnets = sd_xcalloc((size_t)cfg->layers_per_block, sizeof(vae_resnet_t));
        m->decoder.blocks[i].n_resnets = cfg->layers_per_block + 1;
        m->decoder.blocks[i].resnets = sd_xcalloc((size_t)cfg->layers_per_block + 1, sizeof(vae_resnet_t));
    }
}

static void free_structure(vae_t *m) {
    for (int i = 0; i < m->cfg.n_blocks; i++) {
        if (m->encoder.blocks) free(m->encoder.blocks[i].resnets);
        if (m->decoder.blocks) free(m->decoder.blocks[i].resnets);
    }
    free(m->encoder.blocks);
    free(m->decoder.blocks);
    free(m->small);
    memset(m, 0, sizeof *m);
}

void vae_registry(const vae_config_t *cfg, layer_registry_t *r) {
    vae_t m;
    alloc_structure(&m, cfg);
    walker_t wk = {.reg = r};
    wk_model(&wk, &m);
    free_structure(&m);
}

typedef struct {
    vae_param_spec_t *out;
    int max, n;
} spec_list_t;

static int add_spec(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim, const int64_t *shape) {
    spec_list_t *l = ctx;
    (void)spec, (void)part;
    if (l->out && l->n < l->max) {
        vae_param_spec_t *s = &l->out[l->n];
        snprintf(s->name, sizeof s->name, "%s", name);
        s->ndim = ndim;
        for (int i = 0; i < 4; i++) s->shape[i] = i < ndim ? shape[i] : 0;
    }
    l->n++;
    return 0;
}

int vae_param_specs(const vae_config_t *cfg, vae_param_spec_t *out, int max) {
    layer_registry_t r = {0};
    vae_registry(cfg, &r);
    spec_list_t l = {out, out ? max : 0, 0};
    layer_registry_tensors(&r, add_spec, &l);
    layer_registry_free(&r);
    return l.n;
}

int build_vae(vae_t *m, const vae_config_t *cfg, vae_get_fn get, void *ctx) {
    SD_CHECK(cfg->n_blocks >= 1 && cfg->n_blocks <= VAE_MAX_BLOCKS, "vae: n_blocks %d", cfg->n_blocks);
    alloc_structure(m, cfg);
    walker_t count = {0};
    wk_model(&count, m);   /* sizes the block of small parameters */
    m->n_small = count.n_small;
    m->small = malloc(sizeof(float) * (m->n_small ? m->n_small : 1));
    if (!m->small) {
        free_structure(m);
        return sd_error(SD_ERR_NOMEM, "vae: cannot allocate %zu parameter floats", count.n_small);
    }
    walker_t load = {.get = get, .ctx = ctx, .small = m->small};
    wk_model(&load, m);
    if (load.rc) {
        free_structure(m);
        return load.rc;
    }
    return SD_OK;
}

void free_vae(vae_t *m) {
    if (!m->encoder.blocks) {
        memset(m, 0, sizeof *m);
        return;
    }
    walker_t wk = {.free_weights = 1};
    wk_model(&wk, m);
    free_structure(m);
}

/* ----------------------------------------------------------- activations ---- *
 * Each activation is one malloc'ed [C, H, W] block; the bytes alive are tracked per thread
 * so that a test and the benchmark can read the peak. */

static _Thread_local size_t g_live_bytes, g_peak_bytes;

size_t vae_peak_activation_bytes(void) { return g_peak_bytes; }
void vae_reset_peak(void) { g_peak_bytes = g_live_bytes; }

typedef struct {
    float *d;
    size_t cap;    /* floats allocated (0: a view of memory the caller owns) */
    int C, H, W;
} act_t;

static void track(size_t add, size_t sub) {
    g_live_bytes += add;
    g_live_bytes -= sub;
    if (g_live_bytes > g_peak_bytes) g_peak_bytes = g_live_bytes;
}

static int act_alloc(act_t *a, int C, int H, int W) {
    const size_t n = (size_t)C * H * W;
    a->d = malloc(sizeof(float) * n);
    if (!a->d) return sd_error(SD_ERR_NOMEM, "vae: cannot allocate a %dx%dx%d activation (%zu MB)", C, H, W,
                               n * sizeof(float) >> 20);
    a->cap = n, a->C = C, a->H = H, a->W = W;
    track(n * sizeof(float), 0);
    return SD_OK;
}

static void act_free(act_t *a) {
    if (a->cap) {
        free(a->d);
        track(0, a->cap * sizeof(float));
    }
    a->d = NULL, a->cap = 0;
}

/* Grows or shrinks an owned activation's block to n floats (contents kept). A failed shrink
 * keeps the old block. */
static int act_resize(act_t *a, size_t n) {
    if (n == a->cap) return SD_OK;
    float *p = realloc(a->d, sizeof(float) * n);
    if (!p) {
        if (n < a->cap) return SD_OK;
        return sd_error(SD_ERR_NOMEM, "vae: cannot grow an activation to %zu MB", n * sizeof(float) >> 20);
    }
    track(n * sizeof(float), a->cap * sizeof(float));
    a->d = p, a->cap = n;
    return SD_OK;
}

/* ----------------------------------------------------------- convolution ---- */

/* GroupNorm statistics of x[C, S] (G groups of C/G contiguous channels): mean and 1/sqrt(var
 * + eps), with the biased variance, both passes in double. */
static void gn_stats(float *mean, float *rstd, const float *x, int C, size_t S, int G, float eps) {
    const size_t n = (size_t)(C / G) * S;
#pragma omp parallel for schedule(static) if ((size_t)C * S >= 65536)
    for (int g = 0; g < G; g++) {
        const float *p = x + (size_t)g * n;
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += p[i];
        const double m = s / (double)n;
        double v = 0.0;
        for (size_t i = 0; i < n; i++) {
            const double d = p[i] - m;
            v += d * d;
        }
        mean[g] = (float)m;
        rstd[g] = (float)(1.0 / sqrt(v / (double)n + eps));
    }
}

/* What a convolution reads: the stored x[C, H, W], seen through an optional nearest 2x
 * upsample and an optional GroupNorm (statistics precomputed) + SiLU. */
typedef struct {
    const float *x;
    int C, H, W;
    int up;
    const norm_layer_t *norm;
    const float *mean, *rstd;
    int G;
} src_t;

/* in[C, r1 - r0, IW] = rows [r0, r1) of the source as the convolution sees it. One parallel
 * region per band (few barriers: they cost most when other processes share the cores). */
static void fill_band(float *in, const src_t *src, int r0, int r1) {
    const int IW = src->up ? 2 * src->W : src->W, nr = r1 - r0;
    const int cpg = src->norm ? src->C / src->G : 1;
#pragma omp parallel for schedule(static) if ((long)src->C * nr * IW >= 65536)
    for (int c = 0; c < src->C; c++) {
        const float *plane = src->x + (size_t)c * src->H * src->W;
        float *dst = in + (size_t)c * nr * IW;
        float m = 0.0f, a = 1.0f, b = 0.0f;
        if (src->norm) {
            const int g = c / cpg;
            m = src->mean[g], a = src->rstd[g] * src->norm->gamma[c], b = src->norm->beta[c];
        }
        for (int r = r0; r < r1; r++) {
            const float *srow = plane + (size_t)(src->up ? r / 2 : r) * src->W;
            float *drow = dst + (size_t)(r - r0) * IW;
            if (src->up)
                for (int x = 0; x < IW; x++) drow[x] = srow[x >> 1];
            else
                memcpy(drow, srow, sizeof(float) * IW);
            if (src->norm)
                for (int x = 0; x < IW; x++) {
                    const float v = (drow[x] - m) * a + b;
                    drow[x] = v * sigmoid_approx(v);   /* SiLU, vectorised as in ops/activation.c */
                }
        }
    }
}

/* out[OC, OH, OW] = conv(src) + bias, computed in bands of output rows (at most `budget`
 * floats of temporaries per band). Optional residual res[res_C, OH, OW] (stride 1), added
 * as is (res_conv NULL, res_C == OC) or through the 1x1 res_conv. out may be res itself
 * (with room for OC channels): band k writes only rows of band k, after reading them. */
static void conv_bands(float *out, const src_t *src, const layer_t *cv, int stride, const int pad[4],
                       const float *res, int res_C, const layer_t *res_conv, size_t budget) {
    SD_CHECK(cv->in == src->C, "vae conv: %d input channels, weight expects %d", src->C, cv->in);
    const int IH = src->up ? 2 * src->H : src->H, IW = src->up ? 2 * src->W : src->W;
    const conv2d_shape_t s = {.B = 1, .IC = src->C, .H = IH, .W = IW, .OC = cv->out, .KH = cv->k, .KW = cv->k,
                              .stride = stride, .pad = {pad[0], pad[1], pad[2], pad[3]}};
    const int OH = conv2d_out_h(&s), OW = conv2d_out_w(&s), OC = cv->out;
    const size_t K = (size_t)src->C * cv->k * cv->k;
    SD_CHECK(!res || (res_conv ? res_conv->in == res_C && res_conv->out == OC : res_C == OC),
             "vae conv: residual of %d channels for %d outputs", res_C, OC);
    /* per output row: im2col columns, the conv output, residual rows, input rows */
    const size_t row_cost = (size_t)OW * (K + OC + (res ? (size_t)res_C + OC : 0)) + (size_t)src->C * IW * stride;
    int nb = (int)((budget ? budget : DEFAULT_BAND_FLOATS) / row_cost);
    if (nb < 1) nb = 1;
    if (nb > OH) nb = OH;
    const size_t plane = (size_t)OH * OW;
    for (int oy0 = 0; oy0 < OH; oy0 += nb) {
        const int n = OH - oy0 < nb ? OH - oy0 : nb;
        const size_t P = (size_t)n * OW;
        /* input rows [lo, hi) in padded coordinates, clipped to the image; the clipped part
         * becomes the band's own zero padding */
        const int lo = oy0 * stride - pad[0], hi = (oy0 + n - 1) * stride - pad[0] + cv->k;
        const int r0 = lo > 0 ? lo : 0, r1 = hi < IH ? hi : IH;
        conv2d_shape_t sb = s;
        sb.H = r1 - r0, sb.pad[0] = r0 - lo, sb.pad[1] = hi - r1;
        SD_CHECK(sb.H > 0 && conv2d_out_h(&sb) == n, "vae conv: band rows %d..%d", oy0, oy0 + n);
        scratch_mark_t mark = scratch_mark();
        float *in = scratch_floats((size_t)src->C * sb.H * IW);
        fill_band(in, src, r0, r1);
        float *tb = scratch_floats((size_t)OC * P);
        weight_conv2d_forward(tb, in, &cv->w, cv->bias, &sb);
        float *sc = NULL;
        if (res && res_conv) {   /* the 1x1 shortcut of the band's residual rows */
            float *rb = scratch_floats((size_t)res_C * P);
            sc = scratch_floats((size_t)OC * P);
            for (int c = 0; c < res_C; c++) memcpy(rb + c * P, res + c * plane + (size_t)oy0 * OW, sizeof(float) * P);
            const conv2d_shape_t s1 = {.B = 1, .IC = res_C, .H = n, .W = OW, .OC = OC, .KH = 1, .KW = 1, .stride = 1};
            weight_conv2d_forward(sc, rb, &res_conv->w, res_conv->bias, &s1);
        }
        /* out rows of the band = conv (+ residual); out[c] may be res[c] itself (same index) */
#pragma omp parallel for schedule(static) if ((size_t)OC * P >= 65536)
        for (int c = 0; c < OC; c++) {
            float *o = out + c * plane + (size_t)oy0 * OW;
            const float *t = tb + c * P;
            if (sc) {
                const float *r = sc + c * P;
                for (size_t i = 0; i < P; i++) o[i] = t[i] + r[i];
            } else if (res) {
                const float *r = res + c * plane + (size_t)oy0 * OW;
                for (size_t i = 0; i < P; i++) o[i] = t[i] + r[i];
            } else {
                memcpy(o, t, sizeof(float) * P);
            }
        }
        scratch_release(mark);
    }
}

/* ----------------------------------------------------------------- blocks ---- */

/* x <- conv(x seen through up / norm), into a new activation, or into dst (caller-owned,
 * x then becomes a view of it). The old x is freed. */
static int stage_conv(act_t *x, const vae_t *m, const layer_t *cv, int stride, const int pad[4], int up,
                      const norm_layer_t *norm, float *dst) {
    const int G = m->cfg.norm_num_groups;
    scratch_mark_t mark = scratch_mark();
    src_t src = {.x = x->d, .C = x->C, .H = x->H, .W = x->W, .up = up, .norm = norm, .G = G};
    if (norm) {
        float *st = scratch_floats(2 * (size_t)G);
        src.mean = st, src.rstd = st + G;
        gn_stats(st, st + G, x->d, x->C, (size_t)x->H * x->W, G, VAE_NORM_EPS);
    }
    const int IH = up ? 2 * x->H : x->H, IW = up ? 2 * x->W : x->W;
    const int OH = (IH + pad[0] + pad[1] - cv->k) / stride + 1, OW = (IW + pad[2] + pad[3] - cv->k) / stride + 1;
    act_t y = {.d = dst, .C = cv->out, .H = OH, .W = OW};
    if (!dst) {
        int rc = act_alloc(&y, cv->out, OH, OW);
        if (rc) {
            scratch_release(mark);
            return rc;
        }
    }
    conv_bands(y.d, &src, cv, stride, pad, NULL, 0, NULL, m->band_floats);
    scratch_release(mark);
    act_free(x);
    *x = y;
    return SD_OK;
}

/* ResnetBlock2D (temb None): x <- shortcut(x) + conv2(silu(gn2(conv1(silu(gn1(x)))))), the
 * output written over x's own block (see conv_bands). */
static int resnet_forward(act_t *x, const vae_t *m, const vae_resnet_t *r) {
    SD_CHECK(x->C == r->ic, "vae resnet: %d channels in, expects %d", x->C, r->ic);
    SD_CHECK(x->cap, "vae resnet: the input must be an owned activation (its block is reused)");
    const int G = m->cfg.norm_num_groups;
    const size_t S = (size_t)x->H * x->W;
    scratch_mark_t mark = scratch_mark();
    float *st = scratch_floats(4 * (size_t)G);
    gn_stats(st, st + G, x->d, r->ic, S, G, VAE_NORM_EPS);
    act_t u = {0};
    int rc = act_alloc(&u, r->oc, x->H, x->W);
    if (rc) goto done;
    const src_t s1 = {.x = x->d, .C = r->ic, .H = x->H, .W = x->W, .norm = &r->norm1, .mean = st, .rstd = st + G, .G = G};
    conv_bands(u.d, &s1, &r->conv1, 1, PAD1, NULL, 0, NULL, m->band_floats);
    gn_stats(st + 2 * G, st + 3 * G, u.d, r->oc, S, G, VAE_NORM_EPS);
    if (r->oc > r->ic && (rc = act_resize(x, (size_t)r->oc * S))) {
        act_free(&u);
        goto done;
    }
    const src_t s2 = {.x = u.d, .C = r->oc, .H = x->H, .W = x->W, .norm = &r->norm2, .mean = st + 2 * G,
                      .rstd = st + 3 * G, .G = G};
    conv_bands(x->d, &s2, &r->conv2, 1, PAD1, x->d, r->ic, r->has_shortcut ? &r->conv_shortcut : NULL,
               m->band_floats);
    act_free(&u);
    x->C = r->oc;
    if (r->oc < r->ic) act_resize(x, (size_t)r->oc * S);
done:
    scratch_release(mark);
    return rc;
}

/* diffusers Attention (residual_connection, rescale 1, one head of all C channels):
 * x += to_out(softmax(q k^T / sqrt(C)) v) with q, k, v = to_q/k/v(groupnorm(x)) over the
 * H*W pixels as tokens. In place on x[C, S]. */
static int attention_block(act_t *x, const vae_t *m, const vae_attention_t *a) {
    const int C = x->C, G = m->cfg.norm_num_groups, S = x->H * x->W, cpg = C / G;
    act_t n = {0}, q = {0}, k = {0}, v = {0};
    int rc;
    if ((rc = act_alloc(&n, S, 1, C)) || (rc = act_alloc(&q, S, 1, C)) || (rc = act_alloc(&k, S, 1, C)) ||
        (rc = act_alloc(&v, S, 1, C)))
        goto done;
    scratch_mark_t mark = scratch_mark();
    float *st = scratch_floats(2 * (size_t)G), *lse = scratch_floats((size_t)S);
    gn_stats(st, st + G, x->d, C, (size_t)S, G, VAE_NORM_EPS);
    /* normalised tokens n[S, C] (transposed from channel-major x) */
#pragma omp parallel for schedule(static) if ((long)C * S >= 65536)
    for (int c = 0; c < C; c++) {
        const int g = c / cpg;
        const float mu = st[g], sc = st[G + g] * a->group_norm.gamma[c], b = a->group_norm.beta[c];
        const float *xc = x->d + (size_t)c * S;
        for (int s = 0; s < S; s++) n.d[(size_t)s * C + c] = (xc[s] - mu) * sc + b;
    }
    weight_linear_forward(q.d, n.d, &a->to_q.w, a->to_q.bias, S);
    weight_linear_forward(k.d, n.d, &a->to_k.w, a->to_k.bias, S);
    weight_linear_forward(v.d, n.d, &a->to_v.w, a->to_v.bias, S);
    attention_forward(n.d, lse, q.d, k.d, v.d, 1, S, S, 1, C, (float)(1.0 / sqrt((double)C)), 0);
    weight_linear_forward(q.d, n.d, &a->to_out.w, a->to_out.bias, S);
#pragma omp parallel for schedule(static) if ((long)C * S >= 65536)
    for (int c = 0; c < C; c++) {
        float *xc = x->d + (size_t)c * S;
        for (int s = 0; s < S; s++) xc[s] += q.d[(size_t)s * C + c];
    }
    scratch_release(mark);
done:
    act_free(&v), act_free(&k), act_free(&q), act_free(&n);
    return rc;
}

static int mid_forward(act_t *x, const vae_t *m, const vae_mid_t *mid) {
    int rc = resnet_forward(x, m, &mid->resnets[0]);
    if (!rc && mid->has_attn) rc = attention_block(x, m, &mid->attn);
    if (!rc) rc = resnet_forward(x, m, &mid->resnets[1]);
    return rc;
}

/* ------------------------------------------------------ encoder / decoder ---- */

static int encode_one(const vae_t *m, float *mean, float *logvar, const float *img, int H, int W) {
    const vae_config_t *cfg = &m->cfg;
    const vae_coder_t *e = &m->encoder;
    act_t x = {.d = (float *)img, .C = cfg->in_channels, .H = H, .W = W};   /* a view: never freed */
    int rc = stage_conv(&x, m, &e->conv_in, 1, PAD1, 0, NULL, NULL);
    for (int i = 0; !rc && i < cfg->n_blocks; i++) {
        const vae_block_t *blk = &e->blocks[i];
        for (int j = 0; !rc && j < blk->n_resnets; j++) rc = resnet_forward(&x, m, &blk->resnets[j]);
        if (!rc && blk->has_sampler) rc = stage_conv(&x, m, &blk->sampler, 2, PAD_DOWN, 0, NULL, NULL);
    }
    if (!rc) rc = mid_forward(&x, m, &e->mid);
    if (!rc) rc = stage_conv(&x, m, &e->conv_out, 1, PAD1, 0, &e->norm_out, NULL);
    if (!rc && cfg->use_quant_conv) rc = stage_conv(&x, m, &m->quant_conv, 1, PAD0, 0, NULL, NULL);
    if (!rc) {
        /* DiagonalGaussianDistribution: chunk(2, dim=1) -> mean, logvar; clamp(-30, 20) */
        const size_t n = (size_t)cfg->latent_channels * x.H * x.W;
        memcpy(mean, x.d, sizeof(float) * n);
        for (size_t i = 0; i < n; i++) {
            const float lv = x.d[n + i];
            logvar[i] = lv < -30.0f ? -30.0f : (lv > 20.0f ? 20.0f : lv);
        }
    }
    act_free(&x);
    return rc;
}

int vae_encode(const vae_t *m, float *mean, float *logvar, const float *img, int B, int H, int W) {
    const int f = vae_scale_factor(&m->cfg);
    if (B < 1 || H < f || W < f || H % f || W % f)
        return sd_error(SD_ERR_SHAPE, "vae_encode: image %dx%d (batch %d): sides must be positive multiples of %d",
                        H, W, B, f);
    const size_t in = (size_t)m->cfg.in_channels * H * W, out = (size_t)m->cfg.latent_channels * (H / f) * (W / f);
    for (int b = 0; b < B; b++) {
        int rc = encode_one(m, mean + b * out, logvar + b * out, img + b * in, H, W);
        if (rc) return rc;
    }
    return SD_OK;
}

void vae_sample_latents(float *latents, const float *mean, const float *logvar, const float *noise, size_t n,
                        const vae_config_t *cfg) {
    for (size_t i = 0; i < n; i++) {
        const float z = noise ? mean[i] + expf(0.5f * logvar[i]) * noise[i] : mean[i];
        latents[i] = (z - cfg->shift_factor) * cfg->scaling_factor;
    }
}

static int decode_one(const vae_t *m, float *img, const float *latents, int h, int w) {
    const vae_config_t *cfg = &m->cfg;
    const vae_coder_t *d = &m->decoder;
    act_t x = {0};
    int rc = act_alloc(&x, cfg->latent_channels, h, w);
    if (rc) return rc;
    const size_t n = (size_t)cfg->latent_channels * h * w;
    for (size_t i = 0; i < n; i++) x.d[i] = latents[i] / cfg->scaling_factor + cfg->shift_factor;
    if (cfg->use_post_quant_conv) rc = stage_conv(&x, m, &m->post_quant_conv, 1, PAD0, 0, NULL, NULL);
    if (!rc) rc = stage_conv(&x, m, &d->conv_in, 1, PAD1, 0, NULL, NULL);
    if (!rc) rc = mid_forward(&x, m, &d->mid);
    for (int i = 0; !rc && i < cfg->n_blocks; i++) {
        const vae_block_t *blk = &d->blocks[i];
        for (int j = 0; !rc && j < blk->n_resnets; j++) rc = resnet_forward(&x, m, &blk->resnets[j]);
        if (!rc && blk->has_sampler) rc = stage_conv(&x, m, &blk->sampler, 1, PAD1, 1, NULL, NULL);
    }
    if (!rc) rc = stage_conv(&x, m, &d->conv_out, 1, PAD1, 0, &d->norm_out, img);
    act_free(&x);
    return rc;
}

int vae_decode(const vae_t *m, float *img, const float *latents, int B, int h, int w) {
    if (B < 1 || h < 1 || w < 1)
        return sd_error(SD_ERR_SHAPE, "vae_decode: latents %dx%d (batch %d)", h, w, B);
    const int f = vae_scale_factor(&m->cfg);
    const size_t in = (size_t)m->cfg.latent_channels * h * w, out = (size_t)m->cfg.out_channels * h * f * w * f;
    for (int b = 0; b < B; b++) {
        int rc = decode_one(m, img + b * out, latents + b * in, h, w);
        if (rc) return rc;
    }
    return SD_OK;
}

/* ------------------------------------------------------- image <-> tensor ---- */

void vae_image_to_tensor(float *out, const uint8_t *img, int H, int W, int C) {
    const size_t S = (size_t)H * W;
    for (size_t p = 0; p < S; p++)
        for (int c = 0; c < C; c++) {
            const float v = (float)img[p * C + c] / 255.0f;
            out[c * S + p] = 2.0f * v - 1.0f;
        }
}

void vae_tensor_to_image(uint8_t *img, const float *x, int H, int W, int C) {
    const size_t S = (size_t)H * W;
    for (size_t p = 0; p < S; p++)
        for (int c = 0; c < C; c++) {
            float v = x[c * S + p] / 2.0f + 0.5f;
            if (!(v >= 0.0f)) v = 0.0f;   /* also NaN */
            if (v > 1.0f) v = 1.0f;
            img[p * C + c] = (uint8_t)rintf(v * 255.0f);   /* current rounding mode: half to even */
        }
}
