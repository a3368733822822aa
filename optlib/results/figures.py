"""The chapters' figures, each a function of records (or a study's table) returning a Figure.

`draw(fn, *args, path=...)` is how a notebook shows one: it saves the figure, shows it, and if
drawing fails prints one line and lets the chapter go on, since a figure must never take a chapter
(and the records it already wrote) down.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .records import Record

# Okabe and Ito's colour-blind-safe palette, the colour cycle of every figure here.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
LINESTYLES = ["-", "--", ":", "-."]
STAGE_COLORS = {"preprocessing": COLORS[5], "feature_extraction": COLORS[2], "classification": COLORS[1],
                "total": "#555555"}
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
         "ytick.labelsize": 8, "figure.titlesize": 10, "svg.fonttype": "none"}
KEY_FONTSIZE = 7


def _plt():
    import matplotlib as mpl
    import matplotlib.pyplot as plt  # inline in Jupyter; Agg when there is no display
    from cycler import cycler

    mpl.rcParams.update({**STYLE, "axes.prop_cycle": cycler(color=COLORS)})
    return plt


def _log(ax, which: str = "x", base: int = 10, ticks=None) -> None:
    """A log axis labelled in plain numbers (1, 2, 5 per decade, or exactly `ticks`) with unlabelled
    minor ticks: the default minor labels crowd each other and the other axis's at the corner."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{which}scale")("log", base=base)
    axis = ax.xaxis if which == "x" else ax.yaxis
    if ticks:
        axis.set_ticks(list(ticks))
    else:
        axis.set_major_locator(LogLocator(base=base, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _title(ax, text: str, width: int = 60) -> None:
    """A title wrapped to `width` characters, so that a narrow panel does not cut it off."""
    import textwrap

    ax.set_title("\n".join(textwrap.wrap(text, width)))


def _with_key(n_points: int, width: float = 11.0, ratios=(2.6, 1.4)):
    """A figure with the plot on the left and a panel for its numbered key and legend on the right,
    tall enough for `n_points` key lines."""
    plt = _plt()
    height = max(4.8, 0.15 * n_points + 1.6)
    fig, (ax, key) = plt.subplots(1, 2, figsize=(width, height), gridspec_kw={"width_ratios": list(ratios)})
    key.axis("off")
    return fig, ax, key


def _numbered(fig, ax, key, points: list[tuple[float, float, str]], handles=None) -> None:
    """Number each point (x, y, name) of `ax` where the number overlaps no other number and stays
    inside the axes (rings of candidate offsets around the point; a thin leader line beyond the
    first ring), then list the numbers with their names in the `key` panel, the legend of `handles`
    under them. Call it last: it lays the figure out first and freezes the axes' limits, so no
    later layout moves what it placed."""
    import math

    from matplotlib.transforms import Bbox

    if key is not None:  # None: the caller lists the numbers (the report's table beside the figure)
        if handles:
            key.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 0.0), fontsize=KEY_FONTSIZE + 1,
                       frameon=False)
        key.text(0.0, 1.0, "\n".join(f"{i:>2}  {name}" for i, (_, _, name) in enumerate(points, 1)),
                 transform=key.transAxes, va="top", ha="left", family="monospace", fontsize=KEY_FONTSIZE)
    fig.tight_layout()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    marker = 4.0  # pixels around each point kept free, so that no number hides a marker
    taken = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker)
             for px, py in ax.transData.transform([(x, y) for x, y, _ in points])] if points else []
    for i, (x, y, _) in enumerate(points, 1):
        chosen = None
        for ring in range(8):
            step = 7 + 7 * ring
            for angle in range(30, 390, 30):
                dx, dy = step * math.cos(math.radians(angle)), step * math.sin(math.radians(angle))
                t = ax.annotate(str(i), (x, y), xytext=(dx, dy), textcoords="offset points", ha="center",
                                va="center", fontsize=KEY_FONTSIZE,
                                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if ring else None)
                box = _text_box(t, renderer)
                if (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1
                        and not any(box.padded(2).overlaps(o) for o in taken)):
                    chosen = box
                    break
                t.remove()
            if chosen is not None:
                break
        if chosen is None:  # no free place within eight rings: on the point itself, flagged by the test
            t = ax.annotate(str(i), (x, y), ha="center", va="center", fontsize=KEY_FONTSIZE)
            chosen = _text_box(t, renderer)
        taken.append(chosen)


