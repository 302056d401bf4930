"""Messages of secure aggregation (protocol and threat model: `jupyter_syft.crypto.secagg`).

Every message travels as a signed frame of the one RPC layer (`jupyter_syft.wire.rpc.Signed`):
the msgpack bytes of an `Envelope` (session id, round, sender, recipient, message) and the
sender's Ed25519 signature over this protocol's context string and the bytes' SHA-256.
Signatures matter here beyond the channel's own authentication because the server relays
clients' key advertisements and consistency checks to the other clients, who must know the
server did not forge or alter them. Decoding is strict (unknown fields and wrong types are
refused) and nothing is ever unpickled.

Each round is a server message followed by each client's reply, both carrying the round number:

    round  server -> each client        client -> server
    0      Setup                        AdvertiseKeys
    1      KeyList                      ShareKeys
    2      ShareDelivery                MaskedInput
    3      SurvivorList                 ConsistencyCheck
    4      ConsistencyList              UnmaskShares
"""

from __future__ import annotations

import msgspec

from jupyter_syft.identity import Identity
from jupyter_syft.wire import rpc
from jupyter_syft.wire.rpc import Signed, Struct

SECAGG_PROTOCOL = "/jupyter-syft/secagg/1"
SIGNATURE_CONTEXT = b"jupyter-syft/secagg/2\n"


class Setup(Struct, tag="setup"):
    """The session's parameters, fixed by the server and checked by every client."""

    clients: list[str]  # sorted peer IDs of the invited domains; share points follow this order
    threshold: int  # t: shares needed to rebuild a secret, and the fewest survivors of any round
    length: int  # entries of the vector being summed
    frac_bits: int  # fixed-point fraction bits
    max_abs: float  # largest |value| a client may contribute


class AdvertiseKeys(Struct, tag="advertise_keys"):
    cipher_key: bytes  # X25519 public key: encrypts shares between clients
    mask_key: bytes  # X25519 public key: agrees the pairwise masks


class KeyList(Struct, tag="key_list"):
    adverts: list[bytes]  # the clients' signed AdvertiseKeys frames, unaltered


class ShareKeys(Struct, tag="share_keys"):
    shares: dict[str, bytes]  # recipient peer ID -> encrypted ShareBundle
    seed_commitment: bytes  # SHA-256 binding the self-mask seed, checked after reconstruction


class ShareBundle(Struct):
    """What one client sends another, inside an AEAD the server cannot open."""

    key_share: bytes  # share of the sender's mask private key
    seed_share: bytes  # share of the sender's self-mask seed


class ShareDelivery(Struct, tag="share_delivery"):
    shares: dict[str, bytes]  # sender peer ID -> encrypted ShareBundle for this recipient


class MaskedInput(Struct, tag="masked_input"):
    vector: bytes  # `length` little-endian uint64: the masked fixed-point input


class SurvivorList(Struct, tag="survivor_list"):
    survivors: list[str]  # sorted peer IDs whose masked input the server received


class ConsistencyCheck(Struct, tag="consistency_check"):
    survivors: list[str]  # the survivor list this client was given, signed back


class ConsistencyList(Struct, tag="consistency_list"):
    checks: list[bytes]  # signed ConsistencyCheck frames, unaltered


class UnmaskShares(Struct, tag="unmask_shares"):
    seed_shares: dict[str, bytes]  # survivor -> share of its self-mask seed
    key_shares: dict[str, bytes]  # dropped client -> share of its mask private key


Message = (
    Setup
    | AdvertiseKeys
    | KeyList
    | ShareKeys
    | ShareDelivery
    | MaskedInput
    | SurvivorList
    | ConsistencyCheck
    | ConsistencyList
    | UnmaskShares
)

ROUND_OF: dict[type, int] = {
    Setup: 0,
    AdvertiseKeys: 0,
    KeyList: 1,
    ShareKeys: 1,
    ShareDelivery: 2,
    MaskedInput: 2,
    SurvivorList: 3,
    ConsistencyCheck: 3,
    ConsistencyList: 4,
    UnmaskShares: 4,
}


class Envelope(Struct):
    session: str  # random per session: a message from another session is refused
    round: int
    sender: str  # peer ID that signed
    recipient: str  # peer ID it is for: a message to one party is refused by another
    message: Message


class BadFrame(Exception):
    """A frame is malformed or its signature does not verify."""


_encoder = msgspec.msgpack.Encoder()
_signed_decoder = msgspec.msgpack.Decoder(Signed)
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_bundle_decoder = msgspec.msgpack.Decoder(ShareBundle)


def encode(value: msgspec.Struct | list) -> bytes:
    return _encoder.encode(value)


def sign(identity: Identity, session: str, recipient: str, message: Message) -> bytes:
    """A signed frame carrying `message` in its round, from `identity` to `recipient`."""
    envelope = Envelope(session, ROUND_OF[type(message)], identity.peer_id, recipient, message)
    return encode(rpc.sign(identity, SIGNATURE_CONTEXT, encode(envelope)))


def open_frame(frame: bytes) -> Envelope:
    """The envelope in `frame` if it decodes and its sender's signature verifies."""
    try:
        signed = _signed_decoder.decode(frame)
        envelope = _envelope_decoder.decode(signed.body)
    except msgspec.DecodeError as exc:
        raise BadFrame(f"malformed secure-aggregation message: {exc}") from exc
    if not rpc.verifies(signed, SIGNATURE_CONTEXT, envelope.sender):
        raise BadFrame(f"message does not carry a valid signature of {envelope.sender}")
    return envelope


def decode_bundle(data: bytes) -> ShareBundle:
    try:
        return _bundle_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadFrame(f"malformed share bundle: {exc}") from exc
