"""Typed values every chapter reads, and the one name of each quantity.

A record (results.records) is built from these: a latency summary per stage, throughput per batch
size, same-run speed-ups as ratios with intervals, fidelity against the reference (the accuracy
change with its paired interval), the kernels that really ran, peak memory measured in a child
process, and the artifact a configuration is rebuilt from. `to_plain` / `from_plain` turn them
into JSON values and back.

VOCABULARY names each quantity once; records, tables and figures use these names and no others.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

from ..core.choices import KERNEL_LABELS, VERDICTS, check_choice

VOCABULARY = {
    "latency_ms": "the full model's time per call at the latency batch size: median of the per-trial "
                  "medians, ms",
    "latency_ci95_ms": "95% bootstrap interval of latency_ms",
    "p95_ms": "95th percentile of all timed calls pooled, ms (p90_ms, p99_ms likewise)",
    "speedup": "reference latency / this latency, the median of per-trial ratios of blocks timed in "
               "the same trials of the same run (> 1: faster)",
    "speedup_ci95": "95% bootstrap interval of speedup, resampling trials with their pairing kept",
    "images_per_s": "batch size / median batch latency at the largest batch size",
    "accuracy": "top-1 accuracy on the evaluated images",
    "accuracy_change": "accuracy minus the reference's on the same images (fraction)",
    "accuracy_change_ci95": "Newcombe's paired score 95% interval of accuracy_change (method 10; valid with no "
                            "or few changed decisions)",
    "verdict": "against the accuracy budget: within (the interval, or the label-free pool's bound, shows the drop "
               "is at most the budget), worse (the interval lies below it) or unresolved, with the evidence",
    "images_to_resolve": "labelled images that would resolve an unresolved verdict at the observed discordance",
    "pool_changed_bound": "exact (Clopper-Pearson) 95% upper bound of the share of decisions that change on the "
                          "label-free pool of independent images: a bound on the accuracy change",
    "flips": "evaluated images whose predicted class differs from the reference's",
    "sensitivity_change": "binary problems: sensitivity minus the reference's at the decision threshold, with "
                          "Newcombe's paired interval over the positives (specificity_change: the negatives)",
    "size_mb": "size of the deployable artifact on disk, MB (10^6 bytes)",
    "peak_memory_mb": "peak resident memory of a fresh process running this configuration, MB",
    "kernels": "what really ran: integer or reduced-precision (BF16/FP16) kernels, mixed (some heavy operators "
               "in float), fake-quant, cast-emulated (reduced storage, FP32 arithmetic) or float",
}


@dataclass
class LatencySummary:
    """One timed quantity (ms) over repeated trials; see measurement.stats.summarize."""
    median: float  # median of per-trial medians: the headline
    ci95: tuple[float, float]
    ci95_method: str
    p90: float
    p95: float
    p99: float
    mean: float
    std: float
    min: float
    max: float
    count: int
    trials: int
    trial_medians: list[float] = field(default_factory=list)
    low_confidence: list[str] = field(default_factory=list)  # percentiles with too few samples


@dataclass
class Ratio:
    """A ratio with its 95% interval; for a speed-up, reference time / this time (> 1: faster)."""
    value: float
    ci95: tuple[float, float]
    reference: str = ""
    method: str = ""
    trials: int = 0
    metric: str = "latency"  # latency | throughput
    batch_size: int | None = None

    def excludes_one(self) -> bool:
        """True when the interval lies entirely above or below 1: a resolved difference."""
        lo, hi = self.ci95
        return not (lo <= 1.0 <= hi)

    def verdict(self) -> str:
        if not self.excludes_one():
            return "not resolved"
        return "faster" if self.ci95[0] > 1.0 else "slower"

    def __str__(self) -> str:
        return f"{self.value:.2f}x (95% CI {self.ci95[0]:.2f} to {self.ci95[1]:.2f})"


@dataclass
class Throughput:
    batch_size: int
    images_per_s: float
    images_per_s_ci95: tuple[float, float]
    batch_latency_ms: LatencySummary


@dataclass
class OperatingPointShift:
    """Binary problems: how a configuration moves the reference's operating point (the medical
    user's question: a compressed model can keep top-1 and still trade sensitivity for specificity)."""
    threshold: float  # the user's decision threshold on the positive probability
    sensitivity_change: float  # at that threshold, against the reference
    sensitivity_change_ci95: tuple[float, float]  # Newcombe's paired interval over the positives
    specificity_change: float
    specificity_change_ci95: tuple[float, float]
    threshold_keeping_reference_sensitivity: float | None = None  # on this configuration's probabilities
    specificity_at_that_threshold: float | None = None
    positives: int = 0  # the n of the sensitivity interval (specificity: negatives)
    negatives: int = 0

    def describe(self) -> str:
        (slo, shi), (plo, phi) = self.sensitivity_change_ci95, self.specificity_change_ci95
        return (f"sensitivity {self.sensitivity_change:+.2%} (95% CI {slo:+.2%} to {shi:+.2%}), specificity "
                f"{self.specificity_change:+.2%} (95% CI {plo:+.2%} to {phi:+.2%}) at threshold {self.threshold:g}")


