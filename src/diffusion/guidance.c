/* Classifier-free guidance: out = uncond + g (cond - uncond) on the model output (eps or v),
 * with the batched [uncond; cond] layout the sampling driver uses for one model call. */
#include "diffusion/diffusion.h"

void cfg_combine(float *out, const float *uncond, const float *cond, float g, size_t n) {
    #pragma omp parallel for schedule(static) if (n >= 65536)
    for (size_t i = 0; i < n; i++) out[i] = uncond[i] + g * (cond[i] - uncond[i]);
}

/* model_out[2B, n]: rows [0, B) unconditional, [B, 2B) conditional -> out[B, n]. Element i of
 * out only reads element i of each half, so out may be the uncond half itself. */
void cfg_combine_batched(float *out, const float *model_out, int B, size_t n, float g) {
    size_t half = (size_t)B * n;
    cfg_combine(out, model_out, model_out + half, g, half);
}
