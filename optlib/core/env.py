"""What machine and software produced a number (recorded with every result)."""
from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import subprocess
from functools import lru_cache

from . import paths

# The libraries whose versions label every record and decide whether a chapter's outputs are stale
# (core.runstate): one list for both.
LIBRARIES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript",
             "onnxslim", "openvino", "nncf", "torchao", "torch-pruning", "tensorrt", "torch-tensorrt",
             "scikit-learn", "scipy")


# The instruction-set extensions that decide which kernels can run (VNNI: INT8 dot products; BF16 and
# FP16: reduced-precision arithmetic; AMX: tile units). Machines lent on different days differ here.
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "amx_fp16")


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return out


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (/proc/cpuinfo `flags`, `Features` on ARM; empty where unreadable)."""
    info = _cpuinfo()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def cpu_isa() -> list[str]:
    """The ISA_FLAGS this CPU has, as recorded with every result."""
    flags = cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]


def bf16_kernels_on_cpu() -> bool:
    """Whether oneDNN has BF16 kernels on this CPU (AVX512-BF16 or AMX); without them PyTorch runs
    BF16 in ATen's own kernels, up to an order of magnitude slower than FP32."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    return None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.REPO_DIR, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.REPO_DIR,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else None
    except Exception:
        return None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def device_info(kind: str, threads: int) -> dict:
    return {"kind": kind, "name": gpu_name() if kind == "cuda" else cpu_name(), "threads": threads,
            "cpu": cpu_name(), "cpu_count": os.cpu_count()}


def environment(params_hash: str | None = None) -> dict:
    return {
        "versions": versions(),
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "params_hash": params_hash,
        "env_vars": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS")
                     if k in os.environ},
    }
