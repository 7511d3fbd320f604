/* svdiff_output_check, svdiff_folder_lock and the latents files of `svdiff generate` (--init-latents / --save-latents):
 * a safetensors file with one F32 tensor "latents" [N, C, h, w] of unscaled unit noise. */
#include <stdlib.h>
#include <string.h>

#include "api/api_internal.h"
#include "io/outputs.h"
#include "io/runlock.h"
#include "io/safetensors.h"
#include "ops/ops.h"

SVDIFF_API int svdiff_output_check(const char *path) {
    int rc = API_NEED(path, "svdiff_output_check");
    return rc ? rc : outputs_check(path);
}

static int shape_ok(int n, int c, int h, int w, const char *fn) {
    if (n < 1 || c < 1 || h < 1 || w < 1)
        return sd_error(SD_ERR_ARG, "%s: the shape [%d, %d, %d, %d] must be positive", fn, n, c, h, w);
    return SD_OK;
}

SVDIFF_API int svdiff_latents_read(const char *path, int n, int C, int h, int w, float *dst) {
    int rc = API_NEED(path, "svdiff_latents_read");
    if (!rc) rc = API_NEED(dst, "svdiff_latents_read");
    if (!rc) rc = shape_ok(n, C, h, w, "svdiff_latents_read");
    if (rc) return rc;
    st_file_t f;
    if ((rc = st_open(&f, path))) return rc;
    const st_tensor_t *t = st_find(&f, "latents");
    if (!t && f.n_tensors == 1) t = &f.tensors[0];
    if (!t) {
        st_close(&f);
        return sd_error(SD_ERR_FORMAT, "%s: no tensor named 'latents'", path);
    }
    const size_t per = (size_t)C * h * w;
    const int64_t rows = t->ndim == 4 ? t->shape[0] : 0;
    if (t->ndim != 4 || (rows != 1 && rows != n) || t->shape[1] != C || t->shape[2] != h || t->shape[3] != w) {
        char rows_ok[32];
        snprintf(rows_ok, sizeof rows_ok, n == 1 ? "1" : "%d or 1", n);
        rc = sd_error(SD_ERR_SHAPE, "%s: tensor '%s' must be [%s, %d, %d, %d] for this model and size", path,
                      t->name, rows_ok, C, h, w);
        st_close(&f);
        return rc;
    }
    float *tmp = sd_xmalloc(sizeof(float) * (size_t)rows * per);
    rc = st_read_f32(tmp, t);
    const size_t bad = rc ? 0 : first_nonfinite(tmp, (size_t)rows * per);
    if (!rc && bad < (size_t)rows * per)
        rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' holds a non-finite value (NaN or Inf) at flat index %zu", path,
                      t->name, bad);
    for (int k = 0; !rc && k < n; k++) memcpy(dst + k * per, tmp + (rows == 1 ? 0 : k * per), sizeof(float) * per);
    free(tmp);
    st_close(&f);
    return rc;
}

SVDIFF_API int svdiff_latents_write(const char *path, const float *latents, int n, int C, int h, int w,
                                    const char *const *meta, int n_meta) {
    int rc = API_NEED(path, "svdiff_latents_write");
    if (!rc) rc = API_NEED(latents, "svdiff_latents_write");
    if (!rc) rc = shape_ok(n, C, h, w, "svdiff_latents_write");
    if (!rc && n_meta > 0) rc = API_NEED(meta, "svdiff_latents_write");
    if (rc) return rc;
    st_writer_t *sw = st_writer_new();
    const int64_t shape[4] = {n, C, h, w};
    rc = st_writer_add(sw, "latents", ST_F32, 4, shape, latents);
    for (int k = 0; k < n_meta && !rc; k++) {
        if (!meta[2 * k] || !meta[2 * k + 1])
            rc = sd_error(SD_ERR_ARG, "svdiff_latents_write: metadata pair %d has a NULL key or value", k);
        else rc = st_writer_meta(sw, meta[2 * k], meta[2 * k + 1]);
    }
    if (!rc) rc = st_writer_meta(sw, "svdiff_version", SVDIFF_VERSION);
    if (!rc) rc = st_writer_save(sw, path);
    st_writer_free(sw);
    return rc;
}

/* ---- the lock of a run's output folder (io/runlock.h) ---- */

struct svdiff_folder_lock {
    run_lock_t lock;
};

SVDIFF_API int svdiff_folder_lock(const char *dir, svdiff_folder_lock_t **out) {
    int rc = API_NEED(out, "svdiff_folder_lock");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(dir, "svdiff_folder_lock"))) return rc;
    svdiff_folder_lock_t *l = sd_xcalloc(1, sizeof *l);
    if ((rc = run_lock_take(&l->lock, dir))) {
        free(l);
        return rc;
    }
    outputs_remove_stale_temps(dir);
    *out = l;
    return SD_OK;
}

SVDIFF_API void svdiff_folder_unlock(svdiff_folder_lock_t *l) {
    if (!l) return;
    run_lock_release(&l->lock);
    free(l);
}
