"""Differential privacy from the scientist's side: `dataset.dp`, its results, and budgets.

`dataset.dp.mean("bmi", bounds=(15, 50), epsilon=0.1)` asks the domain for a DP mean: the
domain checks the query, charges ε to your budget on that dataset (never for a refused query)
and answers with OpenDP noise. If the owner's policy auto-approves DP queries the call waits for
the answer; otherwise it returns a pending request, answered once the owner approves.
`domain.budget("diabetes")` shows what is spent and left (see jupyter_syft.privacy.budget for
what an ε means here and how queries add up).
"""

from __future__ import annotations

import functools
import html
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import (
    RemoteRequest,
    as_function,
    function_source,
    requirement_list,
)
from jupyter_syft.errors import InvalidError
from jupyter_syft.privacy.model_state import ModelStateError, check_model
from jupyter_syft.wire import messages as m

if TYPE_CHECKING:
    import torch

    from jupyter_syft.client.domain import Dataset

DEFAULT_WAIT_S = 60.0


class DPQueries:
    """`dataset.dp`: the built-in DP queries on one table dataset, one method per kind the
    domain registers (`query_kinds()`: count, sum, mean, variance, histogram, quantile).

    Each method spends `epsilon` of your budget on this dataset. Bounds, categories and group
    keys are public values you declare (from domain knowledge or the mock), never read from the
    private data. `by` and `groups` make any query grouped: one answer per group key, rows with
    other keys left out. A call waits up to `timeout` seconds for an auto-approved answer.
    """

    def __init__(self, dataset: Dataset) -> None:
        self._dataset = dataset

    def ask(
        self,
        kind: str,
        column: str = "",
        *,
        epsilon: float,
        bounds: tuple[float, float] | None = None,
        categories: Iterable[m.Category] = (),
        q: float = 0.5,
        by: str = "",
        groups: Iterable[m.Category] = (),
        timeout: float = DEFAULT_WAIT_S,
    ) -> DPQueryRequest:
        """One DP query of `kind` (see `kinds()`); `dataset.dp.<kind>(...)` is the same call.

        `bounds`: the public (low, high) values are clipped to (sum, mean, variance,
        quantile); `categories`: the values a histogram counts; `q`: which quantile. The
        domain refuses, before charging anything, an option the kind does not use.
        """
        query = dp_query(
            kind, column, epsilon=epsilon, bounds=bounds, categories=categories, q=q, by=by,
            groups=groups,
        )  # fmt: skip
        return self._ask(query, timeout)

    def __getattr__(self, kind: str) -> Callable[..., DPQueryRequest]:
        """`dataset.dp.mean(...)` and the others: one method per registered query kind."""
        if kind.startswith("_") or kind not in query_kinds():
            raise AttributeError(
                f"no DP query {kind!r}: the queries are {', '.join(query_kinds())}"
            )

        def query(column: str = "", **options: Any) -> DPQueryRequest:
            return self.ask(kind, column, **options)

        query.__name__ = kind
        query.__doc__ = f"{query_kinds()[kind]}\n\n{QUERY_OPTIONS}"
        return query

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *query_kinds()]

    def train(
        self,
        model: Callable[[], Any] | str,
        *,
        features: Iterable[str],
        label: str,
        epsilon: float,
        delta: float,
        feature_bounds: Iterable[tuple[float, float]] = (),
        loss: str = "cross_entropy",
        epochs: int = 10,
        batch_size: int = 64,
        learning_rate: float = 0.5,
        max_grad_norm: float = 1.0,
        requirements: Iterable[str] = (),
    ) -> DPTrainingRequest:
        """Ask to train the torch model `model()` returns with DP-SGD (Opacus) to (ε, δ).

        `model` is a plain `def` taking no arguments (its source travels, as for requests),
        or that source text (see `DomainClient.request`).
        The model sees `features` (scaled to [0, 1] by `feature_bounds` when given) and learns
        `label` (class indices for "cross_entropy", numbers for "mse"). The owner reviews the
        request; (ε, δ) is charged when they approve, before training starts. Only the
        trained parameters come back: a model with buffers (BatchNorm's included) or other
        state is refused, here and by the domain. `requirements`: packages the model code
        needs beyond the domain's own (see `DomainClient.request`).
        """
        model = as_function(model)  # source text (a plain `python` REPL's) is made one here
        source = function_source(model)
        try:
            check_model(model())
        except ModelStateError as exc:
            raise InvalidError(str(exc)) from None
        spec = m.DPTraining(
            source,
            model.__name__,
            [str(f) for f in features],
            str(label),
            epsilon,
            delta,
            [(float(low), float(high)) for low, high in feature_bounds],
            loss,
            epochs,
            batch_size,
            learning_rate,
            max_grad_norm,
        )
        connection = self._dataset._connection
        call = m.SubmitDPTraining(self._dataset.name, spec, requirement_list(requirements))
        info = connection.call(call)
        return DPTrainingRequest(connection, info)

    def _ask(self, query: m.DPQuery, timeout: float) -> DPQueryRequest:
        connection = self._dataset._connection
        info = connection.call(m.SubmitDPQuery(self._dataset.name, query))
        request = DPQueryRequest(connection, info)
        if info.status != "pending":  # auto-approved: the answer is moments away
            with suppress(TimeoutError):
                request.wait(timeout)
            if request.info.status == "done":
                request.result()
        return request


