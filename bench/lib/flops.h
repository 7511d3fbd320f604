/* FLOP counts of a UNet (bench_unet --flops, bench_train_step's GFLOP/s), walked from the
 * model's own stage program, so that they follow the structure of any config (SD 1.5, SDXL). */
#ifndef SVDIFF_BENCH_FLOPS_H
#define SVDIFF_BENCH_FLOPS_H

#include "models/unet.h"

/* The dense-equivalent forward of B samples at H x W latents with T context tokens: every
 * conv / linear as a dense matrix (proj_in / proj_out counted as linears), attention's QK^T
 * and PV. */
typedef struct { double conv, linear, attn; } flops_t;
void count_flops(flops_t *f, const unet_t *m, int B, int H, int W, int T);
double flops_total(const flops_t *f);

/* The products an SVDiff training step executes (every conv / linear spectral with factors
 * only, gradients of the shifts only), as src/weights/ chooses them: per layer, W_eff =
 * U diag(c) V^T baked then applied densely where spectral_prefer_baked says so for its n
 * output positions, else the factored form (z = V^T x, then U z). Backward: g = U^T dy and
 * z = V^T x (recomputed) for d delta and, where the input gradient is needed (not for conv_in,
 * the embeddings' first linears, the context's to_k / to_v), through the re-baked W_eff or
 * V (c * g). Attention: QK^T and PV forward; QK^T again, dP, dV, dQ, dK backward. */
typedef struct {
    double fwd, bwd, bake, attn_fwd, attn_bwd;   /* layers forward / backward (bake included), attention */
    int n_baked, n_factored;
} train_flops_t;
void count_train_flops(train_flops_t *f, const unet_t *m, int B, int H, int W, int T);
double train_flops_total(const train_flops_t *f);

#endif
