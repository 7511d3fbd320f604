/* CLIP text encoder (see clip.h): config parsing, building from named tensors, spectral
 * conversion, the activation buffer, and the forward / backward passes. Each block's forward
 * and backward are written in the same order of steps so they can be read side by side. */
#include "models/clip.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "base/bump.h"
#include "base/error.h"
#include "base/json.h"
#include "base/scratch.h"
#include "ops/ops.h"

/* ---------------------------------------------------------------------------------------
 * config */

int clip_config_from_json(clip_config_t *cfg, const cJSON *json, const char *what) {
    if (!what) what = "text encoder config";
    if (!cJSON_IsObject(json)) return sd_error(SD_ERR_FORMAT, "%s: not a JSON object", what);
    memset(cfg, 0, sizeof *cfg);
    int rc;
    /* defaults: transformers' CLIPTextConfig */
    const char *name = NULL;
    if ((rc = json_int_range(json, "hidden_size", 512, 1, JSON_INT_MAX, &cfg->hidden_size, what)) ||
        (rc = json_int_range(json, "intermediate_size", 2048, 1, JSON_INT_MAX, &cfg->intermediate_size, what)) ||
        (rc = json_int_range(json, "num_hidden_layers", 12, 1, JSON_INT_MAX, &cfg->num_layers, what)) ||
        (rc = json_int_range(json, "num_attention_heads", 8, 1, JSON_INT_MAX, &cfg->num_heads, what)) ||
        (rc = json_int_range(json, "max_position_embeddings", 77, 1, JSON_INT_MAX, &cfg->max_positions, what)) ||
        (rc = json_int_range(json, "vocab_size", 49408, 1, JSON_INT_MAX, &cfg->vocab_size, what)) ||
        (rc = json_str(json, "hidden_act", "quick_gelu", &name, what)))
        return rc;
    if (strcmp(name, "quick_gelu") == 0) cfg->act = CLIP_ACT_QUICK_GELU;
    else if (strcmp(name, "gelu") == 0) cfg->act = CLIP_ACT_GELU;
    else
        return sd_error(SD_ERR_FORMAT, "%s: hidden_act \"%s\" is not supported (quick_gelu, gelu)", what, name);
    double f = 1.0;
    if ((rc = json_double(json, "initializer_factor", 1.0, &f, what))) return rc;
    if (!isfinite(f)) return sd_error(SD_ERR_FORMAT, "%s: \"initializer_factor\" must be a finite number", what);
    cfg->initializer_factor = f;
    double eps = 1e-5;
    if ((rc = json_double(json, "layer_norm_eps", 1e-5, &eps, what))) return rc;
    if (!(eps > 0 && eps < 1))
        return sd_error(SD_ERR_FORMAT, "%s: \"layer_norm_eps\" must be a positive number below 1", what);
    cfg->layer_norm_eps = (float)eps;
    /* transformers' CLIPTextModelWithProjection adds text_projection; the class is named only by
     * "architectures" (CLIPTextModel configs also hold an unused projection_dim) */
    const char *arch[16];
    int n_arch = 0;
    if (json_item(json, "architectures") && (rc = json_str_array(json, "architectures", arch, 16, &n_arch, what)))
        return rc;
    for (int i = 0; i < n_arch; i++)
        if (strcmp(arch[i], "CLIPTextModelWithProjection") == 0 &&
            (rc = json_int_range(json, "projection_dim", 512, 1, JSON_INT_MAX, &cfg->projection_dim, what)))
            return rc;
    if (cfg->num_layers > CLIP_MAX_LAYERS)   /* a config alone builds the layer registry: bounded */
        return sd_error(SD_ERR_FORMAT, "%s: \"num_hidden_layers\" is %d, more than the %d supported", what,
                        cfg->num_layers, CLIP_MAX_LAYERS);
    if (cfg->hidden_size % cfg->num_heads)
        return sd_error(SD_ERR_FORMAT, "%s: hidden_size %d is not a multiple of num_attention_heads %d", what,
                        cfg->hidden_size, cfg->num_heads);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------
 * The modules in one table and the parameters in one fixed order, so that building, spectral
 * conversion, gradient allocation, shift visiting and the walk by module path
 * (clip_visit_modules: every other file) are each one loop over the same facts.
 * Weights: 0 token embedding, 1 position embedding, then q, k, v, out, fc1, fc2 per layer.
 * LayerNorms: layer_norm1, layer_norm2 per layer, then the final one. */

/* The modules of one encoder layer (transformers' CLIPEncoderLayer), in the order the module walk
 * visits them: the LayerNorms around the six linears. */
#define N_LAYER_MODULES 8
#define FIRST_LINEAR 1   /* LAYER_MODULES[FIRST_LINEAR + j], j < N_LINEAR: the linears in weight order */
#define N_LINEAR 6
static const struct {
    clip_module_kind_t kind;
    size_t off, goff;   /* offset of the layer_t / norm_layer_t in clip_layer_t, of its grads */
    const char *name;   /* module path inside the layer */
} LAYER_MODULES[N_LAYER_MODULES] = {
    {CLIP_MODULE_NORM, offsetof(clip_layer_t, ln1), offsetof(clip_layer_grads_t, ln1), "layer_norm1"},
    {CLIP_MODULE_LINEAR, offsetof(clip_layer_t, q), offsetof(clip_layer_grads_t, q), "self_attn.q_proj"},
    {CLIP_MODULE_LINEAR, offsetof(clip_layer_t, k), offsetof(clip_layer_grads_t, k), "self_attn.k_proj"},
    {CLIP_MODULE_LINEAR, offsetof(clip_layer_t, v), offsetof(clip_layer_grads_t, v), "self_attn.v_proj"},
    {CLIP_MODULE_LINEAR, offsetof(clip_layer_t, o), offsetof(clip_layer_grads_t, o), "self_attn.out_proj"},
    {CLIP_MODULE_LINEAR, offsetof(clip_layer_t, fc1), offsetof(clip_layer_grads_t, fc1), "mlp.fc1"},
    {CLIP_MODULE_LINEAR, offsetof(clip_layer_t, fc2), offsetof(clip_layer_grads_t, fc2), "mlp.fc2"},
    {CLIP_MODULE_NORM, offsetof(clip_layer_t, ln2), offsetof(clip_layer_grads_t, ln2), "layer_norm2"},
};
#define LN_MODULE(second) ((second) ? N_LAYER_MODULES - 1 : 0)

/* The weights: 2 embeddings, N_LINEAR per layer, then text_projection when the model has one. */
static int n_weights(const clip_t *m) { return 2 + N_LINEAR * m->cfg.num_layers + (m->cfg.projection_dim > 0); }
static int projection_index(const clip_config_t *c) { return 2 + N_LINEAR * c->num_layers; }
static int n_norms(const clip_t *m) { return 2 * m->cfg.num_layers + 1; }

/* Module path of table entry j of layer l. */
static void layer_module_path(char *name, size_t cap, int l, int j) {
    snprintf(name, cap, "text_model.encoder.layers.%d.%s", l, LAYER_MODULES[j].name);
}

/* Weight i: its weight_t, its bias slot (NULL for the embeddings), key prefix into name. */
static weight_t *weight_ref(clip_t *m, int i, float ***bias, char *name, size_t cap) {
    if (i < 2) {
        if (bias) *bias = NULL;
        if (name) snprintf(name, cap, "text_model.embeddings.%s", i == 0 ? "token_embedding" : "position_embedding");
        return i == 0 ? &m->token_embedding : &m->position_embedding;
    }
    if (i == projection_index(&m->cfg)) {
        if (bias) *bias = NULL;   /* nn.Linear(bias=False) */
        if (name) snprintf(name, cap, "text_projection");
        return &m->text_projection.w;
    }
    const int l = (i - 2) / N_LINEAR, j = FIRST_LINEAR + (i - 2) % N_LINEAR;
    layer_t *lin = (layer_t *)((char *)&m->layers[l] + LAYER_MODULES[j].off);
    if (bias) *bias = &lin->bias;
    if (name) layer_module_path(name, cap, l, j);
    return &lin->w;
}

/* Expected [rows, cols] of weight i. */
static void weight_shape(const clip_config_t *c, int i, int *rows, int *cols) {
    const int C = c->hidden_size, I = c->intermediate_size;
    if (i < 2) {
        *rows = i == 0 ? c->vocab_size : c->max_positions, *cols = C;
        return;
    }
    if (i == projection_index(c)) {
        *rows = c->projection_dim, *cols = C;
        return;
    }
    const int j = (i - 2) % N_LINEAR;
    *rows = j == 4 ? I : C;   /* fc1 [I, C] */
    *cols = j == 5 ? I : C;   /* fc2 [C, I] */
}

static clip_linear_grads_t *linear_grads_ref(clip_grads_t *g, int i, int L) {
    if (i == 2 + N_LINEAR * L) return &g->text_projection;
    const int l = (i - 2) / N_LINEAR, j = FIRST_LINEAR + (i - 2) % N_LINEAR;
    return (clip_linear_grads_t *)((char *)&g->layers[l] + LAYER_MODULES[j].goff);
}

/* The dw slot of weight i in g. */
static float **dw_ref(clip_grads_t *g, int i, int L) {
    if (i < 2) return i == 0 ? &g->dtoken : &g->dposition;
    return &linear_grads_ref(g, i, L)->dw;
}

static norm_layer_t *ln_ref(clip_t *m, int i, char *name, size_t cap) {
    if (i == 2 * m->cfg.num_layers) {
        if (name) snprintf(name, cap, "text_model.final_layer_norm");
        return &m->final_ln;
    }
    const int j = LN_MODULE(i % 2);
    if (name) layer_module_path(name, cap, i / 2, j);
    return (norm_layer_t *)((char *)&m->layers[i / 2] + LAYER_MODULES[j].off);
}

static clip_ln_grads_t *ln_grads_ref(clip_grads_t *g, int i, int L) {
    if (i == 2 * L) return &g->final_ln;
    return (clip_ln_grads_t *)((char *)&g->layers[i / 2] + LAYER_MODULES[LN_MODULE(i % 2)].goff);
}

void clip_registry(const clip_config_t *c, layer_registry_t *r) {
    /* transformers' CLIPPreTrainedModel._init_weights: f = initializer_factor, d = hidden_size,
     * L = num_hidden_layers (fc2 uses d, not the intermediate size) */
    const double f = c->initializer_factor, d = c->hidden_size, L = c->num_layers;
    const double in_std = pow(d, -0.5) * pow(2 * L, -0.5) * f;
    const double stds[N_LINEAR] = {in_std, in_std, in_std, pow(d, -0.5) * f, pow(2 * d, -0.5) * f, in_std};
    const int C = c->hidden_size;
    layer_registry_add(r, LAYER_EMBEDDING, c->vocab_size, C, 1, 0, "text_model.embeddings.token_embedding")
        ->init_std = 0.02 * f;
    layer_registry_add(r, LAYER_EMBEDDING, c->max_positions, C, 1, 0, "text_model.embeddings.position_embedding")
        ->init_std = 0.02 * f;
    for (int l = 0; l < c->num_layers; l++) {
        for (int j = 0; j < N_LINEAR; j++) {
            if (j == 0 || j == 4)   /* layer_norm1 before the attention, layer_norm2 before the MLP */
                layer_registry_add(r, LAYER_NORM, C, C, 1, 1, "text_model.encoder.layers.%d.layer_norm%d", l,
                                   j == 0 ? 1 : 2);
            int rows, cols;
            weight_shape(c, 2 + j, &rows, &cols);
            layer_registry_add(r, LAYER_LINEAR, rows, cols, 1, 1, "text_model.encoder.layers.%d.%s", l,
                               LAYER_MODULES[FIRST_LINEAR + j].name)->init_std = stds[j];
        }
    }
    layer_registry_add(r, LAYER_NORM, C, C, 1, 1, "text_model.final_layer_norm");
    /* CLIPTextModelWithProjection: nn.Linear(hidden_size, projection_dim, bias=False), drawn from
     * N(0, hidden_size^-0.5 * f) */
    if (c->projection_dim > 0)
        layer_registry_add(r, LAYER_LINEAR, c->projection_dim, C, 1, 0, "text_projection")->init_std = pow(d, -0.5) * f;
}

static int shift_count(const clip_t *m) { return m->norm_shift_mode == NORMSHIFT_SCALAR ? 1 : m->cfg.hidden_size; }

/* ---------------------------------------------------------------------------------------
 * build / free */

/* The tensor `name` with dtype F32/F16/BF16 and shape [d0] (d1 < 0) or [d0, d1]. */
static int require(clip_get_fn get, void *ctx, const char *name, int d0, int d1, const st_tensor_t **out) {
    const st_tensor_t *t = get(ctx, name);
    if (!t) return sd_error(SD_ERR_FORMAT, "text encoder: tensor %s is missing", name);
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return sd_error(SD_ERR_FORMAT, "text encoder: tensor %s has dtype %s (F32, F16 or BF16 expected)", name,
                        st_dtype_name(t->dtype));
    const int ndim = d1 < 0 ? 1 : 2;
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char got[128] = "", want[48];
        for (int k = 0, n = 0; k < t->ndim && n < (int)sizeof got - 24; k++)
            n += snprintf(got + n, sizeof got - n, "%s%lld", k ? ", " : "", (long long)t->shape[k]);
        if (ndim == 1) snprintf(want, sizeof want, "%d", d0);
        else snprintf(want, sizeof want, "%d, %d", d0, d1);
        return sd_error(SD_ERR_SHAPE, "text encoder: tensor %s has shape [%s], expected [%s] from the config", name,
                        got, want);
    }
    *out = t;
    return SD_OK;
}

