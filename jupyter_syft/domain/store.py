"""The domain's durable state: one SQLite file (WAL) plus Arrow IPC files under the data dir.

Layout of a data dir:
    domain.sqlite         users, datasets, requests, results, audit log, privacy budgets
    node.key              the node's libp2p identity (0600)
    tls-cert.pem, tls-key.pem
    assets/NAME/private.arrow, assets/NAME/mock.arrow
    results/REQUEST_ID/   manifest.msgpack, part-N.arrow
    models/NAME.safetensors   weights served for homomorphic inference
    rounds/REQUEST_ID.safetensors   the global weights a federated round starts from
    environments/LOCK_HASH/site-packages   declared requirements, built once and shared
    staging/              uploads in flight; emptied at start

Every write is one transaction (see `jupyter_syft.sqlite_file`), so a crash leaves the
previous state or the next one, never a mix.

The audit log is append-only (triggers refuse UPDATE and DELETE) and chained by the node's
key: each entry carries an HMAC-SHA256, under a key derived (HKDF) from `node.key` and kept
only in memory, over its number, its content and the previous entry's MAC. Threat model: whoever
can write the SQLite file but not read `node.key` (a backup, a restore, a tool that edits the
file) can drop the triggers and delete or alter entries, but cannot recompute the chain, so
`check_audit()` names the first entry that breaks it. The chain alone cannot see the newest
entries dropped; the node's signed receipts, which scientists and the owner keep outside the
store (`domain.audit`, `jupyter-syft domain verify-audit`), can. Not detected: anything done
by a holder of `node.key`.
A store from before keyed auditing holds an unkeyed SHA-256 chain; `rekey_audit()` (the
`jupyter-syft domain rekey-audit` command, on the owner's word that the file is untouched)
appends one keyed `audit_rekeyed` entry that covers it. It is never re-keyed by itself: an
unkeyed chain is exactly what an attacker without the key can write.

What a job says besides its result (the full error text, its stdout and stderr) is sealed to
the node's own key (`crypto.seal`, bound to the request) before it reaches the file; the
`requests.error` column holds only the redacted error a scientist may see.

Privacy budgets (see jupyter_syft.privacy.budget for what a charge means and how charges add
up): the ledger is append-only too, and a trigger refuses any ledger row that would take a
budget below zero, so even a bug in the code above it cannot overspend (invariant 4). A charge,
the request it pays for and its audit entry are one `BEGIN IMMEDIATE` transaction: concurrent
charges, from any number of connections or processes, run one after the other, and each sees
every charge committed before it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jupyter_syft.crypto.seal import open_sealed, output_context, seal, x25519_public_key
from jupyter_syft.identity import Identity, load_or_create
from jupyter_syft.privacy.budget import delta_units, delta_value, epsilon_units, epsilon_value
from jupyter_syft.privacy.policy import default_policy
from jupyter_syft.sqlite_file import SqliteFile
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import Refused

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
CREATE INDEX IF NOT EXISTS audit_by_subject ON audit (subject);
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
CREATE TABLE IF NOT EXISTS job_outputs (
    request_id TEXT PRIMARY KEY REFERENCES requests (id),
    error BLOB NOT NULL, log BLOB NOT NULL, released_at REAL);
CREATE TABLE IF NOT EXISTS secagg_joins (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), session TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS disclosure_policies (
    dataset TEXT PRIMARY KEY, errors TEXT NOT NULL, release TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS request_requirements (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), requirements_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requirement_policies (
    dataset TEXT PRIMARY KEY, policy_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS model_usage (
    model TEXT NOT NULL REFERENCES models (name), peer_id TEXT NOT NULL,
    calls INTEGER NOT NULL, samples INTEGER NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (model, peer_id));
"""

