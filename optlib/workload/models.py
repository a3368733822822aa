"""Models: build an architecture by name, load a checkpoint safely, split it into feature
extractor and head, and train (and cache) the embedded default model."""
from __future__ import annotations

import copy
import importlib
import inspect
import json
import pickle
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core import paths
from ..core.io import atomic_write, write_json_atomic
from ..core.params import Params, stable_hash
from .data import Dataset, PreprocessSpec, preprocess
from .outputs import Outputs
from .training import FineTuneRecipe, finetune


class CheckpointError(ValueError):
    """A checkpoint cannot be read safely or does not fit the model."""


@dataclass
class ModelInfo:
    arch: str
    num_classes: int
    source: str  # "trained:<path>" | "cache:<path>" | checkpoint path
    parameters: int
    weights: str | None = None  # the file the weights load from (cached state_dict or the checkpoint)
    trust_checkpoint: bool = False
    checkpoint_format: str | None = None  # state_dict | dict-with-state_dict | lightning
    stripped_prefix: str | None = None
    extra_keys: list[str] = field(default_factory=list)  # top-level checkpoint entries not loaded
    dropped_keys: list[str] = field(default_factory=list)  # state_dict entries outside the prefix
    hyper_parameters: dict = field(default_factory=dict)  # a Lightning checkpoint's, plain values only
    hyper_parameter_checks: list[str] = field(default_factory=list)  # do they agree with the params?
    outputs: str = "softmax"  # softmax | sigmoid (one logit for the positive class)
    head: str | None = None  # the classification head's attribute path (None: the model does not split)
    head_detected: bool = False  # True when found by name rather than given as model.head
    train_history: list[dict] | None = None
    train_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(arch: str, num_classes: int, seed: int | None = None) -> nn.Module:
    """'torchvision:<name>' (random init, no download) or 'package.module:function'. With `seed`,
    the initial weights are drawn from it: torch seeds its generator from the OS at import, so
    without one two processes start a model from different weights."""
    if ":" not in arch:
        raise ValueError(f"model.arch: {arch!r} must be 'torchvision:<name>' or 'package.module:function'")
    if seed is not None:
        torch.manual_seed(seed)
    module_name, fn_name = arch.split(":", 1)
    if module_name == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(fn_name, weights=None, num_classes=num_classes)
        except ValueError:
            raise ValueError(f"model.arch: torchvision has no model {fn_name!r} "
                             f"(e.g. resnet18, resnet50, mobilenet_v3_small)") from None
    try:
        fn = getattr(importlib.import_module(module_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model.arch: cannot import {arch!r} ({e})") from None
    if "num_classes" in inspect.signature(fn).parameters:
        return fn(num_classes=num_classes)
    return fn()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- checkpoints -------------------------------------------------------------------------------

def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and obj and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _last_line(e: Exception) -> str:
    """The last non-empty line of an error (torch.load puts the cause there, after its advice)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(e).__name__


class _Stub:
    """Stands in for an object a weights-only load refuses; it runs no code of the file."""

    optlib_global = "?"

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def unsafe_entries(path: str | Path) -> dict[str, list[str]]:
    """{top-level entry: [globals it holds that torch.load(weights_only=True) refuses]}.

    The file is read with an unpickler that allows exactly torch's weights-only globals and turns
    every other global into an inert _Stub, so nothing in the file is executed; the stubs show where
    the refused objects sit."""
    import types

    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = {**_get_allowed_globals(), **{f"{g.__module__}.{g.__qualname__}": g
                                             for g in torch.serialization.get_safe_globals() if hasattr(g, "__qualname__")}}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            full = f"{module}.{name}"
            return allowed[full] if full in allowed else type(name, (_Stub,), {"optlib_global": full})

    found: dict[str, list[str]] = {}

    def walk(obj, entry, depth=0):
        if isinstance(obj, _Stub) or (isinstance(obj, type) and issubclass(obj, _Stub)):
            found.setdefault(entry, []).append(obj.optlib_global)
        elif depth < 50 and isinstance(obj, dict):
            for v in obj.values():
                walk(v, entry, depth + 1)
        elif depth < 50 and isinstance(obj, (list, tuple, set)):
            for v in obj:
                walk(v, entry, depth + 1)

    stub_pickle = types.SimpleNamespace(Unpickler=Unpickler, load=pickle.load, __name__="optlib_stub_pickle")
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=stub_pickle)
    for key, value in (obj.items() if isinstance(obj, dict) else [("<file>", obj)]):
        walk(value, str(key))
    return {k: sorted(set(v)) for k, v in found.items()}


def read_checkpoint(path: str | Path, trust: bool = False) -> tuple[dict, str, list[str], dict]:
    """Return (state_dict, format, extra top-level keys, hyper_parameters) from a checkpoint file.

    Loads with `weights_only=True` unless `trust` is set; a file that needs a full pickle is refused
    with one line naming the entry that needs it and the trust flag. `hyper_parameters` are a
    Lightning checkpoint's, plain values only (numbers, strings, booleans).
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not trust and m:
            try:
                where = "; ".join(f"entry '{k}' holds {', '.join(v)}" for k, v in unsafe_entries(path).items())
            except Exception:  # the diagnosis is a courtesy: the refusal stands without it
                where = f"it holds {m.group(1)}"
            raise CheckpointError(
                f"{path}: refused to load with weights_only=True: {where or m.group(1)}. If you trust this file, set "
                "model.trust_checkpoint: true to load it as a full pickle (it can run code)") from None
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({_last_line(e)})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: "
                              f"{_last_line(e)})") from None
    if isinstance(obj, nn.Module):
        return obj.state_dict(), "pickled-module", [], {}
    if _is_state_dict(obj):
        return obj, "state_dict", [], {}
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")):
        fmt = "lightning" if any("lightning" in k for k in obj) else "dict-with-state_dict"
        hp = obj.get("hyper_parameters")
        hp = {k: v for k, v in hp.items() if isinstance(v, (int, float, str, bool))} if isinstance(hp, dict) else {}
        return obj["state_dict"], fmt, sorted(k for k in obj if k != "state_dict"), hp
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, expected a state_dict, a dict with "
                          "'state_dict', or a Lightning .ckpt")


