"""The interface every backend implements, so one benchmark and one evaluation serve them all.

Stages (timed separately by measurement.timing):
  preprocess(images)     raw uint8 images -> the backend's input batch (resize, normalise)
  extract_features(x)    input batch -> pooled features (everything before the head)
  classify(features)     features -> logits as a numpy array
  predict(images)        the whole single graph, images -> numpy logits: the headline "total"
A runner whose model cannot be split sets `stage_split = False`: extract_features then runs the
whole model and classify only converts the output.

A runner also carries what the technique that built it knows, which `measure` writes into its
record: `size_bytes` (the deployable artifact), `artifact` (what rebuilds it in a fresh process),
`kernels` (what really executes), `one_time_cost_seconds` and `details` (technique-specific).
"""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..results.values import Artifact, Kernels
from ..workload.data import PreprocessSpec, batches, preprocess


class Runner:
    name: str = "runner"
    backend: str = "unknown"  # pytorch | onnxruntime | tensorrt ...
    precision: str = "fp32"
    technique: str = "baseline"
    device: str = "cpu"
    threads: int = 1
    stage_split: bool = True

    def __init__(self, spec: PreprocessSpec | None):
        self.spec = spec
        self.size_bytes: int | None = None
        self.artifact: Artifact | None = None
        self.kernels: Kernels | None = None
        self.one_time_cost_seconds: dict[str, float] = {}
        self.details: dict = {}

    def annotate(self, size_bytes: int | None = None, artifact: Artifact | None = None,
                 kernels: Kernels | None = None, one_time_cost_seconds: dict | None = None,
                 **details) -> "Runner":
        """Attach what the technique knows about this configuration (returns the runner)."""
        if size_bytes is not None:
            self.size_bytes = int(size_bytes)
        if artifact is not None:
            self.artifact = artifact
        if kernels is not None:
            self.kernels = kernels
        self.one_time_cost_seconds.update(one_time_cost_seconds or {})
        self.details.update(details)
        return self

    def twin(self, name: str) -> "Runner":
        """The same configuration under another name (shares the model): the same-vs-same control."""
        t = copy.copy(self)
        t.name = name
        return t

    def preprocess(self, images):
        return preprocess(images, self.spec)

    def extract_features(self, x):
        raise NotImplementedError

    def classify(self, features) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images) -> np.ndarray:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued device work (CUDA); a no-op on the CPU."""

    def activate(self) -> None:
        """Re-apply this runner's thread settings before a timed block."""
        torch.set_num_threads(self.threads)

    def settings(self) -> dict:
        """What produced the numbers, recorded with them (runtime options, spinning, providers)."""
        return {}


def evaluate(runner: Runner, images: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Logits for every image, in order, through the runner's full graph.

    The last batch is padded to `batch_size` (repeating its first image) and the padding dropped,
    so static-shape backends (torch.compile, TensorRT engines) see one batch size only.
    """
    runner.activate()
    out = []
    for b in batches(images, batch_size):
        n = len(b)
        if n < batch_size and len(images) >= batch_size:
            b = list(b) + [b[0]] * (batch_size - n)
        out.append(runner.predict(b)[:n])
    return np.concatenate(out)
