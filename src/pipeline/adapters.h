/* Weight deltas and LoRA files at generation time (`svdiff generate --delta / --lora`): each file's
 * tensors are resolved to the model's parameters by name, checked against the model's shapes, and
 * added into the effective fp32 weights, after any spectral shifts (pipeline_apply_shifts), so that
 *     W_eff = (shifted W) + sum_i scale_i * dW_i + sum_j scale_j * (alpha_j / r_j) B_j A_j.
 * The effective matrices are baked once; sampling then costs what the base model costs. */
#ifndef SVDIFF_PIPELINE_ADAPTERS_H
#define SVDIFF_PIPELINE_ADAPTERS_H

#include "pipeline/pipeline.h"

/* `--delta FILE_OR_DIR[:SCALE]`: a file written by `svdiff train --mode full --save-delta`
 * (weight_delta.safetensors: UNet tensors by diffusers name; weight_delta_te.safetensors: text
 * encoder tensors "text_model....") or the training output folder holding them. Every tensor
 * must name a weight, bias or norm parameter of the model with the model's shape (SD_ERR_SHAPE /
 * SD_ERR_ARG naming the file and tensor otherwise). A file whose base_model_hash is not the
 * model's is refused unless `force`. */
int pipeline_apply_deltas(pipeline_t *p, const pipeline_shift_t *deltas, int n, int force);

/* `--lora FILE_OR_DIR[:SCALE]`: a LoRA file (a folder means DIR/pytorch_lora_weights.safetensors) in
 * diffusers naming ("unet.<module>.lora_A.weight" [r, in(, kh, kw)], "...lora_B.weight"
 * [out, r(, 1, 1)], "text_encoder.<module>..."; alpha from the "lora_alpha" metadata, else alpha =
 * r) or kohya naming ("lora_unet_<module with _>.lora_down.weight", ".lora_up.weight", ".alpha";
 * "lora_te_..."; kohya names map back to any UNet layer or norm and any text-encoder linear, embedding
 * or LayerNorm). Merged as W += scale * alpha / r * B A. A module may instead carry a full difference,
 * "<module>.diff" (weight, e.g. a norm gain from `svdiff shifts to-lora`) and/or ".diff_b" (bias), the
 * LyCORIS keys, added as W += scale * diff. Same checks as the deltas. */
int pipeline_apply_loras(pipeline_t *p, const pipeline_shift_t *loras, int n, int force);

/* The weight of a module ("down_blocks.0.resnets.0.conv1", "text_model.encoder.layers.0.mlp.fc1";
 * te = 1 for the text encoder, 2 for SDXL's text_encoder_2), or NULL. Exposed for the LoRA trainer and tests. */
weight_t *pipeline_find_weight(pipeline_t *p, int te, const char *module);

#endif
