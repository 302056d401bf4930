"""The federated feature's tables: plans and their rounds (each round a request of its own,
approved by its plan and, with DP, charged at its start).
"""

from __future__ import annotations

import json
import time
import uuid

from jupyter_syft.domain.privacy.tables import PrivacyTables
from jupyter_syft.domain.store_core import (
    PLAN_SPEC,
    StoreError,
)
from jupyter_syft.privacy.budget import delta_units, epsilon_units
from jupyter_syft.wire import messages as m

TABLES = """
CREATE TABLE IF NOT EXISTS federated_plans (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), dataset TEXT NOT NULL,
    spec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS federated_rounds (
    request_id TEXT PRIMARY KEY REFERENCES requests (id),
    plan_id TEXT NOT NULL REFERENCES requests (id), round INTEGER NOT NULL,
    UNIQUE (plan_id, round));
"""


class FederatedTables(PrivacyTables):
    TABLES = TABLES

    def add_federated_plan(
        self,
        requester: str,
        dataset: str,
        plan: m.FederatedPlan,
        round_spec: m.DPTraining | None,
        requirements: list[str] | None = None,
    ) -> m.RequestInfo:
        """Record a plan for review. With DP, all its rounds must fit the budget now (each round
        is charged when it runs); BudgetExhausted, with nothing recorded, if they do not."""
        request_id = uuid.uuid4().hex
        with self._transaction() as db:
            inputs = {"data": dataset}
            self._insert_request(
                db, request_id, requester, plan.code, plan.function_name, inputs, "federated"
            )
            db.execute(
                "INSERT INTO federated_plans VALUES (?, ?, ?)",
                (request_id, dataset, m.encode(plan)),
            )
            self._add_list(db, "request_requirements", request_id, requirements or [])
            if round_spec is not None:
                epsilon = epsilon_units(round_spec.epsilon) * plan.rounds
                delta = delta_units(round_spec.delta) * plan.rounds
                self._check_fits(db, requester, dataset, epsilon, delta)
        return self._request_or_fail(request_id)

    def federated_plan(self, plan_id: str) -> tuple[str, m.FederatedPlan] | None:
        """The dataset and plan of a federated plan request."""
        row = self._one("SELECT dataset, spec FROM federated_plans WHERE request_id = ?", plan_id)
        return None if row is None else (row["dataset"], PLAN_SPEC.decode(row["spec"]))

    def start_federated_round(
        self,
        request_id: str,
        requester: str,
        plan_id: str,
        round_number: int,
        round_spec: m.DPTraining | None,
    ) -> m.RequestInfo:
        """Record round `round_number` of an approved plan as a request of its own, approved by
        the plan and (with DP) charged to the budget, all at once; StoreError or
        BudgetExhausted, with nothing recorded, if the plan does not allow it."""
        found = self.federated_plan(plan_id)
        plan_info = self.request(plan_id)
        if found is None or plan_info is None or plan_info.requester != requester:
            raise StoreError(f"no federated plan {plan_id} of yours")
        dataset, plan = found
        now = time.time()
        with self._transaction() as db:
            status = db.execute("SELECT status FROM requests WHERE id = ?", (plan_id,)).fetchone()
            if status["status"] != "approved":
                raise StoreError(f"federated plan {plan_id} is {status['status']}, not approved")
            last = db.execute(
                "SELECT MAX(round) AS r FROM federated_rounds WHERE plan_id = ?", (plan_id,)
            ).fetchone()["r"]
            if last is not None and round_number <= last:
                raise StoreError(f"round {round_number} of this plan must come after {last}")
            if not 0 <= round_number < plan.rounds:
                raise StoreError(f"the plan has rounds 0 to {plan.rounds - 1}, not {round_number}")
            detail = json.dumps({"plan": plan_id, "round": round_number})
            policy = "aggregate" if plan.secure_aggregation else "raw"
            self._insert_request(
                db,
                request_id,
                requester,
                plan.code,
                plan.function_name,
                {"data": dataset},
                policy,
                approved_by="plan",
                detail=detail,
            )
            db.execute(
                "INSERT INTO federated_rounds VALUES (?, ?, ?)", (request_id, plan_id, round_number)
            )
            db.execute(  # every round runs in the environment its plan declared
                "INSERT INTO request_requirements SELECT ?, requirements_json"
                " FROM request_requirements WHERE request_id = ?",
                (request_id, plan_id),
            )
            self._audit(db, "plan", "approved", request_id, detail)
            if round_spec is not None:
                db.execute(
                    "INSERT INTO dp_requests VALUES (?, ?, ?, ?, ?)",
                    (
                        request_id,
                        dataset,
                        m.encode(round_spec),
                        epsilon_units(round_spec.epsilon),
                        delta_units(round_spec.delta),
                    ),
                )
                self._charge(db, request_id)
            if round_number == plan.rounds - 1:
                db.execute(
                    "UPDATE requests SET status = 'done', finished_at = ? WHERE id = ?",
                    (now, plan_id),
                )
                self._audit(db, "node", "plan_complete", plan_id, f"{plan.rounds} rounds started")
        return self._request_or_fail(request_id)

    def revoke_plan(self, actor: str, plan_id: str, reason: str) -> m.RequestInfo:
        """Stop an approved federated plan: no further round will run."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE requests SET status = 'denied', reason = ? WHERE id = ?"
                " AND policy = 'federated' AND status = 'approved'",
                (reason, plan_id),
            ).rowcount
            if not changed:
                raise StoreError(f"request {plan_id} is not an approved federated plan")
            self._audit(db, actor, "revoked", plan_id, reason)
        return self._request_or_fail(plan_id)
