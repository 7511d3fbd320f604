/* LoRA adapters (lora.h): allocation, peft initialisation, merging, and the linear / conv
 * forward and backward through the factors (never a dense dW). */
#include "weights/lora.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/rng.h"
#include "base/scratch.h"

size_t lora_numel(const lora_t *l) { return (size_t)l->rank * ((size_t)l->rows + (size_t)l->cols); }

void lora_alloc(lora_t *l, int rows, int cols, int rank, float alpha) {
    SD_CHECK(rows > 0 && cols > 0 && rank > 0, "lora_alloc %dx%d rank %d", rows, cols, rank);
    l->rows = rows, l->cols = cols, l->rank = rank;
    l->AB = sd_xcalloc(lora_numel(l), sizeof(float));
    l->A = l->AB;
    l->B = l->AB + (size_t)rank * cols;
    l->scale = alpha / (float)rank;
}

void lora_free(lora_t *l) {
    free(l->AB);
    memset(l, 0, sizeof *l);
}

void lora_init_peft(lora_t *l, uint64_t seed) {
    rng_t r;
    rng_init(&r, seed);
    const double bound = 1.0 / sqrt((double)l->cols);
    const size_t nA = (size_t)l->rank * l->cols;
    for (size_t i = 0; i < nA; i++) l->A[i] = (float)((2.0 * rng_uniform(&r) - 1.0) * bound);
    memset(l->B, 0, sizeof(float) * (size_t)l->rows * l->rank);
}

void lora_merge(float *W, const lora_t *l, float factor) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, l->rows, l->cols, l->rank, factor * l->scale, l->B, l->rank,
                l->A, l->cols, 1.0f, W, l->cols);
}

/* ---- linear: h[N, R] = inp A^T; out += s h B^T ---- */

void lora_linear_forward(float *out, const float *inp, const float *W, const lora_t *l, const float *bias, int N) {
    const int R = l->rank, IC = l->cols, OC = l->rows;
    if (W) linear_forward(out, inp, W, bias, N, IC, OC);
    else {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] = bias ? bias[o] : 0.0f;
    }
    scratch_mark_t mark = scratch_mark();
    float *h = scratch_floats((size_t)N * R);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, R, IC, 1.0f, inp, IC, l->A, IC, 0.0f, h, R);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, R, l->scale, h, R, l->B, R, 1.0f, out, OC);
    scratch_release(mark);
}

void lora_linear_backward(float *dinp, float *dAB, float *dbias, const float *dout, const float *inp,
                          const float *W, const lora_t *l, int N) {
    const int R = l->rank, IC = l->cols, OC = l->rows;
    /* the base: dinp += dout W, dbias += sum dout (W itself is frozen) */
    if (dinp && W) linear_backward(dinp, NULL, dbias, dout, inp, W, N, IC, OC);
    else if (dbias) linear_backward(NULL, NULL, dbias, dout, inp, NULL, N, IC, OC);
    if (!dinp && !dAB) return;
    scratch_mark_t mark = scratch_mark();
    /* dh[N, R] = s * dout B */
    float *dh = scratch_floats((size_t)N * R);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, R, OC, l->scale, dout, OC, l->B, R, 0.0f, dh, R);
    if (dAB) {
        float *dA = dAB, *dB = dAB + (size_t)R * IC;
        float *h = scratch_floats((size_t)N * R);   /* recomputed: cheaper than keeping it */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, R, IC, 1.0f, inp, IC, l->A, IC, 0.0f, h, R);
        /* dA[R, IC] += dh^T inp; dB[OC, R] += s * dout^T h */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, IC, N, 1.0f, dh, R, inp, IC, 1.0f, dA, IC);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, R, N, l->scale, dout, OC, h, R, 1.0f, dB, R);
    }
    /* dinp[N, IC] += dh A */
    if (dinp) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, R, 1.0f, dh, R, l->A, IC, 1.0f, dinp, IC);
    scratch_release(mark);
}

/* ---- conv: h = conv(inp, A) [B, R, OH, OW]; out[b] += s * B h[b] ---- */

static conv2d_shape_t down_shape(const conv2d_shape_t *s, int R) {
    conv2d_shape_t d = *s;
    d.OC = R;
    return d;
}

void lora_conv2d_forward(float *out, const float *inp, const float *W, const lora_t *l, const float *bias,
                         const conv2d_shape_t *s) {
    SD_CHECK(l->rows == s->OC && l->cols == s->IC * s->KH * s->KW, "lora %dx%d vs conv %dx%dx%dx%d", l->rows,
             l->cols, s->OC, s->IC, s->KH, s->KW);
    const int R = l->rank, OC = l->rows;
    const int P = conv2d_out_h(s) * conv2d_out_w(s);
    if (W) conv2d_forward(out, inp, W, bias, s);
    else
        for (int b = 0; b < s->B; b++)
            for (int o = 0; o < OC; o++)
                for (int p = 0; p < P; p++) out[((size_t)b * OC + o) * P + p] = bias ? bias[o] : 0.0f;
    scratch_mark_t mark = scratch_mark();
    const conv2d_shape_t ds = down_shape(s, R);
    float *h = scratch_floats((size_t)s->B * R * P);
    conv2d_forward(h, inp, l->A, NULL, &ds);
    for (int b = 0; b < s->B; b++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, OC, P, R, l->scale, l->B, R, h + (size_t)b * R * P, P,
                    1.0f, out + (size_t)b * OC * P, P);
    scratch_release(mark);
}

void lora_conv2d_backward(float *dinp, float *dAB, float *dbias, const float *dout, const float *inp,
                          const float *W, const lora_t *l, const conv2d_shape_t *s) {
    const int R = l->rank, OC = l->rows;
    const int P = conv2d_out_h(s) * conv2d_out_w(s);
    if (dinp && W) conv2d_backward(dinp, NULL, dbias, dout, inp, W, s);
    else if (dbias) conv2d_backward(NULL, NULL, dbias, dout, inp, NULL, s);
    if (!dinp && !dAB) return;
    scratch_mark_t mark = scratch_mark();
    const conv2d_shape_t ds = down_shape(s, R);
    /* dh[b] = s * B^T dout[b]  [R, P] */
    float *dh = scratch_floats((size_t)s->B * R * P);
    for (int b = 0; b < s->B; b++)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, P, OC, l->scale, l->B, R, dout + (size_t)b * OC * P, P,
                    0.0f, dh + (size_t)b * R * P, P);
    if (dAB) {
        float *dB = dAB + (size_t)R * l->cols;
        float *h = scratch_floats((size_t)s->B * R * P);
        conv2d_forward(h, inp, l->A, NULL, &ds);
        /* dB[OC, R] += s * sum_b dout[b] h[b]^T */
        for (int b = 0; b < s->B; b++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, OC, R, P, l->scale, dout + (size_t)b * OC * P, P,
                        h + (size_t)b * R * P, P, 1.0f, dB, R);
    }
    /* dA (+=) and dinp (+=) through the down conv */
    conv2d_backward(dinp, dAB, NULL, dh, inp, l->A, &ds);
    scratch_release(mark);
}
