/* Elementwise activations (SiLU, erf GELU, QuickGELU) and diffusers' GEGLU, forward and
 * backward (see ops.h); exp and erf come from ops/fastmath.h so that the loops vectorise.
 * Every output element depends on its own inputs only, so the OpenMP split cannot change
 * any result. */
#include <math.h>
#include <stddef.h>

#include "ops/fastmath.h"
#include "ops/ops.h"

/* Below this many elements the OpenMP fork/join costs more than the work. */
#define ACT_PAR_MIN 32768

#define INV_SQRT2 0.70710678118654752440f
#define INV_SQRT_2PI 0.39894228040143267794f
#define QUICK_GELU_K 1.702f

static inline float sigmoidf(float x) { return sigmoid_approx(x); }

static inline float gelu1(float x) { return 0.5f * x * (1.0f + erf_approx(x * INV_SQRT2)); }

/* d/dx [x Phi(x)] = Phi(x) + x phi(x). */
static inline float gelu_grad1(float x) {
    const float cdf = 0.5f * (1.0f + erf_approx(x * INV_SQRT2));
    const float pdf = INV_SQRT_2PI * exp_approx(-0.5f * x * x);
    return cdf + x * pdf;
}

void silu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = x * sigmoidf(x);
    }
}

/* d/dx [x s(x)] = s (1 + x (1 - s)). */
void silu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i], s = sigmoidf(x);
        dinp[i] += dout[i] * s * (1.0f + x * (1.0f - s));
    }
}

void gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) out[i] = gelu1(inp[i]);
}

void gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) dinp[i] += dout[i] * gelu_grad1(inp[i]);
}

void quick_gelu_forward(float *out, const float *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i];
        out[i] = x * sigmoidf(QUICK_GELU_K * x);
    }
}

/* d/dx [x s(kx)] = s + k x s (1 - s). */
void quick_gelu_backward(float *dinp, const float *dout, const float *inp, size_t n) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
    for (size_t i = 0; i < n; i++) {
        const float x = inp[i], s = sigmoidf(QUICK_GELU_K * x);
        dinp[i] += dout[i] * (s + QUICK_GELU_K * x * s * (1.0f - s));
    }
}

/* inp [N, 2C] = [h | gate] (diffusers' proj(x).chunk(2, dim=-1)), out [N, C]. */
void geglu_forward(float *out, const float *inp, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C >= ACT_PAR_MIN)
    for (long n = 0; n < N; n++) {
        const float *h = inp + (size_t)n * 2 * C, *gate = h + C;
        float *y = out + (size_t)n * C;
        for (int c = 0; c < C; c++) y[c] = h[c] * gelu1(gate[c]);
    }
}

/* dh = dout * gelu(gate), dgate = dout * h * gelu'(gate); both halves land in dinp. */
void geglu_backward(float *dinp, const float *dout, const float *inp, int N, int C) {
    if (!dinp) return;
#pragma omp parallel for schedule(static) if ((size_t)N * C >= ACT_PAR_MIN)
    for (long n = 0; n < N; n++) {
        const float *h = inp + (size_t)n * 2 * C, *gate = h + C;
        const float *dy = dout + (size_t)n * C;
        float *dh = dinp + (size_t)n * 2 * C, *dgate = dh + C;
        for (int c = 0; c < C; c++) {
            const float g = gate[c];
            dh[c] += dy[c] * gelu1(g);
            dgate[c] += dy[c] * h[c] * gelu_grad1(g);
        }
    }
}
