/* The lock of a run's output folder: `train` (every mode), `pretrain` and `edit` hold an
 * advisory flock on DIR/.svdiff.lock for the whole run, so that a second run into the same
 * folder fails at once (naming the folder and the holder's PID) instead of interleaving
 * loss.csv rows and overwriting the other run's results. The file holds the holder's PID as
 * text; it stays behind after the run. The kernel drops the flock when its process ends, so the
 * file of a killed run does not block the next run or --resume. Locks are re-entrant within a
 * process (`edit` holds the folder and its trainer takes it again); a forked child does not
 * inherit the right to take its parent's lock. */
#ifndef SVDIFF_IO_RUNLOCK_H
#define SVDIFF_IO_RUNLOCK_H

#define RUN_LOCK_FILE ".svdiff.lock"

typedef struct {
    int slot;   /* index + 1 into the process's table of held locks; 0: not held */
} run_lock_t;

/* Takes the lock of folder `dir` (which must exist). SD_ERR_IO: "<dir>: another svdiff run
 * (PID n) is writing into this folder". Taking a lock already held does nothing. */
int run_lock_take(run_lock_t *l, const char *dir);
/* Releases it (the last release of a re-entrant lock unlocks); a zeroed lock is ignored. */
void run_lock_release(run_lock_t *l);

#endif
