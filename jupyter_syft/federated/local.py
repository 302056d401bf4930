"""One federated round on a domain, in its job worker: start from the global weights, train on
the private rows, and hand back only numbers meant to be summed across domains.

The update is `[rows * w, rows, loss]`: the trainable parameters after local training times
the row count (FedAvg weights each domain by its rows, a public number), the row count, and
the mean training loss of the last local epoch (0 under DP, where it would be a release the
budget does not cover). With secure aggregation this vector is released only inside the sum.
Nothing else of the model leaves: a model with buffers or other state is refused before
training, and one that writes into its own parameters is stopped (`privacy.model_state`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from jupyter_syft.errors import DisclosableError
from jupyter_syft.federated.weights import flatten, from_safetensors
from jupyter_syft.privacy.model_state import TrainedParameters, check_model
from jupyter_syft.privacy.training import features_of, fit_private, labels_of, loss_function
from jupyter_syft.wire.messages import DPTraining, FederatedPlan


class RoundError(DisclosableError):
    """A round that cannot run: weights that do not fit the model, a model that is not one."""


def train_round(
    plan: FederatedPlan,
    table: pa.Table,
    model: Any,
    weights: bytes,
    dp: DPTraining | None,
) -> np.ndarray:
    """Train `model` from `weights` on `table` as the plan says; the update vector."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise RoundError(f"{plan.function_name}() must return a torch.nn.Module")
    check_model(model)  # refuses a model with other state: before anything else
    state = from_safetensors(weights)
    own = model.state_dict()
    problems = [
        f"{name}: sent {tuple(state[name].shape)}, model has {tuple(own[name].shape)}"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    problems += [f"missing {name}" for name in sorted(set(own) - set(state))]
    problems += [f"unexpected {name}" for name in sorted(set(state) - set(own))]
    if problems:
        raise RoundError("the global weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    parameters = TrainedParameters(model)
    with torch.no_grad():  # the output size, from a dummy row: no private data
        outputs = model(torch.zeros(1, len(plan.features), device=device)).shape[-1]
    if plan.loss == "cross_entropy" and outputs < 2:
        raise RoundError("with cross_entropy the model needs one output per class (2 or more)")
    features = torch.from_numpy(features_of(plan, table)).to(device)
    labels = torch.from_numpy(labels_of(plan, table, outputs)).to(device)
    optimizer = torch.optim.Adam if plan.optimizer == "adam" else torch.optim.SGD
    if dp is not None:
        fit_private(dp, features, labels, parameters, optimizer)
        loss = 0.0
    else:
        loss = _fit(plan, features, labels, parameters, optimizer)
    rows = float(table.num_rows)
    return np.concatenate([flatten(parameters.released()) * rows, [rows, loss]])


def _fit(
    plan: FederatedPlan,
    features: Any,
    labels: Any,
    parameters: TrainedParameters,
    optimizer_class: Any,
) -> float:
    """Plain minibatch training; the mean loss over the last epoch. After each forward and
    backward the parameters are checked to be as the last step left them."""
    import torch

    model = parameters.model
    optimizer = optimizer_class(list(parameters.parameters.values()), lr=plan.learning_rate)
    loss_of = loss_function(plan)
    rows = features.shape[0]
    total = 0.0
    for _ in range(plan.local_epochs):
        total = 0.0
        for batch in torch.randperm(rows, device=features.device).split(plan.batch_size):
            optimizer.zero_grad()
            loss = loss_of(model(features[batch]), labels[batch])
            loss.backward()
            parameters.verify()
            optimizer.step()
            parameters.mark()
            total += loss.item() * len(batch)
    return total / rows
