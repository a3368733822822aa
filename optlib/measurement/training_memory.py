"""Training memory (chapter 08): what a training step holds, what cuts it, what the cut costs in
step time, and the largest batch that fits a memory budget.

A configuration (`TrainConfig`) is a training precision (fp32; bf16-autocast; fp16-autocast with a
GradScaler, CUDA only) and where activations are recomputed instead of stored: nowhere, or a
granularity of techniques.checkpointing (stage, block, sequential, custom).

- Memory: each (configuration, batch size) runs in its own child process (`python -m
  optlib.measurement.training_memory`), which rebuilds the model from its artifact, makes the batch
  and the optimizer, resets its peak resident memory (/proc/self/clear_refs) and reads the resting
  memory, runs a few training steps and reads the peak (VmHWM); on CUDA max_memory_allocated and
  reserved after a reset. The children run with glibc's mmap threshold fixed (`CHILD_ENV`): with
  the default dynamic threshold freed tensors stay in the heap, and block checkpointing read a
  higher peak than no checkpointing (818 against 800 MB for ResNet18, 64x64, batch 256; with the
  threshold fixed 436 against 553 MB).
- Time: one child process per batch size with every configuration in it, interleaved per trial
  (same inputs, threads and allocator: the default one a training process has), so the cost of
  checkpointing is a paired same-run ratio; a batch size that runs out of memory there loses its
  times, not the chapter.
- Estimate: the tensors autograd saves in one forward (saved_tensors_hooks, counted once per
  storage, parameters and the batch excluded) at two batch sizes, extended linearly, plus gradients and optimizer
  state; for checkpointed configurations what is saved outside the checkpointed segments, their
  inputs, and the largest segment (recomputed during backward).
- Largest batch: child processes probe batch sizes (`largest_batch`) under a memory cap
  (RLIMIT_AS; on CUDA the allocator's memory fraction); running out of memory is a result.
"""
from __future__ import annotations

import gc
import json
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core.choices import CHECKPOINT_GRANULARITIES, TRAIN_OPTIMIZERS, TRAIN_PRECISIONS, check_choice
from ..core.env import bf16_kernels_on_cpu
from ..techniques.checkpointing import (ChainForward, CheckpointingError, body_chain,  # noqa: F401 (re-exported)
                                        checkpoint_paths, trainable)
from ..workload.models import resolve_module
from ..workload.outputs import Outputs
from .launcher import run_child
from .memory import proc_status_bytes, reset_peak

GIB = 1024 ** 3
# Child processes: glibc returns every tensor of 64 KiB or more to the system when it is freed, so
# resident memory follows the live tensors (module docstring).
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
# Extra virtual address space a child may map beyond its budget before an allocation fails: malloc
# arenas and thread stacks are reserved, not resident. The budget itself is judged on the peak.
CAP_SLACK_BYTES = 512 * 1024 ** 2
GRADIENT_RTOL = 1e-5  # checkpointed gradients "equal" the plain ones: relative L2 error at most this
DTYPES = {"fp32": None, "bf16-autocast": torch.bfloat16, "fp16-autocast": torch.float16}
METHOD = ("peak resident memory (VmHWM, reset after setup) of a fresh child process that rebuilds the model, makes "
          "the batch and the optimizer, then runs {steps} training steps; resting = its resident memory after "
          "setup; glibc mmap threshold fixed at 64 KiB so freed tensors leave the process")


