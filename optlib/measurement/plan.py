"""A plan before the run: how long each chapter will take with these params on this machine.

`probe(params)` times the user's model in eager FP32 (a call at each batch size the chapters use,
a training step, a fresh process's imports) in well under a minute; `estimate(params, probe)`
turns it into seconds per chapter with the cost model below, and says which term dominates.

The cost model counts what each chapter does from the params (the configurations it measures, the
images each one evaluates, the training epochs of fine-tuning, a child process per configuration's
memory) and prices each at the probe's eager FP32 speed. Every configuration is priced as if it
ran as fast as eager FP32: the compressed ones (INT8, pruned) run several times faster, so the
measuring terms of chapters 04 to 07 and 99 are upper bounds; chapters 00 to 02 (training, FP32
runtimes) are what the estimate is checked against (docs/runs.md: planned against actual).
"""
from __future__ import annotations

import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..core.params import BenchParams, Params
from . import timing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".dcm", ".dicom")
COMPILE_FORWARDS = 400  # torch.compile's first call, in eager calls of the same model (freezing, 2 cores)
EXPORT_FORWARDS = 60  # an ONNX export and its check, in eager calls
# Calibrated on the cpu target's run of 2026-12-06: a real training step (augmentation, the loss,
# bookkeeping) took 1.25 times the probe's bare step; a kernel's start, imports and set-up about 20 s.
TRAIN_STEP_OVERHEAD = 1.25
CHAPTER_OVERHEAD_S = 20.0
PRUNED_STEP_FLOOR = 0.25  # a pruned model's step costs its share of the MACs, never below this (fixed costs)


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
    return Probe(forward, train_step, batch, child, image_counts(params), layers, time.perf_counter() - t0)


# --- the cost model ------------------------------------------------------------------------------

