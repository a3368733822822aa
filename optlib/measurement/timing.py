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
- adaptive stopping (`bench.stop_ci_width`, `still_timed`): after `bench.min_trials` trials, a
  configuration leaves the rounds once the 95% intervals of its median (the median of trial
  medians, measurement.stats) and of its speed-ups against the references are narrower than that
  fraction of their values, and after `bench.trials` in any case; the others go on, so a quiet
  configuration does not pay for a noisy one's precision, and the references go on while anything
  is still paired with them. Trial t is one round of adjacent blocks for every configuration that
  ran it: a speed-up pairs the trials both sides ran (measurement.stats.trials_in_common);
- a monotonic nanosecond clock (time.perf_counter_ns), device synchronisation after every stage
  on CUDA;
- stages: preprocessing, feature_extraction, classification (one pass), and total: the single
  full graph timed on its own pass, so the split costs nothing in the headline number; every call
  times the total, every `bench.stage_every`-th call the stages too (the split is a breakdown, the
  total the headline).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np

from ..backends.base import Runner
from ..core.params import BenchParams
from .load import LoadMonitor
from .stats import median_of_trial_medians_ci, min_samples_for, paired_ratio, trials_in_common

STAGES = ("preprocessing", "feature_extraction", "classification", "total")


def _batch_at(images: list[np.ndarray], i: int, batch_size: int) -> list[np.ndarray]:
    """The i-th batch of a fixed cycle over the images: every runner sees the same inputs."""
    n = len(images)
    start = (i * batch_size) % n
    idx = [(start + j) % n for j in range(batch_size)]
    return [images[j] for j in idx]


def _time_total_once(runner: Runner, batch) -> tuple[int, int, int, int]:
    t0 = time.perf_counter_ns()
    runner.predict(batch)
    runner.synchronize()
    return -1, -1, -1, time.perf_counter_ns() - t0


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


def ratio_ci_width(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """The relative 95% interval of the paired speed-up over the trials both ran."""
    r = paired_ratio(*trials_in_common(reference, candidate))
    return (r.ci95[1] - r.ci95[0]) / r.value


def still_timed(active: list[Runner], trials_of: dict[str, list[np.ndarray]], bench: BenchParams,
                references=()) -> list[Runner]:
    """The adaptive stopping rule after a trial: the runners that go on.

    A runner is done after `bench.trials` trials, or (with `bench.stop_ci_width`) after at least
    `bench.min_trials` once its median's 95% interval and the intervals of its speed-ups against the
    `references` are narrower than that fraction of their values. A reference goes on while any
    other runner does: a speed-up needs both sides in the same trials.
    """
    refs = [n for n in references if n in trials_of]

    def settled(name: str) -> bool:
        t = trials_of[name]
        if len(t) >= bench.trials:
            return True
        if bench.stop_ci_width <= 0 or len(t) < bench.min_trials or ci_width(t) > bench.stop_ci_width:
            return False
        return all(ratio_ci_width(trials_of[ref], t) <= bench.stop_ci_width for ref in refs if ref != name)

    going = [r for r in active if not settled(r.name)]
    if any(r.name not in refs for r in going):
        going = [r for r in active if r in going or r.name in refs]
    return going


def stopping_rule(bench: BenchParams) -> str:
    """The rule `latency` and `throughput` followed, in words (for the records)."""
    calls = (f"; latency blocks of about {bench.block_seconds:g} s each (calls_per_block)" if bench.block_seconds
             else f"; latency blocks of {bench.samples} calls")
    if bench.stop_ci_width <= 0:
        return f"fixed: {bench.trials} trials" + calls
    return (f"adaptive: {bench.min_trials} to {bench.trials} trials; a configuration stops once the 95% intervals of "
            f"its median and of its speed-ups against the references are narrower than {bench.stop_ci_width:.1%} of "
            "their values, a reference once no other configuration goes on" + calls)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # mininterval keeps executed notebooks readable (tqdm falls back to text without ipywidgets)
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, mininterval=10)


MAX_CALLS_PER_BLOCK = 20_000


