"""Requests in flight: what each `%%request` cell submitted, watched until it ends.

A cell returns as soon as its request is submitted; a thread per request then long-polls the
domain and updates the cell's status line in place (a display with a display_id), so other
cells run meanwhile; one more thread ticks the elapsed time of every unfinished cell (an
update of its display, no new output), and the node's progress reports (a bar) wake the
long-poll as they come. When the link to a domain breaks, the thread keeps reconnecting: the
request lives on the domain and is picked up again, then its result is bound to the cell's
`--out` variable and shown in place of the status line.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from IPython.display import display

from jupyter_syft.errors import Unreachable
from jupyter_syft.kernel import display as show
from jupyter_syft.kernel.cells import CellLine
from jupyter_syft.kernel.dp import as_dp
from jupyter_syft.kernel.session import SyftSession, reason
from jupyter_syft.safe_html import is_a

if TYPE_CHECKING:
    from ipykernel.zmqshell import ZMQInteractiveShell

    from jupyter_syft.client.domain import RemoteRequest

FINAL_STATUSES = ("done", "denied", "failed", "withheld")
POLL_S = 10.0  # longest single long-poll: how soon a watcher notices the kernel stopping
RETRY_S = (0.1, 0.25, 0.5, 1.0, 2.0)  # waits between reconnection attempts
TICK_S = 1.0  # how often an unfinished cell's elapsed time is redrawn


@dataclass
class Target:
    """One domain's part of a submission."""

    domain: str
    datasets: dict[str, str]  # the cell's NAME -> dataset name
    request: RemoteRequest | None  # None when it could not be submitted
    error: str = ""  # why it could not be submitted or followed: nothing more will happen
    problem: str = ""  # how the link broke, while reconnecting
    value: Any = None
    fetched: bool = False
    stopped: bool = False  # the watch gave up at --timeout; the request carries on

    @property
    def state(self) -> str:
        if self.error or self.request is None:
            return "error"
        if self.problem:
            return "lost"
        return self.request.info.status

    @property
    def finished(self) -> bool:
        return (
            self.request is None
            or bool(self.error)
            or self.fetched
            or self.stopped
            or self.request.info.status in ("denied", "failed", "withheld")
        )


@dataclass
class Submission:
    """One `%%request` cell: its targets, its status display and where its result goes."""

    shell: ZMQInteractiveShell
    line: CellLine
    targets: list[Target]
    skipped: list[str] = field(default_factory=list)  # domains offline at submission (`*`)
    display_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None  # when the last target finished: the elapsed time stops there
    done: threading.Event = field(default_factory=threading.Event)
    bound: bool = False
    superseded: bool = False  # a later cell bound the same --out: this one must not overwrite it

    def __post_init__(self) -> None:
        self.parent = self.shell.get_parent()  # the cell's message: updates belong to it
        self._lock = threading.Lock()

    def show(self, update: bool = False) -> None:
        """Publish the current state (in place, when `update`)."""
        with self._lock:
            bundle = show.submission(self)
            display(bundle, raw=True, display_id=self.display_id, update=update)

    def finish_if_done(self) -> None:
        with self._lock:
            if self.done.is_set() or not all(t.finished for t in self.targets):
                return
            fetched = [t for t in self.targets if t.fetched]
            if fetched and not self.superseded:
                value = (
                    {t.domain: t.value for t in fetched}
                    if self.line.every_domain
                    else fetched[0].value
                )
                self.shell.user_ns[self.line.out] = value
                self.bound = True
            self.ended = time.monotonic()
            self.done.set()


class RequestBook:
    """Every submission of this kernel, and the threads watching them."""

    def __init__(self, session: SyftSession) -> None:
        self.session = session
        self.submissions: list[Submission] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def watch(self, submission: Submission) -> None:
        for earlier in self.submissions:
            if earlier.line.out == submission.line.out and not earlier.done.is_set():
                earlier.superseded = True
        self.submissions.append(submission)
        submission.finish_if_done()  # e.g. an auto-approved DP query, answered already
        submission.show()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="syft-tick", daemon=True)
            self._ticker.start()
        for target in submission.targets:
            if not target.finished:
                threading.Thread(
                    target=self._watch,
                    args=(submission, target),
                    name=f"syft-watch-{submission.display_id[:8]}",
                    daemon=True,
                ).start()

    def _watch(self, submission: Submission, target: Target) -> None:
        tokens = submission.shell.set_thread_parent(submission.parent)
        try:
            self._follow(submission, target)
        finally:
            submission.finish_if_done()
            if not self._stop.is_set():
                submission.show(update=True)
                if target.fetched and is_a(target.value, "jupyter_syft.wire.values", "PNGImage"):
                    origin = f"{target.domain}: a figure, {show.provenance(target)}"
                    display(show.image(target.value.data, origin), raw=True)
            submission.shell.reset_thread_parent(tokens)

    def _tick(self) -> None:
        """Redraw every unfinished cell each TICK_S, so its elapsed time moves."""
        while not self._stop.wait(TICK_S):
            for submission in list(self.submissions):
                if submission.done.is_set():
                    continue
                tokens = submission.shell.set_thread_parent(submission.parent)
                try:
                    submission.show(update=True)
                finally:
                    submission.shell.reset_thread_parent(tokens)

    def _follow(self, submission: Submission, target: Target) -> None:
        """Long-poll until the request ends and its result is here, reconnecting as needed."""
        from jupyter_syft.errors import RequestDenied, RequestFailed, SyftError

        timeout = submission.line.timeout
        deadline = None if timeout is None else submission.started + timeout
        attempts = 0
        while not self._stop.is_set():
            request = target.request
            assert request is not None
            try:
                if attempts:  # the link broke: a new connection, and the request afresh
                    domain = self.session.reopen(target.domain)
                    request = target.request = as_dp(domain.get_request(request.id))
                    target.problem, attempts = "", 0
                    submission.show(update=True)
                if request.info.status == "done":
                    target.value = request.result()
                    target.fetched = True
                    return
                if request.info.status in FINAL_STATUSES:
                    return
                left = POLL_S if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    target.stopped = True
                    return
                before = request.info.status, request.info.progress
                request.refresh(wait_s=min(left, POLL_S))
                if (request.info.status, request.info.progress) != before:
                    submission.show(update=True)
            except (RequestDenied, RequestFailed):
                return  # raced with the status: the next render says which
            except Unreachable as exc:
                if reason(exc) != target.problem:
                    target.problem = reason(exc)
                    submission.show(update=True)
                if deadline is not None and time.monotonic() >= deadline:
                    target.stopped = True
                    return
                self._stop.wait(RETRY_S[min(attempts, len(RETRY_S) - 1)])
                attempts += 1
            except SyftError as exc:  # e.g. the domain refuses: waiting cannot help
                target.error, target.problem = str(exc), ""
                return

    def wait(self, timeout: float | None) -> list[Submission]:
        """Block until every submission has ended (or `timeout` passes); re-show them all so
        their final state also reaches clients that listen only to the running cell."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for submission in self.submissions:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            submission.done.wait(left)
        for submission in self.submissions:
            submission.show(update=True)
        return [s for s in self.submissions if not s.done.is_set()]

    def close(self) -> None:
        self._stop.set()
