"""Secure aggregation across domains: the server learns the sum of the domains' vectors, only.

Protocol: Bonawitz, Ivanov, Kreuter, Marcedone, McMahan, Patel, Ramage, Segal and Seth,
"Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS 2017), in its
version with signatures and a consistency round. U1 ⊇ U2 ⊇ U3 ⊇ U4 ⊇ U5 are the clients that
answered rounds 0..4; every round needs at least t of them. Messages: `secagg_messages`.

0. Setup / AdvertiseKeys. The server fixes the session id, the invited clients, t, the vector
   length and the encoding. Each client u makes two fresh X25519 key pairs, c_u (to encrypt
   shares) and s_u (to agree masks), and signs both public keys.
1. KeyList / ShareKeys. The server relays the signed keys of U1. Each client checks them, draws
   a self-mask seed b_u, splits b_u and s_u's private key into Shamir shares (any t of the n
   invited rebuild them), and encrypts v's shares with AES-256-GCM under a key derived from
   X25519(c_u, c_v) and bound to (session, u, v): the server relays them but cannot read them.
   It also commits to b_u (SHA-256), so that a wrong share is caught at reconstruction.
2. ShareDelivery / MaskedInput. The server forwards to each client of U2 the shares sent to
   it. Each client sends, in Z_(2^64),
       y_u = x_u + PRG(b_u) + sum_{v in U2, u < v} PRG(s_uv) - sum_{v in U2, u > v} PRG(s_uv)
   where s_uv = HKDF(X25519(s_u, s_v)) is known to u and v only.
3. SurvivorList / ConsistencyCheck. The server names U3, the clients whose y_u arrived; each
   client signs U3 back.
4. ConsistencyList / UnmaskShares. The server relays >= t signatures on U3. Each client checks
   that they all sign its own U3 and only then reveals, for each v in U3, its share of b_v and,
   for each v in U2 - U3 (dropped after sharing), its share of s_v; never both for the same v.
The server rebuilds b_v for the survivors and s_v for the dropped, and subtracts
PRG(b_v) and the dropped clients' leftover pairwise masks from sum(y_u): the masks between
survivors cancel, and what remains is sum_{u in U3} x_u.

Encoding: fixed point in Z_(2^64), x -> round(x * 2^f) as a two's-complement 64-bit integer.
With the defaults (f = 24, |x| <= max_abs = 2^20) each value is within 2^-25 (about 3.0e-8)
of its input, so a sum of n values is within n * 2^-25 of the exact sum; integer inputs are
exact. The setup requires n * max_abs * 2^f <= 2^62, so an honest sum never wraps; clients
refuse values that are not finite or exceed max_abs, and the server refuses a decoded sum
beyond |U3| * max_abs: an out-of-range input, or masks that did not cancel, which look like
uniform noise (with the defaults and 10 domains an entry of noise lands inside the band with
probability 2^-15.7, so a wrong vector of any useful length is caught).

PRG: AES-256-CTR keystream (zero IV; each seed keys one stream) read as little-endian uint64.

Threat model (Bonawitz et al. §6). Against a server that follows the protocol but studies all
it receives, even together with fewer than t colluding domains, an honest domain's vector
stays hidden except through the sum over U3. Against a server that deviates (forges, drops,
or shows clients different survivor lists), the signatures and the consistency round keep that
guarantee when t > 2n/3 and fewer than n/3 domains collude with it: hence the default
t = floor(2n/3) + 1. Replayed, misrouted, forged, malformed or out-of-range messages are
refused. Not covered: a malicious domain can skew the sum within its range or make the session
fail (input validation needs zero-knowledge proofs), and a malicious server can abort; the
lead's transport ties sessions to approved requests.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jupyter_syft.crypto import secagg_messages as m
from jupyter_syft.crypto import shamir
from jupyter_syft.errors import SyftError
from jupyter_syft.identity import Identity

FRAC_BITS = 24
MAX_ABS = 2.0**20
MAX_LENGTH = 1 << 28  # 2 GiB of uint64 per vector
ROUNDS = 5
_HEADROOM = 2**62  # n * max_abs * 2^f must stay below this, so a wrapped sum is detectable
_NONCE_BYTES = 12
_BUNDLE_BYTES = len(m.encode(m.ShareBundle(bytes(shamir.SHARE_BYTES), bytes(shamir.SHARE_BYTES))))
_SHARE_CIPHERTEXT_BYTES = _NONCE_BYTES + _BUNDLE_BYTES + 16

M = TypeVar("M", bound=m.Struct)


class SecAggError(SyftError):
    """A secure-aggregation message was refused, or the session cannot complete."""


def default_threshold(n: int) -> int:
    """floor(2n/3) + 1: what Bonawitz et al. need against an actively malicious server."""
    return 2 * n // 3 + 1


@dataclass(frozen=True)
class FixedPoint:
    """Floats <-> Z_(2^64): round(x * 2^frac_bits), |x| <= max_abs, errors <= 2^-(frac_bits+1)."""

    frac_bits: int = FRAC_BITS
    max_abs: float = MAX_ABS

    def encode(self, vector: np.ndarray, length: int) -> np.ndarray:
        """The ring elements of `vector`; refuses a wrong shape, NaN, inf or |x| > max_abs."""
        values = np.asarray(vector)
        if values.shape != (length,):
            raise SecAggError(f"input must have shape ({length},), got {values.shape}")
        if values.dtype.kind not in "biuf":
            raise SecAggError(f"input must be numeric, got dtype {values.dtype}")
        values = values.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise SecAggError("input holds NaN or infinity")
        if np.any(np.abs(values) > self.max_abs):
            raise SecAggError(f"input exceeds the session's range |x| <= {self.max_abs}")
        # Multiplying by a power of two is exact (and ~10x faster than np.ldexp).
        scaled = values * float(2**self.frac_bits)
        return np.rint(scaled, out=scaled).astype(np.int64).view(np.uint64)

    def decode(self, total: np.ndarray, count: int) -> np.ndarray:
        """The float sum of `count` encoded inputs; refuses one outside what they can reach."""
        signed = total.view(np.int64)
        bound = int(count * self.max_abs * 2**self.frac_bits)
        if np.any(signed > bound) or np.any(signed < -bound):
            raise SecAggError(
                "aggregate is out of range: a domain sent an out-of-range input "
                "or the masks did not cancel"
            )
        return signed.astype(np.float64) * 2.0**-self.frac_bits  # exact, as in encode


class Keystream:
    """AES-256-CTR keystreams of `length` uint64, written into one reused buffer.

    Reuse matters: a fresh 8 MiB array per mask costs more than the cipher itself.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self._zeros = bytes(8 * length)
        self._buffer = np.empty(length + 2, dtype="<u8")  # update_into wants 15 spare bytes

    def __call__(self, seed: bytes) -> np.ndarray:
        """The stream under `seed`; the array is overwritten by the next call."""
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        encryptor.update_into(self._zeros, self._buffer.view(np.uint8).data)
        return self._buffer[: self.length]


