/* Typed settings tables (see setting.h). */
#include "base/setting.h"

#include <errno.h>
#include <float.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/error.h"

int setting_choice(const setting_t *s, int i, char *buf, size_t cap) {
    const char *c = s->choices[i];
    const char *bar = strchr(c, '|');
    return snprintf(buf, cap, "%.*s", (int)(bar ? (size_t)(bar - c) : strlen(c)), c);
}

/* Whether `arg` is one of the '|'-separated spellings of choice c. */
static int choice_matches(const char *c, const char *arg) {
    const size_t n = strlen(arg);
    for (const char *p = c;;) {
        const char *bar = strchr(p, '|');
        const size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len == n && !strncmp(p, arg, n))
            return 1;
        if (!bar)
            return 0;
        p = bar + 1;
    }
}

static int parse(const setting_t *s, void *base, const char *arg, int negated, int check) {
    char *field = (char *)base + s->offset, *end;
    switch (s->type) {
    case SETTING_BOOL:
        *(int *)field = negated ? 0 : 1;
        return SD_OK;
    case SETTING_STR:
        *(const char **)field = (s->flags & SETTING_NONE_EMPTY) && !strcmp(arg, "none") ? "" : arg;
        return SD_OK;
    case SETTING_INT: {
        errno = 0;
        const long v = strtol(arg, &end, 10);
        if (errno || *end || end == arg || (check && (v < s->lo || v > s->hi)) || v < INT32_MIN || v > INT32_MAX)
            return sd_error(SD_ERR_ARG, "--%s needs an integer in [%d, %d], got '%s'", s->flag, (int)s->lo, (int)s->hi,
                            arg);
        *(int *)field = (int)v;
        return SD_OK;
    }
    case SETTING_FLOAT: {
        errno = 0;
        const float v = strtof(arg, &end);
        if (errno || *end || end == arg || v != v || (check && !(v >= s->lo && v <= s->hi))) {
            if (s->lo <= -FLT_MAX && s->hi >= FLT_MAX)
                return sd_error(SD_ERR_ARG, "--%s needs a finite number, got '%s'", s->flag, arg);
            return sd_error(SD_ERR_ARG, "--%s needs a number in [%g, %g], got '%s'", s->flag, s->lo, s->hi, arg);
        }
        *(float *)field = v;
        return SD_OK;
    }
    case SETTING_U64: {
        errno = 0;
        const unsigned long long v = strtoull(arg, &end, 10);
        if (errno || *end || end == arg || arg[0] == '-')
            return sd_error(SD_ERR_ARG, "--%s needs a non-negative integer, got '%s'", s->flag, arg);
        *(uint64_t *)field = v;
        return SD_OK;
    }
    case SETTING_ENUM: {
        int n = 0;
        for (; s->choices[n]; n++)
            if (choice_matches(s->choices[n], arg)) {
                *(int *)field = n;
                return SD_OK;
            }
        char list[256] = "", one[64];
        for (int i = 0; i < n; i++) { /* "a, b or c" */
            setting_choice(s, i, one, sizeof one);
            const size_t len = strlen(list);
            snprintf(list + len, sizeof list - len, "%s%s", i == 0 ? "" : i == n - 1 ? " or " : ", ", one);
        }
        return sd_error(SD_ERR_ARG, "--%s must be %s, got '%s'", s->flag, list, arg);
    }
    }
    return sd_error(SD_ERR_ARG, "--%s: unknown setting type", s->flag);
}

int setting_parse(const setting_t *s, void *base, const char *arg, int negated) {
    return parse(s, base, arg, negated, 1);
}

int setting_set(const setting_t *s, void *base, const char *arg) {
    if (s->type == SETTING_BOOL) { /* "0" / "1" */
        *(int *)((char *)base + s->offset) = arg[0] == '1';
        return SD_OK;
    }
    return parse(s, base, arg, 0, 0);
}

void setting_defaults(const setting_t *tab, int n, void *base) {
    for (int i = 0; i < n; i++) {
        const int rc = tab[i].def ? setting_set(&tab[i], base, tab[i].def) : 0;
        SD_CHECK(!rc, "setting %s: bad default '%s'", tab[i].name, tab[i].def); /* an error of the table */
    }
}

const setting_t *setting_find(const setting_t *tab, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (!strcmp(tab[i].name, name))
            return &tab[i];
    return NULL;
}

void setting_help(FILE *f, const setting_t *s, const char *def_override) {
    if (!s->flag && !s->neg)
        return;
    char head[128];
    int len = 0;
    if (s->short_flag)
        len += snprintf(head + len, sizeof head - len, "-%c, ", s->short_flag);
    if (s->flag)
        len += snprintf(head + len, sizeof head - len, "--%s%s%s", s->flag, s->arg ? " " : "", s->arg ? s->arg : "");
    if (s->neg)
        len += snprintf(head + len, sizeof head - len, "%s--%s", s->flag ? ", " : "", s->neg);
    fprintf(f, "  %-27s", head);
    if (len > 27)
        fprintf(f, "\n  %-27s", "");
    const char *def = def_override ? def_override : s->def;
    const char *help = s->help ? s->help : "";
    for (const char *p = help; *p; p++) {
        fputc(*p, f);
        if (*p == '\n')
            fprintf(f, "  %-27s", "");
    }
    if (s->type == SETTING_BOOL || !def || strstr(help, "default")) {
        /* booleans: the flag's name says it */
    } else {
        fprintf(f, " (default %s)", def);
    }
    if (s->aliases) { /* "(also --a, --b)" */
        fprintf(f, "\n  %-27s(also ", "");
        for (const char *p = s->aliases; *p;) {
            const size_t n = strcspn(p, " ");
            fprintf(f, "%s--%.*s", p == s->aliases ? "" : ", ", (int)n, p);
            p += n;
            while (*p == ' ')
                p++;
        }
        fputc(')', f);
    }
    fputc('\n', f);
}
