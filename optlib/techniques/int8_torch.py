"""INT8 in PyTorch: FX static post-training quantization (Conv+BN+ReLU fused; the x86 backend, or
the engine `use_engine` names, e.g. qnnpack for ARM-style kernels on the edge target),
the PT2E flow from torchao (X86InductorQuantizer, compiled with inductor freezing), dynamic
quantization of Linear / LSTM / GRU, and FX quantization-aware training.

`torch.ao.quantization` is deprecated in torch 2.14 but still works (it warns); PT2E lives only
in torchao. Each function returns the quantized module and evidence of integer execution; the
*_runner functions wrap them as described runners whose artifacts reload without a full pickle:
a quantized state_dict re-applied to a freshly converted skeleton (FX, QAT: exact), a
torch.export program (PT2E), a state_dict (the GRU).
"""
from __future__ import annotations

import contextlib
import copy
import time
import types
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ..backends.artifacts import spec_of
from ..backends.pytorch import GruRunner, TorchRunner
from ..results.values import Artifact, Kernels
from ..workload.data import CalibrationError, PreprocessSpec, preprocess
from ..workload.models import build_model, save_state_dict, state_dict_size_bytes
from ..workload.training import FineTuneRecipe, finetune
from ..workload.seqmodel import DigitsGRU, train_gru
from .compilers import InductorConfigPatched, raise_recompile_limits

_ENGINE = {"name": "x86"}  # PyTorch's quantized engine is process-wide; quant.engine sets it per run


def use_engine(name: str) -> str:
    """Make `name` (core.choices.QUANT_ENGINES) the quantized engine of this process: the qconfig
    of every FX / QAT / dynamic quantization here and the kernels its modules run. Returns it."""
    from ..core.choices import QUANT_ENGINES, check_choice

    check_choice("quant.engine", name, QUANT_ENGINES)
    if name not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quant.engine {name!r} is not built into this torch "
                           f"(supported: {torch.backends.quantized.supported_engines})")
    _ENGINE["name"] = name
    torch.backends.quantized.engine = name
    return name


def engine() -> str:
    """The quantized engine in use (and re-applied: other code may have changed the global)."""
    torch.backends.quantized.engine = _ENGINE["name"]
    return _ENGINE["name"]

HEAVY_MODULES = ("Conv2d", "ConvReLU2d", "Linear", "LinearReLU", "GRU", "LSTM")


@contextlib.contextmanager
def _quiet():
    """torch.ao.quantization warns on every call that it is deprecated; it still works in 2.14."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# --- the ResNet block fix ---------------------------------------------------------------------

def _basic_forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu_out(out + identity)


def _bottleneck_forward(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu_mid(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu_out(out + identity)


def untie_block_relus(model: nn.Module) -> nn.Module:
    """Give every torchvision ResNet block its own ReLU module per use (in place).

    BasicBlock and Bottleneck call one `self.relu` two or three times; PT2E's X86InductorQuantizer
    then fails with "Input partition has more than one output node". Weights are unchanged. The
    new ReLUs take their block's train/eval mode (FX fusion refuses Conv+BN+ReLU in mixed modes).
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for m in model.modules():
        if isinstance(m, BasicBlock) and not hasattr(m, "relu_out"):
            m.relu_out = nn.ReLU(inplace=False).train(m.training)
            m.forward = types.MethodType(_basic_forward, m)
        elif isinstance(m, Bottleneck) and not hasattr(m, "relu_out"):
            m.relu_mid = nn.ReLU(inplace=False).train(m.training)
            m.relu_out = nn.ReLU(inplace=False).train(m.training)
            m.forward = types.MethodType(_bottleneck_forward, m)
    return model


# --- evidence -------------------------------------------------------------------------------

def module_evidence(model: nn.Module) -> dict:
    """Counts of quantized (integer) modules vs float Conv/Linear/RNN modules left, and the integer
    share of the heavy modules."""
    kinds = Counter(type(m).__module__ + "." + type(m).__name__ for m in model.modules())
    quantized = {k: v for k, v in kinds.items() if ".quantized" in k}
    float_ops = {k: v for k, v in kinds.items() if k.rsplit(".", 1)[-1] in HEAVY_MODULES and ".quantized" not in k}
    n_int = sum(v for k, v in quantized.items() if k.rsplit(".", 1)[-1] in HEAVY_MODULES)
    n_float = sum(float_ops.values())
    label = ("mixed" if n_float else "integer") if n_int else "float"
    return {"kernels": label, "quantized_modules": quantized, "float_modules": float_ops,
            "integer_share": n_int / (n_int + n_float) if n_int + n_float else 0.0}


def _kernels(evidence: dict) -> Kernels:
    return Kernels(evidence["kernels"], evidence.get("integer_share"),
                   "integer fraction of the Conv/Linear/RNN modules", evidence)


