/* A table of typed settings, each described once: its name, the field that stores it (offsetof in
 * the table's struct), its default, its command-line flag(s) and their help line. The same entry
 * gives the struct's default (setting_defaults), parses a flag's value (setting_parse), prints the
 * --help line (setting_help) and, for the training settings, the checkpoint key (train/settings.h).
 * The CLI builds its getopt_long table from the entries (cli/args.h: cli_getopt). */
#ifndef SVDIFF_BASE_SETTING_H
#define SVDIFF_BASE_SETTING_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
    SETTING_INT,     /* int in [lo, hi] */
    SETTING_FLOAT,   /* float in [lo, hi] (NaN refused) */
    SETTING_BOOL,    /* int 0/1: the flag sets 1, `neg` sets 0; no value */
    SETTING_STR,     /* const char * (the argv string itself) */
    SETTING_ENUM,    /* int: index into choices ("name|alias" spellings) */
    SETTING_U64,     /* uint64_t, a non-negative decimal integer */
} setting_type_t;

/* SETTING_STR: the value "none" stores "" (e.g. --svd-cache none: no cache) */
#define SETTING_NONE_EMPTY 1

typedef struct {
    const char *name;       /* the setting's name (for the training settings: its checkpoint key) */
    setting_type_t type;
    size_t offset;          /* of the field in the table's struct */
    const char *def;        /* default, parsed like a flag's value (no range check); NULL: 0 / NULL */
    const char *flag;       /* long flag without "--"; NULL: not a flag */
    const char *aliases;    /* other spellings of the flag, space-separated (e.g. the diffusers ones) */
    const char *neg;        /* SETTING_BOOL: a flag that sets 0 */
    const char *arg;        /* the value's name in --help ("N", "LR") */
    const char *help;       /* help text; '\n' continues on an indented line */
    double lo, hi;          /* range of INT / FLOAT values */
    const char *const *choices;   /* SETTING_ENUM, NULL-terminated */
    int flags;              /* SETTING_NONE_EMPTY */
    char short_flag;        /* a one-letter spelling ('o' for -o), 0: none */
} setting_t;

/* Every entry's default into the struct at `base` (zeroed first by the caller). */
void setting_defaults(const setting_t *tab, int n, void *base);
/* Stores the value `arg` of entry s (negated: its `neg` flag) into base; SD_ERR_ARG with the message
 * "--flag needs an integer in [lo, hi], got 'x'" (or "must be a, b or c") when it does not parse. */
int setting_parse(const setting_t *s, void *base, const char *arg, int negated);
/* Like setting_parse without the range check: the defaults (cutmix_prob -1 means "automatic"). */
int setting_set(const setting_t *s, void *base, const char *arg);
/* The entry by name, or NULL. */
const setting_t *setting_find(const setting_t *tab, int n, const char *name);
/* The --help lines of entry s: "  --flag ARG   help (default D)", D = def_override or s->def
 * (nothing when the text already says "default" or there is no default). */
void setting_help(FILE *f, const setting_t *s, const char *def_override);
/* The choice `i` of an enum entry, without its aliases ("constant" of "constant|constant_with_warmup"). */
int setting_choice(const setting_t *s, int i, char *buf, size_t cap);

#endif
