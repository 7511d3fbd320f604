/* Two images composed into the two halves of one (image_compose.h). */
#include "io/image_compose.h"

#include <math.h>
#include <stddef.h>

#include "base/error.h"

static void border_mean(float rgb[3], const image_t *im) {
    double acc[3] = {0, 0, 0};
    long n = 0;
    for (int y = 0; y < im->h; y++)
        for (int x = 0; x < im->w; x++) {
            if (y && y != im->h - 1 && x && x != im->w - 1) continue;
            const uint8_t *p = im->rgb + ((size_t)y * im->w + x) * 3;
            for (int k = 0; k < 3; k++) acc[k] += p[k];
            n++;
        }
    for (int k = 0; k < 3; k++) rgb[k] = (float)(acc[k] / (n ? n : 1));
}

/* Bilinear sample of im at continuous pixel coordinates (centres at +0.5), clamped at the edges. */
static void sample(float out[3], const image_t *im, float fx, float fy) {
    fx -= 0.5f, fy -= 0.5f;
    if (fx < 0) fx = 0;
    if (fy < 0) fy = 0;
    if (fx > im->w - 1) fx = (float)(im->w - 1);
    if (fy > im->h - 1) fy = (float)(im->h - 1);
    const int x0 = (int)fx, y0 = (int)fy;
    const int x1 = x0 + 1 < im->w ? x0 + 1 : x0, y1 = y0 + 1 < im->h ? y0 + 1 : y0;
    const float ax = fx - x0, ay = fy - y0;
    for (int k = 0; k < 3; k++) {
        const float p00 = im->rgb[((size_t)y0 * im->w + x0) * 3 + k], p01 = im->rgb[((size_t)y0 * im->w + x1) * 3 + k];
        const float p10 = im->rgb[((size_t)y1 * im->w + x0) * 3 + k], p11 = im->rgb[((size_t)y1 * im->w + x1) * 3 + k];
        out[k] = (1 - ay) * ((1 - ax) * p00 + ax * p01) + ay * ((1 - ax) * p10 + ax * p11);
    }
}

/* Draws `im` into the rectangle (x0, y0, w, h) of out. */
static void place(image_t *out, const image_t *im, int x0, int y0, int w, int h, int fit) {
    const float sx = (float)w / im->w, sy = (float)h / im->h;
    const float s = fit ? fminf(sx, sy) : fmaxf(sx, sy);   /* output pixels per input pixel */
    const float dw = im->w * s, dh = im->h * s;              /* the drawn size */
    const float ox = (w - dw) * 0.5f, oy = (h - dh) * 0.5f;  /* its offset in the rectangle */
    float bg[3];
    border_mean(bg, im);
    /* area-average when shrinking: average a k x k grid of bilinear samples per output pixel */
    const int ss = s < 1.0f ? (int)ceilf(1.0f / s) : 1;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float acc[3] = {0, 0, 0};
            int inside = 0;
            for (int a = 0; a < ss; a++)
                for (int b = 0; b < ss; b++) {
                    const float px = x + (b + 0.5f) / ss, py = y + (a + 0.5f) / ss;
                    const float ix = (px - ox) / s, iy = (py - oy) / s;
                    float v[3];
                    if (ix < 0 || iy < 0 || ix > im->w || iy > im->h) {
                        v[0] = bg[0], v[1] = bg[1], v[2] = bg[2];
                    } else {
                        sample(v, im, ix, iy);
                        inside++;
                    }
                    for (int k = 0; k < 3; k++) acc[k] += v[k];
                }
            (void)inside;
            uint8_t *o = out->rgb + ((size_t)(y0 + y) * out->w + x0 + x) * 3;
            for (int k = 0; k < 3; k++) {
                const float v = acc[k] / (ss * ss) + 0.5f;
                o[k] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
            }
        }
}

int image_compose_halves(image_t *out, const image_t *a, const image_t *b, int res, int vertical, int fit) {
    int rc = image_alloc(out, res, res);
    if (rc) return rc;
    const int h1 = res / 2, h2 = res - res / 2;
    if (vertical) {
        place(out, a, 0, 0, res, h1, fit);
        place(out, b, 0, h1, res, h2, fit);
    } else {
        place(out, a, 0, 0, h1, res, fit);
        place(out, b, h1, 0, h2, res, fit);
    }
    return SD_OK;
}
