/* A loaded text-to-image model and the steps every verb shares: prompt -> text-encoder
 * context, seeded latents -> denoising loop (classifier-free guidance batched in one UNet
 * call), latents -> pixels (VAE decode, or the latents themselves for a pixel-space model).
 * generate, and later train (class images) and edit, sit on top of this. */
#ifndef SVDIFF_PIPELINE_H
#define SVDIFF_PIPELINE_H

#include <signal.h>
#include <stdint.h>

#include "diffusion/diffusion.h"
#include "io/model.h"
#include "models/clip.h"
#include "models/tokenizer.h"
#include "models/unet.h"
#include "models/vae.h"
#include "shifts/shifts.h"

typedef struct {
    model_t model;
    clip_tokenizer_t *tok;
    clip_t clip;
    unet_t unet;
    vae_t vae;
    int has_vae;             /* 0: pixel-space model, the UNet works on images directly */
    noise_schedule_t sched;
    int latent_channels;     /* UNet in_channels */
    int scale_factor;        /* image pixels per latent pixel (8 for SD, 1 without a VAE) */
    int ctx_dim;             /* text-encoder hidden size = UNet cross_attention_dim */
    int n_ctx;               /* context tokens: the text encoder's max_position_embeddings, at most 77
                              * (SD: 77; a small model for short captions may use fewer and
                              * save the text encoder and cross-attention that work) */
    /* SDXL: a second tokenizer and text encoder (OpenCLIP bigG with its projection). The context
     * is both encoders' penultimate hidden states side by side (ctx_dim = the two widths), the
     * pooled embedding TE2's projection at the EOS token, fed to the UNet's add_embedding. */
    clip_tokenizer_t *tok2;
    clip_t clip2;
    int has_te2;
    int pooled_dim;          /* UNet addition_text_embeds_dim (TE2 projection_dim); 0 without text_time */
    int force_zeros_empty;   /* model_index.json force_zeros_for_empty_prompt (SDXL default 1): no
                              * negative prompt gives a zero context and pooled embedding */
} pipeline_t;

/* Opens a model folder or single file and builds tokenizer, text encoder, UNet, VAE and
 * noise schedule. Returns 0 or an SD_ERR_* with a message naming what is wrong. */
int pipeline_open(pipeline_t *p, const char *model_path, const char *tokenizer_dir);
/* The same with every model_open option (tokenizer, prediction type, scheduler config); opt may
 * be NULL. */
int pipeline_open_model(pipeline_t *p, const char *model_path, const model_open_options_t *opt);
void pipeline_close(pipeline_t *p);
/* The model's native image size in pixels: the UNet's sample_size times the VAE factor (1 without
 * a VAE): the default of generate's --width / --height and of edit's and train's --resolution. */
int pipeline_native_size(const pipeline_t *p);

/* Spectral shifts for generation (`--shifts FILE_OR_DIR[:SCALE]`, shifts.h): a shift file, or a
 * training output folder (spectral_shifts.safetensors and/or spectral_shifts_te.safetensors). */
typedef struct {
    const char *path;
    float scale;
} pipeline_shift_t;

/* Adds scale * shifts of every file to the model (entries under "text_model." go to the text
 * encoder, the rest to the UNet; several files add up), then bakes the effective weights, so
 * sampling costs what the base model costs. A file whose base_model_hash differs from the
 * model's is refused (SD_ERR_ARG naming both hashes) unless `force`; a file without one
 * (svdiff-pytorch) is accepted with a warning. A folder's two files must carry the same pair_id
 * (st_pair_check) unless `force`. Matrices get their SVD from the cache in
 * `svd_cache_dir` (NULL: no cache), which is updated with what had to be computed. */
int pipeline_apply_shifts(pipeline_t *p, const pipeline_shift_t *shifts, int n, int force,
                          const char *svd_cache_dir);

/* The same for one shift set already in memory (the library API's svdiff_shifts_t), `label` naming
 * it in messages. */
int pipeline_apply_shift_set(pipeline_t *p, const shift_set_t *s, const char *label, float scale, int force,
                             const char *svd_cache_dir);

