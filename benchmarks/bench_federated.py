"""Federated learning across real domain processes: accuracy against central training, and
the overhead of a round.

Three domains each hold a third of the training rows of scikit-learn's diabetes table
(regression, 10 features) and of its breast cancer table (classification, 30 features); the
held-out test rows stay with the scientist. "central" trains the same model, from the same
initial weights, with the same optimizer and the same number of epochs (rounds x local epochs)
on the pooled training rows in this process, through the same training code the domains run.

Round overhead is everything in a round but local training: the round's wall time (send the
weights, start a job worker on each domain, wait, combine) minus the time the same local
training takes in this process on one domain's rows.

Run: `.venv/bin/python benchmarks/bench_federated.py` (about two minutes; `--quick` for less).
Flower's FedAvg on the same rows, timed in the same run: `make bench-peers` (bench_peers.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_breast_cancer, load_diabetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodes import Approver, DomainProcess, person, start_all

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.federated import DP
from jupyter_syft.federated.local import train_round
from jupyter_syft.federated.weights import to_safetensors
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m

NAMES = ["north", "south", "east"]
console = Console(width=160)


def diabetes_model():
    import torch

    class Progression(torch.nn.Module):
        """An MLP whose output is scaled to the target's public range (about 25 to 350)."""

        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1)
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 150.0 + 75.0 * self.net(20.0 * x)  # sklearn's features are about +-0.05

    torch.manual_seed(0)
    return Progression()


def cancer_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def split(frame: pd.DataFrame, test_rows: int) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    test, train = frame.iloc[:test_rows], frame.iloc[test_rows:]
    parts = np.array_split(np.arange(len(train)), len(NAMES))
    return [train.iloc[p].reset_index(drop=True) for p in parts], test


def central(
    make_model: Any, train: pd.DataFrame, features: list[str], settings: dict[str, Any]
) -> Any:
    """The same model and training code on the pooled rows, for rounds x local epochs."""
    plan = m.FederatedPlan(
        "", "", features, "target", rounds=1,
        local_epochs=settings["rounds"] * settings["local_epochs"],
        batch_size=settings["batch_size"], learning_rate=settings["lr"],
        loss=settings["loss"], feature_bounds=settings.get("feature_bounds", []),
    )  # fmt: skip
    model = make_model()
    table = pa.Table.from_pandas(train, preserve_index=False)
    train_round(plan, table, model, to_safetensors(make_model().state_dict()), None)
    return model


def score(model: Any, test: pd.DataFrame, features: list[str], settings: dict[str, Any]) -> float:
    x = test[features].to_numpy(dtype=np.float32)
    if settings.get("feature_bounds"):
        low, high = np.array(settings["feature_bounds"], dtype=np.float32).T
        x = (np.clip(x, low, high) - low) / (high - low)
    with torch.no_grad():
        output = model(torch.from_numpy(x)).numpy()
    if settings["loss"] == "cross_entropy":
        return float(np.mean(output.argmax(axis=1) == test["target"].to_numpy()))
    return float(np.mean((output.ravel() - test["target"].to_numpy()) ** 2))


def federated(
    domains: list[DomainClient],
    dataset: str,
    make_model: Any,
    settings: dict[str, Any],
    **extra: Any,
) -> tuple[Any, Any]:
    return syft.federated.train(
        make_model, domains, dataset=dataset, target="target", show=False, **settings, **extra
    )


def start_domains(
    root: Path,
    scientist: Identity,
    tables: dict[str, list[pd.DataFrame]],
    nodes: dict[str, DomainProcess],
) -> dict[str, AdminClient]:
    """Start a domain process per name into `nodes` (the caller kills them, even when this
    fails half way), each holding its part of every table with an all-zero mock; the
    scientist is a member with a DP budget on each. The owners' admin clients, by name."""
    for name in NAMES:
        nodes[name] = DomainProcess(root, name, person(root, f"owner-{name}")[0])
    start_all(nodes.values())
    admins = {}
    for i, (name, node) in enumerate(nodes.items()):
        admin = AdminClient(NodeConnection(node.address, person(root, f"owner-{name}")[1]))
        admin.add_user(scientist.peer_id, "data_scientist", "scientist")
        for dataset, parts in tables.items():
            mock = parts[i].copy()
            mock[:] = 0.0
            admin.create_dataset(dataset, private=parts[i], mock=mock)
            admin.set_budget(scientist.peer_id, dataset, epsilon=100.0, delta=1e-3)
        admins[name] = admin
    return admins


