"""Peak memory of one configuration, measured in a fresh child process.

The notebook's own peak resident memory says nothing about one configuration: it holds every
runner of the chapter and whatever ran before. `measure_memory` starts `python -m
optlib.measurement.memory` instead, which imports the runtimes and the artifact's loader, notes its
resting peak, rebuilds the runner from the artifact (backends.artifacts.load_runner), runs it a
few times at each batch size, and reports the peak again; on CUDA also
torch.cuda.max_memory_allocated. Images travel as a NumPy .npz (no pickle).

The peak is VmHWM from /proc/self/status, not getrusage's ru_maxrss: Linux keeps ru_maxrss across
execve, so a child started from a 2.3 GB notebook or test process reported 2.3 GB before loading
anything (measured); VmHWM belongs to the new address space.
"""
from __future__ import annotations

import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..results.values import Artifact, Memory, from_plain, to_plain
from .launcher import run_child

METHOD = ("peak resident memory (VmHWM) of a fresh child process that loads the artifact and runs {calls} calls "
          "at each batch size; resting = its peak after importing the runtimes, before loading the model")
CALLS_PER_BATCH_SIZE = 3


class MemoryMeasurementError(RuntimeError):
    """The child process failed; the message carries the tail of its error output."""


def measure_memory(artifact: Artifact, base_dir: str | Path, images: list[np.ndarray], batch_sizes: list[int],
                   threads: int, device: str = "cpu", timeout_s: float = 900) -> Memory:
    """Peak memory of the configuration `artifact` describes, in its own process."""
    with tempfile.TemporaryDirectory(prefix="optlib-memory-") as d:
        np.savez(Path(d) / "images.npz", *images[:max(batch_sizes)])
        result, error = run_child("optlib.measurement.memory", d, {
            "artifact": to_plain(artifact), "base_dir": str(base_dir), "batch_sizes": list(batch_sizes),
            "threads": threads, "device": device}, timeout_s)
        if result is None:
            raise MemoryMeasurementError(f"memory child for a {artifact.kind} artifact {error}")
        return from_plain(Memory, result)


def proc_status_bytes(key: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM, VmSize, ...) in bytes. Without /proc,
    VmHWM falls back to ru_maxrss; other keys raise KeyError."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    if key == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    raise KeyError(key)


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), None without it."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def release_free_heap() -> None:
    """Hand glibc's free heap pages back to the system (malloc_trim), after a garbage collection:
    between blocks of large, differently shaped allocations (training steps of several
    configurations in one process) the freed pages otherwise stay resident. No-op off glibc."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current resident size (/proc/self/clear_refs, Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(job_dir: Path) -> None:
    import importlib

    import torch
    import torchvision  # noqa: F401  (the runtimes belong to the resting state, not to a configuration)

    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        pass
    from ..backends.artifacts import LOADERS, load_runner

    job = json.loads((job_dir / "job.json").read_text())
    artifact = from_plain(Artifact, job["artifact"])
    if artifact.kind in LOADERS:  # the loader's own imports belong to the resting state
        importlib.import_module(LOADERS[artifact.kind].split(":")[0])
    with np.load(job_dir / "images.npz") as z:
        images = [z[k] for k in z.files]
    torch.set_num_threads(job["threads"])
    cuda = job["device"] == "cuda" and torch.cuda.is_available()
    resting = proc_status_bytes("VmHWM")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runner = load_runner(artifact, job["base_dir"], threads=job["threads"], device=job["device"])
    for bs in job["batch_sizes"]:
        batch = [images[i % len(images)] for i in range(bs)]
        for _ in range(CALLS_PER_BATCH_SIZE):
            runner.predict(batch)
    memory = Memory(peak_bytes=proc_status_bytes("VmHWM"), resting_bytes=resting,
                    method=METHOD.format(calls=CALLS_PER_BATCH_SIZE), batch_sizes=list(job["batch_sizes"]),
                    cuda_peak_allocated_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None)
    (job_dir / "result.json").write_text(json.dumps(to_plain(memory)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
