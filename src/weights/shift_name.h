/* One name for a shift, from end to end.
 *
 * A shift is named by (component, module path, kind): the UNet, the text encoder or SDXL's second
 * text encoder (text_encoder_2), the diffusers module path ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
 * "text_model.encoder.layers.0.self_attn.q_proj", "mid_block.resnets.0.norm1"), and whether it
 * moves singular values (a spectral delta, [rank]) or a norm's gain ([C] or [1]). Every string
 * that stands for a shift is derived from that triple here, by one rule, and parsed back here:
 *
 *   key                  UNet                 text encoder              text_encoder_2 (SDXL)
 *   trainer parameter    unet/<path>          te/<path>.weight          te2/<path>.weight
 *   training checkpoint  param/unet/<path>    param/te/<path>.weight    param/te2/<path>.weight (adam_m/, adam_v/, ema/ too)
 *   shift file           <path>.delta         <path>.delta              text_encoder_2.<path>.delta
 *   shift set entry      <path>               <path>                    text_encoder_2.<path>
 *   SVD cache (spectral) <path>.U  .S  .Vt    te:<path>.U  .S  .Vt      te2:<path>.U  .S  .Vt
 *   model tensor         <path>.weight        <path>.weight             <path>.weight (of component text_encoder_2)
 *
 * The keys are those of the files svdiff has always written (the text encoder's trainer names end
 * in ".weight" because they once were tensor keys): they stay byte for byte what they are. A text
 * encoder path starts with "text_model." (or is "text_projection", the projection of a
 * CLIPTextModelWithProjection) and a UNet path never does; that is how a shift file key or a model
 * tensor key, which carry no component, is routed. The second text encoder has the same module paths
 * as the first, so its shift file keys and shift set entries carry the prefix "text_encoder_2.": a
 * file's keys route without metadata, and one set may hold entries of every component (a model tensor
 * key cannot say it: its component is the model component it is looked up in). Only SVD cache keys say the kind
 * (they exist for spectral shifts only); for the other keys the kind comes from the module the
 * path names (the visit that produced the name knows it). */
#ifndef SVDIFF_WEIGHTS_SHIFT_NAME_H
#define SVDIFF_WEIGHTS_SHIFT_NAME_H

#include <stddef.h>

typedef enum { SHIFT_UNET = 0, SHIFT_TE = 1, SHIFT_TE2 = 2 } shift_component_t;
#define SHIFT_N_COMPONENTS 3
/* The prefix of a text_encoder_2 shift file key and shift set entry. */
#define SHIFT_TE2_PREFIX "text_encoder_2."
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
    SHIFT_KEY_SET,          /* its entry in a shift set (shifts.h): the file key without ".delta" */
} shift_key_t;

/* The key of kind `key` for `n` into buf. Returns 0, or SD_ERR_ARG (message names the path) when
 * the path is empty, on the wrong side of the "text_model." rule for its component, a cache key is
 * asked of a norm shift, or the key does not fit in cap. */
int shift_key(char *buf, size_t cap, const shift_name_t *n, shift_key_t key);
/* Parses a key of kind `key` back: out->path points into path_buf (cap bytes); component from the
 * key's prefix (trainer, checkpoint, cache keys) or from the path (file and model tensor keys);
 * kind SHIFT_SPECTRAL for cache keys, else SHIFT_KIND_UNKNOWN. Returns 0, or SD_ERR_FORMAT naming
 * the key when it is not a key of that kind (wrong prefix or suffix, empty path, a prefix that
 * disagrees with the path). A model tensor key parses as SHIFT_TE for a text_encoder_2 path too. */
int shift_key_parse(shift_name_t *out, char *path_buf, size_t cap, const char *key, shift_key_t kind);

/* The component of a shift set entry ("text_encoder_2." -> SHIFT_TE2, "text_model." or
 * "text_projection" -> SHIFT_TE, else SHIFT_UNET); a bare module path routes as that of SHIFT_TE or
 * SHIFT_UNET. */
shift_component_t shift_component_of_path(const char *path);
/* The name of a shift set entry: component as above, path the module path (set_path past the
 * "text_encoder_2." prefix; not a copy), kind SHIFT_KIND_UNKNOWN. */
shift_name_t shift_name_of_entry(const char *set_path);
/* The model component names of shift_component_t: "unet", "text_encoder", "text_encoder_2". */
const char *shift_component_name(shift_component_t c);

/* Trainer parameter names of every mode share the component prefix: "unet/<stem>", "te/<stem>",
 * "te2/<stem>" (stem: a shift's module path as above, a LoRA module path, or a full-mode tensor name). */
int train_param_name(char *buf, size_t cap, shift_component_t component, const char *stem);

/* The tensors of a training checkpoint: "<slot>/<trainer parameter name>". */
typedef enum { CKPT_PARAM, CKPT_ADAM_M, CKPT_ADAM_V, CKPT_EMA } ckpt_slot_t;
int ckpt_param_key(char *buf, size_t cap, ckpt_slot_t slot, const char *param_name);

#endif
