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

The store core holds what every feature shares: the node's metadata, users, the requests table
(every feature's work is a request: `_insert_request` is the one way one is recorded), the
per-dataset policies and the audit log. Each feature keeps its own tables and their methods in
`domain/<feature>/tables.py` (a `StoreCore` subclass with its `TABLES`); `domain/store.py`
assembles them into the one `Store`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import msgspec
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jupyter_syft.identity import Identity, load_or_create
from jupyter_syft.privacy.budget import delta_value, epsilon_value
from jupyter_syft.privacy.policy import default_policy
from jupyter_syft.sqlite_file import SqliteFile
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.rpc import Refused

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    peer_id TEXT PRIMARY KEY, role TEXT NOT NULL, name TEXT NOT NULL, added_at REAL NOT NULL);
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
CREATE TABLE IF NOT EXISTS dp_policies (
    dataset TEXT PRIMARY KEY, auto_approve INTEGER NOT NULL, max_query_epsilon REAL NOT NULL);
CREATE TABLE IF NOT EXISTS disclosure_policies (
    dataset TEXT PRIMARY KEY, errors TEXT NOT NULL, release TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS request_requirements (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), requirements_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS requirement_policies (
    dataset TEXT PRIMARY KEY, policy_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS request_distributed (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), arguments_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS request_resources (
    request_id TEXT PRIMARY KEY REFERENCES requests (id),
    cpus REAL NOT NULL, gpus INTEGER NOT NULL, memory_mb INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS run_placements (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), placement_json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resource_policies (
    dataset TEXT PRIMARY KEY,
    max_cpus REAL NOT NULL, max_gpus INTEGER NOT NULL, max_memory_mb INTEGER NOT NULL);
"""

REQUESTS = (
    "SELECT r.*, p.spec AS dp_spec, p.epsilon_units AS dp_epsilon, p.delta_units AS dp_delta,"
    " f.spec AS plan_spec, fr.plan_id AS round_plan, fr.round AS round_number,"
    " q.requirements_json, rr.cpus AS asked_cpus, rr.gpus AS asked_gpus,"
    " rr.memory_mb AS asked_memory_mb, rp.placement_json, rd.arguments_json AS distributed_json"
    " FROM requests r LEFT JOIN dp_requests p ON p.request_id = r.id"
    " LEFT JOIN federated_plans f ON f.request_id = r.id"
    " LEFT JOIN federated_rounds fr ON fr.request_id = r.id"
    " LEFT JOIN request_requirements q ON q.request_id = r.id"
    " LEFT JOIN request_distributed rd ON rd.request_id = r.id"
    " LEFT JOIN request_resources rr ON rr.request_id = r.id"
    " LEFT JOIN run_placements rp ON rp.request_id = r.id"
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


class StoreCore(SqliteFile):
    """Typed reads and transactional writes over the domain's SQLite file: the shared part."""

    TABLES: ClassVar[str] = ""  # a feature's CREATE statements, run after the core's

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
        tables = [c.__dict__.get("TABLES", "") for c in reversed(type(self).__mro__)]
        super().__init__(self.paths.database, SCHEMA + "".join(tables))

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

    def request(self, request_id: str) -> m.RequestInfo | None:
        row = self._one(REQUESTS + " WHERE id = ?", request_id)
        return None if row is None else request_from_row(row)

    def requests(self, requester: str | None = None, status: str = "") -> list[m.RequestInfo]:
        sql, args = REQUESTS + " WHERE 1", list[str]()
        if requester is not None:
            sql, args = sql + " AND requester = ?", [*args, requester]
        if status:
            sql, args = sql + " AND status = ?", [*args, status]
        return [request_from_row(r) for r in self._all(sql + " ORDER BY submitted_at", *args)]

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

    def _add_list(
        self, db: sqlite3.Connection, table: str, request_id: str, values: list[str]
    ) -> None:
        """A request's list (`request_requirements`: declared packages; `request_distributed`:
        the arguments it takes as ray.data Datasets), as JSON; nothing for an empty one."""
        if values:
            db.execute(f"INSERT INTO {table} VALUES (?, ?)", (request_id, json.dumps(values)))

    def _add_resources(
        self, db: sqlite3.Connection, request_id: str, resources: m.Resources | None
    ) -> None:
        """What a request asks its executor for (none: the node's defaults)."""
        if resources is not None:
            db.execute(
                "INSERT INTO request_resources VALUES (?, ?, ?, ?)",
                (request_id, resources.cpus, resources.gpus, resources.memory_mb),
            )

    def _keep_placement(
        self, db: sqlite3.Connection, request_id: str, placement: m.Placement | None
    ) -> None:
        """Where the request's job ran (the last run, if a restart ran it again)."""
        if placement is not None:
            db.execute(
                "INSERT OR REPLACE INTO run_placements VALUES (?, ?)",
                (request_id, msgspec.json.encode(placement).decode()),
            )

    def set_policy(
        self,
        actor: str,
        dataset: str,
        auto_approve: bool | None,
        max_query_epsilon: float | None,
        errors: str | None = None,
        release: str | None = None,
        requirements: m.RequirementsPolicy | None = None,
        caps: tuple[float | None, int | None, int | None] = (None, None, None),
    ) -> m.PolicyInfo:
        """Change the fields given (None keeps the current value), in one transaction.
        `caps`: the most one request may ask for, (max_cpus, max_gpus, max_memory_mb)."""
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
            current_caps = (current.max_cpus, current.max_gpus, current.max_memory_mb)
            max_cpus, max_gpus, max_memory_mb = (
                old if new is None else new for new, old in zip(caps, current_caps, strict=True)
            )
            db.execute(
                "INSERT OR REPLACE INTO resource_policies VALUES (?, ?, ?, ?)",
                (dataset, max_cpus, max_gpus, max_memory_mb),
            )
            detail = {
                "auto_approve": auto_approve,
                "max_query_epsilon": max_query_epsilon,
                "errors": errors,
                "release": release,
                "requirements": requirements,
                "max_cpus": max_cpus,
                "max_gpus": max_gpus,
                "max_memory_mb": max_memory_mb,
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
            caps = self._db.execute(
                "SELECT * FROM resource_policies WHERE dataset = ?", (dataset,)
            ).fetchone()
        policy = default_policy(dataset)
        if row is not None:
            policy = m.PolicyInfo(dataset, bool(row["auto_approve"]), row["max_query_epsilon"])
        requirements = json.loads(allowed["policy_json"]) if allowed else "any"
        return msgspec.structs.replace(
            policy,
            errors=errors,
            release=release,
            requirements=requirements,
            max_cpus=caps["max_cpus"] if caps else 0.0,
            max_gpus=caps["max_gpus"] if caps else 0,
            max_memory_mb=caps["max_memory_mb"] if caps else 0,
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
        return [audit_entry_from_row(r) for r in reversed(rows)]

    def audit_about(self, subject: str) -> list[m.AuditEntry]:
        """Every entry about `subject` (a request id, a dataset, a peer), oldest first."""
        rows = self._all("SELECT * FROM audit WHERE subject = ? ORDER BY seq", subject)
        return [audit_entry_from_row(r) for r in rows]

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


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def audit_entry_from_row(r: sqlite3.Row) -> m.AuditEntry:
    return m.AuditEntry(
        r["seq"], r["at"], r["actor"], r["action"], r["subject"], r["detail"], r["hash"]
    )


DP_SPEC = msgspec.msgpack.Decoder(m.DPQuery | m.DPTraining)
PLACEMENT = msgspec.json.Decoder(m.Placement)
PLAN_SPEC = msgspec.msgpack.Decoder(m.FederatedPlan)


def request_from_row(row: sqlite3.Row) -> m.RequestInfo:
    dp = row["dp_spec"] is not None
    plan = PLAN_SPEC.decode(row["plan_spec"]) if row["plan_spec"] is not None else None
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
        privacy=DP_SPEC.decode(row["dp_spec"]) if dp else None,
        plan=plan,
        plan_round=(row["round_plan"], row["round_number"]) if row["round_plan"] else None,
        requirements=json.loads(row["requirements_json"] or "[]"),
        distributed=json.loads(row["distributed_json"] or "[]"),
        resources=(
            m.Resources(row["asked_cpus"], row["asked_gpus"], row["asked_memory_mb"])
            if row["asked_cpus"] is not None
            else None
        ),
        placement=PLACEMENT.decode(row["placement_json"]) if row["placement_json"] else None,
    )
