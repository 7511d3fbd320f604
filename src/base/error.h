/* Error reporting for libsvdiff: functions return 0 on success or a negative SD_ERR_* code,
 * and leave a human-readable message (naming the file, tensor or shape at fault) that the
 * caller reads with sd_last_error(). Only the CLI prints and exits. A function that returns a
 * pointer returns NULL on error, with the message set.
 *
 * The policy, one for the whole library: what the input can cause is a returned error; only a
 * programming error aborts.
 *  - Input: a malformed or inconsistent file, a flag value, a shape beyond what was built (a
 *    forward call with more rows, tokens or pixels than its activations hold: SD_ERR_ARG), and
 *    out of memory for an allocation whose size the input decides (resolution, batch, number
 *    of images or prompts, token count, tensor or file size): plain malloc / calloc and, on
 *    NULL, free what the function holds and `return sd_nomem(what, bytes)` (SD_ERR_NOMEM).
 *  - Programming errors: SD_CHECK, which aborts with file and line (a caller broke a
 *    documented contract: mismatched shapes inside the engine, backward before forward).
 *  - sd_xmalloc / sd_xcalloc abort on failure; they are for the engine's bookkeeping only,
 *    allocations the input cannot make large (names and paths, per-layer or per-tensor tables
 *    bounded by a header already read, fixed structs). Failing one of those means the process
 *    has no memory left before any real work; an error path per string copy would be code no
 *    test runs. The scratch arena (scratch.h) aborts too: it holds operator temporaries, which
 *    are smaller than the activations every forward allocates first, with a returned error. */
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
/* SD_ERR_NOMEM with "<what>: out of memory (<bytes> bytes, <MB> MB)": the error of an
 * input-sized allocation that failed. */
int sd_nomem(const char *what, size_t bytes);
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

/* malloc/calloc that abort with file:line on failure: only for sizes the input cannot make
 * large (see the policy at the top). */
void *sd_xmalloc_at(size_t n, const char *file, int line);
void *sd_xcalloc_at(size_t n, size_t size, const char *file, int line);
#define sd_xmalloc(n) sd_xmalloc_at((n), __FILE__, __LINE__)
#define sd_xcalloc(n, s) sd_xcalloc_at((n), (s), __FILE__, __LINE__)

#endif
