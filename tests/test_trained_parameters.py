"""Only trained parameters leave a domain, across real processes (issue 12, section 3).

The attack seen: DP-SGD model code with a `register_buffer` recording `forward()` inputs got
exact training values back inside the "DP" weights. Every private value here is a marker; none
may appear in anything the scientist receives: weights, update vectors or error text.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from nodes import Approver, person
from shared_domains import SharedDomain

import jupyter_syft as syft
from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient, RemoteRequest, function_source
from jupyter_syft.client.federated import FederatedError
from jupyter_syft.errors import InvalidError, RequestFailed
from jupyter_syft.federated.weights import to_safetensors
from jupyter_syft.wire import messages as m

ROWS = 200
MARKERS = np.concatenate([7000.5 + np.arange(ROWS), 9000.5 + np.arange(ROWS)])
PRIVATE = pd.DataFrame({"a": MARKERS[:ROWS], "b": MARKERS[ROWS:], "y": np.ones(ROWS)})
MOCK = pd.DataFrame({"a": np.zeros(10), "b": np.zeros(10), "y": np.zeros(10)})
FEATURES = ["a", "b"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, clinic: SharedDomain) -> Iterator[dict]:
    """The shared clinic domain (conftest.py; its job timeout is the default 60 s) with
    this module's dataset and scientist."""
    _, scientist = person(tmp_path_factory.mktemp("trained"), "scientist")
    node = clinic.node
    approver = None
    try:
        admin = clinic.admin()
        admin.create_dataset("rows", private=PRIVATE, mock=MOCK)
        admin.add_user(scientist.peer_id, "data_scientist", "scientist")
        admin.set_budget(scientist.peer_id, "rows", epsilon=20.0, delta=1e-2)
        approver = Approver({"clinic": admin})
        domain = DomainClient(NodeConnection(node.address, scientist))
        yield {"admin": admin, "domain": domain}
    finally:
        if approver is not None:
            approver.close()


def make_recorder():
    import torch

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)
            self.register_buffer("seen", torch.zeros(48))

        def forward(self, x):
            flat = x.detach().reshape(-1)[:48]
            self.seen[: flat.numel()] = flat
            return self.linear(x)

    return Recorder()


def make_writer():
    import torch

    class Writer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = torch.nn.Linear(2, 24)
            self.out = torch.nn.Linear(24, 1)

        def forward(self, x):
            flat = x.detach().reshape(-1)[:48]
            self.hidden.weight.data.view(-1)[: flat.numel()] = flat
            return self.out(torch.relu(self.hidden(x)))

    return Writer()


def make_reporter():
    import time

    import torch

    import jupyter_syft as syft

    class Reporter(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, x):
            syft.progress(int(x.detach().reshape(-1)[0]), 100_000)  # a private value as a step
            time.sleep(0.2)
            return self.linear(x)

    return Reporter()


def make_batchnorm():
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1)
    )


def make_layernorm():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))


def leaked(text: str, values: np.ndarray | None = None) -> list[float]:
    """The markers found in what a scientist received."""
    found = [float(v) for v in MARKERS if str(float(v)) in text]
    if values is not None:
        found += [float(v) for v in MARKERS if np.isclose(values, v, rtol=0, atol=1e-3).any()]
    return found


def seen_by_scientist(request: RemoteRequest) -> str:
    info = request.info
    return " ".join([info.error, info.error_full, info.log])


def owner_reads(world: dict, request: RemoteRequest) -> str:
    info = world["admin"].get_request(request.id).info
    return info.error_full or info.error


def dp_spec(model) -> m.DPTraining:
    return m.DPTraining(
        function_source(model), model.__name__, FEATURES, "y", 1.0, 1e-3, [], "mse", 1, 50
    )


def submit_dp_directly(world: dict, model) -> RemoteRequest:
    """As a scientist would who skips the client's own check."""
    domain: DomainClient = world["domain"]
    info = domain._connection.call(m.SubmitDPTraining("rows", dp_spec(model)))
    return domain.request_type(domain._connection, info)


def direct_round(world: dict, model) -> RemoteRequest:
    """A federated plan without DP or secure aggregation, and its first round, sent without
    the client's check: the update comes back to the scientist, sealed to them."""
    domain: DomainClient = world["domain"]
    plan = m.FederatedPlan(function_source(model), model.__name__, FEATURES, "y", rounds=1,
                           batch_size=50, secure_aggregation=False)  # fmt: skip
    info = domain._connection.call(m.SubmitFederatedPlan("rows", plan))
    request = domain.get_request(info.request_id)
    while request.refresh(wait_s=5).status == "pending":  # the owner approves the plan
        pass
    assert request.info.status == "approved"
    weights = to_safetensors(model().state_dict())  # the buffer included, as the model has it
    info = domain._connection.call(m.FederatedRound(request.id, 0, weights))
    return domain.request_type(domain._connection, info)


