"""Chapter 06's experiments: the unstructured sparsity sweep, the structured ratio sweep, iterative
pruning with fine-tuning, the dense control, and the runners (eager, ONNX Runtime FP32, ONNX
Runtime static INT8 with chapter 04's recipe) of the configurations measured side by side.

Every fine-tune uses workload.training.finetune with the params' recipe (finetune.*) on the
training side only; accuracy is always on the evaluated images, against the unpruned FP32 model.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..backends import openvino
from ..backends.base import evaluate
from ..backends.onnxruntime import OrtConfig
from ..backends.pytorch import TorchRunner
from ..core.params import Params
from ..measurement.metrics import fidelity
from ..results.values import Artifact
from ..workload.data import Dataset, PreprocessSpec, calibration_set, preprocess
from ..workload.models import state_dict_size_bytes
from ..workload.outputs import Outputs
from ..workload.training import FineTuneRecipe, finetune
from ..techniques import int8_nncf, int8_onnx, pruning
from ..techniques.onnx_export import ExportConfig

DENSE_INT8 = "onnxruntime-int8-static-{label}"  # 04's name for the dense static INT8 configuration
DENSE_OPENVINO_INT8 = "openvino-int8-nncf"  # 04's name for the dense NNCF INT8 configuration


@dataclass
class PrunedModel:
    label: str  # e.g. structured-l2-50, unstructured-l1-global-90, dense-finetuned
    model: nn.Module
    pruning: dict  # what the record's pruning section holds
    finetune_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


@dataclass
class PruningStudy:
    """The chapter's model, data and parameters, and what the study functions share."""
    model: nn.Module
    dataset: Dataset
    spec: PreprocessSpec
    outputs: Outputs
    params: Params
    out_dir: Path
    eager: Artifact  # the FP32 model's artifact (architecture, head, preprocessing)
    progress: bool = True
    reference_logits: np.ndarray | None = None

    def __post_init__(self):
        p = self.params.prune
        self.keep = pruning.kept_whole(self.model, p.ignored_layers, p.prune_head)
        self.example = preprocess(self.dataset.test.images[:1], self.spec)
        if self.reference_logits is None:
            self.reference_logits = self.logits(self.model)
        self.dense_macs, self.dense_parameters = pruning.macs_and_params(self.model, self.example)

    @classmethod
    def of(cls, chapter, progress: bool = True) -> "PruningStudy":
        """The study of a chapter (optlib.chapter.Chapter)."""
        return cls(chapter.model, chapter.dataset, chapter.spec, chapter.outputs, chapter.params, chapter.artifacts_dir,
                   chapter.eager_runner().artifact, progress)

    @property
    def int8(self) -> bool:
        """Pruned models also through static INT8 (prune.int8; calibration needs the training side)."""
        return self.params.prune.int8 and self.can_train

    @property
    def can_train(self) -> bool:
        return self.dataset.train is not None and len(self.dataset.train) > 0

    def logits(self, model: nn.Module) -> np.ndarray:
        runner = TorchRunner(model, self.spec, threads=self.params.bench.threads)
        return evaluate(runner, self.dataset.test.images, self.params.bench.eval_batch_size)

    def accuracy_row(self, model: nn.Module) -> dict:
        """accuracy, accuracy_change (paired 95% interval) and flips against the unpruned model."""
        lg = self.logits(model)
        f = fidelity(lg, self.reference_logits, self.dataset.test.labels, "pytorch-fp32", self.outputs)
        acc = float((self.outputs.predict(lg) == self.dataset.test.labels).mean())
        return {"accuracy": acc, "accuracy_change": f.accuracy_change, "accuracy_change_ci95": f.accuracy_change_ci95,
                "flips": f.flips}

    def recipe(self, epochs: int) -> FineTuneRecipe:
        """The fine-tuning recipe (finetune.*) at pruning's own rate and distillation (prune.*)."""
        p, t = self.params.prune, self.params.train
        lr = {} if p.lr_scale is None else {"lr": t.lr * p.lr_scale}
        return FineTuneRecipe.from_params(self.params, epochs, distill=p.distill, temperature=p.distill_temperature, **lr)

    def finetune(self, model: nn.Module, epochs: int, desc: str = "fine-tune") -> tuple[list[dict], float]:
        if epochs == 0 or not self.can_train:
            return [], 0.0
        t0 = time.perf_counter()
        history = finetune(model, self.dataset, self.spec, self.recipe(epochs), self.outputs, self.progress, desc=desc,
                           teacher=self.model)
        return history, time.perf_counter() - t0

    # --- unstructured ---------------------------------------------------------------------------

    def unstructured_sweep(self) -> tuple[pd.DataFrame, PrunedModel | None]:
        """Every criterion x scope x sparsity: accuracy with the masks made permanent; the l1 global
        series also after prune.unstructured_finetune_epochs of fine-tuning with the masks kept.
        Returns (table, the l1 global model at the highest sparsity, fine-tuned when that ran),
        the one chapter 06 times."""
        p = self.params.prune
        rows, measured = [], None
        for criterion in p.unstructured_criteria:
            for scope in p.unstructured_scopes:
                for sparsity in p.sparsities:
                    m = pruning.unstructured(self.model, sparsity, criterion, scope, self.keep, seed=self.params.finetune.seed)
                    tuned = criterion == "l1" and scope == "global" and p.unstructured_finetune_epochs > 0 and self.can_train
                    variants = [(False, m)]
                    seconds = 0.0
                    if tuned:
                        # a masked module cannot be deep-copied: prune afresh (deterministic for a seed)
                        ft = pruning.unstructured(self.model, sparsity, criterion, scope, self.keep, seed=self.params.finetune.seed)
                        _, seconds = self.finetune(ft, p.unstructured_finetune_epochs, f"fine-tune l1 {sparsity:.0%}")
                        variants.append((True, ft))
                    for finetuned, model in variants:
                        pruning.make_permanent(model)
                        table = pruning.sparsity_table(model, self.keep)
                        rows.append({"criterion": criterion, "scope": scope, "sparsity": sparsity, "finetuned": finetuned,
                                     "measured_sparsity": float(table.loc["global", "sparsity"]),
                                     "finetune_seconds": seconds if finetuned else 0.0, **self.accuracy_row(model)})
                    if criterion == "l1" and scope == "global" and sparsity == max(p.sparsities):
                        model = variants[-1][1]
                        measured = PrunedModel(
                            f"unstructured-l1-global-{round(sparsity * 100)}", model,
                            {"kind": "unstructured", "criterion": "l1", "scope": "global", "sparsity": sparsity,
                             "finetune_epochs": p.unstructured_finetune_epochs if variants[-1][0] else 0,
                             "finetune_seconds": seconds, "kept_whole": self.keep,
                             "sparsity_per_layer": table["sparsity"].to_dict(),
                             "storage": pruning.sparse_storage(model),
                             "macs_before": self.dense_macs, "macs_after": self.dense_macs, "macs_speedup": 1.0,
                             "parameters_before": self.dense_parameters, "parameters_after": self.dense_parameters,
                             "expected_speedup": "none: zeros inside dense tensors run through the same dense kernels"},
                            seconds)
        return pd.DataFrame(rows), measured

    # --- structured -----------------------------------------------------------------------------

    def _gradient_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`n` batches of 32 training images (drawn with finetune.seed) with their labels."""
        if not self.can_train:
            return []
        train = self.dataset.train
        rng = np.random.default_rng(self.params.finetune.seed)
        idx = rng.choice(len(train), size=min(len(train), n * 32), replace=False)
        x = preprocess([train.images[i] for i in idx], self.spec)
        y = torch.from_numpy(np.asarray(train.labels)[idx].astype(np.int64))
        return [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]

    def prune(self, plan: pruning.StructuredPlan, epochs: int, step_epochs: int | None = None) -> PrunedModel:
        """Structured pruning under `plan`, accuracy before fine-tuning, then `epochs` of fine-tuning
        (iterative plans fine-tune `step_epochs`, default `epochs`, after each earlier step)."""
        steps_log = []
        step_epochs = epochs if step_epochs is None else step_epochs

        def between(model, step):
            before = self.accuracy_row(model)["accuracy"]
            _, secs = self.finetune(model, step_epochs, f"fine-tune step {step}")
            steps_log.append({"step": step, "accuracy_before_finetune": before,
                              "accuracy_after_finetune": self.accuracy_row(model)["accuracy"], "finetune_seconds": secs})

        t0 = time.perf_counter()
        model, info = pruning.structured(self.model, self.example, plan, self._gradient_batches(self.params.prune.taylor_batches),
                                         self.outputs.loss, between)
        prune_s = time.perf_counter() - t0 - sum(s["finetune_seconds"] for s in steps_log)
        before = self.accuracy_row(model)["accuracy"]
        hist, secs = self.finetune(model, epochs, f"fine-tune {plan.label()}")
        steps_log.append({"step": plan.steps, "accuracy_before_finetune": before,
                          "accuracy_after_finetune": self.accuracy_row(model)["accuracy"], "finetune_seconds": secs})
        total_ft = sum(s["finetune_seconds"] for s in steps_log)
        info.update(finetune_epochs=epochs, step_finetune_epochs=step_epochs if plan.steps > 1 else None,
                    finetune_epochs_total=total_epochs(plan.steps, epochs, step_epochs), finetune_seconds=total_ft,
                    prune_seconds=prune_s, steps_log=steps_log, recipe=self.recipe(epochs).to_dict())
        return PrunedModel(f"structured-{plan.label()}", model, info, total_ft, hist)

    def plan(self, criterion: str, ratio: float, scope: str = "layer", round_to="params", steps: int = 1) -> pruning.StructuredPlan:
        p = self.params.prune
        return pruning.StructuredPlan(criterion, ratio, scope, p.round_to if round_to == "params" else round_to, steps, self.keep)

    def structured_sweep(self) -> tuple[pd.DataFrame, dict[str, PrunedModel]]:
        """Every criterion over the ratios per layer, the main criterion with one global threshold,
        and the main criterion at prune.unrounded_ratio with and without rounding; each fine-tuned
        for prune.finetune_epochs. Returns (table, models by label)."""
        p = self.params.prune
        main = p.criteria[0]
        plans = [self.plan(c, r, "layer") for c in p.criteria for r in p.ratios if "layer" in p.scopes]
        plans += [self.plan(main, r, "global") for r in p.ratios if "global" in p.scopes]
        if p.measure_unrounded and p.round_to is not None:
            if not ("layer" in p.scopes and p.unrounded_ratio in p.ratios):
                plans.append(self.plan(main, p.unrounded_ratio, "layer"))
            plans.append(self.plan(main, p.unrounded_ratio, "layer", round_to=None))
        if not self.can_train:  # taylor scores channels by training-loss gradients
            plans = [pl for pl in plans if pl.criterion != "taylor"]
        models, rows = {}, []
        for plan in plans:
            pm = self.prune(plan, p.finetune_epochs)
            models[pm.label] = pm
            log = pm.pruning["steps_log"][-1]
            rows.append({"label": pm.label, "criterion": plan.criterion, "scope": plan.scope, "ratio": plan.ratio,
                         "round_to": plan.round_to, "macs_m": pm.pruning["macs_after"] / 1e6,
                         "parameters_m": pm.pruning["parameters_after"] / 1e6, "macs_speedup": pm.pruning["macs_speedup"],
                         "accuracy_before_finetune": log["accuracy_before_finetune"],
                         "finetune_seconds": pm.finetune_seconds, **self.accuracy_row(pm.model)})
        return pd.DataFrame(rows).set_index("label"), models

    def iterative(self) -> PrunedModel | None:
        """The main criterion to prune.iterative_ratio in prune.iterative_steps steps, fine-tuning
        prune.step_finetune_epochs after every step but the last and prune.finetune_epochs after
        it (None when prune.iterative_steps is 0)."""
        p = self.params.prune
        if p.iterative_steps == 0:
            return None
        return self.prune(self.plan(p.criteria[0], p.iterative_ratio, "layer", steps=p.iterative_steps), p.finetune_epochs,
                          p.step_finetune_epochs)

    def dense_control(self) -> PrunedModel:
        """The unpruned model fine-tuned with the same recipe for as many epochs as the most
        fine-tuned pruned model got in all (the iterative one), so that accuracy gained from extra
        training is not credited to pruning."""
        p = self.params.prune
        epochs = total_epochs(p.iterative_steps, p.finetune_epochs, p.step_finetune_epochs)
        m = copy.deepcopy(self.model)
        hist, secs = self.finetune(m, epochs, "fine-tune dense control")
        return PrunedModel("dense-finetuned", m, {"kind": "none (dense control)", "finetune_epochs": epochs,
                                                   "finetune_seconds": secs, "recipe": self.recipe(epochs).to_dict(),
                                                   "macs_before": self.dense_macs, "macs_after": self.dense_macs,
                                                   "macs_speedup": 1.0, "parameters_before": self.dense_parameters,
                                                   "parameters_after": self.dense_parameters}, secs, hist)

    # --- runners --------------------------------------------------------------------------------

    def calibration(self) -> tuple[torch.Tensor, dict]:
        """04's calibration recipe: quant.calibration_size training images drawn with quant.seed."""
        q = self.params.quant
        images, paths_ = calibration_set(self.dataset, q.calibration_size, q.seed)
        return preprocess(images, self.spec), {"seed": q.seed, "source": "training side", "first_images": paths_[:3]}

    @property
    def openvino(self) -> bool:
        """Pruned models also through NNCF INT8 on OpenVINO (with prune.int8, where it imports)."""
        return self.int8 and openvino.unavailable() is None

    def runners(self, pm: PrunedModel | None,
                backends: tuple[str, ...] = ("pytorch", "onnxruntime-fp32", "onnxruntime-int8", "openvino-int8")) -> list:
        """The measured configurations of one model (None: the unpruned model, named as 01, 02 and
        04 name it): PyTorch eager, ONNX Runtime FP32 over its exported graphs, ONNX Runtime static
        INT8 (quant.method, 04's main configuration) and OpenVINO NNCF INT8 (04's calibration images)
        with their kernel evidence; each INT8 one also at every prune.ort_threads."""
        P = self.params
        ort_config = OrtConfig.from_params(P)
        main = int8_onnx.StaticQuantConfig.from_params(P)
        out: list = []
        model = self.model if pm is None else pm.model
        prefix = "" if pm is None else f"{pm.label}-"
        details = {} if pm is None else {"pruning": {k: v for k, v in pm.pruning.items() if k != "steps_log"},
                                         "pruning_steps": pm.pruning.get("steps_log", [])}
        costs = {} if pm is None else {"fine-tune": pm.finetune_seconds}
        if "pytorch" in backends:
            if pm is None:
                r = TorchRunner(model, self.spec, threads=P.bench.threads)
                out.append(r.annotate(size_bytes=state_dict_size_bytes(model), artifact=self.eager))
            else:
                out.append(pruning.eager_runner(model, f"{prefix}pytorch-fp32", self.eager, self.out_dir, P.bench.threads,
                                                details["pruning"], costs).annotate(pruning_steps=details["pruning_steps"]))
        onnx_backends = [b for b in backends if b.startswith(("onnxruntime", "openvino"))]
        if onnx_backends:
            graphs = int8_onnx.fp32_graphs(model, self.example.expand(2, -1, -1, -1).clone(), self.out_dir / (pm.label if pm else "dense"),
                                           ExportConfig.from_params(P))
            if "onnxruntime-fp32" in backends:
                r = int8_onnx.fp32_runner(graphs, self.spec, ort_config, name=f"{prefix}onnxruntime-fp32")
                out.append(r.annotate(one_time_cost_seconds=costs, **details))
            if "onnxruntime-int8" in backends and self.int8:
                x, info = self.calibration()
                calib = int8_onnx.calibrate_graphs(graphs, x, main.method, info)
                name = DENSE_INT8.format(label=main.label()) if pm is None else f"{prefix}onnxruntime-int8"
                r = int8_onnx.static_runner(graphs, calib, main, self.spec, ort_config, name=name)
                out.append(r.annotate(one_time_cost_seconds=costs, **details))
                out += [r.with_threads(t, f"{name}-{t}thread") for t in P.prune.ort_threads if t != P.bench.threads]
            if "openvino-int8" in backends and self.openvino:
                x, info = self.calibration()
                name = DENSE_OPENVINO_INT8 if pm is None else f"{prefix}openvino-int8"
                r = int8_nncf.runner(graphs.paths["model"], x.numpy(), graphs.out_dir / f"{name}.xml", self.spec,
                                     P.bench.threads, name=name, calibration_info=info, one_time_cost_seconds=costs,
                                     **details)
                out += [r] + [r.with_threads(t, f"{name}-{t}thread") for t in P.prune.ort_threads if t != P.bench.threads]
        for r in out:
            if pm is not None:
                r.technique = "pruning"
        return out


    def dense_int8_name(self) -> str:
        return DENSE_INT8.format(label=int8_onnx.StaticQuantConfig.from_params(self.params).label())

    def references(self) -> list[str]:
        """The unpruned configurations every measured one is compared with (same run)."""
        return ["pytorch-fp32", "onnxruntime-fp32"] + self.dense_int8_names()

    def dense_int8_names(self) -> list[str]:
        """The unpruned INT8 configurations (ONNX Runtime static, and OpenVINO's NNCF where it runs)
        at bench.threads and at each prune.ort_threads."""
        if not self.int8:
            return []
        P = self.params
        names = [self.dense_int8_name()] + ([DENSE_OPENVINO_INT8] if self.openvino else [])
        return [f"{n}{suffix}" for n in names for suffix in
                [""] + [f"-{t}thread" for t in P.prune.ort_threads if t != P.bench.threads]]

    def reference_of(self, runner_or_record) -> str:
        """The unpruned configuration of the same backend and precision."""
        r = runner_or_record
        if r.backend == "pytorch":
            return "pytorch-fp32"
        if r.backend == "openvino":
            return DENSE_OPENVINO_INT8
        return self.dense_int8_name() if r.precision == "int8" else "onnxruntime-fp32"

    def measured_runners(self, unstructured: PrunedModel | None, structured: dict[str, PrunedModel],
                         iterative: PrunedModel | None, control: PrunedModel | None) -> list:
        """What chapter 06 times side by side: the unpruned model on every backend; the
        unstructured model on eager and ONNX Runtime FP32 (no speed-up expected); the main
        criterion at every ratio of the sweep's scope (per layer when prune.scopes has it, else
        global) on ONNX Runtime FP32 and INT8, the middle per-layer ratio on every backend; the
        global threshold at the middle ratio beside a per-layer sweep, and the rounded / unrounded
        pair; the iterative model on every backend; the dense control on ONNX Runtime FP32 and INT8."""
        p = self.params.prune
        # OpenVINO's INT8 on the models every backend sees (unpruned, the middle per-layer ratio, the
        # iterative model): on the pruned graphs it ran at 0.70x ONNX Runtime's (2026-12-06), and each
        # further model costs a quantization, a compile and a timed configuration per thread count.
        all3 = ("pytorch", "onnxruntime-fp32", "onnxruntime-int8", "openvino-int8")
        ort = ("onnxruntime-fp32", "onnxruntime-int8")
        main, mid = p.criteria[0], middle(p.ratios)
        sweep = "layer" if "layer" in p.scopes else "global"  # every ratio of this scope is measured
        chosen: list[tuple[PrunedModel | None, tuple]] = [(None, all3)]
        if unstructured is not None:
            chosen.append((unstructured, ("pytorch", "onnxruntime-fp32")))
        for label, pm in structured.items():
            info = pm.pruning
            if info["criterion"] != main or (info["scope"] != sweep and info["ratio"] != mid):
                continue
            per_layer_rounded = info["scope"] == "layer" and info["round_to"] == p.round_to
            chosen.append((pm, all3 if per_layer_rounded and info["ratio"] == mid else ort))
        chosen += [(pm, b) for pm, b in ((iterative, all3), (control, ort)) if pm is not None]
        return [r for pm, backends in chosen for r in self.runners(pm, backends)]


