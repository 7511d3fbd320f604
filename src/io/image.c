/* Image files (see image.h): libpng for writing PNG with text chunks, grids, resizing;
 * decoding is in image_decode.c. */
#include "io/image.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "io/outputs.h"

int image_alloc(image_t *img, int w, int h) {
    if (w <= 0 || h <= 0 || (long)w * h > (1L << 28))
        return sd_error(SD_ERR_ARG, "image size %d x %d is out of range", w, h);
    img->w = w, img->h = h;
    img->rgb = calloc((size_t)w * h * 3, 1);
    if (!img->rgb) return sd_error(SD_ERR_NOMEM, "out of memory for a %d x %d image", w, h);
    return SD_OK;
}

void image_free(image_t *img) {
    free(img->rgb);
    img->rgb = NULL, img->w = img->h = 0;
}

static int write_png_stream(FILE *f, const image_t *img, const char *const *keys,
                            const char *const *values, int n_text) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    if (!png) return -1;
    png_infop info = png_create_info_struct(png);
    png_bytep *rows = NULL;
    png_textp text = NULL;
    if (!info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, info ? &info : NULL);
        free(rows);
        free(text);
        return -1;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, img->w, img->h, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) {
        text = calloc((size_t)n_text, sizeof *text);
        if (!text) longjmp(png_jmpbuf(png), 1);
        for (int i = 0; i < n_text; i++) {
            text[i].compression = PNG_TEXT_COMPRESSION_NONE;
            text[i].key = (char *)keys[i];
            text[i].text = (char *)values[i];
        }
        png_set_text(png, info, text, n_text);
    }
    png_write_info(png, info);
    rows = malloc(sizeof(png_bytep) * img->h);
    if (!rows) longjmp(png_jmpbuf(png), 1);
    for (int y = 0; y < img->h; y++) rows[y] = img->rgb + (size_t)y * img->w * 3;
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);
    free(text);
    return 0;
}

int image_save_png(const image_t *img, const char *path, const char *const *keys,
                   const char *const *values, int n_text) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return sd_error(SD_ERR_ARG, "%s: path too long", path);
    int rc = outputs_check(path);   /* a device, a folder or one of our inputs: leave it alone */
    if (rc) return rc;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return sd_error(SD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        close(fd);
        unlink(tmp);
        return sd_error(SD_ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    int bad = write_png_stream(f, img, keys, values, n_text);
    if (!bad) bad = fflush(f) != 0 || fsync(fileno(f)) != 0;
    int err = errno;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        unlink(tmp);
        return sd_error(SD_ERR_IO, "%s: writing PNG failed: %s", path, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        return sd_error(SD_ERR_IO, "%s: cannot rename into place: %s", path, strerror(err));
    }
    return SD_OK;
}

int image_grid(image_t *out, const image_t *imgs, int n, int cols, int pad) {
    if (n <= 0) return sd_error(SD_ERR_ARG, "image grid of no images");
    const int w = imgs[0].w, h = imgs[0].h;
    for (int i = 1; i < n; i++)
        if (imgs[i].w != w || imgs[i].h != h)
            return sd_error(SD_ERR_SHAPE, "image grid: image %d is %dx%d, not %dx%d", i, imgs[i].w, imgs[i].h, w, h);
    if (cols <= 0) cols = (int)ceil(sqrt((double)n));
    if (cols > n) cols = n;
    const int rows = (n + cols - 1) / cols;
    int rc = image_alloc(out, cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad);
    if (rc) return rc;
    memset(out->rgb, 255, (size_t)out->w * out->h * 3);
    for (int i = 0; i < n; i++) {
        const int x0 = pad + (i % cols) * (w + pad), y0 = pad + (i / cols) * (h + pad);
        for (int y = 0; y < h; y++)
            memcpy(out->rgb + ((size_t)(y0 + y) * out->w + x0) * 3, imgs[i].rgb + (size_t)y * w * 3, (size_t)w * 3);
    }
    return SD_OK;
}

/* Separable resampling of one axis: box-filter (area average) when shrinking, bilinear
 * (half-pixel centres, as PIL) when growing. src [n_in] strided, dst [n_out] strided. */
static void resample_axis(float *dst, int n_out, int dstride, const float *src, int n_in, int sstride) {
    const double scale = (double)n_in / n_out;
    for (int o = 0; o < n_out; o++) {
        double acc = 0, wsum = 0;
        if (scale > 1.0) {
            const double a = o * scale, b = a + scale;
            for (int i = (int)floor(a); i < (int)ceil(b) && i < n_in; i++) {
                double wgt = fmin(b, i + 1.0) - fmax(a, (double)i);
                if (wgt > 0) acc += wgt * src[(size_t)i * sstride], wsum += wgt;
            }
        } else {
            double c = (o + 0.5) * scale - 0.5;
            int i0 = (int)floor(c);
            double t = c - i0;
            int ia = i0 < 0 ? 0 : i0, ib = i0 + 1 >= n_in ? n_in - 1 : i0 + 1;
            if (ia >= n_in) ia = n_in - 1;
            acc = (1 - t) * src[(size_t)ia * sstride] + t * src[(size_t)ib * sstride];
            wsum = 1;
        }
        dst[(size_t)o * dstride] = (float)(acc / wsum);
    }
}

void image_crop_box(int w, int h, int size, int center, float ox, float oy, int *rw_out, int *rh_out, int *x0_out,
                    int *y0_out) {
    const double s = (double)size / (w < h ? w : h);
    int rw = (int)lround(w * s), rh = (int)lround(h * s);
    if (rw < size) rw = size;
    if (rh < size) rh = size;
    *rw_out = rw, *rh_out = rh;
    *x0_out = center ? (rw - size) / 2 : (int)lround(ox * (rw - size));
    *y0_out = center ? (rh - size) / 2 : (int)lround(oy * (rh - size));
}

int image_resize_crop(image_t *out, const image_t *in, int size, int center, float ox, float oy) {
    if (size <= 0) return sd_error(SD_ERR_ARG, "resize to %d pixels", size);
    int rw, rh, x0, y0;
    image_crop_box(in->w, in->h, size, center, ox, oy, &rw, &rh, &x0, &y0);
    float *src = malloc(sizeof(float) * in->w * in->h * 3), *tmp = malloc(sizeof(float) * rw * in->h * 3);
    float *dst = malloc(sizeof(float) * rw * rh * 3);
    if (!src || !tmp || !dst) {
        free(src), free(tmp), free(dst);
        return sd_error(SD_ERR_NOMEM, "out of memory resizing a %d x %d image", in->w, in->h);
    }
    for (size_t i = 0; i < (size_t)in->w * in->h * 3; i++) src[i] = in->rgb[i];
    for (int y = 0; y < in->h; y++)
        for (int k = 0; k < 3; k++) resample_axis(tmp + (size_t)y * rw * 3 + k, rw, 3, src + (size_t)y * in->w * 3 + k, in->w, 3);
    for (int x = 0; x < rw; x++)
        for (int k = 0; k < 3; k++) resample_axis(dst + (size_t)x * 3 + k, rh, rw * 3, tmp + (size_t)x * 3 + k, in->h, rw * 3);
    int rc = image_alloc(out, size, size);
    if (!rc)
        for (int y = 0; y < size; y++)
            for (int x = 0; x < size * 3; x++) {
                float v = dst[((size_t)(y0 + y) * rw) * 3 + (size_t)x0 * 3 + x];
                out->rgb[(size_t)y * size * 3 + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lroundf(v));
            }
    free(src), free(tmp), free(dst);
    return rc;
}
