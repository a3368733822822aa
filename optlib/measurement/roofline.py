"""How far a configuration is from what this machine's matrix units can do.

`gemm_peaks` times a short square matrix product per number type in the run that uses it: FP32
and BF16 through torch.mm (oneDNN / MKL, the kernels eager PyTorch and inductor call), INT8 as
ONNX Runtime's MatMulInteger (u8 x s8 -> s32, the MLAS kernels the static INT8 graphs run). The
peak is the best of several timed products after a warm-up, in operations per second (2 per
multiply-add). `achieved` turns a configuration's multiply-adds and forward latency into the
same unit, so the final round's `share_of_peak` (results.final_round.roofline_table) says which
share of the peak of its number type it reaches: a batch-1
convolution network is usually far from it (small matrices, memory-bound layers, per-operator
overheads), and the column shows by how much.
"""
from __future__ import annotations

import time

import numpy as np
import torch

DTYPES = ("fp32", "bf16", "int8")


def _best_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _torch_mm(dtype: torch.dtype, n: int):
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    out = torch.empty(n, n, dtype=dtype)
    return lambda: torch.mm(a, b, out=out)


def _ort_int8_mm(n: int, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    # 7-bit weights (ONNX Runtime's reduce_range): on x86 without VNNI (AVX2, as on 2026-12-02) the
    # u8 x s8 kernel adds pairs of products in saturating 16-bit arithmetic, and full 8-bit weights
    # gave a wrong product there; the time is the same
    b = numpy_helper.from_array(rng.integers(-64, 64, (n, n), dtype=np.int8), "b")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_gemm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, (n, n))],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, (n, n))], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 256, (n, n), dtype=np.uint8)
    return (lambda: sess.run(None, {"a": a})), a, numpy_helper.to_array(b)


def gemm_peaks(threads: list[int], size: int = 1024, repeats: int = 5) -> dict[str, dict[int, float]]:
    """{number type: {threads: peak operations per second}} of a size x size x size product, for
    each thread count (torch's intra-op threads are restored afterwards)."""
    before = torch.get_num_threads()
    peaks: dict[str, dict[int, float]] = {d: {} for d in DTYPES}
    ops = 2.0 * size ** 3
    try:
        for t in sorted(set(threads)):
            torch.set_num_threads(t)
            peaks["fp32"][t] = ops / _best_seconds(_torch_mm(torch.float32, size), repeats)
            peaks["bf16"][t] = ops / _best_seconds(_torch_mm(torch.bfloat16, size), repeats)
            peaks["int8"][t] = ops / _best_seconds(_ort_int8_mm(size, t)[0], repeats)
    finally:
        torch.set_num_threads(before)
    return peaks


def number_type(precision: str) -> str:
    """The peak a configuration is held against: its own number type where there is a measured
    peak for it, FP32 otherwise (FP16 on a CPU runs FP32 arithmetic or emulation)."""
    return precision if precision in DTYPES else "fp32"


def achieved(macs: float, forward_ms: float) -> float:
    """Operations per second (2 per multiply-add) of one forward pass of `macs` in `forward_ms`."""
    return 2.0 * macs / (forward_ms / 1e3)
