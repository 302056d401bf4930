"""The domain's durable state: one SQLite file (WAL) plus Arrow IPC files under the data dir.

Layout of a data dir:
    domain.sqlite         users, datasets, requests, results, audit log, privacy budgets
    node.key              the node's libp2p identity (0600)
    tls-cert.pem, tls-key.pem
    assets/NAME/private.arrow, assets/NAME/mock.arrow
    results/REQUEST_ID/   manifest.msgpack, part-N.arrow
    models/NAME.safetensors   weights served for homomorphic inference
    rounds/REQUEST_ID.safetensors   the global weights a federated round starts from
    staging/              uploads in flight; emptied at start

Every write is one transaction (see `jupyter_syft.sqlite_file`), so a crash leaves the
previous state or the next one, never a mix.

The audit log is append-only (triggers refuse UPDATE and DELETE) and hash-chained: each
entry's hash covers the previous hash, so editing or dropping a past entry through the
file itself breaks `verify_audit()`.

Privacy budgets (see jupyter_syft.privacy.budget for what a charge means and how charges add
up): the ledger is append-only too, and a trigger refuses any ledger row that would take a
budget below zero, so even a bug in the code above it cannot overspend (invariant 4). A charge,
the request it pays for and its audit entry are one `BEGIN IMMEDIATE` transaction: concurrent
charges, from any number of connections or processes, run one after the other, and each sees
every charge committed before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec

from jupyter_syft.privacy.budget import delta_units, delta_value, epsilon_units, epsilon_value
from jupyter_syft.privacy.policy import default_policy
from jupyter_syft.sqlite_file import SqliteFile
from jupyter_syft.wire import messages as m

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    peer_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, kind TEXT NOT NULL,
    schema_json TEXT NOT NULL, rows INTEGER NOT NULL, mock_rows INTEGER NOT NULL,
    public INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY, requester TEXT NOT NULL, code TEXT NOT NULL,
    function_name TEXT NOT NULL, inputs_json TEXT NOT NULL, policy TEXT NOT NULL,
    status TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL, decided_at REAL, finished_at REAL,
    result_parts INTEGER NOT NULL DEFAULT 0, result_bytes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS requests_by_status ON requests (status);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    subject TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS dp_requests (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), dataset TEXT NOT NULL,
    spec BLOB NOT NULL, epsilon_units INTEGER NOT NULL, delta_units INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dp_policies (
    dataset TEXT PRIMARY KEY, auto_approve INTEGER NOT NULL, max_query_epsilon REAL NOT NULL);
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
CREATE TABLE IF NOT EXISTS federated_plans (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), dataset TEXT NOT NULL,
    spec BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS federated_rounds (
    request_id TEXT PRIMARY KEY REFERENCES requests (id),
    plan_id TEXT NOT NULL REFERENCES requests (id), round INTEGER NOT NULL,
    UNIQUE (plan_id, round));
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, features INTEGER NOT NULL,
    rows INTEGER NOT NULL, outputs INTEGER NOT NULL, depth INTEGER NOT NULL,
    max_samples INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_usage (
    model TEXT NOT NULL REFERENCES models (name), peer_id TEXT NOT NULL,
    calls INTEGER NOT NULL, samples INTEGER NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (model, peer_id));
"""

REQUESTS = (
    "SELECT r.*, p.spec AS dp_spec, p.epsilon_units AS dp_epsilon, p.delta_units AS dp_delta,"
    " f.spec AS plan_spec, fr.plan_id AS round_plan, fr.round AS round_number"
    " FROM requests r LEFT JOIN dp_requests p ON p.request_id = r.id"
    " LEFT JOIN federated_plans f ON f.request_id = r.id"
    " LEFT JOIN federated_rounds fr ON fr.request_id = r.id"
)

GENESIS_HASH = "0" * 64


class StoreError(Exception):
    """A write that the current state does not allow; nothing was changed."""


