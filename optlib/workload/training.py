"""One training loop for everything that trains: the embedded default model (from scratch),
fine-tuning after pruning, quantization-aware training and the dense control.

`finetune(model, dataset, spec, recipe, ...)` runs SGD (momentum 0.9, Nesterov, weight decay) on
the training side only, with light shift augmentation, under the recipe's learning-rate schedule.
`FineTuneRecipe.freeze_at` names the epoch (1-based) from which `on_freeze(model)` is called once,
e.g. QAT freezing its observers and BatchNorm statistics; `lr_after_freeze` scales the rate from
there on. The loss follows the model's outputs (cross entropy, or binary cross entropy for one
sigmoid logit).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..core.choices import SCHEDULES, check_choice
from .data import Dataset, PreprocessSpec, preprocess
from .outputs import Outputs


@dataclass
class FineTuneRecipe:
    epochs: int
    lr: float  # peak learning rate (absolute)
    schedule: str = "cosine"  # onecycle (warm-up then anneal: training from scratch) | cosine | constant
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 5e-4
    freeze_at: int | None = None  # epoch (1-based) from which on_freeze has been applied; None: never
    lr_after_freeze: float = 1.0  # multiplies the scheduled rate from freeze_at on
    distill: float = 0.0  # weight of the distillation loss against a teacher (0: labels only, 1: teacher only)
    temperature: float = 1.0  # the distillation's softening temperature
    train_images: int | None = None  # the first this many of a permutation of the training side seeded by `seed`
    max_steps: int | None = None  # optimizer steps in all (the schedule spans them); None: every epoch's

    def __post_init__(self):
        check_choice("finetune.schedule", self.schedule, SCHEDULES)
        if (self.epochs < 0 or self.lr <= 0 or self.batch_size < 1 or not 0 <= self.distill <= 1 or self.temperature <= 0
                or (self.train_images is not None and self.train_images < 2)
                or (self.max_steps is not None and self.max_steps < 1)):
            raise ValueError(f"fine-tune recipe needs epochs >= 0, lr > 0, batch_size >= 1, 0 <= distill <= 1, "
                             f"temperature > 0, train_images >= 2 and max_steps >= 1 (or None), got {self}")

    @classmethod
    def from_params(cls, params, epochs: int, **overrides) -> "FineTuneRecipe":
        """The params' fine-tuning recipe (finetune.*: the rate relative to train.lr, the schedule)
        for `epochs` epochs."""
        f = params.finetune
        kw = dict(epochs=epochs, lr=params.train.lr * f.lr_scale, schedule=f.schedule,
                  batch_size=f.batch_size or params.train.batch_size, seed=f.seed, train_images=f.train_images,
                  max_steps=f.max_steps)
        return cls(**{**kw, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def _scheduler(opt, recipe: FineTuneRecipe, steps: int):
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def finetune(model: nn.Module, dataset: Dataset, spec: PreprocessSpec, recipe: FineTuneRecipe,
             outputs: Outputs | None = None, progress: bool = True, on_freeze=None, desc: str = "train",
             teacher: nn.Module | None = None) -> list[dict]:
    """Train `model` in place on dataset.train under `recipe`; returns one dict per epoch (loss,
    training accuracy, learning rate at its end, seconds, frozen or not). Leaves it in eval mode.

    With a `teacher` (in eval mode, not trained) and recipe.distill > 0 the loss is
    (1 - distill) x the labels' loss + distill x the distillation loss against the teacher's
    outputs on the same augmented batch: a compressed model then learns the decisions of the model
    it replaces, which is what its accuracy change against that model measures."""
    from tqdm.auto import tqdm

    if dataset.train is None or len(dataset.train) == 0:
        raise ValueError("training needs the training side: set data.train_root (the evaluated images are never used)")
    outputs = outputs or Outputs.for_data(None, dataset.class_names, None)
    _seed_everything(recipe.seed)
    images, labels = dataset.train.images, dataset.train.labels
    if recipe.train_images is not None and recipe.train_images < len(images):
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(recipe.seed))[:recipe.train_images]
        images, labels = [images[i] for i in keep.tolist()], labels[keep.numpy()]
    x = preprocess(images, spec)
    y = torch.from_numpy(labels)
    bs = recipe.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay, nesterov=True)
    steps = max(1, recipe.epochs * ((len(x) + bs - 1) // bs))
    if recipe.max_steps is not None:
        steps = min(steps, recipe.max_steps)
    done = 0
    sched = _scheduler(opt, recipe, steps)
    g = torch.Generator().manual_seed(recipe.seed)
    history = []
    distill = recipe.distill if teacher is not None else 0.0
    if distill:
        teacher.eval()
    model.train()
    frozen = False
    for epoch in tqdm(range(recipe.epochs), desc=desc, disable=not progress):
        if done >= steps:  # max_steps reached (without it, steps counts every batch of every epoch)
            break
        if recipe.freeze_at is not None and epoch + 1 >= recipe.freeze_at and not frozen:
            if on_freeze is not None:
                on_freeze(model)
            frozen = True
        t0 = time.perf_counter()
        perm = torch.randperm(len(x), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(x), bs):
            idx = perm[i:i + bs]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            if done >= steps:
                break
            xb, yb = x[idx], y[idx]
            # Light augmentation: random shifts of up to 1/8 of the image.
            shift = spec.image_size // 8
            dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=g))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            out = model(xb)
            loss = outputs.loss(out, yb)
            if distill:
                with torch.no_grad():
                    target = teacher(xb)
                loss = (1 - distill) * loss + distill * outputs.distillation_loss(out, target, recipe.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if frozen and recipe.lr_after_freeze != 1.0:
                for group in opt.param_groups:
                    group["lr"] *= recipe.lr_after_freeze
                opt.step()
                for group in opt.param_groups:
                    group["lr"] /= recipe.lr_after_freeze
            else:
                opt.step()
            sched.step()
            done += 1
            loss_sum += loss.item() * len(idx)
            correct += int((outputs.train_predictions(out) == yb).sum())
            total += len(idx)
        history.append({"epoch": epoch + 1, "loss": loss_sum / max(total, 1), "train_accuracy": correct / max(total, 1),
                        "lr_end": opt.param_groups[0]["lr"] * (recipe.lr_after_freeze if frozen else 1.0),
                        "seconds": time.perf_counter() - t0, "frozen": frozen})
    model.eval()
    return history
