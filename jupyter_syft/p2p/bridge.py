"""Blocking access to a `P2PHost` for code that is not trio (scripts, an asyncio kernel).

py-libp2p runs only under trio, so the host lives in its own `trio.run` on a daemon thread
and other threads hand it work through a trio token: no polling, about a millisecond of
overhead per call.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from types import TracebackType

import trio

from jupyter_syft.identity import Identity
from jupyter_syft.p2p.host import P2PError, P2PHost

log = logging.getLogger(__name__)


class P2PThread:
    """Runs a P2PHost inside `trio.run` in one daemon thread; thread-safe blocking calls."""

    def __init__(self, identity: Identity, listen: str | None = None) -> None:
        self.peer_id: str = identity.peer_id
        self._identity = identity
        self._listen = listen
        self._host: P2PHost | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def multiaddrs(self) -> list[str]:
        """The host's dialable addresses (empty when dial-only or not running)."""
        return self._host.multiaddrs if self._host is not None else []

    def start(self) -> P2PThread:
        """Start the host; returns once it is up (listening, if asked to)."""
        with self._lock:
            if self._thread is not None:
                raise P2PError("P2PThread was already started")
            self._thread = threading.Thread(
                target=self._run, name=f"p2p-{self.peer_id[-8:]}", daemon=True
            )
            self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise P2PError(f"the libp2p host did not start: {self._error}") from self._error
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            if self._ready.is_set():
                log.exception("the libp2p host thread crashed")
            self._error = exc
        finally:
            self._token = self._host = None
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with P2PHost(self._identity, self._listen) as host:
            self._host = host
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()

    def request(
        self, multiaddr: str, protocol: str, payload: bytes, timeout: float = 30.0
    ) -> bytes:
        """`P2PHost.request`, blocking the calling thread; many threads may call at once."""
        token, host = self._token, self._host
        if token is None or host is None:
            raise P2PError("P2PThread is not running (not started, closed, or crashed)")
        try:
            return trio.from_thread.run(
                host.request, multiaddr, protocol, payload, timeout, trio_token=token
            )
        except trio.RunFinishedError:
            raise P2PError("P2PThread was closed while the request was pending") from None

    def close(self) -> None:
        """Stop the host and join its thread. Safe to call more than once."""
        with self._lock:
            thread, token, stop = self._thread, self._token, self._stop
            self._token = None
        if thread is None:
            return
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):  # it already stopped
                trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join()

    def __enter__(self) -> P2PThread:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
