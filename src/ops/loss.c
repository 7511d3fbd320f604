/* Mean-squared-error loss and its gradient (see ops.h). The sum is formed in double over
 * fixed-size chunks added in order, so the value does not depend on the thread count. */
#include <stddef.h>

#include "base/scratch.h"
#include "ops/ops.h"

/* Elements per partial sum; also the threshold below which one thread does it all. */
#define MSE_CHUNK 65536

static double sq_sum(const float *pred, const float *target, size_t i0, size_t i1) {
    double s = 0;
    for (size_t i = i0; i < i1; i++) {
        const double d = (double)pred[i] - (double)target[i];
        s += d * d;
    }
    return s;
}

float mse_forward(const float *pred, const float *target, size_t n) {
    if (n == 0) return 0.0f;
    const size_t nchunk = (n + MSE_CHUNK - 1) / MSE_CHUNK;
    double total = 0;
    if (nchunk == 1) {
        total = sq_sum(pred, target, 0, n);
    } else {
        scratch_mark_t mark = scratch_mark();
        double *part = (double *)scratch_floats(nchunk * 2);   /* 64-byte aligned */
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < nchunk; k++) {
            const size_t i1 = (k + 1) * MSE_CHUNK < n ? (k + 1) * MSE_CHUNK : n;
            part[k] = sq_sum(pred, target, k * MSE_CHUNK, i1);
        }
        for (size_t k = 0; k < nchunk; k++) total += part[k];
        scratch_release(mark);
    }
    return (float)(total / (double)n);
}

/* dpred += dloss * 2 (pred - target) / n. */
void mse_backward(float *dpred, const float *pred, const float *target, size_t n, float dloss) {
    if (!dpred || n == 0) return;
    const float k = (float)(2.0 * (double)dloss / (double)n);
#pragma omp parallel for schedule(static) if (n >= MSE_CHUNK)
    for (size_t i = 0; i < n; i++) dpred[i] += k * (pred[i] - target[i]);
}
