"""OpenVINO, the fourth runtime: its FP32 logits against PyTorch's, the precision that really ran
(read from the compiled model, checked against this CPU's flags), NNCF INT8 against the FP32 model,
the artifact rebuilt in a fresh process, and a hand-off whose predict.py runs without optlib."""
import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from optlib.backends import openvino as ovb
from optlib.backends.artifacts import relative_to
from optlib.backends.onnxruntime import OrtConfig
from optlib.core import paths
from optlib.core.env import cpu_flags
from optlib.techniques import int8_nncf
from optlib.techniques import int8_onnx as qo
from optlib.techniques.onnx_export import ExportConfig
from optlib.workload.data import PreprocessSpec, preprocess
from tests.test_artifacts_memory import logits_in_fresh_process, tiny_model_setup

pytestmark = pytest.mark.skipif(ovb.unavailable() is not None, reason=str(ovb.unavailable()))
SPEC = PreprocessSpec(32, [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = tiny_model_setup(tmp_path_factory.mktemp("openvino"))
    s["graphs"] = qo.fp32_graphs(s["model"], preprocess(s["images"][:2], SPEC), s["dir"] / "onnx", ExportConfig())
    return s


def test_kernel_labels_count_the_heavy_layers_only():
    conv, fc = ("Convolution", "u8", "brgconv_avx512_I8"), ("FullyConnected", "f32", "undef_f32")
    moves = Counter({("Reorder", "f32", "reorder_f32"): 5, ("Input", "f32", "unknown_f32"): 1})
    assert ovb.kernels_of(Counter({conv: 3}) + moves).label == "integer"
    mixed = ovb.kernels_of(Counter({conv: 3, fc: 1}) + moves)
    assert mixed.label == "mixed" and mixed.share == pytest.approx(0.75)
    assert ovb.kernels_of(Counter({("MatMul", "bf16", "brgemm_bf16"): 2})).label == "reduced-precision"
    assert ovb.kernels_of(Counter({fc: 2}) + moves).label == "float"
    with pytest.raises(ValueError, match="openvino precision"):
        ovb.OvConfig(precision="int8")


def test_fp32_matches_pytorch_and_is_forced_to_f32(setup):
    x = preprocess(setup["images"], SPEC)
    r = ovb.runner(setup["graphs"].paths["model"], setup["dir"] / "ov" / "model.xml", SPEC, 2, "openvino-fp32")
    with torch.no_grad():
        expected = setup["model"](x).numpy()
    np.testing.assert_allclose(r.predict(setup["images"]), expected, atol=1e-4, rtol=1e-4)
    assert r.settings()["compiled_properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert r.kernels.label == "float"
    assert {"conversion to IR", "compile"} <= set(r.one_time_cost_seconds)
    # full-precision weights: the .bin holds every FP32 parameter of the model
    parameters = sum(p.numel() for p in setup["model"].parameters())
    assert r.size_bytes >= 4 * parameters


def test_bf16_runs_bf16_kernels_only_where_the_cpu_has_them(setup):
    r = ovb.runner(setup["graphs"].paths["model"], setup["dir"] / "ov" / "model.xml", SPEC, 2, "openvino-bf16", "bf16")
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert r.kernels.label == ("reduced-precision" if native else "float"), r.kernels.evidence
    if native:
        fp32 = ovb.runner(setup["graphs"].paths["model"], setup["dir"] / "ov" / "model.xml", SPEC, 2, "openvino-fp32")
        a, b = r.predict(setup["images"]), fp32.predict(setup["images"])
        assert 0 < np.abs(a - b).max() < 0.1 * np.abs(b).max()  # rounded, not another model


def test_nncf_int8_runs_integer_kernels_close_to_fp32(setup):
    images = setup["images"]
    calib = preprocess(images, SPEC).numpy()
    r = int8_nncf.runner(setup["graphs"].paths["model"], calib, setup["dir"] / "ov" / "int8.xml", SPEC, 2,
                         calibration_info={"size": len(calib)})
    assert r.precision == "int8" and r.details["quantization"]["fake_quantize_nodes"] > 0
    assert r.kernels.label in ("integer", "mixed") and r.kernels.share > 0.5, r.kernels.evidence
    with torch.no_grad():
        fp32 = setup["model"](preprocess(images, SPEC)).numpy()
    got = r.predict(images)
    assert np.corrcoef(got.ravel(), fp32.ravel())[0, 1] > 0.9


def test_reloads_in_a_fresh_process_with_its_precision(setup, tmp_path):
    d, images = setup["dir"], setup["images"]
    r = ovb.runner(setup["graphs"].paths["model"], d / "ov" / "reload.xml", SPEC, 2, "openvino-bf16", "bf16")
    stored = relative_to(r.artifact, d)
    assert not any(f.startswith("/") for f in stored.files.values())
    np.testing.assert_array_equal(logits_in_fresh_process(stored, d, images, tmp_path), r.predict(images))
    from optlib.backends.artifacts import load_runner

    again = load_runner(stored, d, threads=1)
    assert (again.backend, again.precision, again.config.precision, again.threads) == ("openvino", "bf16", "bf16", 1)


def test_openvino_hand_off_runs_without_optlib(setup, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from optlib.results import deploy
    from optlib.workload.outputs import Outputs

    r = ovb.runner(setup["graphs"].paths["model"], setup["dir"] / "ov" / "deploy.xml", SPEC, 2, "openvino-fp32")
    record = SimpleNamespace(  # the fields export() and the model card read
        name="openvino-fp32", artifact=r.artifact, batch_size=1, extra={}, environment={}, speedups=[], fidelity=None,
        latency=SimpleNamespace(median=1.0, ci95=(0.9, 1.1)), accuracy={}, size_bytes=r.size_bytes, memory=None,
        kernels=r.kernels, technique="runtime", backend="openvino", precision="fp32", device={"threads": 2})
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    out = deploy.export("t", record, "a test", Outputs.for_data(None, ["a", "b", "c"], None, 0.5), ["a", "b", "c"],
                        setup["images"][:4])
    assert json.loads((out / "runtime.json").read_text())["runtime"] == "openvino"
    assert (out / "model.xml").exists() and not (out / "model.onnx").exists()
    p = subprocess.run([sys.executable, "-I", str(out / "predict.py"), "--check"], capture_output=True, text=True,
                       cwd=out, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1])["max_abs_logit_diff"] < 1e-4
    # the card's memory and start-up are this hand-off process's, which never loads torch or optlib
    assert json.loads((out / "runtime.json").read_text())["properties"]["INFERENCE_NUM_THREADS"] == 2
    # ... measured in that process alone: this test holds 2 GB more than it, which Linux would have
    # carried into the child's ru_maxrss across exec (the cpu card said 2,429 MB for a 0.5 MB model)
    ballast = np.ones(2 ** 28)  # 2 GiB, touched
    prof = deploy.profile_hand_off(out)
    assert prof["modules"] == ["openvino"] and 0 < prof["peak_rss_bytes"] < ballast.nbytes / 2 and prof["first_call_ms"] > 0
    del ballast
    card = (out / "MODEL_CARD.md").read_text()
    assert "peak memory of the hand-off process (`predict.py --profile`: openvino, NumPy, Pillow)" in card


# NNCF's telemetry object, made at its import, in a fresh process behind optlib's guard
GUARDED_NNCF = """
import json
from pathlib import Path
from optlib.backends.openvino import unasked_telemetry_off
unasked_telemetry_off()
from nncf.telemetry.wrapper import telemetry
print(json.dumps({"consent": telemetry._impl.consent, "wrote": sorted(p.name for p in (Path.home() / "intel").glob("*"))}))
"""


def test_telemetry_needs_an_answer(tmp_path, monkeypatch):
    """openvino_telemetry counts a user who never answered (no ~/intel/openvino_telemetry) as
    consenting; behind optlib's guard that is a "no", and an answer in the consent file still
    decides. NNCF, imported behind the guard in a fresh process, sends nothing and writes nothing."""
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    ovb.unasked_telemetry_off()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)  # the library's own CI rule would answer first
    checker = OptInChecker()
    assert OptInChecker.check.__wrapped__(checker, False, True) == ConsentCheckResult.NO_FILE  # the library: "yes"
    assert checker.check(False, True) == ConsentCheckResult.DECLINED
    (tmp_path / "intel").mkdir()
    for answer, result in (("1", ConsentCheckResult.ACCEPTED), ("0", ConsentCheckResult.DECLINED)):
        (tmp_path / "intel" / "openvino_telemetry").write_text(answer)
        assert checker.check(False, True) == result
    home = tmp_path / "fresh"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NNCF_CI", "NNCF_DEV")}
    p = subprocess.run([sys.executable, "-c", GUARDED_NNCF], capture_output=True, text=True, timeout=120,
                       env={**env, "HOME": str(home)}, cwd=paths.REPO_DIR)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout.strip().splitlines()[-1]) == {"consent": False, "wrote": []}