def calls_per_block(warmup_ms, bench: BenchParams) -> int:
    """Timed calls in each of a configuration's latency blocks: `bench.samples`, or with
    `bench.block_seconds` that time over the median of its warm-up calls (`warmup_ms`), but at
    least what a trusted pooled p99 needs over `bench.trials` trials (stats.min_samples_for(99)
    calls in all) and at most MAX_CALLS_PER_BLOCK."""
    if bench.block_seconds is None:
        return bench.samples
    floor = math.ceil(min_samples_for(99) / bench.trials)
    per_call_s = float(np.median(warmup_ms)) / 1e3 if len(warmup_ms) else 0.0
    wanted = math.ceil(bench.block_seconds / per_call_s) if per_call_s > 0 else MAX_CALLS_PER_BLOCK
    return int(min(MAX_CALLS_PER_BLOCK, max(floor, wanted)))


def throughput_calls(bench: BenchParams, batch_size: int) -> tuple[int, int]:
    """(timed, warm-up) batches in each throughput block at `batch_size`: max(5, samples //
    batch_size) timed, ceil(warmup / batch_size) warm-up (at least 1, at most the timed count)."""
    n = max(5, bench.samples // batch_size)
    return n, max(1, min(n, math.ceil(bench.warmup / batch_size)))


def latency(runners: list[Runner], images: list[np.ndarray], bench: BenchParams, batch_size: int = 1,
            progress: bool = True, monitor: LoadMonitor | None = None,
            references: tuple[str, ...] | list[str] = ()) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per-stage latency samples (ms) of each runner at `batch_size`; `monitor` notes other
    processes' CPU use over each timed block (measurement.load); `references`: the runners the
    others' speed-ups are taken against (the stopping rule, `still_timed`). Every call times the
    full graph (`total`); every `bench.stage_every`-th call also times the stages before it.

    Returns {runner.name: {stage: [one array per trial, of `calls_per_block` values]}} for the stages in
    STAGES; trial t of every runner comes from the same round of adjacent blocks (a runner the
    stopping rule let go has fewer trials, the first ones).
    """
    samples: dict[str, dict[str, list[np.ndarray]]] = {r.name: {s: [] for s in STAGES} for r in runners}
    calls: dict[str, int] = {}  # per runner, fixed at its first trial (bench.block_seconds) or bench.samples
    total_calls = bench.trials * len(runners) * (bench.samples + bench.warmup)
    settler = _Settler(bench.settle_s)
    active = list(runners)
    with _progress(total_calls, f"latency bs={batch_size}", progress) as bar:
        for trial in range(bench.trials):
            for r in _alternating(active, trial):
                settler.before(r)
                warm_ms = []
                for i in range(max(bench.warmup, 3 if r.name not in calls and bench.block_seconds else 0)):
                    warm_ms.append(_time_stages_once(r, _batch_at(images, i, batch_size))[3] / 1e6)  # the whole call
                    bar.update()
                if r.name not in calls:
                    calls[r.name] = calls_per_block(warm_ms, bench)
                n = calls[r.name]
                block = np.empty((n, 4), dtype=np.int64)
                with monitor.block(r.name) if monitor else contextlib.nullcontext():
                    for i in range(n):
                        once = _time_stages_once if i % bench.stage_every == 0 else _time_total_once
                        block[i] = once(r, _batch_at(images, i, batch_size))
                        bar.update()
                staged = block[:, 0] >= 0
                for j, stage in enumerate(STAGES):
                    samples[r.name][stage].append((block[:, j] if stage == "total" else block[staged, j]) / 1e6)
            active = still_timed(active, {n: v["total"] for n, v in samples.items()}, bench, references)
            if not active:
                break
    return samples


def throughput(runners: list[Runner], images: list[np.ndarray], bench: BenchParams,
               batch_sizes: list[int] | None = None, progress: bool = True, telemetry=None,
               telemetry_out: dict | None = None, monitor: LoadMonitor | None = None,
               references: tuple[str, ...] | list[str] = ()) -> dict[int, dict[str, list[np.ndarray]]]:
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
        n, warm = throughput_calls(bench, bs)
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
                active = still_timed(active, per_runner, bench, references)
                if not active:
                    break
        out[bs] = per_runner
    return out
