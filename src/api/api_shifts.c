/* svdiff_shifts_*: shift sets in memory and the toolbox over them (shifts/toolbox.h), with the
 * file and folder handling of `svdiff shifts` (a file is one set, a folder two parts written as a
 * pair), so a client gets the bytes the CLI writes. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "api/api_internal.h"
#include "shifts/toolbox.h"


svdiff_shifts_t *api_shifts_new(void) {
    svdiff_shifts_t *s = sd_xcalloc(1, sizeof *s);
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) shiftset_init(&s->part[p]), s->dtype[p] = ST_F32, s->kept[p] = -1, s->taken[p] = -1;
    return s;
}

void api_shiftset_copy(shift_set_t *dst, const shift_set_t *src) {
    toolbox_scale(dst, src, 1.0f);   /* s = 1 copies bit for bit, metadata included */
}

SVDIFF_API void svdiff_shifts_free(svdiff_shifts_t *s) {
    if (!s) return;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) shiftset_free(&s->part[p]), free(s->file[p]);
    free(s->path), free(s);
}

/* F16 when every tensor of the file is F16, else F32 (what a rewrite keeps). */
static int file_dtype(const char *file, st_dtype_t *dt) {
    st_file_t f;
    int rc = st_open(&f, file);
    if (rc) return rc;
    int all16 = f.n_tensors > 0;
    for (int i = 0; i < f.n_tensors; i++) all16 &= f.tensors[i].dtype == ST_F16;
    *dt = all16 ? ST_F16 : ST_F32;
    st_close(&f);
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_load_ex(const char *path, int force, svdiff_shifts_t **out) {
    int rc = API_NEED(out, "svdiff_shifts_load");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(path, "svdiff_shifts_load"))) return rc;
    svdiff_shifts_t *s = api_shifts_new();
    struct stat st;
    s->is_dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    s->path = strdup(path);
    SD_CHECK(s->path, "out of memory");
    char file[SVDIFF_SHIFTS_PARTS][SHIFT_PATH_CAP];
    rc = shift_files_resolve(path, file);
    if (!rc) rc = shift_files_check_group(file, force);
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS && !rc; p++) {
        if (!file[p][0]) continue;
        s->present[p] = 1;
        s->file[p] = strdup(file[p]);
        SD_CHECK(s->file[p], "out of memory");
        rc = shiftset_load(&s->part[p], file[p]);
        if (!rc) rc = file_dtype(file[p], &s->dtype[p]);
    }
    if (rc) {
        svdiff_shifts_free(s);
        return rc;
    }
    *out = s;
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_load(const char *path, svdiff_shifts_t **out) { return svdiff_shifts_load_ex(path, 0, out); }

SVDIFF_API int svdiff_shifts_save(const svdiff_shifts_t *s, const char *path, int fp16) {
    int rc = API_NEED(s, "svdiff_shifts_save");
    if (!rc) rc = API_NEED(path, "svdiff_shifts_save");
    if (rc) return rc;
    st_dtype_t dtype[SVDIFF_SHIFTS_PARTS];
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) dtype[p] = fp16 < 0 ? s->dtype[p] : fp16 ? ST_F16 : ST_F32;
    char file[SVDIFF_SHIFTS_PARTS][4096];
    struct stat st;
    if (s->is_dir && !stat(path, &st) && !S_ISDIR(st.st_mode))
        return sd_error(SD_ERR_IO, "%s: exists and is not a folder (the inputs are folders)", path);
    if (s->is_dir && mkdir(path, 0777) != 0 && errno != EEXIST)
        return sd_error(SD_ERR_IO, "%s: cannot create the output folder: %s", path, strerror(errno));
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        if (s->is_dir) snprintf(file[p], sizeof file[p], "%.*s/%s", 4000, path, shift_part_file((shift_component_t)p));
        else snprintf(file[p], sizeof file[p], "%s", path);
    /* the parts of a folder: one group id (one file alone: none, as shiftset_save) */
    const shift_set_t *sets[SVDIFF_SHIFTS_PARTS];
    const char *files[SVDIFF_SHIFTS_PARTS];
    st_dtype_t dts[SVDIFF_SHIFTS_PARTS];
    int n = 0;
    for (int p = 0; p < (s->is_dir ? SVDIFF_SHIFTS_PARTS : 1); p++)
        if (s->present[p]) sets[n] = &s->part[p], files[n] = file[p], dts[n] = dtype[p], n++;
    return n ? shiftset_save_group(sets, files, dts, n) : SD_OK;
}

SVDIFF_API int svdiff_shifts_count(const svdiff_shifts_t *s) { return s ? s->part[0].n + s->part[1].n + s->part[2].n : 0; }

