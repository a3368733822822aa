"""Order: the notebook pipelines (minutes each) first in a plain `pytest tests`. `make test` runs
them on their own, in one process, then the other tests on two xdist workers (Makefile)."""
from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.path.name == "test_pipeline.py" else 1)
