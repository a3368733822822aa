"""Chapter 08's mechanics against independent references: gradients with checkpointing against
plain autograd, a child process that must see a known allocation, the saved-activation estimate
against a hand count, the largest-batch search against the analytic answer, and the
out-of-memory path as a result."""
import copy
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from optlib.backends.artifacts import eager_artifact
from optlib.core.params import ParamsError, from_dict
from optlib.results.values import to_plain
from optlib.measurement import training_memory as tm
from optlib.workload.models import ModelInfo, save_state_dict
from optlib.workload.outputs import Outputs
from tests.helpers import HOLD_MB, holding_model, tiny_resnet
from tests.test_artifacts_memory import SPEC

SOFTMAX3 = Outputs("softmax", 3)


def _batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, 3, (n,), generator=g)


def _saved_count(module, x) -> int:
    n = [0]

    def pack(t):
        n[0] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return n[0]


@pytest.mark.parametrize("config", [tm.TrainConfig("fp32", "stage"), tm.TrainConfig("fp32", "block"),
                                    # 6 segments of ResNet18's 13 layers: one starts at the stem's in-place ReLU
                                    tm.TrainConfig("fp32", "sequential", segments=6),
                                    tm.TrainConfig("bf16-autocast", "block")], ids=lambda c: c.name)
def test_checkpointed_gradients_equal_plain_autograd(config):
    model = tiny_resnet(3)
    x, y = _batch()
    reference = copy.deepcopy(model).train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.dtype is not None):
        loss = nn.functional.cross_entropy(reference(x), y)
    expected = torch.autograd.grad(loss, list(reference.parameters()))

    module, held = tm.trainable(model, config, "fc", x[:2])
    tm.train_step(module, torch.optim.SGD(held.parameters(), lr=0.0), config, SOFTMAX3, x, y)
    for (name, p), g in zip(held.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6, msg=name)
    # ... and recomputation really happened: the checkpointed forward leaves fewer tensors to autograd
    plain, _ = tm.trainable(model, config.plain, "fc")
    assert _saved_count(module, x) < _saved_count(plain, x)
    assert tm.gradient_agreement(model, config, "fc", SOFTMAX3, x, y)["equal"]


def test_estimate_matches_a_hand_count():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    x, y = torch.randn(8, 10), torch.randint(0, 3, (8,))
    e = tm.estimate(model, tm.TrainConfig(), None, SOFTMAX3, x, y, "sgd")
    # per image, FP32: the hidden ReLU output (20, kept once although two layers save it) and the
    # log-probabilities of the loss (3); the input batch and the labels are resting memory
    assert e.activation_per_image_bytes == 4 * (20 + 3)
    params = 4 * (10 * 20 + 20 + 20 * 3 + 3)
    assert e.gradient_bytes == params and e.optimizer_state_bytes == params
    assert tm.estimate(model, tm.TrainConfig(), None, SOFTMAX3, x, y, "adam").optimizer_state_bytes == 2 * params
    # a fresh tensor the forward keeps for backward is counted whole
    held = tm.saved_bytes(holding_model(), tm.TrainConfig(), None, SOFTMAX3, *_batch(2))
    assert HOLD_MB * 2 ** 20 <= held["held"] < HOLD_MB * 2 ** 20 + 4096


def test_counting_saved_tensors_leaves_nothing_alive():
    import gc

    def live_tensor_bytes():
        gc.collect()
        storages = {}
        for o in gc.get_objects():
            if torch.is_tensor(o):
                try:
                    s = o.untyped_storage()
                    storages[s.data_ptr()] = s.nbytes()
                except (RuntimeError, NotImplementedError):
                    pass  # fake and opaque (MKLDNN) tensors other tests left behind have no readable storage
        return sum(storages.values())

    model, (x, y) = tiny_resnet(3), _batch(4)
    before = live_tensor_bytes()
    for config in (tm.TrainConfig(), tm.TrainConfig(checkpoint="block"), tm.TrainConfig("fp32", "sequential", segments=3)):
        tm.saved_bytes(model, config, "fc", SOFTMAX3, x, y)
    # a pack hook that returned its tensor kept every forward alive (a cycle the collector cannot see)
    assert live_tensor_bytes() == before


def test_checkpointed_estimate_keeps_segment_inputs_and_the_largest_segment():
    model = tiny_resnet(3)
    x, y = _batch()
    plain = tm.saved_bytes(model, tm.TrainConfig(), "fc", SOFTMAX3, x, y)
    block = tm.saved_bytes(model, tm.TrainConfig("fp32", "block"), "fc", SOFTMAX3, x, y)
    assert block["all"] == plain["all"] == plain["held"]  # the same forward, attributed differently
    assert block["held"] == block["outside"] + block["segment_inputs"] + block["largest_segment"] < plain["held"]


