"""A real two-node Ray cluster for tests, in a network namespace of its own.

A Ray head and one more Ray worker node (`ray start --block`, one CPU each) run as separate
processes inside a `NetNS` (Ray binds non-loopback addresses even when asked for 127.0.0.1;
inside the namespace loopback is all there is). Their temp dirs and HOME are under the test's
folder. Whatever talks to the cluster runs inside the namespace too: the domain node (a Ray
driver must be on a Ray node's machine) and the people using it, as Python scripts run with
`script()` that print one JSON line. The test process itself never joins the namespace: gRPC
(Flight) connects from threads of its own, which stay where the process started.

Starting the cluster takes ~20-30 s here (each Ray node starts a few Python agents): share one
per test module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from netns import NetNS, kill_group

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_PORT = 6379  # the namespace is the cluster's own: no other Ray to collide with
ADDRESS = f"127.0.0.1:{HEAD_PORT}"
START_TIMEOUT_S = 90
START_ATTEMPTS = 3
TESTS = str(Path(__file__).parent)


class RayCluster:
    """`ray start --head` and `ray start --address` in one namespace; `close()` ends both."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "HOME": str(self.home),
            "RAY_USAGE_STATS_ENABLED": "0",
            # A killed node is noticed within ~2 s instead of ~15 s.
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3",
            # On a loaded machine a node's agents take longer than Ray's 30 s to come up.
            "RAY_agent_register_timeout_ms": "120000",
            "RAY_raylet_start_wait_time_s": "120",
            "RAY_worker_register_timeout_seconds": "120",
        }
        started = time.monotonic()
        self.ns = NetNS()
        self.nodes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            head = ("--head", f"--port={HEAD_PORT}", "--include-dashboard=false")
            self._start("head", *head)  # up first, else a worker gives up
            self._start("worker", f"--address={ADDRESS}")
            self.node_ids = self.wait_for_nodes(2)
            self.start_seconds = time.monotonic() - started
        except BaseException:
            self.close()
            raise

    def _start(self, name: str, *flags: str) -> None:
        """Start a Ray node and wait until it says it runs; again if it gave up (above)."""
        for _ in range(START_ATTEMPTS):
            self.nodes[name] = self._popen(name, *flags)
            if self._wait_for_log(name, "Ray runtime started"):
                return
            kill_group(self.nodes[name])
            self.nodes[name].wait(timeout=30)
        log = (self.root / f"ray-{name}.log").read_text()
        raise AssertionError(f"Ray {name} did not start in {START_ATTEMPTS} tries:\n{log[-3000:]}")

    def _popen(self, name: str, *flags: str) -> subprocess.Popen[bytes]:
        temp = self.root / name[0]  # short: Ray's unix socket paths must fit 107 bytes
        log = (self.root / f"ray-{name}.log").open("ab")
        # Above other processes' priority: a raylet waits at most 15 s for its node's Python
        # agents to start, which a loaded 2-core machine can miss.
        command = ["nice", "-n", "-10", RAY, "start", "--block", "--num-cpus=1"]
        command += ["--disable-usage-stats"]
        command += [f"--temp-dir={temp}", *flags]
        # Fixed agent ports (the namespace is the cluster's own): with port 0 a raylet waits
        # at most 15 s for its agents to say theirs, too short on a loaded machine.
        base = 20000 if name == "head" else 20010
        command += [
            f"--dashboard-agent-grpc-port={base}",
            f"--dashboard-agent-listen-port={base + 1}",
            f"--metrics-export-port={base + 2}",
            f"--runtime-env-agent-port={base + 3}",
        ]
        with log:
            return self.ns.popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def _wait_for_log(self, name: str, line: str) -> bool:
        """Whether the node's log says `line` before it exits (or START_TIMEOUT_S pass)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        log = self.root / f"ray-{name}.log"
        while line not in log.read_text():
            if self.nodes[name].poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def wait_for_nodes(self, count: int) -> list[str]:
        """The ids of the alive Ray nodes, the head's first, once there are `count` of them."""
        code = f"""
            import time, ray
            ray.init(address={ADDRESS!r}, logging_level="ERROR", log_to_driver=False)
            while True:
                alive = [n for n in ray.nodes() if n["Alive"]]
                if len(alive) == {count}:
                    break
                time.sleep(0.2)
            # ray.nodes() is in no particular order: the head first.
            alive.sort(key=lambda n: "node:__internal_head__" not in n["Resources"])
            emit([n["NodeID"] for n in alive])
        """
        try:
            alive: list[str] = self.script(code, timeout=START_TIMEOUT_S)
        except (AssertionError, subprocess.TimeoutExpired):
            logs = [(self.root / f"ray-{name}.log").read_text()[-2000:] for name in self.nodes]
            raise AssertionError("the Ray cluster did not start:\n" + "\n".join(logs)) from None
        return alive

    def kill_node(self, name: str) -> None:
        """SIGKILL a Ray node's processes (its raylet's workers end with it)."""
        kill_group(self.nodes[name], signal.SIGKILL)
        self.nodes[name].wait(timeout=30)

    def script(self, code: str, timeout: float = 120, env: dict[str, str] | None = None) -> Any:
        """Run Python `code` inside the namespace; it calls `emit(value)` once: its value."""
        prelude = (
            "import json, sys\n"
            f"sys.path.insert(0, {TESTS!r})\n"
            "def emit(value):\n"
            "    print('RESULT ' + json.dumps(value), flush=True)\n"
        )
        done = self.ns.run(
            [sys.executable, "-c", prelude + textwrap.dedent(code)],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line.removeprefix("RESULT "))
        raise AssertionError(
            f"script failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
        )

    def close(self) -> None:
        for process in self.nodes.values():
            kill_group(process)
        for process in self.nodes.values():
            process.wait(timeout=30)
        self.ns.close()  # anything Ray started in its own process groups
