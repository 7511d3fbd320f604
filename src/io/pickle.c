/* The restricted pickle machine of pickle.h: the opcodes of pickle protocols 1-5 that build
 * data, executed on a value stack with MARKs and a memo, exactly as Python's unpickler does,
 * except that nothing is imported or called (see pickle.h for what REDUCE & co. do instead). */
#include "io/pickle.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

struct pk {
    const unsigned char *p;
    size_t n;
    const char *what;
    pk_value_t **stack;
    int64_t sp, scap;
    int64_t marks[PK_MAX_MARKS];   /* stack heights at each open MARK */
    int nmarks;
    pk_value_t **memo;
    int64_t memo_cap, memo_count;
    pk_value_t **all;               /* every value made, for pk_free */
    int64_t n_all, cap_all;
    pk_value_t *root;
};

/* ---------------------------------------------------------------------------------------- */
/* Opcodes                                                                                  */

enum {
    OP_MARK = '(', OP_STOP = '.', OP_POP = '0', OP_POP_MARK = '1', OP_DUP = '2', OP_FLOAT = 'F',
    OP_INT = 'I', OP_BININT = 'J', OP_BININT1 = 'K', OP_LONG = 'L', OP_BININT2 = 'M', OP_NONE = 'N',
    OP_PERSID = 'P', OP_BINPERSID = 'Q', OP_REDUCE = 'R', OP_STRING = 'S', OP_BINSTRING = 'T',
    OP_SHORT_BINSTRING = 'U', OP_UNICODE = 'V', OP_BINUNICODE = 'X', OP_APPEND = 'a', OP_BUILD = 'b',
    OP_GLOBAL = 'c', OP_DICT = 'd', OP_EMPTY_DICT = '}', OP_APPENDS = 'e', OP_GET = 'g', OP_BINGET = 'h',
    OP_INST = 'i', OP_LONG_BINGET = 'j', OP_LIST = 'l', OP_EMPTY_LIST = ']', OP_OBJ = 'o', OP_PUT = 'p',
    OP_BINPUT = 'q', OP_LONG_BINPUT = 'r', OP_SETITEM = 's', OP_TUPLE = 't', OP_EMPTY_TUPLE = ')',
    OP_SETITEMS = 'u', OP_BINFLOAT = 'G',
    OP_PROTO = 0x80, OP_NEWOBJ = 0x81, OP_EXT1 = 0x82, OP_EXT2 = 0x83, OP_EXT4 = 0x84, OP_TUPLE1 = 0x85,
    OP_TUPLE2 = 0x86, OP_TUPLE3 = 0x87, OP_NEWTRUE = 0x88, OP_NEWFALSE = 0x89, OP_LONG1 = 0x8a,
    OP_LONG4 = 0x8b, OP_BINBYTES = 'B', OP_SHORT_BINBYTES = 'C', OP_SHORT_BINUNICODE = 0x8c,
    OP_BINUNICODE8 = 0x8d, OP_BINBYTES8 = 0x8e, OP_EMPTY_SET = 0x8f, OP_ADDITEMS = 0x90,
    OP_FROZENSET = 0x91, OP_NEWOBJ_EX = 0x92, OP_STACK_GLOBAL = 0x93, OP_MEMOIZE = 0x94, OP_FRAME = 0x95,
    OP_BYTEARRAY8 = 0x96, OP_NEXT_BUFFER = 0x97, OP_READONLY_BUFFER = 0x98,
};

/* Known opcodes that this reader refuses: text protocol 0, the extension registry (which maps
 * numbers to arbitrary callables) and out-of-band buffers. */
