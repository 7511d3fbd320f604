/* Sinusoidal timestep embedding (diffusers' get_timestep_embedding, scale 1) and its
 * derivative with respect to the timesteps (see ops.h). The frequencies are formed in
 * float in the same order as diffusers so that large timesteps round the same way. */
#include <math.h>
#include <stddef.h>

#include "base/error.h"
#include "base/scratch.h"
#include "ops/ops.h"

/* freq[i] = exp(-ln(max_period) * i / (half - freq_shift)), float arithmetic as torch:
 * exponent = (-log(P) * arange(half)) / (half - shift), then exp. */
static void frequencies(float *freq, int half, float freq_shift, float max_period) {
    const float neg_log_p = (float)(-log((double)max_period));
    const float denom = (float)half - freq_shift;
    for (int i = 0; i < half; i++) freq[i] = expf(neg_log_p * (float)i / denom);
}

/* t [B] -> out [B, dim]: [sin(t f), cos(t f)], halves swapped when flip_sin_to_cos. */
void timestep_embedding_forward(float *out, const float *t, int B, int dim,
                                int flip_sin_to_cos, float freq_shift, float max_period) {
    SD_CHECK(dim > 0 && dim % 2 == 0, "timestep_embedding: dim=%d must be even", dim);
    const int half = dim / 2;
    scratch_mark_t mark = scratch_mark();
    float *freq = scratch_floats((size_t)half);
    frequencies(freq, half, freq_shift, max_period);
    const int sin_off = flip_sin_to_cos ? half : 0, cos_off = flip_sin_to_cos ? 0 : half;
    for (int b = 0; b < B; b++) {
        float *y = out + (size_t)b * dim;
        for (int i = 0; i < half; i++) {
            const float arg = t[b] * freq[i];
            y[sin_off + i] = sinf(arg);
            y[cos_off + i] = cosf(arg);
        }
    }
    scratch_release(mark);
}

/* d sin(t f)/dt = f cos(t f), d cos(t f)/dt = -f sin(t f); summed over the row in double. */
void timestep_embedding_backward(float *dt, const float *dout, const float *t, int B, int dim,
                                 int flip_sin_to_cos, float freq_shift, float max_period) {
    if (!dt) return;
    SD_CHECK(dim > 0 && dim % 2 == 0, "timestep_embedding: dim=%d must be even", dim);
    const int half = dim / 2;
    scratch_mark_t mark = scratch_mark();
    float *freq = scratch_floats((size_t)half);
    frequencies(freq, half, freq_shift, max_period);
    const int sin_off = flip_sin_to_cos ? half : 0, cos_off = flip_sin_to_cos ? 0 : half;
    for (int b = 0; b < B; b++) {
        const float *dy = dout + (size_t)b * dim;
        double acc = 0;
        for (int i = 0; i < half; i++) {
            const float arg = t[b] * freq[i];
            acc += (double)freq[i] * ((double)dy[sin_off + i] * cosf(arg) -
                                      (double)dy[cos_off + i] * sinf(arg));
        }
        dt[b] += (float)acc;
    }
    scratch_release(mark);
}
