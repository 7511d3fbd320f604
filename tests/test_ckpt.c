/* PyTorch .ckpt checkpoints read without running anything (src/io/ckpt.c, src/io/pickle.c):
 * files written by torch.save (tests/reference/gen_ckpt_fixtures.py) against golden values
 * written by the same script, views of shared storages, nested state dicts, hostile and broken
 * files (each refused with its message, none running its payload), the pickle machine's limits
 * on hand-made pickles, and the tiny SD checkpoint opened as .ckpt and as .safetensors. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include "base/error.h"
#include "io/ckpt.h"
#include "io/model.h"
#include "io/pickle.h"
#include "testutil.h"

static const char *ck(const char *rel) {
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ & 3];
    char r[256];
    snprintf(r, sizeof r, "tests/fixtures/ckpt/%s", rel);
    snprintf(b, 512, "%s", source_path(r));
    return b;
}

static char g_pwned[256];   /* the file a payload would create ($SVDIFF_PWNED) */

static int setup(void **state) {
    (void)state;
    snprintf(g_pwned, sizeof g_pwned, "/tmp/svdiff_ckpt_pwned_%ld", (long)getpid());
    unlink(g_pwned);
    setenv("SVDIFF_PWNED", g_pwned, 1);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    unlink(g_pwned);
    return 0;
}

static void assert_not_pwned(const char *what) {
    if (access(g_pwned, F_OK) == 0) fail_msg("%s: the payload ran: %s exists", what, g_pwned);
}

static void assert_contains(const char *msg, const char *want) {
    if (!strstr(msg, want)) fail_msg("message \"%s\" lacks \"%s\"", msg, want);
}

/* ---------------------------------------------------------------------------------------- */

/* Every tensor of `fixture`.ckpt equals golden "<fixture>/<name>" (dtype, shape, bytes), and
 * the checkpoint holds no other tensor. */
static void check_against_golden(const st_file_t *g, const char *fixture) {
    char path[64];
    snprintf(path, sizeof path, "%s.ckpt", fixture);
    st_file_t f;
    if (ckpt_open(&f, ck(path), NULL)) fail_msg("ckpt_open(%s): %s", path, sd_last_error());
    size_t pl = strlen(fixture);
    int n = 0;
    for (int i = 0; i < g->n_tensors; i++) {
        const st_tensor_t *want = &g->tensors[i];
        if (strncmp(want->name, fixture, pl) || want->name[pl] != '/') continue;
        n++;
        const st_tensor_t *got = st_find(&f, want->name + pl + 1);
        if (!got) fail_msg("%s: no tensor '%s'", path, want->name + pl + 1);
        assert_int_equal(got->dtype, want->dtype);
        assert_int_equal(got->ndim, want->ndim);
        for (int d = 0; d < want->ndim; d++) assert_int_equal(got->shape[d], want->shape[d]);
        assert_int_equal(got->numel, want->numel);
        assert_int_equal(got->nbytes, want->nbytes);
        if (want->nbytes && memcmp(got->data, want->data, want->nbytes))
            fail_msg("%s: tensor '%s' differs from the golden values", path, got->name);
    }
    if (n == 0) fail_msg("golden file has no tensors of %s", fixture);
    assert_int_equal(f.n_tensors, n);
    st_close(&f);
}

static void test_golden_fixtures(void **state) {
    (void)state;
    st_file_t g;
    if (st_open(&g, ck("expected.safetensors"))) fail_msg("%s (regenerate: tests/reference/regenerate.sh)", sd_last_error());
    static const char *const fixtures[] = {"fp32", "fp16", "nested", "views", "proto4", "little"};
    for (size_t i = 0; i < sizeof fixtures / sizeof *fixtures; i++) check_against_golden(&g, fixtures[i]);
    st_close(&g);
}

/* Contiguous views of a shared storage point into it (no copy); strided ones are copies, and
 * releasing the pages of the in-memory file (as model_open does) keeps every value. */
