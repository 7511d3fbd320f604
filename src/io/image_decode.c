/* Image decoding (image.h image_load / image_decode): PNG through libpng, JPEG through
 * libjpeg-turbo, both strict. Every error and every warning that means made-up pixels (a bad
 * CRC, a palette index past the palette, a file cut short) refuses the image with one line that
 * names the file, because a loosely decoded image silently changes what a run learns.
 * Both libraries report errors by calling back into us; the callbacks longjmp out, so every
 * buffer lives in a context struct owned by the caller of the setjmp function, and that
 * function changes none of its own locals after setjmp. */
#include "io/image.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jpeglib.h>   /* after stdio.h: it uses FILE and size_t */
#include <jerror.h>

#include "base/error.h"
#include "io/outputs.h"

#define MAX_FILE_BYTES ((size_t)1 << 30)   /* no training image comes near; refuses /dev/zero and the like */
#define MAX_PIXELS ((size_t)IMAGE_MAX_PIXELS)   /* image.h: checked before decoding */

typedef struct {
    jmp_buf jmp;
    char why[JMSG_LENGTH_MAX + 64];   /* the library's reason, for the one-line error */
    const uint8_t *data;
    size_t n, pos;                     /* PNG read position */
    uint8_t *px;                       /* decoded pixels, channels per pixel = ch */
    uint8_t **rows;                    /* row pointers into px (PNG) */
    int w, h, ch;
} decode_t;

static void decode_free(decode_t *d) {
    free(d->px), free(d->rows);
    d->px = NULL, d->rows = NULL;
}

static int size_ok(decode_t *d, size_t w, size_t h) {
    if (w == 0 || h == 0 || w * h > MAX_PIXELS) {
        snprintf(d->why, sizeof d->why, "image is %zu x %zu pixels; this program reads 1 to %zu pixels", w, h,
                 MAX_PIXELS);
        return 0;
    }
    return 1;
}

/* ---- PNG ---- */

static void png_on_error(png_structp png, png_const_charp msg) {
    decode_t *d = png_get_error_ptr(png);
    snprintf(d->why, sizeof d->why, "PNG: %s", msg);
    longjmp(d->jmp, 1);
}

/* Warnings are about chunks libpng skipped or repaired harmlessly; the harmful cases are made
 * errors below (CRC action, palette check), so warnings stay quiet. */
static void png_on_warning(png_structp png, png_const_charp msg) { (void)png, (void)msg; }

static void png_read_mem(png_structp png, png_bytep out, size_t n) {
    decode_t *d = png_get_io_ptr(png);
    if (n > d->n - d->pos) png_error(png, "the file ends early (truncated)");
    memcpy(out, d->data + d->pos, n);
    d->pos += n;
}

/* Decodes into d->px as 8-bit RGB (ch 3) or RGBA (ch 4), the same values stb_image gave
 * before (16-bit samples keep their high byte, low bit depths are scaled to 0..255, tRNS
 * becomes alpha, no gamma). Returns 0, or -1 with d->why set. */
