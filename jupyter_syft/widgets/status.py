"""The scientist's request status: the state changes live, the result appears in place."""

from __future__ import annotations

import threading

import ipywidgets as w

from jupyter_syft.client.domain import RemoteRequest
from jupyter_syft.widgets import markup as h
from jupyter_syft.widgets.models import RequestModel
from jupyter_syft.widgets.poller import Poller
from jupyter_syft.words import after_badge

LONG_POLL_S = 10.0  # one long-poll; also how soon `close()` ends the watcher
RETRY_S = 1.0  # between reconnection attempts when the link broke


class RequestStatus(w.VBox):
    """`RequestStatus(request)`: follows a `RemoteRequest` (long-polling the domain in a
    background thread) until it is done, then shows its result; or the owner's reason."""

    def __init__(self, request: RemoteRequest, watch: bool = True) -> None:
        self.model = RequestModel(request)
        self._html = w.HTML()
        self._lock = threading.Lock()
        super().__init__([self._html])
        self.render()
        self._poller = Poller(self._step, f"syft-status-{request.id[:8]}") if watch else None
        if self._poller is not None:
            self._poller.start()

    def _step(self) -> float | None:
        self.model.step(LONG_POLL_S)
        self.render()
        if self.model.finished:
            return None
        return RETRY_S if self.model.problem else 0.0

    def render(self) -> None:
        model = self.model
        info = model.request.info
        status = "done" if model.fetched else model.status
        head = (
            f"{h.badge(h.COLOURS[status], status)} request <code>{h.esc(info.request_id[:8])}"
            f"</code> <b>{h.esc(info.function_name)}</b> on "
            f"{h.esc(', '.join(info.inputs.values()))}: {h.esc(after_badge(model.status))}"
        )
        body = ""
        if model.problem:
            body = f"<div><small>link lost, retrying: {h.esc(model.problem)}</small></div>"
        elif info.note and not model.finished:
            body = f"<div><small>{h.esc(info.note)}</small></div>"
        elif model.fetched:
            value_html, _ = h.render(model.value)
            head = f"{h.badge(h.COLOURS['done'], 'done')} result of <b>"
            head += f"{h.esc(info.function_name)}</b> (request {h.esc(info.request_id[:8])})"
            body = value_html
        elif model.status in ("denied", "withheld"):
            body = f"<div>reason: {h.esc(info.reason or '(no reason given)')}</div>"
        elif model.status == "failed":
            body = f"<pre>{h.esc(model.request.error)}</pre>"
            if model.request.log:
                body += f"<div>log:</div><pre>{h.esc(model.request.log)}</pre>"
        with self._lock:
            self._html.value = h.sanitise(f"<div>{head}</div>{body}")

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        super().close()
