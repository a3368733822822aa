"""Accuracy of one runner, and fidelity of one runner against a reference (sklearn-backed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps
from sklearn import metrics as skm

from ..results.values import Fidelity, OperatingPointShift
from ..workload.outputs import Outputs
from .verdict import METHOD as PAIRED_METHOD
from .verdict import PairedCounts, paired_change_ci


def accuracy_ci(correct: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean of a 0/1 vector."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_resamples, len(correct)))
    means = correct[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _rate(hits: np.ndarray, of: np.ndarray) -> float:
    return float(hits[of].mean()) if of.any() else float("nan")


def operating_points(is_positive: np.ndarray, score: np.ndarray, specificity: float, sensitivity: float) -> dict:
    """From the ROC curve (sklearn.metrics.roc_curve): the highest sensitivity whose specificity is
    at least `specificity`, and the highest specificity whose sensitivity is at least `sensitivity`,
    each with the threshold on the positive-class probability that gives it."""
    fpr, tpr, thr = skm.roc_curve(is_positive.astype(int), score)
    spec = 1.0 - fpr
    out = {}
    for key, mask, value, other in (("sensitivity_at_specificity", spec >= specificity, tpr, spec),
                                    ("specificity_at_sensitivity", tpr >= sensitivity, spec, tpr)):
        target = specificity if key.startswith("sensitivity") else sensitivity
        if not mask.any():
            out[key] = {"target": target, "value": float("nan"), "threshold": float("nan")}
            continue
        i = np.flatnonzero(mask)[np.argmax(value[mask])]
        out[key] = {"target": target, "value": float(value[i]), "achieved": float(other[i]),
                    "threshold": float(min(thr[i], 1.0))}
    return out


ECE_BINS = 15


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """How well the probabilities match the outcomes: `brier` (mean over images of the squared
    distance between the probability vector and the one-hot label, summed over classes: twice the
    binary Brier score with two classes) and `ece` (expected calibration error of the top-label
    confidence: the image-weighted mean |accuracy - confidence| over `bins` equal-width bins).
    Compression can change these without changing a single top-1 decision."""
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    confidence, top = probs.max(axis=1), probs.argmax(axis=1)
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # bin k: [k/bins, (k+1)/bins), 1.0 in the last
    ece = sum(abs((top[which == k] == labels[which == k]).mean() - confidence[which == k].mean()) * (which == k).mean()
              for k in range(bins) if (which == k).any())
    return {"brier": float(((probs - onehot) ** 2).sum(axis=1).mean()), "ece": float(ece), "ece_bins": bins}


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str], outputs: Outputs | None = None,
                           operating: tuple[float, float] = (0.9, 0.9)) -> dict:
    """Accuracy (with bootstrap CI), macro P/R/F1, per-class results, confusion matrix, from the
    decisions `outputs` makes (argmax; a binary problem thresholds the positive probability). With two
    classes also TN/FP/FN/TP, sensitivity, specificity, AUROC from the probabilities, the ROC curve,
    and the operating points at `operating` = (specificity, sensitivity) targets.

    `outputs` defaults to one logit per class with the second class positive."""
    outputs = outputs or Outputs.for_data(None, list(class_names), None)
    labels = np.asarray(labels)
    pred = outputs.predict(logits)
    k = len(class_names)
    correct = (pred == labels).astype(float)
    p, r, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=0)
    out = {
        "n": int(len(labels)),
        "accuracy": float(correct.mean()),
        "accuracy_ci95": list(accuracy_ci(correct)),
        "macro_precision": float(p.mean()),
        "macro_recall": float(r.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "confusion_matrix": skm.confusion_matrix(labels, pred, labels=range(k)).tolist(),
        "class_names": list(class_names),
        "outputs": {"kind": outputs.kind, "threshold": outputs.threshold if outputs.binary else None},
        **calibration_metrics(outputs.probabilities(logits), labels),
    }
    if outputs.binary:
        pos = outputs.positive_index
        y = labels == pos
        tn, fp, fn, tp = skm.confusion_matrix(y, pred == pos, labels=[False, True]).ravel()
        prob = outputs.positive_scores(logits)
        both = 0 < y.sum() < len(y)
        fpr, tpr, _ = skm.roc_curve(y.astype(int), prob) if both else ([], [], [])
        out["binary"] = {
            "positive_class": class_names[pos], "threshold": outputs.threshold,
            "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "auroc": float(skm.roc_auc_score(y, prob)) if both else float("nan"),
            "operating_points": operating_points(y, prob, *operating) if both else {},
            "roc": {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]},
        }
    return out


def operating_point_shift(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray,
                          outputs: Outputs) -> OperatingPointShift:
    """Did the operating point move? At the user's threshold: the change of sensitivity (over the
    positives) and of specificity (over the negatives) against the reference, each with Newcombe's
    paired interval (measurement.verdict.paired_change_ci; their n is each class's count, smaller
    than the whole set's, so these intervals are wider). And the threshold at which this model
    keeps the reference's sensitivity, with the specificity it then has."""
    labels = np.asarray(labels)
    pos = labels == outputs.positive_index
    yes_c = outputs.predict(logits) == outputs.positive_index
    yes_r = outputs.predict(reference_logits) == outputs.positive_index
    changes = {}
    for key, of, hit_c, hit_r in (("sensitivity", pos, yes_c, yes_r), ("specificity", ~pos, ~yes_c, ~yes_r)):
        point = _rate(hit_c, of) - _rate(hit_r, of)
        ci = paired_change_ci(PairedCounts.from_correct(hit_c[of], hit_r[of])) if of.any() else (np.nan, np.nan)
        changes[key] = (point, (float(ci[0]), float(ci[1])))
    keep, spec_there = None, None
    if pos.any():
        target = _rate(yes_r, pos)
        scores = np.sort(outputs.positive_scores(logits)[pos])[::-1]
        k = int(np.ceil(target * pos.sum() - 1e-9))
        if k >= 1:
            keep = float(scores[k - 1])  # the highest threshold that still flags k positives
            spec_there = _rate(outputs.positive_scores(logits) < keep, ~pos)
    return OperatingPointShift(outputs.threshold, changes["sensitivity"][0], changes["sensitivity"][1],
                               changes["specificity"][0], changes["specificity"][1], keep, spec_there,
                               positives=int(pos.sum()), negatives=int((~pos).sum()))


def fidelity(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray,
             reference_name: str, outputs: Outputs | None = None) -> Fidelity:
    """How a runner differs from the reference on the same images, in the same order.

    top1_agreement and flips (decisions that changed, as `outputs` decides), max/mean abs logit and
    probability differences, the paired table (both right, only this one right, only the reference
    right, both wrong), the accuracy change with Newcombe's paired interval
    (measurement.verdict.paired_change_ci, valid with no or few changed decisions) and, for a binary
    problem, the operating_point_shift. Raises ValueError when the shapes differ.
    """
    a = np.asarray(logits, dtype=np.float64)
    b = np.asarray(reference_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"fidelity: logits shape {a.shape} differs from the reference's {b.shape}")
    outputs = outputs or Outputs.for_data(None, [str(i) for i in range(a.shape[1])], None)
    labels = np.asarray(labels)
    pa, pb = outputs.predict(a), outputs.predict(b)
    counts = PairedCounts.from_correct(pa == labels, pb == labels)
    flips = pa != pb
    prob_diff = np.abs(outputs.probabilities(a) - outputs.probabilities(b))
    return Fidelity(
        reference=reference_name,
        top1_agreement=float(1 - flips.mean()),
        flips=int(flips.sum()),
        flip_rate=float(flips.mean()),
        flips_now_correct=int(counts.only_new),
        flips_now_wrong=int(counts.only_reference),
        max_abs_diff=float(np.abs(a - b).max()),
        mean_abs_diff=float(np.abs(a - b).mean()),
        accuracy_change=float(counts.change),
        accuracy_change_ci95=paired_change_ci(counts),
        probability_max_abs_diff=float(prob_diff.max()),
        probability_mean_abs_diff=float(prob_diff.mean()),
        operating_point=operating_point_shift(a, b, labels, outputs) if outputs.binary else None,
        both_correct=int(counts.both),
        both_wrong=int(counts.neither),
        accuracy_change_ci95_method=PAIRED_METHOD,
    )


def changed_share_ci(changed: int, n_images: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of the share of predictions that change, from `changed` of
    `n_images` (scipy.stats.binomtest). With none changed its upper end is the smallest accuracy
    change a paired comparison on these images can bound: the test set's resolution (540 images:
    0.68%, so no configuration can show a change within +-0.5 pp there)."""
    ci = sps.binomtest(int(changed), int(n_images)).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


def check_outputs(runner, reference, images: list[np.ndarray], batch_sizes: list[int],
                  outputs: Outputs | None = None) -> pd.DataFrame:
    """Largest logit difference and top-1 agreement of `runner` against `reference` on the first
    images, at each batch size (a dynamic batch axis must give the same answers at every size).
    Decisions as `outputs` makes them (default: argmax).

    Returns a DataFrame indexed by batch_size with max_abs_diff, top1_agreement and
    reference_max_abs (the largest reference logit, the scale float rounding is relative to).
    """
    decide = outputs.predict if outputs is not None else (lambda z: np.asarray(z).argmax(1))
    rows = {}
    for bs in sorted(set(batch_sizes)):
        batch = images[:bs]
        a, b = runner.predict(batch), reference.predict(batch)
        rows[bs] = {"max_abs_diff": float(np.abs(a - b).max()), "top1_agreement": float((decide(a) == decide(b)).mean()),
                    "reference_max_abs": float(np.abs(b).max())}
    return pd.DataFrame(rows).T.rename_axis("batch_size")