static int png_decode(decode_t *d) {
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, d, png_on_error, png_on_warning);
    if (!png) return snprintf(d->why, sizeof d->why, "PNG: out of memory"), -1;
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return snprintf(d->why, sizeof d->why, "PNG: out of memory"), -1;
    }
    if (setjmp(d->jmp)) {
        png_destroy_read_struct(&png, &info, NULL);
        decode_free(d);
        return -1;
    }
    png_set_read_fn(png, d, png_read_mem);
    /* a bad CRC in any chunk, critical or ancillary, is damage: refuse the file */
    png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);
    const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (!size_ok(d, w, h)) longjmp(d->jmp, 1);
    d->w = (int)w, d->h = (int)h;
    png_colorp palette = NULL;
    int n_palette = 0;
    if (color == PNG_COLOR_TYPE_PALETTE) {
        /* indices are mapped here, not by libpng, so that an index past the palette is seen */
        if (!png_get_PLTE(png, info, &palette, &n_palette) || n_palette <= 0)
            png_error(png, "palette image without a palette");
        png_set_packing(png);   /* 1, 2, 4-bit indices to one byte each */
    } else {
        if (depth == 16) png_set_strip_16(png);
        if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
        if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
        if (!(color & PNG_COLOR_MASK_COLOR)) png_set_gray_to_rgb(png);
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    d->ch = png_get_channels(png, info);
    const size_t rowbytes = png_get_rowbytes(png, info);
    const int want = color == PNG_COLOR_TYPE_PALETTE ? 1 : (d->ch == 3 || d->ch == 4) ? d->ch : -1;
    if (png_get_bit_depth(png, info) != 8 || d->ch != want || rowbytes != (size_t)w * (size_t)d->ch)
        png_error(png, "unexpected pixel layout after conversion");
    d->px = malloc(rowbytes * h);
    d->rows = malloc(sizeof *d->rows * h);
    if (!d->px || !d->rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < h; y++) d->rows[y] = d->px + (size_t)y * rowbytes;
    png_read_image(png, d->rows);
    png_read_end(png, NULL);   /* the chunks after the pixels: their CRCs and IEND */
    if (color == PNG_COLOR_TYPE_PALETTE) {
        png_bytep trans = NULL;
        int n_trans = 0;
        if (png_get_valid(png, info, PNG_INFO_tRNS)) png_get_tRNS(png, info, &trans, &n_trans, NULL);
        uint8_t *rgba = malloc((size_t)w * h * 4);
        if (!rgba) png_error(png, "out of memory");
        for (size_t i = 0; i < (size_t)w * h; i++) {
            const int k = d->px[i];
            if (k >= n_palette) {
                free(rgba);
                snprintf(d->why, sizeof d->why, "PNG: palette index %d is past the %d-entry palette", k, n_palette);
                longjmp(d->jmp, 1);
            }
            rgba[4 * i] = palette[k].red, rgba[4 * i + 1] = palette[k].green, rgba[4 * i + 2] = palette[k].blue;
            rgba[4 * i + 3] = k < n_trans ? trans[k] : 255;
        }
        free(d->px);
        d->px = rgba, d->ch = 4;
    }
    png_destroy_read_struct(&png, &info, NULL);
    free(d->rows), d->rows = NULL;
    return 0;
}

/* ---- JPEG ---- */

typedef struct {
    struct jpeg_error_mgr pub;   /* first: libjpeg hands us a pointer to it */
    decode_t *d;
} jpeg_err_t;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err_t *e = (jpeg_err_t *)cinfo->err;
    char msg[JMSG_LENGTH_MAX];
    cinfo->err->format_message(cinfo, msg);
    snprintf(e->d->why, sizeof e->d->why, "JPEG: %s", msg);
    longjmp(e->d->jmp, 1);
}

/* libjpeg only warns when data is corrupt or cut short, and then fills in grey: those warnings
 * are errors here. The few that leave the pixels intact stay quiet. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return;   /* trace messages */
    switch (cinfo->err->msg_code) {
    case JWRN_EXTRANEOUS_DATA:   /* junk bytes between markers, skipped */
    case JWRN_JFIF_MAJOR:
    case JWRN_ADOBE_XFORM:
    case JWRN_BOGUS_ICC:         /* a bad colour profile marker, which we do not use */
        return;
    default:
        jpeg_on_error(cinfo);
    }
}

/* Decodes into d->px as 8-bit RGB (ch 3); CMYK / YCCK files are converted from CMYK
 * (inverted when an Adobe marker says so, as Photoshop writes them). cinfo and its error
 * manager belong to the caller (jpeg_decode), so they are intact after a longjmp. */
static int jpeg_run(decode_t *d, struct jpeg_decompress_struct *cinfo, jpeg_err_t *err) {
    cinfo->err = jpeg_std_error(&err->pub);
    err->pub.error_exit = jpeg_on_error;
    err->pub.emit_message = jpeg_on_message;
    err->d = d;
    jpeg_create_decompress(cinfo);
    if (setjmp(d->jmp)) {
        jpeg_destroy_decompress(cinfo);
        decode_free(d);
        return -1;
    }
    jpeg_mem_src(cinfo, d->data, (unsigned long)d->n);
    jpeg_read_header(cinfo, TRUE);
    const int cmyk = cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK;
    cinfo->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    if (!size_ok(d, cinfo->image_width, cinfo->image_height)) longjmp(d->jmp, 1);
    jpeg_start_decompress(cinfo);
    d->w = (int)cinfo->output_width, d->h = (int)cinfo->output_height, d->ch = 3;
    if (cinfo->output_components != (cmyk ? 4 : 3)) ERREXIT(cinfo, JERR_CONVERSION_NOTIMPL);
    const size_t w = (size_t)d->w;
    d->px = malloc(w * d->h * 3 + (cmyk ? w * 4 : 0));   /* + one CMYK row */
    if (!d->px) ERREXIT1(cinfo, JERR_OUT_OF_MEMORY, 0);
    uint8_t *cmyk_row = d->px + w * d->h * 3;
    while (cinfo->output_scanline < cinfo->output_height) {
        uint8_t *out = d->px + (size_t)cinfo->output_scanline * w * 3;
        JSAMPROW row = cmyk ? cmyk_row : out;
        jpeg_read_scanlines(cinfo, &row, 1);
        if (!cmyk) continue;
        for (size_t x = 0; x < w; x++) {
            const unsigned k = cmyk_row[4 * x + 3];
            for (int c = 0; c < 3; c++) {
                const unsigned v = cmyk_row[4 * x + c];
                out[3 * x + c] = (uint8_t)(cinfo->saw_Adobe_marker ? (v * k + 127) / 255
                                                                   : ((255 - v) * (255 - k) + 127) / 255);
            }
        }
    }
    jpeg_finish_decompress(cinfo);
    jpeg_destroy_decompress(cinfo);
    return 0;
}

