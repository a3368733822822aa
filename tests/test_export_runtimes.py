"""ONNX export, ONNX Runtime and the PyTorch compilers against PyTorch eager on the same inputs."""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from optlib.techniques import onnx_export as ox
from optlib.techniques.compilers import InductorConfigPatched, torchscript, torchscript_parts
from optlib.workload.data import PreprocessSpec, preprocess
from optlib.backends import TorchRunner
from optlib.backends.onnxruntime import OrtConfig, OrtRunner, make_session
from tests.helpers import tiny_resnet

SPEC = PreprocessSpec(32, [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(16)]


@pytest.fixture(scope="module")
def model():
    return tiny_resnet(3)


def ort_out(path, x: torch.Tensor) -> np.ndarray:
    sess, _ = make_session(path, OrtConfig(intra_op_threads=1))
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_round_trip_matches_torch_at_several_batch_sizes(tmp_path, model, images, exporter):
    res = ox.export_onnx(model, preprocess(images[:2], SPEC), tmp_path / "m.onnx", ox.ExportConfig(exporter=exporter))
    assert res.opset_written == ox.opset_of(res.path) == 18 and res.size_bytes == ox.onnx_size_bytes(res.path)
    assert ox.validate_onnx(res.path)["checker"].startswith("ok")
    for bs in (1, 5, 16):  # dynamic batch axis
        x = preprocess(images[:bs], SPEC)
        with torch.no_grad():
            ref = model(x).numpy()
        out = ort_out(res.path, x)
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=ox.FP32_TOLERANCE)


def test_dynamo_exporter_keeps_opset_18_when_asked_for_17(tmp_path, model, images):
    res = ox.export_onnx(model, preprocess(images[:2], SPEC), tmp_path / "m.onnx", ox.ExportConfig(opset=17))
    assert res.opset_requested == 17 and res.opset_written == ox.opset_of(res.path)
    legacy = ox.export_onnx(model, preprocess(images[:2], SPEC), tmp_path / "l.onnx",
                            ox.ExportConfig(exporter="torchscript", opset=17))
    assert legacy.opset_written == 17


def test_external_data_is_counted_and_loaded(tmp_path, model, images):
    res = ox.export_onnx(model, preprocess(images[:2], SPEC), tmp_path / "m.onnx")
    m = onnx.load(res.path)
    ext = tmp_path / "ext.onnx"
    onnx.save(m, str(ext), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data")
    files = ox.external_data_files(ext)
    assert files == [tmp_path / "ext.onnx.data"]
    assert ox.onnx_size_bytes(ext) == ext.stat().st_size + files[0].stat().st_size
    assert ox.onnx_size_bytes(ext) > 10 * ext.stat().st_size  # the weights are in the data file
    assert ox.graph_stats(ext)["parameters"] == ox.graph_stats(res.path)["parameters"]
    x = preprocess(images[:4], SPEC)
    np.testing.assert_allclose(ort_out(ext, x), ort_out(res.path, x), atol=1e-6)


class Scaled(nn.Module):
    """A forward that bakes a plain Python attribute into the graph."""

    def __init__(self):
        super().__init__()
        self.conv, self.scale = nn.Conv2d(3, 2, 3), 2.0

    def forward(self, x):
        return self.conv(x).mean((2, 3)) * self.scale


def test_a_repeated_export_is_copied_from_the_cache_and_any_change_exports_again(tmp_path, monkeypatch, images):
    """The cache serves a byte-identical graph only for the same model: a changed weight, a changed
    plain attribute or a changed sample shape exports afresh, and ONNX Runtime then agrees with the
    changed model (never the stale graph); OPTLIB_EXPORT_CACHE=0 writes no cache."""
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path / "out"))
    torch.manual_seed(0)
    model, x = Scaled().eval(), preprocess(images[:2], SPEC)

    def export(name, sample=x):
        r = ox.export_onnx(model, sample, tmp_path / name / "m.onnx")
        with torch.no_grad():
            np.testing.assert_allclose(ort_out(r.path, x), model(x).numpy(), atol=ox.FP32_TOLERANCE)
        return r

    first, again = export("a"), export("b")
    assert first.cached_from is None and again.cached_from is not None and again.seconds == first.seconds
    assert [Path(p).read_bytes() for p in (first.path, *first.external_data_files)] == [
        Path(p).read_bytes() for p in (again.path, *again.external_data_files)]
    with torch.no_grad():
        model.conv.bias.add_(1.0)
    assert export("weights").cached_from is None
    model.scale = 3.0
    assert export("attribute").cached_from is None
    assert export("sample", preprocess(images[:3], SPEC)).cached_from is None  # the shape is in the key
    assert export("same again").cached_from is not None
    monkeypatch.setenv("OPTLIB_EXPORT_CACHE", "0")
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path / "off-root"))
    assert export("off").cached_from is None and not (tmp_path / "off-root").exists()


