"""The embedded phantoms (synthetic, not medical images): deterministic, the positive class differs
where the generator says, 16-bit files read back scaled, class balance as configured, and the
label-free pool drawn apart from the evaluated images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from optlib.core.params import ParamsError, from_dict
from optlib.workload import data as D
from optlib.workload import phantoms as ph


def test_the_same_seed_draws_the_same_phantom_and_another_seed_another():
    a, b = ph.render(5, True, 48), ph.render(5, True, 48)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert np.abs(ph.render(6, True, 48).image - a.image).max() > 0.05
    x1, y1 = ph.generate(20, 3, 32)
    x2, y2 = ph.generate(20, 3, 32)
    assert all((p == q).all() for p, q in zip(x1, x2)) and (y1 == y2).all()


@pytest.mark.parametrize("seed", range(6))
def test_positive_and_negative_of_a_seed_differ_only_inside_the_opacity_mask(seed):
    pos, neg = ph.render(seed, True, 64), ph.render(seed, False, 64)
    assert not neg.mask.any() and pos.mask.any()
    p8, n8 = ph.to_uint(pos.image).astype(int), ph.to_uint(neg.image).astype(int)
    assert (p8[~pos.mask] == n8[~pos.mask]).all()  # outside the mask: the very same pixels
    assert (p8[pos.mask] - n8[pos.mask]).sum() > 0  # inside: denser (whiter)
    assert 0 <= pos.image.min() and pos.image.max() <= 1


def test_class_balance_as_configured():
    y = ph.labels_for(1000, 0.73, seed=4)
    assert y.sum() == 730 and len(y) == 1000
    params = from_dict({"data": {"embedded": "phantoms", "phantom_test_images": 40, "phantom_train_images": 30,
                                 "positive_share": 0.25, "image_size": 32}})
    ds = D.load_dataset(params)
    assert ds.class_names == ["normal", "opacity"] and params.data.positive_class == "opacity"
    assert (len(ds.test), int(ds.test.labels.sum()), len(ds.train), int(ds.train.labels.sum())) == (40, 10, 30, 8)
    assert "not medical images" in ds.source
    assert all(im.shape == (32, 32) and im.dtype == np.uint8 for im in ds.test.images)


def test_sixteen_bit_files_read_back_to_the_eight_bit_values_scaled(tmp_path):
    p16 = ph.write_image_folder(tmp_path / "16", 12, seed=1, bits=16, sizes=(40, 70), aspect=(0.8, 1.3))
    p8 = ph.write_image_folder(tmp_path / "8", 12, seed=1, bits=8, sizes=(40, 70), aspect=(0.8, 1.3))
    with Image.open(p16[0]) as im:
        assert im.mode.startswith("I") and np.asarray(im).max() > 255  # really 16-bit on disk
    s16, names16, _ = D.load_image_folder(tmp_path / "16")
    s8, names8, _ = D.load_image_folder(tmp_path / "8")
    assert names16 == names8 == list(ph.CLASSES) and (s16.labels == s8.labels).all()
    assert len({im.shape for im in s8.images}) > 1  # sizes and aspects vary, as users' files do
    assert sorted(s16.paths) == sorted(map(str, p16))
    for a, b, path in zip(s16.images, s8.images, s16.paths):
        raw = np.asarray(Image.open(path)).astype(np.float64)
        np.testing.assert_array_equal(a, np.round(raw / 257).astype(np.uint8))  # scaled by the bit depth
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # the 8-bit file's values, to rounding


def test_the_pool_is_fresh_phantoms_a_folder_or_none_with_the_reason(tmp_path):
    params = from_dict({"target": "pooltest", "data": {"embedded": "phantoms", "phantom_test_images": 30,
                                                       "phantom_train_images": 10, "fidelity_pool_images": 50,
                                                       "image_size": 32}})
    pool, why = D.load_fidelity_pool(params)
    test = D.load_dataset(params).test
    assert len(pool.images) == 50 and why == "" and "generated" in pool.source
    seen = {im.tobytes() for im in test.images}
    assert not any(im.tobytes() in seen for im in pool.images)  # independent of the evaluated images
    ph.write_image_folder(tmp_path / "unlabelled" / "any" / "depth", 7, seed=9, sizes=(30, 40))
    (tmp_path / "unlabelled" / "notes.txt").write_text("not an image")
    folder = from_dict({"data": {"fidelity_root": str(tmp_path / "unlabelled")}})
    pool, _ = D.load_fidelity_pool(folder)
    assert len(pool.images) == 7
    assert D.load_fidelity_pool(from_dict({}))[0] is None and "fidelity_root" in D.load_fidelity_pool(from_dict({}))[1]


def test_parameters_name_the_key_for_a_one_logit_model_on_the_digits():
    with pytest.raises(ParamsError, match="data.embedded: phantoms"):
        from_dict({"model": {"num_classes": 1}, "data": {"positive_class": "1"}})
    p = from_dict({"model": {"num_classes": 1}, "data": {"embedded": "phantoms"}})
    assert p.data.positive_class == "opacity"
    with pytest.raises(ParamsError, match="data.positive_share"):
        from_dict({"data": {"embedded": "phantoms", "positive_share": 1.0}})
