/* Small string helpers shared by the readers and writers: suffix tests and the printing of a
 * tensor shape in error messages. */
#ifndef SVDIFF_BASE_STR_H
#define SVDIFF_BASE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Whether s ends with suffix (bytes compared exactly; an empty suffix always matches). */
bool str_ends_with(const char *s, const char *suffix);
/* The same with ASCII case ignored (file extensions: ".PNG" is a ".png"). */
bool str_ends_with_nocase(const char *s, const char *suffix);
/* Whether s is "<stem><suffix>" with a non-empty stem; then *stem = the stem's length. */
bool str_cut_suffix(const char *s, const char *suffix, size_t *stem);

/* "[a, b, c]" for a shape of ndim dimensions; a negative dimension (a wildcard in an expected
 * shape) prints as "*". Truncated to fit buf[cap]. */
void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

#endif
