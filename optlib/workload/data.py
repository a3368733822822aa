"""Images and labels: the embedded workload (synthetic chest-radiograph-like phantoms, or
scikit-learn's digits) or a user's ImageFolder, the label-free fidelity pool, and the one
preprocessing every backend shares.

Raw images are uint8 numpy arrays (H x W for grayscale, H x W x 3 for colour), decoded once at
load time: file decoding is I/O and is not part of any timed stage. `preprocess_array` turns a
batch of raw images into the normalised float32 NCHW array the model takes (resize, channel
expansion, normalisation) and `preprocess` hands it to torch; that is the "preprocessing" stage
the benchmark times, the same code for every backend.
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.params import DataParams, Params


class DataError(ValueError):
    """The image folder is unusable (missing, empty class, no images)."""


class CalibrationError(ValueError):
    """Calibration (static INT8) was asked for without images from the training side."""


@dataclass
class PreprocessSpec:
    image_size: int
    mean: list[float]
    std: list[float]
    grayscale_to_rgb: bool = True
    resize: str = "squash"  # core.choices.RESIZE_POLICIES: a non-square image stretched, padded or cropped

    @classmethod
    def from_params(cls, data: DataParams) -> "PreprocessSpec":
        return cls(data.image_size, list(data.mean), list(data.std), data.grayscale_to_rgb, data.resize)

    @property
    def channels(self) -> int:
        return 3 if self.grayscale_to_rgb or len(self.mean) == 3 else 1

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "grayscale_to_rgb": self.grayscale_to_rgb, "resize": self.resize}


def square(image: np.ndarray, policy: str) -> np.ndarray:
    """A uint8 image (H x W or H x W x C) made square before resizing: "pad" adds black rows or
    columns around it (the odd one at the bottom / right), "crop" keeps its centred square (the odd
    one dropped at the bottom / right), "squash" leaves it (the resize stretches it)."""
    h, w = image.shape[:2]
    if policy == "squash" or h == w:
        return image
    if policy == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return image[top:top + s, left:left + s]
    if policy == "pad":
        s = max(h, w)
        top, left = (s - h) // 2, (s - w) // 2
        out = np.zeros((s, s) + image.shape[2:], dtype=image.dtype)
        out[top:top + h, left:left + w] = image
        return out
    raise ValueError(f"resize policy {policy!r} is not one of squash, pad, crop")


@dataclass
class ImageSet:
    images: list[np.ndarray]
    labels: np.ndarray
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Pool:
    """Unlabelled images for the label-free fidelity pool (measurement.verdict), independent of
    the evaluated ones and from the same source."""
    images: list[np.ndarray]
    source: str


@dataclass
class Dataset:
    source: str  # "digits", "phantoms (...)" or the ImageFolder root
    class_names: list[str]
    test: ImageSet
    train: ImageSet | None
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_balance(self):
        """Images per class on the evaluated and the training side (a DataFrame, one row per class)."""
        import pandas as pd

        sides = {"test": self.test} if self.train is None else {"test": self.test, "train": self.train}
        return pd.DataFrame({k: np.bincount(v.labels, minlength=self.num_classes) for k, v in sides.items()},
                            index=self.class_names)

    def summary(self) -> dict:
        counts = np.bincount(self.test.labels, minlength=self.num_classes)
        out = {
            "source": self.source,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "test_images": len(self.test),
            "test_per_class": dict(zip(self.class_names, counts.tolist())),
            "train_images": len(self.train) if self.train is not None else 0,
            "skipped_files": len(self.skipped),
        }
        return out


def preprocess(images: list[np.ndarray], spec: PreprocessSpec) -> torch.Tensor:
    """Batch of raw uint8 images -> float32 tensor (N, C, S, S), resized and normalised: the
    NumPy batch of `preprocess_array`, shared without a copy."""
    return torch.from_numpy(preprocess_array(images, spec))


# Dense resize matrices are used while one plane costs at most this many multiply-adds
# (S*H*W + S*S*W); larger images (a 1024x1024 X-ray to 224) go through torch's banded kernel.
DENSE_RESIZE_MACS = 1 << 22


def preprocess_array(images: list[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Batch of raw uint8 images -> float32 array (N, C, S, S): the preprocessing every backend
    shares, in NumPy, so ONNX Runtime's timed path runs no torch operator.

    Resizing is torch's antialiased bilinear (align_corners=False), applied as the linear map it
    is: two small matrices per input shape (`resize_matrices`), read off torch's own kernel once,
    agree with it to float rounding; images too large for dense matrices use torch's kernel. A
    grayscale image is resized once and becomes C channels only in the normalisation.
    """
    if len(images) == 0:
        raise ValueError("preprocess: got an empty batch")
    if spec.resize != "squash":
        images = [square(im, spec.resize) for im in images]
    same_shape = all(im.shape == images[0].shape for im in images)
    groups = [np.stack(images)] if same_shape else [im[None] for im in images]
    size = spec.image_size
    out = []
    for g in groups:
        x = (g[:, None] if g.ndim == 3 else g.transpose(0, 3, 1, 2)).astype(np.float32)  # N, c, H, W
        if x.shape[1] == 3 and spec.channels == 1:
            x = x.mean(axis=1, keepdims=True)
        h, w = x.shape[-2:]
        if (h, w) == (size, size):
            y = x / np.float32(255.0)
        elif size * h * w + size * size * w <= DENSE_RESIZE_MACS:
            mh, mw_t = resize_matrices(h, w, size)
            y = mh @ x @ mw_t  # 1/255 is folded into mh
        else:
            t = torch.from_numpy(np.ascontiguousarray(x)).div_(255.0)
            y = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True).numpy()
        out.append(y.astype(np.float32, copy=False))
    if len(out) > 1:
        n_channels = max(y.shape[1] for y in out)
        x = np.concatenate([np.broadcast_to(y, (1, n_channels, size, size)) for y in out])
    else:
        x = out[0]
    mean, std = _normalisation(tuple(spec.mean), tuple(spec.std), spec.channels)
    return np.ascontiguousarray((x - mean) / std)  # broadcasts a 1-channel batch to spec.channels


