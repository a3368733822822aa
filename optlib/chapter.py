"""What every notebook does first: validate its parameters, load the data and the model."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .data import Dataset, PreprocessSpec, load_dataset
from .models import ModelInfo, load_model
from .params import Params, notebook_params


@dataclass
class Chapter:
    params: Params
    notebook: str
    dataset: Dataset
    model: nn.Module
    model_info: ModelInfo
    spec: PreprocessSpec

    def describe(self) -> str:
        p, d = self.params, self.dataset
        return (f"target `{p.target}` on {p.device} ({p.bench.threads} threads); data: {d.source}, "
                f"{len(d.test)} test images, {d.num_classes} classes, {len(d.skipped)} unreadable files "
                f"skipped; model: {self.model_info.arch} ({self.model_info.parameters / 1e6:.2f} M parameters, "
                f"{self.model_info.source}); image size {p.data.image_size}")


def setup(notebook: str, params_file: str | None = None, progress: bool = True, **sections) -> Chapter:
    """Validate the notebook's parameters (`sections` are the parameters cell's variables), set the
    thread count, load the data and the model (training and caching the default one if needed)."""
    params = notebook_params(params_file, **sections)
    torch.set_num_threads(params.bench.threads)
    dataset = load_dataset(params)
    model, info = load_model(params, dataset, progress=progress)
    return Chapter(params, notebook, dataset, model, info, PreprocessSpec.from_params(params.data))
