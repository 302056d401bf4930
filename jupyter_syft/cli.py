"""The `jupyter-syft` command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jupyter_syft.foreground import run_until_signalled
from jupyter_syft.network.cli import add_network_commands, run_network_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jupyter-syft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("whoami", help="print this user's peer ID (created on first use)")

    domain = commands.add_parser("domain", help="run a data owner's domain node")
    domain_commands = domain.add_subparsers(dest="domain_command", required=True)
    start = domain_commands.add_parser("start", help="serve a domain in the foreground")
    start.add_argument("--name", required=True, help="the domain's name, e.g. hospital-a")
    start.add_argument("--data-dir", required=True, type=Path, help="where its state lives")
    start.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0", help="libp2p multiaddr")
    start.add_argument("--workers", type=int, default=2, help="jobs run at once")
    start.add_argument("--job-timeout", type=float, default=60.0, help="seconds per job")
    start.add_argument("--job-memory-mb", type=int, default=4096, help="memory per job")
    start.add_argument("--max-result-mb", type=int, default=2048, help="largest result")
    start.add_argument("--network", metavar="MULTIADDR", help="join this network node")
    start.add_argument("--heartbeat", type=float, default=10.0, help="seconds between heartbeats")
    start.add_argument(
        "--sandbox",
        choices=["on", "off"],
        default="on",
        help="confine every job (default); off runs them unconfined, with a loud warning",
    )
    start.add_argument(
        "--executor",
        default="local",
        metavar="NAME",
        help="what runs approved jobs: local (default: sandboxed processes on this machine) "
        "or ray (Ray tasks on a cluster: needs --ray-address)",
    )
    start.add_argument(
        "--ray-address",
        default="",
        metavar="HOST:PORT|local",
        help="with --executor ray: the Ray cluster to run jobs on (this machine must be one of "
        "its nodes, and every node must see the data dir at the same path), or 'local' to "
        "start a Ray head of the node's own, stopped with it",
    )
    start.add_argument(
        "--package-index",
        default=None,
        metavar="URL|DIR",
        help="where requests' declared requirements come from: an index URL (default PyPI) "
        "or a folder of wheels (then no index is asked)",
    )
    start.add_argument(
        "--storage",
        default="",
        metavar="URI",
        help="store new table datasets as partitioned Parquet here: a folder (or file:// or "
        "s3:// URI) the cluster shares (default: the data dir, as Arrow files)",
    )
    start.add_argument(
        "--rate-per-s", type=float, default=100.0, help="calls per second per peer (sustained)"
    )
    start.add_argument("--rate-burst", type=float, default=200.0, help="calls per peer at once")
    start.add_argument(
        "--rate-peers", type=int, default=100_000, help="peers the rate limit remembers at most"
    )
    start.add_argument(
        "--refusal-window",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="refused calls are audited as one summary entry per window",
    )
    verify = domain_commands.add_parser(
        "verify-audit",
        help="check a stopped domain's audit log against receipts its users kept",
    )
    verify.add_argument("--data-dir", required=True, type=Path, help="the domain's data dir")
    verify.add_argument(
        "--receipts",
        action="append",
        type=Path,
        metavar="FILE",
        help="a receipts file (repeatable; default: yours, ~/.jupyter-syft/receipts.jsonl)",
    )
    rekey = domain_commands.add_parser(
        "rekey-audit",
        help="key the audit chain of a store from before keyed auditing (node stopped, once)",
    )
    rekey.add_argument("--data-dir", required=True, type=Path, help="the domain's data dir")

    add_network_commands(commands)

    demo = commands.add_parser("demo", help="three domains with real data, both roles, end to end")
    demo.add_argument("--dir", type=Path, default=Path("demo-data"), help="demo state folder")
    demo.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the network and domains up until Ctrl-C (writes DIR/demo.json)",
    )
    demo.add_argument(
        "--lab",
        action="store_true",
        help="keep them running and open JupyterLab with both sides' notebooks and the sidebar",
    )
    demo.add_argument("--no-browser", action="store_true", help="with --lab: only print the URL")
    demo.add_argument(
        "--reset",
        action="store_true",
        help="with --lab: replace your notebooks in DIR/notebooks with the shipped ones "
        "(by default they are kept, with your edits)",
    )

    args = parser.parse_args(argv)
    if args.command == "whoami":
        from jupyter_syft.identity import whoami

        print(whoami())
        return 0
    if args.command == "domain" and args.domain_command == "rekey-audit":
        return _rekey_audit(args.data_dir)
    if args.command == "domain" and args.domain_command == "verify-audit":
        return _verify_audit(args.data_dir, args.receipts)
    if args.command == "domain":
        return _domain_start(args)
    if args.command == "network":
        return run_network_command(args)
    if args.lab:
        from jupyter_syft.lab_demo import run_lab_demo

        return run_lab_demo(args.dir, open_browser=not args.no_browser, reset=args.reset)
    if args.reset:
        parser.error("--reset goes with --lab: it resets the notebooks JupyterLab opens")
    from jupyter_syft.demo import run_demo

    code = run_demo(args.dir, keep_running=args.keep_running)
    # Its nodes are stopped and its files written: exit without the interpreter's teardown of
    # torch, pandas and the rest, seconds of garbage collection on a busy machine (after
    # Ctrl-C, the user waits for it).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _rekey_audit(data_dir: Path) -> int:
    from jupyter_syft.domain.store import Store, StoreError
    from jupyter_syft.identity import whoami

    if not (data_dir / "domain.sqlite").exists():
        print(f"jupyter-syft: no domain store in {data_dir}", file=sys.stderr)
        return 2
    if (data_dir / "node.json").exists():
        print("jupyter-syft: stop the domain node first", file=sys.stderr)
        return 2
    store = Store(data_dir)
    try:
        covered = store.rekey_audit(whoami())
    except StoreError as exc:
        print(f"jupyter-syft: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"audit chain keyed: {covered} older entries covered by one audit_rekeyed entry")
    return 0


def _verify_audit(data_dir: Path, receipt_files: list[Path] | None) -> int:
    from jupyter_syft.domain.audit import verify_audit_dir
    from jupyter_syft.wire.receipts import default_receipts_file

    if not (data_dir / "domain.sqlite").exists():
        print(f"jupyter-syft: no domain store in {data_dir}", file=sys.stderr)
        return 2
    if (data_dir / "node.json").exists():
        print("jupyter-syft: stop the domain node first (or check a copy of DIR)", file=sys.stderr)
        return 2
    files = receipt_files or [default_receipts_file()]
    try:
        check = verify_audit_dir(data_dir, files)
    except (OSError, ValueError) as exc:
        print(f"jupyter-syft: {exc}", file=sys.stderr)
        return 2
    others = f" ({check.other_nodes} of other nodes ignored)" if check.other_nodes else ""
    print(f"audit log of node {check.node}: {check.entries} entries")
    print(f"{check.receipts} receipts checked{others}")
    for problem in check.problems:
        print(f"FAILED: {problem}")
    if check.ok:
        print("the log holds every receipted entry and its chain verifies")
    return 0 if check.ok else 1


def _domain_start(args: argparse.Namespace) -> int:
    from jupyter_syft.domain.core import Limits
    from jupyter_syft.domain.environments import PYPI
    from jupyter_syft.domain.executor import SandboxUnavailable
    from jupyter_syft.domain.jobs import BACKENDS
    from jupyter_syft.domain.node import DomainConfig, run_domain
    from jupyter_syft.domain.ray_executor import ClusterUnavailable
    from jupyter_syft.domain.store import StoreError
    from jupyter_syft.identity import IdentityError, user_identity
    from jupyter_syft.p2p import P2PError

    if args.executor not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        print(f"jupyter-syft: no executor {args.executor!r}; known: {known}", file=sys.stderr)
        return 2
    if args.executor == "ray" and not args.ray_address:
        print(
            "jupyter-syft: --executor ray needs --ray-address HOST:PORT (a Ray cluster this "
            "machine is a node of) or --ray-address local (start one for this node)",
            file=sys.stderr,
        )
        return 2
    if args.ray_address and args.executor != "ray":
        print("jupyter-syft: --ray-address goes with --executor ray", file=sys.stderr)
        return 2
    try:
        admin = user_identity()
    except IdentityError as exc:
        print(f"jupyter-syft: {exc}", file=sys.stderr)
        return 2
    limits = Limits(
        job_timeout_s=args.job_timeout,
        job_memory_bytes=args.job_memory_mb * 2**20,
        max_result_bytes=args.max_result_mb * 2**20,
    )
    config = DomainConfig(
        args.name,
        args.data_dir,
        args.listen,
        args.workers,
        limits,
        args.network,
        args.heartbeat,
        package_index=args.package_index or PYPI,
        sandbox=args.sandbox,
        executor=args.executor,
        executor_address=args.ray_address,
        rate_per_s=args.rate_per_s,
        rate_burst=args.rate_burst,
        rate_peers=args.rate_peers,
        refusal_window_s=args.refusal_window,
        storage=args.storage,
    )

    return run_until_signalled(
        run_domain,
        config,
        admin,
        what="domain",
        expected=(
            P2PError,
            StoreError,
            IdentityError,
            OSError,
            SandboxUnavailable,
            ClusterUnavailable,
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
