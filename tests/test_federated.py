"""syft.federated.train across real domain processes: one approval, many rounds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from nodes import Approver, person
from shared_domains import SharedDomains
from sklearn.datasets import load_diabetes

import jupyter_syft as syft
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.client.federated import DP, FederatedError
from jupyter_syft.errors import BudgetExhausted, ConflictError, InvalidError
from jupyter_syft.federated.weights import to_safetensors
from jupyter_syft.wire import messages as m

NAMES = ["north", "south", "east", "west"]
FEATURES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def diabetes_splits() -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    data = load_diabetes(as_frame=True).frame
    data = data.sample(frac=1.0, random_state=0).reset_index(drop=True)
    test, train = data.iloc[:80], data.iloc[80:]
    splits = np.array_split(np.arange(len(train)), len(NAMES))
    return {
        n: train.iloc[idx].reset_index(drop=True) for n, idx in zip(NAMES, splits, strict=True)
    }, test


PRIVATE, TEST = diabetes_splits()
# "west" holds one impossible age: the failing model below raises there, and only there.
PRIVATE["west"].loc[0, "age"] = 99.0
MOCK = PRIVATE["north"].copy()
MOCK[:] = 0.0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, five_domains: SharedDomains) -> Iterator[dict]:
    """Four of the shared domains (conftest.py) with this module's dataset and scientist."""
    _, scientist = person(tmp_path_factory.mktemp("federated"), "scientist")
    nodes = five_domains.up(NAMES)
    approver = None
    try:
        admins = {}
        for name in NAMES:
            admin = five_domains.admin(name)
            admin.create_dataset("diabetes", private=PRIVATE[name], mock=MOCK)
            admin.add_user(scientist.peer_id, "data_scientist", "scientist")
            admin.set_budget(scientist.peer_id, "diabetes", epsilon=10.0, delta=1e-4)
            admins[name] = admin
        approver = Approver(dict(admins))
        domains = {
            name: DomainClient(NodeConnection(node.address, scientist))
            for name, node in nodes.items()
        }
        yield {"nodes": nodes, "domains": domains, "admins": admins, "approver": approver}
    finally:
        if approver is not None:
            approver.close()


def make_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def failing_on_old_people():
    import torch

    class Picky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(10, 1)

        def forward(self, x):
            if (x[:, 0] > 50).any():
                raise ValueError("an age above 50 years: refusing to train")
            return self.linear(x)

    return Picky()


def three(world: dict) -> list[DomainClient]:
    return [world["domains"][name] for name in NAMES[:3]]


def test_plain_federated_averaging_learns_with_one_approval_per_domain(world: dict) -> None:
    model, history = syft.federated.train(
        make_model, three(world), dataset="diabetes", target="target", rounds=3,
        local_epochs=5, lr=0.05, secure_aggregation=False,
        validation=(TEST[FEATURES], TEST["target"]), show=False,
    )  # fmt: skip
    assert len(history.rounds) == 3
    assert all(sorted(r.contributors) == sorted(NAMES[:3]) for r in history.rounds)
    mse = history.metric("mse")
    assert mse[-1] < mse[0] < float(np.mean((TEST["target"] - 0.0) ** 2))
    assert all(loss is not None and loss > 0 for loss in history.train_loss)
    with torch.no_grad():
        predictions = model(torch.tensor(TEST[FEATURES].to_numpy(), dtype=torch.float32))
    assert np.isclose(np.mean((predictions.numpy().ravel() - TEST["target"]) ** 2), mse[-1])
    # One plan per domain, approved once; its rounds ran without review, and it is now done.
    for name in NAMES[:3]:
        domain = world["domains"][name]
        plan = domain.get_request(history.plans[name]).info
        assert plan.policy == "federated" and plan.status == "done"
        assert plan.plan is not None and plan.plan.rounds == 3
        [review] = [r for r in world["admins"][name].requests() if r.id == plan.request_id]
        assert "federated plan: 3 rounds x 5 local epochs" in review._repr_html_()
        for round_number, request_id in enumerate(history.requests[name]):
            info = domain.get_request(request_id).info
            assert info.plan_round == (plan.request_id, round_number)
            assert info.status == "done" and info.policy == "raw"
        log = world["admins"][name].audit_log().entries
        approvals = [e for e in log if e.action == "approved" and e.actor == "plan"]
        assert len(approvals) == 3