static void test_views_share_storage(void **state) {
    (void)state;
    st_file_t f, g;
    assert_int_equal(ckpt_open(&f, ck("views.ckpt"), NULL), 0);
    const st_tensor_t *base = st_find(&f, "base"), *rows = st_find(&f, "rows"), *half = st_find(&f, "half"),
                      *tail = st_find(&f, "half_tail"), *tr = st_find(&f, "transposed");
    assert_non_null(base), assert_non_null(rows), assert_non_null(half), assert_non_null(tail), assert_non_null(tr);
    assert_ptr_equal(rows->data, (const char *)base->data + 6 * 4);   /* base[1:3]: offset 6 floats */
    assert_ptr_equal(tail->data, (const char *)half->data + 4 * 2);   /* half[4:] */
    const char *b0 = base->data;
    assert_true((const char *)tr->data >= b0 + base->nbytes || (const char *)tr->data + tr->nbytes <= b0);
    for (int i = 0; i < f.n_tensors; i++) st_release_pages(&f.tensors[i], 0, f.tensors[i].nbytes);
    assert_int_equal(st_open(&g, ck("expected.safetensors")), 0);
    for (int i = 0; i < f.n_tensors; i++) {
        char key[128];
        snprintf(key, sizeof key, "views/%s", f.tensors[i].name);
        const st_tensor_t *w = st_find(&g, key);
        assert_non_null(w);
        if (memcmp(w->data, f.tensors[i].data, w->nbytes)) fail_msg("%s changed after st_release_pages", key);
    }
    st_close(&g);
    st_close(&f);
}

/* Lightning layout: only "state_dict" is read; the optimizer's tensors and the hyper-parameters
 * (an argparse.Namespace, an opaque object) beside it are not. */
static void test_nested_state_dict(void **state) {
    (void)state;
    st_file_t f;
    assert_int_equal(ckpt_open(&f, ck("nested.ckpt"), NULL), 0);
    assert_int_equal(f.n_tensors, 2);
    assert_non_null(st_find(&f, "weight"));
    assert_non_null(st_find(&f, "bias"));
    assert_null(st_find(&f, "exp_avg"));
    st_close(&f);
}

/* ---------------------------------------------------------------------------------------- */
/* Hostile and broken files                                                                 */

typedef struct {
    const char *file, *want;
} bad_t;

static const bad_t BAD[] = {
    {"big.ckpt", "written on a big-endian machine (big/byteorder is \"big\")"},
    {"bad/os_system.ckpt", "byte 13: refusing global os.system: it can run code"},
    {"bad/posix_system.ckpt", "refusing global posix.system"},
    {"bad/builtins_eval.ckpt", "refusing global builtins.eval"},
    {"bad/stack_global_exec.ckpt", "refusing global builtins.exec"},
    {"bad/subprocess_getoutput.ckpt", "refusing global subprocess.getoutput"},
    {"bad/opaque_top.ckpt", "is a call to numpy.testing._private.utils.runstring (not run), not a dict of tensors"},
    {"bad/inst_opcode.ckpt", "opcode INST (0x69) is not supported"},
    {"bad/unknown_opcode.ckpt", "byte 5: unknown opcode 0xff"},
    {"bad/truncated.ckpt", "truncated"},
    {"bad/no_stop.ckpt", "ends without a STOP opcode"},
    {"bad/memo_out_of_range.ckpt", "memo reference 7 was never stored"},
    {"bad/deep_marks.ckpt", "MARKs nested deeper than 1024"},
    {"bad/not_a_dict.ckpt", "the pickled object is a list, not a dict of tensors"},
    {"bad/offset_past_storage.ckpt", "the view (offset 100, 1 dims) reaches element 103 of storage '0', which holds 4"},
    {"bad/extent_past_storage.ckpt", "reaches element 5 of storage '0', which holds 4 elements"},
    {"bad/negative_size.ckpt", "size -1 of dimension 0 is negative"},
    {"bad/huge_size.ckpt", "the sizes' product overflows 64 bits"},
    {"bad/stride_bomb.ckpt", "tensor 'w': its strided view repeats storage elements"},
    {"bad/size_mismatch.ckpt", "archive/data/0 holds 16 bytes, but the pickle declares 5 x FloatStorage = 20 bytes"},
    {"bad/storage_missing.ckpt", "the archive has no entry archive/data/7"},
    {"bad/no_data_pkl.ckpt", "the archive has no <folder>/data.pkl: not a PyTorch checkpoint"},
    {"bad/bomb_pickle.ckpt", "archive/data.pkl: declares 4294967280 bytes but holds 129 compressed bytes (a zip bomb?)"},
    {"bad/bomb_storage.ckpt", "archive/data/0: declares 2147483648 bytes but holds 20 compressed bytes"},
    {"bad/not_zip.ckpt", "not a zip archive (checkpoints written before PyTorch 1.6"},
};

