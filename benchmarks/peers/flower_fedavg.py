"""Flower's side of the FedAvg comparison: flower_app/ run by `flwr run`, deployed or simulated.

Runs in `.bench/flower` (never in the project's venv), started by bench_peers.py:

    python flower_fedavg.py deployment|simulation DATA.npz OUT.npz WORKDIR

deployment: a SuperLink and three SuperNodes (partition-id 0..2), each its own process on
127.0.0.1, as Flower's deployment guide runs them; simulation: a SuperLink in simulation mode
(Ray runs the three clients). Either way `flwr run` submits the app and streams its logs until
the run ends. Everything lives in WORKDIR (FLWR_HOME, logs); telemetry and update checks are
off. Ray binds every interface it finds, so the simulation runs in a network namespace of its
own with only loopback (`unshare --net`, as root). Prints one JSON line: the wall time of
`flwr run` and what the ServerApp wrote to OUT.npz.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

APP = Path(__file__).resolve().parent / "flower_app"
BIN = Path(sys.executable).parent
CLIENTS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every process below `pid`: Flower starts its SuperExec in a session of its own, so a
    process group would miss it."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM what we started (they stop their own children), then SIGKILL any of those
    children still there after 20 s, by pid."""
    below = [pid for p in processes for pid in descendants(p.pid)]
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in below) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in below:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the SuperLink exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the SuperLink did not come up:\n{log.read_text()[-3000:]}")


def wait_nodes(workdir: Path, log: Path, count: int) -> None:
    """Until the SuperLink has activated `count` SuperNodes (it logs each)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if log.read_text().count("[Fleet.ActivateNode] Activated") >= count:
            return
        time.sleep(0.2)
    raise RuntimeError(f"only some SuperNodes connected; see {workdir}")


def run(mode: str, data: Path, out: Path, workdir: Path) -> dict[str, object]:
    home = workdir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    connection = [
        "[superlink]",
        'default = "bench"',
        "[superlink.bench]",
        f'address = "127.0.0.1:{port}"',
        "insecure = true",
    ]
    if mode == "simulation":  # one CPU per client: two of the three train at once here
        connection += [
            f"options.num-supernodes = {CLIENTS}",
            "options.backend.client-resources.num-cpus = 1",
            "options.backend.client-resources.num-gpus = 0",
        ]
    (home / "config.toml").write_text("\n".join(connection) + "\n")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # it spawns its own tools
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HOME": str(workdir),  # Ray writes under ~/.ray
        "RAY_TMPDIR": str(workdir),
    }
    superlink_log = workdir / f"{mode}-superlink.log"
    superlink = [
        str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if mode == "simulation":
        superlink.append("--simulation")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with superlink_log.open("wb") as log:
            processes.append(subprocess.Popen(superlink, env=env, stdout=log, stderr=log))
        wait_healthy(port, processes[0], superlink_log)
        if mode == "deployment":
            for i in range(CLIENTS):
                node = [
                    str(BIN / "flower-supernode"), "--insecure",
                    "--superlink", f"127.0.0.1:{port}",
                    "--host", "127.0.0.1", "--port", str(free_port()),
                    "--node-config", f"partition-id={i} num-partitions={CLIENTS}",
                ]  # fmt: skip
                with (workdir / f"supernode-{i}.log").open("wb") as log:
                    processes.append(subprocess.Popen(node, env=env, stdout=log, stderr=log))
            wait_nodes(workdir, superlink_log, CLIENTS)
        command = [
            str(BIN / "flwr"), "run", str(APP), "bench", "--stream",
            "--run-config", f'data="{data}" out="{out}"',
        ]  # fmt: skip
        started = time.perf_counter()
        with (workdir / f"{mode}-flwr-run.log").open("wb") as log:
            done = subprocess.run(command, env=env, stdout=log, stderr=log, timeout=3600)
        wall = time.perf_counter() - started
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"flwr run failed; see {workdir}/{mode}-flwr-run.log")
    finally:
        stop(processes)
    with np.load(out) as result:
        return {
            "wall": wall,
            "strategy": float(result["seconds"]),
            "rounds": [float(r) for r in result["rounds"]],
        }


def main() -> None:
    mode, data, out, workdir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    if mode not in ("deployment", "simulation"):
        raise SystemExit(f"mode must be deployment or simulation, not {mode!r}")
    if mode == "simulation" and os.environ.get("BENCH_NETNS") != "1":
        # Loopback only, for Ray: re-run this script inside a new network namespace.
        script = 'ip link set lo up && exec "$0" "$@"'
        command = ["unshare", "--net", "sh", "-c", script, sys.executable, *sys.argv]
        env = {**os.environ, "BENCH_NETNS": "1"}
        raise SystemExit(subprocess.run(command, env=env).returncode)
    print(json.dumps(run(mode, data, out, workdir)))


if __name__ == "__main__":
    main()
