"""Small builders shared by the tests."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.resnet import BasicBlock, ResNet


def tiny_resnet(num_classes: int = 2, blocks: int = 2) -> torch.nn.Module:
    """torchvision's ResNet18 (`blocks` per stage: 2), seeded; blocks=1 halves what a compile builds."""
    torch.manual_seed(0)
    return ResNet(BasicBlock, [blocks] * 4, num_classes=num_classes).eval()


def write_image_folder(root: Path, classes=("NORMAL", "PNEUMONIA"), per_class: int = 6, size=(40, 48),
                       corrupt: bool = True, seed: int = 0) -> Path:
    """A binary grayscale/RGB ImageFolder with one corrupt image and one non-image file."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=size, dtype=np.uint8)
            arr[: size[0] // 2] //= (ci + 1)  # classes differ a little
            mode_rgb = i % 3 == 0
            img = Image.fromarray(np.stack([arr] * 3, -1) if mode_rgb else arr)
            img.save(d / f"img{i}.{'jpg' if i % 2 else 'png'}")
    if corrupt:
        (root / classes[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        (root / classes[1] / "notes.txt").write_text("not an image")
    return root


HOLD_MB = 48


class HoldingModel(torch.nn.Module):
    """Pools the image to 3 values for a linear classifier, and multiplies a fresh HOLD_MB-MB
    tensor by a parameter on the way: autograd keeps that tensor until backward, so a training step
    holds at least HOLD_MB MB above the resting process (a known allocation)."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(3, num_classes)
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        held = torch.ones(HOLD_MB * 2 ** 20 // 4)
        return self.fc(x.mean(dim=(2, 3))) + (held * self.scale).sum() * 0


def holding_model(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return HoldingModel(num_classes).eval()


# The whole smoke pipeline took 8 min on 2026-11-25 and over 15 on 2026-12-02 (a machine about twice
# as slow that day): the limit only catches a hung run.
RUN_TIMEOUT_S = 3600


def run_cli(args, out_root, check=True):
    """`python -m optlib *args` with its outputs under `out_root`; a non-zero exit fails with its output's tail."""
    from optlib.core import paths

    env = {**os.environ, "OPTLIB_OUTPUT_ROOT": str(out_root)}
    p = subprocess.run([sys.executable, "-m", "optlib", *args], cwd=paths.REPO_DIR, env=env,
                       capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if check and p.returncode != 0:
        raise AssertionError(f"optlib {args} exited {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def read_record(out_root, target, name):
    return json.loads((out_root / target / "results" / f"{name}.json").read_text())
