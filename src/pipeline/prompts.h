/* The image plan of a generate run: which images to make, each with its own settings and seed,
 * built and validated up front, before the model loads.
 *
 * A run is a list of jobs (one per prompt: the --prompt flag, or one line of a prompts file) and
 * a flat list of images (job, k, seed). Everything a worker needs to make image i is in
 * images[i] and jobs[images[i].job], so the list can be split (several processes each making a
 * part) without changing any image.
 *
 * Prompts file (`svdiff generate --prompts FILE`), UTF-8 text, one entry a line:
 *  - blank lines and lines whose first non-blank character is '#' are skipped;
 *  - a line whose first non-blank character is '{' is one JSON object (on that line) with the
 *    keys "prompt" (required, a non-blank string), "negative_prompt" (string), "seed" (integer in
 *    [0, 2^53], or a string of decimal digits for any 64-bit seed), "steps" [1, 1000], "width"
 *    and "height" [8, 8192], "num_images" [1, 10000] (integers), "cfg" (finite number), "eta"
 *    [0, 1], "sampler" (ddim, euler, euler_a, dpmpp_2m). A key it leaves out takes the run's
 *    default (the command-line flag). Unknown or repeated keys, wrong types, non-integers where
 *    an integer is needed and numbers out of range are errors;
 *  - any other line is a plain prompt (leading and trailing blanks removed) with the defaults.
 *    A prompt that starts with '{' or '#' is written as JSON.
 * Seeds: a job with a "seed" makes its images with seed, seed + 1, ...; a job without one takes
 * base_seed + the index (from 0) of its first image in the whole run, so image i of a run whose
 * jobs carry no seed has seed base_seed + i, whatever the lines hold. Either way, image k of a
 * job is the image a single `svdiff generate` with that job's settings, --seed (its job seed)
 * and --num-images gives as its image k. */
#ifndef SVDIFF_PIPELINE_PROMPTS_H
#define SVDIFF_PIPELINE_PROMPTS_H

#include <stdint.h>
#include <stdio.h>

#include "diffusion/diffusion.h"

typedef struct {
    int line;                       /* line of the prompts file (from 1); 0: the --prompt flag */
    char *prompt, *negative_prompt; /* owned; negative NULL: the empty prompt */
    int width, height;              /* pixels; 0: the model's default size */
    int steps, num_images;
    float cfg, eta;
    sampler_kind_t sampler;
    uint64_t seed;                  /* image k of the job has seed + k */
} prompt_job_t;

typedef struct {
    int job;        /* index in plan.jobs */
    int k;          /* image k of its job, from 0 */
    uint64_t seed;  /* jobs[job].seed + k */
} prompt_image_t;

typedef struct {
    prompt_job_t *jobs;
    int n_jobs;
    prompt_image_t *images;   /* job by job, k ascending */
    int n_images;
} prompt_plan_t;

/* At most this many images in one run (a typo such as "num_images": 10000 on every line of a
 * long file is refused before the model loads). */
#define PROMPT_PLAN_MAX_IMAGES 1000000

/* One job with settings `job` (prompt, negative prompt copied; line and seed as given). */
int prompt_plan_single(prompt_plan_t *plan, const prompt_job_t *job);

/* Reads a prompts file: every line is checked before anything is returned. `defaults` holds the
 * run's settings (its prompt and seed are not used); base_seed seeds the jobs without a seed.
 * Errors (SD_ERR_IO: the file cannot be read; SD_ERR_ARG: "PATH:LINE: what is wrong", or a file
 * without any prompt) leave *plan empty. The file is noted as an input of the run (outputs.h). */
int prompt_plan_read(prompt_plan_t *plan, const char *path, const prompt_job_t *defaults, uint64_t base_seed);
/* The same from an open stream; `name` is used in messages. */
int prompt_plan_parse(prompt_plan_t *plan, FILE *f, const char *name, const prompt_job_t *defaults,
                      uint64_t base_seed);

void prompt_plan_free(prompt_plan_t *plan);

#endif