SVDIFF_API int svdiff_shifts_entry(const svdiff_shifts_t *s, int i, const char **name, const float **values, int *n) {
    int rc = API_NEED(s, "svdiff_shifts_entry");
    if (rc) return rc;
    if (i < 0 || i >= svdiff_shifts_count(s))
        return sd_error(SD_ERR_ARG, "svdiff_shifts_entry: index %d out of range (%d entries)", i, svdiff_shifts_count(s));
    int p = 0;
    while (i >= s->part[p].n) i -= s->part[p++].n;
    const shift_entry_t *e = &s->part[p].entries[i];
    if (name) *name = e->path;
    if (values) *values = e->values;
    if (n) *n = e->n;
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_part(const svdiff_shifts_t *s, int part, svdiff_shifts_part_t *info) {
    int rc = API_NEED(s, "svdiff_shifts_part");
    if (!rc) rc = API_NEED(info, "svdiff_shifts_part");
    if (rc) return rc;
    if (part < 0 || part >= SVDIFF_SHIFTS_PARTS)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_part: part must be 0, 1 or 2, got %d", part);
    memset(info, 0, sizeof *info);
    const shift_set_t *set = &s->part[part];
    info->present = s->present[part];
    info->folder = s->is_dir;
    info->file = s->file[part];
    info->entries = set->n;
    for (int i = 0; i < set->n; i++) {
        info->values += set->entries[i].n;
        toolbox_is_norm_path(set->entries[i].path) ? info->norms++ : info->matrices++;
    }
    info->dtype = st_dtype_name(s->dtype[part]);
    info->dtype_bytes = (int)st_dtype_size(s->dtype[part]);
    info->kept = s->kept[part];
    info->taken = s->taken[part];
    info->n_meta = set->n_meta;
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_meta_at(const svdiff_shifts_t *s, int part, int i, const char **key, const char **value) {
    int rc = API_NEED(s, "svdiff_shifts_meta_at");
    if (rc) return rc;
    if (part < 0 || part >= SVDIFF_SHIFTS_PARTS)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_meta_at: part must be 0, 1 or 2, got %d", part);
    if (i < 0 || i >= s->part[part].n_meta)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_meta_at: index %d out of range (%d entries)", i, s->part[part].n_meta);
    if (key) *key = s->part[part].meta_keys[i];
    if (value) *value = s->part[part].meta_values[i];
    return SD_OK;
}

SVDIFF_API const char *svdiff_shifts_meta(const svdiff_shifts_t *s, const char *key) {
    if (!s || !key) return NULL;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) {
        const char *v = s->present[p] ? shiftset_meta(&s->part[p], key) : NULL;
        if (v) return v;
    }
    return NULL;
}

SVDIFF_API int svdiff_shifts_set_meta(svdiff_shifts_t *s, const char *key, const char *value) {
    int rc = API_NEED(s, "svdiff_shifts_set_meta");
    if (!rc) rc = API_NEED(key, "svdiff_shifts_set_meta");
    if (!rc) rc = API_NEED(value, "svdiff_shifts_set_meta");
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS && !rc; p++)
        if (s->present[p]) shiftset_set_meta(&s->part[p], key, value);
    return rc;
}

SVDIFF_API int svdiff_shifts_add_history(svdiff_shifts_t *s, const char *entry) {
    int rc = API_NEED(s, "svdiff_shifts_add_history");
    if (!rc) rc = API_NEED(entry, "svdiff_shifts_add_history");
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS && !rc; p++)
        if (s->present[p]) toolbox_add_history(&s->part[p], entry);
    return rc;
}

/* A result in the form of its first input (one part or a folder's parts, their dtypes). */
static svdiff_shifts_t *result_like(const svdiff_shifts_t *in) {
    svdiff_shifts_t *r = api_shifts_new();
    r->is_dir = in->is_dir;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++) r->present[p] = in->present[p], r->dtype[p] = in->dtype[p];
    return r;
}

static const char *label(const svdiff_shifts_t *s, int p, const char *fallback) {
    return s->file[p] ? s->file[p] : fallback;
}

/* the inputs must be all files or all folders holding the same parts */
static int alike(const svdiff_shifts_t *a, const svdiff_shifts_t *b, const char *na, const char *nb) {
    if (a->is_dir != b->is_dir)
        return sd_error(SD_ERR_ARG, "%s is a %s but %s a %s: give files or training folders, not both", na,
                        a->is_dir ? "folder" : "file", nb, b->is_dir ? "folder" : "file");
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        if (a->present[p] != b->present[p])
            return sd_error(SD_ERR_ARG, "%s has %s but %s does not", a->present[p] ? na : nb, shift_part_file((shift_component_t)p),
                            a->present[p] ? nb : na);
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_combine(const svdiff_shifts_t *const *in, const float *weights, int n, int ignore_hash,
                                     svdiff_shifts_t **out) {
    int rc = API_NEED(out, "svdiff_shifts_combine");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(in, "svdiff_shifts_combine"))) return rc;
    if (n < 1) return sd_error(SD_ERR_ARG, "svdiff_shifts_combine: give at least one set (n = %d)", n);
    for (int k = 0; k < n; k++)
        if (!in[k]) return sd_error(SD_ERR_ARG, "svdiff_shifts_combine: set %d is NULL", k);
    for (int k = 1; k < n && !rc; k++) {
        char na[32], nb[32];
        snprintf(na, sizeof na, "set 0"), snprintf(nb, sizeof nb, "set %d", k);
        rc = alike(in[0], in[k], label(in[0], 0, na), label(in[k], 0, nb));
    }
    if (rc) return rc;
    svdiff_shifts_t *r = result_like(in[0]);
    const shift_set_t **sets = sd_xcalloc((size_t)n, sizeof *sets);
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS && !rc; p++) {
        if (!in[0]->present[p]) continue;
        for (int k = 0; k < n; k++) sets[k] = &in[k]->part[p];
        for (int k = 1; k < n && !rc; k++)   /* checked here first so that the message names the files */
            rc = toolbox_check_compatible(sets[0], label(in[0], p, "set 0"), sets[k], label(in[k], p, "set k"),
                                          ignore_hash);
        if (!rc) rc = toolbox_combine(&r->part[p], sets, weights, n, ignore_hash);
    }
    free(sets);
    if (rc) {
        svdiff_shifts_free(r);
        return rc;
    }
    *out = r;
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_scale(const svdiff_shifts_t *in, float s, svdiff_shifts_t **out) {
    int rc = API_NEED(out, "svdiff_shifts_scale");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(in, "svdiff_shifts_scale"))) return rc;
    if (!(s == s) || s > 3.4e38f || s < -3.4e38f)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_scale: the scale must be a finite number, got %g", (double)s);
    svdiff_shifts_t *r = result_like(in);
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        if (in->present[p]) toolbox_scale(&r->part[p], &in->part[p], s);
    *out = r;
    return SD_OK;
}