class SecAggClient:
    """One domain's side of a session: one method per round, each returning the signed reply.

    Construct it from the server's Setup frame, then check `server` (the requester), `session`
    and `setup` against an approved request before calling `advertise_keys`. A refused input
    raises SecAggError and changes nothing, so the client can take a corrected frame.
    """

    def __init__(self, identity: Identity, setup_frame: bytes) -> None:
        envelope, setup = _open(setup_frame, None, identity.peer_id, 0, m.Setup)
        self.identity = identity
        self.server = envelope.sender
        self.session = envelope.session
        self.setup = setup
        check_setup(self.setup)
        if identity.peer_id not in self.setup.clients:
            raise SecAggError("this domain is not invited to the session")
        self.encoding = FixedPoint(self.setup.frac_bits, self.setup.max_abs)
        self._points = {peer: i + 1 for i, peer in enumerate(self.setup.clients)}
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = os.urandom(32)
        self._next_round = 0
        self._keys: dict[str, m.AdvertiseKeys] = {}
        self._own_shares: m.ShareBundle | None = None
        self._received: dict[str, m.ShareBundle] = {}
        self._u2: list[str] = []
        self._u3: list[str] = []

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def advertise_keys(self) -> bytes:
        """Round 0: this domain's two fresh public keys, signed."""
        self._expect(0)
        advert = m.AdvertiseKeys(
            self._cipher_key.public_key().public_bytes_raw(),
            self._mask_key.public_key().public_bytes_raw(),
        )
        self._keys = {self.peer_id: advert}
        self._next_round = 1
        return self._sign(advert)

    def share_keys(self, key_list_frame: bytes) -> bytes:
        """Round 1: check every client's signed keys; send each its encrypted shares."""
        self._expect(1)
        key_list = self._from_server(key_list_frame, 1, m.KeyList)
        keys: dict[str, m.AdvertiseKeys] = {}
        for frame in key_list.adverts:
            envelope, advert = _open(frame, None, self.server, 0, m.AdvertiseKeys, self.session)
            if envelope.sender not in self._points or envelope.sender in keys:
                raise SecAggError(f"key list names {envelope.sender} unexpectedly or twice")
            keys[envelope.sender] = advert
        if keys.get(self.peer_id) != self._keys[self.peer_id]:
            raise SecAggError("key list does not carry this domain's own keys unaltered")
        _check_enough(len(keys), self.setup.threshold, "clients advertised keys")
        _check_distinct_keys(keys.values())
        points = [self._points[peer] for peer in sorted(keys)]
        mask_private = self._mask_key.private_bytes_raw()
        key_shares = shamir.split(mask_private, self.setup.threshold, points)
        seed_shares = shamir.split(self._seed, self.setup.threshold, points)
        ciphertexts = {}
        for peer in sorted(keys):
            point = self._points[peer]
            bundle = m.ShareBundle(key_shares[point], seed_shares[point])
            if peer == self.peer_id:
                self._own_shares = bundle
            else:
                ciphertexts[peer] = self._encrypt_bundle(peer, keys[peer], bundle)
        self._keys = keys
        self._next_round = 2
        return self._sign(m.ShareKeys(ciphertexts, seed_commitment(self.session, self._seed)))

    def masked_input(self, delivery_frame: bytes, vector: np.ndarray) -> bytes:
        """Round 2: decrypt the shares sent to this domain; send the masked `vector`."""
        self._expect(2)
        delivery = self._from_server(delivery_frame, 2, m.ShareDelivery)
        received = {}
        for peer, ciphertext in delivery.shares.items():
            if peer == self.peer_id or peer not in self._keys:
                raise SecAggError(f"share delivery holds shares from unexpected peer {peer}")
            received[peer] = self._decrypt_bundle(peer, ciphertext)
        u2 = sorted([*received, self.peer_id])
        _check_enough(len(u2), self.setup.threshold, "clients shared keys")
        masked = self.encoding.encode(vector, self.setup.length)
        keystream = Keystream(self.setup.length)
        np.add(masked, keystream(self._seed), out=masked)
        for peer in u2:
            if peer != self.peer_id:
                mask = keystream(self._pair_seed(peer))
                if self.peer_id < peer:
                    np.add(masked, mask, out=masked)
                else:
                    np.subtract(masked, mask, out=masked)
        self._received, self._u2 = received, u2
        self._next_round = 3
        return self._sign(m.MaskedInput(masked.tobytes()))

    def consistency_check(self, survivors_frame: bytes) -> bytes:
        """Round 3: sign the survivor list back, after checking it is plausible."""
        self._expect(3)
        survivors = self._from_server(survivors_frame, 3, m.SurvivorList).survivors
        if survivors != sorted(set(survivors)) or not set(survivors) <= set(self._u2):
            raise SecAggError("survivor list is not a sorted subset of the clients that shared")
        if self.peer_id not in survivors:
            raise SecAggError("survivor list leaves out this domain, which sent its input")
        _check_enough(len(survivors), self.setup.threshold, "clients sent masked input")
        self._u3 = survivors
        self._next_round = 4
        return self._sign(m.ConsistencyCheck(survivors))

    def unmask(self, consistency_frame: bytes) -> bytes:
        """Round 4: after >= t clients signed the same survivor list, reveal the shares."""
        self._expect(4)
        checks = self._from_server(consistency_frame, 4, m.ConsistencyList).checks
        signers = set()
        for frame in checks:
            envelope, check = _open(frame, None, self.server, 3, m.ConsistencyCheck, self.session)
            if envelope.sender not in self._u3 or envelope.sender in signers:
                raise SecAggError(
                    f"consistency list holds an unexpected check of {envelope.sender}"
                )
            if check.survivors != self._u3:
                raise SecAggError(
                    f"{envelope.sender} was given another survivor list: the server is "
                    "showing clients different views (refusing to reveal shares)"
                )
            signers.add(envelope.sender)
        _check_enough(len(signers), self.setup.threshold, "clients confirmed the survivors")
        assert self._own_shares is not None  # set in round 1: the key list holds this domain
        bundles = {**self._received, self.peer_id: self._own_shares}
        reply = m.UnmaskShares(
            seed_shares={peer: bundles[peer].seed_share for peer in self._u3},
            key_shares={peer: bundles[peer].key_share for peer in self._u2 if peer not in self._u3},
        )
        self._next_round = ROUNDS
        return self._sign(reply)

    def _expect(self, round_number: int) -> None:
        if self._next_round != round_number:
            raise SecAggError(
                f"round {round_number} called out of order (this client is at round "
                f"{self._next_round}): a replayed or misordered server message"
            )

    def _from_server(self, frame: bytes, round_number: int, kind: type[M]) -> M:
        return _open(frame, self.server, self.peer_id, round_number, kind, self.session)[1]

    def _sign(self, message: m.Message) -> bytes:
        return m.sign(self.identity, self.session, self.server, message)

    def _bundle_cipher(self, peer: str, cipher_key: bytes) -> AESGCM:
        shared = _exchange(self._cipher_key, cipher_key)
        return AESGCM(_derive(shared, "share", self.session, self.peer_id, peer))

    def _encrypt_bundle(self, peer: str, keys: m.AdvertiseKeys, bundle: m.ShareBundle) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        aad = m.encode([self.session, self.peer_id, peer])
        aead = self._bundle_cipher(peer, keys.cipher_key)
        return nonce + aead.encrypt(nonce, m.encode(bundle), aad)

    def _decrypt_bundle(self, peer: str, ciphertext: bytes) -> m.ShareBundle:
        """The shares `peer` sent this domain; AEAD and AAD stop forged or redirected shares."""
        aad = m.encode([self.session, peer, self.peer_id])
        aead = self._bundle_cipher(peer, self._keys[peer].cipher_key)
        try:
            plaintext = aead.decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], aad)
            bundle = m.decode_bundle(plaintext)
            shamir.share_value(bundle.key_share)
            shamir.share_value(bundle.seed_share)
        except (InvalidTag, ValueError, m.BadFrame) as exc:
            raise SecAggError(f"shares from {peer} are forged, altered or malformed") from exc
        return bundle

    def _pair_seed(self, peer: str) -> bytes:
        shared = _exchange(self._mask_key, self._keys[peer].mask_key)
        return _derive(shared, "mask", self.session, self.peer_id, peer)


