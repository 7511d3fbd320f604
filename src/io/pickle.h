/* A restricted pickle reader for PyTorch checkpoints (the data.pkl of a torch.save zip archive).
 * A pickle is a program for a stack machine that may import and call any Python function; this
 * reader runs only its data-building opcodes and never calls anything:
 *  - globals (GLOBAL, STACK_GLOBAL) become values naming module and name. A few are recognised:
 *    torch._utils._rebuild_tensor(_v2) and _rebuild_parameter(_with_state) rebuild tensor views,
 *    collections.OrderedDict builds a dict, torch.Size a tuple, torch.<Type>Storage names a
 *    storage dtype. Applying any other global (REDUCE, NEWOBJ, BUILD) gives an opaque object
 *    that remembers only which global it came from;
 *  - globals that exist to run code (os.*, subprocess.*, builtins.eval, ...) are refused
 *    outright, so that a hostile file fails loudly instead of loading as a strange dict. This
 *    list is a diagnostic, not the defence: nothing is ever executed either way;
 *  - persistent ids ('storage', <Type>Storage, key, location, numel) become storage values;
 *    the caller (ckpt.c) maps their keys to archive entries;
 *  - opcodes of the text protocol 0 (INT, STRING, PUT, GET, INST, ...), the extension registry
 *    (EXT1/2/4) and out-of-band buffers are refused: torch.save never writes them.
 * Limits: the value stack holds at most PK_MAX_STACK values, MARKs nest at most PK_MAX_MARKS
 * deep, memo indices stay below PK_MAX_MEMO. Nothing walks values recursively, so a deeply
 * nested or cyclic structure (a list that contains itself) costs nothing. Every value lives
 * until pk_free. Errors (SD_ERR_FORMAT) name the opcode and its byte offset. */
#ifndef SVDIFF_IO_PICKLE_H
#define SVDIFF_IO_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"

#define PK_MAX_STACK (1 << 20)
#define PK_MAX_MARKS 1024
#define PK_MAX_MEMO (1 << 22)

typedef enum {
    PK_NONE, PK_BOOL, PK_INT, PK_BIGINT, PK_FLOAT, PK_STR, PK_BYTES,
    PK_TUPLE, PK_LIST, PK_SET, PK_DICT,
    PK_GLOBAL,    /* an imported name, never called */
    PK_OBJECT,    /* what applying an unrecognised global would have made (not made) */
    PK_STORAGE,   /* a persistent id naming a storage of the archive */
    PK_TENSOR,    /* a view of a storage: offset, sizes, strides (checked against the storage) */
} pk_kind_t;

typedef enum {
    PK_G_OTHER = 0,
    PK_G_REBUILD_TENSOR, PK_G_REBUILD_TENSOR_V2, PK_G_REBUILD_PARAMETER,
    PK_G_REBUILD_PARAMETER_STATE, PK_G_ORDERED_DICT, PK_G_SIZE, PK_G_STORAGE_TYPE,
} pk_global_id_t;

typedef struct pk_value pk_value_t;
struct pk_value {
    pk_kind_t kind;
    union {
        int64_t i;                                        /* BOOL, INT */
        double f;                                         /* FLOAT */
        struct { char *s; size_t n; } str;                /* STR (UTF-8 bytes), BYTES; NUL-terminated */
        struct { pk_value_t **v; int64_t n, cap; } seq;   /* TUPLE, LIST, SET */
        struct { pk_value_t **kv; int64_t n, cap; } dict; /* n pairs kv[2i] -> kv[2i+1], in order */
        struct {
            char *module, *name;
            pk_global_id_t id;
            st_dtype_t dtype;   /* PK_G_STORAGE_TYPE: ST_DTYPE_COUNT when svdiff has no such dtype */
        } global;
        struct { const pk_value_t *from; } object;        /* the global (or object) applied */
        struct {
            const char *type;   /* "FloatStorage", ... */
            st_dtype_t dtype;   /* ST_DTYPE_COUNT: a type svdiff cannot read */
            char *key;
            int64_t numel;      /* elements of dtype */
        } storage;
        struct {
            const pk_value_t *storage;
            int64_t offset, numel;
            int ndim;
            int64_t size[ST_MAX_DIMS], stride[ST_MAX_DIMS];
        } tensor;
    } u;
};

typedef struct pk pk_t;

/* Runs the pickle data[0, n) up to its STOP. `what` prefixes error messages (the file and
 * entry, e.g. "model.ckpt: archive/data.pkl"). On success *out owns every value. */
int pk_load(pk_t **out, const void *data, size_t n, const char *what);
const pk_value_t *pk_root(const pk_t *pk);
void pk_free(pk_t *pk);

/* The value of a STR key in a dict (the last one when a key repeats); NULL if absent. */
const pk_value_t *pk_dict_get(const pk_value_t *dict, const char *key);
/* A short description for messages: "a dict", "a tensor", "os.system(...)", ... */
const char *pk_describe(const pk_value_t *v, char *buf, size_t cap);

#endif
