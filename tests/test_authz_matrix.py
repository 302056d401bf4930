"""The authorisation matrix: every call of every service from every kind of caller.

Each row names one call, how to make it as each caller (real arguments where cheap: a
scientist asks for their own request, "another scientist" for the first one's, which must
look like it does not exist) and the outcome each caller must get. The rows must cover the
protocol exactly, so a new call without a row fails here; and a cell whose caller's role is
not in the handler's `allow` must say "not authorised", so a row cannot contradict the handler
table. Every cell is a real signed call to a live node process; a refused cell must leave the
node's store and files as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import trio
from networks import NetworkProcess, SimulatedDomain, dataset
from nodes import DomainProcess, person
from wire_state import differences, domain_state, network_state

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection, shared_peer
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.domain.core import DomainCore, Limits
from jupyter_syft.domain.router import domain_router
from jupyter_syft.domain.store import Store
from jupyter_syft.errors import ConflictError, NotFoundError
from jupyter_syft.identity import Identity
from jupyter_syft.network.config import NetworkConfig
from jupyter_syft.network.service import NetworkService
from jupyter_syft.network.store import NetworkStore
from jupyter_syft.p2p import P2PHost
from jupyter_syft.p2p.dht import Dht
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.rpc import Call, Error, Protocol, Route, Struct
from jupyter_syft.wire.tickets import TicketIssuer

OK = "ok"  # carried out, or refused for its arguments (invalid, conflict...): not for its caller
NA = "not_authorised"
NF = "not_found"  # what someone else's request looks like: as if it did not exist

DOMAIN_CALLERS = ("stranger", "scientist", "other scientist", "admin", "removed user")
DOMAIN_ROLES = ("", "data_scientist", "data_scientist", "admin", "")
NETWORK_CALLERS = ("stranger", "pending", "member", "removed member", "operator")
NETWORK_ROLES = ("", "pending", "member", "removed", "operator")

CODE = "def f(df):\n    return len(df)\n"
PRIVATE = pd.DataFrame({"age": np.arange(100) % 80 + 18, "bmi": np.linspace(18.0, 40.0, 100)})
MOCK = pd.DataFrame({"age": np.full(10, 40), "bmi": np.full(10, 25.0)})


@dataclass
class Cell:
    """What one caller sends for a row: the request it names is its own, or someone else's."""

    who: str
    request: str  # the request id the call names
    ids: dict[str, str]  # peer ids of the people in the world


@dataclass(frozen=True)
class Row:
    make: Callable[[Cell], Call[Any]]
    outcomes: tuple[str, str, str, str, str]  # one per caller, in the callers' order


PLAN = m.FederatedPlan("x", "f", ["age"], "bmi", rounds=0)  # refused for its contents
TRAINING = m.DPTraining("x", "f", ["age"], "bmi", epsilon=1.0, delta=1e-5)

