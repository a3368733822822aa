"""OpenVINO runner: one compiled model and one infer request, on the CPU.

The IR is converted from the same FP32 ONNX graph ONNX Runtime runs and saved with full-precision
weights (`ov.save_model` stores FP16 weights unless told not to). The precision the CPU plugin
computes in is a compile-time hint, not a property of the graph: on a CPU with AVX512-BF16 or AMX,
OpenVINO runs a model compiled without a hint in BF16 and it looks like a 2.3x faster "FP32"
(platform facts). So FP32 is compiled with the hint forced to f32, BF16 is its own configuration,
and an INT8 model is the FP32 hint over a graph with FakeQuantize nodes (NNCF's,
techniques.int8_nncf). What really ran is read back from the compiled model's runtime graph: each
executed node's layer type, runtime precision and oneDNN primitive (`executed_nodes`, `kernels_of`).

OpenVINO is optional (the `cpu` extra has it): `unavailable()` says why it cannot be used here.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..core.choices import OPENVINO_PRECISIONS, check_choice
from ..results.values import Artifact, Kernels
from ..workload.data import PreprocessSpec, preprocess_array
from .base import Runner

# The layer types whose arithmetic decides a configuration's kernels (the rest move or reshape data).
HEAVY_LAYERS = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul", "Deconvolution")
INTEGER_PRECISIONS = ("i8", "u8", "i4", "u4")
REDUCED_PRECISIONS = ("bf16", "f16")


def unasked_telemetry_off() -> None:
    """Make OpenVINO's and NNCF's usage telemetry (openvino_telemetry: Google Analytics) need an
    answer. As shipped, a user who never ran `opt_in_out` (no consent file in ~/intel) is counted as
    consenting: every `ov.convert_model` and `nncf.quantize` sends events, each from a forked process
    that waits up to 3 s for the network (24 CPU-seconds of the smoke run on 2026-12-07, on machines
    with no route out). optlib runs offline and answers for nobody: an unanswered question counts as
    "no"; a consent file, either way, still decides. Idempotent; call before nncf is imported (its
    telemetry object is made at import) and before converting."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except Exception:  # not installed (nothing to turn off), or a layout this does not know
        return
    check = OptInChecker.check
    if getattr(check, "optlib_unasked_off", False):
        return

    def answered_only(self, *args, **kwargs):
        result = check(self, *args, **kwargs)
        return ConsentCheckResult.DECLINED if result == ConsentCheckResult.NO_FILE else result

    answered_only.optlib_unasked_off, answered_only.__wrapped__ = True, check
    OptInChecker.check = answered_only


def unavailable() -> str | None:
    """None when OpenVINO imports here, else the reason (for a `skipped` record)."""
    try:
        import openvino  # noqa: F401
    except Exception as e:  # ImportError, or a broken native library
        return f"openvino cannot be imported ({type(e).__name__}: {e}); install the cpu extra (pip install -e .[cpu])"
    return None


@dataclass
class OvConfig:
    threads: int = 2
    precision: str = "f32"  # INFERENCE_PRECISION_HINT: f32 | bf16 (INT8 comes from the graph)
    performance_hint: str = "LATENCY"
    num_streams: int = 1

    def __post_init__(self):
        check_choice("openvino precision", self.precision, OPENVINO_PRECISIONS)

    def properties(self) -> dict:
        return {"INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": self.threads,
                "PERFORMANCE_HINT": self.performance_hint, "NUM_STREAMS": self.num_streams}


def save_ir(model, xml_path: str | Path) -> Path:
    """Write `model` (an .onnx path or an ov.Model) as IR (.xml + .bin) with FP32 weights."""
    import openvino as ov

    unasked_telemetry_off()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov_model = ov.convert_model(str(model)) if isinstance(model, (str, Path)) else model
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=False)
    return xml_path


def ir_size_bytes(xml_path: str | Path) -> int:
    xml_path = Path(xml_path)
    return xml_path.stat().st_size + xml_path.with_suffix(".bin").stat().st_size


def compile_ir(xml_path: str | Path, config: OvConfig):
    """(compiled model, settings read back from it) for `config` on the CPU plugin."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml_path), "CPU", config.properties())
    read = {k: compiled.get_property(k) for k in ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS",
                                                 "PERFORMANCE_HINT", "NUM_STREAMS")}
    read = {k: v.to_string() if hasattr(v, "to_string") else str(v) for k, v in read.items()}  # ov.Type -> "f32"
    return compiled, {"openvino": ov.__version__, "requested": asdict(config), "compiled_properties": read}


def executed_nodes(compiled) -> Counter:
    """Counter of (layer type, runtime precision, primitive) over the compiled model's runtime graph."""
    nodes: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        nodes[tuple(info[k].astype(str) for k in ("layerType", "runtimePrecision", "primitiveType"))] += 1
    return nodes


