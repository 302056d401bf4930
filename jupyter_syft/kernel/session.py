"""The kernel's side of the peer network: this user's client node and what it is connected to.

One `SyftSession` per kernel. It brings the client node up in the background (so the kernel
answers at once), keeps the domains and the network the user connected to, caches dataset
listings and mocks, and resolves `DOMAIN/DATASET` names to datasets. Every failure it meets is
turned into a `UsageError` whose message tells the scientist what happened and what to do.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from IPython.core.error import UsageError

from jupyter_syft.demo_file import DEMO_ENV, demo_path
from jupyter_syft.errors import Unreachable
from jupyter_syft.kernel.cells import ALL_DOMAINS, Source

if TYPE_CHECKING:
    from jupyter_syft.client.domain import Dataset, DomainClient, RemoteRequest

NODE_START_TIMEOUT_S = 60.0
ASK_TIMEOUT_S = 10.0  # longest wait for each domain when asking every domain at once

T = TypeVar("T")


def reason(exc: Exception) -> str:
    """The innermost cause of a connection error: libp2p wraps it in several layers."""
    causes = [c for c in str(exc).split(" <- ") if not c.startswith("ExceptionGroup")]
    return causes[-1] if causes else str(exc)


@dataclass
class Plan:
    """Where one request goes: a domain and the datasets bound to the cell's NAMEs there."""

    domain: DomainClient
    inputs: dict[str, Dataset]


@dataclass
class Answers(Generic[T]):
    """What every domain answered to one question, and the domains that did not answer."""

    by_domain: dict[str, T] = field(default_factory=dict)
    unanswered: dict[str, str] = field(default_factory=dict)  # domain -> why, in a few words

    def unanswered_line(self) -> str:
        """The domains that did not answer, in one line ("" if every domain did)."""
        missed = "; ".join(f"{name}: {why}" for name, why in sorted(self.unanswered.items()))
        return f"not reached: {missed}" if missed else ""


