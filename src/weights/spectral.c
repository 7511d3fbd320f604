/* Spectral-shift weights: SVD set-up, coefficients, baking, and the spectral linear / conv
 * forward and backward in factored or baked form (see spectral.h for the maths). */
#include "weights/spectral.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/gemm.h"

int spectral_init(spectral_t *sp, const float *W, int rows, int cols) {
    memset(sp, 0, sizeof *sp);
    const int r = rows < cols ? rows : cols;
    float *A = sd_xmalloc((size_t)rows * cols * sizeof(float));  /* LAPACK overwrites A */
    sp->U = sd_xmalloc((size_t)rows * r * sizeof(float));
    sp->S = sd_xmalloc((size_t)r * sizeof(float));
    sp->Vt = sd_xmalloc((size_t)r * cols * sizeof(float));
    sp->delta = sd_xcalloc((size_t)r, sizeof(float));
    sp->rows = rows, sp->cols = cols, sp->rank = r, sp->scale = 1.0f;
    /* LAPACK's gesdd/gesvd are fastest when m >= n (they reduce with a QR first). A wide
     * matrix (rows < cols, e.g. a conv kernel 1280 x 11520) is therefore factored as the
     * column-major view of its row-major buffer, W^T = V S U^T: the routine's U is then our
     * V^T and its V^T our U, both already in row-major layout. Measured 2.2x faster for
     * 1280 x 11520 (4.49 -> 2.03 s); tall matrices keep the direct call. */
    const int wide = rows < cols;
    memcpy(A, W, (size_t)rows * cols * sizeof(float));
    lapack_int info = wide ? LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', cols, rows, A, cols, sp->S, sp->Vt, cols, sp->U, r)
                           : LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'S', rows, cols, A, cols, sp->S, sp->U, r, sp->Vt, cols);
    if (info > 0) {
        /* Divide and conquer did not converge: the QR-iteration SVD is slower but sturdier. */
        float *superb = sd_xmalloc((size_t)(r > 1 ? r - 1 : 1) * sizeof(float));
        memcpy(A, W, (size_t)rows * cols * sizeof(float));
        info = wide ? LAPACKE_sgesvd(LAPACK_COL_MAJOR, 'S', 'S', cols, rows, A, cols, sp->S, sp->Vt, cols, sp->U, r,
                                     superb)
                    : LAPACKE_sgesvd(LAPACK_ROW_MAJOR, 'S', 'S', rows, cols, A, cols, sp->S, sp->U, r, sp->Vt, cols,
                                     superb);
        free(superb);
    }
    free(A);
    if (info != 0) {
        spectral_free(sp);
        return sd_error(SD_ERR_NUMERIC, "SVD of a %d x %d matrix failed (LAPACK info %d)",
                        rows, cols, (int)info);
    }
    return SD_OK;
}

void spectral_init_factors(spectral_t *sp, const float *U, const float *S, const float *Vt,
                           int rows, int cols, int rank) {
    SD_CHECK(rank > 0 && rank <= rows && rank <= cols, "rank %d for a %d x %d matrix", rank, rows, cols);
    memset(sp, 0, sizeof *sp);
    sp->rows = rows, sp->cols = cols, sp->rank = rank, sp->scale = 1.0f;
    sp->U = sd_xmalloc((size_t)rows * rank * sizeof(float));
    sp->S = sd_xmalloc((size_t)rank * sizeof(float));
    sp->Vt = sd_xmalloc((size_t)rank * cols * sizeof(float));
    sp->delta = sd_xcalloc((size_t)rank, sizeof(float));
    memcpy(sp->U, U, (size_t)rows * rank * sizeof(float));
    memcpy(sp->S, S, (size_t)rank * sizeof(float));
    memcpy(sp->Vt, Vt, (size_t)rank * cols * sizeof(float));
}

void spectral_free(spectral_t *sp) {
    free(sp->U);
    free(sp->S);
    free(sp->Vt);
    free(sp->Uh);
    free(sp->Vth);
    free(sp->delta);
    memset(sp, 0, sizeof *sp);
}

static uint16_t *to_bf16(const float *x, size_t n) {
    uint16_t *h = sd_xmalloc(n * sizeof *h);
#pragma omp parallel for schedule(static) if (n > (1u << 18))
    for (size_t i = 0; i < n; i++) h[i] = sd_f32_to_bf16(x[i]);
    return h;
}

