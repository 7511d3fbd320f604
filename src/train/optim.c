/* AdamW and gradient-norm clipping (see optim.h); the arithmetic mirrors torch.optim.AdamW. */
#include "train/optim.h"

#include <math.h>

adamw_config_t adamw_defaults(void) {
    adamw_config_t c = {1e-3f, 0.9f, 0.999f, 1e-8f, 1e-2f};
    return c;
}

void adamw_step(float *param, const float *grad, float *m, float *v, size_t n, int t,
                const adamw_config_t *cfg) {
    const double bc1 = 1.0 - pow(cfg->beta1, t), bc2 = 1.0 - pow(cfg->beta2, t);
    const float step = (float)(cfg->lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float decay = 1.0f - cfg->lr * cfg->weight_decay;
    for (size_t i = 0; i < n; i++) {
        const float g = grad[i];
        m[i] = cfg->beta1 * m[i] + (1.0f - cfg->beta1) * g;
        v[i] = cfg->beta2 * v[i] + (1.0f - cfg->beta2) * g * g;
        param[i] = param[i] * decay - step * m[i] / (sqrtf(v[i]) / bc2_sqrt + cfg->eps);
    }
}

double clip_grad_norm(float **grads, const size_t *sizes, int count, double max_norm) {
    double sq = 0.0;
    for (int k = 0; k < count; k++)
        for (size_t i = 0; i < sizes[k]; i++) sq += (double)grads[k][i] * grads[k][i];
    const double norm = sqrt(sq);
    if (norm > max_norm) {
        const float s = (float)(max_norm / (norm + 1e-6));
        for (int k = 0; k < count; k++)
            for (size_t i = 0; i < sizes[k]; i++) grads[k][i] *= s;
    }
    return norm;
}
