"""Privacy benchmarks: DP queries through a real domain process, DP-SGD's cost, and the cost of
floating-point-safe noise for DP-SGD.

1. An auto-approved DP mean on a 1M-row private table, submit to result (target ≤ 100 ms),
   with a DP histogram and a grouped mean on the same table for comparison.
2. A DP-SGD epoch (Opacus) against the same non-private epoch, same model and data
   (target < 3x for a small MLP).
3. Opacus's Gaussian noise comes from torch's generator, which floating-point attacks can
   exploit (secure_mode needs torchcsprng, unavailable for current torch). The alternative
   measured here draws the noise for the summed clipped gradients from OpenDP's
   floating-point-safe Gaussian instead.

Run: `.venv/bin/python benchmarks/bench_privacy.py`.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient

ROWS = 1_000_000
REPEAT = 25


def times(action: Callable[[], object], repeat: int) -> list[float]:
    found = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        found.append(time.perf_counter() - started)
    return found


def ms(values: list[float]) -> str:
    low, *_, high = (1000 * q for q in statistics.quantiles(values, n=10))
    return f"{statistics.median(values) * 1000:.1f} ms (p10 {low:.0f}, p90 {high:.0f})"


# ---- 1. DP queries through a domain ------------------------------------------------------------


def query_rows() -> list[tuple[str, str, str]]:
    root = Path(tempfile.mkdtemp(prefix="jsyft-bench-privacy-"))
    owner_home, owner = person(root, "owner")
    _, scientist_identity = person(root, "scientist")
    node = DomainProcess(root, "bench", owner_home)
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        rng = np.random.default_rng(0)
        table = pd.DataFrame(
            {
                "bmi": rng.uniform(15, 50, ROWS),
                "age": rng.integers(18, 90, ROWS),
                "sex": rng.choice(["F", "M"], ROWS),
            }
        )
        admin.create_dataset("patients", private=table, mock=table.head(100))
        admin.add_user(scientist_identity.peer_id)
        admin.set_budget(scientist_identity.peer_id, "patients", epsilon=1000.0)
        admin.set_policy("patients", auto_approve=True, max_query_epsilon=1.0)
        scientist = DomainClient(NodeConnection(node.address, scientist_identity))
        dp = scientist.datasets["patients"].dp

        def mean() -> object:
            return dp.mean("bmi", bounds=(15, 50), epsilon=0.01).result()

        def histogram() -> object:
            return dp.histogram("age", categories=list(range(18, 90)), epsilon=0.01).result()

        def grouped() -> object:
            return dp.mean("bmi", bounds=(15, 50), epsilon=0.01, by="sex", groups=["F", "M"])

        mean()  # warm: first connection and first job
        return [
            (
                "DP mean, 1M rows, auto-approved: submit -> result",
                ms(times(mean, REPEAT)),
                "<= 100 ms",
            ),
            ("DP histogram (72 categories), 1M rows", ms(times(histogram, 10)), "-"),
            ("grouped DP mean (2 groups), 1M rows", ms(times(grouped, 10)), "-"),
        ]
    finally:
        node.stop()


# ---- 2 and 3. DP-SGD ---------------------------------------------------------------------------


def make_mlp(features: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(features, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)
    )


def training_data(rows: int) -> torch.utils.data.TensorDataset:
    if rows == 0:  # scikit-learn's breast-cancer table, scaled to [0, 1]
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        x = (x - x.min(0)) / (x.max(0) - x.min(0))
    else:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(rows, 30))
        y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return torch.utils.data.TensorDataset(
        torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)
    )


def opendp_noise(optimizer: Any) -> Callable[[], None]:
    """An `add_noise` for an Opacus DPOptimizer that draws the Gaussian noise for all summed
    clipped gradients at once from OpenDP's floating-point-safe sampler."""
    import opendp.mod as dp
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
    from opendp import domains, measurements, metrics

    dp.enable_features("contrib")
    gaussian = measurements.make_gaussian(
        domains.vector_domain(domains.atom_domain(T="f32", nan=False)),
        metrics.l2_distance(T="f32"),
        scale=optimizer.noise_multiplier * optimizer.max_grad_norm,
    )

    def add_noise(self: Any) -> None:
        for p in self.params:
            _check_processed_flag(p.summed_grad)
        flat = torch.cat([p.summed_grad.reshape(-1) for p in self.params]).numpy()
        noisy = torch.tensor(gaussian(flat), dtype=torch.float32)
        offset = 0
        for p in self.params:
            size = p.summed_grad.numel()
            p.grad = noisy[offset : offset + size].view_as(p).clone()
            offset += size
            _mark_as_processed(p.summed_grad)

    return types.MethodType(add_noise, optimizer)


