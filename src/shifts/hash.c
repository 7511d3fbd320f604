/* Base-model hash (shifts.h model_weights_hash): identifies the weights a shift file or an SVD
 * cache belongs to. It hashes the weights as the model computes with them (fp32 values), so an
 * fp16 checkpoint and its fp32 copy, in any file layout, share shift files and SVD factors.
 * Must be fast (it runs on every `generate --shifts` and `train` start over GBs of mapped
 * weights): word-wide multiply-rotate lanes over chunks hashed in parallel. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "base/error.h"
#include "base/hash64.h"
#include "shifts/shifts.h"

#define CHUNK_ELEMS ((size_t)1 << 18)   /* 1 MiB of fp32 values */
#define BLOCK_ELEMS 2048                /* fp16 / bf16 are widened in blocks of this many */

uint64_t bytes_hash64(const void *p, size_t n, uint64_t seed) { return hash_bytes(p, n, seed); }

static int is_float(st_dtype_t dt) { return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_F64; }

/* Hash of elements [e0, e0 + n) of t, as fp32 bytes for F32 / F16 / BF16 (raw for F64). */
static uint64_t hash_chunk(const st_tensor_t *t, size_t e0, size_t n, uint64_t seed) {
    if (t->dtype == ST_F32 || t->dtype == ST_F64) {
        const size_t es = st_dtype_size(t->dtype);
        return hash_bytes((const uint8_t *)t->data + e0 * es, n * es, seed);
    }
    hstate_t s;
    h_init(&s, seed);
    float buf[BLOCK_ELEMS];
    uint16_t half[BLOCK_ELEMS];
    for (size_t i = 0; i < n; i += BLOCK_ELEMS) {
        const size_t m = n - i < BLOCK_ELEMS ? n - i : BLOCK_ELEMS;
        memcpy(half, (const uint16_t *)t->data + e0 + i, m * 2);   /* the mapping may be unaligned */
        st_to_f32(buf, half, t->dtype, m);
        h_absorb(&s, (const uint8_t *)buf, m * sizeof(float));
    }
    return h_final(&s);
}

typedef struct {
    const st_tensor_t *t;
    const char *component;
    size_t first_job, n_chunks;
} htensor_t;

typedef struct {
    int n, cap;
    htensor_t *t;
} hlist_t;

static void add_component(hlist_t *l, const model_component_t *c, const char *name) {
    for (int i = 0; i < c->n_tensors; i++) {
        if (!is_float(c->tensors[i].dtype)) continue;
        if (l->n == l->cap) {
            l->cap = l->cap ? 2 * l->cap : 256;
            l->t = realloc(l->t, sizeof *l->t * (size_t)l->cap);
            SD_CHECK(l->t, "out of memory");
        }
        l->t[l->n++] = (htensor_t){.t = &c->tensors[i], .component = name};
    }
}

/* Identity of a tensor apart from its values: "<component>/<name>" and its element count (not
 * the dtype, nor the shape: layouts store a 1x1 conv as [o, i, 1, 1] or [o, i]). F64 is tagged:
 * it is hashed raw. */
static uint64_t header_hash(const htensor_t *h) {
    char buf[512];
    const int k = snprintf(buf, sizeof buf, "%s/%s|%lld%s", h->component, h->t->name, (long long)h->t->numel,
                           h->t->dtype == ST_F64 ? "|F64" : "");
    return hash_bytes(buf, (size_t)(k < (int)sizeof buf ? k : (int)sizeof buf - 1), 0);
}

int model_weights_hash(const model_t *m, char out[17]) {
    hlist_t l = {0};
    /* component tensors are sorted by diffusers name (model.h) */
    add_component(&l, &m->unet, "unet");
    add_component(&l, &m->text_encoder, "text_encoder");
    if (!l.n) {
        free(l.t);
        return sd_error(SD_ERR_ARG, "%s: no UNet or text-encoder weights to hash", m->path ? m->path : "model");
    }
    size_t n_jobs = 0;
    for (int i = 0; i < l.n; i++) {
        const size_t ne = (size_t)l.t[i].t->numel;
        l.t[i].first_job = n_jobs;
        l.t[i].n_chunks = ne ? (ne + CHUNK_ELEMS - 1) / CHUNK_ELEMS : 1;
        n_jobs += l.t[i].n_chunks;
    }
    /* jobs: (tensor, chunk) pairs, so one big tensor (the token embedding) still spreads */
    uint64_t *chunk = sd_xmalloc(sizeof(uint64_t) * n_jobs);
    int *owner = sd_xmalloc(sizeof(int) * n_jobs);
    for (int i = 0; i < l.n; i++)
        for (size_t j = 0; j < l.t[i].n_chunks; j++) owner[l.t[i].first_job + j] = i;
    size_t total_bytes = 0;
    for (int i = 0; i < l.n; i++) total_bytes += l.t[i].t->nbytes;
    /* threads only pay off beyond a few MB (waking them costs ms on a busy machine) */
#pragma omp parallel for schedule(dynamic, 2) if (total_bytes > ((size_t)16 << 20))
    for (long job = 0; job < (long)n_jobs; job++) {
        const htensor_t *h = &l.t[owner[job]];
        const size_t j = (size_t)job - h->first_job, e0 = j * CHUNK_ELEMS, ne = (size_t)h->t->numel;
        const size_t n = ne - e0 < CHUNK_ELEMS ? ne - e0 : CHUNK_ELEMS;
        chunk[job] = hash_chunk(h->t, e0, n, (uint64_t)j);
        /* read once: do not leave the model counted in RSS next to what training allocates */
        const size_t esize = h->t->numel ? h->t->nbytes / (size_t)h->t->numel : 0;
        st_release_pages(h->t, e0 * esize, n * esize);
    }
    uint64_t total = K2;
    for (int i = 0; i < l.n; i++) {
        uint64_t th = header_hash(&l.t[i]);
        for (size_t j = 0; j < l.t[i].n_chunks; j++) th = fold(th, chunk[l.t[i].first_job + j]);
        total = fold(total, th);
    }
    snprintf(out, 17, "%016llx", (unsigned long long)total);
    free(chunk), free(owner), free(l.t);
    return SD_OK;
}
