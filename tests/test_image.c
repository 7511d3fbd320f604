/* Image files: PNG round trip with text chunks, atomic writes, grids, resize + crop,
 * alpha compositing and clear errors for unreadable files; decoding of every PNG kind and of
 * JPEG, and refusal of damaged files (bad CRC, palette overrun, truncation). */
#include "testutil.h"

#include <png.h>
#include <stdio.h>
#include <jpeglib.h>
#include <zlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/error.h"
#include "io/image.h"

static char g_dir[64];

static int setup(void **state) {
    (void)state;
    strcpy(g_dir, "/tmp/svdiff-test-image-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd);
}

/* Reads the value of tEXt key `key` with libpng (an independent reader). */
static int png_text_value(const char *path, const char *key, char *out, size_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    int found = -1;
    if (setjmp(png_jmpbuf(png)) == 0) {
        png_init_io(png, f);
        png_read_info(png, info);
        png_textp text;
        int nt = 0;
        png_get_text(png, info, &text, &nt);
        for (int i = 0; i < nt; i++)
            if (!strcmp(text[i].key, key)) snprintf(out, n, "%s", text[i].text), found = 0;
    }
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return found;
}

static void test_png_round_trip(void **state) {
    (void)state;
    image_t a, b;
    assert_int_equal(image_alloc(&a, 7, 5), 0);
    for (int i = 0; i < 7 * 5 * 3; i++) a.rgb[i] = (uint8_t)(i * 37 + 11);
    char path[128], value[256];
    snprintf(path, sizeof path, "%s/a.png", g_dir);
    const char *keys[2] = {"parameters", "Software"};
    const char *vals[2] = {"prompt: a cat; steps: 20; seed: 42", "svdiff"};
    assert_int_equal(image_save_png(&a, path, keys, vals, 2), 0);
    assert_int_equal(image_load(&b, path), 0);
    assert_int_equal(b.w, 7);
    assert_int_equal(b.h, 5);
    assert_memory_equal(a.rgb, b.rgb, 7 * 5 * 3);
    assert_int_equal(png_text_value(path, "parameters", value, sizeof value), 0);
    assert_string_equal(value, vals[0]);
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    assert_int_not_equal(access(tmp, F_OK), 0);   /* no temp file left */
    image_free(&a), image_free(&b);
}

static void test_unwritable_target(void **state) {
    (void)state;
    image_t a;
    assert_int_equal(image_alloc(&a, 2, 2), 0);
    int rc = image_save_png(&a, "/nonexistent-dir/x.png", NULL, NULL, 0);
    assert_int_equal(rc, SD_ERR_IO);
    assert_non_null(strstr(sd_last_error(), "/nonexistent-dir/x.png"));
    image_free(&a);
}

static void test_bad_files(void **state) {
    (void)state;
    char path[128];
    snprintf(path, sizeof path, "%s/garbage.png", g_dir);
    FILE *f = fopen(path, "wb");
    fputs("this is not an image", f);
    fclose(f);
    image_t img;
    assert_int_equal(image_load(&img, path), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "garbage.png"));
    assert_int_equal(image_load(&img, "/no/such/file.jpg"), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "/no/such/file.jpg"));
    /* a truncated PNG */
    image_t a;
    assert_int_equal(image_alloc(&a, 16, 16), 0);
    char good[128];
    snprintf(good, sizeof good, "%s/good.png", g_dir);
    assert_int_equal(image_save_png(&a, good, NULL, NULL, 0), 0);
    FILE *g = fopen(good, "rb");
    unsigned char buf[4096];
    size_t n = fread(buf, 1, sizeof buf, g);
    fclose(g);
    f = fopen(path, "wb");
    fwrite(buf, 1, n / 2, f);
    fclose(f);
    assert_int_equal(image_load(&img, path), SD_ERR_FORMAT);
    image_free(&a);
}

