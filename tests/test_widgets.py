"""The notebook widgets against a real network and domain: their models' state after each
click, live updates from their pollers, and bad input (a decided request, an offline domain).
The same widgets in a real browser: tests/browser/."""

from __future__ import annotations

import html
import time
from collections.abc import Iterator

import pytest
from labs import DESCRIPTION, PRIVATE, SyftWorld
from networks import wait_for

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.domain import RemoteRequest
from jupyter_syft.client.network import NetworkClient, NetworkConnection
from jupyter_syft.widgets import (
    ApprovalPanel,
    BudgetGauge,
    DatasetBrowser,
    RequestStatus,
    review,
)
from jupyter_syft.widgets.models import MESSAGE_S

CODE = "def mean_bmi(df):\n    return float(df['bmi'].mean())\n"
HOSTILE = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyftWorld]:
    world = SyftWorld(tmp_path_factory.mktemp("widget-world"))
    try:
        yield world.start()
    finally:
        world.stop()


@pytest.fixture
def owner(world: SyftWorld) -> AdminClient:
    return world.admin(world.owner)


@pytest.fixture
def panel(owner: AdminClient) -> Iterator[ApprovalPanel]:
    panel = review(owner, poll_s=None)  # refreshed by the test, not a thread
    yield panel
    panel.close()


def submit(world: SyftWorld, code: str = CODE) -> RemoteRequest:
    return world.as_scientist().submit(code, "mean_bmi", {"df": "diabetes"})


def test_pending_request_shows_who_what_and_the_code(world: SyftWorld, panel) -> None:
    request = submit(world, CODE + "# " + HOSTILE + "\n")
    panel.refresh()
    card = panel.cards[request.id]
    html = card.children[0].value
    assert "Dr. &lt;b&gt;Ada&lt;/b&gt;" in html  # the owner's name for the user, escaped
    assert world.scientist.peer_id in html
    assert "diabetes as df" in html and "policy: raw" in html
    assert "mean_bmi" in html and "color:" in html  # the code, highlighted
    assert "<img" not in html and "&lt;img" in html  # a comment in the code stays text
    card.deny_button.click()  # no reason: refused, nothing changes
    assert "reason" in panel.model.message
    assert request.status == "pending"
    card.reason.value = "tidy up"
    card.deny_button.click()
    assert request.id not in panel.cards


def test_approve_click_decides_at_once_and_moves_to_history(world: SyftWorld, panel) -> None:
    request = submit(world)
    panel.refresh()
    panel.cards[request.id].approve_button.click()
    assert request.id not in panel.cards
    assert request.id in {r.id for r in panel.model.history}
    assert panel.model.message == f"Request {request.id[:8]} approved."
    assert request.status in ("approved", "running", "done")
    assert request.result(timeout=60) == pytest.approx(float(PRIVATE["bmi"].mean()))


def test_deny_with_reason_reaches_the_scientist(world: SyftWorld, panel) -> None:
    request = submit(world)
    panel.refresh()
    card = panel.cards[request.id]
    card.reason.value = "raw means are too revealing " + HOSTILE
    card.deny_button.click()
    assert request.wait(timeout=10).status == "denied"
    assert request.info.reason == "raw means are too revealing " + HOSTILE
    assert "&lt;img" in panel._history.value and "<img" not in panel._history.value


def test_approving_an_already_decided_request_changes_nothing(
    world: SyftWorld, panel, owner: AdminClient
) -> None:
    request = submit(world)
    panel.refresh()
    stale = panel.cards[request.id]
    owner.get_request(request.id).deny("decided elsewhere")  # type: ignore[attr-defined]
    stale.approve_button.click()
    assert "already decided; nothing changed" in panel.model.message
    assert request.wait(timeout=10).status == "denied"
    assert request.info.reason == "decided elsewhere"
    assert request.id not in panel.cards


def test_new_requests_appear_without_rerunning(world: SyftWorld, owner: AdminClient) -> None:
    panel = ApprovalPanel(owner, poll_s=0.2)
    try:
        request = submit(world)
        wait_for(lambda: request.id in panel.cards, timeout=10)
        assert f"{len(panel.model.pending)} pending" in panel._header.value
        panel.cards[request.id].approve_button.click()
    finally:
        panel.close()
    assert not panel._poller.running


