/* Building blocks of the UNet (unet.h): layer and norm wrappers over dense or spectral weights
 * and shifted norm gains, ResnetBlock2D and Transformer2DModel (with its BasicTransformerBlocks)
 * forward and backward, and their training-activation layouts. */
#include <math.h>
#include <string.h>

#include "base/bump.h"
#include "base/error.h"
#include "base/scratch.h"
#include "models/unet.h"
#include "models/unmix.h"
#include "ops/ops.h"

/* Below this many elements the OpenMP fork/join costs more than the work. */
#define PAR_MIN 32768
/* Token rows of the feed-forward per chunk in inference: the [rows, 8D] GEGLU input is the
 * largest temporary of a transformer block (84 MB for SD 1.5 at 64x64, batch 2, unchunked). */
#define FF_CHUNK 2048

/* ---- small helpers ---- */

static float *zeros(size_t n) {
    float *p = scratch_floats(n);
    memset(p, 0, n * sizeof(float));
    return p;
}

/* y += x */
static void add_into(float *y, const float *x, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* y = a + b; y may alias a (in-place residual add in inference). */
static void add3(float *y, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

/* tok[b, s, c] = img[b, c, s]: channel-major image to tokens, in 32 x 32 tiles. */
static void to_tokens(float *tok, const float *img, int B, int C, int S) {
    const int tc = (C + 31) / 32, ts = (S + 31) / 32;
    const long ntask = (long)B * tc * ts;
#pragma omp parallel for schedule(static) if ((size_t)B * C * S >= PAR_MIN)
    for (long t = 0; t < ntask; t++) {
        const int b = (int)(t / ((long)tc * ts)), c0 = (int)(t / ts % tc) * 32, s0 = (int)(t % ts) * 32;
        const float *x = img + (size_t)b * C * S;
        float *y = tok + (size_t)b * C * S;
        const int c1 = c0 + 32 < C ? c0 + 32 : C, s1 = s0 + 32 < S ? s0 + 32 : S;
        for (int s = s0; s < s1; s++)
            for (int c = c0; c < c1; c++) y[(size_t)s * C + c] = x[(size_t)c * S + s];
    }
}

/* img[b, c, s] = tok[b, s, c] (+ res[b, c, s] when res is not NULL). */
static void from_tokens(float *img, const float *tok, const float *res, int B, int C, int S) {
    const int tc = (C + 31) / 32, ts = (S + 31) / 32;
    const long ntask = (long)B * tc * ts;
#pragma omp parallel for schedule(static) if ((size_t)B * C * S >= PAR_MIN)
    for (long t = 0; t < ntask; t++) {
        const int b = (int)(t / ((long)tc * ts)), c0 = (int)(t / ts % tc) * 32, s0 = (int)(t % ts) * 32;
        const float *x = tok + (size_t)b * C * S;
        const float *r = res ? res + (size_t)b * C * S : NULL;
        float *y = img + (size_t)b * C * S;
        const int c1 = c0 + 32 < C ? c0 + 32 : C, s1 = s0 + 32 < S ? s0 + 32 : S;
        for (int c = c0; c < c1; c++)
            for (int s = s0; s < s1; s++)
                y[(size_t)c * S + s] = x[(size_t)s * C + c] + (r ? r[(size_t)c * S + s] : 0.0f);
    }
}

/* ---- layers and norms ---- */

static unet_layer_grads_t *lgrad(unet_grads_t *g, const unet_layer_t *l) {
    return g ? &g->layers[l->id] : NULL;
}

void unet_linear_forward(float *out, const float *inp, const unet_layer_t *l, int N) {
    weight_linear_forward(out, inp, &l->w, l->bias, N);
}

void unet_linear_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                          const unet_layer_t *l, int N) {
    unet_layer_grads_t *lg = lgrad(g, l);
    float *dw = lg ? lg->dw : NULL, *db = lg && l->bias ? lg->dbias : NULL;
    if (!dinp && !dw && !db) return;
    weight_linear_backward(dinp, dw, db, dout, inp, &l->w, N);
}

static conv2d_shape_t conv_shape(const unet_layer_t *l, int B, int H, int W) {
    conv2d_shape_t s = {.B = B, .IC = l->in, .H = H, .W = W, .OC = l->out, .KH = l->k, .KW = l->k,
                        .stride = l->stride};
    if (l->pad >= 0) {
        s.pad[0] = s.pad[1] = s.pad[2] = s.pad[3] = l->pad;
    } else { /* Downsample2D with padding 0: F.pad (0, 1, 0, 1), then an unpadded conv */
        s.pad[0] = 0, s.pad[1] = 1, s.pad[2] = 0, s.pad[3] = 1;
    }
    return s;
}

void unet_conv_forward(float *out, const float *inp, const unet_layer_t *l, int B, int H, int W) {
    const conv2d_shape_t s = conv_shape(l, B, H, W);
    weight_conv2d_forward(out, inp, &l->w, l->bias, &s);
}

void unet_conv_backward(float *dinp, unet_grads_t *g, const float *dout, const float *inp,
                        const unet_layer_t *l, int B, int H, int W) {
    unet_layer_grads_t *lg = lgrad(g, l);
    float *dw = lg ? lg->dw : NULL, *db = lg && l->bias ? lg->dbias : NULL;
    if (!dinp && !dw && !db) return;
    const conv2d_shape_t s = conv_shape(l, B, H, W);
    weight_conv2d_backward(dinp, dw, db, dout, inp, &l->w, &s);
}

/* The gain a norm applies: gamma itself, or the shifted gain in scratch memory. */
static const float *norm_gain(const unet_norm_t *n) {
    if (!n->shift) return n->gamma;
    float *g = scratch_floats((size_t)n->C);
    normshift_gain(g, n->gamma, n->shift, n->scale, n->C, n->mode);
    return g;
}

void unet_norm_forward(float *out, float *mean, float *rstd, const float *inp, const unet_norm_t *n,
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
                        const float *mean, const float *rstd, const unet_norm_t *n, int B, int S) {
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

/* ---- Transformer2DModel / BasicTransformerBlock (transformer_2d.py, attention.py,
 * attention_processor.py: heads split the channels in order, scale head_dim^-0.5) ---- */

static void tblock_layout(unet_tblock_acts_t *t, bump_t *b, const unet_transformer_t *tr, int B, int S, int T) {
    const size_t N = (size_t)B * S, D = tr->D, nd = N * D, lse = (size_t)B * tr->heads * S;
    t->ln1 = bump_take(b, nd);
    t->ln1_mean = bump_take(b, N);
    t->ln1_rstd = bump_take(b, N);
    t->q1 = bump_take(b, nd);
    t->k1 = bump_take(b, nd);
    t->v1 = bump_take(b, nd);
    t->ao1 = bump_take(b, nd);
    t->lse1 = bump_take(b, lse);
    t->x1 = bump_take(b, nd);
    t->ln2 = bump_take(b, nd);
    t->ln2_mean = bump_take(b, N);
    t->ln2_rstd = bump_take(b, N);
    t->q2 = bump_take(b, nd);
    t->k2 = bump_take(b, (size_t)B * T * D);
    t->v2 = bump_take(b, (size_t)B * T * D);
    t->ao2 = bump_take(b, nd);
    t->lse2 = bump_take(b, lse);
    t->x2 = bump_take(b, nd);
    t->ln3 = bump_take(b, nd);
    t->ln3_mean = bump_take(b, N);
    t->ln3_rstd = bump_take(b, N);
    t->gg = bump_take(b, N * 8 * D);
    t->x3 = bump_take(b, nd);
    t->ff_rows = (int)N;
}

size_t unet_transformer_acts_layout(unet_transformer_acts_t *a, float *base, const unet_transformer_t *t,
                                    int B, int S, int T) {
    SD_CHECK(t->n_blocks <= UNET_MAX_TBLOCKS, "%d transformer blocks > %d", t->n_blocks, UNET_MAX_TBLOCKS);
    bump_t b = {base, 0};
    unet_transformer_acts_t tmp;
    unet_transformer_acts_t *p = (a && base) ? a : &tmp;
    const size_t N = (size_t)B * S;
    p->gn_mean = bump_take(&b, (size_t)B * t->norm.groups);
    p->gn_rstd = bump_take(&b, (size_t)B * t->norm.groups);
    p->tok = bump_take(&b, N * t->C);
    p->x0 = bump_take(&b, N * t->D);
    for (int l = 0; l < t->n_blocks; l++) tblock_layout(&p->blocks[l], &b, t, B, S, T);
    return b.off;
}

/* One block: xin [N, D] -> ba->x3. In inference ba's tensors alias (x1 = x2 = x3 = xin, one
 * LayerNorm buffer, ...): each is written only after its previous use. */
static void tblock_forward(unet_tblock_acts_t *ba, const float *xin, const float *ctx,
                           const unet_tblock_t *tb, const unet_transformer_t *t, int B, int S, int T) {
    const int N = B * S, D = t->D, H = t->heads, hd = t->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t nd = (size_t)N * D;
    scratch_mark_t mark = scratch_mark();
    float *tmp = scratch_floats(nd);
    /* x1 = x + attn1(LN1 x) */
    unet_norm_forward(ba->ln1, ba->ln1_mean, ba->ln1_rstd, xin, &tb->norm1, N, 1);
    unet_linear_forward(ba->q1, ba->ln1, &tb->q1, N);
    unet_linear_forward(ba->k1, ba->ln1, &tb->k1, N);
    unet_linear_forward(ba->v1, ba->ln1, &tb->v1, N);
    attention_forward(ba->ao1, ba->lse1, ba->q1, ba->k1, ba->v1, B, S, S, H, hd, scale, 0);
    unet_linear_forward(tmp, ba->ao1, &tb->o1, N);
    add3(ba->x1, xin, tmp, nd);
    /* x2 = x1 + attn2(LN2 x1, ctx) */
    unet_norm_forward(ba->ln2, ba->ln2_mean, ba->ln2_rstd, ba->x1, &tb->norm2, N, 1);
    unet_linear_forward(ba->q2, ba->ln2, &tb->q2, N);
    unet_linear_forward(ba->k2, ctx, &tb->k2, B * T);
    unet_linear_forward(ba->v2, ctx, &tb->v2, B * T);
    attention_forward(ba->ao2, ba->lse2, ba->q2, ba->k2, ba->v2, B, S, T, H, hd, scale, 0);
    if (tb->unmix) unmix_site_forward(tb->unmix, ba->q2, ba->k2, ba->lse2, B, S, T, H, hd, scale);
    unet_linear_forward(tmp, ba->ao2, &tb->o2, N);
    add3(ba->x2, ba->x1, tmp, nd);
    /* x3 = x2 + ff(LN3 x2), ff = Linear(4D -> D) . GEGLU . Linear(D -> 8D), by row chunks */
    unet_norm_forward(ba->ln3, ba->ln3_mean, ba->ln3_rstd, ba->x2, &tb->norm3, N, 1);
    const int rows = ba->ff_rows < N ? ba->ff_rows : N;
    float *gout = scratch_floats((size_t)rows * 4 * D);
    for (int r0 = 0; r0 < N; r0 += rows) {
        const int n = N - r0 < rows ? N - r0 : rows;
        unet_linear_forward(ba->gg, ba->ln3 + (size_t)r0 * D, &tb->ff1, n);
        geglu_forward(gout, ba->gg, n, 4 * D);
        unet_linear_forward(tmp + (size_t)r0 * D, gout, &tb->ff2, n);
    }
    add3(ba->x3, ba->x2, tmp, nd);
    scratch_release(mark);
}

/* dX [N, D]: on entry dL/d(block output), on return dL/d(block input). */
static void tblock_backward(float *dX, float *dctx, unet_grads_t *g, const float *xin, const float *ctx,
                            const unet_tblock_acts_t *ba, const unet_tblock_t *tb,
                            const unet_transformer_t *t, int B, int S, int T) {
    const int N = B * S, D = t->D, H = t->heads, hd = t->head_dim;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t nd = (size_t)N * D, td = (size_t)B * T * D;
    scratch_mark_t mark = scratch_mark();
    /* feed-forward (its [N, 8D] temporaries are released before the attention part) */
    float *gout = scratch_floats(nd * 4);
    geglu_forward(gout, ba->gg, N, 4 * D);
    float *dgout = zeros(nd * 4);
    unet_linear_backward(dgout, g, dX, gout, &tb->ff2, N);
    float *dgg = zeros(nd * 8);
    geglu_backward(dgg, dgout, ba->gg, N, 4 * D);
    float *dln = zeros(nd);
    unet_linear_backward(dln, g, dgg, ba->ln3, &tb->ff1, N);
    unet_norm_backward(dX, g, dln, ba->x2, ba->ln3_mean, ba->ln3_rstd, &tb->norm3, N, 1);
    scratch_release(mark);
    /* cross-attention: q from LN2 x1, k / v from the context */
    float *dao = zeros(nd), *dq = zeros(nd);
    float *dk = zeros(nd > td ? nd : td), *dv = zeros(nd > td ? nd : td);
    dln = zeros(nd);
    unet_linear_backward(dao, g, dX, ba->ao2, &tb->o2, N);
    attention_backward(dq, dk, dv, dao, ba->q2, ba->k2, ba->v2, ba->ao2, ba->lse2, B, S, T, H, hd, scale, 0);
    if (tb->unmix) unmix_site_backward(dq, dk, tb->unmix, ba->q2, ba->k2, ba->lse2, B, S, T, H, hd, scale);
    unet_linear_backward(dln, g, dq, ba->ln2, &tb->q2, N);
    unet_linear_backward(dctx, g, dk, ctx, &tb->k2, B * T);
    unet_linear_backward(dctx, g, dv, ctx, &tb->v2, B * T);
    unet_norm_backward(dX, g, dln, ba->x1, ba->ln2_mean, ba->ln2_rstd, &tb->norm2, N, 1);
    /* self-attention */
    memset(dao, 0, nd * sizeof(float));
    memset(dq, 0, nd * sizeof(float));
    memset(dk, 0, nd * sizeof(float));
    memset(dv, 0, nd * sizeof(float));
    memset(dln, 0, nd * sizeof(float));
    unet_linear_backward(dao, g, dX, ba->ao1, &tb->o1, N);
    attention_backward(dq, dk, dv, dao, ba->q1, ba->k1, ba->v1, ba->ao1, ba->lse1, B, S, S, H, hd, scale, 0);
    unet_linear_backward(dln, g, dq, ba->ln1, &tb->q1, N);
    unet_linear_backward(dln, g, dk, ba->ln1, &tb->k1, N);
    unet_linear_backward(dln, g, dv, ba->ln1, &tb->v1, N);
    unet_norm_backward(dX, g, dln, xin, ba->ln1_mean, ba->ln1_rstd, &tb->norm1, N, 1);
    scratch_release(mark);
}

/* out [B, C, S] = x + proj_out(blocks(proj_in(GN(x)) as tokens)); out must not alias x. */
void unet_transformer_forward(float *out, unet_transformer_acts_t *a, const float *x,
                              const float *ctx, const unet_transformer_t *t, int B, int S, int T) {
    const int C = t->C, D = t->D, N = B * S;
    const size_t nd = (size_t)N * D;
    scratch_mark_t mark = scratch_mark();
    unet_transformer_acts_t inf;
    if (!a) { /* inference: one set of block buffers shared by all blocks, residual in place */
        a = &inf;
        a->gn_mean = a->gn_rstd = NULL;
        a->tok = scratch_floats((size_t)N * C);
        a->x0 = scratch_floats(nd);
        unet_tblock_acts_t sh;
        sh.ln1 = sh.ln2 = sh.ln3 = scratch_floats(nd);
        sh.ln1_mean = sh.ln1_rstd = sh.ln2_mean = sh.ln2_rstd = sh.ln3_mean = sh.ln3_rstd = NULL;
        sh.q1 = sh.q2 = scratch_floats(nd);
        sh.k1 = scratch_floats(nd);
        sh.v1 = scratch_floats(nd);
        sh.ao1 = sh.ao2 = scratch_floats(nd);
        sh.lse1 = sh.lse2 = scratch_floats((size_t)B * t->heads * S);
        sh.k2 = scratch_floats((size_t)B * T * D);
        sh.v2 = scratch_floats((size_t)B * T * D);
        sh.ff_rows = N < FF_CHUNK ? N : FF_CHUNK;
        sh.gg = scratch_floats((size_t)sh.ff_rows * 8 * D);
        sh.x1 = sh.x2 = sh.x3 = a->x0;
        for (int l = 0; l < t->n_blocks; l++) a->blocks[l] = sh;
    }
    float *gn = scratch_floats((size_t)N * C);
    unet_norm_forward(gn, a->gn_mean, a->gn_rstd, x, &t->norm, B, S);
    to_tokens(a->tok, gn, B, C, S);
    unet_linear_forward(a->x0, a->tok, &t->proj_in, N);
    const float *h = a->x0;
    for (int l = 0; l < t->n_blocks; l++) {
        tblock_forward(&a->blocks[l], h, ctx, &t->blocks[l], t, B, S, T);
        h = a->blocks[l].x3;
    }
    float *p = gn;   /* proj_out output [N, C] (the GroupNorm output is dead) */
    unet_linear_forward(p, h, &t->proj_out, N);
    from_tokens(out, p, x, B, C, S);
    scratch_release(mark);
}

void unet_transformer_backward(float *dx, float *dctx, unet_grads_t *g, const float *dout,
                               const float *x, const float *ctx, const unet_transformer_acts_t *a,
                               const unet_transformer_t *t, int B, int S, int T) {
    const int C = t->C, D = t->D, N = B * S;
    scratch_mark_t mark = scratch_mark();
    if (dx) add_into(dx, dout, (size_t)N * C);   /* the residual */
    float *dp = scratch_floats((size_t)N * C);
    to_tokens(dp, dout, B, C, S);
    const int L = t->n_blocks;
    float *dX = zeros((size_t)N * D);
    unet_linear_backward(dX, g, dp, L ? a->blocks[L - 1].x3 : a->x0, &t->proj_out, N);
    for (int l = L - 1; l >= 0; l--)
        tblock_backward(dX, dctx, g, l ? a->blocks[l - 1].x3 : a->x0, ctx, &a->blocks[l], &t->blocks[l],
                        t, B, S, T);
    float *dtok = zeros((size_t)N * C);
    unet_linear_backward(dtok, g, dX, a->tok, &t->proj_in, N);
    from_tokens(dp, dtok, NULL, B, C, S);   /* dL/d GroupNorm output, channel-major */
    unet_norm_backward(dx, g, dp, x, a->gn_mean, a->gn_rstd, &t->norm, B, S);
    scratch_release(mark);
}
