"""The sidebar's REST API through a real `jupyter server` with the installed extension, over
a real network and domain: authentication, each handler, and bad input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from labs import DESCRIPTION, JupyterProcess, SyftWorld
from networks import wait_for

from jupyter_syft.client.domain import RemoteRequest

API = "/jupyter-syft/api"
CODE = "def mean_bmi(df):\n    return float(df['bmi'].mean())\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyftWorld]:
    world = SyftWorld(tmp_path_factory.mktemp("server-world"))
    try:
        yield world.start()
    finally:
        world.stop()


@pytest.fixture(scope="module")
def server(world: SyftWorld) -> Iterator[JupyterProcess]:
    """A server acting as the scientist and the owner (as the demo's does)."""
    server = JupyterProcess(world.root, [world.scientist_home, world.owner_home], world, "server")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scientist_server(world: SyftWorld) -> Iterator[JupyterProcess]:
    """A server acting only as the scientist: a member of the domain, not an admin."""
    server = JupyterProcess(world.root, [world.scientist_home], world, "server")
    try:
        yield server.start()
    finally:
        server.stop()


def submit(world: SyftWorld) -> RemoteRequest:
    return world.as_scientist().submit(CODE, "mean_bmi", {"df": "diabetes"})


def decide(server: JupyterProcess, request_id: str, approve: bool, reason: str = "") -> tuple:
    body = {"domain": "hospital-a", "request_id": request_id, "approve": approve, "reason": reason}
    return server.call("POST", f"{API}/decisions", body)


def test_every_endpoint_needs_jupyters_token(server: JupyterProcess) -> None:
    for method, path in [("GET", "state"), ("GET", "datasets?q="), ("POST", "decisions")]:
        body = {} if method == "POST" else None
        assert server.call(method, f"{API}/{path}", body, token="")[0] == 403
        assert server.call(method, f"{API}/{path}", body, token="not-the-token")[0] == 403


def test_state_shows_network_domains_requests_and_approvals(
    server: JupyterProcess, world: SyftWorld
) -> None:
    request = submit(world)
    state = server.get(f"{API}/state")
    assert state["network"]["name"] == "net" and state["network"]["online"]
    [domain] = state["domains"]
    assert domain["name"] == "hospital-a" and domain["online"] and domain["datasets"] == 1
    assert sorted(domain["roles"]) == ["admin", "data_scientist"]
    assert set(state["me"]) == {world.scientist.peer_id, world.owner.peer_id}
    mine = {r["id"]: r for r in state["requests"]}
    assert mine[request.id]["status"] == "pending"
    assert mine[request.id]["datasets"] == ["diabetes"]
    assert domain["sandbox"].startswith("on: ")  # the job sandbox's level, as Hello says
    approved_at = {"name": "hospital-a", "online": True, "sandbox": domain["sandbox"]}
    assert state["approvals"]["domains"] == [approved_at]
    [review] = [r for r in state["approvals"]["pending"] if r["id"] == request.id]
    assert review["code"] == CODE
    assert review["requester"] == world.scientist.peer_id
    assert review["requester_name"] == "Dr. <b>Ada</b>"  # data; the browser shows it as text
    decide(server, request.id, approve=False, reason="tidy up")


def test_search_and_mock_preview(server: JupyterProcess) -> None:
    found = server.get(f"{API}/datasets?q=blood")
    [hit] = found["hits"]
    assert (hit["domain"], hit["dataset"], hit["rows"]) == ("hospital-a", "diabetes", 442)
    assert hit["description"] == DESCRIPTION and hit["online"]
    assert server.get(f"{API}/datasets?q=nothing-like-this")["hits"] == []
    preview = server.get(f"{API}/preview?domain=hospital-a&dataset=diabetes")
    assert preview["schema"]["bmi"] == "double"
    assert preview["columns"][:3] == ["age", "sex", "bmi"]
    assert len(preview["preview"]) == 10 and preview["mock_rows"] == 20
    status, body = server.call("GET", f"{API}/preview?domain=hospital-a&dataset=nope")
    assert status == 404 and "nope" in body["message"]
    assert server.call("GET", f"{API}/preview?domain=hospital-a")[0] == 400


def test_approve_then_approve_again_is_a_clear_conflict(
    server: JupyterProcess, world: SyftWorld
) -> None:
    request = submit(world)
    status, body = decide(server, request.id, approve=True)
    assert status == 200 and body["status"] == "approved"
    status, body = decide(server, request.id, approve=False, reason="changed my mind")
    assert status == 409 and "not pending" in body["message"]
    assert request.result(timeout=60) == pytest.approx(world_mean_bmi())
    assert request.info.reason == ""  # the late denial changed nothing


def world_mean_bmi() -> float:
    from labs import PRIVATE

    return float(PRIVATE["bmi"].mean())


def test_deny_needs_a_reason_and_the_scientist_sees_it(
    server: JupyterProcess, world: SyftWorld
) -> None:
    request = submit(world)
    status, body = decide(server, request.id, approve=False, reason="  ")
    assert status == 400 and "reason" in body["message"]
    assert request.status == "pending"
    reason = "raw rows <b>never</b> leave"
    assert decide(server, request.id, approve=False, reason=reason)[0] == 200
    assert request.wait(timeout=10).reason == reason


@pytest.mark.parametrize(
    "body",
    [
        {"request_id": "x", "approve": True},
        {"domain": "hospital-a", "request_id": "x", "approve": "yes"},
        ["not", "an", "object"],
    ],
)
def test_malformed_decisions_are_refused(server: JupyterProcess, body: object) -> None:
    assert server.call("POST", f"{API}/decisions", body)[0] == 400


def test_unknown_request_and_domain(server: JupyterProcess) -> None:
    status, body = decide(server, "0" * 32, approve=True)
    assert status == 404
    body = {"domain": "nowhere", "request_id": "0" * 32, "approve": True}
    assert server.call("POST", f"{API}/decisions", body)[0] == 404


def test_non_admin_sees_nothing_to_approve_and_cannot_approve(
    scientist_server: JupyterProcess, world: SyftWorld
) -> None:
    request = submit(world)
    state = scientist_server.get(f"{API}/state")
    assert state["approvals"] == {"domains": [], "pending": [], "held": [], "history": []}
    assert request.id in {r["id"] for r in state["requests"]}  # their own request, yes
    status, body = decide(scientist_server, request.id, approve=True)
    assert status == 403 and "not an admin" in body["message"]
    assert request.status == "pending"
    world.admin(world.owner).get_request(request.id).deny("tidy up")  # type: ignore[attr-defined]


def test_domain_offline_is_shown_and_recovers(server: JupyterProcess, world: SyftWorld) -> None:
    request = submit(world)
    world.domain.stop()
    try:

        def offline() -> bool:
            state = server.get(f"{API}/state")
            return (
                not state["domains"][0]["online"] and not state["approvals"]["domains"][0]["online"]
            )

        wait_for(offline, timeout=20)
        status, body = decide(server, request.id, approve=True)
        assert status == 503 and "offline" in body["message"], (status, body)
    finally:
        world.domain.start()

    def back() -> bool:
        state = server.get(f"{API}/state")
        pending = {r["id"] for r in state["approvals"]["pending"]}
        return state["domains"][0]["online"] and request.id in pending

    wait_for(back, timeout=30)
    assert decide(server, request.id, approve=False, reason="tidy up")[0] == 200
