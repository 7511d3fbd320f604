/* Shift files and the SVD cache.
 *
 * A shift set is what training produces: one 1-D float array per shifted module, keyed by its
 * diffusers module path (the file key is "<path>.delta", docs/method.md section 7; every key of a
 * shift comes from weights/shift_name.h):
 *   spectral deltas   [rank]            e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
 *   norm-gain shifts  [C] (per element) or [1] (svdiff-pytorch's scalar form), e.g. "...norm1"
 * UNet shifts live in spectral_shifts.safetensors, text-encoder shifts in
 * spectral_shifts_te.safetensors (paths like "text_model.encoder.layers.0.self_attn.q_proj"), and
 * SDXL's second text encoder's in spectral_shifts_te2.safetensors, whose keys and set entries carry
 * the prefix "text_encoder_2." (weights/shift_name.h: entries route by their path alone).
 * Metadata (string -> string) carries base_model_hash, prompts, steps, resolution, svdiff
 * version, norm_shift mode.
 *
 * The SVD cache stores, per base model (keyed by its hash), the thin SVD factors U, S, Vt of
 * every matrix that gets shifts, so a model is factored once ("<path>.U", ".S", ".Vt"). */
#ifndef SVDIFF_SHIFTS_H
#define SVDIFF_SHIFTS_H

#include <stdint.h>

#include "io/model.h"
#include "io/safetensors.h"
#include "models/clip.h"
#include "models/unet.h"

typedef struct {
    char *path;      /* diffusers module path, without ".delta" */
    int n;
    float *values;   /* [n], owned */
} shift_entry_t;

typedef struct {
    int n;
    shift_entry_t *entries;   /* sorted by path */
    int n_meta;
    char **meta_keys, **meta_values;
} shift_set_t;

void shiftset_init(shift_set_t *s);
void shiftset_free(shift_set_t *s);
/* Adds (copies) an entry; replaces an existing one with the same path. */
void shiftset_put(shift_set_t *s, const char *path, const float *values, int n);
const shift_entry_t *shiftset_find(const shift_set_t *s, const char *path);
void shiftset_set_meta(shift_set_t *s, const char *key, const char *value);
const char *shiftset_meta(const shift_set_t *s, const char *key);

/* Reads a shift file (ours or svdiff-pytorch's: every tensor named "*.delta", 1-D, F32/F16/
 * BF16; other tensors are an error naming them). */
int shiftset_load(shift_set_t *s, const char *file);
/* Writes atomically with keys "<path>.delta" in dtype ST_F32 or ST_F16 and the metadata (less
 * any ST_PAIR_ID_KEY: a single file is no pair). */
int shiftset_save(const shift_set_t *s, const char *file, st_dtype_t dtype);
/* The UNet and text-encoder files of one result, written together: both carry the same pair id
 * (st_writer_save_pair), so that a reader can tell a pair from two runs' files. */
int shiftset_save_pair(const shift_set_t *unet, const char *unet_file, st_dtype_t unet_dtype, const shift_set_t *te,
                       const char *te_file, st_dtype_t te_dtype);
/* n (1..3) files of one result (SDXL: UNet, text encoder, text_encoder_2) with one id over all of
 * them (st_writer_save_group); nothing is written when a set cannot be (check_savable). n = 2 writes
 * the bytes of shiftset_save_pair, n = 1 those of shiftset_save. */
int shiftset_save_group(const shift_set_t *const *sets, const char *const *files, const st_dtype_t *dtypes, int n);

/* Collects the current shifts of a model (after training). */
void shiftset_from_unet(shift_set_t *s, unet_t *m);
void shiftset_from_clip(shift_set_t *s, clip_t *m);
/* The same for a text encoder of component SHIFT_TE or SHIFT_TE2 (entries "text_encoder_2.<path>"). */
void shiftset_from_clip_as(shift_set_t *s, clip_t *m, shift_component_t component);

/* Applies a shift set to a model: every entry must name a shiftable module of that model and
 * have the right length (rank for a matrix, C or 1 for a norm), else SD_ERR_FORMAT naming it.
 * Modules that are not yet spectral are made spectral (factors from `cache` if given and
 * holding them, else a fresh SVD), keeping the base (exact form). Entries ADD to the model's
 * current shifts multiplied by `scale` (so several files combine: task arithmetic). Factors
 * computed here are recorded in `cache` (svd_cache_put): the caller saves it. Then bake
 * (unet_bake / clip_bake_spectral) for inference. */
