"""INT8 studies over ONNX Runtime static quantization: how much the calibration matters (method x
calibration-set size x seed), which layers are sensitive (each quantized alone), and the exclusion
lists that keep the most sensitive ones in FP32."""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from ..backends.base import evaluate
from ..backends.onnxruntime import OrtConfig, OrtRunner
from ..measurement.metrics import fidelity
from ..workload.data import Dataset, PreprocessSpec, calibration_set, preprocess
from ..workload.outputs import Outputs
from .int8_onnx import (Calibration, Fp32Graphs, StaticQuantConfig, calibrate, cosine, quantizable_nodes,
                        quantize_static, ranges_summary, sqnr_db, static_runner, write_exclusion_list)


def _logits(path, spec: PreprocessSpec, ort_config: OrtConfig, images, eval_batch_size: int) -> np.ndarray:
    return evaluate(OrtRunner(path, spec, name="study", config=ort_config), images, eval_batch_size)


def calibration_study(graphs: Fp32Graphs, dataset: Dataset, spec: PreprocessSpec, config: StaticQuantConfig,
                      ort_config: OrtConfig, reference_logits: np.ndarray, methods: list[str], sizes: list[int],
                      seeds: list[int], eval_batch_size: int = 64, outputs: Outputs | None = None) -> pd.DataFrame:
    """Quantize the full graph from fresh calibration draws (training side only) for every method x
    size x seed, and compare each with the reference on every evaluated image.

    Returns one row per point: method, size, seed, accuracy_change, flips (decisions as `outputs`
    makes them), max_abs_diff, sqnr_db (logits against the reference) and mean_range_width (of the
    calibrated activation ranges).
    """
    rows = []
    for method in methods:
        for size in sizes:
            for seed in seeds:
                images, _ = calibration_set(dataset, size, seed)
                ranges = calibrate(graphs.paths["model"], preprocess(images, spec).numpy(), method)
                path = quantize_static(graphs.paths["model"], graphs.out_dir / "study.onnx", ranges,
                                       dataclasses.replace(config, method=method))
                lg = _logits(path, spec, ort_config, dataset.test.images, eval_batch_size)
                f = fidelity(lg, reference_logits, dataset.test.labels, "reference", outputs)
                widths = [hi - lo for lo, hi in ranges_summary(ranges).values()]
                rows.append({"method": method, "size": len(images), "seed": seed,
                             "accuracy_change": f.accuracy_change, "flips": f.flips, "max_abs_diff": f.max_abs_diff,
                             "sqnr_db": sqnr_db(reference_logits, lg), "mean_range_width": float(np.mean(widths))})
    return pd.DataFrame(rows)


def range_widths(calibrations: dict[str, Calibration]) -> pd.DataFrame:
    """Mean width of the full graph's calibrated activation ranges per method, over the tensors
    every method calibrated: different widths show the methods really differ."""
    summaries = {m: ranges_summary(c.ranges["model"]) for m, c in calibrations.items()}
    common = sorted(set.intersection(*(set(v) for v in summaries.values()))) if summaries else []
    return pd.DataFrame({m: {"mean_range_width": float(np.mean([s[t][1] - s[t][0] for t in common])),
                             "tensors": len(common)} for m, s in summaries.items()}).T


def layer_sensitivity(graphs: Fp32Graphs, calibration: Calibration, config: StaticQuantConfig,
                      spec: PreprocessSpec, ort_config: OrtConfig, images: list[np.ndarray], labels: np.ndarray,
                      reference_logits: np.ndarray, eval_batch_size: int = 64,
                      outputs: Outputs | None = None, max_images: int | None = None) -> pd.DataFrame:
    """Each Conv/Gemm/MatMul of the full graph quantized alone (the rest FP32, the same ranges):
    the error it adds at the logits, on the first `max_images` images (None: all; the ranking needs
    far fewer than an accuracy verdict). Rows sorted worst first: node, sqnr_db, cosine,
    accuracy_change, flips, images."""
    n = len(images) if max_images is None else min(max_images, len(images))
    images, labels, reference_logits = images[:n], labels[:n], reference_logits[:n]
    rows = []
    for node in quantizable_nodes(graphs.paths["model"]):
        path = quantize_static(graphs.paths["model"], graphs.out_dir / "sensitivity.onnx", calibration.ranges["model"],
                               dataclasses.replace(config, nodes_to_quantize=[node]))
        lg = _logits(path, spec, ort_config, images, eval_batch_size)
        f = fidelity(lg, reference_logits, labels, "reference", outputs)
        rows.append({"node": node, "sqnr_db": sqnr_db(reference_logits, lg), "cosine": cosine(reference_logits, lg),
                     "accuracy_change": f.accuracy_change, "flips": f.flips, "images": n})
    return pd.DataFrame(rows).sort_values("sqnr_db", kind="stable").reset_index(drop=True)


def exclusion_runners(graphs: Fp32Graphs, calibration: Calibration, config: StaticQuantConfig,
                      sensitivity: pd.DataFrame, top_k: list[int], spec: PreprocessSpec,
                      ort_config: OrtConfig) -> list[OrtRunner]:
    """For each k, the full graph quantized with the k most sensitive layers kept in FP32; the list is
    written to exclude_top<k>.json beside the graphs (onnxruntime's nodes_to_exclude form)."""
    runners = []
    ranking = sensitivity.to_dict(orient="records")
    for k in top_k:
        nodes = sensitivity["node"].head(k).tolist()
        listing = write_exclusion_list(nodes, graphs.out_dir / f"exclude_top{k}.json", ranking)
        runners.append(static_runner(graphs, calibration, dataclasses.replace(config, nodes_to_exclude=nodes), spec,
                                     ort_config, name=f"onnxruntime-int8-static-{config.label()}-excl{k}", split=False,
                                     exclusion_list=str(listing)))
    return runners
