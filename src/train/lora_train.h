/* The LoRA baseline of `svdiff train --mode lora` (trainer.h, TRAIN_MODE_LORA): every UNet conv /
 * linear (the layers the spectral shifts train) and, with --train-text-encoder, the six linears of
 * every text-encoder layer get an adapter W + (alpha/r) B A (weights/lora.h, peft initialisation),
 * trained through the factors with the shift trainer's loop, optimizer, checkpoints and samples.
 * The result is OUT_DIR/pytorch_lora_weights.safetensors in diffusers naming. */
#ifndef SVDIFF_TRAIN_LORA_TRAIN_H
#define SVDIFF_TRAIN_LORA_TRAIN_H

#include "train/train_mode.h"

#define LORA_FILE_NAME "pytorch_lora_weights.safetensors"

/* The mode (TRAIN_MODE_LORA_OPS): prepare turns the trained layers into WEIGHT_LORA (A
 * kaiming-uniform from a stream keyed by cfg.seed and the layer's index, B = 0; SD_ERR_ARG when
 * cfg.lora_rank < 1); visit lists one array [A; B] per adapter, "unet/<module>" / "te/<module>",
 * group 0; save writes OUT_DIR/LORA_FILE_NAME with lora_train_save. */
/* Writes `path`: "unet.<module>.lora_A.weight" [r, in] (conv: [r, c_in, kh, kw]), ".lora_B.weight"
 * [out, r] (conv: [out, r, 1, 1]), "text_encoder.<module>..." likewise; F32 (F16 with
 * cfg.save_fp16); metadata lora_rank, lora_alpha, base_model_hash. *bytes: the file's size. */
int lora_train_save(const train_model_t *m, const char *path, long *bytes);

#endif
