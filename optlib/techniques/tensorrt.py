"""TensorRT (chapter 07): engines from ONNX graphs, torch-tensorrt, and the parts of that path a
CPU can check.

What runs everywhere (and is tested here): the optimisation-profile shapes, the engine-cache key,
the choice of build path by TensorRT major version, the reasons a GPU configuration cannot run, and
the INT8 graph TensorRT needs: explicitly quantized Q/DQ with symmetric signed INT8 (zero points 0),
made by ONNX Runtime's quantizer from 04's calibration set (`TRT_INT8`) and checked node by node
(`qdq_report`); ONNX Runtime runs that same graph on the CPU, so its accuracy against FP32 is known
before any GPU sees it.

Also tested here: `graph_shapes` (the image profile's batch range on a stage graph's own input) and
`ort_tensorrt_options` (ONNX Runtime's TensorRT provider options).

What is written against NVIDIA's documentation and has never executed on this project's machines
(no GPU, and TensorRT cannot be installed on them): `build_engine` (OnnxParser, optimisation profile,
workspace pool, builder optimisation level, timing cache, strongly typed network),
the runner in backends/tensorrt.py (deserialize, set_input_shape / set_tensor_address /
execute_async_v3 on torch's current stream) and `torch_tensorrt_runner`.

Precision across versions: TensorRT 11 networks are always strongly typed (its builder precision
flags and implicit INT8 calibrators are gone); TensorRT 10 still has the flags but accepts a
strongly typed network (NetworkDefinitionCreationFlag.STRONGLY_TYPED). Both paths here take the
precision from the graph: an FP16 ONNX graph for FP16, a Q/DQ graph for INT8.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.io import atomic_write, write_json_atomic
from ..results.values import Artifact
from ..workload.data import PreprocessSpec
from .int8_onnx import StaticQuantConfig

# ONNX Runtime static quantization as TensorRT takes it: QDQ, signed INT8 activations and weights,
# both symmetric (StaticQuantConfig asks ORT for ActivationSymmetric with int8 activations; INT8
# weights are symmetric by default), per-channel weights, biases left float (ORT's default INT32
# bias behind DequantizeLinear is a Q/DQ type TensorRT does not take: qdq_report flags it).
TRT_INT8 = dict(activation_type="int8", weight_type="int8", quant_format="QDQ", per_channel=True, quantize_bias=False)
COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
MIN_MAJOR = 10


def trt_static_config(method: str = "minmax") -> StaticQuantConfig:
    return StaticQuantConfig(method=method, **TRT_INT8)


# --- what runs here ---------------------------------------------------------------------------

def profile_shapes(batch_sizes: list[int], image_size: int, channels: int = 3,
                   given: list[int] | None = None) -> dict[str, tuple[int, ...]]:
    """Optimisation-profile shapes of the image input: min / opt / max batch from `given` (three
    batch sizes, tensorrt.profile_batches) or from the benchmark's batch sizes (min, the most
    common serving size 1 if measured else min, max)."""
    if given is not None:
        lo, opt, hi = given
    else:
        lo, hi = min(batch_sizes), max(batch_sizes)
        opt = 1 if 1 in batch_sizes else lo
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"'tensorrt.profile_batches' must be min <= opt <= max, all >= 1, got {[lo, opt, hi]}")
    return {k: (b, channels, image_size, image_size) for k, b in (("min", lo), ("opt", opt), ("max", hi))}


def graph_shapes(onnx_path: str | Path, shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The profile `shapes` (of the image input) carried over to another graph's first input: the
    same min / opt / max batch, the graph's own fixed dimensions after it (a head graph's input is
    (batch, features)). ValueError if a dimension after the batch is not fixed."""
    first = _first_input(onnx_path)
    dims = first.type.tensor_type.shape.dim[1:]
    if not all(d.HasField("dim_value") for d in dims):
        raise ValueError(f"{onnx_path}: input '{first.name}' has a dynamic dimension after the batch; an optimisation "
                         "profile needs it fixed (export with a fixed image size)")
    rest = tuple(d.dim_value for d in dims)
    return {k: (v[0], *rest) for k, v in shapes.items()}