class SecAggServer:
    """The aggregator's side (the scientist's kernel): collects, relays, and unmasks the sum.

    Drive it round by round: send `setup_frames()`; then, five times, `receive` every reply
    that arrives for the current round (each refused one raises SecAggError and changes
    nothing) and call `advance()` once all invited clients answered or the round timed out; it
    returns the next frames to send, per client. After round 4, `result()` is the sum over
    `contributors`. With fewer than t answers in any round the session fails for good.
    """

    def __init__(
        self,
        identity: Identity,
        clients: Sequence[str],
        length: int,
        threshold: int | None = None,
        frac_bits: int = FRAC_BITS,
        max_abs: float = MAX_ABS,
    ) -> None:
        invited = sorted(clients)
        t = default_threshold(len(invited)) if threshold is None else threshold
        self.setup = m.Setup(invited, t, length, frac_bits, max_abs)
        check_setup(self.setup)
        self.identity = identity
        self.session = secrets.token_hex(16)
        self.encoding = FixedPoint(frac_bits, max_abs)
        self.round = 0
        self._points = {peer: i + 1 for i, peer in enumerate(invited)}
        self._senders: list[list[str]] = [invited]  # who may send in each round so far
        self._messages: dict[str, m.Message | None] = {}  # this round's, by sender
        self._frames: dict[str, bytes] = {}  # this round's signed frames, kept to relay them
        self._keys: dict[str, m.AdvertiseKeys] = {}
        self._commitments: dict[str, bytes] = {}
        self._sum = np.zeros(length, dtype=np.uint64)
        self._failure = ""
        self._result: np.ndarray | None = None

    @property
    def contributors(self) -> list[str]:
        """The domains whose inputs the sum holds (U3), once round 2 closed."""
        return self._senders[3] if len(self._senders) > 3 else []

    def setup_frames(self) -> dict[str, bytes]:
        """Round 0's Setup frame for each invited client."""
        return {peer: self._sign(peer, self.setup) for peer in self.setup.clients}

    def receive(self, frame: bytes) -> str:
        """Accept one client's reply for the current round; returns its sender."""
        self._check_running()
        if self.round >= ROUNDS:
            raise SecAggError("the session is complete: no more messages are accepted")
        kind = _CLIENT_MESSAGE[self.round]
        envelope, _ = _open(frame, None, self.identity.peer_id, self.round, kind, self.session)
        sender = envelope.sender
        if sender not in self._senders[self.round]:
            raise SecAggError(f"{sender} may not send in round {self.round}")
        if sender in self._messages:
            raise SecAggError(f"{sender} already sent its round {self.round} message (replay)")
        self._validate(sender, envelope.message)
        message: m.Message | None = envelope.message
        if isinstance(message, m.MaskedInput):
            np.add(self._sum, np.frombuffer(message.vector, dtype="<u8"), out=self._sum)
            message = None  # the running sum holds it: no single domain's vector is kept
        self._messages[sender] = message
        if isinstance(message, m.AdvertiseKeys | m.ConsistencyCheck):
            self._frames[sender] = frame  # relayed as signed, so clients can check them
        return sender

    def advance(self) -> dict[str, bytes]:
        """Close the current round; the frames that open the next one, per client."""
        self._check_running()
        if self.round >= ROUNDS:
            raise SecAggError("the session is already complete")
        answered = sorted(self._messages)
        if len(answered) < self.setup.threshold:
            self._failure = (
                f"only {len(answered)} of {len(self.setup.clients)} domains answered round "
                f"{self.round}, fewer than the threshold {self.setup.threshold}: the session "
                "is aborted and no sum is revealed"
            )
            raise SecAggError(self._failure)
        try:
            frames = self._next_frames(answered)
        except SecAggError as exc:  # a wrong share: nothing more can be trusted
            self._failure = f"the session is aborted: {exc}"
            raise
        self._senders.append(answered)
        self._frames, self._messages = {}, {}
        self.round += 1
        return frames

    def result(self) -> np.ndarray:
        """The sum of the contributors' vectors, as float64."""
        self._check_running()
        if self._result is None:
            raise SecAggError(f"the session is at round {self.round}: no result yet")
        return self._result

    def _next_frames(self, answered: list[str]) -> dict[str, bytes]:
        if self.round == 0:
            self._keys = {peer: self._answer(peer, m.AdvertiseKeys) for peer in answered}
            adverts = [self._frames[peer] for peer in answered]
            return {peer: self._sign(peer, m.KeyList(adverts)) for peer in answered}
        if self.round == 1:
            shared = {p: self._answer(p, m.ShareKeys) for p in answered}
            self._commitments = {peer: shared[peer].seed_commitment for peer in answered}
            frames = {}
            for peer in answered:
                inbox = {u: shared[u].shares[peer] for u in answered if u != peer}
                frames[peer] = self._sign(peer, m.ShareDelivery(inbox))
            return frames
        if self.round == 2:
            return {peer: self._sign(peer, m.SurvivorList(answered)) for peer in answered}
        if self.round == 3:
            checks = [self._frames[peer] for peer in answered]
            return {peer: self._sign(peer, m.ConsistencyList(checks)) for peer in answered}
        self._result = self._unmask(answered)
        return {}

    def _validate(self, sender: str, message: m.Message) -> None:
        """Refuse malformed or out-of-range content before any of it is used."""
        if isinstance(message, m.AdvertiseKeys):
            adverts = [self._answer(peer, m.AdvertiseKeys) for peer in self._messages]
            _check_distinct_keys([*adverts, message])
            for key in (message.cipher_key, message.mask_key):
                _exchange(X25519PrivateKey.generate(), key)  # refuses low-order points
        elif isinstance(message, m.ShareKeys):
            expected = set(self._senders[1]) - {sender}
            if set(message.shares) != expected:
                raise SecAggError(f"{sender} must send shares to exactly the other key holders")
            if any(len(c) != _SHARE_CIPHERTEXT_BYTES for c in message.shares.values()):
                raise SecAggError(f"{sender} sent a malformed encrypted share")
            if len(message.seed_commitment) != 32:
                raise SecAggError(f"{sender} sent a malformed seed commitment")
        elif isinstance(message, m.MaskedInput):
            if len(message.vector) != 8 * self.setup.length:
                raise SecAggError(
                    f"{sender} sent a masked vector of {len(message.vector)} bytes, "
                    f"expected {8 * self.setup.length}"
                )
        elif isinstance(message, m.ConsistencyCheck):
            if message.survivors != self._senders[3]:
                raise SecAggError(f"{sender} signed a different survivor list")
        elif isinstance(message, m.UnmaskShares):
            survivors, shared = set(self._senders[3]), set(self._senders[2])
            if set(message.seed_shares) != survivors:
                raise SecAggError(f"{sender} must reveal seed shares of exactly the survivors")
            if set(message.key_shares) != shared - survivors:
                raise SecAggError(f"{sender} must reveal key shares of exactly the dropped")
            try:
                for share in [*message.seed_shares.values(), *message.key_shares.values()]:
                    shamir.share_value(share)
            except shamir.ShareError as exc:
                raise SecAggError(
                    f"{sender} sent a malformed or out-of-range share: {exc}"
                ) from exc

    def _unmask(self, answered: list[str]) -> np.ndarray:
        """Remove the survivors' self-masks and the dropped clients' pairwise masks."""
        keystream = Keystream(self.setup.length)
        survivors, shared = self._senders[3], self._senders[2]
        total = self._sum.copy()
        for peer in survivors:
            seed = self._combine(peer, answered, "seed_shares")
            if not hmac.compare_digest(
                seed_commitment(self.session, seed), self._commitments[peer]
            ):
                raise SecAggError(f"{peer}'s self-mask seed does not match its commitment")
            np.subtract(total, keystream(seed), out=total)
        for dropped in (peer for peer in shared if peer not in survivors):
            private = X25519PrivateKey.from_private_bytes(
                self._combine(dropped, answered, "key_shares")
            )
            if private.public_key().public_bytes_raw() != self._keys[dropped].mask_key:
                raise SecAggError(f"{dropped}'s rebuilt mask key does not match its advert")
            for peer in survivors:
                shared_secret = _exchange(private, self._keys[peer].mask_key)
                mask = keystream(_derive(shared_secret, "mask", self.session, peer, dropped))
                if peer < dropped:
                    np.subtract(total, mask, out=total)
                else:
                    np.add(total, mask, out=total)
        return self.encoding.decode(total, len(survivors))

    def _combine(self, owner: str, answered: list[str], field: str) -> bytes:
        shares = {
            self._points[peer]: getattr(self._messages[peer], field)[owner] for peer in answered
        }
        try:
            return shamir.combine(shares, self.setup.threshold)
        except shamir.ShareError as exc:
            raise SecAggError(f"cannot rebuild {owner}'s secret: {exc}") from exc

    def _answer(self, peer: str, kind: type[M]) -> M:
        """`peer`'s kept message of this round, which `receive` checked is a `kind`."""
        message = self._messages[peer]
        if not isinstance(message, kind):
            raise SecAggError(f"expected {kind.__name__} from {peer}, got {type(message).__name__}")
        return message

    def _check_running(self) -> None:
        if self._failure:
            raise SecAggError(self._failure)

    def _sign(self, peer: str, message: m.Message) -> bytes:
        return m.sign(self.identity, self.session, peer, message)


