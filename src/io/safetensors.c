/* safetensors reader (mmap + validation modelled on huggingface/safetensors), sharded sets
 * (*.index.json), the atomic writer, and the f16/bf16 <-> f32 conversions.
 * All multi-byte data is little-endian on disk; we assume a little-endian host. */
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

#include <cJSON.h>

#include "base/error.h"
#include "base/hash64.h"
#include "base/str.h"
#include "io/outputs.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian");

/* ------------------------------------------------------------------------------------ */
/* dtypes                                                                               */

static const char *const g_dtype_names[ST_DTYPE_COUNT] = {
    "BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
    "F64", "I64", "U64", "F8_E4M3", "F8_E5M2"};
static const size_t g_dtype_sizes[ST_DTYPE_COUNT] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4,
                                                     8, 8, 8, 1, 1};

const char *st_dtype_name(st_dtype_t dt) {
    return (unsigned)dt < ST_DTYPE_COUNT ? g_dtype_names[dt] : "?";
}

size_t st_dtype_size(st_dtype_t dt) { return (unsigned)dt < ST_DTYPE_COUNT ? g_dtype_sizes[dt] : 0; }

int st_dtype_parse(const char *name, st_dtype_t *out) {
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(name, g_dtype_names[i]) == 0) {
            *out = (st_dtype_t)i;
            return 0;
        }
    }
    return sd_error(SD_ERR_FORMAT, "unknown dtype '%s'", name);
}

/* ------------------------------------------------------------------------------------ */
/* f16 / bf16 conversions. Written with selects instead of branches so that the loops in  */
/* st_read_f32 vectorise, and with integer arithmetic only where subnormals are involved, */
/* so that the results do not depend on FTZ/DAZ modes.                                    */

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float f16_to_f32_inline(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    /* Normals: rebias the exponent 15 -> 127. Inf/NaN (exponent 31): rebias twice more so
     * the exponent lands on 255, keeping the NaN payload. Masks rather than ?: so that GCC
     * vectorises the loop inside the OpenMP region too. */
    uint32_t is_inf = 0u - (uint32_t)(em >= 0x7c00u);
    uint32_t is_sub = 0u - (uint32_t)(em < 0x400u);
    uint32_t normal = (em << 13) + (112u << 23) + (is_inf & (112u << 23));
    uint32_t sub = f32_bits((float)em * 0x1p-24f);        /* exact: em < 2^10 */
    return bits_f32(((sub & is_sub) | (normal & ~is_sub)) | sign);
}

static inline uint16_t f32_to_f16_inline(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) /* NaN: keep the top payload bits, force quiet so it stays NaN */
        return sign | 0x7e00u | (uint16_t)((x >> 13) & 0x3ffu);
    if (x >= 0x477ff000u) /* >= 65520 rounds (ties to even) to infinity; also inf itself */
        return sign | 0x7c00u;
    if (x >= 0x38800000u) { /* normal f16: rebias and round the 13 dropped bits */
        uint32_t y = x - (112u << 23);
        return sign | (uint16_t)((y + 0xfffu + ((y >> 13) & 1u)) >> 13);
    }
    /* f16 subnormal (or zero): value = mant * 2^(e-150), in units of 2^-24 that is
     * mant >> (126 - e), rounded to nearest even. */
    uint32_t e = x >> 23;
    if (e < 102) return sign; /* < 2^-25: rounds to zero (2^-25 itself is a tie to 0) */
    uint32_t mant = (x & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t r = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1);
    r += (rem > half) | ((rem == half) & (r & 1u));
    return sign | (uint16_t)r; /* r may carry into 0x400, the smallest normal: still right */
}

static inline float bf16_to_f32_inline(uint16_t h) { return bits_f32((uint32_t)h << 16); }

static inline uint16_t f32_to_bf16_inline(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16); /* overflow carries to inf */
}

float st_f16_to_f32(uint16_t h) { return f16_to_f32_inline(h); }
uint16_t st_f32_to_f16(float f) { return f32_to_f16_inline(f); }
float st_bf16_to_f32(uint16_t h) { return bf16_to_f32_inline(h); }
uint16_t st_f32_to_bf16(float f) { return f32_to_bf16_inline(f); }

/* Every forward converts every fp16 weight (the model stays fp16 in memory), so this is on the
 * hot path: a per-value call of st_f16_to_f32 took 20% of an SD 1.5 UNet forward, hence the
 * F16C loop; bf16 is a shift, inlined so the loop vectorises. memcpy per element: the data
 * may sit at an odd offset (it compiles to plain loads). */
static void to_f32_run(float *dst, const unsigned char *src, st_dtype_t dtype, size_t n) {
    size_t i = 0;
    if (dtype == ST_F32) {
        if (n) memcpy(dst, src, n * sizeof(float));
    } else if (dtype == ST_F16) {
#ifdef __F16C__
        /* vcvtph2ps quiets a signalling NaN (exponent 31, mantissa non-zero with its top bit
         * clear); the scalar conversion keeps it. So the loop tracks the largest magnitude, and
         * a run holding any NaN (never seen in a real model) is converted again the scalar way:
         * every path gives the same bits. */
        const __m128i magnitude = _mm_set1_epi16(0x7fff);
        __m128i top = _mm_setzero_si128();
        for (; i + 8 <= n; i += 8) {
            const __m128i h = _mm_loadu_si128((const __m128i *)(src + 2 * i));
            top = _mm_max_epi16(top, _mm_and_si128(h, magnitude));
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
        }
        if (_mm_movemask_epi8(_mm_cmpgt_epi16(top, _mm_set1_epi16(0x7c00)))) i = 0;
#endif
        for (; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = f16_to_f32_inline(h);
        }
    } else {
        for (; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            dst[i] = bf16_to_f32_inline(h);
        }
    }
}

