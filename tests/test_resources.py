"""Resources a request asks for, the owner's caps, refusal at submission, and where each job
ran: across a real domain process on the local pool (any ExecutorBackend answers through
`capacity()` and `JobOutcome.placement` the same way).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kernel_client import SyftKernel
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, RemoteRequest
from jupyter_syft.domain.executor import machine_capacity
from jupyter_syft.errors import InvalidError, RequestFailed
from jupyter_syft.kernel.cells import CellError, parse_line
from jupyter_syft.server.backend import review_json
from jupyter_syft.widgets import review
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.resources import ResourceError, describe_resources, resources_from

PRIVATE = pd.DataFrame({"age": np.arange(50) + 18})
MOCK = pd.DataFrame({"age": np.full(5, 40)})
PREVIOUS_VERSION = "4a21351"  # the commit before resources were stored


def allocates(df):
    import numpy as np

    return float(np.ones(80 * 2**20).sum())  # 640 MiB: over 256 MiB and its slack


def rows(df):
    return len(df)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("resources")
    owner_home, owner = person(root, "owner")
    alice_home, alice = person(root, "alice")
    node = DomainProcess(root, "clinic", owner_home, "--job-timeout", "30")
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        for name in ("patients", "capped"):
            admin.create_dataset(name, private=PRIVATE, mock=MOCK)
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        yield {
            "node": node,
            "admin": admin,
            "alice": DomainClient(NodeConnection(node.address, alice)),
            "alice_home": alice_home,
        }
    finally:
        node.kill()


def state(world: dict) -> tuple[int, int]:
    """How many requests and audit entries the domain holds: a refusal changes neither."""
    admin = world["admin"]
    return len(admin.requests()), len(admin.audit_log(limit=100_000).entries)


def ran(request: RemoteRequest, admin: AdminClient) -> RemoteRequest:
    admin.get_request(request.id).approve()
    request.wait(timeout=60)
    return request


# ---- the ask, checked before anything is sent ----------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("asked", "says"),
    [
        ({"cpu": 2}, "unknown resource 'cpu': expected cpus, gpus, memory_mb"),
        ({"cpus": -1}, "cpus must be a finite number >= 0, not -1.0"),
        ({"cpus": math.nan}, "cpus must be a finite number >= 0, not nan"),
        ({"cpus": math.inf}, "cpus must be a finite number >= 0, not inf"),
        ({"gpus": 1.5}, "gpus must be a whole number, not 1.5"),
        ({"memory_mb": -5}, "memory_mb must be a finite number >= 0, not -5"),
        ({"memory_mb": 2**40}, "memory_mb=1099511627776 is more than any machine has"),
        ({"cpus": "2"}, "cpus must be a number, not '2'"),
        ({"gpus": True}, "gpus must be a whole number, not True"),
        ("2 cpus", "resources must be a dict"),
    ],
)
def test_a_bad_ask_is_refused_saying_what_is_wrong(asked: object, says: str) -> None:
    with pytest.raises(ResourceError) as refused:
        resources_from(asked)  # type: ignore[arg-type]
    assert says in str(refused.value)


@pytest.mark.unit
def test_an_ask_in_words() -> None:
    asked = resources_from({"cpus": 2, "gpus": np.int64(1), "memory_mb": 4096})
    assert asked == m.Resources(2.0, 1, 4096)
    assert describe_resources(asked) == "2 cpus, 1 gpu, 4 GiB"
    assert describe_resources(m.Resources(memory_mb=512)) == "default cpus, 0 gpus, 512 MiB"
    assert resources_from(m.Resources(0.5, 0, 0)) == m.Resources(0.5, 0, 0)


@pytest.mark.unit
def test_request_cell_options() -> None:
    line = parse_line("clinic/patients as df --cpus 2 --gpus 1 --memory-mb 4096")
    assert dict(line.resources) == {"cpus": 2.0, "gpus": 1, "memory_mb": 4096}
    for bad, says in [
        ("--cpus two", "--cpus two: not a number"),
        ("--gpus 0.5", "--gpus 0.5: not a whole number"),
        ("--cpus -2", "cpus must be a finite number >= 0"),
        ("--cpus nan", "not nan"),
        ("--memory-mb 99999999999", "more than any machine has"),
        ("--dp-epsilon 1 --cpus 2", "a DP query runs the domain's own"),
    ]:
        with pytest.raises(CellError, match=says):
            parse_line(f"clinic/patients as df {bad}")


def test_a_bad_ask_is_never_sent(world: dict) -> None:
    before = state(world)
    for asked in ({"cpu": 2}, {"cpus": -1}, {"cpus": math.nan}, {"memory_mb": math.inf}):
        with pytest.raises(InvalidError):
            world["alice"].request(rows, df="patients", resources=asked)
    assert state(world) == before


def test_the_node_refuses_a_bad_ask_sent_past_the_client(world: dict) -> None:
    """A peer's own client may send anything msgspec decodes: NaN, negatives, huge numbers."""
    connection = world["alice"]._connection
    before = state(world)
    for asked, says in [
        (m.Resources(cpus=math.nan), "cpus must be a finite number >= 0, not nan"),
        (m.Resources(cpus=math.inf), "not inf"),
        (m.Resources(gpus=-1), "gpus must be a finite number >= 0, not -1"),
        (m.Resources(memory_mb=2**50), "is more than any machine has"),
    ]:
        code = "def rows(df):\n    return 1\n"
        call = m.SubmitRequest(code, "rows", {"df": "patients"}, resources=asked)
        with pytest.raises(InvalidError, match=says):
            connection.call(call)
    assert state(world) == before
    assert world["alice"].hello().name == "clinic"  # still serving


