/* Prompts files (pipeline/prompts.h): plain, JSON and comment lines, defaults and overrides, the
 * seed of every image, and each kind of bad line refused with "NAME:LINE: ..." and an empty plan. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "pipeline/prompts.h"

static const prompt_job_t DEFAULTS = {.negative_prompt = "lowres", .width = 0, .height = 0, .steps = 20,
                                      .num_images = 1, .cfg = 7.5f, .eta = 0.0f, .sampler = SAMPLER_DDIM};

/* Parses `text` as the prompts file "p.txt" (base seed 100). */
static int parse(prompt_plan_t *plan, const char *text) {
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    assert_non_null(f);
    int rc = prompt_plan_parse(plan, f, "p.txt", &DEFAULTS, 100);
    fclose(f);
    return rc;
}

/* The line must be refused with a message containing `want`, and leave the plan empty. */
static void refused(const char *text, const char *want) {
    prompt_plan_t plan;
    int rc = parse(&plan, text);
    if (rc != SD_ERR_ARG || !strstr(sd_last_error(), want))
        fail_msg("%s\n-> rc %d, '%s'; expected SD_ERR_ARG and '%s'", text, rc, sd_last_error(), want);
    assert_int_equal(plan.n_jobs, 0);
    assert_int_equal(plan.n_images, 0);
    assert_null(plan.jobs);
}

static void test_lines(void **state) {
    (void)state;
    prompt_plan_t plan;
    const char *text = "\xEF\xBB\xBF# a comment\n"
                       "  a photo of a cat  \r\n"
                       "\n"
                       "   # indented comment\n"
                       "\t\n"
                       "{\"prompt\": \"a dog\", \"negative_prompt\": \"\", \"seed\": 5, \"steps\": 3, \"cfg\": 1.5,"
                       " \"eta\": 0.5, \"width\": 32, \"height\": 48, \"sampler\": \"euler_a\", \"num_images\": 3}\n"
                       "{\"prompt\": \"#not a comment\", \"seed\": \"18446744073709551615\"}  \n"
                       "last line without newline";
    assert_int_equal(parse(&plan, text), 0);
    assert_int_equal(plan.n_jobs, 4);
    assert_int_equal(plan.n_images, 6);
    const prompt_job_t *a = &plan.jobs[0], *b = &plan.jobs[1], *c = &plan.jobs[2], *d = &plan.jobs[3];
    /* a plain line: trimmed, with every default */
    assert_int_equal(a->line, 2);
    assert_string_equal(a->prompt, "a photo of a cat");
    assert_string_equal(a->negative_prompt, "lowres");
    assert_int_equal(a->steps, 20);
    assert_int_equal(a->num_images, 1);
    assert_int_equal(a->width, 0);
    assert_true(a->cfg == 7.5f);
    assert_int_equal(a->sampler, SAMPLER_DDIM);
    /* a JSON line: every key overrides its default */
    assert_int_equal(b->line, 6);
    assert_string_equal(b->prompt, "a dog");
    assert_string_equal(b->negative_prompt, "");
    assert_int_equal(b->steps, 3);
    assert_true(b->cfg == 1.5f);
    assert_true(b->eta == 0.5f);
    assert_int_equal(b->width, 32);
    assert_int_equal(b->height, 48);
    assert_int_equal(b->sampler, SAMPLER_EULER_ANCESTRAL);
    assert_int_equal(b->num_images, 3);
    assert_int_equal(c->line, 7);
    assert_string_equal(c->prompt, "#not a comment");
    assert_string_equal(c->negative_prompt, "lowres");
    assert_int_equal(d->line, 8);
    assert_string_equal(d->prompt, "last line without newline");
    /* seeds: line 2 takes base + 0; line 6 its own 5, 6, 7; line 7 its own (the largest, then
     * wrapping as --seed + k does); line 8 base + its image index 5 */
    const struct { int job, k; uint64_t seed; } want[6] = {
        {0, 0, 100}, {1, 0, 5}, {1, 1, 6}, {1, 2, 7}, {2, 0, 18446744073709551615ull}, {3, 0, 105}};
    for (int i = 0; i < 6; i++) {
        assert_int_equal(plan.images[i].job, want[i].job);
        assert_int_equal(plan.images[i].k, want[i].k);
        assert_true(plan.images[i].seed == want[i].seed);
    }
    assert_true(d->seed == 105);
    prompt_plan_free(&plan);
    assert_int_equal(plan.n_jobs, 0);
}

static void test_single(void **state) {
    (void)state;
    prompt_plan_t plan;
    prompt_job_t job = DEFAULTS;
    job.prompt = "cat";
    job.num_images = 3;
    job.seed = 41;
    assert_int_equal(prompt_plan_single(&plan, &job), 0);
    assert_int_equal(plan.n_jobs, 1);
    assert_int_equal(plan.n_images, 3);
    assert_int_equal(plan.jobs[0].line, 0);
    assert_string_equal(plan.jobs[0].prompt, "cat");
    assert_ptr_not_equal(plan.jobs[0].prompt, job.prompt);   /* a copy */
    for (int k = 0; k < 3; k++) {
        assert_int_equal(plan.images[k].k, k);
        assert_true(plan.images[k].seed == 41u + (unsigned)k);
    }
    prompt_plan_free(&plan);
}

