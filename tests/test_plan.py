"""The plan before a run: its count of a configuration's timed calls against the calls the harness
really makes (a counting runner on a fake clock), the image counts against a folder written here,
and the plan command end to end on the smoke params."""
import dataclasses
from collections import Counter

import numpy as np
import pytest

from optlib.core.params import BenchParams, from_dict
from optlib.measurement import plan, timing
from tests.helpers import write_image_folder
from tests.test_pipeline import run_cli
from tests.test_runner_bench import _Clock


class _Counting:
    """Counts eager-forward equivalents per batch size (the features stage is the whole network,
    preprocessing and the head are free) and spends `ms_per_image` of the fake clock per forward."""
    backend, device, name = "fake", "cpu", "counting"

    def __init__(self, clock, ms_per_image):
        self.clock, self.ms, self.forwards = clock, ms_per_image, Counter()

    def activate(self):
        pass

    def synchronize(self):
        pass

    def _forward(self, n):
        self.forwards[n] += 1
        self.clock.ns += int(self.ms * n * 1e6)

    def preprocess(self, batch):
        return batch

    def extract_features(self, x):
        self._forward(len(x))
        return x

    def classify(self, f):
        return f

    def predict(self, batch):
        self._forward(len(batch))
        return batch


@pytest.mark.parametrize("bench", [
    BenchParams(warmup=10, samples=40, trials=3, min_trials=3, stage_every=4, batch_sizes=[1, 8, 32], settle_s=0.0),
    BenchParams(warmup=2, samples=12, trials=5, min_trials=5, stage_every=1, batch_sizes=[2, 16], settle_s=0.0),
    # time, not calls: 0.5 s blocks at 2 ms a call are 250 calls, above the trusted p99's 662 / 6 = 111
    BenchParams(warmup=10, samples=40, block_seconds=0.5, trials=6, min_trials=6, stage_every=4, batch_sizes=[1, 8],
                settle_s=0.0),
], ids=["calls", "stages-every-call", "block-seconds"])
def test_the_plan_counts_the_calls_the_harness_makes(monkeypatch, bench):
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    images = [np.zeros((8, 8), np.uint8)] * 10
    r = _Counting(clock, 2.0)
    lat_bs = min(bench.batch_sizes)  # as experiment.measure times them
    timing.latency([r], images, bench, batch_size=lat_bs, progress=False)
    timing.throughput([r], images, bench, batch_sizes=[b for b in bench.batch_sizes if b != lat_bs], progress=False)
    assert plan.measuring_calls(bench, first_call_s=2e-3 * lat_bs) == dict(r.forwards)


def test_image_counts_of_a_folder_and_of_the_embedded_workloads(tmp_path):
    root = write_image_folder(tmp_path / "test", per_class=5)  # 10 images, a corrupt .png and a .txt
    (root / "NORMAL" / "scan.dcm").write_bytes(b"\0" * 200)
    p = from_dict({"data": {"root": str(root), "max_test_images": 8}})
    assert plan.image_counts(p) == {"test": 8, "train": 0, "pool": 0}
    p = from_dict({"data": {"root": str(root), "train_root": str(root), "fidelity_root": str(root)}})
    assert plan.image_counts(p) == {"test": 12, "train": 12, "pool": 12}  # 10 images, the corrupt one, the DICOM
    p = from_dict({"data": {"embedded": "phantoms", "phantom_test_images": 700, "phantom_train_images": 300,
                            "fidelity_pool_images": 100}})
    assert plan.image_counts(p) == {"test": 700, "train": 300, "pool": 100}
    assert plan.image_counts(from_dict({})) == {"test": 540, "train": 1257, "pool": 0}  # the digits, 0.3 of 1797