def test_over_the_owners_cap_is_refused_naming_it(world: dict) -> None:
    admin = world["admin"]
    policy = admin.set_policy("capped", max_cpus=1, max_memory_mb=1024)
    assert (policy.max_cpus, policy.max_gpus, policy.max_memory_mb) == (1.0, 0, 1024)
    before = state(world)
    with pytest.raises(InvalidError) as refused:
        world["alice"].request(rows, df="capped", resources={"cpus": 2})
    assert str(refused.value) == (
        "asks for 2 cpus; the owner's policy on dataset 'capped' caps a request at 1 cpu (max_cpus)"
    )
    with pytest.raises(InvalidError, match=r"caps a request at 1 GiB \(max_memory_mb\)"):
        world["alice"].request(rows, df="capped", resources={"memory_mb": 2048})
    assert state(world) == before
    # Within the cap it goes; asking nothing, the 4 GiB default is capped when it runs.
    within = ran(world["alice"].request(rows, df="capped", resources={"cpus": 1}), admin)
    default = ran(world["alice"].request(rows, df="capped"), admin)
    assert within.placement is not None and default.placement is not None
    assert within.placement.resources == m.Resources(1.0, 0, 1024)
    assert default.placement.resources == m.Resources(1.0, 0, 1024)


def test_bad_caps_are_refused_and_change_nothing(world: dict) -> None:
    admin = world["admin"]
    before = admin.policy("patients")
    for caps in ({"max_cpus": -1}, {"max_memory_mb": math.nan}, {"max_gpus": 1.5}):
        with pytest.raises(InvalidError, match="the caps"):
            admin.set_policy("patients", **caps)  # type: ignore[arg-type]
    raw = m.SetPolicy("patients", max_cpus=math.nan)
    with pytest.raises(InvalidError, match="cpus must be a finite number >= 0, not nan"):
        admin._connection.call(raw)
    assert admin.policy("patients") == before


def test_more_than_the_executor_has_is_refused_saying_what_it_has(world: dict) -> None:
    capacity = machine_capacity()  # the local pool's machine: this one
    has = describe_resources(capacity)
    before = state(world)
    too_many = capacity.cpus + 2
    with pytest.raises(InvalidError) as refused:
        world["alice"].request(rows, df="patients", resources={"cpus": too_many})
    assert str(refused.value) == (
        f"asks for {too_many:g} cpus; the largest machine of this domain's executor has {has}"
    )
    if not capacity.gpus:
        with pytest.raises(InvalidError, match=f"asks for 1 gpu; .* has {has}"):
            world["alice"].request(rows, df="patients", resources={"gpus": 1})
    assert state(world) == before


# ---- the ask, run and shown ------------------------------------------------------------------


def test_the_job_gets_the_memory_it_asked_for_and_says_where_it_ran(world: dict) -> None:
    """640 MiB in a job that asked for 256 MiB runs out of memory; with 1024 it passes."""
    admin, alice = world["admin"], world["alice"]
    small = alice.request(allocates, df="patients", resources={"memory_mb": 256})
    big = alice.request(allocates, df="patients", resources={"cpus": 1, "memory_mb": 1024})
    assert small.resources == m.Resources(0.0, 0, 256)

    # Before approving, the owner sees what each asks for.
    panel = review(admin, poll_s=None)
    try:
        card = panel.cards[small.id].children[0].value
        assert "asks for default cpus, 0 gpus, 256 MiB" in card
        assert "asks for 1 cpu, 0 gpus, 1 GiB" in panel.cards[big.id].children[0].value
        assert "asks for default cpus, 0 gpus, 256 MiB" in admin.get_request(small.id)._repr_html_()
        ran(small, admin)
        ran(big, admin)
        with pytest.raises(RequestFailed, match=r"ran out of memory \(limit 256 MiB\)"):
            small.result()
        assert big.result() == 80 * 2**20

        # After running: where, with what, how long, attempts, on every surface.
        for request, memory in ((small, 256), (big, 1024)):
            placement = request.placement
            assert placement is not None and placement.executor == "local"
            assert placement.resources == m.Resources(1.0, 0, memory)
            assert placement.seconds > 0 and placement.attempts == 1
        panel.refresh()
        history = panel._history.value
        assert f"local on {big.placement.node} with 1 cpu, 0 gpus, 1 GiB for" in history
        assert "with 1 cpu, 0 gpus, 256 MiB for" in history
    finally:
        panel.close()
    sidebar = review_json("clinic", admin.get_request(big.id).info, {})
    assert sidebar["resources"] == "asks for 1 cpu, 0 gpus, 1 GiB"
    assert sidebar["ran"].startswith(f"local on {big.placement.node} with 1 cpu, 0 gpus, 1 GiB")
    assert sidebar["placement"]["resources"] == {"cpus": 1.0, "gpus": 0, "memory_mb": 1024}
    shown = admin.get_request(big.id)._repr_html_()
    assert "ran local on" in shown and "1 cpu, 0 gpus, 1 GiB" in shown

    entries = admin.audit_log(limit=100_000).entries
    [done] = [e for e in entries if e.action == "run_done" and e.subject == big.id]
    [failed] = [e for e in entries if e.action == "run_failed" and e.subject == small.id]
    for entry, memory in ((done, 1024), (failed, 256)):
        placement = json.loads(entry.detail)["placement"]
        assert placement["executor"] == "local" and placement["node"] == big.placement.node
        assert placement["resources"] == {"cpus": 1.0, "gpus": 0, "memory_mb": memory}
        assert placement["seconds"] > 0 and placement["attempts"] == 1
    assert json.loads(failed.detail)["error"] == "ran out of memory (limit 256 MiB)"


