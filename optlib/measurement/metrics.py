"""Accuracy of one runner, and fidelity of one runner against a reference (sklearn-backed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ..results.values import Fidelity


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def accuracy_ci(correct: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% interval of the mean of a 0/1 vector."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(correct), size=(n_resamples, len(correct)))
    means = correct[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                           positive_class: str | None = None) -> dict:
    """Accuracy (with bootstrap CI), macro P/R/F1, per-class results, confusion matrix; with two
    classes also TN/FP/FN/TP, sensitivity, specificity and AUROC for `positive_class`
    (default: the second class)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    pred = logits.argmax(axis=1)
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
    }
    if k == 2:
        pos = class_names.index(positive_class) if positive_class is not None else 1
        y = (labels == pos).astype(int)
        yhat = (pred == pos).astype(int)
        tn, fp, fn, tp = skm.confusion_matrix(y, yhat, labels=[0, 1]).ravel()
        prob = softmax(logits)[:, pos]
        out["binary"] = {
            "positive_class": class_names[pos],
            "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
            "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
            "auroc": float(skm.roc_auc_score(y, prob)) if 0 < y.sum() < len(y) else float("nan"),
        }
    return out


def fidelity(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray,
             reference_name: str, n_resamples: int = 2000, seed: int = 0) -> Fidelity:
    """How a runner differs from the reference on the same images, in the same order.

    top1_agreement and flips (predictions that changed), max/mean abs logit difference, and the
    accuracy change with a paired bootstrap 95% interval (the same resampled images for both).
    Raises ValueError when the shapes differ.
    """
    a = np.asarray(logits, dtype=np.float64)
    b = np.asarray(reference_logits, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"fidelity: logits shape {a.shape} differs from the reference's {b.shape}")
    labels = np.asarray(labels)
    pa, pb = a.argmax(1), b.argmax(1)
    ca = (pa == labels).astype(float)
    cb = (pb == labels).astype(float)
    diff = ca - cb
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n_resamples, len(diff)))
    lo, hi = np.percentile(diff[idx].mean(axis=1), [2.5, 97.5])
    flips = pa != pb
    return Fidelity(
        reference=reference_name,
        top1_agreement=float(1 - flips.mean()),
        flips=int(flips.sum()),
        flip_rate=float(flips.mean()),
        flips_now_correct=int((flips & (pa == labels)).sum()),
        flips_now_wrong=int((flips & (pb == labels)).sum()),
        max_abs_diff=float(np.abs(a - b).max()),
        mean_abs_diff=float(np.abs(a - b).mean()),
        accuracy_change=float(diff.mean()),
        accuracy_change_ci95=(float(lo), float(hi)),
    )


def check_outputs(runner, reference, images: list[np.ndarray], batch_sizes: list[int]) -> pd.DataFrame:
    """Largest logit difference and top-1 agreement of `runner` against `reference` on the first
    images, at each batch size (a dynamic batch axis must give the same answers at every size).

    Returns a DataFrame indexed by batch_size with max_abs_diff and top1_agreement.
    """
    rows = {}
    for bs in sorted(set(batch_sizes)):
        batch = images[:bs]
        a, b = runner.predict(batch), reference.predict(batch)
        rows[bs] = {"max_abs_diff": float(np.abs(a - b).max()),
                    "top1_agreement": float((a.argmax(1) == b.argmax(1)).mean())}
    return pd.DataFrame(rows).T.rename_axis("batch_size")