static void test_bad_json(void **state) {
    (void)state;
    refused("a\n{\"prompt\": \"x\",}\n", "p.txt:2: not a valid JSON object (error at column");
    refused("{\"prompt\": \"x\"\n", "p.txt:1: not a valid JSON object");
    refused("{\"prompt\": \"x\", \"cfg\": NaN}\n", "p.txt:1: not a valid JSON object");
    refused("{\"prompt\": \"x\"} {\"prompt\": \"y\"}\n", "p.txt:1: text after the JSON object at column 17");
    refused("# c\n\n{\"prompt\": \"x\", \"Seed\": 3}\n", "p.txt:3: unknown key \"Seed\" (known: prompt,");
    refused("{\"prompt\": \"x\", \"steps\": 2, \"steps\": 3}\n", "p.txt:1: key \"steps\" given twice");
    refused("{\"negative_prompt\": \"x\"}\n", "p.txt:1: no \"prompt\" key");
    refused("{\"prompt\": [\"x\"]}\n", "p.txt:1: \"prompt\" must be a string, got [\"x\"]");
    refused("{\"prompt\": \"x\", \"negative_prompt\": null}\n", "\"negative_prompt\" must be a string, got null");
    refused("{\"prompt\": \"x\", \"sampler\": \"plms\"}\n", "p.txt:1: unknown \"sampler\" \"plms\"");
    refused("{\"prompt\": \"x\", \"sampler\": \"ddim_inverse\"}\n", "unknown \"sampler\" \"ddim_inverse\"");
}

static void test_bad_numbers(void **state) {
    (void)state;
    refused("{\"prompt\": \"x\", \"steps\": 2.5}\n", "p.txt:1: \"steps\" must be an integer in [1, 1000], got 2.5");
    refused("{\"prompt\": \"x\", \"steps\": 0}\n", "\"steps\" must be an integer in [1, 1000], got 0");
    refused("{\"prompt\": \"x\", \"steps\": \"3\"}\n", "\"steps\" must be an integer in [1, 1000], got \"3\"");
    refused("{\"prompt\": \"x\", \"steps\": true}\n", "\"steps\" must be an integer in [1, 1000], got true");
    refused("{\"prompt\": \"x\", \"width\": 1e999}\n", "\"width\" must be an integer in [8, 8192], got a number too large");
    refused("{\"prompt\": \"x\", \"height\": 4}\n", "\"height\" must be an integer in [8, 8192], got 4");
    refused("{\"prompt\": \"x\", \"num_images\": 10001}\n", "\"num_images\" must be an integer in [1, 10000]");
    refused("{\"prompt\": \"x\", \"cfg\": 1e300}\n", "\"cfg\" must be a finite number, got 1e+300");
    refused("{\"prompt\": \"x\", \"cfg\": -1e999}\n", "\"cfg\" must be a finite number, got a number too large");
    refused("{\"prompt\": \"x\", \"eta\": 1.5}\n", "\"eta\" must be a number in [0, 1], got 1.5");
    refused("{\"prompt\": \"x\", \"seed\": -1}\n", "\"seed\" must be an integer in [0, 9007199254740992], got -1");
    refused("{\"prompt\": \"x\", \"seed\": 1.5}\n", "\"seed\" must be an integer");
    refused("{\"prompt\": \"x\", \"seed\": 1e17}\n", "\"seed\" must be an integer in [0, 9007199254740992]");
    refused("{\"prompt\": \"x\", \"seed\": \"18446744073709551616\"}\n",
            "\"seed\" as a string must be decimal digits of a 64-bit integer");
    refused("{\"prompt\": \"x\", \"seed\": \" 3\"}\n", "\"seed\" as a string must be decimal digits");
    refused("{\"prompt\": \"x\", \"seed\": \"-3\"}\n", "\"seed\" as a string must be decimal digits");
    /* 101 lines of 10000 images each: more than the run's limit */
    char *many = malloc(101 * 48 + 1);   /* 101 lines of 37 characters */
    many[0] = '\0';
    for (int i = 0; i < 101; i++) strcat(many, "{\"prompt\": \"x\", \"num_images\": 10000}\n");
    refused(many, "p.txt:101: more than 1000000 images in the file");
    free(many);
}

static void test_bad_files(void **state) {
    (void)state;
    refused("", "p.txt: no prompt in the file (only blank or '#' comment lines)");
    refused("# nothing\n\n   \n\t# more\n", "p.txt: no prompt in the file");
    refused("{\"prompt\": \"\"}\n", "p.txt:1: \"prompt\" is empty");
    refused("ok\n{\"prompt\": \" \\t \"}\n", "p.txt:2: \"prompt\" is empty");
    prompt_plan_t plan;
    FILE *f = fmemopen((void *)"a\nb\0c\n", 6, "r");
    assert_int_equal(prompt_plan_parse(&plan, f, "p.txt", &DEFAULTS, 0), SD_ERR_ARG);
    fclose(f);
    assert_non_null(strstr(sd_last_error(), "p.txt:2: holds a NUL byte"));
    assert_int_equal(prompt_plan_read(&plan, "/nonexistent/prompts.txt", &DEFAULTS, 0), SD_ERR_IO);
    assert_non_null(strstr(sd_last_error(), "/nonexistent/prompts.txt: cannot open: No such file"));
    assert_int_equal(prompt_plan_read(&plan, "/", &DEFAULTS, 0), SD_ERR_IO);
    assert_non_null(strstr(sd_last_error(), "/: cannot read:"));
    assert_int_equal(plan.n_jobs, 0);
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lines),
        cmocka_unit_test(test_single),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_numbers),
        cmocka_unit_test(test_bad_files),
    };
    return RUN_TESTS(argc, argv, "prompts", tests, NULL, NULL);
}
