/* Image files: PNG round trip with text chunks, atomic writes, grids, resize + crop,
 * alpha compositing and clear errors for unreadable files. */
#include "testutil.h"

#include <png.h>
#include <stdio.h>
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

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_png_round_trip),
        cmocka_unit_test(test_unwritable_target),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_grid),
        cmocka_unit_test(test_resize_crop),
        cmocka_unit_test(test_alpha_on_white),
    };
    return RUN_TESTS(argc, argv, "image", tests, setup, teardown);
}
