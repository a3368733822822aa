"""Comparisons over records: the one row builder (`record_row`) whose views are every results table
(the chapters', the report's, the final round's), the kernels table, the accuracy-budget pick (by
the one verdict rule, measurement.verdict), and the configurations a run cannot tell apart from the
pick.

Column names are results.values.VOCABULARY's; an interval is shown as "[lo, hi]".
"""
from __future__ import annotations

import pandas as pd

from ..measurement.stats import mcnemar_exact_p, paired_ratio, trials_in_common
from ..measurement.verdict import verdict_of
from .records import Record
from .values import to_plain


def fmt_ci(ci, digits: int = 2, percent: bool = False) -> str:
    lo, hi = ci
    return f"[{lo:+.2%}, {hi:+.2%}]" if percent else f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def record_row(r: Record, references: list[str] = (), identity: bool = False) -> dict:
    """Every column any table shows for one record, named as results.values.VOCABULARY names them:
    the one place a record becomes a row (the chapters' results_table, the report's
    comparison_table and the final round's headline_table are views of it). With `identity`, the
    record's name, chapter, technique, backend, precision, status and reason first. Speed-ups are
    `speedup vs <reference>` for each of `references` the record was measured against."""
    row: dict = {}
    if identity:
        row.update(name=r.name, notebook=r.notebook, technique=r.technique, backend=r.backend, precision=r.precision,
                   status=r.status, reason=r.reason or "", device=(r.device or {}).get("kind"),
                   threads=(r.device or {}).get("threads"))
    row["kernels"] = r.kernels.label if r.kernels else ("float" if r.ok else "")
    t = r.latency
    if r.ok and t is not None:
        row.update(batch_size=r.batch_size, latency_ms=t.median, latency_ci95_ms=fmt_ci(t.ci95, 3), p95_ms=t.p95,
                   p99_ms=t.p99, low_confidence=",".join(t.low_confidence))
        for ref in references:
            s = r.speedup(ref)
            if s is not None:
                row[f"speedup vs {ref}"] = s.value
                row[f"speedup_ci95 vs {ref}"] = fmt_ci(s.ci95)
        if r.throughput:
            big = max(r.throughput.values(), key=lambda v: v.batch_size)
            row.update(throughput_batch_size=big.batch_size, images_per_s=big.images_per_s)
        if r.accuracy:
            row["accuracy"] = r.accuracy["accuracy"]
            if "ece" in r.accuracy:  # calibration: can move while top-1 does not
                row.update(ece=r.accuracy["ece"], brier=r.accuracy["brier"])
        f = r.fidelity
        if f is not None:
            row.update(accuracy_change=f.accuracy_change, accuracy_change_ci95=fmt_ci(f.accuracy_change_ci95, percent=True),
                       flips=f.flips, mcnemar_p=mcnemar_exact_p(f.flips_now_correct, f.flips_now_wrong),
                       top1_agreement=f.top1_agreement, max_abs_diff=f.max_abs_diff, **operating_point_columns(r))
            if r.verdict is not None:
                row.update(verdict=r.verdict.label, images_to_resolve=r.verdict.images_to_resolve)
            if f.pool is not None:
                row.update(pool_changed=f.pool.changed, pool_images=f.pool.images,
                           pool_changed_bound=f.pool.changed_share_bound)
        if r.memory is not None:
            row["peak_memory_mb"] = r.memory.peak_bytes / 1e6
        load = (r.extra or {}).get("load") or {}
        if load.get("measured"):
            row["other_cpu_cores"] = load["other_cpu_cores"]
        row["contended"] = contended(r)
    if r.size_bytes:
        row["size_mb"] = r.size_bytes / 1e6
    return row


def view(rows: dict | list, columns: list[str]) -> pd.DataFrame:
    """The rows (a dict of index -> row, or a list of rows) as a table of `columns` in that order,
    leaving out those no row fills (a chapter without a busy machine shows no `contended`)."""
    df = pd.DataFrame.from_dict(rows, orient="index") if isinstance(rows, dict) else pd.DataFrame(rows)
    keep = [c for c in columns if c in df.columns and df[c].notna().any() and (df[c].astype(str) != "").any()]
    return df[keep]