SVDIFF_API int svdiff_shifts_limit_rank(const svdiff_shifts_t *in, int rank, svdiff_shifts_t **out, long *n_kept) {
    int rc = API_NEED(out, "svdiff_shifts_limit_rank");
    if (rc) return rc;
    *out = NULL;
    if ((rc = API_NEED(in, "svdiff_shifts_limit_rank"))) return rc;
    if (rank < 0) return sd_error(SD_ERR_ARG, "svdiff_shifts_limit_rank: the rank must be >= 0, got %d", rank);
    svdiff_shifts_t *r = result_like(in);
    long kept = 0;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS; p++)
        if (in->present[p]) kept += r->kept[p] = toolbox_limit_rank(&r->part[p], &in->part[p], rank);
    if (n_kept) *n_kept = kept;
    *out = r;
    return SD_OK;
}

static int selects_in(const char *sel, const svdiff_shifts_t *const *sets, int p, int levels, int latent) {
    for (int j = 0; j < 2; j++)
        for (int i = 0; i < sets[j]->part[p].n; i++)
            if (toolbox_selector_matches(sel, sets[j]->part[p].entries[i].path, levels, latent)) return 1;
    return 0;
}

SVDIFF_API int svdiff_shifts_mix(const svdiff_shifts_t *from, const svdiff_shifts_t *rest, const char *const *selectors,
                                 int n_selectors, int levels, int latent, int ignore_hash, svdiff_shifts_t **out,
                                 int *n_from) {
    int rc = API_NEED(out, "svdiff_shifts_mix");
    if (rc) return rc;
    *out = NULL;
    if (!rc) rc = API_NEED(from, "svdiff_shifts_mix");
    if (!rc) rc = API_NEED(rest, "svdiff_shifts_mix");
    if (!rc) rc = API_NEED(selectors, "svdiff_shifts_mix");
    if (rc) return rc;
    if (n_selectors < 1 || n_selectors > 64)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_mix: give 1 to 64 layer selectors (got %d)", n_selectors);
    if (levels < 1 || latent < 1)
        return sd_error(SD_ERR_ARG, "svdiff_shifts_mix: levels and latent must be positive (got %d and %d)", levels, latent);
    if ((rc = alike(from, rest, label(from, 0, "from"), label(rest, 0, "rest")))) return rc;
    const svdiff_shifts_t *both[2] = {from, rest};
    for (int k = 0; k < n_selectors && !rc; k++) rc = toolbox_selector_check(selectors[k], levels);
    if (rc) return rc;
    /* selectors must select something in the whole pair, not necessarily in each part */
    for (int k = 0; k < n_selectors; k++)
        if (!selects_in(selectors[k], both, 0, levels, latent) && !selects_in(selectors[k], both, 1, levels, latent) &&
            !selects_in(selectors[k], both, 2, levels, latent))
            return sd_error(SD_ERR_ARG, "layer selector '%s' selects no shift of either input", selectors[k]);
    svdiff_shifts_t *r = result_like(rest);
    int total = 0;
    for (int p = 0; p < SVDIFF_SHIFTS_PARTS && !rc; p++) {
        if (!from->present[p]) continue;
        const char *sel_p[64];   /* per part, the selectors that select something there */
        int ns = 0, nf = 0;
        for (int k = 0; k < n_selectors; k++)
            if (selects_in(selectors[k], both, p, levels, latent)) sel_p[ns++] = selectors[k];
        rc = toolbox_mix(&r->part[p], &from->part[p], &rest->part[p], sel_p, ns, levels, latent, ignore_hash, &nf);
        total += r->taken[p] = nf;
    }
    if (rc) {
        svdiff_shifts_free(r);
        return rc;
    }
    if (n_from) *n_from = total;
    *out = r;
    return SD_OK;
}