static void test_grid(void **state) {
    (void)state;
    image_t imgs[3], g;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(image_alloc(&imgs[i], 4, 3), 0);
        memset(imgs[i].rgb, 50 * (i + 1), 4 * 3 * 3);
    }
    assert_int_equal(image_grid(&g, imgs, 3, 2, 1), 0);
    assert_int_equal(g.w, 2 * 4 + 3);
    assert_int_equal(g.h, 2 * 3 + 3);
    assert_int_equal(g.rgb[0], 255);                              /* padding is white */
    assert_int_equal(g.rgb[(1 * g.w + 1) * 3], 50);               /* first image */
    assert_int_equal(g.rgb[(1 * g.w + 6) * 3], 100);              /* second, next column */
    assert_int_equal(g.rgb[(5 * g.w + 1) * 3], 150);              /* third, next row */
    assert_int_equal(g.rgb[(5 * g.w + 6) * 3], 255);              /* empty cell */
    image_free(&g);
    imgs[2].w = 5;  /* mismatched sizes are refused */
    assert_int_equal(image_grid(&g, imgs, 3, 2, 1), SD_ERR_SHAPE);
    imgs[2].w = 4;
    for (int i = 0; i < 3; i++) image_free(&imgs[i]);
}

static void test_resize_crop(void **state) {
    (void)state;
    /* 8x4 image, left half black, right half white: shorter side 4 -> 2 gives 4x2, centre crop
     * 2x2 takes the middle: one dark and one bright column */
    image_t a, b;
    assert_int_equal(image_alloc(&a, 8, 4), 0);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 8; x++) memset(a.rgb + (y * 8 + x) * 3, x < 4 ? 0 : 255, 3);
    assert_int_equal(image_resize_crop(&b, &a, 2, 1, 0, 0), 0);
    assert_int_equal(b.w, 2);
    assert_int_equal(b.h, 2);
    assert_int_equal(b.rgb[0], 0);
    assert_int_equal(b.rgb[3], 255);
    image_free(&b);
    /* left crop sees only black; a uniform image stays uniform when upscaled */
    assert_int_equal(image_resize_crop(&b, &a, 2, 0, 0.0f, 0.0f), 0);
    assert_int_equal(b.rgb[0], 0);
    assert_int_equal(b.rgb[3], 0);
    image_free(&b);
    memset(a.rgb, 77, 8 * 4 * 3);
    assert_int_equal(image_resize_crop(&b, &a, 9, 1, 0, 0), 0);
    for (int i = 0; i < 9 * 9 * 3; i++) assert_int_equal(b.rgb[i], 77);
    image_free(&a), image_free(&b);
}

