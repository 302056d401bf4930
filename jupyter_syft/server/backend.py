"""The Jupyter server's client node: what the Syft sidebar shows, as plain data.

It acts as the identities it is given (the user's by default; the demo adds its owners'), so
"My requests" are that person's and "Approvals" lists only domains where one of them is an
admin. Every method blocks on libp2p calls (through the bridge thread), so the handlers run
them off the event loop. Replies hold data only, never markup: the browser escapes it all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.errors import (
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
    SyftError,
    Unreachable,
)
from jupyter_syft.identity import USER_KEY_FILE, Identity, load_or_create
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.resources import asks, describe_placement

HISTORY = 50  # decided requests kept in the Approvals history
PREVIEW_ROWS = 10
SEARCH_LIMIT = 200  # the network's own cap per search


@dataclass(frozen=True)
class Sources:
    """Where to look: a network node and/or domains by multiaddr, as whom."""

    network: str
    domains: list[str]
    homes: list[Path]


class Backend:
    """Clients per (identity, domain), made on first use and dropped when a call fails,
    so a domain that went away shows as offline and is picked up again when it is back."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources
        self.identities: list[Identity] = [
            load_or_create(home / USER_KEY_FILE) for home in sources.homes
        ]
        self._lock = threading.Lock()
        self._networks: dict[str, NetworkClient] = {}  # by identity peer id
        self._clients: dict[tuple[str, str], DomainClient] = {}  # (peer id, domain name)
        self._addresses: dict[str, str] = {}  # direct domain name -> multiaddr
        self._admin_of: set[str] = set()  # domains seen with an admin identity: kept offline

    # ---- connections -------------------------------------------------------------------------

    def _net(self, identity: Identity | None = None) -> NetworkClient | None:
        """The network as `identity` (it dials domains as that identity); None if unset."""
        if not self.sources.network:
            return None
        identity = identity or self.identities[0]
        with self._lock:
            net = self._networks.get(identity.peer_id)
        if net is None:
            try:
                net = NetworkClient(NetworkConnection(self.sources.network, identity))
            except Unreachable as exc:
                raise Unreachable(f"the network is unreachable: {exc}") from exc
            with self._lock:
                self._networks[identity.peer_id] = net
        return net

    def _client(self, identity: Identity, domain: str) -> DomainClient:
        key = (identity.peer_id, domain)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        try:
            if domain in self._addresses:
                client = DomainClient(NodeConnection(self._addresses[domain], identity))
            else:
                net = self._net(identity)
                if net is None:
                    raise NotFoundError(f"no domain {domain!r} is configured")
                client = net.domain(domain)
        except Unreachable as exc:
            raise Unreachable(f"domain {domain!r} is offline or unreachable: {exc}") from exc
        if not client.role:
            return client  # not kept: Hello again next time, in case the owner adds you
        if client.role == "admin":
            # The admin's view: every request and the decision calls.
            client = AdminClient(client._connection)
        with self._lock:
            self._clients[key] = client
        return client

    def _forget(self, domain: str) -> None:
        with self._lock:
            for key in [k for k in self._clients if k[1] == domain]:
                del self._clients[key]

    def _call(self, identity: Identity, domain: str, what: Callable[[Any], Any]) -> Any:
        """`what(client)` on this identity's client of `domain`; offline if the link fails."""
        client = self._client(identity, domain)
        try:
            return what(client)
        except Unreachable as exc:
            self._forget(domain)
            raise Unreachable(f"domain {domain!r} is offline or unreachable: {exc}") from exc

    def _direct_domains(self) -> list[str]:
        """Names of the domains configured by address (a Hello each, once they answer)."""
        for address in self.sources.domains:
            if address in self._addresses.values():
                continue
            try:
                client = DomainClient(NodeConnection(address, self.identities[0]))
            except Unreachable:
                continue
            self._addresses[client.name] = address
        return sorted(self._addresses)

    # ---- what the sidebar asks -----------------------------------------------------------------

    def _listing(self) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
        """The network (None if none is configured) and the domains known by it or by
        address, each once, by name."""
        network: dict[str, Any] | None = None
        domains: dict[str, dict[str, Any]] = {}
        if self.sources.network:
            network = {"address": self.sources.network, "name": "", "online": False, "error": ""}
            try:
                net = self._net()
                assert net is not None
                members = net.domains
                network.update(name=net.name, peer_id=net.peer_id, online=True)
                for d in members:
                    domains[d.name] = {
                        "name": d.name,
                        "peer_id": d.peer_id,
                        "online": d.online,
                        "datasets": d.dataset_count,
                        "last_seen": d.last_seen,
                    }
            except Unreachable as exc:
                with self._lock:
                    self._networks.clear()
                network["error"] = str(exc)
        for name in self._direct_domains():
            domains.setdefault(name, {"name": name, "peer_id": "", "datasets": None})
            domains[name]["online"] = True
        return network, domains

    def state(self) -> dict[str, Any]:
        """Network, domains (with your role on each), your requests and requests to review."""
        network, domains = self._listing()
        mine: dict[tuple[str, str], dict[str, Any]] = {}
        pending: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []  # results awaiting the owner's release
        history: list[dict[str, Any]] = []
        me = {i.peer_id for i in self.identities}
        for name, domain in sorted(domains.items()):
            domain.update(roles=[], error="", sandbox="")  # "on: ...", "off", "" if unknown
            for identity in self.identities if domain["online"] else []:
                try:
                    client = self._client(identity, name)
                    domain["sandbox"] = self._call(identity, name, DomainClient.hello).sandbox
                    if not client.role:
                        continue  # a stranger here: nothing to list (and no refusals logged)
                    role, found, users = self._call(identity, name, _requests_of)
                except Unreachable as exc:
                    domain.update(online=False, error=str(exc))
                    break
                domain["roles"].append(role)
                if role == "admin":
                    self._admin_of.add(name)
                for info in found:
                    if info.requester in me:
                        mine[name, info.request_id] = request_json(name, info)
                    if role == "admin":
                        item = review_json(name, info, users)
                        waiting = {"pending": pending, "awaiting_release": held}
                        waiting.get(info.status, history).append(item)
        administered = [
            {
                "name": n,
                "online": n in domains and domains[n]["online"],
                "sandbox": domains[n]["sandbox"] if n in domains else "",
            }
            for n in sorted(self._admin_of)
        ]
        return {
            "me": sorted(me),
            "network": network,
            "domains": list(domains.values()),
            "requests": grouped(list(mine.values())),
            "approvals": {
                "domains": administered,
                "pending": sorted(pending, key=lambda r: r["submitted_at"]),
                "held": sorted(held, key=lambda r: r["submitted_at"]),
                "history": grouped(history)[:HISTORY],
            },
        }

    def pending(self) -> dict[str, Any]:
        """The requests waiting for a decision on every domain one of these identities
        administers: what the Lab's notifications and the sidebar icon's count show, with
        the sidebar open or not."""
        _, domains = self._listing()
        pending: list[dict[str, Any]] = []
        for name, domain in sorted(domains.items()):
            for identity in self.identities if domain["online"] else []:
                try:
                    if isinstance(self._client(identity, name), AdminClient):
                        self._admin_of.add(name)
                        pending += self._call(identity, name, _pending_of)
                        break
                except Unreachable:
                    break
        return {"pending": sorted(pending, key=lambda r: r["submitted_at"])}

    def search(self, text: str) -> dict[str, Any]:
        """Datasets matching `text` on the network, and on domains configured directly."""
        hits: list[dict[str, Any]] = []
        unreachable: list[str] = []
        net = self._net()
        if net is not None:
            try:
                found = net.search(text, limit=SEARCH_LIMIT)
            except Unreachable as exc:
                raise Unreachable(f"the network is unreachable: {exc}") from exc
            unreachable = list(found.unreachable)
            hits = [
                hit_json(h.domain, h.dataset, h.description, h.rows, h.schema, h.online)
                for h in found
            ]
        needle = text.lower()
        listed = {(hit["domain"], hit["dataset"]) for hit in hits}
        for name in self._direct_domains():
            try:
                listing = self._call(self.identities[0], name, lambda c: list(c.datasets.values()))
            except (Unreachable, NotAuthorisedError):
                unreachable.append(name)
                continue
            hits.extend(
                hit_json(name, d.name, d.description, d.rows, d.schema, True)
                for d in listing
                if needle in f"{name} {d.name} {d.description}".lower()
                and (name, d.name) not in listed  # the network found it already
            )
        return {"hits": hits, "unreachable": unreachable}

    def preview(self, domain: str, dataset: str) -> dict[str, Any]:
        """A dataset's schema and the first rows of its mock (never private data)."""

        def read(client: DomainClient) -> dict[str, Any]:
            found = client.datasets
            if dataset not in found:
                raise NotFoundError(f"no dataset {dataset!r} on domain {domain!r}")
            d = found[dataset]
            columns, rows = table_preview(d.mock)
            return {
                "domain": domain,
                "dataset": d.name,
                "description": d.description,
                "kind": d.info.kind,
                "rows": d.rows,
                "mock_rows": d.info.mock_rows,
                "schema": d.schema,
                "columns": columns,
                "preview": rows,
            }

        refusal: SyftError = NotFoundError(f"no dataset {dataset!r} on domain {domain!r}")
        for identity in self.identities:  # a stranger sees public datasets only: try each
            try:
                return self._call(identity, domain, read)
            except (NotAuthorisedError, NotFoundError) as exc:
                refusal = exc
        raise refusal

    def decide(self, domain: str, request_id: str, approve: bool, reason: str) -> dict[str, Any]:
        """Approve or deny as an admin of `domain`; the domain checks the role again."""
        if not approve and not reason.strip():
            raise InvalidError("a denial needs a reason: the scientist sees it")
        for identity in self.identities:
            client = self._client(identity, domain)
            if isinstance(client, AdminClient):

                def act(admin: AdminClient) -> m.RequestInfo:
                    review = admin.get_request(request_id)
                    review.approve() if approve else review.deny(reason)  # type: ignore[attr-defined]
                    return review.info

                return request_json(domain, self._call(identity, domain, act))
        raise NotAuthorisedError(f"you are not an admin of domain {domain!r}")

    def release_error(self, domain: str, request_id: str) -> dict[str, Any]:
        """Give the scientist a failed job's full error and log (the domain audits it)."""
        info = self._as_admin(domain, request_id, lambda r: r.release_error() or r.info)
        return request_json(domain, info)

    def decide_result(
        self, domain: str, request_id: str, release: bool, reason: str
    ) -> dict[str, Any]:
        """Release a result awaiting release to its requester, or withhold it (a reason)."""
        if not release and not reason.strip():
            raise InvalidError("withholding a result needs a reason: the scientist sees it")
        if release:
            info = self._as_admin(domain, request_id, lambda r: r.release_result() or r.info)
        else:
            info = self._as_admin(domain, request_id, lambda r: r.withhold_result(reason) or r.info)
        return request_json(domain, info)

    def result_preview(self, domain: str, request_id: str) -> dict[str, Any]:
        """A result awaiting release, as text (and its first rows for a table), for the
        owner's eyes: the domain re-seals it to the owner's key, opened here."""
        from jupyter_syft.safe_html import render

        value = self._as_admin(domain, request_id, lambda r: r.result_preview())
        columns, rows = table_preview(value) if _is_frame(value) else ([], [])
        return {
            "domain": domain,
            "id": request_id,
            "text": render(value)[1],
            "columns": columns,
            "rows": rows,
        }

    def _as_admin(self, domain: str, request_id: str, act: Callable[[Any], Any]) -> Any:
        """`act(review)` on the request as seen by an admin identity of `domain`."""
        for identity in self.identities:
            client = self._client(identity, domain)
            if isinstance(client, AdminClient):
                return self._call(
                    identity, domain, lambda admin: act(admin.get_request(request_id))
                )
        raise NotAuthorisedError(f"you are not an admin of domain {domain!r}")


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and type(value).__module__.startswith("pandas")


