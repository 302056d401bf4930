"""Secure aggregation: exact sums, dropouts, every refusal, and what the server's view reveals."""

from __future__ import annotations

import itertools
import os
from collections.abc import Collection
from dataclasses import dataclass, field

import msgspec
import numpy as np
import pytest
from scipy import stats

from jupyter_syft.crypto import secagg_messages as m
from jupyter_syft.crypto import shamir
from jupyter_syft.crypto.secagg import (
    FRAC_BITS,
    MAX_ABS,
    FixedPoint,
    Keystream,
    SecAggClient,
    SecAggError,
    SecAggServer,
)
from jupyter_syft.identity import Identity
from jupyter_syft.wire.rpc import Signed

pytestmark = pytest.mark.unit

# Identities are slow-ish to make (peer IDs): a pool shared by all sessions in this module.
POOL = [Identity.generate() for _ in range(6)]
SCIENTIST = Identity.generate()


@dataclass
class Session:
    server: SecAggServer
    clients: dict[str, SecAggClient]
    identities: dict[str, Identity]
    inbox: dict[str, bytes] = field(default_factory=dict)  # each client's latest server frame

    @property
    def peers(self) -> list[str]:
        return sorted(self.clients)


def start(n: int = 5, length: int = 64, threshold: int | None = None) -> Session:
    identities = {identity.peer_id: identity for identity in POOL[:n]}
    server = SecAggServer(SCIENTIST, list(identities), length, threshold)
    frames = server.setup_frames()
    clients = {peer: SecAggClient(identities[peer], frames[peer]) for peer in identities}
    return Session(server, clients, identities)


def step(session: Session, replies: dict[str, bytes]) -> None:
    for frame in replies.values():
        session.server.receive(frame)
    session.inbox = session.server.advance()


def run_until_masking(session: Session) -> None:
    step(session, {p: c.advertise_keys() for p, c in session.clients.items()})
    step(session, {p: session.clients[p].share_keys(f) for p, f in session.inbox.items()})


def finish(
    session: Session,
    inputs: dict[str, np.ndarray],
    drop_before_masking: Collection[str] = (),
    drop_before_unmasking: Collection[str] = (),
) -> np.ndarray:
    clients, inbox = session.clients, session.inbox
    step(
        session,
        {
            p: clients[p].masked_input(f, inputs[p])
            for p, f in inbox.items()
            if p not in drop_before_masking
        },
    )
    step(session, {p: clients[p].consistency_check(f) for p, f in session.inbox.items()})
    step(
        session,
        {
            p: clients[p].unmask(f)
            for p, f in session.inbox.items()
            if p not in drop_before_unmasking
        },
    )
    return session.server.result()


def aggregate(inputs: list[np.ndarray]) -> tuple[Session, np.ndarray]:
    session = start(len(inputs), len(inputs[0]))
    run_until_masking(session)
    return session, finish(session, dict(zip(session.peers, inputs, strict=True)))


def sign_as(session: Session, peer: str, message: m.Message) -> bytes:
    """A frame a (malicious) client signs with its own key."""
    return m.sign(session.identities[peer], session.server.session, SCIENTIST.peer_id, message)


def test_any_threshold_of_shamir_shares_rebuilds_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, 3, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares.items(), 3):
        assert shamir.combine(dict(subset), 3) == secret
    with pytest.raises(shamir.ShareError, match="need 3 shares"):
        shamir.combine(dict(list(shares.items())[:2]), 3)


def test_integer_vectors_sum_exactly() -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.integers(-(2**20), 2**20, size=500) for _ in range(5)]
    inputs[0][:2] = [2**20, -(2**20)]  # the range's edges
    _, total = aggregate(inputs)
    assert np.array_equal(total, np.sum(inputs, axis=0))


def test_floats_sum_within_the_stated_precision() -> None:
    """Each value rounds to within 2^-(f+1); a sum of n values to within n * 2^-(f+1)."""
    rng = np.random.default_rng(2)
    inputs = [rng.uniform(-1000, 1000, size=2000) for _ in range(5)]
    session, total = aggregate(inputs)
    error = np.abs(total - np.sum(inputs, axis=0)).max()
    assert error <= 5 * 2.0 ** -(FRAC_BITS + 1)
    assert session.server.contributors == session.peers


