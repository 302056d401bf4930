"""The foundation end to end: a real domain process, its owner and scientists, over the wire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
import torch
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection, shared_peer
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.crypto.seal import SealError
from jupyter_syft.errors import (
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
    RequestDenied,
    RequestFailed,
)
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import signed_part

PRIVATE = pd.DataFrame({"age": np.arange(1000) % 80 + 18, "bmi": np.linspace(18.0, 40.0, 1000)})
MOCK = pd.DataFrame({"age": np.full(50, 40), "bmi": np.full(50, 25.0)})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One domain with a table and a tensor dataset, its owner, two scientists, a stranger."""
    root = tmp_path_factory.mktemp("world")
    owner_home, owner = person(root, "owner")
    _, alice = person(root, "alice")
    _, bob = person(root, "bob")
    _, stranger = person(root, "stranger")
    node = DomainProcess(
        root,
        "clinic",
        owner_home,
        "--job-timeout",
        "3",
        "--job-memory-mb",
        "1024",
        "--max-result-mb",
        "8",
    )
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PRIVATE, mock=MOCK, description="ages and BMI")
        admin.create_dataset(
            "scans",
            private=torch.arange(24.0).reshape(6, 4),
            mock=torch.zeros(2, 4),
            description="a tensor",
            public=True,
        )
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        admin.add_user(bob.peer_id, "data_scientist", "bob")
        yield {
            "root": root,
            "node": node,
            "admin": admin,
            "alice": DomainClient(NodeConnection(node.address, alice)),
            "bob": DomainClient(NodeConnection(node.address, bob)),
            "stranger": DomainClient(NodeConnection(node.address, stranger)),
            "identities": {"alice": alice, "stranger": stranger, "owner": owner},
        }
    finally:
        node.kill()


def snapshot(admin: AdminClient) -> tuple:
    """Everything a refused call must leave unchanged (the audit may only gain 'refused')."""
    log = admin.audit_log(limit=10_000)
    kept = [(e.action, e.subject) for e in log.entries if e.action != "refused"]
    requests = [(r.id, r.info.status) for r in admin.requests()]
    return kept, requests, sorted(admin.datasets), log.chain_ok


def run_approved(world: dict, function, **inputs):
    request = world["alice"].request(function, **inputs)
    world["admin"].get_request(request.id)  # visible to the owner
    for review in world["admin"].requests(status="pending"):
        if review.id == request.id:
            review.approve()
    return request


# ---- happy path ----------------------------------------------------------------------------


def mean_bmi(df):
    return df["bmi"].mean()


def test_request_approve_result(world: dict) -> None:
    alice = world["alice"]
    datasets = alice.datasets
    assert set(datasets) == {"patients", "scans"}
    assert datasets["patients"].rows == 1000
    assert datasets["patients"].schema == {"age": "int64", "bmi": "double"}
    pd.testing.assert_frame_equal(pd.DataFrame(datasets["patients"].mock), MOCK)  # labelled

    request = alice.request(mean_bmi, df=datasets["patients"])
    assert request.status == "pending"
    [review] = [r for r in world["admin"].requests("pending") if r.id == request.id]
    assert review.requester == world["identities"]["alice"].peer_id
    assert 'df["bmi"].mean()' in review.code
    assert review.datasets == {"df": "patients"}
    review.approve()
    assert request.result(timeout=30) == pytest.approx(PRIVATE["bmi"].mean())
    assert request.status == "done"
    actions = [e.action for e in world["admin"].audit_log().entries]
    assert {"submit_request", "approved", "run_started", "run_done", "fetch_result"} <= set(actions)
    assert world["admin"].audit_log().chain_ok


def many_types(df):
    import numpy as np
    import torch

    return {
        "scalar": int(df["age"].max()),
        "array": np.asarray(df["bmi"][:5]),
        "tensor": torch.tensor(df["age"].to_numpy()[:3]),
        "frame": df.head(2),
        "list": [1.5, "text", None, (True, 2)],
    }


def test_result_types_round_trip(world: dict) -> None:
    value = run_approved(world, many_types, df="patients").result(timeout=30)
    assert value["scalar"] == 97
    np.testing.assert_array_equal(value["array"], PRIVATE["bmi"].to_numpy()[:5])
    assert torch.equal(value["tensor"], torch.tensor([18, 19, 20]))
    pd.testing.assert_frame_equal(value["frame"], PRIVATE.head(2))
    assert value["list"] == [1.5, "text", None, (True, 2)]