# The chapters' results table: what a chapter discusses, per configuration.
RESULTS_COLUMNS = ["kernels", "latency_ms", "latency_ci95_ms", "p95_ms", "{speedups}", "throughput_batch_size",
                   "images_per_s", "size_mb", "peak_memory_mb", "accuracy", "accuracy_change", "accuracy_change_ci95",
                   "flips", "verdict", "pool_changed_bound", "sensitivity_change", "sensitivity_change_ci95",
                   "specificity_change", "specificity_change_ci95", "contended"]


def with_speedups(columns: list[str], references: list[str]) -> list[str]:
    out = []
    for c in columns:
        out += [x for ref in references for x in (f"speedup vs {ref}", f"speedup_ci95 vs {ref}")] if c == "{speedups}" else [c]
    return out


def results_table(records: list[Record], references: list[str] | None = None) -> pd.DataFrame:
    """One row per measured record (record_row): kernels, latency_ms with its interval, p95_ms, the
    same-run speedup against each of `references` (default: every reference the records were
    compared with), images_per_s at the largest batch size, size_mb, peak_memory_mb, accuracy,
    accuracy_change with its paired interval, flips, the verdict against the budget it was measured
    with and the label-free pool's bound, the operating point's change, and `contended` where the
    machine was busy."""
    ok = [r for r in records if r.ok and r.latency is not None]
    if references is None:
        references = list(dict.fromkeys(s.reference for r in ok for s in r.speedups))
    return view({r.name: record_row(r, references) for r in ok}, with_speedups(RESULTS_COLUMNS, references))


def contended(record: Record) -> str | None:
    """The contention flag (measurement.load): what other processes took while the record was
    timed, when above its threshold; None on a quiet machine or where it was not measured."""
    load = (record.extra or {}).get("load") or {}
    if not load.get("contended"):
        return None
    return f"yes: others took {load['other_cpu_cores']:.2f} of {load.get('cores') or '?'} cores"


def operating_point_columns(record: Record) -> dict:
    """Binary problems: sensitivity_change and specificity_change against the reference at the
    decision threshold, with their paired intervals; {} otherwise."""
    shift = record.fidelity.operating_point if record.fidelity is not None else None
    if shift is None:
        return {}
    return {"sensitivity_change": shift.sensitivity_change,
            "sensitivity_change_ci95": fmt_ci(shift.sensitivity_change_ci95, percent=True),
            "specificity_change": shift.specificity_change,
            "specificity_change_ci95": fmt_ci(shift.specificity_change_ci95, percent=True)}


def operating_points_table(accuracy: dict) -> pd.DataFrame:
    """Binary problems: sensitivity and specificity at the decision threshold, and the operating
    points at the params' targets (sensitivity at a fixed specificity and the reverse), from
    measurement.metrics.classification_metrics(...); empty otherwise."""
    b = (accuracy or {}).get("binary")
    if not b:
        return pd.DataFrame()
    rows = {f"at threshold {b['threshold']:g}": {"sensitivity": b["sensitivity"], "specificity": b["specificity"],
                                                  "threshold": b["threshold"]}}
    for key, point in b.get("operating_points", {}).items():
        value, achieved = point["value"], point.get("achieved")
        sens, spec = (value, achieved) if key.startswith("sensitivity") else (achieved, value)
        rows[key.replace("_", " ") + f" {point['target']:g}"] = {"sensitivity": sens, "specificity": spec,
                                                                  "threshold": point["threshold"]}
    return pd.DataFrame(rows).T


def latency_table(record: Record) -> pd.DataFrame:
    """One row per stage of a record: latency_ms with its interval, the pooled tail percentiles,
    mean, std, min, max, calls and any percentile flagged as resting on too few calls."""
    rows = {}
    for stage, t in (record.latency_ms or {}).items():
        rows[stage] = {"latency_ms": t.median, "latency_ci95_ms": fmt_ci(t.ci95, 3), "p90_ms": t.p90, "p95_ms": t.p95,
                       "p99_ms": t.p99, "mean_ms": t.mean, "std_ms": t.std, "min_ms": t.min, "max_ms": t.max,
                       "calls": t.count, "trials": t.trials, "low_confidence": ", ".join(t.low_confidence)}
    return pd.DataFrame(rows).T


def throughput_table(record: Record) -> pd.DataFrame:
    return pd.DataFrame({t.batch_size: {"images_per_s": t.images_per_s, "images_per_s_ci95": fmt_ci(t.images_per_s_ci95, 1),
                                        "batch_latency_ms": t.batch_latency_ms.median}
                         for t in (record.throughput or {}).values()}).T.rename_axis("batch_size")


