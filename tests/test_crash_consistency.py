"""Crash consistency: SIGKILL a real domain at random moments of its work, restart it on the
same data dir, and check that nothing the client was told happened is lost or doubled.

A multiprocess test: three real domain processes, one of them ("victim") killed and restarted
over and over (52 kill points, seeded; about 2.5 minutes on 2 cores). Operations run in client
threads while a kill lands at a random time; each phase keeps what the client was acknowledged
(the call returned) and what it only attempted, and after every kill the store is read directly
(sqlite3, read-only, node down) and checked:

- every acknowledged request, dataset, round and charge exists exactly once; an attempted one
  at most once (each submission carries a nonce, so a doubled row would show);
- every request has one `submit_request` audit entry, every charge one `dp_charge` entry;
- budgets: spent == the sum of the ledger's charges, never above the grant; every DP request
  that was approved is charged exactly once, a pending or refused one never;
- a job cut off by the kill is requeued at restart (`run_requeued`) and completes at most once;
- the audit chain verifies (the restarted node's own check, under its key).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from nodes import DomainProcess, person, start_all

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.aggregate import secure_sum
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.errors import ConflictError
from jupyter_syft.federated.weights import to_safetensors
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m

pytestmark = pytest.mark.timeout(600)  # each test restarts a node a dozen times or more

SEED = 13
FEATURES = ["f0", "f1", "f2", "f3"]
ROWS = {"victim": 120, "north": 80, "south": 60}
BUDGET = 1000.0
FINAL = ("done", "denied", "failed", "withheld", "awaiting_release")
STATUSES = {"pending", "approved", "building", "running", *FINAL}


def table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.uniform(0.0, 1.0, size=(rows, 4)), columns=FEATURES)
    return frame.assign(y=frame.sum(axis=1) + rng.normal(0.0, 0.1, rows))


SLOW_TOTAL = """
def slow_total(df):
    import time

    time.sleep(0.4)
    return float(df["y"].sum())
"""

ROW_COUNT = """
def row_count(df):
    import numpy as np

    return np.array([len(df), 1])
"""

MODEL = """
def make_model():
    import torch

    return torch.nn.Linear(4, 1)
"""


def nonce(code: str, n: int) -> str:
    """The same function with a comment that makes this submission's row recognisable."""
    return f"{code}\n# submission {n}\n"


@dataclass
class Domain:
    node: DomainProcess
    owner: Identity
    scientist_identity: Identity
    admin: AdminClient = field(init=False)
    scientist: DomainClient = field(init=False)

    def connect(self) -> None:
        self.admin = AdminClient(NodeConnection(self.node.address, self.owner))
        self.scientist = DomainClient(NodeConnection(self.node.address, self.scientist_identity))

    def restart(self) -> None:
        self.node.start()
        self.connect()


@dataclass
class Ledger:
    """What the client was told (acknowledged) and what it only tried, by kind."""

    acked: dict[str, set[str]] = field(default_factory=dict)
    tried: dict[str, set[str]] = field(default_factory=dict)
    kill_points: dict[str, int] = field(default_factory=dict)

    def attempt(self, kind: str, key: str) -> None:
        self.tried.setdefault(kind, set()).add(key)

    def ack(self, kind: str, key: str) -> None:
        self.acked.setdefault(kind, set()).add(key)

    def killed(self, kinds: list[str]) -> None:
        for kind in kinds:
            self.kill_points[kind] = self.kill_points.get(kind, 0) + 1


class Loop(threading.Thread):
    """Runs `step` until it raises; an error before `killed_at` is set is a real failure."""

    def __init__(self, step: Callable[[], None]) -> None:
        super().__init__(daemon=True)
        self.step = step
        self.killed_at = 0.0
        self.error: BaseException | None = None
        self.failed_at = 0.0

    def run(self) -> None:
        try:
            while not self.killed_at:
                self.step()
        except Exception as exc:
            self.error, self.failed_at = exc, time.monotonic()

    def unexpected(self) -> BaseException | None:
        """An error raised before the kill (not caused by it)."""
        if self.error is not None and self.failed_at < self.killed_at:
            return self.error
        return None


