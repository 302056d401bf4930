"""The privacy feature's tables: DP requests, budgets and their append-only ledger.

Privacy budgets (see jupyter_syft.privacy.budget for what a charge means and how charges add
up): the ledger is append-only too, and a trigger refuses any ledger row that would take a
budget below zero, so even a bug in the code above it cannot overspend (invariant 4). A charge,
the request it pays for and its audit entry are one `BEGIN IMMEDIATE` transaction: concurrent
charges, from any number of connections or processes, run one after the other, and each sees
every charge committed before it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

from jupyter_syft.domain.store_core import (
    BudgetExhausted,
    StoreCore,
    StoreError,
)
from jupyter_syft.privacy.budget import delta_units, delta_value, epsilon_units, epsilon_value
from jupyter_syft.wire import messages as m

TABLES = """
CREATE TABLE IF NOT EXISTS dp_requests (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), dataset TEXT NOT NULL,
    spec BLOB NOT NULL, epsilon_units INTEGER NOT NULL, delta_units INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS budgets (
    peer_id TEXT NOT NULL, dataset TEXT NOT NULL,
    epsilon_units INTEGER NOT NULL CHECK (epsilon_units >= 0),
    delta_units INTEGER NOT NULL CHECK (delta_units >= 0),
    set_at REAL NOT NULL, PRIMARY KEY (peer_id, dataset));