def regression_settings(rounds: int) -> dict[str, Any]:
    """The diabetes MLP's training settings (bench_peers.py gives Flower the same)."""
    return {"rounds": rounds, "local_epochs": 5, "lr": 0.001, "batch_size": 16, "loss": "mse"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--overhead-only", action="store_true", help="skip the accuracy table")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-federated-"))
    _, scientist = person(root, "scientist")
    nodes: dict[str, DomainProcess] = {}
    approver = None
    try:
        diabetes_parts, diabetes_test = split(load_diabetes(as_frame=True).frame, 88)
        cancer = load_breast_cancer(as_frame=True).frame
        cancer_parts, cancer_test = split(cancer, 114)
        diabetes_features = [c for c in diabetes_test.columns if c != "target"]
        cancer_features = [c for c in cancer_test.columns if c != "target"]
        tables = {"diabetes": diabetes_parts, "cancer": cancer_parts}
        admins = start_domains(root, scientist, tables, nodes)
        approver = Approver(admins)
        domains = [DomainClient(NodeConnection(n.address, scientist)) for n in nodes.values()]

        rounds = 5 if args.quick else 20
        regression = regression_settings(rounds)
        # Public bounds per feature (here: the table's range, taken as known to everyone).
        bounds = [(float(cancer[c].min()), float(cancer[c].max())) for c in cancer_features]
        classification = {"rounds": rounds, "local_epochs": 2, "lr": 0.01, "batch_size": 16,
                          "loss": "cross_entropy", "feature_bounds": bounds}  # fmt: skip
        # DP-SGD wants few, larger, noisier steps: 4 rounds of 2 epochs, SGD, batch 32.
        dp_epsilon = 8.0
        dp_settings = {"rounds": 4, "local_epochs": 2, "batch_size": 32, "optimizer": "sgd"}
        dp_lr = {"mse": 0.3, "cross_entropy": 1.0}

        accuracy = Table(
            "task", "metric", "central", "federated", "fed / central",
            "federated + secure agg.", f"federated + secure agg. + DP (epsilon {dp_epsilon:g})",
            title=f"Test scores, {rounds} rounds (DP: 4), 3 domains, central = same epochs",
        )  # fmt: skip
        cases = [
            ("diabetes MLP 10-32-1", "diabetes", diabetes_model, regression,
             diabetes_parts, diabetes_test, diabetes_features, "test MSE"),
            ("breast cancer MLP 30-16-2", "cancer", cancer_model, classification,
             cancer_parts, cancer_test, cancer_features, "test accuracy"),
        ]  # fmt: skip
        for label, dataset, make_model, settings, parts, test, features, metric in cases:
            if args.overhead_only:
                break
            pooled = pd.concat(parts, ignore_index=True)
            central_score = score(central(make_model, pooled, features, settings), test,
                                  features, settings)  # fmt: skip
            scores = []
            for secure, dp in ((False, None), (True, None), (True, DP(dp_epsilon, 1e-5, 1.0))):
                if dp is not None:
                    settings = {**settings, **dp_settings, "lr": dp_lr[settings["loss"]]}
                model, _ = federated(domains, dataset, make_model, settings,
                                     secure_aggregation=secure, dp=dp)  # fmt: skip
                inner = model.model if hasattr(model, "model") else model  # BoundedInput
                scores.append(score(inner, test, features, settings))
            accuracy.add_row(
                label, metric, f"{central_score:.4g}", f"{scores[0]:.4g}",
                f"{scores[0] / central_score:.3f}", f"{scores[1]:.4g}", f"{scores[2]:.4g}",
            )  # fmt: skip
        if not args.overhead_only:
            console.print(accuracy)

        overhead = Table(
            "aggregation", "round (median)", "local training", "overhead", "target",
            "round / local training", title="Round overhead, 3 domains, diabetes MLP, 1 epoch",
        )  # fmt: skip
        one_epoch = {**regression, "rounds": 6 if args.quick else 12, "local_epochs": 1}
        table = pa.Table.from_pandas(diabetes_parts[0], preserve_index=False)
        plan = m.FederatedPlan("", "", diabetes_features, "target", rounds=1, local_epochs=1,
                               batch_size=16, learning_rate=0.05)  # fmt: skip
        weights = to_safetensors(diabetes_model().state_dict())
        train_round(plan, table, diabetes_model(), weights, None)  # warm
        local = []
        for _ in range(10):
            started = time.perf_counter()
            train_round(plan, table, diabetes_model(), weights, None)
            local.append(time.perf_counter() - started)
        local_s = statistics.median(local)
        for secure in (False, True):
            _, history = federated(domains, "diabetes", diabetes_model, one_epoch,
                                   secure_aggregation=secure)  # fmt: skip
            round_s = statistics.median(r.seconds for r in history.rounds[1:])
            overhead.add_row(
                "secure" if secure else "plain", f"{round_s * 1000:.0f} ms",
                f"{local_s * 1000:.0f} ms", f"{(round_s - local_s) * 1000:.0f} ms", "<= 200 ms",
                f"{round_s / local_s:.1f}x",
            )  # fmt: skip
        console.print(overhead)
    finally:
        if approver is not None:
            approver.close()
        for node in nodes.values():
            node.kill()


if __name__ == "__main__":
    main()
