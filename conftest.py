"""Keep test and nbval outputs out of outputs/: every run writes under a temporary folder.

Set at import time so the notebook kernels nbval starts inherit it.
"""
import os
import tempfile

os.environ.setdefault("OPTLIB_OUTPUT_ROOT", tempfile.mkdtemp(prefix="optlib-test-outputs-"))
os.environ.setdefault("MPLBACKEND", "Agg")
