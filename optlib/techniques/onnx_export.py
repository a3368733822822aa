"""ONNX export, validation, simplification and graph statistics.

`export_onnx(model, sample, path, config)` writes one graph with input "input" and output
"output", a dynamic batch axis, constant folding on; the opset actually written is read back
from the file (torch 2.14's default exporter keeps 18 when asked for less). Weights may live in
an external `<name>.onnx.data` file: `onnx_size_bytes` and every loader here account for it.

Exports are cached under `<outputs>/.cache/onnx-export/` (`OPTLIB_EXPORT_CACHE=0` turns it off):
chapters 02-07 and 99 export the same model again and again, each a fresh kernel. The key is
everything the exporter reads: every parameter, buffer and plain tensor attribute (bytes, dtype,
shape), the module tree (`repr`) and the source of each module class, the sample's shape and
dtype, the config, the file name, this module's export code and the torch / onnx / onnxscript
versions. A hit copies the files byte for byte and keeps the export's own seconds, with
`ExportResult.cached_from` naming the entry.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import torch
from torch import nn

from ..core.choices import EXPORTERS, check_choice
from ..core.io import atomic_folder

INPUT_NAME, OUTPUT_NAME = "input", "output"
# FP32 ONNX Runtime vs PyTorch on the same inputs: kernels differ (fused conv, different summation
# order), so outputs differ by float rounding, about 1e-6..1e-5 on logits of magnitude ~10. The
# rounding grows with the logits: an export check allows this much per unit of the largest
# reference logit (at least 1), `fp32_tolerance` (a smoke model's export failed at 1.22e-4 with a
# fixed 1e-4).
FP32_TOLERANCE = 1e-4


def fp32_tolerance(check) -> float:
    """The export check's bound for a check_outputs table: FP32_TOLERANCE x max(1, largest |logit|)."""
    return FP32_TOLERANCE * max(1.0, float(check["reference_max_abs"].max()))


class ExportError(RuntimeError):
    """The model could not be exported; the message names the operator/module and an alternative."""


@dataclass
class ExportConfig:
    exporter: str = "dynamo"  # dynamo (torch.export-based, default) | torchscript (legacy)
    opset: int = 18
    dynamic_batch: bool = True
    constant_folding: bool = True

    def __post_init__(self):
        check_choice("onnx.exporter", self.exporter, EXPORTERS)

    @classmethod
    def from_params(cls, params) -> "ExportConfig":
        return cls(exporter=params.onnx.exporter, opset=params.onnx.opset)


@dataclass
class ExportResult:
    path: str
    exporter: str
    opset_requested: int
    opset_written: int
    seconds: float
    size_bytes: int
    external_data_files: list[str]
    cached_from: str | None = None  # the cache entry a hit copied (`seconds` is that export's)

    def to_dict(self) -> dict:
        return asdict(self)


def external_data_files(path: str | Path) -> list[Path]:
    """Files holding a model's external tensors (e.g. model.onnx.data), resolved next to it."""
    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    locs = set()
    for t in onnx.external_data_helper._get_all_tensors(m):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            for kv in t.external_data:
                if kv.key == "location":
                    locs.add(kv.value)
    return sorted(path.parent / loc for loc in locs)


def onnx_size_bytes(path: str | Path) -> int:
    """Size on disk of an ONNX model including its external data files."""
    return Path(path).stat().st_size + sum(p.stat().st_size for p in external_data_files(path))