REQUESTS = (
    "SELECT r.*, p.spec AS dp_spec, p.epsilon_units AS dp_epsilon, p.delta_units AS dp_delta,"
    " f.spec AS plan_spec, fr.plan_id AS round_plan, fr.round AS round_number,"
    " q.requirements_json"
    " FROM requests r LEFT JOIN dp_requests p ON p.request_id = r.id"
    " LEFT JOIN federated_plans f ON f.request_id = r.id"
    " LEFT JOIN federated_rounds fr ON fr.request_id = r.id"
    " LEFT JOIN request_requirements q ON q.request_id = r.id"
)

GENESIS_HASH = "0" * 64
AUDIT_KEY_INFO = b"jupyter-syft/audit-chain/1"
REKEYED = "audit_rekeyed"


class StoreError(Refused):
    """A write that the current state does not allow; nothing was changed."""

    def __init__(self, message: str) -> None:
        super().__init__("conflict", message)


class BudgetExhausted(StoreError):
    """The privacy budget left cannot pay for a request; nothing was charged."""

    def __init__(self, message: str) -> None:
        Refused.__init__(self, "budget_exhausted", message)


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "domain.sqlite"

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"

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
    def environments(self) -> Path:
        """Declared environments, by lock hash (jupyter_syft.domain.environments)."""
        return self.root / "environments"

    @property
    def staging(self) -> Path:
        return self.root / "staging"


def _entry_hash(
    prev_hash: str, at: float, actor: str, action: str, subject: str, detail: str
) -> str:
    """The unkeyed SHA-256 of stores from before keyed auditing: verified, never written."""
    canonical = json.dumps([prev_hash, repr(at), actor, action, subject, detail])
    return hashlib.sha256(canonical.encode()).hexdigest()


def _entry_mac(
    key: bytes, prev: str, seq: int, at: float, actor: str, action: str, subject: str, detail: str
) -> str:
    canonical = json.dumps([prev, seq, repr(at), actor, action, subject, detail])
    return hmac.new(key, canonical.encode(), hashlib.sha256).hexdigest()