def test_the_estimate_follows_the_params():
    """More trials cost more measuring; no training side means no fine-tuning; every chapter has a row."""
    probe = plan.Probe({1: 0.01, 8: 0.05, 32: 0.2, 64: 0.4}, 0.5, 64, 3.0, {"test": 1000, "train": 2000, "pool": 500}, 21)
    p = from_dict({"bench": {"trials": 6, "batch_sizes": [1, 32]}})
    t = plan.estimate(p, probe)
    assert list(t.index)[0] == "00_data_and_model" and list(t.index)[-1] == "99_comparison" and len(t) == 11
    more = plan.estimate(from_dict({"bench": {"trials": 12, "batch_sizes": [1, 32]}}), probe)
    assert (more["measuring_s"] >= t["measuring_s"]).all() and more.loc["02_onnx_and_compilers", "measuring_s"] == \
        pytest.approx(2 * t.loc["02_onnx_and_compilers", "measuring_s"])
    untrained = plan.Probe(probe.forward_s, 0.5, 64, 3.0, {"test": 1000, "train": 0, "pool": 0}, 21)
    assert plan.estimate(p, untrained).loc["06_pruning", "training_s"] == 0
    # calibration is priced where it runs: nothing without a training side; a study on larger sizes
    # or with the histogram methods costs more than one on fewer images with min-max alone
    cal = plan.estimate(p, untrained).loc[["04_int8_ptq", "04b_int8_studies", "07_tensorrt"], "conversions_s"]
    assert (cal < t.loc[cal.index, "conversions_s"]).all()
    small = from_dict({"quant": {"study_sizes": [1, 10], "methods": ["minmax"]}})
    large = from_dict({"quant": {"study_sizes": [1, 10, 500], "methods": ["minmax"]}})
    hist = from_dict({"quant": {"study_sizes": [1, 10], "methods": ["minmax", "entropy"]}})
    cost = {k: plan.estimate(q, probe).loc["04b_int8_studies", "conversions_s"] for k, q in
            {"small": small, "large": large, "hist": hist}.items()}
    assert cost["small"] < cost["large"] and cost["small"] < cost["hist"]
    # chapter 03's PyTorch variants at their price on the CPU the probe read: slower where it lacks
    # FP16 arithmetic and BF16 kernels (the slow round, priced on its own), unknown ones as FP32
    avx2 = {"onednn_bf16_supported": False, "avx512_fp16": False, "amx_fp16": False}
    amx = {"onednn_bf16_supported": True, "avx512_fp16": True, "amx_fp16": True}
    minutes = {name: plan.estimate(p, dataclasses.replace(probe, capabilities=caps)).loc["03_fp16_bf16"]
               for name, caps in {"unknown": {}, "amx": amx, "avx2": avx2}.items()}
    assert minutes["amx"]["total_min"] < minutes["avx2"]["total_min"]
    assert plan.CHAPTER_OVERHEAD_S == minutes["unknown"]["other_s"] < minutes["amx"]["other_s"] < minutes["avx2"][
        "other_s"]  # the slow round: none, FP16 alone, every variant
    assert set(t["dominant"]) <= {"measuring", "evaluating", "memory_children", "training", "conversions", "other"}


def _flat(d: dict) -> dict:
    return {f"{s}.{k}": v for s, section in d.items() if isinstance(section, dict) for k, v in section.items()}


