/* The operators of svdiff: each a forward/backward pair of plain functions on fp32 arrays.
 *
 * Conventions (all operators):
 *  - outputs first, then inputs, then parameters, then sizes; shapes in the comment.
 *  - images are NCHW, contiguous; token sequences are [B, T, C] (row-major, C fastest).
 *  - backward functions ACCUMULATE (+=) into every gradient they write; the caller zeroes.
 *  - a gradient pointer may be NULL: that gradient is not wanted and is not computed
 *    (parameter gradients are only formed when asked for).
 *  - temporaries come from the per-thread scratch arena (base/scratch.h), never malloc.
 *  - GEMMs go through CBLAS (OpenBLAS); loops are parallelised with OpenMP.
 */
#ifndef SVDIFF_OPS_H
#define SVDIFF_OPS_H

#include <stddef.h>
#include <stdint.h>

/* ---- finite checks (finite.c) ----
 * Index of the first NaN or Inf in x[n], n if none. _raw reads n elements of elem_bytes (4 or
 * 2) at any alignment, non-finite when (bits & exp_mask) == exp_mask: 0x7F800000 for F32,
 * 0x7C00 for F16, 0x7F80 for BF16 (the stored tensors of a model, unconverted). */
size_t first_nonfinite(const float *x, size_t n);
size_t first_nonfinite_raw(const void *data, size_t elem_bytes, uint32_t exp_mask, size_t n);

/* ---- linear (linear.c) ----
 * out[N, OC] = inp[N, IC] @ weight[OC, IC]^T + bias[OC]   (bias may be NULL) */
void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int N, int IC, int OC);
void linear_backward(float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight,
                     int N, int IC, int OC);

/* ---- conv2d (conv2d.c) ----
 * out[B, OC, OH, OW] = conv(inp[B, IC, H, W], weight[OC, IC, KH, KW]) + bias[OC]
 * pad = {top, bottom, left, right} zero padding (symmetric 1 for SD convs, {0,1,0,1} for the
 * VAE downsampler); OH = (H + top + bottom - KH) / stride + 1, likewise OW. */
typedef struct {
    int B, IC, H, W;      /* input */
    int OC, KH, KW;       /* kernel */
    int stride;
    int pad[4];           /* top, bottom, left, right */
} conv2d_shape_t;
int conv2d_out_h(const conv2d_shape_t *s);
int conv2d_out_w(const conv2d_shape_t *s);
void conv2d_forward(float *out, const float *inp, const float *weight, const float *bias,
                    const conv2d_shape_t *s);
void conv2d_backward(float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight,
                     const conv2d_shape_t *s);
/* im2col / col2im used by conv2d and by the spectral conv:
 * col[IC*KH*KW, OH*OW] for one image; col2im accumulates into dimg[IC, H, W]. */
void im2col(float *col, const float *img, const conv2d_shape_t *s);
void col2im_add(float *dimg, const float *col, const conv2d_shape_t *s);
/* 1x1 kernel, stride 1, no padding: the image [IC, H*W] already is its column matrix. */
int conv2d_is_pointwise(const conv2d_shape_t *s);
/* out[M, P] = A[M, K] @ col + beta * out for one image, col = im2col(img) (K = IC*KH*KW,
 * P = OH*OW, row strides K and P): the product behind every conv forward (A = the kernel, or a
 * spectral conv's Vt). A pointwise conv multiplies the image itself, bf16 compute packs the
 * columns straight from the image (gemm_bf16_im2col), else im2col into scratch memory. */
void conv2d_image_gemm(float *out, int M, const float *A, const float *img, const conv2d_shape_t *s, float beta);

/* ---- Winograd F(2x2, 3x3) conv (conv2d_winograd.c) ----
 * 3x3 kernel, stride 1, padding 0 to 2 on each side (conv2d_winograd_fits): 2.25x fewer
 * multiplies than im2col, fp32 results equal up to rounding. The kernel is fp32 `weight` or bf16 `weight_h`
 * [OC, IC*9] (exactly one given; bf16 weights, or bf16 compute on a big enough product, take the
 * bf16 GEMM). Forward: out[B, OC, OH, OW] = conv(inp, weight) + bias (bias may be NULL; out is
 * only written). Input gradient: dinp[B, IC, H, W] += conv_transpose(dout[B, OC, OH, OW], weight).
 * conv2d_winograd_pays: the fp32 shapes where it beats im2col here (conv2d_forward / backward
 * and the spectral conv take it there); bf16 compute keeps im2col unless ALWAYS (see there). */
int conv2d_winograd_fits(const conv2d_shape_t *s);
int conv2d_winograd_pays(const conv2d_shape_t *s);
/* Process-wide choice (tests and benchmarks compare the two paths; set it before work starts):
 * AUTO (default) takes Winograd where conv2d_winograd_pays, OFF never, ALWAYS wherever it fits. */
typedef enum { CONV_WINOGRAD_AUTO = 0, CONV_WINOGRAD_OFF = 1, CONV_WINOGRAD_ALWAYS = 2 } conv_winograd_mode_t;
void conv2d_set_winograd(conv_winograd_mode_t mode);
void conv2d_winograd_forward(float *out, const float *inp, const float *weight, const uint16_t *weight_h,
                             const float *bias, const conv2d_shape_t *s);
