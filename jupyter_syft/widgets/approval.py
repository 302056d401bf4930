"""The owner's approval panel: pending requests with their code, Approve / Deny at once; results
awaiting release with a preview, Release / Withhold; what finished jobs said (full error, log)
with Release error."""

from __future__ import annotations

import threading
import time

import ipywidgets as w

from jupyter_syft.client.admin import AdminClient, ReviewRequest
from jupyter_syft.client.domain import inputs_line
from jupyter_syft.federated.plan import describe_plan
from jupyter_syft.widgets import markup as h
from jupyter_syft.widgets.models import ReviewModel
from jupyter_syft.widgets.poller import Poller
from jupyter_syft.wire.resources import asks, describe_placement

POLL_S = 2.0  # every request re-read
CHECK_S = 0.3  # the pending ones checked, so a decision made elsewhere shows at once
OUTPUTS_SHOWN = 20  # the latest finished jobs whose error or log the panel shows


class RequestCard(w.VBox):
    """One pending request: who, what, which data, the code, and the two decisions."""

    def __init__(self, panel: ApprovalPanel, review: ReviewRequest) -> None:
        self.request_id = review.id
        info = review.info
        name = panel.model.names.get(info.requester, "") or "unnamed user"
        datasets = ", ".join(
            f"{d} as {arg}" + (" (distributed: ray.data)" if arg in info.distributed else "")
            for arg, d in info.inputs.items()
        )
        epsilon = getattr(info, "epsilon", None)  # a DP request's budget, once DP requests exist
        policy = info.policy + (f", epsilon {epsilon:g}" if epsilon is not None else "")
        details = (
            f"<div>{h.badge(h.COLOURS['pending'], 'pending')} <b>{h.esc(info.function_name)}</b>"
            f" &middot; request <code>{h.esc(info.request_id[:8])}</code></div>"
            f"<div>from <b>{h.esc(name)}</b> <code>{h.esc(info.requester)}</code></div>"
            f"<div>reads {h.esc(datasets)} &middot; policy: {h.esc(policy)} &middot; "
            f"submitted {h.esc(h.when(info.submitted_at))}</div>"
            + (f"<div>{h.esc(describe_plan(info.plan))}</div>" if info.plan else "")
            + requirements_markup(info.requirements)
            + f"<div class='jp-Syft-resources'>{h.esc(asks(info.resources))}</div>"
            + h.code(info.code)
        )
        self.approve_button = w.Button(description="Approve", button_style="success")
        self.reason = w.Text(placeholder="Reason (required to deny)")
        self.deny_button = w.Button(description="Deny", button_style="danger")
        self.approve_button.on_click(lambda _: panel.approve(self.request_id))
        self.deny_button.on_click(lambda _: panel.deny(self.request_id, self.reason.value))
        actions = w.HBox([self.approve_button, self.reason, self.deny_button])
        super().__init__([w.HTML(h.sanitise(details)), actions])
        self.add_class("jp-Syft-widget-card")


def _head(panel: ApprovalPanel, review: ReviewRequest) -> str:
    info = review.info
    name = panel.model.names.get(info.requester, "") or "unnamed user"
    return (
        f"<div>{h.badge(h.COLOURS[info.status], info.status)} <b>{h.esc(info.function_name)}</b>"
        f" &middot; request <code>{h.esc(info.request_id[:8])}</code> &middot; from "
        f"<b>{h.esc(name)}</b> on {h.esc(inputs_line(info))}</div>"
    )


class HeldCard(w.VBox):
    """A result awaiting release (release="after_review"): what the code returned, shown to
    the owner only, and Release / Withhold."""

    def __init__(self, panel: ApprovalPanel, review: ReviewRequest) -> None:
        self.request_id = review.id
        shown, value = panel.model.preview(review.id)
        preview = h.render(value)[0] if shown else f"<i>{h.esc(value)}</i>"
        details = (
            _head(panel, review)
            + h.code(review.info.code)
            + "<div><b>Result (only you see it until you release it):</b></div>"
            + preview
        )
        self.release_button = w.Button(description="Release result", button_style="success")
        self.reason = w.Text(placeholder="Reason (required to withhold)")
        self.withhold_button = w.Button(description="Withhold", button_style="danger")
        self.release_button.on_click(lambda _: panel.release_result(self.request_id))
        self.withhold_button.on_click(
            lambda _: panel.withhold_result(self.request_id, self.reason.value)
        )
        actions = w.HBox([self.release_button, self.reason, self.withhold_button])
        super().__init__([w.HTML(h.sanitise(details)), actions])
        self.add_class("jp-Syft-widget-card")


class OutputCard(w.VBox):
    """What a finished job said besides its result: the full error and the log (sealed at
    rest, opened by the node for you), what the scientist sees, and Release error."""

    def __init__(self, panel: ApprovalPanel, review: ReviewRequest) -> None:
        self.request_id = review.id
        info = review.info
        details = _head(panel, review)
        if info.status == "failed":
            seen = "the full text (released)" if info.released else info.error
            details += f"<div>The scientist sees:</div><pre>{h.esc(seen)}</pre>"
            details += f"<div>Full error:</div><pre>{h.esc(info.error_full)}</pre>"
        if info.log:
            released = " (released)" if info.released else " (only you see it)"
            details += f"<div>Log{released}:</div><pre>{h.esc(info.log)}</pre>"
        self.release_button = w.Button(
            description="Released" if info.released else "Release error and log",
            disabled=info.released or info.status != "failed",
        )
        self.release_button.on_click(lambda _: panel.release_error(self.request_id))
        children = [w.HTML(h.sanitise(details))]
        super().__init__(children + ([self.release_button] if info.status == "failed" else []))
        self.add_class("jp-Syft-widget-card")
        self.key = (info.status, info.released)