static void test_hostile_files_refused(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof BAD / sizeof *BAD; i++) {
        const char *path = ck(BAD[i].file);
        st_file_t f;
        sd_clear_error();
        int rc = ckpt_open(&f, path, NULL);
        if (rc == 0) fail_msg("%s was accepted", BAD[i].file);
        assert_int_equal(rc, SD_ERR_FORMAT);
        const char *msg = sd_last_error();
        assert_contains(msg, path);
        assert_contains(msg, BAD[i].want);
        assert_null(strchr(msg, '\n'));
        assert_int_equal(f.n_tensors, 0);
        assert_null(f.map);
        assert_not_pwned(BAD[i].file);
    }
}

/* A global that is not on the refused list (numpy's runstring, which execs a string) is kept as
 * an opaque value beside the state dict: the file loads, and nothing ran. */
static void test_opaque_global_not_run(void **state) {
    (void)state;
    st_file_t f;
    assert_int_equal(ckpt_open(&f, ck("bad/opaque_nested.ckpt"), NULL), 0);
    assert_int_equal(f.n_tensors, 1);
    const st_tensor_t *w = st_find(&f, "w");
    assert_non_null(w);
    const float want[4] = {1, 2, 3, 4};
    assert_memory_equal(w->data, want, sizeof want);
    st_close(&f);
    assert_not_pwned("opaque_nested.ckpt");
}

/* ---------------------------------------------------------------------------------------- */
/* The pickle machine on hand-made pickles                                                  */

typedef struct {
    unsigned char *p;
    size_t n, cap;
} buf_t;

static void put(buf_t *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n) + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void puts_(buf_t *b, const char *s) { put(b, s, strlen(s)); }
#define PUTL(b, lit) put(b, lit, sizeof(lit) - 1)   /* a literal that may hold NUL bytes */
static void put_u32(buf_t *b, unsigned v) {
    unsigned char x[4] = {v & 255, (v >> 8) & 255, (v >> 16) & 255, v >> 24};
    put(b, x, 4);
}
static void put_str(buf_t *b, const char *s) {   /* BINUNICODE */
    PUTL(b, "X");
    put_u32(b, (unsigned)strlen(s));
    puts_(b, s);
}

/* pk_load must fail with `want` in its message. */
static void load_fails(const void *p, size_t n, const char *want) {
    pk_t *pk = (pk_t *)1;
    int rc = pk_load(&pk, p, n, "t.pkl");
    if (rc == 0) fail_msg("pickle accepted, expected \"%s\"", want);
    assert_null(pk);
    assert_contains(sd_last_error(), want);
}

#define LOAD_FAILS(lit, want) load_fails(lit, sizeof(lit) - 1, want)

