"""The small models homomorphic-inference tests and benchmarks serve: square activations only,
since CKKS evaluates polynomials."""

from __future__ import annotations

import numpy as np
import torch


class Square(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


def square_mlp(x: np.ndarray, y: np.ndarray) -> torch.nn.Sequential:
    """A 10 -> 8 -> 1 network with square activation, fitted in float64 to standardised `y`."""
    y = (y - y.mean()) / y.std()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 8), Square(), torch.nn.Linear(8, 1)).double()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.03)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)[:, None]
    for _ in range(60):
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(net(inputs), targets).backward()
        optimiser.step()
    return net
