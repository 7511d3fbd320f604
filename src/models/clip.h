/* CLIP text encoder (transformers CLIPTextModel, as Stable Diffusion uses it, and
 * CLIPTextModelWithProjection, SDXL's second encoder), forward and backward, llm.c style:
 * parameters in clip_t, every activation the backward needs in one buffer (clip_acts_t),
 * gradients in clip_grads_t. SD 1.x: last_hidden_state after the final LayerNorm; SD 2.x: the
 * diffusers copy simply has 23 layers; clip_skip = k stops after layer L-k and then applies the
 * final LayerNorm (diffusers' clip_skip). SDXL (hidden_mode CLIP_HIDDEN_PENULTIMATE): the raw
 * output of layer L-1-k, and the pooled embedding (clip_pooled). */
#ifndef SVDIFF_MODELS_CLIP_H
#define SVDIFF_MODELS_CLIP_H

#include <cJSON.h>
#include <stddef.h>

#include "io/model.h"
#include "io/safetensors.h"
#include "weights/layer.h"
#include "weights/shift_name.h"
#include "weights/weight.h"

#define CLIP_MAX_LAYERS 1024   /* num_hidden_layers */

typedef enum { CLIP_ACT_QUICK_GELU = 0, CLIP_ACT_GELU = 1 } clip_act_t;

/* What clip_forward returns (clip_t.hidden_mode). transformers' hidden_states[i] is the output
 * of i layers (hidden_states[0]: the embeddings). */
typedef enum {
    CLIP_HIDDEN_FINAL_LN = 0,    /* SD 1.x / 2.x: the final LayerNorm of hidden_states[L - clip_skip] */
    CLIP_HIDDEN_PENULTIMATE = 1, /* SDXL: hidden_states[-(clip_skip + 2)] = the raw output of
                                  * L - 1 - clip_skip layers, no final LayerNorm */
} clip_hidden_t;

typedef struct {
    int hidden_size;          /* C */
    int intermediate_size;    /* I (MLP) */
    int num_layers;           /* L: num_hidden_layers */
    int num_heads;            /* H: num_attention_heads; head dim D = C / H */
    int max_positions;        /* max_position_embeddings */
    int vocab_size;           /* V */
    clip_act_t act;           /* hidden_act: "quick_gelu" or "gelu" (exact erf) */
    float layer_norm_eps;
    double initializer_factor;   /* transformers' init scale (random init only; default 1) */
    int projection_dim;       /* P of text_projection [P, C] (no bias): set when "architectures" names
                               * CLIPTextModelWithProjection (SDXL's text_encoder_2); 0: none */
} clip_config_t;

/* Reads a transformers CLIPTextConfig JSON object; absent keys take transformers' defaults
 * (512, 2048, 12, 8, 77, 49408, quick_gelu, 1e-5). When "architectures" lists
 * "CLIPTextModelWithProjection", projection_dim is read too (default 512), else it is 0 and the
 * key is ignored (CLIPTextModel configs carry it unused). `what` names the source in errors
 * (e.g. "text_encoder/config.json"). Returns 0 or SD_ERR_FORMAT naming the key. */
int clip_config_from_json(clip_config_t *cfg, const cJSON *json, const char *what);

/* Layers are the shared types of weights/layer.h: LayerNorms are norm_layer_t (fp32 gamma/beta
 * [C] copied from the file, and an optional trained shift of the gain, NULL or [C] / [1] by the
 * model's norm_shift_mode), linears layer_t (weight [out, in], dense view or spectral; fp32 bias
 * [out]). */

typedef struct {
    norm_layer_t ln1;
    layer_t q, k, v, o;     /* self_attn.{q,k,v,out}_proj */
    norm_layer_t ln2;
    layer_t fc1, fc2;       /* mlp.fc1 [I, C], mlp.fc2 [C, I] */
} clip_layer_t;

