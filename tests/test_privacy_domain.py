"""Differential privacy across real processes: a domain node, its owner, several scientists.

Budgets, auto-approved and reviewed DP queries, refusals that charge nothing, 50 requests racing
for the last units, restarts, and DP-SGD on scikit-learn's breast-cancer table.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from nodes import DomainProcess, person

from jupyter_syft.client import connection
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.privacy import DPResult
from jupyter_syft.errors import (
    BudgetExhausted,
    ConflictError,
    InvalidError,
    NotAuthorisedError,
    NotFoundError,
)
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m

ROWS = 2000
RNG = np.random.default_rng(0)
PATIENTS = pd.DataFrame(
    {
        "age": RNG.integers(18, 90, ROWS),
        "bmi": RNG.uniform(16.0, 45.0, ROWS),
        "sex": RNG.choice(["F", "M"], ROWS),
        "smoker": RNG.random(ROWS) < 0.3,
    }
)
MOCK = pd.DataFrame(
    {"age": [40] * 20, "bmi": [25.0] * 20, "sex": ["F"] * 20, "smoker": [False] * 20}
)


def close_peers(identities: list[Identity]) -> None:
    """Stop these people's libp2p hosts. Left running, their background dialling (which draws
    from Python's global `random`) goes on for the whole session and can trip Hypothesis's
    check that nothing else uses `random` while it generates examples in other tests."""
    for identity in identities:
        peer = connection._peers.pop(identity.peer_id, None)
        if peer is not None:
            peer.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A domain whose owner auto-approves DP queries on "patients" (up to ε 0.5 each)."""
    root = tmp_path_factory.mktemp("privacy")
    owner_home, owner = person(root, "owner")
    node = DomainProcess(root, "clinic", owner_home, "--job-timeout", "60")
    people = [owner]
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PATIENTS, mock=MOCK, description="synthetic")
        admin.create_dataset("visits", private=PATIENTS, mock=MOCK, description="reviewed")
        admin.create_dataset("scans", private=torch.zeros(4, 2), mock=torch.zeros(1, 2))
        admin.set_policy("patients", auto_approve=True, max_query_epsilon=0.5)
        yield {"root": root, "node": node, "admin": admin, "people": people}
    finally:
        node.kill()
        close_peers(people)


def scientist(world: dict[str, Any], budgets: dict[str, tuple[float, float]]) -> DomainClient:
    """A new data scientist with these (ε, δ) budgets, by dataset."""
    _, identity = person(world["root"], f"scientist{len(world['people'])}")
    world["people"].append(identity)
    admin: AdminClient = world["admin"]
    admin.add_user(identity.peer_id)
    for dataset, (epsilon, delta) in budgets.items():
        admin.set_budget(identity.peer_id, dataset, epsilon, delta)
    return DomainClient(NodeConnection(world["node"].address, identity))


def peer_of(client: DomainClient) -> str:
    return client._connection.identity.peer_id


def ledger_state(world: dict[str, Any], client: DomainClient) -> tuple:
    """What a refused query must leave unchanged: charges, requests, and the audit (bar
    'refused' entries)."""
    admin: AdminClient = world["admin"]
    charges = [(b.dataset, b.charges) for b in admin.budgets(peer_of(client)).values()]
    requests = [(r.id, r.info.status) for r in admin.requests()]
    log = admin.audit_log(limit=100_000)
    kept = [(e.action, e.subject) for e in log.entries if e.action != "refused"]
    return charges, requests, kept, log.chain_ok


# ---- auto-approved DP queries --------------------------------------------------------------


