/* Resampling and layout operators of the UNet/VAE: nearest-neighbour 2x upsampling and
 * channel concatenation (skip connections), forward and backward (see ops.h). Pure data
 * movement and fixed-order 4-term sums: deterministic for any thread count. */
#include <stddef.h>
#include <string.h>

#include "ops/ops.h"

/* Below this many elements the OpenMP fork/join costs more than the work. */
#define RESAMPLE_PAR_MIN 32768

/* inp [B, C, H, W] -> out [B, C, 2H, 2W], out[.., y, x] = inp[.., y/2, x/2]. */
void upsample_nearest2x_forward(float *out, const float *inp, int B, int C, int H, int W) {
    const long planes = (long)B * C;
    const size_t ow = 2 * (size_t)W;
#pragma omp parallel for schedule(static) if ((size_t)planes * H * W >= RESAMPLE_PAR_MIN)
    for (long p = 0; p < planes; p++) {
        const float *x = inp + (size_t)p * H * W;
        float *y = out + (size_t)p * 4 * H * W;
        for (int i = 0; i < H; i++) {
            float *row = y + (size_t)2 * i * ow;
            for (int j = 0; j < W; j++) row[2 * j] = row[2 * j + 1] = x[(size_t)i * W + j];
            memcpy(row + ow, row, ow * sizeof(float));   /* the odd output row repeats it */
        }
    }
}

/* dinp [B, C, H, W] += the sum of the 2x2 block of dout [B, C, 2H, 2W] each input fed. */
void upsample_nearest2x_backward(float *dinp, const float *dout, int B, int C, int H, int W) {
    if (!dinp) return;
    const long planes = (long)B * C;
    const size_t ow = 2 * (size_t)W;
#pragma omp parallel for schedule(static) if ((size_t)planes * H * W >= RESAMPLE_PAR_MIN)
    for (long p = 0; p < planes; p++) {
        const float *dy = dout + (size_t)p * 4 * H * W;
        float *dx = dinp + (size_t)p * H * W;
        for (int i = 0; i < H; i++) {
            const float *r0 = dy + (size_t)2 * i * ow, *r1 = r0 + ow;
            for (int j = 0; j < W; j++)
                dx[(size_t)i * W + j] += (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]);
        }
    }
}

/* a [B, Ca, S], b [B, Cb, S] -> out [B, Ca+Cb, S]: per image, a's channels then b's. */
void concat_channels_forward(float *out, const float *a, const float *b, int B, int Ca, int Cb, int S) {
    const size_t na = (size_t)Ca * S, nb = (size_t)Cb * S;
#pragma omp parallel for schedule(static) if ((size_t)B * (na + nb) >= 4 * RESAMPLE_PAR_MIN)
    for (long i = 0; i < B; i++) {
        float *y = out + (size_t)i * (na + nb);
        memcpy(y, a + (size_t)i * na, na * sizeof(float));
        memcpy(y + na, b + (size_t)i * nb, nb * sizeof(float));
    }
}

void concat_channels_backward(float *da, float *db, const float *dout, int B, int Ca, int Cb, int S) {
    const size_t na = (size_t)Ca * S, nb = (size_t)Cb * S;
    for (int i = 0; i < B; i++) {
        const float *dy = dout + (size_t)i * (na + nb);
        if (da) {
            float *d = da + (size_t)i * na;
#pragma omp parallel for schedule(static) if (na >= RESAMPLE_PAR_MIN)
            for (size_t k = 0; k < na; k++) d[k] += dy[k];
        }
        if (db) {
            float *d = db + (size_t)i * nb;
            const float *s = dy + na;
#pragma omp parallel for schedule(static) if (nb >= RESAMPLE_PAR_MIN)
            for (size_t k = 0; k < nb; k++) d[k] += s[k];
        }
    }
}
