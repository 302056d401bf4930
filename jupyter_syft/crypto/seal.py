"""Sealed results: a payload encrypted on the domain so that only its requester can open it.

Protocol (the shape of HPKE base mode, RFC 9180: DHKEM(X25519, HKDF-SHA256), with a chunked AEAD
so that payloads of any size stream in constant memory):

    R        the requester's X25519 public key, derived from their peer ID (see below)
    e, E     a fresh X25519 key pair per sealed payload; the domain forgets e at once
    K        = HKDF-SHA256(ikm = X25519(e, R), salt = E || R, info = LABEL || context)
    header   = MAGIC || VERSION || chunk size (u32, big-endian) || E
    chunk i  = AES-256-GCM(K, nonce = i (11 bytes, big-endian) || last flag (1 byte),
                           plaintext chunk i, associated data = header)
    sealed   = header || chunk 0 || chunk 1 || ... || last chunk

The nonce construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, CRYPTO 2015): the chunk
counter stops reordering or dropping chunks, the last-chunk flag stops truncation and extension,
and the header as associated data stops editing the chunk size or the ephemeral key. K is fresh
per payload, so counter nonces never repeat under one key.

The context (`result_context(request_id, domain, requester, part)`) enters the key schedule: a
blob sealed for one request opens under no other, so stored blobs cannot be replayed as the
answer to a different request, from a different domain, or as another piece of the result.

Why the X25519 key is derived from the Ed25519 identity (the birational map of RFC 7748 §4.1,
libsodium's `crypto_sign_ed25519_pk_to_curve25519`, as age does for ssh-ed25519 recipients)
rather than announced separately: the domain already knows the requester by a peer ID that
embeds the Ed25519 key and signs every call, so the encryption key follows from it with no
announcement to sign, store, rotate or trust, and no chance for a relay to substitute its own
key. Using one key pair for Ed25519 signatures and X25519 key agreement is proven safe
(Thormarker, "On using the same key pair for Ed25519 and an X25519 based KEM", ePrint 2021/509).

Threat model: the sealing domain is trusted with the plaintext (it computed it). Everyone else
who holds the sealed bytes (the store, a relay, the network operator, another scientist)
learns only their length, and cannot alter, reorder, truncate or re-target them without
`SealError`. There is no forward secrecy towards the recipient: a stolen identity key opens
every result sealed to it.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519, crypto_sign_ed25519_sk_to_curve25519

from jupyter_syft.errors import SyftError
from jupyter_syft.identity import Identity, IdentityError, public_key_of, raw_public_key

MAGIC = b"JSEAL"
VERSION = 1
LABEL = b"jupyter-syft/seal/1\n"
CHUNK_SIZE = 1 << 20  # 1 MiB: large enough for full AES-GCM speed, small enough to stream
MAX_CHUNK_SIZE = 1 << 24  # a reader never allocates more than this for one chunk
TAG_SIZE = 16
_HEADER = struct.Struct(">5sBI32s")  # magic, version, chunk size, ephemeral public key
HEADER_SIZE = _HEADER.size


class SealError(SyftError):
    """A sealed payload could not be made or opened: tampered, truncated, re-targeted, not ours."""


def x25519_public_key(peer_id: str) -> bytes:
    """The X25519 public key (32 bytes) that results for `peer_id` are sealed to."""
    try:
        ed25519 = public_key_of(peer_id).public_bytes_raw()
        return crypto_sign_ed25519_pk_to_curve25519(ed25519)
    except (IdentityError, ValueError, RuntimeError) as exc:  # nacl raises its RuntimeError
        raise SealError(f"peer ID {peer_id!r} has no usable encryption key") from exc


def x25519_private_key(identity: Identity) -> X25519PrivateKey:
    """The X25519 private key matching `x25519_public_key(identity.peer_id)`."""
    seed = identity.private_key.private_bytes_raw()
    scalar = crypto_sign_ed25519_sk_to_curve25519(seed + raw_public_key(identity))
    return X25519PrivateKey.from_private_bytes(scalar)


def result_context(
    request_id: str, domain_peer_id: str, requester_peer_id: str, part: str = ""
) -> bytes:
    """The context a request's result is sealed under: unambiguous bytes naming all of them.

    `part` names the piece of a result sealed on its own (e.g. "manifest", "part-0"), so that
    a store cannot swap the pieces of one result either.
    """
    return msgspec.msgpack.encode(
        ["jupyter-syft/result", request_id, domain_peer_id, requester_peer_id, part]
    )


def sealed_size(plaintext_size: int, chunk_size: int = CHUNK_SIZE) -> int:
    """Bytes of a sealed payload of `plaintext_size` bytes: header plus one tag per chunk."""
    chunks = max(1, -(-plaintext_size // chunk_size))
    return HEADER_SIZE + plaintext_size + chunks * TAG_SIZE


def seal(
    plaintext: bytes, recipient_public: bytes, context: bytes, chunk_size: int = CHUNK_SIZE
) -> bytes:
    """Encrypt `plaintext` so that only the holder of `recipient_public`'s key can open it."""
    aead, header = _sender(recipient_public, context, chunk_size)
    data = memoryview(plaintext).cast("B")
    out = bytearray(sealed_size(len(data), chunk_size))
    view = memoryview(out)
    view[:HEADER_SIZE] = header
    pos = HEADER_SIZE
    starts = range(0, max(len(data), 1), chunk_size)
    for index, start in enumerate(starts):
        chunk = data[start : start + chunk_size]
        end = pos + len(chunk) + TAG_SIZE
        aead.encrypt_into(_nonce(index, index == len(starts) - 1), chunk, header, view[pos:end])
        pos = end
    return bytes(out)


