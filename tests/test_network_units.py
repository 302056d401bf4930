"""The network's parts without processes: query text, rate limits, caps, records, the index."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from networks import dataset

from jupyter_syft.identity import Identity
from jupyter_syft.network.addresses import AddressValidator, address_key
from jupyter_syft.network.config import ConfigError, load_config
from jupyter_syft.network.member import describe_catalogue
from jupyter_syft.network.membership import JoinRefused, Policy
from jupyter_syft.network.query import fts_match
from jupyter_syft.network.store import NetworkStore, StaleRecord
from jupyter_syft.wire import messages as m
from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import (
    MAX_DESCRIPTION,
    MetadataError,
    check_announcement,
    open_address,
)
from jupyter_syft.wire.network_messages import RECORD_CONTEXT, open_record, sign_record
from jupyter_syft.wire.ratelimit import RateLimiter
from jupyter_syft.wire.rpc import BadMessage, signed_part


def announcement(identity: Identity, name: str, seq: int, *datasets: nm.DatasetMeta):
    record = nm.Announcement(identity.peer_id, name, seq, time.time(), list(datasets))
    return record, sign_record(identity, record)


def address(identity: Identity, seq: int = 1, port: int = 1) -> nm.SignedRecord:
    addr = f"/ip4/127.0.0.1/tcp/{port}/p2p/{identity.peer_id}"
    return sign_record(identity, nm.AddressRecord(identity.peer_id, seq, time.time(), [addr]))


# ---- query text -----------------------------------------------------------------------------


def test_query_text_becomes_safe_prefix_terms() -> None:
    assert fts_match("Diabetes BMI") == '"diabetes"* "bmi"*'
    # FTS5 syntax in user text is just words: no column filters, operators or stray quotes.
    assert fts_match('description:"x" OR NOT -(y)') == '"description"* "x"* "or"* "not"* "y"*'
    assert fts_match("  ,;  ") == ""


# ---- rate limits ----------------------------------------------------------------------------


def test_rate_limiter_bursts_then_refills_per_key() -> None:
    limiter = RateLimiter(rate=2.0, burst=3.0)
    assert [limiter.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now=0.0)  # another peer keeps its own allowance
    assert not limiter.allow("a", now=0.1)
    assert limiter.allow("a", now=0.6)  # 0.6 s at 2/s refilled one token


# ---- policies -------------------------------------------------------------------------------


def test_join_policies() -> None:
    assert Policy("open").status_on_join("p", None) == "member"
    assert Policy("manual").status_on_join("p", None) == "pending"
    assert Policy("manual", frozenset({"p"})).status_on_join("p", None) == "member"
    assert Policy("allowlist", frozenset({"p"})).status_on_join("p", None) == "member"
    with pytest.raises(JoinRefused, match="allowlist"):
        Policy("allowlist").status_on_join("q", None)
    assert Policy("manual").status_on_join("p", "member") == "member"  # re-join after restart
    with pytest.raises(JoinRefused, match="removed"):
        Policy("open").status_on_join("p", "removed")
    with pytest.raises(ValueError):
        Policy("anyone")  # type: ignore[arg-type]


# ---- records and caps -----------------------------------------------------------------------


def test_records_verify_against_their_own_peer() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    record, signed = announcement(alice, "a", 1)
    assert open_record(signed, nm.Announcement) == record
    # Mallory re-signs Alice's record: it no longer verifies against Alice's peer ID.
    forged = nm.SignedRecord(signed.body, mallory.sign(signed_part(RECORD_CONTEXT, signed.body)))
    with pytest.raises(BadMessage, match="forged"):
        open_record(forged, nm.Announcement)
    with pytest.raises(BadMessage, match="expected a AddressRecord"):
        open_record(signed, nm.AddressRecord)
    # A signature made for another purpose (no context prefix) is refused.
    with pytest.raises(BadMessage):
        open_record(nm.SignedRecord(signed.body, alice.sign(signed.body)), nm.Announcement)
    with pytest.raises(ValueError):
        sign_record(mallory, record)


def test_oversized_or_malformed_metadata_is_refused() -> None:
    alice = Identity.generate()
    check_announcement(announcement(alice, "a", 1, dataset("d", "x" * MAX_DESCRIPTION))[0])
    bad = [
        ("a", [dataset("d", "x" * (MAX_DESCRIPTION + 1))]),
        ("a", [dataset(f"d{i}") for i in range(501)]),
        ("a", [dataset("d", **{f"c{i}": "double" for i in range(257)})]),
        ("a", [dataset("d"), dataset("d")]),
        ("a\nb", []),
        ("a", [dataset("../etc")]),
        ("a", [nm.DatasetMeta("d", "", "table", ["two words"], {}, 1, 1)]),
        ("a", [nm.DatasetMeta("d", "", "table", [], {}, -1, 1)]),
    ]
    for name, datasets in bad:
        with pytest.raises(MetadataError):
            check_announcement(announcement(alice, name, 1, *datasets)[0])


def test_an_honest_catalogue_is_trimmed_to_fit() -> None:
    info = m.DatasetInfo(
        "notes", "y" * 5000 + " #cardio #icu", "table", {"a": "int64"}, 10, 5, False, 0.0
    )
    [meta] = describe_catalogue([info])
    assert len(meta.description) == MAX_DESCRIPTION
    assert meta.tags == ["table", "cardio", "icu"]
    check_announcement(announcement(Identity.generate(), "a", 1, meta)[0])


def test_address_validator_refuses_impostors_and_keeps_the_newest() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    validator = AddressValidator()
    key = address_key(alice.peer_id)
    old, new = nm.encode(address(alice, 1)), nm.encode(address(alice, 2, port=2))
    validator.validate(key, old)
    with pytest.raises(ValueError, match="another peer's key"):
        validator.validate(key, nm.encode(address(mallory)))  # Mallory's record, Alice's key
    # Addresses of another peer inside a record signed by Alice: refused too.
    other = f"/ip4/127.0.0.1/tcp/1/p2p/{mallory.peer_id}"
    pointing = sign_record(alice, nm.AddressRecord(alice.peer_id, 3, 0.0, [other]))
    with pytest.raises(ValueError):
        validator.validate(key, nm.encode(pointing))
    assert validator.select(key, [old, new]) == 1
    assert validator.select(key, [new, old, b"junk"]) == 0
    assert open_address(nm.decode_signed_record(new)).addrs[0].endswith(alice.peer_id)


# ---- the index ------------------------------------------------------------------------------


def test_index_replaces_searches_and_refuses_stale(tmp_path: Path) -> None:
    store = NetworkStore(tmp_path)
    alice = Identity.generate()
    first, signed = announcement(alice, "hospital-a", 1, dataset("diabetes", "progression"))
    store.save_join(
        alice.peer_id, "hospital-a", "member", (1, nm.encode(address(alice))),
        (1, nm.encode(signed)), time.time(),
    )  # fmt: skip
    assert [h.dataset for h in store.search(fts_match("diabetic"), 10, 0.0, False)] == ["diabetes"]
    second, signed2 = announcement(
        alice, "hospital-a", 2, dataset("cardio", "heart #ecg", bpm="int64"), dataset("notes")
    )
    store.apply_announcement(alice.peer_id, second, nm.encode(signed2), time.time())
    assert store.search(fts_match("diabetes"), 10, 0.0, False) == []
    assert [h.dataset for h in store.search(fts_match("bpm"), 10, 0.0, False)] == ["cardio"]
    assert [h.dataset for h in store.search("", 10, 0.0, False)] == ["cardio", "notes"]
    with pytest.raises(StaleRecord):
        store.apply_announcement(alice.peer_id, first, nm.encode(signed), time.time())
    # Offline members drop out unless asked for; removal empties their part of the index.
    assert store.search("", 10, time.time() + 1, False) == []
    assert len(store.search("", 10, time.time() + 1, True)) == 2
    store.set_status(alice.peer_id, "removed")
    assert store.search("", 10, 0.0, True) == []
    store.close()
    # Everything is on disk: a new store (a restart) sees the member and its record.
    again = NetworkStore(tmp_path)
    assert again.member(alice.peer_id).seq == 2  # type: ignore[union-attr]
    again.set_status(alice.peer_id, "member")
    assert len(again.search("", 10, 0.0, True)) == 2
    again.close()


# ---- config ---------------------------------------------------------------------------------


def test_config_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "network.toml"
    path.write_text('name = "n"\ndata_dir = "/d"\njoin_policy = "manual"\noffline_after_s = 5\n')
    config = load_config(path, {"join_policy": "open", "listen": None})
    assert (config.name, config.join_policy, config.offline_after_s) == ("n", "open", 5)
    for text, error in (
        ('name = "n"\ndata_dir = "/d"\nofline_after_s = 5\n', "unknown setting"),
        ('name = "n"\n', "data_dir is required"),
        ('name = "n"\ndata_dir = "/d"\njoin_policy = "all"\n', "join_policy"),
        ('name = "n"\ndata_dir = "/d"\npeers = ["/ip4/1.2.3.4/tcp/1"]\n', "/p2p/"),
        ('name = "n"\ndata_dir = "/d"\noffline_after_s = "soon"\n', "number"),
        ('name = "n"\ndata_dir = "/d"\nmax_connections = 0\n', "max_connections"),
        ("name = ", "cannot read"),
    ):
        path.write_text(text)
        with pytest.raises(ConfigError, match=error):
            load_config(path, {})
