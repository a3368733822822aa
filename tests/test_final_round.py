"""The comparison chapter's final round: who is chosen and why, the Pareto front, McNemar's exact
test, and the headline table's noise-floor verdict. The round itself (rebuild, re-time, records,
report) runs end to end in tests/test_pipeline.py."""
import numpy as np
import pytest
from scipy import stats as sps

from optlib.measurement.stats import holm, mcnemar_exact_p, summarize
from optlib.results import final_round as fr
from optlib.results.records import Record
from optlib.results.values import Artifact, Fidelity, NoiseFloor, Ratio

LATENCY = summarize([np.array([1.0, 1.1, 1.2])] * 5)


def record(name, notebook, speedup=None, change=None, ci=None, device="cpu", artifact=True, status="ok", **kw):
    fid = None if change is None else Fidelity("pytorch-fp32", 1.0, 0, 0.0, 0, 0, 0.0, 0.0, change, ci or (change, change))
    return Record(target="t", notebook=notebook, name=name, technique="t", backend="b", precision="fp32", status=status,
                  reason=None if status == "ok" else "why", latency_ms={"total": LATENCY} if status == "ok" else None,
                  batch_size=1, device={"kind": device, "threads": 2},
                  artifact=Artifact("pytorch", {"state": "x.pt"}) if artifact else None, fidelity=fid,
                  speedups=[Ratio(speedup, (speedup * 0.9, speedup * 1.1), "pytorch-fp32", trials=5, batch_size=1)]
                  if speedup is not None else [], **kw)


RECORDS = [
    record("pytorch-fp32", "01_baseline"),
    record("onnxruntime-fp32", "02_onnx_and_compilers", 2.0, 0.0),
    record("compile-fp32", "02_onnx_and_compilers", 1.5, 0.0),
    record("int8-fast", "04_int8_ptq", 4.0, -0.03, (-0.05, -0.01)),  # fastest, over a 0.5% budget
    record("int8-safe", "04_int8_ptq", 3.0, 0.0, (-0.004, 0.004)),  # within it
    record("pruned", "06_pruning", 5.0, -0.10, (-0.12, -0.08)),
    record("no-artifact", "03_fp16_bf16", 9.0, 0.0, artifact=False),
    record("gpu-only", "07_tensorrt", 9.0, 0.0, device="cuda"),
    record("qdq-on-cpu", "07_tensorrt", 0.8, 0.0),  # 07's fastest on this device, slower than the reference
    record("skipped", "07_tensorrt", status="skipped"),
    record("final-pytorch-fp32", "99_comparison"),
]


def test_finalists_are_the_references_the_budget_pick_the_named_and_each_chapters_fastest():
    chosen, left_out = fr.choose_finalists(RECORDS, "cpu", 0.005, named=["compile-fp32"], limit=10)
    why = {f.record.name: f.why for f in chosen}
    assert list(why)[:2] == ["pytorch-fp32", "onnxruntime-fp32"] and why["pytorch-fp32"] == ["reference"]
    # the fastest within the budget *on its interval* is int8-safe, not int8-fast or pruned
    assert any("verdict" in w for w in why["int8-safe"])
    assert why["compile-fp32"] == ["named in comparison.finalists"]
    # each chapter's fastest in its own run, whatever its accuracy
    assert "fastest of 06_pruning in its own run" in why["pruned"] and "int8-fast" in why
    assert "fastest of 02_onnx_and_compilers in its own run" in why["onnxruntime-fp32"]
    assert left_out["no-artifact"] == "no artifact to rebuild it from" and "cuda" in left_out["gpu-only"]
    assert "no faster than pytorch-fp32 in its own run (0.80x)" in left_out["qdq-on-cpu"] and "qdq-on-cpu" not in why
    assert "skipped" not in why and "skipped" not in left_out and "final-pytorch-fp32" not in why


