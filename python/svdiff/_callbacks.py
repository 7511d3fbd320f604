"""Python callables behind the C callbacks (progress, cancel, each image).

An exception raised inside a callback cannot cross the C frames: it is kept, the cancel callback
then asks the library to stop at its next poll, and the exception is raised again once the C
call has returned. Ctrl-C: during the call (from the main thread, with Python's default SIGINT
handler in place) SIGINT only sets a flag, the next poll stops the work cleanly, and
KeyboardInterrupt is raised after the call. (Python's own handler would raise inside whichever
callback runs next, possibly before any of its code could catch it, and the interrupt would be
lost in ctypes.)"""
import collections
import signal
import threading

from . import _api, _image

Progress = collections.namedtuple("Progress", "stage step total seconds_per_step")
Progress.__doc__ = """A progress report: stage ("sample", "train", "class_images", "invert" or
"edit"), step of total done (1-based), seconds_per_step the mean so far."""


class Hooks:
    def __init__(self, progress=None, cancel=None, on_image=None):
        self.error = None
        self.cancelled = False
        self._progress, self._cancel, self._on_image = progress, cancel, on_image
        self.struct = _api.Callbacks()
        # the CFUNCTYPE objects must outlive the C call: they are attributes of self
        if progress is not None:
            self._p = _api.PROGRESS_FN(self._on_progress)
            self.struct.progress = self._p
        self._c = _api.CANCEL_FN(self._on_cancel)   # always: a callback's exception stops the work
        self.struct.cancel = self._c
        if on_image is not None:
            self._i = _api.IMAGE_FN(self._on_image_cb)
            self.struct.image = self._i

    def _guard(self, f, *args):
        if self.error is not None:
            return None
        try:
            return f(*args)
        except BaseException as e:   # KeyboardInterrupt too: kept and raised after the call
            self.error = e
            return None

    def _on_progress(self, stage, step, total, seconds, user):
        try:
            self._guard(self._progress, Progress(_api.STAGES.get(stage, str(stage)), step, total, seconds))
        except BaseException as e:   # a signal's exception between the guarded lines
            self.error = self.error or e

    def _on_cancel(self, user):
        # Ctrl-C: Python runs its SIGINT handler (KeyboardInterrupt) at the next bytecode it
        # executes, which is in a callback; this poll is where the library can stop on it.
        try:
            if self.error is None and self._cancel is not None and self._guard(self._cancel):
                self.cancelled = True
        except BaseException as e:
            self.error = self.error or e
        return 1 if self.cancelled or self.error is not None else 0

    def _on_image_cb(self, rgb, width, height, index, seed, user):
        try:
            self._guard(lambda: self._on_image(_image.from_buffer(rgb, width, height), index, seed))
        except BaseException as e:
            self.error = self.error or e

    def __enter__(self):
        self._old_sigint = None
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._old_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc):
        if self._old_sigint is not None:
            signal.signal(signal.SIGINT, self._old_sigint)
            self._old_sigint = None

    def _on_sigint(self, signum, frame):
        if self.error is None:
            self.error = KeyboardInterrupt()

    def reraise(self):
        """Raises the exception a callback raised, if any."""
        if self.error is not None:
            e, self.error = self.error, None
            raise e
