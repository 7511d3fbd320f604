/* Safety of output files, shared by every writer (safetensors, PNG, text):
 *  - a process-wide registry of the files this run opened for reading (device and inode),
 *    filled by the readers (st_open, image_load, the JSON, tokenizer and TSV readers), so that
 *    an output never replaces one of the run's own inputs (`generate -o` onto the model's
 *    weights, `shifts scale A 2 -o A`). An entry is matched while its path still names the same
 *    file: an input deleted since then may have passed its inode number on;
 *  - outputs_check(path): refuses a target that exists and is not a regular file (a device such
 *    as /dev/full, a fifo, a folder: an atomic rename would replace the node itself) or that is
 *    one of the registered inputs. Every writer calls it before writing anything;
 *  - stale temp files: an atomic write goes through "<name>.tmp.<pid>"; a process killed in the
 *    middle leaves that file behind. outputs_remove_stale_temps removes, in one folder, the temp
 *    files whose pid is no live process. */
#ifndef SVDIFF_IO_OUTPUTS_H
#define SVDIFF_IO_OUTPUTS_H

/* The registry is a policy of a program whose process is one run (the svdiff CLI turns it on in
 * main); off by default, so that library users and tests that read and rewrite files in one
 * process are not refused. The target check of non-regular files is always on. */
void outputs_track_inputs(int on);
/* Records `path` (stat'ed now; a path that cannot be stat'ed is ignored) as an input of this run. */
void outputs_note_input(const char *path);
/* Records the file open on `fd` (path only for messages). */
void outputs_note_input_fd(int fd, const char *path);
/* Forgets an input that the run replaces on purpose (its checkpoint, its SVD cache). */
void outputs_forget_input(const char *path);
/* Forgets every input (tests that run several commands in one process). */
void outputs_forget_all_inputs(void);

/* 0 when `path` may be written; SD_ERR_IO with a message naming it when it exists and is not a
 * regular file, or is one of this run's inputs (same device and inode, also through links;
 * with tracking on). */
int outputs_check(const char *path);

/* Removes from folder `dir` the files "<name>.tmp.<pid>" (pid: decimal digits) whose pid is no
 * live process (kill(pid, 0) fails with ESRCH); other files, subfolders and the temp files of
 * live processes are left alone. Returns how many were removed (a line on stderr names each), or
 * -1 with a warning when the folder cannot be read (a missing folder has nothing to clean: 0). */
int outputs_remove_stale_temps(const char *dir);

#endif
