/* UNet2DConditionModel (diffusers unets/unet_2d_condition.py, Stable Diffusion 1.x / 2.x / XL),
 * forward and backward, llm.c style: parameters in unet_t (every conv / linear a weight_t named
 * by its diffusers module path), the network as an explicit program of stages with an explicit
 * skip list, activations in one unet_acts_t buffer (training) or only what is live (inference).
 * The modules, each a forward / backward pair, by file:
 *   unet.c            config, construction, loading, activations, UNet2DConditionModel.forward
 *                     (unet_forward / unet_backward: time embedding, conv_in, blocks, conv_out)
 *   unet_2d_blocks.c  DownBlock2D, CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D,
 *                     CrossAttnUpBlock2D (unet_cross_attn_down_block_forward, ...)
 *   unet_pass.c       the step of one stage: a module bound to its buffers, skips, checkpoints
 *   unet_resnet.c     linear / conv / norm layers, ResnetBlock2D
 *   unet_attention.c  Attention (attn1 and attn2), BasicTransformerBlock, Transformer2DModel
 *   unet_resample.c   Downsample2D, Upsample2D
 *   unet_embeddings.c Timesteps, TimestepEmbedding, SDXL's added conditioning (add_time_proj,
 *                     add_embedding) */
#ifndef SVDIFF_MODELS_UNET_H
#define SVDIFF_MODELS_UNET_H

#include <cJSON.h>
#include <stddef.h>

#include "io/model.h"
#include "io/safetensors.h"
#include "weights/layer.h"
#include "weights/shift_name.h"
#include "weights/weight.h"

#define UNET_MAX_LEVELS 8    /* len(block_out_channels) */
#define UNET_MAX_TBLOCKS 16  /* BasicTransformerBlocks per Transformer2DModel */
#define UNET_MAX_LAYERS_PER_BLOCK 1024   /* resnets per down block (a bound on what a config can ask) */

/* ---- configuration (config.json keys) ----
 * Levels are indexed like down_blocks (0 = full resolution); up block i works at level
 * n_levels-1-i, as diffusers builds it from the reversed lists. */
typedef struct {
    int in_channels, out_channels;
    int n_levels;                              /* len(block_out_channels) */
    int block_out_channels[UNET_MAX_LEVELS];
    int layers_per_block[UNET_MAX_LEVELS];     /* per down block; up block i has [n-1-i] + 1 */
    int down_attn[UNET_MAX_LEVELS];            /* down block i: 1 CrossAttnDownBlock2D, 0 DownBlock2D */
    int up_attn[UNET_MAX_LEVELS];              /* up block i: 1 CrossAttnUpBlock2D, 0 UpBlock2D */
    int num_heads[UNET_MAX_LEVELS];            /* heads at level i (resolved, see below) */
    int transformer_layers[UNET_MAX_LEVELS];   /* transformer_layers_per_block at level i */
    int mid_block;                             /* 1 UNetMidBlock2DCrossAttn, 0 none (null) */
    int cross_attention_dim;
    int use_linear_projection;                 /* proj_in/out linear (SD2) or 1x1 conv (SD1) */
    int norm_num_groups;
    float norm_eps;                            /* resnets and conv_norm_out */
    int flip_sin_to_cos;
    float freq_shift;
    int time_embed_dim;                        /* time_embedding_dim or 4 * block_out_channels[0] */
    int downsample_padding;                    /* 1; 0 pads (0,1,0,1) then convolves unpadded */
    float mid_block_scale_factor;              /* mid resnets divide their output by it (the
                                                * four SD block types never get diffusers'
                                                * resnet_out_scale_factor: theirs is 1) */
    int center_input_sample;                   /* sample -> 2 sample - 1 first */
    int conv_in_kernel, conv_out_kernel;
    int sample_size;                           /* informational */
    /* SDXL's added conditioning (addition_embed_type "text_time"; other values are refused):
     * the pooled text embedding and the sinusoidal features of 6 time ids pass through
     * add_embedding and are added to the time embedding. */
    int addition_text_time;                    /* 1: "text_time", 0: none */
    int addition_time_embed_dim;               /* addition_time_embed_dim (256 for SDXL) */
    int addition_embed_in;                     /* projection_class_embeddings_input_dim (2816) */
    int addition_text_embeds_dim;              /* addition_embed_in - 6 * addition_time_embed_dim (1280) */
} unet_config_t;

