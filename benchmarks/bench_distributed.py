"""A job over a dataset larger than its memory: a `ray.data` mean in the job's private runtime.

The local pool (`Executor`, sandbox on) runs hand-made JobSpecs whose input is a folder of
Parquet partition files (`InputSpec(kind="distributed")`): the job's argument is a
`ray.data.Dataset` read by a Ray runtime the job starts inside its own sandbox
(jupyter_syft/domain/sandbox/runtime.py). Measured:
- start-up: a trivial job taking a distributed input minus the same job taking a small table
  (the private runtime's start, in the job's wall time), median of REPEATS;
- the mean of one column over ROWS rows of COLUMNS float64 columns, with the job's memory limit
  (JobSpec.memory_bytes) below the dataset's in-memory size; the job times the mean itself;
  peak memory is the job's cgroup's (memory.max_usage_in_bytes, polled), which holds every
  process of the job, the runtime's included.

Run: `.venv/bin/python benchmarks/bench_distributed.py [ROWS]` (as root, sandbox layers needed;
~2.5 GB of Parquet is written to a temporary folder; a few minutes on 2 cores).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from jupyter_syft.crypto.seal import ResultSeal, open_sealed
from jupyter_syft.domain.executor import Executor
from jupyter_syft.domain.jobs import InputSpec, JobOutcome, JobSpec
from jupyter_syft.domain.sandbox import cgroups
from jupyter_syft.identity import Identity
from jupyter_syft.wire.messages import Resources
from jupyter_syft.wire.values import decode_result, write_ipc_file

ROWS = 20_000_000
COLUMNS = 12
ROWS_PER_PART = 1_000_000
REPEATS = 1  # start-up runs (each ~1 min on a loaded 2-core machine)
MEMORY_LIMIT = 3 * 2**29  # 1.5 GiB
SCIENTIST = Identity.generate()
TRIVIAL = "def f(df):\n    return 1\n"
MEAN = """
import time

def f(df):
    started = time.perf_counter()
    mean = df.mean("c0")
    return {"mean": float(mean), "seconds": time.perf_counter() - started}
"""


def write_dataset(folder: Path, rows: int) -> int:
    """ROWS rows of COLUMNS float64 columns as part files; c0 is 0..rows-1. Its Arrow size."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    size = 0
    for index, start in enumerate(range(0, rows, ROWS_PER_PART)):
        count = min(ROWS_PER_PART, rows - start)
        columns = {"c0": np.arange(start, start + count, dtype=np.float64)}
        columns |= {f"c{i}": rng.random(count) for i in range(1, COLUMNS)}
        table = pa.table(columns)
        size += table.nbytes
        pq.write_table(table, folder / f"part-{index}.parquet")
        os.chmod(folder / f"part-{index}.parquet", 0o644)
    os.chmod(folder, 0o755)
    return size


def spec(folder: Path, code: str, inputs: dict[str, InputSpec], memory: int) -> JobSpec:
    return JobSpec(
        request_id="bench",
        code=code,
        function_name="f",
        inputs=inputs,
        output_dir=str(folder / f"out-{time.monotonic_ns()}"),
        domain_peer_id="domain",
        requester=SCIENTIST.peer_id,
        seal_to=SCIENTIST.peer_id,
        timeout_s=1800,
        memory_bytes=memory,
        resources=Resources(cpus=2, gpus=0, memory_mb=memory // 2**20),
    )


def result(job: JobSpec, outcome: JobOutcome) -> Any:
    if not outcome.ok:
        raise SystemExit(f"the job failed: {outcome.error_full}\n{outcome.log.decode()[-4000:]}")
    contexts = ResultSeal(job.request_id, job.domain_peer_id, job.requester)
    manifest_file = Path(job.output_dir) / "manifest.sealed"
    manifest = open_sealed(manifest_file.read_bytes(), SCIENTIST, contexts.manifest())
    return decode_result(manifest, [])


class PeakMemory:
    """The largest memory.max_usage_in_bytes of any job cgroup while it runs (v1 here)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        parent = cgroups.ROOT / "memory" / cgroups.PARENT
        while not self._stop.wait(0.2):
            for usage in parent.glob("worker-*/memory.max_usage_in_bytes"):
                try:
                    self.peak = max(self.peak, int(usage.read_text()))
                except (OSError, ValueError):
                    continue

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(executor: Executor, job: JobSpec) -> tuple[float, Any]:
    started = time.perf_counter()
    outcome = executor.run(job)
    return time.perf_counter() - started, result(job, outcome)


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else ROWS
    with tempfile.TemporaryDirectory() as tmp, Executor() as executor:
        root = Path(tmp)
        os.chmod(root, 0o755)
        print(f"writing {rows:,} rows x {COLUMNS} columns of Parquet...", flush=True)
        data_bytes = write_dataset(root / "data", rows)
        table_file = root / "small.arrow"
        write_ipc_file(table_file, pa.table({"c0": [1.0]}))
        executor.warm()
        distributed = {"df": InputSpec(path=str(root / "data"), kind="distributed")}
        table = {"df": InputSpec(path=str(table_file), kind="table")}
        plain, private = [], []
        for _ in range(REPEATS):
            plain.append(timed(executor, spec(root, TRIVIAL, table, MEMORY_LIMIT))[0])
            private.append(timed(executor, spec(root, TRIVIAL, distributed, MEMORY_LIMIT))[0])
        startup = statistics.median(private) - statistics.median(plain)
        peak = PeakMemory()
        wall, answer = timed(executor, spec(root, MEAN, distributed, MEMORY_LIMIT))
        peak_bytes = peak.stop()
    correct = abs(answer["mean"] - (rows - 1) / 2) < 1e-6 * rows
    table_out = Table(title=f"ray.data in a job's private runtime (load average {load()})")
    for column in (
        "rows",
        "dataset bytes (Arrow)",
        "memory limit",
        "job peak memory (cgroup)",
        "start-up s (vs plain job)",
        "mean s (in the job)",
        "job wall s",
        "result correct",
    ):
        table_out.add_column(column, justify="right")
    table_out.add_row(
        f"{rows:,}",
        f"{data_bytes / 2**20:,.0f} MiB",
        f"{MEMORY_LIMIT / 2**20:,.0f} MiB",
        f"{peak_bytes / 2**20:,.0f} MiB",
        f"{startup:.2f} (plain {statistics.median(plain):.2f})",
        f"{answer['seconds']:.2f}",
        f"{wall:.2f}",
        "yes" if correct else f"NO ({answer['mean']})",
    )
    Console(width=200).print(table_out)


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
