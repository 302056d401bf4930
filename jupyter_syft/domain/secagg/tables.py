"""The secure-aggregation feature's table: which result joined which session (once, ever)."""

from __future__ import annotations

import time

from jupyter_syft.domain.store_core import (
    StoreCore,
    StoreError,
)

TABLES = """
CREATE TABLE IF NOT EXISTS secagg_joins (
    request_id TEXT PRIMARY KEY REFERENCES requests (id), session TEXT NOT NULL, at REAL NOT NULL);
"""


class SecAggTables(StoreCore):
    TABLES = TABLES

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
