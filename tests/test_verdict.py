"""Accuracy claims: Newcombe's paired interval against published worked examples, its coverage
against the percentile bootstrap's, the pool's exact bound, the verdict's three outcomes, and the
one budget rule in every consumer (04/06's choice, the final round, the hand-off)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from optlib.measurement import verdict as V
from optlib.measurement.stats import summarize
from optlib.results.records import Record
from optlib.results.values import Fidelity, PoolAgreement

# Published 95% intervals for a paired difference of proportions by Newcombe's method 10 (the
# hybrid score interval with the correlation correction). Tables as (both, only first, only
# second, neither), difference = (only first - only second) / n.
PUBLISHED = [
    # Newcombe RG (1998) Stat Med 17:2635-2650, the paper's worked example, 50 pairs:
    # theta = 0.2, method 10: 0.0562 to 0.3292 (method 8, without the correlation term: 0.0618 to 0.3242).
    ((20, 12, 2, 16), (0.0562, 0.3292), 4),
    # Fagerland MW, Lydersen S, Laake P (2014) Stat Med 33:2850-2875, their example of airway
    # hyper-responsiveness before and after stem cell transplantation (Bentur et al.), 21 pairs,
    # the "Newcombe square-and-add" (method 10) row: -0.507 to -0.026.
    ((1, 1, 7, 12), (-0.507, -0.026), 3),
    # Tang ML, Ling MH, Ling L, Tian G (2010) Stat Med 29, their 14-pair example, the hybrid score
    # interval: -0.1574 to 0.4136.
    ((8, 3, 1, 2), (-0.1574, 0.4136), 4),
]


@pytest.mark.parametrize("table,expected,digits", PUBLISHED)
def test_newcombe_method_10_matches_the_published_worked_examples(table, expected, digits):
    lo, hi = V.paired_change_ci(V.PairedCounts(*table))
    assert (round(lo, digits), round(hi, digits)) == pytest.approx(expected, abs=1.1 * 10 ** -digits)


def test_wilson_matches_scipy_for_whole_counts():
    for k, n in ((0, 20), (1, 29), (15, 148), (540, 540)):
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
        assert V.wilson_ci(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_no_changed_decision_gives_an_interval_that_is_not_degenerate_and_shrinks_with_n():
    small = V.paired_change_ci(V.PairedCounts(520, 0, 0, 20))
    large = V.paired_change_ci(V.PairedCounts(5200, 0, 0, 200))
    assert small[0] < 0 < small[1] and large[0] < 0 < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 3
    # the bootstrap's [0, 0] is what this replaces: 540 images with none changed cannot show +-0.5 pp
    assert max(-small[0], small[1]) > 0.005
    # a symmetric table at p = 0.5 is where the uncorrected correlation collapses the interval to a point
    half = V.paired_change_ci(V.PairedCounts(50, 0, 0, 50))
    assert half[1] - half[0] > 0.02


def test_coverage_is_near_95_percent_where_the_percentile_bootstrap_falls_short():
    """Few discordant pairs on 540 images: simulated tables with a known true difference."""
    rng = np.random.default_rng(0)
    n, p_new, p_ref, reps = 540, 0.002, 0.004, 300
    truth = p_new - p_ref
    newcombe = bootstrap = 0
    for _ in range(reps):
        b, c, a, d = rng.multinomial(n, [p_new, p_ref, 0.95 - p_new - p_ref, 0.05])
        lo, hi = V.paired_change_ci(V.PairedCounts(a, b, c, d))
        newcombe += lo <= truth <= hi
        resampled = rng.multinomial(n, [b / n, c / n, 1 - (b + c) / n], size=2000)  # the paired bootstrap's draws
        blo, bhi = np.percentile((resampled[:, 0] - resampled[:, 1]) / n, [2.5, 97.5])
        bootstrap += blo <= truth <= bhi
    assert newcombe / reps >= 0.93
    assert bootstrap / reps < 0.9


def test_images_to_resolve_is_the_first_size_whose_interval_clears_the_budget():
    counts = V.PairedCounts(500, 4, 6, 30)  # -0.37 pp on 540 images: unresolved against 0.5 pp
    assert V._outcome(V.paired_change_ci(counts), 0.005) == "unresolved"
    n = V.images_to_resolve(counts, 0.005)
    assert n is not None and n > 540
    assert V._outcome(V.paired_change_ci(counts.scaled(n)), 0.005) != "unresolved"
    assert V._outcome(V.paired_change_ci(counts.scaled(n - 2)), 0.005) == "unresolved"
    on_the_line = V.PairedCounts(900, 0, 5, 95)  # exactly -0.5 pp
    assert V.images_to_resolve(on_the_line, 0.005) is None


def test_pool_bound_is_the_exact_binomial_upper_end():
    for changed, n in ((0, 5000), (3, 5000), (40, 1000)):
        ci = stats.binomtest(changed, n).proportion_ci(0.95, method="exact")
        assert V.changed_share_bound(changed, n) == pytest.approx(ci.high, rel=1e-12)
    assert V.changed_share_bound(0, 5000) == pytest.approx(1 - 0.025 ** (1 / 5000), rel=1e-9)  # closed form at 0
    a = np.array([0, 1, 1, 0, 1] * 200)
    b = a.copy()
    b[:3] = 1 - b[:3]
    pool = V.pool_agreement(a, b, "test")
    assert (pool.images, pool.changed) == (1000, 3) and pool.changed_share == pytest.approx(0.003)


def fidelity(b, c, n, pool=None):
    """A Fidelity as metrics.fidelity builds it, from b now right, c now wrong of n (5% both wrong)."""
    d = round(0.05 * n)
    counts = V.PairedCounts(n - b - c - d, b, c, d)
    return Fidelity("pytorch-fp32", 1 - (b + c) / n, b + c, (b + c) / n, b, c, 0.1, 0.01, counts.change,
                    V.paired_change_ci(counts), both_correct=n - b - c - d, both_wrong=d, pool=pool)


def pool(changed, images=5000):
    return PoolAgreement("generated", images, changed, changed / images, V.changed_share_bound(changed, images))


def test_verdict_outcomes_and_the_evidence_that_decided():
    assert V.judge(fidelity(0, 0, 3000), 0.005).outcome == "within"  # +-0.16 pp on 3000
    worse = V.judge(fidelity(0, 60, 3000), 0.005)
    assert (worse.outcome, worse.evidence) == ("worse", "labelled")
    unresolved = V.judge(fidelity(0, 0, 540), 0.005)
    assert unresolved.outcome == "unresolved" and unresolved.images_to_resolve > 540
    assert "straddles" in unresolved.why and f"{unresolved.images_to_resolve:,}" in unresolved.why
    by_pool = V.judge(fidelity(0, 0, 540, pool(2)), 0.005)
    assert (by_pool.outcome, by_pool.evidence, by_pool.label) == ("within", "pool", "within (pool)")
    assert by_pool.pool_changed_share_bound < 0.005
    fine_tuned = V.judge(fidelity(0, 0, 540, pool(2)), 0.005, fine_tuned=True)
    assert fine_tuned.outcome == "unresolved" and "fine-tuned" in fine_tuned.why
    too_many = V.judge(fidelity(0, 0, 540, pool(40)), 0.005)
    assert too_many.outcome == "unresolved"


def _record(name, ms, fid, notebook="04_int8_ptq", fine_tune=0.0, kind="onnxruntime", speedup=None):
    from optlib.results.values import Artifact, Ratio

    rec = Record("t", notebook, name, "quantization", "onnxruntime", "int8", device={"kind": "cpu", "threads": 2},
                 latency_ms={"total": summarize(np.full(6, ms))}, fidelity=fid, artifact=Artifact(kind, {"model": "m"}),
                 one_time_cost_seconds={"fine-tune": fine_tune} if fine_tune else {},
                 speedups=[Ratio(speedup or 10.0 / ms, (9.0 / ms, 11.0 / ms), "pytorch-fp32", trials=6, batch_size=1)])
    rec.batch_size = 1
    return rec


def test_every_consumer_applies_the_one_rule(tmp_path):
    """The fastest configuration is unresolved on its labelled interval but within by the pool; a
    faster fine-tuned one has the same evidence and is not within. 04/06's choice, the final round's
    budget pick and the hand-off all take the pool-certified one."""
    from optlib.results import compare, deploy, final_round

    recs = {"pytorch-fp32": _record("pytorch-fp32", 10.0, None, "01_baseline", kind="pytorch-eager", speedup=1.0),
            "qat-fast": _record("qat-fast", 0.5, fidelity(0, 0, 540, pool(2)), fine_tune=30.0),
            "ptq-pool": _record("ptq-pool", 1.0, fidelity(0, 0, 540, pool(2))),
            "ptq-no-pool": _record("ptq-no-pool", 0.8, fidelity(0, 0, 540)),
            "ptq-slow": _record("ptq-slow", 2.0, fidelity(1, 1, 540, pool(1)))}
    names = [n for n in recs if n != "pytorch-fp32"]
    table = compare.budget_table(recs, 0.005, names)
    assert list(table.index[table["within_budget"].astype(bool)]) == ["ptq-pool", "ptq-slow"]
    assert table.loc["qat-fast", "verdict"] == "unresolved" and table.loc["ptq-pool", "verdict"] == "within (pool)"

    class M:  # a chapter's Measurement: its records and their raw latency samples
        records = recs
        latency_samples = {n: {"total": [np.full(20, r.latency.median * (1 + 0.01 * i)) for i in range(6)]}
                           for n, r in recs.items()}

    best, _, ties = compare.budget_choice(M, 0.005, names, tmp_path / "choice.json")
    assert best == "ptq-pool" and ties == []
    import json

    saved = json.loads((tmp_path / "choice.json").read_text())
    assert saved["chosen"] == "ptq-pool" and saved["verdicts"]["ptq-pool"]["evidence"] == "pool"
    chosen, _ = final_round.choose_finalists(list(recs.values()), "cpu", 0.005, limit=3, factorial=False)
    budget_pick = [f.record.name for f in chosen if any("verdict" in w for w in f.why)]
    assert budget_pick == ["ptq-pool"]
    picked, why = deploy.choose(list(recs.values()), 0.005)
    assert picked.name == "ptq-pool" and "within" in why
    with pytest.raises(deploy.DeployError, match="none of the 1 ONNX Runtime or OpenVINO configuration.*unresolved"):
        deploy.choose([recs["pytorch-fp32"], recs["ptq-no-pool"]], 0.005)  # nothing certified: nothing handed off
    for r in recs.values():  # the stored verdict is the same rule's
        r.verdict = V.verdict_of(r, 0.005)
    assert [n for n, r in recs.items() if V.within_budget(r, 0.005)] == ["pytorch-fp32", "ptq-pool", "ptq-slow"]


def test_resolution_states_labelled_class_and_pool_resolution():
    acc = {"n": 540, "accuracy": 0.96, "binary": {"tp": 380, "fn": 14, "tn": 140, "fp": 6,
                                                  "sensitivity": 380 / 394, "specificity": 140 / 146}}
    res = V.resolution(acc, pool_images=5000)
    assert res["accuracy_change"] > 0.005  # 540 images cannot resolve half a point
    assert res["sensitivity_change"] < res["specificity_change"]  # 394 positives against 146 negatives
    assert res["pool_changed_bound"] == pytest.approx(V.changed_share_bound(0, 5000))
    text = V.resolution_statement(res, 0.005)
    assert "cannot certify" in text and "5,000" in text
    assert "can certify" in V.resolution_statement(V.resolution({"n": 3000, "accuracy": 0.95}), 0.005)