# --- FX static PTQ ---------------------------------------------------------------------------

def _calibrate(model: nn.Module, calibration: torch.Tensor, batch_size: int = 32) -> None:
    with torch.no_grad():
        for i in range(0, len(calibration), batch_size):
            model(calibration[i:i + batch_size])


def quantize_fx_static(model: nn.Module, calibration: torch.Tensor) -> tuple[nn.Module, dict]:
    """FX graph-mode static INT8 for the engine in use (Conv+BN+ReLU fused; x86: per-channel weights)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if calibration is None or len(calibration) == 0:
        raise CalibrationError("PyTorch static quantization needs calibration images; none were given")
    name = engine()
    with _quiet():
        m = untie_block_relus(copy.deepcopy(model).eval())
        t0 = time.perf_counter()
        prepared = prepare_fx(m, get_default_qconfig_mapping(name), (calibration[:1],))
        _calibrate(prepared, calibration)
        quantized = convert_fx(prepared)
        seconds = time.perf_counter() - t0
    return quantized, {"flow": f"fx static (torch.ao, {name})", "engine": name, "seconds": seconds,
                       **module_evidence(quantized)}


# --- PT2E (torchao) ---------------------------------------------------------------------------

def _compile_frozen(converted: nn.Module) -> nn.Module:
    """PT2E INT8 is only fast after torch.compile with inductor freezing (the integer oneDNN kernels
    come from lowering the Q/DQ pattern with constant weights)."""
    raise_recompile_limits()
    return InductorConfigPatched(torch.compile(converted), {"freezing": True})


def quantize_pt2e(model: nn.Module, calibration: torch.Tensor, example: torch.Tensor) -> tuple[nn.Module, dict]:
    """torchao PT2E static INT8 with the X86 inductor quantizer, compiled with inductor freezing.

    Exported with a dynamic batch dimension; each batch size still compiles its own kernels.
    Returns (compiled module, info); info["converted"] is the converted graph before compilation.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    with _quiet():
        m = untie_block_relus(copy.deepcopy(model).eval())
        t0 = time.perf_counter()
        batch = torch.export.Dim("batch", min=1, max=4096)
        exported = torch.export.export(m, (calibration[:2],), dynamic_shapes=({0: batch},)).module()
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        _calibrate(prepared, calibration)
        converted = convert_pt2e(prepared)
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        allow_exported_model_train_eval(converted)  # runners call .eval(); exported graphs refuse it otherwise
        q_nodes = sum(1 for n in converted.graph.nodes if "quantize_per" in str(n.target))
        convert_s = time.perf_counter() - t0
        compiled = _compile_frozen(converted)
        t1 = time.perf_counter()
        from torch._inductor.utils import run_and_get_code

        with torch.no_grad():
            _, code = run_and_get_code(compiled, example)
        compile_s = time.perf_counter() - t1
    src = "\n".join(code)
    int_kernels = src.count("onednn.qconv") + src.count("onednn.qlinear")
    referenced = graph_constant_bytes(converted)
    return compiled, {"flow": "pt2e (torchao X86InductorQuantizer) + torch.compile(freezing)",
                      "converted": converted, "seconds": convert_s, "compile_seconds": compile_s, "qdq_nodes_before_lowering": q_nodes,
                      "onednn_int8_kernel_calls": int_kernels,
                      "kernels": "integer" if int_kernels else "fake-quant",
                      "size_bytes": referenced["bytes"],
                      "size_method": "bytes of the tensors the converted graph reads (get_attr): "
                                     f"{referenced['int8_tensors']} int8 of {referenced['tensors']}; the module also keeps "
                                     f"its unused FP32 parameters ({state_dict_size_bytes(converted) / 1e6:.1f} MB saved in all), "
                                     "which torch.export.save would write too"}


def graph_constant_bytes(gm: torch.fx.GraphModule) -> dict:
    """Bytes of the distinct tensors an FX graph reads through get_attr nodes (its weights as
    executed), ignoring parameters the module holds but the graph never uses."""
    seen: dict[int, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, torch.Tensor):
                seen[id(obj)] = obj
    return {"bytes": sum(t.nbytes for t in seen.values()), "tensors": len(seen),
            "int8_tensors": sum(t.dtype == torch.int8 for t in seen.values())}


# --- dynamic --------------------------------------------------------------------------------

def quantize_dynamic_module(model: nn.Module, layers=(nn.Linear, nn.GRU, nn.LSTM)) -> tuple[nn.Module, dict]:
    """Dynamic INT8: weights quantized once, activations quantized per call (Linear / RNN layers)."""
    engine()
    with _quiet():
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), set(layers), dtype=torch.qint8)
    return q, {"flow": "dynamic (torch.ao quantize_dynamic)", **module_evidence(q)}


