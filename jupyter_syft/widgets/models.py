"""What the widgets show, without any widget: state plus the calls that change it.

Views (`views.py`) render these and wire buttons to their methods; pollers refresh them.
Keeping the state here lets tests drive a model and check it without a frontend, and lets
other frontends (the Syft kernel's status line) reuse it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_syft.client.admin import AdminClient, ReviewRequest
from jupyter_syft.client.domain import FINAL_STATES, DomainClient, RemoteRequest
from jupyter_syft.client.network import NetworkClient
from jupyter_syft.errors import (
    ConflictError,
    NotFoundError,
    RequestDenied,
    RequestFailed,
    SyftError,
    Unreachable,
)

SEARCH_LIMIT = 200
PREVIEW_ROWS = 10
MESSAGE_S = 8.0  # how long the outcome of a click is shown: after that it is stale


class ReviewModel:
    """A domain's requests as its owner reviews them: pending first, decided in history."""

    def __init__(self, owner: AdminClient) -> None:
        self.owner = owner
        self.pending: list[ReviewRequest] = []
        self.held: list[ReviewRequest] = []  # results awaiting the owner's release
        self.history: list[ReviewRequest] = []
        self.names: dict[str, str] = {}  # peer id -> the name the owner gave that user
        self.online = True
        self.problem = ""  # why the domain is shown offline
        self._message = ""  # the outcome of the last click
        self._message_at = 0.0
        self._lock = threading.Lock()

    @property
    def message(self) -> str:
        """The outcome of the last click, until it is MESSAGE_S old."""
        return self._message if time.monotonic() - self._message_at < MESSAGE_S else ""

    @message.setter
    def message(self, text: str) -> None:
        self._message, self._message_at = text, time.monotonic()

    def pending_moved(self) -> bool:
        """Whether the pending requests differ from those shown (one decided elsewhere, a
        new one): one small call, so the poller can ask often and refresh at once."""
        try:
            found = {r.id for r in self.owner.requests(status="pending")}
        except Unreachable:
            return self.online  # shown online, but it is not: refresh to say so
        return found != {r.id for r in self.pending}

    def refresh(self) -> None:
        """Read the requests again; a failed call shows the domain offline (kept as is)."""
        try:
            found = self.owner.requests()
            names = {u.peer_id: u.name for u in self.owner.users()}
        except Unreachable as exc:
            self.online, self.problem = False, str(exc)
            return
        found.sort(key=lambda r: r.info.submitted_at)
        with self._lock:
            self.online, self.problem, self.names = True, "", names
            self.pending = [r for r in found if r.info.status == "pending"]
            self.held = [r for r in found if r.info.status == "awaiting_release"]
            waiting = ("pending", "awaiting_release")
            decided = [r for r in found if r.info.status not in waiting]
            decided.sort(key=lambda r: r.info.decided_at or r.info.submitted_at, reverse=True)
            self.history = decided  # type: ignore[assignment]

    def approve(self, request_id: str) -> None:
        self._decide(request_id, approve=True)

    def deny(self, request_id: str, reason: str) -> None:
        if not reason.strip():
            self.message = "Give a reason to deny: the scientist sees it. Nothing changed."
            return
        self._decide(request_id, approve=False, reason=reason)

    def release_error(self, request_id: str) -> None:
        """Give the scientist a failed job's full error and log."""
        self._act(request_id, lambda r: r.release_error(), "error and log released")

    def release_result(self, request_id: str) -> None:
        self._act(request_id, lambda r: r.release_result(), "result released")

    def withhold_result(self, request_id: str, reason: str) -> None:
        if not reason.strip():
            self.message = "Give a reason to withhold: the scientist sees it. Nothing changed."
            return
        self._act(request_id, lambda r: r.withhold_result(reason), "result withheld")

    def preview(self, request_id: str) -> tuple[bool, Any]:
        """(True, the held result) or (False, why it cannot be shown)."""
        try:
            return True, self.owner.get_request(request_id).result_preview()  # type: ignore[attr-defined]
        except SyftError as exc:
            return False, f"cannot show the result: {exc}"

    def _act(self, request_id: str, action: Any, done: str) -> None:
        short = request_id[:8]
        try:
            action(self.owner.get_request(request_id))
            self.message = f"Request {short}: {done}."
        except (ConflictError, NotFoundError) as exc:
            self.message = f"Request {short}: nothing changed ({exc})."
        except Unreachable as exc:
            self.message = f"The domain is unreachable; nothing changed ({exc})."
        self.refresh()

    def _decide(self, request_id: str, approve: bool, reason: str = "") -> None:
        short = request_id[:8]
        try:
            review = self.owner.get_request(request_id)
            review.approve() if approve else review.deny(reason)  # type: ignore[attr-defined]
            self.message = f"Request {short} {review.info.status}."
        except ConflictError as exc:
            self.message = f"Request {short} was already decided; nothing changed ({exc})."
        except NotFoundError as exc:
            self.message = f"Request {short} is not on this domain ({exc})."
        except Unreachable as exc:
            self.message = f"The domain is unreachable; nothing changed ({exc})."
        self.refresh()


