"""Length-prefixed frames over a libp2p stream.

A libp2p stream is a byte pipe: `read(n)` returns whatever has arrived, so messages need
explicit boundaries. Each frame is a 4-byte big-endian length followed by that many bytes.
The length is checked against a cap before the body is read, so a peer cannot make us
buffer an arbitrary amount of memory.
"""

from __future__ import annotations

import struct
from typing import Protocol

MAX_FRAME_BYTES = 16 * 1024 * 1024
_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame is oversize or was cut off by the end of the stream."""


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


async def write_frame(stream: ByteStream, payload: bytes) -> None:
    """Send one frame (a single write, so small messages leave in one muxer frame)."""
    if len(payload) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte cap")
    await stream.write(_HEADER.pack(len(payload)) + payload)


async def _read_exactly(stream: ByteStream, n: int) -> bytes:
    """Read `n` bytes; fewer only when the stream ends first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = await stream.read(n - len(buf))
        except EOFError:  # libp2p's StreamEOF is an EOFError
            break
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def read_frame(stream: ByteStream, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Read one frame.

    Raises `EOFError` when the stream ends cleanly before a frame starts (the peer is done),
    and `FrameError` when the length exceeds `max_bytes` (the body is not read) or the stream
    ends inside a frame. Stream resets surface as libp2p's own exceptions.
    """
    header = await _read_exactly(stream, _HEADER.size)
    if not header:
        raise EOFError("stream closed before a frame")
    if len(header) < _HEADER.size:
        raise FrameError(f"stream closed inside a frame header ({len(header)} of 4 bytes)")
    (length,) = _HEADER.unpack(header)
    if length > max_bytes:
        raise FrameError(f"frame length {length} exceeds the {max_bytes}-byte cap")
    body = await _read_exactly(stream, length)
    if len(body) < length:
        raise FrameError(f"stream closed inside a frame ({len(body)} of {length} bytes)")
    return body
