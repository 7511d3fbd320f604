"""What the binding tests share: paths from ctest's environment, a scratch folder per test, and
running the svdiff CLI (the reference the bindings must match byte for byte)."""
import os
import shutil
import subprocess
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("SVDIFF_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
MODEL = os.path.join(SOURCE, "models", "emoji-32")            # the default model
TINY = os.path.join(SOURCE, "tests", "fixtures", "tiny-sd", "diffusers")
SUBJECT = os.path.join(SOURCE, "models", "demo-subjects", "cat", "google")
CLI = os.environ.get("SVDIFF_CLI")
WORK = os.environ.get("SVDIFF_TEST_WORK") or os.path.join("/tmp", "svdiff-python-tests-%d" % os.getpid())


def scratch(name):
    """An empty folder for one test."""
    path = os.path.join(WORK, name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def read(path):
    with open(path, "rb") as f:
        return f.read()


def cli(*args):
    """Runs `svdiff ARGS`; fails the test with its stderr when it exits non-zero."""
    if not CLI:
        raise unittest.SkipTest("SVDIFF_CLI (the svdiff binary) is not set")
    p = subprocess.run([CLI] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if p.returncode != 0:
        raise AssertionError("svdiff %s exited %d: %s" % (" ".join(map(str, args)), p.returncode,
                                                          p.stderr.decode(errors="replace")))
    return p


def expect_error(test, fn, code=None, contains=()):
    """Calls fn(), which must raise svdiff.Error (of `code` when given) whose message contains each
    of `contains`; returns the error. SVDIFF_ERR_UNSUPPORTED (a function this library lacks) is
    raised on, so run.py reports the test as skipped rather than passed."""
    import svdiff
    try:
        fn()
    except svdiff.Error as e:
        if e.code == svdiff.ERR_UNSUPPORTED and code != svdiff.ERR_UNSUPPORTED:
            raise
        if code is not None:
            test.assertEqual(e.code, code, "%s: %s" % (e.name, e))
        for text in [contains] if isinstance(contains, str) else contains:
            test.assertIn(text, str(e))
        test.assertEqual(str(e), e.message)
        return e
    test.fail("no svdiff.Error raised")


def same_file(test, got, want):
    """The two files hold the same bytes; else fails naming the sizes and the first differing offset."""
    a, b = read(got), read(want)
    if a != b:
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        test.fail("%s (%d bytes) differs from %s (%d bytes) from byte %d" % (got, len(a), want, len(b), at))
