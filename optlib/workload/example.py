"""An own-model example in the form users bring: a binary ImageFolder, a custom-head classifier
that ends in ONE logit (sigmoid + threshold), saved as a PyTorch Lightning checkpoint, and the
params file that points the whole workbench at it.

`python -m optlib example --out DIR` builds it offline from scikit-learn's digits (odd against even
digits, `odd` positive): DIR/data/{train,test}/{even,odd}/*.png, DIR/binary-digits.ckpt and
DIR/params.yaml. The checkpoint has the layout Lightning's Trainer.save_checkpoint writes (the
LightningModule's `model.` prefix over nested `backbone.` / `classifier.` modules, optimizer and
loop states, callbacks, hyper_parameters), so every path a real one takes is exercised.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from ..core.io import atomic_folder, atomic_write, write_text_atomic

CLASSES = ("even", "odd")
POSITIVE = "odd"


class BinaryHeadNet(nn.Module):
    """A torchvision ResNet backbone (its own fc removed) and an MLP head ending in one logit."""

    def __init__(self, hidden: int = 128, backbone: str = "resnet18"):
        super().__init__()
        import torchvision

        self.backbone = getattr(torchvision.models, backbone)(weights=None)
        width = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.classifier = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.classifier(self.backbone(x))


def binary_head_net() -> nn.Module:
    """model.arch: optlib.workload.example:binary_head_net"""
    return BinaryHeadNet()


def resnet50_head_net() -> nn.Module:
    """model.arch: optlib.workload.example:resnet50_head_net. The user's model at its real size: a
    ResNet50 backbone and an MLP head (2048 -> 256 -> one logit)."""
    return BinaryHeadNet(hidden=256, backbone="resnet50")


def resnet18_mlp_head(num_classes: int = 1, hidden: int = 128) -> nn.Module:
    """model.arch: optlib.workload.example:resnet18_mlp_head. A torchvision ResNet18 whose `fc` is a
    custom MLP head ending in `num_classes` logits (one: a sigmoid classifier): the embedded
    phantoms' default model, a custom head as users fine-tune one, in ResNet's own layout."""
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Sequential(nn.Linear(512, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, num_classes))
    return model


class ViTClassifier(nn.Module):
    """A small Vision Transformer as users wrap one: torchvision's VisionTransformer (its own head
    removed) as `self.backbone`, an MLP head ending in `num_classes` logits as `self.classifier`.
    Its position embedding fixes the input size: `image_size` must be data.image_size."""

    def __init__(self, num_classes: int = 1, image_size: int = 32, patch_size: int = 8, layers: int = 2,
                 heads: int = 4, width: int = 64, mlp_width: int = 128):
        super().__init__()
        from torchvision.models.vision_transformer import VisionTransformer

        self.backbone = VisionTransformer(image_size, patch_size, layers, heads, width, mlp_width, num_classes=width)
        self.backbone.heads = nn.Identity()
        self.classifier = nn.Sequential(nn.Linear(width, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.classifier(self.backbone(x))


def vit_classifier(num_classes: int = 1) -> nn.Module:
    """model.arch: optlib.workload.example:vit_classifier. A 2-layer ViT (4 heads, width 64, patches
    of 8) for 32x32 images with an MLP head: the transformer the tests run through every chapter."""
    return ViTClassifier(num_classes)


def write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    from PIL import Image

    for i, (img, y) in enumerate(zip(images, labels)):
        d = root / CLASSES[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"digit{i:04d}.png")


def lightning_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, steps: int,
                         hyper_parameters: dict) -> dict:
    """What Lightning 2.x's Trainer.save_checkpoint stores for a LightningModule holding `model` as
    `self.model` (plain values only, as a weights-only load reads them)."""
    return {
        "epoch": epochs - 1, "global_step": steps, "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": epochs, "completed": epochs}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {
            "monitor": "val_loss", "best_model_score": torch.tensor(0.1), "best_model_path": "epoch=4.ckpt"}},
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [],
        "hparams_name": "kwargs", "hyper_parameters": hyper_parameters,
    }


def build_example(out: str | Path, image_size: int = 64, epochs: int = 5, seed: int = 0,
                  progress: bool = True) -> Path:
    """Write the example under `out` and return its params file."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from .data import Dataset, ImageSet, PreprocessSpec
    from .models import train_classifier
    from .outputs import Outputs

    out = Path(out)
    d = load_digits()
    images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
    labels = (d.target % 2).astype(np.int64)  # 1: odd
    tr, te = train_test_split(np.arange(len(images)), test_size=0.3, stratify=labels, random_state=seed)
    write_folder(out / "data" / "train", images[tr], labels[tr])
    write_folder(out / "data" / "test", images[te], labels[te])

    torch.manual_seed(seed)
    model = binary_head_net()
    spec = PreprocessSpec(image_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True)
    train = ImageSet([images[i] for i in tr], labels[tr])
    ds = Dataset("example", list(CLASSES), train, train)
    lr, batch_size = 0.05, 64
    outputs = Outputs.for_data(1, list(CLASSES), POSITIVE)
    train_classifier(model, ds, spec, epochs, batch_size, lr, seed, progress, outputs)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ckpt = lightning_checkpoint(model, opt, epochs, epochs * ((len(tr) + batch_size - 1) // batch_size),
                                {"num_classes": 1, "threshold": 0.5, "lr": lr, "hidden": 128})
    ckpt_path = atomic_write(out / "binary-digits.ckpt", lambda tmp: torch.save(ckpt, tmp))
    params = {
        "target": "example-binary", "device": "cpu",
        "model": {"arch": "optlib.workload.example:binary_head_net", "num_classes": 1,
                  "checkpoint": str(ckpt_path.resolve()), "decision_threshold": 0.5},
        "data": {"root": str((out / "data" / "test").resolve()), "train_root": str((out / "data" / "train").resolve()),
                 "image_size": image_size, "positive_class": POSITIVE},
    }
    return write_text_atomic(yaml.safe_dump(params, sort_keys=False), out / "params.yaml")


def build_xray_example(out: str | Path, image_size: int = 224, test_images: int = 624, train_images: int = 2000,
                       steps: int = 60, batch_size: int = 32, seed: int = 0, target: str = "xray-resnet50",
                       file_sizes: tuple[int, int] | None = None, progress: bool = True) -> Path:
    """The user's case at its real size, offline: an ImageFolder of grayscale phantom PNGs
    (workload.phantoms; `test_images` like the public pediatric set's 624, `train_images` for
    calibration and fine-tuning, each file 1 to 1.4 times `image_size` high and up to 1.2 times as
    wide unless `file_sizes` says), a ResNet50 with an MLP head and one logit trained `steps` SGD
    steps from scratch, saved in Lightning's layout, and params/example-xray.yaml with its paths,
    model and positive class pointed at them (everything else as the template says). Returns the
    params file."""
    from ..core.paths import PARAMS_DIR
    from .data import Dataset, PreprocessSpec, load_image_folder
    from .outputs import Outputs
    from .training import FineTuneRecipe, finetune
    from . import phantoms

    out = Path(out)
    lo, hi = file_sizes or (image_size, int(round(image_size * 1.4)))
    for side, n, s in (("test", test_images, seed * 2 + 11), ("train", train_images, seed * 2 + 12)):
        if not (out / "data" / side).is_dir():  # drawn once: a rebuild with other steps reuses the images
            with atomic_folder(out / "data" / side) as tmp:  # whole or not at all
                phantoms.write_image_folder(tmp, n, s, sizes=(lo, hi), aspect=(1.0, 1.2))
    classes = list(phantoms.CLASSES)
    train, _, _ = load_image_folder(out / "data" / "train", classes)
    torch.manual_seed(seed)
    model = resnet50_head_net()
    spec = PreprocessSpec(image_size, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], True)
    lr = 0.05  # train.lr's default: the fine-tuning rates of 05 and 06 are fractions of it
    recipe = FineTuneRecipe(epochs=max(1, -(-steps * batch_size // train_images)), lr=lr, schedule="onecycle",
                            batch_size=batch_size, seed=seed, max_steps=steps)
    outputs = Outputs.for_data(1, classes, phantoms.POSITIVE)
    history = finetune(model, Dataset("xray-example", classes, train, train), spec, recipe, outputs, progress)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ckpt = lightning_checkpoint(model, opt, recipe.epochs, steps,
                                {"num_classes": 1, "threshold": 0.5, "lr": lr, "hidden": 256, "backbone": "resnet50"})
    ckpt_path = atomic_write(out / "xray-resnet50.ckpt", lambda tmp: torch.save(ckpt, tmp))
    params = yaml.safe_load((PARAMS_DIR / "example-xray.yaml").read_text())
    params["target"] = target
    params["model"].update(arch="optlib.workload.example:resnet50_head_net", checkpoint=str(ckpt_path.resolve()))
    params["data"].update(root=str((out / "data" / "test").resolve()), train_root=str((out / "data" / "train").resolve()),
                          image_size=image_size, positive_class=phantoms.POSITIVE)
    write_text_atomic(yaml.safe_dump({"steps": steps, "batch_size": batch_size, "history": history}, sort_keys=False),
                      out / "train-history.yaml")
    header = (f"# params/example-xray.yaml pointed at the phantoms and checkpoint of `python -m optlib example --xray "
              f"--out {out}`\n")
    return write_text_atomic(header + yaml.safe_dump(params, sort_keys=False), out / "params.yaml")
