"""Sealed results: round trips, the key derivation, and every kind of tampering refused."""

from __future__ import annotations

import io
import os
import struct

import pytest

from jupyter_syft.crypto.seal import (
    CHUNK_SIZE,
    HEADER_SIZE,
    MAX_CHUNK_SIZE,
    TAG_SIZE,
    SealError,
    open_sealed,
    open_stream,
    result_context,
    seal,
    seal_stream,
    sealed_size,
    x25519_private_key,
    x25519_public_key,
)
from jupyter_syft.identity import Identity, raw_public_key

pytestmark = pytest.mark.unit

SMALL_CHUNK = 16
CONTEXT = result_context("request-1", "domain-peer", "scientist-peer")


class Trickle(io.RawIOBase):
    """A reader that returns at most 3 bytes per read, like a slow socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 3) if size >= 0 else 3)


@pytest.fixture(scope="module")
def requester() -> Identity:
    return Identity.generate()


@pytest.mark.parametrize("size", [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 100])
def test_round_trip_bytes_and_streams(requester: Identity, size: int) -> None:
    data = os.urandom(size)
    public = x25519_public_key(requester.peer_id)
    sealed = seal(data, public, CONTEXT, chunk_size=SMALL_CHUNK)
    assert len(sealed) == sealed_size(size, SMALL_CHUNK)
    assert open_sealed(sealed, requester, CONTEXT) == data

    streamed = io.BytesIO()
    written = seal_stream(Trickle(data), streamed, public, CONTEXT, chunk_size=SMALL_CHUNK)
    assert written == len(sealed) == len(streamed.getvalue())
    assert open_sealed(streamed.getvalue(), requester, CONTEXT) == data
    opened = io.BytesIO()
    assert open_stream(Trickle(sealed), opened, requester, CONTEXT) == size
    assert opened.getvalue() == data


def test_default_chunks_round_trip(requester: Identity) -> None:
    data = os.urandom(3 * CHUNK_SIZE + 5)
    sealed = seal(data, x25519_public_key(requester.peer_id), CONTEXT)
    assert open_sealed(sealed, x25519_private_key(requester), CONTEXT) == data


def test_encryption_key_is_the_birational_image_of_the_identity_key(requester: Identity) -> None:
    """u = (1 + y) / (1 - y) mod 2^255 - 19 (RFC 7748 §4.1), computed here independently."""
    p = 2**255 - 19
    y = int.from_bytes(raw_public_key(requester), "little") & ((1 << 255) - 1)
    u = (1 + y) * pow(1 - y, -1, p) % p
    assert x25519_public_key(requester.peer_id) == u.to_bytes(32, "little")
    derived = x25519_private_key(requester).public_key().public_bytes_raw()
    assert derived == x25519_public_key(requester.peer_id)


def test_every_single_byte_change_is_refused(requester: Identity) -> None:
    """Header, ciphertext and tags are all authenticated: no edit goes unnoticed."""
    sealed = seal(os.urandom(40), x25519_public_key(requester.peer_id), CONTEXT, SMALL_CHUNK)
    for position in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[position] ^= 0x01
        with pytest.raises(SealError):
            open_sealed(bytes(tampered), requester, CONTEXT)


def test_truncation_reordering_and_extension_are_refused(requester: Identity) -> None:
    """STREAM's counter and last-chunk flag: chunks cannot be dropped, swapped or appended."""
    sealed = seal(os.urandom(3 * SMALL_CHUNK), x25519_public_key(requester.peer_id), CONTEXT, 16)
    header, body = sealed[:HEADER_SIZE], sealed[HEADER_SIZE:]
    step = SMALL_CHUNK + TAG_SIZE
    chunks = [body[i : i + step] for i in range(0, len(body), step)]
    variants = {
        "last chunk dropped": header + b"".join(chunks[:2]),
        "cut mid-chunk": sealed[:-5],
        "chunks swapped": header + chunks[1] + chunks[0] + chunks[2],
        "chunk repeated": header + b"".join(chunks) + chunks[2],
        "bytes appended": sealed + b"\x00" * 20,
        "header only": header,
        "empty": b"",
    }
    for variant in variants.values():
        with pytest.raises(SealError):
            open_sealed(variant, requester, CONTEXT)
        with pytest.raises(SealError):
            open_stream(io.BytesIO(variant), io.BytesIO(), requester, CONTEXT)


def test_another_context_or_another_peer_cannot_open(requester: Identity) -> None:
    """A blob replayed under another request, or fetched by another peer, does not open."""
    sealed = seal(b"the result", x25519_public_key(requester.peer_id), CONTEXT)
    other_request = result_context("request-2", "domain-peer", "scientist-peer")
    with pytest.raises(SealError, match="another context"):
        open_sealed(sealed, requester, other_request)
    with pytest.raises(SealError):
        open_sealed(sealed, Identity.generate(), CONTEXT)


def test_bad_headers_and_keys_are_refused(requester: Identity) -> None:
    sealed = seal(b"x", x25519_public_key(requester.peer_id), CONTEXT)
    magic, version, chunk, ephemeral = struct.unpack(">5sBI32s", sealed[:HEADER_SIZE])
    for header, reason in [
        (struct.pack(">5sBI32s", b"NOPE!", version, chunk, ephemeral), "magic"),
        (struct.pack(">5sBI32s", magic, 9, chunk, ephemeral), "version"),
        (struct.pack(">5sBI32s", magic, version, 0, ephemeral), "chunk size"),
        (struct.pack(">5sBI32s", magic, version, MAX_CHUNK_SIZE + 1, ephemeral), "chunk size"),
        (struct.pack(">5sBI32s", magic, version, chunk, bytes(32)), "key agreement"),
    ]:
        with pytest.raises(SealError, match=reason):
            open_sealed(header + sealed[HEADER_SIZE:], requester, CONTEXT)
    with pytest.raises(SealError, match="32-byte"):
        seal(b"x", b"short", CONTEXT)
    with pytest.raises(SealError, match="no usable encryption key"):
        x25519_public_key("not-a-peer-id")


def test_result_contexts_are_unambiguous() -> None:
    assert result_context("ab", "c", "d") != result_context("a", "bc", "d")
    assert result_context("a", "b", "c", "part-0") != result_context("a", "b", "c", "part-1")
