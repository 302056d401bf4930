"""What makes the audit log hold up: receipts, a bound on refused calls, and the check.

Receipts (jupyter_syft.wire.receipts): every reply about one request carries the node's
signed receipts for the audit entries about it, and `ReadAudit` carries a signed chain head,
so scientists and the owner hold, outside the store, the node's word on what the log said.
`verify_audit` checks a data dir against them: a receipt whose entry is gone or different
names the rewrite, including the newest entries dropped, which the keyed chain alone cannot
see (store.py's threat model).

Refused calls (a stranger calling an admin call, rate-limited floods) are counted in memory by
(peer, call, code) and written as one `refused_calls` entry per window, after at most
`individual` entries for the first refusal of a new peer in that window: a flood from any
number of identities adds a bounded number of entries, and the counts stay bounded in memory.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

from jupyter_syft.domain.store import Store
from jupyter_syft.wire import messages as m
from jupyter_syft.wire.receipts import AuditReceipt, open_receipt, read_receipts, sign_receipt
from jupyter_syft.wire.rpc import BadMessage, Signed

REFUSAL_WINDOW_S = 60.0
INDIVIDUAL_REFUSALS = 5  # per window: the first refusal of that many new peers, one by one
MAX_REFUSING_PEERS = 10_000  # peers counted apart per window; the rest in one sum
TOP_PEERS = 10


class Receipts:
    """Signs receipts for audit entries with the node's key (the one its peer id is)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _sign(self, entry: m.AuditEntry, request_id: str) -> Signed:
        receipt = AuditReceipt(
            self.store.identity.peer_id, entry.seq, entry.hash, entry.action, entry.at, request_id
        )
        return sign_receipt(self.store.identity, receipt)

    def attach(self, info: m.RequestInfo) -> m.RequestInfo:
        """`info` with a receipt for each audit entry about its request."""
        entries = self.store.audit_about(info.request_id)
        receipts = [self._sign(entry, info.request_id) for entry in entries]
        return msgspec.structs.replace(info, receipts=receipts)

    def head(self) -> Signed | None:
        newest = self.store.audit_entries(1)
        return self._sign(newest[0], "") if newest else None


class RefusalLog:
    """Counts refused calls and audits them as one summary per window (see the module doc)."""

    def __init__(
        self,
        store: Store,
        window_s: float = REFUSAL_WINDOW_S,
        individual: int = INDIVIDUAL_REFUSALS,
        max_peers: int = MAX_REFUSING_PEERS,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.individual = individual
        self.max_peers = max_peers
        self._start()

    def _start(self) -> None:
        self._ends = time.monotonic() + self.window_s
        self._calls: Counter[str] = Counter()  # "Call code" -> refusals
        self._peers: Counter[str] = Counter()  # peer -> refusals, for `max_peers` peers
        self._other_peers = 0  # refusals from peers past `max_peers`
        self._logged = 0

    def refused(self, peer: str, call: str, code: str, message: str = "") -> None:
        """Count one refusal; with a `message`, a new peer's first one is also written alone
        (for the first `individual` new peers of the window)."""
        if time.monotonic() >= self._ends:
            self.flush()
        self._calls[f"{call} {code}"] += 1
        new = peer not in self._peers
        if new and len(self._peers) >= self.max_peers:
            self._other_peers += 1
            return
        self._peers[peer] += 1
        if new and message and self._logged < self.individual:
            self._logged += 1
            self.store.audit(peer, "refused", call, message)

    def flush(self) -> None:
        """Write this window's summary (if anything was refused) and start the next window."""
        calls, peers, others = self._calls, self._peers, self._other_peers
        self._start()
        total = sum(calls.values())
        if not total:
            return
        listed = ", ".join(f"{what} x {n:,}" for what, n in calls.most_common())
        count = f"{len(peers):,}{'+' if others else ''}"
        detail = {
            "window_s": self.window_s,
            "calls": total,
            "peers": len(peers),
            "by_call": dict(calls.most_common()),
            "top_peers": peers.most_common(TOP_PEERS),
            "from_more_peers": others,
        }
        subject = f"refused {total:,} calls from {count} peers: {listed}"
        self.store.audit("node", "refused_calls", subject, json.dumps(detail))

    async def run(self) -> None:
        """Flush every window, so a flood's summary is written even if nothing follows it."""
        while True:
            await trio.sleep(max(0.0, self._ends - time.monotonic()))
            if time.monotonic() >= self._ends:
                self.flush()


@dataclass
class AuditCheck:
    """What `verify_audit` found: `problems` is empty when the log holds up."""

    node: str
    entries: int
    receipts: int = 0  # receipts of this node checked
    other_nodes: int = 0  # receipts signed by other nodes, not about this log
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_audit(store: Store, receipts: list[Signed]) -> AuditCheck:
    """Check the store's audit log against receipts: each receipt of this node must name an
    entry that exists with the same hash, action and request, and the keyed chain must verify
    (hence up to the newest receipt or signed head). Each problem names its receipt."""
    node = store.identity.peer_id
    entries = {e.seq: e for e in store.audit_entries(-1)}
    last = max(entries, default=0)
    check = AuditCheck(node, len(entries))
    for signed in receipts:
        try:
            receipt = open_receipt(signed, node)
        except BadMessage as exc:
            if _signer(signed) != node:
                check.other_nodes += 1
            else:
                check.problems.append(f"{exc}: forged")
            continue
        check.receipts += 1
        entry = entries.get(receipt.seq)
        if entry is None:
            gone = "newest entries dropped" if receipt.seq > last else "deleted"
            check.problems.append(
                f"{receipt.describe()}: entry {receipt.seq} is missing from the log "
                f"(it ends at entry {last}; {gone})"
            )
        elif (entry.hash, entry.action) != (receipt.hash, receipt.action) or (
            receipt.request_id and entry.subject != receipt.request_id
        ):
            check.problems.append(
                f"{receipt.describe()}: entry {receipt.seq} is now {entry.action} "
                f"{entry.subject} with hash {entry.hash[:16]}: the log was rewritten"
            )
    problem = store.check_audit()
    if problem:
        check.problems.append(f"the chain: {problem}")
    return check


def verify_audit_dir(data_dir: Path, receipt_files: list[Path]) -> AuditCheck:
    """`verify_audit` on a stopped node's data dir, against receipts files (owner's API)."""
    receipts = [r for path in receipt_files for r in read_receipts(path)]
    store = Store(data_dir)
    try:
        return verify_audit(store, receipts)
    finally:
        store.close()


def _signer(signed: Signed) -> str:
    try:
        return msgspec.msgpack.decode(signed.body, type=AuditReceipt).node
    except msgspec.DecodeError:
        return ""
