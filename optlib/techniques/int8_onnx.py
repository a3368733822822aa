"""INT8 with ONNX Runtime: dynamic and static (calibrated) quantization, the evidence of how the
result executes, and the runners chapter 04 measures.

Calibration is driven through ORT's calibrator classes directly (`calibrate`), then handed to
`quantize_static` as a calibration cache: onnxruntime 1.32's `quantize_static(calibrate_method=
Entropy)` produced a model byte-identical to MinMax (it cannot pass the histogram options, see
`calibrate`). One set of ranges also serves many quantizations (exclusion lists, per-node
sensitivity) without recalibrating.

Measured on this project's machines (x86 with VNNI, onnxruntime 1.32): QDQ with unsigned
activations and signed per-channel weights is the fast path (~4x ORT FP32 at batch 1 on
ResNet18); signed activations (s8s8) leave about half of the convolutions as float Conv between
Q/DQ pairs; dynamic INT8 is slower than FP32 for CNNs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import platform
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..backends.onnxruntime import OrtConfig, OrtRunner, make_session
from ..core.choices import CALIBRATION_METHODS, INT8_TYPES, QUANT_FORMATS, check_choice
from ..core.env import cpu_flags
from ..core.io import write_json_atomic
from ..results.values import Kernels
from ..workload.data import CalibrationError, PreprocessSpec
from .onnx_export import ExportConfig, export_split, onnx_size_bytes

QUANTIZABLE_OPS = ("Conv", "Gemm", "MatMul")
# Operators that only exist when the arithmetic is done in integers.
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
               "QLinearAdd", "QLinearGlobalAveragePool", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# The heavy operators, by how they compute: integer (INT8 x INT8 -> INT32) or float.
INTEGER_COMPUTE_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
                       "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
FLOAT_COMPUTE_OPS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def u8s8_saturates() -> bool:
    """True on an x86 CPU without VNNI (AVX2, or AVX-512 without VNNI): there ONNX Runtime's u8 x s8
    kernels add pairs of products in saturating 16-bit arithmetic, which full-range 8-bit weights
    overflow (on 2026-12-02's AVX2 machine a ResNet18's static INT8 agreed with FP32 on 94% of
    images, and a plain MatMulInteger got 55% of its outputs wrong). ONNX Runtime's remedy is
    reduce_range: 7-bit weights."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = cpu_flags()
    return bool(flags) and not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


@dataclass
class StaticQuantConfig:
    method: str = "minmax"  # minmax | entropy | percentile
    per_channel: bool = True
    activation_type: str = "uint8"  # uint8 (fast path on x86) | int8
    weight_type: str = "int8"
    quant_format: str = "QDQ"  # QDQ (fast path) | QOperator
    nodes_to_exclude: list[str] = field(default_factory=list)
    nodes_to_quantize: list[str] | None = None  # None: every quantizable node
    quantize_bias: bool = True  # INT32 biases behind DequantizeLinear (ORT's default); TensorRT wants them float
    # 7-bit weights; None: where u8 x s8 saturates (u8s8_saturates: x86 without VNNI) for u8 activations
    reduce_range: bool | None = None

    def __post_init__(self):
        if self.reduce_range is None:
            self.reduce_range = self.activation_type == "uint8" and u8s8_saturates()
        check_choice("quant.method", self.method, CALIBRATION_METHODS)
        check_choice("quant.quant_format", self.quant_format, QUANT_FORMATS)
        check_choice("quant.activation_type", self.activation_type, INT8_TYPES)
        check_choice("weight_type", self.weight_type, INT8_TYPES)

    @classmethod
    def from_params(cls, params, **overrides) -> "StaticQuantConfig":
        """The main static configuration a run's Params ask for; keyword overrides win."""
        q = params.quant
        kw = dict(method=q.method, per_channel=q.per_channel, activation_type=q.activation_type,
                  quant_format=q.quant_format)
        return cls(**{**kw, **overrides})

    def label(self) -> str:
        parts = [self.method]
        if not self.per_channel:
            parts.append("per_tensor")
        if self.quant_format != "QDQ":
            parts.append(self.quant_format.lower())
        if self.activation_type == "int8":
            parts.append("s8s8")
        return "-".join(parts)


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def _ort_enums(config: StaticQuantConfig):
    from onnxruntime.quantization import QuantFormat, QuantType

    qt = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    fmt = {"QDQ": QuantFormat.QDQ, "QOperator": QuantFormat.QOperator}[config.quant_format]
    return _ort_method(config.method), qt[config.activation_type], qt[config.weight_type], fmt


