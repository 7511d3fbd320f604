/* Bump allocator over one float region, for laying out a model's activations or gradients in
 * a single allocation (llm.c style): run the layout once with base NULL to count the floats,
 * allocate, run it again with the base to hand out the pieces. Every piece is rounded up to
 * 16 floats, so with a 64-byte aligned base each one starts 64-byte aligned like scratch
 * memory. */
#ifndef SVDIFF_BASE_BUMP_H
#define SVDIFF_BASE_BUMP_H

#include <stddef.h>

typedef struct {
    float *base;   /* NULL: only count */
    size_t off;    /* floats handed out so far (the total after a counting pass) */
} bump_t;

/* The next n floats (NULL while counting). */
static inline float *bump_take(bump_t *b, size_t n) {
    float *p = b->base ? b->base + b->off : NULL;
    b->off += (n + 15) & ~(size_t)15;
    return p;
}

#endif
