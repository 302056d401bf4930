"""Who may join a network: the operator's join policy.

- `open`: any domain that asks becomes a member;
- `allowlist`: only the listed peer IDs (others are refused);
- `manual`: a request waits as `pending` until the operator runs `network approve PEERID`.

Under every policy a listed peer joins at once, a member stays a member when it re-joins
(after a restart or a move to a new address), and a removed peer stays out until the operator
approves it again: removal would mean nothing if the domain could simply join again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jupyter_syft.wire import network_messages as nm

POLICIES: tuple[nm.JoinPolicy, ...] = ("open", "allowlist", "manual")


class JoinRefused(Exception):
    """The policy does not let this peer join; the message says why."""


@dataclass(frozen=True)
class Policy:
    mode: nm.JoinPolicy = "open"
    allow: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.mode not in POLICIES:
            raise ValueError(f"join policy must be one of {', '.join(POLICIES)}, not {self.mode!r}")

    def status_on_join(self, peer_id: str, current: str | None) -> nm.MemberStatus:
        """The status a join request from `peer_id` leads to, given its current status."""
        if current == "removed":
            raise JoinRefused("this domain was removed by the network's operator")
        if current == "member" or self.mode == "open" or peer_id in self.allow:
            return "member"
        if self.mode == "allowlist":
            raise JoinRefused("this network only admits the domains on its allowlist")
        return "pending"
