"""The libp2p control plane: framing, P2PHost, P2PThread, with servers in real processes.

Run as a script, this file is the server those tests start: a P2PHost serving the test
protocols below, printing its multiaddr on stdout.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import trio
from dialers import assert_only_noise_accepted, dial_error, noise, plaintext, secio
from libp2p import new_host
from multiaddr import Multiaddr

from jupyter_syft.identity import Identity, load_or_create
from jupyter_syft.p2p import (
    MAX_FRAME_BYTES,
    FrameError,
    P2PError,
    P2PHost,
    P2PThread,
    read_frame,
    write_frame,
)

ECHO = "/test/echo/1"
WHOAMI = "/test/whoami/1"  # replies with the caller's peer ID as the server saw it
BOOM = "/test/boom/1"  # the handler raises
SLOW = "/test/slow/1"  # sleeps for the number of seconds in the payload, then replies
HUGE = "/test/huge/1"  # replies with more than a frame can hold


def bad_frame_reply(message: str) -> bytes:
    return b"BAD FRAME: " + message.encode()


async def echo(peer: str, payload: bytes) -> bytes:
    return payload


async def whoami(peer: str, payload: bytes) -> bytes:
    return peer.encode()


async def boom(peer: str, payload: bytes) -> bytes:
    raise RuntimeError("handler failed on purpose")


async def slow(peer: str, payload: bytes) -> bytes:
    await trio.sleep(float(payload))
    return b"done"


async def huge(peer: str, payload: bytes) -> bytes:
    return bytes(MAX_FRAME_BYTES + 1)


def serve(host: P2PHost) -> P2PHost:
    handlers = [(ECHO, echo), (WHOAMI, whoami), (BOOM, boom), (SLOW, slow), (HUGE, huge)]
    for protocol, handler in handlers:
        host.set_handler(protocol, handler, bad_frame_reply)
    return host


def serve_forever(key_file: str, listen: str) -> None:
    async def main() -> None:
        async with serve(P2PHost(load_or_create(Path(key_file)), listen)) as host:
            print(host.multiaddrs[0], flush=True)
            await trio.sleep_forever()

    trio.run(main)


class ServerProcess:
    """This file as a server in its own process; its stderr goes to a file we can check."""

    def __init__(self, folder: Path, listen: str = "/ip4/127.0.0.1/tcp/0") -> None:
        self.stderr_path = folder / f"server-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, __file__, str(folder / "server.key"), listen],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        assert self.process.stdout is not None
        self.addr = self.process.stdout.readline().strip()
        if not self.addr:
            self.stop()
            raise RuntimeError(f"server did not start: {self.stderr_path.read_text()}")

    @property
    def port(self) -> int:
        return int(Multiaddr(self.addr).value_for_protocol("tcp"))

    def stop(self, kill: bool = False) -> str:
        """Stop the process (SIGTERM, or SIGKILL) and return what it wrote to stderr."""
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        self.process.communicate(timeout=10)
        return self.stderr_path.read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("p2p-server"))
    try:
        yield process
    finally:
        process.stop()


# -- framing ---------------------------------------------------------------------------------


class DribbleStream:
    """A stream that returns at most `chunk` bytes per read, like a libp2p stream."""

    def __init__(self, data: bytes, chunk: int = 1, eof_raises: bool = False) -> None:
        self.data = data
        self.chunk = chunk
        self.eof_raises = eof_raises
        self.reads = 0
        self.written = b""

    async def read(self, n: int | None = None) -> bytes:
        self.reads += 1
        if not self.data and self.eof_raises:
            raise EOFError
        size = self.chunk if n is None else min(n, self.chunk)
        out, self.data = self.data[:size], self.data[size:]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


def test_framing_partial_reads_eof_oversize_and_truncation() -> None:
    async def main() -> None:
        out = DribbleStream(b"")
        await write_frame(out, b"hello")
        await write_frame(out, b"")
        assert out.written == b"\x00\x00\x00\x05hello\x00\x00\x00\x00"

        for eof_raises in (False, True):
            stream = DribbleStream(out.written, chunk=1, eof_raises=eof_raises)
            assert await read_frame(stream) == b"hello"
            assert await read_frame(stream) == b""
            with pytest.raises(EOFError):
                await read_frame(stream)

        # An oversize length is refused before any of the body is read.
        stream = DribbleStream(struct.pack(">I", 1000) + b"x" * 1000, chunk=4)
        with pytest.raises(FrameError, match="1000 exceeds the 999-byte cap"):
            await read_frame(stream, max_bytes=999)
        assert stream.reads == 1
        with pytest.raises(FrameError, match="exceeds"):
            await read_frame(DribbleStream(struct.pack(">I", MAX_FRAME_BYTES + 1)))

        with pytest.raises(FrameError, match="inside a frame header"):
            await read_frame(DribbleStream(b"\x00\x00"))
        with pytest.raises(FrameError, match=r"inside a frame \(3 of 10 bytes\)"):
            await read_frame(DribbleStream(struct.pack(">I", 10) + b"abc", eof_raises=True))
        with pytest.raises(FrameError, match="exceeds"):
            await write_frame(out, b"x" * (MAX_FRAME_BYTES + 1))

    trio.run(main)


# -- P2PHost against a server process -----------------------------------------------------------


def test_requests_across_processes(server: ServerProcess) -> None:
    client_identity = Identity.generate()

    async def main() -> None:
        async with P2PHost(client_identity, listen=None) as client:
            assert client.multiaddrs == []
            assert (
                await client.request(server.addr, WHOAMI, b"") == client_identity.peer_id.encode()
            )
            for i in range(200):
                payload = f"request {i}".encode()
                assert await client.request(server.addr, ECHO, payload) == payload
            big = bytes(range(256)) * 4096  # 1 MiB: many muxer frames each way
            assert await client.request(server.addr, ECHO, big) == big

            replies: dict[int, bytes] = {}

            async def one(i: int) -> None:
                replies[i] = await client.request(server.addr, ECHO, b"%d" % i)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(one, i)
            assert replies == {i: b"%d" % i for i in range(20)}

            # Handlers of different streams run concurrently: 5 x 0.5 s take ~0.5 s.
            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(client.request, server.addr, SLOW, b"0.5")
            assert time.monotonic() - started < 1.5

    trio.run(main)


def test_timeout_and_handler_failure_leave_server_serving(server: ServerProcess) -> None:
    async def main() -> None:
        async with P2PHost(Identity.generate(), listen=None) as client:
            started = time.monotonic()
            with pytest.raises(P2PError, match=f"{SLOW} request to .* timed out after 0.3 s"):
                await client.request(server.addr, SLOW, b"2", timeout=0.3)
            assert time.monotonic() - started < 1.5
            assert await client.request(server.addr, SLOW, b"0") == b"done"

            for protocol in (BOOM, HUGE):
                with pytest.raises(P2PError, match="stream broke"):
                    await client.request(server.addr, protocol, b"")
            assert await client.request(server.addr, ECHO, b"still here") == b"still here"
            with pytest.raises(P2PError, match="exceeds the frame cap"):
                await client.request(server.addr, ECHO, bytes(MAX_FRAME_BYTES + 1))

            with pytest.raises(P2PError, match=r"cannot open a /test/nope/1 stream to .*'na'"):
                await client.request(server.addr, "/test/nope/1", b"")
            with pytest.raises(P2PError, match="not a multiaddr ending in /p2p/"):
                await client.request("/ip4/127.0.0.1/tcp/1", ECHO, b"")

    trio.run(main)


def test_malformed_frames_get_bad_frame_reply(server: ServerProcess) -> None:
    async def main() -> None:
        async with P2PHost(Identity.generate(), listen=None) as client:
            # A length prefix over the cap: answered at once, without waiting for a body.
            raw = await client.open_stream(server.addr, ECHO)
            await raw.write_raw(struct.pack(">I", MAX_FRAME_BYTES + 1))
            with trio.fail_after(5):
                reply = await raw.read_frame()
            assert reply.startswith(b"BAD FRAME: ") and b"exceeds" in reply
            with pytest.raises(EOFError):
                await raw.read_frame()  # the server closed that stream

            # A frame cut short by closing the stream.
            raw = await client.open_stream(server.addr, ECHO)
            await raw.write_raw(struct.pack(">I", 100) + b"only 17 bytes ...")
            await raw.close()
            assert b"inside a frame (17 of 100 bytes)" in await raw.read_frame()

            # Something that is not a frame at all.
            raw = await client.open_stream(server.addr, ECHO)
            await raw.write_raw(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            assert (await raw.read_frame()).startswith(b"BAD FRAME: ")

            # A well-formed frame on a raw stream, then the pooled path: both still served.
            raw = await client.open_stream(server.addr, ECHO)
            await raw.write_frame(b"fine")
            assert await raw.read_frame() == b"fine"
            await raw.close()
            assert await client.request(server.addr, ECHO, b"after") == b"after"

    trio.run(main)


def test_only_noise_dialers_are_accepted(server: ServerProcess) -> None:
    async def main() -> None:
        # Control: the same dialers do connect to a default libp2p host.
        default = new_host(key_pair=Identity.generate().key_pair)
        async with default.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            for sec_opt in (plaintext(), secio(), noise()):
                assert await dial_error(sec_opt, str(default.get_addrs()[0])) is None
            await default.close()

        # The server answers "na" to anything but Noise.
        await assert_only_noise_accepted(server.addr)
        async with P2PHost(Identity.generate(), listen=None) as client:
            assert await client.request(server.addr, ECHO, b"noise") == b"noise"

    trio.run(main)


def test_server_restart_is_redialled(tmp_path: Path) -> None:
    first = ServerProcess(tmp_path)
    second = None
    try:

        async def main() -> None:
            nonlocal second
            async with P2PHost(Identity.generate(), listen=None) as client:
                assert await client.request(first.addr, ECHO, b"one") == b"one"
                await trio.to_thread.run_sync(lambda: first.stop(kill=True))
                with pytest.raises(P2PError, match="cannot dial"):
                    await client.request(first.addr, ECHO, b"down", timeout=5)
                listen = f"/ip4/127.0.0.1/tcp/{first.port}"
                second = await trio.to_thread.run_sync(ServerProcess, tmp_path, listen)
                assert second.addr == first.addr  # same key, same port
                assert await client.request(first.addr, ECHO, b"two") == b"two"

        trio.run(main)
    finally:
        first.stop(kill=True)
        if second is not None:
            second.stop()


# -- in-process: a broken idle stream is replaced -------------------------------------------------


def test_broken_idle_stream_is_retried_once_on_a_new_stream() -> None:
    calls: list[bytes] = []

    async def counting_echo(peer: str, payload: bytes) -> bytes:
        calls.append(payload)
        return payload

    async def main() -> None:
        server = P2PHost(Identity.generate())
        server.set_handler(ECHO, counting_echo, bad_frame_reply)
        async with server, P2PHost(Identity.generate(), listen=None) as client:
            addr = server.multiaddrs[0]
            assert await client.request(addr, ECHO, b"a") == b"a"
            # The server drops every stream (its handler crashed, say); the connection lives.
            for conn in server._swarm.get_connections():
                for stream in conn.get_streams():
                    await stream.reset()
            await trio.sleep(0.05)
            assert await client.request(addr, ECHO, b"b") == b"b"
            assert calls == [b"a", b"b"]  # the reset stream never delivered "b"

    trio.run(main)


# -- P2PThread ------------------------------------------------------------------------------------


def test_p2pthread_requests_from_many_threads(server: ServerProcess) -> None:
    identity = Identity.generate()
    before = set(threading.enumerate())
    with P2PThread(identity) as p2p:
        assert p2p.peer_id == identity.peer_id
        assert p2p.request(server.addr, WHOAMI, b"") == identity.peer_id.encode()
        for i in range(200):
            assert p2p.request(server.addr, ECHO, b"%d" % i) == b"%d" % i

        def ten(worker: int) -> list[bytes]:
            return [p2p.request(server.addr, ECHO, b"%d-%d" % (worker, i)) for i in range(10)]

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(ten, range(20)))
        assert results == [[b"%d-%d" % (w, i) for i in range(10)] for w in range(20)]

        with pytest.raises(P2PError, match="timed out"):
            p2p.request(server.addr, SLOW, b"2", timeout=0.2)
    p2p.close()  # a second close is a no-op
    assert not any(t.name.startswith("p2p-") for t in set(threading.enumerate()) - before)
    with pytest.raises(P2PError, match="not running"):
        p2p.request(server.addr, ECHO, b"")


def test_start_failure_is_a_p2p_error() -> None:
    async def main() -> None:
        with pytest.raises(P2PError, match=r"^cannot listen on /ip4/127\.0\.0\.1/udp/9$"):
            async with P2PHost(Identity.generate(), listen="/ip4/127.0.0.1/udp/9"):
                pass

        # libp2p listens with SO_REUSEPORT; a second node must still not share a port.
        async with P2PHost(Identity.generate()) as first:
            taken = f"/ip4/127.0.0.1/tcp/{Multiaddr(first.multiaddrs[0]).value_for_protocol('tcp')}"
            with pytest.raises(P2PError, match="Address already in use"):
                async with P2PHost(Identity.generate(), listen=taken):
                    pass

    trio.run(main)
    p2p = P2PThread(Identity.generate(), listen="/ip4/127.0.0.1/udp/9")
    with pytest.raises(P2PError, match=r"did not start: cannot listen on /ip4/127\.0\.0\.1/udp/9$"):
        p2p.start()
    p2p.close()


def test_p2pthread_can_listen() -> None:
    p2p = P2PThread(Identity.generate(), listen="/ip4/127.0.0.1/tcp/0").start()
    try:
        assert p2p.multiaddrs[0].startswith("/ip4/127.0.0.1/tcp/")
        assert p2p.multiaddrs[0].endswith(f"/p2p/{p2p.peer_id}")
    finally:
        p2p.close()


def test_a_normal_session_writes_nothing_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    served = ServerProcess(tmp_path)
    try:
        with P2PThread(Identity.generate()) as p2p:
            for i in range(20):
                assert p2p.request(served.addr, ECHO, b"%d" % i) == b"%d" % i
    finally:
        server_stderr = served.stop()
    assert server_stderr == ""
    assert capfd.readouterr().err == ""


if __name__ == "__main__":
    serve_forever(*sys.argv[1:])
