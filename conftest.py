"""Keep test outputs off the shared disk's long-lived places.

- Every run and nbval kernel writes under one temporary folder (set at import time so the
  notebook kernels inherit it), removed when the session ends; torch.compile's cache goes there
  too instead of /tmp/torchinductor_<user>.
- A passing test's tmp_path goes when it ends (pyproject's retention policy "failed"); the
  folders of module-scoped fixtures go when their module ends, unless a test of it failed.
A test session writes several gigabytes in all (a smoke pipeline alone about 2 GB), and CI's
disk filled when they all stayed until the session ended.
"""
import os
import shutil
import tempfile

import pytest

if "OPTLIB_OUTPUT_ROOT" not in os.environ:
    _OWN_ROOT = tempfile.mkdtemp(prefix="optlib-test-outputs-")
    os.environ["OPTLIB_OUTPUT_ROOT"] = _OWN_ROOT
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_OWN_ROOT, "torchinductor"))
else:
    _OWN_ROOT = None
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="module")
def _module_folders_removed(request, tmp_path_factory):
    """Remove the folders a module made in the session's basetemp once it ends, if none of its tests failed."""
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    if _OWN_ROOT is not None:
        shutil.rmtree(_OWN_ROOT, ignore_errors=True)
