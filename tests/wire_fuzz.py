"""Wire fuzzing against live nodes: hostile calls and broken frames, generated from the
protocols' own call unions, sent over real libp2p streams (tests/test_wire_fuzz.py runs a
short seeded run; benchmarks/fuzz_wire.py the long one).

Every case is one call from one of two callers: a stranger (no role on the node) sending any
call, or a member sending the calls a member may make without changing anything (reads).
Field values are drawn from each field's wire type (msgspec's type info), biased to hostile
ones: path-like and huge strings, NaN and infinities, integers at and past 64 bits, wrong
literals. Then the frame is sent as it is ("valid", "reordered" keys, "oversized" values) or
broken: truncated, a bit flipped, junk appended, random bytes, mis-signed, sent by another
peer than it names, addressed to another node, stale, from the future, replayed, a field of
the wrong type, an unknown field. What must hold for every case:

- the reply is a reply of the protocol (never a dropped stream, never `internal`);
- a broken frame is refused as `bad_message`; a stranger's call that needs a role as
  `not_authorised`;
- nothing changes: the node's tables and files are compared before and after the run (the
  audit may gain `refused` entries only), and the node answers a plain call throughout.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from networks import NetworkProcess, SimulatedDomain, dataset
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection, shared_peer
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire import rpc
from jupyter_syft.wire.rpc import Call, Error, Protocol

HOSTILE_TEXT = [
    "",
    ".",
    "..",
    "../../../../etc/passwd",
    "/",
    "\x00",
    "patients\x00.arrow",
    "%s%s%n",
    "'; DROP TABLE requests; --",
    "🙂" * 64,
    "a" * 70_000,
    "\ud7ff\ue000",
]
MUTATIONS = (
    "valid",
    "reordered",
    "oversized",
    "truncated",
    "bit_flip",
    "junk_appended",
    "random_bytes",
    "mis_signed",
    "wrong_sender",
    "wrong_node",
    "stale",
    "future",
    "replayed",
    "wrong_type",
    "unknown_field",
)
ACCEPTED = ("valid", "reordered", "oversized")  # frames that are what they claim to be


def strategy_for(kind: mi.Type, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a wire type, hostile ones often. A type the wire gains that this does not
    know fails the fuzz test, so the strategies stay complete."""
    if isinstance(kind, mi.StrType):
        return st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
    if isinstance(kind, mi.IntType):
        edges = st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1])
        return st.one_of(edges, st.integers(-(2**63), 2**64 - 1))
    if isinstance(kind, mi.FloatType):
        return st.one_of(st.sampled_from([0.0, -0.0, 1e308, -1e308]), st.floats())
    if isinstance(kind, mi.BoolType):
        return st.booleans()
    if isinstance(kind, mi.BytesType):
        return st.one_of(st.binary(max_size=64), st.just(os.urandom(4096)))
    if isinstance(kind, mi.NoneType):
        return st.none()
    if isinstance(kind, mi.LiteralType):
        return st.sampled_from(kind.values)
    if isinstance(kind, mi.UnionType):
        return st.one_of([strategy_for(t, depth) for t in kind.types])
    if isinstance(kind, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return st.lists(strategy_for(kind.item_type, depth + 1), max_size=0 if depth > 2 else 4)
    if isinstance(kind, mi.TupleType):
        return st.tuples(*[strategy_for(t, depth + 1) for t in kind.item_types])
    if isinstance(kind, mi.DictType):
        key, value = (
            strategy_for(kind.key_type, depth + 1),
            strategy_for(kind.value_type, depth + 1),
        )
        return st.dictionaries(key, value, max_size=0 if depth > 2 else 3)
    if isinstance(kind, mi.StructType):
        fields = {f.name: strategy_for(f.type, depth + 1) for f in kind.fields}
        return st.builds(kind.cls, **fields)
    if isinstance(kind, mi.RawType):
        return st.just(msgspec.Raw(b"\xc0"))  # msgpack nil
    raise TypeError(f"the fuzzer has no strategy for wire type {kind!r}: add one")


def calls_of(calls: list[type[Call[Any]]]) -> st.SearchStrategy[Call[Any]]:
    return st.one_of([strategy_for(mi.type_info(cls)) for cls in calls])


@dataclass
class Target:
    """A live node and the callers the fuzzer uses on it."""

    protocol: Protocol
    address: str
    node_peer_id: str
    send: Callable[[Identity, bytes], bytes]  # a real libp2p request as that identity
    stranger: Identity
    member: Identity
    member_reads: list[type[Call[Any]]]  # what the member may call without changing state
    open_to_all: set[type[Call[Any]]]  # what a stranger may call (the rest: not_authorised)
    stranger_skips: set[type[Call[Any]]] = field(default_factory=set)  # calls that enrol


@dataclass
class Report:
    cases: int = 0
    by_mutation: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


def envelope_fields(target: Target, identity: Identity, call: Call[Any]) -> dict[str, Any]:
    return {
        "sender": identity.peer_id,
        "node": target.node_peer_id,
        "issued_at": time.time(),
        "nonce": os.urandom(16),
        "call": msgspec.msgpack.decode(rpc.encode(call)),
    }


def signed_frame(target: Target, identity: Identity, fields: dict[str, Any]) -> bytes:
    body = msgspec.msgpack.encode(fields)
    return rpc.encode(rpc.sign(identity, target.protocol.context, body))


WRONG_VALUES: list[Any] = [[1, 2], {"a": 1}, -1, 1.5, b"\xff", None, True, "text", [[None]]]


def wrong_typed(cls: type[Call[Any]], fields: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """`fields` with one field given a value its type does not accept (checked by decoding it
    as `cls`: an int is a valid float, None a valid optional); the tag if no field will do."""
    keys = [k for k in fields if k != "type"]
    rng.shuffle(keys)
    for key in keys:
        for wrong in rng.sample(WRONG_VALUES, len(WRONG_VALUES)):
            mutated = {**fields, key: wrong}
            try:
                msgspec.msgpack.decode(msgspec.msgpack.encode(mutated), type=cls)
            except msgspec.ValidationError:
                return mutated
    return {**fields, "type": 7}


def frames_for(
    target: Target, identity: Identity, call: Call[Any], mutation: str, rng: random.Random
) -> list[bytes]:
    """The frame(s) one case sends; all but the last must be answered like any call."""
    fields = envelope_fields(target, identity, call)
    if mutation == "oversized":
        big = "x" * rng.choice([1 << 12, 1 << 16, 1 << 20])
        name = next(
            (k for k, v in fields["call"].items() if isinstance(v, str) and k != "type"), ""
        )
        fields["call"] = {**fields["call"], **({name: big} if name else {})}
    if mutation == "reordered":
        fields = dict(reversed(fields.items()))
        fields["call"] = dict(reversed(fields["call"].items()))
    if mutation == "wrong_sender":
        fields["sender"] = (
            target.member.peer_id if identity is target.stranger else target.stranger.peer_id
        )
    if mutation == "wrong_node":
        fields["node"] = Identity.generate().peer_id
    if mutation == "stale":
        fields["issued_at"] = time.time() - rng.uniform(rpc.FRESHNESS_S + 1, 1e9)
    if mutation == "future":
        fields["issued_at"] = time.time() + rng.uniform(rpc.CLOCK_SKEW_S + 1, 1e9)
    if mutation == "wrong_type":
        fields["call"] = wrong_typed(type(call), fields["call"], rng)
    if mutation == "unknown_field":
        fields["call"]["not_a_field"] = 1
    if mutation == "mis_signed":
        body = msgspec.msgpack.encode(fields)
        forged = rpc.sign(Identity.generate(), target.protocol.context, body)
        return [rpc.encode(rpc.Signed(body, forged.signature))]
    frame = signed_frame(target, identity, fields)
    if mutation == "truncated":
        return [frame[: rng.randrange(len(frame))]]
    if mutation == "bit_flip":
        at = rng.randrange(len(frame))
        flipped = bytearray(frame)
        flipped[at] ^= 1 << rng.randrange(8)
        return [bytes(flipped)]
    if mutation == "junk_appended":
        return [frame + os.urandom(rng.randint(1, 64))]
    if mutation == "random_bytes":
        return [os.urandom(rng.randint(0, 256))]
    if mutation == "replayed":
        return [frame, frame]
    return [frame]


def check(target: Target, who: str, call: Call[Any], mutation: str, raw: bytes) -> tuple[str, str]:
    """(outcome, problem): the outcome's name, and what is wrong with the reply ("" if none)."""
    try:
        reply = target.protocol.decode_reply(raw)
    except msgspec.DecodeError as exc:
        return "undecodable", f"a reply that is not a message: {exc}"
    outcome = reply.code if isinstance(reply, Error) else "ok"
    if outcome == "internal":
        return outcome, f"internal error: {reply.message}"  # type: ignore[attr-defined]
    if mutation not in ACCEPTED:
        if outcome == "bad_message":
            return outcome, ""
        return outcome, f"a {mutation} frame was not refused as bad_message"
    if outcome == "bad_message" and mutation == "oversized":
        return outcome, ""  # a field past its cap may be refused at decoding
    if outcome == "ok" and not isinstance(reply, target.protocol.reply_of[type(call)]):
        return outcome, f"replied {type(reply).__name__} to {type(call).__name__}"
    if outcome == "bad_message" and carries_signed(type(call)):
        return outcome, ""  # a drawn record inside is not signed by anyone: a bad message
    if who == "stranger" and type(call) not in target.open_to_all and outcome != "not_authorised":
        return outcome, f"a stranger's {type(call).__name__} was {outcome}"
    if outcome in ("bad_message", "rate_limited"):
        return outcome, f"a well-formed {type(call).__name__} was refused as {outcome}"
    return outcome, ""


def carries_signed(cls: type[Call[Any]]) -> bool:
    """Whether a call carries a signed record of its own (a join, an announcement)."""
    return any(
        isinstance(f.type, mi.StructType) and f.type.cls is rpc.Signed
        for f in mi.type_info(cls).fields  # type: ignore[union-attr]
    )


def run(
    target: Target, cases: int, seed_value: int, progress: Callable[[int], None] | None = None
) -> Report:
    """`cases` seeded cases against `target`; the node must answer a plain Hello every 250."""
    report = Report()
    stranger_calls = [c for c in target.protocol.calls if c not in target.stranger_skips]
    case = st.tuples(
        st.sampled_from(["stranger", "member"]),
        calls_of(stranger_calls),
        calls_of(target.member_reads),
        st.sampled_from(MUTATIONS),
        st.integers(0, 2**32),
    )

    @seed(seed_value)
    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case)
    def one(drawn: tuple[str, Call[Any], Call[Any], str, int]) -> None:
        who, stranger_call, member_call, mutation, salt = drawn
        identity = target.stranger if who == "stranger" else target.member
        call = stranger_call if who == "stranger" else member_call
        rng = random.Random(salt)
        try:
            frames = frames_for(target, identity, call, mutation, rng)
        except (OverflowError, ValueError, TypeError):  # not encodable: no frame to send
            return
        replies = [target.send(identity, frame) for frame in frames]
        if mutation == "replayed":
            first = target.protocol.decode_reply(replies[0])
            refused = ("internal",) if carries_signed(type(call)) else ("bad_message", "internal")
            if isinstance(first, Error) and first.code in refused:
                report.problems.append(f"{type(call).__name__}: the original was {first.code}")
        outcome, problem = check(target, who, call, mutation, replies[-1])
        report.cases += 1
        report.by_mutation[mutation] += 1
        report.outcomes[outcome] += 1
        if problem:
            report.problems.append(f"{who} {type(call).__name__} {mutation}: {problem}"[:400])
        if report.cases % 250 == 0:
            alive = target.protocol.sign_call(target.member, target.node_peer_id, hello(target))
            reply = target.protocol.decode_reply(target.send(target.member, alive))
            if isinstance(reply, Error):
                report.problems.append(f"the node stopped answering: {reply.code}")
            if progress is not None:
                progress(report.cases)

    one()
    return report


def hello(target: Target) -> Call[Any]:
    [cls] = [c for c in target.protocol.calls if c.__name__ == "Hello"]
    return cls()


# ---- the live targets ------------------------------------------------------------------

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
