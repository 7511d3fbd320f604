"""Runs the binding tests (unittest) with /usr/bin/python3, for ctest:
    python3 python/tests/run.py [MODULE...]     e.g. run.py test_generate test_shifts
Exit 0 when all pass, 1 when one fails, 77 (ctest's SKIP_RETURN_CODE) with a message when
libsvdiff.so is not built or not loadable. The environment ctest sets: SVDIFF_LIB (the library),
SVDIFF_CLI (the svdiff binary to compare with), SVDIFF_SOURCE_DIR, SVDIFF_TEST_WORK (scratch)."""
import os
import sys
import unittest

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(here))   # python/: the package from this checkout
sys.path.insert(0, here)

import svdiff   # noqa: E402
from svdiff import _lib   # noqa: E402

try:
    _lib.load()
except _lib.LibraryNotFound as e:
    print("SKIP: the Python binding tests need libsvdiff.so: %s" % e)
    sys.exit(77)
print("libsvdiff: %s; numpy: %s" % (_lib.path(), "yes" if svdiff.have_numpy() else "no"))


class Result(unittest.TextTestResult):
    """A test whose library call answers SVDIFF_ERR_UNSUPPORTED (a function this libsvdiff does
    not implement) is reported as skipped, with the library's message; every other error fails."""

    def addError(self, test, err):
        if isinstance(err[1], svdiff.Error) and err[1].code == svdiff.ERR_UNSUPPORTED:
            self.addSkip(test, "this libsvdiff lacks it: %s" % err[1])
        else:
            super().addError(test, err)


names = sys.argv[1:] or sorted(f[:-3] for f in os.listdir(here) if f.startswith("test_") and f.endswith(".py"))
suite = unittest.defaultTestLoader.loadTestsFromNames(names)
result = unittest.TextTestRunner(verbosity=2, resultclass=Result).run(suite)
if not result.wasSuccessful() or result.testsRun == 0:
    sys.exit(1)
if len(result.skipped) == result.testsRun:
    print("SKIP: every test was skipped")
    sys.exit(77)
