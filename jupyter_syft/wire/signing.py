"""Signed calls: who sent a call, to which node, when, and only once.

The Noise channel already proves which peer is on the other end; the signature makes each
call a record the node can keep (the audit log names a signed call, not a socket). The checks
in `open_call` refuse, in order:
- a frame that is not a `SignedCall` (malformed or unknown message),
- a signature that does not verify against the sender's peer ID (forged or foreign-signed),
- a sender other than the authenticated remote peer (a call relayed by someone else),
- a call addressed to another node (replaying a call made to a different domain),
- a call issued too long ago or in the future (stale replay),
- a nonce seen before within the freshness window (replay).
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict

import msgspec

from jupyter_syft.identity import Identity, verify_signature
from jupyter_syft.wire import messages as m

FRESHNESS_S = 120.0
CLOCK_SKEW_S = 30.0


class BadMessage(Exception):
    """The frame is not an acceptable call; the message says why."""


def sign_call(identity: Identity, node_peer_id: str, call: m.Call) -> bytes:
    envelope = m.CallEnvelope(
        sender=identity.peer_id,
        node=node_peer_id,
        issued_at=time.time(),
        nonce=os.urandom(16),
        call=call,
    )
    body = m.encode(envelope)
    return m.encode(m.SignedCall(body=body, signature=identity.sign(body)))


class ReplayGuard:
    """Remembers nonces for the freshness window; refuses calls older than the node's start.

    Nonces live in memory, so after a restart the node also refuses any call issued before it
    started: a call captured before a restart cannot be replayed after it.
    """

    def __init__(self, started_at: float | None = None) -> None:
        self.started_at = time.time() if started_at is None else started_at
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, nonce: bytes, issued_at: float, now: float) -> None:
        if len(nonce) != 16:
            raise BadMessage("nonce must be 16 bytes")
        if issued_at > now + CLOCK_SKEW_S:
            raise BadMessage("call is dated in the future: check this machine's clock")
        if issued_at < now - FRESHNESS_S or issued_at < self.started_at - CLOCK_SKEW_S:
            raise BadMessage("call is too old (stale or replayed)")
        with self._lock:
            while self._seen and next(iter(self._seen.values())) < now - FRESHNESS_S - CLOCK_SKEW_S:
                self._seen.popitem(last=False)
            if nonce in self._seen:
                raise BadMessage("call was already received (replayed nonce)")
            self._seen[nonce] = now


def open_call(
    frame: bytes, remote_peer_id: str, node_peer_id: str, guard: ReplayGuard
) -> m.CallEnvelope:
    """Check a received frame and return the call it carries, or raise BadMessage."""
    try:
        signed = m.decode_signed_call(frame)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a signed call: {exc}") from exc
    try:
        envelope = m.decode_envelope(signed.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"malformed or unknown call: {exc}") from exc
    if envelope.sender != remote_peer_id:
        raise BadMessage("sender does not match the connected peer")
    if not verify_signature(envelope.sender, signed.body, signed.signature):
        raise BadMessage("signature does not verify against the sender's peer ID")
    if envelope.node != node_peer_id:
        raise BadMessage("call is addressed to another node")
    guard.check(envelope.nonce, envelope.issued_at, time.time())
    return envelope