def test_secure_aggregation_with_dp_charges_each_round(world: dict) -> None:
    domains = three(world)
    before = {d.name: d._connection.call(m.GetBudget("diabetes")).budgets[0] for d in domains}
    _, history = syft.federated.train(
        make_model, domains, dataset="diabetes", target="target", rounds=2, local_epochs=2,
        lr=0.05, dp=DP(epsilon=2.0, delta=1e-5), secure_aggregation=True,
        validation=(TEST[FEATURES], TEST["target"]), show=False,
    )  # fmt: skip
    assert len(history.rounds) == 2
    assert all(sorted(r.contributors) == sorted(NAMES[:3]) for r in history.rounds)
    assert history.train_loss == [None, None]  # not released under DP
    assert all(np.isfinite(v) for v in history.metric("mse"))
    for domain in domains:
        plan = domain.get_request(history.plans[domain.name]).info
        assert (plan.epsilon, plan.delta) == (2.0, 1e-5)  # the owner reviewed the whole cost
        after = domain._connection.call(m.GetBudget("diabetes")).budgets[0]
        assert after.epsilon_spent == pytest.approx(before[domain.name].epsilon_spent + 2.0)
        # Each round's update was aggregate-only: the scientist cannot read any one of them.
        for request_id in history.requests[domain.name]:
            request = domain.get_request(request_id)
            assert request.info.policy == "aggregate" and request.info.epsilon == 1.0
            with pytest.raises(syft.NotAuthorisedError):
                request.result()


def test_a_plan_asking_for_more_epsilon_than_the_budget_is_refused(world: dict) -> None:
    with pytest.raises(FederatedError, match="privacy budget exhausted"):
        syft.federated.train(
            make_model, three(world), dataset="diabetes", target="target", rounds=2,
            dp=DP(epsilon=50.0, delta=1e-5), show=False,
        )  # fmt: skip
    domain = world["domains"]["north"]
    plan = m.FederatedPlan("def f(): pass", "f", FEATURES, "target", rounds=2, epsilon=50.0,
                           delta=1e-5)  # fmt: skip
    with pytest.raises(BudgetExhausted):
        domain._connection.call(m.SubmitFederatedPlan("diabetes", plan))
    assert not domain.requests(status="pending")  # nothing was recorded


def test_a_domain_whose_budget_runs_out_stops_training_there(world: dict) -> None:
    domains = [world["domains"][name] for name in ["north", "south"]]
    owner, scientist = world["admins"]["south"], domains[0]._connection.identity.peer_id

    def stop_south(round_number: int) -> None:
        if round_number == 1:  # the owner freezes the budget at what is spent so far
            spent = owner.budget("diabetes", scientist)
            owner.set_budget(scientist, "diabetes", spent.epsilon_spent, spent.delta_spent)

    try:
        _, history = syft.federated.train(
            make_model, domains, dataset="diabetes", target="target", rounds=3, lr=0.05,
            dp=DP(epsilon=3.0, delta=1e-5), secure_aggregation=False, on_round=stop_south,
            show=False,
        )  # fmt: skip
    finally:
        owner.set_budget(scientist, "diabetes", epsilon=10.0, delta=1e-4)
    assert [sorted(r.contributors) for r in history.rounds] == [
        ["north", "south"],
        ["north"],
        ["north"],
    ]
    assert "privacy budget exhausted" in history.excluded["south"]
    assert len(history.requests["south"]) == 1  # the refused round recorded nothing


