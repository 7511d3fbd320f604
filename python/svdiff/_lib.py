"""Finds and loads libsvdiff.so (ctypes); the C functions' prototypes are declared in _api.py.

Where the library is looked for, first found wins:
  1. the SVDIFF_LIB environment variable: the library file itself, or a folder holding it;
  2. next to this package (a copy placed in svdiff/ beside __init__.py);
  3. the build trees of a source checkout this package sits in (python/../build*, newest first);
  4. the system loader (ldconfig's cache, LD_LIBRARY_PATH): libsvdiff.so.0 then libsvdiff.so.
The library is loaded on first use, so `import svdiff` works without it and says why later.
"""
import ctypes
import ctypes.util
import glob
import os

_NAMES = ("libsvdiff.so", "libsvdiff.so.0")

# What the svdiff CLI sets by re-executing itself (src/base/runtime.c), a library must get from its
# host before libgomp loads: passive OpenMP waiting unless the user chose (spinning threads beside
# another busy process made a 4-step generate on emoji-32 take 11-21 s instead of 0.2-0.6 s here).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


class LibraryNotFound(OSError):
    """libsvdiff.so could not be found or loaded; the message lists the places tried."""


def _in_folder(folder):
    for name in _NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _sanitized(tree):
    """Whether a build tree is a sanitizer build (its library aborts a process that did not preload
    the sanitizer runtime, so it is never picked by itself; SVDIFF_LIB can still name it)."""
    try:
        with open(os.path.join(tree, "CMakeCache.txt"), encoding="utf-8", errors="replace") as f:
            cache = f.read()
    except OSError:
        return False
    return "SVDIFF_SANITIZE:BOOL=ON" in cache or "SVDIFF_FUZZ:BOOL=ON" in cache


def candidates():
    """The library paths to try, in order, each with where it came from."""
    out = []
    env = os.environ.get("SVDIFF_LIB")
    if env:
        out.append(("SVDIFF_LIB", _in_folder(env) if os.path.isdir(env) else env))
    here = os.path.dirname(os.path.abspath(__file__))
    found = _in_folder(here)
    if found:
        out.append(("package folder", found))
    root = os.path.dirname(os.path.dirname(here))   # python/svdiff -> the checkout
    if os.path.isfile(os.path.join(root, "CMakeLists.txt")):
        trees = [d for d in glob.glob(os.path.join(root, "build*")) if not _sanitized(d)]
        found = [(os.path.basename(d) != "build", -os.path.getmtime(p), p) for d, p in
                 ((d, _in_folder(d)) for d in trees) if p]
        for _, _, path in sorted(found):   # build/ (scripts/build.sh release) first, then the newest
            out.append(("build tree", path))
    for name in ("libsvdiff.so.0", "libsvdiff.so"):
        out.append(("system loader", name))
    found = ctypes.util.find_library("svdiff")
    if found:
        out.append(("system loader", found))
    return out


_lib = None
_path = None


def load():
    """The loaded library (a ctypes.CDLL), loading it on the first call."""
    global _lib, _path
    if _lib is not None:
        return _lib
    tried = []
    env = os.environ.get("SVDIFF_LIB")
    for origin, path in candidates():
        if path is None:
            tried.append("%s=%s (no %s in that folder)" % (origin, env, " or ".join(_NAMES)))
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append("%s: %s" % (origin, e))
            if origin == "SVDIFF_LIB":   # an explicit choice that fails is not silently replaced
                break
            continue
        from . import _api
        try:
            _api.declare(lib)
        except OSError as e:   # an older library, or another libsvdiff
            tried.append("%s: %s" % (origin, e))
            continue
        _lib, _path = lib, path
        return lib
    raise LibraryNotFound("libsvdiff.so not found or not loadable; tried: " + "; ".join(tried) +
                          " (build it with `scripts/build.sh release`, or set SVDIFF_LIB)")


def preload():
    """Loads the library now if it can be found (quietly otherwise): the package does this before
    importing numpy, so the library's OpenMP build of OpenBLAS is the process's libopenblas.so.0,
    as in the CLI, rather than the one numpy would bring."""
    try:
        load()
    except LibraryNotFound:
        pass


def path():
    """The file the library was loaded from (loads it if needed); for one the system loader
    found by name, the file it mapped."""
    load()
    if os.sep not in _path:
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    if "/libsvdiff.so" in line:
                        return line.split(None, 5)[-1].strip()
        except OSError:
            pass
    return _path
