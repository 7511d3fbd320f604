/* The one table from CompVis/LDM single-file checkpoint names to the diffusers / transformers
 * names the code base uses: UNet (model.diffusion_model.*), VAE (first_stage_model.*), CLIP-L
 * text (cond_stage_model.transformer.*, HF names inside) and OpenCLIP text
 * (cond_stage_model.model.*); SDXL's sgm layout adds conditioner.embedders.0.transformer.* (CLIP-L,
 * HF names: text_encoder) and conditioner.embedders.1.model.* (OpenCLIP bigG: text_encoder_2),
 * and its UNet's label_emb (add_embedding). The block arithmetic needs a little geometry read from the keys
 * first (names_ldm_geometry). Facts: diffusers' single-file
 * conversion (loaders/single_file_utils.py). */
#ifndef SVDIFF_IO_NAMES_H
#define SVDIFF_IO_NAMES_H

#include "io/safetensors.h"

#define NAMES_MAX 256   /* longest name handled (SD names are < 100 characters) */

typedef enum {
    NAMES_UNKNOWN = 0,   /* not part of any layout this table knows */
    NAMES_IGNORE,        /* known but unused (EMA copies, DDPM buffers, SD2's last layer, ...) */
    NAMES_UNET,
    NAMES_VAE,
    NAMES_TEXT,
    NAMES_TEXT2,         /* SDXL's second text encoder (OpenCLIP bigG with its projection) */
} names_target_t;

typedef enum {
    NAMES_AS_IS = 0,
    NAMES_SQUEEZE,       /* [C, C, 1, 1] conv kernel -> [C, C] linear (LDM VAE mid attention) */
    NAMES_SPLIT_QKV,     /* fused [3C, ...] -> three row blocks q, k, v (OpenCLIP in_proj) */
    NAMES_TRANSPOSE,     /* [in, out] -> [out, in] (OpenCLIP text_projection, used as x @ P): a copy */
} names_xform_t;

typedef struct {
    int unet_layers_per_block;  /* input/output block k <-> (level, index): k = (lpb+1)*level + ... */
    int vae_levels;             /* decoder.up.{levels-1-i} <-> decoder.up_blocks.i */
    int openclip_layers;        /* resblocks in the file; the last one is ignored (SD2 runs the
                                   penultimate layer: diffusers' SD2 text encoder has one fewer) */
    int openclip2_layers;       /* SDXL's conditioner.embedders.1 resblocks, all kept (the pooled
                                   embedding needs the last layer) */
} names_geom_t;

typedef struct {
    names_target_t target;
    names_xform_t xform;
    int n;                          /* names written: 1, or 3 for NAMES_SPLIT_QKV (q, k, v) */
    char name[3][NAMES_MAX];
} names_map_t;

/* Reads the geometry from an LDM checkpoint's keys. */
void names_ldm_geometry(names_geom_t *g, const st_set_t *s);
/* Maps one LDM key. target NAMES_UNKNOWN when the key fits no rule. */
void names_ldm_to_diffusers(names_map_t *out, const char *ldm, const names_geom_t *g);

#endif
