/* svdiff: the public C API of libsvdiff.
 *
 * A small, stable interface over the library: open a Stable Diffusion model, generate images,
 * apply and remove spectral shifts / LoRA / weight deltas at a scale, train spectral shifts,
 * edit an image, and work on shift sets (the toolbox). Nothing here exposes the engine's
 * internal types; only svdiff_* / SVDIFF_* names appear.
 *
 * Conventions, for every function:
 *  - Functions that can fail return an int: SVDIFF_OK (0) or a negative svdiff_status_t code.
 *    The calling thread's message (naming the file, value or stage at fault) is then read with
 *    svdiff_last_error(). Functions returning a pointer return NULL on error with the message set.
 *  - Ownership: a handle (svdiff_model_t, svdiff_shifts_t) is created by one *_open / *_load /
 *    combine-like function and released with its own *_close / *_free; passing NULL to those is
 *    a no-op. Memory the library allocates for the caller (images, strings) is released with
 *    svdiff_free() / svdiff_images_free(). Strings and buffers passed in are only read during the
 *    call (nothing is kept), except where a comment says otherwise.
 *  - Thread safety: a handle is used by one thread at a time (one model per thread); distinct
 *    handles may be used from distinct threads. The error message is thread-local. The number of
 *    compute threads (svdiff_model_params_t.threads, svdiff_set_threads) is process-wide.
 *  - Images cross the API as RGB8: width * height * 3 bytes, row-major, no padding.
 *  - Parameter structs are filled with their svdiff_*_default_params() first, then edited: new
 *    fields are only appended in later minor versions, and their defaults keep old behaviour.
 *
 * ABI: the shared library's SONAME carries SVDIFF_VERSION_MAJOR; within one major version,
 * functions are only added and structs only grow at their end (callers always get their struct
 * from the matching header's *_default_params, so a struct's size is the header's). */
#ifndef SVDIFF_H
#define SVDIFF_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SVDIFF_API __attribute__((visibility("default")))

/* ------------------------------------------------------------------------------------------ */
/* version                                                                                     */

#define SVDIFF_VERSION_MAJOR 0
#define SVDIFF_VERSION_MINOR 1
#define SVDIFF_VERSION_PATCH 0

/* "MAJOR.MINOR.PATCH" of the library that is linked (static string). */
SVDIFF_API const char *svdiff_version(void);

/* ------------------------------------------------------------------------------------------ */
/* errors                                                                                      */

typedef enum {
    SVDIFF_OK = 0,
    SVDIFF_ERR_IO = -1,          /* a file could not be opened, read, written or renamed */
    SVDIFF_ERR_FORMAT = -2,      /* a file is malformed (header, JSON, dtype, tensor names) */
    SVDIFF_ERR_SHAPE = -3,       /* tensor shapes do not fit together (a file for another model) */
    SVDIFF_ERR_NOMEM = -4,       /* an allocation failed */
    SVDIFF_ERR_ARG = -5,         /* a bad argument (a parameter value, a NULL where one is needed) */
    SVDIFF_ERR_NUMERIC = -6,     /* a numerical routine (SVD, ...) failed */
    SVDIFF_ERR_CANCELLED = -7,   /* the cancel callback asked to stop (or a signal, for the CLI) */
    SVDIFF_ERR_UNSUPPORTED = -8, /* valid request this build or model cannot do */
} svdiff_status_t;

/* The calling thread's last error message ("" if none). Valid until the thread's next call into
 * the library; copy it to keep it. */
SVDIFF_API const char *svdiff_last_error(void);
/* The code's name ("SVDIFF_ERR_IO"), or "SVDIFF_ERR_UNKNOWN" (static string). */
SVDIFF_API const char *svdiff_error_name(int code);

/* Releases memory the library allocated for the caller (strings, single buffers). NULL is a no-op. */
SVDIFF_API void svdiff_free(void *p);

/* Compute threads of the whole process (OpenMP and BLAS); n <= 0: the default (all cores or
 * OMP_NUM_THREADS). The same seed and thread count give the same bytes. */
SVDIFF_API void svdiff_set_threads(int n);

/* ------------------------------------------------------------------------------------------ */
/* callbacks                                                                                   */

typedef enum {
    SVDIFF_STAGE_SAMPLE = 0,      /* denoising steps of generate (total: batches x steps) */
    SVDIFF_STAGE_TRAIN = 1,       /* optimizer steps of training */
    SVDIFF_STAGE_CLASS_IMAGES = 2,/* reserved: generating class images before training */
    SVDIFF_STAGE_INVERT = 3,      /* DDIM inversion steps of edit */
    SVDIFF_STAGE_EDIT = 4,        /* sampling steps of edit */
} svdiff_stage_t;

/* Called after each step: `step` of `total` done (1-based), seconds_per_step the mean so far. For
 * generate, a step is one denoising step of one batch (total: batches x steps). */
typedef void (*svdiff_progress_fn)(svdiff_stage_t stage, int step, int total, double seconds_per_step,
                                   void *user_data);
