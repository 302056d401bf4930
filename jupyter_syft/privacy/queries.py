"""The built-in DP queries: count, sum, mean, variance, histogram and quantile, each also grouped.

Two doors: `check_query` runs in the node before anything is charged and reads no data;
`run_query` runs in the job worker on the private table. Each kind is a `QueryKind` in the
`QUERY_KINDS` registry: it says which OpenDP measurements ("parts") answer it and how their
outputs combine. Every query is ε-DP (δ = 0) for one changed row (see `privacy.budget`).

Why it is built this way (each point closes a known leak):
- Noise comes only from OpenDP. Textbook floating-point Laplace noise (a uniform double pushed
  through a log) leaves patterns in the low bits that give the true value away (Mironov 2012,
  "On significance of the least significant bits for differential privacy"). OpenDP samples
  noise exactly on a fine grid and rounds the input to that grid; integer outputs get exact
  discrete Laplace noise and quantiles an exact exponential mechanism.
- Bounds, categories and group keys are declared by the scientist and never read from the data:
  bounds taken from private values, or a key that exists only because one person is in the
  data, would leak beyond ε.
- Preprocessing outside OpenDP is row by row (a missing value becomes the middle of the bounds,
  keys become integer codes), so neighbouring datasets stay neighbours; OpenDP clamps to the
  bounds itself, so the sensitivity holds whatever that preprocessing did.
- The measurement is built and its privacy loss checked against the charge in the node, before
  the charge (a query OpenDP refuses costs nothing), and again in the worker before any data is
  read.

Grouped queries: rows are split by the declared keys (rows with other keys are dropped) and each
group gets the same measurement M over data of unknown size. A changed row either stays in its
group (which then differs by symmetric distance 2) or moves between two groups (each differs by
1), so releasing every group costs max(M(2), 2·M(1)): parallel composition.
"""

from __future__ import annotations

import functools
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import opendp.mod as dp
import pyarrow as pa
import pyarrow.compute as pc
from opendp import domains, measurements, measures, metrics, transformations
from opendp.accuracy import discrete_laplacian_scale_to_accuracy, laplacian_scale_to_accuracy

from jupyter_syft.errors import DisclosableError
from jupyter_syft.privacy.budget import BudgetValueError, mechanism_epsilon
from jupyter_syft.wire.messages import DPQuery

dp.enable_features("contrib")

MAX_CATEGORIES = 1000  # categories of a histogram, and groups of a grouped query
QUANTILE_CANDIDATES = 1001  # a quantile is chosen among this many points spread over the bounds
MAX_ABS_BOUND = 1e12
ALPHA = 0.05  # accuracy is reported at 95 % confidence
CHANGED_ROW = 2  # symmetric distance between datasets that differ in one changed row
INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
NUMERIC_TYPES = INTEGER_TYPES | {"halffloat", "float", "double", "bool"}
STRING_TYPES = {"string", "large_string"}

Measurement = Any  # opendp.mod.Measurement (its stubs do not type the `>>` chains)


class QueryError(DisclosableError):
    """A query the node refuses before charging anything; the message says why."""


@dataclass(frozen=True)
class Part:
    """One OpenDP measurement of a query: `make(scale)` applied to `feature(values)`."""

    feature: Callable[[np.ndarray], np.ndarray]
    make: Callable[[float], Measurement]
    accuracy: Callable[[float], float] | None = None  # noise scale -> 95 % half-width


@dataclass(frozen=True)
class Plan:
    """A query's parts with their measurements calibrated; `loss` is its ε for a changed row."""

    parts: list[Part]
    measurements: list[Measurement]
    loss: float
    accuracy: float | None