static void test_alpha_on_white(void **state) {
    (void)state;
    /* An RGBA PNG written with libpng: a transparent pixel must come back white. */
    char path[128];
    snprintf(path, sizeof path, "%s/rgba.png", g_dir);
    FILE *f = fopen(path, "wb");
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    png_init_io(png, f);
    png_set_IHDR(png, info, 2, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    unsigned char row[8] = {255, 0, 0, 255, 0, 0, 0, 0};  /* opaque red, transparent black */
    png_write_row(png, row);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
    image_t img;
    assert_int_equal(image_load(&img, path), 0);
    assert_int_equal(img.rgb[0], 255);
    assert_int_equal(img.rgb[1], 0);
    assert_int_equal(img.rgb[3], 255);
    assert_int_equal(img.rgb[4], 255);
    assert_int_equal(img.rgb[5], 255);
    image_free(&img);
}

/* ---- decoding: every PNG kind to the values stb_image gave before ---- */

/* One sample of depth `depth` as 8 bits: 16-bit keeps the high byte, low depths scale to 255. */
static unsigned to8(unsigned v, int depth) { return depth == 16 ? v >> 8 : depth == 8 ? v : v * 255 / ((1u << depth) - 1); }

static unsigned on_white(unsigned c, unsigned a) { return (c * a + 255u * (255u - a) + 127u) / 255u; }

/* Writes a w x h PNG of `color` / `depth` (interlaced when asked, with a tRNS chunk when trns) of
 * random samples with libpng, and the RGB the decoder must return into want[w*h*3]. */
static void write_png_kind(const char *path, int color, int depth, int interlace, int trns, int w, int h,
                           uint64_t seed, uint8_t *want) {
    trng_t r;
    trng_seed(&r, seed);
    const int ch = color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_PALETTE ? 1
                 : color == PNG_COLOR_TYPE_GRAY_ALPHA ? 2 : color == PNG_COLOR_TYPE_RGB ? 3 : 4;
    const unsigned maxv = (1u << depth) - 1;
    unsigned *smp = malloc(sizeof(unsigned) * w * h * ch);
    png_color pal[16];
    png_byte pal_alpha[16];
    png_color_16 tcolor = {0};
    const int n_pal = depth == 1 ? 2 : depth == 2 ? 3 : 11;   /* fewer entries than 2^depth where it can */
    for (int i = 0; i < n_pal; i++) {
        pal[i].red = (png_byte)(trng_uniform(&r) * 256), pal[i].green = (png_byte)(i * 23), pal[i].blue = (png_byte)(255 - i * 7);
        pal_alpha[i] = (png_byte)(i * 40);
    }
    for (int i = 0; i < w * h * ch; i++)
        smp[i] = color == PNG_COLOR_TYPE_PALETTE ? (unsigned)(trng_uniform(&r) * n_pal) : (unsigned)(trng_uniform(&r) * (maxv + 1.0));
    if (trns) {   /* make the transparent colour occur: it is pixel 0's */
        if (color == PNG_COLOR_TYPE_GRAY) tcolor.gray = (png_uint_16)smp[0];
        if (color == PNG_COLOR_TYPE_RGB) tcolor.red = (png_uint_16)smp[0], tcolor.green = (png_uint_16)smp[1], tcolor.blue = (png_uint_16)smp[2];
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    assert_int_equal(setjmp(png_jmpbuf(png)), 0);
    png_init_io(png, f);
    png_set_IHDR(png, info, w, h, depth, color, interlace ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_PLTE(png, info, pal, n_pal);
    if (trns) png_set_tRNS(png, info, pal_alpha, color == PNG_COLOR_TYPE_PALETTE ? n_pal - 1 : 0, &tcolor);
    png_write_info(png, info);
    if (depth == 16) png_set_swap(png);   /* rows hold host-order 16-bit samples */
    png_set_packing(png);                 /* and one byte per sub-byte sample */
    const size_t bps = depth == 16 ? 2 : 1;
    png_bytep *rows = malloc(sizeof *rows * h);
    uint8_t *img = malloc((size_t)w * ch * bps * h);
    for (int y = 0; y < h; y++) {
        rows[y] = img + (size_t)y * w * ch * bps;
        for (int i = 0; i < w * ch; i++) {
            const unsigned v = smp[y * w * ch + i];
            if (depth == 16) {
                const uint16_t v16 = (uint16_t)v;
                memcpy(rows[y] + 2 * i, &v16, 2);
            } else {
                rows[y][i] = (uint8_t)v;
            }
        }
    }
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    fclose(f);
    for (int p = 0; p < w * h; p++) {
        const unsigned *s = smp + (size_t)p * ch;
        unsigned rgb[3], a = 255;
        if (color == PNG_COLOR_TYPE_PALETTE) {
            rgb[0] = pal[s[0]].red, rgb[1] = pal[s[0]].green, rgb[2] = pal[s[0]].blue;
            if (trns && (int)s[0] < n_pal - 1) a = pal_alpha[s[0]];
        } else if (ch <= 2) {
            rgb[0] = rgb[1] = rgb[2] = to8(s[0], depth);
            if (ch == 2) a = to8(s[1], depth);
            if (trns && s[0] == tcolor.gray) a = 0;
        } else {
            for (int k = 0; k < 3; k++) rgb[k] = to8(s[k], depth);
            if (ch == 4) a = to8(s[3], depth);
            if (trns && s[0] == tcolor.red && s[1] == tcolor.green && s[2] == tcolor.blue) a = 0;
        }
        for (int k = 0; k < 3; k++) want[3 * p + k] = (uint8_t)on_white(rgb[k], a);
    }
    free(smp), free(rows), free(img);
}

static void test_png_kinds(void **state) {
    (void)state;
    static const struct { int color, depths[5]; } kinds[] = {
        {PNG_COLOR_TYPE_GRAY, {1, 2, 4, 8, 16}},
        {PNG_COLOR_TYPE_PALETTE, {1, 2, 4, 8, 0}},
        {PNG_COLOR_TYPE_GRAY_ALPHA, {8, 16, 0, 0, 0}},
        {PNG_COLOR_TYPE_RGB, {8, 16, 0, 0, 0}},
        {PNG_COLOR_TYPE_RGB_ALPHA, {8, 16, 0, 0, 0}},
    };
    const int w = 13, h = 7;
    uint8_t want[13 * 7 * 3];
    char path[128];
    int n = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
        for (int d = 0; d < 5 && kinds[k].depths[d]; d++)
            for (int interlace = 0; interlace < 2; interlace++)
                for (int trns = 0; trns < 2; trns++) {
                    const int color = kinds[k].color, depth = kinds[k].depths[d];
                    if (trns && (color & PNG_COLOR_MASK_ALPHA)) continue;
                    snprintf(path, sizeof path, "%s/kind-%d-%d-%d-%d.png", g_dir, color, depth, interlace, trns);
                    write_png_kind(path, color, depth, interlace, trns, w, h, 100 + n, want);
                    image_t a, b;
                    if (image_load(&a, path)) fail_msg("%s", sd_last_error());
                    assert_int_equal(a.w, w);
                    assert_int_equal(a.h, h);
                    if (memcmp(a.rgb, want, sizeof want))
                        fail_msg("%s: decoded pixels differ from the expected values", path);
                    assert_int_equal(image_load(&b, path), 0);   /* the same bytes every time */
                    assert_memory_equal(a.rgb, b.rgb, sizeof want);
                    image_free(&a), image_free(&b);
                    n++;
                }
    assert_int_equal(n, 52);
}

/* ---- hand-made PNGs: damage libpng must catch ---- */

static size_t put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
    return 4;
}

/* Appends a chunk (length, type, data, CRC over type + data) at out; returns its size. */
static size_t put_chunk(uint8_t *out, const char *type, const uint8_t *data, uint32_t n) {
    size_t k = put_be32(out, n);
    memcpy(out + k, type, 4);
    if (n) memcpy(out + k + 4, data, n);
    const uint32_t crc = (uint32_t)crc32(0, out + k, 4 + n);
    return k + 4 + n + put_be32(out + k + 4 + n, crc);
}

/* A w x 2 8-bit palette PNG with a 2-entry palette whose second row uses index `bad_index`;
 * valid CRCs throughout. Returns the file size. */
static size_t make_palette_png(uint8_t *out, int w, int bad_index) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    size_t n = 0;
    memcpy(out, sig, 8), n = 8;
    uint8_t ihdr[13];
    put_be32(ihdr, (uint32_t)w), put_be32(ihdr + 4, 2);
    ihdr[8] = 8, ihdr[9] = 3, ihdr[10] = ihdr[11] = ihdr[12] = 0;   /* 8-bit palette, no interlace */
    n += put_chunk(out + n, "IHDR", ihdr, 13);
    const uint8_t plte[6] = {255, 0, 0, 0, 0, 255};   /* red, blue */
    n += put_chunk(out + n, "PLTE", plte, 6);
    uint8_t raw[2 * 65], z[256];
    for (int y = 0; y < 2; y++) {
        raw[y * (w + 1)] = 0;   /* filter: none */
        for (int x = 0; x < w; x++) raw[y * (w + 1) + 1 + x] = (uint8_t)(y ? bad_index : x & 1);
    }
    uLongf zn = sizeof z;
    assert_int_equal(compress(z, &zn, raw, (uLong)(2 * (w + 1))), Z_OK);
    n += put_chunk(out + n, "IDAT", z, (uint32_t)zn);
    n += put_chunk(out + n, "IEND", NULL, 0);
    return n;
}

static void write_bytes_to(const char *path, const uint8_t *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static void test_png_palette_overrun(void **state) {
    (void)state;
    uint8_t buf[1024];
    char path[128];
    image_t img;
    /* the well-formed twin decodes: red, blue, ... */
    size_t n = make_palette_png(buf, 8, 1);
    snprintf(path, sizeof path, "%s/palette-ok.png", g_dir);
    write_bytes_to(path, buf, n);
    assert_int_equal(image_load(&img, path), 0);
    assert_int_equal(img.rgb[0], 255);
    assert_int_equal(img.rgb[5], 255);
    assert_int_equal(img.rgb[(8 + 3) * 3 + 2], 255);   /* second row: index 1 = blue */
    image_free(&img);
    /* index 200 into a 2-entry palette: refused (the old decoder read past its palette, so the
     * pixels, and every run trained on them, changed from run to run) */
    n = make_palette_png(buf, 8, 200);
    snprintf(path, sizeof path, "%s/palette-overrun.png", g_dir);
    write_bytes_to(path, buf, n);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(image_load(&img, path), SD_ERR_FORMAT);
        assert_null(img.rgb);
        assert_non_null(strstr(sd_last_error(), "palette-overrun.png: cannot read image ("));
        assert_non_null(strstr(sd_last_error(), "palette index 200 is past the 2-entry palette"));
    }
}

/* A chunk that claims more bytes than the file holds is refused before libpng allocates its
 * length (the fuzzer's inputs: a tEXt claiming 1.7 GB made the decoder peak at 1.68 GB), and a
 * valid file with a large text chunk still reads. */
static void test_png_chunk_past_end(void **state) {
    (void)state;
    const char *files[2] = {"fuzz/regressions/image/png_text_claims_1_7gb.png",
                            "fuzz/regressions/image/png_ztxt_or_text_bomb.png"};
    image_t img;
    for (int i = 0; i < 2; i++) {
        assert_int_equal(image_load(&img, source_path(files[i])), SD_ERR_FORMAT);
        assert_non_null(strstr(sd_last_error(), "a chunk runs past the end of the file"));
    }
    image_t a;
    assert_int_equal(image_alloc(&a, 4, 4), 0);
    memset(a.rgb, 90, 4 * 4 * 3);
    char *text = malloc(1 << 20);
    memset(text, 'x', (1 << 20) - 1), text[(1 << 20) - 1] = '\0';
    char path[128];
    snprintf(path, sizeof path, "%s/big-text.png", g_dir);
    const char *keys[1] = {"parameters"}, *vals[1] = {text};
    assert_int_equal(image_save_png(&a, path, keys, vals, 1), 0);
    assert_int_equal(image_load(&img, path), 0);
    assert_memory_equal(img.rgb, a.rgb, 4 * 4 * 3);
    image_free(&img), image_free(&a);
    free(text);
}

static void test_png_bad_crc(void **state) {
    (void)state;
    image_t a, img;
    assert_int_equal(image_alloc(&a, 9, 9), 0);
    for (int i = 0; i < 9 * 9 * 3; i++) a.rgb[i] = (uint8_t)(i * 7);
    char good[128], path[128];
    snprintf(good, sizeof good, "%s/crc-good.png", g_dir);
    const char *keys[1] = {"parameters"}, *vals[1] = {"a cat"};
    assert_int_equal(image_save_png(&a, good, keys, vals, 1), 0);
    size_t n;
    uint8_t *buf = (uint8_t *)read_file(good, &n);
    assert_non_null(buf);
    /* flip one bit of the CRC of each chunk in turn (IHDR, tEXt, IDAT, IEND): all refused */
    const char *types[4] = {"IHDR", "tEXt", "IDAT", "IEND"};
    for (int t = 0; t < 4; t++) {
        size_t at = 8;
        while (at + 8 <= n && memcmp(buf + at + 4, types[t], 4)) at += 12 + ((size_t)buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3]);
        assert_true(at + 8 <= n);
        const size_t len = (size_t)buf[at] << 24 | buf[at + 1] << 16 | buf[at + 2] << 8 | buf[at + 3];
        buf[at + 8 + len] ^= 0x10;
        snprintf(path, sizeof path, "%s/crc-bad-%s.png", g_dir, types[t]);
        write_bytes_to(path, buf, n);
        buf[at + 8 + len] ^= 0x10;
        if (image_load(&img, path) != SD_ERR_FORMAT) fail_msg("a bad %s CRC was accepted", types[t]);
        assert_non_null(strstr(sd_last_error(), path));
        assert_non_null(strstr(sd_last_error(), "CRC"));
    }
    write_bytes_to(path, buf, n);   /* restored: reads again */
    assert_int_equal(image_load(&img, path), 0);
    assert_memory_equal(img.rgb, a.rgb, 9 * 9 * 3);
    image_free(&img), image_free(&a);
    free(buf);
}

