"""Latency statistics: per-trial summaries, the median of trial medians and its bootstrap
interval, ratios between configurations, and the sample counts a percentile needs."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

# Fewest samples for which a printed percentile is trusted. p90 and p99 follow MLPerf LoadGen's
# minimum query counts (64 and 662); p95 is placed by the same ~6.8 * p / (1 - p) rule that links
# them; below these the value is flagged `low_confidence`.
MIN_SAMPLES = {50: 1, 90: 64, 95: 130, 99: 662}
PERCENTILES = (50, 90, 95, 99)


def min_samples_for(percentile: float) -> int:
    if percentile in MIN_SAMPLES:
        return MIN_SAMPLES[percentile]
    q = percentile / 100.0
    return int(math.ceil(6.8 * q / (1 - q)))


def bootstrap_ci(values, statistic=np.median, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values` (scipy.stats.bootstrap)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    if values.size == 1 or np.all(values == values[0]):
        v = float(statistic(values))
        return (v, v)
    res = sps.bootstrap((values,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", random_state=np.random.default_rng(seed), vectorized=False)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def summarize(trials_ms: list[np.ndarray] | np.ndarray) -> dict:
    """Statistics of one timed quantity over repeated trials.

    `trials_ms` is a list of per-trial sample arrays (milliseconds). Percentiles, mean, std, min,
    max are over all samples pooled; `median` is the median of the trial medians, and `ci95` its
    bootstrap interval over trials (over the pooled samples when there are fewer than 3 trials).
    """
    if isinstance(trials_ms, np.ndarray) and trials_ms.ndim == 1:
        trials_ms = [trials_ms]
    trials = [np.asarray(t, dtype=float) for t in trials_ms if len(t)]
    if not trials:
        raise ValueError("summarize: no samples")
    pooled = np.concatenate(trials)
    trial_medians = np.array([np.median(t) for t in trials])
    if len(trials) >= 3:
        ci = bootstrap_ci(trial_medians)
        ci_method = "bootstrap over trial medians"
    else:
        ci = bootstrap_ci(pooled)
        ci_method = "bootstrap over pooled samples"
    out = {
        "count": int(pooled.size),
        "trials": len(trials),
        "mean": float(pooled.mean()),
        "std": float(pooled.std(ddof=1)) if pooled.size > 1 else 0.0,
        "min": float(pooled.min()),
        "max": float(pooled.max()),
        "median": float(np.median(trial_medians)),
        "ci95": [ci[0], ci[1]],
        "ci95_method": ci_method,
        "trial_medians": trial_medians.tolist(),
    }
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(pooled, p))
    out["low_confidence"] = [f"p{p}" for p in PERCENTILES if pooled.size < min_samples_for(p)]
    return out


def ratio_ci(reference: np.ndarray, candidate: np.ndarray, n_resamples: int = 2000,
             seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Speed-up reference/candidate as the ratio of medians, with a bootstrap 95% interval.

    Each side is resampled independently (the two were timed in separate blocks).
    """
    a = np.asarray(reference, dtype=float)
    b = np.asarray(candidate, dtype=float)
    point = float(np.median(a) / np.median(b))
    if a.size < 2 or b.size < 2:
        return point, (point, point)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(n_resamples, a.size))
    ib = rng.integers(0, b.size, size=(n_resamples, b.size))
    ratios = np.median(a[ia], axis=1) / np.median(b[ib], axis=1)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return point, (float(lo), float(hi))