@pytest.fixture(scope="module")
def holding_job(tmp_path_factory):
    d = tmp_path_factory.mktemp("train-memory")
    weights = save_state_dict(holding_model(), d / "models" / "holding.pt")
    info = ModelInfo(arch="tests.helpers:holding_model", num_classes=3, source="test", parameters=0,
                     weights=str(weights))
    x, y = _batch(4)
    np.save(d / "x.npy", x.numpy())
    np.save(d / "y.npy", y.numpy())
    return tm.ChildJob(to_plain(eager_artifact(info, SPEC)), str(d), str(d / "x.npy"), str(d / "y.npy"),
                       asdict(SOFTMAX3), None, "sgd", 0.01, 2, steps=2)


def test_child_sees_a_known_allocation_and_running_out_is_a_result(holding_job):
    r = tm.measure_step_memory(holding_job, tm.TrainConfig(), 4)
    assert r.status == "ok" and len(r.step_ms) == 2 and r.resting_bytes > 0
    assert r.above_resting_bytes >= HOLD_MB * 2 ** 20
    # a budget below what one step needs: the child runs out of memory and says so
    budget = r.resting_bytes + HOLD_MB * 2 ** 20 // 2
    oom = tm.measure_step_memory(holding_job, tm.TrainConfig(), 4, limit_bytes=budget, slack_bytes=0)
    assert oom.status == "oom" and not oom.fits(budget) and "allocate" in oom.error
    assert r.fits(r.peak_bytes) and not r.fits(r.peak_bytes - 1)


def test_timing_child_interleaves_every_configuration_and_a_broken_job_is_one_error(holding_job):
    configs = [tm.TrainConfig(), tm.TrainConfig("bf16-autocast")]
    t = tm.measure_step_times(holding_job, configs, 4, warmup=1, trials=3, steps_per_trial=2)
    assert t.error is None and set(t.samples) == {"train-fp32", "train-bf16"}
    assert all(len(trials) == 3 and all(len(v) == 2 and min(v) > 0 for v in trials) for trials in t.samples.values())
    broken = tm.ChildJob(**{**asdict(holding_job), "images": holding_job.images + ".missing"})
    bad = tm.measure_step_times(broken, configs, 4, warmup=0, trials=1, steps_per_trial=1)
    assert bad.samples == {} and bad.error.startswith("the timing child exited") and ".missing" in bad.error


def _line(a, c):
    return lambda b: a + c * b


@pytest.mark.parametrize("peak, known_sizes, max_probes", [
    (_line(700e6, 1.7e6), [64, 128, 256, 512], 3),  # linear: the prediction lands, one or two probes
    (_line(760e6, 1.75e6), [64, 128, 256, 512], 3),  # ... also when a measured batch (512) failed already
    (lambda b: 700e6 + 1.2e6 * b + 900 * b * b, [64, 128, 256], 8),  # curved: the prediction overshoots
    (_line(700e6, 1.7e6), [], 12),  # nothing known: walk up from zero, then bisect
])
def test_largest_batch_finds_the_analytic_limit(peak, known_sizes, max_probes):
    budget = int(1.5 * 2 ** 30)
    limit = max(b for b in range(1, 4097) if peak(b) <= budget)
    calls = []

    def probe(b):
        calls.append(b)
        return peak(b) <= budget, int(peak(b)), "ok"

    known = {b: (peak(b) <= budget, int(peak(b))) for b in known_sizes}
    s = tm.largest_batch(probe, known, budget, resolution=8, max_batch=4096, max_probes=max_probes)
    assert s.resolved and s.fits <= limit < s.fails and s.fails - s.fits <= 8
    assert len(calls) == len(s.probes) <= max_probes and not set(calls) & set(known_sizes)


def test_largest_batch_stops_at_max_batch_and_reports_unresolved():
    s = tm.largest_batch(lambda b: (True, b, "ok"), {64: (True, 64), 128: (True, 128)}, 10 ** 9, max_batch=512)
    assert s.fits == 512 and s.fails is None and s.resolved
    s = tm.largest_batch(lambda b: (b < 1000, b, "ok"), {}, 10 ** 9, max_batch=4096, max_probes=2)
    assert not s.resolved and len(s.probes) == 2


