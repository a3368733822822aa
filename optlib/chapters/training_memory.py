"""Chapter 08's experiment: every training configuration's gradients, estimate, memory per batch
size (child processes), step time (interleaved trials, one child per batch size), largest batch under the budget, and
one record each (technique `training-memory`). The mechanics live in measurement.training_memory.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..backends.artifacts import Artifact, relative_to
from ..core import env, paths
from ..measurement.stats import paired_ratio, summarize
from ..results.records import Record, write_record
from ..results.values import Memory, to_plain
from ..workload.data import preprocess
from ..measurement import training_memory as tm

TECHNIQUE = "training-memory"
MAX_SAVED_IMAGES = 512  # preprocessed images handed to the children; larger batches repeat them


@dataclass
class Plan:
    """What the chapter measures: the runnable configurations, the skipped ones with their reason,
    the child job, the images the steps train on, and per configuration the estimate and the
    gradient check."""
    configs: list[tm.TrainConfig]
    skipped: dict[str, str]
    job: tm.ChildJob
    images: torch.Tensor
    labels: torch.Tensor
    source: str  # which images the steps train on
    artifact: Artifact  # the eager model the children rebuild, relative to the target's folder
    estimates: dict[str, tm.Estimate] = field(default_factory=dict)
    gradients: dict[str, dict] = field(default_factory=dict)
    segment_estimates: dict[int, int] = field(default_factory=dict)  # sequential: held bytes per segment count


def _checkpointed(ch, config) -> list[str] | None:
    """The module paths a stage / block / custom configuration checkpoints (None for none and
    sequential, whose record names its segment count instead)."""
    from ..techniques.checkpointing import checkpoint_paths

    if config.checkpoint in ("none", "sequential"):
        return None
    return checkpoint_paths(ch.model, config, ch.model_info.head)


def plan(ch) -> Plan:
    """Configurations of `memory.*`: skipped where this device cannot run them (a record each) or
    where the model has nothing the granularity can checkpoint; `sequential` gets the segment
    count with the least estimated memory. Writes the training images for the children under the
    chapter's artifacts."""
    P, M = ch.params, ch.params.memory
    split = ch.dataset.train if ch.dataset.train is not None and len(ch.dataset.train) else ch.dataset.test
    source = "training split" if split is ch.dataset.train else "evaluated images (no training split; nothing is evaluated here)"
    n = min(len(split), MAX_SAVED_IMAGES, max(M.batch_sizes))
    images = preprocess(split.images[:n], ch.spec)
    labels = torch.from_numpy(np.asarray(split.labels[:n], dtype=np.int64))
    base = paths.target_dir(P.target)
    np.save(ch.artifacts_dir / "train-images.npy", images.numpy())
    np.save(ch.artifacts_dir / "train-labels.npy", labels.numpy())
    artifact = relative_to(ch.eager_runner().artifact, base)
    job = tm.ChildJob(to_plain(artifact), str(base), str(ch.artifacts_dir / "train-images.npy"),
                      str(ch.artifacts_dir / "train-labels.npy"), asdict(ch.outputs), ch.model_info.head, M.optimizer,
                      P.train.lr * P.finetune.lr_scale, P.bench.threads, P.device, M.steps)
    out = Plan([], {}, job, images, labels, source, artifact)
    gx, gy = images[:M.gradient_batch], labels[:M.gradient_batch]
    for config in tm.configurations(P):
        reason = tm.unavailable_reason(config, P.device)
        try:
            if reason is None and config.checkpoint == "sequential" and config.segments is None:
                best, held = tm.choose_segments(ch.model, ch.model_info.head, ch.outputs, images[:4], labels[:4],
                                                config.precision)
                out.segment_estimates = out.segment_estimates or held
                config = tm.TrainConfig(config.precision, "sequential", segments=best)
            if reason is None:
                out.gradients[config.name] = tm.gradient_agreement(ch.model, config, ch.model_info.head, ch.outputs,
                                                                   gx, gy)
                out.estimates[config.name] = tm.estimate(ch.model, config, ch.model_info.head, ch.outputs, images,
                                                         labels, M.optimizer)
        except tm.CheckpointingError as e:
            reason = str(e)
        if reason is not None:
            out.skipped[config.name] = reason
            ch.skip(config.name, TECHNIQUE, "pytorch", config.record_precision, reason,
                    extra={"training": {"config": config.to_dict()}})
            continue
        out.configs.append(config)
    return out


def memory_sweep(p: Plan, batch_sizes: list[int], progress: bool = True) -> dict[str, dict[int, tm.StepMemory]]:
    """Each configuration at each batch size in its own child process."""
    from tqdm.auto import tqdm

    out: dict[str, dict[int, tm.StepMemory]] = {}
    with tqdm(total=len(p.configs) * len(batch_sizes), desc="memory children", disable=not progress,
              mininterval=10) as bar:
        for config in p.configs:
            out[config.name] = {}
            for bs in batch_sizes:
                out[config.name][bs] = tm.measure_step_memory(p.job, config, bs)
                bar.update()
    return out