# Lightning hyper-parameter names that state what the params also state.
HPARAM_NAMES = {"num_classes": ("num_classes", "n_classes", "num_labels", "num_outputs", "out_features"),
                "decision_threshold": ("threshold", "decision_threshold", "classification_threshold")}


def hyper_parameter_checks(hparams: dict, num_classes: int, threshold: float) -> list[str]:
    """One line per hyper-parameter of the checkpoint that names the number of logits or the
    threshold: whether it agrees with model.num_classes / model.decision_threshold."""
    lines = []
    for key, ours in (("num_classes", num_classes), ("decision_threshold", threshold)):
        for name in HPARAM_NAMES[key]:
            if name in hparams and isinstance(hparams[name], (int, float)) and not isinstance(hparams[name], bool):
                agrees = float(hparams[name]) == float(ours)
                lines.append(f"checkpoint hyper_parameters.{name} = {hparams[name]}: "
                             + ("agrees with" if agrees else "DIFFERS from") + f" model.{key} = {ours}")
    return lines


def _candidate_prefixes(keys: list[str]) -> list[str]:
    cands = {""}
    for k in keys:
        parts = k.split(".")
        for i in range(1, min(len(parts), 4)):
            cands.add(".".join(parts[:i]) + ".")
    return sorted(cands, key=len)


def strip_prefix(state: dict, model_keys: set[str], prefix: str | None) -> tuple[dict, str, list[str]]:
    """Strip `prefix` (or the one that matches most model keys) -> (state, prefix, dropped keys)."""
    if prefix is None:
        best, best_hits = "", -1
        for cand in _candidate_prefixes(list(state)):
            hits = sum(1 for k in state if k.startswith(cand) and k[len(cand):] in model_keys)
            if hits > best_hits:
                best, best_hits = cand, hits
        prefix = best
    kept = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    dropped = sorted(k for k in state if not k.startswith(prefix))
    return kept, prefix, dropped


def load_checkpoint_into(model: nn.Module, path: str | Path, prefix: str | None = None,
                         trust: bool = False) -> ModelInfo:
    state, fmt, extra, hparams = read_checkpoint(path, trust)
    model_state = model.state_dict()
    state, used_prefix, dropped = strip_prefix(state, set(model_state), prefix)
    if not state:
        raise CheckpointError(f"{path}: no weights start with prefix {prefix!r} "
                              "(fix model.checkpoint_prefix or remove it to detect the prefix)")
    for k, v in state.items():
        if k in model_state and model_state[k].shape != v.shape:
            hint = ""
            if v.ndim >= 1 and model_state[k].ndim >= 1 and v.shape[1:] == model_state[k].shape[1:]:
                hint = f"; set model.num_classes: {v.shape[0]}" if v.shape[0] != model_state[k].shape[0] else ""
            raise CheckpointError(f"{path}: '{k}' has shape {list(v.shape)} in the checkpoint but "
                                  f"{list(model_state[k].shape)} in the model{hint}")
    missing = sorted(set(model_state) - set(state))
    unexpected = sorted(set(state) - set(model_state))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit model (missing {len(missing)} keys e.g. {missing[:3]}, unexpected "
            f"{len(unexpected)} e.g. {unexpected[:3]}; stripped prefix {used_prefix!r}): check "
            "model.arch and model.checkpoint_prefix")
    model.load_state_dict(state)
    return ModelInfo(arch="", num_classes=0, source=str(path), parameters=count_parameters(model),
                     weights=str(path), trust_checkpoint=trust, checkpoint_format=fmt,
                     stripped_prefix=used_prefix or None, extra_keys=extra, dropped_keys=dropped, hyper_parameters=hparams)