def column_sums(t):
    return t.sum(dim=0)


def test_tensor_dataset(world: dict) -> None:
    scans = world["alice"].datasets["scans"]
    assert torch.equal(scans.mock, torch.zeros(2, 4))
    result = run_approved(world, column_sums, t=scans).result(timeout=30)
    assert torch.equal(result.cpu(), torch.arange(24.0).reshape(6, 4).sum(dim=0))


def two_inputs(df, t):
    return float(df["bmi"].max()) + float(t.sum())


def test_two_datasets_in_one_request(world: dict) -> None:
    request = run_approved(world, two_inputs, df="patients", t="scans")
    assert request.result(timeout=30) == pytest.approx(40.0 + 276.0)


def big_result(df):
    import torch

    return torch.ones(512, 1024, dtype=torch.float64)  # 4 MiB: travels over Flight


def test_large_result_over_flight(world: dict) -> None:
    result = run_approved(world, big_result, df="patients").result(timeout=30)
    assert result.shape == (512, 1024) and float(result.sum()) == 512 * 1024


def test_deny_with_reason(world: dict) -> None:
    request = world["alice"].request(mean_bmi, df="patients")
    [review] = [r for r in world["admin"].requests("pending") if r.id == request.id]
    review.deny("too identifying")
    with pytest.raises(RequestDenied, match="too identifying"):
        request.result(timeout=10)
    with pytest.raises(ConflictError, match="denied, not pending"):
        review.approve()


