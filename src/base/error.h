/* Error reporting for libsvdiff: functions return 0 on success or a negative SD_ERR_* code,
 * and leave a human-readable message (naming the file, tensor or shape at fault) that the
 * caller reads with sd_last_error(). Only the CLI prints and exits. */
#ifndef SVDIFF_BASE_ERROR_H
#define SVDIFF_BASE_ERROR_H

#include <stdio.h>
#include <stdlib.h>

enum {
    SD_OK = 0,
    SD_ERR_IO = -1,       /* a file could not be opened, read, written or renamed */
    SD_ERR_FORMAT = -2,   /* a file is malformed (bad header, JSON, dtype, offsets, ...) */
    SD_ERR_SHAPE = -3,    /* tensor shapes do not fit together */
    SD_ERR_NOMEM = -4,    /* allocation failed */
    SD_ERR_ARG = -5,      /* bad argument (flag value, missing tensor name, ...) */
    SD_ERR_NUMERIC = -6,  /* a numerical routine (SVD, ...) failed */
    SD_ERR_INTERRUPTED = -7, /* stopped on request (a signal), see txt2img_opts_t.stop */
};

/* Sets the thread's error message (printf-style) and returns `code`, so that
 * `return sd_error(SD_ERR_FORMAT, "%s: ...", path);` reads naturally. */
int sd_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Wraps the current message in context: it becomes "<prefix>: <current message>", where the
 * prefix is printf-style; returns `code`. Use it instead of sd_error(rc, "...: %s",
 * sd_last_error()), which would format the message buffer into itself. */
int sd_error_wrap(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last message set on this thread ("" if none). */
const char *sd_last_error(void);
void sd_clear_error(void);

/* Programming-error check (a caller broke a function's contract, e.g. mismatched shapes
 * inside the engine): prints the condition with file and line, then aborts. Unlike
 * sd_error this is for bugs, never for bad user input. */
#define SD_CHECK(cond, ...)                                                         \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                           \
            fputc('\n', stderr);                                                    \
            abort();                                                                \
        }                                                                           \
    } while (0)

/* malloc/calloc that abort with file:line on failure (for sizes the engine controls). */
void *sd_xmalloc_at(size_t n, const char *file, int line);
void *sd_xcalloc_at(size_t n, size_t size, const char *file, int line);
#define sd_xmalloc(n) sd_xmalloc_at((n), __FILE__, __LINE__)
#define sd_xcalloc(n, s) sd_xcalloc_at((n), (s), __FILE__, __LINE__)

#endif
