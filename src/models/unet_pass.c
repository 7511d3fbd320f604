/* The pass over the UNet's stage program (unet_internal.h): one step per stage, binding the
 * stage's module (ResnetBlock2D, Transformer2DModel, Downsample2D, Upsample2D, conv_in, the
 * output layers) to the buffers of the activation plan (unet.c acts_layout): its input with a
 * popped skip appended, its output slot, its kept or recomputed (checkpointed) inside, and in
 * backward the gradient of its output and of its input, split between the hidden state and the
 * skip. The blocks of unet_2d_blocks.c call these steps in diffusers' order. */
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "models/unet.h"
#include "models/unet_internal.h"
#include "ops/ops.h"

/* The input of stage s: the previous output (or the sample), with skip `pop` appended on
 * channels in scratch memory. */
static const float *stage_input(const unet_t *m, const unet_acts_t *a, int s, const float *prev, int B, int H, int W) {
    const unet_stage_t *st = &m->stages[s];
    if (st->pop < 0) return prev;
    const int Sl = (H >> st->level) * (W >> st->level), cs = m->skip_channels[st->pop];
    float *cat = scratch_floats((size_t)B * st->c_in * Sl);
    concat_channels_forward(cat, prev, a->skip[st->pop], B, st->c_in - cs, cs, Sl);
    return cat;
}

static void check_stage(const unet_pass_t *p, unet_stage_kind_t kind, long index) {
    SD_CHECK(p->s >= 0 && p->s < p->m->n_stages && p->m->stages[p->s].kind == kind &&
                 p->m->stages[p->s].index == index,
             "unet: stage %d does not run the module its block gives", p->s);
}

/* A forward step: the stage's input x [B, c_in, Hl, Wl] and output slot; keep: its inside is
 * stored in the training layout (a->res / a->tr). */
typedef struct {
    const unet_stage_t *st;
    const float *x;
    float *out;
    int Hl, Wl, keep;
    scratch_mark_t mark;
} fwd_step_t;

static fwd_step_t fwd_begin(unet_pass_t *p, unet_stage_kind_t kind, long index) {
    check_stage(p, kind, index);
    const unet_t *m = p->m;
    unet_acts_t *a = p->a;
    fwd_step_t f;
    f.st = &m->stages[p->s];
    if (kind == UNET_STAGE_OUT) f.out = p->out;
    else if (a->training || f.st->push >= 0) f.out = a->out[p->s];
    else f.out = (p->prev == a->ping[0]) ? a->ping[1] : a->ping[0];
    if (!a->training) a->out[p->s] = f.out;
    f.mark = scratch_mark();
    f.x = stage_input(m, a, p->s, p->prev, p->B, p->H, p->W);
    f.Hl = p->H >> f.st->level, f.Wl = p->W >> f.st->level;
    f.keep = a->training && a->keep[p->s];
    return f;
}

static void fwd_end(unet_pass_t *p, const fwd_step_t *f) {
    scratch_release(f->mark);
    p->prev = f->out;
    p->s++;
}

/* A backward step: dy = dL/d(the stage's output) (with the gradient of the skip it pushed
 * added), its input x, and dx = dL/dx (+=): the gradient of the previous output, or of cat(it,
 * skip) that bwd_end splits. */
typedef struct {
    const unet_stage_t *st;
    const float *x, *dy;
    float *dx, *dprev;
    int Hl, Wl, keep, c_prev, nxt;
    size_t n_prev;
    scratch_mark_t mark;
} bwd_step_t;

