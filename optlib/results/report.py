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
from .compare import across_targets, record_row, training_memory_table
from .records import Record, load_records
from .values import to_plain

REFERENCE = final_round.REFERENCE  # one definition: the final round's


def comparison_table(records: list[Record], reference: str = REFERENCE) -> pd.DataFrame:
    """One row per record (compare.record_row with its identity columns), the speed-up against
    `reference` as `speedup` / `speedup_ci95` (blank when the record was not measured against it),
    measured records first, by name. Skipped and failed records keep their row with the reason."""
    rows = [record_row(r, [reference], identity=True) for r in records]
    df = pd.DataFrame(rows).rename(columns={f"speedup vs {reference}": "speedup",
                                            f"speedup_ci95 vs {reference}": "speedup_ci95"})
    if not df.empty:
        if "accuracy_change" in df:
            df.loc[(df["name"] == reference) & df["accuracy_change"].isna(), "accuracy_change"] = 0.0
        df = df.assign(_failed=df["status"] != "ok").sort_values(["_failed", "name"]).drop(columns="_failed")
    return df.reset_index(drop=True)


def save_table(df: pd.DataFrame, target: str, name: str, index: bool = False, short: pd.DataFrame | None = None,
               formats: tuple[str, ...] = ("csv", "tex", "md")) -> dict[str, Path]:
    """outputs/<target>/tables/<name>.csv (every column of `df`), .tex (LaTeX booktabs) and .md;
    the LaTeX and Markdown versions show `short` when given (a page-wide selection)."""
    out_dir = paths.target_dir(target) / "tables"
    short = df if short is None else short
    text = {"csv": lambda: df.to_csv(index=index),
            "tex": lambda: short.to_latex(index=index, float_format="%.3f", na_rep="--"),
            "md": lambda: short.to_markdown(index=index, floatfmt=".3f")}
    return {f"{name}_{fmt}": write_text_atomic(text[fmt](), out_dir / f"{name}.{fmt}") for fmt in formats}


def write_tables(df: pd.DataFrame, target: str) -> dict[str, Path]:
    """tables/comparison.*: every record's columns in the CSV, the measured ones' main columns in
    the LaTeX and Markdown tables."""
    cols = [c for c in ("name", "precision", "kernels", "latency_ms", "latency_ci95_ms", "p95_ms", "speedup",
                        "speedup_ci95", "size_mb", "accuracy", "accuracy_change", "accuracy_change_ci95", "verdict",
                        "flips") if c in df.columns]
    ok = df[df["status"] == "ok"][cols] if "status" in df else df[cols]
    return save_table(df, target, "comparison", short=ok)


def _fig_to_base64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


CHAPTER_COLUMNS = ("name", "precision", "kernels", "threads", "latency_ms", "latency_ci95_ms", "speedup", "speedup_ci95",
                   "images_per_s", "size_mb", "accuracy", "accuracy_change", "accuracy_change_ci95", "verdict",
                   "flips", "contended")  # contended: only where a record was timed on a busy machine
HTML_TABLE = dict(float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="cmp")


TRAINING_COLUMNS = ("configuration", "batch", "peak_mb", "resting_mb", "above_resting_mb", "cut_vs_plain", "step_ms",
                    "speed_vs_plain", "speed_vs_plain_ci95")


