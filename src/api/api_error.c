/* The API's error side, version and memory release: the codes are the library's SD_ERR_* values
 * (base/error.h) under public names, and the message is base/error.c's thread-local one. */
#include <stdlib.h>

#include "api/api_internal.h"
#include "base/runtime.h"

_Static_assert((int)SVDIFF_ERR_IO == (int)SD_ERR_IO && (int)SVDIFF_ERR_FORMAT == (int)SD_ERR_FORMAT && (int)SVDIFF_ERR_SHAPE == (int)SD_ERR_SHAPE &&
                   (int)SVDIFF_ERR_NOMEM == (int)SD_ERR_NOMEM && (int)SVDIFF_ERR_ARG == (int)SD_ERR_ARG &&
                   (int)SVDIFF_ERR_NUMERIC == (int)SD_ERR_NUMERIC && (int)SVDIFF_ERR_CANCELLED == (int)SD_ERR_INTERRUPTED,
               "public error codes mirror SD_ERR_*");

SVDIFF_API const char *svdiff_version(void) { return SVDIFF_VERSION; }

SVDIFF_API const char *svdiff_last_error(void) { return sd_last_error(); }

SVDIFF_API const char *svdiff_error_name(int code) {
    switch (code) {
    case SVDIFF_OK: return "SVDIFF_OK";
    case SVDIFF_ERR_IO: return "SVDIFF_ERR_IO";
    case SVDIFF_ERR_FORMAT: return "SVDIFF_ERR_FORMAT";
    case SVDIFF_ERR_SHAPE: return "SVDIFF_ERR_SHAPE";
    case SVDIFF_ERR_NOMEM: return "SVDIFF_ERR_NOMEM";
    case SVDIFF_ERR_ARG: return "SVDIFF_ERR_ARG";
    case SVDIFF_ERR_NUMERIC: return "SVDIFF_ERR_NUMERIC";
    case SVDIFF_ERR_CANCELLED: return "SVDIFF_ERR_CANCELLED";
    case SVDIFF_ERR_UNSUPPORTED: return "SVDIFF_ERR_UNSUPPORTED";
    default: return "SVDIFF_ERR_UNKNOWN";
    }
}

SVDIFF_API void svdiff_free(void *p) { free(p); }

SVDIFF_API void svdiff_set_threads(int n) { sd_set_threads(n); }

SVDIFF_API void svdiff_images_free(svdiff_image_t *images, int n) {
    if (!images) return;
    for (int i = 0; i < n; i++) free(images[i].rgb);
    free(images);
}