def test_auto_approved_mean_shows_value_cost_and_budget_left(world: dict[str, Any]) -> None:
    alice = scientist(world, {"patients": (1.0, 0.0)})
    assert alice.policy("patients").auto_approve
    request = alice.datasets["patients"].dp.mean("bmi", bounds=(15, 50), epsilon=0.1)
    assert request.info.status == "done"  # no human in the loop
    result = request.result()
    assert isinstance(result, DPResult)
    true_mean = PATIENTS["bmi"].mean()
    scale = (50 - 15) / ROWS / 0.1
    assert result.accuracy == pytest.approx(scale * math.log(20), rel=1e-6)
    assert abs(result.value - true_mean) < 10 * scale  # P(fail) = e^-10
    assert (result.epsilon, result.epsilon_left) == (0.1, 0.9)
    assert "0.9 left" in repr(request)
    budget = alice.budget("patients")
    assert (budget.epsilon_spent, budget.epsilon_left) == (0.1, 0.9)
    assert [c.request_id for c in budget.charges] == [request.id]
    assert "0.9 left" in budget._repr_html_()
    # The owner sees the same ledger, and the audit log records the charge.
    owner_view = world["admin"].budget("patients", peer_id=peer_of(alice))
    assert owner_view.charges == budget.charges
    log = world["admin"].audit_log(limit=10_000)
    charge = [e for e in log.entries if e.action == "dp_charge" and e.subject == request.id]
    assert len(charge) == 1 and '"epsilon_left": 0.9' in charge[0].detail
    assert log.chain_ok


def test_grouped_queries_and_histograms_come_back_by_key(world: dict[str, Any]) -> None:
    bob = scientist(world, {"patients": (2.0, 0.0)})
    patients = bob.datasets["patients"].dp
    means = patients.mean("bmi", bounds=(15, 50), epsilon=0.5, by="sex", groups=["F", "M"])
    assert set(means.result().value) == {"F", "M"}
    for sex, value in means.result().value.items():
        assert abs(value - PATIENTS.loc[PATIENTS.sex == sex, "bmi"].mean()) < 2
    smokers = patients.histogram("smoker", categories=[True, False], epsilon=0.5).result()
    assert abs(smokers.value[True] - PATIENTS.smoker.sum()) < 60  # scale 4: P(fail) ~ e^-15
    by_sex = patients.count(epsilon=0.5, by="sex", groups=["F", "M", "X"]).result()
    assert abs(by_sex.value["X"]) < 60 and by_sex.accuracy is not None
    median = patients.quantile("age", q=0.5, bounds=(0, 120), epsilon=0.5).result()
    assert abs(median.value - PATIENTS.age.median()) < 5
    assert bob.budget("patients").epsilon_left == 0.0


# ---- refusals charge nothing -------------------------------------------------------------

REFUSALS = [
    ("no bounds", lambda ds: ds.dp.mean("bmi", epsilon=0.1), InvalidError, "needs public bounds"),
    (
        "inverted bounds",
        lambda ds: ds.dp.mean("bmi", bounds=(50, 15), epsilon=0.1),
        InvalidError,
        "low < high",
    ),
    ("zero epsilon", lambda ds: ds.dp.count(epsilon=0.0), InvalidError, "greater than 0"),
    ("negative epsilon", lambda ds: ds.dp.count(epsilon=-1.0), InvalidError, "greater than 0"),
    ("nan epsilon", lambda ds: ds.dp.count(epsilon=math.nan), InvalidError, "finite"),
    ("infinite epsilon", lambda ds: ds.dp.count(epsilon=math.inf), InvalidError, "finite"),
    ("above the cap", lambda ds: ds.dp.count(epsilon=0.6), InvalidError, "per-query cap"),
    (
        "unknown column",
        lambda ds: ds.dp.sum("weight", bounds=(0, 1), epsilon=0.1),
        InvalidError,
        "no column 'weight'",
    ),
    (
        "non-numeric column",
        lambda ds: ds.dp.mean("sex", bounds=(0, 1), epsilon=0.1),
        InvalidError,
        "not numeric",
    ),
    (
        "budget exhausted",
        lambda ds: ds.dp.count(epsilon=0.3),
        BudgetExhausted,
        "exhausted on 'patients'.*left: epsilon 0.2",
    ),
]


