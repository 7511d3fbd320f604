/* Weight kinds: how a layer's matrix exists, is applied, is trained and is baked.
 *  - WEIGHT_DENSE: the base matrix in its stored dtype (F32/F16/BF16, possibly a view into
 *    an mmap'ed checkpoint); half-precision data is converted per use into scratch memory,
 *    so a model never doubles into fp32 as a whole.
 *  - WEIGHT_SPECTRAL: the same base matrix plus spectral factors and a trained shift
 *    (spectral.h); the base may be absent (factored-only form, as in training from an SVD
 *    cache). `baked` optionally caches the effective fp32 matrix for inference.
 * Layers (linear, conv, embedding) call the weight_* functions below and never look inside. */
#ifndef SVDIFF_WEIGHTS_WEIGHT_H
#define SVDIFF_WEIGHTS_WEIGHT_H

#include "io/safetensors.h"
#include "weights/lora.h"
#include "weights/spectral.h"

/* WEIGHT_LORA: the dense base (frozen, stored dtype) plus a LoRA adapter (lora.h, training form). */
typedef enum { WEIGHT_DENSE = 0, WEIGHT_SPECTRAL = 1, WEIGHT_LORA = 2 } weight_kind_t;

typedef struct {
    weight_kind_t kind;
    int rows, cols;       /* [out, in]; conv kernels [OC, IC*KH*KW]; embeddings [vocab, dim] */
    st_dtype_t dtype;     /* storage dtype of `data` */
    const void *data;     /* base matrix [rows, cols], or NULL (spectral factored-only) */
    spectral_t *sp;       /* owned by the weight when kind == WEIGHT_SPECTRAL */
    float *baked;         /* owned cache of the effective matrix, or NULL */
    lora_t *lora;         /* owned by the weight when kind == WEIGHT_LORA */
} weight_t;

/* A dense weight over existing data (not copied; must outlive the weight). */
weight_t weight_dense(const void *data, st_dtype_t dtype, int rows, int cols);
/* Turns a dense weight spectral: SVD of its matrix (keep_base: keep the base for the exact
 * residual form). Returns 0 or an SD_ERR_* with a message. */
int weight_make_spectral(weight_t *w, int keep_base);
/* weight_make_spectral of n dense weights, the SVDs in parallel: one single-threaded SVD per
 * OpenMP thread, so each weight's factors do not depend on the thread count. Every weight whose
 * SVD succeeds becomes spectral; returns SD_OK, or the first failure in index order. */
int weight_make_spectral_many(weight_t *const *w, int n, int keep_base);
/* Same from known factors (an SVD cache): U [rows, rank], S [rank], Vt [rank, cols], copied. */
void weight_make_spectral_from(weight_t *w, const float *U, const float *S, const float *Vt, int rank,
                               int keep_base);
void weight_free(weight_t *w);    /* frees owned parts (sp, baked), not `data` */

/* fp32 view of the base matrix: `data` itself when F32, else converted into scratch memory
 * (valid until the caller releases its scratch mark). NULL when there is no base. */
const float *weight_base_f32(const weight_t *w);
/* Effective fp32 matrix for a forward over N vectors: the baked cache if any; for a dense
 * weight its fp32 base; for a spectral weight a freshly baked matrix in scratch when
 * spectral_prefer_baked says so, else NULL (= use the factored form). */
const float *weight_effective_f32(const weight_t *w, long N);
/* Bakes the effective matrix into w->baked (allocated once) for inference. */
void weight_bake(weight_t *w);
/* Number of trainable shift values (rank for spectral, rank*(rows+cols) for LoRA, 0 for dense). */
int weight_shift_count(const weight_t *w);

/* Linear through a weight: out[N, rows] = inp[N, cols] @ W_eff^T + bias.
 * Backward: dinp (+=) and dbias (+=) may be NULL; dparam (+=) is d(delta) [rank] for a
 * spectral weight and dW [rows, cols] (fp32) for a dense one, or NULL. */
void weight_linear_forward(float *out, const float *inp, const weight_t *w, const float *bias, int N);
void weight_linear_backward(float *dinp, float *dparam, float *dbias, const float *dout,
                            const float *inp, const weight_t *w, int N);

/* Conv2d through a weight (rows = OC, cols = IC*KH*KW); same gradient conventions. */
void weight_conv2d_forward(float *out, const float *inp, const weight_t *w, const float *bias,
                           const conv2d_shape_t *s);
void weight_conv2d_backward(float *dinp, float *dparam, float *dbias, const float *dout,
                            const float *inp, const weight_t *w, const conv2d_shape_t *s);

/* Embedding lookup: out[N, cols] = W_eff[ids[n], :]. Ids must be in [0, rows) (checked).
 * Backward: dparam (+=) as above (dense: scatter-add into dW rows). */
void weight_embedding_forward(float *out, const int *ids, const weight_t *w, int N);
void weight_embedding_backward(float *dparam, const float *dout, const int *ids, const weight_t *w, int N);

#endif
