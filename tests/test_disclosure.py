"""What a job says besides its result, and when a result leaves: across a real domain process.

A failed job's full error and every job's log are sealed to the node at rest; the scientist sees
the exception type and their own lines until the owner releases the rest (or a dataset policy
does). Under release="after_review" the result waits, sealed to the domain, for the owner.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient, ReviewRequest
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, RemoteRequest
from jupyter_syft.crypto.seal import ResultSeal, SealError, open_sealed
from jupyter_syft.errors import (
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
    RequestFailed,
    ResultWithheld,
)
from jupyter_syft.wire import messages as m

MARKER = "private-marker-3b7d"  # only in the private rows: never in the code
PRIVATE = pd.DataFrame({"age": np.arange(50) + 18, "tag": [MARKER] * 50})
MOCK = pd.DataFrame({"age": np.full(5, 40), "tag": ["mock"] * 5})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One domain, three copies of a table under different policies, its owner, two scientists
    and a stranger."""
    root = tmp_path_factory.mktemp("disclosure")
    owner_home, owner = person(root, "owner")
    _, alice = person(root, "alice")
    _, bob = person(root, "bob")
    _, stranger = person(root, "stranger")
    node = DomainProcess(root, "clinic", owner_home, "--job-timeout", "20")
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        for name in ("patients", "open", "held"):
            admin.create_dataset(name, private=PRIVATE, mock=MOCK)
        admin.set_policy("open", errors="full")
        admin.set_policy("held", release="after_review")
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        admin.add_user(bob.peer_id, "data_scientist", "bob")
        yield {
            "node": node,
            "admin": admin,
            "alice": DomainClient(NodeConnection(node.address, alice)),
            "bob": DomainClient(NodeConnection(node.address, bob)),
            "stranger": DomainClient(NodeConnection(node.address, stranger)),
            "identities": {"alice": alice},
        }
    finally:
        node.kill()


def leaks(df):
    import sys

    print("rows seen:", df["tag"][1])
    print("and on stderr:", df["tag"][2], file=sys.stderr)
    raise ValueError(df["tag"][0])


def prints(df):
    print("first tag:", df["tag"][0])
    return len(df)


def count(df):
    return {"rows": len(df), "oldest": int(df["age"].max())}


def approved(world: dict, function, dataset: str = "patients") -> RemoteRequest:
    request = world["alice"].request(function, df=dataset)
    world["admin"].get_request(request.id).approve()
    return request


def finished(world: dict, function, dataset: str = "patients") -> RemoteRequest:
    request = approved(world, function, dataset)
    request.wait(timeout=60)
    return request


def held_for_review(admin: AdminClient, request: RemoteRequest) -> ReviewRequest:
    """The owner's view of `request` once its job ran and its result awaits release."""
    review = admin.get_request(request.id)
    while review.info.status in ("approved", "running"):
        review.refresh(wait_s=5)
    assert review.info.status == "awaiting_release", review.info
    return review  # type: ignore[return-value]


def stored_bytes(world: dict) -> bytes:
    """Everything the node keeps in SQLite (WAL included) and what it wrote to its log."""
    node: DomainProcess = world["node"]
    files = [*node.data_dir.glob("domain.sqlite*"), node.log]
    return b"".join(path.read_bytes() for path in files if path.exists())


def snapshot(admin: AdminClient) -> tuple:
    log = admin.audit_log(limit=10_000)
    kept = [(e.action, e.subject) for e in log.entries if e.action != "refused"]
    requests = [(r.id, r.info.status, r.info.released) for r in admin.requests()]
    return kept, requests, log.chain_ok


# ---- errors and logs -------------------------------------------------------------------------


def test_a_failed_job_shows_the_scientist_only_the_type_and_their_lines(world: dict) -> None:
    request = finished(world, leaks)
    assert request.info.status == "failed"
    with pytest.raises(RequestFailed) as failed:
        request.result()
    seen = str(failed.value)
    assert "ValueError" in seen
    assert 'raise ValueError(df["tag"][0])' in seen  # their own source line
    assert MARKER not in seen
    assert MARKER not in request.info.error and request.log == ""
    assert not request.info.released

    review = world["admin"].get_request(request.id)
    assert MARKER in review.error  # the owner sees the full text...
    assert f"rows seen: {MARKER}" in review.info.log  # ...and the job's stdout and stderr
    assert f"and on stderr: {MARKER}" in review.info.log
    assert MARKER in review._repr_html_()
    assert MARKER not in review.scientist_error

    # Nothing of it in plaintext at rest or in the node's log, audit entries included.
    assert MARKER.encode() not in stored_bytes(world)
    details = [e.detail for e in world["admin"].audit_log(limit=10_000).entries]
    assert not any(MARKER in d for d in details)


