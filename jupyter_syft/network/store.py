"""A network node's durable state: members and the search index, in one SQLite file (WAL).

Layout of a data dir:
    network.sqlite   members (status, name, last seen, their latest signed records) and the
                     dataset index (a table plus its FTS5 full-text index)
    node.key         the node's libp2p identity (0600): its peer ID is its name; keep it
    node.json        written while the node runs: its address, for the operator's tools

The signed records a member sent are kept as received, so the index can be rebuilt from them
(on approval, after a restart) and the DHT refilled without asking anyone. Each write is one
transaction: a crash leaves the previous state or the next one. `last_seen` is written on
every heartbeat; in WAL mode with synchronous=NORMAL a commit costs no fsync.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from jupyter_syft.sqlite_file import SqliteFile
from jupyter_syft.wire import network_messages as nm

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    peer_id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    joined_at REAL NOT NULL, last_seen REAL NOT NULL,
    seq INTEGER NOT NULL, announcement BLOB NOT NULL,
    address_seq INTEGER NOT NULL, address BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS member_names ON members (name) WHERE status = 'member';
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY, peer_id TEXT NOT NULL, domain TEXT NOT NULL, name TEXT NOT NULL,
    description TEXT NOT NULL, kind TEXT NOT NULL, tags TEXT NOT NULL,
    schema_json TEXT NOT NULL, columns TEXT NOT NULL, rows INTEGER NOT NULL,
    mock_rows INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS datasets_by_peer ON datasets (peer_id);
CREATE VIRTUAL TABLE IF NOT EXISTS dataset_fts USING fts5(
    domain, name, description, tags, columns,
    content='datasets', content_rowid='id', tokenize='porter unicode61');
CREATE TRIGGER IF NOT EXISTS datasets_ai AFTER INSERT ON datasets BEGIN
    INSERT INTO dataset_fts (rowid, domain, name, description, tags, columns)
    VALUES (new.id, new.domain, new.name, new.description, new.tags, new.columns);
END;
CREATE TRIGGER IF NOT EXISTS datasets_ad AFTER DELETE ON datasets BEGIN
    INSERT INTO dataset_fts (dataset_fts, rowid, domain, name, description, tags, columns)
    VALUES ('delete', old.id, old.domain, old.name, old.description, old.tags, old.columns);
END;
"""

# bm25 weights of the FTS columns: a match in a dataset's name counts most, then its tags.
_BM25 = "bm25(dataset_fts, 2.0, 10.0, 1.0, 5.0, 2.0)"
_HIT_COLUMNS = (
    "d.domain, d.peer_id, d.name, d.description, d.kind, d.tags, d.schema_json, d.rows,"
    " d.mock_rows, m.last_seen"
)


class StaleRecord(Exception):
    """A record whose sequence number is not newer than the one held (a replay)."""


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def database(self) -> Path:
        return self.root / "network.sqlite"

    @property
    def node_key(self) -> Path:
        return self.root / "node.key"


@dataclass(frozen=True)
class Member:
    peer_id: str
    name: str
    status: str
    joined_at: float
    last_seen: float
    seq: int
    announcement: bytes  # an encoded SignedRecord holding an Announcement
    address_seq: int
    address: bytes  # an encoded SignedRecord holding an AddressRecord


