/* Image files (see image.h): stb_image for decoding, libpng for PNG with text chunks. */
#include "io/image.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stb/stb_image.h>

#include "base/error.h"

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

/* 1 if the file starts with the PNG or the JPEG signature. svdiff reads only these: Debian's
 * stb_image also takes PNM, BMP, GIF, TGA, PSD, HDR and PIC, and its PNM reader fills the pixels
 * of a truncated file from uninitialised memory (a 13-byte "P6 72 76 777" decodes; a fuzzed one
 * read out of bounds under ASan: fuzz/regressions/image/). */
static int png_or_jpeg(const unsigned char *sig, size_t n) {
    return (n == 8 && !memcmp(sig, "\x89PNG\r\n\x1a\n", 8)) || (n >= 3 && sig[0] == 0xff && sig[1] == 0xd8 && sig[2] == 0xff);
}

/* 0 if a chunk of the PNG file f claims more bytes than the file has left (a truncated or
 * corrupt file): stb_image grows its IDAT buffer to the length a chunk claims, so a 300-byte
 * file made it allocate 2 GB before finding out (fuzz/regressions/image/). Stops at IEND. */
static int png_chunks_fit(FILE *f) {
    if (fseek(f, 0, SEEK_END)) return 0;
    const long size = ftell(f);
    unsigned char h[8];
    for (long at = 8; at + 8 <= size;) {
        if (fseek(f, at, SEEK_SET) || fread(h, 1, 8, f) != 8) return 0;
        const long len = (long)((uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3]);
        if (at + 12 + len > size) return 0;   /* length, type, data, CRC */
        if (!memcmp(h + 4, "IEND", 4)) break;
        at += 12 + len;
    }
    return 1;
}

int image_load(image_t *img, const char *path) {
    int w, h, c;
    memset(img, 0, sizeof *img);
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (%s)", path, strerror(errno));
    unsigned char sig[8] = {0};
    const size_t n = fread(sig, 1, sizeof sig, f);
    const int ok = png_or_jpeg(sig, n), fits = !ok || sig[0] != 0x89 || png_chunks_fit(f);
    fclose(f);
    if (!ok) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (not a PNG or JPEG file)", path);
    if (!fits) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (truncated PNG: a chunk runs past the end of the file)", path);
    if (stbi_info(path, &w, &h, &c) && (long)w * h > IMAGE_MAX_PIXELS)
        return sd_error(SD_ERR_FORMAT, "%s: image is %d x %d pixels, more than the %ld this program reads", path, w,
                        h, IMAGE_MAX_PIXELS);
    unsigned char *px = stbi_load(path, &w, &h, &c, 4);
    if (!px) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (%s)", path, stbi_failure_reason());
    int rc = image_alloc(img, w, h);
    if (rc) {
        stbi_image_free(px);
        return rc;
    }
    for (size_t i = 0; i < (size_t)w * h; i++) {
        const unsigned a = px[4 * i + 3];
        for (int k = 0; k < 3; k++)  /* composite on white: c*a + 255*(1-a), rounded */
            img->rgb[3 * i + k] = (uint8_t)((px[4 * i + k] * a + 255u * (255u - a) + 127u) / 255u);
    }
    stbi_image_free(px);
    return SD_OK;
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

int image_resize_crop(image_t *out, const image_t *in, int size, int center, float ox, float oy) {
    if (size <= 0) return sd_error(SD_ERR_ARG, "resize to %d pixels", size);
    const double s = (double)size / (in->w < in->h ? in->w : in->h);
    int rw = (int)lround(in->w * s), rh = (int)lround(in->h * s);
    if (rw < size) rw = size;
    if (rh < size) rh = size;
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
    const int x0 = center ? (rw - size) / 2 : (int)lround(ox * (rw - size));
    const int y0 = center ? (rh - size) / 2 : (int)lround(oy * (rh - size));
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
