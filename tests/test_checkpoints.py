import pytest
import torch

from optlib.workload.models import CheckpointError, build_model, load_checkpoint_into, split_model
from tests.helpers import tiny_resnet


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_seeded_model_starts_from_the_same_weights_whatever_the_generator_held():
    """torch seeds its generator from the OS at import (torch.seed() does the same here): the default
    model, trained by chapter 00 from build_model(..., seed=train.seed), starts from the same weights
    in every process, and from other weights with another seed."""
    arch = "optlib.workload.example:binary_head_net"
    torch.seed()
    a = build_model(arch, 1, seed=0)
    torch.seed()
    b = build_model(arch, 1, seed=0)
    torch.seed()
    assert _same_weights(a, b) and not _same_weights(a, build_model(arch, 1, seed=1))
    assert not _same_weights(a, build_model(arch, 1))  # unseeded: whatever the OS gave


def test_plain_state_dict(tmp_path):
    src = tiny_resnet()
    p = tmp_path / "m.pt"
    torch.save(src.state_dict(), p)
    dst = build_model("torchvision:resnet18", 2)
    info = load_checkpoint_into(dst, p)
    assert _same_weights(src, dst) and info.checkpoint_format == "state_dict" and info.stripped_prefix is None


def test_dict_with_state_dict_and_module_prefix(tmp_path):
    src = tiny_resnet()
    p = tmp_path / "m.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, p)
    dst = build_model("torchvision:resnet18", 2)
    info = load_checkpoint_into(dst, p)
    assert _same_weights(src, dst)
    assert info.checkpoint_format == "dict-with-state_dict" and info.stripped_prefix == "module."
    assert info.extra_keys == ["epoch"]


def lightning_ckpt(model, path, prefix="model."):
    state = {f"{prefix}{k}": v for k, v in model.state_dict().items()}
    state["criterion.pos_weight"] = torch.tensor([2.0])  # another submodule of the LightningModule
    torch.save({"epoch": 7, "global_step": 700, "pytorch-lightning_version": "2.4.0", "state_dict": state,
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.01}]}], "lr_schedulers": [],
                "hyper_parameters": {"lr": 0.01, "num_classes": 2}}, path)
    return path


@pytest.mark.parametrize("prefix_param", [None, "model."])
def test_lightning_ckpt_detected_and_explicit_prefix(tmp_path, prefix_param):
    src = tiny_resnet()
    p = lightning_ckpt(src, tmp_path / "pneumonia_model_07_0.928.ckpt")
    dst = build_model("torchvision:resnet18", 2)
    info = load_checkpoint_into(dst, p, prefix=prefix_param)
    assert _same_weights(src, dst)
    assert info.checkpoint_format == "lightning" and info.stripped_prefix == "model."
    assert info.dropped_keys == ["criterion.pos_weight"]
    assert "optimizer_states" in info.extra_keys and "state_dict" not in info.extra_keys


def test_full_pickle_refused_unless_trusted(tmp_path):
    src = tiny_resnet()
    p = tmp_path / "full.pt"
    torch.save(src, p)  # a whole pickled module: loading it runs code from the file
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_into(build_model("torchvision:resnet18", 2), p)
    assert str(p) in str(e.value) and "trust_checkpoint: true" in str(e.value)
    dst = build_model("torchvision:resnet18", 2)
    info = load_checkpoint_into(dst, p, trust=True)
    assert _same_weights(src, dst) and info.checkpoint_format == "pickled-module"


def test_num_classes_mismatch_is_clear(tmp_path):
    p = tmp_path / "m.pt"
    torch.save(tiny_resnet(num_classes=2).state_dict(), p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_into(build_model("torchvision:resnet18", 10), p)
    msg = str(e.value)
    assert "'fc.weight'" in msg and "[2, 512]" in msg and "model.num_classes: 2" in msg


def test_wrong_arch_and_garbage(tmp_path):
    p = tmp_path / "m.pt"
    torch.save(tiny_resnet().state_dict(), p)
    with pytest.raises(CheckpointError, match="does not fit model"):
        load_checkpoint_into(build_model("torchvision:resnet34", 2), p)
    g = tmp_path / "junk.ckpt"
    g.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint_into(build_model("torchvision:resnet18", 2), g)
    with pytest.raises(ValueError, match="torchvision has no model"):
        build_model("torchvision:resnet_nope", 2)


def test_split_model_matches_full_forward():
    m = tiny_resnet(3)
    features, head = split_model(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(head(features(x)), m(x))
    assert isinstance(m.fc, torch.nn.Linear)  # the original keeps its head
