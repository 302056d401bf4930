"""The audit chain is keyed by the node: a writer of the SQLite file who lacks `node.key` can
drop the triggers, delete and alter entries and recompute hashes, and the restarted node still
says the chain is broken, and where."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.domain.store import Store
from jupyter_syft.identity import Identity

GENESIS = "0" * 64
DATA = pd.DataFrame({"x": np.arange(10)})


def unkeyed(prev: str, row: dict) -> str:
    """The chain as it was before keying (plain SHA-256): what anyone can recompute."""
    canonical = [prev, repr(row["at"]), row["actor"], row["action"], row["subject"], row["detail"]]
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()


def own_key(prev: str, row: dict) -> str:
    """The keyed layout, but under a key the attacker made up."""
    fields = [prev, row["seq"], repr(row["at"]), row["actor"], row["action"], row["subject"]]
    canonical = json.dumps([*fields, row["detail"]])
    return hmac.new(b"attacker", canonical.encode(), hashlib.sha256).hexdigest()


def tamper(data_dir: Path, rehash: Callable[[str, dict], str], keep: int) -> None:
    """As an attacker with the file: drop the triggers, delete one entry, edit another, then
    renumber and rehash every entry after the first `keep`."""
    db = sqlite3.connect(data_dir / "domain.sqlite")
    db.row_factory = sqlite3.Row
    db.execute("DROP TRIGGER audit_no_update")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE action = 'add_user'")
    db.execute("UPDATE audit SET actor = 'someone-else' WHERE action = 'create_dataset'")
    rows = db.execute("SELECT * FROM audit ORDER BY seq").fetchall()
    db.execute("DELETE FROM audit")
    prev = GENESIS
    for seq, row in enumerate(rows, start=1):
        values = dict(row)
        if seq > keep:
            values.update(seq=seq, prev_hash=prev)
            values["hash"] = rehash(prev, values)
        db.execute(
            "INSERT INTO audit VALUES (:seq, :at, :actor, :action, :subject, :detail,"
            " :prev_hash, :hash)",
            values,
        )
        prev = values["hash"]
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Identity]:
    """A domain's data dir with a few audited actions, the node stopped: its file is the
    attacker's. Each test tampers with a copy."""
    root = tmp_path_factory.mktemp("audit")
    owner_home, owner = person(root, "owner")
    _, alice = person(root, "alice")
    node = DomainProcess(root, "audited", owner_home)
    node.start()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("data", private=DATA, mock=DATA)
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        admin.set_policy("data", errors="full")
        log = admin.audit_log()
        assert log.chain_ok and log.chain_error == ""
        assert node.stop() == 0
    finally:
        node.kill()
    return node.data_dir, owner_home, owner


@pytest.fixture
def domain(original, tmp_path: Path) -> Iterator[tuple[DomainProcess, Identity]]:
    data_dir, owner_home, owner = original
    shutil.copytree(data_dir, tmp_path / "audited")
    node = DomainProcess(tmp_path, "audited", owner_home)
    yield node, owner
    node.kill()


def restarted(node: DomainProcess, owner: Identity) -> AdminClient:
    node.start()
    return AdminClient(NodeConnection(node.address, owner))


def test_a_chain_recomputed_after_an_edit_breaks_at_the_edit(domain) -> None:
    node, owner = domain
    tamper(node.data_dir, unkeyed, keep=1)  # keep create_domain; rewrite from there
    log = restarted(node, owner).audit_log(limit=1000)
    assert not log.chain_ok
    assert "audit entry 2 (create_dataset data) does not match its MAC" in log.chain_error
    assert "add_user" not in [e.action for e in log.entries]  # the deletion happened...
    assert [e.actor for e in log.entries if e.action == "create_dataset"] == ["someone-else"]


def test_a_chain_recomputed_whole_is_not_the_nodes(domain) -> None:
    node, owner = domain
    tamper(node.data_dir, unkeyed, keep=0)
    admin = restarted(node, owner)
    log = admin.audit_log(limit=1000)
    assert not log.chain_ok
    assert "is not keyed by this node" in log.chain_error
    assert admin.datasets["data"].rows == 10  # the node keeps serving
    assert not admin.audit_log(limit=1000).chain_ok  # and new entries do not mend it


def test_a_chain_under_another_key_breaks_at_its_first_entry(domain) -> None:
    node, owner = domain
    tamper(node.data_dir, own_key, keep=0)
    log = restarted(node, owner).audit_log(limit=1000)
    assert not log.chain_ok
    assert "audit entry 1 (create_domain audited) does not match its MAC" in log.chain_error


def test_deleting_an_entry_without_rehashing_shows_the_gap(domain) -> None:
    node, owner = domain
    db = sqlite3.connect(node.data_dir / "domain.sqlite")
    db.execute("DROP TRIGGER audit_no_delete")
    db.execute("DELETE FROM audit WHERE seq = 2")
    db.commit()
    db.close()
    log = restarted(node, owner).audit_log(limit=1000)
    assert not log.chain_ok and log.chain_error == "audit entry 2 missing: deleted"


