"""Run parameters: one typed tree, validated once, shared by the CLI and every notebook.

A params file (YAML) or a notebook's parameters cell holds the top-level keys below; every
section is optional and falls back to the defaults written here. `load_params(path)` and
`from_dict(d, source)` raise `ParamsError` with a one-line message naming the key, the file
and the fix.

Each field declares what it accepts where it is defined: its type, its allowed values (`choice`,
from core.choices) or its range (`interval`). `_build` checks every declaration; `_validate` keeps
only the rules that relate fields to each other or to the file system.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import choices as C
from .choices import check_choice

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class ParamsError(ValueError):
    """A parameter is unknown, of the wrong type, out of range, or names a missing path."""


# Which parameters a chapter really reads, for the pipeline's skip-unchanged (core.runstate): with
# $OPTLIB_PARAMS_TRACE naming a file, the first read of each parameter in a process appends its key
# ("bench.samples") there. Child processes inherit the variable and append to the same file.
_TRACE = {"path": os.environ.get("OPTLIB_PARAMS_TRACE"), "seen": set(), "paused": 0}


def trace_reads(path: str | Path | None) -> None:
    """Note every parameter read from now on in `path` (None stops); the pipeline sets it per chapter."""
    _TRACE.update(path=str(path) if path else None, seen=set())


def _note_read(key: str) -> None:
    if _TRACE["path"] is None or _TRACE["paused"] or key in _TRACE["seen"]:
        return
    _TRACE["seen"].add(key)
    try:
        with open(_TRACE["path"], "a") as f:
            f.write(key + "\n")
    except OSError:
        pass


@contextlib.contextmanager
def _untraced():
    """Reads that are not the chapter's: validation, copies of the whole tree."""
    _TRACE["paused"] += 1
    try:
        yield
    finally:
        _TRACE["paused"] -= 1


class _Traced:
    """Base of the parameter sections: reading a field notes its key (see trace_reads)."""

    def __getattribute__(self, name):
        value = object.__getattribute__(self, name)
        if _TRACE["path"] is not None and name[0] != "_" and name in type(self).__dataclass_fields__:
            section = _SECTION_NAMES.get(type(self))
            if section is None and not isinstance(value, _Traced):  # Params' own scalars: target, device
                _note_read(name)
            elif section is not None:
                _note_read(f"{section}.{name}")
        return value


def _declared(default, meta: dict):
    factory = (lambda: list(default)) if isinstance(default, list) else None
    return field(default_factory=factory, metadata=meta) if factory else field(default=default, metadata=meta)


def choice(default, options: tuple):
    """A field whose value (or, for a list, every item) must be one of `options` (core.choices)."""
    return _declared(default, {"choices": options})


@dataclass(frozen=True)
class Interval:
    """The range a number must lie in: `low` / `high` (None: unbounded), each end included unless
    `open_low` / `open_high`."""
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def describe(self) -> str:
        lo, hi = self.low, self.high
        if hi is None:
            return f"greater than {lo:g}" if self.open_low else f"at least {lo:g}"
        if lo is None:
            return f"less than {hi:g}" if self.open_high else f"at most {hi:g}"
        if self.open_low and self.open_high:
            return f"strictly between {lo:g} and {hi:g}"
        if not (self.open_low or self.open_high):
            return f"between {lo:g} and {hi:g}"
        return f"in {'(' if self.open_low else '['}{lo:g}, {hi:g}{')' if self.open_high else ']'}"


def interval(default, low: float | None = None, high: float | None = None, *, open_low: bool = False,
             open_high: bool = False, hint: str = ""):
    """A numeric field whose value (or, for a list, every item) must lie in the interval; None
    passes where the type allows it. `hint` is added to the error (what the value means)."""
    return _declared(default, {"interval": Interval(low, high, open_low, open_high), "hint": hint})


def at_least(default, low: float, hint: str = ""):
    return interval(default, low, hint=hint)


