"""Reduced precision (chapter 03): BF16 and FP16 in PyTorch (autocast or converted weights, each
optionally channels_last), FP16 ONNX graphs in ONNX Runtime, what really executed, and FP16
overflow.

What executed is read, not assumed:
- PyTorch: oneDNN's verbose log of one call lists every primitive it executed with its
  implementation and source data type (a conv in `brg_conv_fwd:avx512_core_bf16` with `src:bf16`
  ran BF16 arithmetic); forward hooks give the dtype each conv / linear produced. A reduced dtype
  with no reduced-precision oneDNN primitive means ATen's reference kernels, which widen every
  element to FP32 (cast-emulated).
- ONNX Runtime: its profiler lists each executed node with its input types; on CPUs without FP16
  kernels it inserts Cast nodes and runs the conv in FP32 (cast-emulated).
FP16's largest finite value is 65504: activations beyond it become inf. `activation_ranges` shows
each layer's headroom from the FP32 model, and `nonfinite` finds inf/NaN logits, which make a
configuration `failed` rather than a silently wrong accuracy.
"""
from __future__ import annotations

import copy
import ctypes
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..backends.artifacts import build_eager, spec_of
from ..backends.onnxruntime import OrtConfig, OrtRunner, make_session
from ..backends.pytorch import TorchRunner
from ..core.choices import PRECISION_VARIANTS, check_choice
from ..core.env import bf16_kernels_on_cpu, cpu_flags
from ..core.params import Params
from ..results.values import Artifact, Kernels
from ..workload.data import PreprocessSpec
from ..workload.models import save_state_dict, split_model, state_dict_size_bytes

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_MAX = 65504.0
HEAVY_PRIMITIVES = ("convolution", "inner_product", "matmul", "deconvolution")  # oneDNN kinds
HEAVY_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.ConvTranspose2d)
HEAVY_ORT_OPS = ("Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "MatMul", "FusedMatMul", "Gemm", "FusedGemm")


class Autocast(nn.Module):
    """`module` under torch.autocast(device_type, dtype): the weights stay FP32 and autocast's op
    list decides what runs in reduced precision (conv, linear and matmul do); logits come back as
    the reduced dtype, read as FP32 by the runner."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(x)


@dataclass(frozen=True)
class Variant:
    """One reduced-precision configuration of a PyTorch model (core.choices.PRECISION_VARIANTS)."""
    kind: str  # bf16-autocast | bf16 | fp16-autocast | fp16
    channels_last: bool = False

    def __post_init__(self):
        check_choice("precision.variants", self.kind, PRECISION_VARIANTS)

    @property
    def precision(self) -> str:
        return self.kind.split("-")[0]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    @property
    def autocast(self) -> bool:
        return self.kind.endswith("-autocast")

    @property
    def name(self) -> str:
        return f"pytorch-{self.kind}" + ("-channels_last" if self.channels_last else "")

    def slow_on_cpu(self, capabilities: dict) -> bool:
        """Timed in its own round with fewer calls (PrecisionParams) on a CPU: FP16 (no CPU here has
        FP16 oneDNN convolutions for it), and BF16 where oneDNN has no BF16 kernels
        (`capabilities["onednn_bf16_supported"]`, cpu_capabilities): then ATen's own kernels run it,
        13x slower than eager FP32 in the default layout, 1.5x in channels_last and compiled
        (ResNet18 at 64x64 on an AVX2-only EPYC, 2026-12-02: 151, 18.3 and 18.0 ms against 11.5)."""
        return self.precision == "fp16" or not capabilities.get("onednn_bf16_supported", False)


def variants(params: Params) -> list[Variant]:
    """The variants the params ask for, each also in channels_last when precision.channels_last."""
    layouts = (False, True) if params.precision.channels_last else (False,)
    return [Variant(k, cl) for k in params.precision.variants for cl in layouts]


def convert(model: nn.Module, variant: Variant, device: str = "cpu"):
    """(module, (features, head) or None, input dtype) of `variant`, on a copy of `model`:
    autocast wraps the model and each part; otherwise weights (and inputs) are converted."""
    m = copy.deepcopy(model).eval()
    if variant.autocast:
        parts = split_model(m)
        wrap = [Autocast(p, device, variant.dtype) for p in parts] if parts else None
        return Autocast(m, device, variant.dtype), tuple(wrap) if wrap else None, torch.float32
    m = m.to(variant.dtype)
    return m, split_model(m), variant.dtype


def torch_runner(model: nn.Module, variant: Variant, eager: Artifact, out_dir: str | Path, threads: int,
                 device: str = "cpu") -> TorchRunner:
    """The runner of `variant`, with its artifact (the converted weights saved as a state_dict,
    measured from the file; autocast keeps the FP32 weights) and the kernels that ran."""
    module, parts, in_dtype = convert(model, variant, device)
    files, size = dict(eager.files), state_dict_size_bytes(model)
    if not variant.autocast:
        path = save_state_dict(module, Path(out_dir) / f"{variant.name}.pt")
        files["state"], size = str(path), path.stat().st_size
    options = {**eager.options, "variant": variant.kind, "channels_last": variant.channels_last}
    runner = TorchRunner(module, spec_of(eager), name=variant.name, device=device, threads=threads,
                         channels_last=variant.channels_last, technique="precision", precision=variant.precision,
                         parts=parts, input_dtype=in_dtype,
                         extra_settings={"precision": {"variant": variant.kind, "autocast": variant.autocast}})
    return runner.annotate(size_bytes=size, artifact=Artifact("pytorch-precision", files, options, eager.preprocess))


def load_precision(artifact: Artifact, name: str, threads: int, device: str) -> TorchRunner:
    """A variant rebuilt from its artifact: the FP32 architecture, the saved reduced weights when
    there are any (read with weights_only=True), then the same conversion."""
    model = build_eager(artifact)
    if "state" in artifact.files:
        model.load_state_dict(torch.load(artifact.files["state"], map_location="cpu", weights_only=True))
    v = Variant(artifact.options["variant"], artifact.options.get("channels_last", False))
    module, parts, in_dtype = convert(model, v, device)
    return TorchRunner(module, spec_of(artifact), name=name, device=device, threads=threads,
                       channels_last=v.channels_last, technique="precision", precision=v.precision, parts=parts,
                       input_dtype=in_dtype)


# --- what executed: PyTorch ------------------------------------------------------------------

_SRC = re.compile(r"\bsrc[_:](f32|bf16|f16|s8|u8)\b")


def captured_output(fn) -> str:
    """What C code prints to file descriptors 1 and 2 while `fn()` runs (oneDNN's verbose log,
    the profiler's notices), kept out of the notebook."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as f:
        for fd in saved:
            os.dup2(f.fileno(), fd)
        try:
            fn()
        finally:
            libc.fflush(None)
            for fd, copy_ in saved.items():
                os.dup2(copy_, fd)
                os.close(copy_)
        f.seek(0)
        return f.read().decode(errors="replace")


def onednn_log(fn) -> str:
    """oneDNN's verbose output while `fn()` runs."""
    def verbose():
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            fn()
    return captured_output(verbose)


def onednn_primitives(log: str) -> pd.DataFrame:
    """Executed primitives of a oneDNN verbose log: kind, implementation, source data type."""
    rows = []
    for line in log.splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or "exec" not in fields:
            continue
        i = fields.index("exec")
        if len(fields) < i + 5:
            continue
        m = _SRC.search(",".join(fields[i + 4:]))
        rows.append({"kind": fields[i + 2], "implementation": fields[i + 3], "src": m.group(1) if m else "?"})
    return pd.DataFrame(rows, columns=["kind", "implementation", "src"])


_ISA: dict[str, str] = {}  # oneDNN prints its header once per process: the first one seen is kept


def onednn_isa(log: str) -> str | None:
    """The instruction set oneDNN dispatches to, from this log's verbose header, or (oneDNN prints
    it once per process) the header an earlier log of this process carried. The log's own header
    wins: a cached one first seen elsewhere (an AMX machine's "Intel AVX10.1 and Intel AMX ...")
    must not relabel it."""
    for line in log.splitlines():
        if ",info,cpu,isa:" in line:
            _ISA["isa"] = line.split("isa:", 1)[1].strip()
            return _ISA["isa"]
    return _ISA.get("isa")


def heavy_output_dtypes(module: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """How many conv / linear calls of one forward produced each dtype (forward hooks: eager
    modules only; hooking a compiled module's submodules would make dynamo recompile it)."""
    counts: dict[str, int] = {}

    def seen(_name, out):
        k = str(out.dtype).removeprefix("torch.")
        counts[k] = counts.get(k, 0) + 1

    _forward_observed(module, x, [(n, m) for n, m in module.named_modules() if isinstance(m, HEAVY_MODULES)], seen)
    return counts


def _forward_observed(model: nn.Module, x: torch.Tensor, modules: list[tuple[str, nn.Module]], seen) -> None:
    """One inference forward of `model` on `x`, calling seen(name, output) for every tensor output
    of `modules` (forward hooks, removed afterwards)."""
    def hook(name):
        def f(_m, _inp, out):
            if isinstance(out, torch.Tensor):
                seen(name, out)
        return f

    handles = [m.register_forward_hook(hook(n)) for n, m in modules]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()


def aten_heavy_ops(fn) -> dict[str, int]:
    """The ATen convolution / matrix-multiply operators one call of `fn()` ran, with their counts
    (PyTorch's profiler): mkldnn_* ran in oneDNN; _slow_conv2d_forward is ATen's im2col + GEMM."""
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def profiled():
        with prof:
            fn()
    captured_output(profiled)
    wrappers = {"aten::conv2d", "aten::convolution", "aten::_convolution", "aten::linear"}
    return {e.key: int(e.count) for e in prof.key_averages()
            if e.key not in wrappers and (re.match(r"aten::(mkldnn|.*conv|addmm$|mm$|bmm$|matmul$)", e.key))}


def label_torch(primitives: pd.DataFrame, outputs: dict[str, int]) -> tuple[str, float]:
    """(kernels label, reduced-precision share) from the executed oneDNN primitives and the conv /
    linear output dtypes; the share counts conv / linear calls that ran as BF16 / FP16 primitives.
    A call that produced a reduced dtype outside oneDNN (another BLAS, or ATen's own kernel) is
    not counted as verified: all verified -> reduced-precision, some -> mixed, none -> cast-emulated
    (reduced tensors, no reduced-precision kernel seen) or float."""
    heavy = primitives[primitives["kind"].isin(HEAVY_PRIMITIVES)]
    n_reduced = int(heavy["src"].isin(["bf16", "f16"]).sum())
    reduced_outputs = outputs.get("bfloat16", 0) + outputs.get("float16", 0)
    n_calls = max(len(heavy), sum(outputs.values()))
    share = n_reduced / n_calls if n_calls else 0.0
    if n_reduced == 0:
        return ("cast-emulated" if reduced_outputs else "float"), share
    return ("reduced-precision" if n_reduced >= n_calls else "mixed"), share


def torch_kernels(runner: TorchRunner, images: list[np.ndarray]) -> Kernels:
    """What one call of the runner's model executed: on a CPU, oneDNN's log and the conv / linear
    output dtypes; on a GPU only the dtypes (cuDNN / cuBLAS kernel names are not read)."""
    compiled = any(hasattr(m, a) for m in (runner.model, runner.features) for a in ("_orig_mod", "compiled"))
    # a hook added to a compiled module's submodule would make dynamo recompile it
    outputs = {} if compiled else heavy_output_dtypes(runner.model, runner.preprocess(images))
    if runner.device != "cpu":
        n, reduced = sum(outputs.values()), outputs.get("bfloat16", 0) + outputs.get("float16", 0)
        label = ("reduced-precision" if reduced == n else "mixed") if reduced else "float"
        return Kernels(label, reduced / n if n else 0.0, "conv / linear calls producing BF16 or FP16 tensors "
                       "(GPU: kernel names not read)", {"heavy_output_dtypes": outputs})
    log = onednn_log(lambda: runner.predict(images))
    prims = onednn_primitives(log)
    aten = {} if compiled else aten_heavy_ops(lambda: runner.predict(images))
    label, share = label_torch(prims, outputs)
    heavy = prims[prims["kind"].isin(HEAVY_PRIMITIVES)]
    evidence = {"onednn_isa": onednn_isa(log), "heavy_output_dtypes": outputs, "aten_heavy_ops": aten,
                "onednn_heavy_by_src": heavy["src"].value_counts().to_dict(),
                "onednn_implementations": heavy.groupby(["implementation", "src"]).size().rename("calls")
                .reset_index().to_dict("records"),
                "onednn_primitives_executed": int(len(prims)),
                "calls_outside_onednn": max(sum(outputs.values()) - len(heavy), 0)}
    return Kernels(label, share, "conv / linear calls run as BF16 or FP16 oneDNN primitives", evidence)


def cpu_capabilities() -> dict:
    """The reduced-precision features of this CPU: /proc/cpuinfo flags and PyTorch's dispatch level."""
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
    conv = nn.Conv2d(3, 8, 3).to(torch.bfloat16).eval()
    with torch.inference_mode():
        isa = onednn_isa(onednn_log(lambda: conv(torch.zeros(1, 3, 8, 8, dtype=torch.bfloat16))))
    return {"torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "onednn_isa": isa,
            "onednn_bf16_supported": bf16_kernels_on_cpu(),
            "onednn_fp16_supported": bool(torch.ops.mkldnn._is_mkldnn_fp16_supported()),
            **{f: f in flags for f in wanted}}


# --- ONNX Runtime FP16 ----------------------------------------------------------------------

def fp16_graph(fp32_path: str | Path, out_path: str | Path) -> Path:
    """The FP32 ONNX graph with its weights and arithmetic in FP16 and its inputs and outputs kept
    FP32 (onnxruntime.transformers.float16, the converter onnxconverter-common also ships)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    out_path = Path(out_path)
    onnx.save(model, str(out_path))
    return out_path


def ort_kernels(path: str | Path, config: OrtConfig, x: np.ndarray, calls: int = 3) -> Kernels:
    """What ONNX Runtime executed for the graph at `path`: each heavy node's input type from its
    profiler, and the Cast nodes it ran."""
    with tempfile.TemporaryDirectory(prefix="optlib-fp16prof-") as d:
        sess, _ = make_session(path, replace(config, profile_prefix=str(Path(d) / "prof")))
        name = sess.get_inputs()[0].name
        for _ in range(calls):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    heavy: dict[str, int] = {}
    casts = 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        if op == "Cast":
            casts += 1
        elif op in HEAVY_ORT_OPS:
            types = args.get("input_type_shape") or [{}]
            dtype = next(iter(types[0]), "?")
            heavy[f"{op}:{dtype}"] = heavy.get(f"{op}:{dtype}", 0) + 1
    n = sum(heavy.values())
    n_fp16 = sum(v for k, v in heavy.items() if k.endswith(":float16"))
    share = n_fp16 / n if n else 0.0
    if n_fp16 == 0:
        label = "cast-emulated" if casts else "float"
    else:
        label = "reduced-precision" if n_fp16 == n else "mixed"
    evidence = {"heavy_ops_by_input_type": {k: v // calls for k, v in heavy.items()},
                "cast_nodes_per_call": casts // calls}
    return Kernels(label, share, "conv / matmul / gemm nodes executed with FP16 inputs", evidence)


def ort_fp16_runner(graphs, spec: PreprocessSpec, config: OrtConfig, x: np.ndarray,
                    name: str = "onnxruntime-fp16") -> OrtRunner:
    """FP16 copies of the FP32 graphs (int8_onnx.Fp32Graphs: model, features, head) as a runner,
    described with its files' size and the kernels ONNX Runtime executed."""
    paths = {part: fp16_graph(p, Path(graphs.out_dir) / f"{part}.fp16.onnx") for part, p in graphs.paths.items()}
    r = OrtRunner(paths["model"], spec, name=name, config=config, features_path=paths.get("features"),
                  head_path=paths.get("head"), technique="precision", precision="fp16")
    return r.annotate(size_bytes=paths["model"].stat().st_size, kernels=ort_kernels(paths["model"], config, x))


# --- numerical safety ------------------------------------------------------------------------

def activation_ranges(model: nn.Module, x: torch.Tensor) -> pd.DataFrame:
    """Largest |activation| of every leaf module in FP32 on `x`, with its headroom under FP16's
    largest finite value (65504): a layer whose headroom is below 1 overflows in FP16."""
    peaks: dict[str, float] = {}

    def seen(name, out):
        if out.is_floating_point():
            peaks[name] = max(peaks.get(name, 0.0), float(out.detach().abs().max()))

    _forward_observed(model, x, [(n, m) for n, m in model.named_modules() if n and not list(m.children())], seen)
    t = pd.DataFrame({"max_abs_fp32": pd.Series(peaks, dtype=float)})
    t["fp16_headroom"] = FP16_MAX / t["max_abs_fp32"].where(t["max_abs_fp32"] > 0)
    return t.sort_values("max_abs_fp32", ascending=False)


def nonfinite(logits: np.ndarray) -> str | None:
    """None when every logit is finite, else the reason a configuration must be `failed`."""
    bad = ~np.isfinite(np.asarray(logits, dtype=np.float64))
    if not bad.any():
        return None
    rows = int(bad.reshape(len(bad), -1).any(axis=1).sum())
    return (f"{rows} of {len(bad)} images give inf/NaN logits (FP16 overflow: a value beyond 65504 in some layer; "
            "see the activation ranges); accuracy would be meaningless")
