/* The training settings table (train/settings.h, base/setting.h): each entry's default, flag parsing,
 * --help line and checkpoint key come from that entry; the checkpoint config JSON is byte for byte
 * what the code before the table wrote (the strings below are the "config" metadata of checkpoints
 * written by that binary with the same settings). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "testutil.h"
#include "train/settings.h"

static size_t field_size(setting_type_t t) {
    switch (t) {
    case SETTING_STR: return sizeof(const char *);
    case SETTING_U64: return sizeof(uint64_t);
    case SETTING_FLOAT: return sizeof(float);
    default: return sizeof(int);
    }
}

static void check_defaults(const train_config_t *c, int pretrain) {
    for (int i = 0; i < n_train_settings; i++) {
        const train_setting_t *e = &train_settings[i];
        if (e->fact) continue;
        train_config_t want;
        memset(&want, 0, sizeof want);
        const char *def = pretrain && e->def_pretrain ? e->def_pretrain : e->s.def;
        if (def) assert_int_equal(setting_set(&e->s, &want, def), 0);
        if (memcmp((const char *)c + e->s.offset, (const char *)&want + e->s.offset, field_size(e->s.type))) {
            fprintf(stderr, "setting %s: default is not the table's '%s'\n", e->s.name, def ? def : "(none)");
            fail();
        }
    }
}

/* The defaults are the table's, and the values `svdiff train` / `pretrain` always had (but the
 * resolution: 0 now, the model's native size). */
static void test_settings_defaults(void **state) {
    (void)state;
    train_config_t c;
    train_config_default(&c);
    check_defaults(&c, 0);
    assert_int_equal(c.steps, 500);
    assert_int_equal(c.batch_size, 1);
    assert_true(c.lr == 1e-3f && c.lr_1d == 1e-6f);
    assert_true(c.beta1 == 0.9f && c.beta2 == 0.999f && c.adam_eps == 1e-8f && c.weight_decay == 1e-2f);
    assert_int_equal(c.lr_schedule, LR_CONSTANT);
    assert_int_equal(c.seed, 42);
    assert_int_equal(c.resolution, 0);
    assert_int_equal(c.num_class_images, 100);
    assert_true(c.cutmix_prob == -1.0f && c.cutmix_fit == 1 && c.unmix_weight == 1.0f);
    assert_int_equal(c.lora_rank, 4);
    assert_int_equal(c.mode, TRAIN_MODE_SHIFTS);
    assert_null(c.svd_cache_dir);
    pretrain_config_default(&c);
    check_defaults(&c, 1);
    assert_int_equal(c.mode, TRAIN_MODE_FULL);
    assert_true(c.train_text_encoder && c.center_crop);
    assert_int_equal(c.batch_size, 8);
    assert_int_equal(c.steps, 1000);
    assert_true(c.lr == 1e-4f && c.caption_dropout == 0.1f);
    assert_int_equal(c.lr_schedule, LR_COSINE);
}

static void expect_refused(const setting_t *s, const char *arg) {
    train_config_t c;
    memset(&c, 0, sizeof c);
    assert_int_equal(setting_parse(s, &c, arg, 0), SD_ERR_ARG);
    char flag[96];
    snprintf(flag, sizeof flag, "--%s ", s->flag);
    if (!strstr(sd_last_error(), flag) || !strstr(sd_last_error(), arg)) {
        fprintf(stderr, "%s %s: message '%s'\n", s->flag, arg, sd_last_error());
        fail();
    }
}

