"""Every configuration reloads from its artifact in a fresh process and reproduces its logits; the
per-configuration memory child sees what the configuration holds."""
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from optlib.backends.artifacts import ArtifactError, eager_artifact, load_runner, relative_to
from optlib.backends.onnxruntime import OrtConfig, OrtRunner
from optlib.backends.pytorch import TorchRunner
from optlib.core import paths
from optlib.measurement.memory import measure_memory
from optlib.results.values import Artifact, to_plain
from optlib.techniques import int8_onnx as qo
from optlib.techniques import int8_torch as qt
from optlib.techniques.compilers import torchscript_runner
from optlib.techniques.onnx_export import ExportConfig
from optlib.workload.data import PreprocessSpec, preprocess
from optlib.workload.models import ModelInfo, save_state_dict
from tests.helpers import tiny_resnet

SPEC = PreprocessSpec(32, [0.5] * 3, [0.25] * 3)

RELOAD = """
import json, sys
import numpy as np
from optlib.backends.artifacts import load_runner
from optlib.results.values import Artifact, from_plain
job = json.load(open(sys.argv[1]))
with np.load(job["images"]) as z:
    images = [z[k] for k in z.files]
runner = load_runner(from_plain(Artifact, job["artifact"]), job["base_dir"], threads=2)
np.save(job["out"], runner.predict(images))
"""


def logits_in_fresh_process(artifact: Artifact, base_dir, images, tmp_path) -> np.ndarray:
    np.savez(tmp_path / "images.npz", *images)
    job = {"artifact": to_plain(artifact), "base_dir": str(base_dir), "images": str(tmp_path / "images.npz"),
           "out": str(tmp_path / "logits.npy")}
    (tmp_path / "job.json").write_text(json.dumps(job))
    p = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "job.json")], capture_output=True, text=True,
                       cwd=paths.REPO_DIR, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return np.load(tmp_path / "logits.npy")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_model_setup(tmp_path_factory.mktemp("artifacts"))


def tiny_model_setup(d) -> dict:
    """A tiny ResNet18 saved as the eager artifact in `d`, and twelve 8x8 images."""
    torch.set_num_threads(2)
    model = tiny_resnet(3)
    weights = save_state_dict(model, d / "models" / "resnet18.pt")
    info = ModelInfo(arch="torchvision:resnet18", num_classes=3, source="test", parameters=0, weights=str(weights))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(12)]
    return {"dir": d, "model": model, "eager": eager_artifact(info, SPEC), "images": images}


def test_eager_ort_fp32_and_ort_int8_reload_in_a_fresh_process(setup, tmp_path):
    d, images = setup["dir"], setup["images"]
    eager = TorchRunner(setup["model"], SPEC, threads=2)
    graphs = qo.fp32_graphs(setup["model"], preprocess(images[:2], SPEC), d / "artifacts", ExportConfig())
    ort_fp32 = qo.fp32_runner(graphs, SPEC, OrtConfig(intra_op_threads=2))
    calibration = qo.calibrate_graphs(graphs, preprocess(images, SPEC), "minmax")
    ort_int8 = qo.static_runner(graphs, calibration, qo.StaticQuantConfig(), SPEC, OrtConfig(intra_op_threads=2))
    assert ort_int8.kernels.label == "integer"
    for runner, artifact in ((eager, setup["eager"]), (ort_fp32, ort_fp32.artifact), (ort_int8, ort_int8.artifact)):
        stored = relative_to(artifact, d)  # as a record stores it
        assert not any(f.startswith("/") for f in stored.files.values())
        np.testing.assert_array_equal(logits_in_fresh_process(stored, d, images, tmp_path), runner.predict(images))