@pytest.mark.parametrize(
    "ask, error, match", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_queries_charge_nothing(world: dict[str, Any], ask, error, match: str) -> None:
    carol = scientist(world, {"patients": (0.3, 0.0)})
    patients = carol.datasets["patients"]
    patients.dp.count(epsilon=0.1)
    before = ledger_state(world, carol)
    with pytest.raises(error, match=match):
        ask(patients)
    assert ledger_state(world, carol) == before
    assert carol.budget("patients").epsilon_left == pytest.approx(0.2)


def test_no_budget_unknown_dataset_or_a_tensor_are_refused(world: dict[str, Any]) -> None:
    dave = scientist(world, {})
    before = ledger_state(world, dave)
    with pytest.raises(BudgetExhausted, match="no privacy budget on 'patients'"):
        dave.datasets["patients"].dp.count(epsilon=0.1)
    connection = dave._connection
    with pytest.raises(NotFoundError, match="no dataset named 'nope'"):
        connection.call(m.SubmitDPQuery("nope", m.DPQuery("count", 0.1)))
    with pytest.raises(InvalidError, match="DP needs a table"):
        connection.call(m.SubmitDPQuery("scans", m.DPQuery("count", 0.1)))
    assert ledger_state(world, dave) == before
    assert len(dave.budgets()) == 0


def test_budget_goes_down_to_zero_then_refuses(world: dict[str, Any]) -> None:
    erin = scientist(world, {"patients": (0.3, 0.0)})
    patients = erin.datasets["patients"]
    left = [patients.dp.count(epsilon=0.1).result().epsilon_left for _ in range(3)]
    assert left == [pytest.approx(0.2), pytest.approx(0.1), 0.0]
    with pytest.raises(BudgetExhausted, match="left: epsilon 0"):
        patients.dp.count(epsilon=0.1)
    assert len(erin.budget("patients").charges) == 3


# ---- owner review, budgets and policy ------------------------------------------------------


def test_reviewed_queries_are_charged_on_approval_only(world: dict[str, Any]) -> None:
    admin: AdminClient = world["admin"]
    frank = scientist(world, {"visits": (0.5, 0.0)})
    visits = frank.datasets["visits"].dp
    denied = visits.mean("age", bounds=(0, 120), epsilon=0.3)
    approved = visits.mean("age", bounds=(0, 120), epsilon=0.3)
    assert denied.info.status == approved.info.status == "pending"  # no auto-approval here
    assert frank.budget("visits").charges == []  # nothing charged while pending
    review = admin.get_request(denied.id)
    assert (review.info.epsilon, review.info.delta) == (0.3, 0.0)
    assert review.info.privacy == denied.query and "dp.mean('age'" in review.code
    review.deny("not now")
    admin.get_request(approved.id).approve()
    assert approved.result(timeout=30).epsilon_left == pytest.approx(0.2)
    assert [c.request_id for c in frank.budget("visits").charges] == [approved.id]
    # A request that fit when submitted but no longer does: approval is refused, nothing moves.
    late = visits.count(epsilon=0.2)
    too_late = visits.count(epsilon=0.2)
    admin.get_request(late.id).approve()
    with pytest.raises(BudgetExhausted):
        admin.get_request(too_late.id).approve()
    assert frank.get_request(too_late.id).status == "pending"
    assert frank.budget("visits").epsilon_left == 0.0
    admin.get_request(too_late.id).deny("no budget left")


def test_who_may_see_and_set_budgets_and_policy(world: dict[str, Any]) -> None:
    admin: AdminClient = world["admin"]
    gina = scientist(world, {"patients": (1.0, 1e-6)})
    hal = scientist(world, {})
    with pytest.raises(NotAuthorisedError, match="another user's budget"):
        hal._connection.call(m.GetBudget("patients", peer_of(gina)))
    with pytest.raises(NotAuthorisedError):
        hal._connection.call(m.SetBudget(peer_of(hal), "patients", 100.0))
    with pytest.raises(NotAuthorisedError):
        hal._connection.call(m.SetPolicy("patients", True, 100.0))
    with pytest.raises(NotFoundError, match="not a user"):
        admin.set_budget("12D3KooWNotAUserAtAll", "patients", 1.0)
    with pytest.raises(InvalidError, match="delta"):
        admin.set_budget(peer_of(gina), "patients", 1.0, delta=1.5)
    with pytest.raises(InvalidError, match="max_query_epsilon"):
        admin.set_policy("patients", True, max_query_epsilon=0.0)
    gina.datasets["patients"].dp.count(epsilon=0.4)
    with pytest.raises(ConflictError, match=r"already spent epsilon 0\.4"):
        admin.set_budget(peer_of(gina), "patients", 0.3)
    assert admin.set_budget(peer_of(gina), "patients", 0.4, 1e-6).epsilon_left == 0.0
    assert list(gina.budgets()) == ["patients"]
    assert gina.budget("patients").delta == 1e-6


def test_fifty_concurrent_requests_racing_for_the_last_units(world: dict[str, Any]) -> None:
    """Invariant 4 over the wire: 50 requests at once for 0.01 each, with 0.05 left."""
    ivan = scientist(world, {"patients": (1.0, 0.0)})
    patients = ivan.datasets["patients"]
    patients.dp.count(epsilon=0.5)
    patients.dp.count(epsilon=0.45)
    start = threading.Barrier(50)

    def ask(_: int) -> str:
        start.wait()
        try:
            result = patients.dp.mean("bmi", bounds=(15, 50), epsilon=0.01).result(timeout=60)
        except BudgetExhausted:
            return "refused"
        assert result.epsilon == 0.01
        return "answered"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(ask, range(50)))
    assert outcomes.count("answered") == 5 and outcomes.count("refused") == 45
    budget = ivan.budget("patients")
    assert (budget.epsilon_spent, budget.epsilon_left, len(budget.charges)) == (1.0, 0.0, 7)


