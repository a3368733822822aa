"""The process launcher: one measurement in a fresh Python process.

A measurement that must not see the notebook's own process (its peak memory, its address-space
layout, a library that may crash) runs as `python -m <module> <job_dir>`: the job goes in as
job_dir/job.json, the result comes back as job_dir/result.json (plain JSON, no pickle). Used by
measurement.memory (a configuration's peak memory), measurement.fresh (the reference in fresh
processes) and measurement.training_memory (a training step's memory and time).

`survives` is the other kind: a runner's build and first call run once in a spawned child first, so
a native crash there (a signal, not a Python exception) costs that configuration, not the notebook.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
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


def _probe(conn, build, args, kwargs, images) -> None:
    """The child of `survives`: says each step before it starts it."""
    try:
        conn.send("building")
        runner = build(*args, **kwargs)
        if images is not None:
            conn.send("its first call")
            runner.predict(images)
        conn.send("done")
    except Exception as e:  # a Python error: the in-process build meets it again and records it
        conn.send(f"raised {type(e).__name__}")
    finally:
        conn.close()


def survives(build, args=(), kwargs=None, images=None, timeout_s: float = 600.0) -> str | None:
    """Run `build(*args, **kwargs)` and the runner's first call on `images` in a spawned child
    process. None when the child got through (or raised a Python exception, which the caller will
    meet and record in its own process); else what ended it, one line: "native crash (SIGSEGV)
    while building", "... while its first call", or a timeout. `build` and its arguments must
    pickle (a module-level function, paths, dataclasses, arrays)."""
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_probe, args=(send, build, tuple(args), dict(kwargs or {}), images), daemon=True)
    p.start()
    send.close()
    steps, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # read as it goes, until the child closes its end or dies
        if receive.poll(0.2):
            try:
                steps.append(receive.recv())
            except EOFError:
                break
        elif not p.is_alive():
            break
    p.join(max(0.0, deadline - time.monotonic()))
    step = steps[-1] if steps else "starting"
    if p.is_alive():
        p.kill()
        p.join()
        return f"timed out after {timeout_s:.0f} s while {step}"
    if p.exitcode is not None and p.exitcode < 0:
        try:
            name = signal.Signals(-p.exitcode).name
        except ValueError:
            name = f"signal {-p.exitcode}"
        return f"native crash ({name}) while {step}"
    if p.exitcode:
        return f"the child exited {p.exitcode} while {step}"
    return None
