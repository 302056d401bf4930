"""Single-use tickets for the Flight data plane.

The domain node issues a ticket over the authenticated libp2p channel; the client signs it with
its own key and presents it on the Flight connection. A ticket is

    token  = msgpack(claims) + HMAC-SHA256(node secret, msgpack(claims))
    ticket = msgpack({token, requester's Ed25519 signature over token})

The HMAC proves the node issued the claims unchanged; the signature binds the ticket to the
requester's peer ID, so a ticket leaked or intercepted is useless without the requester's key.
The secret is random per process: tickets die with the node.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

import msgspec

from jupyter_syft.identity import Identity, verify_signature

Action = Literal["get", "put"]
TAG_SIZE = hashlib.sha256().digest_size


class TicketError(Exception):
    """A ticket was refused; the message says why."""


class _Claims(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    action: Action
    path: str  # relative to the server's data root
    requester: str  # base58 peer ID
    nonce: bytes
    expiry: float  # unix seconds
    max_bytes: int  # upload limit, 0 = none


class _SignedTicket(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    token: bytes
    signature: bytes


@dataclass(frozen=True)
class Grant:
    """What a redeemed ticket allows."""

    path: str
    requester: str
    max_bytes: int


def sign_ticket(token: bytes, identity: Identity) -> bytes:
    """Client side: the bytes to put in the Flight Ticket (get) or descriptor command (put)."""
    return msgspec.msgpack.encode(_SignedTicket(token, identity.sign(token)))


def _check_path(path: str) -> None:
    """Refuse absolute paths and `..`: a ticket must never name a file outside the data root."""
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or "\\" in path or ".." in parts:
        raise TicketError(f"path outside root: {path!r} must be relative, without '..'")


class TicketIssuer:
    """Issues and checks single-use tickets; the HMAC secret is random per process, so tickets die
    with the node."""

    def __init__(self, default_ttl_s: float = 120.0) -> None:
        self.default_ttl_s = default_ttl_s
        self._secret = secrets.token_bytes(32)
        self._used: dict[bytes, float] = {}  # nonce -> expiry; forgotten once expired
        self._lock = threading.Lock()

    def issue(
        self, action: Literal["get", "put"], path: str, requester: str, max_bytes: int = 0
    ) -> bytes:
        if action not in ("get", "put"):
            raise TicketError(f"malformed: unknown action {action!r}")
        _check_path(path)
        claims = _Claims(
            action=action,
            path=path,
            requester=requester,
            nonce=secrets.token_bytes(16),
            expiry=time.time() + self.default_ttl_s,
            max_bytes=max_bytes,
        )
        body = msgspec.msgpack.encode(claims)
        return body + self._tag(body)

    def redeem(self, action: str, flight_ticket: bytes) -> Grant:
        """Check a signed ticket and mark it used; raise TicketError saying why it is refused."""
        try:
            signed = msgspec.msgpack.decode(flight_ticket, type=_SignedTicket)
        except msgspec.DecodeError as exc:
            raise TicketError(f"malformed ticket: {exc}") from exc
        token = signed.token
        body, tag = token[:-TAG_SIZE], token[-TAG_SIZE:]
        # Constant-time compare: a timing leak would let an attacker forge a tag byte by byte.
        if not body or not hmac.compare_digest(tag, self._tag(body)):
            raise TicketError("forged ticket: not issued by this node, or altered")
        try:
            claims = msgspec.msgpack.decode(body, type=_Claims)
        except msgspec.DecodeError as exc:
            raise TicketError(f"malformed ticket: {exc}") from exc
        # A 'get' ticket must not authorise overwriting the file it names, nor the reverse.
        if claims.action != action:
            raise TicketError(f"ticket is for {claims.action!r}, not {action!r}")
        now = time.time()
        if now > claims.expiry:
            raise TicketError(f"ticket expired {now - claims.expiry:.1f} s ago")
        # Checked before the nonce is spent, so a thief cannot burn the owner's ticket.
        if not verify_signature(claims.requester, token, signed.signature):
            raise TicketError(
                f"wrong requester: the ticket belongs to {claims.requester}, "
                "and is not signed by that peer's key"
            )
        with self._lock:
            # Single use stops replay of a ticket captured from a log or a finished transfer.
            if claims.nonce in self._used:
                raise TicketError("ticket already used")
            self._used = {n: e for n, e in self._used.items() if e >= now}
            self._used[claims.nonce] = claims.expiry
        return Grant(claims.path, claims.requester, claims.max_bytes)

    def _tag(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()
