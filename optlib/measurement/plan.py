"""A plan before the run: how long each chapter will take with these params on this machine.

`probe(params)` times the user's model in eager FP32 (a call at each batch size the chapters use,
a training step, a fresh process's imports) in well under a minute; `estimate(params, probe)`
turns it into seconds per chapter with the cost model below, and says which term dominates.

The cost model counts what each chapter does from the params (the configurations it measures, the
images each one evaluates, the training epochs of fine-tuning, a child process per configuration's
memory, ONNX Runtime's calibrations) and prices each at the probe's eager FP32 speed. Every
configuration is priced as if it ran as fast as eager FP32 but those that ran slower at the user's
size (QAT's fake-quantized steps, TensorRT's Q/DQ graph on a CPU, FP16 and BF16 where the CPU the
probe reads lacks their kernels: the constants below): the compressed ones (INT8, pruned) run
several times faster, so the measuring terms of chapters 04 to 07 and 99 are upper bounds; chapters
00 to 02 (training, FP32 runtimes) are what the estimate is checked against (docs/runs.md: planned
against actual).
"""
from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.params import BenchParams, Params, from_dict
from . import timing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")
COMPILE_FORWARDS = 400  # torch.compile's first call, in eager calls of the same model (freezing, 2 cores)
EXPORT_FORWARDS = 60  # an ONNX export and its check, in eager calls
# Calibrated on the cpu target's run of 2026-12-06: a real training step (augmentation, the loss,
# bookkeeping) took 1.25 times the probe's bare step; a kernel's start, imports and set-up about 20 s.
TRAIN_STEP_OVERHEAD = 1.25
CHAPTER_OVERHEAD_S = 20.0
PRUNED_STEP_FLOOR = 0.25  # a pruned model's step costs its share of the MACs, never below this (fixed costs)
# Measured on the user-size run of 2026-12-07 (ResNet50 at 224, 2 cores), where the plan had run
# short: a fake-quantized QAT step took 2.6 times the probe's plain step (716 s against 277 s) on a
# Xeon with AMX, where the convolutions are fast and fake-quantization is the larger share (an AVX2
# EPYC: 1.48 times, so there the plan errs long);
# TensorRT's signed Q/DQ graph ran slower than eager in ONNX Runtime on the CPU: 1.35 times at batch 1
# (73 against 54 ms), 1.7 times over the evaluated images (87 against 51 s); ONNX Runtime's
# calibration of the full graph and its stages cost, per calibration image, this many eager calls
# at batch 1 (100 images: min-max 23 s in 04 and 52 s in 07, percentile 153 s, entropy 222 s).
QAT_STEP_COST = 2.6
QDQ_CPU_COST = 1.7
CALIBRATION_FORWARDS = {"minmax": 9, "percentile": 27, "entropy": 39}
NNCF_FORWARDS = 4  # NNCF's calibration and quantization per image (100 images: 20 s at that size)
# Chapter 03's PyTorch variants, in eager FP32 calls: FP16 ran 1.5 times eager on the AMX-FP16 Xeon
# (77 to 82 ms against 54 at the user's size) and about 10 times where the CPU has no FP16
# arithmetic; BF16 without oneDNN's BF16 kernels 13 times in the default layout and 1.5 in
# channels_last (ResNet18 at 64x64 on an AVX2-only EPYC, 2026-12-02), with them as fast as FP32.
FP16_CPU_COST = {"native": 1.5, "emulated": 10.0}
BF16_REFERENCE_KERNELS_COST = {"default": 13.0, "channels_last": 1.5}


@dataclass
class Probe:
    """Eager FP32 seconds per call at each batch size, per training step (at `train_batch`), and a
    fresh process's start-up with the runtimes imported; the image counts of each side."""
    forward_s: dict[int, float]
    train_step_s: float
    train_batch: int
    child_s: float
    images: dict[str, int] = field(default_factory=dict)
    layers: int = 0  # Conv2d / Linear layers (layer sensitivity quantizes each alone)
    seconds: float = 0.0  # what the probe itself took
    capabilities: dict = field(default_factory=dict)  # precision.cpu_capabilities() on a CPU target; {} unknown


