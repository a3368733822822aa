"""Pruning: sparsity accounting against a hand count, structured pruning really removing channels,
the pruned model agreeing with its ONNX export and reloading in a fresh process without a full
pickle, the shared fine-tuning routine, and the prune parameters' one-line errors."""
import copy
import gzip
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from optlib.backends.onnxruntime import OrtConfig, OrtRunner
from optlib.core import paths
from optlib.core.params import ParamsError, from_dict
from optlib.techniques import onnx_export as ox
from optlib.techniques import pruning
from optlib.workload.data import PreprocessSpec, load_dataset
from optlib.workload.models import HEAD_ATTRIBUTE, build_model, count_parameters
from optlib.workload.training import FineTuneRecipe, finetune


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.lin = nn.Linear(16, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.lin(torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 2), 1)))


def test_unstructured_l1_zeroes_exactly_the_smallest_weights_per_layer_and_globally():
    m = Tiny()
    w = {n: getattr(m, n).weight.detach().numpy().copy() for n in ("conv", "lin")}
    layer = pruning.make_permanent(pruning.unstructured(m, 0.5, "l1", "layer", keep=["fc"]))
    for n, orig in w.items():
        got = getattr(layer, n).weight.detach().numpy()
        k = round(0.5 * orig.size)
        expected = np.zeros(orig.size, bool)
        expected[np.argsort(np.abs(orig).ravel(), kind="stable")[:k]] = True
        assert np.array_equal(got.ravel() == 0, expected)
    # global: one threshold over conv and lin together; fc kept whole
    glob = pruning.make_permanent(pruning.unstructured(m, 0.7, "l1", "global", keep=["fc"]))
    allw = np.concatenate([np.abs(v).ravel() for v in w.values()])
    threshold = np.sort(allw)[round(0.7 * allw.size) - 1]
    for n, orig in w.items():
        assert np.array_equal(getattr(glob, n).weight.detach().numpy() == 0, np.abs(orig) <= threshold)
    assert not (glob.fc.weight == 0).any()
    table = pruning.sparsity_table(glob, ["fc"])
    hand = {n: int((getattr(glob, n).weight == 0).sum()) for n in ("conv", "lin", "fc")}
    assert table.loc["conv", "zeros"] == hand["conv"] and table.loc["fc", "zeros"] == 0
    assert table.loc["global", "zeros"] == hand["conv"] + hand["lin"]
    assert table.loc["global", "sparsity"] == pytest.approx(round(0.7 * allw.size) / allw.size)
    # permanent: a plain module again, same keys as the unpruned one, no masks left
    assert set(glob.state_dict()) == set(m.state_dict())
    assert not any(mod._forward_pre_hooks for mod in glob.modules())


def test_sparse_storage_against_a_hand_count():
    m = pruning.make_permanent(pruning.unstructured(Tiny(), 0.9, "l1", "global", keep=["fc"]))
    s = pruning.sparse_storage(m)
    sd = m.state_dict()
    hand = sum(int((t != 0).sum()) * 4 + (t.numel() + 7) // 8 if t.ndim > 1 else t.numel() * 4 for t in sd.values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    assert s["bitmask_bytes"] == hand and s["dense_bytes"] == len(buf.getvalue())
    assert s["gzip_bytes"] == len(gzip.compress(buf.getvalue(), 6))


@pytest.fixture(scope="module")
def pruned_resnet():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 10).eval()
    setattr(model, HEAD_ATTRIBUTE, "fc")
    x = torch.randn(2, 3, 32, 32)
    keep = pruning.kept_whole(model, [])
    plan = pruning.StructuredPlan("l2", 0.5, "layer", 8, 1, keep)
    pm, info = pruning.structured(model, x[:1], plan)
    return model, pm, info, x