static void test_pickle_limits(void **state) {
    (void)state;
    buf_t b = {0};
    /* the value stack is bounded */
    PUTL(&b, "\x80\x02");
    for (int i = 0; i <= PK_MAX_STACK; i++) PUTL(&b, "N");
    PUTL(&b, ".");
    load_fails(b.p, b.n, "stack holds more than 1048576 values");
    /* a list nested 100000 deep through the memo loads: nothing recurses over values */
    b.n = 0;
    PUTL(&b, "\x80\x02]r");
    put_u32(&b, 0);
    for (int i = 0; i < 100000; i++) {
        PUTL(&b, "]j");
        put_u32(&b, 0);
        PUTL(&b, "ar");
        put_u32(&b, 0);
    }
    PUTL(&b, ".");
    pk_t *pk;
    assert_int_equal(pk_load(&pk, b.p, b.n, "t.pkl"), 0);
    int depth = 0;
    for (const pk_value_t *v = pk_root(pk); v->kind == PK_LIST && v->u.seq.n; v = v->u.seq.v[0]) depth++;
    assert_int_equal(depth, 100000);
    ckpt_entry_t *e;
    int n;
    assert_int_equal(ckpt_state_dict(pk, "t.pkl", &e, &n), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "is a list, not a dict");
    pk_free(pk);
    /* a dict whose "state_dict" is itself: no loop, no tensors */
    b.n = 0;
    PUTL(&b, "\x80\x02}q\x00");
    put_str(&b, "state_dict");
    PUTL(&b, "h\x00s.");
    assert_int_equal(pk_load(&pk, b.p, b.n, "t.pkl"), 0);
    assert_int_equal(ckpt_state_dict(pk, "t.pkl", &e, &n), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "the \"state_dict\" holds no tensors");
    pk_free(pk);
    free(b.p);
    /* memo indices are bounded, and so is what the memo may be asked for */
    LOAD_FAILS("\x80\x02Nr\xff\xff\xff\x7f.", "memo index 2147483647 is out of range");
    LOAD_FAILS("\x80\x02j\x00\x00\x01\x00.", "memo reference 65536 was never stored");
}

static void test_pickle_opcodes(void **state) {
    (void)state;
    /* refused opcodes and protocols */
    LOAD_FAILS("\x80\x06}.", "pickle protocol 6 is not supported");
    LOAD_FAILS("\x80\x02\x82\x01.", "opcode EXT1 (0x82) is not supported");
    LOAD_FAILS("\x80\x02I1\n.", "opcode INT (0x49) is not supported");
    LOAD_FAILS("\x80\x02N\x97.", "opcode NEXT_BUFFER");
    /* REDUCE applies only globals; arguments must be a tuple */
    LOAD_FAILS("\x80\x02K\x01)R.", "REDUCE applies an int, which is not callable");
    LOAD_FAILS("\x80\x02\x63torch\nSize\nK\x01R.", "REDUCE arguments are an int, not a tuple");
    /* stack discipline */
    LOAD_FAILS("\x80\x02t.", "TUPLE without a MARK");
    LOAD_FAILS("\x80\x02N\x86.", "TUPLE2 on a stack of 1 values");
    LOAD_FAILS("\x80\x02Na.", "APPEND with nothing to add to");
    LOAD_FAILS("\x80\x02NNNs.", "SETITEM into None");
    LOAD_FAILS("\x80\x02.", "STOP on an empty stack");
    LOAD_FAILS("\x80\x02(}(NNNu.", "SETITEMS with an odd number of items");
    LOAD_FAILS("\x80\x02\x8a\x02\x01", "truncated: LONG needs 2 more bytes, 1 remain");
    LOAD_FAILS("\x80\x02X\xff\xff\xff\xff", "truncated: a string needs 4294967295 more bytes");
    LOAD_FAILS("\x80\x02\x95\xff\x00\x00\x00\x00\x00\x00\x00N.", "truncated: FRAME needs 255 more bytes");
    /* persistent ids must be storages */
    LOAD_FAILS("\x80\x02K\x01Q.", "persistent id is an int");
}

