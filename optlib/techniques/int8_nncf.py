"""INT8 post-training quantization with NNCF for OpenVINO: an FP32 ONNX graph in, an INT8 IR out.

`nncf.quantize` inserts FakeQuantize nodes from statistics collected on the calibration images
(chapter 04's, the same ones ONNX Runtime's static INT8 calibrates on) and applies its bias
correction; OpenVINO's CPU plugin then fuses them into integer convolutions, which
backends.openvino.kernels_of reads back from the compiled model.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..backends.openvino import OvConfig, OvRunner, save_ir, unasked_telemetry_off
from ..core.choices import NNCF_PRESETS, check_choice
from ..workload.data import PreprocessSpec


def quantize(onnx_path: str | Path, calibration: np.ndarray, xml_path: str | Path, preset: str = "performance",
             fast_bias_correction: bool = True) -> dict:
    """Quantize the FP32 ONNX graph on `calibration` (N, C, H, W float32, every image used) and
    save the INT8 IR at `xml_path` with FP32 scales; returns what was done (recorded)."""
    unasked_telemetry_off()  # before nncf's import makes its telemetry object
    import nncf
    import openvino as ov

    check_choice("nncf preset", preset, NNCF_PRESETS)
    nncf.set_log_level(logging.ERROR)  # NNCF's own logger only; its statistics progress bars are kept quiet
    t0 = time.perf_counter()
    model = ov.convert_model(str(onnx_path))
    items = [np.ascontiguousarray(calibration[i:i + 1], dtype=np.float32) for i in range(len(calibration))]
    quantized = nncf.quantize(model, nncf.Dataset(items), preset=getattr(nncf.QuantizationPreset, preset.upper()),
                              subset_size=len(items), fast_bias_correction=fast_bias_correction)
    save_ir(quantized, xml_path)
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())
    return {"method": "nncf.quantize", "nncf": nncf.__version__, "preset": preset, "subset_size": len(items),
            "fast_bias_correction": fast_bias_correction, "fake_quantize_nodes": int(fake_quantize),
            "seconds": time.perf_counter() - t0}


def runner(onnx_path: str | Path, calibration: np.ndarray, xml_path: str | Path, spec: PreprocessSpec, threads: int,
           name: str = "openvino-int8-nncf", calibration_info: dict | None = None, preset: str = "performance",
           one_time_cost_seconds: dict | None = None, **details) -> OvRunner:
    """The NNCF INT8 IR of the FP32 ONNX graph, compiled for the CPU (precision hint f32: the
    integer arithmetic comes from the graph), described with what NNCF did and what ran."""
    info = quantize(onnx_path, calibration, xml_path, preset)
    r = OvRunner(xml_path, spec, name=name, config=OvConfig(threads=threads, precision="f32"),
                 technique="quantization", precision="int8")
    return r.annotate(one_time_cost_seconds={**(one_time_cost_seconds or {}), "calibration and quantization": info["seconds"],
                                             "compile": r.compile_seconds},
                      quantization=info, calibration=calibration_info or {}, **details)