def fraction(default, *, open_low: bool = True, open_high: bool = True, hint: str = ""):
    """A field in (0, 1) by default; either end can be included."""
    return interval(default, 0, 1, open_low=open_low, open_high=open_high, hint=hint)


@dataclass
class ModelParams(_Traced):
    # torchvision model name ("torchvision:resnet50") or "package.module:function" -> nn.Module
    arch: str = "torchvision:resnet18"
    # Logits per image; None: one per class in the data. 1: a single logit for data.positive_class
    # (sigmoid), the usual binary medical classifier.
    num_classes: int | None = at_least(None, 1, "1: a single sigmoid logit for data.positive_class")
    decision_threshold: float = fraction(0.5, hint="a probability")  # binary problems: positive when its probability >= this
    # Dotted attribute path of the classification head (e.g. classifier, net.fc); None: detected
    # (a trailing fc / classifier / head module). Splits the per-stage timing.
    head: str | None = None
    checkpoint: str | None = None  # None: train the embedded default model
    checkpoint_prefix: str | None = None  # stripped from state_dict keys; detected when None
    trust_checkpoint: bool = False  # allow a full pickle (runs arbitrary code from the file)


@dataclass
class DataParams(_Traced):
    root: str | None = None  # ImageFolder of evaluated images; None: the embedded workload (data.embedded)
    # Without data.root: synthetic chest-radiograph-like phantoms (workload.phantoms: two classes,
    # normal / opacity, for a one-logit model) or scikit-learn's 10 handwritten digits.
    embedded: str = choice("digits", C.EMBEDDED_DATA)
    train_root: str | None = None  # ImageFolder for calibration / fine-tuning / QAT
    image_size: int = at_least(64, 8)
    resize: str = choice("squash", C.RESIZE_POLICIES)  # a non-square image: stretched, padded (black) or cropped to a square
    grayscale_to_rgb: bool = True
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = interval(list(IMAGENET_STD), 0, open_low=True)
    positive_class: str | None = None  # binary metrics are computed for this class
    # Binary problems: report the sensitivity reached at this specificity, and the reverse.
    operating_specificity: float = fraction(0.9)
    operating_sensitivity: float = fraction(0.9)
    test_fraction: float = fraction(0.3)  # embedded digits only: 0.3 of 1797 leaves 540 test images
    split_seed: int = 0
    max_test_images: int | None = None  # cap on evaluated images (CI / quick looks)
    # Embedded phantoms only: labelled images on each side, the positive share, and how faint and
    # small the opacities may be (0 to 1; higher leaves more decisions near the boundary).
    phantom_test_images: int = at_least(3000, 2)
    phantom_train_images: int = at_least(2500, 2)
    positive_share: float = fraction(0.73)  # about 1:2.7 normal to positive, like the public pediatric pneumonia set
    phantom_difficulty: float = fraction(0.5, open_low=False, open_high=False)
    # The label-free fidelity pool (measurement.verdict): decisions against the reference's on
    # independent images bound the accuracy change. A folder of unlabelled images (searched
    # recursively), or on the embedded phantoms this many freshly generated ones; 0: no pool.
    fidelity_root: str | None = None
    fidelity_pool_images: int = at_least(5000, 0, "0: no generated pool")


@dataclass
class TrainParams(_Traced):
    # Training of the embedded default model (ignored when model.checkpoint is set).
    epochs: int = at_least(5, 0)
    batch_size: int = at_least(64, 1)
    lr: float = interval(0.05, 0, open_low=True)
    seed: int = 0