def one_time_costs(records: list[Record]) -> pd.DataFrame:
    """Seconds paid once per configuration (export, calibration, compile, fine-tune, ...)."""
    return pd.DataFrame({r.name: r.one_time_cost_seconds for r in records if r.one_time_cost_seconds}).T


def kernels_table(records: list[Record]) -> pd.DataFrame:
    """What each configuration really executed: label, low-precision share, and the operator or
    module counts behind it."""
    rows = {}
    for r in records:
        if r.kernels is None:
            continue
        ev = r.kernels.evidence
        row = {"kernels": r.kernels.label, "share": r.kernels.share}
        row.update({f"exec {k}": v for k, v in ev.get("integer_ops", {}).items()})
        row.update({f"exec float {k}": v for k, v in ev.get("float_compute_ops", {}).items()})
        row.update({f"exec {k}": v for k, v in ev.get("qdq_ops", {}).items()})
        if "quantized_modules" in ev:
            row["quantized modules"] = sum(ev["quantized_modules"].values())
        if "onednn_int8_kernel_calls" in ev:
            row["oneDNN int8 kernel calls"] = ev["onednn_int8_kernel_calls"]
        rows[r.name] = row
    return pd.DataFrame(rows).T.fillna("")


def budget_table(records: dict[str, Record], max_accuracy_drop: float, candidates: list[str]) -> pd.DataFrame:
    """Every candidate against the accuracy budget, fastest first: latency_ms, the accuracy change
    with Newcombe's paired interval, flips, the verdict (measurement.verdict.judge: within / worse /
    unresolved), the evidence that decided it, the labelled images that would resolve an
    unresolved one, and the label-free pool's bound where it was measured."""
    rows = {}
    for name in candidates:
        r = records[name]
        v = verdict_of(r, max_accuracy_drop)
        f = r.fidelity
        rows[name] = {"latency_ms": r.latency.median,
                      "accuracy_change": f.accuracy_change if f else 0.0,
                      "accuracy_change_ci95": fmt_ci(f.accuracy_change_ci95, percent=True) if f else "reference",
                      "flips": f.flips if f else 0,
                      "verdict": v.label if v else "reference",
                      "images_to_resolve": v.images_to_resolve if v else None,
                      "pool_changed_bound": v.pool_changed_share_bound if v else None,
                      "within_budget": v is None or v.outcome == "within",
                      "why": v.why if v else "the reference itself"}
    return pd.DataFrame(rows).T.sort_values("latency_ms") if rows else pd.DataFrame()


def budget_choice(m, max_accuracy_drop: float, candidates: list[str], path) -> tuple[str | None, pd.DataFrame, list[str]]:
    """A chapter's accuracy-budget pick (04 and 06): the fastest of `candidates` (by latency_ms) whose
    verdict is `within` (the one rule, measurement.verdict.within_budget), the budget_table, and the
    candidates within the budget that the same-run latency cannot tell apart from it; written to
    `path` (JSON) with every candidate's verdict and the evidence that decided it.
    `m`: the chapter's measurement.experiment.Measurement."""
    from ..core.io import write_json_atomic

    table = budget_table(m.records, max_accuracy_drop, candidates)
    ok = table[table["within_budget"].astype(bool)] if len(table) else table
    best = ok.index[0] if len(ok) else None
    ties = indistinguishable(m.latency_samples, best, list(ok.index)) if best else []
    write_json_atomic({"max_accuracy_drop": max_accuracy_drop, "chosen": best, "indistinguishable_in_speed": ties,
                       "rule": "fastest latency_ms whose verdict is within: its paired accuracy-change interval "
                               "(Newcombe) lies above -max_accuracy_drop, or the label-free pool's exact bound on the "
                               "changed share is at most max_accuracy_drop (not for fine-tuned models)",
                       "verdicts": {n: to_plain(verdict_of(m.records[n], max_accuracy_drop)) for n in candidates},
                       "candidates": table.drop(columns="why").reset_index(names="name").to_dict(orient="records")
                       if len(table) else []}, path)
    return best, table, ties


