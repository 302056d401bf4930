"""Differential privacy, in one process: noise scales, query checks, units, the ledger, DP-SGD.

The statistical tests draw many releases and compare the noise with theory. OpenDP takes its
randomness from the operating system and cannot be seeded, so each tolerance is five standard
errors of the statistic (a false failure about once in a million runs), not a fixed seed.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np
import opendp.combinators as dpc
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from scipy import stats

from jupyter_syft.domain.store import BudgetExhausted, Store, StoreError
from jupyter_syft.privacy import budget
from jupyter_syft.privacy.queries import QueryError, check_query, plan, run_query
from jupyter_syft.wire import messages as m

pytestmark = pytest.mark.unit

N_RELEASES = 2000
SIGMAS = 5


def assert_noise_std(errors: np.ndarray, expected_std: float) -> None:
    """The sample std is within 5 standard errors of `expected_std` (delta method, using the
    sample's own kurtosis: Var(s²) ≈ (m4 - s⁴) / N)."""
    centred = errors - errors.mean()
    variance = centred.var()
    m4 = np.mean(centred**4)
    se_std = math.sqrt((m4 - variance**2) / len(errors)) / (2 * math.sqrt(variance))
    assert abs(math.sqrt(variance) - expected_std) <= SIGMAS * se_std, (
        math.sqrt(variance),
        expected_std,
        se_std,
    )
    assert abs(errors.mean()) <= SIGMAS * expected_std / math.sqrt(len(errors))


def releases(query: m.DPQuery, values: np.ndarray, size: int | None) -> np.ndarray:
    """N_RELEASES answers of one calibrated measurement (what run_query does, minus the build)."""
    calibrated = plan(query, size, budget.mechanism_epsilon(query.epsilon))
    [part], [measurement] = calibrated.parts, calibrated.measurements
    data = part.feature(values)
    return np.array([measurement(data) for _ in range(N_RELEASES)], dtype=float)


# ---- noise has the advertised scale ------------------------------------------------------


def test_mean_noise_is_laplace_with_scale_from_bounds_size_and_epsilon() -> None:
    n, low, high, epsilon = 1000, 0.0, 10.0, 0.5
    values = np.random.default_rng(1).uniform(-2, 12, n)  # some outside the bounds: clamped
    query = m.DPQuery("mean", epsilon, "x", (low, high))
    errors = releases(query, values, n) - np.clip(values, low, high).mean()
    scale = (high - low) / n / epsilon  # change-one-row sensitivity of a mean over n rows
    assert_noise_std(errors, math.sqrt(2) * scale)
    assert stats.kstest(errors, stats.laplace(scale=scale).cdf).pvalue > 1e-4
    # The reported accuracy covers 95 % of the noise (binomial tolerance).
    accuracy = run_query(query, pa.table({"x": values}))["accuracy"]
    assert accuracy == pytest.approx(scale * math.log(1 / 0.05), rel=1e-6)
    covered = np.mean(np.abs(errors) <= accuracy)
    assert abs(covered - 0.95) <= SIGMAS * math.sqrt(0.95 * 0.05 / N_RELEASES)


def test_sum_noise_scale() -> None:
    n, low, high, epsilon = 500, -1.0, 3.0, 1.0
    values = np.random.default_rng(2).uniform(low, high, n)
    errors = releases(m.DPQuery("sum", epsilon, "x", (low, high)), values, n) - values.sum()
    assert_noise_std(errors, math.sqrt(2) * (high - low) / epsilon)


def discrete_laplace_std(scale: float) -> float:
    t = math.exp(-1 / scale)
    return math.sqrt(2 * t) / (1 - t)


def test_histogram_noise_is_discrete_laplace_with_sensitivity_two() -> None:
    """A changed row moves one count down and another up: L1 sensitivity 2."""
    codes = np.random.default_rng(3).integers(0, 3, 300)
    query = m.DPQuery("histogram", 0.5, "c", categories=[0, 1, 2])
    calibrated = plan(query, len(codes), 0.5)
    [measurement] = calibrated.measurements
    truth = np.bincount(codes, minlength=3)
    errors = np.array([measurement(codes) for _ in range(N_RELEASES)]) - truth
    assert np.all(errors == np.round(errors))  # integer noise
    assert_noise_std(errors.ravel().astype(float), discrete_laplace_std(2 / 0.5))


def test_grouped_count_pays_for_rows_moving_between_groups() -> None:
    """Parallel composition over groups: a row moving between two groups changes both, so each
    group's count gets the noise of sensitivity 2 (not 1) for the query's ε."""
    epsilon = 1.0
    query = m.DPQuery("count", epsilon, by="g", groups=["a", "b"])
    table = pa.table({"g": ["a"] * 40 + ["b"] * 60 + ["z"] * 5})
    counts = np.array([run_query(query, table)["value"] for _ in range(400)], dtype=float)
    assert_noise_std((counts - [40, 60]).ravel(), discrete_laplace_std(2 / epsilon))
    assert plan(query, None, epsilon).loss <= epsilon


def test_quantile_lands_near_the_true_median() -> None:
    values = np.random.default_rng(4).normal(50, 10, 2000)
    query = m.DPQuery("quantile", 1.0, "x", (0.0, 100.0), quantile=0.5)
    answers = np.array([run_query(query, pa.table({"x": values}))["value"] for _ in range(50)])
    assert np.all((answers >= 0) & (answers <= 100))
    assert abs(np.median(answers) - np.median(values)) < 1.0  # 1 % of the bounds' width


# ---- checks before any charge --------------------------------------------------------------

SCHEMA = {"bmi": "double", "age": "int64", "sex": "large_string", "when": "timestamp[us]"}


@pytest.mark.parametrize(
    "query, match",
    [
        (m.DPQuery("mean", 0.1, "bmi"), "needs public bounds"),
        (m.DPQuery("mean", 0.1, "bmi", (50.0, 15.0)), "low < high"),
        (m.DPQuery("mean", 0.1, "bmi", (15.0, math.inf)), "finite"),
        (m.DPQuery("mean", 0.0, "bmi", (15.0, 50.0)), "greater than 0"),
        (m.DPQuery("mean", -1.0, "bmi", (15.0, 50.0)), "greater than 0"),
        (m.DPQuery("mean", math.nan, "bmi", (15.0, 50.0)), "finite"),
        (m.DPQuery("mean", math.inf, "bmi", (15.0, 50.0)), "finite"),
        (m.DPQuery("mean", 0.1, "weight", (15.0, 50.0)), "no column 'weight'"),
        (m.DPQuery("mean", 0.1, "sex", (15.0, 50.0)), "not numeric"),
        (m.DPQuery("sum", 0.1, "when", (0.0, 1.0)), "not numeric"),
        (m.DPQuery("median", 0.1, "bmi", (15.0, 50.0)), "unknown DP query"),
        (m.DPQuery("quantile", 0.1, "bmi", (15.0, 50.0), quantile=1.0), "between 0 and 1"),
        (m.DPQuery("histogram", 0.1, "sex"), "needs the categories"),
        (m.DPQuery("histogram", 0.1, "sex", categories=[1, 2]), "must be strings"),
        (m.DPQuery("histogram", 0.1, "bmi", categories=[1.5]), "integer, boolean or string"),
        (m.DPQuery("histogram", 0.1, "age", categories=[1, 1]), "must not repeat"),
        (m.DPQuery("count", 0.1, bounds=(0.0, 1.0)), "do not apply"),
        (m.DPQuery("mean", 0.1, "bmi", (15.0, 50.0), by="sex"), "group keys"),
        (m.DPQuery("mean", 0.1, "bmi", (15.0, 50.0), groups=["F"]), "by="),
        (m.DPQuery("mean", 0.1, "bmi", (15.0, 50.0), by="bmi", groups=[1]), "grouped query"),
        (m.DPQuery("count", 1e-12), "at least 1e-09"),
    ],
)
def test_bad_queries_are_refused_before_anything_runs(query: m.DPQuery, match: str) -> None:
    with pytest.raises(QueryError, match=match):
        check_query(query, SCHEMA, rows=100)


def test_every_kind_runs_plain_and_grouped() -> None:
    rng = np.random.default_rng(5)
    table = pa.table(
        {
            "x": rng.uniform(0, 1, 400),
            "g": rng.choice(["a", "b"], 400),
            "c": rng.integers(0, 3, 400),
        }
    )
    schema = {f.name: str(f.type) for f in table.schema}
    for kind in ("count", "sum", "mean", "variance", "histogram", "quantile"):
        extra: dict = {"categories": [0, 1, 2]} if kind == "histogram" else {}
        column = "c" if kind == "histogram" else "x"
        bounds = None if kind in ("count", "histogram") else (0.0, 1.0)
        for by, groups in (("", []), ("g", ["a", "b"])):
            query = m.DPQuery(kind, 1.0, column, bounds, by=by, groups=groups, **extra)
            check_query(query, schema, table.num_rows)
            answer = run_query(query, table)["value"]
            if by:
                assert len(answer) == 2, kind
            else:
                assert answer is not None, kind


# ---- units and the composition rule ------------------------------------------------------

epsilons = st.floats(min_value=1e-9, max_value=100, allow_nan=False)


@given(st.lists(epsilons, min_size=1, max_size=30))
def test_ledger_units_add_up_exactly_and_mechanisms_stay_within_their_charge(
    values: list[float],
) -> None:
    units = [budget.epsilon_units(e) for e in values]
    for e, u in zip(values, units, strict=True):
        assert abs(Fraction(u, budget.EPSILON_SCALE) - Fraction(e)) <= Fraction(1, 2 * 10**9)
        assert Fraction(budget.mechanism_value(u, budget.EPSILON_SCALE)) <= Fraction(u, 10**9)
    assert budget.epsilon_value(sum(units)) == pytest.approx(math.fsum(values), abs=1e-8)


@given(epsilons, st.floats(min_value=1e-15, max_value=0.5))
def test_add_remove_target_gives_the_charge_by_group_privacy(epsilon: float, delta: float) -> None:
    half, small_delta = budget.add_remove_target(epsilon, delta)
    assert 2 * Fraction(half) <= Fraction(epsilon)
    exp_upper = Fraction(math.nextafter(math.exp(half), math.inf))  # exp rounds by < 1 ulp
    assert Fraction(small_delta) * (1 + exp_upper) <= Fraction(delta)


def test_tenths_fill_a_budget_of_one_exactly(tmp_path: Path) -> None:
    """With floats 0.1 + 0.2 > 0.3; the ledger's integer units make ten tenths exactly one."""
    store = Store(tmp_path)
    store.set_budget("owner", "alice", "d", budget.epsilon_units(1.0), 0)
    for _ in range(10):
        submit(store, "alice", 0.1, auto=True)
    info = store.budget("alice", "d")
    assert (info.epsilon_spent, info.epsilon_left) == (1.0, 0.0)
    with pytest.raises(BudgetExhausted):
        submit(store, "alice", 1e-9, auto=True)
    store.close()


def submit(
    store: Store, peer: str, epsilon: float, auto: bool, dataset: str = "d"
) -> m.RequestInfo:
    query = m.DPQuery("count", epsilon)
    return store.add_dp_request(peer, dataset, query, "dp.count()", "dp.count", auto)


def test_ledger_agrees_with_opendp_composition(tmp_path: Path) -> None:
    """The ledger's sum is what OpenDP's own composition of the released measurements says."""
    store = Store(tmp_path)
    store.set_budget("owner", "alice", "d", budget.epsilon_units(2.0), 0)
    n = 1000
    asked = [0.1, 0.25, 0.05, 0.3, 0.2]
    kinds = ["sum", "mean", "variance", "quantile", "mean"]
    measurements = []
    for kind, epsilon in zip(kinds, asked, strict=True):
        query = m.DPQuery(kind, epsilon, "x", (0.0, 1.0))
        measurements += plan(query, n, budget.mechanism_epsilon(epsilon)).measurements
        submit(store, "alice", epsilon, auto=True)
    composed = dpc.make_composition(measurements).map(2)
    spent = store.budget("alice", "d").epsilon_spent
    assert spent == pytest.approx(sum(asked), abs=1e-12)
    assert spent * (1 - 1e-9) <= composed <= spent
    store.close()


class LedgerMachine(RuleBasedStateMachine):
    """Random grants, auto-approved and reviewed DP requests against a model in exact units."""

    peers = ("alice", "bob")

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="ledger-")
        self.store = Store(Path(self.folder))
        self.granted = {p: 0 for p in self.peers}
        self.spent = {p: 0 for p in self.peers}
        self.pending: list[tuple[str, str, int]] = []

    @initialize()
    def grant_some(self) -> None:
        for peer in self.peers:
            self.store.set_budget("owner", peer, "d", 10**9, 0)
            self.granted[peer] = 10**9

    @rule(peer=st.sampled_from(peers), epsilon=st.floats(0, 3))
    def set_budget(self, peer: str, epsilon: float) -> None:
        units = budget.epsilon_units(epsilon, allow_zero=True)
        if units < self.spent[peer]:
            with pytest.raises(StoreError, match="already spent"):
                self.store.set_budget("owner", peer, "d", units, 0)
        else:
            self.store.set_budget("owner", peer, "d", units, 0)
            self.granted[peer] = units

    @rule(peer=st.sampled_from(peers), epsilon=st.floats(1e-9, 2), auto=st.booleans())
    def ask(self, peer: str, epsilon: float, auto: bool) -> None:
        units = budget.epsilon_units(epsilon)
        fits = self.spent[peer] + units <= self.granted[peer]
        if not fits:
            with pytest.raises(BudgetExhausted):
                submit(self.store, peer, epsilon, auto)
            return
        info = submit(self.store, peer, epsilon, auto)
        if auto:
            self.spent[peer] += units
        else:
            self.pending.append((info.request_id, peer, units))

    @precondition(lambda self: self.pending)
    @rule(approve=st.booleans(), which=st.integers(0, 100))
    def decide(self, approve: bool, which: int) -> None:
        request_id, peer, units = self.pending.pop(which % len(self.pending))
        if approve and self.spent[peer] + units > self.granted[peer]:
            with pytest.raises(BudgetExhausted):
                self.store.decide("owner", request_id, True, "")
            assert self.store.request(request_id).status == "pending"
            return
        self.store.decide("owner", request_id, approve, "")
        if approve:
            self.spent[peer] += units

    @invariant()
    def ledger_matches_model(self) -> None:
        for peer in self.peers:
            info = self.store.budget(peer, "d")
            spent = sum(budget.epsilon_units(c.epsilon) for c in info.charges)
            assert spent == self.spent[peer]
            assert 0 <= self.spent[peer] <= self.granted[peer]
            assert info.epsilon_left >= 0
            left = budget.epsilon_units(info.epsilon_left, allow_zero=True)
            assert left == self.granted[peer] - spent

    def teardown(self) -> None:
        assert self.store.verify_audit()
        self.store.close()
        shutil.rmtree(self.folder)


