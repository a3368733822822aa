import numpy as np
import pytest
import torch

from optlib.measurement import timing
from optlib.measurement.stats import trials_in_common
from optlib.workload.data import PreprocessSpec, preprocess
from optlib.measurement.experiment import stage_split_error
from optlib.core.params import BenchParams
from optlib.backends import TorchRunner, evaluate
from tests.helpers import tiny_resnet

SPEC = PreprocessSpec(32, [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(10)]


def test_torch_runner_stages_compose_to_the_full_model(images):
    model = tiny_resnet(3)
    r = TorchRunner(model, SPEC, threads=1)
    x = r.preprocess(images[:4])
    staged = r.classify(r.extract_features(x))
    with torch.no_grad():
        full = model(preprocess(images[:4], SPEC)).numpy()
    np.testing.assert_allclose(staged, full, atol=1e-5)
    np.testing.assert_allclose(r.predict(images[:4]), full, atol=1e-5)
    assert stage_split_error(r, images) < 1e-5 and stage_split_error(r, images, 4) < 1e-5
    classify = r.classify  # a head 0.5 off the whole model on the fourth image of a batch, when there is one
    r.classify = lambda f: classify(f) + 0.5 * (np.arange(len(f)) == 3)[:, None]
    assert stage_split_error(r, images, 4) == pytest.approx(0.5, abs=1e-5) and stage_split_error(r, images) < 1e-5
    logits = evaluate(r, images, batch_size=3)  # batches of 3, 3, 3, 1: order kept
    np.testing.assert_allclose(logits, model(preprocess(images, SPEC)).detach().numpy(), atol=1e-5)


def test_channels_last_variant_agrees(images):
    model = tiny_resnet(3)
    a = TorchRunner(model, SPEC, threads=1)
    b = TorchRunner(model, SPEC, name="pytorch-fp32-cl", threads=1, channels_last=True)
    np.testing.assert_allclose(a.predict(images), b.predict(images), atol=1e-4)
    # the channels_last runner works on its own copy: the contiguous runner's convs still compute
    # (and return) contiguous tensors (Module.to in place turned them channels_last before)
    x = a.preprocess(images[:2])
    conv = next(m for m in a.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv_cl = next(m for m in b.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous() and not conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv_cl.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert conv(x).is_contiguous() and conv_cl(x).is_contiguous(memory_format=torch.channels_last)
    assert a.model is model and b.model is not model


def test_latency_and_throughput_shapes(images):
    r1 = TorchRunner(tiny_resnet(2), SPEC, name="a", threads=1)
    r2 = TorchRunner(tiny_resnet(2), SPEC, name="b", threads=1)
    cfg = BenchParams(warmup=1, samples=7, trials=2, batch_sizes=[1, 4], threads=1, settle_s=0.0)
    samples = timing.latency([r1, r2], images, cfg, progress=False)
    for name in ("a", "b"):
        assert set(samples[name]) == set(timing.STAGES)
        assert len(samples[name]["total"]) == 2 and all(len(t) == 7 for t in samples[name]["total"])
        assert all(v > 0 for t in samples[name]["feature_extraction"] for v in t)
    thr = timing.throughput([r1], images, cfg, progress=False)
    assert set(thr) == {1, 4}
    assert len(thr[4]["a"]) == 2 and all(len(t) == 5 for t in thr[4]["a"])  # max(5, 7 // 4) batches per trial


def test_settle_pause_only_after_another_backend(monkeypatch):
    slept = []
    monkeypatch.setattr(timing.time, "sleep", lambda s: slept.append(s))

    class R:
        def __init__(self, backend):
            self.backend = backend

        def activate(self):
            pass

    settler = timing._Settler(0.5)
    for backend in ("pytorch", "pytorch", "onnxruntime", "onnxruntime", "pytorch"):
        settler.before(R(backend))
    assert slept == [0.5, 0.5]


def test_alternating_block_order():
    names = [[r for r in timing._alternating(["A", "B", "C"], t)] for t in range(3)]
    assert names == [["A", "B", "C"], ["C", "B", "A"], ["A", "B", "C"]]


def test_same_inputs_cycle():
    imgs = [np.full((2, 2), i, dtype=np.uint8) for i in range(5)]
    assert [int(b[0][0, 0]) for b in (timing._batch_at(imgs, i, 2) for i in range(4))] == [0, 2, 4, 1]


def test_placed_copies_model_and_parts_together_and_leaves_the_callers_alone():
    from optlib.backends.pytorch import placed
    from optlib.workload.models import split_model

    model = tiny_resnet(3)
    parts = split_model(model)
    assert placed(model, "cpu", parts=parts) == (model, parts)  # nothing to change: no copy
    m2, p2 = placed(model, "cpu", channels_last=True, parts=parts)
    assert m2 is not model
    copied = {id(p) for p in m2.parameters()}
    assert all(id(p) in copied for part in p2 for p in part.parameters())  # the parts are the copy's own
    assert all(p.is_contiguous() for p in model.parameters())  # the caller's model keeps its layout
    x = preprocess([np.zeros((8, 8), np.uint8)] * 2, SPEC)
    with torch.no_grad():
        np.testing.assert_allclose(p2[1](p2[0](x.to(memory_format=torch.channels_last))).numpy(), model(x).numpy(),
                                   atol=1e-5)


class _Clock:
    """A fake perf_counter_ns that only the fake runners advance: timing without timings."""

    def __init__(self):
        self.ns = 0

    def __call__(self):
        return self.ns


class _FakeRunner:
    """Each call costs `cost_ms(calls so far)` per image on the fake clock."""
    backend, device = "fake", "cpu"

    def __init__(self, name, clock, cost_ms):
        self.name, self.clock, self.cost_ms, self.calls = name, clock, cost_ms, 0

    def activate(self):
        pass

    def synchronize(self):
        pass

    def _spend(self, n_images, share=1.0):
        self.clock.ns += int(share * self.cost_ms(self.calls) * n_images * 1e6)

    def preprocess(self, batch):
        self._spend(len(batch), 0.1)
        return batch

    def extract_features(self, x):
        self._spend(len(x), 0.8)
        return x

    def classify(self, f):
        self._spend(len(f), 0.1)
        return f

    def predict(self, batch):
        self.calls += 1
        self._spend(len(batch))
        return batch


def test_adaptive_stopping_lets_a_steady_configuration_go_at_min_trials_and_keeps_a_noisy_one(monkeypatch, images):
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    rng = np.random.default_rng(0)
    drift = np.exp(rng.normal(0.0, 0.3, size=10_000))  # the noisy one's speed moves ~30% every 8 calls
    steady = _FakeRunner("steady", clock, lambda i: 2.0 * (1 + 0.001 * rng.random()))
    noisy = _FakeRunner("noisy", clock, lambda i: drift[i // 8])
    bench = BenchParams(warmup=2, samples=16, trials=12, min_trials=5, stop_ci_width=0.05, batch_sizes=[1, 4],
                        threads=1, settle_s=0.0)
    lat = timing.latency([steady, noisy], images, bench, progress=False)
    thr = timing.throughput([steady, noisy], images, bench, progress=False)
    for name, expected in (("steady", 5), ("noisy", 12)):
        assert {len(lat[name][s]) for s in timing.STAGES} == {expected}
        assert {len(thr[bs][name]) for bs in (1, 4)} == {expected}
    # the rule's measure against the data: the steady runner's trial medians lie within 0.1% of each
    # other, and no percentile interval of their median can be wider than their range
    medians = [np.median(t) for t in lat["steady"]["total"]]
    assert timing.ci_width(lat["steady"]["total"]) <= (max(medians) - min(medians)) / np.median(medians) <= 0.0021
    assert timing.ci_width(lat["noisy"]["total"]) > 0.05
    # the trials both ran pair up: the steady one's 5 with the noisy one's first 5
    a, b = trials_in_common(lat["noisy"]["total"], lat["steady"]["total"])
    assert len(a) == len(b) == 5 and a[4] is lat["noisy"]["total"][4]
    # a reference goes on while anything paired with it does: here the steady one, for the noisy one
    paired = timing.latency([steady, noisy], images, bench, progress=False, references=["steady"])
    assert [len(paired[n]["total"]) for n in ("steady", "noisy")] == [12, 12]
    # a steady configuration against a steady reference stops at min_trials even while a noisy one
    # keeps the reference going; against the noisy one as reference its speed-up is never narrow
    other = _FakeRunner("other", clock, lambda i: 1.0 * (1 + 0.001 * rng.random()))
    lat3 = timing.latency([steady, other, noisy], images, bench, progress=False, references=["steady"])
    assert [len(lat3[n]["total"]) for n in ("steady", "other", "noisy")] == [12, 5, 12]
    lat3 = timing.latency([noisy, other], images, bench, progress=False, references=["noisy"])
    assert [len(lat3[n]["total"]) for n in ("noisy", "other")] == [12, 12]
    assert timing.ratio_ci_width(lat3["noisy"]["total"], lat3["other"]["total"]) > 0.05
    # without a width every configuration runs the full count
    fixed = BenchParams(**{**vars(bench), "stop_ci_width": 0.0})
    again = timing.latency([steady, noisy], images, fixed, progress=False)
    assert [len(again[n]["total"]) for n in ("steady", "noisy")] == [12, 12]
    assert timing.stopping_rule(fixed) == f"fixed: 12 trials; latency blocks of {bench.samples} calls"
    assert "5 to 12 trials" in timing.stopping_rule(bench)


def test_block_seconds_sets_each_configurations_calls_from_its_warm_up(monkeypatch, images):
    """Time, not calls: with bench.block_seconds a configuration's blocks last about that long on
    the (fake) clock, its call count fixed at its first trial from the median of its warm-up calls;
    a slow one never gets fewer than a trusted pooled p99 needs (662 calls over the trials)."""
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    fast = _FakeRunner("fast", clock, lambda i: 0.5)  # ms per call
    slow = _FakeRunner("slow", clock, lambda i: 50.0)
    bench = BenchParams(warmup=4, samples=175, trials=6, block_seconds=1.0, batch_sizes=[1], threads=1, settle_s=0.0)
    lat = timing.latency([fast, slow], images, bench, progress=False)
    assert [len(t) for t in lat["fast"]["total"]] == [2000] * 6  # 1 s / 0.5 ms
    assert [len(t) for t in lat["slow"]["total"]] == [111] * 6  # 1 s / 50 ms = 20, raised to ceil(662 / 6)
    np.testing.assert_allclose(lat["fast"]["total"][0], 0.5)
    assert timing.calls_per_block([0.5], BenchParams(block_seconds=None, samples=175)) == 175
    assert timing.calls_per_block([1e-6], BenchParams(block_seconds=1.0)) == timing.MAX_CALLS_PER_BLOCK
    assert "latency blocks of about 1 s each" in timing.stopping_rule(bench)


def test_stages_on_every_kth_call_and_the_total_on_every_call(monkeypatch, images):
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    r = _FakeRunner("a", clock, lambda i: 2.0)
    bench = BenchParams(warmup=1, samples=10, trials=2, stage_every=4, batch_sizes=[1], threads=1, settle_s=0.0)
    lat = timing.latency([r], images, bench, progress=False)["a"]
    assert [len(t) for t in lat["total"]] == [10, 10]
    assert [len(t) for s in ("preprocessing", "feature_extraction", "classification") for t in lat[s]] == [3] * 6
    # the fake clock's shares (0.1, 0.8, 0.1 of the full call) come back exactly, total 2 ms
    np.testing.assert_allclose([lat[s][0][0] for s in timing.STAGES], [0.2, 1.6, 0.2, 2.0])
    assert np.all(np.concatenate(lat["total"]) == 2.0)


def test_throughput_warm_up_counts_images_not_batches(monkeypatch, images):
    clock = _Clock()
    monkeypatch.setattr(timing.time, "perf_counter_ns", clock)
    runners = [_FakeRunner("a", clock, lambda i: 1.0)]
    bench = BenchParams(warmup=10, samples=40, trials=1, batch_sizes=[4, 32], threads=1, settle_s=0.0)
    calls = []
    for bs in (4, 32):
        before = runners[0].calls
        thr = timing.throughput(runners, images, bench, batch_sizes=[bs], progress=False)
        timed = len(thr[bs]["a"][0])
        calls.append((runners[0].calls - before - timed, timed))
    assert calls == [(3, 10), (1, 5)]  # ceil(10 / 4) and ceil(10 / 32) warm-up batches; 40 // 4 and max(5, 1) timed
