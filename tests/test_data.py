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


def test_image_folder_prints_every_skipped_file_with_its_full_path(tmp_path, capsys):
    root = write_image_folder(tmp_path / "a" / "rather" / "long" / "path" / "to" / "the" / "test")
    with pytest.warns(UserWarning):
        load_image_folder(root)
    out = capsys.readouterr().out
    for bad in (root / "NORMAL" / "broken.png", root / "PNEUMONIA" / "notes.txt"):
        assert f"skipped {bad} (" in out


# --- DICOM (pydicom writes the files; pydicom's own windowing is the reference) -----------------

def _dicom(path, arr, photometric="MONOCHROME2", bits=None, **elements):
    """A single-frame DICOM file of `arr` (uint8 / uint16 / int16) with `elements` set."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.pixels import set_pixel_data
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    set_pixel_data(ds, arr, photometric, bits or arr.dtype.itemsize * 8)
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_window_agrees_with_pydicom_and_the_standard(function):
    """The window maps modality values to 0..255 as pydicom maps them to the stored range (its
    output rescaled), for a 12-bit file with a rescale; LINEAR's worked values from PS3.3
    C.11.2.1.2.1 (center 40, width 400: at most -160 black, above 239 white, 39.5 mid-grey)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from optlib.workload.data import voi_window

    stored = np.arange(0, 4096, 7, dtype=np.uint16).reshape(1, -1)
    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation, ds.PhotometricInterpretation = 12, 0, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1.5, -1024.0
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 300.0, 1200.0, function
    modality = apply_modality_lut(stored, ds)
    ref = apply_voi_lut(modality, ds)
    lo, hi = -1024.0, 4095 * 1.5 - 1024.0  # pydicom's output range: the stored range, rescaled
    np.testing.assert_allclose(voi_window(modality, 300.0, 1200.0, function), (ref - lo) / (hi - lo) * 255, atol=1e-9)
    if function == "LINEAR":
        np.testing.assert_allclose(voi_window(np.array([-160.0, -159.0, 39.5, 239.0, 239.01]), 40, 400),
                                   [0.0, 255 * (0.5 + (-159 - 39.5) / 399), 127.5, 255.0, 255.0])


def test_dicom_folder_reads_like_its_png_copy(tmp_path):
    """MONOCHROME2 16-bit (every value x257, no window: the stored range), MONOCHROME1 8-bit
    (white low: inverted back) and a 12-bit file whose window spans its stored range read back as
    the 8-bit PNGs they were made from, so a model sees the same images; several frames are refused
    by name."""
    from PIL import Image

    rng = np.random.default_rng(0)
    png, dcm = tmp_path / "png", tmp_path / "dcm"
    made = {}
    for cls in ("NORMAL", "PNEUMONIA"):
        (png / cls).mkdir(parents=True)
        (dcm / cls).mkdir(parents=True)
        for i, kind in enumerate(("mono2-16", "mono1-8", "mono2-12-window")):
            v = rng.integers(0, 256, (20 + i, 24), dtype=np.uint8)
            Image.fromarray(v).save(png / cls / f"{i}.png")
            made[(cls, i)] = v
            if kind == "mono2-16":
                _dicom(dcm / cls / f"{i}.dcm", v.astype(np.uint16) * 257)
            elif kind == "mono1-8":
                _dicom(dcm / cls / f"{i}.dcm", 255 - v, "MONOCHROME1")
            else:  # 12-bit stored 16 x v + 8; LINEAR_EXACT window [0, 4096) maps v back exactly
                _dicom(dcm / cls / f"{i}", v.astype(np.uint16) * 16 + 8, bits=12, WindowCenter=2048.0,
                       WindowWidth=4096.0, VOILUTFunction="LINEAR_EXACT")  # no suffix: found by its DICM marker
    _dicom(dcm / "NORMAL" / "cine.dcm", np.zeros((3, 8, 8), np.uint8))  # three frames
    a, names_a, skipped_a = load_image_folder(png)
    with pytest.warns(UserWarning, match="skipped 1"):
        b, names_b, skipped_b = load_image_folder(dcm)
    assert names_a == names_b and not skipped_a
    assert skipped_b[0][0].endswith("cine.dcm") and "3 frames" in skipped_b[0][1]
    assert [p.rsplit("/", 2)[-2:] for p in a.paths] == [[c, f"{i}.png"] for c in names_a for i in range(3)]
    np.testing.assert_array_equal(a.labels, b.labels)
    for x, y in zip(a.images, b.images):
        np.testing.assert_array_equal(x, y)


def test_resize_policies_agree_with_pils_imageops():
    """crop: PIL's ImageOps.fit (the centred square, then bilinear) to resampling precision; pad:
    ImageOps.pad resizes first and pads after, so only the content rows away from the border can
    agree, and the padded rows are black (the normalised value of 0)."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(3)
    im = rng.integers(0, 256, size=(20, 40), dtype=np.uint8)  # 2:1, padded or cut by exactly 10 pixels a side
    spec = {p: PreprocessSpec(20, [0.5], [0.25], grayscale_to_rgb=False, resize=p) for p in ("crop", "pad")}
    f = Image.fromarray((im / 255.0).astype(np.float32), mode="F")
    fit = np.asarray(ImageOps.fit(f, (20, 20), Image.BILINEAR, centering=(0.5, 0.5)))
    np.testing.assert_allclose(preprocess([im], spec["crop"])[0, 0].numpy(), (fit - 0.5) / 0.25, atol=1e-4)
    pad = preprocess([im], spec["pad"])[0, 0].numpy()
    pil = np.asarray(ImageOps.pad(f, (20, 20), Image.BILINEAR, color=0, centering=(0.5, 0.5)))
    np.testing.assert_allclose(pad[:4], -2.0)  # black rows: (0 - 0.5) / 0.25
    np.testing.assert_allclose(pad[-4:], -2.0)
    np.testing.assert_allclose(pad[7:13], (pil[7:13] - 0.5) / 0.25, atol=0.05)
    with pytest.raises(ValueError, match="'data.resize' must be one of squash, pad, crop"):
        from_dict({"data": {"resize": "stretch"}})
