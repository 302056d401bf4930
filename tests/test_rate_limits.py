"""Per-peer rate limits on the domain, and refused calls audited in bounded summaries: a flood
of refused calls from many new identities adds a few audit entries, and the node keeps
answering everyone else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from nodes import DomainProcess, person

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.client.connection import NodeConnection
from jupyter_syft.client.domain import DomainClient
from jupyter_syft.domain.audit import RefusalLog
from jupyter_syft.domain.store import Store
from jupyter_syft.errors import RateLimitedError
from jupyter_syft.wire.ratelimit import RateLimiter

DATA = pd.DataFrame({"x": [1.0, 2.0, 3.0]})

# One client process: `identities` new identities, each connecting (Hello) and making
# `calls` admin calls it may not make, every one signed; prints the outcomes it saw.
FLOOD = """
import json, sys
from collections import Counter
from jupyter_syft.client.connection import NodeConnection, close_shared_peers
from jupyter_syft.errors import SyftError
from jupyter_syft.identity import Identity
from jupyter_syft.wire import messages as m

address, identities, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seen = Counter()
for _ in range(identities):
    identity = Identity.generate()
    connection = NodeConnection(address, identity)
    for i in range(calls):
        call = m.AddUser(identity.peer_id, "admin") if i % 2 else m.ListUsers()
        try:
            connection.call(call)
            seen["served"] += 1
        except SyftError as exc:
            seen[type(exc).__name__] += 1
    close_shared_peers()
print(json.dumps(seen))
"""


@pytest.mark.unit
def test_the_limiter_remembers_at_most_max_tracked_peers() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0, max_tracked=3)
    for i in range(10):
        assert limiter.allow(f"peer{i}", now=0.0)
    assert len(limiter) == 3
    assert not limiter.allow("peer9", now=0.0)  # the recent ones keep their state


@pytest.mark.unit
def test_refusals_are_counted_in_one_summary_per_window(tmp_path: Path) -> None:
    """In the store: 5,000 refusals from 1,000 peers are 5 entries for the first peers and
    one summary, with the counts; a peer past the cap is counted, not remembered."""
    store = Store(tmp_path)
    refusals = RefusalLog(store, window_s=3600.0, individual=5, max_peers=500)
    before = len(store.audit_entries(-1))
    for i in range(1000):
        for call in ("AddUser", "AddUser", "ListUsers", "ReadAudit", "AddUser"):
            refusals.refused(f"peer{i}", call, "not_authorised", f"peer{i} is not a user")
    refusals.flush()
    refusals.flush()  # nothing new: nothing written
    entries = store.audit_entries(-1)[before:]
    assert [e.action for e in entries] == ["refused"] * 5 + ["refused_calls"]
    summary = entries[-1]
    assert summary.subject.startswith("refused 5,000 calls from 500+ peers: ")
    assert "AddUser not_authorised x 3,000" in summary.subject
    detail = json.loads(summary.detail)
    assert detail["calls"] == 5000 and detail["from_more_peers"] == 2500
    assert store.check_audit() == ""
    store.close()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DomainProcess, Path]]:
    """A domain that allows 1 call/s per peer after a burst of 6; summaries every second."""
    root = tmp_path_factory.mktemp("limited")
    owner_home, _ = person(root, "owner")
    node = DomainProcess(root, "limited", owner_home)
    node.start("--rate-per-s", "1", "--rate-burst", "6", "--refusal-window", "1")
    yield node, root
    node.kill()


def test_a_peer_over_its_rate_is_refused_and_others_are_served(limited) -> None:
    node, root = limited
    alice = DomainClient(NodeConnection(node.address, person(root, "alice")[1]))  # 1 call
    outcomes = []
    for _ in range(20):  # well past 6 + 1/s even if each call took half a second
        try:
            alice.hello()
            outcomes.append("served")
        except RateLimitedError:
            outcomes.append("limited")
    assert outcomes[:5] == ["served"] * 5 and outcomes[-1] == "limited"
    bob = DomainClient(NodeConnection(node.address, person(root, "bob")[1]))
    assert bob.hello().name == "limited"  # bob has his own allowance
    time.sleep(1.2)  # a token back
    assert alice.hello().name == "limited"


def test_rate_limited_calls_appear_in_the_next_summary(limited) -> None:
    node, root = limited
    carol_identity = person(root, "carol")[1]
    carol = DomainClient(NodeConnection(node.address, carol_identity))
    with pytest.raises(RateLimitedError):
        for _ in range(20):
            carol.hello()
    time.sleep(1.5)  # the window closes and its summary is written
    owner = AdminClient(NodeConnection(node.address, person(root, "owner")[1]))
    summaries = [e for e in owner.audit_log(1000).entries if e.action == "refused_calls"]
    assert any("any call rate_limited" in e.subject for e in summaries)
    assert any(carol_identity.peer_id in e.detail for e in summaries)  # top peers


def test_a_flood_of_refused_calls_from_new_identities_adds_a_few_entries(tmp_path: Path) -> None:
    """200 new identities x 10 signed admin calls each, from 4 processes at once: the audit
    log grows by at most 5 single refusals and one summary; the owner is served throughout."""
    owner_home, owner = person(tmp_path, "owner")
    node = DomainProcess(tmp_path, "flooded", owner_home)
    node.start("--refusal-window", "600")
    try:
        admin = AdminClient(NodeConnection(node.address, owner))
        admin.create_dataset("data", private=DATA, mock=DATA)
        before = len(admin.audit_log(10_000).entries)
        command = [sys.executable, "-c", FLOOD, node.address, "50", "10"]
        floods = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(4)]
        served = 0
        while any(p.poll() is None for p in floods):
            assert admin.datasets["data"].rows == 3  # the node keeps answering its owner
            served += 1
            time.sleep(0.2)
        seen: dict[str, int] = {}
        for flood in floods:
            out, _ = flood.communicate()
            assert flood.returncode == 0
            for kind, n in json.loads(out).items():
                seen[kind] = seen.get(kind, 0) + n
        assert seen == {"NotAuthorisedError": 2000}
        assert served > 0
        assert node.stop() == 0  # the window's summary is written on the way out
        node.start()
        log = AdminClient(NodeConnection(node.address, owner)).audit_log(10_000)
        added = log.entries[before:]
        assert len(log.entries) - before <= 6, [(e.action, e.subject) for e in added]
        assert [e.action for e in added].count("refused") == 5
        [summary] = [e for e in added if e.action == "refused_calls"]
        assert summary.subject.startswith("refused 2,000 calls from 200 peers: ")
        assert "AddUser not_authorised x 1,000" in summary.subject
        assert "ListUsers not_authorised x 1,000" in summary.subject
        assert log.chain_ok
    finally:
        node.kill()
