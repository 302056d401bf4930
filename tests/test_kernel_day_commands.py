"""The `%syft` commands over a network, as a scientist meets them after a kernel restart.

A real network node and three real domains that joined it; the scientist submits requests from
one kernel, which then stops; the owners decide; a fresh kernel with the same identity, which
only connected to the network, must find those requests on every domain: `%syft fetch` by a
short ID and `%syft requests` (sorted by time, status words whole, a federated plan's rounds
on one line).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from kernel_client import SyftKernel
from networks import NetworkProcess, wait_for
from nodes import Approver, DomainProcess, person, start_all

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.kernel.cells import _USAGE as CELL_LINE

NAMES = ("hospital-a", "hospital-b", "hospital-c")
ROWS = {"hospital-a": 120, "hospital-b": 90, "hospital-c": 60}


def diabetes(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(rows)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 80, rows).astype(float),
            "bmi": rng.normal(26.0, 4.0, rows).round(1),
            "target": rng.normal(150.0, 60.0, rows).round(),
        }
    )


def statuses(admin: AdminClient) -> dict[str, str]:
    return {r.id: r.info.status for r in admin.requests()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A network of three domains holding `diabetes`, and the scientist's requests on them,
    submitted from a kernel that has since stopped and decided by the owners afterwards:
    done on hospital-a, denied on hospital-b, pending on hospital-c, and a federated plan of
    two rounds on hospital-a (run from a script as the same scientist)."""
    root = tmp_path_factory.mktemp("day")
    scientist_home, scientist = person(root, "scientist")
    network = NetworkProcess(root, "day-net", person(root, "operator")[0], "--offline-after", "2")
    network.start()
    owners = {name: person(root, f"owner-{name}") for name in NAMES}
    nodes = {
        name: DomainProcess(
            root, name, owners[name][0], "--network", network.address, "--heartbeat", "0.3"
        )
        for name in NAMES
    }
    try:
        start_all(nodes.values())
        admins = {}
        for name, node in nodes.items():
            admin = AdminClient(NodeConnection(node.address, owners[name][1]))
            admin.create_dataset("diabetes", private=diabetes(ROWS[name]), mock=diabetes(20))
            admin.add_user(scientist.peer_id)
            admins[name] = admin
        net = NetworkClient(NetworkConnection(network.address, scientist))
        wait_for(lambda: len(net.search("diabetes")) == 3, timeout=20)

        ids = {}
        first = SyftKernel(scientist_home)
        try:
            assert first.execute(f"%syft connect {network.address}").status == "ok"
            for name in NAMES:  # submitted a, b, c in this order: the table's order
                cell = first.execute(f"%%request {name}/diabetes as df --out n\nlen(df)")
                assert cell.status == "ok", cell.text
                [ids[name]] = [r.id for r in admins[name].requests("pending")]
                assert f"request {ids[name][:8]} pending" in cell.text
        finally:
            first.stop()  # the kernel goes; the requests stay on the domains

        [review] = admins["hospital-a"].requests("pending")
        review.approve()
        [review] = admins["hospital-b"].requests("pending")
        review.deny("returns the row count of a rare-disease cohort")
        [approved] = [r for r in admins["hospital-a"].requests() if r.id == ids["hospital-a"]]
        assert approved.wait(timeout=90).status == "done", approved.info  # a loaded machine

        domain = DomainClient(NodeConnection(nodes["hospital-a"].address, scientist))
        approver = Approver({"hospital-a": admins["hospital-a"]})
        try:
            syft.federated.train(
                torch.nn.Sequential(torch.nn.Linear(2, 1)), [domain], "diabetes", "target",
                features=["age", "bmi"], rounds=2, secure_aggregation=False, show=False,
            )  # fmt: skip
        finally:
            approver.close()
        [plan] = [r for r in admins["hospital-a"].requests() if r.info.plan is not None]
        yield {
            "network": network,
            "nodes": nodes,
            "admins": admins,
            "scientist": scientist,
            "scientist_home": scientist_home,
            "ids": ids,
            "plan": plan.id,
        }
    finally:
        for node in nodes.values():
            node.kill()
        network.kill()


@pytest.fixture
def fresh(world: dict) -> Iterator[SyftKernel]:
    """A new kernel of the same scientist (as after a restart), connected to the network only."""
    kernel = SyftKernel(world["scientist_home"])
    try:
        cell = kernel.execute(f"%syft connect {world['network'].address}")
        assert "connected to network day-net (3 domains)" in cell.text, cell.text
        yield kernel
    finally:
        kernel.stop()


def column(table: str, row_key: str, header: str) -> str:
    """One cell of a text table: the row holding `row_key`, the column under `header`."""
    lines = table.splitlines()
    [head] = [line for line in lines if line.startswith("submitted") or line.startswith("dataset")]
    start = head.index(header)
    following = [m.start() for m in re.finditer(r"(?<=  )\S", head) if m.start() > start]
    end = following[0] if following else None
    [row] = [line for line in lines if row_key in line]
    return row[start:end].strip()


