"""Homomorphic inference over the wire: a real domain process serving models, this process as
owner and scientist (`domain.models[name].predict_encrypted(x)`).

One sample includes the scientist's encrypt and decrypt, the signed libp2p call and the
node's evaluation in a worker thread; the public context upload (once per domain) is measured
apart. Run: `.venv/bin/python benchmarks/bench_he_domain.py` (about 30 s).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_diabetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from he_models import Square
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.models import RemoteModel, he_keys, upload_context

MiB = 2**20
ONE_SAMPLE_RUNS = 30
BATCH_RUNS = 5


def main() -> None:
    console = Console(width=150)
    x = load_diabetes().data
    x = (x - x.mean(0)) / x.std(0)
    torch.manual_seed(0)
    models = {
        "linear 10 -> 1": torch.nn.Linear(10, 1).double(),
        "MLP 10 -> 8 -> 1, x^2": torch.nn.Sequential(
            torch.nn.Linear(10, 8), Square(), torch.nn.Linear(8, 1)
        ).double(),
    }
    root = Path(tempfile.mkdtemp(prefix="jsyft-bench-he-"))
    owner_home, owner = person(root, "owner")
    _, scientist_identity = person(root, "scientist")
    node = DomainProcess(root, "bench", owner_home)
    node.start()
    table = Table(title="Homomorphic inference served by a domain (CKKS, N = 8192, diabetes)")
    columns = [
        "model",
        "context upload (once)",
        "one sample p50 (target <= 100 ms)",
        "p95",
        "batch of 442",
        "batch of 4096",
        "samples/s",
        "max error",
    ]
    for column in columns:
        table.add_column(column, justify="right" if column != "model" else "left")
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.add_user(scientist_identity.peer_id)
        scientist = DomainClient(NodeConnection(node.address, scientist_identity))
        for index, (name, model) in enumerate(models.items()):
            admin.create_model(f"m{index}", model)
            remote = scientist.models[f"m{index}"]
            keys = he_keys(scientist_identity.peer_id, remote.spec.depth)
            started = time.perf_counter()
            upload_context(scientist._connection, keys)
            upload = time.perf_counter() - started
            remote.predict_encrypted(x[0])  # warm: first evaluation, pooled stream
            times = []
            for i in range(ONE_SAMPLE_RUNS):
                started = time.perf_counter()
                remote.predict_encrypted(x[i])
                times.append(time.perf_counter() - started)
            one = statistics.median(times)
            p95 = sorted(times)[int(0.95 * len(times)) - 1]
            small = min(batch_time(remote, x) for _ in range(BATCH_RUNS))
            big_x = np.resize(x, (4096, x.shape[1]))
            big = min(batch_time(remote, big_x) for _ in range(BATCH_RUNS))
            with torch.no_grad():
                expected = model(torch.from_numpy(big_x)).numpy()
            error = np.abs(remote.predict_encrypted(big_x) - expected).max()
            table.add_row(
                name,
                f"{upload:.2f} s ({len(keys.public_context()) / MiB:.0f} MiB)",
                f"[{'green' if one <= 0.1 else 'red'}]{one * 1e3:.0f} ms[/]",
                f"{p95 * 1e3:.0f} ms",
                f"{small * 1e3:.0f} ms",
                f"{big * 1e3:.0f} ms",
                f"{4096 / big:,.0f}",
                f"{error:.1e}",
            )
    finally:
        node.kill()
    table.caption = (
        "one sample and batches: encrypt + signed call + evaluation on the node (worker "
        "thread) + decrypt, measured at the scientist; batches: one ciphertext per feature"
    )
    console.print(table)


def batch_time(remote: RemoteModel, x: np.ndarray) -> float:
    started = time.perf_counter()
    remote.predict_encrypted(x)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
