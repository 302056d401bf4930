"""Gossipsub sharing a `P2PHost`'s libp2p host: publish to a topic, consume with a validator.

Gossip is lossy by design (py-libp2p drops above ~10 messages/s per peer and topic, and a
subscription queue holds 32), so callers use it as a fast hint and keep their state correct
through direct requests. A topic's validator runs before a message is delivered or relayed:
what it rejects goes no further in the mesh.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from types import TracebackType

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from jupyter_syft.p2p.host import P2PHost


class Gossip:
    """`async with Gossip(host) as gossip:` then `publish` or `messages`."""

    def __init__(self, host: P2PHost, heartbeat_s: int = 1) -> None:
        self._router = GossipSub(
            protocols=[GOSSIPSUB_PROTOCOL_ID],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=heartbeat_s,
        )
        self._pubsub = Pubsub(host.libp2p_host, self._router)
        self._stack: AsyncExitStack | None = None

    async def __aenter__(self) -> Gossip:
        stack = AsyncExitStack()
        await stack.enter_async_context(background_trio_service(self._pubsub))
        await stack.enter_async_context(background_trio_service(self._router))
        await self._pubsub.wait_until_ready()
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

    async def publish(self, topic: str, data: bytes) -> None:
        await self._pubsub.publish(topic, data)

    async def messages(self, topic: str, validate: Callable[[bytes], bool]) -> AsyncIterator[bytes]:
        """Subscribe to `topic`; yield each message's data that `validate` accepted."""

        def validator(forwarder: ID, message: rpc_pb2.Message) -> bool:
            return validate(message.data)

        self._pubsub.set_topic_validator(topic, validator, is_async_validator=False)
        subscription = await self._pubsub.subscribe(topic)
        async for message in subscription:
            yield message.data