def opset_of(model_or_path) -> int:
    m = model_or_path if isinstance(model_or_path, onnx.ModelProto) else onnx.load(
        str(model_or_path), load_external_data=False)
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _explain(e: Exception, exporter: str, model: nn.Module) -> str:
    """One line: what failed (operator or construct), where, and what to try instead."""
    msg = _ANSI.sub("", str(e))
    if "data-dependent" in msg or "GuardOnDataDependent" in msg:
        what = "data-dependent control flow (a Python branch on a tensor value)"
    else:
        what = None
        for pat in (r"(aten::[\w.]+)", r"(torch\.ops\.[\w.]+)", r"[Uu]nsupported[^:]*: ?'?([\w:.]+)'?"):
            mm = re.search(pat, msg)
            if mm:
                what = f"operator {mm.group(1)}"
                break
        what = what or "a construct the exporter does not support"
    loc = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', msg)
    where = f" ({loc[-1][0]}:{loc[-1][1]} in {loc[-1][2]})" if loc else ""
    detail = re.search(r"<class '[\w.]+'>: ([^\n]+)", msg)
    detail = (detail.group(1) if detail else next((ln for ln in msg.splitlines() if ln.strip()), type(e).__name__))
    other = "torchscript" if exporter == "dynamo" else "dynamo"
    if what.startswith("data-dependent"):
        fix = ("Rewrite the branch with torch.where or torch.cond (the torchscript exporter would silently "
               "trace only the branch the sample takes)")
    else:
        fix = f"Try onnx.exporter: {other} or another onnx.opset, or rewrite that part of the module"
    return (f"ONNX export of {type(model).__name__} with the {exporter} exporter failed at {what}{where}: "
            f"{detail.strip()[:200]}. {fix}")