@dataclass(frozen=True)
class TrainConfig:
    precision: str = "fp32"
    checkpoint: str = "none"  # none | CHECKPOINT_GRANULARITIES | custom
    segments: int | None = None  # sequential: checkpoint segments (set by choose_segments when None)
    modules: tuple[str, ...] = ()  # custom: the module paths checkpointed

    def __post_init__(self):
        check_choice("memory.precisions", self.precision, TRAIN_PRECISIONS)
        check_choice("memory.checkpoint", self.checkpoint, ("none", *CHECKPOINT_GRANULARITIES, "custom"))

    @property
    def name(self) -> str:
        base = f"train-{self.precision.replace('-autocast', '')}"
        return base if self.checkpoint == "none" else f"{base}-ckpt-{self.checkpoint}"

    @property
    def dtype(self):
        return DTYPES[self.precision]

    @property
    def plain(self) -> "TrainConfig":
        """The same precision without checkpointing (the reference of the gradient and time checks)."""
        return TrainConfig(self.precision)

    @property
    def record_precision(self) -> str:
        return self.precision.replace("-autocast", "")

    def to_dict(self) -> dict:
        return {**asdict(self), "modules": list(self.modules)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return cls(**{**d, "modules": tuple(d.get("modules", ()))})


def configurations(params) -> list[TrainConfig]:
    """Every configuration of `params.memory`: each precision without checkpointing, then with each
    granularity (and the custom module list, when given)."""
    m = params.memory
    out = []
    for precision in m.precisions:
        out.append(TrainConfig(precision))
        for g in m.checkpoint:
            out.append(TrainConfig(precision, g, segments=m.segments if g == "sequential" else None))
        if m.checkpoint_modules:
            out.append(TrainConfig(precision, "custom", modules=tuple(m.checkpoint_modules)))
    return out


def unavailable_reason(config: TrainConfig, device: str) -> str | None:
    if config.precision == "fp16-autocast" and device != "cuda":
        return ("FP16 autocast training with a GradScaler is a CUDA path: this CPU has no FP16 arithmetic (chapter 03 "
                "measures FP16 on it at a fraction of FP32's speed); run the cuda target")
    if config.precision == "bf16-autocast" and device == "cpu" and not bf16_kernels_on_cpu():
        # 35 s a step against 1.2 s in FP32 (ResNet18, batch 128, 64x64) on the AVX2-only EPYC of 2026-12-02:
        # the sweep, the timing and the search would take hours
        return ("BF16 autocast training on this CPU runs ATen's reference kernels (oneDNN has no BF16 kernels "
                "without AVX512-BF16 or AMX), an order of magnitude slower per step than FP32: not swept here; run it "
                "on a CPU with AVX512-BF16/AMX or on the cuda target")
    return None


def choose_segments(model: nn.Module, head: str | None, outputs: Outputs, x: torch.Tensor, y: torch.Tensor,
                    precision: str = "fp32") -> tuple[int, dict[int, int]]:
    """The segment count of `sequential` checkpointing with the least estimated activation memory
    (`saved_bytes` on `x`), from 2 up to the number of layers (at most 16), and every estimate."""
    chain = body_chain(model, head)
    n = len(chain)
    if n < 2:  # a wrapped backbone (self.backbone, then the head) is one module: nothing to cut into segments
        raise CheckpointingError(f"sequential checkpointing needs at least 2 layers before the head; this model has "
                                 f"{[name for name, _ in chain]}: use block or stage, or name modules in "
                                 "memory.checkpoint_modules")
    held = {s: saved_bytes(model, TrainConfig(precision, "sequential", segments=s), head, outputs, x, y)["held"]
            for s in range(2, min(n, 16) + 1)}
    return min(held, key=held.get), held


def make_optimizer(params, name: str, lr: float):
    check_choice("memory.optimizer", name, TRAIN_OPTIMIZERS)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


def optimizer_state_tensors(name: str) -> int:
    """State tensors per parameter: SGD's momentum, Adam's two moments."""
    return 2 if name == "adam" else 1


def train_step(module, optimizer, config: TrainConfig, outputs: Outputs, x, y, scaler=None):
    """One training step: zero the gradients (freed), forward and loss under the configuration's
    autocast, backward (scaled for FP16), optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=config.dtype or torch.bfloat16, enabled=config.dtype is not None):
        loss = outputs.loss(module(x), y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


def _gradients(model, config, head, outputs, x, y, sample):
    module, held = trainable(model, config, head, sample)
    torch.manual_seed(0)
    with torch.autocast(x.device.type, dtype=config.dtype or torch.bfloat16, enabled=config.dtype is not None):
        loss = outputs.loss(module(x), y)
    loss.backward()
    return torch.cat([p.grad.detach().float().reshape(-1) for p in held.parameters() if p.grad is not None])


def gradient_agreement(model: nn.Module, config: TrainConfig, head: str | None, outputs: Outputs,
                       x: torch.Tensor, y: torch.Tensor) -> dict:
    """Gradients of one step of `config` against the same precision without checkpointing (they
    must agree: recomputation changes no arithmetic) and, for reduced precision, against FP32
    (they differ by design): relative L2 error, largest absolute difference, cosine."""
    def compare(a, b):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-30))
        return {"relative_l2": rel, "max_abs_diff": float((a - b).abs().max()),
                "cosine": float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))}

    sample = x[:2]
    grads = _gradients(model, config, head, outputs, x, y, sample)
    out = {"batch": len(x), "tolerance": GRADIENT_RTOL}
    if config.checkpoint != "none":
        vs = compare(grads, _gradients(model, config.plain, head, outputs, x, y, sample))
        out.update(against=config.plain.name, equal=vs["relative_l2"] <= GRADIENT_RTOL, **vs)
    if config.precision != "fp32":
        out["against_fp32"] = compare(grads, _gradients(model, TrainConfig(), head, outputs, x, y, sample))
    return out


# --- the estimate -------------------------------------------------------------------------------

def _segment_map(module, held, config: TrainConfig, head) -> dict[nn.Module, object]:
    if isinstance(module, ChainForward):
        return module.segment_of()
    if config.checkpoint == "none":
        return {}
    return {resolve_module(held, p): p for p in checkpoint_paths(held, config, head)}


def saved_bytes(model: nn.Module, config: TrainConfig, head: str | None, outputs: Outputs, x: torch.Tensor,
                y: torch.Tensor) -> dict:
    """Bytes autograd saves for backward in one forward of `config` on `x`, parameters and the
    batch excluded, counted once per storage, split into what lies outside the checkpointed segments, the
    segments' inputs, and each segment's own (recomputed during backward)."""
    if config.checkpoint == "sequential":
        module, held = trainable(model, config, head, x[:2])
        module.checkpointing = False
    else:  # the plain forward, its tensors attributed to the segments the configuration checkpoints
        module, held = trainable(model, config.plain, head)
    segments = _segment_map(module, held, config, head)
    # Parameters and the batch itself are resting memory (the child measures from after both exist).
    excluded = {t.untyped_storage().data_ptr() for t in (*held.parameters(), x, y)}
    # inputs: storage -> (bytes, the tensor): held until the forward ends, as a checkpoint holds its
    # inputs, so that no freed storage's address is counted again for another tensor
    current, seen, inputs = [None], {}, {}
    started = set()
    hooks = []
    for m, seg in segments.items():
        def pre(mod, args, seg=seg):
            current[0] = seg
            if seg is not None and seg not in started and args and torch.is_tensor(args[0]):
                started.add(seg)
                s = args[0].untyped_storage()
                if s.data_ptr() not in excluded:
                    inputs[s.data_ptr()] = (s.nbytes(), args[0])

        def post(mod, args, out):
            current[0] = None

        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    # Every saved tensor stays alive in `alive` until the count is done (no freed address is counted
    # again for another tensor), but pack hands autograd None, not the tensor: a pack hook that
    # returns its tensor ties an op's saved output to its own grad_fn in a cycle Python's collector
    # cannot see, and each call leaked its whole forward (430 MB per call, ResNet50 at batch 4).
    # Nothing here runs backward, so nothing unpacks.
    alive = []

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in excluded and s.data_ptr() not in seen:
            seen[s.data_ptr()] = (s.nbytes(), current[0])
        alive.append(t)

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None), \
                torch.autocast(x.device.type, dtype=config.dtype or torch.bfloat16, enabled=config.dtype is not None):
            outputs.loss(module(x), y)
    finally:
        for h in hooks:
            h.remove()
        alive.clear()
    per_segment: dict = {}
    for nbytes, seg in seen.values():
        per_segment[seg] = per_segment.get(seg, 0) + nbytes
    outside = per_segment.pop(None, 0)
    total = outside + sum(per_segment.values())
    segment_inputs = sum(nbytes for nbytes, _ in inputs.values())
    largest = max(per_segment.values(), default=0)
    held_bytes = total if config.checkpoint == "none" else outside + segment_inputs + largest
    return {"all": total, "outside": outside, "segment_inputs": segment_inputs, "largest_segment": largest,
            "held": held_bytes}


@dataclass
class Estimate:
    """Predicted training-step memory above resting: activations (fixed + per image x batch),
    gradients, optimizer state."""
    activation_fixed_bytes: float
    activation_per_image_bytes: float
    gradient_bytes: int
    optimizer_state_bytes: int
    method: str = ("tensors saved for backward in one forward (saved_tensors_hooks, once per storage, parameters "
                   "and the batch excluded) at batch 2 and 4, extended linearly; checkpointed: saved outside the segments + segment "
                   "inputs + the largest segment; plus gradients (one per parameter) and optimizer state")

    def activations(self, batch_size: int) -> float:
        return self.activation_fixed_bytes + self.activation_per_image_bytes * batch_size

    def step(self, batch_size: int) -> float:
        return self.activations(batch_size) + self.gradient_bytes + self.optimizer_state_bytes


def estimate(model: nn.Module, config: TrainConfig, head: str | None, outputs: Outputs, images: torch.Tensor,
             labels: torch.Tensor, optimizer: str) -> Estimate:
    a = saved_bytes(model, config, head, outputs, images[:2], labels[:2])["held"]
    b = saved_bytes(model, config, head, outputs, tile(images, 4), tile(labels, 4))["held"]
    per_image = (b - a) / 2
    param_bytes = sum(p.numel() * 4 for p in model.parameters())  # FP32 master weights under autocast too
    return Estimate(a - 2 * per_image, per_image, param_bytes, param_bytes * optimizer_state_tensors(optimizer))


def tile(t: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // len(t))
    return t.repeat(reps, *([1] * (t.dim() - 1)))[:n].clone()  # its own storage, exactly n rows


# --- memory in a child process ------------------------------------------------------------------

@dataclass
class StepMemory:
    """One child's result: `status` ok, or oom (ran out under its cap) / failed with `error`."""
    config: str
    batch_size: int
    status: str
    peak_bytes: int | None = None  # resident (CUDA: max reserved) peak
    resting_bytes: int | None = None
    cuda_peak_allocated_bytes: int | None = None
    step_ms: list[float] = field(default_factory=list)  # untimed for the chapter's figures: the allocator differs
    error: str | None = None
    limit_bytes: int | None = None

    @property
    def above_resting_bytes(self) -> int | None:
        return None if self.peak_bytes is None else self.peak_bytes - self.resting_bytes

    def fits(self, budget_bytes: int) -> bool:
        return self.status == "ok" and self.peak_bytes <= budget_bytes


@dataclass
class ChildJob:
    """What a memory child needs: the model's artifact (backends.artifacts), the batch source
    (preprocessed images and labels as .npy), the model's outputs, head and optimizer."""
    artifact: dict
    base_dir: str
    images: str
    labels: str
    outputs: dict
    head: str | None
    optimizer: str
    lr: float
    threads: int
    device: str = "cpu"
    steps: int = 3


def measure_step_memory(job: ChildJob, config: TrainConfig, batch_size: int, limit_bytes: int | None = None,
                        slack_bytes: int = CAP_SLACK_BYTES, timeout_s: float = 1800) -> StepMemory:
    """Peak memory of `job.steps` training steps of `config` at `batch_size`, in a fresh process
    (CHILD_ENV set); with `limit_bytes`, an allocation that would take the process more than
    `slack_bytes` of address space beyond it fails and the result is `oom`."""
    with tempfile.TemporaryDirectory(prefix="optlib-train-memory-") as d:
        result, error = run_child("optlib.measurement.training_memory", d, {
            "job": asdict(job), "config": config.to_dict(), "batch_size": batch_size, "limit_bytes": limit_bytes,
            "slack_bytes": slack_bytes}, timeout_s, CHILD_ENV)
    if result is not None:
        return StepMemory(**result)
    # Under a cap, a child that dies without a result ran out of memory where it could not raise.
    status = "oom" if limit_bytes is not None and not error.startswith("timed out") else "failed"
    return StepMemory(config.name, batch_size, status, error=f"child {error}", limit_bytes=limit_bytes)


@dataclass
class StepTimes:
    """One timing child's result: per configuration, one list of step times (ms) per trial."""
    batch_size: int
    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    error: str | None = None


def measure_step_times(job: ChildJob, configs: list[TrainConfig], batch_size: int, warmup: int, trials: int,
                       steps_per_trial: int, timeout_s: float = 3600) -> StepTimes:
    """Step times of every configuration at `batch_size`, interleaved in one fresh process: per
    trial one block of `steps_per_trial` steps per configuration, the order reversed every other
    trial, after `warmup` untimed steps each. The process has the allocator a training process has
    (not CHILD_ENV) and hands free heap pages back between blocks; running out of memory there
    costs this batch size's times, not the chapter."""
    with tempfile.TemporaryDirectory(prefix="optlib-train-times-") as d:
        result, error = run_child("optlib.measurement.training_memory", d, {
            "mode": "times", "job": asdict(job), "configs": [c.to_dict() for c in configs], "batch_size": batch_size,
            "warmup": warmup, "trials": trials, "steps_per_trial": steps_per_trial}, timeout_s)
    if result is None:
        return StepTimes(batch_size, error=f"the timing child {error}")
    return StepTimes(**result)


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    text = str(e).lower()
    return "can't allocate memory" in text or "out of memory" in text or "cannot allocate memory" in text


def _child_setup(job: ChildJob, bs: int):
    """What every child builds: the model from its artifact, the batch (on the job's device)."""
    import torchvision  # noqa: F401  (the runtime belongs to the resting state)

    from ..backends.artifacts import build_eager, resolved
    from ..results.values import Artifact, from_plain

    torch.set_num_threads(job.threads)
    model = build_eager(resolved(from_plain(Artifact, job.artifact), job.base_dir))
    x, y = tile(torch.from_numpy(np.load(job.images)), bs), tile(torch.from_numpy(np.load(job.labels)), bs)
    if job.device == "cuda":
        model, x, y = model.cuda(), x.cuda(), y.cuda()
    return model, Outputs(**job.outputs), x, y


def _trainable_step(model, config: TrainConfig, job: ChildJob, x):
    """(module, optimizer, scaler) of one configuration in a child."""
    module, held = trainable(model, config, job.head, x[:2] if config.checkpoint == "sequential" else None)
    scaler = torch.amp.GradScaler("cuda") if job.device == "cuda" and config.precision == "fp16-autocast" else None
    return module, make_optimizer(held.parameters(), job.optimizer, job.lr), scaler


def _times_child(spec: dict, job_dir: Path) -> None:
    from .memory import release_free_heap

    job, bs = ChildJob(**spec["job"]), spec["batch_size"]
    model, outputs, x, y = _child_setup(job, bs)
    built = [(c, *_trainable_step(model, c, job, x)) for c in map(TrainConfig.from_dict, spec["configs"])]
    del model

    def step(entry) -> float:
        config, module, optimizer, scaler = entry
        t0 = time.perf_counter_ns()
        train_step(module, optimizer, config, outputs, x, y, scaler)
        if job.device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter_ns() - t0) / 1e6

    samples: dict[str, list[list[float]]] = {c.name: [] for c, *_ in built}
    for entry in built:
        for _ in range(spec["warmup"]):
            step(entry)
        release_free_heap()
    for trial in range(spec["trials"]):
        for entry in (built if trial % 2 == 0 else built[::-1]):
            samples[entry[0].name].append([step(entry) for _ in range(spec["steps_per_trial"])])
            release_free_heap()
    (job_dir / "result.json").write_text(json.dumps({"batch_size": bs, "samples": samples}))


