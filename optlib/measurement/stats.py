"""Latency statistics: per-trial summaries, the median of trial medians and its interval, paired
speed-up ratios, and the sample counts a percentile needs.

Design (Kalibera & Jones, "Rigorous benchmarking in reasonable time", 2013): resample at the level
where the variance is. On these shared machines the speed drifts between blocks of calls (one
machine flipped between ~9 and ~11 ms per call for ResNet18 from one block to the next), so:

- the headline latency is the median of the per-trial medians; with `TRIAL_LEVEL_MIN` or more
  trials its interval comes from resampling the trials, with fewer from a two-level bootstrap
  (trials, then calls within each trial), so that any trial count gets an honest interval;
- a speed-up is the median of per-trial ratios between configurations timed in the same trial
  (adjacent blocks, `timing.latency`): drift that both sides share cancels in each ratio.
  Resampling each side's trial medians independently (`independent_ratio`, kept to show the
  difference) lets that shared drift widen the interval.

Every reported estimate lies inside its interval: a percentile interval that misses its estimate
(possible in tiny, skewed samples) is widened to include it, and the method string says so.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from ..results.values import LatencySummary, Ratio

# Fewest samples for which a printed percentile is trusted. p90 and p99 follow MLPerf LoadGen's
# minimum query counts (64 and 662); p95 is placed by the same ~6.8 * p / (1 - p) rule that links
# them; below these the value is flagged `low_confidence`.
MIN_SAMPLES = {90: 64, 95: 130, 99: 662}
TAIL_PERCENTILES = (90, 95, 99)
TRIAL_LEVEL_MIN = 5  # from this many trials on, intervals resample trials only
N_RESAMPLES = 2000


def min_samples_for(percentile: float) -> int:
    if percentile in MIN_SAMPLES:
        return MIN_SAMPLES[percentile]
    q = percentile / 100.0
    return int(math.ceil(6.8 * q / (1 - q)))


def bootstrap_ci(values, statistic=np.median, confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` (a NumPy reduction taking `axis`, such as
    np.median) over `values` (scipy.stats.bootstrap, vectorized: the same resamples and interval as
    calling it once per resample, about 40 times faster; the stopping rule computes many)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return (math.nan, math.nan)
    if values.size == 1 or np.all(values == values[0]):
        v = float(statistic(values))
        return (v, v)
    res = sps.bootstrap((values,), statistic, confidence_level=confidence, n_resamples=n_resamples,
                        method="percentile", random_state=np.random.default_rng(seed), vectorized=True, axis=-1)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def _containing(point: float, lo: float, hi: float, method: str) -> tuple[tuple[float, float], str]:
    """The interval widened to contain its estimate (said in the method string when it was)."""
    if lo <= point <= hi:
        return (lo, hi), method
    return (min(lo, point), max(hi, point)), method + ", widened to contain the estimate"


def _two_level_medians(sides: list[list[np.ndarray]], rng, n: int) -> list[np.ndarray]:
    """Two-level bootstrap: per replicate, draw trial slots with replacement (the same slots for
    every side, which keeps their pairing), then calls with replacement within each drawn trial.
    Returns, per side, an (n, T) array of the resampled trials' medians. A trial of more than 512
    calls is resampled with 512 draws: faster, and if anything a slightly wider (conservative)
    interval."""
    n_trials = len(sides[0])
    picks = rng.integers(0, n_trials, size=(n, n_trials))
    out = [np.empty((n, n_trials)) for _ in sides]
    for slot in range(n_trials):
        for t in range(n_trials):
            chosen = picks[:, slot] == t
            for side, trials in zip(out, sides):
                x = trials[t]
                idx = rng.integers(0, len(x), size=(int(chosen.sum()), min(len(x), 512)))
                side[chosen, slot] = np.median(x[idx], axis=1)
    return out


def _trials(trials_ms) -> list[np.ndarray]:
    if isinstance(trials_ms, np.ndarray) and trials_ms.ndim == 1:
        trials_ms = [trials_ms]
    trials = [np.asarray(t, dtype=float) for t in trials_ms if len(t)]
    if not trials:
        raise ValueError("no samples")
    return trials


def median_of_trial_medians_ci(trials_ms, seed: int = 0) -> tuple[float, tuple[float, float], str]:
    """(median of trial medians, 95% interval, method) for any number of trials >= 1."""
    trials = _trials(trials_ms)
    medians = np.array([np.median(t) for t in trials])
    point = float(np.median(medians))
    if len(trials) >= TRIAL_LEVEL_MIN:
        lo, hi = bootstrap_ci(medians, seed=seed)
        method = "bootstrap over trial medians"
    else:
        (resampled,) = _two_level_medians([trials], np.random.default_rng(seed), N_RESAMPLES)
        stat = np.median(resampled, axis=1)
        lo, hi = (float(v) for v in np.percentile(stat, [2.5, 97.5]))
        method = "two-level bootstrap (trials, then calls within trials)"
    (lo, hi), method = _containing(point, lo, hi, method)
    return point, (lo, hi), method


def summarize(trials_ms) -> LatencySummary:
    """Statistics of one timed quantity over repeated trials (`trials_ms`: one array of
    milliseconds per trial, or a single array for one trial).

    `median` is the median of the trial medians (the headline) with its 95% interval; the tail
    percentiles, mean, std, min and max are over all calls pooled.
    """
    trials = _trials(trials_ms)
    pooled = np.concatenate(trials)
    median, ci, method = median_of_trial_medians_ci(trials)
    return LatencySummary(
        median=median, ci95=ci, ci95_method=method,
        p90=float(np.percentile(pooled, 90)), p95=float(np.percentile(pooled, 95)),
        p99=float(np.percentile(pooled, 99)),
        mean=float(pooled.mean()), std=float(pooled.std(ddof=1)) if pooled.size > 1 else 0.0,
        min=float(pooled.min()), max=float(pooled.max()), count=int(pooled.size), trials=len(trials),
        trial_medians=[float(np.median(t)) for t in trials],
        low_confidence=[f"p{p}" for p in TAIL_PERCENTILES if pooled.size < min_samples_for(p)],
    )


def trials_in_common(reference_ms: list, candidate_ms: list) -> tuple[list, list]:
    """The trials both sides ran: with adaptive stopping (measurement.timing) a configuration that
    stopped early has only the first trials of the rounds, so pairs are the common first ones."""
    n = min(len(reference_ms), len(candidate_ms))
    return list(reference_ms[:n]), list(candidate_ms[:n])


def paired_ratio(reference_ms, candidate_ms, reference: str = "", metric: str = "latency",
                 batch_size: int | None = None, seed: int = 0) -> Ratio:
    """Speed-up of `candidate` over `reference` from blocks timed in the same trials.

    Per trial t: r_t = median(reference_t) / median(candidate_t) (> 1: the candidate is faster).
    The estimate is the median of the r_t; its 95% interval resamples trials (pairs kept), and with
    fewer than TRIAL_LEVEL_MIN trials also the calls within them. Both sides need the same number of
    trials, in the same order.
    """
    ref, cand = _trials(reference_ms), _trials(candidate_ms)
    if len(ref) != len(cand):
        raise ValueError(f"paired_ratio: {len(ref)} reference trials but {len(cand)} candidate trials "
                         "(a paired ratio needs blocks timed in the same trials)")
    r = np.array([np.median(a) / np.median(b) for a, b in zip(ref, cand)])
    point = float(np.median(r))
    if all(a is b for a, b in zip(ref, cand)):  # a configuration against itself
        return Ratio(value=1.0, ci95=(1.0, 1.0), reference=reference, method="the same samples", trials=len(r),
                     metric=metric, batch_size=batch_size)
    if len(r) >= TRIAL_LEVEL_MIN:
        lo, hi = bootstrap_ci(r, seed=seed)
        method = "paired: median of per-trial ratios, bootstrap over trials"
    else:
        a, b = _two_level_medians([ref, cand], np.random.default_rng(seed), N_RESAMPLES)
        stat = np.median(a / b, axis=1)
        lo, hi = (float(v) for v in np.percentile(stat, [2.5, 97.5]))
        method = "paired: median of per-trial ratios, two-level bootstrap (trials, then calls)"
    (lo, hi), method = _containing(point, lo, hi, method)
    return Ratio(value=point, ci95=(lo, hi), reference=reference, method=method, trials=len(r), metric=metric,
                 batch_size=batch_size)


def independent_ratio(reference_ms, candidate_ms, reference: str = "", seed: int = 0) -> Ratio:
    """Ratio of the two medians of trial medians, each side's trial medians resampled independently.

    Ignores the pairing of trials; kept to show what the pairing buys (chapter 01's noise floor).
    """
    a = np.array([np.median(t) for t in _trials(reference_ms)])
    b = np.array([np.median(t) for t in _trials(candidate_ms)])
    point = float(np.median(a) / np.median(b))
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, a.size, size=(N_RESAMPLES, a.size))
    ib = rng.integers(0, b.size, size=(N_RESAMPLES, b.size))
    lo, hi = (float(v) for v in np.percentile(np.median(a[ia], 1) / np.median(b[ib], 1), [2.5, 97.5]))
    (lo, hi), method = _containing(point, lo, hi, "independent: trial medians of each side resampled apart")
    return Ratio(value=point, ci95=(lo, hi), reference=reference, method=method, trials=int(min(a.size, b.size)))


def mcnemar_exact_p(b: int, c: int) -> float:
    """McNemar's exact test on paired predictions: `b` images only one configuration gets right,
    `c` only the other; two-sided p of b against Binomial(b + c, 1/2) (1.0 when nothing flipped)."""
    n = int(b) + int(c)
    if n == 0:
        return 1.0
    return float(sps.binomtest(int(b), n, 0.5, alternative="two-sided").pvalue)


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error rate):
    the i-th smallest is multiplied by (m - i), made monotone, capped at 1; original order kept."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return [float(v) for v in adjusted]