@dataclass
class BenchParams(_Traced):
    warmup: int = at_least(10, 0)  # untimed calls before each timed block
    # Many short trials rather than a few long ones: this machine's speed drifts between blocks,
    # and speed-ups are per-trial ratios of adjacent blocks (measurement.stats.paired_ratio), so
    # the variance lives between trials. 20 x 175 = 3500 calls, enough for a trusted pooled p99.
    samples: int = at_least(175, 1)  # timed calls per trial
    # Time, not calls: each configuration's batch-1 latency block lasts about this many seconds
    # (calls = block_seconds / the median of its warm-up calls, decided at its first trial), never
    # fewer calls than a trusted pooled p99 needs over `trials` (measurement.timing.calls_per_block).
    # None: `samples` calls. For models whose latencies differ by orders of magnitude (a ResNet50 at
    # 224 pixels beside a pruned INT8 graph), so neither spends minutes nor gets too few calls.
    block_seconds: float | None = interval(None, 0, open_low=True)
    trials: int = at_least(20, 1)  # repeated blocks, at most; the headline is the median of trial medians
    # Adaptive stopping (measurement.timing.still_timed): after min_trials, a configuration stops
    # being timed once the 95% intervals of its median and of its speed-ups against the references
    # are narrower than this fraction of their values (0: always `trials`). Each record keeps the
    # rule and the trials it got.
    stop_ci_width: float = interval(0.0, 0, 1, open_high=True, hint="a fraction of the median; 0: a fixed number of trials")
    min_trials: int = at_least(5, 1)  # from 5 trials on, intervals resample trials (measurement.stats.TRIAL_LEVEL_MIN)
    stage_every: int = at_least(1, 1)  # every call times the full graph; every stage_every-th call the stages too
    batch_sizes: list[int] = at_least([1, 8, 32], 1)
    threads: int = at_least(2, 1)
    settle_s: float = at_least(0.5, 0)  # pause before a timed block that follows another runtime's block
    eval_batch_size: int = at_least(64, 1)
    memory: bool = True  # peak memory of each configuration, measured in its own child process
    # A busy machine is named: CPU time other processes took during the timed blocks, in cores.
    # Above this the record is flagged `contended` (measurement.load).
    contention_cores: float = interval(0.25, 0, open_low=True)
    wait_for_quiet_s: float = at_least(0.0, 0)  # wait up to this long for a quiet machine before timing (0: don't)


@dataclass
class RunParams(_Traced):
    """The pipeline itself (`optlib run`), not read by the chapters: changing it reruns nothing."""
    # A chapter still running after this long is stopped (its kernel shut down) and reported failed.
    chapter_timeout_s: float = interval(4 * 3600.0, 0, open_low=True, hint="seconds")
    # With --cluster: a Ray custom resource naming the machine kind this target needs (e.g.
    # edge_board); only nodes started with it run the target. None: any node (a GPU for cuda).
    node_resource: str | None = None


@dataclass
class OnnxParams(_Traced):
    exporter: str = choice("dynamo", C.EXPORTERS)  # torchscript: legacy, opset <= 17 honoured
    opset: int = 18
    simplify: bool = True  # onnxslim
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graph_optimization: str = choice("all", C.GRAPH_OPTIMIZATION_LEVELS)
    compare_optimization_levels: bool = True  # also measure disabled / basic / extended
    allow_spinning: bool = False  # ORT worker spinning (steals cores from PyTorch when on)
    save_optimized_graph: bool = False


@dataclass
class CompilerParams(_Traced):
    torchscript: bool = True
    torchscript_method: str = choice("trace", C.TORCHSCRIPT_METHODS)  # script falls back to trace
    # One mode per run: a second mode in the same process reuses the first's graph (see 02).
    compile_modes: list[str] = choice(["freezing"], C.COMPILE_MODES)  # [] to skip
    measure_cold_start: bool = True  # also time a compile on an empty inductor cache (two extra compiles)
    channels_last: bool = True