typedef struct svd_cache svd_cache_t;
int shiftset_apply_unet(unet_t *m, const shift_set_t *s, float scale, svd_cache_t *cache);
int shiftset_apply_clip(clip_t *m, const shift_set_t *s, float scale, svd_cache_t *cache);
/* The text encoder of `component` (SHIFT_TE, or SHIFT_TE2 whose entries are "text_encoder_2.<path>",
 * cache keys "te2:"); an entry of another component is an unknown module. */
int shiftset_apply_clip_as(clip_t *m, shift_component_t component, const shift_set_t *s, float scale,
                           svd_cache_t *cache);
/* One loaded set of any mix of components, each entry routed by its path (shift_component_of_path)
 * to its model; te2 NULL: a text_encoder_2 entry is SD_ERR_FORMAT naming it. */
int shiftset_apply_models(unet_t *unet, clip_t *te, clip_t *te2, const shift_set_t *s, float scale, svd_cache_t *cache);

/* Base-model hash: a 64-bit hash of the UNet and text-encoder weights as the model computes
 * with them (fp32 values), printed as 16 hex digits. Identical weights hash alike in any layout
 * (diffusers folder, single file, sharded) and in any float dtype that holds them exactly (an
 * fp16 checkpoint and its fp32 copy share shift files and SVD factors, which are computed
 * from the fp32 values anyway).
 * Algorithm (hash.c; changing it orphans every SVD cache and shift-file hash):
 *  - tensors: component "unet" then "text_encoder", each in diffusers-name order; only float
 *    tensors count (integer buffers such as position_ids are not weights);
 *  - values widened to fp32 (F16 / BF16 exactly; F64 is hashed raw and tagged), cut into chunks
 *    of 2^18 values from the tensor's first element; a chunk is read as 8-byte little-endian
 *    words fed round-robin into 4 lanes, lane = rotl(lane ^ (word * K1), 29) * K2, a
 *    zero-padded last word plus the byte count close it, lanes folded with fmix (the
 *    splitmix64 finalizer): fold(h, v) = fmix(h ^ v) + K3;
 *  - tensor hash = fold of hash("<component>/<name>|<element count>") and its chunk hashes in
 *    order; model hash = fold of the tensor hashes in order.
 * Chunks are hashed in parallel (OpenMP), so the speed is that of reading the mapped files. */
int model_weights_hash(const model_t *m, char out[17]);
/* The same fast 64-bit hash over n raw bytes (one lane set, no chunking): checksums of SVD cache
 * tensors. */
uint64_t bytes_hash64(const void *p, size_t n, uint64_t seed);

/* SVD cache: a safetensors file per base model, "<dir>/<hash>.svd.safetensors", holding F32
 * "<path>.U" [rows, rank], "<path>.S" [rank], "<path>.Vt" [rank, cols] per matrix. UNet entries
 * use the module path as is; text-encoder entries carry the prefix "te:"
 * ("te:text_model.encoder.layers.0.self_attn.q_proj.U"), so one file serves a whole model
 * (shift_key SHIFT_KEY_CACHE_U / _S / _VT). Entries are named by the shift they serve.
 * Every tensor's bytes have a checksum in the metadata ("sum:<tensor name>", 16 hex digits of
 * bytes_hash64), checked on lookup. A cache file that cannot be read, belongs to another hash,
 * was written without checksums (an svdiff before format 2), or holds a bad entry (wrong shape
 * or dtype, non-finite values, a checksum mismatch) is reported on stderr and recomputed, never
 * fatal. */
int svd_cache_open(svd_cache_t **c, const char *dir, const char *model_hash);  /* creates dir */
void svd_cache_close(svd_cache_t *c);
/* on: every entry svd_cache_lookup reads from the file is then stored in bf16
 * (spectral_store_bf16) as soon as it is read, so the fp32 factors of the whole model never
 * exist together. For bf16 compute; c may be NULL. */
