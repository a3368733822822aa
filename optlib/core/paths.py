"""Where things live: the repository, and outputs/<target>/ with its fixed sub-folders."""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # optlib/
REPO_DIR = PACKAGE_DIR.parent
NOTEBOOKS_DIR = REPO_DIR / "notebooks"
PARAMS_DIR = REPO_DIR / "params"


def output_root() -> Path:
    """outputs/ of the repository, or $OPTLIB_OUTPUT_ROOT (tests point it at a temporary folder)."""
    env = os.environ.get("OPTLIB_OUTPUT_ROOT")
    return Path(env) if env else REPO_DIR / "outputs"


def target_dir(target: str) -> Path:
    return output_root() / target


def results_dir(target: str) -> Path:
    return target_dir(target) / "results"


def figures_dir(target: str) -> Path:
    d = target_dir(target) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def models_dir(target: str) -> Path:
    d = target_dir(target) / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def params_file_for(target: str) -> Path:
    return PARAMS_DIR / f"{target}.yaml"
