"""The requests feature's lifecycle (submit, decide, build, run, release) and its table of
sealed job outputs. Approving a DP request charges it (PrivacyTables) in the same transaction.

What a job says besides its result (the full error text, its stdout and stderr) is sealed to
the node's own key (`crypto.seal`, bound to the request) before it reaches the file; the
`requests.error` column holds only the redacted error a scientist may see.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable

import msgspec

from jupyter_syft.crypto.seal import open_sealed, output_context, seal, x25519_public_key
from jupyter_syft.domain.privacy.tables import PrivacyTables
from jupyter_syft.domain.store_core import (
    StoreError,
)
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.resources import describe_placement

TABLES = """
CREATE TABLE IF NOT EXISTS job_outputs (
    request_id TEXT PRIMARY KEY REFERENCES requests (id),
    error BLOB NOT NULL, log BLOB NOT NULL, released_at REAL);
"""


class RequestTables(PrivacyTables):
    TABLES = TABLES

    def add_request(self, requester: str, call: m.SubmitRequest) -> m.RequestInfo:
        request_id = uuid.uuid4().hex
        with self._transaction() as db:
            self._insert_request(
                db, request_id, requester, call.code, call.function_name, call.inputs, call.policy
            )
            self._add_list(db, "request_requirements", request_id, call.requirements)
            self._add_resources(db, request_id, call.resources)
            self._add_list(db, "request_distributed", request_id, call.distributed)
        return self._request_or_fail(request_id)

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

    def finish_run(
        self,
        request_id: str,
        parts: int,
        result_bytes: int,
        log: bytes = b"",
        held: bool = False,
        placement: m.Placement | None = None,
    ) -> None:
        """Record a finished job; `held`: its result (sealed to this node) awaits release;
        `placement`: where it ran, kept with the request and named in the audit entry."""
        status = "awaiting_release" if held else "done"
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = ?, finished_at = ?, result_parts = ?,"
                " result_bytes = ? WHERE id = ? AND status = 'running'",
                (status, time.time(), parts, result_bytes, request_id),
            )
            detail = {"bytes": result_bytes, "held": held, **_placement_detail(placement)}
            self._audit(db, "node", "run_done", request_id, json.dumps(detail))
            self._keep_placement(db, request_id, placement)
            self._keep_output(db, request_id, "", log)

    def fail_run(
        self,
        request_id: str,
        error: str,
        error_full: str = "",
        log: bytes = b"",
        placement: m.Placement | None = None,
    ) -> None:
        """Record a failed job: `error` (redacted) in the clear, the full text and log sealed;
        the audit entry holds the error's first line and where the job ran."""
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET status = 'failed', finished_at = ?, error = ?"
                " WHERE id = ? AND status = 'running'",
                (time.time(), error, request_id),
            )
            first = error.strip().splitlines()[0][:200] if error.strip() else ""
            detail = {"error": first, **_placement_detail(placement)}
            self._audit(db, "node", "run_failed", request_id, json.dumps(detail))
            self._keep_placement(db, request_id, placement)
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


def _placement_detail(placement: m.Placement | None) -> dict[str, object]:
    """An audit entry's words on where a job ran: executor, node, resources, seconds, attempts."""
    if placement is None:
        return {}
    placement = msgspec.structs.replace(placement, seconds=round(placement.seconds, 3))
    return {"placement": msgspec.to_builtins(placement), "ran": describe_placement(placement)}
