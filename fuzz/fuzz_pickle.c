/* libFuzzer harness: the restricted pickle reader of PyTorch checkpoints. An input that is a zip
 * archive ("PK\3\4": the seeds include whole torch.save files) goes through ckpt_open (prefix,
 * byteorder, data.pkl, storages, views); any other input is a data.pkl on its own, run by pk_load
 * and read by ckpt_state_dict. What is accepted is then checked: every view lies inside its
 * storage, every tensor of an opened checkpoint is found by name and its bytes lie in the mapping
 * (all read, so that a view past it faults). */
#include "fuzz_util.h"

#include "io/ckpt.h"
#include "io/pickle.h"

static void check_views(const pk_t *pk) {
    ckpt_entry_t *e;
    int n;
    if (fuzz_rc(ckpt_state_dict(pk, "data.pkl", &e, &n), "ckpt_state_dict")) return;
    for (int i = 0; i < n; i++) {
        const pk_value_t *t = e[i].t, *s = t->u.tensor.storage;
        if (!e[i].name || t->kind != PK_TENSOR || s->kind != PK_STORAGE) abort();
        if (t->u.tensor.numel == 0) continue;
        __int128 last = t->u.tensor.offset;   /* the last element the view reaches, without overflow */
        for (int d = 0; d < t->u.tensor.ndim; d++) last += (__int128)(t->u.tensor.size[d] - 1) * t->u.tensor.stride[d];
        if (t->u.tensor.offset < 0 || last >= s->u.storage.numel) abort();
    }
    free(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 4 && !memcmp(data, "PK\3\4", 4)) {
        char path[512];
        fuzz_write(fuzz_path(path, sizeof path, "in.ckpt"), data, size);
        st_file_t f;
        if (fuzz_rc(ckpt_open(&f, path, NULL), "ckpt_open") == 0) {
            unsigned sum = 0;
            const unsigned char *lo = f.map, *hi = lo + f.map_size;
            for (int i = 0; i < f.n_tensors; i++) {
                const st_tensor_t *t = &f.tensors[i];
                if (st_find(&f, t->name) != t) abort();
                if (t->nbytes != (size_t)t->numel * st_dtype_size(t->dtype)) abort();
                const unsigned char *p = t->data;
                if (t->nbytes && (p < lo || p + t->nbytes > hi)) abort();
                for (size_t k = 0; k < t->nbytes; k++) sum += p[k];
            }
            if (sum == 0xdeadbeef) fprintf(stderr, "%u\n", sum);   /* keeps the reads */
            st_close(&f);
        }
        return 0;
    }
    pk_t *pk;
    if (fuzz_rc(pk_load(&pk, data, size, "data.pkl"), "pk_load") == 0) {
        char d[160];
        pk_describe(pk_root(pk), d, sizeof d);
        pk_dict_get(pk_root(pk), "state_dict");
        check_views(pk);
        pk_free(pk);
    }
    return 0;
}