/* Polled before each batch and after each denoising step of sampling (so before its next UNet
 * call), and before each training step: non-zero stops the
 * work cleanly and the function returns SVDIFF_ERR_CANCELLED. Sampling drops the batch being
 * denoised (images already delivered stay delivered); training stops within one optimizer step,
 * writes a checkpoint of the last finished step when checkpoints are on (checkpoint_every > 0), and
 * that checkpoint resumes with resume = 1. */
typedef int (*svdiff_cancel_fn)(void *user_data);
/* Each finished image: rgb is width * height * 3 bytes, valid during the call only (copy to keep);
 * index counts the call's images from 0; seed is the image's own seed. */
typedef void (*svdiff_image_fn)(const uint8_t *rgb, int width, int height, int index, uint64_t seed,
                                void *user_data);

typedef struct {
    svdiff_progress_fn progress;   /* NULL: none */
    svdiff_cancel_fn cancel;       /* NULL: never cancelled */
    svdiff_image_fn image;         /* NULL: none */
    void *user_data;               /* passed to all three */
} svdiff_callbacks_t;

/* An RGB8 image. Images the library returns own their rgb (svdiff_images_free); images passed
 * in (training data) are only read. */
typedef struct {
    uint8_t *rgb;     /* width * height * 3 */
    int width, height;
    uint64_t seed;    /* generated images: the image's seed; inputs: unused */
} svdiff_image_t;

/* Frees n images returned by the library and the array itself. NULL is a no-op. */
SVDIFF_API void svdiff_images_free(svdiff_image_t *images, int n);

/* ------------------------------------------------------------------------------------------ */
/* model                                                                                       */

/* An opened model: tokenizer, text encoder, UNet, VAE (absent for a pixel-space model) and
 * noise schedule, plus the adapters applied to it. It keeps its base weights, so adapters are
 * applied and removed without reloading. */
typedef struct svdiff_model svdiff_model_t;
/* Spectral shifts in memory (see "shift sets and the toolbox" below). */
typedef struct svdiff_shifts svdiff_shifts_t;

typedef enum {
    SVDIFF_COMPUTE_DEFAULT = 0,   /* leave the process's setting (fp32 unless changed) */
    SVDIFF_COMPUTE_FP32 = 1,
    SVDIFF_COMPUTE_BF16 = 2,      /* bf16 matrix products (fp32 accumulation); process-wide */
} svdiff_compute_t;

typedef struct {
    const char *tokenizer_dir;     /* folder with vocab.json + merges.txt (single files carry none);
                                      NULL: the model's, else the default */
    const char *prediction_type;   /* "epsilon" | "v_prediction"; NULL: the model's */
    const char *scheduler_config;  /* a diffusers scheduler_config.json replacing the model's; NULL */
    int threads;                   /* > 0: svdiff_set_threads(threads) at open; 0: leave as is */
    svdiff_compute_t compute;      /* process-wide compute dtype, set at open */
    const char *svd_cache_dir;     /* SVD cache folder for applying shifts: NULL the default
                                      folder ($SVDIFF_CACHE_DIR, else $XDG_CACHE_HOME/svdiff, else
                                      ~/.cache/svdiff), "" none */
    int force;                     /* accept adapter files made for another base model (their
                                      base_model_hash differs) or whose pair was not written together */
} svdiff_model_params_t;

SVDIFF_API svdiff_model_params_t svdiff_model_default_params(void);

/* Opens a model: a diffusers folder, a .safetensors file, or a PyTorch .ckpt / .pt / .pth
 * (any layout svdiff reads). params may be NULL (defaults). On success *out is a new handle the
 * caller closes with svdiff_model_close; on error *out is NULL. */
SVDIFF_API int svdiff_model_open(const char *path, const svdiff_model_params_t *params, svdiff_model_t **out);
/* Frees the model and everything it holds. NULL is a no-op. */
SVDIFF_API void svdiff_model_close(svdiff_model_t *model);

typedef struct {
    char family[32];             /* "sd1", "sd2", "sdxl", "pixel", "custom" (a short label) */
    char prediction_type[16];    /* "epsilon", "v_prediction" or "sample" */
    char weights_hash[17];       /* the base model's weights hash (what shift files record) */
    int native_width, native_height;   /* default image size in pixels */
    int latent_channels;         /* UNet input channels */
    int scale_factor;            /* pixels per latent pixel (8 for SD; 1 without a VAE) */
    int unet_levels;             /* UNet resolution levels (4 for SD) */
    int context_dim;             /* text encoder hidden size */
    int context_tokens;          /* prompt tokens (77 for SD) */
    int has_vae;
    int64_t unet_params, text_encoder_params, vae_params;   /* parameter counts (0: absent; SDXL: the text
                                                               encoders together) */
    int train_timesteps;         /* noise schedule length (1000) */
} svdiff_model_info_t;

SVDIFF_API int svdiff_model_info(const svdiff_model_t *model, svdiff_model_info_t *info);

/* Describes the model at `path` without loading it (the files are mapped and only their headers and
 * configs are read; a .ckpt's pickle is parsed): *json is a new string (svdiff_free), the object
 * `svdiff info --json` prints less its timing: {"path", "layout" ("diffusers", "LDM SD1", "LDM SD2"),
 * "components": {"unet", "vae", "text_encoder": {"present", and when present "tensors",
 * "parameters", "bytes", "dtypes" {"F32": tensors, ...}, "config" {the component's config}}},
 * "scheduler" {config}, "prediction_type" {"value", "source" (what decided it), "guessed"},
 * "tokenizer" (folder or null), "files", "mapped_bytes", "total_parameters", "total_bytes"}.
 * params (may be NULL): tokenizer_dir, prediction_type and scheduler_config apply as at open; the
 * other fields are not used. */