@pytest.mark.parametrize("dropped", [1, 2])
def test_sum_survives_domains_dropping_after_sharing_keys(dropped: int) -> None:
    """Dropped domains' pairwise masks are rebuilt from the survivors' shares and removed."""
    rng = np.random.default_rng(dropped)
    inputs = [rng.uniform(-10, 10, size=300) for _ in range(5)]
    session = start(5, 300, threshold=3)
    run_until_masking(session)
    gone = set(session.peers[1 : 1 + dropped])
    by_peer = dict(zip(session.peers, inputs, strict=True))
    total = finish(session, by_peer, drop_before_masking=gone)
    survivors = [p for p in session.peers if p not in gone]
    assert session.server.contributors == survivors
    expected = np.sum([by_peer[p] for p in survivors], axis=0)
    assert np.abs(total - expected).max() <= 5 * 2.0 ** -(FRAC_BITS + 1)


@pytest.mark.parametrize("dropped", [1, 2])
def test_sum_survives_domains_dropping_after_masking(dropped: int) -> None:
    """A domain that sent its masked input and then vanished is still in the sum."""
    rng = np.random.default_rng(10 + dropped)
    inputs = [rng.integers(-100, 100, size=300) for _ in range(5)]
    session = start(5, 300, threshold=3)
    run_until_masking(session)
    gone = set(session.peers[-dropped:])
    by_peer = dict(zip(session.peers, inputs, strict=True))
    total = finish(session, by_peer, drop_before_unmasking=gone)
    assert np.array_equal(total, np.sum(inputs, axis=0))


def test_fewer_than_threshold_survivors_fail_before_anything_is_revealed() -> None:
    session = start(5, 32, threshold=3)
    run_until_masking(session)
    for peer in session.peers[:2]:
        session.server.receive(session.clients[peer].masked_input(session.inbox[peer], np.ones(32)))
    with pytest.raises(SecAggError, match="fewer than the threshold 3"):
        session.server.advance()  # no survivor list goes out, so no client reveals a share
    with pytest.raises(SecAggError, match="aborted"):
        session.server.advance()
    with pytest.raises(SecAggError, match="aborted"):
        session.server.result()


def test_too_few_unmasking_answers_reveal_no_sum() -> None:
    session = start(5, 32, threshold=4)
    run_until_masking(session)
    inputs = {peer: np.ones(32) for peer in session.peers}
    with pytest.raises(SecAggError, match="only 3 of 5"):
        finish(session, inputs, drop_before_unmasking=set(session.peers[:2]))
    with pytest.raises(SecAggError):
        session.server.result()


def test_replayed_and_out_of_round_messages_are_refused() -> None:
    session = start(3, 16)
    adverts = {p: c.advertise_keys() for p, c in session.clients.items()}
    first = session.peers[0]
    session.server.receive(adverts[first])
    with pytest.raises(SecAggError, match="replay"):
        session.server.receive(adverts[first])
    for peer in session.peers[1:]:
        session.server.receive(adverts[peer])
    key_lists = session.server.advance()
    with pytest.raises(SecAggError, match="round 0 message where round 1"):
        session.server.receive(adverts[first])  # an old round's message
    share = session.clients[first].share_keys(key_lists[first])
    with pytest.raises(SecAggError, match="out of order"):
        session.clients[first].share_keys(key_lists[first])  # the server's message replayed
    with pytest.raises(SecAggError, match="round 1 message where round 2"):
        session.clients[first].masked_input(key_lists[first], np.zeros(16))
    session.server.receive(share)
    with pytest.raises(SecAggError, match="replay"):
        session.server.receive(share)


def test_messages_of_another_session_or_for_another_peer_are_refused() -> None:
    one, other = start(3, 16), start(3, 16)
    with pytest.raises(SecAggError, match="another session"):
        one.server.receive(other.clients[other.peers[0]].advertise_keys())
    step(one, {p: c.advertise_keys() for p, c in one.clients.items()})
    a, b = one.peers[:2]
    with pytest.raises(SecAggError, match="addressed to another peer"):
        one.clients[b].share_keys(one.inbox[a])


