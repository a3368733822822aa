"""The measurement every chapter does: evaluate, time, compare, measure memory, write records.

`measure(runners, images, labels, class_names, params, notebook, ...)` evaluates each runner on
the same images, compares its predictions with the reference's (on the label-free pool too, where
one is given) and judges the accuracy change against the budget (measurement.verdict), times all
runners in alternating
blocks (per-stage latency and throughput), computes the same-run speed-ups against the named
references as paired ratios, optionally times a same-vs-same twin of the reference (the noise
floor), measures each configuration's peak memory in its own child process, and writes one record
per runner. `record_skipped(...)` writes the record of a configuration that cannot run here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..backends.artifacts import relative_to
from ..backends.base import Runner, evaluate
from ..core import env, paths
from ..core.params import Params
from ..results.records import Record, write_record
from ..results.values import NoiseFloor, Throughput, to_plain
from ..workload.outputs import Outputs
from . import gpu_telemetry, load, timing
from .memory import MemoryMeasurementError, measure_memory
from . import verdict as verdicts
from .metrics import classification_metrics, fidelity
from .stats import independent_ratio, paired_ratio, summarize, trials_in_common


@dataclass
class Measurement:
    records: dict[str, Record]
    logits: dict[str, np.ndarray]
    latency_samples: dict[str, dict[str, list[np.ndarray]]]  # raw ms per stage per trial
    eval_seconds: dict[str, float] = field(default_factory=dict)

    def table(self, references: list[str] | None = None) -> pd.DataFrame:
        """The chapter's results table (results.compare.results_table) over these records."""
        from ..results.compare import results_table

        return results_table(list(self.records.values()), references)


def stage_split_error(runner: Runner, images: list[np.ndarray], batch_size: int = 1) -> float:
    """max |classify(extract_features(x)) - predict(x)| over two batches of `batch_size`, the
    latency's, whose shape the stages were timed at (a compiled stage compiled for one batch shape
    would compile again for another: 10-18 s a graph at 32x32 on 2026-12-07); 0 when unsplit."""
    errors = [0.0]
    for i in range(0, min(2 * batch_size, len(images)), batch_size):
        batch = images[i:i + batch_size]
        split = runner.classify(runner.extract_features(runner.preprocess(batch)))
        errors.append(float(np.abs(np.asarray(split, dtype=np.float64) - runner.predict(batch)).max()))
    return max(errors)


