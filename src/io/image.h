/* 8-bit RGB images: reading PNG (libpng) and JPEG (libjpeg-turbo), writing PNG atomically with
 * text chunks (libpng), grids for sample sheets, and resize + crop for training inputs. */
#ifndef SVDIFF_IO_IMAGE_H
#define SVDIFF_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int w, h;
    uint8_t *rgb;   /* [h, w, 3], row-major */
} image_t;

/* Largest image image_load decodes: 2^26 pixels (8192 x 8192). Decoding costs about 7 bytes a
 * pixel, and a header of a few hundred bytes can claim 16383 x 16383 (4 GB and 15 s to decode
 * nothing: fuzz/regressions/image/), so the size is checked before any pixel is decoded. */
#define IMAGE_MAX_PIXELS (1L << 26)

/* PNG (any colour type, bit depth, interlacing, tRNS) or JPEG (grey, RGB, CMYK), found by the
 * file's signature, as 8-bit RGB; alpha is composited on white (emoji, logos), 16-bit samples keep
 * their high byte. Strict: a bad CRC, a palette index past the palette, a truncated or corrupt
 * file is refused, and so is any other format (GIF, BMP, ...). Errors are one line,
 * "<path>: cannot read image (<reason>)". image_decode: the same for n bytes in memory, `name`
 * standing for the path in messages. */
int image_decode(image_t *img, const uint8_t *data, size_t n, const char *name);
int image_load(image_t *img, const char *path);
/* PNG, written to "<path>.tmp.<pid>", fsync'ed and renamed. text: n key/value pairs stored
 * as tEXt chunks (e.g. "parameters" with the generation settings). */
int image_save_png(const image_t *img, const char *path, const char *const *keys,
                   const char *const *values, int n_text);
void image_free(image_t *img);
int image_alloc(image_t *img, int w, int h);   /* zeroed (black) */

/* Sample grid: n images of equal size, `cols` per row (<= 0: about square), pad pixels of
 * white between and around them. */
int image_grid(image_t *out, const image_t *imgs, int n, int cols, int pad);
/* Resize so the shorter side is `size` (area-averaging down, bilinear up), then crop size x
 * size (centre, or at (ox, oy) in [0,1] of the slack when not centred). */
int image_resize_crop(image_t *out, const image_t *in, int size, int center, float ox, float oy);
/* Where image_resize_crop takes its square from a w x h image: the resized size rw x rh (shorter
 * side `size`) and the crop's top-left (x0, y0) in it (SDXL's micro-conditioning records these). */
void image_crop_box(int w, int h, int size, int center, float ox, float oy, int *rw, int *rh, int *x0, int *y0);

#endif
