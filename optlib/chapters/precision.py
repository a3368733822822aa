"""Chapter 03's configurations and findings: eager FP32, ONNX Runtime FP32 and FP16, the PyTorch
reduced-precision variants (each also channels_last), torch.compile FP32 and BF16, OpenVINO FP32
and BF16, each described with the kernels that ran (techniques.precision), and the discussion
written from the records."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..backends.onnxruntime import OrtConfig
from ..core.params import Params
from ..measurement.metrics import changed_share_ci
from ..techniques.precision import (Variant, cpu_capabilities, nonfinite, ort_fp16_runner, torch_kernels,
                                    torch_runner, variants)

CUDA_ONLY = (("pytorch-fp16", "fp16"), ("pytorch-fp16-channels_last", "fp16"), ("pytorch-fp16-autocast", "fp16"),
             ("pytorch-bf16-autocast", "bf16"), ("onnxruntime-fp16", "fp16"))


@dataclass
class Configurations:
    """Chapter 03's runners: `fast` timed with the params' bench settings, `slow` (FP16 arithmetic
    on a CPU) in a round of their own with eager FP32 again, `skipped` as (name, technique,
    backend, precision, reason) for Chapter.skip, `references` the FP32 runners every ratio uses."""
    fast: list
    slow: list
    skipped: list[tuple[str, str, str, str, str]]
    references: list[str]


def configurations(ch, ort_config: OrtConfig | None = None, capabilities: dict | None = None) -> Configurations:
    """Eager FP32, ONNX Runtime FP32 and FP16, the PyTorch variants (precision.variants, each in
    channels_last too), torch.compile FP32 and BF16 (compilers.compile_modes[0]), OpenVINO FP32 and
    BF16 (the same IR, two precision hints; skipped where OpenVINO cannot load); every PyTorch
    runner described with the kernels it executed. On a CPU target the CUDA configurations are
    skipped with the reason, and the variants slow on this CPU (Variant.slow_on_cpu; compiled BF16
    too where oneDNN has no BF16 kernels) go to the slow round."""
    from ..backends import openvino
    from ..techniques import int8_onnx
    from ..techniques.compilers import compiled_runners
    from ..techniques.onnx_export import ExportConfig

    P, images = ch.params, ch.dataset.test.images
    eager = ch.eager_runner()
    ort_config = ort_config or OrtConfig.from_params(P)
    graphs = int8_onnx.fp32_graphs(ch.model, ch.sample(), ch.artifacts_dir, ExportConfig.from_params(P))
    ort32 = int8_onnx.fp32_runner(graphs, ch.spec, ort_config)
    fast, slow, skipped = [eager, ort32], [], []
    if P.precision.onnx_fp16:  # a converted graph in native code: built and called in a child first
        r = ch.attempt("onnxruntime-fp16", "precision", "onnxruntime", "fp16", ort_fp16_runner, graphs, ch.spec,
                       ort_config, ort32.preprocess(images[:1]), isolate=True)
        if r is not None:
            fast.append(r)
    ov_names = []
    for p in ("fp32", "bf16"):  # OpenVINO: the same graph, the precision is a compile-time hint
        r = ch.attempt(f"openvino-{p}", "precision", "openvino", p, openvino.runner, graphs.paths["model"],
                       ch.artifacts_dir / "openvino" / "model.xml", ch.spec, P.bench.threads, f"openvino-{p}", p,
                       skip_reason=openvino.unavailable(), isolate=True)
        if r is not None:
            fast.append(r)
            ov_names.append(r.name)
    on_cpu = P.device == "cpu"
    caps = (capabilities if capabilities is not None else cpu_capabilities()) if on_cpu else {}
    for v in variants(P):
        r = torch_runner(ch.model, v, eager.artifact, ch.artifacts_dir, P.bench.threads, P.device)
        (slow if on_cpu and v.slow_on_cpu(caps) else fast).append(r)
    if P.precision.compile and P.compilers.compile_modes:
        samples = {bs: ch.sample(bs).to(P.device) for bs in P.bench.batch_sizes}
        for dtype in (torch.float32, torch.bfloat16):  # the cold-cache compile is 02's subject: FP32's only
            compiled, _ = compiled_runners(ch.model, eager.artifact, P.compilers.compile_modes[:1], samples,
                                           P.bench.threads, P.device,
                                           P.compilers.measure_cold_start and dtype == torch.float32, dtype=dtype)
            (slow if on_cpu and dtype == torch.bfloat16 and Variant("bf16").slow_on_cpu(caps) else fast).extend(compiled)
    for r in fast + slow:
        if r.backend == "pytorch":
            r.annotate(kernels=torch_kernels(r, images[:1]))
    if P.device == "cpu":
        reason = ("needs a CUDA GPU (torch.cuda.is_available() is False here): run params/cuda.yaml on a GPU machine")
        skipped = [(f"cuda-{n}", "precision", n.split("-")[0], p, reason) for n, p in CUDA_ONLY]
    references = [eager.name, ort32.name] + [n for n in ov_names if n == "openvino-fp32"] + [
        r.name for r in fast if r.name.startswith("compile-fp32")]
    return Configurations(fast, slow, skipped, references)


def screen(runners: list, images: list[np.ndarray], batch_size: int) -> tuple[list, list[tuple]]:
    """(runners whose logits are all finite, [(runner, reason)] of those with inf/NaN logits):
    the FP16 ones are evaluated once here; an overflow makes a `failed` record, not an accuracy."""
    from ..backends.base import evaluate

    keep, failed = [], []
    for r in runners:
        reason = nonfinite(evaluate(r, images, batch_size)) if r.precision == "fp16" else None
        (failed.append((r, reason)) if reason else keep.append(r))
    return keep, failed


def slow_params(params: Params) -> Params:
    """The params of the slow round: precision.slow_samples calls x precision.slow_trials trials, at
    the first batch size only (a variant ten times slower than FP32 is no throughput candidate, and
    each of its batch-32 blocks would cost minutes), every trial run (no adaptive stopping)."""
    pr = params.precision
    return replace(params, bench=replace(params.bench, samples=pr.slow_samples, trials=pr.slow_trials,
                                         min_trials=pr.slow_trials, stop_ci_width=0.0,
                                         warmup=min(params.bench.warmup, 2), batch_sizes=params.bench.batch_sizes[:1]))


def _best(records: dict, precision: str, prefix: str = "pytorch-") -> str | None:
    names = [n for n, r in records.items() if r.ok and r.precision == precision and n.startswith(prefix)]
    return min(names, key=lambda n: records[n].latency.median) if names else None


def findings(records: dict, slow: dict, capabilities: dict, latency_samples: dict | None = None) -> list[str]:
    """The chapter's discussion, from this run's records (`slow`: the slow round's;
    `latency_samples`: the main round's raw samples, for same-run ratios)."""
    from ..results.compare import same_run_ratio

    lines = []
    flags = ", ".join(k for k in ("avx512_bf16", "amx_bf16", "avx512_fp16") if capabilities.get(k)) or "none"
    lines.append(f"This CPU's reduced-precision features: {flags} (PyTorch dispatch level "
                 f"{capabilities.get('torch_cpu_capability')}).")
    e = "pytorch-fp32"
    slow = {n: r for n, r in slow.items() if n != e}
    every = {**records, **slow}  # BF16 is in the slow round on a CPU without BF16 oneDNN kernels
    best = _best(every, "bf16")
    if best:
        b = every[best]
        big = max(int(k) for k in b.throughput) if b.throughput else None
        t = b.speedup(e, "throughput", big) if big and big != b.batch_size else None
        lines.append(f"Fastest eager BF16 variant: **{best}** ({b.kernels.label} kernels, {b.kernels.share:.0%} of "
                     f"conv/linear calls in BF16 primitives): {b.speedup(e)} eager FP32 at batch {b.batch_size}" + (f", {t} at batch {big}" if t else "")
                     + f"; accuracy change {b.fidelity.accuracy_change:+.2%} "
                     f"[{b.fidelity.accuracy_change_ci95[0]:+.2%}, {b.fidelity.accuracy_change_ci95[1]:+.2%}], "
                     f"{b.fidelity.flips} flipped predictions, max logit difference {b.fidelity.max_abs_diff:.2g}.")
        n = b.accuracy["n"]
        lo, hi = changed_share_ci(b.fidelity.flips, n)
        lines.append(f"What {n} test images can resolve: one changed prediction is {1 / n:.2%} of accuracy; the "
                     f"{b.fidelity.flips} changed here put the share of predictions BF16 changes at [{lo:.2%}, {hi:.2%}] "
                     f"(exact 95%), and even none changed would leave {changed_share_ci(0, n)[1]:.2%}.")
        if b.verdict is not None:
            v = b.verdict
            lines.append(f"Against the {v.max_accuracy_drop:.1%} budget, {best} is **{v.label}**: {v.why}.")
    for n in (n for n in every if n.startswith("pytorch-") and "autocast" in n and every[n].ok):
        lines.append(f"`{n}`: {every[n].speedup(e)} (weights stay FP32; the casts are paid at every call).")
    c32 = next((n for n in records if n.startswith("compile-fp32") and records[n].ok), None)
    cbf = next((n for n in every if n.startswith("compile-bf16") and every[n].ok), None)
    if c32 and cbf and every[cbf].speedup(c32) is not None:
        lines.append(f"torch.compile: `{cbf}` {every[cbf].speedup(c32)} `{c32}` "
                     f"({every[cbf].speedup(e)} eager FP32).")
    elif cbf:
        lines.append(f"torch.compile: `{cbf}` {every[cbf].speedup(e)} eager FP32 (in the slow round: no BF16 oneDNN "
                     "kernels on this CPU).")
    o = records.get("onnxruntime-fp16")
    if o is not None and o.ok:
        ev = o.kernels.evidence if o.kernels else {}
        lines.append(f"ONNX Runtime FP16: {o.speedup('onnxruntime-fp32')} ONNX Runtime FP32, labelled "
                     f"**{o.kernels.label}** ({o.kernels.share:.0%} of conv/matmul nodes ran with FP16 inputs, "
                     f"{ev.get('cast_nodes_per_call', 0)} Cast nodes per call); half the file size: "
                     f"{o.size_bytes / 1e6:.1f} MB.")
    ov = records.get("openvino-bf16")
    if ov is not None and ov.ok:
        line = (f"OpenVINO BF16 (precision hint bf16 on the FP32 graph): {ov.latency.median:.3f} ms, {ov.speedup(e)} eager "
                f"FP32" + (f", {ov.speedup('openvino-fp32')} OpenVINO FP32 (hint f32)" if ov.speedup("openvino-fp32") else "")
                + f"; kernels **{ov.kernels.label}** ({ov.kernels.share:.0%} of conv/FC nodes in BF16: "
                + ", ".join(sorted({h["primitive"] for h in ov.kernels.evidence.get("heavy_layers", [])})) + ")")
        torch_bf16 = [n for n, r in every.items() if r.ok and r.precision == "bf16" and r.backend == "pytorch"]
        if torch_bf16:
            fastest = min(torch_bf16, key=lambda n: every[n].latency.median)
            if latency_samples and fastest in latency_samples:
                ratio = f"{same_run_ratio(latency_samples, fastest, ov.name)} (same-run paired ratio)"
            else:  # the fastest PyTorch BF16 was timed in the slow round
                ratio = (f"{every[fastest].latency.median / ov.latency.median:.2f}x (ratio of medians timed in different "
                         "rounds)")
            line += f"; against the fastest PyTorch BF16, `{fastest}` ({every[fastest].latency.median:.3f} ms): {ratio}"
        fid = ov.fidelity
        lines.append(line + (f"; accuracy change {fid.describe_change()}." if fid is not None else "."))
    native = {"fp16": "avx512_fp16", "bf16": "avx512_bf16"}
    for n, r in slow.items():
        if not r.ok:
            continue
        p = r.precision.upper()
        head = f"`{n}` (its own round, {r.latency.count} calls): {r.speedup(e)} eager FP32"
        if r.kernels is None:
            lines.append(head + ".")
            continue
        ops = ", ".join(f"`{k}` x{v}" for k, v in r.kernels.evidence.get("aten_heavy_ops", {}).items())
        flag = native.get(r.precision, "")
        lines.append(head + f", kernels {r.kernels.label}: " + (
            f"no {p} oneDNN primitive ran; ATen ran {ops or 'its own kernels'} on {p} storage"
            + ("" if capabilities.get(flag) else f", in FP32 arithmetic (no {flag.upper().replace('_', '-')} here)") + "."
            if r.kernels.label == "cast-emulated" else f"{r.kernels.share:.0%} in {p} primitives."))
    return lines
