"""measure(): same-run speed-ups, the noise floor, memory per configuration, and its own records."""
import numpy as np
import pytest

from optlib.backends.artifacts import eager_artifact
from optlib.backends.pytorch import TorchRunner
from optlib.core import paths
from optlib.core.params import from_dict
from optlib.measurement.experiment import measure
from optlib.results.records import load_records, write_record
from optlib.workload.data import PreprocessSpec
from optlib.workload.models import ModelInfo, save_state_dict
from tests.helpers import tiny_resnet

SPEC = PreprocessSpec(32, [0.5] * 3, [0.25] * 3)


@pytest.fixture()
def run(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    params = from_dict({"target": "m", "bench": {"warmup": 1, "samples": 6, "trials": 6, "batch_sizes": [1, 4],
                                                 "threads": 1, "settle_s": 0.0, "eval_batch_size": 8}})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(16)]
    labels = np.arange(16) % 3
    model = tiny_resnet(3)
    weights = save_state_dict(model, paths.models_dir("m") / "r18.pt")
    info = ModelInfo("torchvision:resnet18", 3, "test", 0, weights=str(weights))
    ref = TorchRunner(model, SPEC, name="ref", threads=1).annotate(size_bytes=123, artifact=eager_artifact(info, SPEC))
    other = TorchRunner(tiny_resnet(3).half().float(), SPEC, name="other", threads=1, technique="x")
    other.annotate(one_time_cost_seconds={"export": 2.0}, custom={"k": 1})
    return params, images, labels, ref, other


def test_measure_writes_records_with_same_run_speedups_and_noise_floor(run):
    params, images, labels, ref, other = run
    m = measure([ref, other], images, labels, ["a", "b", "c"], params, "01_test", reference="ref", noise_floor=True)
    assert sorted(r.name for r in load_records("m")) == ["other", "ref"]  # the twin writes no record
    r, o = m.records["ref"], m.records["other"]
    assert r.fidelity is None and o.fidelity.reference == "ref" and o.fidelity.flips == int(
        (m.logits["other"].argmax(1) != m.logits["ref"].argmax(1)).sum())
    # the speed-up is the median of per-trial ratios of the two runners' blocks, from the raw samples
    per_trial = [np.median(a) / np.median(b) for a, b in zip(m.latency_samples["ref"]["total"],
                                                          m.latency_samples["other"]["total"])]
    s = o.speedup("ref")
    assert s.value == pytest.approx(np.median(per_trial)) and s.batch_size == 1 and s.trials == 6
    assert {(x.metric, x.batch_size) for x in o.speedups} == {("latency", 1), ("throughput", 1), ("throughput", 4)}
    assert r.speedup("ref").value == 1.0 and r.speedup("ref").ci95 == (1.0, 1.0)
    t4 = o.throughput["4"]
    assert t4.images_per_s == pytest.approx(4000.0 / t4.batch_latency_ms.median)
    # at the latency batch size the throughput is the latency's own full-graph calls, not timed again
    assert o.throughput["1"].batch_latency_ms.trial_medians == o.latency_ms["total"].trial_medians
    assert o.extra["stopping"] == {"rule": "fixed: 6 trials; latency blocks of 6 calls",
                                   "latency_trials": 6, "calls_per_block": 6,
                                   "throughput_trials": {"1": 6, "4": 6}}
    nf = r.noise_floor
    assert nf.twin == "ref-twin" and nf.twin_flips == 0 and nf.twin_max_abs_diff == 0.0
    assert nf.paired.ci95[0] <= nf.paired.value <= nf.paired.ci95[1] and "paired" in nf.paired.method
    assert "independent" in nf.independent.method
    # what the runners knew goes into their records; memory from a child for the one with an artifact
    assert r.size_bytes == 123 and r.artifact.files["weights"] == "models/r18.pt"  # relative to outputs/m/
    assert r.memory is not None and r.memory.above_resting_bytes > 0
    assert o.memory is None and "no artifact" in o.extra["memory_not_measured"]
    assert o.one_time_cost_seconds == {"export": 2.0} and o.extra["custom"] == {"k": 1} and o.technique == "x"
    assert load_records("m")[0].speedups == o.speedups  # what was written reads back typed


def test_keep_existing_and_discard(run):
    params, images, labels, ref, other = run
    params.bench.memory = False
    first = measure([ref], images, labels, ["a", "b", "c"], params, "01_test", reference="ref")
    write_record(first.records["ref"])
    before = (paths.results_dir("m") / "ref.json").read_text()
    measure([ref, other], images, labels, ["a", "b", "c"], params, "02_test", reference="ref",
            keep_existing=("ref",), discard=("other",))
    assert (paths.results_dir("m") / "ref.json").read_text() == before
    assert not (paths.results_dir("m") / "other.json").exists()
    with pytest.raises(ValueError, match="same-run ratios"):
        measure([other], images, labels, ["a", "b", "c"], params, "02_test", speedups_against=["ref"])


def test_measure_compares_decisions_on_the_pool_and_records_the_verdict(run):
    """The pool's changed decisions are those of the runner against the reference on the pool's
    images (counted here by hand); the verdict is the one rule's on the stored fidelity, and the
    reference's record states what the images can resolve."""
    from optlib.backends.base import evaluate
    from optlib.measurement.verdict import changed_share_bound, verdict_of
    from optlib.workload.data import Pool

    params, images, labels, ref, other = run
    rng = np.random.default_rng(1)
    pool = Pool([rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(40)], "test pool")
    twin = ref.twin("same-weights")  # the same model: no decision changes anywhere
    m = measure([ref, other, twin], images, labels, ["a", "b", "c"], params, "01_test", reference="ref", pool=pool)
    by_hand = int((evaluate(other, pool.images, 8).argmax(1) != evaluate(ref, pool.images, 8).argmax(1)).sum())
    o, t = m.records["other"], m.records["same-weights"]
    assert (o.fidelity.pool.images, o.fidelity.pool.changed, o.fidelity.pool.source) == (40, by_hand, "test pool")
    assert t.fidelity.pool.changed == 0 and t.fidelity.pool.changed_share_bound == changed_share_bound(0, 40)
    assert o.verdict == verdict_of(o, params.quant.max_accuracy_drop) and m.records["ref"].verdict is None
    lo, hi = t.fidelity.accuracy_change_ci95
    assert lo < 0 < hi  # nothing changed on 16 images is not a zero-width interval
    saved = {r.name: r for r in load_records("m")}
    assert saved["other"].verdict == o.verdict and saved["ref"].extra["resolution"]["pool_images"] == 40