def _count_images(root: str | None, cap: int | None = None) -> int:
    if root is None:
        return 0
    n = sum(1 for p in Path(root).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return min(n, cap) if cap is not None else n


def image_counts(params: Params) -> dict[str, int]:
    """Evaluated, training and label-free pool images the run will read, counted without decoding."""
    d = params.data
    if d.root is not None:
        return {"test": _count_images(d.root, d.max_test_images), "train": _count_images(d.train_root),
                "pool": _count_images(d.fidelity_root)}
    if d.embedded == "phantoms":
        test = d.phantom_test_images if d.max_test_images is None else min(d.phantom_test_images, d.max_test_images)
        return {"test": test, "train": d.phantom_train_images, "pool": d.fidelity_pool_images}
    test = math.ceil(1797 * d.test_fraction)  # scikit-learn's digits, split as train_test_split does
    return {"test": test if d.max_test_images is None else min(test, d.max_test_images), "train": 1797 - test, "pool": 0}


def _time_calls(fn, budget_s: float = 0.6, most: int = 20) -> float:
    """Median seconds of `fn()` after two warm-up calls, over calls filling about `budget_s`."""
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < most):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def probe(params: Params) -> Probe:
    """Time the model the params name (built from model.arch; the weights do not change its speed)
    in eager FP32 on the params' threads: a call at each of bench.batch_sizes and
    bench.eval_batch_size, a training step at the fine-tuning batch, and a fresh interpreter that
    imports torch, ONNX Runtime and OpenVINO as a memory child does."""
    import torch

    from ..workload.models import build_model

    t0 = time.perf_counter()
    torch.set_num_threads(params.bench.threads)
    model = build_model(params.model.arch, params.model.num_classes or 2).eval()
    size = params.data.image_size
    sizes = sorted(set(params.bench.batch_sizes) | {1, params.bench.eval_batch_size})
    forward = {}
    with torch.no_grad():
        for bs in sizes:
            x = torch.randn(bs, 3, size, size)
            forward[bs] = _time_calls(lambda: model(x))
    batch = params.finetune.batch_size or params.train.batch_size
    x = torch.randn(batch, 3, size, size)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).float().mean().backward()
        opt.step()

    train_step = _time_calls(step, budget_s=0.3, most=5)
    c0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, onnxruntime\ntry:\n import openvino\nexcept ImportError:\n pass"],
                   capture_output=True, timeout=300)
    child = time.perf_counter() - c0
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())
    caps = {}
    if params.device == "cpu":
        from ..techniques.precision import cpu_capabilities

        caps = cpu_capabilities()
    return Probe(forward, train_step, batch, child, image_counts(params), layers, time.perf_counter() - t0, caps)


def variant_cost(kind: str, channels_last: bool, capabilities: dict) -> tuple[float, bool]:
    """(eager FP32 calls a call of chapter 03's PyTorch variant `kind` costs, whether it goes to the
    slow round) on a CPU with these capabilities; unknown capabilities ({}) price it as FP32."""
    from ..techniques.precision import Variant

    if not capabilities:
        return 1.0, False
    v = Variant(kind, channels_last)
    if v.precision == "fp16":
        native = capabilities.get("amx_fp16") or capabilities.get("avx512_fp16")
        cost = FP16_CPU_COST["native" if native else "emulated"]
    elif capabilities.get("onednn_bf16_supported"):
        cost = 1.0
    else:
        cost = BF16_REFERENCE_KERNELS_COST["channels_last" if channels_last else "default"]
    return cost, v.slow_on_cpu(capabilities)


# --- the cost model ------------------------------------------------------------------------------

def _per_evaluation(p: Probe, bench: BenchParams) -> float:
    """One configuration's pass over the evaluated images and the pool, at eager speed."""
    bs = bench.eval_batch_size
    return (p.images["test"] + p.images["pool"]) * p.forward_s[bs] / bs


