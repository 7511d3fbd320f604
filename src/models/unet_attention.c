/* Attention, BasicTransformerBlock (with its GEGLU FeedForward) and Transformer2DModel of the
 * UNet (unet.h), forward and backward, and their training-activation layouts. Architecture
 * facts follow diffusers: attention_processor.py (Attention: heads split the channels in order,
 * scale head_dim^-0.5), attention.py (BasicTransformerBlock, FeedForward, GEGLU),
 * transformers/transformer_2d.py (Transformer2DModel, continuous input). */
#include <math.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "models/unet.h"
#include "models/unet_internal.h"
#include "models/unmix.h"
#include "ops/ops.h"

/* Token rows of the feed-forward per chunk in inference: the [rows, 8D] GEGLU input is the
 * largest temporary of a transformer block (84 MB for SD 1.5 at 64x64, batch 2, unchunked). */
#define FF_CHUNK 2048

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

/* ---- Attention (attn1: self, attn2: cross) ---- */

void unet_attention_forward(float *out, const unet_attention_acts_t *a, const float *xq, const float *xkv,
                            const unet_attention_t *at, struct unmix_site *unmix, int B, int S, int Tk,
                            int heads, int head_dim) {
    const int N = B * S;
    const float scale = 1.0f / sqrtf((float)head_dim);
    unet_linear_forward(a->q, xq, &at->to_q, N);
    unet_linear_forward(a->k, xkv, &at->to_k, B * Tk);
    unet_linear_forward(a->v, xkv, &at->to_v, B * Tk);
    attention_forward(a->ao, a->lse, a->q, a->k, a->v, B, S, Tk, heads, head_dim, scale, 0);
    if (unmix) unmix_site_forward(unmix, a->q, a->k, a->lse, B, S, Tk, heads, head_dim, scale);
    unet_linear_forward(out, a->ao, &at->to_out, N);
}

void unet_attention_backward(float *dxq, float *dxkv, unet_grads_t *g, const float *dout, const float *xq,
                             const float *xkv, const unet_attention_acts_t *a, const unet_attention_t *at,
                             const struct unmix_site *unmix, int B, int S, int Tk, int heads, int head_dim) {
    const int N = B * S, D = heads * head_dim;
    const float scale = 1.0f / sqrtf((float)head_dim);
    const size_t nd = (size_t)N * D, kd = (size_t)B * Tk * D;
    scratch_mark_t mark = scratch_mark();
    float *dao = zeros(nd), *dq = zeros(nd), *dk = zeros(kd), *dv = zeros(kd);
    unet_linear_backward(dao, g, dout, a->ao, &at->to_out, N);
    attention_backward(dq, dk, dv, dao, a->q, a->k, a->v, a->ao, a->lse, B, S, Tk, heads, head_dim, scale, 0);
    if (unmix) unmix_site_backward(dq, dk, unmix, a->q, a->k, a->lse, B, S, Tk, heads, head_dim, scale);
    unet_linear_backward(dxq, g, dq, xq, &at->to_q, N);
    unet_linear_backward(dxkv, g, dk, xkv, &at->to_k, B * Tk);
    unet_linear_backward(dxkv, g, dv, xkv, &at->to_v, B * Tk);
    scratch_release(mark);
}

/* ---- FeedForward (ff.net.0 = GEGLU with its proj, ff.net.2) ---- */

/* out [N, D] = ff.net.2(GEGLU(ff.net.0.proj(x))) for x [N, D], by chunks of ba->ff_rows rows
 * through ba->gg (in training ba->ff_rows = N: gg keeps the whole [N, 8D] for backward). */
