"""Classify images with the exported model: needs only its runtime (onnxruntime or openvino, as
runtime.json says), NumPy and Pillow.

    python predict.py IMAGE [IMAGE ...]        one line per image: path, class, probability
    python predict.py --check                  re-run examples/ and compare with expected.json
    python predict.py --profile                this process's start-up, first and later calls, peak memory

Copied as deploy/predict.py by `python -m optlib export-best`; it reads runtime.json, the model
(model.onnx, or model.xml + model.bin for OpenVINO), preprocess.json and classes.json beside it.
The preprocessing is the one the model was measured with: 8-bit grayscale or RGB (16-bit grayscale
scaled to 8 bits by its depth, v / 257), made square as preprocess.json's resize policy says (squash:
left to the resize; pad: black around it; crop: its centred square), scaled to [0, 1], resized
with antialiased bilinear filtering to image_size x image_size, normalised with mean and std (a grayscale image is repeated into three channels when
the model takes three).
"""
import time

STARTED = time.perf_counter()  # before the imports: start-up includes them

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def load_image(path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        if im.mode.startswith("I;16") or (im.mode == "I" and np.asarray(im).max() > 255):
            # 16-bit grayscale: scaled by its depth, not clipped (what optlib's reader does)
            return np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        im = im.convert("L") if im.mode in ("L", "1", "I", "I;16", "F", "LA") else im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def to_square(im: np.ndarray, policy: str) -> np.ndarray:
    """preprocess.json's resize policy: pad (black, centred) or crop (centred) to a square; squash
    leaves the image to the resize."""
    h, w = im.shape[:2]
    if policy == "squash" or h == w:
        return im
    if policy == "crop":
        side = min(h, w)
        return im[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    side = max(h, w)
    widths = [((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)]
    return np.pad(im, widths + [(0, 0)] * (im.ndim - 2))


def preprocess(images, spec) -> np.ndarray:
    """uint8 images (H, W) or (H, W, 3) -> float32 (N, C, S, S)."""
    size = spec["image_size"]
    channels = 3 if spec["grayscale_to_rgb"] or len(spec["mean"]) == 3 else 1
    out = []
    for im in images:
        x = to_square(im, spec.get("resize", "squash")).astype(np.float32) / 255.0
        planes = [x] if x.ndim == 2 else [x[..., c] for c in range(3)]
        if len(planes) == 3 and channels == 1:
            planes = [np.mean(np.stack(planes), axis=0)]
        if planes[0].shape != (size, size):
            planes = [np.asarray(Image.fromarray(p, mode="F").resize((size, size), Image.BILINEAR)) for p in planes]
        x = np.stack(planes)
        if x.shape[0] == 1 and channels == 3:
            x = np.repeat(x, 3, axis=0)
        mean = np.asarray(spec["mean"], np.float32).reshape(-1, 1, 1)
        std = np.asarray(spec["std"], np.float32).reshape(-1, 1, 1)
        out.append((x - mean) / std)
    return np.stack(out).astype(np.float32)


def decide(logits: np.ndarray, classes) -> tuple[np.ndarray, np.ndarray]:
    """(class index, its probability) per image: softmax over one logit per class, or a sigmoid
    over the positive class's single logit; with two classes the positive class wins when its
    probability reaches the threshold."""
    z = logits.astype(np.float64)
    if classes["kind"] == "sigmoid":
        p_pos = 1.0 / (1.0 + np.exp(-z[:, 0]))
        probs = np.empty((len(z), 2))
        probs[:, classes["positive_index"]] = p_pos
        probs[:, 1 - classes["positive_index"]] = 1.0 - p_pos
    else:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    if len(classes["names"]) == 2 and classes["positive_index"] is not None:
        pos = classes["positive_index"]
        idx = np.where(probs[:, pos] >= classes["threshold"], pos, 1 - pos)
    else:
        idx = probs.argmax(axis=1)
    return idx, probs[np.arange(len(idx)), idx]


def load_model():
    """The model as a function of a preprocessed batch, with the runtime and settings (threads
    included) it was measured with."""
    runtime = json.loads((HERE / "runtime.json").read_text())
    if runtime["runtime"] == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(HERE / "model.xml"), "CPU", runtime["properties"])
        return lambda x: np.asarray(compiled(x)[0])
    import onnxruntime as ort

    options = ort.SessionOptions()
    if runtime.get("threads"):
        options.intra_op_num_threads = int(runtime["threads"])
    session = ort.InferenceSession(str(HERE / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def run_model(x: np.ndarray) -> np.ndarray:
    """Logits of the preprocessed batch."""
    return load_model()(x)


def profile(calls: int = 50) -> dict:
    """This process as a user's would run it: seconds from start to the model loaded (imports
    included), the first call on one example image, the median of `calls` later ones (preprocessing
    included), its peak resident memory (bytes) and the heavy modules it has loaded."""
    model = load_model()
    loaded = time.perf_counter()
    spec = json.loads((HERE / "preprocess.json").read_text())
    image = load_image(HERE / json.loads((HERE / "expected.json").read_text())[0]["image"])
    t = time.perf_counter()
    model(preprocess([image], spec))
    first = time.perf_counter() - t
    later = []
    for _ in range(calls):
        t = time.perf_counter()
        model(preprocess([image], spec))
        later.append(time.perf_counter() - t)
    heavy = ("torch", "optlib", "onnxruntime", "openvino", "onnx", "pandas", "scipy")
    return {"startup_s": loaded - STARTED, "first_call_ms": first * 1e3,
            "later_call_ms_median": float(np.median(later)) * 1e3, "later_calls": calls,
            "peak_rss_bytes": peak_rss_bytes(), "modules": sorted(m for m in heavy if m in sys.modules)}


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM of its own address space. (getrusage's ru_maxrss
    is no good for a process started by another: Linux carries the parent's peak across exec.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def predict(paths) -> list[dict]:
    spec = json.loads((HERE / "preprocess.json").read_text())
    classes = json.loads((HERE / "classes.json").read_text())
    x = preprocess([load_image(p) for p in paths], spec)
    logits = run_model(x)
    idx, prob = decide(np.asarray(logits), classes)
    return [{"image": str(p), "class": classes["names"][i], "index": int(i), "probability": float(q),
             "logits": [float(v) for v in row]} for p, i, q, row in zip(paths, idx, prob, np.atleast_2d(logits))]


def main(argv) -> int:
    if argv == ["--check"]:
        expected = json.loads((HERE / "expected.json").read_text())
        got = predict([HERE / e["image"] for e in expected])
        wrong = [e["image"] for e, g in zip(expected, got) if e["class"] != g["class"]]
        worst = max(abs(a - b) for e, g in zip(expected, got) for a, b in zip(e["logits"], g["logits"]))
        print(json.dumps({"images": len(expected), "different_class": wrong, "max_abs_logit_diff": worst}))
        return 1 if wrong else 0
    if argv == ["--profile"]:
        print(json.dumps(profile()))
        return 0
    if not argv:
        print(__doc__)
        return 2
    for r in predict(argv):
        print(f"{r['image']}\t{r['class']}\t{r['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