/* Every flag stores into its entry's field, within its range, and names itself when refused. */
static void test_settings_flags_parse(void **state) {
    (void)state;
    char buf[64];
    for (int i = 0; i < n_train_settings; i++) {
        const setting_t *s = &train_settings[i].s;
        if (!s->flag && !s->neg) continue;
        train_config_t c;
        memset(&c, 0, sizeof c);
        char *field = (char *)&c + s->offset;
        switch (s->type) {
        case SETTING_INT:
            snprintf(buf, sizeof buf, "%d", (int)s->hi);
            assert_int_equal(setting_parse(s, &c, buf, 0), 0);
            assert_int_equal(*(int *)field, (int)s->hi);
            snprintf(buf, sizeof buf, "%d", (int)s->lo - 1);
            expect_refused(s, buf);
            expect_refused(s, "12x");
            break;
        case SETTING_FLOAT:
            snprintf(buf, sizeof buf, "%.9g", s->hi);
            assert_int_equal(setting_parse(s, &c, buf, 0), 0);
            assert_true(*(float *)field == (float)s->hi);
            expect_refused(s, "-1");
            expect_refused(s, "nan");
            break;
        case SETTING_BOOL:
            if (s->flag) {
                assert_int_equal(setting_parse(s, &c, "", 0), 0);
                assert_int_equal(*(int *)field, 1);
            }
            if (s->neg) {
                *(int *)field = 1;
                assert_int_equal(setting_parse(s, &c, "", 1), 0);
                assert_int_equal(*(int *)field, 0);
            }
            break;
        case SETTING_STR:
            assert_int_equal(setting_parse(s, &c, "abc", 0), 0);
            assert_string_equal(*(const char **)field, "abc");
            assert_int_equal(setting_parse(s, &c, "none", 0), 0);
            assert_string_equal(*(const char **)field, s->flags & SETTING_NONE_EMPTY ? "" : "none");
            break;
        case SETTING_ENUM:
            for (int k = 0; s->choices[k]; k++) {
                /* every spelling of choice k ("constant|constant_with_warmup") */
                char spellings[128];
                snprintf(spellings, sizeof spellings, "%s", s->choices[k]);
                for (char *save = NULL, *w = strtok_r(spellings, "|", &save); w; w = strtok_r(NULL, "|", &save)) {
                    *(int *)field = -1;
                    assert_int_equal(setting_parse(s, &c, w, 0), 0);
                    assert_int_equal(*(int *)field, k);
                }
            }
            expect_refused(s, "bogus");
            assert_non_null(strstr(sd_last_error(), " or "));
            break;
        case SETTING_U64:
            assert_int_equal(setting_parse(s, &c, "18446744073709551615", 0), 0);
            assert_true(*(uint64_t *)field == UINT64_MAX);
            expect_refused(s, "-1");
            break;
        }
    }
}

/* "--name" stands in text as a whole flag (not the start of a longer one). */
static int has_flag(const char *text, const char *name) {
    char want[96];
    snprintf(want, sizeof want, "--%s", name);
    for (const char *p = text; (p = strstr(p, want)); p++) {
        const char next = p[strlen(want)];
        if (!(next == '-' || (next >= 'a' && next <= 'z') || (next >= '0' && next <= '9'))) return 1;
    }
    return 0;
}

static char *help_text(int verb) {
    char *text = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&text, &n);
    for (int sec = 0; sec < TS_N_SECTIONS; sec++) train_settings_help(f, sec, verb);
    fclose(f);
    return text;
}