def _child(job_dir: Path) -> None:
    spec = json.loads((job_dir / "job.json").read_text())
    if spec.get("mode") == "times":
        return _times_child(spec, job_dir)
    job, config, bs = ChildJob(**spec["job"]), TrainConfig.from_dict(spec["config"]), spec["batch_size"]
    limit = spec["limit_bytes"]
    cuda = job.device == "cuda"
    model, outputs, x, y = _child_setup(job, bs)
    module, optimizer, scaler = _trainable_step(model, config, job, x)
    del model
    gc.collect()
    result = {"config": config.name, "batch_size": bs, "limit_bytes": limit}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resting = torch.cuda.memory_reserved()
        if limit is not None:
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit / torch.cuda.get_device_properties(0).total_memory))
    else:
        reset_peak()
        resting = proc_status_bytes("VmRSS")
        if limit is not None:
            cap = proc_status_bytes("VmSize") + max(0, limit - resting) + spec["slack_bytes"]
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    times = []
    try:
        for _ in range(job.steps):
            t0 = time.perf_counter()
            train_step(module, optimizer, config, outputs, x, y, scaler)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        status, error = "ok", None
    except Exception as e:  # noqa: BLE001  (out of memory is a result; anything else is reported)
        status, error = ("oom" if _is_oom(e) else "failed"), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    if cuda:
        peak, allocated = torch.cuda.max_memory_reserved(), torch.cuda.max_memory_allocated()
    else:
        peak, allocated = proc_status_bytes("VmHWM"), None
    result.update(status=status, peak_bytes=int(peak), resting_bytes=int(resting), cuda_peak_allocated_bytes=allocated,
                  step_ms=times, error=error)
    (job_dir / "result.json").write_text(json.dumps(result))


