"""Latency and throughput measurement, shared by every runner.

Method (see ../shared/platform-facts.md for why):
- each configuration is timed in a block of `samples` calls after `warmup` untimed calls, never
  interleaved call-by-call with another runtime (two runtimes in one process steal each other's
  cores);
- `trials` blocks per configuration, the block order alternating (A B C, C B A, ...), with a
  settle pause of `settle_s` before each block;
- a monotonic nanosecond clock (time.perf_counter_ns), device synchronisation after every stage
  on CUDA;
- stages: preprocessing, feature_extraction, classification (one pass), and total: the single
  full graph timed on its own pass, so the split costs nothing in the headline number.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np

from .params import BenchParams
from .runners.base import Runner
from .stats import summarize

STAGES = ("preprocessing", "feature_extraction", "classification", "total")


@dataclass
class BlockPlan:
    warmup: int
    samples: int
    trials: int
    settle_s: float


def _batch_at(images: list[np.ndarray], i: int, batch_size: int) -> list[np.ndarray]:
    """The i-th batch of a fixed cycle over the images: every runner sees the same inputs."""
    n = len(images)
    start = (i * batch_size) % n
    idx = [(start + j) % n for j in range(batch_size)]
    return [images[j] for j in idx]


def _time_stages_once(runner: Runner, batch) -> tuple[int, int, int, int]:
    clock = time.perf_counter_ns
    t0 = clock()
    x = runner.preprocess(batch)
    runner.synchronize()
    t1 = clock()
    f = runner.extract_features(x)
    runner.synchronize()
    t2 = clock()
    runner.classify(f)
    runner.synchronize()
    t3 = clock()
    runner.predict(batch)
    runner.synchronize()
    t4 = clock()
    return t1 - t0, t2 - t1, t3 - t2, t4 - t3


def _alternating(runners: list[Runner], trial: int) -> list[Runner]:
    return list(runners) if trial % 2 == 0 else list(reversed(runners))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # mininterval keeps executed notebooks readable (tqdm falls back to text without ipywidgets)
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, mininterval=10)


def latency(runners: list[Runner], images: list[np.ndarray], bench: BenchParams, batch_size: int = 1,
            progress: bool = True, return_samples: bool = False):
    """Per-stage latency statistics (ms) of each runner at `batch_size`.

    Returns {runner.name: {stage: summarize(...)}} for the stages in STAGES, and with
    `return_samples` also the raw per-trial samples {runner.name: {stage: [array per trial]}}.
    """
    samples: dict[str, dict[str, list[np.ndarray]]] = {r.name: {s: [] for s in STAGES} for r in runners}
    total_calls = bench.trials * len(runners) * (bench.samples + bench.warmup)
    with _progress(total_calls, f"latency bs={batch_size}", progress) as bar:
        for trial in range(bench.trials):
            for r in _alternating(runners, trial):
                r.activate()
                time.sleep(bench.settle_s)
                for i in range(bench.warmup):
                    _time_stages_once(r, _batch_at(images, i, batch_size))
                    bar.update()
                block = np.empty((bench.samples, 4), dtype=np.int64)
                for i in range(bench.samples):
                    block[i] = _time_stages_once(r, _batch_at(images, i, batch_size))
                    bar.update()
                for j, stage in enumerate(STAGES):
                    samples[r.name][stage].append(block[:, j] / 1e6)
    stats = {name: {stage: summarize(v) for stage, v in per_stage.items()}
             for name, per_stage in samples.items()}
    return (stats, samples) if return_samples else stats


def throughput(runners: list[Runner], images: list[np.ndarray], bench: BenchParams,
               batch_sizes: list[int] | None = None, progress: bool = True) -> dict[str, dict[str, dict]]:
    """Images per second of the full graph at each batch size.

    For every batch size, each runner runs `trials` alternating blocks of
    max(5, samples // batch_size) batches; images/s = batch_size / median batch latency.
    Returns {runner.name: {str(batch_size): {"images_per_s", "images_per_s_ci95", "latency_ms"}}}.
    """
    batch_sizes = batch_sizes or bench.batch_sizes
    out: dict[str, dict[str, dict]] = {r.name: {} for r in runners}
    for bs in batch_sizes:
        n = max(5, bench.samples // bs)
        warm = max(1, min(bench.warmup, n))
        per_runner: dict[str, list[np.ndarray]] = {r.name: [] for r in runners}
        with _progress(bench.trials * len(runners) * (n + warm), f"throughput bs={bs}", progress) as bar:
            for trial in range(bench.trials):
                for r in _alternating(runners, trial):
                    r.activate()
                    time.sleep(bench.settle_s)
                    for i in range(warm):
                        r.predict(_batch_at(images, i, bs))
                        bar.update()
                    block = np.empty(n)
                    for i in range(n):
                        batch = _batch_at(images, i, bs)
                        t0 = time.perf_counter_ns()
                        r.predict(batch)
                        r.synchronize()
                        block[i] = (time.perf_counter_ns() - t0) / 1e6
                        bar.update()
                    per_runner[r.name].append(block)
        for name, blocks in per_runner.items():
            s = summarize(blocks)
            out[name][str(bs)] = {
                "images_per_s": bs * 1000.0 / s["median"],
                "images_per_s_ci95": [bs * 1000.0 / s["ci95"][1], bs * 1000.0 / s["ci95"][0]],
                "latency_ms": s,
            }
    return out


def peak_memory() -> dict:
    """Peak resident memory of this process so far (and CUDA max allocated when present)."""
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "method": "ru_maxrss of the notebook process (includes everything loaded before)"}
    try:
        import torch

        if torch.cuda.is_available():
            out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    except Exception:
        pass
    return out
