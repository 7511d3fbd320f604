/* `svdiff train` (DreamBooth-style personalisation by spectral shifts, or with --mode full by
 * every weight) and `svdiff pretrain` (full-weight training on a captioned data set, pretrain.c):
 * parses the flags (named after the diffusers training scripts; their underscore spellings are
 * accepted with dashes), checks them, and hands over to the trainer (src/train/trainer.h). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "base/runtime.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "train/cutmix.h"
#include "train/trainer.h"

#define MAX_SAMPLE_PROMPTS 64

static const char *verb = "train";   /* "pretrain" in pretrain mode: the name in messages */

static void usage_pretrain(FILE *f) {
    fprintf(f,
            "usage: svdiff pretrain --model INIT_DIR --data CAPTIONS.tsv [--image-root DIR] -o OUT_DIR [options]\n\n"
            "Trains every weight of a model (e.g. one made by `svdiff init`) on a captioned data set; OUT_DIR\n"
            "becomes a diffusers model folder (the EMA weights with --ema-decay), with OUT_DIR/loss.csv,\n"
            "OUT_DIR/checkpoint.safetensors (--checkpoint-every) and OUT_DIR/samples/step-N.png (--sample-every).\n\n"
            "data:\n"
            "  --data FILE                TSV, one image a line: path<TAB>caption[<TAB>split]; rows whose split\n"
            "                             is given and is not 'train' are skipped; a 'path' header line is allowed\n"
            "  --image-root DIR           folder of relative paths (default: the TSV's folder)\n"
            CLI_MODEL_HELP
            "  --resolution N             training size (default 32); images are resized and centre-cropped, never\n"
            "                             flipped; without a VAE they go to the UNet as [-1, 1] pixels\n"
            "  --caption-dropout P        share of rows trained with the empty prompt, the unconditional branch\n"
            "                             that classifier-free guidance needs (default 0.1)\n"
            "order of the data: a Fisher-Yates permutation of the rows per epoch (Philox stream of --seed),\n"
            "consumed --batch-size rows per micro-batch; noise and timesteps come from a second stream.\n"
            "optimisation:\n"
            "  --steps N (default 1000), --batch-size N (8), --grad-accum N (1)\n"
            "  --lr LR (default 1e-4), --lr-schedule constant|linear|cosine (cosine), --warmup N (0)\n"
            "  --adam-beta1 B, --adam-beta2 B, --adam-epsilon E, --adam-weight-decay D (0.9, 0.999, 1e-8, 1e-2)\n"
            "  --max-grad-norm N (1; 0 = off)\n"
            "  --ema-decay D              keep an EMA of the weights (e.g. 0.999) and save it as the model\n"
            "  --freeze-text-encoder      train the UNet only (default: the text encoder too)\n"
            "  --gradient-checkpointing, --seed S (42), --threads N\n"
            "  --compute-dtype fp32|bf16  fp32 (default, exact) or bf16 matrix products with fp32 accumulation\n"
            "output:\n"
            "  -o DIR, --save-dtype fp32|fp16 (fp32), --save-delta (weight_delta.safetensors = W - W_init)\n"
            "  --checkpoint-every N, --resume (bit-identical with the same threads), --force\n"
            "  --sample-every N, --sample-prompt P (repeatable), --sample-steps N (25), --sample-cfg G (7.5)\n"
            "  --quiet, -h/--help\n");
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: svdiff train --model PATH --instance-dir DIR --instance-prompt TEXT -o OUT_DIR [options]\n\n"
            "Trains spectral shifts (offsets of the singular values of every UNet conv / linear weight, SVDiff)\n"
            "on a few images of a subject; writes OUT_DIR/spectral_shifts.safetensors (+ _te with\n"
            "--train-text-encoder), OUT_DIR/loss.csv and, with --sample-every, OUT_DIR/samples/step-N.png.\n\n"
            "data:\n"
            "  --model PATH               diffusers folder or single-file .safetensors or .ckpt checkpoint\n"
            "  --tokenizer DIR            CLIP tokenizer folder (needed for single files)\n"
            CLI_MODEL_HELP
            "  --instance-dir DIR         images of the subject (PNG, JPEG, any size); img.txt next to img.png\n"
            "                             replaces the instance prompt for that image\n"
            "  --instance-prompt TEXT     e.g. \"a photo of sks dog\" (at most 77 CLIP tokens)\n"
            "  --class-dir DIR            prior preservation: class images (kept and reused)\n"
            "  --class-prompt TEXT        e.g. \"a photo of a dog\"\n"
            "  --num-class-images N       generate class images with the base model up to N (default 100)\n"
            "  --class-steps N            DDIM steps for them (default 50); --class-cfg G guidance (7.5)\n"
            "  --prior-loss-weight W      weight of the class loss (default 1)\n"
            "  --resolution N             training size in pixels (default 512)\n"
            "  --center-crop              centre crop (default: a random crop per image, from the seed)\n"
            "  --flip                     random horizontal flips\n"
            "  --caption-dropout P        share of rows trained with the empty prompt (default 0)\n"
            "several subjects (Cut-Mix-Unmix; instead of --instance-dir / --class-dir):\n"
            "  --subject \"PHRASE=DIR\"     a subject: its identifier phrase and image folder, repeatable,\n"
            "                             e.g. --subject \"sks cat=cats/\" --subject \"hta monkey=monkeys/\"\n"
            "  --subject-class \"PHRASE=DIR\"  prior preservation: class phrase and folder of the subject\n"
            "                             given in the same position (e.g. \"a cat=cat-class/\"); one for\n"
            "                             every --subject or none; missing images are generated\n"
            "  --prompt-template T        prompts are T with {} replaced by the phrase (default \"a photo of {}\")\n"
            "  --cutmix-prob P            share of samples that are composites of two different subjects, one\n"
            "                             per half, prompt \"... A on the left and B on the right\" or, half of\n"
            "                             the time, \"... A and B\" (default 0.6 with >= 2 subjects, else 0)\n"
            "  --cutmix-vertical          top / bottom halves (\"A at the top and B at the bottom\")\n"
            "  --cutmix-crop              scale each image to cover its half and crop (default: fit it inside\n"
            "                             the half on its border colour, which keeps a centred subject whole)\n"
            "  --unmix-weight W           Unmix: weight of the mean squared cross-attention probability of each\n"
            "                             subject's phrase tokens over the other subject's half (default 1;\n"
            "                             0 = off); composite instance rows only\n"
            "  --unmix-loss mse|share     mse (default, the method's): the squared probabilities themselves, which\n"
            "                             training can also lower by weakening the phrase everywhere; share: the\n"
            "                             squared share of each phrase's attention mass (per head) in the other\n"
            "                             half, which only moving the attention lowers (on the default model\n"
            "                             weight 1 took the leakage from 0.50 to 0.05-0.09, weight 10 to\n"
            "                             0.01-0.02, for +6%% / +28%% denoising loss)\n"
            "  --unmix-layers L           cross-attention layers it acts on: all (default), latent resolutions\n"
            "                             (\"16,8\") or module path patterns (\"up_blocks.*\", \"mid_block\")\n"
            "optimisation:\n"
            "  --batch-size N             instance images per step (default 1; as many class images)\n"
            "  --grad-accum N             micro-batches per optimizer step (default 1); under mpirun -np R, per\n"
            "                             rank: the run equals one process with R x N (README, Many machines)\n"
            "  --steps N                  optimizer steps (default 500)\n"
            "  --lr LR                    spectral shifts (default 1e-3)\n"
            "  --lr-1d LR                 norm-gain shifts (default 1e-6)\n"
            "  --lr-schedule S            constant, linear or cosine (default constant); --warmup N steps (0)\n"
            "  --adam-beta1 B, --adam-beta2 B, --adam-epsilon E, --adam-weight-decay D\n"
            "                             AdamW (defaults 0.9, 0.999, 1e-8, 1e-2)\n"
            "  --max-grad-norm N          gradient clipping over all shifts (default 1; 0 = off)\n"
            "  --train-text-encoder       also train the text encoder's linear and embedding shifts\n"
            "  --mode shifts|full|lora    full: train every weight instead (the DreamBooth baseline; default\n"
            "                             --lr 5e-6); OUT_DIR becomes a diffusers model folder (--save-dtype).\n"
            "                             lora: low-rank adapters W + (alpha/r) B A on the layers the shifts\n"
            "                             train (default --lr 1e-4), saved as OUT_DIR/pytorch_lora_weights.safetensors\n"
            "                             (diffusers naming; `svdiff generate --lora OUT_DIR`)\n"
            "  --lora-rank R              lora mode: adapter rank r >= 1 (default 4)\n"
            "  --lora-alpha A             lora mode: alpha, the adapter is scaled by alpha/r (default: alpha = r)\n"
            "  --save-delta               full mode: also OUT_DIR/weight_delta(_te).safetensors = W - W_base\n"
            "  --ema-decay D              full mode: save an EMA of the weights (e.g. 0.999)\n"
            "  --norm-shift MODE          element (a shift per gain entry, default) or scalar (svdiff-pytorch)\n"
            "  --rank R                   train only the shifts of the R largest singular values of every\n"
            "                             matrix (the rest stay 0; norm-gain shifts unaffected)\n"
            "  --shift-layers LIST        train only the shifts whose name contains one of these\n"
            "                             comma-separated substrings (the rest stay 0), e.g. attn2 (the\n"
            "                             cross-attention, as Custom Diffusion), attn2.to_k,attn2.to_v,te/;\n"
            "                             names: unet/<module path>, te/<tensor name> (svdiff shifts info)\n"
            "  --svd-dtype fp32|bf16      precision of U and V; bf16 rounds the fp32 factors to bf16 values\n"
            "                             (memory is not reduced; --compute-dtype bf16 is what runs the\n"
            "                             products on bf16 U and V)\n"
            "  --svd-cache DIR|none       SVD cache folder (default $SVDIFF_CACHE_DIR or ~/.cache/svdiff)\n"
            "  --gradient-checkpointing   recompute the transformer blocks in backward (less memory, ~30%% slower)\n"
            "  --seed S                   seed of every random draw (default 42)\n"
            "  --threads N                CPU threads (default: all cores); results are reproducible per count\n"
            "  --compute-dtype fp32|bf16  precision of the large matrix products: fp32 (default, exact) or bf16\n"
            "                             (bfloat16 inputs incl. U and V, fp32 accumulation and fp32 shifts and\n"
            "                             optimizer, on AMX / avx512_bf16 CPUs; faster, about 1e-2 relative error\n"
            "                             per product; other CPUs stay fp32; default from env SVDIFF_COMPUTE)\n"
            "output:\n"
            "  -o, --output-dir DIR       output folder\n"
            "  --save-dtype fp32|fp16     dtype of the shift files (default fp32)\n"
            "  --checkpoint-every N       write OUT_DIR/checkpoint.safetensors every N steps\n"
            "  --resume                   continue from OUT_DIR/checkpoint.safetensors (bit-identical to an\n"
            "                             uninterrupted run with the same threads)\n"
            "  --sample-every N           every N steps, a grid of --sample-prompt P (repeatable) images\n"
            "  --sample-steps N, --sample-cfg G   their DDIM steps (25) and guidance (7.5)\n"
            "  --force                    overwrite existing shift files; resume with changed settings\n"
            "  --quiet                    no progress bar\n"
            "  -h, --help                 this help\n\n"
            "The loss log has columns step, loss, instance_loss, prior_loss, lr, grad_norm, seconds.\n"
            "Test-only: SVDIFF_TEST_ABORT_AT_STEP=k in the environment ends the process (exit 137, as after\n"
            "kill -9) right after step k; the tests use it to check --resume.\n");
}