def kernels_of(nodes: Counter) -> Kernels:
    """The record's kernels from `executed_nodes`: integer where every heavy layer ran in i8/u8,
    reduced-precision where every one ran in bf16/f16, mixed where some did, else float."""
    heavy = {k: n for k, n in nodes.items() if k[0] in HEAVY_LAYERS}
    total = sum(heavy.values())
    integer = sum(n for (_, p, _), n in heavy.items() if p in INTEGER_PRECISIONS)
    reduced = sum(n for (_, p, _), n in heavy.items() if p in REDUCED_PRECISIONS)
    low = integer + reduced
    if not total or not low:
        label = "float"
    elif integer == total:
        label = "integer"
    elif reduced == total:
        label = "reduced-precision"
    else:
        label = "mixed"
    evidence = {"heavy_layers": [{"layer": t, "runtime_precision": p, "primitive": prim, "count": n}
                                 for (t, p, prim), n in sorted(heavy.items())],
                "nodes_executed": int(sum(nodes.values()))}
    return Kernels(label, low / total if total else 0.0,
                   "conv / fully-connected / matmul nodes OpenVINO executed in i8/u8 or bf16/f16", evidence)


class OvRunner(Runner):
    backend = "openvino"
    stage_split = False  # one compiled graph: extract_features runs it whole

    def __init__(self, xml_path: str | Path, spec: PreprocessSpec, name: str = "openvino-fp32",
                 config: OvConfig | None = None, technique: str = "runtime", precision: str = "fp32"):
        super().__init__(spec)
        self.config = config or OvConfig()
        self.name, self.technique, self.precision = name, technique, precision
        self.threads = self.config.threads
        t0 = time.perf_counter()
        self.compiled, self._settings = compile_ir(xml_path, self.config)
        self.compile_seconds = time.perf_counter() - t0
        self.request = self.compiled.create_infer_request()
        self.artifact = Artifact("openvino", {"model": str(xml_path), "weights": str(Path(xml_path).with_suffix(".bin"))},
                                 {"config": asdict(self.config), "precision": precision, "technique": technique},
                                 spec.to_dict() if spec is not None else None)
        self.size_bytes = ir_size_bytes(xml_path)
        self.kernels = kernels_of(executed_nodes(self.compiled))

    def with_threads(self, threads: int, name: str) -> "OvRunner":
        """The same IR compiled anew with `threads` inference threads, described like this runner."""
        r = OvRunner(self.artifact.files["model"], self.spec, name=name, config=replace(self.config, threads=threads),
                     technique=self.technique, precision=self.precision)
        return r.annotate(size_bytes=self.size_bytes, one_time_cost_seconds=self.one_time_cost_seconds, **self.details)

    def preprocess(self, images):
        return preprocess_array(images, self.spec)

    def extract_features(self, x):
        # share_inputs: the request reads the caller's array (no copy); the output is copied out
        # because the next call reuses the request's output buffer.
        return np.array(self.request.infer({0: x}, share_inputs=True)[0], dtype=np.float32)

    def classify(self, features) -> np.ndarray:
        return features

    def predict(self, images) -> np.ndarray:
        return self.extract_features(self.preprocess(images))

    def settings(self) -> dict:
        return dict(self._settings)


def runner(onnx_path: str | Path, xml_path: str | Path, spec: PreprocessSpec, threads: int, name: str,
           precision: str = "fp32", technique: str = "runtime", one_time_cost_seconds: dict | None = None,
           **details) -> OvRunner:
    """The FP32 ONNX graph converted to IR at `xml_path` and compiled with the precision hint of
    `precision` (fp32 -> f32, bf16 -> bf16); conversion and compilation recorded as one-time costs."""
    t0 = time.perf_counter()
    save_ir(onnx_path, xml_path)  # always anew: under a second, and never stale against its ONNX graph
    convert_seconds = time.perf_counter() - t0
    hint = {"fp32": "f32", "bf16": "bf16"}[precision]
    r = OvRunner(xml_path, spec, name=name, config=OvConfig(threads=threads, precision=hint), technique=technique,
                 precision=precision)
    return r.annotate(one_time_cost_seconds={**(one_time_cost_seconds or {}), "conversion to IR": convert_seconds,
                                             "compile": r.compile_seconds}, **details)


def load_openvino(artifact: Artifact, name: str, threads: int, device: str) -> OvRunner:
    """The runner an `openvino` artifact describes (artifacts.load_runner)."""
    from .artifacts import spec_of

    o = artifact.options
    return OvRunner(artifact.files["model"], spec_of(artifact), name=name, config=OvConfig(**{**o["config"], "threads": threads}),
                    technique=o.get("technique", "runtime"), precision=o.get("precision", "fp32"))
