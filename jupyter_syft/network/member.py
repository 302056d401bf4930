"""A domain's side of network membership: join, announce, heartbeat, repair.

Run inside the domain node (`domain start --network ADDR`), signed with the node's key:
- on start it joins, sending its signed address record and catalogue (searchable at once);
- when its catalogue changes it gossips a new signed announcement (the fast path, lossy);
- every heartbeat it tells the network which announcement is current; if the network holds an
  older one (gossip lost it, the network was down) the domain sends it directly: the repair
  path that makes the index converge without trusting gossip.
If the network forgets the domain it joins again; if the network is down it keeps trying.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable

import trio

from jupyter_syft.errors import NotAuthorisedError, SyftError, Unreachable
from jupyter_syft.identity import Identity
from jupyter_syft.p2p import P2PHost
from jupyter_syft.p2p.gossip import Gossip
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import MAX_DATASETS, fit_dataset
from jupyter_syft.wire.network_messages import sign_record
from jupyter_syft.wire.rpc import Call, R

log = logging.getLogger(__name__)

HASHTAG = re.compile(r"#([\w.-]{1,32})")
DEBOUNCE_S = 0.2  # changes closer together than this go out as one announcement

Handler = Callable[[str, bytes], Awaitable[bytes]]


def describe_catalogue(datasets: list[m.DatasetInfo]) -> list[nm.DatasetMeta]:
    """What the network learns of each dataset; tags are its kind and #hashtags in its text."""
    metas = []
    for info in datasets[:MAX_DATASETS]:
        tags = [info.kind, *dict.fromkeys(HASHTAG.findall(info.description))]
        meta = nm.DatasetMeta(
            info.name, info.description, info.kind, tags, info.schema, info.rows, info.mock_rows
        )
        metas.append(fit_dataset(meta))
    if len(datasets) > MAX_DATASETS:
        log.warning("announcing the first %d of %d datasets", MAX_DATASETS, len(datasets))
    return metas


class NetworkMembership:
    """Keeps one domain a member of one network; `run` until cancelled."""

    def __init__(
        self,
        network: str,
        identity: Identity,
        name: str,
        catalogue: Callable[[], list[m.DatasetInfo]],
        heartbeat_s: float = 10.0,
    ) -> None:
        self.network = network
        self.network_peer_id = network.rstrip("/").rsplit("/", 1)[-1]
        self.identity = identity
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.status = ""  # "" until the network answers; then member, pending, removed...
        self._catalogue = catalogue
        self._datasets: list[nm.DatasetMeta] | None = None
        self._seq = 0
        self._announcement: nm.SignedRecord | None = None
        self._address: nm.SignedRecord | None = None
        self._changed = trio.Event()
        self._last_problem = ""

    def watch(self, handler: Handler) -> Handler:
        """Wrap the domain's handler so a served call may trigger a new announcement."""

        async def handle(remote: str, frame: bytes) -> bytes:
            try:
                return await handler(remote, frame)
            finally:
                self._changed.set()

        return handle

    async def run(self, host: P2PHost) -> None:
        self._address = sign_record(
            self.identity,
            nm.AddressRecord(self.identity.peer_id, self._next_seq(), time.time(), host.multiaddrs),
        )
        async with Gossip(host) as gossip, trio.open_nursery() as nursery:
            nursery.start_soon(self._gossip_changes, gossip)
            while True:
                await self._beat(host)
                await trio.sleep(self.heartbeat_s)

    def _next_seq(self) -> int:
        """Sequence numbers grow across restarts too: they start from the clock."""
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def _refresh(self) -> bool:
        """Re-read the catalogue; sign a new announcement if it changed (True then)."""
        datasets = describe_catalogue(self._catalogue())
        if datasets == self._datasets and self._announcement is not None:
            return False
        self._datasets = datasets
        record = nm.Announcement(
            self.identity.peer_id, self.name, self._next_seq(), time.time(), datasets
        )
        self._announcement = sign_record(self.identity, record)
        return True

    async def _gossip_changes(self, gossip: Gossip) -> None:
        while True:
            await self._changed.wait()
            await trio.sleep(DEBOUNCE_S)
            self._changed = trio.Event()
            if self._refresh() and self.status == "member" and self._announcement is not None:
                await gossip.publish(nm.ANNOUNCE_TOPIC, nm.encode(self._announcement))

    async def _beat(self, host: P2PHost) -> None:
        """One heartbeat (or join); then a direct announcement if the network lags behind."""
        self._refresh()
        assert self._announcement is not None and self._address is not None
        try:
            if self.status in ("", "unknown"):
                join = nm.Join(self.name, self._address, self._announcement)
                reply = await self._call(host, join)
            else:
                reply = await self._call(host, nm.Heartbeat(self._seq))
            # Compared with the latest sequence number: the catalogue may have changed while
            # the call was on its way, and that change must not wait for the next heartbeat.
            if reply.status in ("member", "pending") and reply.have_seq < self._seq:
                reply = await self._call(host, nm.Announce(self._announcement))
        except Unreachable as exc:
            self._problem(f"network {self.network} unreachable: {exc}")
            return
        except SyftError as exc:
            self._problem(f"network {self.network} refused {self.name}: {exc}")
            if isinstance(exc, NotAuthorisedError):
                self.status = ""  # ask to join again next beat: the policy may have changed
            return
        self._last_problem = ""
        if reply.status != self.status:
            log.info("domain %s on network %s: %s", self.name, self.network, reply.status)
            self.status = reply.status

    def _problem(self, message: str) -> None:
        """Log a problem once, not at every heartbeat while it lasts."""
        if message.split(":")[0] != self._last_problem.split(":")[0]:
            log.warning("%s", message)
        self._last_problem = message

    async def _call(self, host: P2PHost, call: Call[R]) -> R:
        frame = nm.NETWORK.sign_call(self.identity, self.network_peer_id, call)
        raw = await host.request(self.network, nm.NETWORK_PROTOCOL, frame, timeout=10.0)
        return nm.NETWORK.read_reply(call, raw)
