"""Rebuild any measured configuration from its record's artifact, in this or a fresh process.

`load_runner(artifact, base_dir)` returns a runner equivalent to the one that was measured. Every
format here loads without a full pickle: ONNX files, TorchScript archives, state_dicts read with
`torch.load(weights_only=True)`, and `torch.export` programs (which load their weights that way).

Each artifact kind names its loader as "module:function", imported only when needed, so the
loaders live next to the code that saves the artifact (techniques/) and this module depends on
none of them.
"""
from __future__ import annotations

import importlib
from dataclasses import replace
from pathlib import Path

from ..results.values import Artifact
from ..workload.data import PreprocessSpec
from .base import Runner

LOADERS = {
    "onnxruntime": "optlib.backends.artifacts:load_onnxruntime",
    "pytorch": "optlib.backends.artifacts:load_eager",
    "openvino": "optlib.backends.openvino:load_openvino",
    "torchscript": "optlib.techniques.compilers:load_torchscript",
    "torch-compile": "optlib.techniques.compilers:load_compiled",
    "pytorch-fx-int8": "optlib.techniques.int8_torch:load_fx_int8",
    "pt2e-int8": "optlib.techniques.int8_torch:load_pt2e",
    "gru": "optlib.techniques.int8_torch:load_gru",
    "pytorch-pruned": "optlib.techniques.pruning:load_pruned",
    "pytorch-precision": "optlib.techniques.precision:load_precision",
    "tensorrt": "optlib.backends.tensorrt:load_engine",  # GPU only; never executed on this project's machines
    "torch-tensorrt": "optlib.backends.tensorrt:load_torch_tensorrt",  # likewise
}


class ArtifactError(ValueError):
    """An artifact cannot be rebuilt: unknown kind or a missing file."""


def relative_to(artifact: Artifact, base_dir: str | Path) -> Artifact:
    """The artifact with its files relative to `base_dir` where they lie inside it."""
    base = Path(base_dir).resolve()
    files = {}
    for role, f in artifact.files.items():
        p = Path(f).resolve()
        files[role] = str(p.relative_to(base)) if p.is_relative_to(base) else str(p)
    return replace(artifact, files=files)


def resolved(artifact: Artifact, base_dir: str | Path | None) -> Artifact:
    """The artifact with every file as an absolute path that exists, or ArtifactError naming it."""
    files = {}
    for role, f in artifact.files.items():
        p = Path(f)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        if not p.exists():
            raise ArtifactError(f"{artifact.kind} artifact: its {role} file {p} does not exist (rerun the chapter "
                                "that wrote the record)")
        files[role] = str(p)
    return replace(artifact, files=files)


def load_runner(artifact: Artifact, base_dir: str | Path | None = None, name: str = "rebuilt",
                threads: int = 1, device: str = "cpu") -> Runner:
    """A runner rebuilt from `artifact` (files relative to `base_dir`, usually outputs/<target>/)."""
    if artifact.kind not in LOADERS:
        raise ArtifactError(f"unknown artifact kind {artifact.kind!r} (known: {', '.join(LOADERS)})")
    module, fn = LOADERS[artifact.kind].split(":")
    loader = getattr(importlib.import_module(module), fn)
    runner = loader(resolved(artifact, base_dir), name=name, threads=threads, device=device)
    runner.artifact = artifact
    return runner


def spec_of(artifact: Artifact) -> PreprocessSpec | None:
    return PreprocessSpec(**artifact.preprocess) if artifact.preprocess else None


# --- the two base kinds ----------------------------------------------------------------------

def load_onnxruntime(artifact: Artifact, name: str, threads: int, device: str) -> Runner:
    from .onnxruntime import OrtConfig, OrtRunner

    config = OrtConfig(**{**artifact.options["config"], "intra_op_threads": threads})
    f = artifact.files
    return OrtRunner(f["model"], spec_of(artifact), name=name, config=config, features_path=f.get("features"),
                     head_path=f.get("head"))


def eager_artifact(info, spec: PreprocessSpec, channels_last: bool = False) -> Artifact:
    """The artifact of the FP32 model as loaded (workload.models.ModelInfo): its weights file and
    how to read it (checkpoint format, prefix, trust flag), the architecture, the memory format."""
    return Artifact("pytorch", {"weights": info.weights},
                    {"arch": info.arch, "num_classes": info.num_classes, "checkpoint_format": info.checkpoint_format,
                     "prefix": info.stripped_prefix, "trust_checkpoint": info.trust_checkpoint,
                     "channels_last": channels_last, "head": info.head}, spec.to_dict())


def build_eager(artifact: Artifact):
    """The FP32 nn.Module an eager artifact describes, weights loaded, in eval mode."""
    from ..workload.models import HEAD_ATTRIBUTE, build_model, load_weights

    o = artifact.options
    model = build_model(o["arch"], o["num_classes"])
    if o.get("head"):
        setattr(model, HEAD_ATTRIBUTE, o["head"])
    return load_weights(model, artifact.files["weights"], o.get("checkpoint_format"), o.get("prefix"),
                        o.get("trust_checkpoint", False))


def load_eager(artifact: Artifact, name: str, threads: int, device: str) -> Runner:
    from .pytorch import TorchRunner

    return TorchRunner(build_eager(artifact), spec_of(artifact), name=name, device=device, threads=threads,
                       channels_last=artifact.options.get("channels_last", False))
