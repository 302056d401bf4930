"""Every message of the network protocol, and the signed records domains publish.

Two kinds of signed things travel here:
- **calls** (`SignedNetworkCall`): one peer asks a network node something, exactly like the
  domain protocol (sender, addressee, time, nonce; see `wire.network_signing`);
- **records** (`SignedRecord`): statements a domain makes about itself, its addresses
  (`AddressRecord`) and its catalogue (`Announcement`). A record carries no addressee, so it
  can be relayed (gossip, the DHT, a peer network) and still be checked by anyone against the
  domain's peer ID; its `seq` only grows, so an old record cannot replace a newer one.

Types are msgspec structs decoded strictly; nothing a peer sends is ever unpickled.
"""

from __future__ import annotations

from typing import Literal

import msgspec

NETWORK_PROTOCOL = "/jupyter-syft/network/1"
ANNOUNCE_TOPIC = "/jupyter-syft/announce/1"
# The DHT namespace of domains' signed address records: key = /jupyter-syft-addr/<peer id>.
ADDRESS_NAMESPACE = "jupyter-syft-addr"

JoinPolicy = Literal["open", "allowlist", "manual"]
MemberStatus = Literal["member", "pending", "removed", "unknown"]
NetworkErrorCode = Literal[
    "bad_message",  # not a well-formed, correctly signed, fresh call or record
    "not_authorised",  # not a member, removed, or not the operator
    "not_found",  # no such member or domain
    "invalid",  # well-formed but refused: oversize metadata, bad name, wrong signer...
    "conflict",  # the state does not allow it (name taken, stale sequence number)
    "rate_limited",  # too many messages from this peer; retry later
    "internal",  # the node failed; the message says how
]


class Struct(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Base of all wire structs: unknown fields are an error, not silently dropped."""


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


class SignedRecord(Struct):
    body: bytes  # msgpack of a Record
    signature: bytes  # over RECORD_CONTEXT + body


# ---- calls (peer -> network node) --------------------------------------------------------


class Hello(Struct, tag="hello"):
    pass


class Join(Struct, tag="join"):
    """A domain asks to join, with its addresses and catalogue (indexed once accepted)."""

    name: str
    address: SignedRecord
    announcement: SignedRecord


class Announce(Struct, tag="announce"):
    announcement: SignedRecord


class Heartbeat(Struct, tag="heartbeat"):
    seq: int  # the sequence number of the domain's latest announcement


class Search(Struct, tag="search"):
    text: str
    limit: int = 20
    include_offline: bool = False
    federated: bool = True  # False: this node's members only (what peer networks send)


class ListDomains(Struct, tag="list_domains"):
    federated: bool = True


class Locate(Struct, tag="locate"):
    """Find a domain by name or peer ID; the answer carries its signed address record."""

    name: str
    federated: bool = True


class Approve(Struct, tag="approve"):
    peer_id: str


class Remove(Struct, tag="remove"):
    peer_id: str


class ListMembers(Struct, tag="list_members"):
    pass


Call = (
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


class NetworkEnvelope(Struct):
    """What the sender signs: the call plus who, to whom, when, and a one-time nonce."""

    sender: str
    node: str
    issued_at: float
    nonce: bytes
    call: Call


class SignedNetworkCall(Struct):
    body: bytes  # msgpack of a NetworkEnvelope
    signature: bytes  # over CALL_CONTEXT + body


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


class Done(Struct, tag="done"):
    pass


class Error(Struct, tag="error"):
    code: NetworkErrorCode
    message: str


Reply = (
    NetworkInfo | Membership | SearchResults | DomainList | LocateResult | MemberList | Done | Error
)

_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(NetworkEnvelope)
_signed_call_decoder = msgspec.msgpack.Decoder(SignedNetworkCall)
_record_decoder = msgspec.msgpack.Decoder(Record)
_signed_record_decoder = msgspec.msgpack.Decoder(SignedRecord)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def decode_signed_call(frame: bytes) -> SignedNetworkCall:
    return _signed_call_decoder.decode(frame)


def decode_envelope(body: bytes) -> NetworkEnvelope:
    return _envelope_decoder.decode(body)


def decode_record(body: bytes) -> Record:
    return _record_decoder.decode(body)


def decode_signed_record(data: bytes) -> SignedRecord:
    return _signed_record_decoder.decode(data)


def decode_reply(frame: bytes) -> Reply:
    return _reply_decoder.decode(frame)
