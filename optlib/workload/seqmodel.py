"""The classic dynamic-quantization case: a GRU that reads each 8x8 digit row by row."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn



class DigitsGRU(nn.Module):
    def __init__(self, hidden: int = 256, layers: int = 2, num_classes: int = 10):
        super().__init__()
        self.hidden, self.layers, self.num_classes = hidden, layers, num_classes
        self.gru = nn.GRU(input_size=8, hidden_size=hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return out[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def rows(images: list[np.ndarray]) -> torch.Tensor:
    """(N, 8 rows, 8 pixels) in [0, 1]: each row is one time step."""
    return torch.from_numpy(np.stack(images).astype(np.float32) / 255.0)


def train_gru(model: DigitsGRU, images, labels, epochs: int = 15, lr: float = 3e-3, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    x, y = rows(images), torch.from_numpy(np.asarray(labels))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    model.eval()
    return losses
