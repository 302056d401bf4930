"""The owner's approval panel: pending requests with their code, Approve / Deny at once."""

from __future__ import annotations

import threading

import ipywidgets as w

from jupyter_syft.client.admin import AdminClient, ReviewRequest
from jupyter_syft.federated.plan import describe_plan
from jupyter_syft.widgets import markup as h
from jupyter_syft.widgets.models import ReviewModel
from jupyter_syft.widgets.poller import Poller

POLL_S = 2.0


class RequestCard(w.VBox):
    """One pending request: who, what, which data, the code, and the two decisions."""

    def __init__(self, panel: ApprovalPanel, review: ReviewRequest) -> None:
        self.request_id = review.id
        info = review.info
        name = panel.model.names.get(info.requester, "") or "unnamed user"
        datasets = ", ".join(f"{d} as {arg}" for arg, d in info.inputs.items())
        epsilon = getattr(info, "epsilon", None)  # a DP request's budget, once DP requests exist
        policy = info.policy + (f", epsilon {epsilon:g}" if epsilon is not None else "")
        details = (
            f"<div>{h.badge(h.COLOURS['pending'], 'pending')} <b>{h.esc(info.function_name)}</b>"
            f" &middot; request <code>{h.esc(info.request_id[:8])}</code></div>"
            f"<div>from <b>{h.esc(name)}</b> <code>{h.esc(info.requester)}</code></div>"
            f"<div>reads {h.esc(datasets)} &middot; policy: {h.esc(policy)} &middot; "
            f"submitted {h.esc(h.when(info.submitted_at))}</div>"
            + (f"<div>{h.esc(describe_plan(info.plan))}</div>" if info.plan else "")
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


class ApprovalPanel(w.VBox):
    """Pending requests of a domain for its owner; new ones appear by themselves (a poller
    re-reads the domain every `poll_s`), decided ones move to the history below."""

    def __init__(self, owner: AdminClient, poll_s: float | None = POLL_S) -> None:
        self.model = ReviewModel(owner)
        self.cards: dict[str, RequestCard] = {}
        self._header = w.HTML()
        self._message = w.HTML()
        self._pending = w.VBox()
        self._history = w.HTML()
        self._history_box = w.Accordion([self._history], titles=("History",))
        self._lock = threading.RLock()
        super().__init__([self._header, self._message, self._pending, self._history_box])
        self.refresh()
        self._poll_s = poll_s
        self._poller = Poller(self._poll, f"syft-review-{owner.name}").start() if poll_s else None

    def _poll(self) -> float | None:
        self.refresh()
        return self._poll_s

    def refresh(self) -> None:
        """Re-read the domain and show what changed."""
        self.model.refresh()
        self.render()

    def approve(self, request_id: str) -> None:
        self.model.approve(request_id)
        self.render()

    def deny(self, request_id: str, reason: str) -> None:
        self.model.deny(request_id, reason)
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
            rows = [
                [
                    r.info.status,
                    r.info.function_name,
                    model.names.get(r.info.requester, "") or r.info.requester,
                    h.when(r.info.decided_at),
                    h.detail(r.info),
                ]
                for r in model.history
            ]
            self._history.value = h.sanitise(
                h.table(["status", "function", "requester", "decided", "reason"], rows)
            )
            self._history_box.set_title(0, f"History ({len(model.history)})")

    def close(self) -> None:
        if self._poller is not None:
            self._poller.stop()
        super().close()


def sandbox_markup(level: str) -> str:
    """The domain's job sandbox for its owner: "off" in red, as approving there lets the
    code reach the node's keys, store and network."""
    if level == "off":
        return h.badge(h.COLOURS["error"], "sandbox OFF") + " jobs run unconfined"
    return f"sandbox {h.esc(level)}"


def review(owner: AdminClient, poll_s: float | None = POLL_S) -> ApprovalPanel:
    """`review(owner)` in a notebook: the approval panel of that domain."""
    return ApprovalPanel(owner, poll_s)
