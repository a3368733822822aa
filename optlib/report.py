"""Comparison of every record of a target: table, latency-vs-accuracy figure, HTML report and
thesis-ready tables (CSV, LaTeX, Markdown) under outputs/<target>/."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import pandas as pd

from . import paths
from .records import load_records
from .stats import ratio_ci

REFERENCE = "pytorch-fp32"


def _fmt_ci(lo, hi, digits=2) -> str:
    if lo is None or hi is None:
        return ""
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def comparison_table(records: list[dict], reference: str = REFERENCE) -> pd.DataFrame:
    """One row per record: latency p50 (median of trial medians) with CI, p95, speed-up against
    `reference` with a bootstrap interval, throughput at the largest batch, size, accuracy and its
    change against the reference. Skipped / failed records keep their row with the reason."""
    ref = next((r for r in records if r.get("name") == reference and r.get("status") == "ok"), None)
    ref_total = (ref or {}).get("latency_ms", {}).get("total") if ref else None
    rows = []
    for r in records:
        row = {"name": r.get("name"), "technique": r.get("technique"), "backend": r.get("backend"),
               "precision": r.get("precision"), "status": r.get("status"), "reason": r.get("reason") or ""}
        dev = r.get("device") or {}
        row["device"] = dev.get("kind")
        row["kernels"] = (r.get("extra") or {}).get("kernels", "")
        row["threads"] = dev.get("threads")
        total = (r.get("latency_ms") or {}).get("total")
        if r.get("status") == "ok" and total:
            row["batch_size"] = r.get("batch_size")
            row["p50_ms"] = total["median"]
            row["p50_ci95"] = _fmt_ci(*total["ci95"], digits=3)
            row["p95_ms"] = total["p95"]
            row["p99_ms"] = total["p99"]
            row["low_confidence"] = ",".join(total.get("low_confidence", []))
            if ref_total:
                s, (lo, hi) = ratio_ci(ref_total["trial_medians"], total["trial_medians"])
                row["speedup"] = s
                row["speedup_ci95"] = _fmt_ci(lo, hi)
            thr = r.get("throughput_per_s") or {}
            if thr:
                bs = max(thr, key=int)
                row["throughput_bs"] = int(bs)
                row["images_per_s"] = thr[bs]["images_per_s"]
            acc = r.get("accuracy") or {}
            row["accuracy"] = acc.get("accuracy")
            fid = r.get("fidelity")
            if fid:
                row["accuracy_delta"] = fid["accuracy_delta"]
                row["accuracy_delta_ci95"] = _fmt_ci(*fid["accuracy_delta_ci95"], digits=4)
                row["flips"] = fid["flips"]
                row["top1_agreement"] = fid["top1_agreement"]
                row["max_abs_diff"] = fid["max_abs_diff"]
            elif r.get("name") == reference:
                row["accuracy_delta"] = 0.0
        if r.get("size_bytes"):
            row["size_mb"] = r["size_bytes"] / 1e6
        rows.append(row)
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values(["status", "name"], key=lambda s: s.map(lambda v: (v != "ok", v)) if s.name == "status" else s)
    return df.reset_index(drop=True)


def _field(record, key):
    """A field of a Record or of its dict form."""
    return getattr(record, key) if hasattr(record, key) else record[key]


def speedups(records: dict, reference: str) -> pd.DataFrame:
    """Same-run speed-ups of every record against `reference`: batch-latency ratio with a bootstrap
    95% interval (over trial medians) at the latency batch size and at each throughput batch size.

    `records` maps name -> Record (or its dict), all measured in one `measure` call.
    """
    get = _field
    ref = records[reference]
    rows = {}
    for name, r in records.items():
        row = {}
        s, (lo, hi) = ratio_ci(get(ref, "latency_ms")["total"]["trial_medians"],
                               get(r, "latency_ms")["total"]["trial_medians"])
        row[f"latency bs={get(r, 'batch_size')}"] = s
        row[f"latency bs={get(r, 'batch_size')} ci95"] = (lo, hi)
        for bs, t in (get(r, "throughput_per_s") or {}).items():
            rt = get(ref, "throughput_per_s").get(bs)
            if rt:
                s, (lo, hi) = ratio_ci(rt["latency_ms"]["trial_medians"], t["latency_ms"]["trial_medians"])
                row[f"throughput bs={bs}"] = s
                row[f"throughput bs={bs} ci95"] = (lo, hi)
        rows[name] = row
    return pd.DataFrame(rows).T


def fastest_within_budget(records: dict, max_accuracy_drop: float, candidates: list[str]) -> tuple[str | None, pd.DataFrame]:
    """The fastest of `candidates` (by p50 total latency) whose accuracy change against the
    reference stays within the budget *on its whole 95% interval* (lower bound >= -max_drop).

    Returns (name or None, table of every candidate with its verdict).
    """
    get = _field
    rows = {}
    for name in candidates:
        r = records[name]
        fid = get(r, "fidelity") or {}
        lo, hi = fid.get("accuracy_delta_ci95", (0.0, 0.0))
        rows[name] = {"p50_ms": get(r, "latency_ms")["total"]["median"], "accuracy_delta": fid.get("accuracy_delta", 0.0),
                      "ci95_low": lo, "ci95_high": hi, "flips": fid.get("flips", 0),
                      "within_budget": lo >= -max_accuracy_drop,
                      "point_within_budget": fid.get("accuracy_delta", 0.0) >= -max_accuracy_drop}
    df = pd.DataFrame(rows).T.sort_values("p50_ms")
    ok = df[df["within_budget"].astype(bool)]
    return (ok.index[0] if len(ok) else None), df


def latency_accuracy_figure(records: list[dict], reference: str = REFERENCE):
    """Scatter of p50 latency (log scale, with its CI as error bars) against accuracy."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = [r for r in records if r.get("status") == "ok" and (r.get("latency_ms") or {}).get("total")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        t = r["latency_ms"]["total"]
        acc = r["accuracy"]["accuracy"]
        lo, hi = t["ci95"]
        ax.errorbar([t["median"]], [acc * 100], xerr=[[t["median"] - lo], [hi - t["median"]]], fmt="o",
                    capsize=3, label=r["name"])
        ax.annotate(r["name"], (t["median"], acc * 100), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency p50, ms (batch {ok[0]['batch_size'] if ok else '?'}, log scale; bars: 95% CI)")
    ax.set_ylabel("top-1 accuracy, %")
    ax.set_title("Latency vs accuracy")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def _fig_to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


def write_tables(df: pd.DataFrame, target: str) -> dict[str, Path]:
    out_dir = paths.target_dir(target) / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"csv": out_dir / "comparison.csv", "tex": out_dir / "comparison.tex",
               "md": out_dir / "comparison.md"}
    df.to_csv(written["csv"], index=False)
    cols = [c for c in ("name", "precision", "p50_ms", "p50_ci95", "p95_ms", "speedup", "speedup_ci95",
                        "size_mb", "accuracy", "accuracy_delta", "flips") if c in df.columns]
    ok = df[df["status"] == "ok"][cols] if "status" in df else df[cols]
    written["tex"].write_text(ok.to_latex(index=False, float_format="%.3f", na_rep="--"))
    written["md"].write_text(ok.to_markdown(index=False, floatfmt=".3f"))
    return written


