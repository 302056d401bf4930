"""A seccomp filter (through libseccomp, `pyseccomp`) over the system calls a job never needs.

Threat model: a confined process cannot create a socket of any family (no TCP, UDP, raw,
netlink or unix socket to a listener; `socketpair` for its own pipes stays), cannot trace or
read another process (`ptrace`, `process_vm_readv`), cannot make new namespaces, mounts or
root directories (which could undo the file-system view), and cannot reach kernel surfaces a
job has no use for and that have hosted escapes (io_uring, which bypasses seccomp for sockets
and files; bpf; perf events; userfaultfd; keyrings; module and kexec loading). Everything else
is allowed: the filter narrows the kernel's attack surface, the other layers decide access.

A job that runs its own private Ray runtime (sandbox/runtime.py) gets `build_filter(sockets=
True)`: socket() for AF_UNIX, AF_INET and AF_INET6 only, in its own network namespace (nothing
but its own loopback); every other family (netlink, packet, vsock...) and the rest stay refused.
"""

from __future__ import annotations

import errno
from typing import TypeAlias

import pyseccomp as seccomp

DENIED = (
    "socket",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "name_to_handle_at",
    "open_by_handle_at",
    "lookup_dcookie",
    "syslog",
    "fanotify_init",
    "personality",
    "ioperm",
    "iopl",
    "uselib",
)
# clone() with a namespace flag: namespaces of the job's own could hide it from these rules.
_CLONE_NEW_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)
# NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10


Filter: TypeAlias = seccomp.SyscallFilter  # pyseccomp has no type information: Any


def build_filter(sockets: bool = False) -> Filter:
    """The filter, ready for `.load()`, which installs it on the calling thread for good (it
    is inherited and cannot be removed). `sockets`: allow unix and IP sockets (see above).

    `clone3` answers ENOSYS (its flags live in memory a filter cannot read): glibc then falls
    back to `clone`, whose flags the filter can check.
    """
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED:
        if not (sockets and name == "socket"):
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
    if sockets:  # families 0 and 3..9, and everything above AF_INET6 (any upper bits too)
        refused = [f for f in range(AF_INET6) if f not in (AF_UNIX, AF_INET)]
        for family in refused:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), "socket", seccomp.Arg(0, seccomp.EQ, family))
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "socket", seccomp.Arg(0, seccomp.GT, AF_INET6))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for flag in _CLONE_NEW_FLAGS:
        rules.add_rule(
            seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
        )
    return rules


def available() -> bool:
    """Whether libseccomp loads here (the filter itself is checked when a job starts)."""
    try:
        seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    except Exception:
        return False
    return True
