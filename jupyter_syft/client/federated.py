"""`syft.federated.train`: one torch model trained on several domains' private tables.

The scientist's process runs federated averaging (McMahan et al., AISTATS 2017). Each domain
gets the plan once (model code, columns, rounds, epochs, epsilon) and its owner approves it
once; then every round sends the global weights to each domain, which trains on its rows in a
job worker and returns `[rows * w, rows, loss]` (see `federated.local`). The new global
weights are sum(rows * w) / sum(rows). With `secure_aggregation` those sums come from secure
aggregation (`client.aggregate.secure_sum`), so no one, the scientist included, sees any one
domain's update; without it, each update comes back sealed to the scientist.

A domain whose round fails (its job raised, timed out, or it stopped answering) is left out
of that round's average: training goes on with the others (`on_failure="continue"`), unless
asked to stop (`"stop"`). A domain that fails `max_dropouts` rounds in a row, runs out of
budget, or has its plan revoked by its owner, is left out for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from jupyter_syft.client.aggregate import secure_sum
from jupyter_syft.client.domain import (
    DomainClient,
    RemoteRequest,
    as_function,
    function_source,
    requirement_list,
)
from jupyter_syft.errors import BudgetExhausted, ConflictError, InvalidError, SyftError
from jupyter_syft.federated.history import History, LiveView, RoundRecord
from jupyter_syft.federated.weights import (
    flatten,
    model_source,
    to_safetensors,
    unflatten,
)
from jupyter_syft.privacy.model_state import ModelStateError, check_model
from jupyter_syft.wire import messages as m

MIN_SECURE_DOMAINS = 3  # secure aggregation's own minimum


class FederatedError(SyftError):
    """Training could not start or go on; the message says which domains and why."""


@dataclass(frozen=True)
class DP:
    """DP-SGD on every domain: (epsilon, delta) over all rounds, for one changed row."""

    epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0


def train(
    model: Any,
    domains: Sequence[DomainClient],
    dataset: str,
    target: str,
    *,
    features: Sequence[str] | None = None,
    rounds: int = 10,
    local_epochs: int = 1,
    lr: float = 0.01,
    batch_size: int = 32,
    optimizer: Literal["adam", "sgd"] = "adam",
    loss: Literal["mse", "cross_entropy"] = "mse",
    dp: DP | None = None,
    secure_aggregation: bool = True,
    feature_bounds: Sequence[tuple[float, float]] | None = None,
    validation: tuple[Any, Any] | None = None,
    on_failure: Literal["continue", "stop"] = "continue",
    max_dropouts: int = 2,
    approval_timeout: float = 3600.0,
    round_timeout: float = 600.0,
    on_round: Callable[[int], None] | None = None,
    show: bool = True,
    requirements: Iterable[str] = (),
) -> tuple[Any, History]:
    """Train `model` on `dataset` across `domains`; return the trained model and its history.

    `model` is an `nn.Sequential` of standard layers or a zero-argument function returning the
    module (its source travels; or that source text, as for `DomainClient.request`).
    `features` default to every numeric column but `target`. `validation=(X, y)`, data the
    scientist holds, is scored after each round. With `feature_bounds`, domains scale each
    feature to [0, 1] and the returned model does the same to its inputs. `on_round(r)` is
    called before round r starts (tests, progress).
    `requirements`: packages the model code needs beyond the domains' own (see
    `DomainClient.request`); each owner reviews them with the plan.
    """
    if on_failure not in ("continue", "stop"):
        raise InvalidError(f"on_failure must be 'continue' or 'stop', not {on_failure!r}")
    if not domains:
        raise InvalidError("give at least one domain")
    names = [d.name for d in domains]
    if len(set(names)) != len(names):
        raise InvalidError(f"each domain may appear once: {names}")
    model = as_function(model)  # a function's source text (plain `python`) is one, made here
    code, function_name = model_source(model, function_source)
    network = model if isinstance(model, torch.nn.Module) else model()
    if not isinstance(network, torch.nn.Module):
        raise InvalidError(f"{function_name}() must return a torch.nn.Module")
    try:  # the domains refuse it too; here the scientist learns why before any owner is asked
        check_model(network)
    except ModelStateError as exc:
        raise InvalidError(str(exc)) from None
    template = {name: t.detach().cpu().clone() for name, t in network.state_dict().items()}
    features = list(features) if features is not None else _numeric_columns(domains[0], dataset)
    features = [f for f in features if f != target]
    plan = m.FederatedPlan(
        code=code,
        function_name=function_name,
        features=features,
        label=target,
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        optimizer=optimizer,
        loss=loss,
        feature_bounds=[tuple(b) for b in feature_bounds or []],
        secure_aggregation=secure_aggregation,
        epsilon=dp.epsilon if dp else 0.0,
        delta=dp.delta if dp else 0.0,
        max_grad_norm=dp.max_grad_norm if dp else 1.0,
    )
    history = History(
        rounds_planned=rounds, secure=secure_aggregation, epsilon=plan.epsilon, loss=loss
    )
    view = LiveView(history, show)
    needs = requirement_list(requirements)
    trainer = _Trainer(list(domains), dataset, plan, history, view, max_dropouts, needs)
    minimum = MIN_SECURE_DOMAINS if secure_aggregation else 1
    scorer = _Scorer(validation, features, plan.feature_bounds, loss) if validation else None
    try:
        trainer.submit_plans(approval_timeout)
        if len(trainer.active) < minimum:
            raise FederatedError(
                f"{len(trainer.active)} domain(s) can train, {minimum} needed: {history.excluded}"
            )
        weights = flatten(template)
        for round_number in range(rounds):
            if on_round is not None:
                on_round(round_number)
            if len(trainer.active) < minimum:
                history.stopped = (
                    f"stopped before round {round_number}: {len(trainer.active)} domain(s) "
                    f"left, {minimum} needed"
                )
                break
            state = unflatten(weights, template)
            record = trainer.run_round(round_number, state, len(weights), round_timeout)
            if record.failures and on_failure == "stop":
                history.rounds.append(record)
                view.update()
                raise FederatedError(f"round {round_number} failed: {record.failures}")
            if record.total is not None:
                weights = record.total[:-2] / record.total[-2]
                if not plan.epsilon:  # under DP the domains release no loss
                    record.train_loss = float(record.total[-1]) / len(record.contributors)
                record.total = None
            if scorer is not None:
                network.load_state_dict(unflatten(weights, template))
                record.metrics = scorer.score(network)
            history.rounds.append(record)
            view.update()
    finally:
        trainer.close()
        view.close()
    network.load_state_dict(unflatten(weights, template))
    if plan.feature_bounds:
        network = BoundedInput(plan.feature_bounds, network)
    return network, history


class _Trainer:
    """The domains taking part, their plans, and one round at a time across them."""

    def __init__(
        self,
        domains: list[DomainClient],
        dataset: str,
        plan: m.FederatedPlan,
        history: History,
        view: LiveView,
        max_dropouts: int,
        requirements: list[str],
    ) -> None:
        self.dataset = dataset
        self.plan = plan
        self.history = history
        self.view = view
        self.max_dropouts = max_dropouts
        self.active: list[DomainClient] = []
        self.plans: dict[str, RemoteRequest] = {}
        self._domains = domains
        self._failures_in_a_row: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=len(domains))
        self.requirements = requirements

    def submit_plans(self, approval_timeout: float) -> None:
        """Send the plan to every domain and wait until each owner has decided."""
        call = m.SubmitFederatedPlan(self.dataset, self.plan, self.requirements)
        for domain in self._domains:
            try:
                info = domain._connection.call(call)
            except SyftError as exc:
                self.history.excluded[domain.name] = f"plan refused: {exc}"
                continue
            assert isinstance(info, m.RequestInfo)
            self.plans[domain.name] = domain.request_type(domain._connection, info)
            self.history.plans[domain.name] = info.request_id
        self.view.status(f"waiting for {len(self.plans)} owner(s) to review the plan")
        deadline = time.monotonic() + approval_timeout
        for domain in self._domains:
            request = self.plans.get(domain.name)
            if request is None:
                continue
            while request.info.status == "pending" and time.monotonic() < deadline:
                request.refresh(wait_s=min(30.0, max(0.0, deadline - time.monotonic())))
            if request.info.status == "approved":
                self.active.append(domain)
            elif request.info.status == "pending":
                self.history.excluded[domain.name] = "the owner did not review the plan in time"
            else:
                reason = request.info.reason or "no reason given"
                self.history.excluded[domain.name] = f"plan {request.info.status}: {reason}"
        self.view.status("")

    def run_round(
        self, round_number: int, state: dict[str, Any], length: int, timeout: float
    ) -> RoundRecord:
        started = time.monotonic()
        record = RoundRecord(round_number)
        weights = to_safetensors(state)
        self.view.status(f"round {round_number + 1}/{self.plan.rounds}: training on domains")
        jobs = {
            d.name: self._pool.submit(self._local, d, round_number, weights, timeout)
            for d in self.active
        }
        finished: dict[str, RemoteRequest] = {}
        for domain in list(self.active):
            try:
                finished[domain.name] = jobs[domain.name].result()
            except (BudgetExhausted, ConflictError) as exc:  # out of budget, plan revoked
                self._leave(domain, str(exc))
                record.dropped[domain.name] = str(exc)
            except Exception as exc:  # its job failed, or it did not answer
                record.failures[domain.name] = str(exc)
        self.view.status(f"round {round_number + 1}/{self.plan.rounds}: combining updates")
        if self.plan.secure_aggregation:
            self._secure_total(finished, length, record)
        else:
            self._plain_total(finished, length, record)
        for domain in list(self.active):
            if domain.name not in record.failures:
                self._failures_in_a_row[domain.name] = 0
                continue
            count = self._failures_in_a_row.get(domain.name, 0) + 1
            self._failures_in_a_row[domain.name] = count
            if count >= self.max_dropouts:
                self._leave(domain, f"failed {count} rounds in a row")
        record.seconds = time.monotonic() - started
        return record

    def _local(
        self, domain: DomainClient, round_number: int, weights: bytes, timeout: float
    ) -> RemoteRequest:
        """Start the round on one domain and wait for its local training to finish."""
        plan_id = self.plans[domain.name].id
        info = domain._connection.call(m.FederatedRound(plan_id, round_number, weights))
        request = domain.request_type(domain._connection, info)
        self.history.requests.setdefault(domain.name, []).append(request.id)
        info = request.wait(timeout)
        if info.status != "done":
            detail = info.error.strip() or info.reason or info.status
            raise FederatedError(f"local training {info.status} on {domain.name}:\n{detail}")
        return request

    def _secure_total(
        self, finished: dict[str, RemoteRequest], length: int, record: RoundRecord
    ) -> None:
        if len(finished) < MIN_SECURE_DOMAINS:
            record.note = f"only {len(finished)} domain(s) finished: no secure sum this round"
            return
        parties = {d.peer_id: (d, finished[d.name].id) for d in self.active if d.name in finished}
        dropped: dict[str, str] = {}
        try:
            total, contributors = secure_sum(parties, length + 2, dropped=dropped)
        except SyftError as exc:
            record.note = f"secure aggregation failed: {exc}"
            record.failures.update(dropped)
            return
        record.total, record.contributors = total, contributors
        # One that left the protocol after its masked input arrived still counts: not a failure.
        record.failures.update({n: why for n, why in dropped.items() if n not in contributors})

    def _plain_total(
        self, finished: dict[str, RemoteRequest], length: int, record: RoundRecord
    ) -> None:
        total = np.zeros(length + 2)
        for name, request in finished.items():
            try:
                update = np.asarray(request.result(), dtype=np.float64)
            except SyftError as exc:
                record.failures[name] = f"its update could not be read: {exc}"
                continue
            if update.shape != (length + 2,) or not np.all(np.isfinite(update)):
                record.failures[name] = (
                    f"its update has shape {update.shape}, expected ({length + 2},) finite "
                    "values: left out"
                )
                continue
            total += update
            record.contributors.append(name)
        if record.contributors:
            record.total = total

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _leave(self, domain: DomainClient, reason: str) -> None:
        if domain in self.active:
            self.active.remove(domain)
            self.history.excluded[domain.name] = reason


class _Scorer:
    """Scores the global model on the scientist's own validation data after each round."""

    def __init__(
        self,
        validation: tuple[Any, Any],
        features: list[str],
        bounds: list[tuple[float, float]],
        loss: str,
    ) -> None:
        inputs, labels = validation
        if hasattr(inputs, "columns"):  # a DataFrame: the plan's columns, in order
            inputs = inputs[features]
        x = np.asarray(inputs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(features):
            raise InvalidError(f"validation inputs must have {len(features)} columns: {features}")
        if bounds:
            low, high = np.array(bounds).T
            x = ((np.clip(x, low, high) - low) / (high - low)).astype(np.float32)
        self.x = torch.from_numpy(x)
        self.y = np.asarray(labels, dtype=np.float64).reshape(-1)
        self.loss = loss

    def score(self, model: Any) -> dict[str, float]:
        with torch.no_grad():
            output = model(self.x).double().numpy()
        if self.loss == "cross_entropy":
            accuracy = float(np.mean(output.argmax(axis=1) == self.y))
            return {"accuracy": accuracy}
        return {"mse": float(np.mean((output.reshape(-1) - self.y) ** 2))}


def _numeric_columns(domain: DomainClient, dataset: str) -> list[str]:
    from jupyter_syft.privacy.queries import NUMERIC_TYPES

    schema = domain.datasets[dataset].schema
    return [name for name, kind in schema.items() if kind in NUMERIC_TYPES]


class BoundedInput(torch.nn.Module):
    """Clamps and scales raw features to [0, 1] by public bounds, as the domains did, then
    runs the trained model: so the returned model takes the same inputs as the data."""

    low: torch.Tensor  # buffers, registered in __init__
    high: torch.Tensor

    def __init__(self, bounds: Sequence[tuple[float, float]], model: torch.nn.Module) -> None:
        super().__init__()
        low, high = np.array(bounds, dtype=np.float32).T
        self.register_buffer("low", torch.from_numpy(low))
        self.register_buffer("high", torch.from_numpy(high))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (torch.minimum(torch.maximum(x, self.low), self.high) - self.low) / (
            self.high - self.low
        )
        return self.model(scaled)
