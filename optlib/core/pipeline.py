"""Run the numbered notebooks in order with papermill into outputs/<target>/notebooks/."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .params import Params, load_params


@dataclass
class NotebookRun:
    notebook: str
    status: str  # ok | failed
    seconds: float
    output: Path
    error: str | None = None


def list_notebooks(selection: list[str] | None = None) -> list[Path]:
    """Numbered notebooks (NN_name.ipynb, NNb_name.ipynb for a chapter's second part) in order;
    `selection` filters by number or name prefix ("04" selects 04_* and 04b_*)."""
    nbs = sorted(p for p in paths.NOTEBOOKS_DIR.glob("[0-9][0-9]*_*.ipynb"))
    if not selection:
        return nbs
    chosen = [p for p in nbs if any(p.stem.startswith(s) for s in selection)]
    unknown = [s for s in selection if not any(p.stem.startswith(s) for p in nbs)]
    if unknown:
        raise ValueError(f"--notebooks: no notebook matches {unknown} (have: {[p.stem for p in nbs]})")
    return chosen


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


def run_notebooks(params: Params, selection: list[str] | None = None) -> list[NotebookRun]:
    """Execute each selected notebook with `params` injected; keep going past a failure."""
    import papermill as pm

    out_dir = paths.target_dir(params.target) / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    injected = params.to_dict()
    runs = []
    for nb in list_notebooks(selection):
        out = out_dir / nb.name
        print(f"[optlib] {nb.stem}: running -> {out}", flush=True)
        t0 = time.perf_counter()
        try:
            pm.execute_notebook(str(nb), str(out), parameters=injected, cwd=str(paths.NOTEBOOKS_DIR),
                                kernel_name="python3", progress_bar=False, log_output=False)
            runs.append(NotebookRun(nb.stem, "ok", time.perf_counter() - t0, out))
        except Exception as e:  # papermill raises PapermillExecutionError with the cell's traceback
            msg = getattr(e, "evalue", None) or str(e).strip().splitlines()[-1]
            ename = getattr(e, "ename", type(e).__name__)
            runs.append(NotebookRun(nb.stem, "failed", time.perf_counter() - t0, out, f"{ename}: {msg}"))
            print(f"[optlib] {nb.stem}: FAILED ({ename}: {msg}); executed copy kept at {out}",
                  file=sys.stderr, flush=True)
        else:
            print(f"[optlib] {nb.stem}: ok in {runs[-1].seconds:.1f} s", flush=True)
    return runs
