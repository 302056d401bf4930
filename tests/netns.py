"""A network namespace a test creates, with only loopback in it, and processes run inside it.

Ray binds non-loopback addresses even when asked for 127.0.0.1 (TOOLCHAIN.md); inside a fresh
namespace loopback is the only address there is, so everything it binds stays inside. A test
runs the Ray nodes, the domain using them and the scientists' scripts in one such namespace;
`close()` kills every process left in it and deletes it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from contextlib import suppress
from typing import Any

_names = itertools.count()


class NetNS:
    def __init__(self) -> None:
        self.name = f"syft-test-{os.getpid()}-{next(_names)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` as run inside the namespace. nsenter, not `ip netns exec`: that one mounts a
        new /sys, without the cgroup controllers the job sandbox needs."""
        return ["nsenter", f"--net=/run/netns/{self.name}", *argv]

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside the namespace, leading its own process group (kill_group)."""
        return subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.command(argv), **kwargs)

    def pids(self) -> list[int]:
        listed = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(pid) for pid in listed.stdout.split()]

    def close(self) -> None:
        for pid in self.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def __enter__(self) -> NetNS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def kill_group(process: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    """Signal a process started by `NetNS.popen` and everything it started."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
