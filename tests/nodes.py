"""Real domain nodes in their own processes, and people (identities) for tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

from jupyter_syft.client.admin import AdminClient
from jupyter_syft.identity import Identity, load_or_create

START_TIMEOUT_S = 60


def person(root: Path, name: str) -> tuple[Path, Identity]:
    """A JUPYTER_SYFT_HOME folder and the identity kept in it."""
    home = root / "homes" / name
    return home, load_or_create(home / "identity.key")


class NodeProcess:
    """`jupyter-syft KIND start` as a child process; stopped by `stop()` or `kill()`."""

    kind = ""

    def __init__(self, root: Path, name: str, home: Path, *extra: str) -> None:
        # Run inside a network namespace (NetNS.command), with more variables (a HOME...).
        self.prefix: list[str] = []
        self.environment: dict[str, str] = {}
        self.name = name
        self.data_dir = root / name
        self.home = home
        self.extra = list(extra)
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, *more: str) -> str:
        """Start (again) and return the multiaddr it prints; `more` flags are for this start."""
        env = {**os.environ, **self.environment, "JUPYTER_SYFT_HOME": str(self.home)}
        command = [
            *self.prefix,
            sys.executable,
            "-m",
            "jupyter_syft.cli",
            self.kind,
            "start",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            *self.extra,
            *more,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("/ip4/127.0.0.1/tcp/"):
            self.kill()
            raise RuntimeError(f"{self.kind} {self.name} did not start:\n{self.log.read_text()}")
        self.address = line
        return line

    @property
    def port(self) -> int:
        return int(self.address.split("/")[4])

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self.process.stdout.close()  # type: ignore[union-attr]
        return code

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()


class DomainProcess(NodeProcess):
    """A domain node; `home` is its owner's JUPYTER_SYFT_HOME (the owner becomes its admin)."""

    kind = "domain"


def start_all(nodes: Iterable[NodeProcess]) -> None:
    """Start nodes side by side: each start waits a second or two for the node's address."""
    starters = [threading.Thread(target=node.start) for node in nodes]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()


class Approver:
    """Each domain's owner reviewing in a background thread, as a review widget would:
    approves what is pending, denies (with `reason`) on the domains in `deny`, and leaves
    the domains in `hold` alone."""

    def __init__(self, admins: dict[str, AdminClient], reason: str = "not on my data") -> None:
        self.admins = admins
        self.reason = reason
        self.deny: set[str] = set()
        self.hold: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name, admin in list(self.admins.items()):
                if name in self.hold:
                    continue
                try:
                    for review in admin.requests(status="pending"):
                        if name in self.deny:
                            review.deny(self.reason)
                        else:
                            review.approve()
                except Exception:  # a node killed by a test: its owner stops reviewing
                    if self.admins.get(name) is admin:  # unless a test replaced it since
                        self.admins.pop(name, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def write_demo(nodes: dict[str, NodeProcess], folder: Path) -> Path:
    """demo.json as `jupyter-syft demo --keep-running` writes it (without a network), for
    `%syft connect demo` and `demo_domains()`; the scientist's home is root/homes/scientist."""
    demo = folder / "demo-data" / "demo.json"
    demo.parent.mkdir(parents=True)
    domains = {name: node.address for name, node in nodes.items()}
    demo.write_text(json.dumps({"domains": domains, "scientist_home": "../../homes/scientist"}))
    return demo