def test_a_decision_made_elsewhere_shows_at_once_and_old_outcomes_go(
    world: SyftWorld, owner: AdminClient
) -> None:
    panel = ApprovalPanel(owner)  # polling as in a notebook
    try:
        here, elsewhere = submit(world), submit(world)
        wait_for(lambda: here.id in panel.cards and elsewhere.id in panel.cards, timeout=10)
        panel.cards[here.id].reason.value = "tidy up"
        panel.cards[here.id].deny_button.click()
        assert f"Request {here.id[:8]} denied." in panel._message.value
        owner.get_request(elsewhere.id).deny("decided in the sidebar")  # type: ignore[attr-defined]
        decided = time.monotonic()
        wait_for(lambda: elsewhere.id not in panel.cards, timeout=5, step=0.01)
        assert time.monotonic() - decided < 1.0  # no Approve offered for a decided request
        assert "denied" in panel._history.value
        wait_for(lambda: "denied" not in panel._message.value, timeout=MESSAGE_S + 2)
    finally:
        panel.close()


def test_offline_domain_is_shown_and_the_panel_recovers(
    world: SyftWorld, owner: AdminClient
) -> None:
    panel = ApprovalPanel(owner, poll_s=0.2)
    try:
        world.domain.stop()
        try:
            wait_for(lambda: "offline" in panel._header.value, timeout=20)
            assert not panel.model.online
        finally:
            world.domain.start()
        wait_for(lambda: "online" in panel._header.value, timeout=30)
        request = submit(world)
        wait_for(lambda: request.id in panel.cards, timeout=10)  # and it is live again
        panel.cards[request.id].reason.value = "tidy up"
        panel.cards[request.id].deny_button.click()
    finally:
        panel.close()


def test_request_status_follows_the_request_to_its_result(
    world: SyftWorld, owner: AdminClient
) -> None:
    request = submit(world)
    status = RequestStatus(request)
    try:
        assert "pending" in status._html.value
        owner.get_request(request.id).approve()  # type: ignore[attr-defined]
        wait_for(lambda: "result of" in status._html.value, timeout=60)  # rendered in place
        assert status.model.history[0] == "pending" and status.model.history[-1] == "done"
        assert status.model.value == pytest.approx(float(PRIVATE["bmi"].mean()))
        assert f"{status.model.value}"[:6] in status._html.value
    finally:
        status.close()
    assert not status._poller.running


def test_request_status_shows_the_reason_escaped(world: SyftWorld, owner: AdminClient) -> None:
    request = submit(world)
    status = RequestStatus(request)
    try:
        owner.get_request(request.id).deny("no " + HOSTILE)  # type: ignore[attr-defined]
        wait_for(lambda: "denied" in status._html.value, timeout=20)
        assert "no &lt;img" in status._html.value and "<img" not in status._html.value
    finally:
        status.close()


def test_dataset_browser_searches_and_previews_the_mock(world: SyftWorld) -> None:
    net = NetworkClient(NetworkConnection(world.network.address, world.scientist))
    browser = DatasetBrowser(net)
    [(label, hit)] = browser.results.options
    assert label == "hospital-a/diabetes: 442 rows"
    browser.results.value = hit  # a click
    page = browser.preview.value
    assert html.escape(DESCRIPTION, quote=False) in page and "<img" not in page  # as text
    assert "<td>bmi</td><td>double</td>" in page  # schema
    assert browser.model.preview is not None
    assert browser.model.preview.mock.shape == (20, 11)  # the mock, never private rows
    browser.query.value = "no such thing"  # typed, then Enter
    assert browser.results.options == () and "0 datasets" in browser.preview.value
    browser.query.value = ""
    browser.search_button.click()
    assert len(browser.results.options) == 1
    domain_browser = DatasetBrowser(world.as_scientist(), query="blood")
    assert [h.dataset for _, h in domain_browser.results.options] == ["diabetes"]


def test_budget_gauge_shows_spent_and_left() -> None:
    gauge = BudgetGauge(spent=0.5, left=1.5)
    assert (gauge.bar.value, gauge.bar.max, gauge.bar.bar_style) == (0.5, 2.0, "success")
    assert "0.5 spent of 2" in gauge.label.value and "1.5 left" in gauge.label.value
    gauge.set(1.9, 0.1)
    assert gauge.bar.bar_style == "warning"
    gauge.set(2.0, 0.0)
    assert gauge.bar.bar_style == "danger"
    with pytest.raises(ValueError, match="negative"):
        gauge.set(-1.0, 1.0)