# --- the largest batch under a budget -------------------------------------------------------------

@dataclass
class BatchSearch:
    """The largest batch that fitted (`fits`, 0 when none did) and the smallest that did not
    (`fails`, None when none failed below max_batch), from the known results and the probes."""
    budget_bytes: int
    fits: int
    fails: int | None
    probes: list[dict]  # batch size, fitted, peak bytes, status, in probe order
    resolved: bool  # fails - fits <= resolution, or fits == max_batch
    predicted: int | None = None  # the linear prediction the first probe started from


def _round_down(b: float, resolution: int) -> int:
    return max(resolution, int(b // resolution) * resolution)


def largest_batch(probe, known: dict[int, tuple[bool, int | None]], budget_bytes: int, resolution: int = 8,
                  max_batch: int = 4096, max_probes: int = 6) -> BatchSearch:
    """Search the largest batch whose step fits `budget_bytes`. `probe(batch) -> (fitted, peak
    bytes or None, status)`; `known` holds results already measured {batch: (fitted, peak)}. The
    first probe goes where a line through the fitted peaks reaches the budget (without two fitted
    peaks, doubling steps up from the largest fitting batch find them); from there the search walks
    by doubling steps, up after a fit and down after a failure, until it brackets the limit, then
    bisects to `resolution`."""
    fits = max((b for b, (ok, _) in known.items() if ok), default=0)
    failing = [b for b, (ok, _) in known.items() if not ok and b > fits]
    fails = min(failing) if failing else None
    points = {b: p for b, (ok, p) in known.items() if ok and p is not None}

    def predict() -> int | None:
        if len(points) < 2:
            return None
        slope, intercept = np.polyfit(list(points), list(points.values()), 1)
        return _round_down((budget_bytes - intercept) / slope, resolution) if slope > 0 else None

    def done() -> bool:
        return fits >= max_batch or (fails is not None and fails - fits <= resolution)

    first_prediction = predict()
    probes: list[dict] = []
    step, last_fitted, guessed = (resolution if first_prediction is not None else max(resolution, fits)), None, False
    while not done() and len(probes) < max_probes:
        guess = predict()
        if not guessed and guess is not None and fits < guess < (fails or max_batch + 1):
            cand, guessed, step = guess, True, resolution  # where the line says the budget runs out
        elif last_fitted is not False and (fails is None or fails - fits > 2 * step):  # walk up
            cand = min(max_batch, fits + step)
            step *= 2
        elif last_fitted is False and fails - fits > 2 * step:  # walk down from a failure
            cand = fails - step
            step *= 2
        else:  # bisect
            cand = fits + _round_down((fails - fits) / 2, resolution)
        ok, peak, status = probe(cand)
        probes.append({"batch_size": cand, "fitted": ok, "peak_bytes": peak, "status": status})
        last_fitted = ok
        if ok:
            fits = cand
            if peak is not None:
                points[cand] = peak
        else:
            fails = cand
    return BatchSearch(budget_bytes, fits, fails, probes, done(), first_prediction)


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
