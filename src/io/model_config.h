/* Internal to src/io/model*.c: diffusers-style configs derived from tensor shapes for single-file
 * checkpoints (whose files carry no config), and the default scheduler config. The public
 * config accessors and the expected tensors (component_registry) are declared in io/model.h. */
#ifndef SVDIFF_IO_MODEL_CONFIG_H
#define SVDIFF_IO_MODEL_CONFIG_H

#include "io/model.h"

/* Each sets c->config (replacing any) from c's tensors (diffusers names, already mapped).
 * Errors name the tensor the derivation needed. */
/* pooled_dim: the second text encoder's projection width (SDXL), which splits add_embedding's
 * input into the pooled embedding and the 6 time embeddings; 0 without one. */
int model_derive_unet_config(model_component_t *c, model_layout_t layout, int pooled_dim);
int model_derive_vae_config(model_component_t *c, model_layout_t layout);
int model_derive_text_config(model_component_t *c, model_layout_t layout);
/* PNDMScheduler with SD's training schedule (scaled_linear 0.00085..0.012, 1000 steps),
 * prediction_type epsilon (model_decide_prediction then sets it for single files); for SDXL
 * (MODEL_LAYOUT_LDM_SDXL) SDXL base 1.0's EulerDiscreteScheduler (timestep_spacing leading,
 * steps_offset 1) on the same schedule. */
cJSON *model_default_scheduler_config(model_layout_t layout);
/* Decides m->scheduler_config's prediction_type for an opened model (rules in model.h, after
 * opt->scheduler_config has replaced the config) and fills m->prediction_why. Errors: a bad flag
 * value, an unreadable or malformed NAME.yaml, a metadata value that is no prediction type. */
int model_decide_prediction(model_t *m, const model_open_options_t *opt);

#endif
