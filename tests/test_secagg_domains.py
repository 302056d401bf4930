"""syft.aggregate end to end: secure aggregation across real domain processes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nodes import DomainProcess, person

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, function_source
from jupyter_syft.crypto.secagg import FRAC_BITS, SecAggError, SecAggServer
from jupyter_syft.errors import ConflictError, InvalidError, NotAuthorisedError
from jupyter_syft.wire import messages as m

NAMES = ["north", "south", "east", "west"]
ROWS = 200


def private_table(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.integers(0, 8, ROWS), "y": rng.normal(50.0, 10.0, ROWS)})


MOCK = pd.DataFrame({"x": np.arange(ROWS) % 8, "y": np.full(ROWS, 50.0)})
PRIVATE = {name: private_table(i) for i, name in enumerate(NAMES)}


class Approver:
    """Each owner reviews as a background thread: approves, or denies on the listed domains."""

    def __init__(self, admins: dict[str, AdminClient]) -> None:
        self.admins = admins
        self.deny: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for name, admin in list(self.admins.items()):
                try:
                    for review in admin.requests(status="pending"):
                        if name in self.deny:
                            review.deny("not for aggregation")
                        else:
                            review.approve()
                except Exception:  # a node killed by a test: its owner stops reviewing
                    self.admins.pop(name, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root: Path = tmp_path_factory.mktemp("secagg")
    _, scientist = person(root, "scientist")
    nodes, owners = {}, {}
    for name in NAMES:
        home, owners[name] = person(root, f"owner-{name}")
        nodes[name] = DomainProcess(root, name, home, "--job-timeout", "20")
    starters = [threading.Thread(target=node.start) for node in nodes.values()]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    approver = None
    try:
        admins = {}
        for name, node in nodes.items():
            assert node.address, f"domain {name} did not start"
            admin = AdminClient(NodeConnection(node.address, owners[name]))
            admin.create_dataset("diabetes", private=PRIVATE[name], mock=MOCK)
            admin.add_user(scientist.peer_id, "data_scientist", "scientist")
            admins[name] = admin
        approver = Approver(dict(admins))
        domains = {
            name: DomainClient(NodeConnection(node.address, scientist))
            for name, node in nodes.items()
        }
        yield {"nodes": nodes, "domains": domains, "approver": approver}
    finally:
        if approver is not None:
            approver.close()
        for node in nodes.values():
            node.kill()


def counts(df):
    import numpy as np

    return np.bincount(df["x"].to_numpy(), minlength=8)


def moments(df):
    import numpy as np

    y = df["y"].to_numpy()
    return np.array([y.sum(), y.mean(), (y**2).mean(), -y.min()])


def not_a_vector(df):
    return df


def three(world: dict) -> list[DomainClient]:
    return [world["domains"][name] for name in NAMES[:3]]


def test_integer_sum_is_exact_and_no_plain_vector_is_released(world: dict) -> None:
    result = syft.aggregate(three(world), counts, dataset="diabetes", op="sum", timeout=60)
    expected = sum(np.bincount(PRIVATE[name]["x"], minlength=8) for name in NAMES[:3])
    assert np.array_equal(result.value, expected)
    assert result.value.sum() == 3 * ROWS
    assert sorted(result.contributors) == sorted(NAMES[:3])
    assert result.dropped == {}
    # The scientist cannot fetch any single domain's vector, before or after the aggregation.
    for name in NAMES[:3]:
        domain = world["domains"][name]
        request = domain.get_request(result.requests[name])
        assert request.info.policy == "aggregate"
        assert request.info.status == "done"
        with pytest.raises(NotAuthorisedError, match="released only inside secure aggregation"):
            request.result()
        # A replayed or forged step is refused by the protocol's own checks.
        with pytest.raises(InvalidError):
            domain._connection.call(m.SecAggStep(request.id, b"not a frame"))


def test_float_sum_and_mean_within_the_stated_precision(world: dict) -> None:
    domains = three(world)
    expected = sum(moments(PRIVATE[name]) for name in NAMES[:3])
    tolerance = 3 * 2.0 ** -(FRAC_BITS + 1)  # n * 2^-(f+1), the library's stated bound
    total = syft.aggregate(domains, moments, dataset="diabetes", timeout=60)
    assert np.all(np.abs(total.value - expected) <= tolerance)
    mean = syft.aggregate(domains, moments, dataset="diabetes", op="mean", timeout=60)
    assert np.all(np.abs(mean.value - expected / 3) <= tolerance)


def test_a_result_that_is_not_a_vector_fails_the_requests_clearly(world: dict) -> None:
    with pytest.raises(SecAggError, match="only 0 domain"):
        syft.aggregate(three(world), not_a_vector, dataset="diabetes", length=4, timeout=60)
    [request] = world["domains"]["north"].requests(status="failed")[-1:]
    assert "non-empty 1-D vector" in request.info.error


def test_a_denying_domain_is_excluded_and_reported(world: dict) -> None:
    world["approver"].deny.add("west")
    try:
        domains = [world["domains"][name] for name in NAMES]
        result = syft.aggregate(domains, counts, dataset="diabetes", timeout=60)
    finally:
        world["approver"].deny.discard("west")
    expected = sum(np.bincount(PRIVATE[name]["x"], minlength=8) for name in NAMES[:3])
    assert np.array_equal(result.value, expected)
    assert sorted(result.contributors) == sorted(NAMES[:3])
    assert list(result.dropped) == ["west"]
    assert "denied by its owner: not for aggregation" in result.dropped["west"]


def test_a_domain_killed_after_the_key_shares_drops_out_and_the_rest_still_sum(
    world: dict,
) -> None:
    """Killed once masks are agreed (after round 1), before sending its masked input."""

    def kill_east(round_number: int) -> None:
        if round_number == 2:
            world["nodes"]["east"].kill()

    result = syft.aggregate(
        three(world), counts, dataset="diabetes", timeout=60, threshold=2, on_round=kill_east
    )
    expected = sum(np.bincount(PRIVATE[name]["x"], minlength=8) for name in ["north", "south"])
    assert np.array_equal(result.value, expected)
    assert sorted(result.contributors) == ["north", "south"]
    assert list(result.dropped) == ["east"]
    assert "round 2" in result.dropped["east"]


def test_replayed_and_out_of_order_frames_are_refused_by_the_domain(world: dict) -> None:
    """Drive the protocol by hand: a domain takes each round once, and in order."""
    domains = [*three(world)[:2], world["domains"]["west"]]  # "east" may be down by now
    code = function_source(counts)
    requests = {}
    for domain in domains:
        call = m.SubmitRequest(code, "counts", {"df": "diabetes"}, policy="aggregate")
        info = domain._connection.call(call)
        requests[domain.peer_id] = domain.request_type(domain._connection, info)
    for request in requests.values():
        assert request.wait(60).status == "done"
    by_peer = {d.peer_id: d for d in domains}

    def step(peer: str, frame: bytes) -> bytes:
        call = m.SecAggStep(requests[peer].id, frame)
        return by_peer[peer]._connection.call(call).frame

    server = SecAggServer(domains[0]._connection.identity, list(by_peer), 8)
    setup = server.setup_frames()
    first = sorted(by_peer)[0]
    for peer, frame in setup.items():
        server.receive(step(peer, frame))
    with pytest.raises(ConflictError, match="already aggregated once"):
        step(first, setup[first])  # the setup replayed
    key_lists = server.advance()
    for peer, frame in key_lists.items():
        server.receive(step(peer, frame))
    with pytest.raises(InvalidError):
        step(first, key_lists[first])  # round 1 replayed: the library refuses it
    deliveries = server.advance()
    other = sorted(by_peer)[1]
    with pytest.raises(InvalidError):
        step(first, deliveries[other])  # addressed to another domain