def preprocess_model(fp32_path: str | Path, out_path: str | Path) -> Path:
    """ORT's quant_pre_process (symbolic shape inference, graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return out_path


class _ArrayReader:
    """CalibrationDataReader over an array of preprocessed inputs, in batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch_size: int = 16):
        self.input_name, self.data, self.batch_size, self.i = input_name, data, batch_size, 0

    def get_next(self):
        if self.i >= len(self.data):
            return None
        batch = self.data[self.i:self.i + self.batch_size]
        self.i += self.batch_size
        return {self.input_name: batch}

    def rewind(self):
        self.i = 0

    def __len__(self):
        return (len(self.data) + self.batch_size - 1) // self.batch_size


CALIBRATION_HELD_BYTES = 4 * 2 ** 30  # every tensor's outputs ORT holds at once while calibrating (it copies them once more)


def calibrate(model_path: str | Path, calibration: np.ndarray, method: str = "minmax",
              percentile: float = 99.999, num_bins: int | None = None, held_bytes: int = CALIBRATION_HELD_BYTES):
    """Activation ranges of every tensor to quantize, computed by ORT's calibrator for `method`.

    `calibration` holds preprocessed inputs (N, C, H, W) drawn from the training side.
    Returns onnxruntime's TensorsData. ORT keeps every tensor's outputs for all the images it is
    given (500 images of a ResNet50 at 224 pixels ran a 24 GiB machine out of memory at 22 GB), so
    the images go in chunks whose outputs fit `held_bytes`; min / max ranges merge exactly across
    chunks, histograms as ORT's collector merges them (in four chunks, percentile's
    ranges moved by up to 3.7% of their width, tests/test_quantization.py; entropy's, searched
    over the same merged histograms, by up to 9.3%).
    """
    from onnxruntime.quantization.calibrate import create_calibrator

    if calibration is None or len(calibration) == 0:
        raise CalibrationError("static quantization needs calibration images (from data.train_root or the "
                               "default split's training side); none were given")
    check_choice("quant.method", method, CALIBRATION_METHODS)
    extra = {}
    if method == "percentile":
        extra["percentile"] = percentile
    if method == "percentile" and num_bins is not None:
        extra["num_bins"] = num_bins
    if method == "entropy":
        # ORT's defaults are 128 histogram bins for 128 quantized bins: the KL search then has a
        # single candidate, the full range, and Entropy returns MinMax's answer. That is why
        # quantize_static(calibrate_method=Entropy), which cannot pass num_bins, equals MinMax.
        extra["num_bins"] = num_bins or 2048
        extra["num_quantized_bins"] = 128
    input_name = onnx.load(str(model_path), load_external_data=False).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="optlib-calib-") as d:
        calibrator = create_calibrator(Path(model_path), [], augmented_model_path=str(Path(d) / "augmented.onnx"),
                                       calibrate_method=_ort_method(method), extra_options=extra)
        # ORT's histogram collector stacks per-batch outputs: every batch must have the same size.
        data = np.ascontiguousarray(calibration, dtype=np.float32)
        n = len(data)
        bs = max(b for b in range(1, min(16, n) + 1) if n % b == 0)
        per_image = sum(o.nbytes for o in calibrator.infer_session.run(None, {input_name: data[:1]}))
        chunk = max(1, int(held_bytes // max(per_image, 1)) // bs) * bs  # whole batches: n / chunk leaves whole ones
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            for start in range(0, n, chunk):
                calibrator.collect_data(_ArrayReader(input_name, data[start:start + chunk], bs))
            ranges = calibrator.compute_data()
        del calibrator
    return ranges


def ranges_summary(ranges) -> dict[str, tuple[float, float]]:
    """{tensor: (low, high)} of a TensorsData, for comparing calibration methods."""
    out = {}
    for name in ranges:
        td = ranges[name]
        lo, hi = td.range_value if hasattr(td, "range_value") else (td.lowest, td.highest)
        out[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return out


def quantize_static(model_path: str | Path, out_path: str | Path, ranges, config: StaticQuantConfig) -> Path:
    """Static INT8 quantization of `model_path` (already pre-processed) with precomputed `ranges`."""
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    method, act, wt, fmt = _ort_enums(config)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optlib-quant-") as d:
        cache = Path(d) / "ranges.json"
        save_tensors_data(ranges, cache)
        # ORT's quantizer warns about pre-processing through the root logger: quiet for this call
        # only, then the process's own level again.
        root, level = logging.getLogger(), logging.getLogger().level
        root.setLevel(logging.ERROR)
        try:
            ort_quantize_static(str(model_path), str(out_path), calibration_data_reader=None, quant_format=fmt,
                                per_channel=config.per_channel, activation_type=act, weight_type=wt,
                                nodes_to_exclude=list(config.nodes_to_exclude) or None,
                                nodes_to_quantize=list(config.nodes_to_quantize) if config.nodes_to_quantize else None,
                                calibrate_method=method, calibration_cache_path=str(cache),
                                reduce_range=config.reduce_range,
                                extra_options={"ActivationSymmetric": config.activation_type == "int8",
                                               "QuantizeBias": config.quantize_bias})
        finally:
            root.setLevel(level)
    return out_path


def quantize_dynamic_graph(model_path: str | Path, out_path: str | Path, per_channel: bool = False) -> Path:
    """Dynamic INT8: weights quantized offline, activations quantized at run time per call."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    out_path = Path(out_path)
    ort_quantize_dynamic(str(model_path), str(out_path), weight_type=QuantType.QInt8, per_channel=per_channel)
    return out_path


def op_counts(path: str | Path) -> dict[str, int]:
    m = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in m.graph.node).items()))


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes of a graph, in graph order."""
    m = onnx.load(str(path), load_external_data=False)
    return [n.name for n in m.graph.node if n.op_type in QUANTIZABLE_OPS]


def execution_evidence(path: str | Path, providers: list[str] | None = None,
                       disabled_optimizers: tuple[str, ...] | list[str] | None = None) -> dict:
    """How a quantized graph executes: the operators of the graph as written and after ONNX
    Runtime's optimisations (which fuse QDQ patterns into integer kernels such as QLinearConv).

    kernels = "integer" when every heavy operator (conv, matmul, gemm) runs as an integer kernel,
    "mixed" when some run in integer and some in float (layers excluded from quantization, or QDQ
    patterns ORT could not fuse), "fake-quant" when only Quantize/Dequantize pairs around float
    kernels remain, "float" when nothing is quantized. `integer_compute_share` is the integer
    fraction of the heavy operators. The session is built as OrtRunner builds it (same disabled
    optimizers by default), so the evidence describes what the benchmark ran.
    """
    written = op_counts(path)
    with tempfile.TemporaryDirectory(prefix="optlib-ortopt-") as d:
        config = OrtConfig(providers=providers or ["CPUExecutionProvider"], optimized_model_path=str(Path(d) / "optimized.onnx"))
        if disabled_optimizers is not None:
            config.disabled_optimizers = list(disabled_optimizers)
        make_session(path, config)
        executed = op_counts(config.optimized_model_path)
    integer = {k: v for k, v in executed.items() if k in INTEGER_OPS}
    qdq = {k: v for k, v in executed.items() if k in QDQ_OPS}
    float_compute = {k: v for k, v in executed.items() if k in FLOAT_COMPUTE_OPS}
    n_int = sum(v for k, v in executed.items() if k in INTEGER_COMPUTE_OPS)
    n_float = sum(float_compute.values())
    if n_int:
        kernels = "mixed" if n_float else "integer"
    else:
        kernels = "fake-quant" if qdq else "float"
    return {"kernels": kernels, "integer_ops": integer, "qdq_ops": qdq, "float_compute_ops": float_compute,
            "integer_compute_share": n_int / (n_int + n_float) if n_int + n_float else 0.0,
            "ops_written": written, "ops_executed": executed}


def write_exclusion_list(nodes: list[str], path: str | Path, ranking: list[dict] | None = None) -> Path:
    """The nodes kept in FP32, in the form onnxruntime's quantize_static takes (nodes_to_exclude)."""
    return write_json_atomic({"nodes_to_exclude": list(nodes), "ranking": ranking or []}, Path(path))


def read_exclusion_list(path: str | Path) -> list[str]:
    return list(json.loads(Path(path).read_text())["nodes_to_exclude"])


def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(|ref|^2 / |ref - cand|^2)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = ref - np.asarray(candidate, dtype=np.float64)
    n2 = float((noise ** 2).sum())
    return float("inf") if n2 == 0 else float(10 * np.log10((ref ** 2).sum() / n2))


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(candidate, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))



def kernels_of(evidence: dict) -> Kernels:
    """The record's kernels field from execution_evidence(...)."""
    return Kernels(evidence["kernels"], evidence["integer_compute_share"],
                   "integer fraction of the conv/gemm/matmul operators ONNX Runtime executes", evidence)


# --- the configurations chapter 04 measures ------------------------------------------------------

# The format alternatives measured next to the main configuration (quant.compare_formats).
FORMAT_ALTERNATIVES = ({"per_channel": False}, {"quant_format": "QOperator"}, {"activation_type": "int8"})


def format_alternatives(main: StaticQuantConfig) -> list[StaticQuantConfig]:
    """The FORMAT_ALTERNATIVES of `main` that differ from it (each changes one setting)."""
    alts = [dataclasses.replace(main, **alt) for alt in FORMAT_ALTERNATIVES]
    return [a for a in alts if a != main]


@dataclass
class Fp32Graphs:
    """FP32 graphs pre-processed for quantization (ORT's quant_pre_process): the full model and,
    when it splits, the feature-extractor and head graphs, with the PyTorch parts they came from."""
    paths: dict[str, Path]  # part -> .onnx
    parts: tuple[nn.Module, nn.Module] | None
    out_dir: Path
    export_seconds: float

    def calibration_inputs(self, calibration: torch.Tensor) -> dict[str, np.ndarray]:
        """What each graph sees during calibration: images for the model and the features graph,
        the features of those images for the head graph."""
        x = {"model": calibration.numpy()}
        if self.parts is not None and "features" in self.paths:
            with torch.no_grad():
                x.update(features=calibration.numpy(), head=self.parts[0](calibration).numpy())
        return x


def fp32_graphs(model: nn.Module, sample: torch.Tensor, out_dir: str | Path, config: ExportConfig) -> Fp32Graphs:
    """Export the model (and its split) and pre-process every graph for quantization."""
    out_dir = Path(out_dir)
    exports, parts = export_split(model, sample, out_dir, config, "{part}.fp32.onnx")
    paths = {part: preprocess_model(e.path, out_dir / f"{part}.fp32.pre.onnx") for part, e in exports.items()}
    return Fp32Graphs(paths, parts, out_dir, sum(e.seconds for e in exports.values()))


@dataclass
class Calibration:
    """Activation ranges of every graph of an Fp32Graphs, from one calibration set."""
    method: str
    ranges: dict  # part -> onnxruntime TensorsData
    seconds: float
    info: dict  # method, size, seed, source, first image paths


def calibrate_graphs(graphs: Fp32Graphs, calibration: torch.Tensor, method: str, info: dict | None = None) -> Calibration:
    """Calibrate each graph of `graphs` on what it sees (Fp32Graphs.calibration_inputs)."""
    t0 = time.perf_counter()
    inputs = graphs.calibration_inputs(calibration)
    ranges = {part: calibrate(path, inputs[part], method) for part, path in graphs.paths.items()}
    seconds = time.perf_counter() - t0
    return Calibration(method, ranges, seconds, {"method": method, "size": len(calibration), "seconds": seconds,
                                                  **(info or {})})


def int8_runner(paths: dict[str, Path], name: str, spec: PreprocessSpec, config: OrtConfig,
                one_time_cost_seconds: dict | None = None, **details) -> OrtRunner:
    """An ONNX Runtime runner over quantized graphs (split when features and head are given),
    described with its size, the kernels it really executes and its one-time costs."""
    r = OrtRunner(paths["model"], spec, name=name, config=config, precision="int8", technique="quantization",
                  features_path=paths.get("features"), head_path=paths.get("head"))
    evidence = execution_evidence(paths["model"], config.providers, config.disabled_optimizers)
    return r.annotate(size_bytes=onnx_size_bytes(paths["model"]), kernels=kernels_of(evidence),
                      one_time_cost_seconds=one_time_cost_seconds, **details)


def static_runner(graphs: Fp32Graphs, calibration: Calibration, config: StaticQuantConfig, spec: PreprocessSpec,
                  ort_config: OrtConfig, name: str | None = None, split: bool = True, **details) -> OrtRunner:
    """Static INT8 of the graphs with `calibration`'s ranges; `split` quantizes the stage graphs too
    (per-stage timing), else only the full graph. Named onnxruntime-int8-static-<config.label()>."""
    name = name or f"onnxruntime-int8-static-{config.label()}"
    t0 = time.perf_counter()
    parts = graphs.paths if split else {"model": graphs.paths["model"]}
    paths = {part: quantize_static(p, graphs.out_dir / f"{part}.{name}.onnx", calibration.ranges[part], config)
             for part, p in parts.items()}
    costs = {"export": graphs.export_seconds, "calibration": calibration.seconds,
             "quantization": time.perf_counter() - t0}
    return int8_runner(paths, name, spec, ort_config, costs,
                       quantization={"mode": "static", **dataclasses.asdict(config)}, calibration=calibration.info,
                       **details)


def dynamic_runner(graphs: Fp32Graphs, spec: PreprocessSpec, ort_config: OrtConfig) -> OrtRunner:
    """Dynamic INT8 of every graph: weights quantized offline, activations per call."""
    t0 = time.perf_counter()
    paths = {part: quantize_dynamic_graph(p, graphs.out_dir / f"{part}.dynamic.onnx") for part, p in graphs.paths.items()}
    return int8_runner(paths, "onnxruntime-int8-dynamic", spec, ort_config,
                       {"export": graphs.export_seconds, "quantization": time.perf_counter() - t0},
                       quantization={"mode": "dynamic", "weights": "int8"})


def fp32_runner(graphs: Fp32Graphs, spec: PreprocessSpec, config: OrtConfig, name: str = "onnxruntime-fp32") -> OrtRunner:
    """ONNX Runtime FP32 over the same pre-processed graphs the INT8 runners start from."""
    r = OrtRunner(graphs.paths["model"], spec, name=name, config=config,
                  features_path=graphs.paths.get("features"), head_path=graphs.paths.get("head"))
    return r.annotate(size_bytes=onnx_size_bytes(graphs.paths["model"]),
                      one_time_cost_seconds={"export": graphs.export_seconds})