# --- QAT ------------------------------------------------------------------------------------

def qat_fx(model: nn.Module, dataset, spec, recipe: FineTuneRecipe, progress: bool = True,
           outputs=None) -> tuple[nn.Module, dict]:
    """FX quantization-aware training: fake-quant modules, fine-tuned on the training side under
    `recipe` (workload.training.finetune; from recipe.freeze_at on, observers and BatchNorm
    statistics are frozen, at recipe.lr_after_freeze of the rate), then converted to integer modules."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    if dataset.train is None or len(dataset.train) == 0:
        raise ValueError("QAT needs training images: set data.train_root")
    if recipe.epochs < 1:
        raise ValueError("QAT needs at least one epoch (quant.qat_epochs)")
    name = engine()

    def freeze(m):
        m.apply(torch.ao.quantization.disable_observer)
        m.apply(torch.nn.intrinsic.qat.freeze_bn_stats)

    with _quiet():
        m = untie_block_relus(copy.deepcopy(model)).train()
        example = preprocess(dataset.train.images[:2], spec)
        prepared = prepare_qat_fx(m, get_default_qat_qconfig_mapping(name), (example,))
        t0 = time.perf_counter()
        history = finetune(prepared, dataset, spec, recipe, outputs, progress, on_freeze=freeze, desc="qat")
        seconds = time.perf_counter() - t0
        quantized = convert_fx(prepared.eval())
    return quantized, {"flow": f"fx qat (torch.ao, {name})", "engine": name, "recipe": recipe.to_dict(), "train_seconds": seconds,
                       "history": history, **module_evidence(quantized)}


def qat_recipe(params) -> FineTuneRecipe:
    """QAT's recipe from the params: finetune.* for quant.qat_epochs epochs; observers and BatchNorm
    statistics frozen from quant.qat_freeze_epoch (default: the last epoch when there are two or
    more; with one, nothing freezes: observers must see data first) at a tenth of the rate."""
    q = params.quant
    freeze = q.qat_freeze_epoch or (q.qat_epochs if q.qat_epochs >= 2 else None)
    return FineTuneRecipe.from_params(params, q.qat_epochs, freeze_at=freeze, lr_after_freeze=0.1)


# --- runners and their artifacts --------------------------------------------------------------

def _fx_skeleton(arch: str, num_classes: int, spec: PreprocessSpec) -> nn.Module:
    """A converted FX INT8 graph of the architecture with unobserved (default) quantization
    parameters: the shape a saved quantized state_dict loads into. PTQ and QAT convert to the
    same modules, so one skeleton serves both."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    name = engine()
    example = torch.zeros(1, spec.channels, spec.image_size, spec.image_size)
    with _quiet():
        m = untie_block_relus(build_model(arch, num_classes).eval())
        return convert_fx(prepare_fx(m, get_default_qconfig_mapping(name), (example,)))


def fx_int8_runner(quantized: nn.Module, info: dict, name: str, eager: Artifact, out_dir: str | Path, threads: int,
                   technique: str = "quantization", one_time_cost_seconds: dict | None = None, **details) -> TorchRunner:
    """A runner over an FX-converted INT8 model (PTQ or QAT), its quantized state_dict saved in
    `out_dir` as the artifact (kind pytorch-fx-int8; `eager` gives the architecture)."""
    state = save_state_dict(quantized, Path(out_dir) / f"{name}.state.pt")
    artifact = Artifact("pytorch-fx-int8", {"state": str(state)},
                        {"arch": eager.options["arch"], "num_classes": eager.options["num_classes"],
                         "flow": info["flow"], "engine": info["engine"]}, eager.preprocess)
    r = TorchRunner(quantized, spec_of(eager), name=name, threads=threads, technique=technique, precision="int8")
    return r.annotate(size_bytes=state.stat().st_size, artifact=artifact, kernels=_kernels(info),
                      one_time_cost_seconds=one_time_cost_seconds, **details)


def load_fx_int8(artifact: Artifact, name: str, threads: int, device: str) -> TorchRunner:
    use_engine(artifact.options.get("engine", "x86"))
    spec = spec_of(artifact)
    model = _fx_skeleton(artifact.options["arch"], artifact.options["num_classes"], spec)
    model.load_state_dict(torch.load(artifact.files["state"], map_location="cpu", weights_only=True))
    return TorchRunner(model, spec, name=name, threads=threads, technique="quantization", precision="int8")


def fx_static_runner(model: nn.Module, calibration: torch.Tensor, eager: Artifact, out_dir: str | Path,
                     threads: int, **details) -> TorchRunner:
    """FX static INT8 (the engine in use) of `model`, calibrated on `calibration`, as `pytorch-int8-static`."""
    quantized, info = quantize_fx_static(model, calibration)
    return fx_int8_runner(quantized, info, "pytorch-int8-static", eager, out_dir, threads,
                          one_time_cost_seconds={"calibration and conversion": info["seconds"]}, **details)