def test_scientist_in_own_process_with_own_home(world: dict, tmp_path: Path) -> None:
    """A script run as a different person, found only by JUPYTER_SYFT_HOME."""
    home = tmp_path / "carol"
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    whoami = subprocess.run(
        [sys.executable, "-m", "jupyter_syft.cli", "whoami"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert oct((home / "identity.key").stat().st_mode & 0o777) == "0o600"
    world["admin"].add_user(whoami, "data_scientist", "carol")
    script = textwrap.dedent(f"""
        import jupyter_syft as syft
        domain = syft.connect({world["node"].address!r})
        def count(df):
            return len(df)
        request = domain.request(count, df=domain.datasets["patients"])
        print(syft.whoami(), request.id, flush=True)
        print(request.result(timeout=60), flush=True)
    """)
    (tmp_path / "carol.py").write_text(script)
    carol = subprocess.Popen(
        [sys.executable, "carol.py"], env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        peer_id, request_id = carol.stdout.readline().split()  # type: ignore[union-attr]
        assert peer_id == whoami
        review = world["admin"].get_request(request_id)
        assert review.info.requester == whoami
        world["admin"].requests("pending")  # owner sees it pending
        world["admin"]._connection.call(m.Decide(request_id, approve=True))
        assert carol.stdout.readline().strip() == "1000"  # type: ignore[union-attr]
    finally:
        carol.kill()
        carol.wait(timeout=10)
        carol.stdout.close()  # type: ignore[union-attr]


# ---- who may see what (invariants 1 and 3) -------------------------------------------------


def test_stranger_is_not_authorised(world: dict) -> None:
    stranger = world["stranger"]
    assert stranger.role == ""
    assert set(stranger.datasets) == {"scans"}  # only what the owner marked public
    assert torch.equal(stranger.datasets["scans"].mock, torch.zeros(2, 4))
    with pytest.raises(NotAuthorisedError, match="not a user"):
        stranger.request(mean_bmi, df="patients")
    with pytest.raises(NotAuthorisedError):
        stranger._connection.call(m.GetMock("patients"))
    with pytest.raises(NotAuthorisedError, match="not an admin"):
        stranger._connection.call(m.AddUser(stranger._connection.identity.peer_id, "admin"))
    with pytest.raises(NotAuthorisedError):
        world["alice"]._connection.call(m.ReadAudit())


def test_result_readable_only_by_requester(world: dict) -> None:
    request = run_approved(world, mean_bmi, df="patients")
    request.wait(timeout=30)
    bob = world["bob"]
    with pytest.raises(NotFoundError):
        bob._connection.call(m.FetchResult(request.id))
    with pytest.raises(NotFoundError):
        bob.get_request(request.id)
    assert request.id not in [r.id for r in bob.requests()]
    assert request.result() == pytest.approx(PRIVATE["bmi"].mean())
    owner_view = world["admin"].get_request(request.id)  # the owner sees the request...
    with pytest.raises(SealError, match="sealed to its requester"):
        owner_view.result()  # ...but the result is sealed to alice


def test_private_data_never_leaves_before_approval(world: dict) -> None:
    request = world["alice"].request(mean_bmi, df="patients")
    with pytest.raises(ConflictError, match="pending, not done"):
        world["alice"]._connection.call(m.FetchResult(request.id))
    # A mock ticket altered to point at the private file is refused by the Flight server.
    flight = world["alice"]._connection.flight
    from jupyter_syft.client.flight_client import DataTransferError

    forged = msgspec.msgpack.encode({"path": "assets/patients/private.arrow"})
    with pytest.raises(DataTransferError):
        flight.get(forged)
    world["admin"].get_request(request.id).deny("cleanup")


# ---- bad input: a clear error, nothing changes, the node keeps serving (invariant 5) -------


def raw_call(world: dict, frame: bytes) -> m.Struct:
    connection: NodeConnection = world["alice"]._connection
    raw = shared_peer(connection.identity).request(connection.multiaddr, m.DOMAIN_PROTOCOL, frame)
    return m.DOMAIN.decode_reply(raw)


def signed(world: dict, call_body: dict, who: str = "alice") -> bytes:
    identity = world["identities"][who]
    envelope = {
        "sender": identity.peer_id,
        "node": world["admin"].peer_id,
        "issued_at": time.time(),
        "nonce": os.urandom(16),
        "call": call_body,
    }
    body = msgspec.msgpack.encode(envelope)
    signature = identity.sign(signed_part(m.CALL_CONTEXT, body))
    return msgspec.msgpack.encode({"body": body, "signature": signature})


@pytest.mark.parametrize(
    "make_frame, expected",
    [
        (lambda w: b"\x00\xffnot msgpack", "not a signed call"),
        (lambda w: msgspec.msgpack.encode({"body": b"x"}), "not a signed call"),
        (lambda w: signed(w, {"type": "drop_all_tables"}), "unknown call|malformed"),
        (lambda w: signed(w, {"type": "get_mock", "dataset": 7}), "malformed"),
        (lambda w: signed(w, {"type": "hello", "extra": 1}), "malformed"),
    ],
    ids=["garbage", "missing-signature", "unknown-call", "wrong-type", "unknown-field"],
)
def test_malformed_and_unknown_messages(world: dict, make_frame, expected: str) -> None:
    before = snapshot(world["admin"])
    reply = raw_call(world, make_frame(world))
    assert isinstance(reply, m.Error) and reply.code == "bad_message"
    assert __import__("re").search(expected, reply.message), reply.message
    assert snapshot(world["admin"]) == before
    assert world["alice"].datasets["patients"].rows == 1000  # still serving


def test_wrong_signature_and_impostor(world: dict) -> None:
    before = snapshot(world["admin"])
    alice = world["identities"]["alice"]
    call = m.SubmitRequest("def f(df):\n    return 1\n", "f", {"df": "patients"})
    frame = msgspec.msgpack.decode(m.DOMAIN.sign_call(alice, world["admin"].peer_id, call))
    frame["signature"] = bytes(64)
    reply = raw_call(world, msgspec.msgpack.encode(frame))
    assert isinstance(reply, m.Error) and "signature does not verify" in reply.message
    # Signed by the stranger but sent over alice's connection: the sender must be the peer.
    impostor = m.DOMAIN.sign_call(world["identities"]["stranger"], world["admin"].peer_id, call)
    reply = raw_call(world, impostor)
    assert isinstance(reply, m.Error) and "does not match the connected peer" in reply.message
    assert snapshot(world["admin"]) == before


def test_replayed_and_misaddressed_calls(world: dict) -> None:
    alice = world["identities"]["alice"]
    call = m.SubmitRequest("def f(df):\n    return 1\n", "f", {"df": "patients"})
    frame = m.DOMAIN.sign_call(alice, world["admin"].peer_id, call)
    first = raw_call(world, frame)
    assert isinstance(first, m.RequestInfo)
    before = snapshot(world["admin"])
    replay = raw_call(world, frame)
    assert isinstance(replay, m.Error) and "replayed" in replay.message
    other_node = m.DOMAIN.sign_call(alice, world["identities"]["stranger"].peer_id, call)
    reply = raw_call(world, other_node)
    assert isinstance(reply, m.Error) and "another node" in reply.message
    assert snapshot(world["admin"]) == before
    world["admin"].get_request(first.request_id).deny("cleanup")


def test_oversized_frame(world: dict) -> None:
    import struct

    import trio

    from jupyter_syft.p2p import MAX_FRAME_BYTES, P2PHost

    async def send_oversized() -> bytes:
        async with P2PHost(world["identities"]["alice"], listen=None) as host:
            stream = await host.open_stream(world["node"].address, m.DOMAIN_PROTOCOL)
            await stream.write_raw(struct.pack(">I", MAX_FRAME_BYTES + 1) + b"\x00" * 64)
            return await stream.read_frame()

    before = snapshot(world["admin"])
    reply = m.DOMAIN.decode_reply(trio.run(send_oversized))
    assert isinstance(reply, m.Error) and reply.code == "bad_message"
    assert "exceeds" in reply.message
    assert snapshot(world["admin"]) == before
    assert world["alice"].datasets["patients"].rows == 1000


@pytest.mark.parametrize(
    "code, function_name, inputs, error, match",
    [
        ("def f(df):\n    return 1\n", "f", {"df": "no-such"}, NotFoundError, "no dataset"),
        ("def f(df):\n    return (\n", "f", {"df": "patients"}, InvalidError, "line 2"),
        ("def g(df):\n    return 1\n", "f", {"df": "patients"}, InvalidError, "'f'"),
        ("def f(df):\n    return 1\n", "f", {}, InvalidError, "at least one dataset"),
        ("def f(df):\n    return 1\n", "f", {"1x": "patients"}, InvalidError, "identifier"),
    ],
    ids=["unknown-dataset", "syntax-error", "missing-function", "no-inputs", "bad-argument"],
)
def test_invalid_requests_are_refused(world, code, function_name, inputs, error, match) -> None:
    before = snapshot(world["admin"])
    with pytest.raises(error, match=match):
        world["alice"].submit(code, function_name, inputs)
    assert snapshot(world["admin"]) == before


def raises(df):
    return df["no such column"]


def sleeps(df):
    import time

    time.sleep(60)


def hogs_memory(df):
    import numpy as np

    return np.ones(2**31).sum()


def crashes(df):
    import os

    os._exit(3)


def too_big(df):
    import numpy as np

    return np.zeros(2**21)  # 16 MiB, over the node's 8 MiB result limit


@pytest.mark.parametrize(
    "function, match",
    [
        (raises, r"KeyError(.|\n)*return df\[\"no such column\"\]"),
        (sleeps, "timed out after 3"),
        (hogs_memory, "memory"),
        (crashes, "crash"),
        (too_big, "larger than|limit"),
    ],
    ids=["raises", "timeout", "memory", "crash", "result-too-large"],
)
def test_failing_code_fails_only_its_request(world: dict, function, match: str) -> None:
    request = run_approved(world, function, df="patients")
    with pytest.raises(RequestFailed, match=match):
        request.result(timeout=60)
    assert not world["node"].data_dir.joinpath("results", request.id).exists()
    assert run_approved(world, mean_bmi, df="patients").result(timeout=30) > 0


def test_mock_schema_mismatch(world: dict) -> None:
    before = snapshot(world["admin"])
    wrong = MOCK.rename(columns={"bmi": "weight"})
    with pytest.raises(InvalidError, match="bmi"):
        world["admin"].create_dataset("bad", private=PRIVATE, mock=wrong)
    with pytest.raises(InvalidError, match=r"shape|dtype"):
        world["admin"].create_dataset("bad", private=torch.zeros(3, 4), mock=torch.zeros(3, 5))
    # The node checks too, for an owner tool that skips the client-side check.
    from jupyter_syft.wire import values

    connection = world["admin"]._connection
    tickets = connection.call(m.BeginUpload("bad"))
    connection.flight.put(tickets.private_ticket, values.data_to_table(PRIVATE))
    connection.flight.put(tickets.mock_ticket, values.data_to_table(wrong))
    with pytest.raises(InvalidError, match="mock does not match"):
        connection.call(m.CommitUpload(tickets.upload_id))
    assert snapshot(world["admin"]) == before


def test_dataset_names_and_duplicates(world: dict) -> None:
    before = snapshot(world["admin"])
    with pytest.raises(InvalidError, match="dataset name"):
        world["admin"].create_dataset("../escape", private=PRIVATE, mock=MOCK)
    with pytest.raises(ConflictError, match="already exists"):
        world["admin"].create_dataset("patients", private=PRIVATE, mock=MOCK)
    assert snapshot(world["admin"]) == before


def test_domain_accepts_only_noise(world: dict) -> None:
    import trio
    from dialers import assert_only_noise_accepted

    trio.run(assert_only_noise_accepted, world["node"].address)
    assert world["alice"].datasets["patients"].rows == 1000


# ---- restart and crash (invariant 6) -------------------------------------------------------


def slow_count(df):
    import time

    time.sleep(2)
    return len(df)


def test_restart_keeps_everything_and_resumes_interrupted_jobs(tmp_path: Path) -> None:
    owner_home, owner = person(tmp_path, "owner")
    _, alice = person(tmp_path, "alice")
    node = DomainProcess(tmp_path, "keeps", owner_home, "--listen", "/ip4/127.0.0.1/tcp/0")
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PRIVATE, mock=MOCK)
        admin.add_user(alice.peer_id)
        scientist = DomainClient(NodeConnection(node.address, alice))
        finished = scientist.request(mean_bmi, df="patients")
        admin.get_request(finished.id)
        admin._connection.call(m.Decide(finished.id, approve=True))
        expected = finished.result(timeout=30)
        pending = scientist.request(mean_bmi, df="patients")
        interrupted = scientist.request(slow_count, df="patients")
        admin._connection.call(m.Decide(interrupted.id, approve=True))
        deadline = time.monotonic() + 20
        while interrupted.status != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        node.kill()  # a crash mid-job: SIGKILL, no clean shutdown

        node.start()
        admin = AdminClient(NodeConnection(node.address, owner))
        assert admin.peer_id == node.address.rsplit("/", 1)[1]
        scientist = DomainClient(NodeConnection(node.address, alice))
        assert scientist.datasets["patients"].rows == 1000
        assert scientist.get_request(finished.id).result() == expected
        assert scientist.get_request(pending.id).status == "pending"
        assert scientist.get_request(interrupted.id).result(timeout=30) == 1000
        log = admin.audit_log(limit=1000)
        assert log.chain_ok and "run_requeued" in [e.action for e in log.entries]
        assert node.stop(signal.SIGINT) == 0
        assert not (node.data_dir / "node.json").exists()
    finally:
        node.kill()


def test_audit_log_is_append_only_and_tamper_evident(tmp_path: Path) -> None:
    import sqlite3

    from jupyter_syft.domain.store import Store

    store = Store(tmp_path / "d")
    store.initialise("d", "owner")
    store.audit("alice", "read_mock", "patients")
    store.audit("alice", "fetch_result", "r1")
    assert store.verify_audit()
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._db.execute("DELETE FROM audit")
    store.close()
    raw = sqlite3.connect(tmp_path / "d" / "domain.sqlite")
    raw.execute("DROP TRIGGER audit_no_update")
    raw.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 2")
    raw.commit()
    raw.close()
    store = Store(tmp_path / "d")
    assert not store.verify_audit()
    store.close()


def test_domain_start_with_a_bad_listen_address_says_why(tmp_path: Path) -> None:
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(tmp_path / "home")}
    command = [
        sys.executable,
        "-m",
        "jupyter_syft.cli",
        "domain",
        "start",
        "--name",
        "x",
        "--data-dir",
        str(tmp_path / "d"),
        "--listen",
        "not-a-multiaddr",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "could not run: cannot listen on not-a-multiaddr" in done.stderr
    assert "Traceback" not in done.stderr