def _pending_of(admin: AdminClient) -> list[dict[str, Any]]:
    """An administered domain's pending requests, with their requesters' names (asked for only
    when something is pending: this runs every few seconds for every open Lab)."""
    waiting = admin.requests(status="pending")
    users = {u.peer_id: u.name for u in admin.users()} if waiting else {}
    return [review_json(admin.name, r.info, users) for r in waiting]


def _requests_of(client: DomainClient) -> tuple[str, list[m.RequestInfo], dict[str, str]]:
    """This identity's role, the requests it may see, and (for an admin) user names."""
    found = [r.info for r in client.requests()]
    users = {u.peer_id: u.name for u in client.users()} if isinstance(client, AdminClient) else {}
    return client.role, found, users


def request_json(domain: str, info: m.RequestInfo) -> dict[str, Any]:
    error = (info.error_full if info.released else info.error).strip().splitlines()
    return {
        "domain": domain,
        "id": info.request_id,
        "function": info.function_name,
        "datasets": sorted(set(info.inputs.values())),
        "policy": info.policy,
        "epsilon": getattr(info, "epsilon", None),  # a DP request's cost, once DP exists
        "status": info.status,
        "reason": info.reason,
        "error": error[-1] if error else "",
        "submitted_at": info.submitted_at,
        "decided_at": info.decided_at,
        "finished_at": info.finished_at,
        "requirements": list(info.requirements),
        # What the job asks for, and (once it ran) where it ran: in words and as numbers.
        "resources": asks(info.resources),
        "ran": describe_placement(info.placement) if info.placement else "",
        "placement": msgspec.to_builtins(info.placement) if info.placement else None,
        # A federated plan: what its approval lets every round do; a round: (plan id, round).
        "plan": plan_terms(info.plan) if info.plan else None,
        "plan_round": list(info.plan_round) if info.plan_round else None,
        "rounds": [],  # a plan's rounds, filled in by `grouped`
    }


