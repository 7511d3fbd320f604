/* Output-folder locks (see runlock.h). */
#include "io/runlock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/error.h"

/* The locks this process holds, by folder identity. `pid` tells a forked child that an entry
 * it sees came from its parent: the child must take the lock itself (and finds it held). */
typedef struct {
    dev_t dev;
    ino_t ino;
    pid_t pid;
    int fd, refs;
} held_t;

enum { MAX_HELD = 16 };
static held_t g_held[MAX_HELD];
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* The holder's PID as the lock file says, or 0. */
static long read_holder(int fd) {
    char buf[32] = "";
    const ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0) return 0;
    buf[n] = '\0';
    return strtol(buf, NULL, 10);
}

int run_lock_take(run_lock_t *l, const char *dir) {
    if (l->slot) return SD_OK;
    struct stat ds;
    if (stat(dir, &ds) != 0)
        return sd_error(SD_ERR_IO, "%s: cannot lock the output folder: %s", dir, strerror(errno));
    if (!S_ISDIR(ds.st_mode)) return sd_error(SD_ERR_IO, "%s: cannot lock the output folder: not a folder", dir);
    int rc = SD_OK;
    pthread_mutex_lock(&g_mu);
    const pid_t me = getpid();
    int free_slot = -1;
    for (int i = 0; i < MAX_HELD; i++) {
        held_t *h = &g_held[i];
        if (h->refs && h->pid != me) {   /* inherited through fork: not ours (the fd is the parent's) */
            close(h->fd);
            memset(h, 0, sizeof *h);
        }
        if (h->refs && h->dev == ds.st_dev && h->ino == ds.st_ino) {
            h->refs++;
            l->slot = i + 1;
            pthread_mutex_unlock(&g_mu);
            return SD_OK;
        }
        if (!h->refs && free_slot < 0) free_slot = i;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/" RUN_LOCK_FILE, dir);
    int fd = -1;
    if (free_slot < 0) {
        rc = sd_error(SD_ERR_IO, "%s: too many output folders locked by one process", dir);
    } else if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0) {
        rc = sd_error(SD_ERR_IO, "%s: cannot create the lock file %s: %s", dir, path, strerror(errno));
    } else if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int err = errno;
        const long holder = read_holder(fd);
        if (err == EWOULDBLOCK) {
            char who[48] = "another process";
            if (holder > 0) snprintf(who, sizeof who, "PID %ld", holder);
            rc = sd_error(SD_ERR_IO, "%s: another svdiff run (%s) is writing into this folder (it holds %s); "
                          "wait for it to end or choose another output folder", dir, who, path);
        } else {
            rc = sd_error(SD_ERR_IO, "%s: cannot lock %s: %s", dir, path, strerror(err));
        }
    } else {
        /* ours: record our PID (a stale file of a killed run still names the dead one) */
        char buf[32];
        const int n = snprintf(buf, sizeof buf, "%ld\n", (long)me);
        if (ftruncate(fd, 0) != 0 || pwrite(fd, buf, (size_t)n, 0) != n)
            rc = sd_error(SD_ERR_IO, "%s: cannot write the lock file %s: %s", dir, path, strerror(errno));
    }
    if (rc) {
        if (fd >= 0) close(fd);
    } else {
        g_held[free_slot] = (held_t){ds.st_dev, ds.st_ino, me, fd, 1};
        l->slot = free_slot + 1;
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

void run_lock_release(run_lock_t *l) {
    if (!l || !l->slot) return;
    pthread_mutex_lock(&g_mu);
    held_t *h = &g_held[l->slot - 1];
    if (h->refs && h->pid == getpid() && --h->refs == 0) {
        close(h->fd);   /* drops the flock; the file stays (see runlock.h) */
        memset(h, 0, sizeof *h);
    }
    pthread_mutex_unlock(&g_mu);
    l->slot = 0;
}