static void feed_forward_forward(float *out, const unet_tblock_acts_t *ba, const float *x, const unet_tblock_t *tb,
                                 int N, int D) {
    scratch_mark_t mark = scratch_mark();
    const int rows = ba->ff_rows < N ? ba->ff_rows : N;
    float *gout = scratch_floats((size_t)rows * 4 * D);
    for (int r0 = 0; r0 < N; r0 += rows) {
        const int n = N - r0 < rows ? N - r0 : rows;
        unet_linear_forward(ba->gg, x + (size_t)r0 * D, &tb->ff1, n);
        geglu_forward(gout, ba->gg, n, 4 * D);
        unet_linear_forward(out + (size_t)r0 * D, gout, &tb->ff2, n);
    }
    scratch_release(mark);
}

/* dx [N, D] += dL/dx given dout [N, D]; its [N, 4D] and [N, 8D] temporaries are released on return. */
static void feed_forward_backward(float *dx, unet_grads_t *g, const float *dout, const float *x,
                                  const unet_tblock_acts_t *ba, const unet_tblock_t *tb, int N, int D) {
    const size_t nd = (size_t)N * D;
    scratch_mark_t mark = scratch_mark();
    float *gout = scratch_floats(nd * 4);
    geglu_forward(gout, ba->gg, N, 4 * D);
    float *dgout = zeros(nd * 4);
    unet_linear_backward(dgout, g, dout, gout, &tb->ff2, N);
    float *dgg = zeros(nd * 8);
    geglu_backward(dgg, dgout, ba->gg, N, 4 * D);
    unet_linear_backward(dx, g, dgg, x, &tb->ff1, N);
    scratch_release(mark);
}

/* ---- BasicTransformerBlock ---- */

static void attention_acts_layout(unet_attention_acts_t *a, bump_t *b, size_t nd, size_t kd, size_t lse) {
    a->q = bump_take(b, nd);
    a->k = bump_take(b, kd);
    a->v = bump_take(b, kd);
    a->ao = bump_take(b, nd);
    a->lse = bump_take(b, lse);
}

static void tblock_layout(unet_tblock_acts_t *t, bump_t *b, const unet_transformer_t *tr, int B, int S, int T) {
    const size_t N = (size_t)B * S, D = tr->D, nd = N * D, lse = (size_t)B * tr->heads * S;
    t->ln1 = bump_take(b, nd);
    t->ln1_mean = bump_take(b, N);
    t->ln1_rstd = bump_take(b, N);
    attention_acts_layout(&t->attn1, b, nd, nd, lse);
    t->x1 = bump_take(b, nd);
    t->ln2 = bump_take(b, nd);
    t->ln2_mean = bump_take(b, N);
    t->ln2_rstd = bump_take(b, N);
    attention_acts_layout(&t->attn2, b, nd, (size_t)B * T * D, lse);
    t->x2 = bump_take(b, nd);
    t->ln3 = bump_take(b, nd);
    t->ln3_mean = bump_take(b, N);
    t->ln3_rstd = bump_take(b, N);
    t->gg = bump_take(b, N * 8 * D);
    t->x3 = bump_take(b, nd);
    t->ff_rows = (int)N;
}

/* ba->x3 [N, D] = block(xin [N, D]), N = B*S tokens, ctx [B, T, Cc]. In inference ba's tensors
 * alias (x1 = x2 = x3 = xin, one LayerNorm buffer, ...): each is written only after its
 * previous use. */