def pt2e_runner(model: nn.Module, calibration: torch.Tensor, example: torch.Tensor, eager: Artifact,
                out_dir: str | Path, threads: int, **details) -> TorchRunner:
    """PT2E INT8 compiled with freezing, as `pt2e-int8`; the converted program is saved with
    torch.export (its weights load with weights_only=True) as the artifact."""
    compiled, info = quantize_pt2e(model, calibration, example)
    converted = info.pop("converted")
    path = Path(out_dir) / "pt2e-int8.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet():
        torch.export.save(torch.export.export(converted, (calibration[:2],), dynamic_shapes=({0: batch},)), str(path))
    r = TorchRunner(compiled, spec_of(eager), name="pt2e-int8", threads=threads, technique="quantization", precision="int8")
    return r.annotate(size_bytes=info["size_bytes"], artifact=Artifact("pt2e-int8", {"program": str(path)}, {}, eager.preprocess),
                      kernels=Kernels(info["kernels"], None, "", {k: v for k, v in info.items() if k != "size_method"}),
                      one_time_cost_seconds={"calibration and conversion": info["seconds"], "compile": info["compile_seconds"]},
                      size_method=info["size_method"], **details)


def load_pt2e(artifact: Artifact, name: str, threads: int, device: str) -> TorchRunner:
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    with _quiet():
        converted = torch.export.load(artifact.files["program"]).module()
    allow_exported_model_train_eval(converted)
    return TorchRunner(_compile_frozen(converted), spec_of(artifact), name=name, threads=threads,
                       technique="quantization", precision="int8")


def qat_runner(model: nn.Module, dataset, spec: PreprocessSpec, eager: Artifact, out_dir: str | Path, threads: int,
               recipe: FineTuneRecipe, progress: bool = True, outputs=None) -> TorchRunner:
    """FX QAT (qat_fx) of `model` under `recipe`, converted to INT8, as `qat-int8`; training is a
    one-time cost. `outputs` (workload.outputs.Outputs) chooses the training loss."""
    quantized, info = qat_fx(model, dataset, spec, recipe, progress, outputs)
    return fx_int8_runner(quantized, info, "qat-int8", eager, out_dir, threads, technique="quantization-aware training",
                          one_time_cost_seconds={"fine-tune": info["train_seconds"]},
                          training={**info["recipe"], "seconds": info["train_seconds"], "history": info["history"],
                                    "data": "training side"})


def gru_runners(dataset, out_dir: str | Path, threads: int, epochs: int, seed: int = 0) -> list[GruRunner]:
    """The GRU study's two configurations: a DigitsGRU trained on the training side (FP32), and its
    dynamic INT8 quantization. Both artifacts are the FP32 state_dict (kind gru): dynamic
    quantization is a deterministic function of those weights, and a dynamically quantized GRU's
    own state_dict holds packed ScriptObjects that only a full pickle reads."""
    torch.manual_seed(seed)
    gru = DigitsGRU()
    t0 = time.perf_counter()
    train_gru(gru, dataset.train.images, dataset.train.labels, epochs=epochs, seed=seed)
    train_s = time.perf_counter() - t0
    path = save_state_dict(gru, Path(out_dir) / "gru-fp32.state.pt")
    quantized, info = quantize_dynamic_module(gru)
    runners = []
    for model, name, evidence in ((gru, "gru-fp32", module_evidence(gru)), (quantized, "gru-int8-dynamic", info)):
        int8 = model is quantized
        artifact = Artifact("gru", {"state": str(path)}, {"hidden": gru.hidden, "layers": gru.layers,
                                                          "num_classes": gru.num_classes, "dynamic_int8": int8,
                                                          "engine": engine()})
        r = GruRunner(model, name, "int8" if int8 else "fp32", threads)
        runners.append(r.annotate(size_bytes=state_dict_size_bytes(model), artifact=artifact, kernels=_kernels(evidence),
                                  one_time_cost_seconds={"training (fp32)": train_s}))
    return runners


def load_gru(artifact: Artifact, name: str, threads: int, device: str) -> GruRunner:
    o = artifact.options
    use_engine(o.get("engine", "x86"))
    model = DigitsGRU(hidden=o["hidden"], layers=o["layers"], num_classes=o["num_classes"]).eval()
    model.load_state_dict(torch.load(artifact.files["state"], map_location="cpu", weights_only=True))
    if o["dynamic_int8"]:
        model, _ = quantize_dynamic_module(model)
    return GruRunner(model, name, "int8" if o["dynamic_int8"] else "fp32", threads)
