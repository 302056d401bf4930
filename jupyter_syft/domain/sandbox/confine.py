"""The order in which a job process gives up its authority, and what it keeps.

A job process starts as a copy of the executor's forkserver: root (where the node is), in the
node's namespaces. `prepare()` runs before any job is known (a spare, off the request path);
`enter()` runs once the job has arrived and its inputs are open, and is the last thing before
the job's code. After `enter()` the process has:

- a new PID, mount, network, IPC and UTS namespace (namespaces.py), and its own root with only
  read-only system and Python folders, `/proc`, a few devices and a capped `/tmp`;
- an unprivileged uid and gid of its own (no supplementary groups, no capabilities, an empty
  capability bounding set), `no_new_privs` set;
- Landlock (landlock.py) over that view: read-only folders, `/tmp` writable, no TCP, no
  abstract unix sockets or signals outside, no ptrace;
- (a job with a distributed input, which runs its own Ray runtime: the profile of
  sandbox/runtime.py, which lists each difference);
- the seccomp filter (syscalls.py): no sockets, no ptrace, no new namespaces or mounts;
- per-process limits (files of at most `max_file_bytes`, no core dumps, CPU seconds, and, per
  uid, `max_processes` processes), under the executor's per-job cgroup;
- a clean environment (ENVIRONMENT below), `/tmp` as its home and working folder, and only the
  file descriptors it was given.
Each step needs the one before (mounts need root; Landlock and seccomp need no_new_privs).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import stat
import sys
from dataclasses import dataclass

from jupyter_syft.domain.sandbox import landlock, namespaces, syscalls
from jupyter_syft.domain.sandbox import runtime as private_runtime

DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
SYSTEM_FOLDERS = ["/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc", "/sys/devices/system/cpu"]
ENVIRONMENT = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "USER": "job",
    "LOGNAME": "job",
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLCONFIGDIR": "/tmp/.matplotlib",
}
KEPT_VARIABLES = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "KERAS_BACKEND")
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAPBSET_DROP = 24
_PR_SET_DUMPABLE = 4
_PR_SET_PDEATHSIG = 1
_LAST_CAP = 63


@dataclass(frozen=True)
class Confinement:
    """What a job may see and use: chosen by the node, the same for every job but its uid."""

    mountpoint: str  # an empty folder of the node's, where each job's root tmpfs is mounted
    read_only: tuple[str, ...]  # folders and files of the node's shown read-only
    # The node's declared environments, mounted read-only; Landlock lets a job read only the
    # one it declared (each holds public packages, nothing of the owner's).
    environments: str = ""
    scratch_bytes: int = 256 * 2**20  # size of the job's /tmp
    max_processes: int = 64
    max_file_bytes: int = 2**30
    cpus: float = 2.0


def prepare(confinement: Confinement, uid: int) -> syscalls.Filter:
    """The job-independent part, as root: namespaces, the new root, the seccomp filter built
    (not loaded). Call in a process that is already the first of a new PID namespace."""
    namespaces.unshare(
        namespaces.CLONE_NEWNS
        | namespaces.CLONE_NEWNET
        | namespaces.CLONE_NEWIPC
        | namespaces.CLONE_NEWUTS
    )
    devices = [*DEVICES, *_gpu_devices()]
    read_only = [*SYSTEM_FOLDERS, *confinement.read_only]
    if confinement.environments and os.path.isdir(confinement.environments):
        read_only.append(confinement.environments)
    namespaces.enter_view(
        confinement.mountpoint, read_only, devices, (confinement.scratch_bytes, uid, uid)
    )
    return syscalls.build_filter()


def enter(
    confinement: Confinement,
    uid: int,
    rules: syscalls.Filter,
    environment: str,
    keep_fds: list[int],
    runtime: bool = False,
) -> None:
    """The point of no return: after this, the process is the job's. `environment` is the
    declared environment's folder it may read ("" for none). `runtime`: the profile of a job
    that starts its own private Ray runtime (sandbox/runtime.py; `rules` built with sockets):
    loopback up, unix sockets in /tmp, its input folders under /inputs, TCP left to the network
    namespace, more processes."""
    for fd in _open_fds():
        if fd > 2 and fd not in keep_fds:
            with contextlib.suppress(OSError):  # the folder listing's own descriptor
                os.close(fd)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (confinement.max_file_bytes,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (process_limit(confinement, runtime),) * 2)
    if runtime:
        namespaces.loopback_up()
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in range(_LAST_CAP + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # clears every capability, and the parent-death signal
    die_with_parent()
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "could not set no_new_privs")
    granted = [*SYSTEM_FOLDERS, *confinement.read_only, *([environment] if environment else [])]
    allowed = [(path, landlock.READ_ONLY) for path in granted]
    scratch = landlock.READ_WRITE | (landlock.MAKE_SOCK if runtime else 0)
    allowed += [("/proc", landlock.READ_FILE | landlock.READ_DIR), ("/tmp", scratch)]
    if runtime:
        allowed.append((namespaces.INPUTS, landlock.READ_ONLY))
    allowed += [(device, landlock.DEVICE) for device in [*DEVICES, *_gpu_devices()]]
    # A dataset's partition folder, handed over as a detached read-only mount of that folder
    # alone (datasets.partitions.open_input): readable beneath it, through /proc/self/fd/N.
    allowed += [(f"/proc/self/fd/{fd}", landlock.READ_ONLY) for fd in keep_fds if _is_folder(fd)]
    granted_rules = ((path, rights) for path, rights in allowed if os.path.lexists(path))
    landlock.restrict_self(granted_rules, tcp=not runtime)
    rules.load()
    environment_variables = clean_environment()
    os.environ.clear()
    os.environ.update(environment_variables)
    os.chdir("/tmp")


def process_limit(confinement: Confinement, runtime: bool) -> int:
    """A job's processes (threads count) at most, for its cgroup and RLIMIT_NPROC: a job that
    runs its own Ray runtime gets room for the runtime's daemons too."""
    return confinement.max_processes + (private_runtime.RUNTIME_PROCESSES if runtime else 0)


