/* What the API's source files share: the handles' real structs over the library's types, and the
 * small checks every entry point makes. Internal: never installed, never included by svdiff.h. */
#ifndef SVDIFF_API_INTERNAL_H
#define SVDIFF_API_INTERNAL_H

#include "svdiff.h"

#include "base/error.h"
#include "pipeline/pipeline.h"
#include "shifts/shifts.h"

/* A shift set in memory, as `svdiff shifts` holds its inputs: a file is one part (part 0, all its
 * entries; they are routed by prefix when applied), a training folder two (0: UNet, 1: text
 * encoder). Results of the toolbox keep their first input's form, so they save the same way. */
struct svdiff_shifts {
    int is_dir;              /* loaded from (and saved as) a folder */
    int present[SVDIFF_SHIFTS_PARTS];   /* the part exists (a folder may lack the text encoders') */
    shift_set_t part[SVDIFF_SHIFTS_PARTS];   /* UNet, text encoder, text_encoder_2 (shift_component_t order) */
    st_dtype_t dtype[SVDIFF_SHIFTS_PARTS];   /* as stored: F16 when every tensor of the file is F16, else F32 */
    char *path;              /* the path it was loaded from (messages, to-lora's metadata), or NULL */
    char *file[SVDIFF_SHIFTS_PARTS];    /* the file each part came from (messages), or NULL */
    long kept[SVDIFF_SHIFTS_PARTS];     /* limit_rank results: values kept per part; else -1 */
    int taken[SVDIFF_SHIFTS_PARTS];     /* mix results: entries taken from `from` per part; else -1 */
};

typedef enum { API_AD_SHIFTS = 0, API_AD_DELTA = 1, API_AD_LORA = 2 } api_adapter_kind_t;

/* One applied adapter: a file, or (shifts only) a set in memory copied at apply time. */
typedef struct {
    api_adapter_kind_t kind;
    char *path;               /* NULL for a set in memory */
    svdiff_shifts_t *set;     /* owned copy, or NULL */
    float scale;
} api_adapter_t;

struct svdiff_model {
    pipeline_t p;
    char *path;               /* as given to svdiff_model_open */
    char *svd_cache_dir;      /* NULL: no cache */
    int force;
    int modified;             /* the UNet / text encoder hold more than the base weights */
    int n_adapters;
    api_adapter_t *adapters;
    char *adapters_text;      /* svdiff_model_adapters_text */
};

/* SVDIFF_ERR_ARG "<fn>: <what> is NULL" when p is NULL, else 0. */
#define API_NEED(p, fn) ((p) ? 0 : sd_error(SD_ERR_ARG, "%s: %s is NULL", fn, #p))

/* Deep copies of a shift set (api_shifts.c). */
svdiff_shifts_t *api_shifts_new(void);
void api_shiftset_copy(shift_set_t *dst, const shift_set_t *src);

#endif
