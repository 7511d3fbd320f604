/* Cut-Mix-Unmix regularisation (docs/method.md section 4) and the cross-attention leakage measure:
 * owns the per-layer hooks ("sites") that the UNet's cross-attention (attn2) calls after its
 * forward and backward, the row specification (which tokens name which subject, which latent
 * pixels belong to which subject) and the loss, its gradient and the leakage sums.
 *
 * Loss. For a site (one BasicTransformerBlock's attn2, at latent resolution H >> level) with
 * probabilities P[b, h, p, j] (row b, head h, query position p, context token j):
 *   G[b, p, j] = sum_s Mo[b, s, p] W[b, s, j]
 *     W[b, s, j]  1 on the tokens of subject s's identifier phrase (s = 0, 1), else 0
 *     Mo[b, s, p] the share of layer pixel p inside the OTHER subject's region (1 - s), the
 *                 latent-resolution region mask average-pooled to the layer's resolution
 *   loss_site = sum_{b,h,p,j} G P^2 / N_site,  N_site = sum_{b,s} heads * |Mo[b,s,.]|_1 * |W[b,s,.]|_1
 * (the mean of the squared probabilities of each subject's tokens over the other subject's
 * region, over heads, positions and tokens), and the regulariser is
 *   L_unmix = weight * mean over sites of loss_site.
 * Rows whose W is all zero (single-subject samples, class rows, unconditional rows) add nothing.
 * The backward recomputes P from the saved log-sum-exp (attention_probs) block by block and adds
 * d L_unmix / d q and d L_unmix / d k into the attention's q / k gradients: nothing [S, S] and no
 * full [B, heads, S, 77] tensor is kept. */
#ifndef SVDIFF_MODELS_UNMIX_H
#define SVDIFF_MODELS_UNMIX_H

#include "models/unet.h"

typedef struct unmix unmix_t;

/* The form of the loss (--unmix-loss). MSE is docs/method.md's: it can be met by lowering a phrase's
 * attention everywhere. SHARE, per row, head and subject, is the squared share of the phrase's
 * attention mass that lies in the other subject's region, r = a / z with
 *   a = sum_{p,j} Mo[s, p] W[s, j] P[p, j],  z = sum_{p,j} W[s, j] P[p, j],
 * averaged over the (row, head, subject) terms: scale-free, so it can only be met by moving the
 * attention into the subject's own region (the leakage measure below, per head). */
typedef enum { UNMIX_MSE = 0, UNMIX_SHARE = 1 } unmix_mode_t;

/* One hooked cross-attention (unet_tblock_t.unmix points here). */
typedef struct unmix_site {
    unmix_t *u;
    int level;          /* the layer works at (H >> level) x (W >> level) */
    char *name;         /* module path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2" */
    double loss;        /* loss_site of the last forward (assigned, so a checkpointed recompute is harmless) */
    double norm;        /* N_site of the last forward */
    double mass[2][2];  /* leakage sums (when measuring): subject s's token mass [in the other region, in all] */
    double queries;     /* query rows (positions x heads) those sums cover, per subject */
} unmix_site_t;

struct unmix {
    int rows;           /* UNet rows the specification covers (rows beyond it are ignored) */
    int T;              /* context tokens (77) */
    int H, W;           /* UNet input (latent) size */
    float *tokw;        /* [rows, 2, T] W above */
    float *region;      /* [rows, 2, H, W] subject s's region at latent resolution (0 / 1, or shares) */
    float weight;       /* the loss weight (--unmix-weight) */
    unmix_mode_t mode;  /* --unmix-loss (MSE unless set after unmix_attach) */
    float gscale;       /* backward multiplies the gradient by this (the trainer's grad_scale) */
    int measure;        /* 1: forwards add to the sites' leakage sums */
    int n_sites;
    unmix_site_t *sites;
    unet_t *model;      /* the model the sites are attached to */
};

/* Attaches sites to the cross-attention layers of `m` chosen by `layers`: NULL, "" or "all" for
 * every one, else a comma-separated list of items, each either a latent resolution (digits: the
 * layers working at that height, e.g. "16,8" on a 64x64 latent) or a module-path pattern
 * (fnmatch(3) glob, or a prefix when it has no wildcard: "up_blocks", "*mid_block*"). Allocates
 * the specification for `rows` rows of an H x W latent (zeroed: no subject anywhere). Returns 0
 * or SD_ERR_ARG naming the item that selects nothing (or a model without cross-attention). */
int unmix_attach(unmix_t *u, unet_t *m, const char *layers, int rows, int H, int W, int T);
/* Removes the hooks from the model and frees everything. Safe on a zeroed unmix_t. */
void unmix_detach(unmix_t *u);
/* Clears the specification (every row: no subject). */
void unmix_clear(unmix_t *u);
/* Row r: subject s's identifier phrase is token ids phrase[0..n) (without bos / eos); marks
 * its first occurrence in ids[T] (a prompt's ids). Returns the number of tokens marked (0 when
 * the phrase does not occur). */
int unmix_mark_phrase(unmix_t *u, int r, int s, const int *ids, const int *phrase, int n);
/* Row r: subject 0 owns the left half (vertical: the top half) of the latent, subject 1 the rest. */
void unmix_set_halves(unmix_t *u, int r, int vertical);
/* weight * mean over sites of the last forward's loss_site. */
double unmix_loss(const unmix_t *u);
/* Zeroes the leakage sums; leakage share of subject s (mass in the other region / all its mass,
 * over every site and forward since the reset; -1 when there was none). */
void unmix_reset_leakage(unmix_t *u);
double unmix_leakage(const unmix_t *u, int s);
/* The mean attention probability mass per query (position, head) on subject s's phrase tokens over
 * the same forwards (a loss that only lowers it everywhere, rather than moving it, shows here). */
double unmix_token_mass(const unmix_t *u, int s);

/* The hooks (models/unet_attention.c), on attn2's q [B, S, heads*D], k [B, T, heads*D] and
 * lse [B, heads, S] of the forward; backward ACCUMULATES into dq / dk. */
void unmix_site_forward(unmix_site_t *s, const float *q, const float *k, const float *lse, int B, int S, int T,
                        int heads, int D, float scale);
void unmix_site_backward(float *dq, float *dk, const unmix_site_t *s, const float *q, const float *k,
                         const float *lse, int B, int S, int T, int heads, int D, float scale);

#endif
