"""The test session: OpenMP threads that sleep when they wait, and the notebook pipelines first.

`make test` runs every test file on two pytest-xdist workers, a file per worker (Makefile), so two
processes with two PyTorch threads each share the 2 cores. GNU OpenMP's threads spin while they
wait for work by default: a ResNet18 training loop took 68 s in each of two such processes against
17 s alone, and 24 s each with OMP_WAIT_POLICY=PASSIVE (2026-12-07, AMD EPYC, 2 cores). libgomp
reads it when torch loads it, so it is set here, before any test module imports torch, and every
child process (the notebooks' kernels included) inherits it. Timings in the tests' notebooks mean
nothing either way.

Files are handed to the workers in this order (with `--no-loadscope-reorder`, xdist keeps it): the
two pipeline files (minutes each) first, one per worker, then the longest of the others, so that the
short ones even out the end; the order is by their times in one process on 2026-12-07 (AMD EPYC), seconds:
runs 127, export_runtimes 105, artifacts_memory 81, quantization 80 (237 before its model had one
block per stage), isolation 63, pruning 50, measure 47, plan 46, openvino 39, training_memory 37,
own_models 35; the rest under 25 each."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

FIRST = ("test_pipeline.py", "test_pipeline_models.py", "test_runs.py", "test_export_runtimes.py",
         "test_artifacts_memory.py", "test_quantization.py", "test_isolation.py", "test_pruning.py",
         "test_measure.py", "test_plan.py", "test_openvino.py", "test_training_memory.py", "test_own_models.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))