class _PooledBetween(nn.Module):
    """Its forward pools between its children, as MobileNetV2's does."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def test_what_cannot_be_checkpointed_is_said_in_one_line():
    x, _ = _batch(2)
    with pytest.raises(tm.CheckpointingError, match="use block or stage"):
        tm.trainable(_PooledBetween(), tm.TrainConfig("fp32", "sequential", segments=2), "fc", x)
    assert tm.checkpoint_paths(_PooledBetween(), tm.TrainConfig("fp32", "block"), "fc") == ["features.0", "features.1"]
    with pytest.raises(tm.CheckpointingError, match="memory.checkpoint_modules"):
        tm.checkpoint_paths(nn.Linear(3, 3), tm.TrainConfig("fp32", "stage"), None)
    with pytest.raises(tm.CheckpointingError, match="'memory.checkpoint_modules'.*no module 'layer9'"):
        tm.checkpoint_paths(tiny_resnet(3), tm.TrainConfig("fp32", "custom", modules=("layer9",)), "fc")
    assert "CUDA" in tm.unavailable_reason(tm.TrainConfig("fp16-autocast"), "cpu")
    assert tm.unavailable_reason(tm.TrainConfig("fp16-autocast"), "cuda") is None


def test_bf16_training_is_skipped_only_on_a_cpu_without_bf16_kernels(monkeypatch):
    bf16 = tm.TrainConfig("bf16-autocast")
    monkeypatch.setattr(tm, "bf16_kernels_on_cpu", lambda: False)
    assert "AVX512-BF16" in tm.unavailable_reason(bf16, "cpu") and tm.unavailable_reason(bf16, "cuda") is None
    assert tm.unavailable_reason(tm.TrainConfig("fp32", "block"), "cpu") is None
    monkeypatch.setattr(tm, "bf16_kernels_on_cpu", lambda: True)
    assert tm.unavailable_reason(bf16, "cpu") is None


def test_memory_params_are_validated_and_enumerate_configurations():
    with pytest.raises(ParamsError, match=r"'memory.batch_sizes\[0\]' must be at least 2"):
        from_dict({"memory": {"batch_sizes": [1, 8]}})
    with pytest.raises(ParamsError, match="'memory.checkpoint'"):
        from_dict({"memory": {"checkpoint": ["layer"]}})
    with pytest.raises(ParamsError, match="'memory.max_batch'"):
        from_dict({"memory": {"batch_sizes": [64], "max_batch": 32}})
    p = from_dict({"memory": {"precisions": ["fp32", "bf16-autocast"], "checkpoint": ["block", "sequential"],
                              "checkpoint_modules": ["layer1"]}})
    assert [c.name for c in tm.configurations(p)] == [
        "train-fp32", "train-fp32-ckpt-block", "train-fp32-ckpt-sequential", "train-fp32-ckpt-custom",
        "train-bf16", "train-bf16-ckpt-block", "train-bf16-ckpt-sequential", "train-bf16-ckpt-custom"]


def test_batch_sizes_whose_children_peaked_near_the_available_memory_are_not_timed_in_process():
    from optlib.chapters.training_memory import too_big_to_time

    def run(peak):
        return tm.StepMemory("c", 0, "ok" if peak else "oom", peak_bytes=peak, resting_bytes=0)

    sweep = {"a": {8: run(2 * 10**9), 16: run(4 * 10**9), 32: run(None)},
             "b": {8: run(1 * 10**9), 16: run(7 * 10**9), 32: run(None)}}
    out = too_big_to_time(sweep, [8, 16, 32], available=8 * 10**9)
    # 16: b's 7 GB is over three quarters of 8 GB; 8 fits; 32 has no measured peak to judge by
    assert list(out) == [16] and "7.0 GB" in out[16] and "8.0 GB available" in out[16]
    assert too_big_to_time(sweep, [8, 16], available=None) == {}


def test_sequential_on_a_wrapped_backbone_is_a_clear_skip_not_a_crash():
    """A user's model is often the backbone wrapped as one module and a head: no chain to segment."""
    from optlib.workload.outputs import Outputs

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            r = tiny_resnet(3)
            r.fc = nn.Identity()
            self.backbone, self.fc = r, nn.Linear(512, 3)

        def forward(self, x):
            return self.fc(self.backbone(x))

    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with pytest.raises(tm.CheckpointingError, match=r"at least 2 layers before the head; this model has \['backbone'\]"):
        tm.choose_segments(Wrapped(), "fc", Outputs.for_data(None, ["a", "b", "c"], None), x, y)


@pytest.mark.parametrize("wrapped", ["resnet", "vit"])
def test_block_checkpointing_finds_the_blocks_inside_a_wrapper(wrapped):
    """A backbone wrapped as one module (self.backbone, then an MLP head): block checkpointing finds
    the blocks inside it (ResNet's backbone.layerN.M, a ViT's encoder blocks), and the gradients
    equal plain autograd's, with fewer tensors saved."""
    from optlib.techniques.checkpointing import checkpoint_paths
    from optlib.workload.example import BinaryHeadNet, ViTClassifier

    torch.manual_seed(0)
    model = (BinaryHeadNet() if wrapped == "resnet" else ViTClassifier(num_classes=1)).eval()
    config = tm.TrainConfig("fp32", "block")
    paths = checkpoint_paths(model, config, "classifier")
    if wrapped == "resnet":
        assert paths == [f"backbone.layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    else:
        assert paths == ["backbone.encoder.layers.encoder_layer_0", "backbone.encoder.layers.encoder_layer_1"]
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 1, 0])
    one_logit = Outputs("sigmoid", 2, positive_index=1)
    reference = copy.deepcopy(model).train()
    torch.manual_seed(1)
    expected = torch.autograd.grad(one_logit.loss(reference(x), y), list(reference.parameters()))
    module, held = tm.trainable(model, config, "classifier")
    torch.manual_seed(1)  # the same dropout masks in the head
    tm.train_step(module, torch.optim.SGD(held.parameters(), lr=0.0), config, one_logit, x, y)
    for (name, p), g in zip(held.named_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6, msg=name)
    plain, _ = tm.trainable(model, config.plain, "classifier")
    assert _saved_count(module, x) < _saved_count(plain, x)