def dp_query(
    kind: str,
    column: str = "",
    *,
    epsilon: float,
    bounds: tuple[float, float] | None = None,
    categories: Iterable[m.Category] = (),
    q: float = 0.5,
    by: str = "",
    groups: Iterable[m.Category] = (),
) -> m.DPQuery:
    """The query `DPQueries.ask` sends (and `mock_answer` answers here)."""
    if kind not in query_kinds():
        raise InvalidError(f"no DP query {kind!r}: the queries are {', '.join(query_kinds())}")
    return m.DPQuery(
        kind,
        epsilon,
        column,
        _bounds(bounds),
        categories=_keys(categories),
        quantile=q,
        by=by,
        groups=_keys(groups),
    )


def mock_answer(
    dataset: Dataset, mock: Any, kind: str, column: str = "", **options: Any
) -> DPResult:
    """A DP query answered here, on the dataset's mock (public data), by the same check and
    OpenDP mechanism as the domain's: nothing is sent and no budget is charged, so a query
    can be tried for free. Raises InvalidError for a query the domain would refuse."""
    from jupyter_syft.privacy.queries import QueryError, check_query, run_query
    from jupyter_syft.wire.values import data_to_table

    options.pop("timeout", None)  # nothing to wait for
    query = dp_query(kind, column, **options)
    table = data_to_table(mock)
    try:
        check_query(query, dataset.schema, table.num_rows)
    except QueryError as exc:
        raise InvalidError(str(exc)) from None
    answer = run_query(query, table)
    return DPResult(
        dataset.name, query, _label(query, answer["value"]), answer["accuracy"], query.epsilon,
        on_mock=True,
    )  # fmt: skip


QUERY_OPTIONS = """Options: epsilon (required), bounds=(low, high), categories=[...], q (quantile),
by=COLUMN with groups=[...] for one answer per group, timeout (seconds to wait for an
auto-approved answer). See DPQueries.ask."""


@functools.cache
def query_kinds() -> dict[str, str]:
    """Each DP query the domain knows (jupyter_syft.privacy.queries' registry) and what it
    answers; loaded on first use (OpenDP is not needed before)."""
    from jupyter_syft.privacy.queries import QUERY_KINDS

    return {name: kind.summary for name, kind in QUERY_KINDS.items()}