def test_forged_and_malformed_frames_are_refused() -> None:
    session = start(3, 16)
    peer = session.peers[0]
    frame = session.clients[peer].advertise_keys()
    signed = msgspec.msgpack.decode(frame, type=Signed)
    forged = m.encode(Signed(signed.body, bytes(64)))
    with pytest.raises(SecAggError, match="valid signature"):
        session.server.receive(forged)
    with pytest.raises(SecAggError, match="malformed"):
        session.server.receive(b"\x93not msgpack of a message")
    stranger = m.sign(POOL[5], session.server.session, SCIENTIST.peer_id, m.AdvertiseKeys(b"", b""))
    with pytest.raises(SecAggError, match="may not send"):
        session.server.receive(stranger)
    bad_key = m.AdvertiseKeys(bytes(32), bytes(range(32)))  # the zero point has low order
    with pytest.raises(SecAggError, match="low-order"):
        session.server.receive(sign_as(session, peer, bad_key))


def test_malformed_or_out_of_range_vectors_and_shares_are_refused() -> None:
    session = start(3, 16)
    run_until_masking(session)
    first, second, third = session.peers
    with pytest.raises(SecAggError, match="expected 128"):
        session.server.receive(sign_as(session, first, m.MaskedInput(bytes(127))))
    for peer in session.peers:
        session.server.receive(session.clients[peer].masked_input(session.inbox[peer], np.ones(16)))
    session.inbox = session.server.advance()
    step(session, {p: session.clients[p].consistency_check(f) for p, f in session.inbox.items()})
    honest = session.clients[first].unmask(session.inbox[first])
    shares = m.open_frame(honest).message.seed_shares
    for bad, reason in [
        (bytes(shamir.SHARE_BYTES - 1), "share must be 66 bytes"),
        (shamir.PRIME.to_bytes(shamir.SHARE_BYTES, "big"), "outside the field"),
    ]:
        message = m.UnmaskShares({**shares, second: bad}, {})
        with pytest.raises(SecAggError, match=reason):
            session.server.receive(sign_as(session, first, message))
    with pytest.raises(SecAggError, match="exactly the survivors"):
        session.server.receive(sign_as(session, first, m.UnmaskShares({first: shares[first]}, {})))
    # A wrong share inside the field is caught when the seed fails its commitment.
    wrong = (shamir.share_value(shares[second]) + 1).to_bytes(shamir.SHARE_BYTES, "big")
    session.server.receive(sign_as(session, first, m.UnmaskShares({**shares, second: wrong}, {})))
    for peer in (second, third):
        session.server.receive(session.clients[peer].unmask(session.inbox[peer]))
    with pytest.raises(SecAggError, match="commitment"):
        session.server.advance()
    with pytest.raises(SecAggError, match="aborted"):
        session.server.result()


def test_a_garbage_masked_vector_fails_the_sum_loudly() -> None:
    """A domain sending random bytes instead of a masked input: the masks no longer cancel,
    the sum is noise, and the server's range check refuses it rather than return it."""
    session = start(3, 256)
    run_until_masking(session)
    first = session.peers[0]
    session.clients[first].masked_input(session.inbox[first], np.ones(256))  # sent instead:
    session.server.receive(sign_as(session, first, m.MaskedInput(os.urandom(8 * 256))))
    for peer in session.peers[1:]:
        session.server.receive(
            session.clients[peer].masked_input(session.inbox[peer], np.ones(256))
        )
    session.inbox = session.server.advance()
    step(session, {p: session.clients[p].consistency_check(f) for p, f in session.inbox.items()})
    for peer, frame in session.inbox.items():
        session.server.receive(session.clients[peer].unmask(frame))
    with pytest.raises(SecAggError, match="out of range"):
        session.server.advance()


def test_out_of_range_or_non_finite_inputs_are_refused_by_the_client() -> None:
    session = start(3, 4)
    run_until_masking(session)
    client = session.clients[session.peers[0]]
    inbox = session.inbox[session.peers[0]]
    for bad in ([MAX_ABS * 2, 0, 0, 0], [np.nan, 0, 0, 0], [np.inf, 0, 0, 0], [1, 2, 3]):
        with pytest.raises(SecAggError):
            client.masked_input(inbox, np.array(bad))
    client.masked_input(inbox, np.array([MAX_ABS, -MAX_ABS, 0, 1]))  # the client is still usable


