/* Fully connected layer, forward and backward, as three GEMMs through CBLAS.
 * Shapes: inp [N, IC], weight [OC, IC] (PyTorch layout), bias [OC], out [N, OC]. */
#include <cblas.h>

#include "ops/gemm.h"
#include "ops/ops.h"

void linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                    int N, int IC, int OC) {
    if (bias) {
        for (int n = 0; n < N; n++)
            for (int o = 0; o < OC; o++) out[(size_t)n * OC + o] = bias[o];
    }
    /* out[N, OC] (+)= inp[N, IC] @ weight^T */
    sd_gemm(CblasNoTrans, CblasTrans, N, OC, IC, 1.0f, inp, IC, weight, IC,
            bias ? 1.0f : 0.0f, out, OC);
}

void linear_backward(float *dinp, float *dweight, float *dbias,
                     const float *dout, const float *inp, const float *weight,
                     int N, int IC, int OC) {
    if (dinp) /* dinp[N, IC] += dout[N, OC] @ weight[OC, IC] */
        sd_gemm(CblasNoTrans, CblasNoTrans, N, IC, OC, 1.0f, dout, OC,
                weight, IC, 1.0f, dinp, IC);
    if (dweight) /* dweight[OC, IC] += dout^T @ inp */
        sd_gemm(CblasTrans, CblasNoTrans, OC, IC, N, 1.0f, dout, OC,
                inp, IC, 1.0f, dweight, IC);
    if (dbias) {
        /* Sum over rows in a fixed order per output (n = 0, 1, ...), so results do not depend
         * on threads. Each thread owns a block of columns and walks the rows, reading
         * contiguous runs of dout (a column walk strides OC floats per element). */
        enum { BIAS_COLS = 64 };
        const int nblk = (OC + BIAS_COLS - 1) / BIAS_COLS;
#pragma omp parallel for schedule(static) if ((long)N * OC > 32768)
        for (int blk = 0; blk < nblk; blk++) {
            const int o0 = blk * BIAS_COLS, w = OC - o0 < BIAS_COLS ? OC - o0 : BIAS_COLS;
            float acc[BIAS_COLS] = {0};
            for (int n = 0; n < N; n++) {
                const float *row = dout + (size_t)n * OC + o0;
                for (int j = 0; j < w; j++) acc[j] += row[j];
            }
            for (int j = 0; j < w; j++) dbias[o0 + j] += acc[j];
        }
    }
}