static void from_bf16(float *x, const uint16_t *h, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = sd_bf16_to_f32(h[i]);
}

void spectral_store_bf16(spectral_t *sp) {
    if (sp->Uh) return;
    SD_CHECK(strcmp(sd_bf16_kernel(), "none"), "bf16 factors need a CPU with avx512_bf16");
    sp->Uh = to_bf16(sp->U, (size_t)sp->rows * sp->rank);
    sp->Vth = to_bf16(sp->Vt, (size_t)sp->rank * sp->cols);
    free(sp->U);
    free(sp->Vt);
    sp->U = sp->Vt = NULL;
}

size_t spectral_factor_bytes(const spectral_t *sp) {
    const size_t n = (size_t)sp->rows * sp->rank + (size_t)sp->rank * sp->cols;
    return n * (sp->Uh ? sizeof(uint16_t) : sizeof(float));
}

void spectral_factors_f32(const spectral_t *sp, float *U, float *Vt) {
    const size_t nu = (size_t)sp->rows * sp->rank, nv = (size_t)sp->rank * sp->cols;
    if (U) sp->Uh ? from_bf16(U, sp->Uh, nu) : (void)memcpy(U, sp->U, nu * sizeof(float));
    if (Vt) sp->Vth ? from_bf16(Vt, sp->Vth, nv) : (void)memcpy(Vt, sp->Vt, nv * sizeof(float));
}

/* C = alpha op(A) op(B) + beta C where A or B may be a factor stored in bf16 (Ah / Bh): those
 * products take the bf16 kernel straight from the stored bits; the others sd_gemm. */
