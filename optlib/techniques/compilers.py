"""PyTorch compilers: TorchScript (trace or script, freeze, optimize_for_inference, save and
reload) and torch.compile (default mode, inductor freezing), with their one-time costs timed
apart from steady-state latency; the runners chapter 02 measures, and their artifact loaders."""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..backends.artifacts import build_eager, spec_of
from ..backends.pytorch import TorchRunner, placed
from ..core.choices import COMPILE_MODES, check_choice
from ..results.values import Artifact
from ..workload.data import PreprocessSpec
from ..workload.models import split_model, state_dict_size_bytes


@dataclass
class TorchScriptResult:
    module: torch.jit.ScriptModule
    method: str  # trace | script
    path: str
    size_bytes: int
    seconds: float  # trace/script + freeze + optimize + save + reload
    script_error: str | None = None  # why scripting failed when it was tried

    def info(self) -> dict:
        d = asdict(self)
        d.pop("module")
        return d


def torchscript(model: nn.Module, sample: torch.Tensor, path: str | Path, method: str = "trace",
                optimize: bool = True) -> TorchScriptResult:
    """Trace (or script, falling back to trace when scripting fails), freeze, save to `path`,
    reload, and optimize the reloaded module for inference: the returned module is the reloaded one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    script_error = None
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        used = method
        if method == "script":
            try:
                sm = torch.jit.script(model)
            except Exception as e:
                script_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
                used = "trace"
        if used == "trace":
            sm = torch.jit.trace(model, sample, check_trace=False)
        sm = torch.jit.freeze(sm.eval())
        # optimize_for_inference's pre-packed oneDNN ops do not survive torch.jit.save/load in
        # torch 2.14 ("required keyword attribute 'value' is undefined"): save the frozen module,
        # reload it, and optimize the reloaded module, as a deployment would at load time.
        torch.jit.save(sm, str(path))
        reloaded = torch.jit.load(str(path), map_location=sample.device).eval()
        if optimize:
            reloaded = torch.jit.optimize_for_inference(reloaded)
    return TorchScriptResult(reloaded, used, str(path), path.stat().st_size, time.perf_counter() - t0, script_error)


def torchscript_parts(model: nn.Module, sample: torch.Tensor, out_dir: Path, method: str = "trace"):
    """TorchScript the full model and its (features, head) split; returns (full, features, head)."""
    full = torchscript(model, sample, out_dir / "model.pt", method)
    parts = split_model(model)
    if parts is None:
        return full, None, None
    features, head = parts
    with torch.no_grad():
        feats = features(sample)
    f = torchscript(features, sample, out_dir / "features.pt", method)
    h = torchscript(head, feats, out_dir / "head.pt", method)
    return full, f, h


@dataclass
class CompiledModel:
    module: nn.Module
    mode: str
    options: dict
    compile_seconds: dict = field(default_factory=dict)  # {"bs=1 cold": s, "bs=1 warm": s, "bs=8": s}


@contextlib.contextmanager
def _inductor_cache(path: str | None):
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if path is not None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    try:
        yield
    finally:
        if path is not None:
            if old is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


class InductorConfigPatched(nn.Module):
    """Calls a compiled module with an inductor config patch active.

    Measured here (torch 2.14, ResNet18 64x64, batch 1): torch.compile(options={"freezing": True})
    ran at eager speed (11.5 ms), the same compile under `torch._inductor.config.patch(freezing=True)`
    at 4.0 ms. Compilation is lazy (first call, and again for every new batch size), so the patch
    must be active on every call, not only around torch.compile.
    """

    def __init__(self, compiled: nn.Module, patch: dict):
        super().__init__()
        self.compiled = compiled
        self.patch = dict(patch)

    def forward(self, x):
        with torch._inductor.config.patch(**self.patch), torch.no_grad():
            return self.compiled(x)


def compile_options(mode: str) -> tuple[dict, dict]:
    """(torch.compile kwargs, inductor config patch) for a named mode."""
    check_choice("compilers.compile_modes", mode, COMPILE_MODES)
    if mode == "freezing":
        # Freezing folds weights into constants and pre-packs them for oneDNN: the fastest FP32
        # PyTorch path on CPU, valid under no_grad / inference_mode only.
        return {"backend": "inductor"}, {"freezing": True}
    if mode == "max-autotune":
        return {"backend": "inductor", "mode": "max-autotune-no-cudagraphs"}, {}
    return {"backend": "inductor"}, {}


def first_call_seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Time of the first call (compilation included)."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        module(x)
    return time.perf_counter() - t0


def raise_recompile_limits(n: int = 64) -> None:
    """Every batch size is its own static graph, and all compiled variants of a model share one
    code object's cache: dynamo's default limit (8) would silently fall back to eager."""
    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, key):
            setattr(cfg, key, max(getattr(cfg, key), n))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4 * n)


def _compile(model: nn.Module, kwargs: dict, patch: dict) -> nn.Module:
    compiled = torch.compile(model, dynamic=False, **kwargs)
    return InductorConfigPatched(compiled, patch) if patch else compiled


def compile_model(model: nn.Module, mode: str, sample: torch.Tensor, measure_cold: bool = True) -> CompiledModel:
    """torch.compile `model` in `mode` and pay its compile cost on `sample` now.

    With `measure_cold`, the first compile uses a fresh inductor cache (cold), then the cache is
    kept, dynamo is reset and the model compiled again (warm cache): both times are recorded.
    """
    kwargs, options = compile_options(mode)
    raise_recompile_limits()
    seconds = {}
    bs = sample.shape[0]
    if measure_cold:
        with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache, _inductor_cache(cache):
            torch._dynamo.reset()
            cold = _compile(model, kwargs, options)
            seconds[f"bs={bs} cold cache"] = first_call_seconds(cold, sample)
            torch._dynamo.reset()
            warm = _compile(model, kwargs, options)
            seconds[f"bs={bs} warm cache"] = first_call_seconds(warm, sample)
        torch._dynamo.reset()
    compiled = _compile(model, kwargs, options)
    seconds[f"bs={bs}" + (" (after reset)" if measure_cold else "")] = first_call_seconds(compiled, sample)
    return CompiledModel(compiled, mode, {**kwargs, **options}, seconds)


# --- the runners chapter 02 measures, and how they reload ------------------------------------

def torchscript_runner(model: nn.Module, sample: torch.Tensor, out_dir: Path, method: str, spec: PreprocessSpec,
                       threads: int, device: str = "cpu") -> TorchRunner:
    """TorchScript of the model and its split (torchscript_parts), as a described runner."""
    t0 = time.perf_counter()
    full, f, h = torchscript_parts(placed(model, device)[0], sample, Path(out_dir), method)
    files = {"model": full.path, **({"features": f.path, "head": h.path} if f else {})}
    runner = TorchRunner(full.module, spec, name="torchscript-fp32", device=device, threads=threads,
                         technique="compiler", parts=(f.module, h.module) if f else None,
                         extra_settings={"torchscript": full.info()})
    return runner.annotate(size_bytes=full.size_bytes,
                           artifact=Artifact("torchscript", files, {"method": full.method}, spec.to_dict()),
                           one_time_cost_seconds={"convert, freeze, save, reload": time.perf_counter() - t0},
                           torchscript=full.info())


def load_torchscript(artifact: Artifact, name: str, threads: int, device: str) -> TorchRunner:
    def load(path):
        return torch.jit.optimize_for_inference(torch.jit.load(path, map_location=device).eval())

    f = artifact.files
    parts = (load(f["features"]), load(f["head"])) if "features" in f else None
    return TorchRunner(load(f["model"]), spec_of(artifact), name=name, device=device, threads=threads,
                       technique="compiler", parts=parts)


PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def compiled_runners(model: nn.Module, eager: Artifact, modes: list[str], samples: dict[int, torch.Tensor],
                     threads: int, device: str = "cpu", measure_cold: bool = True, dtype: torch.dtype = torch.float32,
                     ) -> tuple[list[TorchRunner], list[tuple[str, str]]]:
    """torch.compile runners, one per process: (runners, [(name, reason) of the modes not compiled]).

    Dynamo caches compiled graphs on the model's forward code object and its guards do not see
    inductor's config, so a second mode in the same process silently reuses the first mode's graph
    (observed: a 0.0 s "compile" and the first mode's latency). Only `modes[0]` is compiled; the
    others come back with the reason, to be recorded as skipped. `samples` maps batch size -> input:
    the smallest pays the compile (cold and warm cache with `measure_cold`), each other one its
    recompile, all recorded as one-time costs. `eager` is the FP32 model's artifact. `dtype`
    bfloat16 / float16 compiles a copy of the model with its weights converted (chapter 03); the
    guards see the dtype, so it compiles its own graph beside an FP32 one.
    """
    if not modes:
        return [], []
    label = PRECISION_NAMES[dtype]
    names = [f"compile-{label}" if m == "default" else f"compile-{label}-{m}" for m in modes]
    skipped = [(n, f"only one torch.compile mode per process: {modes[0]!r} was compiled first and dynamo would reuse "
                   f"its graph; run this notebook again with compilers.compile_modes: [{m}] to measure it")
               for n, m in zip(names[1:], modes[1:])]
    model = placed(model, device)[0]  # compiled where the samples are; the caller's module stays put
    if dtype != torch.float32:
        model = copy.deepcopy(model).to(dtype)
        samples = {bs: x.to(dtype) for bs, x in samples.items()}
    mode, spec = modes[0], spec_of(eager)
    bs1 = min(samples)
    full = compile_model(model, mode, samples[bs1], measure_cold=measure_cold)
    parts = split_model(model)
    feats = compile_model(parts[0], mode, samples[bs1], measure_cold=False) if parts else None
    costs = {f"compile {k}": v for k, v in full.compile_seconds.items()}
    for bs in sorted(set(samples) - {bs1}):
        costs[f"recompile bs={bs}"] = first_call_seconds(full.module, samples[bs])
    if feats:
        costs["compile features part"] = sum(feats.compile_seconds.values())
    settings = {"torch_compile": {"mode": mode, "options": full.options, "dynamic": False}}
    runner = TorchRunner(full.module, spec, name=names[0], device=device, threads=threads,
                         technique="compiler" if dtype == torch.float32 else "precision", precision=label,
                         parts=(feats.module, parts[1]) if feats else None, extra_settings=settings, input_dtype=dtype)
    options = {**eager.options, "mode": mode, **({"dtype": label} if dtype != torch.float32 else {})}
    artifact = Artifact("torch-compile", dict(eager.files), options, eager.preprocess)
    runner.annotate(size_bytes=state_dict_size_bytes(model), artifact=artifact, one_time_cost_seconds=costs, **settings)
    return [runner], skipped


def load_compiled(artifact: Artifact, name: str, threads: int, device: str) -> TorchRunner:
    """The eager model (converted to the artifact's dtype, if any) compiled again in `mode`
    (compilation happens lazily, at the first call)."""
    dtype = {v: k for k, v in PRECISION_NAMES.items()}[artifact.options.get("dtype", "fp32")]
    model = build_eager(artifact).to(dtype)
    kwargs, patch = compile_options(artifact.options["mode"])
    raise_recompile_limits()
    parts = split_model(model)
    return TorchRunner(_compile(model, kwargs, patch), spec_of(artifact), name=name, device=device, threads=threads,
                       technique="compiler", precision=PRECISION_NAMES[dtype], input_dtype=dtype,
                       parts=(_compile(parts[0], kwargs, patch), parts[1]) if parts else None)
