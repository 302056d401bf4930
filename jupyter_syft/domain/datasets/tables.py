"""The datasets feature's tables: each dataset's metadata (its files live under `assets/`),
and where a dataset stored as partitions lives (`partitions.py`)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pyarrow as pa

from jupyter_syft.domain.datasets.partitions import (
    Location,
    location,
    recorded_location,
    remove_folder,
    write_partitions,
)
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
CREATE TABLE IF NOT EXISTS dataset_locations (
    name TEXT PRIMARY KEY REFERENCES datasets (name), uri TEXT NOT NULL,
    partitions INTEGER NOT NULL);
"""

DATASETS = (
    "SELECT d.*, l.uri, l.partitions FROM datasets d"
    " LEFT JOIN dataset_locations l ON l.name = d.name"
)


class DatasetTables(StoreCore):
    TABLES = TABLES
    # Where new table datasets go when their upload names no location (domain start
    # --storage); "" = the data dir. Set by the node at start, after `location()` checked it.
    storage = ""

    def add_dataset(self, actor: str, info: m.DatasetInfo, private: Path, mock: Path) -> None:
        """Move the staged asset files into place and record the dataset, all or nothing."""
        target = self.paths.asset_dir(info.name)
        with self._transaction() as db:
            self._insert_dataset(db, actor, info)
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            os.replace(private, target / "private.arrow")
            os.replace(mock, target / "mock.arrow")
            fsync_dir(target)

    def add_partitioned_dataset(
        self,
        actor: str,
        info: m.DatasetInfo,
        private: pa.Table,
        mock: Path,
        uri: str,
        partition_rows: int,
    ) -> m.DatasetInfo:
        """Write the private table as partitions at `uri`, move the staged mock into place and
        record both, all or nothing (the partition folder is removed if recording fails)."""
        if self.dataset(info.name) is not None:  # before writing anything
            raise StoreError(f"a dataset named {info.name!r} already exists")
        where = location(uri, self.paths.root)
        parts = write_partitions(private, where, info.name, partition_rows)
        target = self.paths.asset_dir(info.name)
        try:
            with self._transaction() as db:
                self._insert_dataset(db, actor, info)
                db.execute(
                    "INSERT INTO dataset_locations VALUES (?, ?, ?)", (info.name, uri, parts)
                )
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                os.replace(mock, target / "mock.arrow")
                fsync_dir(target)
        except BaseException:
            remove_folder(where, where.folder(info.name))
            raise
        found = self.dataset(info.name)
        assert found is not None
        return found

    def _insert_dataset(self, db: sqlite3.Connection, actor: str, info: m.DatasetInfo) -> None:
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

    def dataset(self, name: str) -> m.DatasetInfo | None:
        row = self._one(DATASETS + " WHERE d.name = ?", name)
        return None if row is None else _dataset_info(row)

    def datasets(self) -> list[m.DatasetInfo]:
        return [_dataset_info(r) for r in self._all(DATASETS + " ORDER BY d.name")]

    def dataset_location(self, name: str) -> Location | None:
        """Where a dataset stored as partitions lives (None: in the data dir), as recorded:
        checked when it was written, not again (a job on a missing folder fails, saying so)."""
        row = self._one("SELECT uri FROM dataset_locations WHERE name = ?", name)
        return None if row is None else recorded_location(row["uri"])

    def private_path(self, name: str) -> str:
        """What a job's keeper opens for the private data: the Arrow file in the data dir, or
        the partition folder at the dataset's location."""
        where = self.dataset_location(name)
        if where is None:
            return str(self.paths.asset_dir(name) / "private.arrow")
        return where.folder(name)

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
        partitions=row["partitions"] or 0,
    )