def _text_box(t, renderer):
    """The box of a text's characters alone (an annotation's leader line is not text)."""
    from matplotlib.text import Annotation, Text

    if isinstance(t, Annotation):
        t.update_positions(renderer)
    return Text.get_window_extent(t, renderer)


def _drawn_texts(fig) -> list:
    """The texts `fig` draws, non-empty: titles, labels, legends, annotations, keys, and the tick
    labels of the ticks inside each axis's view (the others keep stale, undrawn labels)."""
    from matplotlib.text import Text

    fig.canvas.draw()
    tick_labels, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels |= {id(tick.label1), id(tick.label2)}
            # the ticks inside the view, the ones matplotlib draws (the others keep stale labels)
            drawn += [lab for tick in axis._update_ticks() for lab in (tick.label1, tick.label2)]
    texts = [t for t in fig.findobj(Text) if id(t) not in tick_labels] + drawn
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig, min_px: float = 1.0) -> list[tuple[str, str]]:
    """Every pair of drawn texts of `fig` whose boxes overlap by more than `min_px` pixels each way:
    what a printed figure must not have."""
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), _text_box(t, renderer)) for t in _drawn_texts(fig)]
    pairs = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > min_px and h > min_px:
                pairs.append((a, b))
    return pairs


def clipped_texts(fig, min_px: float = 1.0) -> list[str]:
    """The drawn texts of `fig` that reach more than `min_px` pixels past its edges (a cut title)."""
    renderer = fig.canvas.get_renderer()
    edge = fig.bbox
    out = []
    for t in _drawn_texts(fig):
        b = _text_box(t, renderer)
        if b.x0 < edge.x0 - min_px or b.y0 < edge.y0 - min_px or b.x1 > edge.x1 + min_px or b.y1 > edge.y1 + min_px:
            out.append(t.get_text())
    return out


def draw(fn, *args, path=None, dpi: int = 100, **kwargs) -> None:
    """Draw `fn(*args, **kwargs)`, save it to `path`, show it; on failure print why and go on.
    Returns None, so that a notebook cell ending with it does not show the figure twice."""
    plt = _plt()
    try:
        fig = fn(*args, **kwargs)
    except Exception as e:  # a figure is never worth a failed chapter
        print(f"figure {fn.__name__} not drawn: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        return
    if path is not None:
        fig.savefig(path, dpi=dpi)
    import matplotlib

    if matplotlib.get_backend().lower() == "agg":
        plt.close(fig)
    else:
        plt.show()


def _errors(center: np.ndarray, cis) -> np.ndarray:
    """Error-bar lengths (2, n) from intervals; an interval always contains its estimate here
    (measurement.stats), the clip only guards against rounding."""
    lo = np.array([c[0] for c in cis], dtype=float)
    hi = np.array([c[1] for c in cis], dtype=float)
    return np.clip(np.vstack([center - lo, hi - center]), 0, None)


def data_overview(dataset, spec, per_class: int = 6):
    """Images per class (evaluated and training side) and, for each class (at most ten), the first
    `per_class` evaluated images as the model sees them (preprocessed), one row per class; synthetic
    data says so in the title."""
    from ..workload.data import preprocess

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1, 1.4]})
    dataset.class_balance().plot.bar(ax=axes[0], title="images per class")
    rows, names = [], []
    for c, name in enumerate(dataset.class_names[:10]):
        idx = np.flatnonzero(dataset.test.labels == c)[:per_class]
        if not len(idx):
            continue
        x = preprocess([dataset.test.images[i] for i in idx], spec)[:, 0].numpy()
        tiles = [(t - t.min()) / (np.ptp(t) + 1e-9) for t in x] + [np.zeros_like(x[0])] * (per_class - len(x))
        rows.append(np.concatenate(tiles, axis=1))
        names.append(name)
    axes[1].imshow(np.concatenate(rows, axis=0), cmap="gray")
    size = rows[0].shape[0]
    axes[1].set_yticks([size * (i + 0.5) for i in range(len(names))], names)
    axes[1].set_xticks([])
    synthetic = "phantoms" in dataset.source
    axes[1].set_title(("synthetic phantoms, not medical images: " if synthetic else "") + f"first {per_class} per class",
                      fontsize=9)
    fig.tight_layout()
    return fig


