/* The UNet's time embedding (unet.h), after diffusers embeddings.py: Timesteps (sinusoidal
 * features of the timestep, get_timestep_embedding) and TimestepEmbedding (linear_1, SiLU,
 * linear_2), forward and backward. */
#include "models/unet.h"
#include "models/unet_internal.h"
#include "ops/ops.h"

void unet_timesteps_forward(float *t_sin, const float *timesteps, const unet_config_t *c, int B) {
    timestep_embedding_forward(t_sin, timesteps, B, c->block_out_channels[0], c->flip_sin_to_cos, c->freq_shift,
                               10000.0f);
}

void unet_timestep_embedding_forward(float *emb, float *h, float *act, const float *t_sin,
                                     const layer_t *linear_1, const layer_t *linear_2, int B) {
    unet_linear_forward(h, t_sin, linear_1, B);
    silu_forward(act, h, (size_t)B * linear_1->out);
    unet_linear_forward(emb, act, linear_2, B);
}

void unet_timestep_embedding_backward(float *dt_sin, unet_grads_t *g, const float *demb, const float *t_sin,
                                      const float *h, const float *act, const layer_t *linear_1,
                                      const layer_t *linear_2, int B) {
    const size_t nh = (size_t)B * linear_1->out;
    scratch_mark_t mark = scratch_mark();
    float *dact = zeros(nh), *dh = zeros(nh);
    unet_linear_backward(dact, g, demb, act, linear_2, B);
    silu_backward(dh, dact, h, nh);
    unet_linear_backward(dt_sin, g, dh, t_sin, linear_1, B);
    scratch_release(mark);
}