def test_a_failing_domain_is_left_out_and_then_excluded(world: dict) -> None:
    domains = [world["domains"][name] for name in ["north", "south", "west"]]
    _, history = syft.federated.train(
        failing_on_old_people, domains, dataset="diabetes", target="target", rounds=3,
        secure_aggregation=False, max_dropouts=2, show=False,
    )  # fmt: skip
    assert [sorted(r.contributors) for r in history.rounds] == [["north", "south"]] * 3
    failure = history.rounds[0].failures["west"]
    # The scientist sees the type and their own line; the message stays with the owner.
    assert "ValueError" in failure and 'raise ValueError("an age above 50 years' in failure
    assert history.excluded == {"west": "failed 2 rounds in a row"}
    assert len(history.requests["west"]) == 2  # not asked again once excluded

    with pytest.raises(FederatedError, match="an age above 50 years"):
        syft.federated.train(
            failing_on_old_people, domains, dataset="diabetes", target="target", rounds=2,
            secure_aggregation=False, on_failure="stop", show=False,
        )  # fmt: skip


def test_rounds_run_once_in_order_with_weights_that_fit(world: dict) -> None:
    domain = world["domains"]["north"]
    code = "def make_model():\n    import torch\n    return torch.nn.Linear(10, 1)\n"
    plan = m.FederatedPlan(code, "make_model", FEATURES, "target", rounds=3,
                           secure_aggregation=False)  # fmt: skip
    world["approver"].hold.add("north")
    try:
        info = domain._connection.call(m.SubmitFederatedPlan("diabetes", plan))
        request = domain.get_request(info.request_id)
        weights = to_safetensors(torch.nn.Linear(10, 1).state_dict())
        with pytest.raises(ConflictError, match="pending, not approved"):
            domain._connection.call(m.FederatedRound(request.id, 0, weights))
    finally:
        world["approver"].hold.discard("north")
    while request.refresh(wait_s=5).status == "pending":
        pass
    with pytest.raises(InvalidError, match="not a safetensors file"):
        domain._connection.call(m.FederatedRound(request.id, 0, b"garbage"))
    first = domain.request_type(
        domain._connection, domain._connection.call(m.FederatedRound(request.id, 0, weights))
    )
    assert first.wait(60).status == "done"
    update = first.result()
    assert update.shape == (10 + 1 + 2,) and update[-2] == len(PRIVATE["north"])
    with pytest.raises(ConflictError, match="must come after 0"):
        domain._connection.call(m.FederatedRound(request.id, 0, weights))  # replayed
    with pytest.raises(ConflictError, match="rounds 0 to 2, not 7"):
        domain._connection.call(m.FederatedRound(request.id, 7, weights))
    wrong = to_safetensors(torch.nn.Linear(3, 1).state_dict())
    mismatched = domain.request_type(
        domain._connection, domain._connection.call(m.FederatedRound(request.id, 1, wrong))
    )
    info = mismatched.wait(60)
    assert info.status == "failed"
    assert "do not fit the model: weight: sent (1, 3), model has (1, 10)" in info.error
    # The owner revokes the plan: no further round starts.
    world["admins"]["north"]._connection.call(m.Decide(request.id, False, "enough"))
    with pytest.raises(ConflictError, match="denied, not approved"):
        domain._connection.call(m.FederatedRound(request.id, 2, weights))


def test_another_scientist_cannot_run_someone_elses_plan(world: dict, tmp_path: Path) -> None:
    domain = world["domains"]["south"]
    plan_id = next(r.id for r in domain.requests() if r.info.policy == "federated")
    _, stranger = person(tmp_path, "stranger")
    other = DomainClient(NodeConnection(world["nodes"]["south"].address, stranger))
    with pytest.raises(syft.NotAuthorisedError):
        other._connection.call(m.FederatedRound(plan_id, 5, b""))


def test_a_domain_that_dies_mid_training_does_not_stop_it(world: dict) -> None:
    domains = [world["domains"][name] for name in NAMES]

    def kill_east(round_number: int) -> None:
        if round_number == 1:
            world["nodes"]["east"].kill()

    _, history = syft.federated.train(
        make_model, domains, dataset="diabetes", target="target", rounds=3,
        secure_aggregation=True, max_dropouts=1, on_round=kill_east, round_timeout=60,
        show=False,
    )  # fmt: skip
    assert sorted(history.rounds[0].contributors) == sorted(NAMES)
    assert "east" not in history.rounds[1].contributors
    assert sorted(history.rounds[2].contributors) == ["north", "south", "west"]
    assert "east" in history.excluded
