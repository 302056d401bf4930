"""A network node's settings: defaults, then the operator's TOML file, then command-line flags.

The file uses the same names as the `NetworkConfig` fields (see `network/network.example.toml`);
an unknown key is an error, so a typo does not silently leave a default in force.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from jupyter_syft.identity import IdentityError, public_key_of
from jupyter_syft.network.membership import POLICIES, Policy
from jupyter_syft.wire import network_messages as nm


class ConfigError(Exception):
    """The config file or flags are wrong; the message names the setting."""


@dataclass
class NetworkConfig:
    name: str
    data_dir: Path
    listen: str = "/ip4/127.0.0.1/tcp/0"
    join_policy: nm.JoinPolicy = "open"
    allow: list[str] = field(default_factory=list)  # peer IDs admitted under any policy
    peers: list[str] = field(default_factory=list)  # multiaddrs of federated network nodes
    offline_after_s: float = 30.0  # a member silent this long drops out of search
    peer_timeout_s: float = 2.0  # how long a federated search waits for a peer network
    peer_check_s: float = 5.0  # how often unreachable peer networks are dialled again
    rate_per_s: float = 20.0  # calls per second per peer (peer networks are exempt)
    rate_burst: float = 40.0
    announce_per_s: float = 1.0  # announcements per second per domain
    announce_burst: float = 10.0
    max_connections: int = 10_000  # one per member and connected scientist; mind `ulimit -n`
    drop_gossip: float = 0.0  # fault injection for tests: share of gossip to ignore

    @property
    def policy(self) -> Policy:
        return Policy(self.join_policy, frozenset(self.allow))


_NUMBERS = {f.name for f in fields(NetworkConfig) if f.type == "float"}
_LISTS = {"allow", "peers"}


def load_config(path: Path | None, overrides: dict[str, Any]) -> NetworkConfig:
    """Settings from the TOML file at `path` (if any), then the non-None `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(NetworkConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    for key in ("name", "data_dir"):
        if not values.get(key):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{key} is required (in the config file or as {flag})")
    for key in _NUMBERS & set(values):
        if not isinstance(values[key], int | float) or values[key] < 0:
            raise ConfigError(f"{key} must be a non-negative number, not {values[key]!r}")
    connections = values.get("max_connections", 1)
    if not isinstance(connections, int) or connections < 1:
        raise ConfigError(f"max_connections must be a positive integer, not {connections!r}")
    for key in _LISTS & set(values):
        if not isinstance(values[key], list) or not all(isinstance(v, str) for v in values[key]):
            raise ConfigError(f"{key} must be a list of strings")
    if values.get("join_policy", "open") not in POLICIES:
        raise ConfigError(f"join_policy must be one of {', '.join(POLICIES)}")
    for peer in values.get("peers", []):
        _check_peer(peer)
    values["data_dir"] = Path(values["data_dir"])
    return NetworkConfig(**values)


def _check_peer(multiaddr: str) -> None:
    """A peer network is named by its full multiaddr: the `/p2p/<peer id>` part pins its key."""
    parts = multiaddr.rstrip("/").split("/")
    try:
        if len(parts) < 3 or parts[-2] != "p2p":
            raise IdentityError("no /p2p/ part")
        public_key_of(parts[-1])
    except IdentityError as exc:
        raise ConfigError(f"peer {multiaddr!r} must end in /p2p/<peer id>: {exc}") from exc
