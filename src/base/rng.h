/* The seeded generator of svdiff's sampling noise, training noise, random init and data order
 * (rng.c): Philox4x32-10 in counter mode + Box-Muller in double.
 *
 * A generator is (seed, counter). Every draw consumes exactly one 128-bit Philox block:
 *     block(k) = philox4x32_10(ctr = {k & 0xffffffff, k >> 32, 0, 0},
 *                              key = {seed & 0xffffffff, seed >> 32})        -> x[0..3]
 * and then increments the counter k. Philox4x32-10 is Random123's: 10 rounds of
 *     (hi0, lo0) = mulhilo32(0xD2511F53, c0); (hi1, lo1) = mulhilo32(0xCD9E8D57, c2);
 *     c = {hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0}
 * with the key bumped by (0x9E3779B9, 0xBB67AE85) between rounds.
 * From a block, with a = x0 | x1 << 32 and b = x2 | x3 << 32 (uint64):
 *     normal:  u1 = ((a >> 11) + 0.5) * 2^-53   in (0, 1)
 *              u2 =  (b >> 11)         * 2^-53   in [0, 1)
 *              z  = (float)(sqrt(-2 log u1) * cos(2 pi u2))        (double, one z per block)
 *     u64:     a;   uniform: (a >> 11) * 2^-53 in [0, 1)
 * A tensor [B, C, H, W] is filled in C order: element i gets the normal of block
 * (counter + i); the counter then advances by the element count. Normals are therefore the
 * same for every thread count (the fill is parallel over independent blocks) and on every
 * machine whose libm log/cos are correctly rounded (glibc's are, to within the last double bit,
 * which survives the rounding to float except with probability ~2^-29 per value).
 * tests/reference/gen_sampler_golden.py holds an independent Python implementation. */
#ifndef SVDIFF_BASE_RNG_H
#define SVDIFF_BASE_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t seed;
    uint64_t counter;   /* index of the next block */
} rng_t;

void rng_init(rng_t *r, uint64_t seed);
/* The raw block function (Random123 philox4x32_10). */
void philox4x32_10(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);
/* The normal of block `index` of stream `seed` (no state). */
float rng_normal_at(uint64_t seed, uint64_t index);
/* x[n] <- N(0, 1) in C order; advances the counter by n. */
void rng_fill_normal(rng_t *r, float *x, size_t n);
uint64_t rng_next_u64(rng_t *r);
double rng_uniform(rng_t *r);                  /* [0, 1) */
/* Uniform integer in [0, n), n >= 1: u64 % n with rejection of the biased top range (so it
 * may consume more than one block, deterministically). */
int rng_randint(rng_t *r, int n);

#endif