def test_release_error_gives_the_scientist_the_full_error_and_log(world: dict) -> None:
    request = finished(world, leaks)
    world["admin"].get_request(request.id).release_error()
    request.refresh()
    assert request.info.released
    with pytest.raises(RequestFailed, match=MARKER):
        request.result()
    assert f"rows seen: {MARKER}" in request.log
    assert MARKER.encode() not in stored_bytes(world)  # released, still sealed at rest
    entries = world["admin"].audit_log(limit=10_000).entries
    [release] = [e for e in entries if e.action == "release_error" and e.subject == request.id]
    assert release.actor == world["admin"]._connection.identity.peer_id
    # Bob, another scientist, still sees nothing of alice's request.
    with pytest.raises(NotFoundError):
        world["bob"].get_request(request.id)


def test_bad_releases_are_refused_and_change_nothing(world: dict) -> None:
    failed = finished(world, leaks)
    done = finished(world, count)
    admin = world["admin"]
    before = snapshot(admin)
    with pytest.raises(ConflictError, match="done, not failed"):
        admin.get_request(done.id).release_error()
    with pytest.raises(NotFoundError):
        admin._connection.call(m.ReleaseError("0" * 32))
    for who in ("alice", "bob", "stranger"):  # the requester included: only admins release
        with pytest.raises(NotAuthorisedError):
            world[who]._connection.call(m.ReleaseError(failed.id))
    assert snapshot(admin) == before
    failed.refresh()
    assert not failed.info.released and MARKER not in failed.error
    admin.get_request(failed.id).release_error()
    after = snapshot(admin)
    with pytest.raises(ConflictError, match="released already"):
        admin.get_request(failed.id).release_error()
    assert snapshot(admin) == after
    assert world["alice"].datasets["patients"].rows == 50  # still serving


def test_errors_full_policy_releases_errors_and_logs_at_once(world: dict) -> None:
    request = finished(world, leaks, dataset="open")
    assert request.info.released
    with pytest.raises(RequestFailed, match=MARKER):
        request.result()
    assert f"rows seen: {MARKER}" in request.log
    printed = finished(world, prints, dataset="open")
    assert printed.result() == 50 and f"first tag: {MARKER}" in printed.log
    # The same job on a redacted dataset: its log reaches only the owner.
    quiet = finished(world, prints)
    assert quiet.result() == 50 and quiet.log == ""
    assert f"first tag: {MARKER}" in world["admin"].get_request(quiet.id).info.log
    entries = world["admin"].audit_log(limit=10_000).entries
    assert [e.actor for e in entries if e.subject == request.id and e.action == "release_error"]
    assert world["admin"].get_request(request.id).info.released
    assert MARKER.encode() not in stored_bytes(world)


def test_the_strictest_policy_wins_for_a_request_on_two_datasets(world: dict) -> None:
    def both(a, b):
        raise ValueError(a["tag"][0])

    request = world["alice"].request(both, a="open", b="patients")
    world["admin"].get_request(request.id).approve()
    request.wait(timeout=60)
    assert request.info.status == "failed" and not request.info.released
    assert MARKER not in request.error


def test_policies_read_back_and_keep_what_is_not_set(world: dict) -> None:
    admin = world["admin"]
    assert world["alice"].policy("open").errors == "full"
    assert world["alice"].policy("held").release == "after_review"
    assert world["alice"].policy("patients").errors == "redacted"
    admin.set_policy("open", auto_approve=True)
    policy = admin.set_policy("open", max_query_epsilon=0.5)
    assert (policy.errors, policy.auto_approve, policy.max_query_epsilon) == ("full", True, 0.5)
    admin.set_policy("open", auto_approve=False, max_query_epsilon=1.0)
    before = snapshot(admin)
    with pytest.raises(InvalidError, match="errors must be"):
        admin.set_policy("open", errors="everything")
    with pytest.raises(NotAuthorisedError):
        world["alice"]._connection.call(m.SetPolicy("open", errors="redacted"))
    assert snapshot(admin) == before


# ---- release="after_review" -----------------------------------------------------------------


def test_a_held_result_waits_for_the_owner_and_is_released_re_sealed(world: dict) -> None:
    request = approved(world, count, dataset="held")
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.update(value=request.result(timeout=60)))
    waiter.start()
    admin = world["admin"]
    review = held_for_review(admin, request)
    assert world["alice"].get_request(request.id).status == "awaiting_release"
    # Sealed to the domain: not even the requester can open the held pieces.
    folder = world["node"].data_dir / "results" / request.id
    alice = world["identities"]["alice"]
    contexts = ResultSeal(request.id, admin.peer_id, alice.peer_id)
    with pytest.raises(SealError):
        open_sealed((folder / "manifest.sealed").read_bytes(), alice, contexts.manifest())
    with pytest.raises(ConflictError, match="awaiting_release, not done"):
        world["alice"]._connection.call(m.FetchResult(request.id))

    expected = {"rows": 50, "oldest": 67}
    assert review.result_preview() == expected  # the owner looks at it first
    assert waiter.is_alive()  # the scientist is still waiting
    review.release_result()
    assert review.info.status == "done"
    waiter.join(timeout=60)
    assert got["value"] == expected
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(request.id)) == [
        request.id
    ]
    actions = [e.action for e in admin.audit_log(limit=10_000).entries if e.subject == request.id]
    assert actions[-4:] == ["run_done", "preview_result", "result_released", "fetch_result"]