TestLedger = LedgerMachine.TestCase
TestLedger.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_fifty_connections_racing_for_the_last_units_never_overspend(tmp_path: Path) -> None:
    """50 threads, each with its own SQLite connection, charge at once: BEGIN IMMEDIATE makes
    them take turns, and exactly what is left is spent."""
    first = Store(tmp_path)
    first.set_budget("owner", "alice", "d", budget.epsilon_units(1.0), 0)
    submit(first, "alice", 0.95, auto=True)
    stores = [first] + [Store(tmp_path) for _ in range(49)]
    start = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def race(store: Store) -> None:
        start.wait()
        try:
            submit(store, "alice", 0.01, auto=True)
            outcomes.append("charged")
        except BudgetExhausted:
            outcomes.append("refused")

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("charged") == 5 and outcomes.count("refused") == 45
    info = first.budget("alice", "d")
    assert (info.epsilon_spent, info.epsilon_left, len(info.charges)) == (1.0, 0.0, 6)
    for store in stores:
        store.close()


def test_the_database_itself_refuses_an_overspending_ledger_row(tmp_path: Path) -> None:
    import sqlite3

    store = Store(tmp_path)
    store.set_budget("owner", "alice", "d", 10, 0)
    submit(store, "alice", 1e-9, auto=True)  # 1 unit charged
    request = submit(store, "alice", 1e-9, auto=False)
    with pytest.raises(sqlite3.IntegrityError, match="below zero"):
        store._db.execute(
            "INSERT INTO budget_ledger (peer_id, dataset, request_id, epsilon_units,"
            " delta_units, at) VALUES ('alice', 'd', ?, 10, 0, 0)",
            (request.request_id,),
        )
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._db.execute("DELETE FROM budget_ledger")
    store.close()