def test_finalists_cap_drops_the_slowest_chapter_bests_first_and_a_wrong_name_is_one_line():
    chosen, left_out = fr.choose_finalists(RECORDS, "cpu", 0.005, limit=4)
    names = [f.record.name for f in chosen]
    # references and the budget pick first (3), then the fastest chapter best (pruned, 5x)
    assert names == ["pytorch-fp32", "onnxruntime-fp32", "int8-safe", "pruned"]
    assert "beyond comparison.max_finalists=4" in left_out["int8-fast"]
    with pytest.raises(ValueError, match="'comparison.finalists': 'gpu-only'.*cuda"):
        fr.choose_finalists(RECORDS, "cpu", 0.005, named=["gpu-only"])


def test_pareto_front_matches_a_brute_force_dominance_check():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        lat = {f"c{i}": float(v) for i, v in enumerate(rng.choice(np.arange(1, 8), n))}
        acc = {f"c{i}": float(v) for i, v in enumerate(rng.choice(np.arange(-3, 2), n))}

        def dominated(a):
            return any(lat[b] <= lat[a] and acc[b] >= acc[a] and (lat[b] < lat[a] or acc[b] > acc[a]) for b in lat)

        undominated = {a for a in lat if not dominated(a)}
        front = fr.pareto_front(lat, acc)
        # ties on both axes keep one representative; every front member is undominated, and every
        # undominated point is on the front or a duplicate of one that is
        assert set(front) <= undominated
        assert all(any((lat[a], acc[a]) == (lat[b], acc[b]) for b in front) for a in undominated)
        assert [lat[n] for n in front] == sorted(lat[n] for n in front)


@pytest.mark.parametrize("b,c", [(0, 0), (1, 9), (9, 1), (5, 5), (0, 12), (3, 20)])
def test_mcnemar_exact_against_the_binomial_tail(b, c):
    n = b + c
    if n == 0:
        assert mcnemar_exact_p(b, c) == 1.0
        return
    # the two-sided exact p: twice the smaller tail of Binomial(n, 1/2), capped at 1
    k = min(b, c)
    tail = sum(sps.binom.pmf(i, n, 0.5) for i in range(k + 1))
    assert mcnemar_exact_p(b, c) == pytest.approx(min(1.0, 2 * tail))
    if (b, c) == (1, 9):
        assert mcnemar_exact_p(b, c) == pytest.approx(22 / 1024)  # 2 * (1 + 10) / 2**10, by hand


def test_headline_table_says_which_ratios_clear_the_noise_floor():
    floor = Ratio(1.0, (0.97, 1.03), "final-pytorch-fp32")
    ref = record("final-pytorch-fp32", "99_comparison", noise_floor=NoiseFloor("twin", floor, floor))
    ref.speedups = [Ratio(1.0, (1.0, 1.0), "final-pytorch-fp32", trials=5, batch_size=1)]
    rows = {"final-pytorch-fp32": ref}
    for name, s, ci in (("final-a", 2.0, (1.9, 2.1)), ("final-b", 1.02, (0.99, 1.05)), ("final-c", 0.9, (0.85, 0.95))):
        r = record(name, "99_comparison", change=0.0)
        r.speedups = [Ratio(s, ci, "final-pytorch-fp32", trials=5, batch_size=1)]
        r.extra = {"final_round": {"of": name[6:], "notebook": "04_int8_ptq", "own_run": {}}}
        rows[name] = r
    t = fr.headline_table(rows)
    assert t.loc["a", "resolved"] == "yes" and t.loc["c", "resolved"] == "yes"
    assert t.loc["b", "resolved"] == "not resolved" and t.loc["final-pytorch-fp32", "resolved"] == "reference"
    assert t.loc["a", "mcnemar_p"] == 1.0 and t.loc["a", "chapter"] == "04_int8_ptq"
    # the first screen's cut: each value with its interval in one cell, the chapter by its number
    c = fr.compact_table(rows)
    assert list(c.columns[:4]) == ["#", "chapter", "speed-up [95% CI]", "accuracy change [95% CI]"]
    assert list(c["#"]) == list(range(1, len(c) + 1))
    assert c.loc["a", "speed-up [95% CI]"] == "2.00x [1.90, 2.10]" and c.loc["a", "chapter"] == "04"
    assert c.loc["a", "accuracy change [95% CI]"].startswith("+0.00% [") and list(c.index) == list(t.index)



def test_holm_adjustment_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([]) == []


