"""Order: the notebook pipelines (minutes each) first, so that `pytest -n 2` (make test) starts them
at once on both workers and the short tests fill the time around them."""
from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.path.name == "test_pipeline.py" else 1)