void st_to_f32(float *dst, const void *src, st_dtype_t dtype, size_t n) {
    SD_CHECK(dtype == ST_F32 || dtype == ST_F16 || dtype == ST_BF16, "st_to_f32: dtype %s is not a float type",
             st_dtype_name(dtype));
    const size_t chunk = 16384, es = dtype == ST_F32 ? 4 : 2;
    if (n <= 65536) {
        to_f32_run(dst, src, dtype, n);
        return;
    }
    const size_t nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < nchunks; c++) {
        const size_t i0 = c * chunk, len = n - i0 < chunk ? n - i0 : chunk;
        to_f32_run(dst + i0, (const unsigned char *)src + i0 * es, dtype, len);
    }
}

/* ------------------------------------------------------------------------------------ */
/* Reader                                                                               */

/* f->tensors is one allocation: n st_tensor_t (offset order) followed by n ints, the
 * name-sorted permutation st_find bisects. The header's struct has no field for it, so it
 * rides along in the same block (st_close frees both). */
static int *name_index(const st_file_t *f) { return (int *)(f->tensors + f->n_tensors); }

static void free_meta(st_file_t *f) {
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    f->meta_keys = f->meta_values = NULL;
    f->n_meta = 0;
}

void st_close(st_file_t *f) {
    if (!f) return;
    if (f->tensors)
        for (int i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    free_meta(f);
    if (f->map) munmap(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Rust's
 * str::from_utf8 demands. Returns the offset of the first bad byte or n if valid. */
static size_t utf8_check(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) len = 2;
        else if (c >= 0xe0 && c <= 0xef) {
            len = 3;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            len = 4;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else return i;
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += len;
    }
    return n;
}

/* A JSON number that is a non-negative integer. cJSON keeps numbers as doubles, so values
 * beyond 2^53 cannot be told apart from their neighbours: reject them (no real file gets
 * there: 2^53 bytes is 9 PB). Returns 0, -1 (not an integer), -2 (negative), -3 (too big). */
static int json_uint(const cJSON *it, uint64_t *out) {
    if (!cJSON_IsNumber(it)) return -1;
    double v = it->valuedouble;
    if (!isfinite(v) || v != floor(v)) return -1;
    if (v < 0) return -2;
    if (v > 9007199254740992.0) return -3;
    *out = (uint64_t)v;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Duplicate keys: cJSON keeps them all (cJSON_GetObjectItem returns the first), the
 * reference rejects them. Tensor entries have a handful of keys (quadratic scan); the
 * metadata could have many, so larger objects are checked by sorting. The top level is
 * checked by sorting names in parse_header. Returns a duplicated key or NULL. */
static const char *dup_key(const cJSON *obj) {
    int n = cJSON_GetArraySize(obj);
    const char *dup = NULL;
    if (n <= 16) {
        for (const cJSON *a = obj->child; a && !dup; a = a->next)
            for (const cJSON *b = a->next; b; b = b->next)
                if (strcmp(a->string, b->string) == 0) { dup = a->string; break; }
        return dup;
    }
    const char **keys = sd_xmalloc((size_t)n * sizeof(char *));
    int k = 0;
    for (const cJSON *a = obj->child; a; a = a->next) keys[k++] = a->string;
    qsort(keys, (size_t)n, sizeof(char *), cmp_str_ptr);
    for (int i = 1; i < n && !dup; i++)
        if (strcmp(keys[i - 1], keys[i]) == 0) dup = keys[i];
    free(keys);
    return dup;
}

typedef struct {
    uint64_t begin, end;
} st_span_t;

static int cmp_by_offset(const void *a, const void *b) {
    const st_span_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* (name, index) pairs: qsort has no context argument, so the name travels with the index. */
typedef struct {
    const char *name;
    int i;
} st_named_t;

static int cmp_names(const void *a, const void *b) {
    return strcmp(((const st_named_t *)a)->name, ((const st_named_t *)b)->name);
}

/* Validates one tensor entry and fills t (name set by the caller) and its span. */
static int parse_tensor(const char *path, const cJSON *e, st_tensor_t *t, st_span_t *span,
                        uint64_t data_len) {
    const char *nm = t->name;
    if (!cJSON_IsObject(e))
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", path, nm);
    const char *dk = dup_key(e);
    if (dk) return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': duplicate key '%s'", path, nm, dk);

    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(jd))
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", path, nm);
    if (st_dtype_parse(jd->valuestring, &t->dtype) != 0)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", path, nm,
                        jd->valuestring);

    const cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(js))
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': missing or non-array \"shape\"", path, nm);
    int nd = cJSON_GetArraySize(js);
    if (nd > ST_MAX_DIMS)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': shape has %d dims (at most %d supported)",
                        path, nm, nd, ST_MAX_DIMS);
    t->ndim = nd;
    uint64_t numel = 1;
    bool overflow = false;
    int k = 0;
    for (const cJSON *d = js->child; d; d = d->next, k++) {
        uint64_t v;
        int rc = json_uint(d, &v);
        if (rc == -2)
            return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': shape[%d] = %.0f is negative", path,
                            nm, k, d->valuedouble);
        if (rc == -3)
            return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': shape[%d] = %.0f is too large", path,
                            nm, k, d->valuedouble);
        if (rc != 0)
            return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer",
                            path, nm, k);
        t->shape[k] = (int64_t)v;
        if (__builtin_mul_overflow(numel, v, &numel)) overflow = true;
    }
    /* A zero dim makes the product 0 whatever the other dims are, like the reference's
     * checked product would not: it overflows first only if the big dims come first. We
     * follow the arithmetic result instead of the evaluation order. */
    for (int i = 0; i < nd; i++)
        if (t->shape[i] == 0) { numel = 0; overflow = false; }
    uint64_t nbytes = 0;
    if (overflow || numel > (uint64_t)INT64_MAX ||
        __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &nbytes) ||
        nbytes > (uint64_t)SIZE_MAX)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': element count of the shape overflows",
                        path, nm);
    t->numel = (int64_t)numel;
    t->nbytes = (size_t)nbytes;

    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, en;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(jo->child, &b) != 0 ||
        json_uint(jo->child->next, &en) != 0)
        return sd_error(SD_ERR_FORMAT,
                        "%s: tensor '%s': \"data_offsets\" must be two non-negative integers "
                        "[begin, end]", path, nm);
    if (b > en)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                        "] have begin > end", path, nm, b, en);
    if (en > data_len)
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64
                        "] run past the end of the data (%" PRIu64 " bytes)", path, nm, b, en,
                        data_len);
    if (en - b != nbytes) {
        char dims[ST_MAX_DIMS * 21 + 3];
        size_t p = 0;
        dims[p++] = '[';
        for (int i = 0; i < nd; i++)
            p += (size_t)snprintf(dims + p, sizeof dims - p, "%s%" PRId64, i ? "," : "", t->shape[i]);
        snprintf(dims + p, sizeof dims - p, "]");
        return sd_error(SD_ERR_FORMAT, "%s: tensor '%s': shape %s x %s = %" PRIu64
                        " bytes but data_offsets span %" PRIu64, path, nm, dims,
                        st_dtype_name(t->dtype), nbytes, en - b);
    }
    span->begin = b;
    span->end = en;
    return 0;
}

