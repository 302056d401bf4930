"""Local pool vs Ray executor, in one run: prints one table.

(a) 200 trivial jobs from 4 scientists at once, owner auto-approving: throughput (jobs/s) and
p50/p95 latency (submit to result), on a domain with the local pool and on a domain with
`--executor ray` on a two-node Ray cluster (tests/ray_cluster.py: both nodes on this machine,
one CPU each, inside a network namespace). Run as root: `.venv/bin/python benchmarks/bench_ray.py`.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from nodes import DomainProcess, person
from ray_cluster import ADDRESS, RayCluster

JOBS = 200
SCIENTISTS = ("s1", "s2", "s3", "s4")

WORKLOAD = """
    import statistics, threading, time
    from pathlib import Path
    import pandas as pd
    from nodes import Approver, person
    from jupyter_syft.client.admin import AdminClient
    from jupyter_syft.client.connection import NodeConnection
    from jupyter_syft.client.domain import DomainClient

    root, address, names, jobs = Path(ROOT), ADDRESS, NAMES, JOBS
    admin = AdminClient(NodeConnection(address, person(root, "owner")[1]))
    admin.create_dataset("numbers", private=pd.DataFrame({"n": range(100)}),
                         mock=pd.DataFrame({"n": range(5)}))
    clients = []
    for name in names:
        admin.add_user(person(root, name)[1].peer_id, "data_scientist", name)
        clients.append(DomainClient(NodeConnection(address, person(root, name)[1])))
    # Warm: one job first, so both executors' workers are started before timing.
    first = clients[0].submit("def f(df):\\n    return 0\\n", "f", {"df": "numbers"})
    admin.get_request(first.id).approve()
    first.result(timeout=300)
    approver = Approver({"domain": admin})
    latencies, failures = [], []

    def scientist(client, count):
        for _ in range(count):
            started = time.monotonic()
            try:
                request = client.submit("def f(df):\\n    return int(df['n'].sum())\\n", "f",
                                        {"df": "numbers"})
                request.result(timeout=600)
                latencies.append(time.monotonic() - started)
            except Exception as e:
                failures.append(repr(e))

    # Each scientist keeps several requests in flight (a notebook with a few cells running).
    threads = [threading.Thread(target=scientist, args=(client, jobs // len(clients) // 5))
               for client in clients for _ in range(5)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    approver.close()
    latencies.sort()
    emit({"jobs": len(latencies), "failures": failures[:3], "wall": wall,
          "p50": latencies[len(latencies) // 2], "p95": latencies[int(len(latencies) * 0.95)]})
"""


def run_workload(cluster: RayCluster, root: Path, *flags: str) -> dict:
    owner_home, _ = person(root, "owner")
    for name in SCIENTISTS:
        person(root, name)
    node = DomainProcess(root, "domain", owner_home, "--workers", "8", *flags)
    node.prefix = cluster.ns.command([])
    node.environment = {"HOME": str(cluster.home)}
    node.start()
    try:
        code = textwrap.dedent(WORKLOAD)
        code = code.replace("ROOT", repr(str(root))).replace("ADDRESS", repr(node.address))
        code = code.replace("NAMES", repr(SCIENTISTS)).replace("JOBS", str(JOBS))
        result: dict = cluster.script(code, timeout=1800)
    finally:
        node.kill()
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bray", dir="/tmp") as folder:
        base = Path(folder)
        cluster = RayCluster(base / "r")
        try:
            local = run_workload(cluster, base / "local")
            ray = run_workload(cluster, base / "ray", "--executor", "ray", "--ray-address", ADDRESS)
        finally:
            cluster.close()
    print(f"\nRay cluster (2 nodes, 1 CPU each, this machine) up in {cluster.start_seconds:.1f} s")
    print(
        f"| {JOBS} trivial jobs, {len(SCIENTISTS)} scientists | jobs/s | p50 s | p95 s | failed |"
    )
    print("|---|---|---|---|---|")
    for name, row in (("local pool (--workers 8)", local), ("Ray, 2 nodes x 1 CPU", ray)):
        rate = row["jobs"] / row["wall"]
        failed = JOBS - row["jobs"]
        print(f"| {name} | {rate:.1f} | {row['p50']:.2f} | {row['p95']:.2f} | {failed} |")


if __name__ == "__main__":
    main()
