"""Chapter 07's experiment: the TensorRT-ready INT8 graph checked and run on the CPU, then every GPU
configuration built and measured where a GPU and TensorRT exist, or recorded as skipped with the
exact reason (techniques.tensorrt)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.onnxruntime import OrtConfig, OrtRunner
from ..backends.tensorrt import TensorRTRunner
from ..results.values import Artifact
from ..workload.data import CalibrationError, calibration_set, preprocess
from ..techniques import int8_onnx as qo
from ..techniques import tensorrt as trt_tools
from ..techniques.onnx_export import ExportConfig, onnx_size_bytes
from ..techniques.precision import fp16_graph

TECHNIQUE = "tensorrt"


@dataclass
class Setup:
    graphs: qo.Fp32Graphs
    qdq: OrtRunner | None  # the TensorRT-ready Q/DQ graph in ONNX Runtime on this machine's CPU
    report: trt_tools.QdqReport | None
    shapes: dict
    availability: dict
    skipped: dict[str, str] = field(default_factory=dict)


def prepare(ch) -> Setup:
    """Export the FP32 graphs (with the stage split), quantize them for TensorRT (symmetric signed
    INT8 Q/DQ, 04's calibration method on the training side) and check the result node by node."""
    P = ch.params
    graphs = qo.fp32_graphs(ch.model, ch.sample(), ch.artifacts_dir, ExportConfig.from_params(P))
    shapes = trt_tools.profile_shapes(P.bench.batch_sizes, P.data.image_size, given=P.tensorrt.profile_batches)
    out = Setup(graphs, None, None, shapes, trt_tools.availability(P.device))
    try:
        images, image_paths = calibration_set(ch.dataset, P.quant.calibration_size, P.quant.seed)
    except CalibrationError as e:
        out.skipped["onnxruntime-int8-trt-qdq"] = str(e)
        ch.skip("onnxruntime-int8-trt-qdq", "quantization", "onnxruntime", "int8", str(e))
        return out
    calibration = qo.calibrate_graphs(graphs, preprocess(images, ch.spec), P.quant.method,
                                      {"size": len(images), "seed": P.quant.seed, "first_images": image_paths[:5]})
    config = trt_tools.trt_static_config(P.quant.method)
    out.qdq = qo.static_runner(graphs, calibration, config, ch.spec, OrtConfig.from_params(P),
                               name="onnxruntime-int8-trt-qdq")
    out.report = trt_tools.qdq_report(out.qdq.artifact.files["model"])
    out.qdq.annotate(tensorrt_qdq={**dataclasses.asdict(out.report), "compatible": out.report.compatible,
                                   "coverage": out.report.coverage, "problems": out.report.problems()})
    return out


def gpu_runners(ch, s: Setup) -> list:
    """Every GPU configuration of `tensorrt.*`: built and returned where it can run, else a
    skipped record with the reason (no CUDA device; a library not importable; its version)."""
    P, T = ch.params, ch.params.tensorrt
    a = s.availability
    runners = []

    def skip(name, technique, backend, precision, reason):
        s.skipped[name] = reason
        ch.skip(name, technique, backend, precision, reason)

    graphs = {"fp32": dict(s.graphs.paths)}  # per precision: {model, features, head: ONNX path}
    if s.qdq is not None:
        graphs["int8"] = dict(s.qdq.artifact.files)
    for precision in T.precisions:
        name = f"tensorrt-{precision}"
        reason = a["tensorrt"]
        if reason is None and precision == "int8" and s.report is not None and not s.report.compatible:
            reason = "the Q/DQ graph is not what TensorRT accepts: " + "; ".join(s.report.problems())
        if reason is None and precision == "bf16":
            reason = ("no BF16 ONNX graph is produced yet (FP16 is: onnxruntime.transformers.float16); TensorRT takes "
                      "the precision from the graph")
        if reason is None and precision == "int8" and "int8" not in graphs:
            reason = s.skipped.get("onnxruntime-int8-trt-qdq", "no INT8 graph")
        if reason is None:
            # TensorRT's builder is native code that can crash: built and called once in a child first
            runner = ch.attempt(name, TECHNIQUE, "tensorrt", precision, engine_runner, T, ch.spec, ch.artifacts_dir,
                                s.graphs.out_dir, s.shapes, s.availability["gpu"] or "", precision, graphs, isolate=True)
            if runner is not None:
                runners.append(runner)
            continue
        skip(name, TECHNIQUE, "tensorrt", precision, reason)
    if T.torch_tensorrt:
        for precision in [p for p in T.precisions if p in ("fp32", "fp16")]:
            name = f"torch-tensorrt-{precision}"
            if a["torch_tensorrt"] is None:
                runner = ch.attempt(name, TECHNIQUE, "torch-tensorrt", precision, trt_tools.torch_tensorrt_runner,
                                    ch.model, ch.spec, s.shapes, precision, ch.artifacts_dir)
                runners += [runner] if runner is not None else []
            else:
                skip(name, TECHNIQUE, "torch-tensorrt", precision, a["torch_tensorrt"])
    if T.onnxruntime_gpu:
        import onnxruntime as ort

        available = ort.get_available_providers()
        for provider, name in (("CUDAExecutionProvider", "onnxruntime-cuda-fp32"),
                               ("TensorrtExecutionProvider", "onnxruntime-tensorrt-fp32")):
            reason = a["cuda"] or (None if provider in available else
                                   f"this onnxruntime {ort.__version__} build has no {provider} (available: "
                                   f"{available}); install onnxruntime-gpu (the cuda extra)")
            if reason is not None:
                skip(name, "runtime", "onnxruntime", "fp32", reason)
                continue
            options = {}
            if provider == "TensorrtExecutionProvider":
                options[provider] = trt_tools.ort_tensorrt_options(
                    s.graphs.paths["model"], s.shapes, ch.artifacts_dir / "ort-trt-cache", int(T.workspace_gib * 2 ** 30),
                    T.optimization_level)
            config = OrtConfig.from_params(P, providers=[provider, "CPUExecutionProvider"], provider_options=options)
            r = OrtRunner(s.graphs.paths["model"], ch.spec, name=name, config=config,
                          features_path=s.graphs.paths.get("features"), head_path=s.graphs.paths.get("head"))
            runners.append(r.annotate(size_bytes=onnx_size_bytes(s.graphs.paths["model"])))
    return runners


def engine_runner(T, spec, artifacts_dir, graphs_dir, shapes: dict, gpu: str, precision: str, graphs: dict):
    """Engines of the full graph and of its two stages (features, head: per-stage timing like the
    other backends), each with the image profile's batch range. Every argument pickles (params
    section, spec, paths, dicts): Chapter.attempt(isolate=True) builds it in a child first."""
    sources = graphs["int8"] if precision == "int8" else graphs["fp32"]
    if precision == "fp16":
        sources = {part: fp16_graph(p, Path(graphs_dir) / f"{part}.fp16.onnx") for part, p in sources.items()}
    cache = T.timing_cache or str(Path(artifacts_dir) / "timing.cache")
    builds = {part: trt_tools.build_engine(
        p, Path(artifacts_dir) / "engines", precision, shapes=trt_tools.graph_shapes(p, shapes),
        workspace_bytes=int(T.workspace_gib * 2 ** 30), optimization_level=T.optimization_level, timing_cache=cache,
        gpu=gpu, part=part) for part, p in sources.items()}
    files = {"engine" if part == "model" else part: str(b.path) for part, b in builds.items()}
    runner = TensorRTRunner(files["engine"], spec, f"tensorrt-{precision}", precision,
                            features_path=files.get("features"), head_path=files.get("head"))
    model = builds["model"]
    artifact = Artifact("tensorrt", files, {"precision": precision, "key": model.key, "tensorrt": model.tensorrt},
                        spec.to_dict())
    return runner.annotate(size_bytes=model.size_bytes, artifact=artifact, one_time_cost_seconds={
        "engine build": sum(b.seconds for b in builds.values())}, tensorrt={
        part: trt_tools.describe_build(b) for part, b in builds.items()}, onnx_source=str(sources["model"]))


def findings(records: dict, s: Setup) -> str:
    """The chapter's discussion, from the Q/DQ check, the CPU measurement and the skip reasons."""
    lines = []
    if s.report is not None:
        r = s.report
        lines.append(f"The TensorRT-ready INT8 graph has {r.quantize_nodes} QuantizeLinear and {r.dequantize_nodes} "
                     f"DequantizeLinear nodes; {len(r.quantized_compute)} of {r.compute_ops} Conv/Gemm/MatMul take both "
                     f"inputs dequantized ({r.coverage:.0%}); "
                     + ("every zero point is INT8 0 and every scale positive: **TensorRT-compatible**."
                        if r.compatible else "**not TensorRT-compatible**: " + "; ".join(r.problems()) + "."))
    q = records.get("onnxruntime-int8-trt-qdq")
    if q is not None and q.fidelity is not None:
        lines.append(f"On this CPU, ONNX Runtime runs that graph with {q.kernels.label} kernels"
                     f"{f' (integer share {q.kernels.share:.0%})' if q.kernels.share is not None else ''}: accuracy "
                     f"change against eager FP32 {q.fidelity.describe_change()}; "
                     f"speed {q.speedup('onnxruntime-fp32')} of ONNX Runtime FP32 here. Signed activations leave part "
                     "of the graph in float on x86 (chapter 04): this CPU timing says nothing about TensorRT's speed.")
    lines += [f"`{n}` skipped: {why}" for n, why in s.skipped.items()]
    return "\n\n".join(lines)