class SyftSession:
    """Connections and caches of one kernel; methods are called from the kernel's thread,
    `reopen` also from request watchers."""

    def __init__(self) -> None:
        self.domains: dict[str, DomainClient] = {}
        self.network: Any = None  # a NetworkClient, when connected to a network
        self.network_address = ""
        self._reopeners: dict[str, Callable[[], DomainClient]] = {}
        self._listings: dict[str, dict[str, Dataset]] = {}
        self._mocks: dict[tuple[str, str, float], Any] = {}  # (domain, dataset, created_at)
        self._on_network: dict[str, set[str]] = {}  # dataset names by domain, seen on the network
        self._lock = threading.Lock()
        self._node_thread = threading.Thread(target=self._start_node, name="syft-node", daemon=True)
        self._node_error: BaseException | None = None
        self.peer_id = ""

    # ---- this user's node ------------------------------------------------------------------

    def start(self) -> None:
        """Bring the client node up without holding up the kernel (imports take ~1 s)."""
        self._node_thread.start()

    def _start_node(self) -> None:
        try:
            from jupyter_syft.client.connection import shared_peer
            from jupyter_syft.identity import user_identity

            self.peer_id = shared_peer(user_identity()).peer_id
        except Exception as exc:
            self._node_error = exc

    def node(self) -> str:
        """This user's peer ID once the node is up; UsageError if it could not start."""
        self._node_thread.join(NODE_START_TIMEOUT_S)
        if self._node_error is not None:
            raise UsageError(f"the Syft client node did not start: {self._node_error}")
        if not self.peer_id:
            raise UsageError(f"the Syft client node is not up after {NODE_START_TIMEOUT_S} s")
        return self.peer_id

    # ---- connecting ------------------------------------------------------------------------

    def connect(self, address: str) -> Any:
        """Connect to a domain or a network node by multiaddr; returns the client."""
        self.node()
        import jupyter_syft
        from jupyter_syft.client.domain import DomainClient
        from jupyter_syft.errors import SyftError

        try:
            client = jupyter_syft.connect(address)
        except Unreachable as exc:
            raise UsageError(
                f"cannot reach {address}: it is offline or unreachable ({reason(exc)})"
            ) from None
        except SyftError as exc:
            raise UsageError(f"cannot connect to {address}: {exc}") from None
        if isinstance(client, DomainClient):

            def reopen() -> DomainClient:
                again = jupyter_syft.connect(address)
                if not isinstance(again, DomainClient):
                    raise UsageError(f"{address} now serves a network, not a domain")
                return again

            self.add_domain(client, reopen)
        else:
            self.network, self.network_address = client, address
            self.network_domains()
        return client

    def add_domain(self, client: DomainClient, reopen: Callable[[], DomainClient]) -> None:
        with self._lock:
            known = self.domains.get(client.name)
            if known is not None and known.peer_id != client.peer_id:
                raise UsageError(
                    f"already connected to another domain named {client.name!r} "
                    f"({known.peer_id}); restart the kernel to switch"
                )
            self.domains[client.name] = client
            self._reopeners[client.name] = reopen
        self.listing(client.name, fresh=True)

    def connect_demo(self) -> list[Any]:
        """Join the local demo written by `jupyter-syft demo --keep-running`: its network if
        it has one (and it answers), else each of its domains; as the demo's scientist."""
        path = demo_path()
        try:
            demo = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) else exc
            raise UsageError(
                f"no demo at {path.resolve()} ({detail}); start one with "
                f"`jupyter-syft demo --keep-running`, or set ${DEMO_ENV} to its demo.json"
            ) from None
        if demo.get("scientist_home"):
            self.use_identity(path.parent / demo["scientist_home"])
        if demo.get("network"):
            try:
                return [self.connect(demo["network"])]
            except UsageError:
                if not demo.get("domains"):
                    raise
        return [self.connect(address) for address in demo.get("domains", {}).values()]

    def use_identity(self, home: Path) -> None:
        """Act as the identity kept in `home` from now on (the demo's scientist)."""
        from jupyter_syft.client.connection import shared_peer
        from jupyter_syft.identity import HOME_ENV, user_identity

        self.node()
        os.environ[HOME_ENV] = str(home.resolve())
        self.peer_id = shared_peer(user_identity()).peer_id

    # ---- domains and datasets ----------------------------------------------------------------

    def domain(self, name: str) -> DomainClient:
        """A connected domain by name, or one the network knows (then connected)."""
        if name in self.domains:
            return self.domains[name]
        if self.network is not None:
            from jupyter_syft.errors import SyftError

            try:
                client = self.network.domain(name)
            except Unreachable as exc:
                raise UsageError(
                    f"domain {name!r} is offline or unreachable ({reason(exc)})"
                ) from None
            except SyftError as exc:  # e.g. "no domain 'x' on network 'n' (domains: ...)"
                raise UsageError(str(exc)) from None
            network = self.network
            self.add_domain(client, lambda: network.domain(name))
            return client
        known = ", ".join(self.domains) or "none yet"
        raise UsageError(
            f"unknown domain {name!r} (connected: {known}); connect with `%syft connect ADDR`"
        )

    def reopen(self, name: str) -> DomainClient:
        """A new connection to a domain whose link broke (it may have restarted elsewhere)."""
        client = self._reopeners[name]()
        with self._lock:
            self.domains[name] = client
            self._listings.pop(name, None)  # its datasets hold the old connection
        return client

    def listing(self, name: str, fresh: bool = False) -> dict[str, Dataset]:
        """Datasets of a connected domain; kept for completion and mocks, re-read if `fresh`."""
        if fresh or name not in self._listings:
            domain = self.domain(name)
            try:
                found = dict(domain.datasets)
            except Unreachable as exc:
                raise UsageError(
                    f"domain {name!r} is offline or unreachable ({reason(exc)})"
                ) from None
            with self._lock:
                self._listings[name] = found
        return self._listings[name]

    def known_datasets(self) -> dict[str, list[str]]:
        """Dataset names by domain, from what was already read (for completion: no calls)."""
        known = {name: set(found) for name, found in self._on_network.items()}
        for name, found in self._listings.items():
            known.setdefault(name, set()).update(found)
        return {name: sorted(found) for name, found in known.items()}

    def network_domains(self) -> list[Any]:
        """The connected network's domains (DomainSummary), remembered for completion."""
        try:
            domains = list(self.network.domains)
        except Unreachable as exc:
            raise UsageError(f"the network is unreachable ({reason(exc)})") from None
        for domain in domains:
            self._on_network.setdefault(domain.name, set())
        return domains

    def network_search(self, text: str) -> list[Any]:
        """Search the connected network (SearchHit), remembering the hits for completion."""
        try:
            hits = list(self.network.search(text))
        except Unreachable as exc:
            raise UsageError(f"the network is unreachable ({reason(exc)})") from None
        for hit in hits:
            self._on_network.setdefault(hit.domain, set()).add(hit.dataset)
        return hits

    def resolve(
        self, sources: tuple[Source, ...], fresh: bool = True
    ) -> tuple[list[Plan], list[str]]:
        """Plans for the sources, and the domains skipped as offline (only with `*`).

        Named domains must all be one domain: a request runs where its data lives.
        """
        if sources[0].domain == ALL_DOMAINS:
            return self._resolve_everywhere(sources)
        names = sorted({s.domain for s in sources})
        if len(names) > 1:
            raise UsageError(
                f"these datasets live on different domains ({', '.join(names)}), and a request "
                "runs on one domain; use `*/DATASET` to run the cell on every domain holding it"
            )
        listing = self.listing(names[0], fresh=fresh or not self._has_all(names[0], sources))
        return [Plan(self.domains[names[0]], self._bind(names[0], listing, sources))], []

    def _has_all(self, name: str, sources: tuple[Source, ...]) -> bool:
        return all(s.dataset in self._listings.get(name, {}) for s in sources)

    def _resolve_everywhere(self, sources: tuple[Source, ...]) -> tuple[list[Plan], list[str]]:
        candidates = set(self.domains)
        if self.network is not None:
            for source in sources:
                hits = self.network_search(source.dataset)
                candidates.update(h.domain for h in hits if h.dataset == source.dataset)
        plans, offline = [], []
        for name in sorted(candidates):
            try:
                listing = self.listing(name, fresh=True)
            except UsageError:
                offline.append(name)
                continue
            if all(s.dataset in listing for s in sources):
                plans.append(Plan(self.domains[name], self._bind(name, listing, sources)))
        if not plans:
            wanted = ", ".join(s.dataset for s in sources)
            skipped = f" (offline: {', '.join(offline)})" if offline else ""
            raise UsageError(f"no connected domain holds {wanted}{skipped}")
        return plans, offline

    @staticmethod
    def _bind(name: str, listing: dict[str, Dataset], sources: tuple[Source, ...]) -> dict:
        inputs = {}
        for source in sources:
            if source.dataset not in listing:
                known = ", ".join(sorted(listing)) or "none"
                raise UsageError(
                    f"unknown dataset {source.dataset!r} on domain {name!r} (datasets: {known})"
                )
            inputs[source.name] = listing[source.dataset]
        return inputs

    # ---- every domain at once ---------------------------------------------------------------

    def ask_every_domain(self, question: Callable[[DomainClient], T]) -> Answers[T]:
        """`question` put to every domain you are a user of, connected or on the network (those
        dialled first), side by side, each within ASK_TIMEOUT_S: one slow or offline domain
        delays the answer by that at most and is named, the others still answer."""
        answers: Answers[T] = Answers(unanswered=self._reach_network_domains())
        with self._lock:  # a dial that ran late may still be adding its domain
            asked = {
                n: d for n, d in self.domains.items() if d.role and n not in answers.unanswered
            }
        for name, outcome in _side_by_side(asked, question).items():
            if isinstance(outcome, BaseException):
                answers.unanswered[name] = _why(outcome)
            else:
                answers.by_domain[name] = outcome
        return answers

    def _reach_network_domains(self) -> dict[str, str]:
        """Connect to each domain the network lists that is not connected yet; the ones that
        could not be reached, with why."""
        if self.network is None:
            return {}
        try:
            listed = {d.name: d for d in self.network_domains() if d.name not in self.domains}
        except UsageError:  # the network is unreachable; the connected domains still answer
            return {f"network {self.network.name}": "offline or unreachable"}
        network = self.network

        def dial(summary: Any) -> None:
            client = network.domain(summary.peer_id, timeout=ASK_TIMEOUT_S)
            self.add_domain(client, lambda: network.domain(summary.peer_id))

        outcomes = _side_by_side(listed, dial)
        return {name: _why(o) for name, o in outcomes.items() if isinstance(o, BaseException)}

    def find_request(self, prefix: str) -> tuple[str, RemoteRequest]:
        """Your request whose ID starts with `prefix` (or is it), on any domain you can
        reach, and its domain's name."""
        answers = self.ask_every_domain(lambda domain: domain.requests())
        found = [
            (name, r)
            for name, requests in sorted(answers.by_domain.items())
            for r in requests
            if r.id.startswith(prefix)
        ]
        if len(found) == 1:
            return found[0]
        if found:
            raise UsageError(f"{len(found)} requests start with {prefix!r}: give more of the ID")
        missed = answers.unanswered_line()
        raise UsageError(
            f"no request {prefix!r} of yours on the domains you can reach"
            + (f" ({missed})" if missed else "")
        )

    def mock(self, domain: str, dataset: Dataset) -> Any:
        """A dataset's mock, fetched once per kernel. Cells cannot change the kept copy:
        DataFrames copy on write and numpy mocks are read-only; tensors are cloned."""
        key = (domain, dataset.name, dataset.info.created_at)
        if key not in self._mocks:
            try:
                self._mocks[key] = dataset.mock
            except Unreachable as exc:
                raise UsageError(
                    f"domain {domain!r} is offline or unreachable ({reason(exc)})"
                ) from None
        value = self._mocks[key]
        torch = sys.modules.get("torch")
        return value.clone() if torch and isinstance(value, torch.Tensor) else value