def kill_during(
    victim: Domain, steps: list[Callable[[], None]], delay: float, ledger: Ledger, kinds: list[str]
) -> None:
    """Run `steps` in threads, SIGKILL the victim after `delay` s, check, restart."""
    loops = [Loop(step) for step in steps]
    for loop in loops:
        loop.start()
    time.sleep(delay)
    assert victim.node.process is not None
    for loop in loops:
        if loop.error is not None:
            raise AssertionError("an operation failed before the kill") from loop.error
    killed_at = time.monotonic()
    crash(victim)
    for loop in loops:
        loop.killed_at = killed_at
    for loop in loops:
        loop.join(timeout=90)
        assert not loop.is_alive(), "an operation still hangs 90 s after the kill"
        if (error := loop.unexpected()) is not None:
            raise AssertionError("an operation failed before the kill") from error
    ledger.killed(kinds)
    check_store(victim.node.data_dir, ledger, settled=False)
    victim.restart()
    log = victim.admin.audit_log(limit=1)
    assert log.chain_ok, log.chain_error


def crash(victim: Domain) -> None:
    """SIGKILL the node, then what it started (forkserver, job workers), as when a machine's
    OOM killer or a container stop takes the lot. A job process outliving its node is a
    separate case: see test_a_killed_node_leaves_no_job_running."""
    assert victim.node.process is not None
    below = descendants(victim.node.process.pid)
    victim.node.kill()
    for pid in below:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def check_store(data_dir: Path, ledger: Ledger, settled: bool) -> None:
    """The store, read directly while the node is down, against what the clients were told
    (see the module doc). `settled`: no job may still be waiting to run."""
    db = sqlite3.connect(f"file:{data_dir / 'domain.sqlite'}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        requests = {r["id"]: r for r in db.execute("SELECT id, code, status, policy FROM requests")}
        audit = db.execute("SELECT seq, action, subject FROM audit ORDER BY seq").fetchall()
        assert [a["seq"] for a in audit] == list(range(1, len(audit) + 1))
        for kind in ("request", "dp_query", "round", "secagg"):
            lost = ledger.acked.get(kind, set()) - requests.keys()
            assert not lost, f"acknowledged {kind} requests lost: {sorted(lost)}"
        statuses = {r["status"] for r in requests.values()}
        assert statuses <= STATUSES, statuses
        if settled:
            waiting = [  # a federated plan stays approved: the permit its rounds run under
                i
                for i, r in requests.items()
                if r["status"] not in (*FINAL, "pending") and r["policy"] != "federated"
            ]
            assert not waiting, f"requests never finished after the restarts: {waiting}"
        # Each submission carries a nonce: a request recorded twice would show twice.
        doubled = db.execute(
            "SELECT code, COUNT(*) AS n FROM requests WHERE id NOT IN"
            " (SELECT request_id FROM federated_rounds) AND id NOT IN"
            " (SELECT request_id FROM dp_requests) GROUP BY code HAVING n > 1"
        ).fetchall()
        assert not doubled, [r["code"][-30:] for r in doubled]
        doubled = db.execute(
            "SELECT spec, COUNT(*) AS n FROM dp_requests WHERE request_id NOT IN"
            " (SELECT request_id FROM federated_rounds) GROUP BY spec HAVING n > 1"
        ).fetchall()
        assert not doubled, "a DP query recorded twice"
        actions: dict[str, Counter[str]] = {}
        for entry in audit:
            actions.setdefault(entry["action"], Counter())[entry["subject"]] += 1
        submitted = actions.get("submit_request", Counter())
        assert all(submitted[i] == 1 for i in requests), "a request without one submit entry"
        assert set(submitted) <= requests.keys(), "a submit entry without its request"
        for action in ("run_done", "dp_charge", "secagg_join"):
            twice = [i for i, n in actions.get(action, Counter()).items() if n > 1]
            assert not twice, f"{action} twice for {twice}"
        # Budgets: one charge per DP request that was approved, none for one that was not.
        charges = db.execute("SELECT * FROM budget_ledger").fetchall()
        charged = {c["request_id"] for c in charges}
        assert charged == set(actions.get("dp_charge", Counter())), "ledger and audit disagree"
        dp = {r["request_id"] for r in db.execute("SELECT request_id FROM dp_requests")}
        for request_id in dp:
            approved = requests[request_id]["status"] not in ("pending", "denied")
            assert (request_id in charged) == approved, (request_id, requests[request_id]["status"])
        assert ledger.acked.get("approved", set()) & dp <= charged
        spent: Counter[tuple[str, str]] = Counter()
        for charge in charges:
            spent[charge["peer_id"], charge["dataset"]] += charge["epsilon_units"]
        for (peer, dataset), units in spent.items():
            grant = db.execute(
                "SELECT epsilon_units FROM budgets WHERE peer_id = ? AND dataset = ?",
                (peer, dataset),
            ).fetchone()
            assert grant is not None and units <= grant["epsilon_units"]
        datasets = {r["name"] for r in db.execute("SELECT name FROM datasets")}
        lost = ledger.acked.get("upload", set()) - datasets
        assert not lost, f"acknowledged uploads lost: {sorted(lost)}"
        for name in datasets:  # a dataset row means its files were complete before the commit
            assert (data_dir / "assets" / name).is_dir(), f"dataset {name} has no files"
        rounds = {r["request_id"] for r in db.execute("SELECT request_id FROM federated_rounds")}
        assert ledger.acked.get("round", set()) <= rounds
    finally:
        db.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Domain]]:
    """Three domains with a table each, one scientist on all of them with a budget; DP
    queries auto-approved within a per-query cap."""
    root = tmp_path_factory.mktemp("crash")
    scientist = person(root, "scientist")[1]
    made = {}
    for name in ROWS:
        owner_home, owner = person(root, f"{name}-owner")
        made[name] = Domain(DomainProcess(root, name, owner_home), owner, scientist)
    start_all(d.node for d in made.values())
    try:
        for i, (name, domain) in enumerate(made.items()):
            domain.connect()
            domain.admin.create_dataset("table", private=table(ROWS[name], i), mock=table(10, 99))
            domain.admin.add_user(scientist.peer_id, "data_scientist", "sam")
            domain.admin.set_budget(scientist.peer_id, "table", BUDGET, delta=0.5)
            domain.admin.set_policy("table", auto_approve=True, max_query_epsilon=1.0)
        yield made
    finally:
        for domain in made.values():
            domain.node.kill()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