def measuring_calls(bench: BenchParams, first_call_s: float | None = None) -> dict[int, float]:
    """One configuration's timed blocks as eager forward passes per batch size: at the latency batch
    size (the smallest) every trial's warm-up and calls, a stage-split call (every warm-up call
    and every `stage_every`-th timed one) counting twice (the stages, then the whole graph); at each other batch size
    the throughput blocks and their warm-up (measurement.timing.latency and throughput, as
    experiment.measure calls them). With bench.block_seconds the calls per block follow from
    `first_call_s`, the latency batch's seconds per call (timing.calls_per_block)."""
    lat_bs = min(bench.batch_sizes)
    calls = timing.calls_per_block([first_call_s * 1e3] if first_call_s else [], bench)
    staged = math.ceil(calls / bench.stage_every)
    warm = max(bench.warmup, 3 if bench.block_seconds else 0)  # warm-up calls time the stages too
    out = {lat_bs: float(bench.trials * (calls + staged + 2 * warm))}
    for bs in bench.batch_sizes:
        if bs != lat_bs:
            out[bs] = float(bench.trials * sum(timing.throughput_calls(bench, bs)))
    return out


def measuring_seconds(bench: BenchParams, p: Probe) -> float:
    """One configuration's timed blocks at eager speed, with the settle pause before each block."""
    lat_bs = min(bench.batch_sizes)
    calls = measuring_calls(bench, p.forward_s[lat_bs])
    return sum(n * p.forward_s[bs] for bs, n in calls.items()) + bench.trials * len(bench.batch_sizes) * bench.settle_s


def _epochs_seconds(epochs: float, p: Probe) -> float:
    return epochs * math.ceil(p.images["train"] / p.train_batch) * p.train_step_s * TRAIN_STEP_OVERHEAD