def _first_input(onnx_path: str | Path):
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return next(i for i in graph.input if i.name not in initializers)


def ort_tensorrt_options(onnx_path: str | Path, shapes: dict[str, tuple[int, ...]], cache_dir: str | Path,
                         workspace_bytes: int, optimization_level: int, fp16: bool = False) -> dict[str, str]:
    """ONNX Runtime's TensorRT execution provider options: engine and timing caches under
    `cache_dir` (a second session with the same graph and settings loads the engine instead of
    building it), the workspace limit, the builder optimisation level and the same explicit
    optimisation profile as the engines built here ("name:NxCxHxW")."""
    name = _first_input(onnx_path).name

    def profile(k):
        return f"{name}:{'x'.join(str(d) for d in shapes[k])}"

    cache = str(cache_dir)
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache, "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache, "trt_max_workspace_size": str(int(workspace_bytes)),
            "trt_builder_optimization_level": str(int(optimization_level)), "trt_fp16_enable": str(bool(fp16)),
            "trt_profile_min_shapes": profile("min"), "trt_profile_opt_shapes": profile("opt"),
            "trt_profile_max_shapes": profile("max")}


def file_sha256(path: str | Path) -> str:
    """Of the graph and its external data files, in name order."""
    from .onnx_export import external_data_files

    h = hashlib.sha256()
    for p in [Path(path), *sorted(external_data_files(path))]:
        h.update(p.read_bytes())
    return h.hexdigest()


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu: str, precision: str, shapes: dict,
                     workspace_bytes: int, optimization_level: int) -> str:
    """An engine is reusable only for the same graph, TensorRT version, GPU, precision, profile and
    builder settings: the key hashes all of them."""
    payload = {"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu, "precision": precision,
               "shapes": {k: list(v) for k, v in sorted(shapes.items())}, "workspace": workspace_bytes,
               "optimization_level": optimization_level}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_path(version: str) -> str:
    """How the installed TensorRT gets its precision: `strongly-typed` (11+: always), `strongly-
    typed-flag` (10: the network creation flag), or ValueError below 10."""
    major = int(version.split(".")[0])
    if major >= 11:
        return "strongly-typed"
    if major == MIN_MAJOR:
        return "strongly-typed-flag"
    raise ValueError(f"TensorRT {version} is older than {MIN_MAJOR}: set_tensor_address/execute_async_v3 and strongly "
                     "typed networks need 10 or newer")


def availability(device: str) -> dict:
    """{"cuda": reason or None, "tensorrt": reason or None, "torch_tensorrt": ..., "versions", "gpu"}:
    every reason each GPU path cannot run here, the device's first (None: it can)."""
    import torch

    from ..core.env import gpu_name

    out: dict = {"versions": {}, "gpu": gpu_name()}
    if device != "cuda":
        out["cuda"] = "the target's device is cpu (TensorRT builds and runs engines on a CUDA GPU; run the cuda target)"
    elif not torch.cuda.is_available():
        out["cuda"] = f"no CUDA device visible to torch {torch.__version__} (torch.cuda.is_available() is False)"
    else:
        out["cuda"] = None
    for mod in ("tensorrt", "torch_tensorrt"):
        reasons = [out["cuda"]] if out["cuda"] else []
        try:
            m = __import__(mod)
            out["versions"][mod] = getattr(m, "__version__", "?")
            if mod == "tensorrt":
                build_path(out["versions"][mod])
        except ImportError as e:
            reasons.append(f"`{mod}` is not importable ({e}); its wheels come from NVIDIA's index, not PyPI")
        except ValueError as e:  # a TensorRT older than this code supports
            reasons.append(str(e))
        out[mod] = "; and ".join(reasons) or None
    return out


