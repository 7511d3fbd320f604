/* Private to the UNet's source files (unet.c, unet_pass.c, unet_2d_blocks.c, unet_resnet.c,
 * unet_attention.c, unet_resample.c, unet_embeddings.c), hence the short names: small helpers,
 * and the pass over the stage program through which unet_2d_blocks.c runs its modules. */
#ifndef SVDIFF_MODELS_UNET_INTERNAL_H
#define SVDIFF_MODELS_UNET_INTERNAL_H

#include "base/bump.h"
#include <string.h>

#include "base/scratch.h"
#include "models/unet.h"

/* Elementwise loops below this many elements stay single-threaded: the OpenMP fork/join costs
 * more than the work. */
#define PAR_MIN 32768

/* n zeroed floats of scratch memory. */
static inline float *zeros(size_t n) {
    float *p = scratch_floats(n);
    memset(p, 0, n * sizeof(float));
    return p;
}

/* y += x */
static inline void add_into(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}


/* ---- one pass over the stage program (unet_pass.c) ----
 * unet_forward / unet_backward walk the stages of unet_t in order / in reverse; the block
 * functions below advance the pass one stage per module they run. Each step binds the module to
 * the buffers the activation plan gives its stage: the input (the previous output, with the skip
 * the stage pops appended on channels), the output (a training slot, a skip slot or an inference
 * ping-pong buffer), the stored or recomputed (checkpointed) inside, and in backward the gradient
 * buffers (a skip's gradient is added when the pass reaches the stage that pushed it). A step
 * checks that the stage it is at runs the module it is given. */
typedef struct {
    const unet_t *m;
    unet_acts_t *a;
    int B, H, W, T;      /* shape of this pass (a->cur_*) */
    int s;               /* the stage the next step runs */
    /* forward */
    const float *ctx;    /* [B, T, cross_attention_dim] */
    const float *prev;   /* output of stage s - 1 (the sample for stage 0) */
    float *out;          /* the caller's output (written by the last stage) */
    /* backward */
    unet_grads_t *g;
    float *dsample, *dctx;
    const float *dy;     /* dL/d(output of stage s) */
    int cur;             /* which of a->dh holds dy (-1: the caller's dout) */
} unet_pass_t;

/* Floats of stage s's output at sample size H x W. */
static inline size_t stage_out_floats(const unet_stage_t *s, int B, int H, int W) {
    return (size_t)B * s->c_out * (size_t)(H >> s->out_level) * (size_t)(W >> s->out_level);
}

/* The steps (unet_pass.c). conv_in: [B, in_channels, H, W] -> [B, C0, H, W]; out:
 * conv_norm_out, SiLU, conv_out into the caller's output [B, out_channels, H, W]. */
void unet_pass_conv_in_forward(unet_pass_t *p);
void unet_pass_conv_in_backward(unet_pass_t *p);
void unet_pass_out_forward(unet_pass_t *p);
void unet_pass_out_backward(unet_pass_t *p);
void unet_pass_resnet_forward(unet_pass_t *p, const unet_resnet_t *r);
void unet_pass_resnet_backward(unet_pass_t *p, const unet_resnet_t *r);
void unet_pass_transformer_forward(unet_pass_t *p, const unet_transformer_t *t);
void unet_pass_transformer_backward(unet_pass_t *p, const unet_transformer_t *t);
void unet_pass_downsample_forward(unet_pass_t *p, const layer_t *conv);
void unet_pass_downsample_backward(unet_pass_t *p, const layer_t *conv);
void unet_pass_upsample_forward(unet_pass_t *p, const layer_t *conv);
void unet_pass_upsample_backward(unet_pass_t *p, const layer_t *conv);

/* ---- the blocks of unet_2d_blocks.py (unet_2d_blocks.c) ----
 * Forward: hidden [B, Cin, H, W] (the previous stage's output) -> hidden of the block's last
 * stage; down blocks push their output_states as skips, up blocks pop them (the last pushed
 * first) and append each to the input of a resnet. Backward: the same stages in reverse,
 * accumulating into the parameter gradients, the skip gradients, dtemb and dctx. */
void unet_down_block_forward(unet_pass_t *p, const unet_block_t *b);               /* DownBlock2D */
void unet_down_block_backward(unet_pass_t *p, const unet_block_t *b);
void unet_cross_attn_down_block_forward(unet_pass_t *p, const unet_block_t *b);    /* CrossAttnDownBlock2D */
void unet_cross_attn_down_block_backward(unet_pass_t *p, const unet_block_t *b);
void unet_mid_block_cross_attn_forward(unet_pass_t *p, const unet_block_t *b);     /* UNetMidBlock2DCrossAttn */
void unet_mid_block_cross_attn_backward(unet_pass_t *p, const unet_block_t *b);
void unet_up_block_forward(unet_pass_t *p, const unet_block_t *b);                 /* UpBlock2D */
void unet_up_block_backward(unet_pass_t *p, const unet_block_t *b);
void unet_cross_attn_up_block_forward(unet_pass_t *p, const unet_block_t *b);      /* CrossAttnUpBlock2D */
void unet_cross_attn_up_block_backward(unet_pass_t *p, const unet_block_t *b);
/* Any of the five, by b->kind. */
void unet_block_forward(unet_pass_t *p, const unet_block_t *b);
void unet_block_backward(unet_pass_t *p, const unet_block_t *b);
/* Fills down_blocks / mid_block / up_blocks from the stage program that setup built (in
 * diffusers' order); returns 0 or SD_ERR_FORMAT when the program does not have the blocks'
 * shape (a construction bug). */
int unet_group_blocks(unet_t *m);

#endif
