"""The one RPC layer every service shares: protocol values, signed frames, a handler table.

A service is a `Protocol`: its libp2p protocol id, the context its signatures cover, and the
unions of its calls and replies. Every call class names its reply type (`Call[Reply]`), so a
client's `call()` is typed and the reply it gets is checked against the call it made.

A node serves a protocol with a `Router`: the handlers of its feature objects, collected by
the `@handles(CallType, allow=...)` mark into one table that is checked when the node starts
(a call without a handler, or a handler for a call the protocol does not have, is a start-up
error). The router opens the frame, checks the caller's role against the handler's `allow`,
runs the handler and answers with its reply or an `Error`; an unexpected exception becomes an
`internal` error with an incident id, logged with its traceback on the node, so a client sees
"the node failed (incident ...)" rather than a dropped stream it would take for "offline".

Signatures cover `context + SHA-256(body)` (hash-then-sign, as Ed25519ph): a signature made
for one purpose (a domain call, a network call, a record, a secure-aggregation message) is
never accepted for another, and a large body is read once.

Threat model of `Protocol.open_call` (invariant 2: only signed, fresh, first-seen calls); it
refuses, in order:
- a frame that is not a signed envelope of a known call (malformed, unknown or wrong-typed),
- a sender other than the Noise-authenticated remote peer (a call relayed by someone else),
- a signature that does not verify against the sender's peer ID (forged or foreign-signed),
- a call addressed to another node (replaying a call made to a different node),
- a call issued too long ago or in the future, or before the node started (stale replay),
- a nonce seen before within the freshness window (replay).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import typing
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import msgspec

from jupyter_syft.errors import BY_CODE, NodeError
from jupyter_syft.identity import Identity, verify_signature

log = logging.getLogger(__name__)

FRESHNESS_S = 120.0
CLOCK_SKEW_S = 30.0

ErrorCode = Literal[
    "bad_message",  # the frame is not a well-formed, correctly signed, fresh call
    "not_authorised",  # the sender's role does not allow this call
    "not_found",  # unknown dataset, request, upload, member...
    "invalid",  # well-formed but wrong: bad code, schema mismatch, bad name...
    "conflict",  # the state does not allow it (already decided, name taken, stale record...)
    "budget_exhausted",  # the privacy budget left cannot pay for this; nothing was charged
    "rate_limited",  # too many calls from this peer; retry later
    "internal",  # the node failed; the message carries an incident id its operator can find
]

R = TypeVar("R", bound="Struct")


class Struct(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of every wire struct: unknown fields are an error, not silently dropped."""


class Call(Struct, Generic[R]):
    """A call whose reply is `R` (or an `Error`)."""


class Done(Struct, tag="done"):
    """The reply of a call that has nothing to report but its success."""


class Error(Struct, tag="error"):
    code: ErrorCode
    message: str
    incident: str = ""  # set for "internal": the id under which the node logged the failure


class Signed(Struct):
    """Signed bytes: a call envelope, a record, a secure-aggregation envelope."""

    body: bytes
    signature: bytes  # Ed25519 over signed_part(context, body)


class Envelope(Struct):
    """What a caller signs: the call plus who, to whom, when, and a one-time nonce."""

    sender: str  # peer id; must equal the Noise-authenticated remote peer
    node: str  # the node's peer id: a call signed for one node is refused by another
    issued_at: float  # unix seconds
    nonce: bytes  # 16 random bytes; a repeated nonce is a replay
    call: msgspec.Raw  # msgpack of one of the protocol's calls


class BadMessage(Exception):
    """The frame is not acceptable; the message says why."""


class Refused(Exception):
    """A call the node will not carry out; the router turns it into an `Error` reply.

    Handlers validate everything before they write, so raising it changes nothing."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class StartupError(Exception):
    """A router's handler table does not match its protocol."""


_encoder = msgspec.msgpack.Encoder()
_signed_decoder = msgspec.msgpack.Decoder(Signed)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def signed_part(context: bytes, body: bytes) -> bytes:
    """What a signature covers: the context and SHA-256 of the body. A secure-aggregation
    masked input is 8 MB: Ed25519 alone reads it twice to sign and once to verify, after a copy
    to prepend the context; hashing once cuts signing such a frame from ~32 ms to ~8 ms.
    Forging still needs a SHA-256 collision."""
    return context + hashlib.sha256(body).digest()