def plan_terms(plan: m.FederatedPlan) -> list[list[str]]:
    """A federated plan as [term, what it allows] lines for the owner's approval card: the
    headless review's line (`describe_plan`) spelt out, and what leaves the domain."""
    per_round = f"{plan.epsilon / plan.rounds:g} per round"
    budget = (
        f"epsilon {plan.epsilon:g}, delta {plan.delta:g} in all ({per_round}), DP-SGD"
        if plan.epsilon
        else "none: no differential privacy"
    )
    leaves = (
        "masked: only their secure sum with the other domains' weights is revealed"
        if plan.secure_aggregation
        else "sealed to the scientist, who sees this domain's update"
    )
    aggregation = (
        "secure aggregation with the other domains"
        if plan.secure_aggregation
        else "none: the scientist averages the updates"
    )
    return [
        ["rounds", f"{plan.rounds} rounds x {plan.local_epochs} local epochs"],
        ["columns", f"{', '.join(plan.features)} -> {plan.label} ({plan.loss} loss)"],
        [
            "optimizer",
            f"{plan.optimizer}, learning rate {plan.learning_rate:g}, batch {plan.batch_size}",
        ],
        ["aggregation", aggregation],
        ["DP budget", budget],
        [
            "weights leave the domain",
            f"each round, the weights trained on your rows leave this domain, {leaves}",
        ],
    ]


