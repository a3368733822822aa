"""Users' own models as they really come: one sigmoid logit, custom heads, Lightning checkpoints,
operating points."""
import argparse

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from optlib.core.params import ParamsError, from_dict
from optlib.measurement.metrics import classification_metrics, fidelity, operating_point_shift
from optlib.workload.example import BinaryHeadNet, lightning_checkpoint
from optlib.workload.models import (CheckpointError, HeadError, check_head, detect_head, load_checkpoint_into,
                                    split_model)
from optlib.workload.outputs import Outputs, OutputsError
from optlib.workload.training import FineTuneRecipe
from tests.helpers import tiny_resnet

NAMES = ["NORMAL", "PNEUMONIA"]


def brute_force_sensitivity_at_specificity(y, score, specificity):
    """Best sensitivity over every threshold whose specificity reaches the target."""
    best = 0.0
    for t in np.unique(np.concatenate([score, [np.inf]])):
        pred = score >= t
        if (~pred[~y]).mean() >= specificity:
            best = max(best, pred[y].mean())
    return best


@pytest.mark.parametrize("positive,threshold", [("PNEUMONIA", 0.5), ("PNEUMONIA", 0.3), ("NORMAL", 0.7)])
def test_single_logit_metrics_match_sklearn_at_the_threshold(positive, threshold):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400)
    pos = NAMES.index(positive)
    logit = rng.normal(size=400) + 1.5 * (labels == pos)
    out = Outputs.for_data(1, NAMES, positive, threshold)
    m = classification_metrics(logit[:, None], labels, NAMES, out, (0.9, 0.8))
    prob = 1 / (1 + np.exp(-logit))
    y = labels == pos
    flagged = prob >= threshold
    pred = np.where(flagged, pos, 1 - pos)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred, labels=[0, 1]).tolist()
    b = m["binary"]
    assert b["positive_class"] == positive and b["threshold"] == threshold
    assert b["sensitivity"] == pytest.approx(skm.recall_score(y, flagged))
    assert b["specificity"] == pytest.approx(skm.recall_score(~y, ~flagged))
    assert b["auroc"] == pytest.approx(skm.roc_auc_score(y, prob))
    op = b["operating_points"]["sensitivity_at_specificity"]
    assert op["value"] == pytest.approx(brute_force_sensitivity_at_specificity(y, prob, 0.9))
    assert op["achieved"] >= 0.9 and b["operating_points"]["specificity_at_sensitivity"]["achieved"] >= 0.8


def test_two_logit_binary_thresholds_the_positive_probability():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(300, 2))
    labels = rng.integers(0, 2, size=300)
    out = Outputs.for_data(None, NAMES, "PNEUMONIA", 0.8)
    p = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    assert (out.predict(logits) == (p >= 0.8)).all()
    assert classification_metrics(logits, labels, NAMES, out)["binary"]["sensitivity"] == pytest.approx(
        skm.recall_score(labels == 1, p >= 0.8))


def test_fidelity_and_operating_point_shift_of_a_single_logit_model():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, size=500)
    ref = rng.normal(size=(500, 1)) + 2.0 * labels[:, None]
    cand = ref - 0.4  # compressed model drifts towards "negative": same ranking, lower probabilities
    out = Outputs.for_data(1, NAMES, "PNEUMONIA")
    f = fidelity(cand, ref, labels, "fp32", out)
    y = labels == 1
    dec_r, dec_c = ref[:, 0] >= 0, cand[:, 0] >= 0
    assert f.flips == int((dec_r != dec_c).sum()) and f.flips > 0
    s = f.operating_point
    assert s.sensitivity_change == pytest.approx(dec_c[y].mean() - dec_r[y].mean()) and s.sensitivity_change < 0
    assert s.specificity_change == pytest.approx((~dec_c[~y]).mean() - (~dec_r[~y]).mean()) and s.specificity_change > 0
    assert s.sensitivity_change_ci95[1] < 0  # the shift is resolved: the interval excludes 0
    # at the threshold that keeps the reference's sensitivity, the candidate flags as many positives
    # (probabilities from the same sigmoid: the threshold is one of them, exactly)
    prob_c = out.positive_scores(cand)
    np.testing.assert_allclose(prob_c, 1 / (1 + np.exp(-cand[:, 0])), rtol=1e-12)
    t = s.threshold_keeping_reference_sensitivity
    assert (prob_c[y] >= t).mean() >= dec_r[y].mean() > (prob_c[y] > t).mean() - 1e-12
    assert s.specificity_at_that_threshold == pytest.approx((prob_c[~y] < t).mean())
    assert t < 0.5  # it had to lower the threshold
    same = operating_point_shift(ref, ref, labels, out)
    lo, hi = same.sensitivity_change_ci95  # over the positives only: wider than the accuracy's
    assert same.sensitivity_change == 0 and lo < 0 < hi and same.positives == int(y.sum())
    from optlib.measurement.verdict import PairedCounts, paired_change_ci
    assert (lo, hi) == paired_change_ci(PairedCounts(int(dec_r[y].sum()), 0, 0, int((~dec_r[y]).sum())))
    assert f.probability_max_abs_diff > 0