/* The number of time ids of "text_time": original (h, w), crop (top, left), target (h, w). */
#define UNET_N_TIME_IDS 6

/* Reads a diffusers UNet2DConditionModel config object. Absent keys take the diffusers
 * defaults (those of SD 1.x except cross_attention_dim 1280). Heads are resolved as diffusers
 * does: num_attention_heads if present, else attention_head_dim (which SD configs use for the
 * number of HEADS: 8 for SD1, [5, 10, 20, 20] for SD2, [5, 10, 20] for SDXL); an int applies to
 * every level, and each level's head dim is block_out_channels[i] / heads[i].
 * addition_embed_type "text_time" (SDXL) needs addition_time_embed_dim and
 * projection_class_embeddings_input_dim. Options outside the SD family (class embeddings, other
 * addition embeddings, dual or only cross attention, scale-shift time norm, other activations
 * or block types, per-block cross_attention_dim lists with differing values) are refused.
 * Returns 0 or SD_ERR_FORMAT naming `what` and the key. */
int unet_config_from_json(unet_config_t *cfg, const cJSON *json, const char *what);

/* ---- parameters ---- */

/* Layers and norms are the shared types of weights/layer.h (layer_t, norm_layer_t). */

/* ResnetBlock2D (diffusers resnet.py): GN, SiLU, conv1, + time_emb_proj(SiLU(temb)), GN, SiLU,
 * conv2, + shortcut (1x1 conv_shortcut when channels change), / output_scale. */
typedef struct {
    int in, out;
    norm_layer_t norm1, norm2;
    layer_t conv1, conv2, time_emb_proj, conv_shortcut;
    int has_shortcut;
    float output_scale;
} unet_resnet_t;

/* Attention (attention_processor.py) without bias on to_q / to_k / to_v: to_q [D, D] reads the
 * hidden states, to_k / to_v [D, Ckv] the hidden states (self-attention, attn1: Ckv = D) or the
 * context (cross-attention, attn2: Ckv = cross_attention_dim), to_out.0 [D, D]. */
typedef struct {
    layer_t to_q, to_k, to_v, to_out;
} unet_attention_t;

/* BasicTransformerBlock (attention.py): x += attn1(LN1 x); x += attn2(LN2 x, ctx); x += ff(LN3 x). */
typedef struct {
    norm_layer_t norm1, norm2, norm3;
    unet_attention_t attn1, attn2; /* self-attention; cross-attention (to_k / to_v read the context) */
    layer_t ff1, ff2;         /* ff.net.0.proj [8D, D] (GEGLU), ff.net.2 [D, 4D] */
    struct unmix_site *unmix;      /* Cut-Mix-Unmix hook on attn2 (models/unmix.h); NULL: none */
} unet_tblock_t;

/* Transformer2DModel (transformers/transformer_2d.py), continuous input: GroupNorm (eps 1e-6),
 * proj_in, blocks on tokens [B, H*W, D], proj_out, + input. proj_in / proj_out are applied as
 * linears on tokens in both layouts: a 1x1 conv and a linear are the same [D, C] matrix. */
typedef struct {
    int C, D, heads, head_dim, ctx_dim, n_blocks;
    norm_layer_t norm;
    layer_t proj_in, proj_out;
    unet_tblock_t *blocks;   /* [n_blocks] */
} unet_transformer_t;

/* The forward as a program. A stage reads the previous stage's output (conv_in reads the
 * sample) concatenated on channels with skip `pop` when pop >= 0, and its output becomes skip
 * `push` when push >= 0: down path pushes (conv_in, every down resnet / transformer output,
 * every downsampler), up-block resnets pop in reverse order. unet_t.down_blocks / mid_block /
 * up_blocks group the stages as diffusers groups the modules (unet_2d_blocks.c runs them). */
typedef enum {
    UNET_STAGE_CONV_IN, UNET_STAGE_RESNET, UNET_STAGE_TRANSFORMER,
    UNET_STAGE_DOWNSAMPLE, UNET_STAGE_UPSAMPLE, UNET_STAGE_OUT
} unet_stage_kind_t;

typedef struct {
    unet_stage_kind_t kind;
    int index;        /* into resnets / transformers / samplers */
    int level;        /* resolution level of the input (H >> level) */
    int out_level;
    int c_in;         /* channels of the input, skip included */
    int c_out;
    int pop, push;    /* skip indices or -1 */
} unet_stage_t;

