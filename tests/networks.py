"""Network nodes in their own processes and simulated domains, for tests and benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

from nodes import NodeProcess

from jupyter_syft.identity import Identity
from jupyter_syft.p2p import P2PThread
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_messages import sign_record


class NetworkProcess(NodeProcess):
    """A network node; `home` is its operator's JUPYTER_SYFT_HOME."""

    kind = "network"


def dataset(name: str, description: str = "", rows: int = 100, **schema: str) -> nm.DatasetMeta:
    """Metadata of one dataset, as a domain announces it."""
    return nm.DatasetMeta(
        name, description, "table", ["table"], schema or {"value": "double"}, rows, 10
    )


class SimulatedDomain:
    """A domain's network side without a domain node: a real libp2p peer, real signed records.

    Tests use it to send what a real domain would (join, announce, heartbeat) and what a
    hostile one might (forged, replayed, oversized), with no domain process to start.
    """

    def __init__(self, name: str, identity: Identity | None = None) -> None:
        self.name = name
        self.identity = identity or Identity.generate()
        self.peer_id = self.identity.peer_id
        self.seq = time.time_ns()
        self.peer = P2PThread(self.identity).start()

    def close(self) -> None:
        self.peer.close()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def address_record(self, port: int = 1) -> nm.SignedRecord:
        addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{self.peer_id}"
        record = nm.AddressRecord(self.peer_id, self.next_seq(), time.time(), [addr])
        return sign_record(self.identity, record)

    def announcement(
        self, datasets: list[nm.DatasetMeta], seq: int | None = None, name: str | None = None
    ) -> nm.SignedRecord:
        record = nm.Announcement(
            self.peer_id,
            name or self.name,
            seq or self.next_seq(),
            time.time(),
            datasets,
        )
        return sign_record(self.identity, record)

    def frame(self, network: str, call: nm.Call) -> bytes:
        return nm.NETWORK.sign_call(self.identity, network.rsplit("/", 1)[-1], call)

    def send(self, network: str, frame: bytes) -> nm.Struct:
        return nm.NETWORK.decode_reply(self.peer.request(network, nm.NETWORK_PROTOCOL, frame))

    def call(self, network: str, call: nm.Call) -> nm.Struct:
        return self.send(network, self.frame(network, call))

    def join(self, network: str, datasets: list[nm.DatasetMeta] = ()) -> nm.Struct:  # type: ignore[assignment]
        join = nm.Join(self.name, self.address_record(), self.announcement(list(datasets)))
        return self.call(network, join)

    def announce(self, network: str, datasets: list[nm.DatasetMeta]) -> nm.Struct:
        return self.call(network, nm.Announce(self.announcement(datasets)))

    def heartbeat(self, network: str) -> nm.Struct:
        return self.call(network, nm.Heartbeat(self.seq))


def wait_for(condition: Callable[[], object], timeout: float = 10.0, step: float = 0.05) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition still false after {timeout} s")
        time.sleep(step)
