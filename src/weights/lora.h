/* LoRA adapters (Hu et al. 2021; peft's LoraLayer): a frozen base W [rows, cols] (a conv kernel read
 * as [c_out, c_in*kh*kw]) plus a trained low-rank product,
 *
 *     W_eff = W + s * B A,     A [rank, cols], B [rows, rank], s = alpha / rank,
 *
 * applied and differentiated through the factors only (h = A x, then y += s B h): no dense dW is
 * ever formed. A conv adapter is A as a conv with the layer's kernel, stride and padding into rank
 * channels, then B as a 1x1 conv, which is the 4-D layout of diffusers / kohya files
 * (lora_A [rank, c_in, kh, kw], lora_B [c_out, rank, 1, 1]). A and B are one block, `AB`, [A; B]:
 * a trainer sees one array per layer, and gradients come in the same [dA; dB] layout. */
#ifndef SVDIFF_WEIGHTS_LORA_H
#define SVDIFF_WEIGHTS_LORA_H

#include <stdint.h>

#include "ops/ops.h"

typedef struct {
    int rows, cols, rank;
    float *AB;      /* [rank*cols + rows*rank]: A then B (owned) */
    float *A, *B;   /* views into AB */
    float scale;    /* s = alpha / rank */
} lora_t;

/* Zeroed factors (A = B = 0) and s = alpha / rank. */
void lora_alloc(lora_t *l, int rows, int cols, int rank, float alpha);
void lora_free(lora_t *l);
/* Floats in AB: rank * (rows + cols). */
size_t lora_numel(const lora_t *l);
/* peft's initialisation: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(cols), 1/sqrt(cols)) (fan_in =
 * cols, c_in*kh*kw for a conv), B = 0, so training starts at W exactly. Uniforms from a Philox
 * stream keyed by `seed` (deterministic whatever the thread count). */
void lora_init_peft(lora_t *l, uint64_t seed);
/* W[rows, cols] += factor * s * B A (merging into an fp32 matrix). */
void lora_merge(float *W, const lora_t *l, float factor);

/* Linear: out[N, rows] = inp[N, cols] @ W^T + bias + s * (inp A^T) B^T. W: fp32 base [rows, cols]
 * (NULL: no base term). Backward: dinp (+=), dAB (+=) [dA; dB], dbias (+=), each may be NULL. */
void lora_linear_forward(float *out, const float *inp, const float *W, const lora_t *l, const float *bias, int N);
void lora_linear_backward(float *dinp, float *dAB, float *dbias, const float *dout, const float *inp,
                          const float *W, const lora_t *l, int N);

/* Conv2d with the base kernel W [OC, IC*KH*KW] and shape s (s->OC = rows); same conventions. */
void lora_conv2d_forward(float *out, const float *inp, const float *W, const lora_t *l, const float *bias,
                         const conv2d_shape_t *s);
void lora_conv2d_backward(float *dinp, float *dAB, float *dbias, const float *dout, const float *inp,
                          const float *W, const lora_t *l, const conv2d_shape_t *s);

#endif