def _chapter_table(group: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    """A chapter's rows with its own quantities and no empty column: chapter 08's training
    configurations show peak and resting memory, the cut against the same precision without
    checkpointing and the step-time ratio (per batch size); the others latency, speed-up and accuracy."""
    if not training.empty and set(group["name"]) <= set(training["configuration"]):
        group = training[training["configuration"].isin(set(group["name"]))]
        columns = TRAINING_COLUMNS
    else:
        columns = CHAPTER_COLUMNS
    return group[[c for c in columns if c in group and group[c].notna().any() and (group[c] != "").any()]]


def _machine(env: dict) -> list[tuple[str, str]]:
    """The environment as rows of a table: what the numbers were measured on and with."""
    rows = [(k, str(env[k])) for k in ("cpu", "cpu_count", "gpu", "platform", "git_commit", "timestamp") if env.get(k)]
    return rows + [(name, str(version)) for name, version in (env.get("versions") or {}).items()]


def render_html(target: str, reference: str = REFERENCE) -> Path:
    """Write outputs/<target>/report.html (self-contained, rendered from templates/report.html.j2)
    and the tables; return the HTML path. Order: the answer and the final round, each chapter's
    own records (a few columns; every column is in tables/comparison.csv), training memory, the
    machine, what was skipped and why."""
    import jinja2

    from .figures import latency_accuracy, training_memory

    records = load_records(target)
    if not records:
        raise FileNotFoundError(f"{paths.results_dir(target)}: no result records; run the notebooks first "
                                f"(python -m optlib run --target {target})")
    final = {r.name: r for r in records if r.name.startswith(final_round.PREFIX)}
    records = [r for r in records if r.name not in final]  # the chapters' own records
    df = comparison_table(records, reference)
    tables = write_tables(df, target)
    scatter = latency_accuracy(records)
    scatter.savefig(paths.figures_dir(target) / "latency_vs_accuracy.png", dpi=110)
    ok = [r for r in records if r.ok]
    measured = df[df["status"] == "ok"] if "status" in df else df
    training = training_memory_table(records)
    chapters = [(nb, _chapter_table(group, training).to_html(index=False, **HTML_TABLE))
                for nb, group in measured.groupby("notebook", sort=True)]
    training_ctx = None
    if not training.empty:
        tables.update(save_table(training, target, "training_memory", formats=("csv",)))
        training_ctx = {"table": training.to_html(index=False, **HTML_TABLE),
                        "image": _fig_to_base64(training_memory([r for r in ok if r.technique == "training-memory"]))}
    across = across_targets()
    across_ctx = None
    if not across.empty and across["target"].nunique() >= 2:
        from .figures import across_targets as across_figure

        tables.update(save_table(across, target, "across_targets"))
        fig = across_figure(across)
        fig.savefig(paths.figures_dir(target) / "across_targets.png", dpi=110)
        fig.savefig(paths.figures_dir(target) / "across_targets.svg")
        across_ctx = {"table": across.to_html(index=False, **HTML_TABLE), "image": _fig_to_base64(fig),
                      "targets": ", ".join(sorted(across["target"].unique()))}
    env = jinja2.Environment(loader=jinja2.PackageLoader("optlib.results", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)
    page = env.get_template("report.html.j2").render(
        target=target, reference=reference, final=_final_context(final, target, tables), chapters=chapters,
        data_source=next(((r.extra.get("dataset") or {}).get("source") for r in ok if (r.extra or {}).get("dataset")), None),
        latency_accuracy=_fig_to_base64(scatter), training=training_ctx, across=across_ctx,
        machine=_machine(ok[0].environment if ok else {}), not_ok=[r for r in records if not r.ok],
        tables=[str(p.relative_to(paths.target_dir(target))) for p in tables.values()])
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
    v = r.verdict
    text = (f"**Recommended: {r.extra['final_round']['of']}** ({why}): {s.value:.2f}x [{s.ci95[0]:.2f}, "
            f"{s.ci95[1]:.2f}] the speed of {final_round.REFERENCE} at batch {r.batch_size} in this round"
            + (f", accuracy {f.describe_change()}" if f is not None else "")
            + (f". Verdict: **{v.label}**: {v.why}" if v is not None else "") + ". It is the model in `deploy/`.")
    return _markdown(text)


def _final_context(final: dict[str, Record], target: str, tables: dict) -> dict | None:
    """The headline for the template: the recommendation, the round's findings, and its sections
    (headline table and Pareto figure, stages, throughput, distance to the GEMM peak, attribution,
    break-even), each table also written as CSV, LaTeX and Markdown and each figure as PNG and SVG;
    None when the round has not run."""
    from .figures import factorial, roofline, runtimes, throughput_by_batch
    from .figures import final_round as final_figure

    ref = final.get(final_round.PREFIX + final_round.REFERENCE)
    if ref is None:
        return None
    if not ref.ok:
        return {"error": str(ref.reason)}
    def thesis_table(df: pd.DataFrame, name: str, index: bool = True) -> str:  # CSV, LaTeX booktabs, Markdown
        tables.update(save_table(df, target, name, index=index))
        return df.to_html(index=index, **HTML_TABLE)

    def figure(fig, name: str) -> str:  # PNG for the page and beside it, SVG for a thesis
        fig.savefig(paths.figures_dir(target) / f"{name}.png", dpi=110)
        fig.savefig(paths.figures_dir(target) / f"{name}.svg")
        return _fig_to_base64(fig)

    timed = [r for r in final.values() if r.ok and r.latency is not None]
    budget = ref.extra["final_round"].get("max_accuracy_drop", 0.005)
    compact = thesis_table(final_round.compact_table(final), "final_round_compact")
    figure(final_figure(timed, budget), "final_round")  # with its own key: for a thesis, standalone
    headline_figure = _fig_to_base64(final_figure(timed, budget, key=False))  # numbered as the table beside it
    sections = [{"title": "Every finalist in detail", "table": thesis_table(final_round.headline_table(final), "final_round"),
                 "intro": "Latency with its interval, whether the speed-up clears the same-vs-same noise floor "
                          "(resolved), the same ratio in the finalist's own chapter, flips and McNemar's exact p "
                          "(Holm-adjusted over the finalists), calibration (ECE, Brier), throughput.", "images": []},
                {"title": "Where the time goes (per stage, this round)", "intro": None, "table": None,
                 "images": [figure(runtimes(timed, ref.name), "final_round_stages")]},
                {"title": "Throughput by batch size (this round)", "intro": None, "table": None,
                 "images": [figure(throughput_by_batch(timed), "final_round_throughput")]}]
    roof = final_round.roofline_table(final)
    if not roof.empty:
        sections.append({"title": "Distance to the hardware limit", "table": thesis_table(roof, "roofline"),
                         "intro": "Each finalist's forward pass in operations per second (2 per multiply-add) against "
                                  "the peak of a GEMM of its number type and thread count, timed in this round.",
                         "images": [figure(roofline(roof), "roofline")]})
    effects = final_round.factorial_effects(final)
    if not effects.empty:
        sections.append({"title": "Attribution: runtime x precision x sparsity",
                         "table": thesis_table(effects, "attribution", index=False),
                         "intro": "Main effects as speed-up factors (geometric mean over the other factor) and "
                                  "interactions as compounding ratios (1: the two choices multiply), from the same-run "
                                  "trials of the design's cells, with bootstrap intervals over trials.",
                         "images": [figure(factorial(effects), "attribution")]})
    sections.append({"title": "One-time costs and break-even", "images": [],
                     "table": thesis_table(final_round.break_even_table(final), "break_even"),
                     "intro": "Seconds paid once (from each finalist's own chapter) against the per-image saving in "
                              "this round: the images after which the configuration has paid for itself."})
    return {"error": None, "recommendation": _recommendation(final), "compact": compact, "figure": headline_figure,
            "findings": _markdown(final_round.findings(final)), "sections": sections}


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
                        "speedup_ci95", "images_per_s", "size_mb", "accuracy", "accuracy_change", "accuracy_change_ci95",
                        "verdict", "flips", "reason") if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
        return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="")
