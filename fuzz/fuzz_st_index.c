/* libFuzzer harness: a sharded model's *.safetensors.index.json ({"metadata", "weight_map"})
 * through st_set_open, next to the two real shards of the tiny text encoder fixture (so
 * valid shard names resolve and the tensor cross-checks run). */
#include "fuzz_util.h"

#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        fuzz_link_fixture("tests/fixtures/tiny-sd/diffusers/text_encoder/model-00001-of-00002.safetensors",
                          "model-00001-of-00002.safetensors");
        fuzz_link_fixture("tests/fixtures/tiny-sd/diffusers/text_encoder/model-00002-of-00002.safetensors",
                          "model-00002-of-00002.safetensors");
        ready = 1;
    }
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, "model.safetensors.index.json"), data, size);
    st_set_t s;
    if (fuzz_rc(st_set_open(&s, path), "st_set_open") == 0) {
        for (int i = 0; i < s.n_tensors; i++)
            if (st_set_find(&s, s.tensors[i]->name) != s.tensors[i]) abort();
        st_set_close(&s);
    }
    return 0;
}