class ApprovalPanel(w.VBox):
    """Pending requests of a domain for its owner; new ones appear by themselves and ones
    decided elsewhere (the sidebar) go within CHECK_S (a poller checks the pending requests
    that often and re-reads the domain every `poll_s`); decided ones move to the history."""

    def __init__(self, owner: AdminClient, poll_s: float | None = POLL_S) -> None:
        self.model = ReviewModel(owner)
        self.cards: dict[str, RequestCard] = {}
        self._header = w.HTML()
        self._message = w.HTML()
        self._pending = w.VBox()
        self.held_cards: dict[str, HeldCard] = {}
        self.output_cards: dict[str, OutputCard] = {}
        self._held = w.VBox()
        self._outputs = w.VBox()
        self._outputs_box = w.Accordion([self._outputs], titles=("Job errors and logs",))
        self._history = w.HTML()
        self._history_box = w.Accordion([self._history], titles=("History",))
        self._lock = threading.RLock()
        super().__init__(
            [
                self._header,
                self._message,
                self._pending,
                self._held,
                self._outputs_box,
                self._history_box,
            ]
        )
        self._poll_s = poll_s
        self._reread_at = 0.0  # when to re-read every request
        self.refresh()
        self._poller = Poller(self._poll, f"syft-review-{owner.name}").start() if poll_s else None

    def _poll(self) -> float | None:
        assert self._poll_s is not None
        if time.monotonic() >= self._reread_at or self.model.pending_moved():
            self.refresh()
        else:
            self.render()  # a click's outcome goes once it is stale
        return min(CHECK_S, self._poll_s)

    def refresh(self) -> None:
        """Re-read the domain and show what changed."""
        self.model.refresh()
        self._reread_at = time.monotonic() + (self._poll_s or 0.0)
        self.render()

    def approve(self, request_id: str) -> None:
        self.model.approve(request_id)
        self.render()

    def deny(self, request_id: str, reason: str) -> None:
        self.model.deny(request_id, reason)
        self.render()

    def release_error(self, request_id: str) -> None:
        self.model.release_error(request_id)
        self.render()

    def release_result(self, request_id: str) -> None:
        self.model.release_result(request_id)
        self.render()

    def withhold_result(self, request_id: str, reason: str) -> None:
        self.model.withhold_result(request_id, reason)
        self.render()

    def render(self) -> None:
        model = self.model
        with self._lock:
            state = (
                h.badge(h.COLOURS["done"], "online")
                if model.online
                else h.badge(h.COLOURS["denied"], "offline")
                + f" <small>{h.esc(model.problem)} (retrying)</small>"
            )
            self._header.value = h.sanitise(
                f"<b>{h.esc(model.owner.name)}</b> {state} &middot; "
                f"{len(model.pending)} pending, {len(model.history)} decided &middot; "
                + sandbox_markup(model.owner.sandbox)
            )
            self._message.value = h.sanitise(f"<i>{h.esc(model.message)}</i>")
            cards = {}
            for review in model.pending:
                cards[review.id] = self.cards.get(review.id) or RequestCard(self, review)
            for request_id, card in self.cards.items():
                if request_id not in cards:
                    card.close()
            self.cards = cards
            self._pending.children = tuple(cards.values())
            held = {r.id: self.held_cards.get(r.id) or HeldCard(self, r) for r in model.held}
            self.held_cards = _replace(self.held_cards, held)
            self._held.children = tuple(held.values())
            said = [r for r in model.history if r.info.error_full or r.info.log]
            outputs: dict[str, OutputCard] = {}
            for r in said[:OUTPUTS_SHOWN]:
                output = self.output_cards.get(r.id)
                if output is None or output.key != (r.info.status, r.info.released):
                    output = OutputCard(self, r)
                outputs[r.id] = output
            self.output_cards = _replace(self.output_cards, outputs)
            self._outputs.children = tuple(outputs.values())
            self._outputs_box.set_title(0, f"Job errors and logs ({len(said)})")
            rows = [
                [
                    r.info.status,
                    r.info.function_name,
                    model.names.get(r.info.requester, "") or r.info.requester,
                    h.when(r.info.decided_at),
                    h.detail(r.info),
                    describe_placement(r.info.placement) if r.info.placement else "",
                ]
                for r in model.history
            ]
            headers = ["status", "function", "requester", "decided", "reason", "ran"]
            self._history.value = h.sanitise(h.table(headers, rows))
            self._history_box.set_title(0, f"History ({len(model.history)})")

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        super().close()


def _replace(old: dict[str, w.Widget], new: dict[str, w.Widget]) -> dict:
    """`new`, after closing the cards of `old` it does not keep."""
    kept = {id(card) for card in new.values()}
    for card in old.values():
        if id(card) not in kept:
            card.close()
    return new


def requirements_markup(requirements: list[str]) -> str:
    """The packages a request declared: code the job will run too, so the reviewer sees them."""
    if not requirements:
        return ""
    names = ", ".join(f"<code>{h.esc(r)}</code>" for r in requirements)
    return f"<div>requirements (wheels from the domain's package index): {names}</div>"


def sandbox_markup(level: str) -> str:
    """The domain's job sandbox for its owner: "off" in red, as approving there lets the
    code reach the node's keys, store and network."""
    if level == "off":
        return h.badge(h.COLOURS["error"], "sandbox OFF") + " jobs run unconfined"
    return f"sandbox {h.esc(level)}"


def review(owner: AdminClient, poll_s: float | None = POLL_S) -> ApprovalPanel:
    """`review(owner)` in a notebook: the approval panel of that domain."""
    return ApprovalPanel(owner, poll_s)