def test_asking_nothing_runs_with_the_nodes_defaults(world: dict) -> None:
    request = ran(world["alice"].request(rows, df="patients"), world["admin"])
    assert request.resources is None and request.result() == 50
    assert request.placement is not None
    assert request.placement.resources == m.Resources(1.0, 0, 4096)  # --job-memory-mb 4096


def test_request_cell_asks_and_syft_requests_shows_where_it_ran(world: dict) -> None:
    admin = world["admin"]
    admin.set_policy("capped", max_cpus=1)
    kernel = SyftKernel(world["alice_home"])
    try:
        assert kernel.execute(f"%syft connect {world['node'].address}").status == "ok"
        before = state(world)
        bad = kernel.execute("%%request clinic/patients as df --cpus -1\nlen(df)")
        assert bad.status == "error" and "--cpus -1: resources: cpus must be a finite" in bad.text
        over = kernel.execute("%%request clinic/capped as df --cpus 4\nlen(df)")
        assert over.status == "error" and "caps a request at 1 cpu (max_cpus)" in over.text
        assert state(world) == before  # nothing sent, or nothing recorded
        cell = kernel.execute(
            "%%request clinic/patients as df --cpus 1 --memory-mb 512 --out n\nlen(df)"
        )
        assert cell.status == "ok", cell.text
        [pending] = admin.requests("pending")
        assert pending.resources == m.Resources(1.0, 0, 512)
        pending.approve()
        kernel.update(cell.display_id, "result bound to n", timeout=60)
        listing = kernel.execute("%syft requests")
        [row] = [line for line in listing.text.splitlines() if pending.id[:8] in line]
        assert "asks for 1 cpu, 0 gpus, 512 MiB; ran local on " in row
        assert "with 1 cpu, 0 gpus, 512 MiB for " in row
    finally:
        kernel.stop()


# ---- a data dir made by the previous version ------------------------------------------------


def test_a_data_dir_of_the_previous_version_keeps_working(tmp_path: Path) -> None:
    """The previous version's own code writes a store (a pending request); this one
    opens it: the old request reads with no resources, new ones store theirs."""
    old = tmp_path / "previous"
    old.mkdir()
    archive = subprocess.run(
        ["git", "archive", PREVIOUS_VERSION, "jupyter_syft"],
        cwd=Path(__file__).parent.parent,
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    owner_home, owner = person(tmp_path, "owner")
    data_dir = tmp_path / "clinic"
    script = textwrap.dedent(f"""
        from jupyter_syft.domain.store import Store
        from jupyter_syft.wire import messages as m
        store = Store({str(data_dir)!r})
        store.initialise("clinic", {owner.peer_id!r})
        import jupyter_syft
        assert jupyter_syft.__file__.startswith({str(old)!r}), jupyter_syft.__file__
        call = m.SubmitRequest("def rows(df):\\n    return 1\\n", "rows", {{"df": "patients"}})
        print(store.add_request({owner.peer_id!r}, call).request_id)
        store.close()
    """)
    made = subprocess.run(
        [sys.executable, "-c", script],
        env={"PYTHONPATH": str(old), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,  # `python -c` looks in its folder first: not in this checkout
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    old_request = made.stdout.strip()
    node = DomainProcess(tmp_path, "clinic", owner_home)
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        [listed] = admin.requests()
        assert listed.id == old_request and listed.resources is None and listed.placement is None
        admin.create_dataset("patients2", private=PRIVATE, mock=MOCK)
        new = admin.request(rows, df="patients2", resources={"memory_mb": 512})
        assert admin.get_request(new.id).resources == m.Resources(0.0, 0, 512)
        assert ran(new, admin).placement.resources.memory_mb == 512  # type: ignore[union-attr]
        assert admin.audit_log().chain_ok
    finally:
        node.kill()
