/* Shared by the libFuzzer harnesses (fuzz/fuzz_*.c) and their replay driver (fuzz/replay.c):
 * the project's parsers take paths, so each input is written to a file in a private temp folder
 * (under /dev/shm when it exists: no disk I/O per execution), and fixtures are found from the
 * source tree. Header-only: every harness is one .c file plus this. */
#ifndef SVDIFF_FUZZ_UTIL_H
#define SVDIFF_FUZZ_UTIL_H

#define _GNU_SOURCE   /* memmem, mkdtemp, nftw: include this header first */
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef FUZZ_SOURCE_DIR
#define FUZZ_SOURCE_DIR "."
#endif

static char fuzz_dir_[256];

static inline int fuzz_rm_(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static inline void fuzz_cleanup_(void) {
    if (fuzz_dir_[0]) nftw(fuzz_dir_, fuzz_rm_, 16, FTW_DEPTH | FTW_PHYS);
}

/* The private temp folder of this process (created on first use, removed at exit), under
 * $SVDIFF_FUZZ_TMPDIR (scripts/fuzz.sh: one folder per run, removed after it, so a crashed
 * harness leaves nothing behind), else /dev/shm, else $TMPDIR. */
static inline const char *fuzz_tmpdir(void) {
    if (fuzz_dir_[0]) return fuzz_dir_;
    struct stat sb;
    const char *base = getenv("SVDIFF_FUZZ_TMPDIR");
    if (!base || !*base) base = stat("/dev/shm", &sb) == 0 && S_ISDIR(sb.st_mode) ? "/dev/shm" : getenv("TMPDIR");
    snprintf(fuzz_dir_, sizeof fuzz_dir_, "%s/svdiff-fuzz-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(fuzz_dir_)) {
        perror("fuzz: mkdtemp");
        abort();
    }
    atexit(fuzz_cleanup_);
    return fuzz_dir_;
}

/* "<tmpdir>/<name>" into buf. */
static inline const char *fuzz_path(char *buf, size_t cap, const char *name) {
    snprintf(buf, cap, "%s/%s", fuzz_tmpdir(), name);
    return buf;
}

/* Writes data to path (replacing it); aborts on failure (a harness bug, not a finding). */
static inline void fuzz_write(const char *path, const uint8_t *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f)) {
        perror(path);
        abort();
    }
}

/* A fixture of the source tree: $SVDIFF_SOURCE_DIR/<rel>, else the configured source folder. */
static inline const char *fuzz_fixture(char *buf, size_t cap, const char *rel) {
    const char *src = getenv("SVDIFF_SOURCE_DIR");
    snprintf(buf, cap, "%s/%s", src && *src ? src : FUZZ_SOURCE_DIR, rel);
    return buf;
}

/* Symlinks the fixture <rel> as <tmpdir>/<name> (for folders the parser needs around the input). */
static inline void fuzz_link_fixture(const char *rel, const char *name) {
    char from[1024], to[1024];
    fuzz_fixture(from, sizeof from, rel);
    fuzz_path(to, sizeof to, name);
    if (symlink(from, to) && unlink(to) == 0 && symlink(from, to)) {
        perror(to);
        abort();
    }
}

/* mkdir -p of <tmpdir>/<name> (one level). */
static inline void fuzz_mkdir(const char *name) {
    char p[1024];
    fuzz_path(p, sizeof p, name);
    mkdir(p, 0700);
}

/* rc as is; with SVDIFF_FUZZ_VERBOSE set, a failure's message goes to stderr (seed triage). */
const char *sd_last_error(void);
static inline int fuzz_rc(int rc, const char *what) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("SVDIFF_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "%s: %s\n", what, rc ? sd_last_error() : "ok");
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
