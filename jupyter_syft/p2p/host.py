"""Request/response over py-libp2p: one authenticated connection per peer, reused streams.

The control plane sends many small messages, and py-libp2p makes new connections costly
(Noise handshake plus upgrades) and new streams noticeably slower than reused ones. So a
`P2PHost` dials each peer once, keeps the connection, and keeps idle streams per
(peer, protocol) for the next request. Every frame is length-prefixed (see `framing`).

Security: Noise is the only security transport offered or accepted, so a plaintext or
secio dialer is refused, and the peer ID a handler sees is the one Noise authenticated.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType

import trio
from libp2p import new_swarm
from libp2p.abc import INetStream
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.host.basic_host import BasicHost
from libp2p.io.exceptions import IOException
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig, RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.peer.peerstore import PeerStore
from libp2p.protocol_muxer.exceptions import MultiselectClientError
from libp2p.rcmgr import new_resource_manager
from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults
from libp2p.rcmgr.manager import ResourceLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from jupyter_syft.errors import Unreachable
from jupyter_syft.identity import Identity
from jupyter_syft.p2p.framing import MAX_FRAME_BYTES, FrameError, read_frame, write_frame

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], Awaitable[bytes]]

# What a broken stream or connection raises: libp2p stream errors, muxer errors, a frame
# cut off by the peer closing, or an EOF before any reply.
_STREAM_ERRORS = (IOException, MuxedStreamError, MuxedConnError, FrameError, EOFError)
# Idle streams kept per (peer, protocol); more than this are closed after use.
_MAX_IDLE_STREAMS = 32


class P2PError(Unreachable):
    """A request could not be completed: dial failed, timed out, or the stream broke."""


class ProtocolNotSupported(P2PError):
    """The peer answered but does not serve that protocol (it is another kind of node)."""


def _quiet_libp2p_logging() -> None:
    """Keep libp2p's log records off stderr.

    libp2p's logger has no handler and does not propagate, so Python's last-resort handler
    prints its warnings (frequent, mostly harmless) to stderr. Letting them propagate is no
    better: libp2p calls module-level `logging.debug()`, which installs a stderr handler on
    the root logger. So give it a null handler; what matters reaches us as exceptions.
    `LIBP2P_DEBUG` (libp2p's own switch) still turns its output on.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    logger = logging.getLogger("libp2p")
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())


_quiet_libp2p_logging()


class _NoAutoConnect(AutoConnector):
    """Dial only the peers we ask for.

    libp2p's auto-connector dials random peers from the peerstore in the background to keep up
    to 200 connections; our nodes and clients dial exactly whom they talk to.
    """

    async def maybe_connect(self) -> None:
        return


def _new_libp2p_host(
    identity: Identity, max_connections: int | None = None
) -> tuple[BasicHost, Swarm]:
    """A TCP host with Noise as its only security transport and Yamux as its only muxer.

    py-libp2p caps a host's connections three times (connection manager: 300; resource
    manager: 1,000, of which 256 inbound) and its peerstore at 1,000 peers (evicting beyond
    that, its own key included, which breaks identify). A hub that keeps a long-lived
    connection per member (a network node) passes a higher `max_connections`, which raises all
    of these (and allows 16 streams per connection).
    """
    noise = NoiseTransport(identity.key_pair, noise_privkey=new_x25519_key_pair().private_key)
    limits = resources = None
    if max_connections is not None:
        limits = ConnectionConfig(max_connections=max_connections, high_watermark=max_connections)
        connection_limits = new_connection_limits_with_defaults()
        connection_limits.max_established_inbound = max_connections
        connection_limits.max_established_total = max_connections
        resources = new_resource_manager(
            ResourceLimits(max_connections=max_connections, max_streams=16 * max_connections),
            connection_limits=connection_limits,
        )
    swarm = new_swarm(
        key_pair=identity.key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        # One attempt per dial: callers get a prompt, clear error and choose to retry.
        retry_config=RetryConfig(max_retries=0),
        connection_config=limits,
        resource_manager=resources,
    )
    assert isinstance(swarm, Swarm)
    swarm.auto_connector = _NoAutoConnect(swarm, swarm.connection_config.auto_connect_interval)
    if max_connections is not None:
        peerstore = swarm.peerstore
        assert isinstance(peerstore, PeerStore)
        peerstore.max_peers = max(peerstore.max_peers, 2 * max_connections)
    return BasicHost(network=swarm), swarm