SVDIFF_API int svdiff_model_describe(const char *path, const svdiff_model_params_t *params, char **json);
/* The same, with the memory estimate at `resolution` pixels (square; 0: the model's native size,
 * UNet sample_size x the VAE factor). The object also holds "family" ("sd1", "sd2", "sdxl", or "pixel" without a VAE),
 * "text_encoder_2" among the components, "tokenizer_2" and "force_zeros_for_empty_prompt" (SDXL
 * only) and "memory": {"resolution", "generate": {"weights", "unet_activations",
 * "text_activations", "vae_activations", "total"}, "train": {"weights", "factors_fp32",
 * "factors_bf16", "optimizer", "unet_activations", "unet_activations_checkpointed",
 * "text_activations", "vae_activations", "total", "total_bf16_checkpointed"}} in bytes
 * (what each part holds: the comment of src/api/api_describe.c); "memory" has "error" instead when
 * the resolution does not fit the model. svdiff_model_describe includes "memory" at the native
 * size. Errors as svdiff_model_describe, and SVDIFF_ERR_ARG for a resolution outside 0..65536. */
SVDIFF_API int svdiff_model_describe_at(const char *path, const svdiff_model_params_t *params, int resolution,
                                        char **json);

/* Latent shape of an image of width x height: [*channels, *lh, *lw] (for init latents). */
SVDIFF_API int svdiff_model_latent_shape(const svdiff_model_t *model, int width, int height, int *channels,
                                         int *lh, int *lw);

/* ---- adapters: applied at a scale on top of the base weights, removable ----
 * Each call adds one file to the model's adapter list and rebuilds the effective weights from the
 * base weights: W = base + shifts (all shift files, in order) + deltas + LoRAs, the order
 * `svdiff generate --shifts/--delta/--lora` uses. Sampling then costs what the base model costs.
 * A file that fails to apply leaves the model as it was before the call. */

/* A shift file or a training output folder (spectral_shifts.safetensors and/or _te). */
SVDIFF_API int svdiff_model_apply_shifts(svdiff_model_t *model, const char *path, float scale);
/* A LoRA file (diffusers or kohya naming) or a folder holding pytorch_lora_weights.safetensors. */
SVDIFF_API int svdiff_model_apply_lora(svdiff_model_t *model, const char *path, float scale);
/* A weight-delta file of `svdiff train --mode full --save-delta`, or its output folder. */
SVDIFF_API int svdiff_model_apply_delta(svdiff_model_t *model, const char *path, float scale);
/* A shift set in memory (see the toolbox below); the set is copied, the caller keeps it. */
SVDIFF_API int svdiff_model_apply_shift_set(svdiff_model_t *model, const svdiff_shifts_t *shifts, float scale);
/* Removes every adapter: the weights are the base weights again, bit for bit. */
SVDIFF_API int svdiff_model_clear_adapters(svdiff_model_t *model);
/* The adapters as `svdiff generate` lists them in its PNG text ("a.safetensors (1), lora x (0.5)";
 * "" with none). Valid until the model's adapters change or it is closed. */
SVDIFF_API const char *svdiff_model_adapters_text(const svdiff_model_t *model);

/* ------------------------------------------------------------------------------------------ */
/* generation                                                                                  */

typedef enum {
    SVDIFF_SAMPLER_DDIM = 0,
    SVDIFF_SAMPLER_EULER = 1,
    SVDIFF_SAMPLER_EULER_A = 2,
    SVDIFF_SAMPLER_DPMPP_2M = 3,
} svdiff_sampler_t;

/* "ddim", "euler", "euler_a", "dpmpp_2m" (static string; NULL for an unknown value). */
SVDIFF_API const char *svdiff_sampler_name(svdiff_sampler_t s);
/* Parses those names (and the CLI's aliases); SVDIFF_ERR_ARG for an unknown one. */
SVDIFF_API int svdiff_sampler_parse(const char *name, svdiff_sampler_t *out);

#define SVDIFF_MICRO_COND_MAX 65536   /* largest micro-conditioning value (pixels) */