def _fresh_target(path: str | Path) -> Path:
    """Make the folder and remove a previous model and its external data, so no stale file is read."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in [path, *path.parent.glob(path.name + ".data")]:
        stale.unlink(missing_ok=True)
    return path


def export_split(model: nn.Module, sample: torch.Tensor, out_dir: str | Path, config: ExportConfig | None = None,
                 pattern: str = "{part}.onnx") -> tuple[dict[str, ExportResult], tuple[nn.Module, nn.Module] | None]:
    """Export the full model and, when it splits into feature extractor and head
    (`models.split_model`), each part too, so ONNX Runtime can time the stages.

    Returns ({"model": ..., "features": ..., "head": ...}, (features, head)); for a model that does
    not split, only "model" and None.
    """
    from ..workload.models import split_model

    out_dir = Path(out_dir)
    parts = split_model(model)
    todo = [("model", model, sample)]
    if parts is not None:
        features, head = parts
        with torch.no_grad():
            feature_sample = features.eval()(sample)
        todo += [("features", features, sample), ("head", head, feature_sample)]
    return {part: export_onnx(mod, x, out_dir / pattern.format(part=part), config) for part, mod, x in todo}, parts


def export_onnx(model: nn.Module, sample: torch.Tensor, path: str | Path,
                config: ExportConfig | None = None) -> ExportResult:
    """Export `model` (eval mode, CPU) traced on `sample` to `path`; raise ExportError on failure."""
    config = config or ExportConfig()
    path = _fresh_target(path)
    model = model.eval()
    entry = _cache_entry(model, sample, config, path.name)
    hit = _from_cache(entry, path) if entry else None
    if hit is not None:
        return hit
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if config.exporter == "dynamo":
                dyn = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if config.dynamic_batch else None
                prog = torch.onnx.export(model, (sample,), dynamo=True, opset_version=config.opset,
                                         input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                         dynamic_shapes=_dynamic_shapes_for(model, dyn), optimize=True,
                                         verbose=False)
                prog.save(str(path), external_data=True)
            else:
                torch.onnx.export(model, (sample,), str(path), dynamo=False, opset_version=config.opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                                  if config.dynamic_batch else None,
                                  do_constant_folding=config.constant_folding)
    except Exception as e:
        raise ExportError(_explain(e, config.exporter, model)) from e
    seconds = time.perf_counter() - t0
    result = ExportResult(str(path), config.exporter, config.opset, opset_of(path), seconds,
                          onnx_size_bytes(path), [str(p) for p in external_data_files(path)])
    if entry:
        _to_cache(entry, path, result)
    return result


def export_cache_dir() -> Path | None:
    """Where exports are cached, or None when OPTLIB_EXPORT_CACHE is 0."""
    from ..core import paths

    if os.environ.get("OPTLIB_EXPORT_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return paths.output_root() / ".cache" / "onnx-export"


def _versions() -> dict:
    try:
        import onnxscript

        script = onnxscript.__version__
    except ImportError:  # the torchscript exporter needs none
        script = None
    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": script}


def _cache_entry(model: nn.Module, sample: torch.Tensor, config: ExportConfig, name: str) -> Path | None:
    """The cache folder of the export of `model` on `sample`, named by a digest of everything it
    depends on (module docstring), or None (no caching) when the cache is off or something in the
    model cannot be hashed."""
    root = export_cache_dir()
    if root is None:
        return None
    h = hashlib.sha256()
    try:
        sources = {f"{c.__module__}.{c.__qualname__}": _source_of(c) for c in {type(m) for m in model.modules()}}
        code = _source_of(_dynamic_shapes_for)
        modules = {prefix: {"attributes": {k: v for k, v in vars(m).items() if _plain(v)},
                            "hooks": [_source_of(f) for hooks in (m._forward_pre_hooks, m._forward_hooks)
                                      for f in hooks.values()]}
                   for prefix, m in model.named_modules(remove_duplicate=False)}
        h.update(json.dumps({"schema": 1, "name": name, "config": asdict(config), "versions": _versions(),
                             "sample": [list(sample.shape), str(sample.dtype)], "repr": repr(model),
                             "classes": sources, "modules": modules, "code": [_source_of(export_onnx), code]},
                            sort_keys=True).encode())
        tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
        for prefix, m in model.named_modules(remove_duplicate=False):  # plain tensor attributes trace as constants
            tensors += [(f"{prefix}.{k}", v) for k, v in vars(m).items() if isinstance(v, torch.Tensor)]
        for n, t in tensors:
            t = t.detach().cpu().contiguous()
            h.update(f"{n}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    except Exception:  # a quantized or otherwise unusual tensor: export without the cache
        return None
    return root / h.hexdigest()


def _plain(v) -> bool:
    """A Python value a forward may bake into the graph as a constant (a threshold, a flag, a size)."""
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def _source_of(obj) -> str:
    """A digest of a class's or function's source, or its qualified name where none is kept."""
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()
    except (OSError, TypeError):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _from_cache(entry: Path, path: Path) -> ExportResult | None:
    """Copy a cached export to `path` (its external data beside it), or None on a miss."""
    try:
        meta = json.loads((entry / "export.json").read_text())
        for f in meta["files"]:
            shutil.copyfile(entry / f, path.parent / f)
    except (OSError, ValueError, KeyError):
        for f in [path, *path.parent.glob(path.name + ".data")]:
            f.unlink(missing_ok=True)
        return None
    return ExportResult(str(path), meta["exporter"], meta["opset_requested"], meta["opset_written"], meta["seconds"],
                        onnx_size_bytes(path), [str(p) for p in external_data_files(path)], cached_from=str(entry))


def _to_cache(entry: Path, path: Path, result: ExportResult) -> None:
    """Keep a copy of a fresh export, whole or not at all (core.io.atomic_folder)."""
    try:
        with atomic_folder(entry, replace=False) as tmp:
            files = [path.name, *(Path(p).name for p in result.external_data_files)]
            for f in files:
                shutil.copyfile(path.parent / f, tmp / f)
            meta = {k: getattr(result, k) for k in ("exporter", "opset_requested", "opset_written", "seconds")}
            (tmp / "export.json").write_text(json.dumps({**meta, "files": files, "source": str(path)}))
    except OSError:  # another process wrote it first, or no room: the export itself stands
        pass


def _dynamic_shapes_for(model: nn.Module, dyn: dict | None):
    """torch.export keys dynamic shapes by the forward's argument name."""
    if dyn is None:
        return None
    import inspect

    params = [p for p in inspect.signature(model.forward).parameters.values() if p.name != "self"]
    name = params[0].name if params else "x"
    return {name: dyn["x"]}


def validate_onnx(path: str | Path) -> dict:
    """Full onnx.checker check and shape inference (both by path, so external data is handled)."""
    path = str(path)
    onnx.checker.check_model(path, full_check=True)
    inferred = onnx.shape_inference.infer_shapes_path(path, path + ".inferred.onnx")
    del inferred
    p = Path(path + ".inferred.onnx")
    m = onnx.load(str(p), load_external_data=False)
    p.unlink(missing_ok=True)
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    return {"checker": "ok (full_check)", "inputs": ins, "outputs": outs,
            "value_info_inferred": len(m.graph.value_info)}


def graph_stats(path: str | Path) -> dict:
    """Node count, operator histogram, parameter count and size of an ONNX model."""
    m = onnx.load(str(path), load_external_data=True)
    ops = Counter(n.op_type for n in m.graph.node)
    params = int(sum(np.prod(t.dims) if len(t.dims) else 1 for t in m.graph.initializer))
    return {"nodes": len(m.graph.node), "ops": dict(sorted(ops.items())), "parameters": params,
            "size_bytes": onnx_size_bytes(path), "opset": opset_of(m)}


