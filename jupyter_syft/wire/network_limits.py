"""How much a domain may tell a network, checked before anything is stored.

A network node indexes what strangers send it, so every field has a cap: without them one
member could fill the operator's disk, bloat every search reply, or slow the index for all
(oversized-metadata attack). The domain side trims its catalogue to fit (`fit_dataset`), so
an honest domain is never refused for a long description.
"""

from __future__ import annotations

import re

from multiaddr import Multiaddr

from jupyter_syft.wire import network_messages as nm
from jupyter_syft.wire.network_messages import open_record
from jupyter_syft.wire.rpc import Refused

MAX_FRAME_BYTES = 512 * 1024  # a network-protocol frame; larger ones are refused unread
MAX_DATASETS = 500
MAX_DESCRIPTION = 2000
MAX_TAGS = 16
MAX_TAG = 32
MAX_COLUMNS = 256
MAX_COLUMN_NAME = 128
MAX_TYPE_NAME = 128
MAX_ADDRS = 8
MAX_ADDR = 256
MAX_QUERY = 256
MAX_SEARCH_LIMIT = 200

NAME = re.compile(r"\w[\w .-]{0,63}")
_TAG = re.compile(r"[\w.-]{1,32}")


class MetadataError(Refused):
    """A record or call exceeds a cap or is malformed; the message says which field."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid", message)


def check_name(what: str, name: str) -> None:
    if not NAME.fullmatch(name):
        raise MetadataError(f"{what} {name[:80]!r}: use 1-64 letters, digits, ' ', '_', '.', '-'")


def check_announcement(announcement: nm.Announcement) -> None:
    check_name("domain name", announcement.name)
    if len(announcement.datasets) > MAX_DATASETS:
        raise MetadataError(f"{len(announcement.datasets)} datasets: at most {MAX_DATASETS}")
    names = set()
    for dataset in announcement.datasets:
        check_name("dataset name", dataset.name)
        if dataset.name in names:
            raise MetadataError(f"dataset {dataset.name!r} is announced twice")
        names.add(dataset.name)
        if len(dataset.description) > MAX_DESCRIPTION:
            raise MetadataError(
                f"description of {dataset.name!r} has {len(dataset.description)} characters:"
                f" at most {MAX_DESCRIPTION}"
            )
        if len(dataset.tags) > MAX_TAGS or not all(_TAG.fullmatch(t) for t in dataset.tags):
            raise MetadataError(
                f"tags of {dataset.name!r}: at most {MAX_TAGS} words of {MAX_TAG} characters"
            )
        if len(dataset.schema) > MAX_COLUMNS:
            raise MetadataError(f"schema of {dataset.name!r}: at most {MAX_COLUMNS} columns")
        for column, type_name in dataset.schema.items():
            if len(column) > MAX_COLUMN_NAME or len(type_name) > MAX_TYPE_NAME:
                raise MetadataError(f"schema of {dataset.name!r}: a name or type is too long")
        if dataset.rows < 0 or dataset.mock_rows < 0:
            raise MetadataError(f"row counts of {dataset.name!r} must not be negative")


def check_address_record(record: nm.AddressRecord) -> None:
    """Addresses must be full multiaddrs of the record's own peer (no pointing elsewhere)."""
    if not 0 < len(record.addrs) <= MAX_ADDRS:
        raise MetadataError(f"an address record holds 1 to {MAX_ADDRS} addresses")
    suffix = f"/p2p/{record.peer_id}"
    for addr in record.addrs:
        if len(addr) > MAX_ADDR or not addr.endswith(suffix):
            raise MetadataError(f"address {addr[:80]!r} is not a multiaddr of {record.peer_id}")
        try:
            Multiaddr(addr)
        except Exception as exc:  # multiaddr raises several types
            raise MetadataError(f"address {addr[:80]!r} is not a multiaddr: {exc}") from exc


def fit_dataset(dataset: nm.DatasetMeta) -> nm.DatasetMeta:
    """The same metadata trimmed to the caps (what an honest domain announces)."""
    description = dataset.description
    if len(description) > MAX_DESCRIPTION:
        description = description[: MAX_DESCRIPTION - 1] + "…"
    schema = dict(list(dataset.schema.items())[:MAX_COLUMNS])
    schema = {k[:MAX_COLUMN_NAME]: v[:MAX_TYPE_NAME] for k, v in schema.items()}
    tags = [t[:MAX_TAG] for t in dataset.tags if _TAG.fullmatch(t[:MAX_TAG])][:MAX_TAGS]
    return nm.DatasetMeta(
        dataset.name, description, dataset.kind, tags, schema, dataset.rows, dataset.mock_rows
    )


def open_address(signed: nm.SignedRecord) -> nm.AddressRecord:
    """The verified address record, or raise BadMessage / MetadataError."""
    record = open_record(signed, nm.AddressRecord)
    check_address_record(record)
    return record