def test_simplification_preserves_outputs(tmp_path, model, images):
    res = ox.export_onnx(model, preprocess(images[:2], SPEC), tmp_path / "m.onnx", ox.ExportConfig(exporter="torchscript"))
    s = ox.simplify_onnx(res.path, tmp_path / "m.slim.onnx")
    assert s["after"]["nodes"] <= s["before"]["nodes"]
    assert s["after"]["parameters"] <= s["before"]["parameters"]
    x = preprocess(images[:6], SPEC)
    np.testing.assert_allclose(ort_out(s["path"], x), ort_out(res.path, x), atol=1e-5)


def test_ort_runner_matches_torch_runner_with_stage_split(tmp_path, model, images):
    exports, parts = ox.export_split(model, preprocess(images[:2], SPEC), tmp_path, pattern="{part}.fp32.onnx")
    assert set(exports) == {"model", "features", "head"} and parts is not None
    assert exports["head"].path == str(tmp_path / "head.fp32.onnx")
    paths = {k: e.path for k, e in exports.items()}
    ort = OrtRunner(paths["model"], SPEC, config=OrtConfig(intra_op_threads=1),
                    features_path=paths["features"], head_path=paths["head"])
    pt = TorchRunner(model, SPEC, threads=1)
    a, b = ort.predict(images), pt.predict(images)
    assert (a.argmax(1) == b.argmax(1)).all()
    np.testing.assert_allclose(a, b, atol=ox.FP32_TOLERANCE)
    staged = ort.classify(ort.extract_features(ort.preprocess(images[:4])))
    np.testing.assert_allclose(staged, a[:4], atol=ox.FP32_TOLERANCE)
    s = ort.settings()
    assert s["providers_active"] == ["CPUExecutionProvider"] and s["allow_spinning"] is False
    # another thread count is the same graphs in new sessions: same logits, its own artifact
    ort.annotate(size_bytes=123, technique_note="x")
    two = ort.with_threads(2, "ort-2thread")
    assert two.name == "ort-2thread" and two.threads == 2 and two.settings()["intra_op_threads"] == 2
    assert two.artifact.options["config"]["intra_op_threads"] == 2 and two.artifact.files == ort.artifact.files
    assert two.size_bytes == 123 and two.details == {"technique_note": "x"}
    np.testing.assert_allclose(two.predict(images), a, atol=1e-5)


def test_export_split_of_a_model_without_a_head_exports_only_the_full_graph(tmp_path, images):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    exports, parts = ox.export_split(model, preprocess(images[:2], SPEC), tmp_path)
    assert parts is None and list(exports) == ["model"]
    x = preprocess(images[:3], SPEC)
    with torch.no_grad():
        np.testing.assert_allclose(ort_out(exports["model"].path, x), model(x).numpy(), atol=ox.FP32_TOLERANCE)
    r = OrtRunner(exports["model"].path, SPEC, config=OrtConfig(intra_op_threads=1))
    assert r.predict(images[:3]).shape == (3, 2)


def test_ort_config_from_params_follows_the_params_and_overrides():
    from optlib.core.params import from_dict

    p = from_dict({"bench": {"threads": 3}, "onnx": {"graph_optimization": "basic", "allow_spinning": True,
                                                     "providers": ["cuda"]}})
    c = OrtConfig.from_params(p)
    assert (c.graph_optimization, c.intra_op_threads, c.allow_spinning) == ("basic", 3, True)
    assert c.providers == ["CUDAExecutionProvider"]
    assert OrtConfig.from_params(p, graph_optimization="disabled").graph_optimization == "disabled"