/* The blocks of diffusers' unet_2d_blocks.py (unet_2d_blocks.c runs them): views of the modules
 * (in unet_t's arrays) and of the stages that run them, stages first_stage .. first_stage +
 * n_stages - 1 of the program, in forward order. */
typedef enum {
    UNET_DOWN_BLOCK_2D,               /* DownBlock2D: resnets, downsampler */
    UNET_CROSS_ATTN_DOWN_BLOCK_2D,    /* CrossAttnDownBlock2D: (resnet, attention) pairs, downsampler */
    UNET_MID_BLOCK_2D_CROSS_ATTN,     /* UNetMidBlock2DCrossAttn: resnet, (attention, resnet) */
    UNET_UP_BLOCK_2D,                 /* UpBlock2D: resnets on cat(hidden, skip), upsampler */
    UNET_CROSS_ATTN_UP_BLOCK_2D,      /* CrossAttnUpBlock2D: (resnet on cat, attention) pairs, upsampler */
} unet_block_kind_t;

typedef struct {
    unet_block_kind_t kind;
    int n_resnets, n_attentions;
    unet_resnet_t *resnets;            /* [n_resnets] "<block>.resnets.j" */
    unet_transformer_t *attentions;    /* [n_attentions] "<block>.attentions.j"; NULL if none */
    layer_t *sampler;             /* downsamplers.0.conv / upsamplers.0.conv; NULL: none */
    int first_stage, n_stages;
} unet_block_t;

typedef struct {
    unet_config_t cfg;
    layer_t conv_in, time_linear_1, time_linear_2, conv_out;
    layer_t add_linear_1, add_linear_2;   /* add_embedding.linear_1 / linear_2 (cfg.addition_text_time) */
    norm_layer_t conv_norm_out;
    int n_resnets, n_transformers, n_samplers;
    unet_resnet_t *resnets;
    unet_transformer_t *transformers;
    layer_t *samplers;          /* downsamplers.0.conv / upsamplers.0.conv */
    int n_stages;
    unet_stage_t *stages;
    unet_block_t down_blocks[UNET_MAX_LEVELS], up_blocks[UNET_MAX_LEVELS];   /* [cfg.n_levels] */
    unet_block_t mid_block;          /* when cfg.mid_block */
    int n_skips;                     /* 12 for SD 1.5 */
    int *skip_channels, *skip_level; /* [n_skips] */
    /* Registry, in forward order: every conv / linear (what docs/method.md section 2 shifts) and
     * every GroupNorm / LayerNorm, each with its diffusers module path in ->name. */
    int n_layers, n_norms;
    layer_t **layers;
    norm_layer_t **norms;
    /* The same layers as a config-only description (weights/layer.h), in construction order
     * (diffusers' state dict order): the tensors a file must hold, and what init writes. */
    layer_registry_t reg;
    float *small;                    /* one block: every bias / gamma / beta (fp32) */
} unet_t;

/* Tensor lookup by diffusers key ("conv_in.weight"); NULL when absent. Dense weights stay
 * views of the returned data: it must outlive the model. */
typedef const st_tensor_t *(*unet_get_fn)(void *ctx, const char *name);

/* Builds the model from `cfg` and the tensors `get` returns (F32/F16/BF16). Weights are dense
 * views; biases and norm parameters are fp32 copies. proj_in / proj_out may come as [D, C] or
 * [D, C, 1, 1] whatever use_linear_projection says. Extra tensors are ignored. Returns 0, or
 * SD_ERR_FORMAT (missing tensor, bad dtype, bad config) / SD_ERR_SHAPE naming the tensor; *m is
 * then empty. */
int build_unet(unet_t *m, const unet_config_t *cfg, unet_get_fn get, void *ctx);
/* Only the structure (modules, names, stages, skips) for `cfg`: no weights (dense views of NULL
 * data), zero biases, unit gains. Enough to walk the registry (parameter and shift counts) and
 * for unet_acts_floats; not for a forward. Returns 0 or SD_ERR_FORMAT. */
int unet_build_structure(unet_t *m, const unet_config_t *cfg);
void free_unet(unet_t *m);
/* The registry of the layers build_unet builds for `cfg` (weights/layer.h; appended to r), from
 * unet_build_structure. Returns 0 or SD_ERR_FORMAT. */
