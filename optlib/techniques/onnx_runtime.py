"""ONNX Runtime as a technique (chapter 02): the exported FP32 graphs run at the configured graph
optimisation level, and at every other level for comparison."""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..backends.onnxruntime import OrtConfig, OrtRunner, make_session
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
        runners.append(r.annotate(size_bytes=onnx_size_bytes(graphs.paths["model"]),
                                  one_time_cost_seconds={"export": graphs.export_seconds,
                                                         "session creation": time.perf_counter() - t0},
                                  onnx=graphs.info()))
    return runners


def op_profile(path: str | Path, config: OrtConfig, x: np.ndarray, calls: int = 100, warmup: int = 10) -> pd.DataFrame:
    """Where one call's time goes in ONNX Runtime, from its own profiler: microseconds per call of
    each operator type as executed (after graph optimisation), its share of the run, and the rows
    `all operators` and `outside operators` (the session's run time not spent in any operator:
    input/output handling, scheduling), over `calls` runs on `x` after `warmup`."""
    with tempfile.TemporaryDirectory(prefix="optlib-prof-") as d:
        sess, _ = make_session(path, dataclasses.replace(config, profile_prefix=str(Path(d) / "prof")))
        name = sess.get_inputs()[0].name
        for _ in range(warmup + calls):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-calls:]
    start = runs[0]["ts"] if runs else 0
    per_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= start:
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + e["dur"]
    n = max(len(runs), 1)
    run_us = sum(e["dur"] for e in runs) / n
    rows = {op: us / n for op, us in per_op.items()}
    nodes = sum(rows.values())
    table = pd.DataFrame({"us_per_call": pd.Series(rows)}).sort_values("us_per_call", ascending=False)
    table.loc["all operators"] = nodes
    table.loc["outside operators"] = max(run_us - nodes, 0.0)
    table["share_of_run"] = table["us_per_call"] / run_us if run_us else np.nan
    return table