/* dst[n] = tensor `name` [n] as fp32. */
static int load_vec(float *dst, clip_get_fn get, void *ctx, const char *name, int n) {
    const st_tensor_t *t;
    int rc = require(get, ctx, name, n, -1, &t);
    return rc ? rc : st_read_f32(dst, t);
}

int build_clip(clip_t *m, const clip_config_t *cfg, clip_get_fn get, void *ctx) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    m->norm_shift_scale = 1.0f;
    const int C = cfg->hidden_size, I = cfg->intermediate_size, L = cfg->num_layers;
    SD_CHECK(C > 0 && I > 0 && L > 0 && cfg->num_heads > 0 && C % cfg->num_heads == 0 && cfg->vocab_size > 0 &&
                 cfg->max_positions > 0, "bad CLIP config");
    m->layers = sd_xcalloc(L, sizeof *m->layers);
    /* every bias, gamma and beta in one fp32 block: per layer 2 LNs (4C), 5 C-biases, fc1's I */
    const size_t n_small = (size_t)L * (9 * C + I) + 2 * C;
    m->small = sd_xmalloc(sizeof(float) * n_small);
    float *cur = m->small;
    char name[160], key[192];
    int rc = SD_OK;
    for (int i = 0; i < n_weights(m) && !rc; i++) {
        float **bias;
        weight_t *w = weight_ref(m, i, &bias, name, sizeof name);
        int rows, cols;
        weight_shape(cfg, i, &rows, &cols);
        const st_tensor_t *t;
        snprintf(key, sizeof key, "%s.weight", name);
        if ((rc = require(get, ctx, key, rows, cols, &t))) break;
        *w = weight_dense(t->data, t->dtype, rows, cols);
        if (i >= 2) {   /* the linears' layer fields (the embeddings are bare weights) */
            layer_t *lin = (layer_t *)((char *)w - offsetof(layer_t, w));
            lin->in = cols, lin->out = rows, lin->k = 1, lin->id = i;
        }
        if (bias) {
            *bias = cur, cur += rows;
            snprintf(key, sizeof key, "%s.bias", name);
            rc = load_vec(*bias, get, ctx, key, rows);
        }
    }
    for (int i = 0; i < n_norms(m) && !rc; i++) {
        norm_layer_t *ln = ln_ref(m, i, name, sizeof name);
        ln->C = C, ln->eps = cfg->layer_norm_eps, ln->id = i, ln->scale = 1.0f;
        ln->gamma = cur, cur += C;
        ln->beta = cur, cur += C;
        snprintf(key, sizeof key, "%s.weight", name);
        if ((rc = load_vec(ln->gamma, get, ctx, key, C))) break;
        snprintf(key, sizeof key, "%s.bias", name);
        rc = load_vec(ln->beta, get, ctx, key, C);
    }
    if (rc) free_clip(m);
    else SD_CHECK((size_t)(cur - m->small) == n_small, "small-parameter block miscounted");
    return rc;
}

