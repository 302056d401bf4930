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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

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


def output_context(request_id: str, domain_peer_id: str, piece: str) -> bytes:
    """The context of what a job said besides its result ("error" or "log"), sealed by the
    domain to itself: bound to the request, so a store cannot move one job's text to another."""
    return msgspec.msgpack.encode(["jupyter-syft/job-output", request_id, domain_peer_id, piece])


@dataclass(frozen=True)
class ResultSeal:
    """The contexts of one request's result: its manifest and each part sealed on its own."""

    request_id: str
    domain_peer_id: str
    requester_peer_id: str

    def manifest(self) -> bytes:
        return result_context(
            self.request_id, self.domain_peer_id, self.requester_peer_id, "manifest"
        )

    def part(self, index: int) -> bytes:
        return result_context(
            self.request_id, self.domain_peer_id, self.requester_peer_id, f"part-{index}"
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
    opener = Opener(recipient_private, context, len(sealed))
    opener.feed(sealed)
    return bytes(opener.finish())


def seal_stream(
    src: BinaryIO,
    dst: BinaryIO,
    recipient_public: bytes,
    context: bytes,
    chunk_size: int = CHUNK_SIZE,
) -> int:
    """`seal` from one file object to another in constant memory; returns bytes written."""
    writer = SealingWriter(dst, recipient_public, context, chunk_size)
    while chunk := src.read(chunk_size):
        writer.write(chunk)
    writer.close()
    return writer.sealed_bytes


class SealingWriter:
    """A write-only file object that seals what is written to it into `dst`, chunk by chunk.

    For writers that want a file (Arrow's IPC writer): the plaintext is never held whole nor
    stored. `close()` seals the last chunk; it does not close `dst`. Without `close()` the
    payload is truncated, so nothing written before an error can be opened.
    """

    def __init__(
        self,
        dst: BinaryIO,
        recipient_public: bytes,
        context: bytes,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._aead, self._header = _sender(recipient_public, context, chunk_size)
        self._dst = dst
        # Both buffers are reused for every chunk: fresh ones would cost a page fault per 4 KiB.
        self._chunk = bytearray(chunk_size)
        self._sealed = bytearray(chunk_size + TAG_SIZE)
        self._filled = 0
        self._index = 0
        self._position = 0
        self.sealed_bytes = dst.write(self._header)
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed SealingWriter")
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            if self._filled == len(self._chunk):
                self._seal_chunk(last=False)  # more follows: this chunk is not the last
            take = min(len(self._chunk) - self._filled, len(view))
            self._chunk[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
        self._position += size
        return size

    def tell(self) -> int:
        """Plaintext bytes written so far (what a file writer expects)."""
        return self._position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        self._dst.flush()

    def close(self) -> None:
        if not self.closed:
            self._seal_chunk(last=True)
            self.closed = True

    def _seal_chunk(self, last: bool) -> None:
        sealed = memoryview(self._sealed)[: self._filled + TAG_SIZE]
        plain = memoryview(self._chunk)[: self._filled]
        self._aead.encrypt_into(_nonce(self._index, last), plain, self._header, sealed)
        self.sealed_bytes += self._dst.write(sealed)
        self._filled = 0
        self._index += 1


class Opener:
    """Opens a sealed payload of known size piece by piece (e.g. as it downloads), decrypting
    into one preallocated buffer: the whole sealed payload is never assembled in memory.

    Each chunk is authenticated as it arrives; `finish()` hands out the plaintext only once
    every chunk up to the last has been. `sealed_size` is the payload's full size: a payload
    cut or extended to another size fails the last chunk's check. `allocate(n)` makes the
    writable n-byte buffer the plaintext goes to (e.g. `pyarrow.allocate_buffer`: aligned, and
    reused from Arrow's pool).
    """

    def __init__(
        self,
        recipient_private: Identity | X25519PrivateKey,
        context: bytes,
        sealed_size: int,
        allocate: Callable[[int], Any] = bytearray,
    ) -> None:
        if sealed_size < HEADER_SIZE:
            raise SealError("not a sealed payload: too short")
        self._recipient = recipient_private
        self._context = context
        self._size = sealed_size
        self._allocate = allocate
        self._received = 0
        self._pending = bytearray(HEADER_SIZE)  # the header, then a chunk split across pieces
        self._filled = 0
        self._aead: AESGCM | None = None
        self._header = b""
        self._chunk_size = self._chunks = self._index = 0
        self._out: Any = None

    def feed(self, data: bytes | memoryview) -> None:
        """Decrypt the chunks `data` completes; keep a partial one for the next piece."""
        view = memoryview(data).cast("B")
        self._received += len(view)
        if self._received > self._size:
            raise SealError("sealed payload is longer than announced")
        if self._aead is None:
            view = self._fill(view, HEADER_SIZE)
            if self._filled < HEADER_SIZE:
                return
            self._start(bytes(self._pending))
        while view:
            need = self._sealed_chunk_bytes()
            if not self._filled and len(view) >= need:  # a whole chunk in this piece: no copy
                self._open(view[:need])
                view = view[need:]
                continue
            view = self._fill(view, need)
            if self._filled == need:
                self._open(memoryview(self._pending)[:need])

    def finish(self) -> Any:
        """The plaintext buffer, once every chunk has been authenticated."""
        if self._aead is None or self._index < self._chunks:
            raise SealError("sealed payload is truncated")
        return self._out

    def _fill(self, view: memoryview, need: int) -> memoryview:
        """Copy into the pending buffer up to `need` bytes; return the rest of `view`."""
        take = min(need - self._filled, len(view))
        self._pending[self._filled : self._filled + take] = view[:take]
        self._filled += take
        return view[take:]

    def _start(self, header: bytes) -> None:
        self._aead, self._chunk_size, self._header = _receiver(
            header, self._recipient, self._context
        )
        body = self._size - HEADER_SIZE
        sealed_chunk = self._chunk_size + TAG_SIZE
        self._chunks = max(1, -(-body // sealed_chunk))
        if body - (self._chunks - 1) * sealed_chunk < TAG_SIZE:
            raise SealError("sealed payload is truncated")
        self._pending = bytearray(min(sealed_chunk, body))
        self._filled = 0
        self._out = self._allocate(body - self._chunks * TAG_SIZE)

    def _sealed_chunk_bytes(self) -> int:
        """Sealed size of the next chunk: a full one, or what is left for the last."""
        if self._index < self._chunks - 1:
            return self._chunk_size + TAG_SIZE
        return self._size - HEADER_SIZE - self._index * (self._chunk_size + TAG_SIZE)

    def _open(self, chunk: memoryview) -> None:
        assert self._aead is not None  # set by _start before any chunk
        start = self._index * self._chunk_size
        target = memoryview(self._out).cast("B")[start : start + len(chunk) - TAG_SIZE]
        last = self._index == self._chunks - 1
        try:
            self._aead.decrypt_into(_nonce(self._index, last), chunk, self._header, target)
        except InvalidTag:
            raise _tampered(self._index) from None
        self._index += 1
        self._filled = 0


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
