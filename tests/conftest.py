"""The test session: OpenMP threads that sleep when they wait, and the notebook pipelines first.

`make test` runs every test file on two pytest-xdist workers, a file per worker (Makefile), so two
processes with two PyTorch threads each share the 2 cores. GNU OpenMP's threads spin while they
wait for work by default: a ResNet18 training loop took 68 s in each of two such processes against
17 s alone, and 24 s each with OMP_WAIT_POLICY=PASSIVE (2026-12-07, AMD EPYC, 2 cores). libgomp
reads it when torch loads it, so it is set here, before any test module imports torch, and every
child process (the notebooks' kernels included) inherits it. Timings in the tests' notebooks mean
nothing either way.

The pipeline files (minutes each) come first, so that each starts on its own worker at once and the
short files fill in around them (with `--no-loadscope-reorder`, xdist keeps this order)."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PIPELINES = ("test_pipeline.py", "test_pipeline_models.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: PIPELINES.index(item.path.name) if item.path.name in PIPELINES else len(PIPELINES))