/* ints of every width, opaque objects that swallow items and state, and recognised globals */
static void test_pickle_values(void **state) {
    (void)state;
    buf_t b = {0};
    PUTL(&b, "\x80\x02(");
    PUTL(&b, "\x8a\x08\xfb\xff\xff\xff\xff\xff\xff\xff");             /* LONG1 8 bytes: -5 */
    PUTL(&b, "\x8a\x09\xfb\xff\xff\xff\xff\xff\xff\xff\xff");         /* LONG1 9 bytes, sign-extended: -5 */
    PUTL(&b, "\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00");         /* 2^63: no int64 */
    PUTL(&b, "J\xfe\xff\xff\xff" "M\xff\xff" "\x8a\x00");              /* -2, 65535, 0 */
    PUTL(&b, "cargparse\nNamespace\n)\x81}b");                          /* NEWOBJ + BUILD: opaque */
    PUTL(&b, "cmy.mod\nThing\n)R(NNu" "(Ne" "Na");                     /* SETITEMS/APPENDS/APPEND swallowed */
    PUTL(&b, "ccollections\nOrderedDict\n]X\x01\x00\x00\x00" "aK\x01\x86" "a\x85R");   /* OrderedDict([("a", 1)]) */
    PUTL(&b, "\x8c\x05torch\x94\x8c\x04Size\x94\x93K\x02K\x03\x86\x85R");           /* torch.Size((2, 3)) */
    PUTL(&b, "t.");
    pk_t *pk;
    if (pk_load(&pk, b.p, b.n, "t.pkl")) fail_msg("%s", sd_last_error());
    const pk_value_t *t = pk_root(pk);
    assert_int_equal(t->kind, PK_TUPLE);
    assert_int_equal(t->u.seq.n, 10);
    pk_value_t *const *v = t->u.seq.v;
    assert_int_equal(v[0]->kind, PK_INT), assert_int_equal(v[0]->u.i, -5);
    assert_int_equal(v[1]->kind, PK_INT), assert_int_equal(v[1]->u.i, -5);
    assert_int_equal(v[2]->kind, PK_BIGINT);
    assert_int_equal(v[3]->u.i, -2), assert_int_equal(v[4]->u.i, 65535), assert_int_equal(v[5]->u.i, 0);
    char d[160];
    assert_int_equal(v[6]->kind, PK_OBJECT);
    assert_string_equal(pk_describe(v[6], d, sizeof d), "a call to argparse.Namespace (not run)");
    assert_int_equal(v[7]->kind, PK_OBJECT);
    assert_int_equal(v[8]->kind, PK_DICT);
    const pk_value_t *a = pk_dict_get(v[8], "a");
    assert_non_null(a), assert_int_equal(a->u.i, 1);
    assert_int_equal(v[9]->kind, PK_TUPLE), assert_int_equal(v[9]->u.seq.n, 2);
    pk_free(pk);
    free(b.p);
}

/* Every proper prefix of a real torch.save pickle fails cleanly (no read past the end). */
static void test_every_truncation_fails(void **state) {
    (void)state;
    int err = 0;
    zip_t *za = zip_open(ck("nested.ckpt"), ZIP_RDONLY, &err);
    assert_non_null(za);
    zip_stat_t st;
    assert_int_equal(zip_stat(za, "nested/data.pkl", 0, &st), 0);
    unsigned char *p = malloc(st.size);
    zip_file_t *zf = zip_fopen(za, "nested/data.pkl", 0);
    assert_non_null(zf);
    assert_int_equal(zip_fread(zf, p, st.size), (zip_int64_t)st.size);
    zip_fclose(zf);
    zip_discard(za);
    pk_t *pk;
    assert_int_equal(pk_load(&pk, p, st.size, "nested"), 0);
    pk_free(pk);
    for (size_t n = 0; n < st.size; n++) {
        unsigned char *q = malloc(n + 1);   /* exactly n bytes readable under ASan */
        memcpy(q, p, n);
        int rc = pk_load(&pk, q, n, "prefix");
        free(q);
        if (rc == 0) fail_msg("a prefix of %zu of %llu bytes loaded", n, (unsigned long long)st.size);
    }
    free(p);
}

/* The opcodes of one tensor as torch.save writes them: _rebuild_tensor_v2(('storage', torch.<type>,
 * '0', 'cpu', 2), 0, (2,), (1,), False, {}). */