def grouped(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each federated round under its plan (`rounds`, in order) instead of one entry per
    round; the entries newest first, a plan by its latest round."""
    plans = {e["id"]: e for e in entries if e["plan"] is not None}
    top: list[dict[str, Any]] = []
    for entry in entries:
        plan = plans.get(entry["plan_round"][0]) if entry["plan_round"] else None
        if plan is None:
            top.append(entry)
            continue
        round_of = {k: entry[k] for k in ("id", "status", "error", "submitted_at", "finished_at")}
        plan["rounds"].append({**round_of, "round": entry["plan_round"][1] + 1})
    for plan in plans.values():
        plan["rounds"].sort(key=lambda r: r["round"])
    return sorted(top, key=_latest, reverse=True)


def _latest(entry: dict[str, Any]) -> float:
    times = [entry["decided_at"] or entry["submitted_at"]]
    times += [r["finished_at"] or r["submitted_at"] for r in entry["rounds"]]
    return max(times)


def review_json(domain: str, info: m.RequestInfo, users: dict[str, str]) -> dict[str, Any]:
    return {
        **request_json(domain, info),
        "requester": info.requester,
        "requester_name": users.get(info.requester, ""),
        "code": info.code,
        # What the job said besides its result, opened by the domain for its owner: the
        # scientist's view of an error, the full one, the log, and whether they are released.
        "scientist_error": info.error,
        "error_full": info.error_full,
        "log": info.log,
        "released": info.released,
    }


def hit_json(
    domain: str, dataset: str, description: str, rows: int, schema: dict[str, str], online: bool
) -> dict[str, Any]:
    return {
        "domain": domain,
        "dataset": dataset,
        "description": description,
        "rows": rows,
        "schema": schema,
        "online": online,
    }


def table_preview(mock: Any) -> tuple[list[str], list[list[str]]]:
    """Column names and the first rows of a mock as texts (tables; tensors by row)."""
    import pandas as pd

    if isinstance(mock, pd.DataFrame):
        head = mock.head(PREVIEW_ROWS)
        return [str(c) for c in head.columns], [
            [str(v) for v in row] for row in head.itertuples(index=False)
        ]
    rows = [[str(row.tolist() if hasattr(row, "tolist") else row)] for row in mock[:PREVIEW_ROWS]]
    return ["value"], rows
