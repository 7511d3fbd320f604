"""svdiff.Error: a failed call, with the library's code and its one-line message."""
import ctypes

from . import _lib


class Error(Exception):
    """A call into libsvdiff failed. .code: the negative svdiff_status_t value (svdiff.ERR_*),
    .name: its name ("SVDIFF_ERR_IO"), .message: the library's message (names the file, value or
    stage at fault)."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code, self.message = code, message

    @property
    def name(self):
        return _lib.load().svdiff_error_name(self.code).decode()

    def __str__(self):
        return self.message


class Cancelled(Error):
    """The cancel callback (or an exception raised in a callback) stopped the work."""


def make(code):
    """The Error of a failed call, with the calling thread's message."""
    lib = _lib.load()
    message = (lib.svdiff_last_error() or b"").decode("utf-8", "replace") or lib.svdiff_error_name(code).decode()
    cls = Cancelled if code == -7 else Error
    return cls(code, message)


def check(code):
    """Raises the Error of a non-zero status; returns 0."""
    if code != 0:
        raise make(code)
    return code


def encode(s):
    """A str / path argument as the bytes C receives (None stays NULL)."""
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    import os
    return os.fsencode(s) if not isinstance(s, str) else s.encode("utf-8")


def take_string(ptr):
    """A library-allocated char * as str, freed with svdiff_free."""
    if not ptr:
        return None
    try:
        return ctypes.string_at(ptr).decode("utf-8", "replace")
    finally:
        _lib.load().svdiff_free(ptr)
