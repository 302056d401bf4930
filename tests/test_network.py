"""Network nodes end to end: real processes, real libp2p (Noise only), real signed records.

One open network and one real domain process are shared by the module; other tests start
their own network nodes (policies, federation). Simulated domains (`SimulatedDomain`) send
what a domain or an attacker would, from real libp2p peers in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import trio
from dialers import assert_only_noise_accepted
from networks import NetworkProcess, SimulatedDomain, dataset, wait_for
from nodes import DomainProcess, person

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.errors import NotAuthorisedError, NotFoundError
from jupyter_syft.identity import Identity
from jupyter_syft.p2p import P2PError, P2PHost
from jupyter_syft.p2p.gossip import Gossip
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import MAX_FRAME_BYTES, open_address
from jupyter_syft.wire.network_messages import RECORD_CONTEXT
from jupyter_syft.wire.rpc import signed_part

OFFLINE_AFTER = "1.5"
HEARTBEAT = "0.3"
PRIVATE = pd.DataFrame({"age": np.arange(200) % 80 + 18, "bmi": np.linspace(18.0, 40.0, 200)})
MOCK = pd.DataFrame({"age": np.full(20, 40), "bmi": np.full(20, 25.0)})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """An open network, a real domain with a dataset that joined it, its owner, a scientist."""
    root = tmp_path_factory.mktemp("network")
    operator_home, operator = person(root, "operator")
    owner_home, owner = person(root, "owner")
    scientist_home, scientist = person(root, "scientist")
    network = NetworkProcess(root, "open-net", operator_home, "--offline-after", OFFLINE_AFTER)
    network.start()
    domain = DomainProcess(
        root, "hospital-a", owner_home, "--network", network.address, "--heartbeat", HEARTBEAT
    )
    try:
        domain.start()
        admin = AdminClient(NodeConnection(domain.address, owner))
        admin.add_user(scientist.peer_id, "data_scientist", "scientist")
        admin.create_dataset(
            "diabetes",
            private=PRIVATE,
            mock=MOCK,
            description="Progression after a year #endocrine",
        )
        yield {
            "root": root,
            "network": network,
            "domain": domain,
            "admin": admin,
            "net": NetworkClient(NetworkConnection(network.address, scientist)),
            "operator": operator,
            "scientist": scientist,
            "scientist_home": scientist_home,
        }
    finally:
        domain.kill()
        network.kill()


@pytest.fixture
def simulated() -> Iterator[list[SimulatedDomain]]:
    """Simulated domains a test creates; closed after it."""
    made: list[SimulatedDomain] = []
    yield made
    for domain in made:
        domain.close()


def simulate(made: list[SimulatedDomain], name: str) -> SimulatedDomain:
    domain = SimulatedDomain(name)
    made.append(domain)
    return domain


def names(hits: list) -> set[tuple[str, str]]:
    return {(h.domain, h.dataset) for h in hits}


# ---- a real domain on an open network -------------------------------------------------------


def test_domain_joins_announces_and_is_dialled_directly(world: dict) -> None:
    net: NetworkClient = world["net"]
    wait_for(lambda: [d for d in net.domains if d.name == "hospital-a" and d.online])
    [hit] = wait_for(lambda: net.search("diabetes"))  # type: ignore[misc]
    assert (hit.domain, hit.dataset, hit.rows, hit.online) == ("hospital-a", "diabetes", 200, True)
    assert hit.schema == {"age": "int64", "bmi": "double"}
    assert hit.has_mock and "endocrine" in hit.tags
    assert hit.domain_peer_id == world["domain"].address.rsplit("/", 1)[-1]
    assert names(net.search("endocr bmi")) == {("hospital-a", "diabetes")}
    assert net.search("cardiology") == []
    assert "diabetes" in net.search("diab")._repr_html_()
    [summary] = [d for d in net.domains if d.name == "hospital-a"]
    assert summary.peer_id == hit.domain_peer_id and summary.dataset_count >= 1
    assert "hospital-a" in net.domains._repr_html_()
    # A new dataset is announced at once (gossip; else the next heartbeat repairs it).
    world["admin"].create_dataset("lipids", private=PRIVATE, mock=MOCK, description="HDL LDL")
    wait_for(lambda: net.search("ldl"), timeout=5)

    domain = net.domain("hospital-a")  # dialled at the address record the DHT holds
    assert isinstance(domain, DomainClient) and domain.role == "data_scientist"
    mock = domain.datasets["diabetes"].mock
    pd.testing.assert_frame_equal(pd.DataFrame(mock), MOCK)  # a labelled MOCK frame
    assert repr(mock).startswith("[MOCK data")
    assert net.domain(hit.domain_peer_id).peer_id == hit.domain_peer_id
    with pytest.raises(NotFoundError, match="hospital-a"):
        net.domain("hospital-z")


def test_connect_tells_network_and_domain_apart(
    world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_SYFT_HOME", str(world["scientist_home"]))
    assert isinstance(syft.connect(world["network"].address), NetworkClient)
    assert isinstance(syft.connect(world["domain"].address), DomainClient)


def test_network_accepts_only_noise(world: dict) -> None:
    trio.run(assert_only_noise_accepted, world["network"].address)


def test_restart_keeps_members_and_index_and_gossip_loss_is_repaired(world: dict) -> None:
    """Stopped, the network misses a new dataset; back (gossip now dropped), it converges."""
    network, net, admin = world["network"], world["net"], world["admin"]
    port = network.port
    network.stop()
    admin.create_dataset("cardio", private=PRIVATE, mock=MOCK, description="ECG sessions")
    network.start("--listen", f"/ip4/127.0.0.1/tcp/{port}", "--drop-gossip", "1.0")
    # Kept across the restart: the member and its indexed datasets.
    assert ("hospital-a", "diabetes") in names(net.search("diabetes", include_offline=True))
    # The heartbeat shows the network holds an older announcement: the domain re-announces.
    wait_for(lambda: net.search("ecg"))
    # All gossip is now dropped: a new dataset still arrives through the heartbeat repair.
    admin.create_dataset("pressure", private=PRIVATE, mock=MOCK, description="Blood pressure")
    wait_for(lambda: net.search("blood"))
    mine = {h.dataset for h in net.search("") if h.domain == "hospital-a"}
    assert {"diabetes", "cardio", "pressure"} <= mine


def test_member_that_dies_drops_out_and_comes_back(world: dict) -> None:
    net, domain = world["net"], world["domain"]
    wait_for(lambda: net.search("diabetes"))
    domain.kill()  # no goodbye: only the missing heartbeats tell
    died = time.monotonic()
    wait_for(lambda: not net.search("diabetes"))
    assert time.monotonic() - died >= float(OFFLINE_AFTER) - 0.5
    assert [d.online for d in net.domains if d.name == "hospital-a"] == [False]
    assert net.search("diabetes", include_offline=True)[0].online is False
    domain.start()
    wait_for(lambda: net.search("diabetes"))
    assert [d.online for d in net.domains if d.name == "hospital-a"] == [True]


# ---- bad input from peers -------------------------------------------------------------------


def test_non_members_impostors_and_forgeries_are_refused(world: dict, simulated: list) -> None:
    address = world["network"].address
    net = world["net"]
    member = simulate(simulated, "clinic-m")
    assert member.join(address, [dataset("asthma", "inhaler trial")]) == nm.Membership(
        "member", member.seq
    )
    wait_for(lambda: net.search("asthma"))

    stranger = simulate(simulated, "clinic-s")
    reply = stranger.announce(address, [dataset("spam", "buy now")])
    assert isinstance(reply, nm.Error) and reply.code == "not_authorised"
    assert stranger.heartbeat(address) == nm.Membership("unknown", 0)

    # An impostor takes the member's name...
    impostor = simulate(simulated, "clinic-m")
    reply = impostor.join(address, [dataset("asthma", "fake")])
    assert isinstance(reply, nm.Error) and reply.code == "conflict"
    # ...or relays the member's genuine records as its own join or announcement...
    genuine = member.announcement([dataset("asthma", "inhaler trial")])
    for call in (
        nm.Join("clinic-x", member.address_record(), genuine),
        nm.Announce(genuine),
    ):
        reply = impostor.call(address, call)
        assert isinstance(reply, nm.Error) and reply.code in ("invalid", "not_authorised")
    # ...or forges one: the member's peer ID, the impostor's signature.
    body = nm.encode(
        nm.Announcement(member.peer_id, "clinic-m", member.next_seq(), time.time(), [])
    )
    forged = nm.SignedRecord(body, impostor.identity.sign(signed_part(RECORD_CONTEXT, body)))
    reply = member.call(address, nm.Announce(forged))
    assert isinstance(reply, nm.Error) and reply.code == "bad_message"
    # A call signed by the impostor but sent over the member's connection: refused too.
    frame = nm.NETWORK.sign_call(impostor.identity, address.rsplit("/", 1)[-1], nm.Heartbeat(1))
    reply = member.send(address, frame)
    assert isinstance(reply, nm.Error) and "connected peer" in reply.message
    assert names(net.search("asthma")) == {("clinic-m", "asthma")}
    assert not net.search("spam") and not net.search("fake")


def test_replayed_announcements_and_calls_are_refused(world: dict, simulated: list) -> None:
    address = world["network"].address
    net = world["net"]
    member = simulate(simulated, "clinic-r")
    old = member.announcement([dataset("flu", "season one")])
    member.join(address, [dataset("flu", "season one")])
    assert member.announce(address, [dataset("flu", "season two")]).status == "member"
    wait_for(lambda: net.search("two"))
    reply = member.call(address, nm.Announce(old))  # an older signed announcement, resent
    assert isinstance(reply, nm.Error) and reply.code == "conflict"
    frame = member.frame(address, nm.Heartbeat(member.seq))
    assert member.send(address, frame).status == "member"
    reply = member.send(address, frame)  # the same signed call twice
    assert isinstance(reply, nm.Error) and "replayed" in reply.message
    assert net.search("two") and not net.search("one")


def test_oversized_metadata_is_refused_and_the_node_keeps_serving(
    world: dict, simulated: list
) -> None:
    address = world["network"].address
    net = world["net"]
    member = simulate(simulated, "clinic-o")
    member.join(address, [dataset("small")])
    for datasets in (
        [dataset("long", "x" * 10_000)],
        [dataset(f"d{i}") for i in range(600)],
        [dataset("wide", **{f"c{i}": "double" for i in range(400)})],
    ):
        reply = member.announce(address, datasets)
        assert isinstance(reply, nm.Error) and reply.code in ("invalid", "bad_message")
    # A frame over the protocol's cap is refused before it is read.
    join = nm.Join("clinic-o", member.address_record(), member.announcement([]))
    frame = member.frame(address, join) + bytes(MAX_FRAME_BYTES)
    reply = member.send(address, frame)
    assert isinstance(reply, nm.Error) and "exceeds" in reply.message
    assert [h.dataset for h in net.search("") if h.domain == "clinic-o"] == ["small"]


def test_announcement_flood_is_rate_limited_and_node_stays_responsive(
    world: dict, simulated: list
) -> None:
    address = world["network"].address
    net = world["net"]
    flooder = simulate(simulated, "clinic-f")
    flooder.join(address, [dataset("calm")])
    latencies: list[float] = []

    def flood(i: int) -> str:
        reply = flooder.announce(address, [dataset(f"flood{i}")])
        return reply.code if isinstance(reply, nm.Error) else "ok"

    def search_while_flooding() -> None:
        for _ in range(20):
            started = time.perf_counter()
            net.search("calm")
            latencies.append(time.perf_counter() - started)

    with ThreadPoolExecutor(8) as pool:
        searching = pool.submit(search_while_flooding)
        outcomes = list(pool.map(flood, range(400)))
        searching.result()
    assert outcomes.count("ok") <= 20  # a burst of 10, then 1 per second
    assert outcomes.count("rate_limited") >= 380
    assert max(latencies) < 0.5, latencies
    # Others are unaffected, and the flooder's heartbeats (its own allowance) still pass.
    assert wait_for(lambda: net.search("")) and flooder.heartbeat(address) is not None


def test_gossip_is_a_fast_path_that_is_checked(tmp_path: Path, simulated: list) -> None:
    """Gossiped announcements count only when signed by a member and newer than held."""
    operator_home, _ = person(tmp_path, "operator")
    network = NetworkProcess(tmp_path, "gossip-net", operator_home)
    address = network.start()
    net = NetworkClient(NetworkConnection(address, Identity.generate()))
    member = simulate(simulated, "clinic-g")
    stranger = simulate(simulated, "clinic-h")

    async def publish() -> None:
        relay = Identity.generate()  # any peer may relay: the record's signature is what counts
        async with P2PHost(relay, None) as host, Gossip(host) as gossip:
            hello = nm.NETWORK.sign_call(relay, address.rsplit("/", 1)[-1], nm.Hello())
            await host.request(address, nm.NETWORK_PROTOCOL, hello)
            await trio.sleep(0.5)  # the gossip streams and subscriptions settle
            await gossip.publish(
                nm.ANNOUNCE_TOPIC, nm.encode(member.announcement([dataset("gossiped")]))
            )
            # Not applied: a non-member's, a forged one, an older one, and a flood of junk.
            for record in (
                stranger.announcement([dataset("intruder")]),
                nm.SignedRecord(
                    nm.encode(
                        nm.Announcement(
                            member.peer_id,
                            "clinic-g",
                            member.next_seq() + 9,
                            0.0,
                            [dataset("forged")],
                        )
                    ),
                    stranger.identity.sign(b"x"),
                ),
                member.announcement([dataset("older")], seq=member.seq - 5),
            ):
                await gossip.publish(nm.ANNOUNCE_TOPIC, nm.encode(record))
            for i in range(100):
                await gossip.publish(nm.ANNOUNCE_TOPIC, b"junk %d" % i)
            await trio.sleep(1.0)

    try:
        member.join(address, [dataset("before")])
        trio.run(publish)
        assert names(net.search("gossiped")) == {("clinic-g", "gossiped")}
        for word in ("before", "intruder", "forged", "older"):
            assert not net.search(word), word
    finally:
        network.stop()


# ---- join policies and the operator's commands ----------------------------------------------


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    command = [sys.executable, "-m", "jupyter_syft.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_manual_policy_approve_members_remove(tmp_path: Path, simulated: list) -> None:
    operator_home, _ = person(tmp_path, "operator")
    network = NetworkProcess(tmp_path, "manual-net", operator_home, "--join-policy", "manual")
    network.start()
    try:
        address = network.address
        net = NetworkClient(NetworkConnection(address, Identity.generate()))
        domain = simulate(simulated, "clinic-p")
        assert domain.join(address, [dataset("sepsis")]).status == "pending"
        assert not net.search("sepsis") and net.domains == []
        data_dir = ("--data-dir", str(network.data_dir))
        listing = run_cli(operator_home, "network", "members", *data_dir)
        assert domain.peer_id in listing.stdout and "pending" in listing.stdout
        # Only the operator may approve.
        with pytest.raises(NotAuthorisedError):
            net.approve(domain.peer_id)
        assert (
            run_cli(operator_home, "network", "approve", domain.peer_id, *data_dir).returncode == 0
        )
        assert names(net.search("sepsis")) == {("clinic-p", "sepsis")}
        assert domain.heartbeat(address).status == "member"

        assert (
            run_cli(operator_home, "network", "remove", domain.peer_id, *data_dir).returncode == 0
        )
        assert not net.search("sepsis", include_offline=True)
        assert domain.heartbeat(address).status == "removed"
        reply = domain.join(address, [dataset("sepsis")])
        assert isinstance(reply, nm.Error) and "removed" in reply.message
        with pytest.raises(NotAuthorisedError, match="operator"):
            net.remove(domain.peer_id)
    finally:
        network.stop()


def test_allowlist_policy(tmp_path: Path, simulated: list) -> None:
    listed = simulate(simulated, "clinic-l")
    other = simulate(simulated, "clinic-u")
    operator_home, _ = person(tmp_path, "operator")
    network = NetworkProcess(
        tmp_path,
        "allow-net",
        operator_home,
        "--join-policy",
        "allowlist",
        "--allow",
        listed.peer_id,
    )
    network.start()
    try:
        assert listed.join(network.address, [dataset("renal")]).status == "member"
        reply = other.join(network.address, [dataset("renal")])
        assert isinstance(reply, nm.Error) and "allowlist" in reply.message
        net = NetworkClient(NetworkConnection(network.address, Identity.generate()))
        assert names(net.search("renal")) == {("clinic-l", "renal")}
    finally:
        network.stop()


# ---- federation -----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_federated_networks_answer_for_each_others_members(tmp_path: Path, simulated: list) -> None:
    from jupyter_syft.identity import load_or_create

    operator_home, _ = person(tmp_path, "operator")
    nodes, addresses = [], []
    for name in ("north", "south"):
        key = load_or_create(tmp_path / name / "node.key")  # known peer ID before it starts
        addresses.append(f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/{key.peer_id}")
    for i, name in enumerate(("north", "south")):
        config = tmp_path / f"{name}.toml"
        config.write_text(f'peers = ["{addresses[1 - i]}"]\npeer_check_s = 0.2\n')
        listen = addresses[i].rsplit("/p2p/", 1)[0]
        nodes.append(
            NetworkProcess(
                tmp_path, name, operator_home, "--config", str(config), "--listen", listen
            )
        )
    for node in nodes:
        node.start()
    try:
        north_member = simulate(simulated, "north-clinic")
        south_member = simulate(simulated, "south-clinic")
        north_member.join(nodes[0].address, [dataset("malaria", "north cases")])
        south_member.join(nodes[1].address, [dataset("malaria", "south cases")])
        scientist = Identity.generate()
        north = NetworkClient(NetworkConnection(nodes[0].address, scientist))
        south = NetworkClient(NetworkConnection(nodes[1].address, scientist))
        both = {("north-clinic", "malaria"), ("south-clinic", "malaria")}
        wait_for(lambda: names(north.search("malaria")) == both)
        assert names(south.search("malaria")) == both
        assert {d.name for d in north.domains} == {"north-clinic", "south-clinic"}
        # The south member's signed address record, found from the north through the DHT.
        located = north._connection.call(nm.Locate("south-clinic"))
        [entry] = located.found  # type: ignore[union-attr]
        assert open_address(entry.address).peer_id == south_member.peer_id  # type: ignore[arg-type]
        # A peer network that is down: its part is missing, and the answer says so, quickly.
        nodes[1].stop()
        started = time.perf_counter()
        results = north.search("malaria")
        assert names(results) == {("north-clinic", "malaria")}
        assert results.unreachable == [nodes[1].address]
        assert time.perf_counter() - started < 2.5
    finally:
        for node in nodes:
            node.kill()


def test_dht_keeps_and_replicates_only_valid_newest_records() -> None:
    """Address records travel between DHT servers; forged and older ones are refused."""
    from jupyter_syft.network.addresses import AddressValidator, address_key
    from jupyter_syft.p2p.dht import Dht
    from jupyter_syft.wire.network_messages import sign_record

    domain, impostor = Identity.generate(), Identity.generate()
    key = address_key(domain.peer_id)

    def record(signer: Identity, seq: int) -> bytes:
        addr = f"/ip4/127.0.0.1/tcp/{seq}/p2p/{signer.peer_id}"
        body = nm.AddressRecord(signer.peer_id, seq, time.time(), [addr])
        return nm.encode(sign_record(signer, body))

    async def main() -> None:
        validators = {nm.ADDRESS_NAMESPACE: AddressValidator()}
        async with (
            P2PHost(Identity.generate()) as a,
            P2PHost(Identity.generate()) as b,
            P2PHost(Identity.generate()) as c,
            Dht(a, validators) as dht_a,
            Dht(b, validators) as dht_b,
            Dht(c, validators) as dht_c,
        ):
            servers = [b.peer_id]
            hello = nm.encode(nm.Hello())
            for host in (a, c):  # connect: any request will do, even a refused one
                with pytest.raises(P2PError):
                    await host.request(b.multiaddrs[0], "/none/1", hello)
            old, new, forged = record(domain, 1), record(domain, 2), record(impostor, 9)
            dht_a.store(key, new)
            assert await dht_a.replicate(key, new, servers, 5) == 1
            assert dht_b.get_local(key) == new
            # An impostor's record under the domain's key, and an older one: refused.
            assert await dht_a.replicate(key, forged, servers, 5) == 0
            with pytest.raises(ValueError):
                dht_a.store(key, forged)
            await dht_a.replicate(key, old, servers, 5)
            assert await dht_c.fetch(key, servers, 5) == new
            assert dht_c.get_local(key) == new  # kept where it was looked up

    trio.run(main)
