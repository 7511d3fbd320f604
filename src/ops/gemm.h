/* The GEMM behind the operators, and the process-wide compute dtype that picks its precision.
 * fp32 (default, exact path): cblas_sgemm. bf16: inputs rounded to bfloat16 (round to nearest
 * even), products accumulated in fp32, on AMX tiles or AVX512-BF16 (own kernels in gemm.c:
 * Debian's OpenBLAS 0.3.21 is built without cblas_sbgemm). */
#ifndef SVDIFF_OPS_GEMM_H
#define SVDIFF_OPS_GEMM_H

#include <cblas.h>
#include <stdint.h>

#include "ops/ops.h"

typedef enum { SD_COMPUTE_FP32 = 0, SD_COMPUTE_BF16 = 1 } sd_compute_t;

/* Sets the compute dtype for the whole process (call before work starts, not while operators
 * run). bf16 needs avx512_bf16 (AMX tiles used when present); without it this prints one
 * notice line on stderr and stays fp32. Returns the dtype in effect. */
sd_compute_t sd_set_compute_dtype(sd_compute_t dt);
/* The dtype in effect. Until sd_set_compute_dtype is called it comes from the environment
 * variable SVDIFF_COMPUTE (fp32 | bf16), read once; unset means fp32. */
sd_compute_t sd_compute_dtype(void);
/* "fp32" / "bf16" -> *out; returns 0, or -1 for any other string. */
int sd_parse_compute_dtype(const char *s, sd_compute_t *out);
const char *sd_compute_dtype_name(sd_compute_t dt);
/* The bf16 kernel this CPU runs: "amx", "avx512_bf16" or "none". */
const char *sd_bf16_kernel(void);

/* Row-major C[M, N] = alpha * op(A)[M, K] @ op(B)[K, N] + beta * C (beta == 0: C is only
 * written), the cblas_sgemm contract. fp32 mode: cblas_sgemm. bf16 mode: gemm_bf16 when the
 * product is big enough for the rounding to pay off (M, N >= 16 and M*N*K >= 2^18), else
 * cblas_sgemm. Safe to call inside an OpenMP parallel region (then runs on the calling thread). */
void sd_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
             const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Would sd_gemm take the bf16 kernel for this product? */
int sd_gemm_uses_bf16(int M, int N, int K);
/* Convolution product of one image in bf16 without the fp32 column matrix:
 * C[M, P] = alpha * A[M, K] @ im2col(img)[K, P] + beta * C (row stride P), K = IC*KH*KW,
 * P = OH*OW of shape s (batch ignored: img is one image). The columns are packed into bf16
 * tiles straight from the image. Only when sd_gemm_uses_bf16(M, P, K). */
void gemm_bf16_im2col(int M, float alpha, const float *A, int lda, const float *img, const conv2d_shape_t *s,
                      float beta, float *C);
/* Always the bf16 kernel (falls back to cblas_sgemm when the CPU has none). Deterministic: a
 * given shape and input give the same bytes whatever the thread count. */
void gemm_bf16(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha,
               const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* gemm_bf16 with operands that may be stored in bf16 already (row-major, leading dimension
 * lda / ldb): for each of A and B exactly one of the fp32 pointer and the bf16 one (Ah, Bh) is
 * given. Used for the factors of spectral weights, rounded once when they were made: the packed
 * tiles hold the same bits as gemm_bf16 packing their fp32 originals, so the result is that of
 * gemm_bf16 on the rounded operands, bit for bit, and as deterministic. Needs a bf16 kernel
 * (sd_bf16_kernel() != "none"); any shape (no size threshold). */
void gemm_bf16h(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                const uint16_t *Ah, int lda, const float *B, const uint16_t *Bh, int ldb, float beta, float *C,
                int ldc);
/* gemm_bf16_im2col with a bf16 A[M, K] (row stride lda). Needs a bf16 kernel. */
void gemm_bf16h_im2col(int M, float alpha, const uint16_t *Ah, int lda, const float *img, const conv2d_shape_t *s,
                       float beta, float *C);

/* fp32 -> bf16, round to nearest even; subnormals flush to signed zero (as the AVX512-BF16
 * conversion instructions do, so scalar and vector paths agree); NaN stays NaN. */
static inline uint16_t sd_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7f800000u) == 0x7f800000u) return (uint16_t)((v.u >> 16) | ((v.u & 0xffffu) ? 0x40u : 0u));
    if ((v.u & 0x7f800000u) == 0) return (uint16_t)((v.u >> 16) & 0x8000u);
    return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}
static inline float sd_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

#endif