def too_big_to_time(sweep: dict[str, dict[int, tm.StepMemory]], batch_sizes: list[int],
                    available: int | None) -> dict[int, str]:
    """{batch size: why} for the batch sizes whose largest child peak is over three quarters of
    `available` bytes (the rest is for the timing child's other configurations and heap)."""
    out = {}
    for bs in batch_sizes:
        peaks = [runs[bs].peak_bytes for runs in sweep.values() if bs in runs and runs[bs].peak_bytes]
        if peaks and available is not None and max(peaks) > 0.75 * available:
            out[bs] = (f"a step's child peak {max(peaks) / 1e9:.1f} GB is over three quarters of the "
                       f"{available / 1e9:.1f} GB available")
    return out


def step_times(ch, p: Plan, sweep: dict[str, dict[int, tm.StepMemory]] | None = None,
               progress: bool = True) -> tuple[dict[int, dict[str, list[np.ndarray]]], dict[int, str]]:
    """Training-step times (ms) of every configuration at each batch size, interleaved in one child
    process per batch size (measurement.training_memory.measure_step_times): whatever a batch size
    costs in memory, it cannot take the chapter's process down with it. A batch size whose largest
    child peak in `sweep` is more than this machine has available is not timed.
    Returns ({batch size: {name: [one array per trial]}}, {batch size not timed: why})."""
    from tqdm.auto import tqdm

    from ..measurement.memory import available_bytes

    M = ch.params.memory
    not_timed = too_big_to_time(sweep or {}, M.batch_sizes, available_bytes())
    out = {}
    for bs in tqdm([b for b in M.batch_sizes if b not in not_timed], desc="training-step timing children",
                   disable=not progress):
        t = tm.measure_step_times(p.job, p.configs, bs, M.warmup_steps, M.trials, M.steps_per_trial)
        if t.error is not None:
            not_timed[bs] = t.error
            continue
        out[bs] = {name: [np.asarray(trial) for trial in trials] for name, trials in t.samples.items()}
    return out, not_timed


def largest_batches(ch, p: Plan, sweep: dict[str, dict[int, tm.StepMemory]],
                    progress: bool = True) -> dict[str, tm.BatchSearch]:
    """The largest batch under `memory.budget_gib` for each configuration: the sweep's results,
    then probes in capped child processes (measurement.training_memory.largest_batch)."""
    M = ch.params.memory
    budget = int(M.budget_gib * tm.GIB)
    out = {}
    for config in p.configs:
        def probe(bs, config=config):
            r = tm.measure_step_memory(p.job, config, bs, limit_bytes=budget)
            return r.fits(budget), r.peak_bytes, r.status

        known = {bs: (r.fits(budget), r.peak_bytes) for bs, r in sweep[config.name].items() if r.status == "ok"}
        out[config.name] = tm.largest_batch(probe, known, budget, M.batch_resolution, M.max_batch, M.search_probes)
        if progress:
            s = out[config.name]
            print(f"{config.name}: fits {s.fits}, fails {s.fails} ({len(s.probes)} probes)")
    return out


