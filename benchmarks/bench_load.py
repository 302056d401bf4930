"""Sustained load: 20 scientist processes making mixed calls for 60 s against one domain.

Each client process has its own identity, registered as a data scientist, and cycles through
five calls: list datasets, fetch the mock, submit a request, read a request's status, submit a
DP query. Requests and DP queries stay pending (no auto-approval): this measures the control
plane and the store, not the job pool. Prints calls/s, errors and latency percentiles per
kind, and the node's RSS (the node process alone, without its job workers) in the first and
last 10 s. Targets (issue 13): >= 200 calls/s, 0 errors, RSS within 10 %.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_load.py [--clients N --seconds S]`).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import Dataset, DomainClient

KINDS = ("list", "mock", "submit", "status", "dp_query")
WARMUP_S = 3.0


def column_means(df):
    return df.mean()


def client(home: str, address: str, start_at: float, seconds: float, results: mp.Queue) -> None:
    """One scientist: connect, wait for the common start, cycle the five calls until the end.
    Puts (kind, start offset, latency, error text) per call on `results`."""
    from jupyter_syft.identity import load_or_create

    identity = load_or_create(Path(home) / "identity.key")
    domain = DomainClient(NodeConnection(address, identity))
    table = domain.datasets["table"]
    own = [domain.request(column_means, df="table")]
    calls = {
        "list": lambda: domain.datasets,
        "mock": lambda: Dataset(table._connection, table.info).mock,  # fresh: not cached
        "submit": lambda: own.append(domain.request(column_means, df="table")),
        "status": lambda: own[-1].status,
        "dp_query": lambda: table.dp.mean("c0", bounds=(-4.0, 4.0), epsilon=0.01),
    }
    time.sleep(max(0.0, start_at - time.time()))
    records = []
    end = start_at + seconds
    i = 0
    while time.time() < end:
        kind = KINDS[i % len(KINDS)]
        i += 1
        started = time.perf_counter()
        offset = time.time() - start_at
        error = ""
        try:
            calls[kind]()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        records.append((kind, offset, time.perf_counter() - started, error))
    results.put(records)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_rss(pid: int, start_at: float, stop: threading.Event, out: list) -> None:
    while not stop.wait(0.5):
        out.append((time.time() - start_at, rss_kib(pid)))


def percentile_ms(latencies: list[float], q: float) -> str:
    return f"{np.percentile(latencies, q) * 1000:.1f}" if latencies else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    console = Console(width=150)
    root = Path(tempfile.mkdtemp(prefix="jsyft-load-"))
    owner_home, owner = person(root, "owner")
    homes = []
    for i in range(args.clients):
        home, _ = person(root, f"scientist{i}")
        homes.append(home)
    node = DomainProcess(root, "load", owner_home)
    node.start()
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        rng = np.random.default_rng(0)
        table = pd.DataFrame(rng.normal(size=(2000, 4)), columns=[f"c{i}" for i in range(4)])
        admin.create_dataset("table", private=table, mock=table.head(100) * 0 + 0.5)
        for home in homes:
            peer_id = person(root, home.name)[1].peer_id
            admin.add_user(peer_id, "data_scientist", home.name)
            admin.set_budget(peer_id, "table", epsilon=10.0)
        context = mp.get_context("spawn")
        results: mp.Queue = context.Queue()
        # Every process connects first; the clock starts for all of them at once.
        start_at = time.time() + WARMUP_S + 0.25 * args.clients
        workers = [
            context.Process(
                target=client, args=(str(home), node.address, start_at, args.seconds, results)
            )
            for home in homes
        ]
        for worker in workers:
            worker.start()
        assert node.process is not None
        sampler = threading.Thread(
            target=sample_rss, args=(node.process.pid, start_at, stop, samples), daemon=True
        )
        sampler.start()
        time.sleep(max(0.0, start_at - time.time()))
        cpu_before = cpu_seconds(node.process.pid)
        records = [r for _ in workers for r in results.get(timeout=args.seconds + 120)]
        cpu = cpu_seconds(node.process.pid) - cpu_before  # the clients are done by now
        for worker in workers:
            worker.join(timeout=30)
        stop.set()
        sampler.join()
    finally:
        stop.set()
        node.stop()
    seconds = args.seconds
    result = Table(
        "call",
        "calls",
        "calls/s",
        "errors",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        title=(
            f"Sustained load: {args.clients} client processes, mixed calls for {seconds:g} s "
            "against one domain (loopback, 2 cores shared by clients and node)"
        ),
    )
    errors: dict[str, int] = {}
    for kind in (*KINDS, "all"):
        mine = [r for r in records if kind in ("all", r[0])]
        latencies = [r[2] for r in mine if not r[3]]
        failed = [r[3] for r in mine if r[3]]
        for text in failed:
            errors[text] = errors.get(text, 0) + 1
        result.add_row(
            kind,
            str(len(mine)),
            f"{len(mine) / seconds:.0f}",
            str(len(failed)),
            percentile_ms(latencies, 50),
            percentile_ms(latencies, 95),
            percentile_ms(latencies, 99),
        )
    console.print(result)
    first = [kib for at, kib in samples if 0 <= at < 10]
    last = [kib for at, kib in samples if seconds - 10 <= at < seconds]
    if first and last:
        before, after = np.mean(first) / 1024, np.mean(last) / 1024
        console.print(
            f"node RSS (node process only, VmRSS): first 10 s {before:.1f} MiB, last 10 s "
            f"{after:.1f} MiB ({(after - before) / before * 100:+.1f} %)"
        )
    share = cpu / seconds * 100
    console.print(f"node CPU: {cpu:.1f} s in {seconds:g} s ({share:.0f} % of one core)")
    for text, count in sorted(errors.items(), key=lambda e: -e[1])[:10]:
        console.print(f"{count} x {text}")


if __name__ == "__main__":
    main()