def die_with_parent() -> None:
    """SIGKILL this process when the one that forked it ends (PR_SET_PDEATHSIG).

    A job process dies with its keeper, and the keeper with the node (worker._die_with_node),
    so no job outlives its node. The kernel clears the setting when credentials change:
    `enter()` sets it again after the uid drop.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0) != 0:  # 9: SIGKILL
        raise OSError(ctypes.get_errno(), "could not set the parent-death signal")


def clean_environment() -> dict[str, str]:
    """The job's environment: the allow-list, plus a few settings of the node's that are about
    hardware, not authority."""
    kept = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    return {**ENVIRONMENT, **kept}


def python_folders() -> list[str]:
    """The folders the job's Python needs, read-only: the interpreter's, the environment's and
    this package's. Never the node's working folder or an editable install's whole checkout
    (either may hold data dirs): other entries of sys.path count only if they are package
    folders (site-packages, dist-packages)."""
    # jupyter_syft/domain/sandbox/confine.py -> jupyter_syft/
    package = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    folders = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    folders.add(package)
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if os.path.basename(real) not in ("site-packages", "dist-packages"):
            continue
        if os.path.isdir(real) and not any(real.startswith(f + os.sep) for f in folders):
            folders.add(real)
    return sorted(folders)


def _gpu_devices() -> list[str]:
    try:
        names = os.listdir("/dev")
    except OSError:
        return []
    return sorted(f"/dev/{n}" for n in names if n.startswith("nvidia"))


def _is_folder(fd: int) -> bool:
    return stat.S_ISDIR(os.fstat(fd).st_mode)


def _open_fds() -> list[int]:
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return []
