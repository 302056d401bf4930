"""Real domain nodes in their own processes, and people (identities) for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from jupyter_syft.identity import Identity, load_or_create

START_TIMEOUT_S = 60


def person(root: Path, name: str) -> tuple[Path, Identity]:
    """A JUPYTER_SYFT_HOME folder and the identity kept in it."""
    home = root / "homes" / name
    return home, load_or_create(home / "identity.key")


class DomainProcess:
    """`jupyter-syft domain start` as a child process; stopped by `stop()` or `kill()`."""

    def __init__(self, root: Path, name: str, owner_home: Path, *extra: str) -> None:
        self.name = name
        self.data_dir = root / name
        self.owner_home = owner_home
        self.extra = list(extra)
        self.log = root / f"{name}.log"
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> str:
        env = {**os.environ, "JUPYTER_SYFT_HOME": str(self.owner_home)}
        command = [
            sys.executable,
            "-m",
            "jupyter_syft.cli",
            "domain",
            "start",
            "--name",
            self.name,
            "--data-dir",
            str(self.data_dir),
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=log, text=True
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("/ip4/127.0.0.1/tcp/"):
            self.kill()
            raise RuntimeError(f"domain {self.name} did not start:\n{self.log.read_text()}")
        self.address = line
        return line

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