def test_a_budget_cuts_in_order_until_the_estimate_fits():
    """The cpu target's params against a probe of a 3 ms model: fitted to half its estimate, the
    params that come back validate, differ from the given ones only where a cut says so, and their
    own estimate (recomputed here with their image counts) is within the budget; the cuts come in
    the ladder's order with each estimate lower than the last. Within budget: nothing cut; an
    impossible budget: every cut made and said not to fit."""
    from optlib.core import paths
    from optlib.core.params import load_params

    given = load_params(paths.PARAMS_DIR / "cpu.yaml")
    probe = plan.Probe({1: 0.003, 32: 0.06, 64: 0.12}, 0.4, 64, 3.0, plan.image_counts(given), 21)
    before = float(plan.estimate(given, probe)["total_min"].sum())
    fitted, cuts, table = plan.fit(given, probe, before / 2)
    again = plan.estimate(fitted, plan.Probe(probe.forward_s, 0.4, 64, 3.0, plan.image_counts(fitted), 21))
    after = float(again["total_min"].sum())
    assert after == pytest.approx(float(table["total_min"].sum())) and after <= before / 2
    order = [key for key, _, _ in plan.SHRINKS]
    assert [order.index(c["key"]) for c in cuts] == sorted(order.index(c["key"]) for c in cuts)
    assert all(a["estimate_min"] > b["estimate_min"] for a, b in zip(cuts, cuts[1:]))
    changed = {k for k, v in _flat(fitted.to_dict()).items() if _flat(given.to_dict())[k] != v}
    assert changed - {"bench.min_trials"} == {c["key"] for c in cuts}
    assert fitted.bench.trials >= 5  # the trial-level intervals' minimum
    same, none, _ = plan.fit(given, probe, before * 2)
    assert none == [] and same.to_dict() == given.to_dict()
    least, every, t = plan.fit(given, probe, 0.1)
    assert "does not fit" in plan.describe_fit(0.1, before, every, float(t["total_min"].sum()))
    assert (least.bench.trials, least.data.max_test_images, least.prune.finetune_epochs) == (5, plan.MIN_TEST_IMAGES, 3)
    # every cut reaches its floor, never below: cpu.yaml ranks layers on 2,000 images, prunes iteratively
    # in 3 steps, searches with 3 probes and fine-tunes without a step cap
    assert (least.quant.sensitivity_images, least.prune.iterative_steps, least.memory.search_probes,
            least.finetune.max_steps) == (plan.MIN_SENSITIVITY_IMAGES, 2, 2, plan.MIN_FINETUNE_STEPS)
    assert (given.quant.sensitivity_images, given.prune.iterative_steps, given.memory.search_probes,
            given.finetune.max_steps) == (2000, 3, 3, None)
    # the calibration study loses its largest sizes first and keeps two (cpu.yaml: 10, 100, 500)
    assert (given.quant.study_sizes, least.quant.study_sizes) == ([10, 100, 500], [10, 100])
    assert fitted.data.max_test_images is None or fitted.data.max_test_images >= plan.MIN_TEST_IMAGES


def test_plan_command_prints_what_will_run_and_how_long(tmp_path):
    fitted = tmp_path / "fitted.yaml"
    out = run_cli(["plan", "--params", "params/smoke.yaml", "--notebooks", "00,01,02", "--budget-minutes", "0.5",
                   "--write", str(fitted)], tmp_path).stdout
    for nb in ("00_data_and_model", "01_baseline", "02_onnx_and_compilers"):
        assert f"run  {nb}" in out
    assert "Estimated" in out and "eager FP32 batch 1:" in out and "03_fp16_bf16" not in out.split("Probe")[0]
    assert "Budget 0.5 min: estimated" in out
    assert "onnx.compare_optimization_levels: True -> False" in out  # smoke compares the levels; 02 measures them
    from optlib.core.params import load_params

    p = load_params(fitted)  # the params that fit, a params file `optlib run --params` takes
    assert p.target == "smoke" and p.onnx.compare_optimization_levels is False
    assert "cut:" in fitted.read_text().splitlines()[0]


def test_run_with_a_budget_runs_the_params_that_fit_and_keeps_them(tmp_path, monkeypatch, capsys):
    """`optlib run --budget-minutes N`: the plan first (a probe of a 3 ms model here), then the run
    with the params cut to fit, which are kept as outputs/<target>/params.fitted.yaml; the run gets
    exactly those params and every cut is printed before it starts."""
    import optlib.__main__ as cli
    import optlib.core.pipeline as pipeline
    from optlib.core import paths
    from optlib.core.params import load_params

    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    given = load_params(paths.PARAMS_DIR / "cpu.yaml")
    probe = plan.Probe({1: 0.003, 32: 0.06, 64: 0.12}, 0.4, 64, 3.0, plan.image_counts(given), 21)
    monkeypatch.setattr(plan, "probe", lambda params: probe)
    ran = []
    monkeypatch.setattr(pipeline, "run_notebooks", lambda params, selection, force: ran.append(params) or [])
    budget = round(float(plan.estimate(given, probe)["total_min"].sum()) / 2, 1)
    assert cli.main(["run", "--params", str(paths.PARAMS_DIR / "cpu.yaml"), "--budget-minutes", f"{budget:g}"]) == 0
    out = capsys.readouterr().out
    kept = load_params(paths.target_dir("cpu") / "params.fitted.yaml")
    assert len(ran) == 1 and ran[0].to_dict() == kept.to_dict() != given.to_dict()
    assert f"Budget {budget:g} min" in out and out.index("cut(s):") < out.index("running with the fitted params")
    again = plan.estimate(kept, plan.Probe(probe.forward_s, 0.4, 64, 3.0, plan.image_counts(kept), 21))
    assert float(again["total_min"].sum()) <= budget