def chapter_work(params: Params, p: Probe) -> dict[str, dict]:
    """Per chapter: configurations measured, evaluations (passes over the evaluated images and the
    pool), fine-tuning epochs, one-time conversions (in eager calls) and other seconds."""
    P, q, pr, pc, mem = params, params.quant, params.prune, params.precision, params.memory
    calibrates = p.images["train"] > 0
    embedded_training = P.model.checkpoint is None
    ort = 4 if P.onnx.compare_optimization_levels else 1
    work = {
        "00_data_and_model": {"configurations": 0, "evaluations": 1,
                              "epochs": P.train.epochs if embedded_training else 0, "conversions": 0},
        "01_baseline": {"configurations": 2, "evaluations": 2, "epochs": 0, "conversions": 0},  # eager and its twin
        "02_onnx_and_compilers": {"configurations": 1 + int(P.compilers.channels_last) + int(P.compilers.torchscript)
                                  + len(P.compilers.compile_modes) + ort + 1,
                                  "evaluations": 2 + int(P.compilers.channels_last) + int(P.compilers.torchscript)
                                  + len(P.compilers.compile_modes) + ort,
                                  "epochs": 0, "conversions": EXPORT_FORWARDS * 2
                                  + COMPILE_FORWARDS * len(P.compilers.compile_modes)},
    }
    # the PyTorch variants at their price on this CPU; the slow ones in a round of their own (fewer
    # calls, eager FP32 again beside them), the rest timed with the others
    costs = [variant_cost(v, cl, p.capabilities if P.device == "cpu" else {})
             for v in pc.variants for cl in ([False, True] if pc.channels_last else [False])]
    fast = [c for c, slow in costs if not slow]
    slow = [c for c, is_slow in costs if is_slow]
    others = 2 + 2 * int(pc.compile) + int(pc.onnx_fp16) + 1
    slow_round = 0.0
    if slow:
        from ..chapters.precision import slow_params

        slow_bench = slow_params(P).bench
        slow_round = (1 + sum(slow)) * measuring_seconds(slow_bench, p) + sum(slow) * _per_evaluation(p, P.bench)
    work["03_fp16_bf16"] = {"configurations": others + len(fast), "evaluations": others + len(fast),
                            "weight": (others + sum(fast)) / (others + len(fast)), "epochs": 0,
                            "conversions": EXPORT_FORWARDS * 2 + COMPILE_FORWARDS * 2 * int(pc.compile),
                            "other_s": slow_round}

    def calibrating(images: int, methods) -> float:  # ONNX Runtime calibrations, in eager calls at batch 1
        return images * sum(CALIBRATION_FORWARDS.get(m, CALIBRATION_FORWARDS["entropy"]) for m in methods) \
            if calibrates else 0

    static = len(dict.fromkeys([q.method, *q.methods])) if calibrates else 0
    int8 = (2 + int(q.dynamic) + static + (1 + 3 * int(q.compare_formats) + int(q.pytorch_native) + int(q.pt2e)
                                           + (len(q.exclude_top_k) if q.sensitivity else 0) if calibrates else 0))
    sens_images = min(q.sensitivity_images or p.images["test"], p.images["test"])
    work["04_int8_ptq"] = {"configurations": int8, "evaluations": int8 + 1
                           + (p.layers * sens_images / max(p.images["test"], 1) if q.sensitivity and calibrates else 0),
                           "epochs": 0, "conversions": EXPORT_FORWARDS * 2 + COMPILE_FORWARDS * int(q.pt2e)
                           + calibrating(q.calibration_size, dict.fromkeys([q.method, *q.methods]))}
    study = len(q.methods) * len(q.study_sizes) * len(q.study_seeds) if calibrates else 0
    work["04b_int8_studies"] = {"configurations": 0, "evaluations": study, "epochs": 0, "conversions": EXPORT_FORWARDS
                                + calibrating(sum(q.study_sizes) * len(q.study_seeds), q.methods)}
    f = P.finetune
    ft_images = min(p.images["train"], f.train_images or p.images["train"])
    ft_batch = f.batch_size or P.train.batch_size

    def ft(epochs: float) -> float:  # one fine-tuning (finetune.train_images, max_steps), in epochs of the training side
        if not p.images["train"]:
            return 0.0
        steps = epochs * math.ceil(ft_images / ft_batch)
        return (steps if f.max_steps is None else min(steps, f.max_steps)) / math.ceil(p.images["train"] / ft_batch)

    work["05_int8_qat"] = {"configurations": 3 if calibrates else 2, "evaluations": 3,
                           "epochs": QAT_STEP_COST * ft(q.qat_epochs), "conversions": EXPORT_FORWARDS}
    # as PruningStudy.structured_sweep plans them: every criterion per layer, the first globally
    swept = (pr.ratios * len(pr.criteria) if "layer" in pr.scopes else []) + (pr.ratios if "global" in pr.scopes else [])
    if pr.measure_unrounded and pr.round_to is not None:
        swept += [pr.unrounded_ratio] * (1 if "layer" in pr.scopes and pr.unrounded_ratio in pr.ratios else 2)
    structured = len(swept)
    iterative = pr.iterative_steps > 1
    step_epochs = pr.finetune_epochs if pr.step_finetune_epochs is None else pr.step_finetune_epochs

    def share(ratio: float) -> float:  # channels kept squared: a pruned model's share of the MACs
        return max(PRUNED_STEP_FLOOR, (1 - ratio) ** 2)

    tuned = 0.0
    if calibrates:  # in epochs of the unpruned model
        series = len(pr.sparsities) if "l1" in pr.unstructured_criteria and "global" in pr.unstructured_scopes else 0
        tuned = (sum(share(r) for r in swept) * ft(pr.finetune_epochs) + series * ft(pr.unstructured_finetune_epochs)
                 + (ft(pr.finetune_epochs) if pr.dense_control else 0))
        if iterative:
            ratios = [pr.iterative_ratio * k / pr.iterative_steps for k in range(1, pr.iterative_steps + 1)]
            tuned += sum(share(r) * ft(step_epochs) for r in ratios[:-1]) + share(ratios[-1]) * ft(pr.finetune_epochs)
    backends = 2 + int(pr.int8) * (1 + len(pr.ort_threads)) + int(pr.int8)  # eager, ORT FP32, ORT / OpenVINO INT8
    measured_models = min(2, structured) + int(iterative) + int(pr.dense_control)
    unstructured = len(pr.unstructured_criteria) * len(pr.unstructured_scopes) * len(pr.sparsities)
    int8_models = (1 + measured_models) * int(pr.int8)  # the dense model and each measured one, ORT and NNCF
    work["06_pruning"] = {"configurations": 4 + 2 + backends * measured_models,
                          "evaluations": 4 + 2 + backends * measured_models + unstructured + structured * 2,
                          "epochs": tuned, "conversions": EXPORT_FORWARDS * (2 + 2 * measured_models)
                          + int8_models * (calibrating(q.calibration_size, [q.method])
                                           + NNCF_FORWARDS * q.calibration_size * calibrates)}
    # eager, ONNX Runtime FP32 and the Q/DQ graph (GPU configurations skip on a CPU)
    work["07_tensorrt"] = {"configurations": 2 + int(calibrates), "evaluations": 2 + int(calibrates),
                           "weight": (2 + QDQ_CPU_COST * calibrates) / (2 + int(calibrates)), "epochs": 0,
                           "conversions": EXPORT_FORWARDS + calibrating(q.calibration_size, [q.method])}
    train_configs = len(mem.precisions) * (1 + len(mem.checkpoint))
    step_at = {b: p.train_step_s * b / p.train_batch for b in mem.batch_sizes}
    memory_s = train_configs * sum(p.child_s + (mem.steps + mem.trials) * step_at[b] for b in mem.batch_sizes)
    memory_s += mem.search_probes * (p.child_s + mem.steps * step_at[max(mem.batch_sizes)] * 2)
    work["08_training_memory"] = {"configurations": 0, "evaluations": 0, "epochs": 0, "conversions": 0, "other_s": memory_s}
    finalists = P.comparison.max_finalists + (6 if P.comparison.factorial else 0) + 1
    # the finalists are rebuilt from their recipes: about half of them INT8, calibrated again
    work["99_comparison"] = {"configurations": finalists, "evaluations": finalists, "epochs": 0,
                             "conversions": finalists // 2 * (calibrating(q.calibration_size, [q.method])
                                                              + EXPORT_FORWARDS),
                             "other_s": P.comparison.fresh_processes * (p.child_s + measuring_seconds(P.bench, p) / 2)}
    return work


