/* Per-thread stack arena (see scratch.h). Blocks grow geometrically; a request larger
 * than the rest of the current block moves on to the next block (allocated if needed). */
#include "base/scratch.h"

#include <stdint.h>
#include <stdlib.h>

#include "base/error.h"

#define SCRATCH_MAX_BLOCKS 48
#define SCRATCH_ALIGN 64

typedef struct {
    char *base[SCRATCH_MAX_BLOCKS];
    size_t cap[SCRATCH_MAX_BLOCKS];
    int nblocks;
    int block;
    size_t used;
    size_t in_use;   /* bytes handed out and not released, across blocks */
    size_t peak;
} scratch_t;

static _Thread_local scratch_t g_scratch;

scratch_mark_t scratch_mark(void) {
    scratch_mark_t m = {g_scratch.block, g_scratch.used};
    return m;
}

static size_t bytes_before(const scratch_t *s, int block, size_t used) {
    size_t total = used;
    for (int i = 0; i < block; i++) total += s->cap[i];
    return total;
}

float *scratch_floats(size_t n) {
    scratch_t *s = &g_scratch;
    size_t bytes = (n * sizeof(float) + SCRATCH_ALIGN - 1) & ~(size_t)(SCRATCH_ALIGN - 1);
    if (bytes == 0) bytes = SCRATCH_ALIGN;
    for (;;) {
        if (s->block < s->nblocks && s->used + bytes <= s->cap[s->block]) {
            float *p = (float *)(s->base[s->block] + s->used);
            s->used += bytes;
            /* Counting wasted tails of skipped blocks as "in use" keeps the figure honest. */
            s->in_use = bytes_before(s, s->block, s->used);
            if (s->in_use > s->peak) s->peak = s->in_use;
            return p;
        }
        if (s->block < s->nblocks && s->used > 0) {  /* current block too full: next one */
            s->block++;
            s->used = 0;
            continue;
        }
        if (s->block < s->nblocks) {  /* empty block but too small: replace it */
            free(s->base[s->block]);
            for (int i = s->block + 1; i < s->nblocks; i++) free(s->base[i]);
            s->nblocks = s->block;
        }
        SD_CHECK(s->nblocks < SCRATCH_MAX_BLOCKS, "scratch arena: too many blocks");
        size_t prev = s->nblocks ? s->cap[s->nblocks - 1] : 0;
        size_t cap = bytes > 2 * prev ? bytes : 2 * prev;
        if (cap < ((size_t)1 << 20)) cap = (size_t)1 << 20;
        void *p = NULL;
        if (posix_memalign(&p, SCRATCH_ALIGN, cap) != 0) {
            fprintf(stderr, "%s:%d: out of memory: scratch block of %zu bytes\n", __FILE__, __LINE__, cap);
            abort();
        }
        s->base[s->nblocks] = p;
        s->cap[s->nblocks] = cap;
        s->block = s->nblocks;
        s->nblocks++;
        s->used = 0;
    }
}

void scratch_release(scratch_mark_t mark) {
    g_scratch.block = mark.block;
    g_scratch.used = mark.used;
    g_scratch.in_use = bytes_before(&g_scratch, mark.block, mark.used);
}

size_t scratch_reserved_bytes(void) {
    size_t t = 0;
    for (int i = 0; i < g_scratch.nblocks; i++) t += g_scratch.cap[i];
    return t;
}

size_t scratch_peak_bytes(void) { return g_scratch.peak; }

void scratch_reset_peak(void) { g_scratch.peak = g_scratch.in_use; }

void scratch_free_all(void) {
    for (int i = 0; i < g_scratch.nblocks; i++) free(g_scratch.base[i]);
    scratch_t zero = {0};
    g_scratch = zero;
}
