"""Chapter 07's parts that run without a GPU: profile shapes, the engine-cache key, the build path
by TensorRT version, the skip reasons, the TensorRT-compatibility check of the INT8 Q/DQ graph and
its CPU accuracy against FP32, and the GPU telemetry sampler's logic. GPU-only tests are skipped
with the reason where there is no CUDA device or no TensorRT."""
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from optlib.backends.base import Runner
from optlib.backends.onnxruntime import OrtConfig
from optlib.backends.pytorch import TorchRunner
from optlib.backends.tensorrt import TensorRTRunner
from optlib.core.params import BenchParams, ParamsError, from_dict
from optlib.measurement import gpu_telemetry as gt
from optlib.measurement import timing
from optlib.techniques import int8_onnx as qo
from optlib.techniques import tensorrt as trt_tools
from optlib.techniques.onnx_export import ExportConfig, external_data_files
from optlib.workload.data import preprocess
from tests.helpers import tiny_resnet
from tests.test_artifacts_memory import SPEC


def test_profile_shapes_come_from_the_benchmark_batch_sizes_or_the_params():
    s = trt_tools.profile_shapes([1, 8, 32], 64)
    assert s == {"min": (1, 3, 64, 64), "opt": (1, 3, 64, 64), "max": (32, 3, 64, 64)}
    assert trt_tools.profile_shapes([8, 32], 64)["opt"] == (8, 3, 64, 64)
    assert trt_tools.profile_shapes([1], 32, given=[2, 4, 16])["max"] == (16, 3, 32, 32)
    with pytest.raises(ValueError, match="profile_batches"):
        trt_tools.profile_shapes([1], 32, given=[4, 2, 16])
    with pytest.raises(ParamsError, match="'tensorrt.profile_batches'"):
        from_dict({"tensorrt": {"profile_batches": [1, 8]}})
    with pytest.raises(ParamsError, match="'tensorrt.precisions'"):
        from_dict({"tensorrt": {"precisions": ["int4"]}})


def test_engine_cache_key_changes_with_everything_an_engine_depends_on(tmp_path):
    base = dict(onnx_sha256="a" * 64, trt_version="11.1.0", gpu="NVIDIA H100", precision="fp16",
                shapes=trt_tools.profile_shapes([1, 32], 64), workspace_bytes=2 ** 31, optimization_level=3)
    key = trt_tools.engine_cache_key(**base)
    assert key == trt_tools.engine_cache_key(**dict(base))
    changes = dict(onnx_sha256="b" * 64, trt_version="11.2.0", gpu="NVIDIA L4", precision="int8",
                   shapes=trt_tools.profile_shapes([1, 64], 64), workspace_bytes=2 ** 30, optimization_level=5)
    for k, v in changes.items():
        assert trt_tools.engine_cache_key(**{**base, k: v}) != key, k
    # the graph's hash covers its external data file too
    path = tmp_path / "g.onnx"
    onnx.save(_qdq_graph(0, False), path, save_as_external_data=True, location="g.onnx.data", size_threshold=0)
    (data,) = external_data_files(path)
    before = trt_tools.file_sha256(path)
    raw = bytearray(data.read_bytes())
    raw[0] ^= 1
    data.write_bytes(bytes(raw))
    assert trt_tools.file_sha256(path) != before


def test_build_path_by_tensorrt_version():
    assert trt_tools.build_path("11.4.0") == "strongly-typed"
    assert trt_tools.build_path("10.13.3.9") == "strongly-typed-flag"
    with pytest.raises(ValueError, match="older than 10"):
        trt_tools.build_path("8.6.1")


