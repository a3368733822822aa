"""Reduced precision (chapter 03): BF16 / FP16 runners against FP32, reloads from their artifacts,
FP16 overflow found and reported, and the kernels labels on cases whose answer is known."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from optlib.backends.artifacts import load_runner
from optlib.backends.onnxruntime import OrtConfig, make_session
from optlib.backends.pytorch import TorchRunner
from optlib.core.params import ParamsError, from_dict
from optlib.chapters import precision as precision_chapter
from optlib.techniques import precision as pr
from optlib.workload.data import preprocess
from tests.test_artifacts_memory import SPEC, logits_in_fresh_process, tiny_model_setup

CAPS = pr.cpu_capabilities()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The artifacts tests' model, eager artifact and images, with the FP32 logits of the images."""
    s = tiny_model_setup(tmp_path_factory.mktemp("precision"))
    with torch.no_grad():
        return {**s, "ref": s["model"](preprocess(s["images"], SPEC)).numpy()}


@pytest.mark.parametrize("kind,channels_last", [("bf16-autocast", False), ("bf16", True), ("fp16", False),
                                                ("fp16-autocast", False)])
def test_reduced_precision_runner_agrees_with_fp32_and_reloads_exactly(setup, kind, channels_last, tmp_path):
    v = pr.Variant(kind, channels_last)
    r = pr.torch_runner(setup["model"], v, setup["eager"], setup["dir"], threads=2)
    out = r.predict(setup["images"])
    assert out.dtype == np.float32 and r.precision == kind[:4]
    # BF16 keeps 8 significant bits, FP16 11: logits of a randomly initialised ResNet18 stay within
    # a few percent of their spread
    tol = (0.08 if kind.startswith("bf16") else 0.01) * np.abs(setup["ref"]).max()
    np.testing.assert_allclose(out, setup["ref"], atol=tol)
    assert np.abs(out - setup["ref"]).max() > 0  # it really ran in reduced precision
    split = r.classify(r.extract_features(r.preprocess(setup["images"])))
    np.testing.assert_allclose(split, out, atol=1e-6)
    if v.autocast:
        assert "state" not in r.artifact.files
    else:  # the converted weights file is about half the FP32 state_dict
        fp32_state = torch.load(setup["eager"].files["weights"], weights_only=True)
        n_bytes = sum(t.numel() * t.element_size() for t in fp32_state.values())
        assert 0.45 < r.size_bytes / n_bytes < 0.56
    np.testing.assert_array_equal(load_runner(r.artifact, name="re", threads=2).predict(setup["images"]), out)
    if kind == "bf16":
        np.testing.assert_array_equal(logits_in_fresh_process(r.artifact, setup["dir"], setup["images"], tmp_path), out)