static int parse_metadata(st_file_t *f, const cJSON *m) {
    if (cJSON_IsNull(m)) return 0; /* the reference's Option<HashMap> accepts null */
    if (!cJSON_IsObject(m))
        return sd_error(SD_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", f->path);
    const char *dk = dup_key(m);
    if (dk) return sd_error(SD_ERR_FORMAT, "%s: \"__metadata__\": duplicate key '%s'", f->path, dk);
    int n = cJSON_GetArraySize(m);
    f->meta_keys = sd_xcalloc((size_t)n, sizeof(char *));
    f->meta_values = sd_xcalloc((size_t)n, sizeof(char *));
    for (const cJSON *it = m->child; it; it = it->next) {
        if (!cJSON_IsString(it))
            return sd_error(SD_ERR_FORMAT, "%s: \"__metadata__\": value of '%s' is not a string",
                            f->path, it->string);
        f->meta_keys[f->n_meta] = strdup(it->string);
        f->meta_values[f->n_meta] = strdup(it->valuestring);
        SD_CHECK(f->meta_keys[f->n_meta] && f->meta_values[f->n_meta], "out of memory");
        f->n_meta++;
    }
    return 0;
}

/* Everything after the mapping: header JSON -> tensors, metadata, checks. */
static int parse_header(st_file_t *f, const unsigned char *hdr, uint64_t n, uint64_t data_len) {
    const char *path = f->path;
    if (n == 0 || hdr[0] != '{')
        return sd_error(SD_ERR_FORMAT, "%s: header does not start with '{'", path);
    size_t bad = utf8_check(hdr, (size_t)n);
    if (bad != n)
        return sd_error(SD_ERR_FORMAT, "%s: header is not valid UTF-8 (byte %zu)", path, bad);
    if (memchr(hdr, 0, (size_t)n))
        return sd_error(SD_ERR_FORMAT, "%s: header contains a NUL byte", path);
    /* cJSON wants its own NUL-terminated copy to be safe from reading past the header. */
    char *buf = sd_xmalloc((size_t)n + 1);
    memcpy(buf, hdr, (size_t)n);
    buf[n] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(buf, (size_t)n, &end, 0);
    int rc = 0;
    if (!root) {
        rc = sd_error(SD_ERR_FORMAT, "%s: header is not valid JSON (near byte %td)", path,
                      end ? end - buf : (ptrdiff_t)-1);
        goto done;
    }
    for (const char *p = end; p < buf + n; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = sd_error(SD_ERR_FORMAT, "%s: header has trailing characters after the JSON "
                          "(byte %td)", path, p - buf);
            goto done;
        }
    if (!cJSON_IsObject(root)) {
        rc = sd_error(SD_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto done;
    }

    int nmeta = 0, nt = 0;
    const cJSON *meta = NULL;
    for (const cJSON *it = root->child; it; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0) { meta = it; nmeta++; }
        else nt++;
    }
    if (nmeta > 1) {
        rc = sd_error(SD_ERR_FORMAT, "%s: duplicate key '__metadata__'", path);
        goto done;
    }
    if (meta && (rc = parse_metadata(f, meta)) != 0) goto done;

    f->tensors = sd_xcalloc(1, (size_t)nt * (sizeof(st_tensor_t) + sizeof(int)) + 1);
    f->n_tensors = 0;
    st_span_t *spans = sd_xmalloc((size_t)nt * sizeof(st_span_t) + 1);
    /* Parse in JSON order; spans[i] and tensors[i] correspond. */
    for (const cJSON *it = root->child; it; it = it->next) {
        if (it == meta) continue;
        st_tensor_t *t = &f->tensors[f->n_tensors];
        t->name = strdup(it->string);
        SD_CHECK(t->name, "out of memory");
        f->n_tensors++;
        if ((rc = parse_tensor(path, it, t, &spans[f->n_tensors - 1], data_len)) != 0) break;
    }
    if (rc == 0) {
        /* Reorder into offset order: sort (span, original index) pairs. The span
         * sort is stable enough for ties since equal spans are only zero-size tensors. */
        typedef struct { st_span_t s; int i; } ord_t;
        ord_t *ord = sd_xmalloc((size_t)nt * sizeof(ord_t) + 1);
        for (int i = 0; i < nt; i++) { ord[i].s = spans[i]; ord[i].i = i; }
        qsort(ord, (size_t)nt, sizeof(ord_t), cmp_by_offset); /* compares the leading span */
        st_tensor_t *sorted = sd_xcalloc(1, (size_t)nt * (sizeof(st_tensor_t) + sizeof(int)) + 1);
        for (int i = 0; i < nt; i++) {
            sorted[i] = f->tensors[ord[i].i];
            spans[i] = ord[i].s;
        }
        free(f->tensors);
        free(ord);
        f->tensors = sorted;

        /* The data must be tiled exactly: no gap, no overlap, nothing left over. */
        uint64_t pos = 0;
        for (int i = 0; i < nt && rc == 0; i++) {
            if (spans[i].begin > pos)
                rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s': data starts at %" PRIu64
                              " but the previous tensor ends at %" PRIu64 " (gap)", path,
                              f->tensors[i].name, spans[i].begin, pos);
            else if (spans[i].begin < pos)
                rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %"
                              PRIu64 "] overlap tensor '%s' (ends at %" PRIu64 ")", path,
                              f->tensors[i].name, spans[i].begin, spans[i].end,
                              f->tensors[i - 1].name, pos);
            pos = spans[i].end;
        }
        if (rc == 0 && pos != data_len)
            rc = sd_error(SD_ERR_FORMAT, "%s: %" PRIu64 " trailing bytes after the last tensor "
                          "(data ends at %" PRIu64 ", file has %" PRIu64 " data bytes)", path,
                          data_len - pos, pos, data_len);
        const unsigned char *data = (const unsigned char *)f->map + 8 + n;
        for (int i = 0; i < nt; i++) f->tensors[i].data = data + spans[i].begin;
    }
    free(spans);
    if (rc == 0) rc = st_file_index(f);