void svd_cache_set_bf16(svd_cache_t *c, int on);
/* Makes `w` spectral from cached factors of `n` if present (returns 1), else 0. */
int svd_cache_lookup(svd_cache_t *c, const shift_name_t *n, weight_t *w, int keep_base);
/* Records the factors of a spectral weight for the next save. The factors are referenced,
 * not copied (a whole model's U and V are GBs): `sp` must stay alive and unchanged until
 * svd_cache_save or svd_cache_close. */
void svd_cache_put(svd_cache_t *c, const shift_name_t *n, const spectral_t *sp);
/* Writes the cache file atomically (when anything was added: old entries + puts), then serves
 * lookups from the new file and holds no reference to any `sp` any more. */
int svd_cache_save(svd_cache_t *c);
/* Makes a dense `w` spectral: factors of `n` from the cache when it holds them, else an SVD
 * whose factors are then recorded (svd_cache_put). cache may be NULL. Returns 0 or SD_ERR_*. */
int svd_cache_make_spectral(svd_cache_t *c, const shift_name_t *n, weight_t *w, int keep_base);
/* Counters since open: factor sets served by lookups, and recorded by puts (= SVDs computed). */
long svd_cache_loaded(const svd_cache_t *c);
long svd_cache_computed(const svd_cache_t *c);
const char *svd_cache_file(const svd_cache_t *c);
/* Default cache folder: $SVDIFF_CACHE_DIR, else $XDG_CACHE_HOME/svdiff, else
 * $HOME/.cache/svdiff, else ".svdiff-cache". */
void svd_cache_default_dir(char *buf, size_t cap);

/* Makes every dense conv / linear of the UNet spectral (docs/method.md section 2), factors from
 * the cache when it has them, else by SVD (then recorded and the cache saved at the end; a
 * cache that cannot be written is a warning on stderr, not an error).
 * Progress bar over layers on stderr and the total time. cache may be NULL (plain SVDs). */
int unet_make_spectral_cached(unet_t *m, svd_cache_t *cache, int keep_base);
/* unet_make_spectral_cached without the base, the factors then stored in bf16 when bf16 != 0
 * (bf16 compute): read from the cache into bf16 one matrix at a time, computed ones converted as
 * soon as their fp32 copy is in the cache's spill file (an unlinked file in the cache folder, written
 * into the cache at its save), so the fp32 factors of the whole UNet never exist together (without a
 * cache, at once). The training form of `svdiff train` and its bench. */
int unet_make_spectral_stored(unet_t *m, svd_cache_t *cache, int bf16);
/* The text-encoder twin; which: CLIP_SPECTRAL_LINEARS | CLIP_SPECTRAL_EMBEDDINGS. */
int clip_make_spectral_cached(clip_t *m, svd_cache_t *cache, unsigned which, int keep_base);
/* The same for the text encoder of `component` (SHIFT_TE2: cache keys "te2:<path>"). */
int clip_make_spectral_cached_as(clip_t *m, shift_component_t component, svd_cache_t *cache, unsigned which,
                                 int keep_base);

/* "--shifts FILE_OR_DIR[:SCALE]": the part after the last ':' is a scale only when all of it
 * parses as a number (so paths holding ':' still work), and not when the whole argument names
 * an existing file while the part before the ':' does not; scale 1 otherwise. Returns 0 or
 * SD_ERR_ARG (path too long, empty). */
int shift_spec_parse(const char *arg, char *path, size_t cap, float *scale);
/* A shift argument to files: a folder means "<dir>/spectral_shifts.safetensors" (UNet),
 * "<dir>/spectral_shifts_te.safetensors" (text encoder) and "<dir>/spectral_shifts_te2.safetensors"
 * (SDXL's text_encoder_2), files[c] "" for each one absent but not all; a file comes back as
 * files[0] (the others ""): its entries are routed by prefix when applied. Returns 0 or SD_ERR_IO
 * naming what is missing. */
#define SHIFT_PATH_CAP 4096
int shift_files_resolve(const char *file_or_dir, char files[][SHIFT_PATH_CAP]);
/* The file name of component c's part in a folder ("spectral_shifts_te2.safetensors"). */
const char *shift_part_file(shift_component_t c);
/* The files of one folder were written together (st_pair_check of each against the first). */
int shift_files_check_group(char files[][SHIFT_PATH_CAP], int force);

#endif