void free_clip(clip_t *m) {
    if (m->layers) {
        for (int i = 0; i < n_weights(m); i++) weight_free(weight_ref(m, i, NULL, NULL, 0));
        for (int i = 0; i < n_norms(m); i++) free(ln_ref(m, i, NULL, 0)->shift);
    }
    free(m->layers);
    free(m->small);
    memset(m, 0, sizeof *m);
}

int clip_make_spectral(clip_t *m, unsigned which, int keep_base) {
    char name[160];
    for (int i = 0; i < n_weights(m); i++) {
        weight_t *w = weight_ref(m, i, NULL, name, sizeof name);
        const unsigned bit = i < 2 ? CLIP_SPECTRAL_EMBEDDINGS : CLIP_SPECTRAL_LINEARS;
        if (!(which & bit) || w->kind != WEIGHT_DENSE) continue;
        int rc = weight_make_spectral(w, keep_base);
        if (rc) return sd_error_wrap(rc, "text encoder: %s.weight", name);
    }
    return SD_OK;
}

void clip_add_norm_shifts(clip_t *m, normshift_mode_t mode) {
    m->norm_shift_mode = mode;
    for (int i = 0; i < n_norms(m); i++) {
        norm_layer_t *ln = ln_ref(m, i, NULL, 0);
        free(ln->shift);
        ln->shift = sd_xcalloc(shift_count(m), sizeof(float));
    }
}