@pytest.mark.timeout(300)  # the first test also starts the world: 4 nodes, a kernel, 4 jobs
def test_fetch_after_a_restart_finds_the_request_on_a_domain_not_dialled(
    world: dict, fresh: SyftKernel
) -> None:
    short = world["ids"]["hospital-a"][:8]
    cell = fresh.execute(f"%syft fetch {short} --out later")
    assert cell.status == "ok", cell.text
    assert fresh.execute("%syft wait").status == "ok"
    assert fresh.execute("print(later)").text.strip() == str(ROWS["hospital-a"])
    full = fresh.execute(f"%syft fetch {world['ids']['hospital-b']}")  # a full ID too
    assert "denied by the owner: returns the row count of a rare-disease cohort" in full.text


def test_requests_after_a_restart_every_domain_by_time_statuses_whole_plans_folded(
    world: dict, fresh: SyftKernel
) -> None:
    whoami = fresh.execute("%syft whoami")  # before anything dialled a domain
    assert "3 domains: hospital-a, hospital-b, hospital-c" in whoami.text
    assert world["scientist"].peer_id in whoami.text
    assert world["network"].address in whoami.text
    assert f"<code>{world['scientist'].peer_id}</code>" in whoami.html
    assert str(world["scientist_home"]) in whoami.text

    listing = fresh.execute("%syft requests")
    assert listing.status == "ok", listing.text
    text = listing.text
    assert "your requests, oldest first (newest last): 4 requests" in text
    ids, plan = world["ids"], world["plan"]
    held = {r.id: r.info for admin in world["admins"].values() for r in admin.requests()}
    shown = [ids["hospital-a"][:8], ids["hospital-b"][:8], ids["hospital-c"][:8], plan[:8]]
    for short, request_id in zip(shown, [*ids.values(), plan], strict=True):
        assert column(text, short, "status") == held[request_id].status
    assert column(text, shown[1], "status") == "denied"
    assert column(text, shown[2], "status") == "pending"
    assert column(text, shown[1], "data") == "hospital-b/diabetes"
    for short, request_id in zip(shown, [*ids.values(), plan], strict=True):
        assert column(text, short, "function") == held[request_id].function_name  # whole
    assert column(text, shown[1], "detail") == "returns the row count of a rare-disease cohort"
    rows = [line for line in text.splitlines() if any(i in line for i in shown)]
    assert [next(i for i in shown if i in row) for row in rows] == shown  # oldest first
    times = [time.strptime(row[:19], "%Y-%m-%d %H:%M:%S") for row in rows]
    assert times == sorted(times)
    rounds = [r.id for r in world["admins"]["hospital-a"].requests() if r.info.plan_round]
    assert len(rounds) == 2 and not any(r[:8] in text for r in rounds)
    assert column(text, shown[3], "detail") == "rounds: 2 of 2 (2 done)"
    assert ">denied</span>" in listing.html and "not reached" not in text


def test_whoami_domains_search_help_and_wording(world: dict, fresh: SyftKernel) -> None:
    domains = fresh.execute("%syft domains")
    for node in world["nodes"].values():
        peer_id = node.address.rsplit("/", 1)[1]
        assert f"\n    peer id {peer_id}\n" in domains.text + "\n"  # whole, on its own line
        assert f"<code>peer id {peer_id}</code>" in domains.html
    assert domains.text.count("1 dataset\n") == 3 and "1 datasets" not in domains.text

    search = fresh.execute("%syft search diabetes")
    assert search.status == "ok", search.text
    for name in NAMES:
        assert column(search.text, f"{name}/diabetes", "domain status") == "online"
        assert column(search.text, f"{name}/diabetes", "rows") == str(ROWS[name])

    unknown = fresh.execute("%%mock hospital-z/diabetes as df\ndf")
    assert unknown.status == "error"
    assert "no domain 'hospital-z' on network 'day-net' (domains: hospital-a" in unknown.text
    assert unknown.text.count("hospital-z") == 1

    usage = fresh.execute("%syft help")
    assert usage.status == "ok" and usage.text == fresh.execute("%syft").text
    assert "%syft help" in usage.text and "%syft fetch ID [--out VAR]" in usage.text
    assert f"%%mock {CELL_LINE}\n" in usage.text and f"%%request {CELL_LINE}\n" in usage.text


def test_an_offline_domain_is_named_in_one_line_and_the_others_answer(
    world: dict, fresh: SyftKernel
) -> None:
    world["nodes"]["hospital-c"].kill()
    listing = fresh.execute("%syft requests")
    assert listing.status == "ok", listing.text
    assert all(world["ids"][name][:8] in listing.text for name in ("hospital-a", "hospital-b"))
    assert world["ids"]["hospital-c"][:8] not in listing.text
    [missed] = [line for line in listing.text.splitlines() if "not reached" in line]
    assert missed.startswith("not reached: hospital-c: offline or unreachable")
    fetch = fresh.execute(f"%syft fetch {world['ids']['hospital-c'][:8]}")
    assert fetch.status == "error" and "not reached: hospital-c: offline" in fetch.text
    budget = fresh.execute("%syft budget")
    assert budget.status == "ok", budget.text
    [missed] = [line for line in budget.text.splitlines() if "not reached" in line]
    assert missed.startswith("not reached: hospital-c: offline or unreachable"), budget.text
