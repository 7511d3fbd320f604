/* The layers every model is made of (UNet, CLIP text encoder, VAE), and the registry that
 * describes a model's layers from its config alone.
 *
 * Kinds: a linear [out, in], a conv [out, in, k, k], a norm (GroupNorm or LayerNorm: gain and
 * offset [C]) and an embedding table [rows, cols]. Linears, convs and embeddings hold a weight_t;
 * the state of that weight is one of
 *   dense     the base matrix as stored (weight.h WEIGHT_DENSE, no baked matrix);
 *   spectral  base + SVD factors + a trained shift of the singular values (WEIGHT_SPECTRAL);
 *   LoRA      base + a trained low-rank adapter (WEIGHT_LORA);
 *   delta     a dense base with a merged difference: a full-fine-tuning delta file (generate
 *             --delta) or a LoRA file is added into the weight's effective fp32 matrix
 *             (weight_t.baked, pipeline/adapters.c), which every forward then reads.
 *
 * The registry: each model's builder lists its layers in construction order (diffusers' state
 * dict order), named by their diffusers / transformers module path, with kind and sizes derived
 * from the config. From it come the tensor list a file must hold (io/model_config.c
 * component_validate), the tensors `svdiff init` writes and how they start (models/init.c), and
 * the sizes. */
#ifndef SVDIFF_WEIGHTS_LAYER_H
#define SVDIFF_WEIGHTS_LAYER_H

#include <stdint.h>

#include "weights/spectral.h"
#include "weights/weight.h"

typedef enum { LAYER_LINEAR = 0, LAYER_CONV = 1, LAYER_NORM = 2, LAYER_EMBEDDING = 3 } layer_kind_t;

typedef enum {
    LAYER_STATE_DENSE = 0, LAYER_STATE_SPECTRAL = 1, LAYER_STATE_LORA = 2, LAYER_STATE_DELTA = 3
} layer_state_t;
/* The state of a layer's weight (see above); a spectral weight's baked matrix is only a cache of
 * its factored form and stays spectral. */
layer_state_t layer_state(const weight_t *w);
const char *layer_state_name(layer_state_t s);   /* "dense", "spectral", "lora", "delta" */

/* A conv (k x k) or linear (k = 1) layer: weight [out, in*k*k] and optional fp32 bias [out]. */
typedef struct {
    weight_t w;
    float *bias;       /* NULL when the module has none (UNet to_q / to_k / to_v) */
    int in, out, k;
    int conv;          /* 1: kernel stored [out, in, k, k]; 0: linear [out, in]; -1: either */
    int stride, pad;   /* convs: stride 1 or 2, symmetric padding; pad < 0: (0,1,0,1) */
    int id;            /* index in the model's list of layers */
    char *name;        /* diffusers module path, e.g. "down_blocks.0.resnets.0.conv1" (owned; NULL
                        * where the model names its layers by a table) */
} layer_t;

/* A GroupNorm (groups > 0) or LayerNorm (groups == 0): fp32 gamma/beta [C], and an optional
 * trained shift of the gain (spectral.h normshift_*: [C] element mode, [1] scalar mode). */
typedef struct {
    int C, groups;
    float eps;
    float *gamma, *beta;
    float *shift;              /* NULL: plain gain */
    normshift_mode_t mode;
    float scale;               /* s of the shift */
    int id;                    /* index in the model's list of norms */
    char *name;                /* e.g. "down_blocks.0.resnets.0.norm1" (owned, or NULL as above) */
} norm_layer_t;

/* ---- the registry ---- */

#define LAYER_NAME_MAX 160

typedef struct {
    char name[LAYER_NAME_MAX];   /* module path; its tensors are "<name>.weight" / "<name>.bias" */
    layer_kind_t kind;
    int out, in, k;              /* linear [out, in]; conv [out, in, k, k]; norm [out] (C);
                                  * embedding [out, in] = [rows, cols] */
    int bias;                    /* linear / conv: has "<name>.bias" [out] (norms always do) */
    double init_std;             /* > 0: random init draws the weight from N(0, init_std) and
                                  * zeroes the bias (transformers' CLIP init); 0: PyTorch's
                                  * default for the kind */
} layer_spec_t;

typedef struct {
    int n, cap;
    layer_spec_t *v;
} layer_registry_t;

/* Appends a layer (name printf-style); returns its entry (valid until the next add). */
layer_spec_t *layer_registry_add(layer_registry_t *r, layer_kind_t kind, int out, int in, int k, int bias,
                                 const char *fmt, ...) __attribute__((format(printf, 7, 8)));
/* Appends a copy of an entry. */
void layer_registry_append(layer_registry_t *r, const layer_spec_t *s);
void layer_registry_free(layer_registry_t *r);
/* Entry by module path; NULL if absent. */
const layer_spec_t *layer_registry_find(const layer_registry_t *r, const char *name);

/* The tensors of the registry in order (a layer's weight, then its bias), with their shapes:
 * what a checkpoint of the model holds. fn returning non-zero stops the walk and that value is
 * returned. part: 0 the weight (gain of a norm), 1 the bias (offset of a norm). */
typedef int (*layer_tensor_fn)(void *ctx, const layer_spec_t *spec, int part, const char *name, int ndim,
                               const int64_t *shape);
int layer_registry_tensors(const layer_registry_t *r, layer_tensor_fn fn, void *ctx);

/* fan_in of a linear / conv / embedding: in * k * k (PyTorch's, for init bounds). */
static inline int64_t layer_spec_fan_in(const layer_spec_t *s) { return (int64_t)s->in * s->k * s->k; }

#endif
