"""Latency and throughput measurement, shared by every runner.

Method:
- each configuration is timed in a block of `samples` calls after `warmup` untimed calls, never
  interleaved call-by-call with another runtime: two runtimes in one process steal each other's
  cores (measured on ResNet18, 2 threads: an eager call right after an ONNX Runtime call took
  23 ms instead of 12 with ORT's thread spinning on, and ORT after eager 5.2 ms instead of 3.0,
  PyTorch's OpenMP threads spinning);
- `trials` blocks per configuration, the block order alternating (A B C, C B A, ...), so that each
  trial times every configuration in adjacent blocks: speed-ups are per-trial ratios
  (measurement.stats.paired_ratio); a settle pause of `settle_s` precedes a block that follows
  another backend's block;
- adaptive stopping (`bench.stop_ci_width`): after `bench.min_trials` trials, a configuration
  leaves the rounds once its 95% interval of its median (the median of trial medians,
  measurement.stats) is narrower than that fraction of the median, and after `bench.trials` in any
  case; the others go on, so a quiet configuration does not pay for a noisy one's precision. Trial
  t is still one round of adjacent blocks for every configuration that ran it: a speed-up pairs
  the trials both sides ran (measurement.stats.trials_in_common);
- a monotonic nanosecond clock (time.perf_counter_ns), device synchronisation after every stage
  on CUDA;
- stages: preprocessing, feature_extraction, classification (one pass), and total: the single
  full graph timed on its own pass, so the split costs nothing in the headline number.
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from ..backends.base import Runner
from ..core.params import BenchParams
from .load import LoadMonitor
from .stats import median_of_trial_medians_ci

STAGES = ("preprocessing", "feature_extraction", "classification", "total")


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


class _Settler:
    """Sleeps `settle_s` before a block whose backend differs from the previous block's."""

    def __init__(self, settle_s: float):
        self.settle_s, self.previous = settle_s, None

    def before(self, runner: Runner) -> None:
        runner.activate()
        if self.previous is not None and self.previous != runner.backend:
            time.sleep(self.settle_s)
        self.previous = runner.backend


def ci_width(trials: list[np.ndarray]) -> float:
    """The relative 95% interval, (high - low) / median, of the median of trial medians (inf with
    no trial yet)."""
    if not trials:
        return math.inf
    median, (lo, hi), _ = median_of_trial_medians_ci(trials)
    return (hi - lo) / median if median > 0 else math.inf


def done(trials: list[np.ndarray], bench: BenchParams) -> bool:
    """The adaptive stopping rule for one configuration after a trial: `bench.trials` reached, or
    at least `bench.min_trials` run and its interval narrower than `bench.stop_ci_width`."""
    if len(trials) >= bench.trials:
        return True
    return bench.stop_ci_width > 0 and len(trials) >= bench.min_trials and ci_width(trials) <= bench.stop_ci_width


def stopping_rule(bench: BenchParams) -> str:
    """The rule `latency` and `throughput` followed, in words (for the records)."""
    if bench.stop_ci_width <= 0:
        return f"fixed: {bench.trials} trials"
    return (f"adaptive: {bench.min_trials} to {bench.trials} trials, a configuration stopping once its 95% interval "
            f"of its median is narrower than {bench.stop_ci_width:.1%} of the median")


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # mininterval keeps executed notebooks readable (tqdm falls back to text without ipywidgets)
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, mininterval=10)


def latency(runners: list[Runner], images: list[np.ndarray], bench: BenchParams, batch_size: int = 1,
            progress: bool = True, monitor: LoadMonitor | None = None) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per-stage latency samples (ms) of each runner at `batch_size`; `monitor` notes other
    processes' CPU use over each timed block (measurement.load).

    Returns {runner.name: {stage: [one array of `samples` values per trial]}} for the stages in
    STAGES; trial t of every runner comes from the same round of adjacent blocks (a runner the
    stopping rule let go has fewer trials, the first ones).
    """
    samples: dict[str, dict[str, list[np.ndarray]]] = {r.name: {s: [] for s in STAGES} for r in runners}
    total_calls = bench.trials * len(runners) * (bench.samples + bench.warmup)
    settler = _Settler(bench.settle_s)
    active = list(runners)
    with _progress(total_calls, f"latency bs={batch_size}", progress) as bar:
        for trial in range(bench.trials):
            for r in _alternating(active, trial):
                settler.before(r)
                for i in range(bench.warmup):
                    _time_stages_once(r, _batch_at(images, i, batch_size))
                    bar.update()
                block = np.empty((bench.samples, 4), dtype=np.int64)
                with monitor.block(r.name) if monitor else contextlib.nullcontext():
                    for i in range(bench.samples):
                        block[i] = _time_stages_once(r, _batch_at(images, i, batch_size))
                        bar.update()
                for j, stage in enumerate(STAGES):
                    samples[r.name][stage].append(block[:, j] / 1e6)
            active = [r for r in active if not done(samples[r.name]["total"], bench)]
            if not active:
                break
    return samples


def throughput(runners: list[Runner], images: list[np.ndarray], bench: BenchParams,
               batch_sizes: list[int] | None = None, progress: bool = True, telemetry=None,
               telemetry_out: dict | None = None,
               monitor: LoadMonitor | None = None) -> dict[int, dict[str, list[np.ndarray]]]:
    """Batch latency samples (ms) of the full graph at each batch size.

    For every batch size, each runner runs alternating blocks of max(5, samples // batch_size)
    batches (up to `trials` of them, fewer by the stopping rule, as in `latency`), each after ceil(warmup /
    batch_size) untimed batches: warm-up counts images, so a large batch is not warmed up for as
    long as it is timed. Returns {batch_size: {runner.name: [one array per trial]}}; images per
    second follow as batch_size / median batch latency (measurement.experiment). With `telemetry`
    (a function returning a fresh measurement.gpu_telemetry.Sampler), each timed block of a GPU
    runner is sampled and its Telemetry appended to telemetry_out[batch_size][runner.name].
    """
    out: dict[int, dict[str, list[np.ndarray]]] = {}
    for bs in batch_sizes or bench.batch_sizes:
        n = max(5, bench.samples // bs)
        warm = max(1, min(n, math.ceil(bench.warmup / bs)))
        per_runner: dict[str, list[np.ndarray]] = {r.name: [] for r in runners}
        settler = _Settler(bench.settle_s)
        with _progress(bench.trials * len(runners) * (n + warm), f"throughput bs={bs}", progress) as bar:
            active = list(runners)
            for trial in range(bench.trials):
                for r in _alternating(active, trial):
                    settler.before(r)
                    for i in range(warm):
                        r.predict(_batch_at(images, i, bs))
                        bar.update()
                    block = np.empty(n)
                    sampler = telemetry().start() if telemetry is not None and r.device == "cuda" else None
                    with monitor.block(r.name) if monitor else contextlib.nullcontext():
                        for i in range(n):
                            batch = _batch_at(images, i, bs)
                            t0 = time.perf_counter_ns()
                            r.predict(batch)
                            r.synchronize()
                            block[i] = (time.perf_counter_ns() - t0) / 1e6
                            bar.update()
                    if sampler is not None and telemetry_out is not None:
                        telemetry_out.setdefault(bs, {}).setdefault(r.name, []).append(sampler.stop(images=n * bs))
                    per_runner[r.name].append(block)
                active = [r for r in active if not done(per_runner[r.name], bench)]
                if not active:
                    break
        out[bs] = per_runner
    return out
