"""Syft kernel benchmarks: real kernels (through jupyter_client) and a real domain process.

Prints one table. Run: `.venv/bin/python benchmarks/bench_kernel.py` (also part of `make bench`).
"""

from __future__ import annotations

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
from kernel_client import SyftKernel
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection

MOCK_CELL = "df.describe()"


def median_ms(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def interleaved_ms(
    first: Callable[[], object], second: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Medians of two actions run alternately, so drift in the machine's load hits both."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for action, kept in zip((first, second), times, strict=True):
            started = time.perf_counter()
            action()
            kept.append(time.perf_counter() - started)
    return statistics.median(times[0]) * 1000, statistics.median(times[1]) * 1000


def start_times(home: Path, repeat: int) -> tuple[float, float]:
    """Median seconds from launching a kernel to idle (kernel_info answered), and to its
    client node being up (`%syft whoami` answered)."""
    idle, node = [], []
    for _ in range(repeat):
        started = time.perf_counter()
        kernel = SyftKernel(home)
        idle.append(time.perf_counter() - started)
        assert kernel.execute("%syft whoami").status == "ok"
        node.append(time.perf_counter() - started)
        kernel.stop()
    return statistics.median(idle), statistics.median(node)


def import_seconds() -> float:
    """Median seconds `import jupyter_syft` takes in a fresh interpreter: most of the start."""
    code = "import time; t=time.perf_counter(); import jupyter_syft; print(time.perf_counter()-t)"
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(3)
    ]
    return statistics.median(runs)


def main() -> None:
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="jsyft-bench-kernel-"))
    owner_home, owner = person(root, "owner")
    scientist_home, scientist = person(root, "scientist")
    node = DomainProcess(root, "bench", owner_home)
    node.start()
    rows: list[tuple[str, str, str]] = []
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        rng = np.random.default_rng(0)
        table = pd.DataFrame(rng.normal(size=(100_000, 10)), columns=[f"c{i}" for i in range(10)])
        admin.create_dataset("table", private=table, mock=table.head(1000).copy())
        admin.add_user(scientist.peer_id)

        idle, node_up = start_times(scientist_home, 5)
        rows.append(("kernel start -> idle", f"{idle:.2f} s", "-"))
        rows.append(
            ("kernel start -> idle with the client node up", f"{node_up:.2f} s", "<= 1.5 s")
        )
        imported = f"{import_seconds():.2f} s"
        rows.append(("  of which `import jupyter_syft`", imported, "-"))

        kernel = SyftKernel(scientist_home)
        try:
            assert kernel.execute(f"%syft connect {node.address}").status == "ok"
            mock = f"%%mock bench/table as df\n{MOCK_CELL}"
            assert kernel.execute(mock).status == "ok"  # fetches the mock once: cached after
            plain, mocked = interleaved_ms(
                lambda: kernel.execute(MOCK_CELL), lambda: kernel.execute(mock), 40
            )
            rows.append((f"plain cell `{MOCK_CELL}` on a 1k x 10 frame", f"{plain:.1f} ms", "-"))
            rows.append(
                (
                    "same cell as %%mock (1k-row mock, cached)",
                    f"{mocked - plain:+.1f} ms",
                    "<= +20 ms",
                )
            )

            def request_to_result() -> None:
                cell = kernel.execute("%%request bench/table as df\n1")
                for review in admin.requests("pending"):
                    review.approve()
                kernel.update(cell.display_id, "result bound to")

            request_to_result()  # warm: the domain's first job starts its worker pool
            shown = median_ms(request_to_result, 20)
            rows.append(
                ("%%request trivial cell, approved by a script -> result shown", f"{shown:.1f} ms",
                 "<= 100 ms")
            )  # fmt: skip
        finally:
            kernel.stop()
    finally:
        node.stop()
    result = Table(
        "step",
        "jupyter-syft",
        "target",
        title="Syft kernel benchmarks (kernel via jupyter_client, domain process; medians)",
    )
    for row in rows:
        result.add_row(*row)
    console.print(result)


if __name__ == "__main__":
    main()