def middle(values: list[float]) -> float:
    """The middle value of a sweep (the lower middle for an even count)."""
    s = sorted(values)
    return s[(len(s) - 1) // 2]


def recovery_table(models: list[PrunedModel]) -> pd.DataFrame:
    """Accuracy before and after fine-tuning at every pruning step of each model."""
    rows = []
    for pm in models:
        for s in pm.pruning.get("steps_log", []):
            rows.append({"model": pm.label, **s})
    return pd.DataFrame(rows)


def total_epochs(steps: int, epochs: int, step_epochs: int | None = None) -> int:
    """Fine-tuning epochs a model gets in all: `step_epochs` (default `epochs`) after each step but
    the last, `epochs` after it (one-shot pruning: one step)."""
    return epochs + max(steps - 1, 0) * (epochs if step_epochs is None else step_epochs)


def findings(m, study: PruningStudy, unstructured: PrunedModel | None, control: PrunedModel | None,
             best: str | None, ties: list[str], profiles: dict[str, pd.DataFrame]) -> list[str]:
    """Chapter 06's discussion, one paragraph per finding, from one measure call (`m`,
    measurement.experiment.Measurement), the budget pick and its ties, and the operator profiles."""
    from ..results.compare import same_run_ratio

    R, P, lines = m.records, study.params, []
    if unstructured is not None and f"{unstructured.label}-pytorch-fp32" in R:
        u, st = unstructured.label, unstructured.pruning["storage"]
        ratios = {b: same_run_ratio(m.latency_samples, study.reference_of(R[n]), n)
                  for b, n in (("eager", f"{u}-pytorch-fp32"), ("ONNX Runtime FP32", f"{u}-onnxruntime-fp32")) if n in R}
        lines.append(f"Unstructured, {unstructured.pruning['sparsity']:.0%} of the weights zero (l1, global): speed against the "
                     "dense model " + "; ".join(f"{b} {r} ({r.verdict()})" for b, r in ratios.items())
                     + ". Dense kernels multiply the zeros too. The file does not shrink "
                     f"({R[f'{u}-pytorch-fp32'].size_bytes / 1e6:.1f} MB); stored sparsely it would take "
                     f"{st['bitmask_bytes'] / st['dense_bytes']:.0%} (non-zero values + a bitmask), gzip of the dense file "
                     f"{st['gzip_bytes'] / st['dense_bytes']:.0%}.")
    pruned = [r for r in R.values() if r.extra.get("pruning", {}).get("kind") == "structured"]
    kept = {r.extra["pruning"].get("attention_kept_whole") for r in pruned} - {None}
    lines += [f"Structured pruning of this transformer: {k}." for k in kept]
    for r in sorted(pruned, key=lambda r: r.extra["pruning"]["macs_speedup"]):
        heads = r.extra["pruning"].get("attention_heads")
        if heads and r.backend == "onnxruntime" and r.precision == "fp32":
            counts = sorted({tuple(v) for v in heads.values()})
            lines.append(f"`{r.name}`: attention heads removed in {len(heads)} attention module(s), "
                         + ", ".join(f"{a} -> {b}" for a, b in counts) + " (lowest L2 norm first; the residual "
                         "stream and the MLPs' inputs and outputs keep their width).")
    for r in sorted(pruned, key=lambda r: r.extra["pruning"]["macs_speedup"]):
        pr = r.extra["pruning"]
        if r.precision == "fp32" and r.backend == "onnxruntime":
            rec = pr.get("recipe") or {}
            how = (f"{pr['finetune_epochs_total']} epochs ({pr['finetune_seconds']:.0f} s) of fine-tuning at a peak rate of "
                   f"{rec['lr']:g}" + (f", distilled from the unpruned model (weight {rec['distill']:g}, temperature "
                                       f"{rec['temperature']:g})" if rec.get("distill") else "")
                   if "finetune_epochs_total" in pr and rec else f"{pr['finetune_seconds']:.0f} s of fine-tuning")
            lines.append(f"`{r.name}`: {pr['macs_after'] / 1e6:.1f} M MACs ({pr['macs_speedup']:.2f}x fewer), ONNX Runtime FP32 "
                         f"{r.speedup('onnxruntime-fp32')}, accuracy {r.accuracy['accuracy']:.2%} (change against FP32 "
                         f"{r.fidelity.describe_change() if r.fidelity else 'not measured'}) after {how}.")
    rounded = f"structured-{P.prune.criteria[0]}-{round(P.prune.unrounded_ratio * 100)}"
    for b in ("onnxruntime-fp32", "onnxruntime-int8", "openvino-int8"):
        a, raw = f"{rounded}-{b}", f"{rounded}-unrounded-{b}"
        if a in R and raw in R:
            r = same_run_ratio(m.latency_samples, raw, a)
            widths = {n: sorted({c[1] for c in R[n].extra["pruning"]["channels"].values()}) for n in (a, raw)}
            lines.append(f"Channel counts rounded to multiples of {P.prune.round_to} at ratio {P.prune.unrounded_ratio:g} "
                         f"(widths {widths[a]} against {widths[raw]}), {b}: rounded runs at {r} the speed of unrounded "
                         f"({r.verdict()}).")
    if control is not None and "dense-finetuned-onnxruntime-fp32" in R:
        c = R["dense-finetuned-onnxruntime-fp32"]
        lines.append(f"Dense control (unpruned, {control.pruning['finetune_epochs']} epochs of the same fine-tuning): accuracy "
                     f"{c.accuracy['accuracy']:.2%}, change against FP32 {c.fidelity.describe_change()}; a pruned model's gain "
                     "over the unpruned one up to this much is extra training, not pruning.")
    fastest = {b: min((r for r in pruned if r.backend == b and r.precision == "int8"), key=lambda r: r.latency.median, default=None)
               for b in ("onnxruntime", "openvino")}
    if all(fastest.values()):
        o, v = fastest["onnxruntime"], fastest["openvino"]
        lines.append(f"Fastest pruned INT8 per runtime: ONNX Runtime `{o.name}` {o.latency.median:.3f} ms, OpenVINO `{v.name}` "
                     f"{v.latency.median:.3f} ms (same run: `{v.name}` at {same_run_ratio(m.latency_samples, o.name, v.name)} "
                     f"the speed of `{o.name}`); against eager FP32 {o.speedup('pytorch-fp32')} and {v.speedup('pytorch-fp32')}.")
    budget = P.quant.max_accuracy_drop
    if best:
        b, stages = R[best], R[best].latency_ms
        against_int8 = ", ".join(f"{b.speedup(n)} `{n}`" for n in study.dense_int8_names() if n != best and b.speedup(n))
        lines.append(f"Within the budget of {budget:.1%} (verdict **{b.verdict.label}**: {b.verdict.why}) the fastest configuration is "
                     f"**{best}** ({b.kernels.label if b.kernels else 'float'} kernels): {b.latency.median:.3f} ms at batch "
                     f"{b.batch_size}, {b.speedup('pytorch-fp32')} eager FP32"
                     + (f"; against the other unpruned INT8 configurations: {against_int8}" if against_int8 else "")
                     + f"; size {b.size_bytes / 1e6:.2f} MB; accuracy change {b.fidelity.describe_change()}."
                     + (f" Of its latency, preprocessing (its own stage) takes {stages['preprocessing'].median:.3f} ms."
                        if "preprocessing" in stages else ""))
        if b.fidelity.operating_point is not None:
            lines.append(f"Its operating point against FP32: {b.fidelity.operating_point.describe()}.")
        if ties:
            lines.append("Inside the budget and not distinguishable from it in batch-1 latency: " + ", ".join(ties) + ".")
        threads = [(n.rsplit("-", 1)[0], n) for n in R if n.endswith("thread") and n.rsplit("-", 1)[0] in R]
        if threads:
            lines.append("Inference threads, same graphs (speed against the bench.threads twin): "
                         + "; ".join(f"`{t}` {same_run_ratio(m.latency_samples, n, t)}" for n, t in threads
                                     if best in (n, t) or n in study.dense_int8_names()) + ".")
    else:
        lines.append(f"No configuration is shown within {budget:.1%} by its evidence (the paired interval, or the label-free "
                     "pool for models that were not fine-tuned): see the budget table and its verdicts.")
    for n, t in profiles.items():
        lines.append(f"`{n}`: {t.loc['all operators', 'us_per_call']:.0f} us per call in operators, "
                     f"{t.loc['outside operators', 'share_of_run']:.0%} of the run outside them.")
    return lines