_CLIENT_MESSAGE: list[type] = [
    m.AdvertiseKeys,
    m.ShareKeys,
    m.MaskedInput,
    m.ConsistencyCheck,
    m.UnmaskShares,
]


def check_setup(setup: m.Setup) -> None:
    """Refuse session parameters that break privacy, robustness or the encoding's range."""
    n = len(setup.clients)
    if setup.clients != sorted(set(setup.clients)):
        raise SecAggError("clients must be distinct and sorted")
    if n < 3:
        raise SecAggError("need at least 3 domains: with 2, either one learns the other's input")
    if not n / 2 < setup.threshold <= n:
        raise SecAggError(
            f"threshold {setup.threshold} must be more than n/2 and at most n = {n}: "
            "a smaller one lets the server split the clients into two sessions"
        )
    if not 0 < setup.length <= MAX_LENGTH:
        raise SecAggError(f"vector length must be in 1..{MAX_LENGTH}")
    if not 0 <= setup.frac_bits <= 52:
        raise SecAggError("frac_bits must be in 0..52")
    if not (np.isfinite(setup.max_abs) and setup.max_abs > 0):
        raise SecAggError("max_abs must be positive and finite")
    if n * setup.max_abs * 2.0**setup.frac_bits > _HEADROOM:
        raise SecAggError(
            f"n * max_abs * 2^frac_bits must not exceed 2^62: the sum of {n} inputs could wrap"
        )


