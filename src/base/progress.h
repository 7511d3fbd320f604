/* Progress reporting on stderr for long work (sampling steps, training, SVD of a model):
 * on a terminal a single redrawn line with a bar, count, rate and ETA; otherwise (logs, CI)
 * plain lines at most every 10% or every 5 seconds, so logs stay readable. */
#ifndef SVDIFF_BASE_PROGRESS_H
#define SVDIFF_BASE_PROGRESS_H

typedef struct {
    const char *label;
    const char *unit;     /* "it", "step", "layer", ... */
    long total, done;
    long base;            /* count already done at start (a resumed run): not part of the rate */
    double t_start, t_last_print;
    int tty, last_decile;
    int silent;           /* an MPI rank other than 0 (base/dist.h): rank 0 alone reports */
    char extra[96];       /* e.g. "loss 0.0123", shown after the rate */
} progress_t;

void progress_start(progress_t *p, const char *label, long total, const char *unit);
/* Sets the count done so far (and redraws if due); extra may be NULL. */
void progress_update(progress_t *p, long done, const char *extra);
/* A resumed run: `done` items were finished before this process; rate and ETA count from here. */
void progress_resume(progress_t *p, long done);
/* Final line with the total time and mean rate. */
void progress_finish(progress_t *p);

#endif