int unet_registry(const unet_config_t *cfg, layer_registry_t *r);

/* Lookups by module path ("mid_block.attentions.0.proj_in", "conv_norm_out"); NULL if absent. */
layer_t *unet_find_layer(const unet_t *m, const char *path);
norm_layer_t *unet_find_norm(const unet_t *m, const char *path);

/* ---- spectral shifts ---- */
/* Turns weights spectral (SVD of each; keep_base keeps the base for the exact residual form
 * W + U diag(relu(S + s delta) - S) V^T). want(ctx, path) picks layers; NULL: every conv and
 * linear (docs/method.md section 2). Returns 0 or the first SD_ERR_* (message names the layer). */
int unet_make_spectral(unet_t *m, int keep_base, int (*want)(void *ctx, const char *path), void *ctx);
/* Adds a zero shift to every GroupNorm / LayerNorm gain (NORMSHIFT_ELEMENT: [C], SCALAR: [1]). */
void unet_add_norm_shifts(unet_t *m, normshift_mode_t mode);
/* Scale s of every spectral weight and norm shift (inference strength; 1 in training). */
void unet_set_shift_scale(unet_t *m, float s);
/* Caches every spectral weight's effective matrix (inference: sampling then costs what the
 * base model costs). Re-run after changing deltas or scale. */
void unet_bake(unet_t *m);
/* Drops the baked caches (training reads the factors). */
void unet_unbake(unet_t *m);

/* Visits every trained shift: spectral deltas (name: SHIFT_UNET, SHIFT_SPECTRAL, the module path,
 * e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"; shift_name.h derives its
 * keys), then norm shifts (SHIFT_NORM, "...norm1"), with the gradient from g (NULL if none). */
typedef struct unet_grads unet_grads_t;
typedef void (*unet_shift_visit_fn)(void *ctx, const shift_name_t *name, float *shift, float *grad, int n);
void unet_visit_shifts(unet_t *m, unet_grads_t *g, unet_shift_visit_fn fn, void *ctx);

/* ---- activations ---- */

/* ResnetBlock2D, kept for backward (the SiLU outputs are recomputed from h1 / h3). */
typedef struct {
    float *h1, *mean1, *rstd1;   /* GroupNorm-1 output [B, Cin, S]; stats [B, G] */
    float *h2;                   /* conv1 + time projection [B, Cout, S] (GroupNorm-2 input) */
    float *mean2, *rstd2;
    float *h3;                   /* GroupNorm-2 output [B, Cout, S] */
} unet_resnet_acts_t;

/* One Attention over N = B*S query tokens and B*Tk key tokens (Tk = S for attn1, T for attn2). */
typedef struct {
    float *q, *ao;                           /* to_q output, attention output (to_out input) [N, D] */
    float *k, *v;                            /* [B, Tk, D] */
    float *lse;                              /* softmax log-sum-exp [B, heads, S] */
} unet_attention_acts_t;

/* One BasicTransformerBlock over N = B*S tokens of D channels, context T tokens. */
typedef struct {
    float *ln1, *ln1_mean, *ln1_rstd;        /* [N, D], [N] */
    unet_attention_acts_t attn1;
    float *x1;                               /* [N, D] after attn1 */
    float *ln2, *ln2_mean, *ln2_rstd;
    unet_attention_acts_t attn2;
    float *x2;
    float *ln3, *ln3_mean, *ln3_rstd;
    float *gg;                               /* ff.net.0.proj output [ff_rows, 8D] */
    float *x3;                               /* block output */
    int ff_rows;                             /* N in training; a chunk in inference */
} unet_tblock_acts_t;

typedef struct {
    float *gn_mean, *gn_rstd;                /* [B, G] */
    float *tok;                              /* GroupNorm output as tokens [N, C] (proj_in input) */
    float *x0;                               /* proj_in output [N, D] */
    unet_tblock_acts_t blocks[UNET_MAX_TBLOCKS];
} unet_transformer_acts_t;

/* Checkpointing: which stages keep only their output and recompute their inside in backward. */
typedef enum {
    UNET_CKPT_NONE = 0,
    UNET_CKPT_TRANSFORMERS = 1,   /* Transformer2DModels (most of the memory) */
    UNET_CKPT_ALL = 2,            /* also the resnets */
} unet_ckpt_t;

