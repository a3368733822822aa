"""A native crash costs one configuration, not the chapter: `Chapter.attempt(..., isolate=True)`
builds and calls the runner once in a child process first; a child killed by a signal (here one
that raises SIGSEGV on itself, as a crashing runtime would) is a `failed` record naming the signal
and the step, and the chapter's own process goes on to the next configuration."""
import os
import signal
from types import SimpleNamespace

import numpy as np

from optlib.chapter import Chapter
from optlib.core.params import from_dict
from optlib.measurement.launcher import survives
from optlib.results.records import load_records


class _Runner:
    def __init__(self, crash_on_call: bool):
        self.crash_on_call = crash_on_call

    def predict(self, images):
        if self.crash_on_call:
            os.kill(os.getpid(), signal.SIGSEGV)
        return np.zeros((len(images), 2))


def crash_while_building():
    os.kill(os.getpid(), signal.SIGSEGV)


def crash_on_first_call():
    return _Runner(crash_on_call=True)


def fine(value=1):
    return _Runner(crash_on_call=False) if value == 1 else None


def raises():
    raise ValueError("a Python error, not a crash")


def test_survives_names_the_signal_and_the_step():
    images = [np.zeros((4, 4), np.uint8)]
    assert survives(crash_while_building, images=images) == "native crash (SIGSEGV) while building"
    assert survives(crash_on_first_call, images=images) == "native crash (SIGSEGV) while its first call"
    assert survives(fine, kwargs={"value": 1}, images=images) is None
    assert survives(raises, images=images) is None  # the caller's own attempt records Python errors


def test_a_crashing_configuration_is_failed_and_the_chapter_goes_on(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    params = from_dict({"target": "crash"})
    dataset = SimpleNamespace(test=SimpleNamespace(images=[np.zeros((4, 4), np.uint8)] * 3))
    ch = Chapter(params, "02_onnx_and_compilers", dataset, None, None, None, None)
    built = [ch.attempt(name, "runtime", "somert", "fp32", build, isolate=True)
             for name, build in (("first", crash_while_building), ("second", crash_on_first_call), ("third", fine))]
    assert built[0] is None and built[1] is None and isinstance(built[2], _Runner)
    records = {r.name: r for r in load_records("crash")}
    assert set(records) == {"first", "second"}
    assert records["first"].status == "failed" and "SIGSEGV" in records["first"].reason
    assert records["second"].reason == "native crash (SIGSEGV) while its first call"


def test_the_fp16_graph_build_of_chapter_03_pickles_into_the_child_and_survives(tmp_path):
    """What chapter 03 isolates for real: ort_fp16_runner's arguments (the FP32 graphs with their
    PyTorch parts, the preprocessing, ONNX Runtime's config, an input) go to the child by pickle,
    and the FP16 graph is built and called there."""
    from optlib.backends.onnxruntime import OrtConfig
    from optlib.techniques import int8_onnx
    from optlib.techniques.onnx_export import ExportConfig
    from optlib.techniques.precision import ort_fp16_runner
    from optlib.workload.data import PreprocessSpec, preprocess
    from tests.helpers import tiny_resnet

    spec = PreprocessSpec(16, [0.5], [0.25], grayscale_to_rgb=True)
    images = [np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)]
    graphs = int8_onnx.fp32_graphs(tiny_resnet().eval(), preprocess(images * 2, spec), tmp_path,
                                   ExportConfig(exporter="torchscript"))
    x = preprocess(images, spec).numpy()
    assert survives(ort_fp16_runner, (graphs, spec, OrtConfig(intra_op_threads=1), x), images=images) is None
    assert (tmp_path / "model.fp16.onnx").is_file()  # written by the child