/* Each entry's flag, aliases, negating flag and default appear in the --help of the verbs it names. */
static void test_settings_help_lines(void **state) {
    (void)state;
    for (int verb = TS_TRAIN; verb <= TS_EDIT; verb <<= 1) {
        char *text = help_text(verb);
        int lines = 0;
        for (int i = 0; i < n_train_settings; i++) {
            const train_setting_t *e = &train_settings[i];
            if (!(e->verbs & verb)) {
                if (e->s.flag && !e->verbs) fail_msg("--%s: no verb takes it", e->s.flag);
                continue;
            }
            lines++;
            if (e->s.flag && !has_flag(text, e->s.flag)) fail_msg("--%s missing from the help", e->s.flag);
            if (e->s.neg && !has_flag(text, e->s.neg)) fail_msg("--%s missing from the help", e->s.neg);
            char aliases[256];
            snprintf(aliases, sizeof aliases, "%s", e->s.aliases ? e->s.aliases : "");
            for (char *save = NULL, *w = strtok_r(aliases, " ", &save); w; w = strtok_r(NULL, " ", &save))
                if (!has_flag(text, w)) fail_msg("alias --%s missing from the help", w);
            const char *def = verb == TS_PRETRAIN && e->def_pretrain ? e->def_pretrain : e->s.def;
            if (e->s.type != SETTING_BOOL && def && !strstr(e->s.help, "default")) {
                char want[96];
                snprintf(want, sizeof want, "(default %s)", def);
                if (!strstr(text, want)) fail_msg("--%s: '%s' missing from the help", e->s.flag, want);
            }
        }
        assert_true(lines > (verb == TS_EDIT ? 5 : 20));
        free(text);
    }
    /* pretrain shows its own defaults */
    char *text = help_text(TS_PRETRAIN);
    assert_non_null(strstr(text, "(default 1000)"));
    assert_non_null(strstr(text, "(default cosine)"));
    assert_null(strstr(text, "--instance-dir"));
    free(text);
    /* edit: the fine-tuning settings it shares with train, with train's defaults */
    text = help_text(TS_EDIT);
    assert_non_null(strstr(text, "--steps N"));
    assert_non_null(strstr(text, "(default 500)"));
    assert_non_null(strstr(text, "--freeze-text-encoder"));
    assert_null(strstr(text, "--instance-dir"));
    assert_null(strstr(text, "--seed"));   /* edit's --seed is the shared option (cli/args.c) */
    free(text);
}

static char *json_of(const train_config_t *c) {
    const train_facts_t facts = {"c78255c04bee174f", 2, 2, 3};
    return train_settings_json(c, &facts);
}

/* Every recorded entry is a key of the checkpoint config, under its name, in table order; the
 * others are not. */
static void test_settings_checkpoint_keys(void **state) {
    (void)state;
    for (int mode = TRAIN_MODE_SHIFTS; mode <= TRAIN_MODE_LORA; mode++) {
        train_config_t c;
        train_config_default(&c);
        c.mode = (train_mode_t)mode;
        c.rank = 3;
        char *json = json_of(&c);
        const char *last = json;
        for (int i = 0; i < n_train_settings; i++) {
            const train_setting_t *e = &train_settings[i];
            char key[96];
            snprintf(key, sizeof key, "\"%s\":", e->s.name);
            const char *at = strstr(json, key);
            const int want = e->ck == CK_ALWAYS || e->ck == CK_NONZERO || (e->ck == CK_FULL && mode == TRAIN_MODE_FULL) ||
                             (e->ck == CK_LORA && mode == TRAIN_MODE_LORA);
            if (want && (e->ck != CK_NONZERO || strcmp(e->s.name, "mode") || mode != TRAIN_MODE_SHIFTS)) {
                if (!at || at < last) fail_msg("mode %d: key %s missing or out of order in %s", mode, key, json);
                last = at;
            } else if (at) {
                fail_msg("mode %d: key %s must not be recorded: %s", mode, key, json);
            }
        }
        free(json);
    }
    /* rank 0 and shift mode leave their keys out (older checkpoints stay valid) */
    train_config_t c;
    train_config_default(&c);
    char *json = json_of(&c);
    assert_null(strstr(json, "\"rank\""));
    assert_null(strstr(json, "\"mode\""));
    free(json);
}

static void expect_json(const train_config_t *c, const char *want) {
    char *got = json_of(c);
    if (strcmp(got, want)) fail_msg("config JSON\n got %s\nwant %s", got, want);
    free(got);
}

