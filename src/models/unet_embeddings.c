/* The UNet's time embedding (unet.h), after diffusers embeddings.py: Timesteps (sinusoidal
 * features of the timestep, get_timestep_embedding) and TimestepEmbedding (linear_1, SiLU,
 * linear_2), forward and backward; and SDXL's added conditioning (unets/unet_2d_condition.py,
 * addition_embed_type "text_time"): the time ids through Timesteps (add_time_proj), concatenated
 * after the pooled text embedding, through a TimestepEmbedding (add_embedding). */
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

void unet_add_embedding_forward(float *emb, float *add_in, float *h, float *act, const unet_added_cond_t *added,
                                const unet_t *m, int B) {
    const unet_config_t *c = &m->cfg;
    const int Dt = c->addition_text_embeds_dim, Din = c->addition_embed_in, dim = c->addition_time_embed_dim;
    for (int b = 0; b < B; b++) {
        float *row = add_in + (size_t)b * Din;
        memcpy(row, added->text_embeds + (size_t)b * Dt, (size_t)Dt * sizeof(float));
        /* the 6 ids of this row, each a run of `dim` features: time_ids.flatten() -> reshape(B, -1) */
        timestep_embedding_forward(row + Dt, added->time_ids + (size_t)b * UNET_N_TIME_IDS, UNET_N_TIME_IDS, dim,
                                   c->flip_sin_to_cos, c->freq_shift, 10000.0f);
    }
    unet_timestep_embedding_forward(emb, h, act, add_in, &m->add_linear_1, &m->add_linear_2, B);
}

void unet_add_embedding_backward(float *dtext_embeds, unet_grads_t *g, const float *demb, const float *add_in,
                                 const float *h, const float *act, const unet_t *m, int B) {
    const unet_config_t *c = &m->cfg;
    const int Dt = c->addition_text_embeds_dim, Din = c->addition_embed_in;
    scratch_mark_t mark = scratch_mark();
    float *din = dtext_embeds ? zeros((size_t)B * Din) : NULL;
    unet_timestep_embedding_backward(din, g, demb, add_in, h, act, &m->add_linear_1, &m->add_linear_2, B);
    if (din)
        for (int b = 0; b < B; b++) add_into(dtext_embeds + (size_t)b * Dt, din + (size_t)b * Din, (size_t)Dt);
    scratch_release(mark);
}
