/* Random initialisation of a model folder (`svdiff init`): from diffusers-style component
 * configs to a diffusers folder whose tensors are exactly those the loader expects (the list
 * comes from the models' layer registries, component_registry, which model_open validates
 * against, so init and model_open cannot disagree), initialised
 * as PyTorch / diffusers / transformers do by default, from the project's Philox RNG.
 *
 * Initialisation per tensor kind:
 *   UNet / VAE (diffusers adds no init of its own: PyTorch module defaults; conv_out is NOT
 *   zeroed, diffusers only does that in ControlNet-style zero modules):
 *     conv / linear weight  kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), +1/sqrt(fan_in)),
 *                           fan_in = in_channels * kh * kw
 *     conv / linear bias    U(-1/sqrt(fan_in), +1/sqrt(fan_in)) with the weight's fan_in
 *     GroupNorm/LayerNorm   weight 1, bias 0
 *   Text encoder (transformers CLIPPreTrainedModel._init_weights, f = initializer_factor,
 *   d = hidden_size, L = num_hidden_layers):
 *     token / position embedding   N(0, 0.02 f)
 *     q/k/v_proj weight            N(0, d^-0.5 (2L)^-0.5 f)
 *     out_proj weight              N(0, d^-0.5 f)
 *     mlp.fc1 weight               N(0, (2d)^-0.5 f)
 *     mlp.fc2 weight               N(0, d^-0.5 (2L)^-0.5 f)   (transformers uses d, not the
 *                                                             intermediate size, here)
 *     every linear bias 0; LayerNorm weight 1, bias 0
 * Random streams: tensor `name` of component `comp` draws from the Philox stream
 * seed' = mix(seed, FNV-1a("comp/name")), uniform as rng_uniform, normal as rng_fill_normal,
 * so the same seed gives the same bytes whatever the thread count, and a tensor's values do
 * not depend on which other tensors the config has. */
#ifndef SVDIFF_MODELS_INIT_H
#define SVDIFF_MODELS_INIT_H

#include <cJSON.h>
#include <stdint.h>

#include "weights/layer.h"

typedef struct {
    uint64_t seed;
    int fp16;                   /* 1: F16 safetensors (the default model's), 0: F32 */
    const char *tokenizer_dir;  /* copied to MODEL_DIR/tokenizer; its vocabulary size fills
                                 * text_encoder.vocab_size when the config leaves it out */
    int force;                  /* allow an existing, non-empty output folder */
} model_init_options_t;

/* Sizes of a config: tensors, parameters, bytes at the chosen dtype, and multiply-add FLOPs
 * (x2) of one forward: the UNet on one sample_size x sample_size input with a `tokens`-token
 * context, the text encoders on `tokens` tokens (convolutions, linears and attention products;
 * norms and activations, a few percent, are left out). Index 0 unet, 1 text_encoder, 2 vae,
 * 3 text_encoder_2 (SDXL; 0 tensors when the config has none). */
#define MODEL_INIT_COMPONENTS 4
typedef struct {
    int n_tensors[MODEL_INIT_COMPONENTS];
    int64_t params[MODEL_INIT_COMPONENTS];
    double flops[MODEL_INIT_COMPONENTS];      /* VAE: not computed (0) */
    int64_t bytes;        /* all weights at the chosen dtype */
    int sample_size;
    int tokens;           /* text context: max_position_embeddings, at most 77 */
} model_init_stats_t;

/* Fills `stats` from a config {"unet": {...}, "text_encoder": {...}, "scheduler": {...},
 * "vae": {...} optional, "text_encoder_2": {...} optional (SDXL)}; text_encoder.vocab_size (and
 * text_encoder_2's) must be present (or vocab_size >= 1 given: it is used when the config has
 * none). Errors SD_ERR_FORMAT name component and key. */
int model_init_stats(const cJSON *config, int vocab_size, int fp16, model_init_stats_t *stats);

/* Writes the folder: model_index.json, unet/{config.json, diffusion_pytorch_model.safetensors},
 * text_encoder/{config.json, model.safetensors}, scheduler/scheduler_config.json,
 * vae/ when the config has one, tokenizer/ when opt->tokenizer_dir is set; then opens the
 * result with model_open as a check. With "text_encoder_2" the folder is an SDXL one
 * (StableDiffusionXLPipeline, force_zeros_for_empty_prompt true): text_encoder_2/ too, and
 * tokenizer_2/ (the same files, padding with "!" as SDXL's) when opt->tokenizer_dir is set.
 * stats may be NULL. */
int model_init(const cJSON *config, const char *out_dir, const model_init_options_t *opt,
               model_init_stats_t *stats);

/* The initial values of one tensor (dst holds its numel floats), as model_init writes them
 * before any dtype conversion: tensor `name` (its random stream) of layer `spec` (its kind, fan_in
 * and init_std; weights/layer.h), part 0 its weight / gain, 1 its bias / offset; `component` is
 * "unet", "text_encoder" or "vae". Returns 0, or SD_ERR_ARG for a layer no rule covers (an
 * embedding without init_std). For tests. */
int model_init_tensor(float *dst, const char *component, const layer_spec_t *spec, int part, const char *name,
                      int ndim, const int64_t *shape, uint64_t seed);

/* Reads a JSON file (for the CLI). */
int model_init_read_config(const char *path, cJSON **out);

#endif
