/* Model files: a diffusers model folder or a single-file SD checkpoint (CompVis/LDM layout,
 * SD 1.x with CLIP-L, SD 2.x with OpenCLIP-H, or SDXL's sgm layout with CLIP-L and OpenCLIP-bigG),
 * opened into components whose tensors are
 * named with the diffusers names the whole code base uses. Tensors are views into the
 * mmap'ed files in their stored dtype (never converted here). Renaming is one table
 * (names.c); reshapes (LDM VAE attention [C,C,1,1] -> [C,C]) and the slicing of OpenCLIP's
 * fused in_proj into q/k/v are zero-copy views. Configs are diffusers-style JSON objects:
 * read from config.json, or derived from tensor shapes for single files. */
#ifndef SVDIFF_IO_MODEL_H
#define SVDIFF_IO_MODEL_H

#include <cJSON.h>

#include "io/safetensors.h"
#include "weights/layer.h"

typedef enum {
    MODEL_LAYOUT_DIFFUSERS = 0,   /* folder with model_index.json */
    MODEL_LAYOUT_LDM_SD1 = 1,     /* single file, cond_stage_model.transformer.* (CLIP-L) */
    MODEL_LAYOUT_LDM_SD2 = 2,     /* single file, cond_stage_model.model.* (OpenCLIP) */
    MODEL_LAYOUT_LDM_SDXL = 3,    /* single file (sgm), conditioner.embedders.0.transformer.* (CLIP-L)
                                     and conditioner.embedders.1.model.* (OpenCLIP bigG) */
} model_layout_t;

/* What a model is, from its components (not its layout): SDXL when it has text_encoder_2 and a
 * UNet with addition_embed_type "text_time"; SD 2.x when the text encoder uses the exact GELU
 * (OpenCLIP) or the UNet uses linear projections; SD 1.x otherwise. */
typedef enum {
    MODEL_FAMILY_SD1 = 0,
    MODEL_FAMILY_SD2 = 1,
    MODEL_FAMILY_SDXL = 2,
} model_family_t;

typedef struct {
    char *name;            /* "unet", "vae", "text_encoder", "text_encoder_2" */
    cJSON *config;         /* diffusers-style config (owned) */
    int n_tensors;
    st_tensor_t *tensors;  /* views, diffusers names (owned strings), sorted by name */
} model_component_t;

struct model_owned {
    void *p;
    size_t n;
};

typedef struct {
    char *path;
    model_layout_t layout;
    int n_sets;
    st_set_t *sets;              /* the opened files (owned) */
    model_component_t unet, vae, text_encoder;   /* n_tensors == 0 when absent */
    model_component_t text_encoder_2;            /* SDXL's second encoder; n_tensors == 0 when absent */
    cJSON *scheduler_config;     /* scheduler/scheduler_config.json or derived defaults */
    char *tokenizer_dir;         /* folder with vocab.json + merges.txt, or NULL */
    char *tokenizer_2_dir;       /* SDXL: tokenizer_2/ of a folder, or --tokenizer for a single file
                                    (the same vocabulary; SDXL's tokenizer_2 pads with "!"); NULL */
    int force_zeros_for_empty_prompt;   /* model_index.json's flag (SDXL base: true): the empty
                                           negative prompt's context and pooled embedding are zeros;
                                           1 for SDXL single files, 0 otherwise when absent */
    int n_owned;
    struct model_owned *owned;   /* buffers the model owns: tensors that cannot stay views of the
                                    file (OpenCLIP's text_projection, stored transposed) */
    char prediction_why[512];    /* where scheduler_config's prediction_type came from (svdiff info) */
    int prediction_guessed;      /* 1 when a heuristic chose it (an SD 2.x single file without config) */
} model_t;

typedef struct {
    const char *tokenizer_dir;     /* --tokenizer DIR (single files carry none); NULL: default */
    const char *prediction_type;   /* --prediction-type epsilon|v_prediction; NULL: the model's */
    const char *scheduler_config;  /* --scheduler-config FILE (a diffusers scheduler_config.json)
                                      replacing the model's; NULL: the model's */
} model_open_options_t;

