"""Per-job control groups: limits that hold for the whole job, children included.

Threat model: however many processes a job starts, together they get at most `memory` bytes
(swap included where the kernel accounts it), `processes` processes and `cpus` CPUs' worth of
time; the executor kills every process of the group when the job ends, so none is left behind.

cgroup v2 (one `jupyter-syft` folder under the unified hierarchy) where it is mounted, else the
v1 controllers `memory`, `pids` and `cpu` (what these machines have, TOOLCHAIN.md).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PARENT = "jupyter-syft"
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


def _v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def _folders(name: str) -> list[Path]:
    if _v2():
        return [ROOT / PARENT / name]
    return [ROOT / controller / PARENT / name for controller in V1_CONTROLLERS]


def missing() -> str:
    """Why per-job cgroups cannot be made here, or "" when they can."""
    if _v2():
        try:
            (ROOT / PARENT).mkdir(exist_ok=True)
            controllers = (ROOT / "cgroup.subtree_control").read_text().split()
            if not {"memory", "pids", "cpu"} <= set(controllers):
                (ROOT / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            (ROOT / PARENT / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        except OSError as e:
            return f"cgroup v2 at {ROOT} is not writable ({e.strerror})"
        return ""
    for controller in V1_CONTROLLERS:
        folder = ROOT / controller
        if not folder.is_dir():
            return f"the cgroup v1 controller {controller!r} is not mounted"
        try:
            (folder / PARENT).mkdir(exist_ok=True)
        except OSError as e:
            return f"cgroup {folder} is not writable ({e.strerror})"
    return ""


def join(name: str) -> None:
    """Make the job group `name` and move this process into it (its children follow)."""
    for folder in _folders(name):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cgroup.procs").write_text(str(os.getpid()))


def limit(name: str, memory: int, processes: int, cpus: float) -> None:
    """Set the group's limits (making it first if its process has not joined yet)."""
    for folder in _folders(name):
        folder.mkdir(parents=True, exist_ok=True)
    quota = f"{int(cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}"
    if _v2():
        folder = ROOT / PARENT / name
        settings = {"memory.max": str(memory), "memory.swap.max": "0", "pids.max": str(processes)}
        settings["cpu.max"] = quota
    else:
        memory_dir, pids_dir, cpu_dir = _folders(name)
        settings_v1 = {
            memory_dir / "memory.limit_in_bytes": str(memory),
            memory_dir / "memory.memsw.limit_in_bytes": str(memory),
            pids_dir / "pids.max": str(processes),
            cpu_dir / "cpu.cfs_period_us": str(CPU_PERIOD_US),
            cpu_dir / "cpu.cfs_quota_us": str(int(cpus * CPU_PERIOD_US)),
        }
        for path, value in settings_v1.items():
            with contextlib.suppress(FileNotFoundError):  # memsw: swap accounting off
                path.write_text(value)
        return
    for key, value in settings.items():
        with contextlib.suppress(FileNotFoundError):
            (folder / key).write_text(value)


def peak_memory(name: str) -> int:
    folder = _folders(name)[0]
    for key in ("memory.max_usage_in_bytes", "memory.peak"):
        with contextlib.suppress(OSError, ValueError):
            return int((folder / key).read_text())
    return 0


def processes(name: str) -> list[int]:
    folder = _folders(name)[1 if not _v2() else 0]
    try:
        return [int(pid) for pid in (folder / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def kill_and_remove(name: str, timeout_s: float = 5.0) -> None:
    """Kill every process of the group (again while any appear) and remove it."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = processes(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not pids or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    for folder in _folders(name):
        for _ in range(100):  # a killed process leaves its group a moment later
            try:
                folder.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


def remove_stale() -> None:
    """Remove the empty groups of workers that are gone (a node killed without closing)."""
    parents = [ROOT / PARENT] if _v2() else [ROOT / c / PARENT for c in V1_CONTROLLERS]
    for parent in parents:
        for folder in parent.glob("worker-*") if parent.is_dir() else []:
            pid = folder.name.removeprefix("worker-")
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):  # not empty: something still runs there
                    folder.rmdir()