# --- feature extractor / head split ----------------------------------------------------------

HEAD_ATTRS = ("fc", "classifier", "head", "heads")
HEAD_ATTRIBUTE = "optlib_head"  # where load_model notes the head path on the model it returns


class HeadError(ValueError):
    """model.head names no module of the model."""


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """The sub-module at a dotted attribute path, or HeadError naming what exists there."""
    obj = model
    for i, part in enumerate(path.split(".")):
        child = getattr(obj, part, None)
        if not isinstance(child, nn.Module):
            where = ".".join(path.split(".")[:i]) or "the model"
            have = ", ".join(n for n, _ in obj.named_children()) if isinstance(obj, nn.Module) else "nothing"
            raise HeadError(f"'model.head': {where} has no module {part!r} (its modules: {have})")
        obj = child
    return obj


def detect_head(model: nn.Module) -> str | None:
    """The usual classification-head attribute: the model's last child when it is named fc,
    classifier or head, else the first of those names present, else None."""
    children = list(model.named_children())
    if children and children[-1][0] in HEAD_ATTRS:
        return children[-1][0]
    return next((a for a in HEAD_ATTRS if isinstance(getattr(model, a, None), nn.Module)), None)


def split_model(model: nn.Module, head: str | None = None) -> tuple[nn.Module, nn.Module] | None:
    """(feature_extractor, head) sharing the model's weights, or None when no head is known.

    `head` is a dotted attribute path; without it the path load_model noted on the model
    (HEAD_ATTRIBUTE, from model.head or detected), else detect_head. The feature extractor is the
    model with that module replaced by nn.Identity (shallow copies along the path), so
    `head(features(x)) == model(x)` when the forward applies nothing after the head (checked by
    `split_error`). Compiled, TorchScript and FX graph modules (e.g. quantized ones) are not split
    here: their forward is generated code, so swapping an attribute would not cut the graph.
    """
    if isinstance(model, (torch.jit.ScriptModule, torch.fx.GraphModule)) or any(
            hasattr(model, a) for a in ("_orig_mod", "compiled")):
        return None
    path = head or getattr(model, HEAD_ATTRIBUTE, None) or detect_head(model)
    if path is None:
        return None
    head_module = resolve_module(model, path)
    features = copy.copy(model)
    features._modules = dict(model._modules)
    parent = features
    parts = path.split(".")
    for part in parts[:-1]:
        child = copy.copy(parent._modules[part])
        child._modules = dict(child._modules)
        parent._modules[part] = child
        parent = child
    parent._modules[parts[-1]] = nn.Identity()
    return features, head_module


def split_error(model: nn.Module, sample: torch.Tensor, head: str | None = None) -> float | None:
    """max |head(features(x)) - model(x)| for the split split_model makes, None when it does not split."""
    parts = split_model(model, head)
    if parts is None:
        return None
    with torch.no_grad():
        return float((parts[1](parts[0](sample)) - model(sample)).abs().max())


# --- the embedded default model --------------------------------------------------------------

def train_classifier(model: nn.Module, dataset: Dataset, spec: PreprocessSpec, epochs: int,
                     batch_size: int, lr: float, seed: int, progress: bool = True,
                     outputs: Outputs | None = None) -> list[dict]:
    """Training from scratch (the embedded default model): SGD with a one-cycle schedule on
    dataset.train (workload.training.finetune); returns per-epoch loss / training accuracy."""
    return finetune(model, dataset, spec, FineTuneRecipe(epochs, lr, "onecycle", batch_size, seed), outputs, progress)


def default_model_key(params: Params, num_classes: int) -> str:
    d = params.data
    recipe = {"arch": params.model.arch, "num_classes": num_classes, "train": asdict(params.train),
              "data": {k: getattr(d, k) for k in ("image_size", "grayscale_to_rgb", "mean", "std",
                                                   "test_fraction", "split_seed", "embedded")},
              "torch": torch.__version__.split("+")[0]}
    if d.embedded == "phantoms":
        from . import phantoms

        recipe["phantoms"] = {k: getattr(d, k) for k in ("phantom_train_images", "positive_share", "phantom_difficulty")}
        recipe["phantoms"]["version"] = phantoms.VERSION
    return stable_hash(recipe)