/* ctx[n, n_ctx, ctx_dim] = text encoder(prompts[i]); warns on stderr when a prompt is truncated. */
int pipeline_encode_prompts(pipeline_t *p, const char *const *prompts, int n, float *ctx);
/* The same, and on SDXL pooled[n, pooled_dim] (TE2's projected EOS embedding; NULL: not wanted,
 * allowed on every model). SDXL's ctx is cat(TE1, TE2) of their penultimate hidden states. The
 * encoders use the clip_skip set in p->clip.clip_skip (and p->clip2.clip_skip). */
int pipeline_encode_prompts_cond(pipeline_t *p, const char *const *prompts, int n, float *ctx, float *pooled);

typedef struct {
    const char *prompt, *negative_prompt;   /* negative NULL: the empty prompt */
    int width, height;                      /* pixels (multiples of scale_factor * 2^(levels-1)) */
    int steps;
    float cfg;                              /* guidance scale; <= 1 disables guidance */
    float eta;                              /* DDIM only */
    sampler_kind_t sampler;
    uint64_t seed;
    int batch;                              /* images denoised together */
    progress_fn_t progress;                 /* per step, may be NULL */
    void *progress_ctx;
    const volatile sig_atomic_t *stop;      /* may be NULL; once non-zero (a signal handler sets it),
                                               sampling ends before its next UNet call with
                                               SD_ERR_INTERRUPTED */
    /* SDXL's micro-conditioning (UNet addition_embed_type "text_time"), pixels, (h, w) and
     * (top, left). {0, 0} is diffusers' default: original_size = target_size = (height, width),
     * crop (0, 0). A model without text_time refuses any non-zero value. */
    int original_size[2], crops_coords_top_left[2], target_size[2];
    /* The unconditional (negative) rows' values; {0, 0} takes the positive value above. */
    int negative_original_size[2], negative_crops_coords_top_left[2], negative_target_size[2];
    int clip_skip;                          /* text-encoder layers skipped at the end (diffusers'
                                               clip_skip; 0: none); on SDXL both encoders. As
                                               diffusers, only the prompt is encoded with it: the
                                               negative prompt uses none */
} txt2img_opts_t;

/* One row of SDXL's add_time_ids: original (h, w), crop (top, left), target (h, w), as floats. */
void pipeline_time_ids(float out[6], const int original_size[2], const int crops_coords_top_left[2],
                       const int target_size[2]);
/* The time ids a txt2img run gives its conditional rows (negative 0) or its unconditional rows
 * (negative 1), with the defaults of txt2img_opts_t resolved for o->width x o->height. */
void pipeline_opts_time_ids(float out[6], const txt2img_opts_t *o, int negative);

/* 0 when the UNet takes images of this size (positive multiples of the VAE factor times the
 * UNet's downsampling), else SD_ERR_ARG naming the multiple. */
int pipeline_check_size(const pipeline_t *p, int width, int height);

/* Latent shape for a pixel size: [latent_channels, height/scale, width/scale]. */
void pipeline_latent_shape(const pipeline_t *p, int width, int height, int *c, int *h, int *w);

/* Denoises `batch` images (or, with sampler SAMPLER_DDIM_INVERSE, cfg 1 and init = clean
 * latents, runs DDIM inversion: latents receives the noised latents at the last timestep). Initial noise: image k of the batch draws its [C, h, w] normals
 * from a Philox stream seeded with seed + k (so an image depends only on its own seed, not
 * on the batch size), unless init (latents [batch, C, h, w], unscaled noise) is given; the
 * per-step noise of ancestral samplers / eta > 0 comes from the stream seeded with
 * seed ^ PIPELINE_STEP_NOISE_SALT. latents receives the final latents [batch, C, h, w]. */
#define PIPELINE_STEP_NOISE_SALT 0xD1B54A32D192ED03ull
int pipeline_txt2img(pipeline_t *p, const txt2img_opts_t *o, const float *init, float *latents);

/* latents[n, C, h, w] -> RGB images [n][H, W, 3] (uint8, caller frees with free()). */
int pipeline_decode(pipeline_t *p, const float *latents, int n, int h, int w, uint8_t **rgb);

#endif