def test_uploads_and_dp_charges_survive_kills(world: dict[str, Domain], ledger: Ledger) -> None:
    """22 kills while the owner uploads datasets and the scientist's DP queries are charged:
    auto-approved at submission (first half), then approved by the owner (second half)."""
    victim, rng = world["victim"], random.Random(SEED)
    counter = iter(range(1_000_000))

    def upload() -> None:
        name = f"upload-{next(counter)}"
        ledger.attempt("upload", name)
        victim.admin.create_dataset(name, private=table(5000, 1), mock=table(10, 2))
        ledger.ack("upload", name)

    def dp_query() -> None:
        n = next(counter)
        query = m.DPQuery("sum", 0.01, "f1", (0.0, 1.0 + n / 1000))  # the bounds: a nonce
        info = victim.scientist._connection.call(m.SubmitDPQuery("table", query))
        ledger.ack("dp_query", info.request_id)
        ledger.ack("approved", info.request_id)  # by the policy, charged at submission

    def dp_reviewed() -> None:
        n = next(counter)
        query = m.DPQuery("sum", 0.01, "f1", (0.0, 1.0 + n / 1000))
        info = victim.scientist._connection.call(m.SubmitDPQuery("table", query))
        ledger.ack("dp_query", info.request_id)
        victim.admin._connection.call(m.Decide(info.request_id, approve=True))  # charged here
        ledger.ack("approved", info.request_id)
        time.sleep(rng.uniform(0.1, 0.3))

    for i in range(22):
        if i == 11:  # the second half: queries wait for the owner, charged on approval
            victim.admin.set_policy("table", auto_approve=False)
        steps = [upload, dp_query if i < 11 else dp_reviewed]
        kill_during(victim, steps, rng.uniform(0.05, 0.8), ledger, ["upload", "dp_charge"])
    victim.admin.set_policy("table", auto_approve=True)
    assert len(ledger.acked["upload"]) >= 5 and len(ledger.acked["dp_query"]) >= 10


