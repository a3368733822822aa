"""A chapter run's manifest, outputs/<target>/runs/<notebook>.json: what records need to tell a
complete run's records from an incomplete one's (results.records.load_records). The fields, and
the decision to run a chapter again, are in core.runstate; this module stays small because every
chapter imports it (through the records), so it is part of every chapter's code inputs."""
from __future__ import annotations

import json
from pathlib import Path

from . import paths
from .io import write_json_atomic

SCHEMA = "optlib.run/1"
RUN_ID_ENV = "OPTLIB_RUN_ID"  # set by `optlib run` for the chapter's kernel; records carry it
TRACE_ENV = "OPTLIB_PARAMS_TRACE"  # where the kernel notes the parameters it reads (core.params)


def runs_dir(target: str) -> Path:
    return paths.target_dir(target) / "runs"


def read_manifest(target: str, notebook: str) -> dict | None:
    """The chapter's manifest, or None when it never ran through the pipeline (or the file is unreadable)."""
    try:
        m = json.loads((runs_dir(target) / f"{notebook}.json").read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("schema") == SCHEMA else None


def write_manifest(target: str, manifest: dict) -> Path:
    return write_json_atomic(manifest, runs_dir(target) / f"{manifest['notebook']}.json")
