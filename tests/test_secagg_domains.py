"""syft.aggregate end to end: secure aggregation across real domain processes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from nodes import Approver, person, start_all
from scipy import stats
from shared_domains import SharedDomains

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, function_source
from jupyter_syft.crypto import secagg_messages as sm
from jupyter_syft.crypto import shamir
from jupyter_syft.crypto.secagg import (
    FRAC_BITS,
    MAX_ABS,
    FixedPoint,
    Keystream,
    SecAggError,
    SecAggServer,
)
from jupyter_syft.errors import ConflictError, InvalidError, NotAuthorisedError
from jupyter_syft.wire import messages as m

NAMES = ["north", "south", "east", "west"]
ALL = [*NAMES, "centre"]  # a fifth domain, for dropouts among five
ROWS = 200
LEVEL = {name: i + 1 for i, name in enumerate(ALL)}  # the one-row "levels" dataset, per domain


def private_table(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.integers(0, 8, ROWS), "y": rng.normal(50.0, 10.0, ROWS)})


MOCK = pd.DataFrame({"x": np.arange(ROWS) % 8, "y": np.full(ROWS, 50.0)})
PRIVATE = {name: private_table(i) for i, name in enumerate(ALL)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, five_domains: SharedDomains) -> Iterator[dict]:
    """The five shared domains (conftest.py) with this module's datasets ("cohort" and
    "levels") and scientist."""
    _, scientist = person(tmp_path_factory.mktemp("secagg"), "scientist")
    nodes, owners = five_domains.up(ALL), five_domains.owners
    approver = None
    try:
        admins = {}
        for name in ALL:
            admin = five_domains.admin(name)
            admin.create_dataset("cohort", private=PRIVATE[name], mock=MOCK)
            levels = pd.DataFrame({"level": [LEVEL[name]]})
            admin.create_dataset("levels", private=levels, mock=levels.assign(level=[0]))
            admin.add_user(scientist.peer_id, "data_scientist", "scientist")
            admins[name] = admin
        approver = Approver(dict(admins), reason="not for aggregation")
        domains = {
            name: DomainClient(NodeConnection(node.address, scientist))
            for name, node in nodes.items()
        }
        yield {
            "nodes": nodes,
            "domains": domains,
            "approver": approver,
            "owners": owners,
            "scientist": scientist,
        }
    finally:
        if approver is not None:
            approver.close()


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
    result = syft.aggregate(three(world), counts, dataset="cohort", op="sum", timeout=60)
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
    total = syft.aggregate(domains, moments, dataset="cohort", timeout=60)
    assert np.all(np.abs(total.value - expected) <= tolerance)
    mean = syft.aggregate(domains, moments, dataset="cohort", op="mean", timeout=60)
    assert np.all(np.abs(mean.value - expected / 3) <= tolerance)


def test_a_result_that_is_not_a_vector_fails_the_requests_clearly(world: dict) -> None:
    with pytest.raises(SecAggError, match="only 0 domain"):
        syft.aggregate(three(world), not_a_vector, dataset="cohort", length=4, timeout=60)
    [request] = world["domains"]["north"].requests(status="failed")[-1:]
    assert "non-empty 1-D vector" in request.info.error


def test_a_denying_domain_is_excluded_and_reported(world: dict) -> None:
    world["approver"].deny.add("west")
    try:
        domains = [world["domains"][name] for name in NAMES]
        result = syft.aggregate(domains, counts, dataset="cohort", timeout=60)
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
        three(world), counts, dataset="cohort", timeout=60, threshold=2, on_round=kill_east
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
        call = m.SubmitRequest(code, "counts", {"df": "cohort"}, policy="aggregate")
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


# ---- five domains: dropouts after masking, the aggregator's view, out-of-range results -------

VIEW_LENGTH = 1 << 15  # enough entries for the uniformity tests to have power


def alive(world: dict) -> list[DomainClient]:
    """All five domains, restarting (in parallel) any that an earlier test killed."""
    nodes = world["nodes"]
    dead = [name for name in ALL if nodes[name].process.poll() is not None]
    start_all(nodes[name] for name in dead)
    for name in dead:
        node = nodes[name]
        assert node.process.poll() is None, f"domain {name} did not restart"
        admin = AdminClient(NodeConnection(node.address, world["owners"][name]))
        world["approver"].admins[name] = admin
        world["domains"][name] = DomainClient(NodeConnection(node.address, world["scientist"]))
    return [world["domains"][name] for name in ALL]


def all_counts() -> np.ndarray:
    return sum(np.bincount(PRIVATE[name]["x"], minlength=8) for name in ALL)


def zeros(df):
    import numpy as np

    return np.zeros(1 << 15)


def ramp(df):
    import numpy as np

    return np.linspace(-(2.0**20), 2.0**20, 1 << 15)


def too_large(df):
    import numpy as np

    level = float(df["level"].iloc[0])
    return np.array([level, 2.0**20 + 1 if level == 5 else level])


def not_a_number(df):
    import numpy as np

    level = float(df["level"].iloc[0])
    return np.array([level, np.nan if level == 5 else level])


def at_the_limit(df):
    import numpy as np

    level = float(df["level"].iloc[0])
    return np.array([level, 2.0**20 if level == 5 else level])


def test_what_the_aggregator_receives_from_a_domain_is_independent_of_its_input(
    world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mirrors the library test across processes: every frame the scientist's aggregator gets
    from real domains is recorded for two inputs (all zeros, and a ramp over the full range).

    North's masked vector, even with its self-mask removed (its seed rebuilt from the round 4
    shares), passes uniformity tests on its top and bottom bytes (the fixed-point encoding
    leaves low bits of integers zero, so a leak shows there), a KS test against uniform, has
    no correlation with the ramp, and the two views are indistinguishable; the sum is right.
    """
    domains = alive(world)
    received: list[tuple[SecAggServer, int, bytes]] = []
    receive = SecAggServer.receive

    def recording(self: SecAggServer, frame: bytes) -> str:
        received.append((self, self.round, frame))
        return receive(self, frame)

    monkeypatch.setattr(SecAggServer, "receive", recording)
    target = world["domains"]["north"].peer_id
    views = []
    for fn, value in ((zeros, np.zeros(VIEW_LENGTH)), (ramp, ramp(None))):
        received.clear()
        result = syft.aggregate(domains, fn, dataset="levels", length=VIEW_LENGTH, timeout=60)
        tolerance = len(ALL) * 2.0 ** -(FRAC_BITS + 1) + 1e-9
        assert np.all(np.abs(result.value - len(ALL) * value) <= tolerance)
        server = received[0][0]
        opened = [(round_number, sm.open_frame(frame)) for _, round_number, frame in received]
        [masked] = [e.message.vector for r, e in opened if r == 2 and e.sender == target]
        points = {peer: i + 1 for i, peer in enumerate(server.setup.clients)}
        shares = {points[e.sender]: e.message.seed_shares[target] for r, e in opened if r == 4}
        seed = shamir.combine(shares, server.setup.threshold)
        view = np.frombuffer(masked, dtype="<u8") - Keystream(VIEW_LENGTH)(seed)
        assert not np.array_equal(view, FixedPoint().encode(value, VIEW_LENGTH))
        for byte in (view >> np.uint64(56), view & np.uint64(0xFF)):
            counts = np.bincount(byte.astype(np.int64), minlength=256)
            assert stats.chisquare(counts).pvalue > 1e-4
        uniform = view.astype(np.float64) / 2.0**64
        assert stats.kstest(uniform, "uniform").pvalue > 1e-4
        if value.std() > 0:  # |r| ~ 1/sqrt(2^15) = 0.006 for independent vectors
            assert abs(np.corrcoef(uniform, value)[0, 1]) < 0.05
        views.append(view)
    tops = [np.bincount((v >> np.uint64(56)).astype(np.int64), minlength=256) for v in views]
    assert stats.chi2_contingency(np.array(tops)).pvalue > 1e-4
    assert stats.ks_2samp(views[0] / 2.0**64, views[1] / 2.0**64).pvalue > 1e-4