class BudgetExceeded(StoreError):
    """The privacy budget left cannot pay for a request; nothing was charged."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "domain.sqlite"

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

    @property
    def node_info(self) -> Path:
        """Written while the node runs: how local owner tools find it."""
        return self.root / "node.json"

    def asset_dir(self, dataset: str) -> Path:
        return self.root / "assets" / dataset

    def result_dir(self, request_id: str) -> Path:
        return self.root / "results" / request_id

    def round_weights(self, request_id: str) -> Path:
        """The global weights a federated round starts from, as the scientist sent them."""
        return self.root / "rounds" / f"{request_id}.safetensors"

    def model_file(self, name: str) -> Path:
        return self.root / "models" / f"{name}.safetensors"

    @property
    def staging(self) -> Path:
        return self.root / "staging"


def _entry_hash(
    prev_hash: str, at: float, actor: str, action: str, subject: str, detail: str
) -> str:
    canonical = json.dumps([prev_hash, repr(at), actor, action, subject, detail])
    return hashlib.sha256(canonical.encode()).hexdigest()


class Store(SqliteFile):
    """Typed reads and transactional writes over the domain's SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        self.paths = Paths(Path(data_dir))
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for folder in ("assets", "results", "rounds"):
            (self.paths.root / folder).mkdir(exist_ok=True)
        shutil.rmtree(self.paths.staging, ignore_errors=True)
        self.paths.staging.mkdir()
        super().__init__(self.paths.database, SCHEMA)

    # ---- node metadata ---------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return None if row is None else row["value"]

    def initialise(self, name: str, admin_peer_id: str) -> None:
        """Record the node's name and its admin, once: the identity that creates DIR owns it."""
        with self._transaction() as db:
            if self.meta("admin") is None:
                now = time.time()
                db.execute("INSERT INTO meta VALUES ('admin', ?)", (admin_peer_id,))
                db.execute("INSERT INTO meta VALUES ('created_at', ?)", (repr(now),))
                db.execute(
                    "INSERT INTO users VALUES (?, 'admin', 'owner', ?)", (admin_peer_id, now)
                )
                self._audit(db, admin_peer_id, "create_domain", name, "")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (name,))

    # ---- users ----------------------------------------------------------------------------

    def role_of(self, peer_id: str) -> str:
        row = self._one("SELECT role FROM users WHERE peer_id = ?", peer_id)
        return "" if row is None else row["role"]

    def add_user(self, actor: str, peer_id: str, role: str, name: str) -> None:
        with self._transaction() as db:
            if self.meta("admin") == peer_id and role != "admin":
                raise StoreError("the domain's creator stays admin")
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT(peer_id) DO UPDATE "
                "SET role = excluded.role, name = excluded.name",
                (peer_id, role, name, time.time()),
            )
            self._audit(db, actor, "add_user", peer_id, json.dumps({"role": role, "name": name}))

    def users(self) -> list[m.UserInfo]:
        rows = self._all("SELECT * FROM users ORDER BY added_at")
        return [m.UserInfo(r["peer_id"], r["role"], r["name"], r["added_at"]) for r in rows]

    # ---- datasets -------------------------------------------------------------------------

    def add_dataset(self, actor: str, info: m.DatasetInfo, private: Path, mock: Path) -> None:
        """Move the staged asset files into place and record the dataset, all or nothing."""
        target = self.paths.asset_dir(info.name)
        with self._transaction() as db:
            if self.dataset(info.name) is not None:
                raise StoreError(f"a dataset named {info.name!r} already exists")
            db.execute(
                "INSERT INTO datasets VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.name,
                    info.description,
                    info.kind,
                    json.dumps(info.schema),
                    info.rows,
                    info.mock_rows,
                    int(info.public),
                    info.created_at,
                ),
            )
            self._audit(db, actor, "create_dataset", info.name, json.dumps({"rows": info.rows}))
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            os.replace(private, target / "private.arrow")
            os.replace(mock, target / "mock.arrow")
            _fsync_dir(target)

    def dataset(self, name: str) -> m.DatasetInfo | None:
        row = self._one("SELECT * FROM datasets WHERE name = ?", name)
        return None if row is None else _dataset_info(row)

    def datasets(self) -> list[m.DatasetInfo]:
        return [_dataset_info(r) for r in self._all("SELECT * FROM datasets ORDER BY name")]

    def private_path(self, name: str) -> Path:
        return self.paths.asset_dir(name) / "private.arrow"

    def mock_path(self, name: str) -> Path:
        return self.paths.asset_dir(name) / "mock.arrow"

    # ---- requests -------------------------------------------------------------------------

    def add_request(self, requester: str, call: m.SubmitRequest) -> m.RequestInfo:
        request_id = uuid.uuid4().hex
        with self._transaction() as db:
            db.execute(
                "INSERT INTO requests (id, requester, code, function_name, inputs_json, policy,"
                " status, submitted_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (
                    request_id,
                    requester,
                    call.code,
                    call.function_name,
                    json.dumps(call.inputs),
                    call.policy,
                    time.time(),
                ),
            )
            self._audit(db, requester, "submit_request", request_id, json.dumps(call.inputs))
        info = self.request(request_id)
        assert info is not None
        return info

    def request(self, request_id: str) -> m.RequestInfo | None:
        row = self._one(REQUESTS + " WHERE id = ?", request_id)
        return None if row is None else _request_info(row)

    def requests(self, requester: str | None = None, status: str = "") -> list[m.RequestInfo]:
        sql, args = REQUESTS + " WHERE 1", []
        if requester is not None:
            sql, args = sql + " AND requester = ?", [*args, requester]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        return [_request_info(r) for r in self._all(sql + " ORDER BY submitted_at", *args)]

    def decide(self, actor: str, request_id: str, approve: bool, reason: str) -> m.RequestInfo:
        status = "approved" if approve else "denied"
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE requests SET status = ?, reason = ?, decided_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (status, reason, time.time(), request_id),
            ).rowcount
            if not changed:
                current = self._request_or_fail(request_id)
                raise StoreError(f"request {request_id} is {current.status}, not pending")
            self._audit(db, actor, status, request_id, reason)
            if approve:
                self._charge(db, request_id)  # a DP request pays before it can run
        return self._request_or_fail(request_id)

    def start_run(self, request_id: str) -> None:
        self._move(request_id, "approved", "running", "run_started", "")

    def finish_run(self, request_id: str, parts: int, result_bytes: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = 'done', finished_at = ?, result_parts = ?,"
                " result_bytes = ? WHERE id = ? AND status = 'running'",
                (time.time(), parts, result_bytes, request_id),
            )
            self._audit(db, "node", "run_done", request_id, json.dumps({"bytes": result_bytes}))

    def fail_run(self, request_id: str, error: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = 'failed', finished_at = ?, error = ?"
                " WHERE id = ? AND status = 'running'",
                (time.time(), error, request_id),
            )
            self._audit(db, "node", "run_failed", request_id, error.splitlines()[0][:200])

    def result_parts(self, request_id: str) -> int:
        row = self._one("SELECT result_parts FROM requests WHERE id = ?", request_id)
        return 0 if row is None else row["result_parts"]

    def requeue_interrupted(self) -> list[str]:
        """Jobs cut off by a node crash go back to 'approved' so they run again."""
        with self._transaction() as db:
            rows = db.execute("SELECT id FROM requests WHERE status = 'running'").fetchall()
            for row in rows:
                db.execute("UPDATE requests SET status = 'approved' WHERE id = ?", (row["id"],))
                self._audit(db, "node", "run_requeued", row["id"], "node restarted mid-run")
        return [r["id"] for r in self._all("SELECT id FROM requests WHERE status = 'approved'")]

    def _move(self, request_id: str, old: str, new: str, action: str, detail: str) -> None:
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE requests SET status = ? WHERE id = ? AND status = ?",
                (new, request_id, old),
            ).rowcount
            if not changed:
                raise StoreError(f"request {request_id} is not {old}")
            self._audit(db, "node", action, request_id, detail)

    def _request_or_fail(self, request_id: str) -> m.RequestInfo:
        info = self.request(request_id)
        if info is None:
            raise StoreError(f"no request {request_id}")
        return info

    # ---- differential privacy ---------------------------------------------------------------

    def add_dp_request(
        self,
        requester: str,
        dataset: str,
        spec: m.DPQuery | m.DPTraining,
        code: str,
        function_name: str,
        auto_approve: bool,
    ) -> m.RequestInfo:
        """Record a DP request. Auto-approved, it is charged in the same transaction; waiting
        for review, it must fit the budget now (it is charged when approved). Raises
        BudgetExceeded, with nothing recorded, if it does not fit."""
        request_id = uuid.uuid4().hex
        epsilon = epsilon_units(spec.epsilon)
        delta = delta_units(spec.delta if isinstance(spec, m.DPTraining) else 0.0)
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO requests (id, requester, code, function_name, inputs_json, policy,"
                " status, submitted_at, decided_at) VALUES (?, ?, ?, ?, ?, 'dp', ?, ?, ?)",
                (
                    request_id,
                    requester,
                    code,
                    function_name,
                    json.dumps({"data": dataset}),
                    "approved" if auto_approve else "pending",
                    now,
                    now if auto_approve else None,
                ),
            )
            db.execute(
                "INSERT INTO dp_requests VALUES (?, ?, ?, ?, ?)",
                (request_id, dataset, m.encode(spec), epsilon, delta),
            )
            self._audit(db, requester, "submit_request", request_id, json.dumps({"data": dataset}))
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

    def set_policy(
        self, actor: str, dataset: str, auto_approve: bool, max_query_epsilon: float
    ) -> m.PolicyInfo:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO dp_policies VALUES (?, ?, ?)",
                (dataset, int(auto_approve), max_query_epsilon),
            )
            detail = {"auto_approve": auto_approve, "max_query_epsilon": max_query_epsilon}
            self._audit(db, actor, "set_policy", dataset, json.dumps(detail))
        return self.policy(dataset)

    def policy(self, dataset: str) -> m.PolicyInfo:
        row = self._one("SELECT * FROM dp_policies WHERE dataset = ?", dataset)
        if row is None:
            return default_policy(dataset)
        return m.PolicyInfo(dataset, bool(row["auto_approve"]), row["max_query_epsilon"])

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
        """What is left after this charge; BudgetExceeded if it does not fit."""
        row = db.execute(
            "SELECT epsilon_units, delta_units FROM budgets WHERE peer_id = ? AND dataset = ?",
            (peer_id, dataset),
        ).fetchone()
        if row is None:
            raise BudgetExceeded(
                f"no privacy budget on {dataset!r} for {peer_id}: ask the owner to grant one"
            )
        spent_epsilon, spent_delta = self._spent(db, peer_id, dataset)
        left_epsilon = row["epsilon_units"] - spent_epsilon - epsilon
        left_delta = row["delta_units"] - spent_delta - delta
        if left_epsilon < 0 or left_delta < 0:
            raise BudgetExceeded(
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

    # ---- models for homomorphic inference ---------------------------------------------------

    def add_model(self, actor: str, info: m.ModelInfo, weights: Path) -> None:
        """Move the staged safetensors file into place and record the model, all or nothing."""
        target = self.paths.model_file(info.name)
        with self._transaction() as db:
            if self._one("SELECT 1 FROM models WHERE name = ?", info.name) is not None:
                raise StoreError(f"a model named {info.name!r} already exists")
            db.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.name,
                    info.description,
                    info.features,
                    info.rows,
                    info.outputs,
                    info.depth,
                    info.max_samples,
                    info.created_at,
                ),
            )
            detail = {"features": info.features, "outputs": info.outputs, "depth": info.depth}
            self._audit(db, actor, "create_model", info.name, json.dumps(detail))
            target.parent.mkdir(exist_ok=True)
            os.replace(weights, target)
            _fsync_dir(target.parent)

    def model(self, name: str, peer_id: str = "") -> m.ModelInfo | None:
        """A model, with the samples `peer_id` has used on it."""
        row = self._one(
            "SELECT m.*, COALESCE(u.samples, 0) AS used FROM models m LEFT JOIN model_usage u"
            " ON u.model = m.name AND u.peer_id = ? WHERE m.name = ?",
            peer_id,
            name,
        )
        return None if row is None else _model_info(row)

    def models(self, peer_id: str = "") -> list[m.ModelInfo]:
        rows = self._all(
            "SELECT m.*, COALESCE(u.samples, 0) AS used FROM models m LEFT JOIN model_usage u"
            " ON u.model = m.name AND u.peer_id = ? ORDER BY m.name",
            peer_id,
        )
        return [_model_info(r) for r in rows]

    def record_prediction(self, peer_id: str, model: str, samples: int) -> None:
        """Count a prediction and audit it; StoreError if it would pass the model's limit
        (checked again here, so concurrent predictions cannot overrun it together)."""
        with self._transaction() as db:
            max_samples = db.execute(
                "SELECT max_samples FROM models WHERE name = ?", (model,)
            ).fetchone()["max_samples"]
            used = db.execute(
                "SELECT samples FROM model_usage WHERE model = ? AND peer_id = ?", (model, peer_id)
            ).fetchone()
            total = (used["samples"] if used else 0) + samples
            if max_samples and total > max_samples:
                raise StoreError(
                    f"query limit of model {model!r} reached: {max_samples} samples per "
                    f"scientist, {total - samples} used, this asks for {samples}"
                )
            db.execute(
                "INSERT INTO model_usage VALUES (?, ?, 1, ?, ?) ON CONFLICT (model, peer_id) DO"
                " UPDATE SET calls = calls + 1, samples = samples + excluded.samples,"
                " last_at = excluded.last_at",
                (model, peer_id, samples, time.time()),
            )
            self._audit(db, peer_id, "he_predict", model, json.dumps({"samples": samples}))

    def model_usage(self, model: str) -> list[m.ModelUsage]:
        rows = self._all("SELECT * FROM model_usage WHERE model = ? ORDER BY peer_id", model)
        return [m.ModelUsage(r["peer_id"], r["calls"], r["samples"], r["last_at"]) for r in rows]

    # ---- federated learning -----------------------------------------------------------------

    def add_federated_plan(
        self, requester: str, dataset: str, plan: m.FederatedPlan, round_spec: m.DPTraining | None
    ) -> m.RequestInfo:
        """Record a plan for review. With DP, all its rounds must fit the budget now (each round
        is charged when it runs); BudgetExceeded, with nothing recorded, if they do not."""
        request_id = uuid.uuid4().hex
        with self._transaction() as db:
            db.execute(
                "INSERT INTO requests (id, requester, code, function_name, inputs_json, policy,"
                " status, submitted_at) VALUES (?, ?, ?, ?, ?, 'federated', 'pending', ?)",
                (
                    request_id,
                    requester,
                    plan.code,
                    plan.function_name,
                    json.dumps({"data": dataset}),
                    time.time(),
                ),
            )
            db.execute(
                "INSERT INTO federated_plans VALUES (?, ?, ?)",
                (request_id, dataset, m.encode(plan)),
            )
            self._audit(db, requester, "submit_request", request_id, json.dumps({"data": dataset}))
            if round_spec is not None:
                epsilon = epsilon_units(round_spec.epsilon) * plan.rounds
                delta = delta_units(round_spec.delta) * plan.rounds
                self._check_fits(db, requester, dataset, epsilon, delta)
        return self._request_or_fail(request_id)

    def federated_plan(self, plan_id: str) -> tuple[str, m.FederatedPlan] | None:
        """The dataset and plan of a federated plan request."""
        row = self._one("SELECT dataset, spec FROM federated_plans WHERE request_id = ?", plan_id)
        return None if row is None else (row["dataset"], _plan_spec.decode(row["spec"]))

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
        BudgetExceeded, with nothing recorded, if the plan does not allow it."""
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
            db.execute(
                "INSERT INTO requests (id, requester, code, function_name, inputs_json, policy,"
                " status, submitted_at, decided_at) VALUES (?, ?, ?, ?, ?, ?, 'approved', ?, ?)",
                (
                    request_id,
                    requester,
                    plan.code,
                    plan.function_name,
                    json.dumps({"data": dataset}),
                    "aggregate" if plan.secure_aggregation else "raw",
                    now,
                    now,
                ),
            )
            db.execute(
                "INSERT INTO federated_rounds VALUES (?, ?, ?)", (request_id, plan_id, round_number)
            )
            detail = json.dumps({"plan": plan_id, "round": round_number})
            self._audit(db, requester, "submit_request", request_id, detail)
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

    # ---- audit ----------------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        with self._transaction() as db:
            self._audit(db, actor, action, subject, detail)

    def _audit(
        self, db: sqlite3.Connection, actor: str, action: str, subject: str, detail: str
    ) -> None:
        last = db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev_hash = GENESIS_HASH if last is None else last["hash"]
        at = time.time()
        entry_hash = _entry_hash(prev_hash, at, actor, action, subject, detail)
        db.execute(
            "INSERT INTO audit (at, actor, action, subject, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, actor, action, subject, detail, prev_hash, entry_hash),
        )

    def audit_entries(self, limit: int = 100) -> list[m.AuditEntry]:
        rows = self._all("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", limit)
        return [
            m.AuditEntry(
                r["seq"], r["at"], r["actor"], r["action"], r["subject"], r["detail"], r["hash"]
            )
            for r in reversed(rows)
        ]

    def verify_audit(self) -> bool:
        """True when every entry's hash matches its content and its predecessor."""
        prev_hash = GENESIS_HASH
        for r in self._all("SELECT * FROM audit ORDER BY seq"):
            expected = _entry_hash(
                prev_hash, r["at"], r["actor"], r["action"], r["subject"], r["detail"]
            )
            if r["prev_hash"] != prev_hash or r["hash"] != expected:
                return False
            prev_hash = r["hash"]
        return True


