"""ONNX Runtime runner: execution providers with recorded fallback, session options from params.

Stages: the feature-extractor graph and the head graph (two small exports) give the per-stage
split; `predict` runs the single full graph, so the headline total pays nothing for the split.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..core.choices import GRAPH_OPTIMIZATION_LEVELS, check_choice
from ..results.values import Artifact
from ..workload.data import PreprocessSpec, preprocess_array
from .base import Runner

PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider"}
# ORT's WeightBiasQuantization transformer (1.2x+) quantizes the float weights of any Conv/Gemm that
# sits between DequantizeLinear and QuantizeLinear, so a layer kept in FP32 with nodes_to_exclude
# silently runs as QLinearConv again (measured with onnxruntime 1.32). Off by default: the graph
# runs as written. It changes nothing in graphs without such patterns (FP32, fully quantized).
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)


@dataclass
class OrtConfig:
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    graph_optimization: str = "all"  # disabled | basic | extended | all
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    # Idle ORT workers spin on the cores and slow the next PyTorch call (platform facts): off by default.
    allow_spinning: bool = False
    optimized_model_path: str | None = None  # save the graph after ORT's optimizations
    disabled_optimizers: list[str] = field(default_factory=lambda: list(DISABLED_OPTIMIZERS))
    profile_prefix: str | None = None  # write ORT's per-node profile (techniques.onnx_runtime.op_profile)
    # per provider, its options as strings (e.g. techniques.tensorrt.ort_tensorrt_options)
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params, **overrides) -> "OrtConfig":
        """The session settings a run's Params ask for (providers, optimisation level, threads,
        spinning); keyword overrides win, e.g. graph_optimization="basic"."""
        kw = dict(providers=list(params.onnx.providers), graph_optimization=params.onnx.graph_optimization,
                  intra_op_threads=params.bench.threads, allow_spinning=params.onnx.allow_spinning)
        return cls(**{**kw, **overrides})

    def __post_init__(self):
        check_choice("onnx.graph_optimization", self.graph_optimization, GRAPH_OPTIMIZATION_LEVELS)
        self.providers = [PROVIDER_ALIASES.get(p.lower(), p) for p in self.providers]


def resolve_providers(requested: list[str]) -> tuple[list[str], list[str]]:
    """(providers to ask for, reasons for each requested one that is not available here)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    usable = [p for p in requested if p in available]
    reasons = [f"{p} not available in this onnxruntime build (available: {available})"
               for p in requested if p not in available]
    if "CPUExecutionProvider" not in usable:
        usable.append("CPUExecutionProvider")
    return usable, reasons


