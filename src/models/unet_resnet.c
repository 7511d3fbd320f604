/* ResnetBlock2D of the UNet (unet.h; diffusers resnet.py) forward and backward with its
 * training-activation layout, and the layer and norm wrappers every UNet module calls: linear,
 * conv and GroupNorm / LayerNorm over dense or spectral weights and shifted norm gains.
 * Attention and Transformer2DModel are in unet_attention.c, the samplers in unet_resample.c, the
 * time embedding in unet_embeddings.c, the down / mid / up blocks in unet_2d_blocks.c. */
#include <math.h>
#include <string.h>

#include "base/bump.h"
#include "base/error.h"
#include "base/scratch.h"
#include "models/unet.h"
#include "models/unet_internal.h"
#include "ops/ops.h"

/* ---- layers and norms ---- */

static unet_layer_grads_t *lgrad(unet_grads_t *g, const layer_t *l) {
    return g ? &g->layers[l->id] : NULL;
}

void unet_linear_forward(float *out, const float *inp, const layer_t *l, int N) {
    weight_linear_forward(out, inp, &l->w, l->bias, N);
}

void unet_linear_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                          const layer_t *l, int N) {
    unet_layer_grads_t *lg = lgrad(g, l);
    float *dw = lg ? lg->dw : NULL, *db = lg && l->bias ? lg->dbias : NULL;
    if (!dinp && !dw && !db) return;
    weight_linear_backward(dinp, dw, db, dout, inp, &l->w, N);
}

static conv2d_shape_t conv_shape(const layer_t *l, int B, int H, int W) {
    conv2d_shape_t s = {.B = B, .IC = l->in, .H = H, .W = W, .OC = l->out, .KH = l->k, .KW = l->k,
                        .stride = l->stride};
    if (l->pad >= 0) {
        s.pad[0] = s.pad[1] = s.pad[2] = s.pad[3] = l->pad;
    } else { /* Downsample2D with padding 0: F.pad (0, 1, 0, 1), then an unpadded conv */
        s.pad[0] = 0, s.pad[1] = 1, s.pad[2] = 0, s.pad[3] = 1;
    }
    return s;
}

void unet_conv_forward(float *out, const float *inp, const layer_t *l, int B, int H, int W) {
    const conv2d_shape_t s = conv_shape(l, B, H, W);
    weight_conv2d_forward(out, inp, &l->w, l->bias, &s);
}

void unet_conv_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                        const layer_t *l, int B, int H, int W) {
    unet_layer_grads_t *lg = lgrad(g, l);
    float *dw = lg ? lg->dw : NULL, *db = lg && l->bias ? lg->dbias : NULL;
    if (!dinp && !dw && !db) return;
    const conv2d_shape_t s = conv_shape(l, B, H, W);
    weight_conv2d_backward(dinp, dw, db, dout, inp, &l->w, &s);
}

/* The gain a norm applies: gamma itself, or the shifted gain in scratch memory. */
static const float *norm_gain(const norm_layer_t *n) {
    if (!n->shift) return n->gamma;
    float *g = scratch_floats((size_t)n->C);
    normshift_gain(g, n->gamma, n->shift, n->scale, n->C, n->mode);
    return g;
}

void unet_norm_forward(float *out, float *mean, float *rstd, const float *inp, const norm_layer_t *n,
                       int B, int S) {
    scratch_mark_t mark = scratch_mark();
    const float *gain = norm_gain(n);
    if (n->groups > 0)
        groupnorm_forward(out, mean, rstd, inp, gain, n->beta, B, n->C, S, n->groups, n->eps);
    else
        layernorm_forward(out, mean, rstd, inp, gain, n->beta, B * S, n->C, n->eps);
    scratch_release(mark);
}

void unet_norm_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                        const float *mean, const float *rstd, const norm_layer_t *n, int B, int S) {
    unet_norm_grads_t *ng = g ? &g->norms[n->id] : NULL;
    float *dgamma = ng ? ng->dgamma : NULL, *dbeta = ng ? ng->dbeta : NULL;
    float *dshift = ng && n->shift ? ng->dshift : NULL;
    if (!dinp && !dgamma && !dbeta && !dshift) return;
    scratch_mark_t mark = scratch_mark();
    const float *gain = norm_gain(n);
    /* with a shift, d(gain) goes through normshift_backward (and to dgamma if wanted) */
    float *dgain = dshift ? zeros((size_t)n->C) : dgamma;
    if (n->groups > 0)
        groupnorm_backward(dinp, dgain, dbeta, dout, inp, gain, mean, rstd, B, n->C, S, n->groups);
    else
        layernorm_backward(dinp, dgain, dbeta, dout, inp, gain, mean, rstd, B * S, n->C);
    if (dshift) {
        normshift_backward(dshift, dgain, n->gamma, n->shift, n->scale, n->C, n->mode);
        if (dgamma) add_into(dgamma, dgain, (size_t)n->C);
    }
    scratch_release(mark);
}

/* ---- ResnetBlock2D (diffusers resnet.py, time_embedding_norm "default") ---- */

