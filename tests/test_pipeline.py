"""End to end through papermill: the smoke target, and a user's binary ImageFolder with a
Lightning checkpoint, exactly as a params file in the README's shape describes them. (The other
models a user brings: tests/test_pipeline_models.py.)"""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from optlib.core import paths
from optlib.results import browser
from tests.helpers import RUN_TIMEOUT_S, read_record, run_cli, tiny_resnet, write_image_folder
from tests.test_checkpoints import lightning_ckpt


# Every measured record's configuration rebuilt from its artifact in one fresh process and called
# on an evaluated image (training-memory records are steps, not runners): what a record promises.
REBUILD_ALL = """
import json, sys
import numpy as np
from optlib.backends.artifacts import load_runner
from optlib.results.records import load_records
base = sys.argv[1]
failed, n = {}, 0
for r in load_records("smoke"):
    if not r.ok or r.artifact is None or r.name.startswith("train-"):
        continue
    try:
        out = load_runner(r.artifact, base, name=r.name, threads=(r.device or {}).get("threads") or 1).predict(
            [np.full((32, 32), 128, np.uint8)])
        assert np.isfinite(np.asarray(out, dtype=np.float64)).all()
        n += 1
    except Exception as e:
        failed[r.name] = f"{type(e).__name__}: {e}"
print(json.dumps({"rebuilt": n, "failed": failed}))
"""


