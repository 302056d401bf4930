"""One signed-call channel to one node, over this process's shared libp2p peer.

A process has one libp2p peer per identity (started on first use, kept for the life of the
process), so every node it talks to shares one host and its open connections.
"""

from __future__ import annotations

import atexit
import threading

import pyarrow as pa

from jupyter_syft.client.flight_client import FlightDataClient
from jupyter_syft.client.progress import transfer_progress
from jupyter_syft.crypto.seal import Opener
from jupyter_syft.errors import InvalidError, NodeError
from jupyter_syft.identity import USER_KEY_FILE, Identity, load_or_create, syft_home, user_identity
from jupyter_syft.p2p import P2PThread
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.receipts import (
    AuditReceipt,
    ReceiptFile,
    default_receipts_file,
    open_receipt,
    receipt_file,
)
from jupyter_syft.wire.rpc import BadMessage, Call, R, Signed

_peers: dict[str, P2PThread] = {}
_peers_lock = threading.Lock()


def shared_peer(identity: Identity) -> P2PThread:
    with _peers_lock:
        peer = _peers.get(identity.peer_id)
        if peer is None:
            peer = _peers[identity.peer_id] = P2PThread(identity).start()
            atexit.register(peer.close)
        return peer


def close_shared_peers() -> None:
    """Stop every peer this process started (they also stop at exit)."""
    with _peers_lock:
        peers = list(_peers.values())
        _peers.clear()
    for peer in peers:
        peer.close()


def _user_receipts(identity: Identity) -> ReceiptFile | None:
    """The receipts file under the user's jupyter-syft folder, for connections made as the
    user whose identity lives there (not for a script's or a test's other keys)."""
    key = syft_home() / USER_KEY_FILE
    if key.exists() and load_or_create(key).peer_id == identity.peer_id:
        return receipt_file(default_receipts_file())
    return None


def peer_id_of(multiaddr: str) -> str:
    parts = multiaddr.rstrip("/").split("/")
    if len(parts) < 3 or parts[-2] != "p2p":
        raise InvalidError(
            f"{multiaddr!r} is not a full multiaddr: expected /ip4/HOST/tcp/PORT/p2p/PEER_ID"
        )
    return parts[-1]


class NodeConnection:
    """Signs calls with this user's identity and turns error replies into exceptions."""

    def __init__(
        self, multiaddr: str, identity: Identity | None = None, timeout: float = 60.0
    ) -> None:
        """Dial the node and say Hello, within `timeout` seconds (else `Unreachable`)."""
        self.multiaddr = multiaddr
        self.node_peer_id = peer_id_of(multiaddr)
        self.identity = identity or user_identity()
        self._peer = shared_peer(self.identity)
        self.info = self.call(m.Hello(), timeout=timeout)
        self._flight: FlightDataClient | None = None
        self.receipt_file = _user_receipts(self.identity)

    def keep_receipts(self, signed: list[Signed], request_id: str) -> list[AuditReceipt]:
        """Receipts the node sent about `request_id` ("" for its chain head), checked (signed
        by this node, about that request) and appended to the user's receipts file."""
        try:
            receipts = [open_receipt(item, self.node_peer_id) for item in signed]
        except BadMessage as exc:
            raise NodeError(f"domain {self.info.name!r} sent a bad audit receipt: {exc}") from exc
        if any(r.request_id != request_id for r in receipts):
            raise NodeError(f"domain {self.info.name!r} sent a receipt about another request")
        if self.receipt_file is not None:
            self.receipt_file.keep(signed)
        return receipts

    def call(self, call: Call[R], timeout: float = 60.0) -> R:
        """The node's reply to `call`; an error reply raises its SyftError, a broken link
        `Unreachable`."""
        frame = m.DOMAIN.sign_call(self.identity, self.node_peer_id, call)
        raw = self._peer.request(self.multiaddr, m.DOMAIN_PROTOCOL, frame, timeout=timeout)
        return m.DOMAIN.read_reply(call, raw)

    @property
    def flight(self) -> FlightDataClient:
        if self._flight is None:
            self._flight = FlightDataClient(
                self.info.flight_location, self.info.tls_cert_pem, self.identity
            )
        return self._flight

    def table(self, data: m.ArrowData) -> pa.Table:
        """Inline IPC bytes, or a Flight fetch with the ticket the node issued."""
        if data.ticket:
            with transfer_progress(f"downloading from {self.info.name}", data.nbytes) as bar:
                return self.flight.get(data.ticket, bar)
        with pa.ipc.open_stream(data.ipc) as reader:
            return reader.read_all()

    def open_sealed_data(self, data: m.ArrowData, context: bytes) -> pa.Buffer:
        """A sealed piece (inline bytes, or a file over Flight) opened with our identity as it
        arrives, into one buffer from Arrow's pool; raises SealError if it does not open."""
        size = data.nbytes if data.ticket else len(data.ipc)
        opener = Opener(self.identity, context, size, pa.allocate_buffer)
        if data.ticket:
            with transfer_progress(f"downloading from {self.info.name}", size) as bar:
                self.flight.get_file(data.ticket, opener.feed, bar)
        else:
            opener.feed(data.ipc)
        return opener.finish()