def _per_image(p: Probe, bench: BenchParams) -> float:
    bs = bench.eval_batch_size
    return p.forward_s[bs] / bs


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
        "01_baseline": {"configurations": 2, "evaluations": 1, "epochs": 0, "conversions": 0},
        "02_onnx_and_compilers": {"configurations": 1 + int(P.compilers.channels_last) + int(P.compilers.torchscript)
                                  + len(P.compilers.compile_modes) + ort + 1,
                                  "evaluations": 2 + int(P.compilers.channels_last) + int(P.compilers.torchscript)
                                  + len(P.compilers.compile_modes) + ort,
                                  "epochs": 0, "conversions": EXPORT_FORWARDS * 2
                                  + COMPILE_FORWARDS * len(P.compilers.compile_modes)},
    }
    variants = len(pc.variants) * (2 if pc.channels_last else 1)
    work["03_fp16_bf16"] = {"configurations": 2 + variants + 2 * int(pc.compile) + int(pc.onnx_fp16) + 1,
                            "evaluations": 2 + variants + 2 * int(pc.compile) + int(pc.onnx_fp16) + 1, "epochs": 0,
                            "conversions": EXPORT_FORWARDS * 2 + COMPILE_FORWARDS * 2 * int(pc.compile)}
    static = len(dict.fromkeys([q.method, *q.methods])) if calibrates else 0
    int8 = (2 + int(q.dynamic) + static + (1 + 3 * int(q.compare_formats) + int(q.pytorch_native) + int(q.pt2e)
                                           + (len(q.exclude_top_k) if q.sensitivity else 0) if calibrates else 0))
    sens_images = min(q.sensitivity_images or p.images["test"], p.images["test"])
    work["04_int8_ptq"] = {"configurations": int8, "evaluations": int8 + 1
                           + (p.layers * sens_images / max(p.images["test"], 1) if q.sensitivity and calibrates else 0),
                           "epochs": 0, "conversions": EXPORT_FORWARDS * 2 + COMPILE_FORWARDS * int(q.pt2e)}
    study = len(q.methods) * len(q.study_sizes) * len(q.study_seeds) if calibrates else 0
    work["04b_int8_studies"] = {"configurations": 0, "evaluations": study, "epochs": 0, "conversions": EXPORT_FORWARDS}
    work["05_int8_qat"] = {"configurations": 3 if calibrates else 2, "evaluations": 3, "epochs": 1.5 * q.qat_epochs * calibrates,
                           "conversions": EXPORT_FORWARDS}
    structured = len(pr.criteria) * len(pr.scopes) * len(pr.ratios)
    iterative = pr.iterative_steps > 1
    step_epochs = pr.finetune_epochs if pr.step_finetune_epochs is None else pr.step_finetune_epochs

    def share(ratio: float) -> float:  # channels kept squared: a pruned model's share of the MACs
        return max(PRUNED_STEP_FLOOR, (1 - ratio) ** 2)

    tuned = 0.0
    if calibrates:  # in epochs of the unpruned model
        tuned = (len(pr.criteria) * len(pr.scopes) * sum(share(r) for r in pr.ratios) * pr.finetune_epochs
                 + pr.unstructured_finetune_epochs + (pr.finetune_epochs if pr.dense_control else 0))
        if iterative:
            ratios = [pr.iterative_ratio * k / pr.iterative_steps for k in range(1, pr.iterative_steps + 1)]
            tuned += sum(share(r) * step_epochs for r in ratios[:-1]) + share(ratios[-1]) * pr.finetune_epochs
    backends = 2 + int(pr.int8) * (1 + len(pr.ort_threads)) + int(pr.int8)  # eager, ORT FP32, ORT / OpenVINO INT8
    measured_models = min(2, structured) + int(iterative) + int(pr.dense_control)
    unstructured = len(pr.unstructured_criteria) * len(pr.unstructured_scopes) * len(pr.sparsities)
    work["06_pruning"] = {"configurations": 4 + 2 + backends * measured_models,
                          "evaluations": 4 + 2 + backends * measured_models + unstructured + structured * 2,
                          "epochs": tuned, "conversions": EXPORT_FORWARDS * (2 + 2 * measured_models)}
    work["07_tensorrt"] = {"configurations": 2, "evaluations": 2, "epochs": 0, "conversions": EXPORT_FORWARDS}
    train_configs = len(mem.precisions) * (1 + len(mem.checkpoint))
    step_at = {b: p.train_step_s * b / p.train_batch for b in mem.batch_sizes}
    memory_s = train_configs * sum(p.child_s + (mem.steps + mem.trials) * step_at[b] for b in mem.batch_sizes)
    memory_s += mem.search_probes * (p.child_s + mem.steps * step_at[max(mem.batch_sizes)] * 2)
    work["08_training_memory"] = {"configurations": 0, "evaluations": 0, "epochs": 0, "conversions": 0, "other_s": memory_s}
    finalists = P.comparison.max_finalists + (6 if P.comparison.factorial else 0) + 1
    work["99_comparison"] = {"configurations": finalists, "evaluations": finalists, "epochs": 0, "conversions": 0,
                             "other_s": P.comparison.fresh_processes * (p.child_s + measuring_seconds(P.bench, p) / 2)}
    return work


def estimate(params: Params, p: Probe, notebooks: list[str] | None = None) -> pd.DataFrame:
    """Seconds per chapter (rows in run order; `notebooks` keeps those), split into measuring (the
    timed blocks), evaluating (every configuration's pass over the evaluated images and the pool),
    memory children, fine-tuning or training, conversions and the rest, with the dominant term."""
    per_config = measuring_seconds(params.bench, p)
    per_eval = (p.images["test"] + p.images["pool"]) * _per_image(p, params.bench)
    rows = {}
    for nb, w in chapter_work(params, p).items():
        if notebooks is not None and nb not in notebooks:
            continue
        terms = {"measuring_s": w["configurations"] * per_config,
                 "evaluating_s": w["evaluations"] * per_eval,
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
            f"{p.images['pool']} in the pool.\nEstimated {total:.0f} min in all (every configuration priced at eager "
            f"FP32's speed: an upper bound for 04-07 and 99). Longest: "
            + "; ".join(f"{nb} {row.total_min:.0f} min ({row.dominant})" for nb, row in top.iterrows())
            + ".\nWhat shortens each term: measuring, bench.block_seconds or fewer bench.trials / bench.batch_sizes; "
              "evaluating, data.max_test_images or a smaller pool; training, prune.finetune_epochs, quant.qat_epochs "
              "or fewer prune.ratios; memory children, bench.memory: false; chapter 08, memory.batch_sizes.")