def estimate(params: Params, p: Probe, notebooks: list[str] | None = None) -> pd.DataFrame:
    """Seconds per chapter (rows in run order; `notebooks` keeps those), split into measuring (the
    timed blocks), evaluating (every configuration's pass over the evaluated images and the pool),
    memory children, fine-tuning or training, conversions and the rest, with the dominant term."""
    per_config = measuring_seconds(params.bench, p)
    per_eval = _per_evaluation(p, params.bench)
    rows = {}
    for nb, w in chapter_work(params, p).items():
        if notebooks is not None and nb not in notebooks:
            continue
        weight = w.get("weight", 1.0)  # configurations slower than eager FP32
        terms = {"measuring_s": w["configurations"] * per_config * weight,
                 "evaluating_s": w["evaluations"] * per_eval * weight,
                 "memory_children_s": w["configurations"] * p.child_s if params.bench.memory else 0.0,
                 "training_s": _epochs_seconds(w["epochs"], p),
                 "conversions_s": w["conversions"] * p.forward_s[1],
                 "other_s": w.get("other_s", 0.0) + CHAPTER_OVERHEAD_S}
        total = sum(terms.values())
        rows[nb] = {"configurations": w["configurations"], **terms, "total_min": total / 60,
                    "dominant": max(terms, key=terms.get).removesuffix("_s")}
    return pd.DataFrame(rows).T.rename_axis("chapter")


def describe(params: Params, p: Probe, table: pd.DataFrame) -> str:
    """The plan in words: the probe's numbers, the estimate in all, and what to cut when it is long."""
    fw = ", ".join(f"batch {b}: {s * 1e3:.1f} ms" for b, s in sorted(p.forward_s.items()))
    total = float(table["total_min"].sum())
    top = table.sort_values("total_min", ascending=False).head(3)
    return (f"Probe ({p.seconds:.0f} s, {params.bench.threads} threads, {params.data.image_size}x{params.data.image_size}): "
            f"eager FP32 {fw}; a training step at batch {p.train_batch}: {p.train_step_s:.2f} s; a fresh process "
            f"{p.child_s:.1f} s. Images: {p.images['test']} evaluated, {p.images['train']} training, "
            f"{p.images['pool']} in the pool.\nEstimated {total:.0f} min in all (the compressed configurations "
            f"priced at eager FP32's speed: an upper bound for 04-07 and 99). Longest: "
            + "; ".join(f"{nb} {row.total_min:.0f} min ({row.dominant})" for nb, row in top.iterrows())
            + ".\nWhat shortens each term: measuring, bench.block_seconds or fewer bench.trials / bench.batch_sizes; "
              "evaluating, data.max_test_images or a smaller pool; training, prune.finetune_epochs, quant.qat_epochs "
              "or fewer prune.ratios; memory children, bench.memory: false; chapter 08, memory.batch_sizes.")


