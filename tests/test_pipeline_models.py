"""End to end through papermill, the models a user brings besides the smoke run's: a ResNet50 at the
user's form (the template `optlib example --xray` writes), MobileNetV2 on the edge target's
settings, and a small vision transformer through every chapter. (tests/test_pipeline.py: the smoke
run and a user's ImageFolder with a Lightning checkpoint.)"""
import yaml

from optlib.core import paths
from tests.helpers import read_record, run_cli


def test_user_size_example_is_the_template_pointed_at_a_resnet50_checkpoint_and_runs_to_plan(tmp_path):
    """The user-size target (`optlib example --xray`: params/example-xray.yaml pointed at phantom
    PNGs and a ResNet50 with an MLP head in a Lightning checkpoint) at smoke size: the params differ
    from the template only where they point, the run prints its plan and the budget's cuts before
    chapter 00 starts, and 01 measures the checkpoint read as the user's."""
    from optlib.workload.example import build_xray_example

    f = build_xray_example(tmp_path / "ex", image_size=32, test_images=40, train_images=24, steps=2, batch_size=8,
                           file_sizes=(32, 40), progress=False)
    params = yaml.safe_load(f.read_text())
    template = yaml.safe_load((paths.PARAMS_DIR / "example-xray.yaml").read_text())
    changed = {(sec, k) for sec in params if isinstance(params[sec], dict)
               for k in params[sec] if params[sec][k] != template.get(sec, {}).get(k)}
    assert changed == {("model", "arch"), ("model", "checkpoint"), ("data", "root"), ("data", "train_root"),
                       ("data", "image_size"), ("data", "positive_class")}
    assert set(params) == set(template) and params["target"] == "xray-resnet50"
    params["bench"].update(warmup=1, block_seconds=0.05, trials=2, min_trials=2, batch_sizes=[1, 4], memory=False)
    mine = tmp_path / "mine.yaml"
    mine.write_text(yaml.safe_dump(params))
    out = run_cli(["run", "--params", str(mine), "--notebooks", "00,01", "--budget-minutes", "30"], tmp_path).stdout
    plan_end = out.index("[optlib] estimate")  # the plan: minutes per chapter, the probe, the total
    assert "Estimated" in out[:plan_end] and "01_baseline" in out[:plan_end], out[-3000:]
    assert plan_end < out.index("00_data_and_model: running")
    assert (tmp_path / "xray-resnet50" / "params.fitted.yaml").is_file()
    rec = read_record(tmp_path, "xray-resnet50", "pytorch-fp32")
    m = rec["extra"]["model"]
    assert m["checkpoint_format"] == "lightning" and m["stripped_prefix"] == "model." and m["head"] == "classifier"
    assert m["parameters"] > 23_000_000 and rec["accuracy"]["n"] == 40  # a ResNet50 (23.5 M) and its head
    assert rec["accuracy"]["binary"]["positive_class"] == "opacity"


def test_edge_target_validates_and_runs_its_chapters_under_smoke_settings(tmp_path, monkeypatch):
    """params/edge.yaml as committed validates; with the smoke sizes its own chapters run: MobileNetV2
    trained here, one thread, PyTorch INT8 and QAT on the QNNPACK engine (recorded with the
    artifact), MobileNetV2 pruned. (01, 02 and 03 run the same code as for any model: the smoke run;
    04 writes the eager reference 01 would have written.) Its graphs come from the TorchScript
    exporter: the dynamo exporter took 14-16 s per MobileNetV2 graph against 0.7 s (2026-12-07), and
    a model's three graphs (whole, features, head) in 04 and again for each pruned model in 06 were
    over 80 of this test's 195 s; the smoke run and the ViT's go through the dynamo exporter."""
    from optlib.core.params import from_dict
    from optlib.results.records import load_records

    edge = yaml.safe_load((paths.PARAMS_DIR / "edge.yaml").read_text())
    p = from_dict(edge, "params/edge.yaml")
    assert (p.model.arch, p.quant.engine, p.bench.threads) == ("torchvision:mobilenet_v2", "qnnpack", 1)
    smoke = yaml.safe_load((paths.PARAMS_DIR / "smoke.yaml").read_text())
    edge.update(target="edge-smoke", data={"embedded": "digits", "image_size": 32, "max_test_images": 120},
                train=smoke["train"],
                bench={**smoke["bench"], "threads": 1, "trials": 2, "samples": 6}, compilers={"compile_modes": []})
    edge["onnx"] = {"exporter": "torchscript"}
    edge["quant"].update(calibration_size=16, qat_epochs=1)
    edge["prune"].update(sparsities=[0.9], ratios=[0.5], finetune_epochs=1, unstructured_finetune_epochs=0)
    edge["finetune"].update(max_steps=4)  # QAT and the pruned model's fine-tuning: what they train is not checked here
    edge["precision"].update(slow_samples=2, slow_trials=1)
    f = tmp_path / "edge-smoke.yaml"
    f.write_text(yaml.safe_dump(edge))
    run_cli(["run", "--params", str(f), "--notebooks", "00,04_,05,06"], tmp_path)
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    records = {r.name: r for r in load_records("edge-smoke")}
    assert not [r.reason for r in records.values() if r.status == "failed"]
    fx = records["pytorch-int8-static"]
    assert fx.artifact.options["engine"] == "qnnpack" and fx.kernels.label == "integer"
    eager = records["pytorch-fp32"]  # a MobileNetV2's 2.2 M weights (a ResNet18's would be 45 MB)
    assert fx.settings["threads"] == 1 and eager.settings["threads"] == 1 and eager.size_bytes < 10e6
    assert eager.extra["written_by"].startswith("04_int8_ptq")
    assert {"onnxruntime-int8-static-minmax", "qat-int8", "structured-l2-50-onnxruntime-int8"} <= {
        n for n, r in records.items() if r.ok}
    assert records["qat-int8"].artifact.options["engine"] == "qnnpack"