@dataclass
class QdqReport:
    """How a Q/DQ graph is quantized, node by node, against what TensorRT accepts."""
    quantize_nodes: int
    dequantize_nodes: int
    compute_ops: int  # Conv / Gemm / MatMul / ConvTranspose
    quantized_compute: list[str]  # both data and weight inputs come from DequantizeLinear
    float_compute: list[str]  # some input does not
    not_int8: list[str]  # Q/DQ nodes whose zero point is missing or not INT8
    nonzero_zero_point: list[str]  # asymmetric: TensorRT needs zero points of 0
    bad_scale: list[str]  # scales that are not positive finite

    @property
    def compatible(self) -> bool:
        """Every Q/DQ node symmetric signed INT8, and at least one compute op quantized."""
        return not (self.not_int8 or self.nonzero_zero_point or self.bad_scale) and bool(self.quantized_compute)

    @property
    def coverage(self) -> float:
        return len(self.quantized_compute) / self.compute_ops if self.compute_ops else 0.0

    def problems(self) -> list[str]:
        out = []
        for key, what in (("not_int8", "zero point missing or not INT8"),
                          ("nonzero_zero_point", "zero point not 0 (asymmetric)"),
                          ("bad_scale", "scale not positive and finite")):
            nodes = getattr(self, key)
            if nodes:
                out.append(f"{len(nodes)} Q/DQ node(s) with {what}, e.g. {nodes[0]}")
        if not self.quantized_compute:
            out.append("no Conv/Gemm/MatMul has both inputs dequantized")
        return out