def test_jobs_and_federated_rounds_survive_kills(world: dict[str, Domain], ledger: Ledger) -> None:
    """16 kills while approved jobs run (and wait for the restarted node's warm workers) and
    a DP federated plan's rounds are started, charged and trained."""
    victim, rng = world["victim"], random.Random(SEED + 1)
    plan = m.FederatedPlan(
        MODEL, "make_model", FEATURES, "y", rounds=100, secure_aggregation=False,
        epsilon=100.0, delta=1e-4,
    )  # fmt: skip
    info = victim.scientist._connection.call(m.SubmitFederatedPlan("table", plan))
    victim.admin._connection.call(m.Decide(info.request_id, approve=True))
    plan_id = info.request_id
    weights = to_safetensors(torch.nn.Linear(4, 1).state_dict())
    counter = iter(range(1_000_000))
    next_round = [0]

    def job() -> None:
        n = next(counter)
        submitted = victim.scientist.submit(nonce(SLOW_TOTAL, n), "slow_total", {"df": "table"})
        ledger.ack("request", submitted.id)
        victim.admin._connection.call(m.Decide(submitted.id, approve=True))
        ledger.ack("approved", submitted.id)
        submitted.wait(timeout=60)

    def federated_round() -> None:
        number = next_round[0]
        next_round[0] += 1
        try:
            started = victim.scientist._connection.call(m.FederatedRound(plan_id, number, weights))
        except ConflictError:  # started before a kill whose reply never came: the next one
            return
        ledger.ack("round", started.request_id)
        ledger.ack("approved", started.request_id)  # by the plan, charged at its start
        victim.scientist.get_request(started.request_id).wait(timeout=60)

    for _ in range(16):
        kill_during(victim, [job, federated_round], rng.uniform(0.5, 4.0), ledger, ["job", "round"])
    assert len(ledger.acked["request"]) >= 8 and len(ledger.acked["round"]) >= 4


def test_secure_aggregation_rounds_survive_kills(world: dict[str, Domain], ledger: Ledger) -> None:
    """14 kills of one domain while the scientist securely sums aggregate-only results of all
    three: the session fails cleanly, and a result that joined once never joins again."""
    victim, rng = world["victim"], random.Random(SEED + 2)
    counter = iter(range(1_000_000))

    def aggregate() -> None:
        n = next(counter)
        requests = {}
        for domain in world.values():
            call = m.SubmitRequest(nonce(ROW_COUNT, n), "row_count", {"df": "table"}, "aggregate")
            info = domain.scientist._connection.call(call)
            if domain is victim:
                ledger.ack("secagg", info.request_id)
            domain.admin._connection.call(m.Decide(info.request_id, approve=True))
            requests[domain.scientist.peer_id] = (domain.scientist, info.request_id)
        for client, request_id in requests.values():
            assert client.get_request(request_id).wait(60).status == "done"
        total, _ = secure_sum(requests, 2, threshold=3)  # fails once the victim is killed
        assert list(total) == [sum(ROWS.values()), 3]

    for _ in range(14):
        kill_during(victim, [aggregate], rng.uniform(0.5, 3.0), ledger, ["secagg"])