def seed_commitment(session: str, seed: bytes) -> bytes:
    return hashlib.sha256(b"jupyter-syft/secagg/seed\n" + session.encode() + seed).digest()


def _open(
    frame: bytes,
    sender: str | None,
    recipient: str,
    round_number: int,
    kind: type[M],
    session: str | None = None,
) -> tuple[m.Envelope, M]:
    """The checked envelope of `frame` and its message: signed, and for this session, round,
    recipient, kind."""
    try:
        envelope = m.open_frame(frame)
    except m.BadFrame as exc:
        raise SecAggError(str(exc)) from exc
    if session is not None and envelope.session != session:
        raise SecAggError("message belongs to another session (replayed or misrouted)")
    if envelope.round != round_number or m.ROUND_OF[type(envelope.message)] != round_number:
        raise SecAggError(
            f"round {envelope.round} message where round {round_number} was expected "
            "(replayed or out of order)"
        )
    if not isinstance(envelope.message, kind):
        raise SecAggError(f"expected {kind.__name__}, got {type(envelope.message).__name__}")
    if sender is not None and envelope.sender != sender:
        raise SecAggError(f"message comes from {envelope.sender}, not {sender}")
    if envelope.recipient != recipient:
        raise SecAggError("message is addressed to another peer (misrouted or replayed)")
    return envelope, envelope.message


def _check_enough(count: int, threshold: int, what: str) -> None:
    if count < threshold:
        raise SecAggError(f"only {count} {what}, fewer than the threshold {threshold}: aborting")


def _check_distinct_keys(adverts: Iterable[m.AdvertiseKeys]) -> None:
    """Refuse reused public keys: a copied key would let its copier derive another's masks."""
    keys = [key for advert in adverts for key in (advert.cipher_key, advert.mask_key)]
    if len(set(keys)) != len(keys):
        raise SecAggError("two advertised public keys are equal")


def _public_key(data: bytes) -> X25519PublicKey:
    try:
        return X25519PublicKey.from_public_bytes(data)
    except ValueError as exc:
        raise SecAggError("advertised key is not a 32-byte X25519 public key") from exc


def _exchange(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(_public_key(public))
    except ValueError as exc:  # a low-order point gives the all-zero secret
        raise SecAggError("key agreement failed: a low-order public key") from exc


def _derive(shared: bytes, purpose: str, session: str, a: str, b: str) -> bytes:
    """A 32-byte key for `purpose`, the same whichever of the pair derives it."""
    info = m.encode(["jupyter-syft/secagg", purpose, session, *sorted((a, b))])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)
