/* libFuzzer harness: one .safetensors file (header JSON, dtypes, shapes, offsets, metadata)
 * through st_open, then every accessor a loader uses on what it accepted. */
#include "fuzz_util.h"

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, "in.safetensors"), data, size);
    st_file_t f;
    if (fuzz_rc(st_open(&f, path), "st_open") == 0) {
        for (int i = 0; i < f.n_tensors; i++) {
            const st_tensor_t *t = &f.tensors[i];
            if (st_find(&f, t->name) == NULL) abort();   /* every listed tensor is found by name */
            if (t->numel > (1 << 20)) continue;
            void *buf = malloc(sizeof(int64_t) * (size_t)(t->numel ? t->numel : 1));
            if (st_read_f32(buf, t) != 0) st_read_i64(buf, t);
            free(buf);
        }
        for (int i = 0; i < f.n_meta; i++)
            if (st_meta(&f, f.meta_keys[i]) == NULL) abort();
        st_meta(&f, "base_model_hash");
        st_close(&f);
    }
    st_set_t s;   /* the same file as a one-file set (the model loader's path) */
    if (st_set_open(&s, path) == 0) {
        for (int i = 0; i < s.n_tensors; i++)
            if (st_set_find(&s, s.tensors[i]->name) != s.tensors[i]) abort();
        st_set_close(&s);
    }
    return 0;
}
