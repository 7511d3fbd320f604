/* Finite checks (see ops.h): a value is NaN or Inf exactly when its exponent bits are all
 * ones, so the scan is an integer OR-reduction over blocks, which vectorises without
 * -ffast-math (a float sum would not: its order is fixed); only a block with a hit is
 * scanned again for the index. */
#include <stdint.h>
#include <string.h>

#include "ops/ops.h"

#define FINITE_BLOCK 4096

size_t first_nonfinite_raw(const void *data, size_t elem_bytes, uint32_t exp_mask, size_t n) {
    const unsigned char *p = data;
    for (size_t b = 0; b < n; b += FINITE_BLOCK) {
        const size_t e = n - b < FINITE_BLOCK ? n - b : FINITE_BLOCK;
        uint32_t hit = 0;
        if (elem_bytes == 4) {
            for (size_t i = 0; i < e; i++) {
                uint32_t v;
                memcpy(&v, p + 4 * (b + i), 4);   /* the data may sit at any offset in a file */
                hit |= (v & exp_mask) == exp_mask;
            }
        } else {
            for (size_t i = 0; i < e; i++) {
                uint16_t v;
                memcpy(&v, p + 2 * (b + i), 2);
                hit |= (uint32_t)((v & exp_mask) == exp_mask);
            }
        }
        if (!hit) continue;
        for (size_t i = 0; i < e; i++) {
            uint32_t v = 0;
            if (elem_bytes == 4) memcpy(&v, p + 4 * (b + i), 4);
            else {
                uint16_t h;
                memcpy(&h, p + 2 * (b + i), 2);
                v = h;
            }
            if ((v & exp_mask) == exp_mask) return b + i;
        }
    }
    return n;
}

size_t first_nonfinite(const float *x, size_t n) { return first_nonfinite_raw(x, 4, 0x7F800000u, n); }
