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


@pytest.fixture(scope="module")
def demo_server(world: SyftWorld) -> Iterator[JupyterProcess]:
    """A server configured as `jupyter-syft demo --lab` does: the network and, from
    demo.json, each domain by address too."""
    server = JupyterProcess(world.root, [world.scientist_home, world.owner_home], app="server")
    server.args.append(f"--SyftServer.demo={world.demo_file}")
    try:
        yield server.start()
    finally:
        server.stop()


def test_search_lists_a_dataset_found_by_network_and_by_address_once(
    demo_server: JupyterProcess,
) -> None:
    found = demo_server.get(f"{API}/datasets?q=")
    assert [(h["domain"], h["dataset"]) for h in found["hits"]] == [("hospital-a", "diabetes")]
    assert found["unreachable"] == []


def test_pending_lists_what_waits_for_your_decision(
    server: JupyterProcess, scientist_server: JupyterProcess, world: SyftWorld
) -> None:
    request = submit(world)
    [waiting] = [r for r in server.get(f"{API}/pending")["pending"] if r["id"] == request.id]
    assert (waiting["domain"], waiting["function"], waiting["status"]) == (
        "hospital-a",
        "mean_bmi",
        "pending",
    )
    assert waiting["requester_name"] == "Dr. <b>Ada</b>" and waiting["code"] == CODE
    assert scientist_server.get(f"{API}/pending") == {"pending": []}  # administers nothing
    assert server.call("GET", f"{API}/pending", token="")[0] == 403
    assert decide(server, request.id, approve=False, reason="tidy up")[0] == 200
    assert request.id not in {r["id"] for r in server.get(f"{API}/pending")["pending"]}


def test_a_federated_plan_shows_its_terms_and_its_rounds_come_under_it(
    server: JupyterProcess, world: SyftWorld
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import jupyter_syft as syft
    from jupyter_syft.demo import FEATURE_BOUNDS, diabetes_model

    features = list(FEATURE_BOUNDS)
    with ThreadPoolExecutor(1) as pool:
        training = pool.submit(
            syft.federated.train, diabetes_model, [world.as_scientist()], dataset="diabetes",
            target="target", features=features, feature_bounds=list(FEATURE_BOUNDS.values()),
            rounds=3, local_epochs=2, lr=0.02, secure_aggregation=False, show=False,
            approval_timeout=60,
        )  # fmt: skip
        plans: list[dict] = []
        wait_for(
            lambda: (
                plans.extend(r for r in server.get(f"{API}/pending")["pending"] if r["plan"])
                or plans
            ),
            timeout=30,
        )
        assert not training.done(), training.exception()
        [plan] = plans
        assert plan["policy"] == "federated" and plan["function"] == "diabetes_model"
        assert plan["plan"] == [
            ["rounds", "3 rounds x 2 local epochs"],
            ["columns", f"{', '.join(features)} -> target (mse loss)"],
            ["optimizer", "adam, learning rate 0.02, batch 32"],
            ["aggregation", "none: the scientist averages the updates"],
            ["DP budget", "none: no differential privacy"],
            [
                "weights leave the domain",
                "each round, the weights trained on your rows leave this domain, sealed to the "
                "scientist, who sees this domain's update",
            ],
        ]
        assert decide(server, plan["id"], approve=True)[0] == 200
        _, history = training.result(timeout=120)
    assert len(history.rounds) == 3, history.rounds
    state = server.get(f"{API}/state")
    for listing in (state["requests"], state["approvals"]["history"]):
        [entry] = [r for r in listing if r["id"] == plan["id"]]
        assert [(r["round"], r["status"]) for r in entry["rounds"]] == [
            (1, "done"),
            (2, "done"),
            (3, "done"),
        ]
        assert not [r for r in listing if r["plan_round"]]  # no round listed on its own
        assert listing[0]["id"] == plan["id"]  # its last round is the latest activity


def test_what_a_request_asks_for_and_where_it_ran(server: JupyterProcess, world: SyftWorld) -> None:
    """The owner's card says what the job asks for; once it ran, the history and the
    scientist's list say where, with what, for how long."""
    request = world.as_scientist().submit(
        CODE, "mean_bmi", {"df": "diabetes"}, resources={"cpus": 1, "memory_mb": 768}
    )
    state = server.get(f"{API}/state")
    [card] = [r for r in state["approvals"]["pending"] if r["id"] == request.id]
    assert card["resources"] == "asks for 1 cpu, 0 gpus, 768 MiB" and card["ran"] == ""
    assert decide(server, request.id, approve=True)[0] == 200
    request.result(timeout=60)
    state = server.get(f"{API}/state")
    [done] = [r for r in state["approvals"]["history"] if r["id"] == request.id]
    assert done["ran"].startswith("local on ") and "with 1 cpu, 0 gpus, 768 MiB for" in done["ran"]
    assert done["placement"]["resources"] == {"cpus": 1.0, "gpus": 0, "memory_mb": 768}
    assert done["placement"]["attempts"] == 1 and done["placement"]["seconds"] > 0
    [mine] = [r for r in state["requests"] if r["id"] == request.id]
    assert mine["ran"] == done["ran"]  # the scientist sees where their job ran too
