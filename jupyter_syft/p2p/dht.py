"""A Kademlia DHT server sharing a `P2PHost`'s libp2p host, for signed records in our namespaces.

The node serves the standard Kademlia protocol (`/ipfs/kad/1.0.0`: FIND_NODE, GET_VALUE,
PUT_VALUE) to any peer, and only namespaces with a validator are accepted (strict
validation): nothing unsigned or foreign is stored or returned under our keys.

Its own stores and lookups go straight to the DHT servers it is told about (peer networks)
instead of py-libp2p's iterative `put_value`/`get_value`: with fewer than five peers in its
routing table, py-libp2p queries *every connected peer* (all members and scientists, none of
them DHT servers), a failed stream per peer per operation, O(members) for every join and
O(members²) at each hourly republish. Measured here: joins slowed from ~15 ms to ~700 ms
after 15 members. Records stored here are therefore not marked for py-libp2p's republishing;
the caller republishes to its peers when they (re)connect.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType

import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.records.record import make_signed_put_record
from libp2p.records.validator import NamespacedValidator, Validator
from libp2p.tools.anyio_service import background_trio_service

from jupyter_syft.p2p.host import P2PHost


class Dht:
    """`async with Dht(host, validators={...}) as dht:` then store, replicate, fetch."""

    def __init__(self, host: P2PHost, validators: dict[str, Validator]) -> None:
        self._host = host.libp2p_host
        self._validator = NamespacedValidator(validators, strict_validation=True)
        self._kad = KadDHT(
            self._host,
            DHTMode.SERVER,
            validator=self._validator,
            validator_changed=True,
            strict_validation=True,
        )
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Dht:
        stack = AsyncExitStack()
        await stack.enter_async_context(background_trio_service(self._kad))
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def add_server(self, peer_id: str) -> bool:
        """Put a connected DHT server (a peer network) in the routing table."""
        return await self._kad.add_peer(ID.from_base58(peer_id), skip_server_mode_check=True)

    def store(self, key: str, value: bytes) -> None:
        """Keep a valid record here, unless the one held is better (newer)."""
        self._validator.validate(key, value)
        held = self.get_local(key)
        if held is not None and self._validator.select(key, [value, held]) != 0:
            return
        record = make_signed_put_record(key.encode(), value, self._host.get_private_key())
        self._kad.value_store.put_record(key.encode(), record)

    def get_local(self, key: str) -> bytes | None:
        record = self._kad.value_store.get(key.encode())  # None when missing or expired
        return None if record is None else record.value

    async def replicate(self, key: str, value: bytes, servers: list[str], timeout: float) -> int:
        """PUT_VALUE at each of `servers` (at most `timeout` s); how many accepted it."""
        stored = 0

        async def store_at(server: str) -> None:
            nonlocal stored
            with trio.move_on_after(timeout):
                if await self._kad.value_store._store_at_peer(
                    ID.from_base58(server), key.encode(), value
                ):
                    stored += 1

        async with trio.open_nursery() as nursery:
            for server in servers:
                nursery.start_soon(store_at, server)
        return stored

    async def fetch(self, key: str, servers: list[str], timeout: float) -> bytes | None:
        """The best valid value held here or by `servers`; None if no one has one."""
        found = [] if (local := self.get_local(key)) is None else [local]

        async def get_from(server: str) -> None:
            with trio.move_on_after(timeout):
                value = await self._kad.value_store._get_from_peer(
                    ID.from_base58(server), key.encode()
                )
                if isinstance(value, bytes):
                    try:
                        self._validator.validate(key, value)
                    except Exception:  # a peer's invalid record is ignored, whatever the error
                        return
                    found.append(value)

        if not found:
            async with trio.open_nursery() as nursery:
                for server in servers:
                    nursery.start_soon(get_from, server)
        if not found:
            return None
        best = found[self._validator.select(key, found)]
        self.store(key, best)
        return best