@dataclass
class QuantParams(_Traced):
    calibration_size: int = at_least(100, 1)  # images drawn from the training side, never the evaluated ones
    seed: int = 0  # calibration draw
    method: str = choice("minmax", C.CALIBRATION_METHODS)  # the main static method
    methods: list[str] = choice(["minmax", "entropy", "percentile"], C.CALIBRATION_METHODS)
    per_channel: bool = True
    activation_type: str = choice("uint8", C.INT8_TYPES)  # uint8: the x86 fast path
    quant_format: str = choice("QDQ", C.QUANT_FORMATS)  # QDQ: the fast path
    compare_formats: bool = True  # also measure per-tensor, QOperator and int8 (s8s8) activations
    dynamic: bool = True  # ORT dynamic INT8 (slow for CNNs: shown, not recommended)
    pytorch_native: bool = True  # FX static INT8 on PyTorch's quantized engine (quant.engine)
    engine: str = choice("x86", C.QUANT_ENGINES)  # qnnpack: the ARM kernels (the edge target)
    pt2e: bool = True  # torchao PT2E + torch.compile(freezing)
    study_sizes: list[int] = at_least([1, 10, 100, 500], 1)  # [] skips the study
    study_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sensitivity: bool = True  # per-layer sensitivity and exclusion lists
    sensitivity_images: int | None = at_least(None, 2, "None: every evaluated image")  # the first this many evaluated images
    exclude_top_k: list[int] = field(default_factory=lambda: [1, 3])
    # accuracy budget against FP32 (a fraction, judged by measurement.verdict)
    max_accuracy_drop: float = interval(0.005, 0, 1, open_high=True, hint="a fraction, e.g. 0.005 for half a point")
    gru_study: bool = True  # dynamic quantization of a GRU reading digits row by row (digits data only)
    qat_epochs: int = at_least(2, 1)  # fine-tuning recipe: finetune.*
    qat_freeze_epoch: int | None = None  # epoch (1-based) from which observers and BN statistics freeze; None: the last


@dataclass
class FineTuneParams(_Traced):
    # The one fine-tuning recipe (workload.training.finetune) of QAT, pruning and the dense control;
    # how many epochs each technique trains is its own parameter (quant.qat_epochs, prune.finetune_epochs).
    lr_scale: float = interval(0.1, 0, 10, open_low=True)  # peak learning rate as a fraction of train.lr (the original training's)
    schedule: str = choice("cosine", C.SCHEDULES)
    batch_size: int | None = at_least(None, 1)  # None: train.batch_size
    seed: int = 0
    # Limits for a model at its real size (docs/runs.md), in every record's recipe: the first
    # train_images of a permutation of the training side seeded by `seed` (None: all), and at most
    # max_steps optimizer steps per fine-tuning in all (None: every epoch's).
    train_images: int | None = at_least(None, 2)
    max_steps: int | None = at_least(None, 1)


