"""The job sandbox: every piece of code a scientist sends runs confined, by default.

One front door for the node: `probe()` says whether this machine has every layer (and which is
missing), `Confinement` is what jobs may see; the executor and worker apply it
(`confine.prepare` / `confine.enter`, `cgroups`). Layers, each stopping something of its own
(threat-model lines in each module and in docs/architecture.md):

| layer | module | stops |
|---|---|---|
| PID namespace | namespaces | seeing other processes; anything outliving the job |
| mount namespace + new root | namespaces | reading keys, the store, other datasets or results |
| network namespace | namespaces | reaching any address, the node's own ports, DNS |
| separate uid, no capabilities | confine | writing what the node owns; signalling or tracing it |
| Landlock (ABI 6) | landlock | files outside the view, TCP, abstract sockets, ptrace |
| seccomp | syscalls | sockets, ptrace, new namespaces, io_uring, bpf... |
| cgroup | cgroups | memory, process count and CPU beyond the job's share, children included |
| rlimits | confine | big files, core dumps, runaway CPU in one process |

A job with a distributed input (a `ray.data.Dataset`) starts a Ray runtime private to it,
inside all of these layers, under the runtime profile of `runtime.py`, which lists each thing it
allows on top (IP and unix sockets in the job's own network namespace, its loopback up, more
processes); every other job keeps the profile above unchanged.

With `--sandbox off` none of this applies (a loud warning at start, and every surface shows it).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from typing import Literal

from jupyter_syft.domain.sandbox import cgroups, landlock, syscalls
from jupyter_syft.domain.sandbox.confine import SYSTEM_FOLDERS, Confinement, python_folders

SandboxMode = Literal["on", "off"]
# Each job's uid is this plus the pid of its worker: unique while the worker lives, and far above
# the uids of real accounts and of user namespaces' usual sub-uid ranges.
JOB_UID_BASE = 1_900_000_000
MOUNTPOINT = "/run/jupyter-syft/job-root"

__all__ = ["JOB_UID_BASE", "Confinement", "SandboxMode", "SandboxStatus", "probe"]


@dataclass(frozen=True)
class SandboxStatus:
    mode: SandboxMode
    missing: list[str] = field(default_factory=list)  # layers this machine lacks, with why

    @property
    def summary(self) -> str:
        """One line for every surface that shows a domain's sandbox level."""
        if self.mode == "off":
            return "off"
        if self.missing:
            return "unavailable: " + "; ".join(self.missing)
        return (
            f"on: landlock {landlock.abi_version()}, seccomp, pid/mount/net/ipc namespaces, "
            "cgroups, separate uid"
        )


def probe(mode: SandboxMode = "on") -> SandboxStatus:
    """Which layers this machine lacks. The executor's first job process also applies them
    all once at start, so a layer that is present but broken is found before any job."""
    if mode == "off":
        return SandboxStatus("off")
    missing = []
    if platform.system() != "Linux":
        return SandboxStatus("on", [f"the sandbox needs Linux (this is {platform.system()})"])
    abi = landlock.abi_version()
    if abi < landlock.MIN_ABI:
        missing.append(f"Landlock ABI {abi} (needs {landlock.MIN_ABI}: Linux 6.7 or newer)")
    if not syscalls.available():
        missing.append("seccomp: libseccomp (libseccomp.so.2) could not be loaded")
    if not os.path.exists("/proc/self/ns/pid") or not os.path.exists("/proc/self/ns/net"):
        missing.append("PID and network namespaces")
    if os.geteuid() != 0:
        missing.append("a separate uid for jobs: the node must run as root")
    else:
        reason = cgroups.missing()
        if reason:
            missing.append(reason)
    return SandboxStatus("on", missing)


def shown_folder(path: str) -> str | None:
    """The folder of every job's view that `path` (a real path) lies in, or None: data kept
    there (a data dir, a dataset's storage) would be readable by any job."""
    for folder in [*python_folders(), *SYSTEM_FOLDERS]:
        if path == folder or path.startswith(folder + os.sep):
            return folder
    return None


def confinement(
    data_dir: str | None, scratch_mb: int, max_processes: int, cpus: float
) -> Confinement:
    """The view every job of this node gets; refuses a data dir the view would show."""
    folders = tuple(python_folders())
    data = os.path.realpath(data_dir) if data_dir else ""
    shown = shown_folder(data) if data else None
    if shown is not None:
        raise ValueError(
            f"the data dir {data_dir} lies inside {shown}, which jobs may read: put it elsewhere"
        )
    os.makedirs(MOUNTPOINT, mode=0o700, exist_ok=True)
    environments = os.path.join(data, "environments") if data else ""
    if environments:
        os.makedirs(environments, exist_ok=True)  # mounted in every job's view
    return Confinement(
        mountpoint=MOUNTPOINT,
        read_only=folders,
        environments=environments,
        scratch_bytes=scratch_mb * 2**20,
        max_processes=max_processes,
        cpus=cpus,
    )
