/* Vectorisable float exp and erf for the elementwise ops (attention's softmax, SiLU, GELU).
 * glibc's expf/erff are scalar calls without -ffast-math, so a loop calling them runs one
 * element at a time; in a training step of the default model they cost more than a fifth of
 * the time (perf, issue 7). These are plain inline arithmetic (no tables, no branches the
 * compiler cannot turn into blends), so -O3 -march=native vectorises the loops around them. */
#ifndef SVDIFF_OPS_FASTMATH_H
#define SVDIFF_OPS_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x) to about 1.5 ulp. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a
 * degree-7 Taylor polynomial (truncation error < 6e-9) and 2^n built in the exponent bits.
 * Finite arguments are clamped to [-87, 88], where 2^n stays a normal float; below -87 the
 * result (~1e-38) stands in for anything smaller. Special values: exp(NaN) = NaN,
 * exp(+Inf) = +Inf, exp(-Inf) = 0 (blends after the arithmetic, so finite results keep their
 * bytes and the loops stay branch-free). n is taken from the bits of t rather than by a
 * float-to-int conversion, and 2^n is assembled in unsigned arithmetic: a NaN argument (whose
 * conversion to int would be undefined, then a left shift of a negative value) stays defined. */
static inline float exp_approx(float x0) {
    const float x = x0 < -87.0f ? -87.0f : (x0 > 88.0f ? 88.0f : x0);   /* NaN passes through */
    const float t = x * 1.44269504088896341f + 12582912.0f;  /* + 1.5 * 2^23 rounds to integer */
    const float n = t - 12582912.0f;
    float r = x - n * 0.693359375f;  /* ln2 split in a short high part and the rest */
    r = r - n * -2.12194440e-4f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* t = 1.5 * 2^23 + n with |n| < 2^22, so its low mantissa bits hold n: bits(t) - bits(1.5 * 2^23) */
    uint32_t tbits;
    memcpy(&tbits, &t, sizeof tbits);
    const uint32_t bits = (tbits - 0x4B400000u + 127u) << 23;
    float pow2n;
    memcpy(&pow2n, &bits, sizeof pow2n);
    float e = p * pow2n;   /* NaN when x0 is NaN: r, hence p, is NaN */
    e = x0 == INFINITY ? INFINITY : e;
    e = x0 == -INFINITY ? 0.0f : e;
    return e;
}

/* 1 / (1 + exp(-x)); for finite x < -88 it returns ~1e-38 instead of the true smaller value;
 * sigmoid(+Inf) = 1, sigmoid(-Inf) = 0, NaN stays NaN. */
static inline float sigmoid_approx(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

/* erf(x) with absolute error below 3e-7 (measured against erf in double over [-10, 10] by
 * tests/test_ops_misc.c: 2.2e-7). The Chebyshev-fitted form of erfc from Numerical Recipes (2nd ed.,
 * section 6.2: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), fractional error < 1.2e-7
 * for z >= 0), mirrored for negative x; one division and one exp, no branches.
 * erf(+-Inf) = +-1 (t = 0 and exp(-Inf) = 0), NaN stays NaN. */
static inline float erf_approx(float x) {
    const float z = x < 0.0f ? -x : x;
    const float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    const float erfc_z = t * exp_approx(p - z * z);
    const float e = 1.0f - erfc_z;
    return x < 0.0f ? -e : e;
}

#endif