def test_the_store_holds_up_after_every_kill(world: dict[str, Domain], ledger: Ledger) -> None:
    """After the last restart every job settles; then the whole store is checked once more."""
    victim = world["victim"]
    settle_by = time.monotonic() + 240.0  # every approved job runs (requeued ones too)
    while time.monotonic() < settle_by:
        listing = victim.admin._connection.call(m.ListRequests())
        running = ("approved", "building", "running")
        waiting = [r for r in listing.requests if r.status in running and r.policy != "federated"]
        if not waiting:
            break
        time.sleep(1.0)
    victim.node.stop()
    try:
        check_store(victim.node.data_dir, ledger, settled=True)
    finally:
        victim.restart()
    kills = sum(ledger.kill_points[kind] for kind in ("upload", "job", "secagg"))
    print(f"kill points survived: {kills} ({dict(ledger.kill_points)})")
    assert kills >= 50, ledger.kill_points


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (through /proc's children lists)."""
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def command_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    return "?"


def test_a_killed_node_leaves_no_job_running(world: dict[str, Domain]) -> None:
    """SIGKILL the node alone (not what it started) while a job runs: the job's worker and
    process die with it, and no result files appear."""
    victim = world["victim"]
    slow = victim.scientist.submit(SLOW_TOTAL.replace("0.4", "3.0"), "slow_total", {"df": "table"})
    victim.admin._connection.call(m.Decide(slow.id, approve=True))
    while slow.refresh(wait_s=5).status != "running":
        pass
    assert victim.node.process is not None
    node_pid = victim.node.process.pid
    # multiprocessing's own processes, the node's children; workers and jobs are below them.
    helpers = set(children(node_pid))

    def workers() -> set[int]:  # the forkserver's children: keepers and their job processes
        return descendants(node_pid) - helpers

    warm_by = time.monotonic() + 60.0  # a restarted node's forkserver preloads torch first
    while not workers() and time.monotonic() < warm_by:
        time.sleep(0.2)
    assert workers(), "no worker process ever started"
    time.sleep(1.0)  # the job process is in its sleep
    below = descendants(node_pid)
    victim.node.kill()
    time.sleep(1.0)  # keepers watch the node (a pidfd), jobs die with their keeper
    survivors = [f"{pid} {command_of(pid)}" for pid in below - helpers if alive(pid)]
    gone_by = time.monotonic() + 20.0  # the forkserver's and tracker's exit: torch's teardown
    while any(alive(pid) for pid in helpers) and time.monotonic() < gone_by:
        time.sleep(0.1)
    survivors += [f"{pid} {command_of(pid)}" for pid in helpers if alive(pid)]
    time.sleep(3.0)  # past the job's own end: it would have written its result by now
    results = victim.node.data_dir / "results" / slow.id
    written = sorted(p.name for p in results.iterdir()) if results.exists() else []
    try:
        assert not survivors and not written, f"outlived the node: {survivors}; wrote {written}"
    finally:
        victim.restart()
        assert victim.scientist.get_request(slow.id).wait(60).status == "done"


def test_a_result_joins_one_aggregation_even_across_a_restart(world: dict[str, Domain]) -> None:
    requests = {}
    for name, domain in world.items():
        call = m.SubmitRequest(nonce(ROW_COUNT, 999), "row_count", {"df": "table"}, "aggregate")
        info = domain.scientist._connection.call(call)
        domain.admin._connection.call(m.Decide(info.request_id, approve=True))
        requests[name] = info.request_id
    for name, domain in world.items():
        assert domain.scientist.get_request(requests[name]).wait(60).status == "done"
    parties = {d.scientist.peer_id: (d.scientist, requests[k]) for k, d in world.items()}
    total, _ = secure_sum(parties, 2, threshold=2)
    assert list(total) == [sum(ROWS.values()), 3]
    victim = world["victim"]
    victim.node.stop()
    victim.restart()
    parties[victim.scientist.peer_id] = (victim.scientist, requests["victim"])
    # Only the victim forgot (the others still refuse): it joins a second session.
    try:
        victim.scientist._connection.call(m.SecAggStep(requests["victim"], setup_frame(parties)))
        joined = True
    except ConflictError as exc:
        assert "already aggregated once" in str(exc)
        joined = False
    assert not joined, "a result aggregated once joined a second session after a restart"


def setup_frame(parties: dict[str, tuple[DomainClient, str]]) -> bytes:
    from jupyter_syft.crypto.secagg import SecAggServer

    identity = next(iter(parties.values()))[0]._connection.identity
    frames = SecAggServer(identity, list(parties), 2, 2).setup_frames()
    victim = next(p for p, (d, _) in parties.items() if d.name == "victim")
    return frames[victim]