def rekey(data_dir: Path, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JUPYTER_SYFT_HOME": str(home)}
    command = [sys.executable, "-m", "jupyter_syft.cli", "domain", "rekey-audit"]
    return subprocess.run(
        [*command, "--data-dir", str(data_dir)], env=env, capture_output=True, text=True
    )


def test_an_older_unkeyed_store_is_keyed_only_on_the_owners_word(domain) -> None:
    """A store from before keyed auditing looks like a whole-chain rewrite: the node never
    re-keys it by itself; `rekey-audit` does, once, with the node stopped, and says so."""
    node, owner = domain
    refused = rekey(node.data_dir, node.home)
    assert refused.returncode == 1 and "keyed by this node already" in refused.stderr
    store = Store(node.data_dir)
    entries = len(store.audit_entries(1000))
    store.close()
    tamper(node.data_dir, unkeyed, keep=0)  # what an older version of the store holds
    admin = restarted(node, owner)
    running = rekey(node.data_dir, node.home)
    assert running.returncode == 2 and "stop the domain node first" in running.stderr
    assert node.stop() == 0
    done = rekey(node.data_dir, node.home)
    assert done.returncode == 0, done.stderr
    assert f"{entries - 1} older entries covered" in done.stdout
    admin = restarted(node, owner)
    log = admin.audit_log(limit=1000)
    assert log.chain_ok, log.chain_error
    assert log.entries[-1].action == "audit_rekeyed"
    assert log.entries[-1].actor == owner.peer_id
    assert rekey(node.data_dir, node.home).returncode == 2  # running again: refused


# ---- receipts: the node's signed word, kept outside the store -----------------------------


def verify_audit(data_dir: Path, receipts: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "jupyter_syft.cli", "domain", "verify-audit"]
    command += ["--data-dir", str(data_dir), "--receipts", str(receipts)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def receipted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """A stopped domain whose scientist kept receipts (in their own receipts file) for a
    request that was submitted, approved and run; and how many."""
    root = tmp_path_factory.mktemp("receipts")
    owner_home, owner = person(root, "owner")
    alice_home, alice = person(root, "alice")
    node = DomainProcess(root, "receipted", owner_home)
    node.start()
    monkeypatch = pytest.MonkeyPatch()
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("data", private=DATA, mock=DATA)
        admin.add_user(alice.peer_id, "data_scientist", "alice")
        monkeypatch.setenv("JUPYTER_SYFT_HOME", str(alice_home))  # alice's own session
        from jupyter_syft.client.domain import DomainClient

        scientist = DomainClient(NodeConnection(node.address, alice))
        request = scientist.submit("def f(df):\n    return len(df)\n", "f", {"df": "data"})
        admin.get_request(request.id).approve()
        assert request.wait(timeout=60).status == "done"
        actions = [r.action for r in request.receipts]
        assert actions[0] == "submit_request" and "approved" in actions and "run_done" in actions
        assert node.stop() == 0
    finally:
        monkeypatch.undo()
        node.kill()
    receipts = alice_home / "receipts.jsonl"
    return node.data_dir, receipts, len(receipts.read_text().splitlines())


def test_receipts_verify_against_the_untouched_log(receipted) -> None:
    data_dir, receipts, count = receipted
    checked = verify_audit(data_dir, receipts)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{count} receipts checked" in checked.stdout
    assert "holds every receipted entry" in checked.stdout


def test_receipts_catch_the_newest_entries_dropped(receipted, tmp_path: Path) -> None:
    """What the keyed chain alone cannot see: a valid prefix of it, the newest entries gone."""
    data_dir, receipts, _ = receipted
    copy = tmp_path / "rewritten"
    shutil.copytree(data_dir, copy)
    db = sqlite3.connect(copy / "domain.sqlite")
    db.execute("DROP TRIGGER audit_no_delete")
    last = db.execute("SELECT MAX(seq) FROM audit WHERE action = 'approved'").fetchone()[0]
    db.execute("DELETE FROM audit WHERE seq >= ?", (last,))
    db.commit()
    db.close()
    store = Store(copy)
    try:
        assert store.check_audit() == ""  # the chain alone says all is well
    finally:
        store.close()
    checked = verify_audit(copy, receipts)
    assert checked.returncode == 1
    assert "newest entries dropped" in checked.stdout and "approved" in checked.stdout


def test_a_forged_receipt_is_named(receipted, tmp_path: Path) -> None:
    data_dir, receipts, _ = receipted
    lines = receipts.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["signature"] = entry["signature"][:-4] + (
        "AAA=" if entry["signature"][-4:] != "AAA=" else "BBB="
    )
    forged = tmp_path / "forged.jsonl"
    forged.write_text(json.dumps(entry) + "\n")
    checked = verify_audit(data_dir, forged)
    assert checked.returncode == 1 and "forged" in checked.stdout