void conv2d_winograd_backward_input(float *dinp, const float *dout, const float *weight, const uint16_t *weight_h,
                                    const conv2d_shape_t *s);

/* ---- normalisation (norm.c) ----
 * GroupNorm: inp/out [B, C, S] (S = H*W), G groups of C/G channels, per-channel affine.
 * mean/rstd [B, G] are saved by forward for backward. gamma/beta may be NULL (= 1 / 0). */
void groupnorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *gamma, const float *beta, int B, int C, int S, int G, float eps);
void groupnorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                        const float *inp, const float *gamma, const float *mean, const float *rstd,
                        int B, int C, int S, int G);
/* LayerNorm over the last dim: inp/out [N, C]; mean/rstd [N]. */
void layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                       const float *gamma, const float *beta, int N, int C, float eps);
void layernorm_backward(float *dinp, float *dgamma, float *dbeta, const float *dout,
                        const float *inp, const float *gamma, const float *mean, const float *rstd,
                        int N, int C);

/* ---- activations (activation.c), elementwise on n values; out may alias inp in forward ----
 * silu(x) = x * sigmoid(x); gelu(x) = x * Phi(x) with erf (exact, not tanh);
 * quick_gelu(x) = x * sigmoid(1.702 x). Backward takes the forward's input. */
void silu_forward(float *out, const float *inp, size_t n);
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void gelu_forward(float *out, const float *inp, size_t n);
void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
void quick_gelu_forward(float *out, const float *inp, size_t n);
void quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n);
/* GEGLU (diffusers): inp [N, 2C] = [h | gate] along the last dim; out[N, C] = h * gelu(gate). */
void geglu_forward(float *out, const float *inp, int N, int C);
void geglu_backward(float *dinp, const float *dout, const float *inp, int N, int C);

/* ---- attention (attention.c) ----
 * Multi-head scaled dot-product attention on projected tensors, heads interleaved in C:
 * q[B, Tq, H*D], k[B, Tk, H*D], v[B, Tk, H*D] -> out[B, Tq, H*D];
 * out_h = softmax(q_h k_h^T * scale [+ causal mask]) v_h, scale usually D^-0.5.
 * causal: query i sees keys j <= i (requires Tq == Tk).
 * Memory stays bounded: queries are processed in blocks, the full [Tq, Tk] score matrix is
 * never materialised; forward saves only the per-row log-sum-exp lse[B, H, Tq], and
 * backward recomputes the probabilities block by block from q, k, v, out and lse.
 * In the bf16 compute mode, products of Tq*Tk*D >= 2^22 run in bf16 (attention_bf16.c; fp32
 * softmax and sums); the others, and fp32 mode, in fp32. */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                       int B, int Tq, int Tk, int H, int D, float scale, int causal);
void attention_backward(float *dq, float *dk, float *dv, const float *dout,
                        const float *q, const float *k, const float *v,
                        const float *out, const float *lse,
                        int B, int Tq, int Tk, int H, int D, float scale, int causal);
/* Attention probabilities of query rows [q0, q0+nq) for batch b, head h, recomputed from
 * lse: probs[nq, Tk]. For inspection (e.g. cross-attention maps) without storing them all. */
void attention_probs(float *probs, const float *q, const float *k, const float *lse,
                     int b, int h, int q0, int nq, int Tq, int Tk, int H, int D, float scale, int causal);

/* ---- resampling and layout (resample.c) ----
 * nearest 2x upsample: inp[B, C, H, W] -> out[B, C, 2H, 2W]. */
void upsample_nearest2x_forward(float *out, const float *inp, int B, int C, int H, int W);
void upsample_nearest2x_backward(float *dinp, const float *dout, int B, int C, int H, int W);
/* channel concat: a[B, Ca, S], b[B, Cb, S] -> out[B, Ca+Cb, S] (UNet skip connections). */
void concat_channels_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb, int S);
void concat_channels_backward(float *da, float *db, const float *dout, int B, int Ca, int Cb, int S);

/* ---- timestep embedding (embed.c) ----
 * Sinusoidal embedding of timesteps t[B] -> out[B, dim] (dim even), as diffusers'
 * get_timestep_embedding: half = dim/2, freq_i = exp(-ln(max_period) * i / (half - freq_shift)),
 * arg = t * freq_i, out = [sin(arg), cos(arg)], or [cos, sin] when flip_sin_to_cos. */
void timestep_embedding_forward(float *out, const float *t, int B, int dim,
                                int flip_sin_to_cos, float freq_shift, float max_period);
/* dt[B] += d out / d t (timesteps are not trained, but the op is differentiable). */
void timestep_embedding_backward(float *dt, const float *dout, const float *t, int B, int dim,
                                 int flip_sin_to_cos, float freq_shift, float max_period);

/* ---- losses (loss.c) ----
 * MSE: mean over n of (pred - target)^2, accumulated in double. Backward:
 * dpred += dloss * 2 (pred - target) / n. */
float mse_forward(const float *pred, const float *target, size_t n);
void mse_backward(float *dpred, const float *pred, const float *target, size_t n, float dloss);

#endif