@pytest.mark.parametrize("num_logits,names,positive,match", [
    (1, ["a", "b", "c"], "a", "needs exactly two class folders"),
    (1, NAMES, None, "set 'data.positive_class'"),
    (None, NAMES, "COVID", "'data.positive_class': 'COVID' is not one of"),
    (3, NAMES, None, "'model.num_classes' is 3 but"),
])
def test_outputs_contradicting_the_data_are_one_line_errors(num_logits, names, positive, match):
    with pytest.raises(OutputsError, match=match) as e:
        Outputs.for_data(num_logits, names, positive)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,key", [
    ({"model": {"num_classes": 1}}, "model.num_classes"),  # no positive class
    ({"model": {"num_classes": 0}}, "model.num_classes"),
    ({"model": {"decision_threshold": 1.0}}, "model.decision_threshold"),
    ({"model": {"head": "classifier[0]"}}, "model.head"),
    ({"data": {"operating_specificity": 0.0}}, "data.operating_specificity"),
])
def test_params_for_own_models_validated(content, key):
    with pytest.raises(ParamsError, match=f"'{key}'"):
        from_dict(content)


class Nested(nn.Module):
    """A head two levels down, and a forward that does something after the head."""

    def __init__(self, after_head: bool = False):
        super().__init__()
        self.net = nn.Module()
        self.net.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.net.out = nn.Linear(4, 1)
        self.after_head = after_head

    def forward(self, x):
        z = self.net.out(self.net.body(x))
        return torch.sigmoid(z) if self.after_head else z


def test_head_detection_explicit_nested_heads_and_clear_errors():
    assert detect_head(tiny_resnet(2)) == "fc" and detect_head(BinaryHeadNet()) == "classifier"
    assert detect_head(Nested()) is None and split_model(Nested()) is None
    m, x = Nested().eval(), torch.randn(3, 3, 16, 16)
    features, head = split_model(m, "net.out")
    with torch.no_grad():
        torch.testing.assert_close(head(features(x)), m(x))
    assert isinstance(m.net.out, nn.Linear)  # the model itself keeps its head
    assert check_head(m, "net.out", x) == "net.out"
    with pytest.raises(HeadError, match=r"'model.head': net has no module 'fc' \(its modules: body, out\)"):
        split_model(m, "net.fc")
    with pytest.raises(HeadError, match="does more after that module"):
        check_head(Nested(after_head=True).eval(), "net.out", x)
    b = BinaryHeadNet().eval()
    assert check_head(b, None, x) == "classifier"