typedef struct {
    clip_config_t cfg;
    weight_t token_embedding;     /* [V, C] */
    weight_t position_embedding;  /* [max_positions, C] */
    clip_layer_t *layers;         /* [L] */
    norm_layer_t final_ln;
    layer_t text_projection;      /* [P, C], no bias; only when cfg.projection_dim > 0 */
    int clip_skip;                /* layers not run at the end (0: all); set before forward */
    clip_hidden_t hidden_mode;    /* which hidden states clip_forward returns; set before forward */
    int want_pooled;              /* set before forward: run every layer and keep what clip_pooled
                                   * and the backward of dpooled need */
    normshift_mode_t norm_shift_mode;
    float norm_shift_scale;       /* s of the norm shifts (spectral weights keep theirs in sp) */
    float *small;                 /* one block holding every bias / gamma / beta (fp32) */
} clip_t;

/* Tensor lookup by transformers name (e.g. "text_model.final_layer_norm.weight"); NULL when
 * absent. Dense weights stay views of the returned data: it must outlive the model. */
typedef const st_tensor_t *(*clip_get_fn)(void *ctx, const char *name);

/* The layers build_clip builds for `cfg` (weights/layer.h registry; appended to r), in
 * transformers' state dict order (text_projection last, after the final LayerNorm), each with
 * the std of transformers' CLIP init. */
void clip_registry(const clip_config_t *cfg, layer_registry_t *r);

/* Builds the model from `cfg` and the tensors `get` returns. Weights (F32/F16/BF16) are
 * dense views; biases and LayerNorm parameters are converted to fp32 copies. Extra tensors
 * (e.g. text_model.embeddings.position_ids) are ignored. Returns 0, or SD_ERR_FORMAT (missing
 * tensor, wrong dtype) / SD_ERR_SHAPE naming the tensor; *m is then empty. */
int build_clip(clip_t *m, const clip_config_t *cfg, clip_get_fn get, void *ctx);
void free_clip(clip_t *m);

/* Turns weights spectral (SVD of each; keep_base keeps the base matrix for the exact
 * residual form W + U diag(relu(S + s delta) - S) V^T). */
enum {
    CLIP_SPECTRAL_LINEARS = 1,      /* q, k, v, out_proj, fc1, fc2 of every layer, text_projection */
    CLIP_SPECTRAL_EMBEDDINGS = 2,   /* token and position embeddings */
};
int clip_make_spectral(clip_t *m, unsigned which, int keep_base);
/* Adds a zero shift to the gain of every LayerNorm (ln1, ln2, final) in `mode`. */
void clip_add_norm_shifts(clip_t *m, normshift_mode_t mode);
/* Sets the scale s of every spectral weight and of the norm shifts (inference strength);
 * drops baked matrices (weight_bake), which that makes stale. */
void clip_set_shift_scale(clip_t *m, float s);

/* Activations of one forward, kept for the backward: one allocation, laid out by a table
 * (clip.c acts_layout). Per-layer arrays are [L, ...] with slabs sized for the capacity
 * (B, T) given at build; a forward may use any B' <= B, T' <= T. */