def test_a_withheld_result_never_reaches_the_scientist(world: dict) -> None:
    request = approved(world, count, dataset="held")
    review = held_for_review(world["admin"], request)
    before = snapshot(world["admin"])
    with pytest.raises(InvalidError, match="needs a reason"):
        review.withhold_result("  ")
    assert snapshot(world["admin"]) == before
    review.withhold_result("the cohort is too small to release")
    with pytest.raises(ResultWithheld, match="too small"):
        request.result(timeout=30)
    assert request.status == "withheld"
    assert not (world["node"].data_dir / "results" / request.id).exists()
    with pytest.raises(ConflictError, match="withheld, not awaiting_release"):
        review.release_result()


def test_bad_result_decisions_are_refused_and_change_nothing(world: dict) -> None:
    held = approved(world, count, dataset="held")
    review = held_for_review(world["admin"], held)
    done = finished(world, count)
    admin = world["admin"]
    before = snapshot(admin)
    with pytest.raises(ConflictError, match="done, not awaiting_release"):
        admin.get_request(done.id).release_result()
    with pytest.raises(ConflictError, match="done, not awaiting_release"):
        admin.get_request(done.id).result_preview()
    for who in ("alice", "bob", "stranger"):
        for call in (m.DecideResult(held.id, release=True), m.PreviewResult(held.id)):
            with pytest.raises(NotAuthorisedError):
                world[who]._connection.call(call)
    assert snapshot(admin) == before
    assert held.status == "awaiting_release"
    review.release_result()
    assert held.result(timeout=30) == {"rows": 50, "oldest": 67}


def test_a_held_failure_is_just_a_failure(world: dict) -> None:
    request = finished(world, leaks, dataset="held")
    assert request.info.status == "failed" and MARKER not in request.error


# ---- the approval widget --------------------------------------------------------------------


def test_the_approval_widget_shows_errors_and_logs_and_releases_them(world: dict) -> None:
    from jupyter_syft.widgets import review

    request = finished(world, leaks)
    panel = review(world["admin"], poll_s=None)
    try:
        card = panel.output_cards[request.id]
        shown = card.children[0].value
        assert MARKER in shown and "rows seen:" in shown  # the full error and the log
        assert 'raise ValueError(df["tag"][0])' in shown  # what the scientist sees, too
        card.release_button.click()
        assert "error and log released" in panel.model.message
        assert panel.output_cards[request.id].release_button.disabled
        with pytest.raises(RequestFailed, match=MARKER):
            world["alice"].get_request(request.id).result()
        panel.output_cards[request.id].release_button.click()  # a stale click: refused
        assert "nothing changed" in panel.model.message
    finally:
        panel.close()


def test_the_approval_widget_previews_then_releases_or_withholds(world: dict) -> None:
    from jupyter_syft.widgets import review

    kept, withheld = (approved(world, count, dataset="held") for _ in range(2))
    for request in (kept, withheld):
        held_for_review(world["admin"], request)
    panel = review(world["admin"], poll_s=None)
    try:
        card = panel.held_cards[kept.id]
        assert "67" in card.children[0].value and "oldest" in card.children[0].value
        card.release_button.click()
        assert kept.id not in panel.held_cards
        assert kept.result(timeout=30) == {"rows": 50, "oldest": 67}
        other = panel.held_cards[withheld.id]
        other.withhold_button.click()  # no reason: refused, nothing changes
        assert "reason" in panel.model.message and withheld.status == "awaiting_release"
        other.reason.value = "re-identification risk"
        other.withhold_button.click()
        with pytest.raises(ResultWithheld, match="re-identification"):
            withheld.result(timeout=30)
    finally:
        panel.close()


def test_a_restart_keeps_a_held_result_held(world: dict) -> None:
    request = approved(world, count, dataset="held")
    held_for_review(world["admin"], request)
    node: DomainProcess = world["node"]
    assert node.process is not None and node.process.stdout is not None
    node.process.send_signal(signal.SIGTERM)
    printed = node.process.stdout.read()  # all the node wrote to stdout, until it stopped
    assert node.stop() == 0
    assert MARKER not in printed and MARKER.encode() not in stored_bytes(world)
    node.start()
    admin = AdminClient(NodeConnection(node.address, world["admin"]._connection.identity))
    alice = DomainClient(NodeConnection(node.address, world["identities"]["alice"]))
    world.update(admin=admin, alice=alice)
    assert alice.get_request(request.id).status == "awaiting_release"
    admin.get_request(request.id).release_result()
    assert alice.get_request(request.id).result(timeout=30) == {"rows": 50, "oldest": 67}