# stranger, scientist, other scientist, admin, removed user
DOMAIN_ROWS: dict[type[Struct], Row] = {
    m.Hello: Row(lambda c: m.Hello(), (OK, OK, OK, OK, OK)),
    m.ListDatasets: Row(lambda c: m.ListDatasets(), (OK, OK, OK, OK, OK)),
    m.GetMock: Row(lambda c: m.GetMock("patients"), (NA, OK, OK, OK, NA)),
    m.SubmitRequest: Row(
        lambda c: m.SubmitRequest(CODE, "f", {"df": "patients"}), (NA, OK, OK, OK, NA)
    ),
    m.GetRequest: Row(lambda c: m.GetRequest(c.request), (NA, OK, NF, OK, NA)),
    m.ListRequests: Row(lambda c: m.ListRequests(), (NA, OK, OK, OK, NA)),
    m.FetchResult: Row(lambda c: m.FetchResult(c.request), (NA, OK, NF, OK, NA)),
    m.Decide: Row(lambda c: m.Decide(c.request, False, "matrix"), (NA, NA, NA, OK, NA)),
    m.AddUser: Row(
        lambda c: m.AddUser(c.ids["newcomer"], "data_scientist", "erin"), (NA, NA, NA, OK, NA)
    ),
    m.RemoveUser: Row(lambda c: m.RemoveUser(c.ids["leaver"]), (NA, NA, NA, OK, NA)),
    m.ListUsers: Row(lambda c: m.ListUsers(), (NA, NA, NA, OK, NA)),
    m.BeginUpload: Row(lambda c: m.BeginUpload("matrix-upload"), (NA, NA, NA, OK, NA)),
    m.CommitUpload: Row(lambda c: m.CommitUpload("0" * 32), (NA, NA, NA, OK, NA)),
    m.ReadAudit: Row(lambda c: m.ReadAudit(), (NA, NA, NA, OK, NA)),
    m.SubmitDPQuery: Row(
        lambda c: m.SubmitDPQuery("patients", m.DPQuery("count", 0.1)), (NA, OK, OK, OK, NA)
    ),
    m.SubmitDPTraining: Row(
        lambda c: m.SubmitDPTraining("patients", TRAINING), (NA, OK, OK, OK, NA)
    ),
    # Another scientist's budget is the admin's to read: the other scientist asks for the first's.
    m.GetBudget: Row(
        lambda c: m.GetBudget("patients", c.ids["scientist"] if c.who == "other scientist" else ""),
        (NA, OK, NA, OK, NA),
    ),
    m.SetBudget: Row(
        lambda c: m.SetBudget(c.ids["scientist"], "patients", 1.0), (NA, NA, NA, OK, NA)
    ),
    m.GetPolicy: Row(lambda c: m.GetPolicy("patients"), (NA, OK, OK, OK, NA)),
    m.SetPolicy: Row(lambda c: m.SetPolicy("patients"), (NA, NA, NA, OK, NA)),
    # Only a request's requester aggregates its result: not even an admin.
    m.SecAggStep: Row(lambda c: m.SecAggStep(c.request, b"frame"), (NA, OK, NF, NA, NA)),
    m.SubmitFederatedPlan: Row(
        lambda c: m.SubmitFederatedPlan("patients", PLAN), (NA, OK, OK, OK, NA)
    ),
    m.FederatedRound: Row(lambda c: m.FederatedRound(c.request, 0, b""), (NA, OK, NF, OK, NA)),
    m.CreateModel: Row(lambda c: m.CreateModel("matrix-model", b"junk"), (NA, NA, NA, OK, NA)),
    m.ListModels: Row(lambda c: m.ListModels(), (NA, OK, OK, OK, NA)),
    m.BeginContextUpload: Row(lambda c: m.BeginContextUpload("0" * 64, 10), (NA, OK, OK, OK, NA)),
    m.CommitContextUpload: Row(lambda c: m.CommitContextUpload("0" * 32), (NA, OK, OK, OK, NA)),
    m.PredictEncrypted: Row(lambda c: m.PredictEncrypted("no-model", b""), (NA, OK, OK, OK, NA)),
    m.GetModelUsage: Row(lambda c: m.GetModelUsage("no-model"), (NA, NA, NA, OK, NA)),
    m.ReleaseError: Row(lambda c: m.ReleaseError(c.request), (NA, NA, NA, OK, NA)),
    m.PreviewResult: Row(lambda c: m.PreviewResult(c.request), (NA, NA, NA, OK, NA)),
    m.DecideResult: Row(lambda c: m.DecideResult(c.request, False, "matrix"), (NA, NA, NA, OK, NA)),
}


@dataclass
class NetworkCell:
    who: str
    domain: SimulatedDomain  # the caller, as a real libp2p peer
    ids: dict[str, str]


@dataclass(frozen=True)
class NetworkRow:
    make: Callable[[NetworkCell], Call[Any]]
    outcomes: tuple[str, str, str, str, str]


# stranger, pending, member, removed member, operator. Join comes last: a stranger who joins
# is pending from then on.
NETWORK_ROWS: dict[type[Struct], NetworkRow] = {
    nm.Hello: NetworkRow(lambda c: nm.Hello(), (OK, OK, OK, OK, OK)),
    nm.Announce: NetworkRow(
        lambda c: nm.Announce(c.domain.announcement([dataset("sepsis")])), (NA, OK, OK, NA, NA)
    ),
    nm.Heartbeat: NetworkRow(lambda c: nm.Heartbeat(c.domain.seq), (OK, OK, OK, OK, OK)),
    nm.Search: NetworkRow(lambda c: nm.Search("sepsis"), (OK, OK, OK, OK, OK)),
    nm.ListDomains: NetworkRow(lambda c: nm.ListDomains(), (OK, OK, OK, OK, OK)),
    nm.Locate: NetworkRow(lambda c: nm.Locate("member"), (OK, OK, OK, OK, OK)),
    nm.Approve: NetworkRow(lambda c: nm.Approve(c.ids["queued"]), (NA, NA, NA, NA, OK)),
    nm.Remove: NetworkRow(lambda c: nm.Remove(c.ids["victim"]), (NA, NA, NA, NA, OK)),
    nm.ListMembers: NetworkRow(lambda c: nm.ListMembers(), (NA, NA, NA, NA, OK)),
    nm.Join: NetworkRow(
        lambda c: nm.Join(
            c.domain.name, c.domain.address_record(), c.domain.announcement([dataset("sepsis")])
        ),
        (OK, OK, OK, NA, OK),
    ),
}

CELLS = len(DOMAIN_ROWS) * len(DOMAIN_CALLERS) + len(NETWORK_ROWS) * len(NETWORK_CALLERS)
assert CELLS == 32 * 5 + 10 * 5, CELLS  # update with the protocols: printed by the tests