/* Activations of one forward. Training: one allocation laid out once for the capacity
 * (B, H, W, T) holding every stage's output and, for stages not checkpointed, what their
 * backward needs, plus the backward's gradient buffers; a forward may use any B' <= B,
 * H' <= H, W' <= W, T' <= T. Inference: only the skip tensors and two ping-pong buffers; the
 * inside of each stage lives in scratch memory only while the stage runs. */
typedef struct {
    int B, H, W, T;               /* capacity (sample resolution, context tokens) */
    int training;
    unet_ckpt_t ckpt;
    int cur_B, cur_H, cur_W, cur_T;   /* shape of the last forward (0: none yet) */
    float *sample, *timesteps, *ctx;  /* copies of the inputs [B, in, H, W], [B], [B, T, Cc] */
    float *t_sin;                 /* sinusoidal timestep features [B, block_out_channels[0]] */
    float *t_h, *t_a, *t_e;       /* linear_1 out, its SiLU, linear_2 out [B, Tdim] */
    float *temb;                  /* SiLU(time embedding) [B, Tdim]: input of every time_emb_proj */
    /* text_time only (NULL otherwise): cat(text_embeds, time id features) [B, addition_embed_in];
     * add_embedding's linear_1 out, its SiLU, linear_2 out [B, Tdim] (t_e holds the sum) */
    float *add_in, *add_h, *add_a, *add_e;
    float **out;                  /* [n_stages] stage outputs (inference: skip slots / ping-pong) */
    float **skip;                 /* [n_skips] */
    int *keep;                    /* [n_stages] 1: the stage's inside is stored (not recomputed) */
    unet_resnet_acts_t *res;      /* [n_stages] (resnet stages; OUT uses h1 / mean1 / rstd1) */
    unet_transformer_acts_t *tr;  /* [n_stages] (transformer stages) */
    float *ping[2];               /* inference hidden-state buffers */
    float *dh[2], *dskip, *dtemb; /* training: backward's gradient buffers */
    float **dskip_at;             /* [n_skips] into dskip */
    size_t stage_max;             /* floats of the largest stage output at capacity */
    float *memory;
    size_t n_floats;
} unet_acts_t;

/* Returns 0, SD_ERR_ARG (sizes < 1, H or W not a multiple of 2^(n_levels-1)) or SD_ERR_NOMEM. */
int unet_acts_build(unet_acts_t *a, const unet_t *m, int B, int H, int W, int T, int training,
                    unet_ckpt_t ckpt);
void unet_acts_free(unet_acts_t *a);
/* Floats unet_acts_build would allocate (the memory model; needs only the config). */
size_t unet_acts_floats(const unet_t *m, int B, int H, int W, int T, int training, unet_ckpt_t ckpt);

/* ---- forward / backward ---- */

/* SDXL's added conditioning (addition_embed_type "text_time"); NULL for models without it. */
typedef struct {
    const float *text_embeds;   /* [B, addition_text_embeds_dim]: the pooled text embedding */
    const float *time_ids;      /* [B, 6]: original (h, w), crop (top, left), target (h, w) in pixels */
} unet_added_cond_t;

/* out [B, out_ch, H, W] = UNet(sample [B, in_ch, H, W], timesteps [B], ctx [B, T, cross_dim],
 * added). A "text_time" model adds add_embedding(cat(text_embeds, Timesteps(time_ids))) to the
 * time embedding. Training acts keep what unet_backward needs. Returns 0 or SD_ERR_ARG (shape
 * over capacity or not a multiple of 2^(n_levels-1); a "text_time" model without `added` or
 * either of its arrays; `added` given to a model without "text_time"). */
int unet_forward(float *out, const unet_t *m, unet_acts_t *a, const float *sample,
                 const float *timesteps, const float *ctx, const unet_added_cond_t *added,
                 int B, int H, int W, int T);

/* Gradients. For a layer, dw is d(delta) [rank] when it is spectral and dW [out, in*k*k] (fp32)
 * when it is dense. For a norm, dgamma is the gradient of the applied gain (= dL/dgamma
 * without a shift), dshift that of the shift. Any pointer may be NULL (= not wanted). */
