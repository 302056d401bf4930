"""Audit receipts: a node's signed word on one entry of its audit log, kept by the people the
entry is about, so a log rewritten afterwards is caught without trusting the store.

A receipt names the node, the entry's number and MAC (`hash`, the audit chain's link), and
the request and action the entry records. The chain head a node signs in its `ReadAudit`
reply is a receipt with no request. Whoever keeps receipts can prove that the log once held
these entries: `jupyter-syft domain verify-audit` (jupyter_syft.domain.audit) checks a log
against them. Clients keep them one per line (JSON with the node's signature) in
`receipts.jsonl` under the user's jupyter-syft folder.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterable
from pathlib import Path

import msgspec

from jupyter_syft.identity import Identity, syft_home
from jupyter_syft.wire.rpc import BadMessage, Signed, Struct, encode, sign, verifies

RECEIPT_CONTEXT = b"jupyter-syft/audit-receipt/1\n"
RECEIPTS_FILE = "receipts.jsonl"


class AuditReceipt(Struct, tag="audit_receipt"):
    node: str  # the signing node's peer id
    seq: int
    hash: str  # the entry's MAC as the chain holds it
    action: str
    at: float  # when the entry was written
    request_id: str = ""  # "" for a signed chain head

    def describe(self) -> str:
        what = f"{self.action} of request {self.request_id}" if self.request_id else "chain head"
        return f"receipt for {what} (entry {self.seq}, {self.hash[:16]})"


_decoder = msgspec.msgpack.Decoder(AuditReceipt)


def sign_receipt(identity: Identity, receipt: AuditReceipt) -> Signed:
    return sign(identity, RECEIPT_CONTEXT, encode(receipt))


def open_receipt(signed: Signed, node: str) -> AuditReceipt:
    """The receipt, if `node` signed it about itself; BadMessage otherwise."""
    try:
        receipt = _decoder.decode(signed.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not an audit receipt: {exc}") from exc
    if receipt.node != node or not verifies(signed, RECEIPT_CONTEXT, node):
        raise BadMessage(f"{receipt.describe()} is not signed by node {node}")
    return receipt


def default_receipts_file() -> Path:
    return syft_home() / RECEIPTS_FILE


def _line(signed: Signed) -> str:
    receipt = _decoder.decode(signed.body)
    fields = msgspec.to_builtins(receipt)
    return json.dumps({**fields, "signature": base64.b64encode(signed.signature).decode()})


def read_receipts(path: Path) -> list[Signed]:
    """Every receipt in a receipts file, as signed (checked by whoever uses them)."""
    found = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            signature = base64.b64decode(fields.pop("signature"))
            receipt = msgspec.convert(fields, AuditReceipt)
        except (ValueError, KeyError, TypeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{path}, line {number}: not a receipt: {exc}") from exc
        found.append(Signed(encode(receipt), signature))
    return found


class ReceiptFile:
    """Appends receipts to one file, each (node, entry) once; shared by a process's clients."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._kept: set[tuple[str, int]] | None = None  # read from the file on first use

    def keep(self, signed: Iterable[Signed]) -> None:
        """Append the receipts this file lacks (already checked by the caller)."""
        with self._lock:
            if self._kept is None:
                old = read_receipts(self.path) if self.path.exists() else []
                self._kept = {_key(s) for s in old}
            lines = []
            for item in signed:
                if _key(item) not in self._kept:
                    self._kept.add(_key(item))
                    lines.append(_line(item) + "\n")
            if lines:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as f:  # O_APPEND: lines of processes do not mix
                    f.write("".join(lines))


_files: dict[Path, ReceiptFile] = {}
_files_lock = threading.Lock()


def receipt_file(path: Path) -> ReceiptFile:
    """The one `ReceiptFile` of this process for `path`."""
    with _files_lock:
        return _files.setdefault(path, ReceiptFile(path))


def _key(signed: Signed) -> tuple[str, int]:
    receipt = _decoder.decode(signed.body)
    return receipt.node, receipt.seq
