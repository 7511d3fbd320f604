/* The shift toolbox (docs/method.md section 6): operations on whole shift sets after training --
 * task arithmetic (combine), scale, rank limit, style mixing by layer selection, norm-shift
 * form conversion -- plus the path classification they share. The CLI is src/cli/shifts.c. */
#ifndef SVDIFF_SHIFTS_TOOLBOX_H
#define SVDIFF_SHIFTS_TOOLBOX_H

#include <stddef.h>

#include "shifts/shifts.h"

/* Is `path` a norm-gain shift ([C] or [1]) rather than the singular-value shifts of a matrix?
 * Decided by name, so it works without the model: the last component of every norm module
 * of the UNet and the text encoder contains "norm" (norm, norm1..3, conv_norm_out,
 * layer_norm1/2, final_layer_norm), and no matrix module's does. */
int toolbox_is_norm_path(const char *path);

/* The block a path belongs to, for per-block summaries: "down_blocks.<i>", "mid_block",
 * "up_blocks.<i>", "text_model.encoder.layers.<i>", "text_model (other)" (embeddings, final norm,
 * text_projection), else "other"; a text_encoder_2 entry gets its block behind "text_encoder_2.".
 * Writes into buf. */
void toolbox_block_of(const char *path, char *buf, size_t cap);

/* Checks that b can be combined with a: equal base_model_hash metadata (unless ignore_hash;
 * a file without the key counts as hash "none"), the same paths with the same lengths.
 * SD_ERR_ARG naming the first difference (names a/b label the sets in the message). */
int toolbox_check_compatible(const shift_set_t *a, const char *name_a, const shift_set_t *b,
                             const char *name_b, int ignore_hash);

/* Task arithmetic: out = sum_k w_k * in_k (w NULL: all 1). Sets must be compatible (checked
 * here, SD_ERR_ARG). Exact where it can be: terms of weight 0 are skipped, a term of weight 1
 * is copied, so weights (1, 0) return in_0 bit for bit. Metadata of in_0. out is initialised. */
int toolbox_combine(shift_set_t *out, const shift_set_t *const *in, const float *w, int n_in,
                    int ignore_hash);

/* out = s * in (every entry, norms included: ReLU(sigma + s*delta), gamma + s*delta); s = 1
 * copies bit for bit. out is initialised. */
void toolbox_scale(shift_set_t *out, const shift_set_t *in, float s);

/* Keeps the shifts of the top-R singular values of every matrix (entries are ordered like the
 * singular values, descending: index 0 is the largest) and zeroes the rest; norm shifts are
 * untouched and lengths kept, so the result loads like any shift file. R >= rank copies.
 * Returns the number of values a truncated layout would store (min(R, rank) per matrix, all
 * of every norm shift). out is initialised. */
long toolbox_limit_rank(shift_set_t *out, const shift_set_t *in, int R);

/* Layer selectors for style mixing. A selector is one of
 *   "geometry"     the preset of docs/method.md section 6: for a 4-level UNet (SD 1.x / 2.x)
 *                  down_blocks.2.attentions.1 through mid_block.attentions.0 in forward order, that is
 *                  down_blocks.2.attentions.1, down_blocks.2.downsamplers.0, down_blocks.3 (all),
 *                  mid_block.resnets.0, mid_block.attentions.0 (mid_block.resnets.1 follows the
 *                  attention: excluded); for a 3-level one (SDXL) the same span one level up:
 *                  down_blocks.1.attentions.1, down_blocks.1.downsamplers.0, down_blocks.2,
 *                  mid_block.resnets.0, mid_block.attentions.0;
 *   "content", "style"  SDXL presets (3 levels only): up_blocks.0.attentions.0 and
 *                  up_blocks.0.attentions.1, the transformers of the first up level that carry the
 *                  content and the style of the image;
 *   "level:N"      every module of UNet level N (0 = full resolution): down_blocks.N,
 *                  up_blocks.(levels-1-N), and the mid block at N = levels-1;
 *   "res:HxW" or "res:H"  the modules computing at that latent resolution for a model of
 *                  `levels` UNet levels and `latent` px latent side (512 px SD1: 4 and 64):
 *                  down_blocks.i at latent>>i, up_blocks.i at latent>>(levels-1-i), mid_block
 *                  at latent>>(levels-1), conv_in / conv_norm_out / conv_out at latent; a block's
 *                  resamplers count with their block; time embedding and text encoder: none;
 *   anything else  an fnmatch glob on the module path; a match of the pattern itself or of
 *                  "<pattern>.*" selects, so naming a module selects its submodules too.
 * Returns 1 when path is selected. */