size_t unet_resnet_acts_layout(unet_resnet_acts_t *a, float *base, const unet_resnet_t *r, int B, int S) {
    bump_t b = {base, 0};
    const size_t ni = (size_t)B * r->in * S, no = (size_t)B * r->out * S;
    const size_t s1 = (size_t)B * r->norm1.groups, s2 = (size_t)B * r->norm2.groups;
    unet_resnet_acts_t t;
    t.h1 = bump_take(&b, ni);
    t.mean1 = bump_take(&b, s1);
    t.rstd1 = bump_take(&b, s1);
    t.h2 = bump_take(&b, no);
    t.mean2 = bump_take(&b, s2);
    t.rstd2 = bump_take(&b, s2);
    t.h3 = bump_take(&b, no);
    if (a && base) *a = t;
    return b.off;
}

/* out [B, out, H, W] from x [B, in, H, W]; out must not alias x. */
void unet_resnet_forward(float *out, unet_resnet_acts_t *a, const float *x, const float *temb,
                         const unet_resnet_t *r, int B, int H, int W) {
    const int S = H * W, Co = r->out;
    const size_t ni = (size_t)B * r->in * S, no = (size_t)B * Co * S;
    scratch_mark_t mark = scratch_mark();
    const int keep = a != NULL;
    unet_resnet_acts_t tmp;
    if (!keep) { /* inference: h3 reuses h1 (dead after conv1), SiLUs run in place */
        a = &tmp;
        a->h1 = scratch_floats(ni > no ? ni : no);
        a->h2 = scratch_floats(no);
        a->h3 = a->h1;
        a->mean1 = a->rstd1 = a->mean2 = a->rstd2 = NULL;
    }
    unet_norm_forward(a->h1, a->mean1, a->rstd1, x, &r->norm1, B, S);
    float *act = keep ? scratch_floats(ni) : a->h1;   /* conv1 input, recomputed in backward */
    silu_forward(act, a->h1, ni);
    unet_conv_forward(a->h2, act, &r->conv1, B, H, W);
    if (temb) { /* h2[b, c, :] += time_emb_proj(SiLU(temb))[b, c] */
        float *tp = scratch_floats((size_t)B * Co);
        unet_linear_forward(tp, temb, &r->time_emb_proj, B);
#pragma omp parallel for schedule(static) if (no >= PAR_MIN)
        for (long bc = 0; bc < (long)B * Co; bc++) {
            float *h = a->h2 + (size_t)bc * S;
            for (int s = 0; s < S; s++) h[s] += tp[bc];
        }
    }
    unet_norm_forward(a->h3, a->mean2, a->rstd2, a->h2, &r->norm2, B, S);
    float *act2 = keep ? scratch_floats(no) : a->h3;
    silu_forward(act2, a->h3, no);
    unet_conv_forward(out, act2, &r->conv2, B, H, W);
    if (r->has_shortcut) {
        float *sc = scratch_floats(no);
        unet_conv_forward(sc, x, &r->conv_shortcut, B, H, W);
        add_into(out, sc, no);
    } else {
        add_into(out, x, no);
    }
    if (r->output_scale != 1.0f) /* (input + h) / output_scale_factor, as diffusers divides */
        for (size_t i = 0; i < no; i++) out[i] /= r->output_scale;
    scratch_release(mark);
}

void unet_resnet_backward(float *dx, float *dtemb, unet_grads_t *g, const float *dout,
                          const float *x, const float *temb, const unet_resnet_acts_t *a,
                          const unet_resnet_t *r, int B, int H, int W) {
    const int S = H * W, Co = r->out;
    const size_t ni = (size_t)B * r->in * S, no = (size_t)B * Co * S;
    scratch_mark_t mark = scratch_mark();
    const float *dy = dout;
    if (r->output_scale != 1.0f) {
        float *t = scratch_floats(no);
        for (size_t i = 0; i < no; i++) t[i] = dout[i] / r->output_scale;
        dy = t;
    }
    if (r->has_shortcut) unet_conv_backward(dx, g, dy, x, &r->conv_shortcut, B, H, W);
    else if (dx) add_into(dx, dy, no);
    /* conv2 on SiLU(h3) */
    float *act = scratch_floats(no);
    silu_forward(act, a->h3, no);
    float *dact = zeros(no);
    unet_conv_backward(dact, g, dy, act, &r->conv2, B, H, W);
    float *dh3 = zeros(no);
    silu_backward(dh3, dact, a->h3, no);
    float *dh2 = zeros(no);
    unet_norm_backward(dh2, g, dh3, a->h2, a->mean2, a->rstd2, &r->norm2, B, S);
    if (temb) { /* d tp[b, c] = sum_s dh2[b, c, s] */
        float *dtp = scratch_floats((size_t)B * Co);
        for (long bc = 0; bc < (long)B * Co; bc++) {
            const float *d = dh2 + (size_t)bc * S;
            double acc = 0;
            for (int s = 0; s < S; s++) acc += d[s];
            dtp[bc] = (float)acc;
        }
        unet_linear_backward(dtemb, g, dtp, temb, &r->time_emb_proj, B);
    }
    /* conv1 on SiLU(h1) */
    float *act1 = scratch_floats(ni);
    silu_forward(act1, a->h1, ni);
    float *dact1 = zeros(ni);
    unet_conv_backward(dact1, g, dh2, act1, &r->conv1, B, H, W);
    float *dh1 = zeros(ni);
    silu_backward(dh1, dact1, a->h1, ni);
    unet_norm_backward(dx, g, dh1, x, a->mean1, a->rstd1, &r->norm1, B, S);
    scratch_release(mark);
}