def training_history(history: list[dict]):
    _plt()
    hist = pd.DataFrame(history).set_index("epoch")
    axes = hist.plot(subplots=True, figsize=(8, 3), title="training")
    return np.ravel(axes)[0].figure


def stage_latency(record: Record, total_samples_ms: np.ndarray):
    """Per-stage latency (median with its interval) and the distribution of the total's calls."""
    plt = _plt()
    stages = list(STAGE_COLORS)
    med = np.array([record.latency_ms[s].median for s in stages])
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.5))
    axes[0].bar(stages, med, yerr=_errors(med, [record.latency_ms[s].ci95 for s in stages]), capsize=4,
                color=list(STAGE_COLORS.values()))
    axes[0].set_ylabel("ms (median of trial medians, 95% CI)")
    axes[0].set_title(f"per-stage latency, batch {record.batch_size}")
    total = np.asarray(total_samples_ms)
    hi = np.percentile(total, 99.5) * 1.2  # rare multi-100-ms spikes on shared VMs would hide the shape
    axes[1].hist(total[total <= hi], bins=60, color=STAGE_COLORS["total"])
    if (total > hi).any():
        axes[1].text(0.98, 0.5, f"{(total > hi).sum()} call(s) > {hi:.1f} ms\n(max {total.max():.1f} ms) not shown",
                     transform=axes[1].transAxes, ha="right", fontsize=8)
    for q, ls in ((50, "-"), (95, "--"), (99, ":")):
        axes[1].axvline(np.percentile(total, q), color="red", ls=ls, label=f"p{q}")
    axes[1].set_xlabel("total latency, ms")
    axes[1].set_title(f"distribution of {len(total)} calls")
    axes[1].legend()
    fig.tight_layout()
    return fig


def throughput_by_batch(records: list[Record]):
    """images_per_s against batch size, one line per configuration, with the interval as a band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(11, max(4.0, 0.16 * len(records) + 1.6)))
    for i, r in enumerate(records):  # past eight lines the colours come again, with another dash
        t = sorted(r.throughput.values(), key=lambda v: v.batch_size)
        x = [v.batch_size for v in t]
        color, dash = COLORS[i % len(COLORS)], LINESTYLES[i // len(COLORS) % len(LINESTYLES)]
        ax.plot(x, [v.images_per_s for v in t], marker="o", color=color, linestyle=dash, label=r.name)
        ax.fill_between(x, [v.images_per_s_ci95[0] for v in t], [v.images_per_s_ci95[1] for v in t], color=color,
                        alpha=0.2)
    _log(ax, "x", 2, sorted({v.batch_size for r in records for v in r.throughput.values()}))
    _log(ax, "y")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images_per_s (full model incl. preprocessing)")
    ax.set_title("throughput by batch size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=KEY_FONTSIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside the data
    fig.tight_layout()
    return fig


def runtimes(records: list[Record], reference: str):
    """Per-stage medians (stacked) and the same-run speedup against `reference` with its interval."""
    plt = _plt()
    stages = ["preprocessing", "feature_extraction", "classification"]
    stage_df = pd.DataFrame({r.name: {s: r.latency_ms[s].median for s in stages} for r in records}).T
    ratios = [(r.name, r.speedup(reference)) for r in records if r.speedup(reference) is not None]
    fig, axes = plt.subplots(1, 2, figsize=(13, max(3.5, 0.35 * len(records))))
    stage_df.plot.barh(stacked=True, ax=axes[0], color=[STAGE_COLORS[s] for s in stages])
    _title(axes[0], f"per-stage latency, batch {records[0].batch_size} (ms, medians)", 45)
    axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=3, frameon=False)  # under the bars
    values = np.array([s.value for _, s in ratios])
    axes[1].barh([n for n, _ in ratios], values, xerr=_errors(values, [s.ci95 for _, s in ratios]), capsize=3,
                 color=STAGE_COLORS["feature_extraction"])
    axes[1].axvline(1.0, color="k", lw=0.8)
    _title(axes[1], f"speedup vs {reference} (same run, 95% CI)", 45)
    fig.tight_layout()
    return fig


def sensitivity(table: pd.DataFrame):
    """SQNR of the logits with each layer quantized alone (lower = more sensitive)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, max(3, len(table) * 0.22)))
    table.set_index("node")["sqnr_db"].plot.barh(ax=ax, title="SQNR when quantized alone (lower = more sensitive)")
    ax.invert_yaxis()
    ax.set_xlabel("logit SQNR, dB")
    fig.tight_layout()
    return fig