def test_clients_refuse_inconsistent_survivor_lists() -> None:
    """A server telling clients different survivor lists (to get both kinds of share for one
    client, unmasking it) is caught by the consistency round: no share is revealed."""
    session = start(4, 8, threshold=3)
    run_until_masking(session)
    peers = session.peers
    for peer in peers:
        session.server.receive(session.clients[peer].masked_input(session.inbox[peer], np.ones(8)))
    sid = session.server.session
    views = {peers[0]: peers[:3], peers[1]: peers[:3], peers[2]: peers, peers[3]: peers}
    checks = {
        p: session.clients[p].consistency_check(m.sign(SCIENTIST, sid, p, m.SurvivorList(v)))
        for p, v in views.items()
    }
    mixed = m.ConsistencyList(list(checks.values()))
    for peer in peers:
        with pytest.raises(SecAggError, match=r"another survivor list|unexpected check"):
            session.clients[peer].unmask(m.sign(SCIENTIST, sid, peer, mixed))


def test_clients_refuse_a_survivor_list_that_leaves_them_out() -> None:
    session = start(4, 8, threshold=3)
    run_until_masking(session)
    peer = session.peers[3]
    session.clients[peer].masked_input(session.inbox[peer], np.ones(8))
    survivors = m.SurvivorList(session.peers[:3])
    with pytest.raises(SecAggError, match="leaves out this domain"):
        session.clients[peer].consistency_check(
            m.sign(SCIENTIST, session.server.session, peer, survivors)
        )


def test_unsafe_session_parameters_are_refused() -> None:
    peers = [identity.peer_id for identity in POOL[:5]]
    for kwargs, reason in [
        ({"clients": peers[:2]}, "at least 3"),
        ({"threshold": 2}, "more than n/2"),
        ({"threshold": 6}, "more than n/2"),
        ({"length": 0}, "vector length"),
        ({"max_abs": 2.0**40}, "could wrap"),
        ({"max_abs": float("nan")}, "max_abs"),
    ]:
        args = {"clients": peers, "length": 8, **kwargs}
        with pytest.raises(SecAggError, match=reason):
            SecAggServer(SCIENTIST, **args)


def test_server_view_of_a_masked_input_is_independent_of_it() -> None:
    """Everything the server receives from one domain (its masked vector), even after it has
    rebuilt that domain's self-mask seed, is uniform in Z_(2^64) whatever the input.

    Chi-square tests on the top and bottom bytes for an all-zero input and an extreme input
    (the fixed-point encoding leaves the low bits of integers zero, so any leak shows there),
    and a two-sample test between the two views.
    """
    length = 1 << 15
    encoding = FixedPoint()
    views = []
    for value in (0.0, MAX_ABS):
        session = start(3, length)
        run_until_masking(session)
        target = session.peers[0]
        received = {}
        for peer in session.peers:
            frame = session.clients[peer].masked_input(session.inbox[peer], np.full(length, value))
            received[peer] = m.open_frame(frame).message.vector
            session.server.receive(frame)
        session.inbox = session.server.advance()
        step(
            session, {p: session.clients[p].consistency_check(f) for p, f in session.inbox.items()}
        )
        unmasks = [session.clients[p].unmask(f) for p, f in session.inbox.items()]
        for frame in unmasks:
            session.server.receive(frame)
        session.server.advance()
        points = {peer: i + 1 for i, peer in enumerate(session.peers)}
        seed = shamir.combine(
            {points[u.sender]: u.message.seed_shares[target] for u in map(m.open_frame, unmasks)},
            session.server.setup.threshold,
        )
        masked = np.frombuffer(received[target], dtype="<u8")
        unmasked = masked - Keystream(length)(seed)  # still hidden by the pairwise masks
        assert not np.array_equal(unmasked, encoding.encode(np.full(length, value), length))
        views.append(unmasked)
        for byte in (unmasked >> np.uint64(56), unmasked & np.uint64(0xFF)):
            counts = np.bincount(byte.astype(np.int64), minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
    tops = [np.bincount((v >> np.uint64(56)).astype(np.int64), minlength=256) for v in views]
    assert stats.chi2_contingency(np.array(tops)).pvalue > 1e-4
