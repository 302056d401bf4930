"""The datasets feature's table: each dataset's metadata (its files live under `assets/`)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from jupyter_syft.domain.store_core import (
    StoreCore,
    StoreError,
    fsync_dir,
)
from jupyter_syft.wire import messages as m

TABLES = """
CREATE TABLE IF NOT EXISTS datasets (
    name TEXT PRIMARY KEY, description TEXT NOT NULL, kind TEXT NOT NULL,
    schema_json TEXT NOT NULL, rows INTEGER NOT NULL, mock_rows INTEGER NOT NULL,
    public INTEGER NOT NULL, created_at REAL NOT NULL);
"""


class DatasetTables(StoreCore):
    TABLES = TABLES

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
            fsync_dir(target)

    def dataset(self, name: str) -> m.DatasetInfo | None:
        row = self._one("SELECT * FROM datasets WHERE name = ?", name)
        return None if row is None else _dataset_info(row)

    def datasets(self) -> list[m.DatasetInfo]:
        return [_dataset_info(r) for r in self._all("SELECT * FROM datasets ORDER BY name")]

    def private_path(self, name: str) -> Path:
        return self.paths.asset_dir(name) / "private.arrow"

    def mock_path(self, name: str) -> Path:
        return self.paths.asset_dir(name) / "mock.arrow"


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
