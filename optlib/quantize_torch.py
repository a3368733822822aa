"""INT8 in PyTorch: FX static post-training quantization (x86 backend, Conv+BN+ReLU fused),
the PT2E flow from torchao (X86InductorQuantizer, compiled with inductor freezing), dynamic
quantization of Linear / LSTM / GRU, and FX quantization-aware training.

`torch.ao.quantization` is deprecated in torch 2.14 but still works (it warns); PT2E lives only
in torchao. Each function returns the quantized module and evidence of integer execution.
"""
from __future__ import annotations

import contextlib
import copy
import time
import types
import warnings
from collections import Counter

import torch
from torch import nn

BACKEND = "x86"


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
    """Counts of quantized (integer) modules vs float Conv/Linear/RNN modules left."""
    kinds = Counter(type(m).__module__ + "." + type(m).__name__ for m in model.modules())
    quantized = {k: v for k, v in kinds.items() if ".quantized" in k}
    float_ops = {k: v for k, v in kinds.items() if k.rsplit(".", 1)[-1] in ("Conv2d", "Linear", "GRU", "LSTM")
                 and ".quantized" not in k}
    return {"kernels": "integer" if quantized else "float", "quantized_modules": quantized,
            "float_modules": float_ops}


# --- FX static PTQ ---------------------------------------------------------------------------

def _calibrate(model: nn.Module, calibration: torch.Tensor, batch_size: int = 32) -> None:
    with torch.no_grad():
        for i in range(0, len(calibration), batch_size):
            model(calibration[i:i + batch_size])


def quantize_fx_static(model: nn.Module, calibration: torch.Tensor) -> tuple[nn.Module, dict]:
    """FX graph-mode static INT8 for the x86 backend (Conv+BN+ReLU fused, per-channel weights)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if calibration is None or len(calibration) == 0:
        from .quantize_onnx import CalibrationError

        raise CalibrationError("PyTorch static quantization needs calibration images; none were given")
    torch.backends.quantized.engine = BACKEND
    with _quiet():
        m = untie_block_relus(copy.deepcopy(model).eval())
        t0 = time.perf_counter()
        prepared = prepare_fx(m, get_default_qconfig_mapping(BACKEND), (calibration[:1],))
        _calibrate(prepared, calibration)
        quantized = convert_fx(prepared)
        seconds = time.perf_counter() - t0
    return quantized, {"flow": "fx static (torch.ao, x86)", "seconds": seconds, **module_evidence(quantized)}


# --- PT2E (torchao) ---------------------------------------------------------------------------

def quantize_pt2e(model: nn.Module, calibration: torch.Tensor, example: torch.Tensor) -> tuple[nn.Module, dict]:
    """torchao PT2E static INT8 with the X86 inductor quantizer, compiled with inductor freezing.

    Exported with a dynamic batch dimension; each batch size still compiles its own kernels.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from .models import state_dict_size_bytes

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
        from .compilers import InductorConfigPatched, _raise_recompile_limits

        _raise_recompile_limits()
        compiled = InductorConfigPatched(torch.compile(converted), {"freezing": True})
        t1 = time.perf_counter()
        from torch._inductor.utils import run_and_get_code

        with torch.no_grad():
            _, code = run_and_get_code(compiled, example)
        compile_s = time.perf_counter() - t1
    src = "\n".join(code)
    int_kernels = src.count("onednn.qconv") + src.count("onednn.qlinear")
    referenced = graph_constant_bytes(converted)
    return compiled, {"flow": "pt2e (torchao X86InductorQuantizer) + torch.compile(freezing)",
                      "seconds": convert_s, "compile_seconds": compile_s, "qdq_nodes_before_lowering": q_nodes,
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

def quantize_dynamic(model: nn.Module, layers=(nn.Linear, nn.GRU, nn.LSTM)) -> tuple[nn.Module, dict]:
    """Dynamic INT8: weights quantized once, activations quantized per call (Linear / RNN layers)."""
    torch.backends.quantized.engine = BACKEND
    with _quiet():
        q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), set(layers), dtype=torch.qint8)
    return q, {"flow": "dynamic (torch.ao quantize_dynamic)", **module_evidence(q)}


# --- QAT ------------------------------------------------------------------------------------

def qat_fx(model: nn.Module, dataset, spec, epochs: int, lr: float, batch_size: int, seed: int,
           progress: bool = True) -> tuple[nn.Module, dict]:
    """FX quantization-aware training: fake-quant modules, `epochs` of fine-tuning on the training
    side (with two or more, observers and BN statistics are frozen for the last epoch, at a tenth of
    the learning rate), then conversion to integer modules."""
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    from .data import preprocess
    from .models import train_classifier

    if dataset.train is None or len(dataset.train) == 0:
        raise ValueError("QAT needs training images: set data.train_root")
    if epochs < 1:
        raise ValueError("QAT needs at least one epoch (quant.qat_epochs)")
    torch.backends.quantized.engine = BACKEND
    with _quiet():
        m = untie_block_relus(copy.deepcopy(model)).train()
        example = preprocess(dataset.train.images[:2], spec)
        prepared = prepare_qat_fx(m, get_default_qat_qconfig_mapping(BACKEND), (example,))
        t0 = time.perf_counter()
        # Observers must see data before they are frozen: with one epoch nothing is frozen.
        free = epochs - 1 if epochs >= 2 else epochs
        history = train_classifier(prepared, dataset, spec, free, batch_size, lr, seed, progress)
        prepared.train()
        if epochs >= 2:
            prepared.apply(torch.ao.quantization.disable_observer)
            prepared.apply(torch.nn.intrinsic.qat.freeze_bn_stats)
            last = train_classifier(prepared, dataset, spec, 1, batch_size, lr / 10, seed + 1, progress)
            history += [{**h, "epoch": len(history) + 1, "observers_frozen": True} for h in last]
        seconds = time.perf_counter() - t0
        quantized = convert_fx(prepared.eval())
    return quantized, {"flow": "fx qat (torch.ao, x86)", "epochs": epochs, "lr": lr, "train_seconds": seconds,
                       "history": history, **module_evidence(quantized)}