async def _discard(stream: INetStream) -> None:
    """Reset a stream whose state is unknown, even while being cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except Exception as exc:
            log.debug("reset of a broken stream failed: %r", exc)


class RawStream:
    """An unpooled stream to a peer, for sending arbitrary (even malformed) bytes."""

    def __init__(self, stream: INetStream) -> None:
        self._stream = stream

    async def write_raw(self, data: bytes) -> None:
        await self._stream.write(data)

    async def write_frame(self, payload: bytes) -> None:
        await write_frame(self._stream, payload)

    async def read_frame(self, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
        return await read_frame(self._stream, max_bytes)

    async def close(self) -> None:
        """Close our side for writing; the peer's reply can still be read."""
        await self._stream.close()


class P2PHost:
    """A libp2p host serving request/response protocols and making requests to peers."""

    def __init__(
        self,
        identity: Identity,
        listen: str | None = "/ip4/127.0.0.1/tcp/0",
        max_connections: int | None = None,
    ) -> None:
        self.identity = identity
        self.peer_id: str = identity.peer_id
        self._listen = listen
        self._host, self._swarm = _new_libp2p_host(identity, max_connections)
        self._stack: AsyncExitStack | None = None
        self._idle: dict[tuple[ID, str], list[INetStream]] = {}
        self._dial_locks: dict[ID, trio.Lock] = {}

    @property
    def multiaddrs(self) -> list[str]:
        """Full addresses (with `/p2p/<peer id>`) that peers can dial; empty if dial-only."""
        return [str(addr) for addr in self._host.get_addrs()]

    @property
    def libp2p_host(self) -> BasicHost:
        """The underlying libp2p host, for services that share it (DHT, pubsub)."""
        return self._host

    def is_connected(self, multiaddr: str) -> bool:
        """True while a live connection to the peer of `multiaddr` exists."""
        return self._live(_parse(multiaddr)[0])

    async def __aenter__(self) -> P2PHost:
        stack = AsyncExitStack()
        await stack.enter_async_context(self._host.run([]))
        # `run` only cancels tasks on exit; `close` also closes sockets and listeners.
        stack.push_async_callback(self._host.close)
        try:
            if self._listen is not None:
                await self._start_listening(self._listen)
        except BaseException:
            await stack.aclose()  # then raise: raised inside `run`, it would come out grouped
            raise
        self._stack = stack
        return self

    async def _start_listening(self, listen: str) -> None:
        # Called directly, not via `BasicHost.run(addrs)`, which ignores a failed listen.
        try:
            maddr = Multiaddr(listen)
        except Exception as exc:
            raise P2PError(f"cannot listen on {listen}: {exc}") from exc
        _refuse_taken_port(maddr)
        try:
            listening = await self._swarm.listen(maddr)
        except Exception as exc:
            raise P2PError(f"cannot listen on {listen}: {exc}") from exc
        if not listening:
            raise P2PError(f"cannot listen on {listen}")

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        self._idle.clear()
        if stack is not None:
            await stack.aclose()

    # -- serving ---------------------------------------------------------------------------

    def set_handler(
        self,
        protocol: str,
        handler: Handler,
        bad_frame_reply: Callable[[str], bytes],
        max_frame_bytes: int = MAX_FRAME_BYTES,
    ) -> None:
        """Serve `protocol`: each incoming frame is passed to `handler`, its result sent back.

        `bad_frame_reply(message)` builds the one frame sent before closing a stream that
        broke the framing (oversize length, truncated frame). A protocol whose messages are
        small passes a lower `max_frame_bytes`, so an oversize frame is refused unread.
        """

        async def serve(stream: INetStream) -> None:
            await self._serve(stream, protocol, handler, bad_frame_reply, max_frame_bytes)

        self._host.set_stream_handler(TProtocol(protocol), serve)

    async def _serve(
        self,
        stream: INetStream,
        protocol: str,
        handler: Handler,
        bad_frame_reply: Callable[[str], bytes],
        max_frame_bytes: int,
    ) -> None:
        # The Noise-authenticated peer of this connection, never a claim from the payload.
        remote = stream.muxed_conn.peer_id.to_base58()
        try:
            while True:
                try:
                    payload = await read_frame(stream, max_frame_bytes)
                except EOFError:
                    break
                except FrameError as exc:
                    log.info("bad frame on %s from %s: %s", protocol, remote, exc)
                    await write_frame(stream, bad_frame_reply(str(exc)))
                    break
                try:
                    reply = await handler(remote, payload)
                    if len(reply) > MAX_FRAME_BYTES:
                        raise FrameError(f"reply of {len(reply)} bytes exceeds the frame cap")
                except Exception:
                    log.exception("handler for %s failed on a request from %s", protocol, remote)
                    break
                await write_frame(stream, reply)
        except _STREAM_ERRORS as exc:
            log.debug("%s stream from %s broke: %r", protocol, remote, exc)
            await _discard(stream)
            return
        except Exception:  # e.g. a reply that is not bytes; must not reach libp2p's tasks
            log.exception("serving %s to %s failed", protocol, remote)
            await _discard(stream)
            return
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            try:
                await stream.close()
            except _STREAM_ERRORS as exc:
                log.debug("closing %s stream from %s failed: %r", protocol, remote, exc)

    # -- requesting ------------------------------------------------------------------------

    async def request(
        self, multiaddr: str, protocol: str, payload: bytes, timeout: float = 30.0
    ) -> bytes:
        """Send `payload` to the peer at `multiaddr` on `protocol` and return its reply.

        A reused stream that turns out broken is dropped and the request sent once more on a
        new stream, so a handler may, rarely, see a request twice. Every failure, including
        a payload over the frame cap, raises `P2PError`.
        """
        peer_id, addr = _parse(multiaddr)
        if len(payload) > MAX_FRAME_BYTES:
            raise P2PError(f"{protocol} request of {len(payload)} bytes exceeds the frame cap")
        try:
            with trio.fail_after(timeout):
                stream, reused = await self._checkout(peer_id, addr, multiaddr, protocol)
                try:
                    return await self._exchange(stream, peer_id, protocol, payload)
                except _STREAM_ERRORS as exc:
                    if not reused:
                        raise _broken(multiaddr, protocol, exc) from exc
                    log.debug("reused stream to %s broke (%r); retrying", multiaddr, exc)
                stream = await self._new_stream(peer_id, addr, multiaddr, protocol)
                try:
                    return await self._exchange(stream, peer_id, protocol, payload)
                except _STREAM_ERRORS as exc:
                    raise _broken(multiaddr, protocol, exc) from exc
        except trio.TooSlowError:
            raise P2PError(
                f"{protocol} request to {multiaddr} timed out after {timeout} s"
            ) from None

    async def _exchange(
        self, stream: INetStream, peer_id: ID, protocol: str, payload: bytes
    ) -> bytes:
        """One request and reply; the stream goes back to the idle pool only after both.

        The reply is read while the request is written: a node that refuses a frame unread
        (over its protocol's cap) answers at once and closes, and that answer is what the
        caller gets, not a write stuck on flow control until the stream is reset.
        """
        sent = False
        send_error: list[Exception] = []

        async def send() -> None:
            nonlocal sent
            try:
                await write_frame(stream, payload)
                sent = True
            except Exception as exc:  # raised below if no reply comes either
                send_error.append(exc)

        reply: bytes | None = None
        read_error: list[Exception] = []
        try:
            async with trio.open_nursery() as nursery:  # raise only outside: no groups
                nursery.start_soon(send)
                try:
                    reply = await read_frame(stream)
                except Exception as exc:
                    read_error.append(exc)
                nursery.cancel_scope.cancel()
            if reply is None:
                raise (send_error or read_error)[0]
        except BaseException:
            await _discard(stream)  # broken or cancelled mid-exchange: its state is unknown
            raise
        if not sent:  # answered before it read all we sent: the stream is done for
            await _discard(stream)
            return reply
        idle = self._idle.setdefault((peer_id, protocol), [])
        if len(idle) < _MAX_IDLE_STREAMS:
            idle.append(stream)
        else:
            await _discard(stream)
        return reply

    async def open_stream(self, multiaddr: str, protocol: str) -> RawStream:
        """A new, unpooled stream (for tests that send malformed bytes)."""
        peer_id, addr = _parse(multiaddr)
        return RawStream(await self._new_stream(peer_id, addr, multiaddr, protocol))

    async def _checkout(
        self, peer_id: ID, addr: Multiaddr, multiaddr: str, protocol: str
    ) -> tuple[INetStream, bool]:
        """An idle stream on a live connection (reused=True), else a new stream."""
        idle = self._idle.get((peer_id, protocol), [])
        while idle:
            stream = idle.pop()
            if not stream.muxed_conn.is_closed:
                return stream, True
            await _discard(stream)
        return await self._new_stream(peer_id, addr, multiaddr, protocol), False

    async def _new_stream(
        self, peer_id: ID, addr: Multiaddr, multiaddr: str, protocol: str
    ) -> INetStream:
        for attempt in (1, 2):
            await self._connect(peer_id, addr, multiaddr)
            try:
                return await self._host.new_stream(peer_id, [TProtocol(protocol)])
            except Exception as exc:
                if _refused_protocol(exc):
                    raise ProtocolNotSupported(
                        f"cannot open a {protocol} stream to {multiaddr}: {_chain(exc)}"
                    ) from exc
                if attempt == 2:
                    raise P2PError(
                        f"cannot open a {protocol} stream to {multiaddr}: {_chain(exc)}"
                    ) from exc
                # The connection died under us (the peer reset it, or restarted): dial anew.
                log.debug("stream to %s failed on its connection (%r); redialling", multiaddr, exc)
                for conn in self._swarm.get_connections(peer_id):
                    with trio.move_on_after(1.0):
                        await conn.close()
        raise AssertionError("unreachable")

    async def _connect(self, peer_id: ID, addr: Multiaddr, multiaddr: str) -> None:
        """Make sure a live connection to `peer_id` exists, dialling `addr` if needed.

        Dials the given address directly: `Swarm.dial_peer` would wait a fixed 250 ms
        (its happy-eyeballs head start) and refuse, for 60 s, a peer that failed once.
        """
        if self._live(peer_id):
            return
        lock = self._dial_locks.setdefault(peer_id, trio.Lock())
        async with lock:
            if self._live(peer_id):
                return
            try:
                await self._swarm.dial_addr(addr, peer_id)
            except Exception as exc:
                raise P2PError(f"cannot dial {multiaddr}: {_chain(exc)}") from exc

    def _live(self, peer_id: ID) -> bool:
        return any(not conn.is_closed for conn in self._swarm.get_connections(peer_id))