@dataclass(frozen=True)
class DPResult:
    """A DP answer: the value, what it cost, and what is left of the budget.

    `accuracy`: with 95 % confidence the noise added is within ±accuracy (per value), for
    answers that are one noisy sum, count or mean; None for others (quantiles, grouped means
    and variances, which combine several noisy values). Its reprs show the value rounded to
    that accuracy (`shown`); `value` keeps every digit for code. `on_mock`: computed here on
    the mock, nothing charged (no budget is known then).
    """

    dataset: str
    query: m.DPQuery
    value: Any
    accuracy: float | None
    epsilon: float
    epsilon_left: float | None = None
    delta_left: float | None = None
    on_mock: bool = False

    @property
    def label(self) -> str:
        """What was asked, e.g. "mean(bmi) by sex"."""
        query = self.query
        by = f" by {query.by}" if query.by else ""
        return f"{query.kind}({query.column}){by}"

    @property
    def shown(self) -> str:
        """The value to its accuracy: "33.25 ± 7.09"; several values "{...} (each ± 7.09)"."""
        return shown_answer(self.value, self.accuracy)

    def summary(self) -> str:
        confidence = "" if self.accuracy is None else "± is the noise at 95 % confidence; "
        if self.on_mock:
            return (
                f"MOCK: computed here on the mock of {self.dataset!r} (public data), "
                f"{confidence}epsilon {self.epsilon:g} not charged"
            )
        return (
            f"{confidence}epsilon {self.epsilon:g} spent, "
            f"{self.epsilon_left:g} left on {self.dataset!r}"
        )

    def __repr__(self) -> str:
        return f"{self.label} = {self.shown}  [{self.summary()}]"

    def _repr_html_(self) -> str:
        return (
            f"<code>{html.escape(self.label)}</code> = <b>{html.escape(self.shown)}</b>"
            f"<br><small>{html.escape(self.summary())}</small>"
        )


SIGNIFICANT_DIGITS = 3  # of an accuracy; the value is shown to the same decimal place


def shown_answer(value: Any, accuracy: float | None) -> str:
    """A DP answer as text, rounded to what its noise leaves meaningful: to the decimal place
    of the accuracy's last significant digit, or to SIGNIFICANT_DIGITS + 1 of its own when
    the accuracy is not known."""
    if accuracy is None or not math.isfinite(accuracy) or accuracy <= 0:
        return _rounded(value, None)
    places = _places(accuracy, SIGNIFICANT_DIGITS)
    plus_minus = f"± {accuracy:.{places}f}"
    text = _rounded(value, places)
    return f"{text} {plus_minus}" if _is_number(value) else f"{text} (each {plus_minus})"


def _places(number: float, digits: int) -> int:
    """Decimal places that keep `digits` significant digits of `number` (none for 123.4)."""
    return max(0, digits - 1 - math.floor(math.log10(abs(number))))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) or (hasattr(value, "dtype") and value.ndim == 0)


