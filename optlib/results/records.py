"""Result records: one JSON file per measured configuration, outputs/<target>/results/<name>.json.

This module is the one place the schema is defined. A record (schema "optlib.result/3") has:

  schema             "optlib.result/3"
  target             the params target (outputs/<target>/)
  notebook           notebook that wrote it, e.g. "01_baseline"
  name               unique per target, e.g. "pytorch-fp32", "onnxruntime-fp32"
  technique          baseline | runtime | compiler | quantization | ...
  backend            pytorch | onnxruntime | tensorrt | ...
  precision          fp32 | fp16 | bf16 | int8 ...
  status             ok | skipped | failed
  reason             why skipped / failed (None when ok)
  device             {"kind": cpu|cuda, "name": CPU/GPU model, "threads": int, ...}
  batch_size         batch size of the per-stage latency
  latency_ms         {stage: LatencySummary} for preprocessing, feature_extraction, classification,
                     total (the full model on its own pass)
  throughput         {batch size: Throughput}
  speedups           [Ratio]: same-run speed-ups against the references named at measure time,
                     at the latency batch size and at each throughput batch size
  noise_floor        NoiseFloor of the same-vs-same twin (on the reference record, when measured)
  size_bytes         size of the deployable artifact (state_dict, .onnx + .onnx.data, engine)
  memory             Memory: peak resident memory of a fresh process running this configuration
  accuracy           measurement.metrics.classification_metrics(...)
  fidelity           Fidelity against the reference (the paired table, Newcombe's interval, the
                     label-free pool's agreement); None for the reference itself
  verdict            Verdict against quant.max_accuracy_drop (measurement.verdict.judge): within,
                     worse or unresolved, the evidence that decided it and why; None for the reference
  kernels            Kernels: what really executed (integer / reduced-precision / mixed / fake-quant /
                     cast-emulated / float)
  one_time_cost_seconds  {label: seconds} paid once (export, calibration, compile, fine-tune, ...)
  artifact           Artifact the configuration is rebuilt from (backends.artifacts.load_runner)
  settings           runtime options that produced the numbers (threads, spinning, providers)
  environment        library versions, CPU/GPU, git commit, timestamp, params hash
  extra              technique-specific details (quantization config, evidence tables, ...)

Records of an older schema ("optlib.result/1" before the typed fields, "/2" before the paired
counts and verdicts) are not read: `load_records` reports
each as invalid with the instruction to rerun its chapter.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core import manifest, paths
from ..core.choices import STATUSES
from ..core.io import write_json_atomic
from .values import (Artifact, Fidelity, Kernels, LatencySummary, Memory, NoiseFloor, Ratio, Throughput, Verdict,
                     from_plain, to_plain)

SCHEMA = "optlib.result/3"


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
    latency_ms: dict[str, LatencySummary] | None = None
    throughput: dict[str, Throughput] | None = None
    speedups: list[Ratio] = field(default_factory=list)
    noise_floor: NoiseFloor | None = None
    size_bytes: int | None = None
    memory: Memory | None = None
    accuracy: dict | None = None
    fidelity: Fidelity | None = None
    verdict: Verdict | None = None
    kernels: Kernels | None = None
    one_time_cost_seconds: dict[str, float] = field(default_factory=dict)
    artifact: Artifact | None = None
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

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def latency(self) -> LatencySummary | None:
        """The headline: the full model's latency at `batch_size`."""
        return (self.latency_ms or {}).get("total")

    def speedup(self, reference: str, metric: str = "latency", batch_size: int | None = None) -> Ratio | None:
        """The same-run speed-up against `reference` (latency at the latency batch size by default,
        or throughput at `batch_size`); None when it was not measured against that reference."""
        bs = self.batch_size if (metric == "latency" and batch_size is None) else batch_size
        for r in self.speedups:
            if r.reference == reference and r.metric == metric and (bs is None or r.batch_size == bs):
                return r
        return None

    def to_dict(self) -> dict:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Record":
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}, expected {SCHEMA!r}: written by an older optlib; "
                             f"rerun notebook {data.get('notebook', '?')} to regenerate it")
        return from_plain(cls, data)


def write_record(record: Record) -> Path:
    """Write `record` atomically to outputs/<target>/results/<name>.json and return the path. Inside
    `optlib run` the record carries the chapter run's id (environment.run_id; core.manifest)."""
    run_id = os.environ.get(manifest.RUN_ID_ENV)
    if run_id:
        record.environment = {**record.environment, "run_id": run_id}
    return write_json_atomic(record.to_dict(), paths.results_dir(record.target) / f"{record.name}.json")


def read_record(path: str | Path) -> Record:
    return Record.from_dict(json.loads(Path(path).read_text()))


def incomplete_run(record: Record, manifests: dict) -> str | None:
    """Why `record` comes from a chapter run that did not complete (None when it does not): its
    run id is neither the chapter's last complete run (runs/<notebook>.json) nor this process's own
    run. Records written outside `optlib run` (no run id) stand as they are."""
    rid = (record.environment or {}).get("run_id")
    if not rid or rid == os.environ.get(manifest.RUN_ID_ENV):
        return None
    if record.notebook not in manifests:
        manifests[record.notebook] = manifest.read_manifest(record.target, record.notebook)
    m = manifests[record.notebook]
    if m is None or rid == m.get("complete_run_id"):
        return None
    if rid == m.get("run_id"):
        state = {"running": f"still running, or stopped (pid {m.get('pid')})",
                 "failed": f"failed: {m.get('error')}"}.get(m.get("status"), m.get("status"))
    else:
        state = "superseded by a later run"
    return (f"from an incomplete run of {record.notebook} (run {rid}, {state}); "
            f"`python -m optlib run --target {record.target} --notebooks {record.notebook.split('_')[0]}` redoes it")


def load_records(target: str) -> list[Record]:
    """Every record of a target, sorted by name. A file that is not a valid record of this schema
    becomes a `failed` record whose reason names the file and what is wrong, so one bad file hides
    nothing and stops nothing; so does a record from a chapter run that did not complete
    (incomplete_run; its own status is kept in extra["status_in_file"])."""
    out = []
    d = paths.results_dir(target)
    if not d.is_dir():
        return out
    manifests: dict = {}
    for p in sorted(d.glob("*.json")):
        try:
            rec = read_record(p)
        except Exception as e:
            out.append(Record(target=target, notebook="?", name=p.stem, technique="?", backend="?",
                              precision="?", status="failed", reason=f"{p}: unreadable record ({e})"))
            continue
        why = incomplete_run(rec, manifests)
        if why:
            rec.extra = {**rec.extra, "status_in_file": rec.status, "reason_in_file": rec.reason}
            rec.status, rec.reason = "failed", why
        out.append(rec)
    return out