/* ---- JPEG ---- */

/* Writes a w x h JPEG (quality 95) of image a (RGB) or of CMYK samples (cmyk, 4 per pixel). */
static void write_jpeg(const char *path, const uint8_t *px, int w, int h, int cmyk) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w, c.image_height = (JDIMENSION)h;
    c.input_components = cmyk ? 4 : 3;
    c.in_color_space = cmyk ? JCS_CMYK : JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * c.input_components);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
}

static void test_jpeg(void **state) {
    (void)state;
    const int w = 32, h = 24;
    image_t a, b, c;
    assert_int_equal(image_alloc(&a, w, h), 0);
    for (int y = 0; y < h; y++)   /* smooth colours: JPEG keeps them within a few levels */
        for (int x = 0; x < w; x++) {
            uint8_t *p = a.rgb + (y * w + x) * 3;
            p[0] = (uint8_t)(x * 8), p[1] = (uint8_t)(y * 10), p[2] = 128;
        }
    char path[128], cut[128];
    snprintf(path, sizeof path, "%s/a.jpg", g_dir);
    write_jpeg(path, a.rgb, w, h, 0);
    assert_int_equal(image_load(&b, path), 0);
    assert_int_equal(b.w, w);
    assert_int_equal(b.h, h);
    int worst = 0;
    for (int i = 0; i < w * h * 3; i++) {
        const int d = abs((int)a.rgb[i] - (int)b.rgb[i]);
        if (d > worst) worst = d;
    }
    assert_in_range(worst, 0, 12);
    assert_int_equal(image_load(&c, path), 0);   /* the same bytes every time */
    assert_memory_equal(b.rgb, c.rgb, (size_t)w * h * 3);
    image_free(&b), image_free(&c);
    /* cut short: a JPEG error naming the file (it was "bad png sig"), not a grey-filled image */
    size_t n;
    uint8_t *buf = (uint8_t *)read_file(path, &n);
    assert_non_null(buf);
    snprintf(cut, sizeof cut, "%s/cut.jpg", g_dir);
    write_bytes_to(cut, buf, n * 2 / 3);
    assert_int_equal(image_load(&b, cut), SD_ERR_FORMAT);
    assert_null(b.rgb);
    assert_non_null(strstr(sd_last_error(), "cut.jpg: cannot read image (JPEG: Premature end of JPEG file)"));
    /* corrupt entropy-coded data in the middle: refused too */
    for (size_t i = n / 2; i < n / 2 + 16; i++) buf[i] = 0xff;
    write_bytes_to(cut, buf, n);
    assert_int_equal(image_load(&b, cut), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "cut.jpg: cannot read image (JPEG: "));
    free(buf);
    /* CMYK as Photoshop writes it (inverted, Adobe marker): c = k = 255 is white, c = 0 is cyan's
     * red channel at 0 */
    uint8_t *cmyk = malloc((size_t)w * h * 4);
    for (int i = 0; i < w * h; i++) {
        cmyk[4 * i] = i < w * h / 2 ? 255 : 0;
        cmyk[4 * i + 1] = cmyk[4 * i + 2] = cmyk[4 * i + 3] = 255;
    }
    snprintf(path, sizeof path, "%s/cmyk.jpg", g_dir);
    write_jpeg(path, cmyk, w, h, 1);
    free(cmyk);
    assert_int_equal(image_load(&b, path), 0);
    assert_in_range(b.rgb[0], 245, 255);
    assert_in_range(b.rgb[1], 245, 255);
    assert_in_range(b.rgb[(w * h - 1) * 3], 0, 10);
    assert_in_range(b.rgb[(w * h - 1) * 3 + 1], 245, 255);
    image_free(&b), image_free(&a);
}