class NetworkStore(SqliteFile):
    """Typed reads and transactional writes over the network's SQLite file."""

    def __init__(self, data_dir: Path) -> None:
        self.paths = Paths(Path(data_dir))
        self.paths.root.mkdir(parents=True, exist_ok=True)
        super().__init__(self.paths.database, SCHEMA)

    # ---- node metadata ---------------------------------------------------------------------

    def initialise(self, name: str, admin_peer_id: str) -> str:
        """Record the operator (the identity that creates the data dir) once; return it."""
        with self._transaction() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('admin', ?)", (admin_peer_id,))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (repr(time.time()),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (name,))
            return db.execute("SELECT value FROM meta WHERE key = 'admin'").fetchone()[0]

    # ---- members ---------------------------------------------------------------------------

    def member(self, peer_id: str) -> Member | None:
        rows = self._all("SELECT * FROM members WHERE peer_id = ?", peer_id)
        return Member(**rows[0]) if rows else None

    def name_holder(self, name: str) -> str | None:
        """The peer ID of the member holding `name`, if any."""
        rows = self._all("SELECT peer_id FROM members WHERE name = ? AND status = 'member'", name)
        return rows[0]["peer_id"] if rows else None

    def find(self, name_or_peer_id: str) -> list[Member]:
        rows = self._all(
            "SELECT * FROM members WHERE status = 'member' AND (name = ? OR peer_id = ?)",
            name_or_peer_id,
            name_or_peer_id,
        )
        return [Member(**r) for r in rows]

    def save_join(
        self,
        peer_id: str,
        name: str,
        status: str,
        address: tuple[int, bytes],
        announcement: tuple[int, bytes],
        now: float,
    ) -> int:
        """Record a join request (or a member re-joining); index it if `status` is member.

        Each record replaces the held one only when its sequence number is newer; returns
        the sequence number of the announcement now held.
        """
        with self._transaction() as db:
            old = self.member(peer_id)
            address_seq, address_raw = address
            seq, announcement_raw = announcement
            if old is not None:
                if old.address_seq >= address_seq:
                    address_seq, address_raw = old.address_seq, old.address
                if old.seq >= seq:
                    seq, announcement_raw = old.seq, old.announcement
            db.execute(
                "INSERT INTO members VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(peer_id) DO "
                "UPDATE SET name = excluded.name, status = excluded.status, "
                "last_seen = excluded.last_seen, seq = excluded.seq, "
                "announcement = excluded.announcement, address_seq = excluded.address_seq, "
                "address = excluded.address",
                (peer_id, name, status, now, now, seq, announcement_raw, address_seq, address_raw),
            )
            self._reindex(db, peer_id, name, status, announcement_raw)
            return seq

    def set_status(self, peer_id: str, status: str) -> Member | None:
        """Approve (status member) or remove a peer; its datasets enter or leave the index."""
        with self._transaction() as db:
            old = self.member(peer_id)
            if old is None:
                return None
            db.execute("UPDATE members SET status = ? WHERE peer_id = ?", (status, peer_id))
            self._reindex(db, peer_id, old.name, status, old.announcement)
            return self.member(peer_id)

    def apply_announcement(
        self, peer_id: str, announcement: nm.Announcement, raw: bytes, now: float
    ) -> None:
        """Replace a member's indexed datasets with a newer announcement's."""
        with self._transaction() as db:
            old = self.member(peer_id)
            if old is None:
                raise KeyError(peer_id)
            if announcement.seq <= old.seq:
                raise StaleRecord(f"announcement {announcement.seq} is not newer than {old.seq}")
            db.execute(
                "UPDATE members SET seq = ?, announcement = ?, last_seen = ? WHERE peer_id = ?",
                (announcement.seq, raw, now, peer_id),
            )
            self._reindex(db, peer_id, old.name, old.status, raw)

    def touch(self, peer_id: str, now: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE members SET last_seen = ? WHERE peer_id = ?", (now, peer_id))

    def _reindex(
        self, db: sqlite3.Connection, peer_id: str, name: str, status: str, raw: bytes
    ) -> None:
        db.execute("DELETE FROM datasets WHERE peer_id = ?", (peer_id,))
        if status != "member":
            return
        record = nm.decode_record(nm.decode_signed_record(raw).body)
        assert isinstance(record, nm.Announcement)
        db.executemany(
            "INSERT INTO datasets (peer_id, domain, name, description, kind, tags, schema_json,"
            " columns, rows, mock_rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    peer_id,
                    name,
                    d.name,
                    d.description,
                    d.kind,
                    " ".join(d.tags),
                    json.dumps(d.schema),
                    " ".join(d.schema),
                    d.rows,
                    d.mock_rows,
                )
                for d in record.datasets
            ],
        )

    def members(self) -> list[nm.MemberInfo]:
        rows = self._all(
            "SELECT m.*, (SELECT count(*) FROM datasets d WHERE d.peer_id = m.peer_id) AS n "
            "FROM members m ORDER BY m.joined_at"
        )
        return [
            nm.MemberInfo(
                r["peer_id"], r["name"], r["status"], r["joined_at"], r["last_seen"], r["n"]
            )
            for r in rows
        ]

    def domains(self, online_since: float) -> list[nm.DomainEntry]:
        rows = self._all(
            "SELECT m.name, m.peer_id, m.last_seen, "
            "(SELECT count(*) FROM datasets d WHERE d.peer_id = m.peer_id) AS n "
            "FROM members m WHERE m.status = 'member' ORDER BY m.name"
        )
        return [
            nm.DomainEntry(
                r["name"], r["peer_id"], r["last_seen"] >= online_since, r["n"], r["last_seen"]
            )
            for r in rows
        ]

    def address_records(self) -> list[bytes]:
        """Every member's latest signed address record (to refill the DHT)."""
        rows = self._all("SELECT address FROM members WHERE status = 'member'")
        return [r["address"] for r in rows]

    # ---- search ----------------------------------------------------------------------------

    def search(
        self, match: str, limit: int, online_since: float, include_offline: bool
    ) -> list[nm.Hit]:
        """Datasets of members matching the FTS5 expression `match` ("" lists all), best first.

        Offline members' datasets are left out unless `include_offline`.
        """
        online = "" if include_offline else "AND m.last_seen >= ?"
        args: list[object] = [] if include_offline else [online_since]
        if match:
            sql = (
                f"SELECT {_HIT_COLUMNS}, {_BM25} AS score FROM dataset_fts "
                "JOIN datasets d ON d.id = dataset_fts.rowid "
                "JOIN members m ON m.peer_id = d.peer_id "
                f"WHERE dataset_fts MATCH ? AND m.status = 'member' {online} "
                "ORDER BY score LIMIT ?"
            )
            args = [match, *args, limit]
        else:
            sql = (
                f"SELECT {_HIT_COLUMNS}, 0.0 AS score FROM datasets d "
                "JOIN members m ON m.peer_id = d.peer_id "
                f"WHERE m.status = 'member' {online} ORDER BY d.domain, d.name LIMIT ?"
            )
            args = [*args, limit]
        return [
            nm.Hit(
                domain=r["domain"],
                domain_peer_id=r["peer_id"],
                dataset=r["name"],
                description=r["description"],
                kind=r["kind"],
                tags=r["tags"].split(),
                schema=json.loads(r["schema_json"]),
                rows=r["rows"],
                mock_rows=r["mock_rows"],
                online=r["last_seen"] >= online_since,
                last_seen=r["last_seen"],
                score=-r["score"],  # bm25: lower is better; hits: higher is better
            )
            for r in self._all(sql, *args)
        ]