def audit_key(identity: Identity) -> bytes:
    """The audit chain's HMAC key: derived from the node's identity key, never stored."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=AUDIT_KEY_INFO)
    return hkdf.derive(identity.private_key.private_bytes_raw())


class Store(SqliteFile):
    """Typed reads and transactional writes over the domain's SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        self.paths = Paths(Path(data_dir))
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for folder in ("assets", "results", "rounds"):
            (self.paths.root / folder).mkdir(exist_ok=True)
        shutil.rmtree(self.paths.staging, ignore_errors=True)
        self.paths.staging.mkdir()
        # The node's key (the same file the node's libp2p host uses): it keys the audit chain
        # and is the recipient of sealed job outputs and of results awaiting release.
        self.identity = load_or_create(self.paths.node_key)
        self._audit_key = audit_key(self.identity)
        super().__init__(self.paths.database, SCHEMA)
        self._recover_releases()

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

    def remove_user(self, actor: str, peer_id: str) -> bool:
        """False when `peer_id` is no user here; the creator stays (the last admin is never
        removed). Their requests and audit entries stay, under their peer id."""
        with self._transaction() as db:
            if self.meta("admin") == peer_id:
                raise StoreError("the domain's creator stays admin")
            gone = db.execute("DELETE FROM users WHERE peer_id = ?", (peer_id,)).rowcount
            if gone:
                self._audit(db, actor, "remove_user", peer_id, "")
            return bool(gone)

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

    def _insert_request(
        self,
        db: sqlite3.Connection,
        request_id: str,
        requester: str,
        code: str,
        function_name: str,
        inputs: dict[str, str],
        policy: str,
        approved_by: str = "",
        detail: str = "",
    ) -> None:
        """The one way a request is recorded (every kind: code, DP, plan, round), with its
        audit entry; `approved_by` ("policy", "plan") records it approved at once."""
        now = time.time()
        db.execute(
            "INSERT INTO requests (id, requester, code, function_name, inputs_json, policy,"
            " status, submitted_at, decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                request_id,
                requester,
                code,
                function_name,
                json.dumps(inputs),
                policy,
                "approved" if approved_by else "pending",
                now,
                now if approved_by else None,
            ),
        )
        self._audit(db, requester, "submit_request", request_id, detail or json.dumps(inputs))

    def add_request(self, requester: str, call: m.SubmitRequest) -> m.RequestInfo:
        request_id = uuid.uuid4().hex
        with self._transaction() as db:
            self._insert_request(
                db, request_id, requester, call.code, call.function_name, call.inputs, call.policy
            )
            self._add_requirements(db, request_id, call.requirements)
        return self._request_or_fail(request_id)

    def request(self, request_id: str) -> m.RequestInfo | None:
        row = self._one(REQUESTS + " WHERE id = ?", request_id)
        return None if row is None else _request_info(row)

    def requests(self, requester: str | None = None, status: str = "") -> list[m.RequestInfo]:
        sql, args = REQUESTS + " WHERE 1", list[str]()
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

    def start_build(self, request_id: str) -> None:
        """An approved request whose declared environment is built before its job runs."""
        self._move(request_id, "approved", "building", "build_started", "")

    def start_run(self, request_id: str, built: bool = False) -> None:
        self._move(request_id, "building" if built else "approved", "running", "run_started", "")

    def fail_build(self, request_id: str, error: str) -> None:
        """The environment could not be built; `error` (the resolver's words, about public
        packages only: no private data was read) is what the scientist sees."""
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = 'failed', finished_at = ?, error = ?"
                " WHERE id = ? AND status = 'building'",
                (time.time(), error, request_id),
            )
            self._audit(db, "node", "build_failed", request_id, error.splitlines()[0][:200])

    def _add_requirements(
        self, db: sqlite3.Connection, request_id: str, requirements: list[str]
    ) -> None:
        if requirements:
            db.execute(
                "INSERT INTO request_requirements VALUES (?, ?)",
                (request_id, json.dumps(requirements)),
            )

    def finish_run(
        self, request_id: str, parts: int, result_bytes: int, log: bytes = b"", held: bool = False
    ) -> None:
        """Record a finished job; `held`: its result (sealed to this node) awaits release."""
        status = "awaiting_release" if held else "done"
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = ?, finished_at = ?, result_parts = ?,"
                " result_bytes = ? WHERE id = ? AND status = 'running'",
                (status, time.time(), parts, result_bytes, request_id),
            )
            detail = json.dumps({"bytes": result_bytes, "held": held})
            self._audit(db, "node", "run_done", request_id, detail)
            self._keep_output(db, request_id, "", log)

    def fail_run(self, request_id: str, error: str, error_full: str = "", log: bytes = b"") -> None:
        """Record a failed job: `error` (redacted) in the clear, the full text and log sealed."""
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = 'failed', finished_at = ?, error = ?"
                " WHERE id = ? AND status = 'running'",
                (time.time(), error, request_id),
            )
            first = error.strip().splitlines()[0][:200] if error.strip() else ""
            self._audit(db, "node", "run_failed", request_id, first)
            self._keep_output(db, request_id, error_full, log)

    def _keep_output(
        self, db: sqlite3.Connection, request_id: str, error_full: str, log: bytes
    ) -> None:
        """Seal a job's full error and log to this node; released at once under errors="full"
        on every dataset the request read."""
        if not error_full and not log:
            return
        row = db.execute("SELECT inputs_json FROM requests WHERE id = ?", (request_id,)).fetchone()
        released = self._disclosure(db, json.loads(row["inputs_json"]).values())[0] == "full"
        recipient = x25519_public_key(self.identity.peer_id)
        domain = self.identity.peer_id
        db.execute(
            "INSERT OR REPLACE INTO job_outputs VALUES (?, ?, ?, ?)",
            (
                request_id,
                seal(error_full.encode(), recipient, output_context(request_id, domain, "error")),
                seal(log, recipient, output_context(request_id, domain, "log")),
                time.time() if released else None,
            ),
        )
        if released:
            self._audit(db, "policy", "release_error", request_id, 'errors="full"')

    def job_output(self, request_id: str) -> tuple[str, str, bool] | None:
        """A job's full error, its log and whether they are released; opened in memory only."""
        row = self._one("SELECT * FROM job_outputs WHERE request_id = ?", request_id)
        if row is None:
            return None
        domain = self.identity.peer_id
        error = open_sealed(
            row["error"], self.identity, output_context(request_id, domain, "error")
        )
        log = open_sealed(row["log"], self.identity, output_context(request_id, domain, "log"))
        return (
            error.decode(errors="replace"),
            log.decode(errors="replace"),
            row["released_at"] is not None,
        )

    def release_error(self, actor: str, request_id: str) -> None:
        """Let the requester read a failed job's full error and log; StoreError if the request
        did not fail or is released already (nothing changes then)."""
        with self._transaction() as db:
            current = self._request_or_fail(request_id)
            if current.status != "failed":
                raise StoreError(f"request {request_id} is {current.status}, not failed")
            changed = db.execute(
                "UPDATE job_outputs SET released_at = ? WHERE request_id = ?"
                " AND released_at IS NULL",
                (time.time(), request_id),
            ).rowcount
            if not changed:
                row = db.execute(
                    "SELECT 1 FROM job_outputs WHERE request_id = ?", (request_id,)
                ).fetchone()
                raise StoreError(
                    f"request {request_id}'s error is released already"
                    if row
                    else f"request {request_id} left no error text or log to release"
                )
            self._audit(db, actor, "release_error", request_id, "")

    def decide_result(
        self, actor: str, request_id: str, release: bool, reason: str, swap: Callable[[], None]
    ) -> m.RequestInfo:
        """Release a held result (`swap` puts the requester's sealed pieces in place, inside
        the transaction: both happen or neither) or withhold it; StoreError unless held."""
        status = "done" if release else "withheld"
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE requests SET status = ?, reason = ? WHERE id = ?"
                " AND status = 'awaiting_release'",
                (status, reason, request_id),
            ).rowcount
            if not changed:
                current = self._request_or_fail(request_id)
                raise StoreError(f"request {request_id} is {current.status}, not awaiting_release")
            action = "result_released" if release else "result_withheld"
            self._audit(db, actor, action, request_id, reason)
            if release:
                swap()
        return self._request_or_fail(request_id)

    def _recover_releases(self) -> None:
        """Finish what a crash cut off in a release's swap (see `decide_result`)."""
        results = self.paths.root / "results"
        for folder in results.glob("*.release"):
            shutil.rmtree(folder, ignore_errors=True)
        for held in results.glob("*.held"):
            request_id = held.name.removesuffix(".held")
            info = self.request(request_id)
            if info is not None and info.status == "awaiting_release":  # not committed
                shutil.rmtree(self.paths.result_dir(request_id), ignore_errors=True)
                os.replace(held, self.paths.result_dir(request_id))
            else:
                shutil.rmtree(held, ignore_errors=True)

    def result_parts(self, request_id: str) -> int:
        row = self._one("SELECT result_parts FROM requests WHERE id = ?", request_id)
        return 0 if row is None else row["result_parts"]

    def requeue_interrupted(self) -> list[str]:
        """Jobs cut off by a node crash go back to 'approved' so they run again."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT id FROM requests WHERE status IN ('running', 'building')"
            ).fetchall()
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
            self._add_requirements(db, request_id, requirements or [])
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
        self,
        actor: str,
        dataset: str,
        auto_approve: bool | None,
        max_query_epsilon: float | None,
        errors: str | None = None,
        release: str | None = None,
        requirements: m.RequirementsPolicy | None = None,
    ) -> m.PolicyInfo:
        """Change the fields given (None keeps the current value), in one transaction."""
        with self._transaction() as db:
            current = self.policy(dataset)
            auto_approve = current.auto_approve if auto_approve is None else auto_approve
            if max_query_epsilon is None:
                max_query_epsilon = current.max_query_epsilon
            db.execute(
                "INSERT OR REPLACE INTO dp_policies VALUES (?, ?, ?)",
                (dataset, int(auto_approve), max_query_epsilon),
            )
            errors, release = errors or current.errors, release or current.release
            db.execute(
                "INSERT OR REPLACE INTO disclosure_policies VALUES (?, ?, ?)",
                (dataset, errors, release),
            )
            requirements = current.requirements if requirements is None else requirements
            db.execute(
                "INSERT OR REPLACE INTO requirement_policies VALUES (?, ?)",
                (dataset, json.dumps(requirements)),
            )
            detail = {
                "auto_approve": auto_approve,
                "max_query_epsilon": max_query_epsilon,
                "errors": errors,
                "release": release,
                "requirements": requirements,
            }
            self._audit(db, actor, "set_policy", dataset, json.dumps(detail))
        return self.policy(dataset)

    def policy(self, dataset: str) -> m.PolicyInfo:
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM dp_policies WHERE dataset = ?", (dataset,)
            ).fetchone()
            errors, release = self._disclosure(self._db, [dataset])
            allowed = self._db.execute(
                "SELECT policy_json FROM requirement_policies WHERE dataset = ?", (dataset,)
            ).fetchone()
        policy = default_policy(dataset)
        if row is not None:
            policy = m.PolicyInfo(dataset, bool(row["auto_approve"]), row["max_query_epsilon"])
        requirements = json.loads(allowed["policy_json"]) if allowed else "any"
        return msgspec.structs.replace(
            policy, errors=errors, release=release, requirements=requirements
        )

    def disclosure(self, datasets: Iterable[str]) -> tuple[str, str]:
        """The (errors, release) policy of a request reading `datasets`: the strictest."""
        with self._lock:
            return self._disclosure(self._db, datasets)

    def _disclosure(self, db: sqlite3.Connection, datasets: Iterable[str]) -> tuple[str, str]:
        names = list(datasets)
        marks = ", ".join("?" * len(names))
        rows = db.execute(
            f"SELECT errors, release FROM disclosure_policies WHERE dataset IN ({marks})", names
        ).fetchall()
        full = len(rows) == len(set(names)) and all(r["errors"] == "full" for r in rows)
        held = any(r["release"] == "after_review" for r in rows)
        return "full" if full else "redacted", "after_review" if held else "on_approval"

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
            self._add_requirements(db, request_id, requirements or [])
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

    # ---- secure aggregation -----------------------------------------------------------------

    def join_aggregation(self, actor: str, request_id: str, session: str) -> None:
        """Record, before anything is masked, that this result joins `session`: once, ever.

        Threat: an aggregator who runs two sessions over the same result with different
        parties learns it by difference. Kept in the store, not in memory, so a restarted
        node still refuses the second session (StoreError, conflict)."""
        with self._transaction() as db:
            if db.execute(
                "SELECT 1 FROM secagg_joins WHERE request_id = ?", (request_id,)
            ).fetchone():
                raise StoreError("this request's result was already aggregated once")
            db.execute(
                "INSERT INTO secagg_joins VALUES (?, ?, ?)", (request_id, session, time.time())
            )
            self._audit(db, actor, "secagg_join", request_id, session)

    # ---- audit ----------------------------------------------------------------------------

    def audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        with self._transaction() as db:
            self._audit(db, actor, action, subject, detail)

    def _audit(
        self, db: sqlite3.Connection, actor: str, action: str, subject: str, detail: str
    ) -> None:
        last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        prev, seq = (GENESIS_HASH, 1) if last is None else (last["hash"], last["seq"] + 1)
        at = time.time()
        mac = _entry_mac(self._audit_key, prev, seq, at, actor, action, subject, detail)
        db.execute(
            "INSERT INTO audit (seq, at, actor, action, subject, detail, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at, actor, action, subject, detail, prev, mac),
        )

    def audit_entries(self, limit: int = 100) -> list[m.AuditEntry]:
        """The newest `limit` entries, oldest first (all of them for a negative limit)."""
        rows = self._all("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", limit)
        return [_audit_entry(r) for r in reversed(rows)]

    def audit_about(self, subject: str) -> list[m.AuditEntry]:
        """Every entry about `subject` (a request id, a dataset, a peer), oldest first."""
        rows = self._all("SELECT * FROM audit WHERE subject = ? ORDER BY seq", subject)
        return [_audit_entry(r) for r in rows]

    def verify_audit(self) -> bool:
        """True when the whole chain verifies under the node's key (see `check_audit`)."""
        return not self.check_audit()

    def check_audit(self) -> str:
        """ "" when every entry's MAC matches its content, its number and its predecessor;
        else where and how the chain breaks. Entries with the unkeyed hash of an older store
        are accepted only before the keyed `audit_rekeyed` entry that covers them."""
        prev, expected_seq, keyed = GENESIS_HASH, 1, False
        rows = self._all("SELECT * FROM audit ORDER BY seq")
        for r in rows:
            where = f"audit entry {r['seq']} ({r['action']} {r['subject']})"
            if r["seq"] != expected_seq:
                last = r["seq"] - 1
                span = f"entry {last}" if last == expected_seq else f"entries {expected_seq}-{last}"
                return f"audit {span} missing: deleted"
            if r["prev_hash"] != prev:
                return f"{where} does not follow entry {expected_seq - 1}: an entry was altered"
            content = (r["at"], r["actor"], r["action"], r["subject"], r["detail"])
            mac = _entry_mac(self._audit_key, prev, r["seq"], *content)
            if hmac.compare_digest(r["hash"], mac):
                if not keyed and r["seq"] > 1 and r["action"] != REKEYED:
                    return f"{where} follows unkeyed entries without an {REKEYED} entry"
                keyed = True
            elif keyed or r["hash"] != _entry_hash(prev, *content):
                return f"{where} does not match its MAC: altered, or written without the node's key"
            prev, expected_seq = r["hash"], expected_seq + 1
        if rows and not keyed:
            return (
                f"the audit chain (entries 1 to {len(rows)}) is not keyed by this node: a store "
                "from before keyed auditing, or one rewritten without the node's key; if you "
                "trust it, run `jupyter-syft domain rekey-audit` once"
            )
        return ""

    def rekey_audit(self, actor: str) -> int:
        """Cover an older store's unkeyed chain with one keyed entry, on the owner's word that
        the file is untouched; returns how many unkeyed entries it covers. StoreError if the
        chain is keyed already or does not verify even unkeyed."""
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
            problem = self.check_audit()
            if not problem:
                raise StoreError("the audit chain is keyed by this node already")
            prev = GENESIS_HASH
            for r in rows:
                content = (r["at"], r["actor"], r["action"], r["subject"], r["detail"])
                if r["prev_hash"] != prev or r["hash"] != _entry_hash(prev, *content):
                    raise StoreError(f"not re-keyed: {problem}")
                prev = r["hash"]
            detail = json.dumps({"unkeyed_entries": len(rows), "last_hash": prev})
            self._audit(db, actor, REKEYED, "audit", detail)
        return len(rows)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _audit_entry(r: sqlite3.Row) -> m.AuditEntry:
    return m.AuditEntry(
        r["seq"], r["at"], r["actor"], r["action"], r["subject"], r["detail"], r["hash"]
    )


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
    epsilon: float | None
    delta: float | None
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
        requirements=json.loads(row["requirements_json"] or "[]"),
    )