typedef struct {
    const char *prompt;            /* required */
    const char *negative_prompt;   /* NULL: the empty prompt */
    int width, height;             /* pixels; 0: the model's native size */
    int steps;                     /* 20 */
    float cfg;                     /* guidance scale, 7.5; <= 1 disables guidance */
    float eta;                     /* DDIM noise in [0, 1], 0 */
    svdiff_sampler_t sampler;      /* DDIM */
    uint64_t seed;                 /* 42; image k gets seed + k */
    int num_images;                /* 1 */
    int batch;                     /* images denoised together, 1 (does not change the bytes) */
    const float *init_latents;     /* NULL, or the initial noise [num_images (or 1), C, h, w]
                                      (svdiff_model_latent_shape), as --init-latents */
    int n_init_latents;            /* rows of init_latents: 1 (shared) or num_images */
    float *out_latents;            /* NULL, or receives the final latents [num_images, C, h, w] */
    uint8_t *out_rgb;              /* NULL, or a caller buffer of num_images * w * h * 3 bytes that
                                      receives the images one after another */
    svdiff_callbacks_t callbacks;  /* progress (SVDIFF_STAGE_SAMPLE), cancel, image */
    /* SDXL's micro-conditioning, in pixels, as `svdiff generate --original-size H,W
     * --crops-coords-top-left TOP,LEFT --target-size H,W`: {height, width} / {top, left}. {0, 0}
     * is diffusers' default (original and target size: the image's (height, width); crop (0, 0)).
     * A model without it (SD 1.x / 2.x) refuses non-zero values with SVDIFF_ERR_ARG, as does a
     * negative value, a value above SVDIFF_MICRO_COND_MAX or a size with one zero. */
    int original_size[2];
    int crops_coords_top_left[2];
    int target_size[2];
    /* The same for the unconditional (negative) branch of guidance; {0, 0}: the value above. */
    int negative_original_size[2];
    int negative_crops_coords_top_left[2];
    int negative_target_size[2];
    int clip_skip;                 /* text-encoder layers skipped at the end (diffusers' clip_skip,
                                      0: none; SDXL: both encoders); the prompt only, as diffusers:
                                      the negative prompt is encoded without it */
} svdiff_generate_params_t;

SVDIFF_API svdiff_generate_params_t svdiff_generate_default_params(void);
/* The defaults for this model: svdiff_generate_default_params(), except on SDXL, where they are
 * diffusers' StableDiffusionXLPipeline's: guidance 5 and the sampler of the model's scheduler
 * config (Euler for SDXL base; DDIM when the config names none svdiff has). model NULL: the plain
 * defaults. What `svdiff generate` uses for the flags it is not given. */
SVDIFF_API svdiff_generate_params_t svdiff_generate_model_params(const svdiff_model_t *model);

/* Text to image: the images `svdiff generate` makes with the same settings (same bytes for the
 * same seed and thread count). Each image goes to callbacks.image as soon as it is decoded, to
 * out_rgb, and, when out_images is not NULL, into a new array of num_images images the caller
 * frees with svdiff_images_free (*out_images NULL on error). On cancel: SVDIFF_ERR_CANCELLED,
 * the images delivered before through the callback stay valid for the caller. */
SVDIFF_API int svdiff_generate(svdiff_model_t *model, const svdiff_generate_params_t *params,
                               svdiff_image_t **out_images);

/* The PNG 'parameters' text `svdiff generate --model MODEL_LABEL` writes for the image of seed
 * `seed` (A1111's format: prompt, negative prompt, steps, sampler, CFG, eta, seed, size, model,
 * the model's adapters, version). params->width/height 0 mean the model's native size. Returns a
 * new string the caller frees with svdiff_free, or NULL on error. */
SVDIFF_API char *svdiff_png_parameters(const svdiff_model_t *model, const svdiff_generate_params_t *params,
                                       uint64_t seed, const char *model_label);
/* Writes an RGB8 image as PNG exactly as the CLI does: a 'parameters' text chunk when parameters
 * is not NULL (svdiff_png_parameters) and 'Software: svdiff VERSION'; written through a temp file
 * and renamed, so no half file is left. */
SVDIFF_API int svdiff_png_write(const char *path, const uint8_t *rgb, int width, int height,
                                const char *parameters);
/* Reads a PNG or JPEG into a new RGB8 image (free with svdiff_images_free(img, 1)). */
SVDIFF_API int svdiff_image_read(const char *path, svdiff_image_t **out);
/* The sample sheet `svdiff generate` writes for several images (cols 0 and pad 2 there): n images
 * of one size, cols per row (<= 0: about square), pad white pixels between and around them. *out
 * is a new image (svdiff_images_free(img, 1)); written with svdiff_png_write(..., NULL). */
SVDIFF_API int svdiff_image_grid(const svdiff_image_t *images, int n, int cols, int pad, svdiff_image_t **out);

/* ------------------------------------------------------------------------------------------ */
/* training                                                                                    */

typedef enum {
    SVDIFF_TRAIN_SHIFTS = 0,   /* spectral shifts (SVDiff): spectral_shifts(_te).safetensors */
    SVDIFF_TRAIN_FULL = 1,     /* every weight (DreamBooth baseline): a model folder */
    SVDIFF_TRAIN_LORA = 2,     /* low-rank adapters: pytorch_lora_weights.safetensors */
} svdiff_train_mode_t;

/* Every setting of `svdiff train`. The named fields are the common ones; every other setting of
 * the training settings table is reachable through `settings`, "name=value" strings named like the
 * CLI flags without "--" (e.g. "lr-schedule=cosine", "warmup=10", "prior-loss-weight=0.5",
 * "flip" for a switch) and parsed as the CLI parses them. Defaults are those of `svdiff train`. */
