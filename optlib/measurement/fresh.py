"""The same configuration in fresh processes: the noise floor between runs.

The same-vs-same twin (measurement.experiment) is noise within one process. A number from another
run is another process, and on this machine one artifact of eager FP32 gave medians from 9.5 to
11.6 ms in fresh processes started minutes apart on a quiet machine, a spread the twin never sees.
`fresh_process_latency` rebuilds a configuration from its artifact in each of `processes` child
processes, one after the other, times it there with the harness every chapter uses
(timing.latency, the same samples and warm-up, fewer trials), and returns each child's median; their
range is what a latency measured in another run can be held against (results.final_round.reference_drift).
Images travel as a NumPy .npz (no pickle).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..results.values import Artifact, from_plain, to_plain
from .launcher import run_child


def fresh_process_latency(artifact: Artifact, base_dir: str | Path, images: list[np.ndarray], bench,
                          batch_size: int, threads: int, device: str = "cpu", processes: int = 5, trials: int = 3,
                          timeout_s: float = 900) -> dict:
    """Median latency (ms, `total` at `batch_size`) of the configuration in each of `processes`
    fresh processes; with `error` (and the medians so far) when a child fails."""
    n = min(len(images), bench.samples + bench.warmup + batch_size)
    job = {"artifact": to_plain(artifact), "base_dir": str(base_dir), "threads": threads, "device": device,
           "batch_size": batch_size, "bench": {**vars(bench), "trials": trials}}
    medians, pids = [], []
    for _ in range(processes):
        with tempfile.TemporaryDirectory(prefix="optlib-fresh-") as d:
            np.savez(Path(d) / "images.npz", *images[:n])
            result, error = run_child("optlib.measurement.fresh", d, job, timeout_s)
        if result is None:
            return {"error": f"fresh-process child {error}", "medians_ms": medians}
        medians.append(result["median_ms"])
        pids.append(result["pid"])
    return {"medians_ms": medians, "pids": pids, "min_ms": min(medians), "max_ms": max(medians),
            "spread": max(medians) / min(medians), "processes": processes, "trials": trials,
            "samples": bench.samples, "batch_size": batch_size,
            "method": f"{processes} fresh processes one after the other, each rebuilding the configuration from its "
                      f"artifact and timing {trials} blocks of {bench.samples} calls after {bench.warmup} warm-up "
                      "calls (timing.latency); each gives its median of trial medians"}


def _child(job_dir: Path) -> None:
    import torch

    from ..backends.artifacts import load_runner
    from ..core.params import BenchParams
    from . import timing
    from .stats import summarize

    job = json.loads((job_dir / "job.json").read_text())
    torch.set_num_threads(job["threads"])
    with np.load(job_dir / "images.npz") as z:
        images = [z[k] for k in z.files]
    runner = load_runner(from_plain(Artifact, job["artifact"]), job["base_dir"], threads=job["threads"],
                         device=job["device"])
    bench = BenchParams(**job["bench"])
    lat = timing.latency([runner], images, bench, batch_size=job["batch_size"], progress=False)
    s = summarize(lat[runner.name]["total"])
    result = {"median_ms": s.median, "ci95_ms": list(s.ci95), "pid": os.getpid()}
    (job_dir / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _child(Path(sys.argv[1]))