static int jpeg_decode(decode_t *d) {
    struct jpeg_decompress_struct cinfo;
    jpeg_err_t err;
    return jpeg_run(d, &cinfo, &err);
}

/* ---- entry points ---- */

static const char *other_format(const uint8_t *p, size_t n) {
    if (n >= 6 && (!memcmp(p, "GIF87a", 6) || !memcmp(p, "GIF89a", 6))) return "a GIF";
    if (n >= 2 && !memcmp(p, "BM", 2)) return "a BMP";
    if (n >= 12 && !memcmp(p, "RIFF", 4) && !memcmp(p + 8, "WEBP", 4)) return "a WebP";
    if (n >= 4 && (!memcmp(p, "II*\0", 4) || !memcmp(p, "MM\0*", 4))) return "a TIFF";
    if (n >= 4 && !memcmp(p, "8BPS", 4)) return "a Photoshop";
    return NULL;
}

int image_decode(image_t *img, const uint8_t *data, size_t n, const char *name) {
    memset(img, 0, sizeof *img);
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    decode_t d = {.data = data, .n = n};
    int bad;
    if (n >= 8 && !memcmp(data, png_sig, 8)) {
        bad = png_decode(&d);
    } else if (n >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) {
        bad = jpeg_decode(&d);
    } else {
        const char *other = other_format(data, n);
        if (!n) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (the file is empty)", name);
        if (other)
            return sd_error(SD_ERR_FORMAT, "%s: cannot read image (%s file; svdiff reads PNG and JPEG)", name, other);
        return sd_error(SD_ERR_FORMAT, "%s: cannot read image (not a PNG or JPEG file)", name);
    }
    if (bad) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (%s)", name, d.why);
    int rc = image_alloc(img, d.w, d.h);
    if (rc) {
        decode_free(&d);
        return rc;
    }
    const size_t np = (size_t)d.w * d.h;
    if (d.ch == 3) {
        memcpy(img->rgb, d.px, np * 3);
    } else {
        for (size_t i = 0; i < np; i++) {
            const unsigned a = d.px[4 * i + 3];
            for (int k = 0; k < 3; k++)   /* composite on white: c*a + 255*(1-a), rounded */
                img->rgb[3 * i + k] = (uint8_t)((d.px[4 * i + k] * a + 255u * (255u - a) + 127u) / 255u);
        }
    }
    decode_free(&d);
    return SD_OK;
}

int image_load(image_t *img, const char *path) {
    memset(img, 0, sizeof *img);
    FILE *f = fopen(path, "rb");
    if (!f) return sd_error(SD_ERR_FORMAT, "%s: cannot read image (%s)", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return sd_error(SD_ERR_FORMAT, "%s: cannot read image (not a regular file)", path);
    }
    if ((size_t)st.st_size > MAX_FILE_BYTES) {
        fclose(f);
        return sd_error(SD_ERR_FORMAT, "%s: cannot read image (%lld bytes: larger than 1 GiB)", path,
                        (long long)st.st_size);
    }
    const size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        fclose(f);
        return sd_error(SD_ERR_NOMEM, "%s: out of memory reading %zu bytes", path, n);
    }
    const size_t got = fread(buf, 1, n, f);
    const int err = ferror(f) ? errno : 0;
    fclose(f);
    int rc;
    if (got != n)
        rc = sd_error(SD_ERR_FORMAT, "%s: cannot read image (%s)", path, err ? strerror(err) : "the file shrank while read");
    else
        rc = image_decode(img, buf, n, path);
    if (!rc) outputs_note_input(path);   /* no output of this run may replace it */
    free(buf);
    return rc;
}
