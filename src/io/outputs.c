/* Output safety (see outputs.h): the input registry, the target check, stale temp removal. */
#include "io/outputs.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "base/error.h"

typedef struct {
    dev_t dev;
    ino_t ino;
    char *path;   /* as first opened, for messages */
} input_t;

/* Readers may run on several threads (model shards, images): one lock over the small list. */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static input_t *g_inputs;
static int g_n, g_cap;
static int g_track;

void outputs_track_inputs(int on) { g_track = on; }

static void note(const struct stat *st, const char *path) {
    if (!g_track || !S_ISREG(st->st_mode)) return;   /* readers refuse non-regular files */
    pthread_mutex_lock(&g_lock);
    int known = 0;
    for (int i = 0; i < g_n && !known; i++) known = g_inputs[i].dev == st->st_dev && g_inputs[i].ino == st->st_ino;
    if (!known) {
        if (g_n == g_cap) {
            g_cap = g_cap ? 2 * g_cap : 64;
            input_t *n = realloc(g_inputs, sizeof *n * (size_t)g_cap);
            SD_CHECK(n, "out of memory");
            g_inputs = n;
        }
        char *p = strdup(path ? path : "?");
        SD_CHECK(p, "out of memory");
        g_inputs[g_n++] = (input_t){st->st_dev, st->st_ino, p};
    }
    pthread_mutex_unlock(&g_lock);
}

void outputs_note_input(const char *path) {
    struct stat st;
    if (path && stat(path, &st) == 0) note(&st, path);
}

void outputs_note_input_fd(int fd, const char *path) {
    struct stat st;
    if (fstat(fd, &st) == 0) note(&st, path);
}

void outputs_forget_input(const char *path) {
    struct stat st;
    if (!path || stat(path, &st) != 0) return;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n; i++)
        if (g_inputs[i].dev == st.st_dev && g_inputs[i].ino == st.st_ino) {
            free(g_inputs[i].path);
            g_inputs[i] = g_inputs[--g_n];
            break;
        }
    pthread_mutex_unlock(&g_lock);
}

void outputs_forget_all_inputs(void) {
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n; i++) free(g_inputs[i].path);
    free(g_inputs);
    g_inputs = NULL, g_n = g_cap = 0;
    pthread_mutex_unlock(&g_lock);
}

static const char *kind_of(mode_t m) {
    return S_ISDIR(m) ? "a folder" : S_ISCHR(m) ? "a character device" : S_ISBLK(m) ? "a block device"
           : S_ISFIFO(m) ? "a fifo" : S_ISSOCK(m) ? "a socket" : "not a regular file";
}

int outputs_check(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return SD_OK;   /* nothing there (or a dangling link): a new file */
    if (!S_ISREG(st.st_mode))
        return sd_error(SD_ERR_IO, "%s: exists and is %s, not a regular file: refusing to replace it", path,
                        kind_of(st.st_mode));
    char input[1024] = "";
    pthread_mutex_lock(&g_lock);
    struct stat now;
    for (int i = 0; i < g_n && !input[0]; i++)
        if (g_inputs[i].dev == st.st_dev && g_inputs[i].ino == st.st_ino && stat(g_inputs[i].path, &now) == 0 &&
            now.st_dev == st.st_dev && now.st_ino == st.st_ino)
            snprintf(input, sizeof input, "%s", g_inputs[i].path);
    pthread_mutex_unlock(&g_lock);
    if (input[0])
        return sd_error(SD_ERR_IO, "%s: is one of this run's inputs (%s): refusing to overwrite it", path, input);
    return SD_OK;
}

/* "<name>.tmp.<digits>" -> the pid, else 0 */
static long temp_pid(const char *name) {
    const char *t = strstr(name, ".tmp.");
    if (!t || t == name) return 0;
    for (const char *next; (next = strstr(t + 1, ".tmp."));) t = next;   /* the last ".tmp." */
    const char *d = t + 5;
    if (!*d || strspn(d, "0123456789") != strlen(d) || strlen(d) > 9) return 0;
    return strtol(d, NULL, 10);
}

int outputs_remove_stale_temps(const char *dir) {
    DIR *d = opendir(dir);
    if (!d && errno == ENOENT) return 0;
    if (!d) {
        fprintf(stderr, "warning: %s: cannot look for stale temp files: %s\n", dir, strerror(errno));
        return -1;
    }
    int removed = 0;
    for (struct dirent *e; (e = readdir(d));) {
        const long pid = temp_pid(e->d_name);
        if (pid <= 0 || pid == (long)getpid()) continue;
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;   /* alive (or not ours to judge) */
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(path) == 0) {
            fprintf(stderr, "removed %s: the temporary file of an interrupted write (process %ld has ended)\n", path,
                    pid);
            removed++;
        }
    }
    closedir(d);
    return removed;
}
