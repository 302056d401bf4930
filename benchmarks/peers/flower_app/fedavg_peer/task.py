"""The model and the local training, as jupyter-syft's `federated.local.train_round` does them.

The data (three partitions and the initial weights) come from the driver, bench_peers.py, in
one .npz file: both systems start from the same rows and the same weights.
"""

from __future__ import annotations

import numpy as np
import torch


class Progression(torch.nn.Module):
    """bench_federated.py's diabetes model: an MLP scaled to the target's range."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 150.0 + 75.0 * self.net(20.0 * x)


def initial_state(data: str) -> dict[str, torch.Tensor]:
    with np.load(data) as npz:
        return {k[len("w:") :]: torch.from_numpy(npz[k]) for k in npz.files if k.startswith("w:")}


def partition(data: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    with np.load(data) as npz:
        return torch.from_numpy(npz[f"x{index}"]), torch.from_numpy(npz[f"y{index}"])


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
) -> float:
    """Adam, minibatches in a random order, MSE; the mean loss over the last epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    total = 0.0
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(x)).split(batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[batch]).reshape(-1), y[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
    return total / len(x)