def test_every_gpu_path_says_why_it_cannot_run_here(monkeypatch):
    a = trt_tools.availability("cpu")
    assert a["cuda"].startswith("the target's device is cpu") and a["tensorrt"].startswith(a["cuda"])
    if "tensorrt" not in a["versions"]:
        assert "`tensorrt` is not importable" in a["tensorrt"] and "`torch_tensorrt` is not importable" in a["torch_tensorrt"]
    if not torch.cuda.is_available():
        assert trt_tools.availability("cuda")["cuda"].startswith("no CUDA device visible")
    # an old TensorRT on a (pretended) GPU machine: the version is the reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    monkeypatch.setattr("optlib.core.env.gpu_name", lambda: "fake GPU")
    a = trt_tools.availability("cuda")
    assert a["cuda"] is None and a["tensorrt"].startswith("TensorRT 8.6.1 is older than 10")


def _qdq_graph(zero_point: int, weight_dequantized: bool, zp_type=TensorProto.INT8) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(w) -> y, the weight through DQ or a plain float initializer."""
    w = np.ones((2, 1, 1, 1), np.float32)
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zp", zp_type, [], [zero_point])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_x")]
    if weight_dequantized:
        inits += [numpy_helper.from_array(w.astype(np.int8), "wq"), helper.make_tensor("ws", TensorProto.FLOAT, [], [0.5]),
                  helper.make_tensor("wzp", TensorProto.INT8, [], [0])]
        nodes.append(helper.make_node("DequantizeLinear", ["wq", "ws", "wzp"], ["w"], name="dq_w"))
    else:
        inits.append(numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("zp, weight_dq, zp_type, expect", [
    (0, True, TensorProto.INT8, dict(compatible=True, quantized=["conv"])),
    (3, True, TensorProto.INT8, dict(compatible=False, quantized=["conv"], nonzero=["q_x", "dq_x"])),
    (0, True, TensorProto.UINT8, dict(compatible=False, quantized=["conv"], not_int8=["q_x", "dq_x"])),
    (0, False, TensorProto.INT8, dict(compatible=False, floating=["conv"])),
])
def test_qdq_report_on_graphs_with_a_known_answer(tmp_path, zp, weight_dq, zp_type, expect):
    path = tmp_path / "g.onnx"
    onnx.save(_qdq_graph(zp, weight_dq, zp_type), path)
    r = trt_tools.qdq_report(path)
    assert r.compatible == expect["compatible"] and r.compute_ops == 1
    assert r.quantized_compute == expect.get("quantized", [])
    assert r.nonzero_zero_point == expect.get("nonzero", []) and r.not_int8 == expect.get("not_int8", [])
    assert r.float_compute == expect.get("floating", [])
    assert bool(r.problems()) != r.compatible


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt-int8")
    torch.manual_seed(0)
    model = tiny_resnet(3)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(24)]
    graphs = qo.fp32_graphs(model, preprocess(images[:2], SPEC), d, ExportConfig())
    calibration = qo.calibrate_graphs(graphs, preprocess(images[:16], SPEC), "minmax")
    ort = OrtConfig(intra_op_threads=2)
    trt_ready = qo.static_runner(graphs, calibration, trt_tools.trt_static_config(), SPEC, ort, name="trt-qdq")
    x86 = qo.static_runner(graphs, calibration, qo.StaticQuantConfig(), SPEC, ort, name="u8s8")
    return model, images, trt_ready, x86


def test_tensorrt_int8_graph_is_symmetric_signed_qdq_and_accurate_on_cpu(quantized):
    model, images, trt_ready, x86 = quantized
    r = trt_tools.qdq_report(trt_ready.artifact.files["model"])
    assert r.compatible and r.coverage == 1.0 and r.compute_ops == 21  # ResNet18: 20 Conv + the Gemm head
    # ONNX Runtime's default x86 recipe (unsigned, asymmetric activations) is what TensorRT refuses
    default = trt_tools.qdq_report(x86.artifact.files["model"])
    assert not default.compatible and default.not_int8
    # the same Q/DQ graph, run by ONNX Runtime on the CPU, against eager FP32
    eager = TorchRunner(model, SPEC, threads=2).predict(images)
    q = trt_ready.predict(images)
    assert (q.argmax(1) == eager.argmax(1)).mean() >= 0.9
    cosine = float((q * eager).sum() / np.linalg.norm(q) / np.linalg.norm(eager))
    assert cosine > 0.95, cosine


def test_stage_graphs_get_the_image_profile_batch_range_with_their_own_dimensions(quantized, tmp_path):
    model, _, trt_ready, _ = quantized
    files = trt_ready.artifact.files
    image = trt_tools.profile_shapes([1, 8], SPEC.image_size)
    assert trt_tools.graph_shapes(files["model"], image) == image
    assert trt_tools.graph_shapes(files["features"], image) == image
    # the head's input is the pooled features: (batch, the classifier's input width)
    assert trt_tools.graph_shapes(files["head"], image) == {k: (v[0], model.fc.in_features) for k, v in image.items()}
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, "h", "w"])
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])), dynamic)
    with pytest.raises(ValueError, match="dynamic dimension after the batch"):
        trt_tools.graph_shapes(dynamic, image)


def test_ort_tensorrt_options_name_the_sessions_input_and_go_only_to_that_provider(quantized, tmp_path):
    import onnxruntime as ort

    from optlib.backends.onnxruntime import make_session

    path = quantized[2].artifact.files["model"]
    shapes = trt_tools.profile_shapes([1, 8], 8)
    opts = trt_tools.ort_tensorrt_options(path, shapes, tmp_path / "cache", 2 ** 30, 4)
    name = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_inputs()[0].name
    for k in ("min", "opt", "max"):
        given, dims = opts[f"trt_profile_{k}_shapes"].split(":")
        assert given == name and tuple(int(d) for d in dims.split("x")) == shapes[k]
    assert opts["trt_engine_cache_enable"] == "True" and opts["trt_builder_optimization_level"] == "4"
    # where this onnxruntime has no TensorRT provider, the session falls back to the CPU, says so,
    # and the TensorRT options are not handed to another provider
    config = OrtConfig(providers=["tensorrt", "cpu"], provider_options={"TensorrtExecutionProvider": opts})
    sess, settings = make_session(path, config)
    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        assert sess.get_providers() == ["CPUExecutionProvider"]
        assert "TensorrtExecutionProvider not available" in settings["provider_fallback"][0]
        assert settings["provider_options"] == {"TensorrtExecutionProvider": None}
        assert not any(k.startswith("trt_") for k in sess.get_provider_options()["CPUExecutionProvider"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_engine_builds_reloads_and_matches_onnxruntime(quantized, tmp_path):  # pragma: no cover - GPU only
    pytest.importorskip("tensorrt", reason="tensorrt is not installed (its wheels come from NVIDIA's index)")
    _, images, trt_ready, _ = quantized
    shapes = trt_tools.profile_shapes([1, 8], 32)
    b = trt_tools.build_engine(trt_ready.artifact.files["model"], tmp_path, "int8", shapes, 2 ** 30,
                               timing_cache=tmp_path / "timing.cache")
    f = trt_ready.artifact.files
    parts = {p: trt_tools.build_engine(f[p], tmp_path, "int8", trt_tools.graph_shapes(f[p], shapes), 2 ** 30, part=p)
             for p in ("features", "head")}
    runner = TensorRTRunner(b.path, SPEC, "tensorrt-int8", "int8", features_path=parts["features"].path,
                                      head_path=parts["head"].path)
    expected = trt_ready.predict(images).argmax(1)
    assert (runner.predict(images).argmax(1) == expected).mean() >= 0.9
    staged = runner.classify(runner.extract_features(runner.preprocess(images)))
    assert (staged.argmax(1) == expected).mean() >= 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_onnxruntime_cuda_runs_with_io_binding_and_matches_the_cpu(quantized):  # pragma: no cover - GPU only
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDAExecutionProvider (install onnxruntime-gpu)")
    from optlib.backends.onnxruntime import OrtRunner

    _, images, trt_ready, _ = quantized
    f = trt_ready.artifact.files
    gpu = OrtRunner(f["model"], SPEC, name="cuda", config=OrtConfig(providers=["cuda", "cpu"]),
                    features_path=f["features"], head_path=f["head"])
    assert gpu.device == "cuda" and gpu.settings()["providers_active"][0] == "CUDAExecutionProvider"
    expected = trt_ready.predict(images)
    assert np.allclose(gpu.predict(images), expected, atol=1e-2)
    staged = gpu.classify(gpu.extract_features(gpu.preprocess(images)))
    assert isinstance(staged, np.ndarray) and np.allclose(staged, expected, atol=1e-2)


def test_telemetry_energy_from_the_counter_or_the_power_samples():
    t = iter(np.arange(0.0, 10.0, 0.25))
    sampler = gt.Sampler(lambda: gt.Reading(50.0, 2 ** 30, 100.0), energy_mj=None, clock=lambda: float(next(t)),
                         interval_s=0)
    sampler.start()
    for _ in range(3):
        sampler.sample()
    s = sampler.stop(images=200)
    # samples at 0, 0.25, ..., 1.0 s at a constant 100 W: 100 J, half a joule per image
    assert s.energy_source == "integrated power samples" and s.energy_j == pytest.approx(100.0)
    assert s.joules_per_image == pytest.approx(0.5) and s.utilization_mean_pct == 50 and s.samples == 5
    counter = iter([1_000.0, 61_000.0])
    s2 = gt.Sampler(lambda: gt.Reading(0, 0, 0), energy_mj=lambda: next(counter), interval_s=0).start().stop(images=60)
    assert s2.energy_source == "energy counter" and s2.energy_j == pytest.approx(60.0) and s2.joules_per_image == 1.0
    both = gt.combine([s, s2])
    assert both.energy_j == pytest.approx(160.0) and both.images == 260 and both.energy_source == "mixed"


def test_telemetry_is_absent_without_nvml_and_sampled_per_gpu_block():
    if not torch.cuda.is_available():
        assert gt.nvml_sampler_factory() is None  # no NVML library or no GPU: nothing, not zeros

    class Fake(Runner):
        def __init__(self, name, device):
            super().__init__(SPEC)
            self.name, self.device = name, device  # "cuda" pretends: the harness samples GPU runners only

        def predict(self, images):
            return np.zeros((len(images), 3), np.float32)

    fake, cpu = Fake("gpu", "cuda"), Fake("cpu", "cpu")
    images = [np.zeros((8, 8), np.uint8)] * 4
    out = {}
    bench = BenchParams(warmup=1, samples=8, trials=2, settle_s=0.0)
    timing.throughput([fake, cpu], images, bench, [4], progress=False,
                      telemetry=lambda: gt.Sampler(lambda: gt.Reading(10, 1, 5), interval_s=0), telemetry_out=out)
    assert list(out) == [4] and list(out[4]) == ["gpu"] and len(out[4]["gpu"]) == 2
    assert all(t.images == 5 * 4 for t in out[4]["gpu"])  # max(5, 8 // 4) batches of 4 per block


def test_an_engine_build_that_crashes_costs_its_configuration_only(tmp_path, monkeypatch):
    """TensorRT's builder is native code: chapter 07 builds each engine in a child first. A stand-in
    `tensorrt` (on PYTHONPATH, so only children see it) whose Builder kills its process with SIGSEGV:
    the engine's record is `failed` naming the signal and the step, the notebook's process never
    built it, and the chapter goes on to the other GPU configurations' skip records."""
    from optlib.chapter import Chapter
    from optlib.chapters import tensorrt as chapter07
    from optlib.results.records import load_records
    from optlib.workload.data import PreprocessSpec

    fake = tmp_path / "fake" / "tensorrt"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal\n__version__ = '10.13.0'\n"
        "class Logger:\n    WARNING = 2\n    def __init__(self, level):\n        pass\n"
        "def Builder(logger):\n    os.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake"))
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path / "out"))
    graph = tmp_path / "model.onnx"
    onnx.save(_qdq_graph(0, True), graph)
    params = from_dict({"target": "trt-crash", "data": {"image_size": 8}, "tensorrt": {"precisions": ["fp32"]}})
    dataset = types.SimpleNamespace(test=types.SimpleNamespace(images=[np.zeros((8, 8), np.uint8)]))
    ch = Chapter(params, "07_tensorrt", dataset, None, None, PreprocessSpec.from_params(params.data), None)
    setup = chapter07.Setup(qo.Fp32Graphs({"model": graph}, None, tmp_path, 0.0), None, None,
                            trt_tools.profile_shapes([1, 4], 8), {"tensorrt": None, "gpu": "fake GPU",
                                                                  "torch_tensorrt": "not here", "cuda": None})
    monkeypatch.setattr("onnxruntime.get_available_providers", lambda: ["CPUExecutionProvider"])
    assert chapter07.gpu_runners(ch, setup) == [] and "tensorrt" not in sys.modules
    records = {r.name: r for r in load_records("trt-crash")}
    assert records["tensorrt-fp32"].status == "failed"
    assert records["tensorrt-fp32"].reason == "native crash (SIGSEGV) while building"
    assert {n for n, r in records.items() if r.status == "skipped"} == {
        "torch-tensorrt-fp32", "onnxruntime-cuda-fp32", "onnxruntime-tensorrt-fp32"}


