/* ckpt_open: a torch.save zip archive into an st_file_t. libzip reads the archive (entries are
 * stored uncompressed by torch.save, but any method libzip reads is accepted); the storages the
 * state dict's tensors use are copied into one in-memory file (memfd), 64-byte aligned, and
 * mapped read-only. A shared mapping of a memfd keeps its pages when st_release_pages drops them
 * from the process (an anonymous private mapping would lose them). Views that are not
 * contiguous are copied out after the storages. */
#define _GNU_SOURCE   /* memfd_create */
#include "io/ckpt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "base/error.h"
#include "io/outputs.h"

#define ALIGN 64
#define CHUNK (1u << 20)
/* deflate cannot expand past ~1032:1; a larger declared size is a lie (a zip bomb) */
#define MAX_DEFLATE_RATIO 1032

int ckpt_is_path(const char *path) {
    static const char *const ext[3] = {".ckpt", ".pt", ".pth"};
    size_t n = strlen(path);
    for (int i = 0; i < 3; i++) {
        size_t m = strlen(ext[i]);
        if (n > m && !strcmp(path + n - m, ext[i])) return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The state dict                                                                           */

int ckpt_state_dict(const pk_t *pk, const char *what, ckpt_entry_t **out, int *n) {
    *out = NULL;
    *n = 0;
    char d[160];
    const pk_value_t *root = pk_root(pk), *sd = root;
    if (root->kind != PK_DICT)
        return sd_error(SD_ERR_FORMAT, "%s: the pickled object is %s, not a dict of tensors", what,
                        pk_describe(root, d, sizeof d));
    const pk_value_t *inner = pk_dict_get(root, "state_dict");
    if (inner) {
        if (inner->kind != PK_DICT)
            return sd_error(SD_ERR_FORMAT, "%s: \"state_dict\" is %s, not a dict", what, pk_describe(inner, d, sizeof d));
        sd = inner;
    }
    ckpt_entry_t *e = sd_xmalloc((size_t)sd->u.dict.n * sizeof *e + 1);
    int k = 0;
    for (int64_t i = 0; i < sd->u.dict.n; i++) {
        const pk_value_t *key = sd->u.dict.kv[2 * i], *val = sd->u.dict.kv[2 * i + 1];
        if (val->kind != PK_TENSOR) continue;   /* metadata, counters: not weights */
        if (key->kind != PK_STR || strlen(key->u.str.s) != key->u.str.n) {
            free(e);
            return sd_error(SD_ERR_FORMAT, "%s: a tensor is stored under %s, not a name", what,
                            key->kind == PK_STR ? "a string with a NUL byte" : pk_describe(key, d, sizeof d));
        }
        const pk_value_t *st = val->u.tensor.storage;
        if (st->u.storage.dtype == ST_DTYPE_COUNT) {
            int rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s': storage type torch.%s is not supported", what,
                              key->u.str.s, st->u.storage.type);
            free(e);
            return rc;
        }
        e[k].name = key->u.str.s;
        e[k].t = val;
        k++;
    }
    if (k == 0) {
        free(e);
        return sd_error(SD_ERR_FORMAT, "%s: the %s holds no tensors", what, inner ? "\"state_dict\"" : "pickled dict");
    }
    *out = e;
    *n = k;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The archive                                                                              */

typedef struct {
    const pk_value_t *s;   /* first PK_STORAGE seen with this key */
    size_t off, nbytes;    /* in the memfd */
} slot_t;

static int cmp_storage_key(const void *a, const void *b) {
    return strcmp((*(const pk_value_t *const *)a)->u.storage.key, (*(const pk_value_t *const *)b)->u.storage.key);
}

static int zip_fail(const char *path, const char *entry, const char *msg) {
    return sd_error(SD_ERR_FORMAT, "%s: %s: %s", path, entry, msg);
}

/* Index and stat of an entry that must exist; size checked against `limit` (and, for a
 * compressed entry, against what its compressed bytes can hold). */
static int entry_stat(zip_t *za, const char *path, const char *name, uint64_t file_size, zip_int64_t *idx,
                      zip_stat_t *st) {
    *idx = zip_name_locate(za, name, 0);
    if (*idx < 0) return sd_error(SD_ERR_FORMAT, "%s: the archive has no entry %s", path, name);
    zip_stat_init(st);
    if (zip_stat_index(za, (zip_uint64_t)*idx, 0, st) != 0) return zip_fail(path, name, zip_strerror(za));
    const zip_uint64_t need = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD;
    if ((st->valid & need) != need) return zip_fail(path, name, "the archive does not give its size");
    if ((st->valid & ZIP_STAT_ENCRYPTION_METHOD) && st->encryption_method != ZIP_EM_NONE)
        return zip_fail(path, name, "the entry is encrypted");
    if (st->comp_size > file_size)
        return sd_error(SD_ERR_FORMAT, "%s: %s: %llu compressed bytes in a file of %llu", path, name,
                        (unsigned long long)st->comp_size, (unsigned long long)file_size);
    if (st->comp_method == ZIP_CM_STORE ? st->size != st->comp_size
                                        : st->size / MAX_DEFLATE_RATIO > st->comp_size + 1024)
        return sd_error(SD_ERR_FORMAT, "%s: %s: declares %llu bytes but holds %llu compressed bytes (a zip bomb?)", path,
                        name, (unsigned long long)st->size, (unsigned long long)st->comp_size);
    return 0;
}

/* Reads a whole entry of `size` bytes: into buf, or (buf NULL) to fd at offset `at`. */
static int entry_read(zip_t *za, const char *path, const char *name, zip_int64_t idx, uint64_t size, void *buf,
                      int fd, size_t at) {
    zip_file_t *zf = zip_fopen_index(za, (zip_uint64_t)idx, 0);
    if (!zf) return zip_fail(path, name, zip_strerror(za));
    unsigned char *chunk = buf ? NULL : sd_xmalloc(CHUNK);
    uint64_t done = 0;
    int rc = 0;
    while (rc == 0 && done < size) {
        size_t want = size - done < CHUNK ? (size_t)(size - done) : CHUNK;
        unsigned char *dst = buf ? (unsigned char *)buf + done : chunk;
        zip_int64_t r = zip_fread(zf, dst, want);
        if (r < 0) rc = zip_fail(path, name, zip_file_strerror(zf));
        else if (r == 0)
            rc = sd_error(SD_ERR_FORMAT, "%s: %s: ends after %llu of its %llu bytes", path, name,
                          (unsigned long long)done, (unsigned long long)size);
        else if (!buf && pwrite(fd, chunk, (size_t)r, (off_t)(at + done)) != r)
            rc = sd_error(SD_ERR_IO, "%s: %s: cannot hold it in memory: %s", path, name, strerror(errno));
        if (r > 0) done += (uint64_t)r;
    }
    if (rc == 0) {   /* reading past the end is where libzip checks the CRC */
        unsigned char extra;
        zip_int64_t r = zip_fread(zf, &extra, 1);
        if (r < 0) rc = zip_fail(path, name, zip_file_strerror(zf));
        else if (r > 0) rc = zip_fail(path, name, "holds more bytes than it declares");
    }
    zip_fclose(zf);
    free(chunk);
    return rc;
}

/* "<prefix>/data.pkl" with one folder level: torch names the folder after the file it wrote
 * ("archive" when it wrote to a stream). */
static int find_prefix(zip_t *za, const char *path, char **prefix) {
    *prefix = NULL;
    zip_int64_t n = zip_get_num_entries(za, 0);
    for (zip_int64_t i = 0; i < n; i++) {
        const char *name = zip_get_name(za, (zip_uint64_t)i, 0);
        if (!name) continue;
        const char *slash = strchr(name, '/');
        if (!slash || slash == name || strcmp(slash, "/data.pkl")) continue;
        if (*prefix) {
            free(*prefix);
            *prefix = NULL;
            return sd_error(SD_ERR_FORMAT, "%s: the archive holds several top folders with a data.pkl", path);
        }
        if (slash - name > 1024) return sd_error(SD_ERR_FORMAT, "%s: a top folder name of %td bytes", path, slash - name);
        *prefix = strndup(name, (size_t)(slash - name));
        SD_CHECK(*prefix, "out of memory");
    }
    if (!*prefix)
        return sd_error(SD_ERR_FORMAT, "%s: the archive has no <folder>/data.pkl: not a PyTorch checkpoint", path);
    return 0;
}

static int check_byteorder(zip_t *za, const char *path, const char *prefix, uint64_t file_size) {
    char name[4200];
    snprintf(name, sizeof name, "%s/byteorder", prefix);
    if (zip_name_locate(za, name, 0) < 0) return 0;   /* written since PyTorch 2.1; before, always little */
    zip_int64_t idx;
    zip_stat_t st;
    int rc = entry_stat(za, path, name, file_size, &idx, &st);
    if (rc) return rc;
    char buf[16] = {0};
    if (st.size >= sizeof buf) return zip_fail(path, name, "is not \"little\" or \"big\"");
    if ((rc = entry_read(za, path, name, idx, st.size, buf, -1, 0))) return rc;
    if (!strcmp(buf, "little")) return 0;
    if (!strcmp(buf, "big"))
        return sd_error(SD_ERR_FORMAT, "%s: the checkpoint was written on a big-endian machine (%s is \"big\"); "
                        "only little-endian checkpoints are read", path, name);
    return zip_fail(path, name, "is not \"little\" or \"big\"");
}

static int is_contiguous(const pk_value_t *t) {
    int64_t want = 1;
    for (int i = t->u.tensor.ndim - 1; i >= 0; i--) {
        if (t->u.tensor.size[i] != 1 && t->u.tensor.stride[i] != want) return 0;
        want *= t->u.tensor.size[i];
    }
    return 1;
}

/* Copies a strided view element by element into dst (row-major). */
static void gather(unsigned char *dst, const unsigned char *src, const pk_value_t *t, size_t es) {
    const int nd = t->u.tensor.ndim;
    int64_t idx[ST_MAX_DIMS] = {0};
    const int64_t n = t->u.tensor.numel;
    int64_t at = t->u.tensor.offset;
    for (int64_t e = 0; e < n; e++) {
        memcpy(dst + (size_t)e * es, src + (size_t)at * es, es);
        for (int i = nd - 1; i >= 0; i--) {   /* odometer step; `at` follows the strides */
            if (++idx[i] < t->u.tensor.size[i]) {
                at += t->u.tensor.stride[i];
                break;
            }
            at -= (idx[i] - 1) * t->u.tensor.stride[i];
            idx[i] = 0;
        }
    }
}

static size_t align_up(size_t x) { return (x + ALIGN - 1) & ~(size_t)(ALIGN - 1); }

int ckpt_open(st_file_t *f, const char *path, ckpt_keep_fn keep) {
    memset(f, 0, sizeof *f);
    struct stat sb;
    if (stat(path, &sb) != 0) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return sd_error(SD_ERR_IO, "%s: not a regular file", path);
    const uint64_t file_size = (uint64_t)sb.st_size;
    int zerr = 0;
    zip_t *za = zip_open(path, ZIP_RDONLY | ZIP_CHECKCONS, &zerr);
    if (!za) {
        zip_error_t ze;
        zip_error_init_with_code(&ze, zerr);
        int rc = zerr == ZIP_ER_NOZIP
                     ? sd_error(SD_ERR_FORMAT, "%s: not a zip archive (checkpoints written before PyTorch 1.6, or with "
                                "_use_new_zipfile_serialization=False, are not read)", path)
                     : sd_error(zerr == ZIP_ER_OPEN || zerr == ZIP_ER_READ ? SD_ERR_IO : SD_ERR_FORMAT,
                                "%s: cannot open as a zip archive: %s", path, zip_error_strerror(&ze));
        zip_error_fini(&ze);
        return rc;
    }
    outputs_note_input(path);   /* no output of this run may replace it */

    char *prefix = NULL, *what = NULL, name[4200];
    unsigned char *pkl = NULL, *tmp = NULL;
    pk_t *pk = NULL;
    ckpt_entry_t *ents = NULL;
    const pk_value_t **uniq = NULL;
    slot_t *slots = NULL;
    size_t *tensor_off = NULL;
    int n_ent = 0, n_slot = 0, fd = -1, rc;
    void *map = MAP_FAILED;
    size_t total = 0, map_size = 1, storage_end;
    uint64_t storage_bytes = 0;
    zip_int64_t idx;
    zip_stat_t st;

    if ((rc = find_prefix(za, path, &prefix)) || (rc = check_byteorder(za, path, prefix, file_size))) goto done;

    /* the pickle */
    snprintf(name, sizeof name, "%s/data.pkl", prefix);
    if ((rc = entry_stat(za, path, name, file_size, &idx, &st))) goto done;
    if (st.size > CKPT_MAX_PICKLE_BYTES) {
        rc = sd_error(SD_ERR_FORMAT, "%s: %s declares %llu bytes (at most %u are read)", path, name,
                      (unsigned long long)st.size, CKPT_MAX_PICKLE_BYTES);
        goto done;
    }
    if (!(pkl = malloc((size_t)st.size + 1))) {
        rc = sd_nomem(path, (size_t)st.size + 1);
        goto done;
    }
    if ((rc = entry_read(za, path, name, idx, st.size, pkl, -1, 0))) goto done;
    size_t wl = strlen(path) + strlen(name) + 3;
    what = sd_xmalloc(wl);
    snprintf(what, wl, "%s: %s", path, name);
    if ((rc = pk_load(&pk, pkl, (size_t)st.size, what)) || (rc = ckpt_state_dict(pk, what, &ents, &n_ent))) goto done;
    if (keep) {
        int k = 0;
        for (int i = 0; i < n_ent; i++)
            if (keep(ents[i].name)) ents[k++] = ents[i];
        n_ent = k;
    }

    /* the storages the tensors use, each once */
    uniq = sd_xmalloc((size_t)n_ent * sizeof *uniq + 1);
    for (int i = 0; i < n_ent; i++) uniq[i] = ents[i].t->u.tensor.storage;
    if (n_ent > 1) qsort(uniq, (size_t)n_ent, sizeof *uniq, cmp_storage_key);
    slots = sd_xcalloc((size_t)n_ent + 1, sizeof *slots);
    for (int i = 0; i < n_ent; i++) {
        const pk_value_t *s = uniq[i];
        if (n_slot && !strcmp(slots[n_slot - 1].s->u.storage.key, s->u.storage.key)) {
            const pk_value_t *p = slots[n_slot - 1].s;
            if (p->u.storage.dtype != s->u.storage.dtype || p->u.storage.numel != s->u.storage.numel) {
                rc = sd_error(SD_ERR_FORMAT, "%s: storage '%s' is declared twice, as %lld x %s and %lld x %s", what,
                              s->u.storage.key, (long long)p->u.storage.numel, p->u.storage.type,
                              (long long)s->u.storage.numel, s->u.storage.type);
                goto done;
            }
            continue;
        }
        if (strlen(s->u.storage.key) > 1024) {   /* entry names are built in a fixed buffer */
            rc = sd_error(SD_ERR_FORMAT, "%s: a storage key of %zu bytes", what, strlen(s->u.storage.key));
            goto done;
        }
        slot_t *sl = &slots[n_slot++];
        sl->s = s;
        uint64_t nb;
        if (__builtin_mul_overflow((uint64_t)s->u.storage.numel, (uint64_t)st_dtype_size(s->u.storage.dtype), &nb) ||
            nb > (uint64_t)SIZE_MAX / 4) {
            rc = sd_error(SD_ERR_FORMAT, "%s: storage '%s' of %lld elements is too large", what, s->u.storage.key,
                          (long long)s->u.storage.numel);
            goto done;
        }
        snprintf(name, sizeof name, "%s/data/%s", prefix, s->u.storage.key);
        if ((rc = entry_stat(za, path, name, file_size, &idx, &st))) goto done;
        if (st.size != nb) {
            rc = sd_error(SD_ERR_FORMAT, "%s: %s holds %llu bytes, but the pickle declares %lld x %s = %llu bytes",
                          path, name, (unsigned long long)st.size, (long long)s->u.storage.numel, s->u.storage.type,
                          (unsigned long long)nb);
            goto done;
        }
        sl->off = total;
        sl->nbytes = (size_t)nb;
        storage_bytes += nb;
        total = align_up(total + sl->nbytes);
        /* each entry was checked against its compressed size; together they could still overlap
         * in the file (a zip bomb made of entries that share their data) */
        if (storage_bytes / MAX_DEFLATE_RATIO > file_size) {
            rc = sd_error(SD_ERR_FORMAT, "%s: the storages declare more than %llu bytes in a file of %llu (a zip bomb?)",
                          path, (unsigned long long)storage_bytes, (unsigned long long)file_size);
            goto done;
        }
    }

    /* views: contiguous ones point into their storage, the others get a slot after the storages */
    tensor_off = sd_xmalloc((size_t)n_ent * sizeof *tensor_off + 1);
    storage_end = total;
    for (int i = 0; i < n_ent; i++) {
        const pk_value_t *t = ents[i].t;
        const size_t es = st_dtype_size(t->u.tensor.storage->u.storage.dtype);
        /* numel * es fits: a contiguous view lies in its storage, a strided one is bounded below */
        if (t->u.tensor.numel == 0 || is_contiguous(t)) {
            tensor_off[i] = SIZE_MAX;
            continue;
        }
        uint64_t nb;
        if (__builtin_mul_overflow((uint64_t)t->u.tensor.numel, (uint64_t)es, &nb) ||
            nb > 2 * storage_bytes + (16u << 20) || total - storage_end + nb > 2 * storage_bytes + (16u << 20)) {
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s': its strided view repeats storage elements into %lld "
                          "elements; the copies would exceed twice the storages' %llu bytes", what, ents[i].name,
                          (long long)t->u.tensor.numel, (unsigned long long)storage_bytes);
            goto done;
        }
        tensor_off[i] = total;
        total = align_up(total + (size_t)nb);
    }

    /* fill the in-memory file, then map it */
    map_size = total ? total : 1;
    fd = memfd_create("svdiff-ckpt", MFD_CLOEXEC);
    if (fd < 0 || ftruncate(fd, (off_t)map_size) != 0) {
        rc = sd_error(SD_ERR_IO, "%s: cannot make an in-memory file of %zu bytes: %s", path, map_size, strerror(errno));
        goto done;
    }
    for (int i = 0; i < n_slot; i++) {
        snprintf(name, sizeof name, "%s/data/%s", prefix, slots[i].s->u.storage.key);
        idx = zip_name_locate(za, name, 0);
        if ((rc = entry_read(za, path, name, idx, slots[i].nbytes, NULL, fd, slots[i].off))) goto done;
    }
    map = mmap(NULL, map_size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        rc = sd_error(SD_ERR_IO, "%s: cannot map %zu bytes: %s", path, map_size, strerror(errno));
        goto done;
    }
    st_file_alloc(f, n_ent);
    for (int i = 0; i < n_ent; i++) {
        const pk_value_t *t = ents[i].t, *s = t->u.tensor.storage;
        const slot_t key = {.s = s};
        const slot_t *sl = bsearch(&key, slots, (size_t)n_slot, sizeof *slots, cmp_storage_key);
        SD_CHECK(sl, "every storage has a slot");
        st_tensor_t *o = &f->tensors[i];
        o->name = strdup(ents[i].name);
        SD_CHECK(o->name, "out of memory");
        o->dtype = s->u.storage.dtype;
        o->ndim = t->u.tensor.ndim;
        for (int d = 0; d < o->ndim; d++) o->shape[d] = t->u.tensor.size[d];
        o->numel = t->u.tensor.numel;
        const size_t es = st_dtype_size(o->dtype);
        o->nbytes = (size_t)o->numel * es;
        const unsigned char *src = (const unsigned char *)map + sl->off;
        if (tensor_off[i] == SIZE_MAX) {
            o->data = src + (o->numel ? (size_t)t->u.tensor.offset * es : 0);
            continue;
        }
        if (!(tmp = malloc(o->nbytes ? o->nbytes : 1))) {
            rc = sd_nomem(o->name, o->nbytes);
            goto done;
        }
        gather(tmp, src, t, es);
        ssize_t w = pwrite(fd, tmp, o->nbytes, (off_t)tensor_off[i]);
        free(tmp);
        tmp = NULL;
        if (w != (ssize_t)o->nbytes) {
            rc = sd_error(SD_ERR_IO, "%s: tensor '%s': cannot hold its copy in memory: %s", path, o->name,
                          w < 0 ? strerror(errno) : "short write");
            goto done;
        }
        o->data = (const unsigned char *)map + tensor_off[i];
    }
    f->path = strdup(path);
    SD_CHECK(f->path, "out of memory");
    f->map = map;
    f->map_size = map_size;
    map = MAP_FAILED;
    rc = st_file_index(f);

done:
    if (rc) {
        st_close(f);
        if (map != MAP_FAILED) munmap(map, map_size);
    }
    if (fd >= 0) close(fd);
    free(tmp);
    free(tensor_off);
    free(slots);
    free(uniq);
    free(ents);
    pk_free(pk);
    free(what);
    free(pkl);
    free(prefix);
    zip_discard(za);
    return rc;
}
