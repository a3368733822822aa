"""The GPU path end to end: the cuda target's chapters (00-08, 99) at small sizes
(params/cuda-small.yaml) on one GPU, without network access, in about ten minutes.

    python scripts/gpu_run.py --out DIR [--timeout-s 540]

It first checks the machine (DIR/preflight.json: the CUDA device, the Python modules the chapters
import, which are missing); without a CUDA device it says so and exits 0 (nothing to run here: CI
runs it that far); with modules missing it names them and exits 3. Otherwise it runs
`python -m optlib run --params params/cuda-small.yaml` with the outputs under DIR/outputs (executed
notebooks, records, figures, report) and writes DIR/summary.csv; its exit status is the run's.
Needs only the repository and an environment with the `cuda` extra installed; nothing is
downloaded (the embedded workload is generated, the model trained from scratch).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params" / "cuda-small.yaml"
# import names of what the chapters need (pyproject's dependencies and the cuda extra's
# onnxruntime-gpu); TensorRT and Torch-TensorRT are optional: chapter 07 records them as skipped
NEEDED = ("torch", "torchvision", "numpy", "scipy", "sklearn", "pandas", "matplotlib", "PIL", "yaml", "tqdm",
          "onnx", "onnxscript", "torch_pruning", "papermill", "nbformat", "jinja2", "ipykernel", "onnxruntime")
OPTIONAL = ("tensorrt", "torch_tensorrt", "pynvml")


def preflight() -> dict:
    """The CUDA device (or why there is none) and the modules present and missing."""
    info = {"python": sys.version.split()[0],
            "missing": [m for m in NEEDED if importlib.util.find_spec(m) is None],
            "optional_missing": [m for m in OPTIONAL if importlib.util.find_spec(m) is None]}
    try:
        import torch
    except ImportError:
        return {**info, "cuda": False, "why": "torch cannot be imported"}
    if not torch.cuda.is_available():
        return {**info, "cuda": False, "why": "torch.cuda.is_available() is False"}
    return {**info, "cuda": True, "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "cuda_version": torch.version.cuda}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for preflight.json, outputs/ and summary.csv")
    ap.add_argument("--timeout-s", type=float, default=540.0, help="the run's wall-clock limit")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    info = preflight()
    (out / "preflight.json").write_text(json.dumps(info, indent=2))
    if not info["cuda"]:
        print(f"gpu_run: skipped, no CUDA device here ({info['why']}); nothing was run")
        return 0
    if info["missing"]:
        print(f"gpu_run: cannot run, missing Python modules: {', '.join(info['missing'])} "
              "(install the cuda extra: pip install -e '.[cuda,dev]')")
        return 3
    print(f"gpu_run: {info['device']} (torch {info['torch']}, CUDA {info['cuda_version']}); running {PARAMS.name}")
    env = {**os.environ, "OPTLIB_OUTPUT_ROOT": str(out / "outputs")}
    cmd = [sys.executable, "-m", "optlib", "run", "--params", str(PARAMS)]
    try:
        status = subprocess.run(cmd, cwd=REPO, env=env, timeout=args.timeout_s).returncode
    except subprocess.TimeoutExpired:
        print(f"gpu_run: the run passed its {args.timeout_s:.0f} s limit; what it wrote is under {out / 'outputs'}")
        status = 124
    summary = subprocess.run([sys.executable, "-m", "optlib", "summary", "--params", str(PARAMS), "--format", "csv"],
                             cwd=REPO, env=env, capture_output=True, text=True)
    (out / "summary.csv").write_text(summary.stdout)
    print(f"gpu_run: exit {status}; notebooks, records and report under {out / 'outputs' / 'cuda-small'}")
    return status


if __name__ == "__main__":
    sys.exit(main())