@dataclass
class RequestModel:
    """One request as its scientist follows it, until its result (or reason) is here."""

    request: RemoteRequest
    value: Any = None
    fetched: bool = False
    problem: str = ""  # how the link broke, while reconnecting
    history: list[str] = field(default_factory=list)  # statuses seen, in order

    def __post_init__(self) -> None:
        self.history.append(self.request.info.status)

    @property
    def status(self) -> str:
        return self.request.info.status

    @property
    def finished(self) -> bool:
        return self.fetched or self.status in ("denied", "failed", "withheld")

    def step(self, wait_s: float) -> None:
        """Long-poll once (or fetch the result once done); link errors are kept, not raised."""
        try:
            if self.status == "done":
                self.value, self.fetched = self.request.result(), True
            elif self.status not in FINAL_STATES:
                self.request.refresh(wait_s=wait_s)
            self.problem = ""
        except Unreachable as exc:
            self.problem = str(exc)
        except (RequestDenied, RequestFailed):
            pass  # the status says which; shown from the request's info
        if self.history[-1] != self.status:
            self.history.append(self.status)


@dataclass(frozen=True)
class Hit:
    domain: str
    dataset: str
    description: str
    rows: int
    schema: dict[str, str]
    online: bool


@dataclass
class Preview:
    hit: Hit
    kind: str
    mock_rows: int
    mock: Any


class BrowserModel:
    """Search datasets on a network (or one domain) and open one's mock."""

    def __init__(self, source: NetworkClient | DomainClient) -> None:
        self.source = source
        self.hits: list[Hit] = []
        self.preview: Preview | None = None
        self.problem = ""
        self._domains: dict[str, DomainClient] = {}

    def search(self, text: str) -> None:
        try:
            self.hits = self._search(text)
            self.problem = ""
        except SyftError as exc:
            self.hits, self.problem = [], f"search failed: {exc}"

    def _search(self, text: str) -> list[Hit]:
        if isinstance(self.source, NetworkClient):
            return [
                Hit(h.domain, h.dataset, h.description, h.rows, h.schema, h.online)
                for h in self.source.search(text, limit=SEARCH_LIMIT)
            ]
        needle = text.lower()
        return [
            Hit(self.source.name, d.name, d.description, d.rows, d.schema, True)
            for d in self.source.datasets.values()
            if needle in f"{d.name} {d.description}".lower()
        ]

    def open(self, hit: Hit) -> None:
        """Fetch the mock of `hit` (the private data never leaves its domain)."""
        try:
            domain = self._domain(hit.domain)
            dataset = domain.datasets[hit.dataset]
            self.preview = Preview(hit, dataset.info.kind, dataset.info.mock_rows, dataset.mock)
            self.problem = ""
        except (SyftError, KeyError) as exc:
            self.preview, self.problem = None, f"cannot open {hit.domain}/{hit.dataset}: {exc}"

    def _domain(self, name: str) -> DomainClient:
        if isinstance(self.source, DomainClient):
            return self.source
        if name not in self._domains:
            self._domains[name] = self.source.domain(name)
        return self._domains[name]
