"""Every record of a target side by side: the comparison table, the HTML report and thesis-ready
tables (CSV, LaTeX, Markdown) under outputs/<target>/.

The report opens with chapter 99's final round (results.final_round): the finalists re-timed
together, so its ratios come from one run. Below it, every chapter's records with their own
speed-ups, each measured against the reference in the same run as the configuration
(results.records.Record.speedups); records of different chapters were timed in different processes,
so their latencies are not divided by each other.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

import pandas as pd

from ..core import paths
from ..core.io import json_safe, write_text_atomic
from . import final_round
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
    final = {r.name: r for r in records if r.name.startswith(final_round.PREFIX)}
    records = [r for r in records if r.name not in final]  # the chapters' own records
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
        *_final_section(final, target, tables),
        "<h2>Machine</h2><pre>" + html.escape(json.dumps(
            {k: env.get(k) for k in ("cpu", "cpu_count", "gpu", "platform", "git_commit", "timestamp",
                                     "versions")}, indent=2)) + "</pre>",
        "<h2>Comparison (each configuration as measured in its own chapter's run)</h2>",
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


def _markdown(text: str) -> str:
    """The findings' Markdown subset (paragraphs, **bold**, `code`) as HTML."""
    out = []
    for para in text.split("\n\n"):
        p = html.escape(para)
        p = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", p)
        out.append("<p>" + re.sub(r"`(.+?)`", r"<code>\1</code>", p) + "</p>")
    return "".join(out)


def _recommendation(final: dict[str, Record]) -> str:
    """The answer first: the configuration the deploy folder hands off, what it buys, and why."""
    from .deploy import DeployError, choose

    ref = final[final_round.PREFIX + final_round.REFERENCE]
    try:
        r, why = choose(list(final.values()), ref.extra["final_round"].get("max_accuracy_drop", 0.005))
    except DeployError as e:
        return f"<p><b>No recommendation:</b> {html.escape(str(e))}</p>"
    s, f = r.speedup(ref.name), r.fidelity
    text = (f"**Recommended: {r.extra['final_round']['of']}** ({why}): {s.value:.2f}x [{s.ci95[0]:.2f}, "
            f"{s.ci95[1]:.2f}] the speed of {final_round.REFERENCE} at batch {r.batch_size} in this round"
            + (f", accuracy {f.describe_change()}" if f is not None else "") + ". It is the model in `deploy/`.")
    return _markdown(text)


def _final_section(final: dict[str, Record], target: str, tables: dict) -> list[str]:
    """The headline: the final round's findings, table (also written as CSV, LaTeX and Markdown)
    and Pareto figure; nothing when the round has not run."""
    from .figures import final_round as final_figure
    from .figures import runtimes

    ref = final.get(final_round.PREFIX + final_round.REFERENCE)
    if ref is None:
        return []
    if not ref.ok:
        return [f"<h2>Final round</h2><p>Did not run: {html.escape(str(ref.reason))}</p>"]
    head = final_round.headline_table(final)
    out_dir = paths.target_dir(target) / "tables"
    tables["final_csv"] = write_text_atomic(head.to_csv(), out_dir / "final_round.csv")
    tables["final_tex"] = write_text_atomic(head.to_latex(float_format="%.3f", na_rep="--"), out_dir / "final_round.tex")
    tables["final_md"] = write_text_atomic(head.to_markdown(floatfmt=".3f"), out_dir / "final_round.md")
    timed = [r for r in final.values() if r.ok and r.latency is not None]
    figs = {"final_round": final_figure(timed, ref.extra["final_round"].get("max_accuracy_drop", 0.005)),
            "final_round_stages": runtimes(timed, ref.name)}
    for name, fig in figs.items():  # PNG for the page, SVG for a thesis
        fig.savefig(paths.figures_dir(target) / f"{name}.png", dpi=110)
        fig.savefig(paths.figures_dir(target) / f"{name}.svg")
    costs = final_round.break_even_table(final)
    tables["break_even_csv"] = write_text_atomic(costs.to_csv(), out_dir / "break_even.csv")
    html_table = dict(float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="cmp")
    return ["<h2>Final round: every finalist re-timed in one run</h2>", _recommendation(final),
            _markdown(final_round.findings(final)),
            head.to_html(**html_table), f'<img src="data:image/png;base64,{_fig_to_base64(figs["final_round"])}"/>',
            "<h3>Where the time goes (per stage, this round)</h3>",
            f'<img src="data:image/png;base64,{_fig_to_base64(figs["final_round_stages"])}"/>',
            "<h3>One-time costs and break-even</h3><p>Seconds paid once (from each finalist's own chapter) against "
            "the per-image saving in this round: the images after which the configuration has paid for itself.</p>",
            costs.to_html(**html_table)]


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