@dataclass
class PoolAgreement:
    """Decisions against the reference's on a label-free pool of independent images
    (measurement.verdict.pool_agreement): the share that changes bounds the accuracy change."""
    source: str  # where the pool's images come from (a folder, or the generator and its seed)
    images: int
    changed: int
    changed_share: float
    changed_share_bound: float  # exact (Clopper-Pearson) 95% upper bound
    unit: str = "image"  # what one independent draw is


@dataclass
class Fidelity:
    """How a configuration's predictions differ from the reference's on the same images."""
    reference: str
    top1_agreement: float
    flips: int
    flip_rate: float
    flips_now_correct: int  # b: right now, wrong in the reference
    flips_now_wrong: int  # c: wrong now, right in the reference
    max_abs_diff: float  # logits
    mean_abs_diff: float
    accuracy_change: float
    accuracy_change_ci95: tuple[float, float]  # Newcombe's paired interval (accuracy_change_ci95_method)
    probability_max_abs_diff: float = 0.0
    probability_mean_abs_diff: float = 0.0
    operating_point: OperatingPointShift | None = None  # binary problems
    both_correct: int = 0  # a: right in both (with b, c and both_wrong: the paired table)
    both_wrong: int = 0  # d: wrong in both (a changed wrong class included)
    accuracy_change_ci95_method: str = ""
    pool: PoolAgreement | None = None  # the label-free pool, where one was measured

    def describe_change(self) -> str:
        lo, hi = self.accuracy_change_ci95
        return f"{self.accuracy_change:+.2%} (95% CI {lo:+.2%} to {hi:+.2%}), {self.flips} flip(s)"


@dataclass
class Verdict:
    """A configuration against the accuracy budget (measurement.verdict.judge): the outcome, the
    evidence that decided it (the labelled paired interval, or the label-free pool's bound) and why."""
    outcome: str  # within | worse | unresolved
    evidence: str  # labelled | pool
    max_accuracy_drop: float
    accuracy_change: float
    accuracy_change_ci95: tuple[float, float]
    labelled_images: int
    images_to_resolve: int | None = None  # unresolved: labelled images at this discordance that would resolve it
    pool_changed_share_bound: float | None = None
    pool_images: int | None = None
    fine_tuned: bool = False
    why: str = ""

    def __post_init__(self):
        check_choice("verdict.outcome", self.outcome, VERDICTS)

    @property
    def label(self) -> str:
        """`within (pool)`, `within (labelled)`, `worse` or `unresolved`: a table cell."""
        return f"{self.outcome} ({self.evidence})" if self.outcome == "within" else self.outcome


@dataclass
class Kernels:
    """What really executed, read from the executed graph or the module types, not assumed."""
    label: str  # core.choices.KERNEL_LABELS
    share: float | None = None  # fraction of the heavy operators in the low-precision arithmetic
    share_of: str = ""  # what `share` counts
    evidence: dict = field(default_factory=dict)

    def __post_init__(self):
        check_choice("kernels.label", self.label, KERNEL_LABELS)


@dataclass
class Memory:
    """Peak memory of a fresh child process that loads the configuration and runs it."""
    peak_bytes: int  # peak resident memory of the child after inference
    resting_bytes: int  # its peak after the imports, before the model was loaded
    method: str
    batch_sizes: list[int] = field(default_factory=list)
    cuda_peak_allocated_bytes: int | None = None

    @property
    def above_resting_bytes(self) -> int:
        return self.peak_bytes - self.resting_bytes


@dataclass
class Artifact:
    """Enough to rebuild a configuration's runner in a fresh process (backends.artifacts.load_runner).

    `files` maps a role (model, features, head, weights, state, program) to a path, relative to the
    target's output folder when it lies inside it. `options` holds what the loader needs besides the
    files (architecture, number of classes, session or compile options); `preprocess` the
    preprocessing as data (workload.data.PreprocessSpec).
    """
    kind: str  # backends.artifacts.LOADERS
    files: dict[str, str] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    preprocess: dict | None = None


@dataclass
class NoiseFloor:
    """Two identical runners timed in the same trials: the band a speed-up must clear."""
    twin: str
    paired: Ratio
    independent: Ratio  # the same samples, trials resampled apart: what the pairing buys
    twin_max_abs_diff: float = 0.0
    twin_flips: int = 0


# --- plain data <-> typed ------------------------------------------------------------------------

def to_plain(obj):
    """Dataclasses (nested) to dicts, tuples to lists: JSON-ready."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def _convert(tp, value):
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_plain(tp, value)
    if origin is tuple:
        return tuple(value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if origin is dict:
        _, item = typing.get_args(tp)
        return {k: _convert(item, v) for k, v in value.items()}
    return value


def from_plain(cls, data: dict):
    """Rebuild dataclass `cls` from its `to_plain` form; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})
