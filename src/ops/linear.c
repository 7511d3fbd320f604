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
        /* Sum over rows in a fixed order per output, so results do not depend on threads. */
#pragma omp parallel for schedule(static) if ((long)N * OC > 32768)
        for (int o = 0; o < OC; o++) {
            float s = 0.0f;
            for (int n = 0; n < N; n++) s += dout[(size_t)n * OC + o];
            dbias[o] += s;
        }
    }
}
