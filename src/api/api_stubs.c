/* Placeholders until each function is implemented (removed as they are). */
#include "api/api_internal.h"

SVDIFF_API svdiff_model_params_t svdiff_model_default_params(void) { svdiff_model_params_t p = {0}; return p; }
SVDIFF_API int svdiff_model_open(const char *path, const svdiff_model_params_t *params, svdiff_model_t **out) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_open: not implemented yet"); }
SVDIFF_API void svdiff_model_close(svdiff_model_t *model) {  }
SVDIFF_API int svdiff_model_info(const svdiff_model_t *model, svdiff_model_info_t *info) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_info: not implemented yet"); }
SVDIFF_API int svdiff_model_latent_shape(const svdiff_model_t *model, int width, int height, int *channels, int *lh, int *lw) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_latent_shape: not implemented yet"); }
SVDIFF_API int svdiff_model_apply_shifts(svdiff_model_t *model, const char *path, float scale) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_apply_shifts: not implemented yet"); }
SVDIFF_API int svdiff_model_apply_lora(svdiff_model_t *model, const char *path, float scale) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_apply_lora: not implemented yet"); }
SVDIFF_API int svdiff_model_apply_delta(svdiff_model_t *model, const char *path, float scale) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_apply_delta: not implemented yet"); }
SVDIFF_API int svdiff_model_apply_shift_set(svdiff_model_t *model, const svdiff_shifts_t *shifts, float scale) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_apply_shift_set: not implemented yet"); }
SVDIFF_API int svdiff_model_clear_adapters(svdiff_model_t *model) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_model_clear_adapters: not implemented yet"); }
SVDIFF_API const char * svdiff_model_adapters_text(const svdiff_model_t *model) { return NULL; }
SVDIFF_API const char * svdiff_sampler_name(svdiff_sampler_t s) { return NULL; }
SVDIFF_API int svdiff_sampler_parse(const char *name, svdiff_sampler_t *out) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_sampler_parse: not implemented yet"); }
SVDIFF_API svdiff_generate_params_t svdiff_generate_default_params(void) { svdiff_generate_params_t p = {0}; return p; }
SVDIFF_API int svdiff_generate(svdiff_model_t *model, const svdiff_generate_params_t *params, svdiff_image_t **out_images) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_generate: not implemented yet"); }
SVDIFF_API char * svdiff_png_parameters(const svdiff_model_t *model, const svdiff_generate_params_t *params, uint64_t seed, const char *model_label) { return NULL; }
SVDIFF_API int svdiff_png_write(const char *path, const uint8_t *rgb, int width, int height, const char *parameters) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_png_write: not implemented yet"); }
SVDIFF_API int svdiff_image_read(const char *path, svdiff_image_t **out) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_image_read: not implemented yet"); }
SVDIFF_API svdiff_train_params_t svdiff_train_default_params(void) { svdiff_train_params_t p = {0}; return p; }
SVDIFF_API int svdiff_train(const svdiff_train_params_t *params) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_train: not implemented yet"); }
SVDIFF_API svdiff_edit_params_t svdiff_edit_default_params(void) { svdiff_edit_params_t p = {0}; return p; }
SVDIFF_API int svdiff_edit(svdiff_model_t *model, const svdiff_edit_params_t *params, svdiff_image_t **out_images, double *psnr) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_edit: not implemented yet"); }
SVDIFF_API int svdiff_shifts_load(const char *path, svdiff_shifts_t **out) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_load: not implemented yet"); }
SVDIFF_API int svdiff_shifts_save(const svdiff_shifts_t *shifts, const char *path, int fp16) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_save: not implemented yet"); }
SVDIFF_API void svdiff_shifts_free(svdiff_shifts_t *shifts) {  }
SVDIFF_API int svdiff_shifts_count(const svdiff_shifts_t *shifts) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_count: not implemented yet"); }
SVDIFF_API int svdiff_shifts_entry(const svdiff_shifts_t *shifts, int i, const char **name, const float **values, int *n) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_entry: not implemented yet"); }
SVDIFF_API const char * svdiff_shifts_meta(const svdiff_shifts_t *shifts, const char *key) { return NULL; }
SVDIFF_API int svdiff_shifts_combine(const svdiff_shifts_t *const *in, const float *weights, int n, int ignore_hash, svdiff_shifts_t **out) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_combine: not implemented yet"); }
SVDIFF_API int svdiff_shifts_scale(const svdiff_shifts_t *in, float s, svdiff_shifts_t **out) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_scale: not implemented yet"); }
SVDIFF_API int svdiff_shifts_limit_rank(const svdiff_shifts_t *in, int rank, svdiff_shifts_t **out, long *n_kept) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_limit_rank: not implemented yet"); }
SVDIFF_API int svdiff_shifts_mix(const svdiff_shifts_t *from, const svdiff_shifts_t *rest, const char *const *selectors, int n_selectors, int levels, int latent, int ignore_hash, svdiff_shifts_t **out, int *n_from) { return sd_error(SVDIFF_ERR_UNSUPPORTED, "svdiff_shifts_mix: not implemented yet"); }
