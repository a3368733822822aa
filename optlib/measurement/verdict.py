"""Accuracy claims that hold up: the interval of a paired accuracy change, the label-free pool's
bound, and the one verdict against the accuracy budget that every consumer uses (chapters 04 and
06, the final round, the summary, the report and the hand-off).

The accuracy change of a configuration against the reference is measured on the same images, so
it rests on the discordant pairs: b images now correct that the reference got wrong, c now wrong
that it got right, of n. A percentile bootstrap of that difference is [0, 0] when b = c = 0 and
far too narrow when they are small; Newcombe's hybrid score interval (method 10 of Newcombe 1998,
Statistics in Medicine 17:2635-2650, with the correlation corrected as in Newcombe and Altman's
"Statistics with Confidence", 2000) is not: at b = c = 0 on 540 images it is about +-0.7 points,
and it shrinks with n.

A second kind of evidence needs no labels: a configuration's accuracy cannot change by more than
the share of its decisions that change (|acc - acc_ref| <= changed / n on any set of images). On a
pool of independent images from the same source as the evaluated ones, the exact (Clopper-Pearson)
upper bound of that share bounds the accuracy change. A fine-tuned model (QAT, pruning with
fine-tuning) is meant to move away from FP32, so for it the pool says how far it moved and the
labelled interval decides.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from ..results.values import PoolAgreement, Verdict

CONFIDENCE = 0.95
METHOD = "Newcombe hybrid score (method 10), paired"
FINE_TUNE_COST = "fine-tune"  # the one-time cost key of every fine-tuned configuration (QAT, pruning, dense control)
MAX_IMAGES = 10 ** 9  # images_to_resolve gives up beyond this


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_ci(successes: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson's score interval of a proportion. Counts may be fractional (images_to_resolve scales
    observed counts to other sizes); for whole counts it equals
    scipy.stats.binomtest(k, n).proportion_ci(method='wilson')."""
    if n <= 0:
        raise ValueError(f"wilson_ci: n must be positive, got {n}")
    z = _z(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


@dataclass(frozen=True)
class PairedCounts:
    """Paired decisions on the same n images: both right, only this configuration right (b), only
    the reference right (c), both wrong. Counts may be fractional only inside images_to_resolve."""
    both: float
    only_new: float
    only_reference: float
    neither: float

    @property
    def n(self) -> float:
        return self.both + self.only_new + self.only_reference + self.neither

    @property
    def change(self) -> float:
        """Accuracy of this configuration minus the reference's: (b - c) / n."""
        return (self.only_new - self.only_reference) / self.n

    @classmethod
    def from_correct(cls, correct: np.ndarray, reference_correct: np.ndarray) -> "PairedCounts":
        a, b = np.asarray(correct, dtype=bool), np.asarray(reference_correct, dtype=bool)
        if a.shape != b.shape:
            raise ValueError(f"PairedCounts: {a.shape} decisions against the reference's {b.shape}")
        return cls(int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum()))

    def scaled(self, n: float) -> "PairedCounts":
        f = n / self.n
        return PairedCounts(self.both * f, self.only_new * f, self.only_reference * f, self.neither * f)


