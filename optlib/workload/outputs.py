"""How a model's outputs become class decisions: one logit per class (softmax), or one logit for the
positive class of a binary problem (sigmoid), the usual form of medical classifiers ("classification
head + sigmoid + thresholding").

Every place that turns logits into predictions (metrics, fidelity, output checks, training losses)
goes through `Outputs`, so a single-logit model is first-class everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class OutputsError(ValueError):
    """The model's outputs contradict the data (class count, positive class)."""


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # stable for large |x|


@dataclass(frozen=True)
class Outputs:
    kind: str  # "softmax": one logit per class | "sigmoid": one logit for the positive class
    num_classes: int  # classes in the data (2 for sigmoid)
    positive_index: int | None = None  # the positive class (binary problems)
    threshold: float = 0.5  # binary: positive when its probability >= threshold

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def logits_per_image(self) -> int:
        return 1 if self.kind == "sigmoid" else self.num_classes

    def _check(self, logits) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim == 1:
            z = z[:, None]
        if z.shape[1] != self.logits_per_image:
            raise OutputsError(f"the model emits {z.shape[1]} logit(s) per image, expected {self.logits_per_image} "
                               f"({self.kind}, {self.num_classes} classes): check model.num_classes")
        return z

    def probabilities(self, logits) -> np.ndarray:
        """(N, num_classes) class probabilities."""
        z = self._check(logits)
        if self.kind == "softmax":
            return softmax(z)
        p = sigmoid(z[:, 0])
        out = np.empty((len(p), 2))
        out[:, self.positive_index] = p
        out[:, 1 - self.positive_index] = 1.0 - p
        return out

    def positive_scores(self, logits) -> np.ndarray:
        """(N,) probability of the positive class (binary problems)."""
        if not self.binary:
            raise OutputsError("positive_scores needs a binary problem")
        return self.probabilities(logits)[:, self.positive_index]

    def predict(self, logits) -> np.ndarray:
        """(N,) class indices: argmax, or for a binary problem the positive class when its
        probability reaches the threshold."""
        if self.binary:
            pos = self.positive_scores(logits) >= self.threshold
            return np.where(pos, self.positive_index, 1 - self.positive_index)
        return self._check(logits).argmax(axis=1)

    def loss(self, logits, labels):
        """The training loss (torch): cross entropy, or binary cross entropy on the single logit."""
        import torch.nn.functional as F

        if self.kind == "sigmoid":
            target = (labels == self.positive_index).to(logits.dtype)
            return F.binary_cross_entropy_with_logits(logits.reshape(-1), target)
        return F.cross_entropy(logits, labels)

    def distillation_loss(self, student, teacher, temperature: float = 1.0):
        """Knowledge distillation (Hinton et al. 2015, arXiv:1503.02531): the student's outputs
        against the teacher's, both softened by `temperature` and scaled by its square so the
        gradients keep their size. Softmax: KL(teacher || student); one sigmoid logit: binary cross
        entropy against the teacher's probability (the same divergence, up to a constant)."""
        import torch.nn.functional as F

        t = temperature
        if self.kind == "sigmoid":
            target = (teacher.reshape(-1) / t).sigmoid()
            return F.binary_cross_entropy_with_logits(student.reshape(-1) / t, target) * t * t
        return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                        log_target=True) * t * t

    def train_predictions(self, logits):
        """Decisions during training (torch), for the running training accuracy (probability 0.5)."""
        import torch

        if self.kind == "sigmoid":
            return torch.where(logits.reshape(-1) >= 0, self.positive_index, 1 - self.positive_index)
        return logits.argmax(1)

    @classmethod
    def for_data(cls, num_logits: int | None, class_names: list[str], positive_class: str | None,
                 threshold: float = 0.5, source: str = "the data") -> "Outputs":
        """The outputs of a model with `num_logits` logits (None: one per class) on these classes.

        Raises OutputsError, one line naming the key, when they contradict each other."""
        k = len(class_names)
        if positive_class is not None and positive_class not in class_names:
            raise OutputsError(f"'data.positive_class': {positive_class!r} is not one of the classes {class_names} "
                               f"found in {source}")
        pos = class_names.index(positive_class) if positive_class is not None else (1 if k == 2 else None)
        if num_logits == 1:
            if k != 2:
                raise OutputsError(f"'model.num_classes' is 1 (one sigmoid logit) but {source} has {k} classes "
                                   f"{class_names}: a single logit needs exactly two class folders")
            if positive_class is None:
                raise OutputsError("'model.num_classes' is 1 (one sigmoid logit): set 'data.positive_class' to the "
                                   f"class the logit scores (one of {class_names})")
            return cls("sigmoid", 2, pos, threshold)
        if num_logits is not None and num_logits != k:
            raise OutputsError(f"'model.num_classes' is {num_logits} but {source} has {k} classes {class_names}")
        return cls("softmax", k, pos, threshold)