@dataclass
class PruneParams(_Traced):
    # Unstructured (torch.nn.utils.prune): masks only; accuracy over the sweep, latency of one point.
    unstructured_criteria: list[str] = choice(["l1", "random"], C.UNSTRUCTURED_CRITERIA)
    unstructured_scopes: list[str] = choice(["global", "layer"], C.PRUNE_SCOPES)
    sparsities: list[float] = fraction([0.3, 0.5, 0.7, 0.9])
    unstructured_finetune_epochs: int = at_least(1, 0)  # the l1 global series, masks kept while training; 0: none
    # Structured (Torch-Pruning, DepGraph): channels removed.
    criteria: list[str] = choice(["l2", "taylor"], C.STRUCTURED_CRITERIA)  # the first is the main one
    scopes: list[str] = choice(["layer", "global"], C.PRUNE_SCOPES)  # layer: every layer to the ratio
    ratios: list[float] = fraction([0.25, 0.5, 0.75])  # fraction of channels removed
    round_to: int | None = at_least(8, 1, "a channel multiple such as 8, or null for no rounding")  # channel counts rounded to multiples of this; None: no rounding
    measure_unrounded: bool = True  # the main criterion at unrounded_ratio, with and without rounding
    # ... at a ratio whose channel counts are not already multiples of round_to (ResNet widths at
    # 0.25 / 0.5 / 0.75 are multiples of 8, so rounding would change nothing there)
    unrounded_ratio: float = fraction(0.8)
    iterative_steps: int = at_least(3, 0)  # the iterative model: this many prune + fine-tune steps (0: none)
    iterative_ratio: float = fraction(0.8)  # ... up to this ratio
    finetune_epochs: int = at_least(4, 0)  # after one-shot pruning, and after the iterative model's last step
    step_finetune_epochs: int | None = at_least(None, 0)  # after each earlier step of the iterative model; None: finetune_epochs
    # Pruning's fine-tuning rate as a fraction of train.lr; None: finetune.lr_scale (QAT's). A pruned
    # model has lost much and recovers better at the original training's rate ("learning-rate
    # rewinding", Renda et al. 2020, arXiv:2003.02389) than at a tenth of it.
    lr_scale: float | None = interval(None, 0, 10, open_low=True)
    # Knowledge distillation from the unpruned model while fine-tuning (the dense control too): the
    # weight of its loss against the labels' (0: labels only, 1: the teacher only) and its temperature.
    distill: float = fraction(0.0, open_low=False, open_high=False)
    distill_temperature: float = interval(1.0, 0, 20, open_low=True)
    ignored_layers: list[str] = field(default_factory=list)  # module paths kept whole, besides the head
    prune_head: bool = False  # the classification head is kept whole unless this is set
    int8: bool = True  # pruned models also through INT8 (04's recipes: ONNX Runtime static, OpenVINO NNCF)
    # Further thread counts for the INT8 graphs (unpruned and pruned, ONNX Runtime and OpenVINO),
    # each a configuration of its own: a small graph can lose more to per-operator parallelism than
    # it gains. At most bench.threads (the budget every configuration shares); [] for none.
    ort_threads: list[int] = field(default_factory=list)
    dense_control: bool = True  # the unpruned model fine-tuned with the same recipe, measured beside
    taylor_batches: int = at_least(4, 1)  # training batches whose gradients score channels (criterion taylor)


@dataclass
class PrecisionParams(_Traced):
    """Chapter 03: reduced precision (techniques.precision)."""
    variants: list[str] = choice(["bf16-autocast", "bf16", "fp16-autocast", "fp16"], C.PRECISION_VARIANTS)
    channels_last: bool = True  # every variant also in channels_last
    compile: bool = True  # torch.compile (compilers.compile_modes[0]) of the BF16 model beside FP32's
    onnx_fp16: bool = True  # an FP16 ONNX graph (I/O kept FP32) in ONNX Runtime beside the FP32 graph
    # FP16 in PyTorch on a CPU without FP16 arithmetic is ~10x slower than FP32: those variants are
    # timed in their own round (with eager FP32 again, for same-run ratios) with fewer calls.
    slow_samples: int = at_least(20, 1)
    slow_trials: int = at_least(5, 1)


@dataclass
class MemoryParams(_Traced):
    """Chapter 08: training memory (measurement.training_memory)."""
    batch_sizes: list[int] = at_least([32, 64, 128, 256], 2, "BatchNorm trains on batch statistics")
    precisions: list[str] = choice(["fp32", "bf16-autocast", "fp16-autocast"], C.TRAIN_PRECISIONS)
    # stage: each top-level nn.Sequential of the body; block: each child of those; sequential:
    # checkpoint_sequential over the whole body (stem included) where the forward is that chain.
    checkpoint: list[str] = choice(["stage", "block", "sequential"], C.CHECKPOINT_GRANULARITIES)
    segments: int | None = at_least(None, 2, "one segment recomputes nothing; null: chosen")  # sequential: checkpoint segments; None: about the square root of the layers
    checkpoint_modules: list[str] = field(default_factory=list)  # dotted paths: one more, custom configuration
    optimizer: str = choice("sgd", C.TRAIN_OPTIMIZERS)  # sgd: momentum (one state tensor); adam: two
    steps: int = at_least(3, 1)  # training steps per memory child (the peak settles from the second)
    warmup_steps: int = at_least(1, 0)  # untimed steps per configuration and batch size before the timed trials
    trials: int = at_least(8, 1)  # timed blocks per configuration and batch size, interleaved across configurations
    steps_per_trial: int = at_least(1, 1)
    budget_gib: float = interval(1.5, 0, open_low=True, hint="GiB")  # peak resident memory (CUDA: reserved) the largest-batch search must stay under
    max_batch: int = 4096  # the search never probes above this
    batch_resolution: int = at_least(8, 1)  # the search stops when the fitting and failing batches are this close
    search_probes: int = at_least(6, 0)  # most child processes per configuration for the search; 0: no search
    gradient_batch: int = at_least(8, 2, "BatchNorm trains on batch statistics")  # images for the gradient-agreement check


