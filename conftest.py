"""Keep test and nbval outputs out of outputs/: every run writes under a temporary folder.

Set at import time so the notebook kernels nbval starts inherit it; removed when the session
ends (a test session writes over a gigabyte there, and CI shares its disk).
"""
import os
import shutil
import tempfile

if "OPTLIB_OUTPUT_ROOT" not in os.environ:
    _OWN_ROOT = tempfile.mkdtemp(prefix="optlib-test-outputs-")
    os.environ["OPTLIB_OUTPUT_ROOT"] = _OWN_ROOT
else:
    _OWN_ROOT = None
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_sessionfinish(session, exitstatus):
    if _OWN_ROOT is not None:
        shutil.rmtree(_OWN_ROOT, ignore_errors=True)
