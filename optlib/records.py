"""Result records: one JSON file per measured configuration, outputs/<target>/results/<name>.json.

This module is the one place the schema is defined. A record (schema "optlib.result/1") has:

  schema             "optlib.result/1"
  target             the params target (outputs/<target>/)
  notebook           notebook that wrote it, e.g. "01_baseline"
  name               unique per target, e.g. "pytorch-fp32", "onnxruntime-fp32"
  technique          baseline | runtime | compiler | quantization | pruning | ...
  backend            pytorch | onnxruntime | tensorrt | ...
  precision          fp32 | fp16 | bf16 | int8 ...
  status             ok | skipped | failed
  reason             why skipped / failed (None when ok)
  device             {"kind": cpu|cuda, "name": CPU/GPU model, "threads": int}
  batch_size         batch size of the per-stage latency
  latency_ms         {stage: stats} for preprocessing, feature_extraction, classification, total;
                     stats = count, trials, mean, std, min, max, median (median of trial medians),
                     ci95 [lo, hi] on that median, p50, p90, p95, p99, low_confidence [...]
  throughput_per_s   {batch size: {"images_per_s", "images_per_s_ci95", "latency_ms"}}
  size_bytes         size of the deployable artifact (state_dict, .onnx + .onnx.data, engine)
  peak_memory_bytes  peak process RSS (how measured: extra.memory)
  accuracy           optlib.metrics.classification_metrics(...)
  fidelity           optlib.metrics.fidelity(...) against `reference`; None for the reference
  settings           runtime options that produced the numbers (threads, spinning, providers)
  environment        library versions, CPU/GPU, git commit, timestamp, params hash
  extra              anything technique-specific (stage_split, model info, kernels, ...)
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import paths

SCHEMA = "optlib.result/1"
STATUSES = ("ok", "skipped", "failed")


@dataclass
class Record:
    target: str
    notebook: str
    name: str
    technique: str
    backend: str
    precision: str
    status: str = "ok"
    reason: str | None = None
    device: dict = field(default_factory=dict)
    batch_size: int | None = None
    latency_ms: dict | None = None
    throughput_per_s: dict | None = None
    size_bytes: int | None = None
    peak_memory_bytes: int | None = None
    accuracy: dict | None = None
    fidelity: dict | None = None
    settings: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    schema: str = SCHEMA

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"record {self.name!r}: status must be one of {STATUSES}, got {self.status!r}")
        if self.status != "ok" and not self.reason:
            raise ValueError(f"record {self.name!r}: a {self.status} record needs a reason")
        if not self.name or "/" in self.name:
            raise ValueError(f"record name {self.name!r} must be a non-empty file-safe name")

    def to_dict(self) -> dict:
        return asdict(self)


def _json_safe(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _json_safe(obj.item())
    return obj


def write_json_atomic(data, path: Path) -> Path:
    """Write JSON to a temporary file in the same folder, fsync, then rename over `path`.

    A crash leaves either the old file or the new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_json_safe(data), f, indent=2, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_record(record: Record) -> Path:
    """Write `record` atomically to outputs/<target>/results/<name>.json and return the path."""
    return write_json_atomic(record.to_dict(), paths.results_dir(record.target) / f"{record.name}.json")


def load_records(target: str) -> list[dict]:
    """Every record of a target, sorted by name; files that are not valid records are reported
    in `invalid` entries (status 'failed') rather than raising, so one bad file hides nothing."""
    out = []
    d = paths.results_dir(target)
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json")):
        try:
            rec = json.loads(p.read_text())
            if rec.get("schema") != SCHEMA:
                raise ValueError(f"schema {rec.get('schema')!r}, expected {SCHEMA!r}")
        except Exception as e:
            out.append({"schema": SCHEMA, "name": p.stem, "status": "failed", "target": target,
                        "reason": f"{p}: unreadable record ({e})"})
            continue
        out.append(rec)
    return out