def open_sealed(
    sealed: bytes, recipient_private: Identity | X25519PrivateKey, context: bytes
) -> bytes:
    """Decrypt and authenticate a sealed payload, or raise SealError."""
    data = memoryview(sealed).cast("B")
    aead, chunk_size, header = _receiver(data[:HEADER_SIZE], recipient_private, context)
    body = data[HEADER_SIZE:]
    sealed_chunk = chunk_size + TAG_SIZE
    chunks = max(1, -(-len(body) // sealed_chunk))
    if len(body) - (chunks - 1) * sealed_chunk < TAG_SIZE:
        raise SealError("sealed payload is truncated")
    out = bytearray(len(body) - chunks * TAG_SIZE)
    view = memoryview(out)
    for index in range(chunks):
        chunk = body[index * sealed_chunk : (index + 1) * sealed_chunk]
        start = index * chunk_size
        target = view[start : start + len(chunk) - TAG_SIZE]
        try:
            aead.decrypt_into(_nonce(index, index == chunks - 1), chunk, header, target)
        except InvalidTag:
            raise _tampered(index) from None
    return bytes(out)


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    recipient_public: bytes,
    context: bytes,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """`seal` from one file object to another in constant memory; returns bytes written."""
    aead, header = _sender(recipient_public, context, chunk_size)
    written = dst.write(header)
    chunk = _read_exactly(src, chunk_size)
    index = 0
    while True:
        following = _read_exactly(src, chunk_size) if len(chunk) == chunk_size else b""
        written += dst.write(aead.encrypt(_nonce(index, not following), chunk, header))
        if not following:
            return written
        chunk, index = following, index + 1


def open_stream(
    src: BinaryIO, dst: BinaryIO, recipient_private: Identity | X25519PrivateKey, context: bytes
) -> int:
    """`open_sealed` between file objects; returns plaintext bytes written.

    Each chunk is authenticated before it is written, but truncation shows only at the end:
    on SealError the caller must discard everything written to `dst`.
    """
    header = _read_exactly(src, HEADER_SIZE)
    aead, chunk_size, header = _receiver(header, recipient_private, context)
    sealed_chunk = chunk_size + TAG_SIZE
    chunk = _read_exactly(src, sealed_chunk)
    written = index = 0
    while True:
        following = _read_exactly(src, sealed_chunk) if len(chunk) == sealed_chunk else b""
        try:
            written += dst.write(aead.decrypt(_nonce(index, not following), chunk, header))
        except InvalidTag:
            raise _tampered(index) from None
        if not following:
            return written
        chunk, index = following, index + 1


def _sender(recipient_public: bytes, context: bytes, chunk_size: int) -> tuple[AESGCM, bytes]:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise SealError(f"chunk size must be in 1..{MAX_CHUNK_SIZE}")
    try:
        recipient = X25519PublicKey.from_public_bytes(bytes(recipient_public))
    except ValueError as exc:
        raise SealError("recipient key must be a 32-byte X25519 public key") from exc
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    header = _HEADER.pack(MAGIC, VERSION, chunk_size, ephemeral_public)
    key = _key(ephemeral, recipient, ephemeral_public, recipient.public_bytes_raw(), context)
    return AESGCM(key), header


def _receiver(
    header: bytes | memoryview, recipient_private: Identity | X25519PrivateKey, context: bytes
) -> tuple[AESGCM, int, bytes]:
    header = bytes(header)
    if len(header) < HEADER_SIZE:
        raise SealError("not a sealed payload: too short")
    magic, version, chunk_size, ephemeral_public = _HEADER.unpack(header)
    if magic != MAGIC:
        raise SealError("not a sealed payload: bad magic bytes")
    if version != VERSION:
        raise SealError(f"sealed payload version {version} is not supported (expected {VERSION})")
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise SealError(f"sealed payload declares chunk size {chunk_size}: refused")
    private = (
        x25519_private_key(recipient_private)
        if isinstance(recipient_private, Identity)
        else recipient_private
    )
    ephemeral = X25519PublicKey.from_public_bytes(ephemeral_public)
    recipient_public = private.public_key().public_bytes_raw()
    key = _key(private, ephemeral, ephemeral_public, recipient_public, context)
    return AESGCM(key), chunk_size, header


def _key(
    private: X25519PrivateKey,
    peer: X25519PublicKey,
    ephemeral_public: bytes,
    recipient_public: bytes,
    context: bytes,
) -> bytes:
    try:
        shared = private.exchange(peer)
    except ValueError as exc:  # a low-order point gives the all-zero secret
        raise SealError("key agreement failed: invalid ephemeral or recipient key") from exc
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=ephemeral_public + recipient_public,
        info=LABEL + bytes(context),
    )
    return hkdf.derive(shared)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _tampered(index: int) -> SealError:
    return SealError(
        f"sealed payload failed authentication at chunk {index}: tampered, truncated, "
        "sealed under another context, or sealed to another key"
    )


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, fewer only at end of stream (sockets and pipes return short reads)."""
    parts = []
    remaining = size
    while remaining:
        part = src.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)