def simplify_onnx(path: str | Path, out_path: str | Path) -> dict:
    """Simplify with onnxslim; returns graph statistics before and after."""
    import onnxslim

    before = graph_stats(path)
    model = onnxslim.slim(str(path))
    out_path = _fresh_target(out_path)
    onnx.save(model, str(out_path), save_as_external_data=before["size_bytes"] > 2**31 - 1)  # protobuf limit
    after = graph_stats(out_path)
    changed = {op: (before["ops"].get(op, 0), after["ops"].get(op, 0))
               for op in sorted(set(before["ops"]) | set(after["ops"]))
               if before["ops"].get(op, 0) != after["ops"].get(op, 0)}
    return {"before": before, "after": after, "ops_changed": changed, "path": str(out_path)}


@dataclass
class Graphs:
    """The FP32 graphs a runtime runs: the full model and, when it splits, features and head."""
    paths: dict[str, str]  # part -> .onnx path (the simplified graphs when they were kept)
    exports: dict[str, ExportResult]
    parts: tuple[nn.Module, nn.Module] | None  # (features, head) modules of the split, or None
    validation: dict
    output_checks: dict[str, pd.DataFrame]  # "export" / "simplified" -> check_outputs table
    simplification: dict | None  # simplify_onnx stats of the full graph
    simplified: bool  # True when the simplified graphs are the ones in `paths`

    @property
    def export_seconds(self) -> float:
        return sum(e.seconds for e in self.exports.values())

    def info(self) -> dict:
        e = self.exports["model"]
        return {"exporter": e.exporter, "opset_requested": e.opset_requested, "opset_written": e.opset_written,
                "export_seconds": self.export_seconds, "export_cached": e.cached_from is not None,
                "simplified": self.simplified, "model_path": self.paths["model"],
                "graph": graph_stats(self.paths["model"])["ops"]}


def runtime_graphs(model: nn.Module, sample: torch.Tensor, out_dir: str | Path, config: ExportConfig,
                   simplify: bool, reference, ort_config, images: list[np.ndarray],
                   batch_sizes: list[int], outputs=None) -> Graphs:
    """Export the model (and its split), validate it, check its outputs against `reference` (the
    PyTorch runner) with ONNX Runtime (`ort_config`) at each of `batch_sizes` (decisions as
    `outputs`, workload.outputs.Outputs, makes them), and simplify.

    The exported graph must agree within fp32_tolerance (ExportError otherwise); the simplified
    graphs are used only when they agree too.
    """
    from ..backends.onnxruntime import OrtRunner
    from ..measurement.metrics import check_outputs

    def check(path):
        return check_outputs(OrtRunner(path, reference.spec, name="check", config=ort_config), reference, images,
                             batch_sizes, outputs)

    out_dir = Path(out_dir)
    # named as int8_onnx.fp32_graphs names them: chapters 03 to 07 then find these in the export cache
    exports, parts = export_split(model, sample, out_dir, config, "{part}.fp32.onnx")
    paths_ = {k: e.path for k, e in exports.items()}
    validation = validate_onnx(paths_["model"])
    checks = {"export": check(paths_["model"])}
    tolerance = fp32_tolerance(checks["export"])
    if checks["export"]["max_abs_diff"].max() >= tolerance:
        raise ExportError(f"{paths_['model']}: outputs differ from PyTorch by {checks['export']['max_abs_diff'].max():.2e} "
                          f"(tolerance {tolerance:.2e}); try onnx.exporter: "
                          f"{next(x for x in EXPORTERS if x != config.exporter)}")
    stats, kept = None, False
    if simplify:
        slim = {k: simplify_onnx(p, out_dir / f"{k}.slim.onnx") for k, p in paths_.items()}
        stats = slim["model"]
        checks["simplified"] = check(stats["path"])
        if checks["simplified"]["max_abs_diff"].max() < tolerance:
            paths_, kept = {k: v["path"] for k, v in slim.items()}, True
    return Graphs(paths_, exports, parts, validation, checks, stats, kept)
