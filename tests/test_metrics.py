import numpy as np
import pytest
from sklearn import metrics as skm

from optlib.measurement.metrics import classification_metrics, fidelity
from optlib.workload.outputs import Outputs, softmax


def test_multiclass_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4))
    logits[np.arange(300), labels] += 1.0  # better than chance, not perfect
    names = ["a", "b", "c", "d"]
    m = classification_metrics(logits, labels, names)
    pred = logits.argmax(1)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(labels, pred, average="macro"))
    assert m["macro_precision"] == pytest.approx(skm.precision_score(labels, pred, average="macro"))
    assert m["macro_recall"] == pytest.approx(skm.recall_score(labels, pred, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    assert m["per_class"]["c"]["recall"] == pytest.approx(skm.recall_score(labels, pred, average=None)[2])
    lo, hi = m["accuracy_ci95"]
    assert lo < m["accuracy"] < hi
    assert "binary" not in m


def test_binary_known_case():
    # labels: 4 negatives (class 0 "NORMAL"), 4 positives (class 1 "PNEUMONIA")
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 1, 1, 0, 1])  # 1 FP, 1 FN
    score = np.array([-2, -1, -0.5, 0.3, 2, 1, -0.1, 0.8])
    logits = np.stack([np.zeros(8), score], 1)
    assert (logits.argmax(1) == pred).all()
    names = ["NORMAL", "PNEUMONIA"]
    m = classification_metrics(logits, labels, names, Outputs.for_data(None, names, "PNEUMONIA"))
    b = m["binary"]
    assert (b["tn"], b["fp"], b["fn"], b["tp"]) == (3, 1, 1, 3)
    assert b["sensitivity"] == 0.75 and b["specificity"] == 0.75
    assert b["auroc"] == pytest.approx(skm.roc_auc_score(labels, softmax(logits)[:, 1]))
    # the other class as positive: counts swap, AUROC (both label and score flipped) is unchanged
    m0 = classification_metrics(logits, labels, names, Outputs.for_data(None, names, "NORMAL"))
    assert m0["binary"]["tp"] == 3 and m0["binary"]["auroc"] == pytest.approx(b["auroc"])


def test_fidelity_counts_flips_and_paired_delta():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=200)
    ref = rng.normal(size=(200, 3))
    cand = ref.copy()
    # flip 10 predictions to the true class (if not already) and 5 away from it
    ref_pred = ref.argmax(1)
    wrong = np.flatnonzero(ref_pred != labels)[:10]
    cand[wrong, labels[wrong]] += 10
    right = np.flatnonzero(ref_pred == labels)[:5]
    cand[right, (labels[right] + 1) % 3] += 10
    f = fidelity(cand, ref, labels, "ref")
    assert f.flips == 15 and f.flips_now_correct == 10 and f.flips_now_wrong == 5
    assert f.top1_agreement == pytest.approx(1 - 15 / 200)
    assert f.accuracy_change == pytest.approx(5 / 200)
    lo, hi = f.accuracy_change_ci95
    assert lo <= 5 / 200 <= hi
    assert f.max_abs_diff == pytest.approx(10)
    assert (f.both_correct, f.both_wrong) == (int((ref_pred == labels).sum()) - 5, int((ref_pred != labels).sum()) - 10)
    same = fidelity(ref, ref, labels, "ref")
    lo, hi = same.accuracy_change_ci95  # no changed decision is not a zero-width interval (Newcombe's)
    assert same.flips == 0 and lo < 0 < hi and hi - lo > 0.01
    with pytest.raises(ValueError, match="shape"):
        fidelity(ref[:10], ref, labels, "ref")


def test_calibration_metrics_against_sklearn_brier_and_a_hand_ece():
    from optlib.measurement.metrics import calibration_metrics

    rng = np.random.default_rng(0)
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(int)
    m = calibration_metrics(np.column_stack([1 - p, p]), y)
    # the multi-class Brier score sums over both classes: twice sklearn's binary one
    assert m["brier"] == pytest.approx(2 * skm.brier_score_loss(y, p))
    # ten images at confidence 0.8 with six right, ten at 0.55 with five right:
    # ECE = 0.5 * |0.6 - 0.8| + 0.5 * |0.5 - 0.55| = 0.125
    probs = np.array([[0.8, 0.2]] * 10 + [[0.45, 0.55]] * 10)
    labels = np.array([0] * 6 + [1] * 4 + [1] * 5 + [0] * 5)
    assert calibration_metrics(probs, labels)["ece"] == pytest.approx(0.125)
    sure = calibration_metrics(np.eye(3)[[0, 1, 2, 1]], np.array([0, 1, 2, 1]))
    assert sure["ece"] == 0.0 and sure["brier"] == 0.0


def test_changed_share_interval_is_clopper_pearson_and_gives_the_test_sets_resolution():
    from scipy import stats as sps

    from optlib.measurement.metrics import changed_share_ci

    # none changed: the upper end is the closed form 1 - (alpha / 2) ** (1 / n): 0.68% on 540 images
    assert changed_share_ci(0, 540) == (0.0, pytest.approx(1 - 0.025 ** (1 / 540)))
    assert 0.0067 < changed_share_ci(0, 540)[1] < 0.0069
    # some changed: the beta quantiles that define the exact interval
    k, n = 2, 540
    assert changed_share_ci(k, n) == pytest.approx((sps.beta.ppf(0.025, k, n - k + 1), sps.beta.ppf(0.975, k + 1, n - k)))
