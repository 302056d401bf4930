"""Foundation benchmarks: a real domain process and this process as owner and scientist.

Prints one table of ours against the targets. PySyft 0.9.5, timed on the same steps in the
same run, is `make bench-peers` (benchmarks/bench_peers.py imports `measure` from here).
Run: `make bench` (or `.venv/bin/python benchmarks/bench_foundation.py`).
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import values

MiB = 2**20


def median_time(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def column_means(df):
    return df.mean()


def trivial(df):
    return 1


def tensor_100mib(df):
    import torch

    return torch.rand(100 * 2**20 // 8, dtype=torch.float64)


def approve_and_wait(
    scientist: DomainClient, admin: AdminClient, function, dataset: str = "table"
) -> object:
    request = scientist.request(function, df=dataset)
    admin._connection.call(m.Decide(request.id, approve=True))
    request.wait(timeout=120)
    return request


def raw_socket_seconds(nbytes: int) -> float:
    """Copy `nbytes` over a loopback TCP socket to another process; seconds to receive all."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    sender = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import socket,sys\n"
                f"s=socket.create_connection(('127.0.0.1',{port}))\n"
                f"b=bytes({8 * MiB})\n"
                f"for _ in range({nbytes // (8 * MiB)}): s.sendall(b)\n"
                "s.close()\n"
            ),
        ]
    )
    connection, _ = server.accept()
    buffer = bytearray(nbytes)
    view = memoryview(buffer)
    started = time.perf_counter()
    received = 0
    while received < nbytes:
        n = connection.recv_into(view[received:])
        if n == 0:
            break
        received += n
    seconds = time.perf_counter() - started
    connection.close()
    server.close()
    sender.wait()
    return seconds


def first_use_seconds(address: str, home: Path) -> float:
    """A fresh interpreter: import jupyter_syft, connect to the domain, list its datasets."""
    code = (
        "import time; t = time.perf_counter(); import jupyter_syft as syft; "
        f"syft.connect({address!r}).datasets; print(time.perf_counter() - t)"
    )
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    runs = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
        )
        runs.append(float(done.stdout.split()[-1]))
    return statistics.median(runs)


def measure() -> dict[str, float]:
    """Seconds per step (medians) against one real domain process; bench_peers.py times
    PySyft 0.9.5 on the same steps (upload, means, trivial, fetch)."""
    root = Path(tempfile.mkdtemp(prefix="jsyft-bench-"))
    owner_home, owner = person(root, "owner")
    _, scientist_identity = person(root, "scientist")
    node = DomainProcess(root, "bench", owner_home)
    node.start()
    figures: dict[str, float] = {}
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.add_user(scientist_identity.peer_id)
        scientist = DomainClient(NodeConnection(node.address, scientist_identity))
        rng = np.random.default_rng(0)
        table = pd.DataFrame(rng.normal(size=(1_000_000, 10)), columns=[f"c{i}" for i in range(10)])
        mock = table.head(1000).copy()

        counter = iter(range(100))
        figures["upload"] = median_time(
            lambda: admin.create_dataset(f"upload{next(counter)}", private=table, mock=mock), 3
        )
        admin.create_dataset("table", private=table, mock=mock)
        figures["means"] = median_time(
            lambda: approve_and_wait(scientist, admin, column_means).result(), 3
        )

        # A trivial function reads a tiny dataset: the 76 MiB table would cost ~70 ms to map.
        admin.create_dataset("tiny", private=table.head(10), mock=mock.head(10))
        approve_and_wait(scientist, admin, trivial, "tiny").result()  # warm
        figures["trivial"] = median_time(
            lambda: approve_and_wait(scientist, admin, trivial, "tiny").result(), 20
        )

        big = approve_and_wait(scientist, admin, tensor_100mib)

        def fetch_result() -> object:  # a fresh request object: nothing cached
            return type(big)(big._connection, big.info).result()

        def flight_only() -> object:
            part = big._connection.call(m.FetchResult(big.id)).parts[0]  # type: ignore[union-attr]
            return big._connection.flight.get(part.ticket)

        fetch_result()  # warm: the first use imports torch in this process
        figures["fetch"] = median_time(fetch_result, 5)
        figures["transfer"] = median_time(flight_only, 5)
        figures["raw"] = statistics.median(raw_socket_seconds(100 * MiB) for _ in range(3))

        connection = scientist._connection

        def fetch_mock() -> object:
            return values.table_to_data(connection.table(connection.call(m.GetMock("table"))))

        fetch_mock()
        figures["mock"] = median_time(fetch_mock, 20)
        figures["first_use"] = first_use_seconds(node.address, root / "homes" / "scientist")
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)  # four copies of the 76 MiB table
    return figures


def main() -> None:
    f = measure()
    gib_s = 100 / 1024
    rows = [
        ("upload 1M x 10 float64 (76 MiB) + 1k mock", f"{f['upload']:.3f} s", "<= 0.4 s", ""),
        ("approved column means, submit -> result", f"{f['means']:.3f} s", "<= 0.5 s", ""),
        ("trivial function: request -> approve -> result", f"{f['trivial'] * 1000:.1f} ms",
         "<= 50 ms", ""),
        ("100 MiB tensor result to the scientist",
         f"{gib_s / f['fetch']:.2f} GiB/s ({f['fetch'] * 1000:.0f} ms)", ">= 1 GiB/s",
         f"raw socket {gib_s / f['raw']:.1f} GiB/s, ours/raw {f['raw'] / f['fetch']:.2f}"),
        ("  of which the TLS Flight transfer",
         f"{gib_s / f['transfer']:.2f} GiB/s ({f['transfer'] * 1000:.0f} ms)", "-",
         f"flight/raw {f['raw'] / f['transfer']:.2f}"),
        ("fetch a 1k-row mock (warm connection)", f"{f['mock'] * 1000:.1f} ms", "<= 20 ms", ""),
        ("new process: import jupyter_syft, connect, list datasets", f"{f['first_use']:.2f} s",
         "-", ""),
    ]  # fmt: skip
    result = Table(
        "step", "jupyter-syft", "target", "notes",
        title="Foundation benchmarks (domain and client in separate processes, loopback; medians)",
    )  # fmt: skip
    for row in rows:
        result.add_row(*row)
    console = Console(width=150)
    console.print(result)
    console.print("PySyft 0.9.5 on the same steps, timed in the same run: `make bench-peers`.")


if __name__ == "__main__":
    main()