class _StandInTensorRT(types.ModuleType):
    """Just enough of TensorRT's build API for build_engine: its "engine" is the parsed file's bytes."""
    __version__ = "10.13.0"

    def __init__(self):
        super().__init__("tensorrt")
        ns = types.SimpleNamespace
        self.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, level: None})
        self.NetworkDefinitionCreationFlag = ns(STRONGLY_TYPED=5)
        self.MemoryPoolType = ns(WORKSPACE=0)
        network = ns(get_input=lambda i: ns(name="x"), source=None)

        def parse_from_file(path):
            network.source = open(path, "rb").read()
            return True
        self.OnnxParser = lambda net, logger: ns(parse_from_file=parse_from_file, num_errors=0)
        config = ns(set_memory_pool_limit=lambda *a: None, add_optimization_profile=lambda p: None)
        self.Builder = lambda logger: ns(
            create_network=lambda flags: network, create_builder_config=lambda: config,
            create_optimization_profile=lambda: ns(set_shape=lambda *a: None),
            build_serialized_network=lambda net, cfg: net.source)


def _build_in_child(graph, out_dir, queue):
    queue.put(trt_tools.build_engine(graph, out_dir, "fp32", trt_tools.profile_shapes([1, 4], 8), 1 << 20).details)


def test_an_engine_a_child_built_for_this_process_is_its_build_and_later_ones_reuse_it(tmp_path, monkeypatch):
    """Chapter 07 builds each engine in a child, then loads it in the notebook's process: that
    engine is this run's build (`reused: false`, the child's build seconds), while a process that
    finds it later (another run) says it reused it. A stand-in `tensorrt` stands for the builder."""
    import multiprocessing as mp

    monkeypatch.setitem(sys.modules, "tensorrt", _StandInTensorRT())
    graph = tmp_path / "model.onnx"
    onnx.save(_qdq_graph(0, True), graph)
    fork = mp.get_context("fork")  # the child inherits the stand-in module
    queue = fork.Queue()
    child = fork.Process(target=_build_in_child, args=(graph, tmp_path / "engines", queue))
    child.start()
    built = queue.get(timeout=60)
    child.join()
    assert built == {"reused": False}
    here = trt_tools.build_engine(graph, tmp_path / "engines", "fp32", trt_tools.profile_shapes([1, 4], 8), 1 << 20)
    assert here.details == {"reused": False, "built_by": "a child of this process"} and here.seconds > 0
    assert here.path.read_bytes() == graph.read_bytes()  # the stand-in's engine: the graph it parsed
    later = fork.Process(target=_build_in_child, args=(graph, tmp_path / "engines", queue))  # another process
    later.start()
    assert queue.get(timeout=60) == {"reused": True}
    later.join()
