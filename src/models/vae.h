/* AutoencoderKL (diffusers autoencoder_kl.py / vae.py), forward only (the VAE is frozen):
 * encoder (image -> mean and logvar of the latent Gaussian), sampling and scaling of latents,
 * decoder (latents -> image), and uint8 image <-> tensor conversion as diffusers'
 * VaeImageProcessor. Memory-aware: see vae.c (one image at a time, each activation freed as
 * soon as it is dead, 3x3 convolutions in bands of rows with GroupNorm + SiLU and nearest
 * upsampling fused into the band's input, attention through the bounded-memory operator). */
#ifndef SVDIFF_MODELS_VAE_H
#define SVDIFF_MODELS_VAE_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "io/model.h"
#include "io/safetensors.h"
#include "weights/layer.h"
#include "weights/weight.h"

#define VAE_MAX_BLOCKS 8
#define VAE_MAX_LAYERS_PER_BLOCK 1024   /* a config alone builds the layer registry: bounded */
#define VAE_NORM_EPS 1e-6f   /* every GroupNorm of the diffusers VAE (not a config key) */

typedef struct {
    int in_channels, out_channels;   /* image channels (3) */
    int latent_channels;             /* 4 for SD */
    int n_blocks;                    /* len(block_out_channels) */
    int block_out_channels[VAE_MAX_BLOCKS];
    int layers_per_block;            /* resnets per encoder block; decoder blocks have one more */
    int norm_num_groups;
    float scaling_factor;            /* 0.18215 for SD 1.x / 2.x */
    float shift_factor;              /* 0 when the config has none (null or absent) */
    int sample_size;                 /* informational (first entry when a list) */
    int use_quant_conv, use_post_quant_conv, mid_block_add_attention;   /* default 1 */
} vae_config_t;

/* Reads a diffusers AutoencoderKL config.json object. Absent keys take AutoencoderKL's
 * defaults (3, 3, 4, [64], 1, 32, 0.18215, shift none, 32, true, true, true); act_fn must be
 * "silu", down/up_block_types (when present) DownEncoderBlock2D / UpDecoderBlock2D, one per
 * block; norm_num_groups must divide every channel count. `what` names the source in errors.
 * Returns 0 or SD_ERR_FORMAT naming the key. */
int vae_config_from_json(vae_config_t *cfg, const cJSON *json, const char *what);

/* Spatial factor between image and latents: 2^(n_blocks - 1) (8 for SD). */
int vae_scale_factor(const vae_config_t *cfg);

/* Layers are the shared types of weights/layer.h: convs (weight [out, in*k*k], dense view in its
 * stored dtype, fp32 bias [out]) and the attention's linears ([out, in]) are layer_t, GroupNorms
 * (fp32 gamma / beta [C]) norm_layer_t. */

/* ResnetBlock2D without time embedding: GN, SiLU, conv1, GN, SiLU, conv2, + shortcut. */
typedef struct {
    int ic, oc;
    norm_layer_t norm1, norm2;
    layer_t conv1, conv2;
    layer_t conv_shortcut;   /* 1x1, only when ic != oc */
    int has_shortcut;
} vae_resnet_t;

/* diffusers Attention of the mid block: GroupNorm, one head over all pixels, residual. */
typedef struct {
    norm_layer_t group_norm;
    layer_t to_q, to_k, to_v, to_out;   /* to_out.0 */
} vae_attention_t;

typedef struct {
    vae_resnet_t resnets[2];
    vae_attention_t attn;
    int has_attn;
} vae_mid_t;

/* DownEncoderBlock2D / UpDecoderBlock2D: resnets, then downsamplers.0.conv (3x3 stride 2
 * after padding (0,1,0,1)) or upsamplers.0.conv (after nearest 2x), except the last block. */
typedef struct {
    int n_resnets;
    vae_resnet_t *resnets;
    layer_t sampler;
    int has_sampler;
} vae_block_t;

typedef struct {
    layer_t conv_in;
    vae_block_t *blocks;   /* [n_blocks]: down_blocks (encoder) / up_blocks (decoder) */
    vae_mid_t mid;
    norm_layer_t norm_out;   /* conv_norm_out */
    layer_t conv_out;
} vae_coder_t;

typedef struct {
    vae_config_t cfg;
    vae_coder_t encoder, decoder;
    layer_t quant_conv, post_quant_conv;   /* 1x1; present per use_(post_)quant_conv */
    size_t band_floats;   /* im2col floats per band of a 3x3 conv (0: default, 16M); tests set it tiny */
    float *small;         /* one block holding every bias / gamma / beta (fp32) */
    size_t n_small;
} vae_t;

