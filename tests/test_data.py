import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optlib.workload.data import DataError, PreprocessSpec, load_dataset, load_image_folder, preprocess
from optlib.core.params import from_dict
from tests.helpers import write_image_folder


def test_digits_split_is_stratified_fixed_and_large_enough():
    p = from_dict({})
    a, b = load_dataset(p), load_dataset(p)
    assert len(a.test) >= 500 and a.num_classes == 10
    assert [x.tobytes() for x in a.test.images[:20]] == [x.tobytes() for x in b.test.images[:20]]
    counts = np.bincount(a.test.labels)
    assert counts.max() - counts.min() <= 3  # stratified
    assert not set(a.test.paths) & set(a.train.paths)  # calibration / training never sees test images


def test_image_folder_skips_and_reports_bad_files(tmp_path):
    root = write_image_folder(tmp_path / "test")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        images, names, skipped = load_image_folder(root)
    assert names == ["NORMAL", "PNEUMONIA"]
    assert len(images) == 12 and sorted(np.bincount(images.labels).tolist()) == [6, 6]
    bad = sorted(p for p, _ in skipped)
    assert bad == [str(root / "NORMAL" / "broken.png"), str(root / "PNEUMONIA" / "notes.txt")]
    assert all(im.dtype == np.uint8 and im.ndim in (2, 3) for im in images.images)


def test_empty_class_folder_is_an_error(tmp_path):
    root = write_image_folder(tmp_path / "test", corrupt=False)
    (root / "EMPTY").mkdir()
    with pytest.raises(DataError, match="EMPTY: class folder has no readable images"):
        load_image_folder(root)
    with pytest.raises(DataError, match="no class sub-folders"):
        (tmp_path / "flat").mkdir()
        load_image_folder(tmp_path / "flat")


def test_positive_class_must_exist(tmp_path):
    root = write_image_folder(tmp_path / "test", corrupt=False)
    with pytest.raises(DataError, match="positive_class"):
        load_dataset(from_dict({"data": {"root": str(root), "positive_class": "COVID"}}))


def test_preprocess_matches_reference_formula():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(16, 16), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    spec = PreprocessSpec(16, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], grayscale_to_rgb=True)
    x = preprocess([gray, rgb], spec)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    mean = np.array(spec.mean)[:, None, None]
    std = np.array(spec.std)[:, None, None]
    expected_gray = (np.broadcast_to(gray / 255.0, (3, 16, 16)) - mean) / std  # no resize needed
    np.testing.assert_allclose(x[0].numpy(), expected_gray, atol=1e-5)
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    ref = F.interpolate(t, size=(16, 16), mode="bilinear", antialias=True, align_corners=False)[0].numpy()
    np.testing.assert_allclose(x[1].numpy(), (ref - mean) / std, atol=1e-5)


def test_preprocess_resizes_grayscale_like_pil_in_every_channel():
    """Grayscale images are resized once and spread over the channels by the normalisation: each
    channel must equal PIL's bilinear resize of the image (an independent implementation)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    wide = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)
    for mean, std in (([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), ([0.5], [0.25])):
        spec = PreprocessSpec(32, mean, std, grayscale_to_rgb=True)
        x = preprocess([small, wide], spec)  # different shapes: resized one by one
        assert x.shape == (2, 3, 32, 32) and x.is_contiguous()
        for i, im in enumerate((small, wide)):
            pil = np.asarray(Image.fromarray((im / 255.0).astype(np.float32), mode="F")
                             .resize((32, 32), Image.BILINEAR))
            m = np.broadcast_to(np.array(mean, dtype=np.float32), (3,))[:, None, None]
            s = np.broadcast_to(np.array(std, dtype=np.float32), (3,))[:, None, None]
            np.testing.assert_allclose(x[i].numpy(), (pil[None] - m) / s, atol=1e-4)
        np.testing.assert_array_equal(preprocess([small], spec)[0].numpy(), x[0].numpy())


@pytest.mark.parametrize("shape,size", [((8, 8), 64), ((100, 80), 64), ((30, 45, 3), 24), ((7, 9, 3), 32)])
def test_dense_resize_matrices_agree_with_torch_kernel(monkeypatch, shape, size):
    """The NumPy path (dense matrices read off torch's kernel) against torch's antialiased
    bilinear resize itself, up- and downsampling, grayscale and RGB, and against the fallback used
    for images too large for dense matrices."""
    import optlib.workload.data as data

    rng = np.random.default_rng(2)
    im = rng.integers(0, 256, size=shape, dtype=np.uint8)
    for channels_spec in (([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True), ([0.5], [0.25], False)):
        spec = PreprocessSpec(size, *channels_spec)
        dense = data.preprocess_array([im, im], spec)
        t = torch.from_numpy(im).float().div(255)
        t = t[None, None] if im.ndim == 2 else t.permute(2, 0, 1)[None]
        if t.shape[1] == 3 and spec.channels == 1:
            t = t.mean(dim=1, keepdim=True)
        ref = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        ref = ((ref - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(1, -1, 1, 1))
        ref = ref.expand(1, spec.channels, size, size).numpy()
        assert dense.shape == (2, spec.channels, size, size) and dense.dtype == np.float32
        np.testing.assert_allclose(dense[1:], ref, atol=2e-6)
        monkeypatch.setattr(data, "DENSE_RESIZE_MACS", 0)
        np.testing.assert_allclose(data.preprocess_array([im], spec), ref, atol=2e-6)
        monkeypatch.undo()
