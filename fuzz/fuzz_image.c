/* libFuzzer harness: image files (PNG, JPEG, anything the reader claims) through image_load, the
 * public reader of io/image.h, then the training resize + crop on what it decoded. Every decoded
 * byte is read, so ASan sees a pixel buffer shorter than the size the reader reports.
 * The decoders are Debian's shared libraries, which carry no coverage instrumentation: the
 * coverage figures count image.c only, and mutations are guided by it alone. */
#include "fuzz_util.h"

#include "io/image.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* named by its signature, in case a reader goes by the extension */
    const char *name = size >= 4 && !memcmp(data, "\x89PNG", 4) ? "in.png"
                       : size >= 2 && data[0] == 0xff && data[1] == 0xd8 ? "in.jpg" : "in.img";
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, name), data, size);
    image_t img;
    if (fuzz_rc(image_load(&img, path), "image_load") != 0) return 0;
    if (img.w <= 0 || img.h <= 0 || !img.rgb) abort();
    unsigned sum = 0;
    for (size_t i = 0; i < (size_t)img.w * img.h * 3; i++) sum += img.rgb[i];
    image_t out = {0};
    if (image_resize_crop(&out, &img, 8, 1, 0.5f, 0.5f) == 0) image_free(&out);
    image_free(&img);
    return (int)(sum & 0);
}