def _side_by_side(
    domains: dict[str, Any], work: Callable[[Any], T]
) -> dict[str, T | BaseException]:
    """`work` on each value of `domains` in its own thread, each given ASK_TIMEOUT_S: what it
    returned or raised, by name (a TimeoutError for one still running then, left to finish)."""
    if not domains:
        return {}
    pool = ThreadPoolExecutor(len(domains), thread_name_prefix="syft-ask")
    futures: dict[str, Future[T]] = {name: pool.submit(work, d) for name, d in domains.items()}
    wait(futures.values(), timeout=ASK_TIMEOUT_S)
    pool.shutdown(wait=False)
    outcomes: dict[str, T | BaseException] = {}
    for name, future in futures.items():
        if not future.done():
            outcomes[name] = TimeoutError(f"no answer within {ASK_TIMEOUT_S:g} s")
        elif future.exception() is not None:
            outcomes[name] = future.exception()  # type: ignore[assignment]
        else:
            outcomes[name] = future.result()
    return outcomes


def _why(exc: BaseException) -> str:
    """A few words on why a domain did not answer; anything but a refusal, a broken link or
    a timeout is a bug and raised."""
    from jupyter_syft.errors import SyftError

    if isinstance(exc, Unreachable):
        return f"offline or unreachable ({reason(exc)})"
    if isinstance(exc, SyftError | UsageError | TimeoutError):
        return str(exc)
    raise exc
