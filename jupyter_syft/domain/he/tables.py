"""The encrypted-inference feature's tables: the models the owner serves and their usage."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from jupyter_syft.domain.store_core import (
    StoreCore,
    StoreError,
    fsync_dir,
)
from jupyter_syft.wire import messages as m

TABLES = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, features INTEGER NOT NULL,
    rows INTEGER NOT NULL, outputs INTEGER NOT NULL, depth INTEGER NOT NULL,
    max_samples INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_usage (
    model TEXT NOT NULL REFERENCES models (name), peer_id TEXT NOT NULL,
    calls INTEGER NOT NULL, samples INTEGER NOT NULL, last_at REAL NOT NULL,
    PRIMARY KEY (model, peer_id));
"""


class ModelTables(StoreCore):
    TABLES = TABLES

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
            fsync_dir(target.parent)

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
