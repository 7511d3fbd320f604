/* Training data of `svdiff train`: image folders (instance and class images, per-image caption
 * files), the prompt table (token ids, checked against CLIP's 77-token window), generation of
 * missing class images with the base model, a lazy cache of VAE posteriors (each image is encoded
 * once per flip state, the first time a batch needs it: the VAE is frozen), and the seeded
 * epoch order. Everything random here is drawn from counter-based Philox streams, so a run is a
 * function of (seed, data) only. */
#ifndef SVDIFF_TRAIN_DATASET_H
#define SVDIFF_TRAIN_DATASET_H

#include <stdint.h>

#include "base/rng.h"
#include "diffusion/diffusion.h"
#include "io/image.h"
#include "models/tokenizer.h"
#include "pipeline/pipeline.h"

/* Distinct training prompts: text and token ids [T] (bos, tokens, eos, padding). A prompt longer
 * than T tokens is an error in training (it would be silently cut). */
typedef struct {
    int n;
    char **text;
    int *ids;    /* [n, T] */
    int T;       /* context tokens of the model (pipeline_t.n_ctx); 0 = CLIP's 77 */
} prompt_table_t;

void prompt_table_free(prompt_table_t *pt);
/* Index of `text` in the table (added if new), or SD_ERR_ARG when it does not fit in T tokens
 * (the message names `where`: the flag or caption file it came from). */
int prompt_table_add(prompt_table_t *pt, const clip_tokenizer_t *tok, const char *text, const char *where);
/* SDXL's second tokenizer: ids2[n, T] of every prompt of the table, padded with tok2's pad token (the
 * pipeline makes it "!"), as the pipeline encodes them. A prompt over T tokens is SD_ERR_ARG, as in
 * prompt_table_add. */
int prompt_table_ids2(const prompt_table_t *pt, const clip_tokenizer_t *tok2, int *ids2);

typedef struct {
    char *path;        /* the image file */
    int prompt;        /* index into the prompt table: the caption file's text, else the folder's prompt */
    float crop_x, crop_y;   /* random-crop position in [0, 1] of the slack (drawn once per image) */
    int orig_w, orig_h;     /* the image's size as decoded (SDXL's original_size) */
    float *dist[2];    /* VAE posterior [mean | logvar] (2 x latent floats), unflipped / mirrored; NULL
                          until first used. Without a VAE: the image tensor itself (logvar unused). */
} train_image_t;

typedef struct {
    char *dir;
    int n;
    train_image_t *img;   /* sorted by file name */
} image_set_t;

/* Reads folder `dir`: every regular file that does not start with '.' and does not end in .txt
 * must be a PNG or JPEG image (image_load): each is decoded once here so that a bad file
 * is reported before anything is written. "name.txt" next to "name.png" is that image's caption.
 * A missing folder is an error unless allow_missing (a class folder still to be generated). An
 * empty folder is an error unless allow_empty. `what` names the flag in messages. */
int image_set_scan(image_set_t *s, const char *dir, const char *what, int allow_missing, int allow_empty,
                   const char *default_prompt, prompt_table_t *pt, const clip_tokenizer_t *tok);
void image_set_free(image_set_t *s);
/* A captioned data set (`svdiff pretrain --data`): a TSV file, one image a line,
 * "path<TAB>caption[<TAB>split]"; an optional header line (first field "path", "file" or "image"),
 * empty lines and lines starting with '#' are skipped, and so are rows whose split is given and
 * is not "train". Relative paths resolve against image_root (NULL: the TSV's folder). Images keep
 * the file's order; each is decoded once here. */
int image_set_from_tsv(image_set_t *s, const char *tsv, const char *image_root, prompt_table_t *pt,
                       const clip_tokenizer_t *tok);
/* Draws the random-crop position of every image from the Philox stream `seed` (two uniforms per
 * image, in file order). */
void image_set_draw_crops(image_set_t *s, uint64_t seed);

/* One row of a micro-batch as its source chose it (the trainer draws the rest: latent sample,
 * timestep, noise, caption dropout). */
typedef struct {
    train_image_t *img;    /* the image */
    train_image_t *img2;   /* NULL, or a Cut-Mix composite: img in the first half, img2 in the other */
    int flip;              /* mirrored left-right (never a composite) */
    int prompt;            /* index into the prompt table, before caption dropout */
} train_row_t;

/* Floats of one latent [C, res/f, res/f] (f = the VAE factor, 1 without a VAE). */
size_t train_latent_floats(const pipeline_t *p, int res);
/* out[2 * n] = the posterior [mean | logvar] of a res x res image (without a VAE: the image as a
 * [-1, 1] tensor, logvar 0), n = train_latent_floats(p, res). */
int train_image_posterior(pipeline_t *p, const image_t *img, int res, float *out);
/* The cached posterior of image `im` (flip: mirrored left-right), encoding it on first use:
 * load, resize the shorter side to `res` and crop res x res (centred, or at the image's crop
 * position), mirror, map to [-1, 1], VAE-encode. */
int train_image_dist(pipeline_t *p, train_image_t *im, int flip, int res, int center, const float **dist);
/* SDXL's add_time_ids of a training row (docs/method.md section 3, as diffusers' DreamBooth SDXL trainer):
 * the image's original (h, w) before the resize, the crop's (top, left) in the resized image
 * (image_crop_box: where train_image_dist takes its square; mirrored (flip), the crop is read in the
 * mirrored image, left = resized width - res - x0, as flipping before the crop does), and the target
 * (res, res). */
void train_image_time_ids(float out[6], const train_image_t *im, int flip, int res, int center);
/* A Cut-Mix composite is a new res x res image: original (res, res), crop (0, 0), target (res, res). */
void train_composite_time_ids(float out[6], int res);
/* x0[latent floats] from a posterior and N(0,1) noise (diffusers' latent_dist.sample() * scaling). */
void train_sample_latent(const pipeline_t *p, float *x0, const float *dist, const float *noise, size_t n);

/* How class images are sampled (--class-sampler, --class-steps, --class-cfg, --class-batch). */
typedef struct {
    sampler_kind_t sampler;   /* ddim, euler, euler_a or dpmpp_2m */
    int steps;
    float cfg;
    int batch;                /* images denoised together (< 1: 1) */
} class_gen_t;

/* Makes sure `dir` holds at least `want` images, generating the missing ones with the base model
 * (txt2img of `prompt` with g's sampler, steps and guidance, res x res) as "class-NNNNN.png",
 * image k seeded with seed + k. Consecutive missing numbers are denoised g->batch at a time; an
 * image depends only on its seed, so the files are the same whatever the batch size (euler_a's
 * per-step noise is drawn for a whole batch, so that sampler runs one image at a time). `have`
 * is the number already there. Creates `dir` if needed. Collective over MPI ranks (base/dist.h):
 * every rank calls it, each makes its share of the batches, and it returns when all the files
 * are written (the same files whatever the number of ranks). */
int class_images_generate(pipeline_t *p, const char *dir, const char *prompt, int have, int want, int res,
                          const class_gen_t *g, uint64_t seed);

/* Epoch order over n items: a Fisher-Yates shuffle (rng_randint) at the start of every epoch. */
typedef struct {
    int n;
    int *perm;
    int pos;       /* next index into perm; n: the epoch is used up */
    int epoch;     /* epochs begun */
    rng_t rng;
} data_order_t;

void data_order_init(data_order_t *o, int n, uint64_t seed);
void data_order_free(data_order_t *o);
int data_order_next(data_order_t *o);

#endif