@functools.lru_cache(maxsize=64)
def resize_matrices(h: int, w: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(Mh / 255, Mw^T) with resize(x) = Mh @ x @ Mw^T for an H x W plane: torch's antialiased
    bilinear kernel read off on images that are one in one row (column) and zero elsewhere. The
    basis images are 4 wide along the other axis: torch treats an axis of size 1 differently."""
    def axis(n: int) -> np.ndarray:
        basis = torch.eye(n).reshape(n, 1, n, 1).expand(n, 1, n, 4).contiguous()
        y = F.interpolate(basis, size=(size, 4), mode="bilinear", align_corners=False, antialias=True)
        return y[:, 0, :, 0].T.numpy()  # size x n
    mh = (axis(h) / np.float32(255.0)).astype(np.float32)
    mw_t = np.ascontiguousarray(axis(w).T, dtype=np.float32)
    mh.setflags(write=False)
    mw_t.setflags(write=False)
    return mh, mw_t


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple, std: tuple, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std as (1, channels, 1, 1) arrays, made once per spec rather than per timed call."""
    def shaped(v):
        a = np.ascontiguousarray(np.broadcast_to(np.asarray(v, np.float32).reshape(1, -1, 1, 1), (1, channels, 1, 1)))
        a.setflags(write=False)
        return a
    return shaped(mean), shaped(std)


# --- embedded default: scikit-learn digits -------------------------------------------------------

def load_digits_dataset(data: DataParams) -> Dataset:
    """scikit-learn's 1797 handwritten 8x8 digits, stratified fixed-seed split.

    The raw images stay 8x8; `preprocess` upsamples them to data.image_size.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    raw = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    idx = np.arange(len(raw))
    tr, te = train_test_split(idx, test_size=data.test_fraction, stratify=d.target,
                              random_state=data.split_seed)
    te = np.sort(te)
    tr = np.sort(tr)
    if data.max_test_images is not None:
        te = te[: data.max_test_images]
    names = [str(c) for c in d.target_names]
    return Dataset(
        source="digits",
        class_names=names,
        test=ImageSet([raw[i] for i in te], d.target[te].astype(np.int64), [f"digits[{i}]" for i in te]),
        train=ImageSet([raw[i] for i in tr], d.target[tr].astype(np.int64), [f"digits[{i}]" for i in tr]),
    )


# --- embedded default: synthetic chest-radiograph-like phantoms ----------------------------------

PHANTOM_SEEDS = {"test": 1000, "train": 2000, "pool": 3000}  # + data.split_seed: sets share no image


def phantom_images(data: DataParams, side: str, n: int, target: str | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """`n` phantoms of one side (test, train or pool) at data.image_size, cached as .npz under
    outputs/<target>/data/ (keyed by everything that shapes them) when `target` is given: every
    chapter reads the same images without drawing them again."""
    from ..core import paths
    from ..core.io import atomic_write
    from ..core.params import stable_hash
    from . import phantoms

    seed = PHANTOM_SEEDS[side] + data.split_seed
    key = stable_hash({"side": side, "n": n, "seed": seed, "size": data.image_size, "share": data.positive_share,
                       "difficulty": data.phantom_difficulty, "generator": phantoms.VERSION})
    path = paths.target_dir(target) / "data" / f"phantoms-{side}-{key}.npz" if target else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            return list(z["images"]), z["labels"]
    images, labels = phantoms.generate(n, seed, data.image_size, data.positive_share, data.phantom_difficulty)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        def write(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a path
                np.savez(f, images=np.stack(images), labels=labels)
        atomic_write(path, write)
    return images, labels


def load_phantom_dataset(data: DataParams, target: str | None = None) -> Dataset:
    """Synthetic phantoms (workload.phantoms; not medical images): data.phantom_test_images
    evaluated and data.phantom_train_images training images, classes normal / opacity."""
    from . import phantoms

    n_test = data.phantom_test_images if data.max_test_images is None else min(data.phantom_test_images,
                                                                               data.max_test_images)
    test, test_y = phantom_images(data, "test", n_test, target)
    train, train_y = phantom_images(data, "train", data.phantom_train_images, target)
    return Dataset(
        source=f"phantoms ({phantoms.DISCLAIMER}; difficulty {data.phantom_difficulty:g})",
        class_names=list(phantoms.CLASSES),
        test=ImageSet(test, test_y, [f"phantoms/test[{i}]" for i in range(len(test))]),
        train=ImageSet(train, train_y, [f"phantoms/train[{i}]" for i in range(len(train))]),
    )


def load_fidelity_pool(params: Params) -> tuple[Pool | None, str]:
    """The label-free pool and where it comes from, or (None, why there is none): every readable
    image under data.fidelity_root, else data.fidelity_pool_images freshly generated phantoms when
    the evaluated images are the embedded phantoms (other seeds than the test and training sides)."""
    data = params.data
    if data.fidelity_root is not None:
        root = Path(data.fidelity_root)
        images, skipped = [], []
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                images.append(_decode(f))
            except Exception as e:
                skipped.append((str(f), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"))
        for path, why in skipped:
            print(f"fidelity pool: skipped {path} ({why})")
        if not images:
            raise DataError(f"{root}: data.fidelity_root has no readable images")
        return Pool(images, f"{root} ({len(images)} unlabelled images)"), ""
    if params.is_embedded and data.embedded == "phantoms":
        if data.fidelity_pool_images == 0:
            return None, "data.fidelity_pool_images is 0"
        images, _ = phantom_images(data, "pool", data.fidelity_pool_images, params.target)
        return Pool(images, f"freshly generated phantoms (seed {PHANTOM_SEEDS['pool'] + data.split_seed})"), ""
    return None, ("the evaluated images have no independent source of more images here: set data.fidelity_root "
                  "to a folder of unlabelled images from the same source")


# --- ImageFolder -------------------------------------------------------------------------------

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: Path) -> bool:
    """A DICOM file: the .dcm / .dicom suffix, or the "DICM" marker after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def voi_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM's VOI windowing (PS3.3 C.11.2.1.2) of modality values `x` to 0..255 (float): LINEAR
    (the default, with its half-pixel offsets), LINEAR_EXACT or SIGMOID."""
    x = np.asarray(x, dtype=np.float64)
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"window width {width:g} is below 1 (LINEAR needs >= 1)")
        y = ((x - (center - 0.5)) / max(width - 1, 1e-12) + 0.5) * 255.0
        y = np.where(x <= center - 0.5 - (width - 1) / 2, 0.0, y)
        y = np.where(x > center - 0.5 + (width - 1) / 2, 255.0, y)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"window width {width:g} is not positive")
        y = ((x - center) / width + 0.5) * 255.0
    elif function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    else:
        raise ValueError(f"VOI LUT function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    return np.clip(y, 0.0, 255.0)


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): its first."""
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _decode_dicom(path: Path) -> np.ndarray:
    """One DICOM image as uint8 (H x W grayscale, H x W x 3 colour). Grayscale: the modality LUT
    (Rescale Slope / Intercept) to modality values, then the file's first window (Window Center /
    Width, its VOI LUT Function) to 0..255; without a window, the whole range the stored bits can
    hold, rescaled (so a 16-bit file maps like a 16-bit PNG); MONOCHROME1 (white is low) inverted.
    Refused by name: several frames, colour that is not 8-bit, a compressed file whose decoder is
    not installed (pydicom's message)."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as e:
        raise ImportError("a DICOM file needs pydicom: pip install -e '.[dicom]'") from e
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"{frames} frames: one image per file is read")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if not photometric.startswith("MONOCHROME"):
        if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
            return np.ascontiguousarray(arr)  # pydicom gives RGB (YBR converted)
        raise ValueError(f"{photometric} {arr.dtype} colour: only 8-bit colour or grayscale is read")
    x = apply_modality_lut(arr, ds).astype(np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        y = voi_window(x, _first(ds.WindowCenter), _first(ds.WindowWidth), str(ds.get("VOILUTFunction", "LINEAR")))
    else:
        bits, signed = int(ds.BitsStored), int(ds.get("PixelRepresentation", 0)) == 1
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        y = (x - lo) / (hi - lo) * 255.0
    if photometric == "MONOCHROME1":
        y = 255.0 - y
    return np.round(np.clip(y, 0, 255)).astype(np.uint8)


def _decode(path: Path) -> np.ndarray:
    """One file as a uint8 array (H x W grayscale, H x W x 3 colour). 16-bit grayscale (PNG
    "I;16" and kin, or "I" holding values above 255) is scaled by its bit depth (v / 257, rounded),
    not clipped: Pillow's convert("L") clips them. RGBA and palette images become RGB (alpha
    dropped). DICOM files: `_decode_dicom`."""
    from PIL import Image

    if is_dicom(path):
        return _decode_dicom(path)
    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I;16") or im.mode == "I":
            a = np.asarray(im).astype(np.float64)
            if im.mode.startswith("I;16") or a.max() > 255:
                if a.min() < 0 or a.max() > 65535:
                    raise ValueError(f"{im.mode} values outside 0..65535 ({a.min():g} to {a.max():g})")
                a = a / 257.0
            return np.round(a).astype(np.uint8)
        if im.mode in ("L", "1", "F", "LA"):
            im = im.convert("L")
        else:
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def load_image_folder(root: str | Path, class_names: list[str] | None = None,
                      max_images: int | None = None) -> tuple[ImageSet, list[str], list[tuple[str, str]]]:
    """Read root/<class>/<image>: returns (images, class names, skipped (path, reason)).

    Unreadable or non-image files are skipped and reported, never fatal; a missing root, a root
    without class folders, or a class folder without a single readable image is a DataError.
    `class_names` fixes the label order (e.g. the test set's, when reading the training side).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
    names = class_names or found
    missing = [c for c in names if c not in found]
    if missing:
        raise DataError(f"{root}: class folder(s) {missing} missing (expected the classes {names})")
    images, labels, paths, skipped = [], [], [], []
    for label, cls in enumerate(names):
        files = sorted(p for p in (root / cls).rglob("*") if p.is_file())
        n_ok = 0
        for f in files:
            try:
                img = _decode(f)
            except Exception as e:  # PIL raises many types for corrupt data
                skipped.append((str(f), f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"))
                continue
            images.append(img)
            labels.append(label)
            paths.append(str(f))
            n_ok += 1
        if n_ok == 0:
            raise DataError(f"{root / cls}: class folder has no readable images "
                            "(remove the folder or add images)")
    if max_images is not None and len(images) > max_images:
        # Keep every class represented: a fixed-seed stratified subsample.
        rng = np.random.default_rng(0)
        keep = np.sort(rng.permutation(len(images))[:max_images])
        images = [images[i] for i in keep]
        labels = [labels[i] for i in keep]
        paths = [paths[i] for i in keep]
    for path, why in skipped:  # every one, with its full path, on the terminal too
        print(f"{root}: skipped {path} ({why})")
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable file(s), first: {skipped[0][0]} "
                      f"({skipped[0][1]})", stacklevel=2)
    return ImageSet(images, np.asarray(labels, dtype=np.int64), paths), list(names), skipped


def load_dataset(params: Params) -> Dataset:
    """The evaluated (test) images and the training side used for calibration / fine-tuning."""
    data = params.data
    if data.root is None:
        return load_phantom_dataset(data, params.target) if data.embedded == "phantoms" else load_digits_dataset(data)
    test, names, skipped = load_image_folder(data.root, max_images=data.max_test_images)
    train = None
    if data.train_root is not None:
        train, _, skipped_train = load_image_folder(data.train_root, class_names=names)
        skipped += skipped_train
    if data.positive_class is not None and data.positive_class not in names:
        raise DataError(f"data.positive_class: {data.positive_class!r} is not one of the classes "
                        f"{names} found in {data.root}")
    return Dataset(source=str(data.root), class_names=names, test=test, train=train, skipped=skipped)


def batches(images: list[np.ndarray], batch_size: int):
    for i in range(0, len(images), batch_size):
        yield images[i:i + batch_size]


def calibration_set(dataset: Dataset, size: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """`size` raw images drawn with `seed` from the training side, never from the evaluated images.

    Returns (images, their paths). Raises CalibrationError when there is no training side.
    """
    if dataset.train is None or len(dataset.train) == 0:
        raise CalibrationError("calibration needs images from the training side: set data.train_root (the "
                               "evaluated images are never used for calibration)")
    if size < 1:
        raise CalibrationError(f"calibration size must be at least 1, got {size}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(dataset.train), size=min(size, len(dataset.train)), replace=False)
    paths = dataset.train.paths or [f"train[{i}]" for i in range(len(dataset.train))]
    return [dataset.train.images[i] for i in idx], [paths[i] for i in idx]