void clip_set_shift_scale(clip_t *m, float s) {
    for (int i = 0; i < n_weights(m); i++) {
        weight_t *w = weight_ref(m, i, NULL, NULL, 0);
        if (w->kind == WEIGHT_SPECTRAL) w->sp->scale = s;
        free(w->baked);   /* a baked matrix would be stale */
        w->baked = NULL;
    }
    m->norm_shift_scale = s;
}

/* ---------------------------------------------------------------------------------------
 * activations: one buffer, carved by this table (llm.c style) */

#define N_ACTS 23
static void acts_layout(float **ptrs[N_ACTS], size_t sizes[N_ACTS], clip_acts_t *a, const clip_config_t *c) {
    const size_t L = c->num_layers, C = c->hidden_size, I = c->intermediate_size, H = c->num_heads;
    const size_t B = a->B, BT = (size_t)a->B * a->T;
    float **p[N_ACTS] = {&a->encoded, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &a->q, &a->k, &a->v,
                         &a->atty, &a->att_lse, &a->residual2, &a->ln2, &a->ln2_mean, &a->ln2_rstd,
                         &a->fch, &a->fch_act, &a->residual3, &a->lnf, &a->lnf_mean, &a->lnf_rstd,
                         &a->pool_in, &a->pool_ln, &a->pool_mean, &a->pool_rstd};
    const size_t s[N_ACTS] = {BT * C, L * BT * C, L * BT, L * BT, L * BT * C, L * BT * C, L * BT * C,
                              L * BT * C, L * BT * H, L * BT * C, L * BT * C, L * BT, L * BT,
                              L * BT * I, L * BT * I, L * BT * C, BT * C, BT, BT,
                              B * C, B * C, B, B};
    for (int i = 0; i < N_ACTS; i++) ptrs[i] = p[i], sizes[i] = s[i];
}

int clip_acts_build(clip_acts_t *a, const clip_config_t *cfg, int B, int T) {
    memset(a, 0, sizeof *a);
    if (B < 1 || T < 1 || T > cfg->max_positions)
        return sd_error(SD_ERR_ARG, "text encoder: batch %d x %d tokens (1..%d tokens allowed)", B, T,
                        cfg->max_positions);
    a->B = B, a->T = T;
    float **ptrs[N_ACTS];
    size_t sizes[N_ACTS];
    acts_layout(ptrs, sizes, a, cfg);
    for (int i = 0; i < N_ACTS; i++) a->n_floats += sizes[i];
    a->memory = malloc(a->n_floats * sizeof(float));
    a->ids = malloc(sizeof(int) * ((size_t)B * T + T + B));   /* ids, pos, eos */
    if (!a->memory || !a->ids) {
        size_t n = a->n_floats;
        clip_acts_free(a);
        return sd_error(SD_ERR_NOMEM, "text encoder: cannot allocate %zu MB of activations", n * 4 >> 20);
    }
    float *cur = a->memory;
    for (int i = 0; i < N_ACTS; i++)
        if (ptrs[i]) *ptrs[i] = cur, cur += sizes[i];
    a->pos = a->ids + (size_t)B * T;
    a->eos = a->pos + T;
    for (int t = 0; t < T; t++) a->pos[t] = t;
    return SD_OK;
}

void clip_acts_free(clip_acts_t *a) {
    free(a->memory);
    free(a->ids);
    memset(a, 0, sizeof *a);
}

/* ---------------------------------------------------------------------------------------
 * small pieces shared by forward and backward */

static void act_forward(clip_act_t act, float *out, const float *inp, size_t n) {
    if (act == CLIP_ACT_GELU) gelu_forward(out, inp, n);
    else quick_gelu_forward(out, inp, n);
}

static void act_backward(clip_act_t act, float *dinp, const float *dout, const float *inp, size_t n) {
    if (act == CLIP_ACT_GELU) gelu_backward(dinp, dout, inp, n);
    else quick_gelu_backward(dinp, dout, inp, n);
}

