/* Scratch memory for operator temporaries (im2col columns, attention score blocks, ...).
 * A per-thread stack arena: take a mark, allocate, release back to the mark. Blocks are
 * kept after release, so after the first call of a given shape the hot path never calls
 * malloc. Pointers stay valid until released (blocks never move). 64-byte aligned. */
#ifndef SVDIFF_BASE_SCRATCH_H
#define SVDIFF_BASE_SCRATCH_H

#include <stddef.h>

typedef struct {
    int block;     /* index of the block in use */
    size_t used;   /* bytes used in that block */
} scratch_mark_t;

scratch_mark_t scratch_mark(void);
/* n floats, uninitialised. Aborts (with file:line of scratch.c) if memory runs out. */
float *scratch_floats(size_t n);
void scratch_release(scratch_mark_t mark);
/* Bytes currently reserved by this thread's arena, the most ever in use, and a reset of
 * that high-water mark (benchmarks and memory tests read these). */
size_t scratch_reserved_bytes(void);
size_t scratch_peak_bytes(void);
void scratch_reset_peak(void);
/* Frees this thread's blocks (call at the end of a program or a test). */
void scratch_free_all(void);

#endif
