"""Privacy budgets: what a charge means, how charges add up, and how they are counted.

Privacy unit: one row of a dataset, changed. A dataset's row count is public (it is in the
metadata scientists see), so neighbouring datasets have the same size ("bounded" DP). Every
mechanism is calibrated for this unit:
- OpenDP measurements are evaluated at a symmetric distance of 2 (a changed row is one row
  removed plus one added);
- Opacus's accountant reasons about one row added or removed, so DP-SGD is run at
  (ε/2, δ/(1 + e^(ε/2))), which by group privacy over the two steps is (ε, δ) for a changed row
  (`add_remove_target`).

Composition rule: basic sequential composition. The releases a scientist gets from one dataset
are together (Σεᵢ, Σδᵢ)-DP (Dwork & Roth 2014, Theorem 3.16). It holds when each query and its
εᵢ are chosen after seeing earlier answers, provided the total is enforced as a privacy filter
(Rogers, Roth, Ullman & Vadhan 2016): a charge is refused unless Σε + ε ≤ E and Σδ + δ ≤ Δ,
where (E, Δ) is the budget the owner granted. That is exactly the ledger's rule, so the ledger's
sums are the scientist's total privacy loss on that dataset. Simple, sound and checkable by hand;
a tighter accountant (zCDP or RDP across queries) would allow more queries per budget.

Budgets are per (scientist, dataset). Scientists who collude add their losses up, and so do two
datasets that hold the same people: granting budgets with that in mind is the owner's call.

Units: ε is counted in integer units of 10⁻⁹ and δ in units of 10⁻¹⁸, so sums are exact (with
floats, 0.1 + 0.2 > 0.3 would refuse a budget of 0.3 its second query, or drift the other way).
A mechanism is calibrated to `mechanism_value(units)`, which is never above its charge.
"""

from __future__ import annotations

import math
from fractions import Fraction

EPSILON_SCALE = 10**9  # ε units per 1
DELTA_SCALE = 10**18  # δ units per 1
MAX_EPSILON = 1e6  # larger budgets protect nobody; keeps units far inside SQLite's int64


class BudgetValueError(ValueError):
    """An ε or δ that cannot be a budget or a charge; the message says why."""


def epsilon_units(epsilon: float, *, allow_zero: bool = False) -> int:
    """ε as ledger units; refuses values that are not finite, not positive or too large."""
    if not isinstance(epsilon, int | float) or not math.isfinite(epsilon):
        raise BudgetValueError(f"epsilon must be a finite number, not {epsilon!r}")
    if epsilon < 0 or (epsilon == 0 and not allow_zero):
        raise BudgetValueError(f"epsilon must be greater than 0, not {epsilon!r}")
    if epsilon > MAX_EPSILON:
        raise BudgetValueError(f"epsilon must be at most {MAX_EPSILON:g}, not {epsilon!r}")
    units = round(epsilon * EPSILON_SCALE)
    if units == 0 and not allow_zero:
        raise BudgetValueError(f"epsilon must be at least {1 / EPSILON_SCALE:g}")
    return units


def delta_units(delta: float) -> int:
    """δ as ledger units; δ must be in [0, 1)."""
    if not isinstance(delta, int | float) or not math.isfinite(delta):
        raise BudgetValueError(f"delta must be a finite number, not {delta!r}")
    if not 0 <= delta < 1:
        raise BudgetValueError(f"delta must be at least 0 and below 1, not {delta!r}")
    return round(delta * DELTA_SCALE)


def epsilon_value(units: int) -> float:
    return units / EPSILON_SCALE


def delta_value(units: int) -> float:
    return units / DELTA_SCALE


def mechanism_value(units: int, scale: int) -> float:
    """The largest float not above units/scale: what a mechanism charged `units` may use."""
    value = units / scale
    if Fraction(value) > Fraction(units, scale):
        value = math.nextafter(value, 0.0)
    return value


def mechanism_epsilon(epsilon: float) -> float:
    """The ε a mechanism asked for `epsilon` is calibrated to: at most what is charged."""
    return mechanism_value(epsilon_units(epsilon), EPSILON_SCALE)


def mechanism_delta(delta: float) -> float:
    return mechanism_value(delta_units(delta), DELTA_SCALE)


def add_remove_target(epsilon: float, delta: float) -> tuple[float, float]:
    """The (ε', δ') for an add/remove-one-row accountant that give (ε, δ) for a changed row.

    A changed row is a removal then an addition; group privacy over those two steps turns
    (ε', δ') into (2ε', (1 + e^ε')δ'). ε/2 is exact in floating point; δ' is shrunk by a
    relative 10⁻⁹, far more than the rounding of exp and division, so the result stays within
    (ε, δ).
    """
    half = epsilon / 2
    return half, delta / (1 + math.exp(half)) * (1 - 1e-9)
