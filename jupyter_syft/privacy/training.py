"""DP-SGD: train a torch model on a private table with Opacus, to a target (ε, δ).

Two doors, like the queries: `check_training` and `noise_multiplier` run in the node before
the charge (they read no data); `train` runs in the job worker and returns only the weights.

Guarantee: the charged (ε, δ) is for one changed row (see `privacy.budget`). Opacus's accountant
reasons about a row added or removed, so it is asked for `add_remove_target(ε, δ)`. The
accountant is RDP for the Poisson-sampled Gaussian (Mironov, Talwar & Zhang 2019) converted to
(ε, δ) by Opacus's conversion (Balle et al. 2020): an upper bound, not an estimate. Opacus's
data loader samples each batch by Poisson sampling, as that analysis assumes.

Why it is built this way:
- The noise multiplier is fixed before training from (ε, δ), the public row count, batch size
  and epochs; an infeasible target is refused before anything is charged. After training the
  accountant's ε for the steps actually taken is checked again; above target, nothing leaves.
- Only the trained parameters leave, as safetensors (no pickle), with (ε, δ) in their
  metadata: a model with buffers or other state is refused before training, and a model that
  writes into its own parameters is stopped (`privacy.model_state`, whose docstring has the
  threat model). Training loss or accuracy on the private data would be releases the budget
  does not cover.
- Features are scaled by bounds the scientist declares, never by private minima or means, and
  labels out of range are clipped rather than raising an error that depends on a private value.
- The model is the scientist's code: DP training always waits for the owner's review.
- Known limit: Opacus's `secure_mode` needs torchcsprng, which is not available for current
  torch, so the Gaussian noise comes from torch's generator. That is neither cryptographic nor
  safe against floating-point attacks on the noise (Jin et al. 2022, arXiv 2112.05307). The
  generators are seeded from os.urandom for every job: a job process forked from the
  executor's forkserver would otherwise inherit its random state and repeat the noise of every
  other job. OpenDP's floating-point-safe Gaussian was measured as a replacement and is far too
  slow per parameter and step (benchmarks/bench_privacy.py).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jupyter_syft.errors import DisclosableError
from jupyter_syft.privacy.budget import (
    BudgetValueError,
    add_remove_target,
    delta_units,
    epsilon_units,
    mechanism_delta,
    mechanism_epsilon,
)
from jupyter_syft.privacy.model_state import TrainedParameters
from jupyter_syft.privacy.queries import NUMERIC_TYPES
from jupyter_syft.wire.messages import DPTraining, FederatedPlan

LOSSES = ("cross_entropy", "mse")
MAX_EPOCHS = 1000
MAX_FEATURES = 10_000
ACCOUNTANT = "rdp"
# Opacus says these on every run; each is a known, stated property, not a fault.
QUIET = (
    "Secure RNG turned off",  # the limit stated above
    "Optimal order is the largest alpha",  # RDP orders searched are enough for the bound
    "Full backward hook is firing when gradients are computed with respect to module outputs",
)


class TrainingError(DisclosableError):
    """A DP training request the node refuses, or a run whose result is withheld."""


def check_training(spec: DPTraining, schema: dict[str, str], rows: int) -> None:
    """Refuse (TrainingError) a request that cannot run as asked; reads no data."""
    try:
        epsilon_units(spec.epsilon)
        delta_units(spec.delta)
    except BudgetValueError as exc:
        raise TrainingError(str(exc)) from exc
    if rows < 1:
        raise TrainingError("the dataset has no rows")
    if not 0 < spec.delta < 1 / rows:
        raise TrainingError(
            f"delta must be above 0 and below 1/rows = {1 / rows:.3g}: a larger delta allows "
            "releasing whole rows"
        )
    check_columns(spec, schema)
    if spec.loss not in LOSSES:
        raise TrainingError(f"loss must be one of {', '.join(LOSSES)}, not {spec.loss!r}")
    if not 1 <= spec.epochs <= MAX_EPOCHS:
        raise TrainingError(f"epochs must be 1 to {MAX_EPOCHS}")
    if not 1 <= spec.batch_size <= rows:
        raise TrainingError(f"batch_size must be 1 to the row count ({rows})")
    for name in ("learning_rate", "max_grad_norm"):
        value = getattr(spec, name)
        if not (math.isfinite(value) and value > 0):
            raise TrainingError(f"{name} must be a finite number above 0, not {value!r}")


def check_columns(spec: DPTraining | FederatedPlan, schema: dict[str, str]) -> None:
    """Refuse (TrainingError) features or a label the table cannot give, or bad bounds."""
    if not spec.features or len(spec.features) > MAX_FEATURES:
        raise TrainingError(f"give 1 to {MAX_FEATURES} feature columns")
    if len(set(spec.features)) != len(spec.features):
        raise TrainingError("features must not repeat")
    if spec.label in spec.features:
        raise TrainingError(f"the label {spec.label!r} cannot also be a feature")
    for column in [*spec.features, spec.label]:
        if column not in schema:
            raise TrainingError(f"no column {column!r}; columns: {', '.join(schema)}")
        if schema[column] not in NUMERIC_TYPES:
            raise TrainingError(f"column {column!r} is {schema[column]}, not numeric")
    if spec.feature_bounds and len(spec.feature_bounds) != len(spec.features):
        raise TrainingError("give one (low, high) in feature_bounds per feature, or none")
    for low, high in spec.feature_bounds:
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise TrainingError(f"feature bounds must be finite with low < high: ({low}, {high})")


def noise_multiplier(spec: DPTraining, rows: int) -> float:
    """The noise multiplier Opacus will use; TrainingError if the target is unreachable.

    Imports Opacus (and torch): about a second the first time.
    """
    from opacus.accountants.utils import get_noise_multiplier

    epsilon, delta = _accountant_target(spec)
    with _quiet():
        try:
            return get_noise_multiplier(
                target_epsilon=epsilon,
                target_delta=delta,
                sample_rate=1 / math.ceil(rows / spec.batch_size),  # as Opacus's loader
                epochs=spec.epochs,
                accountant=ACCOUNTANT,
            )
        except ValueError as exc:
            raise TrainingError(
                f"epsilon {spec.epsilon:g} is too small for {spec.epochs} epochs of "
                f"batch size {spec.batch_size} on {rows} rows: {exc}"
            ) from exc


def train(spec: DPTraining, table: pa.Table, model: Any) -> dict[str, Any]:
    """Train `model` on `table` with DP-SGD; the weights (safetensors bytes as uint8) and how
    they were made."""
    import torch
    from safetensors.torch import save

    if not isinstance(model, torch.nn.Module):
        raise TrainingError(f"{spec.function_name}() must return a torch.nn.Module")
    parameters = TrainedParameters(model)  # refuses a model with other state: before training
    with torch.no_grad():  # the output size, from a dummy row: no private data
        outputs = model(torch.zeros(1, len(spec.features))).shape[-1]
    if spec.loss == "cross_entropy" and outputs < 2:
        raise TrainingError("with cross_entropy the model needs one output per class (2 or more)")
    features = torch.from_numpy(features_of(spec, table))
    labels = torch.from_numpy(labels_of(spec, table, outputs))
    run = fit_private(spec, features, labels, parameters, torch.optim.SGD)
    weights = parameters.released()
    metadata = {
        "epsilon": repr(spec.epsilon),
        "delta": repr(spec.delta),
        "privacy_unit": "one changed row",
        "mechanism": f"DP-SGD (Opacus, {ACCOUNTANT} accountant)",
    }
    data = save(weights, metadata=metadata)
    return {"safetensors": np.frombuffer(data, dtype=np.uint8), **run}


def fit_private(
    spec: DPTraining,
    features: Any,
    labels: Any,
    parameters: TrainedParameters,
    optimizer_class: Any,
) -> dict[str, Any]:
    """Train `parameters.model` in place with DP-SGD to the spec's (ε, δ); what the
    accountant says.

    `features` and `labels` are tensors on the model's device; `optimizer_class` is a
    torch.optim class taking (params, lr=...): Opacus makes any of them private. After each
    forward and backward the parameters are checked to be as the last step left them.
    """
    import torch
    from opacus import PrivacyEngine

    epsilon, delta = _accountant_target(spec)
    device = features.device
    seed = int.from_bytes(os.urandom(8), "little")
    torch.manual_seed(seed)  # Poisson sampling draws from torch's default generator
    noise = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little"))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=spec.batch_size
    )
    loss_of = loss_function(spec)
    trained = list(parameters.parameters.values())
    with _quiet():
        engine = PrivacyEngine(accountant=ACCOUNTANT)
        private_model, optimizer, private_loader = engine.make_private_with_epsilon(
            module=parameters.model,
            optimizer=optimizer_class(trained, lr=spec.learning_rate),
            data_loader=loader,
            target_epsilon=epsilon,
            target_delta=delta,
            epochs=spec.epochs,
            max_grad_norm=spec.max_grad_norm,
            noise_generator=noise,
        )
        steps = 0
        parameters.mark()
        for _ in range(spec.epochs):
            # An empty Poisson batch still takes its (noise-only) step: skipping it would
            # show that no row was drawn, which the accountant does not cover.
            for x, y in private_loader:
                optimizer.zero_grad()
                loss_of(private_model(x), y).backward()
                parameters.verify()
                optimizer.step()
                parameters.mark()
                steps += 1
        spent = engine.get_epsilon(delta)
    if spent > epsilon:
        raise TrainingError(
            f"the accountant reports epsilon {spent:.4g} > {epsilon:.4g} after training; "
            "the weights are withheld"
        )
    return {
        "noise_multiplier": float(optimizer.noise_multiplier),
        "steps": steps,
        "accountant_epsilon": float(spent),
        "accountant_delta": delta,
    }


def _accountant_target(spec: DPTraining) -> tuple[float, float]:
    return add_remove_target(mechanism_epsilon(spec.epsilon), mechanism_delta(spec.delta))


def features_of(spec: DPTraining | FederatedPlan, table: pa.Table) -> np.ndarray:
    """The feature columns as float32, scaled to [0, 1] by the declared bounds if any."""
    columns = []
    for i, name in enumerate(spec.features):
        values = pc.cast(table.column(name), pa.float64()).to_numpy()
        if spec.feature_bounds:
            low, high = spec.feature_bounds[i]
            values = np.where(np.isnan(values), (low + high) / 2, values)
            values = (np.clip(values, low, high) - low) / (high - low)
        columns.append(np.nan_to_num(values, nan=0.0))
    return np.stack(columns, axis=1).astype(np.float32)


def labels_of(spec: DPTraining | FederatedPlan, table: pa.Table, outputs: int) -> np.ndarray:
    values = np.nan_to_num(pc.cast(table.column(spec.label), pa.float64()).to_numpy(), nan=0.0)
    if spec.loss == "cross_entropy":
        return np.clip(values, 0, outputs - 1).astype(np.int64)
    return values.astype(np.float32)


def loss_function(spec: DPTraining | FederatedPlan) -> Any:
    import torch

    if spec.loss == "cross_entropy":
        return torch.nn.functional.cross_entropy

    def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(output.reshape(target.shape), target)

    return mse


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in QUIET:
            warnings.filterwarnings("ignore", message=message)
        yield
