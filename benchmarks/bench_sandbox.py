"""The job runtime's cost: sandboxed jobs beside the unsandboxed path (`--sandbox off`), in one
run, on real domain processes.

Three domains with the sandbox on and three with it off, each holding a third of scikit-learn's
diabetes table; the first of each also a 1M x 10 float64 table and a 10-row one. Rows: a trivial
request (submit -> approve -> result), approved column means over the 1M x 10 table, a federated
round over the three domains (the tiny MLP of bench_federated.py), the first job after a node
starts, and a job in a cached declared environment against a plain one (sandboxed), with the
first build of that environment (one small pure-Python wheel from a local folder).
Run: `.venv/bin/python benchmarks/bench_sandbox.py` (about three minutes).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_diabetes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_foundation import median_time
from nodes import Approver, DomainProcess, person, start_all
from wheels import wheel_bytes, wheel_name

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.wire import messages as m

NAMES = ["north", "south", "east"]
MODES = ["on", "off"]


def trivial(df):
    return 1


def column_means(df):
    return df.mean()


def with_package(df):
    import benchsandboxpkg

    return benchsandboxpkg.VALUE + len(df)


def diabetes_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))


def run(
    scientist: DomainClient,
    admin: AdminClient,
    function: Callable,
    dataset: str,
    requirements: tuple[str, ...] = (),
) -> object:
    request = scientist.request(function, df=dataset, requirements=requirements)
    admin._connection.call(m.Decide(request.id, approve=True))
    return request.result(timeout=300)


def main() -> None:
    console = Console(width=160)
    root = Path(tempfile.mkdtemp(prefix="jsyft-bench-sandbox-"))
    wheels = root / "wheels"
    wheels.mkdir()
    (wheels / wheel_name("benchsandboxpkg", "1.0")).write_bytes(
        wheel_bytes("benchsandboxpkg", "1.0", "VALUE = 41\n")
    )
    _, scientist = person(root, "scientist")
    nodes: dict[str, dict[str, DomainProcess]] = {mode: {} for mode in MODES}
    for mode in MODES:
        for name in NAMES:
            home = person(root, f"owner-{mode}-{name}")[0]
            flags = ["--sandbox", mode, "--package-index", str(wheels)]
            nodes[mode][name] = DomainProcess(root, f"{name}-{mode}", home, *flags)
    # First job after start: each mode's first node is timed from its ready line.
    first_job: dict[str, float] = {}
    admins: dict[str, dict[str, AdminClient]] = {mode: {} for mode in MODES}
    clients: dict[str, list[DomainClient]] = {mode: [] for mode in MODES}
    diabetes = load_diabetes(as_frame=True).frame
    parts = np.array_split(np.arange(len(diabetes)), len(NAMES))
    rng = np.random.default_rng(0)
    big = pd.DataFrame(rng.normal(size=(1_000_000, 10)), columns=[f"c{i}" for i in range(10)])
    approvers = []
    try:
        for mode in MODES:
            for i, (name, node) in enumerate(nodes[mode].items()):
                if i == 0:
                    node.start()
                    started = time.perf_counter()
                    admin = AdminClient(
                        NodeConnection(node.address, person(root, f"owner-{mode}-{name}")[1])
                    )
                    admin.add_user(scientist.peer_id, "data_scientist", "scientist")
                    admin.create_dataset("tiny", private=big.head(10), mock=big.head(10))
                    client = DomainClient(NodeConnection(node.address, scientist))
                    run(client, admin, trivial, "tiny")
                    first_job[mode] = time.perf_counter() - started
            start_all(list(nodes[mode].values())[1:])
            for i, (name, node) in enumerate(nodes[mode].items()):
                identity = person(root, f"owner-{mode}-{name}")[1]
                admin = AdminClient(NodeConnection(node.address, identity))
                if i > 0:
                    admin.add_user(scientist.peer_id, "data_scientist", "scientist")
                part = diabetes.iloc[parts[i]].reset_index(drop=True)
                mock = part.copy()
                mock[:] = 0.0
                admin.create_dataset("diabetes", private=part, mock=mock)
                if i == 0:
                    admin.create_dataset("table", private=big, mock=big.head(1000))
                admins[mode][name] = admin
                clients[mode].append(DomainClient(NodeConnection(node.address, scientist)))

        # Every node's workers warm (torch, Opacus preloaded) before anything is timed.
        for mode in MODES:
            for name, client in zip(NAMES, clients[mode], strict=True):
                run(client, admins[mode][name], trivial, "diabetes")
        figures: dict[str, dict[str, float]] = {mode: {} for mode in MODES}
        for mode in MODES:
            admin, client = admins[mode][NAMES[0]], clients[mode][0]

            def trivial_job(admin: AdminClient = admin, client: DomainClient = client) -> object:
                return run(client, admin, trivial, "tiny")

            def means_job(admin: AdminClient = admin, client: DomainClient = client) -> object:
                return run(client, admin, column_means, "table")

            trivial_job()  # warm
            figures[mode]["trivial"] = median_time(trivial_job, 20)
            means_job()
            figures[mode]["means"] = median_time(means_job, 5)
        for mode in MODES:
            approver = Approver(admins[mode])
            approvers.append(approver)
            for secure in (False, True):
                _, history = syft.federated.train(
                    diabetes_model, clients[mode], dataset="diabetes", target="target",
                    rounds=12, local_epochs=1, lr=0.001, batch_size=16, loss="mse",
                    secure_aggregation=secure, show=False,
                )  # fmt: skip
                key = "round secure" if secure else "round"
                figures[mode][key] = statistics.median(r.seconds for r in history.rounds[1:])
            approver.close()

        admin, client = admins["on"][NAMES[0]], clients["on"][0]
        requirement = ("benchsandboxpkg==1.0",)
        started = time.perf_counter()
        run(client, admin, with_package, "tiny", requirement)
        first_build = time.perf_counter() - started
        cached = median_time(lambda: run(client, admin, with_package, "tiny", requirement), 20)
        plain = median_time(lambda: run(client, admin, trivial, "tiny"), 20)

        table = Table(
            "step", "sandbox on", "sandbox off (today's path)", "on - off", "on / off", "target",
            title="The job sandbox: cost against the unsandboxed path (same run, same machine)",
        )  # fmt: skip

        def row(label: str, key: str, unit: str, target: str) -> None:
            on, off = figures["on"][key], figures["off"][key]
            scale = 1000 if unit == "ms" else 1
            table.add_row(
                label, f"{on * scale:.1f} {unit}", f"{off * scale:.1f} {unit}",
                f"{(on - off) * 1000:+.1f} ms", f"{on / off:.2f}x", target,
            )  # fmt: skip

        row("trivial request -> approve -> result", "trivial", "ms", "on <= 50 ms")
        row("approved column means, 1M x 10", "means", "ms", "on / off <= 1.10")
        row("federated round, 3 domains, plain", "round", "ms", "on - off <= 100 ms")
        row("federated round, 3 domains, secure agg.", "round secure", "ms", "on - off <= 100 ms")
        table.add_row(
            "first job after the node starts (from its ready line)",
            f"{first_job['on']:.2f} s", f"{first_job['off']:.2f} s",
            f"{(first_job['on'] - first_job['off']) * 1000:+.0f} ms",
            f"{first_job['on'] / first_job['off']:.2f}x", "<= 1 s, or says warming up",
        )  # fmt: skip
        table.add_row(
            "job in a cached declared environment vs a plain job (both on)",
            f"{cached * 1000:.1f} ms", f"{plain * 1000:.1f} ms (plain, on)",
            f"{(cached - plain) * 1000:+.1f} ms", f"{cached / plain:.2f}x", "<= +20 ms",
        )  # fmt: skip
        table.add_row(
            "first build of an environment, one small wheel (on)",
            f"{first_build:.2f} s", "", "", "", "<= 10 s",
        )  # fmt: skip
        console.print(table)
    finally:
        for approver in approvers:
            approver.close()
        for mode in MODES:
            for node in nodes[mode].values():
                node.kill()


if __name__ == "__main__":
    main()