static void put_tensor(buf_t *b, const char *type) {
    PUTL(b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    put_str(b, "storage");
    PUTL(b, "ctorch\n");
    puts_(b, type);
    PUTL(b, "\n");
    put_str(b, "0");
    put_str(b, "cpu");
    PUTL(b, "K\x02tQK\x00K\x02\x85K\x01\x85\x89}tR");
}

/* ckpt_state_dict: what the state dict may hold */
static void test_state_dict_rules(void **state) {
    (void)state;
    buf_t b = {0};
    pk_t *pk;
    ckpt_entry_t *e;
    int n;
    PUTL(&b, "\x80\x02}(K\x07");   /* {7: tensor} */
    put_tensor(&b, "FloatStorage");
    PUTL(&b, "u.");
    if (pk_load(&pk, b.p, b.n, "t.pkl")) fail_msg("%s", sd_last_error());
    assert_int_equal(ckpt_state_dict(pk, "t.pkl", &e, &n), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "t.pkl: a tensor is stored under an int, not a name");
    pk_free(pk);
    b.n = 0;   /* {"w": complex tensor, "n": 1} */
    PUTL(&b, "\x80\x02}(");
    put_str(&b, "w");
    put_tensor(&b, "ComplexFloatStorage");
    put_str(&b, "n");
    PUTL(&b, "K\x01u.");
    if (pk_load(&pk, b.p, b.n, "t.pkl")) fail_msg("%s", sd_last_error());
    assert_int_equal(ckpt_state_dict(pk, "t.pkl", &e, &n), SD_ERR_FORMAT);
    assert_contains(sd_last_error(), "tensor 'w': storage type torch.ComplexFloatStorage is not supported");
    pk_free(pk);
    b.n = 0;   /* {"w": float tensor, "n": 1}: the int is skipped */
    PUTL(&b, "\x80\x02}(");
    put_str(&b, "w");
    put_tensor(&b, "FloatStorage");
    put_str(&b, "n");
    PUTL(&b, "K\x01u.");
    if (pk_load(&pk, b.p, b.n, "t.pkl")) fail_msg("%s", sd_last_error());
    assert_int_equal(ckpt_state_dict(pk, "t.pkl", &e, &n), 0);
    assert_int_equal(n, 1);
    assert_string_equal(e[0].name, "w");
    assert_int_equal(e[0].t->u.tensor.numel, 2);
    free(e);
    pk_free(pk);
    free(b.p);
}

/* Writes a zip of (name, bytes) entries, stored, through libzip. */
static void write_zip(const char *path, int n, const char *const *names, const buf_t *data) {
    int err = 0;
    zip_t *za = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
    assert_non_null(za);
    for (int i = 0; i < n; i++) {
        zip_source_t *src = zip_source_buffer(za, data[i].p, data[i].n, 0);
        assert_non_null(src);
        zip_int64_t idx = zip_file_add(za, names[i], src, ZIP_FL_OVERWRITE);
        assert_true(idx >= 0);
        zip_set_file_compression(za, (zip_uint64_t)idx, ZIP_CM_STORE, 0);
    }
    assert_int_equal(zip_close(za), 0);
}

/* ckpt_open must fail on `path` with `want` in its message. */
static void open_fails(const char *path, const char *want) {
    st_file_t f;
    if (ckpt_open(&f, path, NULL) == 0) fail_msg("%s accepted, expected \"%s\"", path, want);
    assert_contains(sd_last_error(), want);
    assert_null(f.map);
}

/* archive rules: a storage key too long for an entry name, two top folders, a storage declared
 * with two sizes, a byteorder that is neither little nor big; then the same archive made right */
static void test_archive_rules(void **state) {
    (void)state;
    char path[64];
    snprintf(path, sizeof path, "/tmp/svdiff_ckpt_%ld.ckpt", (long)getpid());
    buf_t pkl = {0}, w = {0}, order = {0};
    const float four[4] = {1, 2, 3, 4};
    put(&w, four, sizeof four);
    char key[1100];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    PUTL(&pkl, "\x80\x02}(");
    put_str(&pkl, "w");
    PUTL(&pkl, "ctorch._utils\n_rebuild_tensor_v2\n((");
    put_str(&pkl, "storage");
    PUTL(&pkl, "ctorch\nFloatStorage\n");
    put_str(&pkl, key);
    put_str(&pkl, "cpu");
    PUTL(&pkl, "K\x04tQK\x00K\x04\x85K\x01\x85\x89}tRu.");
    const char *names[3] = {"a/data.pkl", "a/data/0", "a/byteorder"};
    buf_t parts[3] = {pkl, w, order};
    write_zip(path, 2, names, parts);
    open_fails(path, "a storage key of 1099 bytes");

    pkl.n = 0;   /* {"w": storage '0' as 4 floats, "v": storage '0' as 3 floats} */
    PUTL(&pkl, "\x80\x02}(");
    for (int i = 0; i < 2; i++) {
        put_str(&pkl, i ? "v" : "w");
        PUTL(&pkl, "ctorch._utils\n_rebuild_tensor_v2\n((");
        put_str(&pkl, "storage");
        PUTL(&pkl, "ctorch\nFloatStorage\n");
        put_str(&pkl, "0");
        put_str(&pkl, "cpu");
        PUTL(&pkl, "K");
        const unsigned char numel = i ? 3 : 4;
        put(&pkl, &numel, 1);
        PUTL(&pkl, "tQK\x00K\x03\x85K\x01\x85\x89}tR");
    }
    PUTL(&pkl, "u.");
    parts[0] = pkl;
    write_zip(path, 2, names, parts);
    open_fails(path, "storage '0' is declared twice, as ");   /* 3 and 4 floats, in qsort's order */

    const char *two[3] = {"a/data.pkl", "b/data.pkl", "a/data/0"};
    buf_t two_parts[3] = {pkl, pkl, w};
    write_zip(path, 3, two, two_parts);
    open_fails(path, "several top folders with a data.pkl");

    pkl.n = 0;   /* {"w": storage '0' as 4 floats, viewed as its first 3} */
    PUTL(&pkl, "\x80\x02}(");
    put_str(&pkl, "w");
    PUTL(&pkl, "ctorch._utils\n_rebuild_tensor_v2\n((");
    put_str(&pkl, "storage");
    PUTL(&pkl, "ctorch\nFloatStorage\n");
    put_str(&pkl, "0");
    put_str(&pkl, "cpu");
    PUTL(&pkl, "K\x04tQK\x00K\x03\x85K\x01\x85\x89}tRu.");
    parts[0] = pkl;
    PUTL(&order, "middle");
    parts[2] = order;
    write_zip(path, 3, names, parts);
    open_fails(path, "a/byteorder: is not \"little\" or \"big\"");
    order.n = 0;
    PUTL(&order, "little");
    parts[2] = order;
    write_zip(path, 3, names, parts);
    st_file_t f;
    if (ckpt_open(&f, path, NULL)) fail_msg("%s", sd_last_error());
    assert_int_equal(f.n_tensors, 1);
    assert_int_equal(f.tensors[0].numel, 3);
    assert_memory_equal(f.tensors[0].data, four, 3 * sizeof(float));
    st_close(&f);
    unlink(path);
    free(pkl.p), free(w.p), free(order.p);
}

/* ---------------------------------------------------------------------------------------- */

/* The tiny SD 1.x checkpoint as .ckpt (nested, with training state) opens into the same model as
 * the .safetensors it was written from: every component, tensor, dtype, shape and byte. */
static void test_model_open_ckpt(void **state) {
    (void)state;
    model_t a, b;
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s", source_path("tests/fixtures/tiny-sd/sd1.ckpt"));
    snprintf(pb, sizeof pb, "%s", source_path("tests/fixtures/tiny-sd/sd1.safetensors"));
    if (model_open(&a, pa, NULL)) fail_msg("%s", sd_last_error());
    if (model_open(&b, pb, NULL)) fail_msg("%s", sd_last_error());
    assert_int_equal(a.layout, MODEL_LAYOUT_LDM_SD1);
    const model_component_t *ca[3] = {&a.unet, &a.vae, &a.text_encoder}, *cb[3] = {&b.unet, &b.vae, &b.text_encoder};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(ca[k]->n_tensors, cb[k]->n_tensors);
        assert_true(ca[k]->n_tensors > 0);
        for (int i = 0; i < ca[k]->n_tensors; i++) {
            const st_tensor_t *x = &ca[k]->tensors[i], *y = &cb[k]->tensors[i];
            assert_string_equal(x->name, y->name);
            assert_int_equal(x->dtype, y->dtype);
            assert_int_equal(x->ndim, y->ndim);
            assert_int_equal(x->nbytes, y->nbytes);
            if (memcmp(x->data, y->data, x->nbytes)) fail_msg("%s: '%s' differs", ca[k]->name, x->name);
        }
    }
    char *ja = cJSON_PrintUnformatted(a.unet.config), *jb = cJSON_PrintUnformatted(b.unet.config);
    assert_string_equal(ja, jb);
    free(ja), free(jb);
    model_close(&a);
    model_close(&b);
}