def write_records(ch, p: Plan, sweep, times, searches, not_timed: dict[int, str] | None = None) -> dict[str, Record]:
    """One record per configuration: the peak at the largest batch in `memory`, and in
    extra.training the rows per batch size (peak, resting, estimate, step time with its interval,
    images per second, paired speed against the same precision without checkpointing and against
    FP32), the gradient check, the estimate and the largest-batch search; speed-ups as Ratios of
    metric `training-step`."""
    P, M = ch.params, ch.params.memory
    records = {}
    for config in p.configs:
        e = p.estimates[config.name]
        # against itself too (a ratio of 1 from the same samples), as every chapter's reference has
        refs = [n for n in dict.fromkeys([config.plain.name, "train-fp32"]) if n in sweep]
        rows, speedups = [], []
        for bs, r in sweep[config.name].items():
            row = {"batch_size": bs, "status": r.status, "error": r.error, "peak_bytes": r.peak_bytes,
                   "resting_bytes": r.resting_bytes, "above_resting_bytes": r.above_resting_bytes,
                   "estimate_step_bytes": e.step(bs), "estimate_activation_bytes": e.activations(bs)}
            if r.status == "ok":
                measured_act = r.above_resting_bytes - e.gradient_bytes - e.optimizer_state_bytes
                row.update(measured_activation_bytes=measured_act,
                           estimate_error=e.activations(bs) / measured_act - 1 if measured_act > 0 else None)
                plain = sweep.get(config.plain.name, {}).get(bs)
                if config.checkpoint != "none" and plain is not None and plain.status == "ok":
                    row["cut_vs_plain"] = 1 - r.above_resting_bytes / plain.above_resting_bytes
            if bs in (not_timed or {}):
                row["step_time_not_measured"] = not_timed[bs]
            if bs in times:
                s = summarize(times[bs][config.name])
                row.update(step_ms=s.median, step_ms_ci95=list(s.ci95), images_per_s=bs / s.median * 1e3)
                for ref in refs:
                    ratio = paired_ratio(times[bs][ref], times[bs][config.name], reference=ref, metric="training-step",
                                         batch_size=bs)
                    speedups.append(ratio)
                    row[f"speed_vs_{ref}"] = ratio.value
                    row[f"speed_vs_{ref}_ci95"] = [float(v) for v in ratio.ci95]
            rows.append(row)
        largest = max(bs for bs, r in sweep[config.name].items() if r.status == "ok") if any(
            r.status == "ok" for r in sweep[config.name].values()) else None
        top = sweep[config.name].get(largest)
        search = searches.get(config.name)
        rec = Record(
            target=P.target, notebook=ch.notebook, name=config.name, technique=TECHNIQUE, backend="pytorch",
            precision=config.record_precision, status="ok" if top is not None else "failed",
            reason=None if top is not None else "no batch size ran: " + "; ".join(
                f"{bs}: {r.error}" for bs, r in sweep[config.name].items()),
            device=env.device_info(P.device, P.bench.threads), speedups=speedups,
            memory=Memory(top.peak_bytes, top.resting_bytes, tm.METHOD.format(steps=M.steps), [largest],
                          top.cuda_peak_allocated_bytes) if top is not None else None,
            artifact=p.artifact,
            settings={"threads": P.bench.threads, "optimizer": M.optimizer, "lr": p.job.lr,
                      "allocator": tm.CHILD_ENV, "steps_per_child": M.steps},
            environment=env.environment(P.hash()),
            extra={"training": {"config": config.to_dict(), "checkpointed": _checkpointed(ch, config),
                                "plain": config.plain.name, "images": p.source, "rows": rows,
                                "gradients": p.gradients[config.name], "estimate": asdict(e),
                                "largest_batch": asdict(search) if search else None,
                                "budget_gib": M.budget_gib}})
        write_record(rec)
        records[config.name] = rec
    return records


def findings(records: dict[str, Record], params, skipped: dict[str, str]) -> str:
    """The chapter's discussion, from the records just written."""
    M = params.memory
    lines = []
    ok = {n: r for n, r in records.items() if r.ok}
    for name, r in ok.items():
        t = r.extra["training"]
        rows = [row for row in t["rows"] if row["status"] == "ok"]
        if not rows:
            continue
        big = max(rows, key=lambda row: row["batch_size"])
        cfg, plain = tm.TrainConfig.from_dict(t["config"]), t["plain"]
        parts = [f"**{name}** at batch {big['batch_size']}: {big['above_resting_bytes'] / 1e6:.0f} MB above resting "
                 f"(estimate {big['estimate_step_bytes'] / 1e6:.0f} MB, activations "
                 f"{(big.get('estimate_error') or 0):+.0%} against the measured activation share)"]
        if "cut_vs_plain" in big:
            parts.append(f"{big['cut_vs_plain']:.0%} less than {plain}")
        if cfg.checkpoint != "none" and f"speed_vs_{plain}" in big:
            lo, hi = big[f"speed_vs_{plain}_ci95"]
            parts.append(f"step speed {big[f'speed_vs_{plain}']:.2f}x {plain} [{lo:.2f}, {hi:.2f}]")
        if cfg.precision != "fp32" and "speed_vs_train-fp32" in big:
            lo, hi = big["speed_vs_train-fp32_ci95"]
            parts.append(f"{big['speed_vs_train-fp32']:.2f}x train-fp32 [{lo:.2f}, {hi:.2f}]")
        g = t["gradients"]
        if "equal" in g:
            parts.append(f"gradients {'equal' if g['equal'] else 'NOT equal'} to {g['against']} (relative L2 "
                         f"{g['relative_l2']:.1e}, tolerance {g['tolerance']:.0e})")
        if "against_fp32" in g:
            parts.append(f"against FP32 gradients relative L2 {g['against_fp32']['relative_l2']:.2f}, cosine "
                         f"{g['against_fp32']['cosine']:.3f} (reduced precision changes them by design)")
        s = t["largest_batch"]
        if s:
            parts.append(f"largest batch under {M.budget_gib:g} GiB: {s['fits']}"
                         + (f" ({s['fails']} does not fit)" if s["fails"] else " (no failure up to memory.max_batch)")
                         + ("" if s["resolved"] else f", unresolved after {len(s['probes'])} probes"))
        if cfg.checkpoint == "sequential":
            parts.append(f"{cfg.segments} segments (least estimated memory)")
        lines.append("; ".join(parts) + ".")
    lines += [f"`{n}` skipped: {why}" for n, why in skipped.items()]
    return "\n\n".join(lines)