def test_break_even_is_the_one_time_cost_over_the_per_image_saving():
    ref = record("final-pytorch-fp32", "99_comparison")
    fast = record("final-fast", "04_int8_ptq", one_time_cost_seconds={"export": 2.0, "calibration": 4.0})
    slow = record("final-slow", "03_fp16_bf16", one_time_cost_seconds={"compile": 30.0})
    fast.latency_ms = {"total": summarize([np.array([0.1, 0.1, 0.1])] * 5)}  # saves 1.0 ms against 1.1 ms
    slow.latency_ms = {"total": summarize([np.array([2.0, 2.0, 2.0])] * 5)}
    t = fr.break_even_table({r.name: r for r in (ref, fast, slow)})
    assert t.loc["final-fast", "break_even_images"] == pytest.approx(6.0 / 1.0e-3)  # 6 s / 1 ms
    assert t.loc["final-fast", "paid_for"] == "calibration, export"
    assert t.loc["final-slow", "break_even_images"] == float("inf")


def _timed(name, trial_ms, **kw):
    """A final-round record whose trial medians are `trial_ms` (one latency value per trial)."""
    lat = summarize([np.full(3, v) for v in trial_ms])
    return Record(target="t", notebook="99_comparison", name=name, technique="t", backend="b", precision="fp32",
                  latency_ms={"total": lat}, batch_size=1, device={"kind": "cpu", "threads": 2}, **kw)


def test_factorial_effects_match_hand_computed_factors():
    """Runtime and sparsity on log latency: eager dense 10 ms, ORT dense 5, eager pruned 5, ORT
    pruned 1.25, so ORT is 2x on the dense model and 4x on the pruned one (geometric mean 2.83x),
    pruning likewise, and together they give 8x against 2 x 2 alone: compounding ratio 2."""
    rng = np.random.default_rng(0)
    noise = np.exp(rng.normal(0, 0.01, 12))  # the same round disturbs all cells of a trial alike
    cells = {("pytorch", "fp32", "dense"): ("pytorch-fp32", 10.0), ("onnxruntime", "fp32", "dense"): ("ort", 5.0),
             ("pytorch", "fp32", "pruned"): ("p-eager", 5.0), ("onnxruntime", "fp32", "pruned"): ("p-ort", 1.25)}
    design = {"factorial": {"pruned": "p", "cells": [[*c, n] for c, (n, _) in cells.items()]}}
    records = {fr.PREFIX + n: _timed(fr.PREFIX + n, ms * noise,
                                     extra={"final_round": design} if n == "pytorch-fp32" else {})
               for n, ms in cells.values()}
    effects = fr.factorial_effects(records).set_index("effect")
    assert list(effects["square"].unique()) == ["runtime x sparsity at precision = fp32"]
    np.testing.assert_allclose(effects.loc["runtime: pytorch -> onnxruntime", "factor"], np.sqrt(8), rtol=1e-9)
    np.testing.assert_allclose(effects.loc["sparsity: dense -> pruned", "factor"], np.sqrt(8), rtol=1e-9)
    np.testing.assert_allclose(effects.loc["runtime x sparsity (compounding)", "factor"], 2.0, rtol=1e-9)
    assert (effects["ci95_low"] <= effects["factor"]).all() and (effects["factor"] <= effects["ci95_high"]).all()
    assert (effects["trials"] == 12).all()


