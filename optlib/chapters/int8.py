"""Chapter 04's discussion, written from the records of its run: the fastest INT8 configuration
within the accuracy budget (or why none is shown within it), OpenVINO's NNCF INT8 against ONNX
Runtime's static INT8, dynamic INT8, the kernels that really ran, the most and least sensitive
layers and what keeping the top-k in FP32 bought."""
from __future__ import annotations

import pandas as pd

from ..results import compare


def nncf_finding(records: dict, against: str | None) -> str | None:
    """The sentence on NNCF INT8 (`openvino-int8-nncf`) against ONNX Runtime's static INT8 of the
    same calibration images (`against`), from this run's records; None when either is absent."""
    o = records.get("openvino-int8-nncf")
    if o is None or not o.ok or against not in records or o.speedup(against) is None:
        return None
    return (f"OpenVINO INT8 (NNCF, the same {o.extra['quantization']['subset_size']} calibration images, "
            f"{o.kernels.label} kernels: {o.kernels.share:.0%} of conv/FC nodes in i8/u8): {o.latency.median:.3f} ms, "
            f"{o.speedup(against)} ONNX Runtime's `{against}` and {o.speedup('pytorch-fp32')} eager FP32 in this run; "
            f"accuracy change {o.fidelity.describe_change()}, verdict {o.verdict.label}.")


def findings(m, best: str | None, ties: list[str], budget: pd.DataFrame, int8_names: list[str],
             max_accuracy_drop: float, static_name: str | None, sensitivity: pd.DataFrame,
             exclude_top_k: list[int]) -> list[str]:
    """Chapter 04's findings as Markdown paragraphs. `m`: the chapter's measurement (records and
    latency samples); `best`, `ties`, `budget`: compare.budget_choice over `int8_names`;
    `static_name`: ONNX Runtime's main static INT8 configuration (None without calibration images);
    `sensitivity`: int8_studies.layer_sensitivity's table (empty when not run)."""
    R, lines = m.records, []
    if best:
        b = R[best]
        big = max(int(k) for k in b.throughput)
        lines.append(f"Within the budget of {max_accuracy_drop:.1%} accuracy (verdict **{b.verdict.label}**: {b.verdict.why}), "
                     f"the fastest INT8 configuration is **{best}** ({b.kernels.label} kernels): {b.latency.median:.3f} ms at "
                     f"batch {b.batch_size}, {b.speedup('pytorch-fp32')} eager FP32 and {b.speedup('onnxruntime-fp32')} ONNX "
                     f"Runtime FP32; at batch {big}, throughput {b.speedup('pytorch-fp32', 'throughput', big)} eager. Size "
                     f"{b.size_bytes / 1e6:.1f} MB against {R['pytorch-fp32'].size_bytes / 1e6:.1f} MB; accuracy change "
                     f"{b.fidelity.describe_change()}.")
        if b.fidelity.operating_point is not None:
            lines.append(f"Its operating point against FP32: {b.fidelity.operating_point.describe()}.")
        if ties:
            lines.append("Inside the budget and not distinguishable from it in batch-1 latency (paired ratio interval "
                         "contains 1): " + ", ".join(ties) + "; choose among them on accuracy or simplicity.")
    elif int8_names:
        lines.append(f"No INT8 configuration is shown within {max_accuracy_drop:.1%} by its evidence (verdicts: "
                     + ", ".join(f"{n} {v}" for n, v in budget["verdict"].items()) + "): see the budget table.")
    lines += [s for s in [nncf_finding(R, static_name)] if s]
    if "onnxruntime-int8-dynamic" in R and R["onnxruntime-int8-dynamic"].ok:
        lines.append(f"Dynamic INT8 in ONNX Runtime: {R['onnxruntime-int8-dynamic'].speedup('onnxruntime-fp32')} ORT FP32: "
                     "activations are quantized on every call and convolutions run as ConvInteger, which is why it is "
                     "not the CNN path.")
    measured = [n for n in int8_names if R[n].ok and R[n].kernels is not None]
    not_integer = [n for n in measured if R[n].kernels.label != "integer"]
    lines.append("Every INT8 configuration ran integer kernels only." if not not_integer else
                 "Not integer throughout, as executed: " + "; ".join(
                     f"{n}: {R[n].kernels.label}" + (f" ({R[n].kernels.share:.0%} of conv/gemm in integer)"
                                                     if R[n].kernels.share is not None else "")
                     for n in not_integer) + ".")
    if len(sensitivity):
        first, last = sensitivity.iloc[0], sensitivity.iloc[-1]
        on = f" on {int(first['images'])} evaluated images" if "images" in sensitivity else ""
        lines.append(f"Most sensitive layer{on}: `{first['node']}` (SQNR {first['sqnr_db']:.1f} dB alone, "
                     f"{first['flips']} flips); the least: `{last['node']}` ({last['sqnr_db']:.1f} dB).")
        for n in (f"{static_name}-excl{k}" for k in exclude_top_k):
            if n in R and static_name in R:
                ratio = compare.same_run_ratio(m.latency_samples, static_name, n)
                lines.append(f"Keeping the top {n.rsplit('excl', 1)[1]} in FP32: flips {R[static_name].fidelity.flips} -> "
                             f"{R[n].fidelity.flips}, accuracy change {R[n].fidelity.describe_change()}; speed against "
                             f"all-INT8 {ratio}: {ratio.verdict()}.")
    return lines
