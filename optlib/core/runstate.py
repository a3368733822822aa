"""What a target's chapters last ran with, and whether a chapter must run again.

Each chapter run leaves a manifest, outputs/<target>/runs/<notebook>.json (schema "optlib.run/1"):

  run_id           this run's id; every record the chapter writes carries it (environment.run_id)
  status           running | complete | failed
  complete_run_id  the last complete run's id: records of any other run of this chapter are shown
                   as from an incomplete run (results.records.load_records)
  pid, host, started, finished, seconds, error
  inputs           what the chapter's results depend on, compared on the next run:
                     notebook     sha256 of the notebook file
                     code         {optlib file: sha256} for the optlib modules it imports, directly or not
                     params       {key: value} for the parameters it read (core.params.trace_reads)
                     environment  Python and library versions, the CPU, the device
                     depends      {chapter: run_id of the complete run it used}
  outputs          {path under the target: [size, mtime_ns, sha256]} written by the run (records,
                   artifacts, models, studies): a chapter whose outputs were since removed or edited runs again
  cell_seconds     each cell's duration (papermill), for the time-left estimate of the next run

A chapter is skipped when its last run completed and nothing above changed; `changes` says what did.
"""
from __future__ import annotations

import ast
import datetime as _dt
import fcntl
import hashlib
import json
import os
import platform
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .env import cpu_name, versions
from .manifest import RUN_ID_ENV, SCHEMA, TRACE_ENV, read_manifest, runs_dir, write_manifest  # noqa: F401

# Under the target: what chapters produce and later chapters (or the final round) read. The rest
# (executed notebooks, the report's tables and figures, deploy/) is rewritten by every report.
TRACKED = ("results", "artifacts", "models", "studies")


def new_run_id() -> str:
    return f"{_dt.datetime.now().strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- inputs -----------------------------------------------------------------------------------

def _module_file(module: str) -> Path | None:
    """optlib.a.b -> optlib/a/b.py or optlib/a/b/__init__.py (None outside optlib)."""
    if module != "optlib" and not module.startswith("optlib."):
        return None
    base = paths.PACKAGE_DIR.parent.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Modules named by the import statements anywhere in `tree` (function-level ones too), with
    `from X import name` also giving X.name in case it is a submodule."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def notebook_code(notebook: Path) -> str:
    nb = json.loads(notebook.read_text())
    return "\n".join("".join(c.get("source", "")) for c in nb.get("cells", []) if c.get("cell_type") == "code")


def code_closure(notebook: Path) -> dict[str, str]:
    """{path relative to the repository: sha256} of the optlib files the notebook imports, followed
    through their own imports (a static over-approximation: a lazily imported module counts)."""
    lines = [ln for ln in notebook_code(notebook).splitlines() if not ln.lstrip().startswith(("%", "!"))]
    try:
        roots = _imports(ast.parse("\n".join(lines)), "")
    except SyntaxError:
        roots = {"optlib"}
    todo, seen = [m for m in roots if _module_file(m)], {}
    while todo:
        mod = todo.pop()
        f = _module_file(mod)
        if f is None or f in seen.values():
            continue
        seen[mod] = f
        pkg = mod if f.name == "__init__.py" else mod.rsplit(".", 1)[0]
        parents = [".".join(mod.split(".")[:i]) for i in range(1, len(mod.split(".")))]
        todo.extend(m for m in [*parents, *_imports(ast.parse(f.read_text()), pkg)] if _module_file(m))
    repo = paths.PACKAGE_DIR.parent
    return {str(f.relative_to(repo)): sha256_file(f) for f in sorted(set(seen.values()))}


def environment_inputs(device: str) -> dict:
    """What the numbers depend on beyond the code: interpreter, libraries, CPU, device kind."""
    return {"python": platform.python_version(), "cpu": cpu_name(), "cores": os.cpu_count(), "device": device,
            **versions()}


# --- outputs ----------------------------------------------------------------------------------

def snapshot(target: str) -> dict[str, tuple[int, int]]:
    """{path under the target: (size, mtime_ns)} of the tracked outputs."""
    base = paths.target_dir(target)
    out = {}
    for top in TRACKED:
        for dirpath, _, files in os.walk(base / top):
            for name in files:
                if name.startswith("."):  # atomic_write's temporaries
                    continue
                p = Path(dirpath) / name
                try:
                    st = p.stat()
                except OSError:
                    continue
                out[str(p.relative_to(base))] = (st.st_size, st.st_mtime_ns)
    return out


