"""`jupyter-syft network start | approve | members | remove`: the operator's commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from jupyter_syft.foreground import run_until_signalled
from jupyter_syft.network.membership import POLICIES
from jupyter_syft.words import counted


def add_network_commands(commands: argparse._SubParsersAction) -> None:
    network = commands.add_parser("network", help="run or manage a network node (operators)")
    sub = network.add_subparsers(dest="network_command", required=True)

    start = sub.add_parser("start", help="serve a network node in the foreground")
    start.add_argument("--config", type=Path, help="TOML settings file (flags override it)")
    start.add_argument("--name", help="the network's name")
    start.add_argument("--data-dir", type=Path, help="where its identity and index live")
    start.add_argument("--listen", help="libp2p multiaddr (default /ip4/127.0.0.1/tcp/0)")
    start.add_argument("--join-policy", choices=POLICIES, help="open, allowlist or manual")
    start.add_argument(
        "--allow", action="append", metavar="PEERID", help="admit this domain (repeatable)"
    )
    start.add_argument(
        "--peer",
        action="append",
        dest="peers",
        metavar="MULTIADDR",
        help="federate with this network node (repeatable)",
    )
    start.add_argument(
        "--offline-after",
        type=float,
        dest="offline_after_s",
        metavar="S",
        help="seconds without a heartbeat before a domain drops out of search (default 30)",
    )
    start.add_argument("--drop-gossip", type=float, help=argparse.SUPPRESS)  # fault injection

    for command, text in (
        ("approve", "admit a pending (or removed) domain"),
        ("remove", "remove a member domain (it cannot join again until approved)"),
        ("members", "list members and join requests"),
    ):
        parser = sub.add_parser(command, help=text)
        if command != "members":
            parser.add_argument("peer_id", metavar="PEERID")
        where = parser.add_mutually_exclusive_group(required=True)
        where.add_argument("--data-dir", type=Path, help="the running node's data dir")
        where.add_argument("--node", metavar="MULTIADDR", help="the node's multiaddr")


def run_network_command(args: argparse.Namespace) -> int:
    if args.network_command == "start":
        return _start(args)
    return _manage(args)


def _start(args: argparse.Namespace) -> int:
    from jupyter_syft.identity import IdentityError, user_identity
    from jupyter_syft.network.config import ConfigError, load_config
    from jupyter_syft.network.node import run_network
    from jupyter_syft.p2p import P2PError

    overrides = {
        key: getattr(args, key)
        for key in (
            "name",
            "data_dir",
            "listen",
            "join_policy",
            "allow",
            "peers",
            "offline_after_s",
            "drop_gossip",
        )
    }
    try:
        config = load_config(args.config, overrides)
        operator = user_identity()
    except (ConfigError, IdentityError) as exc:
        print(f"jupyter-syft: {exc}", file=sys.stderr)
        return 2

    return run_until_signalled(
        run_network, config, operator, what="network node", expected=(P2PError, OSError)
    )


def _manage(args: argparse.Namespace) -> int:
    from jupyter_syft.client.network import NetworkClient, NetworkConnection
    from jupyter_syft.errors import SyftError
    from jupyter_syft.p2p import P2PError
    from jupyter_syft.wire.node_info import read_node_info

    try:
        address = args.node or read_node_info(args.data_dir, "network")["multiaddr"]
        network = NetworkClient(NetworkConnection(address))
        if args.network_command == "approve":
            network.approve(args.peer_id)
            print(f"approved {args.peer_id}")
        elif args.network_command == "remove":
            network.remove(args.peer_id)
            print(f"removed {args.peer_id}")
        else:
            now = time.time()
            for member in network.members():
                datasets = counted(member.dataset_count, "dataset")
                print(
                    f"{member.peer_id}  {member.status:8}  {member.name:24}  "
                    f"{datasets:>14}  seen {now - member.last_seen:7.1f} s ago"
                )
    except (SyftError, P2PError, FileNotFoundError) as exc:
        print(f"jupyter-syft: {exc}", file=sys.stderr)
        return 1
    return 0