typedef struct {
    const char *model;                  /* model path (required) */
    const char *tokenizer_dir, *prediction_type, *scheduler_config;   /* as svdiff_model_params_t */
    const char *out_dir;                /* output folder (required); locked during the run */
    /* instance images: a folder, or images in memory (n_instance_images > 0) */
    const char *instance_dir;
    const svdiff_image_t *instance_images;
    int n_instance_images;
    const char *instance_prompt;        /* required ("a photo of sks dog") */
    /* prior preservation (optional): class images as a folder or in memory, and their prompt;
     * with a folder, missing class images are generated up to num_class_images */
    const char *class_dir;
    const svdiff_image_t *class_images;
    int n_class_images;
    const char *class_prompt;
    int num_class_images;
    svdiff_train_mode_t mode;           /* full and LoRA default to their own lr (5e-6, 1e-4) unless
                                           lr differs from the shifts default or an "lr" setting is given */
    int resolution;                     /* 0: the model's native size */
    int steps, batch_size, grad_accum;
    float lr, lr_1d;                    /* spectral deltas, norm-gain shifts */
    uint64_t seed;
    int train_text_encoder;
    int rank;                           /* > 0: only the top-rank singular values train */
    int checkpoint_every;               /* optimizer steps between checkpoints (0: none) */
    int resume;                         /* continue from out_dir's checkpoint */
    int force;                          /* overwrite an earlier run's outputs in out_dir */
    int save_fp16;
    const char *svd_cache_dir;          /* NULL: the default folder, "": none */
    int threads;                        /* > 0: svdiff_set_threads */
    const char *const *settings;        /* n_settings "name=value" for every other setting */
    int n_settings;
    svdiff_callbacks_t callbacks;       /* progress (SVDIFF_STAGE_TRAIN; with it, no progress bar on
                                           stderr), cancel (before every optimizer step) */
} svdiff_train_params_t;

/* The defaults of `svdiff train` (from its settings table). */
SVDIFF_API svdiff_train_params_t svdiff_train_default_params(void);

/* Trains and writes out_dir as `svdiff train` does (same files, same bytes for the same settings
 * and thread count): shift files, loss.csv, checkpoints. Instead of instance images, the setting
 * "data=CAPTIONS.tsv" trains on captioned images (rows "path<TAB>caption"; with "center-crop",
 * `svdiff edit`'s fine-tuning on its one image). Returns SVDIFF_ERR_CANCELLED when the
 * cancel callback stopped it (the checkpoint of the last finished step stays resumable). */
SVDIFF_API int svdiff_train(const svdiff_train_params_t *params);

/* Pretraining (`svdiff pretrain`): every weight of a model (e.g. one `svdiff init` made) trained on
 * a captioned data set; out_dir becomes a diffusers model folder. The same params struct, filled
 * by svdiff_pretrain_default_params (pretrain's defaults: mode full, its lr, no flips, ...); the data
 * set is the setting "data=CAPTIONS.tsv" (rows "path<TAB>caption[<TAB>split]"), with
 * "image-root=DIR" for relative paths; every setting of `svdiff pretrain --help` is reachable as
 * "name=value" (settings of `svdiff train` only, instance and class images are refused). Same
 * files and bytes as `svdiff pretrain` with the same settings and thread count; callbacks and
 * cancel as svdiff_train. */
SVDIFF_API svdiff_train_params_t svdiff_pretrain_default_params(void);
SVDIFF_API int svdiff_pretrain(const svdiff_train_params_t *params);

/* ------------------------------------------------------------------------------------------ */
/* editing                                                                                     */

/* Single-image editing (CoSINE) on an opened model: the image is DDIM-inverted conditioned on a
 * prompt, optionally mixed with seeded noise (slerp), and each edit prompt is sampled from it.
 * The fine-tuning of `svdiff edit` is svdiff_train on the one image, then
 * svdiff_model_apply_shifts of its output. */
typedef struct {
    const char *image_path;              /* the image (PNG / JPEG), or: */
    const svdiff_image_t *image;         /* the image in memory (used when image_path is NULL) */
    const char *prompt;                  /* what the image shows (required) */
    const char *const *edits;            /* n_edits edited prompts (required, >= 1) */
    int n_edits;
    int resolution;                      /* 0: native; the image is resized and centre-cropped */
    int steps;                           /* DDIM steps of inversion and sampling, 50 */
    float cfg;                           /* 3 */
    float eta;                           /* 0.1 */
    float slerp;                         /* 0 in [0, 1]: share of fresh noise */
    int invert_source;                   /* 1: one inversion with `prompt`; 0 (default): each edit
                                            is inverted with its own prompt */
    int no_inversion;                    /* start from seeded noise instead */
    uint64_t seed;                       /* 42 */
    svdiff_callbacks_t callbacks;        /* progress (_INVERT, _EDIT), cancel, image (see svdiff_edit) */
} svdiff_edit_params_t;

SVDIFF_API svdiff_edit_params_t svdiff_edit_default_params(void);

/* Runs the edits. out_images (may be NULL): a new array of n_edits + 2 images of resolution^2 pixels,
 * freed with svdiff_images_free: [0] the input as edited (resized, centre-cropped), [1] the
 * reconstruction (the prompt sampled back from the inversion, eta 0, guidance 1), [2 + k] edit k:
 * the columns of `svdiff edit`'s grid. callbacks.image receives the same images with those indices
 * once all are done. *psnr (may be NULL): the reconstruction's PSNR in dB against [0]. The cancel
 * callback is polled before each inversion and each sampling run. */