static void basic_transformer_block_forward(unet_tblock_acts_t *ba, const float *xin, const float *ctx,
                                            const unet_tblock_t *tb, const unet_transformer_t *t, int B, int S,
                                            int T) {
    const int N = B * S, D = t->D;
    const size_t nd = (size_t)N * D;
    scratch_mark_t mark = scratch_mark();
    float *tmp = scratch_floats(nd);
    /* x1 = x + attn1(LN1 x) */
    unet_norm_forward(ba->ln1, ba->ln1_mean, ba->ln1_rstd, xin, &tb->norm1, N, 1);
    unet_attention_forward(tmp, &ba->attn1, ba->ln1, ba->ln1, &tb->attn1, NULL, B, S, S, t->heads, t->head_dim);
    add3(ba->x1, xin, tmp, nd);
    /* x2 = x1 + attn2(LN2 x1, ctx) */
    unet_norm_forward(ba->ln2, ba->ln2_mean, ba->ln2_rstd, ba->x1, &tb->norm2, N, 1);
    unet_attention_forward(tmp, &ba->attn2, ba->ln2, ctx, &tb->attn2, tb->unmix, B, S, T, t->heads, t->head_dim);
    add3(ba->x2, ba->x1, tmp, nd);
    /* x3 = x2 + ff(LN3 x2) */
    unet_norm_forward(ba->ln3, ba->ln3_mean, ba->ln3_rstd, ba->x2, &tb->norm3, N, 1);
    feed_forward_forward(tmp, ba, ba->ln3, tb, N, D);
    add3(ba->x3, ba->x2, tmp, nd);
    scratch_release(mark);
}

/* dX [N, D]: on entry dL/d(block output), on return dL/d(block input); dctx [B, T, Cc] +=. */
static void basic_transformer_block_backward(float *dX, float *dctx, unet_grads_t *g, const float *xin,
                                             const float *ctx, const unet_tblock_acts_t *ba, const unet_tblock_t *tb,
                                             const unet_transformer_t *t, int B, int S, int T) {
    const int N = B * S, D = t->D;
    const size_t nd = (size_t)N * D;
    scratch_mark_t mark = scratch_mark();
    /* the residuals pass dX through; each branch adds its input gradient via its LayerNorm */
    float *dln = zeros(nd);
    feed_forward_backward(dln, g, dX, ba->ln3, ba, tb, N, D);
    unet_norm_backward(dX, g, dln, ba->x2, ba->ln3_mean, ba->ln3_rstd, &tb->norm3, N, 1);
    memset(dln, 0, nd * sizeof(float));
    unet_attention_backward(dln, dctx, g, dX, ba->ln2, ctx, &ba->attn2, &tb->attn2, tb->unmix, B, S, T, t->heads,
                            t->head_dim);
    unet_norm_backward(dX, g, dln, ba->x1, ba->ln2_mean, ba->ln2_rstd, &tb->norm2, N, 1);
    memset(dln, 0, nd * sizeof(float));
    unet_attention_backward(dln, dln, g, dX, ba->ln1, ba->ln1, &ba->attn1, &tb->attn1, NULL, B, S, S, t->heads,
                            t->head_dim);
    unet_norm_backward(dX, g, dln, xin, ba->ln1_mean, ba->ln1_rstd, &tb->norm1, N, 1);
    scratch_release(mark);
}

/* ---- Transformer2DModel ---- */

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
        sh.attn1.q = sh.attn2.q = scratch_floats(nd);
        sh.attn1.k = scratch_floats(nd);
        sh.attn1.v = scratch_floats(nd);
        sh.attn1.ao = sh.attn2.ao = scratch_floats(nd);
        sh.attn1.lse = sh.attn2.lse = scratch_floats((size_t)B * t->heads * S);
        sh.attn2.k = scratch_floats((size_t)B * T * D);
        sh.attn2.v = scratch_floats((size_t)B * T * D);
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
        basic_transformer_block_forward(&a->blocks[l], h, ctx, &t->blocks[l], t, B, S, T);
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
        basic_transformer_block_backward(dX, dctx, g, l ? a->blocks[l - 1].x3 : a->x0, ctx, &a->blocks[l],
                                         &t->blocks[l], t, B, S, T);
    float *dtok = zeros((size_t)N * C);
    unet_linear_backward(dtok, g, dX, a->tok, &t->proj_in, N);
    from_tokens(dp, dtok, NULL, B, C, S);   /* dL/d GroupNorm output, channel-major */
    unet_norm_backward(dx, g, dp, x, a->gn_mean, a->gn_rstd, &t->norm, B, S);
    scratch_release(mark);
}