typedef struct { float *dw, *dbias; } unet_layer_grads_t;
typedef struct { float *dgamma, *dbeta, *dshift; } unet_norm_grads_t;
struct unet_grads {
    int n_layers, n_norms;
    unet_layer_grads_t *layers;   /* [n_layers], by layer_t.id */
    unet_norm_grads_t *norms;     /* [n_norms], by norm_layer_t.id */
    float *memory;
    size_t n_floats;
};
enum {
    UNET_GRAD_SHIFTS = 1,   /* d(delta) of every spectral weight, d(shift) of every norm shift */
    UNET_GRAD_DENSE = 2,    /* dW of every dense weight, every bias, gamma and beta */
};
/* Allocates (zeroed) the gradients selected by `what` for the model's current weight kinds.
 * Returns 0 or SD_ERR_NOMEM. */
int unet_grads_alloc(unet_grads_t *g, const unet_t *m, unsigned what);
void unet_grads_zero(unet_grads_t *g);
void unet_grads_free(unet_grads_t *g);

/* Backward of the last (training) forward with dout [B, out_ch, H, W] = dL/d out. Accumulates
 * into the non-NULL gradients of g (g may be NULL), into dsample [B, in_ch, H, W], into
 * dctx [B, T, cross_dim] and into dtext_embeds [B, addition_text_embeds_dim] (each NULL = not
 * wanted; dtext_embeds only for a "text_time" model). The time ids get no gradient. */
void unet_backward(float *dsample, float *dctx, float *dtext_embeds, unet_grads_t *g, const float *dout,
                   const unet_t *m, unet_acts_t *a);

/* ---- modules (unet_resnet.c and the files below), exposed for tests and other models ----
 * Layers: a conv reads inp [B, in, H, W] (output H/stride, W/stride); a linear inp [N, in].
 * Norms: GroupNorm over [B, C, S]; LayerNorm over the rows of [B*S, C]; the gain is gamma or
 * the shifted gain. mean / rstd may be NULL in a forward that no backward follows. */
void unet_linear_forward(float *out, const float *inp, const layer_t *l, int N);
void unet_linear_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                          const layer_t *l, int N);
void unet_conv_forward(float *out, const float *inp, const layer_t *l, int B, int H, int W);
void unet_conv_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                        const layer_t *l, int B, int H, int W);
void unet_norm_forward(float *out, float *mean, float *rstd, const float *inp, const norm_layer_t *n,
                       int B, int S);
void unet_norm_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                        const float *mean, const float *rstd, const norm_layer_t *n, int B, int S);
/* Blocks.
 * `a` NULL: inference (inside in scratch, released on return); else the training layout.
 * S = H*W; temb = SiLU(time embedding) [B, Tdim]. Backward accumulates into dx / dtemb /
 * dctx and g (each may be NULL). */
void unet_resnet_forward(float *out, unet_resnet_acts_t *a, const float *x, const float *temb,
                         const unet_resnet_t *r, int B, int H, int W);
void unet_resnet_backward(float *dx, float *dtemb, unet_grads_t *g, const float *dout,
                          const float *x, const float *temb, const unet_resnet_acts_t *a,
                          const unet_resnet_t *r, int B, int H, int W);
void unet_transformer_forward(float *out, unet_transformer_acts_t *a, const float *x,
                              const float *ctx, const unet_transformer_t *t, int B, int S, int T);
void unet_transformer_backward(float *dx, float *dctx, unet_grads_t *g, const float *dout,
                               const float *x, const float *ctx, const unet_transformer_acts_t *a,
                               const unet_transformer_t *t, int B, int S, int T);
/* Attention (unet_attention.c), the one pair behind attn1 and attn2:
 * out [B*S, D] = to_out(softmax(q k^T / sqrt(head_dim)) v) over `heads` heads (heads * head_dim
 * = D, each head a run of head_dim channels), q = to_q(xq) with xq [B*S, D], k = to_k(xkv) and
 * v = to_v(xkv) with xkv [B*Tk, Ckv]: self-attention passes xkv = xq and Tk = S, cross-attention
 * the context and Tk = T. a receives q, k, v, the attention output and the log-sum-exp (what
 * backward reads). unmix: the Cut-Mix-Unmix hook (models/unmix.h; attn2 only), NULL: none.
 * Backward accumulates into dxq [B*S, D], dxkv [B*Tk, Ckv] (dxq == dxkv for self-attention;
 * either may be NULL) and g. */
void unet_attention_forward(float *out, const unet_attention_acts_t *a, const float *xq, const float *xkv,
                            const unet_attention_t *at, struct unmix_site *unmix, int B, int S, int Tk,
                            int heads, int head_dim);
