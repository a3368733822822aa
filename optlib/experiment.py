"""The measurement every chapter does: evaluate, time, compare, write records.

`measure(runners, ...)` evaluates each runner on the same test images, compares it with the
reference, times all runners in alternating blocks (per-stage latency and throughput), and
writes one record per runner. `record_skipped(...)` writes the record of a technique that
cannot run here, with its reason.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import bench, env
from .data import Dataset
from .metrics import classification_metrics, fidelity
from .params import Params
from .records import Record, write_record
from .runners.base import Runner, evaluate


@dataclass
class Measurement:
    records: dict[str, Record]
    logits: dict[str, np.ndarray]
    samples: dict[str, dict[str, list[np.ndarray]]]  # raw latency samples (ms) per stage per trial
    eval_seconds: dict[str, float] = field(default_factory=dict)


def stage_split_error(runner: Runner, images: list[np.ndarray]) -> float:
    """max |classify(extract_features(x)) - predict(images)| on one batch (0 when unsplit)."""
    batch = images[: min(8, len(images))]  # a batch size the benchmark uses anyway (no recompiles)
    split = runner.classify(runner.extract_features(runner.preprocess(batch)))
    return float(np.abs(np.asarray(split, dtype=np.float64) - runner.predict(batch)).max())


def measure(runners: list[Runner], dataset: Dataset, params: Params, notebook: str,
            reference: str | None = None, reference_logits: np.ndarray | None = None,
            sizes: dict[str, int] | None = None, extra: dict[str, dict] | None = None,
            progress: bool = True, write: bool | list[str] = True) -> Measurement:
    """Measure `runners` and (if `write`) write one record each.

    `reference` names the runner (in `runners` or measured earlier, then pass `reference_logits`)
    whose predictions the others are compared with; its own record has fidelity None.
    `sizes` gives each runner's artifact size in bytes; `extra` technique-specific fields.
    `write`: True (every record), False (none), or the names of the runners to write.
    """
    sizes, extra = sizes or {}, extra or {}
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"measure: runner names must be unique, got {names}")
    images, labels = dataset.test.images, dataset.test.labels
    logits, eval_s = {}, {}
    for r in runners:
        t0 = time.perf_counter()
        logits[r.name] = evaluate(r, images, params.bench.eval_batch_size)
        eval_s[r.name] = time.perf_counter() - t0
    if reference is not None and reference_logits is None:
        if reference not in logits:
            raise ValueError(f"measure: reference {reference!r} is not among the runners {names}; "
                             "pass reference_logits")
        reference_logits = logits[reference]
    latency_bs = min(params.bench.batch_sizes)
    lat, samples = bench.latency(runners, images, params.bench, batch_size=latency_bs, progress=progress,
                                 return_samples=True)
    thr = bench.throughput(runners, images, params.bench, progress=progress)
    mem = bench.peak_memory()
    environment = env.environment(params.hash())
    records = {}
    for r in runners:
        fid = None
        if reference is not None and r.name != reference:
            fid = fidelity(logits[r.name], reference_logits, labels, reference)
        rec = Record(
            target=params.target, notebook=notebook, name=r.name, technique=r.technique,
            backend=r.backend, precision=r.precision, status="ok",
            device=env.device_info(r.device, r.threads), batch_size=latency_bs,
            latency_ms=lat[r.name], throughput_per_s=thr[r.name], size_bytes=sizes.get(r.name),
            peak_memory_bytes=mem.get("cuda_max_allocated_bytes", mem["peak_rss_bytes"]),
            accuracy=classification_metrics(logits[r.name], labels, dataset.class_names,
                                            params.data.positive_class),
            fidelity=fid, settings={**r.settings(), "threads": r.threads},
            environment=environment,
            extra={"stage_split": r.stage_split, "stage_split_max_abs_diff": stage_split_error(r, images),
                   "eval_seconds": eval_s[r.name], "memory": mem, "dataset": dataset.summary(),
                   "bench": vars(params.bench), **extra.get(r.name, {})},
        )
        if write is True or (isinstance(write, list) and r.name in write):
            write_record(rec)
        records[r.name] = rec
    return Measurement(records, logits, samples, eval_s)


def record_skipped(params: Params, notebook: str, name: str, technique: str, backend: str,
                   precision: str, reason: str, status: str = "skipped", extra: dict | None = None) -> Record:
    """Write the record of a configuration that could not run here, saying why."""
    rec = Record(target=params.target, notebook=notebook, name=name, technique=technique,
                 backend=backend, precision=precision, status=status, reason=reason,
                 device=env.device_info(params.device, params.bench.threads),
                 environment=env.environment(params.hash()), extra=extra or {})
    write_record(rec)
    return rec