/* y += x over n values (the residual connections). */
static void residual_add(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* The LayerNorm's gain: gamma, or gamma moved by its shift (computed into scratch). */
static const float *ln_gain(const clip_t *m, const norm_layer_t *ln) {
    if (!ln->shift) return ln->gamma;
    float *gain = scratch_floats(m->cfg.hidden_size);
    normshift_gain(gain, ln->gamma, ln->shift, m->norm_shift_scale, m->cfg.hidden_size, m->norm_shift_mode);
    return gain;
}

static void ln_forward(const clip_t *m, const norm_layer_t *ln, float *out, float *mean, float *rstd,
                       const float *inp, int N) {
    scratch_mark_t mark = scratch_mark();
    layernorm_forward(out, mean, rstd, inp, ln_gain(m, ln), ln->beta, N, m->cfg.hidden_size, m->cfg.layer_norm_eps);
    scratch_release(mark);
}

/* dinp += LayerNorm backward; gamma / beta / shift gradients into lg (may be NULL). With a
 * shift, gamma is frozen (as the base of a spectral weight): dgamma must not be asked for. */
static void ln_backward(const clip_t *m, const norm_layer_t *ln, const clip_ln_grads_t *lg, float *dinp,
                        const float *dout, const float *inp, const float *mean, const float *rstd, int N) {
    const int C = m->cfg.hidden_size;
    scratch_mark_t mark = scratch_mark();
    const float *gain = ln_gain(m, ln);
    float *dgain = NULL, *dbeta = lg ? lg->dbeta : NULL;
    if (ln->shift) {
        SD_CHECK(!lg || !lg->dgamma, "dgamma of a shifted LayerNorm is not defined (gamma is frozen)");
        if (lg && lg->dshift) {
            dgain = scratch_floats(C);
            memset(dgain, 0, sizeof(float) * C);
        }
    } else if (lg) {
        dgain = lg->dgamma;
    }
    layernorm_backward(dinp, dgain, dbeta, dout, inp, gain, mean, rstd, N, C);
    if (ln->shift && dgain)
        normshift_backward(lg->dshift, dgain, ln->gamma, ln->shift, m->norm_shift_scale, C, m->norm_shift_mode);
    scratch_release(mark);
}

/* The output of the first n layers in the last forward's activations ([cur_B, cur_T, C]
 * contiguous): transformers' hidden_states[n]; n = 0 is the embeddings. */
static float *layer_output(const clip_acts_t *a, int n, int C) {
    return n == 0 ? a->encoded : a->residual3 + (size_t)(n - 1) * a->B * a->T * C;
}

/* ---------------------------------------------------------------------------------------
 * forward */

const float *clip_forward(clip_t *m, clip_acts_t *a, const int *ids, int B, int T) {
    const clip_config_t *c = &m->cfg;
    if (B < 1 || B > a->B || T < 1 || T > a->T) {
        sd_error(SD_ERR_ARG, "text encoder: forward of %d x %d tokens does not fit the activations' %d x %d", B, T,
                 a->B, a->T);
        return NULL;
    }
    SD_CHECK(m->clip_skip >= 0 && m->clip_skip < c->num_layers, "clip_skip %d with %d layers", m->clip_skip,
             c->num_layers);
    const int C = c->hidden_size, I = c->intermediate_size, H = c->num_heads, D = C / H, N = B * T;
    const float scale = 1.0f / sqrtf((float)D);
    /* per-layer slab strides (capacity, so that a smaller batch fits the same layout) */
    const size_t sC = (size_t)a->B * a->T * C, sI = (size_t)a->B * a->T * I, sN = (size_t)a->B * a->T;
    const size_t sH = (size_t)a->B * a->T * H;
    const int penultimate = m->hidden_mode == CLIP_HIDDEN_PENULTIMATE;
    a->cur_B = B, a->cur_T = T, a->hidden_mode = m->hidden_mode;
    a->hidden_level = c->num_layers - m->clip_skip - penultimate;   /* >= 0 by the check above */
    a->has_pooled = m->want_pooled != 0;
    a->n_run = a->has_pooled ? c->num_layers : a->hidden_level;   /* the pooled path needs every layer */
    memcpy(a->ids, ids, sizeof(int) * N);

    /* embeddings: x0[b, t] = token_embedding[ids[b, t]] + position_embedding[t] */
    scratch_mark_t mark = scratch_mark();
    weight_embedding_forward(a->encoded, a->ids, &m->token_embedding, N);
    float *pos = scratch_floats((size_t)T * C);
    weight_embedding_forward(pos, a->pos, &m->position_embedding, T);
    for (int b = 0; b < B; b++) residual_add(a->encoded + (size_t)b * T * C, pos, (size_t)T * C);
    scratch_release(mark);

    for (int l = 0; l < a->n_run; l++) {
        const clip_layer_t *ly = &m->layers[l];
        const float *x = l == 0 ? a->encoded : a->residual3 + (l - 1) * sC;
        float *ln1 = a->ln1 + l * sC, *ln1_mean = a->ln1_mean + l * sN, *ln1_rstd = a->ln1_rstd + l * sN;
        float *q = a->q + l * sC, *k = a->k + l * sC, *v = a->v + l * sC;
        float *atty = a->atty + l * sC, *lse = a->att_lse + l * sH, *res2 = a->residual2 + l * sC;
        float *ln2 = a->ln2 + l * sC, *ln2_mean = a->ln2_mean + l * sN, *ln2_rstd = a->ln2_rstd + l * sN;
        float *fch = a->fch + l * sI, *fch_act = a->fch_act + l * sI, *res3 = a->residual3 + l * sC;

        /* attention block: res2 = x + out_proj(attention(q, k, v of LN1(x)), causal) */
        ln_forward(m, &ly->ln1, ln1, ln1_mean, ln1_rstd, x, N);
        weight_linear_forward(q, ln1, &ly->q.w, ly->q.bias, N);
        weight_linear_forward(k, ln1, &ly->k.w, ly->k.bias, N);
        weight_linear_forward(v, ln1, &ly->v.w, ly->v.bias, N);
        attention_forward(atty, lse, q, k, v, B, T, T, H, D, scale, 1);
        weight_linear_forward(res2, atty, &ly->o.w, ly->o.bias, N);
        residual_add(res2, x, (size_t)N * C);

        /* MLP block: res3 = res2 + fc2(act(fc1(LN2(res2)))) */
        ln_forward(m, &ly->ln2, ln2, ln2_mean, ln2_rstd, res2, N);
        weight_linear_forward(fch, ln2, &ly->fc1.w, ly->fc1.bias, N);
        act_forward(c->act, fch_act, fch, (size_t)N * I);
        weight_linear_forward(res3, fch_act, &ly->fc2.w, ly->fc2.bias, N);
        residual_add(res3, res2, (size_t)N * C);
    }

    /* pooled path: the final LayerNorm of the last layer's output at each row's EOS token only
     * (transformers normalises every token and then gathers: the same rows) */
    if (a->has_pooled) {
        const float *xL = layer_output(a, c->num_layers, C);
        for (int b = 0; b < B; b++) {
            const int *row = a->ids + (size_t)b * T;
            int e = 0;
            for (int t = 1; t < T; t++)
                if (row[t] > row[e]) e = t;
            a->eos[b] = e;
            memcpy(a->pool_in + (size_t)b * C, xL + ((size_t)b * T + e) * C, sizeof(float) * C);
        }
        ln_forward(m, &m->final_ln, a->pool_ln, a->pool_mean, a->pool_rstd, a->pool_in, B);
    }

    const float *xh = layer_output(a, a->hidden_level, C);
    if (penultimate) return xh;   /* raw: SDXL takes the hidden states before the final LayerNorm */
    /* final LayerNorm on the chosen layer's output (clip_skip stops early) */
    ln_forward(m, &m->final_ln, a->lnf, a->lnf_mean, a->lnf_rstd, xh, N);
    return a->lnf;
}

int clip_pooled(float *pooled, clip_t *m, clip_acts_t *a) {
    if (m->cfg.projection_dim <= 0)
        return sd_error(SD_ERR_ARG, "text encoder: no pooled embedding: the model has no text_projection "
                                    "(not a CLIPTextModelWithProjection)");
    if (!a->has_pooled || a->cur_B < 1)
        return sd_error(SD_ERR_ARG, "text encoder: no pooled embedding: the last forward ran without want_pooled");
    weight_linear_forward(pooled, a->pool_ln, &m->text_projection.w, NULL, a->cur_B);
    return SD_OK;
}

/* ---------------------------------------------------------------------------------------
 * backward */

/* dx += dL/d(output of a->hidden_level layers) from dhidden: through the final LayerNorm, or
 * directly for the raw penultimate states. */
static void hidden_backward(const clip_t *m, const clip_acts_t *a, const clip_grads_t *g, float *dx,
                            const float *dhidden, int N) {
    const size_t NC = (size_t)N * m->cfg.hidden_size;
    if (a->hidden_mode == CLIP_HIDDEN_PENULTIMATE) {
        residual_add(dx, dhidden, NC);
        return;
    }
    const float *xh = layer_output(a, a->hidden_level, m->cfg.hidden_size);
    ln_backward(m, &m->final_ln, g ? &g->final_ln : NULL, dx, dhidden, xh, a->lnf_mean, a->lnf_rstd, N);
}

/* dx += dL/d(output of the last layer) from dpooled: text_projection, the final LayerNorm of the
 * EOS rows, scattered back to those rows. */
static void pooled_backward(const clip_t *m, const clip_acts_t *a, const clip_grads_t *g, float *dx,
                            const float *dpooled) {
    const int B = a->cur_B, T = a->cur_T, C = m->cfg.hidden_size;
    scratch_mark_t mark = scratch_mark();
    float *dln = scratch_floats((size_t)B * C), *din = scratch_floats((size_t)B * C);
    memset(dln, 0, sizeof(float) * B * C);
    memset(din, 0, sizeof(float) * B * C);
    weight_linear_backward(dln, g ? g->text_projection.dw : NULL, NULL, dpooled, a->pool_ln, &m->text_projection.w, B);
    ln_backward(m, &m->final_ln, g ? &g->final_ln : NULL, din, dln, a->pool_in, a->pool_mean, a->pool_rstd, B);
    for (int b = 0; b < B; b++) residual_add(dx + ((size_t)b * T + a->eos[b]) * C, din + (size_t)b * C, C);
    scratch_release(mark);
}

void clip_backward(clip_t *m, clip_acts_t *a, const float *dhidden, const float *dpooled, clip_grads_t *g,
                   float *dembed) {
    const clip_config_t *c = &m->cfg;
    const int B = a->cur_B, T = a->cur_T;
    SD_CHECK(B > 0 && T > 0, "clip_backward before any forward");
    SD_CHECK(!dpooled || (a->has_pooled && c->projection_dim > 0),
             "clip_backward with dpooled after a forward without want_pooled or a model without text_projection");
    const int C = c->hidden_size, I = c->intermediate_size, H = c->num_heads, D = C / H, N = B * T;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t sC = (size_t)a->B * a->T * C, sI = (size_t)a->B * a->T * I, sN = (size_t)a->B * a->T;
    const size_t sH = (size_t)a->B * a->T * H, NC = (size_t)N * C, NI = (size_t)N * I;
    const clip_layer_grads_t none = {0};

    scratch_mark_t mark = scratch_mark();
    /* gradients of activations, reused by every layer: dx is dL/d(residual stream) */
    float *dx = scratch_floats(NC), *dres = scratch_floats(NC), *dln = scratch_floats(NC);
    float *datty = scratch_floats(NC), *dq = scratch_floats(NC), *dk = scratch_floats(NC);
    float *dv = scratch_floats(NC), *dfch_act = scratch_floats(NI), *dfch = scratch_floats(NI);

    /* dx = dL/d(output of the layers run): the pooled path enters at the last layer, the
     * hidden states at layer hidden_level (at the top of the loop, dx is dL/d(output of l + 1
     * layers)) */
    memset(dx, 0, sizeof(float) * NC);
    if (dpooled) pooled_backward(m, a, g, dx, dpooled);

    for (int l = a->n_run - 1; l >= 0; l--) {
        if (dhidden && l + 1 == a->hidden_level) hidden_backward(m, a, g, dx, dhidden, N);
        const clip_layer_t *ly = &m->layers[l];
        const clip_layer_grads_t *lg = g ? &g->layers[l] : &none;
        const float *x = l == 0 ? a->encoded : a->residual3 + (l - 1) * sC;
        const float *ln1 = a->ln1 + l * sC, *ln1_mean = a->ln1_mean + l * sN, *ln1_rstd = a->ln1_rstd + l * sN;
        const float *q = a->q + l * sC, *k = a->k + l * sC, *v = a->v + l * sC;
        const float *atty = a->atty + l * sC, *lse = a->att_lse + l * sH, *res2 = a->residual2 + l * sC;
        const float *ln2 = a->ln2 + l * sC, *ln2_mean = a->ln2_mean + l * sN, *ln2_rstd = a->ln2_rstd + l * sN;
        const float *fch = a->fch + l * sI, *fch_act = a->fch_act + l * sI;

        /* MLP block: dx = dL/d res3; the residual passes it to res2 (dres), the branch adds */
        memcpy(dres, dx, sizeof(float) * NC);
        memset(dfch_act, 0, sizeof(float) * NI);
        weight_linear_backward(dfch_act, lg->fc2.dw, lg->fc2.dbias, dx, fch_act, &ly->fc2.w, N);
        memset(dfch, 0, sizeof(float) * NI);
        act_backward(c->act, dfch, dfch_act, fch, NI);
        memset(dln, 0, sizeof(float) * NC);
        weight_linear_backward(dln, lg->fc1.dw, lg->fc1.dbias, dfch, ln2, &ly->fc1.w, N);
        ln_backward(m, &ly->ln2, g ? &lg->ln2 : NULL, dres, dln, res2, ln2_mean, ln2_rstd, N);

        /* attention block: dres = dL/d res2; the residual passes it to x (dx), the branch adds */
        memcpy(dx, dres, sizeof(float) * NC);
        memset(datty, 0, sizeof(float) * NC);
        weight_linear_backward(datty, lg->o.dw, lg->o.dbias, dres, atty, &ly->o.w, N);
        memset(dq, 0, sizeof(float) * NC);
        memset(dk, 0, sizeof(float) * NC);
        memset(dv, 0, sizeof(float) * NC);
        attention_backward(dq, dk, dv, datty, q, k, v, atty, lse, B, T, T, H, D, scale, 1);
        memset(dln, 0, sizeof(float) * NC);
        weight_linear_backward(dln, lg->q.dw, lg->q.dbias, dq, ln1, &ly->q.w, N);
        weight_linear_backward(dln, lg->k.dw, lg->k.dbias, dk, ln1, &ly->k.w, N);
        weight_linear_backward(dln, lg->v.dw, lg->v.dbias, dv, ln1, &ly->v.w, N);
        ln_backward(m, &ly->ln1, g ? &lg->ln1 : NULL, dx, dln, x, ln1_mean, ln1_rstd, N);
    }

    if (dhidden && a->hidden_level == 0) hidden_backward(m, a, g, dx, dhidden, N);
    /* embeddings: dx = dL/d x0, the token rows get it, each position the sum over the batch */
    if (dembed) residual_add(dembed, dx, NC);
    if (g && g->dtoken) weight_embedding_backward(g->dtoken, dx, a->ids, &m->token_embedding, N);
    if (g && g->dposition) {
        float *dpos = dres;   /* free now: [T, C] sum over the batch */
        memcpy(dpos, dx, sizeof(float) * T * C);
        for (int b = 1; b < B; b++) residual_add(dpos, dx + (size_t)b * T * C, (size_t)T * C);
        weight_embedding_backward(g->dposition, dpos, a->pos, &m->position_embedding, T);
    }
    scratch_release(mark);
}

/* ---------------------------------------------------------------------------------------
 * gradients */

static void grads_assign(clip_grads_t *g, clip_t *m, unsigned what, bump_t *cv) {
    const int C = m->cfg.hidden_size;
    for (int i = 0; i < n_weights(m); i++) {
        float **bias;
        const weight_t *w = weight_ref(m, i, &bias, NULL, 0);
        float **dw = dw_ref(g, i, m->cfg.num_layers);
        if (w->kind != WEIGHT_DENSE && (what & CLIP_GRAD_SHIFTS)) *dw = bump_take(cv, weight_shift_count(w));   /* delta or LoRA [A; B] */
        if (w->kind == WEIGHT_DENSE && (what & CLIP_GRAD_DENSE)) *dw = bump_take(cv, (size_t)w->rows * w->cols);
        if (bias && (what & CLIP_GRAD_DENSE)) linear_grads_ref(g, i, m->cfg.num_layers)->dbias = bump_take(cv, w->rows);
    }
    for (int i = 0; i < n_norms(m); i++) {
        const norm_layer_t *ln = ln_ref(m, i, NULL, 0);
        clip_ln_grads_t *lg = ln_grads_ref(g, i, m->cfg.num_layers);
        if (ln->shift && (what & CLIP_GRAD_SHIFTS)) lg->dshift = bump_take(cv, shift_count(m));
        if (!ln->shift && (what & CLIP_GRAD_DENSE)) lg->dgamma = bump_take(cv, C);
        if (what & CLIP_GRAD_DENSE) lg->dbeta = bump_take(cv, C);
    }
}

int clip_grads_alloc(clip_grads_t *g, const clip_t *m, unsigned what) {
    memset(g, 0, sizeof *g);
    clip_t *mm = (clip_t *)m;   /* the walkers take non-const; nothing is modified */
    g->layers = calloc(m->cfg.num_layers, sizeof *g->layers);
    if (!g->layers) return sd_error(SD_ERR_NOMEM, "text encoder: cannot allocate gradients");
    bump_t cv = {0};
    grads_assign(g, mm, what, &cv);
    g->n_floats = cv.off;
    g->memory = calloc(cv.off ? cv.off : 1, sizeof(float));
    if (!g->memory) {
        clip_grads_free(g);
        return sd_error(SD_ERR_NOMEM, "text encoder: cannot allocate %zu MB of gradients", cv.off * 4 >> 20);
    }
    cv = (bump_t){.base = g->memory};
    grads_assign(g, mm, what, &cv);
    return SD_OK;
}

void clip_grads_zero(clip_grads_t *g) {
    if (g->memory) memset(g->memory, 0, sizeof(float) * g->n_floats);
}

void clip_grads_free(clip_grads_t *g) {
    free(g->layers);
    free(g->memory);
    memset(g, 0, sizeof *g);
}

void clip_visit_shifts(clip_t *m, clip_grads_t *g, clip_shift_visit_fn fn, void *ctx) {
    char path[160];
    shift_name_t name = {SHIFT_TE, SHIFT_SPECTRAL, path};
    for (int i = 0; i < n_weights(m); i++) {
        weight_t *w = weight_ref(m, i, NULL, path, sizeof path);
        if (w->kind != WEIGHT_SPECTRAL) continue;
        fn(ctx, &name, w->sp->delta, g && g->layers ? *dw_ref(g, i, m->cfg.num_layers) : NULL, w->sp->rank);
    }
    name.kind = SHIFT_NORM;
    for (int i = 0; i < n_norms(m); i++) {
        norm_layer_t *ln = ln_ref(m, i, path, sizeof path);
        if (!ln->shift) continue;
        fn(ctx, &name, ln->shift, g && g->layers ? ln_grads_ref(g, i, m->cfg.num_layers)->dshift : NULL,
           shift_count(m));
    }
}

/* ---------------------------------------------------------------------------------------
 * the encoder by module path */

int clip_visit_modules(clip_t *m, clip_grads_t *g, clip_module_fn fn, void *ctx) {
    char path[160];
    clip_module_t mod;
    const int has_g = g && g->layers;
    int rc;
    for (int i = 0; i < 2; i++) {
        mod = (clip_module_t){.path = path, .kind = CLIP_MODULE_EMBEDDING, .layer = -1};
        mod.w = weight_ref(m, i, NULL, path, sizeof path);
        if (has_g) mod.dw = *dw_ref(g, i, m->cfg.num_layers);
        if ((rc = fn(ctx, &mod))) return rc;
    }
    for (int l = 0; l < m->cfg.num_layers; l++)
        for (int j = 0; j < N_LAYER_MODULES; j++) {
            mod = (clip_module_t){.path = path, .kind = LAYER_MODULES[j].kind, .layer = l};
            layer_module_path(path, sizeof path, l, j);
            char *at = (char *)&m->layers[l] + LAYER_MODULES[j].off;
            char *gat = has_g ? (char *)&g->layers[l] + LAYER_MODULES[j].goff : NULL;
            if (mod.kind == CLIP_MODULE_NORM) {
                mod.ln = (norm_layer_t *)at, mod.dln = (clip_ln_grads_t *)gat;
            } else {
                layer_t *lin = (layer_t *)at;
                mod.w = &lin->w, mod.bias = lin->bias;
                if (gat) mod.dw = ((clip_linear_grads_t *)gat)->dw, mod.dbias = ((clip_linear_grads_t *)gat)->dbias;
            }
            if ((rc = fn(ctx, &mod))) return rc;
        }
    mod = (clip_module_t){.path = path, .kind = CLIP_MODULE_NORM, .layer = -1};
    mod.ln = ln_ref(m, n_norms(m) - 1, path, sizeof path);
    if (has_g) mod.dln = &g->final_ln;
    if ((rc = fn(ctx, &mod)) || m->cfg.projection_dim <= 0) return rc;
    const int ip = projection_index(&m->cfg);
    mod = (clip_module_t){.path = path, .kind = CLIP_MODULE_LINEAR, .layer = -1};
    mod.w = weight_ref(m, ip, NULL, path, sizeof path);
    if (has_g) mod.dw = *dw_ref(g, ip, m->cfg.num_layers);
    return fn(ctx, &mod);
}

typedef struct {
    const char *path;
    clip_module_t *out;
} find_ctx_t;

static int find_visit(void *ctx, const clip_module_t *mod) {
    find_ctx_t *f = ctx;
    if (strcmp(mod->path, f->path)) return 0;
    *f->out = *mod;
    f->out->path = f->path;   /* the walk's buffer is gone after it */
    return 1;
}

int clip_find_module(clip_t *m, const char *path, clip_module_t *out) {
    find_ctx_t f = {path, out};
    memset(out, 0, sizeof *out);
    return clip_visit_modules(m, NULL, find_visit, &f);
}

static int bake_visit(void *ctx, const clip_module_t *mod) {
    (void)ctx;
    if (mod->w && mod->w->kind == WEIGHT_SPECTRAL) weight_bake(mod->w);
    return 0;
}

void clip_bake_spectral(clip_t *m) { clip_visit_modules(m, NULL, bake_visit, NULL); }