def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    """The model's state_dict, written atomically (loads with torch.load(weights_only=True))."""
    return atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))


def load_weights(model: nn.Module, path: str | Path, checkpoint_format: str | None = None,
                 prefix: str | None = None, trust: bool = False) -> nn.Module:
    """Load weights into a freshly built `model`: a user's checkpoint (when `checkpoint_format` is
    set: read as load_checkpoint_into reads it, with its prefix and trust flag) or a plain state_dict
    such as the cached default model. Returns the model in eval mode."""
    if checkpoint_format is not None:
        load_checkpoint_into(model, path, prefix or "", trust)
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def load_model(params: Params, dataset: Dataset, progress: bool = True) -> tuple[nn.Module, ModelInfo]:
    """The model every notebook measures, in eval mode on the CPU.

    With model.checkpoint: build model.arch and load the checkpoint. Without: the embedded default,
    trained on dataset.train once and cached under outputs/<target>/models/ keyed by the
    parameters that produced it.
    """
    outputs = model_outputs(params, dataset)
    num_classes = outputs.logits_per_image
    model = build_model(params.model.arch, num_classes, seed=params.train.seed)  # the default model: reproducible
    if params.model.checkpoint is not None:
        info = load_checkpoint_into(model, params.model.checkpoint, params.model.checkpoint_prefix,
                                    params.model.trust_checkpoint)
    else:
        key = default_model_key(params, num_classes)
        name = f"{params.model.arch.split(':')[-1]}-{key}"
        ckpt = paths.models_dir(params.target) / f"{name}.pt"
        meta_path = ckpt.with_suffix(".json")
        if ckpt.is_file() and meta_path.is_file():
            load_weights(model, ckpt)
            meta = json.loads(meta_path.read_text())
            info = ModelInfo(arch="", num_classes=0, source="cache", parameters=0,
                             train_history=meta.get("train_history"),
                             train_seconds=meta.get("train_seconds"))
        else:
            if dataset.train is None:
                raise CheckpointError("no model.checkpoint and no training images: set model.checkpoint "
                                      "or data.train_root")
            t0 = time.perf_counter()
            torch.set_num_threads(params.bench.threads)
            history = train_classifier(model, dataset, PreprocessSpec.from_params(params.data),
                                       params.train.epochs, params.train.batch_size, params.train.lr,
                                       params.train.seed, progress, outputs)
            seconds = time.perf_counter() - t0
            save_state_dict(model, ckpt)
            write_json_atomic({"train_history": history, "train_seconds": seconds, "params": params.to_dict()},
                              meta_path)
            info = ModelInfo(arch="", num_classes=0, source="trained", parameters=0,
                             train_history=history, train_seconds=seconds)
        info.source = f"{info.source}:{ckpt}"
        info.weights = str(ckpt)
    info.arch = params.model.arch
    info.num_classes = num_classes
    info.parameters = count_parameters(model)
    info.outputs = outputs.kind
    info.head = check_head(model.eval(), params.model.head,
                           preprocess(dataset.test.images[:2], PreprocessSpec.from_params(params.data)))
    info.head_detected = params.model.head is None and info.head is not None
    if info.head is not None:
        setattr(model, HEAD_ATTRIBUTE, info.head)
    info.hyper_parameter_checks = hyper_parameter_checks(info.hyper_parameters, num_classes,
                                                         params.model.decision_threshold)
    return model.eval(), info


def check_head(model: nn.Module, head: str | None, sample: torch.Tensor) -> str | None:
    """The head path the per-stage split will use: `head` (model.head) when head(features(x))
    reproduces model(x), else HeadError; without it the detected head when it does, else None."""
    path = head or detect_head(model)
    if path is None:
        return None
    err = split_error(model, sample, path)  # a one-line HeadError when `head` names nothing
    with torch.no_grad():
        scale = float(model(sample).abs().max()) + 1.0
    if err > 1e-4 * scale:
        if head is not None:
            raise HeadError(f"'model.head': {head}(features(x)) differs from model(x) by {err:.3g}: the forward does "
                            "more after that module; name the module whose output is the logits")
        return None
    return path


def model_outputs(params: Params, dataset: Dataset) -> Outputs:
    """How this run's model outputs become decisions (workload.outputs), checked against the data."""
    return Outputs.for_data(params.model.num_classes, dataset.class_names, params.data.positive_class,
                            params.model.decision_threshold, dataset.source)


def state_dict_size_bytes(model: nn.Module) -> int:
    """Size of the model as a saved state_dict (what `torch.save(model.state_dict())` writes)."""
    with tempfile.TemporaryDirectory() as d:
        return save_state_dict(model, Path(d) / "m.pt").stat().st_size
