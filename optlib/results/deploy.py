"""Hand-off: the chosen configuration as a folder that runs without optlib.

`export_best(params)` (and `python -m optlib export-best --target T`) writes outputs/<T>/deploy/:

  model.onnx         the chosen graph (external weights folded in), run by ONNX Runtime; or
  model.xml/.bin     the chosen OpenVINO IR, with runtime.json: the compile properties it was measured with
  preprocess.json    image size, mean, std, channel handling: the preprocessing it was measured with
  classes.json       class names, how logits become a class (softmax, or one sigmoid logit and the
                     positive class), the decision threshold
  MODEL_CARD.md      what was chosen and why, its measured numbers with their intervals, the machine
  predict.py         needs onnxruntime (or openvino), NumPy and Pillow only (results/deploy_predict.py)
  examples/, expected.json   a few evaluated images and optlib's predictions for them:
                     `python predict.py --check` re-runs them in a fresh process

The choice: the fastest configuration of the final round (chapter 99) that ONNX Runtime or OpenVINO runs and
whose verdict against quant.max_accuracy_drop is within (measurement.verdict: its paired interval
lies above the budget, or the label-free pool bounds its change within it);
without a final round, the largest own-run speed-up against pytorch-fp32 among those. The folder
is written beside the old one and swapped in only when complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..core import paths
from ..core.io import atomic_folder
from ..measurement.verdict import verdict_of, within_budget
from ..workload.outputs import Outputs
from . import final_round
from .records import Record, load_records

N_EXAMPLES = 8
# The artifact kinds a hand-off can ship: each runs with its runtime, NumPy and Pillow alone.
HANDOFF_KINDS = ("onnxruntime", "openvino")


class DeployError(RuntimeError):
    """Nothing to hand off (no ONNX Runtime or OpenVINO configuration within the budget, or no records)."""


def choose(records: list[Record], max_accuracy_drop: float) -> tuple[Record, str]:
    """(the record to hand off, why it was chosen)."""
    def shippable(r: Record) -> bool:
        return r.ok and r.latency is not None and r.artifact is not None and r.artifact.kind in HANDOFF_KINDS

    final = [r for r in records if r.name.startswith(final_round.PREFIX) and shippable(r)
             and within_budget(r, max_accuracy_drop)]
    if final:
        best = min(final, key=lambda r: r.latency.median)
        return best, (f"the fastest configuration of the final round that ONNX Runtime or OpenVINO runs and whose verdict "
                      f"against the {max_accuracy_drop:.1%} accuracy budget is within")
    own = [r for r in records if not r.name.startswith(final_round.PREFIX) and shippable(r)
           and within_budget(r, max_accuracy_drop) and r.speedup(final_round.REFERENCE) is not None]
    if not own:
        candidates = [r for r in records if shippable(r) and r.speedup(final_round.REFERENCE) is not None]
        if candidates:
            raise DeployError(f"none of the {len(candidates)} ONNX Runtime or OpenVINO configuration(s) is shown within the "
                              f"{max_accuracy_drop:.1%} accuracy budget by its evidence (verdicts: "
                              + ", ".join(sorted({v.label for r in candidates if (v := verdict_of(r, max_accuracy_drop))}))
                              + "): more labelled images, or a label-free pool (data.fidelity_root), can resolve them")
        raise DeployError("no ONNX Runtime or OpenVINO configuration with a same-run speed-up: run "
                          "02_onnx_and_compilers (and 99_comparison for the final round) first")
    best = max(own, key=lambda r: r.speedup(final_round.REFERENCE).value)
    return best, (f"no final round yet: the largest own-run speed-up against {final_round.REFERENCE} among the ONNX "
                  f"Runtime and OpenVINO configurations whose verdict against the {max_accuracy_drop:.1%} budget is within")


def profile_hand_off(folder: Path, timeout_s: float = 300) -> dict | str:
    """`predict.py --profile` run in `folder` by a fresh isolated interpreter, as a user runs it
    (its runtime, NumPy and Pillow; optlib not importable): its JSON, or why there is none."""
    import subprocess
    import sys

    try:
        p = subprocess.run([sys.executable, "-I", str(folder / "predict.py"), "--profile"], capture_output=True,
                           text=True, timeout=timeout_s, cwd=folder)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout_s:.0f} s"
    if p.returncode != 0:
        from ..measurement.launcher import last_line

        return f"exited {p.returncode}: {last_line(p)}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def _model_card(record: Record, why: str, outputs: Outputs, class_names: list[str], spec: dict,
                handed: dict | str | None = None) -> str:
    """The card: what was measured in the round (latency, speed-ups, accuracy, size), `handed` (the
    hand-off process's own profile, or why it is missing), what runs, the data, the machine."""
    env = record.environment or {}
    t = record.latency
    lines = [f"# Model card: `{record.extra.get('final_round', {}).get('of', record.name)}`", "",
             f"Chosen as {why}.", "",
             "## Measured (all on the machine below, in one run)", "",
             "| quantity | value | 95% interval |", "|---|---|---|",
             f"| latency, batch {record.batch_size} (ms, preprocessing included) | {t.median:.3f} | "
             f"{t.ci95[0]:.3f} to {t.ci95[1]:.3f} |"]
    for s in record.speedups:
        if s.metric == "latency":
            lines.append(f"| speed-up against {s.reference} (same run) | {s.value:.2f}x | {s.ci95[0]:.2f} to "
                         f"{s.ci95[1]:.2f} |")
    if record.fidelity is not None:
        f = record.fidelity
        lo, hi = f.accuracy_change_ci95
        lines.append(f"| accuracy change against {f.reference} | {f.accuracy_change:+.2%} | {lo:+.2%} to {hi:+.2%} |")
        if record.verdict is not None:
            lines.append(f"| verdict against the {record.verdict.max_accuracy_drop:.1%} budget | {record.verdict.label} | |")
        if f.pool is not None:
            lines.append(f"| decisions that differ on the label-free pool | {f.pool.changed} of {f.pool.images} | at most "
                         f"{f.pool.changed_share_bound:.2%} (exact) |")
        lines.append(f"| predictions that differ from {f.reference} | {f.flips} of {record.accuracy.get('n', '?')} | |")
    if record.accuracy:
        lines.append(f"| accuracy | {record.accuracy['accuracy']:.2%} | |")
    if record.size_bytes:
        lines.append(f"| size (MB) | {record.size_bytes / 1e6:.2f} | |")
    if isinstance(handed, dict):
        lines += [f"| peak memory of the hand-off process (`predict.py --profile`: {', '.join(handed['modules'])}, "
                  f"NumPy, Pillow) (MB) | {handed['peak_rss_bytes'] / 1e6:.0f} | |",
                  f"| its start-up to the model loaded, imports included (s) | {handed['startup_s']:.2f} | |",
                  f"| its first call, one image (ms) | {handed['first_call_ms']:.2f} | |",
                  f"| its later calls, median of {handed['later_calls']} (ms, one image, this script's loop) | "
                  f"{handed['later_call_ms_median']:.3f} | |"]
    elif handed:
        lines.append(f"| the hand-off process | not measured: {handed} | |")
    own = record.extra.get("final_round", {}).get("own_run")
    if own and own.get("speedup") is not None:
        lines += ["", f"In its own chapter's run it was {own['speedup']:.2f}x [{own['speedup_ci95'][0]:.2f}, "
                      f"{own['speedup_ci95'][1]:.2f}] against {final_round.REFERENCE}."]
    lines += ["", "## What runs", "",
              f"- {record.technique}, {record.backend}, precision {record.precision}, kernels "
              f"{record.kernels.label if record.kernels else 'float'}; threads "
              f"{(record.device or {}).get('threads')}.",
              f"- Input: {spec['image_size']}x{spec['image_size']}, mean {spec['mean']}, std {spec['std']}"
              f"{', grayscale repeated to RGB' if spec['grayscale_to_rgb'] else ''}.",
              f"- Output: {outputs.kind} over {class_names}"
              + (f", positive class `{class_names[outputs.positive_index]}` at probability >= {outputs.threshold:g}"
                 if outputs.binary and outputs.positive_index is not None else "") + ".",
              "", "## Data", "",
              f"- Measured on {(record.extra.get('dataset') or {}).get('source', '?')}: "
              f"{(record.extra.get('dataset') or {}).get('test_images', '?')} evaluated images."
              + (" These are synthetic phantoms, not medical images: the numbers say nothing about real radiographs."
                 if "phantoms" in str((record.extra.get("dataset") or {}).get("source", "")) else ""),
              "", "## Machine", "",
              f"- {env.get('cpu', '?')}, {env.get('cpu_count', '?')} cores; GPU: {env.get('gpu') or 'none'}",
              f"- measured {env.get('timestamp', '?')}, git {env.get('git_commit', '?')}, parameters "
              f"{env.get('params_hash', '?')}",
              "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted((env.get("versions") or {}).items())), "",
              "Numbers from another machine, or another run, are not these: re-measure with optlib there."]
    return "\n".join(lines) + "\n"


def export(target: str, record: Record, why: str, outputs: Outputs, class_names: list[str],
           examples: list[np.ndarray]) -> Path:
    """Write outputs/<target>/deploy/ for `record` (an onnxruntime or openvino artifact); returns the folder."""
    import onnx
    from PIL import Image

    from ..backends.artifacts import load_runner, resolved

    base = paths.target_dir(target)
    artifact = resolved(record.artifact, base)
    spec = dict(artifact.preprocess)
    threads = (record.device or {}).get("threads")  # the hand-off runs as the record was measured
    final = base / "deploy"
    with atomic_folder(final) as tmp:
        if artifact.kind == "openvino":
            shutil.copyfile(artifact.files["model"], tmp / "model.xml")
            shutil.copyfile(artifact.files["weights"], tmp / "model.bin")
            config = artifact.options["config"]
            runtime = {"runtime": "openvino", "properties": {
                "INFERENCE_PRECISION_HINT": config["precision"], "PERFORMANCE_HINT": config["performance_hint"],
                **({"INFERENCE_NUM_THREADS": threads} if threads else {})}}
        else:
            onnx.save(onnx.load(artifact.files["model"]), str(tmp / "model.onnx"))  # external data folded in
            runtime = {"runtime": "onnxruntime", **({"threads": threads} if threads else {})}
        (tmp / "runtime.json").write_text(json.dumps(runtime, indent=2))
        (tmp / "preprocess.json").write_text(json.dumps(spec, indent=2))
        classes = {"names": class_names, "kind": outputs.kind, "positive_index": outputs.positive_index,
                   "threshold": outputs.threshold}
        (tmp / "classes.json").write_text(json.dumps(classes, indent=2))
        shutil.copyfile(Path(__file__).with_name("deploy_predict.py"), tmp / "predict.py")
        (tmp / "examples").mkdir()
        runner = load_runner(artifact, None, name="deploy-check", threads=1)
        logits = np.atleast_2d(runner.predict(examples))
        expected = []
        for i, (im, z, c) in enumerate(zip(examples, logits, outputs.predict(logits))):
            name = f"examples/{i}.png"
            Image.fromarray(im).save(tmp / name)
            expected.append({"image": name, "class": class_names[int(c)], "logits": [float(v) for v in z]})
        (tmp / "expected.json").write_text(json.dumps(expected, indent=2))
        handed = profile_hand_off(tmp)
        (tmp / "MODEL_CARD.md").write_text(_model_card(record, why, outputs, class_names, spec, handed))
    return final


def export_best(params, dataset=None) -> tuple[Path, Record, str]:
    """Choose among the target's records (`choose`) and export it, with the first evaluated images
    as examples; `dataset` defaults to loading the params' data. Returns (folder, record, why)."""
    from ..workload.data import load_dataset
    from ..workload.models import model_outputs

    record, why = choose(load_records(params.target), params.quant.max_accuracy_drop)
    dataset = dataset or load_dataset(params)
    out = export(params.target, record, why, model_outputs(params, dataset), dataset.class_names,
                 dataset.test.images[:N_EXAMPLES])
    return out, record, why


def hand_off(params, dataset=None) -> str:
    """export_best, as one line for the comparison chapter: where the folder is, or why there is none."""
    try:
        out, record, why = export_best(params, dataset)
    except DeployError as e:
        return f"no deploy folder: {e}"
    return (f"deploy folder for {record.extra.get('final_round', {}).get('of', record.name)} ({why}): {out}; "
            f"check it with: python {out / 'predict.py'} --check")
