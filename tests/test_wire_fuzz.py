"""A short seeded wire-fuzzing run against a live domain and a live network node (see
tests/wire_fuzz.py for what is sent and what must hold; `make fuzz` runs 100,000 cases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec.inspect as mi
import numpy as np
import pandas as pd
import pytest
from networks import NetworkProcess, SimulatedDomain, dataset
from nodes import DomainProcess, person
from wire_fuzz import Report, Target, run, strategy_for
from wire_state import differences, domain_state, network_state

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection, shared_peer
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm

CASES = 1500  # per node in CI; benchmarks/fuzz_wire.py runs many more
SEED = 20261203
UNLIMITED = ("--rate-per-s", "1000000", "--rate-burst", "1000000")

DOMAIN_READS = [
    m.Hello, m.ListDatasets, m.GetMock, m.GetRequest, m.ListRequests, m.FetchResult,
    m.GetBudget, m.GetPolicy, m.ListModels,
]  # fmt: skip
READS_AUDITED = ("read_mock",)  # the domain audits who read a mock: not a change of state
NETWORK_READS = [nm.Hello, nm.Search, nm.ListDomains, nm.Locate]


def domain_target(root: Path) -> Iterator[tuple[Target, Path]]:
    """A domain with a table and a scientist who has a request; yields it as a fuzz target."""
    owner_home, owner = person(root, "owner")
    scientist, stranger = person(root, "scientist")[1], person(root, "stranger")[1]
    node = DomainProcess(root, "fuzzed", owner_home)
    node.start(*UNLIMITED)
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        frame = pd.DataFrame({"age": np.arange(50) % 80, "bmi": np.linspace(18.0, 40.0, 50)})
        admin.create_dataset("patients", private=frame, mock=frame.head(5))
        admin.add_user(scientist.peer_id, "data_scientist", "sam")
        DomainClient(NodeConnection(node.address, scientist)).submit(
            "def f(df):\n    return len(df)\n", "f", {"df": "patients"}
        )

        def send(identity: Identity, frame: bytes) -> bytes:
            return shared_peer(identity).request(node.address, m.DOMAIN_PROTOCOL, frame)

        peer = node.address.rsplit("/", 1)[1]
        target = Target(
            m.DOMAIN, node.address, peer, send, stranger, scientist, DOMAIN_READS,
            {m.Hello, m.ListDatasets, m.GetMock},  # a public dataset's mock is open to all
        )  # fmt: skip
        yield target, node.data_dir
        assert node.process is not None and node.process.poll() is None, "the domain died"
    finally:
        node.kill()


def network_target(root: Path) -> Iterator[tuple[Target, Path]]:
    """An open network with one member domain; yields it as a fuzz target."""
    operator_home, _ = person(root, "operator")
    node = NetworkProcess(root, "fuzz-net", operator_home)
    config = root / "network.toml"
    limits = ("rate_per_s", "rate_burst", "announce_per_s", "announce_burst")
    config.write_text("".join(f"{name} = 1000000.0\n" for name in limits))
    node.start("--config", str(config))
    member = SimulatedDomain("member")
    try:
        assert member.join(node.address, [dataset("sepsis")]).status == "member"  # type: ignore[attr-defined]
        stranger = Identity.generate()

        def send(identity: Identity, frame: bytes) -> bytes:
            peer = member.peer if identity is member.identity else shared_peer(identity)
            return peer.request(node.address, nm.NETWORK_PROTOCOL, frame)

        peer = node.address.rsplit("/", 1)[1]
        target = Target(
            nm.NETWORK, node.address, peer, send, stranger, member.identity, NETWORK_READS,
            {nm.Hello, nm.Heartbeat, nm.Search, nm.ListDomains, nm.Locate, nm.Join},
            stranger_skips={nm.Join},  # a stranger's join enrols it: a change, by design
        )  # fmt: skip
        yield target, node.data_dir
        assert node.process is not None and node.process.poll() is None, "the network died"
    finally:
        member.close()
        node.kill()


def fuzz(target: Target) -> Report:
    report = run(target, CASES, SEED)
    print(
        f"{target.protocol.id}: {report.cases} cases, outcomes {dict(report.outcomes)}, "
        f"by mutation {dict(report.by_mutation)}"
    )
    assert not report.problems, "\n".join(report.problems[:20])
    assert report.cases >= CASES * 0.95  # the few drawn values msgpack cannot encode
    assert len(report.by_mutation) == 15
    return report


@pytest.mark.timeout(600)
def test_the_domain_survives_fuzzing_unchanged(tmp_path: Path) -> None:
    for target, data_dir in domain_target(tmp_path):
        before = domain_state(data_dir, READS_AUDITED)
        fuzz(target)
        assert not differences(before, domain_state(data_dir, READS_AUDITED))


@pytest.mark.timeout(600)
def test_the_network_survives_fuzzing_unchanged(tmp_path: Path) -> None:
    for target, data_dir in network_target(tmp_path):
        before = network_state(data_dir)
        fuzz(target)
        assert not differences(before, network_state(data_dir))


@pytest.mark.unit
def test_every_wire_type_has_a_strategy() -> None:
    """A new field type the fuzzer cannot draw fails here, before any fuzzing run."""
    for protocol in (m.DOMAIN, nm.NETWORK):
        for call in protocol.calls:
            strategy_for(mi.type_info(call))
