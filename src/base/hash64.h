/* The 64-bit byte hash of the base-model hash (src/shifts/hash.c), shared with the other
 * content identifiers (the pair_id of files written together, io/safetensors.c): four
 * word-wide multiply-rotate lanes, folded with splitmix64's finalizer. Changing it orphans
 * every SVD cache and shift-file hash. Header-only: the loops inline into their callers. */
#ifndef SVDIFF_BASE_HASH64_H
#define SVDIFF_BASE_HASH64_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define K1 0x9E3779B97F4A7C15ull
#define K2 0xC2B2AE3D27D4EB4Full
#define K3 0x165667B19E3779F9ull

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t lane(uint64_t h, uint64_t w) { return rotl(h ^ (w * K1), 29) * K2; }

/* splitmix64's finalizer: every input bit reaches every output bit */
static inline uint64_t fmix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t fold(uint64_t h, uint64_t v) { return fmix(h ^ v) + K3; }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);   /* unaligned-safe; little-endian hosts (x86-64, aarch64) */
    return w;
}

/* Four independent lanes, so the multiply latency chains overlap. */
typedef struct {
    uint64_t a, b, c, d, n;
} hstate_t;

static inline void h_init(hstate_t *s, uint64_t seed) { *s = (hstate_t){seed ^ K1, seed ^ K2, seed + K3, ~seed, 0}; }

/* n: a multiple of 32 except in the last call before h_final */
static inline void h_absorb(hstate_t *s, const uint8_t *p, size_t n) {
    uint64_t a = s->a, b = s->b, c = s->c, d = s->d;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = lane(a, load64(p + i));
        b = lane(b, load64(p + i + 8));
        c = lane(c, load64(p + i + 16));
        d = lane(d, load64(p + i + 24));
    }
    for (; i + 8 <= n; i += 8) a = lane(a, load64(p + i));
    if (i < n) {
        uint8_t tail[8] = {0};
        memcpy(tail, p + i, n - i);
        b = lane(b, load64(tail));
    }
    s->a = a, s->b = b, s->c = c, s->d = d, s->n += n;
}

static inline uint64_t h_final(hstate_t *s) {
    const uint64_t c = lane(s->c, s->n);   /* a zero-padded tail must differ from real zero bytes */
    return fold(fold(fold(fmix(s->a), s->b), c), s->d);
}

static inline uint64_t hash_bytes(const void *p, size_t n, uint64_t seed) {
    hstate_t s;
    h_init(&s, seed);
    h_absorb(&s, p, n);
    return h_final(&s);
}

#endif