def _rounded(value: Any, places: int | None) -> str:
    if isinstance(value, dict):
        inner = ", ".join(f"{k!r}: {_rounded(v, places)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list | tuple) or (hasattr(value, "tolist") and not _is_number(value)):
        items = value.tolist() if hasattr(value, "tolist") else value
        return "[" + ", ".join(_rounded(v, places) for v in items) + "]"
    if isinstance(value, numbers.Integral) or not _is_number(value):
        return repr(value.item() if hasattr(value, "item") else value)
    number = float(value)
    if not math.isfinite(number):
        return repr(number)
    if places is None:
        places = _places(number, SIGNIFICANT_DIGITS + 1) if number else 0
    return f"{number:.{places}f}"


class DPQueryRequest(RemoteRequest):
    """A DP query on a domain; `result()` gives a DPResult."""

    def __init__(self, connection: NodeConnection, info: m.RequestInfo) -> None:
        super().__init__(connection, info)
        self._dp_result: DPResult | None = None

    @property
    def query(self) -> m.DPQuery:
        assert isinstance(self.info.privacy, m.DPQuery)
        return self.info.privacy

    def result(self, timeout: float | None = None) -> DPResult:
        if self._dp_result is None:
            answer = super().result(timeout)
            [dataset] = self.info.inputs.values()
            [budget] = self._connection.call(m.GetBudget(dataset)).budgets
            self._dp_result = DPResult(
                dataset=dataset,
                query=self.query,
                value=_label(self.query, answer["value"]),
                accuracy=answer["accuracy"],
                epsilon=self.info.epsilon or 0.0,
                epsilon_left=budget.epsilon_left,
                delta_left=budget.delta_left,
            )
        return self._dp_result

    def __repr__(self) -> str:
        if self._dp_result is not None:
            return repr(self._dp_result)
        return f"<DP query {self.id[:8]} {self.info.code}: {self.info.status}>"

    def _repr_html_(self) -> str:
        if self._dp_result is not None:
            return self._dp_result._repr_html_()
        return super()._repr_html_()


@dataclass(frozen=True)
class DPModel:
    """Weights trained with DP-SGD, as safetensors bytes carrying (ε, δ) in their metadata."""

    safetensors: bytes
    epsilon: float
    delta: float
    noise_multiplier: float
    steps: int

    def state_dict(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load

        return load(self.safetensors)

    def load_into(self, model: torch.nn.Module) -> torch.nn.Module:
        model.load_state_dict(self.state_dict())
        return model

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.safetensors)

    def __repr__(self) -> str:
        return (
            f"<DPModel {len(self.safetensors)} bytes: epsilon {self.epsilon:g}, delta "
            f"{self.delta:g}, noise multiplier {self.noise_multiplier:.3g}, {self.steps} steps>"
        )


class DPTrainingRequest(RemoteRequest):
    """A DP training request; `result()` gives a DPModel."""

    def result(self, timeout: float | None = None) -> DPModel:
        answer = super().result(timeout)
        return DPModel(
            safetensors=answer["safetensors"].tobytes(),
            epsilon=self.info.epsilon or 0.0,
            delta=self.info.delta or 0.0,
            noise_multiplier=answer["noise_multiplier"],
            steps=answer["steps"],
        )


class Budget:
    """Your privacy budget on one dataset: granted by the owner, spent, left, and each charge."""

    def __init__(self, info: m.BudgetInfo) -> None:
        self.info = info

    dataset = property(lambda self: self.info.dataset)
    epsilon = property(lambda self: self.info.epsilon)
    delta = property(lambda self: self.info.delta)
    epsilon_spent = property(lambda self: self.info.epsilon_spent)
    epsilon_left = property(lambda self: self.info.epsilon_left)
    delta_spent = property(lambda self: self.info.delta_spent)
    delta_left = property(lambda self: self.info.delta_left)
    charges = property(lambda self: list(self.info.charges))

    def __repr__(self) -> str:
        delta = f"; delta {self.delta_spent:g} of {self.delta:g}" if self.delta else ""
        return (
            f"<Budget {self.dataset}: epsilon {self.epsilon_spent:g} spent of {self.epsilon:g}, "
            f"{self.epsilon_left:g} left{delta}>"
        )

    def _repr_html_(self) -> str:
        share = self.epsilon_spent / self.epsilon if self.epsilon else 1.0
        left = self.epsilon_left / self.epsilon if self.epsilon else 0.0
        colour = "#c62828" if left == 0 else "#f9a825" if left < 0.2 else "#2e7d32"
        delta = f" &middot; &delta; {self.delta_spent:g} of {self.delta:g}" if self.delta else ""
        return (
            f"<div><b>{html.escape(self.dataset)}</b>: &epsilon; {self.epsilon_spent:g} spent "
            f"of {self.epsilon:g}, <b>{self.epsilon_left:g} left</b>{delta}"
            f'<div style="width:16em;height:0.6em;background:{colour}33;border-radius:3px">'
            f'<div style="width:{100 * share:.1f}%;height:100%;background:{colour};'
            'border-radius:3px"></div></div></div>'
        )


class Budgets(Mapping[str, Budget]):
    """Your budgets on a domain, by dataset name."""

    def __init__(self, budgets: list[m.BudgetInfo]) -> None:
        self._by_dataset = {b.dataset: Budget(b) for b in budgets}

    def __getitem__(self, dataset: str) -> Budget:
        return self._by_dataset[dataset]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_dataset)

    def __len__(self) -> int:
        return len(self._by_dataset)

    def __repr__(self) -> str:
        return "\n".join(repr(b) for b in self._by_dataset.values()) or "<no privacy budgets>"

    def _repr_html_(self) -> str:
        gauges = "".join(b._repr_html_() for b in self._by_dataset.values())
        return gauges or "no privacy budgets"


def _bounds(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    if bounds is None:
        return None
    low, high = bounds
    return float(low), float(high)


def _keys(values: Iterable[Any]) -> list[m.Category]:
    """Categories or group keys as plain Python values (numpy scalars, e.g. from a mock)."""
    return [v.item() if hasattr(v, "item") else v for v in values]


def _label(query: m.DPQuery, value: Any) -> Any:
    """Name a histogram's counts by category and a grouped answer's values by group."""

    def named(answer: Any) -> Any:
        if query.kind == "histogram":
            return dict(zip(query.categories, answer, strict=True))
        return answer

    if query.by:
        return {group: named(v) for group, v in zip(query.groups, value, strict=True)}
    return named(value)