@dataclass
class TensorRTParams(_Traced):
    """Chapter 07: TensorRT engines (techniques.tensorrt); GPU only, skipped records elsewhere."""
    precisions: list[str] = choice(["fp32", "fp16", "int8"], C.TRT_PRECISIONS)  # bf16 where the GPU has it
    workspace_gib: float = interval(2.0, 0, open_low=True, hint="GiB")  # the builder's workspace memory-pool limit
    optimization_level: int = interval(3, 0, 5)  # builder optimisation level, 0 (fast build) to 5
    timing_cache: str | None = None  # None: outputs/<target>/artifacts/07/timing.cache, reused across builds
    profile_batches: list[int] | None = None  # [min, opt, max] batch of the profile; None: from bench.batch_sizes
    torch_tensorrt: bool = True  # torch-tensorrt (dynamo) FP32 and FP16 too
    onnxruntime_gpu: bool = True  # ONNX Runtime's CUDA and TensorRT execution providers too


@dataclass
class ComparisonParams(_Traced):
    """Chapter 99: the final round (results.final_round) re-times the finalists together."""
    final_round: bool = True
    finalists: list[str] = field(default_factory=list)  # record names to add to the chosen finalists
    max_finalists: int = at_least(10, 2, "the references")  # references, the budget pick and named ones always; chapter bests up to this
    factorial: bool = True  # add the cells of the runtime x precision x sparsity design (final_round.factorial_design)
    roofline: bool = True  # time a GEMM per number type in the round: each finalist's share of the peak (CPU)
    gemm_size: int = interval(1024, 16, 8192)  # n of the n x n x n products timed for the peaks
    # The reference in this many fresh processes, one after the other (measurement.fresh): the noise
    # floor between runs, which the same-process twin cannot show. 0: not measured.
    fresh_processes: int = at_least(5, 0)
    fresh_trials: int = at_least(3, 1)  # timed blocks per fresh process (bench.samples calls each)