# ---- DP-SGD in one process ---------------------------------------------------------------


def linear_model():
    import torch

    return torch.nn.Linear(2, 1)


def test_dp_sgd_regression_returns_only_weights_with_their_guarantee() -> None:
    from safetensors.torch import load

    from jupyter_syft.privacy.training import noise_multiplier, train

    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, (400, 2))
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "y": x @ [2.0, -1.0] + 0.5})
    spec = m.DPTraining("", "linear_model", ["a", "b"], "y", 2.0, 1e-5, loss="mse", epochs=2)
    sigma = noise_multiplier(spec, table.num_rows)
    out = train(spec, table, linear_model())
    assert set(out) == {
        "safetensors",
        "noise_multiplier",
        "steps",
        "accountant_epsilon",
        "accountant_delta",
    }
    assert out["noise_multiplier"] == sigma
    assert out["accountant_epsilon"] <= 1.0  # ε/2 for an added or removed row
    assert out["accountant_delta"] < 1e-5 / 2
    weights = load(out["safetensors"].tobytes())
    assert set(weights) == {"weight", "bias"}


@pytest.mark.parametrize(
    "model, match",
    [(linear_model, "one output per class"), (lambda: "not a model", "must return a torch")],
)
def test_dp_sgd_refuses_unusable_models(model, match: str) -> None:
    from jupyter_syft.privacy.training import TrainingError, train

    table = pa.table({"a": [0.0, 1.0], "b": [1.0, 0.0], "y": [0, 1]})
    spec = m.DPTraining("", "model", ["a", "b"], "y", 1.0, 1e-5, batch_size=1)
    with pytest.raises(TrainingError, match=match):
        train(spec, table, model())
