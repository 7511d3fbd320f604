/* Placeholders until each function is implemented (removed as they are). */
#include "api/api_internal.h"

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