def measure(runners: list[Runner], images: list[np.ndarray], labels: np.ndarray, class_names: list[str],
            params: Params, notebook: str, *, reference: str | None = None,
            reference_logits: np.ndarray | None = None, speedups_against: list[str] | None = None,
            noise_floor: bool = False, also_compare: tuple[str, ...] = (), keep_existing: tuple[str, ...] = (),
            discard: tuple[str, ...] = (), data_summary: dict | None = None, outputs: Outputs | None = None,
            known_memory: dict | None = None, pool=None, progress: bool = True) -> Measurement:
    """Measure `runners` on `images` and write one record each.

    reference          the runner (in `runners`, or measured before: then pass `reference_logits`)
                       whose predictions the others are compared with; its record has fidelity None
    speedups_against   runners (in `runners`) every record gets a same-run speed-up against;
                       default: [reference] when it is among the runners
    noise_floor        also time a twin of `reference` in the same trials; the reference record gets
                       the same-vs-same ratio, paired and independent (the twin writes no record)
    also_compare       runners whose predictions every other record is also compared with
                       (extra["fidelity_against"][name], e.g. QAT against PTQ)
    keep_existing      runners whose record is written only when none exists yet (another chapter's
                       reference, e.g. pytorch-fp32 belongs to 01; extra["written_by"] says so)
    discard            runners whose record is not written
    outputs            how logits become decisions (default: from the params: model.num_classes,
                       data.positive_class, model.decision_threshold)
    known_memory       {runner name: Memory} already measured from the same artifact (the final
                       round's finalists): reused, not measured again
    pool               workload.data.Pool: unlabelled independent images; each runner's decisions
                       on them against the reference's go into its fidelity (inference only, at
                       bench.eval_batch_size, once per runner), and from them its verdict
    Each runner's size, artifact, kernels, one-time costs and details (Runner.annotate) go into its
    record; its peak memory is measured in a child process from its artifact (bench.memory).
    """
    outputs = outputs or Outputs.for_data(params.model.num_classes, class_names, params.data.positive_class,
                                          params.model.decision_threshold)
    operating = (params.data.operating_specificity, params.data.operating_sensitivity)
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ValueError(f"measure: runner names must be unique, got {names}")
    in_run = [reference] if reference in names else []
    speedups_against = list(speedups_against) if speedups_against is not None else in_run
    missing = [n for n in speedups_against + list(also_compare) + ([reference] if noise_floor else []) if n not in names]
    if missing:
        raise ValueError(f"measure: {missing} must be among the runners {names} (speed-ups and the noise floor "
                         "are same-run ratios)")
    logits, eval_s = {}, {}
    for r in runners:
        t0 = time.perf_counter()
        logits[r.name] = evaluate(r, images, params.bench.eval_batch_size)
        eval_s[r.name] = time.perf_counter() - t0
    if reference is not None and reference_logits is None:
        if reference not in logits:
            raise ValueError(f"measure: reference {reference!r} is not among the runners {names}; pass reference_logits")
        reference_logits = logits[reference]
    pool_decisions, pool_s = {}, {}
    if pool is not None and reference in names:
        for r in runners:
            t0 = time.perf_counter()
            pool_decisions[r.name] = outputs.predict(evaluate(r, pool.images, params.bench.eval_batch_size))
            pool_s[r.name] = time.perf_counter() - t0

    timed = list(runners)
    twin = None
    if noise_floor:
        twin = next(r for r in runners if r.name == reference).twin(f"{reference}-twin")
        timed.append(twin)
    latency_bs = min(params.bench.batch_sizes)
    quiet = load.wait_for_quiet(params.bench.contention_cores, params.bench.wait_for_quiet_s) \
        if params.bench.wait_for_quiet_s > 0 else None
    monitor = load.LoadMonitor(params.bench.contention_cores)
    paired_with = list(dict.fromkeys(speedups_against + ([reference] if noise_floor else [])))
    lat = timing.latency(timed, images, params.bench, batch_size=latency_bs, progress=progress, monitor=monitor,
                         references=paired_with)
    totals = {n: stages["total"] for n, stages in lat.items()}
    telemetry: dict = {}
    sampler = gpu_telemetry.nvml_sampler_factory() if params.device == "cuda" else None
    # At the latency batch size the throughput is the latency's own full-graph pass (the same calls
    # in blocks of `samples`), not timed again; with GPU telemetry it is, to sample those blocks.
    thr_sizes = [bs for bs in params.bench.batch_sizes if sampler is not None or bs != latency_bs]
    thr = timing.throughput(timed, images, params.bench, batch_sizes=thr_sizes, progress=progress, telemetry=sampler,
                            telemetry_out=telemetry, monitor=monitor, references=paired_with) if thr_sizes else {}
    if latency_bs not in thr:
        thr = {latency_bs: totals, **thr}
    by_metric = [("latency", latency_bs, totals)] + [("throughput", bs, s) for bs, s in thr.items()]

    environment = env.environment(params.hash())
    base = paths.target_dir(params.target)
    records = {}
    for r in runners:
        fid = fidelity(logits[r.name], reference_logits, labels, reference, outputs) \
            if reference is not None and r.name != reference else None
        if fid is not None and r.name in pool_decisions:
            fid.pool = verdicts.pool_agreement(pool_decisions[r.name], pool_decisions[reference], pool.source)
        throughput = {}
        for bs, s in thr.items():
            batch = summarize(s[r.name])
            throughput[str(bs)] = Throughput(bs, bs * 1000.0 / batch.median,
                                             (bs * 1000.0 / batch.ci95[1], bs * 1000.0 / batch.ci95[0]), batch)
        nf = None
        if twin is not None and r.name == reference:
            twin_logits = evaluate(twin, images, params.bench.eval_batch_size)
            nf = NoiseFloor(twin.name, paired_ratio(*trials_in_common(totals[r.name], totals[twin.name]), reference=r.name),
                            independent_ratio(totals[r.name], totals[twin.name], reference=r.name),
                            float(np.abs(twin_logits - logits[r.name]).max()),
                            int((outputs.predict(twin_logits) != outputs.predict(logits[r.name])).sum()))
        # A discarded runner, or a same-run reference whose record another chapter wrote, is not
        # written again; nor is its memory measured again.
        existing = r.name in keep_existing and (paths.results_dir(params.target) / f"{r.name}.json").exists()
        written = r.name not in discard and not existing
        memory, memory_note = (known_memory or {}).get(r.name), None
        if memory is None and written and params.bench.memory:
            if r.artifact is None:
                memory_note = "no artifact to rebuild this configuration from in a child process"
            else:
                try:
                    memory = measure_memory(r.artifact, base, images,
                                            sorted({latency_bs, max(params.bench.batch_sizes)}), r.threads, r.device)
                except MemoryMeasurementError as e:
                    memory_note = str(e)
        accuracy = classification_metrics(logits[r.name], labels, class_names, outputs, operating)
        # what these images can resolve, said once on the reference's record
        resolution = {"resolution": verdicts.resolution(accuracy, len(pool.images) if pool is not None else None)} \
            if r.name == reference else {}
        rec = Record(
            target=params.target, notebook=notebook, name=r.name, technique=r.technique,
            backend=r.backend, precision=r.precision, status="ok",
            device=env.device_info(r.device, r.threads), batch_size=latency_bs,
            latency_ms={stage: summarize(v) for stage, v in lat[r.name].items()}, throughput=throughput,
            speedups=[paired_ratio(*trials_in_common(s[ref], s[r.name]), reference=ref, metric=metric, batch_size=bs)
                      for metric, bs, s in by_metric for ref in speedups_against],
            noise_floor=nf, size_bytes=r.size_bytes, memory=memory,
            accuracy=accuracy, fidelity=fid, kernels=r.kernels, one_time_cost_seconds=dict(r.one_time_cost_seconds),
            artifact=relative_to(r.artifact, base) if r.artifact is not None else None,
            settings={**r.settings(), "threads": r.threads, "settle_s": params.bench.settle_s},
            environment=environment,
            extra={"stage_split": r.stage_split, "stage_split_max_abs_diff": stage_split_error(r, images, latency_bs),
                   "eval_seconds": eval_s[r.name], "bench": vars(params.bench),
                   **({"pool_seconds": pool_s[r.name]} if r.name in pool_s else {}),
                   "stopping": {"rule": timing.stopping_rule(params.bench), "latency_trials": len(totals[r.name]),
                                "calls_per_block": len(totals[r.name][0]) if totals[r.name] else 0,
                                "throughput_trials": {str(bs): len(s[r.name]) for bs, s in thr.items()}},
                   "load": {**monitor.summary(r.name), **({"wait_for_quiet": quiet} if quiet else {})},
                   **({"dataset": data_summary} if data_summary else {}),
                   **({"memory_not_measured": memory_note} if memory_note else {}),
                   **({"memory_reused": "measured from the same artifact before (known_memory)"}
                      if r.name in (known_memory or {}) else {}), **resolution, **r.details},
        )
        rec.verdict = verdicts.verdict_of(rec, params.quant.max_accuracy_drop)
        gpu = {str(bs): gpu_telemetry.combine(per[r.name]).to_dict() for bs, per in telemetry.items() if r.name in per}
        if gpu:  # absent, not zero, where nothing was sampled (CPU runners, no NVML)
            rec.extra["gpu_telemetry"] = gpu
        against = {n: to_plain(fidelity(logits[r.name], logits[n], labels, n, outputs)) for n in also_compare if n != r.name}
        if against:
            rec.extra["fidelity_against"] = against
        records[r.name] = rec
        if not written:
            continue
        if r.name in keep_existing:
            rec.extra["written_by"] = f"{notebook}, as its same-run reference (its own chapter has not run for this target)"
        write_record(rec)
    return Measurement(records, logits, lat, eval_s)


def record_skipped(params: Params, notebook: str, name: str, technique: str, backend: str,
                   precision: str, reason: str, status: str = "skipped", extra: dict | None = None) -> Record:
    """Write the record of a configuration that could not run here, saying why."""
    rec = Record(target=params.target, notebook=notebook, name=name, technique=technique,
                 backend=backend, precision=precision, status=status, reason=reason,
                 device=env.device_info(params.device, params.bench.threads),
                 environment=env.environment(params.hash()), extra=extra or {})
    write_record(rec)
    return rec
