"""A job whose input is a ray.data Dataset, in its sandbox: a Ray runtime private to the job.

The local pool (sandbox on) runs hand-made JobSpecs whose input is a folder of Parquet
partition files (`InputSpec(kind="distributed")`). The job's argument is a real
`ray.data.Dataset`, read by a Ray runtime started inside the job's own sandbox
(jupyter_syft/domain/sandbox/runtime.py). Then that runtime is attacked from the job's code and
from its Ray tasks: connecting out, reading what is not the job's input, starting processes past
the limit, leaving a process behind, using more memory than the job may. A marker is searched in
everything that comes back; the listener must receive nothing. Checks that test independent
things share one job (a runtime start takes seconds) and are asserted each from its report.
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_executor import SCIENTIST, result
from test_sandbox_attacks import Listener, processes_by_uid

from jupyter_syft.domain.executor import Executor
from jupyter_syft.domain.jobs import InputSpec, JobOutcome, JobSpec
from jupyter_syft.domain.sandbox import JOB_UID_BASE
from jupyter_syft.domain.sandbox.runtime import RUNTIME_PROCESSES
from jupyter_syft.wire.messages import Resources

pytestmark = pytest.mark.timeout(900)
MARKER = "DISTRIBUTED-SECRET-MARKER-91c2"
ROWS, PARTS = 4000, 4
MEMORY = 1536 * 2**20
MAX_PROCESSES = 64  # the executor's default; a distributed job adds RUNTIME_PROCESSES


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    with Executor(max_processes=MAX_PROCESSES) as executor:
        executor.warm()
        yield executor


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A storage location with the job's dataset and another one (the marker), and a key."""
    root = tmp_path_factory.mktemp("storage")
    os.chmod(root, 0o755)
    values = np.random.default_rng(7).normal(50, 10, ROWS)
    patients = root / "patients"
    other = root / "other"
    for folder in (patients, other):
        folder.mkdir(mode=0o755)
    for i, part in enumerate(np.array_split(values, PARTS)):
        pq.write_table(pa.table({"x": part}), patients / f"part-{i}.parquet")
    pq.write_table(pa.table({"secret": [MARKER] * 10}), other / "part-0.parquet")
    key = root / "node.key"
    key.write_text(MARKER)
    key.chmod(0o600)
    return {"root": root, "patients": patients, "other": other, "key": key, "values": values}


def job(folder: Path, storage: dict[str, Any], code: str, **options: Any) -> JobSpec:
    options.setdefault("memory_bytes", MEMORY)
    options.setdefault("timeout_s", 300)
    folder.mkdir(exist_ok=True)
    return JobSpec(
        request_id="req-distributed",
        code=textwrap.dedent(code),
        function_name="f",
        inputs={"df": InputSpec(path=str(storage["patients"]), kind="distributed")},
        output_dir=str(folder / "out"),
        domain_peer_id="domain-peer",
        requester=SCIENTIST.peer_id,
        seal_to=SCIENTIST.peer_id,
        resources=Resources(cpus=2, gpus=0, memory_mb=options["memory_bytes"] // 2**20),
        **options,
    )


class JobUids:
    """The uids of this executor's jobs seen while it runs (a job's uid is JOB_UID_BASE plus
    its keeper's pid, and keepers are children of our forkserver); other engineers' jobs on the
    same machine are not counted."""

    def __init__(self) -> None:
        forkserver = multiprocessing.forkserver._forkserver._forkserver_pid
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(forkserver,), daemon=True)
        self._thread.start()

    def _poll(self, forkserver: int) -> None:
        while not self._stop.wait(0.05):
            for _, uid in processes_by_uid():
                if uid >= JOB_UID_BASE and parent(uid - JOB_UID_BASE) == forkserver:
                    self.seen.add(uid)

    def stop(self) -> set[int]:
        self._stop.set()
        self._thread.join()
        return self.seen