# --- a run budget: shrink what can shrink until the estimate fits --------------------------------

MIN_TEST_IMAGES = 1000  # below this a 0.5-point accuracy change is not resolved even with nothing changed
MIN_POOL_IMAGES = 500  # a generated pool is halved down to this, never below
MIN_FINETUNE_IMAGES = 1000  # fine-tuning (QAT, pruning, the dense control) on at least this many training images
MIN_SENSITIVITY_IMAGES = 200  # layer sensitivity ranks on at least this many evaluated images
MIN_FINETUNE_STEPS = 10  # a fine-tuning capped by finetune.max_steps keeps at least this many steps


def _halve_to(floor: int):
    return lambda v, d: max(floor, v // 2) if v > floor else None


def _first(v, d):
    return v[:1] if len(v) > 1 else None


def _middle(v, d):
    return [v[len(v) // 2]] if len(v) > 1 else None


def _off(v, d):
    return False if v else None


def _test_images(v, d):
    n = v if v is not None else image_counts(from_dict(d, "<plan>"))["test"]
    return max(MIN_TEST_IMAGES, n // 2) if n > MIN_TEST_IMAGES else None


def _step_epochs(v, d):
    n = d["prune"]["finetune_epochs"] if v is None else v  # None: as many as after the last step
    return max(1, n // 2) if n > 1 else None


def _sensitivity_images(v, d):
    n = v if v is not None else image_counts(from_dict(d, "<plan>"))["test"]
    return max(MIN_SENSITIVITY_IMAGES, n // 2) if d["quant"]["sensitivity"] and n > MIN_SENSITIVITY_IMAGES else None


def _finetune_steps(v, d):
    """From None (every epoch's steps) to one epoch's steps on the fine-tuning images, then halved."""
    if v is None:
        q = from_dict(d, "<plan>")
        images = min(image_counts(q)["train"], q.finetune.train_images or image_counts(q)["train"])
        v = 2 * math.ceil(images / (q.finetune.batch_size or q.train.batch_size)) if images else 0
    return max(MIN_FINETUNE_STEPS, v // 2) if v > MIN_FINETUNE_STEPS else None


def _finetune_images(v, d):
    n = v if v is not None else image_counts(from_dict(d, "<plan>"))["train"]
    return max(MIN_FINETUNE_IMAGES, n // 2) if n > MIN_FINETUNE_IMAGES else None


# In order: what a study loses least first (a second look, a repeat, a sweep point), the accuracy
# claims last (the images decide whether a change is resolved). Each entry: the key, the next value
# from the current one (None: nothing left to cut there), and what the cut costs the study.
SHRINKS = [
    ("comparison.fresh_processes", _halve_to(1), "one fresh process for the noise floor between runs"),
    ("onnx.compare_optimization_levels", _off, "ONNX Runtime at its fastest level only"),
    ("compilers.measure_cold_start", _off, "no cold-cache compile time"),
    ("precision.channels_last", _off, "no channels_last variants in 03"),
    ("quant.compare_formats", _off, "no QOperator / per-tensor / s8s8 formats in 04"),
    ("quant.study_seeds", _first, "one calibration seed in 04b"),
    ("quant.study_sizes", lambda v, d: sorted(v)[:-1] if len(v) > 2 else None,
     "the calibration study without its largest sizes (04b)"),
    ("quant.sensitivity_images", _sensitivity_images, "layer sensitivity ranked on fewer evaluated images"),
    ("prune.dense_control", _off, "no dense control in 06"),
    ("prune.sparsities", _middle, "one unstructured sparsity"),
    ("prune.unstructured_criteria", _first, "one unstructured criterion"),
    ("prune.criteria", _first, "one structured criterion"),
    ("prune.ratios", _first, "one one-shot structured ratio"),
    ("prune.iterative_steps", lambda v, d: v - 1 if v > 2 else None, "the iterative model in fewer steps"),
    ("bench.trials", lambda v, d: v - 1 if v > 5 else None, "wider latency intervals (5 trials at least)"),
    ("memory.precisions", _first, "training memory in one precision"),
    ("memory.batch_sizes", _first, "training memory at one batch size"),
    ("memory.search_probes", lambda v, d: max(2, v // 2) if v > 2 else None, "a coarser largest-batch search in 08"),
    ("comparison.max_finalists", _halve_to(4), "fewer finalists"),
    ("finetune.train_images", _finetune_images, "fine-tuning on fewer training images"),
    ("prune.step_finetune_epochs", _step_epochs, "shorter fine-tuning between pruning steps"),
    ("prune.finetune_epochs", _halve_to(3), "shorter fine-tuning of the pruned models (accuracy may drop)"),
    ("quant.qat_epochs", _halve_to(1), "shorter QAT"),
    ("finetune.max_steps", _finetune_steps, "fewer optimizer steps in every fine-tuning (accuracy may drop)"),
    ("bench.batch_sizes", lambda v, d: [min(v)] if len(v) > 1 else None, "no throughput at larger batches"),
    ("data.fidelity_pool_images", _halve_to(MIN_POOL_IMAGES), "a smaller label-free pool (weaker fidelity bounds)"),
    ("data.max_test_images", _test_images, "fewer evaluated images (wider accuracy intervals)"),
]


def fit(params: Params, p: Probe, budget_min: float, notebooks: list[str] | None = None
        ) -> tuple[Params, list[dict], pd.DataFrame]:
    """Params whose estimate fits `budget_min`, the cuts made (in SHRINKS order, each as often as it
    helps: key, from, to, what it costs, the estimate after it) and the final estimate. Params
    already within the budget come back unchanged; when every cut is made and the estimate is still
    over, the last cut's params come back (the caller says it does not fit)."""
    def total(q: Params) -> tuple[float, pd.DataFrame]:
        table = estimate(q, dataclasses.replace(p, images=image_counts(q)), notebooks)
        return float(table["total_min"].sum()), table

    minutes, table = total(params)
    d, cuts = params.to_dict(), []
    for key, step, cost in SHRINKS:
        section, name = key.split(".")
        while minutes > budget_min:
            new = step(d[section][name], d)
            if new is None:
                break
            trial = {**d, section: {**d[section], name: new}}
            if key == "bench.trials":
                trial["bench"]["min_trials"] = min(trial["bench"]["min_trials"], new)
            q = from_dict(trial, "<plan>")
            after, q_table = total(q)
            if after >= minutes:  # this cut saves nothing for these chapters
                break
            if cuts and cuts[-1]["key"] == key:  # a cut made again: one entry, from the first value
                cuts[-1].update(to=new, estimate_min=after)
            else:
                cuts.append({"key": key, "from": d[section][name], "to": new, "costs": cost, "estimate_min": after})
            d, params, minutes, table = trial, q, after, q_table
    return params, cuts, table


def describe_fit(budget_min: float, before_min: float, cuts: list[dict], after_min: float) -> str:
    """The cuts in words, and whether the run fits."""
    if not cuts:
        return f"Within the budget of {budget_min:g} min as it is ({before_min:.0f} min): nothing cut."
    lines = [f"Budget {budget_min:g} min: estimated {before_min:.0f} min as given, {after_min:.0f} min after "
             f"{len(cuts)} cut(s):"]
    lines += [f"  {c['key']}: {c['from']} -> {c['to']} ({c['costs']}; {c['estimate_min']:.0f} min)" for c in cuts]
    if after_min > budget_min:
        lines.append(f"It still does not fit: {after_min:.0f} min with every cut; raise the budget, run fewer "
                     "chapters (--notebooks), or a smaller image size or model.")
    return "\n".join(lines)