static const char *refused_name(int op) {
    switch (op) {
    case OP_FLOAT: return "FLOAT";
    case OP_INT: return "INT";
    case OP_LONG: return "LONG";
    case OP_PERSID: return "PERSID";
    case OP_STRING: return "STRING";
    case OP_UNICODE: return "UNICODE";
    case OP_GET: return "GET";
    case OP_PUT: return "PUT";
    case OP_INST: return "INST";
    case OP_OBJ: return "OBJ";
    case OP_EXT1: return "EXT1";
    case OP_EXT2: return "EXT2";
    case OP_EXT4: return "EXT4";
    case OP_NEXT_BUFFER: return "NEXT_BUFFER";
    case OP_READONLY_BUFFER: return "READONLY_BUFFER";
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------- */
/* Errors and values                                                                        */

static int fail(const pk_t *k, size_t at, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(const pk_t *k, size_t at, const char *fmt, ...) {
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return sd_error(SD_ERR_FORMAT, "%s: byte %zu: %s", k->what, at, msg);
}

static pk_value_t *new_value(pk_t *k, pk_kind_t kind) {
    if (k->n_all == k->cap_all) {
        k->cap_all = k->cap_all ? 2 * k->cap_all : 256;
        pk_value_t **na = realloc(k->all, (size_t)k->cap_all * sizeof *na);
        SD_CHECK(na, "out of memory");
        k->all = na;
    }
    pk_value_t *v = sd_xcalloc(1, sizeof *v);
    v->kind = kind;
    k->all[k->n_all++] = v;
    return v;
}

static void free_value(pk_value_t *v) {
    switch (v->kind) {
    case PK_STR: case PK_BYTES: free(v->u.str.s); break;
    case PK_TUPLE: case PK_LIST: case PK_SET: free(v->u.seq.v); break;
    case PK_DICT: free(v->u.dict.kv); break;
    case PK_GLOBAL: free(v->u.global.module); free(v->u.global.name); break;
    case PK_STORAGE: free(v->u.storage.key); break;
    default: break;
    }
    free(v);
}

void pk_free(pk_t *k) {
    if (!k) return;
    for (int64_t i = 0; i < k->n_all; i++) free_value(k->all[i]);
    free(k->all);
    free(k->stack);
    free(k->memo);
    free(k);
}

const pk_value_t *pk_root(const pk_t *k) { return k->root; }

static void seq_push(pk_value_t *s, pk_value_t *item) {
    if (s->u.seq.n == s->u.seq.cap) {
        s->u.seq.cap = s->u.seq.cap ? 2 * s->u.seq.cap : 4;
        pk_value_t **nv = realloc(s->u.seq.v, (size_t)s->u.seq.cap * sizeof *nv);
        SD_CHECK(nv, "out of memory");
        s->u.seq.v = nv;
    }
    s->u.seq.v[s->u.seq.n++] = item;
}

/* Pairs are appended, never searched: a repeated key is resolved by readers (the last wins,
 * as in Python), so that building a dict stays linear in its size. */
static void dict_push(pk_value_t *d, pk_value_t *key, pk_value_t *val) {
    if (d->u.dict.n == d->u.dict.cap) {
        d->u.dict.cap = d->u.dict.cap ? 2 * d->u.dict.cap : 4;
        pk_value_t **nkv = realloc(d->u.dict.kv, (size_t)d->u.dict.cap * 2 * sizeof *nkv);
        SD_CHECK(nkv, "out of memory");
        d->u.dict.kv = nkv;
    }
    d->u.dict.kv[2 * d->u.dict.n] = key;
    d->u.dict.kv[2 * d->u.dict.n + 1] = val;
    d->u.dict.n++;
}

static pk_value_t *new_str(pk_t *k, pk_kind_t kind, const unsigned char *s, size_t n) {
    pk_value_t *v = new_value(k, kind);
    v->u.str.s = sd_xmalloc(n + 1);
    memcpy(v->u.str.s, s, n);
    v->u.str.s[n] = '\0';
    v->u.str.n = n;
    return v;
}

const pk_value_t *pk_dict_get(const pk_value_t *d, const char *key) {
    if (!d || d->kind != PK_DICT) return NULL;
    size_t n = strlen(key);
    for (int64_t i = d->u.dict.n - 1; i >= 0; i--) {
        const pk_value_t *kk = d->u.dict.kv[2 * i];
        if (kk->kind == PK_STR && kk->u.str.n == n && !memcmp(kk->u.str.s, key, n)) return d->u.dict.kv[2 * i + 1];
    }
    return NULL;
}

const char *pk_describe(const pk_value_t *v, char *buf, size_t cap) {
    switch (v->kind) {
    case PK_NONE: return "None";
    case PK_BOOL: return "a bool";
    case PK_INT: case PK_BIGINT: return "an int";
    case PK_FLOAT: return "a float";
    case PK_STR: return "a string";
    case PK_BYTES: return "a bytes object";
    case PK_TUPLE: return "a tuple";
    case PK_LIST: return "a list";
    case PK_SET: return "a set";
    case PK_DICT: return "a dict";
    case PK_STORAGE: return "a storage";
    case PK_TENSOR: return "a tensor";
    case PK_GLOBAL:
        snprintf(buf, cap, "the global %s.%s", v->u.global.module, v->u.global.name);
        return buf;
    case PK_OBJECT: {
        const pk_value_t *g = v;
        while (g->kind == PK_OBJECT) g = g->u.object.from;   /* objects come from earlier values: ends */
        snprintf(buf, cap, "a call to %s.%s (not run)", g->u.global.module, g->u.global.name);
        return buf;
    }
    }
    return "?";
}

/* ---------------------------------------------------------------------------------------- */
/* Globals                                                                                  */

static const struct {
    const char *module, *name;
    pk_global_id_t id;
    st_dtype_t dtype;
} KNOWN[] = {
    {"torch._utils", "_rebuild_tensor", PK_G_REBUILD_TENSOR, ST_DTYPE_COUNT},
    {"torch._utils", "_rebuild_tensor_v2", PK_G_REBUILD_TENSOR_V2, ST_DTYPE_COUNT},
    {"torch._utils", "_rebuild_parameter", PK_G_REBUILD_PARAMETER, ST_DTYPE_COUNT},
    {"torch._utils", "_rebuild_parameter_with_state", PK_G_REBUILD_PARAMETER_STATE, ST_DTYPE_COUNT},
    {"collections", "OrderedDict", PK_G_ORDERED_DICT, ST_DTYPE_COUNT},
    {"torch", "Size", PK_G_SIZE, ST_DTYPE_COUNT},
    {"torch", "DoubleStorage", PK_G_STORAGE_TYPE, ST_F64},
    {"torch", "FloatStorage", PK_G_STORAGE_TYPE, ST_F32},
    {"torch", "HalfStorage", PK_G_STORAGE_TYPE, ST_F16},
    {"torch", "BFloat16Storage", PK_G_STORAGE_TYPE, ST_BF16},
    {"torch", "LongStorage", PK_G_STORAGE_TYPE, ST_I64},
    {"torch", "IntStorage", PK_G_STORAGE_TYPE, ST_I32},
    {"torch", "ShortStorage", PK_G_STORAGE_TYPE, ST_I16},
    {"torch", "CharStorage", PK_G_STORAGE_TYPE, ST_I8},
    {"torch", "ByteStorage", PK_G_STORAGE_TYPE, ST_U8},
    {"torch", "BoolStorage", PK_G_STORAGE_TYPE, ST_BOOL},
};

/* Modules whose functions run programs, touch files or the network, or import or evaluate code.
 * A state dict never names them; a file that does was made to attack its reader. */
static const char *const DENY_MODULES[] = {
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "socket", "importlib",
    "runpy", "pty", "code", "codeop", "ctypes", "pickle", "_pickle", "marshal", "webbrowser",
    "multiprocessing", "asyncio", "commands", "popen2", "signal", "tempfile", "urllib", "http",
    "ftplib", "smtplib", "telnetlib", "shelve", "pydoc", "timeit", "cProfile", "profile", "pdb", "bdb",
};
/* The builtins that legitimate pickles name (types, as constructors of plain data). */
static const char *const SAFE_BUILTINS[] = {
    "set", "frozenset", "slice", "range", "complex", "bytearray", "bytes", "object", "int", "float",
    "str", "list", "dict", "tuple", "bool",
};

static int is_denied(const char *module, const char *name) {
    size_t top = strcspn(module, ".");
    if (!strcmp(module, "builtins") || !strcmp(module, "__builtin__")) {
        for (size_t i = 0; i < sizeof SAFE_BUILTINS / sizeof *SAFE_BUILTINS; i++)
            if (!strcmp(name, SAFE_BUILTINS[i])) return 0;
        return 1;
    }
    for (size_t i = 0; i < sizeof DENY_MODULES / sizeof *DENY_MODULES; i++)
        if (strlen(DENY_MODULES[i]) == top && !strncmp(module, DENY_MODULES[i], top)) return 1;
    return 0;
}

static int make_global(pk_t *k, size_t at, const char *module, size_t mn, const char *name, size_t nn,
                       pk_value_t **out) {
    if (memchr(module, '\0', mn) || memchr(name, '\0', nn))
        return fail(k, at, "global name holds a NUL byte");
    pk_value_t *g = new_value(k, PK_GLOBAL);
    g->u.global.module = sd_xmalloc(mn + 1);
    memcpy(g->u.global.module, module, mn);
    g->u.global.module[mn] = '\0';
    g->u.global.name = sd_xmalloc(nn + 1);
    memcpy(g->u.global.name, name, nn);
    g->u.global.name[nn] = '\0';
    g->u.global.dtype = ST_DTYPE_COUNT;
    const char *m = g->u.global.module, *nm = g->u.global.name;
    if (is_denied(m, nm))
        return fail(k, at, "refusing global %s.%s: it can run code and no checkpoint names it (nothing was run)",
                    m, nm);
    for (size_t i = 0; i < sizeof KNOWN / sizeof *KNOWN; i++)
        if (!strcmp(m, KNOWN[i].module) && !strcmp(nm, KNOWN[i].name)) {
            g->u.global.id = KNOWN[i].id;
            g->u.global.dtype = KNOWN[i].dtype;
        }
    size_t l = strlen(nm);
    if (!g->u.global.id && !strcmp(m, "torch") && l > 7 && !strcmp(nm + l - 7, "Storage"))
        g->u.global.id = PK_G_STORAGE_TYPE;   /* a storage type svdiff has no dtype for (complex, quantised) */
    *out = g;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Stack                                                                                    */

static int64_t base(const pk_t *k) { return k->nmarks ? k->marks[k->nmarks - 1] : 0; }

static int push(pk_t *k, size_t at, pk_value_t *v) {
    if (k->sp == PK_MAX_STACK) return fail(k, at, "stack holds more than %d values", PK_MAX_STACK);
    if (k->sp == k->scap) {
        k->scap = k->scap ? 2 * k->scap : 64;
        pk_value_t **ns = realloc(k->stack, (size_t)k->scap * sizeof *ns);
        SD_CHECK(ns, "out of memory");
        k->stack = ns;
    }
    k->stack[k->sp++] = v;
    return 0;
}

static int pop(pk_t *k, size_t at, const char *op, pk_value_t **out) {
    if (k->sp <= base(k)) return fail(k, at, "%s on an empty stack", op);
    *out = k->stack[--k->sp];
    return 0;
}

static int top(pk_t *k, size_t at, const char *op, pk_value_t **out) {
    if (k->sp <= base(k)) return fail(k, at, "%s on an empty stack", op);
    *out = k->stack[k->sp - 1];
    return 0;
}

/* Closes the innermost MARK: its items are stack[*first, k->sp), which the caller consumes
 * and then drops by setting k->sp = *first. */
static int pop_mark(pk_t *k, size_t at, const char *op, int64_t *first) {
    if (!k->nmarks) return fail(k, at, "%s without a MARK", op);
    *first = k->marks[--k->nmarks];
    return 0;
}

static int memo_put(pk_t *k, size_t at, int64_t idx) {
    pk_value_t *v = NULL;
    int rc = top(k, at, "PUT", &v);
    if (rc) return rc;
    if (idx < 0 || idx >= PK_MAX_MEMO) return fail(k, at, "memo index %lld is out of range (limit %d)",
                                                   (long long)idx, PK_MAX_MEMO);
    if (idx >= k->memo_cap) {
        int64_t cap = k->memo_cap ? k->memo_cap : 64;
        while (cap <= idx) cap *= 2;
        if (cap > PK_MAX_MEMO) cap = PK_MAX_MEMO;
        pk_value_t **nm = realloc(k->memo, (size_t)cap * sizeof *nm);
        SD_CHECK(nm, "out of memory");
        memset(nm + k->memo_cap, 0, (size_t)(cap - k->memo_cap) * sizeof *nm);
        k->memo = nm;
        k->memo_cap = cap;
    }
    if (!k->memo[idx]) k->memo_count++;
    k->memo[idx] = v;
    return 0;
}

static int memo_get(pk_t *k, size_t at, int64_t idx) {
    if (idx < 0 || idx >= k->memo_cap || !k->memo[idx])
        return fail(k, at, "memo reference %lld was never stored (the memo holds %lld value%s)", (long long)idx,
                    (long long)k->memo_count, k->memo_count == 1 ? "" : "s");
    return push(k, at, k->memo[idx]);
}

/* ---------------------------------------------------------------------------------------- */
/* Reading the operands                                                                     */

static int need(const pk_t *k, size_t at, size_t pos, uint64_t m, const char *op) {
    if (m > k->n - pos)
        return fail(k, at, "truncated: %s needs %llu more bytes, %zu remain", op, (unsigned long long)m,
                    k->n - pos);
    return 0;
}

static uint64_t le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A two's-complement little-endian integer of n bytes (LONG1 / LONG4). */
static pk_value_t *make_long(pk_t *k, const unsigned char *p, uint64_t n) {
    pk_value_t *v = new_value(k, PK_INT);
    if (n == 0) return v;
    int neg = p[n - 1] & 0x80;
    /* bytes past the 8th must only extend the sign */
    for (uint64_t i = 8; i < n; i++)
        if (p[i] != (neg ? 0xff : 0x00)) {
            v->kind = PK_BIGINT;
            return v;
        }
    int m = n < 8 ? (int)n : 8;
    uint64_t u = le(p, m);
    if (m < 8 && neg) u |= ~0ull << (8 * m);
    if (n > 8 && ((u >> 63) != 0) != (neg != 0)) {   /* the sign bit of the 8th byte must agree */
        v->kind = PK_BIGINT;
        return v;
    }
    memcpy(&v->u.i, &u, 8);
    return v;
}

/* A text line of GLOBAL / INST, without its '\n'. */
static int read_line(pk_t *k, size_t at, size_t *pos, const char **s, size_t *len) {
    size_t lim = k->n - *pos < 4096 ? k->n - *pos : 4096;
    const unsigned char *nl = memchr(k->p + *pos, '\n', lim);
    if (!nl) return fail(k, at, "truncated: GLOBAL name has no end of line within %zu bytes", lim);
    *s = (const char *)k->p + *pos;
    *len = (size_t)(nl - (k->p + *pos));
    *pos += *len + 1;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Applying recognised globals                                                              */

static int int_arg(pk_t *k, size_t at, const pk_value_t *v, const char *what, int64_t *out) {
    if (v->kind != PK_INT) {
        char d[160];
        return fail(k, at, "_rebuild_tensor: %s is %s, not an int", what, pk_describe(v, d, sizeof d));
    }
    *out = v->u.i;
    return 0;
}

/* torch._utils._rebuild_tensor(_v2)(storage, storage_offset, size, stride, ...): a view of the
 * storage, checked here against the storage's element count. */
static int rebuild_tensor(pk_t *k, size_t at, const pk_value_t *args, pk_value_t **out) {
    char d[160];
    if (args->u.seq.n < 4)
        return fail(k, at, "_rebuild_tensor takes (storage, offset, size, stride, ...), got %lld arguments",
                    (long long)args->u.seq.n);
    pk_value_t *const *a = args->u.seq.v;
    if (a[0]->kind != PK_STORAGE)
        return fail(k, at, "_rebuild_tensor: argument 1 is %s, not a storage", pk_describe(a[0], d, sizeof d));
    const pk_value_t *st = a[0];
    pk_value_t *t = new_value(k, PK_TENSOR);
    t->u.tensor.storage = st;
    int rc = int_arg(k, at, a[1], "the storage offset", &t->u.tensor.offset);
    if (rc) return rc;
    if (t->u.tensor.offset < 0)
        return fail(k, at, "_rebuild_tensor: storage offset %lld is negative", (long long)t->u.tensor.offset);
    for (int i = 2; i < 4; i++)
        if (a[i]->kind != PK_TUPLE)
            return fail(k, at, "_rebuild_tensor: the %s is %s, not a tuple", i == 2 ? "size" : "stride",
                        pk_describe(a[i], d, sizeof d));
    int64_t nd = a[2]->u.seq.n;
    if (nd > ST_MAX_DIMS) return fail(k, at, "_rebuild_tensor: %lld dimensions (at most %d)", (long long)nd, ST_MAX_DIMS);
    if (a[3]->u.seq.n != nd)
        return fail(k, at, "_rebuild_tensor: %lld sizes but %lld strides", (long long)nd, (long long)a[3]->u.seq.n);
    t->u.tensor.ndim = (int)nd;
    int64_t numel = 1, last = t->u.tensor.offset;
    int overflow = 0;
    for (int i = 0; i < nd; i++) {
        int64_t sz = 0, sd = 0;
        if ((rc = int_arg(k, at, a[2]->u.seq.v[i], "a size", &sz)) || (rc = int_arg(k, at, a[3]->u.seq.v[i], "a stride", &sd)))
            return rc;
        if (sz < 0 || sd < 0)
            return fail(k, at, "_rebuild_tensor: %s %lld of dimension %d is negative", sz < 0 ? "size" : "stride",
                        (long long)(sz < 0 ? sz : sd), i);
        t->u.tensor.size[i] = sz;
        t->u.tensor.stride[i] = sd;
        overflow |= __builtin_mul_overflow(numel, sz, &numel);
    }
    if (overflow) return fail(k, at, "_rebuild_tensor: the sizes' product overflows 64 bits");
    t->u.tensor.numel = numel;
    const int64_t have = st->u.storage.numel;
    if (numel == 0) {
        if (t->u.tensor.offset > have)
            return fail(k, at, "_rebuild_tensor: storage offset %lld is past storage '%s' (%lld elements)",
                        (long long)t->u.tensor.offset, st->u.storage.key, (long long)have);
    } else {
        for (int i = 0; i < nd; i++) {   /* the last element the view reaches */
            int64_t step;
            overflow |= __builtin_mul_overflow(t->u.tensor.size[i] - 1, t->u.tensor.stride[i], &step);
            overflow |= __builtin_add_overflow(last, step, &last);
        }
        if (overflow || last >= have)
            return fail(k, at, "_rebuild_tensor: the view (offset %lld, %d dims) reaches element %s%lld of storage "
                        "'%s', which holds %lld elements", (long long)t->u.tensor.offset, (int)nd,
                        overflow ? "past " : "", overflow ? (long long)INT64_MAX : (long long)last,
                        st->u.storage.key, (long long)have);
    }
    *out = t;
    return 0;
}

/* REDUCE: callable(*args). Only the recognised globals mean anything; the rest give an opaque
 * object. Nothing runs. */
static int reduce(pk_t *k, size_t at, pk_value_t *fn, pk_value_t *args, pk_value_t **out) {
    char d[160];
    if (fn->kind != PK_GLOBAL && fn->kind != PK_OBJECT)
        return fail(k, at, "REDUCE applies %s, which is not callable", pk_describe(fn, d, sizeof d));
    if (args->kind != PK_TUPLE)
        return fail(k, at, "REDUCE arguments are %s, not a tuple", pk_describe(args, d, sizeof d));
    const pk_global_id_t id = fn->kind == PK_GLOBAL ? fn->u.global.id : PK_G_OTHER;
    const int64_t n = args->u.seq.n;
    switch (id) {
    case PK_G_REBUILD_TENSOR:
    case PK_G_REBUILD_TENSOR_V2:
        return rebuild_tensor(k, at, args, out);
    case PK_G_REBUILD_PARAMETER:
    case PK_G_REBUILD_PARAMETER_STATE:
        if (n < 1 || args->u.seq.v[0]->kind != PK_TENSOR)
            return fail(k, at, "_rebuild_parameter: the first argument is not a tensor");
        *out = args->u.seq.v[0];
        return 0;
    case PK_G_ORDERED_DICT: {
        pk_value_t *dct = new_value(k, PK_DICT);
        if (n == 1 && (args->u.seq.v[0]->kind == PK_LIST || args->u.seq.v[0]->kind == PK_TUPLE)) {
            const pk_value_t *items = args->u.seq.v[0];
            for (int64_t i = 0; i < items->u.seq.n; i++) {
                const pk_value_t *p = items->u.seq.v[i];
                if (p->kind != PK_TUPLE || p->u.seq.n != 2)
                    return fail(k, at, "OrderedDict: item %lld is not a (key, value) pair", (long long)i);
                dict_push(dct, p->u.seq.v[0], p->u.seq.v[1]);
            }
        } else if (n != 0) {
            return fail(k, at, "OrderedDict takes () or a list of pairs, got %lld arguments", (long long)n);
        }
        *out = dct;
        return 0;
    }
    case PK_G_SIZE:
        if (n != 1 || args->u.seq.v[0]->kind != PK_TUPLE) return fail(k, at, "torch.Size takes one tuple");
        *out = args->u.seq.v[0];
        return 0;
    default: {
        pk_value_t *o = new_value(k, PK_OBJECT);
        o->u.object.from = fn;
        *out = o;
        return 0;
    }
    }
}

/* BINPERSID: ('storage', <Type>Storage, key, location, numel). */
static int persistent_load(pk_t *k, size_t at, const pk_value_t *pid, pk_value_t **out) {
    char d[160];
    if (pid->kind != PK_TUPLE || pid->u.seq.n != 5 || pid->u.seq.v[0]->kind != PK_STR ||
        strcmp(pid->u.seq.v[0]->u.str.s, "storage"))
        return fail(k, at, "persistent id is %s, not ('storage', type, key, location, size)",
                    pk_describe(pid, d, sizeof d));
    pk_value_t *const *a = pid->u.seq.v;
    if (a[1]->kind != PK_GLOBAL || a[1]->u.global.id != PK_G_STORAGE_TYPE)
        return fail(k, at, "storage type is %s, not a torch.<Type>Storage", pk_describe(a[1], d, sizeof d));
    if (a[2]->kind != PK_STR || !a[2]->u.str.n || strlen(a[2]->u.str.s) != a[2]->u.str.n)
        return fail(k, at, "storage key is %s, not a non-empty string", pk_describe(a[2], d, sizeof d));
    if (a[4]->kind != PK_INT || a[4]->u.i < 0)
        return fail(k, at, "storage '%s': size is %s, not an int >= 0", a[2]->u.str.s,
                    a[4]->kind == PK_INT ? "negative" : pk_describe(a[4], d, sizeof d));
    pk_value_t *s = new_value(k, PK_STORAGE);
    s->u.storage.type = a[1]->u.global.name;
    s->u.storage.dtype = a[1]->u.global.dtype;
    s->u.storage.key = sd_xmalloc(a[2]->u.str.n + 1);
    memcpy(s->u.storage.key, a[2]->u.str.s, a[2]->u.str.n + 1);
    s->u.storage.numel = a[4]->u.i;
    *out = s;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* The machine                                                                              */

static int seq_from_mark(pk_t *k, size_t at, const char *op, pk_kind_t kind) {
    int64_t first = 0;
    int rc = pop_mark(k, at, op, &first);
    if (rc) return rc;
    pk_value_t *v = new_value(k, kind);
    if (kind == PK_DICT) {
        if ((k->sp - first) % 2) return fail(k, at, "DICT with an odd number of items");
        for (int64_t i = first; i < k->sp; i += 2) dict_push(v, k->stack[i], k->stack[i + 1]);
    } else {
        for (int64_t i = first; i < k->sp; i++) seq_push(v, k->stack[i]);
    }
    k->sp = first;
    return push(k, at, v);
}

/* APPEND(S) / SETITEM(S) / ADDITEMS into the value under the mark: items go into a list / dict /
 * set; an opaque object (a dict or list subclass that is not built) swallows them. */
static int add_items(pk_t *k, size_t at, const char *op, pk_kind_t want, int64_t first) {
    char d[160];
    if (first <= base(k)) return fail(k, at, "%s with nothing to add to", op);
    pk_value_t *into = k->stack[first - 1];
    if (into->kind == want) {
        if (want == PK_DICT) {
            if ((k->sp - first) % 2) return fail(k, at, "%s with an odd number of items", op);
            for (int64_t i = first; i < k->sp; i += 2) dict_push(into, k->stack[i], k->stack[i + 1]);
        } else {
            for (int64_t i = first; i < k->sp; i++) seq_push(into, k->stack[i]);
        }
    } else if (into->kind != PK_OBJECT) {
        return fail(k, at, "%s into %s", op, pk_describe(into, d, sizeof d));
    }
    k->sp = first;
    return 0;
}

static int run(pk_t *k) {
    size_t pos = 0;
    int rc = 0;
    char d[160];
    while (rc == 0) {
        if (pos >= k->n) return fail(k, pos, "truncated: the pickle ends without a STOP opcode");
        const size_t at = pos;
        const int op = k->p[pos++];
        pk_value_t *a = NULL, *b = NULL, *c = NULL;
        int64_t first = 0;
        switch (op) {
        case OP_PROTO:
            if ((rc = need(k, at, pos, 1, "PROTO"))) break;
            if (k->p[pos] > 5) rc = fail(k, at, "pickle protocol %d is not supported (at most 5)", k->p[pos]);
            pos += 1;
            break;
        case OP_FRAME:
            if ((rc = need(k, at, pos, 8, "FRAME"))) break;
            rc = need(k, at, pos + 8, le(k->p + pos, 8), "FRAME");   /* frames only group opcodes */
            pos += 8;
            break;
        case OP_STOP:
            if ((rc = pop(k, at, "STOP", &a))) break;
            k->root = a;
            return 0;
        case OP_MARK:
            if (k->nmarks == PK_MAX_MARKS) {
                rc = fail(k, at, "MARKs nested deeper than %d", PK_MAX_MARKS);
                break;
            }
            k->marks[k->nmarks++] = k->sp;
            break;
        case OP_POP:
            if (k->sp > base(k)) k->sp--;
            else if (!(rc = pop_mark(k, at, "POP", &first))) k->sp = first;   /* as Python does */
            break;
        case OP_POP_MARK:
            if (!(rc = pop_mark(k, at, "POP_MARK", &first))) k->sp = first;
            break;
        case OP_DUP:
            if (!(rc = top(k, at, "DUP", &a))) rc = push(k, at, a);
            break;
        case OP_NONE: rc = push(k, at, new_value(k, PK_NONE)); break;
        case OP_NEWTRUE:
        case OP_NEWFALSE:
            a = new_value(k, PK_BOOL);
            a->u.i = op == OP_NEWTRUE;
            rc = push(k, at, a);
            break;
        case OP_BININT:
        case OP_BININT1:
        case OP_BININT2: {
            const int w = op == OP_BININT ? 4 : op == OP_BININT1 ? 1 : 2;
            if ((rc = need(k, at, pos, (uint64_t)w, "BININT"))) break;
            a = new_value(k, PK_INT);
            a->u.i = w == 4 ? (int64_t)(int32_t)(uint32_t)le(k->p + pos, 4) : (int64_t)le(k->p + pos, w);
            pos += (size_t)w;
            rc = push(k, at, a);
            break;
        }
        case OP_LONG1:
        case OP_LONG4: {
            const int w = op == OP_LONG1 ? 1 : 4;
            if ((rc = need(k, at, pos, (uint64_t)w, "LONG"))) break;
            int64_t len = w == 1 ? (int64_t)k->p[pos] : (int64_t)(int32_t)(uint32_t)le(k->p + pos, 4);
            pos += (size_t)w;
            if (len < 0) {
                rc = fail(k, at, "LONG4 with a negative length");
                break;
            }
            if ((rc = need(k, at, pos, (uint64_t)len, "LONG"))) break;
            a = make_long(k, k->p + pos, (uint64_t)len);
            pos += (size_t)len;
            rc = push(k, at, a);
            break;
        }
        case OP_BINFLOAT: {
            if ((rc = need(k, at, pos, 8, "BINFLOAT"))) break;
            uint64_t u = 0;
            for (int i = 0; i < 8; i++) u = u << 8 | k->p[pos + i];   /* big-endian */
            a = new_value(k, PK_FLOAT);
            memcpy(&a->u.f, &u, 8);
            pos += 8;
            rc = push(k, at, a);
            break;
        }
        case OP_BINUNICODE:
        case OP_SHORT_BINUNICODE:
        case OP_BINUNICODE8:
        case OP_BINSTRING:
        case OP_SHORT_BINSTRING:
        case OP_BINBYTES:
        case OP_SHORT_BINBYTES:
        case OP_BINBYTES8:
        case OP_BYTEARRAY8: {
            const int w = (op == OP_SHORT_BINUNICODE || op == OP_SHORT_BINSTRING || op == OP_SHORT_BINBYTES) ? 1
                          : (op == OP_BINUNICODE8 || op == OP_BINBYTES8 || op == OP_BYTEARRAY8) ? 8 : 4;
            if ((rc = need(k, at, pos, (uint64_t)w, "a string length"))) break;
            uint64_t len = le(k->p + pos, w);
            if (op == OP_BINSTRING && (len >> 31)) {
                rc = fail(k, at, "BINSTRING with a negative length");
                break;
            }
            pos += (size_t)w;
            if ((rc = need(k, at, pos, len, "a string"))) break;
            const int text = op == OP_BINUNICODE || op == OP_SHORT_BINUNICODE || op == OP_BINUNICODE8;
            a = new_str(k, text ? PK_STR : PK_BYTES, k->p + pos, (size_t)len);
            pos += (size_t)len;
            rc = push(k, at, a);
            break;
        }
        case OP_EMPTY_TUPLE: rc = push(k, at, new_value(k, PK_TUPLE)); break;
        case OP_EMPTY_LIST: rc = push(k, at, new_value(k, PK_LIST)); break;
        case OP_EMPTY_DICT: rc = push(k, at, new_value(k, PK_DICT)); break;
        case OP_EMPTY_SET: rc = push(k, at, new_value(k, PK_SET)); break;
        case OP_TUPLE1:
        case OP_TUPLE2:
        case OP_TUPLE3: {
            const int m = op - OP_TUPLE1 + 1;
            if (k->sp - base(k) < m) {
                rc = fail(k, at, "TUPLE%d on a stack of %lld values", m, (long long)(k->sp - base(k)));
                break;
            }
            a = new_value(k, PK_TUPLE);
            for (int i = m; i > 0; i--) seq_push(a, k->stack[k->sp - i]);
            k->sp -= m;
            rc = push(k, at, a);
            break;
        }
        case OP_TUPLE: rc = seq_from_mark(k, at, "TUPLE", PK_TUPLE); break;
        case OP_LIST: rc = seq_from_mark(k, at, "LIST", PK_LIST); break;
        case OP_DICT: rc = seq_from_mark(k, at, "DICT", PK_DICT); break;
        case OP_FROZENSET: rc = seq_from_mark(k, at, "FROZENSET", PK_SET); break;
        case OP_APPEND: rc = add_items(k, at, "APPEND", PK_LIST, k->sp - 1); break;
        case OP_SETITEM: rc = add_items(k, at, "SETITEM", PK_DICT, k->sp - 2); break;
        case OP_APPENDS:
        case OP_SETITEMS:
        case OP_ADDITEMS: {
            const char *name = op == OP_APPENDS ? "APPENDS" : op == OP_SETITEMS ? "SETITEMS" : "ADDITEMS";
            if (!(rc = pop_mark(k, at, name, &first)))
                rc = add_items(k, at, name, op == OP_APPENDS ? PK_LIST : op == OP_SETITEMS ? PK_DICT : PK_SET, first);
            break;
        }
        case OP_BINPUT:
        case OP_LONG_BINPUT:
        case OP_BINGET:
        case OP_LONG_BINGET: {
            const int w = (op == OP_BINPUT || op == OP_BINGET) ? 1 : 4;
            if ((rc = need(k, at, pos, (uint64_t)w, "a memo index"))) break;
            int64_t idx = (int64_t)le(k->p + pos, w);
            pos += (size_t)w;
            rc = (op == OP_BINPUT || op == OP_LONG_BINPUT) ? memo_put(k, at, idx) : memo_get(k, at, idx);
            break;
        }
        case OP_MEMOIZE: rc = memo_put(k, at, k->memo_count); break;
        case OP_GLOBAL: {
            const char *m = NULL, *nm = NULL;
            size_t mn = 0, nn = 0;
            if ((rc = read_line(k, at, &pos, &m, &mn)) || (rc = read_line(k, at, &pos, &nm, &nn))) break;
            if (!(rc = make_global(k, at, m, mn, nm, nn, &a))) rc = push(k, at, a);
            break;
        }
        case OP_STACK_GLOBAL:
            if ((rc = pop(k, at, "STACK_GLOBAL", &b)) || (rc = pop(k, at, "STACK_GLOBAL", &a))) break;
            if (a->kind != PK_STR || b->kind != PK_STR) {
                rc = fail(k, at, "STACK_GLOBAL needs two strings");
                break;
            }
            if (!(rc = make_global(k, at, a->u.str.s, a->u.str.n, b->u.str.s, b->u.str.n, &c))) rc = push(k, at, c);
            break;
        case OP_REDUCE:
            if ((rc = pop(k, at, "REDUCE", &b)) || (rc = pop(k, at, "REDUCE", &a))) break;
            if (!(rc = reduce(k, at, a, b, &c))) rc = push(k, at, c);
            break;
        case OP_NEWOBJ:
        case OP_NEWOBJ_EX:
            if (op == OP_NEWOBJ_EX && (rc = pop(k, at, "NEWOBJ_EX", &c))) break;   /* kwargs */
            if ((rc = pop(k, at, "NEWOBJ", &b)) || (rc = pop(k, at, "NEWOBJ", &a))) break;
            if (a->kind != PK_GLOBAL && a->kind != PK_OBJECT) {
                rc = fail(k, at, "NEWOBJ of %s, which is not a class", pk_describe(a, d, sizeof d));
                break;
            }
            c = new_value(k, PK_OBJECT);
            c->u.object.from = a;
            rc = push(k, at, c);
            break;
        case OP_BUILD:   /* obj.__setstate__(state): the state is dropped, the object stays */
            if (!(rc = pop(k, at, "BUILD", &a))) rc = top(k, at, "BUILD", &b);
            break;
        case OP_BINPERSID:
            if ((rc = pop(k, at, "BINPERSID", &a))) break;
            if (!(rc = persistent_load(k, at, a, &b))) rc = push(k, at, b);
            break;
        default: {
            const char *name = refused_name(op);
            if (name) rc = fail(k, at, "opcode %s (0x%02x) is not supported in a checkpoint", name, op);
            else rc = fail(k, at, "unknown opcode 0x%02x", op);
            break;
        }
        }
    }
    return rc;
}

int pk_load(pk_t **out, const void *data, size_t n, const char *what) {
    *out = NULL;
    pk_t *k = sd_xcalloc(1, sizeof *k);
    k->p = data;
    k->n = n;
    k->what = what;
    int rc = run(k);
    if (rc) {
        pk_free(k);
        return rc;
    }
    k->what = NULL;   /* the caller's string may not outlive the call */
    *out = k;
    return 0;
}