def test_structured_pruning_removes_channels_and_keeps_the_head(pruned_resnet):
    model, pm, info, x = pruned_resnet
    assert info["parameters_after"] == count_parameters(pm) < count_parameters(model) / 3
    assert info["macs_after"] < info["macs_before"] / 3
    convs = {n: m for n, m in pm.named_modules() if isinstance(m, nn.Conv2d)}
    orig = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert all(c.out_channels % 8 == 0 for c in convs.values())
    assert convs["layer1.0.conv1"].out_channels == orig["layer1.0.conv1"].out_channels // 2
    assert dict(pm.named_modules())["layer1.0.bn1"].num_features == convs["layer1.0.conv1"].out_channels
    assert pm.fc.out_features == 10 and pm.fc.in_features == convs["layer4.1.conv2"].out_channels
    with torch.no_grad():
        assert pm(x).shape == (2, 10)
    assert model.fc.in_features == 512  # the original is untouched


def test_pruned_model_agrees_with_its_onnx_export(pruned_resnet, tmp_path):
    _, pm, _, x = pruned_resnet
    e = ox.export_onnx(pm, x, tmp_path / "pruned.onnx")
    spec = PreprocessSpec(32, [0.5], [0.5], grayscale_to_rgb=True)
    ort = OrtRunner(e.path, spec, config=OrtConfig(intra_op_threads=1))
    with torch.no_grad():
        ref = pm(x).numpy()
    out = ort.session.run(None, {ort.session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(out - ref).max() < ox.FP32_TOLERANCE


def test_pruned_model_reloads_in_a_fresh_process_without_a_full_pickle(pruned_resnet, tmp_path):
    model, pm, _, x = pruned_resnet
    from optlib.backends.artifacts import eager_artifact
    from optlib.workload.models import ModelInfo

    info = ModelInfo("torchvision:resnet18", 10, "test", 0, head="fc")
    spec = PreprocessSpec(32, [0.5], [0.5], grayscale_to_rgb=True)
    art = pruning.pruned_artifact(pm, eager_artifact(info, spec), tmp_path / "pruned.state.pt")
    (tmp_path / "artifact.json").write_text(json.dumps(art.__dict__))
    np.save(tmp_path / "x.npy", x.numpy())
    code = (
        "import json, sys, numpy as np, torch\n"
        "from optlib.backends.artifacts import load_runner\n"
        "from optlib.results.values import Artifact\n"
        "real_load = torch.load\n"
        "def strict(*a, **k):\n"
        "    assert k.get('weights_only') is True, 'a full pickle was asked for'\n"
        "    return real_load(*a, **k)\n"
        "torch.load = strict\n"
        f"d = json.load(open(r'{tmp_path / 'artifact.json'}'))\n"
        "r = load_runner(Artifact(**d), threads=1)\n"
        f"x = torch.from_numpy(np.load(r'{tmp_path / 'x.npy'}'))\n"
        "with torch.no_grad(): out = r.model(x).numpy()\n"
        f"np.save(r'{tmp_path / 'out.npy'}', out)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=paths.REPO_DIR, timeout=300)
    with torch.no_grad():
        assert np.array_equal(np.load(tmp_path / "out.npy"), pm(x).numpy())


def test_kept_whole_names_a_missing_ignored_layer():
    m = build_model("torchvision:resnet18", 10)
    setattr(m, HEAD_ATTRIBUTE, "fc")
    assert pruning.kept_whole(m, ["layer4.1"]) == ["fc", "layer4.1"]
    assert pruning.kept_whole(m, [], prune_head=True) == []
    with pytest.raises(pruning.PruningError, match=r"prune.ignored_layers.*'layer9'"):
        pruning.kept_whole(m, ["layer9"])


@pytest.mark.parametrize("section, match", [
    ({"ratios": [0.5, 1.0]}, r"'prune.ratios\[1\]' must be strictly between 0 and 1, got 1.0"),
    ({"sparsities": [0]}, r"'prune.sparsities\[0\]' must be strictly between 0 and 1"),
    ({"criteria": ["l3"]}, r"'prune.criteria' must be one of l2, taylor"),
    ({"iterative_steps": 1}, r"'prune.iterative_steps' must be 0 \(no iterative model\) or at least 2"),
    ({"round_to": 0}, r"'prune.round_to'"),
    ({"ignored_layers": ["layer4/1"]}, r"'prune.ignored_layers'"),
    ({"ort_threads": [1, 4]}, r"'prune.ort_threads' must be thread counts from 1 to bench.threads \(2\), got \[4\]"),
])
def test_prune_params_errors_name_the_key(section, match):
    with pytest.raises(ParamsError, match=match):
        from_dict({"prune": section}, "p.yaml")


def test_finetune_freezes_once_at_the_named_epoch_and_scales_the_rate():
    ds = load_dataset(from_dict({"data": {"image_size": 16, "max_test_images": 10}}))
    ds.train.images, ds.train.labels = ds.train.images[:64], ds.train.labels[:64]
    spec = PreprocessSpec(16, [0.5], [0.5], grayscale_to_rgb=True)
    model = build_model("torchvision:resnet18", 10)
    calls = []
    recipe = FineTuneRecipe(3, 0.01, "constant", batch_size=32, freeze_at=2, lr_after_freeze=0.1)
    hist = finetune(model, ds, spec, recipe, progress=False, on_freeze=lambda m: calls.append(m))
    assert len(calls) == 1 and calls[0] is model
    assert [h["frozen"] for h in hist] == [False, True, True]
    assert [h["lr_end"] for h in hist] == pytest.approx([0.01, 0.001, 0.001])
    with pytest.raises(ValueError, match="finetune.schedule"):
        FineTuneRecipe(1, 0.01, "linear")


def test_finetune_limits_images_and_steps_and_the_schedule_spans_the_steps():
    """finetune.train_images: every epoch sees that many images, the same ones for a seed; max_steps:
    that many optimizer steps in all (batches counted by a hook on the model), the cosine schedule
    reaching zero at the last of them; both from the params into the recipe the records carry."""
    ds = load_dataset(from_dict({"data": {"image_size": 16, "max_test_images": 10}}))
    spec = PreprocessSpec(16, [0.5], [0.5], grayscale_to_rgb=True)
    seen = []

    def run(recipe):
        seen.clear()
        model = build_model("torchvision:resnet18", 10)
        model.register_forward_hook(lambda m, x, out: seen.append(x[0].detach().clone()) if m.training else None)
        return finetune(model, ds, spec, recipe, progress=False)

    hist = run(FineTuneRecipe(2, 0.01, "constant", batch_size=32, train_images=100))
    assert len(hist) == 2 and [len(b) for b in seen] == [32, 32, 32, 4] * 2
    first = torch.cat(seen[:4]).sum(dim=(1, 2, 3)).sort().values  # augmentation shifts keep each image's sum
    run(FineTuneRecipe(2, 0.01, "constant", batch_size=32, train_images=100))
    assert torch.allclose(first, torch.cat(seen[:4]).sum(dim=(1, 2, 3)).sort().values, rtol=1e-4)
    hist = run(FineTuneRecipe(5, 0.01, "cosine", batch_size=64, max_steps=7))
    assert len(seen) == 7 and hist[-1]["lr_end"] == pytest.approx(0.0, abs=1e-12)
    steps_per_epoch = -(-len(ds.train) // 64)
    assert len(hist) == -(-7 // steps_per_epoch)
    p = from_dict({"finetune": {"train_images": 100, "max_steps": 7}})
    r = FineTuneRecipe.from_params(p, 3)
    assert (r.train_images, r.max_steps) == (100, 7) and r.to_dict()["max_steps"] == 7
    with pytest.raises(ParamsError, match="'finetune.train_images'"):
        from_dict({"finetune": {"train_images": 1}})


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_distillation_loss_is_hintons_softened_divergence(temperature):
    """Against numpy: softmax, KL(teacher || student) of the softened distributions times T^2 (per
    image); one sigmoid logit, the soft-target binary cross entropy times T^2, which is the
    binary KL up to the teacher's own entropy (a constant)."""
    from scipy.special import log_softmax, softmax

    from optlib.workload.outputs import Outputs

    rng = np.random.default_rng(0)
    s, t = rng.normal(0, 2, (6, 3)), rng.normal(0, 2, (6, 3))
    T = temperature
    p = softmax(t / T, axis=1)
    kl = (p * (np.log(p) - log_softmax(s / T, axis=1))).sum(1).mean() * T * T
    got = Outputs("softmax", 3).distillation_loss(torch.tensor(s), torch.tensor(t), T)
    assert float(got) == pytest.approx(kl, rel=1e-9)
    binary = Outputs("sigmoid", 2, positive_index=1)
    s1, t1 = s[:, :1], t[:, :1]
    q, r = 1 / (1 + np.exp(-s1 / T)), 1 / (1 + np.exp(-t1 / T))
    bce = -(r * np.log(q) + (1 - r) * np.log(1 - q)).mean() * T * T
    assert float(binary.distillation_loss(torch.tensor(s1), torch.tensor(t1), T)) == pytest.approx(bce, rel=1e-9)
    entropy = -(r * np.log(r) + (1 - r) * np.log(1 - r)).mean() * T * T
    same = binary.distillation_loss(torch.tensor(t1), torch.tensor(t1), T)
    assert float(same) == pytest.approx(entropy, rel=1e-9)  # its minimum: the student equal to the teacher


class _Says(nn.Module):
    """A teacher that gives every image the same confident logits for class `k`."""
    def __init__(self, k: int, classes: int = 10):
        super().__init__()
        self.logits = torch.full((classes,), -4.0)
        self.logits[k] = 4.0

    def forward(self, x):
        return self.logits.expand(len(x), -1)


@pytest.mark.parametrize("distill", [0.0, 1.0])
def test_finetune_with_distillation_learns_the_teachers_decisions(distill):
    """With distill = 1 the labels play no part: a student taught by a teacher that calls every
    image class 3 ends up calling most training images 3; with distill = 0 (labels only) it does
    not (the digits' class 3 is about a tenth of them)."""
    ds = load_dataset(from_dict({"data": {"image_size": 16, "max_test_images": 10}}))
    ds.train.images, ds.train.labels = ds.train.images[:128], ds.train.labels[:128]
    spec = PreprocessSpec(16, [0.5], [0.5], grayscale_to_rgb=True)
    model = build_model("torchvision:resnet18", 10)
    recipe = FineTuneRecipe(3, 0.02, "constant", batch_size=32, distill=distill)
    finetune(model, ds, spec, recipe, progress=False, teacher=_Says(3))
    from optlib.workload.data import preprocess

    with torch.no_grad():
        said_3 = float((model(preprocess(ds.train.images, spec)).argmax(1) == 3).float().mean())
    assert (said_3 > 0.9) if distill else (said_3 < 0.5)
    with pytest.raises(ValueError, match="distill"):
        FineTuneRecipe(1, 0.01, distill=1.5)


def test_single_logit_custom_head_model_prunes_keeps_its_head_and_reloads(tmp_path):
    """The own-model form (backbone + MLP head ending in one logit): the head is kept whole, the
    backbone loses channels, and the rebuilt model reproduces the pruned one's logits."""
    from optlib.backends.artifacts import eager_artifact, load_runner
    from optlib.workload.models import ModelInfo

    torch.manual_seed(0)
    model = build_model("optlib.workload.example:binary_head_net", 1).eval()
    setattr(model, HEAD_ATTRIBUTE, "classifier")
    x = torch.randn(2, 3, 32, 32)
    keep = pruning.kept_whole(model, [])
    pm, info = pruning.structured(model, x[:1], pruning.StructuredPlan("l2", 0.5, "layer", 8, 1, keep))
    assert keep == ["classifier"] and info["parameters_after"] < info["parameters_before"] / 2
    assert pm.classifier[0].out_features == 128 and pm.classifier[-1].out_features == 1
    assert pm.classifier[0].in_features == pm.backbone.layer4[1].conv2.out_channels < 512
    spec = PreprocessSpec(32, [0.5], [0.5], grayscale_to_rgb=True)
    info_ = ModelInfo("optlib.workload.example:binary_head_net", 1, "test", 0, head="classifier")
    art = pruning.pruned_artifact(pm, eager_artifact(info_, spec), tmp_path / "p.state.pt")
    with torch.no_grad():
        assert np.array_equal(load_runner(art).model(x).numpy(), pm(x).numpy())


def test_rounding_gives_multiples_where_the_unrounded_widths_are_not():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", 10).eval()
    x = torch.randn(1, 3, 32, 32)
    widths = {}
    for rnd in (8, None):
        pm, _ = pruning.structured(model, x, pruning.StructuredPlan("l2", 0.8, "layer", rnd, 1, ["fc"]))
        widths[rnd] = [m.out_channels for n, m in pm.named_modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths[8]) and any(w % 8 for w in widths[None])


def test_a_transformer_prunes_heads_and_mlps_fine_tunes_and_reloads(tmp_path):
    """A ViT from a user-style module: structured pruning removes half the attention heads and
    narrows the MLPs' hidden widths, keeps the residual stream whole, the pruned model trains (a
    second backward through fresh graphs works) and rebuilds from its artifact to the same logits,
    and its ONNX export agrees with it."""
    from optlib.backends.artifacts import eager_artifact, load_runner
    from optlib.workload.models import ModelInfo

    arch = "optlib.workload.example:vit_classifier"
    torch.manual_seed(0)
    model = build_model(arch, 1).eval()
    setattr(model, HEAD_ATTRIBUTE, "classifier")
    x = torch.randn(4, 3, 32, 32)
    keep = pruning.kept_whole(model, [])
    pm, info = pruning.structured(model, x[:1], pruning.StructuredPlan("l2", 0.5, "global", 8, 1, keep))
    blocks = list(pm.backbone.encoder.layers)
    assert [b.mlp[0].out_features for b in blocks] != [128, 128] and all(b.mlp[0].out_features % 8 == 0 for b in blocks)
    assert sum(b.mlp[0].out_features for b in blocks) == pytest.approx(128, abs=8)  # half of 2 x 128, globally
    assert all(b.mlp[3].in_features == b.mlp[0].out_features for b in blocks)
    assert all(isinstance(b.self_attention, pruning.HeadPrunedAttention) for b in blocks)
    assert all((b.self_attention.embed_dim, b.self_attention.heads, b.self_attention.q_proj.out_features) == (64, 2, 32)
               for b in blocks)
    assert info["attention_heads"] == {f"backbone.encoder.layers.encoder_layer_{i}.self_attention": [4, 2]
                                       for i in range(2)} and info["attention_kept_whole"] is None
    assert pm.backbone.conv_proj.out_channels == 64 and pm.classifier[-1].out_features == 1
    assert info["macs_after"] < info["macs_before"]
    assert set(info["channels"]) == {f"backbone.encoder.layers.encoder_layer_{i}.mlp.0" for i in range(2)}
    # it trains: two steps, each a fresh graph
    opt = torch.optim.SGD(pm.parameters(), lr=0.01)
    pm.train()
    for _ in range(2):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(pm(x).reshape(-1), torch.tensor([0.0, 1, 1, 0])).backward()
        opt.step()
    pm.eval()
    spec = PreprocessSpec(32, [0.5], [0.5], grayscale_to_rgb=True)
    art = pruning.pruned_artifact(pm, eager_artifact(ModelInfo(arch, 1, "test", 0, head="classifier"), spec),
                                  tmp_path / "p.state.pt")
    with torch.no_grad():
        expected = pm(x).numpy()
        assert np.array_equal(load_runner(art).model(x).numpy(), expected)
    # unstructured masks leave attention's out_proj alone (attention bypasses its forward hook) and
    # fine-tuning through the masks works step after step
    um = pruning.unstructured(model, 0.5, "l1", "global", keep)
    assert not hasattr(um.backbone.encoder.layers[0].self_attention.out_proj, "weight_mask")
    assert float((um.backbone.encoder.layers[0].mlp[0].weight == 0).float().mean()) > 0.2
    um.train()
    opt = torch.optim.SGD(um.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(um(x).reshape(-1), torch.tensor([0.0, 1, 1, 0])).backward()
        opt.step()
    e = ox.export_onnx(pm, x[:1], tmp_path / "vit.onnx")
    sess = OrtRunner(e.path, spec, config=OrtConfig(intra_op_threads=2)).session
    got = sess.run(None, {sess.get_inputs()[0].name: x[:1].numpy()})[0]
    assert np.abs(got - expected[:1]).max() < ox.FP32_TOLERANCE


def test_removing_heads_is_zeroing_their_share_of_the_output_projection():
    """A head-pruned attention against nn.MultiheadAttention itself: with every head kept it gives
    the module's outputs; without heads 1 and 3 it gives the outputs of the module whose out_proj
    columns of those heads are zero (what removing a head means). prune_heads keeps the heads of
    highest L2 norm; Torch-Pruning's operation count is the module's while every head is kept."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        ref, _ = mha(x, x, x, need_weights=False)
        assert torch.allclose(pruning.without_heads(mha, [0, 1, 2, 3])(x, x, x)[0], ref, atol=1e-6)
        zeroed = copy.deepcopy(mha)
        zeroed.out_proj.weight[:, 16:32] = 0
        zeroed.out_proj.weight[:, 48:64] = 0
        two = pruning.without_heads(mha, [0, 2])
        assert torch.allclose(two(x, x, x)[0], zeroed(x, x, x, need_weights=False)[0], atol=1e-6)
        mha.in_proj_weight[:, :] *= 0.01  # heads 1 and 3 the strongest by far
        mha.in_proj_weight[16:32] *= 1000
        mha.in_proj_weight[48:64] *= 1000
    holder = _SelfAttention(mha)
    done, kept = pruning.prune_heads(holder, 0.5, [])
    assert done == {"attn": [4, 2]} and kept == {}
    with torch.no_grad():
        assert torch.equal(holder.attn.q_proj.weight, torch.cat([mha.in_proj_weight[16:32], mha.in_proj_weight[48:64]]))
    whole = nn.MultiheadAttention(64, 4, batch_first=True)
    assert pruning.macs_and_params(_SelfAttention(whole), x[:1]) == pruning.macs_and_params(
        _SelfAttention(pruning.without_heads(whole, [0, 1, 2, 3])), x[:1])
    assert pruning.prune_heads(_SelfAttention(nn.MultiheadAttention(64, 4)), 0.5, []) == (
        {}, {"attn": "sequence-first attention"})


class _SelfAttention(nn.Module):
    def __init__(self, attn):
        super().__init__()
        self.attn = attn

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("scopes, expect", [
    # a global-only sweep (the cpu target): every global ratio is timed; on 2026-12-07 the 75% model,
    # within the budget at 12x fewer MACs, was trained and never timed
    (["global"], {"structured-l2-global-50": "ort", "structured-l2-global-75": "ort"}),
    # a per-layer sweep: every per-layer ratio, the middle one on every backend, and the global
    # threshold at the middle ratio only
    (["layer", "global"], {"structured-l2-50": "all", "structured-l2-75": "ort", "structured-l2-global-50": "ort"}),
])
def test_chapter_06_times_every_ratio_of_its_sweep(scopes, expect):
    from types import SimpleNamespace

    from optlib.chapters.pruning import PrunedModel, PruningStudy

    params = from_dict({"prune": {"criteria": ["l2", "taylor"], "scopes": scopes, "ratios": [0.5, 0.75],
                                  "measure_unrounded": False, "iterative_steps": 0}})

    def model(criterion, scope, ratio):
        plan = pruning.StructuredPlan(criterion, ratio, scope, 8, 1, [])
        return PrunedModel(f"structured-{plan.label()}", None, {"criterion": criterion, "scope": scope, "ratio": ratio,
                                                                 "round_to": 8})

    structured = {pm.label: pm for pm in (model(c, s, r) for c in ("l2", "taylor") for s in scopes
                                          for r in (0.5, 0.75))}  # what the sweep trains
    study = SimpleNamespace(params=params, runners=lambda pm, backends: [
        (pm.label if pm else "unpruned", "all" if "pytorch" in backends else "ort")])
    timed = dict(PruningStudy.measured_runners(study, None, structured, None, None))
    assert timed == {"unpruned": "all", **expect}