typedef struct {
    int B, T;              /* capacity */
    int cur_B, cur_T;      /* shape of the last forward */
    int n_run;             /* layers the last forward ran (L with want_pooled, else hidden_level) */
    int hidden_level;      /* the returned hidden states are (the final LayerNorm of) the output of
                            * this many layers: L - clip_skip, or L - 1 - clip_skip (penultimate) */
    clip_hidden_t hidden_mode;   /* of the last forward */
    int has_pooled;        /* the last forward kept the pooled path (want_pooled) */
    int *ids;              /* [B, T] token ids of the last forward */
    int *pos;              /* [T] 0..T-1, the position ids */
    int *eos;              /* [B] position of the first largest id in each row (the EOS token) */
    float *encoded;        /* [B, T, C] token + position embedding = input of layer 0 */
    float *ln1;            /* [L, B, T, C] */
    float *ln1_mean, *ln1_rstd;  /* [L, B, T] */
    float *q, *k, *v;      /* [L, B, T, C] projections, heads interleaved */
    float *atty;           /* [L, B, T, C] attention output (input of out_proj) */
    float *att_lse;        /* [L, B, H, T] softmax log-sum-exp per query row */
    float *residual2;      /* [L, B, T, C] x + attn */
    float *ln2;            /* [L, B, T, C] */
    float *ln2_mean, *ln2_rstd;  /* [L, B, T] */
    float *fch;            /* [L, B, T, I] fc1 output (pre-activation) */
    float *fch_act;        /* [L, B, T, I] activation (input of fc2) */
    float *residual3;      /* [L, B, T, C] layer output (input of the next layer) */
    float *lnf;            /* [B, T, C] final LayerNorm output = last_hidden_state */
    float *lnf_mean, *lnf_rstd;  /* [B, T] */
    float *pool_in;        /* [B, C] output of the last layer at each row's EOS position */
    float *pool_ln;        /* [B, C] its final LayerNorm (input of text_projection) */
    float *pool_mean, *pool_rstd;  /* [B] */
    float *memory;         /* the single allocation */
    size_t n_floats;
} clip_acts_t;

/* Returns 0, SD_ERR_ARG (T > max_positions, B or T < 1) or SD_ERR_NOMEM. */
int clip_acts_build(clip_acts_t *a, const clip_config_t *cfg, int B, int T);
void clip_acts_free(clip_acts_t *a);

/* hidden[B, T, C] for ids[B, T] (each in [0, V)), chosen by m->hidden_mode (a->lnf, or a
 * layer's output inside a, valid until the next forward); NULL with SD_ERR_ARG's message when
 * B x T exceeds what the activations were built for (or is below 1 x 1). With m->want_pooled
 * the forward runs all L layers whatever clip_skip, and keeps the final LayerNorm of the last
 * layer's output at each row's EOS position for clip_pooled. */
const float *clip_forward(clip_t *m, clip_acts_t *a, const int *ids, int B, int T);

/* pooled[B, projection_dim] = text_projection(final_layer_norm(output of the LAST layer)[b, eos_b])
 * of the last forward, eos_b = first position of the largest id in ids[b] (the first EOS, 49407,
 * as transformers' argmax finds it). Returns 0, or SD_ERR_ARG when the model has no
 * text_projection or the last forward ran without want_pooled. */
int clip_pooled(float *pooled, clip_t *m, clip_acts_t *a);

/* Gradients. For a weight, dw is d(delta) [rank] when it is spectral and dW [rows, cols]
 * (fp32) when it is dense. Every pointer may be NULL (= not wanted); backward accumulates. */
typedef struct { float *dw, *dbias; } clip_linear_grads_t;
typedef struct { float *dgamma, *dbeta, *dshift; } clip_ln_grads_t;
typedef struct {
    clip_ln_grads_t ln1;
    clip_linear_grads_t q, k, v, o;
    clip_ln_grads_t ln2;
    clip_linear_grads_t fc1, fc2;
} clip_layer_grads_t;
typedef struct {
    float *dtoken, *dposition;    /* the embeddings' dw */
    clip_layer_grads_t *layers;   /* [L] */
    clip_ln_grads_t final_ln;
    clip_linear_grads_t text_projection;   /* dw only (no bias); with a projection */
    float *memory;                /* one block behind every pointer above */
    size_t n_floats;
} clip_grads_t;

enum {
    CLIP_GRAD_SHIFTS = 1,   /* d(delta) of every spectral weight, d(shift) of every norm shift */
    CLIP_GRAD_DENSE = 2,    /* dW of every dense weight, every bias, gamma and beta */
};
/* Allocates (zeroed) the gradients selected by `what` for the model's current weight kinds.
 * Returns 0 or SD_ERR_NOMEM. */
int clip_grads_alloc(clip_grads_t *g, const clip_t *m, unsigned what);
void clip_grads_zero(clip_grads_t *g);
void clip_grads_free(clip_grads_t *g);

