"""Run the numbered notebooks in order with papermill into outputs/<target>/notebooks/.

A chapter whose inputs are unchanged since its last complete run is skipped (core.runstate says
what changed otherwise); one run per target at a time (runstate.TargetLock); each chapter runs
under a time limit (run.chapter_timeout_s), its kernel's death or hang reported as the chapter's
failure with the executed notebook kept as the log; progress and the time left, from the
previous run's cell times, are printed while it runs.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from papermill.engines import NBClientEngine, papermill_engines

from . import paths, runstate
from .params import PIPELINE_ONLY_KEYS, Params, load_params

PROGRESS_EVERY_S = float(os.environ.get("OPTLIB_PROGRESS_EVERY_S", 20.0))  # at most one progress line this often


@dataclass
class NotebookRun:
    notebook: str
    status: str  # ok | failed | skipped
    seconds: float
    output: Path
    error: str | None = None
    why: list[str] = field(default_factory=list)  # why it ran (or, skipped, why not)


def notebooks_dir() -> Path:
    """notebooks/ of the repository, or $OPTLIB_NOTEBOOKS_DIR (tests run small notebooks of their own)."""
    env = os.environ.get("OPTLIB_NOTEBOOKS_DIR")
    return Path(env) if env else paths.NOTEBOOKS_DIR


def list_notebooks(selection: list[str] | None = None) -> list[Path]:
    """Numbered notebooks (NN_name.ipynb, NNb_name.ipynb for a chapter's second part) in order;
    `selection` filters by number or name prefix ("04" selects 04_* and 04b_*)."""
    nbs = sorted(p for p in notebooks_dir().glob("[0-9][0-9]*_*.ipynb"))
    if not selection:
        return nbs
    chosen = [p for p in nbs if any(p.stem.startswith(s) for s in selection)]
    unknown = [s for s in selection if not any(p.stem.startswith(s) for p in nbs)]
    if unknown:
        raise ValueError(f"--notebooks: no notebook matches {unknown} (have: {[p.stem for p in nbs]})")
    return chosen


def depends_on(notebook: str, all_notebooks: list[str]) -> list[str]:
    """The chapters whose outputs `notebook` reads: every chapter reads 00's data and model; the
    comparison (99) reads every chapter's records and artifacts."""
    if notebook.startswith("00_"):
        return []
    if notebook.startswith("99"):
        return [n for n in all_notebooks if not n.startswith("99")]
    return [n for n in all_notebooks if n.startswith("00_")]


def resolve_params(target: str | None, params_file: str | None) -> tuple[Params, Path]:
    """Params from --params FILE, else params/<target>.yaml; the file's target wins when given."""
    if params_file:
        path = Path(params_file)
    elif target:
        path = paths.params_file_for(target)
        if not path.is_file():
            have = sorted(p.stem for p in paths.PARAMS_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"{path}: no params file for target {target!r} (have: {have}; or pass --params)")
    else:
        raise ValueError("give --target or --params")
    return load_params(path), path


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = max(0, round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class _Progress:
    """Cell by cell: the elapsed time and what is left by the previous run's cell times; while a
    long cell runs (a chapter's measurement can take many minutes), a line every 3 x `every_s`."""

    def __init__(self, name: str, n_cells: int, previous: list[float] | None, every_s: float = PROGRESS_EVERY_S):
        # n_cells: set by the engine once papermill has added its parameters cell
        self.name, self.n, self.previous, self.every_s = name, n_cells, previous, every_s
        self.t0 = self.last_print = time.perf_counter()
        self.cell_t0, self.cell_seconds = None, []
        self._stop = threading.Event()

    def left(self, done: int, in_cell_s: float = 0.0) -> float | None:
        if not self.previous:
            return None
        if len(self.previous) == self.n:
            return max(0.0, sum(self.previous[done:]) - in_cell_s)
        return max(0.0, sum(self.previous) - (time.perf_counter() - self.t0))

    def _line(self, cell: str, in_cell_s: float = 0.0) -> str:
        left = self.left(len(self.cell_seconds), in_cell_s)
        return (f"[optlib] {self.name}: cell {cell}, {_fmt_s(time.perf_counter() - self.t0)} elapsed, "
                + (f"about {_fmt_s(left)} left by the previous run" if left is not None else
                   "no previous run to tell the time left"))

    def start(self, index: int) -> None:
        self.cell_t0 = time.perf_counter()

    def complete(self, index: int) -> None:
        now = time.perf_counter()
        self.cell_seconds.append(now - (self.cell_t0 or now))
        self.cell_t0 = None
        if now - self.last_print >= self.every_s:
            self.last_print = now
            print(self._line(f"{len(self.cell_seconds)}/{self.n}"), flush=True)

    def __enter__(self):
        period = max(3 * self.every_s, 0.5)

        def beat():
            while not self._stop.wait(period):
                t0 = self.cell_t0
                if t0 is not None and time.perf_counter() - self.last_print >= period:
                    self.last_print = time.perf_counter()
                    running = self.last_print - t0
                    print(self._line(f"{len(self.cell_seconds) + 1}/{self.n} running for {_fmt_s(running)}", running),
                          flush=True)
        threading.Thread(target=beat, name=f"optlib-progress-{self.name}", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()


class _Engine(NBClientEngine):
    """papermill's nbclient engine with a per-cell hook (progress) and a chapter deadline: each cell
    may take what is left of run.chapter_timeout_s."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, optlib_progress=None, optlib_deadline=None, **kwargs):
        if optlib_progress is not None:
            optlib_progress.n = len(nb_man.nb.cells)  # with papermill's injected-parameters cell
            start, complete = nb_man.cell_start, nb_man.cell_complete

            def cell_start(cell, cell_index=None, **kw):
                optlib_progress.start(cell_index)
                return start(cell, cell_index, **kw)

            def cell_complete(cell, cell_index=None, **kw):
                optlib_progress.complete(cell_index)
                return complete(cell, cell_index, **kw)

            nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
        if optlib_deadline is not None:
            kwargs["timeout_func"] = lambda cell: max(1.0, optlib_deadline - time.time())
        return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)


papermill_engines.register("optlib", _Engine)


def _previous_seconds(manifest: dict) -> float | None:
    """How long the chapter's last finished run took (the estimate for the next)."""
    return manifest.get("seconds") or manifest.get("previous_seconds")


def _failure(e: BaseException, timeout_s: float) -> str:
    name = type(e).__name__
    if name == "CellTimeoutError":
        return (f"timed out: still running after run.chapter_timeout_s = {timeout_s:g} s; its kernel was shut down "
                "(raise run.chapter_timeout_s if the chapter needs longer)")
    if name == "DeadKernelError":
        return "the kernel died (killed, or out of memory) in the middle of the chapter"
    msg = getattr(e, "evalue", None) or (str(e).strip().splitlines() or [""])[-1]
    return f"{getattr(e, 'ename', name)}: {msg}"


def plan(params: Params, notebooks: list[Path], force: set[str] | bool = False) -> list[tuple[Path, list[str]]]:
    """Each notebook with why it must run ([]: skipped), propagating reruns to the chapters that
    depend on them. `force`: True for all, or a set of notebook-name prefixes."""
    all_names = [p.stem for p in list_notebooks()]
    env = runstate.environment_inputs(params.device)
    will_run: set[str] = set()
    out = []
    for nb in notebooks:
        deps = depends_on(nb.stem, all_names)
        inputs = _inputs(nb, deps, params, env)
        why = runstate.changes(runstate.read_manifest(params.target, nb.stem), inputs, params, params.target)
        rerun_deps = [d for d in deps if d in will_run]
        if rerun_deps:
            why.append(f"{', '.join(rerun_deps)} {'runs' if len(rerun_deps) == 1 else 'run'} first")
        if force is True or (force and any(nb.stem.startswith(f) for f in force)):
            why.insert(0, "--force")
        if why:
            will_run.add(nb.stem)
        out.append((nb, why))
    return out


def _inputs(nb: Path, deps: list[str], params: Params, env: dict) -> runstate.Inputs:
    return runstate.Inputs(runstate.sha256_file(nb), runstate.code_closure(nb), env,
                           {d: (runstate.read_manifest(params.target, d) or {}).get("complete_run_id") for d in deps})


def run_notebooks(params: Params, selection: list[str] | None = None, force: set[str] | bool = False,
                  command: str = "") -> list[NotebookRun]:
    """Execute each selected notebook whose inputs changed (or every one with `force`) with `params`
    injected; keep going past a failure. Raises runstate.LockedError when the target is being run."""
    with runstate.TargetLock(params.target, command or " ".join(sys.argv)):
        return _run_locked(params, selection, force)


def _run_locked(params: Params, selection, force) -> list[NotebookRun]:
    target = params.target
    out_dir = paths.target_dir(target) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    # One variable, every section: a notebook passes it through (chapter.setup(..., **params)), so a
    # new params section needs no notebook edited.
    injected = {"params": {k: v for k, v in params.to_dict().items() if k not in PIPELINE_ONLY_KEYS}}
    steps = plan(params, list_notebooks(selection), force)
    previous = {nb.stem: runstate.read_manifest(target, nb.stem) or {} for nb, _ in steps}
    todo = [nb.stem for nb, why in steps if why]
    known = [_previous_seconds(previous[n]) for n in todo if _previous_seconds(previous[n])]
    print(f"[optlib] {len(todo)} of {len(steps)} chapter(s) to run"
          + (f"; about {_fmt_s(sum(known))} by their previous runs" if known else "")
          + (f" ({len(todo) - len(known)} never timed)" if len(known) < len(todo) else ""), flush=True)
    env_inputs = runstate.environment_inputs(params.device)
    all_names = [p.stem for p in list_notebooks()]
    runs = []
    for nb, why in steps:
        out = out_dir / nb.name
        old = previous[nb.stem]
        if not why:
            when = old.get("finished", "?")
            runs.append(NotebookRun(nb.stem, "skipped", 0.0, out, why=[f"unchanged since its complete run of {when}"]))
            print(f"[optlib] {nb.stem}: skipped, unchanged since its complete run of {when} "
                  f"(--force {nb.stem.split('_')[0]} reruns it)", flush=True)
            continue
        left = sum(_previous_seconds(previous[n]) or 0 for n in todo[todo.index(nb.stem):])
        last = _previous_seconds(old)
        print(f"[optlib] {nb.stem}: running ({'; '.join(why)}) -> {out}"
              + (f"; last run {_fmt_s(last)}, about {_fmt_s(left)} left in all" if last else ""),
              flush=True)
        runs.append(_run_one(nb, out, params, injected, old, why, env_inputs, all_names))
        r = runs[-1]
        if r.status == "ok":
            print(f"[optlib] {nb.stem}: ok in {r.seconds:.1f} s", flush=True)
        else:
            print(f"[optlib] {nb.stem}: FAILED ({r.error}); executed copy kept at {out}", file=sys.stderr, flush=True)
    return runs


def _run_one(nb: Path, out: Path, params: Params, injected: dict, old: dict, why: list[str], env_inputs: dict,
             all_names: list[str]) -> NotebookRun:
    import papermill as pm

    target = params.target
    run_id = runstate.new_run_id()
    deps = depends_on(nb.stem, all_names)
    inputs = _inputs(nb, deps, params, env_inputs)
    trace = runstate.runs_dir(target) / f".{nb.stem}.params-read"
    trace.parent.mkdir(parents=True, exist_ok=True)
    trace.write_text("")
    complete_id = old.get("run_id") if old.get("status") == "complete" else old.get("complete_run_id")
    manifest = {"schema": runstate.SCHEMA, "notebook": nb.stem, "target": target, "run_id": run_id,
                "status": "running", "complete_run_id": complete_id, "pid": os.getpid(),
                "host": socket.gethostname(), "started": runstate.now_iso(), "started_unix": time.time(), "why": why,
                "cell_seconds": old.get("cell_seconds"), "previous_seconds": _previous_seconds(old)}
    runstate.write_manifest(target, manifest)
    before = runstate.snapshot(target)
    progress = _Progress(nb.stem, 0, old.get("cell_seconds"))
    saved_env = {k: os.environ.get(k) for k in (runstate.RUN_ID_ENV, runstate.TRACE_ENV)}
    os.environ.update({runstate.RUN_ID_ENV: run_id, runstate.TRACE_ENV: str(trace)})
    t0 = time.perf_counter()
    error = None
    try:
        with progress:
            pm.execute_notebook(str(nb), str(out), parameters=injected, cwd=str(nb.parent), kernel_name="python3",
                                engine_name="optlib", progress_bar=False, log_output=False, optlib_progress=progress,
                                optlib_deadline=time.time() + params.run.chapter_timeout_s)
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
        error = _failure(e, params.run.chapter_timeout_s)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    seconds = time.perf_counter() - t0
    manifest.update(finished=runstate.now_iso(), finished_unix=time.time(), seconds=seconds)
    if error is not None:
        manifest.update(status="failed", error=error)
        runstate.write_manifest(target, manifest)
        return NotebookRun(nb.stem, "failed", seconds, out, error, why)
    removed = _remove_stale_records(target, nb.stem, run_id)
    manifest.update(status="complete", complete_run_id=run_id, cell_seconds=progress.cell_seconds,
                    inputs=inputs.as_dict(runstate.read_trace(trace, params)),
                    outputs=runstate.written_since(target, before), removed_stale_records=removed)
    runstate.write_manifest(target, manifest)  # the commit point: from here its records are complete
    trace.unlink(missing_ok=True)
    return NotebookRun(nb.stem, "ok", seconds, out, None, why)


def _remove_stale_records(target: str, notebook: str, run_id: str) -> list[str]:
    """Records this chapter wrote in earlier runs that this complete run did not write again (a
    configuration since dropped from its parameters): removed, so nothing stale looks current."""
    removed = []
    for p in sorted(paths.results_dir(target).glob("*.json")):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if d.get("notebook") == notebook and (d.get("environment") or {}).get("run_id") != run_id:
            p.unlink()
            removed.append(p.name)
    return removed
