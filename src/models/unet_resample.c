/* The UNet's resamplers (unet.h), after diffusers downsampling.py / upsampling.py with
 * use_conv: Downsample2D (a stride-2 conv) and Upsample2D (nearest 2x, then a conv), forward
 * and backward. */
#include "base/scratch.h"
#include "models/unet.h"
#include "models/unet_internal.h"
#include "ops/ops.h"

void unet_downsample2d_forward(float *out, const float *x, const layer_t *conv, int B, int H, int W) {
    unet_conv_forward(out, x, conv, B, H, W);
}

void unet_downsample2d_backward(float *dx, unet_grads_t *g, const float *dout, const float *x,
                                const layer_t *conv, int B, int H, int W) {
    unet_conv_backward(dx, g, dout, x, conv, B, H, W);
}

void unet_upsample2d_forward(float *out, const float *x, const layer_t *conv, int B, int H, int W) {
    const int C = conv->in;
    scratch_mark_t mark = scratch_mark();
    float *up = scratch_floats((size_t)B * C * 4 * H * W);
    upsample_nearest2x_forward(up, x, B, C, H, W);
    unet_conv_forward(out, up, conv, B, 2 * H, 2 * W);
    scratch_release(mark);
}

void unet_upsample2d_backward(float *dx, unet_grads_t *g, const float *dout, const float *x,
                              const layer_t *conv, int B, int H, int W) {
    const int C = conv->in;
    const size_t nu = (size_t)B * C * 4 * H * W;
    scratch_mark_t mark = scratch_mark();
    float *up = scratch_floats(nu), *dup = zeros(nu);
    upsample_nearest2x_forward(up, x, B, C, H, W);
    unet_conv_backward(dup, g, dout, up, conv, B, 2 * H, 2 * W);
    upsample_nearest2x_backward(dx, dup, B, C, H, W);
    scratch_release(mark);
}