class QueryKind(ABC):
    """One kind of DP aggregate over one column (`values`: floats with NaN for missing, or
    integer codes of the declared categories, -1 for any other value).

    The one descriptor of a query (where to add one: docs/architecture.md): registered here,
    it is the domain's implementation, the scientist's `dataset.dp.<name>(...)` method
    (client.privacy), the kernel's `--dp-epsilon` cell syntax (kernel.dp), and its
    documentation there (`summary`, `help(dataset.dp.<name>)`).
    """

    name: ClassVar[str]
    summary: ClassVar[str]  # what it answers, for the scientist's help
    column_required: ClassVar[bool] = True
    column_types: ClassVar[str] = "numeric"  # or "categorical", or "any" (only missing counts)
    uses_bounds: ClassVar[bool] = True
    uses_categories: ClassVar[bool] = False
    uses_quantile: ClassVar[bool] = False

    def check(self, query: DPQuery, schema: dict[str, str]) -> None:
        """Refuse (QueryError) parameters this kind cannot use or needs and lacks."""
        if self.column_required and not query.column:
            raise QueryError(f"a DP {self.name} needs a column")
        if query.column:
            _check_column(query.column, schema, self.column_types, self.name)
        _check_bounds(query, self)
        if query.quantile != 0.5 and not self.uses_quantile:
            raise QueryError(f"q applies to a DP quantile, not to a DP {self.name}")
        if query.categories and not self.uses_categories:
            raise QueryError(f"categories do not apply to a DP {self.name}")
        if self.uses_categories:
            if not query.categories:
                raise QueryError(
                    f"a DP {self.name} needs the categories to count: categories=[...]"
                )
            _check_keys("categories", query.categories, schema[query.column])

    @abstractmethod
    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        """The measurements answering the query over `size` rows (None: unknown, grouped)."""

    def combine(self, query: DPQuery, outputs: list[Any]) -> Any:
        return outputs[0]


QUERY_KINDS: dict[str, QueryKind] = {}


def register(kind: type[QueryKind]) -> type[QueryKind]:
    QUERY_KINDS[kind.name] = kind()
    return kind


# ---- building blocks ------------------------------------------------------------------------


@functools.cache
def _floats(size: int | None) -> Any:
    domain = domains.vector_domain(domains.atom_domain(T=float, nan=False), size=size)
    return domain, metrics.symmetric_distance()


@functools.cache
def _integers(size: int | None) -> Any:
    domain = domains.vector_domain(domains.atom_domain(T="i64"), size=size)
    return domain, metrics.symmetric_distance()


def _bounds(query: DPQuery) -> tuple[float, float]:
    assert query.bounds is not None  # checked by check_query
    return float(query.bounds[0]), float(query.bounds[1])


