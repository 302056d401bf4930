"""Local pool vs Ray executor, in one run: prints one table.

(a) 200 trivial jobs from 4 scientists at once, owner auto-approving: throughput (jobs/s) and
p50/p95 latency (submit to result), on a domain with the local pool and on a domain with
`--executor ray` on a two-node Ray cluster (tests/ray_cluster.py: both nodes on this machine,
one CPU each, inside a network namespace).
(b) one CPU-bound computation split over 4 requests (each one Ray task of 1 cpu), wall time from
submission to the last result on 2 Ray nodes, then on 1 (the worker node killed): the ratio.
Run as root: `.venv/bin/python benchmarks/bench_ray.py`.
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


SPLIT = 4
CPU_BOUND = """
    import time
    from pathlib import Path
    import pandas as pd
    from nodes import Approver, person
    from jupyter_syft.client.admin import AdminClient
    from jupyter_syft.client.connection import NodeConnection
    from jupyter_syft.client.domain import DomainClient

    root, address, split = Path(ROOT), ADDRESS, SPLIT
    admin = AdminClient(NodeConnection(address, person(root, "owner")[1]))
    scientist = DomainClient(NodeConnection(address, person(root, "s1")[1]))
    approver = Approver({"domain": admin})
    # One CPU-bound computation (a sum of squares in pure Python) split over `split` requests,
    # each a quarter of the range: each is one Ray task of 1 cpu.
    source = (
        "def part(df, index={index}, split={split}, n=48_000_000):\\n"
        "    step = n // split\\n"
        "    return sum(i * i for i in range(index * step, (index + 1) * step))\\n"
    )
    started = time.monotonic()
    requests = [scientist.submit(source.format(index=i, split=split), "part", {"df": "numbers"})
                for i in range(split)]
    total = sum(request.result(timeout=600) for request in requests)
    wall = time.monotonic() - started
    approver.close()
    n = 48_000_000
    emit({"wall": wall, "correct": total == (n - 1) * n * (2 * n - 1) // 6})
"""


def start_domain(cluster: RayCluster, root: Path, *flags: str) -> DomainProcess:
    owner_home, _ = person(root, "owner")
    for name in SCIENTISTS:
        person(root, name)
    node = DomainProcess(root, "domain", owner_home, "--workers", "8", *flags)
    node.prefix = cluster.ns.command([])
    node.environment = {"HOME": str(cluster.home)}
    node.start()
    return node


def run(cluster: RayCluster, node: DomainProcess, root: Path, workload: str) -> dict:
    code = textwrap.dedent(workload).replace("ROOT", repr(str(root)))
    code = code.replace("ADDRESS", repr(node.address)).replace("NAMES", repr(SCIENTISTS))
    code = code.replace("JOBS", str(JOBS)).replace("SPLIT", str(SPLIT))
    result: dict = cluster.script(code, timeout=1800)
    return result


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bray", dir="/tmp") as folder:
        base = Path(folder)
        cluster = RayCluster(base / "r")
        try:
            node = start_domain(cluster, base / "local")
            try:
                local = run(cluster, node, base / "local", WORKLOAD)
            finally:
                node.kill()
            ray_flags = ("--executor", "ray", "--ray-address", ADDRESS)
            node = start_domain(cluster, base / "ray", *ray_flags)
            try:
                ray = run(cluster, node, base / "ray", WORKLOAD)
                two_nodes = run(cluster, node, base / "ray", CPU_BOUND)
                cluster.kill_node("worker")
                one_node = run(cluster, node, base / "ray", CPU_BOUND)
            finally:
                node.kill()
        finally:
            cluster.close()
    print(f"\nRay cluster (2 nodes, 1 CPU each, this machine) up in {cluster.start_seconds:.1f} s")
    rate = {name: row["jobs"] / row["wall"] for name, row in (("local", local), ("ray", ray))}
    rows = [
        (f"{JOBS} trivial jobs, {len(SCIENTISTS)} scientists: jobs/s", rate["local"], rate["ray"]),
        ("  latency p50 s", local["p50"], ray["p50"]),
        ("  latency p95 s", local["p95"], ray["p95"]),
        ("  failed", JOBS - local["jobs"], JOBS - ray["jobs"]),
        (f"CPU-bound job split over {SPLIT} tasks, 2 Ray nodes: wall s", None, two_nodes["wall"]),
        ("  the same on 1 Ray node: wall s", None, one_node["wall"]),
        ("  1 node / 2 nodes", None, one_node["wall"] / two_nodes["wall"]),
        ("  results correct", None, two_nodes["correct"] and one_node["correct"]),
    ]
    print("| measure | local pool (--workers 8) | Ray, 2 nodes x 1 CPU |")
    print("|---|---|---|")
    for name, on_local, on_ray in rows:
        print(f"| {name} | {_cell(on_local)} | {_cell(on_ray)} |")


def _cell(value: float | bool | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


if __name__ == "__main__":
    main()