def parent(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    return int(status.split("PPid:")[1].split()[0])


def run_watched(executor: Executor, spec: JobSpec) -> tuple[JobOutcome, set[int], list[int]]:
    """Run the job; its uids and the processes of them still running 10 s after it ended."""
    watcher = JobUids()
    outcome = executor.run(spec)
    uids = watcher.stop()
    deadline = time.monotonic() + 10
    while (left := survivors(uids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return outcome, uids, left


def survivors(uids: set[int]) -> list[int]:
    return [pid for pid, uid in processes_by_uid() if uid in uids]


def everything_returned(spec: JobSpec, outcome: JobOutcome) -> str:
    text = outcome.error + outcome.error_full + outcome.log.decode(errors="replace")
    if outcome.ok:
        text += repr(result(spec, outcome))
    return text


LIMIT = MAX_PROCESSES + RUNTIME_PROCESSES
# One job (one private runtime start) runs the checks that test independent things, each
# reported under its own key: the dataset, the attacks from the driver and from a Ray task, and
# the processes past the limit and the one left behind. Each test asserts its own part.
CHECKS = """
import os
import socket
import time
import ray
import ray.data
from ray.data.aggregate import Count, Mean, Sum

def dataset_checks(df):
    assert isinstance(df, ray.data.Dataset), type(df)
    kept = df.map_batches(
        lambda batch: {{"x": batch["x"], "y": batch["x"] * 2}}, batch_format="numpy"
    )
    totals = kept.aggregate(Count(), Mean("x"), Sum("y"))
    names = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with open(f"/proc/{{pid}}/comm") as comm:
                names.add(comm.read().strip())
    return {{
        "mean": totals["mean(x)"],
        "count": totals["count()"],
        "doubled_sum": totals["sum(y)"],
        "processes": sorted(names),
        "nodes": [node["NodeManagerAddress"] for node in ray.nodes()],
    }}

def attempt(what, action):
    try:
        return f"{{what}}: GOT {{action()!r}}"
    except Exception as e:
        return f"{{what}}: refused ({{type(e).__name__}})"

def read(path):
    with open(path, "rb") as file:
        return file.read()

def connect(host, port):
    with socket.create_connection((host, port), timeout=3) as conn:
        conn.sendall(b"leaked")
        return "sent"

def attacks():
    return [
        attempt("node listener", lambda: connect("127.0.0.1", {port})),
        attempt("node listener by ipv6", lambda: connect("::ffff:127.0.0.1", {port})),
        attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)),
        attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)),
        attempt("node key", lambda: read({key!r})),
        attempt("other dataset", lambda: read({other!r})),
        attempt("beside the input", lambda: read("/inputs/0/../other/part-0.parquet")),
        attempt("the location", lambda: read("/inputs/0/../../other/part-0.parquet")),
        attempt("write the input", lambda: open("/inputs/0/part-0.parquet", "wb")),
        attempt("the node's old root", lambda: read("/.old-root" + {key!r})),
    ]

@ray.remote(max_retries=0)
def in_a_task():
    return attacks()

@ray.remote(max_retries=0)
def fork_many(count):
    children = []
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(600)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return len(children)

@ray.remote(max_retries=0)
def leave_behind():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)
    return "left"

def f(df):
    # The forks first: their children are gone before Ray Data's actors take their memory.
    report = {{"started": ray.get(fork_many.remote({limit}))}}
    report["driver"] = attacks()
    report["task"] = ray.get(in_a_task.remote())
    report["inputs"] = sorted(os.listdir("/inputs/0/.."))
    report["dataset"] = dataset_checks(df)
    report["left"] = ray.get(leave_behind.remote())
    return report
"""


@pytest.fixture(scope="module")
def checked(
    executor: Executor, storage: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The one job that runs CHECKS: its report, its uids, what survived it, what the node's
    listener received and everything that came back."""
    listener = Listener()
    try:
        code = CHECKS.format(
            port=listener.port,
            key=str(storage["key"]),
            other=str(storage["other"] / "part-0.parquet"),
            limit=LIMIT,
        )
        spec = job(tmp_path_factory.mktemp("checks"), storage, code)
        outcome, uids, left = run_watched(executor, spec)
        time.sleep(0.5)  # a connection on its way would have arrived
        heard = (listener.connections, bytes(listener.received))
    finally:
        listener.close()
    return {
        "report": result(spec, outcome),
        "uids": uids,
        "left": left,
        "heard": heard,
        "returned": everything_returned(spec, outcome),
    }


def test_the_argument_is_a_ray_data_dataset_that_streams(
    checked: dict[str, Any], storage: dict[str, Any]
) -> None:
    found = checked["report"]["dataset"]
    values = storage["values"]
    assert found["count"] == ROWS
    assert found["mean"] == pytest.approx(values.mean())
    assert found["doubled_sum"] == pytest.approx(2 * values.sum())
    # The runtime is the job's own: its daemons are in the job's PID namespace, on loopback.
    assert {"gcs_server", "raylet"} <= set(found["processes"])
    assert found["nodes"] == ["127.0.0.1"]
    assert len(checked["uids"]) == 1  # every process of the job, Ray's included, had its uid


def test_attacks_from_the_job_and_its_ray_tasks_find_nothing(checked: dict[str, Any]) -> None:
    found = checked["report"]
    assert checked["heard"] == (0, b"")
    assert len(found["driver"]) == len(found["task"]) == 10
    for line in found["driver"] + found["task"]:
        assert ": refused (" in line, line
    assert found["inputs"] == ["0"]  # above the input folder: nothing but the job's inputs
    assert MARKER not in checked["returned"]


def test_processes_past_the_limit_and_left_behind_through_ray_tasks(
    checked: dict[str, Any],
) -> None:
    """A task forks until the job's process limit stops it (its children held, then ended so
    that Ray can go on); another leaves a double-forked, setsid child running: none of the job's
    processes, Ray's included, is left when the job ends."""
    found = checked["report"]
    assert 0 < found["started"] < LIMIT and found["left"] == "left"
    assert checked["left"] == [], f"processes of the job left running: {checked['left']}"
    assert len(checked["uids"]) == 1


def test_memory_past_the_limit_through_a_ray_worker(
    executor: Executor, storage: dict[str, Any], tmp_path: Path
) -> None:
    code = """
    import numpy as np
    import ray

    @ray.remote(max_retries=0)
    def allocate(size):
        block = np.ones(size // 8)
        return float(block.sum())

    def f(df):
        return ray.get(allocate.remote(3 * 2**30))
    """
    spec = job(tmp_path, storage, code)
    outcome, _, left = run_watched(executor, spec)
    assert left == [], f"processes of the job left running: {left}"
    assert not outcome.ok
    assert not os.path.exists(spec.output_dir)
    follow_up = job(tmp_path / "next", storage, "def f(df):\n    return df.count()\n")
    assert result(follow_up, executor.run(follow_up)) == ROWS