def test_torchscript_fx_int8_and_gru_reload(setup, tmp_path):
    d, images, model = setup["dir"], setup["images"], setup["model"]
    ts = torchscript_runner(model, preprocess(images[:2], SPEC), d / "ts", "trace", SPEC, threads=2)
    fx = qt.fx_static_runner(model, preprocess(images, SPEC), setup["eager"], d, threads=2)
    assert fx.kernels.label == "integer" and fx.kernels.share == 1.0
    for runner in (ts, fx):
        np.testing.assert_allclose(logits_in_fresh_process(runner.artifact, d, images, tmp_path), runner.predict(images),
                                   atol=1e-5)
    digits = SimpleNamespace(train=SimpleNamespace(images=images, labels=np.arange(len(images)) % 10))  # 8x8 rows
    for runner in qt.gru_runners(digits, d, threads=2, epochs=1):
        rebuilt = load_runner(runner.artifact, threads=2)
        np.testing.assert_array_equal(rebuilt.predict(images), runner.predict(images))


def test_missing_file_and_unknown_kind_are_clear(setup):
    with pytest.raises(ArtifactError, match="weights file .* does not exist"):
        load_runner(Artifact("pytorch", {"weights": "models/gone.pt"}, setup["eager"].options), setup["dir"])
    with pytest.raises(ArtifactError, match="unknown artifact kind 'tensorflow'"):
        load_runner(Artifact("tensorflow"))


def test_memory_child_sees_the_configuration(setup, tmp_path):
    """Each configuration shows at least the weights it holds above the child's resting memory: the
    eager ResNet18's state_dict, and a graph built to hold 117 MB of weights."""
    small = measure_memory(setup["eager"], setup["dir"], setup["images"], [1, 4], threads=1)
    assert small.above_resting_bytes >= sum(t.nbytes for t in setup["model"].state_dict().values())
    big_path = tmp_path / "big.onnx"
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4096, 4096)).astype(np.float32), "w")
    x = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 3, 32, 32])
    y = onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["n", 4096])
    shape = onnx.numpy_helper.from_array(np.array([-1, 3072], dtype=np.int64), "shape")
    w_in = onnx.numpy_helper.from_array(np.zeros((3072, 4096), dtype=np.float32), "w_in")
    nodes = [onnx.helper.make_node("Reshape", ["input", "shape"], ["flat"]),
             onnx.helper.make_node("MatMul", ["flat", "w_in"], ["h"]),
             onnx.helper.make_node("MatMul", ["h", "w"], ["output"])]
    graph = onnx.helper.make_graph(nodes, "big", [x], [y], [w, shape, w_in])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]), str(big_path))
    big = OrtRunner(big_path, SPEC, config=OrtConfig(intra_op_threads=1)).artifact
    weights = 4096 * 4096 * 4 + 3072 * 4096 * 4
    mem = measure_memory(big, tmp_path, setup["images"], [1, 4], threads=1)
    assert mem.above_resting_bytes >= weights and mem.resting_bytes > 50e6 and "child process" in mem.method


def test_fresh_processes_each_rebuild_and_time_the_configuration(setup):
    """measurement.fresh: one median per child, each child a new process (not this one); a child that
    cannot rebuild the configuration ends it with its error and the medians so far."""
    import os

    from optlib.core.params import BenchParams
    from optlib.measurement.fresh import fresh_process_latency

    bench = BenchParams(warmup=1, samples=4, trials=1, batch_sizes=[1], threads=1, settle_s=0.0)
    out = fresh_process_latency(setup["eager"], setup["dir"], setup["images"], bench, 1, 1, processes=2, trials=2)
    assert len(out["medians_ms"]) == 2 and all(m > 0 for m in out["medians_ms"])
    assert len(set(out["pids"])) == 2 and os.getpid() not in out["pids"]
    assert out["min_ms"] <= out["max_ms"] and out["spread"] >= 1.0
    gone = Artifact("pytorch", {"weights": "models/gone.pt"}, setup["eager"].options)
    bad = fresh_process_latency(gone, setup["dir"], setup["images"], bench, 1, 1, processes=2)
    assert bad["medians_ms"] == [] and "gone.pt" in bad["error"]
