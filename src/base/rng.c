/* The seeded generator of svdiff's sampling and training noise: Philox4x32-10 in counter mode
 * with Box-Muller normals (the exact stream is specified in rng.h). Counter-based so
 * that a tensor fill is parallel and still independent of the thread count. */
#include "base/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            k0 += PHILOX_W0;
            k1 += PHILOX_W1;
        }
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static void block(uint32_t x[4], uint64_t seed, uint64_t index) {
    uint32_t ctr[4] = {(uint32_t)index, (uint32_t)(index >> 32), 0, 0};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    philox4x32_10(x, ctr, key);
}

float rng_normal_at(uint64_t seed, uint64_t index) {
    uint32_t x[4];
    block(x, seed, index);
    uint64_t a = (uint64_t)x[0] | ((uint64_t)x[1] << 32);
    uint64_t b = (uint64_t)x[2] | ((uint64_t)x[3] << 32);
    /* u1 in (0, 1): never 0, so log is finite; 53-bit mantissas, exact conversions. */
    double u1 = ((double)(a >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
    /* Products only (no a*b+c), so FMA contraction cannot change the result. */
    double r = sqrt(-2.0 * log(u1));
    double c = cos(6.283185307179586 * u2);
    return (float)(r * c);
}

void rng_init(rng_t *r, uint64_t seed) {
    r->seed = seed;
    r->counter = 0;
}

void rng_fill_normal(rng_t *r, float *x, size_t n) {
    uint64_t seed = r->seed, base = r->counter;
    /* ~100 ns per value: parallel only for latents-sized fills. */
    #pragma omp parallel for schedule(static) if (n >= 16384)
    for (size_t i = 0; i < n; i++) x[i] = rng_normal_at(seed, base + i);
    r->counter = base + n;
}

uint64_t rng_next_u64(rng_t *r) {
    uint32_t x[4];
    block(x, r->seed, r->counter++);
    return (uint64_t)x[0] | ((uint64_t)x[1] << 32);
}

double rng_uniform(rng_t *r) {
    return (double)(rng_next_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

int rng_randint(rng_t *r, int n) {
    if (n <= 1) return 0;
    uint64_t un = (uint64_t)n;
    /* Values below 2^64 mod n would make the low residues more likely: reject them. */
    uint64_t threshold = (0 - un) % un;
    for (;;) {
        uint64_t v = rng_next_u64(r);
        if (v >= threshold) return (int)(v % un);
    }
}