# ---- DP-SGD ---------------------------------------------------------------------------------


def draw(df):
    import numpy
    import torch

    return [float(torch.randn(1)), float(numpy.random.rand())]


def test_each_job_draws_fresh_randomness(world: dict[str, Any]) -> None:
    """Job processes fork from one parent: without a reseed they would all repeat its random
    stream, and DP-SGD noise would repeat across requests."""
    lee = scientist(world, {})
    draws = []
    for _ in range(2):
        request = lee.request(draw, df="patients")
        world["admin"].get_request(request.id).approve()
        draws.append(request.result(timeout=30))
    assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]


def make_classifier():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def test_dp_sgd_on_breast_cancer_reaches_stated_accuracy(world: dict[str, Any]) -> None:
    """ε = 3, δ = 1e-5 for a changed row (Opacus: ε = 1.5 for an added or removed row): the
    model reaches ≥ 0.85 accuracy on held-out rows (typically 0.92; 0.96 without DP)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame, features = data.frame, list(data.feature_names)
    order = np.random.default_rng(0).permutation(len(frame))
    train, test = frame.iloc[order[:455]], frame.iloc[order[455:]]
    # Public bounds: the feature ranges published with the dataset; the mock is drawn in them.
    bounds = [(float(frame[c].min()), float(frame[c].max())) for c in features]
    rng = np.random.default_rng(1)
    mock = pd.DataFrame(
        {c: rng.uniform(lo, hi, 20) for c, (lo, hi) in zip(features, bounds, strict=True)}
    )
    mock["target"] = rng.integers(0, 2, 20)
    admin: AdminClient = world["admin"]
    admin.create_dataset("cancer", private=train.reset_index(drop=True), mock=mock)
    judy = scientist(world, {"cancer": (4.0, 2e-5)})
    cancer = judy.datasets["cancer"].dp

    def ask(epsilon: float, **options: Any):
        return cancer.train(
            make_classifier,
            features=features,
            label="target",
            epsilon=epsilon,
            delta=1e-5,
            feature_bounds=bounds,
            epochs=20,
            batch_size=64,
            learning_rate=0.5,
            **options,
        )

    with pytest.raises(InvalidError, match="too small"):
        ask(1e-4)
    with pytest.raises(InvalidError, match="delta must be"):
        cancer.train(make_classifier, features=features, label="target", epsilon=1.0, delta=0.01)
    request = ask(3.0)
    assert request.info.status == "pending"  # model code: always reviewed
    review = admin.get_request(request.id)
    assert "def make_classifier" in review.code and review.info.epsilon == 3.0
    review.approve()  # charged here, before training starts
    assert judy.budget("cancer").epsilon_spent == 3.0
    model = request.result(timeout=60)
    assert (model.epsilon, model.delta) == (3.0, 1e-5) and model.steps > 0
    classifier = model.load_into(make_classifier())
    x = np.stack(
        [
            (np.clip(test[c], lo, hi) - lo) / (hi - lo)
            for c, (lo, hi) in zip(features, bounds, strict=True)
        ],
        1,
    )
    with torch.no_grad():
        predicted = classifier(torch.tensor(x, dtype=torch.float32)).argmax(1).numpy()
    accuracy = float(np.mean(predicted == test["target"].to_numpy()))
    assert accuracy >= 0.85, accuracy
    from safetensors import safe_open

    path = world["root"] / "cancer.safetensors"
    model.save(path)
    with safe_open(str(path), "pt") as weights:
        assert weights.metadata()["epsilon"] == "3.0"
    # What is left (ε 1, δ 1e-5) cannot pay for another ε 3 run: refused, nothing charged.
    with pytest.raises(BudgetExhausted):
        ask(3.0)
    budget = judy.budget("cancer")
    assert (budget.epsilon_left, budget.delta_left, len(budget.charges)) == (1.0, 1e-5, 1)


# ---- restart -------------------------------------------------------------------------------


def test_policy_budgets_and_ledger_survive_a_crash(tmp_path: Path) -> None:
    owner_home, owner = person(tmp_path, "owner")
    _, kim = person(tmp_path, "kim")
    node = DomainProcess(tmp_path, "durable", owner_home)
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("patients", private=PATIENTS, mock=MOCK)
        admin.add_user(kim.peer_id)
        admin.set_budget(kim.peer_id, "patients", 1.0, 1e-6)
        admin.set_policy("patients", auto_approve=True, max_query_epsilon=0.3)
        client = DomainClient(NodeConnection(node.address, kim))
        client.datasets["patients"].dp.sum("bmi", bounds=(15, 50), epsilon=0.25).result()
        before = client.budget("patients").info
        node.kill()  # SIGKILL: no clean shutdown

        node.start()
        admin = AdminClient(NodeConnection(node.address, owner))
        client = DomainClient(NodeConnection(node.address, kim))
        assert client.budget("patients").info == before
        assert client.policy("patients") == m.PolicyInfo("patients", True, 0.3)
        with pytest.raises(InvalidError, match=r"cap of 0\.3"):
            client.datasets["patients"].dp.count(epsilon=0.4)
        after = client.datasets["patients"].dp.count(epsilon=0.3).result()
        assert after.epsilon_left == pytest.approx(0.45)
        log = admin.audit_log(limit=10_000)
        actions = [e.action for e in log.entries]
        assert log.chain_ok and actions.count("dp_charge") == 2
        assert {"set_budget", "set_policy"} <= set(actions)
        assert node.stop(signal.SIGINT) == 0
    finally:
        node.kill()
        close_peers([owner, kim])