def render_html(target: str, reference: str = REFERENCE) -> Path:
    """Write outputs/<target>/report.html (self-contained) and the tables; return the HTML path."""
    records = load_records(target)
    if not records:
        raise FileNotFoundError(f"{paths.results_dir(target)}: no result records; run the notebooks first "
                                f"(python -m optlib run --target {target})")
    df = comparison_table(records, reference)
    tables = write_tables(df, target)
    fig = latency_accuracy_figure(records, reference)
    img = _fig_to_base64(fig)
    fig.savefig(paths.figures_dir(target) / "latency_vs_accuracy.png", dpi=110)
    ok = [r for r in records if r.get("status") == "ok"]
    env = ok[0]["environment"] if ok else {}
    not_ok = [r for r in records if r.get("status") != "ok"]
    body = [
        f"<h1>Optimization report: target <code>{html.escape(target)}</code></h1>",
        "<p>Every number below was measured by the notebooks of this run on the machine named here. "
        "Latency: batch as shown, median of trial medians (ms) with a bootstrap 95% interval; "
        f"speed-up: ratio of medians against <code>{reference}</code> with a bootstrap interval; "
        "accuracy change: paired bootstrap interval against the reference.</p>",
        "<h2>Machine</h2><pre>" + html.escape(json.dumps(
            {k: env.get(k) for k in ("cpu", "cpu_count", "gpu", "platform", "git_commit", "timestamp",
                                     "versions")}, indent=2)) + "</pre>",
        "<h2>Comparison</h2>",
        df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="cmp"),
        f'<h2>Latency vs accuracy</h2><img src="data:image/png;base64,{img}"/>',
    ]
    if not_ok:
        body.append("<h2>Skipped or failed</h2><ul>" + "".join(
            f"<li><b>{html.escape(str(r.get('name')))}</b> ({r.get('status')}): "
            f"{html.escape(str(r.get('reason')))}</li>" for r in not_ok) + "</ul>")
    body.append("<h2>Tables</h2><ul>" + "".join(
        f"<li>{html.escape(str(p.relative_to(paths.target_dir(target))))}</li>" for p in tables.values()) + "</ul>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;} table.cmp{border-collapse:collapse;"
             "font-size:12px} table.cmp td,table.cmp th{padding:3px 6px;border-bottom:1px solid #ddd;}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>optlib report {html.escape(target)}</title>" \
           f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    out = paths.target_dir(target) / "report.html"
    tmp = out.with_suffix(".html.tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out


def summary(target: str, fmt: str = "table", reference: str = REFERENCE) -> str:
    records = load_records(target)
    if fmt == "json":
        return json.dumps(records, indent=2)
    df = comparison_table(records, reference)
    if fmt == "csv":
        return df.to_csv(index=False)
    if df.empty:
        return f"no records under {paths.results_dir(target)}"
    cols = [c for c in ("name", "status", "precision", "p50_ms", "p50_ci95", "p95_ms", "speedup",
                        "speedup_ci95", "images_per_s", "size_mb", "accuracy", "accuracy_delta", "flips",
                        "reason") if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")