def epoch(rows: int, batch_size: int, mode: str) -> Callable[[], None]:
    """One training epoch: "plain" torch, "opacus", or Opacus with OpenDP noise."""
    from opacus import PrivacyEngine

    data = training_data(rows)
    model = make_mlp(30)
    optimizer: Any = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=mode == "plain")
    if mode != "plain":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
                module=model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=1.0,
                max_grad_norm=1.0,
            )
        if mode == "opendp":
            optimizer.add_noise = opendp_noise(optimizer)

    def run() -> None:
        for x, y in loader:
            if len(x) == 0:
                continue
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

    return run


def epoch_seconds(rows: int, batch_size: int, modes: list[str], epochs: int) -> list[float]:
    """Median epoch time of each mode, their epochs taken in turn so that load from other
    processes falls on all of them alike."""
    runs = [epoch(rows, batch_size, mode) for mode in modes]
    seconds: list[list[float]] = [[] for _ in modes]
    for _ in range(epochs):
        for run, found in zip(runs, seconds, strict=True):
            found += times(run, 1)
    return [statistics.median(found) for found in seconds]


def noise_seconds_per_parameter() -> tuple[float, float]:
    """Seconds per parameter to draw Gaussian noise: OpenDP (f32) and torch."""
    import opendp.mod as dp
    from opendp import domains, measurements, metrics

    dp.enable_features("contrib")
    gaussian = measurements.make_gaussian(
        domains.vector_domain(domains.atom_domain(T="f32", nan=False)),
        metrics.l2_distance(T="f32"),
        scale=1.0,
    )
    size = 20_000
    zeros = np.zeros(size, dtype=np.float32)
    opendp_s = statistics.median(times(lambda: gaussian(zeros), 3)) / size
    torch_s = statistics.median(times(lambda: torch.normal(0, 1.0, (size,)), 20)) / size
    return opendp_s, torch_s


def training_rows() -> list[tuple[str, str, str]]:
    rows = []
    parameters = sum(p.numel() for p in make_mlp(30).parameters())
    for label, n, batch, epochs in (
        ("breast cancer (569 rows), MLP 30-32-2, batch 64", 0, 64, 30),
        ("synthetic 20k rows, MLP 30-32-2, batch 256", 20_000, 256, 5),
    ):
        plain, private = epoch_seconds(n, batch, ["plain", "opacus"], epochs)
        rows.append(
            (
                f"DP-SGD epoch / plain epoch: {label}",
                f"{private / plain:.2f}x ({private * 1000:.0f} vs {plain * 1000:.0f} ms)",
                "< 3x",
            )
        )
    plain, private, secure = epoch_seconds(0, 64, ["plain", "opacus", "opendp"], 5)
    rows.append(
        (
            f"  breast cancer with OpenDP-sampled noise ({parameters} parameters)",
            f"{secure / plain:.1f}x plain, {secure / private:.1f}x Opacus ({secure * 1000:.0f} ms)",
            "-",
        )
    )
    opendp_s, torch_s = noise_seconds_per_parameter()
    rows.append(
        (
            "Gaussian noise per parameter per step: OpenDP vs torch",
            f"{opendp_s * 1e6:.1f} µs vs {torch_s * 1e9:.1f} ns ({opendp_s / torch_s:.0f}x); "
            f"1M-parameter model: {opendp_s * 1e6:.0f} s per step",
            "-",
        )
    )
    return rows


def main() -> None:
    torch.set_num_threads(1)  # both sides of each ratio alike, and less noise from other load
    # Opacus's hooks make torch say this on every backward pass; it is expected.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    rows = query_rows() + training_rows()
    table = Table(
        "step", "jupyter-syft", "target", title="Privacy benchmarks (medians; loopback, CPU)"
    )
    for row in rows:
        table.add_row(*row)
    Console(width=150).print(table)


if __name__ == "__main__":
    main()