def make_session(path: str | Path, config: OrtConfig):
    """An InferenceSession with `config`; returns (session, settings dict incl. fallback reasons)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[config.graph_optimization]
    so.intra_op_num_threads = config.intra_op_threads
    so.inter_op_num_threads = config.inter_op_threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if config.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if config.allow_spinning else "0")
    so.log_severity_level = 3
    if config.optimized_model_path:
        so.optimized_model_filepath = str(config.optimized_model_path)
    if config.profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = str(config.profile_prefix)
    usable, reasons = resolve_providers(config.providers)
    sess = ort.InferenceSession(str(path), sess_options=so, providers=usable,
                                provider_options=[config.provider_options.get(p, {}) for p in usable],
                                disabled_optimizers=list(config.disabled_optimizers))
    active = sess.get_providers()
    # onnxruntime-gpu lists CUDA/TensorRT as available even without a GPU, then silently runs on CPU.
    reasons += [f"{p} requested but the session fell back (active: {active})"
                for p in usable if p not in active]
    settings = {"providers_requested": config.providers, "providers_active": active,
                "provider_fallback": reasons, "graph_optimization": config.graph_optimization,
                "intra_op_threads": config.intra_op_threads, "inter_op_threads": config.inter_op_threads,
                "allow_spinning": config.allow_spinning, "disabled_optimizers": list(config.disabled_optimizers),
                "onnxruntime": ort.__version__}
    if config.provider_options:
        # what the session took, read back (None where ORT names no such provider)
        options = sess.get_provider_options()
        settings["provider_options"] = {p: options.get(p) for p in config.provider_options}
    return sess, settings


class OrtRunner(Runner):
    backend = "onnxruntime"

    def __init__(self, model_path: str | Path, spec: PreprocessSpec, name: str = "onnxruntime-fp32",
                 config: OrtConfig | None = None, features_path: str | Path | None = None,
                 head_path: str | Path | None = None, technique: str = "runtime", precision: str = "fp32"):
        super().__init__(spec)
        self.config = config or OrtConfig()
        self.name, self.technique, self.precision = name, technique, precision
        self.threads = self.config.intra_op_threads
        self.session, self._settings = make_session(model_path, self.config)
        self.device = "cuda" if any(p in self._settings["providers_active"] for p in
                                    ("CUDAExecutionProvider", "TensorrtExecutionProvider")) else "cpu"
        self.stage_split = features_path is not None and head_path is not None
        part_config = OrtConfig(**{**self.config.__dict__, "optimized_model_path": None})
        self.features_session = make_session(features_path, part_config)[0] if self.stage_split else self.session
        self.head_session = make_session(head_path, part_config)[0] if self.stage_split else None
        # read once: get_inputs() builds its NodeArg list anew on every call (microseconds a call)
        self._input_names = {id(sess): sess.get_inputs()[0].name for sess in
                             (self.session, self.features_session, self.head_session) if sess is not None}
        self._in_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32
        files = {"model": str(model_path)}
        if self.stage_split:
            files.update(features=str(features_path), head=str(head_path))
        self.artifact = Artifact("onnxruntime", files, {"config": {**asdict(part_config)}},
                                 spec.to_dict() if spec is not None else None)

    def with_threads(self, threads: int, name: str) -> "OrtRunner":
        """The same graphs in sessions of their own with `threads` intra-op threads, described like
        this runner (size, kernels, one-time costs, details): a thread count is a setting, not a
        new model."""
        f = self.artifact.files
        r = OrtRunner(f["model"], self.spec, name=name, config=replace(self.config, intra_op_threads=threads),
                      features_path=f.get("features"), head_path=f.get("head"), technique=self.technique,
                      precision=self.precision)
        return r.annotate(size_bytes=self.size_bytes, kernels=self.kernels,
                          one_time_cost_seconds=self.one_time_cost_seconds, **self.details)

    def _run(self, sess, x):
        if self.device != "cuda":
            return sess.run(None, {self._input_names[id(sess)]: x})[0]
        # IO binding: input and output stay on the GPU; the host copies are preprocessing's (in)
        # and classification's (out), so the feature stage times the graph alone.
        import onnxruntime as ort

        binding = sess.io_binding()
        if not isinstance(x, ort.OrtValue):
            x = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(sess.get_inputs()[0].name, x)
        binding.bind_output(sess.get_outputs()[0].name, "cuda")
        sess.run_with_iobinding(binding)
        return binding.get_outputs()[0]

    def _host(self, out) -> np.ndarray:
        return np.asarray(out.numpy() if hasattr(out, "numpy") else out, dtype=np.float32)

    def preprocess(self, images):
        x = preprocess_array(images, self.spec).astype(self._in_dtype, copy=False)  # no torch on this path
        if self.device == "cuda":
            import onnxruntime as ort

            return ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        return x

    def extract_features(self, x):
        return self._run(self.features_session, x)

    def classify(self, features) -> np.ndarray:
        out = self._run(self.head_session, features) if self.head_session is not None else features
        return self._host(out)

    def predict(self, images) -> np.ndarray:
        return self._host(self._run(self.session, self.preprocess(images)))

    def settings(self) -> dict:
        return dict(self._settings)