static bwd_step_t bwd_begin(unet_pass_t *p, unet_stage_kind_t kind, long index) {
    check_stage(p, kind, index);
    const unet_t *m = p->m;
    unet_acts_t *a = p->a;
    const int s = p->s, B = p->B, H = p->H, W = p->W;
    bwd_step_t b;
    b.st = &m->stages[s];
    b.mark = scratch_mark();
    if (b.st->push >= 0) { /* the output also fed the up path as a skip */
        SD_CHECK(p->cur >= 0, "stage %d pushes a skip but is the last stage", s);
        add_into(a->dh[p->cur], a->dskip_at[b.st->push], stage_out_floats(b.st, B, H, W));
    }
    b.Hl = H >> b.st->level, b.Wl = W >> b.st->level;
    const int Sl = b.Hl * b.Wl;
    const float *prev = s ? a->out[s - 1] : a->sample;
    b.x = stage_input(m, a, s, prev, B, H, W);
    b.dprev = NULL;   /* dL/d(previous output), or d(sample) for conv_in */
    b.c_prev = b.st->pop >= 0 ? b.st->c_in - m->skip_channels[b.st->pop] : b.st->c_in;
    b.n_prev = (size_t)B * b.c_prev * Sl;
    b.nxt = p->cur == 0 ? 1 : 0;
    if (s > 0) {
        b.dprev = a->dh[b.nxt];
        memset(b.dprev, 0, b.n_prev * sizeof(float));
    } else if (p->dsample) {
        b.dprev = m->cfg.center_input_sample ? zeros(b.n_prev) : p->dsample;
    }
    b.dx = b.dprev;
    if (b.st->pop >= 0) b.dx = zeros((size_t)B * b.st->c_in * Sl);
    b.dy = p->dy;
    b.keep = a->keep[s];
    return b;
}

static void bwd_end(unet_pass_t *p, const bwd_step_t *b) {
    const unet_t *m = p->m;
    if (b->st->pop >= 0) /* split d(cat) into the hidden state's and the skip's gradients */
        concat_channels_backward(b->dprev, p->a->dskip_at[b->st->pop], b->dx, p->B, b->c_prev,
                                 m->skip_channels[b->st->pop], b->Hl * b->Wl);
    if (p->s == 0 && p->dsample && m->cfg.center_input_sample)
        for (size_t i = 0; i < b->n_prev; i++) p->dsample[i] += 2.0f * b->dprev[i];
    scratch_release(b->mark);
    p->dy = b->dprev, p->cur = b->nxt;
    p->s--;
}

/* conv_in: [B, in_channels, H, W] -> [B, C0, H, W] */
void unet_pass_conv_in_forward(unet_pass_t *p) {
    fwd_step_t f = fwd_begin(p, UNET_STAGE_CONV_IN, 0);
    unet_conv_forward(f.out, f.x, &p->m->conv_in, p->B, f.Hl, f.Wl);
    fwd_end(p, &f);
}

void unet_pass_conv_in_backward(unet_pass_t *p) {
    bwd_step_t b = bwd_begin(p, UNET_STAGE_CONV_IN, 0);
    unet_conv_backward(b.dx, p->g, b.dy, b.x, &p->m->conv_in, p->B, b.Hl, b.Wl);
    bwd_end(p, &b);
}

/* conv_norm_out, SiLU, conv_out: [B, C0, H, W] -> the caller's out [B, out_channels, H, W] */
void unet_pass_out_forward(unet_pass_t *p) {
    fwd_step_t f = fwd_begin(p, UNET_STAGE_OUT, 0);
    unet_resnet_acts_t *oa = &p->a->res[p->s];
    const size_t n = (size_t)p->B * f.st->c_in * f.Hl * f.Wl;
    float *h = f.keep ? oa->h1 : scratch_floats(n);
    unet_norm_forward(h, f.keep ? oa->mean1 : NULL, f.keep ? oa->rstd1 : NULL, f.x, &p->m->conv_norm_out, p->B,
                      f.Hl * f.Wl);
    float *act = f.keep ? scratch_floats(n) : h;
    silu_forward(act, h, n);
    unet_conv_forward(f.out, act, &p->m->conv_out, p->B, f.Hl, f.Wl);
    fwd_end(p, &f);
}

void unet_pass_out_backward(unet_pass_t *p) {
    bwd_step_t b = bwd_begin(p, UNET_STAGE_OUT, 0);
    const unet_resnet_acts_t *oa = &p->a->res[p->s];
    const int Sl = b.Hl * b.Wl;
    const size_t n = (size_t)p->B * b.st->c_in * Sl;
    float *act = scratch_floats(n), *dact = zeros(n), *dh = zeros(n);
    silu_forward(act, oa->h1, n);
    unet_conv_backward(dact, p->g, b.dy, act, &p->m->conv_out, p->B, b.Hl, b.Wl);
    silu_backward(dh, dact, oa->h1, n);
    unet_norm_backward(b.dx, p->g, dh, b.x, oa->mean1, oa->rstd1, &p->m->conv_norm_out, p->B, Sl);
    bwd_end(p, &b);
}

