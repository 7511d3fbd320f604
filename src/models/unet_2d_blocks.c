/* The blocks of the UNet, after diffusers unets/unet_2d_blocks.py: DownBlock2D,
 * CrossAttnDownBlock2D, UNetMidBlock2DCrossAttn, UpBlock2D and CrossAttnUpBlock2D, forward and
 * backward. Each runs its modules (ResnetBlock2D, Transformer2DModel, Downsample2D /
 * Upsample2D) as steps of the pass over the stage program (unet_internal.h), which owns the
 * buffers: a block says which module runs when, and which outputs are skips.
 * Shapes: a block at level L works on [B, C, H >> L, W >> L]; C = block_out_channels[L]. */
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "models/unet.h"
#include "models/unet_internal.h"

/* ---- DownBlock2D (down_blocks.i without cross-attention) ----
 * for j: hidden = resnets[j](hidden, temb), pushed as a skip;
 * downsamplers.0 (all but the last block): hidden [B, C, H/2, W/2] = Downsample2D(hidden), pushed. */
void unet_down_block_forward(unet_pass_t *p, const unet_block_t *b) {
    for (int j = 0; j < b->n_resnets; j++) unet_pass_resnet_forward(p, &b->resnets[j]);
    if (b->sampler) unet_pass_downsample_forward(p, b->sampler);
}

void unet_down_block_backward(unet_pass_t *p, const unet_block_t *b) {
    if (b->sampler) unet_pass_downsample_backward(p, b->sampler);
    for (int j = b->n_resnets - 1; j >= 0; j--) unet_pass_resnet_backward(p, &b->resnets[j]);
}

/* ---- CrossAttnDownBlock2D (down_blocks.i) ----
 * for j: hidden = attentions[j](resnets[j](hidden, temb), ctx), pushed as a skip (the resnet
 * output alone is not); downsamplers.0 as in DownBlock2D. */
void unet_cross_attn_down_block_forward(unet_pass_t *p, const unet_block_t *b) {
    for (int j = 0; j < b->n_resnets; j++) {
        unet_pass_resnet_forward(p, &b->resnets[j]);
        unet_pass_transformer_forward(p, &b->attentions[j]);
    }
    if (b->sampler) unet_pass_downsample_forward(p, b->sampler);
}

void unet_cross_attn_down_block_backward(unet_pass_t *p, const unet_block_t *b) {
    if (b->sampler) unet_pass_downsample_backward(p, b->sampler);
    for (int j = b->n_resnets - 1; j >= 0; j--) {
        unet_pass_transformer_backward(p, &b->attentions[j]);
        unet_pass_resnet_backward(p, &b->resnets[j]);
    }
}

/* ---- UNetMidBlock2DCrossAttn (mid_block) ----
 * hidden = resnets[0](hidden, temb); for j: hidden = resnets[j + 1](attentions[j](hidden, ctx),
 * temb). Its resnets divide their output by mid_block_scale_factor; no skips. */
void unet_mid_block_cross_attn_forward(unet_pass_t *p, const unet_block_t *b) {
    unet_pass_resnet_forward(p, &b->resnets[0]);
    for (int j = 0; j < b->n_attentions; j++) {
        unet_pass_transformer_forward(p, &b->attentions[j]);
        unet_pass_resnet_forward(p, &b->resnets[j + 1]);
    }
}

void unet_mid_block_cross_attn_backward(unet_pass_t *p, const unet_block_t *b) {
    for (int j = b->n_attentions - 1; j >= 0; j--) {
        unet_pass_resnet_backward(p, &b->resnets[j + 1]);
        unet_pass_transformer_backward(p, &b->attentions[j]);
    }
    unet_pass_resnet_backward(p, &b->resnets[0]);
}

/* ---- UpBlock2D (up_blocks.i without cross-attention) ----
 * for j: hidden [B, C, H, W] = resnets[j](cat(hidden, pop()) on channels, temb);
 * upsamplers.0 (all but the last block): hidden [B, C, 2H, 2W] = Upsample2D(hidden). */
void unet_up_block_forward(unet_pass_t *p, const unet_block_t *b) {
    for (int j = 0; j < b->n_resnets; j++) unet_pass_resnet_forward(p, &b->resnets[j]);
    if (b->sampler) unet_pass_upsample_forward(p, b->sampler);
}

void unet_up_block_backward(unet_pass_t *p, const unet_block_t *b) {
    if (b->sampler) unet_pass_upsample_backward(p, b->sampler);
    for (int j = b->n_resnets - 1; j >= 0; j--) unet_pass_resnet_backward(p, &b->resnets[j]);
}

/* ---- CrossAttnUpBlock2D (up_blocks.i) ----
 * for j: hidden = attentions[j](resnets[j](cat(hidden, pop()), temb), ctx); upsamplers.0 as in
 * UpBlock2D. */
void unet_cross_attn_up_block_forward(unet_pass_t *p, const unet_block_t *b) {
    for (int j = 0; j < b->n_resnets; j++) {
        unet_pass_resnet_forward(p, &b->resnets[j]);
        unet_pass_transformer_forward(p, &b->attentions[j]);
    }
    if (b->sampler) unet_pass_upsample_forward(p, b->sampler);
}

void unet_cross_attn_up_block_backward(unet_pass_t *p, const unet_block_t *b) {
    if (b->sampler) unet_pass_upsample_backward(p, b->sampler);
    for (int j = b->n_resnets - 1; j >= 0; j--) {
        unet_pass_transformer_backward(p, &b->attentions[j]);
        unet_pass_resnet_backward(p, &b->resnets[j]);
    }
}

