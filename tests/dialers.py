"""libp2p dialers offering one security transport each, to show which ones a node accepts."""

from __future__ import annotations

import trio
from libp2p import new_host
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TSecurityOptions
from libp2p.network.config import RetryConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.security.secio.transport import ID as SECIO_PROTOCOL_ID
from libp2p.security.secio.transport import Transport as SecioTransport
from multiaddr import Multiaddr

from jupyter_syft.identity import Identity


def plaintext() -> TSecurityOptions:
    return {PLAINTEXT_PROTOCOL_ID: InsecureTransport(Identity.generate().key_pair)}


def secio() -> TSecurityOptions:
    return {SECIO_PROTOCOL_ID: SecioTransport(Identity.generate().key_pair)}


def noise() -> TSecurityOptions:
    key_pair = Identity.generate().key_pair
    transport = NoiseTransport(key_pair, noise_privkey=new_x25519_key_pair().private_key)
    return {NOISE_PROTOCOL_ID: transport}


async def dial_error(sec_opt: TSecurityOptions, multiaddr: str) -> Exception | None:
    """Dial `multiaddr` from a throwaway libp2p host offering only `sec_opt`; None if it worked."""
    host = new_host(key_pair=Identity.generate().key_pair, sec_opt=sec_opt)
    network = host.get_network()
    assert isinstance(network, Swarm)
    network.retry_config = RetryConfig(max_retries=0)
    info = info_from_p2p_addr(Multiaddr(multiaddr))
    error = None
    async with host.run([]):
        try:
            with trio.fail_after(10):
                await network.dial_addr(info.addrs[0], info.peer_id)
        except Exception as exc:
            error = exc
        await host.close()
    return error


async def assert_only_noise_accepted(multiaddr: str) -> None:
    """Plaintext and secio dialers get 'na' (not supported); a Noise dialer connects."""
    for sec_opt, protocol in ((plaintext(), PLAINTEXT_PROTOCOL_ID), (secio(), SECIO_PROTOCOL_ID)):
        error = await dial_error(sec_opt, multiaddr)
        causes = []
        while error is not None:
            causes.append(str(error))
            error = error.__cause__
        assert f"protocol not supported: {protocol}, response='na'" in " <- ".join(causes)
    assert await dial_error(noise(), multiaddr) is None
