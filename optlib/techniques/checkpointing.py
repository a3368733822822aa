"""Activation checkpointing, a technique: a model in, a copy that recomputes activations during
backward instead of storing them (torch.utils.checkpoint, non-reentrant) out.

Where: `stage`, each outermost nn.Sequential of the body at any depth (ResNet's layer1..4, also
inside a wrapper as backbone.layer1..4; a ViT's encoder.layers); `block`, each child of those
(ResNet's blocks, MobileNetV2's feature blocks, a ViT's encoder blocks); `sequential`, checkpoint_sequential over the
whole body, stem included, where the model's forward is its children in order followed by flatten
and the head (ResNet, not MobileNetV2, which pools functionally); or `custom`, the module paths the
user names. A configuration is anything with `checkpoint`, `segments` and `modules`
(measurement.training_memory.TrainConfig). What it saves in memory and costs in step time is
measured by measurement.training_memory (chapter 08).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from ..workload.models import resolve_module


class CheckpointingError(ValueError):
    """The model has no part the chosen granularity can checkpoint."""


def checkpoint_paths(model: nn.Module, config, head: str | None) -> list[str]:
    """The module paths a stage / block / custom configuration checkpoints (CheckpointingError when
    the model has none)."""
    if config.checkpoint == "custom":
        for path in config.modules:
            try:
                resolve_module(model, path)
            except ValueError as e:
                raise CheckpointingError(str(e).replace("'model.head'", "'memory.checkpoint_modules'")) from None
        return list(config.modules)
    stages = _stages(model, head)
    if not stages:
        raise CheckpointingError(f"{type(model).__name__} has no nn.Sequential stage outside its head to checkpoint: "
                              "name modules in memory.checkpoint_modules")
    if config.checkpoint == "stage":
        return [n for n, _ in stages]
    return [f"{n}.{c}" for n, m in stages for c, _ in m.named_children()]


def _stages(model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
    """The outermost nn.Sequential modules with parameters outside the head, at any depth: ResNet's
    layer1..4, the same inside a wrapper (backbone.layer1..4), a ViT's encoder.layers, MobileNetV2's
    features."""
    stages: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if not name or (head and (name == head or name.startswith(head + "."))):
            continue
        if any(name.startswith(s + ".") for s, _ in stages):
            continue
        if isinstance(m, nn.Sequential) and any(True for _ in m.parameters()):
            stages.append((name, m))
    return stages


def body_chain(model: nn.Module, head: str | None) -> list[tuple[str, nn.Module]]:
    """The model's top-level children before its head, each top-level nn.Sequential expanded into
    its children: the layers `sequential` checkpointing runs as one chain."""
    if not head or "." in head:
        raise CheckpointingError("sequential checkpointing needs a top-level head (model.head such as fc); "
                              f"this model's head is {head!r}")
    chain = []
    for name, m in model.named_children():
        if name == head:
            break
        chain += [(f"{name}.{c}", cm) for c, cm in m.named_children()] if isinstance(m, nn.Sequential) else [(name, m)]
    return chain


class ChainForward(nn.Module):
    """The model run as flatten(body chain) -> head, the chain under checkpoint_sequential while
    training. Holds the model's own modules (its parameters are the model's)."""

    def __init__(self, chain: list[tuple[str, nn.Module]], head: nn.Module, segments: int):
        super().__init__()
        self.body = nn.Sequential(OrderedDict((n.replace(".", "_"), m) for n, m in chain))
        self.head = head
        self.segments = segments
        self.checkpointing = True
        # A layer that starts a segment must not write into its input in place: that input is the
        # previous segment's output, which the checkpoint keeps (and the recomputation reads).
        size = len(self.body) // segments
        for i in range(0, len(self.body), size):
            if getattr(self.body[i], "inplace", False):
                self.body[i].inplace = False

    def forward(self, x):
        if self.checkpointing and self.training and torch.is_grad_enabled():
            x = checkpoint_sequential(self.body, self.segments, x, use_reentrant=False)
        else:
            x = self.body(x)
        return self.head(torch.flatten(x, 1))

    def segment_of(self) -> dict[nn.Module, int | None]:
        """Each chain layer's checkpointed segment, as checkpoint_sequential cuts the chain (None:
        the last segment, which it runs without checkpointing)."""
        size = len(self.body) // self.segments
        return {m: (i // size if i < size * (self.segments - 1) else None) for i, m in enumerate(self.body)}


def _checkpointed_forward(module: nn.Module) -> None:
    inner = module.forward

    def forward(*args, **kwargs):
        if module.training and torch.is_grad_enabled():
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return inner(*args, **kwargs)

    module.forward = forward


def trainable(model: nn.Module, config, head: str | None, sample: torch.Tensor | None = None):
    """(module to call, module holding the parameters): a deep copy of `model` in training mode with
    `config`'s checkpointing applied. For `sequential`, `sample` (a few images) checks first that
    the chain reproduces the model's output (CheckpointingError when it does not)."""
    held = copy.deepcopy(model).train()
    if config.checkpoint == "none":
        return held, held
    if config.checkpoint == "sequential":
        chain = body_chain(held, head)
        if config.segments is None:
            raise ValueError("sequential checkpointing needs its segment count (choose_segments)")
        if config.segments > len(chain):
            raise CheckpointingError(f"memory.segments is {config.segments} but the body has {len(chain)} layers")
        wrapper = ChainForward(chain, resolve_module(held, head), config.segments)
        if sample is not None:
            held.eval()
            with torch.no_grad():
                try:
                    same = torch.allclose(wrapper(sample), held(sample), rtol=1e-4, atol=1e-5)
                except RuntimeError:
                    same = False
            held.train()
            if not same:
                raise CheckpointingError(f"{type(model).__name__}'s forward is not its children in order followed by "
                                      "flatten and the head (it applies functions between them): use block or stage")
        return wrapper.train(), held
    for path in checkpoint_paths(held, config, head):
        _checkpointed_forward(resolve_module(held, path))
    return held, held