void unet_block_forward(unet_pass_t *p, const unet_block_t *b) {
    switch (b->kind) {
    case UNET_DOWN_BLOCK_2D: unet_down_block_forward(p, b); break;
    case UNET_CROSS_ATTN_DOWN_BLOCK_2D: unet_cross_attn_down_block_forward(p, b); break;
    case UNET_MID_BLOCK_2D_CROSS_ATTN: unet_mid_block_cross_attn_forward(p, b); break;
    case UNET_UP_BLOCK_2D: unet_up_block_forward(p, b); break;
    case UNET_CROSS_ATTN_UP_BLOCK_2D: unet_cross_attn_up_block_forward(p, b); break;
    }
}

void unet_block_backward(unet_pass_t *p, const unet_block_t *b) {
    switch (b->kind) {
    case UNET_DOWN_BLOCK_2D: unet_down_block_backward(p, b); break;
    case UNET_CROSS_ATTN_DOWN_BLOCK_2D: unet_cross_attn_down_block_backward(p, b); break;
    case UNET_MID_BLOCK_2D_CROSS_ATTN: unet_mid_block_cross_attn_backward(p, b); break;
    case UNET_UP_BLOCK_2D: unet_up_block_backward(p, b); break;
    case UNET_CROSS_ATTN_UP_BLOCK_2D: unet_cross_attn_up_block_backward(p, b); break;
    }
}

/* ---- grouping the stage program into blocks ---- */

/* The module index of stage *s if it has kind k (and *s advances); -1 if not. */
static int next_stage(const unet_t *m, int *s, unet_stage_kind_t k) {
    if (*s >= m->n_stages || m->stages[*s].kind != k) return -1;
    return m->stages[(*s)++].index;
}

/* Appends resnet / transformer k (-1: none) to the block's view: the modules of a block are
 * consecutive in unet_t's arrays. Returns 0 if k does not fit. */
static int add_resnet(unet_t *m, unet_block_t *b, int k) {
    if (k < 0 || (b->n_resnets && &m->resnets[k] != b->resnets + b->n_resnets)) return 0;
    if (!b->n_resnets++) b->resnets = &m->resnets[k];
    return 1;
}

static int add_attention(unet_t *m, unet_block_t *b, int k) {
    if (k < 0 || (b->n_attentions && &m->transformers[k] != b->attentions + b->n_attentions)) return 0;
    if (!b->n_attentions++) b->attentions = &m->transformers[k];
    return 1;
}

/* Takes the stages of one block from *s on: n_res resnets, each followed by a transformer when
 * attn (in the mid block, each resnet but the first preceded by one), then a sampler stage of
 * kind `sampler` (-1: none). */
static int group(unet_t *m, unet_block_t *b, unet_block_kind_t kind, int *s, int n_res, int attn, int sampler,
                 const char *what) {
    const int mid = kind == UNET_MID_BLOCK_2D_CROSS_ATTN;
    memset(b, 0, sizeof *b);
    b->kind = kind, b->first_stage = *s;
    int ok = 1;
    for (int j = 0; j < n_res && ok; j++) {
        if (attn && mid && j > 0) ok = add_attention(m, b, next_stage(m, s, UNET_STAGE_TRANSFORMER));
        ok = ok && add_resnet(m, b, next_stage(m, s, UNET_STAGE_RESNET));
        if (attn && !mid) ok = ok && add_attention(m, b, next_stage(m, s, UNET_STAGE_TRANSFORMER));
    }
    if (ok && sampler >= 0) {
        const int k = next_stage(m, s, (unet_stage_kind_t)sampler);
        if (k >= 0) b->sampler = &m->samplers[k];
        ok = k >= 0;
    }
    if (!ok) return sd_error(SD_ERR_FORMAT, "unet: the stage program does not have the modules of %s", what);
    b->n_stages = *s - b->first_stage;
    return SD_OK;
}

int unet_group_blocks(unet_t *m) {
    const unet_config_t *c = &m->cfg;
    const int n = c->n_levels;
    char what[48];
    int s = 1, rc;   /* stage 0: conv_in */
    for (int i = 0; i < n; i++) {
        snprintf(what, sizeof what, "down_blocks.%d", i);
        rc = group(m, &m->down_blocks[i], c->down_attn[i] ? UNET_CROSS_ATTN_DOWN_BLOCK_2D : UNET_DOWN_BLOCK_2D, &s,
                   c->layers_per_block[i], c->down_attn[i], i < n - 1 ? UNET_STAGE_DOWNSAMPLE : -1, what);
        if (rc) return rc;
    }
    if (c->mid_block && (rc = group(m, &m->mid_block, UNET_MID_BLOCK_2D_CROSS_ATTN, &s, 2, 1, -1, "mid_block")))
        return rc;
    for (int i = 0; i < n; i++) {
        snprintf(what, sizeof what, "up_blocks.%d", i);
        rc = group(m, &m->up_blocks[i], c->up_attn[i] ? UNET_CROSS_ATTN_UP_BLOCK_2D : UNET_UP_BLOCK_2D, &s,
                   c->layers_per_block[n - 1 - i] + 1, c->up_attn[i], i < n - 1 ? UNET_STAGE_UPSAMPLE : -1, what);
        if (rc) return rc;
    }
    if (s != m->n_stages - 1 || m->stages[s].kind != UNET_STAGE_OUT)
        return sd_error(SD_ERR_FORMAT, "unet: the stage program does not end with the output stage");
    return SD_OK;
}
