"""Only trained parameters leave: the model check and the parameter guard, in one process.

The same attacks against real domain processes are in test_trained_parameters.py.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from jupyter_syft.federated.local import train_round
from jupyter_syft.federated.weights import to_safetensors
from jupyter_syft.privacy.model_state import ModelStateError, TrainedParameters, check_model
from jupyter_syft.privacy.training import train
from jupyter_syft.wire import messages as m

pytestmark = pytest.mark.unit

MARKERS = np.arange(48, dtype=np.float32) + 7123.5  # "private" values no model should return
TABLE = pa.table({"a": MARKERS[:24], "b": MARKERS[24:], "y": np.ones(24, np.float32)})


class Recorder(torch.nn.Module):
    """The attack seen: a buffer that keeps what forward() was given."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.register_buffer("seen", torch.zeros(48))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1)[:48]
        self.seen[: flat.numel()] = flat
        return self.linear(x)


class Writer(torch.nn.Module):
    """No state of its own: it writes its inputs into a parameter, in place, through .data."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(2, 24)
        self.out = torch.nn.Linear(24, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.detach().reshape(-1)[:48]
        self.hidden.weight.data.view(-1)[: flat.numel()] = flat
        return self.out(torch.relu(self.hidden(x)))


class Grower(torch.nn.Module):
    """Adds a parameter holding its inputs during training."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            self.kept = torch.nn.Parameter(x.detach().clone())
        return self.linear(x)


class WithAttribute(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)
        self.scale = torch.ones(2)
        self.history = [torch.zeros(1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.scale)


class WithExtraState(torch.nn.Linear):
    def get_extra_state(self) -> dict:
        return {"rows": 1}

    def set_extra_state(self, state: dict) -> None:
        pass


def hooked() -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    model._register_state_dict_hook(lambda module, state, prefix, local: state.update(x=1))
    return model


def frozen() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 1))
    model[0].bias.requires_grad_(False)
    return model


def plan(**changes: object) -> m.FederatedPlan:
    fields = dict(code="", function_name="make", features=["a", "b"], label="y",
                  rounds=1, batch_size=8, secure_aggregation=False)  # fmt: skip
    return m.FederatedPlan(**{**fields, **changes})  # type: ignore[arg-type]


def dp_spec() -> m.DPTraining:
    return m.DPTraining("", "make", ["a", "b"], "y", 1.0, 1e-3, [], "mse", 1, 8, 0.1, 1.0)


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (Recorder(), "buffer 'seen' (register_buffer)"),
        (
            torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4)),
            "'1' is a BatchNorm1d: its running statistics are computed from the private rows "
            "and would leave without noise; use LayerNorm or GroupNorm instead",
        ),
        (frozen(), "parameter '0.bias' has requires_grad=False"),
        (WithAttribute(), "tensor attribute 'scale'"),
        (WithAttribute(), "tensor attribute 'history'"),
        (WithExtraState(2, 1), "'the model' (WithExtraState) defines get_extra_state()"),
        (hooked(), "state_dict() entry 'x' is not a trainable parameter"),
    ],
)
def test_a_model_with_other_state_is_refused_naming_it(model: torch.nn.Module, named: str) -> None:
    with pytest.raises(ModelStateError, match="only trained parameters may leave") as refused:
        check_model(model)
    assert named in str(refused.value)


def test_plain_models_pass_and_norms_without_statistics_do_too() -> None:
    check_model(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.LayerNorm(4)))
    check_model(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.GroupNorm(2, 4)))
    check_model(torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Dropout(0.1)))


def test_dp_training_refuses_the_recorder_and_stops_the_writer() -> None:
    with pytest.raises(ModelStateError, match="buffer 'seen'"):
        train(dp_spec(), TABLE, Recorder())
    with pytest.raises(ModelStateError, match=r"changed parameter 'hidden\.weight'"):
        train(dp_spec(), TABLE, Writer())


def test_a_round_without_dp_stops_a_model_writing_or_growing_parameters() -> None:
    for model, error in [(Writer(), "changed parameter 'hidden.weight'"), (Grower(), "added")]:
        weights = to_safetensors(type(model)().state_dict())
        with pytest.raises(ModelStateError, match=error):
            train_round(plan(), TABLE, model, weights, None)
    with pytest.raises(ModelStateError, match="buffer 'seen'"):
        train_round(plan(), TABLE, Recorder(), b"", None)  # refused before the weights load


def test_only_the_parameters_are_released_and_normal_training_works() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    weights = to_safetensors(model.state_dict())
    update = train_round(plan(local_epochs=3), TABLE, model, weights, None)
    assert update.shape == (2 * 4 + 4 + 4 + 1 + 2,) and update[-2] == 24
    result = train(dp_spec(), TABLE, torch.nn.Linear(2, 1))
    assert result["steps"] > 0
    parameters = TrainedParameters(torch.nn.Linear(2, 1))
    assert sorted(parameters.released()) == ["bias", "weight"]
