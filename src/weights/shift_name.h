/* One name for a shift, from end to end.
 *
 * A shift is named by (component, module path, kind): the UNet or the text encoder, the diffusers
 * module path ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
 * "text_model.encoder.layers.0.self_attn.q_proj", "mid_block.resnets.0.norm1"), and whether it
 * moves singular values (a spectral delta, [rank]) or a norm's gain ([C] or [1]). Every string
 * that stands for a shift is derived from that triple here, by one rule, and parsed back here:
 *
 *   key                  UNet                         text encoder
 *   trainer parameter    unet/<path>                  te/<path>.weight
 *   training checkpoint  param/unet/<path>            param/te/<path>.weight   (adam_m/, adam_v/, ema/ too)
 *   shift file           <path>.delta                 <path>.delta
 *   SVD cache (spectral) <path>.U  .S  .Vt            te:<path>.U  .S  .Vt
 *   model tensor         <path>.weight                <path>.weight
 *
 * The keys are those of the files svdiff has always written (the text encoder's trainer names end
 * in ".weight" because they once were tensor keys): they stay byte for byte what they are. A text
 * encoder path starts with "text_model." and a UNet path never does; that is how a shift file key
 * or a model tensor key, which carry no component, is routed. Only SVD cache keys say the kind
 * (they exist for spectral shifts only); for the other keys the kind comes from the module the
 * path names (the visit that produced the name knows it). */
#ifndef SVDIFF_WEIGHTS_SHIFT_NAME_H
#define SVDIFF_WEIGHTS_SHIFT_NAME_H

#include <stddef.h>

typedef enum { SHIFT_UNET = 0, SHIFT_TE = 1 } shift_component_t;
typedef enum {
    SHIFT_KIND_UNKNOWN = 0,   /* a parsed key that does not carry the kind */
    SHIFT_SPECTRAL = 1,       /* delta of a matrix's singular values [rank] */
    SHIFT_NORM = 2,           /* shift of a GroupNorm / LayerNorm gain [C] or [1] */
} shift_kind_t;

typedef struct {
    shift_component_t component;
    shift_kind_t kind;
    const char *path;   /* diffusers module path (not owned) */
} shift_name_t;

typedef enum {
    SHIFT_KEY_TRAINER,      /* trainer parameter name */
    SHIFT_KEY_CHECKPOINT,   /* its value in a training checkpoint ("param/" + trainer name) */
    SHIFT_KEY_FILE,         /* shift file tensor */
    SHIFT_KEY_CACHE_U,      /* SVD cache factors of a spectral shift's matrix */
    SHIFT_KEY_CACHE_S,
    SHIFT_KEY_CACHE_VT,
    SHIFT_KEY_WEIGHT,       /* the base model tensor the shift moves */
} shift_key_t;

/* The key of kind `key` for `n` into buf. Returns 0, or SD_ERR_ARG (message names the path) when
 * the path is empty, on the wrong side of the "text_model." rule for its component, a cache key is
 * asked of a norm shift, or the key does not fit in cap. */
int shift_key(char *buf, size_t cap, const shift_name_t *n, shift_key_t key);
/* Parses a key of kind `key` back: out->path points into path_buf (cap bytes); component from the
 * key's prefix (trainer, checkpoint, cache keys) or from the path (file and model tensor keys);
 * kind SHIFT_SPECTRAL for cache keys, else SHIFT_KIND_UNKNOWN. Returns 0, or SD_ERR_FORMAT naming
 * the key when it is not a key of that kind (wrong prefix or suffix, empty path, a prefix that
 * disagrees with the path). */
int shift_key_parse(shift_name_t *out, char *path_buf, size_t cap, const char *key, shift_key_t kind);

/* The component whose modules a path names ("text_model." -> SHIFT_TE, else SHIFT_UNET). */
shift_component_t shift_component_of_path(const char *path);

/* Trainer parameter names of every mode share the component prefix: "unet/<stem>", "te/<stem>"
 * (stem: a shift's module path as above, a LoRA module path, or a full-mode tensor name). */
int train_param_name(char *buf, size_t cap, shift_component_t component, const char *stem);

/* The tensors of a training checkpoint: "<slot>/<trainer parameter name>". */
typedef enum { CKPT_PARAM, CKPT_ADAM_M, CKPT_ADAM_V, CKPT_EMA } ckpt_slot_t;
int ckpt_param_key(char *buf, size_t cap, ckpt_slot_t slot, const char *param_name);

#endif