def same_run_ratio(latency_samples: dict, reference: str, candidate: str):
    """The paired latency ratio reference / candidate from one measure call's raw samples
    (measurement.experiment.Measurement.latency_samples): > 1 when the candidate is faster."""
    return paired_ratio(*trials_in_common(latency_samples[reference]["total"], latency_samples[candidate]["total"]),
                        reference=reference)


def indistinguishable(latency_samples: dict, best: str, candidates: list[str]) -> list[str]:
    """Those of `candidates` whose same-run latency ratio against `best` has an interval containing 1."""
    return [n for n in candidates if n != best and not same_run_ratio(latency_samples, best, n).excludes_one()]


def training_memory_table(records: list[Record]) -> pd.DataFrame:
    """Chapter 08's records, one row per configuration and batch size: the step's peak above the
    resting process, the whole peak and the resting process (MB, measured in a child process), the estimate and its
    activation error, the cut against the same precision without checkpointing, step time with its
    interval, training images per second, the paired speed against that reference, gradients equal,
    and the largest batch under the budget."""
    def mb(b):
        return None if b is None else b / 1e6

    def ci(interval, digits):
        return fmt_ci(interval, digits) if interval else ""

    rows = []
    for r in records:
        t = (r.extra or {}).get("training")
        if not r.ok or r.technique != "training-memory" or not t:
            continue
        plain, search = t.get("plain"), t.get("largest_batch")
        for row in t["rows"]:
            rows.append({"configuration": r.name, "batch": row["batch_size"], "status": row["status"],
                         "above_resting_mb": mb(row["above_resting_bytes"]), "peak_mb": mb(row["peak_bytes"]),
                         "resting_mb": mb(row.get("resting_bytes")),
                         "estimate_mb": mb(row["estimate_step_bytes"]),
                         "activation_estimate_error": row.get("estimate_error"), "cut_vs_plain": row.get("cut_vs_plain"),
                         "step_ms": row.get("step_ms"), "step_ms_ci95": ci(row.get("step_ms_ci95"), 0),
                         "images_per_s": row.get("images_per_s"), "speed_vs_plain": row.get(f"speed_vs_{plain}"),
                         "speed_vs_plain_ci95": ci(row.get(f"speed_vs_{plain}_ci95"), 2),
                         "grads_equal": t["gradients"].get("equal"),
                         "largest_batch": search["fits"] if search else None})
    return pd.DataFrame(rows)


def across_targets(targets: list[str] | None = None, reference: str = "pytorch-fp32") -> pd.DataFrame:
    """Configurations measured on several targets, side by side: one row per (target,
    configuration) whose name was measured on at least two targets, with the target's device (its
    reference's), the configuration's own (an ONNX Runtime CPU session on a GPU target says so), the
    model, batch-1 latency and its same-run speed-up against that target's own `reference` (each
    from its chapter's run on its own machine: ratios compare across targets, latencies only say
    what each machine took). `targets`: default every target with a params file in params/ (the
    machines' targets and users' own, except CI's `smoke`) and a measured `reference` record."""
    from ..core import paths
    from .records import load_records

    if targets is None:
        root = paths.output_root()
        targets = sorted(d.name for d in root.iterdir() if d.name != "smoke" and paths.params_file_for(d.name).is_file()
                         and (d / "results" / f"{reference}.json").is_file()) if root.is_dir() else []
    rows = []
    for t in targets:
        records = [r for r in load_records(t) if r.ok and r.latency is not None and not r.name.startswith("final-")]
        ref = next((r for r in records if r.name == reference), None)
        if ref is None:
            continue
        for r in records:
            s = r.speedup(reference) if r.name != reference else None
            dev = r.device or {}
            rows.append({"target": t, "target_device": (ref.device or {}).get("name") or (ref.device or {}).get("kind"),
                         "configuration": r.name, "device": dev.get("name") or dev.get("kind"),
                         "threads": dev.get("threads"), "model": (ref.extra.get("model") or {}).get("arch"),
                         "batch_size": r.batch_size, "latency_ms": r.latency.median,
                         "speedup": 1.0 if r.name == reference else (s.value if s else None),
                         "speedup_ci95_low": s.ci95[0] if s else None, "speedup_ci95_high": s.ci95[1] if s else None})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    shared = df.groupby("configuration")["target"].nunique()
    df = df[df["configuration"].isin(shared[shared >= 2].index) & df["speedup"].notna()]
    return df.sort_values(["configuration", "target"]).reset_index(drop=True)
