"""Every surface shows a domain's job sandbox level, and `--sandbox off` cannot go unnoticed.

Two real domain processes: "guarded" with the default (on) and "loose" started with
`--sandbox off`; the scientist looks in a real Syft kernel and with the client, the owners in
`review()` and through the sidebar's backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_client import SyftKernel
from nodes import DomainProcess, person, start_all

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.server.backend import Backend, Sources
from jupyter_syft.widgets import review

WARNING = "WARNING: domain loose runs jobs WITHOUT the sandbox (--sandbox off)"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root: Path = tmp_path_factory.mktemp("shown")
    scientist_home, scientist = person(root, "scientist")
    nodes, admins, owner_homes = {}, {}, []
    for name, extra in [("guarded", []), ("loose", ["--sandbox", "off"])]:
        home, _ = person(root, f"owner-{name}")
        owner_homes.append(home)
        nodes[name] = DomainProcess(root, name, home, *extra)
    start_all(nodes.values())
    try:
        for name, node in nodes.items():
            assert node.address, f"domain {name} did not start:\n{node.log.read_text()}"
            admins[name] = AdminClient(
                NodeConnection(node.address, person(root, f"owner-{name}")[1])
            )
            admins[name].add_user(scientist.peer_id)
        domains = {
            name: DomainClient(NodeConnection(node.address, scientist))
            for name, node in nodes.items()
        }
        yield {
            "nodes": nodes,
            "admins": admins,
            "domains": domains,
            "scientist_home": scientist_home,
            "owner_homes": owner_homes,
        }
    finally:
        for node in nodes.values():
            node.kill()


def test_sandbox_off_is_warned_once_at_start_and_audited(world: dict) -> None:
    loose, guarded = world["nodes"]["loose"], world["nodes"]["guarded"]
    assert loose.log.read_text().count(WARNING) == 1
    assert "WITHOUT the sandbox" not in guarded.log.read_text()
    assert "domain guarded: sandbox on: landlock" in guarded.log.read_text()
    entries = world["admins"]["loose"].audit_log().entries
    assert [e.subject for e in entries if e.action == "sandbox_off"] == ["loose"]
    assert not [e for e in world["admins"]["guarded"].audit_log().entries
                if e.action == "sandbox_off"]  # fmt: skip


def test_the_client_shows_the_level(world: dict) -> None:
    loose, guarded = world["domains"]["loose"], world["domains"]["guarded"]
    assert loose.sandbox == "off"
    assert guarded.sandbox.startswith("on: ") and "landlock" in guarded.sandbox
    assert "sandbox OFF" in repr(loose) and "sandbox on: " in repr(guarded)
    assert '<b style="color:#b91c1c">sandbox OFF</b>' in loose._repr_html_()
    assert "sandbox OFF" not in guarded._repr_html_()


def test_the_scientist_sees_it_in_syft_domains(world: dict) -> None:
    kernel = SyftKernel(world["scientist_home"])
    try:
        connected = [kernel.execute(f"%syft connect {n.address}") for n in world["nodes"].values()]
        assert [c.status for c in connected] == ["ok", "ok"]
        assert "sandbox OFF" in connected[1].text and "sandbox OFF" not in connected[0].text
        cell = kernel.execute("%syft domains")
        assert cell.status == "ok", cell.text
        rows = {line.split()[0]: line for line in cell.text.splitlines()[1:]}
        assert "sandbox OFF" in rows["loose"]
        assert "on: landlock" in rows["guarded"] and "sandbox OFF" not in rows["guarded"]
        assert "sandbox OFF</span>" in cell.html and "background-color:#b91c1c" in cell.html
    finally:
        kernel.stop()


def test_owners_see_it_in_review_and_the_sidebar(world: dict) -> None:
    loose = review(world["admins"]["loose"], poll_s=None)
    guarded = review(world["admins"]["guarded"], poll_s=None)
    try:
        assert "sandbox OFF" in loose._header.value and "#b91c1c" in loose._header.value
        assert "sandbox on: " in guarded._header.value
    finally:
        loose.close()
        guarded.close()
    addresses = [node.address for node in world["nodes"].values()]
    state = Backend(Sources("", addresses, world["owner_homes"])).state()
    shown = {d["name"]: d["sandbox"] for d in state["domains"]}
    assert shown["loose"] == "off" and shown["guarded"].startswith("on: ")
    administered = {d["name"]: d["sandbox"] for d in state["approvals"]["domains"]}
    assert administered == shown