/* Backward of the last forward: dhidden [B, T, C] = dL/d hidden (what clip_forward returned),
 * dpooled [B, projection_dim] = dL/d pooled (clip_pooled; the forward must have had
 * want_pooled); either may be NULL. Accumulates into every non-NULL gradient of g (g may be
 * NULL) and into dembed [B, T, C] = dL/d(token + position embedding), the input of the first
 * block (NULL = not wanted). */
void clip_backward(clip_t *m, clip_acts_t *a, const float *dhidden, const float *dpooled, clip_grads_t *g,
                   float *dembed);

/* Visits every trained shift: spectral deltas (name: SHIFT_TE, SHIFT_SPECTRAL, the module path,
 * e.g. "text_model.encoder.layers.0.self_attn.q_proj", and "text_projection" last when the model
 * has one), then norm shifts (SHIFT_NORM, "...layer_norm1"), with its gradient from g (NULL if g
 * is NULL or has none). The component is always SHIFT_TE: a caller walking a second encoder
 * copies the name and sets its own. The name and its path are valid during the call only. */
typedef void (*clip_shift_visit_fn)(void *ctx, const shift_name_t *name, float *shift, float *grad, int n);
void clip_visit_shifts(clip_t *m, clip_grads_t *g, clip_shift_visit_fn fn, void *ctx);

/* ---- the encoder by diffusers module path (clip.c holds the one table of a layer's modules) ---- */
typedef enum { CLIP_MODULE_EMBEDDING, CLIP_MODULE_LINEAR, CLIP_MODULE_NORM } clip_module_kind_t;
typedef struct {
    const char *path;          /* "text_model.embeddings.token_embedding", "...encoder.layers.<i>.mlp.fc1" */
    clip_module_kind_t kind;
    int layer;                 /* encoder layer; -1: the embeddings and the final LayerNorm */
    weight_t *w;               /* embeddings and linears, else NULL */
    float *bias;               /* linears: [w->rows] fp32, else NULL */
    norm_layer_t *ln;             /* LayerNorms, else NULL */
    float *dw, *dbias;         /* their slots in the visit's gradients (NULL: no gradients or none there) */
    clip_ln_grads_t *dln;      /* LayerNorms: their gradients (NULL without gradients) */
} clip_module_t;
/* Visits every module: the two embeddings ("text_model.embeddings.{token,position}_embedding"),
 * then per layer "text_model.encoder.layers.<i>." + layer_norm1, self_attn.{q,k,v,out}_proj,
 * mlp.fc1, mlp.fc2, layer_norm2, then "text_model.final_layer_norm", then "text_projection"
 * (a linear without bias, layer -1) when the model has one. g may be NULL. mod and its
 * path are valid during the call only. fn returning non-zero stops the walk and that value is
 * returned. */
typedef int (*clip_module_fn)(void *ctx, const clip_module_t *mod);
int clip_visit_modules(clip_t *m, clip_grads_t *g, clip_module_fn fn, void *ctx);
/* The module at `path` into *out (out->path = path, no gradients); 1 if found, else 0. */
int clip_find_module(clip_t *m, const char *path, clip_module_t *out);
/* Bakes every spectral weight (weight_bake). Re-run after changing deltas; clip_set_shift_scale
 * drops the baked matrices. */
void clip_bake_spectral(clip_t *m);

/* ---- glue to io/model.h (inline so that this header's users link without model.c until
 * they call these) ---- */
static inline const st_tensor_t *clip_component_get_(void *ctx, const char *name) {
    return component_find((const model_component_t *)ctx, name);
}
static inline int clip_config_from_component(clip_config_t *cfg, const model_component_t *c) {
    return clip_config_from_json(cfg, c->config, c->name);
}
static inline int build_clip_from_component(clip_t *m, const model_component_t *c) {
    clip_config_t cfg;
    int rc = clip_config_from_component(&cfg, c);
    return rc ? rc : build_clip(m, &cfg, clip_component_get_, (void *)c);
}

#endif
