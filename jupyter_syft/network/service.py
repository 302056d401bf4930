"""The network protocol's handlers: membership, announcements, search, lookup, federation.

Every call is rate-limited by its Noise-authenticated sender before anything else is done,
then opened like a domain call (signed, fresh, addressed here). Records inside a call are
checked against the peer they describe, and a domain may only join and announce for itself.
A refused call changes nothing.

Announcements reach the node two ways: directly (join, announce) and by gossip. Gossip is only
a fast path: the heartbeat reply tells a domain which announcement the node holds, and the
domain sends a newer one directly, so the index converges even when gossip loses messages.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import trio

from jupyter_syft.errors import SyftError
from jupyter_syft.identity import Identity
from jupyter_syft.network.addresses import address_key
from jupyter_syft.network.config import NetworkConfig
from jupyter_syft.network.membership import JoinRefused
from jupyter_syft.network.query import fts_match
from jupyter_syft.network.store import NetworkStore, StaleRecord
from jupyter_syft.p2p import P2PError, P2PHost
from jupyter_syft.p2p.dht import Dht
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import (
    MAX_QUERY,
    MAX_SEARCH_LIMIT,
    MetadataError,
    check_announcement,
    check_name,
    open_address,
)
from jupyter_syft.wire.network_messages import open_record
from jupyter_syft.wire.ratelimit import RateLimiter
from jupyter_syft.wire.rpc import (
    BadMessage,
    Call,
    Caller,
    R,
    Refused,
    ReplayGuard,
    Router,
    handles,
)

log = logging.getLogger(__name__)


OPERATOR = frozenset({"operator"})
ANYONE = frozenset({"", "pending", "member", "removed"}) | OPERATOR


def _peer_of(multiaddr: str) -> str:
    return multiaddr.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class NetworkService:
    """Everything a handler needs; `run_network` owns the host, DHT and store behind it."""

    config: NetworkConfig
    identity: Identity
    operator: str  # peer ID of the identity that created the data dir
    store: NetworkStore
    host: P2PHost
    dht: Dht
    start_soon: Callable[..., None]  # runs a coroutine function in the node's nursery
    guard: ReplayGuard = field(default_factory=ReplayGuard)

    def __post_init__(self) -> None:
        self.peer_networks = {_peer_of(a): a for a in self.config.peers}
        self._calls = RateLimiter(self.config.rate_per_s, self.config.rate_burst)
        self._announces = RateLimiter(self.config.announce_per_s, self.config.announce_burst)
        # Keyed by the peer a gossiped record claims, before its signature is checked: a
        # forger can only use up that peer's gossip allowance, never its direct one above.
        self._gossip = RateLimiter(self.config.announce_per_s, self.config.announce_burst)
        self.router = Router(
            nm.NETWORK,
            [self],
            self.peer_id,
            self.role_of,
            self.guard,
            admit=lambda peer: peer in self.peer_networks or self._calls.allow(peer),
            deny=lambda caller, route: f"{caller.peer_id} is not this network's operator",
        )

    def role_of(self, peer_id: str) -> str:
        """ "operator", a member's status (member, pending, removed), or "" for a stranger."""
        if peer_id == self.operator:
            return "operator"
        member = self.store.member(peer_id)
        return member.status if member else ""

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    def online_since(self) -> float:
        return time.time() - self.config.offline_after_s

    def accept_gossip(self, data: bytes) -> bool:
        """Gossip validator: relay and deliver only well-formed, signed, capped announcements."""
        try:
            signed = nm.decode_signed_record(data)
            claimed = nm.decode_record(signed.body)
            if not isinstance(claimed, nm.Announcement) or not self._gossip.allow(claimed.peer_id):
                return False
            check_announcement(open_record(signed, nm.Announcement))
        except (msgspec.DecodeError, BadMessage, MetadataError):
            return False
        return True

    def apply_gossip(self, data: bytes) -> None:
        """Index a gossiped announcement if it is a member's and newer than the one held."""
        if self.config.drop_gossip and random.random() < self.config.drop_gossip:
            return
        signed = nm.decode_signed_record(data)
        announcement = open_record(signed, nm.Announcement)
        member = self.store.member(announcement.peer_id)
        if member is None or member.status == "removed" or member.name != announcement.name:
            return
        with contextlib.suppress(StaleRecord):  # a replay, or the direct path was faster
            self.store.apply_announcement(
                announcement.peer_id, announcement, nm.encode(signed), time.time()
            )

    # ---- anyone -----------------------------------------------------------------------------

    @handles(nm.Hello, allow=ANYONE)
    async def hello(self, caller: Caller, call: nm.Hello) -> nm.NetworkInfo:
        return nm.NetworkInfo(
            self.config.name,
            self.peer_id,
            self.config.join_policy,
            caller.role or "unknown",
            self.config.peers,
        )

    @handles(nm.Search, allow=ANYONE)
    async def search(self, caller: Caller, call: nm.Search) -> nm.SearchResults:
        if len(call.text) > MAX_QUERY:
            raise Refused("invalid", f"a search is at most {MAX_QUERY} characters")
        limit = max(1, min(call.limit, MAX_SEARCH_LIMIT))
        hits = self.store.search(
            fts_match(call.text), limit, self.online_since(), call.include_offline
        )
        unreachable: list[str] = []
        if call.federated:
            remote = nm.Search(call.text, limit, call.include_offline, federated=False)
            for reply in await self._ask_peers(remote, unreachable):
                hits.extend(reply.hits)
        best: dict[tuple[str, str], nm.Hit] = {}
        for hit in sorted(hits, key=lambda h: h.score, reverse=True):
            best.setdefault((hit.domain_peer_id, hit.dataset), hit)
        return nm.SearchResults(list(best.values())[:limit], unreachable)

    @handles(nm.ListDomains, allow=ANYONE)
    async def list_domains(self, caller: Caller, call: nm.ListDomains) -> nm.DomainList:
        domains = self.store.domains(self.online_since())
        unreachable: list[str] = []
        if call.federated:
            for reply in await self._ask_peers(nm.ListDomains(federated=False), unreachable):
                known = {d.peer_id for d in domains}
                domains.extend(d for d in reply.domains if d.peer_id not in known)
        return nm.DomainList(domains, unreachable)

    @handles(nm.Locate, allow=ANYONE)
    async def locate(self, caller: Caller, call: nm.Locate) -> nm.LocateResult:
        """Members named `call.name` (or with that peer ID), addresses from the DHT.

        A federated lookup asks peer networks for the names they know, then still takes the
        address record from the DHT, which the whole federation shares.
        """
        online = self.online_since()
        found = [
            nm.Located(m.name, m.peer_id, m.last_seen >= online, await self._address(m.peer_id))
            for m in self.store.find(call.name)
        ]
        if not found and call.federated:
            for reply in await self._ask_peers(nm.Locate(call.name, federated=False), []):
                for entry in reply.found:
                    address = await self._address(entry.peer_id) or entry.address
                    found.append(msgspec.structs.replace(entry, address=address))
        return nm.LocateResult(found)

    # ---- domains ----------------------------------------------------------------------------

    @handles(nm.Join, allow=ANYONE)
    async def join(self, caller: Caller, call: nm.Join) -> nm.Membership:
        address = open_address(call.address)
        announcement = open_record(call.announcement, nm.Announcement)
        if address.peer_id != caller.peer_id or announcement.peer_id != caller.peer_id:
            raise Refused("invalid", "a domain joins only with records about itself")
        check_name("domain name", call.name)
        check_announcement(announcement)
        if announcement.name != call.name:
            raise Refused("invalid", "the announcement names another domain")
        current = self.store.member(caller.peer_id)
        try:
            status = self.config.policy.status_on_join(
                caller.peer_id, current.status if current else None
            )
        except JoinRefused as exc:
            raise Refused("not_authorised", str(exc)) from exc
        if status == "member":
            self._check_name_free(call.name, caller.peer_id)
        try:
            have_seq = self.store.save_join(
                caller.peer_id,
                call.name,
                status,
                (address.seq, nm.encode(call.address)),
                (announcement.seq, nm.encode(call.announcement)),
                time.time(),
            )
        except sqlite3.IntegrityError as exc:  # the name was taken meanwhile
            raise Refused("conflict", f"the name {call.name!r} is taken") from exc
        if status == "member":
            self._publish_address(caller.peer_id, nm.encode(call.address))
        log.info("%s joined as %s (%s)", call.name, status, caller.peer_id)
        return nm.Membership(status, have_seq)

    @handles(nm.Announce, allow=ANYONE)
    async def announce(self, caller: Caller, call: nm.Announce) -> nm.Membership:
        if not self._announces.allow(caller.peer_id):
            raise Refused("rate_limited", "too many announcements; slow down")
        announcement = open_record(call.announcement, nm.Announcement)
        if announcement.peer_id != caller.peer_id:
            raise Refused("invalid", "a domain announces only its own datasets")
        check_announcement(announcement)
        member = self.store.member(caller.peer_id)
        if member is None or member.status == "removed":
            raise Refused("not_authorised", f"{caller.peer_id} is not a member of this network")
        if announcement.name != member.name:
            raise Refused("invalid", f"this domain joined as {member.name!r}; join again to rename")
        try:
            self.store.apply_announcement(
                caller.peer_id, announcement, nm.encode(call.announcement), time.time()
            )
        except StaleRecord as exc:
            raise Refused("conflict", f"stale or replayed announcement: {exc}") from exc
        return nm.Membership(member.status, announcement.seq)  # type: ignore[arg-type]

    @handles(nm.Heartbeat, allow=ANYONE)
    async def heartbeat(self, caller: Caller, call: nm.Heartbeat) -> nm.Membership:
        member = self.store.member(caller.peer_id)
        if member is None:
            return nm.Membership("unknown", 0)
        if member.status != "removed":
            self.store.touch(caller.peer_id, time.time())
        return nm.Membership(member.status, member.seq)  # type: ignore[arg-type]

    # ---- the operator -----------------------------------------------------------------------

    @handles(nm.Approve, allow=OPERATOR)
    async def approve(self, caller: Caller, call: nm.Approve) -> nm.Done:
        member = self.store.member(call.peer_id)
        if member is None:
            raise Refused("not_found", f"no join request from {call.peer_id}")
        self._check_name_free(member.name, member.peer_id)
        self.store.set_status(call.peer_id, "member")
        self._publish_address(call.peer_id, member.address)
        return nm.Done()

    @handles(nm.Remove, allow=OPERATOR)
    async def remove(self, caller: Caller, call: nm.Remove) -> nm.Done:
        if self.store.set_status(call.peer_id, "removed") is None:
            raise Refused("not_found", f"{call.peer_id} is not a member")
        return nm.Done()

    @handles(nm.ListMembers, allow=OPERATOR)
    async def list_members(self, caller: Caller, call: nm.ListMembers) -> nm.MemberList:
        return nm.MemberList(self.store.members())

    # ---- helpers ----------------------------------------------------------------------------

    def _check_name_free(self, name: str, peer_id: str) -> None:
        """One name, one domain: a second peer claiming a member's name is an impostor."""
        holder = self.store.name_holder(name)
        if holder is not None and holder != peer_id:
            raise Refused("conflict", f"the name {name!r} belongs to another domain ({holder})")

    def _publish_address(self, peer_id: str, signed: bytes) -> None:
        """Keep a member's address record in the DHT here and at the peer networks."""
        self.dht.store(address_key(peer_id), signed)
        if self.peer_networks:
            self.start_soon(self._replicate, [(address_key(peer_id), signed)])

    async def republish_addresses(self) -> None:
        """Every member's address record into the DHT again (at start, when a peer connects)."""
        records = []
        for signed in self.store.address_records():
            key = address_key(open_address(nm.decode_signed_record(signed)).peer_id)
            self.dht.store(key, signed)
            records.append((key, signed))
        await self._replicate(records)

    async def _replicate(self, records: list[tuple[str, bytes]]) -> None:
        servers = list(self.peer_networks)
        for key, signed in records:
            await self.dht.replicate(key, signed, servers, self.config.peer_timeout_s)

    async def _address(self, peer_id: str) -> nm.SignedRecord | None:
        servers = list(self.peer_networks)
        raw = await self.dht.fetch(address_key(peer_id), servers, self.config.peer_timeout_s)
        return None if raw is None else nm.decode_signed_record(raw)

    async def ask(self, multiaddr: str, call: Call[R], timeout: float) -> R:
        frame = nm.NETWORK.sign_call(self.identity, _peer_of(multiaddr), call)
        raw = await self.host.request(multiaddr, nm.NETWORK_PROTOCOL, frame, timeout=timeout)
        return nm.NETWORK.read_reply(call, raw)

    async def _ask_peers(self, call: Call[R], unreachable: list[str]) -> list[R]:
        """Ask every peer network at once; those that fail or time out go to `unreachable`."""
        replies: list[R] = []

        async def ask_one(multiaddr: str) -> None:
            try:
                replies.append(await self.ask(multiaddr, call, self.config.peer_timeout_s))
            except (P2PError, SyftError) as exc:
                log.info("peer network %s did not answer: %s", multiaddr, exc)
                unreachable.append(multiaddr)

        async with trio.open_nursery() as nursery:
            for multiaddr in self.config.peers:
                nursery.start_soon(ask_one, multiaddr)
        return replies

    async def keep_peers(self) -> None:
        """Dial peer networks that are not connected; on (re)connection share the DHT."""
        while True:
            for multiaddr in self.config.peers:
                if self.host.is_connected(multiaddr):
                    continue
                try:
                    await self.ask(multiaddr, nm.Hello(), self.config.peer_timeout_s)
                    await self.dht.add_server(_peer_of(multiaddr))
                except (P2PError, SyftError) as exc:
                    log.info("peer network %s is unreachable: %s", multiaddr, exc)
                    continue
                self.start_soon(self.republish_addresses)
            await trio.sleep(self.config.peer_check_s)