def _refuse_taken_port(listen: Multiaddr) -> None:
    """Raise if another socket already listens on this fixed TCP port.

    libp2p listens with SO_REUSEPORT, so a second node on a taken port would start without
    error and the kernel would split incoming connections between the two. A probe socket
    without SO_REUSEPORT cannot bind next to a listener (SO_REUSEADDR lets it past the
    TIME_WAIT leftovers of a node that just stopped).
    """
    names = {p.name for p in listen.protocols()}
    if "tcp" not in names or not ({"ip4", "ip6"} & names):
        return
    port = int(listen.value_for_protocol("tcp"))
    if port == 0:
        return
    ip6 = "ip6" in names
    ip = listen.value_for_protocol("ip6" if ip6 else "ip4")
    with socket.socket(socket.AF_INET6 if ip6 else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ip, port))
        except OSError as exc:
            raise P2PError(f"cannot listen on {listen}: {exc.strerror}") from exc


@functools.lru_cache(maxsize=1024)
def _parse(multiaddr: str) -> tuple[ID, Multiaddr]:
    """Peer ID and transport address of a `/.../p2p/<id>` string (cached: parsing is slow)."""
    try:
        info = info_from_p2p_addr(Multiaddr(multiaddr))
    except Exception as exc:
        raise P2PError(f"{multiaddr!r} is not a multiaddr ending in /p2p/<peer id>: {exc}") from exc
    if not info.addrs:
        raise P2PError(f"{multiaddr!r} has a peer ID but no address to dial")
    return info.peer_id, info.addrs[0]


def _broken(multiaddr: str, protocol: str, exc: BaseException) -> P2PError:
    return P2PError(f"{protocol} request to {multiaddr} failed, the stream broke: {_chain(exc)}")


def _refused_protocol(exc: BaseException | None) -> bool:
    """True when the peer's multistream answer was 'na' for every protocol we offered."""
    while exc is not None:
        if isinstance(exc, MultiselectClientError) and "protocols not supported" in str(exc):
            return True
        exc = exc.__cause__
    return False


def _chain(exc: BaseException | None) -> str:
    """A libp2p exception and its causes: the outer messages are generic, the inner specific."""
    messages = []
    while exc is not None:
        messages.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__
    return " <- ".join(messages)
