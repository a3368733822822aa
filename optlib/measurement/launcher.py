"""The process launcher: one measurement in a fresh Python process.

A measurement that must not see the notebook's own process (its peak memory, its address-space
layout, a library that may crash) runs as `python -m <module> <job_dir>`: the job goes in as
job_dir/job.json, the result comes back as job_dir/result.json (plain JSON, no pickle). Used by
measurement.memory (a configuration's peak memory), measurement.fresh (the reference in fresh
processes) and measurement.training_memory (a training step's memory and time).

`survives` is the other kind: a runner's build and first call run once in a child first, so
a native crash there (a signal, not a Python exception) costs that configuration, not the notebook.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_child(module: str, job_dir: str | Path, job: dict, timeout_s: float,
              env: dict[str, str] | None = None) -> tuple[dict | None, str | None]:
    """Run `python -m module job_dir` with `job` in job_dir/job.json (extra `env` on top of this
    process's). Returns (the result.json the child wrote, None), or (None, what went wrong: the exit
    status and the last line of its output, or the timeout)."""
    job_dir = Path(job_dir)
    (job_dir / "job.json").write_text(json.dumps(job))
    try:
        p = subprocess.run([sys.executable, "-m", module, str(job_dir)], capture_output=True, text=True,
                           timeout=timeout_s, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s:.0f} s"
    result = job_dir / "result.json"
    if result.is_file():
        return json.loads(result.read_text()), None
    return None, f"exited {p.returncode}: {last_line(p)}"


def last_line(p: subprocess.CompletedProcess) -> str:
    """The last line a child printed (stderr first), cut to 300 characters."""
    return ((p.stderr or p.stdout).strip().splitlines() or ["no output"])[-1][:300]


def _probe(job_dir: Path) -> None:
    """The child of `survives` (`python -m optlib.measurement.launcher JOB_DIR`): builds and calls
    what job.pkl holds, writing each step to steps.txt before it starts it."""
    import pickle

    steps = open(job_dir / "steps.txt", "a", buffering=1)
    build, args, kwargs, images = pickle.loads((job_dir / "job.pkl").read_bytes())  # our own file, just written
    try:
        steps.write("building\n")
        runner = build(*args, **kwargs)
        if images is not None:
            steps.write("its first call\n")
            runner.predict(images)
        steps.write("done\n")
    except Exception as e:  # a Python error: the in-process build meets it again and records it
        steps.write(f"raised {type(e).__name__}\n")


def survives(build, args=(), kwargs=None, images=None, timeout_s: float = 600.0) -> str | None:
    """Run `build(*args, **kwargs)` and the runner's first call on `images` in a fresh child
    process. None when the child got through (or raised a Python exception, which the caller will
    meet and record in its own process); else what ended it, one line: "native crash (SIGSEGV)
    while building", "... while its first call", or a timeout. `build` and its arguments must
    pickle (a module-level function, paths, dataclasses, arrays)."""
    import pickle
    import signal
    import tempfile

    with tempfile.TemporaryDirectory(prefix="optlib-probe-") as tmp:
        job_dir = Path(tmp)
        (job_dir / "job.pkl").write_bytes(pickle.dumps((build, tuple(args), dict(kwargs or {}), images)))
        try:
            p = subprocess.run([sys.executable, "-m", "optlib.measurement.launcher", str(job_dir)],
                               capture_output=True, text=True, timeout=timeout_s)
            status = p.returncode
        except subprocess.TimeoutExpired:
            status = None
        steps = job_dir / "steps.txt"
        lines = steps.read_text().splitlines() if steps.exists() else []
    step = lines[-1] if lines else "starting"
    if status is None:
        return f"timed out after {timeout_s:.0f} s while {step}"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"native crash ({name}) while {step}"
    if status:
        return f"the child exited {status} while {step}: {last_line(p)}"
    return None


if __name__ == "__main__":
    _probe(Path(sys.argv[1]))
