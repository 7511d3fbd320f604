/* Spectral-shift weights (SVDiff). A weight matrix W [rows, cols] (a conv kernel is read as
 * [c_out, c_in*kh*kw]) is factored once by a thin SVD, W ~ U diag(sigma) V^T, and trained
 * through a shift vector delta [rank] with a scale s:
 *
 *     W_eff = W + U diag(ReLU(sigma + s*delta) - sigma) V^T      (W kept: delta = 0 gives W exactly)
 *     W_eff =     U diag(ReLU(sigma + s*delta))         V^T      (W dropped, as in training)
 *
 * Both forms are written  W_eff = [W] + U diag(c) V^T  with the per-singular-value
 * coefficients c computed by spectral_coeffs(). The gradient never forms dL/dW:
 *     dL/d delta_i = s * [sigma_i + s*delta_i > 0] * sum_t (U^T dy_t)_i (V^T x_t)_i.
 * Norm gains get the 1-D analogue (normshift_*).
 */
#ifndef SVDIFF_WEIGHTS_SPECTRAL_H
#define SVDIFF_WEIGHTS_SPECTRAL_H

#include "ops/ops.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int rows, cols, rank;  /* rank = min(rows, cols) */
    float *U;              /* [rows, rank]; NULL when stored in bf16 (Uh) */
    float *S;              /* [rank], descending, >= 0 */
    float *Vt;             /* [rank, cols] (V^T); NULL when stored in bf16 (Vth) */
    uint16_t *Uh, *Vth;    /* the same factors in bf16 (spectral_store_bf16), else NULL */
    float *delta;          /* [rank], the trained shift, starts at 0 */
    float scale;           /* s: 1 in training, any real at inference */
} spectral_t;

/* Thin SVD of W [rows, cols] with LAPACK (sgesdd, falling back to sgesvd if it does not
 * converge); delta = 0, scale = 1. Returns 0 or SD_ERR_NUMERIC with a message. */
int spectral_init(spectral_t *sp, const float *W, int rows, int cols);
/* Builds from given factors (copied): e.g. an SVD cache read from disk. */
void spectral_init_factors(spectral_t *sp, const float *U, const float *S, const float *Vt,
                           int rows, int cols, int rank);
void spectral_free(spectral_t *sp);
/* Stores U and Vt in bf16 (rounded to nearest even, once) and frees the fp32 copies: half the
 * memory, and the bf16 GEMM packs them without converting (gemm_bf16h). For bf16 compute only:
 * needs a bf16 kernel (SD_CHECK). Products then always take the bf16 kernel, baking rounds
 * nothing more (fp32 GEMM on the bf16 values). No-op when already stored in bf16. */
void spectral_store_bf16(spectral_t *sp);
/* Bytes held by U and Vt (in whichever dtype they are stored). */
size_t spectral_factor_bytes(const spectral_t *sp);
/* U and Vt as fp32 into caller buffers [rows, rank] / [rank, cols] (either may be NULL):
 * a copy, or the bf16 values widened. */
void spectral_factors_f32(const spectral_t *sp, float *U, float *Vt);

/* c[rank] = ReLU(sigma + s*delta) - (with_residual ? sigma : 0). */
void spectral_coeffs(float *c, const spectral_t *sp, int with_residual);
/* Weff[rows, cols] = [W +] U diag(c) V^T. W may be NULL (factored-only weight). */
void spectral_bake(float *Weff, const float *W, const spectral_t *sp);
/* Should a layer applying this weight to N vectors bake W_eff first rather than use the
 * factored form? Compares the multiply-add counts of the two ways. */
int spectral_prefer_baked(const spectral_t *sp, long N, int has_W);

/* Spectral linear: out[N, rows] = inp[N, cols] @ W_eff^T + bias.
 * Weff: an already-baked effective weight, or NULL to apply the factored form (then W, if
 * not NULL, adds the exact residual). Backward: ddelta[rank] += dL/d delta; dinp (+=) and
 * dbias (+=) may be NULL. */
void spectral_linear_forward(float *out, const float *inp, const float *W, const spectral_t *sp,
                             const float *Weff, const float *bias, int N);
void spectral_linear_backward(float *dinp, float *ddelta, float *dbias, const float *dout,
                              const float *inp, const float *W, const spectral_t *sp,
                              const float *Weff, int N);

/* Spectral conv2d: the kernel W [OC, IC*KH*KW] with sp->rows = OC, sp->cols = IC*KH*KW.
 * Factored form = conv with the rank rows of V^T as kernels, a per-channel scale c, then a
 * 1x1 conv with U. Same conventions as the linear. */
void spectral_conv2d_forward(float *out, const float *inp, const float *W, const spectral_t *sp,
                             const float *Weff, const float *bias, const conv2d_shape_t *s);
void spectral_conv2d_backward(float *dinp, float *ddelta, float *dbias, const float *dout,
                              const float *inp, const float *W, const spectral_t *sp,
                              const float *Weff, const conv2d_shape_t *s);

/* 1-D shifts of norm gains [C]:
 *  NORMSHIFT_ELEMENT (paper, default): gain = gamma + s*delta, delta [C];
 *  NORMSHIFT_SCALAR (svdiff-pytorch): gamma read as a 1 x C matrix, sigma = |gamma|,
 *    gain = gamma * ReLU(sigma + s*delta) / sigma, delta [1]. */
typedef enum { NORMSHIFT_ELEMENT = 0, NORMSHIFT_SCALAR = 1 } normshift_mode_t;
void normshift_gain(float *gain, const float *gamma, const float *delta, float s, int C,
                    normshift_mode_t mode);
/* ddelta += dL/d delta given dgain = dL/d gain. */
void normshift_backward(float *ddelta, const float *dgain, const float *gamma, const float *delta,
                        float s, int C, normshift_mode_t mode);

#endif