enum {
    O_MODEL = 1000, O_TOKENIZER, O_INST_DIR, O_INST_PROMPT, O_CLASS_DIR, O_CLASS_PROMPT, O_NUM_CLASS,
    O_CLASS_STEPS, O_CLASS_CFG, O_PRIOR_W, O_RES, O_CENTER, O_FLIP, O_CAPDROP, O_BATCH, O_ACCUM, O_STEPS, O_LR, O_LR1D,
    O_SCHED, O_WARMUP, O_B1, O_B2, O_EPS, O_WD, O_CLIP, O_TE, O_NORM, O_SVD_DTYPE, O_SVD_CACHE, O_GCKPT, O_SEED,
    O_THREADS, O_SAVE_DTYPE, O_CKPT, O_RESUME, O_SAMPLE_EVERY, O_SAMPLE_PROMPT, O_SAMPLE_STEPS, O_SAMPLE_CFG,
    O_FORCE, O_QUIET, O_MODE, O_SAVE_DELTA, O_EMA, O_DATA, O_IMAGE_ROOT, O_FREEZE_TE, O_RANK, O_SHIFT_LAYERS,
    O_LORA_RANK, O_LORA_ALPHA,
    O_SUBJECT, O_SUBJECT_CLASS, O_TEMPLATE, O_CUTMIX_PROB, O_CUTMIX_VERT, O_CUTMIX_CROP, O_UNMIX_W, O_UNMIX_LAYERS, O_UNMIX_LOSS,
    O_COMPUTE
};

