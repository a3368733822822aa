"""The comparison chapter's final round: the finalists reloaded from their artifacts and re-timed
together, so every ratio of the headline table comes from one run.

Records of different chapters were timed in different processes at different times, and this
machine drifts between runs (eager FP32 at 7.5, 11.0 and 14.7 ms in three runs of one day), so
their latencies cannot be divided by each other. The final round measures every finalist in the
same alternating trials (the same images, threads and device), with a same-vs-same twin of the
reference for the noise floor; each finalist's record is `final-<name>`, notebook 99, with
extra["final_round"] naming the record it re-times and why it was chosen.

What a latency includes: `total` is one `Runner.predict` call on a list of decoded images, so it
covers preprocessing (resize, normalisation, the tensor or array the runtime takes), the forward
pass and the copy of the logits into a NumPy array; what the timing loop adds around that call is
measured with a runner that does nothing (`harness_overhead`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..backends.artifacts import load_runner, resolved
from ..backends.base import Runner
from ..core import paths
from ..measurement import roofline, timing
from ..measurement.stats import bootstrap_ci, holm, summarize
from ..measurement.verdict import resolution_statement, within_budget
from .compare import fmt_ci, record_row, view
from .records import Record, load_records

PREFIX = "final-"
REFERENCE = "pytorch-fp32"
ALSO_AGAINST = "onnxruntime-fp32"  # a second same-run reference where it exists
NOT_CHOSEN = "neither a reference, the budget pick, named, nor its chapter's fastest"


@dataclass
class Finalist:
    record: Record
    why: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return PREFIX + self.record.name


def _speed(r: Record) -> float | None:
    s = r.speedup(REFERENCE)
    return s.value if s is not None else (1.0 if r.name == REFERENCE else None)


def choose_finalists(records: list[Record], device: str, max_accuracy_drop: float, named: list[str] | None = None,
                     limit: int = 10, factorial: bool = True) -> tuple[list[Finalist], dict[str, str]]:
    """The configurations the final round re-times, and those left out with the reason.

    Candidates are measured records of this device with an artifact. Chosen, in this order: the
    references (pytorch-fp32, onnxruntime-fp32); the accuracy-budget pick (the largest own-run
    speed-up against pytorch-fp32 whose verdict is within: measurement.verdict.within_budget);
    `named` (comparison.finalists); each chapter's fastest against pytorch-fp32 in its own run,
    fastest first, until `limit`, if it beat pytorch-fp32 there (CPU chapter 07's QDQ graph on
    ONNX Runtime, 0.76x on 2026-12-06, cost the round a minute and told nothing); with
    `factorial`, the cells of `factorial_design` (beyond `limit`: the design needs them all).
    ValueError naming comparison.finalists for a name that is not a candidate."""
    left_out: dict[str, str] = {}
    candidates: dict[str, Record] = {}
    for r in records:
        if not r.ok or r.latency is None or r.name.startswith(PREFIX):
            continue
        if r.artifact is None:
            left_out[r.name] = "no artifact to rebuild it from"
        elif (r.device or {}).get("kind") != device:
            left_out[r.name] = f"measured on {(r.device or {}).get('kind')}, this run is on {device}"
        else:
            candidates[r.name] = r
    chosen: dict[str, Finalist] = {}

    def choose(name: str, why: str) -> None:
        chosen.setdefault(name, Finalist(candidates[name])).why.append(why)

    for ref in (REFERENCE, ALSO_AGAINST):
        if ref in candidates:
            choose(ref, "reference")
    within = [r for r in candidates.values() if _speed(r) is not None and r.name != REFERENCE
              and r.fidelity is not None and within_budget(r, max_accuracy_drop)]
    if within:
        choose(max(within, key=_speed).name,
               f"largest own-run speed-up whose verdict against the {max_accuracy_drop:.1%} budget is within")
    for name in named or []:
        if name not in candidates:
            raise ValueError(f"'comparison.finalists': {name!r} is not a measured configuration with an artifact on "
                             f"{device} ({left_out.get(name, 'no such record')}); have: {sorted(candidates)}")
        choose(name, "named in comparison.finalists")
    by_chapter: dict[str, Record] = {}
    for r in candidates.values():
        if r.name != REFERENCE and _speed(r) is not None and (
                r.notebook not in by_chapter or _speed(r) > _speed(by_chapter[r.notebook])):
            by_chapter[r.notebook] = r
    for r in sorted(by_chapter.values(), key=_speed, reverse=True):
        if r.name in chosen:
            chosen[r.name].why.append(f"fastest of {r.notebook} in its own run")
        elif _speed(r) <= 1.0:
            left_out[r.name] = (f"fastest of {r.notebook}, but no faster than {REFERENCE} in its own run "
                                f"({_speed(r):.2f}x): nothing to re-time")
        elif len(chosen) < limit:
            choose(r.name, f"fastest of {r.notebook} in its own run")
        else:
            left_out[r.name] = f"fastest of {r.notebook}, beyond comparison.max_finalists={limit}"
    if factorial:
        for name in factorial_design(candidates)[1].values():
            choose(name, "a cell of the runtime x precision x sparsity design")
            left_out.pop(name, None)
    for name in candidates:
        if name not in chosen and name not in left_out:
            left_out[name] = NOT_CHOSEN
    return list(chosen.values()), left_out


# --- attribution: runtime x precision x sparsity ----------------------------------------------

FACTORS = {"runtime": ("pytorch", "onnxruntime", "openvino"), "precision": ("fp32", "int8"),
           "sparsity": ("dense", "pruned")}
OPENVINO_FP32, OPENVINO_INT8 = "openvino-fp32", "openvino-int8-nncf"  # 02's and 04's names


def factorial_design(candidates: dict[str, Record]) -> tuple[str | None, dict[tuple[str, str, str], str]]:
    """(pruned label, {(runtime, precision, sparsity): record name}) of the configurations that
    exist: the dense references (pytorch-fp32, onnxruntime-fp32), the unpruned ONNX Runtime INT8
    that chapter 06 measured its pruned INT8 graphs against (same calibration recipe and threads),
    and one structured-pruning label's eager FP32, ONNX Runtime FP32 and INT8 configurations: the
    label whose ONNX Runtime INT8 is fastest among those with all three. Eager INT8 of a pruned
    model is not built, so the PyTorch -> ONNX Runtime design is two 2x2 squares sharing the ONNX
    Runtime FP32 cells. Where they exist at the same threads, OpenVINO's dense FP32 (02), dense
    NNCF INT8 (04) and the label's NNCF INT8 (06) add the ONNX Runtime -> OpenVINO squares
    (runtime x precision on the dense model, runtime x sparsity in INT8)."""
    labels = {}
    for name, r in candidates.items():
        if r.technique == "pruning" and (r.extra.get("pruning") or {}).get("kind") == "structured" \
                and name.endswith("-onnxruntime-int8"):
            label = name.removesuffix("-onnxruntime-int8")
            if all(f"{label}-{s}" in candidates for s in ("pytorch-fp32", "onnxruntime-fp32")):
                dense_int8 = [s.reference for s in r.speedups if s.reference in candidates and
                              candidates[s.reference].precision == "int8" and s.reference != name and
                              _threads(candidates[s.reference]) == _threads(r)
                              and candidates[s.reference].technique != "pruning"
                              and candidates[s.reference].backend == "onnxruntime"]
                if dense_int8 and {REFERENCE, ALSO_AGAINST} <= set(candidates):
                    labels[label] = dense_int8[0]
    if not labels:
        return None, {}
    label = min(labels, key=lambda x: candidates[f"{x}-onnxruntime-int8"].latency.median)
    cells = {("pytorch", "fp32", "dense"): REFERENCE, ("onnxruntime", "fp32", "dense"): ALSO_AGAINST,
             ("onnxruntime", "int8", "dense"): labels[label],
             ("pytorch", "fp32", "pruned"): f"{label}-pytorch-fp32",
             ("onnxruntime", "fp32", "pruned"): f"{label}-onnxruntime-fp32",
             ("onnxruntime", "int8", "pruned"): f"{label}-onnxruntime-int8"}
    threads = _threads(candidates[f"{label}-onnxruntime-int8"])
    for cell, name in ((("openvino", "fp32", "dense"), OPENVINO_FP32), (("openvino", "int8", "dense"), OPENVINO_INT8),
                       (("openvino", "int8", "pruned"), f"{label}-openvino-int8")):
        if name in candidates and _threads(candidates[name]) == threads:
            cells[cell] = name
    return label, cells


def _threads(r: Record):
    return (r.device or {}).get("threads")


def factorial_effects(records: dict[str, Record]) -> pd.DataFrame:
    """Main effects and interaction of each complete 2x2 square of the round's design cells
    (`factorial_design`, kept in the reference's record) on log latency, from
    the round's per-trial medians (trial i of every finalist ran in the same alternating round, so
    contrasts are paired per trial), with bootstrap 95% intervals over trials. Shown as factors:
    a main effect is the speed-up of the second level over the first, geometric mean over the
    other factor's levels; the interaction is (speed-up of both together) / (product of the
    speed-ups of each alone): 1 means the two choices compound multiplicatively, below 1 that
    together they give less."""
    ref = records.get(PREFIX + REFERENCE)
    design = ref.extra.get("final_round", {}).get("factorial") if ref is not None and ref.ok else None
    if not design:
        return pd.DataFrame()
    cells = {tuple(c[:3]): c[3] for c in design["cells"]}
    trials = {}
    for cell, name in cells.items():
        r = records.get(PREFIX + name)
        if r is not None and r.ok and r.latency is not None and r.latency.trial_medians:
            trials[cell] = np.log(np.asarray(r.latency.trial_medians, dtype=float))
    rows = []
    names = list(FACTORS)
    steps = {f: list(zip(levels, levels[1:])) for f, levels in FACTORS.items()}  # a runtime to the next
    squares = [(i, j, fixed, a, b, level)
               for i, j in ((0, 2), (1, 2), (0, 1))  # runtime x sparsity, precision x sparsity, runtime x precision
               for fixed in [k for k in range(3) if k not in (i, j)]
               for a in steps[names[i]] for b in steps[names[j]] for level in FACTORS[names[fixed]]]
    for i, j, fixed, a, b, level in squares:
        def cell(x, y):
            c = [None] * 3
            c[i], c[j], c[fixed] = x, y, level
            return tuple(c)
        square = [cell(x, y) for x in a for y in b]
        if not all(c in trials for c in square):
            continue
        n = min(len(trials[c]) for c in square)
        y00, y01, y10, y11 = (trials[c][:n] for c in square)
        fi, fj = names[i], names[j]
        contrasts = {f"{fi}: {a[0]} -> {a[1]}": ((y10 - y00) + (y11 - y01)) / 2,
                     f"{fj}: {b[0]} -> {b[1]}": ((y01 - y00) + (y11 - y10)) / 2,
                     f"{fi} x {fj} (compounding)": (y11 - y01) - (y10 - y00)}
        for effect, per_trial in contrasts.items():
            lo, hi = bootstrap_ci(per_trial, statistic=np.mean)
            rows.append({"square": f"{fi} x {fj} at {names[fixed]} = {level}", "effect": effect,
                         "factor": float(np.exp(-per_trial.mean())),
                         "ci95_low": float(np.exp(-hi)), "ci95_high": float(np.exp(-lo)), "trials": n,
                         "cells": ", ".join(cells[c] for c in square)})
    return pd.DataFrame(rows)


# --- distance to the hardware limit ----------------------------------------------------------

def roofline_table(records: dict[str, Record]) -> pd.DataFrame:
    """Per finalist: multiply-adds of one image (its pruned count, or the dense model's), forward
    latency (feature and head stages; the whole call where the model does not split), achieved
    operations per second, and the share of the GEMM peak of its number type at its thread count
    measured in this run (`roofline.gemm_peaks`, kept in the reference's record)."""
    ref = records.get(PREFIX + REFERENCE)
    info = ref.extra.get("final_round", {}).get("roofline") if ref is not None and ref.ok else None
    if not info:
        return pd.DataFrame()
    dense_macs = info["dense_macs"]
    peaks = {k: {int(t): v for t, v in by.items()} for k, by in info["gemm_peaks_ops"].items()}
    rows = {}
    for name, r in records.items():
        if not r.ok or r.latency is None:
            continue
        fr = r.extra.get("final_round", {})
        stages = r.latency_ms or {}
        forward = (stages["feature_extraction"].median + stages["classification"].median
                   if "feature_extraction" in stages and "classification" in stages else r.latency.median)
        macs = fr.get("macs") or dense_macs
        threads = (r.device or {}).get("threads")
        kind = roofline.number_type(r.precision)
        peak = peaks.get(kind, {}).get(threads)
        ops = roofline.achieved(macs, forward)
        rows[fr.get("of", name)] = {"precision": r.precision, "threads": threads, "mmacs": macs / 1e6,
                                    "forward_ms": forward, "achieved_gops": ops / 1e9, "peak_of": kind,
                                    "peak_gops": peak / 1e9 if peak else None,
                                    "share_of_peak": ops / peak if peak else None}
    return pd.DataFrame(rows).T.rename_axis("configuration").sort_values("forward_ms") if rows else pd.DataFrame()


def rebuild(ch, finalists: list[Finalist], round_info: dict | None = None) -> list[Runner]:
    """Each finalist rebuilt from its artifact (a `failed` record where that fails), named
    final-<name> and described like its own record (size, kernels, one-time costs); `round_info`
    (the harness overhead, who was left out) goes into the reference's record."""
    P = ch.params
    base = paths.target_dir(P.target)
    runners = []
    for f in finalists:
        rec = f.record
        # the threads it was measured with (a 1-thread configuration stays one)
        threads = (rec.device or {}).get("threads") or P.bench.threads
        r = ch.attempt(f.name, rec.technique, rec.backend, rec.precision, lambda a=rec.artifact, n=f.name, t=threads:
                       load_runner(a, base, name=n, threads=t, device=P.device))
        if r is None:
            continue
        r.name, r.technique, r.backend, r.precision = f.name, rec.technique, rec.backend, rec.precision
        r.artifact = resolved(rec.artifact, base)  # measure stores it relative to the target's folder again
        own = rec.speedup(REFERENCE)
        r.annotate(size_bytes=rec.size_bytes, kernels=rec.kernels, one_time_cost_seconds=rec.one_time_cost_seconds,
                   final_round={"of": rec.name, "notebook": rec.notebook, "why": f.why,
                                "macs": (rec.extra.get("pruning") or {}).get("macs_after"),
                                "own_run": {"latency_ms": rec.latency.median, "latency_ci95_ms": list(rec.latency.ci95),
                                            "speedup": own.value if own else None,
                                            "speedup_ci95": list(own.ci95) if own else None,
                                            "timestamp": (rec.environment or {}).get("timestamp")},
                                **((round_info or {}) if rec.name == REFERENCE else {})})
        runners.append(r)
    return runners


def run(ch, records: list[Record], progress: bool = True) -> dict[str, Record]:
    """The whole round for chapter 99: choose the finalists among `records`, time the harness on
    its own, rebuild the finalists and measure them all in the same trials against
    final-pytorch-fp32 (with its twin for the noise floor) and final-onnxruntime-fp32 where it is a
    finalist. Returns the round's records (a failed or skipped reference record when it cannot run)."""
    P, C = ch.params, ch.params.comparison
    ref = PREFIX + REFERENCE
    for old in paths.results_dir(P.target).glob(PREFIX + "*.json"):  # a round's records are of one run only
        old.unlink()
    chosen, left_out = choose_finalists(records, P.device, P.quant.max_accuracy_drop, C.finalists, C.max_finalists,
                                        C.factorial)
    if not any(f.record.name == REFERENCE for f in chosen):
        why = f"{REFERENCE} has no measured record with an artifact on {P.device}: run 01_baseline first"
        return {ref: ch.skip(ref, "baseline", "pytorch", "fp32", why)}
    info = {"harness_overhead": harness_overhead(ch.dataset.test.images, P.bench, min(P.bench.batch_sizes)),
            "left_out": left_out, "max_accuracy_drop": P.quant.max_accuracy_drop}
    label, cells = factorial_design({f.record.name: f.record for f in chosen}) if C.factorial else (None, {})
    if cells:
        info["factorial"] = {"pruned": label, "cells": [[*cell, name] for cell, name in cells.items()]}
    if C.roofline and P.device == "cpu":
        from ..techniques.pruning import macs_and_params

        threads = sorted({(f.record.device or {}).get("threads") or P.bench.threads for f in chosen})
        info["roofline"] = {"dense_macs": macs_and_params(ch.model, ch.sample(1))[0],
                            "gemm_size": C.gemm_size, "gemm_peaks_ops": {
                                k: {str(t): v for t, v in by.items()}
                                for k, by in roofline.gemm_peaks(threads, C.gemm_size).items()}}
    if C.fresh_processes:
        from ..measurement.fresh import fresh_process_latency

        rec = next(f.record for f in chosen if f.record.name == REFERENCE)
        info["between_process"] = fresh_process_latency(
            rec.artifact, paths.target_dir(P.target), ch.dataset.test.images, P.bench, min(P.bench.batch_sizes),
            (rec.device or {}).get("threads") or P.bench.threads, P.device, C.fresh_processes, C.fresh_trials)
    runners = rebuild(ch, chosen, info)
    names = [r.name for r in runners]
    if ref not in names:
        return {ref: next(r for r in load_records(P.target) if r.name == ref)}  # its failed record, with the error
    against = [ref] + ([PREFIX + ALSO_AGAINST] if PREFIX + ALSO_AGAINST in names else [])
    # peak memory belongs to the artifact, measured in a child process in its own chapter: reused, not re-measured
    known = {f.name: f.record.memory for f in chosen if f.record.memory is not None}
    return ch.measure(runners, reference=ref, noise_floor=True, speedups_against=against, known_memory=known,
                      progress=progress).records


class _Empty(Runner):
    """A runner that does nothing: what the timing loop itself costs per call."""
    name, backend, technique, precision = "empty", "none", "harness", "none"

    def preprocess(self, images):
        return images

    def extract_features(self, x):
        return x

    def classify(self, features):
        return features

    def predict(self, images):
        return images


def harness_overhead(images: list[np.ndarray], bench, batch_size: int = 1) -> dict:
    """The latency the harness reports for a runner that does nothing, with the bench settings of
    the round: median and p99 of `total` in microseconds."""
    s = summarize(timing.latency([_Empty(None)], images, bench, batch_size=batch_size, progress=False)["empty"]["total"])
    return {"median_us": s.median * 1e3, "ci95_us": [v * 1e3 for v in s.ci95], "p99_us": s.p99 * 1e3,
            "calls": s.count}


HEADLINE_COLUMNS = ["chapter", "precision", "kernels", "latency_ms", "latency_ci95_ms", "speedup", "speedup_ci95",
                    "resolved", "own_run_speedup", "own_run_speedup_ci95", "accuracy_change", "accuracy_change_ci95",
                    "verdict", "pool_changed_bound", "flips", "mcnemar_p", "mcnemar_p_holm", "ece", "brier", "size_mb",
                    "throughput_batch_size", "images_per_s", "contended"]


def headline_table(records: dict[str, Record]) -> pd.DataFrame:
    """One row per finalist (the configuration it re-times; compare.record_row), fastest first: its
    chapter, kernels, latency_ms with its interval, the speed-up against pytorch-fp32 in this round
    with its interval and whether it clears the noise floor, the same ratio from its own chapter's
    run, accuracy change with its paired interval and its verdict against the budget (with the
    label-free pool's bound where measured), flips and McNemar's exact p on them (and Holm-adjusted
    over the finalists, one family against one reference), the calibration of its probabilities
    (ECE, Brier score; the reference's row for comparison), size, and images/s at the largest batch."""
    ref_name = PREFIX + REFERENCE
    ref = records.get(ref_name)
    floor = ref.noise_floor.paired.ci95 if ref is not None and ref.noise_floor is not None else None
    rows = {}
    for name, r in records.items():
        if not r.ok or r.latency is None:
            continue
        fr = r.extra.get("final_round", {})
        row = record_row(r, [ref_name])
        row["speedup"], row["speedup_ci95"] = row.pop(f"speedup vs {ref_name}", None), row.pop(f"speedup_ci95 vs {ref_name}", None)
        s = r.speedup(ref_name)
        if s is not None:
            row["resolved"] = "reference" if name == ref_name else (
                "" if floor is None else ("yes" if s.ci95[0] > floor[1] or s.ci95[1] < floor[0] else "not resolved"))
        own = fr.get("own_run", {})
        if own.get("speedup") is not None:
            row.update(own_run_speedup=own["speedup"], own_run_speedup_ci95=fmt_ci(own["speedup_ci95"]))
        row["chapter"] = fr.get("notebook")
        row["precision"] = r.precision
        rows[fr.get("of", name)] = row
    df = view(rows, HEADLINE_COLUMNS).rename_axis("configuration")
    if "mcnemar_p" in df:  # one family of tests against the same reference: Holm-adjusted too
        tested = df["mcnemar_p"].notna()
        df.loc[tested, "mcnemar_p_holm"] = holm(df.loc[tested, "mcnemar_p"].astype(float))
        df = df[[c for c in HEADLINE_COLUMNS if c in df.columns]]
    return df.sort_values("latency_ms") if not df.empty else df


def compact_table(records: dict[str, Record]) -> pd.DataFrame:
    """The report's first screen: headline_table cut to what decides (chapter number, speed-up against
    pytorch-fp32 in this round with its interval, accuracy change with its paired interval and its
    verdict, size, kernels), each value and its interval in one cell, fastest first, numbered as
    the points of the headline figure beside it (figures.final_round)."""
    full = headline_table(records)
    if full.empty:
        return full

    def cell(v, ci, fmt):
        return "" if pd.isna(v) else f"{fmt(v)} {ci}" if isinstance(ci, str) and ci else fmt(v)

    out = pd.DataFrame(index=full.index)
    out["#"] = range(1, len(full) + 1)
    out["chapter"] = full["chapter"].map(lambda c: c.split("_")[0] if isinstance(c, str) else c)  # 06_pruning: 06
    out["speed-up [95% CI]"] = [cell(v, c, lambda x: f"{x:.2f}x") for v, c in zip(full["speedup"], full["speedup_ci95"])]
    if "accuracy_change" in full:
        out["accuracy change [95% CI]"] = [cell(v, c, lambda x: f"{x:+.2%}")
                                           for v, c in zip(full["accuracy_change"], full["accuracy_change_ci95"])]
    for col, name in (("verdict", "verdict"), ("size_mb", "size (MB)"), ("kernels", "kernels")):
        if col in full:
            out[name] = full[col].map(lambda v: f"{v:.2f}" if isinstance(v, float) and not pd.isna(v) else v)
    return out.fillna("")


def break_even_table(records: dict[str, Record]) -> pd.DataFrame:
    """Per finalist: what it cost once (export, calibration, compile, fine-tune, engine build ...
    seconds, from its own chapter), what it saves per image against final-pytorch-fp32 in this
    round (batch-1 latency), and after how many images the saving has paid the cost (inf when it
    saves nothing)."""
    ref = records.get(PREFIX + REFERENCE)
    if ref is None or not ref.ok:
        return pd.DataFrame()
    rows = {}
    for name, r in records.items():
        if not r.ok or r.latency is None or name == ref.name:
            continue
        cost = float(sum((r.one_time_cost_seconds or {}).values()))
        saving_ms = ref.latency.median - r.latency.median
        rows[r.extra.get("final_round", {}).get("of", name)] = {
            "one_time_s": cost, "paid_for": ", ".join(sorted(r.one_time_cost_seconds or {})) or "nothing",
            "saving_ms_per_image": saving_ms,
            "break_even_images": cost * 1e3 / saving_ms if saving_ms > 0 else float("inf")}
    return pd.DataFrame(rows).T.rename_axis("configuration")


def pareto_front(latency: dict[str, float], accuracy_change: dict[str, float]) -> list[str]:
    """The configurations no other beats on both axes (lower or equal latency and higher or equal
    accuracy change, better on one), fastest first."""
    front, best = [], -np.inf
    for name in sorted(latency, key=lambda n: (latency[n], -accuracy_change[n])):
        if accuracy_change[name] > best:
            front.append(name)
            best = accuracy_change[name]
    return front


def reference_drift(ref: Record) -> dict | None:
    """The reference's latency in its own chapter's run against this round's: their ratio, whether
    it lies inside the round's same-vs-same noise floor, the hours between the two runs, and (when
    the round timed the reference in fresh processes, measurement.fresh) whether the own run's
    latency lies inside the range of those processes' medians. The twin's floor is within one
    process; the fresh processes show how far one process's speed is from the next, the reason only
    same-run ratios are quoted. None without the own run's latency."""
    own = ref.extra.get("final_round", {}).get("own_run", {})
    if not own.get("latency_ms") or ref.latency is None or ref.noise_floor is None:
        return None
    ratio = own["latency_ms"] / ref.latency.median
    lo, hi = ref.noise_floor.paired.ci95
    hours = None
    if own.get("timestamp") and (ref.environment or {}).get("timestamp"):
        from datetime import datetime

        delta = datetime.fromisoformat(ref.environment["timestamp"]) - datetime.fromisoformat(own["timestamp"])
        hours = delta.total_seconds() / 3600
    out = {"own_run_ms": own["latency_ms"], "round_ms": ref.latency.median, "ratio": ratio,
           "within_noise_floor": lo <= ratio <= hi, "noise_floor": [lo, hi], "hours_apart": hours}
    fresh = ref.extra.get("final_round", {}).get("between_process") or {}
    if fresh.get("medians_ms") and not fresh.get("error"):
        out.update(fresh_processes=fresh["processes"], fresh_min_ms=fresh["min_ms"], fresh_max_ms=fresh["max_ms"],
                   within_fresh_range=fresh["min_ms"] <= own["latency_ms"] <= fresh["max_ms"])
    return out


def findings(records: dict[str, Record]) -> str:
    """The round's discussion, from the records it just wrote."""
    ref = records.get(PREFIX + REFERENCE)
    if ref is None or not ref.ok:
        return "The final round did not run: " + (ref.reason if ref is not None else f"no {REFERENCE} finalist")
    nf = ref.noise_floor.paired
    overhead, left_out = ref.extra["final_round"]["harness_overhead"], ref.extra["final_round"]["left_out"]
    lines = [f"{len(records)} finalist(s) re-timed together in this run against **{ref.name}** "
             f"({ref.latency.median:.3f} ms, 95% CI {ref.latency.ci95[0]:.3f} to {ref.latency.ci95[1]:.3f}); "
             f"same-vs-same noise floor {nf.value:.3f}x [{nf.ci95[0]:.3f}, {nf.ci95[1]:.3f}]."]
    drift = reference_drift(ref)
    if drift is not None:
        apart = f", {drift['hours_apart']:.1f} h earlier" if drift["hours_apart"] is not None else ""
        same = drift["within_noise_floor"]
        lines.append(f"{ref.extra['final_round']['notebook']}'s own run of {REFERENCE}{apart}: "
                     f"{drift['own_run_ms']:.3f} ms, {drift['ratio']:.3f}x this round's, " + (
                         "inside the noise floor: the machine ran at the same speed both times." if same else
                         "outside the noise floor: the same configuration runs at another speed in another run or "
                         "process (drift over time, and between fresh processes on a quiet machine), which is why "
                         "ratios are only taken within one run."))
        if "fresh_processes" in drift:
            lo_ms, hi_ms = drift["fresh_min_ms"], drift["fresh_max_ms"]
            lines.append(f"The reference timed in {drift['fresh_processes']} fresh processes one after the other, just "
                         f"before the round: medians from {lo_ms:.3f} to {hi_ms:.3f} ms ({hi_ms / lo_ms:.3f}x apart), "
                         f"the noise floor between processes; the own run's {drift['own_run_ms']:.3f} ms lies "
                         + ("inside that range." if drift["within_fresh_range"] else
                            "outside that range: the machine's speed itself moved between the two runs."))
    elif (ref.extra.get("final_round", {}).get("between_process") or {}).get("error"):
        lines.append("The reference could not be timed in fresh processes: "
                     + ref.extra["final_round"]["between_process"]["error"])
    ok = [r for r in records.values() if r.ok and r.latency is not None and r.name != ref.name]
    fastest = min([ref, *ok], key=lambda r: r.latency.median)
    share = overhead["median_us"] / 1e3 / fastest.latency.median
    lines.append(f"The harness adds {overhead['median_us']:.1f} us per call (median of {overhead['calls']} calls of a "
                 f"runner that does nothing; p99 {overhead['p99_us']:.1f} us): {share:.2%} of the fastest finalist's "
                 f"latency ({fastest.name}, {fastest.latency.median:.3f} ms).")
    for r in sorted(ok, key=lambda r: r.latency.median):
        s = r.speedup(ref.name)
        own = r.extra["final_round"]["own_run"]
        resolved = s.ci95[0] > nf.ci95[1] or s.ci95[1] < nf.ci95[0]
        line = (f"**{r.extra['final_round']['of']}** ({r.extra['final_round']['notebook']}): {s.value:.2f}x "
                f"[{s.ci95[0]:.2f}, {s.ci95[1]:.2f}] in this round" + ("" if resolved else " (not resolved: the "
                                                                         "interval overlaps the noise floor)"))
        if own.get("speedup") is not None:
            line += f", {own['speedup']:.2f}x [{own['speedup_ci95'][0]:.2f}, {own['speedup_ci95'][1]:.2f}] in its own run"
        if r.fidelity is not None:
            line += f"; accuracy {r.fidelity.describe_change()}"
        if r.verdict is not None:
            line += f", **{r.verdict.label}** the {r.verdict.max_accuracy_drop:.1%} budget"
        lines.append(line + ".")
    res = ref.extra.get("resolution")
    if res:
        lines.append(resolution_statement(res, ref.extra["final_round"].get("max_accuracy_drop", 0.005)))
    roof = roofline_table(records)
    if not roof.empty and roof["share_of_peak"].notna().any():
        share = roof["share_of_peak"].dropna().astype(float)
        peaks = ref.extra["final_round"]["roofline"]["gemm_peaks_ops"]
        lines.append("GEMM peaks timed in this round (GOP/s, by threads): " + "; ".join(
            f"{k.upper()} " + ", ".join(f"{v / 1e9:.0f} at {t}" for t, v in by.items()) for k, by in peaks.items())
            + f". The finalists' forward passes reach {share.min():.1%} to {share.max():.1%} of the peak of their "
              f"number type (highest: {share.idxmax()}); batch-1 convolutions of small images are far from GEMM-bound.")
    effects = factorial_effects(records)
    if not effects.empty:
        lines.append("Attribution (same-run trials, 95% intervals): " + "; ".join(
            f"{e.effect} with {e.square.split(' at ')[1]}: {e.factor:.2f}x [{e.ci95_low:.2f}, {e.ci95_high:.2f}]"
            for e in effects.itertuples()) + ". A compounding ratio below 1 means the choices together give less "
            "than the product of each alone.")
    plain = [n for n, why in left_out.items() if why == NOT_CHOSEN]
    named = sorted((n, why) for n, why in left_out.items() if why != NOT_CHOSEN)
    if named:
        lines.append("Not in the round: " + "; ".join(f"`{n}` ({why})" for n, why in named) + ".")
    if plain:
        lines.append(f"{len(plain)} other measured configuration(s) were {NOT_CHOSEN} (their chapters' tables have "
                     "them; `comparison.finalists` adds any by name).")
    return "\n\n".join(lines)