def test_provider_fallback_is_recorded(tmp_path, model, images):
    path = ox.export_onnx(model, preprocess(images[:2], SPEC), tmp_path / "m.onnx").path
    r = OrtRunner(path, SPEC, config=OrtConfig(providers=["cuda", "CPUExecutionProvider"], intra_op_threads=1))
    s = r.settings()
    assert s["providers_requested"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert s["providers_active"] == ["CPUExecutionProvider"] and r.device == "cpu"
    assert any("CUDAExecutionProvider" in reason for reason in s["provider_fallback"])


def test_unexportable_module_gives_clear_error(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return x * 2
            return x - 1

    with pytest.raises(ox.ExportError) as e:
        ox.export_onnx(Branchy(), torch.randn(2, 3, 8, 8), tmp_path / "b.onnx")
    msg = str(e.value)
    assert "Branchy" in msg and "dynamo exporter" in msg and "data-dependent control flow" in msg
    assert "in forward" in msg and "torch.where" in msg and "\n" not in msg


def test_torchscript_reloaded_matches_eager(tmp_path, model, images):
    x = preprocess(images[:4], SPEC)
    full, f, h = torchscript_parts(model, x, tmp_path / "ts")
    assert full.method == "trace" and (tmp_path / "ts" / "model.pt").is_file() and full.size_bytes > 0
    r = TorchRunner(full.module, SPEC, threads=1, parts=(f.module, h.module))
    ref = TorchRunner(model, SPEC, threads=1).predict(images)
    np.testing.assert_allclose(r.predict(images), ref, atol=1e-4)
    np.testing.assert_allclose(r.classify(r.extract_features(r.preprocess(images[:3]))), ref[:3], atol=1e-4)
    scripted = torchscript(model, x, tmp_path / "s.pt", method="script")  # resnet scripts fine
    assert scripted.method == "script" and scripted.script_error is None


def test_compile_one_mode_per_process_matches_eager(images):
    """compiled_runners compiles the first mode only (dynamo would reuse its graph for a second). On
    a ResNet with one block per stage: inductor's cold compile of three graphs is most of this test."""
    from optlib.results.values import Artifact
    from optlib.techniques.compilers import compiled_runners

    model = tiny_resnet(3, blocks=1)

    eager_art = Artifact("pytorch", {}, {"arch": "torchvision:resnet18", "num_classes": 3}, SPEC.to_dict())
    samples = {1: preprocess(images[:1], SPEC), 4: preprocess(images[:4], SPEC)}
    (r,), skipped = compiled_runners(model, eager_art, ["freezing", "default"], samples, threads=1, measure_cold=False)
    assert r.name == "compile-fp32-freezing" and skipped[0][0] == "compile-fp32"
    assert "only one torch.compile mode per process" in skipped[0][1] and "compile_modes: [default]" in skipped[0][1]
    assert isinstance(r.model, InductorConfigPatched) and r.model.patch == {"freezing": True}
    assert set(r.one_time_cost_seconds) == {"compile bs=1", "recompile bs=4", "compile features part"}
    assert all(v > 0 for v in r.one_time_cost_seconds.values())
    assert r.artifact.kind == "torch-compile" and r.artifact.options["mode"] == "freezing"
    ref = TorchRunner(model, SPEC, threads=1)
    np.testing.assert_allclose(r.predict(images[:1]), ref.predict(images[:1]), atol=1e-4)
    np.testing.assert_allclose(r.classify(r.extract_features(r.preprocess(images[:4]))), ref.predict(images[:4]), atol=1e-4)


def test_check_outputs_and_runtime_graphs(tmp_path, model, images):
    from optlib.measurement.metrics import check_outputs

    eager = TorchRunner(model, SPEC, threads=1)
    g = ox.runtime_graphs(model, preprocess(images[:2], SPEC), tmp_path, ox.ExportConfig(), simplify=True,
                          reference=eager, ort_config=OrtConfig(intra_op_threads=1), images=images, batch_sizes=[1, 5])
    assert set(g.paths) == {"model", "features", "head"} and g.parts is not None
    assert g.simplified and g.paths["model"].endswith("model.slim.onnx")
    assert list(g.output_checks["export"].index) == [1, 5] and (g.output_checks["export"]["top1_agreement"] == 1).all()
    assert g.validation["checker"].startswith("ok") and g.info()["opset_written"] == 18
    # a runner that is off by a constant is caught at every batch size
    shifted = TorchRunner(model, SPEC, threads=1)
    shifted.predict = lambda batch: eager.predict(batch) + 0.5
    checked = check_outputs(shifted, eager, images, [1, 3])
    np.testing.assert_allclose(checked["max_abs_diff"].to_numpy(), [0.5, 0.5], atol=1e-6)
    # the export bound scales with the logits: a model whose logits are 1000x larger rounds 1000x more
    scale = float(np.abs(eager.predict(images[:3])).max())
    assert checked.loc[3, "reference_max_abs"] == pytest.approx(scale)
    big = TorchRunner(model, SPEC, threads=1)
    big.predict = lambda batch: eager.predict(batch) * 1000
    assert ox.fp32_tolerance(check_outputs(big, big, images, [3])) == pytest.approx(ox.FP32_TOLERANCE * 1000 * scale)


def test_ort_runners_one_per_optimisation_level(tmp_path, model, images):
    from optlib.core.params import from_dict
    from optlib.techniques.onnx_runtime import ort_runners

    eager = TorchRunner(model, SPEC, threads=1)
    g = ox.runtime_graphs(model, preprocess(images[:2], SPEC), tmp_path, ox.ExportConfig(), simplify=False,
                          reference=eager, ort_config=OrtConfig(intra_op_threads=1), images=images, batch_sizes=[2])
    p = from_dict({"bench": {"threads": 1}, "onnx": {"graph_optimization": "extended"}})
    assert [r.name for r in ort_runners(g, SPEC, p)] == ["onnxruntime-fp32", "onnxruntime-fp32-opt-disabled",
                                                          "onnxruntime-fp32-opt-basic", "onnxruntime-fp32-opt-all"]
    p.onnx.compare_optimization_levels = False
    (r,) = ort_runners(g, SPEC, p)
    assert r.settings()["graph_optimization"] == "extended" and set(r.one_time_cost_seconds) == {"export", "session creation"}
    np.testing.assert_allclose(r.predict(images), eager.predict(images), atol=ox.FP32_TOLERANCE)
