"""Every allowed value of a named choice, declared once.

The params validation (`core.params`) and the technique configs (`ExportConfig`, `OrtConfig`,
`StaticQuantConfig`, `compile_options`) all check against these tuples through `check_choice`,
so a new value is added in one place and every consumer accepts it.
"""
from __future__ import annotations

DEVICES = ("cpu", "cuda")
EXPORTERS = ("dynamo", "torchscript")  # torch.onnx.export(dynamo=True) | the legacy TorchScript exporter
GRAPH_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")  # ONNX Runtime
TORCHSCRIPT_METHODS = ("trace", "script")
COMPILE_MODES = ("default", "freezing", "max-autotune")  # torch.compile on inductor
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
OPENVINO_PRECISIONS = ("f32", "bf16")  # OpenVINO's INFERENCE_PRECISION_HINT on the CPU (INT8 comes from the graph)
NNCF_PRESETS = ("performance", "mixed")  # nncf.QuantizationPreset: symmetric / asymmetric activations
INT8_TYPES = ("uint8", "int8")  # activation / weight types of ONNX Runtime static INT8
QUANT_FORMATS = ("QDQ", "QOperator")
# How an image that is not square becomes image_size x image_size: stretched (squash), padded with
# black to a square around its centre (pad), or its centred square cut out (crop); then resized.
RESIZE_POLICIES = ("squash", "pad", "crop")
QUANT_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")  # PyTorch's quantized engine (qnnpack: ARM's)
SCHEDULES = ("onecycle", "cosine", "constant")  # learning-rate schedules of workload.training.finetune
UNSTRUCTURED_CRITERIA = ("l1", "random")  # torch.nn.utils.prune
STRUCTURED_CRITERIA = ("l2", "taylor", "bn_scale", "random")  # Torch-Pruning importance
PRUNE_SCOPES = ("layer", "global")  # each layer to the ratio, or one threshold over all layers
# Reduced-precision variants of chapter 03 (techniques.precision): converted weights or autocast.
PRECISION_VARIANTS = ("bf16-autocast", "bf16", "fp16-autocast", "fp16")
# What a record says about the kernels that really ran (see results.values.Kernels): integer or
# reduced-precision (BF16/FP16) arithmetic, float kernels behind quantize/dequantize pairs
# (fake-quant) or behind casts / per-element widening (cast-emulated), a mix, or plain float.
KERNEL_LABELS = ("integer", "reduced-precision", "mixed", "fake-quant", "cast-emulated", "float")
# Chapter 08 (measurement.training_memory): training precision, and where activations are recomputed.
TRAIN_PRECISIONS = ("fp32", "bf16-autocast", "fp16-autocast")  # fp16-autocast: with GradScaler, CUDA only
CHECKPOINT_GRANULARITIES = ("stage", "block", "sequential")
TRAIN_OPTIMIZERS = ("sgd", "adam")
TRT_PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # chapter 07: the precision comes from the ONNX graph
STATUSES = ("ok", "skipped", "failed")
# A configuration against the accuracy budget (measurement.verdict.judge), and what decided it.
VERDICTS = ("within", "worse", "unresolved")
# The embedded workload: chest-radiograph-like phantoms (binary, one logit) or scikit-learn's digits.
EMBEDDED_DATA = ("phantoms", "digits")


def check_choice(key: str, value, choices: tuple, error=ValueError):
    """Return `value` if it is one of `choices`, else raise `error` naming `key` and the choices."""
    if value not in choices:
        raise error(f"'{key}' must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