def _imputed(query: DPQuery) -> Callable[[np.ndarray], np.ndarray]:
    """Missing values become the middle of the bounds (row by row)."""
    low, high = _bounds(query)
    middle = low / 2 + high / 2

    def feature(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        if missing.any():
            return np.where(missing, middle, values)
        return np.require(values, requirements="W")  # OpenDP takes writable arrays only

    return feature


def _present(values: np.ndarray) -> np.ndarray:
    return (~np.isnan(values)).astype(np.int64)


def _laplace_accuracy(scale: float) -> float:
    return laplacian_scale_to_accuracy(scale, ALPHA)


def _discrete_accuracy(scale: float) -> float:
    return discrete_laplacian_scale_to_accuracy(scale, ALPHA)


def _float_sum(query: DPQuery, size: int | None) -> Part:
    def make(scale: float) -> Measurement:
        return (
            _floats(size)
            >> transformations.then_clamp(_bounds(query))
            >> transformations.then_sum()
            >> measurements.then_laplace(scale)
        )

    return Part(_imputed(query), make, _laplace_accuracy)


def _centred_sum(query: DPQuery, power: int) -> Part:
    """Σ(x - middle)^power over a group, for grouped means and variances: a changed row moves
    it by at most half the bounds' width (squared for power 2), where Σx would move by
    max(|low|, |high|). The middle is public, so adding it back is post-processing."""
    low, high = _bounds(query)
    middle, half = low / 2 + high / 2, high / 2 - low / 2
    impute = _imputed(query)
    bounds = (-half, half) if power == 1 else (0.0, half * half)

    def feature(values: np.ndarray) -> np.ndarray:
        return (np.clip(impute(values), low, high) - middle) ** power

    def make(scale: float) -> Measurement:
        return (
            _floats(None)
            >> transformations.then_clamp(bounds)
            >> transformations.then_sum()
            >> measurements.then_laplace(scale)
        )

    return Part(feature, make, _laplace_accuracy)


def _row_count(query: DPQuery, size: int | None) -> Part:
    def make(scale: float) -> Measurement:
        return _floats(size) >> transformations.then_count() >> measurements.then_laplace(scale)

    return Part(_imputed(query), make, _discrete_accuracy)


# ---- the kinds ----------------------------------------------------------------------------


@register
class Count(QueryKind):
    """Rows, or with `column` the rows where it is not missing. Without `column` or `by` the
    true answer is the public row count; it is still noised and charged like any count."""

    name = "count"
    summary = "Rows (or rows where `column` is not missing)."
    column_required = False
    column_types = "any"
    uses_bounds = False

    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        def make(scale: float) -> Measurement:
            return (
                _integers(size)
                >> transformations.then_clamp((0, 1))
                >> transformations.then_sum()
                >> measurements.then_laplace(scale)
            )

        return [Part(_present, make, _discrete_accuracy)]


@register
class Sum(QueryKind):
    name = "sum"
    summary = "The sum of `column`, each value clipped to `bounds`."

    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        return [_float_sum(query, size)]


@register
class Mean(QueryKind):
    """Over the public row count; grouped, a noisy centred sum over a noisy count, clipped to
    the bounds (None where the noisy count is below 1)."""

    name = "mean"
    summary = "The mean of `column` within `bounds`."

    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        if size is None:
            return [_centred_sum(query, 1), _row_count(query, size)]

        def make(scale: float) -> Measurement:
            return (
                _floats(size)
                >> transformations.then_clamp(_bounds(query))
                >> transformations.then_mean()
                >> measurements.then_laplace(scale)
            )

        return [Part(_imputed(query), make, _laplace_accuracy)]

    def combine(self, query: DPQuery, outputs: list[Any]) -> Any:
        if len(outputs) == 1:
            return outputs[0]
        centred, count = outputs
        low, high = _bounds(query)
        return None if count < 1 else min(max(low / 2 + high / 2 + centred / count, low), high)


@register
class Variance(QueryKind):
    """Sample variance (ddof 1) over the public row count; grouped, from a noisy count and
    noisy centred sums of values and squares, clipped to [0, (high - low)² / 4] (None where the
    noisy count is below 2)."""

    name = "variance"
    summary = "The sample variance (ddof 1) of `column` within `bounds`."

    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        if size is None:
            return [_row_count(query, size), _centred_sum(query, 1), _centred_sum(query, 2)]

        def make(scale: float) -> Measurement:
            return (
                _floats(size)
                >> transformations.then_clamp(_bounds(query))
                >> transformations.then_variance()
                >> measurements.then_laplace(scale)
            )

        return [Part(_imputed(query), make, _laplace_accuracy)]

    def combine(self, query: DPQuery, outputs: list[Any]) -> Any:
        if len(outputs) == 1:
            return outputs[0]
        count, total, squares = outputs
        if count < 2:
            return None
        low, high = _bounds(query)
        variance = (squares - total * total / count) / (count - 1)
        return min(max(variance, 0.0), (high - low) ** 2 / 4)


@register
class Histogram(QueryKind):
    """Counts of each declared category of `column`; other values are not counted."""

    name = "histogram"
    summary = "Counts of each of `categories` in `column` (other values are not counted)."
    column_types = "categorical"
    uses_bounds = False
    uses_categories = True

    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        categories = list(range(len(query.categories)))

        def make(scale: float) -> Measurement:
            return (
                _integers(size)
                >> transformations.then_count_by_categories(
                    categories=categories, null_category=False
                )
                >> measurements.then_laplace(scale)
            )

        return [Part(lambda codes: codes, make, _discrete_accuracy)]


@register
class Quantile(QueryKind):
    """The `quantile` (0.5: the median), one of QUANTILE_CANDIDATES points spread evenly over
    the bounds, by OpenDP's exponential mechanism."""

    name = "quantile"
    summary = "The `q`-quantile of `column` (0.5: the median), to 1/1000 of the bounds' width."
    uses_quantile = True

    def check(self, query: DPQuery, schema: dict[str, str]) -> None:
        super().check(query, schema)
        if not (math.isfinite(query.quantile) and 0 < query.quantile < 1):
            raise QueryError(f"quantile must be between 0 and 1, not {query.quantile!r}")

    def parts(self, query: DPQuery, size: int | None) -> list[Part]:
        candidates = np.linspace(*_bounds(query), QUANTILE_CANDIDATES).tolist()

        def make(scale: float) -> Measurement:
            return _floats(size) >> measurements.then_private_quantile(
                measures.max_divergence(), candidates=candidates, alpha=query.quantile, scale=scale
            )

        return [Part(_imputed(query), make)]


# ---- the front doors ---------------------------------------------------------------------


def check_query(query: DPQuery, schema: dict[str, str], rows: int) -> None:
    """Refuse (QueryError) anything that would make the query fail or leak; reads no data."""
    kind = QUERY_KINDS.get(query.kind)
    if kind is None:
        raise QueryError(f"unknown DP query {query.kind!r}; known: {', '.join(QUERY_KINDS)}")
    try:
        epsilon = mechanism_epsilon(query.epsilon)
    except BudgetValueError as exc:
        raise QueryError(str(exc)) from exc
    if rows < 1:
        raise QueryError("the dataset has no rows")
    kind.check(query, schema)
    if query.by:
        _check_column(query.by, schema, "categorical", "grouped query")
        if not query.groups:
            raise QueryError("a grouped query needs its public group keys: groups=[...]")
        _check_keys("groups", query.groups, schema[query.by])
    elif query.groups:
        raise QueryError("groups need a column to group by: by=...")
    plan(query, None if query.by else rows, epsilon)


def describe_query(query: DPQuery) -> str:
    """The query as a scientist writes it (`ds.dp...`): what reviewers and the audit log see."""
    args = [repr(query.column)] if query.column else []
    if query.bounds is not None:
        args.append(f"bounds=({query.bounds[0]!r}, {query.bounds[1]!r})")
    if query.categories:
        args.append(f"categories={query.categories!r}")
    if query.kind == "quantile":
        args.append(f"q={query.quantile!r}")
    if query.by:
        args.append(f"by={query.by!r}, groups={query.groups!r}")
    args.append(f"epsilon={query.epsilon!r}")
    return f"dp.{query.kind}({', '.join(args)})"


def run_query(query: DPQuery, table: pa.Table) -> dict[str, Any]:
    """Answer `query` on the private `table`: {"value", "accuracy"}; grouped, one value per
    group in the order of `query.groups`."""
    kind = QUERY_KINDS[query.kind]
    epsilon = mechanism_epsilon(query.epsilon)
    values = _values(kind, query, table)
    if not query.by:
        calibrated = plan(query, len(values), epsilon)
        return {"value": _release(kind, query, calibrated, values), "accuracy": calibrated.accuracy}
    calibrated = plan(query, None, epsilon)
    codes = _codes(table.column(query.by), query.groups)
    order = np.argsort(codes, kind="stable")
    edges = np.searchsorted(codes[order], np.arange(len(query.groups) + 1))
    value = [
        _release(kind, query, calibrated, values[order[start:end]])
        for start, end in itertools.pairwise(edges)
    ]
    return {"value": value, "accuracy": calibrated.accuracy}


def plan(query: DPQuery, size: int | None, epsilon: float) -> Plan:
    """Calibrate each part to an equal share of `epsilon` and check the total.

    Known size: a part costs M(2). Grouped (size None): max(M(2), 2·M(1)), see the module notes.
    """
    kind = QUERY_KINDS[query.kind]
    parts = kind.parts(query, size)
    share = epsilon if len(parts) == 1 else math.nextafter(epsilon / len(parts), 0.0)

    def loss(measurement: Measurement) -> float:
        if size is not None:
            return measurement.map(CHANGED_ROW)
        return max(measurement.map(CHANGED_ROW), 2 * measurement.map(1))

    built, scales = [], []
    try:
        for part in parts:
            measurement, scale = _calibrate(part.make, loss, share)
            built.append(measurement)
            scales.append(scale)
    except dp.OpenDPException as exc:
        raise QueryError(f"OpenDP cannot answer this query: {exc.message}") from exc
    losses = [loss(m) for m in built]
    if sum(map(Fraction, losses)) > Fraction(epsilon):
        raise QueryError("the calibrated query would cost more than its epsilon")
    accuracy = None
    if len(parts) == 1 and parts[0].accuracy is not None:
        accuracy = parts[0].accuracy(scales[0])
    return Plan(parts, built, math.fsum(losses), accuracy)


def _calibrate(
    make: Callable[[float], Measurement], loss: Callable[[Measurement], float], target: float
) -> tuple[Measurement, float]:
    """The measurement with the smallest noise scale found whose loss is within `target`.

    Every mechanism here costs (sensitivity / scale), so the loss at scale 1 gives the scale
    directly; a few tiny steps up absorb OpenDP's rounding, which is always conservative.
    """
    scale = loss(make(1.0)) / target
    for _ in range(64):
        measurement = make(scale)
        if loss(measurement) <= target:
            return measurement, scale
        scale *= 1 + 2**-40
    raise QueryError("could not calibrate the noise to this epsilon")


def _release(kind: QueryKind, query: DPQuery, calibrated: Plan, values: np.ndarray) -> Any:
    outputs = [
        measurement(part.feature(values))
        for part, measurement in zip(calibrated.parts, calibrated.measurements, strict=True)
    ]
    return kind.combine(query, outputs)


def _values(kind: QueryKind, query: DPQuery, table: pa.Table) -> np.ndarray:
    if kind.column_types == "categorical":
        return _codes(table.column(query.column), query.categories)
    if not query.column:
        return np.ones(table.num_rows)
    column = table.column(query.column)
    if kind.column_types == "any":  # only whether a value is missing matters
        return np.where(pc.is_null(column, nan_is_null=True).to_numpy(), np.nan, 1.0)
    return pc.cast(column, pa.float64()).to_numpy()


def _codes(column: pa.ChunkedArray, keys: list[Any]) -> np.ndarray:
    """Each row's index in `keys`, or -1."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    indices = pc.index_in(column, value_set=pa.array(keys, type=column.type))
    return pc.fill_null(indices, -1).to_numpy().astype(np.int64)


def _check_column(name: str, schema: dict[str, str], types: str, use: str) -> None:
    if name not in schema:
        raise QueryError(f"no column {name!r}; columns: {', '.join(schema)}")
    arrow_type = schema[name]
    if types == "numeric" and arrow_type not in NUMERIC_TYPES:
        raise QueryError(f"column {name!r} is {arrow_type}, not numeric: a {use} needs numbers")
    if types == "categorical" and _key_type(arrow_type) is None:
        raise QueryError(
            f"column {name!r} is {arrow_type}: a {use} needs integer, boolean or string values"
        )


def _check_bounds(query: DPQuery, kind: QueryKind) -> None:
    if not kind.uses_bounds:
        if query.bounds is not None:
            raise QueryError(f"bounds do not apply to a DP {kind.name}")
        return
    if query.bounds is None:
        raise QueryError(
            f"a DP {kind.name} needs public bounds on {query.column!r}: bounds=(low, high)"
        )
    low, high = query.bounds
    if not all(math.isfinite(b) and abs(b) <= MAX_ABS_BOUND for b in (low, high)):
        raise QueryError(f"bounds must be finite numbers within ±{MAX_ABS_BOUND:g}")
    if not low < high:
        raise QueryError(f"bounds must be (low, high) with low < high, not ({low!r}, {high!r})")


def _key_type(arrow_type: str) -> type | None:
    if arrow_type.startswith("dictionary<values="):
        arrow_type = arrow_type.removeprefix("dictionary<values=").split(",")[0]
    if arrow_type in INTEGER_TYPES:
        return int
    if arrow_type == "bool":
        return bool
    if arrow_type in STRING_TYPES:
        return str
    return None


def _check_keys(what: str, keys: list[Any], arrow_type: str) -> None:
    expected = _key_type(arrow_type)
    if len(keys) > MAX_CATEGORIES:
        raise QueryError(f"at most {MAX_CATEGORIES} {what}, not {len(keys)}")
    if any(type(key) is not expected for key in keys):
        kind = {int: "integers", bool: "booleans", str: "strings"}[expected]  # type: ignore[index]
        raise QueryError(f"{what} of a {arrow_type} column must be {kind}")
    if len(set(keys)) != len(keys):
        raise QueryError(f"{what} must not repeat")


# OpenDP sets up its library calls on first use (~5 ms): do it here, once, so that job
# processes forked from the executor's forkserver (which preloads this module) start warm.
plan(DPQuery("mean", 1.0, "x", (0.0, 1.0)), 1, 1.0)