def sign(identity: Identity, context: bytes, body: bytes) -> Signed:
    return Signed(body=body, signature=identity.sign(signed_part(context, body)))


def verifies(signed: Signed, context: bytes, peer_id: str) -> bool:
    return verify_signature(peer_id, signed_part(context, signed.body), signed.signature)


def decode_signed(frame: bytes) -> Signed:
    try:
        return _signed_decoder.decode(frame)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a signed call: {exc}") from exc


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


@dataclass(frozen=True)
class Opened:
    """A call that passed every check of `Protocol.open_call`."""

    sender: str
    call: Call[Any]


def _union_members(union: object) -> tuple[type[Struct], ...]:
    members = typing.get_args(union) or (union,)
    return tuple(typing.cast(type[Struct], t) for t in members)


def _declared_reply(call: type[Call[Any]]) -> type[Struct]:
    """The `R` of `class X(Call[R])`, resolved in the call's own module."""
    for base in getattr(call, "__orig_bases__", ()):
        if typing.get_origin(base) is Call:
            (reply,) = typing.get_args(base)
            if isinstance(reply, typing.ForwardRef):
                reply = vars(sys.modules[call.__module__])[reply.__forward_arg__]
            return typing.cast(type[Struct], reply)
    raise StartupError(f"{call.__name__} does not declare its reply type: Call[ReplyType]")


class Protocol:
    """One service's wire contract: what may be called, what comes back, how it is signed."""

    def __init__(self, protocol_id: str, context: bytes, calls: object, replies: object) -> None:
        self.id = protocol_id
        self.context = context
        self.calls = _union_members(calls)
        self.replies = (*_union_members(replies), Error)
        self.reply_of: dict[type[Struct], type[Struct]] = {}
        for call in self.calls:
            reply = _declared_reply(typing.cast(type[Call[Any]], call))
            if reply not in self.replies:
                raise StartupError(f"{call.__name__}'s reply {reply.__name__} is not a reply")
            self.reply_of[call] = reply
        self._call_decoder = msgspec.msgpack.Decoder(typing.Union[self.calls])  # noqa: UP007
        self._reply_decoder = msgspec.msgpack.Decoder(typing.Union[self.replies])  # noqa: UP007

    def sign_call(self, identity: Identity, node_peer_id: str, call: Call[Any]) -> bytes:
        envelope = Envelope(
            sender=identity.peer_id,
            node=node_peer_id,
            issued_at=time.time(),
            nonce=os.urandom(16),
            call=msgspec.Raw(encode(call)),
        )
        return encode(sign(identity, self.context, encode(envelope)))

    def open_call(
        self, frame: bytes, remote_peer_id: str, node_peer_id: str, guard: ReplayGuard
    ) -> Opened:
        """Check a received frame and return the call it carries, or raise BadMessage."""
        signed = decode_signed(frame)
        try:
            envelope = _envelope_decoder.decode(signed.body)
            call = self._call_decoder.decode(envelope.call)
        except msgspec.DecodeError as exc:
            raise BadMessage(f"malformed or unknown call: {exc}") from exc
        if envelope.sender != remote_peer_id:
            raise BadMessage("sender does not match the connected peer")
        if not verifies(signed, self.context, envelope.sender):
            raise BadMessage("signature does not verify against the sender's peer ID")
        if envelope.node != node_peer_id:
            raise BadMessage("call is addressed to another node")
        guard.check(envelope.nonce, envelope.issued_at, time.time())
        return Opened(envelope.sender, typing.cast(Call[Any], call))

    def decode_reply(self, frame: bytes) -> Struct:
        """Any reply of this protocol, `Error` included; raises msgspec.DecodeError."""
        return typing.cast(Struct, self._reply_decoder.decode(frame))

    def read_reply(self, call: Call[R], frame: bytes) -> R:
        """The reply to `call` in `frame`; an `Error` raises the matching SyftError."""
        try:
            reply = self.decode_reply(frame)
        except msgspec.DecodeError as exc:
            raise NodeError(f"the node sent a reply that is not a valid message: {exc}") from exc
        if isinstance(reply, Error):
            message = reply.message + (f" (incident {reply.incident})" if reply.incident else "")
            raise BY_CODE[reply.code](message)
        expected = self.reply_of[type(call)]
        if not isinstance(reply, expected):
            raise NodeError(
                f"the node answered {type(call).__name__} with {type(reply).__name__}, "
                f"not {expected.__name__}"
            )
        return typing.cast(R, reply)


