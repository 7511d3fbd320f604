/* libFuzzer harness: image files (PNG, JPEG, anything the reader claims) through image_load, the
 * public reader of io/image.h, then the training resize + crop on what it decoded. Every decoded
 * byte is read, so ASan sees a pixel buffer shorter than the size the reader reports.
 * Without ASan (the replay in the release build; glibc malloc), each input is decoded twice with
 * fresh heap memory filled with different bytes (mallopt M_PERTURB): pixels that differ come
 * from uninitialised memory, and abort. (ASan's allocator ignores M_PERTURB.)
 * The decoders are Debian's shared libraries, which carry no coverage instrumentation: the
 * coverage figures count image.c only, and mutations are guided by it alone. */
#include "fuzz_util.h"

#include "io/image.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_ASAN 1
#endif
#if defined(__GLIBC__) && !defined(FUZZ_ASAN)
#include <malloc.h>
#define FUZZ_PERTURB(byte) mallopt(M_PERTURB, (byte))
#else
#define FUZZ_PERTURB(byte) 0
#endif

static int load(image_t *img, const char *path, int perturb) {
    FUZZ_PERTURB(perturb);
    int rc = image_load(img, path);
    FUZZ_PERTURB(0);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* named by its signature, in case a reader goes by the extension */
    const char *name = size >= 4 && !memcmp(data, "\x89PNG", 4) ? "in.png"
                       : size >= 2 && data[0] == 0xff && data[1] == 0xd8 ? "in.jpg" : "in.img";
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, name), data, size);
    image_t img;
    if (fuzz_rc(load(&img, path, 0x55), "image_load") != 0) return 0;
    if (img.w <= 0 || img.h <= 0 || !img.rgb) abort();
    const size_t n = (size_t)img.w * img.h * 3;
    if (FUZZ_PERTURB(0) == 1) {   /* glibc without ASan: a second decode on differently filled memory */
        image_t again;
        if (load(&again, path, 0xaa) != 0 || again.w != img.w || again.h != img.h || memcmp(again.rgb, img.rgb, n)) {
            fprintf(stderr, "fuzz_image: %s decodes differently on differently filled memory "
                    "(uninitialised pixels)\n", path);
            abort();
        }
        image_free(&again);
    }
    unsigned sum = 0;
    for (size_t i = 0; i < n; i++) sum += img.rgb[i];
    image_t out = {0};
    if (image_resize_crop(&out, &img, 8, 1, 0.5f, 0.5f) == 0) image_free(&out);
    image_free(&img);
    return (int)(sum & 0);
}