def read_node_info(data_dir: Path) -> dict[str, str]:
    """The running node's name and address, for owner tools on the same machine."""
    info_file = Paths(Path(data_dir)).node_info
    if not info_file.exists():
        raise FileNotFoundError(
            f"no domain node is running on {data_dir} (start one: jupyter-syft domain start)"
        )
    return json.loads(info_file.read_text())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _dataset_info(row: sqlite3.Row) -> m.DatasetInfo:
    return m.DatasetInfo(
        name=row["name"],
        description=row["description"],
        kind=row["kind"],
        schema=json.loads(row["schema_json"]),
        rows=row["rows"],
        mock_rows=row["mock_rows"],
        public=bool(row["public"]),
        created_at=row["created_at"],
    )


def _model_info(row: sqlite3.Row) -> m.ModelInfo:
    return m.ModelInfo(
        name=row["name"],
        description=row["description"],
        features=row["features"],
        rows=row["rows"],
        outputs=row["outputs"],
        depth=row["depth"],
        max_samples=row["max_samples"],
        samples_used=row["used"],
        created_at=row["created_at"],
    )


_dp_spec = msgspec.msgpack.Decoder(m.DPQuery | m.DPTraining)
_plan_spec = msgspec.msgpack.Decoder(m.FederatedPlan)


def _request_info(row: sqlite3.Row) -> m.RequestInfo:
    dp = row["dp_spec"] is not None
    plan = _plan_spec.decode(row["plan_spec"]) if row["plan_spec"] is not None else None
    if plan is not None and plan.epsilon:  # a DP plan shows what all its rounds cost
        epsilon, delta = plan.epsilon, plan.delta
    else:
        epsilon = epsilon_value(row["dp_epsilon"]) if dp else None
        delta = delta_value(row["dp_delta"]) if dp else None
    return m.RequestInfo(
        request_id=row["id"],
        requester=row["requester"],
        code=row["code"],
        function_name=row["function_name"],
        inputs=json.loads(row["inputs_json"]),
        policy=row["policy"],
        status=row["status"],
        reason=row["reason"],
        error=row["error"],
        submitted_at=row["submitted_at"],
        decided_at=row["decided_at"],
        finished_at=row["finished_at"],
        result_bytes=row["result_bytes"],
        epsilon=epsilon,
        delta=delta,
        privacy=_dp_spec.decode(row["dp_spec"]) if dp else None,
        plan=plan,
        plan_round=(row["round_plan"], row["round_number"]) if row["round_plan"] else None,
    )