/* Tensor lookup by diffusers name (e.g. "encoder.down_blocks.0.resnets.0.norm1.weight"); NULL
 * when absent. Dense weights stay views of the returned data: it must outlive the model. */
typedef const st_tensor_t *(*vae_get_fn)(void *ctx, const char *name);

/* The layers build_vae builds for `cfg` (weights/layer.h registry; appended to r): encoder,
 * quant_conv, post_quant_conv, decoder. */
void vae_registry(const vae_config_t *cfg, layer_registry_t *r);

/* Every tensor build_vae reads for `cfg`, in the registry's order (conv weights [oc, ic, k, k],
 * attention linears [C, C], vectors [n]). Writes up to `max` specs (out may be NULL) and
 * returns the total count. */
#define VAE_NAME_MAX 128
typedef struct {
    char name[VAE_NAME_MAX];
    int ndim;
    int64_t shape[4];
} vae_param_spec_t;
int vae_param_specs(const vae_config_t *cfg, vae_param_spec_t *out, int max);

/* Builds the model from `cfg` and the tensors `get` returns (F32/F16/BF16). Weights are dense
 * views; biases and GroupNorm parameters are converted to fp32 copies. Attention weights may
 * also come as [C, C, 1, 1] (LDM) and under the pre-0.14 diffusers names (query, key, value,
 * proj_attn). Extra tensors are ignored. Returns 0, or SD_ERR_FORMAT (missing tensor, wrong
 * dtype) / SD_ERR_SHAPE naming the tensor; *m is then empty. */
int build_vae(vae_t *m, const vae_config_t *cfg, vae_get_fn get, void *ctx);
void free_vae(vae_t *m);

/* Encoder: img[B, in_channels, H, W] (in [-1, 1]) -> mean, logvar [B, latent_channels, H/f,
 * W/f] with f = vae_scale_factor; logvar clamped to [-30, 20] (DiagonalGaussianDistribution).
 * H and W must be multiples of f. Returns 0, SD_ERR_SHAPE or SD_ERR_NOMEM. */
int vae_encode(const vae_t *m, float *mean, float *logvar, const float *img, int B, int H, int W);

/* Latents for the diffusion model from the posterior, n values:
 * latents = (mean + exp(0.5 logvar) * noise - shift_factor) * scaling_factor.
 * noise (standard normal, from the caller's seeded RNG) may be NULL: the mode (mean). */
void vae_sample_latents(float *latents, const float *mean, const float *logvar, const float *noise,
                        size_t n, const vae_config_t *cfg);

/* Decoder: latents[B, latent_channels, h, w] (scaled as above; decode first maps them back
 * with z = latents / scaling_factor + shift_factor) -> img[B, out_channels, h*f, w*f], not
 * clamped. Returns 0, SD_ERR_SHAPE or SD_ERR_NOMEM. */
int vae_decode(const vae_t *m, float *img, const float *latents, int B, int h, int w);

/* Bytes of activations the encoder / decoder of this thread held at most at one time since
 * the last reset (weights, the caller's buffers and operator scratch are not counted). */
size_t vae_peak_activation_bytes(void);
void vae_reset_peak(void);

/* uint8 image [H, W, C] (HWC, as read from a file) -> float [C, H, W] in [-1, 1]:
 * x / 255 * 2 - 1 in fp32 (VaeImageProcessor: to numpy / 255, then normalize 2x - 1). */
void vae_image_to_tensor(float *out, const uint8_t *img, int H, int W, int C);
/* float [C, H, W] -> uint8 [H, W, C]: ((x / 2 + 0.5) clamped to [0, 1]) * 255 in fp32, rounded
 * half to even as numpy's round in VaeImageProcessor.numpy_to_pil; NaN -> 0. */
void vae_tensor_to_image(uint8_t *img, const float *x, int H, int W, int C);

/* ---- glue to io/model.h (inline so that this header's users link without model.c until
 * they call these) ---- */
static inline const st_tensor_t *vae_component_get_(void *ctx, const char *name) {
    return component_find((const model_component_t *)ctx, name);
}
static inline int vae_config_from_component(vae_config_t *cfg, const model_component_t *c) {
    return vae_config_from_json(cfg, c->config, c->name);
}
static inline int build_vae_from_component(vae_t *m, const model_component_t *c) {
    vae_config_t cfg;
    int rc = vae_config_from_component(&cfg, c);
    return rc ? rc : build_vae(m, &cfg, vae_component_get_, (void *)c);
}

#endif