# ---- the tables against the handler tables ----------------------------------------------------


def domain_routes(tmp_path: Path) -> dict[type[Struct], Route]:
    store = Store(tmp_path / "domain")

    async def approved(request_id: str) -> None:
        return None

    core = DomainCore(
        "d", "node", store, TicketIssuer(), "grpc+tls://x", b"", "", Limits(), approved, "on"
    )
    try:
        return domain_router(core).routes
    finally:
        store.close()


async def network_routes(tmp_path: Path) -> dict[type[Struct], Route]:
    """The network node's router over a real store (host and DHT are not used to build it)."""
    store = NetworkStore(tmp_path / "network")
    identity = Identity.generate()
    try:
        async with P2PHost(identity, listen=None) as host, Dht(host, {}) as dht:
            config = NetworkConfig("n", tmp_path / "network")
            service = NetworkService(
                config, identity, "operator", store, host, dht, lambda *a: None
            )
            return service.router.routes
    finally:
        store.close()


def check_table(
    protocol: Protocol,
    routes: dict[type[Struct], Route],
    rows: dict[type[Struct], Any],
    roles: tuple[str, ...],
) -> None:
    assert set(routes) == set(protocol.calls)
    missing = sorted(c.__name__ for c in set(protocol.calls) - set(rows))
    extra = sorted(c.__name__ for c in set(rows) - set(protocol.calls))
    assert not missing and not extra, f"rows missing: {missing}; rows for no call: {extra}"
    for call, row in rows.items():
        for role, outcome in zip(roles, row.outcomes, strict=True):
            if role not in routes[call].allow:
                assert outcome == NA, f"{call.__name__} for role {role!r}: the handler refuses"


@pytest.mark.unit
def test_the_domain_rows_cover_the_protocol_and_agree_with_its_handlers(tmp_path: Path) -> None:
    check_table(m.DOMAIN, domain_routes(tmp_path), DOMAIN_ROWS, DOMAIN_ROLES)


@pytest.mark.unit
def test_the_network_rows_cover_the_protocol_and_agree_with_its_handlers(tmp_path: Path) -> None:
    routes = trio.run(network_routes, tmp_path)
    check_table(nm.NETWORK, routes, NETWORK_ROWS, NETWORK_ROLES)


# ---- the cells against live nodes -------------------------------------------------------------


def outcome_of(protocol: Protocol, call: Call[Any], raw: bytes) -> str:
    reply = protocol.decode_reply(raw)
    if isinstance(reply, Error):
        return reply.code
    assert isinstance(reply, protocol.reply_of[type(call)]), (call, reply)
    return OK


def matches(expected: str, got: str) -> bool:
    """An allowed cell may still be refused for its arguments (a dummy name: not_found)."""
    if expected == OK:
        return got not in (NA, "internal", "bad_message")
    return got == expected


