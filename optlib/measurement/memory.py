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
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..results.values import Artifact, Memory, from_plain, to_plain

METHOD = ("peak resident memory (VmHWM) of a fresh child process that loads the artifact and runs {calls} calls "
          "at each batch size; resting = its peak after importing the runtimes, before loading the model")
CALLS_PER_BATCH_SIZE = 3


class MemoryMeasurementError(RuntimeError):
    """The child process failed; the message carries the tail of its error output."""


def measure_memory(artifact: Artifact, base_dir: str | Path, images: list[np.ndarray], batch_sizes: list[int],
                   threads: int, device: str = "cpu", timeout_s: float = 900) -> Memory:
    """Peak memory of the configuration `artifact` describes, in its own process."""
    with tempfile.TemporaryDirectory(prefix="optlib-memory-") as d:
        d = Path(d)
        (d / "job.json").write_text(json.dumps({"artifact": to_plain(artifact), "base_dir": str(base_dir),
                                                "batch_sizes": list(batch_sizes), "threads": threads,
                                                "device": device}))
        np.savez(d / "images.npz", *images[:max(batch_sizes)])
        p = subprocess.run([sys.executable, "-m", "optlib.measurement.memory", str(d)], capture_output=True,
                           text=True, timeout=timeout_s)
        result = d / "result.json"
        if p.returncode != 0 or not result.is_file():
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MemoryMeasurementError(f"memory child for a {artifact.kind} artifact exited {p.returncode}: {tail[0][:300]}")
        return from_plain(Memory, json.loads(result.read_text()))


def _peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM where /proc has it, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


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
    resting = _peak_rss_bytes()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runner = load_runner(artifact, job["base_dir"], threads=job["threads"], device=job["device"])
    for bs in job["batch_sizes"]:
        batch = [images[i % len(images)] for i in range(bs)]
        for _ in range(CALLS_PER_BATCH_SIZE):
            runner.predict(batch)
    memory = Memory(peak_bytes=_peak_rss_bytes(), resting_bytes=resting,
                    method=METHOD.format(calls=CALLS_PER_BATCH_SIZE), batch_sizes=list(job["batch_sizes"]),
                    cuda_peak_allocated_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None)
    (job_dir / "result.json").write_text(json.dumps(to_plain(memory)))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