done:
    cJSON_Delete(root);
    free(buf);
    return rc;
}

void st_file_alloc(st_file_t *f, int n) {
    f->tensors = sd_xcalloc(1, (size_t)n * (sizeof(st_tensor_t) + sizeof(int)) + 1);
    f->n_tensors = n;
}

int st_file_index(st_file_t *f) {
    const int nt = f->n_tensors;
    int *idx = name_index(f), rc = 0;
    st_named_t *byname = sd_xmalloc((size_t)nt * sizeof(st_named_t) + 1);
    for (int i = 0; i < nt; i++) { byname[i].name = f->tensors[i].name; byname[i].i = i; }
    qsort(byname, (size_t)nt, sizeof(st_named_t), cmp_names);
    for (int i = 0; i < nt; i++) idx[i] = byname[i].i;
    free(byname);
    for (int i = 0; i < nt && rc == 0; i++) {
        const char *name = f->tensors[idx[i]].name;
        const size_t len = strlen(name);
        if (i > 0 && strcmp(f->tensors[idx[i - 1]].name, name) == 0)
            rc = sd_error(SD_ERR_FORMAT, "%s: duplicate tensor name '%s'", f->path, name);
        else if (utf8_check((const unsigned char *)name, len) != len)   /* a header of another format */
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor name '%s' is not valid UTF-8", f->path, name);
    }
    return rc;
}

int st_open(st_file_t *f, const char *path) {
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    SD_CHECK(f->path, "out of memory");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        st_close(f);
        return rc;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int rc = sd_error(SD_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        st_close(f);
        return rc;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        st_close(f);
        return sd_error(SD_ERR_IO, "%s: not a regular file", path);
    }
    outputs_note_input_fd(fd, path);   /* no output of this run may replace it */
    uint64_t size = (uint64_t)sb.st_size;
    if (size < 8) {
        close(fd);
        st_close(f);
        return sd_error(SD_ERR_FORMAT, "%s: file is %" PRIu64 " bytes, too short for the 8-byte "
                        "header length", path, size);
    }
    if (size > (uint64_t)SIZE_MAX) {
        close(fd);
        st_close(f);
        return sd_error(SD_ERR_IO, "%s: file too large to map", path);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    int mmap_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) {
        st_close(f);
        return sd_error(SD_ERR_IO, "%s: cannot mmap: %s", path, strerror(mmap_errno));
    }
    f->map = map;
    f->map_size = (size_t)size;

    uint64_t n;
    memcpy(&n, map, 8);
    int rc;
    if (n > ST_MAX_HEADER_BYTES)
        rc = sd_error(SD_ERR_FORMAT, "%s: header length %" PRIu64 " exceeds the %u-byte limit",
                      path, n, ST_MAX_HEADER_BYTES);
    else if (n > size - 8)
        rc = sd_error(SD_ERR_FORMAT, "%s: header length %" PRIu64 " runs past the end of the "
                      "file (%" PRIu64 " bytes)", path, n, size);
    else
        rc = parse_header(f, (const unsigned char *)map + 8, n, size - 8 - n);
    if (rc != 0) {
        /* parse_header may have left partially-filled tensors; st_close frees all. */
        st_close(f);
        return rc;
    }
    return 0;
}