def qdq_report(path: str | Path) -> QdqReport:
    """Check an ONNX graph's explicit quantization the way TensorRT reads it: every
    QuantizeLinear / DequantizeLinear with an INT8 zero point of 0 and a positive scale, and which
    compute ops take both their data and weight from DequantizeLinear (quantized) or not (float)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant" and n.attribute
              and n.attribute[0].type == onnx.AttributeProto.TENSOR}
    producer = {o: n for n in g.node for o in n.output}

    def tensor(name):
        t = inits.get(name) or consts.get(name)
        return None if t is None else (t.data_type, numpy_helper.to_array(t))

    q = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    not_int8, nonzero, bad_scale = [], [], []
    for n in q:
        label = n.name or n.output[0]
        zp = tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or zp[0] != onnx.TensorProto.INT8:
            not_int8.append(label)
        elif np.any(zp[1] != 0):
            nonzero.append(label)
        scale = tensor(n.input[1])
        if scale is None or not np.all(np.isfinite(scale[1])) or np.any(scale[1] <= 0):
            bad_scale.append(label)

    def dequantized(name) -> bool:
        p = producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    compute = [n for n in g.node if n.op_type in COMPUTE_OPS]
    quantized = [n.name or n.output[0] for n in compute if all(dequantized(i) for i in n.input[:2])]
    floating = [n.name or n.output[0] for n in compute if not all(dequantized(i) for i in n.input[:2])]
    return QdqReport(sum(n.op_type == "QuantizeLinear" for n in q), sum(n.op_type == "DequantizeLinear" for n in q),
                     len(compute), quantized, floating, not_int8, nonzero, bad_scale)


# --- written against the documentation; never executed here -------------------------------------

@dataclass
class EngineBuild:
    path: Path
    key: str
    seconds: float
    size_bytes: int
    build_path: str
    tensorrt: str
    shapes: dict
    timing_cache: str | None = None
    details: dict = field(default_factory=dict)


def build_engine(onnx_path: str | Path, out_dir: str | Path, precision: str, shapes: dict, workspace_bytes: int,
                 optimization_level: int = 3, timing_cache: str | Path | None = None, gpu: str = "",
                 part: str = "model") -> EngineBuild:
    """Parse `onnx_path` (whose precision is in the graph), build a serialized engine with one
    optimisation profile for its input, save it under `out_dir/<precision>-<part>-<key>.engine`
    (reused when the key matches: `seconds` is then the build's, kept beside the engine, and
    details say it was reused, unless a child of this very process built it: chapter 07 builds in
    a child first, so that engine is this run's build), and reuse / update the timing cache file.
    The engine is written whole or not at all: a build killed midway leaves nothing to reuse."""
    import tensorrt as trt

    path_kind = build_path(trt.__version__)
    key = engine_cache_key(file_sha256(onnx_path), trt.__version__, gpu, precision, shapes, workspace_bytes,
                           optimization_level)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / f"{precision}-{part}-{key}.engine"
    base = dict(key=key, build_path=path_kind, tensorrt=trt.__version__, shapes=shapes,
                timing_cache=str(timing_cache) if timing_cache else None)
    built = engine_path.with_suffix(".build.json")  # the build's seconds and its builder's parent process
    if engine_path.is_file():
        info = json.loads(built.read_text()) if built.is_file() else {}
        ours = info.get("parent") is not None and info["parent"] == _process_id(os.getpid())  # pid + start time
        return EngineBuild(engine_path, seconds=info.get("seconds", 0.0), size_bytes=engine_path.stat().st_size,
                           details={"reused": not ours, **({"built_by": "a child of this process"} if ours else {})},
                           **base)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if path_kind == "strongly-typed-flag" else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors[:3]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    config.builder_optimization_level = int(optimization_level)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache:
        data = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, False)  # a cache from another TensorRT version is refused, not ignored
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise RuntimeError(f"TensorRT built no engine from {onnx_path} ({precision})")
    write_json_atomic({"seconds": seconds, "parent": _process_id(os.getppid())}, built)
    atomic_write(engine_path, lambda tmp: Path(tmp).write_bytes(bytes(plan)))
    if cache is not None:
        Path(timing_cache).write_bytes(bytes(cache.serialize()))
    return EngineBuild(engine_path, seconds=seconds, size_bytes=engine_path.stat().st_size, details={"reused": False},
                       **base)


def torch_tensorrt_runner(model, spec: PreprocessSpec, shapes: dict, precision: str, out_dir: str | Path,
                          name: str | None = None):
    """torch-tensorrt (dynamo) compile of the eager model with a dynamic batch, FP32 or FP16 (from a
    .half() copy: torch-tensorrt 2.14 types explicitly), saved as an exported program and reloaded."""
    import torch
    import torch_tensorrt

    from ..backends.pytorch import TorchRunner

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[precision]
    m = copy.deepcopy(model).to("cuda", dtype).eval()  # a copy: Module.to would move the chapter's own model
    inputs = [torch_tensorrt.Input(min_shape=shapes["min"], opt_shape=shapes["opt"], max_shape=shapes["max"],
                                   dtype=dtype)]
    t0 = time.perf_counter()
    compiled = torch_tensorrt.compile(m, ir="dynamo", inputs=inputs)
    seconds = time.perf_counter() - t0
    path = Path(out_dir) / f"torch-tensorrt-{precision}.ep"
    example = torch.randn(*shapes["opt"], dtype=dtype, device="cuda")
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example])
    reloaded = torch.export.load(str(path)).module()
    runner = TorchRunner(reloaded, spec, name=name or f"torch-tensorrt-{precision}", device="cuda", threads=1,
                         technique="tensorrt", input_dtype=dtype)
    runner.backend, runner.precision = "torch-tensorrt", precision
    artifact = Artifact("torch-tensorrt", {"program": str(path)}, {"precision": precision}, spec.to_dict())
    return runner.annotate(size_bytes=path.stat().st_size, artifact=artifact, one_time_cost_seconds={"compile": seconds},
                           torch_tensorrt={"version": torch_tensorrt.__version__, "shapes": {
                               k: list(v) for k, v in shapes.items()}})


def _process_id(pid: int) -> list | None:
    """A process named so that a reused pid cannot pass for it: its pid and its start time (clock
    ticks after boot, /proc/<pid>/stat's 22nd field); None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return [pid, int(stat.rsplit(")", 1)[1].split()[19])]  # fields after the command name start at the 3rd


def describe_build(b: EngineBuild) -> dict:
    d = asdict(b)
    d["path"] = str(b.path)
    d["shapes"] = {k: list(v) for k, v in b.shapes.items()}
    return d