static int skip_w(const char *name) { return strcmp(name, "w") != 0; }
static int skip_bias(const char *name) { return strcmp(name, "layer.bias") != 0; }

/* `keep` leaves tensors out, and their storages are never read: a file whose only tensor names a
 * missing storage opens when that tensor is left out */
static void test_keep_skips_storages(void **state) {
    (void)state;
    st_file_t f;
    assert_int_equal(ckpt_open(&f, ck("fp32.ckpt"), skip_bias), 0);
    assert_int_equal(f.n_tensors, 4);
    assert_null(st_find(&f, "layer.bias"));
    assert_non_null(st_find(&f, "layer.weight"));
    st_close(&f);
    open_fails(ck("bad/storage_missing.ckpt"), "the archive has no entry archive/data/7");
    assert_int_equal(ckpt_open(&f, ck("bad/storage_missing.ckpt"), skip_w), 0);
    assert_int_equal(f.n_tensors, 0);
    st_close(&f);
}

/* model_open reads no storage of the EMA copy (model_ema.*): with those entries deleted from
 * the archive the model still opens, while reading every tensor names the missing entry */
static void test_model_skips_ema(void **state) {
    (void)state;
    char src[512], path[64];
    snprintf(src, sizeof src, "%s", source_path("tests/fixtures/tiny-sd/sd1.ckpt"));
    snprintf(path, sizeof path, "/tmp/svdiff_ckpt_ema_%ld.ckpt", (long)getpid());
    size_t n;
    char *bytes = read_file(src, &n);
    assert_non_null(bytes);
    FILE *o = fopen(path, "wb");
    assert_non_null(o);
    assert_int_equal(fwrite(bytes, 1, n, o), n);
    fclose(o);
    free(bytes);
    /* the storage keys of the model_ema.* tensors, from the pickle */
    int err = 0;
    zip_t *za = zip_open(path, 0, &err);
    assert_non_null(za);
    zip_stat_t st;
    assert_int_equal(zip_stat(za, "sd1/data.pkl", 0, &st), 0);
    unsigned char *pkl = malloc(st.size);
    zip_file_t *zf = zip_fopen(za, "sd1/data.pkl", 0);
    assert_int_equal(zip_fread(zf, pkl, st.size), (zip_int64_t)st.size);
    zip_fclose(zf);
    pk_t *pk;
    ckpt_entry_t *e;
    int ne, deleted = 0;
    assert_int_equal(pk_load(&pk, pkl, st.size, "sd1"), 0);
    assert_int_equal(ckpt_state_dict(pk, "sd1", &e, &ne), 0);
    for (int i = 0; i < ne; i++)
        if (!strncmp(e[i].name, "model_ema.", 10)) {
            char name[128];
            snprintf(name, sizeof name, "sd1/data/%s", e[i].t->u.tensor.storage->u.storage.key);
            zip_int64_t idx = zip_name_locate(za, name, 0);
            assert_true(idx >= 0);
            assert_int_equal(zip_delete(za, (zip_uint64_t)idx), 0);
            deleted++;
        }
    assert_int_equal(deleted, 3);
    free(e);
    pk_free(pk);
    free(pkl);
    assert_int_equal(zip_close(za), 0);
    model_t m;
    if (model_open(&m, path, NULL)) fail_msg("%s", sd_last_error());
    assert_int_equal(m.layout, MODEL_LAYOUT_LDM_SD1);
    model_close(&m);
    open_fails(path, "the archive has no entry sd1/data/");
    unlink(path);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_fixtures),
        cmocka_unit_test(test_views_share_storage),
        cmocka_unit_test(test_nested_state_dict),
        cmocka_unit_test_setup_teardown(test_hostile_files_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_opaque_global_not_run, setup, teardown),
        cmocka_unit_test(test_pickle_limits),
        cmocka_unit_test(test_pickle_opcodes),
        cmocka_unit_test(test_pickle_values),
        cmocka_unit_test(test_every_truncation_fails),
        cmocka_unit_test(test_state_dict_rules),
        cmocka_unit_test(test_archive_rules),
        cmocka_unit_test(test_keep_skips_storages),
        cmocka_unit_test(test_model_skips_ema),
        cmocka_unit_test(test_model_open_ckpt),
    };
    return RUN_TESTS(argc, argv, "ckpt", tests, NULL, NULL);
}