const st_tensor_t *st_find(const st_file_t *f, const char *name) {
    if (f->n_tensors <= 0) return NULL;
    const int *idx = name_index(f);
    int lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(f->tensors[idx[mid]].name, name);
        if (c == 0) return &f->tensors[idx[mid]];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

const char *st_meta(const st_file_t *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

int st_read_f32(float *dst, const st_tensor_t *t) {
    const unsigned char *src = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, src, (size_t)n * sizeof(float));
        return 0;
    case ST_F16:
    case ST_BF16:
        st_to_f32(dst, src, t->dtype, (size_t)n);
        return 0;
    default:
        return sd_error(SD_ERR_FORMAT, "tensor '%s': dtype %s cannot be read as float (need F32, "
                        "F16 or BF16)", t->name, st_dtype_name(t->dtype));
    }
}

int st_read_i64(int64_t *dst, const st_tensor_t *t) {
    const unsigned char *src = t->data;
    int64_t n = t->numel;
    switch (t->dtype) {
    case ST_I64:
        if (n) memcpy(dst, src, (size_t)n * sizeof(int64_t));
        return 0;
    case ST_I32:
        for (int64_t i = 0; i < n; i++) {
            int32_t v;
            memcpy(&v, src + 4 * i, 4);
            dst[i] = v;
        }
        return 0;
    default:
        return sd_error(SD_ERR_FORMAT, "tensor '%s': dtype %s cannot be read as int64 (need I64 "
                        "or I32)", t->name, st_dtype_name(t->dtype));
    }
}

/* ------------------------------------------------------------------------------------ */
/* Sets: one file or a sharded model                                                    */

static int cmp_tensor_ptr_name(const void *a, const void *b) {
    return strcmp((*(const st_tensor_t *const *)a)->name, (*(const st_tensor_t *const *)b)->name);
}

