/* Spectral shifts exported as a LoRA file (`svdiff shifts to-lora`), for tools that read LoRA but
 * not shift files (ComfyUI, AUTOMATIC1111 / Forge, diffusers).
 *
 * A shifted matrix differs from its base by dW = U diag(ds) V^T with ds = ReLU(S + s*delta) - S
 * (spectral_coeffs with the residual), U and V orthonormal. The best rank-r approximation of dW
 * (Frobenius and spectral norm) keeps the r entries of ds largest in |ds|, and is a LoRA as it
 * stands: up = U_r diag(ds_r) [out, r], down = V_r^T [r, in], alpha = r (loader scale alpha/r = 1).
 * A conv kernel [out, in*kh*kw] gives down [r, in, kh, kw] and up [out, r, 1, 1] (kohya's conv
 * LoRA). The rank of a layer is the smallest keeping a fraction `energy` of ||dW||_F^2 = sum ds^2,
 * at most `max_rank`.
 *
 * Norm-gain shifts change a vector, not a matrix: they are written as the full difference of the
 * gain, "<module>.diff" shaped like the norm weight (the key LyCORIS-aware loaders read: ComfyUI,
 * A1111's built-in Lora extension), or dropped (no_norms) with a warning.
 *
 * Key names:
 *   kohya      lora_unet_<module, '.' -> '_'>.lora_down.weight / .lora_up.weight / .alpha (0-d),
 *              lora_te_<module ...> for the text encoder (SDXL: lora_te1_ and lora_te2_ for its two,
 *              the names ComfyUI and A1111 read for CLIP-L and OpenCLIP-G), norm gains
 *              lora_unet_<module>.diff;
 *   diffusers  unet.<module>.lora_A.weight / .lora_B.weight, text_encoder.<module>...,
 *              text_encoder_2.<module>...; diffusers' peft loader takes a single alpha per component, so the layers of a component are
 *              padded with zero rows to its largest rank (exact) and no alpha is written (alpha =
 *              rank). It has no key for a full norm difference: norm shifts then need no_norms. */
#ifndef SVDIFF_PIPELINE_LORA_EXPORT_H
#define SVDIFF_PIPELINE_LORA_EXPORT_H

#include "pipeline/pipeline.h"
#include "shifts/shifts.h"

typedef enum { LORA_FORMAT_KOHYA = 0, LORA_FORMAT_DIFFUSERS = 1 } lora_format_t;

typedef struct {
    lora_format_t format;
    int max_rank;            /* 0: no cap */
    double energy;           /* (0, 1]: fraction of ||dW||_F^2 kept per layer */
    st_dtype_t dtype;        /* ST_F32, ST_F16 or ST_BF16 */
    int no_norms;            /* drop norm-gain shifts (warning) instead of writing .diff keys */
    int no_embeddings;       /* drop text-encoder embedding shifts (warning) */
    int force;               /* shifts of another base model */
    const char *svd_cache_dir;   /* NULL or "": no cache (fresh SVDs) */
    const char *source;      /* the shifts argument, for the metadata */
    int check;               /* measure the error of the written factors (stats err2 / ref2) */
} lora_export_opts_t;

/* What went into the file, per component (0 UNet, 1 the text encoders: SDXL's two together). */
typedef struct {
    int layers;              /* matrices written as LoRA factors */
    int zero_layers;         /* shifted matrices and norms whose difference is exactly 0 (not written) */
    int norms;               /* norm gains written as .diff */
    int dropped;             /* shifts left out (no_norms / no_embeddings) */
    int rank_min, rank_max;  /* over the layers written (0, 0 when none) */
    double energy_total;     /* sum over layers of ||dW||_F^2 */
    double energy_kept;      /* of it, what the kept ranks hold */
    long bytes;              /* tensor bytes of this component in the file */
    /* with opts.check: sum over the exported modules of ||W_lora - W_shifted||_F^2 (the written
     * factors, rounded to the file's dtype, against the exact shifted weights) and of
     * ||W_shifted - W_base||_F^2; their ratio's root is the relative error of the merged weights */
    double err2, ref2;
} lora_export_stats_t;

/* Rank of one layer: order[0..n) receives the indices of ds by |ds| descending (ties by index);
 * returns the smallest r with sum_{k<r} ds[order[k]]^2 >= energy * sum ds^2, capped at max_rank
 * (> 0) and at the number of non-zero entries; 0 when every ds is 0. *kept: the kept sum of
 * squares (may be NULL). */
int lora_export_rank(const float *ds, int n, double energy, int max_rank, int *order, double *kept);

/* Exports the shift sets (entries under "text_model." belong to the text encoder, those under
 * "text_encoder_2." to SDXL's second one, the rest to the UNet; several sets add up as in generate) against the base model opened in p (not modified in
 * its base weights: the model is made spectral where shifted). The file is written atomically to
 * `out` (st_writer_save). A set whose base_model_hash differs from p's model is refused unless
 * o->force. Returns 0 or SD_ERR_* with a message; stats[2] filled on success. */
int lora_export(pipeline_t *p, const shift_set_t *const *sets, int n_sets, const lora_export_opts_t *o,
                const char *out, lora_export_stats_t stats[2]);

#endif