void unet_pass_resnet_forward(unet_pass_t *p, const unet_resnet_t *r) {
    fwd_step_t f = fwd_begin(p, UNET_STAGE_RESNET, r - p->m->resnets);
    unet_resnet_forward(f.out, f.keep ? &p->a->res[p->s] : NULL, f.x, p->a->temb, r, p->B, f.Hl, f.Wl);
    fwd_end(p, &f);
}

/* A checkpointed stage (inside not kept) recomputes its forward into scratch first. */
void unet_pass_resnet_backward(unet_pass_t *p, const unet_resnet_t *r) {
    bwd_step_t b = bwd_begin(p, UNET_STAGE_RESNET, r - p->m->resnets);
    unet_acts_t *a = p->a;
    const int B = p->B, Sl = b.Hl * b.Wl;
    unet_resnet_acts_t *ra = &a->res[p->s], re;
    if (!b.keep) { /* checkpointed: recompute the inside */
        float *base = scratch_floats(unet_resnet_acts_layout(NULL, NULL, r, B, Sl));
        unet_resnet_acts_layout(&re, base, r, B, Sl);
        unet_resnet_forward(scratch_floats((size_t)B * r->out * Sl), &re, b.x, a->temb, r, B, b.Hl, b.Wl);
        ra = &re;
    }
    unet_resnet_backward(b.dx, a->dtemb, p->g, b.dy, b.x, a->temb, ra, r, B, b.Hl, b.Wl);
    bwd_end(p, &b);
}

void unet_pass_transformer_forward(unet_pass_t *p, const unet_transformer_t *t) {
    fwd_step_t f = fwd_begin(p, UNET_STAGE_TRANSFORMER, t - p->m->transformers);
    unet_transformer_forward(f.out, f.keep ? &p->a->tr[p->s] : NULL, f.x, p->ctx, t, p->B, f.Hl * f.Wl, p->T);
    fwd_end(p, &f);
}

void unet_pass_transformer_backward(unet_pass_t *p, const unet_transformer_t *t) {
    bwd_step_t b = bwd_begin(p, UNET_STAGE_TRANSFORMER, t - p->m->transformers);
    unet_acts_t *a = p->a;
    const int B = p->B, T = p->T, Sl = b.Hl * b.Wl;
    unet_transformer_acts_t *ta = &a->tr[p->s], re;
    if (!b.keep) {
        float *base = scratch_floats(unet_transformer_acts_layout(NULL, NULL, t, B, Sl, T));
        unet_transformer_acts_layout(&re, base, t, B, Sl, T);
        unet_transformer_forward(scratch_floats((size_t)B * t->C * Sl), &re, b.x, a->ctx, t, B, Sl, T);
        ta = &re;
    }
    unet_transformer_backward(b.dx, p->dctx, p->g, b.dy, b.x, a->ctx, ta, t, B, Sl, T);
    bwd_end(p, &b);
}

void unet_pass_downsample_forward(unet_pass_t *p, const layer_t *conv) {
    fwd_step_t f = fwd_begin(p, UNET_STAGE_DOWNSAMPLE, conv - p->m->samplers);
    unet_downsample2d_forward(f.out, f.x, conv, p->B, f.Hl, f.Wl);
    fwd_end(p, &f);
}

void unet_pass_downsample_backward(unet_pass_t *p, const layer_t *conv) {
    bwd_step_t b = bwd_begin(p, UNET_STAGE_DOWNSAMPLE, conv - p->m->samplers);
    unet_downsample2d_backward(b.dx, p->g, b.dy, b.x, conv, p->B, b.Hl, b.Wl);
    bwd_end(p, &b);
}

void unet_pass_upsample_forward(unet_pass_t *p, const layer_t *conv) {
    fwd_step_t f = fwd_begin(p, UNET_STAGE_UPSAMPLE, conv - p->m->samplers);
    unet_upsample2d_forward(f.out, f.x, conv, p->B, f.Hl, f.Wl);
    fwd_end(p, &f);
}

void unet_pass_upsample_backward(unet_pass_t *p, const layer_t *conv) {
    bwd_step_t b = bwd_begin(p, UNET_STAGE_UPSAMPLE, conv - p->m->samplers);
    unet_upsample2d_backward(b.dx, p->g, b.dy, b.x, conv, p->B, b.Hl, b.Wl);
    bwd_end(p, &b);
}
