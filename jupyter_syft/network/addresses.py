"""Domains' signed address records in the DHT: how a scientist finds where to dial.

The key is `/jupyter-syft-addr/<peer id>` and the value a `SignedRecord` holding an
`AddressRecord` signed by that peer. The validator runs on every store and lookup, in every
network node of a federation: a record for one peer ID signed by another key (an impostor
redirecting scientists), an oversize or malformed record, or addresses of another peer are
refused; of several valid records the one with the highest sequence number wins, so a replayed
old record cannot replace the current one.
"""

from __future__ import annotations

import msgspec
from libp2p.records.validator import Validator

from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_limits import MetadataError, open_address
from jupyter_syft.wire.rpc import BadMessage

MAX_RECORD_BYTES = 4096


def address_key(peer_id: str) -> str:
    return f"/{nm.ADDRESS_NAMESPACE}/{peer_id}"


class AddressValidator(Validator):
    """libp2p DHT validator for the address namespace."""

    def validate(self, key: str, value: bytes) -> None:
        if len(value) > MAX_RECORD_BYTES:
            raise ValueError(f"address record of {len(value)} bytes is over {MAX_RECORD_BYTES}")
        try:
            record = open_address(nm.decode_signed_record(value))
        except (msgspec.DecodeError, BadMessage, MetadataError) as exc:
            raise ValueError(f"invalid address record: {exc}") from exc
        if key != address_key(record.peer_id):
            raise ValueError("address record stored under another peer's key")

    def select(self, key: str, values: list[bytes]) -> int:
        """Index of the newest valid record (an invalid one never wins)."""
        best, best_seq = 0, -1
        for index, value in enumerate(values):
            try:
                self.validate(key, value)
            except ValueError:
                continue
            seq = open_address(nm.decode_signed_record(value)).seq
            if seq > best_seq:
                best, best_seq = index, seq
        return best