def calibration_study(study: pd.DataFrame):
    """accuracy_change, flips and logit SQNR against calibration-set size, per method and seed."""
    import seaborn as sns

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    for ax, col, title in zip(axes, ["accuracy_change", "flips", "sqnr_db"],
                              ["accuracy_change vs FP32", "flips", "logit SQNR (dB, higher is better)"]):
        sns.stripplot(data=study, x="size", y=col, hue="method", dodge=True, ax=ax, size=5)
        sns.boxplot(data=study, x="size", y=col, hue="method", ax=ax, fill=False, legend=False, linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("calibration images")
    fig.tight_layout()
    return fig


def per_class_recall(records: list[Record]):
    """Recall per class, one bar per configuration, the legend outside the bars."""
    plt = _plt()
    table = pd.DataFrame({r.name: {c: v["recall"] for c, v in r.accuracy["per_class"].items()} for r in records})
    fig, ax = plt.subplots(figsize=(10, max(3, 0.16 * len(records) + 1.2)))
    table.plot.bar(ax=ax, title="recall per class")
    ax.set_ylim(max(0.0, float(table.values.min()) - 0.1), 1.0)
    ax.legend(fontsize=KEY_FONTSIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return fig


def confusion(accuracy: dict):
    import seaborn as sns

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    names = accuracy["class_names"]
    sns.heatmap(np.array(accuracy["confusion_matrix"]), annot=True, fmt="d", cmap="Blues", xticklabels=names,
                yticklabels=names, cbar=False, ax=ax)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return fig


def roc(records: list[Record]):
    """ROC curves of binary problems, each record's decision threshold marked on its curve."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for r in records:
        b = r.accuracy["binary"]
        ax.plot(b["roc"]["fpr"], b["roc"]["tpr"], label=f"{r.name} (AUROC {b['auroc']:.3f})")
        ax.plot([1 - b["specificity"]], [b["sensitivity"]], "o", color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC (positive: {records[0].accuracy['binary']['positive_class']}; dots: decision threshold)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def latency_accuracy(records: list[Record]):
    """latency_ms (log scale, with its interval) against accuracy, one numbered point per measured
    record (fastest first), the names in the key beside the plot."""
    ok = sorted([r for r in records if r.ok and r.latency is not None and r.accuracy], key=lambda r: r.latency.median)
    fig, ax, key = _with_key(len(ok))
    points = []
    for r in ok:
        t = r.latency
        acc = r.accuracy["accuracy"] * 100
        ax.errorbar([t.median], [acc], xerr=_errors(np.array([t.median]), [t.ci95]), fmt="o", capsize=3, ms=4,
                    color=COLORS[0], alpha=0.8)
        points.append((t.median, acc, r.name))
    _log(ax, "x")
    ax.set_xlabel(f"latency_ms (batch {ok[0].batch_size if ok else '?'}, log scale; bars: 95% CI)")
    ax.set_ylabel("top-1 accuracy, %")
    _title(ax, "Latency vs accuracy (each configuration as measured in its own chapter's run)")
    ax.grid(True, which="both", alpha=0.3)
    _numbered(fig, ax, key, points)
    return fig


def final_round(records: list[Record], max_accuracy_drop: float, key: bool = True):
    """The final round: latency_ms (log scale) against the accuracy change against FP32, both with
    their 95% intervals; the Pareto front joined and marked, the accuracy budget drawn; the points
    numbered fastest first, their names in the key beside the plot, or with `key=False` in the
    table beside the figure (final_round.compact_table numbers its rows alike: the report's first
    screen), the legend then above the plot."""
    from matplotlib.lines import Line2D

    from .final_round import pareto_front

    ok = sorted([r for r in records if r.ok and r.latency is not None], key=lambda r: r.latency.median)
    lat = {r.name: r.latency.median for r in ok}
    acc = {r.name: (r.fidelity.accuracy_change if r.fidelity else 0.0) * 100 for r in ok}
    front = pareto_front(lat, acc)
    if key:
        fig, ax, key_panel = _with_key(len(ok))
    else:
        fig, ax = _plt().subplots(figsize=(6.4, 4.8))
        key_panel = None
    points = []
    for r in ok:
        ci = [v * 100 for v in r.fidelity.accuracy_change_ci95] if r.fidelity else [0.0, 0.0]
        on = r.name in front
        ax.errorbar([lat[r.name]], [acc[r.name]], xerr=_errors(np.array([lat[r.name]]), [r.latency.ci95]),
                    yerr=_errors(np.array([acc[r.name]]), [ci]), fmt="o" if on else "s", capsize=3, ms=4,
                    color=COLORS[3] if on else COLORS[0], alpha=1.0 if on else 0.6)
        points.append((lat[r.name], acc[r.name], r.extra.get("final_round", {}).get("of", r.name)))
    ax.plot([lat[n] for n in front], [acc[n] for n in front], "-", color=COLORS[3], lw=1)
    ax.axhline(-max_accuracy_drop * 100, color="grey", ls="--", lw=1)
    _log(ax, "x")
    ax.set_xlabel(f"latency_ms (batch {ok[0].batch_size if ok else '?'}, log scale; bars: 95% CI)")
    ax.set_ylabel("accuracy change vs FP32, points (95% CI)")
    if key:
        _title(ax, "Final round: every finalist timed in the same run")
    ax.grid(True, which="both", alpha=0.3)
    handles = [Line2D([], [], color=COLORS[3], marker="o", lw=1, label="Pareto front"),
               Line2D([], [], color=COLORS[0], marker="s", lw=0, alpha=0.6, label="not on the front"),
               Line2D([], [], color="grey", ls="--", lw=1, label=f"budget -{max_accuracy_drop:.1%}")]
    if not key:
        ax.legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=3, frameon=False)
    _numbered(fig, ax, key_panel, points, handles if key else None)
    return fig


def pruning_accuracy(unstructured: pd.DataFrame, structured: pd.DataFrame, recovery: pd.DataFrame,
                     reference_accuracy: float, control_accuracy: float | None = None):
    """Accuracy against sparsity (unstructured, per criterion and scope, with and without fine-tuning),
    against the ratio of channels removed (structured, before and after fine-tuning), and per step of
    iterative pruning; the unpruned model (and its fine-tuned dense control) as lines."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    for ax in axes:
        ax.axhline(reference_accuracy, color="k", lw=1, label="FP32 unpruned")
        if control_accuracy is not None:
            ax.axhline(control_accuracy, color="k", ls=":", lw=1, label="dense control (fine-tuned)")
    if len(unstructured):
        for (crit, scope, ft), g in unstructured.groupby(["criterion", "scope", "finetuned"]):
            axes[0].plot(g["sparsity"], g["accuracy"], marker="o", ls="-" if ft else "--",
                         label=f"{crit} {scope}" + (" + fine-tune" if ft else ""))
    axes[0].set(title="unstructured (masks)", xlabel="sparsity of the weights", ylabel="accuracy")
    if len(structured):
        for (crit, scope, rnd), g in structured.groupby(["criterion", "scope", structured["round_to"].fillna(0)]):
            if len(g) < 2:
                continue
            line = axes[1].plot(g["ratio"], g["accuracy"], marker="o", label=f"{crit} {scope} fine-tuned")[0]
            axes[1].plot(g["ratio"], g["accuracy_before_finetune"], marker="x", ls="--", color=line.get_color(),
                         label=f"{crit} {scope} before")
    axes[1].set(title="structured (channels removed)", xlabel="ratio of channels removed", ylabel="accuracy")
    for model, g in recovery.groupby("model") if len(recovery) else []:
        if g["step"].max() > 1:
            axes[2].plot(g["step"], g["accuracy_before_finetune"], marker="x", ls="--", label=f"{model} before fine-tune")
            axes[2].plot(g["step"], g["accuracy_after_finetune"], marker="o", label=f"{model} after fine-tune")
    axes[2].set(title="iterative pruning", xlabel="step", ylabel="accuracy")
    for ax in axes:  # under each panel, outside the data
        ax.legend(fontsize=KEY_FONTSIZE, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def predicted_vs_measured(records: list[Record], references: dict[str, str]):
    """Measured same-run speed-up (with its interval) against the speed-up the MACs predict, for each
    pruned record against the unpruned configuration of the same backend and precision
    (`references`: record name -> reference name); the diagonal is 'as predicted'; the points
    numbered, their names in the key."""
    from matplotlib.lines import Line2D

    pts = []
    for r in records:
        pr = r.extra.get("pruning")
        s = r.speedup(references.get(r.name, "")) if pr else None
        if s is not None:
            pts.append((pr["macs_speedup"], s.value, s.ci95, r.name))
    fig, ax, key = _with_key(len(pts), width=10.5, ratios=(2.2, 1.4))
    for x, y, (lo, hi), name in pts:
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="o", capsize=3, ms=4, color=COLORS[0])
    top = max([p[0] for p in pts] + [p[1] for p in pts] + [1.5])
    ax.plot([0.9, top * 1.05], [0.9, top * 1.05], "k--", lw=1)
    ax.axhline(1, color="grey", lw=0.8)
    ax.set(xlabel="MACs speed-up (dense MACs / pruned MACs)", ylabel="measured speed-up, batch 1 (same run)")
    _title(ax, "predicted against measured")
    _numbered(fig, ax, key, [(x, y, name) for x, y, _, name in pts],
              [Line2D([], [], color="k", ls="--", lw=1, label="as the MACs predict")])
    return fig


def training_memory(records: list[Record], budget_gib: float | None = None):
    """Chapter 08. Left: a training step's peak memory above the resting process (solid, measured
    in child processes) and the estimate (dashed), per configuration; with `budget_gib`, the peak
    the budget leaves above the lowest resting memory. Right: training images per second (same-run
    interleaved steps) with the step time's interval as a band."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.5))
    resting = []
    for i, r in enumerate(records):
        rows = [row for row in r.extra["training"]["rows"] if row["status"] == "ok"]
        if not rows:
            continue
        color = f"C{i % 10}"
        bs = [row["batch_size"] for row in rows]
        left.plot(bs, [row["above_resting_bytes"] / 1e6 for row in rows], marker="o", color=color, label=r.name)
        left.plot(bs, [row["estimate_step_bytes"] / 1e6 for row in rows], ls="--", color=color, alpha=0.7)
        resting += [row["resting_bytes"] for row in rows]
        timed = [row for row in rows if row.get("step_ms")]
        if timed:
            x = [row["batch_size"] for row in timed]
            right.plot(x, [row["images_per_s"] for row in timed], marker="o", color=color, label=r.name)
            right.fill_between(x, [row["batch_size"] / row["step_ms_ci95"][1] * 1e3 for row in timed],
                               [row["batch_size"] / row["step_ms_ci95"][0] * 1e3 for row in timed], color=color, alpha=0.15)
    if budget_gib and resting:
        left.axhline((budget_gib * 1024 ** 3 - min(resting)) / 1e6, color="k", ls=":",
                     label=f"{budget_gib:g} GiB budget minus resting")
    for ax in (left, right):
        _log(ax, "x", 2, sorted({row["batch_size"] for r in records for row in r.extra["training"]["rows"]}))
        ax.set_xlabel("batch size")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("MB above resting (solid measured, dashed estimate)")
    left.set_title("training-step peak memory")
    right.set_ylabel("training images per second")
    right.set_title("training throughput")
    right.legend(*left.get_legend_handles_labels(), fontsize=KEY_FONTSIZE, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


def roofline(table: pd.DataFrame):
    """Achieved operations per second of each finalist's forward pass against its multiply-adds,
    with the GEMM peaks of this run as horizontal lines (one per number type and thread count):
    how far each configuration is from what the matrix units can do. Points numbered, names in the key."""
    from matplotlib.lines import Line2D

    fig, ax, key = _with_key(len(table), width=12)
    colors = {"fp32": COLORS[0], "bf16": COLORS[2], "int8": COLORS[3]}
    handles, points = [], []
    for kind, group in table.groupby("peak_of"):
        ax.scatter(group["mmacs"].astype(float), group["achieved_gops"].astype(float), color=colors.get(kind), zorder=3, s=16)
        handles.append(Line2D([], [], color=colors.get(kind), marker="o", lw=0, label=f"{kind} configurations"))
        points += [(float(row["mmacs"]), float(row["achieved_gops"]), str(name)) for name, row in group.iterrows()]
    peaks = table.dropna(subset=["peak_gops"]).drop_duplicates(["peak_of", "threads"])
    for _, row in peaks.iterrows():
        ls = ":" if row["threads"] == 1 else "--"
        ax.axhline(float(row["peak_gops"]), color=colors.get(row["peak_of"]), lw=1, ls=ls)
        handles.append(Line2D([], [], color=colors.get(row["peak_of"]), lw=1, ls=ls,
                              label=f"{row['peak_of']} GEMM peak, {row['threads']} thread(s)"))
    _log(ax, "x")
    _log(ax, "y")
    ax.set_xlabel("multiply-adds per image (millions)")
    ax.set_ylabel("achieved GOP/s (2 per multiply-add, forward pass)")
    _title(ax, "distance to the GEMM peak of this machine (same run)")
    ax.grid(True, which="both", alpha=0.3)
    _numbered(fig, ax, key, sorted(points), handles)
    return fig


def factorial(effects: pd.DataFrame):
    """Each effect of the runtime x precision x sparsity squares as a factor with its interval
    (log scale, 1 = no effect; for an interaction, 1 = the two choices compound multiplicatively)."""
    plt = _plt()
    labels = [f"{e}\n({s})" for e, s in zip(effects["effect"], effects["square"])]
    values = effects["factor"].astype(float).to_numpy()
    cis = list(zip(effects["ci95_low"].astype(float), effects["ci95_high"].astype(float)))
    fig, ax = plt.subplots(figsize=(8, max(3, 0.6 * len(effects))))
    ax.barh(labels, values, xerr=_errors(values, cis), capsize=3, color="#66c2a5")
    ax.axvline(1.0, color="k", lw=1)
    _log(ax, "x")
    ax.set_xlabel("speed-up factor (main effects) / compounding ratio (interactions), 95% CI")
    ax.set_title("what each choice contributes (same-run trials)")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig


def across_targets(table: pd.DataFrame, most: int = 20):
    """Speed-up against each target's own eager FP32 (same-run, with its interval), one bar per
    target for the configurations measured on several targets (the `most` measured on the most
    targets, then the fastest; the table has them all)."""
    plt = _plt()
    by = table.groupby("configuration").agg(n=("target", "nunique"), best=("speedup", "max"))
    names = sorted(by.sort_values(["n", "best"], ascending=False).index[:most])
    table = table[table["configuration"].isin(names)]
    targets = sorted(table["target"].unique())
    height = 0.8 / len(targets)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.45 * len(names) * max(1, len(targets) / 2))))
    for k, t in enumerate(targets):
        sub = table[table["target"] == t].set_index("configuration")
        ys = [i + k * height for i, n in enumerate(names) if n in sub.index]
        present = [n for n in names if n in sub.index]
        values = sub.loc[present, "speedup"].astype(float).to_numpy()
        cis = [(lo if pd.notna(lo) else v, hi if pd.notna(hi) else v) for v, lo, hi in
               zip(values, sub.loc[present, "speedup_ci95_low"], sub.loc[present, "speedup_ci95_high"])]
        device = sub["target_device"].iloc[0]
        ax.barh(ys, values, height=height, xerr=_errors(values, cis), capsize=2, label=f"{t} ({device})")
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))], names, fontsize=7)
    ax.axvline(1.0, color="k", lw=1)
    _log(ax, "x")
    ax.set_xlabel("speed-up against the target's own eager FP32 (same run, 95% CI)")
    ax.set_title("across targets")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
