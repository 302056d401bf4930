"""Signed network calls and signed records.

Calls get the same checks as domain calls (see `wire.signing`): a verifying signature, the
sender is the Noise-authenticated peer, addressed to this node, fresh, nonce unseen. Records
are checked against the peer ID they name, so a record relayed by gossip, the DHT or a peer
network cannot be forged or altered by the relay (an impostor's record fails to verify).

Each signature covers a context string before the body, so a signature made for one purpose
(a domain call, a network call, a record) is never accepted for another.
"""

from __future__ import annotations

import os
import time
from typing import TypeVar

import msgspec

from jupyter_syft.identity import Identity, verify_signature
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.signing import BadMessage, ReplayGuard

CALL_CONTEXT = b"jupyter-syft/network-call/1\n"
RECORD_CONTEXT = b"jupyter-syft/record/1\n"

R = TypeVar("R", nm.Announcement, nm.AddressRecord)


def sign_network_call(identity: Identity, node_peer_id: str, call: nm.Call) -> bytes:
    envelope = nm.NetworkEnvelope(
        sender=identity.peer_id,
        node=node_peer_id,
        issued_at=time.time(),
        nonce=os.urandom(16),
        call=call,
    )
    body = nm.encode(envelope)
    signature = identity.sign(CALL_CONTEXT + body)
    return nm.encode(nm.SignedNetworkCall(body=body, signature=signature))


def open_network_call(
    frame: bytes, remote_peer_id: str, node_peer_id: str, guard: ReplayGuard
) -> nm.NetworkEnvelope:
    """Check a received frame and return the call it carries, or raise BadMessage."""
    try:
        signed = nm.decode_signed_call(frame)
        envelope = nm.decode_envelope(signed.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a signed network call: {exc}") from exc
    if envelope.sender != remote_peer_id:
        raise BadMessage("sender does not match the connected peer")
    if not verify_signature(envelope.sender, CALL_CONTEXT + signed.body, signed.signature):
        raise BadMessage("signature does not verify against the sender's peer ID")
    if envelope.node != node_peer_id:
        raise BadMessage("call is addressed to another node")
    guard.check(envelope.nonce, envelope.issued_at, time.time())
    return envelope


def sign_record(identity: Identity, record: nm.Record) -> nm.SignedRecord:
    if record.peer_id != identity.peer_id:
        raise ValueError("a record is signed by the peer it describes")
    body = nm.encode(record)
    return nm.SignedRecord(body=body, signature=identity.sign(RECORD_CONTEXT + body))


def open_record(signed: nm.SignedRecord, kind: type[R]) -> R:
    """The record of type `kind` inside `signed`, if its own peer ID signed it."""
    try:
        record = nm.decode_record(signed.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a record: {exc}") from exc
    if not isinstance(record, kind):
        raise BadMessage(f"expected a {kind.__name__}, got a {type(record).__name__}")
    if not verify_signature(record.peer_id, RECORD_CONTEXT + signed.body, signed.signature):
        raise BadMessage(f"{kind.__name__} is not signed by {record.peer_id} (forged)")
    return record
