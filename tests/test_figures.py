"""Figures that print: on crowded input (many configurations sharing an accuracy change and nearly
the same latency, long names) no two drawn texts of a figure overlap, measured from the rendered
figure's text boxes (matplotlib's window extents), and every point's number is in the key."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from optlib.results import figures  # noqa: E402
from optlib.results.records import Record  # noqa: E402
from optlib.results.values import Fidelity, LatencySummary, Ratio, Throughput  # noqa: E402

NAMES = ["pytorch-fp32", "onnxruntime-fp32", "openvino-fp32", "openvino-bf16", "openvino-int8-nncf",
         "onnxruntime-int8-static-minmax", "onnxruntime-int8-static-minmax-1thread", "qat-int8", "pt2e-int8",
         "structured-l2-80-iter3-onnxruntime-int8-1thread", "structured-l2-80-iter3-onnxruntime-int8",
         "structured-l2-80-iter3-openvino-int8", "structured-l2-80-iter3-pytorch-fp32",
         "structured-l2-global-50-onnxruntime-int8", "unstructured-l1-global-90-onnxruntime-fp32",
         "compile-bf16-freezing", "compile-fp32-freezing", "torchscript-fp32", "pytorch-fp16", "pytorch-bf16"]


def _summary(ms: float) -> LatencySummary:
    return LatencySummary(ms, (ms * 0.95, ms * 1.06), "bootstrap", ms, ms, ms, ms, 0.0, ms, ms, 100, 6)


def _record(i: int, name: str) -> Record:
    # crowded: groups of five share one accuracy change and lie within 3% of each other's latency
    ms = 8.0 / (1 + i // 5 * 3) * (1 + 0.006 * (i % 5))
    change = [0.0, 0.001, -0.001, 0.003][i // 5 % 4]
    fid = Fidelity("pytorch-fp32", 0.99, 5, 0.005, 2, 3, 0.1, 0.01, change, (change - 0.004, change + 0.004))
    return Record(target="t", notebook="99_comparison", name=name, technique="x", backend="onnxruntime",
                  precision="int8", batch_size=1, latency_ms={s: _summary(ms / 3) for s in
                                                              ("preprocessing", "feature_extraction", "classification")}
                  | {"total": _summary(ms)},
                  throughput={str(b): Throughput(b, b * 1e3 / ms, (b * 900 / ms, b * 1100 / ms), _summary(ms * b))
                              for b in (1, 8, 32)},
                  speedups=[Ratio(8.0 / ms, (7.5 / ms, 8.5 / ms), "pytorch-fp32", "paired", 6, "latency", 1)],
                  accuracy={"accuracy": 0.93 + change, "per_class": {"normal": {"recall": 0.9}, "opacity": {"recall": 0.95}}},
                  fidelity=None if i == 0 else fid,
                  extra={"pruning": {"macs_speedup": 1.0 + i % 4 * 0.01}, "final_round": {"of": name}})


@pytest.fixture(scope="module")
def crowded():
    return [_record(i, n) for i, n in enumerate(NAMES)]


def _numbers_and_key(fig) -> tuple[list[str], str]:
    """The numbers on the plot, and the key: the longest text of the panel beside it."""
    key = max((t.get_text() for t in fig.axes[1].findobj(Text)), key=len)
    return [t.get_text() for t in fig.axes[0].texts], key


def test_overlap_check_finds_overlapping_labels():
    """The check itself: two labels drawn on one spot overlap; the same labels apart do not."""
    plt = figures._plt()
    fig, ax = plt.subplots()
    ax.annotate("configuration-a", (0.5, 0.5))
    ax.annotate("configuration-b", (0.5, 0.5))
    assert ("configuration-a", "configuration-b") in figures.overlapping_texts(fig)
    fig2, ax2 = plt.subplots()
    ax2.annotate("configuration-a", (0.1, 0.1))
    ax2.annotate("configuration-b", (0.6, 0.8))
    assert figures.overlapping_texts(fig2) == []
    fig3, ax3 = plt.subplots(figsize=(4, 3))  # tick labels crowding each other are found too
    ax3.set_xticks(range(12), [f"configuration-{i}" for i in range(12)])
    assert ("configuration-0", "configuration-1") in figures.overlapping_texts(fig3)
    ax3.set_xlim(20, 30)  # ticks outside the view are not drawn, so they cannot overlap
    assert figures.overlapping_texts(fig3) == []
    ax3.set_title("a title far too long for a figure four inches wide, cut off at both of its ends")
    assert figures.clipped_texts(fig3) == ["a title far too long for a figure four inches wide, cut off at both of its ends"]
    plt.close("all")


@pytest.mark.parametrize("kind", ["final_round", "latency_accuracy", "predicted_vs_measured"])
def test_point_figures_number_every_point_without_overlap(crowded, kind):
    if kind == "final_round":
        fig = figures.final_round(crowded, 0.005)
    elif kind == "latency_accuracy":
        fig = figures.latency_accuracy(crowded)
    else:
        fig = figures.predicted_vs_measured(crowded, {r.name: "pytorch-fp32" for r in crowded})
    assert figures.overlapping_texts(fig) == [] and figures.clipped_texts(fig) == []
    numbers, key = _numbers_and_key(fig)
    n = len(crowded)
    assert sorted(numbers, key=int) == [str(i) for i in range(1, n + 1)]
    assert all(f"{i:>2}  " in key for i in range(1, n + 1)) and all(name in key for name in NAMES)
    if kind != "predicted_vs_measured":  # numbered fastest first
        first = key.splitlines()[0]
        assert first.endswith(min(crowded, key=lambda r: r.latency.median).name)
    # every number sits inside the plot
    ax = fig.axes[0]
    box = ax.get_window_extent(fig.canvas.get_renderer())
    for t in ax.texts:
        b = t.get_window_extent(fig.canvas.get_renderer())
        assert box.x0 <= b.x0 and b.x1 <= box.x1 and box.y0 <= b.y0 and b.y1 <= box.y1
    figures._plt().close(fig)


def test_bar_line_and_table_figures_have_no_overlapping_text(crowded):
    roof = pd.DataFrame({"mmacs": [500.0] * 10 + [50.0] * 10, "achieved_gops": np.linspace(10, 12, 20),
                         "peak_of": ["fp32", "int8"] * 10, "threads": [2] * 20,
                         "peak_gops": [100.0, 400.0] * 10}, index=NAMES)
    effects = pd.DataFrame({"effect": ["runtime", "precision", "sparsity", "runtime x precision"] * 2,
                            "square": ["pytorch->onnxruntime", "onnxruntime->openvino"] * 4,
                            "factor": [1.3, 2.0, 3.1, 0.8] * 2, "ci95_low": [1.2, 1.9, 2.9, 0.7] * 2,
                            "ci95_high": [1.4, 2.1, 3.3, 0.9] * 2})
    across = pd.DataFrame({"configuration": NAMES * 2, "target": ["cpu"] * 20 + ["edge"] * 20,
                           "target_device": ["Xeon"] * 20 + ["Xeon, 1 thread"] * 20, "speedup": np.linspace(1, 30, 40),
                           "speedup_ci95_low": np.linspace(0.9, 28, 40), "speedup_ci95_high": np.linspace(1.1, 32, 40)})
    sens = pd.DataFrame({"node": [f"/layer{i}/conv{j}" for i in range(1, 5) for j in range(1, 6)],
                         "sqnr_db": np.linspace(20, 40, 20)})
    drawn = {"roofline": figures.roofline(roof), "factorial": figures.factorial(effects),
             "across_targets": figures.across_targets(across), "runtimes": figures.runtimes(crowded, "pytorch-fp32"),
             "throughput_by_batch": figures.throughput_by_batch(crowded), "sensitivity": figures.sensitivity(sens),
             "per_class_recall": figures.per_class_recall(crowded[:6])}
    un = pd.DataFrame([{"criterion": c, "scope": sc, "finetuned": ft, "sparsity": sp, "accuracy": 0.9 - sp / 10}
                       for c in ("l1", "random") for sc in ("global", "layer") for ft in (False, True)
                       for sp in (0.3, 0.5, 0.7, 0.9)])
    st = pd.DataFrame([{"criterion": c, "scope": "global", "round_to": 8, "ratio": r, "accuracy": 0.9 - r / 10,
                        "accuracy_before_finetune": 0.8 - r / 5} for c in ("l2", "taylor") for r in (0.25, 0.5, 0.75)])
    rec = pd.DataFrame([{"model": "l2-80-iter3", "step": k, "accuracy_before_finetune": 0.8, "accuracy_after_finetune": 0.9}
                        for k in (1, 2, 3)])
    drawn["pruning_accuracy"] = figures.pruning_accuracy(un, st, rec, 0.93, 0.935)
    training = []
    for i, name in enumerate(["train-fp32", "train-fp32-ckpt-block", "train-bf16", "train-bf16-ckpt-block"]):
        rows = [{"status": "ok", "batch_size": b, "above_resting_bytes": b * (4 - i) * 1e6, "estimate_step_bytes": b * 4e6,
                 "resting_bytes": 3e8, "peak_bytes": 3e8 + b * 4e6, "step_ms": b * 2.0, "step_ms_ci95": (b * 1.9, b * 2.1),
                 "images_per_s": 500.0} for b in (32, 64, 128, 256)]
        training.append(Record(target="t", notebook="08_training_memory", name=name, technique="training-memory",
                               backend="pytorch", precision="fp32", extra={"training": {"rows": rows}}))
    drawn["training_memory"] = figures.training_memory(training, 1.5)
    names10 = [f"class-{i}" for i in range(10)]
    drawn["confusion"] = figures.confusion({"class_names": names10, "confusion_matrix": (np.eye(10, dtype=int) * 480 + 7).tolist()})
    study = pd.DataFrame([{"method": m, "size": n, "seed": k, "accuracy_change": -0.001 * k, "flips": k + n % 7,
                           "sqnr_db": 30.0 + k} for m in ("minmax", "entropy", "percentile") for n in (1, 10, 100, 500)
                          for k in range(3)])
    drawn["calibration_study"] = figures.calibration_study(study)
    drawn["stage_latency"] = figures.stage_latency(crowded[3], np.r_[np.random.default_rng(0).gamma(9, 0.1, 1000), 40.0])
    binary = []
    for r in crowded[:8]:
        b = Record.from_dict(r.to_dict())
        fpr = np.linspace(0, 1, 50)
        b.accuracy = {**b.accuracy, "binary": {"roc": {"fpr": fpr.tolist(), "tpr": np.sqrt(fpr).tolist()}, "auroc": 0.97,
                                               "sensitivity": 0.93, "specificity": 0.96, "positive_class": "opacity"}}
        binary.append(b)
    drawn["roc"] = figures.roc(binary)
    for name, fig in drawn.items():
        assert figures.overlapping_texts(fig) == [], name
        assert figures.clipped_texts(fig) == [], name
    # the throughput legend lies outside the data
    fig = drawn["throughput_by_batch"]
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert ax.get_legend().get_window_extent(r).x0 >= ax.get_window_extent(r).x1
    # every line tells itself apart in the legend: no two share colour and dash
    styles = [(line.get_color(), line.get_linestyle()) for line in ax.get_lines()]
    assert len(styles) == len(crowded) > len(figures.COLORS) and len(set(styles)) == len(styles)
    figures._plt().close("all")


def test_the_first_screens_figure_is_numbered_as_the_table_beside_it(crowded):
    """Without its own key the headline figure's numbers are the compact table's '#' column: the
    point numbered k is the configuration in the table's row k."""
    from optlib.results import final_round as fr

    final = {}
    for r in crowded:
        copy = Record.from_dict(r.to_dict())
        copy.name = fr.PREFIX + r.name
        copy.extra = {**copy.extra, "final_round": {"of": r.name, "notebook": "04_int8_ptq", "own_run": {}}}
        for s in copy.speedups:
            s.reference = fr.PREFIX + s.reference
        final[copy.name] = copy
    table = fr.compact_table(final)
    fig = figures.final_round(list(final.values()), 0.005, key=False)
    assert len(fig.axes) == 1 and figures.overlapping_texts(fig) == []
    by_name = {r.extra["final_round"]["of"]: r for r in final.values()}
    for t in fig.axes[0].texts:
        name = table.index[table["#"] == int(t.get_text())][0]
        r = by_name[name]
        change = r.fidelity.accuracy_change * 100 if r.fidelity else 0.0
        assert t.xy == pytest.approx((r.latency.median, change))
    figures._plt().close(fig)
