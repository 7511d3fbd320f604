/* AdamW (decoupled weight decay, as torch.optim.AdamW) over one parameter array. */
#ifndef SVDIFF_TRAIN_OPTIM_H
#define SVDIFF_TRAIN_OPTIM_H

#include <stddef.h>

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} adamw_config_t;

/* The reference trainer's defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, decay 1e-2. */
adamw_config_t adamw_defaults(void);

/* One update at step t (1-based) of param[n] with gradient grad[n] and moments m, v (zeroed
 * before step 1):  p -= lr * wd * p;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;
 *                  p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps). */
void adamw_step(float *param, const float *grad, float *m, float *v, size_t n, int t,
                const adamw_config_t *cfg);

/* Global L2 norm of several gradient arrays and in-place clipping to max_norm (as
 * torch.nn.utils.clip_grad_norm_, scale max_norm / (norm + 1e-6) when norm > max_norm).
 * Returns the norm before clipping. */
double clip_grad_norm(float **grads, const size_t *sizes, int count, double max_norm);

#endif
