"""The hand-off folder's predict.py (results/deploy_predict.py) needs no optlib: its Pillow/NumPy
preprocessing and its decisions must agree with optlib's own (workload.data.preprocess,
workload.outputs.Outputs). The folder itself is written and checked in a fresh process by
tests/test_pipeline.py."""
import numpy as np
import pytest
import torch

from optlib.results import deploy_predict as dp
from optlib.workload.data import PreprocessSpec, preprocess
from optlib.workload.outputs import Outputs


@pytest.mark.parametrize("shape,size,rgb,resize", [
    ((8, 8), 32, True, "squash"), ((40, 48), 32, True, "squash"), ((40, 48, 3), 24, True, "squash"),
    ((40, 48, 3), 24, False, "squash"), ((50, 50), 50, False, "squash"), ((41, 48), 32, True, "pad"),
    ((48, 41, 3), 24, True, "pad"), ((41, 48), 32, False, "crop"), ((48, 41, 3), 24, True, "crop")])
def test_predict_py_preprocessing_matches_optlib(shape, size, rgb, resize):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(3)]
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if rgb else ([0.5], [0.25])
    spec = PreprocessSpec(size, mean, std, grayscale_to_rgb=rgb, resize=resize)
    ours = preprocess(images, spec).numpy()
    theirs = dp.preprocess(images, spec.to_dict())
    assert theirs.shape == ours.shape and theirs.dtype == np.float32
    np.testing.assert_allclose(theirs, ours, atol=2e-5)


@pytest.mark.parametrize("kind,names,positive,threshold", [
    ("softmax", ["a", "b", "c"], None, 0.5), ("softmax", ["neg", "pos"], "pos", 0.8),
    ("sigmoid", ["NORMAL", "PNEUMONIA"], "PNEUMONIA", 0.3), ("sigmoid", ["pos", "neg"], "pos", 0.5)])
def test_predict_py_decisions_match_optlib_outputs(kind, names, positive, threshold):
    outputs = Outputs.for_data(1 if kind == "sigmoid" else None, names, positive, threshold)
    logits = torch.randn(200, outputs.logits_per_image, generator=torch.Generator().manual_seed(0)).numpy() * 3
    classes = {"names": names, "kind": outputs.kind, "positive_index": outputs.positive_index,
               "threshold": outputs.threshold}
    idx, prob = dp.decide(logits, classes)
    np.testing.assert_array_equal(idx, outputs.predict(logits))
    np.testing.assert_allclose(prob, outputs.probabilities(logits)[np.arange(len(idx)), idx], rtol=1e-12)


def test_predict_py_reads_16_bit_grayscale_as_optlib_does(tmp_path):
    from PIL import Image

    from optlib.workload.data import _decode

    rng = np.random.default_rng(1)
    eight = rng.integers(0, 256, size=(20, 30), dtype=np.uint8)
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "x16.png")  # every value x257, as DICOM exports
    assert Image.open(tmp_path / "x16.png").mode.startswith("I")
    np.testing.assert_array_equal(dp.load_image(tmp_path / "x16.png"), eight)
    np.testing.assert_array_equal(dp.load_image(tmp_path / "x16.png"), _decode(tmp_path / "x16.png"))