CREATE TABLE IF NOT EXISTS budget_ledger (
    seq INTEGER PRIMARY KEY, peer_id TEXT NOT NULL, dataset TEXT NOT NULL,
    request_id TEXT NOT NULL UNIQUE REFERENCES requests (id),
    epsilon_units INTEGER NOT NULL CHECK (epsilon_units >= 0),
    delta_units INTEGER NOT NULL CHECK (delta_units >= 0), at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS ledger_by_budget ON budget_ledger (peer_id, dataset);
CREATE TRIGGER IF NOT EXISTS ledger_no_update BEFORE UPDATE ON budget_ledger
    BEGIN SELECT RAISE(ABORT, 'the budget ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_no_delete BEFORE DELETE ON budget_ledger
    BEGIN SELECT RAISE(ABORT, 'the budget ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS ledger_within_budget BEFORE INSERT ON budget_ledger
    WHEN NOT EXISTS (
        SELECT 1 FROM budgets b WHERE b.peer_id = NEW.peer_id AND b.dataset = NEW.dataset
        AND b.epsilon_units >= NEW.epsilon_units + (SELECT COALESCE(SUM(epsilon_units), 0)
            FROM budget_ledger l WHERE l.peer_id = NEW.peer_id AND l.dataset = NEW.dataset)
        AND b.delta_units >= NEW.delta_units + (SELECT COALESCE(SUM(delta_units), 0)
            FROM budget_ledger l WHERE l.peer_id = NEW.peer_id AND l.dataset = NEW.dataset))
    BEGIN SELECT RAISE(ABORT, 'the privacy budget would go below zero'); END;
"""


class PrivacyTables(StoreCore):
    TABLES = TABLES

    def add_dp_request(
        self,
        requester: str,
        dataset: str,
        spec: m.DPQuery | m.DPTraining,
        code: str,
        function_name: str,
        auto_approve: bool,
        requirements: list[str] | None = None,
    ) -> m.RequestInfo:
        """Record a DP request. Auto-approved, it is charged in the same transaction; waiting
        for review, it must fit the budget now (it is charged when approved). Raises
        BudgetExhausted, with nothing recorded, if it does not fit."""
        request_id = uuid.uuid4().hex
        epsilon = epsilon_units(spec.epsilon)
        delta = delta_units(spec.delta if isinstance(spec, m.DPTraining) else 0.0)
        with self._transaction() as db:
            approved_by = "policy" if auto_approve else ""
            inputs = {"data": dataset}
            self._insert_request(
                db, request_id, requester, code, function_name, inputs, "dp", approved_by
            )
            db.execute(
                "INSERT INTO dp_requests VALUES (?, ?, ?, ?, ?)",
                (request_id, dataset, m.encode(spec), epsilon, delta),
            )
            self._add_list(db, "request_requirements", request_id, requirements or [])
            if auto_approve:
                self._audit(db, "policy", "approved", request_id, "DP query within policy")
                self._charge(db, request_id)
            else:
                self._check_fits(db, requester, dataset, epsilon, delta)
        return self._request_or_fail(request_id)

    def set_budget(
        self, actor: str, peer_id: str, dataset: str, epsilon: int, delta: int
    ) -> m.BudgetInfo:
        """Set the total budget (in ledger units); it cannot go below what is already spent."""
        with self._transaction() as db:
            spent_epsilon, spent_delta = self._spent(db, peer_id, dataset)
            if epsilon < spent_epsilon or delta < spent_delta:
                raise StoreError(
                    f"{peer_id} has already spent epsilon {epsilon_value(spent_epsilon):g}, "
                    f"delta {delta_value(spent_delta):g} on {dataset!r}: a budget cannot be "
                    "lower than that (set it to exactly that to stop further spending)"
                )
            db.execute(
                "INSERT INTO budgets VALUES (?, ?, ?, ?, ?) ON CONFLICT (peer_id, dataset) DO"
                " UPDATE SET epsilon_units = excluded.epsilon_units,"
                " delta_units = excluded.delta_units, set_at = excluded.set_at",
                (peer_id, dataset, epsilon, delta, time.time()),
            )
            detail = {
                "peer": peer_id,
                "epsilon": epsilon_value(epsilon),
                "delta": delta_value(delta),
            }
            self._audit(db, actor, "set_budget", dataset, json.dumps(detail))
        return self.budget(peer_id, dataset)

    def budget(self, peer_id: str, dataset: str) -> m.BudgetInfo:
        """A scientist's budget on a dataset, spent and left; all zero if none was granted."""
        with self._lock:
            row = self._db.execute(
                "SELECT epsilon_units, delta_units FROM budgets WHERE peer_id = ? AND dataset = ?",
                (peer_id, dataset),
            ).fetchone()
            charges = self._db.execute(
                "SELECT request_id, epsilon_units, delta_units, at FROM budget_ledger"
                " WHERE peer_id = ? AND dataset = ? ORDER BY seq",
                (peer_id, dataset),
            ).fetchall()
        epsilon, delta = (row["epsilon_units"], row["delta_units"]) if row else (0, 0)
        spent_epsilon = sum(c["epsilon_units"] for c in charges)
        spent_delta = sum(c["delta_units"] for c in charges)
        return m.BudgetInfo(
            peer_id=peer_id,
            dataset=dataset,
            epsilon=epsilon_value(epsilon),
            delta=delta_value(delta),
            epsilon_spent=epsilon_value(spent_epsilon),
            delta_spent=delta_value(spent_delta),
            epsilon_left=epsilon_value(epsilon - spent_epsilon),
            delta_left=delta_value(delta - spent_delta),
            charges=[
                m.Charge(
                    c["request_id"],
                    epsilon_value(c["epsilon_units"]),
                    delta_value(c["delta_units"]),
                    c["at"],
                )
                for c in charges
            ],
        )

    def budgets(self, peer_id: str) -> list[m.BudgetInfo]:
        """Every budget granted to `peer_id`, by dataset name."""
        rows = self._all("SELECT dataset FROM budgets WHERE peer_id = ? ORDER BY dataset", peer_id)
        return [self.budget(peer_id, r["dataset"]) for r in rows]

    def _spent(self, db: sqlite3.Connection, peer_id: str, dataset: str) -> tuple[int, int]:
        row = db.execute(
            "SELECT COALESCE(SUM(epsilon_units), 0) AS e, COALESCE(SUM(delta_units), 0) AS d"
            " FROM budget_ledger WHERE peer_id = ? AND dataset = ?",
            (peer_id, dataset),
        ).fetchone()
        return row["e"], row["d"]

    def _check_fits(
        self, db: sqlite3.Connection, peer_id: str, dataset: str, epsilon: int, delta: int
    ) -> tuple[int, int]:
        """What is left after this charge; BudgetExhausted if it does not fit."""
        row = db.execute(
            "SELECT epsilon_units, delta_units FROM budgets WHERE peer_id = ? AND dataset = ?",
            (peer_id, dataset),
        ).fetchone()
        if row is None:
            raise BudgetExhausted(
                f"no privacy budget on {dataset!r} for {peer_id}: ask the owner to grant one"
            )
        spent_epsilon, spent_delta = self._spent(db, peer_id, dataset)
        left_epsilon = row["epsilon_units"] - spent_epsilon - epsilon
        left_delta = row["delta_units"] - spent_delta - delta
        if left_epsilon < 0 or left_delta < 0:
            raise BudgetExhausted(
                f"privacy budget exhausted on {dataset!r}: this needs epsilon "
                f"{epsilon_value(epsilon):g}, delta {delta_value(delta):g}; left: epsilon "
                f"{epsilon_value(row['epsilon_units'] - spent_epsilon):g}, delta "
                f"{delta_value(row['delta_units'] - spent_delta):g}"
            )
        return left_epsilon, left_delta

    def _charge(self, db: sqlite3.Connection, request_id: str) -> None:
        """Charge a DP request to its requester's budget (nothing for other requests)."""
        row = db.execute(
            "SELECT r.requester, p.dataset, p.epsilon_units, p.delta_units FROM dp_requests p"
            " JOIN requests r ON r.id = p.request_id WHERE p.request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return
        peer_id, dataset = row["requester"], row["dataset"]
        epsilon, delta = row["epsilon_units"], row["delta_units"]
        left_epsilon, left_delta = self._check_fits(db, peer_id, dataset, epsilon, delta)
        db.execute(
            "INSERT INTO budget_ledger (peer_id, dataset, request_id, epsilon_units,"
            " delta_units, at) VALUES (?, ?, ?, ?, ?, ?)",
            (peer_id, dataset, request_id, epsilon, delta, time.time()),
        )
        detail = {
            "peer": peer_id,
            "dataset": dataset,
            "epsilon": epsilon_value(epsilon),
            "delta": delta_value(delta),
            "epsilon_left": epsilon_value(left_epsilon),
            "delta_left": delta_value(left_delta),
        }
        self._audit(db, "node", "dp_charge", request_id, json.dumps(detail))