def paired_change_ci(counts: PairedCounts, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Newcombe's hybrid score interval of the paired difference of proportions (method 10): the
    Wilson intervals of both accuracies combined with their correlation phi (ad - bc, moved half an
    image count towards zero, over the root of the margins' product; 0 when a margin is empty).

    Raises ValueError without images."""
    a, b, c, d = counts.both, counts.only_new, counts.only_reference, counts.neither
    n = counts.n
    if n <= 0:
        raise ValueError("paired_change_ci: no images")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_ci(a + b, n, confidence)
    l2, u2 = wilson_ci(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    det = a * d - b * c
    corrected = det - n / 2 if det > n / 2 else (det if det < 0 else 0.0)
    phi = corrected / math.sqrt(margins) if margins > 0 else 0.0
    down = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    up = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    diff = p1 - p2
    return max(-1.0, diff - down), min(1.0, diff + up)


def _outcome(ci: tuple[float, float], max_drop: float) -> str:
    lo, hi = ci
    if lo >= -max_drop:
        return "within"
    if hi < -max_drop:
        return "worse"
    return "unresolved"


def images_to_resolve(counts: PairedCounts, max_drop: float, confidence: float = CONFIDENCE) -> int | None:
    """How many labelled images, at the observed rates of agreement and discordance, the paired
    interval needs to lie wholly on one side of -max_drop; None when the point estimate sits on
    -max_drop (no number of images resolves it) or beyond MAX_IMAGES. The current n when it is
    already resolved."""
    if counts.n <= 0:
        return None
    if _outcome(paired_change_ci(counts, confidence), max_drop) != "unresolved":
        return int(counts.n)
    if math.isclose(counts.change, -max_drop, abs_tol=1e-12):
        return None

    def resolved(n: float) -> bool:
        return _outcome(paired_change_ci(counts.scaled(n), confidence), max_drop) != "unresolved"

    lo, hi = counts.n, counts.n * 2
    while not resolved(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_IMAGES:
            return None
    while hi - lo > 1:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if resolved(mid) else (mid, hi)
    return int(math.ceil(hi))


def changed_share_bound(changed: int, images: int, confidence: float = CONFIDENCE) -> float:
    """Exact (Clopper-Pearson) upper end of the share of decisions that change, from `changed` of
    `images` independent images (scipy.stats.binomtest): a bound on how much the accuracy can move."""
    from .metrics import changed_share_ci  # metrics imports this module: imported here, not at the top

    return changed_share_ci(changed, images, confidence)[1]


def pool_agreement(decisions: np.ndarray, reference_decisions: np.ndarray, source: str,
                   confidence: float = CONFIDENCE) -> PoolAgreement:
    """Decisions of a configuration against the reference's on the label-free pool (one decision
    per independent image, the same images in the same order)."""
    a, b = np.asarray(decisions), np.asarray(reference_decisions)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"pool_agreement: decisions {a.shape} against the reference's {b.shape}")
    changed = int((a != b).sum())
    return PoolAgreement(source=source, images=int(len(a)), changed=changed, changed_share=changed / len(a),
                         changed_share_bound=changed_share_bound(changed, len(a), confidence), unit="image")


def is_fine_tuned(record) -> bool:
    """A configuration trained after the reference was (QAT, pruning with fine-tuning, the dense
    control): its one-time costs name a fine-tune of some length."""
    return float((record.one_time_cost_seconds or {}).get(FINE_TUNE_COST, 0.0) or 0.0) > 0


def judge(fidelity, max_drop: float, fine_tuned: bool = False) -> Verdict:
    """The verdict of one configuration against the accuracy budget `max_drop` (a fraction):

    within      the labelled paired interval lies wholly above -max_drop, or (not fine-tuned) the
                pool's exact bound on the changed share is at most max_drop
    worse       the labelled interval lies wholly below -max_drop
    unresolved  otherwise; with the labelled images that would resolve it at this discordance

    `fidelity` is a results.values.Fidelity with its paired counts."""
    f = fidelity
    counts = PairedCounts(f.both_correct, f.flips_now_correct, f.flips_now_wrong, f.both_wrong)
    ci = tuple(f.accuracy_change_ci95)
    labelled = _outcome(ci, max_drop)
    pool = f.pool
    pool_within = pool is not None and not fine_tuned and pool.changed_share_bound <= max_drop
    n = int(counts.n)
    interval = f"[{ci[0]:+.2%}, {ci[1]:+.2%}] on {n} labelled images ({f.flips_now_correct} now right, " \
               f"{f.flips_now_wrong} now wrong)"
    pool_text = (f"at most {pool.changed_share_bound:.2%} of decisions change on the label-free pool ({pool.changed} "
                 f"of {pool.images} {pool.source} images, exact 95% bound)") if pool is not None else ""
    if labelled == "within":
        outcome, evidence = "within", "labelled"
        why = f"the accuracy change's paired interval {interval} lies above -{max_drop:.2%}"
    elif labelled == "worse":
        outcome, evidence = "worse", "labelled"
        why = f"the accuracy change's paired interval {interval} lies below -{max_drop:.2%}"
    elif pool_within:
        outcome, evidence = "within", "pool"
        why = f"{pool_text}, so the accuracy cannot drop by more than -{max_drop:.2%}; the labelled interval {interval} " \
              "alone does not resolve it"
    else:
        outcome, evidence = "unresolved", "labelled"
        why = f"the paired interval {interval} straddles -{max_drop:.2%}"
        if pool is not None:
            why += (f"; the pool measures how far a fine-tuned model moved, not whether it is worse ({pool_text})"
                    if fine_tuned else f"; {pool_text}, above the budget")
    need = images_to_resolve(counts, max_drop) if outcome == "unresolved" else None
    if outcome == "unresolved":
        why += (f"; about {need:,} labelled images at this discordance would resolve it" if need else
                "; no number of labelled images resolves it at this discordance (the change sits on the budget)")
    return Verdict(outcome=outcome, evidence=evidence, max_accuracy_drop=max_drop, accuracy_change=f.accuracy_change,
                   accuracy_change_ci95=ci, labelled_images=n, images_to_resolve=need,
                   pool_changed_share_bound=pool.changed_share_bound if pool is not None else None,
                   pool_images=pool.images if pool is not None else None, fine_tuned=fine_tuned, why=why)


def verdict_of(record, max_drop: float) -> Verdict | None:
    """The verdict of a record against `max_drop`: None for the reference itself (no fidelity) and
    for records whose fidelity predates the paired counts."""
    f = record.fidelity
    if f is None:
        return None
    return judge(f, max_drop, is_fine_tuned(record))


def within_budget(record, max_drop: float) -> bool:
    """The one budget rule: the reference itself, or a verdict of `within`."""
    v = verdict_of(record, max_drop)
    return v is None or v.outcome == "within"


def smallest_resolvable_change(n: int, accuracy: float, confidence: float = CONFIDENCE) -> float | None:
    """The half-width of the paired interval when no decision changes, on `n` labelled images of
    which a share `accuracy` the reference gets right: the smallest accuracy change (in either
    direction) this labelled set can resolve. None without images."""
    if not n:
        return None
    both = round(n * accuracy)
    lo, hi = paired_change_ci(PairedCounts(both, 0, 0, n - both), confidence)
    return max(-lo, hi)


def resolution(accuracy: dict, pool_images: int | None = None, confidence: float = CONFIDENCE) -> dict:
    """What these images can resolve at 95%, from the reference's classification_metrics: the
    smallest accuracy change the labelled set can show (smallest_resolvable_change), the same for
    sensitivity over its positives and specificity over its negatives (binary problems; each class
    is a smaller n), and the label-free pool's bound on the changed share with no decision changed."""
    n = int(accuracy["n"])
    out = {"labelled_images": n, "accuracy_change": smallest_resolvable_change(n, accuracy["accuracy"], confidence)}
    b = accuracy.get("binary")
    if b:
        pos, neg = b["tp"] + b["fn"], b["tn"] + b["fp"]
        out.update(positives=pos, negatives=neg,
                   sensitivity_change=smallest_resolvable_change(pos, b["sensitivity"] if pos else 0.0, confidence),
                   specificity_change=smallest_resolvable_change(neg, b["specificity"] if neg else 0.0, confidence))
    if pool_images:
        out.update(pool_images=int(pool_images), pool_changed_bound=changed_share_bound(0, pool_images, confidence))
    return out


def resolution_statement(res: dict, max_drop: float, pool_note: str = "") -> str:
    """`resolution(...)` as sentences for a chapter or the report, against the budget `max_drop`."""
    acc = res["accuracy_change"]
    text = (f"With no decision changed, {res['labelled_images']:,} labelled images resolve an accuracy change of "
            f"+-{acc:.2%} at 95% (Newcombe's paired interval)")
    if "sensitivity_change" in res:
        sens, spec = res["sensitivity_change"], res["specificity_change"]
        text += (f"; sensitivity over its {res['positives']:,} positives +-{sens:.2%} and specificity over its "
                 f"{res['negatives']:,} negatives +-{spec:.2%}" if sens is not None and spec is not None else "")
    text += (f". Against the {max_drop:.1%} budget, the labelled set alone " +
             ("can certify a configuration that changes few decisions" if acc < max_drop else
              "cannot certify even a configuration that changes no decision") + ".")
    if res.get("pool_images"):
        text += (f" The label-free pool of {res['pool_images']:,} independent images bounds the share of changed "
                 f"decisions, and so the accuracy change, at {res['pool_changed_bound']:.2%} when none changes "
                 "(exact 95% bound); it decides for configurations that were not fine-tuned.")
    elif pool_note:
        text += f" No label-free pool: {pool_note}."
    return text
