"""A network node's lifecycle: store, libp2p host, DHT server, gossipsub hub, peer networks.

It is a bootstrap peer domains and scientists dial, a Kademlia DHT server holding domains'
signed address records, a gossipsub hub for announcements, and the keeper of the search index.
It never holds private data or mocks: only what domains announce about their datasets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec
import trio

from jupyter_syft.identity import Identity, load_or_create
from jupyter_syft.network.addresses import AddressValidator
from jupyter_syft.network.config import NetworkConfig
from jupyter_syft.network.service import NetworkService
from jupyter_syft.network.store import NetworkStore
from jupyter_syft.p2p import P2PHost
from jupyter_syft.p2p.dht import Dht
from jupyter_syft.p2p.gossip import Gossip
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import MAX_FRAME_BYTES
from jupyter_syft.wire.node_info import remove_node_info, write_node_info
from jupyter_syft.wire.rpc import BadMessage

log = logging.getLogger(__name__)


async def run_network(
    config: NetworkConfig, operator: Identity, ready: Callable[[str], None]
) -> None:
    """Serve until cancelled. `operator` becomes the operator when this creates the data dir."""
    store = NetworkStore(config.data_dir)
    try:
        admin = store.initialise(config.name, operator.peer_id)
        identity = load_or_create(store.paths.node_key)
        async with (
            P2PHost(identity, config.listen, config.max_connections) as host,
            Dht(host, validators={nm.ADDRESS_NAMESPACE: AddressValidator()}) as dht,
            Gossip(host) as gossip,
            trio.open_nursery() as nursery,
        ):
            service = NetworkService(
                config, identity, admin, store, host, dht, start_soon=nursery.start_soon
            )
            host.set_handler(
                nm.NETWORK_PROTOCOL,
                service.router.handle,
                service.router.bad_frame_reply,
                MAX_FRAME_BYTES,
            )
            await service.republish_addresses()
            nursery.start_soon(_consume_gossip, service, gossip)
            nursery.start_soon(service.keep_peers)
            address = host.multiaddrs[0]
            write_node_info(config.data_dir, config.name, address)
            ready(address)
            await trio.sleep_forever()
    finally:
        remove_node_info(config.data_dir)
        store.close()


async def _consume_gossip(service: NetworkService, gossip: Gossip) -> None:
    async for data in gossip.messages(nm.ANNOUNCE_TOPIC, service.accept_gossip):
        try:
            service.apply_gossip(data)
        except (msgspec.DecodeError, BadMessage) as exc:  # the validator let it through
            log.warning("gossiped announcement could not be applied: %s", exc)
