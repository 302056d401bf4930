"""The sidebar's API for what jobs say and for held results, through a real `jupyter server`
over a real network and domain: the owner sees full errors and logs, releases them, previews
and releases or withholds held results; the scientist sees only what is released."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from labs import PRIVATE, JupyterProcess, SyftWorld
from networks import wait_for

from jupyter_syft.client.domain import RemoteRequest
from jupyter_syft.errors import RequestFailed

API = "/jupyter-syft/api"
SECRET = repr(float(PRIVATE["bmi"].sum()))  # a private value: only the data holds it
FAILS = (
    "def peek(df):\n"
    "    print('bmi sum', float(df['bmi'].sum()))\n"
    "    raise ValueError(repr(float(df['bmi'].sum())))\n"
)
COUNT = "def count(df):\n    return {'rows': len(df)}\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyftWorld]:
    world = SyftWorld(tmp_path_factory.mktemp("server-disclosure"))
    try:
        yield world.start()
    finally:
        world.stop()


@pytest.fixture(scope="module")
def server(world: SyftWorld) -> Iterator[JupyterProcess]:
    server = JupyterProcess(world.root, [world.scientist_home, world.owner_home], world, "server")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def scientist_server(world: SyftWorld) -> Iterator[JupyterProcess]:
    server = JupyterProcess(world.root, [world.scientist_home], world, "server")
    try:
        yield server.start()
    finally:
        server.stop()


def submit(world: SyftWorld, code: str, name: str) -> RemoteRequest:
    request = world.as_scientist().submit(code, name, {"df": "diabetes"})
    world.admin(world.owner).get_request(request.id).approve()  # type: ignore[attr-defined]
    return request


def reviewed(server: JupyterProcess, request_id: str, where: str = "history") -> dict:
    """The owner's view of a request in the sidebar state, once it is there."""
    found: dict = {}

    def listed() -> bool:
        found.update({r["id"]: r for r in server.get(f"{API}/state")["approvals"][where]})
        return request_id in found

    wait_for(listed, timeout=60)
    return found[request_id]


def mine(server: JupyterProcess, request_id: str) -> dict:
    return {r["id"]: r for r in server.get(f"{API}/state")["requests"]}[request_id]


def release(server: JupyterProcess, request_id: str) -> tuple:
    return server.call(
        "POST", f"{API}/release_error", {"domain": "hospital-a", "request_id": request_id}
    )


def test_the_owner_sees_the_full_error_and_log_and_releases_them(
    server: JupyterProcess, scientist_server: JupyterProcess, world: SyftWorld
) -> None:
    request = submit(world, FAILS, "peek")
    assert request.wait(timeout=60).status == "failed"
    review = reviewed(server, request.id)
    assert SECRET in review["error_full"] and f"bmi sum {SECRET}" in review["log"]
    assert SECRET not in review["scientist_error"] and "ValueError" in review["scientist_error"]
    assert not review["released"]
    assert SECRET not in mine(scientist_server, request.id)["error"]
    assert release(scientist_server, request.id)[0] == 403  # not an admin
    assert server.call("POST", f"{API}/release_error", {"domain": "hospital-a"})[0] == 400
    assert server.call("POST", f"{API}/release_error", ["x"])[0] == 400
    status, body = release(server, request.id)
    assert status == 200 and SECRET in body["error"]
    assert reviewed(server, request.id)["released"]
    assert SECRET in mine(scientist_server, request.id)["error"]
    status, body = release(server, request.id)
    assert status == 409 and "released already" in body["message"]
    with pytest.raises(RequestFailed, match=re.escape(SECRET)):
        request.result()


def test_a_held_result_is_previewed_then_released_or_withheld(
    server: JupyterProcess, scientist_server: JupyterProcess, world: SyftWorld
) -> None:
    world.admin(world.owner).set_policy("diabetes", release="after_review")
    try:
        kept, withheld = submit(world, COUNT, "count"), submit(world, COUNT, "count")
        for request in (kept, withheld):
            assert reviewed(server, request.id, "held")["status"] == "awaiting_release"
        query = f"domain=hospital-a&request_id={kept.id}"
        preview = server.get(f"{API}/held_result?{query}")
        assert "'rows': 442" in preview["text"]
        assert scientist_server.call("GET", f"{API}/held_result?{query}")[0] == 403
        assert server.call("GET", f"{API}/held_result?domain=hospital-a")[0] == 400
        decide = {"domain": "hospital-a", "request_id": kept.id, "release": "yes"}
        assert server.call("POST", f"{API}/held_result", decide)[0] == 400
        decide["release"] = True
        status, body = server.call("POST", f"{API}/held_result", decide)
        assert status == 200 and body["status"] == "done"
        assert kept.result(timeout=30) == {"rows": 442}
        status, body = server.call("POST", f"{API}/held_result", decide)
        assert status == 409 and "not awaiting_release" in body["message"]
        withhold = {"domain": "hospital-a", "request_id": withheld.id, "release": False}
        status, body = server.call("POST", f"{API}/held_result", {**withhold, "reason": " "})
        assert status == 400 and "reason" in body["message"]
        status, body = server.call("POST", f"{API}/held_result", {**withhold, "reason": "small n"})
        assert status == 200 and body["status"] == "withheld" and body["reason"] == "small n"
        assert mine(scientist_server, withheld.id)["status"] == "withheld"
    finally:
        world.admin(world.owner).set_policy("diabetes", release="on_approval")
