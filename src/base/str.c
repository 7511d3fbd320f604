/* String helpers (see str.h). */
#include "base/str.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

bool str_ends_with(const char *s, const char *suffix) {
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

bool str_ends_with_nocase(const char *s, const char *suffix) {
    const size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcasecmp(s + n - k, suffix) == 0;
}

bool str_cut_suffix(const char *s, const char *suffix, size_t *stem) {
    const size_t n = strlen(s), k = strlen(suffix);
    if (n <= k || !str_ends_with(s, suffix)) return false;
    *stem = n - k;
    return true;
}

void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++) {
        if (shape[i] < 0) k += (size_t)snprintf(buf + k, cap - k, i ? ", *" : "*");
        else k += (size_t)snprintf(buf + k, cap - k, i ? ", %lld" : "%lld", (long long)shape[i]);
    }
    if (k < cap) snprintf(buf + k, cap - k, "]");
}