int toolbox_selector_matches(const char *selector, const char *path, int levels, int latent);
/* Latent side of a path (rules above), or 0 when it has none. */
int toolbox_latent_res(const char *path, int levels, int latent);
/* UNet level of a path (rules of "level:N"), or -1 (time and added embeddings, conv_in/out, text encoders). */
int toolbox_level_of(const char *path, int levels);
/* SD_ERR_ARG naming a malformed selector (res:, level: out of range, an SDXL preset on another UNet). */
int toolbox_selector_check(const char *selector, int levels);

/* Style mix: out = entries of `from` selected by any selector + entries of `rest` selected by
 * none. Base hashes must agree (unless ignore_hash) and paths present in both must have the
 * same lengths; a selector that selects no entry of either set is an error (a typo would
 * otherwise silently mix nothing). *n_from: entries taken from `from`. Metadata of rest. */
int toolbox_mix(shift_set_t *out, const shift_set_t *from, const shift_set_t *rest,
                const char *const *selectors, int n_sel, int levels, int latent, int ignore_hash,
                int *n_from);

/* Norm-shift form conversion given the norm gains gamma of the base model
 * (get_gamma(ctx, path, &C) returns gamma and its length C, or NULL when the model lacks it):
 *  to_scalar = 1: per-element [C] -> svdiff-pytorch scalar [1], the least-squares fit of the
 *    gain gamma + d by gamma * (sigma + delta) / sigma, sigma = |gamma|_2: delta = <gamma, d> /
 *    sigma. Lossy unless d is parallel to gamma (the CLI wants --force when more than 1e-4 of the shifts is lost).
 *  to_scalar = 0: scalar [1] -> per-element [C], exact: d = gamma * ReLU(sigma + delta)/sigma - gamma.
 * Entries already in the target form are copied; matrix entries are copied. Sets metadata
 * norm_shift. Returns 0 or SD_ERR_ARG naming a norm the model lacks or a length mismatch.
 * *max_err: the largest |gain error| of the lossy direction (0 otherwise). */
typedef const float *(*toolbox_gamma_fn)(void *ctx, const char *path, int *C);
/* The fit of the lossy direction, per norm and overall (NULL: not wanted). For a norm with
 * per-element shift d and fitted gain gamma*t, lost = |gamma*t - (gamma + d)|_2 / |d|_2: the share
 * of the shift one scalar cannot hold (0 exact, 1 all of it; 0 when d = 0). report, when set, is
 * called once per fitted norm with lost and the largest |gain error|; the caller sets report and
 * ctx, the conversion resets the rest. */
typedef struct {
    void (*report)(void *ctx, const char *path, double lost, double max_gain_err);
    void *ctx;
    int n_fitted;
    double err2, shift2;     /* sums of |error|^2 and |d|^2 over the fitted norms */
    double worst_lost;       /* the largest per-norm lost, at worst_path */
    char worst_path[256];
} toolbox_fit_t;
/* Overall share lost: sqrt(err2 / shift2), 0 when nothing was lost. */
double toolbox_fit_lost(const toolbox_fit_t *f);
int toolbox_convert_norms(shift_set_t *out, const shift_set_t *in, int to_scalar,
                          toolbox_gamma_fn get_gamma, void *ctx, double *max_err, toolbox_fit_t *fit);

/* Appends an operation to the "history" metadata (entries separated by "; "). */
void toolbox_add_history(shift_set_t *s, const char *entry);

/* L2 norm of an entry's values. */
double toolbox_l2(const shift_entry_t *e);

#endif