def written_since(target: str, before: dict[str, tuple[int, int]]) -> dict[str, list]:
    """The tracked files new or changed since `before`, each with its size, mtime and sha256."""
    base = paths.target_dir(target)
    return {rel: [size, mtime, sha256_file(base / rel)] for rel, (size, mtime) in snapshot(target).items()
            if before.get(rel) != (size, mtime)}


def outputs_changed(target: str, outputs: dict[str, list]) -> str | None:
    """Why the recorded outputs no longer hold (the first missing or edited file), or None."""
    base = paths.target_dir(target)
    for rel, (size, mtime, sha) in outputs.items():
        p = base / rel
        try:
            st = p.stat()
        except OSError:
            return f"{rel} was removed"
        if (st.st_size, st.st_mtime_ns) != (size, mtime) and sha256_file(p) != sha:
            return f"{rel} was changed"
    return None


# --- the decision -----------------------------------------------------------------------------

@dataclass
class Inputs:
    notebook: str
    code: dict[str, str]
    environment: dict
    depends: dict[str, str | None]

    def as_dict(self, params_read: dict) -> dict:
        return {"notebook": self.notebook, "code": self.code, "params": params_read,
                "environment": self.environment, "depends": self.depends}


def _diff_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def changes(manifest: dict | None, inputs: Inputs, params, target: str) -> list[str]:
    """Why the chapter must run again ([] when its last complete run still stands)."""
    from .params import read_value

    if manifest is None:
        return ["it has no complete run (no manifest)"]
    if manifest.get("status") != "complete":
        what = "was stopped" if manifest.get("status") == "running" else f"failed ({manifest.get('error') or '?'})"
        return [f"its last run ({manifest.get('run_id')}, pid {manifest.get('pid')}) {what}"]
    old = manifest.get("inputs", {})
    why = []
    if old.get("notebook") != inputs.notebook:
        why.append("the notebook changed")
    code = _diff_keys(old.get("code", {}), inputs.code)
    if code:
        why.append(f"optlib code changed: {', '.join(code[:4])}" + (" ..." if len(code) > 4 else ""))
    params_changed = []
    for key, value in old.get("params", {}).items():
        try:
            now = json.loads(json.dumps(read_value(params, key), default=str))
        except AttributeError:
            now = "<no longer a parameter>"
        if now != value:
            params_changed.append(f"{key} {value!r} -> {now!r}")
    if params_changed:
        why.append("parameters changed: " + "; ".join(params_changed))
    env = _diff_keys(old.get("environment", {}), inputs.environment)
    if env:
        why.append(f"the environment changed: {', '.join(env)}")
    deps = [d for d in sorted(set(old.get("depends", {})) | set(inputs.depends))
            if old.get("depends", {}).get(d) != inputs.depends.get(d)]
    if deps:
        why.append(f"{', '.join(deps)} ran again since")
    broken = outputs_changed(target, manifest.get("outputs", {}))
    if broken:
        why.append(f"its outputs changed: {broken}")
    return why


def read_trace(path: Path, params) -> dict:
    """{key: value} of the parameters noted as read in the trace file (see core.params.trace_reads)."""
    from .params import read_value

    try:
        keys = sorted(set(path.read_text().split()))
    except OSError:
        return {}
    out = {}
    for k in keys:
        try:
            out[k] = json.loads(json.dumps(read_value(params, k), default=str))
        except AttributeError:
            continue
    return out


# --- one run at a time per target -------------------------------------------------------------

class LockedError(RuntimeError):
    """Another `optlib run` holds the target."""


class TargetLock:
    """An exclusive flock on outputs/<target>/runs/.lock, holding the owner's pid and command. The
    kernel drops it when the process ends, however it ends: no stale lock after a crash."""

    def __init__(self, target: str, command: str = ""):
        self.target, self.command = target, command
        self.path = runs_dir(target) / ".lock"
        self._fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = json.loads(os.read(fd, 4096) or b"{}")
            except ValueError:
                owner = {}
            os.close(fd)
            raise LockedError(
                f"target {self.target!r} is being run by pid {owner.get('pid', '?')} on {owner.get('host', '?')} "
                f"since {owner.get('started', '?')} ({owner.get('command', '?')}); lock {self.path}: wait for it "
                "to finish or stop that process") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(),
                                 "command": self.command}).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc):
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
