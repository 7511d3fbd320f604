/* Progress bar / progress lines on stderr (see progress.h). */
#include "base/progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "base/dist.h"

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void format_duration(char *buf, size_t n, double s) {
    if (s < 0 || s != s) s = 0;
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
    else snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

void progress_start(progress_t *p, const char *label, long total, const char *unit) {
    memset(p, 0, sizeof *p);
    p->label = label;
    p->unit = unit ? unit : "it";
    p->total = total > 0 ? total : 1;
    p->t_start = p->t_last_print = seconds_now();
    p->tty = isatty(STDERR_FILENO);
    p->last_decile = -1;
    p->silent = dist_rank() > 0;
}

static void draw(progress_t *p, int final) {
    if (p->silent) return;
    const double now = seconds_now(), elapsed = now - p->t_start;
    const double rate = elapsed > 0 ? (p->done - p->base) / elapsed : 0;
    char el[32], eta[32], ratebuf[48];
    format_duration(el, sizeof el, elapsed);
    format_duration(eta, sizeof eta, rate > 0 ? (p->total - p->done) / rate : 0);
    /* slow work reads better as seconds per item */
    if (rate > 0 && rate < 1) snprintf(ratebuf, sizeof ratebuf, "%.2f s/%s", 1 / rate, p->unit);
    else snprintf(ratebuf, sizeof ratebuf, "%.2f %s/s", rate, p->unit);
    const int pct = (int)(100.0 * p->done / p->total);
    if (p->tty) {
        char bar[31];
        int fill = (int)(30.0 * p->done / p->total);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r%s %3d%% [%s] %ld/%ld [%s<%s, %s%s%s]\033[K", p->label, pct, bar, p->done,
                p->total, el, eta, ratebuf, p->extra[0] ? ", " : "", p->extra);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s %3d%% %ld/%ld elapsed %s eta %s %s%s%s\n", p->label, pct, p->done, p->total, el,
                eta, ratebuf, p->extra[0] ? " " : "", p->extra);
    }
    fflush(stderr);
    p->t_last_print = now;
}

void progress_update(progress_t *p, long done, const char *extra) {
    p->done = done;
    if (extra) snprintf(p->extra, sizeof p->extra, "%s", extra);
    const double now = seconds_now();
    if (p->tty) {
        if (now - p->t_last_print >= 0.1 || done >= p->total) draw(p, 0);
        return;
    }
    const int decile = (int)(10.0 * done / p->total);
    if (decile != p->last_decile || now - p->t_last_print >= 5.0) {
        p->last_decile = decile;
        draw(p, 0);
    }
}

void progress_resume(progress_t *p, long done) {
    p->base = done;
    progress_update(p, done, NULL);
}

void progress_finish(progress_t *p) {
    if (p->silent) return;
    if (p->tty) {
        draw(p, 1);
        return;
    }
    const double elapsed = seconds_now() - p->t_start;
    char el[32];
    format_duration(el, sizeof el, elapsed);
    fprintf(stderr, "%s done: %ld %s in %s (%.2f %s/s)%s%s\n", p->label, p->done, p->unit, el,
            elapsed > 0 ? (p->done - p->base) / elapsed : 0.0, p->unit, p->extra[0] ? ", " : "", p->extra);
}