SVDIFF_API int svdiff_edit(svdiff_model_t *model, const svdiff_edit_params_t *params, svdiff_image_t **out_images,
                           double *psnr);

/* What `svdiff edit --report` prints besides the reconstruction's PSNR (dB, against images[0]). */
typedef struct {
    double noise_reconstruction_psnr;   /* the prompt sampled from seeded noise (seed, eta 0, guidance 1) */
    double vae_roundtrip_psnr;          /* decode(encode(input)): a latent model's ceiling; INFINITY
                                           without a VAE */
    double reconstruction_vs_vae_psnr;  /* images[1] against that round trip (without a VAE: against
                                           images[0]) */
} svdiff_edit_report_t;

/* The extra figures of `svdiff edit --report` for the images svdiff_edit returned with the same
 * params (images[0] the input as edited, images[1] the reconstruction; only read): one more
 * sampling run of params->steps (progress SVDIFF_STAGE_EDIT, step of steps; cancel polled before
 * it) and the VAE round trip of the input. */
SVDIFF_API int svdiff_edit_report(svdiff_model_t *model, const svdiff_edit_params_t *params,
                                  const svdiff_image_t *images, svdiff_edit_report_t *report);
/* PSNR in dB of two RGB8 buffers of n bytes (peak 255; INFINITY when equal; NAN for NULL or n 0). */
SVDIFF_API double svdiff_psnr(const uint8_t *a, const uint8_t *b, size_t n);

/* ------------------------------------------------------------------------------------------ */
/* shift sets and the toolbox                                                                  */

/* svdiff_shifts_t: spectral shifts in memory: one set (a shift file) or the UNet and text-encoder
 * parts of a training output folder. */

/* Loads a shift file or a training output folder, as `svdiff shifts` reads its inputs: a file is
 * one set (its "text_model." entries go to the text encoder, its "text_encoder_2." entries to SDXL's
 * second one when applied), a folder holds spectral_shifts.safetensors, spectral_shifts_te.safetensors
 * and/or spectral_shifts_te2.safetensors, which must have been written together (the same pair_id). The set remembers which form it came from and each file's dtype, and
 * the toolbox's results keep the form of their (first) input. */
SVDIFF_API int svdiff_shifts_load(const char *path, svdiff_shifts_t **out);
/* The same; force: accept a folder's two files even when they were not written together. */
SVDIFF_API int svdiff_shifts_load_ex(const char *path, int force, svdiff_shifts_t **out);
/* Saves in the set's form: a folder's set into the folder `path` (made if missing; both parts as one
 * pair, with the names `svdiff train` writes), a file's set into the file `path`, atomically.
 * fp16: 1 float16 values, 0 float32, -1 the dtype each part was loaded with (a file whose tensors are
 * all F16 stays F16; new sets are F32), which is what `svdiff shifts` writes. */
SVDIFF_API int svdiff_shifts_save(const svdiff_shifts_t *shifts, const char *path, int fp16);
SVDIFF_API void svdiff_shifts_free(svdiff_shifts_t *shifts);

/* Entries of both parts, UNet first. */
SVDIFF_API int svdiff_shifts_count(const svdiff_shifts_t *shifts);
/* Entry i: its name (module path, "text_model..." for the text encoder), values and length.
 * Pointers stay valid until the set is freed. */
SVDIFF_API int svdiff_shifts_entry(const svdiff_shifts_t *shifts, int i, const char **name, const float **values,
                                   int *n);
/* A metadata value of the UNet part (else the text-encoder part), or NULL. Valid until the set
 * changes or is freed. */
SVDIFF_API const char *svdiff_shifts_meta(const svdiff_shifts_t *shifts, const char *key);
/* Sets a metadata key of every part (copied). */
SVDIFF_API int svdiff_shifts_set_meta(svdiff_shifts_t *shifts, const char *key, const char *value);
/* Appends an entry to every part's "history" metadata ("; " between entries). The toolbox
 * functions below record no history themselves; `svdiff shifts` adds e.g. "scale 0.5". */
SVDIFF_API int svdiff_shifts_add_history(svdiff_shifts_t *shifts, const char *entry);

/* The toolbox: each result is a new set (*out) the caller frees with svdiff_shifts_free; the
 * inputs are not changed. Metadata: combine and limit_rank keep the first input's, mix `rest`'s. */

/* Task arithmetic: *out = sum_k weights[k] * in[k] (weights NULL: all 1). Sets must be compatible
 * (same base model unless ignore_hash, same entries and lengths). */
SVDIFF_API int svdiff_shifts_combine(const svdiff_shifts_t *const *in, const float *weights, int n,
                                     int ignore_hash, svdiff_shifts_t **out);
/* *out = s * in. */
SVDIFF_API int svdiff_shifts_scale(const svdiff_shifts_t *in, float s, svdiff_shifts_t **out);
/* Keeps the shifts of the top-rank singular values of every matrix; *n_kept (may be NULL) the values
 * a truncated layout would store. */
SVDIFF_API int svdiff_shifts_limit_rank(const svdiff_shifts_t *in, int rank, svdiff_shifts_t **out, long *n_kept);
/* Style mix: entries of `from` selected by a selector, the rest from `rest`. Selectors: "geometry",
 * "res:HxW", or a module-path glob (see `svdiff shifts mix --help`); levels / latent describe the
 * model (4 and 64 for SD 1.x at 512 px). *n_from (may be NULL): entries taken from `from`. */