void unet_attention_backward(float *dxq, float *dxkv, unet_grads_t *g, const float *dout, const float *xq,
                             const float *xkv, const unet_attention_acts_t *a, const unet_attention_t *at,
                             const struct unmix_site *unmix, int B, int S, int Tk, int heads, int head_dim);
/* Timesteps (embeddings.py, unet_embeddings.c): t_sin [B, block_out_channels[0]], the sinusoidal
 * features of timesteps [B] (no backward: timesteps are not trained). */
void unet_timesteps_forward(float *t_sin, const float *timesteps, const unet_config_t *c, int B);
/* TimestepEmbedding (time_embedding.linear_1 / linear_2): emb [B, Tdim] = linear_2(act),
 * act = SiLU(h), h = linear_1(t_sin) [B, Tdim]; h and act are kept for backward, which
 * accumulates into dt_sin [B, block_out_channels[0]] (may be NULL) and g. */
void unet_timestep_embedding_forward(float *emb, float *h, float *act, const float *t_sin,
                                     const layer_t *linear_1, const layer_t *linear_2, int B);
void unet_timestep_embedding_backward(float *dt_sin, unet_grads_t *g, const float *demb, const float *t_sin,
                                      const float *h, const float *act, const layer_t *linear_1,
                                      const layer_t *linear_2, int B);
/* SDXL's added conditioning ("text_time": add_time_proj, then add_embedding, a TimestepEmbedding
 * on m->add_linear_1 / add_linear_2): add_in [B, addition_embed_in] = cat(text_embeds [B, Dt],
 * Timesteps(addition_time_embed_dim)(time_ids) [B, 6 * addition_time_embed_dim]) (each row's 6 ids
 * in order, the flip_sin_to_cos / freq_shift of the config), emb [B, Tdim] = linear_2(act),
 * act = SiLU(h), h = linear_1(add_in); add_in, h and act are kept for backward, which
 * accumulates into dtext_embeds [B, Dt] (may be NULL) and g (the time ids are not trained). */
void unet_add_embedding_forward(float *emb, float *add_in, float *h, float *act, const unet_added_cond_t *added,
                                const unet_t *m, int B);
void unet_add_embedding_backward(float *dtext_embeds, unet_grads_t *g, const float *demb, const float *add_in,
                                 const float *h, const float *act, const unet_t *m, int B);
/* Downsample2D (unet_resample.c): out [B, C, H/2, W/2] = conv (3x3, stride 2, padding 1, or
 * (0,1,0,1) when downsample_padding is 0) of x [B, C, H, W], C = conv->in. */
void unet_downsample2d_forward(float *out, const float *x, const layer_t *conv, int B, int H, int W);
void unet_downsample2d_backward(float *dx, unet_grads_t *g, const float *dout, const float *x,
                                const layer_t *conv, int B, int H, int W);
/* Upsample2D: out [B, C, 2H, 2W] = conv3x3(nearest 2x of x [B, C, H, W]); the upsampled input
 * lives in scratch only (backward recomputes it). */
void unet_upsample2d_forward(float *out, const float *x, const layer_t *conv, int B, int H, int W);
void unet_upsample2d_backward(float *dx, unet_grads_t *g, const float *dout, const float *x,
                              const layer_t *conv, int B, int H, int W);
/* Training layouts over a bump allocator; with base NULL only counts (returns floats used). */
size_t unet_resnet_acts_layout(unet_resnet_acts_t *a, float *base, const unet_resnet_t *r, int B, int S);
size_t unet_transformer_acts_layout(unet_transformer_acts_t *a, float *base, const unet_transformer_t *t,
                                    int B, int S, int T);

/* ---- glue to io/model.h (inline so that this header's users link without model.c until
 * they call these) ---- */
static inline const st_tensor_t *unet_component_get_(void *ctx, const char *name) {
    return component_find((const model_component_t *)ctx, name);
}
static inline int unet_config_from_component(unet_config_t *cfg, const model_component_t *c) {
    return unet_config_from_json(cfg, c->config, c->name);
}
static inline int build_unet_from_component(unet_t *m, const model_component_t *c) {
    unet_config_t cfg;
    int rc = unet_config_from_component(&cfg, c);
    return rc ? rc : build_unet(m, &cfg, unet_component_get_, (void *)c);
}

#endif
