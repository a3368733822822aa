"""The process launcher: one measurement in a fresh Python process.

A measurement that must not see the notebook's own process (its peak memory, its address-space
layout, a library that may crash) runs as `python -m <module> <job_dir>`: the job goes in as
job_dir/job.json, the result comes back as job_dir/result.json (plain JSON, no pickle). Used by
measurement.memory (a configuration's peak memory), measurement.fresh (the reference in fresh
processes) and measurement.training_memory (a training step's memory and time).
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
    tail = ((p.stderr or p.stdout).strip().splitlines() or ["no output"])[-1][:300]
    return None, f"exited {p.returncode}: {tail}"
