"""PyTorch eager runner (the baseline), optionally in channels_last memory format."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..workload.data import PreprocessSpec
from ..workload.models import split_model
from ..workload.seqmodel import rows
from .base import Runner


def placed(model: nn.Module, device: str, channels_last: bool = False,
           parts: tuple[nn.Module, nn.Module] | None = None):
    """(model, parts) on `device` (and in channels_last), as copies whenever that changes
    anything. `Module.to` works in place: converting the caller's module would move a chapter's
    shared model to the GPU under its CPU exports, or turn the contiguous reference's weights
    channels_last (a conv with channels_last weights returns channels_last outputs even for a
    contiguous input, so the reference would silently run the other layout). One deepcopy of both
    keeps the parts the copied model's own submodules."""
    tensors = [*model.parameters(), *model.buffers()]
    moves = any(t.device.type != torch.device(device).type for t in tensors)
    relayouts = channels_last and any(t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last)
                                      for t in tensors)
    if not (moves or relayouts):
        return model, parts
    how = {"device": device, **({"memory_format": torch.channels_last} if channels_last else {})}
    model, parts = copy.deepcopy((model, parts))
    return model.to(**how), tuple(p.to(**how) for p in parts) if parts else parts


class TorchRunner(Runner):
    backend = "pytorch"

    def __init__(self, model: nn.Module, spec: PreprocessSpec, name: str = "pytorch-fp32",
                 device: str = "cpu", threads: int = 2, channels_last: bool = False,
                 technique: str = "baseline", precision: str = "fp32",
                 parts: tuple[nn.Module, nn.Module] | None = None, extra_settings: dict | None = None,
                 input_dtype: torch.dtype = torch.float32):
        """`model` is any module (eager, TorchScript, compiled); `parts` = (features, head) overrides
        the split of `model` (e.g. separately compiled parts); `input_dtype` is what the model takes
        (bfloat16 / float16 for a model whose weights were converted: the cast is preprocessing)."""
        super().__init__(spec)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for but torch.cuda.is_available() is False")
        self.name, self.device, self.threads = name, device, threads
        self.technique, self.precision = technique, precision
        self.channels_last, self.input_dtype = channels_last, input_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model, parts = placed(model.eval(), device, channels_last, parts)
        self.model = model
        self.extra_settings = extra_settings or {}
        parts = parts if parts is not None else split_model(self.model)
        self.stage_split = parts is not None
        self.features, self.head = parts if parts else (self.model, nn.Identity())
        torch.set_num_threads(threads)

    def _input(self, images) -> torch.Tensor:
        x = super().preprocess(images)
        return x.to(device=self.device, dtype=self.input_dtype, memory_format=self.memory_format, non_blocking=True)

    def preprocess(self, images):
        return self._input(images)

    @torch.inference_mode()
    def extract_features(self, x):
        return self.features(x)

    @torch.inference_mode()
    def classify(self, features) -> np.ndarray:
        return self.head(features).float().cpu().numpy()

    @torch.inference_mode()
    def predict(self, images) -> np.ndarray:
        return self.model(self._input(images)).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def settings(self) -> dict:
        return {"memory_format": "channels_last" if self.channels_last else "contiguous",
                **({"input_dtype": str(self.input_dtype).removeprefix("torch.")} if self.input_dtype != torch.float32 else {}),
                "torch_threads": torch.get_num_threads(), "grad": "inference_mode", **self.extra_settings}


class GruRunner(Runner):
    """Runner over a (possibly dynamically quantized) DigitsGRU: preprocessing = seqmodel.rows()."""

    backend = "pytorch"

    def __init__(self, model: nn.Module, name: str, precision: str, threads: int = 2):
        super().__init__(spec=None)
        self.model, self.name, self.precision, self.threads = model.eval(), name, precision, threads
        self.technique = "quantization" if precision != "fp32" else "baseline"

    def preprocess(self, images):
        return rows(images)

    @torch.inference_mode()
    def extract_features(self, x):
        return self.model.features(x)

    @torch.inference_mode()
    def classify(self, features) -> np.ndarray:
        return self.model.fc(features).numpy()

    @torch.inference_mode()
    def predict(self, images) -> np.ndarray:
        return self.model(rows(images)).numpy()