def test_smoke_pipeline_writes_records_and_report(tmp_path, monkeypatch):
    run_cli(["run", "--params", "params/smoke.yaml"], tmp_path)
    rec = read_record(tmp_path, "smoke", "pytorch-fp32")
    assert rec["schema"] == "optlib.result/3" and rec["status"] == "ok" and rec["notebook"] == "01_baseline"
    assert rec["backend"] == "pytorch" and rec["precision"] == "fp32" and rec["fidelity"] is None
    assert rec["device"]["kind"] == "cpu" and rec["device"]["threads"] == 2 and rec["batch_size"] == 1
    smoke = yaml.safe_load((paths.PARAMS_DIR / "smoke.yaml").read_text())["bench"]
    for stage in ("preprocessing", "feature_extraction", "classification", "total"):
        s = rec["latency_ms"][stage]
        assert s["count"] == smoke["samples"] * smoke["trials"] and s["ci95"][0] <= s["median"] <= s["ci95"][1]
        assert "p99" in s["low_confidence"]  # 36 samples cannot support a p99
    assert set(rec["throughput"]) == {"1", "8"}
    assert rec["accuracy"]["n"] == 120 and len(rec["accuracy"]["confusion_matrix"]) == 2
    assert rec["accuracy"]["outputs"]["kind"] == "sigmoid" and rec["extra"]["model"]["head"] == "classifier"
    assert rec["size_bytes"] > 40e6
    assert rec["environment"]["versions"]["torch"].startswith("2.14.1")
    assert rec["extra"]["stage_split"] and rec["extra"]["stage_split_max_abs_diff"] < 1e-4
    nf = rec["noise_floor"]
    assert nf["paired"]["ci95"][0] <= nf["paired"]["value"] <= nf["paired"]["ci95"][1]
    assert nf["twin_flips"] == 0 and nf["twin_max_abs_diff"] == 0.0
    for nb in ("00_data_and_model", "01_baseline", "02_onnx_and_compilers", "03_fp16_bf16", "04_int8_ptq",
               "04b_int8_studies", "05_int8_qat", "06_pruning", "07_tensorrt", "08_training_memory", "99_comparison"):
        assert (tmp_path / "smoke" / "notebooks" / f"{nb}.ipynb").is_file()
    # every record reads back typed; every measured configuration is rebuilt from its artifact in one
    # fresh process (REBUILD_ALL) and answers as in its chapter; each carries same-run speed-ups
    from optlib.results.records import load_records

    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    records = load_records("smoke")
    measured = [r for r in records if r.ok]
    assert not [r.reason for r in records if r.status == "failed"]
    assert {"onnxruntime-int8-static-minmax", "pytorch-int8-static", "pt2e-int8", "torchscript-fp32", "compile-fp32",
            "qat-int8"} <= {r.name for r in measured}
    assert all(r.artifact is not None for r in measured)
    rebuilt = subprocess.run([sys.executable, "-c", REBUILD_ALL, str(tmp_path / "smoke")], capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S, env={**os.environ, "OPTLIB_OUTPUT_ROOT": str(tmp_path)})
    assert rebuilt.returncode == 0, rebuilt.stdout[-2000:] + rebuilt.stderr[-2000:]
    done = json.loads(rebuilt.stdout.strip().splitlines()[-1])
    assert done["failed"] == {} and done["rebuilt"] == len(measured) - len([r for r in measured if r.name.startswith("train-")])
    assert all(r.speedups for r in measured)
    # pruning: the structured model lost MACs, its INT8 graph runs integer kernels, its eager form
    # reloads from a pytorch-pruned artifact; the unstructured one kept every MAC
    by_name = {r.name: r for r in measured}
    s50 = by_name["structured-l2-50-onnxruntime-int8"]
    assert s50.technique == "pruning" and s50.extra["pruning"]["macs_speedup"] > 2 and s50.kernels.label == "integer"
    assert s50.speedup("onnxruntime-int8-static-minmax") is not None
    assert by_name["structured-l2-50-pytorch-fp32"].artifact.kind == "pytorch-pruned"
    assert by_name["unstructured-l1-global-90-pytorch-fp32"].extra["pruning"]["macs_speedup"] == 1.0
    assert {"structured-l2-60-iter2-onnxruntime-int8", "dense-finetuned-onnxruntime-int8"} <= set(by_name)
    assert (tmp_path / "smoke" / "pruning_choice.json").is_file()
    # reduced precision: BF16 weights reload from their own file; FP16 in PyTorch had its own, shorter
    # round; CUDA variants skipped. Where this CPU has BF16 oneDNN kernels (AVX512-BF16), BF16 is
    # timed with the rest and torch.compile BF16 compared with compiled FP32 in the same run;
    # elsewhere (AVX2 only, as on 2026-12-02) BF16 convolutions run ATen's reference kernels in FP32
    # arithmetic (13x slower in the default layout), and BF16 joins FP16 in the slow round against eager FP32.
    from optlib.techniques.precision import cpu_capabilities

    bf16 = by_name["pytorch-bf16"]
    assert bf16.precision == "bf16" and bf16.artifact.kind == "pytorch-precision" and "state" in bf16.artifact.files
    slow = ["pytorch-fp16"]
    if cpu_capabilities()["onednn_bf16_supported"]:
        assert bf16.kernels.label in ("reduced-precision", "mixed"), bf16.kernels.evidence
        assert bf16.speedup("onnxruntime-fp32") is not None
        assert by_name["compile-bf16"].speedup("compile-fp32") is not None
    else:
        assert bf16.kernels.label == "cast-emulated", bf16.kernels.evidence
        slow += ["pytorch-bf16", "compile-bf16"]
    for name in slow:
        assert by_name[name].latency.count == 2 and by_name[name].speedup("pytorch-fp32") is not None, name
    assert by_name["onnxruntime-fp16"].kernels.label == "cast-emulated"
    skipped = {r.name: r.reason for r in records if r.status == "skipped"}
    assert skipped["cuda-pytorch-fp16"].startswith("needs a CUDA GPU")
    # TensorRT on a CPU machine: the INT8 graph TensorRT would get is checked and run here, every GPU
    # configuration is a skipped record that says why
    qdq = by_name["onnxruntime-int8-trt-qdq"]
    assert qdq.extra["tensorrt_qdq"]["compatible"] and qdq.fidelity is not None
    assert skipped["tensorrt-int8"].startswith("the target's device is cpu")
    assert {"torch-tensorrt-fp16", "onnxruntime-cuda-fp32", "onnxruntime-tensorrt-fp32"} <= set(skipped)
    # training memory: gradients with checkpointing equal the plain ones, the step time is a same-run
    # ratio, the memory came from a child process; FP16 autocast training is a CUDA path, skipped here
    # (the backbone is one wrapped module: block checkpointing finds its blocks inside it, sequential
    # has no chain of layers to cut and is a skipped record saying so)
    t = by_name["train-fp32-ckpt-block"]
    assert t.technique == "training-memory" and t.extra["training"]["gradients"]["equal"]
    assert t.speedup("train-fp32", metric="training-step", batch_size=16) is not None
    assert t.memory.peak_bytes > t.memory.resting_bytes > 0 and len(t.extra["training"]["checkpointed"]) == 8
    assert all(p.startswith("backbone.layer") for p in t.extra["training"]["checkpointed"])
    assert "at least 2 layers before the head" in skipped["train-fp32-ckpt-sequential"]
    assert skipped["train-fp16"].startswith("FP16 autocast training")
    assert (tmp_path / "smoke" / "tables" / "training_memory.csv").is_file()
    # the final round: finalists rebuilt from their artifacts (the files named relative to the
    # target's folder) and re-timed together against final-pytorch-fp32 and its twin; their memory
    # is the one measured from the same artifact in their own chapter
    final = {r.name: r for r in measured if r.name.startswith("final-")}
    ref = final["final-pytorch-fp32"]
    assert ref.notebook == "99_comparison" and ref.noise_floor is not None
    assert ref.extra["final_round"]["harness_overhead"]["calls"] == smoke["samples"] * smoke["trials"]
    fresh = ref.extra["final_round"]["between_process"]  # the reference in 2 fresh processes (comparison.fresh_*)
    assert len(fresh["medians_ms"]) == 2 and len(set(fresh["pids"])) == 2 and fresh["min_ms"] <= fresh["max_ms"]
    design_only = ["a cell of the runtime x precision x sparsity design"]
    assert 3 <= sum(r.extra["final_round"]["why"] != design_only for r in final.values()) <= 5  # max_finalists: 5
    assert "final-onnxruntime-fp32" in final
    # the factorial design's cells (06 measured structured-l2-50 on eager, ORT FP32 and INT8) all came
    # along, and the GEMM peaks were timed in the round
    cells = ref.extra["final_round"]["factorial"]["cells"]
    assert all(f"final-{c[3]}" in final for c in cells)
    by_runtime = {rt: sorted((c[1], c[2]) for c in cells if c[0] == rt) for rt in ("pytorch", "onnxruntime", "openvino")}
    assert by_runtime["pytorch"] == [("fp32", "dense"), ("fp32", "pruned")]
    assert by_runtime["onnxruntime"] == [("fp32", "dense"), ("fp32", "pruned"), ("int8", "dense"), ("int8", "pruned")]
    assert by_runtime["openvino"] == [("fp32", "dense"), ("int8", "dense"), ("int8", "pruned")]  # OpenVINO: 02, 04, 06
    assert all(v > 0 for by in ref.extra["final_round"]["roofline"]["gemm_peaks_ops"].values() for v in by.values())
    for r in final.values():
        own = by_name[r.extra["final_round"]["of"]]
        assert r.speedup("final-pytorch-fp32") is not None and r.artifact == own.artifact and r.memory == own.memory
        assert not any(s.reference == "pytorch-fp32" for s in r.speedups)
    assert (tmp_path / "smoke" / "tables" / "final_round.csv").is_file()
    # the hand-off: the fastest finalist within the budget that ONNX Runtime or OpenVINO runs (which
    # of the pruned INT8 models on the two is fastest is within their intervals here), runnable
    # without optlib in a fresh process that reproduces the predictions optlib made for the examples
    deploy = tmp_path / "smoke" / "deploy"
    runtime = json.loads((deploy / "runtime.json").read_text())["runtime"]
    model_files = {"onnxruntime": {"model.onnx"}, "openvino": {"model.xml", "model.bin"}}[runtime]
    assert model_files | {"preprocess.json", "classes.json", "MODEL_CARD.md", "predict.py", "expected.json"} <= {
        p.name for p in deploy.iterdir()}
    no_optlib = ("import runpy, sys; sys.modules['optlib'] = None; sys.argv = [sys.argv[1], '--check']; "
                 "runpy.run_path(sys.argv[0], run_name='__main__')")  # importing optlib there would fail
    check = subprocess.run([sys.executable, "-I", "-c", no_optlib, str(deploy / "predict.py")], capture_output=True,
                           text=True, cwd=tmp_path, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    result = json.loads(check.stdout)
    assert result["images"] == 8 and result["different_class"] == [] and result["max_abs_logit_diff"] < 1e-3
    card = (deploy / "MODEL_CARD.md").read_text()  # memory and start-up of the hand-off process itself
    assert f"peak memory of the hand-off process (`predict.py --profile`: {runtime}, NumPy, Pillow)" in card
    html = (tmp_path / "smoke" / "report.html").read_text()
    assert "Final round" in html and html.index('id="final"') < html.index('id="chapters"') < html.index('id="machine"')
    assert "pytorch-fp32" in html and "data:image/png;base64" in html
    assert "Distance to the hardware limit" in html and "Attribution: runtime x precision x sparsity" in html
    assert {"roofline.csv", "attribution.tex"} <= {p.name for p in (tmp_path / "smoke" / "tables").iterdir()}
    # opened as a reader would, in a real browser: no console error, every figure decodes; the first
    # screen is kept as CI's artifact (tests/test_browser.py says when this is skipped)
    if browser.find_chromium() is not None or os.environ.get("OPTLIB_REQUIRE_BROWSER"):
        seen = browser.check_page(tmp_path / "smoke" / "report.html",
                                  screenshot=paths.REPO_DIR / "outputs" / "ci" / "report_first_screen.png")
        assert seen.ok, (seen.console_errors, seen.broken_images)
        assert seen.images >= 7 and seen.title == "optlib report smoke"
    assert (tmp_path / "smoke" / "tables" / "comparison.tex").is_file()
    s = run_cli(["summary", "--target", "smoke", "--format", "csv"], tmp_path).stdout
    assert s.splitlines()[0].startswith("name,") and "pytorch-fp32" in s
    # resume: an unchanged tree runs nothing again; each chapter's manifest holds what it read
    again = run_cli(["run", "--params", "params/smoke.yaml"], tmp_path).stdout
    assert "0 of 11 chapter(s) to run" in again and again.count("skipped ") >= 11
    runs = {nb: json.loads((tmp_path / "smoke" / "runs" / f"{nb}.json").read_text())
            for nb in ("01_baseline", "03_fp16_bf16", "06_pruning")}
    assert "precision.variants" in runs["03_fp16_bf16"]["inputs"]["params"]
    assert "prune.ratios" in runs["06_pruning"]["inputs"]["params"]
    assert not [k for k in runs["01_baseline"]["inputs"]["params"] if k.startswith(("precision.", "prune."))]
    assert "optlib/techniques/precision.py" in runs["03_fp16_bf16"]["inputs"]["code"]
    # a hand-edited record: summary and the report name its file and go on with the rest
    broken = tmp_path / "smoke" / "results" / "hand-edited.json"
    broken.write_text('{"schema": "optlib.result/3", "name": ')
    s = run_cli(["summary", "--target", "smoke", "--format", "csv"], tmp_path).stdout
    assert str(broken) in s and "pytorch-fp32" in s
    out = run_cli(["report", "--params", "params/smoke.yaml"], tmp_path).stdout
    assert str(broken) in (tmp_path / "smoke" / "report.html").read_text()
    # `optlib report` (make run's last step) prints the same page to PDF where a Chromium is installed
    if browser.find_chromium() is not None or os.environ.get("OPTLIB_REQUIRE_BROWSER"):
        from pypdf import PdfReader

        assert "PDF written to" in out, out
        pages = PdfReader(tmp_path / "smoke" / "report.pdf").pages
        assert len(pages) >= 3 and "Final round" in pages[0].extract_text()


@pytest.fixture(scope="module")
def xray_project(tmp_path_factory):
    d = tmp_path_factory.mktemp("xray")
    write_image_folder(d / "chest_xray" / "test", per_class=10)
    write_image_folder(d / "chest_xray" / "train", per_class=8, corrupt=False, seed=1)
    ckpt = lightning_ckpt(tiny_resnet(2), d / "pneumonia_model_07_0.928.ckpt")
    params = {
        "target": "my-xray-cpu", "device": "cpu",
        "model": {"arch": "torchvision:resnet18", "num_classes": 2, "checkpoint": str(ckpt),
                  "checkpoint_prefix": "model."},
        "data": {"root": str(d / "chest_xray" / "test"), "train_root": str(d / "chest_xray" / "train"),
                 "image_size": 32, "grayscale_to_rgb": True, "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225], "positive_class": "PNEUMONIA"},
        "bench": {"warmup": 1, "samples": 5, "trials": 2, "batch_sizes": [1, 4], "threads": 2, "settle_s": 0.0},
    }
    f = d / "my-xray.yaml"
    f.write_text(yaml.safe_dump(params))
    return d, f, params


def test_user_params_binary_imagefolder_with_lightning_ckpt(xray_project, tmp_path):
    d, f, params = xray_project
    run_cli(["run", "--params", str(f), "--notebooks", "00,01"], tmp_path)
    rec = read_record(tmp_path, "my-xray-cpu", "pytorch-fp32")
    b = rec["accuracy"]["binary"]
    assert b["positive_class"] == "PNEUMONIA" and b["tp"] + b["fn"] == 10 and b["tn"] + b["fp"] == 10
    assert 0.0 <= b["auroc"] <= 1.0
    assert rec["extra"]["dataset"]["skipped_files"] == 2 and rec["extra"]["dataset"]["test_images"] == 20
    m = rec["extra"]["model"]
    assert m["checkpoint_format"] == "lightning" and m["stripped_prefix"] == "model."
    card = json.loads((tmp_path / "my-xray-cpu" / "model_card.json").read_text())
    assert card["data"]["train_images"] == 16

    # A failing notebook (untrusted full pickle) fails loudly and leaves earlier records intact.
    bad = d / "full.pt"
    torch.save(tiny_resnet(2), bad)
    broken = dict(params, model={**params["model"], "checkpoint": str(bad)})
    (d / "broken.yaml").write_text(yaml.safe_dump(broken))
    p = run_cli(["run", "--params", str(d / "broken.yaml"), "--notebooks", "00,01"], tmp_path, check=False)
    assert p.returncode == 1
    assert "trust_checkpoint" in p.stdout + p.stderr and "2 notebook(s) failed" in p.stderr
    assert read_record(tmp_path, "my-xray-cpu", "pytorch-fp32") == rec


def test_cli_bad_params_is_one_clear_line(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("target: x\nbench:\n  sampels: 10\n")
    p = run_cli(["run", "--params", str(f)], tmp_path, check=False)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {f}: unknown key 'bench.sampels' (known keys: "
                                             "batch_sizes, block_seconds, contention_cores, eval_batch_size, memory, min_trials, samples, "
                                             "settle_s, stage_every, stop_ci_width, threads, trials, wait_for_quiet_s, "
                                             "warmup)"]


def test_single_logit_custom_head_lightning_model_end_to_end(tmp_path):
    """The central user's model: a custom MLP head ending in one logit (sigmoid + threshold), in a
    Lightning checkpoint, on a binary ImageFolder, through chapters 00 and 01 with a params file alone."""
    run_cli(["example", "--out", str(tmp_path / "ex"), "--image-size", "32", "--epochs", "1"], tmp_path)
    params = yaml.safe_load((tmp_path / "ex" / "params.yaml").read_text())
    assert params["model"]["num_classes"] == 1 and params["data"]["positive_class"] == "odd"
    params["data"]["max_test_images"] = 40
    params["bench"] = {"warmup": 1, "samples": 5, "trials": 2, "batch_sizes": [1, 4], "threads": 2, "settle_s": 0.0,
                       "memory": False}
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump(params))
    run_cli(["run", "--params", str(f), "--notebooks", "00,01"], tmp_path)
    rec = read_record(tmp_path, "example-binary", "pytorch-fp32")
    acc = rec["accuracy"]
    assert acc["outputs"] == {"kind": "sigmoid", "threshold": 0.5} and acc["n"] == 40
    b = acc["binary"]
    assert b["positive_class"] == "odd" and b["tp"] + b["fn"] == acc["per_class"]["odd"]["support"]
    assert len(b["roc"]["fpr"]) >= 2 and set(b["operating_points"]) == {"sensitivity_at_specificity",
                                                                         "specificity_at_sensitivity"}
    m = rec["extra"]["model"]
    assert m["outputs"] == "sigmoid" and m["head"] == "classifier" and m["head_detected"]
    assert m["checkpoint_format"] == "lightning" and m["stripped_prefix"] == "model."
    assert m["hyper_parameter_checks"] == [
        "checkpoint hyper_parameters.num_classes = 1: agrees with model.num_classes = 1",
        "checkpoint hyper_parameters.threshold = 0.5: agrees with model.decision_threshold = 0.5"]
    assert rec["extra"]["stage_split"] and rec["extra"]["stage_split_max_abs_diff"] < 1e-4
    assert rec["noise_floor"]["twin_flips"] == 0