def test_factorial_effects_of_the_second_runtime_step_onnxruntime_to_openvino():
    """The runtime factor's levels are steps (PyTorch -> ONNX Runtime -> OpenVINO): with OpenVINO's
    INT8 cells the ONNX Runtime -> OpenVINO x sparsity square at INT8 is its own row set. ORT INT8
    dense 2 ms, pruned 1; OpenVINO 1 and 0.25: OpenVINO 2x dense, 4x pruned (geometric mean
    sqrt 8), compounding 2; the PyTorch -> ONNX Runtime square at FP32 is there too."""
    cells = {("pytorch", "fp32", "dense"): ("pytorch-fp32", 10.0), ("onnxruntime", "fp32", "dense"): ("ort", 5.0),
             ("pytorch", "fp32", "pruned"): ("p-eager", 5.0), ("onnxruntime", "fp32", "pruned"): ("p-ort", 2.5),
             ("onnxruntime", "int8", "dense"): ("ort-int8", 2.0), ("onnxruntime", "int8", "pruned"): ("p-ort-int8", 1.0),
             ("openvino", "int8", "dense"): ("ov-int8", 1.0), ("openvino", "int8", "pruned"): ("p-ov-int8", 0.25)}
    design = {"factorial": {"pruned": "p", "cells": [[*c, n] for c, (n, _) in cells.items()]}}
    records = {fr.PREFIX + n: _timed(fr.PREFIX + n, [ms] * 6, extra={"final_round": design} if n == "pytorch-fp32" else {})
               for n, ms in cells.values()}
    effects = fr.factorial_effects(records)
    ov = effects[effects["square"] == "runtime x sparsity at precision = int8"].set_index("effect")
    assert ov.loc["runtime: onnxruntime -> openvino", "factor"] == pytest.approx(np.sqrt(8))
    assert ov.loc["runtime x sparsity (compounding)", "factor"] == pytest.approx(2.0)
    assert ov.loc["sparsity: dense -> pruned", "cells"] == "ort-int8, p-ort-int8, ov-int8, p-ov-int8"
    eager = effects[effects["square"] == "runtime x sparsity at precision = fp32"].set_index("effect")
    assert eager.loc["runtime: pytorch -> onnxruntime", "factor"] == pytest.approx(2.0)
    assert set(effects["square"]) == {"runtime x sparsity at precision = fp32", "runtime x sparsity at precision = int8",
                                      "precision x sparsity at runtime = onnxruntime"}


def test_factorial_design_takes_the_fastest_label_with_all_cells():
    def rec(name, precision="fp32", technique="t", ms=1.0, speedups=(), threads=2):
        r = record(name, "06_pruning", extra={"pruning": {"kind": "structured"}} if technique == "pruning" else {})
        r.precision, r.technique, r.speedups = precision, technique, list(speedups)
        r.backend = "openvino" if "openvino" in name else "pytorch" if "pytorch" in name else "onnxruntime"
        r.latency_ms = {"total": summarize([np.full(3, ms)] * 3)}
        r.device = {"kind": "cpu", "threads": threads}
        return r

    # 06 times its pruned INT8 graphs against each unpruned INT8 one, OpenVINO's first here: the
    # design takes ONNX Runtime's at the same threads
    against = [Ratio(1.0, (1, 1), n, trials=3, batch_size=1) for n in ("openvino-int8-nncf", "int8-dense", "int8-dense-1t")]
    cands = [rec("pytorch-fp32"), rec("onnxruntime-fp32"), rec("int8-dense", "int8"), rec("int8-dense-1t", "int8", threads=1)]
    for label, ms in (("a", 0.5), ("b", 0.3), ("c", 0.1)):
        cands += [rec(f"{label}-onnxruntime-fp32", technique="pruning"),
                  rec(f"{label}-onnxruntime-int8", "int8", "pruning", ms, against)]
        if label != "c":  # c is fastest but has no eager FP32 cell
            cands.append(rec(f"{label}-pytorch-fp32", technique="pruning"))
    label, cells = fr.factorial_design({r.name: r for r in cands})
    assert label == "b"
    assert cells[("onnxruntime", "int8", "dense")] == "int8-dense"  # same threads as b's INT8
    assert cells[("pytorch", "fp32", "pruned")] == "b-pytorch-fp32" and len(cells) == 6
    # OpenVINO's cells join where they exist at b's threads: its dense NNCF INT8 at 1 thread does not
    cands += [rec("openvino-fp32"), rec("openvino-int8-nncf", "int8", threads=1),
              rec("b-openvino-int8", "int8", "pruning"), rec("a-openvino-int8", "int8", "pruning")]
    label, cells = fr.factorial_design({r.name: r for r in cands})
    assert label == "b" and len(cells) == 8
    assert cells[("openvino", "fp32", "dense")] == "openvino-fp32"
    assert cells[("openvino", "int8", "pruned")] == "b-openvino-int8"
    assert ("openvino", "int8", "dense") not in cells