SVDIFF_API int svdiff_shifts_mix(const svdiff_shifts_t *from, const svdiff_shifts_t *rest,
                                 const char *const *selectors, int n_selectors, int levels, int latent,
                                 int ignore_hash, svdiff_shifts_t **out, int *n_from);

/* ---- per-part view (what `svdiff shifts` prints about each file) ----
 * A set has up to SVDIFF_SHIFTS_PARTS parts: 0 the UNet's (a single file's whole content), 1 the
 * text encoder's and 2 SDXL's text_encoder_2's (only in a training folder's set:
 * spectral_shifts_te.safetensors, spectral_shifts_te2.safetensors). */
#define SVDIFF_SHIFTS_PARTS 3
typedef struct {
    int present;          /* the part exists (a file's set has part 0 only; a folder may lack part 1) */
    int folder;           /* the set is a training folder's (saved as a folder) */
    const char *file;     /* the file the part was loaded from; NULL for a toolbox result */
    int entries;          /* shift entries (one per module) */
    long values;          /* shift values over all entries */
    int matrices, norms;  /* entries that shift a matrix's singular values / a norm's gains */
    const char *dtype;    /* "F16" or "F32": how the part is stored (svdiff_shifts_save's fp16 = -1) */
    int dtype_bytes;      /* 2 or 4 */
    long kept;            /* a svdiff_shifts_limit_rank result: the part's values kept; else -1 */
    int taken;            /* a svdiff_shifts_mix result: the part's entries taken from `from`; else -1 */
    int n_meta;           /* metadata entries (svdiff_shifts_meta_at) */
} svdiff_shifts_part_t;

/* Fills *info for part 0, 1 or 2 (an absent part: present 0, counts 0). Strings stay valid until the
 * set is freed. */
SVDIFF_API int svdiff_shifts_part(const svdiff_shifts_t *shifts, int part, svdiff_shifts_part_t *info);
/* Metadata entry i (0 .. n_meta-1) of a part, in file order: key and value, valid until the set
 * changes or is freed. */
SVDIFF_API int svdiff_shifts_meta_at(const svdiff_shifts_t *shifts, int part, int i, const char **key,
                                     const char **value);

/* ---- describing, converting and exporting shift files (`svdiff shifts info / convert / to-lora`) ---- */

/* The description `svdiff shifts info --json` prints, as a new JSON string (free with svdiff_free):
 * {"files": [one object per part file: file, base_model_hash, size_bytes, dtype, layers, matrices,
 * norms, shifts (values), block_l2 {block: L2 norm of its shifts, blocks in order of appearance},
 * largest_shifts [{path, index, delta}] (the top_k largest |delta|), or with singular values
 * largest_relative_shifts [{path, index, delta, sigma, relative}] (|delta|/sigma), metadata {}]}.
 * path: a shift file or training folder (force: accept a folder's files not written together).
 * Singular values come from svd_cache when it is an SVD cache file, or from the cache folder
 * (svd_cache, NULL: the default folder) file that the model at `model` names by its weights hash;
 * both NULL: none. top_k >= 1. */
SVDIFF_API int svdiff_shifts_describe(const char *path, int force, const char *svd_cache, const char *model, int top_k,
                                      char **json);

/* Called for each norm shift fitted to the scalar form (lost: the share of the shift one scalar
 * cannot hold; max_gain_err the largest |gain error|); path NULL announces that part `part`'s fit
 * begins. */
typedef void (*svdiff_fit_fn)(int part, const char *path, double lost, double max_gain_err, void *user_data);

typedef struct {
    int fp16;              /* the result's storage: 1 F16, 0 F32 (default), -1 each input part's */
    const char *format;    /* NULL: values only (an exact copy); "native": norm shifts in the exact
                              per-element form; "svdiff-pytorch": norm shifts in svdiff-pytorch's
                              scalar form [1] (a least-squares fit) and every entry checked against
                              the base model's modules */
    const char *model;     /* the base model (norm gains, module shapes): required for
                              "svdiff-pytorch" and whenever a norm shift changes form */
    int force;             /* keep a scalar fit that loses more than 1e-4 of the norm shifts */
    svdiff_fit_fn fit;     /* NULL, or each fitted norm as it is fitted */
    void *user_data;
} svdiff_convert_params_t;

typedef struct {
    int lossy;             /* per-element norm shifts were fitted to scalars: the fields below hold */
    double lost;           /* overall share of the norm shifts lost (L2) */
    int n_fitted;          /* norms fitted */
    double worst_lost;     /* the largest per-norm share lost, at worst_path ("" when none) */
    char worst_path[256];
} svdiff_convert_stats_t;

SVDIFF_API svdiff_convert_params_t svdiff_convert_default_params(void);
/* `svdiff shifts convert`: *out a new set in the input's form (svdiff_shifts_free). stats (may be
 * NULL) is filled when every part converted, also when the loss check then refuses the fit
 * (SVDIFF_ERR_ARG "... nothing written", *out NULL). */
