"""Order: the notebook pipelines (minutes each) first, so that with `make test TEST_WORKERS=2` both
workers start on them at once and the short tests fill the time around them."""
from __future__ import annotations


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: 0 if item.path.name == "test_pipeline.py" else 1)
