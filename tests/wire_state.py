"""A node's durable state, read straight from its files: what a refused call must not change.

Reads the node's SQLite file read-only (the node keeps running and writing) and lists its data
dir, so a comparison sees every table (users, datasets, requests, budgets, ledger, models,
members, the index...) and every file, whatever feature module owns them. The audit log may
only gain `refused` entries (the node records refused calls); those are left out.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Files whose bytes change with no state changing: the SQLite file and its WAL (the tables are
# compared instead), the node's address file.
_VOLATILE_SUFFIXES = (".sqlite", "-wal", "-shm", ".log", "node.json")


def _tables(
    database: Path, skip_columns: dict[str, set[str]], audited_reads: tuple[str, ...] = ()
) -> dict[str, list[tuple]]:
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        names = [
            row[0]
            for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not row[0].startswith("sqlite_")
        ]
        state: dict[str, list[tuple]] = {}
        for name in sorted(names):
            columns = [row[1] for row in db.execute(f'PRAGMA table_info("{name}")')]
            kept = [c for c in columns if c not in skip_columns.get(name, set())]
            select = ", ".join(f'"{c}"' for c in kept) or "1"
            rows = db.execute(f'SELECT {select} FROM "{name}"').fetchall()
            if name == "audit":
                action = kept.index("action")
                kept = [r for r in rows if not str(r[action]).startswith("refused")]
                rows = [r for r in kept if r[action] not in audited_reads]
            state[name] = sorted(rows, key=repr)
        return state
    finally:
        db.close()


def _files(root: Path) -> list[tuple[str, int]]:
    return sorted(
        (p.relative_to(root).as_posix(), p.stat().st_size if p.is_file() else -1)
        for p in root.rglob("*")
        if not p.name.endswith(_VOLATILE_SUFFIXES)
    )


def domain_state(data_dir: Path, audited_reads: tuple[str, ...] = ()) -> tuple:
    """Every table of a domain's store (the audit without `refused` entries, nor the
    `audited_reads` actions: reads the node records, such as "read_mock") and its files."""
    return _tables(data_dir / "domain.sqlite", {}, audited_reads), _files(data_dir)


def network_state(data_dir: Path) -> tuple:
    """Every table of a network's store and its files; a member's `last_seen` moves with each
    heartbeat, which any member may send, so it is left out."""
    return _tables(data_dir / "network.sqlite", {"members": {"last_seen"}}), _files(data_dir)


def differences(before: tuple, after: tuple) -> list[str]:
    """What changed between two states, table by table, for an assertion message."""
    found = []
    for name in sorted(set(before[0]) | set(after[0])):
        old, new = before[0].get(name, []), after[0].get(name, [])
        if old != new:
            gone = [r for r in old if r not in new][:3]
            added = [r for r in new if r not in old][:3]
            found.append(f"table {name}: removed {gone!r:.300}, added {added!r:.300}")
    if before[1] != after[1]:
        gone = sorted(set(before[1]) - set(after[1]))[:5]
        added = sorted(set(after[1]) - set(before[1]))[:5]
        found.append(f"files: removed {gone}, added {added}")
    return found
