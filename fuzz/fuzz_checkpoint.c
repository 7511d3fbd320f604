/* libFuzzer harness: a training checkpoint (`--resume`) through checkpoint_check (format,
 * settings JSON, threads) and checkpoint_load (tensor names, dtypes and sizes, the order
 * permutation, the step / RNG counters and hex-float metadata), as trainer_checkpoint_check /
 * _load call them, against a trainer prepared once:
 * the tiny fixture model on the fixture images, 16 px, 4 steps (the settings of the seed). */
#include "fuzz_util.h"

#include "base/error.h"
#include "train/checkpoint.h"
#include "train/trainer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static trainer_t t;
    static int ready;
    static char model[512], images[512], out[512];
    if (!ready) {
        train_config_t c;
        train_config_default(&c);
        c.model = fuzz_fixture(model, sizeof model, "tests/fixtures/tiny-sd/diffusers");
        c.instance_dir = fuzz_fixture(images, sizeof images, "tests/fixtures/train/images");
        c.instance_prompt = "a photo of sks dog";
        c.resolution = 16, c.steps = 4, c.threads = 1, c.quiet = 1, c.svd_cache_dir = "";
        c.out_dir = fuzz_path(out, sizeof out, "train-out");
        if (trainer_open(&t, &c)) {
            fprintf(stderr, "fuzz_checkpoint: %s\n", sd_last_error());
            abort();
        }
        ready = 1;
    }
    char path[512];
    fuzz_write(fuzz_path(path, sizeof path, "checkpoint.safetensors"), data, size);
    fuzz_rc(trainer_checkpoint_check(&t, path), "checkpoint_check");
    fuzz_rc(trainer_checkpoint_load(&t, path), "checkpoint_load");   /* also after a failed check: the loader must stand on its own */
    return 0;
}
