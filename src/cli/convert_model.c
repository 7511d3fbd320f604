/* `svdiff convert-model IN.ckpt -o OUT.safetensors`: a safetensors copy of a PyTorch checkpoint's
 * state dict (same names, dtypes and shapes, in the checkpoint's order; strided views written
 * contiguous), so that other tools, and later runs, read the weights without a pickle. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "base/error.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "io/ckpt.h"
#include "io/safetensors.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff convert-model IN.ckpt -o OUT.safetensors\n\n"
            "Writes the tensors of a PyTorch checkpoint (.ckpt, .pt or .pth, as torch.save writes it since\n"
            "PyTorch 1.6) to a safetensors file: the same names, dtypes and shapes. The weights are those of\n"
            "the state dict (its \"state_dict\" entry when it has one; training state beside it is left\n"
            "out). The pickle is read by a restricted reader that never runs code: a file that names code\n"
            "to run (os.system, eval, ...) is refused. The output is written atomically.\n\n"
            "options:\n"
            "  -o, --output FILE   the safetensors file to write (must end in .safetensors;\n"
            "                      also --output-dir)\n"
            "  -h, --help          show this help\n");
}

int cmd_convert_model(int argc, char **argv) {
    cli_common_t cm = {0};
    static cli_parser_t ps;
    cli_parser_init(&ps, "convert-model", NULL, CLI_OUTPUT, &cm);
    ps.operands = 1;
    for (int c; (c = cli_getopt(&ps, argc, argv)) != -1;) {
        if (c == 'h') return usage(stdout), 0;
        if (c != CLI_BAD) usage(stderr);
        return 2;
    }
    const char *out = cm.output;
    if (argc - optind != 1 || !out) {
        fprintf(stderr, "svdiff convert-model: give one IN checkpoint and -o OUT.safetensors (see --help)\n");
        return 2;
    }
    const char *in = argv[optind];
    size_t n = strlen(out);
    if (n < 12 || strcmp(out + n - 12, ".safetensors") != 0) {
        fprintf(stderr, "svdiff convert-model: -o %s: the output must end in .safetensors\n", out);
        return 2;
    }
    if (!ckpt_is_path(in)) {
        fprintf(stderr, "svdiff convert-model: %s: not a PyTorch checkpoint (.ckpt, .pt or .pth)\n", in);
        return 2;
    }
    st_file_t f;
    int rc = ckpt_open(&f, in, NULL);
    if (rc) {
        fprintf(stderr, "svdiff convert-model: %s\n", sd_last_error());
        return 1;
    }
    st_writer_t *w = st_writer_new();
    size_t bytes = 0;
    for (int i = 0; i < f.n_tensors && !rc; i++) {
        const st_tensor_t *t = &f.tensors[i];
        rc = st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, t->data);
        bytes += t->nbytes;
    }
    if (!rc) rc = st_writer_meta(w, "format", "pt");
    if (!rc) rc = st_writer_save(w, out);
    if (rc) fprintf(stderr, "svdiff convert-model: %s\n", sd_last_error());
    else printf("wrote %s: %d tensors, %.2f MB of weights, from %s\n", out, f.n_tensors, bytes / 1e6, in);
    st_writer_free(w);
    st_close(&f);
    return rc ? 1 : 0;
}