def test_the_buffer_recording_attack_under_dp_gets_nothing_out(world: dict) -> None:
    request = submit_dp_directly(world, make_recorder)
    assert request.wait(60).status == "failed"
    assert "buffer 'seen' (register_buffer)" in owner_reads(world, request)
    assert "buffer 'seen' (register_buffer)" in seen_by_scientist(request)  # the node's check
    assert not leaked(seen_by_scientist(request))
    with pytest.raises(RequestFailed):
        request.result(timeout=5)


def test_the_client_refuses_it_before_asking_the_owner(world: dict) -> None:
    admin: AdminClient = world["admin"]
    before = len(admin.requests())
    rows = world["domain"].datasets["rows"]
    for model, named in [(make_recorder, "buffer 'seen'"), (make_batchnorm, "use LayerNorm")]:
        with pytest.raises(InvalidError, match="only trained parameters may leave") as refused:
            rows.dp.train(model, features=FEATURES, label="y", epsilon=1.0, delta=1e-3)
        assert named in str(refused.value)
        with pytest.raises(InvalidError, match=named):
            syft.federated.train(model, [world["domain"]], "rows", "y", secure_aggregation=False,
                                 show=False)  # fmt: skip
    assert len(admin.requests()) == before


def test_batchnorm_is_refused_by_the_domain_with_what_to_use_instead(world: dict) -> None:
    request = submit_dp_directly(world, make_batchnorm)
    assert request.wait(60).status == "failed"
    assert (
        "'1' is a BatchNorm1d: its running statistics are computed from the private rows and "
        "would leave without noise; use LayerNorm or GroupNorm instead"
    ) in owner_reads(world, request)
    round_request = direct_round(world, make_batchnorm)
    assert round_request.wait(60).status == "failed"
    assert "use LayerNorm or GroupNorm instead" in owner_reads(world, round_request)


def test_the_buffer_recording_attack_in_a_federated_round_gets_nothing_out(world: dict) -> None:
    request = direct_round(world, make_recorder)
    assert request.wait(60).status == "failed"
    assert "buffer 'seen' (register_buffer)" in owner_reads(world, request)
    assert not leaked(seen_by_scientist(request))


def test_writing_inputs_into_a_parameter_is_stopped_with_and_without_dp(world: dict) -> None:
    rows = world["domain"].datasets["rows"]
    request = rows.dp.train(make_writer, features=FEATURES, label="y", epsilon=1.0,
                            delta=1e-3, loss="mse", epochs=1, batch_size=50)  # fmt: skip
    assert request.wait(60).status == "failed"
    assert "changed parameter 'hidden.weight' during training" in owner_reads(world, request)
    assert "changed parameter 'hidden.weight'" in seen_by_scientist(request)
    assert not leaked(seen_by_scientist(request))
    with pytest.raises(FederatedError, match="round 0 failed") as failed:
        syft.federated.train(make_writer, [world["domain"]], "rows", "y", rounds=1,
                             batch_size=50, secure_aggregation=False, on_failure="stop",
                             show=False)  # fmt: skip
    assert not leaked(str(failed.value))
    [round_request] = [
        r
        for r in world["admin"].requests()
        if r.info.function_name == "make_writer" and r.info.plan_round is not None
    ]
    assert "changed parameter 'hidden.weight' during training" in owner_reads(world, round_request)


def test_normal_training_still_returns_only_the_parameters(world: dict) -> None:
    rows = world["domain"].datasets["rows"]
    request = rows.dp.train(make_layernorm, features=FEATURES, label="y", epsilon=1.0,
                            delta=1e-3, loss="mse", epochs=1, batch_size=50)  # fmt: skip
    model = request.result(timeout=60)
    expected = {name for name, _ in make_layernorm().named_parameters()}
    assert set(model.state_dict()) == expected
    assert not leaked("", torch.cat([t.reshape(-1) for t in model.state_dict().values()]).numpy())
    trained, history = syft.federated.train(make_layernorm, [world["domain"]], "rows", "y",
                                            rounds=2, batch_size=50, secure_aggregation=False,
                                            show=False)  # fmt: skip
    assert [r.contributors for r in history.rounds] == [["clinic"], ["clinic"]]
    assert set(trained.state_dict()) == expected


def test_progress_numbers_from_dp_training_code_reach_only_the_owner(world: dict) -> None:
    """The job's progress numbers are chosen by its code: under DP training they could carry
    private values past the noise, so only the owner sees them (the scientist sees none)."""
    rows = world["domain"].datasets["rows"]
    request = rows.dp.train(make_reporter, features=FEATURES, label="y", epsilon=1.0,
                            delta=1e-3, loss="mse", epochs=2, batch_size=50)  # fmt: skip
    scientist_saw, owner_saw = [], []
    deadline = time.monotonic() + 90
    while request.refresh().status not in ("done", "failed") and time.monotonic() < deadline:
        scientist_saw.append(request.info.progress)
        owner_saw.append(world["admin"].get_request(request.id).info.progress)
        time.sleep(0.05)
    assert request.info.status == "done", request.info.error
    assert [p for p in owner_saw if p is not None and p.done >= 7000], owner_saw  # the channel
    assert scientist_saw and all(p is None for p in scientist_saw), scientist_saw  # closed to them