def run_cells(
    name: str,
    protocol: Protocol,
    rows: dict[type[Struct], Any],
    callers: tuple[str, ...],
    send: Callable[[str, type[Struct], Any], tuple[Call[Any], bytes]],
    state: Callable[[], tuple],
) -> None:
    """Every cell in row order; refused cells must change nothing. Prints the matrix."""
    wrong: list[str] = []
    lines = [f"{name}: {len(rows)} calls x {len(callers)} callers = {len(rows) * len(callers)}"]
    lines.append(f"{'':24}" + "".join(f"{c:>17}" for c in callers))
    for call_type, row in rows.items():
        got_row = []
        for who, expected in zip(callers, row.outcomes, strict=True):
            before = state() if expected != OK else None
            call, raw = send(who, call_type, row)
            got = outcome_of(protocol, call, raw)
            got_row.append(got)
            if got == "internal" or not matches(expected, got):
                wrong.append(f"{call_type.__name__} from {who}: expected {expected}, got {got}")
            if before is not None:
                changed = differences(before, state())
                if changed:
                    wrong.append(f"{call_type.__name__} from {who} changed {changed}")
        lines.append(f"{call_type.__name__:24}" + "".join(f"{g:>17}" for g in got_row))
    print("\n".join(lines))
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def domain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A domain with a private table, an admin, two scientists with a request each, a removed
    scientist whose request stays, and users for the add and remove cells."""
    root = tmp_path_factory.mktemp("matrix-domain")
    owner_home, owner = person(root, "owner")
    people = {who: person(root, who)[1] for who in ("alice", "bob", "carol", "dave", "erin")}
    stranger = person(root, "stranger")[1]
    node = DomainProcess(root, "clinic", owner_home, "--job-timeout", "5")
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PRIVATE, mock=MOCK)
        for who in ("alice", "bob", "carol", "dave"):
            admin.add_user(people[who].peer_id, "data_scientist", who)
        requests = {
            who: DomainClient(NodeConnection(node.address, people[who]))
            .submit(CODE, "f", {"df": "patients"})
            .id
            for who in ("alice", "carol")
        }
        admin.remove_user(people["carol"].peer_id)
        yield {
            "node": node,
            "identities": {
                "stranger": stranger,
                "scientist": people["alice"],
                "other scientist": people["bob"],
                "admin": owner,
                "removed user": people["carol"],
            },
            "requests": {
                "stranger": requests["alice"],
                "scientist": requests["alice"],
                "other scientist": requests["alice"],
                "admin": requests["alice"],
                "removed user": requests["carol"],
            },
            "ids": {
                "scientist": people["alice"].peer_id,
                "newcomer": people["erin"].peer_id,
                "leaver": people["dave"].peer_id,
            },
        }
    finally:
        node.kill()


def test_domain_matrix(domain: dict) -> None:
    node: DomainProcess = domain["node"]
    node_peer = node.address.rsplit("/", 1)[1]

    def send(who: str, call_type: type[Struct], row: Row) -> tuple[Call[Any], bytes]:
        identity = domain["identities"][who]
        call = row.make(Cell(who, domain["requests"][who], domain["ids"]))
        assert type(call) is call_type
        frame = m.DOMAIN.sign_call(identity, node_peer, call)
        return call, shared_peer(identity).request(node.address, m.DOMAIN_PROTOCOL, frame)

    run_cells(
        "domain",
        m.DOMAIN,
        DOMAIN_ROWS,
        DOMAIN_CALLERS,
        send,
        lambda: domain_state(node.data_dir),
    )


def test_removed_user_keeps_requests_in_the_audit_but_loses_access(domain: dict) -> None:
    owner = domain["identities"]["admin"]
    admin = AdminClient(NodeConnection(domain["node"].address, owner))
    carol = domain["identities"]["removed user"]
    assert carol.peer_id not in {u.peer_id for u in admin.users()}
    assert admin.get_request(domain["requests"]["removed user"]).info.requester == carol.peer_id
    log = admin.audit_log(limit=1000)
    assert ("remove_user", carol.peer_id) in [(e.action, e.subject) for e in log.entries]
    assert log.chain_ok
    with pytest.raises(ConflictError, match="themselves"):
        admin.remove_user(owner.peer_id)
    with pytest.raises(NotFoundError, match="not a user"):
        admin.remove_user(carol.peer_id)
    second = person(domain["node"].data_dir.parent, "second-admin")[1]
    admin.add_user(second.peer_id, "admin", "second")
    other_admin = AdminClient(NodeConnection(domain["node"].address, second))
    with pytest.raises(ConflictError, match="creator"):
        other_admin.remove_user(owner.peer_id)  # the creator stays: never the last admin gone
    admin.remove_user(second.peer_id)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A manual-policy network: a pending domain, a member, a removed member, its operator,
    and one more of each for the approve and remove cells."""
    root = tmp_path_factory.mktemp("matrix-network")
    operator_home, operator = person(root, "operator")
    node = NetworkProcess(root, "matrix-net", operator_home, "--join-policy", "manual")
    node.start()
    made = {
        who: SimulatedDomain(who.replace(" ", "-"))
        for who in ("stranger", "pending", "member", "removed member", "queued", "victim")
    }
    made["operator"] = SimulatedDomain("operator", operator)
    try:
        address = node.address
        for who in ("pending", "member", "removed member", "queued", "victim"):
            assert made[who].join(address, [dataset("sepsis")]).status == "pending"  # type: ignore[attr-defined]
        for who in ("member", "removed member", "victim"):
            assert made["operator"].call(address, nm.Approve(made[who].peer_id)) == nm.Done()
        assert made["operator"].call(address, nm.Remove(made["removed member"].peer_id)) == (
            nm.Done()
        )
        yield {"node": node, "domains": made}
    finally:
        for domain in made.values():
            domain.close()
        node.kill()


def test_network_matrix(network: dict) -> None:
    node: NetworkProcess = network["node"]
    made: dict[str, SimulatedDomain] = network["domains"]
    ids = {who: domain.peer_id for who, domain in made.items()}

    def send(who: str, call_type: type[Struct], row: NetworkRow) -> tuple[Call[Any], bytes]:
        domain = made[who]
        call = row.make(NetworkCell(who, domain, ids))
        assert type(call) is call_type
        return call, domain.peer.request(
            node.address, nm.NETWORK_PROTOCOL, domain.frame(node.address, call)
        )

    run_cells(
        "network",
        nm.NETWORK,
        NETWORK_ROWS,
        NETWORK_CALLERS,
        send,
        lambda: network_state(node.data_dir),
    )
    print(f"authorisation matrix: {CELLS} cells")