/* Whole file into a NUL-terminated buffer (index files are small JSON). */
static int read_text(const char *path, char **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return sd_error(SD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    outputs_note_input_fd(fd, path);
    size_t cap = 1 << 16, n = 0;
    char *buf = sd_xmalloc(cap);
    for (;;) {
        if (n + 1 >= cap) {
            cap *= 2;
            char *nb = realloc(buf, cap);
            SD_CHECK(nb, "out of memory reading %s", path);
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int rc = sd_error(SD_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
            free(buf);
            close(fd);
            return rc;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

void st_set_close(st_set_t *s) {
    if (!s) return;
    for (int i = 0; i < s->n_files; i++) st_close(&s->files[i]);
    free(s->files);
    free(s->tensors);
    memset(s, 0, sizeof *s);
}

static int set_open_index(st_set_t *s, const char *path) {
    char *text = NULL;
    size_t len = 0;
    int rc = read_text(path, &text, &len);
    if (rc) return rc;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    const char **shards = NULL;
    char *full = NULL;
    if (!root) {
        rc = sd_error(SD_ERR_FORMAT, "%s: not valid JSON (near byte %td)", path,
                      end ? end - text : (ptrdiff_t)-1);
        goto done;
    }
    const cJSON *wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map")
                                           : NULL;
    if (!cJSON_IsObject(wm)) {
        rc = sd_error(SD_ERR_FORMAT, "%s: index has no \"weight_map\" object", path);
        goto done;
    }
    int n = cJSON_GetArraySize(wm);
    for (const cJSON *it = wm->child; it; it = it->next)
        if (!cJSON_IsString(it) || it->valuestring[0] == '\0') {
            rc = sd_error(SD_ERR_FORMAT, "%s: weight_map entry for tensor '%s' is not a file name",
                          path, it->string);
            goto done;
        }

    /* Distinct shard names, sorted, so each shard is opened once. */
    shards = sd_xmalloc((size_t)n * sizeof(char *) + 1);
    int ns = 0;
    for (const cJSON *it = wm->child; it; it = it->next) shards[ns++] = it->valuestring;
    qsort(shards, (size_t)ns, sizeof(char *), cmp_str_ptr);
    int nu = 0;
    for (int i = 0; i < ns; i++)
        if (nu == 0 || strcmp(shards[nu - 1], shards[i]) != 0) shards[nu++] = shards[i];

    /* Shards live next to the index. */
    const char *slash = strrchr(path, '/');
    size_t dirlen = slash ? (size_t)(slash - path + 1) : 0;
    s->files = sd_xcalloc((size_t)nu + 1, sizeof(st_file_t));
    for (int i = 0; i < nu; i++) {
        size_t sl = strlen(shards[i]);
        full = sd_xmalloc(dirlen + sl + 1);
        memcpy(full, path, dirlen);
        memcpy(full + dirlen, shards[i], sl + 1);
        rc = st_open(&s->files[i], full);
        free(full);
        full = NULL;
        if (rc) {
            /* keep st_open's message (it names the shard file), add the index */
            rc = sd_error_wrap(rc, "%s: shard '%s'", path, shards[i]);
            goto done;
        }
        s->n_files++;
    }

    s->tensors = sd_xmalloc((size_t)n * sizeof(st_tensor_t *) + 1);
    for (const cJSON *it = wm->child; it; it = it->next) {
        const char **hit = bsearch(&it->valuestring, shards, (size_t)nu, sizeof(char *), cmp_str_ptr);
        SD_CHECK(hit, "shard list is built from the weight map");
        const st_tensor_t *t = st_find(&s->files[hit - shards], it->string);
        if (!t) {
            rc = sd_error(SD_ERR_FORMAT, "%s: tensor '%s' is mapped to shard '%s' but is not in it",
                          path, it->string, it->valuestring);
            goto done;
        }
        s->tensors[s->n_tensors++] = t;
    }
    qsort(s->tensors, (size_t)s->n_tensors, sizeof(st_tensor_t *), cmp_tensor_ptr_name);
    for (int i = 1; i < s->n_tensors; i++)
        if (strcmp(s->tensors[i - 1]->name, s->tensors[i]->name) == 0) {
            rc = sd_error(SD_ERR_FORMAT, "%s: weight_map names tensor '%s' twice", path,
                          s->tensors[i]->name);
            goto done;
        }
done:
    free(shards);
    cJSON_Delete(root);
    free(text);
    if (rc) st_set_close(s);
    return rc;
}

void st_set_adopt(st_set_t *s, st_file_t *f) {
    memset(s, 0, sizeof *s);
    s->files = sd_xcalloc(1, sizeof(st_file_t));
    s->files[0] = *f;
    memset(f, 0, sizeof *f);
    s->n_files = 1;
    const st_file_t *g = &s->files[0];
    s->n_tensors = g->n_tensors;
    s->tensors = sd_xmalloc((size_t)g->n_tensors * sizeof(st_tensor_t *) + 1);
    const int *idx = name_index(g);
    for (int i = 0; i < g->n_tensors; i++) s->tensors[i] = &g->tensors[idx[i]];
}

int st_set_open(st_set_t *s, const char *path) {
    memset(s, 0, sizeof *s);
    if (str_ends_with(path, ".json")) return set_open_index(s, path);
    st_file_t f;
    int rc = st_open(&f, path);
    if (rc) return rc;
    st_set_adopt(s, &f);
    return 0;
}

const st_tensor_t *st_set_find(const st_set_t *s, const char *name) {
    if (s->n_tensors <= 0) return NULL;
    int lo = 0, hi = s->n_tensors;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        int c = strcmp(s->tensors[mid]->name, name);
        if (c == 0) return s->tensors[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* Writer                                                                               */
/* Layout: tensors in insertion order, contiguous (begin_i == end_{i-1}), because the     */
/* reference reader rejects gaps between tensors. Only the start of the data region is    */
/* 8-aligned (the header is padded with spaces); a tensor's own offset is aligned when    */
/* the sizes before it allow it, so readers must (and st_read_* do) accept unaligned data.*/

typedef struct {
    char *name;
    st_dtype_t dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    size_t nbytes;
    const void *data;
    int release;        /* data is a read-only file mapping: drop its pages once written */
} st_wentry_t;

struct st_writer {
    int n, cap;
    st_wentry_t *e;
    int *hash;          /* open addressing over entry indices, -1 = empty; size hcap */
    int hcap;
    int n_meta, meta_cap;
    char **meta_keys, **meta_values;
};

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void hash_insert(st_writer_t *w, int i) {
    size_t m = (size_t)w->hcap - 1, p = fnv1a(w->e[i].name) & m;
    while (w->hash[p] >= 0) p = (p + 1) & m;
    w->hash[p] = i;
}

static bool hash_has(const st_writer_t *w, const char *name) {
    if (!w->hcap) return false;
    size_t m = (size_t)w->hcap - 1, p = fnv1a(name) & m;
    for (; w->hash[p] >= 0; p = (p + 1) & m)
        if (strcmp(w->e[w->hash[p]].name, name) == 0) return true;
    return false;
}

st_writer_t *st_writer_new(void) { return sd_xcalloc(1, sizeof(st_writer_t)); }

void st_writer_free(st_writer_t *w) {
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->e[i].name);
    for (int i = 0; i < w->n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->e);
    free(w->hash);
    free(w->meta_keys);
    free(w->meta_values);
    free(w);
}

int st_writer_add(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim,
                  const int64_t *shape, const void *data) {
    if (!name) return sd_error(SD_ERR_ARG, "st_writer_add: tensor name is NULL");
    if ((unsigned)dtype >= ST_DTYPE_COUNT)
        return sd_error(SD_ERR_ARG, "st_writer_add: tensor '%s': unknown dtype %d", name, (int)dtype);
    if (ndim < 0 || ndim > ST_MAX_DIMS)
        return sd_error(SD_ERR_ARG, "st_writer_add: tensor '%s': %d dims (0..%d allowed)", name,
                        ndim, ST_MAX_DIMS);
    if (strcmp(name, "__metadata__") == 0)
        return sd_error(SD_ERR_ARG, "st_writer_add: '__metadata__' is reserved, not a tensor name");
    uint64_t numel = 1, nbytes;
    bool zero = false, overflow = false;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            return sd_error(SD_ERR_ARG, "st_writer_add: tensor '%s': shape[%d] = %" PRId64
                            " is negative", name, i, shape[i]);
        if (shape[i] == 0) zero = true;
        if (__builtin_mul_overflow(numel, (uint64_t)shape[i], &numel)) overflow = true;
    }
    if (zero) { numel = 0; overflow = false; }
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(dtype), &nbytes) ||
        nbytes > (uint64_t)SIZE_MAX / 2)
        return sd_error(SD_ERR_ARG, "st_writer_add: tensor '%s': size overflows", name);
    if (nbytes > 0 && !data)
        return sd_error(SD_ERR_ARG, "st_writer_add: tensor '%s': data is NULL", name);
    if (hash_has(w, name))
        return sd_error(SD_ERR_ARG, "st_writer_add: duplicate tensor name '%s'", name);

    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 16;
        st_wentry_t *ne = realloc(w->e, (size_t)w->cap * sizeof *ne);
        SD_CHECK(ne, "out of memory");
        w->e = ne;
    }
    st_wentry_t *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    SD_CHECK(e->name, "out of memory");
    e->dtype = dtype;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = (size_t)nbytes;
    e->data = data;
    w->n++;
    if (2 * w->n > w->hcap) { /* keep the load factor <= 1/2 */
        free(w->hash);
        w->hcap = w->hcap ? 2 * w->hcap : 64;
        while (2 * w->n > w->hcap) w->hcap *= 2;
        w->hash = sd_xmalloc((size_t)w->hcap * sizeof(int));
        memset(w->hash, 0xff, (size_t)w->hcap * sizeof(int));
        for (int i = 0; i < w->n; i++) hash_insert(w, i);
    } else {
        hash_insert(w, w->n - 1);
    }
    return 0;
}

/* Setting a key twice keeps the last value. */
int st_writer_add_mapped(st_writer_t *w, const char *name, st_dtype_t dtype, int ndim, const int64_t *shape,
                         const void *data) {
    const int rc = st_writer_add(w, name, dtype, ndim, shape, data);
    if (!rc) w->e[w->n - 1].release = 1;
    return rc;
}

int st_writer_meta(st_writer_t *w, const char *key, const char *value) {
    if (!key || !value) return sd_error(SD_ERR_ARG, "st_writer_meta: NULL key or value");
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            char *v = strdup(value);
            SD_CHECK(v, "out of memory");
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return 0;
        }
    if (w->n_meta == w->meta_cap) {
        w->meta_cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **k = realloc(w->meta_keys, (size_t)w->meta_cap * sizeof(char *));
        SD_CHECK(k, "out of memory");
        w->meta_keys = k;
        char **v = realloc(w->meta_values, (size_t)w->meta_cap * sizeof(char *));
        SD_CHECK(v, "out of memory");
        w->meta_values = v;
    }
    w->meta_keys[w->n_meta] = strdup(key);
    w->meta_values[w->n_meta] = strdup(value);
    SD_CHECK(w->meta_keys[w->n_meta] && w->meta_values[w->n_meta], "out of memory");
    w->n_meta++;
    return 0;
}

/* write() until done, retrying on EINTR and short writes. 0 or errno. */
static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        size_t chunk = n > (1u << 30) ? (1u << 30) : n;
        ssize_t r = write(fd, p, chunk);
        if (r < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (r == 0) return EIO;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Integers go in as raw JSON text: cJSON would print doubles >= 1e15 as "1e+15". */
static cJSON *json_int(uint64_t v) {
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, v);
    return cJSON_CreateRaw(s);
}

static char *build_header(const st_writer_t *w, size_t *len_out) {
    cJSON *root = cJSON_CreateObject();
    SD_CHECK(root, "out of memory");
    if (w->n_meta > 0) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        SD_CHECK(m, "out of memory");
        for (int i = 0; i < w->n_meta; i++)
            SD_CHECK(cJSON_AddStringToObject(m, w->meta_keys[i], w->meta_values[i]), "out of memory");
    }
    uint64_t off = 0;
    for (int i = 0; i < w->n; i++) {
        const st_wentry_t *e = &w->e[i];
        cJSON *t = cJSON_CreateObject(), *sh = cJSON_CreateArray(), *of = cJSON_CreateArray();
        SD_CHECK(t && sh && of, "out of memory");
        cJSON_AddItemToObject(root, e->name, t);
        SD_CHECK(cJSON_AddStringToObject(t, "dtype", st_dtype_name(e->dtype)), "out of memory");
        for (int k = 0; k < e->ndim; k++) cJSON_AddItemToArray(sh, json_int((uint64_t)e->shape[k]));
        cJSON_AddItemToObject(t, "shape", sh);
        cJSON_AddItemToArray(of, json_int(off));
        cJSON_AddItemToArray(of, json_int(off + e->nbytes));
        cJSON_AddItemToObject(t, "data_offsets", of);
        off += e->nbytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    SD_CHECK(json, "out of memory printing the safetensors header");
    /* 8 + N must be a multiple of 8: pad the JSON with spaces (valid trailing whitespace). */
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7;
    char *out = sd_xmalloc(8 + padded);
    uint64_t n = padded;
    memcpy(out, &n, 8);
    memcpy(out + 8, json, len);
    memset(out + 8 + len, ' ', padded - len);
    free(json);
    *len_out = 8 + padded;
    return out;
}

int st_writer_save(st_writer_t *w, const char *path) {
    int rc = outputs_check(path);   /* a device, a folder or one of our inputs: leave it alone */
    if (rc) return rc;
    size_t hlen;
    char *hdr = build_header(w, &hlen);
    size_t plen = strlen(path);
    char *tmp = sd_xmalloc(plen + 32);
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());

    int err;
    const char *what = NULL;
    int fd = open(tmp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = sd_error(SD_ERR_IO, "%s: cannot create temporary file %s: %s", path, tmp,
                      strerror(errno));
        goto out; /* nothing to unlink: it is not ours (EEXIST) or was never made */
    }
    if ((err = write_all(fd, hdr, hlen)) != 0) { what = "write"; goto fail; }
    for (int i = 0; i < w->n; i++) {
        if (w->e[i].nbytes && (err = write_all(fd, w->e[i].data, w->e[i].nbytes)) != 0) {
            what = "write";
            goto fail;
        }
        if (w->e[i].release) {   /* a mapped file: its pages would stay resident until the unmap */
            const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), p0 = (uintptr_t)w->e[i].data;
            const uintptr_t a = (p0 + page - 1) & ~(page - 1), b = (p0 + w->e[i].nbytes) & ~(page - 1);
            if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
        }
    }
    if (fsync(fd) != 0) { err = errno; what = "fsync"; goto fail; }
    int cfd = fd;
    fd = -1;
    if (close(cfd) != 0) { err = errno; what = "close"; goto fail; }
    if (rename(tmp, path) != 0) { err = errno; what = "rename"; goto fail; }

    /* Make the rename itself durable. */
    {
        char *dir = strdup(path);
        SD_CHECK(dir, "out of memory");
        char *slash = strrchr(dir, '/');
        const char *d = ".";
        if (slash == dir) d = "/";
        else if (slash) { *slash = '\0'; d = dir; }
        int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            /* Some file systems cannot fsync a directory (EINVAL): the data is still safe. */
            if (fsync(dfd) != 0 && errno != EINVAL && errno != EROFS)
                rc = sd_error(SD_ERR_IO, "%s: fsync of directory %s failed: %s", path, d,
                              strerror(errno));
            close(dfd);
        } else {
            rc = sd_error(SD_ERR_IO, "%s: cannot open directory %s to fsync: %s", path, d,
                          strerror(errno));
        }
        free(dir);
    }
    goto out;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    rc = sd_error(SD_ERR_IO, "%s: %s failed: %s", path, what, strerror(err));
