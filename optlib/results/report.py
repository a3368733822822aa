"""Every record of a target side by side: the comparison table, the HTML report and thesis-ready
tables (CSV, LaTeX, Markdown) under outputs/<target>/.

Speed-ups here are the records' own: each was measured against the reference in the same run as
the configuration (results.records.Record.speedups). Records of different chapters were timed in
different processes, so their latencies are not divided by each other here.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd

from ..core import paths
from ..core.io import json_safe, write_text_atomic
from .compare import fmt_ci, operating_point_columns, training_memory_table
from .records import Record, load_records
from .values import to_plain

REFERENCE = "pytorch-fp32"


def comparison_table(records: list[Record], reference: str = REFERENCE) -> pd.DataFrame:
    """One row per record (VOCABULARY's column names): latency_ms with its interval and p95_ms, the
    same-run speedup against `reference` with its interval (blank when the record was not measured
    against it), images_per_s at the largest batch, size, peak memory, accuracy and its change
    against the reference. Skipped and failed records keep their row with the reason."""
    rows = []
    for r in records:
        row = {"name": r.name, "notebook": r.notebook, "technique": r.technique, "backend": r.backend,
               "precision": r.precision, "status": r.status, "reason": r.reason or "",
               "device": (r.device or {}).get("kind"), "threads": (r.device or {}).get("threads"),
               "kernels": r.kernels.label if r.kernels else ""}
        t = r.latency
        if r.ok and t is not None:
            row.update(batch_size=r.batch_size, latency_ms=t.median, latency_ci95_ms=fmt_ci(t.ci95, 3), p95_ms=t.p95,
                       p99_ms=t.p99, low_confidence=",".join(t.low_confidence))
            s = r.speedup(reference)
            if s is not None:
                row.update(speedup=s.value, speedup_ci95=fmt_ci(s.ci95))
            if r.throughput:
                big = max(r.throughput.values(), key=lambda v: v.batch_size)
                row.update(throughput_batch_size=big.batch_size, images_per_s=big.images_per_s)
            if r.accuracy:
                row["accuracy"] = r.accuracy["accuracy"]
            if r.fidelity is not None:
                f = r.fidelity
                row.update(accuracy_change=f.accuracy_change,
                           accuracy_change_ci95=fmt_ci(f.accuracy_change_ci95, percent=True), flips=f.flips,
                           top1_agreement=f.top1_agreement, max_abs_diff=f.max_abs_diff, **operating_point_columns(r))
            elif r.name == reference:
                row["accuracy_change"] = 0.0
            if r.memory is not None:
                row["peak_memory_mb"] = r.memory.peak_bytes / 1e6
        if r.size_bytes:
            row["size_mb"] = r.size_bytes / 1e6
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.assign(_failed=df["status"] != "ok").sort_values(["_failed", "name"]).drop(columns="_failed")
    return df.reset_index(drop=True)


def write_tables(df: pd.DataFrame, target: str) -> dict[str, Path]:
    out_dir = paths.target_dir(target) / "tables"
    written = {"csv": out_dir / "comparison.csv", "tex": out_dir / "comparison.tex",
               "md": out_dir / "comparison.md"}
    cols = [c for c in ("name", "precision", "kernels", "latency_ms", "latency_ci95_ms", "p95_ms", "speedup",
                        "speedup_ci95", "size_mb", "accuracy", "accuracy_change", "flips") if c in df.columns]
    ok = df[df["status"] == "ok"][cols] if "status" in df else df[cols]
    write_text_atomic(df.to_csv(index=False), written["csv"])
    write_text_atomic(ok.to_latex(index=False, float_format="%.3f", na_rep="--"), written["tex"])
    write_text_atomic(ok.to_markdown(index=False, floatfmt=".3f"), written["md"])
    return written


def _fig_to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(target: str, reference: str = REFERENCE) -> Path:
    """Write outputs/<target>/report.html (self-contained) and the tables; return the HTML path."""
    from .figures import latency_accuracy

    records = load_records(target)
    if not records:
        raise FileNotFoundError(f"{paths.results_dir(target)}: no result records; run the notebooks first "
                                f"(python -m optlib run --target {target})")
    df = comparison_table(records, reference)
    tables = write_tables(df, target)
    fig = latency_accuracy(records)
    img = _fig_to_base64(fig)
    fig.savefig(paths.figures_dir(target) / "latency_vs_accuracy.png", dpi=110)
    ok = [r for r in records if r.ok]
    env = ok[0].environment if ok else {}
    not_ok = [r for r in records if not r.ok]
    body = [
        f"<h1>Optimization report: target <code>{html.escape(target)}</code></h1>",
        "<p>Every number below was measured by the notebooks of this run on the machine named here. "
        "latency_ms: the full model's time per call, median of per-trial medians, with a bootstrap 95% interval; "
        f"speedup: against <code>{reference}</code> timed in the same run as the configuration (median of per-trial "
        "ratios, interval over trials); accuracy_change: paired bootstrap interval against the reference.</p>",
        "<h2>Machine</h2><pre>" + html.escape(json.dumps(
            {k: env.get(k) for k in ("cpu", "cpu_count", "gpu", "platform", "git_commit", "timestamp",
                                     "versions")}, indent=2)) + "</pre>",
        "<h2>Comparison</h2>",
        df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="cmp"),
        f'<h2>Latency vs accuracy</h2><img src="data:image/png;base64,{img}"/>',
    ]
    training = training_memory_table(records)
    if not training.empty:
        from .figures import training_memory

        tables["training_csv"] = write_text_atomic(training.to_csv(index=False),
                                                   paths.target_dir(target) / "tables" / "training_memory.csv")
        fig = training_memory([r for r in ok if r.technique == "training-memory"])
        body += ["<h2>Training memory</h2><p>Peak memory of a training step above the resting process (measured in a "
                 "child process per configuration and batch size), the estimate, step time with its interval (same-run "
                 "interleaved trials) and the largest batch under the budget.</p>",
                 training.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="cmp"),
                 f'<img src="data:image/png;base64,{_fig_to_base64(fig)}"/>']
    if not_ok:
        body.append("<h2>Skipped or failed</h2><ul>" + "".join(
            f"<li><b>{html.escape(r.name)}</b> ({r.status}): {html.escape(str(r.reason))}</li>" for r in not_ok) + "</ul>")
    body.append("<h2>Tables</h2><ul>" + "".join(
        f"<li>{html.escape(str(p.relative_to(paths.target_dir(target))))}</li>" for p in tables.values()) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;} table.cmp{border-collapse:collapse;"
             "font-size:12px} table.cmp td,table.cmp th{padding:3px 6px;border-bottom:1px solid #ddd;}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>optlib report {html.escape(target)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    return write_text_atomic(page, paths.target_dir(target) / "report.html")


def summary(target: str, fmt: str = "table", reference: str = REFERENCE) -> str:
    records = load_records(target)
    if fmt == "json":
        return json.dumps(json_safe([to_plain(r) for r in records]), indent=2)
    df = comparison_table(records, reference)
    if fmt == "csv":
        return df.to_csv(index=False)
    if df.empty:
        return f"no records under {paths.results_dir(target)}"
    cols = [c for c in ("name", "status", "precision", "latency_ms", "latency_ci95_ms", "p95_ms", "speedup",
                        "speedup_ci95", "images_per_s", "size_mb", "accuracy", "accuracy_change", "flips",
                        "reason") if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
