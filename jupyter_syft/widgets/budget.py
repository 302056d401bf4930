"""A privacy-budget gauge: how much epsilon is spent and how much is left."""

from __future__ import annotations

import ipywidgets as w

from jupyter_syft.widgets import markup as h

LOW = 0.2  # the bar turns amber when less than this share is left


class BudgetGauge(w.VBox):
    """`BudgetGauge(spent, left)`; `set(spent, left)` when the ledger changes."""

    def __init__(self, spent: float = 0.0, left: float = 0.0, heading: str = "epsilon") -> None:
        self.heading = heading
        self.bar = w.FloatProgress(min=0.0, max=1.0)
        self.label = w.HTML()
        super().__init__([self.label, self.bar])
        self.set(spent, left)

    def set(self, spent: float, left: float) -> None:
        if spent < 0 or left < 0:
            raise ValueError(f"a budget cannot be negative (spent {spent}, left {left})")
        total = spent + left
        self.bar.max = total or 1.0
        self.bar.value = spent
        share_left = left / total if total else 0.0
        self.bar.bar_style = (
            "danger" if share_left == 0 else "warning" if share_left < LOW else "success"
        )
        self.label.value = h.sanitise(
            f"<b>{h.esc(self.heading)}</b>: {spent:g} spent of {total:g}, <b>{left:g} left</b>"
        )