def test_roofline_table_shares_of_the_measured_peaks():
    fp = {"fp32": {"2": 100e9}, "bf16": {"2": 200e9}, "int8": {"2": 400e9}}
    ref = _timed("final-pytorch-fp32", [2.0] * 3, extra={"final_round": {
        "of": "pytorch-fp32", "roofline": {"dense_macs": 150e6, "gemm_size": 64, "gemm_peaks_ops": fp}}})
    pruned = _timed("final-p", [0.5] * 3, extra={"final_round": {"of": "p", "macs": 10e6}})
    pruned.precision = "int8"
    table = fr.roofline_table({ref.name: ref, pruned.name: pruned})
    # 2 x 150e6 operations in 2 ms = 150 GOP/s, 1.5 of the FP32 peak; 2 x 10e6 in 0.5 ms = 40 GOP/s, 10% of INT8's
    assert table.loc["pytorch-fp32", "achieved_gops"] == pytest.approx(150.0)
    assert table.loc["pytorch-fp32", "share_of_peak"] == pytest.approx(1.5)
    assert table.loc["p", "peak_of"] == "int8" and table.loc["p", "share_of_peak"] == pytest.approx(0.1)


def test_gemm_peaks_time_real_products():
    from optlib.measurement import roofline

    fn, a, b = roofline._ort_int8_mm(32, 1)
    np.testing.assert_array_equal(fn()[0], a.astype(np.int32) @ b.astype(np.int32))  # u8 x s8 -> s32
    peaks = roofline.gemm_peaks([1], size=64, repeats=2)
    assert set(peaks) == {"fp32", "bf16", "int8"} and all(peaks[k][1] > 0 for k in peaks)


def test_across_targets_keeps_configurations_measured_on_several_targets(tmp_path, monkeypatch):
    from optlib.results.compare import across_targets
    from optlib.results.records import write_record

    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    for target, device, ort, only in (("cpu", "cpu", 3.0, "cpu-only"), ("cuda", "cuda", 0.8, None), ("smoke", "cpu", 2.0, None),
                                      ("no-params-file", "cpu", 2.0, None)):
        for r in (record("pytorch-fp32", "01_baseline"), record("onnxruntime-fp32", "02_onnx_and_compilers", ort),
                  *([record(only, "02_onnx_and_compilers", 5.0)] if only else [])):
            r.target, r.device = target, {"kind": device, "threads": 2}
            write_record(r)
    table = across_targets()
    # CI's smoke target and a folder without a params file are left out; cpu-only was measured on one target
    assert sorted(set(table["target"])) == ["cpu", "cuda"] and "cpu-only" not in set(table["configuration"])
    ort = table[table["configuration"] == "onnxruntime-fp32"].set_index("target")
    assert ort.loc["cpu", "speedup"] == 3.0 and ort.loc["cuda", "speedup"] == 0.8
    assert ort.loc["cuda", "speedup_ci95_low"] == pytest.approx(0.72) and ort.loc["cuda", "device"] == "cuda"
    assert (table[table["configuration"] == "pytorch-fp32"]["speedup"] == 1.0).all()


def test_reference_drift_against_its_own_chapters_run():
    floor = Ratio(1.0, (0.98, 1.02), "final-pytorch-fp32")
    ref = record("final-pytorch-fp32", "99_comparison", noise_floor=NoiseFloor("twin", floor, floor),
                 environment={"timestamp": "2026-11-25T14:00:00+00:00"})
    median = ref.latency.median
    for own_ms, inside in ((median * 1.01, True), (median * 1.2, False)):
        ref.extra = {"final_round": {"notebook": "01_baseline", "own_run": {
            "latency_ms": own_ms, "timestamp": "2026-11-25T12:30:00+00:00"}}}
        d = fr.reference_drift(ref)
        assert d["ratio"] == pytest.approx(own_ms / median) and d["within_noise_floor"] is inside
        assert d["hours_apart"] == pytest.approx(1.5)
    ref.extra = {"final_round": {"own_run": {}}}
    assert fr.reference_drift(ref) is None