int cmd_train(int argc, char **argv) { return train_cli(argc, argv, 0); }

int train_cli(int argc, char **argv, int pretrain) {
    verb = pretrain ? "pretrain" : "train";
    train_config_t c;
    train_config_default(&c);
    int lr_given = 0, lora_flag = 0;
    if (pretrain) {
        c.mode = TRAIN_MODE_FULL;
        c.train_text_encoder = 1;
        c.resolution = 32;
        c.center_crop = 1;
        c.batch_size = 8;
        c.steps = 1000;
        c.lr = 1e-4f;
        c.lr_schedule = LR_COSINE;
        c.caption_dropout = 0.1f;
    }
    const char *samples[MAX_SAMPLE_PROMPTS];
    int n_samples = 0;
    const char *subjects[CUTMIX_MAX_SUBJECTS], *subject_classes[CUTMIX_MAX_SUBJECTS];   /* --subject (cutmix.h) */
    int n_subjects = 0, n_subject_classes = 0, unmix_loss_given = 0;
    static const struct option opts[] = {
        {"model", required_argument, 0, O_MODEL},
        {"pretrained-model-name-or-path", required_argument, 0, O_MODEL},
        {"tokenizer", required_argument, 0, O_TOKENIZER},
        {"instance-dir", required_argument, 0, O_INST_DIR},
        {"instance-data-dir", required_argument, 0, O_INST_DIR},
        {"instance-prompt", required_argument, 0, O_INST_PROMPT},
        {"class-dir", required_argument, 0, O_CLASS_DIR},
        {"class-data-dir", required_argument, 0, O_CLASS_DIR},
        {"class-prompt", required_argument, 0, O_CLASS_PROMPT},
        {"num-class-images", required_argument, 0, O_NUM_CLASS},
        {"class-steps", required_argument, 0, O_CLASS_STEPS},
        {"class-cfg", required_argument, 0, O_CLASS_CFG},
        {"prior-loss-weight", required_argument, 0, O_PRIOR_W},
        {"resolution", required_argument, 0, O_RES},
        {"center-crop", no_argument, 0, O_CENTER},
        {"flip", no_argument, 0, O_FLIP},
        {"random-flip", no_argument, 0, O_FLIP},
        {"caption-dropout", required_argument, 0, O_CAPDROP},
        {"batch-size", required_argument, 0, O_BATCH},
        {"train-batch-size", required_argument, 0, O_BATCH},
        {"grad-accum", required_argument, 0, O_ACCUM},
        {"gradient-accumulation-steps", required_argument, 0, O_ACCUM},
        {"steps", required_argument, 0, O_STEPS},
        {"max-train-steps", required_argument, 0, O_STEPS},
        {"lr", required_argument, 0, O_LR},
        {"learning-rate", required_argument, 0, O_LR},
        {"lr-1d", required_argument, 0, O_LR1D},
        {"learning-rate-1d", required_argument, 0, O_LR1D},
        {"lr-schedule", required_argument, 0, O_SCHED},
        {"lr-scheduler", required_argument, 0, O_SCHED},
        {"warmup", required_argument, 0, O_WARMUP},
        {"lr-warmup-steps", required_argument, 0, O_WARMUP},
        {"adam-beta1", required_argument, 0, O_B1},
        {"adam-beta2", required_argument, 0, O_B2},
        {"adam-epsilon", required_argument, 0, O_EPS},
        {"adam-weight-decay", required_argument, 0, O_WD},
        {"max-grad-norm", required_argument, 0, O_CLIP},
        {"train-text-encoder", no_argument, 0, O_TE},
        {"norm-shift", required_argument, 0, O_NORM},
        {"rank", required_argument, 0, O_RANK},
        {"shift-layers", required_argument, 0, O_SHIFT_LAYERS},
        {"lora-rank", required_argument, 0, O_LORA_RANK},
        {"lora-alpha", required_argument, 0, O_LORA_ALPHA},
        {"svd-dtype", required_argument, 0, O_SVD_DTYPE},
        {"svd-cache", required_argument, 0, O_SVD_CACHE},
        {"gradient-checkpointing", no_argument, 0, O_GCKPT},
        {"seed", required_argument, 0, O_SEED},
        {"threads", required_argument, 0, O_THREADS},
        {"compute-dtype", required_argument, 0, O_COMPUTE},
        {"output-dir", required_argument, 0, 'o'},
        {"save-dtype", required_argument, 0, O_SAVE_DTYPE},
        {"checkpoint-every", required_argument, 0, O_CKPT},
        {"checkpointing-steps", required_argument, 0, O_CKPT},
        {"resume", no_argument, 0, O_RESUME},
        {"sample-every", required_argument, 0, O_SAMPLE_EVERY},
        {"validation-steps", required_argument, 0, O_SAMPLE_EVERY},
        {"sample-prompt", required_argument, 0, O_SAMPLE_PROMPT},
        {"validation-prompt", required_argument, 0, O_SAMPLE_PROMPT},
        {"sample-steps", required_argument, 0, O_SAMPLE_STEPS},
        {"sample-cfg", required_argument, 0, O_SAMPLE_CFG},
        {"force", no_argument, 0, O_FORCE},
        {"quiet", no_argument, 0, O_QUIET},
        {"mode", required_argument, 0, O_MODE},
        {"save-delta", no_argument, 0, O_SAVE_DELTA},
        {"ema-decay", required_argument, 0, O_EMA},
        {"data", required_argument, 0, O_DATA},
        {"image-root", required_argument, 0, O_IMAGE_ROOT},
        {"freeze-text-encoder", no_argument, 0, O_FREEZE_TE},
        {"subject", required_argument, 0, O_SUBJECT},
        {"subject-class", required_argument, 0, O_SUBJECT_CLASS},
        {"prompt-template", required_argument, 0, O_TEMPLATE},
        {"cutmix-prob", required_argument, 0, O_CUTMIX_PROB},
        {"cutmix-vertical", no_argument, 0, O_CUTMIX_VERT},
        {"cutmix-crop", no_argument, 0, O_CUTMIX_CROP},
        {"unmix-weight", required_argument, 0, O_UNMIX_W},
        {"unmix-layers", required_argument, 0, O_UNMIX_LAYERS},
        {"unmix-loss", required_argument, 0, O_UNMIX_LOSS},
        {"help", no_argument, 0, 'h'},
        CLI_MODEL_OPTIONS,
        {0, 0, 0, 0}};
    optind = 1;
    for (int o; (o = getopt_long(argc, argv, "o:h", opts, NULL)) != -1;) {
        int bad = 0;
        switch (o) {
        case O_MODEL: c.model = optarg; break;
        case O_TOKENIZER: c.tokenizer = optarg; break;
        case O_INST_DIR: c.instance_dir = optarg; break;
        case O_INST_PROMPT: c.instance_prompt = optarg; break;
        case O_CLASS_DIR: c.class_dir = optarg; break;
        case O_CLASS_PROMPT: c.class_prompt = optarg; break;
        case O_NUM_CLASS: bad = cli_parse_int(verb, "--num-class-images", optarg, 0, 1000000, &c.num_class_images); break;
        case O_CLASS_STEPS: bad = cli_parse_int(verb, "--class-steps", optarg, 1, 1000, &c.class_steps); break;
        case O_CLASS_CFG: bad = cli_parse_float(verb, "--class-cfg", optarg, 0, 100, &c.class_cfg); break;
        case O_PRIOR_W: bad = cli_parse_float(verb, "--prior-loss-weight", optarg, 0, 1e6f, &c.prior_loss_weight); break;
        case O_RES: bad = cli_parse_int(verb, "--resolution", optarg, 8, 8192, &c.resolution); break;
        case O_CENTER: c.center_crop = 1; break;
        case O_FLIP: c.flip = 1; break;
        case O_CAPDROP: bad = cli_parse_float(verb, "--caption-dropout", optarg, 0, 1, &c.caption_dropout); break;
        case O_SUBJECT:
        case O_SUBJECT_CLASS: {
            int *n = o == O_SUBJECT ? &n_subjects : &n_subject_classes;
            if (*n == CUTMIX_MAX_SUBJECTS) {
                fprintf(stderr, "svdiff %s: at most %d --subject / --subject-class\n", verb, CUTMIX_MAX_SUBJECTS);
                return 2;
            }
            (o == O_SUBJECT ? subjects : subject_classes)[(*n)++] = optarg;
            break;
        }
        case O_TEMPLATE: c.prompt_template = optarg; break;
        case O_CUTMIX_PROB: bad = cli_parse_float(verb, "--cutmix-prob", optarg, 0, 1, &c.cutmix_prob); break;
        case O_CUTMIX_VERT: c.cutmix_vertical = 1; break;
        case O_CUTMIX_CROP: c.cutmix_fit = 0; break;
        case O_UNMIX_W: bad = cli_parse_float(verb, "--unmix-weight", optarg, 0, 1e6f, &c.unmix_weight); break;
        case O_UNMIX_LAYERS: c.unmix_layers = optarg; break;
        case O_UNMIX_LOSS:
            if (!strcmp(optarg, "mse") || !strcmp(optarg, "share")) {
                c.unmix_share = !strcmp(optarg, "share");
                unmix_loss_given = 1;
            } else {
                fprintf(stderr, "svdiff %s: --unmix-loss must be mse or share, got '%s'\n", verb, optarg);
                bad = 1;
            }
            break;
        case O_BATCH: bad = cli_parse_int(verb, "--batch-size", optarg, 1, 64, &c.batch_size); break;
        case O_ACCUM: bad = cli_parse_int(verb, "--grad-accum", optarg, 1, 100000, &c.grad_accum); break;
        case O_STEPS: bad = cli_parse_int(verb, "--steps", optarg, 1, 100000000, &c.steps); break;
        case O_LR: bad = cli_parse_float(verb, "--lr", optarg, 0, 1e3f, &c.lr), lr_given = 1; break;
        case O_LR1D: bad = cli_parse_float(verb, "--lr-1d", optarg, 0, 1e3f, &c.lr_1d); break;
        case O_SCHED:
            if (!strcmp(optarg, "constant") || !strcmp(optarg, "constant_with_warmup")) c.lr_schedule = LR_CONSTANT;
            else if (!strcmp(optarg, "linear")) c.lr_schedule = LR_LINEAR;
            else if (!strcmp(optarg, "cosine")) c.lr_schedule = LR_COSINE;
            else {
                fprintf(stderr, "svdiff train: --lr-schedule must be constant, linear or cosine, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_WARMUP: bad = cli_parse_int(verb, "--warmup", optarg, 0, 100000000, &c.warmup); break;
        case O_B1: bad = cli_parse_float(verb, "--adam-beta1", optarg, 0, 0.999999f, &c.beta1); break;
        case O_B2: bad = cli_parse_float(verb, "--adam-beta2", optarg, 0, 0.999999f, &c.beta2); break;
        case O_EPS: bad = cli_parse_float(verb, "--adam-epsilon", optarg, 0, 1, &c.adam_eps); break;
        case O_WD: bad = cli_parse_float(verb, "--adam-weight-decay", optarg, 0, 1e3f, &c.weight_decay); break;
        case O_CLIP: bad = cli_parse_float(verb, "--max-grad-norm", optarg, 0, 1e30f, &c.max_grad_norm); break;
        case O_TE: c.train_text_encoder = 1; break;
        case O_RANK: bad = cli_parse_int(verb, "--rank", optarg, 1, 1 << 20, &c.rank); break;
        case O_SHIFT_LAYERS: c.shift_layers = optarg; break;
        case O_NORM:
            if (!strcmp(optarg, "element")) c.norm_shift = NORMSHIFT_ELEMENT;
            else if (!strcmp(optarg, "scalar")) c.norm_shift = NORMSHIFT_SCALAR;
            else {
                fprintf(stderr, "svdiff train: --norm-shift must be element or scalar, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_SVD_DTYPE:
            if (!strcmp(optarg, "fp32") || !strcmp(optarg, "bf16")) c.svd_bf16 = optarg[0] == 'b';
            else {
                fprintf(stderr, "svdiff train: --svd-dtype must be fp32 or bf16, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_SVD_CACHE: c.svd_cache_dir = strcmp(optarg, "none") ? optarg : ""; break;
        case O_GCKPT: c.grad_checkpointing = 1; break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || optarg[0] == '-') {
                fprintf(stderr, "svdiff train: --seed needs a non-negative integer, got '%s'\n", optarg);
                bad = 1;
            }
            c.seed = v;
            break;
        }
        case O_THREADS: bad = cli_parse_int(verb, "--threads", optarg, 1, 1024, &c.threads); break;
        case O_COMPUTE: bad = cli_set_compute_dtype(verb, optarg); break;
        case 'o': c.out_dir = optarg; break;
        case O_SAVE_DTYPE:
            if (!strcmp(optarg, "fp32") || !strcmp(optarg, "fp16")) c.save_fp16 = !strcmp(optarg, "fp16");
            else {
                fprintf(stderr, "svdiff train: --save-dtype must be fp32 or fp16, got '%s'\n", optarg);
                bad = 1;
            }
            break;
        case O_CKPT: bad = cli_parse_int(verb, "--checkpoint-every", optarg, 0, 100000000, &c.checkpoint_every); break;
        case O_RESUME: c.resume = 1; break;
        case O_SAMPLE_EVERY: bad = cli_parse_int(verb, "--sample-every", optarg, 0, 100000000, &c.sample_every); break;
        case O_SAMPLE_PROMPT:
            if (n_samples == MAX_SAMPLE_PROMPTS) {
                fprintf(stderr, "svdiff train: at most %d --sample-prompt\n", MAX_SAMPLE_PROMPTS);
                bad = 1;
            } else {
                samples[n_samples++] = optarg;
            }
            break;
        case O_SAMPLE_STEPS: bad = cli_parse_int(verb, "--sample-steps", optarg, 1, 1000, &c.sample_steps); break;
        case O_SAMPLE_CFG: bad = cli_parse_float(verb, "--sample-cfg", optarg, 0, 100, &c.sample_cfg); break;
        case O_FORCE: c.force = 1; break;
        case O_QUIET: c.quiet = 1; break;
        case O_MODE:
            if (!pretrain && (!strcmp(optarg, "shifts") || !strcmp(optarg, "full") || !strcmp(optarg, "lora")))
                c.mode = !strcmp(optarg, "full") ? TRAIN_MODE_FULL : !strcmp(optarg, "lora") ? TRAIN_MODE_LORA : TRAIN_MODE_SHIFTS;
            else {
                fprintf(stderr, "svdiff %s: --mode must be shifts, full or lora, got '%s'\n", verb, optarg);
                bad = 1;
            }
            break;
        case O_SAVE_DELTA: c.save_delta = 1; break;
        case O_LORA_RANK: bad = cli_parse_int(verb, "--lora-rank", optarg, 1, 1 << 16, &c.lora_rank), lora_flag = 1; break;
        case O_LORA_ALPHA: bad = cli_parse_float(verb, "--lora-alpha", optarg, 1e-30f, 1e30f, &c.lora_alpha), lora_flag = 1; break;
        case O_EMA: bad = cli_parse_float(verb, "--ema-decay", optarg, 0, 0.99999994f, &c.ema_decay); break;
        case O_DATA: c.data_tsv = optarg; break;
        case O_IMAGE_ROOT: c.image_root = optarg; break;
        case O_FREEZE_TE: c.train_text_encoder = 0; break;
        case 'h': pretrain ? usage_pretrain(stdout) : usage(stdout); return 0;
        case CLI_O_PREDICTION_TYPE:
        case CLI_O_SCHEDULER_CONFIG: {
            model_open_options_t mo = {0};
            if (cli_model_option(verb, o, optarg, &mo) < 0) return 2;
            if (mo.prediction_type) c.prediction_type = mo.prediction_type;
            if (mo.scheduler_config) c.scheduler_config = mo.scheduler_config;
            break;
        }
        default: pretrain ? usage_pretrain(stderr) : usage(stderr); return 2;
        }
        if (bad) return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "svdiff %s: unexpected argument '%s'\n", verb, argv[optind]);
        return 2;
    }
    if (pretrain && (!c.model || !c.data_tsv || !c.out_dir)) {
        fprintf(stderr, "svdiff pretrain: --model, --data and -o are required (see --help)\n");
        return 2;
    }
    if (pretrain && (c.instance_dir || c.class_dir || c.flip)) {
        fprintf(stderr, "svdiff pretrain: --instance-dir, --class-dir and --flip belong to `svdiff train`\n");
        return 2;
    }
    if (!pretrain && (c.data_tsv || c.image_root)) {
        fprintf(stderr, "svdiff train: --data and --image-root belong to `svdiff pretrain`\n");
        return 2;
    }
    if (!pretrain && (!c.model || (!c.instance_dir && !n_subjects) || !c.out_dir)) {
        fprintf(stderr, "svdiff train: --model, --instance-dir (or --subject) and -o are required (see --help)\n");
        return 2;
    }
    if (n_subject_classes && n_subject_classes != n_subjects) {
        fprintf(stderr, "svdiff %s: %d --subject-class for %d --subject: give one per subject, in the same order, or none\n",
                verb, n_subject_classes, n_subjects);
        return 2;
    }
    if (pretrain && n_subjects) {
        fprintf(stderr, "svdiff pretrain: --subject belongs to `svdiff train`\n");
        return 2;
    }
    if (!n_subjects && (c.cutmix_prob >= 0 || c.cutmix_vertical || !c.cutmix_fit || c.prompt_template || c.unmix_layers ||
                        unmix_loss_given)) {
        fprintf(stderr, "svdiff %s: --prompt-template, --cutmix-* and --unmix-layers and --unmix-loss need --subject\n", verb);
        return 2;
    }
    c.n_subjects = n_subjects, c.subjects = subjects;
    c.subject_classes = n_subject_classes ? subject_classes : NULL;
    if (c.mode != TRAIN_MODE_FULL && (c.save_delta || c.ema_decay > 0)) {
        fprintf(stderr, "svdiff train: --save-delta and --ema-decay need --mode full\n");
        return 2;
    }
    if (c.shift_layers && c.mode != TRAIN_MODE_SHIFTS) {
        fprintf(stderr, "svdiff %s: --shift-layers selects spectral shifts; it needs --mode shifts\n", verb);
        return 2;
    }
    if (c.rank > 0 && c.mode == TRAIN_MODE_FULL) {
        fprintf(stderr, "svdiff %s: --rank limits spectral shifts; it does not apply to full-weight training\n", verb);
        return 2;
    }
    if (!pretrain && c.mode == TRAIN_MODE_FULL && !lr_given) c.lr = 5e-6f;   /* diffusers' DreamBooth default */
    if (lora_flag && c.mode != TRAIN_MODE_LORA) {
        fprintf(stderr, "svdiff %s: --lora-rank and --lora-alpha need --mode lora\n", verb);
        return 2;
    }
    if (c.mode == TRAIN_MODE_LORA && c.rank > 0) {
        fprintf(stderr, "svdiff %s: --rank limits spectral shifts; with --mode lora use --lora-rank\n", verb);
        return 2;
    }
    if (c.mode == TRAIN_MODE_LORA && !lr_given) c.lr = 1e-4f;   /* peft / diffusers LoRA DreamBooth */
    if (c.sample_every > 0 && !n_samples) {
        fprintf(stderr, "svdiff %s: --sample-every needs at least one --sample-prompt\n", verb);
        return 2;
    }
    if (c.warmup > c.steps) {
        fprintf(stderr, "svdiff %s: --warmup %d is longer than --steps %d\n", verb, c.warmup, c.steps);
        return 2;
    }
    c.sample_prompts = samples;
    c.n_sample_prompts = n_samples;
    sd_set_threads(c.threads);

    trainer_t t;
    int rc = trainer_open(&t, &c);
    if (!rc) rc = trainer_run(&t);
    if (rc) fprintf(stderr, "svdiff %s: %s\n", verb, sd_last_error());
    trainer_close(&t);
    return rc ? 1 : 0;
}