/* The bytes the code before the table wrote, in the three modes. */
static void test_settings_checkpoint_json_unchanged(void **state) {
    (void)state;
    train_config_t c;
    train_config_default(&c);
    c.instance_prompt = "a dog", c.class_prompt = "a d", c.resolution = 16, c.steps = 2;
    c.mode = TRAIN_MODE_FULL, c.lr = 5e-6f, c.ema_decay = 0.9f;
    expect_json(&c, "{\"base_model_hash\":\"c78255c04bee174f\",\"instance_prompt\":\"a dog\",\"instance_images\":2,"
                    "\"class_prompt\":\"a d\",\"class_images\":2,\"prior_loss_weight\":1,\"resolution\":16,"
                    "\"center_crop\":false,\"flip\":false,\"batch_size\":1,\"grad_accum\":1,\"steps\":2,"
                    "\"lr\":4.9999998736893758e-06,\"lr_1d\":9.99999997475243e-07,\"lr_schedule\":\"constant\","
                    "\"warmup\":0,\"adam_beta1\":0.899999976158142,\"adam_beta2\":0.99900001287460327,"
                    "\"adam_eps\":9.99999993922529e-09,\"weight_decay\":0.00999999977648258,\"max_grad_norm\":1,"
                    "\"train_text_encoder\":false,\"norm_shift\":\"element\",\"svd_dtype\":\"fp32\",\"seed\":\"42\","
                    "\"mode\":\"full\",\"ema_decay\":0.899999976158142,\"prompts\":3}");
    c.mode = TRAIN_MODE_LORA, c.lr = 1e-4f, c.ema_decay = 0, c.lora_rank = 2;
    expect_json(&c, "{\"base_model_hash\":\"c78255c04bee174f\",\"instance_prompt\":\"a dog\",\"instance_images\":2,"
                    "\"class_prompt\":\"a d\",\"class_images\":2,\"prior_loss_weight\":1,\"resolution\":16,"
                    "\"center_crop\":false,\"flip\":false,\"batch_size\":1,\"grad_accum\":1,\"steps\":2,"
                    "\"lr\":9.99999974737875e-05,\"lr_1d\":9.99999997475243e-07,\"lr_schedule\":\"constant\","
                    "\"warmup\":0,\"adam_beta1\":0.899999976158142,\"adam_beta2\":0.99900001287460327,"
                    "\"adam_eps\":9.99999993922529e-09,\"weight_decay\":0.00999999977648258,\"max_grad_norm\":1,"
                    "\"train_text_encoder\":false,\"norm_shift\":\"element\",\"svd_dtype\":\"fp32\",\"seed\":\"42\","
                    "\"mode\":\"lora\",\"lora_rank\":2,\"lora_alpha\":2}");
    c.lora_rank = 4, c.lora_alpha = 3;
    char *got = json_of(&c);
    assert_non_null(strstr(got, "\"lora_rank\":4,\"lora_alpha\":3}"));
    free(got);
    c.mode = TRAIN_MODE_SHIFTS, c.lr = 1e-3f, c.lora_rank = 4, c.lora_alpha = 0, c.rank = 2;
    c.train_text_encoder = 1, c.lr_schedule = LR_COSINE, c.norm_shift = NORMSHIFT_SCALAR, c.svd_bf16 = 1;
    c.seed = UINT64_MAX;
    expect_json(&c, "{\"base_model_hash\":\"c78255c04bee174f\",\"instance_prompt\":\"a dog\",\"instance_images\":2,"
                    "\"class_prompt\":\"a d\",\"class_images\":2,\"prior_loss_weight\":1,\"resolution\":16,"
                    "\"center_crop\":false,\"flip\":false,\"batch_size\":1,\"grad_accum\":1,\"steps\":2,"
                    "\"lr\":0.0010000000474974513,\"lr_1d\":9.99999997475243e-07,\"lr_schedule\":\"cosine\","
                    "\"warmup\":0,\"adam_beta1\":0.899999976158142,\"adam_beta2\":0.99900001287460327,"
                    "\"adam_eps\":9.99999993922529e-09,\"weight_decay\":0.00999999977648258,\"max_grad_norm\":1,"
                    "\"train_text_encoder\":true,\"norm_shift\":\"scalar\",\"svd_dtype\":\"bf16\",\"rank\":2,"
                    "\"seed\":\"18446744073709551615\"}");
}

int main(int argc, char **argv) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_settings_defaults),
        cmocka_unit_test(test_settings_flags_parse),
        cmocka_unit_test(test_settings_help_lines),
        cmocka_unit_test(test_settings_checkpoint_keys),
        cmocka_unit_test(test_settings_checkpoint_json_unchanged),
    };
    return RUN_TESTS(argc, argv, "settings", tests, NULL, NULL);
}
