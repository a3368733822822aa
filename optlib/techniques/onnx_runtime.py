"""ONNX Runtime as a technique (chapter 02): the exported FP32 graphs run at the configured graph
optimisation level, and at every other level for comparison."""
from __future__ import annotations

import time

from ..backends.onnxruntime import OrtConfig, OrtRunner
from ..core.choices import GRAPH_OPTIMIZATION_LEVELS
from ..core.params import Params
from ..workload.data import PreprocessSpec
from .onnx_export import Graphs, onnx_size_bytes


def ort_runners(graphs: Graphs, spec: PreprocessSpec, params: Params, artifacts_dir=None) -> list[OrtRunner]:
    """`onnxruntime-fp32` at onnx.graph_optimization and, with onnx.compare_optimization_levels,
    `onnxruntime-fp32-opt-<level>` at each other level. Session creation and export are recorded as
    one-time costs; with onnx.save_optimized_graph the graph after ORT's optimisations is saved in
    `artifacts_dir`."""
    chosen = params.onnx.graph_optimization
    levels = [chosen] + ([lv for lv in GRAPH_OPTIMIZATION_LEVELS if lv != chosen]
                         if params.onnx.compare_optimization_levels else [])
    runners = []
    for level in levels:
        name = "onnxruntime-fp32" if level == chosen else f"onnxruntime-fp32-opt-{level}"
        saved = (str(artifacts_dir / f"model.ort-{level}.onnx")
                 if params.onnx.save_optimized_graph and artifacts_dir is not None else None)
        config = OrtConfig.from_params(params, graph_optimization=level, optimized_model_path=saved)
        t0 = time.perf_counter()
        r = OrtRunner(graphs.paths["model"], spec, name=name, config=config, features_path=graphs.paths.get("features"),
                      head_path=graphs.paths.get("head"))
        runners.append(r.describe(size_bytes=onnx_size_bytes(graphs.paths["model"]),
                                  one_time_cost_seconds={"export": graphs.export_seconds,
                                                         "session creation": time.perf_counter() - t0},
                                  onnx=graphs.info()))
    return runners