static void fgemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int M, int N, int K, float alpha, const float *A,
                  const uint16_t *Ah, int lda, const float *B, const uint16_t *Bh, int ldb, float beta, float *C,
                  int ldc) {
    if (Ah || Bh) gemm_bf16h(ta, tb, M, N, K, alpha, A, Ah, lda, B, Bh, ldb, beta, C, ldc);
    else sd_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* z[r, P] = Vt[r, K] @ im2col(x)[K, P] for one image: a conv with the rank right-singular kernels. */
static void vt_image_gemm(float *z, const spectral_t *sp, const float *x, const conv2d_shape_t *s) {
    if (!sp->Vth) {
        conv2d_image_gemm(z, sp->rank, sp->Vt, x, s, 0.0f);
        return;
    }
    const int P = conv2d_out_h(s) * conv2d_out_w(s), K = sp->cols;
    if (conv2d_is_pointwise(s))
        gemm_bf16h(CblasNoTrans, CblasNoTrans, sp->rank, P, K, 1.0f, NULL, sp->Vth, K, x, NULL, P, 0.0f, z, P);
    else
        gemm_bf16h_im2col(sp->rank, 1.0f, sp->Vth, K, x, s, 0.0f, z);
}

/* The rank-output conv behind z = Vt (*) x as a conv shape (OC = rank): Winograd takes all the
 * images at once where it pays (3x3, stride 1, pad 1). */
static int vt_winograd(const spectral_t *sp, const conv2d_shape_t *s, conv2d_shape_t *sr) {
    *sr = *s;
    sr->OC = sp->rank;
    return conv2d_winograd_pays(sr);
}

void spectral_coeffs(float *c, const spectral_t *sp, int with_residual) {
    for (int i = 0; i < sp->rank; i++) {
        float shifted = sp->S[i] + sp->scale * sp->delta[i];
        c[i] = (shifted > 0.0f ? shifted : 0.0f) - (with_residual ? sp->S[i] : 0.0f);
    }
}

void spectral_bake(float *Weff, const float *W, const spectral_t *sp) {
    const int rows = sp->rows, cols = sp->cols, r = sp->rank;
    scratch_mark_t mark = scratch_mark();
    float *c = scratch_floats(r);
    float *Uc = scratch_floats((size_t)rows * r);
    const float *Vt = sp->Vt;
    if (sp->Uh) {   /* bf16 factors: their values widened, the product in fp32 as for fp32 ones */
        float *v = scratch_floats((size_t)r * cols);
        spectral_factors_f32(sp, Uc, v);
        Vt = v;
    } else {
        memcpy(Uc, sp->U, (size_t)rows * r * sizeof(float));
    }
    spectral_coeffs(c, sp, W != NULL);
    for (int i = 0; i < rows; i++)
        for (int k = 0; k < r; k++) Uc[(size_t)i * r + k] *= c[k];
    if (W) memcpy(Weff, W, (size_t)rows * cols * sizeof(float));
    /* Weff[rows, cols] (+)= (U diag(c))[rows, r] @ Vt[r, cols] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, cols, r, 1.0f, Uc, r, Vt,
                cols, W ? 1.0f : 0.0f, Weff, cols);
    scratch_release(mark);
}

int spectral_prefer_baked(const spectral_t *sp, long N, int has_W) {
    const double rows = sp->rows, cols = sp->cols, r = sp->rank;
    double factored = (double)N * r * (rows + cols) + (has_W ? (double)N * rows * cols : 0.0);
    double baked = rows * r * cols + (double)N * rows * cols;
    return baked < factored;
}

/* ddelta_i += s * [sigma_i + s delta_i > 0] * sum_t z[t, i] g[t, i], with z, g [N, r] when
 * tokens_major, else [r, N]. Summed per i in a fixed order (deterministic). */
static void accumulate_ddelta(float *ddelta, const float *z, const float *g, const spectral_t *sp,
                              long N, int tokens_major) {
    const int r = sp->rank;
#pragma omp parallel for schedule(static) if ((long)r * N > 65536)
    for (int i = 0; i < r; i++) {
        if (!(sp->S[i] + sp->scale * sp->delta[i] > 0.0f)) continue;
        double acc = 0.0;
        if (tokens_major)
            for (long t = 0; t < N; t++) acc += (double)z[t * r + i] * g[t * r + i];
        else
            for (long t = 0; t < N; t++) acc += (double)z[i * N + t] * g[i * N + t];
        ddelta[i] += (float)(sp->scale * acc);
    }
}

void spectral_linear_forward(float *out, const float *inp, const float *W, const spectral_t *sp,
                             const float *Weff, const float *bias, int N) {
    const int rows = sp->rows, cols = sp->cols, r = sp->rank;
    if (Weff) {
        linear_forward(out, inp, Weff, bias, N, cols, rows);
        return;
    }
    scratch_mark_t mark = scratch_mark();
    float *c = scratch_floats(r);
    float *z = scratch_floats((size_t)N * r);
    spectral_coeffs(c, sp, W != NULL);
    /* z[N, r] = inp[N, cols] @ Vt^T, scaled per singular value */
    fgemm(CblasNoTrans, CblasTrans, N, r, cols, 1.0f, inp, NULL, cols, sp->Vt, sp->Vth, cols,
          0.0f, z, r);
    for (long t = 0; t < N; t++)
        for (int i = 0; i < r; i++) z[t * r + i] *= c[i];
    if (W)
        linear_forward(out, inp, W, bias, N, cols, rows);
    else if (bias)
        for (long t = 0; t < N; t++) memcpy(out + t * rows, bias, sizeof(float) * rows);
    /* out[N, rows] += z @ U^T */
    fgemm(CblasNoTrans, CblasTrans, N, rows, r, 1.0f, z, NULL, r, sp->U, sp->Uh, r,
          (W || bias) ? 1.0f : 0.0f, out, rows);
    scratch_release(mark);
}

void spectral_linear_backward(float *dinp, float *ddelta, float *dbias, const float *dout,
                              const float *inp, const float *W, const spectral_t *sp,
                              const float *Weff, int N) {
    const int rows = sp->rows, cols = sp->cols, r = sp->rank;
    if (dbias) linear_backward(NULL, NULL, dbias, dout, NULL, NULL, N, cols, rows);
    if (!ddelta && !dinp) return;
    scratch_mark_t mark = scratch_mark();
    /* g[N, r] = dout[N, rows] @ U: the output gradient in the singular basis */
    float *g = scratch_floats((size_t)N * r);
    fgemm(CblasNoTrans, CblasNoTrans, N, r, rows, 1.0f, dout, NULL, rows, sp->U, sp->Uh, r,
          0.0f, g, r);
    if (ddelta) {
        float *z = scratch_floats((size_t)N * r);  /* recomputed rather than kept from forward */
        fgemm(CblasNoTrans, CblasTrans, N, r, cols, 1.0f, inp, NULL, cols, sp->Vt, sp->Vth,
              cols, 0.0f, z, r);
        accumulate_ddelta(ddelta, z, g, sp, N, 1);
    }
    if (dinp) {
        if (Weff) {
            linear_backward(dinp, NULL, NULL, dout, NULL, Weff, N, cols, rows);
        } else {
            float *c = scratch_floats(r);
            spectral_coeffs(c, sp, W != NULL);
            if (W) linear_backward(dinp, NULL, NULL, dout, NULL, W, N, cols, rows);
            for (long t = 0; t < N; t++)
                for (int i = 0; i < r; i++) g[t * r + i] *= c[i];
            /* dinp[N, cols] += (c * g)[N, r] @ Vt */
            fgemm(CblasNoTrans, CblasNoTrans, N, cols, r, 1.0f, g, NULL, r, sp->Vt, sp->Vth,
                  cols, 1.0f, dinp, cols);
        }
    }
    scratch_release(mark);
}

void spectral_conv2d_forward(float *out, const float *inp, const float *W, const spectral_t *sp,
                             const float *Weff, const float *bias, const conv2d_shape_t *s) {
    SD_CHECK(sp->rows == s->OC && sp->cols == s->IC * s->KH * s->KW,
             "spectral %dx%d vs conv %dx%dx%dx%d", sp->rows, sp->cols, s->OC, s->IC, s->KH, s->KW);
    if (Weff) {
        conv2d_forward(out, inp, Weff, bias, s);
        return;
    }
    const int P = conv2d_out_h(s) * conv2d_out_w(s), r = sp->rank, OC = sp->rows;
    if (W) conv2d_forward(out, inp, W, bias, s);
    scratch_mark_t mark = scratch_mark();
    float *c = scratch_floats(r);
    conv2d_shape_t sr;
    const int winograd = vt_winograd(sp, s, &sr);
    float *zall = scratch_floats((size_t)(winograd ? s->B : 1) * r * P);
    /* z[r, P] = Vt[r, K] @ col[K, P]: a conv with the rank right-singular kernels (Winograd:
     * every image at once, zall[B, r, P]) */
    if (winograd) conv2d_winograd_forward(zall, inp, sp->Vt, sp->Vth, NULL, &sr);
    spectral_coeffs(c, sp, W != NULL);
    for (int b = 0; b < s->B; b++) {
        const float *x = inp + (size_t)b * s->IC * s->H * s->W;
        float *y = out + (size_t)b * OC * P;
        float *z = winograd ? zall + (size_t)b * r * P : zall;
        if (!winograd) vt_image_gemm(z, sp, x, s);
        for (int i = 0; i < r; i++)
            for (int p = 0; p < P; p++) z[(size_t)i * P + p] *= c[i];
        if (!W && bias)
            for (int o = 0; o < OC; o++)
                for (int p = 0; p < P; p++) y[(size_t)o * P + p] = bias[o];
        /* y[OC, P] += U[OC, r] @ z: the 1x1 conv with the left singular vectors */
        fgemm(CblasNoTrans, CblasNoTrans, OC, P, r, 1.0f, sp->U, sp->Uh, r, z, NULL, P,
              (W || bias) ? 1.0f : 0.0f, y, P);
    }
    scratch_release(mark);
}

void spectral_conv2d_backward(float *dinp, float *ddelta, float *dbias, const float *dout,
                              const float *inp, const float *W, const spectral_t *sp,
                              const float *Weff, const conv2d_shape_t *s) {
    SD_CHECK(sp->rows == s->OC && sp->cols == s->IC * s->KH * s->KW,
             "spectral %dx%d vs conv %dx%dx%dx%d", sp->rows, sp->cols, s->OC, s->IC, s->KH, s->KW);
    const int P = conv2d_out_h(s) * conv2d_out_w(s), K = sp->cols, r = sp->rank, OC = sp->rows;
    const int pointwise = conv2d_is_pointwise(s);
    if (dbias) conv2d_backward(NULL, NULL, dbias, dout, inp, NULL, s);
    if (dinp && (Weff || W)) conv2d_backward(dinp, NULL, NULL, dout, inp, Weff ? Weff : W, s);
    const int factored_dinp = dinp && !Weff;
    if (!ddelta && !factored_dinp) return;
    scratch_mark_t mark = scratch_mark();
    float *c = scratch_floats(r);
    /* Winograd: z for every image at once, and the factored input gradient as one transposed
     * conv of (c * g)[B, r, P] with the Vt kernels; so z and g are kept for the whole batch. */
    conv2d_shape_t sr;
    const int winograd = vt_winograd(sp, s, &sr);
    const size_t nimg = winograd ? (size_t)s->B : 1;
    float *gall = scratch_floats(nimg * r * P);
    float *zall = ddelta ? scratch_floats(nimg * r * P) : NULL;
    float *col = (!pointwise && factored_dinp && !winograd) ? scratch_floats((size_t)K * P) : NULL;   /* dcol */
    if (winograd && ddelta) conv2d_winograd_forward(zall, inp, sp->Vt, sp->Vth, NULL, &sr);
    spectral_coeffs(c, sp, W != NULL);
    for (int b = 0; b < s->B; b++) {
        const float *x = inp + (size_t)b * s->IC * s->H * s->W;
        const float *dy = dout + (size_t)b * OC * P;
        float *g = winograd ? gall + (size_t)b * r * P : gall;
        /* g[r, P] = U^T @ dy */
        fgemm(CblasTrans, CblasNoTrans, r, P, OC, 1.0f, sp->U, sp->Uh, r, dy, NULL, P,
              0.0f, g, P);
        if (ddelta) {   /* z = Vt @ col, recomputed rather than kept from forward */
            float *z = winograd ? zall + (size_t)b * r * P : zall;
            if (!winograd) vt_image_gemm(z, sp, x, s);
            accumulate_ddelta(ddelta, z, g, sp, P, 0);
        }
        if (factored_dinp) {
            float *dx = dinp + (size_t)b * s->IC * s->H * s->W;
            for (int i = 0; i < r; i++)
                for (int p = 0; p < P; p++) g[(size_t)i * P + p] *= c[i];
            if (winograd) continue;   /* after the loop, for every image at once */
            /* dcol[K, P] = Vt^T @ (c * g), scattered back into the image */
            fgemm(CblasTrans, CblasNoTrans, K, P, r, 1.0f, sp->Vt, sp->Vth, K, g, NULL, P,
                  pointwise ? 1.0f : 0.0f, pointwise ? dx : col, P);
            if (!pointwise) col2im_add(dx, col, s);
        }
    }
    /* dinp += conv_transpose(c * g, Vt) */
    if (winograd && factored_dinp) conv2d_winograd_backward_input(dinp, gall, sp->Vt, sp->Vth, &sr);
    scratch_release(mark);
}

void normshift_gain(float *gain, const float *gamma, const float *delta, float s, int C,
                    normshift_mode_t mode) {
    if (mode == NORMSHIFT_ELEMENT) {
        for (int c = 0; c < C; c++) gain[c] = gamma[c] + s * delta[c];
        return;
    }
    double sq = 0.0;
    for (int c = 0; c < C; c++) sq += (double)gamma[c] * gamma[c];
    const float sigma = (float)sqrt(sq);
    const float shifted = sigma + s * delta[0];
    const float ratio = sigma > 0.0f ? (shifted > 0.0f ? shifted : 0.0f) / sigma : 1.0f;
    for (int c = 0; c < C; c++) gain[c] = gamma[c] * ratio;
}

void normshift_backward(float *ddelta, const float *dgain, const float *gamma, const float *delta,
                        float s, int C, normshift_mode_t mode) {
    if (mode == NORMSHIFT_ELEMENT) {
        for (int c = 0; c < C; c++) ddelta[c] += s * dgain[c];
        return;
    }
    double sq = 0.0, dot = 0.0;
    for (int c = 0; c < C; c++) {
        sq += (double)gamma[c] * gamma[c];
        dot += (double)dgain[c] * gamma[c];
    }
    const double sigma = sqrt(sq);
    if (sigma > 0.0 && sigma + s * delta[0] > 0.0) ddelta[0] += (float)(s * dot / sigma);
}
