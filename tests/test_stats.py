import numpy as np
import pytest
from scipy import stats as sps

from optlib.measurement.stats import (TRIAL_LEVEL_MIN, bootstrap_ci, independent_ratio, min_samples_for,
                                      paired_ratio, summarize)


def test_summary_matches_numpy():
    rng = np.random.default_rng(1)
    trials = [rng.lognormal(1.0, 0.3, size=200) for _ in range(5)]
    s = summarize(trials)
    pooled = np.concatenate(trials)
    for p in (90, 95, 99):
        assert getattr(s, f"p{p}") == pytest.approx(np.percentile(pooled, p))
    assert s.mean == pytest.approx(pooled.mean())
    assert s.std == pytest.approx(pooled.std(ddof=1))
    assert s.min == pooled.min() and s.max == pooled.max()
    assert s.count == 1000 and s.trials == 5
    assert s.median == pytest.approx(np.median([np.median(t) for t in trials]))
    assert s.ci95 == pytest.approx(bootstrap_ci([np.median(t) for t in trials]))  # trial level: 5 trials
    assert s.low_confidence == []  # 1000 samples are enough for p99 (662)


def test_low_confidence_thresholds():
    assert min_samples_for(90) == 64 and min_samples_for(99) == 662
    assert summarize(np.arange(63.0)).low_confidence == ["p90", "p95", "p99"]
    assert summarize(np.arange(64.0)).low_confidence == ["p95", "p99"]
    assert summarize(np.arange(662.0)).low_confidence == []


def test_bootstrap_ci_matches_scipy():
    rng = np.random.default_rng(2)
    x = rng.normal(10, 2, size=40)
    ours = bootstrap_ci(x, np.median, seed=3)
    ref = sps.bootstrap((x,), np.median, method="percentile", random_state=np.random.default_rng(3),
                        n_resamples=2000, vectorized=False).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high))


def test_paired_ratio_is_the_median_of_per_trial_ratios_with_scipy_interval():
    rng = np.random.default_rng(4)
    a = [rng.normal(10, 0.2, size=50) for _ in range(8)]
    b = [rng.normal(5, 0.1, size=50) for _ in range(8)]
    r = paired_ratio(a, b, reference="a", metric="throughput", batch_size=8)
    per_trial = np.array([np.median(x) / np.median(y) for x, y in zip(a, b)])
    assert r.value == pytest.approx(np.median(per_trial))
    ref = sps.bootstrap((per_trial,), np.median, method="percentile", random_state=np.random.default_rng(0),
                        n_resamples=2000, vectorized=False).confidence_interval
    assert r.ci95 == pytest.approx((ref.low, ref.high))
    assert r.ci95[0] < 2.0 < r.ci95[1] and r.trials == 8 and (r.metric, r.batch_size) == ("throughput", 8)
    assert r.excludes_one() and r.verdict() == "faster"
    same = paired_ratio(a, a)
    assert same.value == 1.0 and same.ci95 == (1.0, 1.0) and same.verdict() == "not resolved"
    with pytest.raises(ValueError, match="same trials"):
        paired_ratio(a, b[:3])


def test_pairing_cancels_drift_both_sides_share():
    """The machine's speed drifts between trials (here by up to 30%) and both configurations of a
    trial see the same drift: per-trial ratios cancel it, independent resampling does not."""
    rng = np.random.default_rng(5)
    drift = rng.uniform(0.8, 1.3, size=20)
    ref = [d * rng.normal(10.0, 0.3, size=100) for d in drift]
    cand = [d * rng.normal(5.0, 0.15, size=100) for d in drift]
    paired, independent = paired_ratio(ref, cand), independent_ratio(ref, cand)
    assert paired.ci95[0] > 1.96 and paired.ci95[1] < 2.04
    width = lambda r: r.ci95[1] - r.ci95[0]  # noqa: E731
    assert width(independent) > 4 * width(paired)
    twin = [d * rng.normal(10.0, 0.3, size=100) for d in drift]  # same-vs-same under the same drift
    nf = paired_ratio(ref, twin)
    assert 0.98 < nf.ci95[0] <= 1.0 <= nf.ci95[1] < 1.02


@pytest.mark.parametrize("n_trials", range(1, 8))
def test_every_estimate_lies_inside_its_interval_at_any_trial_count(n_trials):
    for seed in range(12):
        rng = np.random.default_rng(seed)
        # skewed, with a shifted trial and spikes: the conditions that broke the pooled interval
        a = [rng.lognormal(0, 0.4, size=int(rng.integers(3, 60))) + (0.3 if t == 0 else 0) for t in range(n_trials)]
        b = [rng.lognormal(-0.5, 0.6, size=int(rng.integers(3, 60))) for _ in range(n_trials)]
        for s in (summarize(a), summarize(b)):
            assert s.ci95[0] <= s.median <= s.ci95[1]
        for r in (paired_ratio(a, b), independent_ratio(a, b)):
            assert r.ci95[0] <= r.value <= r.ci95[1]


def test_two_trials_median_inside_its_interval():
    """The reported defect: two trials of different length and level; the median of the two trial
    medians (their mean) fell outside an interval bootstrapped over the pooled calls."""
    rng = np.random.default_rng(6)
    trials = [rng.normal(6.50, 0.01, size=100), rng.normal(6.65, 0.01, size=20)]
    s = summarize(trials)
    assert s.median == pytest.approx(np.mean([np.median(t) for t in trials]))
    assert s.ci95[0] <= s.median <= s.ci95[1]
    assert s.trials < TRIAL_LEVEL_MIN and "two-level" in s.ci95_method