out:
    free(tmp);
    free(hdr);
    return rc;
}

static void writer_drop_meta(st_writer_t *w, const char *key) {
    for (int i = 0; i < w->n_meta; i++)
        if (strcmp(w->meta_keys[i], key) == 0) {
            free(w->meta_keys[i]);
            free(w->meta_values[i]);
            memmove(w->meta_keys + i, w->meta_keys + i + 1, sizeof(char *) * (size_t)(w->n_meta - i - 1));
            memmove(w->meta_values + i, w->meta_values + i + 1, sizeof(char *) * (size_t)(w->n_meta - i - 1));
            w->n_meta--;
            return;
        }
}

/* Every piece (each file's header, then its tensors' data) hashed alone, folded in order. */
static uint64_t writer_content_hash(st_writer_t *w, uint64_t h) {
    size_t hlen;
    char *hdr = build_header(w, &hlen);
    h = fold(h, hash_bytes(hdr, hlen, 1));
    free(hdr);
    for (int i = 0; i < w->n; i++) h = fold(h, hash_bytes(w->e[i].data, w->e[i].nbytes, 2 + (uint64_t)i));
    return h;
}

int st_writer_save_group(st_writer_t *const *w, const char *const *paths, int n) {
    /* refuse a bad later target before the first file replaces anything */
    int rc = SD_OK;
    for (int i = 0; i < n && !rc; i++) rc = outputs_check(paths[i]);
    if (rc) return rc;
    uint64_t h = K1;
    for (int i = 0; i < n; i++) {
        writer_drop_meta(w[i], ST_PAIR_ID_KEY);
        h = writer_content_hash(w[i], h);
    }
    char id[17];
    snprintf(id, sizeof id, "%016llx", (unsigned long long)h);
    for (int i = 0; i < n; i++) st_writer_meta(w[i], ST_PAIR_ID_KEY, id);
    for (int i = 0; i < n && !rc; i++) rc = st_writer_save(w[i], paths[i]);
    return rc;
}

