"""What every notebook does first, and the calls it repeats: validate its parameters, load the data
and the model, then build the FP32 reference runner, measure, and write skipped records with the
chapter's data, parameters and name filled in."""
from __future__ import annotations

import functools
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .backends.artifacts import eager_artifact
from .backends.pytorch import TorchRunner
from .core import paths
from .core.params import Params, notebook_params
from .measurement.experiment import Measurement, measure, record_skipped
from .results.records import Record
from .workload.data import Dataset, Pool, PreprocessSpec, load_dataset, load_fidelity_pool, preprocess
from .workload.models import ModelInfo, load_model, model_outputs, state_dict_size_bytes
from .workload.outputs import Outputs


@dataclass
class Chapter:
    params: Params
    notebook: str
    dataset: Dataset
    model: nn.Module
    model_info: ModelInfo
    spec: PreprocessSpec
    outputs: Outputs  # how the model's logits become decisions (softmax, or one sigmoid logit)
    pool_note: str = ""  # why there is no label-free pool, once `pool` was read

    def describe(self) -> str:
        p, d = self.params, self.dataset
        o, info = self.outputs, self.model_info
        decision = (f"one sigmoid logit for `{d.class_names[o.positive_index]}`, threshold {o.threshold:g}"
                    if o.kind == "sigmoid" else f"{o.num_classes} logits (softmax)"
                    + (f", `{d.class_names[o.positive_index]}` positive at probability {o.threshold:g}" if o.binary else ""))
        head = (f"head `{info.head}`" + (" (detected)" if info.head_detected else "")) if info.head else \
            "no separable head (stages not timed apart)"
        return (f"target `{p.target}` on {p.device} ({p.bench.threads} threads); data: {d.source}, "
                f"{len(d.test)} test images, {d.num_classes} classes, {len(d.skipped)} unreadable files "
                f"skipped; model: {info.arch} ({info.parameters / 1e6:.2f} M parameters, {info.source}), "
                f"{decision}, {head}; image size {p.data.image_size}")

    @property
    def artifacts_dir(self) -> Path:
        """outputs/<target>/artifacts/<chapter number>/, created."""
        d = paths.target_dir(self.params.target) / "artifacts" / self.notebook.split("_")[0]
        d.mkdir(parents=True, exist_ok=True)
        return d

    def figure_path(self, name: str) -> Path:
        return paths.figures_dir(self.params.target) / f"{self.notebook.split('_')[0]}_{name}.png"

    def sample(self, n: int = 2) -> torch.Tensor:
        """The first `n` evaluated images, preprocessed: the example input for export and compilers."""
        return preprocess(self.dataset.test.images[:n], self.spec)

    def eager_runner(self, name: str = "pytorch-fp32", channels_last: bool = False,
                     technique: str = "baseline") -> TorchRunner:
        """PyTorch eager FP32 of the chapter's model, with its size and the artifact it reloads from."""
        r = TorchRunner(self.model, self.spec, name=name, device=self.params.device, threads=self.params.bench.threads,
                        channels_last=channels_last, technique=technique)
        return r.annotate(size_bytes=state_dict_size_bytes(self.model),
                          artifact=eager_artifact(self.model_info, self.spec, channels_last))

    @functools.cached_property
    def pool(self) -> Pool | None:
        """The label-free fidelity pool (workload.data.load_fidelity_pool), loaded on first use;
        None where there is none (`pool_note` says why)."""
        pool, self.pool_note = load_fidelity_pool(self.params)
        return pool

    def measure(self, runners, params: Params | None = None, **kwargs) -> Measurement:
        """measurement.experiment.measure on this chapter's evaluated images and its label-free
        pool (see there for kwargs); `params` replaces the chapter's (e.g. fewer calls for a slow
        round)."""
        t = self.dataset.test
        kwargs.setdefault("pool", self.pool)
        return measure(runners, t.images, t.labels, self.dataset.class_names, params or self.params, self.notebook,
                       data_summary=self.dataset.summary(), outputs=self.outputs, **kwargs)

    def skip(self, name: str, technique: str, backend: str, precision: str, reason: str, **kwargs) -> Record:
        """Write the record of a configuration that cannot run here, with its reason."""
        return record_skipped(self.params, self.notebook, name, technique, backend, precision, reason, **kwargs)

    def attempt(self, name: str, technique: str, backend: str, precision: str, build, *args, status: str = "failed",
                skip_reason: str | None = None, isolate: bool = False, **kwargs):
        """`build(*args, **kwargs)`, or, when it raises, a `failed` record (or `status`, e.g. skipped
        when a library cannot handle the model) with the error and its traceback, and None: one
        technique that breaks on a model does not end the chapter. With `skip_reason` (e.g. an
        optional runtime that cannot be imported here) nothing is built: a `skipped` record. With
        `isolate` (native code that may crash: a new runtime's compilation, an FP16 graph) the build
        and its first call on one evaluated image run in a child process first
        (measurement.launcher.survives); a crash there is a `failed` record naming the signal and
        the step, and the notebook's own process never builds it."""
        if skip_reason:
            self.skip(name, technique, backend, precision, skip_reason)
            print(f"{name} skipped ({skip_reason})")
            return None
        if isolate:
            from .measurement.launcher import survives

            crash = survives(build, args, kwargs, self.dataset.test.images[:1])
            if crash is not None:
                self.skip(name, technique, backend, precision, crash, status="failed",
                          extra={"isolated": "built and called once in a child process first"})
                print(f"{name} failed ({crash}, in a child process); recorded as failed, the chapter goes on")
                return None
        try:
            return build(*args, **kwargs)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.skip(name, technique, backend, precision, f"{type(e).__name__}: {first}", status=status,
                      extra={"traceback": traceback.format_exc()[-3000:]})
            print(f"{name} {status} ({type(e).__name__}: {first}); recorded as {status}, the chapter goes on")
            return None


def chapter_params(params_file: str | None, sections: dict) -> Params:
    """The params of a chapter: the file's when one is named (the cell's defaults ignored), else the
    parameters cell's sections."""
    return notebook_params(params_file) if params_file else notebook_params(None, **sections)


def setup(notebook: str, params_file: str | None = None, progress: bool = True, **sections) -> Chapter:
    """Validate the notebook's parameters, set the thread count, load the data and the model
    (training and caching the default one if needed). `sections` are the parameters cell's
    `params`: what papermill injects, or the notebook's tiny stand-alone defaults. A `params_file`
    set by hand in the cell replaces those defaults whole (a target's 64-pixel images must not
    become the defaults' 32); to change a value then, change it in the file."""
    from .techniques.int8_torch import use_engine

    params = chapter_params(params_file, sections)
    torch.set_num_threads(params.bench.threads)
    use_engine(params.quant.engine)
    dataset = load_dataset(params)
    model, info = load_model(params, dataset, progress=progress)
    return Chapter(params, notebook, dataset, model, info, PreprocessSpec.from_params(params.data),
                   model_outputs(params, dataset))
