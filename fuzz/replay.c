/* Replays inputs through a harness without libFuzzer (the normal gcc builds link each fuzz_*.c
 * with this main): every file named on the command line, or found in a folder named there
 * (sorted, hidden files skipped), is passed to LLVMFuzzerTestOneInput once. A folder that does
 * not exist counts as empty. A crash or sanitizer report fails the test, and so does an input
 * that runs longer than SVDIFF_FUZZ_TIMEOUT seconds (default 10, scripts/fuzz.sh's -timeout:
 * SIGALRM ends the process); otherwise prints the count and exits 0 (1 when nothing was found:
 * a wrong path). */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "replay: %s: cannot open\n", path);
        return 1;
    }
    size_t cap = 1 << 16, n = 0, r;
    uint8_t *buf = malloc(cap);
    while (buf && (r = fread(buf + n, 1, cap - n, f)) > 0)
        if ((n += r) == cap) buf = realloc(buf, cap *= 2);
    fclose(f);
    if (!buf) return 1;
    /* an exact-size copy, so ASan sees reads past the end as libFuzzer would */
    uint8_t *in = malloc(n ? n : 1);
    memcpy(in, buf, n);
    free(buf);
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, n);
    const char *limit = getenv("SVDIFF_FUZZ_TIMEOUT");
    alarm(limit && *limit ? (unsigned)atoi(limit) : 10u);
    LLVMFuzzerTestOneInput(in, n);
    alarm(0);
    free(in);
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    int count = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) continue;   /* e.g. no regressions yet */
        if (!S_ISDIR(sb.st_mode)) {
            bad += run_file(argv[i]), count++;
            continue;
        }
        struct dirent **ents;
        int n = scandir(argv[i], &ents, NULL, NULL);
        if (n < 0) continue;
        char **names = malloc(sizeof(char *) * (size_t)(n ? n : 1));
        int m = 0;
        for (int k = 0; k < n; k++) {
            if (ents[k]->d_name[0] != '.') names[m++] = strdup(ents[k]->d_name);
            free(ents[k]);
        }
        free(ents);
        qsort(names, (size_t)m, sizeof *names, cmp_str);
        for (int k = 0; k < m; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], names[k]);
            bad += run_file(path), count++;
            free(names[k]);
        }
        free(names);
    }
    printf("replayed %d inputs, %d unreadable\n", count, bad);
    return bad || count == 0 ? 1 : 0;   /* no input at all: a wrong corpus path */
}