@pytest.mark.parametrize("fn", [too_large, not_a_number])
def test_a_domain_whose_result_is_out_of_range_is_dropped_and_the_rest_still_sum(
    world: dict, fn
) -> None:
    """The node checks an aggregate-only result when the job ends (service.result_vector):
    NaN or |x| > MAX_ABS fails that request, so the domain is left out before the protocol."""
    result = syft.aggregate(alive(world), fn, dataset="levels", length=2, timeout=60)
    assert np.array_equal(result.value, [10.0, 10.0])  # levels 1..4 of the other domains
    assert sorted(result.contributors) == sorted(NAMES)
    assert list(result.dropped) == ["centre"]
    reason = result.dropped["centre"]
    assert reason.startswith("its job failed: the aggregate-only result is unusable")
    assert f"must be finite, |x| <= {MAX_ABS:g}" in reason
    request = world["domains"]["centre"].get_request(result.requests["centre"])
    assert request.info.status == "failed"


def test_a_result_at_the_range_limit_is_summed(world: dict) -> None:
    result = syft.aggregate(alive(world), at_the_limit, dataset="levels", length=2, timeout=60)
    assert np.array_equal(result.value, [15.0, 10.0 + MAX_ABS])
    assert result.dropped == {}


@pytest.mark.parametrize(
    ("killed", "kill_round", "threshold"),
    [(["centre"], 3, None), (["east", "centre"], 4, 3)],
)
def test_domains_killed_after_masking_are_still_in_the_exact_sum(
    world: dict, killed: list[str], kill_round: int, threshold: int | None
) -> None:
    """Killed once their masked inputs arrived (U3), before the consistency round (3) or the
    unmasking (4): the others' shares rebuild their self-masks, so the sum over U3 (all five,
    Bonawitz et al.'s semantics) comes out exact; the dead are reported as dropped."""
    domains = alive(world)

    def kill(round_number: int) -> None:
        if round_number == kill_round:
            for name in killed:
                world["nodes"][name].kill()

    result = syft.aggregate(
        domains, counts, dataset="cohort", timeout=60, threshold=threshold, on_round=kill
    )
    assert np.array_equal(result.value, all_counts())
    assert sorted(result.contributors) == sorted(ALL)
    assert sorted(result.dropped) == sorted(killed)
    for name in killed:
        assert f"dropped out in round {kill_round}" in result.dropped[name]


