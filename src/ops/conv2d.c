/* 2-D convolution (NCHW), forward and backward, through im2col + GEMM per image.
 * A 1x1 kernel with stride 1 and no padding skips im2col: the image already is the column
 * matrix. Columns are built once per image in scratch memory. */
#include <cblas.h>
#include <string.h>

#include "base/scratch.h"
#include "ops/gemm.h"
#include "ops/ops.h"

int conv2d_out_h(const conv2d_shape_t *s) { return (s->H + s->pad[0] + s->pad[1] - s->KH) / s->stride + 1; }
int conv2d_out_w(const conv2d_shape_t *s) { return (s->W + s->pad[2] + s->pad[3] - s->KW) / s->stride + 1; }

int conv2d_is_pointwise(const conv2d_shape_t *s) {
    return s->KH == 1 && s->KW == 1 && s->stride == 1 &&
           s->pad[0] == 0 && s->pad[1] == 0 && s->pad[2] == 0 && s->pad[3] == 0;
}

/* For stride 1, output columns ox in [*lo, *hi) read input column ox + off, off = kx - left pad,
 * inside the image row of width W; the rest fall into the padding. */
static void stride1_run(int off, int W, int OW, int *lo, int *hi) {
    *lo = off < 0 ? -off : 0;
    *hi = W - off < OW ? W - off : OW;
    if (*hi < *lo) *hi = *lo;
}

/* col[(c*KH + ky)*KW + kx, oy*OW + ox] = img[c, oy*stride + ky - top, ox*stride + kx - left] or 0. */
void im2col(float *col, const float *img, const conv2d_shape_t *s) {
    const int OH = conv2d_out_h(s), OW = conv2d_out_w(s), K = s->IC * s->KH * s->KW;
#pragma omp parallel for schedule(static) if ((long)K * OH * OW > 65536)
    for (int r = 0; r < K; r++) {
        const int c = r / (s->KH * s->KW), ky = (r / s->KW) % s->KH, kx = r % s->KW;
        const float *plane = img + (size_t)c * s->H * s->W;
        float *dst = col + (size_t)r * OH * OW;
        for (int oy = 0; oy < OH; oy++) {
            const int iy = oy * s->stride + ky - s->pad[0];
            float *row = dst + (size_t)oy * OW;
            if (iy < 0 || iy >= s->H) {
                memset(row, 0, sizeof(float) * OW);
                continue;
            }
            const float *src = plane + (size_t)iy * s->W;
            if (s->stride == 1) {
                /* contiguous run: ox in [lo, hi) maps inside the image */
                const int off = kx - s->pad[2];
                int lo, hi;
                stride1_run(off, s->W, OW, &lo, &hi);
                for (int ox = 0; ox < lo; ox++) row[ox] = 0.0f;
                if (hi > lo) memcpy(row + lo, src + lo + off, sizeof(float) * (hi - lo));
                for (int ox = hi; ox < OW; ox++) row[ox] = 0.0f;
            } else {
                for (int ox = 0; ox < OW; ox++) {
                    const int ix = ox * s->stride + kx - s->pad[2];
                    row[ox] = (ix >= 0 && ix < s->W) ? src[ix] : 0.0f;
                }
            }
        }
    }
}

/* Adjoint of im2col. Parallel over input channels: each channel's KH*KW column rows only
 * touch that channel's plane, so there are no write races and the sum order is fixed. */
void col2im_add(float *dimg, const float *col, const conv2d_shape_t *s) {
    const int OH = conv2d_out_h(s), OW = conv2d_out_w(s);
#pragma omp parallel for schedule(static) if ((long)s->IC * s->KH * s->KW * OH * OW > 65536)
    for (int c = 0; c < s->IC; c++) {
        float *plane = dimg + (size_t)c * s->H * s->W;
        for (int ky = 0; ky < s->KH; ky++)
            for (int kx = 0; kx < s->KW; kx++) {
                const float *src = col + ((size_t)(c * s->KH + ky) * s->KW + kx) * OH * OW;
                for (int oy = 0; oy < OH; oy++) {
                    const int iy = oy * s->stride + ky - s->pad[0];
                    if (iy < 0 || iy >= s->H) continue;
                    float *row = plane + (size_t)iy * s->W;
                    const float *srow = src + (size_t)oy * OW;
                    if (s->stride == 1) {
                        /* the contiguous run of im2col: a branch-free loop the compiler
                         * vectorises (same sums, same order) */
                        const int off = kx - s->pad[2];
                        int lo, hi;
                        stride1_run(off, s->W, OW, &lo, &hi);
                        for (int ox = lo; ox < hi; ox++) row[ox + off] += srow[ox];
                        continue;
                    }
                    for (int ox = 0; ox < OW; ox++) {
                        const int ix = ox * s->stride + kx - s->pad[2];
                        if (ix >= 0 && ix < s->W) row[ix] += srow[ox];
                    }
                }
            }
    }
}

void conv2d_image_gemm(float *out, int M, const float *A, const float *img, const conv2d_shape_t *s, float beta) {
    const int P = conv2d_out_h(s) * conv2d_out_w(s), K = s->IC * s->KH * s->KW;
    if (conv2d_is_pointwise(s)) {
        sd_gemm(CblasNoTrans, CblasNoTrans, M, P, K, 1.0f, A, K, img, P, beta, out, P);
    } else if (sd_gemm_uses_bf16(M, P, K)) {   /* no fp32 column matrix */
        gemm_bf16_im2col(M, 1.0f, A, K, img, s, beta, out);
    } else {
        scratch_mark_t mark = scratch_mark();
        float *col = scratch_floats((size_t)K * P);
        im2col(col, img, s);
        sd_gemm(CblasNoTrans, CblasNoTrans, M, P, K, 1.0f, A, K, col, P, beta, out, P);
        scratch_release(mark);
    }
}

void conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                    const conv2d_shape_t *s) {
    if (conv2d_winograd_pays(s)) {
        conv2d_winograd_forward(out, inp, weight, NULL, bias, s);
        return;
    }
    const int P = conv2d_out_h(s) * conv2d_out_w(s);
    for (int b = 0; b < s->B; b++) {
        float *y = out + (size_t)b * s->OC * P;
        if (bias)
            for (int o = 0; o < s->OC; o++)
                for (int p = 0; p < P; p++) y[(size_t)o * P + p] = bias[o];
        /* y[OC, P] (+)= weight[OC, K] @ col[K, P] */
        conv2d_image_gemm(y, s->OC, weight, inp + (size_t)b * s->IC * s->H * s->W, s, bias ? 1.0f : 0.0f);
    }
}

/* The input gradient of a stride-1 convolution is itself a stride-1 convolution: dout
 * [OC, OH, OW] correlated with the kernel flipped in space and transposed in channels
 * (wt[IC, OC, KH, KW]), padded by K-1-pad on each side so that the output is [IC, H, W]
 * again. Taken in bf16 mode only, where the convolution packs its columns straight from
 * the image (gemm_bf16_im2col) and so skips the fp32 column-gradient matrix and col2im's
 * scatter; fp32 mode keeps the GEMM + col2im path and its exact sums. */
static int input_grad_as_conv(const conv2d_shape_t *s, conv2d_shape_t *t) {
    if (s->stride != 1 || s->pad[0] > s->KH - 1 || s->pad[1] > s->KH - 1 ||
        s->pad[2] > s->KW - 1 || s->pad[3] > s->KW - 1)
        return 0;
    *t = (conv2d_shape_t){.B = 1, .IC = s->OC, .H = conv2d_out_h(s), .W = conv2d_out_w(s),
                          .OC = s->IC, .KH = s->KH, .KW = s->KW, .stride = 1,
                          .pad = {s->KH - 1 - s->pad[0], s->KH - 1 - s->pad[1],
                                  s->KW - 1 - s->pad[2], s->KW - 1 - s->pad[3]}};
    return sd_gemm_uses_bf16(t->OC, t->H * t->W, t->IC * t->KH * t->KW);
}

/* wt[c, o, ky, kx] = w[o, c, KH-1-ky, KW-1-kx] */
static void flip_transpose_kernel(float *wt, const float *w, const conv2d_shape_t *s) {
    const int KK = s->KH * s->KW;
    for (int c = 0; c < s->IC; c++)
        for (int o = 0; o < s->OC; o++) {
            const float *src = w + ((size_t)o * s->IC + c) * KK;
            float *dst = wt + ((size_t)c * s->OC + o) * KK;
            for (int k = 0; k < KK; k++) dst[k] = src[KK - 1 - k];
        }
}

void conv2d_backward(float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight,
                     const conv2d_shape_t *s) {
    const int OH = conv2d_out_h(s), OW = conv2d_out_w(s), P = OH * OW;
    const int K = s->IC * s->KH * s->KW;
    const int pointwise = conv2d_is_pointwise(s);
    conv2d_shape_t t;
    if (dinp && conv2d_winograd_pays(s)) {   /* the input gradient done: the rest is dweight, dbias */
        conv2d_winograd_backward_input(dinp, dout, weight, NULL, s);
        dinp = NULL;
    }
    const int as_conv = !pointwise && dinp && input_grad_as_conv(s, &t);
    scratch_mark_t mark = scratch_mark();
    float *col = (!pointwise && dweight) ? scratch_floats((size_t)K * P) : NULL;
    float *dcol = (!pointwise && dinp && !as_conv) ? scratch_floats((size_t)K * P) : NULL;
    float *wt = as_conv ? scratch_floats((size_t)s->OC * K) : NULL;
    if (as_conv) flip_transpose_kernel(wt, weight, s);
    for (int b = 0; b < s->B; b++) {
        const float *x = inp + (size_t)b * s->IC * s->H * s->W;
        const float *dy = dout + (size_t)b * s->OC * P;
        if (dweight) { /* dweight[OC, K] += dy[OC, P] @ col^T */
            if (!pointwise) im2col(col, x, s);
            sd_gemm(CblasNoTrans, CblasTrans, s->OC, K, P, 1.0f, dy, P,
                    pointwise ? x : col, P, 1.0f, dweight, K);
        }
        if (as_conv) { /* dx[IC, H, W] += conv(dy, wt) */
            gemm_bf16_im2col(s->IC, 1.0f, wt, s->OC * s->KH * s->KW, dy, &t, 1.0f,
                             dinp + (size_t)b * s->IC * s->H * s->W);
        } else if (dinp) { /* dcol[K, P] = weight^T @ dy, scattered back into the image */
            float *dx = dinp + (size_t)b * s->IC * s->H * s->W;
            sd_gemm(CblasTrans, CblasNoTrans, K, P, s->OC, 1.0f, weight, K,
                    dy, P, pointwise ? 1.0f : 0.0f, pointwise ? dx : dcol, P);
            if (!pointwise) col2im_add(dx, dcol, s);
        }
        if (dbias)
            for (int o = 0; o < s->OC; o++) {
                float acc = 0.0f;
                for (int p = 0; p < P; p++) acc += dy[(size_t)o * P + p];
                dbias[o] += acc;
            }
    }
    scratch_release(mark);
}
