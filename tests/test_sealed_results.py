"""Sealed results across a real domain process: what the owner's disk holds, who can open it,
and what tampering does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, RemoteRequest, function_source
from jupyter_syft.crypto.seal import MAGIC, ResultSeal, SealError, open_sealed
from jupyter_syft.errors import NotFoundError
from jupyter_syft.identity import load_or_create
from jupyter_syft.wire import messages as m

MARKER = "plaintext-marker-5c1e"
PRIVATE = pd.DataFrame({"age": np.arange(100) % 80 + 18, "tag": [MARKER] * 100})
MOCK = pd.DataFrame({"age": np.full(10, 40), "tag": ["x"] * 10})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One domain holding a table with a marker string; its owner and two scientists."""
    root = tmp_path_factory.mktemp("sealed")
    owner_home, owner = person(root, "owner")
    _, alice = person(root, "alice")
    _, bob = person(root, "bob")
    node = DomainProcess(root, "clinic", owner_home, "--job-timeout", "20")
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PRIVATE, mock=MOCK)
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        admin.add_user(bob.peer_id, "data_scientist", "bob")
        yield {
            "node": node,
            "admin": admin,
            "alice": DomainClient(NodeConnection(node.address, alice)),
            "bob": DomainClient(NodeConnection(node.address, bob)),
            "identities": {"alice": alice, "bob": bob},
        }
    finally:
        node.kill()


def small(df):
    return {"rows": df, "note": "plaintext-marker-5c1e"}


def large(df):
    import numpy as np

    return {"rows": df, "big": np.full(600_000, 7.0)}  # 4.6 MiB: over Flight


def run(world: dict, function, policy: str = "raw") -> RemoteRequest:
    """Alice's request, approved by the owner and done."""
    alice = world["alice"]
    call = m.SubmitRequest(function_source(function), function.__name__, {"df": "patients"}, policy)
    request = RemoteRequest(alice._connection, alice._connection.call(call))  # type: ignore[arg-type]
    world["admin"].get_request(request.id).approve()
    assert request.wait(timeout=60).status == "done", request.info.error
    return request


def result_dir(world: dict, request: RemoteRequest) -> Path:
    return world["node"].data_dir / "results" / request.id


def fresh(request: RemoteRequest) -> RemoteRequest:
    """The same request with nothing cached."""
    return RemoteRequest(request._connection, request.info)


def test_the_domain_stores_only_sealed_pieces(world: dict) -> None:
    requests = [run(world, small), run(world, large)]
    for request in requests:
        value = request.result()
        pd.testing.assert_frame_equal(value["rows"], PRIVATE)
    assert requests[0].result()["note"] == MARKER
    assert np.array_equal(requests[1].result()["big"], np.full(600_000, 7.0))
    fetched = world["alice"]._connection.call(m.FetchResult(requests[1].id))
    assert any(part.ticket for part in fetched.parts)  # type: ignore[union-attr]  # Flight used
    results = world["node"].data_dir / "results"
    for request in requests:
        names = {p.name for p in result_dir(world, request).iterdir()}
        parts = {f"part-{i}.sealed" for i in range(len(names) - 1)}
        assert names == {"manifest.sealed", *parts}
    for path in results.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert data.startswith(MAGIC), path
            assert MARKER.encode() not in data, path


def test_another_peer_can_neither_fetch_nor_open(world: dict) -> None:
    request = run(world, small)
    bob = world["bob"]
    with pytest.raises(NotFoundError):
        bob._connection.call(m.FetchResult(request.id))
    # Even holding the stored bytes, Bob's key opens nothing, whichever context he tries.
    alice, bob_id = world["identities"]["alice"], world["identities"]["bob"]
    sealed = (result_dir(world, request) / "manifest.sealed").read_bytes()
    domain = world["alice"].peer_id
    for requester in (alice.peer_id, bob_id.peer_id):
        with pytest.raises(SealError, match="failed authentication"):
            open_sealed(sealed, bob_id, ResultSeal(request.id, domain, requester).manifest())
    assert MARKER.encode() in open_sealed(
        sealed, alice, ResultSeal(request.id, domain, alice.peer_id).manifest()
    )


@pytest.mark.parametrize("function", [small, large], ids=["inline", "flight"])
def test_a_result_tampered_on_disk_raises_and_nothing_is_cached(world: dict, function) -> None:
    request = fresh(run(world, function))
    path = result_dir(world, request) / "part-0.sealed"
    original = path.read_bytes()
    tampered = bytearray(original)
    tampered[len(tampered) // 2] ^= 0x01
    path.write_bytes(tampered)
    with pytest.raises(SealError, match=f"result of request {request.id} .* cannot be opened"):
        request.result()
    path.write_bytes(original)
    pd.testing.assert_frame_equal(request.result()["rows"], PRIVATE)  # the error was not cached


def test_pieces_cannot_be_swapped_within_or_across_results(world: dict) -> None:
    first, second = run(world, large), run(world, large)
    folder = result_dir(world, first)
    part0, part1 = folder / "part-0.sealed", folder / "part-1.sealed"
    pieces = part0.read_bytes(), part1.read_bytes()
    part0.write_bytes(pieces[1])
    part1.write_bytes(pieces[0])
    with pytest.raises(SealError, match="sealed under another context"):
        fresh(first).result()
    part0.write_bytes(pieces[0])
    part1.write_bytes(pieces[1])
    other = result_dir(world, second) / "manifest.sealed"
    (folder / "manifest.sealed").write_bytes(other.read_bytes())
    with pytest.raises(SealError):
        fresh(first).result()


def test_an_aggregate_only_result_is_sealed_to_the_domain(world: dict) -> None:
    request = run(world, counts, policy="aggregate")
    sealed = (result_dir(world, request) / "manifest.sealed").read_bytes()
    alice = world["identities"]["alice"]
    contexts = ResultSeal(request.id, world["alice"].peer_id, alice.peer_id)
    with pytest.raises(SealError):
        open_sealed(sealed, alice, contexts.manifest())
    node_key = load_or_create(world["node"].data_dir / "node.key")
    assert open_sealed(sealed, node_key, contexts.manifest())


def counts(df):
    import numpy as np

    return np.bincount(df["age"].to_numpy() % 4, minlength=4)