def test_fewer_than_threshold_domains_left_after_masking_abort_and_reveal_nothing(
    world: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two of five killed before the consistency round, threshold 4: round 3 has 3 answers,
    the session aborts, no survivor is asked for its shares (no round 4) and no sum exists."""
    domains = alive(world)
    servers: list[SecAggServer] = []
    receive = SecAggServer.receive

    def recording(self: SecAggServer, frame: bytes) -> str:
        servers.append(self)
        return receive(self, frame)

    monkeypatch.setattr(SecAggServer, "receive", recording)
    rounds: list[int] = []

    def kill(round_number: int) -> None:
        rounds.append(round_number)
        if round_number == 3:
            world["nodes"]["east"].kill()
            world["nodes"]["centre"].kill()

    message = (
        r"only 3 of 5 domains answered round 3, fewer than the threshold 4: "
        r"the session is aborted and no sum is revealed"
    )
    with pytest.raises(SecAggError, match=message):
        syft.aggregate(domains, counts, dataset="cohort", timeout=60, on_round=kill)
    assert rounds == [0, 1, 2, 3]  # no UnmaskShares round: no share of any seed went out
    [server] = {id(s): s for s in servers}.values()
    assert server.setup.threshold == 4
    with pytest.raises(SecAggError, match="no sum is revealed"):
        server.result()
