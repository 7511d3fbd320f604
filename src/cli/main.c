/* svdiff command-line entry point: global flags and the table of subcommands.
 * Each subcommand lives in its own file (selfcheck.c, ...) and returns an exit code. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "base/dist.h"
#include "base/runtime.h"
#include "io/outputs.h"
#include "cli/commands.h"

typedef struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
    int parallel;   /* splits its work over MPI ranks (mpirun -np N); the others refuse N > 1 */
} command_t;

static const command_t COMMANDS[] = {
    {"attention-leakage", cmd_attention_leakage,
     "share of each identifier's cross-attention in the other subject's half (multi-subject prompts)", 0},
    {"compare", cmd_compare, "pixel MSE and PSNR of image pairs (drift of samples, reconstructions)", 0},
    {"convert-model", cmd_convert_model, "write a PyTorch .ckpt checkpoint's weights as safetensors (no code is run)", 0},
    {"eval", cmd_eval, "denoising loss of images under a prompt at fixed timesteps and noise (compare models)", 0},
    {"edit", cmd_edit, "edit one image by changing its prompt (fine-tuned shifts + DDIM inversion, CoSINE)", 0},
    {"generate", cmd_generate, "generate images from a text prompt", 1},
    {"grid", cmd_grid, "lay images of one size out in a grid PNG (optionally scaled up)", 0},
    {"info", cmd_info, "describe a model folder or single-file checkpoint without reading its weights", 0},
    {"init", cmd_init, "write a randomly initialised model folder from component configs (for pretraining)", 0},
    {"pretrain", cmd_pretrain, "train every weight of a model on a captioned data set (the embedded default model)", 1},
    {"selfcheck", cmd_selfcheck,
     "train spectral shifts of a tiny random network end to end and verify every step", 0},
    {"shifts", cmd_shifts, "work on shift files: info, combine, scale, limit-rank, mix, convert", 0},
    {"tokenize", cmd_tokenize, "print the CLIP token ids of a prompt (--tokens shows the strings)", 0},
    {"tokenizer-train", cmd_tokenizer_train, "learn a CLIP-format BPE tokenizer from a captions file", 0},
    {"train", cmd_train, "train spectral shifts on images of a subject (DreamBooth-style, prior preservation)", 1},
};

static void print_usage(FILE *f) {
    fprintf(f,
            "svdiff %s: personalise text-to-image diffusion models by training spectral shifts\n"
            "(offsets to the singular values of the weights, SVDiff, ICCV 2023).\n\n"
            "usage: svdiff [--help] [--version] <command> [options]\n\n"
            "commands:\n",
            SVDIFF_VERSION);
    for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
        fprintf(f, "  %-16s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f,
            "\noptions:\n"
            "  -h, --help     show this help (or `svdiff <command> --help` for a command's flags)\n"
            "  -V, --version  print the version and the linked BLAS/LAPACK\n");
}

static int run_command(int argc, char **argv);

int main(int argc, char **argv) {
    sd_runtime_init(argc, argv);
    dist_init(&argc, &argv);   /* under mpirun / srun: this process is one rank of the job */
    int rc = run_command(argc, argv);
    dist_finalize();
    return rc;
}

static int run_command(int argc, char **argv) {
    outputs_track_inputs(1);   /* one process, one run: no output may replace what it read */
    if (argc < 2) {
        print_usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        print_usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
        print_version(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof *COMMANDS; i++)
        if (!strcmp(argv[1], COMMANDS[i].name)) {
            if (dist_size() > 1 && !COMMANDS[i].parallel) {
                if (dist_rank() == 0)
                    fprintf(stderr, "svdiff %s: does not run over MPI (%d ranks): start it without mpirun; train, "
                            "pretrain and generate split their work over ranks\n", argv[1], dist_size());
                return 2;
            }
            int rc = COMMANDS[i].run(argc - 1, argv + 1);
            /* what went to stdout (reports, --json) was written: a full disk or closed pipe is an error */
            if (fflush(stdout) != 0 || ferror(stdout)) {
                fprintf(stderr, "svdiff %s: cannot write the standard output: %s\n", argv[1], strerror(errno));
                if (!rc) rc = 1;
            }
            return rc;
        }
    fprintf(stderr, "svdiff: unknown command '%s' (see svdiff --help)\n", argv[1]);
    return 2;
}