int st_writer_save_pair(st_writer_t *a, const char *path_a, st_writer_t *b, const char *path_b) {
    st_writer_t *const w[2] = {a, b};
    const char *const paths[2] = {path_a, path_b};
    return st_writer_save_group(w, paths, 2);
}

int st_pair_check(const char *path_a, const char *path_b, int force) {
    if (!path_a || !path_b || !path_a[0] || !path_b[0]) return SD_OK;
    st_file_t fa, fb;
    int rc = st_open(&fa, path_a);
    if (rc) return rc;
    if ((rc = st_open(&fb, path_b))) {
        st_close(&fa);
        return rc;
    }
    const char *ia = st_meta(&fa, ST_PAIR_ID_KEY), *ib = st_meta(&fb, ST_PAIR_ID_KEY);
    if ((ia || ib) && !(ia && ib && strcmp(ia, ib) == 0)) {
        char what[160];
        snprintf(what, sizeof what, "%s %s %s %s", ST_PAIR_ID_KEY, ia ? ia : "(none)", "vs", ib ? ib : "(none)");
        if (!force)
            rc = sd_error(SD_ERR_FORMAT, "%s and %s were not written together (%s: an interrupted save, or files of "
                          "two runs?); --force uses them anyway", path_a, path_b, what);
        else
            fprintf(stderr, "warning: %s and %s were not written together (%s): used anyway (--force)\n", path_a,
                    path_b, what);
    }
    st_close(&fb);
    st_close(&fa);
    return rc;
}

void st_release_pages(const st_tensor_t *t, size_t offset, size_t n) {
    if (offset >= t->nbytes) return;
    if (n > t->nbytes - offset) n = t->nbytes - offset;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), p = (uintptr_t)t->data + offset;
    const uintptr_t a = (p + page - 1) & ~(page - 1), b = (p + n) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}
