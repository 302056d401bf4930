"""Every message of the network protocol, and the signed records domains publish.

Two kinds of signed things travel here:
- **calls** (`NETWORK`): one peer asks a network node something, exactly like the domain
  protocol (sender, addressee, time, nonce; see `wire.rpc`);
- **records** (`SignedRecord`, `sign_record`, `open_record`): statements a domain makes
  about itself, its addresses (`AddressRecord`) and its catalogue (`Announcement`). A record
  carries no addressee, so it can be relayed (gossip, the DHT, a peer network) and still be
  checked by anyone against the domain's peer ID; its `seq` only grows, so an old record
  cannot replace a newer one.

Types are msgspec structs decoded strictly; nothing a peer sends is ever unpickled.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import msgspec

from jupyter_syft.identity import Identity
from jupyter_syft.wire.rpc import (
    BadMessage,
    Call,
    Done,
    Error,
    Protocol,
    Signed,
    Struct,
    encode,
    sign,
    verifies,
)

__all__ = ["Call", "Done", "Error", "Struct", "encode"]

NETWORK_PROTOCOL = "/jupyter-syft/network/1"
CALL_CONTEXT = b"jupyter-syft/network-call/2\n"
RECORD_CONTEXT = b"jupyter-syft/record/2\n"
ANNOUNCE_TOPIC = "/jupyter-syft/announce/1"
# The DHT namespace of domains' signed address records: key = /jupyter-syft-addr/<peer id>.
ADDRESS_NAMESPACE = "jupyter-syft-addr"

JoinPolicy = Literal["open", "allowlist", "manual"]
MemberStatus = Literal["member", "pending", "removed", "unknown"]


# ---- records a domain signs about itself -------------------------------------------------


class DatasetMeta(Struct):
    """What a network learns about one dataset: metadata only, never data or mocks."""

    name: str
    description: str
    kind: str  # "table" or "tensor"
    tags: list[str]
    schema: dict[str, str]
    rows: int
    mock_rows: int  # > 0: a mock exists


class Announcement(Struct, tag="announcement"):
    peer_id: str  # the domain; must be the record's signer
    name: str
    seq: int  # grows with every new announcement from this domain
    issued_at: float
    datasets: list[DatasetMeta]


class AddressRecord(Struct, tag="address_record"):
    peer_id: str
    seq: int
    issued_at: float
    addrs: list[str]  # full multiaddrs ending in /p2p/<peer_id>


Record = Announcement | AddressRecord


# A Record's msgpack, signed by the peer it describes over RECORD_CONTEXT.
SignedRecord = Signed


# ---- calls (peer -> network node) --------------------------------------------------------


class Hello(Call["NetworkInfo"], tag="hello"):
    pass


class Join(Call["Membership"], tag="join"):
    """A domain asks to join, with its addresses and catalogue (indexed once accepted)."""

    name: str
    address: SignedRecord
    announcement: SignedRecord


class Announce(Call["Membership"], tag="announce"):
    announcement: SignedRecord


class Heartbeat(Call["Membership"], tag="heartbeat"):
    seq: int  # the sequence number of the domain's latest announcement


class Search(Call["SearchResults"], tag="search"):
    text: str
    limit: int = 20
    include_offline: bool = False
    federated: bool = True  # False: this node's members only (what peer networks send)


class ListDomains(Call["DomainList"], tag="list_domains"):
    federated: bool = True


class Locate(Call["LocateResult"], tag="locate"):
    """Find a domain by name or peer ID; the answer carries its signed address record."""

    name: str
    federated: bool = True


class Approve(Call["Done"], tag="approve"):
    peer_id: str


class Remove(Call["Done"], tag="remove"):
    peer_id: str


class ListMembers(Call["MemberList"], tag="list_members"):
    pass


Calls = (
    Hello
    | Join
    | Announce
    | Heartbeat
    | Search
    | ListDomains
    | Locate
    | Approve
    | Remove
    | ListMembers
)


# ---- replies (network node -> peer) ------------------------------------------------------


class NetworkInfo(Struct, tag="network_info"):
    name: str
    peer_id: str
    join_policy: str
    your_status: str  # member, pending, removed, unknown; "operator" for its admin
    peers: list[str]  # the peer networks it federates with (multiaddrs)


class Membership(Struct, tag="membership"):
    """The answer to a join or a heartbeat: where the domain stands, what the node holds."""

    status: MemberStatus
    have_seq: int  # sequence number of the announcement the node holds (0: none)


class Hit(Struct):
    domain: str
    domain_peer_id: str
    dataset: str
    description: str
    kind: str
    tags: list[str]
    schema: dict[str, str]
    rows: int
    mock_rows: int
    online: bool
    last_seen: float
    score: float  # higher is better; comparable across federated networks only roughly


class SearchResults(Struct, tag="search_results"):
    hits: list[Hit]
    unreachable: list[str]  # peer networks that did not answer in time


class DomainEntry(Struct):
    name: str
    peer_id: str
    online: bool
    dataset_count: int
    last_seen: float


class DomainList(Struct, tag="domain_list"):
    domains: list[DomainEntry]
    unreachable: list[str]


class Located(Struct):
    name: str
    peer_id: str
    online: bool
    address: SignedRecord | None  # None when no address record was found in the DHT


class LocateResult(Struct, tag="locate_result"):
    found: list[Located]


class MemberInfo(Struct):
    peer_id: str
    name: str
    status: str
    joined_at: float
    last_seen: float
    dataset_count: int


class MemberList(Struct, tag="member_list"):
    members: list[MemberInfo]


Replies = NetworkInfo | Membership | SearchResults | DomainList | LocateResult | MemberList | Done

NETWORK = Protocol(NETWORK_PROTOCOL, CALL_CONTEXT, Calls, Replies)

_record_decoder = msgspec.msgpack.Decoder(Record)
_signed_record_decoder = msgspec.msgpack.Decoder(SignedRecord)

R = TypeVar("R", Announcement, AddressRecord)


def sign_record(identity: Identity, record: Record) -> SignedRecord:
    if record.peer_id != identity.peer_id:
        raise ValueError("a record is signed by the peer it describes")
    return sign(identity, RECORD_CONTEXT, msgspec.msgpack.encode(record))


def decode_signed_record(data: bytes) -> SignedRecord:
    try:
        return _signed_record_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a signed record: {exc}") from exc


def open_record(signed: SignedRecord, kind: type[R]) -> R:
    """The record of type `kind` inside `signed`, if its own peer ID signed it."""
    try:
        record = _record_decoder.decode(signed.body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a record: {exc}") from exc
    if not isinstance(record, kind):
        raise BadMessage(f"expected a {kind.__name__}, got a {type(record).__name__}")
    if not verifies(signed, RECORD_CONTEXT, record.peer_id):
        raise BadMessage(f"{kind.__name__} is not signed by {record.peer_id} (forged)")
    return record


def decode_record(body: bytes) -> Record:
    """The record in `body`, unverified (for what is already checked or only routed)."""
    try:
        return _record_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadMessage(f"not a record: {exc}") from exc