/* Formats other than PNG and JPEG (stb_image used to read GIF, BMP, ...) are refused by name. */
static void test_other_formats(void **state) {
    (void)state;
    static const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a', 1, 0, 1, 0, 0x80, 0, 0, 0, 0, 0, 255, 255, 255,
                                  ',', 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 'D', 1, 0, ';'};
    char path[128];
    image_t img;
    snprintf(path, sizeof path, "%s/one.gif", g_dir);
    write_bytes_to(path, gif, sizeof gif);
    assert_int_equal(image_load(&img, path), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "one.gif: cannot read image (a GIF file; svdiff reads PNG and JPEG)"));
    snprintf(path, sizeof path, "%s/empty.png", g_dir);
    write_bytes_to(path, gif, 0);
    assert_int_equal(image_load(&img, path), SD_ERR_FORMAT);
    assert_non_null(strstr(sd_last_error(), "empty.png: cannot read image (the file is empty)"));
    assert_int_equal(image_load(&img, g_dir), SD_ERR_FORMAT);   /* a folder */
    assert_non_null(strstr(sd_last_error(), "cannot read image ("));
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_round_trip),
        cmocka_unit_test(test_unwritable_target),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_resize_crop),
        cmocka_unit_test(test_alpha_on_white),
        cmocka_unit_test(test_png_kinds),
        cmocka_unit_test(test_png_palette_overrun),
        cmocka_unit_test(test_png_bad_crc),
        cmocka_unit_test(test_png_chunk_past_end),
        cmocka_unit_test(test_jpeg),
        cmocka_unit_test(test_other_formats),
    };
    return RUN_TESTS(argc, argv, "image", tests, setup, teardown);
}
