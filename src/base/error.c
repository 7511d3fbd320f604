/* Thread-local error messages and checked allocation (see error.h). */
#include "base/error.h"

#include <stdarg.h>
#include <string.h>

static _Thread_local char g_message[1024];

int sd_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_message, sizeof g_message, fmt, ap);
    va_end(ap);
    return code;
}

int sd_error_wrap(int code, const char *fmt, ...) {
    char inner[sizeof g_message];
    memcpy(inner, g_message, sizeof inner);   /* the prefix is written over the source */
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(g_message, sizeof g_message, fmt, ap);
    va_end(ap);
    if (k < 0) k = 0;
    if ((size_t)k < sizeof g_message) snprintf(g_message + k, sizeof g_message - (size_t)k, ": %s", inner);
    return code;
}

int sd_nomem(const char *what, size_t bytes) {
    return sd_error(SD_ERR_NOMEM, "%s: out of memory (%zu bytes, %zu MB)", what, bytes, bytes >> 20);
}

const char *sd_last_error(void) { return g_message; }

void sd_clear_error(void) { g_message[0] = '\0'; }

void *sd_xmalloc_at(size_t n, const char *file, int line) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory allocating %zu bytes\n", file, line, n);
        abort();
    }
    return p;
}

void *sd_xcalloc_at(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "%s:%d: out of memory allocating %zu x %zu bytes\n", file, line, n, size);
        abort();
    }
    return p;
}
