"""Targets spread over machines: `optlib run --targets cpu,cuda,edge --cluster ADDRESS|local`.

Each target's chapters run as one Ray task on a node that has what the target needs, and the
executed notebooks, records and artifacts come back into outputs/<target>/ here, so one report
covers them all. What keeps the timing honest:

- every task asks for one unit of the node resource `optlib_bench`, and a node offers one: at most
  one measuring task per node at a time (start nodes with
  `ray start --address=HEAD --resources='{"optlib_bench": 1}'`; `--cluster local` starts a Ray
  instance here with that resource);
- a cuda target also asks for a GPU; a target whose `run.node_resource` names a machine kind (say
  `edge_board`) asks for that custom resource, which only the nodes of that kind offer;
- threads are set inside the task (the chapters' bench.threads), and every record names the node's
  hardware (its environment), as it does when run here.

The task gets the repository (Ray's working_dir, without outputs/ and the virtual environment) and
the target's current outputs, so skip-unchanged works there as here; it sends back the files its
chapters wrote. Ray is an optional extra (`pip install -e '.[cluster]'`).
"""
from __future__ import annotations

import io
import os
import socket
import tarfile
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

from . import paths, runstate

BENCH_RESOURCE = "optlib_bench"
SHIPPED_ENV = ("OPTLIB_NOTEBOOKS_DIR",)  # passed on to the task (tests run small notebooks of their own)
EXCLUDES = ["outputs/", ".venv/", ".git/", ".whl/", "__pycache__/", ".pytest_cache/", "*.egg-info/"]


class ClusterError(RuntimeError):
    """Ray missing, a cluster that cannot be reached, or a target no node can run."""


@dataclass
class TargetResult:
    target: str
    node: str
    started: float  # time.time() on the node
    finished: float
    runs: list  # pipeline.NotebookRun

    @property
    def seconds(self) -> float:
        return self.finished - self.started


def requirements(params) -> dict[str, float]:
    """The Ray resources a target's task asks for."""
    req = {BENCH_RESOURCE: 1.0}
    if params.device == "cuda":
        req["GPU"] = 1.0
    if params.run.node_resource:
        req[params.run.node_resource] = 1.0
    return req


def _tar_dir(base: Path, only: set[str] | None = None) -> bytes:
    """The files under `base` (or the relative paths in `only`) as an uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                rel = str(p.relative_to(base))
                if p.is_file() and not p.is_symlink() and (only is None or rel in only) and p.name != ".lock":
                    tar.add(p, arcname=rel)
    return buf.getvalue()


def _untar(data: bytes, base: Path) -> None:
    base.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(base, filter="data")


def _files(base: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in base.rglob("*") if p.is_file() and p.name != ".lock"} if base.is_dir() else {}


def run_target_here(target: str, params_dict: dict, outputs: bytes, selection, force, env: dict) -> dict:
    """The task: the target's chapters in a scratch outputs folder seeded with `outputs`; returns
    the files they wrote (a tar), the ones they removed, the runs and when it ran."""
    from .params import from_dict
    from .pipeline import run_notebooks

    started = time.time()
    saved = {k: os.environ.get(k) for k in ("OPTLIB_OUTPUT_ROOT", *SHIPPED_ENV)}
    with tempfile.TemporaryDirectory(prefix=f"optlib-{target}-") as root:
        base = Path(root) / target
        _untar(outputs, base)
        before = _files(base)
        os.environ["OPTLIB_OUTPUT_ROOT"] = root
        os.environ.update({k: v for k, v in env.items() if v is not None})
        try:
            runs = run_notebooks(from_dict(params_dict, f"<params of target {target}>"), selection, force,
                                 command=f"ray task for target {target}")
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        after = _files(base)
        changed = {rel for rel, st in after.items() if before.get(rel) != st}
        return {"target": target, "node": f"{socket.gethostname()} ({_node_ip()})", "started": started,
                "finished": time.time(), "runs": [asdict(r) for r in runs],
                "files": _tar_dir(base, changed), "removed": sorted(set(before) - set(after))}


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:
        return "?"


def run_targets(targets: list[str], address: str, selection=None, force=False) -> list[TargetResult]:
    """Run each target's chapters as a Ray task (see the module docstring); bring its files back.
    `targets`: names (params/<name>.yaml) or params files."""
    from .pipeline import NotebookRun, resolve_params

    try:
        import ray
    except ImportError:
        raise ClusterError("--cluster needs Ray: pip install -e '.[cluster]' "
                           "(without --cluster nothing needs it)") from None
    if not targets:
        raise ClusterError("--targets: name at least one target (e.g. cpu,edge)")
    chosen = [resolve_params(None, t)[0] if t.endswith((".yaml", ".yml")) else resolve_params(t, None)[0]
              for t in targets]
    params = {p.target: p for p in chosen}
    if len(params) != len(chosen):
        raise ClusterError(f"--targets: {targets} name the same target twice")
    targets = list(params)
    runtime_env = {"working_dir": str(paths.REPO_DIR), "excludes": EXCLUDES}
    try:
        if address == "local":
            ray.init(resources={BENCH_RESOURCE: 1}, include_dashboard=False, runtime_env=runtime_env,
                     log_to_driver=True, configure_logging=False)
        else:
            ray.init(address=address, runtime_env=runtime_env, configure_logging=False)
    except Exception as e:
        raise ClusterError(f"--cluster {address}: cannot start or reach Ray ({type(e).__name__}: {e})") from None
    try:
        have = ray.cluster_resources()
        for t, p in params.items():
            missing = [k for k, v in requirements(p).items() if have.get(k, 0) < v]
            if missing:
                raise ClusterError(
                    f"target {t!r} needs {missing} but no node of --cluster {address} offers it (start a node with "
                    f"ray start --address=HEAD --resources='{{\"{BENCH_RESOURCE}\": 1}}'"
                    + (" on a GPU machine" if "GPU" in missing else "") + ")")
        task = ray.remote(run_target_here)
        env = {k: os.environ.get(k) for k in SHIPPED_ENV}
        with ExitStack() as locks:  # no local run of these targets while their tasks run elsewhere
            for t in targets:
                locks.enter_context(runstate.TargetLock(t, f"--cluster {address} run"))
            refs = {}
            for t, p in params.items():
                req = requirements(p)
                gpus = req.pop("GPU", 0)
                refs[t] = task.options(num_cpus=1, num_gpus=gpus, resources=req).remote(
                    t, p.to_dict(), _tar_dir(paths.target_dir(t)), selection, force, env)
            results = []
            for t, ref in refs.items():
                out = ray.get(ref)
                base = paths.target_dir(t)
                _untar(out["files"], base)
                for rel in out["removed"]:
                    (base / rel).unlink(missing_ok=True)
                runs = [NotebookRun(**{**r, "output": base / "notebooks" / Path(r["output"]).name})
                        for r in out["runs"]]
                results.append(TargetResult(t, out["node"], out["started"], out["finished"], runs))
                print(f"[optlib] target {t!r}: done on {out['node']} in {out['finished'] - out['started']:.0f} s; "
                      f"{len(out['removed'])} file(s) removed, outputs in {base}", flush=True)
        return results
    finally:
        ray.shutdown()