/* Opens `path` (a folder, a .safetensors file, or a PyTorch .ckpt / .pt / .pth checkpoint).
 * Errors (SD_ERR_IO / SD_ERR_FORMAT / SD_ERR_SHAPE) name the file and the offending tensor or
 * config key.
 * The scheduler config's prediction_type is decided, first match wins (m->prediction_why says
 * which): opt->prediction_type; prediction_type in opt->scheduler_config; for a diffusers folder
 * its scheduler_config.json; for a single file NAME.safetensors or NAME.ckpt (whose tensors cannot
 * say whether the model predicts noise or v) the LDM config NAME.yaml beside it (model.params.parameterization,
 * as A1111 reads it), then the file's metadata (modelspec.prediction_type, kohya's
 * ss_v_parameterization, modelspec.architecture *-768-v), then a guess: SD 1.x is epsilon; SD 2.x
 * is what ComfyUI picks (v_prediction when the population std of the last up block's
 * transformer_blocks.0.norm1.bias exceeds 0.09, LDM's output_blocks.11.1; epsilon for inpainting
 * models, in_channels != 4), and a warning, once a process, names the flag. */
int model_open(model_t *m, const char *path, const model_open_options_t *opt);
void model_close(model_t *m);

model_family_t model_family(const model_t *m);
/* "sd1", "sd2", "sdxl" (static string). */
const char *model_family_name(model_family_t f);

/* Lookup by diffusers name; NULL when absent. */
const st_tensor_t *component_find(const model_component_t *c, const char *name);
/* Lookup that must succeed with the given shape (ndim dims; a dim of -1 matches anything);
 * on failure returns SD_ERR_FORMAT/SD_ERR_SHAPE with a message naming component, tensor and
 * the shapes. */
int component_require(const model_component_t *c, const char *name, int ndim,
                      const int64_t *shape, const st_tensor_t **out);

/* Config access with errors naming the component and key. */
int config_int(const model_component_t *c, const char *key, int *out);
int config_float(const model_component_t *c, const char *key, float *out);
int config_bool(const model_component_t *c, const char *key, int *out);
int config_string(const model_component_t *c, const char *key, const char **out);
/* An integer array config (e.g. block_out_channels); *n set to its length (<= max). A
 * single integer where an array is allowed (attention_head_dim) reads as an array of one. */
int config_int_array(const model_component_t *c, const char *key, int *out, int max, int *n);
/* Optional keys: returns the default when absent (errors still for a wrong JSON type). */
int config_int_or(const model_component_t *c, const char *key, int dflt, int *out);
int config_float_or(const model_component_t *c, const char *key, float dflt, float *out);
int config_string_or(const model_component_t *c, const char *key, const char *dflt, const char **out);

/* The layers of a component (weights/layer.h registry, appended to r) as its model's builder
 * describes them from c->config: build_unet, build_vae, build_clip by the component's name
 * ("unet", "vae", "text_encoder" and "text_encoder_2"). The config must state the keys that size the model (else
 * SD_ERR_FORMAT naming the key); config errors are the builders' (SD_ERR_FORMAT). */
int component_registry(const model_component_t *c, layer_registry_t *r);

/* Every tensor a component's config implies: those of component_registry's layers (diffusers
 * names and shapes, module order). Only c->config is read. fn returning non-zero stops the walk
 * and that value is returned; config errors (missing key, unsupported value) SD_ERR_FORMAT. */
typedef int (*model_tensor_fn)(void *ctx, const char *name, int ndim, const int64_t *shape);
int component_expected_tensors(const model_component_t *c, model_tensor_fn fn, void *ctx);
/* Checks that the component holds exactly those tensors, with those shapes, in a float dtype
 * (model_open does this for every component it opens). */
int component_validate(const model_component_t *c);

#endif
