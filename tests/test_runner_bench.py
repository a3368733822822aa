import numpy as np
import pytest
import torch

from optlib import bench
from optlib.data import PreprocessSpec, preprocess
from optlib.experiment import stage_split_error
from optlib.params import BenchParams
from optlib.runners import TorchRunner, evaluate
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
    assert stage_split_error(r, images) < 1e-5
    logits = evaluate(r, images, batch_size=3)  # batches of 3, 3, 3, 1: order kept
    np.testing.assert_allclose(logits, model(preprocess(images, SPEC)).detach().numpy(), atol=1e-5)


def test_channels_last_variant_agrees(images):
    model = tiny_resnet(3)
    a = TorchRunner(model, SPEC, threads=1)
    b = TorchRunner(model, SPEC, name="pytorch-fp32-cl", threads=1, channels_last=True)
    np.testing.assert_allclose(a.predict(images), b.predict(images), atol=1e-4)


def test_latency_and_throughput_shapes(images):
    r1 = TorchRunner(tiny_resnet(2), SPEC, name="a", threads=1)
    r2 = TorchRunner(tiny_resnet(2), SPEC, name="b", threads=1)
    cfg = BenchParams(warmup=1, samples=7, trials=2, batch_sizes=[1, 4], threads=1, settle_s=0.0)
    lat, samples = bench.latency([r1, r2], images, cfg, progress=False, return_samples=True)
    for name in ("a", "b"):
        assert set(lat[name]) == set(bench.STAGES)
        assert lat[name]["total"]["count"] == 14 and lat[name]["total"]["trials"] == 2
        assert len(samples[name]["total"]) == 2 and all(len(t) == 7 for t in samples[name]["total"])
        assert all(v > 0 for t in samples[name]["feature_extraction"] for v in t)
    thr = bench.throughput([r1], images, cfg, progress=False)
    assert set(thr["a"]) == {"1", "4"}
    t4 = thr["a"]["4"]
    assert t4["images_per_s"] == pytest.approx(4000.0 / t4["latency_ms"]["median"])


def test_alternating_block_order():
    names = [[r for r in bench._alternating(["A", "B", "C"], t)] for t in range(3)]
    assert names == [["A", "B", "C"], ["C", "B", "A"], ["A", "B", "C"]]


def test_same_inputs_cycle():
    imgs = [np.full((2, 2), i, dtype=np.uint8) for i in range(5)]
    assert [int(b[0][0, 0]) for b in (bench._batch_at(imgs, i, 2) for i in range(4))] == [0, 2, 4, 1]