@dataclass
class Params(_Traced):
    target: str = "notebook"  # outputs go to outputs/<target>/
    device: str = choice("cpu", C.DEVICES)
    model: ModelParams = field(default_factory=ModelParams)
    data: DataParams = field(default_factory=DataParams)
    train: TrainParams = field(default_factory=TrainParams)
    bench: BenchParams = field(default_factory=BenchParams)
    onnx: OnnxParams = field(default_factory=OnnxParams)
    compilers: CompilerParams = field(default_factory=CompilerParams)
    quant: QuantParams = field(default_factory=QuantParams)
    finetune: FineTuneParams = field(default_factory=FineTuneParams)
    prune: PruneParams = field(default_factory=PruneParams)
    precision: PrecisionParams = field(default_factory=PrecisionParams)
    memory: MemoryParams = field(default_factory=MemoryParams)
    tensorrt: TensorRTParams = field(default_factory=TensorRTParams)
    comparison: ComparisonParams = field(default_factory=ComparisonParams)
    run: RunParams = field(default_factory=RunParams)

    def to_dict(self) -> dict:
        """Every parameter as plain values (not noted as read: records keep the whole tree)."""
        with _untraced():
            return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable short hash of every parameter (recorded in each result)."""
        return stable_hash(self.to_dict())

    @property
    def is_embedded(self) -> bool:
        return self.data.root is None


_SECTION_NAMES = {f.type if isinstance(f.type, type) else f.default_factory: f.name
                  for f in dataclasses.fields(Params) if f.default_factory is not dataclasses.MISSING}


def read_value(params: "Params", key: str):
    """The value of a dotted key ("bench.samples") without noting it as read."""
    with _untraced():
        value = params
        for part in key.split("."):
            value = getattr(value, part)
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# Keys a papermill parameters cell may carry that are not parameters of the run.
NOTEBOOK_ONLY_KEYS = {"params_file"}
# Sections for `optlib run` itself, not injected into the notebooks.
PIPELINE_ONLY_KEYS = {"run"}


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_type(value, tp, key: str, source: str):
    """Return `value` coerced to `tp` or raise ParamsError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(value, inner[0], key, source)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"{source}: '{key}' must be a list of {item_tp.__name__}, got {value!r}")
        return [_check_type(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported parameter type {tp} for {key}")


def _build(cls, values: dict, prefix: str, source: str):
    if not isinstance(values, dict):
        raise ParamsError(f"{source}: '{prefix.rstrip('.')}' must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields_by_name = {f.name: f for f in dataclasses.fields(cls)}
    known = set(fields_by_name)
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ParamsError(
                f"{source}: unknown key '{prefix}{key}' (known keys: {', '.join(sorted(known))})")
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _check_type(value, tp, f"{prefix}{key}", source)
            _check_declared(kwargs[key], fields_by_name[key].metadata, f"{prefix}{key}", source)
    return cls(**kwargs)


def _check_declared(value, meta: dict, key: str, source: str) -> None:
    """ParamsError naming `key` (and the list index) when `value` breaks its field's `choice` or
    `interval` declaration; None passes (the type said whether it may be None)."""
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    for i, item in items:
        name = key if i is None else f"{key}[{i}]"
        if item is None:
            continue
        if "choices" in meta:
            check_choice(key, item, meta["choices"], error=lambda m: ParamsError(f"{source}: {m}"))
        if "interval" in meta and item not in meta["interval"]:
            hint = f" ({meta['hint']})" if meta.get("hint") else ""
            raise ParamsError(f"{source}: '{name}' must be {meta['interval'].describe()}{hint}, got {item!r}")


def declared_ranges() -> dict[str, Interval]:
    """Every parameter with an `interval` declaration: {"section.key": Interval} (for the tests
    and the docs)."""
    out = {}
    for section in dataclasses.fields(Params):
        cls = section.default_factory if section.default_factory is not dataclasses.MISSING else None
        for f in dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else []:
            if "interval" in f.metadata:
                out[f"{section.name}.{f.name}"] = f.metadata["interval"]
    return out


def _validate(p: Params, source: str) -> Params:
    def fail(key, msg):
        raise ParamsError(f"{source}: '{key}' {msg}")

    if not p.target or any(c in p.target for c in "/\\ ") or p.target.startswith("."):
        fail("target", f"must be a plain folder name (no '/', spaces or leading '.'), got {p.target!r}")
    for key in ("checkpoint",):
        path = getattr(p.model, key)
        if path is not None and not Path(path).is_file():
            fail(f"model.{key}", f"names a file that does not exist: {path} (fix the path, or remove "
                 "the key to train the embedded default model)")
    for key in ("root", "train_root", "fidelity_root"):
        path = getattr(p.data, key)
        if path is not None and not Path(path).is_dir():
            fail(f"data.{key}", f"names a folder that does not exist: {path} (" + (
                "a folder of unlabelled images, searched recursively" if key == "fidelity_root" else
                "an ImageFolder: one sub-folder per class") + ")")
    if p.is_embedded and p.data.embedded == "phantoms" and p.data.positive_class is None:
        from ..workload.phantoms import POSITIVE

        p.data.positive_class = POSITIVE  # the phantoms' positive class, scored by a one-logit model
    if p.data.train_root is not None and p.data.root is None:
        fail("data.train_root", "needs data.root too (the evaluated images)")
    if len(p.data.mean) not in (1, 3) or len(p.data.std) != len(p.data.mean):
        fail("data.mean", "and data.std must both have 1 or 3 values")
    if p.model.num_classes == 1 and p.data.positive_class is None:
        fail("model.num_classes", "is 1 (one sigmoid logit): set 'data.positive_class' to the class the logit scores")
    if p.model.num_classes == 1 and p.data.root is None and p.data.embedded == "digits":
        fail("model.num_classes", "is 1 (one sigmoid logit) but the embedded digits have 10 classes: set "
             "data.embedded: phantoms, or data.root to a two-class ImageFolder")
    if p.model.head is not None and not all(part.isidentifier() for part in p.model.head.split(".")):
        fail("model.head", f"must be a dotted attribute path such as classifier or net.fc, got {p.model.head!r}")
    if not p.bench.batch_sizes:
        fail("bench.batch_sizes", "must be a non-empty list of batch sizes")
    q = p.quant
    if q.qat_freeze_epoch is not None and not 1 <= q.qat_freeze_epoch <= q.qat_epochs:
        fail("quant.qat_freeze_epoch", f"must be an epoch between 1 and quant.qat_epochs ({q.qat_epochs}), or null")
    if q.pt2e and q.engine != "x86":
        fail("quant.pt2e", f"uses torchao's X86InductorQuantizer: set it false when quant.engine is {q.engine!r}")
    pr = p.prune
    bad = [t for t in pr.ort_threads if not 1 <= t <= p.bench.threads]
    if bad:
        fail("prune.ort_threads", f"must be thread counts from 1 to bench.threads ({p.bench.threads}), got {bad}")
    if pr.iterative_steps == 1:
        fail("prune.iterative_steps", f"must be 0 (no iterative model) or at least 2, got {pr.iterative_steps} "
             "(one-shot pruning is prune.ratios)")
    bad = [n for n in pr.ignored_layers if not all(part.isidentifier() for part in n.split("."))]
    if bad:
        fail("prune.ignored_layers", f"must be dotted module paths such as layer4.1.conv2, got {bad}")
    mem = p.memory
    if not mem.batch_sizes:
        fail("memory.batch_sizes", "must be a non-empty list of batch sizes >= 2 (BatchNorm trains on batch statistics)")
    bad = [n for n in mem.checkpoint_modules if not all(part.isidentifier() for part in n.split("."))]
    if bad:
        fail("memory.checkpoint_modules", f"must be dotted module paths such as layer1.0, got {bad}")
    if mem.max_batch < max(mem.batch_sizes):
        fail("memory.max_batch", f"must be at least the largest of memory.batch_sizes ({max(mem.batch_sizes)})")
    t = p.tensorrt
    if t.profile_batches is not None and (len(t.profile_batches) != 3 or not 1 <= t.profile_batches[0]
                                          <= t.profile_batches[1] <= t.profile_batches[2]):
        fail("tensorrt.profile_batches", f"must be [min, opt, max] with 1 <= min <= opt <= max, got {t.profile_batches}")
    return p


def from_dict(values: dict | None, source: str = "<parameters>") -> Params:
    """Build validated Params from a plain dict (a YAML file's content or notebook variables)."""
    values = dict(values or {})
    for key in NOTEBOOK_ONLY_KEYS:
        values.pop(key, None)
    with _untraced():
        return _validate(_build(Params, values, "", source), source)


def load_params(path: str | Path) -> Params:
    """Read and validate a YAML params file; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (see params/ for examples)")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: must be a mapping of keys at the top level")
    return from_dict(values, str(path))


def notebook_params(params_file: str | None = None, **overrides) -> Params:
    """What a notebook's parameters cell builds: papermill-injected sections, or a params file.

    `params_file` (if given) is read first; the sections passed as keywords override it key by key.
    """
    base: dict = {}
    source = "<notebook parameters>"
    if params_file:
        p = load_params(params_file)
        base = p.to_dict()
        source = str(params_file)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return from_dict(base, source)