# ---- serving ---------------------------------------------------------------------------

Role = str  # the caller's role as the service names it; "" for a stranger


@dataclass(frozen=True)
class Caller:
    peer_id: str
    role: Role


Handler = Callable[[Caller, Any], Awaitable[Struct]]


@dataclass(frozen=True)
class Route:
    call: type[Struct]
    allow: frozenset[Role]  # roles that may make this call; checked before the handler runs
    handler: Handler


_MARK = "__rpc_handles__"

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handles(call: type[Call[Any]], *, allow: Iterable[Role]) -> Callable[[F], F]:
    """Mark a feature's method as the handler of `call`, for callers whose role is in `allow`."""

    def mark(method: F) -> F:
        setattr(method, _MARK, (call, frozenset(allow)))
        return method

    return mark


class Router:
    """Serves one protocol from the handlers of some feature objects; see the module doc."""

    def __init__(
        self,
        protocol: Protocol,
        features: Iterable[object],
        node_peer_id: str,
        role_of: Callable[[str], Role],
        guard: ReplayGuard | None = None,
        admit: Callable[[str], bool] = lambda peer: True,
        on_refused: Callable[[Caller, str, Refused], None] = lambda caller, call, exc: None,
        deny: Callable[[Caller, Route], str] = lambda caller, route: "not allowed",
    ) -> None:
        self.protocol = protocol
        self.node_peer_id = node_peer_id
        self.role_of = role_of
        self.guard = guard or ReplayGuard()
        self.admit = admit  # per-peer rate limit, before any other work
        self.on_refused = on_refused  # e.g. audit refused calls
        self.deny = deny  # the message of a role refusal: (caller, route) -> text
        self.routes: dict[type[Struct], Route] = {}
        for feature in features:
            for name in dir(type(feature)):
                marked = getattr(getattr(type(feature), name), _MARK, None)
                if marked is None:
                    continue
                call, allow = marked
                if call in self.routes:
                    raise StartupError(f"two handlers for {call.__name__}")
                self.routes[call] = Route(call, allow, getattr(feature, name))
        missing = [c.__name__ for c in protocol.calls if c not in self.routes]
        extra = [c.__name__ for c in self.routes if c not in protocol.calls]
        if missing or extra:
            raise StartupError(
                f"{protocol.id}: calls without a handler: {missing or 'none'}; "
                f"handlers without a call: {extra or 'none'}"
            )

    async def handle(self, remote_peer: str, frame: bytes) -> bytes:
        if not self.admit(remote_peer):
            return self.error_frame("rate_limited", "too many calls from this peer; retry later")
        try:
            opened = self.protocol.open_call(frame, remote_peer, self.node_peer_id, self.guard)
        except BadMessage as exc:
            return self.error_frame("bad_message", str(exc))
        route = self.routes[type(opened.call)]
        name = type(opened.call).__name__
        caller = Caller(opened.sender, self.role_of(opened.sender))
        try:
            if caller.role not in route.allow:
                raise Refused("not_authorised", self.deny(caller, route))
            reply = await route.handler(caller, opened.call)
        except BadMessage as exc:  # e.g. a record inside the call that does not verify
            return self.error_frame("bad_message", str(exc))
        except Refused as exc:
            self.on_refused(caller, name, exc)
            return self.error_frame(exc.code, str(exc))
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("incident %s: %s from %s failed", incident, name, caller.peer_id)
            return encode(Error("internal", f"the node failed on {name}", incident))
        return encode(reply)

    def error_frame(self, code: ErrorCode, message: str) -> bytes:
        return encode(Error(code, message))

    def bad_frame_reply(self, reason: str) -> bytes:
        return self.error_frame("bad_message", reason)