SVDIFF_API int svdiff_shifts_convert(const svdiff_shifts_t *in, const svdiff_convert_params_t *params,
                                     svdiff_shifts_t **out, svdiff_convert_stats_t *stats);

typedef enum { SVDIFF_LORA_KOHYA = 0, SVDIFF_LORA_DIFFUSERS = 1 } svdiff_lora_format_t;
typedef enum { SVDIFF_DTYPE_F32 = 0, SVDIFF_DTYPE_F16 = 1, SVDIFF_DTYPE_BF16 = 2 } svdiff_dtype_t;

typedef struct {
    svdiff_lora_format_t format;   /* kohya (default): ComfyUI / A1111 keys; diffusers: load_lora_weights */
    int max_rank;                  /* > 0: at most this rank per layer; 0 no cap */
    double energy;                 /* (0, 1]: per layer, the smallest rank keeping this share of
                                      ||dW||^2 (0.99; `to-lora --rank R` alone uses 1) */
    svdiff_dtype_t dtype;          /* of the factors (F16); alpha is F32 */
    int no_norms;                  /* leave norm-gain shifts out (warning) instead of .diff keys */
    int no_embeddings;             /* leave text-encoder embedding shifts out (warning) */
    int force;                     /* shifts of another base model */
    int check;                     /* measure the written factors against the exact shifted weights */
    const char *svd_cache_dir;     /* NULL: the default folder (as svdiff_model_params_t); "": none */
} svdiff_lora_params_t;

/* What went into the LoRA file, per component (0 UNet, 1 the text encoders: SDXL's two together). */
typedef struct {
    int layers;                    /* matrices written as factors */
    int zero_layers;               /* shifted modules whose difference is exactly 0 (not written) */
    int norms;                     /* norm gains written as .diff */
    int dropped;                   /* shifts left out (no_norms / no_embeddings) */
    int rank_min, rank_max;        /* over the layers written */
    double energy_total, energy_kept;   /* sum of ||dW||^2, and what the kept ranks hold */
    long bytes;                    /* tensor bytes of the component in the file */
    double err2, ref2;             /* with check: sums of ||W_lora - W_shifted||^2 and ||W_shifted - W_base||^2 */
} svdiff_lora_stats_t;

SVDIFF_API svdiff_lora_params_t svdiff_lora_default_params(void);
/* `svdiff shifts to-lora`: exports the set as one LoRA file `out` (both parts together, written
 * atomically) against the base model at `model` (opened for the call; the shifts' base model unless
 * force). The set's source path is recorded in the file's metadata. stats (may be NULL): two
 * entries, filled on success. */
SVDIFF_API int svdiff_shifts_to_lora(const svdiff_shifts_t *in, const char *model, const svdiff_lora_params_t *params,
                                     const char *out, svdiff_lora_stats_t stats[2]);

/* ------------------------------------------------------------------------------------------ */
/* files around generation                                                                     */

/* 0 when `path` may be written by this run; SVDIFF_ERR_IO with a message naming it when it exists
 * and is not a regular file (a device, a fifo, a folder) or (in the CLI, which tracks its inputs) is
 * one of the run's inputs. Every writer of the library checks its target this way when it writes;
 * call it up front to refuse a target before long work. */
SVDIFF_API int svdiff_output_check(const char *path);

/* The lock of a run's output folder (the folder must exist): `svdiff train`, `pretrain` and `edit`
 * hold it for a whole run, and svdiff_train / svdiff_pretrain take it themselves, so a second run
 * into the folder fails at once: SVDIFF_ERR_IO "<dir>: another svdiff run (PID n) is writing into
 * this folder". Re-entrant within a process (a caller holding it may run svdiff_train into the
 * folder). Taking it also removes the temp files ("<name>.tmp.<pid>") that killed runs left there.
 * *lock is released with svdiff_folder_unlock (NULL: no-op); the process's end releases it too. */
typedef struct svdiff_folder_lock svdiff_folder_lock_t;
SVDIFF_API int svdiff_folder_lock(const char *dir, svdiff_folder_lock_t **lock);
SVDIFF_API void svdiff_folder_unlock(svdiff_folder_lock_t *lock);

/* Reads a latents file (safetensors: the tensor "latents", or the file's only tensor) for n images
 * of latent shape [channels, lh, lw] (svdiff_model_latent_shape): the tensor must be
 * [n or 1, channels, lh, lw] (SVDIFF_ERR_SHAPE otherwise) and finite (SVDIFF_ERR_FORMAT naming the
 * first NaN / Inf). dst receives n * channels * lh * lw floats, one row repeated when the file holds
 * one: the init_latents of svdiff_generate (`svdiff generate --init-latents`). */
SVDIFF_API int svdiff_latents_read(const char *path, int n, int channels, int lh, int lw, float *dst);
/* Writes latents [n, channels, lh, lw] as the tensor "latents" (F32) with n_meta metadata pairs
 * meta[2k] = meta[2k + 1] followed by svdiff_version, atomically (`svdiff generate --save-latents`
 * writes prompt, seed and sampler). */
SVDIFF_API int svdiff_latents_write(const char *path, const float *latents, int n, int channels, int lh, int lw,
                                    const char *const *meta, int n_meta);

#ifdef __cplusplus
}
#endif

#endif
