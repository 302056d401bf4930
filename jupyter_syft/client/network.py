"""The data scientist's view of a network: its domains, search, and dialling a domain.

    net = syft.connect(NETWORK_MULTIADDR)
    net.domains                  # members: name, peer id, online, dataset count
    net.search("diabetes")       # ranked hits: domain, dataset, description, rows, schema
    net.domain("hospital-a")     # a DomainClient, dialled directly

The network only tells where a domain is (its signed address record, from the DHT): the
client checks that record's signature against the domain's peer ID and dials the domain
itself, so the network node is never on the data path.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from jupyter_syft.client.connection import NodeConnection, peer_id_of, shared_peer
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.errors import NodeError, NotFoundError, Unreachable
from jupyter_syft.identity import Identity, user_identity
from jupyter_syft.p2p import P2PError
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import MetadataError, open_address
from jupyter_syft.wire.rpc import BadMessage, Call, R


class NetworkConnection:
    """Signs network calls with this user's identity; error replies become exceptions.

    Raises `ProtocolNotSupported` (a `P2PError`) when the peer is not a network node.
    """

    def __init__(self, multiaddr: str, identity: Identity | None = None) -> None:
        self.multiaddr = multiaddr
        self.node_peer_id = peer_id_of(multiaddr)
        self.identity = identity or user_identity()
        self._peer = shared_peer(self.identity)
        self.info = self.call(nm.Hello())

    def call(self, call: Call[R], timeout: float = 30.0) -> R:
        frame = nm.NETWORK.sign_call(self.identity, self.node_peer_id, call)
        raw = self._peer.request(self.multiaddr, nm.NETWORK_PROTOCOL, frame, timeout=timeout)
        return nm.NETWORK.read_reply(call, raw)


@dataclass(frozen=True)
class DomainSummary:
    name: str
    peer_id: str
    online: bool
    dataset_count: int
    last_seen: float

    def _repr_html_(self) -> str:
        return _table(_DOMAIN_HEADER, [_domain_row(self)])


@dataclass(frozen=True)
class SearchHit:
    domain: str
    domain_peer_id: str
    dataset: str
    description: str
    rows: int
    schema: dict[str, str]
    online: bool
    kind: str = "table"
    tags: list[str] = field(default_factory=list)
    has_mock: bool = True
    score: float = 0.0

    def _repr_html_(self) -> str:
        return _table(_HIT_HEADER, [_hit_row(self)])


class DomainList(list[DomainSummary]):
    """`net.domains`: a list that shows as a table in a notebook."""

    def _repr_html_(self) -> str:
        return _table(_DOMAIN_HEADER, [_domain_row(d) for d in self])


class SearchResults(list[SearchHit]):
    """`net.search(...)`: hits best first; `unreachable` names peer networks that missed it."""

    unreachable: list[str]

    def _repr_html_(self) -> str:
        if not self:
            return "<i>no matching datasets</i>"
        return _table(_HIT_HEADER, [_hit_row(h) for h in self])


class NetworkClient:
    """A network node as this process's user sees it."""

    def __init__(self, connection: NetworkConnection) -> None:
        self._connection = connection

    @property
    def name(self) -> str:
        return self._connection.info.name

    @property
    def peer_id(self) -> str:
        return self._connection.info.peer_id

    @property
    def status(self) -> str:
        """Your standing here: operator, member, pending, removed or unknown."""
        return self._connection.info.your_status

    @property
    def domains(self) -> DomainList:
        """Every member domain of this network and of the networks it federates with."""
        listing = self._connection.call(nm.ListDomains())
        assert isinstance(listing, nm.DomainList)
        return DomainList(
            DomainSummary(d.name, d.peer_id, d.online, d.dataset_count, d.last_seen)
            for d in listing.domains
        )

    def search(self, text: str, limit: int = 20, include_offline: bool = False) -> SearchResults:
        """Datasets whose name, description, tags, columns or domain match `text`, best first.

        Every word must match (as a prefix, after stemming); "" lists everything. Domains
        that stopped heartbeating are left out unless `include_offline`.
        """
        reply = self._connection.call(nm.Search(text, limit, include_offline))
        assert isinstance(reply, nm.SearchResults)
        results = SearchResults(
            SearchHit(
                domain=h.domain,
                domain_peer_id=h.domain_peer_id,
                dataset=h.dataset,
                description=h.description,
                rows=h.rows,
                schema=dict(h.schema),
                online=h.online,
                kind=h.kind,
                tags=list(h.tags),
                has_mock=h.mock_rows > 0,
                score=h.score,
            )
            for h in reply.hits
        )
        results.unreachable = list(reply.unreachable)
        return results

    def domain(self, name: str, timeout: float = 30.0) -> DomainClient:
        """Dial the domain called `name` (or with that peer ID) directly, as this user; each
        step (asking the network, saying Hello to each address) within `timeout` seconds."""
        reply = self._connection.call(nm.Locate(name), timeout=timeout)
        assert isinstance(reply, nm.LocateResult)
        if not reply.found:
            known = ", ".join(sorted(d.name for d in self.domains)) or "none"
            raise NotFoundError(f"no domain {name!r} on network {self.name!r} (domains: {known})")
        if len({f.peer_id for f in reply.found}) > 1:
            ids = ", ".join(f.peer_id for f in reply.found)
            raise NotFoundError(f"several domains are called {name!r}; use a peer ID: {ids}")
        return DomainClient(self._dial(reply.found[0], timeout))

    def _dial(self, located: nm.Located, timeout: float) -> NodeConnection:
        if located.address is None:
            raise NotFoundError(f"no address for domain {located.name!r} was found in the DHT")
        try:
            record = open_address(located.address)
        except (BadMessage, MetadataError) as exc:
            raise NodeError(f"the address record of {located.name!r} is invalid: {exc}") from exc
        if record.peer_id != located.peer_id:
            raise NodeError(f"the network sent another peer's address for {located.name!r}")
        errors = []
        for address in record.addrs:
            try:
                return NodeConnection(address, self._connection.identity, timeout)
            except P2PError as exc:
                errors.append(f"{address}: {exc}")
        state = "online" if located.online else "offline"
        message = f"cannot reach domain {located.name!r} ({state}): " + "; ".join(errors)
        raise Unreachable(message)

    # ---- the operator -----------------------------------------------------------------------

    def members(self) -> list[nm.MemberInfo]:
        """Every peer that asked to join, with its status (operator only)."""
        return self._connection.call(nm.ListMembers()).members

    def approve(self, peer_id: str) -> None:
        self._connection.call(nm.Approve(peer_id))

    def remove(self, peer_id: str) -> None:
        self._connection.call(nm.Remove(peer_id))

    def __repr__(self) -> str:
        return f"<Network {self.name} {self.peer_id}>"


_DOMAIN_HEADER = ("domain", "peer id", "online", "datasets")
_HIT_HEADER = ("domain", "dataset", "description", "rows", "columns", "online")


def _domain_row(d: DomainSummary) -> tuple[str, ...]:
    return (d.name, d.peer_id, "yes" if d.online else "no", str(d.dataset_count))


def _hit_row(h: SearchHit) -> tuple[str, ...]:
    columns = ", ".join(f"{k}: {v}" for k, v in h.schema.items())
    return (h.domain, h.dataset, h.description, str(h.rows), columns, "yes" if h.online else "no")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"
