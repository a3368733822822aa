import numpy as np
import pytest
from scipy import stats as sps

from optlib.stats import bootstrap_ci, min_samples_for, ratio_ci, summarize


def test_summary_matches_numpy():
    rng = np.random.default_rng(1)
    trials = [rng.lognormal(1.0, 0.3, size=200) for _ in range(5)]
    s = summarize(trials)
    pooled = np.concatenate(trials)
    for p in (50, 90, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(pooled, p))
    assert s["mean"] == pytest.approx(pooled.mean())
    assert s["std"] == pytest.approx(pooled.std(ddof=1))
    assert s["min"] == pooled.min() and s["max"] == pooled.max()
    assert s["count"] == 1000 and s["trials"] == 5
    assert s["median"] == pytest.approx(np.median([np.median(t) for t in trials]))
    lo, hi = s["ci95"]
    assert lo <= s["median"] <= hi
    assert s["low_confidence"] == []  # 1000 samples are enough for p99 (662)


def test_low_confidence_thresholds():
    assert min_samples_for(90) == 64 and min_samples_for(99) == 662
    assert summarize(np.arange(63.0))["low_confidence"] == ["p90", "p95", "p99"]
    assert summarize(np.arange(64.0))["low_confidence"] == ["p95", "p99"]
    assert summarize(np.arange(662.0))["low_confidence"] == []


def test_bootstrap_ci_matches_scipy():
    rng = np.random.default_rng(2)
    x = rng.normal(10, 2, size=40)
    ours = bootstrap_ci(x, np.median, seed=3)
    ref = sps.bootstrap((x,), np.median, method="percentile", random_state=np.random.default_rng(3),
                        n_resamples=2000, vectorized=False).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high))


def test_ratio_ci_brackets_true_ratio():
    rng = np.random.default_rng(4)
    a = rng.normal(10, 0.2, size=50)
    b = rng.normal(5, 0.1, size=50)
    point, (lo, hi) = ratio_ci(a, b)
    assert point == pytest.approx(np.median(a) / np.median(b))
    assert lo < 2.0 < hi and hi - lo < 0.2
