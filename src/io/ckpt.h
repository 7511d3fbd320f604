/* PyTorch checkpoints (.ckpt / .pt / .pth written by torch.save since PyTorch 1.6): a zip archive
 * (read through libzip) with one top folder <prefix>/ holding
 *   data.pkl    the pickled object (io/pickle.h reads it without running anything),
 *   data/<key>  the raw bytes of each storage, little-endian,
 *   byteorder   "little" (written by newer versions; absent means little, "big" is refused),
 *   version, .data/serialization_id (ignored).
 * The tensors read are the values of the state dict: the pickled dict itself, or its
 * "state_dict" entry when it has one (PyTorch Lightning and the original Stable Diffusion
 * checkpoints keep global_step, optimizer states etc. beside it; those are never read, nor
 * their storages). Views are checked against their storages (offset, sizes, strides; overflow
 * safe); contiguous ones point into the storage bytes, the others are copied out. */
#ifndef SVDIFF_IO_CKPT_H
#define SVDIFF_IO_CKPT_H

#include "io/pickle.h"
#include "io/safetensors.h"

#define CKPT_MAX_PICKLE_BYTES (256u << 20)   /* data.pkl of SD checkpoints is ~100 KB */

/* Whether `path` names a checkpoint of this format by its extension (.ckpt, .pt, .pth). */
int ckpt_is_path(const char *path);

/* Opens the checkpoint into *f as st_open would a safetensors file: tensors in the archive's
 * dtypes, names as in the state dict, data read-only (an in-memory file mapped by f->map:
 * st_release_pages is safe on it). `keep` (NULL: every tensor) chooses the tensors by name; the
 * storages of the others are not read (the model loader leaves out the EMA copy of the UNet, half
 * of a full SD 1.x checkpoint). Errors (SD_ERR_IO / SD_ERR_FORMAT) name the file and, where one
 * is at fault, the archive entry, the pickle byte or the tensor; *f is then left closed. */
typedef int (*ckpt_keep_fn)(const char *name);
int ckpt_open(st_file_t *f, const char *path, ckpt_keep_fn keep);

/* One tensor of the state dict, as the pickle describes it (the first half of ckpt_open, exposed
 * for the fuzz harness and the tests). */
typedef struct {
    const char *name;
    const pk_value_t *t;   /* PK_TENSOR */
} ckpt_entry_t;

/* Picks the state dict of a loaded pickle and lists its tensors (*out malloc'ed, *n entries; pairs
 * whose value is not a tensor are skipped; a tensor under a key that is not a string, a dtype
 * svdiff cannot read, or no tensor at all is an error). `what` prefixes errors. */
int ckpt_state_dict(const pk_t *pk, const char *what, ckpt_entry_t **out, int *n);

#endif
