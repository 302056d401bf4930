"""Declared environments: what a first build costs, and what a job in a cached one costs.

A real domain process builds from a local folder of small pure-Python wheels (no network; the
same uv steps as against PyPI: resolve with hashes, install wheels only). Prints one table.
Run: `.venv/bin/python benchmarks/bench_environments.py`.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from nodes import DomainProcess, person
from wheels import wheel_bytes, wheel_name

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.wire import messages as m

FIRST_BUILDS = 5  # each with a wheel of its own, so each is a real first build
JOBS = 40


def plain(df):
    return len(df)


def with_package(df):
    import time

    started = time.perf_counter()
    import benchpkg0

    return time.perf_counter() - started + benchpkg0.VALUE  # seconds to import it, in the job


def run(
    scientist: DomainClient, admin: AdminClient, function, requirements: list[str]
) -> tuple[float, object]:
    """Seconds from submission to the result in hand (the owner approving at once), and it."""
    started = time.perf_counter()
    request = scientist.request(function, df="tiny", requirements=requirements)
    admin._connection.call(m.Decide(request.id, approve=True))
    value = request.result(timeout=120)
    return time.perf_counter() - started, value


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="jsyft-bench-env-"))
    index = root / "wheels"
    index.mkdir()
    for i in range(FIRST_BUILDS):
        functions = "".join(f"def f{j}(x):\n    return x + {j}\n" for j in range(20))
        source = f"VALUE = {i}\n{functions}"
        wheel = wheel_bytes(f"benchpkg{i}", "1.0", source)
        (index / wheel_name(f"benchpkg{i}", "1.0")).write_bytes(wheel)
    owner_home, owner = person(root, "owner")
    _, scientist_identity = person(root, "scientist")
    node = DomainProcess(root, "bench", owner_home, "--package-index", str(index))
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.add_user(scientist_identity.peer_id)
        scientist = DomainClient(NodeConnection(node.address, scientist_identity))
        tiny = pd.DataFrame({"x": np.arange(10.0)})
        admin.create_dataset("tiny", private=tiny, mock=tiny)
        run(scientist, admin, plain, [])  # warm: the forkserver's imports, the first job

        first = [
            run(scientist, admin, plain, [f"benchpkg{i}==1.0"])[0] for i in range(FIRST_BUILDS)
        ]
        entries = admin.audit_log(limit=10_000).entries
        built = [e for e in entries if e.action == "environment_built"]
        builds = [json.loads(e.detail)["seconds"] for e in built]
        assert len(builds) == FIRST_BUILDS, builds

        plain_s, cached_s, declared_s, imports = [], [], [], []
        for _ in range(JOBS):  # interleaved, so all see the same machine
            plain_s.append(run(scientist, admin, plain, [])[0])
            seconds, imported = run(scientist, admin, with_package, ["benchpkg0==1.0"])
            cached_s.append(seconds)
            imports.append(imported)
            declared_s.append(run(scientist, admin, plain, ["benchpkg0==1.0"])[0])
        entries = admin.audit_log(limit=10_000).entries
        assert sum(e.action == "environment_built" for e in entries) == FIRST_BUILDS  # cached
    finally:
        node.kill()

    plain_ms = statistics.median(plain_s) * 1000
    cached_ms = statistics.median(cached_s) * 1000
    declared_ms = statistics.median(declared_s) * 1000
    rows = [
        ("first build of an environment, one small wheel (resolve + install)",
         f"{statistics.median(builds):.2f} s (max {max(builds):.2f} s)", "<= 10 s"),
        ("  request -> approve -> result, with that first build",
         f"{statistics.median(first):.2f} s", "-"),
        ("plain job: request -> approve -> result", f"{plain_ms:.1f} ms", "-"),
        ("job in the cached environment, importing its package", f"{cached_ms:.1f} ms", "-"),
        ("  cached environment - plain job", f"{cached_ms - plain_ms:+.1f} ms", "<= 20 ms"),
        ("  the plain function, environment declared - plain job",
         f"{declared_ms - plain_ms:+.1f} ms", "-"),
        ("  importing the package, timed inside the job",
         f"{statistics.median(imports) * 1000:.2f} ms", "-"),
    ]  # fmt: skip
    table = Table(title="Declared environments (uv, wheels from a local folder index)")
    for column in ("step", "jupyter-syft", "target"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=130).print(table)


if __name__ == "__main__":
    main()
