"""TensorRT runners (chapter 07), GPU only: a serialized engine run on torch's current CUDA stream
(set_input_shape / set_tensor_address / execute_async_v3; the full-model engine for `predict`, the
features and head engines for the stage split; stages timed on the host clock after a stream
synchronize, like every backend), and the loaders of the `tensorrt` and `torch-tensorrt` artifact
kinds. Written against NVIDIA's documentation; never executed on this project's machines (no GPU,
and TensorRT cannot be installed on them). Engines are built by techniques.tensorrt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..workload.data import PreprocessSpec
from .base import Runner


class TensorRTRunner(Runner):
    """A serialized engine (full model; features and head engines when given) run on torch's
    current CUDA stream with torch tensors as buffers; `synchronize` waits for the stream."""
    backend = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path: str | Path, spec: PreprocessSpec, name: str, precision: str,
                 features_path: str | Path | None = None, head_path: str | Path | None = None):
        import tensorrt as trt

        super().__init__(spec)
        self.name, self.precision, self.technique = name, precision, "tensorrt"
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._model = self._load(engine_path)
        self._features = self._load(features_path) if features_path else None
        self._head = self._load(head_path) if head_path else None
        self.stage_split = self._features is not None and self._head is not None

    def _load(self, path):
        engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path} (built by another TensorRT version or GPU?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == self._trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        return engine, engine.create_execution_context(), inputs[0], outputs[0]

    def _run(self, part, x):
        import torch

        engine, context, iname, oname = part
        dtypes = {self._trt.DataType.FLOAT: torch.float32, self._trt.DataType.HALF: torch.float16,
                  self._trt.DataType.BF16: torch.bfloat16}
        x = x.to("cuda", dtypes[engine.get_tensor_dtype(iname)], non_blocking=True).contiguous()
        context.set_input_shape(iname, tuple(x.shape))
        out = torch.empty(tuple(context.get_tensor_shape(oname)), dtype=dtypes[engine.get_tensor_dtype(oname)],
                          device="cuda")
        context.set_tensor_address(iname, x.data_ptr())
        context.set_tensor_address(oname, out.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed")
        return out

    def extract_features(self, x):
        return self._run(self._features, x) if self.stage_split else x

    def classify(self, features) -> np.ndarray:
        out = self._run(self._head, features) if self.stage_split else self._run(self._model, features)
        return out.float().cpu().numpy()

    def predict(self, images) -> np.ndarray:
        return self._run(self._model, self.preprocess(images)).float().cpu().numpy()

    def synchronize(self) -> None:
        import torch

        torch.cuda.synchronize()


def load_engine(artifact, name: str, threads: int, device: str) -> TensorRTRunner:
    """backends.artifacts loader of kind `tensorrt`: the serialized engine, deserialized."""
    from .artifacts import spec_of

    f = artifact.files
    return TensorRTRunner(f["engine"], spec_of(artifact), name, artifact.options["precision"],
                          features_path=f.get("features"), head_path=f.get("head"))


def load_torch_tensorrt(artifact, name: str, threads: int, device: str):
    """backends.artifacts loader of kind `torch-tensorrt`: the saved exported program."""
    import torch
    import torch_tensorrt  # noqa: F401  (registers the TensorRT ops the program calls)

    from .artifacts import spec_of
    from .pytorch import TorchRunner

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[artifact.options["precision"]]
    return TorchRunner(torch.export.load(artifact.files["program"]).module(), spec_of(artifact), name=name,
                       device="cuda", threads=threads, technique="tensorrt", input_dtype=dtype)