def test_fp16_overflow_is_found_and_bf16_keeps_the_range():
    """A model whose second layer reaches ~1e5 overflows in FP16 (max 65504), not in BF16."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.fill_(300.0)
        model[1].bias.zero_()
        model[3].weight.fill_(100.0)
        model[3].bias.zero_()
    x = torch.ones(3, 1, 2, 2)
    ranges = pr.activation_ranges(model, x)
    assert ranges.loc["1", "max_abs_fp32"] == pytest.approx(1200.0)
    assert ranges.loc["3", "max_abs_fp32"] == pytest.approx(480000.0)
    assert ranges.loc["3", "fp16_headroom"] < 1 < ranges.loc["1", "fp16_headroom"]
    with torch.no_grad():
        fp16 = model.half()(x.half()).float().numpy()
        bf16 = model.to(torch.bfloat16)(x.to(torch.bfloat16)).float().numpy()
    reason = pr.nonfinite(fp16)
    assert reason is not None and reason.startswith("3 of 3 images give inf/NaN logits")
    assert pr.nonfinite(bf16) is None and pr.nonfinite(np.array([[np.nan, 1.0], [0.0, 1.0]])).startswith("1 of 2")


def test_onednn_log_parsing_reads_kind_implementation_and_source_type():
    log = "\n".join([
        "onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_inference,"
        "src:bf16::blocked:acdb::f0 wei:bf16:a:blocked:AcdB16b32a2b::f0 dst:bf16::blocked:acdb::f0,,"
        "alg:convolution_direct,"
        "mb1_ic3oc64_ih64oh32kh7sh2dh0ph3_iw64ow32kw7sw2dw0pw3,0.12",
        "onednn_verbose,primitive,exec,cpu,inner_product,gemm:jit,forward_inference,src_f32::blocked:ab::f0 "
        "wei_f32::blocked:ab::f0,,,mb1ic512oc10,0.01",
        "onednn_verbose,v1,primitive,create:cache_hit,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_inference,"
        "src:bf16::blocked:acdb::f0,,,mb1,0.01",
        "some other line"])
    p = pr.onednn_primitives(log)
    assert p.to_dict("records") == [
        {"kind": "convolution", "implementation": "brg_conv_fwd:avx512_core_bf16", "src": "bf16"},
        {"kind": "inner_product", "implementation": "gemm:jit", "src": "f32"}]
    assert pr.onednn_isa(log).startswith("Intel AVX-512")


def test_torch_kernels_labels_what_executed(setup):
    """FP32 runs no reduced kernel; BF16 weights run BF16 oneDNN convolutions on a CPU with BF16
    support; FP16 on a CPU without FP16 oneDNN support produces FP16 tensors from FP32 arithmetic."""
    images = setup["images"][:1]
    k32 = pr.torch_kernels(TorchRunner(setup["model"], SPEC, threads=2), images)
    assert k32.label == "float" and k32.share == 0.0 and k32.evidence["heavy_output_dtypes"] == {"float32": 21}
    if CAPS["onednn_bf16_supported"]:
        bf16 = pr.torch_runner(setup["model"], pr.Variant("bf16"), setup["eager"], setup["dir"], threads=2)
        k = pr.torch_kernels(bf16, images)
        # all 20 convolutions are BF16 oneDNN primitives; the classifier's bf16 GEMM at batch 1 may
        # run outside oneDNN (not verified, so at most "mixed")
        assert k.evidence["onednn_heavy_by_src"] == {"bf16": 20} and k.share >= 20 / 21, k.evidence
        assert k.evidence["heavy_output_dtypes"] == {"bfloat16": 21}
        assert k.label == ("reduced-precision" if k.evidence["calls_outside_onednn"] == 0 else "mixed")
    if not CAPS["onednn_fp16_supported"]:
        fp16 = pr.torch_runner(setup["model"], pr.Variant("fp16"), setup["eager"], setup["dir"], threads=2)
        k16 = pr.torch_kernels(fp16, images)
        assert k16.label == "cast-emulated" and k16.evidence["heavy_output_dtypes"] == {"float16": 21}


def _conv_graph(path, dtype=TensorProto.FLOAT):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w = helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 8, 8))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4, 6, 6))], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_ort_fp16_graph_keeps_fp32_io_and_is_labelled_from_the_profile(tmp_path):
    """ONNX Runtime's CPU provider has no FP16 Conv kernel: the FP16 graph runs its conv in FP32
    between Cast nodes (cast-emulated); the FP32 graph is plain float."""
    fp32 = _conv_graph(tmp_path / "m.onnx")
    fp16 = pr.fp16_graph(fp32, tmp_path / "m.fp16.onnx")
    g = onnx.load(str(fp16)).graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT == g.output[0].type.tensor_type.elem_type
    assert g.initializer[0].data_type == TensorProto.FLOAT16
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    config = OrtConfig(intra_op_threads=1)
    a, b = (make_session(p, config)[0].run(None, {"x": x})[0] for p in (fp32, fp16))
    np.testing.assert_allclose(b, a, atol=2e-2 * np.abs(a).max())
    k16, k32 = pr.ort_kernels(fp16, config, x), pr.ort_kernels(fp32, config, x)
    assert k32.label == "float" and k32.evidence["heavy_ops_by_input_type"] == {"Conv:float": 1}
    assert k16.label == "cast-emulated" and k16.share == 0.0 and k16.evidence["cast_nodes_per_call"] >= 1


def test_precision_params_are_validated():
    with pytest.raises(ParamsError, match="precision.variants"):
        from_dict({"precision": {"variants": ["int4"]}})
    with pytest.raises(ParamsError, match="precision.slow_samples"):
        from_dict({"precision": {"slow_samples": 0}})
    p = from_dict({"precision": {"variants": ["bf16", "fp16"], "channels_last": True}})
    assert [v.name for v in pr.variants(p)] == ["pytorch-bf16", "pytorch-bf16-channels_last", "pytorch-fp16",
                                                "pytorch-fp16-channels_last"]
    slow = precision_chapter.slow_params(from_dict({"precision": {"slow_samples": 4, "slow_trials": 2},
                                     "bench": {"batch_sizes": [1, 8, 32], "stop_ci_width": 0.05, "trials": 20}}))
    assert (slow.bench.samples, slow.bench.trials, slow.bench.batch_sizes, slow.bench.stop_ci_width) == (4, 2, [1], 0.0)
    # the slow round: FP16 always; BF16 only where oneDNN has no BF16 kernels (ATen's reference ones)
    with_bf16, without = {"onednn_bf16_supported": True}, {"onednn_bf16_supported": False}
    assert [pr.Variant(k).slow_on_cpu(with_bf16) for k in ("bf16", "bf16-autocast", "fp16", "fp16-autocast")] == \
        [False, False, True, True]
    assert all(pr.Variant(k).slow_on_cpu(without) for k in ("bf16", "bf16-autocast", "fp16", "fp16-autocast"))
