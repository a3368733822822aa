"""The repository's own files: environment.yml mirrors pyproject, notebooks are committed clean."""
import json
import os
import re
import tomllib

import pytest
import yaml

from optlib.core import paths


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_mirrors_pyproject():
    py = tomllib.loads((paths.REPO_DIR / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((paths.REPO_DIR / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e .[cpu,dev]" in pip
    env_names = {_name(r) for r in pip if not r.startswith("-e")}
    wanted = {_name(r) for r in py["dependencies"] + py["optional-dependencies"]["cpu"]
              + py["optional-dependencies"]["dev"]}
    assert env_names == wanted
    # pins agree
    pins = {_name(r): r for r in py["dependencies"] if "==" in r}
    for r in pip:
        if _name(r) in pins:
            assert r == pins[_name(r)]
    # the cpu and cuda extras are alternatives, never mixed
    assert "onnxruntime-gpu" not in env_names


NOTEBOOKS = sorted(paths.NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_committed_without_outputs_and_with_parameters_cell(nb):
    cells = json.loads(nb.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c.get("outputs") or c.get("execution_count")]
    assert not dirty, f"{nb.name}: cells {dirty} carry outputs; strip them (executed copies go to outputs/)"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb.name}: needs exactly one cell tagged 'parameters' for papermill"
    assert cells[0]["cell_type"] == "markdown" and "Question" in "".join(cells[0]["source"])


def test_ci_calls_make_test():
    assert "make test" in (paths.REPO_DIR / ".ci" / "run").read_text()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_parameters_cell_passes_every_section_through(nb):
    """papermill injects one `params` dict with every top-level key of Params but the pipeline's
    own; the notebook's defaults name only known keys, and the whole dict goes to chapter.setup, so a
    new params section needs no notebook edited."""
    import dataclasses

    from optlib.core.params import PIPELINE_ONLY_KEYS, Params, from_dict

    cells = json.loads(nb.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)
    assert {"params_file", "params"} <= set(namespace), f"{nb.name}: the parameters cell must define params_file and params"
    fields = {f.name for f in dataclasses.fields(Params)} - PIPELINE_ONLY_KEYS
    assert set(namespace["params"]) <= fields, f"{nb.name}: unknown sections {set(namespace['params']) - fields}"
    from_dict(namespace["params"], nb.name)  # the defaults themselves are valid
    source = "".join("".join(c["source"]) for c in cells)
    assert "chapter.setup(NOTEBOOK, params_file, **params)" in source, f"{nb.name}: does not pass params through"


READING_WORDS_PER_MINUTE = 250


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_defines_nothing_and_reads_in_five_minutes(nb):
    """Logic lives in optlib, where it is tested: a chapter is question, parameters, a few calls,
    table, figure, discussion."""
    import ast
    import re

    cells = json.loads(nb.read_text())["cells"]
    for c in cells:
        if c["cell_type"] == "code":
            defined = [type(n).__name__ for n in ast.walk(ast.parse("".join(c["source"])))
                       if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            assert not defined, f"{nb.name}: a cell defines {defined}; move that logic into optlib with a test"
    words = sum(len(re.findall(r"\w+", "".join(c["source"]))) for c in cells
                if "parameters" not in c.get("metadata", {}).get("tags", []))
    assert words <= 5 * READING_WORDS_PER_MINUTE, f"{nb.name}: {words} words, longer than a five-minute read"


def test_pipeline_lists_chapters_in_order_with_second_parts():
    from optlib.core.pipeline import list_notebooks

    names = [p.stem for p in list_notebooks()]
    assert names == sorted(names) and names.index("04_int8_ptq") + 1 == names.index("04b_int8_studies")
    assert [p.stem for p in list_notebooks(["04"])] == ["04_int8_ptq", "04b_int8_studies"]


def test_make_run_with_a_params_file_writes_to_its_target():
    """`make run PARAMS=f` must not pass --target as well: it would override the file's target
    (every user's run went to outputs/cpu/)."""
    import subprocess

    out = subprocess.run(["make", "-n", "run", "report", "PARAMS=my.yaml"], cwd=paths.REPO_DIR, capture_output=True,
                         text=True, check=True).stdout
    commands = [ln for ln in out.splitlines() if "-m optlib" in ln]
    assert commands and all("--params my.yaml" in ln and "--target" not in ln for ln in commands)
    default = subprocess.run(["make", "-n", "run"], cwd=paths.REPO_DIR, capture_output=True, text=True, check=True).stdout
    assert "--target cpu" in default


def test_gpu_script_checks_the_machine_and_skips_cleanly_without_a_gpu(tmp_path):
    """scripts/gpu_run.py as CI runs it (no GPU): the preflight names the device it did not find and
    the modules it looked for, runs nothing and exits 0; its params file validates as a cuda target."""
    import subprocess
    import sys

    from optlib.core.params import load_params

    p = subprocess.run([sys.executable, str(paths.REPO_DIR / "scripts" / "gpu_run.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0, p.stdout + p.stderr
    info = json.loads((tmp_path / "preflight.json").read_text())
    assert info["cuda"] is False and "is_available" in info["why"] and info["missing"] == []
    assert "skipped, no CUDA device" in p.stdout and not (tmp_path / "outputs").exists()
    params = load_params(paths.PARAMS_DIR / "cuda-small.yaml")
    assert params.device == "cuda" and params.target == "cuda-small"
