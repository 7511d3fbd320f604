/* safetensors files: a memory-mapped, validated reader (single files and sharded
 * `*.safetensors.index.json` sets) and an atomic writer (temp file, fsync, rename).
 * Format: u64 little-endian header length N, N bytes of JSON
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the data; offsets are relative to the end of the header. */
#ifndef SVDIFF_IO_SAFETENSORS_H
#define SVDIFF_IO_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
#define ST_MAX_HEADER_BYTES (100u * 1000u * 1000u) /* the reference implementation's cap */

typedef enum {
    ST_BOOL, ST_U8, ST_I8, ST_I16, ST_U16, ST_F16, ST_BF16, ST_I32, ST_U32, ST_F32,
    ST_F64, ST_I64, ST_U64, ST_F8_E4M3, ST_F8_E5M2, ST_DTYPE_COUNT
} st_dtype_t;

const char *st_dtype_name(st_dtype_t dt);     /* "F32", ... */
size_t st_dtype_size(st_dtype_t dt);          /* bytes per element */
int st_dtype_parse(const char *name, st_dtype_t *out); /* 0 or SD_ERR_FORMAT */

typedef struct {
    char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data;   /* points into the mapping (read-only) */
} st_tensor_t;

typedef struct {
    char *path;
    void *map;          /* whole file, mmap'ed read-only */
    size_t map_size;
    int n_tensors;
    st_tensor_t *tensors;   /* in data-offset order */
    int n_meta;
    char **meta_keys;
    char **meta_values;
} st_file_t;

/* Opens and validates `path`. On error returns SD_ERR_IO/SD_ERR_FORMAT with a message that
 * names the file and, where one is at fault, the tensor; *f is then left closed. */
int st_open(st_file_t *f, const char *path);
void st_close(st_file_t *f);
const st_tensor_t *st_find(const st_file_t *f, const char *name);   /* NULL if absent */
const char *st_meta(const st_file_t *f, const char *key);            /* NULL if absent */

/* For readers of other formats that fill an st_file_t (io/ckpt.c): st_file_alloc makes room for
 * n zeroed tensors in the layout st_find expects (f->n_tensors = n); once names and views are
 * set, st_file_index sorts the name index, refusing a repeated name or one that is not UTF-8.
 * st_close frees the names and unmaps f->map. */
void st_file_alloc(st_file_t *f, int n);
int st_file_index(st_file_t *f);

/* Drops the whole pages of bytes [offset, offset + n) of a tensor's data from the process's
 * resident set (madvise DONTNEED on the read-only mapping). Only for tensors of an opened
 * file (st_open): on anonymous memory DONTNEED would zero the data. The page cache keeps the
 * pages, so a later read faults them back in cheaply. For data read once and copied (hashing, SVD cache
 * loading) so that it is not counted twice in RSS. */
void st_release_pages(const st_tensor_t *t, size_t offset, size_t n);

/* Converts an F32/F16/BF16 tensor to float (dst holds t->numel floats). Other dtypes:
 * SD_ERR_FORMAT naming the tensor. */
int st_read_f32(float *dst, const st_tensor_t *t);
/* Copies an I64/I32 tensor to int64 (dst holds t->numel values). */
int st_read_i64(int64_t *dst, const st_tensor_t *t);

/* A set of files: one .safetensors, or a sharded model named by its *.index.json
 * ({"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}), shards resolved
 * relative to the index's folder. Every tensor of the weight map must exist in its shard. */
typedef struct {
    int n_files;
    st_file_t *files;
    int n_tensors;
    const st_tensor_t **tensors;   /* sorted by name, for st_set_find */
} st_set_t;

int st_set_open(st_set_t *s, const char *path);  /* path: a .safetensors or an .index.json */
/* A set of the one opened file *f, which the set now owns (*f is left empty). */
void st_set_adopt(st_set_t *s, st_file_t *f);
void st_set_close(st_set_t *s);
const st_tensor_t *st_set_find(const st_set_t *s, const char *name);

/* Writer. Tensors are referenced, not copied: data must stay valid until st_writer_save.
 * Names must be unique (st_writer_add fails otherwise). Data is laid out back to back in
 * insertion order (the reference reader rejects gaps between tensors); the header is padded
 * with spaces so the data region starts 8-byte aligned. Readers must not assume aligned
 * tensors (st_read_* copy through memcpy). Save is atomic: "<path>.tmp.<pid>", fsync,
 * rename, fsync of the folder. */
typedef struct st_writer st_writer_t;
st_writer_t *st_writer_new(void);
void st_writer_free(st_writer_t *w);
int st_writer_add(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim,
                  const int64_t *shape, const void *data);
/* st_writer_add for data inside a read-only file mapping (a file being rewritten, a spill file): the
 * save drops its pages after writing them (MADV_DONTNEED; the file keeps the data), so rewriting a
 * large mapped file does not hold all of it resident. Never for anonymous memory, which it would zero. */
int st_writer_add_mapped(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                         const void *data);
int st_writer_meta(st_writer_t *w, const char *key, const char *value);
int st_writer_save(st_writer_t *w, const char *path);

/* Files written together (spectral_shifts + spectral_shifts_te, weight_delta + weight_delta_te)
 * carry the same metadata ST_PAIR_ID_KEY: 16 hex digits hashing both files' headers (without the
 * id) and tensor data, so the same settings and seed still give the same bytes. The files are
 * saved one after the other (a, then b), each atomically; a process killed between the two
 * renames leaves a pair whose ids differ, which st_pair_check tells. */
#define ST_PAIR_ID_KEY "pair_id"
int st_writer_save_pair(st_writer_t *a, const char *path_a, st_writer_t *b, const char *path_b);
/* The same for n files (SDXL's spectral_shifts, _te, _te2): one id over all of them, in order; a
 * pair saved as a group of 2 gets the bytes st_writer_save_pair gives. */
int st_writer_save_group(st_writer_t *const *w, const char *const *paths, int n);
/* Whether two files that are used together were written together: 0 when both carry the same
 * pair id, or neither carries one (files of older versions), or a path is NULL / "". Otherwise
 * SD_ERR_FORMAT naming both files, or with `force` a warning on stderr and 0. */
int st_pair_check(const char *path_a, const char *path_b, int force);

/* fp16 / bf16 conversions (round to nearest even on the way down). */
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);
float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);
/* dst[n] = the n values at src, stored in `dtype` (F32, F16 or BF16), as fp32: exact, the same
 * bits as st_f16_to_f32 / st_bf16_to_f32 value by value (F16C's vcvtph2ps where the CPU has it,
 * 8 values an instruction). src may be unaligned. Parallel (OpenMP) above 65536 values, one thread below, so
 * that callers already in a parallel region can convert small blocks. */
void st_to_f32(float *dst, const void *src, st_dtype_t dtype, size_t n);

#endif