def test_a_small_vision_transformer_runs_every_chapter(tmp_path, monkeypatch):
    """A ViT from a user-style module (optlib.workload.example:vit_classifier: torchvision's
    VisionTransformer wrapped as self.backbone, an MLP head ending in one logit) on small phantoms,
    trained by 00, through every chapter at the smoke sizes but 04b (its studies are sized to
    nothing here: the chapter was 10 s of kernel start): no chapter lost, no configuration
    failed but the one ONNX Runtime crashes on; pruning removes attention heads and narrows its MLPs;
    INT8 runs integer kernels; block checkpointing finds its encoder blocks inside the wrapper."""
    from optlib.results.records import load_records

    params = yaml.safe_load((paths.PARAMS_DIR / "smoke.yaml").read_text())
    params.update(target="vit-smoke", model={"arch": "optlib.workload.example:vit_classifier", "num_classes": 1})
    params["data"] = {"embedded": "phantoms", "image_size": 32, "phantom_test_images": 120, "phantom_train_images": 256,
                      "fidelity_pool_images": 0}
    params["train"] = {"epochs": 2, "batch_size": 64, "lr": 0.001}
    params["bench"].update(trials=2, samples=6, batch_sizes=[1, 4])
    params["onnx"] = {"compare_optimization_levels": False}
    params["compilers"] = {"compile_modes": [], "measure_cold_start": False}
    params["quant"].update(pt2e=False, study_sizes=[], compare_formats=False, methods=["minmax"])
    params["prune"].update(iterative_steps=0, scopes=["global"], unstructured_finetune_epochs=0, ort_threads=[])
    params["precision"].update(compile=False)
    params["memory"].update(precisions=["fp32"], checkpoint=["block"], batch_sizes=[8], search_probes=0)
    params["comparison"].update(fresh_processes=0)
    f = tmp_path / "vit.yaml"
    f.write_text(yaml.safe_dump(params))
    run_cli(["run", "--params", str(f), "--notebooks", "00,01,02,03,04_,05,06,07,08,99"], tmp_path)
    for nb in sorted(p.stem for p in paths.NOTEBOOKS_DIR.glob("*.ipynb") if not p.stem.startswith("04b")):
        assert (tmp_path / "vit-smoke" / "notebooks" / f"{nb}.ipynb").is_file(), nb
    monkeypatch.setenv("OPTLIB_OUTPUT_ROOT", str(tmp_path))
    records = {r.name: r for r in load_records("vit-smoke")}
    # ONNX Runtime crashes natively (SIGSEGV) building the session of this ViT's FP16 graph: that one
    # configuration is a failed record naming the signal and the step, and chapter 03 went on
    failed = {n: r.reason for n, r in records.items() if r.status == "failed"}
    assert set(failed) <= {"onnxruntime-fp16"} and all("native crash (SIGSEGV)" in why for why in failed.values())
    assert records["pytorch-fp32"].accuracy["outputs"]["kind"] == "sigmoid"
    assert records["onnxruntime-int8-dynamic"].kernels.label in ("integer", "mixed")  # attention's MatMuls stay float
    assert records["pytorch-int8-static"].kernels.label == "integer" and records["qat-int8"].ok
    assert records["onnxruntime-int8-static-minmax"].kernels.label in ("integer", "mixed")
    pruned = records["structured-l2-global-50-onnxruntime-fp32"].extra["pruning"]
    assert set(map(tuple, pruned["attention_heads"].values())) == {(4, 2)} and pruned["macs_speedup"] > 1
    assert all(".mlp.0" in path for path in pruned["channels"])
    block = records["train-fp32-ckpt-block"].extra["training"]
    assert block["gradients"]["equal"] and block["checkpointed"] == [
        "backbone.encoder.layers.encoder_layer_0", "backbone.encoder.layers.encoder_layer_1"]