def test_lightning_checkpoint_with_nested_prefixes_and_hyper_parameters(tmp_path):
    src = BinaryHeadNet().eval()
    opt = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    src(torch.randn(2, 3, 32, 32)).sum().backward()
    opt.step()  # optimizer state with momentum buffers, as a trained model's checkpoint has
    ckpt = lightning_checkpoint(src, opt, 3, 30, {"num_classes": 1, "threshold": 0.4, "lr": 0.1})
    path = tmp_path / "pneumonia.ckpt"
    torch.save(ckpt, path)
    dst = BinaryHeadNet()
    info = load_checkpoint_into(dst, path)
    assert info.checkpoint_format == "lightning" and info.stripped_prefix == "model."
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    assert {"optimizer_states", "loops", "callbacks", "hyper_parameters"} <= set(info.extra_keys)
    assert info.hyper_parameters == {"num_classes": 1, "threshold": 0.4, "lr": 0.1}
    from optlib.workload.models import hyper_parameter_checks

    checks = hyper_parameter_checks(info.hyper_parameters, 1, 0.5)
    assert checks == ["checkpoint hyper_parameters.num_classes = 1: agrees with model.num_classes = 1",
                      "checkpoint hyper_parameters.threshold = 0.4: DIFFERS from model.decision_threshold = 0.5"]


def test_unsafe_checkpoint_entry_is_named_in_one_line(tmp_path):
    ckpt = lightning_checkpoint(BinaryHeadNet(), torch.optim.SGD(BinaryHeadNet().parameters(), lr=0.1), 1, 1, {})
    ckpt["hyper_parameters"] = {"args": argparse.Namespace(lr=0.1)}  # what argparse-driven scripts save
    path = tmp_path / "unsafe.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_into(BinaryHeadNet(), path)
    msg = str(e.value)
    assert "entry 'hyper_parameters' holds argparse.Namespace" in msg and "model.trust_checkpoint: true" in msg
    assert "\n" not in msg
    info = load_checkpoint_into(BinaryHeadNet(), path, trust=True)  # the explicit trust flag loads it
    assert info.stripped_prefix == "model."


def test_int8_and_qat_on_a_single_logit_custom_head_model(tmp_path):
    from optlib.backends import evaluate
    from optlib.backends.onnxruntime import OrtConfig
    from optlib.core.params import from_dict
    from optlib.techniques import int8_onnx, int8_torch
    from optlib.techniques.onnx_export import ExportConfig
    from optlib.workload.data import PreprocessSpec, load_dataset, preprocess
    from tests.helpers import write_image_folder

    root = write_image_folder(tmp_path / "test", per_class=12, corrupt=False)
    train = write_image_folder(tmp_path / "train", per_class=16, corrupt=False, seed=1)
    p = from_dict({"model": {"num_classes": 1}, "data": {"root": str(root), "train_root": str(train),
                                                        "image_size": 32, "positive_class": "PNEUMONIA"}})
    ds, spec = load_dataset(p), PreprocessSpec.from_params(p.data)
    out = Outputs.for_data(1, ds.class_names, "PNEUMONIA")
    torch.manual_seed(0)
    model = BinaryHeadNet().eval()
    graphs = int8_onnx.fp32_graphs(model, preprocess(ds.test.images[:2], spec), tmp_path / "q", ExportConfig())
    assert set(graphs.paths) == {"model", "features", "head"}  # the custom head was split off and exported
    calib = int8_onnx.calibrate_graphs(graphs, preprocess(ds.train.images, spec), "minmax")
    runner = int8_onnx.static_runner(graphs, calib, int8_onnx.StaticQuantConfig(), spec, OrtConfig(intra_op_threads=2))
    assert runner.kernels.label == "integer"
    lg = evaluate(runner, ds.test.images, 8)
    with torch.no_grad():
        ref = model(preprocess(ds.test.images, spec)).numpy()
    assert lg.shape == ref.shape == (24, 1)
    np.testing.assert_allclose(runner.classify(runner.extract_features(runner.preprocess(ds.test.images[:4]))), lg[:4],
                               atol=1e-4)
    f = fidelity(lg, ref, ds.test.labels, "fp32", out)
    assert f.flips == int(((lg[:, 0] >= 0) != (ref[:, 0] >= 0)).sum()) and f.operating_point is not None
    qat, info = int8_torch.qat_fx(model, ds, spec, FineTuneRecipe(1, 0.01, batch_size=16), progress=False, outputs=out)
    assert info["kernels"] == "integer" and np.isfinite(info["history"][0]["loss"])
    with torch.no_grad():
        assert qat(preprocess(ds.test.images[:3], spec)).shape == (3, 1)
